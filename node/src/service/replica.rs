//! Replication, sans IO: what this node sends a peer and what it does with what a peer sends.
//!
//! The network layer (`api::federation`) carries [`Frame`]s; everything here is plain code
//! over the store and the gate. Rules (see design.md, "Consent rules"):
//! - a section travels only between its plan's home and a grantee (`gate::peer_send`,
//!   `gate::peer_receive`); the receiver checks again before storing;
//! - the home rejects (and audits) changes from a grantee without `read_write`, or whose
//!   Automerge actors are not that grantee's;
//! - consent records and revocations go to the grantees they name, signed, and are verified
//!   with the key the peer announced over mutual TLS;
//! - a holder deletes every copy of a section it may no longer hold and returns a signed
//!   purge receipt to the home, which records it.
//!
//! Per (peer, section) the node keeps the heads the peer is known to have; a change is sent
//! as `save_after(those heads)`, or as the whole saved document when the peer has nothing.
//! Per peer it keeps a cursor into its own change feed, so catch-up after a reconnect costs
//! O(changed sections).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use automerge::ChangeHash;
use serde::{Deserialize, Serialize};
use weft_consent::ed25519_dalek::{Signature, Signer, Verifier, VerifyingKey};
use weft_consent::{active_grants, SignedConsent, SignedRevocation};

use super::NodeService;
use crate::audit::{AuditAction, AuditDraft, Outcome};
use crate::error::{Error, Result};
use crate::gate;
use crate::model::{
    parse_actor, AgencyId, PlanId, PlanRecord, SectionKey, SectionName, SubjectId, Timestamp,
};
use crate::section::{heads_after, parse_changes, same_heads, SectionDoc};
use crate::storage::{
    section_key_bytes, CommitBatch, ConsentEntry, ConsentKind, SectionMeta, SectionWrite,
};

/// The audit record of disclosing `section` of `plan` to `peer`: the whole section, or
/// changes to it.
pub(super) fn disclosure(
    time: Timestamp,
    peer: &AgencyId,
    plan: &PlanRecord,
    section: &SectionName,
    whole: bool,
    reason: &weft_consent::AllowReason,
) -> AuditDraft {
    AuditDraft {
        time,
        agency: peer.to_string(),
        user: "-".into(),
        action: AuditAction::Disclose,
        outcome: Outcome::Ok,
        plan: Some(plan.id),
        sections: vec![section.to_string()],
        detail: if whole { "whole section" } else { "changes" }.into(),
        basis: super::consent::basis(reason),
    }
}

/// Changes of one section, as sent between peers.
#[derive(Clone, Debug, PartialEq)]
pub struct SectionChanges {
    /// The plan (a grantee files it on first sight).
    pub plan: PlanRecord,
    /// The section.
    pub section: SectionName,
    /// Automerge change chunks, or a whole saved document.
    pub bytes: Vec<u8>,
    /// The sender's heads after these changes.
    pub heads: Vec<ChangeHash>,
    /// The sender's feed sequence.
    pub feed_seq: u64,
}

/// See [`NodeService::consent_catch_up`].
#[derive(Debug, Default)]
pub struct ConsentCatchUp {
    /// Consent records and revocations to send, with their ids.
    pub frames: Vec<(String, Frame)>,
    /// Sections the peer may now hold and was never sent.
    pub backlog: Vec<SectionKey>,
}

/// One replication frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// First frame: the sender's consent key and feed head.
    Hello {
        /// Ed25519 verifying key for consents and receipts.
        key: [u8; 32],
        /// Feed head.
        feed_seq: u64,
    },
    /// Section changes.
    Changes(SectionChanges),
    /// The receiver stored a section; its heads.
    Ack {
        /// The section.
        key: SectionKey,
        /// Its heads at the receiver.
        heads: Vec<ChangeHash>,
    },
    /// A signed consent record.
    Consent(Vec<u8>),
    /// A signed revocation.
    Revocation(Vec<u8>),
    /// A signed purge receipt.
    Receipt(Vec<u8>),
    /// Everything before was sent.
    Cursor(u64),
    /// Everything before was processed.
    CursorAck(u64),
    /// A frame was refused.
    Rejected {
        /// The section, if any.
        key: Option<SectionKey>,
        /// The rule (no data).
        reason: String,
    },
}

/// A peer's replication status, for `weft peers` and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's endpoint (configured).
    pub endpoint: String,
    /// A stream is up.
    pub connected: bool,
    /// When the current stream's hellos were exchanged, unix ms (0 before the first).
    pub connected_since_ms: i64,
    /// Last frame exchanged, unix ms.
    pub last_sync_ms: i64,
    /// What the peer acknowledged of our feed.
    pub acked_seq: u64,
    /// Last error, if any (no data).
    pub last_error: String,
    /// Section documents sent.
    pub sections_sent: u64,
    /// Section documents received and stored.
    pub sections_received: u64,
    /// Bytes of Automerge changes sent.
    pub bytes_sent: u64,
    /// Bytes of Automerge changes received and stored.
    pub bytes_received: u64,
    /// Frames from the peer refused.
    pub rejected: u64,
    /// Purge receipts received (home) or sent (holder).
    pub purges: u64,
}

/// Status and pinned keys of every peer.
#[derive(Default)]
pub struct PeerBoard {
    info: Mutex<BTreeMap<AgencyId, PeerInfo>>,
    keys: Mutex<BTreeMap<AgencyId, VerifyingKey>>,
    /// Per connected peer and section, the feed sequence through which a durable disclosure
    /// record covers the section's changes: written with an edit at the home (see
    /// [`NodeService::edit`]), so the frame carrying it needs no commit of its own.
    disclosed: Mutex<HashMap<AgencyId, HashMap<SectionKey, u64>>>,
    /// The number of the newest session, and per peer the number of its newest (see
    /// [`PeerBoard::connected`]).
    sessions: Mutex<(u64, HashMap<AgencyId, u64>)>,
}

/// The most (peer, section) disclosure notes kept; past it, frames record their own.
const MAX_DISCLOSURE_NOTES: usize = 65_536;

/// Disclosure records to commit with a change, and the (peer, section) each covers (see
/// [`NodeService::disclosures_with`]).
#[derive(Default)]
pub(super) struct Disclosures {
    pub drafts: Vec<AuditDraft>,
    pub covers: Vec<(AgencyId, SectionKey)>,
}

impl PeerBoard {
    /// Updates a peer's status.
    pub fn update(&self, peer: &AgencyId, f: impl FnOnce(&mut PeerInfo)) {
        if let Ok(mut m) = self.info.lock() {
            f(m.entry(peer.clone()).or_default());
        }
    }

