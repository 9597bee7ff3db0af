//! Scenario 6, storage: 1M appends of ~300 B with group commit, over sled (the node's backend,
//! with its write-ahead log), redb and fjall, side by side, in two workloads:
//! - **append**: each append is one ~300 B record made durable through the node's writer and
//!   group commit (`StoreHandle::replication_put`): what the target describes;
//! - **commit**: each append is a whole `StoreHandle::commit` of a ~300 B change chunk, which
//!   also writes the section's metadata, a feed entry and a sealed audit entry (six puts,
//!   ~1,040 B): what a node's edit costs its store.
//!
//! redb and fjall live here only, behind the node's `Backend` trait: nothing in `weft-node`
//! depends on them. Each backend keeps the sled backend's semantics: one table (partition) per
//! [`Tree`], `transact` atomic over all trees and reading its own writes, `sync` making every
//! transaction that returned before it durable.

use std::cell::RefCell;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{ReadableTable, ReadableTableMetadata};
use weft_node::audit::{AuditAction, AuditDraft, Outcome};
use weft_node::error::{Error, Result};
use weft_node::model::{PlanId, SectionKey, SectionName};
use weft_node::storage::sled::{SledBackend, DEFAULT_CACHE_MIB};
use weft_node::storage::{
    Backend, CommitBatch, Layer, SectionWrite, Store, StoreHandle, Tree, Txn,
};

use crate::report::{self, Figure};

const SCENARIO: &str = "6 storage";
/// Payload bytes of one append.
const CHUNK: usize = 300;
/// Concurrent writers (tokio tasks calling `StoreHandle::commit`).
const WRITERS: usize = 64;
/// Distinct sections the appends are spread over (2,000 plans × 5 sections).
const PLANS: usize = 2_000;
const SECTIONS: [&str; 5] = ["profile", "strengths", "goals", "academic", "health"];
/// In a full run an engine that has not done N appends by then stops, and the figures say so.
const FULL_BUDGET: Duration = Duration::from_secs(120);

/// The lower bound of a scan: the prefix's start, or just after `after` when that is later.
fn lower<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> Bound<&'a [u8]> {
    match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    }
}

// ---------------------------------------------------------------------------------------------
// redb

fn redb_table(tree: Tree) -> redb::TableDefinition<'static, &'static [u8], &'static [u8]> {
    redb::TableDefinition::new(tree.name())
}

/// redb 2: one table per tree. Transactions commit with `Durability::None` (in the file, not
/// yet fsynced); `sync` commits an empty transaction with `Durability::Immediate`, which
/// persists every non-durable commit before it (redb's documented contract for `None`).
pub struct RedbBackend {
    db: redb::Database,
    file: PathBuf,
}

impl RedbBackend {
    /// Opens (or creates) `dir/weft.redb` with every table.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::storage)?;
        let file = dir.join("weft.redb");
        let db = redb::Database::create(&file).map_err(Error::storage)?;
        let wtx = db.begin_write().map_err(Error::storage)?;
        for tree in Tree::ALL {
            wtx.open_table(redb_table(tree)).map_err(Error::storage)?;
        }
        wtx.commit().map_err(Error::storage)?;
        Ok(Self { db, file })
    }
}

type RedbTable<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

struct RedbTxn<'t> {
    wtx: &'t redb::WriteTransaction,
    /// Tables opened so far in this transaction (redb allows one handle per table).
    tables: Vec<RefCell<Option<RedbTable<'t>>>>,
}

impl<'t> RedbTxn<'t> {
    fn with<R>(
        &self,
        tree: Tree,
        f: impl FnOnce(&mut RedbTable<'t>) -> std::result::Result<R, redb::StorageError>,
    ) -> Result<R> {
        let mut slot = self.tables[tree as usize].borrow_mut();
        if slot.is_none() {
            *slot = Some(
                self.wtx
                    .open_table(redb_table(tree))
                    .map_err(Error::storage)?,
            );
        }
        f(slot.as_mut().expect("opened above")).map_err(Error::storage)
    }
}

impl Txn for RedbTxn<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with(tree, |t| Ok(t.get(key)?.map(|v| v.value().to_vec())))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.with(tree, |t| t.insert(key, value).map(drop))
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.with(tree, |t| t.remove(key).map(drop))
    }
}

