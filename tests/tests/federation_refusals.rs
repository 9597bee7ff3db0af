//! The home node refuses what a peer must not send. The test plays the clinic itself, over a
//! real mutual-TLS stream with a certificate from the federation CA, to send what a
//! well-behaved node never would.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ReadDoc, ROOT};
use weft_proto::v1 as pb;
use weft_tests::{Cluster, DEADLINE};

fn grant(plan: &str, access: &str) -> pb::GrantRequest {
    weft_tests::grant_request(plan, "clinic.test", &["goals"], access, "2027-06-30")
}

fn frame(kind: pb::frame::Kind) -> pb::Frame {
    pb::Frame { kind: Some(kind) }
}

/// A running school, and the clinic the test plays.
async fn school_and_played_clinic() -> anyhow::Result<Cluster> {
    Cluster::builder()
        .agencies(["school.test"])
        .played_by_test(["clinic.test"])
        .start()
        .await
}

/// Waits for the next frame matching `pick`, skipping others.
async fn next<T>(
    rx: &mut weft_tests::PeerFrames,
    mut pick: impl FnMut(pb::frame::Kind) -> Option<T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let f = rx
                .message()
                .await?
                .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            if let Some(t) = f.kind.and_then(&mut pick) {
                return Ok(t);
            }
        }
    })
    .await?
}

/// The played clinic's first frame: a hello with the consent key made from `key`.
async fn hello(tx: &tokio::sync::mpsc::Sender<pb::Frame>, key: &[u8; 32]) -> anyhow::Result<()> {
    let vk = weft_consent::ed25519_dalek::SigningKey::from_bytes(key).verifying_key();
    tx.send(frame(pb::frame::Kind::Hello(pb::Hello {
        consent_key: vk.to_bytes().to_vec(),
        feed_seq: 0,
        // A peer that opens no compressed messages: the node sends it plain ones.
        zstd_frames: false,
    })))
    .await?;
    Ok(())
}

/// The played clinic's stream to the school, with its hello (consent key from `key`) sent
/// and the school's answered.
async fn greeted(
    cluster: &Cluster,
    key: &[u8; 32],
) -> anyhow::Result<(tokio::sync::mpsc::Sender<pb::Frame>, weft_tests::PeerFrames)> {
    let (tx, mut rx) = cluster.peer_stream("clinic.test", "school.test").await?;
    hello(&tx, key).await?;
    next(&mut rx, |k| {
        matches!(k, pb::frame::Kind::Hello(_)).then_some(())
    })
    .await?;
    Ok((tx, rx))
}

/// Seeds `plans` sample plans at the school, each consented to the clinic (read, all four
/// sections).
async fn seed_for_the_clinic(cluster: &Cluster, plans: u64) -> anyhow::Result<()> {
    weft_node::seed::seed(
        cluster.node("school.test").node().service(),
        plans,
        &weft_node::seed::SeedConsents::to_all(
            vec![weft_node::model::AgencyId::parse("clinic.test")?],
            "read",
            "2099-12-31",
        ),
    )
    .await?;
    Ok(())
}

