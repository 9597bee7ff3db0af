//! `weft.v1.Federation`: the peer-to-peer stream over mutual TLS, and the dialer.
//!
//! This file only moves frames: it reads the peer's agency from its certificate (never from
//! a message), converts wire frames to `service::replica::Frame`, and hands them to the
//! node service, which decides everything. One stream per pair of peers: the agency whose
//! id sorts first dials, the other accepts.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use automerge::ChangeHash;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Response, Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::federation_server::Federation;

use crate::config::{PeerConfig, TlsFiles};
use crate::error::{Error, Result};
use crate::model::{AgencyId, PlanId, PlanRecord, SectionKey, SectionName, SubjectId, Timestamp};
use crate::service::replica::{Frame, SectionChanges};
use crate::service::{insert_bounded, NodeService};

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
            // This build opens compressed messages (`Unpacker`).
            zstd_frames: true,
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
            Kind::Batch(_) => return Err(Error::invalid("a batch inside a batch")),
            // `unbatch` opens the compressed messages a peer sends; one here was inside a
            // batch.
            Kind::Zstd(_) => return Err(Error::invalid("a compressed message inside a batch")),
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
        let (out, outbound) = outbound();
        let inbound = unbatch(req.into_inner());
        let svc = self.svc.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let span = tracing::info_span!("peer", agency = %peer, side = "accept");
            let _ = tracing::Instrument::instrument(
                run_session(svc, peer, inbound, out, shutdown),
                span,
            )
            .await;
        });
        Ok(Response::new(Box::pin(outbound.map(Ok))))
    }
}

type Inbound = Pin<Box<dyn Stream<Item = Result<pb::Frame>> + Send>>;

/// How long a peer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 and TCP keepalives, so a silently dead connection is noticed.
const KEEPALIVE: Duration = Duration::from_secs(20);

/// The sending halves of a session. Replies (acks, cursor acks, refusals) never wait for room,
/// so the read loop never blocks on the peer reading; the pump's frames are bounded, which is
/// the backpressure on catch-up.
#[derive(Clone)]
struct Outbound {
    replies: mpsc::UnboundedSender<pb::Frame>,
    pump: mpsc::Sender<pb::Frame>,
    /// Set once the peer's hello says it opens compressed messages.
    compress: Arc<AtomicBool>,
}

fn outbound() -> (Outbound, impl Stream<Item = pb::Frame> + Send + 'static) {
    let (replies, replies_rx) = mpsc::unbounded_channel();
    let (pump, pump_rx) = mpsc::channel(256);
    let compress = Arc::new(AtomicBool::new(false));
    let packer = Packer::new(compress.clone());
    let batches = futures::stream::unfold(
        (replies_rx, pump_rx, None, packer),
        |(mut replies, mut pump, held, mut packer)| async move {
            let (frames, held) = next_batch(&mut replies, &mut pump, held).await?;
            let message = packer.pack(batch_of(frames));
            Some((message, (replies, pump, held, packer)))
        },
    );
    (
        Outbound {
            replies,
            pump,
            compress,
        },
        batches,
    )
}

/// The most a batch carries, encoded: a frame that does not fit goes in the next one (a
/// frame bigger than this goes alone).
const BATCH_BYTES: usize = 1 << 20;

/// The most frames in a batch.
const BATCH_FRAMES: usize = 512;

/// Waits for a frame (`held`, left over from the last batch, first), then takes every
/// frame already waiting, replies before the pump's, up to the batch limits. Returns the
/// frames and the one that did not fit; `None` once both senders are gone.
async fn next_batch(
    replies: &mut mpsc::UnboundedReceiver<pb::Frame>,
    pump: &mut mpsc::Receiver<pb::Frame>,
    held: Option<pb::Frame>,
) -> Option<(Vec<pb::Frame>, Option<pb::Frame>)> {
    use prost::Message;
    let first = match held {
        Some(f) => f,
        None => tokio::select! {
            biased;
            Some(f) = replies.recv() => f,
            Some(f) = pump.recv() => f,
            else => return None,
        },
    };
    let mut bytes = first.encoded_len();
    let mut frames = vec![first];
    while frames.len() < BATCH_FRAMES {
        let Some(f) = replies.try_recv().ok().or_else(|| pump.try_recv().ok()) else {
            break;
        };
        bytes += f.encoded_len();
        if bytes > BATCH_BYTES {
            return Some((frames, Some(f)));
        }
        frames.push(f);
    }
    Some((frames, None))
}

/// One message for frames that were ready together: the frame itself when alone.
fn batch_of(mut frames: Vec<pb::Frame>) -> pb::Frame {
    if frames.len() == 1 {
        return frames.remove(0);
    }
    pb::Frame {
        kind: Some(pb::frame::Kind::Batch(pb::Batch { frames })),
    }
}

/// Messages shorter than this go uncompressed. A lone edit's frame is a few hundred bytes:
/// compressing it saved little, and setting zstd up for every message (as tonic's transport
/// compression does, with a fresh context each time) was ~15% of a replicating node's CPU.
const COMPRESS_FROM: usize = 1024;

/// The most a message may decode to, compressed or not.
pub const MAX_MESSAGE_BYTES: usize = crate::catalogue::MAX_SECTION_BYTES * 8;

/// zstd's default level: cold replication's batches came to ~0.45 bytes on the wire per
/// saved byte with it.
const ZSTD_LEVEL: i32 = 3;

/// Compresses a session's outgoing messages (see `Frame.zstd` in the proto) with one zstd
/// context, kept for the session, once the peer has said it opens them.
struct Packer {
    on: Arc<AtomicBool>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl Packer {
    fn new(on: Arc<AtomicBool>) -> Self {
        Self { on, zstd: None }
    }

    /// The message to send for `frame`: compressed when the peer opens compressed messages,
    /// the frame is long enough and compressing it saves bytes; else the frame itself.
    fn pack(&mut self, frame: pb::Frame) -> pb::Frame {
        use prost::Message;
        if !self.on.load(Ordering::Relaxed) || frame.encoded_len() < COMPRESS_FROM {
            return frame;
        }
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => match zstd::bulk::Compressor::new(ZSTD_LEVEL) {
                Ok(z) => self.zstd.insert(z),
                Err(e) => return uncompressed(frame, e),
            },
        };
        let plain = frame.encode_to_vec();
        match zstd.compress(&plain) {
            Ok(packed) if packed.len() < plain.len() => pb::Frame {
                kind: Some(pb::frame::Kind::Zstd(packed)),
            },
            Ok(_) => frame,
            Err(e) => uncompressed(frame, e),
        }
    }
}

