//! The samod baseline: the same workloads as Weft's scenarios, run against samod 0.16 repos,
//! one `samod-node` process per node (see `src/bin/samod-node.rs` for the line protocol).
//!
//! Documents are the sections of `weft_node::seed::sample_plan` (4 per plan, ~600-800 B
//! saved), loaded with `Automerge::load` and handed to `Repo::create`, so both systems sync
//! the same content. An edit puts one short string field (`bench_edit`) in one document.
//! Latency is measured from the wall clock at the editing node right after the edit to the
//! wall clock at the receiving node when its `DocHandle::changes` stream shows the edit (same
//! machine, same clock). Any part that fails leaves its figures `None` with a note saying why.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;
use serde_json::{json, Value};

use crate::report::{self, Figure};

/// What the samod baseline measured. `None`: not measured; the notes say why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SamodFigures {
    /// Documents held by A in scenarios 1, 2, 4 and 5.
    pub n: usize,
    /// 1: documents per second until B holds all N (a storage put completed for each).
    pub cold_docs_per_s: Option<f64>,
    /// 1: bytes on the A-B TCP connection (both directions) during the cold replication.
    pub cold_wire_bytes: Option<f64>,
    /// 1: saved (Automerge `save`) size of all N documents.
    pub cold_saved_bytes: Option<f64>,
    /// 1: wire bytes / saved bytes.
    pub cold_wire_ratio: Option<f64>,
    /// 1, pull variant: A restarted (documents on disk, none open, so nothing is pushed), B
    /// dials and `Repo::find`s every id (64 at a time): documents per second until B holds all N.
    pub cold_pull_docs_per_s: Option<f64>,
    /// 1, pull variant: bytes on the A-B connection.
    pub cold_pull_wire_bytes: Option<f64>,
    /// 1: peak RSS (VmHWM) of B, MiB.
    pub cold_peak_rss_b_mib: Option<f64>,
    /// 2: latency A -> B at 10 edits/s, ms.
    pub edit10_p50_ms: Option<f64>,
    pub edit10_p99_ms: Option<f64>,
    pub edit10_p999_ms: Option<f64>,
    /// 2: latency A -> B at 500 edits/s, ms.
    pub edit500_p50_ms: Option<f64>,
    pub edit500_p99_ms: Option<f64>,
    pub edit500_p999_ms: Option<f64>,
    /// 3: highest edit rate at A (B and C both connected to A) that kept p99 <= 100 ms.
    pub sustained_edits_per_s: Option<f64>,
    /// 4: time from B's restart until B has all M changes and has synced every document, ms.
    pub catchup_m0_ms: Option<f64>,
    pub catchup_m100_ms: Option<f64>,
    pub catchup_m1000_ms: Option<f64>,
    /// 4: bytes on the A-B connection during that catch-up.
    pub catchup_m0_wire_bytes: Option<f64>,
    pub catchup_m100_wire_bytes: Option<f64>,
    pub catchup_m1000_wire_bytes: Option<f64>,
    /// 5: (RSS after loading N documents - RSS of the empty repo) / N, KiB.
    pub kib_per_doc: Option<f64>,
    /// 5: from spawning a node with N documents on disk until all N are loaded, ms.
    pub start_ms: Option<f64>,
    /// Sizes, conditions, failures.
    pub notes: Vec<String>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One `samod-node` process.
struct Node {
    name: String,
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Value>,
    events: Receiver<Value>,
    port: u16,
    pid: u32,
    /// Wall clock (µs) just before the process was spawned.
    spawned_at: u64,
}

fn node_binary() -> anyhow::Result<PathBuf> {
    // Built next to this binary, in the same profile: `cargo run --bin weft-bench` builds
    // only itself, so build `samod-node` here (a no-op when it is up to date).
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("no parent of current exe")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let target = dir.parent().context("no target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "weft-bench",
        "--bin",
        "samod-node",
        "--target-dir",
    ])
    .arg(target);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let built = cmd.status().map(|s| s.success()).unwrap_or(false);
    let bin = dir.join("samod-node");
    if bin.exists() {
        return Ok(bin);
    }
    bail!(
        "samod-node not found next to {} (building it {}; try: cargo build --release -p weft-bench)",
        exe.display(),
        if built { "succeeded" } else { "failed" }
    )
}

