//! Consent operations of the node: record, revoke, list, explain, export, the expiry sweep,
//! and the family's record of disclosures.
//!
//! The home agency of a plan is the one place that records consents for it. Every record and
//! revocation is signed with the node's Ed25519 key before it is stored, and verified again
//! each time it is loaded: a record whose signature does not verify is ignored (and logged),
//! so it can never allow anything.

use std::collections::BTreeSet;
use std::sync::Arc;

use weft_consent::ed25519_dalek::VerifyingKey;
use weft_consent::{
    evaluate, sign_consent, sign_revocation, Access, Action, AllowReason, CollectionMethod,
    ConsentId, ConsentRecord, ConsentSet, Grantor, Provision, Purpose, Recorder, Relationship,
    Revocation, RevocationId, SignedConsent, SignedRevocation,
};

use super::{insert_bounded, unique_id, NodeService};
use crate::audit::{AuditAction, AuditEntry};
use crate::error::{Error, Result};
use crate::gate::{self, Denial};
use crate::model::{
    AgencyId, Caller, PlanId, PlanRecord, Right, Role, SectionName, SubjectId, Timestamp,
};
use crate::storage::{ConsentEntry, ConsentKind};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The verified consent sets of the children touched lately (a grant, a read, a section
/// sent or received). Bounded, emptied when full ([`insert_bounded`]): every child's set
/// stays readable from the store, so an emptied cache costs reloads, never an answer. Until
/// this bound, a node that had touched every child held every child's set for good (a quarter
/// of a million at a million sections); 65,536 children is 262,144 sections.
pub(crate) struct ConsentCache {
    sets: std::collections::HashMap<SubjectId, Arc<ConsentSet>>,
    most: usize,
    /// How many times it was emptied: a set read from the store before it was emptied may be
    /// older than one a refresh put here meanwhile and lost with it.
    emptied: u64,
}

/// The most children whose consent sets [`ConsentCache`] keeps.
pub(crate) const CONSENTS_KEPT: usize = 1 << 16;

impl ConsentCache {
    pub(crate) fn new(most: usize) -> Self {
        Self {
            sets: Default::default(),
            most,
            emptied: 0,
        }
    }

    fn get(&self, subject: SubjectId) -> Option<Arc<ConsentSet>> {
        self.sets.get(&subject).cloned()
    }

    /// Keeps `set` as the subject's newest: the caller read it under `consent_refresh`.
    fn put(&mut self, subject: SubjectId, set: Arc<ConsentSet>) {
        if insert_bounded(&mut self.sets, subject, set, self.most) {
            self.emptied += 1;
        }
    }

    /// Lets the subject's set go, and any set a miss is reading meanwhile (it may be older
    /// than what was just written).
    fn forget(&mut self, subject: SubjectId) {
        self.sets.remove(&subject);
        self.emptied += 1;
    }

    /// The set to use for `subject`, given `set`, read from the store without
    /// `consent_refresh` when the cache had been emptied `emptied` times: a set a refresh put
    /// here meanwhile is newer and wins; `set` is kept only if nothing newer can have been
    /// put and emptied away since.
    fn put_read(
        &mut self,
        subject: SubjectId,
        set: Arc<ConsentSet>,
        emptied: u64,
    ) -> Arc<ConsentSet> {
        if let Some(newer) = self.get(subject) {
            return newer;
        }
        if self.emptied == emptied {
            self.put(subject, set.clone());
        }
        set
    }
}

/// Consent records and revocations whose signatures verified, by a hash of the signer's key
/// and the envelope's bytes: a subject's set is verified again on every refresh (a grant,
/// a consent or revocation from a peer, a cache miss), and an Ed25519 check costs far more
/// than the hash. Only successes are kept, so different bytes or another key are always
/// checked. Bounded: emptied when full.
#[derive(Default)]
pub(crate) struct Verified {
    consents: std::sync::Mutex<std::collections::HashMap<[u8; 32], ConsentRecord>>,
    revocations: std::sync::Mutex<std::collections::HashMap<[u8; 32], Revocation>>,
}

/// The most envelopes of each kind [`Verified`] keeps.
const VERIFIED_KEPT: usize = 8192;

impl Verified {
    fn digest(key: &VerifyingKey, bytes: &[u8]) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(key.as_bytes());
        h.update(bytes);
        h.finalize().into()
    }

    fn remember<T: Clone, E>(
        memo: &std::sync::Mutex<std::collections::HashMap<[u8; 32], T>>,
        key: &VerifyingKey,
        bytes: &[u8],
        verify: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let digest = Self::digest(key, bytes);
        if let Some(known) = memo.lock().ok().and_then(|m| m.get(&digest).cloned()) {
            return Ok(known);
        }
        let verified = verify()?;
        if let Ok(mut m) = memo.lock() {
            insert_bounded(&mut m, digest, verified.clone(), VERIFIED_KEPT);
        }
        Ok(verified)
    }

    /// `signed.verify(key)`, or its earlier success for the same key and bytes.
    pub(crate) fn consent(
        &self,
        signed: &SignedConsent,
        bytes: &[u8],
        key: &VerifyingKey,
    ) -> std::result::Result<ConsentRecord, weft_consent::SignatureError> {
        Self::remember(&self.consents, key, bytes, || signed.verify(key))
    }

    /// `signed.verify(key)`, or its earlier success for the same key and bytes.
    pub(crate) fn revocation(
        &self,
        signed: &SignedRevocation,
        bytes: &[u8],
        key: &VerifyingKey,
    ) -> std::result::Result<Revocation, weft_consent::SignatureError> {
        Self::remember(&self.revocations, key, bytes, || signed.verify(key))
    }
}

