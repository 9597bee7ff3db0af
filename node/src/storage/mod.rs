//! Storage: plans, section documents, the change feed, the audit chain and users.
//!
//! The logic lives once, in [`Store`], over a small key-value [`Backend`] trait with two
//! implementations: [`sled::SledBackend`] (the embedded default) and [`memory::MemoryBackend`]
//! (tests). A section document is a snapshot plus incremental change chunks; [`Store::compact`]
//! folds the chunks into a new snapshot. Every commit writes its section chunks, one change-feed
//! entry per chunk, any new plan or user, and its audit entry in one atomic, durable
//! transaction.
//!
//! *Architecture invariant:* only `storage::sled` imports sled.
//! *Architecture invariant:* [`StoreHandle`] is the only way the rest of the node reaches the
//! store; its section reads and writes take a `gate::Permit`, and its blocking work runs off the
//! async worker threads.

pub mod memory;
pub mod sled;
mod wal;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::audit::{self, AuditDraft, AuditEntry, AuditHead, ChainBreak};
use crate::error::{Error, Result};
use crate::gate::{ReadPermit, WritePermit};
use writer::{Answer, WriteFn, Writer};

use crate::model::{
    AgencyId, PlanId, PlanRecord, SectionKey, SectionName, SubjectId, Timestamp, UserRecord,
};
use crate::section::{heads_after, parse_changes, same_heads, DocCache, SectionDoc};
use automerge::ChangeHash;

/// The trees (key spaces) of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// Counters and heads: feed sequence, audit head, format version.
    Meta = 0,
    /// Plan id → plan record.
    Plans,
    /// Section key → section metadata.
    Sections,
    /// Section key + chunk number → change bytes.
    Chunks,
    /// Section key → saved document.
    Snapshots,
    /// Feed sequence → feed entry: each section's last change (a change removes the
    /// section's previous entry), so the feed holds one entry per section and a purge finds
    /// a section's entry through its metadata (`SectionMeta::last_seq`).
    Feed,
    /// Audit index → audit entry.
    Audit,
    /// User name → user record.
    Users,
    /// Subject + kind + id → signed consent, signed revocation, or expiry mark.
    Consents,
    /// Replication state: per-peer cursors, pinned keys, per-(peer, section) heads, pending
    /// purge receipts, and purge receipts received.
    Replication,
    /// Subject + plan id → nothing: the index from a child to their plans.
    Subjects,
    /// The family page: guardian invitations (by token hash) and guardian accounts
    /// (passphrase hash, failed sign-ins, lockout).
    Family,
}

impl Tree {
    /// Every tree, in discriminant order.
    pub const ALL: [Tree; 12] = [
        Tree::Meta,
        Tree::Plans,
        Tree::Sections,
        Tree::Chunks,
        Tree::Snapshots,
        Tree::Feed,
        Tree::Audit,
        Tree::Users,
        Tree::Consents,
        Tree::Replication,
        Tree::Subjects,
        Tree::Family,
    ];

    /// The tree's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Plans => "plans",
            Tree::Sections => "sections",
            Tree::Chunks => "chunks",
            Tree::Snapshots => "snapshots",
            Tree::Feed => "feed",
            Tree::Audit => "audit",
            Tree::Users => "users",
            Tree::Consents => "consents",
            Tree::Replication => "replication",
            Tree::Subjects => "subjects",
            Tree::Family => "family",
        }
    }
}

/// Reads and writes inside one atomic transaction.
pub trait Txn {
    /// Reads a key, seeing this transaction's own writes.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Writes a key.
    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()>;
    /// Removes a key.
    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()>;
}

/// A key-value engine with trees, prefix scans and atomic, durable transactions.
pub trait Backend: Send + Sync + 'static {
    /// Reads a key.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after`
    /// (or all from the prefix's start when `after` is `None`), in key order.
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Runs `f` atomically; when it returns `Ok`, its writes are visible to later reads and
    /// become durable at the next [`Backend::sync`]. `f` may be run more than once and must
    /// only act through the `Txn`.
    ///
    /// A node's replication pump sends peers what it reads without waiting for a sync, so
    /// the engine a node runs on must not show a transaction's writes before they are
    /// durable: `SledBackend` syncs its log record before sled gets them (a crash would
    /// otherwise take back a change a peer already holds, and its disclosure record). The
    /// in-memory engine has nothing to lose; the harness-only engines serve no node.
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()>;
    /// A [`Backend::transact`] whose writes may reach the engine's files before they are
    /// durable anywhere, so a crash may keep any part of them: only for writes that are
    /// each true on their own and may be lost (replication hints).
    fn transact_hints(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        self.transact(f)
    }
    /// Makes every transaction that returned before this call durable (those of
    /// [`Backend::transact_hints`] may instead wait for a later transaction).
    fn sync(&self) -> Result<()>;
    /// A [`Backend::sync`] that also drops whatever copies the engine keeps besides its own
    /// files (a write-ahead log): after a purge, so purged values do not linger there.
    fn checkpoint(&self) -> Result<()> {
        self.sync()
    }
    /// Approximate bytes used on disk (0 in memory).
    fn size_on_disk(&self) -> u64;
    /// Number of entries in a tree.
    fn len(&self, tree: Tree) -> Result<u64>;
}

/// A backend over another that changes part of what it does (the benchmark's fsync and
/// counting variants, delays and faults in tests): every method a layer does not override
/// goes to [`Layer::inner`]. Every layer is a [`Backend`].
pub trait Layer: Send + Sync + 'static {
    /// The backend underneath.
    fn inner(&self) -> &dyn Backend;
    /// See [`Backend::get`].
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner().get(tree, key)
    }
    /// See [`Backend::scan`].
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner().scan(tree, prefix, after, limit)
    }
    /// See [`Backend::transact`].
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        self.inner().transact(f)
    }
    /// See [`Backend::transact_hints`].
    fn transact_hints(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        self.inner().transact_hints(f)
    }
    /// See [`Backend::sync`].
    fn sync(&self) -> Result<()> {
        self.inner().sync()
    }
    /// See [`Backend::checkpoint`].
    fn checkpoint(&self) -> Result<()> {
        self.inner().checkpoint()
    }
    /// See [`Backend::size_on_disk`].
    fn size_on_disk(&self) -> u64 {
        self.inner().size_on_disk()
    }
    /// See [`Backend::len`].
    fn len(&self, tree: Tree) -> Result<u64> {
        self.inner().len(tree)
    }
}

impl<L: Layer> Backend for L {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Layer::get(self, tree, key)
    }
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Layer::scan(self, tree, prefix, after, limit)
    }
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        Layer::transact(self, f)
    }
    fn transact_hints(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        Layer::transact_hints(self, f)
    }
    fn sync(&self) -> Result<()> {
        Layer::sync(self)
    }
    fn checkpoint(&self) -> Result<()> {
        Layer::checkpoint(self)
    }
    fn size_on_disk(&self) -> u64 {
        Layer::size_on_disk(self)
    }
    fn len(&self, tree: Tree) -> Result<u64> {
        Layer::len(self, tree)
    }
}

/// The storage format version this binary writes. Version 2: the feed holds each section's
/// last change only (see `Tree::Feed`). A binary that wrote version 1 would add an entry per
/// change again, which a purge would not find, so it must refuse a version-2 store (it
/// refuses any other version).
pub const FORMAT_VERSION: u32 = 2;

/// The oldest format version this binary opens (and upgrades to [`FORMAT_VERSION`]).
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// The format version from which the feed holds each section's last change only.
const FEED_LAST_ONLY_FORMAT: u32 = 2;

const KEY_FEED_SEQ: &[u8] = b"feed_seq";
const KEY_AUDIT_HEAD: &[u8] = b"audit_head";
const KEY_FORMAT: &[u8] = b"format_version";
const KEY_SUBJECTS_INDEXED: &[u8] = b"subjects_indexed";
const KEY_CONSENT_SEQ: &[u8] = b"consent_seq";
/// Meta key: how many plans the store holds (u64 BE), kept with every transaction that adds
/// or removes one, so opening a store does not count them (a quarter of a second at 250,000
/// plans). A store written before it existed is counted once, when it opens.
const KEY_PLAN_COUNT: &[u8] = b"plan_count";
/// Meta keys `consent_log/<seq>` → subject: which children's consents changed, in order, so
/// a peer's pump can look at only what changed since it last looked.
const CONSENT_LOG: &[u8] = b"consent_log/";

