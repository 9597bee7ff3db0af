//! Backups: a consistent copy of every tree of a running node's store, plus the consent
//! signing key, in one self-checking file; and the offline restore.
//!
//! Format: `WEFT-BACKUP-1\n`, one JSON header line (agency, format version, time, config
//! digest), then records `tag u8 | key len u32 | key | value len u32 | value` where the tag
//! is a tree number or [`TAG_SIGNING_KEY`], then [`TAG_END`] and the SHA-256 of everything
//! before it. A backup holds student data and the signing key: keep it like the data
//! directory itself.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{Backend, Store, Tree};

const MAGIC: &[u8] = b"WEFT-BACKUP-1\n";
/// The record tag of the consent signing key.
pub const TAG_SIGNING_KEY: u8 = 255;
/// The tag that ends the records.
pub const TAG_END: u8 = 254;

/// What a backup says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// The node's agency.
    pub agency: String,
    /// The store format version.
    pub format_version: u32,
    /// When it was taken, unix ms.
    pub created_at_ms: i64,
    /// SHA-256 of the node's config file, if known.
    pub config_sha256: String,
}

/// Counts of what was written or read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupSummary {
    /// Records (keys) in the backup.
    pub records: u64,
    /// Bytes of the file.
    pub bytes: u64,
    /// SHA-256 of the file's contents before the digest.
    pub sha256: String,
}

struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn record(out: &mut impl Write, tag: u8, key: &[u8], value: &[u8]) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

