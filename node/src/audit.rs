//! The audit log: append-only and hash-chained.
//!
//! Each entry records when, who (agency, user), what action, on which plan and sections, and
//! the outcome, never the values themselves. Its hash covers the previous entry's hash and the
//! entry's canonical JSON, so changing, removing or reordering any entry breaks the chain from
//! that point on; [`verify`] names the first bad entry.
//!
//! *Architecture invariant:* every write and every disclosure leaves its audit entry in the
//! same storage transaction as the write itself (see `storage::Store::commit`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::{PlanId, Timestamp};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A plan was created.
    CreatePlan,
    /// Sections were read.
    Read,
    /// Plans were listed.
    ListPlans,
    /// Sections were changed.
    Write,
    /// A plan's change history was read.
    History,
    /// A watch stream on a plan was opened.
    Watch,
    /// A user was added.
    AddUser,
    /// Users were listed.
    ListUsers,
    /// The audit log was read.
    ReadAudit,
    /// The audit chain was verified.
    VerifyAudit,
    /// A call without a valid token.
    Authenticate,
    /// A consent was recorded.
    ConsentGrant,
    /// A consent was revoked.
    ConsentRevoke,
    /// A consent reached its expiry.
    ConsentExpire,
    /// Consents were listed, read, explained or exported.
    ConsentRead,
    /// The record of disclosures was read.
    ReadDisclosures,
    /// A section (or changes to it) was sent to another agency.
    Disclose,
    /// Changes from another agency were stored.
    ReplicaWrite,
    /// A frame from another agency was refused.
    ReplicaReject,
    /// This node deleted sections it may no longer hold.
    Purge,
    /// Another agency's signed purge receipt was recorded.
    PurgeReceipt,
    /// A backup of the store was taken.
    Backup,
    /// Node status was read.
    Status,
    /// A guardian was invited to the family page.
    GuardianInvite,
    /// A guardian accepted an invitation (or presented one that is not valid).
    GuardianAccept,
    /// A guardian signed in to the family page (or failed to, or was locked out).
    SignIn,
}

impl AuditAction {
    /// The action's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::CreatePlan => "create_plan",
            AuditAction::Read => "read",
            AuditAction::ListPlans => "list_plans",
            AuditAction::Write => "write",
            AuditAction::History => "history",
            AuditAction::Watch => "watch",
            AuditAction::AddUser => "add_user",
            AuditAction::ListUsers => "list_users",
            AuditAction::ReadAudit => "read_audit",
            AuditAction::VerifyAudit => "verify_audit",
            AuditAction::Authenticate => "authenticate",
            AuditAction::ConsentGrant => "consent_grant",
            AuditAction::ConsentRevoke => "consent_revoke",
            AuditAction::ConsentExpire => "consent_expire",
            AuditAction::ConsentRead => "consent_read",
            AuditAction::ReadDisclosures => "read_disclosures",
            AuditAction::Disclose => "disclose",
            AuditAction::ReplicaWrite => "replica_write",
            AuditAction::ReplicaReject => "replica_reject",
            AuditAction::Purge => "purge",
            AuditAction::PurgeReceipt => "purge_receipt",
            AuditAction::Backup => "backup",
            AuditAction::Status => "status",
            AuditAction::GuardianInvite => "guardian_invite",
            AuditAction::GuardianAccept => "guardian_accept",
            AuditAction::SignIn => "sign_in",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Refused by an authorization or consent rule.
    Denied,
}

impl Outcome {
    /// The outcome's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
        }
    }
}

/// An entry before it is sealed into the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditDraft {
    /// When.
    pub time: Timestamp,
    /// The acting agency.
    pub agency: String,
    /// The acting user (`-` when unknown).
    pub user: String,
    /// What.
    pub action: AuditAction,
    /// How it ended.
    pub outcome: Outcome,
    /// The plan concerned, if any.
    pub plan: Option<PlanId>,
    /// The sections concerned.
    pub sections: Vec<String>,
    /// A reason code or count; never student data.
    pub detail: String,
    /// For reads and writes: what allowed them (`home agency`, or a consent and its
    /// purpose), so the family's record of disclosures can say under which consent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub basis: String,
}

/// A sealed entry as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1.
    pub index: u64,
    /// The entry's content.
    #[serde(flatten)]
    pub draft: AuditDraft,
    /// Hash of the previous entry ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// SHA-256 over `prev_hash` and the canonical content, hex.
    pub hash: String,
}

