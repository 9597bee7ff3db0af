//! The embedded default [`Backend`]: sled, one tree per [`Tree`], made durable and atomic by
//! a write-ahead log (`storage/wal.rs`).
//!
//! *Architecture invariant:* this is the only file that imports sled.
//!
//! A transaction runs against sled's committed state (one at a time), its writes are appended
//! to the log and made durable there (`fdatasync`), then applied to sled with plain inserts and
//! removes while readers wait, so a read of a key or of a scan's page sees all of a
//! transaction or none of it. sled's `flush()` ends in `sync_file_range` on Linux and so does
//! not survive a power loss; the log's `fdatasync` does. The writer combines queued commits
//! into one transaction, so they share that sync (group commit).
//!
//! sled's own transactions are not used: each one seals sled's IO buffer twice and writes it
//! out with a waiting `sync_file_range`, so every commit cost two small disk writes on sled's
//! IO threads (a third of a busy node's CPU in the benchmark). sled now writes its files in
//! the background, and after a crash the log's records are applied again, all of them and in
//! order: a record holds final values, so whatever part of the log sled kept, the result is
//! the last value of every key the log touched. A checkpoint (sled's `flush()` and an `fsync`
//! of its files) lets the log start afresh; closing the store checkpoints, so a clean restart
//! replays nothing.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::wal::{Wal, CHECKPOINT_BYTES};
use super::writer::{writes_of, Writes};
use super::{Backend, Tree, Txn};
use crate::error::{Error, Result};

/// sled's page cache by default (`[storage] cache_mib`), in MiB: well below sled's 1 GiB
/// default, since documents are loaded per request and the OS page cache keeps hot pages
/// anyway. In the benchmark at 100,000 sections, 16 MiB replicated as fast as 64 MiB
/// (817-891 docs/s cold, one edit p50 4.7 ms) and the receiving node ended at 352-391 MiB
/// resident instead of 478-579 MiB. What a larger cache buys is writes spread over a tree
/// far larger than the cache: each insert then reads its leaf back from sled's files
/// (scenario 6 of the benchmark).
pub const DEFAULT_CACHE_MIB: u64 = 16;

/// Entries a scan reads under one hold of the read lock.
const SCAN_PAGE: usize = 1024;

/// sled trees and their write-ahead log.
pub struct SledBackend {
    db: sled::Db,
    /// One per [`Tree`].
    trees: Vec<sled::Tree>,
    wal: Wal,
    dir: std::path::PathBuf,
    /// The number of the last transaction: held while one runs, is logged and is applied, so
    /// transactions run one at a time and the log's order is sled's.
    last: Mutex<u64>,
    /// Shared by reads, exclusive while a transaction's writes go into sled.
    visible: RwLock<()>,
    /// Held by a checkpoint, so two never interleave.
    checkpointing: Mutex<()>,
}

/// How often [`SledBackend::open`] tries a busy lock, 10 ms apart.
const LOCK_TRIES: u32 = 100;

