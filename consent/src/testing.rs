//! Test fixtures shared by the unit tests.

use crate::{
    Access, AgencyId, CollectionMethod, ConsentId, ConsentRecord, Grantor, Provision, Purpose,
    Recorder, Relationship, Revocation, RevocationId, Timestamp,
};

pub(crate) const HOME: &str = "school.example";
pub(crate) const CLINIC: &str = "clinic.example";

pub(crate) fn agency(s: &str) -> AgencyId {
    AgencyId::parse(s).expect("test agency id")
}

/// A valid consent from `school.example` giving `clinic.example` read access to `health` and
/// `goals` for care coordination, from t=1000 until t=10000.
pub(crate) fn consent(id: &str) -> ConsentRecord {
    ConsentRecord {
        id: ConsentId::parse(id).expect("test consent id"),
        subject: "6f1c2a9e-0d4b-4c55-9a43-0a3c1d6e2b7f".into(),
        grantor: Grantor {
            name: "A. Guardian".into(),
            relationship: Relationship::Guardian,
        },
        disclosing_agency: agency(HOME),
        recorded_by: Recorder {
            agency: agency(HOME),
            user: "coordinator-7".into(),
        },
        recorded_at: Timestamp(500),
        collection_method: CollectionMethod::ESignature,
        provisions: vec![Provision {
            grantee: agency(CLINIC),
            sections: vec!["health".into(), "goals".into()],
            access: Access::Read,
            purpose: Purpose::CareCoordination,
            valid_from: Timestamp(1000),
            valid_until: Some(Timestamp(10_000)),
        }],
    }
}

/// A valid revocation of `consent`, recorded by `school.example` at t=5000.
pub(crate) fn revocation(id: &str, consent: &str) -> Revocation {
    Revocation {
        id: RevocationId::parse(id).expect("test revocation id"),
        consent: ConsentId::parse(consent).expect("test consent id"),
        revoked_by: Recorder {
            agency: agency(HOME),
            user: "coordinator-7".into(),
        },
        revoked_at: Timestamp(5000),
        reason: None,
    }
}