impl Backend for RedbBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let rtx = self.db.begin_read().map_err(Error::storage)?;
        let t = rtx.open_table(redb_table(tree)).map_err(Error::storage)?;
        let v = t.get(key).map_err(Error::storage)?;
        Ok(v.map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rtx = self.db.begin_read().map_err(Error::storage)?;
        let t = rtx.open_table(redb_table(tree)).map_err(Error::storage)?;
        let range = t
            .range::<&[u8]>((lower(prefix, after), Bound::Unbounded))
            .map_err(Error::storage)?;
        let mut out = Vec::new();
        for item in range {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(Error::storage)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        let mut wtx = self.db.begin_write().map_err(Error::storage)?;
        wtx.set_durability(redb::Durability::None);
        let result = {
            let txn = RedbTxn {
                wtx: &wtx,
                tables: (0..Tree::ALL.len()).map(|_| RefCell::new(None)).collect(),
            };
            f(&txn)
        };
        match result {
            Ok(()) => wtx.commit().map_err(Error::storage),
            Err(e) => {
                wtx.abort().map_err(Error::storage)?;
                Err(e)
            }
        }
    }

    fn sync(&self) -> Result<()> {
        let mut wtx = self.db.begin_write().map_err(Error::storage)?;
        wtx.set_durability(redb::Durability::Immediate);
        wtx.commit().map_err(Error::storage)
    }

    fn size_on_disk(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        let rtx = self.db.begin_read().map_err(Error::storage)?;
        let t = rtx.open_table(redb_table(tree)).map_err(Error::storage)?;
        t.len().map_err(Error::storage)
    }
}

// ---------------------------------------------------------------------------------------------
// fjall

/// fjall 2: a transactional keyspace, one partition per tree. A transaction is one
/// single-writer `WriteTransaction` (reads see its own writes; commit writes the batch to the
/// journal and flushes it to the OS, fjall's default `PersistMode::Buffer`); `sync` is
/// `persist(PersistMode::SyncAll)`, an fsync of the journal.
pub struct FjallBackend {
    keyspace: fjall::TxKeyspace,
    parts: Vec<fjall::TxPartitionHandle>,
}

impl FjallBackend {
    /// Opens (or creates) the keyspace in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let keyspace = fjall::Config::new(dir)
            .open_transactional()
            .map_err(Error::storage)?;
        let parts = Tree::ALL
            .iter()
            .map(|t| keyspace.open_partition(t.name(), fjall::PartitionCreateOptions::default()))
            .collect::<fjall::Result<Vec<_>>>()
            .map_err(Error::storage)?;
        Ok(Self { keyspace, parts })
    }

    fn part(&self, tree: Tree) -> &fjall::TxPartitionHandle {
        &self.parts[tree as usize]
    }
}

struct FjallTxn<'a> {
    backend: &'a FjallBackend,
    wtx: RefCell<fjall::WriteTransaction<'a>>,
}

impl Txn for FjallTxn<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = self
            .wtx
            .borrow()
            .get(self.backend.part(tree), key)
            .map_err(Error::storage)?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.wtx
            .borrow_mut()
            .insert(self.backend.part(tree), key, value);
        Ok(())
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.wtx.borrow_mut().remove(self.backend.part(tree), key);
        Ok(())
    }
}

impl Backend for FjallBackend {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let v = self.part(tree).get(key).map_err(Error::storage)?;
        Ok(v.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let rtx = self.keyspace.read_tx();
        let mut out = Vec::new();
        for item in rtx.range::<&[u8], _>(self.part(tree), (lower(prefix, after), Bound::Unbounded))
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(Error::storage)?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        let txn = FjallTxn {
            backend: self,
            wtx: RefCell::new(self.keyspace.write_tx()),
        };
        match f(&txn) {
            Ok(()) => txn.wtx.into_inner().commit().map_err(Error::storage),
            Err(e) => {
                txn.wtx.into_inner().rollback();
                Err(e)
            }
        }
    }

    fn sync(&self) -> Result<()> {
        self.keyspace
            .persist(fjall::PersistMode::SyncAll)
            .map_err(Error::storage)
    }

