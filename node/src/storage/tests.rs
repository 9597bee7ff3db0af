//! The same storage tests, run over both backends.

use std::sync::Arc;

use super::*;
use crate::audit::{AuditAction, Outcome};
use crate::model::{AgencyId, Caller, Role, SubjectId};

/// An audit draft of a write at time `n` (ms), for tests.
pub(crate) fn draft(n: i64) -> AuditDraft {
    AuditDraft {
        time: Timestamp::from_millis(n),
        agency: "school.test".into(),
        user: "u".into(),
        action: AuditAction::Write,
        outcome: Outcome::Ok,
        plan: None,
        sections: vec![],
        detail: String::new(),
        basis: String::new(),
    }
}

/// A chunk of (opaque) bytes for a section, heads unknown.
fn write(key: SectionKey, bytes: Vec<u8>) -> SectionWrite {
    SectionWrite {
        key,
        bytes,
        heads: vec![],
    }
}

fn plan() -> PlanRecord {
    PlanRecord {
        id: PlanId::random(),
        subject: SubjectId::random(),
        home: AgencyId::parse("school.test").unwrap(),
        created_at: Timestamp::from_millis(1),
    }
}

fn key(plan: &PlanRecord, section: &str) -> SectionKey {
    SectionKey {
        plan: plan.id,
        section: SectionName::parse(section).unwrap(),
    }
}

/// A coordinator of `plan`'s home, and the gate's permit for them to read `key`.
fn home_reads(plan: &PlanRecord, key: &SectionKey) -> (Caller, crate::gate::ReadPermit) {
    let coordinator = Caller {
        agency: plan.home.clone(),
        user: "u".into(),
        role: Role::Coordinator,
        subjects: vec![],
    };
    let permit = crate::gate::read(
        &coordinator,
        plan,
        &key.section,
        &weft_consent::ConsentSet::new(),
        Timestamp::from_millis(2),
    )
    .unwrap();
    (coordinator, permit)
}

fn backends() -> Vec<(&'static str, Arc<dyn Backend>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(sled::SledBackend::open(dir.path()).unwrap());
    vec![
        ("memory", Arc::new(memory::MemoryBackend::new()), None),
        ("sled", sled, Some(dir)),
    ]
}

#[test]
fn commits_write_chunks_feed_and_audit_together() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend).unwrap();
        let p = plan();
        let goals = key(&p, "goals");
        let notes = key(&p, "notes/clinic.test");
        let batch = CommitBatch {
            new_plans: vec![p.clone()],
            changes: vec![
                write(goals.clone(), b"one".to_vec()),
                write(notes.clone(), b"two".to_vec()),
            ],
            new_user: None,
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures: vec![],
            audit: draft(1),
        };
        let c = store.commit(batch.clone()).unwrap();
        assert_eq!(
            c.feed.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![1, 2],
            "{name}"
        );
        assert_eq!(c.audit.index, 1, "{name}");
        store
            .commit(CommitBatch {
                new_plans: vec![],
                changes: vec![write(goals.clone(), b"three".to_vec())],
                new_user: None,
                consent_entries: vec![],
                ensure_plan: None,
                replication: vec![],
                known_to: None,
                family: vec![],
                disclosures: vec![],
                audit: draft(2),
            })
            .unwrap();

        assert_eq!(store.plan(p.id).unwrap(), Some(p.clone()), "{name}");
        let s = store.section(&goals).unwrap().unwrap();
        assert_eq!(s.chunks, vec![b"one".to_vec(), b"three".to_vec()], "{name}");
        assert_eq!(s.meta.last_seq, 3, "{name}");
        let mut sections = store.sections_of(p.id).unwrap();
        sections.sort();
        assert_eq!(
            sections,
            vec![goals.section.clone(), notes.section.clone()],
            "{name}"
        );
        // The feed holds each section's last change: goals' first one (1) is gone.
        let feed = store.feed_since(0, 10).unwrap();
        assert_eq!(
            feed.iter()
                .map(|f| (f.seq, f.key.clone()))
                .collect::<Vec<_>>(),
            vec![(2, notes.clone()), (3, goals.clone())],
            "{name}"
        );
        assert_eq!(store.verify_audit().unwrap(), Ok(2), "{name}");
        let stats = store.stats().unwrap();
        assert_eq!(
            (stats.plans, stats.feed_seq, stats.audit_entries),
            (1, 3, 2),
            "{name}"
        );
    }
}

#[test]
fn a_failed_commit_writes_nothing() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend).unwrap();
        let p = plan();
        let k = key(&p, "goals");
        let batch = CommitBatch {
            new_plans: vec![p.clone()],
            changes: vec![write(k.clone(), b"a".to_vec())],
            new_user: None,
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures: vec![],
            audit: draft(1),
        };
        store.commit(batch.clone()).unwrap();
        let before = store.stats().unwrap();
        // The same plan again: rejected, and its chunk, feed entry and audit entry with it.
        let err = store.commit(CommitBatch {
            new_plans: vec![p.clone()],
            changes: vec![write(k.clone(), b"b".to_vec())],
            new_user: None,
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures: vec![],
            audit: draft(2),
        });
        assert!(matches!(err, Err(Error::AlreadyExists(_))), "{name}");
        assert_eq!(store.stats().unwrap(), before, "{name}");
        assert_eq!(
            store.section(&k).unwrap().unwrap().chunks,
            vec![b"a".to_vec()],
            "{name}"
        );
    }
}