/// A message that could not be compressed goes as it is.
fn uncompressed(frame: pb::Frame, e: std::io::Error) -> pb::Frame {
    tracing::warn!(error = %e, "could not compress a message; sending it as it is");
    frame
}

/// Opens a session's compressed messages with one zstd context.
#[derive(Default)]
struct Unpacker {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl Unpacker {
    /// The frames of one message: a batch's frames, or the frame itself. A compressed message
    /// that does not open, opens past `MAX_MESSAGE_BYTES` or holds another is an error: its
    /// frames cannot be told apart from damage, so the stream ends and the peer sends them
    /// again from the last acknowledged position.
    fn unpack(&mut self, message: pb::Frame) -> Result<Vec<pb::Frame>> {
        use prost::Message;
        let message = match message.kind {
            Some(pb::frame::Kind::Zstd(packed)) => {
                let zstd = match &mut self.zstd {
                    Some(z) => z,
                    None => self.zstd.insert(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| Error::internal(format!("zstd: {e}")))?,
                    ),
                };
                let plain = zstd.decompress(&packed, MAX_MESSAGE_BYTES).map_err(|e| {
                    Error::invalid(format!("a compressed message does not open: {e}"))
                })?;
                let inner = pb::Frame::decode(plain.as_slice()).map_err(|e| {
                    Error::invalid(format!("a compressed message does not decode: {e}"))
                })?;
                use pb::frame::Kind;
                let wraps = |f: &pb::Frame| matches!(f.kind, Some(Kind::Zstd(_) | Kind::Batch(_)));
                let nests = match &inner.kind {
                    Some(Kind::Batch(b)) => b.frames.iter().any(wraps),
                    _ => matches!(inner.kind, Some(Kind::Zstd(_))),
                };
                if nests {
                    return Err(Error::invalid(
                        "a compressed message inside a compressed message",
                    ));
                }
                inner
            }
            _ => message,
        };
        Ok(match message.kind {
            Some(pb::frame::Kind::Batch(b)) => b.frames,
            _ => vec![message],
        })
    }
}

/// A peer's messages as single frames: compressed messages and batches are opened here, and
/// the first error (the connection broke, a compressed message did not open) is the last
/// item.
fn unbatch(
    messages: impl Stream<Item = std::result::Result<pb::Frame, Status>> + Send + 'static,
) -> Inbound {
    struct State<S> {
        messages: Pin<Box<S>>,
        unpacker: Unpacker,
        opened: std::collections::VecDeque<pb::Frame>,
        failed: bool,
    }
    let state = State {
        messages: Box::pin(messages),
        unpacker: Unpacker::default(),
        opened: Default::default(),
        failed: false,
    };
    Box::pin(futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(f) = s.opened.pop_front() {
                return Some((Ok(f), s));
            }
            if s.failed {
                return None;
            }
            let opened = s
                .messages
                .next()
                .await?
                .map_err(|st| Error::Internal(format!("stream: {}", st.message())))
                .and_then(|m| s.unpacker.unpack(m));
            match opened {
                Ok(frames) => s.opened.extend(frames),
                Err(e) => {
                    s.failed = true;
                    return Some((Err(e), s));
                }
            }
        }
    }))
}

fn closed() -> Error {
    Error::internal("peer stream closed")
}

/// What this session sent the peer per section: the heads it will have once it processes
/// our frames (the stream is ordered).
type SentHeads = Arc<std::sync::Mutex<std::collections::HashMap<SectionKey, Vec<ChangeHash>>>>;