fn heads(h: &[ChangeHash]) -> Vec<Vec<u8>> {
    h.iter().map(|h| h.0.to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_refuses_read_only_and_forged_changes_and_accepts_honest_ones(
) -> anyhow::Result<()> {
    let cluster = school_and_played_clinic().await?;
    let school = cluster.node("school.test");
    let plan = school.create_plan("Maya", "Example").await?;
    school
        .goals(&school.coordinator_token)
        .await?
        .add_goal(pb::AddGoalRequest {
            plan_id: plan.clone(),
            domain: "academic".into(),
            text: "read daily".into(),
            horizon: "short".into(),
            target_date: String::new(),
        })
        .await?;
    let mut consents = school.consents(&school.coordinator_token).await?;
    let read_only = consents.grant(grant(&plan, "read")).await?.into_inner();

    let (tx, mut rx) = cluster.peer_stream("clinic.test", "school.test").await?;
    let key = [7u8; 32];
    hello(&tx, &key).await?;
    // The school sends the consent, then the goals it allows.
    next(&mut rx, |k| {
        matches!(k, pb::frame::Kind::Consent(_)).then_some(())
    })
    .await?;
    let goals = next(&mut rx, |k| match k {
        pb::frame::Kind::Changes(c) if c.section == "goals" => Some(c),
        _ => None,
    })
    .await?;
    let mut doc = AutoCommit::load(&goals.changes)?;
    let base = doc.get_heads();
    let change =
        |doc: &mut AutoCommit, actor: &str, text: &str| -> anyhow::Result<pb::frame::Kind> {
            doc.set_actor(ActorId::from(actor.as_bytes().to_vec()));
            doc.put(ROOT, "notes", text)?;
            doc.commit();
            Ok(pb::frame::Kind::Changes(pb::SectionChanges {
                changes: doc.save_after(&base),
                heads: heads(&doc.get_heads()),
                ..goals.clone()
            }))
        };
    let rejected = |k: pb::frame::Kind| match k {
        pb::frame::Kind::Rejected(r) => Some(r.reason),
        _ => None,
    };

    // 1. A read-only grantee's change.
    tx.send(frame(change(
        &mut doc.clone(),
        "clinic.test|mallory",
        "read-only write",
    )?))
    .await?;
    let reason = next(&mut rx, rejected).await?;
    assert!(reason.contains("may not write section goals"), "{reason}");

    // 2. With read_write, a change whose actor claims to be the school's coordinator.
    consents.grant(grant(&plan, "read_write")).await?;
    next(&mut rx, |k| {
        matches!(k, pb::frame::Kind::Consent(_)).then_some(())
    })
    .await?;
    tx.send(frame(change(
        &mut doc.clone(),
        "school.test|coordinator",
        "forged write",
    )?))
    .await?;
    let reason = next(&mut rx, rejected).await?;
    assert!(
        reason.contains("actors that are not clinic.test's"),
        "{reason}"
    );

    // 3. An honest change is stored and acknowledged (the positive control).
    tx.send(frame(change(
        &mut doc,
        "clinic.test|nurse.kim",
        "honest write",
    )?))
    .await?;
    next(&mut rx, |k| {
        matches!(k, pb::frame::Kind::Ack(_)).then_some(())
    })
    .await?;
    let goals_now = school
        .section(&school.coordinator_token, &plan, "goals")
        .await?;
    assert_eq!(goals_now["notes"], "honest write");
    assert_eq!(
        doc.get(ROOT, "notes")?.map(|(v, _)| v.to_string()),
        Some("\"honest write\"".into())
    );

    // Both refusals are in the school's audit log, and nothing they carried was stored.
    let log = school
        .admin(&school.admin_token)
        .await?
        .audit_log(pb::AuditLogRequest {
            plan_id: plan.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let refusals: Vec<&str> = log
        .entries
        .iter()
        .filter(|e| e.action == "replica_reject" && e.agency == "clinic.test")
        .map(|e| e.detail.as_str())
        .collect();
    assert_eq!(refusals, ["consent", "actor"]);
    let history = school
        .plans(&school.coordinator_token)
        .await?
        .plan_history(pb::PlanHistoryRequest {
            plan_id: plan.clone(),
        })
        .await?
        .into_inner();
    assert!(!history.entries.iter().any(|e| e.user == "mallory"));
    assert!(history
        .entries
        .iter()
        .any(|e| e.agency == "clinic.test" && e.user == "nurse.kim"));
    let _ = read_only;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_an_unlisted_agency_is_refused() -> anyhow::Result<()> {
    let cluster = school_and_played_clinic().await?;
    let err = cluster
        .peer_stream("library.test", "school.test")
        .await
        .unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("not a configured peer"));
    cluster.stop().await
}

/// A consent from the test's own (home) key for `subject`, naming the school for `section`.
fn consent_for(id: &str, subject: &str, section: &str, key: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
    use weft_consent::*;
    let home = AgencyId::parse("clinic.test")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let record = ConsentRecord {
        id: ConsentId::parse(id)?,
        subject: subject.into(),
        grantor: Grantor {
            name: "A. Guardian".into(),
            relationship: Relationship::Guardian,
        },
        disclosing_agency: home.clone(),
        recorded_by: Recorder {
            agency: home.clone(),
            user: "coordinator".into(),
        },
        recorded_at: Timestamp(now - 60_000),
        collection_method: CollectionMethod::ESignature,
        provisions: vec![Provision {
            grantee: AgencyId::parse("school.test")?,
            sections: vec![section.into()],
            access: Access::Read,
            purpose: Purpose::CareCoordination,
            valid_from: Timestamp(now - 60_000),
            valid_until: Some(Timestamp(now + 86_400_000)),
        }],
    };
    let signing = ed25519_dalek::SigningKey::from_bytes(key);
    Ok(sign_consent(&record, &home, &signing)?.to_bytes())
}

/// A revocation from the test's own (home) key of consent `consent`.
fn revocation_of(consent: &str, id: &str, key: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
    use weft_consent::*;
    let home = AgencyId::parse("clinic.test")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let revocation = Revocation {
        id: RevocationId::parse(id)?,
        consent: ConsentId::parse(consent)?,
        revoked_by: Recorder {
            agency: home.clone(),
            user: "coordinator".into(),
        },
        revoked_at: Timestamp(now),
        reason: None,
    };
    let signing = ed25519_dalek::SigningKey::from_bytes(key);
    Ok(sign_revocation(&revocation, &home, &signing)?.to_bytes())
}

/// A home's revocation is filed under the child of the consent it revokes, found by the
/// consent's id; one of a consent the school never received is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_filed_under_its_consents_child_and_one_of_an_unknown_consent_refused(
) -> anyhow::Result<()> {
    use weft_node::model::SubjectId;
    use weft_node::storage::ConsentKind;

    let cluster = school_and_played_clinic().await?;
    let store = cluster.node("school.test").node().service().store().clone();
    let key = [9u8; 32];
    let (tx, mut rx) = greeted(&cluster, &key).await?;
    let subject = uuid::Uuid::new_v4();
    let record = |kind: fn(pb::SignedRecord) -> pb::frame::Kind, envelope: Vec<u8>| {
        frame(kind(pb::SignedRecord { envelope }))
    };
    tx.send(record(
        pb::frame::Kind::Consent,
        consent_for("c-goals", &subject.to_string(), "goals", &key)?,
    ))
    .await?;
    tx.send(record(
        pb::frame::Kind::Revocation,
        revocation_of("c-never-sent", "v-unknown", &key)?,
    ))
    .await?;
    let reason = next(&mut rx, |k| match k {
        pb::frame::Kind::Rejected(r) => Some(r.reason),
        _ => None,
    })
    .await?;
    assert!(reason.starts_with("revocation_unknown"), "{reason}");

    tx.send(record(
        pb::frame::Kind::Revocation,
        revocation_of("c-goals", "v-goals", &key)?,
    ))
    .await?;
    let filed = tokio::time::timeout(weft_tests::DEADLINE, async {
        loop {
            let entries = store.consent_entries(Some(SubjectId(subject))).await?;
            if entries
                .iter()
                .any(|e| e.kind == ConsentKind::Revocation && e.id == "v-goals")
            {
                return anyhow::Ok(entries);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await??;
    assert_eq!(filed.len(), 2, "the consent and its revocation: {filed:?}");
    assert!(
        !store
            .consent_entries(None)
            .await?
            .iter()
            .any(|e| e.id == "v-unknown"),
        "the refused revocation is stored nowhere"
    );
    drop(tx);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.stop().await
}

/// A receiver handles consents side by side, but a section still waits for the consents sent
/// before it: two consents of one subject and the two sections each allows, all in one
/// message, are all stored (a section checked before its consent, or a consent set refreshed
/// out of order, would be refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consents_and_the_sections_they_allow_in_one_batch_are_all_stored() -> anyhow::Result<()> {
    let cluster = school_and_played_clinic().await?;
    let school = cluster.node("school.test");
    let key = [9u8; 32];
    let (tx, mut rx) = greeted(&cluster, &key).await?;

    let plan = uuid::Uuid::new_v4().to_string();
    let subject = uuid::Uuid::new_v4().to_string();
    let section = |name: &str, text: &str| -> anyhow::Result<pb::Frame> {
        let mut doc = AutoCommit::new();
        doc.set_actor(ActorId::from(b"clinic.test|coordinator".to_vec()));
        doc.put(ROOT, "text", text)?;
        doc.commit();
        Ok(frame(pb::frame::Kind::Changes(pb::SectionChanges {
            plan_id: plan.clone(),
            subject_id: subject.clone(),
            home_agency: "clinic.test".into(),
            plan_created_at_ms: 1,
            section: name.into(),
            changes: doc.save(),
            feed_seq: 1,
            heads: vec![],
        })))
    };
    let record = |bytes: Vec<u8>| {
        frame(pb::frame::Kind::Consent(pb::SignedRecord {
            envelope: bytes,
        }))
    };
    tx.send(frame(pb::frame::Kind::Batch(pb::Batch {
        frames: vec![
            record(consent_for("c-goals", &subject, "goals", &key)?),
            record(consent_for("c-strengths", &subject, "strengths", &key)?),
            section("goals", "read daily")?,
            section("strengths", "prefers mornings")?,
        ],
    })))
    .await?;
    let mut acked = Vec::new();
    while acked.len() < 2 {
        let outcome = next(&mut rx, |k| match k {
            pb::frame::Kind::Ack(a) => Some(Ok(a.section)),
            pb::frame::Kind::Rejected(r) => Some(Err(r.reason)),
            _ => None,
        })
        .await?;
        match outcome {
            Ok(section) => acked.push(section),
            Err(reason) => panic!("the school refused a frame: {reason}"),
        }
    }
    acked.sort();
    assert_eq!(acked, ["goals", "strengths"]);
    let stored = school
        .node()
        .service()
        .store()
        .sections_of(weft_node::model::PlanId(plan.parse()?))
        .await?;
    assert_eq!(
        stored.len(),
        2,
        "both sections are on the school's disk: {stored:?}"
    );
    drop(tx);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.stop().await
}

/// At a grantee, changes from the home that extend exactly what it holds are stored as
/// received, without loading the document; anything else is merged into the loaded document
/// and checked there. The test plays the clinic, home of a plan the school holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grantee_stores_the_homes_next_changes_without_loading_and_checks_the_rest(
) -> anyhow::Result<()> {
    let cluster = school_and_played_clinic().await?;
    let school = cluster.node("school.test");
    let store = school.node().service().store();
    let (tx, mut rx) = cluster.peer_stream("clinic.test", "school.test").await?;
    let key = [9u8; 32];
    hello(&tx, &key).await?;
    let plan = uuid::Uuid::new_v4().to_string();
    let subject = uuid::Uuid::new_v4().to_string();
    let mut doc = AutoCommit::new();
    doc.set_actor(ActorId::from(b"clinic.test|coordinator".to_vec()));
    let changes = |bytes: Vec<u8>, heads_now: &[ChangeHash]| {
        frame(pb::frame::Kind::Changes(pb::SectionChanges {
            plan_id: plan.clone(),
            subject_id: subject.clone(),
            home_agency: "clinic.test".into(),
            plan_created_at_ms: 1,
            section: "goals".into(),
            changes: bytes,
            feed_seq: 1,
            heads: heads(heads_now),
        }))
    };
    let outcome = |k: pb::frame::Kind| match k {
        pb::frame::Kind::Ack(a) => Some(Ok(a.heads)),
        pb::frame::Kind::Rejected(r) => Some(Err(r.reason)),
        _ => None,
    };
    let edit = |doc: &mut AutoCommit, text: &str| -> anyhow::Result<Vec<u8>> {
        let before = doc.get_heads();
        doc.put(ROOT, "text", text)?;
        doc.commit();
        Ok(doc.save_after(&before))
    };

    // The consent, then the whole section (a first arrival is not kept loaded).
    edit(&mut doc, "read daily")?;
    tx.send(frame(pb::frame::Kind::Consent(pb::SignedRecord {
        envelope: consent_for("c-goals", &subject, "goals", &key)?,
    })))
    .await?;
    tx.send(changes(doc.save(), &[])).await?;
    assert_eq!(next(&mut rx, outcome).await?, Ok(heads(&doc.get_heads())));

    // Two changes that follow the school's heads: stored as received, nothing loaded.
    let mut both = edit(&mut doc, "read daily, 20 minutes")?;
    both.extend(edit(&mut doc, "read daily, 30 minutes")?);
    tx.send(changes(both, &doc.get_heads())).await?;
    assert_eq!(next(&mut rx, outcome).await?, Ok(heads(&doc.get_heads())));
    assert_eq!(
        store.docs_cached(),
        0,
        "stored without loading the document"
    );

    // A change after one the school never got: the school loads the document to see that.
    let held = doc.get_heads();
    edit(&mut doc, "unsent")?;
    let after = edit(&mut doc, "after the unsent one")?;
    tx.send(changes(after, &doc.get_heads())).await?;
    let reason = next(&mut rx, outcome).await?.unwrap_err();
    assert!(reason.starts_with("missing_deps"), "{reason}");

    // Both, after what the school holds: stored as received again.
    tx.send(changes(doc.save_after(&held), &doc.get_heads()))
        .await?;
    assert_eq!(next(&mut rx, outcome).await?, Ok(heads(&doc.get_heads())));
    assert_eq!(store.docs_cached(), 0);
    let meta = store
        .section_meta(&weft_node::model::SectionKey {
            plan: weft_node::model::PlanId(plan.parse()?),
            section: weft_node::model::SectionName::parse("goals")?,
        })
        .await?
        .expect("stored");
    assert_eq!(meta.heads, Some(doc.get_heads()));
    drop(tx);
    tokio::time::sleep(Duration::from_millis(10)).await;
    cluster.stop().await
}

/// A peer's first catch-up reads every child whose consents name it (a quarter of a million
/// at a million sections, or after a restart that lost its position): a revocation
/// recorded meanwhile goes before the rest of it, not after the last child (regression: at a
/// million sections a revocation waited over 30 s behind such a catch-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_does_not_wait_for_the_rest_of_a_long_consent_catch_up() -> anyhow::Result<()>
{
    const PLANS: u64 = 700;
    let faults = weft_tests::Faults::default();
    let cluster = Cluster::builder()
        .agencies(["school.test"])
        .played_by_test(["clinic.test"])
        .faults("school.test", faults.clone())
        .start()
        .await?;
    seed_for_the_clinic(&cluster, PLANS).await?;
    let school = cluster.node("school.test");
    let plan = school
        .plans(&school.coordinator_token)
        .await?
        .list_plans(pb::ListPlansRequest::default())
        .await?
        .into_inner()
        .plans[0]
        .plan
        .clone()
        .expect("a listed plan")
        .plan_id;
    let mut consents = school.consents(&school.coordinator_token).await?;
    let consent = consents
        .list(pb::ListConsentsRequest {
            plan_id: plan,
            subject_id: String::new(),
        })
        .await?
        .into_inner()
        .consents[0]
        .consent_id
        .clone();
    // Each child's consents take a while to read, as in a large store: the catch-up's
    // three chunks take seconds, and the revocation lands during the second.
    faults.slow_scans(weft_node::storage::Tree::Consents, Duration::from_millis(5));
    let (_tx, mut rx) = greeted(&cluster, &[7u8; 32]).await?;
    // Once the catch-up is under way (its first records arrived), the revocation.
    let mut records = next(&mut rx, |k| {
        matches!(k, pb::frame::Kind::Consent(_)).then_some(1)
    })
    .await?;
    consents
        .revoke(pb::RevokeRequest {
            consent_id: consent,
            reason: "family request".into(),
        })
        .await?;
    let revoked = tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.message().await?.and_then(|f| f.kind) {
                Some(pb::frame::Kind::Consent(_)) => records += 1,
                Some(pb::frame::Kind::Revocation(_)) => return anyhow::Ok(records),
                Some(_) => {}
                None => anyhow::bail!("stream ended"),
            }
        }
    })
    .await??;
    assert!(
        revoked < PLANS,
        "the revocation came after {revoked} of the {PLANS} children's records"
    );
    faults.clear();
    cluster.stop().await
}

/// A peer's first round sends the sections it may hold in the order of the store's keys
/// (plan by plan), not in the order of the children whose consents name it: the home then
/// reads its trees front to back, and the peer writes its own the same way. (In the
/// children's order, every read and every write went to a random place in trees far larger
/// than the page cache: cold replication of a million sections ran at 2,399 docs/s, and at
/// 3,070 in the store's order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_round_sends_what_the_peer_may_hold_in_the_stores_order() -> anyhow::Result<()> {
    const PLANS: u64 = 60;
    let cluster = school_and_played_clinic().await?;
    seed_for_the_clinic(&cluster, PLANS).await?;
    let (_tx, mut rx) = greeted(&cluster, &[7u8; 32]).await?;
    let changes = |f: pb::Frame| match f.kind {
        Some(pb::frame::Kind::Changes(c)) => vec![(c.plan_id, c.section)],
        Some(pb::frame::Kind::Batch(b)) => b
            .frames
            .into_iter()
            .filter_map(|f| match f.kind {
                Some(pb::frame::Kind::Changes(c)) => Some((c.plan_id, c.section)),
                _ => None,
            })
            .collect(),
        _ => vec![],
    };
    // Every consent covers the four sections of its plan.
    let mut sent = Vec::new();
    while sent.len() < 4 * PLANS as usize {
        let f = tokio::time::timeout(DEADLINE, rx.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("stream ended after {} sections", sent.len()))?;
        sent.extend(changes(f));
    }
    let mut in_order = sent.clone();
    in_order.sort();
    in_order.dedup();
    assert_eq!(in_order.len(), sent.len(), "a section went twice");
    // Plan ids are UUIDs in lowercase hex, which sort as their bytes do in the store's keys.
    assert!(sent == in_order, "sent out of the store's order: {sent:?}");
    cluster.stop().await
}
