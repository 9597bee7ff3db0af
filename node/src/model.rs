//! Domain identifiers and records: plans, sections, users, time.
//!
//! These types never derive prost messages; `api::convert` maps wire types onto them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use weft_consent::{AgencyId, Timestamp};

use crate::catalogue::{self, SectionSpec};
use crate::error::Error;

/// The current time as a consent `Timestamp` (unix milliseconds).
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s.trim())
                    .map(Self)
                    .map_err(|_| Error::invalid(concat!($what, " must be a UUID")))
            }
        }
    };
}

uuid_id!(
    /// A plan's id.
    PlanId,
    "plan id"
);
uuid_id!(
    /// The child a plan is about: a random UUID, never a name or a student number.
    SubjectId,
    "subject id"
);

/// A section's name, checked against the catalogue: `goals`, `health`, `notes/clinic.test`, …
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SectionName(String);

impl SectionName {
    /// Parses a section name; unknown sections are an error that names the known ones.
    pub fn parse(s: &str) -> Result<Self, Error> {
        catalogue::spec_for(s)?;
        Ok(Self(s.to_string()))
    }

    /// The agency's own case-notes section, `notes/<agency>`.
    pub fn notes_of(agency: &AgencyId) -> Self {
        Self(format!("{}{}", catalogue::NOTES_PREFIX, agency))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The catalogue entry describing this section's fields.
    pub fn spec(&self) -> &'static SectionSpec {
        catalogue::spec_for(&self.0).expect("a SectionName is always in the catalogue")
    }
}

impl fmt::Display for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SectionName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::parse(&s)
    }
}

impl From<SectionName> for String {
    fn from(s: SectionName) -> String {
        s.0
    }
}

/// One section document of one plan: the unit of consent and of replication.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SectionKey {
    /// The plan.
    pub plan: PlanId,
    /// The section.
    pub section: SectionName,
}

impl fmt::Display for SectionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.plan, self.section)
    }
}

/// A plan's identity and ownership (no section content).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    /// The plan's id.
    pub id: PlanId,
    /// The child the plan is about.
    pub subject: SubjectId,
    /// The agency that created the plan and holds all its sections.
    pub home: AgencyId,
    /// When the plan was created.
    pub created_at: Timestamp,
}

/// What a user may do; the rights of each role are in [`Role::allows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Manages users and the node; reads the audit log; never reads plan content.
    Admin,
    /// Creates plans, reads and edits them, adds caseworkers and guardians, keeps the
    /// record of disclosures (reads the audit log).
    Coordinator,
    /// Reads and edits plans.
    Caseworker,
    /// A parent, guardian or eligible student: reads the plans of the subjects bound to them
    /// and adds goals and progress notes to them.
    Guardian,
    /// Reads and verifies the audit log; never reads plan content.
    Auditor,
}

/// A right a role may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Create a plan.
    CreatePlan,
    /// Read plan sections.
    ReadPlan,
    /// Change any field of any section.
    WritePlan,
    /// Add goals and progress notes (a narrower write).
    WriteGoals,
    /// Change an existing goal's status, text or target date.
    EditGoals,
    /// Add users of the given role.
    AddUser(Role),
    /// List users.
    ListUsers,
    /// Read and verify the audit log.
    ReadAudit,
    /// Read node status.
    ReadStatus,
    /// Take a backup of the whole store.
    Backup,
}

impl Role {
    /// All roles, for help texts and errors.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Coordinator,
        Role::Caseworker,
        Role::Guardian,
        Role::Auditor,
    ];

    /// The one table of which role holds which right.
    pub fn allows(self, right: Right) -> bool {
        use Right::*;
        use Role::*;
        matches!(
            (self, right),
            (
                Admin,
                AddUser(_) | ListUsers | ReadAudit | ReadStatus | Backup
            ) | (
                Coordinator,
                CreatePlan | ReadPlan | WritePlan | WriteGoals | EditGoals
            ) | (Coordinator, ListUsers | ReadAudit | ReadStatus)
                | (Coordinator, AddUser(Caseworker | Guardian))
                | (
                    Caseworker,
                    ReadPlan | WritePlan | WriteGoals | EditGoals | ReadStatus
                )
                | (Guardian, ReadPlan | WriteGoals)
                | (Auditor, ReadAudit | ReadStatus)
        )
    }

    /// The role's name as used in the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Coordinator => "coordinator",
            Role::Caseworker => "caseworker",
            Role::Guardian => "guardian",
            Role::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown role `{s}`: expected one of admin, coordinator, caseworker, guardian, auditor"
                ))
            })
    }
}

