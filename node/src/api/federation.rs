//! `weft.v1.Federation`: the peer-to-peer stream over mutual TLS, and the dialer.
//!
//! This file only moves frames: it reads the peer's agency from its certificate (never from
//! a message), converts wire frames to `service::replica::Frame`, and hands them to the
//! node service, which decides everything. One stream per pair of peers: the agency whose
//! id sorts first dials, the other accepts.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use automerge::ChangeHash;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::federation_server::Federation;

use crate::config::{PeerConfig, TlsFiles};
use crate::error::{Error, Result};
use crate::model::{AgencyId, PlanId, PlanRecord, SectionKey, SectionName, SubjectId, Timestamp};
use crate::service::replica::{Frame, SectionChanges};
use crate::service::NodeService;

/// Reads the agency id from a peer certificate: its one DNS subject alternative name other
/// than `localhost`.
pub fn agency_of_certificate(der: &[u8]) -> std::result::Result<AgencyId, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|_| "unparsable certificate".to_string())?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| "malformed subject alternative names".to_string())?
        .ok_or("no subject alternative names")?;
    let names: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .filter(|d| *d != "localhost")
        .collect();
    match names.as_slice() {
        [one] => AgencyId::parse(one).map_err(|e| format!("certificate names no agency: {e}")),
        [] => Err("certificate names no agency".into()),
        _ => Err("certificate names more than one agency".into()),
    }
}

fn heads_to_pb(heads: &[ChangeHash]) -> Vec<Vec<u8>> {
    heads.iter().map(|h| h.0.to_vec()).collect()
}

fn heads_from_pb(heads: &[Vec<u8>]) -> Result<Vec<ChangeHash>> {
    heads
        .iter()
        .map(|h| {
            ChangeHash::try_from(h.as_slice()).map_err(|_| Error::invalid("malformed change hash"))
        })
        .collect()
}

fn key_from(plan: &str, section: &str) -> Result<SectionKey> {
    Ok(SectionKey {
        plan: plan.parse::<PlanId>()?,
        section: SectionName::parse(section)?,
    })
}

/// Converts a domain frame to the wire.
pub fn to_pb(frame: Frame) -> pb::Frame {
    use pb::frame::Kind;
    let kind = match frame {
        Frame::Hello { key, feed_seq } => Kind::Hello(pb::Hello {
            consent_key: key.to_vec(),
            feed_seq,
        }),
        Frame::Changes(c) => Kind::Changes(pb::SectionChanges {
            plan_id: c.plan.id.to_string(),
            subject_id: c.plan.subject.to_string(),
            home_agency: c.plan.home.to_string(),
            plan_created_at_ms: c.plan.created_at.as_millis(),
            section: c.section.to_string(),
            changes: c.bytes,
            feed_seq: c.feed_seq,
            heads: heads_to_pb(&c.heads),
        }),
        Frame::Ack { key, heads } => Kind::Ack(pb::SectionAck {
            plan_id: key.plan.to_string(),
            section: key.section.to_string(),
            heads: heads_to_pb(&heads),
        }),
        Frame::Consent(b) => Kind::Consent(pb::SignedRecord { envelope: b }),
        Frame::Revocation(b) => Kind::Revocation(pb::SignedRecord { envelope: b }),
        Frame::Receipt(b) => Kind::PurgeReceipt(pb::SignedRecord { envelope: b }),
        Frame::Cursor(seq) => Kind::Cursor(pb::Cursor { seq }),
        Frame::CursorAck(seq) => Kind::CursorAck(pb::Cursor { seq }),
        Frame::Rejected { key, reason } => Kind::Rejected(pb::Rejected {
            plan_id: key.as_ref().map(|k| k.plan.to_string()).unwrap_or_default(),
            section: key.map(|k| k.section.to_string()).unwrap_or_default(),
            reason,
        }),
    };
    pb::Frame { kind: Some(kind) }
}

