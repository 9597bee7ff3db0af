//! Guardian accounts for the family page: invitations, passphrases and sign-in lockout.
//!
//! A coordinator invites a guardian to one plan ([`NodeService::invite_guardian`]); the node
//! keeps only the SHA-256 of the invitation token, which is valid once, for
//! [`INVITE_VALID_FOR`]. Accepting it ([`NodeService::accept_invite`]) creates a guardian
//! user bound to the plan's subject (with a bearer token nobody is ever shown) and an account
//! holding the Argon2id hash of the passphrase the guardian chose. Sign-ins
//! ([`NodeService::sign_in`]) are checked against it; [`MAX_FAILURES`] wrong passphrases
//! within [`FAILURE_WINDOW`] lock the account for [`LOCKOUT`]. Every invitation, acceptance
//! and sign-in (ok, refused or locked) is audited, and the state it changes is written in the
//! same commit as its audit entry.
//!
//! What a signed-in guardian may then do is decided elsewhere, by the same rules as for every
//! other caller: the web layer turns the account into a [`Caller`] and calls the service.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use weft_consent::Relationship;

use super::{new_token, token_hash, NodeService};
use crate::audit::{AuditAction, AuditDraft, Outcome};
use crate::error::{Error, Result};
use crate::model::{validate_user_name, Caller, PlanId, Right, Role, SubjectId, UserRecord};
use crate::storage::CommitBatch;

/// How long an invitation stays valid.
pub const INVITE_VALID_FOR: std::time::Duration = std::time::Duration::from_secs(72 * 3600);
/// Wrong passphrases within [`FAILURE_WINDOW`] that lock an account.
pub const MAX_FAILURES: usize = 5;
/// The window in which failures count.
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// How long a locked account stays locked.
pub const LOCKOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_CHARS: usize = 12;
/// Longest passphrase accepted (Argon2 hashes any length; this bounds the work).
pub const MAX_PASSPHRASE_CHARS: usize = 256;

/// A stored invitation, keyed by the SHA-256 of its token.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct InviteRecord {
    plan: PlanId,
    subject: SubjectId,
    /// The guardian's name as the coordinator gave it (the grantor's name in consents).
    name: String,
    relationship: Relationship,
    invited_by: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    accepted_by: Option<String>,
    accepted_at_ms: Option<i64>,
}

/// A guardian's family-page account.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AccountRecord {
    user: String,
    name: String,
    relationship: Relationship,
    plans: Vec<PlanId>,
    /// Argon2id, PHC string format.
    passphrase: String,
    /// Times of recent wrong passphrases (unix ms), within the failure window.
    failures: Vec<i64>,
    locked_until_ms: Option<i64>,
    created_at_ms: i64,
}

/// A new invitation, as returned once to the coordinator.
#[derive(Clone, Debug)]
pub struct GuardianInvite {
    /// The token (only its hash is stored).
    pub token: String,
    /// When it stops working, unix ms.
    pub expires_at_ms: i64,
}

/// Why an invitation cannot be used. The page shows all of them the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteRefusal {
    /// No such invitation.
    Unknown,
    /// Older than [`INVITE_VALID_FOR`].
    Expired,
    /// Used already.
    Used,
}

impl InviteRefusal {
    fn code(self) -> &'static str {
        match self {
            InviteRefusal::Unknown => "invite_unknown",
            InviteRefusal::Expired => "invite_expired",
            InviteRefusal::Used => "invite_used",
        }
    }
}

/// What the invitation page may show before it is accepted.
#[derive(Clone, Debug)]
pub struct InviteInfo {
    /// The guardian's name as invited.
    pub name: String,
    /// Their relationship to the child.
    pub relationship: Relationship,
    /// When it stops working, unix ms.
    pub expires_at_ms: i64,
}

/// The outcome of a sign-in.
#[derive(Clone, Debug)]
pub enum SignIn {
    /// Signed in.
    Ok(Caller),
    /// Unknown name or wrong passphrase (the caller is not told which).
    Refused,
    /// Too many wrong passphrases: locked until then (unix ms).
    Locked {
        /// When sign-in opens again.
        until_ms: i64,
    },
}

/// A guardian's account, as the page shows it.
#[derive(Clone, Debug)]
pub struct GuardianProfile {
    /// The user name (sign-in name).
    pub user: String,
    /// The guardian's name.
    pub name: String,
    /// Their relationship to the child.
    pub relationship: Relationship,
    /// The plans they are bound to.
    pub plans: Vec<PlanId>,
}

fn invite_key(token: &str) -> Vec<u8> {
    format!("invite/{}", token_hash(token)).into_bytes()
}

fn account_key(user: &str) -> Vec<u8> {
    format!("account/{user}").into_bytes()
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("family records serialize")
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Storage(format!("corrupt family record: {e}")))
}