/// Runs one replication session until the stream ends, the node shuts down, or an error.
async fn run_session(
    svc: Arc<NodeService>,
    peer: AgencyId,
    mut inbound: Inbound,
    out: Outbound,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    // Until the end, after the peer's newest cursor and heads are written: a stopping node
    // waits for it.
    let _live = svc.session_started();
    let result = async {
        out.replies
            .send(to_pb(svc.hello().await?))
            .map_err(|_| closed())?;
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.next())
            .await
            .map_err(|_| Error::invalid("the peer sent no hello in time"))?
            .ok_or_else(|| Error::internal("peer closed before hello"))??;
        if let Some(pb::frame::Kind::Hello(h)) = &first.kind {
            out.compress.store(h.zstd_frames, Ordering::Relaxed);
        }
        match from_pb(first)? {
            Frame::Hello { key, .. } => svc.accept_hello(&peer, &key).await?,
            _ => return Err(Error::invalid("the first frame must be a hello")),
        }
        let session = svc.peer_connected(&peer);
        tracing::info!(peer = %peer, "peer connected");
        let (acks_tx, acks_rx) = watch::channel(0u64);
        let mut acks = 0u64;
        let sent: SentHeads = Default::default();
        let mut pump = tokio::spawn(pump(
            svc.clone(),
            peer.clone(),
            out.pump.clone(),
            acks_rx,
            sent.clone(),
        ));
        // Changes for different sections, and consents, are handled concurrently (their
        // commits share syncs). A section waits for the consents before it (they may be what
        // lets it in); any other frame waits for everything before it, so a cursor is
        // acknowledged only after all that came before it is stored.
        let mut in_flight: tokio::task::JoinSet<(InFlight, Result<Vec<Frame>>)> =
            tokio::task::JoinSet::new();
        let mut pending = Pending::default();
        let finish = |done: Option<Handled>, pending: &mut Pending| -> Result<()> {
            let Some(done) = done else { return Ok(()) };
            let (what, replies) =
                done.map_err(|e| Error::internal(format!("handling a frame failed: {e}")))?;
            pending.done(&what);
            for r in replies? {
                if out.replies.send(to_pb(r)).is_err() {
                    break;
                }
            }
            Ok(())
        };
        let mut held = Held::default();
        let outcome = loop {
            let next = tokio::select! {
                f = inbound.next() => Some(f),
                // What is held is due.
                _ = held.due() => None,
                done = in_flight.join_next(), if !in_flight.is_empty() => {
                    match finish(done, &mut pending) {
                        Ok(()) => continue,
                        Err(e) => break Err(e),
                    }
                }
                r = &mut pump => break match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(Error::internal(format!("replication pump failed: {e}"))),
                },
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
            };
            let frame = match next {
                None => None,
                Some(None) => break Ok(()),
                // The stream itself failed (the connection broke): end the session.
                Some(Some(Err(e))) => break Err(e),
                Some(Some(Ok(f))) => match from_pb(f) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        tracing::warn!(peer = %peer, error = %e, "malformed frame from peer");
                        let _ = out.replies.send(to_pb(Frame::Rejected {
                            key: None,
                            reason: format!("malformed: {e}"),
                        }));
                        continue;
                    }
                },
            };
            let (frame, write_held) = match frame {
                None => (None, true),
                Some(Frame::Ack { key, heads }) => {
                    // The first heads noted of a section (it went whole) say the peer holds
                    // it, which lets the home record the disclosure of its next change with
                    // the change: written soon (see `Held`). Later ones only move them on.
                    let first = sent.lock().map_or(true, |m| !m.contains_key(&key));
                    held.ack(key, heads, first);
                    (None, held.is_full())
                }
                // Cursors say nothing about sections: held acknowledgements may wait past
                // them, but not first heads (see `Held::cursor`).
                Some(Frame::CursorAck(seq)) => (Some(Frame::CursorAck(seq)), held.cursor(seq)),
                Some(f @ Frame::Cursor(_)) => (Some(f), false),
                // Any other frame may change what is noted of a section (a refusal forgets
                // it, the peer's own changes note newer heads): they are written first.
                Some(f) => (Some(f), !held.acks.is_empty()),
            };
            if write_held {
                let (acks, cursor) = held.take();
                if let Err(e) = svc.acknowledged(&peer, acks, cursor).await {
                    break Err(e);
                }
            }
            let Some(frame) = frame else { continue };
            let receipt = match &frame {
                Frame::CursorAck(_) => {
                    acks += 1;
                    acks_tx.send_replace(acks);
                    None
                }
                Frame::Rejected {
                    key: Some(key),
                    reason,
                } => {
                    // Forget what we sent, so the whole section goes again: at once when the
                    // peer lacked history, or at the next change (a refusal on consent or
                    // size would only repeat if resent straight away).
                    if let Ok(mut sent) = sent.lock() {
                        sent.remove(key);
                    }
                    if reason.starts_with("missing_deps") || reason.starts_with("malformed") {
                        svc.wake();
                    }
                    None
                }
                Frame::Receipt(bytes) => crate::service::replica::receipt_section(bytes),
                Frame::Changes(c) => {
                    // The peer's own heads (stored with its changes) now say more than what
                    // this session sent: use them, so its change is not echoed back to it.
                    if let Ok(mut sent) = sent.lock() {
                        sent.remove(&SectionKey {
                            plan: c.plan.id,
                            section: c.section.clone(),
                        });
                    }
                    None
                }
                _ => None,
            };
            // What this frame is in flight as (`None`: it is handled alone).
            let what = match &frame {
                Frame::Changes(c) => Some(InFlight::Section(SectionKey {
                    plan: c.plan.id,
                    section: c.section.clone(),
                })),
                Frame::Consent(_) => Some(InFlight::Consent),
                _ => None,
            };
            let mut failed = None;
            while pending.blocks(what.as_ref(), in_flight.len()) {
                if let Err(e) = finish(in_flight.join_next().await, &mut pending) {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break Err(e);
            }
            if let Some(what) = what {
                pending.add(&what);
                let (svc, peer) = (svc.clone(), peer.clone());
                in_flight.spawn(async move {
                    let replies = svc.handle_frame(&peer, frame).await;
                    (what, replies)
                });
                continue;
            }
            match svc.handle_frame(&peer, frame).await {
                Ok(replies) => {
                    for r in replies {
                        if out.replies.send(to_pb(r)).is_err() {
                            break;
                        }
                    }
                }
                Err(e) => break Err(e),
            }
            if let Some(key) = receipt {
                // The holder purged it: a later grant must send the whole section again.
                if let Ok(mut sent) = sent.lock() {
                    sent.remove(&key);
                }
                svc.wake();
            }
        };
        pump.abort();
        in_flight.abort_all();
        // What a newer session with the peer runs on may be newer than what this one holds
        // (a purge receipt forgets a section's heads): its hints are dropped.
        if !held.is_empty() && svc.is_newest_session(&peer, session) {
            let (acks, cursor) = held.take();
            if let Err(e) = svc.acknowledged(&peer, acks, cursor).await {
                tracing::warn!(peer = %peer, error = %e, "could not note the peer's last acknowledgements");
            }
        }
        svc.peer_disconnected(&peer, session, |i| {
            if let Err(e) = &outcome {
                i.last_error = e.to_string();
            }
        });
        outcome
    }
    .await;
    match &result {
        Ok(()) => tracing::info!(peer = %peer, "peer disconnected"),
        Err(e) => tracing::warn!(peer = %peer, error = %e, "peer session ended with an error"),
    }
    result
}

/// A frame being handled beside others.
enum InFlight {
    /// Changes to this section.
    Section(SectionKey),
    /// A consent record.
    Consent,
}

/// The sections and the number of consents in flight.
#[derive(Default)]
struct Pending {
    sections: HashSet<SectionKey>,
    consents: usize,
}

impl Pending {
    fn add(&mut self, what: &InFlight) {
        match what {
            InFlight::Section(key) => {
                self.sections.insert(key.clone());
            }
            InFlight::Consent => self.consents += 1,
        }
    }

    fn done(&mut self, what: &InFlight) {
        match what {
            InFlight::Section(key) => {
                self.sections.remove(key);
            }
            InFlight::Consent => self.consents -= 1,
        }
    }

    /// Whether a frame (`what`: `None` for one handled alone) must wait for some of the
    /// `in_flight` frames: a consent only for room, a section also for the consents before
    /// it and an earlier frame of its own, anything else for every frame before it.
    fn blocks(&self, what: Option<&InFlight>, in_flight: usize) -> bool {
        in_flight >= RECEIVE_AHEAD
            || match what {
                Some(InFlight::Consent) => false,
                Some(InFlight::Section(key)) => self.consents > 0 || self.sections.contains(key),
                None => in_flight > 0,
            }
    }
}

/// A finished frame handler: what it was and its replies, or a panic.
type Handled = std::result::Result<(InFlight, Result<Vec<Frame>>), tokio::task::JoinError>;

/// The most acknowledgements held for one write.
const HELD_ACKS: usize = 512;

/// How long acknowledgements are held before they are written (see [`Held`]). They are
/// hints: within a session the pump goes by what it sent, and one lost to a crash only
/// means sending a section's older changes again.
const ACKS_HELD_FOR: Duration = Duration::from_millis(250);