/// Where a consent stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsentState {
    /// In force for at least one provision.
    Active,
    /// No provision has started yet.
    NotYetValid,
    /// Every provision has ended.
    Expired,
    /// Revoked (final).
    Revoked,
}

impl ConsentState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsentState::Active => "active",
            ConsentState::NotYetValid => "not_yet_valid",
            ConsentState::Expired => "expired",
            ConsentState::Revoked => "revoked",
        }
    }
}

/// A consent with its state and signature facts.
#[derive(Clone, Debug)]
pub struct ConsentView {
    /// The record.
    pub record: ConsentRecord,
    /// Its state now.
    pub state: ConsentState,
    /// Its revocation, if any.
    pub revocation: Option<Revocation>,
    /// The agency whose node signed it.
    pub signer: AgencyId,
    /// SHA-256 of the signed bytes.
    pub digest: [u8; 32],
}

/// Parses `YYYY-MM-DD` as the start of that day, UTC, in unix milliseconds.
fn day_start(field: &str, input: &str) -> Result<i64> {
    let date = crate::catalogue::parse_date(input)
        .map_err(|_| Error::invalid(format!("{field}: expected a date as YYYY-MM-DD")))?;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let d = time::Date::parse(&date, format)
        .map_err(|_| Error::invalid(format!("{field}: bad date")))?;
    Ok(d.midnight().assume_utc().unix_timestamp() * 1000)
}

/// Describes what allowed an access, for the audit log's `basis`.
pub(crate) fn basis(reason: &AllowReason) -> String {
    match reason {
        AllowReason::HomeAgency => "home agency".into(),
        AllowReason::Consent {
            consent, purpose, ..
        } => format!("consent {consent} ({purpose})"),
    }
}

/// Joins the distinct bases of several permits.
pub(crate) fn bases<'a>(reasons: impl Iterator<Item = &'a AllowReason>) -> String {
    reasons
        .map(basis)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect::<Vec<_>>()
        .join("; ")
}

fn state_of(record: &ConsentRecord, set: &ConsentSet, now: Timestamp) -> ConsentState {
    if set.is_revoked(&record.id).is_some() {
        return ConsentState::Revoked;
    }
    if record.provisions.iter().any(|p| p.is_active_at(now)) {
        ConsentState::Active
    } else if record
        .provisions
        .iter()
        .all(|p| p.valid_until.is_some_and(|u| u <= now))
    {
        ConsentState::Expired
    } else {
        ConsentState::NotYetValid
    }
}

/// What `grant` records.
#[derive(Clone, Debug, Default)]
pub struct GrantInput {
    /// The plan.
    pub plan: Option<PlanId>,
    /// The agency receiving access.
    pub grantee: String,
    /// Sections.
    pub sections: Vec<String>,
    /// `read` or `read_write`.
    pub access: String,
    /// Purpose.
    pub purpose: String,
    /// Optional start date.
    pub valid_from: Option<String>,
    /// End date (inclusive).
    pub valid_until: String,
    /// Who consented.
    pub grantor_name: String,
    /// Their relationship to the child.
    pub relationship: String,
    /// How the consent was collected.
    pub method: String,
}

impl NodeService {
    /// Changes whenever the consents this node holds change.
    pub fn consent_generation(&self) -> u64 {
        self.consent_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// This node's consent verifying key.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing_key.verifying_key()
    }

