//! `samod-node`: one samod 0.16 repo per process, for weft-bench's side-by-side baseline.
//!
//! Storage is `samod::storage::TokioFilesystemStorage` in `--dir`. The node listens on
//! 127.0.0.1 (an ephemeral port, announced on the first stdout line) and dials other nodes on
//! command. Every TCP stream is wrapped in a byte counter, so `stats` reports the bytes this
//! process sent and received.
//!
//! Control is a line protocol: one JSON object per line on stdin, one JSON reply per line on
//! stdout. Lines carrying `"ev"` are unsolicited events (`ready`, `change`); every other line is
//! the reply to the command before it. Commands run one at a time, in order. Timestamps (`t`)
//! are wall-clock microseconds since the Unix epoch: every node runs on the same machine.
//!
//! | command | reply |
//! | --- | --- |
//! | `{"cmd":"create","count":N,"ids_file":P}` | creates N documents from `weft_node::seed::sample_plan` (4 per plan), writes their ids to P (one a line); `{count, bytes, ms}` |
//! | `{"cmd":"dial","port":P}` | dials 127.0.0.1:P; `{t}` taken before dialling, `{t_established}` |
//! | `{"cmd":"wait","count":N,"timeout_s":S}` | when N distinct documents have had a storage put complete here: `{t}` |
//! | `{"cmd":"wait_synced","count":N,"timeout_s":S}` | when sync messages for N distinct documents have been received: `{t}` |
//! | `{"cmd":"load","ids_file":P}` | `Repo::find` for every id in P, keeping the handles: `{found, missing, ms, t}` |
//! | `{"cmd":"watch"}` | for every held handle, prints `{"ev":"change","doc":ID,"seq":S,"t":T}` when a change brings a new edit sequence number |
//! | `{"cmd":"edit","doc":ID,"seq":S}` | one edit: puts field `bench_edit` = "caseworker note S"; `{t}` |
//! | `{"cmd":"edits","rate":R,"count":K,"seq0":S}` | K edits paced at R/s over the held handles; `{edits:[[ID,seq,t]...], achieved_rate}` |
//! | `{"cmd":"expect","docs":[[ID,S]...],"timeout_s":T}` | finds each document and waits until its edit sequence number is at least S: `{t}` |
//! | `{"cmd":"ids"}` | ids of the held handles, in order |
//! | `{"cmd":"rss"}` | `{rss_kib, hwm_kib}` from /proc/self/status |
//! | `{"cmd":"stats"}` | `{rx, tx, durable, synced}` |
//! | `{"cmd":"stop"}` | `Repo::stop` (flushes storage), `{t}`, then exits |

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use automerge::transaction::Transactable as _;
use automerge::{Automerge, ReadDoc as _, ROOT};
use clap::Parser;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use samod::storage::TokioFilesystemStorage;
use samod::{
    BackoffConfig, DialError, Dialer, DocHandle, DocumentId, PeerId, Repo, RepoEvent, RepoObserver,
    StorageOperation, Transport,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::sync::watch;

/// The field an edit writes, at the document root.
const EDIT_FIELD: &str = "bench_edit";

#[derive(Parser, Debug)]
#[command(name = "samod-node")]
struct Args {
    /// Storage directory (TokioFilesystemStorage).
    #[arg(long)]
    dir: PathBuf,
    /// Peer id announced in the samod handshake.
    #[arg(long)]
    name: String,
}

static RX: AtomicU64 = AtomicU64::new(0);
static TX: AtomicU64 = AtomicU64::new(0);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A TCP stream that counts the bytes through it (both directions, process-wide).
struct Counting<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            RX.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            TX.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            TX.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Dials 127.0.0.1:port with samod's length-delimited framing (`Transport::from_tokio_io`,
/// as samod's own `TcpDialer`), through the byte counter. Unlike samod's `TcpDialer` it sets
/// TCP_NODELAY, so latencies measure samod rather than Nagle's algorithm.
struct CountingDialer {
    port: u16,
}

impl Dialer for CountingDialer {
    type Error = Infallible;

    fn url(&self) -> samod::Url {
        samod::Url::parse(&format!("tcp://127.0.0.1:{}", self.port)).expect("valid url")
    }

    fn connect(&self) -> BoxFuture<'static, Result<Transport, DialError<Infallible>>> {
        let port = self.port;
        async move {
            let io = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(DialError::transient)?;
            let _ = io.set_nodelay(true);
            Ok(Transport::from_tokio_io(Counting(io)))
        }
        .boxed()
    }
}

