//! How writes reach the engine: combined transactions, then group commit.
//!
//! A writer queues its transaction as a job. If no writer is leading, it leads: it takes the
//! writer lock and every job queued so far and applies them all in **one** engine transaction,
//! each job through its own [`Overlay`]: a job that fails (a plan that already exists, say)
//! leaves no write behind and fails alone, the others land. It runs the jobs queued meanwhile
//! the same way for up to [`LEAD_FOR`], then stops leading and wakes the oldest queued job's
//! writer, which leads unless another writer came first. Writers wait on their own job and are
//! woken when it is settled or when they may lead. (Writers that queued on the writer lock
//! itself to read their outcome came back one at a time, each after a whole transaction, which
//! can include sled's `fdatasync`: in the benchmark's storage scenario 4–5 of 64 writers shared
//! a transaction, against ~48 now, and sled did 6,000 durable appends/s against 16,000.) Then
//! each writer waits until a `sync` that started after its transaction has finished; the first
//! waiter runs it for everyone.
//!
//! Writers on the async runtime (everything the node does through `StoreHandle`) do not
//! hold a thread while they wait: [`Writer::enqueue`] queues the job with a channel for its
//! answer. If nobody leads, one blocking thread starts and leads until the queue is empty;
//! after each combined transaction it runs one sync for the async jobs in it and answers
//! them. A writer that leads on its own thread and stops with only async jobs queued hands
//! the lead to the oldest of them ([`Answer::Lead`]), which starts such a thread. (Each
//! async writer handing its commit to a blocking thread and waiting for it cost two context
//! switches per write: in the benchmark's storage scenario, 64 writers did 66,000–92,000
//! writes/s with no disk at all and 24,000–28,000 durable ones/s on sled; one thread leading
//! for all of them does 417,000–588,000 and 42,000–63,000, the same morning.)
//!
//! So a thread-bound writer may have to wait for an async writer's task to run: no
//! thread-bound writer may run on the async runtime's own threads (there, writes go through
//! `StoreHandle`), or a runtime whose threads all wait could never start the leader.
//!
//! An engine transaction costs far more than the few writes of one commit (sled ~0.3–0.8 ms,
//! redb ~0.4 ms, fjall ~0.1 ms on the benchmark machine), so under load this turns N
//! transactions and about N/3 syncs into one transaction and one sync. A lone writer pays
//! exactly what it did before: its own transaction, run directly, and one sync.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Backend, Tree, Txn};
use crate::error::{Error, Result};

/// One queued transaction. It may run more than once (engines retry) and must act only
/// through the `Txn` it is given.
pub type WriteFn = Box<dyn Fn(&dyn Txn) -> Result<()> + Send + Sync>;

/// Pending writes over a base transaction: `None` removes the key.
pub(super) type Writes = BTreeMap<(Tree, Vec<u8>), Option<Vec<u8>>>;

/// A transaction's writes held back from its base until [`Overlay::apply`]: reads see the
/// overlay's own writes first, then the base.
struct Overlay<'a> {
    base: &'a dyn Txn,
    writes: RefCell<Writes>,
}

impl<'a> Overlay<'a> {
    fn new(base: &'a dyn Txn) -> Self {
        Self {
            base,
            writes: RefCell::new(Writes::new()),
        }
    }

    /// The held-back writes.
    fn into_writes(self) -> Writes {
        self.writes.into_inner()
    }

    /// Writes what was held back into the base.
    fn apply(self) -> Result<()> {
        let base = self.base;
        for ((tree, key), value) in self.into_writes() {
            match value {
                Some(v) => base.put(tree, &key, &v)?,
                None => base.remove(tree, &key)?,
            }
        }
        Ok(())
    }
}