/// How long the first heads of a section sent whole are held, at most (see [`Held`]): long
/// enough for a cold copy's acknowledgements to go a few dozen to a write.
const FIRST_HELD_FOR: Duration = Duration::from_millis(20);

/// How often the peer's acknowledged cursor is stored while its session runs, at most (see
/// [`Held`]). A peer acknowledges a cursor after every page the pump sends (in scenario 3 of
/// the benchmark, ~1.7 per edit at every node), and each was a transaction of its own. A
/// stored cursor older than the peer's (after a crash) only makes the next session page
/// more of the feed, whose sections the peer's noted heads then mostly rule out.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// What the peer acknowledged, held by its session and written as one hint:
///
/// - a section's heads, held for up to [`ACKS_HELD_FOR`] (or until [`HELD_ACKS`] are held).
///   A peer acknowledges every section it stores, and one write each was a transaction of
///   its own (in scenario 3 of the benchmark, one per edit per peer at the home).
/// - the first heads of a section the peer was sent whole, for up to [`FIRST_HELD_FOR`], or
///   until the next acknowledged cursor. Written one at a time, a cold copy's 100,000 of them
///   kept the home's session loop ~7 s behind the copy (scenario 1 of the benchmark), and
///   with them the cursor and consent position the peer acknowledged: a peer restarted
///   meanwhile was sent every consent record again.
/// - the cursor: the session's first is stored at once, then at most once every
///   [`CURSOR_SAVE_EVERY`]. One lower than the last stored goes at once: the pump lowers it
///   to have a section it could not send read again, and a stored cursor past that
///   section would skip it.
///
/// Whatever is held is also written when the session ends.
#[derive(Default)]
struct Held {
    acks: Vec<(SectionKey, Vec<ChangeHash>)>,
    /// When the oldest held acknowledgement is due.
    acks_due: Option<tokio::time::Instant>,
    /// Some of `acks` are first heads.
    first: bool,
    /// The newest cursor acknowledged and not stored yet.
    cursor: Option<u64>,
    /// When this session last stored a cursor, and which.
    stored: Option<(tokio::time::Instant, u64)>,
}

impl Held {
    /// Holds a section's acknowledged heads; `first` when they are the first noted of it.
    fn ack(&mut self, key: SectionKey, heads: Vec<ChangeHash>, first: bool) {
        self.acks.push((key, heads));
        // Heads held already are due within ACKS_HELD_FOR: only first heads bring it closer.
        if first || self.acks_due.is_none() {
            self.first |= first;
            let held_for = if first { FIRST_HELD_FOR } else { ACKS_HELD_FOR };
            let due = tokio::time::Instant::now() + held_for;
            self.acks_due = Some(self.acks_due.map_or(due, |at| at.min(due)));
        }
    }

    /// Whether first heads are held.
    #[cfg(test)]
    fn has_first(&self) -> bool {
        self.first
    }

    /// Holds the cursor the peer acknowledged; whether to write what is held now: first
    /// heads go with it (the peer has had the frames before it), else the cursor is stored
    /// at most once a period.
    fn cursor(&mut self, seq: u64) -> bool {
        self.cursor = Some(seq);
        self.first
            || self
                .stored
                .is_none_or(|(at, stored)| seq < stored || at.elapsed() >= CURSOR_SAVE_EVERY)
    }