    /// Every peer's status.
    pub fn snapshot(&self) -> BTreeMap<AgencyId, PeerInfo> {
        self.info.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Peers with a stream up, if disclosures recorded with a change can still be noted.
    pub fn connected_for_disclosure(&self) -> Vec<AgencyId> {
        let room = self
            .disclosed
            .lock()
            .map(|d| d.values().map(HashMap::len).sum::<usize>() < MAX_DISCLOSURE_NOTES)
            .unwrap_or(false);
        if !room {
            return Vec::new();
        }
        self.info
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, i)| i.connected)
                    .map(|(a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Notes that a durable disclosure record covers the changes of `key` to `peer` through
    /// feed sequence `seq`.
    pub fn note_disclosed(&self, peer: &AgencyId, key: &SectionKey, seq: u64) {
        if let Ok(mut d) = self.disclosed.lock() {
            let at = d
                .entry(peer.clone())
                .or_default()
                .entry(key.clone())
                .or_default();
            *at = (*at).max(seq);
        }
    }

    /// Whether a noted disclosure record covers the changes of `key` to `peer` through
    /// `seq`. A note the frame uses up, or cannot use, is forgotten.
    fn take_disclosed(&self, peer: &AgencyId, key: &SectionKey, seq: u64) -> bool {
        let Ok(mut d) = self.disclosed.lock() else {
            return false;
        };
        let Some(notes) = d.get_mut(peer) else {
            return false;
        };
        match notes.get(key).copied() {
            Some(at) if at > seq => true,
            Some(at) => {
                notes.remove(key);
                at == seq
            }
            None => false,
        }
    }

    /// Notes that a session with `peer` is up; returns its number. Two may overlap: one
    /// whose connection died unnoticed (until keepalives time it out) while the peer
    /// reconnected.
    pub fn connected(&self, peer: &AgencyId, now_ms: i64) -> u64 {
        let session = match self.sessions.lock() {
            Ok(mut s) => {
                s.0 += 1;
                let n = s.0;
                s.1.insert(peer.clone(), n);
                n
            }
            Err(_) => 0,
        };
        self.update(peer, |i| {
            i.connected = true;
            i.connected_since_ms = now_ms;
            i.last_error.clear();
        });
        session
    }

    /// Whether `session` is the newest with `peer`.
    pub fn is_newest(&self, peer: &AgencyId, session: u64) -> bool {
        self.sessions
            .lock()
            .is_ok_and(|s| s.1.get(peer) == Some(&session))
    }

    /// Notes that `session` with `peer` ended, and `f` how; if it was the newest, the
    /// peer's stream is down and its disclosure notes are forgotten (a later session
    /// records its own). An older one's end changes nothing: a newer session runs.
    pub fn disconnected(&self, peer: &AgencyId, session: u64, f: impl FnOnce(&mut PeerInfo)) {
        let newest = self.sessions.lock().is_ok_and(|mut s| {
            let newest = s.1.get(peer) == Some(&session);
            if newest {
                s.1.remove(peer);
            }
            newest
        });
        if !newest {
            return;
        }
        self.update(peer, |i| {
            i.connected = false;
            f(i)
        });
        if let Ok(mut d) = self.disclosed.lock() {
            d.remove(peer);
        }
    }

    /// Disclosure notes held (for tests).
    #[cfg(test)]
    pub fn disclosure_notes(&self) -> usize {
        self.disclosed
            .lock()
            .map(|d| d.values().map(HashMap::len).sum())
            .unwrap_or(0)
    }

    /// A peer's pinned consent key.
    pub fn key_of(&self, peer: &AgencyId) -> Option<VerifyingKey> {
        self.keys.lock().ok()?.get(peer).copied()
    }

    fn set_key(&self, peer: &AgencyId, key: VerifyingKey) {
        if let Ok(mut k) = self.keys.lock() {
            k.insert(peer.clone(), key);
        }
    }
}

/// Received changes applied to what this node holds of their section (see
/// [`NodeService::merge`]), not yet stored.
struct Merged {
    /// The section's bookkeeping, if it is held.
    held: Option<SectionMeta>,
    /// The merged document, when it was loaded (to keep in the cache).
    doc: Option<SectionDoc>,
    /// The actor of every change new here.
    actors: Vec<automerge::ActorId>,
    /// The heads once they are stored.
    heads_now: Vec<ChangeHash>,
    /// The sender's heads after these changes.
    sender_heads: Vec<ChangeHash>,
    /// What to append to the section (empty: nothing new).
    bytes: Vec<u8>,
}

/// A signed statement by a holder that it deleted every copy of a section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReceipt {
    /// The plan.
    pub plan: PlanId,
    /// The section.
    pub section: String,
    /// The home agency the receipt is for.
    pub home: AgencyId,
    /// The agency that purged.
    pub holder: AgencyId,
    /// When, by the holder's clock.
    pub purged_at: Timestamp,
    /// Why (the rule or consent, no data).
    pub reason: String,
}

const RECEIPT_TAG: &[u8] = b"weft-purge-receipt-v1\n";

#[derive(Serialize, Deserialize)]
struct ReceiptEnvelope {
    body: String,
    signature: String,
}

/// A signed receipt's content, unverified (for receipts already checked when stored).
fn receipt_body(bytes: &[u8]) -> Option<PurgeReceipt> {
    let env: ReceiptEnvelope = serde_json::from_slice(bytes).ok()?;
    serde_json::from_str(&env.body).ok()
}

/// The section a signed receipt is about, read without checking the signature (the caller
/// has just had it verified by `handle_frame`).
pub fn receipt_section(bytes: &[u8]) -> Option<SectionKey> {
    let r = receipt_body(bytes)?;
    Some(SectionKey {
        plan: r.plan,
        section: SectionName::parse(&r.section).ok()?,
    })
}

impl PurgeReceipt {
    fn signed(&self, key: &weft_consent::ed25519_dalek::SigningKey) -> Vec<u8> {
        let body = serde_json::to_string(self).expect("receipts serialize");
        let mut msg = RECEIPT_TAG.to_vec();
        msg.extend_from_slice(body.as_bytes());
        let signature = hex::encode(key.sign(&msg).to_bytes());
        serde_json::to_vec(&ReceiptEnvelope { body, signature }).expect("envelopes serialize")
    }

