//! The node's domain service: what the client API does, with no gRPC in sight.
//!
//! Every operation authenticates the caller, asks the gate, works on section documents, and
//! commits through the store with its audit entry. Denials are audited too. Bad input is
//! rejected before anything is written and leaves no trace in the store.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use automerge::ChangeHash;
use rand::RngCore;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use weft_consent::ed25519_dalek::SigningKey;

use crate::audit::{AuditAction, AuditDraft, AuditEntry, Outcome};
use crate::catalogue::{self, FieldSpec, FieldValue, GOALS, REFERRALS};
use crate::error::{Error, Result};
use crate::gate::{self, Denial, WritePermit};
use crate::model::{
    validate_user_name, AgencyId, Caller, PlanId, PlanRecord, Right, Role, SectionKey, SectionName,
    SubjectId, Timestamp, UserRecord,
};
use crate::section::{ChangeInfo, Edit, SectionDoc};
use crate::storage::{StoreHandle, StoreStats};

mod consent;
mod events;
pub mod family;
pub mod replica;
pub use consent::{ConsentState, ConsentView, GrantInput};
pub use events::KEPT_PER_PLAN;

/// A source of the current time, injectable for tests.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// A change event on a plan, as pushed to watchers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEvent {
    /// The plan.
    pub plan: PlanId,
    /// The section that changed.
    pub section: SectionName,
    /// The change's feed sequence.
    pub seq: u64,
    /// Who.
    pub agency: AgencyId,
    /// Who.
    pub user: String,
    /// When.
    pub time: Timestamp,
    /// What (field names, never values).
    pub summary: String,
    /// When this node had the change durable and readable (wall clock).
    pub durable: std::time::SystemTime,
}

/// What an edit changed, and when it was durable here.
#[derive(Clone, Debug)]
pub struct Edited {
    /// The sections changed.
    pub sections: Vec<SectionName>,
    /// The feed sequence of the last change.
    pub feed_seq: u64,
    /// When the commit was durable and readable (wall clock).
    pub durable: std::time::SystemTime,
}

/// One section as shown to a caller.
#[derive(Clone, Debug, PartialEq)]
pub struct SectionView {
    /// The section.
    pub name: SectionName,
    /// Its content.
    pub content: Json,
    /// `<agency>/<user>` of the last change.
    pub last_changed_by: String,
    /// When, unix ms.
    pub last_changed_at: i64,
    /// Number of changes in its history.
    pub changes: u64,
}

/// A plan as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanSummary {
    /// The plan.
    pub plan: PlanRecord,
    /// Preferred or given name plus family name; empty if the caller may not read `profile`.
    pub display_name: String,
    /// Need tier, 0 if unknown.
    pub tier: u32,
}

/// One history entry of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The section.
    pub section: SectionName,
    /// The change.
    pub change: ChangeInfo,
}

/// What `update_goal` changes; `None` leaves a field as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct GoalChange<'a> {
    /// New status.
    pub status: Option<&'a str>,
    /// New text.
    pub text: Option<&'a str>,
    /// New target date.
    pub target_date: Option<&'a str>,
    /// A progress note to add.
    pub note: Option<&'a str>,
}

/// What `weft status` shows.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// Store counters.
    pub stats: StoreStats,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// When the node certificate expires.
    pub certificate_expires: Option<Timestamp>,
    /// Peers.
    pub peers: std::collections::BTreeMap<AgencyId, replica::PeerInfo>,
    /// Things an operator should act on.
    pub warnings: Vec<String>,
}

/// Options of the service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Fold a section's change chunks into a snapshot once it has this many.
    pub compact_after_chunks: u64,
    /// When this node's TLS certificate expires, for `weft status`.
    pub certificate_expires: Option<Timestamp>,
    /// SHA-256 of the config file, recorded in backups.
    pub config_sha256: String,
    /// Where backups are written while they stream (the data directory, which is writable
    /// wherever the node runs); `None`: the system's temporary directory.
    pub scratch_dir: Option<std::path::PathBuf>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            compact_after_chunks: 64,
            certificate_expires: None,
            config_sha256: String::new(),
            scratch_dir: None,
        }
    }
}

const LOCK_STRIPES: usize = 256;

/// What a watcher that fell behind its plan's events is told.
fn watch_fell_behind() -> Error {
    Error::Aborted(
        "this watch fell behind the plan's events; watch again and re-read the plan".into(),
    )
}

/// The node's state and operations.
pub struct NodeService {
    agency: AgencyId,
    store: StoreHandle,
    users: RwLock<HashMap<String, UserRecord>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    events: Arc<events::PlanEvents>,
    /// One per peer a replication pump has run for, bumped to wake that peer's pumps: for
    /// every peer by [`NodeService::wake`], for the peers a change may go to by
    /// [`NodeService::wake_for`].
    pump_wakes: std::sync::Mutex<HashMap<AgencyId, tokio::sync::watch::Sender<u64>>>,
    /// A wake of the pumps is due within [`LATER_WAKE`] (see [`NodeService::wake_later`]).
    wake_due: std::sync::atomic::AtomicBool,
    /// Replication sessions running (see [`NodeService::session_started`]).
    sessions: tokio::sync::watch::Sender<usize>,
    /// Replication status per peer.
    pub(crate) peers: replica::PeerBoard,
    closing: tokio::sync::watch::Sender<bool>,
    clock: Clock,
    started: Instant,
    options: ServiceOptions,
    signing_key: SigningKey,
    consents: RwLock<consent::ConsentCache>,
    /// This service, for work that must finish even if the caller that started it goes away
    /// (see `store_consents`).
    me: std::sync::Weak<NodeService>,
    /// Held from reading a subject's consent entries until their set is in `consents`, so
    /// two refreshes (consents received side by side, say) cannot finish out of order and
    /// leave the older set cached.
    consent_refresh: tokio::sync::Mutex<()>,
    /// Bumped before every change to the consent cache, so replication can tell whether a
    /// section the gate just allowed may rest on a consent the peer has not been sent yet.
    consent_generation: std::sync::atomic::AtomicU64,
    /// Consent envelopes already verified (see [`consent::Verified`]).
    verified: consent::Verified,
    /// The node certificate in use, once the server has loaded it (status reads its expiry).
    certificate: std::sync::OnceLock<Arc<crate::tls::ReloadingCert>>,
    /// Refusals by rule, for metrics.
    denials: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    /// Serialises invitation acceptances and sign-ins (single use, failure counts).
    family_lock: tokio::sync::Mutex<()>,
    /// The family page's public address, once it listens.
    family_url: std::sync::OnceLock<String>,
}