/// The end of the chain: the last index and hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// Index of the last entry (0 when empty).
    pub index: u64,
    /// Hash of the last entry ([`GENESIS`] when empty).
    pub hash: String,
}

impl Default for AuditHead {
    fn default() -> Self {
        Self {
            index: 0,
            hash: GENESIS.to_string(),
        }
    }
}

fn entry_hash(index: u64, prev_hash: &str, draft: &AuditDraft) -> String {
    let mut h = Sha256::new();
    h.update(b"weft-audit-v1\n");
    h.update(index.to_be_bytes());
    h.update(prev_hash.as_bytes());
    h.update(serde_json::to_vec(draft).expect("audit drafts serialize"));
    hex::encode(h.finalize())
}

/// Seals `draft` after `head`, returning the entry and the new head.
pub fn seal(head: &AuditHead, draft: AuditDraft) -> (AuditEntry, AuditHead) {
    let index = head.index + 1;
    let hash = entry_hash(index, &head.hash, &draft);
    let entry = AuditEntry {
        index,
        draft,
        prev_hash: head.hash.clone(),
        hash: hash.clone(),
    };
    (entry, AuditHead { index, hash })
}

/// Why a chain does not verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainBreak {
    /// The first entry that does not verify.
    pub index: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks a chain given in order; returns the number of entries or the first break.
/// `head` is the stored head, which must match the last entry.
pub fn verify<I>(entries: I, head: &AuditHead) -> Result<u64, ChainBreak>
where
    I: IntoIterator<Item = Result<AuditEntry, (u64, String)>>,
{
    let mut prev = AuditHead::default();
    for item in entries {
        let entry = item.map_err(|(index, problem)| ChainBreak { index, problem })?;
        let expected = prev.index + 1;
        if entry.index != expected {
            return Err(ChainBreak {
                index: expected,
                problem: format!("entry {expected} is missing (found {} next)", entry.index),
            });
        }
        if entry.prev_hash != prev.hash {
            return Err(ChainBreak {
                index: entry.index,
                problem: "previous-hash link does not match the entry before it".into(),
            });
        }
        if entry_hash(entry.index, &entry.prev_hash, &entry.draft) != entry.hash {
            return Err(ChainBreak {
                index: entry.index,
                problem: "content does not match its hash (entry altered)".into(),
            });
        }
        prev = AuditHead {
            index: entry.index,
            hash: entry.hash,
        };
    }
    if prev != *head {
        return Err(ChainBreak {
            index: prev.index + 1,
            problem: format!(
                "the chain ends at entry {} but the log's head records entry {} (entries removed?)",
                prev.index, head.index
            ),
        });
    }
    Ok(prev.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(n: i64) -> AuditDraft {
        AuditDraft {
            time: Timestamp::from_millis(n),
            agency: "school.test".into(),
            user: "u".into(),
            action: AuditAction::Read,
            outcome: Outcome::Ok,
            plan: None,
            sections: vec!["goals".into()],
            detail: String::new(),
            basis: String::new(),
        }
    }

    fn chain(n: i64) -> (Vec<AuditEntry>, AuditHead) {
        let mut head = AuditHead::default();
        let mut out = vec![];
        for i in 0..n {
            let (e, h) = seal(&head, draft(i));
            out.push(e);
            head = h;
        }
        (out, head)
    }

    #[test]
    fn a_sound_chain_verifies() {
        let (entries, head) = chain(5);
        assert_eq!(verify(entries.into_iter().map(Ok), &head), Ok(5));
        assert_eq!(verify(std::iter::empty(), &AuditHead::default()), Ok(0));
    }

    #[test]
    fn tampering_names_the_first_bad_entry() {
        let (mut entries, head) = chain(5);
        entries[2].draft.user = "someone-else".into();
        let err = verify(entries.clone().into_iter().map(Ok), &head).unwrap_err();
        assert_eq!(err.index, 3);
        assert!(err.problem.contains("altered"));

        let (mut entries, head) = chain(5);
        entries.remove(1);
        assert_eq!(
            verify(entries.into_iter().map(Ok), &head)
                .unwrap_err()
                .index,
            2
        );

        let (mut entries, head) = chain(5);
        entries.pop();
        assert_eq!(
            verify(entries.into_iter().map(Ok), &head)
                .unwrap_err()
                .index,
            5
        );
    }
}