/// Converts a wire frame to the domain; malformed frames are an error naming the problem.
pub fn from_pb(frame: pb::Frame) -> Result<Frame> {
    use pb::frame::Kind;
    Ok(
        match frame.kind.ok_or_else(|| Error::invalid("empty frame"))? {
            Kind::Hello(h) => Frame::Hello {
                key: h
                    .consent_key
                    .try_into()
                    .map_err(|_| Error::invalid("a consent key is 32 bytes"))?,
                feed_seq: h.feed_seq,
            },
            Kind::Changes(c) => {
                let plan = PlanRecord {
                    id: c.plan_id.parse()?,
                    subject: c.subject_id.parse::<SubjectId>()?,
                    home: AgencyId::parse(&c.home_agency)
                        .map_err(|e| Error::invalid(format!("home agency: {e}")))?,
                    created_at: Timestamp::from_millis(c.plan_created_at_ms),
                };
                if c.changes.len() > crate::catalogue::MAX_SECTION_BYTES * 4 {
                    return Err(Error::invalid("section changes over the size limit"));
                }
                Frame::Changes(SectionChanges {
                    plan,
                    section: SectionName::parse(&c.section)?,
                    bytes: c.changes,
                    heads: heads_from_pb(&c.heads)?,
                    feed_seq: c.feed_seq,
                })
            }
            Kind::Ack(a) => Frame::Ack {
                key: key_from(&a.plan_id, &a.section)?,
                heads: heads_from_pb(&a.heads)?,
            },
            Kind::Consent(r) => Frame::Consent(r.envelope),
            Kind::Revocation(r) => Frame::Revocation(r.envelope),
            Kind::PurgeReceipt(r) => Frame::Receipt(r.envelope),
            Kind::Cursor(c) => Frame::Cursor(c.seq),
            Kind::CursorAck(c) => Frame::CursorAck(c.seq),
            Kind::Rejected(r) => Frame::Rejected {
                key: if r.plan_id.is_empty() {
                    None
                } else {
                    key_from(&r.plan_id, &r.section).ok()
                },
                reason: r.reason.chars().take(500).collect(),
            },
        },
    )
}

/// The federation service: accepts streams from configured peers.
pub struct FederationApi {
    svc: Arc<NodeService>,
    peers: Arc<Vec<PeerConfig>>,
    shutdown: watch::Receiver<bool>,
}

impl FederationApi {
    /// Wraps a node service and its peer list.
    pub fn new(
        svc: Arc<NodeService>,
        peers: Arc<Vec<PeerConfig>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            svc,
            peers,
            shutdown,
        }
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::Frame, Status>> + Send>>;

#[tonic::async_trait]
impl Federation for FederationApi {
    type SyncStream = FrameStream;

    /// `Sync`: one replication stream with a peer.
    async fn sync(
        &self,
        req: Request<Streaming<pb::Frame>>,
    ) -> std::result::Result<Response<FrameStream>, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let der = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let peer = match agency_of_certificate(der.as_ref()) {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(%why, "refused a peer");
                return Err(Status::permission_denied(why));
            }
        };
        if !self.peers.iter().any(|p| p.agency == peer) {
            tracing::warn!(peer = %peer, "refused a peer that is not configured");
            return Err(Status::permission_denied(
                "this agency is not a configured peer",
            ));
        }
        let (tx, rx) = mpsc::channel(256);
        let inbound = req
            .into_inner()
            .map(|r| r.map_err(|s| Error::Internal(format!("stream: {}", s.message()))));
        let svc = self.svc.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("peer", agency = %peer, side = "accept");
            let _ = tracing::Instrument::instrument(
                run_session(svc, peer, Box::pin(inbound), tx, shutdown),
                span,
            )
            .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}

type Inbound = Pin<Box<dyn Stream<Item = Result<pb::Frame>> + Send>>;

/// What this session sent the peer per section: the heads it will have once it processes
/// our frames (the stream is ordered).
type SentHeads = Arc<std::sync::Mutex<std::collections::HashMap<SectionKey, Vec<ChangeHash>>>>;