#[test]
fn users_are_unique_by_name() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend).unwrap();
        let user = UserRecord {
            name: "ana".into(),
            role: Role::Caseworker,
            subjects: vec![],
            created_at: Timestamp::from_millis(1),
            token_hash: "h".into(),
            agency: None,
        };
        let batch = CommitBatch {
            new_plans: vec![],
            changes: vec![],
            new_user: Some(user.clone()),
            consent_entries: vec![],
            ensure_plan: None,
            replication: vec![],
            known_to: None,
            family: vec![],
            disclosures: vec![],
            audit: draft(1),
        };
        store.commit(batch.clone()).unwrap();
        assert!(
            matches!(store.commit(batch.clone()), Err(Error::AlreadyExists(_))),
            "{name}"
        );
        assert_eq!(store.users().unwrap(), vec![user], "{name}");
    }
}

#[test]
fn consent_entries_are_filed_by_subject_and_never_overwritten() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend).unwrap();
        let (a, b) = (SubjectId::random(), SubjectId::random());
        let entry = |subject, kind, id: &str| ConsentEntry {
            subject,
            kind,
            id: id.into(),
            bytes: id.as_bytes().to_vec(),
        };
        let mut batch = CommitBatch::audit_only(draft(1));
        batch.consent_entries = vec![
            entry(a, ConsentKind::Consent, "c-1"),
            entry(a, ConsentKind::Revocation, "v-1"),
            entry(b, ConsentKind::Consent, "c-2"),
        ];
        store.commit(batch.clone()).unwrap();
        let of_a = store.consent_entries(Some(a)).unwrap();
        assert_eq!(
            of_a.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["c-1", "v-1"],
            "{name}"
        );
        assert_eq!(of_a[1].kind, ConsentKind::Revocation, "{name}");
        assert_eq!(store.consent_entries(None).unwrap().len(), 3, "{name}");
        // A signed record is immutable: the same id again is refused, with nothing written.
        let before = store.stats().unwrap();
        let mut again = CommitBatch::audit_only(draft(2));
        again.consent_entries = vec![entry(a, ConsentKind::Consent, "c-1")];
        assert!(
            matches!(store.commit(again), Err(Error::AlreadyExists(_))),
            "{name}"
        );
        assert_eq!(store.stats().unwrap(), before, "{name}");
    }
}

#[test]
fn compaction_replaces_chunks_with_a_snapshot() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend).unwrap();
        let p = plan();
        let k = key(&p, "profile");
        for i in 0..5u8 {
            store
                .commit(CommitBatch {
                    new_plans: vec![],
                    changes: vec![write(k.clone(), vec![i])],
                    new_user: None,
                    consent_entries: vec![],
                    ensure_plan: None,
                    replication: vec![],
                    known_to: None,
                    family: vec![],
                    disclosures: vec![],
                    audit: draft(i as i64),
                })
                .unwrap();
        }
        store.compact(&k, b"snap", 4).unwrap();
        let s = store.section(&k).unwrap().unwrap();
        assert_eq!(s.snapshot.as_deref(), Some(&b"snap"[..]), "{name}");
        assert_eq!(s.chunks, vec![vec![4u8]], "{name}");
        assert_eq!(s.meta.first_chunk, 4, "{name}");
        assert_eq!(s.meta.bytes, 5, "{name}");
    }
}

#[test]
fn sled_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let p = plan();
    let k = key(&p, "goals");
    {
        let store = Store::open(Arc::new(sled::SledBackend::open(dir.path()).unwrap())).unwrap();
        store
            .commit(CommitBatch {
                new_plans: vec![p.clone()],
                changes: vec![write(k.clone(), b"x".to_vec())],
                new_user: None,
                consent_entries: vec![],
                ensure_plan: None,
                replication: vec![],
                known_to: None,
                family: vec![],
                disclosures: vec![],
                audit: draft(1),
            })
            .unwrap();
    }
    let store = Store::open(Arc::new(sled::SledBackend::open(dir.path()).unwrap())).unwrap();
    assert_eq!(store.plan(p.id).unwrap(), Some(p));
    assert_eq!(
        store.section(&k).unwrap().unwrap().chunks,
        vec![b"x".to_vec()]
    );
    assert_eq!(store.verify_audit().unwrap(), Ok(1));
}

#[test]
fn a_store_from_another_format_version_is_refused() {
    let backend: Arc<dyn Backend> = Arc::new(memory::MemoryBackend::new());
    backend
        .transact(&|t| t.put(Tree::Meta, KEY_FORMAT, &99u32.to_be_bytes()))
        .unwrap();
    let err = Store::open(backend).err().unwrap().to_string();
    assert!(err.contains("format version 99"), "{err}");
}

/// A backend whose transactions take a while and are counted, so concurrent writers queue up
/// behind one another.
struct Slow {
    inner: Arc<dyn Backend>,
    transactions: std::sync::atomic::AtomicU64,
}

impl Layer for Slow {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        self.inner.transact(f)
    }
}

