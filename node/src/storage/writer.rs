//! How writes reach the engine: combined transactions, then group commit.
//!
//! A writer queues its transaction as a job and takes the writer lock. Whoever holds the lock
//! takes every job queued so far and applies them all in **one** engine transaction, each job
//! through its own [`Overlay`]: a job that fails (a plan that already exists, say) leaves no
//! write behind and fails alone, the others land. Writers whose job was taken by another find
//! their outcome when they get the lock. Then each writer waits until a `sync` that started
//! after its transaction has finished; the first waiter runs it for everyone.
//!
//! An engine transaction costs far more than the few writes of one commit (sled ~0.3–0.8 ms,
//! redb ~0.4 ms, fjall ~0.1 ms on the benchmark machine), so under load this turns N
//! transactions and about N/3 syncs into one transaction and one sync. A lone writer pays
//! exactly what it did before: its own transaction, run directly, and one sync.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

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

struct Job {
    run: WriteFn,
    /// Replication hints only (see [`Backend::transact_hints`]).
    hints: bool,
    /// The number of the transaction it landed in, or why it did not.
    outcome: Mutex<Option<Result<u64>>>,
}

impl Job {
    fn settle(&self, outcome: Result<u64>) {
        if let Ok(mut slot) = self.outcome.lock() {
            *slot = Some(outcome);
        }
    }

    fn take(&self) -> Option<Result<u64>> {
        self.outcome.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The store's single writer: the queue of jobs, the lock that serialises engine
/// transactions (so the feed sequence and the audit head never contend), and group commit.
#[derive(Default)]
pub(super) struct Writer {
    lock: Mutex<()>,
    queue: Mutex<Vec<Arc<Job>>>,
    durability: GroupCommit,
}

fn poisoned<T>(_: T) -> Error {
    Error::internal("store writer poisoned")
}

impl Writer {
    /// Holds the writer lock: no transaction lands until the guard drops (purges, backups).
    pub(super) fn pause(&self) -> Result<MutexGuard<'_, ()>> {
        self.lock.lock().map_err(poisoned)
    }

    /// Applies replication hints (combined with whatever else is queued) without waiting
    /// for them to be durable: alone, they need not be durable before the engine has them.
    pub(super) fn apply_hints(&self, backend: &dyn Backend, run: WriteFn) -> Result<u64> {
        self.apply(backend, run, true)
    }

    /// Applies `run` (combined with whatever else is queued) and returns its transaction's
    /// number, without waiting for it to be durable.
    fn apply(&self, backend: &dyn Backend, run: WriteFn, hints: bool) -> Result<u64> {
        let job = Arc::new(Job {
            run,
            hints,
            outcome: Mutex::new(None),
        });
        self.queue.lock().map_err(poisoned)?.push(job.clone());
        let _guard = self.pause()?;
        if let Some(outcome) = job.take() {
            return outcome;
        }
        self.run_queued(backend)?;
        job.take()
            .unwrap_or_else(|| Err(Error::internal("a queued write was lost")))
    }

    /// Applies `run` and returns once it is durable.
    pub(super) fn write(&self, backend: &dyn Backend, run: WriteFn) -> Result<()> {
        let n = self.apply(backend, run, false)?;
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

    /// Runs every queued job in one engine transaction (the caller holds the lock) and
    /// settles each job's outcome.
    fn run_queued(&self, backend: &dyn Backend) -> Result<()> {
        let jobs = std::mem::take(&mut *self.queue.lock().map_err(poisoned)?);
        let hints = jobs.iter().all(|j| j.hints);
        let transact = |f: &dyn Fn(&dyn Txn) -> Result<()>| {
            if hints {
                backend.transact_hints(f)
            } else {
                backend.transact(f)
            }
        };
        if let [job] = jobs.as_slice() {
            // Alone: no overlay, the job's error aborts the transaction itself.
            let outcome = transact(&*job.run).and_then(|()| self.durability.applied());
            job.settle(outcome);
            return Ok(());
        }
        let failures: RefCell<Vec<Option<Error>>> = RefCell::new(Vec::new());
        let result = transact(&|txn| {
            let mut failed = Vec::with_capacity(jobs.len());
            for job in &jobs {
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
                for job in &jobs {
                    job.settle(Err(e.clone()));
                }
            }
        }
        Ok(())
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