/// Runs one replication session until the stream ends, the node shuts down, or an error.
async fn run_session(
    svc: Arc<NodeService>,
    peer: AgencyId,
    mut inbound: Inbound,
    tx: mpsc::Sender<pb::Frame>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let result = async {
        tx.send(to_pb(svc.hello().await?))
            .await
            .map_err(|_| Error::internal("peer stream closed"))?;
        let first = inbound
            .next()
            .await
            .ok_or_else(|| Error::internal("peer closed before hello"))??;
        match from_pb(first)? {
            Frame::Hello { key, .. } => svc.accept_hello(&peer, &key).await?,
            _ => return Err(Error::invalid("the first frame must be a hello")),
        }
        svc.peer_update(&peer, |i| {
            i.connected = true;
            i.last_error.clear();
        });
        tracing::info!(peer = %peer, "peer connected");
        let (acked_tx, acked_rx) = watch::channel(0u64);
        let sent: SentHeads = Default::default();
        let pump = tokio::spawn(pump(
            svc.clone(),
            peer.clone(),
            tx.clone(),
            acked_rx,
            sent.clone(),
        ));
        let outcome = loop {
            let next = tokio::select! {
                f = inbound.next() => f,
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
            };
            let Some(frame) = next else { break Ok(()) };
            let frame = match frame.and_then(from_pb) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "malformed frame from peer");
                    let _ = tx
                        .send(to_pb(Frame::Rejected {
                            key: None,
                            reason: e.to_string(),
                        }))
                        .await;
                    continue;
                }
            };
            match &frame {
                Frame::CursorAck(seq) => {
                    acked_tx.send_replace(*seq);
                }
                Frame::Rejected { key: Some(key), .. } => {
                    // The peer could not use it (a consent it had not yet seen, missing
                    // history): forget what we sent, so the pump sends the whole section again.
                    if let Ok(mut sent) = sent.lock() {
                        sent.remove(key);
                    }
                    svc.wake();
                }
                _ => {}
            }
            match svc.handle_frame(&peer, frame).await {
                Ok(replies) => {
                    for r in replies {
                        if tx.send(to_pb(r)).await.is_err() {
                            break;
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        pump.abort();
        outcome
    }
    .await;
    svc.peer_update(&peer, |i| {
        i.connected = false;
        if let Err(e) = &result {
            i.last_error = e.to_string();
        }
    });
    match &result {
        Ok(()) => tracing::info!(peer = %peer, "peer disconnected"),
        Err(e) => tracing::warn!(peer = %peer, error = %e, "peer session ended with an error"),
    }
    result
}

/// Sends the peer what it should have: consents first, then purge receipts, new grants, and
/// every change in the feed after its cursor; then waits for more.
async fn pump(
    svc: Arc<NodeService>,
    peer: AgencyId,
    tx: mpsc::Sender<pb::Frame>,
    mut acked: watch::Receiver<u64>,
    sent_heads: SentHeads,
) -> Result<()> {
    let send = |f: Frame| {
        let tx = tx.clone();
        async move {
            tx.send(to_pb(f))
                .await
                .map_err(|_| Error::internal("peer stream closed"))
        }
    };
    let mut changes = svc.subscribe_changes();
    let mut sent_consents: HashSet<String> = HashSet::new();
    // Sends one section if the peer may have it and lacks something; consents first, so the
    // peer never sees a section before the consent that lets it hold it.
    let send_section = |key: SectionKey, sent_consents: HashSet<String>| {
        let (svc, peer, sent_heads, send) = (svc.clone(), peer.clone(), sent_heads.clone(), send);
        let mut fresh = Vec::new();
        async move {
            let known = sent_heads.lock().ok().and_then(|m| m.get(&key).cloned());
            let Some(frame) = svc.section_frame(&peer, &key, known.as_deref()).await? else {
                return Ok::<_, Error>(fresh);
            };
            for (id, consent) in svc.consent_frames_for(&peer).await? {
                if !sent_consents.contains(&id) {
                    fresh.push(id);
                    send(consent).await?;
                }
            }
            if let Frame::Changes(c) = &frame {
                if let Ok(mut m) = sent_heads.lock() {
                    m.insert(key, c.heads.clone());
                }
            }
            send(frame).await?;
            Ok(fresh)
        }
    };
    let mut receipts_in_flight: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut sent_receipts: HashSet<Vec<u8>> = HashSet::new();
    let mut cursor = svc.cursor(&peer).await?;
    loop {
        changes.borrow_and_update();
        for (id, frame) in svc.consent_frames_for(&peer).await? {
            if sent_consents.insert(id) {
                send(frame).await?;
            }
        }
        let mut need_marker = false;
        for (key, frame) in svc.pending_receipts(&peer).await? {
            if sent_receipts.insert(key.clone()) {
                send(frame).await?;
                receipts_in_flight.push((key, cursor));
                need_marker = true;
            }
        }
        for key in svc.grant_backlog(&peer).await? {
            let already = sent_heads
                .lock()
                .map(|m| m.contains_key(&key))
                .unwrap_or(false);
            if !already {
                for id in send_section(key, sent_consents.clone()).await? {
                    sent_consents.insert(id);
                }
            }
        }
        loop {
            let page = svc.feed_page(cursor, 256).await?;
            let Some(last) = page.last() else { break };
            let last = last.seq;
            let mut seen = HashSet::new();
            for entry in page {
                if seen.insert(entry.key.clone()) {
                    for id in send_section(entry.key, sent_consents.clone()).await? {
                        sent_consents.insert(id);
                    }
                }
            }
            cursor = last;
            send(Frame::Cursor(cursor)).await?;
            need_marker = false;
        }
        if need_marker {
            send(Frame::Cursor(cursor)).await?;
        }
        tokio::select! {
            r = changes.changed() => { if r.is_err() { return Ok(()); } }
            r = acked.changed() => {
                if r.is_err() { return Ok(()); }
                let upto = *acked.borrow_and_update();
                let (done, rest): (Vec<_>, Vec<_>) = receipts_in_flight.into_iter().partition(|(_, at)| *at <= upto);
                receipts_in_flight = rest;
                if !done.is_empty() {
                    svc.receipts_delivered(done.into_iter().map(|(k, _)| k).collect()).await?;
                }
            }
        }
    }
}

/// Dials a peer and keeps a session up, reconnecting with backoff, until shutdown.
pub async fn dial(
    svc: Arc<NodeService>,
    peer: PeerConfig,
    tls: TlsFiles,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = std::time::Instant::now();
        let result = dial_once(&svc, &peer, &tls, shutdown.clone()).await;
        if let Err(e) = &result {
            tracing::warn!(peer = %peer.agency, endpoint = %peer.endpoint, error = %e, "peer connection failed");
            svc.peer_update(&peer.agency, |i| i.last_error = e.to_string());
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn dial_once(
    svc: &Arc<NodeService>,
    peer: &PeerConfig,
    tls: &TlsFiles,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Internal(format!("cannot read {}: {e}", p.display())))
    };
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls.ca)?))
        .identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?))
        .domain_name(peer.agency.as_str());
    let channel = Channel::from_shared(peer.endpoint.clone())
        .map_err(|_| Error::invalid(format!("peer endpoint `{}` is not a URL", peer.endpoint)))?
        .tls_config(config)
        .map_err(|e| Error::Internal(format!("tls: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::Internal(format!("connect: {e}")))?;
    let mut client = pb::federation_client::FederationClient::new(channel)
        .max_decoding_message_size(crate::catalogue::MAX_SECTION_BYTES * 8)
        .max_encoding_message_size(crate::catalogue::MAX_SECTION_BYTES * 8);
    let (tx, rx) = mpsc::channel(256);
    let inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|s| {
            Error::Internal(format!(
                "peer refused the stream: {} ({:?})",
                s.message(),
                s.code()
            ))
        })?
        .into_inner()
        .map(|r| r.map_err(|s| Error::Internal(format!("stream: {}", s.message()))));
    let span = tracing::info_span!("peer", agency = %peer.agency, side = "dial");
    tracing::Instrument::instrument(
        run_session(
            svc.clone(),
            peer.agency.clone(),
            Box::pin(inbound),
            tx,
            shutdown,
        ),
        span,
    )
    .await
}