#[test]
fn queued_commits_share_one_transaction_and_a_failing_one_fails_alone() {
    for (name, inner, _dir) in backends() {
        let slow = Arc::new(Slow {
            inner,
            transactions: Default::default(),
        });
        let store = Arc::new(Store::open(slow.clone()).unwrap());
        let before = slow.transactions.load(Ordering::SeqCst);
        // Eight writers at once: each adds its own plan with a section, and every one of
        // them also tries to create the same shared plan, which only one can do.
        let shared = plan();
        let writers = 8;
        let barrier = Arc::new(std::sync::Barrier::new(writers));
        let handles: Vec<_> = (0..writers)
            .map(|i| {
                let (store, barrier, shared) = (store.clone(), barrier.clone(), shared.clone());
                std::thread::spawn(move || {
                    let own = plan();
                    let own_batch = CommitBatch {
                        new_plans: vec![own.clone()],
                        changes: vec![write(key(&own, "goals"), vec![i as u8; 8])],
                        ..CommitBatch::audit_only(draft(i as i64))
                    };
                    let shared_batch = CommitBatch {
                        new_plans: vec![shared.clone()],
                        changes: vec![write(key(&shared, "goals"), vec![0xee; 8])],
                        ..CommitBatch::audit_only(draft(100 + i as i64))
                    };
                    barrier.wait();
                    let own = store.commit(own_batch).map(|_| ());
                    let shared = store.commit(shared_batch).map(|_| ());
                    (own, shared)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

        assert!(results.iter().all(|(own, _)| own.is_ok()), "{name}");
        let shared_ok = results.iter().filter(|(_, s)| s.is_ok()).count();
        assert_eq!(shared_ok, 1, "{name}: exactly one writer creates the plan");
        assert!(
            results
                .iter()
                .filter_map(|(_, s)| s.as_ref().err())
                .all(|e| matches!(e, Error::AlreadyExists(_))),
            "{name}"
        );
        let transactions = slow.transactions.load(Ordering::SeqCst) - before;
        assert!(
            transactions < 2 * writers as u64,
            "{name}: {transactions} engine transactions for {} commits",
            2 * writers
        );
        // What landed is exactly the successful commits: one chunk and feed entry each, an
        // unbroken audit chain, and nothing of the refused ones.
        let landed = writers as u64 + 1;
        let stats = store.stats().unwrap();
        assert_eq!(stats.plans, landed, "{name}");
        assert_eq!(stats.feed_seq, landed, "{name}");
        assert_eq!(stats.audit_entries, landed, "{name}");
        assert_eq!(store.verify_audit().unwrap(), Ok(landed), "{name}");
        let feed = store.feed_since(0, 100).unwrap();
        assert_eq!(
            feed.iter().map(|f| f.seq).collect::<Vec<_>>(),
            (1..=landed).collect::<Vec<_>>(),
            "{name}"
        );
        let stored = store.section(&key(&shared, "goals")).unwrap().unwrap();
        assert_eq!(stored.chunks, vec![vec![0xee; 8]], "{name}");
        assert_eq!(
            store.plan(shared.id).unwrap(),
            Some(shared.clone()),
            "{name}"
        );
    }
}

/// A backend whose next transaction panics.
struct PanicsOnce {
    inner: Arc<dyn Backend>,
    armed: std::sync::atomic::AtomicBool,
}

impl Layer for PanicsOnce {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the engine failed (a test)");
        }
        self.inner.transact(f)
    }
}

#[test]
fn many_writers_each_get_their_outcome_and_a_panic_fails_only_its_transaction() {
    let backend = Arc::new(PanicsOnce {
        inner: Arc::new(memory::MemoryBackend::new()),
        armed: Default::default(),
    });
    let store = Arc::new(Store::open(backend.clone()).unwrap());
    let (done, finished) = std::sync::mpsc::channel();
    // 64 writers × 50 commits: every writer is answered (none waits forever for a lead or
    // an outcome), and every commit lands exactly once, in one unbroken feed and audit chain.
    for w in 0..64i64 {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let own = plan();
            for i in 0..50 {
                let batch = CommitBatch {
                    new_plans: if i == 0 { vec![own.clone()] } else { vec![] },
                    changes: vec![write(key(&own, "goals"), vec![i as u8; 8])],
                    ..CommitBatch::audit_only(draft(w * 100 + i))
                };
                store.commit(batch).unwrap();
            }
            done.send(()).unwrap();
        });
    }
    for _ in 0..64 {
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a writer was never answered");
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.feed_seq, 64 * 50);
    assert_eq!(store.verify_audit().unwrap(), Ok(64 * 50));

    // A transaction that panics fails its writers; the next writers are answered and land.
    backend.armed.store(true, Ordering::SeqCst);
    let own = plan();
    let failed = store.commit(CommitBatch {
        new_plans: vec![own.clone()],
        ..CommitBatch::audit_only(draft(1))
    });
    assert!(
        matches!(&failed, Err(Error::Internal(m)) if m.contains("panicked")),
        "{failed:?}"
    );
    let store2 = store.clone();
    let after = std::thread::spawn(move || {
        store2.commit(CommitBatch {
            new_plans: vec![own],
            ..CommitBatch::audit_only(draft(2))
        })
    });
    after.join().unwrap().unwrap();
    assert_eq!(store.stats().unwrap().feed_seq, 64 * 50);
    assert_eq!(store.verify_audit().unwrap(), Ok(64 * 50 + 1));
}

