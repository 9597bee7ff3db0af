//! The real `weft` binary as separate processes: crash safety under SIGKILL, and the CLI.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use weft_proto::v1 as pb;
use weft_tests::{channel, weft, TestPki, WeftProcess};

/// Makes a coordinator offline (the node is stopped), as an operator would.
fn bootstrap(config: &std::path::Path, name: &str, role: &str) -> anyhow::Result<String> {
    let (ok, out, err) = weft(&[
        "user",
        "add",
        name,
        "--role",
        role,
        "--config",
        config.to_str().unwrap(),
        "--json",
    ])?;
    anyhow::ensure!(ok, "user add failed: {err}");
    let v: Json = serde_json::from_str(&out)?;
    Ok(v["token"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let (config, addr, ca) = WeftProcess::configure(&pki, "school.test", dir.path())?;
    let token = bootstrap(&config, "coordinator", "coordinator")?;
    let mut node = WeftProcess::start(&config, addr, &ca).await?;

    let chan = channel(addr, &ca, Some(&token)).await?;
    let plan = pb::plan_service_client::PlanServiceClient::new(chan.clone())
        .create_plan(pb::CreatePlanRequest {
            given_name: "Kai".into(),
            family_name: "Crash".into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .plan
        .unwrap()
        .plan_id;

    // Two writers add goals as fast as they can; every acknowledged goal id is recorded.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (chan, plan, acked) = (chan.clone(), plan.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut goals = pb::goal_service_client::GoalServiceClient::new(chan);
            for i in 0.. {
                let r = goals
                    .add_goal(pb::AddGoalRequest {
                        plan_id: plan.clone(),
                        domain: "academic".into(),
                        text: format!("writer {w} goal {i}"),
                        horizon: "short".into(),
                        target_date: String::new(),
                    })
                    .await;
                match r {
                    Ok(r) => acked.lock().unwrap().push(r.into_inner().goal_id),
                    Err(_) => break,
                }
            }
        }));
    }
    // Kill it mid-stream once a good number of writes were acknowledged.
    weft_tests::eventually("60 acknowledged writes", Duration::from_secs(60), || {
        let n = acked.lock().unwrap().len();
        async move { Ok((n >= 60).then_some(())) }
    })
    .await?;
    node.kill9()?;
    for w in writers {
        w.await?;
    }
    let acked = acked.lock().unwrap().clone();
    drop(node);

    let node = WeftProcess::start(&config, addr, &ca).await?;
    let chan = channel(addr, &ca, Some(&token)).await?;
    let got = pb::plan_service_client::PlanServiceClient::new(chan.clone())
        .get_plan(pb::GetPlanRequest {
            plan_id: plan.clone(),
            sections: vec!["goals".into()],
        })
        .await?
        .into_inner();
    let goals: Json = serde_json::from_str(&got.sections[0].content_json)?;
    let stored = goals["goals"].as_object().cloned().unwrap_or_default();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged goals lost after SIGKILL: {lost:?}",
        lost.len(),
        acked.len()
    );
    // The store is consistent: the audit chain verifies after the crash.
    let v = pb::admin_service_client::AdminServiceClient::new(chan)
        .verify_audit(pb::VerifyAuditRequest {})
        .await;
    // The coordinator may read the audit log; the chain must verify.
    let v = v?.into_inner();
    assert!(v.ok, "audit chain after crash: {}", v.problem);
    drop(node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_node() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let (config, addr, ca) = WeftProcess::configure(&pki, "school.test", dir.path())?;

    let (ok, out, _) = weft(&["config", "check", config.to_str().unwrap()])?;
    assert!(ok && out.contains("ok (agency school.test"), "{out}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "agency = \"x\"\ncolour = 1\n")?;
    let (ok, _, err) = weft(&["config", "check", bad.to_str().unwrap()])?;
    assert!(!ok && err.contains("colour"), "{err}");

    let token = bootstrap(&config, "coordinator", "coordinator")?;
    // A second process cannot open a store in use.
    let node = WeftProcess::start(&config, addr, &ca).await?;
    let (ok, _, err) = weft(&[
        "user",
        "add",
        "x",
        "--role",
        "admin",
        "--config",
        config.to_str().unwrap(),
    ])?;
    assert!(!ok && err.contains("in use by another process"), "{err}");

    let plan = node.cli(
        &token,
        &[
            "plan",
            "create",
            "--given-name",
            "Ana",
            "--family-name",
            "Cli",
            "--date-of-birth",
            "2014-02-03",
        ],
    )?;
    let plan = plan.trim().to_string();
    assert_eq!(plan.len(), 36, "{plan}");
    let out = node.cli(
        &token,
        &[
            "plan",
            "set",
            &plan,
            "profile.grade=4",
            "health.allergies=peanuts;dust",
        ],
    )?;
    assert!(out.contains("updated"), "{out}");
    let err = node
        .cli(&token, &["plan", "set", &plan, "profile.tier=9"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("profile.tier: must be between 1 and 4"),
        "{err}"
    );
    let goal = node.cli(
        &token,
        &[
            "goal",
            "add",
            &plan,
            "--domain",
            "academic",
            "--text",
            "Read daily",
            "--horizon",
            "short",
        ],
    )?;
    let goal = goal.trim().to_string();
    node.cli(
        &token,
        &[
            "goal",
            "update",
            &plan,
            &goal,
            "--status",
            "in_progress",
            "--note",
            "started",
        ],
    )?;
    let referral = node.cli(
        &token,
        &[
            "referral",
            "add",
            &plan,
            "--service",
            "counseling",
            "--to",
            "clinic.test",
        ],
    )?;
    node.cli(
        &token,
        &[
            "referral",
            "update",
            &plan,
            referral.trim(),
            "--status",
            "sent",
        ],
    )?;

    let show: Json = serde_json::from_str(&node.cli(&token, &["plan", "show", &plan, "--json"])?)?;
    assert_eq!(show["sections"]["profile"]["content"]["given_name"], "Ana");
    assert_eq!(
        show["sections"]["health"]["content"]["allergies"],
        serde_json::json!(["peanuts", "dust"])
    );
    assert_eq!(
        show["sections"]["goals"]["content"]["goals"][&goal]["status"],
        "in_progress"
    );
    assert_eq!(
        show["sections"]["services"]["content"]["referrals"][referral.trim()]["status"],
        "sent"
    );
    let text = node.cli(&token, &["plan", "show", &plan])?;
    assert!(
        text.contains("[health]") && text.contains("allergies: peanuts; dust"),
        "{text}"
    );

    let history: Json =
        serde_json::from_str(&node.cli(&token, &["plan", "history", &plan, "--json"])?)?;
    assert!(history
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["summary"] == "set health.allergies" && h["user"] == "coordinator"));
    let list: Json = serde_json::from_str(&node.cli(&token, &["plan", "list", "--json"])?)?;
    assert_eq!(list[0]["name"], "Ana Cli");

    let added = node.cli(
        &token,
        &[
            "user", "add", "gus", "--role", "guardian", "--plan", &plan, "--json",
        ],
    )?;
    let guardian: Json = serde_json::from_str(&added)?;
    let gtoken = guardian["token"].as_str().unwrap();
    let who = node.cli(gtoken, &["user", "whoami"])?;
    assert!(who.contains("gus (guardian) at school.test"), "{who}");

    let log: Json =
        serde_json::from_str(&node.cli(&token, &["audit", "log", "--plan", &plan, "--json"])?)?;
    let entries = log.as_array().unwrap();
    let writes: Vec<&Json> = entries.iter().filter(|e| e["action"] == "write").collect();
    assert!(
        writes
            .iter()
            .any(|e| e["sections"] == serde_json::json!(["profile", "health"])),
        "{writes:?}"
    );
    assert!(entries.iter().all(|e| !e.to_string().contains("peanuts")));
    let verify = node.cli(&token, &["audit", "verify"])?;
    assert!(verify.starts_with("audit chain ok"), "{verify}");
    let status = node.cli(&token, &["status", "--json"])?;
    let status: Json = serde_json::from_str(&status)?;
    assert_eq!(status["agency"], "school.test");
    assert_eq!(status["plans"], 1);

    // Consents from the command line.
    let consent = node.cli(
        &token,
        &[
            "consent",
            "grant",
            "--plan",
            &plan,
            "--to",
            "clinic.test",
            "--sections",
            "goals,health",
            "--access",
            "read",
            "--purpose",
            "care_coordination",
            "--until",
            "2027-06-30",
            "--grantor",
            "Rosa Cli",
            "--relationship",
            "parent",
            "--method",
            "paper",
        ],
    )?;
    let consent = consent.trim().to_string();
    assert!(consent.starts_with("c-"), "{consent}");
    let explain = node.cli(
        &token,
        &[
            "consent",
            "explain",
            "--plan",
            &plan,
            "--agency",
            "clinic.test",
            "--section",
            "health",
        ],
    )?;
    assert!(explain.contains(&consent), "{explain}");
    let listed: Json =
        serde_json::from_str(&node.cli(&token, &["consent", "list", "--plan", &plan, "--json"])?)?;
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(
        listed[0]["provisions"][0]["sections"],
        serde_json::json!(["goals", "health"])
    );
    let fhir_file = dir.path().join("consents.json");
    node.cli(
        &token,
        &[
            "consent",
            "export",
            "--plan",
            &plan,
            "--fhir",
            "--out",
            fhir_file.to_str().unwrap(),
        ],
    )?;
    let fhir: Json = serde_json::from_str(&std::fs::read_to_string(&fhir_file)?)?;
    assert_eq!(fhir["entry"][0]["resource"]["resourceType"], "Consent");
    let revoked = node.cli(
        &token,
        &["consent", "revoke", &consent, "--reason", "family asked"],
    )?;
    assert!(revoked.contains(&consent), "{revoked}");
    let explain = node.cli(
        &token,
        &[
            "consent",
            "explain",
            "--plan",
            &plan,
            "--agency",
            "clinic.test",
            "--section",
            "health",
        ],
    )?;
    assert!(explain.contains("revoked"), "{explain}");
    let disclosures: Json = serde_json::from_str(
        &node.cli(gtoken, &["audit", "disclosures", "--plan", &plan, "--json"])?,
    )?;
    assert!(disclosures
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["action"] == "read" && d["basis"] == "home agency"));

    // Without a token, a clear error.
    let err = node.cli("", &["plan", "list"]).unwrap_err().to_string();
    assert!(err.contains("bearer token"), "{err}");
    drop(node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_sync_converges_after_restart() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let configs =
        WeftProcess::configure_federation(&pki, &["clinic.test", "school.test"], dir.path())?;
    let (clinic_cfg, clinic_addr, ca) = configs[0].clone();
    let (school_cfg, school_addr, _) = configs[1].clone();
    let clinic_token = bootstrap(&clinic_cfg, "coordinator", "coordinator")?;
    let school_token = bootstrap(&school_cfg, "coordinator", "coordinator")?;
    let school = WeftProcess::start(&school_cfg, school_addr, &ca).await?;
    let mut clinic = WeftProcess::start(&clinic_cfg, clinic_addr, &ca).await?;

    let plan = school.cli(
        &school_token,
        &[
            "plan",
            "create",
            "--given-name",
            "Kai",
            "--family-name",
            "Sync",
        ],
    )?;
    let plan = plan.trim().to_string();
    school.cli(
        &school_token,
        &[
            "consent",
            "grant",
            "--plan",
            &plan,
            "--to",
            "clinic.test",
            "--sections",
            "goals",
            "--access",
            "read_write",
            "--purpose",
            "care_coordination",
            "--until",
            "2027-06-30",
            "--grantor",
            "Rosa",
            "--relationship",
            "parent",
        ],
    )?;
    // The school writes 40 goals; the clinic is killed while they stream in.
    let chan = channel(school_addr, &ca, Some(&school_token)).await?;
    let writer = {
        let plan = plan.clone();
        tokio::spawn(async move {
            let mut goals = pb::goal_service_client::GoalServiceClient::new(chan);
            for i in 0..40 {
                goals
                    .add_goal(pb::AddGoalRequest {
                        plan_id: plan.clone(),
                        domain: "academic".into(),
                        text: format!("goal {i}"),
                        horizon: "short".into(),
                        target_date: String::new(),
                    })
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let goals_at = |node: &WeftProcess, token: &str| -> anyhow::Result<Json> {
        let out = node.cli(
            token,
            &["plan", "show", &plan, "--section", "goals", "--json"],
        )?;
        let v: Json = serde_json::from_str(&out)?;
        Ok(v["sections"]["goals"]["content"]["goals"].clone())
    };
    weft_tests::eventually(
        "the clinic to hold some goals",
        Duration::from_secs(60),
        || {
            let n = goals_at(&clinic, &clinic_token)
                .ok()
                .and_then(|g| g.as_object().map(|o| o.len()))
                .unwrap_or(0);
            async move { Ok((n >= 5).then_some(())) }
        },
    )
    .await?;
    clinic.kill9()?;
    drop(clinic);
    writer.await??;
    let clinic = WeftProcess::start(&clinic_cfg, clinic_addr, &ca).await?;
    let at_school = goals_at(&school, &school_token)?;
    assert_eq!(at_school.as_object().unwrap().len(), 40);
    let converged =
        weft_tests::eventually("the clinic to converge", Duration::from_secs(60), || {
            let g = goals_at(&clinic, &clinic_token).ok();
            let want = at_school.clone();
            async move { Ok(g.filter(|g| *g == want)) }
        })
        .await?;
    assert_eq!(converged.as_object().unwrap().len(), 40);
    // Nothing lost or doubled, and both audit chains verify.
    for (node, token) in [(&school, &school_token), (&clinic, &clinic_token)] {
        assert!(node
            .cli(token, &["audit", "verify"])?
            .starts_with("audit chain ok"));
    }
    let peers: Json = serde_json::from_str(&clinic.cli(&clinic_token, &["peers", "--json"])?)?;
    assert_eq!(peers[0]["agency"], "school.test");
    assert_eq!(peers[0]["connected"], true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_under_write_load_restores_and_verifies() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let (config, addr, ca) = WeftProcess::configure(&pki, "school.test", dir.path())?;
    let admin = bootstrap(&config, "admin", "admin")?;
    let token = bootstrap(&config, "coordinator", "coordinator")?;
    let node = WeftProcess::start(&config, addr, &ca).await?;
    let plan = node.cli(
        &token,
        &[
            "plan",
            "create",
            "--given-name",
            "Bea",
            "--family-name",
            "Backup",
        ],
    )?;
    let plan = plan.trim().to_string();

    // A writer adds goals the whole time; the ids acknowledged before the backup starts must
    // all be in it.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (chan, plan, acked, stop) = (
            channel(addr, &ca, Some(&token)).await?,
            plan.clone(),
            acked.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut goals = pb::goal_service_client::GoalServiceClient::new(chan);
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = goals
                    .add_goal(pb::AddGoalRequest {
                        plan_id: plan.clone(),
                        domain: "academic".into(),
                        text: format!("goal {i}"),
                        horizon: "short".into(),
                        target_date: String::new(),
                    })
                    .await?;
                acked.lock().unwrap().push(r.into_inner().goal_id);
                i += 1;
            }
            anyhow::Ok(())
        })
    };
    weft_tests::eventually("some goals written", Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        async move { Ok((n >= 10).then_some(())) }
    })
    .await?;
    let before: Vec<String> = acked.lock().unwrap().clone();
    let file = dir.path().join("school.weftbackup");
    let out = node.cli(&admin, &["backup", "--out", file.to_str().unwrap()])?;
    assert!(out.contains("backup written"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    writer.await??;
    let status: Json = serde_json::from_str(&node.cli(&admin, &["status", "--json"])?)?;
    assert!(
        !status["last_backup"].as_str().unwrap_or("").is_empty(),
        "{status}"
    );
    // Only admins take backups.
    assert!(node
        .cli(
            &token,
            &["backup", "--out", dir.path().join("x").to_str().unwrap()]
        )
        .is_err());
    drop(node);

    // Restore into a new directory and run a node on it.
    let restored = dir.path().join("restored");
    let (ok, out, err) = weft(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data",
        restored.to_str().unwrap(),
    ])?;
    assert!(ok, "{err}");
    assert!(out.contains("audit chain ok"), "{out}");
    let (ok, _, err) = weft(&[
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--data",
        restored.to_str().unwrap(),
    ])?;
    assert!(!ok && err.contains("not empty"), "{err}");
    let text = std::fs::read_to_string(&config)?.replace(
        dir.path().join("data").to_str().unwrap(),
        restored.to_str().unwrap(),
    );
    let config2 = dir.path().join("restored.toml");
    std::fs::write(&config2, text)?;
    let node = WeftProcess::start(&config2, addr, &ca).await?;
    let show: Json = serde_json::from_str(&node.cli(
        &token,
        &["plan", "show", &plan, "--section", "goals", "--json"],
    )?)?;
    let goals = show["sections"]["goals"]["content"]["goals"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for id in &before {
        assert!(
            goals.contains_key(id),
            "goal {id}, acknowledged before the backup, is missing"
        );
    }
    assert!(node
        .cli(&admin, &["audit", "verify"])?
        .starts_with("audit chain ok"));
    // A truncated backup is refused with a clear error and writes nothing.
    let bytes = std::fs::read(&file)?;
    let cut = dir.path().join("cut.weftbackup");
    std::fs::write(&cut, &bytes[..bytes.len() / 2])?;
    let (ok, _, err) = weft(&[
        "restore",
        "--from",
        cut.to_str().unwrap(),
        "--data",
        dir.path().join("r2").to_str().unwrap(),
    ])?;
    assert!(!ok && err.contains("checksum does not match"), "{err}");
    assert!(
        !dir.path().join("r2").exists(),
        "a refused restore created its directory"
    );
    drop(node);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_node_cleanly_and_keeps_its_data() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let dir = tempfile::tempdir()?;
    let (config, addr, ca) = WeftProcess::configure(&pki, "school.test", dir.path())?;
    let token = bootstrap(&config, "coordinator", "coordinator")?;
    let mut node = WeftProcess::start(&config, addr, &ca).await?;
    let plan = node.cli(
        &token,
        &[
            "plan",
            "create",
            "--given-name",
            "Tom",
            "--family-name",
            "Term",
        ],
    )?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = weft_tests::eventually("the node to exit", Duration::from_secs(20), || {
        let r = node.child.try_wait();
        async move { Ok(r?) }
    })
    .await?;
    assert!(exit.success(), "weft serve exited with {exit} on SIGTERM");
    drop(node);
    let node = WeftProcess::start(&config, addr, &ca).await?;
    let shown = node.cli(
        &token,
        &["plan", "show", plan.trim(), "--section", "profile"],
    )?;
    assert!(shown.contains("given_name: Tom"), "{shown}");
    Ok(())
}