/// Meta keys `consent_end/<end ms, u64 BE><subject>` → empty: when a provision of a stored
/// consent ends, so the expiry sweep looks only at the children whose consents ended since it
/// last looked, not at every consent. Times come from the record's unverified bytes: they
/// only schedule a check, which decides on the verified consents.
const CONSENT_END: &[u8] = b"consent_end/";
const KEY_CONSENT_ENDS_INDEXED: &[u8] = b"consent_ends_indexed";
/// Meta key: every consent end up to this time (ms) has been swept.
const KEY_CONSENTS_SWEPT: &[u8] = b"consents_swept_to";
/// Meta keys `consent_grantee/<agency>/<subject>` → empty: a stored consent record names the
/// agency as a grantee of the child, so replication looks at only the children whose
/// records name a peer, not at every child. From the unverified bytes and never removed:
/// a superset of the children a peer may hold anything of. The gate decides on the
/// verified consents.
const CONSENT_GRANTEE: &[u8] = b"consent_grantee/";
/// Meta key: the consents of a store written before [`CONSENT_ID`] and [`CONSENT_GRANTEE`]
/// existed have been indexed.
const KEY_CONSENT_IDS_GRANTEES_INDEXED: &[u8] = b"consent_ids_grantees_indexed";

/// Meta keys `consent_id/<consent id>` → subject: where a consent is, so finding one by its
/// id (to show or revoke it) reads one key, not every consent.
const CONSENT_ID: &[u8] = b"consent_id/";

fn consent_id_key(id: &str) -> Vec<u8> {
    let mut k = CONSENT_ID.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn index_consent_id(txn: &dyn Txn, e: &ConsentEntry) -> Result<()> {
    if e.kind == ConsentKind::Consent {
        txn.put(Tree::Meta, &consent_id_key(&e.id), e.subject.0.as_bytes())?;
    }
    Ok(())
}

fn consent_grantee_key(agency: &AgencyId, subject: Option<SubjectId>) -> Vec<u8> {
    let mut k = CONSENT_GRANTEE.to_vec();
    k.extend_from_slice(agency.as_str().as_bytes());
    k.push(b'/');
    if let Some(s) = subject {
        k.extend_from_slice(s.0.as_bytes());
    }
    k
}

fn consent_end_key(end: u64, subject: Option<SubjectId>) -> Vec<u8> {
    let mut k = CONSENT_END.to_vec();
    k.extend_from_slice(&end.to_be_bytes());
    match subject {
        Some(s) => k.extend_from_slice(s.0.as_bytes()),
        None => k.extend_from_slice(&[0xff; 16]),
    }
    k
}

/// A stored consent entry's record, unverified (`None` for revocations, marks and what does
/// not decode): only for indexes that schedule or narrow a decision the gate makes on the
/// verified consents.
fn unverified_consent(e: &ConsentEntry) -> Option<weft_consent::ConsentRecord> {
    if e.kind != ConsentKind::Consent {
        return None;
    }
    weft_consent::SignedConsent::from_bytes(&e.bytes)
        .and_then(|s| s.unverified_record())
        .ok()
}

/// Indexes a stored consent entry (see [`CONSENT_ID`], [`CONSENT_END`] and
/// [`CONSENT_GRANTEE`]).
fn index_consent(txn: &dyn Txn, e: &ConsentEntry) -> Result<()> {
    index_consent_id(txn, e)?;
    let Some(record) = unverified_consent(e) else {
        return Ok(());
    };
    index_consent_ends(txn, e.subject, &record)?;
    index_consent_grantees(txn, e.subject, &record)
}

/// Notes each agency `record` names as a grantee of `subject`.
fn index_consent_grantees(
    txn: &dyn Txn,
    subject: SubjectId,
    record: &weft_consent::ConsentRecord,
) -> Result<()> {
    for p in &record.provisions {
        txn.put(
            Tree::Meta,
            &consent_grantee_key(&p.grantee, Some(subject)),
            &[],
        )?;
    }
    Ok(())
}

/// Schedules the ends of a stored consent's provisions for the expiry sweep. An end the sweep
/// has already passed (a consent that arrives expired) is scheduled for its next run.
fn index_consent_ends(
    txn: &dyn Txn,
    subject: SubjectId,
    record: &weft_consent::ConsentRecord,
) -> Result<()> {
    let swept = read_u64(txn, KEY_CONSENTS_SWEPT)?;
    for p in &record.provisions {
        if let Some(until) = p.valid_until {
            let end = u64::try_from(until.as_millis()).unwrap_or(0).max(swept + 1);
            txn.put(Tree::Meta, &consent_end_key(end, Some(subject)), &[])?;
        }
    }
    Ok(())
}

fn consent_log_key(seq: u64) -> Vec<u8> {
    let mut k = CONSENT_LOG.to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Per-section bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionMeta {
    /// First chunk number still stored (chunks before it are in the snapshot).
    pub first_chunk: u64,
    /// The next chunk number to use.
    pub next_chunk: u64,
    /// Bytes of snapshot plus chunks.
    pub bytes: u64,
    /// Feed sequence of the last change.
    pub last_seq: u64,
    /// The document's heads, when the writer of the last chunk said (older stores did not):
    /// replication compares them with a peer's without loading the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads: Option<Vec<ChangeHash>>,
}

/// A section as stored: snapshot plus the chunks after it.
#[derive(Clone, Debug, Default)]
pub struct StoredSection {
    /// The saved document the chunks apply to.
    pub snapshot: Option<Vec<u8>>,
    /// Change chunks in order.
    pub chunks: Vec<Vec<u8>>,
    /// Bookkeeping.
    pub meta: SectionMeta,
}

impl StoredSection {
    /// The snapshot followed by the chunks: bytes that load as the whole document.
    pub fn concatenated(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.meta.bytes as usize);
        if let Some(s) = &self.snapshot {
            out.extend_from_slice(s);
        }
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out
    }
}

/// See [`StoreHandle::stored_after`].
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTail {
    /// Change chunks the peer lacks (empty: nothing).
    pub bytes: Vec<u8>,
    /// The section's heads.
    pub heads: Vec<ChangeHash>,
    /// Feed sequence of its last change.
    pub last_seq: u64,
}

impl StoredTail {
    fn nothing(heads: &[ChangeHash], meta: &SectionMeta) -> Self {
        Self {
            bytes: Vec::new(),
            heads: heads.to_vec(),
            last_seq: meta.last_seq,
        }
    }
}

/// One change-feed entry: which section changed, never what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// The local sequence number.
    pub seq: u64,
    /// The section that changed.
    pub key: SectionKey,
    /// When.
    pub time: Timestamp,
    /// A peer known to hold the section as this change left it: the peer the change came
    /// from, when merging it left nothing that peer lacks. That peer's pump skips the
    /// section when its newest entry in a feed page carries the mark (preparing a frame
    /// cost a document load, to send nothing new).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_to: Option<AgencyId>,
}

/// Everything one commit writes.
#[derive(Clone, Debug)]
pub struct CommitBatch {
    /// Plans to create (none may exist).
    pub new_plans: Vec<PlanRecord>,
    /// Section changes to append.
    pub changes: Vec<SectionWrite>,
    /// A user to add (the name must be free).
    pub new_user: Option<UserRecord>,
    /// Consent records, revocations and marks to store (an existing id is an error).
    pub consent_entries: Vec<ConsentEntry>,
    /// A plan to file if this node does not know it yet (replicas); it must match if known.
    pub ensure_plan: Option<PlanRecord>,
    /// Replication state to write (`None` removes the key).
    pub replication: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// A peer known to hold the changed sections as this batch leaves them (see
    /// [`FeedEntry::known_to`]).
    pub known_to: Option<AgencyId>,
    /// Family-page records to write (`None` removes the key).
    pub family: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The audit entry for all of it.
    pub audit: AuditDraft,
    /// Disclosure records sealed after it, in the same transaction: a home records the
    /// disclosure of a change to its connected peers with the change itself, so the frame
    /// that carries it need not wait for a commit of its own.
    pub disclosures: Vec<AuditDraft>,
}

/// One chunk of changes to append to a section.
#[derive(Clone, Debug)]
pub struct SectionWrite {
    /// The section.
    pub key: SectionKey,
    /// Automerge change chunks (or, for a section not yet stored, a saved document).
    pub bytes: Vec<u8>,
    /// The document's heads once these bytes are applied; empty when the writer does not
    /// know them (the store then forgets what it knew, and replication loads the document).
    pub heads: Vec<ChangeHash>,
}

impl CommitBatch {
    /// A batch that only appends an audit entry.
    pub fn audit_only(audit: AuditDraft) -> Self {
        Self {
            new_plans: vec![],
            changes: vec![],
            new_user: None,
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures: vec![],
            audit,
        }
    }
}

/// What a consent entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentKind {
    /// A signed consent record.
    Consent = b'c' as isize,
    /// A signed revocation.
    Revocation = b'r' as isize,
    /// A mark that a consent's expiry has been recorded.
    ExpiryMark = b'x' as isize,
}

