//! Consent enforced by the node: partner staff see exactly what the family consented to,
//! for exactly as long as it lasts; guardians manage their own child's consents; denials,
//! grants, revocations and expiries are audited; consents export as FHIR.

use std::time::Duration;

use serde_json::Value as Json;
use tonic::Code;
use weft_proto::v1 as pb;
use weft_tests::{Cluster, TestNode};

use weft_tests::grant_request as grant;

async fn read(node: &TestNode, token: &str, plan: &str, section: &str) -> Result<Json, Code> {
    node.section(token, plan, section).await.map_err(|e| {
        e.downcast_ref::<tonic::Status>()
            .map(|s| s.code())
            .unwrap_or(Code::Unknown)
    })
}

async fn add_goal(
    node: &TestNode,
    token: &str,
    plan: &str,
    text: &str,
) -> Result<String, tonic::Status> {
    let mut goals = node.goals(token).await.unwrap();
    goals
        .add_goal(pb::AddGoalRequest {
            plan_id: plan.into(),
            domain: "health".into(),
            text: text.into(),
            horizon: "short".into(),
            target_date: String::new(),
        })
        .await
        .map(|r| r.into_inner().goal_id)
}

#[tokio::test]
async fn partner_staff_get_exactly_what_was_consented_for_as_long_as_it_lasts() -> anyhow::Result<()>
{
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let coord = school.coordinator_token.clone();
    let plan = school.create_plan("Maya", "Example").await?;
    add_goal(school, &coord, &plan, "Asthma action plan at school").await?;
    school
        .plans(&coord)
        .await?
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![pb::FieldValue {
                section: "health".into(),
                field: "conditions".into(),
                value: "asthma".into(),
            }],
        })
        .await?;
    let clinic = school
        .add_partner("nurse.kim", "caseworker", "clinic.test")
        .await?;
    let mut consents = school.consents(&coord).await?;

    // Before any consent: nothing, not even that the plan exists in a listing.
    assert_eq!(
        read(school, &clinic, &plan, "goals").await,
        Err(Code::PermissionDenied)
    );
    assert!(add_goal(school, &clinic, &plan, "x").await.is_err());
    let listed = school
        .plans(&clinic)
        .await?
        .list_plans(pb::ListPlansRequest::default())
        .await?
        .into_inner();
    assert!(listed.plans.is_empty());
    let err = school
        .plans(&clinic)
        .await?
        .get_plan(pb::GetPlanRequest {
            plan_id: plan.clone(),
            sections: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "a plan with nothing consented is not theirs to know of"
    );

    // A read consent for goals: goals readable, nothing else, and no writing.
    let read_only = consents
        .grant(grant(
            &plan,
            "clinic.test",
            &["goals"],
            "read",
            "2027-06-30",
        ))
        .await?
        .into_inner();
    assert_eq!(read_only.state, "active");
    assert_eq!(read_only.signer, "school.test");
    let goals = read(school, &clinic, &plan, "goals")
        .await
        .expect("goals readable");
    assert_eq!(goals["goals"].as_object().unwrap().len(), 1);
    assert_eq!(
        read(school, &clinic, &plan, "health").await,
        Err(Code::PermissionDenied)
    );
    assert_eq!(
        read(school, &clinic, &plan, "profile").await,
        Err(Code::PermissionDenied)
    );
    let err = add_goal(school, &clinic, &plan, "clinic goal")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("read"), "{}", err.message());
    let listed = school
        .plans(&clinic)
        .await?
        .list_plans(pb::ListPlansRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.plans.len(), 1);
    assert_eq!(
        listed.plans[0].display_name, "",
        "no profile consent, so no name"
    );
    let all = school
        .plans(&clinic)
        .await?
        .get_plan(pb::GetPlanRequest {
            plan_id: plan.clone(),
            sections: vec![],
        })
        .await?
        .into_inner();
    assert_eq!(
        all.sections
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["goals"]
    );

    // read_write: the clinic may add goals, as itself.
    let rw = consents
        .grant(grant(
            &plan,
            "clinic.test",
            &["goals"],
            "read_write",
            "2027-06-30",
        ))
        .await?
        .into_inner();
    // Consent ids are unique across the federation: 128 random bits, not a plan-local id.
    for id in [&read_only.consent_id, &rw.consent_id] {
        let hex = id.strip_prefix("c-").expect("a consent id starts with c-");
        assert!(
            hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert_ne!(read_only.consent_id, rw.consent_id);
    add_goal(school, &clinic, &plan, "Inhaler check every visit").await?;
    let history = school
        .plans(&coord)
        .await?
        .plan_history(pb::PlanHistoryRequest {
            plan_id: plan.clone(),
        })
        .await?
        .into_inner();
    assert!(history
        .entries
        .iter()
        .any(|e| e.agency == "clinic.test" && e.user == "nurse.kim"));

    let explain = |agency: &str, section: &str, action: &str| pb::ExplainRequest {
        plan_id: plan.clone(),
        agency: agency.into(),
        section: section.into(),
        action: action.into(),
    };
    let e = consents
        .explain(explain("clinic.test", "goals", "write"))
        .await?
        .into_inner();
    assert!(
        e.allowed && e.reason.contains(&rw.consent_id),
        "{}",
        e.reason
    );
    let e = consents
        .explain(explain("clinic.test", "health", "read"))
        .await?
        .into_inner();
    assert!(!e.allowed, "{}", e.reason);
    let e = consents
        .explain(explain("nutrition.test", "goals", "read"))
        .await?
        .into_inner();
    assert!(!e.allowed);

    // Revoking the read_write consent stops writes at once; the read consent still reads.
    consents
        .revoke(pb::RevokeRequest {
            consent_id: rw.consent_id.clone(),
            reason: "family asked".into(),
        })
        .await?;
    assert_eq!(
        add_goal(school, &clinic, &plan, "late")
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert!(read(school, &clinic, &plan, "goals").await.is_ok());
    let err = consents
        .revoke(pb::RevokeRequest {
            consent_id: rw.consent_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    consents
        .revoke(pb::RevokeRequest {
            consent_id: read_only.consent_id.clone(),
            reason: String::new(),
        })
        .await?;
    assert_eq!(
        read(school, &clinic, &plan, "goals").await,
        Err(Code::PermissionDenied)
    );

    // Expiry, by the node's own clock: valid through 2027-06-30, then gone.
    let expiring = consents
        .grant(grant(
            &plan,
            "clinic.test",
            &["goals"],
            "read",
            "2027-06-30",
        ))
        .await?
        .into_inner();
    assert!(read(school, &clinic, &plan, "goals").await.is_ok());
    let until = expiring.provisions[0].valid_until_ms;
    let now = school.clock.now().as_millis();
    school
        .clock
        .advance(Duration::from_millis((until - now) as u64 - 1000));
    assert!(
        read(school, &clinic, &plan, "goals").await.is_ok(),
        "still valid on its last day"
    );
    school.clock.advance(Duration::from_secs(2));
    assert_eq!(
        read(school, &clinic, &plan, "goals").await,
        Err(Code::PermissionDenied)
    );
    let listed = consents
        .list(pb::ListConsentsRequest {
            plan_id: plan.clone(),
            subject_id: String::new(),
        })
        .await?
        .into_inner();
    let states: std::collections::BTreeMap<&str, &str> = listed
        .consents
        .iter()
        .map(|c| (c.consent_id.as_str(), c.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [
            (read_only.consent_id.as_str(), "revoked"),
            (rw.consent_id.as_str(), "revoked"),
            (expiring.consent_id.as_str(), "expired")
        ]
        .into_iter()
        .collect()
    );

    // The audit log has the grants, revocations, the expiry and every denial of the clinic.
    let log = school
        .admin(&school.admin_token)
        .await?
        .audit_log(pb::AuditLogRequest {
            plan_id: plan.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let count = |action: &str, outcome: &str, user: &str| {
        log.entries
            .iter()
            .filter(|e| {
                e.action == action && e.outcome == outcome && (user.is_empty() || e.user == user)
            })
            .count()
    };
    assert_eq!(count("consent_grant", "ok", "coordinator"), 3);
    assert_eq!(count("consent_revoke", "ok", "coordinator"), 2);
    assert_eq!(count("consent_expire", "ok", "-"), 1);
    let clinic_denials: Vec<&pb::AuditEntry> = log
        .entries
        .iter()
        .filter(|e| e.user == "nurse.kim" && e.outcome == "denied")
        .collect();
    assert!(clinic_denials.len() >= 7, "{clinic_denials:?}");
    assert!(clinic_denials
        .iter()
        .all(|e| e.agency == "clinic.test" && e.detail == "consent"));

    // The family's record of disclosures shows the clinic's reads and under which consent.
    let disclosures = consents
        .disclosures(pb::DisclosuresRequest {
            plan_id: plan.clone(),
        })
        .await?
        .into_inner();
    let clinic_reads: Vec<&pb::Disclosure> = disclosures
        .disclosures
        .iter()
        .filter(|d| d.agency == "clinic.test" && d.action == "read")
        .collect();
    assert!(!clinic_reads.is_empty());
    assert!(clinic_reads
        .iter()
        .any(|d| d.basis == format!("consent {} (care_coordination)", read_only.consent_id)));
    assert!(disclosures
        .disclosures
        .iter()
        .any(|d| d.agency == "school.test" && d.basis == "home agency"));
    let times: Vec<i64> = disclosures.disclosures.iter().map(|d| d.time_ms).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    cluster.stop().await
}

#[tokio::test]
async fn guardians_manage_their_own_childs_consents_only() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let mine = school.create_plan("Maya", "Example").await?;
    let theirs = school.create_plan("Leo", "Other").await?;
    let parent = school.add_user("rosa", "guardian", &[&mine]).await?;
    let mut consents = school.consents(&parent).await?;

    let mut request = grant(
        &mine,
        "clinic.test",
        &["goals", "health"],
        "read",
        "2027-01-31",
    );
    request.method = "paper_form".into();
    let c = consents.grant(request).await?.into_inner();
    assert_eq!(
        c.method, "e_signature",
        "a guardian's own grant is an e-signature"
    );
    assert_eq!(c.recorded_by, "school.test/rosa");
    let listed = consents
        .list(pb::ListConsentsRequest {
            plan_id: mine.clone(),
            subject_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(listed.consents.len(), 1);

    // Another child's plan: not found, for granting, listing and reading alike.
    for err in [
        consents
            .grant(grant(
                &theirs,
                "clinic.test",
                &["goals"],
                "read",
                "2027-01-31",
            ))
            .await
            .unwrap_err(),
        consents
            .list(pb::ListConsentsRequest {
                plan_id: theirs.clone(),
                subject_id: String::new(),
            })
            .await
            .unwrap_err(),
        consents
            .disclosures(pb::DisclosuresRequest {
                plan_id: theirs.clone(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    // A caseworker of the school cannot record consents; a coordinator can revoke the parent's.
    let caseworker = school.add_user("cara", "caseworker", &[]).await?;
    let err = school
        .consents(&caseworker)
        .await?
        .grant(grant(
            &mine,
            "clinic.test",
            &["goals"],
            "read",
            "2027-01-31",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    consents
        .revoke(pb::RevokeRequest {
            consent_id: c.consent_id.clone(),
            reason: "changed my mind".into(),
        })
        .await?;
    let got = consents
        .get(pb::GetConsentRequest {
            consent_id: c.consent_id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got.state, "revoked");
    assert_eq!(got.revoked_by, "school.test/rosa");
    assert_eq!(got.revocation_reason, "changed my mind");

    // The family reads its record of disclosures.
    school
        .section(&school.coordinator_token, &mine, "profile")
        .await?;
    let d = consents
        .disclosures(pb::DisclosuresRequest {
            plan_id: mine.clone(),
        })
        .await?
        .into_inner();
    assert!(d
        .disclosures
        .iter()
        .any(|x| x.user == "coordinator" && x.action == "read" && x.sections == ["profile"]));
    cluster.stop().await
}

#[tokio::test]
async fn bad_consents_are_refused_naming_what_is_wrong() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    let mut consents = school.consents(&school.coordinator_token).await?;
    let before = school.node().service().store().stats().await?;
    let cases: Vec<(pb::GrantRequest, &str)> = vec![
        (
            grant(&plan, "clinic.test", &["goals"], "read", ""),
            "expiry of provision 1",
        ),
        (
            grant(&plan, "school.test", &["goals"], "read", "2027-01-31"),
            "disclosing agency",
        ),
        (
            grant(&plan, "clinic.test", &[], "read", "2027-01-31"),
            "sections of provision 1",
        ),
        (
            grant(&plan, "clinic.test", &["grades"], "read", "2027-01-31"),
            "unknown section `grades`",
        ),
        (
            grant(&plan, "clinic.test", &["goals"], "everything", "2027-01-31"),
            "access",
        ),
        (
            grant(&plan, "Clinic Test", &["goals"], "read", "2027-01-31"),
            "grantee agency",
        ),
        (
            grant(&plan, "clinic.test", &["goals"], "read", "2020-01-31"),
            "already have expired",
        ),
        (
            grant(&plan, "clinic.test", &["goals"], "read", "31/01/2027"),
            "valid_until: expected a date",
        ),
        (
            pb::GrantRequest {
                grantor_name: String::new(),
                ..grant(&plan, "clinic.test", &["goals"], "read", "2027-01-31")
            },
            "grantor name",
        ),
        (
            pb::GrantRequest {
                purpose: "marketing".into(),
                ..grant(&plan, "clinic.test", &["goals"], "read", "2027-01-31")
            },
            "purpose",
        ),
    ];
    for (req, expected) in cases {
        let err = consents.grant(req.clone()).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{req:?}: {}",
            err.message()
        );
        assert!(
            err.message().contains(expected),
            "`{}` lacks `{expected}`",
            err.message()
        );
    }
    assert_eq!(
        school.node().service().store().stats().await?,
        before,
        "refused consents changed the store"
    );
    let err = consents
        .revoke(pb::RevokeRequest {
            consent_id: "c-nope".into(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    cluster.stop().await
}

#[tokio::test]
async fn consents_export_as_fhir_r4() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    let mut consents = school.consents(&school.coordinator_token).await?;
    let c = consents
        .grant(grant(
            &plan,
            "clinic.test",
            &["goals", "health"],
            "read_write",
            "2027-06-30",
        ))
        .await?
        .into_inner();
    let bundle: Json = serde_json::from_str(
        &consents
            .export_fhir(pb::ExportFhirRequest {
                plan_id: plan.clone(),
            })
            .await?
            .into_inner()
            .bundle_json,
    )?;
    assert_eq!(bundle["resourceType"], "Bundle");
    let r = &bundle["entry"][0]["resource"];
    assert_eq!(r["resourceType"], "Consent");
    assert_eq!(r["id"], c.consent_id.as_str());
    assert_eq!(r["status"], "active");
    assert_eq!(r["patient"]["identifier"]["value"], c.subject_id.as_str());
    assert_eq!(r["organization"][0]["identifier"]["value"], "school.test");
    let permit = &r["provision"]["provision"][0];
    assert_eq!(
        permit["actor"][0]["reference"]["identifier"]["value"],
        "clinic.test"
    );
    assert_eq!(permit["period"]["end"], "2027-07-01T00:00:00.000Z");
    assert_eq!(permit["action"].as_array().unwrap().len(), 2);
    consents
        .revoke(pb::RevokeRequest {
            consent_id: c.consent_id.clone(),
            reason: String::new(),
        })
        .await?;
    let bundle: Json = serde_json::from_str(
        &consents
            .export_fhir(pb::ExportFhirRequest {
                plan_id: plan.clone(),
            })
            .await?
            .into_inner()
            .bundle_json,
    )?;
    assert_eq!(bundle["entry"][0]["resource"]["status"], "inactive");
    cluster.stop().await
}

#[tokio::test]
async fn partner_staff_hold_no_rights_beyond_consented_sections() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    // Partner staff are caseworkers only.
    let err = school
        .add_partner("clinic.lead", "coordinator", "clinic.test")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("partner-agency staff are added as caseworkers"),
        "{err}"
    );
    let kim = school
        .add_partner("nurse.kim", "caseworker", "clinic.test")
        .await?;
    school
        .grant_as_coordinator(&plan, "clinic.test", &["goals"], "read", "2027-06-30")
        .await?;

    let err = school
        .plans(&kim)
        .await?
        .create_plan(pb::CreatePlanRequest {
            given_name: "A".into(),
            family_name: "B".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = school
        .admin(&kim)
        .await?
        .audit_log(pb::AuditLogRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = school
        .users(&kim)
        .await?
        .list_users(pb::ListUsersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = school
        .consents(&kim)
        .await?
        .explain(pb::ExplainRequest {
            plan_id: plan.clone(),
            agency: "mh.test".into(),
            section: "behavioral_health".into(),
            action: "read".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let own = school
        .consents(&kim)
        .await?
        .explain(pb::ExplainRequest {
            plan_id: plan.clone(),
            agency: "clinic.test".into(),
            section: "goals".into(),
            action: "read".into(),
        })
        .await?
        .into_inner();
    assert!(own.allowed);
    // What they may read, they read; the list of withheld sections names no agency's notes.
    assert!(read(school, &kim, &plan, "goals").await.is_ok());
    let log = school
        .admin(&school.admin_token)
        .await?
        .audit_log(pb::AuditLogRequest::default())
        .await?
        .into_inner();
    let partner_denials = log
        .entries
        .iter()
        .filter(|e| e.user == "nurse.kim" && e.detail == "partner")
        .count();
    assert_eq!(partner_denials, 4);
    cluster.stop().await
}

/// A revocation whose caller goes away once it is stored (a client that hangs up) still
/// reaches the gate: the consent cache is refreshed in the store's own task, not the
/// caller's. (It was refreshed by the caller: the set from before the revocation stayed
/// cached, and the gate allowed what the revocation forbids, until the next change.)
#[tokio::test]
async fn a_revocation_takes_effect_even_if_its_caller_goes_away_once_it_is_stored(
) -> anyhow::Result<()> {
    use weft_node::storage::ConsentKind;

    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let coord = school.coordinator_token.clone();
    let plan = school.create_plan("Maya", "Example").await?;
    add_goal(school, &coord, &plan, "Asthma action plan at school").await?;
    let clinic = school
        .add_partner("nurse.kim", "caseworker", "clinic.test")
        .await?;
    let consent = school
        .consents(&coord)
        .await?
        .grant(grant(
            &plan,
            "clinic.test",
            &["goals"],
            "read",
            "2027-06-30",
        ))
        .await?
        .into_inner()
        .consent_id;
    assert!(read(school, &clinic, &plan, "goals").await.is_ok());

    let svc = school.node().service().clone();
    let caller = svc.authenticate(Some(&coord)).await?;
    let subject = svc
        .store()
        .consent_by_id(&consent)
        .await?
        .expect("the consent is stored")
        .subject;
    let stored = || async {
        anyhow::Ok(
            svc.store()
                .consent_entries(Some(subject))
                .await?
                .iter()
                .any(|e| e.kind == ConsentKind::Revocation),
        )
    };
    // Polled by hand only while the revocation is not stored, and dropped as soon as it is:
    // whatever the call does after its commit, it does not do it here.
    let mut revoke = Box::pin(svc.revoke(&caller, &consent, Some("family withdrew")));
    loop {
        if stored().await? {
            drop(revoke);
            break;
        }
        if let std::task::Poll::Ready(r) = futures::poll!(&mut revoke) {
            // Seen through between two looks (rare): the cache must be fresh all the same.
            r?;
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let mut denied = false;
    for _ in 0..200 {
        if read(school, &clinic, &plan, "goals").await == Err(Code::PermissionDenied) {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        denied,
        "the revocation is stored, but the clinic still reads the goals"
    );
    Ok(())
}
