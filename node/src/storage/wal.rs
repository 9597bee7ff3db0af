//! The write-ahead log that makes sled's transactions durable.
//!
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither writes a grown file's
//! size nor flushes the drive's volatile cache: a power loss could take the last acknowledged
//! writes. Appending a transaction's writes to a plain file and calling `fdatasync` does both,
//! for about the same time on the benchmark machine (p50 ~0.29 ms against ~0.26 ms for
//! `flush()`, one writer, 300 B values). So a committed transaction is appended here (under the
//! backend's transaction order), a `sync` is an `fdatasync` of this file, and sled writes its
//! own files in the background.
//!
//! Each transaction carries a number; sled stores the number of the last one applied in the
//! same transaction. On open, the records after what sled recovered are applied again (a
//! record holds final values, so applying one twice is harmless) and the log starts afresh.
//! A checkpoint (a sled `flush()`) lets the log start a new file and delete the old ones: when
//! it grows past [`CHECKPOINT_BYTES`], and on demand after a purge, so purged values do not
//! linger here.
//!
//! File format: `WEFTWAL1`, then records `len: u32 LE ‖ crc32(payload): u32 LE ‖ payload`,
//! payload `seq: u64 LE` then per write `tree: u8 ‖ key_len: u32 LE ‖ key ‖ present: u8`
//! (`‖ value_len: u32 LE ‖ value` when present). Reading stops at the first record that is
//! short or fails its checksum: a torn tail from a crash mid-append, never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::Tree;
use crate::error::{Error, Result};

/// One transaction's writes: `None` removes the key.
pub(super) type Writes = Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>;

/// What a log holds: its records (transaction number and writes), oldest first, and the
/// numbers of its files.
pub(super) type Contents = (Vec<(u64, Writes)>, Vec<u64>);

const MAGIC: &[u8; 8] = b"WEFTWAL1";

/// The log size past which a `sync` checkpoints instead.
pub(super) const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// The log of one store directory.
pub(super) struct Wal {
    dir: PathBuf,
    current: Mutex<Current>,
}

struct Current {
    file: Arc<File>,
    number: u64,
    bytes: u64,
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn file_name(number: u64) -> String {
    format!("wal-{number:016}.log")
}

impl Wal {
    /// Opens the log in `dir`: the records found in its files (oldest first, up to the first
    /// torn one), and the numbers of those files, which [`Wal::start`] deletes once the
    /// records are safely elsewhere.
    pub(super) fn read(dir: &Path) -> Result<Contents> {
        let numbers = list(dir)?;
        let mut records = Vec::new();
        'files: for n in &numbers {
            let path = dir.join(file_name(*n));
            let bytes = std::fs::read(&path).map_err(io("cannot read", &path))?;
            let Some(mut rest) = bytes.strip_prefix(MAGIC.as_slice()) else {
                break;
            };
            while let Some((record, tail)) = next_record(rest) {
                rest = tail;
                match decode(record) {
                    Some(r) => records.push(r),
                    None => break 'files,
                }
            }
            if !rest.is_empty() {
                // A torn tail: nothing after it was acknowledged.
                break;
            }
        }
        Ok((records, numbers))
    }

    /// Starts a fresh file after `old` (whose records the caller has made durable in the
    /// engine) and deletes the old files.
    pub(super) fn start(dir: &Path, old: &[u64]) -> Result<Self> {
        let number = old.iter().max().map_or(1, |n| n + 1);
        let file = create(dir, number)?;
        for n in old {
            let path = dir.join(file_name(*n));
            std::fs::remove_file(&path).map_err(io("cannot remove", &path))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Mutex::new(Current {
                file: Arc::new(file),
                number,
                bytes: MAGIC.len() as u64,
            }),
        })
    }

    fn current(&self) -> Result<MutexGuard<'_, Current>> {
        self.current
            .lock()
            .map_err(|_| Error::internal("write-ahead log poisoned"))
    }

    /// Appends transaction `seq` (not yet durable: see [`Wal::sync`]). The caller orders
    /// appends as it orders transactions.
    pub(super) fn append(&self, seq: u64, writes: &Writes) -> Result<()> {
        let payload = encode(seq, writes);
        let mut record = Vec::with_capacity(payload.len() + 8);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let mut current = self.current()?;
        let path = self.dir.join(file_name(current.number));
        (&*current.file)
            .write_all(&record)
            .map_err(io("cannot append to", &path))?;
        current.bytes += record.len() as u64;
        Ok(())
    }

    /// The size of the current file.
    pub(super) fn bytes(&self) -> u64 {
        self.current().map_or(0, |c| c.bytes)
    }

    /// Makes every record appended so far durable. Appends may go on meanwhile.
    pub(super) fn sync(&self) -> Result<()> {
        let (file, number) = {
            let c = self.current()?;
            (c.file.clone(), c.number)
        };
        file.sync_data()
            .map_err(io("cannot sync", &self.dir.join(file_name(number))))
    }

    /// Switches appends to a new file; returns the old file's number, for
    /// [`Wal::remove_through`] once the engine holds its records durably. The old file is
    /// synced first: a [`Wal::sync`] after the switch syncs only the new one, yet answers for
    /// every record appended before it.
    pub(super) fn rotate(&self) -> Result<u64> {
        let mut current = self.current()?;
        current
            .file
            .sync_data()
            .map_err(io("cannot sync", &self.dir.join(file_name(current.number))))?;
        let number = current.number + 1;
        let file = create(&self.dir, number)?;
        let old = current.number;
        *current = Current {
            file: Arc::new(file),
            number,
            bytes: MAGIC.len() as u64,
        };
        Ok(old)
    }

    /// Deletes the files up to `number`.
    pub(super) fn remove_through(&self, number: u64) -> Result<()> {
        for n in list(&self.dir)?.into_iter().filter(|n| *n <= number) {
            let path = self.dir.join(file_name(n));
            std::fs::remove_file(&path).map_err(io("cannot remove", &path))?;
        }
        Ok(())
    }

    /// Every file of the log, for the size on disk.
    pub(super) fn size_on_disk(&self) -> u64 {
        list(&self.dir).map_or(0, |numbers| {
            numbers
                .iter()
                .filter_map(|n| std::fs::metadata(self.dir.join(file_name(*n))).ok())
                .map(|m| m.len())
                .sum()
        })
    }
}