/// One stored consent entry: signed bytes, filed under the subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentEntry {
    /// The subject the consent is about.
    pub subject: SubjectId,
    /// What it is.
    pub kind: ConsentKind,
    /// The consent or revocation id.
    pub id: String,
    /// The signed envelope's bytes (empty for marks).
    pub bytes: Vec<u8>,
}

fn subject_key(plan: &PlanRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(plan.subject.0.as_bytes());
    out.extend_from_slice(plan.id.0.as_bytes());
    out
}

fn consent_key(subject: SubjectId, kind: ConsentKind, id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(17 + id.len());
    out.extend_from_slice(subject.0.as_bytes());
    out.push(kind as u8);
    out.extend_from_slice(id.as_bytes());
    out
}

fn parse_consent_key(key: &[u8], value: Vec<u8>) -> Result<ConsentEntry> {
    let bad = || Error::Storage("corrupt consent key".into());
    let subject = uuid::Uuid::from_slice(key.get(..16).ok_or_else(bad)?).map_err(|_| bad())?;
    let kind = match key.get(16) {
        Some(b'c') => ConsentKind::Consent,
        Some(b'r') => ConsentKind::Revocation,
        Some(b'x') => ConsentKind::ExpiryMark,
        _ => return Err(bad()),
    };
    let id = std::str::from_utf8(&key[17..])
        .map_err(|_| bad())?
        .to_string();
    Ok(ConsentEntry {
        subject: SubjectId(subject),
        kind,
        id,
        bytes: value,
    })
}

/// What a commit wrote.
#[derive(Clone, Debug)]
pub struct Committed {
    /// Feed entries, one per change, in order. Each replaced its section's previous entry:
    /// of a section changed twice in one batch, only the second is still in the feed.
    pub feed: Vec<FeedEntry>,
    /// The sealed audit entry.
    pub audit: AuditEntry,
}

/// Counters for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Plans stored.
    pub plans: u64,
    /// Last feed sequence.
    pub feed_seq: u64,
    /// Audit entries.
    pub audit_entries: u64,
    /// Bytes on disk.
    pub bytes: u64,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Storage(format!("corrupt {what} record: {e}")))
}

/// The key of a section: plan id (16 bytes), name length (2 bytes, big-endian), name.
pub fn section_key_bytes(key: &SectionKey) -> Vec<u8> {
    let name = key.section.as_str().as_bytes();
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(key.plan.0.as_bytes());
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out
}

fn chunk_key(key: &SectionKey, n: u64) -> Vec<u8> {
    let mut out = section_key_bytes(key);
    out.extend_from_slice(&n.to_be_bytes());
    out
}

fn parse_section_key(bytes: &[u8]) -> Result<SectionKey> {
    let bad = || Error::Storage("corrupt section key".into());
    if bytes.len() < 18 {
        return Err(bad());
    }
    let plan = uuid::Uuid::from_slice(&bytes[..16]).map_err(|_| bad())?;
    let len = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let name = bytes.get(18..18 + len).ok_or_else(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| bad())?;
    Ok(SectionKey {
        plan: PlanId(plan),
        section: SectionName::parse(name).map_err(|_| bad())?,
    })
}