    fn size_on_disk(&self) -> u64 {
        self.keyspace.disk_space()
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        let n = self
            .keyspace
            .read_tx()
            .len(self.part(tree))
            .map_err(Error::storage)?;
        Ok(n as u64)
    }
}

// ---------------------------------------------------------------------------------------------
// Counting what the store writes

/// Wraps a backend and counts the key and value bytes the store puts (per tree), and the time
/// spent in the engine's `transact` (under the store's writer lock) and `sync`.
struct Counted {
    inner: Arc<dyn Backend>,
    puts: AtomicU64,
    bytes: [AtomicU64; Tree::ALL.len()],
    transact_ns: AtomicU64,
    transacts: AtomicU64,
    sync_ns: AtomicU64,
}

impl Counted {
    fn new(inner: Arc<dyn Backend>) -> Self {
        Self {
            inner,
            puts: AtomicU64::new(0),
            bytes: Default::default(),
            transact_ns: AtomicU64::new(0),
            transacts: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn reset(&self) {
        self.puts.store(0, Ordering::Relaxed);
        for b in &self.bytes {
            b.store(0, Ordering::Relaxed);
        }
        self.transact_ns.store(0, Ordering::Relaxed);
        self.transacts.store(0, Ordering::Relaxed);
        self.sync_ns.store(0, Ordering::Relaxed);
    }
}

struct CountedTxn<'a> {
    inner: &'a dyn Txn,
    puts: &'a AtomicU64,
    bytes: &'a [AtomicU64; Tree::ALL.len()],
}

impl Txn for CountedTxn<'_> {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(tree, key)
    }

    fn put(&self, tree: Tree, key: &[u8], value: &[u8]) -> Result<()> {
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.bytes[tree as usize].fetch_add((key.len() + value.len()) as u64, Ordering::Relaxed);
        self.inner.put(tree, key, value)
    }

    fn remove(&self, tree: Tree, key: &[u8]) -> Result<()> {
        self.inner.remove(tree, key)
    }
}

impl Layer for Counted {
    fn inner(&self) -> &dyn Backend {
        self.inner.as_ref()
    }

    fn transact(&self, f: &dyn Fn(&dyn Txn) -> Result<()>) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.transact(&|txn| {
            f(&CountedTxn {
                inner: txn,
                puts: &self.puts,
                bytes: &self.bytes,
            })
        });
        self.transact_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.transacts.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn sync(&self) -> Result<()> {
        let t = Instant::now();
        let r = self.inner.sync();
        self.sync_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// One engine under test.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// No disk: the ceiling of the store itself (JSON, audit hash, writer lock, threads).
    Memory,
    /// With the node's default page cache (`[storage] cache_mib`).
    Sled,
    /// With a page cache of [`LARGE_CACHE_MIB`]: the same engine, configured for a store
    /// whose writes spread over far more than the default cache holds.
    SledLargeCache,
    Redb,
    Fjall,
}

/// The page cache of [`Engine::SledLargeCache`], MiB: about what the appends' leaves take
/// (10,000 sections written at once over a 300 MB tree). 1,024 MiB was no faster.
const LARGE_CACHE_MIB: u64 = 256;

impl Engine {
    const ALL: [Engine; 5] = [
        Engine::Memory,
        Engine::Sled,
        Engine::SledLargeCache,
        Engine::Redb,
        Engine::Fjall,
    ];
    #[cfg(test)]
    const DISK: [Engine; 4] = [
        Engine::Sled,
        Engine::SledLargeCache,
        Engine::Redb,
        Engine::Fjall,
    ];

    fn name(self) -> &'static str {
        match self {
            Engine::Memory => "memory",
            Engine::Sled => "sled",
            Engine::SledLargeCache => "sled-cache256",
            Engine::Redb => "redb",
            Engine::Fjall => "fjall",
        }
    }