impl Node {
    fn spawn(work: &Path, name: &str) -> anyhow::Result<Self> {
        let dir = work.join(name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work.join(format!("{name}.log")))?;
        let spawned_at = now_us();
        let mut child = Command::new(node_binary()?)
            .arg("--dir")
            .arg(&dir)
            .arg("--name")
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning samod-node {name}"))?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (reply_tx, replies) = channel();
        let (event_tx, events) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let sent = if v.get("ev").is_some() {
                    event_tx.send(v).is_ok()
                } else {
                    reply_tx.send(v).is_ok()
                };
                if !sent {
                    break;
                }
            }
        });
        let ready = events
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("samod-node {name} did not start"))?;
        Ok(Self {
            name: name.into(),
            child,
            stdin,
            replies,
            events,
            port: ready["port"].as_u64().context("port")? as u16,
            pid: ready["pid"].as_u64().context("pid")? as u32,
            spawned_at,
        })
    }

    fn call(&mut self, cmd: Value, timeout: Duration) -> anyhow::Result<Value> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        let reply = match self.replies.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                bail!(
                    "{}: no reply to {} within {timeout:?}",
                    self.name,
                    cmd["cmd"]
                )
            }
            Err(RecvTimeoutError::Disconnected) => bail!("{}: process ended", self.name),
        };
        if reply["ok"] != json!(true) {
            bail!("{}: {} failed: {}", self.name, cmd["cmd"], reply["error"]);
        }
        Ok(reply)
    }

    fn t(reply: &Value) -> anyhow::Result<u64> {
        reply["t"].as_u64().context("no t in reply")
    }

    fn stop(mut self) -> anyhow::Result<()> {
        let r = self.call(json!({"cmd": "stop"}), Duration::from_secs(120));
        let _ = self.child.wait();
        r.map(|_| ())
    }

    fn drain_events(&self) {
        while self.events.try_recv().is_ok() {}
    }

    /// `{rx, tx}` bytes so far.
    fn wire(&mut self) -> anyhow::Result<u64> {
        let s = self.call(json!({"cmd": "stats"}), Duration::from_secs(30))?;
        Ok(s["rx"].as_u64().unwrap_or(0) + s["tx"].as_u64().unwrap_or(0))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One edit made at A: document, sequence number, wall clock µs.
type Edit = (String, u64, u64);

fn parse_edits(reply: &Value) -> anyhow::Result<Vec<Edit>> {
    reply["edits"]
        .as_array()
        .context("edits")?
        .iter()
        .map(|e| {
            Ok((
                e[0].as_str().context("doc")?.to_string(),
                e[1].as_u64().context("seq")?,
                e[2].as_u64().context("t")?,
            ))
        })
        .collect()
}

/// For each edit, the latency (ms) until `node` showed it, or `None` if it never did before
/// `deadline`. A change event for sequence S in a document shows every earlier edit of that
/// document too (edits to one document are applied in order at A).
fn latencies(node: &Node, edits: &[Edit], deadline: Instant) -> Vec<Option<f64>> {
    let mut by_doc: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, (doc, _, _)) in edits.iter().enumerate() {
        by_doc.entry(doc.as_str()).or_default().push(i);
    }
    let lo = edits.iter().map(|e| e.1).min().unwrap_or(0);
    let hi = edits.iter().map(|e| e.1).max().unwrap_or(0);
    let mut out: Vec<Option<f64>> = vec![None; edits.len()];
    let mut left = edits.len();
    while left > 0 {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            break;
        }
        let Ok(ev) = node.events.recv_timeout(wait) else {
            break;
        };
        let (Some(doc), Some(seq), Some(t)) =
            (ev["doc"].as_str(), ev["seq"].as_u64(), ev["t"].as_u64())
        else {
            continue;
        };
        if seq < lo || seq > hi {
            continue;
        }
        if let Some(list) = by_doc.get(doc) {
            for &i in list {
                if out[i].is_none() && edits[i].1 <= seq {
                    out[i] = Some(t.saturating_sub(edits[i].2) as f64 / 1e3);
                    left -= 1;
                }
            }
        }
    }
    out
}

