//! HL7 FHIR R4 export of consents: one `Consent` resource per record, in a `collection`
//! Bundle. Pure functions over the records; no IO.
//!
//! Mapping: `status` active/inactive (revoked, expired) or proposed (not yet valid);
//! `scope` patient-privacy; `category` LOINC 59284-0 (patient consent); `patient` the
//! subject id; `dateTime` when recorded; `performer` the grantor; `organization` the
//! disclosing agency; `policy` FERPA 34 CFR 99.30 and 42 CFR 2.31; a base `deny` provision
//! with one nested `permit` per Weft provision carrying actor (recipient), action, purpose,
//! period and the sections as `class` codes.

use serde_json::{json, Value as Json};
use weft_consent::{Access, ConsentRecord};

use crate::model::PlanRecord;
use crate::service::{ConsentState, ConsentView};

const AGENCY_SYSTEM: &str = "urn:weft:agency";
const SECTION_SYSTEM: &str = "urn:weft:section";
const PURPOSE_SYSTEM: &str = "urn:weft:purpose";
const SUBJECT_SYSTEM: &str = "urn:weft:subject";

fn instant(ms: i64) -> String {
    weft_consent::Timestamp::from_millis(ms).to_string()
}

fn agency_ref(agency: &str) -> Json {
    json!({"identifier": {"system": AGENCY_SYSTEM, "value": agency}, "display": agency})
}

/// One consent as a FHIR R4 `Consent` resource.
pub fn consent_resource(record: &ConsentRecord, state: ConsentState) -> Json {
    let status = match state {
        ConsentState::Active => "active",
        ConsentState::NotYetValid => "proposed",
        ConsentState::Expired | ConsentState::Revoked => "inactive",
    };
    let permits: Vec<Json> = record
        .provisions
        .iter()
        .map(|p| {
            let mut actions = vec![json!({"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                "code": "access", "display": "Access"}]})];
            if p.access == Access::ReadWrite {
                actions.push(json!({"coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                    "code": "correct", "display": "Access and Correct"}]}));
            }
            let mut period = json!({"start": instant(p.valid_from.as_millis())});
            if let Some(until) = p.valid_until {
                period["end"] = json!(instant(until.as_millis()));
            }
            json!({
                "type": "permit",
                "period": period,
                "actor": [{
                    "role": {"coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                        "code": "IRCP", "display": "information recipient"}]},
                    "reference": agency_ref(p.grantee.as_str())
                }],
                "action": actions,
                "purpose": [{"system": PURPOSE_SYSTEM, "code": p.purpose.as_str()}],
                "class": p.sections.iter().map(|s| json!({"system": SECTION_SYSTEM, "code": s})).collect::<Vec<_>>()
            })
        })
        .collect();
    json!({
        "resourceType": "Consent",
        "id": record.id.as_str(),
        "status": status,
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy", "display": "Privacy Consent"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": SUBJECT_SYSTEM, "value": record.subject}},
        "dateTime": instant(record.recorded_at.as_millis()),
        "performer": [{"display": format!("{} ({})", record.grantor.name, record.grantor.relationship)}],
        "organization": [agency_ref(record.disclosing_agency.as_str())],
        "sourceReference": {"display": format!("collected by {}", record.collection_method)},
        "policy": [
            {"authority": "https://www.ecfr.gov", "uri": "https://www.ecfr.gov/current/title-34/subtitle-A/part-99/subpart-D/section-99.30"},
            {"authority": "https://www.ecfr.gov", "uri": "https://www.ecfr.gov/current/title-42/chapter-I/subchapter-A/part-2/subpart-C/section-2.31"}
        ],
        "provision": {"type": "deny", "provision": permits}
    })
}

/// The consents of a plan as a FHIR `collection` Bundle.
pub fn bundle(plan: &PlanRecord, views: &[ConsentView]) -> Json {
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": "urn:weft:plan", "value": plan.id.to_string()},
        "entry": views.iter().map(|v| json!({
            "fullUrl": format!("urn:weft:consent:{}", v.record.id),
            "resource": consent_resource(&v.record, v.state)
        })).collect::<Vec<_>>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_consent::{
        AgencyId, CollectionMethod, ConsentId, Grantor, Provision, Purpose, Recorder, Relationship,
        Timestamp,
    };

    fn sample() -> ConsentRecord {
        ConsentRecord {
            id: ConsentId::parse("c-0123456789ab").unwrap(),
            subject: "7d0c3f4e-8a1b-4c2d-9e3f-112233445566".into(),
            grantor: Grantor {
                name: "Rosa Example".into(),
                relationship: Relationship::Parent,
            },
            disclosing_agency: AgencyId::parse("school.test").unwrap(),
            recorded_by: Recorder {
                agency: AgencyId::parse("school.test").unwrap(),
                user: "coordinator".into(),
            },
            recorded_at: Timestamp::from_millis(1_790_000_000_000),
            collection_method: CollectionMethod::PaperForm,
            provisions: vec![Provision {
                grantee: AgencyId::parse("clinic.test").unwrap(),
                sections: vec!["goals".into(), "health".into()],
                access: Access::ReadWrite,
                purpose: Purpose::CareCoordination,
                valid_from: Timestamp::from_millis(1_790_000_000_000),
                valid_until: Some(Timestamp::from_millis(1_814_400_000_000)),
            }],
        }
    }

    #[test]
    fn a_sample_consent_exports_as_the_checked_in_fhir_json() {
        let got = consent_resource(&sample(), ConsentState::Active);
        let expected: Json =
            serde_json::from_str(include_str!("../fixtures/fhir-consent.json")).unwrap();
        assert_eq!(
            got,
            expected,
            "\n{}",
            serde_json::to_string_pretty(&got).unwrap()
        );
    }

    #[test]
    fn revoked_and_expired_consents_are_inactive() {
        assert_eq!(
            consent_resource(&sample(), ConsentState::Revoked)["status"],
            "inactive"
        );
        assert_eq!(
            consent_resource(&sample(), ConsentState::Expired)["status"],
            "inactive"
        );
        assert_eq!(
            consent_resource(&sample(), ConsentState::NotYetValid)["status"],
            "proposed"
        );
    }

    #[test]
    fn every_element_a_validator_requires_is_present() {
        let r = consent_resource(&sample(), ConsentState::Active);
        for key in [
            "status",
            "scope",
            "category",
            "patient",
            "dateTime",
            "performer",
            "organization",
            "policy",
            "provision",
        ] {
            assert!(r.get(key).is_some(), "{key}");
        }
        let permit = &r["provision"]["provision"][0];
        for key in ["actor", "action", "purpose", "period", "class"] {
            assert!(permit.get(key).is_some(), "{key}");
        }
    }
}
