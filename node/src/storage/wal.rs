//! The write-ahead log that makes sled's writes durable and its transactions atomic.
//!
//! sled's `flush()` ends in `sync_file_range` on Linux, which neither writes a grown file's
//! size nor flushes the drive's volatile cache: a power loss could take the last acknowledged
//! writes. Appending a transaction's writes to a plain file and calling `fdatasync` does both,
//! for about the same time on the benchmark machine (p50 ~0.29 ms against ~0.26 ms for
//! `flush()`, one writer, 300 B values). So a transaction is appended here (in the backend's
//! transaction order) and synced before sled gets any of it (sled writes its buffers when they
//! fill, so it must never hold what the log could lose), and sled writes its own files when it
//! likes.
//!
//! Each transaction carries a number, consecutive within the log. On open, every record is
//! applied again, in order (a record holds final values, so whatever sled kept, the result is
//! each key's last logged value), and the log starts afresh. A checkpoint (a sled `flush()`
//! and an `fsync` of its files) lets the log start a new file and delete the old ones: when it
//! grows past [`CHECKPOINT_BYTES`], on demand after a purge, so purged values do not linger
//! here, and when the store closes.
//!
//! Appends overwrite zeros written ahead of them ([`Current::zeroed`]), not the file's end:
//! an `fdatasync` after an append that grew the file must also commit the new size through
//! ext4's journal, one after an overwrite only writes the data and flushes the drive (p50 ~140
//! against ~200 µs, and ~35% less CPU, back to back on the benchmark machine). So the file
//! grows in steps of zeros (64 KiB at first, doubling to 1 MiB), each made durable by the
//! next sync, and the newest log file ends in zeros; an older one was cut to its records when
//! the log moved on ([`Wal::rotate`]).
//!
//! Where the filesystem allows it, appends bypass the page cache ([`Direct`]), which leaves
//! the sync less to do; the records and zeros on disk are the same either way (the newest
//! file's length is then a whole number of 4 KiB blocks).
//!
//! File format: `WEFTWAL1`, then records `len: u32 LE ‖ crc32(payload): u32 LE ‖ payload`,
//! payload `seq: u64 LE` then per write `tree: u8 ‖ key_len: u32 LE ‖ key ‖ present: u8`
//! (`‖ value_len: u32 LE ‖ value` when present). A record that is short or fails its checksum
//! at the end of the newest file is a torn append from a crash, never acknowledged, and is
//! dropped; anywhere else it is damage, and the store does not open. Zeros after the newest
//! file's last record are the space written ahead, not damage. After a failed append or sync
//! the log refuses everything until the store is opened again, so no record is ever written
//! after a torn one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::writer::Writes;
use super::Tree;
use crate::error::{Error, Result};

/// What a log holds: its records (transaction number and writes), oldest first, and the
/// numbers of its files.
pub(super) type Contents = (Vec<(u64, Writes)>, Vec<u64>);

const MAGIC: &[u8; 8] = b"WEFTWAL1";

/// The log size past which a `sync` checkpoints instead.
pub(super) const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// The first and the largest step of zeros a log file grows by (see the module's text).
const ZEROS_FIRST: u64 = 64 * 1024;
const ZEROS_MOST: u64 = 1024 * 1024;

/// The log of one store directory.
pub(super) struct Wal {
    dir: PathBuf,
    current: Mutex<Current>,
    /// An append or a sync failed: nothing more is logged or acknowledged until the store is
    /// opened again. (After a failed `fdatasync` the kernel may drop the dirty pages and a
    /// later one succeed over a hole; after a short append, later records would sit behind a
    /// torn one that recovery stops at.)
    failed: AtomicBool,
    /// Whether new files try [`Direct`] (always, but in tests of the page cache's path).
    try_direct: bool,
}

struct Current {
    file: Arc<File>,
    /// The same file opened for direct I/O, which appends go through when the filesystem
    /// allows it (see [`Direct`]).
    direct: Option<Direct>,
    number: u64,
    /// Where the next record goes: the end of the records.
    bytes: u64,
    /// The file's size: zeros from `bytes` on, which appends overwrite.
    zeroed: u64,
    /// How much of the file is known durable: a sync with nothing new appended is skipped.
    synced: u64,
}