    fn is_full(&self) -> bool {
        self.acks.len() >= HELD_ACKS
    }

    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.cursor.is_none()
    }

    /// Everything held, to write.
    fn take(&mut self) -> (Vec<(SectionKey, Vec<ChangeHash>)>, Option<u64>) {
        self.acks_due = None;
        self.first = false;
        let cursor = self.cursor.take();
        if let Some(seq) = cursor {
            self.stored = Some((tokio::time::Instant::now(), seq));
        }
        (std::mem::take(&mut self.acks), cursor)
    }

    /// Returns once something held is due; never while nothing is held.
    async fn due(&self) {
        let cursor_due = self
            .cursor
            .and(self.stored)
            .map(|(at, _)| at + CURSOR_SAVE_EVERY);
        match self.acks_due.into_iter().chain(cursor_due).min() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Changes and consent frames from one peer handled concurrently (their commits share
/// syncs). 128 was tried: at N = 100,000 it replicated no faster (858 cold docs/s, against
/// 923 with 32 the same evening).
const RECEIVE_AHEAD: usize = 32;

/// Section frames a pump prepares concurrently.
const PREPARE_AHEAD: usize = 32;

/// Sends the peer what it should have: consents first, then purge receipts, new grants, and
/// every section changed in the feed after its cursor (the feed holds each section's last
/// change); then waits for more.
async fn pump(
    svc: Arc<NodeService>,
    peer: AgencyId,
    tx: mpsc::Sender<pb::Frame>,
    mut acks: watch::Receiver<u64>,
    sent_heads: SentHeads,
) -> Result<()> {
    let send = |f: Frame| {
        let tx = tx.clone();
        async move { tx.send(to_pb(f)).await.map_err(|_| closed()) }
    };
    let mut changes = svc.subscribe_changes(&peer);
    // The consent generation this round's backlog and `named` were worked out under.
    let mut consents_at: Option<u64> = None;
    let mut cursors_sent = 0u64;
    let mut receipts_in_flight: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut sent_receipts: HashSet<Vec<u8>> = HashSet::new();
    // Consent-log positions sent, with the cursor marker whose acknowledgement proves them.
    let mut positions_in_flight: Vec<(u64, u64)> = Vec::new();
    let mut cursor = svc.cursor(&peer).await?;
    // The feed sequence of what this session sent per section.
    let mut sent_seq: std::collections::HashMap<SectionKey, u64> = Default::default();
    let mut consent_pos = svc.consent_position(&peer).await?;
    let mut records = RecordsSent {
        ids: HashSet::new(),
        pos: consent_pos,
    };
    // A new peer's cursor moves to the feed's head once the first round's backlog is
    // taken (see `NodeService::head_for_new`): it need not page through the whole feed.
    let mut new_head = svc.head_for_new(&peer).await?;
    // Per plan, whether a consent record of its child names who a send needs named (see
    // `NodeService::may_send_plan`). For most plans and most peers none does, and their
    // feed entries are dropped here without a frame. Forgotten whenever consents change
    // (a grant's sections then come from the backlog, as for any refused section).
    let mut named: std::collections::HashMap<PlanId, bool> = Default::default();
    // Sections whose frame could not be prepared (a store error), with the feed sequence of
    // their change (0 when unknown): retried until they go, and the cursor the peer
    // acknowledges stays before the earliest, so a reconnect reads them again.
    let mut failed: std::collections::HashMap<SectionKey, u64> = Default::default();
    let mut retry_in = RETRY_FIRST;
    // The last cursor sent to the peer.
    let mut acked_from = cursor;
    let capped = |cursor: u64, failed: &std::collections::HashMap<SectionKey, u64>| {
        failed
            .values()
            .map(|seq| seq.saturating_sub(1))
            .fold(cursor, u64::min)
    };
    loop {
        changes.borrow_and_update();
        let mut backlog = Vec::new();
        let mut need_marker = false;
        let generation = svc.consent_generation();
        if consents_at != Some(generation) {
            named.clear();
            let (keys, position) = records.send(&svc, &peer, &tx, consent_pos).await?;
            backlog = keys;
            if position != consent_pos {
                positions_in_flight.push((position, cursors_sent + 1));
                need_marker = true;
                consent_pos = position;
            }
            consents_at = Some(generation);
            if let Some(head) = new_head.take() {
                cursor = cursor.max(head);
            }
        }
        for (key, frame) in svc.pending_receipts(&peer).await? {
            if sent_receipts.insert(key.clone()) {
                send(frame).await?;
                receipts_in_flight.push((key, cursors_sent + 1));
                need_marker = true;
            }
        }
        let mut keys: Vec<SectionKey> = backlog
            .into_iter()
            .filter(|k| {
                !sent_heads
                    .lock()
                    .map(|m| m.contains_key(k))
                    .unwrap_or(false)
            })
            .collect();
        keys.extend(
            failed
                .keys()
                .filter(|k| !keys.contains(k))
                .cloned()
                .collect::<Vec<_>>(),
        );
        loop {
            let page = if keys.is_empty() {
                svc.feed_page(cursor, FEED_PAGE).await?
            } else {
                Vec::new()
            };
            let last = page.last().map(|e| e.seq);
            let page_len = page.len();
            let mut seen = HashSet::new();
            // Skip sections this session already sent at or after this change (a whole
            // document sent from the grant backlog covers the feed entries behind it), and
            // sections whose last change here left nothing the peer lacks (it came from the
            // peer).
            let newest: std::collections::HashMap<SectionKey, (u64, bool)> = page
                .iter()
                .map(|e| (e.key.clone(), (e.seq, e.known_to.as_ref() == Some(&peer))))
                .collect();
            for e in page {
                let (seq, known) = newest[&e.key];
                if !seen.insert(e.key.clone())
                    || known
                    || sent_seq.get(&e.key).is_some_and(|sent| *sent >= seq)
                {
                    continue;
                }
                let may = match named.get(&e.key.plan) {
                    Some(may) => *may,
                    None => match svc.may_send_plan(&peer, e.key.plan).await {
                        Ok(may) => {
                            insert_bounded(&mut named, e.key.plan, may, NAMED_KEPT);
                            may
                        }
                        // Unknown (a read failed): the frame decides, and retries on error.
                        Err(_) => true,
                    },
                };
                if may {
                    keys.push(e.key);
                }
            }
            // A page whose sections were all sent already still moves the cursor.
            if keys.is_empty() && last.is_none() {
                break;
            }
            // Frames are prepared PREPARE_AHEAD at a time (their reads, document work and
            // disclosure records overlap and share syncs) and sent in feed order.
            let prepared = futures::stream::iter(keys.drain(..))
                .map(|key| {
                    let known = sent_heads.lock().ok().and_then(|m| m.get(&key).cloned());
                    let (svc, peer) = (svc.clone(), peer.clone());
                    async move {
                        let frame = svc.section_frame(&peer, &key, known.as_deref()).await;
                        (key, frame)
                    }
                })
                .buffered(PREPARE_AHEAD);
            tokio::pin!(prepared);
            while let Some((key, frame)) = prepared.next().await {
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        failed.remove(&key);
                        continue;
                    }
                    Err(e) => {
                        // One unreadable section must not stall the peer's whole feed, nor be
                        // skipped for good: it is retried, and the cursor waits for it.
                        tracing::error!(peer = %peer, error = %e, "could not prepare a section for a peer; will retry");
                        // The change's feed sequence when it came from this page; a backlog
                        // section's is unknown here (0: the whole feed is read again after
                        // a reconnect, which finds it).
                        let seq = newest.get(&key).map(|(seq, _)| *seq);
                        let at = failed.entry(key).or_insert(seq.unwrap_or(0));
                        if let Some(seq) = seq {
                            *at = (*at).min(seq);
                        }
                        continue;
                    }
                };
                failed.remove(&key);
                // The peer never sees a section before the consent that lets it hold it.
                if records.send_new(&svc, &peer, &tx).await? {
                    consents_at = None;
                }
                if let Frame::Changes(c) = &frame {
                    sent_seq.insert(key.clone(), c.feed_seq);
                    // A whole document (empty heads): the peer's acknowledgement will say
                    // what it has.
                    if !c.heads.is_empty() {
                        if let Ok(mut m) = sent_heads.lock() {
                            m.insert(key, c.heads.clone());
                        }
                    }
                }
                send(frame).await?;
            }
            // Between pages too: a revocation need not wait for a long feed in which
            // nothing goes to this peer.
            if records.send_new(&svc, &peer, &tx).await? {
                consents_at = None;
            }
            if let Some(last) = last {
                cursor = last;
                acked_from = capped(cursor, &failed);
                send(Frame::Cursor(acked_from)).await?;
                cursors_sent += 1;
                need_marker = false;
                // Caught up with the feed: what came meanwhile waits for the peer's
                // acknowledgement (see `ACK_WAIT`). A full page goes on at once (catch-up).
                if page_len < FEED_PAGE {
                    break;
                }
            }
        }
        // A retried section that went lifts the cap: say so.
        if need_marker || capped(cursor, &failed) != acked_from {
            acked_from = capped(cursor, &failed);
            send(Frame::Cursor(acked_from)).await?;
            cursors_sent += 1;
        }
        if consents_at.is_none() {
            continue;
        }
        if failed.is_empty() {
            retry_in = RETRY_FIRST;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_in), if !failed.is_empty() => {
                retry_in = (retry_in * 2).min(RETRY_MAX);
            }
            r = changes.changed() => {
                if r.is_err() { return Ok(()); }
                // Changes wait for the peer to acknowledge what was sent before them, so
                // that those that come meanwhile go together (see `ACK_WAIT`).
                if cursors_sent > *acks.borrow() {
                    let _ = tokio::time::timeout(ACK_WAIT, acks.wait_for(|n| *n >= cursors_sent))
                        .await;
                }
            }
            r = acks.changed() => { if r.is_err() { return Ok(()); } }
        }
        let acked = *acks.borrow_and_update();
        let (done, rest): (Vec<_>, Vec<_>) = receipts_in_flight
            .into_iter()
            .partition(|(_, marker)| *marker <= acked);
        receipts_in_flight = rest;
        if !done.is_empty() {
            svc.receipts_delivered(done.into_iter().map(|(k, _)| k).collect())
                .await?;
        }
        let (done, rest): (Vec<_>, Vec<_>) = positions_in_flight
            .into_iter()
            .partition(|(_, marker)| *marker <= acked);
        positions_in_flight = rest;
        if let Some(pos) = done.into_iter().map(|(p, _)| p).max() {
            svc.consent_delivered(&peer, pos).await?;
        }
    }
}

