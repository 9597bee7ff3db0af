//! Property tests of the consent decision.
//!
//! Records are drawn from a deliberately small alphabet (four agencies, three sections, five
//! consent ids, times 0..50) so that overlaps, conflicts, revocations of unknown consents and
//! expiry boundaries happen often. Some records are invalid on purpose.

use proptest::prelude::*;
use weft_consent::{
    active_grants, evaluate, next_transition, Access, Action, AgencyId, AllowReason,
    CollectionMethod, ConsentId, ConsentRecord, ConsentSet, Decision, DenyReason, Grantor,
    Provision, Purpose, Recorder, Relationship, Revocation, RevocationId, Timestamp,
};

const HOME: &str = "home.example";
const AGENCIES: [&str; 4] = [
    HOME,
    "school.example",
    "clinic.example",
    "nutrition.example",
];
const SECTIONS: [&str; 3] = ["health", "goals", "notes/clinic.example"];
const ACTIONS: [Action; 2] = [Action::Read, Action::Write];

fn agency(s: &str) -> AgencyId {
    AgencyId::parse(s).expect("test agency id")
}

fn home() -> AgencyId {
    agency(HOME)
}

fn an_agency() -> impl Strategy<Value = AgencyId> {
    prop::sample::select(AGENCIES.as_slice()).prop_map(agency)
}

fn a_disclosing_agency() -> impl Strategy<Value = AgencyId> {
    prop_oneof![6 => Just(home()), 1 => Just(agency("school.example"))]
}

fn a_consent_id() -> impl Strategy<Value = ConsentId> {
    (0..5u8).prop_map(|n| ConsentId::parse(&format!("c{n}")).expect("consent id"))
}

fn a_provision() -> impl Strategy<Value = Provision> {
    (
        an_agency(),
        prop::collection::vec(prop::sample::select(SECTIONS.as_slice()), 0..3),
        prop_oneof![Just(Access::Read), Just(Access::ReadWrite)],
        prop_oneof![
            Just(Purpose::CareCoordination),
            Just(Purpose::Referral),
            Just(Purpose::Evaluation)
        ],
        0i64..30,
        prop::option::weighted(0.9, 0i64..50),
    )
        .prop_map(
            |(grantee, sections, access, purpose, from, until)| Provision {
                grantee,
                sections: sections.into_iter().map(str::to_owned).collect(),
                access,
                purpose,
                valid_from: Timestamp(from),
                valid_until: until.map(Timestamp),
            },
        )
}

fn a_consent() -> impl Strategy<Value = ConsentRecord> {
    (
        a_consent_id(),
        a_disclosing_agency(),
        prop_oneof![9 => Just("A. Guardian"), 1 => Just("")],
        prop_oneof![9 => 1i64..50, 1 => Just(0i64)],
        prop::collection::vec(a_provision(), 0..3),
    )
        .prop_map(
            |(id, disclosing, name, recorded_at, provisions)| ConsentRecord {
                id,
                subject: "6f1c2a9e-0d4b-4c55-9a43-0a3c1d6e2b7f".into(),
                grantor: Grantor {
                    name: name.into(),
                    relationship: Relationship::Parent,
                },
                recorded_by: Recorder {
                    agency: disclosing.clone(),
                    user: "coordinator".into(),
                },
                disclosing_agency: disclosing,
                recorded_at: Timestamp(recorded_at),
                collection_method: CollectionMethod::PaperForm,
                provisions,
            },
        )
}

fn a_revocation() -> impl Strategy<Value = Revocation> {
    (0..4u8, a_consent_id(), 1i64..50).prop_map(|(n, consent, at)| Revocation {
        id: RevocationId::parse(&format!("r{n}")).expect("revocation id"),
        consent,
        revoked_by: Recorder {
            agency: home(),
            user: "coordinator".into(),
        },
        revoked_at: Timestamp(at),
        reason: None,
    })
}

#[derive(Debug, Clone)]
enum Item {
    Consent(ConsentRecord),
    Revocation(Revocation),
}

fn records() -> impl Strategy<Value = (Vec<ConsentRecord>, Vec<Revocation>)> {
    (
        prop::collection::vec(a_consent(), 0..6),
        prop::collection::vec(a_revocation(), 0..3),
    )
}

fn build(consents: &[ConsentRecord], revocations: &[Revocation]) -> ConsentSet {
    let mut set = ConsentSet::new();
    set.extend(consents.iter().cloned());
    set.extend(revocations.iter().cloned());
    set
}

fn build_from_items(items: &[Item]) -> ConsentSet {
    let mut set = ConsentSet::new();
    for item in items {
        match item {
            Item::Consent(c) => set.add_consent(c.clone()),
            Item::Revocation(r) => set.add_revocation(r.clone()),
        };
    }
    set
}

/// Every (agency, section, action) decision at `now`.
fn all_decisions(set: &ConsentSet, now: Timestamp) -> Vec<Decision> {
    let mut out = Vec::new();
    for a in AGENCIES {
        for s in SECTIONS {
            for action in ACTIONS {
                out.push(evaluate(set, &agency(a), &home(), s, action, now));
            }
        }
    }
    out
}