/// A user name: 1–64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_user_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "user name must be 1-64 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

/// A local user of this node. Only a hash of its bearer token is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name, unique on this node.
    pub name: String,
    /// The user's role.
    pub role: Role,
    /// Guardians: the subjects whose plans they may see. Empty for other roles.
    pub subjects: Vec<SubjectId>,
    /// When the user was added.
    pub created_at: Timestamp,
    /// SHA-256 of the bearer token, hex.
    pub token_hash: String,
    /// A partner agency's staff member given access to this node: their agency. `None` for
    /// this node's own staff. Consent decides what such a user may read or write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agency: Option<AgencyId>,
}

/// Who is calling: a user of a given agency, authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The caller's agency (for local users, this node's agency).
    pub agency: AgencyId,
    /// The user name.
    pub user: String,
    /// The user's role.
    pub role: Role,
    /// Guardians: the subjects they may see.
    pub subjects: Vec<SubjectId>,
}

impl Caller {
    /// The Automerge actor id for this caller's changes: `<agency>|<user>` as UTF-8, so
    /// every change in a section's history names who made it.
    pub fn actor(&self) -> automerge::ActorId {
        actor_for(&self.agency, &self.user)
    }
}

/// The actor id of `user` at `agency`.
pub fn actor_for(agency: &AgencyId, user: &str) -> automerge::ActorId {
    automerge::ActorId::from(format!("{agency}|{user}").into_bytes())
}

/// Splits an actor id made by [`actor_for`] into agency and user; `None` for anything else.
pub fn parse_actor(actor: &automerge::ActorId) -> Option<(AgencyId, String)> {
    let text = std::str::from_utf8(actor.to_bytes()).ok()?;
    let (agency, user) = text.split_once('|')?;
    Some((AgencyId::parse(agency).ok()?, user.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_round_trip() {
        let agency = AgencyId::parse("school.test").unwrap();
        let actor = actor_for(&agency, "ms.rivera");
        assert_eq!(parse_actor(&actor), Some((agency, "ms.rivera".into())));
        assert_eq!(parse_actor(&automerge::ActorId::random()), None);
    }

    #[test]
    fn roles_hold_only_their_rights() {
        assert!(Role::Coordinator.allows(Right::CreatePlan));
        assert!(!Role::Caseworker.allows(Right::CreatePlan));
        assert!(!Role::Admin.allows(Right::ReadPlan));
        assert!(!Role::Auditor.allows(Right::ReadPlan));
        assert!(!Role::Guardian.allows(Right::WritePlan));
        assert!(Role::Guardian.allows(Right::WriteGoals));
        assert!(!Role::Guardian.allows(Right::EditGoals));
        assert!(Role::Coordinator.allows(Right::EditGoals));
        assert!(Role::Caseworker.allows(Right::EditGoals));
        assert!(!Role::Coordinator.allows(Right::AddUser(Role::Admin)));
        assert!(Role::Admin.allows(Right::AddUser(Role::Admin)));
    }

    #[test]
    fn user_names_are_checked() {
        assert!(validate_user_name("ms.rivera").is_ok());
        assert!(validate_user_name("").is_err());
        assert!(validate_user_name("Ms Rivera").is_err());
        assert!(validate_user_name("-x").is_err());
    }

    #[test]
    fn section_names_come_from_the_catalogue() {
        assert!(SectionName::parse("goals").is_ok());
        assert!(SectionName::parse("notes/clinic.test").is_ok());
        let err = SectionName::parse("grades").unwrap_err().to_string();
        assert!(err.contains("unknown section `grades`"), "{err}");
    }
}