impl Current {
    /// A file that [`create`] has just made at `path`: its magic and nothing else (then
    /// zeros to the end of its first block, when appends go through [`Direct`]).
    fn new(file: File, number: u64, path: &Path, try_direct: bool) -> Self {
        let start = MAGIC.len() as u64;
        let direct = try_direct.then(|| Direct::open(path)).flatten();
        Current {
            file: Arc::new(file),
            zeroed: if direct.is_some() { BLOCK } else { start },
            direct,
            number,
            bytes: start,
            synced: start,
        }
    }

    /// Writes `record` after the last one, over zeros: when it would pass them, the file
    /// grows by a step of zeros past its end, before the record or, through [`Direct`], in the
    /// same write (the next sync makes the new size durable).
    fn write(&mut self, record: &[u8]) -> std::io::Result<()> {
        let end = self.bytes + record.len() as u64;
        if let Some(direct) = &mut self.direct {
            self.zeroed = direct.write(self.bytes, self.zeroed, record)?;
            self.bytes = end;
            return Ok(());
        }
        if end > self.zeroed {
            let step = zeros_step(self.zeroed);
            let size = end.max(self.zeroed + step);
            // Zeros where the record will not be (it may be larger than what was left).
            let from = end.max(self.zeroed);
            let zeros = usize::try_from(size - from).map_err(std::io::Error::other)?;
            self.file.write_all_at(&vec![0; zeros], from)?;
            self.zeroed = size;
        }
        self.file.write_all_at(record, self.bytes)?;
        self.bytes = end;
        Ok(())
    }
}

/// How much a log file grows by when an append passes its zeros, once it holds `zeroed` bytes.
fn zeros_step(zeroed: u64) -> u64 {
    zeroed.clamp(ZEROS_FIRST, ZEROS_MOST)
}

/// The unit of a direct write: offsets, lengths and the memory written from are multiples of
/// it (every Linux filesystem and drive in use takes 4 KiB direct I/O).
const BLOCK: u64 = 4096;

/// Appends with `O_DIRECT`: each append writes the log's last block (the records already in
/// it, kept here, then the new record and zeros to the block's end) straight to the drive, so
/// the sync that follows only has the drive flush its cache (and commit the file's size when
/// it grew). Through the page cache the sync also had to find and write the dirty pages: a
/// 700 B append and its sync took p50 ~470 µs that way against ~390 µs direct, one every
/// 100 ms, and ~100 against ~75 µs back to back (a Python probe on the benchmark machine's
/// ext4). The append itself now waits for the drive's write, so a hint transaction (which
/// skips the sync) no longer returns before the disk has its bytes; only the flush is left
/// to the next sync. Rewriting the records already in the last block is safe: a crash during
/// the write leaves each sector old or new, and their bytes are the same in both. The records
/// and zeros are the bytes the page cache would have written; the newest file's length is a
/// whole number of blocks.
struct Direct {
    file: File,
    /// The log's bytes from the start of the block that holds its end, up to its end.
    tail: Vec<u8>,
    /// Room for one write, with slack to start it at an aligned address.
    buf: Vec<u8>,
}

impl Direct {
    /// The new log file at `path` (its magic only) opened for direct writes, if the
    /// filesystem allows it: its first block (the magic, then zeros) is written through the
    /// new handle at once, so a filesystem that opens files for direct I/O but refuses the
    /// writes is found here, not at an append.
    fn open(path: &Path) -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let opened = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .and_then(|file| {
                    let mut direct = Direct {
                        file,
                        tail: Vec::new(),
                        buf: Vec::new(),
                    };
                    direct.write(0, 0, MAGIC)?;
                    Ok(direct)
                });
            match opened {
                Ok(direct) => Some(direct),
                Err(e) => {
                    tracing::info!(error = %e, "the write-ahead log appends through the page cache");
                    None
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            None
        }
    }

    /// Writes `record` at `bytes`, the log's end, in a file of `zeroed` bytes (a whole number
    /// of blocks, or 0 for the magic); when the record passes them, the same write adds a step
    /// of zeros. Returns the file's size after.
    fn write(&mut self, bytes: u64, zeroed: u64, record: &[u8]) -> std::io::Result<u64> {
        let start = bytes - self.tail.len() as u64;
        let end = bytes + record.len() as u64;
        let size = if end > zeroed && zeroed > 0 {
            align_up(end.max(zeroed + zeros_step(zeroed)))
        } else {
            zeroed.max(align_up(end))
        };
        let upto = if end > zeroed { size } else { align_up(end) };
        let len = usize::try_from(upto - start).map_err(std::io::Error::other)?;
        self.buf.clear();
        self.buf.resize(len + BLOCK as usize, 0);
        let at = self.buf.as_ptr().align_offset(BLOCK as usize);
        let out = &mut self.buf[at..at + len];
        let (old, rest) = out.split_at_mut(self.tail.len());
        old.copy_from_slice(&self.tail);
        rest[..record.len()].copy_from_slice(record);
        self.file.write_all_at(out, start)?;
        let last = (end / BLOCK * BLOCK - start) as usize;
        self.tail.clear();
        self.tail
            .extend_from_slice(&out[last..(end - start) as usize]);
        Ok(size)
    }
}

fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

fn io<'a>(what: &'a str, path: &'a Path) -> impl Fn(std::io::Error) -> Error + 'a {
    move |e| Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn file_name(number: u64) -> String {
    format!("wal-{number:016}.log")
}

impl Wal {
    /// Opens the log in `dir`: the records found in its files (oldest first), and the numbers
    /// of those files, which [`Wal::start`] deletes once the records are safely elsewhere. The
    /// newest file may end in an append a crash cut short (never acknowledged: it is dropped);
    /// damage in any other file is an error, since records after it may have been.
    pub(super) fn read(dir: &Path) -> Result<Contents> {
        let numbers = list(dir)?;
        let mut records = Vec::new();
        for (i, n) in numbers.iter().enumerate() {
            let path = dir.join(file_name(*n));
            let bytes = std::fs::read(&path).map_err(io("cannot read", &path))?;
            let mut rest: &[u8] = match bytes.strip_prefix(MAGIC.as_slice()) {
                Some(r) => r,
                // A file whose creation a crash cut short holds nothing.
                None if MAGIC.starts_with(&bytes) => &[],
                // Not a log file's start: damaged.
                None => &bytes,
            };
            let bad_start = !bytes.starts_with(MAGIC) && !MAGIC.starts_with(&bytes);
            while let Some((record, tail)) = next_record(rest).filter(|_| !bad_start) {
                match decode(record) {
                    Some(r) => records.push(r),
                    None => break,
                }
                rest = tail;
            }
            // Zeros after the newest file's last record are the space written ahead of
            // appends; an older file was cut to its records when the log moved on.
            let newest = i + 1 == numbers.len();
            let torn = bad_start
                || if newest {
                    rest.iter().any(|b| *b != 0)
                } else {
                    !rest.is_empty()
                };
            if torn && !newest {
                // Only the newest file can end in an append a crash cut short (a failed
                // append stops the log): damage anywhere else may hide acknowledged writes.
                return Err(Error::Storage(format!(
                    "the write-ahead log file {} is damaged before its end; the store was not \
                     opened (restore it from a backup, or ask for help before deleting it)",
                    path.display()
                )));
            }
            if torn {
                tracing::warn!(
                    file = %path.display(),
                    bytes = rest.len(),
                    "the write-ahead log ends in a torn append (never acknowledged); it is dropped"
                );
            }
        }
        Ok((records, numbers))
    }

    /// Starts a fresh file after `old` (whose records the caller has made durable in the
    /// engine) and deletes the old files.
    pub(super) fn start(dir: &Path, old: &[u64]) -> Result<Self> {
        Self::start_with(dir, old, true)
    }

    /// [`Wal::start`], trying direct I/O or not.
    fn start_with(dir: &Path, old: &[u64], try_direct: bool) -> Result<Self> {
        let number = old.iter().max().map_or(1, |n| n + 1);
        let file = create(dir, number)?;
        remove(dir, old)?;
        let path = dir.join(file_name(number));
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Mutex::new(Current::new(file, number, &path, try_direct)),
            failed: AtomicBool::new(false),
            try_direct,
        })
    }

    /// Refuses once an append or a sync failed.
    pub(super) fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Storage(
                "the write-ahead log could not be written earlier; restart the node (it \
                 recovers from the log) once the disk is fixed"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Marks the log failed (see [`Wal::failed`](Self)) and passes `e` on.
    pub(super) fn fail(&self, e: Error) -> Error {
        self.failed.store(true, Ordering::SeqCst);
        e
    }

    fn current(&self) -> Result<MutexGuard<'_, Current>> {
        self.current
            .lock()
            .map_err(|_| Error::internal("write-ahead log poisoned"))
    }

    /// Appends transaction `seq` (not yet durable: see [`Wal::sync`]). The caller orders
    /// appends as it orders transactions.
    pub(super) fn append(&self, seq: u64, writes: &Writes) -> Result<()> {
        self.check()?;
        let record = encode(seq, writes)?;
        let mut current = self.current()?;
        let path = self.dir.join(file_name(current.number));
        current
            .write(&record)
            .map_err(|e| self.fail(io("cannot append to", &path)(e)))?;
        Ok(())
    }

    /// Where the current file's records end.
    pub(super) fn bytes(&self) -> u64 {
        self.current().map_or(0, |c| c.bytes)
    }

    /// Makes every record appended so far durable (at once when nothing was appended since
    /// the last sync). Appends may go on meanwhile.
    pub(super) fn sync(&self) -> Result<()> {
        self.check()?;
        let (file, number, upto) = {
            let c = self.current()?;
            if c.synced >= c.bytes {
                return Ok(());
            }
            (c.file.clone(), c.number, c.bytes)
        };
        file.sync_data()
            .map_err(|e| self.fail(io("cannot sync", &self.dir.join(file_name(number)))(e)))?;
        let mut c = self.current()?;
        if c.number == number {
            c.synced = c.synced.max(upto);
        }
        Ok(())
    }

    /// Whether appends go through direct I/O.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.current().unwrap().direct.is_some()
    }

    /// Bytes appended but not yet synced.
    #[cfg(test)]
    pub(super) fn unsynced(&self) -> u64 {
        self.current().map_or(0, |c| c.bytes - c.synced)
    }

    /// Switches appends to a new file; returns the old file's number, for
    /// [`Wal::remove_through`] once the engine holds its records durably. The old file is cut
    /// to its records (its zeros go) and synced first: a [`Wal::sync`] after the switch syncs
    /// only the new one, yet answers for every record appended before it.
    pub(super) fn rotate(&self) -> Result<u64> {
        self.check()?;
        let mut current = self.current()?;
        // Without its zeros: only the newest file may end in anything but a whole record.
        (current.file.set_len(current.bytes))
            .and_then(|()| current.file.sync_data())
            .map_err(|e| {
                self.fail(io(
                    "cannot cut and sync",
                    &self.dir.join(file_name(current.number)),
                )(e))
            })?;
        // If the next file cannot be made, appends go on here, past the records.
        current.zeroed = current.bytes;
        let number = current.number + 1;
        let file = create(&self.dir, number)?;
        let old = current.number;
        let path = self.dir.join(file_name(number));
        *current = Current::new(file, number, &path, self.try_direct);
        Ok(old)
    }

    /// Deletes the files up to `number`.
    pub(super) fn remove_through(&self, number: u64) -> Result<()> {
        let old: Vec<u64> = list(&self.dir)?
            .into_iter()
            .filter(|n| *n <= number)
            .collect();
        remove(&self.dir, &old)
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

/// Creates log file `number` with its magic, durably (the file and its directory entry). A
/// file left from a failed attempt is replaced.
fn create(dir: &Path, number: u64) -> Result<File> {
    let path = dir.join(file_name(number));
    let made = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        file.write_all(MAGIC)?;
        file.sync_all()?;
        Ok(file)
    })();
    match made {
        Ok(file) => {
            sync_dir(dir)?;
            Ok(file)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(io("cannot create", &path)(e))
        }
    }
}