    /// Checks a signed receipt with the holder's key.
    pub fn verify(bytes: &[u8], key: &VerifyingKey) -> Result<PurgeReceipt> {
        let bad = |what: &str| Error::invalid(format!("purge receipt {what}"));
        let env: ReceiptEnvelope =
            serde_json::from_slice(bytes).map_err(|_| bad("is malformed"))?;
        let sig: [u8; 64] = hex::decode(&env.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("has a malformed signature"))?;
        let mut msg = RECEIPT_TAG.to_vec();
        msg.extend_from_slice(env.body.as_bytes());
        key.verify(&msg, &Signature::from_bytes(&sig))
            .map_err(|_| bad("signature does not verify"))?;
        serde_json::from_str(&env.body).map_err(|_| bad("is malformed"))
    }
}

fn heads_prefix(peer: &AgencyId) -> Vec<u8> {
    format!("heads/{peer}/").into_bytes()
}

fn heads_key(peer: &AgencyId, key: &SectionKey) -> Vec<u8> {
    let mut k = heads_prefix(peer);
    k.extend_from_slice(&section_key_bytes(key));
    k
}

fn cursor_key(peer: &AgencyId) -> Vec<u8> {
    format!("cursor/{peer}").into_bytes()
}

fn pin_key(peer: &AgencyId) -> Vec<u8> {
    format!("key/{peer}").into_bytes()
}

fn consent_pos_key(peer: &AgencyId) -> Vec<u8> {
    format!("consent_pos/{peer}").into_bytes()
}

fn pending_key(home: &AgencyId, key: &SectionKey) -> Vec<u8> {
    let mut k = format!("pending/{home}/").into_bytes();
    k.extend_from_slice(&section_key_bytes(key));
    k
}

fn receipt_key(key: &SectionKey, holder: &AgencyId) -> Vec<u8> {
    let mut k = b"receipt/".to_vec();
    k.extend_from_slice(&section_key_bytes(key));
    k.extend_from_slice(holder.as_str().as_bytes());
    k
}

fn encode_heads(heads: &[ChangeHash]) -> Vec<u8> {
    heads.iter().flat_map(|h| h.0).collect()
}

fn decode_heads(bytes: &[u8]) -> Vec<ChangeHash> {
    bytes
        .chunks_exact(32)
        .filter_map(|c| ChangeHash::try_from(c).ok())
        .collect()
}

impl NodeService {
    /// Loads the peers' pinned consent keys from the store (at start).
    pub async fn load_peer_keys(&self) -> Result<()> {
        for (k, v) in self.store.replication_scan(b"key/".to_vec()).await? {
            let agency = std::str::from_utf8(&k[4..])
                .ok()
                .and_then(|a| AgencyId::parse(a).ok());
            let key = <[u8; 32]>::try_from(v.as_slice())
                .ok()
                .and_then(|b| VerifyingKey::from_bytes(&b).ok());
            if let (Some(a), Some(key)) = (agency, key) {
                self.peers.set_key(&a, key);
            }
        }
        Ok(())
    }

    /// The replication status of every peer.
    pub fn peer_status(&self) -> BTreeMap<AgencyId, PeerInfo> {
        self.peers.snapshot()
    }

    /// Records a peer's status change.
    pub fn peer_update(&self, peer: &AgencyId, f: impl FnOnce(&mut PeerInfo)) {
        self.peers.update(peer, f)
    }

    /// Notes that a session with `peer` is up (its hello was accepted); returns its
    /// number, for [`NodeService::peer_disconnected`].
    pub fn peer_connected(&self, peer: &AgencyId) -> u64 {
        self.peers.connected(peer, self.now().as_millis())
    }

    /// Whether `session` is the newest with `peer` (an older one's hints may be stale).
    pub fn is_newest_session(&self, peer: &AgencyId, session: u64) -> bool {
        self.peers.is_newest(peer, session)
    }

    /// Notes that `session` with `peer` ended; `f` records how (see
    /// [`PeerBoard::disconnected`]).
    pub fn peer_disconnected(&self, peer: &AgencyId, session: u64, f: impl FnOnce(&mut PeerInfo)) {
        self.peers.disconnected(peer, session, f);
    }

    /// This node's current feed head.
    pub async fn feed_head(&self) -> Result<u64> {
        Ok(self.store.stats().await?.feed_seq)
    }

    /// Our first frame.
    pub async fn hello(&self) -> Result<Frame> {
        Ok(Frame::Hello {
            key: self.verifying_key().to_bytes(),
            feed_seq: self.feed_head().await?,
        })
    }

    /// Pins the peer's consent key on first sight; a different key later is refused.
    pub async fn accept_hello(&self, peer: &AgencyId, key: &[u8; 32]) -> Result<()> {
        let vk = VerifyingKey::from_bytes(key)
            .map_err(|_| Error::invalid("peer sent a malformed consent key"))?;
        match self.store.replication_get(pin_key(peer)).await? {
            Some(known) if known.as_slice() != key.as_slice() => {
                return Err(Error::PermissionDenied(format!(
                    "peer {peer} announced a consent key other than the one pinned for it"
                )));
            }
            Some(_) => {}
            None => {
                self.store
                    .replication_put(vec![(pin_key(peer), Some(key.to_vec()))])
                    .await?;
                tracing::info!(peer = %peer, "pinned the peer's consent key");
            }
        }
        self.peers.set_key(peer, vk);
        Ok(())
    }