    /// The key that verifies records signed by `agency`, if known. Until federation
    /// distributes peer keys, only this node's own.
    fn key_of(&self, agency: &AgencyId) -> Option<VerifyingKey> {
        if *agency == self.agency {
            Some(self.verifying_key())
        } else {
            self.peers.key_of(agency)
        }
    }

    /// Loads, verifies and caches the consents of a subject.
    pub(crate) async fn consents_for(&self, subject: SubjectId) -> Result<Arc<ConsentSet>> {
        let emptied = match self.consents.read() {
            Ok(cache) => match cache.get(subject) {
                Some(set) => return Ok(set),
                None => cache.emptied,
            },
            Err(_) => u64::MAX,
        };
        let entries = self.store.consent_entries(Some(subject)).await?;
        let set = Arc::new(self.verified_set(&entries));
        // A miss never replaces a newer entry that a refresh put there meanwhile.
        Ok(match self.consents.write() {
            Ok(mut cache) => cache.put_read(subject, set, emptied),
            Err(_) => set,
        })
    }

    /// Keeps a subject's set, read under `consent_refresh`.
    pub(crate) fn cache_consents(&self, subject: SubjectId, set: Arc<ConsentSet>) {
        if let Ok(mut cache) = self.consents.write() {
            cache.put(subject, set);
        }
    }

    pub(crate) fn verified_set(&self, entries: &[ConsentEntry]) -> ConsentSet {
        let mut set = ConsentSet::new();
        let mut revocations = Vec::new();
        for e in entries {
            match e.kind {
                ConsentKind::Consent => match SignedConsent::from_bytes(&e.bytes) {
                    Ok(signed) => match self
                        .key_of(&signed.signer)
                        .map(|k| self.verified.consent(&signed, &e.bytes, &k))
                    {
                        Some(Ok(record)) => {
                            set.add_consent(record);
                        }
                        Some(Err(err)) => {
                            tracing::warn!(consent = %e.id, %err, "consent ignored: does not verify")
                        }
                        None => {
                            tracing::warn!(consent = %e.id, signer = %signed.signer, "consent ignored: unknown signer")
                        }
                    },
                    Err(err) => tracing::warn!(consent = %e.id, %err, "consent ignored: malformed"),
                },
                ConsentKind::Revocation => match SignedRevocation::from_bytes(&e.bytes) {
                    Ok(signed) => match self
                        .key_of(&signed.signer)
                        .map(|k| self.verified.revocation(&signed, &e.bytes, &k))
                    {
                        Some(Ok(r)) => revocations.push((signed.signer.clone(), r)),
                        Some(Err(err)) => {
                            tracing::warn!(revocation = %e.id, %err, "revocation ignored: does not verify")
                        }
                        None => {
                            tracing::warn!(revocation = %e.id, "revocation ignored: unknown signer")
                        }
                    },
                    Err(err) => {
                        tracing::warn!(revocation = %e.id, %err, "revocation ignored: malformed")
                    }
                },
                ConsentKind::ExpiryMark => {}
            }
        }
        for (signer, r) in revocations {
            // Only the disclosing agency revokes (a revocation of an unknown consent is kept:
            // it still blocks that consent if it arrives later).
            let allowed = set
                .consent(&r.consent)
                .is_none_or(|c| c.disclosing_agency == signer);
            if allowed {
                set.add_revocation(r);
            } else {
                tracing::warn!(revocation = %r.id, "revocation ignored: not signed by the disclosing agency");
            }
        }
        set
    }

    /// Reads a subject's consents again into the cache. If they cannot be read, the cached
    /// set goes (the next use reads the store), so a set from before a change never stays.
    pub(crate) async fn refresh_consents(&self, subject: SubjectId) -> Result<Arc<ConsentSet>> {
        self.consent_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _refresh = self.consent_refresh.lock().await;
        let entries = match self.store.consent_entries(Some(subject)).await {
            Ok(entries) => entries,
            Err(e) => {
                if let Ok(mut cache) = self.consents.write() {
                    cache.forget(subject);
                }
                return Err(e);
            }
        };
        let set = Arc::new(self.verified_set(&entries));
        self.cache_consents(subject, set.clone());
        Ok(set)
    }