/// Puts (or, for `None`, removes) replication keys inside a transaction.
fn write_replication(txn: &dyn Txn, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Result<()> {
    for (key, value) in writes {
        match value {
            Some(v) => txn.put(Tree::Replication, key, v)?,
            None => txn.remove(Tree::Replication, key)?,
        }
    }
    Ok(())
}

/// Appends each distinct subject to the consent log.
fn log_consent_changes(txn: &dyn Txn, subjects: impl Iterator<Item = SubjectId>) -> Result<()> {
    let subjects: std::collections::BTreeSet<SubjectId> = subjects.collect();
    if subjects.is_empty() {
        return Ok(());
    }
    let mut seq = read_u64(txn, KEY_CONSENT_SEQ)?;
    for subject in subjects {
        seq += 1;
        txn.put(Tree::Meta, &consent_log_key(seq), subject.0.as_bytes())?;
    }
    txn.put(Tree::Meta, KEY_CONSENT_SEQ, &seq.to_be_bytes())
}

/// A `u64` Meta value (0 when absent), read through a transaction or from the backend.
fn read_u64(txn: &dyn Txn, key: &[u8]) -> Result<u64> {
    Ok(decode_u64(txn.get(Tree::Meta, key)?))
}

/// Moves the stored plan count ([`KEY_PLAN_COUNT`]) by `added` and `removed` plans. The count
/// only informs (statistics, metrics): one found below the plans removed (a store an older
/// binary wrote to after this one) stops at zero rather than failing the purge.
fn count_plans(txn: &dyn Txn, added: u64, removed: u64) -> Result<()> {
    if added == removed {
        return Ok(());
    }
    let before = read_u64(txn, KEY_PLAN_COUNT)? + added;
    if before < removed {
        tracing::warn!(
            counted = before,
            removed,
            "the stored plan count was below the plans removed (an older weft wrote to this store); the plan statistics stay low"
        );
    }
    txn.put(
        Tree::Meta,
        KEY_PLAN_COUNT,
        &before.saturating_sub(removed).to_be_bytes(),
    )
}

fn decode_u64(value: Option<Vec<u8>>) -> u64 {
    value
        .map(|b| u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

/// The store: all of the storage logic, over any [`Backend`].
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Combines queued writes into one engine transaction and shares syncs between them.
    writer: Writer,
    /// Plans stored (read from [`KEY_PLAN_COUNT`] at open, kept by commits and purges).
    plans: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Opens a store over a backend, checking (or writing) the format version; a store of an
    /// older version this binary reads is upgraded.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self> {
        let store = Self {
            backend,
            writer: Writer::default(),
            plans: Default::default(),
        };
        let found = match store.backend.get(Tree::Meta, KEY_FORMAT)? {
            None => {
                store
                    .write(|txn| txn.put(Tree::Meta, KEY_FORMAT, &FORMAT_VERSION.to_be_bytes()))?;
                FORMAT_VERSION
            }
            Some(v) => u32::from_be_bytes(v.as_slice().try_into().unwrap_or([0xff; 4])),
        };
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
            return Err(Error::Storage(format!(
                "the store has format version {found}; this weft reads versions \
                 {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
            )));
        }
        let plans = match store.backend.get(Tree::Meta, KEY_PLAN_COUNT)? {
            Some(v) => decode_u64(Some(v)),
            None => {
                let n = store.backend.len(Tree::Plans)?;
                store.write(move |txn| txn.put(Tree::Meta, KEY_PLAN_COUNT, &n.to_be_bytes()))?;
                n
            }
        };
        store.plans.store(plans, Ordering::Relaxed);
        store.index_subjects()?;
        store.log_existing_consents()?;
        store.index_existing_consent_ends()?;
        store.index_existing_consent_ids_and_grantees()?;
        if found < FEED_LAST_ONLY_FORMAT {
            store.drop_superseded_feed_entries()?;
        }
        if found < FORMAT_VERSION {
            store.write(|txn| txn.put(Tree::Meta, KEY_FORMAT, &FORMAT_VERSION.to_be_bytes()))?;
            tracing::info!(
                from = found,
                to = FORMAT_VERSION,
                "upgraded the store's format"
            );
        }
        Ok(store)
    }

    /// Format 1 to 2: removes every feed entry that is not its section's last change (the
    /// store is not open to anyone else yet). An entry that does not parse stays, with a
    /// warning: it names no section to check (the pump reports it, as before).
    fn drop_superseded_feed_entries(&self) -> Result<()> {
        let (mut read, mut dropped, mut unreadable) = (0u64, 0u64, 0u64);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .backend
                .scan(Tree::Feed, &[], after.as_deref(), 10_000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            read += page.len() as u64;
            let mut superseded = Vec::new();
            for (k, v) in &page {
                let Ok(e) = from_json::<FeedEntry>(v, "feed") else {
                    unreadable += 1;
                    continue;
                };
                let last = match self
                    .backend
                    .get(Tree::Sections, &section_key_bytes(&e.key))?
                {
                    Some(b) => from_json::<SectionMeta>(&b, "section")?.last_seq,
                    None => 0,
                };
                if last != e.seq {
                    superseded.push(k.clone());
                }
            }
            dropped += superseded.len() as u64;
            if !superseded.is_empty() {
                self.write(move |txn| {
                    superseded
                        .iter()
                        .try_for_each(|k| txn.remove(Tree::Feed, k))
                })?;
            }
        }
        if unreadable > 0 {
            tracing::warn!(
                unreadable,
                "feed entries that do not parse were left in place"
            );
        }
        tracing::info!(
            read,
            dropped,
            "kept only each section's last change in the feed"
        );
        Ok(())
    }

    /// Indexes the ids and the grantees of the consents of a store written before those
    /// indexes existed, once.
    fn index_existing_consent_ids_and_grantees(&self) -> Result<()> {
        self.migrate_consents(KEY_CONSENT_IDS_GRANTEES_INDEXED, |txn, e| {
            index_consent_id(txn, e)?;
            match unverified_consent(e) {
                Some(record) => index_consent_grantees(txn, e.subject, &record),
                None => Ok(()),
            }
        })
    }

    /// Schedules the ends of the consents of a store written before the schedule existed,
    /// once.
    fn index_existing_consent_ends(&self) -> Result<()> {
        self.migrate_consents(
            KEY_CONSENT_ENDS_INDEXED,
            |txn, e| match unverified_consent(e) {
                Some(record) => index_consent_ends(txn, e.subject, &record),
                None => Ok(()),
            },
        )
    }

    /// [`Store::migrate_once`] over the stored consent entries, `index` for each.
    fn migrate_consents(
        &self,
        flag: &'static [u8],
        index: fn(&dyn Txn, &ConsentEntry) -> Result<()>,
    ) -> Result<()> {
        self.migrate_once(
            flag,
            Tree::Consents,
            |page| {
                page.into_iter()
                    .map(|(k, v)| parse_consent_key(&k, v))
                    .collect::<Result<Vec<_>>>()
            },
            move |txn, entries| entries.iter().try_for_each(|e| index(txn, e)),
        )
    }

    /// A one-time migration: unless `flag` is set in Meta, hands each page of `tree` to
    /// `parse` and writes what `apply` makes of it (one write per page), then sets `flag`.
    fn migrate_once<T: Send + Sync + 'static>(
        &self,
        flag: &'static [u8],
        tree: Tree,
        parse: impl Fn(Vec<(Vec<u8>, Vec<u8>)>) -> Result<T>,
        apply: impl Fn(&dyn Txn, &T) -> Result<()> + Copy + Send + Sync + 'static,
    ) -> Result<()> {
        if self.backend.get(Tree::Meta, flag)?.is_some() {
            return Ok(());
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.backend.scan(tree, &[], after.as_deref(), 10_000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let items = parse(page)?;
            self.write(move |txn| apply(txn, &items))?;
        }
        self.write(move |txn| txn.put(Tree::Meta, flag, &[1]))
    }

    /// The subjects with a consent provision that ended after the last sweep and by `now`,
    /// and the time to pass to [`Store::consents_swept`] once they are dealt with.
    pub fn consents_ended(&self, now: Timestamp) -> Result<(Vec<SubjectId>, u64)> {
        let now = u64::try_from(now.as_millis()).unwrap_or(0);
        let swept = decode_u64(self.backend.get(Tree::Meta, KEY_CONSENTS_SWEPT)?);
        let mut subjects = std::collections::BTreeSet::new();
        let mut cursor = Some(consent_end_key(swept, None));
        'pages: loop {
            let page = self
                .backend
                .scan(Tree::Meta, CONSENT_END, cursor.as_deref(), 10_000)?;
            let Some((k, _)) = page.last() else { break };
            cursor = Some(k.clone());
            for (k, _) in &page {
                let bad = || Error::Storage("malformed consent end key".into());
                let at = k
                    .get(CONSENT_END.len()..CONSENT_END.len() + 8)
                    .ok_or_else(bad)?;
                if u64::from_be_bytes(at.try_into().map_err(|_| bad())?) > now {
                    break 'pages;
                }
                let id = k.get(CONSENT_END.len() + 8..).ok_or_else(bad)?;
                subjects.insert(SubjectId(uuid::Uuid::from_slice(id).map_err(|_| bad())?));
            }
        }
        Ok((subjects.into_iter().collect(), now.max(swept)))
    }

    /// Records that every consent end up to `to` (from [`Store::consents_ended`]) was swept.
    pub fn consents_swept(&self, to: u64) -> Result<()> {
        self.write(move |txn| {
            if to > read_u64(txn, KEY_CONSENTS_SWEPT)? {
                txn.put(Tree::Meta, KEY_CONSENTS_SWEPT, &to.to_be_bytes())?;
            }
            Ok(())
        })
    }

    /// Starts the consent log of a store written before it existed: every subject with a
    /// consent entry, once.
    fn log_existing_consents(&self) -> Result<()> {
        if self.backend.get(Tree::Meta, KEY_CONSENT_SEQ)?.is_some() {
            return Ok(());
        }
        let mut subjects = std::collections::BTreeSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .backend
                .scan(Tree::Consents, &[], after.as_deref(), 10_000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, _) in &page {
                if let Some(id) = k.get(..16).and_then(|b| uuid::Uuid::from_slice(b).ok()) {
                    subjects.insert(SubjectId(id));
                }
            }
        }
        self.write(move |txn| {
            txn.put(Tree::Meta, KEY_CONSENT_SEQ, &0u64.to_be_bytes())?;
            log_consent_changes(txn, subjects.iter().copied())
        })
    }

    /// Subjects whose consents changed after consent-log position `after`, with the
    /// position of the last (or `after` when nothing changed).
    pub fn consent_changes_since(&self, after: u64) -> Result<(Vec<SubjectId>, u64)> {
        let mut subjects = std::collections::BTreeSet::new();
        let mut last = after;
        let start = consent_log_key(after);
        let mut cursor: Option<Vec<u8>> = Some(start);
        loop {
            let page = self
                .backend
                .scan(Tree::Meta, CONSENT_LOG, cursor.as_deref(), 10_000)?;
            let Some((k, _)) = page.last() else { break };
            cursor = Some(k.clone());
            for (k, v) in &page {
                let seq = k[CONSENT_LOG.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| Error::Storage("malformed consent log key".into()))?;
                last = last.max(seq);
                let id = uuid::Uuid::from_slice(v)
                    .map_err(|_| Error::Storage("malformed consent log entry".into()))?;
                subjects.insert(SubjectId(id));
            }
        }
        Ok((subjects.into_iter().collect(), last))
    }

    /// The consent log's last position: it moves in the transaction of every consent entry.
    pub fn consent_head(&self) -> Result<u64> {
        Ok(decode_u64(self.backend.get(Tree::Meta, KEY_CONSENT_SEQ)?))
    }

    /// Like [`Store::consent_changes_since`], but only the subjects a stored consent record
    /// names `agency` a grantee of (a superset of those it may hold anything of). From the
    /// start of the log this reads the grantee index, not the log: O(children named), not
    /// O(children).
    pub fn consent_changes_naming(
        &self,
        agency: &AgencyId,
        after: u64,
    ) -> Result<(Vec<SubjectId>, u64)> {
        if after > 0 {
            let (subjects, position) = self.consent_changes_since(after)?;
            let mut named = Vec::new();
            for s in subjects {
                if self.names(agency, s)? {
                    named.push(s);
                }
            }
            return Ok((named, position));
        }
        // The position first: a record committed after it is in a later change either way.
        let position = self.consent_head()?;
        let prefix = consent_grantee_key(agency, None);
        let mut subjects = Vec::new();
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = self
                .backend
                .scan(Tree::Meta, &prefix, cursor.as_deref(), 10_000)?;
            let Some((k, _)) = page.last() else { break };
            cursor = Some(k.clone());
            for (k, _) in &page {
                let id = uuid::Uuid::from_slice(&k[prefix.len()..])
                    .map_err(|_| Error::Storage("malformed consent grantee key".into()))?;
                subjects.push(SubjectId(id));
            }
        }
        Ok((subjects, position))
    }

    /// Whether a stored consent record names `agency` a grantee of `subject` (unverified:
    /// `false` means no consent of the child can let `agency` hold anything of it).
    pub fn names(&self, agency: &AgencyId, subject: SubjectId) -> Result<bool> {
        Ok(self
            .backend
            .get(Tree::Meta, &consent_grantee_key(agency, Some(subject)))?
            .is_some())
    }

    /// Builds the subject index of a store written before it existed (or restored from such
    /// a backup), once.
    fn index_subjects(&self) -> Result<()> {
        self.migrate_once(
            KEY_SUBJECTS_INDEXED,
            Tree::Plans,
            |page| {
                page.iter()
                    .map(|(_, v)| from_json::<PlanRecord>(v, "plan"))
                    .collect::<Result<Vec<_>>>()
            },
            |txn, plans| {
                plans
                    .iter()
                    .try_for_each(|p| txn.put(Tree::Subjects, &subject_key(p), &[]))
            },
        )
    }

    /// Runs `f` as one transaction (combined with other queued writes) and returns once it
    /// is durable.
    fn write(&self, f: impl Fn(&dyn Txn) -> Result<()> + Send + Sync + 'static) -> Result<()> {
        self.writer.write(self.backend.as_ref(), Box::new(f))
    }

    /// How many syncs the store has run since it opened.
    pub fn syncs(&self) -> u64 {
        self.writer.syncs()
    }

    /// Writes a batch atomically and durably, sealing its audit entry into the chain.
    pub fn commit(&self, batch: CommitBatch) -> Result<Committed> {
        let (job, landed) = commit_job(batch);
        self.writer.write(self.backend.as_ref(), job)?;
        landed(self)
    }

    /// Runs `f` over the backend while no commit can land (backups).
    pub fn with_writes_paused<R>(&self, f: impl FnOnce(&dyn Backend) -> R) -> Result<R> {
        let _guard = self.writer.pause()?;
        Ok(f(self.backend.as_ref()))
    }

    /// Replaces a section's snapshot and the chunks up to `through` (exclusive) by `snapshot`.
    pub fn compact(&self, key: &SectionKey, snapshot: &[u8], through: u64) -> Result<()> {
        self.writer.write(
            self.backend.as_ref(),
            compact_job(key.clone(), snapshot.to_vec(), through),
        )
    }

    /// Deletes every trace of the given sections (documents, snapshots, chunks, feed entry,
    /// and `replication` keys given by the caller), with one audit entry, atomically. Plans
    /// left with no section are deleted too (callers pass only foreign sections).
    pub fn purge(&self, keys: &[SectionKey], batch: &CommitBatch) -> Result<Committed> {
        let guard = self.writer.pause()?;
        // Plans left with no section are forgotten in the same transaction (callers pass
        // only sections of plans homed elsewhere).
        let mut empty_plans = Vec::new();
        let plans: std::collections::BTreeSet<PlanId> = keys.iter().map(|k| k.plan).collect();
        for plan in plans {
            let remaining = self
                .sections_of(plan)?
                .into_iter()
                .filter(|s| !keys.iter().any(|k| k.plan == plan && k.section == *s))
                .count();
            if remaining == 0 {
                empty_plans.push(plan);
            }
        }
        let out = std::cell::RefCell::new(None);
        let forgotten = std::cell::Cell::new(0u64);
        self.backend.transact(&|txn| {
            forgotten.set(0);
            for plan in &empty_plans {
                if let Some(b) = txn.get(Tree::Plans, plan.0.as_bytes())? {
                    txn.remove(Tree::Subjects, &subject_key(&from_json(&b, "plan")?))?;
                    txn.remove(Tree::Plans, plan.0.as_bytes())?;
                    forgotten.set(forgotten.get() + 1);
                }
            }
            count_plans(txn, 0, forgotten.get())?;
            for key in keys {
                let skey = section_key_bytes(key);
                if let Some(b) = txn.get(Tree::Sections, &skey)? {
                    let meta: SectionMeta = from_json(&b, "section")?;
                    for n in meta.first_chunk..meta.next_chunk {
                        txn.remove(Tree::Chunks, &chunk_key(key, n))?;
                    }
                    // The section's only feed entry (see `Tree::Feed`).
                    txn.remove(Tree::Feed, &meta.last_seq.to_be_bytes())?;
                }
                txn.remove(Tree::Sections, &skey)?;
                txn.remove(Tree::Snapshots, &skey)?;
            }
            write_replication(txn, &batch.replication)?;
            let entry = seal_audit(txn, batch)?;
            *out.borrow_mut() = Some(Committed {
                feed: vec![],
                audit: entry,
            });
            Ok(())
        })?;
        let n = self.writer.applied()?;
        let _ = self
            .plans
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(forgotten.get()))
            });
        drop(guard);
        self.writer.wait_durable(n, self.backend.as_ref())?;
        // The purged values are still in the write-ahead log's records before this one. The
        // purge itself is durable already: a failed checkpoint only leaves them there longer.
        if let Err(e) = self.backend.checkpoint() {
            tracing::warn!(error = %e, "could not checkpoint the store after a purge; the purged values stay in its write-ahead log until the next checkpoint");
        }
        out.into_inner()
            .ok_or_else(|| Error::internal("purge produced no result"))
    }

    /// The trees holding a key that contains `needle` (a diagnostic for privacy checks and
    /// tests: it reads every key of every tree).
    pub fn trees_with_key_containing(&self, needle: &[u8]) -> Result<Vec<&'static str>> {
        let mut out = Vec::new();
        for tree in Tree::ALL {
            let found = self
                .backend
                .scan(tree, &[], None, usize::MAX)?
                .iter()
                .any(|(k, _)| k.windows(needle.len()).any(|w| w == needle));
            if found {
                out.push(tree.name());
            }
        }
        Ok(out)
    }

    /// Reads a family-page key.
    pub fn family_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.backend.get(Tree::Family, key)
    }

    /// Reads a replication key.
    pub fn replication_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.backend.get(Tree::Replication, key)
    }

    /// Replication keys with a prefix.
    pub fn replication_scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.backend
            .scan(Tree::Replication, prefix, None, usize::MAX)
    }

    /// Whether any replication key starts with `prefix`.
    pub fn replication_any(&self, prefix: &[u8]) -> Result<bool> {
        Ok(!self
            .backend
            .scan(Tree::Replication, prefix, None, 1)?
            .is_empty())
    }

    /// The plans of a subject (at every home this node knows), through the subject index.
    pub fn plans_of_subject(&self, subject: SubjectId) -> Result<Vec<PlanRecord>> {
        let mut out = Vec::new();
        for (k, _) in self
            .backend
            .scan(Tree::Subjects, subject.0.as_bytes(), None, usize::MAX)?
        {
            let id = uuid::Uuid::from_slice(&k[16..])
                .map_err(|_| Error::Storage("malformed subject index key".into()))?;
            if let Some(p) = self.plan(PlanId(id))? {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// A plan's record.
    pub fn plan(&self, id: PlanId) -> Result<Option<PlanRecord>> {
        self.backend
            .get(Tree::Plans, id.0.as_bytes())?
            .map(|b| from_json(&b, "plan"))
            .transpose()
    }

    /// Plans in id order after `after`.
    pub fn plans(&self, after: Option<PlanId>, limit: usize) -> Result<Vec<PlanRecord>> {
        let after = after.map(|p| p.0.as_bytes().to_vec());
        self.backend
            .scan(Tree::Plans, &[], after.as_deref(), limit)?
            .into_iter()
            .map(|(_, v)| from_json(&v, "plan"))
            .collect()
    }

    /// The sections of a plan that have been written.
    pub fn sections_of(&self, plan: PlanId) -> Result<Vec<SectionName>> {
        self.backend
            .scan(Tree::Sections, plan.0.as_bytes(), None, usize::MAX)?
            .into_iter()
            .map(|(k, _)| parse_section_key(&k).map(|k| k.section))
            .collect()
    }

    /// A section's snapshot and chunks, or `None` if it was never written.
    pub fn section(&self, key: &SectionKey) -> Result<Option<StoredSection>> {
        // Snapshot and chunks are separate reads: if a compaction lands between them, the
        // first chunk moves; read again until the metadata is the same before and after.
        loop {
            let Some(found) = self.section_once(key)? else {
                return Ok(None);
            };
            let skey = section_key_bytes(key);
            let again: Option<SectionMeta> = self
                .backend
                .get(Tree::Sections, &skey)?
                .map(|b| from_json(&b, "section"))
                .transpose()?;
            if again.as_ref() == Some(&found.meta) {
                return Ok(Some(found));
            }
        }
    }

    /// A section's stored size in bytes (0 if absent).
    pub fn section_size(&self, key: &SectionKey) -> Result<u64> {
        Ok(self.section_meta(key)?.map_or(0, |m| m.bytes))
    }

    /// A section's bookkeeping, without its bytes.
    pub fn section_meta(&self, key: &SectionKey) -> Result<Option<SectionMeta>> {
        self.backend
            .get(Tree::Sections, &section_key_bytes(key))?
            .map(|b| from_json::<SectionMeta>(&b, "section"))
            .transpose()
    }

    fn section_once(&self, key: &SectionKey) -> Result<Option<StoredSection>> {
        let skey = section_key_bytes(key);
        let Some(meta) = self.backend.get(Tree::Sections, &skey)? else {
            return Ok(None);
        };
        let meta: SectionMeta = from_json(&meta, "section")?;
        let snapshot = self.backend.get(Tree::Snapshots, &skey)?;
        let chunks = self
            .backend
            .scan(Tree::Chunks, &skey, None, usize::MAX)?
            .into_iter()
            .filter(|(k, _)| k.len() == skey.len() + 8)
            .map(|(_, v)| v)
            .collect();
        Ok(Some(StoredSection {
            snapshot,
            chunks,
            meta,
        }))
    }

    /// The consent entries of a subject, or of every subject.
    pub fn consent_entries(&self, subject: Option<SubjectId>) -> Result<Vec<ConsentEntry>> {
        let prefix = subject.map(|s| s.0.as_bytes().to_vec()).unwrap_or_default();
        self.backend
            .scan(Tree::Consents, &prefix, None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| parse_consent_key(&k, v))
            .collect()
    }

    /// The consent (not a revocation) with this id, if stored.
    pub fn consent_by_id(&self, id: &str) -> Result<Option<ConsentEntry>> {
        let Some(subject) = self.backend.get(Tree::Meta, &consent_id_key(id))? else {
            return Ok(None);
        };
        let subject = uuid::Uuid::from_slice(&subject)
            .map(SubjectId)
            .map_err(|_| Error::Storage("malformed consent id index entry".into()))?;
        let key = consent_key(subject, ConsentKind::Consent, id);
        self.backend
            .get(Tree::Consents, &key)?
            .map(|v| parse_consent_key(&key, v))
            .transpose()
    }

    /// Every user.
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        self.backend
            .scan(Tree::Users, &[], None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| from_json(&v, "user"))
            .collect()
    }

    /// Audit entries with index greater than `after`, at most `limit`. An entry that does not
    /// decode is returned as `Err((index, problem))`.
    pub fn audit_entries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Result<AuditEntry, (u64, String)>>> {
        let after = after.to_be_bytes();
        Ok(self
            .backend
            .scan(Tree::Audit, &[], Some(&after), limit)?
            .into_iter()
            .map(|(k, v)| {
                // A malformed key sorts last, so paging over entries always ends.
                let index = k
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                serde_json::from_slice::<AuditEntry>(&v)
                    .map_err(|_| (index, "entry does not decode (entry altered)".to_string()))
            })
            .collect())
    }

    /// The audit chain's head.
    pub fn audit_head(&self) -> Result<AuditHead> {
        match self.backend.get(Tree::Meta, KEY_AUDIT_HEAD)? {
            Some(b) => from_json(&b, "audit head"),
            None => Ok(AuditHead::default()),
        }
    }

    /// Verifies the whole audit chain, reading it in pages.
    pub fn verify_audit(&self) -> Result<Result<u64, ChainBreak>> {
        let head = self.audit_head()?;
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.audit_entries(after, 4096)?;
            let Some(last) = page.last() else { break };
            after = match last {
                Ok(e) => e.index,
                Err((i, _)) => *i,
            };
            all.extend(page);
        }
        Ok(audit::verify(all, &head))
    }

    /// Feed entries after `after`, at most `limit`.
    pub fn feed_since(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        self.backend
            .scan(Tree::Feed, &[], Some(&after.to_be_bytes()), limit)?
            .into_iter()
            .map(|(_, v)| from_json(&v, "feed"))
            .collect()
    }

    /// Counters.
    pub fn stats(&self) -> Result<StoreStats> {
        Ok(StoreStats {
            plans: self.plans.load(Ordering::Relaxed),
            feed_seq: self
                .backend
                .get(Tree::Meta, KEY_FEED_SEQ)?
                .map(|b| u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8])))
                .unwrap_or(0),
            audit_entries: self.audit_head()?.index,
            bytes: self.backend.size_on_disk(),
        })
    }
}