/// The numbers of the log files in `dir`, ascending.
fn list(dir: &Path) -> Result<Vec<u64>> {
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))? {
        let name = entry.map_err(io("cannot list", dir))?.file_name();
        if let Some(n) = name
            .to_string_lossy()
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Creates log file `number` with its magic, durably (the file and its directory entry).
fn create(dir: &Path, number: u64) -> Result<File> {
    let path = dir.join(file_name(number));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io("cannot create", &path))?;
    file.write_all(MAGIC).map_err(io("cannot write", &path))?;
    file.sync_all().map_err(io("cannot sync", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))?;
    Ok(file)
}

fn encode(seq: u64, writes: &Writes) -> Vec<u8> {
    let size: usize = writes
        .iter()
        .map(|(_, k, v)| 10 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(&seq.to_le_bytes());
    for (tree, key, value) in writes {
        out.push(*tree as u8);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    out
}

/// The next whole record whose checksum holds, and what follows it.
fn next_record(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let payload = bytes.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload, &bytes[8 + len..]))
}

fn decode(payload: &[u8]) -> Option<(u64, Writes)> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (b.get(..n)?, b.get(n..)?);
        *b = tail;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        Some(u32::from_le_bytes(take(b, 4)?.try_into().ok()?) as usize)
    }
    let mut b = payload;
    let seq = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
    let mut writes = Vec::new();
    while !b.is_empty() {
        let tree = *Tree::ALL.get(take(&mut b, 1)?[0] as usize)?;
        let n = len(&mut b)?;
        let key = take(&mut b, n)?.to_vec();
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = len(&mut b)?;
                Some(take(&mut b, n)?.to_vec())
            }
            _ => return None,
        };
        writes.push((tree, key, value));
    }
    Some((seq, writes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(n: u8) -> Writes {
        vec![
            (Tree::Chunks, vec![n; 3], Some(vec![n; 300])),
            (Tree::Meta, b"k".to_vec(), None),
        ]
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), &[]).unwrap();
        for seq in 1..=3 {
            wal.append(seq, &writes(seq as u8)).unwrap();
        }
        wal.sync().unwrap();
        let (records, files) = Wal::read(dir.path()).unwrap();
        assert_eq!(files, vec![1]);
        assert_eq!(
            records,
            (1..=3).map(|s| (s, writes(s as u8))).collect::<Vec<_>>()
        );
        // A crash mid-append: half a record at the end.
        let path = dir.path().join(file_name(1));
        let full = std::fs::read(&path).unwrap();
        let cut = full.len() - 100;
        std::fs::write(&path, &full[..cut]).unwrap();
        let (records, _) = Wal::read(dir.path()).unwrap();
        assert_eq!(records.len(), 2, "the torn third record is not read");
        // A flipped byte fails the checksum.
        let mut bad = full.clone();
        bad[MAGIC.len() + 20] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (records, _) = Wal::read(dir.path()).unwrap();
        assert!(records.is_empty(), "nothing after a corrupt record is read");
    }

    #[test]
    fn rotation_keeps_order_across_files_and_starting_again_removes_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), &[]).unwrap();
        wal.append(1, &writes(1)).unwrap();
        let old = wal.rotate().unwrap();
        wal.append(2, &writes(2)).unwrap();
        wal.sync().unwrap();
        let (records, files) = Wal::read(dir.path()).unwrap();
        assert_eq!(files, vec![1, 2]);
        assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
        wal.remove_through(old).unwrap();
        assert_eq!(Wal::read(dir.path()).unwrap().1, vec![2]);
        drop(wal);
        let again = Wal::start(dir.path(), &[2]).unwrap();
        assert_eq!(Wal::read(dir.path()).unwrap(), (vec![], vec![3]));
        assert!(again.bytes() > 0);
    }
}