/// Latency of every edit to every receiver (the slowest receiver counts), sorted, and how
/// many edits some receiver never showed.
fn measure(receivers: &[&Node], edits: &[Edit], grace: Duration) -> (Vec<f64>, usize) {
    let deadline = Instant::now() + grace;
    let per: Vec<Vec<Option<f64>>> = receivers
        .iter()
        .map(|r| latencies(r, edits, deadline))
        .collect();
    let mut lat = Vec::new();
    let mut missing = 0;
    for i in 0..edits.len() {
        let mut worst: Option<f64> = Some(0.0);
        for p in &per {
            worst = match (worst, p[i]) {
                (Some(w), Some(l)) => Some(w.max(l)),
                _ => None,
            };
        }
        match worst {
            Some(w) => lat.push(w),
            None => missing += 1,
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    (lat, missing)
}

struct Ctx {
    work: PathBuf,
    quick: bool,
    n: usize,
    ids_file: PathBuf,
    seq: u64,
    figures: SamodFigures,
}

impl Ctx {
    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("samod: {s}");
        self.figures.notes.push(s);
    }

    fn next_seq(&mut self, count: u64) -> u64 {
        let s = self.seq;
        self.seq += count;
        s
    }

    /// Paced edits at A; returns the edits and the achieved rate.
    fn edits(&mut self, a: &mut Node, rate: f64, count: u64) -> anyhow::Result<(Vec<Edit>, f64)> {
        let seq0 = self.next_seq(count);
        let timeout = Duration::from_secs_f64(count as f64 / rate * 3.0 + 60.0);
        let r = a.call(
            json!({"cmd": "edits", "rate": rate, "count": count, "seq0": seq0}),
            timeout,
        )?;
        Ok((parse_edits(&r)?, r["achieved_rate"].as_f64().unwrap_or(0.0)))
    }
}

/// The 1-minute load average: the machine is shared, so every run records it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12 (clock ticks, 100/s).
    (tick(11) + tick(12)) / 100.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Scenario 1: A creates N documents; B (empty) dials A; time until B has stored all N.
fn cold(ctx: &mut Ctx) -> anyhow::Result<(Node, Node)> {
    let n = ctx.n;
    let mut a = Node::spawn(&ctx.work, "a")?;
    let created = a.call(
        json!({"cmd": "create", "count": n, "ids_file": ctx.ids_file}),
        Duration::from_secs(600),
    )?;
    let saved = created["bytes"].as_f64().unwrap_or(0.0);
    ctx.note(format!(
        "1: A created {n} documents (Repo::create, persisted) in {:.0} ms",
        created["ms"].as_f64().unwrap_or(0.0)
    ));
    let mut b = Node::spawn(&ctx.work, "b")?;
    let dial = b.call(
        json!({"cmd": "dial", "port": a.port}),
        Duration::from_secs(60),
    )?;
    let t0 = Node::t(&dial)?;
    let timeout = n as f64 / 20.0 + 120.0;
    let done = b.call(
        json!({"cmd": "wait", "count": n, "timeout_s": timeout}),
        Duration::from_secs_f64(timeout + 30.0),
    )?;
    let secs = (Node::t(&done)? - t0) as f64 / 1e6;
    let wire = b.wire()? as f64;
    let rss = b.call(json!({"cmd": "rss"}), Duration::from_secs(30))?;
    let f = &mut ctx.figures;
    f.cold_docs_per_s = Some(n as f64 / secs);
    f.cold_wire_bytes = Some(wire);
    f.cold_saved_bytes = Some(saved);
    f.cold_wire_ratio = (saved > 0.0).then(|| wire / saved);
    f.cold_peak_rss_b_mib = Some(mib(rss["hwm_kib"].as_u64().unwrap_or(0)));
    ctx.note(format!(
        "1: B stored all {n} in {secs:.2} s; B's storage {} bytes in files; durable = samod \
         finished its storage put (tokio::fs::write, samod does not fsync)",
        report::dir_bytes(&ctx.work.join("b"))
    ));
    // Check, outside the timing: B finds every document, and watch them for scenario 2.
    let loaded = b.call(
        json!({"cmd": "load", "ids_file": ctx.ids_file}),
        Duration::from_secs(600),
    )?;
    if loaded["found"].as_u64() != Some(n as u64) {
        bail!(
            "B found {} of {n} documents after the wait",
            loaded["found"]
        );
    }
    b.call(json!({"cmd": "watch"}), Duration::from_secs(60))?;
    Ok((a, b))
}

/// Scenario 1 at a size samod may not finish: A creates `n` documents, B dials, and B gets
/// `cap` to store them all. Returns a note with how far it got; no figure comes of it.
fn cold_probe(work: &Path, n: usize, cap: f64) -> anyhow::Result<String> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let ids = work.join("ids.txt");
    let mut a = Node::spawn(work, "a")?;
    a.call(
        json!({"cmd": "create", "count": n, "ids_file": ids}),
        Duration::from_secs(600),
    )?;
    let mut b = Node::spawn(work, "b")?;
    let t0 = Node::t(&b.call(
        json!({"cmd": "dial", "port": a.port}),
        Duration::from_secs(60),
    )?)?;
    let done = b.call(
        json!({"cmd": "wait", "count": n, "timeout_s": cap}),
        Duration::from_secs_f64(cap + 30.0),
    );
    let stored = b.call(json!({"cmd": "stats"}), Duration::from_secs(60))?["durable"]
        .as_u64()
        .unwrap_or(0);
    let note = match done {
        Ok(r) => {
            let secs = (Node::t(&r)? - t0) as f64 / 1e6;
            format!(
                "1 at N={n}: B stored all {n} in {secs:.1} s ({:.0} docs/s)",
                n as f64 / secs
            )
        }
        Err(_) => format!(
            "1 at N={n}: B stored only {stored} of {n} within {cap:.0} s ({:.1} docs/s), so \
             samod's figures use a smaller N. samod-core 0.16 does O(documents) work per hub \
             event (perf on B: HashMap::eq, Searches::pop_state_updates, \
             State::ensure_connections, PeerDocState::clone), so the cost per document grows \
             with N (observed: 1,000 -> ~220/s, 2,000 -> ~80/s, 10,000 -> stalls)",
            stored as f64 / cap
        ),
    };
    drop(b);
    drop(a);
    let _ = std::fs::remove_dir_all(work);
    Ok(note)
}

