//! Weft's side of each scenario: real `weft serve` processes driven over the client API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use weft_proto::v1 as pb;

use crate::cluster::{value, Agency, Federation};
use crate::report::percentile;

const SCHOOL: &str = "school.test";
const CLINIC: &str = "clinic.test";
const NUTRITION: &str = "nutrition.test";

/// Sizes for a run.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Plans seeded (four sections each).
    pub plans: u64,
}

/// Scenario 1's figures.
#[derive(Debug, Default, Clone)]
pub struct Cold {
    pub docs: u64,
    pub saved_bytes: u64,
    pub seconds: f64,
    pub docs_per_s: f64,
    pub wire_bytes: u64,
    pub rss_kib_b: u64,
}

/// Latency figures in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    pub rate: f64,
    pub count: usize,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    /// From the sender's commit being durable to the receiver's (each node's own wall clock
    /// when its change event left, same machine): p50, p99, p99.9 in ms.
    pub durable_p50: Option<f64>,
    pub durable_p99: Option<f64>,
    pub durable_p999: Option<f64>,
    /// Edits that never arrived within the deadline.
    pub lost: usize,
    /// The edit RPC at the sender alone (commit, durable), p50 in ms.
    pub commit_p50: Option<f64>,
    /// Scenario 3: the nodes' CPU time over the step (watches set up, edits, drain) per edit,
    /// in ms. The steadier figure: the 2 cores' limit is 2,000 ms / this.
    pub cpu_ms_per_edit: Option<f64>,
}

/// A two-agency federation with `plans` seeded at the school, all consented to the clinic;
/// started, with the clinic fully caught up. Returns the federation and scenario 1.
pub async fn cold_replication(work: &Path, sizes: Sizes) -> anyhow::Result<(Federation, Cold)> {
    let mut fed = Federation::new(work, &[SCHOOL, CLINIC], &[], true).await?;
    let (docs, saved_bytes) = fed
        .agency(SCHOOL)
        .seed(sizes.plans, &[CLINIC], "read_write")
        .context("seeding the school")?;
    fed.agency(SCHOOL).start().await?;
    let wire0 = fed.wire.bytes();
    let t0 = Instant::now();
    fed.agency(CLINIC).start().await?;
    let clinic = &fed.agencies[1];
    let done = clinic
        .wait_until(
            "every section to arrive",
            Duration::from_secs(3600),
            |page| value(page, "weft_feed_sequence") as u64 >= docs,
        )
        .await?;
    let seconds = done.duration_since(t0).as_secs_f64();
    let cold = Cold {
        docs,
        saved_bytes,
        seconds,
        docs_per_s: docs as f64 / seconds,
        wire_bytes: fed.wire.bytes() - wire0,
        rss_kib_b: clinic.pid().map_or(0, crate::report::rss_kib),
    };
    Ok((fed, cold))
}

/// The benchmark's edit: one field of a plan's `profile`, as a caseworker would change it.
fn profile_edit(plan: String, value: String) -> pb::SetFieldsRequest {
    pb::SetFieldsRequest {
        plan_id: plan,
        fields: vec![pb::FieldValue {
            section: "profile".into(),
            field: "preferred_name".into(),
            value,
        }],
    }
}