/// Runs `f` over the committed state that `get` reads and returns its writes, applied to
/// nothing: the engine applies them (and logs them) itself. The caller keeps other writers
/// out meanwhile.
pub(super) fn writes_of(
    get: impl Fn(Tree, &[u8]) -> Result<Option<Vec<u8>>>,
    f: &dyn Fn(&dyn Txn) -> Result<()>,
) -> Result<Writes> {
    let base = Committed(get);
    let overlay = Overlay::new(&base);
    f(&overlay)?;
    Ok(overlay.into_writes())
}

/// Reads of an engine's committed state, as the base of an [`Overlay`].
struct Committed<F>(F);

impl<F: Fn(Tree, &[u8]) -> Result<Option<Vec<u8>>>> Txn for Committed<F> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        (self.0)(tree, key)
    }

    fn put(&self, _: Tree, _: &[u8], _: &[u8]) -> Result<()> {
        Err(Error::internal("a transaction's base is read-only"))
    }

    fn remove(&self, _: Tree, _: &[u8]) -> Result<()> {
        Err(Error::internal("a transaction's base is read-only"))
    }
}

impl Txn for Overlay<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(v.clone());
        }
        self.base.get(tree, key)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.writes
            .borrow_mut()
            .insert((tree, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.writes.borrow_mut().insert((tree, key.to_vec()), None);
        Ok(())
    }
}

/// How long a leader goes on running jobs queued behind its own before it hands the lead on.
const LEAD_FOR: Duration = Duration::from_micros(500);

struct Job {
    run: WriteFn,
    /// Replication hints only (see [`Backend::transact_hints`]).
    hints: bool,
    turn: Mutex<Turn>,
    /// Signalled when `turn` leaves [`Turn::Queued`]: only this job's writer waits on it.
    changed: Condvar,
    /// Queued by an async writer (see [`Writer::enqueue`]): nobody waits on `turn`.
    is_async: bool,
    /// Where an async writer is answered: the leader that runs the job makes it durable
    /// (unless it is hints) and sends the outcome; a leader that stops may hand it the lead.
    reply: Mutex<Option<Reply>>,
}

/// What an async writer hears from the writer.
pub(super) enum Answer {
    /// Its job is durable (applied, for hints), or why it failed.
    Done(Result<()>),
    /// The leader stopped and hands this writer the lead: it must lead, as when
    /// [`Writer::enqueue`] tells it to, and hear its answer on the receiver the ticket holds.
    Lead(LeadTicket),
}

/// The lead, handed to an async writer. [`LeadTicket::take`] accepts it; a ticket dropped
/// untaken (its writer was cancelled before it read the answer) hands the lead on again, so
/// the queue is never left with a leader that does not exist. When nobody can take it, every
/// queued job is a cancelled async writer's: they are dropped unrun, as a cancelled write may
/// be (none was acknowledged), rather than left to land whenever the next writer comes.
pub(super) struct LeadTicket {
    queue: Arc<Mutex<Queue>>,
    answer: Option<tokio::sync::oneshot::Receiver<Answer>>,
}

impl LeadTicket {
    /// Accepts the lead; returns where the writer's own answer will come.
    pub(super) fn take(mut self) -> tokio::sync::oneshot::Receiver<Answer> {
        self.answer.take().expect("a ticket is taken once")
    }
}