/// Seals a batch's audit entry, then its disclosure records, into the audit chain inside
/// `txn` (the entries after the stored head, which is read and written once); returns the
/// batch's entry.
fn seal_audit(txn: &dyn Txn, batch: &CommitBatch) -> Result<AuditEntry> {
    let mut head: AuditHead = match txn.get(Tree::Meta, KEY_AUDIT_HEAD)? {
        Some(b) => from_json(&b, "audit head")?,
        None => AuditHead::default(),
    };
    let mut first = None;
    for draft in std::iter::once(&batch.audit).chain(&batch.disclosures) {
        let (entry, next) = audit::seal(&head, draft.clone());
        txn.put(Tree::Audit, &entry.index.to_be_bytes(), &json(&entry))?;
        head = next;
        first.get_or_insert(entry);
    }
    txn.put(Tree::Meta, KEY_AUDIT_HEAD, &json(&head))?;
    Ok(first.expect("a batch has its own audit entry"))
}

/// A compaction's job for the store's writer (see [`Store::compact`]).
fn compact_job(key: SectionKey, snapshot: Vec<u8>, through: u64) -> WriteFn {
    let skey = section_key_bytes(&key);
    Box::new(move |txn| {
        let mut meta: SectionMeta = match txn.get(Tree::Sections, &skey)? {
            Some(b) => from_json(&b, "section")?,
            None => return Ok(()),
        };
        if through > meta.next_chunk || through <= meta.first_chunk {
            return Ok(());
        }
        for n in meta.first_chunk..through {
            txn.remove(Tree::Chunks, &chunk_key(&key, n))?;
        }
        let mut rest = 0u64;
        for n in through..meta.next_chunk {
            rest += txn
                .get(Tree::Chunks, &chunk_key(&key, n))?
                .map_or(0, |b| b.len() as u64);
        }
        meta.first_chunk = through;
        meta.bytes = snapshot.len() as u64 + rest;
        txn.put(Tree::Snapshots, &skey, &snapshot)?;
        txn.put(Tree::Sections, &skey, &json(&meta))
    })
}