/// Deletes log files `numbers` (one already gone is fine), durably: a deleted file may hold
/// purged values, and must not come back after a power loss.
fn remove(dir: &Path, numbers: &[u64]) -> Result<()> {
    for n in numbers {
        let path = dir.join(file_name(*n));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("cannot remove", &path)(e))
            }
            _ => {}
        }
    }
    sync_dir(dir)
}

/// Makes the directory's entries (files created or removed) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("cannot sync", dir))
}

/// Transaction `seq` as one whole record (length, checksum, payload), built in one buffer:
/// a record can be as large as a whole section.
fn encode(seq: u64, writes: &Writes) -> Result<Vec<u8>> {
    let len = |b: &[u8]| {
        u32::try_from(b.len())
            .map(u32::to_le_bytes)
            .map_err(|_| Error::invalid("a value too large for the write-ahead log"))
    };
    let size: usize = writes
        .iter()
        .map(|((_, k), v)| 10 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    // The length and the checksum go first, once the payload is known.
    let mut out = Vec::with_capacity(16 + size);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&seq.to_le_bytes());
    for ((tree, key), value) in writes {
        out.push(*tree as u8);
        out.extend_from_slice(&len(key)?);
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&len(v)?);
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    let payload_len = u32::try_from(out.len() - 8)
        .map_err(|_| Error::invalid("a transaction too large for the write-ahead log"))?;
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&payload_len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
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
    let mut writes = Writes::new();
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
        writes.insert((tree, key), value);
    }
    Some((seq, writes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(n: u8) -> Writes {
        Writes::from([
            ((Tree::Chunks, vec![n; 3]), Some(vec![n; 300])),
            ((Tree::Meta, b"k".to_vec()), None),
        ])
    }

    /// A log in `dir` appending directly (where the filesystem allows it, as it must then) or
    /// through the page cache.
    fn start(dir: &Path, direct: bool) -> Wal {
        let wal = Wal::start_with(dir, &[], direct).unwrap();
        assert_eq!(wal.is_direct(), direct && direct_io_works(dir));
        wal
    }

    /// Whether a file in `dir` can be opened and written for direct I/O.
    fn direct_io_works(dir: &Path) -> bool {
        let probe = dir.join("probe");
        std::fs::write(&probe, b"").unwrap();
        let works = Direct::open(&probe).is_some();
        std::fs::remove_file(probe).unwrap();
        works
    }

    #[test]
    fn both_ways_of_appending_write_the_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (direct, buffered) = (start(a.path(), true), start(b.path(), false));
        // Records of 27 bytes and their value: ending on the first block's end, on the
        // second's, inside one, spanning several, passing the zeros written ahead (a whole
        // section's worth), and small again.
        let sizes = [4_061, 4_069, 300, 5, 8_192, 200_000, 70_000, 1, 3_000];
        let mut ends = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let w = Writes::from([((Tree::Chunks, vec![i as u8]), Some(vec![i as u8 + 1; *n]))]);
            for wal in [&direct, &buffered] {
                wal.append(i as u64 + 1, &w).unwrap();
                wal.sync().unwrap();
            }
            assert_eq!(direct.bytes(), buffered.bytes());
            ends.push(direct.bytes());
            let read = |d: &Path| std::fs::read(d.join(file_name(1))).unwrap();
            let (x, y) = (read(a.path()), read(b.path()));
            let end = direct.bytes() as usize;
            assert_eq!(x[..end], y[..end], "after record {i}");
            assert!(x[end..].iter().all(|b| *b == 0) && x.len() >= end);
        }
        assert_eq!(
            ends[..2],
            [BLOCK, 2 * BLOCK],
            "records ending on a block's end"
        );
        assert_eq!(direct.is_direct(), direct_io_works(a.path()));
        let (records, _) = Wal::read(a.path()).unwrap();
        assert_eq!(records.len(), sizes.len());
        // Moving on and appending again, both ways.
        for wal in [&direct, &buffered] {
            wal.rotate().unwrap();
            wal.append(99, &writes(9)).unwrap();
            wal.sync().unwrap();
        }
        for d in [a.path(), b.path()] {
            let (records, files) = Wal::read(d).unwrap();
            assert_eq!((records.len(), files), (sizes.len() + 1, vec![1, 2]));
        }
        assert_eq!(direct.is_direct(), direct_io_works(a.path()));
    }

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_dropped() {
        for direct in [true, false] {
            records_come_back_in_order_and_a_torn_tail_is_dropped_(direct);
        }
    }

    fn records_come_back_in_order_and_a_torn_tail_is_dropped_(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let wal = start(dir.path(), direct);
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
        let cut = wal.bytes() as usize - 100;
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
    fn appends_overwrite_zeros_written_ahead_and_the_zeros_are_not_a_torn_tail() {
        for direct in [true, false] {
            appends_overwrite_zeros_written_ahead_and_the_zeros_are_not_a_torn_tail_(direct);
        }
    }

    fn appends_overwrite_zeros_written_ahead_and_the_zeros_are_not_a_torn_tail_(direct: bool) {
        let dir = tempfile::tempdir().unwrap();
        let wal = start(dir.path(), direct);
        let direct = wal.is_direct();
        let path = dir.path().join(file_name(1));
        let size = || std::fs::metadata(&path).unwrap().len();
        // A new file holds its magic only (through `Direct`, zeros to its first block's end).
        let new = std::fs::read(&path).unwrap();
        assert!(new.starts_with(MAGIC) && new[MAGIC.len()..].iter().all(|b| *b == 0));
        assert_eq!(size(), if direct { BLOCK } else { MAGIC.len() as u64 });
        wal.append(1, &writes(1)).unwrap();
        let first = size();
        assert_eq!(
            first,
            if direct {
                BLOCK
            } else {
                MAGIC.len() as u64 + ZEROS_FIRST
            }
        );
        // Appends within the zeros leave the size alone.
        wal.append(2, &writes(2)).unwrap();
        assert_eq!(size(), first);
        // A record larger than the zeros left grows the file past it.
        let big = Writes::from([((Tree::Chunks, vec![3]), Some(vec![3; 200_000]))]);
        wal.append(3, &big).unwrap();
        assert!(
            size() >= wal.bytes() && size() > first,
            "{} {}",
            size(),
            wal.bytes()
        );
        for seq in 4..=20 {
            wal.append(seq, &writes(seq as u8)).unwrap();
        }
        wal.sync().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() as u64 > wal.bytes(), "the file ends in zeros");
        assert!(bytes[wal.bytes() as usize..].iter().all(|b| *b == 0));
        let (records, _) = Wal::read(dir.path()).unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.0).collect();
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
        assert_eq!(records[2].1, big);
        // A torn append over the zeros is still dropped (and only it).
        let mut torn = bytes.clone();
        let end = wal.bytes() as usize;
        torn[end..end + 30].copy_from_slice(&encode(21, &writes(21)).unwrap()[..30]);
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(Wal::read(dir.path()).unwrap().0.len(), 20);
        std::fs::write(&path, &bytes).unwrap();
        // Moving on cuts the file to its records, and it reads whole as an older file.
        wal.rotate().unwrap();
        assert_eq!(size(), end as u64, "the zeros are gone");
        let (records, files) = Wal::read(dir.path()).unwrap();
        assert_eq!((records.len(), files), (20, vec![1, 2]));
    }

    #[test]
    fn damage_before_the_newest_file_s_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), &[]).unwrap();
        wal.append(1, &writes(1)).unwrap();
        wal.rotate().unwrap();
        wal.append(2, &writes(2)).unwrap();
        let path = dir.path().join(file_name(1));
        let whole = std::fs::read(&path).unwrap();
        assert_eq!(Wal::read(dir.path()).unwrap().0.len(), 2);
        let refused = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let e = Wal::read(dir.path()).unwrap_err().to_string();
            assert!(e.contains("damaged"), "{e}");
        };
        // A flipped byte in the older file's record.
        let mut flipped = whole.clone();
        flipped[MAGIC.len() + 20] ^= 1;
        refused(&flipped);
        // Its record zeroed (lost blocks): an older file has no zeros written ahead.
        let mut zeroed = whole.clone();
        zeroed[MAGIC.len()..].fill(0);
        refused(&zeroed);
        refused(&vec![0; whole.len()]);
        // Zeros after its record.
        let mut padded = whole.clone();
        padded.extend_from_slice(&[0; 64]);
        refused(&padded);
    }

    #[test]
    fn after_a_failed_append_nothing_more_is_logged_or_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), &[]).unwrap();
        wal.append(1, &writes(1)).unwrap();
        wal.fail(Error::internal("a full disk"));
        assert!(wal.append(2, &writes(2)).is_err());
        assert!(wal.sync().is_err());
        assert!(wal.rotate().is_err());
        assert_eq!(Wal::read(dir.path()).unwrap().0.len(), 1);
    }

    #[test]
    fn a_log_that_cannot_move_on_keeps_appending_over_zeros() {
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let wal = start(dir.path(), direct);
            wal.append(1, &writes(1)).unwrap();
            // The next file's name is taken: the log cuts its zeros, then cannot move on.
            let next = dir.path().join(file_name(2));
            std::fs::create_dir(&next).unwrap();
            assert!(wal.rotate().is_err());
            let path = dir.path().join(file_name(1));
            let size = || std::fs::metadata(&path).unwrap().len();
            assert_eq!(size(), wal.bytes(), "cut to its records");
            // Appends go on in the same file: the first grows it by a step of zeros, the
            // next overwrite them (not a file that grows, and syncs its size, at each one).
            wal.append(2, &writes(2)).unwrap();
            let grown = size();
            assert!(grown > wal.bytes(), "direct {direct}: {grown}");
            wal.append(3, &writes(3)).unwrap();
            assert_eq!(size(), grown, "direct {direct}");
            wal.sync().unwrap();
            std::fs::remove_dir(next).unwrap();
            let seqs: Vec<u64> = Wal::read(dir.path())
                .unwrap()
                .0
                .iter()
                .map(|r| r.0)
                .collect();
            assert_eq!(seqs, [1, 2, 3]);
        }
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