impl Drop for LeadTicket {
    fn drop(&mut self) {
        if self.answer.take().is_some() {
            let mut queue = lock_queue(&self.queue);
            if !queue.hand_on(&self.queue) {
                queue.jobs.clear();
                queue.leading = false;
            }
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Answer>;

/// Where a queued job stands.
enum Turn {
    Queued,
    /// The last leader stopped with this job queued: its writer may lead.
    Wake,
    /// The number of the transaction it landed in, or why it did not.
    Done(Result<u64>),
}

impl Job {
    fn new(run: WriteFn, hints: bool, reply: Option<Reply>) -> Arc<Self> {
        Arc::new(Job {
            run,
            hints,
            turn: Mutex::new(Turn::Queued),
            changed: Condvar::new(),
            is_async: reply.is_some(),
            reply: Mutex::new(reply),
        })
    }

    /// Hands an async writer the lead (the caller holds `queue`'s lock); false if it is not
    /// waiting any more (cancelled).
    fn hand_lead(&self, queue: &Arc<Mutex<Queue>>) -> bool {
        let Ok(mut slot) = self.reply.lock() else {
            return false;
        };
        let Some(reply) = slot.take() else {
            return false;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let ticket = LeadTicket {
            queue: queue.clone(),
            answer: Some(rx),
        };
        if let Err(Answer::Lead(ticket)) = reply.send(Answer::Lead(ticket)) {
            // Dropped here, under the queue's lock: it must not hand the lead on itself.
            drop(ticket.take());
            return false;
        }
        *slot = Some(tx);
        true
    }

    fn set(&self, turn: Turn) {
        if let Ok(mut slot) = self.turn.lock() {
            *slot = turn;
            self.changed.notify_one();
        }
    }

    fn settle(&self, outcome: Result<u64>) {
        self.set(Turn::Done(outcome));
    }

    /// The job's outcome, if it is settled.
    fn outcome(&self) -> Result<Option<Result<u64>>> {
        let mut turn = self.turn.lock().map_err(poisoned)?;
        Ok(match std::mem::replace(&mut *turn, Turn::Queued) {
            Turn::Done(outcome) => Some(outcome),
            _ => None,
        })
    }

    /// Waits until the job is settled or its writer is woken to lead.
    fn wait(&self) -> Result<()> {
        let mut turn = self.turn.lock().map_err(poisoned)?;
        while matches!(*turn, Turn::Queued) {
            turn = self.changed.wait(turn).map_err(poisoned)?;
        }
        if matches!(*turn, Turn::Wake) {
            *turn = Turn::Queued;
        }
        Ok(())
    }
}

/// The store's single writer: the queue of jobs, the lock that serialises engine
/// transactions (so the feed sequence and the audit head never contend), and group commit.
#[derive(Default)]
pub(super) struct Writer {
    lock: Mutex<()>,
    queue: Arc<Mutex<Queue>>,
    durability: GroupCommit,
}

#[derive(Default)]
struct Queue {
    jobs: Vec<Arc<Job>>,
    /// A writer is running queued jobs.
    leading: bool,
}

/// The queue. Nothing panics while holding it, so its state is whole even if poisoned.
fn lock_queue(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    /// Hands the lead on from a leader that stops with jobs queued (the caller holds the
    /// lock of `queue`, which is `self`): to the oldest writer waiting on a thread, which is
    /// woken and `leading` cleared (any writer may then lead); else to the oldest async
    /// writer still waiting, which starts a thread to lead (`leading` stays set on its
    /// behalf). False when nobody can take it.
    fn hand_on(&mut self, queue: &Arc<Mutex<Queue>>) -> bool {
        if let Some(next) = self.jobs.iter().find(|j| !j.is_async) {
            next.set(Turn::Wake);
            self.leading = false;
            return true;
        }
        self.jobs.iter().any(|j| j.hand_lead(queue))
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("store writer poisoned")
}

impl Writer {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        lock_queue(&self.queue)
    }

    /// Whether a writer leads (a leader may still be settling after its last answer).
    #[cfg(test)]
    pub(super) fn is_leading(&self) -> bool {
        self.queue().leading
    }

    /// Holds the writer lock: no transaction lands until the guard drops (purges, backups).
    pub(super) fn pause(&self) -> Result<MutexGuard<'_, ()>> {
        self.lock.lock().map_err(poisoned)
    }

    /// Applies `run` (combined with whatever else is queued) and returns its transaction's
    /// number, without waiting for it to be durable.
    fn apply(&self, backend: &dyn Backend, run: WriteFn) -> Result<u64> {
        let job = Job::new(run, false, None);
        let mut queue = self.queue();
        queue.jobs.push(job.clone());
        loop {
            // A leader settles the jobs it took before it stops leading: with nobody
            // leading, an unsettled job is still queued.
            if let Some(outcome) = job.outcome()? {
                return outcome;
            }
            if !queue.leading {
                break;
            }
            drop(queue);
            job.wait()?;
            queue = self.queue();
        }
        // This writer leads, and its job is queued: nobody else takes jobs until it stops,
        // so the first jobs it runs include its own. It goes on with the jobs queued meanwhile
        // for up to LEAD_FOR, then stops and wakes the oldest waiting writer's job. Any writer
        // that comes first may lead instead: a woken writer may wait for a core, and the queue
        // with it. When only async writers' jobs are queued (no thread waits on them), it
        // hands the lead to the oldest of them, which starts a blocking thread to lead.
        queue.leading = true;
        drop(queue);
        let started = Instant::now();
        loop {
            self.lead(backend);
            let mut queue = self.queue();
            if queue.jobs.is_empty() {
                queue.leading = false;
                break;
            }
            if started.elapsed() < LEAD_FOR {
                continue;
            }
            if queue.hand_on(&self.queue) {
                break;
            }
        }
        job.outcome()?
            .unwrap_or_else(|| Err(Error::internal("a queued write was lost")))
    }

    /// Queues `run` for a writer that must not block (a task on the async runtime); its
    /// outcome arrives on the returned receiver once the job is durable (applied, for
    /// hints). The flag is true when nobody was leading: the caller must then lead, by
    /// calling [`Writer::lead_queued`] on a blocking thread (or [`Writer::abandon`] if it
    /// cannot). So a queue of async writers costs one hand-off to a blocking thread per
    /// run of combined transactions, not one per writer.
    pub(super) fn enqueue(
        &self,
        run: WriteFn,
        hints: bool,
    ) -> (tokio::sync::oneshot::Receiver<Answer>, bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut queue = self.queue();
        queue.jobs.push(Job::new(run, hints, Some(tx)));
        let lead = !queue.leading;
        queue.leading = true;
        (rx, lead)
    }

    /// Leads until the queue is empty: for a caller that [`Writer::enqueue`] told to lead.
    pub(super) fn lead_queued(&self, backend: &dyn Backend) {
        loop {
            self.lead(backend);
            let mut queue = self.queue();
            if queue.jobs.is_empty() {
                queue.leading = false;
                return;
            }
        }
    }

    /// Fails every queued job and stops leading: for a caller told to lead that cannot (its
    /// runtime is shutting down), so no writer waits forever.
    pub(super) fn abandon(&self) {
        let e = Error::internal("the store's writer stopped before this write ran");
        loop {
            // `leading` stays set until the queue is empty, so no writer leads meanwhile
            // and none is left queued behind a leader that gave up.
            let jobs = {
                let mut queue = self.queue();
                if queue.jobs.is_empty() {
                    queue.leading = false;
                    return;
                }
                std::mem::take(&mut queue.jobs)
            };
            for job in &jobs {
                job.settle(Err(e.clone()));
            }
            self.reply(&jobs, None);
        }
    }

    /// Runs the queued jobs under the writer lock (the caller leads) and settles them all.
    fn lead(&self, backend: &dyn Backend) {
        let jobs = std::mem::take(&mut self.queue().jobs);
        let ran = self.pause().and_then(|_guard| {
            // A panic would leave the jobs unsettled and nobody leading: every writer after it
            // would wait forever. It fails the jobs instead (the engine applies nothing of a
            // transaction whose closure panicked).
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_jobs(backend, &jobs)
            }))
            .map_err(|_| Error::internal("a store transaction panicked"))
        });
        if let Err(e) = ran {
            jobs.iter().for_each(|job| job.settle(Err(e.clone())));
        }
        self.reply(&jobs, Some(backend));
    }