/// Scenario 1, pull variant: A's documents are on disk and not open (A restarted), so A
/// pushes nothing; B dials and finds every id (64 at a time), as a client of a sync server.
fn cold_pull(ctx: &mut Ctx) -> anyhow::Result<()> {
    let n = ctx.n;
    let work = ctx.work.join("pull");
    std::fs::create_dir_all(&work)?;
    let ids = work.join("ids.txt");
    let mut a = Node::spawn(&work, "a")?;
    a.call(
        json!({"cmd": "create", "count": n, "ids_file": ids}),
        Duration::from_secs(600),
    )?;
    a.stop()?;
    let a = Node::spawn(&work, "a")?;
    let mut b = Node::spawn(&work, "b")?;
    let t0 = Node::t(&b.call(
        json!({"cmd": "dial", "port": a.port}),
        Duration::from_secs(60),
    )?)?;
    let timeout = n as f64 / 10.0 + 120.0;
    let found = b.call(
        json!({"cmd": "load", "ids_file": ids}),
        Duration::from_secs_f64(timeout),
    )?;
    if found["found"].as_u64() != Some(n as u64) {
        bail!("B found {} of {n}", found["found"]);
    }
    let done = b.call(
        json!({"cmd": "wait", "count": n, "timeout_s": timeout}),
        Duration::from_secs_f64(timeout + 30.0),
    )?;
    let secs = (Node::t(&done)? - t0) as f64 / 1e6;
    ctx.figures.cold_pull_docs_per_s = Some(n as f64 / secs);
    ctx.figures.cold_pull_wire_bytes = Some(b.wire()? as f64);
    ctx.note(format!(
        "1 pull: B found and stored all {n} in {secs:.2} s; load {}",
        load_average()
    ));
    b.stop()?;
    drop(a);
    Ok(())
}

