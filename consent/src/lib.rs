//! Consent policy for Weft: who may hold or change which section of a child's success plan.
//!
//! This crate is pure policy. It does no IO, reads no clock (time is always passed in), and
//! knows nothing of tokio, gRPC or storage. The node calls it at one choke point, its gate.
//!
//! # The rules
//!
//! * **Default deny.** The plan's home agency reads and writes every section; any other agency
//!   gets a section only under a provision in force that names it and the section.
//! * **Consents come from the plan's home.** Only consents whose `disclosing_agency` is the
//!   plan's home count, and a consent must be recorded (and signed) by that agency.
//! * **A consent is complete or it is nothing.** A record missing anything FERPA
//!   (34 CFR 99.30) or 42 CFR 2.31 requires (grantor, recipients, sections, purpose, date,
//!   expiry) fails [`ConsentRecord::validate`] and never allows. Validation names every missing
//!   item at once, without echoing values.
//! * **Revocation beats grant**, whatever order the records arrive in: a revocation that
//!   arrives before its consent still blocks it.
//! * **Expiry is revocation at a known time**: a provision is in force for
//!   `valid_from <= now < valid_until`.
//! * **`read_write` implies `read`.** A `read` provision denies writes with
//!   [`DenyReason::ReadOnly`].
//! * **Deterministic.** The same records in any order give the same [`Decision`], reason
//!   included; see [`evaluate()`](evaluate::evaluate) for how ties are broken.
//! * **Signed records.** Consents and revocations travel as Ed25519-signed canonical bytes
//!   ([`sign`]); a node verifies a record before it acts on it.
//!
//! # Example
//!
//! ```
//! use weft_consent::*;
//!
//! let school = AgencyId::parse("lincoln-high.example.org")?;
//! let clinic = AgencyId::parse("eastside-clinic.example.org")?;
//! let day = 86_400_000;
//! let consent = ConsentRecord {
//!     id: ConsentId::parse("c-2025-001")?,
//!     subject: "6f1c2a9e-0d4b-4c55-9a43-0a3c1d6e2b7f".into(),
//!     grantor: Grantor { name: "A. Guardian".into(), relationship: Relationship::Guardian },
//!     disclosing_agency: school.clone(),
//!     recorded_by: Recorder { agency: school.clone(), user: "coordinator-7".into() },
//!     recorded_at: Timestamp::from_millis(1_756_684_800_000),
//!     collection_method: "esignature".parse()?,
//!     provisions: vec![Provision {
//!         grantee: clinic.clone(),
//!         sections: vec!["health".into(), "goals".into()],
//!         access: Access::Read,
//!         purpose: Purpose::CareCoordination,
//!         valid_from: Timestamp::from_millis(1_756_684_800_000),
//!         valid_until: Some(Timestamp::from_millis(1_756_684_800_000 + 365 * day)),
//!     }],
//! };
//! consent.validate()?;
//!
//! // The school signs it; every node verifies before acting on it.
//! let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
//! let signed = sign_consent(&consent, &school, &key)?;
//! let verified = signed.verify(&key.verifying_key())?;
//!
//! let mut records = ConsentSet::new();
//! records.add_consent(verified);
//! let now = Timestamp::from_millis(1_756_684_800_000 + day);
//!
//! let read = evaluate(&records, &clinic, &school, "health", Action::Read, now);
//! assert!(read.is_allow());
//! let write = evaluate(&records, &clinic, &school, "health", Action::Write, now);
//! assert_eq!(write.to_string(), "denied: consent c-2025-001 grants read access only, not write");
//! let other = evaluate(&records, &clinic, &school, "academic", Action::Read, now);
//! assert_eq!(other, Decision::Deny(DenyReason::NoConsent));
//!
//! // The family revokes: the clinic loses the section.
//! records.add_revocation(Revocation {
//!     id: RevocationId::parse("r-2025-001")?,
//!     consent: ConsentId::parse("c-2025-001")?,
//!     revoked_by: Recorder { agency: school.clone(), user: "coordinator-7".into() },
//!     revoked_at: now,
//!     reason: None,
//! });
//! assert!(!evaluate(&records, &clinic, &school, "health", Action::Read, now).is_allow());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod evaluate;
pub mod ids;
pub mod record;
pub mod set;
pub mod sign;
pub mod validate;
pub mod vocab;

#[cfg(test)]
mod testing;

pub use evaluate::{active_grants, evaluate, next_transition, AllowReason, Decision, DenyReason};
pub use ids::{AgencyId, AgencyIdError, ConsentId, IdError, RevocationId, Timestamp};
pub use record::{ConsentRecord, Grantor, Provision, Recorder, Revocation};
pub use set::{AddOutcome, ConsentSet};
pub use sign::{
    canonical_bytes, canonical_revocation_bytes, sign_consent, sign_revocation, RecordKind,
    SignatureError, SignedConsent, SignedRevocation, CONSENT_TAG, REVOCATION_TAG,
};
pub use validate::{ConsentInvalid, MissingItem, RevocationInvalid, MAX_SECTION_NAME_LEN};
pub use vocab::{Access, Action, CollectionMethod, ParseEnumError, Purpose, Relationship};

/// Re-exported so callers use the same `ed25519-dalek` version as this crate.
pub use ed25519_dalek;