/// A fresh invitation token: 256 random bits, URL-safe hex.
fn new_invite_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Hashes a passphrase with Argon2id (the crate's default parameters: 19 MiB, 2 passes).
fn hash_passphrase(passphrase: &str) -> Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(Error::internal)?;
    Argon2::default()
        .hash_password(passphrase.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(Error::internal)
}

fn verify_passphrase(passphrase: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(passphrase.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Checks a passphrase against the policy; the message is shown to the guardian.
pub fn check_passphrase(passphrase: &str, again: &str) -> Result<()> {
    let n = passphrase.chars().count();
    if n < MIN_PASSPHRASE_CHARS {
        return Err(Error::invalid(format!(
            "passphrase: at least {MIN_PASSPHRASE_CHARS} characters"
        )));
    }
    if n > MAX_PASSPHRASE_CHARS {
        return Err(Error::invalid(format!(
            "passphrase: at most {MAX_PASSPHRASE_CHARS} characters"
        )));
    }
    if passphrase != again {
        return Err(Error::invalid("passphrase: the two entries differ"));
    }
    Ok(())
}

/// A dummy hash, verified for unknown names so that their answer takes as long.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_passphrase("not a passphrase anyone has").unwrap_or_default())
}

impl NodeService {
    fn family_audit(&self, user: &str, action: AuditAction, plan: Option<PlanId>) -> AuditDraft {
        AuditDraft {
            time: self.now(),
            agency: self.agency.to_string(),
            user: user.to_string(),
            action,
            outcome: Outcome::Ok,
            plan,
            sections: vec![],
            detail: String::new(),
            basis: String::new(),
        }
    }

    async fn refuse_invite(&self, plan: Option<PlanId>, why: InviteRefusal) -> Result<()> {
        let mut draft = self.family_audit("-", AuditAction::GuardianAccept, plan);
        draft.outcome = Outcome::Denied;
        draft.detail = why.code().into();
        tracing::info!(target: "weft::audit", code = why.code(), "invitation refused");
        self.store.audit(draft).await?;
        Ok(())
    }

    /// Invites a guardian to the family page for one plan of this node (coordinators and
    /// admins). Returns the token, shown once.
    pub async fn invite_guardian(
        &self,
        caller: &Caller,
        plan: PlanId,
        name: &str,
        relationship: &str,
    ) -> Result<GuardianInvite> {
        self.require_on(
            caller,
            Right::AddUser(Role::Guardian),
            AuditAction::GuardianInvite,
            Some(plan),
        )
        .await?;
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > 200 || name.chars().any(char::is_control) {
            return Err(Error::invalid(
                "name: the guardian's name, 1 to 200 characters",
            ));
        }
        let relationship: Relationship = relationship
            .trim()
            .parse()
            .map_err(|e| Error::invalid(format!("relationship: {e}")))?;
        let plan = self
            .store
            .plan(plan)
            .await?
            .ok_or_else(|| Error::NotFound(format!("plan {plan}")))?;
        if plan.home != self.agency {
            return Err(Error::invalid(format!(
                "plan {} is not held by this agency: its home invites guardians",
                plan.id
            )));
        }
        let now = self.now().as_millis();
        let token = new_invite_token();
        let record = InviteRecord {
            plan: plan.id,
            subject: plan.subject,
            name: name.to_string(),
            relationship,
            invited_by: caller.user.clone(),
            created_at_ms: now,
            expires_at_ms: now + INVITE_VALID_FOR.as_millis() as i64,
            accepted_by: None,
            accepted_at_ms: None,
        };
        let mut draft = self.draft(caller, AuditAction::GuardianInvite, Some(plan.id));
        draft.detail = format!(
            "{relationship}, valid {} hours",
            INVITE_VALID_FOR.as_secs() / 3600
        );
        let mut batch = CommitBatch::audit_only(draft);
        batch.family = vec![(invite_key(&token), Some(to_json(&record)))];
        self.store.commit(batch).await?;
        tracing::info!(target: "weft::audit", plan = %plan.id, user = %caller.user, "guardian invited");
        Ok(GuardianInvite {
            token,
            expires_at_ms: record.expires_at_ms,
        })
    }

    async fn usable_invite(
        &self,
        token: &str,
    ) -> Result<std::result::Result<InviteRecord, (Option<PlanId>, InviteRefusal)>> {
        // Tokens are 64 hex characters; anything else cannot be one.
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Err((None, InviteRefusal::Unknown)));
        }
        let Some(bytes) = self.store.family_get(invite_key(token)).await? else {
            return Ok(Err((None, InviteRefusal::Unknown)));
        };
        let record: InviteRecord = from_json(&bytes)?;
        if record.accepted_by.is_some() {
            return Ok(Err((Some(record.plan), InviteRefusal::Used)));
        }
        if self.now().as_millis() >= record.expires_at_ms {
            return Ok(Err((Some(record.plan), InviteRefusal::Expired)));
        }
        Ok(Ok(record))
    }

    /// What an invitation's page may show; a token that cannot be used is audited.
    pub async fn invite_info(
        &self,
        token: &str,
    ) -> Result<std::result::Result<InviteInfo, InviteRefusal>> {
        match self.usable_invite(token).await? {
            Ok(r) => Ok(Ok(InviteInfo {
                name: r.name,
                relationship: r.relationship,
                expires_at_ms: r.expires_at_ms,
            })),
            Err((plan, why)) => {
                self.refuse_invite(plan, why).await?;
                Ok(Err(why))
            }
        }
    }

    /// Accepts an invitation: creates the guardian's user and account in one commit, with
    /// the invitation marked used. Bad input (name taken, passphrase too short) changes
    /// nothing and leaves the invitation usable.
    pub async fn accept_invite(
        &self,
        token: &str,
        user: &str,
        passphrase: &str,
        again: &str,
    ) -> Result<std::result::Result<Caller, InviteRefusal>> {
        let _serial = self.family_lock.lock().await;
        let mut record = match self.usable_invite(token).await? {
            Ok(r) => r,
            Err((plan, why)) => {
                self.refuse_invite(plan, why).await?;
                return Ok(Err(why));
            }
        };
        validate_user_name(user)?;
        check_passphrase(passphrase, again)?;
        let taken = self
            .users
            .read()
            .map_err(|_| Error::internal("user table poisoned"))?
            .values()
            .any(|u| u.name == user);
        if taken {
            return Err(Error::AlreadyExists(format!(
                "the sign-in name `{user}` is taken; choose another"
            )));
        }
        let owned = passphrase.to_string();
        let phc = tokio::task::spawn_blocking(move || hash_passphrase(&owned))
            .await
            .map_err(Error::internal)??;
        let now = self.now().as_millis();
        let account = AccountRecord {
            user: user.to_string(),
            name: record.name.clone(),
            relationship: record.relationship,
            plans: vec![record.plan],
            passphrase: phc,
            failures: vec![],
            locked_until_ms: None,
            created_at_ms: now,
        };
        let new_user = UserRecord {
            name: user.to_string(),
            role: Role::Guardian,
            subjects: vec![record.subject],
            created_at: self.now(),
            // Guardians sign in with their passphrase; this bearer token is never shown.
            token_hash: token_hash(&new_token()),
            agency: None,
        };
        record.accepted_by = Some(user.to_string());
        record.accepted_at_ms = Some(now);
        let mut draft = self.family_audit(user, AuditAction::GuardianAccept, Some(record.plan));
        draft.detail = format!("guardian account `{user}` created");
        let mut batch = CommitBatch::audit_only(draft);
        batch.new_user = Some(new_user.clone());
        batch.family = vec![
            (invite_key(token), Some(to_json(&record))),
            (account_key(user), Some(to_json(&account))),
        ];
        self.store.commit(batch).await?;
        self.users
            .write()
            .map_err(|_| Error::internal("user table poisoned"))?
            .insert(new_user.token_hash.clone(), new_user);
        tracing::info!(target: "weft::audit", plan = %record.plan, user, "guardian invitation accepted");
        Ok(Ok(self.guardian_caller(user).ok_or_else(|| {
            Error::internal("the new guardian is not in the user table")
        })?))
    }

    /// Checks a guardian's passphrase, with lockout. Every attempt is audited.
    pub async fn sign_in(&self, user: &str, passphrase: &str) -> Result<SignIn> {
        let _serial = self.family_lock.lock().await;
        let stored = if validate_user_name(user).is_ok() {
            self.store.family_get(account_key(user)).await?
        } else {
            None
        };
        let now = self.now().as_millis();
        let Some(bytes) = stored else {
            // Spend the same work as a real check, so timing does not tell names apart.
            let owned = passphrase
                .chars()
                .take(MAX_PASSPHRASE_CHARS)
                .collect::<String>();
            tokio::task::spawn_blocking(move || verify_passphrase(&owned, dummy_hash()))
                .await
                .map_err(Error::internal)?;
            let mut draft = self.family_audit("-", AuditAction::SignIn, None);
            draft.outcome = Outcome::Denied;
            draft.detail = "unknown_user".into();
            tracing::info!(target: "weft::audit", code = "unknown_user", "sign-in refused");
            self.store.audit(draft).await?;
            return Ok(SignIn::Refused);
        };
        let mut account: AccountRecord = from_json(&bytes)?;
        let plan = account.plans.first().copied();
        if let Some(until) = account.locked_until_ms.filter(|u| *u > now) {
            let mut draft = self.family_audit(user, AuditAction::SignIn, plan);
            draft.outcome = Outcome::Denied;
            draft.detail = "locked".into();
            tracing::info!(target: "weft::audit", user, code = "locked", "sign-in refused");
            self.store.audit(draft).await?;
            return Ok(SignIn::Locked { until_ms: until });
        }
        let (owned, phc) = (
            passphrase
                .chars()
                .take(MAX_PASSPHRASE_CHARS + 1)
                .collect::<String>(),
            account.passphrase.clone(),
        );
        let ok = tokio::task::spawn_blocking(move || verify_passphrase(&owned, &phc))
            .await
            .map_err(Error::internal)?;
        let mut draft = self.family_audit(user, AuditAction::SignIn, plan);
        let window = FAILURE_WINDOW.as_millis() as i64;
        account.failures.retain(|t| now - *t < window);
        let outcome = if ok {
            account.failures.clear();
            account.locked_until_ms = None;
            draft.detail = "passphrase".into();
            SignIn::Ok(
                self.guardian_caller(user)
                    .ok_or_else(|| Error::internal("a guardian account without its user"))?,
            )
        } else {
            account.failures.push(now);
            draft.outcome = Outcome::Denied;
            if account.failures.len() >= MAX_FAILURES {
                let until = now + LOCKOUT.as_millis() as i64;
                account.locked_until_ms = Some(until);
                account.failures.clear();
                draft.detail = format!(
                    "wrong_passphrase; locked for {} minutes",
                    LOCKOUT.as_secs() / 60
                );
                tracing::warn!(target: "weft::audit", user, "sign-in locked after repeated failures");
                SignIn::Locked { until_ms: until }
            } else {
                draft.detail = format!(
                    "wrong_passphrase ({} of {MAX_FAILURES})",
                    account.failures.len()
                );
                tracing::info!(target: "weft::audit", user, code = "wrong_passphrase", "sign-in refused");
                SignIn::Refused
            }
        };
        let mut batch = CommitBatch::audit_only(draft);
        batch.family = vec![(account_key(user), Some(to_json(&account)))];
        self.store.commit(batch).await?;
        Ok(outcome)
    }

    /// The caller a signed-in guardian acts as (`None` if there is no such guardian).
    pub fn guardian_caller(&self, user: &str) -> Option<Caller> {
        let users = self.users.read().ok()?;
        let u = users
            .values()
            .find(|u| u.name == user && u.role == Role::Guardian)?;
        Some(Caller {
            agency: u.agency.clone().unwrap_or_else(|| self.agency.clone()),
            user: u.name.clone(),
            role: u.role,
            subjects: u.subjects.clone(),
        })
    }

    /// The node's time now (the page checks dates against the same clock as the service).
    pub fn clock_now(&self) -> crate::model::Timestamp {
        self.now()
    }

    /// The signed purge receipts other agencies returned for a plan: for the plan's
    /// guardians and for home staff who keep the record of disclosures.
    pub async fn plan_purge_receipts(
        &self,
        caller: &Caller,
        plan: PlanId,
    ) -> Result<Vec<super::replica::PurgeReceipt>> {
        let plan = self
            .load_plan(caller, plan, AuditAction::ReadDisclosures)
            .await?;
        let allowed = caller.agency == plan.home
            && (caller.role.allows(Right::ReadAudit) || caller.role == Role::Guardian);
        if !allowed {
            let denial = crate::gate::Denial {
                code: "role",
                message: format!("role `{}` may not read purge receipts", caller.role),
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
        self.purge_receipts(plan.id).await
    }

    /// A guardian's account (name, relationship, plans).
    pub async fn guardian_profile(&self, user: &str) -> Result<Option<GuardianProfile>> {
        let Some(bytes) = self.store.family_get(account_key(user)).await? else {
            return Ok(None);
        };
        let a: AccountRecord = from_json(&bytes)?;
        Ok(Some(GuardianProfile {
            user: a.user,
            name: a.name,
            relationship: a.relationship,
            plans: a.plans,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrases_hash_with_argon2id_and_verify() {
        let phc = hash_passphrase("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_passphrase("correct horse battery", &phc));
        assert!(!verify_passphrase("correct horse battery!", &phc));
        assert!(!verify_passphrase("x", "not a hash"));
    }

    #[test]
    fn the_passphrase_policy_names_the_problem() {
        assert!(check_passphrase("short", "short").is_err());
        assert!(check_passphrase("long enough phrase", "long enough phrasE").is_err());
        assert!(check_passphrase("long enough phrase", "long enough phrase").is_ok());
    }
}