/// Scenario 2: paced edits at A, latency until B shows each.
fn propagation(ctx: &mut Ctx, a: &mut Node, b: &Node) -> anyhow::Result<()> {
    let plans: [(f64, u64); 2] = if ctx.quick {
        [(10.0, 50), (500.0, 500)]
    } else {
        [(10.0, 100), (500.0, 1000)]
    };
    for (rate, count) in plans {
        b.drain_events();
        let cpu0 = (cpu_s(a.pid), cpu_s(b.pid), Instant::now());
        let (edits, achieved) = ctx.edits(a, rate, count)?;
        let (lat, missing) = measure(&[b], &edits, Duration::from_secs(30));
        let cpu = format!(
            "CPU over {:.1} s: A {:.2} s, B {:.2} s; load {}",
            cpu0.2.elapsed().as_secs_f64(),
            cpu_s(a.pid) - cpu0.0,
            cpu_s(b.pid) - cpu0.1,
            load_average()
        );
        let p = |q| report::percentile(&lat, q);
        let f = &mut ctx.figures;
        if rate < 100.0 {
            (f.edit10_p50_ms, f.edit10_p99_ms, f.edit10_p999_ms) = (p(50.0), p(99.0), p(99.9));
        } else {
            (f.edit500_p50_ms, f.edit500_p99_ms, f.edit500_p999_ms) = (p(50.0), p(99.0), p(99.9));
        }
        ctx.note(format!(
            "2: {count} edits at {rate}/s (achieved {achieved:.0}/s), {missing} not seen at B \
             within 30 s, max {:.1} ms; {cpu}",
            lat.last().copied().unwrap_or(f64::NAN)
        ));
        if missing > 0 {
            let f = &mut ctx.figures;
            if rate < 100.0 {
                (f.edit10_p50_ms, f.edit10_p99_ms, f.edit10_p999_ms) = (None, None, None);
            } else {
                (f.edit500_p50_ms, f.edit500_p99_ms, f.edit500_p999_ms) = (None, None, None);
            }
            ctx.note(format!(
                "2: figures at {rate}/s withheld: {missing} edits lost"
            ));
        }
    }
    Ok(())
}

/// Scenario 3: C joins (dials A, replicates the N documents); edit rate at A raised stepwise
/// until the p99 latency to the slower of B and C passes 100 ms.
fn sustained(ctx: &mut Ctx, a: &mut Node, b: &Node) -> anyhow::Result<()> {
    let n = ctx.n;
    let mut c = Node::spawn(&ctx.work, "c")?;
    c.call(
        json!({"cmd": "dial", "port": a.port}),
        Duration::from_secs(60),
    )?;
    let timeout = n as f64 / 20.0 + 120.0;
    c.call(
        json!({"cmd": "wait", "count": n, "timeout_s": timeout}),
        Duration::from_secs_f64(timeout + 30.0),
    )?;
    c.call(
        json!({"cmd": "load", "ids_file": ctx.ids_file}),
        Duration::from_secs(600),
    )?;
    c.call(json!({"cmd": "watch"}), Duration::from_secs(60))?;
    let step_s = if ctx.quick { 2.0 } else { 5.0 };
    let mut best: Option<f64> = None;
    for rate in [
        20.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0, 6400.0,
    ] {
        b.drain_events();
        c.drain_events();
        let count = (rate * step_s) as u64;
        let cpu0 = (cpu_s(a.pid), cpu_s(b.pid), cpu_s(c.pid));
        let (edits, achieved) = ctx.edits(a, rate, count)?;
        let (lat, missing) = measure(&[b, &c], &edits, Duration::from_secs(30));
        let cpu = format!(
            "CPU A {:.2} s, B {:.2} s, C {:.2} s; load {}",
            cpu_s(a.pid) - cpu0.0,
            cpu_s(b.pid) - cpu0.1,
            cpu_s(c.pid) - cpu0.2,
            load_average()
        );
        let p99 = report::percentile(&lat, 99.0).unwrap_or(f64::INFINITY);
        let pass = missing == 0 && p99 <= 100.0 && achieved >= 0.9 * rate;
        ctx.note(format!(
            "3: {rate}/s for {step_s} s: achieved {achieved:.0}/s, p50 {:.1} ms, p99 {p99:.1} ms, \
             {missing} lost -> {}; {cpu}",
            report::percentile(&lat, 50.0).unwrap_or(f64::NAN),
            if pass { "pass" } else { "fail" }
        ));
        if !pass {
            break;
        }
        best = Some(rate);
    }
    ctx.figures.sustained_edits_per_s = best;
    if best.is_none() {
        ctx.note("3: no rate kept p99 <= 100 ms");
    }
    c.stop()
}