/// The consent records and revocations a pump has sent its peer in this session.
struct RecordsSent {
    /// Their ids: each goes once.
    ids: HashSet<String>,
    /// The consent-log position up to which every record naming the peer has gone.
    pos: u64,
}

impl RecordsSent {
    /// Sends the records and revocations naming `peer` that changed after consent-log
    /// position `from` and have not gone yet; returns the sections it may now hold but was
    /// never sent (their signatures are checked) and the position read.
    async fn send(
        &mut self,
        svc: &NodeService,
        peer: &AgencyId,
        tx: &mpsc::Sender<pb::Frame>,
        from: u64,
    ) -> Result<(Vec<SectionKey>, u64)> {
        let (subjects, position) = svc.consent_subjects(peer, from).await?;
        let mut keys = Vec::new();
        // How far records recorded during this send went out (see below).
        let mut newer = position;
        for (i, chunk) in subjects.chunks(CATCH_UP_CHUNK).enumerate() {
            // A long catch-up (a first session, or one after a restart that lost the
            // position) reads every child naming the peer: what was recorded meanwhile, a
            // revocation above all, goes between two chunks instead of after the last.
            // Records only; the next round takes their backlog (the consent generation
            // moved).
            if i > 0 && svc.consent_head().await? > newer {
                newer = self.send_records_since(svc, peer, tx, newer).await?;
            }
            let up = svc.consent_catch_up(peer, chunk, true).await?;
            self.send_frames(tx, up.frames).await?;
            keys.extend(up.backlog);
        }
        // Every record up to `newer` has gone (the flushes), so `send_new` need not read
        // those changes again; the position returned, which the peer's acknowledgement
        // persists, stays the one whose backlog this send worked out.
        self.pos = self.pos.max(newer);
        // In the store's key order (plan by plan), not the children's: the home then reads
        // its trees, and the peer writes its own, front to back instead of at random places
        // in trees far larger than sled's page cache. Cold replication of a million
        // sections: 2,399 and 2,723 docs/s in the children's order, 3,070 and 3,198 in this.
        keys.sort_unstable();
        Ok((keys, position))
    }

    /// Sends the records (only: no backlog, no signature checks) of the children whose
    /// consents changed after `from` and have not gone yet; returns the position read.
    async fn send_records_since(
        &mut self,
        svc: &NodeService,
        peer: &AgencyId,
        tx: &mpsc::Sender<pb::Frame>,
        from: u64,
    ) -> Result<u64> {
        let (changed, position) = svc.consent_subjects(peer, from).await?;
        let up = svc.consent_catch_up(peer, &changed, false).await?;
        self.send_frames(tx, up.frames).await?;
        Ok(position)
    }

    /// Sends the frames not sent yet in this session.
    async fn send_frames(
        &mut self,
        tx: &mpsc::Sender<pb::Frame>,
        frames: Vec<(String, Frame)>,
    ) -> Result<()> {
        for (id, frame) in frames {
            if !self.ids.contains(&id) {
                tx.send(to_pb(frame)).await.map_err(|_| closed())?;
                self.ids.insert(id);
            }
        }
        Ok(())
    }

    /// When the consent log moved past the last send, sends the records that changed after
    /// it (only those: each send costs what changed since the last, not since the round
    /// began); true if it moved, so the next round takes the backlog and moves the peer's
    /// position. The log, not the consent generation: a gate may allow a section under a
    /// consent committed a moment before its refresh bumps the generation (a cache miss
    /// reads the store), and that consent must still go first.
    async fn send_new(
        &mut self,
        svc: &NodeService,
        peer: &AgencyId,
        tx: &mpsc::Sender<pb::Frame>,
    ) -> Result<bool> {
        if svc.consent_head().await? <= self.pos {
            return Ok(false);
        }
        let position = self.send_records_since(svc, peer, tx, self.pos).await?;
        self.pos = self.pos.max(position);
        Ok(true)
    }
}

/// The children whose consents a pump's catch-up reads at a time (see `RecordsSent::send`):
/// a few hundred signature checks and reads between two chances to send a revocation.
const CATCH_UP_CHUNK: usize = 256;

/// The most plans a pump remembers [`NodeService::may_send_plan`] of.
const NAMED_KEPT: usize = 1 << 16;

/// The feed entries a pump reads at a time.
const FEED_PAGE: usize = 256;

/// The longest a pump holds changes back while the peer has not acknowledged the last
/// cursor it sent. Once caught up with the feed, a pump sends what came meanwhile only when
/// the peer has stored what went before (it answers a `Cursor` once everything before it is
/// stored), like Nagle's algorithm: a change alone goes at once, and under load the changes
/// of one acknowledgement's wait go as one page. The peer then stores them in one commit and
/// answers with one `CursorAck`, where each went with a frame, a commit and an answer of its
/// own. The wait is bounded in case an acknowledgement is lost.
const ACK_WAIT: Duration = Duration::from_millis(25);

/// How soon a pump first retries sections it could not prepare, and the longest it waits.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Dials a peer and keeps a session up, reconnecting with backoff, until shutdown. Each
/// attempt runs in its own task, so even a panic ends in a reconnect.
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
        let attempt = tokio::spawn(dial_once(
            svc.clone(),
            peer.clone(),
            tls.clone(),
            shutdown.clone(),
        ));
        let result = match attempt.await {
            Ok(r) => r,
            Err(e) => Err(Error::internal(format!("replication session failed: {e}"))),
        };
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
    svc: Arc<NodeService>,
    peer: PeerConfig,
    tls: TlsFiles,
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
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE / 2)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(KEEPALIVE * 3))
        .connect()
        .await
        .map_err(|e| Error::Internal(format!("connect: {e}")))?;
    let mut client = pb::federation_client::FederationClient::new(channel)
        .accept_compressed(OLD_COMPRESSION)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (out, outbound) = outbound();
    let inbound = client
        .sync(outbound)
        .await
        .map_err(|s| {
            Error::Internal(format!(
                "peer refused the stream: {} ({:?})",
                s.message(),
                s.code()
            ))
        })?
        .into_inner();
    let inbound = unbatch(inbound);
    let span = tracing::info_span!("peer", agency = %peer.agency, side = "dial");
    tracing::Instrument::instrument(
        run_session(svc, peer.agency.clone(), inbound, out, shutdown),
        span,
    )
    .await
}