impl SledBackend {
    /// Opens (or creates) the store in `dir`, with the default page cache.
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with_cache(dir, DEFAULT_CACHE_MIB)
    }

    /// Opens (or creates) the store in `dir`, with a page cache of `cache_mib` MiB.
    pub fn open_with_cache(dir: &Path, cache_mib: u64) -> Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(cache_mib.saturating_mul(1024 * 1024));
        // sled's own threads may hold a store just closed in this process for a moment
        // (its lock goes with their last reference): a busy lock is tried again for up to a
        // second before it is reported as another process's.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    if tries >= LOCK_TRIES {
                        return Err(Error::Storage(format!(
                            "the store in {} is in use by another process (is the node running?)",
                            dir.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::Storage(format!(
                        "cannot open the store in {}: {e}",
                        dir.display()
                    )))
                }
            }
        };
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<sled::Result<Vec<_>>>()
            .map_err(Error::storage)?;
        // Apply the log again (a crash: sled may have lost any part of it), in order.
        let (records, files) = Wal::read(dir)?;
        let mut last = 0;
        for (seq, writes) in &records {
            if last != 0 && *seq != last + 1 {
                return Err(Error::Storage(format!(
                    "the write-ahead log in {} skips from transaction {last} to {seq}",
                    dir.display()
                )));
            }
            put_all(&trees, writes)?;
            last = *seq;
        }
        if !records.is_empty() {
            tracing::info!(
                transactions = records.len(),
                "applied the write-ahead log again (the node did not close its store)"
            );
        }
        if !files.is_empty() {
            make_durable(&db, dir)?;
        }
        let wal = Wal::start(dir, &files)?;
        Ok(Self {
            db,
            trees,
            wal,
            last: Mutex::new(last),
            visible: RwLock::new(()),
            checkpointing: Mutex::new(()),
            dir: dir.to_path_buf(),
        })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree as usize]
    }

    fn last(&self) -> Result<MutexGuard<'_, u64>> {
        self.last
            .lock()
            .map_err(|_| Error::internal("transaction order poisoned"))
    }

    /// Keeps transactions from landing while a read runs. Refuses once the store failed:
    /// sled may then hold part of a transaction.
    fn reading(&self) -> Result<RwLockReadGuard<'_, ()>> {
        self.wal.check()?;
        self.visible
            .read()
            .map_err(|_| Error::internal("store visibility poisoned"))
    }

    /// Up to `limit` entries of a prefix after `after` (see [`Backend::scan`]), read at once.
    fn scan_page(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let t = self.tree(tree);
        let iter: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match after {
            Some(a) => Box::new(
                t.range::<&[u8], _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .skip_while({
                        let prefix = prefix.to_vec();
                        move |r| {
                            r.as_ref()
                                .is_ok_and(|(k, _)| k.as_ref() < prefix.as_slice())
                        }
                    })
                    .take_while({
                        let prefix = prefix.to_vec();
                        move |r| r.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                    }),
            ),
            None => Box::new(t.scan_prefix(prefix)),
        };
        iter.take(limit)
            .map(|r| {
                r.map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(Error::storage)
            })
            .collect()
    }

    /// Runs, logs and applies one transaction; `durable` syncs its record before sled gets
    /// any of it.
    fn transact_with(&self, f: &dyn Fn(&dyn Txn) -> Result<()>, durable: bool) -> Result<()> {
        // A log that failed takes nothing more, and sled must not get what the log lacks.
        self.wal.check()?;
        let mut last = self.last()?;
        // No other transaction runs: the committed state is stable while `f` reads it.
        let writes = writes_of(|tree, key| self.read(tree, key), f)?;
        if writes.is_empty() {
            return Ok(());
        }
        let seq = *last + 1;
        self.wal.append(seq, &writes)?;
        *last = seq;
        // The record is durable before sled gets any of it: sled writes its buffers when
        // they fill, so it could otherwise keep part of a transaction the log lost to a
        // power cut. Queued commits share this sync (the writer combines them into one
        // transaction), and group commit's own sync then finds nothing to do.
        if durable {
            self.wal.sync()?;
        }
        let _exclusive = self
            .visible
            .write()
            .map_err(|_| Error::internal("store visibility poisoned"))?;
        // Logged but not applied (sled failed): the log applies it again at the next open,
        // so its outcome is unknown until then, and sled may hold part of it. The store
        // refuses every read and write until the node restarts.
        put_all(&self.trees, &writes).map_err(|e| {
            self.wal.fail(Error::Storage(format!(
                "the store could not apply a logged transaction ({e}); restart the node, \
                 which applies it again from the write-ahead log"
            )))
        })
    }

    fn read(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(Error::storage)?
            .map(|v| v.to_vec()))
    }
}

impl Drop for SledBackend {
    /// A clean close leaves nothing to apply again at the next open.
    fn drop(&mut self) {
        if self.wal.check().is_ok() {
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "could not checkpoint the store on close; it will apply its write-ahead log again when it opens");
            }
        }
    }
}

/// Makes everything sled holds durable, as the log was: `Db::flush` ends in
/// `sync_file_range`, and sled never syncs its blob files, so every file of the store (not the
/// log's) and its directories are `fsync`ed after it. Only then may log files go.
fn make_durable(db: &sled::Db, dir: &Path) -> Result<()> {
    db.flush().map_err(Error::storage)?;
    fn sync_tree(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                sync_tree(&entry.path())?;
            } else if kind.is_file() && !entry.file_name().to_string_lossy().starts_with("wal-") {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        std::fs::File::open(dir)?.sync_all()
    }
    sync_tree(dir).map_err(|e| Error::Storage(format!("cannot sync {}: {e}", dir.display())))
}