    /// Where the peer's acknowledged cursor into our feed stands.
    pub async fn cursor(&self, peer: &AgencyId) -> Result<u64> {
        Ok(self
            .store
            .replication_get(cursor_key(peer))
            .await?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// The feed's head, when `peer` has nothing from this node and this node nothing from
    /// it: no acknowledged cursor or consent position, no heads noted either way. A session
    /// with such a peer sends every section it may hold whole, from its first round's
    /// backlog (every child its consents name), so the feed up to this head tells it nothing
    /// more. Read before that backlog.
    pub async fn head_for_new(&self, peer: &AgencyId) -> Result<Option<u64>> {
        let new = self.cursor(peer).await? == 0
            && self.consent_position(peer).await? == 0
            && !self.store.replication_any(&heads_prefix(peer))?;
        Ok(match new {
            true => Some(self.feed_head().await?),
            false => None,
        })
    }

    /// Feed entries after `after`.
    pub async fn feed_page(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::storage::FeedEntry>> {
        self.store.feed_since(after, limit).await
    }

    /// The consent log's last position (see [`Store::consent_head`]).
    ///
    /// [`Store::consent_head`]: crate::storage::Store::consent_head
    pub async fn consent_head(&self) -> Result<u64> {
        self.store.consent_head().await
    }

    /// Where `peer` is in this node's consent log: everything before it has been delivered.
    pub async fn consent_position(&self, peer: &AgencyId) -> Result<u64> {
        Ok(self
            .store
            .replication_get(consent_pos_key(peer))
            .await?
            .and_then(|b| b.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Notes that `peer` has everything up to consent-log position `pos` (a hint: losing it
    /// only resends).
    pub async fn consent_delivered(&self, peer: &AgencyId, pos: u64) -> Result<()> {
        self.store
            .replication_hint(vec![(
                consent_pos_key(peer),
                Some(pos.to_be_bytes().to_vec()),
            )])
            .await
    }

    /// The children whose consents changed after log position `after` and a stored record
    /// of which names `peer` (the rest can send it nothing), with the position read. Costs
    /// O(subjects changed), not O(all consents); from the start, O(children naming `peer`).
    pub async fn consent_subjects(
        &self,
        peer: &AgencyId,
        after: u64,
    ) -> Result<(Vec<SubjectId>, u64)> {
        self.store.consent_changes_naming(peer, after).await
    }

    /// What `peer` should get for the consents of `subjects` (from
    /// [`NodeService::consent_subjects`]): the consent records and revocations this node
    /// recorded that name it, and the sections it may now hold but was never sent. With
    /// `backlog` false only the records are gathered (cheap: no signature checks), for the
    /// records recorded since a pump's last send. A caller with many children hands them
    /// over a few at a time, so it can send what was recorded meanwhile (a revocation)
    /// between two calls.
    pub async fn consent_catch_up(
        &self,
        peer: &AgencyId,
        subjects: &[SubjectId],
        backlog: bool,
    ) -> Result<ConsentCatchUp> {
        let now = self.now();
        let mut out = ConsentCatchUp::default();
        for &subject in subjects {
            // Held until this set is cached (see `consent_refresh`).
            let refresh = self.consent_refresh.lock().await;
            let entries = self.store.consent_entries(Some(subject)).await?;
            let mut named: BTreeSet<String> = BTreeSet::new();
            // Our own records from our own store: the peer verifies each signature, and the
            // gate decides on the verified, cached set below.
            for e in entries.iter().filter(|e| e.kind == ConsentKind::Consent) {
                let Ok(signed) = SignedConsent::from_bytes(&e.bytes) else {
                    continue;
                };
                if signed.signer != self.agency {
                    continue;
                }
                let Ok(record) = signed.unverified_record() else {
                    continue;
                };
                if record.names(peer) {
                    named.insert(record.id.to_string());
                    out.frames
                        .push((e.id.clone(), Frame::Consent(e.bytes.clone())));
                }
            }
            for e in entries.iter().filter(|e| e.kind == ConsentKind::Revocation) {
                let Ok(signed) = SignedRevocation::from_bytes(&e.bytes) else {
                    continue;
                };
                if signed.signer != self.agency {
                    continue;
                }
                if let Ok(r) = signed.unverified_record() {
                    if named.contains(r.consent.as_str()) {
                        out.frames
                            .push((e.id.clone(), Frame::Revocation(e.bytes.clone())));
                    }
                }
            }
            if named.is_empty() || !backlog {
                continue;
            }
            // From the entries just read, not the cache: a grant's commit lands before its
            // cache refresh, and this position must not move past a grant unseen.
            let set = Arc::new(self.verified_set(&entries));
            // The gate reads the cache when these sections go out: make it as fresh as what
            // was just read, or a section could be refused before the grant's own refresh
            // lands and never be retried (the position has moved past it).
            self.cache_consents(subject, set.clone());
            drop(refresh);
            let Some(plan) = self.plan_of_subject(subject, &self.agency).await? else {
                continue;
            };
            for (agency, section, _, _) in active_grants(&set, &plan.home, now) {
                if agency != *peer {
                    continue;
                }
                let Ok(section) = SectionName::parse(&section) else {
                    continue;
                };
                let key = SectionKey {
                    plan: plan.id,
                    section,
                };
                if self
                    .store
                    .replication_get(heads_key(peer, &key))
                    .await?
                    .is_none()
                {
                    out.backlog.push(key);
                }
            }
        }
        Ok(out)
    }

    /// At the home, the disclosure records to commit with changes to `sections` of `plan`:
    /// one per connected peer that may hold the section and already has it (a peer with
    /// nothing is sent the whole section, which its frame records). Each comes with the
    /// (peer, section) to note once the commit is durable (see [`PeerBoard::note_disclosed`]).
    /// `except` is a peer known to hold the change already. What it cannot read is left to
    /// the frame, which then records its own: the change itself must not fail on
    /// replication's bookkeeping.
    pub(super) async fn disclosures_with(
        &self,
        plan: &PlanRecord,
        sections: impl Iterator<Item = &SectionName> + Clone,
        consents: &weft_consent::ConsentSet,
        now: Timestamp,
        except: Option<&AgencyId>,
    ) -> Disclosures {
        let mut out = Disclosures::default();
        if plan.home != self.agency {
            return out;
        }
        for peer in self.peers.connected_for_disclosure() {
            if except == Some(&peer) {
                continue;
            }
            for section in sections.clone() {
                let Ok(permit) = gate::peer_send(&self.agency, &peer, plan, section, consents, now)
                else {
                    continue;
                };
                let key = permit.key().clone();
                if let Ok(Some(_)) = self.store.replication_get(heads_key(&peer, &key)).await {
                    out.drafts.push(disclosure(
                        now,
                        &peer,
                        plan,
                        section,
                        false,
                        permit.reason(),
                    ));
                    out.covers.push((peer.clone(), key));
                }
            }
        }
        out
    }

    /// Whether sections of plan `id` may go to `peer` as far as the grantee index tells
    /// (see `may_be_named`): `false` means no frame of it can; `true`, that the
    /// frame asks the gate. `false` for a plan this node does not have.
    pub async fn may_send_plan(&self, peer: &AgencyId, id: PlanId) -> Result<bool> {
        match self.store.plan(id).await? {
            Some(plan) => self.may_be_named(peer, &plan),
            None => Ok(false),
        }
    }

    /// Whether a stored consent record of `plan`'s child names the agency a send to `peer`
    /// needs named: the peer, at the home; this node, sending its copy back to the home.
    /// `false` means the gate refuses whatever the records say, so the child's consents
    /// need not be loaded and verified (most of a node's children, for most peers).
    fn may_be_named(&self, peer: &AgencyId, plan: &PlanRecord) -> Result<bool> {
        match self.named_for_send(peer, plan) {
            Some(needed) => self.store.names(needed, plan.subject),
            None => Ok(false),
        }
    }

    /// The agency a consent record of `plan`'s child must name for a send to `peer`: the
    /// peer, at the home; this node, sending its copy back to the home; none otherwise.
    fn named_for_send<'a>(&'a self, peer: &'a AgencyId, plan: &PlanRecord) -> Option<&'a AgencyId> {
        if plan.home == self.agency {
            Some(peer)
        } else if plan.home == *peer {
            Some(&self.agency)
        } else {
            None
        }
    }

    /// Wakes the pumps of the peers a change of `plan` may go to: those `consents` (the
    /// child's, as the change was gated) name as `may_be_named` asks, from memory, since a
    /// store read here could wait for the writer on the change's path. Every other pump
    /// wakes within [`super::LATER_WAKE`], once for all such changes, to move its cursor
    /// past them. Waking every pump for every change had each peer's pump read the feed and
    /// send a `Cursor` that the peer stored and acknowledged, for the few peers a child's
    /// consents name. A consent that arrives later wakes every pump itself.
    pub(crate) fn wake_for(&self, plan: &PlanRecord, consents: &weft_consent::ConsentSet) {
        let names = |agency: &AgencyId| consents.consents().any(|c| c.names(agency));
        self.wake_pumps(|peer| self.named_for_send(peer, plan).is_some_and(names));
        self.wake_later();
    }

    /// The frame that brings `peer` up to date on one section, if it may have it and lacks
    /// anything. A home's send is recorded as a disclosure before it leaves.
    /// `sent` is what this session already sent the peer for this section (the stream is
    /// ordered, so the peer will have it even before it acknowledges).
    pub async fn section_frame(
        &self,
        peer: &AgencyId,
        key: &SectionKey,
        sent: Option<&[ChangeHash]>,
    ) -> Result<Option<Frame>> {
        let Some(plan) = self.store.plan(key.plan).await? else {
            return Ok(None);
        };
        if !self.may_be_named(peer, &plan)? {
            return Ok(None);
        }
        let consents = self.consents_for(plan.subject).await?;
        let Ok(permit) = gate::peer_send(
            &self.agency,
            peer,
            &plan,
            &key.section,
            &consents,
            self.now(),
        ) else {
            return Ok(None);
        };
        let known = match sent {
            Some(h) => Some(h.to_vec()),
            None => self
                .store
                .replication_get(heads_key(peer, key))
                .await?
                .map(|b| decode_heads(&b)),
        };
        let (bytes, heads, last_seq) = match &known {
            // What the peer lacks, from the store's bookkeeping when it can tell (the common
            // case: the peer has all but the last change), else from the document.
            Some(h) => match self.store.stored_after(&permit, h)? {
                Some(tail) => (tail.bytes, tail.heads, tail.last_seq),
                None => {
                    let Some((mut doc, meta)) = self.store.load_doc(&permit).await? else {
                        return Ok(None);
                    };
                    let out = (doc.save_after(h), doc.heads(), meta.last_seq);
                    self.store.keep_doc(&permit, meta.last_seq, doc).await;
                    out
                }
            },
            // The peer has nothing: send the stored bytes as they are (a saved document
            // followed by change chunks loads as one), without loading the document. The
            // empty heads tell the receiver to take them from what it loads.
            None => {
                let Some(stored) = self.store.read_section(&permit).await? else {
                    return Ok(None);
                };
                (stored.concatenated(), Vec::new(), stored.meta.last_seq)
            }
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        // The home records the disclosure before the frame leaves, unless a durable record
        // made with the change covers everything in it.
        if plan.home == self.agency
            && !(known.is_some() && self.peers.take_disclosed(peer, key, last_seq))
        {
            let draft = disclosure(
                self.now(),
                peer,
                &plan,
                &key.section,
                known.is_none(),
                permit.reason(),
            );
            self.store.audit(draft).await?;
        }
        let n = bytes.len() as u64;
        self.peers.update(peer, |i| {
            i.sections_sent += 1;
            i.bytes_sent += n;
        });
        Ok(Some(Frame::Changes(SectionChanges {
            plan,
            section: key.section.clone(),
            bytes,
            heads,
            feed_seq: last_seq,
        })))
    }

    /// Purge receipts waiting for `home`, with their store keys.
    pub async fn pending_receipts(&self, home: &AgencyId) -> Result<Vec<(Vec<u8>, Frame)>> {
        Ok(self
            .store
            .replication_scan(format!("pending/{home}/").into_bytes())
            .await?
            .into_iter()
            .map(|(k, v)| (k, Frame::Receipt(v)))
            .collect())
    }

    /// Forgets receipts the home has processed.
    pub async fn receipts_delivered(&self, keys: Vec<Vec<u8>>) -> Result<()> {
        self.store
            .replication_put(keys.into_iter().map(|k| (k, None)).collect())
            .await
    }

    /// Notes the heads `peer` acknowledged for these sections, and how far it acknowledged
    /// this node's feed, in one write (hints: losing them only means sending or paging more
    /// next time).
    pub async fn acknowledged(
        &self,
        peer: &AgencyId,
        acks: Vec<(SectionKey, Vec<ChangeHash>)>,
        cursor: Option<u64>,
    ) -> Result<()> {
        self.peers
            .update(peer, |i| i.last_sync_ms = self.now().as_millis());
        let writes = acks
            .iter()
            .map(|(key, heads)| (heads_key(peer, key), Some(encode_heads(heads))))
            .chain(cursor.map(|seq| (cursor_key(peer), Some(seq.to_be_bytes().to_vec()))))
            .collect();
        self.store.replication_hint(writes).await
    }

    /// Handles one frame from `peer`; returns the frames to send back.
    pub async fn handle_frame(&self, peer: &AgencyId, frame: Frame) -> Result<Vec<Frame>> {
        self.peers
            .update(peer, |i| i.last_sync_ms = self.now().as_millis());
        match frame {
            Frame::Hello { .. } => Err(Error::invalid("a second hello")),
            Frame::Changes(c) => self.receive_changes(peer, c).await,
            Frame::Ack { key, heads } => {
                self.acknowledged(peer, vec![(key, heads)], None).await?;
                Ok(vec![])
            }
            Frame::Consent(bytes) => self.receive_consent(peer, bytes).await,
            Frame::Revocation(bytes) => self.receive_revocation(peer, bytes).await,
            Frame::Receipt(bytes) => self.receive_receipt(peer, bytes).await,
            Frame::Cursor(seq) => Ok(vec![Frame::CursorAck(seq)]),
            // The session stores the cursor (with the hints it holds).
            Frame::CursorAck(seq) => {
                self.peers.update(peer, |i| i.acked_seq = seq);
                Ok(vec![])
            }
            Frame::Rejected { key, reason } => {
                tracing::warn!(peer = %peer, %reason, "peer refused a frame");
                if reason.starts_with("consent") {
                    // The peer lacks a consent we thought it had (its store was replaced?):
                    // send every consent again next session.
                    self.store
                        .replication_hint(vec![(consent_pos_key(peer), None)])
                        .await?;
                }
                if let Some(key) = key {
                    // The peer could not use what we sent: send it the whole section next time.
                    self.store
                        .replication_hint(vec![(heads_key(peer, &key), None)])
                        .await?;
                }
                Ok(vec![])
            }
        }
    }

    async fn reject(
        &self,
        peer: &AgencyId,
        plan: Option<&PlanRecord>,
        section: Option<&SectionName>,
        code: &str,
        why: String,
    ) -> Result<Vec<Frame>> {
        let draft = AuditDraft {
            time: self.now(),
            agency: peer.to_string(),
            user: "-".into(),
            action: AuditAction::ReplicaReject,
            outcome: Outcome::Denied,
            plan: plan.map(|p| p.id),
            sections: section.map(|s| vec![s.to_string()]).unwrap_or_default(),
            detail: code.to_string(),
            basis: String::new(),
        };
        self.store.audit(draft).await?;
        self.peers.update(peer, |i| i.rejected += 1);
        tracing::warn!(target: "weft::audit", peer = %peer, code, "refused a frame from a peer");
        let key = match (plan, section) {
            (Some(p), Some(s)) => Some(SectionKey {
                plan: p.id,
                section: s.clone(),
            }),
            _ => None,
        };
        Ok(vec![Frame::Rejected {
            key,
            reason: format!("{code}: {why}"),
        }])
    }

    /// Applies received changes to what this node holds of their section, without storing
    /// anything yet; `Err` carries the rule and reason to refuse them with.
    ///
    /// Changes from the plan's home that extend exactly the stored heads (the common case:
    /// this node had all but the home's newest changes) are kept as received, without loading
    /// the document (see [`heads_after`]). Only the home is trusted that far: what it sends
    /// was made by its own code or loaded there when a grantee sent it, while a change that
    /// parses can still be one no document accepts (a repeated sequence number, an operation
    /// on an object that does not exist), which only a load tells, and stored it would make
    /// the section unloadable. Anything else is merged into the loaded document.
    async fn merge(
        &self,
        permit: &gate::ReadPermit,
        c: &SectionChanges,
        from_home: bool,
    ) -> Result<std::result::Result<Merged, (&'static str, &'static str)>> {
        let key = permit.key();
        let held = self.store.section_meta(key).await?;
        if let Some(meta) = held.as_ref().filter(|_| from_home) {
            // A cached document is cheap to merge into, and stays current that way.
            let unloaded = match &meta.heads {
                Some(heads) if !c.heads.is_empty() && !self.store.is_cached(key, meta.last_seq) => {
                    parse_changes(&c.bytes)
                        .ok()
                        .and_then(|changes| Some((heads_after(heads, &changes)?, changes)))
                }
                _ => None,
            };
            if let Some((heads_now, changes)) = unloaded {
                return Ok(Ok(Merged {
                    held,
                    doc: None,
                    actors: changes.iter().map(|c| c.actor_id().clone()).collect(),
                    heads_now,
                    sender_heads: c.heads.clone(),
                    bytes: c.bytes.clone(),
                }));
            }
        }
        let malformed = Err(("malformed", "the changes do not decode"));
        // What is held: its document (a refused frame drops it, merged or not) and its
        // bookkeeping.
        let (mut doc, held) = match self.store.load_doc(permit).await? {
            Some((doc, meta)) => (doc, Some(meta)),
            None => (SectionDoc::new(), None),
        };
        let before = doc.heads();
        // Empty heads: a whole document; the sender's heads are its own.
        let sender_heads = if c.heads.is_empty() && held.is_some() {
            match SectionDoc::load(Some(&c.bytes), &[]) {
                Ok(mut whole) => whole.heads(),
                Err(_) => return Ok(malformed),
            }
        } else {
            c.heads.clone()
        };
        if doc.merge_changes(&c.bytes).is_err() {
            return Ok(malformed);
        }
        if doc.has_missing_deps() {
            return Ok(Err((
                "missing_deps",
                "changes depend on history this node lacks",
            )));
        }
        let actors = doc
            .changes_since(&before)
            .into_iter()
            .map(|(actor, _)| actor)
            .collect();
        let heads_now = doc.heads();
        let sender_heads = if sender_heads.is_empty() {
            heads_now.clone()
        } else {
            sender_heads
        };
        // Nothing was stored: keep the bytes as received (they loaded cleanly), rather than
        // encoding the document again.
        let bytes = if held.is_none() {
            c.bytes.clone()
        } else {
            doc.save_after(&before)
        };
        Ok(Ok(Merged {
            held,
            doc: Some(doc),
            actors,
            heads_now,
            sender_heads,
            bytes,
        }))
    }

    async fn receive_changes(&self, peer: &AgencyId, c: SectionChanges) -> Result<Vec<Frame>> {
        let plan = c.plan.clone();
        if let Some(known) = self.store.plan(plan.id).await? {
            if known.home != plan.home || known.subject != plan.subject {
                return self
                    .reject(
                        peer,
                        Some(&known),
                        Some(&c.section),
                        "plan_mismatch",
                        "the plan is known with another home".into(),
                    )
                    .await;
            }
        } else if plan.home == self.agency {
            // The home knows its own plans; a grantee cannot invent one.
            return self
                .reject(
                    peer,
                    None,
                    Some(&c.section),
                    "unknown_plan",
                    "no such plan at its home".into(),
                )
                .await;
        }
        // Lock first, then decide: a revocation's purge cannot slip in between.
        let lock_key = SectionKey {
            plan: plan.id,
            section: c.section.clone(),
        };
        let _guard = self.locks[self.stripe(&lock_key)].lock().await;
        let consents = self.consents_for(plan.subject).await?;
        let permit = match gate::peer_receive(
            &self.agency,
            peer,
            &plan,
            &c.section,
            &consents,
            self.now(),
        ) {
            Ok(p) => p,
            Err(d) => {
                return self
                    .reject(peer, Some(&plan), Some(&c.section), d.code, d.message)
                    .await
            }
        };
        let key = permit.key().clone();
        let Merged {
            held,
            doc,
            actors,
            heads_now,
            sender_heads,
            bytes,
        } = match self
            .merge(&gate::downgrade(&permit), &c, plan.home == *peer)
            .await?
        {
            Ok(m) => m,
            Err((code, why)) => {
                return self
                    .reject(peer, Some(&plan), Some(&c.section), code, why.into())
                    .await
            }
        };
        if plan.home == self.agency {
            // Only the grantee's own actors may appear in what it sends the home.
            let forged = actors
                .iter()
                .any(|actor| parse_actor(actor).is_none_or(|(a, _)| a != *peer));
            if forged {
                return self
                    .reject(
                        peer,
                        Some(&plan),
                        Some(&c.section),
                        "actor",
                        format!("changes carry actors that are not {peer}'s"),
                    )
                    .await;
            }
        }
        if plan.home == self.agency {
            let held = held.as_ref().map_or(0, |m| m.bytes);
            if held + bytes.len() as u64 > crate::catalogue::MAX_SECTION_BYTES as u64 {
                return self
                    .reject(
                        peer,
                        Some(&plan),
                        Some(&c.section),
                        "too_large",
                        "the section would exceed its size limit".into(),
                    )
                    .await;
            }
        }
        let mut batch = CommitBatch::audit_only(AuditDraft {
            time: self.now(),
            agency: peer.to_string(),
            user: actors
                .iter()
                .filter_map(|a| parse_actor(a).map(|(_, u)| u))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
                .join(","),
            action: AuditAction::ReplicaWrite,
            outcome: Outcome::Ok,
            plan: Some(plan.id),
            sections: vec![c.section.to_string()],
            detail: format!("{} changes", actors.len()),
            basis: super::consent::basis(permit.reason()),
        });
        batch.ensure_plan = Some(plan.clone());
        // Nothing here that the sender lacks: the pump need not send this change back.
        let quiet = same_heads(&heads_now, &sender_heads);
        if quiet {
            batch.known_to = Some(peer.clone());
        }
        batch.replication = vec![(heads_key(peer, &key), Some(encode_heads(&sender_heads)))];
        // The home records the disclosure of what it stores to its other connected peers
        // with it (the sender too, if it lacks something).
        let mut covers = Vec::new();
        if !bytes.is_empty() {
            batch.changes = vec![SectionWrite {
                key: key.clone(),
                bytes,
                heads: heads_now.clone(),
            }];
            let d = self
                .disclosures_with(
                    &plan,
                    std::iter::once(&c.section),
                    &consents,
                    self.now(),
                    batch.known_to.as_ref(),
                )
                .await;
            (batch.disclosures, covers) = (d.drafts, d.covers);
        }
        let committed = self.store.commit(batch).await?;
        let durable = std::time::SystemTime::now();
        if let Some(entry) = committed.feed.first() {
            for (to, key) in &covers {
                self.peers.note_disclosed(to, key, entry.seq);
            }
        }
        // Keep the document for the next change of a section already held; a first arrival
        // (cold replication, a new grant's backlog) is rarely changed again soon.
        let current = held.map(|m| committed.feed.first().map_or(m.last_seq, |e| e.seq));
        if let (Some(seq), Some(doc)) = (current, doc) {
            self.store
                .keep_doc(&gate::downgrade(&permit), seq, doc)
                .await;
        }
        let n = c.bytes.len() as u64;
        self.peers.update(peer, |i| {
            i.sections_received += 1;
            i.bytes_received += n;
        });
        if let Some(entry) = committed.feed.first() {
            // At a grantee, a change that left nothing the home lacks goes nowhere.
            if plan.home != self.agency && quiet {
                self.wake_later();
            } else {
                self.wake_for(&plan, &consents);
            }
            self.events.send(super::PlanEvent {
                plan: plan.id,
                section: c.section.clone(),
                seq: entry.seq,
                agency: peer.clone(),
                user: "-".into(),
                time: self.now(),
                summary: format!("{} changes from {peer}", actors.len()),
                durable,
            });
        }
        Ok(vec![Frame::Ack {
            key,
            heads: heads_now,
        }])
    }

    async fn receive_consent(&self, peer: &AgencyId, bytes: Vec<u8>) -> Result<Vec<Frame>> {
        let Some(key) = self.peers.key_of(peer) else {
            return self
                .reject(peer, None, None, "no_key", "no consent key pinned".into())
                .await;
        };
        let signed = match SignedConsent::from_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .reject(peer, None, None, "consent_malformed", e.to_string())
                    .await
            }
        };
        let record = match self.verified.consent(&signed, &bytes, &key) {
            Ok(r) if signed.signer == *peer && r.disclosing_agency == *peer => r,
            Ok(_) => {
                return self
                    .reject(
                        peer,
                        None,
                        None,
                        "consent_signer",
                        "consents come from the plan's home".into(),
                    )
                    .await
            }
            Err(e) => {
                return self
                    .reject(peer, None, None, "consent_signature", e.to_string())
                    .await
            }
        };
        if !record.names(&self.agency) {
            return self
                .reject(
                    peer,
                    None,
                    None,
                    "consent_not_named",
                    "this consent does not name this agency".into(),
                )
                .await;
        }
        let Ok(subject) = record.subject.parse::<crate::model::SubjectId>() else {
            return self
                .reject(
                    peer,
                    None,
                    None,
                    "consent_subject",
                    "the consent's subject is not a UUID".into(),
                )
                .await;
        };
        let entry = ConsentEntry {
            subject,
            kind: ConsentKind::Consent,
            id: record.id.to_string(),
            bytes,
        };
        self.store_received_consent(
            subject,
            entry,
            AuditAction::ConsentGrant,
            format!("{} received from {peer}", record.id),
        )
        .await?;
        Ok(vec![])
    }

    async fn receive_revocation(&self, peer: &AgencyId, bytes: Vec<u8>) -> Result<Vec<Frame>> {
        let Some(key) = self.peers.key_of(peer) else {
            return self
                .reject(peer, None, None, "no_key", "no consent key pinned".into())
                .await;
        };
        let signed = match SignedRevocation::from_bytes(&bytes) {
            Ok(s) => s,
            Err(e) => {
                return self
                    .reject(peer, None, None, "revocation_malformed", e.to_string())
                    .await
            }
        };
        let revocation = match self.verified.revocation(&signed, &bytes, &key) {
            Ok(r) if signed.signer == *peer => r,
            Ok(_) => {
                return self
                    .reject(
                        peer,
                        None,
                        None,
                        "revocation_signer",
                        "revocations come from the plan's home".into(),
                    )
                    .await
            }
            Err(e) => {
                return self
                    .reject(peer, None, None, "revocation_signature", e.to_string())
                    .await
            }
        };
        // File it under the subject of the consent it revokes. Only the agency that recorded a
        // consent may revoke it.
        let revoked = |e: &ConsentEntry| {
            e.kind == ConsentKind::Consent
                && e.id == revocation.consent.as_str()
                && SignedConsent::from_bytes(&e.bytes).is_ok_and(|c| c.signer == *peer)
        };
        // By the `consent_id/` index (it read every consent entry of the node); by a scan
        // only when the id it holds is another agency's consent's (two ids alike).
        let subject = match self
            .store
            .consent_by_id(revocation.consent.as_str())
            .await?
        {
            Some(e) if revoked(&e) => Some(e.subject),
            Some(_) => self
                .store
                .consent_entries(None)
                .await?
                .into_iter()
                .find(|e| revoked(e))
                .map(|e| e.subject),
            None => None,
        };
        let Some(subject) = subject else {
            return self
                .reject(
                    peer,
                    None,
                    None,
                    "revocation_unknown",
                    "revokes a consent this node never received".into(),
                )
                .await;
        };
        let entry = ConsentEntry {
            subject,
            kind: ConsentKind::Revocation,
            id: revocation.id.to_string(),
            bytes,
        };
        let new = self
            .store_received_consent(
                subject,
                entry,
                AuditAction::ConsentRevoke,
                format!("{} revoked, received from {peer}", revocation.consent),
            )
            .await?;
        if new {
            self.purge_unconsented(&[subject]).await?;
        }
        Ok(vec![])
    }

    async fn store_received_consent(
        &self,
        subject: crate::model::SubjectId,
        entry: ConsentEntry,
        action: AuditAction,
        detail: String,
    ) -> Result<bool> {
        // Peers resend consents on every reconnect: a known one changes nothing.
        let known = self.store.consent_entries(Some(subject)).await?;
        if known
            .iter()
            .any(|e| e.kind == entry.kind && e.id == entry.id)
        {
            return Ok(false);
        }
        let plan = self
            .store
            .plans_of_subject(subject)
            .await?
            .first()
            .map(|p| p.id);
        let draft = AuditDraft {
            time: self.now(),
            agency: self.agency.to_string(),
            user: "-".into(),
            action,
            outcome: Outcome::Ok,
            plan,
            sections: vec![],
            detail,
            basis: String::new(),
        };
        match self.store_consents(subject, vec![entry], draft).await {
            Ok(_) | Err(Error::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        Ok(true)
    }

    async fn receive_receipt(&self, peer: &AgencyId, bytes: Vec<u8>) -> Result<Vec<Frame>> {
        let Some(key) = self.peers.key_of(peer) else {
            return self
                .reject(peer, None, None, "no_key", "no consent key pinned".into())
                .await;
        };
        let receipt = match PurgeReceipt::verify(&bytes, &key) {
            Ok(r) if r.holder == *peer && r.home == self.agency => r,
            Ok(_) => {
                return self
                    .reject(
                        peer,
                        None,
                        None,
                        "receipt_parties",
                        "receipt names other agencies".into(),
                    )
                    .await
            }
            Err(e) => {
                return self
                    .reject(peer, None, None, "receipt_signature", e.to_string())
                    .await
            }
        };
        let Ok(section) = SectionName::parse(&receipt.section) else {
            return self
                .reject(
                    peer,
                    None,
                    None,
                    "receipt_section",
                    "the receipt names no known section".into(),
                )
                .await;
        };
        let skey = SectionKey {
            plan: receipt.plan,
            section,
        };
        let mut batch = CommitBatch::audit_only(AuditDraft {
            time: self.now(),
            agency: peer.to_string(),
            user: "-".into(),
            action: AuditAction::PurgeReceipt,
            outcome: Outcome::Ok,
            plan: Some(receipt.plan),
            sections: vec![receipt.section.clone()],
            detail: format!("purged at {} ({})", receipt.purged_at, receipt.reason),
            basis: String::new(),
        });
        batch.replication = vec![
            (receipt_key(&skey, peer), Some(bytes)),
            (heads_key(peer, &skey), None),
        ];
        self.store.commit(batch).await?;
        self.peers.update(peer, |i| i.purges += 1);
        tracing::info!(target: "weft::audit", peer = %peer, "purge receipt recorded");
        Ok(vec![])
    }

    /// The purge receipts recorded for a plan: (section, holder, receipt).
    pub async fn purge_receipts(&self, plan: PlanId) -> Result<Vec<PurgeReceipt>> {
        let mut prefix = b"receipt/".to_vec();
        prefix.extend_from_slice(plan.0.as_bytes());
        Ok(self
            .store
            .replication_scan(prefix)
            .await?
            .iter()
            .filter_map(|(_, v)| receipt_body(v))
            .collect())
    }

    /// Deletes every section of these children's plans homed elsewhere that this node may no
    /// longer hold, and queues a signed purge receipt for each to its home. Returns how many
    /// it purged.
    pub async fn purge_unconsented(&self, subjects: &[SubjectId]) -> Result<usize> {
        let now = self.now();
        let mut purged = 0;
        let mut plans = Vec::new();
        for subject in subjects {
            plans.extend(self.store.plans_of_subject(*subject).await?);
        }
        for plan in plans {
            if plan.home == self.agency {
                continue;
            }
            let held = self.store.sections_of(plan.id).await?;
            // Lock the plan's sections, then decide: a write or a re-grant cannot race it.
            let mut stripes: Vec<usize> = held
                .iter()
                .map(|s| {
                    self.stripe(&SectionKey {
                        plan: plan.id,
                        section: s.clone(),
                    })
                })
                .collect();
            stripes.sort_unstable();
            stripes.dedup();
            let mut guards = Vec::with_capacity(stripes.len());
            for s in stripes {
                guards.push(self.locks[s].lock().await);
            }
            let consents = self.consents_for(plan.subject).await?;
            let mut gone = Vec::new();
            for section in &held {
                if let Err(d) = gate::may_hold(&self.agency, &plan, section, &consents, now) {
                    gone.push((section.clone(), d.message));
                }
            }
            if gone.is_empty() {
                continue;
            }
            let keys: Vec<SectionKey> = gone
                .iter()
                .map(|(s, _)| SectionKey {
                    plan: plan.id,
                    section: s.clone(),
                })
                .collect();
            let mut replication = Vec::new();
            for ((section, why), key) in gone.iter().zip(&keys) {
                let receipt = PurgeReceipt {
                    plan: plan.id,
                    section: section.to_string(),
                    home: plan.home.clone(),
                    holder: self.agency.clone(),
                    purged_at: now,
                    reason: why.clone(),
                };
                replication.push((
                    pending_key(&plan.home, key),
                    Some(receipt.signed(&self.signing_key)),
                ));
                replication.push((heads_key(&plan.home, key), None));
            }
            let batch = CommitBatch {
                replication,
                ..CommitBatch::audit_only(AuditDraft {
                    time: now,
                    agency: self.agency.to_string(),
                    user: "-".into(),
                    action: AuditAction::Purge,
                    outcome: Outcome::Ok,
                    plan: Some(plan.id),
                    sections: gone.iter().map(|(s, _)| s.to_string()).collect(),
                    detail: "no longer consented".into(),
                    basis: String::new(),
                })
            };
            self.store.purge(keys.clone(), batch).await?;
            drop(guards);
            purged += keys.len();
            self.peers
                .update(&plan.home, |i| i.purges += keys.len() as u64);
            tracing::info!(target: "weft::audit", plan_home = %plan.home, sections = keys.len(), "purged sections no longer consented");
        }
        if purged > 0 {
            self.wake();
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_peers() -> (AgencyId, AgencyId) {
        (
            AgencyId::parse("clinic.test").unwrap(),
            AgencyId::parse("nutrition.test").unwrap(),
        )
    }

    #[test]
    fn a_disclosure_note_covers_frames_up_to_its_change_and_goes_with_the_peer() {
        let board = PeerBoard::default();
        let (clinic, nutrition) = two_peers();
        let key = SectionKey {
            plan: PlanId::random(),
            section: SectionName::parse("goals").unwrap(),
        };
        let session = board.connected(&clinic, 1);
        board.update(&nutrition, |i| i.connected = false);
        assert_eq!(board.connected_for_disclosure(), vec![clinic.clone()]);

        // Nothing noted: the frame records its own disclosure.
        assert!(!board.take_disclosed(&clinic, &key, 5));
        // A note through 7 covers a frame through 6 and is kept for the frame through 7,
        // which uses it up.
        board.note_disclosed(&clinic, &key, 7);
        board.note_disclosed(&clinic, &key, 3);
        assert!(board.take_disclosed(&clinic, &key, 6));
        assert!(board.take_disclosed(&clinic, &key, 7));
        assert_eq!(board.disclosure_notes(), 0);
        // A frame carrying a later change than the note records its own, and drops the note.
        board.note_disclosed(&clinic, &key, 7);
        assert!(!board.take_disclosed(&clinic, &key, 8));
        assert_eq!(board.disclosure_notes(), 0);
        // Another peer's note covers nothing for this one; a disconnect forgets the peer's.
        board.note_disclosed(&nutrition, &key, 9);
        assert!(!board.take_disclosed(&clinic, &key, 9));
        board.note_disclosed(&clinic, &key, 9);
        board.disconnected(&clinic, session, |_| {});
        assert_eq!(board.disclosure_notes(), 1);
        assert!(!board.take_disclosed(&clinic, &key, 9));
        assert!(board.connected_for_disclosure().is_empty());
    }

    #[test]
    fn an_older_sessions_end_leaves_the_newer_one_connected() {
        let board = PeerBoard::default();
        let (clinic, nutrition) = two_peers();
        // The clinic reconnected while its first session's dead connection was not yet
        // noticed.
        let old = board.connected(&clinic, 1);
        let new = board.connected(&clinic, 2);
        let other = board.connected(&nutrition, 3);
        assert!(!board.is_newest(&clinic, old));
        assert!(board.is_newest(&clinic, new) && board.is_newest(&nutrition, other));
        let key = SectionKey {
            plan: PlanId::random(),
            section: SectionName::parse("goals").unwrap(),
        };
        board.note_disclosed(&clinic, &key, 4);

        // The old one's end changes nothing, not even the error shown.
        board.disconnected(&clinic, old, |i| i.last_error = "stream reset".into());
        let info = board.snapshot()[&clinic].clone();
        assert!(info.connected);
        assert_eq!((info.connected_since_ms, info.last_error.as_str()), (2, ""));
        assert_eq!(board.disclosure_notes(), 1);
        assert!(board.is_newest(&clinic, new));

        // The newest one's end does.
        board.disconnected(&clinic, new, |i| i.last_error = "stream reset".into());
        let info = board.snapshot()[&clinic].clone();
        assert!(!info.connected);
        assert_eq!(info.last_error, "stream reset");
        assert_eq!(board.disclosure_notes(), 0);
        assert!(!board.is_newest(&clinic, new));
        assert!(board.snapshot()[&nutrition].connected);
    }
}
