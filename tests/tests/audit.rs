//! The audit chain over the API: it verifies, it records reads and denials, and it names
//! the first entry an attacker with disk access altered.

use weft_proto::v1 as pb;
use weft_tests::Cluster;

#[tokio::test]
async fn reads_writes_and_denials_are_audited_without_values() -> anyhow::Result<()> {
    let cluster = Cluster::builder().start().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    school
        .plans(&school.coordinator_token)
        .await?
        .set_fields(pb::SetFieldsRequest {
            plan_id: plan.clone(),
            fields: vec![pb::FieldValue {
                section: "health".into(),
                field: "conditions".into(),
                value: "asthma-marker-7731".into(),
            }],
        })
        .await?;
    school
        .section(&school.coordinator_token, &plan, "health")
        .await?;
    // An admin may not read plans: denied, and the denial is audited.
    let denied = school
        .section(&school.admin_token, &plan, "health")
        .await
        .unwrap_err();
    assert!(
        denied.to_string().contains("may not read plans"),
        "{denied}"
    );

    let log = school
        .admin(&school.admin_token)
        .await?
        .audit_log(pb::AuditLogRequest {
            plan_id: plan.clone(),
            after_index: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    let rows: Vec<(String, String, String, Vec<String>)> = log
        .entries
        .iter()
        .map(|e| {
            (
                e.user.clone(),
                e.action.clone(),
                e.outcome.clone(),
                e.sections.clone(),
            )
        })
        .collect();
    assert!(
        rows.contains(&(
            "coordinator".into(),
            "create_plan".into(),
            "ok".into(),
            vec!["profile".into()]
        )),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(
            "coordinator".into(),
            "write".into(),
            "ok".into(),
            vec!["health".into()]
        )),
        "{rows:?}"
    );
    assert!(
        rows.contains(&(
            "coordinator".into(),
            "read".into(),
            "ok".into(),
            vec!["health".into()]
        )),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .any(|(u, a, o, _)| u == "admin" && a == "read" && o == "denied"),
        "{rows:?}"
    );
    // Never the values.
    for e in &log.entries {
        assert!(!format!("{e:?}").contains("asthma-marker-7731"));
    }
    // A missing token is refused and audited.
    let mut anon = pb::plan_service_client::PlanServiceClient::new(school.channel(None).await?);
    let err = anon
        .list_plans(pb::ListPlansRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let all = school
        .admin(&school.admin_token)
        .await?
        .audit_log(pb::AuditLogRequest::default())
        .await?
        .into_inner();
    assert!(all.entries.iter().any(|e| e.action == "authenticate"
        && e.outcome == "denied"
        && e.detail == "missing_token"));
    cluster.stop().await
}

#[tokio::test]
async fn a_tampered_entry_is_named_by_verify() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder().start().await?;
    let plan = cluster
        .node("school.test")
        .create_plan("Ada", "Example")
        .await?;
    let (data_dir, before) = {
        let school = cluster.node("school.test");
        school
            .section(&school.coordinator_token, &plan, "profile")
            .await?;
        let v = school
            .admin(&school.admin_token)
            .await?
            .verify_audit(pb::VerifyAuditRequest {})
            .await?
            .into_inner();
        assert!(v.ok, "{}", v.problem);
        (school.data_dir.clone(), v.entries)
    };
    assert!(before >= 4);
    cluster.node_mut("school.test").stop().await?;

    // Someone with disk access rewrites who read the plan in entry 4.
    {
        // The stopped node's store may stay locked for a moment while sled's threads let go.
        let mut tries = 0;
        let db = loop {
            match sled::open(&data_dir) {
                Err(e) if tries < 100 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        let audit = db.open_tree("audit")?;
        let key = 4u64.to_be_bytes();
        let entry = String::from_utf8(audit.get(key)?.expect("entry 4").to_vec())?;
        assert!(entry.contains("\"user\":\"coordinator\""), "{entry}");
        audit.insert(
            key,
            entry
                .replace("\"user\":\"coordinator\"", "\"user\":\"someone\"")
                .as_bytes(),
        )?;
        db.flush()?;
    }
    cluster.node_mut("school.test").restart().await?;
    let school = cluster.node("school.test");
    let v = school
        .admin(&school.admin_token)
        .await?
        .verify_audit(pb::VerifyAuditRequest {})
        .await?
        .into_inner();
    assert!(!v.ok);
    assert_eq!(v.first_bad_index, 4);
    assert!(v.problem.contains("altered"), "{}", v.problem);
    cluster.stop().await
}