/// A signed consent for `subject` whose two provisions end at `ends` (ms).
pub(crate) fn consent_ending(subject: SubjectId, id: &str, ends: [i64; 2]) -> ConsentEntry {
    use weft_consent::{
        Access, CollectionMethod, ConsentId, ConsentRecord, Grantor, Provision, Purpose, Recorder,
        Relationship,
    };
    let home = AgencyId::parse("school.test").unwrap();
    let provision = |grantee: &str, until: i64| Provision {
        grantee: AgencyId::parse(grantee).unwrap(),
        sections: vec!["goals".into()],
        access: Access::Read,
        purpose: Purpose::CareCoordination,
        valid_from: Timestamp::from_millis(1),
        valid_until: Some(Timestamp::from_millis(until)),
    };
    let record = ConsentRecord {
        id: ConsentId::parse(id).unwrap(),
        subject: subject.to_string(),
        grantor: Grantor {
            name: "A. Guardian".into(),
            relationship: Relationship::Parent,
        },
        disclosing_agency: home.clone(),
        recorded_by: Recorder {
            agency: home.clone(),
            user: "coordinator".into(),
        },
        recorded_at: Timestamp::from_millis(1),
        collection_method: CollectionMethod::ESignature,
        provisions: vec![
            provision("clinic.test", ends[0]),
            provision("nutrition.test", ends[1]),
        ],
    };
    let key = weft_consent::ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    ConsentEntry {
        subject,
        kind: ConsentKind::Consent,
        id: id.into(),
        bytes: weft_consent::sign_consent(&record, &home, &key)
            .unwrap()
            .to_bytes(),
    }
}

#[test]
fn the_expiry_schedule_names_each_child_once_per_ended_provision_and_only_after_it_ends() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend.clone()).unwrap();
        let (a, b, c) = (
            SubjectId::random(),
            SubjectId::random(),
            SubjectId::random(),
        );
        let mut batch = CommitBatch::audit_only(draft(1));
        batch.consent_entries = vec![
            consent_ending(a, "c-a", [1_000, 5_000]),
            consent_ending(b, "c-b", [2_000, 2_000]),
            consent_ending(c, "c-c", [9_000, 9_000]),
        ];
        store.commit(batch).unwrap();
        let ended = |now: i64| {
            let (mut subjects, to) = store.consents_ended(Timestamp::from_millis(now)).unwrap();
            subjects.sort();
            (subjects, to)
        };
        let sorted = |mut v: Vec<SubjectId>| {
            v.sort();
            v
        };
        assert_eq!(ended(999), (vec![], 999), "{name}: nothing ended yet");
        assert_eq!(ended(2_000), (sorted(vec![a, b]), 2_000), "{name}");
        // Until the sweep says it is done, the same ends are named again.
        assert_eq!(ended(2_500).0, sorted(vec![a, b]), "{name}");
        store.consents_swept(2_500).unwrap();
        assert_eq!(ended(4_999), (vec![], 4_999), "{name}");
        // a's second provision ends later: a is named again then, c not before its end.
        assert_eq!(ended(6_000).0, vec![a], "{name}");
        store.consents_swept(6_000).unwrap();
        // A sweep that finished late never moves the schedule back.
        store.consents_swept(3_000).unwrap();
        assert_eq!(ended(8_999).0, Vec::<SubjectId>::new(), "{name}");
        // A consent stored with an end the sweep has passed is named by the next sweep.
        let d = SubjectId::random();
        let mut late = CommitBatch::audit_only(draft(2));
        late.consent_entries = vec![consent_ending(d, "c-d", [10, 20])];
        store.commit(late).unwrap();
        assert_eq!(ended(7_000).0, vec![d], "{name}");
        assert_eq!(ended(9_500).0, sorted(vec![c, d]), "{name}");
        // A store written before the schedule existed gets one at open.
        drop(store);
        let store = Store::open(backend.clone()).unwrap();
        backend
            .transact(&|txn| {
                txn.remove(Tree::Meta, KEY_CONSENT_ENDS_INDEXED)?;
                txn.remove(Tree::Meta, KEY_CONSENTS_SWEPT)?;
                for s in [a, b, c, d] {
                    for end in [10, 20, 1_000, 2_000, 5_000, 6_001, 9_000] {
                        txn.remove(Tree::Meta, &consent_end_key(end, Some(s)))?;
                    }
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(
            store
                .consents_ended(Timestamp::from_millis(9_500))
                .unwrap()
                .0
                .len(),
            0,
            "{name}: the schedule was removed"
        );
        drop(store);
        let store = Store::open(backend).unwrap();
        let (mut subjects, _) = store.consents_ended(Timestamp::from_millis(9_500)).unwrap();
        subjects.sort();
        assert_eq!(subjects, sorted(vec![a, b, c, d]), "{name}");
    }
}

#[test]
fn consents_are_found_by_id_and_by_the_agencies_they_name_also_in_an_older_store() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend.clone()).unwrap();
        let (a, b) = (SubjectId::random(), SubjectId::random());
        let clinic = AgencyId::parse("clinic.test").unwrap();
        let nutrition = AgencyId::parse("nutrition.test").unwrap();
        let other = AgencyId::parse("other.test").unwrap();
        let sorted = |mut v: Vec<SubjectId>| {
            v.sort();
            v
        };
        let mut batch = CommitBatch::audit_only(draft(1));
        batch.consent_entries = vec![consent_ending(a, "c-a", [1_000, 5_000])];
        store.commit(batch).unwrap();
        let (_, first) = store.consent_changes_since(0).unwrap();
        let mut batch = CommitBatch::audit_only(draft(2));
        batch.consent_entries = vec![consent_ending(b, "c-b", [1_000, 5_000])];
        store.commit(batch).unwrap();
        let check = |store: &Store, what: &str| {
            let found = store.consent_by_id("c-b").unwrap().expect("c-b is stored");
            assert_eq!(
                (found.subject, found.kind),
                (b, ConsentKind::Consent),
                "{name} {what}"
            );
            assert!(
                store.consent_by_id("c-zz").unwrap().is_none(),
                "{name} {what}"
            );
            assert!(store.names(&clinic, a).unwrap(), "{name} {what}");
            assert!(store.names(&nutrition, b).unwrap(), "{name} {what}");
            assert!(!store.names(&other, a).unwrap(), "{name} {what}");
            // From the start (the index) and from a position (the log), the same answer
            // as the log gives every agency the records name, and nothing for another.
            let (all, head) = store.consent_changes_since(0).unwrap();
            let (named, at) = store.consent_changes_naming(&clinic, 0).unwrap();
            assert_eq!((sorted(named), at), (sorted(all), head), "{name} {what}");
            let (named, at) = store.consent_changes_naming(&nutrition, first).unwrap();
            assert_eq!((named, at), (vec![b], head), "{name} {what}");
            let (named, _) = store.consent_changes_naming(&other, 0).unwrap();
            assert!(named.is_empty(), "{name} {what}");
        };
        check(&store, "as written");
        // A store written before the indexes existed gets them at open.
        drop(store);
        backend
            .transact(&|txn| {
                txn.remove(Tree::Meta, KEY_CONSENT_IDS_GRANTEES_INDEXED)?;
                for (id, s) in [("c-a", a), ("c-b", b)] {
                    txn.remove(Tree::Meta, &consent_id_key(id))?;
                    for agency in [&clinic, &nutrition] {
                        txn.remove(Tree::Meta, &consent_grantee_key(agency, Some(s)))?;
                    }
                }
                Ok(())
            })
            .unwrap();
        let store = Store::open(backend).unwrap();
        check(&store, "after the migration");
    }
}