/// Writes a backup of `store` (consistent: commits wait while it is taken) to `out`.
pub fn write(
    store: &Store,
    header: &BackupHeader,
    signing_key: &[u8],
    out: impl Write,
) -> Result<BackupSummary> {
    let io = |e: std::io::Error| Error::Internal(format!("backup: {e}"));
    let mut w = Hashing {
        inner: std::io::BufWriter::new(out),
        hash: Sha256::new(),
        bytes: 0,
    };
    w.write_all(MAGIC).map_err(io)?;
    let mut line = serde_json::to_vec(header).map_err(Error::internal)?;
    line.push(b'\n');
    w.write_all(&line).map_err(io)?;
    let records = store.with_writes_paused(|backend| -> Result<u64> {
        let mut n = 0;
        for tree in Tree::ALL {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = backend.scan(tree, &[], after.as_deref(), 4096)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (k, v) in &page {
                    record(&mut w, tree as u8, k, v).map_err(io)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    })??;
    record(&mut w, TAG_SIGNING_KEY, b"signing.key", signing_key).map_err(io)?;
    w.write_all(&[TAG_END]).map_err(io)?;
    let digest = w.hash.clone().finalize();
    w.inner.write_all(&digest).map_err(io)?;
    w.inner.flush().map_err(io)?;
    Ok(BackupSummary {
        records,
        bytes: w.bytes + 32,
        sha256: hex::encode(digest),
    })
}

/// A backup read and checked, ready to load.
pub struct Parsed {
    /// What the backup says about itself.
    pub header: BackupHeader,
    /// The consent signing key.
    pub signing_key: Vec<u8>,
    /// Counts.
    pub summary: BackupSummary,
    records: Vec<(u8, Vec<u8>, Vec<u8>)>,
}

/// Reads and checks a whole backup (magic, checksum, header, version, records) without
/// writing anything.
pub fn parse(mut input: impl Read) -> Result<Parsed> {
    let bad = |what: &str| Error::invalid(format!("not a usable Weft backup: {what}"));
    let mut all = Vec::new();
    input
        .read_to_end(&mut all)
        .map_err(|e| Error::invalid(format!("cannot read the backup: {e}")))?;
    if all.len() < MAGIC.len() + 33 || !all.starts_with(MAGIC) {
        return Err(bad("it does not start like one"));
    }
    let (body, digest) = all.split_at(all.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(bad("its checksum does not match (truncated or altered)"));
    }
    let rest = &body[MAGIC.len()..];
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| bad("no header"))?;
    let header: BackupHeader =
        serde_json::from_slice(&rest[..nl]).map_err(|_| bad("bad header"))?;
    // An older format's records restore as they were; opening the store upgrades them.
    use crate::storage::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&header.format_version) {
        return Err(Error::invalid(format!(
            "the backup has store format version {}; this weft restores versions \
             {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
            header.format_version
        )));
    }
    let mut pos = &rest[nl + 1..];
    let mut take = |n: usize| -> Result<&[u8]> {
        if pos.len() < n {
            return Err(bad("a record is cut short"));
        }
        let (a, b) = pos.split_at(n);
        pos = b;
        Ok(a)
    };
    let mut records: Vec<(u8, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut signing_key = Vec::new();
    loop {
        let tag = take(1)?[0];
        if tag == TAG_END {
            break;
        }
        let klen = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let key = take(klen)?.to_vec();
        let vlen = u32::from_be_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let value = take(vlen)?.to_vec();
        match tag {
            TAG_SIGNING_KEY => signing_key = value,
            t if (t as usize) < Tree::ALL.len() => records.push((t, key, value)),
            _ => return Err(bad("unknown record tag")),
        }
    }
    let summary = BackupSummary {
        records: records.len() as u64,
        bytes: all.len() as u64,
        sha256: hex::encode(digest),
    };
    Ok(Parsed {
        header,
        signing_key,
        summary,
        records,
    })
}

/// Writes a parsed backup's records into an empty `backend`.
pub fn load(parsed: &Parsed, backend: &dyn Backend) -> Result<()> {
    for chunk in parsed.records.chunks(1000) {
        backend.transact(&|txn| {
            for (t, k, v) in chunk {
                txn.put(Tree::ALL[*t as usize], k, v)?;
            }
            Ok(())
        })?;
    }
    backend.sync()
}

/// Restores a backup file into `data_dir`, which must be empty or absent; writes the signing
/// key as `data_dir/signing.key`; verifies the audit chain. Returns the header, the summary
/// and the number of audit entries.
pub fn restore_into(file: &Path, data_dir: &Path) -> Result<(BackupHeader, BackupSummary, u64)> {
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::invalid(format!(
            "{} is not empty: restore only into a new data directory",
            data_dir.display()
        )));
    }
    let input = std::fs::File::open(file)
        .map_err(|e| Error::invalid(format!("cannot open {}: {e}", file.display())))?;
    // Check the whole file before creating anything.
    let parsed = parse(std::io::BufReader::new(input))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Storage(format!("cannot create {}: {e}", data_dir.display())))?;
    let backend: Arc<dyn Backend> = Arc::new(crate::storage::sled::SledBackend::open(data_dir)?);
    load(&parsed, backend.as_ref())?;
    let Parsed {
        header,
        signing_key: key,
        summary,
        ..
    } = parsed;
    if !key.is_empty() {
        let path = data_dir.join("signing.key");
        std::fs::write(&path, &key)
            .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::Storage(format!("{}: {e}", path.display())))?;
        }
    }
    let store = Store::open(backend)?;
    let entries = store.verify_audit()?.map_err(|b| {
        Error::Storage(format!(
            "the restored audit chain breaks at entry {}: {}",
            b.index, b.problem
        ))
    })?;
    Ok((header, summary, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PlanId, SectionKey, SectionName, Timestamp};
    use crate::storage::{
        memory::MemoryBackend, CommitBatch, FeedEntry, SectionWrite, FORMAT_VERSION,
    };

    fn backup_of(store: &Store, format_version: u32) -> Vec<u8> {
        let header = BackupHeader {
            agency: "school.test".into(),
            format_version,
            created_at_ms: 1,
            config_sha256: String::new(),
        };
        let mut out = Vec::new();
        write(store, &header, b"key", &mut out).unwrap();
        out
    }

    #[test]
    fn a_backup_of_format_1_restores_upgraded_and_an_unknown_format_is_refused() {
        let backend = Arc::new(MemoryBackend::new());
        let store = Store::open(backend.clone()).unwrap();
        let goals = SectionKey {
            plan: PlanId::random(),
            section: SectionName::parse("goals").unwrap(),
        };
        for n in 1..=2 {
            store
                .commit(CommitBatch {
                    changes: vec![SectionWrite {
                        key: goals.clone(),
                        bytes: vec![n],
                        heads: vec![],
                    }],
                    ..CommitBatch::audit_only(crate::storage::tests::draft(n.into()))
                })
                .unwrap();
        }
        // As format 1 left it: the first change's feed entry still there.
        let first = FeedEntry {
            seq: 1,
            key: goals.clone(),
            time: Timestamp::from_millis(1),
            known_to: None,
        };
        let first = serde_json::to_vec(&first).unwrap();
        backend
            .transact(&|txn| {
                txn.put(Tree::Feed, &1u64.to_be_bytes(), &first)?;
                txn.put(Tree::Meta, b"format_version", &1u32.to_be_bytes())
            })
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("old.weftbackup");
        std::fs::write(&file, backup_of(&store, 1)).unwrap();
        let data = dir.path().join("restored");
        let (header, _, entries) = restore_into(&file, &data).unwrap();
        assert_eq!((header.format_version, entries), (1, 2));
        let restored = Store::open(Arc::new(
            crate::storage::sled::SledBackend::open(&data).unwrap(),
        ))
        .unwrap();
        let feed = restored.feed_since(0, 10).unwrap();
        assert_eq!(
            feed.iter().map(|e| (e.seq, &e.key)).collect::<Vec<_>>(),
            [(2, &goals)]
        );
        drop(restored);
        let reopened = crate::storage::sled::SledBackend::open(&data).unwrap();
        assert_eq!(
            reopened.get(Tree::Meta, b"format_version").unwrap(),
            Some(FORMAT_VERSION.to_be_bytes().to_vec())
        );

        let file = dir.path().join("future.weftbackup");
        std::fs::write(&file, backup_of(&store, FORMAT_VERSION + 1)).unwrap();
        let err = restore_into(&file, &dir.path().join("never"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("store format version {}", FORMAT_VERSION + 1)),
            "{err}"
        );
        assert!(!dir.path().join("never").exists());
    }
}