/// Plan ids at `agency` (first `n`).
pub async fn plan_ids(agency: &Agency, n: usize) -> anyhow::Result<Vec<String>> {
    let mut client = pb::plan_service_client::PlanServiceClient::new(agency.channel().await?);
    let mut out = Vec::new();
    let mut token = String::new();
    while out.len() < n {
        let r = client
            .list_plans(pb::ListPlansRequest {
                page_size: 1000,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        out.extend(
            r.plans
                .into_iter()
                .filter_map(|p| p.plan.map(|p| p.plan_id)),
        );
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    out.truncate(n);
    Ok(out)
}

/// Edits at `from` at `rate` per second (`count` edits spread over `plans`, each a
/// one-field change of `profile`); latency from sending an edit to its change event at each
/// agency of `to` (every arrival is one sample), and from the edit being durable at `from`
/// (its answer's `durable_unix_us`) to its being durable at each of `to` (the events'). Each
/// plan should be edited less often than the latency, so an event belongs to the oldest edit
/// of its plan still in flight, and a plan's n-th edit and n-th event are the same change.
pub async fn propagation(
    from: &Agency,
    to: &[&Agency],
    plans: &[String],
    rate: f64,
    count: usize,
) -> anyhow::Result<Latency> {
    use std::collections::{HashMap, VecDeque};
    use std::sync::{Arc, Mutex};
    type Pending = Arc<Mutex<HashMap<(usize, String), VecDeque<Instant>>>>;
    let pending: Pending = Default::default();
    let latencies: Arc<Mutex<Vec<f64>>> = Default::default();
    // Per (agency, plan), each change's durable time; the sender is agency `to.len()`.
    type Durable = Arc<Mutex<HashMap<(usize, String), Vec<i64>>>>;
    let durable: Durable = Default::default();
    let mut watchers = Vec::new();
    for (a, agency) in to.iter().enumerate() {
        let channel = agency.channel().await?;
        for plan in plans {
            let mut client = pb::plan_service_client::PlanServiceClient::new(channel.clone());
            let mut stream = client
                .watch_plan(pb::WatchPlanRequest {
                    plan_id: plan.clone(),
                })
                .await?
                .into_inner();
            let (pending, latencies, plan) = (pending.clone(), latencies.clone(), plan.clone());
            let durable = durable.clone();
            watchers.push(tokio::spawn(async move {
                while let Some(Ok(ev)) = stream.next().await {
                    if ev.section != "profile" {
                        continue;
                    }
                    let now = Instant::now();
                    durable
                        .lock()
                        .unwrap()
                        .entry((a, plan.clone()))
                        .or_default()
                        .push(ev.durable_unix_us);
                    let sent = pending
                        .lock()
                        .unwrap()
                        .get_mut(&(a, plan.clone()))
                        .and_then(VecDeque::pop_front);
                    if let Some(sent) = sent {
                        latencies
                            .lock()
                            .unwrap()
                            .push(now.duration_since(sent).as_secs_f64() * 1e3);
                    }
                }
            }));
        }
    }
    // Let the watches register.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let channel = from.channel().await?;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sends = Vec::new();
    let commits: Arc<Mutex<Vec<f64>>> = Default::default();
    for i in 0..count {
        tokio::time::sleep_until((start + interval.mul_f64(i as f64)).into()).await;
        let plan = plans[i % plans.len()].clone();
        let mut client = pb::plan_service_client::PlanServiceClient::new(channel.clone());
        let (pending, commits, durable) = (pending.clone(), commits.clone(), durable.clone());
        let n = to.len();
        sends.push(tokio::spawn(async move {
            let sent = Instant::now();
            {
                let mut p = pending.lock().unwrap();
                for a in 0..n {
                    p.entry((a, plan.clone())).or_default().push_back(sent);
                }
            }
            let r = client
                .set_fields(profile_edit(plan.clone(), format!("edit {i}")))
                .await?
                .into_inner();
            commits
                .lock()
                .unwrap()
                .push(sent.elapsed().as_secs_f64() * 1e3);
            durable
                .lock()
                .unwrap()
                .entry((n, plan))
                .or_default()
                .push(r.durable_unix_us);
            Ok::<_, tonic::Status>(())
        }));
    }
    for s in sends {
        s.await??;
    }
    let left = || -> usize { pending.lock().unwrap().values().map(VecDeque::len).sum() };
    let waited = Instant::now();
    while left() > 0 && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for w in watchers {
        w.abort();
    }
    let lost = left();
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.total_cmp(b));
    let mut c = commits.lock().unwrap().clone();
    c.sort_by(|a, b| a.total_cmp(b));
    let mut d = Vec::new();
    {
        let durable = durable.lock().unwrap();
        for plan in plans {
            let Some(sent) = durable.get(&(to.len(), plan.clone())) else {
                continue;
            };
            for a in 0..to.len() {
                if let Some(arrived) = durable.get(&(a, plan.clone())) {
                    d.extend(sent.iter().zip(arrived).map(|(s, r)| (r - s) as f64 / 1e3));
                }
            }
        }
    }
    d.sort_by(|a, b| a.total_cmp(b));
    Ok(Latency {
        durable_p50: percentile(&d, 50.0),
        durable_p99: percentile(&d, 99.0),
        durable_p999: percentile(&d, 99.9),
        commit_p50: percentile(&c, 50.0),
        rate,
        count: l.len(),
        p50: percentile(&l, 50.0),
        p99: percentile(&l, 99.0),
        p999: percentile(&l, 99.9),
        lost,
        cpu_ms_per_edit: None,
    })
}

/// How long scenarios 2 and 3 let the nodes rest after the initial copy before they measure.
const SETTLE: Duration = Duration::from_secs(10);

/// Waits until every one of `peers` has acknowledged all of `home`'s feed (until then `home`
/// is still writing their acknowledgements), then [`SETTLE`] more for the background work
/// the copy leaves (sled's flushes): latency is measured on a settled federation.
async fn settled(home: &Agency, peers: &[&str]) -> anyhow::Result<()> {
    for peer in peers {
        home.wait_until(
            "the peers to acknowledge the initial copy",
            Duration::from_secs(600),
            |p| value(p, &format!("weft_replication_lag{{peer=\"{peer}\"}}")) == 0.0,
        )
        .await?;
    }
    tokio::time::sleep(SETTLE).await;
    Ok(())
}

/// Scenario 2 on a running federation: 10/s and 500/s.
pub async fn one_edit(fed: &Federation, quick: bool) -> anyhow::Result<Vec<Latency>> {
    let (school, clinic) = (&fed.agencies[0], &fed.agencies[1]);
    settled(school, &[CLINIC]).await?;
    let plans = plan_ids(school, 500).await?;
    let slow = propagation(
        school,
        &[clinic],
        &plans[..10],
        10.0,
        if quick { 30 } else { 300 },
    )
    .await?;
    let fast = propagation(
        school,
        &[clinic],
        &plans,
        500.0,
        if quick { 1000 } else { 5000 },
    )
    .await?;
    Ok(vec![slow, fast])
}

/// Changes `count` plans' profiles at `agency`, 32 at a time.
pub async fn edit_plans(agency: &Agency, plans: &[String], tag: &str) -> anyhow::Result<()> {
    let channel = agency.channel().await?;
    let edits = plans.iter().map(|plan| {
        let mut client = pb::plan_service_client::PlanServiceClient::new(channel.clone());
        let (plan, tag) = (plan.clone(), tag.to_string());
        async move { client.set_fields(profile_edit(plan, tag)).await.map(|_| ()) }
    });
    let results: Vec<_> = futures::stream::iter(edits)
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    Ok(())
}

/// Scenario 4's figures for one M.
#[derive(Debug, Default, Clone)]
pub struct CatchUp {
    pub changed: usize,
    /// From the clinic's replication stream starting (hellos exchanged) until it is caught
    /// up: the catch-up itself.
    pub seconds: f64,
    /// From spawning the clinic's process until it is caught up.
    pub from_start_seconds: f64,
    /// Of which until its API answered (store open, listeners).
    pub start_seconds: f64,
    pub wire_bytes: u64,
    pub loaded_sender: u64,
    pub loaded_receiver: u64,
}

/// Scenario 4: the clinic stops, `m` plans change at the school, the clinic starts again;
/// time from the clinic's API answering until it has every change and the school's feed
/// is acknowledged.
pub async fn catch_up(fed: &mut Federation, plans: &[String], m: usize) -> anyhow::Result<CatchUp> {
    let clinic_series = |name: &str| format!("{name}{{peer=\"{CLINIC}\"}}");
    let school_series = |name: &str| format!("{name}{{peer=\"{SCHOOL}\"}}");
    fed.agency(CLINIC).stop()?;
    // Wait for the school to notice.
    let school = &fed.agencies[0];
    school
        .wait_until("the clinic to disconnect", Duration::from_secs(30), |p| {
            value(p, &clinic_series("weft_peer_connected")) == 0.0
        })
        .await?;
    edit_plans(school, &plans[..m], &format!("catch-up {m}")).await?;
    let head = value(&school.metrics().await?, "weft_feed_sequence");
    let loaded0 = value(&school.metrics().await?, "weft_documents_loaded_total");
    // The catch-up is timed from the clinic's stream starting (its dial, and maybe the whole
    // catch-up, can finish before its API answers); the time from its process start is
    // reported beside it.
    let wire0 = fed.wire.bytes();
    let t0 = Instant::now();
    let start_seconds = fed.agency(CLINIC).start().await?.as_secs_f64();
    let (school, clinic) = (&fed.agencies[0], &fed.agencies[1]);
    let received = school_series("weft_replication_sections_received_total");
    clinic
        .wait_until("every change", Duration::from_secs(600), |p| {
            value(p, &received) >= m as f64
                && value(p, &school_series("weft_peer_connected")) == 1.0
        })
        .await?;
    let lag = clinic_series("weft_replication_lag");
    let connected = clinic_series("weft_peer_connected");
    let done = school
        .wait_until(
            "the clinic's acknowledgement",
            Duration::from_secs(600),
            |p| {
                value(p, &connected) == 1.0
                    && value(p, &lag) == 0.0
                    && value(p, "weft_feed_sequence") >= head
            },
        )
        .await?;
    let done_unix_ms = std::time::SystemTime::now()
        .checked_sub(done.elapsed())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let session_ms = value(
        &clinic.metrics().await?,
        &school_series("weft_peer_connected_since_milliseconds"),
    );
    Ok(CatchUp {
        changed: m,
        seconds: (done_unix_ms - session_ms).max(0.0) / 1e3,
        from_start_seconds: done.duration_since(t0).as_secs_f64(),
        start_seconds,
        wire_bytes: fed.wire.bytes() - wire0,
        loaded_sender: (value(&school.metrics().await?, "weft_documents_loaded_total") - loaded0)
            as u64,
        loaded_receiver: value(&clinic.metrics().await?, "weft_documents_loaded_total") as u64,
    })
}

/// Scenario 5's figures.
#[derive(Debug, Default, Clone)]
pub struct Memory {
    pub docs: u64,
    pub start_seconds: f64,
    pub rss_cold_kib: u64,
    pub rss_loaded_kib: u64,
    pub loaded: u64,
    pub disk_bytes: u64,
}

/// Scenario 5 on an agency holding `docs` sections: restart, resident memory when idle,
/// then after reading `read` plans (every section) through the client API.
pub async fn memory(agency: &mut Agency, docs: u64, read: usize) -> anyhow::Result<Memory> {
    agency.stop()?;
    let start_seconds = agency.start().await?.as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = agency.pid().context("running")?;
    let rss_cold_kib = crate::report::rss_kib(pid);
    let plans = plan_ids(agency, read).await?;
    let mut client = pb::plan_service_client::PlanServiceClient::new(agency.channel().await?);
    for p in &plans {
        client
            .get_plan(pb::GetPlanRequest {
                plan_id: p.clone(),
                ..Default::default()
            })
            .await?;
    }
    Ok(Memory {
        docs,
        start_seconds,
        rss_cold_kib,
        rss_loaded_kib: crate::report::rss_kib(pid),
        loaded: plans.len() as u64 * 4,
        disk_bytes: crate::report::dir_bytes(&agency.data),
    })
}

/// Scenario 3: three agencies; edits at the school at rising rates until p99 passes 100 ms
/// at the clinic or the nutrition centre, once both have acknowledged the initial copy (plus
/// [`SETTLE`]).
pub async fn sustained(work: &Path, plans: u64, rates: &[f64]) -> anyhow::Result<Vec<Latency>> {
    let mut fed = Federation::new(work, &[SCHOOL, CLINIC, NUTRITION], &[], false).await?;
    let (docs, _) = fed
        .agency(SCHOOL)
        .seed(plans, &[CLINIC, NUTRITION], "read")
        .context("seeding the school")?;
    for a in [SCHOOL, CLINIC, NUTRITION] {
        fed.agency(a).start().await?;
    }
    for a in &fed.agencies[1..] {
        a.wait_until("the initial copy", Duration::from_secs(3600), |p| {
            value(p, "weft_feed_sequence") as u64 >= docs
        })
        .await?;
    }
    settled(&fed.agencies[0], &[CLINIC, NUTRITION]).await?;
    let ids = plan_ids(&fed.agencies[0], plans as usize).await?;
    let cpu = |fed: &Federation| -> anyhow::Result<f64> {
        fed.agencies.iter().map(Agency::cpu_seconds).sum()
    };
    let mut out = Vec::new();
    for &rate in rates {
        let n = ((rate as usize).max(50)).min(ids.len());
        let edits = (rate * 3.0) as usize;
        let before = cpu(&fed)?;
        let mut l = propagation(
            &fed.agencies[0],
            &[&fed.agencies[1], &fed.agencies[2]],
            &ids[..n],
            rate,
            edits,
        )
        .await?;
        l.cpu_ms_per_edit = Some((cpu(&fed)? - before) * 1e3 / edits as f64);
        eprintln!("scenario 3: {l:?}");
        let over = l.p99.is_none_or(|p| p > 100.0) || l.lost > 0;
        out.push(l);
        if over {
            break;
        }
    }
    for a in &mut fed.agencies {
        a.stop()?;
    }
    Ok(out)
}

/// Scenario 7's figures.
#[derive(Debug, Default, Clone)]
pub struct Filtering {
    pub docs: u64,
    pub delivered: u64,
    /// The median round's.
    pub seconds: f64,
    /// Each round's delivery time.
    pub rounds: Vec<f64>,
    /// Each round's CPU time: the school's and the running peers', from their start until
    /// the last delivery.
    pub cpu: Vec<f64>,
    /// The school's CPU time in each round: the sender's share of [`Filtering::cpu`].
    pub school_cpu: Vec<f64>,
    pub docs_per_s: f64,
    /// Sections held by a peer beyond what its consents allow (must be 0).
    pub excess: i64,
    /// Sections missing at a peer that its consents allow.
    pub missing: i64,
    pub revocations: Vec<f64>,
    /// One more revocation, made while the school pages a long feed that holds nothing for
    /// the peer: ms until the peer purged, that feed's length, and the changes (feed
    /// sequence numbers) the school still had to page for the peer when it did (0: the paging had ended, and the figure
    /// says nothing about it).
    pub during_long_feed: Option<(f64, u64, u64)>,
    /// Live edits at the school once the deliveries are done (see [`Filtered::finish`]).
    pub live: Option<LiveEdits>,
}

/// Scenario 7's live edits: one-field changes at the school, paced, on plans whose consents
/// name 1–5 of the 40 listed agencies, so most name none of the running peers.
#[derive(Debug, Default, Clone)]
pub struct LiveEdits {
    pub edits: usize,
    pub rate: f64,
    /// CPU seconds from the first edit until a second after the last answer: the school's,
    /// and the school's and running peers' together.
    pub school_cpu: f64,
    pub cpu: f64,
}

impl LiveEdits {
    /// Paces `plans.len()` edits at `rate` a second over the school's `plans`, and measures
    /// the nodes' CPU time until a second after the last answer (pumps not woken for a
    /// change move their cursors past it within that).
    async fn run(agencies: &[Agency], plans: &[String], rate: f64) -> anyhow::Result<Self> {
        let cpu = || {
            agencies
                .iter()
                .map(Agency::cpu_seconds)
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let before = cpu()?;
        let channel = agencies[0].channel().await?;
        let t0 = Instant::now();
        let mut answers = tokio::task::JoinSet::new();
        for (i, plan) in plans.iter().enumerate() {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / rate)).into()).await;
            let mut client = pb::plan_service_client::PlanServiceClient::new(channel.clone());
            let edit = profile_edit(plan.clone(), format!("live {i}"));
            answers.spawn(async move { client.set_fields(edit).await.map(|_| ()) });
        }
        while let Some(r) = answers.join_next().await {
            r??;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = cpu()?;
        let used: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        Ok(Self {
            edits: plans.len(),
            rate,
            school_cpu: used[0],
            cpu: used.iter().sum(),
        })
    }
}

/// Up to `n` ids of active consents at `school` that name `peer`, from its first `plans`
/// plans.
async fn active_consents_to(
    school: &Agency,
    peer: &Agency,
    plans: u64,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut consents =
        pb::consent_service_client::ConsentServiceClient::new(school.channel().await?);
    let mut out = Vec::new();
    for plan in plan_ids(school, plans as usize).await? {
        if out.len() >= n {
            break;
        }
        let list = consents
            .list(pb::ListConsentsRequest {
                plan_id: plan,
                ..Default::default()
            })
            .await?
            .into_inner();
        out.extend(
            list.consents
                .into_iter()
                .find(|c| {
                    c.state == "active" && c.provisions.iter().any(|p| p.grantee_agency == peer.id)
                })
                .map(|c| c.consent_id),
        );
    }
    Ok(out)
}

/// How long scenario 7 waits for a revocation's purge before it fails.
const PURGE_DEADLINE: Duration = Duration::from_secs(30);

/// Revokes consent `id` at `school`; the ms until `peer` purged something of it, failing
/// after `deadline`.
async fn revoke_until_purged(
    school: &Agency,
    peer: &Agency,
    id: String,
    deadline: Duration,
) -> anyhow::Result<f64> {
    let mut consents =
        pb::consent_service_client::ConsentServiceClient::new(school.channel().await?);
    let series = format!("weft_purges_total{{peer=\"{SCHOOL}\"}}");
    let purges = value(&peer.metrics().await?, &series);
    let t = Instant::now();
    consents
        .revoke(pb::RevokeRequest {
            consent_id: id,
            reason: "benchmark".into(),
        })
        .await?;
    let at = peer
        .wait_until("the purge", deadline, |p| value(p, &series) > purges)
        .await?;
    Ok(at.duration_since(t).as_secs_f64() * 1e3)
}

/// Scenario 7's revocation at scale, on scenario 1's federation (the clinic holding every
/// section the school seeded): revokes `n` of the school's consents to the clinic, one at a
/// time; the ms from each revocation until the clinic purged, sorted. A revocation waits
/// up to `deadline` for its purge.
pub async fn revocations_at_scale(
    fed: &Federation,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<f64>> {
    let (school, clinic) = (&fed.agencies[0], &fed.agencies[1]);
    // Scenarios 4 and 5 restart the nodes: time the purges, not a reconnection.
    let connected = format!("weft_peer_connected{{peer=\"{}\"}}", clinic.id);
    school
        .wait_until("the clinic to reconnect", Duration::from_secs(60), |p| {
            value(p, &connected) == 1.0
        })
        .await?;
    let ids = active_consents_to(school, clinic, n as u64, n).await?;
    anyhow::ensure!(
        ids.len() == n,
        "found {} consents to the clinic to revoke, not {n}",
        ids.len()
    );
    let mut times = Vec::new();
    for id in ids {
        times.push(revoke_until_purged(school, clinic, id, deadline).await?);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times)
}

/// Copies directory `from` (files and subdirectories) to a new `to`.
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Scenario 7's federation: the school lists `listed` peer agencies (the first `running` of
/// them run as real nodes); each of `plans` numbered plans is consented to `pick` (min,
/// max) of them. With `only_delivered`, the school holds only the plans that go to a
/// running peer, with only their consents to running peers: the same deliveries without
/// the rest to filter out. Each [`Filtered::round`] delivers from the stores as seeded.
pub struct Filtered {
    fed: Federation,
    running: usize,
    /// Sections each running peer may hold.
    expected: Vec<u64>,
    /// Sections stored at the school.
    docs: u64,
    rounds: Vec<f64>,
    cpu: Vec<f64>,
    school_cpu: Vec<f64>,
    /// A listed agency that does not run.
    idle: String,
}

impl Filtered {
    /// Writes the configs, seeds the school and keeps a copy of every store as seeded.
    pub async fn new(
        work: &Path,
        plans: u64,
        listed: usize,
        running: usize,
        pick: (usize, usize),
        only_delivered: bool,
    ) -> anyhow::Result<Self> {
        let agencies: Vec<String> = (0..listed).map(|i| format!("agency{i:02}.test")).collect();
        let mut ids: Vec<&str> = vec![SCHOOL];
        ids.extend(agencies[..running].iter().map(String::as_str));
        let fed = Federation::new(work, &ids, &agencies[running..], false).await?;
        let plans_s = plans.to_string();
        let pick_s = format!("{}-{}", pick.0, pick.1);
        let config = fed.agencies[0].config.clone();
        let mut args = vec![
            "seed",
            "--config",
            config.to_str().context("utf-8")?,
            "--plans",
            &plans_s,
            "--consent-pick",
            &pick_s,
        ];
        for g in &agencies {
            args.push("--consent-to");
            args.push(g);
        }
        if only_delivered {
            for g in &agencies[..running] {
                args.push("--only-for");
                args.push(g);
            }
        }
        let (docs, _) = crate::cluster::seeded(&crate::cluster::weft(&args)?)?;
        // What each running peer may hold: four sections per plan consented to it (the
        // same with and without `only_delivered`).
        let consents = weft_node::seed::SeedConsents {
            grantees: agencies
                .iter()
                .map(|a| weft_node::model::AgencyId::parse(a))
                .collect::<Result<_, _>>()?,
            access: "read".into(),
            until: "2099-12-31".into(),
            pick: Some(pick),
            only_for: vec![],
        };
        let mut expected = vec![0u64; running];
        for i in 0..plans {
            for a in consents.for_plan(i) {
                if let Some(n) = consents.grantees[..running].iter().position(|r| r == a) {
                    expected[n] += 4;
                }
            }
        }
        for a in &fed.agencies[..=running] {
            copy_dir(&a.data, &a.data.with_extension("seeded"))?;
        }
        Ok(Self {
            fed,
            running,
            expected,
            docs,
            rounds: Vec::new(),
            cpu: Vec::new(),
            school_cpu: Vec::new(),
            idle: agencies.last().context("no agency listed")?.clone(),
        })
    }

    /// Starts every node from the stores as seeded and times the delivery of every
    /// consented section. The nodes stop after it unless `keep_up` (for
    /// [`Filtered::finish`]).
    pub async fn round(&mut self, keep_up: bool) -> anyhow::Result<f64> {
        let running = self.running;
        if !self.rounds.is_empty() {
            for a in &self.fed.agencies[..=running] {
                std::fs::remove_dir_all(&a.data)?;
                copy_dir(&a.data.with_extension("seeded"), &a.data)?;
            }
        }
        self.fed.agencies[0].start().await?;
        let t0 = Instant::now();
        for a in 1..=running {
            self.fed.agencies[a].start().await?;
        }
        let mut last = t0;
        for (a, want) in self.expected.iter().enumerate() {
            let want = *want;
            last = last.max(
                self.fed.agencies[a + 1]
                    .wait_until("its consented sections", Duration::from_secs(3600), |p| {
                        value(p, "weft_feed_sequence") as u64 >= want
                    })
                    .await?,
            );
        }
        let seconds = last.duration_since(t0).as_secs_f64();
        self.rounds.push(seconds);
        // The nodes' CPU time: far less moved by the host's slow spells than the wall clock,
        // so the steadier measure of what filtering costs on a federation that uses every core.
        let cpu = self.fed.agencies[..=running]
            .iter()
            .map(Agency::cpu_seconds)
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.cpu.push(cpu.iter().sum());
        self.school_cpu.push(cpu[0]);
        if !keep_up {
            for a in &mut self.fed.agencies[..=running] {
                a.stop()?;
            }
        }
        Ok(seconds)
    }

    /// Right after the last round (kept up): checks each running peer holds exactly what
    /// its consents allow, times `revocations` revocations until the first peer purged (and,
    /// with any, one more while the school pages a long feed: see [`Filtering`]), stops the
    /// nodes.
    pub async fn finish(
        mut self,
        revocations: usize,
        live: Option<(usize, f64)>,
    ) -> anyhow::Result<Filtering> {
        let fed = &mut self.fed;
        // Settle, then compare what each holds with what it may hold.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (mut excess, mut missing) = (0i64, 0i64);
        for (a, want) in self.expected.iter().enumerate() {
            let held = value(&fed.agencies[a + 1].metrics().await?, "weft_feed_sequence") as i64;
            excess += (held - *want as i64).max(0);
            missing += (*want as i64 - held).max(0);
        }
        let delivered: u64 = self.expected.iter().sum();
        let live = match live {
            Some((edits, rate)) => {
                let plans = plan_ids(&fed.agencies[0], edits).await?;
                Some(LiveEdits::run(&fed.agencies[..=self.running], &plans, rate).await?)
            }
            None => None,
        };
        // Revocations: consents to the first running peer, one at a time.
        let mut times = Vec::new();
        let mut during_long_feed = None;
        if revocations > 0 {
            let mut ids = active_consents_to(
                &fed.agencies[0],
                &fed.agencies[1],
                self.docs / 4,
                revocations + 1,
            )
            .await?;
            let last = ids.pop();
            for id in ids {
                times.push(
                    revoke_until_purged(&fed.agencies[0], &fed.agencies[1], id, PURGE_DEADLINE)
                        .await?,
                );
            }
            let Some(last) = last else {
                anyhow::bail!("scenario 7 found no consent to the first running peer to revoke");
            };
            // Plans for an agency that does not run, seeded into the stopped school: once it
            // is back, its pump for the peer pages their whole feed and sends nothing.
            let school = &mut fed.agencies[0];
            school.stop()?;
            let plans = 20_000.min(self.docs / 4);
            let (sections, _) = school.seed(plans, &[self.idle.as_str()], "read")?;
            school.start().await?;
            let connected = format!("weft_peer_connected{{peer=\"{}\"}}", fed.agencies[1].id);
            fed.agencies[0]
                .wait_until("the peer to reconnect", Duration::from_secs(60), |p| {
                    value(p, &connected) == 1.0
                })
                .await?;
            let ms = revoke_until_purged(&fed.agencies[0], &fed.agencies[1], last, PURGE_DEADLINE)
                .await?;
            let lag = format!("weft_replication_lag{{peer=\"{}\"}}", fed.agencies[1].id);
            let left = value(&fed.agencies[0].metrics().await?, &lag) as u64;
            during_long_feed = Some((ms, sections, left));
        }
        times.sort_by(|a, b| a.total_cmp(b));
        for a in &mut fed.agencies {
            a.stop()?;
        }
        // The median round: one stall of the host moves one round, not the figure.
        let seconds = crate::report::median(&self.rounds).unwrap_or(f64::NAN);
        Ok(Filtering {
            docs: self.docs,
            delivered,
            seconds,
            rounds: self.rounds,
            cpu: self.cpu,
            school_cpu: self.school_cpu,
            docs_per_s: delivered as f64 / seconds,
            excess,
            missing,
            revocations: times,
            during_long_feed,
            live,
        })
    }
}