    /// Stores consent entries of `subject` (a grant, a revocation, a record from a peer),
    /// refreshes its cached set and wakes the pumps, in a task of its own: once the entries
    /// may have landed, the cache must follow them even if the caller goes away. (A client
    /// that disconnected right after its revocation landed left the set from before it
    /// cached, and the gate allowing what the revocation forbids, until the next change.)
    /// The refresh runs whatever the write's outcome; the write's error comes back after it.
    pub(crate) async fn store_consents(
        &self,
        subject: SubjectId,
        entries: Vec<ConsentEntry>,
        draft: crate::audit::AuditDraft,
    ) -> Result<Arc<ConsentSet>> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| Error::internal("the node is stopping"))?;
        tokio::spawn(async move {
            let written = me.store.write_consent_entries(entries, draft).await;
            let set = me.refresh_consents(subject).await;
            me.wake();
            written?;
            set
        })
        .await
        .map_err(|e| Error::internal(format!("consent task failed: {e}")))?
    }

    /// Who may manage consents of `plan`: the home agency's coordinators, and the guardians
    /// bound to the child.
    async fn require_consent_manager(
        &self,
        caller: &Caller,
        plan: &PlanRecord,
        action: AuditAction,
    ) -> Result<()> {
        let allowed = caller.agency == plan.home
            && match caller.role {
                Role::Coordinator => true,
                Role::Guardian => caller.subjects.contains(&plan.subject),
                _ => false,
            };
        if allowed {
            return Ok(());
        }
        let denial = Denial {
            code: "role",
            message: format!(
                "role `{}` may not record or revoke consents for this plan",
                caller.role
            ),
        };
        Err(self
            .deny(caller, action, Some(plan.id), vec![], denial)
            .await)
    }

    /// Who may read consents of a plan: home-agency staff with plan or audit rights, the
    /// child's guardians, and partner staff for consents naming their agency.
    async fn require_consent_reader(&self, caller: &Caller, plan: &PlanRecord) -> Result<()> {
        let ok = caller.role.allows(Right::ReadPlan) || caller.role.allows(Right::ReadAudit);
        if !ok {
            let denial = Denial {
                code: "role",
                message: format!("role `{}` may not read consents", caller.role),
            };
            return Err(self
                .deny(
                    caller,
                    AuditAction::ConsentRead,
                    Some(plan.id),
                    vec![],
                    denial,
                )
                .await);
        }
        Ok(())
    }

    /// Records a consent for a plan of this node; returns it signed and stored.
    pub async fn grant(&self, caller: &Caller, input: GrantInput) -> Result<ConsentView> {
        let plan_id = input
            .plan
            .ok_or_else(|| Error::invalid("plan_id is required"))?;
        let plan = self
            .load_plan(caller, plan_id, AuditAction::ConsentGrant)
            .await?;
        self.require_consent_manager(caller, &plan, AuditAction::ConsentGrant)
            .await?;
        if plan.home != self.agency {
            return Err(Error::invalid(
                "consents are recorded by the plan's home agency",
            ));
        }
        let now = self.now();
        let grantee = AgencyId::parse(input.grantee.trim())
            .map_err(|e| Error::invalid(format!("grantee agency: {e}")))?;
        let mut sections = Vec::new();
        for s in &input.sections {
            let name = SectionName::parse(s.trim())?;
            if !sections.contains(&name.to_string()) {
                sections.push(name.to_string());
            }
        }
        let access: Access = input
            .access
            .parse()
            .map_err(|e| Error::invalid(format!("access: {e}")))?;
        let purpose: Purpose = input
            .purpose
            .parse()
            .map_err(|e| Error::invalid(format!("purpose: {e}")))?;
        let relationship: Relationship = input
            .relationship
            .parse()
            .map_err(|e| Error::invalid(format!("relationship: {e}")))?;
        let method: CollectionMethod = if caller.role == Role::Guardian {
            CollectionMethod::ESignature
        } else {
            input
                .method
                .parse()
                .map_err(|e| Error::invalid(format!("method: {e}")))?
        };
        let valid_from = match input.valid_from.as_deref().filter(|s| !s.is_empty()) {
            Some(d) => Timestamp::from_millis(day_start("valid_from", d)?),
            None => now,
        };
        let valid_until = if input.valid_until.trim().is_empty() {
            None
        } else {
            Some(Timestamp::from_millis(
                day_start("valid_until", &input.valid_until)? + DAY_MS,
            ))
        };
        if valid_until.is_some_and(|u| u <= now) {
            return Err(Error::invalid(
                "valid_until: the consent would already have expired",
            ));
        }
        let record = ConsentRecord {
            id: ConsentId::parse(&unique_id("c")).map_err(Error::internal)?,
            subject: plan.subject.to_string(),
            grantor: Grantor {
                name: input.grantor_name.trim().to_string(),
                relationship,
            },
            disclosing_agency: plan.home.clone(),
            recorded_by: Recorder {
                agency: self.agency.clone(),
                user: caller.user.clone(),
            },
            recorded_at: now,
            collection_method: method,
            provisions: vec![Provision {
                grantee: grantee.clone(),
                sections: sections.clone(),
                access,
                purpose,
                valid_from,
                valid_until,
            }],
        };
        record
            .validate()
            .map_err(|e| Error::invalid(e.to_string()))?;
        let signed = sign_consent(&record, &self.agency, &self.signing_key)
            .map_err(|e| Error::invalid(e.to_string()))?;
        let entry = ConsentEntry {
            subject: plan.subject,
            kind: ConsentKind::Consent,
            id: record.id.to_string(),
            bytes: signed.to_bytes(),
        };
        let mut draft = self.draft(caller, AuditAction::ConsentGrant, Some(plan.id));
        draft.sections = sections;
        draft.detail = format!(
            "{} to {grantee}: {access} for {purpose} until {}",
            record.id,
            valid_until.map(|u| u.to_string()).unwrap_or_default()
        );
        let set = self
            .store_consents(plan.subject, vec![entry], draft)
            .await?;
        tracing::info!(target: "weft::audit", consent = %record.id, grantee = %grantee, "consent recorded");
        Ok(self.consent_view(&record, &set, &signed.signer, signed.digest()))
    }

    fn consent_view(
        &self,
        record: &ConsentRecord,
        set: &ConsentSet,
        signer: &AgencyId,
        digest: [u8; 32],
    ) -> ConsentView {
        ConsentView {
            record: record.clone(),
            state: state_of(record, set, self.now()),
            revocation: set.is_revoked(&record.id).cloned(),
            signer: signer.clone(),
            digest,
        }
    }

    /// Finds a consent by id: its subject and its entry.
    async fn find_consent(&self, id: &str) -> Result<(SubjectId, SignedConsent)> {
        let not_found = || {
            Error::NotFound(format!(
                "consent `{}`",
                id.chars().take(64).collect::<String>()
            ))
        };
        let e = self.store.consent_by_id(id).await?.ok_or_else(not_found)?;
        let signed = SignedConsent::from_bytes(&e.bytes).map_err(|_| not_found())?;
        Ok((e.subject, signed))
    }

    pub(crate) async fn plan_of_subject(
        &self,
        subject: SubjectId,
        home: &AgencyId,
    ) -> Result<Option<PlanRecord>> {
        Ok(self
            .store
            .plans_of_subject(subject)
            .await?
            .into_iter()
            .find(|p| p.home == *home))
    }

    /// Revokes a consent (final). Returns the consent with its revocation.
    pub async fn revoke(
        &self,
        caller: &Caller,
        consent: &str,
        reason: Option<&str>,
    ) -> Result<ConsentView> {
        let (subject, signed) = self.find_consent(consent).await?;
        let key = self
            .key_of(&signed.signer)
            .ok_or_else(|| Error::invalid("consent signed by an unknown agency"))?;
        let record = signed
            .verify(&key)
            .map_err(|e| Error::invalid(e.to_string()))?;
        let plan = self
            .plan_of_subject(subject, &record.disclosing_agency)
            .await?
            .ok_or_else(|| Error::NotFound(format!("the plan of consent {consent}")))?;
        if !gate::may_see_plan(caller, &plan) {
            let denial = Denial {
                code: "guardian_binding",
                message: String::new(),
            };
            let _ = self
                .deny(
                    caller,
                    AuditAction::ConsentRevoke,
                    Some(plan.id),
                    vec![],
                    denial,
                )
                .await;
            return Err(Error::NotFound(format!("consent `{consent}`")));
        }
        self.require_consent_manager(caller, &plan, AuditAction::ConsentRevoke)
            .await?;
        let set = self.consents_for(subject).await?;
        if set.is_revoked(&record.id).is_some() {
            return Err(Error::AlreadyExists(format!(
                "consent {} is already revoked",
                record.id
            )));
        }
        let reason = reason
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(String::from);
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(Error::invalid("reason: at most 500 characters"));
        }
        let revocation = Revocation {
            id: RevocationId::parse(&unique_id("v")).map_err(Error::internal)?,
            consent: record.id.clone(),
            revoked_by: Recorder {
                agency: self.agency.clone(),
                user: caller.user.clone(),
            },
            revoked_at: self.now(),
            reason,
        };
        let signed_rev = sign_revocation(&revocation, &self.agency, &self.signing_key)
            .map_err(|e| Error::invalid(e.to_string()))?;
        let entry = ConsentEntry {
            subject,
            kind: ConsentKind::Revocation,
            id: revocation.id.to_string(),
            bytes: signed_rev.to_bytes(),
        };
        let mut draft = self.draft(caller, AuditAction::ConsentRevoke, Some(plan.id));
        draft.sections = record
            .provisions
            .iter()
            .flat_map(|p| p.sections.clone())
            .collect();
        draft.detail = format!("{} revoked by {}", record.id, revocation.id);
        let set = self.store_consents(subject, vec![entry], draft).await?;
        tracing::info!(target: "weft::audit", consent = %record.id, "consent revoked");
        Ok(self.consent_view(&record, &set, &signed.signer, signed.digest()))
    }

    async fn plan_for_listing(
        &self,
        caller: &Caller,
        plan: Option<PlanId>,
        subject: Option<SubjectId>,
    ) -> Result<PlanRecord> {
        match (plan, subject) {
            (Some(p), _) => self.load_plan(caller, p, AuditAction::ConsentRead).await,
            (None, Some(s)) => {
                let plan = self
                    .plan_of_subject(s, &self.agency)
                    .await?
                    .ok_or_else(|| Error::NotFound("subject".into()))?;
                self.load_plan(caller, plan.id, AuditAction::ConsentRead)
                    .await
            }
            (None, None) => Err(Error::invalid("give a plan_id or a subject_id")),
        }
    }

    /// The consents of a plan's subject with their state now. Partner staff see only the
    /// consents naming their agency.
    pub async fn list_consents(
        &self,
        caller: &Caller,
        plan: Option<PlanId>,
        subject: Option<SubjectId>,
    ) -> Result<Vec<ConsentView>> {
        self.sweep_expiries().await?;
        let plan = self.plan_for_listing(caller, plan, subject).await?;
        self.require_consent_reader(caller, &plan).await?;
        let entries = self.store.consent_entries(Some(plan.subject)).await?;
        let set = self.consents_for(plan.subject).await?;
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| e.kind == ConsentKind::Consent) {
            let Ok(signed) = SignedConsent::from_bytes(&e.bytes) else {
                continue;
            };
            let Some(record) = set
                .consent(&ConsentId::parse(&e.id).map_err(Error::internal)?)
                .cloned()
            else {
                continue;
            };
            if caller.agency != plan.home && !record.names(&caller.agency) {
                continue;
            }
            out.push(self.consent_view(&record, &set, &signed.signer, signed.digest()));
        }
        out.sort_by_key(|v| (v.record.recorded_at, v.record.id.to_string()));
        let mut draft = self.draft(caller, AuditAction::ConsentRead, Some(plan.id));
        draft.detail = format!("list: {} consents", out.len());
        self.store.audit(draft).await?;
        Ok(out)
    }

    /// One consent.
    pub async fn get_consent(&self, caller: &Caller, consent: &str) -> Result<ConsentView> {
        let (subject, _) = self.find_consent(consent).await?;
        let views = self.list_consents(caller, None, Some(subject)).await?;
        views
            .into_iter()
            .find(|v| v.record.id.as_str() == consent)
            .ok_or_else(|| Error::NotFound(format!("consent `{consent}`")))
    }

    /// Why may `agency` do `action` on `section` of `plan` now?
    pub async fn explain(
        &self,
        caller: &Caller,
        plan: PlanId,
        agency: &str,
        section: &str,
        action: Action,
    ) -> Result<weft_consent::Decision> {
        let plan = self
            .load_plan(caller, plan, AuditAction::ConsentRead)
            .await?;
        self.require_consent_reader(caller, &plan).await?;
        let agency =
            AgencyId::parse(agency.trim()).map_err(|e| Error::invalid(format!("agency: {e}")))?;
        if caller.agency != plan.home && agency != caller.agency {
            let denial = Denial {
                code: "partner",
                message: format!(
                    "staff of {} may only ask about their own agency",
                    caller.agency
                ),
            };
            return Err(self
                .deny(
                    caller,
                    AuditAction::ConsentRead,
                    Some(plan.id),
                    vec![],
                    denial,
                )
                .await);
        }
        let section = SectionName::parse(section.trim())?;
        let set = self.consents_for(plan.subject).await?;
        let decision = evaluate(
            &set,
            &agency,
            &plan.home,
            section.as_str(),
            action,
            self.now(),
        );
        let mut draft = self.draft(caller, AuditAction::ConsentRead, Some(plan.id));
        draft.sections = vec![section.to_string()];
        draft.detail = format!("explain for {agency}");
        self.store.audit(draft).await?;
        Ok(decision)
    }

    /// The plan's consents as a FHIR R4 Bundle.
    pub async fn export_fhir(&self, caller: &Caller, plan: PlanId) -> Result<serde_json::Value> {
        let views = self.list_consents(caller, Some(plan), None).await?;
        let plan = self
            .load_plan(caller, plan, AuditAction::ConsentRead)
            .await?;
        Ok(crate::fhir::bundle(&plan, &views))
    }

    /// Records, once, that each consent whose provisions have all ended has expired, and
    /// purges held copies a consent no longer covers. Looks only at the children with a
    /// provision that ended since the last sweep (the store schedules every end), so a sweep
    /// costs O(consents ended), not O(consents). Run periodically and before consent reads.
    pub async fn sweep_expiries(&self) -> Result<usize> {
        let now = self.now();
        let (subjects, swept_to) = self.store.consents_ended(now).await?;
        if subjects.is_empty() {
            // Nothing ended: the position need not move (the next sweep scans the same empty
            // range), and a consent listing pays no write.
            return Ok(0);
        }
        let mut marked: BTreeSet<(SubjectId, String)> = BTreeSet::new();
        for subject in &subjects {
            marked.extend(
                self.store
                    .consent_entries(Some(*subject))
                    .await?
                    .into_iter()
                    .filter(|e| e.kind == ConsentKind::ExpiryMark)
                    .map(|e| (e.subject, e.id)),
            );
        }
        let mut recorded = 0;
        for &subject in &subjects {
            let set = self.consents_for(subject).await?;
            for record in set.consents() {
                if marked.contains(&(subject, record.id.to_string()))
                    || state_of(record, &set, now) != ConsentState::Expired
                {
                    continue;
                }
                let plan = self
                    .plan_of_subject(subject, &record.disclosing_agency)
                    .await?;
                let draft = crate::audit::AuditDraft {
                    time: now,
                    agency: self.agency.to_string(),
                    user: "-".into(),
                    action: AuditAction::ConsentExpire,
                    outcome: crate::audit::Outcome::Ok,
                    plan: plan.map(|p| p.id),
                    sections: record
                        .provisions
                        .iter()
                        .flat_map(|p| p.sections.clone())
                        .collect(),
                    detail: format!("{} expired", record.id),
                    basis: String::new(),
                };
                let mark = ConsentEntry {
                    subject,
                    kind: ConsentKind::ExpiryMark,
                    id: record.id.to_string(),
                    bytes: vec![],
                };
                match self.store.write_consent_entries(vec![mark], draft).await {
                    // Another sweep recorded it first.
                    Ok(_) | Err(Error::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
                tracing::info!(target: "weft::audit", consent = %record.id, "consent expired");
                recorded += 1;
            }
        }
        // Expiry is revocation at a known time: a holder purges by its own clock.
        self.purge_unconsented(&subjects).await?;
        self.store.consents_swept(swept_to).await?;
        Ok(recorded)
    }

    /// The record of disclosures of a plan: every successful read or change of its sections,
    /// newest first, with who, when, which sections and under which consent.
    pub async fn disclosures(&self, caller: &Caller, plan: PlanId) -> Result<Vec<AuditEntry>> {
        let plan = self
            .load_plan(caller, plan, AuditAction::ReadDisclosures)
            .await?;
        let allowed = caller.agency == plan.home
            && (caller.role.allows(Right::ReadAudit) || caller.role == Role::Guardian);
        if !allowed {
            let denial = Denial {
                code: "role",
                message: format!(
                    "role `{}` may not read the record of disclosures",
                    caller.role
                ),
            };
            return Err(self
                .deny(
                    caller,
                    AuditAction::ReadDisclosures,
                    Some(plan.id),
                    vec![],
                    denial,
                )
                .await);
        }
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.audit_entries(after, 4096).await?;
            let Some(last) = page.last() else { break };
            after = match last {
                Ok(e) => e.index,
                Err((i, _)) => *i,
            };
            out.extend(page.into_iter().flatten().filter(|e| {
                e.draft.plan == Some(plan.id)
                    && !e.draft.sections.is_empty()
                    && e.draft.outcome == crate::audit::Outcome::Ok
                    && matches!(
                        e.draft.action,
                        AuditAction::Read
                            | AuditAction::History
                            | AuditAction::Watch
                            | AuditAction::Write
                            | AuditAction::CreatePlan
                            | AuditAction::Disclose
                            | AuditAction::ReplicaWrite
                            | AuditAction::PurgeReceipt
                    )
            }));
        }
        out.reverse();
        let mut draft = self.draft(caller, AuditAction::ReadDisclosures, Some(plan.id));
        draft.detail = format!("{} entries", out.len());
        self.store.audit(draft).await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_consent::ed25519_dalek::SigningKey;

    #[test]
    fn a_verified_envelope_is_remembered_only_for_the_same_key_and_bytes() {
        let entry = crate::storage::tests::consent_ending(SubjectId::random(), "c-1", [10, 20]);
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        let signed = SignedConsent::from_bytes(&entry.bytes).unwrap();
        let memo = Verified::default();
        let first = memo.consent(&signed, &entry.bytes, &key).unwrap();
        assert_eq!(memo.consent(&signed, &entry.bytes, &key).unwrap(), first);
        assert_eq!(memo.consents.lock().unwrap().len(), 1);
        assert!(
            memo.consent(&signed, &entry.bytes, &other).is_err(),
            "another key is checked, not remembered"
        );
        let mut tampered = entry.bytes.clone();
        let at = tampered
            .windows(11)
            .position(|w| w == b"A. Guardian")
            .expect("the grantor's name is in the envelope");
        tampered[at] = b'B';
        assert_ne!(tampered, entry.bytes);
        let forged = SignedConsent::from_bytes(&tampered).unwrap();
        assert!(
            memo.consent(&forged, &tampered, &key).is_err(),
            "other bytes are checked, not remembered"
        );
        assert_eq!(
            memo.consents.lock().unwrap().len(),
            1,
            "failures are not kept"
        );
    }

    /// A set holding one consent of `subject`, told apart by its id.
    fn set_of(subject: SubjectId, id: &str) -> Arc<ConsentSet> {
        let entry = crate::storage::tests::consent_ending(subject, id, [10, 20]);
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let record = SignedConsent::from_bytes(&entry.bytes)
            .unwrap()
            .verify(&key)
            .unwrap();
        let mut set = ConsentSet::new();
        set.add_consent(record);
        Arc::new(set)
    }

    fn ids(set: &ConsentSet) -> Vec<String> {
        set.consents().map(|c| c.id.to_string()).collect()
    }

    #[test]
    fn the_consent_cache_stays_bounded_and_never_keeps_a_set_older_than_one_it_lost() {
        let mut cache = ConsentCache::new(2);
        let (a, b, c) = (
            SubjectId::random(),
            SubjectId::random(),
            SubjectId::random(),
        );
        cache.put(a, set_of(a, "c-a"));
        cache.put(b, set_of(b, "c-b"));
        cache.put(b, set_of(b, "c-b2"));
        assert_eq!(
            cache.sets.len(),
            2,
            "a newer set replaces the subject's own"
        );
        assert_eq!(ids(&cache.get(b).unwrap()), ["c-b2"]);
        cache.put(c, set_of(c, "c-c"));
        assert_eq!(cache.sets.len(), 1, "full: emptied before the third child");
        assert!(cache.get(a).is_none() && cache.get(c).is_some());

        // A miss read `a` before a refresh put a newer set, which was then emptied away:
        // the older read is used once but not kept.
        let before = cache.emptied;
        cache.put(a, set_of(a, "c-a-new"));
        cache.put(b, set_of(b, "c-b3"));
        assert_eq!(cache.emptied, before + 1);
        assert!(cache.get(a).is_none());
        let used = cache.put_read(a, set_of(a, "c-a-old"), before);
        assert_eq!(ids(&used), ["c-a-old"]);
        assert!(cache.get(a).is_none(), "the older read is not cached");

        // A newer set put meanwhile wins over the read.
        let now = cache.emptied;
        cache.put(a, set_of(a, "c-a-newer"));
        let used = cache.put_read(a, set_of(a, "c-a-old"), now);
        assert_eq!(ids(&used), ["c-a-newer"]);
        // Nothing happened meanwhile: the read is kept.
        let now = cache.emptied;
        let d = SubjectId::random();
        cache.put_read(d, set_of(d, "c-d"), now);
        assert_eq!(ids(&cache.get(d).unwrap()), ["c-d"]);
    }
}
