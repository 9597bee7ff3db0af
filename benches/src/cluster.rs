//! Real Weft nodes as separate `weft serve` processes on 127.0.0.1, with a byte-counting
//! TCP relay on every peer link (wire bytes, TLS included) and metrics scraped over HTTP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::{channel, free_addr, weft_bin, Chan, TestPki, WeftProcess};

/// One agency of the benchmark federation.
pub struct Agency {
    /// Its id.
    pub id: String,
    /// Its config file.
    pub config: PathBuf,
    /// Its data directory.
    pub data: PathBuf,
    /// Client API.
    pub api: SocketAddr,
    /// Metrics endpoint.
    pub metrics: SocketAddr,
    /// CA certificate.
    pub ca: PathBuf,
    /// A coordinator's token.
    pub token: String,
    /// The running process, if started.
    pub process: Option<WeftProcess>,
}

/// Bytes through the relays, both directions.
#[derive(Clone, Default)]
pub struct Wire(Arc<AtomicU64>);

impl Wire {
    /// Bytes so far.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A federation of benchmark agencies in a work directory.
pub struct Federation {
    /// The agencies, in the order given.
    pub agencies: Vec<Agency>,
    /// Bytes on every peer link.
    pub wire: Wire,
    _pki: TestPki,
}

async fn pipe(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    wire: Wire,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wire.0.fetch_add(n as u64, Ordering::Relaxed);
        if w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}

/// Forwards every connection to `to`, counting bytes both ways. A failed accept (a
/// connection reset before it was taken, no file descriptor left) is reported and the relay
/// goes on: a relay that stopped would leave its agency unreachable for the rest of the run.
async fn relay(listener: TcpListener, to: SocketAddr, wire: Wire) {
    loop {
        let mut inbound = match listener.accept().await {
            Ok((inbound, _)) => inbound,
            Err(e) => {
                eprintln!("relay to {to}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let wire = wire.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(to).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (mut ri, mut wi) = inbound.split();
            let (mut ro, mut wo) = outbound.split();
            tokio::join!(
                pipe(&mut ri, &mut wo, wire.clone()),
                pipe(&mut ro, &mut wi, wire)
            );
        });
    }
}

impl Federation {
    /// Writes configs for `ids` (every pair peered through a counting relay, when `relayed`,
    /// else directly) under `dir`, and a coordinator per agency. Extra peers that never run
    /// can be listed in `offline_peers` (each agency lists them; they cost a failing dial
    /// now and then). The relays run in this process: they count wire bytes (TLS included)
    /// but take CPU from the nodes, so scenarios that report no wire bytes go direct.
    pub async fn new(
        dir: &Path,
        ids: &[&str],
        offline_peers: &[String],
        relayed: bool,
    ) -> anyhow::Result<Self> {
        let pki = TestPki::new()?;
        let wire = Wire::default();
        let peer_ports: Vec<SocketAddr> = ids
            .iter()
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?;
        // A relay in front of each agency's peer listener.
        let mut relays = Vec::new();
        for port in &peer_ports {
            if !relayed {
                relays.push(*port);
                continue;
            }
            let l = TcpListener::bind("127.0.0.1:0").await?;
            relays.push(l.local_addr()?);
            tokio::spawn(relay(l, *port, wire.clone()));
        }
        let mut agencies = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let agency = weft_node::model::AgencyId::parse(id)?;
            let tls = pki.issue(&agency)?;
            let home = dir.join(id);
            std::fs::create_dir_all(&home)?;
            let (api, metrics) = (free_addr()?, free_addr()?);
            let mut peers: Vec<weft_node::config::PeerConfig> = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, p)| weft_node::config::PeerConfig {
                    agency: weft_node::model::AgencyId::parse(p).expect("valid ids"),
                    endpoint: format!("https://{}", relays[j]),
                    name: None,
                })
                .collect();
            for p in offline_peers {
                peers.push(weft_node::config::PeerConfig {
                    agency: weft_node::model::AgencyId::parse(p)?,
                    endpoint: format!("https://{}", free_addr()?),
                    name: None,
                });
            }
            let federation = weft_node::config::FederationConfig {
                listen: peer_ports[i],
                peers,
            };
            let config = home.join("weft.toml");
            let data = home.join("data");
            std::fs::write(
                &config,
                weft_node::config::render_with_metrics(
                    &agency,
                    &data,
                    api,
                    &tls,
                    Some(&federation),
                    Some(metrics),
                ),
            )?;
            let out = weft(&[
                "user",
                "add",
                "bench",
                "--role",
                "coordinator",
                "--config",
                config.to_str().context("utf-8 path")?,
                "--json",
            ])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            agencies.push(Agency {
                id: id.to_string(),
                config,
                data,
                api,
                metrics,
                ca: tls.ca.clone(),
                token: v["token"].as_str().context("token")?.to_string(),
                process: None,
            });
        }
        Ok(Self {
            agencies,
            wire,
            _pki: pki,
        })
    }

    /// The agency called `id`.
    pub fn agency(&mut self, id: &str) -> &mut Agency {
        self.agencies
            .iter_mut()
            .find(|a| a.id == id)
            .expect("a configured agency")
    }
}