/// Records, plus the same records interleaved and shuffled.
fn records_and_shuffle() -> impl Strategy<Value = (Vec<ConsentRecord>, Vec<Revocation>, Vec<Item>)>
{
    records().prop_flat_map(|(consents, revocations)| {
        let items: Vec<Item> = consents
            .iter()
            .cloned()
            .map(Item::Consent)
            .chain(revocations.iter().cloned().map(Item::Revocation))
            .collect();
        (
            Just(consents),
            Just(revocations),
            Just(items).prop_shuffle(),
        )
    })
}

proptest! {
    #[test]
    fn insertion_order_never_changes_a_decision(
        (consents, revocations, shuffled) in records_and_shuffle(),
        now in 0i64..55,
    ) {
        let now = Timestamp(now);
        let ordered = build(&consents, &revocations);
        let mixed = build_from_items(&shuffled);
        prop_assert_eq!(&ordered, &mixed);
        prop_assert_eq!(all_decisions(&ordered, now), all_decisions(&mixed, now));
        prop_assert_eq!(
            active_grants(&ordered, &home(), now),
            active_grants(&mixed, &home(), now)
        );
        prop_assert_eq!(
            next_transition(&ordered, &home(), now),
            next_transition(&mixed, &home(), now)
        );
    }

    #[test]
    fn a_revocation_never_turns_deny_into_allow(
        (consents, revocations) in records(),
        extra in a_revocation(),
        now in 0i64..55,
    ) {
        let now = Timestamp(now);
        let before = build(&consents, &revocations);
        let mut after = before.clone();
        after.add_revocation(extra);
        for (b, a) in all_decisions(&before, now).iter().zip(all_decisions(&after, now).iter()) {
            prop_assert!(b.is_allow() || !a.is_allow(), "{} became {}", b, a);
        }
        let grants_after = active_grants(&after, &home(), now);
        let grants_before = active_grants(&before, &home(), now);
        for (agency, section, access, _) in &grants_after {
            let kept = grants_before
                .iter()
                .any(|(a, s, acc, _)| a == agency && s == section && acc >= access);
            prop_assert!(kept, "a revocation widened a grant");
        }
    }

    /// Every allow rests on a provision that is in force: a valid, unambiguous, unrevoked
    /// consent from the plan's home, naming the agency and section, with
    /// `valid_from <= now < valid_until` and access that permits the action.
    #[test]
    fn every_allow_rests_on_a_provision_in_force(
        (consents, revocations) in records(),
        now in 0i64..55,
    ) {
        let now = Timestamp(now);
        let set = build(&consents, &revocations);
        for a in AGENCIES {
            for s in SECTIONS {
                for action in ACTIONS {
                    let decision = evaluate(&set, &agency(a), &home(), s, action, now);
                    let Decision::Allow(AllowReason::Consent { consent, until, access, .. }) =
                        decision
                    else {
                        continue;
                    };
                    prop_assert!(now < until, "expired consent allowed");
                    prop_assert!(access.permits(action));
                    prop_assert!(set.is_revoked(&consent).is_none());
                    let record = set.consent(&consent);
                    prop_assert!(record.is_some(), "allowed by an unknown or conflicting id");
                    let record = record.expect("checked above");
                    prop_assert!(record.validate().is_ok());
                    prop_assert_eq!(&record.disclosing_agency, &home());
                    let in_force = record.provisions.iter().any(|p| {
                        p.grantee.as_str() == a
                            && p.covers(s)
                            && p.is_active_at(now)
                            && p.valid_until == Some(until)
                            && p.access.permits(action)
                    });
                    prop_assert!(in_force, "no provision in force backs the allow");
                }
            }
        }
    }

    #[test]
    fn an_expired_consent_never_allows(
        (consents, revocations) in records(),
        now in 0i64..55,
    ) {
        let now = Timestamp(now);
        // Force every provision to have ended by `now`.
        let expired: Vec<ConsentRecord> = consents
            .into_iter()
            .map(|mut c| {
                for p in &mut c.provisions {
                    p.valid_until = p.valid_until.map(|u| u.min(now));
                }
                c
            })
            .collect();
        let set = build(&expired, &revocations);
        for a in AGENCIES.iter().filter(|a| **a != HOME) {
            for s in SECTIONS {
                for action in ACTIONS {
                    let d = evaluate(&set, &agency(a), &home(), s, action, now);
                    prop_assert!(!d.is_allow(), "{}", d);
                }
            }
        }
        prop_assert!(active_grants(&set, &home(), now).is_empty());
    }

    #[test]
    fn without_consents_every_other_agency_is_denied(
        revocations in prop::collection::vec(a_revocation(), 0..3),
        now in any::<i64>(),
        section in "[a-z_/.-]{0,20}",
    ) {
        let set = build(&[], &revocations);
        for a in AGENCIES.iter().filter(|a| **a != HOME) {
            for action in ACTIONS {
                prop_assert_eq!(
                    evaluate(&set, &agency(a), &home(), &section, action, Timestamp(now)),
                    Decision::Deny(DenyReason::NoConsent)
                );
            }
        }
    }

    #[test]
    fn the_home_agency_is_always_allowed(
        (consents, revocations) in records(),
        now in any::<i64>(),
        section in "[a-z_/.-]{0,20}",
    ) {
        let set = build(&consents, &revocations);
        for action in ACTIONS {
            prop_assert_eq!(
                evaluate(&set, &home(), &home(), &section, action, Timestamp(now)),
                Decision::Allow(AllowReason::HomeAgency)
            );
        }
    }

    #[test]
    fn active_grants_agree_with_evaluate(
        (consents, revocations) in records(),
        now in 0i64..55,
    ) {
        let now = Timestamp(now);
        let set = build(&consents, &revocations);
        let grants = active_grants(&set, &home(), now);
        for a in AGENCIES.iter().filter(|a| **a != HOME) {
            for s in SECTIONS {
                let listed = grants.iter().find(|(ga, gs, _, _)| ga.as_str() == *a && gs == s);
                let read = evaluate(&set, &agency(a), &home(), s, Action::Read, now);
                let write = evaluate(&set, &agency(a), &home(), s, Action::Write, now);
                match listed {
                    None => prop_assert!(!read.is_allow()),
                    Some((_, _, access, consent)) => {
                        prop_assert!(read.is_allow());
                        prop_assert_eq!(write.is_allow(), *access == Access::ReadWrite);
                        let relied = if write.is_allow() { &write } else { &read };
                        prop_assert_eq!(relied.consent(), Some(consent));
                    }
                }
            }
        }
        // Sorted and one entry per (agency, section).
        let keys: Vec<_> = grants.iter().map(|(a, s, _, _)| (a, s)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(keys, sorted);
    }

    #[test]
    fn decisions_only_change_at_a_transition(
        (consents, revocations) in records(),
        now in 0i64..55,
    ) {
        let now = Timestamp(now);
        let set = build(&consents, &revocations);
        let grants_now = active_grants(&set, &home(), now);
        let next = next_transition(&set, &home(), now).map_or(60, |t| t.as_millis());
        for t in now.as_millis()..next {
            prop_assert_eq!(&active_grants(&set, &home(), Timestamp(t)), &grants_now);
        }
    }
}

/// Positive control: the generators above must reach every kind of decision, or the
/// properties would pass vacuously.
#[test]
fn generators_reach_every_kind_of_decision() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;

    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let (consents, revocations) = records()
            .new_tree(&mut runner)
            .expect("generate records")
            .current();
        let now = Timestamp(25);
        let set = build(&consents, &revocations);
        for decision in all_decisions(&set, now) {
            let kind = match decision {
                Decision::Allow(AllowReason::HomeAgency) => "home",
                Decision::Allow(AllowReason::Consent { .. }) => "consent",
                Decision::Deny(DenyReason::NoConsent) => "no_consent",
                Decision::Deny(DenyReason::Revoked { .. }) => "revoked",
                Decision::Deny(DenyReason::Expired { .. }) => "expired",
                Decision::Deny(DenyReason::NotYetValid { .. }) => "not_yet_valid",
                Decision::Deny(DenyReason::ReadOnly { .. }) => "read_only",
                Decision::Deny(DenyReason::InvalidRecord { .. }) => "invalid",
                Decision::Deny(DenyReason::ConflictingRecords { .. }) => "conflicting",
            };
            seen.insert(kind);
        }
    }
    let all: BTreeSet<_> = [
        "home",
        "consent",
        "no_consent",
        "revoked",
        "expired",
        "not_yet_valid",
        "read_only",
        "invalid",
        "conflicting",
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, all);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every valid record survives sign → store → load → verify unchanged, and every invalid
    /// one is refused at signing.
    #[test]
    fn signed_records_round_trip(consent in a_consent(), revocation in a_revocation()) {
        use weft_consent::ed25519_dalek::SigningKey;
        use weft_consent::{sign_consent, sign_revocation, SignedConsent, SignedRevocation};

        let key = SigningKey::from_bytes(&[3; 32]);
        let signer = consent.recorded_by.agency.clone();
        match sign_consent(&consent, &signer, &key) {
            Ok(signed) => {
                prop_assert!(consent.validate().is_ok());
                let loaded = SignedConsent::from_bytes(&signed.to_bytes());
                prop_assert_eq!(loaded.as_ref(), Ok(&signed));
                prop_assert_eq!(signed.verify(&key.verifying_key()), Ok(consent));
            }
            Err(_) => prop_assert!(consent.validate().is_err()),
        }
        let signed = sign_revocation(&revocation, &home(), &key);
        prop_assert!(signed.is_ok());
        let signed = signed.expect("checked above");
        let json = serde_json::to_string(&signed).expect("serialize envelope");
        let loaded: SignedRevocation = serde_json::from_str(&json).expect("parse envelope");
        prop_assert_eq!(loaded.verify(&key.verifying_key()), Ok(revocation));
    }
}
