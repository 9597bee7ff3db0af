//! The embedded default [`Backend`]: sled, one tree per [`Tree`].
//!
//! *Architecture invariant:* this is the only file that imports sled.
//!
//! `sync` is sled's `flush()`; the store calls it (group commit) before acknowledging a
//! write, so an acknowledged write survives the process being killed. (sled's flush uses `sync_file_range`, not a full
//! `fsync`; see ARCHITECTURE.md for what that means on power loss.)

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::{Backend, Tree, Txn};
use crate::error::{Error, Result};

/// sled's page cache, bounded well below sled's 1 GiB default: documents are loaded per
/// request and the OS page cache keeps hot pages anyway. In the benchmark at 100,000
/// sections, 16 MiB replicated as fast as 64 MiB (817-891 docs/s cold, one edit p50 4.7 ms)
/// and the receiving node ended at 352-391 MiB resident instead of 478-579 MiB.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// sled trees.
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
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
        let trees = Tree::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<sled::Result<Vec<_>>>()
            .map_err(Error::storage)?;
        Ok(Self { db, trees })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree as usize]
    }
}

struct SledTxn<'a>(&'a [TransactionalTree]);

fn abort(e: sled::transaction::UnabortableTransactionError) -> Error {
    Error::storage(e)
}

impl Txn for SledTxn<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0[tree as usize]
            .get(key)
            .map_err(abort)?
            .map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.0[tree as usize].insert(key, value).map_err(abort)?;
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.0[tree as usize].remove(key).map_err(abort)?;
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
        let result: std::result::Result<(), TransactionError<Error>> = self
            .trees
            .as_slice()
            .transaction(|views| f(&SledTxn(views)).map_err(ConflictableTransactionError::Abort));
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(Error::storage(e)),
        }
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(Error::storage)?;
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        Ok(self.tree(tree).len() as u64)
    }
}