/// Runs `weft ARGS`, returning stdout or an error with stderr.
pub fn weft(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(weft_bin()?).args(args).output()?;
    if !out.status.success() {
        bail!(
            "weft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// (sections, saved bytes) from what `weft seed` printed.
pub fn seeded(out: &str) -> anyhow::Result<(u64, u64)> {
    // "seeded P plans (S sections, B bytes saved, C consents) in T s"
    let nums: Vec<u64> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    match nums.as_slice() {
        [_, sections, bytes, ..] => Ok((*sections, *bytes)),
        _ => bail!("unexpected seed output: {out}"),
    }
}

impl Agency {
    /// `weft seed` into the stopped node; returns (sections, saved bytes).
    pub fn seed(
        &self,
        plans: u64,
        consent_to: &[&str],
        access: &str,
    ) -> anyhow::Result<(u64, u64)> {
        let plans_s = plans.to_string();
        let mut args = vec![
            "seed",
            "--config",
            self.config.to_str().context("utf-8 path")?,
            "--plans",
            &plans_s,
            "--access",
            access,
        ];
        for c in consent_to {
            args.push("--consent-to");
            args.push(c);
        }
        seeded(&weft(&args)?)
    }

    /// Starts `weft serve` and waits until the API answers; returns the start time.
    pub async fn start(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.process = Some(WeftProcess::start(&self.config, self.api, &self.ca).await?);
        Ok(t.elapsed())
    }

    /// SIGTERM and wait (a clean stop).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .status();
            p.child.wait()?;
        }
        Ok(())
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    /// The running node's CPU time so far, user and system, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.pid().context("the node is not running")?;
        crate::report::cpu_seconds(pid).context("no CPU time for the node")
    }

    /// A client channel as the coordinator.
    pub async fn channel(&self) -> anyhow::Result<Chan> {
        channel(self.api, &self.ca, Some(&self.token)).await
    }

    /// The metrics page (a scrape that takes over 10 s fails).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let scrape = async {
            let mut s = TcpStream::connect(self.metrics).await?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
                .await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            anyhow::Ok(body)
        };
        tokio::time::timeout(Duration::from_secs(10), scrape)
            .await
            .with_context(|| format!("{}: the metrics page did not answer in 10 s", self.id))?
    }

    /// Waits until `f(metrics page)` holds, polling every 5 ms; returns when it did. Fails
    /// after `deadline`, or sooner when the node stalls: its change feed and the bytes it
    /// received from peers have not moved for [`STALL`] while `f` still does not hold (a
    /// full run's 100,000 sections take minutes; a stuck one should not take an hour).
    pub async fn wait_until(
        &self,
        what: &str,
        deadline: Duration,
        f: impl Fn(&str) -> bool,
    ) -> anyhow::Result<Instant> {
        let start = Instant::now();
        let mut progress = (f64::NAN, start);
        let mut last_page = String::new();
        loop {
            if let Ok(page) = self.metrics().await {
                if f(&page) {
                    return Ok(Instant::now());
                }
                let moved = value(&page, "weft_feed_sequence")
                    + sum(&page, "weft_replication_bytes_received_total");
                if moved != progress.0 {
                    progress = (moved, Instant::now());
                }
                last_page = page;
            }
            let stalled = progress.1.elapsed() > STALL;
            let exited = self.pid().is_some_and(|pid| !alive(pid));
            if start.elapsed() > deadline || stalled || exited {
                bail!(
                    "{}: {} after {:.0?} waiting for {what}\n{}\nits log ends:\n{}",
                    self.id,
                    if exited {
                        "the node exited"
                    } else if stalled {
                        "stalled"
                    } else {
                        "timed out"
                    },
                    start.elapsed(),
                    state(&last_page),
                    WeftProcess::log_tail(&self.config, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Whether process `pid` is running (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) state ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| !matches!(state, 'Z' | 'X'))
    })
}

/// How long a node may make no progress while a benchmark waits for it to receive.
pub const STALL: Duration = Duration::from_secs(120);

/// The replication lines of a metrics page (peers, feed, bytes), for a failure's message.
fn state(page: &str) -> String {
    page.lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "weft_peer_connected",
                    "weft_feed_sequence",
                    "weft_replication_",
                ]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sample values of the series of a metrics page that start with `series` (a name, or a
/// name with its labels), in page order.
fn samples<'a>(page: &'a str, series: &'a str) -> impl Iterator<Item = f64> + 'a {
    page.lines()
        .filter(move |l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of every series of `name` (all label values).
fn sum(page: &str, name: &str) -> f64 {
    samples(page, name).sum()
}

/// A value from a metrics page (first series starting with `series`, labels included).
pub fn value(page: &str, series: &str) -> f64 {
    samples(page, series).next().unwrap_or(0.0)
}
