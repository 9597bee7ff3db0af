//! An in-memory [`Backend`] for tests: the same semantics as sled, nothing on disk.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::writer::writes_of;
use super::{Backend, Tree, Txn};
use crate::error::{Error, Result};

type Map = BTreeMap<(Tree, Vec<u8>), Vec<u8>>;

/// Trees in a `BTreeMap` behind a mutex.
#[derive(Default)]
pub struct MemoryBackend {
    data: Mutex<Map>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Map>> {
        self.data
            .lock()
            .map_err(|_| Error::internal("memory store poisoned"))
    }
}

impl Backend for MemoryBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.get(&(tree, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let data = self.lock()?;
        Ok(data
            .range((tree, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == tree && k.starts_with(prefix))
            .filter(|((_, k), _)| after.is_none_or(|a| k.as_slice() > a))
            .take(limit)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        let mut data = self.lock()?;
        let writes = writes_of(|tree, key| Ok(data.get(&(tree, key.to_vec())).cloned()), f)?;
        for (k, v) in writes {
            match v {
                Some(v) => data.insert(k, v),
                None => data.remove(&k),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        Ok(self.lock()?.keys().filter(|(t, _)| *t == tree).count() as u64)
    }
}