/// The transport compression that earlier builds sent (tonic's, a fresh zstd context per
/// message). Still accepted from them; this build compresses large messages itself
/// (`Packer`) and sends them as `Frame.zstd`.
pub const OLD_COMPRESSION: tonic::codec::CompressionEncoding =
    tonic::codec::CompressionEncoding::Zstd;

/// Server-side keepalives for the federation listener.
pub fn server_keepalive(builder: tonic::transport::Server) -> tonic::transport::Server {
    builder
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE / 2))
        .tcp_keepalive(Some(KEEPALIVE * 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(seq: u64) -> pb::Frame {
        to_pb(Frame::Cursor(seq))
    }

    /// Whether something held is due within `d` (time is paused: waiting is instant).
    async fn due_within(held: &Held, d: Duration) -> bool {
        tokio::time::timeout(d, held.due()).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_holds_heads_for_a_while_and_stores_a_cursor_at_most_once_a_period() {
        let key = |_| SectionKey {
            plan: PlanId::random(),
            section: SectionName::parse("goals").unwrap(),
        };
        let mut held = Held::default();
        assert!(held.is_empty());
        assert!(!due_within(&held, Duration::from_secs(3600)).await);

        // Heads are due ACKS_HELD_FOR after the first of them, not after each.
        held.ack(key(1), vec![], false);
        tokio::time::advance(ACKS_HELD_FOR / 2).await;
        held.ack(key(2), vec![], false);
        assert!(!due_within(&held, ACKS_HELD_FOR / 2 - Duration::from_millis(1)).await);
        assert!(due_within(&held, Duration::from_millis(1)).await);
        let (acks, cursor) = held.take();
        assert_eq!((acks.len(), cursor), (2, None));
        assert!(held.is_empty());
        assert!(!due_within(&held, Duration::from_secs(3600)).await);

        // The session's first cursor is written at once; one soon after waits, the newest
        // kept, until CURSOR_SAVE_EVERY after the last stored.
        assert!(held.cursor(10));
        assert_eq!(held.take(), (vec![], Some(10)));
        tokio::time::advance(CURSOR_SAVE_EVERY / 4).await;
        assert!(!held.cursor(11));
        assert!(!held.cursor(12));
        assert!(!due_within(&held, CURSOR_SAVE_EVERY * 3 / 4 - Duration::from_millis(1)).await);
        assert!(due_within(&held, Duration::from_millis(1)).await);
        assert_eq!(held.take(), (vec![], Some(12)));

        // Written with heads written sooner, it restarts the period.
        tokio::time::advance(CURSOR_SAVE_EVERY / 2).await;
        assert!(!held.cursor(13));
        held.ack(key(3), vec![], false);
        let (acks, cursor) = held.take();
        assert_eq!((acks.len(), cursor), (1, Some(13)));
        assert!(!held.cursor(14));
        assert!(!due_within(&held, CURSOR_SAVE_EVERY - Duration::from_millis(1)).await);
        // Acknowledged once the period has passed, it is written at once.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(held.cursor(15));
        assert_eq!(held.take(), (vec![], Some(15)));

        // One lowered below the stored one (a section to read again) is written at once,
        // and one raised again soon after waits.
        assert!(held.cursor(7));
        assert_eq!(held.take(), (vec![], Some(7)));
        assert!(!held.cursor(30));
        // What is held when the session ends is all written.
        held.ack(key(4), vec![], false);
        let (acks, cursor) = held.take();
        assert_eq!((acks.len(), cursor), (1, Some(30)));

        // A section's first heads (it went whole) are due FIRST_HELD_FOR after they came,
        // even behind others held longer, and go with the next acknowledged cursor.
        held.ack(key(5), vec![], false);
        tokio::time::advance(ACKS_HELD_FOR / 2).await;
        assert!(!held.has_first());
        assert!(!held.cursor(31), "heads held longer wait past a cursor");
        held.ack(key(6), vec![], true);
        assert!(held.has_first());
        assert!(held.cursor(32), "first heads go with the next cursor");
        assert!(!due_within(&held, FIRST_HELD_FOR - Duration::from_millis(1)).await);
        assert!(due_within(&held, Duration::from_millis(1)).await);
        let (acks, _) = held.take();
        assert_eq!(acks.len(), 2);
        assert!(!held.has_first());

        // Full at HELD_ACKS.
        for n in 0..HELD_ACKS {
            assert!(!held.is_full());
            held.ack(key(n), vec![], false);
        }
        assert!(held.is_full());
    }

    fn seqs(frame: &pb::Frame) -> Vec<u64> {
        match &frame.kind {
            Some(pb::frame::Kind::Batch(b)) => b.frames.iter().flat_map(seqs).collect(),
            Some(pb::frame::Kind::Cursor(c)) | Some(pb::frame::Kind::CursorAck(c)) => vec![c.seq],
            _ => panic!("unexpected frame {frame:?}"),
        }
    }

    #[tokio::test]
    async fn frames_ready_together_go_as_one_batch_replies_first_and_a_lone_frame_alone() {
        let (out, stream) = outbound();
        tokio::pin!(stream);
        out.pump.send(cursor(1)).await.unwrap();
        out.pump.send(cursor(2)).await.unwrap();
        out.replies.send(to_pb(Frame::CursorAck(9))).unwrap();
        let batch = stream.next().await.unwrap();
        assert!(matches!(batch.kind, Some(pb::frame::Kind::Batch(_))));
        assert_eq!(seqs(&batch), vec![9, 1, 2]);
        out.pump.send(cursor(3)).await.unwrap();
        let alone = stream.next().await.unwrap();
        assert!(matches!(alone.kind, Some(pb::frame::Kind::Cursor(_))));
        assert_eq!(seqs(&alone), vec![3]);
        drop(out);
        assert!(
            stream.next().await.is_none(),
            "ends when both senders are gone"
        );
    }

    /// Section changes of `len` bytes.
    fn changes(seq: u64, len: usize) -> pb::Frame {
        to_pb(Frame::Changes(SectionChanges {
            plan: PlanRecord {
                id: PlanId::random(),
                subject: SubjectId::random(),
                home: AgencyId::parse("school.test").unwrap(),
                created_at: Timestamp::from_millis(1),
            },
            section: SectionName::parse("goals").unwrap(),
            bytes: vec![7; len],
            heads: vec![],
            feed_seq: seq,
        }))
    }

    #[tokio::test]
    async fn a_batch_stops_at_its_byte_limit_and_the_next_frame_starts_the_following_one() {
        let (out, stream) = outbound();
        tokio::pin!(stream);
        for seq in 1..=4 {
            out.pump.send(changes(seq, BATCH_BYTES / 3)).await.unwrap();
        }
        let mut batches = Vec::new();
        for _ in 0..2 {
            let Some(pb::Frame {
                kind: Some(pb::frame::Kind::Batch(b)),
            }) = stream.next().await
            else {
                panic!("expected a batch");
            };
            let feed: Vec<u64> = b
                .frames
                .iter()
                .map(|f| match &f.kind {
                    Some(pb::frame::Kind::Changes(c)) => c.feed_seq,
                    _ => panic!("expected changes"),
                })
                .collect();
            batches.push(feed);
        }
        assert_eq!(batches, vec![vec![1, 2], vec![3, 4]]);
    }

    #[tokio::test]
    async fn batches_are_opened_in_order_and_a_batch_inside_a_batch_is_malformed() {
        let nested = pb::Frame {
            kind: Some(pb::frame::Kind::Batch(pb::Batch {
                frames: vec![cursor(2)],
            })),
        };
        let outer = pb::Frame {
            kind: Some(pb::frame::Kind::Batch(pb::Batch {
                frames: vec![cursor(1), nested],
            })),
        };
        let messages = futures::stream::iter(vec![
            Ok(outer),
            Ok(cursor(3)),
            Err(Status::unavailable("gone")),
        ]);
        let frames: Vec<Result<pb::Frame>> = unbatch(messages).collect().await;
        assert_eq!(frames.len(), 4);
        assert_eq!(
            from_pb(frames[0].clone().unwrap()).unwrap(),
            Frame::Cursor(1)
        );
        let err = from_pb(frames[1].clone().unwrap()).unwrap_err();
        assert!(err.to_string().contains("a batch inside a batch"), "{err}");
        assert_eq!(
            from_pb(frames[2].clone().unwrap()).unwrap(),
            Frame::Cursor(3)
        );
        assert!(frames[3].is_err());
    }

    #[tokio::test]
    async fn long_messages_go_compressed_once_the_peer_opens_them_and_arrive_whole() {
        let (out, stream) = outbound();
        tokio::pin!(stream);
        let long = || vec![changes(1, 4096), changes(2, 4096)];
        let mut sent = Vec::new();
        let mut messages = Vec::new();
        // Before the peer's hello says it opens them: plain.
        for f in long() {
            out.pump.send(f.clone()).await.unwrap();
            sent.push(f);
        }
        messages.push(stream.next().await.unwrap());
        assert!(matches!(messages[0].kind, Some(pb::frame::Kind::Batch(_))));
        out.compress.store(true, Ordering::Relaxed);
        for f in long() {
            out.pump.send(f.clone()).await.unwrap();
            sent.push(f);
        }
        messages.push(stream.next().await.unwrap());
        let Some(pb::frame::Kind::Zstd(packed)) = &messages[1].kind else {
            panic!("expected a compressed message, got {:?}", messages[1].kind);
        };
        assert!(packed.len() < 1024, "{} bytes", packed.len());
        // A short frame goes as it is.
        out.pump.send(cursor(5)).await.unwrap();
        sent.push(cursor(5));
        messages.push(stream.next().await.unwrap());
        assert!(matches!(messages[2].kind, Some(pb::frame::Kind::Cursor(_))));
        // The receiving side opens them all, in order, with one context.
        let frames: Vec<pb::Frame> = unbatch(futures::stream::iter(messages.into_iter().map(Ok)))
            .map(|f| f.unwrap())
            .collect()
            .await;
        assert_eq!(frames, sent);
    }

    #[tokio::test]
    async fn a_compressed_message_that_is_damaged_too_large_or_nested_ends_the_stream() {
        use prost::Message;
        let packed = |frame: &pb::Frame| zstd::bulk::compress(&frame.encode_to_vec(), 3).unwrap();
        let zstd = |bytes: Vec<u8>| pb::Frame {
            kind: Some(pb::frame::Kind::Zstd(bytes)),
        };
        let fine = packed(&changes(1, 4096));
        let cut = fine[..fine.len() - 3].to_vec();
        let huge = packed(&changes(2, MAX_MESSAGE_BYTES));
        assert!(huge.len() < 64 * 1024, "the test's bomb is small");
        let nested = packed(&zstd(fine.clone()));
        let in_a_batch = packed(&pb::Frame {
            kind: Some(pb::frame::Kind::Batch(pb::Batch {
                frames: vec![cursor(1), zstd(fine.clone())],
            })),
        });
        for (bad, why) in [
            (cut, "does not open"),
            (huge, "does not open"),
            (vec![1, 2, 3], "does not open"),
            (nested, "a compressed message inside a compressed message"),
            (
                in_a_batch,
                "a compressed message inside a compressed message",
            ),
        ] {
            // The peer would go on (and then wait): the stream ends at the error all the same.
            let messages =
                futures::stream::iter(vec![Ok(zstd(fine.clone())), Ok(zstd(bad)), Ok(cursor(3))])
                    .chain(futures::stream::pending());
            let frames: Vec<Result<pb::Frame>> =
                tokio::time::timeout(Duration::from_secs(10), unbatch(messages).collect())
                    .await
                    .expect("the stream ends at the error");
            assert_eq!(frames.len(), 2, "{why}: nothing after the bad message");
            assert_eq!(
                frames[0].as_ref().unwrap(),
                &pb::Frame::decode(zstd::bulk::decompress(&fine, 1 << 20).unwrap().as_slice())
                    .unwrap()
            );
            let err = frames[1].as_ref().unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
        // A compressed message inside a batch is malformed, like a batch inside one.
        let inside = from_pb(zstd(vec![0; 4])).unwrap_err();
        assert!(inside.to_string().contains("inside a batch"), "{inside}");
    }
}