/// A commit's job for the store's writer (it may run on another writer's thread, combined
/// with its transaction: it owns the batch and leaves its results behind shared slots), and
/// what reads the result once the job has landed.
fn commit_job(batch: CommitBatch) -> (WriteFn, impl FnOnce(&Store) -> Result<Committed>) {
    let out = Arc::new(Mutex::new(None));
    let added = Arc::new(AtomicU64::new(0));
    let (job_out, job_added) = (out.clone(), added.clone());
    let job: WriteFn = Box::new(move |txn| {
        let (out, added) = (&job_out, &job_added);
        added.store(batch.new_plans.len() as u64, Ordering::Relaxed);
        for plan in &batch.new_plans {
            if txn.get(Tree::Plans, plan.id.0.as_bytes())?.is_some() {
                return Err(Error::AlreadyExists(format!("plan {}", plan.id)));
            }
            txn.put(Tree::Plans, plan.id.0.as_bytes(), &json(plan))?;
            txn.put(Tree::Subjects, &subject_key(plan), &[])?;
        }
        if let Some(user) = &batch.new_user {
            if txn.get(Tree::Users, user.name.as_bytes())?.is_some() {
                return Err(Error::AlreadyExists(format!("user `{}`", user.name)));
            }
            txn.put(Tree::Users, user.name.as_bytes(), &json(user))?;
        }
        if let Some(plan) = &batch.ensure_plan {
            match txn.get(Tree::Plans, plan.id.0.as_bytes())? {
                None => {
                    txn.put(Tree::Plans, plan.id.0.as_bytes(), &json(plan))?;
                    txn.put(Tree::Subjects, &subject_key(plan), &[])?;
                    added.fetch_add(1, Ordering::Relaxed);
                }
                Some(b) => {
                    let known: PlanRecord = from_json(&b, "plan")?;
                    if known.home != plan.home || known.subject != plan.subject {
                        return Err(Error::invalid(format!(
                            "plan {} is known here with another home or subject",
                            plan.id
                        )));
                    }
                }
            }
        }
        count_plans(txn, added.load(Ordering::Relaxed), 0)?;
        write_replication(txn, &batch.replication)?;
        for (key, value) in &batch.family {
            match value {
                Some(v) => txn.put(Tree::Family, key, v)?,
                None => txn.remove(Tree::Family, key)?,
            }
        }
        for e in &batch.consent_entries {
            let key = consent_key(e.subject, e.kind, &e.id);
            if txn.get(Tree::Consents, &key)?.is_some() {
                return Err(Error::AlreadyExists(format!("consent entry `{}`", e.id)));
            }
            txn.put(Tree::Consents, &key, &e.bytes)?;
            index_consent(txn, e)?;
        }
        log_consent_changes(txn, batch.consent_entries.iter().map(|e| e.subject))?;
        let mut seq = read_u64(txn, KEY_FEED_SEQ)?;
        let mut feed = Vec::with_capacity(batch.changes.len());
        for SectionWrite { key, bytes, heads } in &batch.changes {
            let skey = section_key_bytes(key);
            let mut meta: SectionMeta = match txn.get(Tree::Sections, &skey)? {
                Some(b) => from_json(&b, "section")?,
                None => SectionMeta::default(),
            };
            seq += 1;
            // The feed holds each section's last change only (see `Tree::Feed`).
            if meta.last_seq > 0 {
                txn.remove(Tree::Feed, &meta.last_seq.to_be_bytes())?;
            }
            txn.put(Tree::Chunks, &chunk_key(key, meta.next_chunk), bytes)?;
            meta.next_chunk += 1;
            meta.bytes += bytes.len() as u64;
            meta.last_seq = seq;
            meta.heads = (!heads.is_empty()).then(|| heads.clone());
            txn.put(Tree::Sections, &skey, &json(&meta))?;
            let entry = FeedEntry {
                seq,
                key: key.clone(),
                time: batch.audit.time,
                known_to: batch.known_to.clone(),
            };
            txn.put(Tree::Feed, &seq.to_be_bytes(), &json(&entry))?;
            feed.push(entry);
        }
        txn.put(Tree::Meta, KEY_FEED_SEQ, &seq.to_be_bytes())?;
        let entry = seal_audit(txn, &batch)?;
        *out.lock()
            .map_err(|_| Error::internal("commit result poisoned"))? =
            Some(Committed { feed, audit: entry });
        Ok(())
    });
    let landed = move |store: &Store| {
        store
            .plans
            .fetch_add(added.load(Ordering::Relaxed), Ordering::Relaxed);
        let committed = out
            .lock()
            .map_err(|_| Error::internal("commit result poisoned"))?
            .take();
        committed.ok_or_else(|| Error::internal("commit produced no result"))
    };
    (job, landed)
}

