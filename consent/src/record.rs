//! The records a family's consent is made of: [`ConsentRecord`] with its [`Provision`]s, and
//! [`Revocation`].
//!
//! Records are immutable facts. They are checked by [`ConsentRecord::validate`] and
//! [`Revocation::validate`] (see [`crate::validate`]), signed by [`crate::sign`], and
//! interpreted by [`crate::evaluate()`].
//!
//! The field order of these structs is part of the signed encoding
//! ([`crate::canonical_bytes`]): do not reorder fields.

use serde::{Deserialize, Serialize};

use crate::ids::{AgencyId, ConsentId, RevocationId, Timestamp};
use crate::vocab::{Access, CollectionMethod, Purpose, Relationship};

/// The person who gave consent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grantor {
    /// The grantor's name as written on the consent (never echoed in error text).
    pub name: String,
    /// How the grantor relates to the child.
    pub relationship: Relationship,
}

/// Who wrote a record down: an agency and one of its users.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorder {
    /// The agency whose node recorded (and signs) the record.
    pub agency: AgencyId,
    /// The recording user, as the agency identifies its staff.
    pub user: String,
}

/// One grant inside a consent: which agency may hold which sections, how, why and when.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// The agency receiving the sections.
    pub grantee: AgencyId,
    /// Section names from the plan catalogue (`health`, `notes/<agency-id>`, ...).
    pub sections: Vec<String>,
    /// `read` or `read_write`.
    pub access: Access,
    /// Why the disclosure is made.
    pub purpose: Purpose,
    /// The provision is active from this time (inclusive).
    pub valid_from: Timestamp,
    /// The provision stops at this time (exclusive). Required: `None` only exists so that
    /// validation can name the missing expiry.
    pub valid_until: Option<Timestamp>,
}

impl Provision {
    /// Whether this provision is in force at `now`: `valid_from <= now < valid_until`.
    /// A provision without an expiry is never in force.
    pub fn is_active_at(&self, now: Timestamp) -> bool {
        match self.valid_until {
            Some(until) => self.valid_from <= now && now < until,
            None => false,
        }
    }

    /// Whether this provision names `section`.
    pub fn covers(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

/// A family's written consent to disclose sections of a child's plan, as recorded by the
/// plan's home (disclosing) agency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// Caller-chosen id; one id names exactly one record.
    pub id: ConsentId,
    /// The child's `SubjectId` (a UUID) as text; opaque to this crate.
    pub subject: String,
    /// Who consented.
    pub grantor: Grantor,
    /// The plan's home agency: the one disclosing the sections.
    pub disclosing_agency: AgencyId,
    /// Who recorded the consent. Must be the disclosing agency.
    pub recorded_by: Recorder,
    /// When the consent was given and recorded (the date FERPA requires).
    pub recorded_at: Timestamp,
    /// How it was collected.
    pub collection_method: CollectionMethod,
    /// The grants (recipients, sections, access, purpose, validity).
    pub provisions: Vec<Provision>,
}

impl ConsentRecord {
    /// Whether a provision names `agency` as its grantee (in force or not).
    pub fn names(&self, agency: &AgencyId) -> bool {
        self.provisions.iter().any(|p| p.grantee == *agency)
    }
}

/// A record that ends a consent. Once a revocation is known, the consent it names never allows
/// anything again.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// Caller-chosen id of this revocation.
    pub id: RevocationId,
    /// The consent it ends.
    pub consent: ConsentId,
    /// Who recorded the revocation.
    pub revoked_by: Recorder,
    /// When the family revoked.
    pub revoked_at: Timestamp,
    /// Optional free-text reason (never echoed in error text).
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::testing::{agency, consent, CLINIC, HOME};

    #[test]
    fn a_record_names_its_grantees_only() {
        let record = consent("c1");
        assert!(record.names(&agency(CLINIC)));
        assert!(
            !record.names(&agency(HOME)),
            "the disclosing agency is no grantee"
        );
        assert!(!record.names(&agency("other.example")));
    }
}