#[test]
fn the_store_tells_what_a_peer_lacks_from_the_heads_it_notes() {
    use crate::catalogue::spec_for;
    use crate::section::Edit;
    let store = StoreHandle::new(Store::open(Arc::new(memory::MemoryBackend::new())).unwrap());
    let p = plan();
    let k = key(&p, "profile");
    let (coordinator, permit) = home_reads(&p, &k);
    let spec = spec_for("profile").unwrap();
    let mut doc = SectionDoc::new();
    let edit = |doc: &mut SectionDoc, grade: &str| {
        let f = spec.field("grade").unwrap();
        let edit = Edit::Set(vec![(f, f.parse("profile", grade).unwrap())]);
        doc.apply(spec, &coordinator, &edit, Timestamp::from_millis(3))
            .unwrap()
    };
    let commit = |writes: Vec<SectionWrite>, new_plans: Vec<PlanRecord>| {
        let mut batch = CommitBatch::audit_only(draft(4));
        batch.changes = writes;
        batch.new_plans = new_plans;
        store.store.commit(batch).unwrap();
    };
    // A change with the heads after it, as the node's edits write them.
    let noted = |bytes: &[u8], heads: &[ChangeHash]| SectionWrite {
        heads: heads.to_vec(),
        ..write(k.clone(), bytes.to_vec())
    };
    let at = |bytes: &[u8], heads: &[ChangeHash], seq: u64| StoredTail {
        bytes: bytes.to_vec(),
        heads: heads.to_vec(),
        last_seq: seq,
    };

    let first = edit(&mut doc, "1");
    let h1 = doc.heads();
    commit(vec![noted(&first, &h1)], vec![p.clone()]);
    assert_eq!(
        store.stored_after(&permit, &h1).unwrap(),
        Some(at(b"", &h1, 1))
    );
    // A peer with other heads, or none: only the document can tell.
    assert_eq!(store.stored_after(&permit, &[]).unwrap(), None);

    let second = edit(&mut doc, "2");
    let h2 = doc.heads();
    commit(vec![noted(&second, &h2)], vec![]);
    let meta = store.store.section_meta(&k).unwrap().unwrap();
    assert_eq!(meta.heads.as_deref(), Some(h2.as_slice()));
    assert_eq!(
        store.stored_after(&permit, &h1).unwrap(),
        Some(at(&second, &h2, 2)),
        "a peer one change behind gets the last chunk"
    );
    assert_eq!(
        store.stored_after(&permit, &h2).unwrap(),
        Some(at(b"", &h2, 2))
    );

    // Two changes behind: the two newest chunks, as stored, in order.
    let third = edit(&mut doc, "3");
    let h3 = doc.heads();
    commit(vec![noted(&third, &h3)], vec![]);
    assert_eq!(
        store.stored_after(&permit, &h1).unwrap(),
        Some(at(&[second.as_slice(), &third].concat(), &h3, 3))
    );
    // Heads the section never had (a peer with history of its own): only the document can
    // tell.
    let mut other = SectionDoc::load(None, &[edit(&mut SectionDoc::new(), "k")]).unwrap();
    assert_eq!(store.stored_after(&permit, &other.heads()).unwrap(), None);

    // Folded into the snapshot, the chunks are no longer chunks of their own.
    let meta = store.store.section_meta(&k).unwrap().unwrap();
    store
        .store
        .compact(&k, &doc.save(), meta.next_chunk)
        .unwrap();
    assert_eq!(store.stored_after(&permit, &h2).unwrap(), None);
    assert_eq!(
        store.stored_after(&permit, &h3).unwrap(),
        Some(at(b"", &h3, 3))
    );

    // A writer that does not say its heads makes the store forget them.
    commit(vec![write(k.clone(), edit(&mut doc, "4"))], vec![]);
    let meta = store.store.section_meta(&k).unwrap().unwrap();
    assert_eq!(meta.heads, None);
    assert_eq!(store.stored_after(&permit, &h3).unwrap(), None);
    assert_eq!(store.stored_after(&permit, &doc.heads()).unwrap(), None);
}

