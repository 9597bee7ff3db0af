//! Plans over real gRPC + TLS: create, edit, read, converge, watch, restart.

use std::time::Duration;

use serde_json::Value as Json;
use weft_proto::v1 as pb;
use weft_tests::{eventually, Cluster, DEADLINE};

fn field(section: &str, field: &str, value: &str) -> pb::FieldValue {
    pb::FieldValue {
        section: section.into(),
        field: field.into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn create_edit_and_read_a_plan() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let token = &school.coordinator_token;
    let plan = school.create_plan("Maya", "Example").await?;

    let mut plans = school.plans(token).await?;
    let r = plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![
                field("profile", "grade", "4"),
                field("profile", "tier", "3"),
                field("health", "allergies", "peanuts; dust"),
                field("academic", "iep", "true"),
            ],
        })
        .await?
        .into_inner();
    let mut changed = r.sections.clone();
    changed.sort();
    assert_eq!(changed, ["academic", "health", "profile"]);

    let mut goals = school.goals(token).await?;
    let g = goals
        .add_goal(pb::AddGoalRequest {
            plan_id: plan.clone(),
            domain: "academic".into(),
            text: "Read 20 minutes daily".into(),
            horizon: "short".into(),
            target_date: "2027-06-30".into(),
        })
        .await?
        .into_inner();
    goals
        .update_goal(pb::UpdateGoalRequest {
            plan_id: plan.clone(),
            goal_id: g.goal_id.clone(),
            status: "in_progress".into(),
            note: "reading with her brother".into(),
            ..Default::default()
        })
        .await?;

    let mut refs = school.referrals(token).await?;
    let r = refs
        .add_referral(pb::AddReferralRequest {
            plan_id: plan.clone(),
            service: "counseling".into(),
            provider_agency: "clinic.test".into(),
            note: String::new(),
        })
        .await?
        .into_inner();
    for status in ["sent", "accepted"] {
        refs.update_referral(pb::UpdateReferralRequest {
            plan_id: plan.clone(),
            referral_id: r.referral_id.clone(),
            status: status.into(),
            note: String::new(),
        })
        .await?;
    }

    let all = plans
        .get_plan(pb::GetPlanRequest {
            plan_id: plan.clone(),
            sections: vec![],
        })
        .await?
        .into_inner();
    let section = |name: &str| -> Json {
        let s = all.sections.iter().find(|s| s.name == name).unwrap();
        serde_json::from_str(&s.content_json).unwrap()
    };
    assert_eq!(section("profile")["given_name"], "Maya");
    assert_eq!(section("profile")["grade"], "4");
    assert_eq!(section("profile")["tier"], 3);
    assert_eq!(
        section("health")["allergies"],
        serde_json::json!(["peanuts", "dust"])
    );
    assert_eq!(section("academic")["iep"], true);
    let goal = &section("goals")["goals"][&g.goal_id];
    assert_eq!(goal["status"], "in_progress");
    assert_eq!(goal["target_date"], "2027-06-30");
    assert_eq!(goal["progress"][0]["text"], "reading with her brother");
    assert_eq!(goal["progress"][0]["author"], "school.test/coordinator");
    let referral = &section("services")["referrals"][&r.referral_id];
    assert_eq!(referral["status"], "accepted");
    let steps: Vec<&str> = referral["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["proposed", "sent", "accepted"]);
    assert!(all.withheld.is_empty());

    // History names who changed what, never the values.
    let history = plans
        .plan_history(pb::PlanHistoryRequest {
            plan_id: plan.clone(),
        })
        .await?
        .into_inner();
    assert!(history
        .entries
        .iter()
        .all(|e| e.agency == "school.test" && e.user == "coordinator"));
    assert!(history
        .entries
        .iter()
        .any(|e| e.section == "health" && e.summary == "set health.allergies"));
    assert!(!history
        .entries
        .iter()
        .any(|e| e.summary.contains("peanuts")));

    // The list shows the plan with its name and tier.
    let list = plans
        .list_plans(pb::ListPlansRequest::default())
        .await?
        .into_inner();
    assert_eq!(list.plans.len(), 1);
    assert_eq!(list.plans[0].display_name, "Maya Example");
    assert_eq!(list.plans[0].tier, 3);
    cluster.stop().await
}

#[tokio::test]
async fn concurrent_edits_of_one_section_converge() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Sam", "Doe").await?;
    let ana = school.add_user("ana", "caseworker", &[]).await?;
    let ben = school.add_user("ben", "caseworker", &[]).await?;

    // Two clients, 20 goals each, at the same time, on the same section.
    let add = |token: String, who: &'static str| {
        let plan = plan.clone();
        let node = school;
        async move {
            let mut goals = node.goals(&token).await?;
            let mut ids = Vec::new();
            for i in 0..20 {
                let g = goals
                    .add_goal(pb::AddGoalRequest {
                        plan_id: plan.clone(),
                        domain: "social_emotional".into(),
                        text: format!("{who} goal {i}"),
                        horizon: "long".into(),
                        target_date: String::new(),
                    })
                    .await?
                    .into_inner();
                ids.push(g.goal_id);
            }
            anyhow::Ok(ids)
        }
    };
    let (a, b) = tokio::join!(add(ana.clone(), "ana"), add(ben.clone(), "ben"));
    let (a, b) = (a?, b?);
    let goals = school
        .section(&school.coordinator_token, &plan, "goals")
        .await?;
    for id in a.iter().chain(&b) {
        assert!(goals["goals"].get(id).is_some(), "goal {id} lost");
    }
    assert_eq!(goals["goals"].as_object().unwrap().len(), 40);

    // Both read the same value afterwards.
    let seen_by_ana = school.section(&ana, &plan, "goals").await?;
    let seen_by_ben = school.section(&ben, &plan, "goals").await?;
    assert_eq!(seen_by_ana, seen_by_ben);

    // Concurrent field edits to different fields of one section both land.
    let set = |token: String, f: &'static str, v: &'static str| {
        let plan = plan.clone();
        async move {
            school
                .plans(&token)
                .await?
                .set_fields(pb::SetFieldsRequest {
                    plan_id: plan,
                    fields: vec![field("family", f, v)],
                })
                .await?;
            anyhow::Ok(())
        }
    };
    let (x, y) = tokio::join!(
        set(ana, "housing", "stable"),
        set(ben, "household_size", "4")
    );
    x?;
    y?;
    let family = school
        .section(&school.coordinator_token, &plan, "family")
        .await?;
    assert_eq!(family["housing"], "stable");
    assert_eq!(family["household_size"], 4);
    cluster.stop().await
}