    /// Answers the async writers among `jobs` (settled): one sync makes every one of them
    /// that landed durable (none is needed for hints, or without a backend: abandoned).
    fn reply(&self, jobs: &[Arc<Job>], backend: Option<&dyn Backend>) {
        let mut replies = Vec::new();
        let mut last = 0;
        for job in jobs {
            let Some(reply) = job.reply.lock().ok().and_then(|mut r| r.take()) else {
                continue;
            };
            let outcome = job
                .outcome()
                .and_then(|o| o.unwrap_or_else(|| Err(Error::internal("a queued write was lost"))));
            if let (Ok(n), false) = (&outcome, job.hints) {
                last = last.max(*n);
            }
            replies.push((reply, outcome.map(|_| ()), job.hints));
        }
        let durable = match backend {
            Some(backend) if last > 0 => self.durability.wait_durable(last, backend),
            _ => Ok(()),
        };
        for (reply, outcome, hints) in replies {
            let outcome = if hints {
                outcome
            } else {
                outcome.and_then(|()| durable.clone())
            };
            // A writer that stopped waiting (its task was cancelled) needs no answer.
            let _ = reply.send(Answer::Done(outcome));
        }
    }

    /// Applies `run` and returns once it is durable.
    pub(super) fn write(&self, backend: &dyn Backend, run: WriteFn) -> Result<()> {
        let n = self.apply(backend, run)?;
        self.durability.wait_durable(n, backend)
    }

