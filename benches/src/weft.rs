//! Weft's side of each scenario: real `weft serve` processes driven over the client API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_stream::StreamExt;
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
    /// Edits that never arrived within the deadline.
    pub lost: usize,
}

/// A two-agency federation with `plans` seeded at the school, all consented to the clinic;
/// started, with the clinic fully caught up. Returns the federation and scenario 1.
pub async fn cold_replication(work: &Path, sizes: Sizes) -> anyhow::Result<(Federation, Cold)> {
    let mut fed = Federation::new(work, &[SCHOOL, CLINIC], &[]).await?;
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
        out.extend(r.plans.into_iter().filter_map(|p| p.plan.map(|p| p.plan_id)));
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
/// agency of `to` (every arrival is one sample). Each plan should be edited less often than
/// the latency, so an event belongs to the oldest edit of its plan still in flight.
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
            watchers.push(tokio::spawn(async move {
                while let Some(Ok(ev)) = stream.next().await {
                    if ev.section != "profile" {
                        continue;
                    }
                    let now = Instant::now();
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
    for i in 0..count {
        tokio::time::sleep_until((start + interval.mul_f64(i as f64)).into()).await;
        let plan = plans[i % plans.len()].clone();
        let mut client = pb::plan_service_client::PlanServiceClient::new(channel.clone());
        let pending = pending.clone();
        let n = to.len();
        sends.push(tokio::spawn(async move {
            let sent = Instant::now();
            {
                let mut p = pending.lock().unwrap();
                for a in 0..n {
                    p.entry((a, plan.clone())).or_default().push_back(sent);
                }
            }
            client
                .set_fields(pb::SetFieldsRequest {
                    plan_id: plan,
                    fields: vec![pb::FieldValue {
                        section: "profile".into(),
                        field: "preferred_name".into(),
                        value: format!("edit {i}"),
                    }],
                })
                .await
                .map(|_| ())
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
    Ok(Latency {
        rate,
        count: l.len(),
        p50: percentile(&l, 50.0),
        p99: percentile(&l, 99.0),
        p999: percentile(&l, 99.9),
        lost,
    })
}

/// Scenario 2 on a running federation: 10/s and 500/s.
pub async fn one_edit(fed: &Federation, quick: bool) -> anyhow::Result<Vec<Latency>> {
    let (school, clinic) = (&fed.agencies[0], &fed.agencies[1]);
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

/// Unused in a run so far; kept for scenario 3.
pub const THREE: [&str; 3] = [SCHOOL, CLINIC, NUTRITION];
