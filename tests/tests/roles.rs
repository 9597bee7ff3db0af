//! Users, tokens and roles: each role can do exactly what its table says, denials are
//! audited, and a guardian sees only their own child's plan.

use weft_proto::v1 as pb;
use weft_tests::Cluster;

#[tokio::test]
async fn roles_hold_only_their_rights() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    let other = school.create_plan("Leo", "Other").await?;
    let caseworker = school.add_user("cara", "caseworker", &[]).await?;
    let auditor = school.add_user("audrey", "auditor", &[]).await?;
    let guardian = school.add_user("maya.parent", "guardian", &[&plan]).await?;

    // Caseworkers edit but do not create plans.
    let err = school
        .plans(&caseworker)
        .await?
        .create_plan(pb::CreatePlanRequest {
            given_name: "A".into(),
            family_name: "B".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    school
        .plans(&caseworker)
        .await?
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![pb::FieldValue {
                section: "family".into(),
                field: "housing".into(),
                value: "stable".into(),
            }],
        })
        .await?;

    // Auditors read the log, never plans.
    assert!(school.section(&auditor, &plan, "profile").await.is_err());
    school
        .admin(&auditor)
        .await?
        .audit_log(pb::AuditLogRequest::default())
        .await?;

    // Coordinators may not make admins; admins may.
    let err = school
        .users(&school.coordinator_token)
        .await?
        .add_user(pb::AddUserRequest {
            name: "root2".into(),
            role: "admin".into(),
            plan_ids: vec![],
            agency: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = school
        .users(&school.admin_token)
        .await?
        .add_user(pb::AddUserRequest {
            name: "cara".into(),
            role: "caseworker".into(),
            plan_ids: vec![],
            agency: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = school
        .users(&school.admin_token)
        .await?
        .add_user(pb::AddUserRequest {
            name: "Bad Name".into(),
            role: "caseworker".into(),
            plan_ids: vec![],
            agency: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A guardian sees their child's plan, and adds goals and notes to it ...
    let seen = school
        .plans(&guardian)
        .await?
        .get_plan(pb::GetPlanRequest {
            plan_id: plan.clone(),
            sections: vec![],
        })
        .await?
        .into_inner();
    assert!(seen.sections.iter().any(|s| s.name == "profile"));
    let g = school
        .goals(&guardian)
        .await?
        .add_goal(pb::AddGoalRequest {
            plan_id: plan.clone(),
            domain: "family".into(),
            text: "Dinner together on weekdays".into(),
            horizon: "short".into(),
            target_date: String::new(),
        })
        .await?
        .into_inner();
    school
        .goals(&guardian)
        .await?
        .update_goal(pb::UpdateGoalRequest {
            plan_id: plan.clone(),
            goal_id: g.goal_id.clone(),
            note: "going well".into(),
            ..Default::default()
        })
        .await?;
    // ... but does not change fields or goal statuses, and never sees another child's plan.
    let err = school
        .goals(&guardian)
        .await?
        .update_goal(pb::UpdateGoalRequest {
            plan_id: plan.clone(),
            goal_id: g.goal_id,
            status: "met".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = school
        .plans(&guardian)
        .await?
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![pb::FieldValue {
                section: "profile".into(),
                field: "grade".into(),
                value: "3".into(),
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = school
        .section(&guardian, &other, "profile")
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a status");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let list = school
        .plans(&guardian)
        .await?
        .list_plans(pb::ListPlansRequest::default())
        .await?
        .into_inner();
    assert_eq!(
        list.plans
            .iter()
            .map(|p| p.plan.clone().unwrap().plan_id)
            .collect::<Vec<_>>(),
        vec![plan.clone()]
    );

    // Each denial is in the audit log, with the plan it was about.
    let log = school
        .admin(&school.admin_token)
        .await?
        .audit_log(pb::AuditLogRequest::default())
        .await?
        .into_inner();
    let denied: Vec<(&str, &str, &str)> = log
        .entries
        .iter()
        .filter(|e| e.outcome == "denied")
        .map(|e| (e.user.as_str(), e.plan_id.as_str(), e.detail.as_str()))
        .collect();
    assert!(denied.contains(&("cara", "", "role")), "{denied:?}");
    assert!(
        denied.contains(&("audrey", plan.as_str(), "role")),
        "{denied:?}"
    );
    assert!(
        denied.contains(&("maya.parent", plan.as_str(), "role")),
        "{denied:?}"
    );
    assert!(
        denied.contains(&("maya.parent", other.as_str(), "guardian_binding")),
        "{denied:?}"
    );
    // A token that is not valid.
    let mut bad = school.plans("weft_not-a-real-token").await?;
    let err = bad
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    cluster.stop().await
}