    fn durability(self) -> String {
        const SLED: &str =
            "sled 0.34.7 with the node's write-ahead log: sync = fdatasync of the log";
        match self {
            Engine::Memory => {
                "reference only: MemoryBackend, nothing on disk, sync is a no-op".into()
            }
            Engine::Sled => format!("{SLED}; the default {DEFAULT_CACHE_MIB} MiB page cache"),
            Engine::SledLargeCache => format!(
                "{SLED}; a {LARGE_CACHE_MIB} MiB page cache ([storage] cache_mib = {LARGE_CACHE_MIB})"
            ),
            Engine::Redb => {
                "redb 2.6: txn commit Durability::None, sync = empty Durability::Immediate commit (fsync)".into()
            }
            Engine::Fjall => {
                "fjall 2.11: txn commit PersistMode::Buffer, sync = persist(SyncAll) (fsync of journal)".into()
            }
        }
    }

    fn open(self, dir: &Path) -> Result<Arc<dyn Backend>> {
        Ok(match self {
            Engine::Memory => Arc::new(weft_node::storage::memory::MemoryBackend::new()),
            Engine::Sled => Arc::new(SledBackend::open(dir)?),
            Engine::SledLargeCache => Arc::new(SledBackend::open_with_cache(dir, LARGE_CACHE_MIB)?),
            Engine::Redb => Arc::new(RedbBackend::open(dir)?),
            Engine::Fjall => Arc::new(FjallBackend::open(dir)?),
        })
    }
}

/// A ~300 B change chunk: pseudo-random bytes (incompressible, like a compressed change).
fn payload(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn section_keys() -> anyhow::Result<Vec<SectionKey>> {
    let mut keys = Vec::with_capacity(PLANS * SECTIONS.len());
    for _ in 0..PLANS {
        let plan = PlanId::random();
        for s in SECTIONS {
            keys.push(SectionKey {
                plan,
                section: SectionName::parse(s)?,
            });
        }
    }
    Ok(keys)
}

fn batch(key: &SectionKey, n: u64) -> CommitBatch {
    CommitBatch {
        new_plans: vec![],
        family: vec![],
        disclosures: vec![],
        // Opaque bytes: no heads for the store to note.
        changes: vec![SectionWrite {
            key: key.clone(),
            bytes: payload(n),
            heads: vec![],
        }],
        new_user: None,
        consent_entries: vec![],
        ensure_plan: None,
        replication: vec![],
        known_to: None,
        audit: AuditDraft {
            time: weft_node::model::now(),
            agency: "school.bench.test".into(),
            user: "teacher-1".into(),
            action: AuditAction::Write,
            outcome: Outcome::Ok,
            plan: Some(key.plan),
            sections: vec![key.section.as_str().to_string()],
            detail: "1 change".into(),
            basis: "home agency".into(),
        },
    }
}

/// What each append is (see the module's documentation).
#[derive(Clone, Copy, Debug)]
enum Workload {
    Append,
    Commit,
}

impl Workload {
    const ALL: [Workload; 2] = [Workload::Append, Workload::Commit];

    fn name(self) -> &'static str {
        match self {
            Workload::Append => "append",
            Workload::Commit => "commit",
        }
    }

    /// What one append writes, for the figures' notes.
    fn describe(self) -> &'static str {
        match self {
            Workload::Append => {
                "one ~300 B record per append (StoreHandle::replication_put: the node's writer, \
                 group commit), keys spread over 10,000 sections"
            }
            Workload::Commit => {
                "one StoreHandle::commit per append: a ~300 B chunk with its section meta, feed \
                 and sealed audit entries, over 10,000 sections"
            }
        }
    }

    /// Runs append `i` (to section `key`).
    async fn run(self, handle: &StoreHandle, key: &SectionKey, i: u64) -> Result<()> {
        match self {
            Workload::Append => {
                let mut k = weft_node::storage::section_key_bytes(key);
                k.extend_from_slice(&i.to_be_bytes());
                handle.replication_put(vec![(k, Some(payload(i)))]).await
            }
            Workload::Commit => handle.commit(batch(key, i)).await.map(|_| ()),
        }
    }

    /// Checks the store holds exactly `appends` appends.
    fn check(self, store: &Store, backend: &dyn Backend, appends: u64) -> anyhow::Result<()> {
        let held = match self {
            Workload::Append => backend.len(Tree::Replication)?,
            Workload::Commit => {
                let stats = store.stats()?;
                anyhow::ensure!(
                    stats.audit_entries == stats.feed_seq,
                    "feed {} but audit {}",
                    stats.feed_seq,
                    stats.audit_entries
                );
                stats.feed_seq
            }
        };
        anyhow::ensure!(
            held == appends,
            "{appends} appends acknowledged, {held} held"
        );
        Ok(())
    }
}