    /// Counts a transaction the caller ran itself under [`Writer::pause`]; returns its number.
    pub(super) fn applied(&self) -> Result<u64> {
        self.durability.applied()
    }

    /// Returns once transaction `n` is durable.
    pub(super) fn wait_durable(&self, n: u64, backend: &dyn Backend) -> Result<()> {
        self.durability.wait_durable(n, backend)
    }

    /// Syncs run so far.
    pub(super) fn syncs(&self) -> u64 {
        self.durability.lock().map_or(0, |s| s.syncs)
    }

    /// Runs `jobs` in one engine transaction (the caller holds the lock) and settles each
    /// job's outcome.
    fn run_jobs(&self, backend: &dyn Backend, jobs: &[Arc<Job>]) {
        let hints = jobs.iter().all(|j| j.hints);
        let transact = |f: &dyn Fn(&dyn Txn) -> Result<()>| {
            if hints {
                backend.transact_hints(f)
            } else {
                backend.transact(f)
            }
        };
        if let [job] = jobs {
            // Alone: no overlay, the job's error aborts the transaction itself.
            let outcome = transact(&*job.run).and_then(|()| self.durability.applied());
            job.settle(outcome);
            return;
        }
        let failures: RefCell<Vec<Option<Error>>> = RefCell::new(Vec::new());
        let result = transact(&|txn| {
            let mut failed = Vec::with_capacity(jobs.len());
            for job in jobs {
                let overlay = Overlay::new(txn);
                match (job.run)(&overlay) {
                    Ok(()) => {
                        overlay.apply()?;
                        failed.push(None);
                    }
                    Err(e) => failed.push(Some(e)),
                }
            }
            *failures.borrow_mut() = failed;
            Ok(())
        });
        match result.and_then(|()| self.durability.applied()) {
            Ok(n) => {
                for (job, failure) in jobs.iter().zip(failures.into_inner()) {
                    job.settle(failure.map_or(Ok(n), Err));
                }
            }
            Err(e) => {
                for job in jobs {
                    job.settle(Err(e.clone()));
                }
            }
        }
    }
}

/// Group commit. Writers wait until a `sync` that started after their transaction has
/// finished. The first waiter runs the `sync` for everyone; writers that arrive meanwhile
/// queue for the next one. So under load many transactions share one sync, and a lone
/// writer pays exactly one.
#[derive(Default)]
struct GroupCommit {
    state: Mutex<SyncState>,
    synced_cv: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Transactions applied (numbered in commit order).
    written: u64,
    /// Every transaction up to this number is durable.
    synced: u64,
    /// A sync is running.
    syncing: bool,
    /// Syncs run (for the benchmark and tests).
    syncs: u64,
}