/// A backend whose syncs take 2 ms and record how far the feed was durable: the feed
/// sequence committed when the last finished sync started.
struct SlowSync {
    inner: Arc<dyn Backend>,
    transactions: std::sync::atomic::AtomicU64,
    syncs: std::sync::atomic::AtomicU64,
    durable_seq: std::sync::atomic::AtomicU64,
}

impl Layer for SlowSync {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }
    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        self.transactions.fetch_add(1, Ordering::SeqCst);
        self.inner.transact(f)
    }
    fn sync(&self) -> Result<()> {
        let seq = self
            .inner
            .get(Tree::Meta, KEY_FEED_SEQ)?
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(2));
        self.inner.sync()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.durable_seq.fetch_max(seq, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_writers_share_transactions_and_are_answered_once_durable() {
    let backend = Arc::new(SlowSync {
        inner: Arc::new(memory::MemoryBackend::new()),
        transactions: Default::default(),
        syncs: Default::default(),
        durable_seq: Default::default(),
    });
    let store = StoreHandle::new(Store::open(backend.clone()).unwrap());
    let before = backend.transactions.load(Ordering::SeqCst);
    // 56 async writers and 8 threads committing through the blocking store at once, 50
    // commits each: every one is answered, async ones only once a sync that started after
    // their transaction has finished.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..56i64 {
        let (store, backend) = (store.clone(), backend.clone());
        writers.spawn(async move {
            let own = plan();
            for i in 0..50 {
                let batch = CommitBatch {
                    new_plans: if i == 0 { vec![own.clone()] } else { vec![] },
                    changes: vec![write(key(&own, "goals"), vec![i as u8; 8])],
                    ..CommitBatch::audit_only(draft(w * 100 + i))
                };
                let seq = store.commit(batch).await.unwrap().feed[0].seq;
                assert!(backend.durable_seq.load(Ordering::SeqCst) >= seq);
            }
        });
    }
    let threads: Vec<_> = (0..8i64)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store
                        .blocking()
                        .commit(CommitBatch::audit_only(draft(10_000 + w * 100 + i)))
                        .unwrap();
                }
            })
        })
        .collect();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(done) = writers.join_next().await {
            done.unwrap();
        }
    })
    .await;
    assert!(answered.is_ok(), "an async writer was never answered");
    for t in threads {
        t.join().unwrap();
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.feed_seq, 56 * 50);
    assert_eq!(store.verify_audit().await.unwrap(), Ok(64 * 50));
    // Queued writes shared transactions and syncs (one each would be 3,200 of both).
    let transactions = backend.transactions.load(Ordering::SeqCst) - before;
    let syncs = backend.syncs.load(Ordering::SeqCst);
    assert!(transactions < 64 * 50 / 4, "{transactions} transactions");
    assert!(syncs < 64 * 50 / 4, "{syncs} syncs");

    // Hints are answered once applied, without a sync of their own.
    let syncs = backend.syncs.load(Ordering::SeqCst);
    store
        .replication_hint(vec![(b"cursor/x".to_vec(), Some(b"1".to_vec()))])
        .await
        .unwrap();
    assert_eq!(backend.syncs.load(Ordering::SeqCst), syncs);
    assert_eq!(
        store.replication_get(b"cursor/x".to_vec()).await.unwrap(),
        Some(b"1".to_vec())
    );
}

#[tokio::test]
async fn an_async_writers_panicking_transaction_fails_alone_and_an_abandoned_lead_fails_its_jobs() {
    let backend = Arc::new(PanicsOnce {
        inner: Arc::new(memory::MemoryBackend::new()),
        armed: Default::default(),
    });
    let store = StoreHandle::new(Store::open(backend.clone()).unwrap());
    backend.armed.store(true, Ordering::SeqCst);
    let failed = store.commit(CommitBatch::audit_only(draft(1))).await;
    assert!(
        matches!(&failed, Err(Error::Internal(m)) if m.contains("panicked")),
        "{failed:?}"
    );
    store
        .commit(CommitBatch::audit_only(draft(2)))
        .await
        .unwrap();
    assert_eq!(store.verify_audit().await.unwrap(), Ok(1));

    // A writer told to lead that cannot (its runtime is shutting down) fails what is
    // queued, and the next writer leads.
    let writer = &store.blocking().writer;
    // The last commit's leader may still be letting go of the lead after answering.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while writer.is_leading() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lead was never let go"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let (outcome, lead) = writer.enqueue(Box::new(|txn| txn.put(Tree::Meta, b"x", b"1")), false);
    assert!(lead);
    let (second, lead) = writer.enqueue(Box::new(|txn| txn.put(Tree::Meta, b"y", b"1")), false);
    assert!(!lead, "one leader at a time");
    writer.abandon();
    for rx in [outcome, second] {
        assert!(matches!(
            rx.await.unwrap(),
            writer::Answer::Done(Err(Error::Internal(_)))
        ));
    }
    assert_eq!(
        store.blocking().backend.get(Tree::Meta, b"x").unwrap(),
        None
    );
    store
        .commit(CommitBatch::audit_only(draft(3)))
        .await
        .unwrap();
    assert_eq!(store.verify_audit().await.unwrap(), Ok(2));
}