/// What one engine did.
struct Measured {
    engine: Engine,
    workload: Workload,
    appends: u64,
    target: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    syncs: u64,
    puts: u64,
    logical_bytes: u64,
    tree_bytes: Vec<(&'static str, u64)>,
    transact_us: f64,
    sync_total_s: f64,
    disk_bytes: u64,
    allocated_bytes: u64,
    engine_bytes: u64,
    reopen_ms: f64,
    /// One section's purge on the reopened store (commit workload only).
    purge_ms: Option<f64>,
}

/// Bytes the files under `dir` really occupy (allocated blocks).
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn measure(
    engine: Engine,
    workload: Workload,
    n: u64,
    budget: Option<Duration>,
    dir: &Path,
) -> anyhow::Result<Measured> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let counted = Arc::new(Counted::new(engine.open(dir)?));
    let handle = StoreHandle::new(Store::open(counted.clone())?);
    counted.reset();
    let syncs_before = handle.blocking().syncs();
    let keys = Arc::new(section_keys()?);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(WRITERS + 8)
        .enable_all()
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let lat: Vec<Vec<f64>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..WRITERS {
            let (handle, keys, next, stop) =
                (handle.clone(), keys.clone(), next.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let key = &keys[(i as usize) % keys.len()];
                    let t = Instant::now();
                    if let Err(e) = workload.run(&handle, key, i).await {
                        // Every writer reports, so the first (root) error is in the log.
                        eprintln!("scenario 6: append {i} failed: {e}");
                        return Err(e.into());
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                    if budget.is_some_and(|b| start.elapsed() > b) {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let secs = start.elapsed().as_secs_f64();
    let mut lat: Vec<f64> = lat.into_iter().flatten().collect();
    lat.sort_by(f64::total_cmp);
    let appends = lat.len() as u64;
    let syncs = handle.blocking().syncs() - syncs_before;
    workload
        .check(handle.blocking(), counted.as_ref(), appends)
        .map_err(|e| e.context(format!("{} {}", engine.name(), workload.name())))?;
    let puts = counted.puts.load(Ordering::Relaxed);
    let logical_bytes = counted.bytes();
    let tree_bytes: Vec<(&str, u64)> = Tree::ALL
        .iter()
        .map(|t| (t.name(), counted.bytes[*t as usize].load(Ordering::Relaxed)))
        .filter(|(_, b)| *b > 0)
        .collect();
    let transact_us = counted.transact_ns.load(Ordering::Relaxed) as f64
        / 1e3
        / counted.transacts.load(Ordering::Relaxed).max(1) as f64;
    let sync_total_s = counted.sync_ns.load(Ordering::Relaxed) as f64 / 1e9;
    // Every acknowledged append is durable already; sync once more so nothing is pending.
    Backend::sync(counted.as_ref())?;
    let engine_bytes = Backend::size_on_disk(counted.as_ref());
    let disk_bytes = report::dir_bytes(dir);
    let allocated = allocated_bytes(dir);
    drop(handle);
    drop(counted);
    drop(rt);

    let (reopen_ms, purge_ms) = if matches!(engine, Engine::Memory) {
        (0.0, None)
    } else {
        reopen(engine, workload, dir, appends, &keys[0])?
    };
    let _ = std::fs::remove_dir_all(dir);

    Ok(Measured {
        engine,
        workload,
        appends,
        target: n,
        secs,
        p50_ms: report::percentile(&lat, 50.0).unwrap_or(0.0),
        p99_ms: report::percentile(&lat, 99.0).unwrap_or(0.0),
        syncs,
        puts,
        logical_bytes,
        tree_bytes,
        transact_us,
        sync_total_s,
        disk_bytes,
        allocated_bytes: allocated,
        engine_bytes,
        reopen_ms,
        purge_ms,
    })
}

/// Reopens the store and checks every append is there; returns the time it took in ms, and
/// for the commit workload the time of purging `purged` (a revoked consent's purge at a
/// grantee: finding and removing every trace of the section, with its audit entry).
fn reopen(
    engine: Engine,
    workload: Workload,
    dir: &Path,
    appends: u64,
    purged: &SectionKey,
) -> anyhow::Result<(f64, Option<f64>)> {
    let t = Instant::now();
    let backend = engine.open(dir)?;
    let store = Store::open(backend.clone())?;
    store.stats()?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    workload
        .check(&store, backend.as_ref(), appends)
        .map_err(|e| {
            e.context(format!(
                "{} {} after reopening",
                engine.name(),
                workload.name()
            ))
        })?;
    if !matches!(workload, Workload::Commit) {
        return Ok((ms, None));
    }
    let mut audit = batch(purged, 0).audit;
    audit.action = AuditAction::Purge;
    audit.detail = "consent revoked".into();
    let t = Instant::now();
    store.purge(
        std::slice::from_ref(purged),
        &CommitBatch::audit_only(audit),
    )?;
    let purge_ms = t.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        store.section(purged)?.is_none(),
        "{} {}: the purged section is still there",
        engine.name(),
        workload.name()
    );
    Ok((ms, Some(purge_ms)))
}

impl Measured {
    fn figures(&self) -> Vec<Figure> {
        let name = self.engine.name();
        let n = self.appends;
        let payload = (n * CHUNK as u64) as f64;
        let size = if n == self.target {
            format!("N={n}")
        } else {
            format!(
                "N={n} of {} (stopped at the {} s budget)",
                self.target,
                FULL_BUDGET.as_secs()
            )
        };
        let base = format!(
            "{}; {}; {size}, {WRITERS} writers",
            self.workload.describe(),
            self.engine.durability()
        );
        let workload = self.workload.name();
        let metric = |m: &str| format!("{name} {workload}: {m}");
        let memory = matches!(self.engine, Engine::Memory);
        let mut out = vec![
            Figure::new(
                SCENARIO,
                &metric(if memory { "appends/s (not durable)" } else { "durable appends/s" }),
                Some(n as f64 / self.secs),
                None,
                if memory { "-" } else { ">= 50000" },
            )
            .note(format!("{base}; {:.1} s", self.secs)),
            Figure::new(SCENARIO, &metric("p50 ms"), Some(self.p50_ms), None, "-")
                .note(base.clone()),
            Figure::new(SCENARIO, &metric("p99 ms"), Some(self.p99_ms), None, "-")
                .note(base.clone()),
            Figure::new(SCENARIO, &metric("syncs run"), Some(self.syncs as f64), None, "-")
                .note(format!(
                    "{base}; {:.1} appends per sync; engine transact {:.0} us avg (under the writer lock); \
                     {:.1} s in sync ({:.3} ms each)",
                    n as f64 / self.syncs.max(1) as f64,
                    self.transact_us,
                    self.sync_total_s,
                    self.sync_total_s * 1e3 / self.syncs.max(1) as f64
                )),
        ];
        if memory {
            return out;
        }
        let per_tree = self
            .tree_bytes
            .iter()
            .map(|(t, b)| format!("{t} {:.0}", *b as f64 / n as f64))
            .collect::<Vec<_>>()
            .join(", ");
        out.extend([
            Figure::new(
                SCENARIO,
                &metric("space amplification"),
                Some(self.disk_bytes as f64 / payload),
                None,
                "<= 1.5",
            )
            .note(format!(
                "{base}; file bytes {} / payload {} (N x {CHUNK} B); {:.2}x the logical bytes; \
                 allocated {}, engine says {}",
                self.disk_bytes,
                payload as u64,
                self.disk_bytes as f64 / self.logical_bytes.max(1) as f64,
                self.allocated_bytes,
                self.engine_bytes
            )),
            Figure::new(
                SCENARIO,
                &metric("logical bytes per append"),
                Some(self.logical_bytes as f64 / n as f64),
                None,
                "-",
            )
            .note(format!(
                "{base}; keys+values of {:.1} puts per append, B per tree: {per_tree}",
                self.puts as f64 / n as f64
            )),
            Figure::new(
                SCENARIO,
                &metric("reopen ms"),
                Some(self.reopen_ms),
                None,
                "-",
            )
            .note(format!(
                "{base}; open + Store::open + stats, after a clean close"
            )),
        ]);
        if let Some(ms) = self.purge_ms {
            out.push(
                Figure::new(SCENARIO, &metric("purge ms"), Some(ms), None, "-").note(format!(
                    "{base}; Store::purge of one of the 10,000 sections on the reopened store \
                     (a revocation at a grantee: the section's chunks, feed entry and metadata \
                     and an audit entry, durable)"
                )),
            );
        }
        out
    }
}

/// Runs scenario 6 over every engine in `work` (one fresh directory per engine, removed after).
pub fn run(quick: bool, work: &Path) -> anyhow::Result<Vec<Figure>> {
    let (n, budget) = if quick {
        (20_000, None)
    } else {
        (1_000_000, Some(FULL_BUDGET))
    };
    // WEFT_BENCH_ENGINES=sled,redb runs only those (for profiling).
    let only = std::env::var("WEFT_BENCH_ENGINES").unwrap_or_default();
    let mut figures = Vec::new();
    // WEFT_BENCH_WORKLOADS=append runs only that one.
    let workloads = std::env::var("WEFT_BENCH_WORKLOADS").unwrap_or_default();
    let chosen =
        |list: &str, name: &str| list.is_empty() || list.split(',').any(|e| e.trim() == name);
    for workload in Workload::ALL {
        for engine in Engine::ALL {
            if !chosen(&only, engine.name()) || !chosen(&workloads, workload.name()) {
                continue;
            }
            let what = format!("{} {}", engine.name(), workload.name());
            eprintln!("scenario 6: {what} ({n} appends)...");
            let m = measure(engine, workload, n, budget, &work.join(engine.name()))?;
            eprintln!(
                "scenario 6: {what}: {} appends in {:.1} s",
                m.appends, m.secs
            );
            figures.extend(m.figures());
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine keeps the `Backend` contract the store relies on.
    fn contract(backend: Arc<dyn Backend>) {
        backend
            .transact(&|txn| {
                txn.put(Tree::Chunks, b"a1", b"x")?;
                assert_eq!(txn.get(Tree::Chunks, b"a1")?.as_deref(), Some(&b"x"[..]));
                txn.put(Tree::Chunks, b"a2", b"y")?;
                txn.put(Tree::Chunks, b"b1", b"z")?;
                txn.put(Tree::Feed, b"a1", b"other tree")?;
                txn.remove(Tree::Chunks, b"a2")?;
                assert_eq!(txn.get(Tree::Chunks, b"a2")?, None);
                Ok(())
            })
            .unwrap();
        let failed = backend.transact(&|txn| {
            txn.put(Tree::Chunks, b"a3", b"never")?;
            Err(Error::internal("abort"))
        });
        assert!(failed.is_err());
        assert_eq!(backend.get(Tree::Chunks, b"a3").unwrap(), None);
        backend.sync().unwrap();
        backend
            .transact(&|txn| txn.put(Tree::Chunks, b"a4", b"w"))
            .unwrap();
        let keys = |prefix: &[u8], after: Option<&[u8]>, limit| {
            backend
                .scan(Tree::Chunks, prefix, after, limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(keys(b"a", None, 10), ["a1", "a4"]);
        assert_eq!(keys(b"a", Some(b"a1"), 10), ["a4"]);
        assert_eq!(keys(b"b", Some(b"a9"), 10), ["b1"]);
        assert_eq!(keys(b"", None, 2), ["a1", "a4"]);
        assert_eq!(backend.len(Tree::Chunks).unwrap(), 3);
        assert_eq!(backend.len(Tree::Feed).unwrap(), 1);
    }

    #[test]
    fn engines_keep_the_backend_contract() {
        let dir = std::env::temp_dir().join(format!("weft-bench-engines-{}", std::process::id()));
        for engine in Engine::DISK {
            let d = dir.join(engine.name());
            contract(engine.open(&d).unwrap());
            // A store of its own: the contract wrote raw bytes where the store keeps records.
            let store = Store::open(engine.open(&d.join("store")).unwrap()).unwrap();
            let key = &section_keys().unwrap()[0];
            store.commit(batch(key, 1)).unwrap();
            assert_eq!(store.section(key).unwrap().unwrap().chunks.len(), 1);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