/// Tracks which documents have been durably written (a storage put completed) and which have
/// received a sync message, from samod's observer events.
struct Tracker {
    durable: Mutex<HashSet<DocumentId>>,
    synced: Mutex<HashSet<DocumentId>>,
    durable_tx: watch::Sender<usize>,
    synced_tx: watch::Sender<usize>,
}

impl RepoObserver for Tracker {
    fn observe(&self, event: &RepoEvent) {
        match event {
            RepoEvent::StorageOperationCompleted {
                document_id,
                operation: StorageOperation::Put,
                ..
            } => {
                let mut set = self.durable.lock().unwrap();
                if set.insert(document_id.clone()) {
                    self.durable_tx.send_replace(set.len());
                }
            }
            RepoEvent::SyncMessageReceived { document_id, .. } => {
                let mut set = self.synced.lock().unwrap();
                if set.insert(document_id.clone()) {
                    self.synced_tx.send_replace(set.len());
                }
            }
            _ => {}
        }
    }
}

/// The sequence number of the last edit in a document (`bench_edit` = "caseworker note S").
fn edit_seq(doc: &Automerge) -> Option<u64> {
    let (value, _) = doc.get(ROOT, EDIT_FIELD).ok()??;
    let s = value.into_string().ok()?;
    s.rsplit(' ').next()?.parse().ok()
}

fn apply_edit(handle: &DocHandle, seq: u64) -> anyhow::Result<()> {
    handle.with_document(|doc| {
        doc.transact::<_, _, automerge::AutomergeError>(|tx| {
            tx.put(ROOT, EDIT_FIELD, format!("caseworker note {seq}"))?;
            Ok(())
        })
        .map(|_| ())
        .map_err(|e| anyhow!("edit failed: {:?}", e.error))
    })
}

struct Node {
    repo: Repo,
    tracker: Arc<Tracker>,
    handles: Vec<DocHandle>,
}

fn timeout_of(cmd: &Value) -> Duration {
    Duration::from_secs_f64(cmd["timeout_s"].as_f64().unwrap_or(600.0))
}

async fn wait_count(mut rx: watch::Receiver<usize>, n: usize, timeout: Duration) -> Value {
    let reached = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
        .await
        .is_ok_and(|r| r.is_ok());
    if reached {
        json!({"ok": true, "t": now_us()})
    } else {
        json!({"ok": false, "error": format!("timed out at {} of {n}", *rx.borrow())})
    }
}

fn read_ids(path: &str) -> anyhow::Result<Vec<DocumentId>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<DocumentId>()
                .map_err(|e| anyhow!("bad id {l}: {e:?}"))
        })
        .collect()
}

impl Node {
    async fn create(&mut self, cmd: &Value) -> anyhow::Result<Value> {
        let count = cmd["count"].as_u64().context("count")? as usize;
        let ids_file = cmd["ids_file"].as_str().context("ids_file")?;
        let home = weft_node::model::AgencyId::parse("school.test").map_err(|e| anyhow!("{e}"))?;
        let partner =
            weft_node::model::AgencyId::parse("clinic.test").map_err(|e| anyhow!("{e}"))?;
        let at = weft_node::model::Timestamp::from_millis(1_700_000_000_000);
        let start = Instant::now();
        let mut docs = Vec::with_capacity(count);
        let mut bytes = 0usize;
        let mut i = 0u64;
        while docs.len() < count {
            for (_, mut doc) in weft_node::seed::sample_plan(i, &home, &partner, at)? {
                if docs.len() < count {
                    let saved = doc.save();
                    bytes += saved.len();
                    docs.push(Automerge::load(&saved)?);
                }
            }
            i += 1;
        }
        // `Repo::create` resolves once the document is persisted; keep 64 in flight.
        let repo = self.repo.clone();
        let created: Vec<_> = futures::stream::iter(docs)
            .map(|d| {
                let repo = repo.clone();
                async move { repo.create(d).await }
            })
            .buffered(64)
            .collect()
            .await;
        let mut ids = String::new();
        for h in created {
            let h = h.map_err(|_| anyhow!("repo stopped"))?;
            ids.push_str(&h.document_id().to_string());
            ids.push('\n');
            self.handles.push(h);
        }
        std::fs::write(ids_file, ids)?;
        Ok(json!({"ok": true, "count": count, "bytes": bytes,
                  "ms": start.elapsed().as_secs_f64() * 1e3}))
    }