/// Writes a transaction's final values into sled.
fn put_all(trees: &[sled::Tree], writes: &Writes) -> Result<()> {
    for ((tree, key), value) in writes {
        let t = &trees[*tree as usize];
        match value {
            Some(v) => t.insert(key.as_slice(), v.as_slice()).map(drop),
            None => t.remove(key.as_slice()).map(drop),
        }
        .map_err(Error::storage)?;
    }
    Ok(())
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _visible = self.reading()?;
        self.read(tree, key)
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        // In pages, the lock released between them: a long scan (every consent, say) must
        // not hold transactions back, and through them every reader queued behind one.
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut from = after.map(<[u8]>::to_vec);
        while out.len() < limit {
            let want = (limit - out.len()).min(SCAN_PAGE);
            let page = {
                let _visible = self.reading()?;
                self.scan_page(tree, prefix, from.as_deref(), want)?
            };
            let done = page.len() < want;
            from = page.last().map(|(k, _)| k.clone()).or(from);
            out.extend(page);
            if done {
                break;
            }
        }
        Ok(out)
    }

    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        self.transact_with(f, true)
    }

    fn transact_hints(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        // Hints (a peer's heads, a cursor) are each true on their own and may be lost: sled
        // may keep any of them without their record. A later transaction's sync covers it.
        self.transact_with(f, false)
    }

    fn sync(&self) -> Result<()> {
        // Nothing to write: every transaction but hints synced its record before it
        // returned, and hints may wait for the next one (an `fdatasync` here for a hint
        // that landed after a writer's own sync would be a second one on the commit path).
        self.wal.check()?;
        if self.wal.bytes() > CHECKPOINT_BYTES {
            // What was asked is done; a failed checkpoint is retried at the next sync.
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "could not checkpoint the write-ahead log; will retry");
            }
        }
        Ok(())
    }

    fn checkpoint(&self) -> Result<()> {
        let _one = self
            .checkpointing
            .lock()
            .map_err(|_| Error::internal("checkpoint poisoned"))?;
        // New transactions go to a new file (the old one synced); sled, made durable, then
        // holds everything in the old ones, and what the new one gets meanwhile.
        let started = std::time::Instant::now();
        let old = {
            let _order = self.last()?;
            self.wal.rotate()?
        };
        make_durable(&self.db, &self.dir)?;
        self.wal.remove_through(old)?;
        self.wal.sync()?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "checkpointed the store's write-ahead log"
        );
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.wal.size_on_disk()
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        let _visible = self.reading()?;
        Ok(self.tree(tree).len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".log") {
                out.extend(std::fs::read(path).unwrap());
            }
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn transactions_sled_lost_are_applied_again_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        b.transact(&|t| t.put(Tree::Plans, b"a", b"1")).unwrap();
        b.sync().unwrap();
        assert_eq!(Wal::read(dir.path()).unwrap().0.len(), 1);
        drop(b);
        let (records, files) = Wal::read(dir.path()).unwrap();
        assert!(
            records.is_empty(),
            "a clean close leaves nothing to apply again"
        );
        // A log holding transactions sled lost (the process died before sled wrote them).
        let wal = Wal::start(dir.path(), &files).unwrap();
        wal.append(
            7,
            &Writes::from([
                ((Tree::Chunks, b"k".to_vec()), Some(b"v".to_vec())),
                ((Tree::Plans, b"a".to_vec()), None),
            ]),
        )
        .unwrap();
        wal.append(
            8,
            &Writes::from([((Tree::Chunks, b"k".to_vec()), Some(b"w".to_vec()))]),
        )
        .unwrap();
        wal.sync().unwrap();
        drop(wal);

        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(
            b.get(Tree::Chunks, b"k").unwrap(),
            Some(b"w".to_vec()),
            "records apply in order"
        );
        assert_eq!(b.get(Tree::Plans, b"a").unwrap(), None, "removes apply too");
        // Numbering goes on after the applied transactions, in a fresh log; a transaction's
        // record is durable before sled has it.
        b.transact(&|t| t.put(Tree::Plans, b"c", b"3")).unwrap();
        assert_eq!(b.wal.unsynced(), 0);
        b.transact(&|t| t.put(Tree::Plans, b"b", b"2")).unwrap();
        b.sync().unwrap();
        assert_eq!(
            Wal::read(dir.path())
                .unwrap()
                .0
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            [9, 10]
        );
        drop(b);
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get(Tree::Plans, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(b.get(Tree::Chunks, b"k").unwrap(), Some(b"w".to_vec()));
    }

    #[test]
    fn hints_reach_sled_unsynced_and_the_next_transaction_syncs_them() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        b.transact_hints(&|t| t.put(Tree::Replication, b"h", b"1"))
            .unwrap();
        assert_eq!(b.get(Tree::Replication, b"h").unwrap(), Some(b"1".to_vec()));
        assert!(b.wal.unsynced() > 0, "a hint does not wait for a sync");
        b.sync().unwrap();
        assert!(
            b.wal.unsynced() > 0,
            "nor does group commit's sync pay for it"
        );
        b.transact(&|t| t.put(Tree::Plans, b"a", b"1")).unwrap();
        assert_eq!(b.wal.unsynced(), 0, "the next transaction's sync covers it");
        assert_eq!(Wal::read(dir.path()).unwrap().0.len(), 2);
    }

    #[test]
    fn a_scan_longer_than_a_page_reads_every_entry_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        let key = |n: u32| [b"p".as_slice(), &n.to_be_bytes()].concat();
        b.transact(&|t| {
            (0..2 * SCAN_PAGE as u32 + 5).try_for_each(|n| t.put(Tree::Meta, &key(n), b"v"))?;
            t.put(Tree::Meta, b"o", b"before")?;
            t.put(Tree::Meta, b"q", b"after")
        })
        .unwrap();
        let all = b.scan(Tree::Meta, b"p", None, usize::MAX).unwrap();
        let want: Vec<Vec<u8>> = (0..2 * SCAN_PAGE as u32 + 5).map(key).collect();
        assert_eq!(all.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(), want);
        let some = b.scan(Tree::Meta, b"p", None, SCAN_PAGE + 3).unwrap();
        assert_eq!(some.len(), SCAN_PAGE + 3);
        let rest = b
            .scan(Tree::Meta, b"p", Some(&key(10)), usize::MAX)
            .unwrap();
        assert_eq!(rest.len(), 2 * SCAN_PAGE + 5 - 11);
        assert_eq!(rest[0].0, key(11));
        let before = b.scan(Tree::Meta, b"p", Some(b"o"), usize::MAX).unwrap();
        assert_eq!(before.len(), 2 * SCAN_PAGE + 5);
    }

    #[test]
    fn a_read_sees_all_of_a_transaction_or_none_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let b = std::sync::Arc::new(SledBackend::open(dir.path()).unwrap());
        let writer = {
            let b = b.clone();
            std::thread::spawn(move || {
                for n in 0u32..2_000 {
                    let v = n.to_be_bytes();
                    b.transact(&|t| (0u8..8).try_for_each(|k| t.put(Tree::Meta, &[b'p', k], &v)))
                        .unwrap();
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads == 0 {
            let rows = b.scan(Tree::Meta, b"p", None, 100).unwrap();
            if let Some((_, first)) = rows.first() {
                assert_eq!(rows.len(), 8);
                assert!(
                    rows.iter().all(|(_, v)| v == first),
                    "a torn read: {rows:?}"
                );
            }
            reads += 1;
        }
        writer.join().unwrap();
    }

    #[test]
    fn a_checkpoint_leaves_no_removed_value_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        let marker = b"purged-marker-7d1e";
        b.transact(&|t| t.put(Tree::Chunks, b"k", marker)).unwrap();
        b.sync().unwrap();
        assert!(
            contains(&wal_bytes(dir.path()), marker),
            "the log holds the value (positive control)"
        );
        b.transact(&|t| t.remove(Tree::Chunks, b"k")).unwrap();
        b.checkpoint().unwrap();
        assert!(!contains(&wal_bytes(dir.path()), marker));
        drop(b);
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get(Tree::Chunks, b"k").unwrap(), None);
    }

    #[test]
    fn a_transaction_that_writes_nothing_is_not_logged() {
        let dir = tempfile::tempdir().unwrap();
        let b = SledBackend::open(dir.path()).unwrap();
        b.transact(&|t| t.get(Tree::Plans, b"a").map(|_| ()))
            .unwrap();
        b.transact(&|t| t.put(Tree::Plans, b"a", b"1")).unwrap();
        let (records, _) = Wal::read(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [1]);
    }
}