/// A running replication session (see [`NodeService::session_started`]).
pub(crate) struct LiveSession(Arc<NodeService>);

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.0.sessions.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// How soon [`NodeService::wake_later`] wakes the pumps. A grantee stores every change its
/// home sends; none goes anywhere (a grantee sends only to the home, which has it), but each
/// woke the pump, which paged the feed to skip it and sent the home a cursor that the home
/// acknowledged: in scenario 3 of the benchmark, once per edit at every grantee.
const LATER_WAKE: std::time::Duration = std::time::Duration::from_millis(100);

/// SHA-256 of a bearer token, hex: the only form in which tokens are stored.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh bearer token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("weft_{}", hex::encode(bytes))
}

/// Inserts `key`, first emptying `map` when it holds `most` entries and not `key`; true when
/// it emptied it. The node's memos stay bounded without tracking use: what is dropped is read
/// or worked out again when next needed.
pub(crate) fn insert_bounded<K: std::hash::Hash + Eq, V>(
    map: &mut std::collections::HashMap<K, V>,
    key: K,
    value: V,
    most: usize,
) -> bool {
    let empty = map.len() >= most && !map.contains_key(&key);
    if empty {
        map.clear();
    }
    map.insert(key, value);
    empty
}

/// An id unique within one plan (a goal, a referral): `prefix-` and 48 random bits in hex.
fn short_id(prefix: &str) -> String {
    random_id::<6>(prefix)
}

/// An id unique across the federation (a consent, a revocation): `prefix-` and 128 random
/// bits in hex. Every holder files a consent under its id and a revocation finds its consent
/// by it, across millions of consents: with 48 bits, two of ten million would share an id
/// with odds of about one in six.
fn unique_id(prefix: &str) -> String {
    random_id::<16>(prefix)
}

fn random_id<const N: usize>(prefix: &str) -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

/// Adds a user straight to a store, for bootstrap (`weft user add --data`, `weft dev`).
/// Returns the user and its token.
pub fn bootstrap_user(
    store: &StoreHandle,
    agency: &AgencyId,
    name: &str,
    role: Role,
    now: Timestamp,
) -> Result<(UserRecord, String)> {
    validate_user_name(name)?;
    let token = new_token();
    let user = UserRecord {
        name: name.to_string(),
        role,
        subjects: vec![],
        created_at: now,
        token_hash: token_hash(&token),
        agency: None,
    };
    let audit = AuditDraft {
        time: now,
        agency: agency.to_string(),
        user: "local-operator".into(),
        action: AuditAction::AddUser,
        outcome: Outcome::Ok,
        plan: None,
        sections: vec![],
        detail: format!("{name} as {role}"),
        basis: String::new(),
    };
    let mut batch = crate::storage::CommitBatch::audit_only(audit);
    batch.new_user = Some(user.clone());
    store.blocking().commit(batch)?;
    Ok((user, token))
}