#[tokio::test]
async fn a_commit_whose_caller_goes_away_still_lands_and_is_counted() {
    use futures::FutureExt;
    let store = StoreHandle::new(Store::open(Arc::new(memory::MemoryBackend::new())).unwrap());
    let own = plan();
    // Polled once (so it is queued), then dropped, as when a client disconnects.
    let pending = store
        .commit(CommitBatch {
            new_plans: vec![own.clone()],
            ..CommitBatch::audit_only(draft(1))
        })
        .now_or_never();
    assert!(pending.is_none(), "a commit is not done at its first poll");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.plan(own.id).await.unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit never landed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Its bookkeeping ran too: the plan count matches what is stored.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.stats().await.unwrap().plans != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the landed plan was never counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[test]
fn the_plan_count_is_kept_with_the_plans_and_read_when_the_store_opens() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend.clone()).unwrap();
        let (a, b, c) = (plan(), plan(), plan());
        store
            .commit(CommitBatch {
                new_plans: vec![a, b],
                ..CommitBatch::audit_only(draft(1))
            })
            .unwrap();
        // A plan first known from a peer's change counts once, however often it comes.
        for n in 2..4 {
            store
                .commit(CommitBatch {
                    ensure_plan: Some(c.clone()),
                    changes: vec![write(key(&c, "goals"), b"x".to_vec())],
                    ..CommitBatch::audit_only(draft(n))
                })
                .unwrap();
        }
        assert_eq!(store.stats().unwrap().plans, 3, "{name}");
        // A plan left with no section is forgotten, and counted out.
        store
            .purge(&[key(&c, "goals")], &CommitBatch::audit_only(draft(4)))
            .unwrap();
        assert_eq!(store.stats().unwrap().plans, 2, "{name}");
        assert_eq!(
            backend.get(Tree::Meta, KEY_PLAN_COUNT).unwrap(),
            Some(2u64.to_be_bytes().to_vec()),
            "{name}"
        );
        drop(store);
        // Opening reads the count rather than counting: a count set aside shows.
        backend
            .transact(&|txn| txn.put(Tree::Meta, KEY_PLAN_COUNT, &7u64.to_be_bytes()))
            .unwrap();
        let reopened = Store::open(backend.clone()).unwrap();
        assert_eq!(reopened.stats().unwrap().plans, 7, "{name}");
        drop(reopened);
        // A store written before the count is counted once, when it opens, and keeps it.
        backend
            .transact(&|txn| txn.remove(Tree::Meta, KEY_PLAN_COUNT))
            .unwrap();
        let reopened = Store::open(backend.clone()).unwrap();
        assert_eq!(reopened.stats().unwrap().plans, 2, "{name}");
        assert_eq!(
            backend.get(Tree::Meta, KEY_PLAN_COUNT).unwrap(),
            Some(2u64.to_be_bytes().to_vec()),
            "{name}"
        );
        // A count found too low (an older binary added plans without it) never fails a purge.
        backend
            .transact(&|txn| txn.put(Tree::Meta, KEY_PLAN_COUNT, &0u64.to_be_bytes()))
            .unwrap();
        drop(reopened);
        let low = Store::open(backend.clone()).unwrap();
        let d = plan();
        low.commit(CommitBatch {
            ensure_plan: Some(d.clone()),
            changes: vec![write(key(&d, "goals"), b"y".to_vec())],
            ..CommitBatch::audit_only(draft(5))
        })
        .unwrap();
        backend
            .transact(&|txn| txn.put(Tree::Meta, KEY_PLAN_COUNT, &0u64.to_be_bytes()))
            .unwrap();
        low.purge(&[key(&d, "goals")], &CommitBatch::audit_only(draft(6)))
            .unwrap();
        assert_eq!(low.plan(d.id).unwrap(), None, "{name}");
        assert_eq!(
            backend.get(Tree::Meta, KEY_PLAN_COUNT).unwrap(),
            Some(0u64.to_be_bytes().to_vec()),
            "{name}"
        );
    }
}

/// The feed as (sequence, section) pairs.
fn feed_of(store: &Store) -> Vec<(u64, SectionKey)> {
    store
        .feed_since(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.key))
        .collect()
}