/// A blocking thread's turn to lead the store's writer for async writers (see
/// [`StoreHandle::write`]). Dropped without running (the runtime is shutting down) or
/// unwinding, it fails the queued jobs, so no writer waits forever.
struct Leader(Option<Arc<Store>>);

impl Leader {
    fn run(mut self) {
        if let Some(store) = &self.0 {
            store.writer.lead_queued(store.backend.as_ref());
        }
        self.0 = None;
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(store) = self.0.take() {
            store.writer.abandon();
        }
    }
}

/// The async face of the store: cheap to clone; writes go through the writer's queue (see
/// `StoreHandle::write`), scans and document loads through `spawn_blocking`; takes a permit
/// from the gate for every section read and write.
#[derive(Clone)]
pub struct StoreHandle {
    store: Arc<Store>,
    docs: Arc<DocCache>,
}

/// Section documents kept loaded by default (see [`DocCache`], `[storage] doc_cache`). A
/// loaded document of a sample plan holds ~17 KiB, so ~70 MiB when full. It should hold the
/// sections a node edits, sends and merges over a few seconds: an LRU cache smaller than that
/// working set misses on every access when edits go round it (as scenario 3 of the benchmark
/// did from 1,250 edits/s on, going round 1,250 sections or more, when this was 1,024).
pub const DEFAULT_DOC_CACHE: usize = 4096;
/// How many of a section's newest chunks [`StoreHandle::stored_after`] looks back over.
const TAIL_CHUNKS: u64 = 16;

impl StoreHandle {
    /// Wraps a store, with a cache of [`DEFAULT_DOC_CACHE`] section documents.
    pub fn new(store: Store) -> Self {
        Self::with_doc_cache(store, DEFAULT_DOC_CACHE)
    }

    /// Wraps a store, keeping up to `docs` section documents loaded (0: none).
    pub fn with_doc_cache(store: Store, docs: usize) -> Self {
        Self {
            store: Arc::new(store),
            docs: Arc::new(DocCache::new(docs)),
        }
    }

    /// A section's document and bookkeeping: the cached document when it is current, else
    /// loaded from the store. Hand it back with [`StoreHandle::keep_doc`] once done.
    pub async fn load_doc(&self, permit: &ReadPermit) -> Result<Option<(SectionDoc, SectionMeta)>> {
        let key = permit.key().clone();
        // The metadata and a cached document on this thread; only a load goes to a
        // blocking thread.
        let Some(meta) = self.read_now(|s| s.section_meta(&key))? else {
            return Ok(None);
        };
        if let Some(doc) = self.docs.take(&key, meta.last_seq) {
            return Ok(Some((doc, meta)));
        }
        self.run(move |s| {
            let Some(stored) = s.section(&key)? else {
                return Ok(None);
            };
            let doc = SectionDoc::load(stored.snapshot.as_deref(), &stored.chunks)?;
            Ok(Some((doc, stored.meta)))
        })
        .await
    }

    /// What a peer that has `known` of a section lacks, told from the store's bookkeeping
    /// without loading the document: nothing when `known` are the section's heads, else the
    /// newest chunks as stored, when at most `TAIL_CHUNKS` of them lead from `known` to the
    /// heads (every dependency of their changes is in `known` or an earlier one of them; see
    /// [`heads_after`]). `None` when the bookkeeping cannot tell (the caller loads the
    /// document). Point reads, on this thread (see `read_now`).
    pub fn stored_after(
        &self,
        permit: &ReadPermit,
        known: &[ChangeHash],
    ) -> Result<Option<StoredTail>> {
        let key = permit.key();
        self.read_now(|s| {
            let Some(meta) = s.section_meta(key)? else {
                return Ok(None);
            };
            let Some(heads) = &meta.heads else {
                return Ok(None);
            };
            if same_heads(heads, known) {
                return Ok(Some(StoredTail::nothing(heads, &meta)));
            }
            // Newest first, back to the snapshot at most (compaction folds chunks into it).
            let oldest = meta
                .first_chunk
                .max(meta.next_chunk.saturating_sub(TAIL_CHUNKS));
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            let mut changes: Vec<automerge::Change> = Vec::new();
            for n in (oldest..meta.next_chunk).rev() {
                let Some(bytes) = s.backend.get(Tree::Chunks, &chunk_key(key, n))? else {
                    return Ok(None);
                };
                // A chunk that is not plain changes (a whole document as first received).
                let Ok(mut older) = parse_changes(&bytes) else {
                    return Ok(None);
                };
                older.append(&mut changes);
                changes = older;
                chunks.push(bytes);
                if !heads_after(known, &changes).is_some_and(|h| same_heads(&h, heads)) {
                    continue;
                }
                // The chunks are the ones the metadata describes only if it did not move
                // meanwhile (a purge and a new arrival number chunks from 0 again).
                if s.section_meta(key)?.as_ref() != Some(&meta) {
                    return Ok(None);
                }
                return Ok(Some(StoredTail {
                    bytes: chunks.into_iter().rev().flatten().collect(),
                    heads: heads.clone(),
                    last_seq: meta.last_seq,
                }));
            }
            Ok(None)
        })
    }

    /// Whether the cache holds the section's document as of feed sequence `seq`.
    pub fn is_cached(&self, key: &SectionKey, seq: u64) -> bool {
        self.docs.contains(key, seq)
    }

    /// Keeps `doc` in the cache as the section's document at feed sequence `seq`, unless the
    /// section has changed (or gone) since. Best effort: the caller's work is done (often
    /// committed), so a failure here only costs a later load, and is logged.
    pub async fn keep_doc(&self, permit: &ReadPermit, seq: u64, doc: SectionDoc) {
        let key = permit.key();
        // The ticket first: a purge between the check and the insert makes `keep` refuse.
        let ticket = self.docs.ticket();
        // A point read, on this thread (see `read_now`), outside the cache's lock.
        match self.read_now(|s| s.section_meta(key)) {
            Ok(Some(meta)) if meta.last_seq == seq => {
                // What is not kept (the document, or those it evicted) drops here, outside
                // the cache's lock.
                drop(self.docs.keep(key.clone(), seq, doc, ticket));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not keep a section document in the cache"),
        }
    }

    /// Section documents held in the cache.
    pub fn docs_cached(&self) -> usize {
        self.docs.len()
    }

    /// Runs a point read on the caller's thread: a few keys from sled's page cache cost far
    /// less than handing the work to a blocking thread and back (two context switches each,
    /// the largest cost of replication in the profiles). So do the short scans a replication
    /// pump makes for every change it sends (a feed page of at most a few hundred entries, the
    /// purge receipts waiting for a peer, a plan's receipts, the pinned peer keys). Long scans,
    /// document loads and writes use [`StoreHandle::run`].
    fn read_now<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        f(&self.store)
    }

    /// Runs `job` through the store's writer without holding a thread while it waits: it
    /// is queued, and only when nobody is leading does a blocking thread start, to run every
    /// queued job (see [`Writer::enqueue`]). Returns once the job is durable (applied, for
    /// `hints`).
    async fn write(&self, job: WriteFn, hints: bool) -> Result<()> {
        let (mut answer, mut lead) = self.store.writer.enqueue(job, hints);
        loop {
            if lead {
                let leader = Leader(Some(self.store.clone()));
                drop(tokio::task::spawn_blocking(move || leader.run()));
            }
            match answer
                .await
                .map_err(|_| Error::internal("the store's writer dropped a write"))?
            {
                Answer::Done(outcome) => return outcome,
                Answer::Lead(ticket) => (answer, lead) = (ticket.take(), true),
            }
        }
    }

