//! Every bad input gets a clear error naming what is wrong, and leaves the store unchanged:
//! no section change, no feed entry, no audit entry.

use weft_proto::v1 as pb;
use weft_tests::{Cluster, TestNode};

fn fv(section: &str, field: &str, value: &str) -> pb::FieldValue {
    pb::FieldValue {
        section: section.into(),
        field: field.into(),
        value: value.into(),
    }
}

async fn counters(node: &TestNode) -> anyhow::Result<(u64, u64)> {
    // Read the store's counters in-process, so that checking does not itself add audit entries.
    let stats = node.node().service().store().stats().await?;
    Ok((stats.feed_seq, stats.audit_entries))
}

#[tokio::test]
async fn bad_field_edits_are_rejected_and_change_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    let mut plans = school.plans(&school.coordinator_token).await?;
    let before_profile = school
        .section(&school.coordinator_token, &plan, "profile")
        .await?;
    let before = counters(school).await?;

    let long = "x".repeat(101);
    let cases: Vec<(Vec<pb::FieldValue>, &str)> = vec![
        (vec![fv("grades", "math", "A")], "unknown section `grades`"),
        (
            vec![fv("profile", "shoe_size", "3")],
            "section `profile` has no field `shoe_size`",
        ),
        (
            vec![fv("profile", "tier", "five")],
            "profile.tier: expected a whole number between 1 and 4",
        ),
        (
            vec![fv("profile", "tier", "9")],
            "profile.tier: must be between 1 and 4",
        ),
        (
            vec![fv("profile", "date_of_birth", "2015-13-01")],
            "profile.date_of_birth: expected a date as YYYY-MM-DD",
        ),
        (
            vec![fv("academic", "iep", "maybe")],
            "academic.iep: expected true or false",
        ),
        (
            vec![fv("nutrition", "meal_program", "lots")],
            "nutrition.meal_program: expected one of none, free, reduced, paid",
        ),
        (
            vec![fv("profile", "given_name", &long)],
            "profile.given_name: 101 characters is over the limit of 100",
        ),
        (
            vec![fv("goals", "goals", "[]")],
            "changed with its own commands",
        ),
        (
            vec![fv("notes/Not An Agency", "notes", "x")],
            "notes sections are `notes/<agency id>`",
        ),
        // One bad field spoils the whole request: the good one is not written either.
        (
            vec![fv("profile", "grade", "3"), fv("profile", "tier", "0")],
            "profile.tier",
        ),
        (vec![], "no fields to set"),
    ];
    for (fields, expected) in cases {
        let err = plans
            .set_fields(pb::SetFieldsRequest {
                plan_id: plan.clone(),
                fields: fields.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{fields:?}: {}",
            err.message()
        );
        assert!(
            err.message().contains(expected),
            "{fields:?}: `{}` lacks `{expected}`",
            err.message()
        );
        assert_eq!(
            counters(school).await?,
            before,
            "{fields:?} changed the store"
        );
    }

    // Bad ids.
    let err = plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: "not-a-uuid".into(),
            fields: vec![fv("profile", "grade", "3")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("plan id must be a UUID"));
    let err = plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: uuid::Uuid::new_v4().to_string(),
            fields: vec![fv("profile", "grade", "3")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Goals and referrals.
    let mut goals = school.goals(&school.coordinator_token).await?;
    let bad_goal = |domain: &str, horizon: &str, text: &str| pb::AddGoalRequest {
        plan_id: plan.clone(),
        domain: domain.into(),
        text: text.into(),
        horizon: horizon.into(),
        target_date: String::new(),
    };
    for (req, expected) in [
        (
            bad_goal("cooking", "short", "x"),
            "goals.domain: expected one of academic",
        ),
        (
            bad_goal("academic", "medium", "x"),
            "goals.horizon: expected one of short, long",
        ),
        (bad_goal("academic", "short", " "), "a goal needs a text"),
    ] {
        let err = goals.add_goal(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(expected), "{}", err.message());
    }
    let err = goals
        .update_goal(pb::UpdateGoalRequest {
            plan_id: plan.clone(),
            goal_id: "g-nope".into(),
            note: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut refs = school.referrals(&school.coordinator_token).await?;
    let err = refs
        .add_referral(pb::AddReferralRequest {
            plan_id: plan.clone(),
            service: "tutoring".into(),
            provider_agency: "Not An Agency".into(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("services.provider_agency"),
        "{}",
        err.message()
    );
    assert_eq!(counters(school).await?, before);

    // A referral moves only forward.
    let r = refs
        .add_referral(pb::AddReferralRequest {
            plan_id: plan.clone(),
            service: "tutoring".into(),
            provider_agency: "library.test".into(),
            note: String::new(),
        })
        .await?
        .into_inner();
    let after_add = counters(school).await?;
    let err = refs
        .update_referral(pb::UpdateReferralRequest {
            plan_id: plan.clone(),
            referral_id: r.referral_id.clone(),
            status: "completed".into(),
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("a referral that is proposed cannot move to completed"),
        "{}",
        err.message()
    );
    assert_eq!(counters(school).await?, after_add);

    // A message over the size limit is refused before it reaches the service.
    let huge = "y".repeat(5 << 20);
    let err = plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![fv("profile", "notes", &huge)],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{err:?}"
    );
    assert_eq!(counters(school).await?, after_add);
    // A notes value over its own limit, but under the message limit.
    let err = plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![fv("profile", "notes", &"z".repeat(8001))],
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("profile.notes: 8001 characters is over the limit of 8000"),
        "{}",
        err.message()
    );
    assert_eq!(counters(school).await?, after_add);

    let after_profile = school
        .section(&school.coordinator_token, &plan, "profile")
        .await?;
    assert_eq!(before_profile, after_profile);
    cluster.stop().await
}