#[test]
fn the_feed_keeps_each_sections_last_change_and_a_purge_removes_it() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend.clone()).unwrap();
        let (p, q) = (plan(), plan());
        let (goals, notes, other) = (
            key(&p, "goals"),
            key(&p, "notes/clinic.test"),
            key(&q, "goals"),
        );
        let commit = |n: i64, changes: Vec<SectionWrite>| {
            store
                .commit(CommitBatch {
                    changes,
                    ..CommitBatch::audit_only(draft(n))
                })
                .unwrap()
        };
        commit(1, vec![write(goals.clone(), b"a".to_vec())]);
        commit(2, vec![write(notes.clone(), b"b".to_vec())]);
        commit(3, vec![write(other.clone(), b"c".to_vec())]);
        // Two changes of one section in one commit leave the second's entry.
        let c = commit(
            4,
            vec![
                write(goals.clone(), b"d".to_vec()),
                write(goals.clone(), b"e".to_vec()),
            ],
        );
        assert_eq!(
            c.feed.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 5],
            "{name}"
        );
        assert_eq!(
            feed_of(&store),
            vec![(2, notes.clone()), (3, other.clone()), (5, goals.clone())],
            "{name}"
        );
        assert_eq!(store.stats().unwrap().feed_seq, 5, "{name}");
        // A purge removes the purged sections' entries and leaves the others.
        store
            .purge(
                std::slice::from_ref(&goals),
                &CommitBatch::audit_only(draft(5)),
            )
            .unwrap();
        assert_eq!(
            feed_of(&store),
            vec![(2, notes.clone()), (3, other.clone())],
            "{name}"
        );
        store
            .purge(
                std::slice::from_ref(&notes),
                &CommitBatch::audit_only(draft(6)),
            )
            .unwrap();
        assert_eq!(feed_of(&store), vec![(3, other.clone())], "{name}");
        assert!(
            store
                .trees_with_key_containing(p.id.0.as_bytes())
                .unwrap()
                .is_empty(),
            "{name}"
        );
    }
}

#[test]
fn a_format_1_store_keeps_only_each_sections_last_change_once_it_opens() {
    for (name, backend, _dir) in backends() {
        let store = Store::open(backend.clone()).unwrap();
        let p = plan();
        let (goals, notes) = (key(&p, "goals"), key(&p, "notes/clinic.test"));
        for (n, k) in [(1, &goals), (2, &notes), (3, &goals), (4, &goals)] {
            store
                .commit(CommitBatch {
                    changes: vec![write(k.clone(), vec![n as u8])],
                    ..CommitBatch::audit_only(draft(n))
                })
                .unwrap();
        }
        drop(store);
        // Format 1 kept an entry per change: put back superseded ones (goals' 1 and 3, and
        // more than a page of a section since purged), and one that does not parse.
        let purged = key(&plan(), "goals");
        let entry = |seq: u64, key: &SectionKey| {
            let e = FeedEntry {
                seq,
                key: key.clone(),
                time: Timestamp::from_millis(seq as i64),
                known_to: None,
            };
            (seq.to_be_bytes(), json(&e))
        };
        let mut older = vec![entry(1, &goals), entry(3, &goals)];
        older.extend((10..10_020).map(|seq| entry(seq, &purged)));
        let unreadable = 20_000u64.to_be_bytes();
        backend
            .transact(&|txn| {
                for (k, v) in &older {
                    txn.put(Tree::Feed, k, v)?;
                }
                txn.put(Tree::Feed, &unreadable, b"not json")?;
                txn.put(Tree::Meta, KEY_FORMAT, &1u32.to_be_bytes())
            })
            .unwrap();
        let store = Store::open(backend.clone()).unwrap();
        let left: Vec<Vec<u8>> = backend
            .scan(Tree::Feed, &[], None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            left,
            [2u64.to_be_bytes(), 4u64.to_be_bytes(), unreadable].map(|k| k.to_vec()),
            "{name}"
        );
        assert_eq!(
            backend.get(Tree::Meta, KEY_FORMAT).unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec()),
            "{name}"
        );
        // Upgraded, the store is not looked at again: an entry put back now stays.
        drop(store);
        backend
            .transact(&|txn| {
                txn.remove(Tree::Feed, &unreadable)?;
                txn.put(Tree::Feed, &older[0].0, &older[0].1)
            })
            .unwrap();
        let store = Store::open(backend.clone()).unwrap();
        assert_eq!(
            feed_of(&store),
            vec![(1, goals.clone()), (2, notes.clone()), (4, goals.clone())],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_store_keeps_as_many_section_documents_loaded_as_it_is_told() {
    use crate::catalogue::spec_for;
    use crate::section::Edit;
    for capacity in [0, 2, DEFAULT_DOC_CACHE] {
        let store = StoreHandle::with_doc_cache(
            Store::open(Arc::new(memory::MemoryBackend::new())).unwrap(),
            capacity,
        );
        // Three plans' profiles, each edited, committed and handed back, as an edit does.
        let mut kept = Vec::new();
        for n in 0..3 {
            let p = plan();
            let k = key(&p, "profile");
            let (coordinator, permit) = home_reads(&p, &k);
            let spec = spec_for("profile").unwrap();
            let f = spec.field("grade").unwrap();
            let mut doc = SectionDoc::new();
            let change = doc
                .apply(
                    spec,
                    &coordinator,
                    &Edit::Set(vec![(f, f.parse("profile", "3").unwrap())]),
                    Timestamp::from_millis(3),
                )
                .unwrap();
            let mut batch = CommitBatch::audit_only(draft(4 + n));
            batch.changes = vec![write(k.clone(), change)];
            batch.new_plans = vec![p.clone()];
            store.store.commit(batch).unwrap();
            let seq = store.store.section_meta(&k).unwrap().unwrap().last_seq;
            store.keep_doc(&permit, seq, doc).await;
            kept.push((k, seq));
        }
        assert_eq!(store.docs_cached(), capacity.min(3), "capacity {capacity}");
        // The least recently kept leaves first.
        let held: Vec<bool> = kept
            .iter()
            .map(|(k, s)| store.docs.contains(k, *s))
            .collect();
        let expected = match capacity {
            0 => [false, false, false],
            2 => [false, true, true],
            _ => [true, true, true],
        };
        assert_eq!(held, expected, "capacity {capacity}");
    }
}