    /// Commits a batch (see [`Store::commit`]) without holding a thread while it waits.
    pub async fn commit(&self, batch: CommitBatch) -> Result<Committed> {
        let (job, landed) = commit_job(batch);
        // In a task of its own: a commit that lands is counted even if its caller goes away
        // (a client disconnects) while it waits.
        let this = self.clone();
        tokio::spawn(async move {
            this.write(job, false).await?;
            landed(&this.store)
        })
        .await
        .map_err(|e| Error::internal(format!("storage task failed: {e}")))?
    }

    async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::internal(format!("storage task failed: {e}")))?
    }

    /// See [`Store::consent_changes_since`].
    pub async fn consent_changes_since(&self, after: u64) -> Result<(Vec<SubjectId>, u64)> {
        self.run(move |s| s.consent_changes_since(after)).await
    }

    /// See [`Store::consent_head`] (a point read).
    pub async fn consent_head(&self) -> Result<u64> {
        self.read_now(|s| s.consent_head())
    }

    /// See [`Store::consent_by_id`] (two point reads).
    pub async fn consent_by_id(&self, id: &str) -> Result<Option<ConsentEntry>> {
        self.read_now(|s| s.consent_by_id(id))
    }

    /// See [`Store::consent_changes_naming`].
    pub async fn consent_changes_naming(
        &self,
        agency: &AgencyId,
        after: u64,
    ) -> Result<(Vec<SubjectId>, u64)> {
        let agency = agency.clone();
        self.run(move |s| s.consent_changes_naming(&agency, after))
            .await
    }

    /// See [`Store::names`] (a point read, made in place).
    pub fn names(&self, agency: &AgencyId, subject: SubjectId) -> Result<bool> {
        self.read_now(|s| s.names(agency, subject))
    }

    /// See [`Store::plans_of_subject`].
    pub async fn plans_of_subject(&self, subject: SubjectId) -> Result<Vec<PlanRecord>> {
        self.run(move |s| s.plans_of_subject(subject)).await
    }

    /// Reads a section the permit allows reading.
    pub async fn read_section(&self, permit: &ReadPermit) -> Result<Option<StoredSection>> {
        let key = permit.key().clone();
        self.read_now(move |s| s.section(&key))
    }

    /// Commits section changes (bytes and the heads after them), each under its write
    /// permit, with one audit entry and the disclosure records that go with them.
    pub async fn write_sections(
        &self,
        changes: Vec<(&WritePermit, Vec<u8>, Vec<ChangeHash>)>,
        new_plan: Option<PlanRecord>,
        audit: AuditDraft,
        disclosures: Vec<AuditDraft>,
    ) -> Result<Committed> {
        let changes = changes
            .into_iter()
            .map(|(p, bytes, heads)| SectionWrite {
                key: p.key().clone(),
                bytes,
                heads,
            })
            .collect();
        let batch = CommitBatch {
            new_plans: new_plan.into_iter().collect(),
            changes,
            new_user: None,
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures,
            audit,
        };
        self.commit(batch).await
    }

    /// Folds a section's chunks into a snapshot (the caller holds the section's lock).
    pub async fn compact(
        &self,
        permit: &WritePermit,
        snapshot: Vec<u8>,
        through: u64,
    ) -> Result<()> {
        self.write(compact_job(permit.key().clone(), snapshot, through), false)
            .await
    }

    /// Adds a user, with its audit entry.
    pub async fn add_user(&self, user: UserRecord, audit: AuditDraft) -> Result<Committed> {
        let batch = CommitBatch {
            new_plans: vec![],
            changes: vec![],
            new_user: Some(user),
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures: vec![],
            audit,
        };
        self.commit(batch).await
    }

    /// Appends an audit entry on its own (reads, denials).
    pub async fn audit(&self, draft: AuditDraft) -> Result<AuditEntry> {
        self.commit(CommitBatch::audit_only(draft))
            .await
            .map(|c| c.audit)
    }

    /// A plan's record.
    pub async fn plan(&self, id: PlanId) -> Result<Option<PlanRecord>> {
        self.read_now(move |s| s.plan(id))
    }

    /// A page of plans.
    pub async fn plans(&self, after: Option<PlanId>, limit: usize) -> Result<Vec<PlanRecord>> {
        self.run(move |s| s.plans(after, limit)).await
    }

    /// Sections of a plan that have been written.
    pub async fn sections_of(&self, plan: PlanId) -> Result<Vec<SectionName>> {
        self.run(move |s| s.sections_of(plan)).await
    }

    /// The consent entries of a subject, or of every subject.
    pub async fn consent_entries(&self, subject: Option<SubjectId>) -> Result<Vec<ConsentEntry>> {
        self.run(move |s| s.consent_entries(subject)).await
    }

    /// See [`Store::consents_ended`].
    pub async fn consents_ended(&self, now: Timestamp) -> Result<(Vec<SubjectId>, u64)> {
        self.run(move |s| s.consents_ended(now)).await
    }

    /// See [`Store::consents_swept`].
    pub async fn consents_swept(&self, to: u64) -> Result<()> {
        self.run(move |s| s.consents_swept(to)).await
    }

    /// Stores consent entries with their audit entry.
    pub async fn write_consent_entries(
        &self,
        entries: Vec<ConsentEntry>,
        audit: AuditDraft,
    ) -> Result<Committed> {
        let mut batch = CommitBatch::audit_only(audit);
        batch.consent_entries = entries;
        self.commit(batch).await
    }

    /// Every user.
    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        self.run(|s| s.users()).await
    }

    /// A page of audit entries.
    pub async fn audit_entries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Result<AuditEntry, (u64, String)>>> {
        self.run(move |s| s.audit_entries(after, limit)).await
    }

    /// Verifies the audit chain.
    pub async fn verify_audit(&self) -> Result<Result<u64, ChainBreak>> {
        self.run(|s| s.verify_audit()).await
    }

    /// Feed entries after `after`.
    pub async fn feed_since(&self, after: u64, limit: usize) -> Result<Vec<FeedEntry>> {
        self.read_now(move |s| s.feed_since(after, limit))
    }

    /// Counters.
    pub async fn stats(&self) -> Result<StoreStats> {
        self.run(|s| s.stats()).await
    }

    /// Purges sections the gate no longer allows this node to hold.
    pub async fn purge(&self, keys: Vec<SectionKey>, batch: CommitBatch) -> Result<Committed> {
        let docs = self.docs.clone();
        self.run(move |s| {
            let committed = s.purge(&keys, &batch)?;
            docs.forget(&keys);
            Ok(committed)
        })
        .await
    }

    /// A section's stored size in bytes.
    pub async fn section_size(&self, key: &SectionKey) -> Result<u64> {
        let key = key.clone();
        self.read_now(move |s| s.section_size(&key))
    }

    /// See [`Store::section_meta`] (bookkeeping only, no section bytes).
    pub async fn section_meta(&self, key: &SectionKey) -> Result<Option<SectionMeta>> {
        let key = key.clone();
        self.read_now(move |s| s.section_meta(&key))
    }

    /// Reads a family-page key.
    pub async fn family_get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.read_now(move |s| s.family_get(&key))
    }

    /// Reads a replication key.
    pub async fn replication_get(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>> {
        self.read_now(move |s| s.replication_get(&key))
    }

    /// Replication keys with a prefix.
    pub async fn replication_scan(&self, prefix: Vec<u8>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.read_now(move |s| s.replication_scan(&prefix))
    }

    /// See [`Store::replication_any`].
    pub fn replication_any(&self, prefix: &[u8]) -> Result<bool> {
        self.read_now(|s| s.replication_any(prefix))
    }

    /// Writes replication keys.
    pub async fn replication_put(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        self.write(Box::new(move |txn| write_replication(txn, &writes)), false)
            .await
    }

    /// Writes replication hints (a peer's heads, a cursor) that may be lost in a crash: they
    /// become durable with the next commit that is not a hint, and losing them only means
    /// sending more again. Answered once applied, without waiting for a sync.
    pub async fn replication_hint(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        self.write(Box::new(move |txn| write_replication(txn, &writes)), true)
            .await
    }

    /// The synchronous store, for offline tools (`weft user add --data`).
    pub fn blocking(&self) -> &Store {
        &self.store
    }
}

#[cfg(test)]
pub(crate) mod tests;
