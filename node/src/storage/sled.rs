//! The embedded default [`Backend`]: sled, one tree per [`Tree`], made durable by a
//! write-ahead log ([`super::wal`]).
//!
//! *Architecture invariant:* this is the only file that imports sled.
//!
//! A transaction is applied to sled and its writes appended to the log, in one order. `sync`
//! (which the store runs, as group commit, before acknowledging a write) is an `fdatasync` of
//! the log, not sled's `flush()`, which ends in `sync_file_range` on Linux and so does not
//! survive a power loss. sled writes its own files in the background; on open, the log's
//! records after what sled recovered are applied again. A checkpoint (sled's `flush()`) lets
//! the log start afresh.

use std::cell::RefCell;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::wal::{Wal, Writes, CHECKPOINT_BYTES};
use super::{Backend, Tree, Txn};
use crate::error::{Error, Result};

/// The number of the last transaction applied, in sled's default tree (which no [`Tree`]
/// names, so the store and its backups never see it), written by every transaction.
const APPLIED: &[u8] = b"weft.wal.applied";

/// The position of sled's default tree in a transaction's views (after every [`Tree`]).
const DEFAULT_VIEW: usize = Tree::ALL.len();

/// sled's page cache, bounded well below sled's 1 GiB default: documents are loaded per
/// request and the OS page cache keeps hot pages anyway. In the benchmark at 100,000
/// sections, 16 MiB replicated as fast as 64 MiB (817-891 docs/s cold, one edit p50 4.7 ms)
/// and the receiving node ended at 352-391 MiB resident instead of 478-579 MiB.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// sled trees and their write-ahead log.
pub struct SledBackend {
    db: sled::Db,
    /// One per [`Tree`], then sled's default tree.
    trees: Vec<sled::Tree>,
    wal: Wal,
    dir: std::path::PathBuf,
    /// The number of the last transaction: held while one is applied and logged, so the log's
    /// order is sled's.
    last: Mutex<u64>,
    /// Held by a checkpoint, so two never interleave.
    checkpointing: Mutex<()>,
}

impl SledBackend {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|e| {
                let text = e.to_string();
                if text.contains("could not acquire lock") {
                    Error::Storage(format!(
                        "the store in {} is in use by another process (is the node running?)",
                        dir.display()
                    ))
                } else {
                    Error::Storage(format!(
                        "cannot open the store in {}: {text}",
                        dir.display()
                    ))
                }
            })?;
        let mut trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<sled::Result<Vec<_>>>()
            .map_err(Error::storage)?;
        trees.push((*db).clone());
        let mut last = match db.get(APPLIED).map_err(Error::storage)? {
            Some(b) => u64::from_be_bytes(
                b.as_ref()
                    .try_into()
                    .map_err(|_| Error::Storage("malformed write-ahead log position".into()))?,
            ),
            None => 0,
        };
        // Apply again what sled lost of the log (a crash before its own flush).
        let (records, files) = Wal::read(dir)?;
        let recovered = last;
        for (seq, writes) in records {
            if seq <= last {
                continue;
            }
            if seq != last + 1 {
                return Err(Error::Storage(format!(
                    "the write-ahead log in {} skips from transaction {last} to {seq}",
                    dir.display()
                )));
            }
            apply(&trees, seq, &|txn| {
                writes
                    .iter()
                    .try_for_each(|(tree, key, value)| match value {
                        Some(v) => txn.put(*tree, key, v),
                        None => txn.remove(*tree, key),
                    })
            })?;
            last = seq;
        }
        if last > recovered {
            tracing::info!(
                transactions = last - recovered,
                "applied again from the write-ahead log what the store had not written"
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

/// Runs `f` as sled transaction `seq` over `trees` (the [`Tree`]s, then the default tree);
/// returns its writes. A transaction that writes nothing leaves no trace.
fn apply(trees: &[sled::Tree], seq: u64, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<Writes> {
    let log = RefCell::new(Writes::new());
    let result: std::result::Result<(), TransactionError<Error>> = trees.transaction(|views| {
        // sled may run the closure again: only the last run's writes count.
        log.borrow_mut().clear();
        f(&SledTxn { views, log: &log }).map_err(ConflictableTransactionError::Abort)?;
        if !log.borrow().is_empty() {
            views[DEFAULT_VIEW].insert(APPLIED, &seq.to_be_bytes())?;
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(log.into_inner()),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(Error::storage(e)),
    }
}

/// A transaction's views, recording every write for the log.
struct SledTxn<'a> {
    views: &'a [TransactionalTree],
    log: &'a RefCell<Writes>,
}

fn abort(e: sled::transaction::UnabortableTransactionError) -> Error {
    Error::storage(e)
}

impl Txn for SledTxn<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.views[tree as usize]
            .get(key)
            .map_err(abort)?
            .map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.views[tree as usize]
            .insert(key, value)
            .map_err(abort)?;
        self.log
            .borrow_mut()
            .push((tree, key.to_vec(), Some(value.to_vec())));
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.views[tree as usize].remove(key).map_err(abort)?;
        self.log.borrow_mut().push((tree, key.to_vec(), None));
        Ok(())
    }
}

impl Backend for SledBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(Error::storage)?
            .map(|v| v.to_vec()))
    }

    fn scan(
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

    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        // A log that failed takes nothing more, and sled must not get what the log lacks.
        self.wal.check()?;
        let mut last = self.last()?;
        let seq = *last + 1;
        let writes = apply(&self.trees, seq, f)?;
        if !writes.is_empty() {
            // Applied but not logged (the disk failed): like a write whose sync failed, the
            // caller is told, sled may still keep it, and the log takes nothing more.
            self.wal.append(seq, &writes)?;
            *last = seq;
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        self.wal.sync()?;
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
        let old = {
            let _order = self.last()?;
            self.wal.rotate()?
        };
        make_durable(&self.db, &self.dir)?;
        self.wal.remove_through(old)?;
        self.wal.sync()
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.wal.size_on_disk()
    }

    fn len(&self, tree: Tree) -> Result<u64> {
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
        // A transaction the log has and sled lost (the process died before sled wrote it).
        let lost: Writes = vec![
            (Tree::Chunks, b"k".to_vec(), Some(b"v".to_vec())),
            (Tree::Plans, b"a".to_vec(), None),
        ];
        b.wal.append(2, &lost).unwrap();
        *b.last().unwrap() = 2;
        b.sync().unwrap();
        drop(b);

        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get(Tree::Chunks, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            b.get(Tree::Plans, b"a").unwrap(),
            None,
            "removes replay too"
        );
        // Numbering goes on after the replayed transaction, in a fresh log.
        b.transact(&|t| t.put(Tree::Plans, b"b", b"2")).unwrap();
        b.sync().unwrap();
        assert_eq!(Wal::read(dir.path()).unwrap().0[0].0, 3);
        drop(b);
        let b = SledBackend::open(dir.path()).unwrap();
        assert_eq!(b.get(Tree::Plans, b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(b.get(Tree::Chunks, b"k").unwrap(), Some(b"v".to_vec()));
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