    async fn load(&mut self, cmd: &Value) -> anyhow::Result<Value> {
        let ids = read_ids(cmd["ids_file"].as_str().context("ids_file")?)?;
        let start = Instant::now();
        let repo = self.repo.clone();
        let found: Vec<_> = futures::stream::iter(ids)
            .map(|id| {
                let repo = repo.clone();
                async move { repo.find(id).await }
            })
            .buffered(64)
            .collect()
            .await;
        let mut missing = 0;
        for f in found {
            match f.map_err(|_| anyhow!("repo stopped"))? {
                Some(h) => self.handles.push(h),
                None => missing += 1,
            }
        }
        Ok(
            json!({"ok": true, "found": self.handles.len(), "missing": missing,
                  "ms": start.elapsed().as_secs_f64() * 1e3, "t": now_us()}),
        )
    }

    fn watch(&self) -> Value {
        for h in &self.handles {
            let h = h.clone();
            // Subscribe before replying, so no change that arrives after the reply is missed.
            let mut changes = h.changes();
            let id = h.document_id().to_string();
            let mut last = h.with_document(|d| edit_seq(d));
            tokio::spawn(async move {
                while changes.next().await.is_some() {
                    let seq = h.with_document(|d| edit_seq(d));
                    if seq.is_some() && seq != last {
                        emit(&json!({"ev": "change", "doc": id, "seq": seq, "t": now_us()}));
                        last = seq;
                    }
                }
            });
        }
        json!({"ok": true, "watching": self.handles.len()})
    }