#[tokio::test]
async fn data_survives_a_restart_and_compaction() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder().start().await?;
    let plan = cluster
        .node("school.test")
        .create_plan("Lee", "Park")
        .await?;
    {
        let school = cluster.node("school.test");
        let mut plans = school.plans(&school.coordinator_token).await?;
        // More edits than the compaction threshold (8 in the sandbox).
        for i in 1..=20 {
            plans
                .set_fields(pb::SetFieldsRequest {
                    plan_id: plan.clone(),
                    fields: vec![field("academic", "attendance_rate", &(70 + i).to_string())],
                })
                .await?;
        }
    }
    cluster.node_mut("school.test").restart().await?;
    let school = cluster.node("school.test");
    let academic = school
        .section(&school.coordinator_token, &plan, "academic")
        .await?;
    assert_eq!(academic["attendance_rate"], 90);
    let profile = school
        .section(&school.coordinator_token, &plan, "profile")
        .await?;
    assert_eq!(profile["given_name"], "Lee");
    let history = school
        .plans(&school.coordinator_token)
        .await?
        .plan_history(pb::PlanHistoryRequest {
            plan_id: plan.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(
        history
            .entries
            .iter()
            .filter(|e| e.section == "academic")
            .count(),
        20
    );
    let verify = school
        .admin(&school.admin_token)
        .await?
        .verify_audit(pb::VerifyAuditRequest {})
        .await?
        .into_inner();
    assert!(verify.ok, "{}", verify.problem);
    cluster.stop().await
}

/// A watcher that falls behind the node's events is told so (ABORTED: watch again and
/// re-read) and its stream ends, rather than going on with changes silently missing.
#[tokio::test]
async fn a_watcher_that_falls_behind_is_told_and_its_stream_ends() -> anyhow::Result<()> {
    use futures::StreamExt;
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Ada", "Lovelace").await?;
    let svc = school.node().service().clone();
    let caller = svc.authenticate(Some(&school.coordinator_token)).await?;
    let events = svc
        .watch(&caller, weft_node::model::PlanId(plan.parse()?))
        .await?;
    let mut events = Box::pin(events);
    // More changes than the node keeps of a plan's events, while the watcher reads nothing.
    let mut plans = school.plans(&school.coordinator_token).await?;
    for i in 0..weft_node::service::KEPT_PER_PLAN + 20 {
        plans
            .set_fields(pb::SetFieldsRequest {
                plan_id: plan.clone(),
                fields: vec![field("profile", "preferred_name", &format!("Ada {i}"))],
            })
            .await?;
    }
    match events.next().await {
        Some(Err(weft_node::error::Error::Aborted(m))) => {
            assert!(m.contains("watch again"), "{m}")
        }
        Some(Ok(_)) => panic!("an event, where the watcher had missed some"),
        other => panic!("not the watch's refusal: {:?}", other.map(|r| r.err())),
    }
    assert!(events.next().await.is_none(), "the stream ended");
    cluster.stop().await
}

#[tokio::test]
async fn watchers_see_changes_as_they_happen() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Ada", "Lovelace").await?;
    let other = school.create_plan("Alan", "Turing").await?;
    let mut plans = school.plans(&school.coordinator_token).await?;
    let mut stream = plans
        .watch_plan(pb::WatchPlanRequest {
            plan_id: plan.clone(),
        })
        .await?
        .into_inner();
    // Changes to another plan are not sent on this stream.
    plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: other,
            fields: vec![field("profile", "grade", "2")],
        })
        .await?;
    let unix_us = || weft_node::api::convert::unix_us(std::time::SystemTime::now());
    let before = unix_us();
    let answer = plans
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![field("nutrition", "meal_program", "free")],
        })
        .await?
        .into_inner();
    let after = unix_us();
    let ev = tokio::time::timeout(DEADLINE, stream.message())
        .await??
        .expect("an event");
    assert_eq!(ev.plan_id, plan);
    assert_eq!(ev.section, "nutrition");
    assert_eq!(ev.user, "coordinator");
    assert_eq!(ev.summary, "set nutrition.meal_program");
    // The answer and the event say when the change was durable here (one clock).
    assert!(
        (before..=after).contains(&answer.durable_unix_us),
        "{before} <= {} <= {after}",
        answer.durable_unix_us
    );
    assert_eq!(ev.durable_unix_us, answer.durable_unix_us);
    // And the write is readable once the event arrived.
    let n = eventually("nutrition to read back", Duration::from_secs(5), || async {
        let v = school
            .section(&school.coordinator_token, &plan, "nutrition")
            .await?;
        Ok((v["meal_program"] == "free").then_some(v))
    })
    .await?;
    assert_eq!(n["meal_program"], "free");
    cluster.stop().await
}