/// Scenario 4: B stopped, M documents changed at A, B restarted: time from the restart until
/// B shows every change and has had a sync message for every one of the N documents (samod
/// has no change feed: a reconnect re-syncs each document).
fn catch_up(ctx: &mut Ctx, a: &mut Node, mut b: Node) -> anyhow::Result<Node> {
    let n = ctx.n;
    let ms: &[u64] = if ctx.quick {
        &[0, 100]
    } else {
        &[0, 100, 1000]
    };
    for &m in ms {
        b.stop()?;
        let edits = if m > 0 {
            ctx.edits(a, 2000.0, m)?.0
        } else {
            Vec::new()
        };
        b = Node::spawn(&ctx.work, "b")?;
        let spawned = b.spawned_at;
        b.call(
            json!({"cmd": "dial", "port": a.port}),
            Duration::from_secs(60),
        )?;
        let timeout = n as f64 / 20.0 + 120.0;
        let docs: Vec<Value> = edits.iter().map(|(d, s, _)| json!([d, s])).collect();
        let seen = b.call(
            json!({"cmd": "expect", "docs": docs, "timeout_s": timeout}),
            Duration::from_secs_f64(timeout + 30.0),
        )?;
        let synced = b.call(
            json!({"cmd": "wait_synced", "count": n, "timeout_s": timeout}),
            Duration::from_secs_f64(timeout + 30.0),
        )?;
        let t_seen = Node::t(&seen)?;
        let t_synced = Node::t(&synced)?;
        let total = (t_seen.max(t_synced) - spawned) as f64 / 1e3;
        let wire = b.wire()? as f64;
        ctx.note(format!(
            "4: M={m}: changes shown {:.0} ms after restart, all {n} documents synced after \
             {:.0} ms (figure = the later, from spawning B's process)",
            (t_seen - spawned) as f64 / 1e3,
            (t_synced - spawned) as f64 / 1e3,
        ));
        let f = &mut ctx.figures;
        match m {
            0 => (f.catchup_m0_ms, f.catchup_m0_wire_bytes) = (Some(total), Some(wire)),
            100 => (f.catchup_m100_ms, f.catchup_m100_wire_bytes) = (Some(total), Some(wire)),
            _ => (f.catchup_m1000_ms, f.catchup_m1000_wire_bytes) = (Some(total), Some(wire)),
        }
    }
    Ok(b)
}

/// Scenario 5: a node started on B's storage (N documents on disk, no peers) loads them all.
fn memory(ctx: &mut Ctx) -> anyhow::Result<()> {
    let n = ctx.n;
    let mut d = Node::spawn(&ctx.work, "b")?;
    let empty = d.call(json!({"cmd": "rss"}), Duration::from_secs(30))?;
    let loaded = d.call(
        json!({"cmd": "load", "ids_file": ctx.ids_file}),
        Duration::from_secs(600),
    )?;
    if loaded["found"].as_u64() != Some(n as u64) {
        bail!("found {} of {n} documents on disk", loaded["found"]);
    }
    let full = d.call(json!({"cmd": "rss"}), Duration::from_secs(30))?;
    let (e, l) = (
        empty["rss_kib"].as_u64().unwrap_or(0),
        full["rss_kib"].as_u64().unwrap_or(0),
    );
    let start_ms = (Node::t(&loaded)? - d.spawned_at) as f64 / 1e3;
    ctx.figures.kib_per_doc = Some(l.saturating_sub(e) as f64 / n as f64);
    ctx.figures.start_ms = Some(start_ms);
    ctx.note(format!(
        "5: empty repo {:.1} MiB, with {n} documents loaded (Repo::find each) {:.1} MiB (pid {}); \
         start = spawn until every find resolved",
        mib(e),
        mib(l),
        d.pid
    ));
    d.stop()
}

