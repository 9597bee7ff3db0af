//! Prometheus metrics: counters the node keeps, rendered as text on the HTTP port set by
//! `[metrics] listen`.
//!
//! Labels never carry student data or plan ids: RPC names, gRPC codes, denial rules and
//! peer agency ids only.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::NodeService;

/// Latency buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

#[derive(Default, Clone)]
struct RpcStat {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Counters for the client API.
#[derive(Default)]
pub struct Metrics {
    rpcs: Mutex<BTreeMap<(String, String), RpcStat>>,
}

impl Metrics {
    /// Records one RPC.
    pub fn observe(&self, rpc: &str, code: &str, seconds: f64) {
        if let Ok(mut m) = self.rpcs.lock() {
            let s = m.entry((rpc.to_string(), code.to_string())).or_default();
            s.count += 1;
            s.sum += seconds;
            for (i, b) in BUCKETS.iter().enumerate() {
                if seconds <= *b {
                    s.buckets[i] += 1;
                }
            }
        }
    }

    /// The Prometheus text exposition of everything the node counts.
    pub async fn render(&self, svc: &NodeService) -> String {
        let mut out = String::new();
        let rpcs = self.rpcs.lock().map(|m| m.clone()).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP weft_rpc_requests_total Client API requests by RPC and gRPC code."
        );
        let _ = writeln!(out, "# TYPE weft_rpc_requests_total counter");
        for ((rpc, code), s) in &rpcs {
            let _ = writeln!(
                out,
                "weft_rpc_requests_total{{rpc=\"{rpc}\",code=\"{code}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP weft_rpc_duration_seconds Client API latency by RPC."
        );
        let _ = writeln!(out, "# TYPE weft_rpc_duration_seconds histogram");
        let mut by_rpc: BTreeMap<&str, RpcStat> = BTreeMap::new();
        for ((rpc, _), s) in &rpcs {
            let t = by_rpc.entry(rpc.as_str()).or_default();
            t.count += s.count;
            t.sum += s.sum;
            for i in 0..BUCKETS.len() {
                t.buckets[i] += s.buckets[i];
            }
        }
        for (rpc, s) in &by_rpc {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "weft_rpc_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "weft_rpc_duration_seconds_bucket{{rpc=\"{rpc}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "weft_rpc_duration_seconds_sum{{rpc=\"{rpc}\"}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "weft_rpc_duration_seconds_count{{rpc=\"{rpc}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(out, "# HELP weft_denials_total Accesses refused, by rule (role, consent, guardian_binding, partner).");
        let _ = writeln!(out, "# TYPE weft_denials_total counter");
        for (rule, n) in svc.denial_counts() {
            let _ = writeln!(out, "weft_denials_total{{rule=\"{rule}\"}} {n}");
        }
        if let Ok(stats) = svc.store().stats().await {
            for (name, help, v) in [
                ("weft_plans", "Plans stored on this node.", stats.plans),
                (
                    "weft_feed_sequence",
                    "The local change feed's head.",
                    stats.feed_seq,
                ),
                (
                    "weft_audit_entries",
                    "Length of the audit hash chain.",
                    stats.audit_entries,
                ),
                (
                    "weft_store_bytes",
                    "Bytes the store uses on disk.",
                    stats.bytes,
                ),
                (
                    "weft_documents_cached",
                    "Section documents held in the document cache.",
                    svc.store().docs_cached() as u64,
                ),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
            }
            let _ = writeln!(
                out,
                "# HELP weft_documents_loaded_total Section documents loaded (decoded) since the node started.\n# TYPE weft_documents_loaded_total counter\nweft_documents_loaded_total {}",
                crate::section::documents_loaded()
            );
            let head = stats.feed_seq;
            let peers = svc.peer_status();
            type PeerField = fn(&crate::service::replica::PeerInfo, u64) -> u64;
            let series: [(&str, &str, &str, PeerField); 9] = [
                (
                    "weft_peer_connected",
                    "gauge",
                    "1 while a replication stream with the peer is up.",
                    |p, _| p.connected as u64,
                ),
                (
                    "weft_peer_connected_since_milliseconds",
                    "gauge",
                    "When the current (or last) stream with the peer started, unix milliseconds.",
                    |p, _| p.connected_since_ms.max(0) as u64,
                ),
                (
                    "weft_replication_lag",
                    "gauge",
                    "Changes here (feed sequence numbers) after the last one the peer acknowledged.",
                    |p, head| head.saturating_sub(p.acked_seq),
                ),
                (
                    "weft_replication_sections_sent_total",
                    "counter",
                    "Section documents sent to the peer.",
                    |p, _| p.sections_sent,
                ),
                (
                    "weft_replication_sections_received_total",
                    "counter",
                    "Section documents received from the peer and stored.",
                    |p, _| p.sections_received,
                ),
                (
                    "weft_replication_bytes_sent_total",
                    "counter",
                    "Bytes of section changes sent to the peer.",
                    |p, _| p.bytes_sent,
                ),
                (
                    "weft_replication_bytes_received_total",
                    "counter",
                    "Bytes of section changes received from the peer and stored.",
                    |p, _| p.bytes_received,
                ),
                (
                    "weft_replication_rejected_total",
                    "counter",
                    "Frames from the peer that were refused.",
                    |p, _| p.rejected,
                ),
                (
                    "weft_purges_total",
                    "counter",
                    "Purge receipts received (home) or sections purged (holder).",
                    |p, _| p.purges,
                ),
            ];
            for (name, kind, help, f) in series {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (agency, p) in &peers {
                    let _ = writeln!(out, "{name}{{peer=\"{agency}\"}} {}", f(p, head));
                }
            }
        }
        out
    }
}

/// A tower layer that counts and times every client API request.
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`MetricsLayer`].
#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

fn code_name(code: &str) -> &'static str {
    match code.parse::<i32>().map(tonic::Code::from) {
        Ok(tonic::Code::Ok) => "OK",
        Ok(tonic::Code::InvalidArgument) => "INVALID_ARGUMENT",
        Ok(tonic::Code::NotFound) => "NOT_FOUND",
        Ok(tonic::Code::AlreadyExists) => "ALREADY_EXISTS",
        Ok(tonic::Code::PermissionDenied) => "PERMISSION_DENIED",
        Ok(tonic::Code::Unauthenticated) => "UNAUTHENTICATED",
        Ok(tonic::Code::FailedPrecondition) => "FAILED_PRECONDITION",
        Ok(tonic::Code::Unavailable) => "UNAVAILABLE",
        Ok(tonic::Code::Internal) => "INTERNAL",
        Ok(tonic::Code::Aborted) => "ABORTED",
        Ok(tonic::Code::OutOfRange) => "OUT_OF_RANGE",
        Ok(tonic::Code::ResourceExhausted) => "RESOURCE_EXHAUSTED",
        _ => "OTHER",
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The RPC is the last path segment (`/weft.v1.PlanService/GetPlan` → `GetPlan`).
        let rpc = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .chars()
            .take(64)
            .collect::<String>();
        let metrics = self.metrics.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            if let Ok(resp) = &result {
                // Errors come back "trailers-only", with the status in the headers; a response
                // without one carries OK in its trailers.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("0");
                metrics.observe(&rpc, code_name(code), start.elapsed().as_secs_f64());
            }
            result
        })
    }
}

/// Serves `GET /metrics` (plain HTTP/1.1, text format 0.0.4) until shutdown.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    svc: Arc<NodeService>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener failed to accept");
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (metrics, svc) = (metrics.clone(), svc.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream.read(&mut buf),
            )
            .await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) =
                if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") {
                    ("200 OK", metrics.render(&svc).await)
                } else {
                    ("404 Not Found", "not found: try /metrics\n".to_string())
                };
            let reply = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
