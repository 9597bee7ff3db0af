//! Plan events, routed to the watchers of their plan only.
//!
//! One channel for the whole node woke every watcher for every change, each to drop the events
//! of other plans: with W watchers and E changes a second that is W × E wake-ups (500 watched
//! plans at 500 changes/s: 250,000). A channel per watched plan wakes only the watchers that
//! want the event. A plan's channel exists while someone watches it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::PlanEvent;
use crate::model::PlanId;

/// The events of one plan a watcher may leave unread; past that it is told it fell behind.
/// Each watched plan's channel holds this many slots.
pub const KEPT_PER_PLAN: usize = 128;

/// The node's watched plans and their channels.
#[derive(Default)]
pub(crate) struct PlanEvents {
    plans: Mutex<HashMap<PlanId, broadcast::Sender<PlanEvent>>>,
}

impl PlanEvents {
    fn plans(&self) -> MutexGuard<'_, HashMap<PlanId, broadcast::Sender<PlanEvent>>> {
        // A panic while holding this lock leaves the map consistent (every operation is one
        // map call), so a poisoned lock is still safe to use.
        self.plans.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts receiving `plan`'s events.
    pub(crate) fn subscribe(self: &Arc<Self>, plan: PlanId) -> Subscription {
        let rx = self
            .plans()
            .entry(plan)
            .or_insert_with(|| broadcast::channel(KEPT_PER_PLAN).0)
            .subscribe();
        Subscription {
            rx,
            plan,
            events: self.clone(),
        }
    }

    /// Hands `event` to its plan's watchers, if it has any.
    pub(crate) fn send(&self, event: PlanEvent) {
        let mut plans = self.plans();
        if let Some(tx) = plans.get(&event.plan) {
            let plan = event.plan;
            if tx.send(event).is_err() {
                plans.remove(&plan);
            }
        }
    }

    /// Plans with a channel (for tests).
    #[cfg(test)]
    fn watched(&self) -> usize {
        self.plans().len()
    }
}

/// One watcher's receiver; its plan's channel goes when the last watcher's does.
pub(crate) struct Subscription {
    rx: broadcast::Receiver<PlanEvent>,
    plan: PlanId,
    events: Arc<PlanEvents>,
}

impl Subscription {
    /// The next event of the plan (`Lagged` once the watcher fell [`KEPT_PER_PLAN`] behind).
    pub(crate) async fn recv(&mut self) -> Result<PlanEvent, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Under the map's lock nobody can subscribe meanwhile; this receiver still counts.
        let mut plans = self.events.plans();
        if plans
            .get(&self.plan)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            plans.remove(&self.plan);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgencyId, SectionName, Timestamp};

    fn event(plan: PlanId, seq: u64) -> PlanEvent {
        PlanEvent {
            plan,
            section: SectionName::parse("profile").unwrap(),
            seq,
            agency: AgencyId::parse("school.test").unwrap(),
            user: "u".into(),
            time: Timestamp::from_millis(0),
            summary: String::new(),
            durable: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn a_watcher_gets_its_plans_events_only_and_the_channel_goes_with_the_last_watcher() {
        let events = Arc::new(PlanEvents::default());
        let (a, b) = (PlanId(uuid::Uuid::new_v4()), PlanId(uuid::Uuid::new_v4()));
        // Nobody watches: nothing is kept.
        events.send(event(a, 1));
        assert_eq!(events.watched(), 0);
        let mut first = events.subscribe(a);
        let mut second = events.subscribe(a);
        assert_eq!(events.watched(), 1);
        events.send(event(b, 2));
        events.send(event(a, 3));
        assert_eq!(first.recv().await.unwrap().seq, 3);
        assert_eq!(second.recv().await.unwrap().seq, 3);
        drop(first);
        assert_eq!(events.watched(), 1, "one watcher is left");
        events.send(event(a, 4));
        assert_eq!(second.recv().await.unwrap().seq, 4);
        drop(second);
        assert_eq!(events.watched(), 0);
    }

    #[tokio::test]
    async fn a_watcher_that_leaves_too_many_events_unread_is_told() {
        let events = Arc::new(PlanEvents::default());
        let plan = PlanId(uuid::Uuid::new_v4());
        let mut w = events.subscribe(plan);
        for seq in 0..=KEPT_PER_PLAN as u64 {
            events.send(event(plan, seq));
        }
        assert!(matches!(
            w.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
    }
}