/// Runs the samod baseline in `work` (wiped first).
pub fn run(quick: bool, work: &Path) -> anyhow::Result<SamodFigures> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let work = work.canonicalize()?;
    // samod's cold push is quadratic in the number of documents (see `cold_probe`): at
    // 10,000 it does not finish in minutes on this machine, so the full run probes 10,000 for
    // scenario 1 (a note, no figure) and measures everything at 2,000 (the size in
    // shared/measured.md).
    let n = if quick { 1_000 } else { 2_000 };
    let mut ctx = Ctx {
        ids_file: work.join("ids.txt"),
        work,
        quick,
        n,
        seq: 1,
        figures: SamodFigures {
            n,
            ..Default::default()
        },
    };
    ctx.note(format!(
        "samod 0.16, TokioFilesystemStorage, TCP 127.0.0.1 (length-delimited, TCP_NODELAY); \
         N = {n} documents (sample_plan sections) in every scenario"
    ));
    ctx.note(format!("load average at start: {}", load_average()));
    let started = Instant::now();
    if !quick {
        let cap = 180.0;
        match cold_probe(&ctx.work.join("probe"), 10_000, cap) {
            Ok(note) => ctx.note(note),
            Err(e) => ctx.note(format!("1 at N=10000 failed: {e:#}")),
        }
    }
    if let Err(e) = cold_pull(&mut ctx) {
        ctx.note(format!("1 pull failed: {e:#}"));
    }
    let (mut a, b) = match cold(&mut ctx) {
        Ok(ab) => ab,
        Err(e) => {
            ctx.note(format!("1 failed, so 2-5 were not run: {e:#}"));
            return Ok(ctx.figures);
        }
    };
    if let Err(e) = propagation(&mut ctx, &mut a, &b) {
        ctx.note(format!("2 failed: {e:#}"));
    }
    if let Err(e) = sustained(&mut ctx, &mut a, &b) {
        ctx.note(format!("3 failed: {e:#}"));
    }
    match catch_up(&mut ctx, &mut a, b) {
        Ok(b) => {
            if let Err(e) = b.stop() {
                ctx.note(format!("stopping B: {e:#}"));
            }
        }
        Err(e) => ctx.note(format!("4 failed: {e:#}")),
    }
    if let Err(e) = a.stop() {
        ctx.note(format!("stopping A: {e:#}"));
    }
    if let Err(e) = memory(&mut ctx) {
        ctx.note(format!("5 failed: {e:#}"));
    }
    ctx.note(format!(
        "samod run took {:.0} s; load average at end: {}",
        started.elapsed().as_secs_f64(),
        load_average()
    ));
    Ok(ctx.figures)
}

/// Puts samod's value beside Weft's in each matching row.
pub fn fill(figures: &mut [Figure], base: &SamodFigures) {
    let kb = |v: Option<f64>| v.map(|b| b / 1024.0);
    let s = |v: Option<f64>| v.map(|ms| ms / 1000.0);
    for f in figures.iter_mut() {
        let v = match f.metric.as_str() {
            "docs/s durable on B" => base.cold_docs_per_s,
            "wire bytes / saved bytes" => base.cold_wire_ratio,
            "p50 ms at 10/s" => base.edit10_p50_ms,
            "p99 ms at 10/s" => base.edit10_p99_ms,
            "p99.9 ms at 10/s" => base.edit10_p999_ms,
            "p50 ms at 500/s" => base.edit500_p50_ms,
            "p99 ms at 500/s" => base.edit500_p99_ms,
            "p99.9 ms at 500/s" => base.edit500_p999_ms,
            "edits/s with p99 <= 100 ms" => base.sustained_edits_per_s,
            "seconds, M=0" => s(base.catchup_m0_ms),
            "seconds, M=100" => s(base.catchup_m100_ms),
            "seconds, M=1000" => s(base.catchup_m1000_ms),
            "wire KB, M=0" => kb(base.catchup_m0_wire_bytes),
            "start to API answering, s" => s(base.start_ms),
            // samod keeps every document it holds loaded.
            "resident KiB per stored document" | "resident KiB per loaded document" => {
                base.kib_per_doc
            }
            _ => continue,
        };
        f.samod = v;
        if v.is_some() {
            f.note = format!("{}; samod N={}", f.note, base.n);
        }
    }
}