impl NodeService {
    /// A service over an opened store.
    pub async fn new(
        agency: AgencyId,
        store: StoreHandle,
        clock: Clock,
        options: ServiceOptions,
        signing_key: SigningKey,
    ) -> Result<Arc<Self>> {
        let users = store
            .users()
            .await?
            .into_iter()
            .map(|u| (u.token_hash.clone(), u))
            .collect();
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            agency,
            store,
            users: RwLock::new(users),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            events: Default::default(),
            closing: tokio::sync::watch::channel(false).0,
            pump_wakes: Default::default(),
            wake_due: Default::default(),
            sessions: tokio::sync::watch::channel(0).0,
            peers: replica::PeerBoard::default(),
            clock,
            started: Instant::now(),
            options,
            signing_key,
            consents: RwLock::new(consent::ConsentCache::new(consent::CONSENTS_KEPT)),
            consent_refresh: tokio::sync::Mutex::new(()),
            consent_generation: std::sync::atomic::AtomicU64::new(0),
            verified: Default::default(),
            denials: Default::default(),
            certificate: std::sync::OnceLock::new(),
            family_lock: tokio::sync::Mutex::new(()),
            family_url: std::sync::OnceLock::new(),
        }))
    }

    /// Lets `weft status` follow certificate reloads.
    pub fn set_certificate(&self, cert: Arc<crate::tls::ReloadingCert>) {
        let _ = self.certificate.set(cert);
    }

    /// Records the family page's public address (invitation links start with it).
    pub fn set_family_url(&self, url: String) {
        let _ = self.family_url.set(url);
    }

    /// The family page's public address, if it is enabled.
    pub fn family_url(&self) -> Option<String> {
        self.family_url.get().cloned()
    }

    /// Refusals so far, by rule.
    pub fn denial_counts(&self) -> BTreeMap<&'static str, u64> {
        self.denials.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// Wakes the running pumps of the peers `of` picks (it runs under the wakes' lock, so it
    /// must not wait for anything).
    fn wake_pumps(&self, of: impl Fn(&AgencyId) -> bool) {
        let wakes = self
            .pump_wakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (peer, wake) in wakes.iter() {
            if wake.receiver_count() > 0 && of(peer) {
                wake.send_modify(|n| *n += 1);
            }
        }
    }

    /// Wakes every replication pump: something was stored that any peer may need.
    pub(crate) fn wake(&self) {
        self.wake_pumps(|_| true);
    }

    /// Wakes every replication pump within [`LATER_WAKE`], once for all the changes stored
    /// meanwhile: for the pumps of peers a change does not go to, which only move their
    /// cursors past it.
    pub(crate) fn wake_later(&self) {
        if self
            .wake_due
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        // The task holds no reference: a stopping node's store is not kept open by it.
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(LATER_WAKE).await;
            if let Some(me) = me.upgrade() {
                me.wake_due
                    .store(false, std::sync::atomic::Ordering::Release);
                me.wake();
            }
        });
    }

    /// Counts a replication session as running until the returned guard drops (after the
    /// session has written what it held back: the peer's newest cursor and heads).
    pub(crate) fn session_started(self: &Arc<Self>) -> LiveSession {
        self.sessions.send_modify(|n| *n += 1);
        LiveSession(self.clone())
    }

    /// Waits up to `within` for every replication session to end (the node is stopping);
    /// false if some did not.
    pub async fn sessions_ended(&self, within: std::time::Duration) -> bool {
        let mut running = self.sessions.subscribe();
        tokio::time::timeout(within, running.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver that changes when something is stored that may go to `peer` (see
    /// [`NodeService::wake`] and `wake_for`), and within [`LATER_WAKE`] of a stored change
    /// that does not (its pump then moves its cursor past it).
    pub(crate) fn subscribe_changes(&self, peer: &AgencyId) -> tokio::sync::watch::Receiver<u64> {
        self.pump_wakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(peer.clone())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// Ends every open watch stream (the node is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// This node's agency.
    pub fn agency(&self) -> &AgencyId {
        &self.agency
    }

    /// The store.
    pub fn store(&self) -> &StoreHandle {
        &self.store
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    fn draft(&self, caller: &Caller, action: AuditAction, plan: Option<PlanId>) -> AuditDraft {
        AuditDraft {
            time: self.now(),
            agency: caller.agency.to_string(),
            user: caller.user.clone(),
            action,
            outcome: Outcome::Ok,
            plan,
            sections: vec![],
            detail: String::new(),
            basis: String::new(),
        }
    }

    /// Records a denial in the audit log and returns the error for the caller.
    async fn deny(
        &self,
        caller: &Caller,
        action: AuditAction,
        plan: Option<PlanId>,
        sections: Vec<String>,
        denial: Denial,
    ) -> Error {
        if let Ok(mut d) = self.denials.lock() {
            *d.entry(denial.code).or_default() += 1;
        }
        let mut draft = self.draft(caller, action, plan);
        draft.outcome = Outcome::Denied;
        draft.sections = sections;
        draft.detail = denial.code.to_string();
        tracing::info!(target: "weft::audit", user = %caller.user, action = action.as_str(), code = denial.code, "access denied");
        if let Err(e) = self.store.audit(draft).await {
            return e;
        }
        denial.into()
    }

    async fn require(&self, caller: &Caller, right: Right, action: AuditAction) -> Result<()> {
        self.require_on(caller, right, action, None).await
    }

    async fn require_on(
        &self,
        caller: &Caller,
        right: Right,
        action: AuditAction,
        plan: Option<PlanId>,
    ) -> Result<()> {
        let partner_may = matches!(
            right,
            Right::ReadPlan | Right::WritePlan | Right::WriteGoals | Right::EditGoals
        );
        if caller.agency != self.agency && !partner_may {
            // Partner-agency staff reach sections through consent only: no users, no audit
            // log, no plans of their own on this node.
            let denial = Denial {
                code: "partner",
                message: format!(
                    "staff of {} may only read and write consented sections here",
                    caller.agency
                ),
            };
            return Err(self.deny(caller, action, plan, vec![], denial).await);
        }
        match gate::require(caller, right) {
            Ok(()) => Ok(()),
            Err(d) => Err(self.deny(caller, action, plan, vec![], d).await),
        }
    }

    /// Resolves a bearer token to a caller; a missing or unknown token is audited.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller> {
        let found = token.and_then(|t| {
            let users = self.users.read().ok()?;
            users.get(&token_hash(t)).cloned()
        });
        match found {
            Some(u) => Ok(Caller {
                agency: u.agency.unwrap_or_else(|| self.agency.clone()),
                user: u.name,
                role: u.role,
                subjects: u.subjects,
            }),
            None => {
                let why = if token.is_some() {
                    "unknown_token"
                } else {
                    "missing_token"
                };
                let draft = AuditDraft {
                    time: self.now(),
                    agency: self.agency.to_string(),
                    user: "-".into(),
                    action: AuditAction::Authenticate,
                    outcome: Outcome::Denied,
                    plan: None,
                    sections: vec![],
                    detail: why.into(),
                    basis: String::new(),
                };
                self.store.audit(draft).await?;
                Err(Error::Unauthenticated(if token.is_some() {
                    "the bearer token is not valid"
                } else {
                    "a bearer token is required (authorization: Bearer <token>)"
                }))
            }
        }
    }

    async fn load_plan(
        &self,
        caller: &Caller,
        id: PlanId,
        action: AuditAction,
    ) -> Result<PlanRecord> {
        let not_found = || Error::NotFound(format!("plan {id}"));
        let plan = self.store.plan(id).await?.ok_or_else(not_found)?;
        if !gate::may_see_plan(caller, &plan) {
            // Audited as a denial, answered as not found: a guardian learns nothing of
            // other children's plans, not even that they exist.
            let denial = Denial {
                code: "guardian_binding",
                message: String::new(),
            };
            let _ = self.deny(caller, action, Some(id), vec![], denial).await;
            return Err(not_found());
        }
        Ok(plan)
    }

    fn stripe(&self, key: &SectionKey) -> usize {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() as usize) % LOCK_STRIPES
    }

    /// Applies edits to sections of one plan atomically: every edit is checked by the gate and
    /// validated against its document first; then all changes and one audit entry commit
    /// together. Returns the sections changed, the feed sequence of the last change and when
    /// the commit was durable;
    /// `look` sees each changed document once committed (it then goes to the cache).
    async fn edit(
        &self,
        caller: &Caller,
        plan: &PlanRecord,
        new_plan: bool,
        edits: Vec<(SectionName, Edit, Right)>,
        action: AuditAction,
        mut look: impl FnMut(&SectionDoc) + Send,
    ) -> Result<Edited> {
        // Lock first, then decide: a revocation or purge cannot slip in between.
        let mut stripes: Vec<usize> = edits
            .iter()
            .map(|(s, _, _)| {
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
        let now = self.now();
        let consents = self.consents_for(plan.subject).await?;
        let sections: Vec<String> = edits.iter().map(|(s, _, _)| s.to_string()).collect();
        let mut permits: Vec<WritePermit> = Vec::with_capacity(edits.len());
        for (section, _, right) in &edits {
            match gate::write(caller, plan, section, *right, &consents, now) {
                Ok(p) => permits.push(p),
                Err(d) => return Err(self.deny(caller, action, Some(plan.id), sections, d).await),
            }
        }

        // Group edits by section so several fields of one section make one change.
        let mut docs: BTreeMap<SectionName, (SectionDoc, u64, u64)> = BTreeMap::new();
        let mut changes: Vec<(usize, Vec<u8>, Vec<ChangeHash>)> = Vec::new();
        for (i, (section, edit, _)) in edits.iter().enumerate() {
            if !docs.contains_key(section) {
                let loaded = self.store.load_doc(&as_read(&permits[i])).await?;
                if loaded.is_none() && plan.home != self.agency {
                    return Err(Error::FailedPrecondition(format!(
                        "section {section} has not arrived from {} yet; try again once it has",
                        plan.home
                    )));
                }
                let (doc, next_chunk, bytes) = match loaded {
                    Some((doc, meta)) => (doc, meta.next_chunk - meta.first_chunk, meta.bytes),
                    None => (SectionDoc::new(), 0, 0),
                };
                docs.insert(section.clone(), (doc, next_chunk, bytes));
            }
            let (doc, _, bytes) = docs.get_mut(section).expect("inserted above");
            let change = doc.apply(section.spec(), caller, edit, now)?;
            *bytes += change.len() as u64;
            if *bytes as usize > catalogue::MAX_SECTION_BYTES {
                return Err(Error::invalid(format!(
                    "section {section} would exceed its size limit of {} bytes",
                    catalogue::MAX_SECTION_BYTES
                )));
            }
            changes.push((i, change, doc.heads()));
        }

        let mut draft = self.draft(caller, action, Some(plan.id));
        let mut touched: Vec<String> = edits.iter().map(|(s, _, _)| s.to_string()).collect();
        touched.dedup();
        draft.sections = touched;
        draft.basis = consent::bases(permits.iter().map(|p| p.reason()));
        draft.detail = edits
            .iter()
            .map(|(s, e, _)| e.summary(s.as_str()))
            .collect::<Vec<_>>()
            .join("; ");
        // The home records the disclosure of these changes to its connected peers with them.
        // (A new plan has no peer holding it yet.)
        let disclosed = if new_plan {
            replica::Disclosures::default()
        } else {
            self.disclosures_with(plan, docs.keys(), &consents, draft.time, None)
                .await
        };
        let batch: Vec<(&WritePermit, Vec<u8>, Vec<ChangeHash>)> = changes
            .into_iter()
            .map(|(i, bytes, heads)| (&permits[i], bytes, heads))
            .collect();
        let committed = self
            .store
            .write_sections(
                batch,
                new_plan.then(|| plan.clone()),
                draft,
                disclosed.drafts,
            )
            .await?;
        let durable = std::time::SystemTime::now();

        let mut last_seq = 0;
        let mut section_seq: BTreeMap<&SectionName, u64> = BTreeMap::new();
        for (entry, (section, edit, _)) in committed.feed.iter().zip(&edits) {
            last_seq = entry.seq;
            section_seq.insert(section, entry.seq);
            self.events.send(PlanEvent {
                plan: plan.id,
                section: section.clone(),
                seq: entry.seq,
                agency: caller.agency.clone(),
                user: caller.user.clone(),
                time: now,
                summary: edit.summary(section.as_str()),
                durable,
            });
        }
        // Durable now: the frames carrying these changes need not record them again (noted
        // before the pumps wake).
        for (peer, key) in &disclosed.covers {
            if let Some(seq) = section_seq.get(&key.section) {
                self.peers.note_disclosed(peer, key, *seq);
            }
        }
        self.wake_for(plan, &consents);

        // Compact sections whose chunk count passed the threshold, while still locked, and
        // keep each document for the next edit or frame of its section.
        let mut names = Vec::with_capacity(docs.len());
        for (section, (mut doc, chunks, _)) in docs {
            look(&doc);
            let chunks_now = chunks + edits.iter().filter(|(s, _, _)| *s == section).count() as u64;
            if let Some(p) = permits.iter().find(|p| p.key().section == section) {
                if chunks_now >= self.options.compact_after_chunks {
                    if let Some(meta) = self.store.section_meta(p.key()).await? {
                        self.store.compact(p, doc.save(), meta.next_chunk).await?;
                    }
                }
                if let Some(seq) = section_seq.get(&section) {
                    self.store.keep_doc(&as_read(p), *seq, doc).await;
                }
            }
            names.push(section);
        }
        drop(guards);
        Ok(Edited {
            sections: names,
            feed_seq: last_seq,
            durable,
        })
    }

    /// Creates a plan with a fresh subject; the caller's agency is its home.
    pub async fn create_plan(
        &self,
        caller: &Caller,
        given_name: &str,
        family_name: &str,
        date_of_birth: Option<&str>,
        fields: Vec<(String, String, String)>,
    ) -> Result<PlanRecord> {
        self.require(caller, Right::CreatePlan, AuditAction::CreatePlan)
            .await?;
        let mut all = vec![
            (
                "profile".to_string(),
                "given_name".to_string(),
                given_name.to_string(),
            ),
            (
                "profile".to_string(),
                "family_name".to_string(),
                family_name.to_string(),
            ),
        ];
        if given_name.trim().is_empty() || family_name.trim().is_empty() {
            return Err(Error::invalid(
                "a plan needs a given name and a family name",
            ));
        }
        if let Some(d) = date_of_birth {
            all.push(("profile".into(), "date_of_birth".into(), d.to_string()));
        }
        all.extend(fields);
        let edits = parse_field_edits(&all)?;
        let plan = PlanRecord {
            id: PlanId::random(),
            subject: SubjectId::random(),
            home: self.agency.clone(),
            created_at: self.now(),
        };
        self.edit(caller, &plan, true, edits, AuditAction::CreatePlan, |_| {})
            .await?;
        tracing::info!(plan = %plan.id, user = %caller.user, "plan created");
        Ok(plan)
    }

    /// Sets fields, all or nothing.
    pub async fn set_fields(
        &self,
        caller: &Caller,
        plan: PlanId,
        fields: Vec<(String, String, String)>,
    ) -> Result<Edited> {
        self.require_on(caller, Right::WritePlan, AuditAction::Write, Some(plan))
            .await?;
        if fields.is_empty() {
            return Err(Error::invalid("no fields to set"));
        }
        let edits = parse_field_edits(&fields)?;
        let plan = self.load_plan(caller, plan, AuditAction::Write).await?;
        self.edit(caller, &plan, false, edits, AuditAction::Write, |_| {})
            .await
    }

    /// Adds a goal; returns its id and the goal as stored.
    pub async fn add_goal(
        &self,
        caller: &Caller,
        plan: PlanId,
        domain: &str,
        text: &str,
        horizon: &str,
        target_date: Option<&str>,
    ) -> Result<(String, Json)> {
        self.require_on(caller, Right::WriteGoals, AuditAction::Write, Some(plan))
            .await?;
        if text.trim().is_empty() {
            return Err(Error::invalid("goals.text: a goal needs a text"));
        }
        let mut fields = vec![
            item_field(&GOALS.fields[0], "goals", domain)?,
            item_field(&GOALS.fields[1], "goals", text)?,
            item_field(&GOALS.fields[2], "goals", horizon)?,
            item_field(&GOALS.fields[3], "goals", "open")?,
        ];
        if let Some(d) = target_date {
            fields.push(item_field(&GOALS.fields[4], "goals", d)?);
        }
        let id = short_id("g");
        let edit = Edit::AddGoal {
            id: id.clone(),
            fields,
        };
        let json = self
            .edit_item(caller, plan, "goals", edit, Right::WriteGoals, &id)
            .await?;
        Ok((id, json))
    }

    /// Changes a goal and/or adds a progress note.
    pub async fn update_goal(
        &self,
        caller: &Caller,
        plan: PlanId,
        goal: &str,
        change: GoalChange<'_>,
    ) -> Result<Json> {
        let GoalChange {
            status,
            text,
            target_date,
            note,
        } = change;
        self.require_on(caller, Right::WriteGoals, AuditAction::Write, Some(plan))
            .await?;
        let mut fields = vec![];
        if let Some(s) = status {
            fields.push(item_field(&GOALS.fields[3], "goals", s)?);
        }
        if let Some(t) = text {
            fields.push(item_field(&GOALS.fields[1], "goals", t)?);
        }
        if let Some(d) = target_date {
            fields.push(item_field(&GOALS.fields[4], "goals", d)?);
        }
        if let Some(n) = note {
            check_note(n)?;
        }
        if !fields.is_empty() {
            // Guardians add goals and progress notes; changing a goal is for staff.
            self.require_on(caller, Right::EditGoals, AuditAction::Write, Some(plan))
                .await?;
        }
        if fields.is_empty() && note.is_none() {
            return Err(Error::invalid(
                "nothing to change: give a status, text, target date or note",
            ));
        }
        let edit = Edit::UpdateGoal {
            id: goal.to_string(),
            fields,
            note: note.map(String::from),
        };
        self.edit_item(caller, plan, "goals", edit, Right::WriteGoals, goal)
            .await
    }

    /// Adds a referral; returns its id and the referral as stored.
    pub async fn add_referral(
        &self,
        caller: &Caller,
        plan: PlanId,
        service: &str,
        provider: &str,
        note: Option<&str>,
    ) -> Result<(String, Json)> {
        self.require_on(caller, Right::WritePlan, AuditAction::Write, Some(plan))
            .await?;
        if service.trim().is_empty() {
            return Err(Error::invalid(
                "services.service: a referral needs a service",
            ));
        }
        AgencyId::parse(provider)
            .map_err(|e| Error::invalid(format!("services.provider_agency: {e}")))?;
        if let Some(n) = note {
            check_note(n)?;
        }
        let fields = vec![
            item_field(&REFERRALS.fields[0], "services", service)?,
            item_field(&REFERRALS.fields[1], "services", provider)?,
            item_field(&REFERRALS.fields[2], "services", "proposed")?,
        ];
        let id = short_id("r");
        let edit = Edit::AddReferral {
            id: id.clone(),
            fields,
            note: note.map(String::from),
        };
        let json = self
            .edit_item(caller, plan, "services", edit, Right::WritePlan, &id)
            .await?;
        Ok((id, json))
    }

    /// Moves a referral to a new status.
    pub async fn update_referral(
        &self,
        caller: &Caller,
        plan: PlanId,
        referral: &str,
        status: &str,
        note: Option<&str>,
    ) -> Result<Json> {
        self.require_on(caller, Right::WritePlan, AuditAction::Write, Some(plan))
            .await?;
        item_field(&REFERRALS.fields[2], "services", status)?;
        if let Some(n) = note {
            check_note(n)?;
        }
        let edit = Edit::UpdateReferral {
            id: referral.to_string(),
            status: status.to_string(),
            note: note.map(String::from),
        };
        self.edit_item(caller, plan, "services", edit, Right::WritePlan, referral)
            .await
    }

    async fn edit_item(
        &self,
        caller: &Caller,
        plan: PlanId,
        section: &str,
        edit: Edit,
        right: Right,
        id: &str,
    ) -> Result<Json> {
        let plan = self.load_plan(caller, plan, AuditAction::Write).await?;
        let name = SectionName::parse(section)?;
        let collection = if section == "goals" {
            GOALS.name
        } else {
            REFERRALS.name
        };
        let mut item = Json::Null;
        self.edit(
            caller,
            &plan,
            false,
            vec![(name, edit, right)],
            AuditAction::Write,
            |doc| item = doc.render_item(collection, id),
        )
        .await?;
        Ok(item)
    }

    /// Reads sections of a plan: the ones named, or all the caller may read. Returns the views
    /// and the names of sections withheld from the caller. One audit entry lists what was read.
    pub async fn get_plan(
        &self,
        caller: &Caller,
        plan: PlanId,
        wanted: &[String],
    ) -> Result<(PlanRecord, Vec<SectionView>, Vec<SectionName>)> {
        self.require_on(caller, Right::ReadPlan, AuditAction::Read, Some(plan))
            .await?;
        let wanted: Vec<SectionName> = wanted
            .iter()
            .map(|s| SectionName::parse(s))
            .collect::<Result<_>>()?;
        let plan = self.load_plan(caller, plan, AuditAction::Read).await?;
        let mut names = if wanted.is_empty() {
            let mut all: Vec<SectionName> = catalogue::fixed_sections()
                .map(|s| SectionName::parse(s.name).expect("catalogue names parse"))
                .collect();
            for s in self.store.sections_of(plan.id).await? {
                if !all.contains(&s) {
                    all.push(s);
                }
            }
            all
        } else {
            wanted.clone()
        };
        names.dedup();
        let now = self.now();
        let consents = self.consents_for(plan.subject).await?;
        let mut views = Vec::new();
        let mut reasons = Vec::new();
        let mut withheld = Vec::new();
        for name in names {
            match gate::read(caller, &plan, &name, &consents, now) {
                Ok(permit) => {
                    reasons.push(permit.reason().clone());
                    views.push(self.view(&permit).await?)
                }
                Err(denial) => {
                    if !wanted.is_empty() {
                        let e = self
                            .deny(
                                caller,
                                AuditAction::Read,
                                Some(plan.id),
                                vec![name.to_string()],
                                denial,
                            )
                            .await;
                        return Err(e);
                    }
                    // Partners learn only of catalogue sections, not which agencies keep notes.
                    if caller.agency == plan.home
                        || !name.as_str().starts_with(catalogue::NOTES_PREFIX)
                    {
                        withheld.push(name);
                    }
                }
            }
        }
        if views.is_empty() && caller.agency != plan.home {
            // Nothing consented: the plan is not theirs to know about.
            let denial = Denial {
                code: "consent",
                message: String::new(),
            };
            let _ = self
                .deny(caller, AuditAction::Read, Some(plan.id), vec![], denial)
                .await;
            return Err(Error::NotFound(format!("plan {}", plan.id)));
        }
        let mut draft = self.draft(caller, AuditAction::Read, Some(plan.id));
        draft.sections = views.iter().map(|v| v.name.to_string()).collect();
        draft.basis = consent::bases(reasons.iter());
        self.store.audit(draft).await?;
        Ok((plan, views, withheld))
    }

    async fn view(&self, permit: &gate::ReadPermit) -> Result<SectionView> {
        let name = permit.key().section.clone();
        let Some(stored) = self.store.read_section(permit).await? else {
            return Ok(SectionView {
                name,
                content: Json::Object(Default::default()),
                last_changed_by: String::new(),
                last_changed_at: 0,
                changes: 0,
            });
        };
        let mut doc = SectionDoc::load(stored.snapshot.as_deref(), &stored.chunks)?;
        let history = doc.history();
        let last = history.iter().max_by_key(|c| c.time_ms);
        Ok(SectionView {
            name,
            content: doc.render(),
            last_changed_by: last
                .map(|c| format!("{}/{}", c.agency, c.user))
                .unwrap_or_default(),
            last_changed_at: last.map_or(0, |c| c.time_ms),
            changes: history.len() as u64,
        })
    }

    /// Lists plans the caller may see, a page at a time. One audit entry per page.
    pub async fn list_plans(
        &self,
        caller: &Caller,
        after: Option<PlanId>,
        limit: usize,
    ) -> Result<(Vec<PlanSummary>, Option<PlanId>)> {
        self.require(caller, Right::ReadPlan, AuditAction::ListPlans)
            .await?;
        let limit = limit.clamp(1, 1000);
        let now = self.now();
        let profile = SectionName::parse("profile").expect("in catalogue");
        let mut out = Vec::new();
        let mut cursor = after;
        let mut next = None;
        'pages: loop {
            let page = self.store.plans(cursor, limit).await?;
            let Some(last) = page.last() else { break };
            cursor = Some(last.id);
            let full = page.len() == limit;
            for plan in page {
                if !gate::may_see_plan(caller, &plan) {
                    continue;
                }
                if caller.agency != plan.home {
                    // Partner staff see only plans with a section consented to their agency.
                    let consents = self.consents_for(plan.subject).await?;
                    let grants = weft_consent::active_grants(&consents, &plan.home, now);
                    if !grants.iter().any(|(a, ..)| *a == caller.agency) {
                        continue;
                    }
                }
                let consents = self.consents_for(plan.subject).await?;
                let (display_name, tier) = match gate::read(caller, &plan, &profile, &consents, now)
                {
                    Ok(p) => {
                        if caller.agency != plan.home {
                            // A partner seeing the child's name is a disclosure of `profile`.
                            let mut draft = self.draft(caller, AuditAction::Read, Some(plan.id));
                            draft.sections = vec!["profile".into()];
                            draft.detail = "name and tier in a plan list".into();
                            draft.basis = consent::basis(p.reason());
                            self.store.audit(draft).await?;
                        }
                        let v = self.view(&p).await?.content;
                        let s = |k: &str| v.get(k).and_then(Json::as_str).unwrap_or("").to_string();
                        let first = if s("preferred_name").is_empty() {
                            s("given_name")
                        } else {
                            s("preferred_name")
                        };
                        let name = format!("{} {}", first, s("family_name")).trim().to_string();
                        (
                            name,
                            v.get("tier").and_then(Json::as_u64).unwrap_or(0) as u32,
                        )
                    }
                    Err(_) => (String::new(), 0),
                };
                out.push(PlanSummary {
                    plan: plan.clone(),
                    display_name,
                    tier,
                });
                if out.len() == limit {
                    next = Some(plan.id);
                    break 'pages;
                }
            }
            if !full {
                break;
            }
        }
        let mut draft = self.draft(caller, AuditAction::ListPlans, None);
        draft.detail = format!("{} plans", out.len());
        self.store.audit(draft).await?;
        Ok((out, next))
    }

    /// The change history of every section of a plan the caller may read, oldest first.
    pub async fn history(&self, caller: &Caller, plan: PlanId) -> Result<Vec<HistoryEntry>> {
        self.require_on(caller, Right::ReadPlan, AuditAction::History, Some(plan))
            .await?;
        let plan = self.load_plan(caller, plan, AuditAction::History).await?;
        let now = self.now();
        let consents = self.consents_for(plan.subject).await?;
        let mut out = Vec::new();
        let mut read = Vec::new();
        let mut reasons = Vec::new();
        for name in self.store.sections_of(plan.id).await? {
            let Ok(permit) = gate::read(caller, &plan, &name, &consents, now) else {
                continue;
            };
            if let Some(s) = self.store.read_section(&permit).await? {
                let mut doc = SectionDoc::load(s.snapshot.as_deref(), &s.chunks)?;
                out.extend(doc.history().into_iter().map(|change| HistoryEntry {
                    section: name.clone(),
                    change,
                }));
                read.push(name.to_string());
                reasons.push(permit.reason().clone());
            }
        }
        out.sort_by(|a, b| {
            a.change
                .time_ms
                .cmp(&b.change.time_ms)
                .then(a.section.cmp(&b.section))
        });
        let mut draft = self.draft(caller, AuditAction::History, Some(plan.id));
        draft.sections = read;
        draft.basis = consent::bases(reasons.iter());
        self.store.audit(draft).await?;
        Ok(out)
    }

    /// Subscribes to a plan's change events; each event is filtered by the gate for the
    /// caller when it is delivered.
    pub async fn watch(
        self: &Arc<Self>,
        caller: &Caller,
        plan: PlanId,
    ) -> Result<impl futures::Stream<Item = Result<PlanEvent>> + Send + 'static> {
        self.require_on(caller, Right::ReadPlan, AuditAction::Watch, Some(plan))
            .await?;
        let plan = self.load_plan(caller, plan, AuditAction::Watch).await?;
        self.consents_for(plan.subject).await?;
        let rx = self.events.subscribe(plan.id);
        self.store
            .audit(self.draft(caller, AuditAction::Watch, Some(plan.id)))
            .await?;
        let mut closing = self.closing.subscribe();
        let closed = async move {
            let _ = closing.wait_for(|c| *c).await;
        };
        // Events of this plan the caller may read. A watcher that fell behind (it left more
        // than KEPT_PER_PLAN of the plan's events unread) gets an error and the stream ends:
        // it must watch again and re-read the plan, not carry on with a gap it cannot see.
        let state = Some((rx, self.clone(), caller.clone(), plan));
        let stream = futures::stream::unfold(state, |state| async move {
            let (mut rx, service, caller, plan) = state?;
            loop {
                let ev = match rx.recv().await {
                    Ok(ev) => ev,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((Err(watch_fell_behind()), None))
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                // From the store if the cache let the set go (it is bounded). Unreadable, the
                // stream ends with the error: a watcher must not carry on past a gap.
                let consents = match service.consents_for(plan.subject).await {
                    Ok(consents) => consents,
                    Err(e) => return Some((Err(e), None)),
                };
                if gate::read(&caller, &plan, &ev.section, &consents, service.now()).is_ok() {
                    return Some((Ok(ev), Some((rx, service, caller, plan))));
                }
            }
        });
        Ok(futures::StreamExt::take_until(stream, closed))
    }

    /// Adds a user and returns it with its token (shown once).
    pub async fn add_user(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        plans: &[PlanId],
        agency: Option<AgencyId>,
    ) -> Result<(UserRecord, String)> {
        self.require(caller, Right::AddUser(role), AuditAction::AddUser)
            .await?;
        validate_user_name(name)?;
        let agency = agency.filter(|a| *a != self.agency);
        if let Some(a) = &agency {
            if self.peers.snapshot().contains_key(a) {
                return Err(Error::invalid(format!(
                    "{a} runs its own node in this federation: its staff work there"
                )));
            }
        }
        if agency.is_some() && role != Role::Caseworker {
            return Err(Error::invalid(
                "partner-agency staff are added as caseworkers (consent decides what they see)",
            ));
        }
        let mut subjects = Vec::new();
        if role == Role::Guardian {
            if plans.is_empty() {
                return Err(Error::invalid(
                    "a guardian must be bound to at least one plan (--plan)",
                ));
            }
            for id in plans {
                let plan = self
                    .store
                    .plan(*id)
                    .await?
                    .ok_or_else(|| Error::NotFound(format!("plan {id}")))?;
                if plan.home != self.agency {
                    return Err(Error::invalid(format!(
                        "plan {id} is not held by this agency"
                    )));
                }
                subjects.push(plan.subject);
            }
        } else if !plans.is_empty() {
            return Err(Error::invalid("only guardians are bound to plans"));
        }
        let token = new_token();
        let user = UserRecord {
            name: name.to_string(),
            role,
            subjects,
            created_at: self.now(),
            token_hash: token_hash(&token),
            agency: agency.clone(),
        };
        let mut draft = self.draft(caller, AuditAction::AddUser, None);
        draft.detail = format!("{name} as {role}");
        self.store.add_user(user.clone(), draft).await?;
        self.users
            .write()
            .map_err(|_| Error::internal("user table poisoned"))?
            .insert(user.token_hash.clone(), user.clone());
        Ok((user, token))
    }

    /// Every user (never their token hashes).
    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<UserRecord>> {
        self.require(caller, Right::ListUsers, AuditAction::ListUsers)
            .await?;
        let mut users = self.store.users().await?;
        for u in &mut users {
            u.token_hash.clear();
        }
        self.store
            .audit(self.draft(caller, AuditAction::ListUsers, None))
            .await?;
        Ok(users)
    }

    /// Takes a consistent backup of the whole store into a temporary file (0600), records it
    /// in the audit log, and returns the file (deleted when dropped) with a summary.
    pub async fn backup(
        &self,
        caller: &Caller,
    ) -> Result<(tempfile::NamedTempFile, crate::backup::BackupSummary)> {
        self.require(caller, Right::Backup, AuditAction::Backup)
            .await?;
        let header = crate::backup::BackupHeader {
            agency: self.agency.to_string(),
            format_version: crate::storage::FORMAT_VERSION,
            created_at_ms: self.now().as_millis(),
            config_sha256: self.options.config_sha256.clone(),
        };
        let key = hex::encode(self.signing_key.to_bytes()).into_bytes();
        let store = self.store.clone();
        let scratch = self.options.scratch_dir.clone();
        let (file, summary) = tokio::task::spawn_blocking(move || {
            let file = match &scratch {
                Some(dir) => tempfile::Builder::new()
                    .prefix(".weft-backup-")
                    .tempfile_in(dir),
                None => tempfile::NamedTempFile::new(),
            }
            .map_err(|e| Error::Storage(format!("cannot create a backup file: {e}")))?;
            let out = file.reopen().map_err(Error::internal)?;
            let summary = crate::backup::write(store.blocking(), &header, &key, out)?;
            Ok::<_, Error>((file, summary))
        })
        .await
        .map_err(Error::internal)??;
        let mut batch = crate::storage::CommitBatch::audit_only({
            let mut d = self.draft(caller, AuditAction::Backup, None);
            d.detail = format!("{} records, {} bytes", summary.records, summary.bytes);
            d
        });
        batch.replication = vec![(
            b"last_backup".to_vec(),
            Some(self.now().as_millis().to_be_bytes().to_vec()),
        )];
        self.store.commit(batch).await?;
        Ok((file, summary))
    }

    /// When the last backup was taken.
    pub async fn last_backup(&self) -> Result<Option<Timestamp>> {
        Ok(self
            .store
            .replication_get(b"last_backup".to_vec())
            .await?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(|b| Timestamp::from_millis(i64::from_be_bytes(b))))
    }

    /// Replication status of every peer, with this node's feed head.
    pub async fn peers(
        &self,
        caller: &Caller,
    ) -> Result<(std::collections::BTreeMap<AgencyId, replica::PeerInfo>, u64)> {
        self.require(caller, Right::ReadStatus, AuditAction::Status)
            .await?;
        self.store
            .audit(self.draft(caller, AuditAction::Status, None))
            .await?;
        Ok((self.peer_status(), self.feed_head().await?))
    }

    /// One screen for an operator: counters, certificate expiry, peers, and warnings.
    pub async fn status(&self, caller: &Caller) -> Result<NodeStatus> {
        self.require(caller, Right::ReadStatus, AuditAction::Status)
            .await?;
        self.store
            .audit(self.draft(caller, AuditAction::Status, None))
            .await?;
        let stats = self.store.stats().await?;
        let peers = self.peer_status();
        let now = self.now();
        let mut warnings = Vec::new();
        let certificate_expires = self
            .certificate
            .get()
            .and_then(|c| c.expires())
            .or(self.options.certificate_expires);
        if let Some(expires) = certificate_expires {
            let days = (expires.as_millis() - now.as_millis()) / (24 * 3600 * 1000);
            if expires <= now {
                warnings.push(format!("the node certificate expired at {expires}"));
            } else if days < 30 {
                warnings.push(format!(
                    "the node certificate expires in {days} days ({expires})"
                ));
            }
        }
        for (agency, p) in &peers {
            if !p.connected {
                let why = if p.last_error.is_empty() {
                    "not connected".to_string()
                } else {
                    p.last_error.clone()
                };
                warnings.push(format!("peer {agency} unreachable: {why}"));
            }
        }
        Ok(NodeStatus {
            stats,
            uptime_seconds: self.started.elapsed().as_secs(),
            certificate_expires,
            peers,
            warnings,
        })
    }

    /// Audit entries after `after`, optionally for one plan.
    pub async fn audit_log(
        &self,
        caller: &Caller,
        plan: Option<PlanId>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        self.require(caller, Right::ReadAudit, AuditAction::ReadAudit)
            .await?;
        let limit = limit.clamp(1, 10_000);
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let page = self.store.audit_entries(cursor, 4096).await?;
            let Some(last) = page.last() else { break };
            cursor = match last {
                Ok(e) => e.index,
                Err((i, _)) => *i,
            };
            for e in page.into_iter().flatten() {
                if plan.is_none() || e.draft.plan == plan {
                    out.push(e);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            if out.len() == limit {
                break;
            }
        }
        let mut draft = self.draft(caller, AuditAction::ReadAudit, plan);
        draft.detail = format!("{} entries", out.len());
        self.store.audit(draft).await?;
        Ok(out)
    }

    /// Verifies the audit chain: the number of entries, or the first bad one.
    pub async fn verify_audit(
        &self,
        caller: &Caller,
    ) -> Result<Result<u64, crate::audit::ChainBreak>> {
        self.require(caller, Right::ReadAudit, AuditAction::VerifyAudit)
            .await?;
        let result = self.store.verify_audit().await?;
        let mut draft = self.draft(caller, AuditAction::VerifyAudit, None);
        draft.detail = match &result {
            Ok(n) => format!("ok: {n} entries"),
            Err(b) => format!("broken at entry {}", b.index),
        };
        self.store.audit(draft).await?;
        Ok(result)
    }
}

fn as_read(permit: &WritePermit) -> gate::ReadPermit {
    gate::downgrade(permit)
}

fn check_note(note: &str) -> Result<()> {
    let n = note.chars().count();
    if n > 4000 {
        return Err(Error::invalid(format!(
            "note: {n} characters is over the limit of 4000"
        )));
    }
    Ok(())
}

fn item_field(
    spec: &'static FieldSpec,
    section: &str,
    value: &str,
) -> Result<(&'static FieldSpec, FieldValue)> {
    Ok((spec, spec.parse(section, value)?))
}

/// Parses `(section, field, value)` triples against the catalogue into one `Set` edit per
/// section, in first-seen order. Any error aborts the whole request.
pub fn parse_field_edits(
    fields: &[(String, String, String)],
) -> Result<Vec<(SectionName, Edit, Right)>> {
    let mut out: Vec<(SectionName, Vec<(&'static FieldSpec, FieldValue)>)> = Vec::new();
    for (section, field, value) in fields {
        let name = SectionName::parse(section)?;
        let spec = name.spec().field(field)?;
        let parsed = spec.parse(section, value)?;
        match out.iter_mut().find(|(s, _)| *s == name) {
            Some((_, list)) => {
                list.retain(|(f, _)| f.name != spec.name);
                list.push((spec, parsed));
            }
            None => out.push((name, vec![(spec, parsed)])),
        }
    }
    Ok(out
        .into_iter()
        .map(|(s, f)| (s, Edit::Set(f), Right::WritePlan))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    async fn service() -> Arc<NodeService> {
        service_of("clinic.test").await
    }

    async fn service_of(agency: &str) -> Arc<NodeService> {
        let store =
            crate::storage::Store::open(Arc::new(crate::storage::memory::MemoryBackend::new()))
                .unwrap();
        NodeService::new(
            AgencyId::parse(agency).unwrap(),
            StoreHandle::new(store),
            Arc::new(crate::model::now),
            ServiceOptions::default(),
            SigningKey::from_bytes(&[7; 32]),
        )
        .await
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_wake_comes_once_for_the_changes_stored_meanwhile() {
        let svc = service().await;
        let mut changes = svc.subscribe_changes(&AgencyId::parse("clinic.test").unwrap());
        for _ in 0..3 {
            svc.wake_later();
        }
        tokio::time::sleep(LATER_WAKE / 2).await;
        assert!(!changes.has_changed().unwrap(), "not woken before its time");
        tokio::time::sleep(LATER_WAKE).await;
        assert_eq!(*changes.borrow_and_update(), 1, "woken once for the three");
        // A wake now goes at once, and the next later one is due again.
        svc.wake();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        svc.wake_later();
        tokio::time::sleep(LATER_WAKE * 2).await;
        assert_eq!(*changes.borrow_and_update(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_wakes_at_once_only_the_pumps_of_peers_it_may_go_to() {
        let agency = |a: &str| AgencyId::parse(a).unwrap();
        let (school, clinic, other) = (
            agency("school.test"),
            agency("clinic.test"),
            agency("other.test"),
        );
        // A child whose consent names the clinic and the nutrition centre, and one with none.
        let (named, unnamed) = (SubjectId::random(), SubjectId::random());
        let entry = crate::storage::tests::consent_ending(named, "c-named", [10, 20]);
        let record = weft_consent::SignedConsent::from_bytes(&entry.bytes)
            .unwrap()
            .verify(&SigningKey::from_bytes(&[7; 32]).verifying_key())
            .unwrap();
        let mut consents = weft_consent::ConsentSet::new();
        consents.add_consent(record);
        let none = weft_consent::ConsentSet::new();
        let plan_of = |subject| PlanRecord {
            id: PlanId::random(),
            subject,
            home: school.clone(),
            created_at: crate::model::now(),
        };
        let changed = |w: &mut tokio::sync::watch::Receiver<u64>| {
            let seen = w.has_changed().unwrap();
            w.mark_unchanged();
            seen
        };

        // At the home: the peers the child's consents name.
        let home = service_of("school.test").await;
        let (mut to_clinic, mut to_other) = (
            home.subscribe_changes(&clinic),
            home.subscribe_changes(&other),
        );
        home.wake_for(&plan_of(named), &consents);
        assert!(changed(&mut to_clinic), "named: woken at once");
        assert!(!changed(&mut to_other), "not named: not yet");
        home.wake_for(&plan_of(unnamed), &none);
        assert!(!changed(&mut to_clinic) && !changed(&mut to_other));
        tokio::time::sleep(LATER_WAKE * 2).await;
        assert!(
            changed(&mut to_clinic) && changed(&mut to_other),
            "both, later"
        );

        // At a grantee: the home, when the child's consents name this node; nobody else.
        let grantee = service_of("nutrition.test").await;
        let (mut to_school, mut to_clinic) = (
            grantee.subscribe_changes(&school),
            grantee.subscribe_changes(&clinic),
        );
        grantee.wake_for(&plan_of(named), &consents);
        assert!(changed(&mut to_school) && !changed(&mut to_clinic));
        grantee.wake_for(&plan_of(unnamed), &none);
        assert!(!changed(&mut to_school));
        // Anything else stored wakes every pump at once.
        grantee.wake();
        assert!(changed(&mut to_school) && changed(&mut to_clinic));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_node_waits_for_its_sessions_to_end() {
        let svc = service().await;
        assert!(svc.sessions_ended(Duration::from_millis(10)).await);
        let (one, two) = (svc.session_started(), svc.session_started());
        drop(one);
        assert!(!svc.sessions_ended(Duration::from_secs(1)).await);
        let waiting = tokio::spawn({
            let svc = svc.clone();
            async move { svc.sessions_ended(Duration::from_secs(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(two);
        assert!(
            waiting.await.unwrap(),
            "the wait ends when the last session does"
        );
    }
}