    async fn edits(&self, cmd: &Value) -> anyhow::Result<Value> {
        let rate = cmd["rate"].as_f64().context("rate")?;
        let count = cmd["count"].as_u64().context("count")?;
        let seq0 = cmd["seq0"].as_u64().unwrap_or(0);
        if self.handles.is_empty() {
            bail!("no documents held");
        }
        let n = self.handles.len() as u64;
        let start = tokio::time::Instant::now();
        let mut out = Vec::with_capacity(count as usize);
        for k in 0..count {
            tokio::time::sleep_until(start + Duration::from_secs_f64(k as f64 / rate)).await;
            let seq = seq0 + k;
            // Spread edits over the documents (7919 is prime, so every document gets its turn).
            let h = &self.handles[(seq.wrapping_mul(7919) % n) as usize];
            apply_edit(h, seq)?;
            out.push(json!([h.document_id().to_string(), seq, now_us()]));
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(json!({"ok": true, "edits": out, "achieved_rate": count as f64 / secs.max(1e-9)}))
    }

    async fn expect(&self, cmd: &Value) -> anyhow::Result<Value> {
        let docs = cmd["docs"].as_array().context("docs")?.clone();
        let timeout = timeout_of(cmd);
        let repo = self.repo.clone();
        let waits = docs.into_iter().map(|d| {
            let repo = repo.clone();
            async move {
                let id: DocumentId = d[0]
                    .as_str()
                    .context("id")?
                    .parse()
                    .map_err(|e| anyhow!("bad id: {e:?}"))?;
                let want = d[1].as_u64().context("seq")?;
                let h = repo
                    .find(id.clone())
                    .await
                    .map_err(|_| anyhow!("stopped"))?
                    .with_context(|| format!("{id} not found"))?;
                let mut changes = h.changes();
                while h.with_document(|d| edit_seq(d)).unwrap_or(0) < want {
                    if changes.next().await.is_none() {
                        bail!("change stream ended for {id}");
                    }
                }
                anyhow::Ok(())
            }
        });
        let all = futures::stream::iter(waits)
            .buffer_unordered(64)
            .collect::<Vec<_>>();
        match tokio::time::timeout(timeout, all).await {
            Ok(results) => {
                for r in results {
                    r?;
                }
                Ok(json!({"ok": true, "t": now_us()}))
            }
            Err(_) => bail!("timed out"),
        }
    }

    async fn handle(&mut self, cmd: &Value) -> anyhow::Result<(Value, bool)> {
        let name = cmd["cmd"].as_str().context("cmd")?;
        let reply = match name {
            "create" => self.create(cmd).await?,
            "dial" => {
                let port = cmd["port"].as_u64().context("port")? as u16;
                let t = now_us();
                let handle = self
                    .repo
                    .dial(
                        BackoffConfig {
                            initial_delay: Duration::from_millis(50),
                            max_delay: Duration::from_secs(1),
                            max_retries: None,
                        },
                        Arc::new(CountingDialer { port }),
                    )
                    .map_err(|_| anyhow!("repo stopped"))?;
                match tokio::time::timeout(Duration::from_secs(30), handle.established()).await {
                    Ok(Ok(_)) => json!({"ok": true, "t": t, "t_established": now_us()}),
                    Ok(Err(e)) => bail!("dial failed: {e:?}"),
                    Err(_) => bail!("dial timed out"),
                }
            }
            "wait" => {
                let n = cmd["count"].as_u64().context("count")? as usize;
                wait_count(self.tracker.durable_tx.subscribe(), n, timeout_of(cmd)).await
            }
            "wait_synced" => {
                let n = cmd["count"].as_u64().context("count")? as usize;
                wait_count(self.tracker.synced_tx.subscribe(), n, timeout_of(cmd)).await
            }
            "load" => self.load(cmd).await?,
            "watch" => self.watch(),
            "edit" => {
                let id: DocumentId = cmd["doc"]
                    .as_str()
                    .context("doc")?
                    .parse()
                    .map_err(|e| anyhow!("bad id: {e:?}"))?;
                let seq = cmd["seq"].as_u64().unwrap_or(0);
                let h = match self.handles.iter().find(|h| *h.document_id() == id) {
                    Some(h) => h.clone(),
                    None => self
                        .repo
                        .find(id.clone())
                        .await
                        .map_err(|_| anyhow!("stopped"))?
                        .with_context(|| format!("{id} not found"))?,
                };
                apply_edit(&h, seq)?;
                json!({"ok": true, "t": now_us()})
            }
            "edits" => self.edits(cmd).await?,
            "expect" => self.expect(cmd).await?,
            "ids" => {
                let ids: Vec<String> = self
                    .handles
                    .iter()
                    .map(|h| h.document_id().to_string())
                    .collect();
                json!({"ok": true, "ids": ids})
            }
            "rss" => {
                let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
                let field = |k: &str| -> u64 {
                    status
                        .lines()
                        .find(|l| l.starts_with(k))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                json!({"ok": true, "rss_kib": field("VmRSS"), "hwm_kib": field("VmHWM")})
            }
            "stats" => json!({
                "ok": true,
                "rx": RX.load(Ordering::Relaxed),
                "tx": TX.load(Ordering::Relaxed),
                "durable": *self.tracker.durable_tx.borrow(),
                "synced": *self.tracker.synced_tx.borrow(),
            }),
            "stop" => {
                self.repo.stop().await;
                return Ok((json!({"ok": true, "t": now_us()}), true));
            }
            other => bail!("unknown command {other}"),
        };
        Ok((reply, false))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let tracker = Arc::new(Tracker {
        durable: Mutex::new(HashSet::new()),
        synced: Mutex::new(HashSet::new()),
        durable_tx: watch::channel(0).0,
        synced_tx: watch::channel(0).0,
    });
    let repo = Repo::build_tokio()
        .with_storage(TokioFilesystemStorage::new(&args.dir))
        .with_peer_id(PeerId::from(args.name.as_str()))
        .with_observer(ObserverRef(tracker.clone()))
        .load()
        .await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let acceptor = repo
        .make_acceptor(samod::Url::parse(&format!("tcp://127.0.0.1:{port}"))?)
        .map_err(|_| anyhow!("repo stopped"))?;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let _ = io.set_nodelay(true);
            if acceptor.accept_tokio_io(Counting(io)).is_err() {
                break;
            }
        }
    });
    emit(&json!({"ev": "ready", "port": port, "pid": std::process::id(), "t": now_us()}));

    let mut node = Node {
        repo,
        tracker,
        handles: Vec::new(),
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let (reply, stop) = match serde_json::from_str::<Value>(&line) {
            Ok(cmd) => match node.handle(&cmd).await {
                Ok(r) => r,
                Err(e) => (json!({"ok": false, "error": format!("{e:#}")}), false),
            },
            Err(e) => (
                json!({"ok": false, "error": format!("bad json: {e}")}),
                false,
            ),
        };
        emit(&reply);
        if stop {
            std::process::exit(0);
        }
    }
    // stdin closed: the driver is gone. Flush and leave.
    node.repo.stop().await;
    Ok(())
}

/// `with_observer` takes the observer by value; this shares the tracker with the node.
struct ObserverRef(Arc<Tracker>);

impl RepoObserver for ObserverRef {
    fn observe(&self, event: &RepoEvent) {
        self.0.observe(event);
    }
}