impl GroupCommit {
    /// Records one applied transaction (called under the writer lock); returns its number.
    fn applied(&self) -> Result<u64> {
        let mut s = self.lock()?;
        s.written += 1;
        Ok(s.written)
    }

    fn lock(&self) -> Result<MutexGuard<'_, SyncState>> {
        self.state
            .lock()
            .map_err(|_| Error::internal("group commit state poisoned"))
    }

    /// Returns once transaction `n` is durable, running a sync if nobody else is.
    fn wait_durable(&self, n: u64, backend: &dyn Backend) -> Result<()> {
        let mut s = self.lock()?;
        loop {
            if s.synced >= n {
                return Ok(());
            }
            if s.syncing {
                s = self
                    .synced_cv
                    .wait(s)
                    .map_err(|_| Error::internal("group commit state poisoned"))?;
                continue;
            }
            s.syncing = true;
            let target = s.written;
            drop(s);
            let result = backend.sync();
            s = self.lock()?;
            s.syncing = false;
            if result.is_ok() {
                s.synced = s.synced.max(target);
                s.syncs += 1;
            }
            self.synced_cv.notify_all();
            result?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryBackend;

    fn put(key: &'static [u8]) -> WriteFn {
        Box::new(move |txn| txn.put(Tree::Meta, key, b"1"))
    }

    /// Whether `rx` was answered with the lead (and returns the ticket).
    fn lead_of(rx: &mut tokio::sync::oneshot::Receiver<Answer>) -> Option<LeadTicket> {
        match rx.try_recv() {
            Ok(Answer::Lead(ticket)) => Some(ticket),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_lead_handed_to_a_cancelled_writer_goes_on_to_the_next() {
        let (writer, backend) = (Writer::default(), MemoryBackend::new());
        // Three async writers queue; the first was told to lead but a leader on its own thread
        // stands in (`leading` is set), and stops with all three queued.
        let (first, lead) = writer.enqueue(put(b"a"), false);
        assert!(lead);
        let (mut second, _) = writer.enqueue(put(b"b"), false);
        let (mut third, _) = writer.enqueue(put(b"c"), false);
        assert!(writer.queue().hand_on(&writer.queue));
        assert!(lead_of(&mut second).is_none() && lead_of(&mut third).is_none());
        // The oldest was handed the lead, but its writer is cancelled before it reads it: the
        // lead goes on to the next writer still waiting.
        drop(first);
        let ticket = lead_of(&mut second).expect("the lead went on to the second writer");
        assert!(lead_of(&mut third).is_none(), "one leader at a time");
        assert!(writer.queue().leading);
        // It leads: every queued job lands, the cancelled writer's included, and each writer
        // still waiting is answered.
        let second = ticket.take();
        writer.lead_queued(&backend);
        assert!(matches!(second.await.unwrap(), Answer::Done(Ok(()))));
        assert!(matches!(third.await.unwrap(), Answer::Done(Ok(()))));
        for key in [b"a", b"b", b"c"] {
            assert!(backend.get(Tree::Meta, key).unwrap().is_some());
        }
        assert!(!writer.queue().leading);

        // A ticket dropped with nobody left to take the lead: the queued jobs are cancelled
        // writers', dropped unrun, and nobody leads.
        let (mut only, lead) = writer.enqueue(put(b"d"), false);
        assert!(lead);
        assert!(writer.queue().hand_on(&writer.queue));
        drop(lead_of(&mut only));
        assert!(!writer.queue().leading);
        assert!(writer.queue().jobs.is_empty());
        assert!(backend.get(Tree::Meta, b"d").unwrap().is_none());
    }
}
