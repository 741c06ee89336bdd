//! Block cache: decoded blocks in memory (moka, weighed by bytes) and, when
//! a cache directory is given, their encoded form on local disk.
//!
//! Keys are object keys, which name immutable blocks, so an entry is never
//! stale and the disk cache survives restarts. Every fetch goes through
//! `get_with`, which lets one task fetch a block while every other reader of
//! the same block waits for that result (single-flight). Disk entries keep
//! the block envelope, so they are checksummed again on every read; a corrupt
//! entry is dropped and the block fetched anew.
//!
//! Disk entries hold plaintext of files whatever their modes, so the cache
//! is private to the daemon's user: directories 0700, files 0600 (a tree an
//! older version left looser is tightened on open). Each entry starts with
//! the xxh3 of its key: the CRCs prove an entry is some intact block, the
//! key hash proves it is this one, so a valid entry of another block copied
//! over this one's file is dropped, never served.
//!
//! Whole-block entries are written and read with O_DIRECT where the cache's
//! file system takes it: the bytes go between the device and our own
//! resident buffers. Through the page cache each entry needs fresh pages,
//! and on a VM whose free pages go back to the host (free page reporting)
//! touching them cost more than half of the daemon's CPU on a cold read
//! (profile in BENCHMARKS.md, "Read path"); the page cache would also hold a
//! second copy of what the memory cache and the kernel's cache of the file
//! hold already.

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::pool::BufPool;
use crate::{codec, metrics};

/// Modes of the disk cache's directories and files.
pub(crate) const DIR_MODE: u32 = 0o700;
pub(crate) const FILE_MODE: u32 = 0o600;

/// Every disk entry starts with this tag and the xxh3 of its key; the block
/// (framed raw form) follows. Entries of the earlier, unbound format lack
/// the tag and are dropped on first use like any other mismatch.
const ENTRY_TAG: [u8; 4] = *b"VCB1";
const ENTRY_HEAD: usize = 12;

/// Alignment of O_DIRECT offsets, lengths and buffers (the largest logical
/// block size in use).
const DIRECT_ALIGN: usize = 4096;
/// Entries smaller than this go through the page cache: their copy costs
/// little and a pooled buffer would be wasted on them.
const DIRECT_MIN: usize = 256 << 10;

fn round_up(n: usize) -> usize {
    n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

fn direct_aligned(b: &[u8]) -> bool {
    (b.as_ptr() as usize) % DIRECT_ALIGN == 0
}

fn entry_head(key: &str) -> [u8; ENTRY_HEAD] {
    let mut h = [0u8; ENTRY_HEAD];
    h[..4].copy_from_slice(&ENTRY_TAG);
    h[4..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(key.as_bytes()).to_le_bytes());
    h
}

/// Creates `dir` and any missing parents as 0700.
pub(crate) fn private_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Sets `p`'s permission bits to `mode` unless they already are.
pub(crate) fn tighten(p: &Path, md: &std::fs::Metadata, mode: u32) -> std::io::Result<()> {
    if md.permissions().mode() & 0o7777 == mode {
        return Ok(());
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Share of the file system holding `dir` that is free (1.0 when unknown).
pub(crate) fn free_share(dir: &Path) -> f64 {
    let c = match std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) {
        Ok(c) => c,
        Err(_) => return 1.0,
    };
    // SAFETY: zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return 1.0;
    }
    st.f_bavail as f64 / st.f_blocks as f64
}

pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    /// Keep at least this share of the cache file system free.
    free_ratio: f64,
    used: AtomicU64,
    clock: AtomicU64,
    /// File name -> (size, last use). Eviction drops the least recently used.
    index: std::sync::Mutex<std::collections::HashMap<PathBuf, (u64, u64)>>,
    /// O_DIRECT works here (cleared at the first EINVAL: the file system
    /// takes none).
    direct: AtomicBool,
    /// Aligned buffers an entry is assembled in for an O_DIRECT write.
    staging: std::sync::Mutex<Option<BufPool>>,
    /// Entries written and read with O_DIRECT.
    direct_writes: AtomicU64,
    direct_reads: AtomicU64,
}

impl DiskCache {
    /// Opens (or creates) the cache at `dir`, indexing the entries already
    /// there. The tree is made private first: an entry that cannot be
    /// closed down is removed, and a directory that cannot fails the open.
    pub fn open(dir: &Path, capacity: u64, free_ratio: f64) -> std::io::Result<DiskCache> {
        let blocks = dir.join("blocks");
        private_dir_all(&blocks)?;
        tighten(dir, &std::fs::metadata(dir)?, DIR_MODE)?;
        tighten(&blocks, &std::fs::metadata(&blocks)?, DIR_MODE)?;
        let mut used = 0;
        let mut index = std::collections::HashMap::new();
        for sub in std::fs::read_dir(&blocks)?.flatten() {
            let Ok(md) = sub.metadata() else { continue };
            if !md.is_dir() {
                continue;
            }
            tighten(&sub.path(), &md, DIR_MODE)?;
            let Ok(files) = std::fs::read_dir(sub.path()) else {
                continue;
            };
            for f in files.flatten() {
                let p = f.path();
                let is_tmp = p
                    .extension()
                    .is_some_and(|e| e.to_string_lossy().starts_with("tmp"));
                if is_tmp {
                    let _ = std::fs::remove_file(&p); // left by a crash
                    continue;
                }
                // DirEntry::metadata does not follow symlinks: only regular
                // files are entries (and chmod then cannot reach elsewhere).
                let Ok(md) = f.metadata() else { continue };
                if !md.is_file() {
                    continue;
                }
                if tighten(&p, &md, FILE_MODE).is_err() {
                    let _ = std::fs::remove_file(&p);
                    continue;
                }
                used += md.len();
                index.insert(p, (md.len(), 0));
            }
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            free_ratio,
            used: AtomicU64::new(used),
            clock: AtomicU64::new(1),
            index: std::sync::Mutex::new(index),
            direct: AtomicBool::new(true),
            staging: std::sync::Mutex::new(None),
            direct_writes: AtomicU64::new(0),
            direct_reads: AtomicU64::new(0),
        })
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn touch(&self, p: &Path, len: u64) -> Option<u64> {
        let t = self.clock.fetch_add(1, Ordering::Relaxed);
        self.index
            .lock()
            .ok()
            .and_then(|mut i| i.insert(p.to_path_buf(), (len, t)).map(|(l, _)| l))
    }

    fn path(&self, key: &str) -> PathBuf {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        let name = key.replace('/', "_");
        self.dir
            .join("blocks")
            .join(format!("{:02x}", h & 0xff))
            .join(name)
    }

    /// Takes `p` out of the index and its bytes out of `used` (no disk
    /// I/O); false when it was not indexed.
    fn unindex(&self, p: &Path) -> bool {
        let Ok(mut i) = self.index.lock() else {
            return false;
        };
        let Some((len, _)) = i.remove(p) else {
            return false;
        };
        self.used.fetch_sub(len.min(self.used()), Ordering::Relaxed);
        true
    }

    /// Removes an entry that must not be served.
    fn drop_entry(&self, key: &str, p: &Path, why: &str) {
        tracing::warn!(key, error = why, "dropping corrupt disk cache entry");
        let _ = std::fs::remove_file(p);
        self.unindex(p);
    }

    /// Checks that an entry starting with `head` was written for `key`, and
    /// drops it if not. Entries of the earlier format (no tag) go quietly:
    /// after an upgrade every one of them would warn once.
    fn bound_to(&self, key: &str, p: &Path, head: &[u8]) -> bool {
        let want = entry_head(key);
        if head.get(..ENTRY_HEAD) == Some(&want[..]) {
            return true;
        }
        if head.get(..ENTRY_TAG.len()) == Some(&ENTRY_TAG[..]) {
            self.drop_entry(key, p, "the entry was written for another key");
        } else {
            tracing::debug!(key, "dropping a disk cache entry of the earlier format");
            let _ = std::fs::remove_file(p);
            self.unindex(p);
        }
        false
    }

    /// Takes `key`'s entry out of the index at once (no I/O) and returns
    /// its file for the caller to unlink off the async workers, or None
    /// when the entry was not here.
    fn unindex_key(&self, key: &str) -> Option<PathBuf> {
        let p = self.path(key);
        self.unindex(&p).then_some(p)
    }

    /// The block `key` from its entry, read into a pooled buffer; a raw
    /// entry is checked in place and handed on without a copy.
    fn load(&self, key: &str, pool: &BufPool) -> Option<Bytes> {
        use std::io::Read;
        let p = self.path(key);
        let mut f = std::fs::File::open(&p).ok()?;
        let len = f.metadata().ok()?.len() as usize;
        let buf = match self.read_direct(&p, len, pool) {
            Some(Ok(buf)) => buf,
            Some(Err(e)) => {
                tracing::debug!(key, error = %e, "cannot read a disk cache entry");
                return None;
            }
            None => {
                let mut buf = pool.take(len);
                f.read_exact(buf.as_mut()).ok()?;
                buf
            }
        };
        let data = buf.freeze();
        if !self.bound_to(key, &p, &data) {
            return None;
        }
        match decode_block(pool, data.slice(ENTRY_HEAD..), raw_len_of(key)) {
            Ok(raw) => {
                self.touch(&p, len as u64);
                Some(raw)
            }
            Err(e) => {
                self.drop_entry(key, &p, &e.to_string());
                None
            }
        }
    }

    /// The `len`-byte entry at `p` read with O_DIRECT into a pooled buffer;
    /// None when that does not apply (small entry, no aligned buffer, or a
    /// file system without O_DIRECT): read it through the page cache.
    fn read_direct(
        &self,
        p: &Path,
        len: usize,
        pool: &BufPool,
    ) -> Option<std::io::Result<crate::pool::PoolBuf>> {
        use std::os::unix::fs::FileExt;
        if len < DIRECT_MIN || !self.direct.load(Ordering::Relaxed) {
            return None;
        }
        let mut buf = pool.take(round_up(len));
        if !direct_aligned(buf.as_ref()) {
            return None;
        }
        let read = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
            .and_then(|f| {
                let dst = buf.as_mut();
                let mut got = 0;
                while got < len {
                    match f.read_at(&mut dst[got..], got as u64)? {
                        0 => break,
                        n => got += n,
                    }
                }
                Ok(got)
            });
        match read {
            Ok(got) if got == len => {
                buf.truncate(len);
                self.direct_reads.fetch_add(1, Ordering::Relaxed);
                Some(Ok(buf))
            }
            Ok(got) => Some(Err(std::io::Error::other(format!(
                "entry is {got} bytes, expected {len}"
            )))),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.no_direct(&e);
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The cache's file system refused O_DIRECT: use the page cache from now.
    fn no_direct(&self, e: &std::io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            tracing::info!(dir = %self.dir.display(), error = %e,
                "the disk cache's file system takes no O_DIRECT; entries go through the page cache");
        }
    }

    /// An aligned buffer of `len` bytes to assemble an entry in, or None.
    fn staging_buf(&self, len: usize) -> Option<crate::pool::PoolBuf> {
        let pool = {
            let mut s = self.staging.lock().ok()?;
            if s.as_ref().is_none_or(|p| p.capacity() < len) {
                // Room for the largest entry seen, rounded to 1 MiB; two
                // idle buffers at most (one writer thread, one fill).
                *s = Some(BufPool::new(len.div_ceil(1 << 20) << 20, 2));
            }
            s.clone()?
        };
        let buf = pool.take(len);
        direct_aligned(buf.as_ref()).then_some(buf)
    }

    /// Writes the entry (head, then `parts`) to the new file `tmp` with
    /// O_DIRECT; None when that does not apply (see `read_direct`).
    fn write_direct(
        &self,
        tmp: &Path,
        head: &[u8],
        parts: &[&[u8]],
        len: usize,
    ) -> Option<std::io::Result<()>> {
        use std::os::unix::fs::FileExt;
        if len < DIRECT_MIN || !self.direct.load(Ordering::Relaxed) {
            return None;
        }
        let padded = round_up(len);
        let mut buf = self.staging_buf(padded)?;
        let dst = buf.as_mut();
        let mut at = 0;
        for part in std::iter::once(head).chain(parts.iter().copied()) {
            dst[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        dst[at..].fill(0);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .custom_flags(libc::O_DIRECT)
            .open(tmp)
            .and_then(|f| {
                f.write_all_at(dst, 0)?;
                // The padding goes: the entry's length is the file's.
                f.set_len(len as u64)
            });
        match written {
            Ok(()) => {
                self.direct_writes.fetch_add(1, Ordering::Relaxed);
                Some(Ok(()))
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(tmp);
                self.no_direct(&e);
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// (entries written, entries read) with O_DIRECT so far.
    pub fn direct_counts(&self) -> (u64, u64) {
        (
            self.direct_writes.load(Ordering::Relaxed),
            self.direct_reads.load(Ordering::Relaxed),
        )
    }

    /// Raw bytes [off, off+len) of a cached block, reading only the frames
    /// that hold them (each checked by its CRC). None when the block is not
    /// here, is of the first format (no frames), or is corrupt (then dropped).
    pub fn load_range(&self, key: &str, raw_len: usize, off: usize, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let p = self.path(key);
        let f = std::fs::File::open(&p).ok()?;
        let size = f.metadata().ok()?.len() as usize;
        let mut head = vec![0u8; (ENTRY_HEAD + codec::Layout::prefix_len(raw_len)).min(size)];
        f.read_exact_at(&mut head, 0).ok()?;
        if !self.bound_to(key, &p, &head) {
            return None;
        }
        let result = codec::Layout::parse(&head[ENTRY_HEAD..]).and_then(|layout| {
            let Some(layout) = layout else {
                return Ok(None);
            };
            let frames = layout.frames_for(off, len);
            if frames.is_empty() {
                return Ok(None);
            }
            let range = layout.stored_range(&frames);
            let mut stored = vec![0u8; range.len()];
            f.read_exact_at(&mut stored, (ENTRY_HEAD + range.start) as u64)
                .map_err(|e| codec::CodecError::Corrupt(e.to_string()))?;
            let raw = layout.decode_frames(frames.clone(), &stored)?;
            let at = off - frames.start * layout.frame_size;
            Ok(raw.get(at..at + len).map(|s| s.to_vec()))
        });
        match result {
            Ok(Some(raw)) => {
                self.touch(&p, size as u64);
                metrics::DISK_CACHE_HITS.add(1);
                Some(raw)
            }
            Ok(None) => None,
            Err(e) => {
                self.drop_entry(key, &p, &e.to_string());
                None
            }
        }
    }

    /// Share of the cache file system that is free.
    fn free_share(&self) -> f64 {
        free_share(&self.dir)
    }

    /// Keeps a decoded block as a raw framed block (header and table, then
    /// the bytes as they are: no copy of the block is made), after the
    /// entry header that binds it to `key`. The file is 0600 from birth.
    fn store(&self, key: &str, raw: &[u8]) -> bool {
        let head = codec::raw_head(raw);
        self.store_parts(key, &[&head, raw])
    }

    /// Keeps a stored block exactly as it came from the store (already
    /// checked): for a block stored raw that is the very entry `store`
    /// would write, without computing its frame CRCs again.
    fn store_verbatim(&self, key: &str, stored: &[u8]) -> bool {
        self.store_parts(key, &[stored])
    }

    fn store_parts(&self, key: &str, parts: &[&[u8]]) -> bool {
        let len = (ENTRY_HEAD + parts.iter().map(|p| p.len()).sum::<usize>()) as u64;
        // Never overshoot: eviction runs in the background, this just refuses.
        if self.used() + len > self.capacity || self.free_share() < self.free_ratio {
            return false;
        }
        let p = self.path(key);
        let Some(parent) = p.parent() else {
            return false;
        };
        if private_dir_all(parent).is_err() {
            return false;
        }
        // Temp file + rename: a crash never leaves a half-written entry
        // under the real name. No fsync: an entry a crash cut short fails
        // its CRCs and is dropped on first use, like any damaged entry.
        let tmp = p.with_extension(format!("tmp{}", rand::random::<u32>()));
        let head = entry_head(key);
        let written = match self.write_direct(&tmp, &head, parts, len as usize) {
            Some(r) => r,
            None => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(&head)?;
                    for part in parts {
                        f.write_all(part)?;
                    }
                    Ok(())
                }),
        };
        if written.is_ok() && std::fs::rename(&tmp, &p).is_ok() {
            let old = self.touch(&p, len).unwrap_or(0);
            self.used.fetch_add(len, Ordering::Relaxed);
            self.used.fetch_sub(old.min(self.used()), Ordering::Relaxed);
            true
        } else {
            let _ = std::fs::remove_file(&tmp);
            false
        }
    }

    /// Whether `key` has an entry (by the index: no I/O).
    pub fn has(&self, key: &str) -> bool {
        let p = self.path(key);
        self.index.lock().is_ok_and(|i| i.contains_key(&p))
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Entries indexed (for the metrics).
    pub fn entries(&self) -> usize {
        self.index.lock().map(|i| i.len()).unwrap_or(0)
    }

    /// Whether an entry of `len` bytes would be taken now.
    pub fn has_room(&self, len: u64) -> bool {
        self.used() + len <= self.capacity && self.free_share() >= self.free_ratio
    }

    /// Drops least recently used entries until the cache is under 90 % of
    /// its capacity and the file system has its free share back. Runs from a
    /// background task, never on the read path. Returns bytes removed.
    pub fn evict(&self) -> u64 {
        let over_size = self.used() > self.capacity / 20 * 19;
        let low_space = self.free_share() < self.free_ratio;
        if !over_size && !low_space {
            return 0;
        }
        let mut entries: Vec<(PathBuf, u64, u64)> = match self.index.lock() {
            Ok(i) => i.iter().map(|(p, (l, t))| (p.clone(), *l, *t)).collect(),
            Err(_) => return 0,
        };
        entries.sort_by_key(|e| e.2);
        let target = self.capacity / 10 * 9;
        let mut removed = 0;
        for (p, len, _) in entries {
            let low_space = self.free_share() < self.free_ratio;
            if self.used() <= target && !low_space {
                break;
            }
            if std::fs::remove_file(&p).is_ok() || !p.exists() {
                self.unindex(&p);
                removed += len;
            }
        }
        removed
    }
}

/// What a queued disk-cache write keeps: a decoded block (its raw framed
/// form is written), or a stored block already checked, written as it came.
enum Entry {
    Raw(Bytes),
    Verbatim(Bytes),
}

impl Entry {
    fn len(&self) -> u64 {
        match self {
            Entry::Raw(b) | Entry::Verbatim(b) => b.len() as u64,
        }
    }
}

/// Which bound a queued write counts against.
#[derive(Clone, Copy)]
enum Class {
    /// Blocks a read fetched (they are in the memory cache too, mostly).
    Read = 0,
    /// Blocks this node wrote (outside the write budget once uploaded).
    Written = 1,
}

struct Job {
    key: String,
    entry: Entry,
    class: Class,
}

/// Bytes queued per class, and jobs not finished yet.
#[derive(Default)]
struct Queued {
    bytes: [u64; 2],
    jobs: usize,
}

/// Disk-cache writes off the read path: one thread writes queued blocks in
/// order. The queue is bounded in bytes per class: a block that does not
/// fit is not cached on disk (counted in vecfs_disk_cache_write_dropped_total)
/// rather than slowing the read that fetched it or piling up in memory.
/// Losing a write costs a later fetch, never wrong bytes: an entry is
/// only ever complete or absent under its name.
struct DiskWriter {
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    queued: Arc<(std::sync::Mutex<Queued>, std::sync::Condvar)>,
    limits: [u64; 2],
}

impl DiskWriter {
    fn start(d: Arc<DiskCache>, limits: [u64; 2]) -> DiskWriter {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let queued = Arc::new((
            std::sync::Mutex::new(Queued::default()),
            std::sync::Condvar::new(),
        ));
        let q = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("vecfs-disk-cache".into())
            .spawn(move || {
                for job in rx {
                    let ok = match &job.entry {
                        Entry::Raw(raw) => d.store(&job.key, raw),
                        Entry::Verbatim(stored) => d.store_verbatim(&job.key, stored),
                    };
                    if ok {
                        metrics::DISK_CACHE_WRITES.add(1);
                    } else {
                        metrics::DISK_CACHE_WRITE_DROPS.add(1);
                    }
                    let len = job.entry.len();
                    drop(job.entry);
                    let (m, cv) = &*q;
                    if let Ok(mut s) = m.lock() {
                        let c = job.class as usize;
                        s.bytes[c] = s.bytes[c].saturating_sub(len);
                        s.jobs = s.jobs.saturating_sub(1);
                    }
                    cv.notify_all();
                }
            });
        let tx = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the disk cache writer; blocks are cached in memory only");
                None
            }
        };
        DiskWriter {
            tx: std::sync::Mutex::new(tx),
            queued,
            limits,
        }
    }

    /// Queues a write unless its class's queue is full. Never waits.
    fn push(&self, key: String, entry: Entry, class: Class) -> bool {
        let len = entry.len();
        let c = class as usize;
        {
            let Ok(mut s) = self.queued.0.lock() else {
                return false;
            };
            // One block always fits, however large.
            if s.bytes[c] > 0 && s.bytes[c] + len > self.limits[c] {
                metrics::DISK_CACHE_WRITE_DROPS.add(1);
                return false;
            }
            s.bytes[c] += len;
            s.jobs += 1;
        }
        let sent = self
            .tx
            .lock()
            .ok()
            .and_then(|t| {
                t.as_ref()
                    .map(|t| t.send(Job { key, entry, class }).is_ok())
            })
            .unwrap_or(false);
        if !sent {
            if let Ok(mut s) = self.queued.0.lock() {
                s.bytes[c] = s.bytes[c].saturating_sub(len);
                s.jobs = s.jobs.saturating_sub(1);
            }
            metrics::DISK_CACHE_WRITE_DROPS.add(1);
        }
        sent
    }

    /// Waits (blocking) until every queued write is done or `limit` passed;
    /// true when the queue is empty.
    fn drain(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let (m, cv) = &*self.queued;
        let Ok(mut s) = m.lock() else {
            return false;
        };
        while s.jobs > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            s = match cv.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(_) => return false,
            };
        }
        true
    }
}

/// Decodes a stored block into shared raw bytes, every CRC checked: a raw
/// block is checked in place (its bytes stay where they came, a GET body
/// or a disk entry: no copy), a compressed one is decoded into a pooled
/// buffer. `expect`: the raw length the block's key names, checked before
/// anything is allocated for it.
pub fn decode_block(pool: &BufPool, stored: Bytes, expect: Option<usize>) -> Result<Bytes> {
    if let Some(raw) = codec::raw_in_place(&stored) {
        let raw = raw?;
        if expect.is_some_and(|n| n != raw.len()) {
            return Err(Error::corrupt(format!(
                "block of {} bytes where its key names {expect:?}",
                raw.len()
            )));
        }
        return Ok(raw);
    }
    let n = codec::decoded_len(&stored)?;
    if expect.is_some_and(|e| e != n) {
        return Err(Error::corrupt(format!(
            "block header names {n} bytes where its key names {expect:?}"
        )));
    }
    let mut buf = pool.take(n);
    codec::decode_into(&stored, buf.as_mut())?;
    Ok(buf.freeze())
}

/// The raw length a block key ends in (`..._{id}_{index}_{len}`).
pub(crate) fn raw_len_of(key: &str) -> Option<usize> {
    if !key.contains("/chunks/") {
        return None;
    }
    key.rsplit('_').next().and_then(|l| l.parse().ok())
}

/// How many 64 KiB pieces (`key@N`, see DataStore::read_piece) a block may
/// have in memory. Block keys end in the raw block length
/// (`..._{id}_{index}_{len}`, object.rs); for any other key every piece a
/// block of the largest size (16 MiB) could have is dropped. Too few only
/// leaves dead pieces for the memory cache to age out: keys are never reused.
fn pieces_of(key: &str) -> usize {
    const LARGEST_BLOCK: usize = 16 << 20;
    key.rsplit('_')
        .next()
        .and_then(|len| len.parse::<usize>().ok())
        .filter(|len| *len <= LARGEST_BLOCK)
        .unwrap_or(LARGEST_BLOCK)
        .div_ceil(codec::MIN_FRAME)
}

/// What a block fetch hands the cache: the stored block (decoded and
/// checked here) or raw bytes already checked (a block put together from
/// the frames this node already had and ranged GETs of the others).
pub enum Fetched {
    Stored(Bytes),
    Raw(Bytes),
}

pub struct BlockCache {
    mem: moka::future::Cache<String, Bytes>,
    disk: Option<Arc<DiskCache>>,
    /// Background disk-cache writes (None without a disk cache).
    writer: Option<DiskWriter>,
    /// Buffers for blocks coming in (GET bodies, decoded blocks, disk
    /// entries), back in the pool once the memory cache lets go of them.
    pool: BufPool,
    /// Misses since moka last caught up with its evictions.
    misses: AtomicU64,
}

/// Bytes of disk-cache writes that may wait, per class: blocks read (shared
/// with the memory cache while they stay there: a cold read must fill the
/// disk cache, so room for a burst, half the memory cache when that is
/// more) and blocks written here (their memory is outside the write budget
/// once uploaded, so less). The writer thread keeps up with about
/// 150-400 MiB/s on the 2-core test machine (the kernel's copy into the
/// page cache is most of it); a faster cold read loses some disk writes.
const READ_QUEUE: u64 = 96 << 20;
const WRITTEN_QUEUE: u64 = 64 << 20;

impl BlockCache {
    pub fn new(mem_bytes: u64, disk: Option<DiskCache>) -> BlockCache {
        let mem = moka::future::Cache::builder()
            .weigher(|_k: &String, v: &Bytes| v.len().min(u32::MAX as usize) as u32)
            .max_capacity(mem_bytes)
            .build();
        let disk = disk.map(Arc::new);
        BlockCache {
            mem,
            writer: disk
                .clone()
                .map(|d| DiskWriter::start(d, [READ_QUEUE.max(mem_bytes / 2), WRITTEN_QUEUE])),
            disk,
            pool: BufPool::for_blocks(4 << 20),
            misses: AtomicU64::new(0),
        }
    }

    /// Sizes the block buffers for the volume's block size.
    pub fn with_block_size(mut self, block_size: usize) -> BlockCache {
        self.pool = BufPool::for_blocks(block_size);
        self
    }

    pub fn pool(&self) -> &BufPool {
        &self.pool
    }

    /// Returns the decoded block, fetching it (once, however many ask) with
    /// `fetch`, which yields the encoded block.
    pub async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched>>,
    {
        if let Some(hit) = self.mem.get(key).await {
            metrics::MEM_CACHE_HITS.add(1);
            return Ok(hit);
        }
        let disk = self.disk.clone();
        let pool = self.pool.clone();
        let k = key.to_string();
        let got = self
            .mem
            .try_get_with(key.to_string(), async move {
                if let Some(d) = disk.clone() {
                    let (k2, p2) = (k.clone(), pool.clone());
                    if let Ok(Some(raw)) =
                        tokio::task::spawn_blocking(move || d.load(&k2, &p2)).await
                    {
                        metrics::DISK_CACHE_HITS.add(1);
                        return Ok(raw);
                    }
                }
                let (raw, entry) = match fetch().await? {
                    Fetched::Raw(raw) => (raw.clone(), Entry::Raw(raw)),
                    Fetched::Stored(stored) => {
                        let k2 = k.clone();
                        tokio::task::spawn_blocking(move || {
                            let raw = decode_block(&pool, stored.clone(), raw_len_of(&k2))
                                .map_err(|e| e.context(format!("block {k2}")))?;
                            // A block stored raw is its own disk entry:
                            // written as it came, no CRCs computed again.
                            let entry = if codec::is_plain_raw(&stored) {
                                Entry::Verbatim(stored)
                            } else {
                                Entry::Raw(raw.clone())
                            };
                            Ok::<_, Error>((raw, entry))
                        })
                        .await??
                    }
                };
                if disk.is_some() {
                    if let Some(w) = &self.writer {
                        w.push(k, entry, Class::Read);
                    }
                }
                Ok::<Bytes, Error>(raw)
            })
            .await
            .map_err(|e: Arc<Error>| (*e).clone());
        // moka evicts lazily: a fast sequential reader (4 MiB per miss) would
        // run the cache hundreds of MiB past its size before it catches up.
        if self.misses.fetch_add(1, Ordering::Relaxed) % 4 == 3 {
            self.mem.run_pending_tasks().await;
        }
        got
    }

    /// Waits (off the async workers) until the background disk-cache
    /// writes queued so far are done, at most `limit`: an unmount keeps
    /// what a read just fetched. True when none is left.
    pub async fn drain_disk_writes(self: &Arc<Self>, limit: std::time::Duration) -> bool {
        if self.writer.is_none() {
            return true;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.writer.as_ref().is_none_or(|w| w.drain(limit)))
            .await
            .unwrap_or(false)
    }

    /// Remembers a block just written, so the writer's own reads stay
    /// local: on disk when there is a disk cache (a writer streaming a
    /// segment out would otherwise fill the memory cache with blocks it
    /// never reads, and push the daemon's RSS past its budgets), else in
    /// memory.
    pub async fn insert_written(&self, key: &str, raw: Bytes) {
        match &self.writer {
            Some(w) => {
                w.push(key.to_string(), Entry::Raw(raw), Class::Written);
            }
            None => {
                self.mem.insert(key.to_string(), raw).await;
                // moka evicts lazily; a fast writer would run the cache far
                // past its size before it catches up, so catch up now.
                self.mem.run_pending_tasks().await;
            }
        }
    }

    /// Keeps `raw` in memory only (pieces of blocks read at random).
    pub async fn insert_mem(&self, key: &str, raw: Bytes) {
        self.mem.insert(key.to_string(), raw).await;
    }

    /// Drops a block no file uses any more (its slice was replaced or
    /// deleted) from memory, with the 64 KiB pieces ranged reads keep as
    /// `key@N`, and from disk. Never waits for the disk: the entry leaves
    /// the disk index at once and its file is unlinked on the blocking pool.
    /// A fetch or disk write of the block still in flight may put it back;
    /// that copy is never read again and ages out (LRU) like any other.
    pub async fn forget(&self, key: &str) {
        self.mem.invalidate(key).await;
        let mut piece = String::with_capacity(key.len() + 4);
        for p in 0..pieces_of(key) {
            use std::fmt::Write;
            piece.clear();
            let _ = write!(piece, "{key}@{p}");
            self.mem.invalidate(piece.as_str()).await;
        }
        // A block this node never cached costs no disk I/O at all.
        if let Some(p) = self.disk.as_ref().and_then(|d| d.unindex_key(key)) {
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(p);
            });
        }
    }

    /// The memory entry for `key`, made once by `init` however many ask.
    pub async fn mem_get_with<Fut>(&self, key: &str, init: Fut) -> Result<Bytes>
    where
        Fut: Future<Output = Result<Bytes>>,
    {
        self.mem
            .try_get_with(key.to_string(), init)
            .await
            .map_err(|e: Arc<Error>| (*e).clone())
    }

    pub async fn contains(&self, key: &str) -> bool {
        self.mem.contains_key(key)
    }

    /// The memory entry for `key`, if any (not counted as a hit).
    pub async fn mem_peek(&self, key: &str) -> Option<Bytes> {
        self.mem.get(key).await
    }

    /// Whether `key` is in memory or on disk (no disk I/O).
    pub fn has(&self, key: &str) -> bool {
        self.mem.contains_key(key) || self.disk.as_ref().is_some_and(|d| d.has(key))
    }

    /// Keeps a block on disk only, waiting for the write (background fills:
    /// they must not push what readers use out of memory): raw bytes in
    /// their raw framed form, or a stored block the caller has checked, as
    /// it is. False when the disk cache is missing, full or failed.
    pub async fn store_disk(&self, key: &str, block: Fetched) -> bool {
        let Some(d) = self.disk.clone() else {
            return false;
        };
        let key = key.to_string();
        tokio::task::spawn_blocking(move || match block {
            Fetched::Raw(raw) => d.store(&key, &raw),
            Fetched::Stored(stored) => d.store_verbatim(&key, &stored),
        })
        .await
        .unwrap_or(false)
    }

    /// (bytes, entries) of the memory cache, as moka last counted them.
    pub fn mem_usage(&self) -> (u64, u64) {
        (self.mem.weighted_size(), self.mem.entry_count())
    }

    pub fn mem_capacity(&self) -> u64 {
        self.mem.policy().max_capacity().unwrap_or(0)
    }

    /// The memory cache is close to full: read-ahead should back off.
    pub fn under_pressure(&self) -> bool {
        let cap = self.mem.policy().max_capacity().unwrap_or(u64::MAX);
        self.mem.weighted_size() > cap / 10 * 9
    }

    pub fn disk(&self) -> Option<Arc<DiskCache>> {
        self.disk.clone()
    }

    /// Keeps the disk cache within its bounds, every few seconds.
    pub fn spawn_evictor(&self) -> Option<tokio::task::JoinHandle<()>> {
        let d = self.disk.clone()?;
        Some(tokio::spawn(async move {
            loop {
                let d2 = d.clone();
                if let Ok(n) = tokio::task::spawn_blocking(move || d2.evict()).await {
                    if n > 0 {
                        tracing::debug!(bytes = n, "evicted from the disk cache");
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> BufPool {
        BufPool::for_blocks(1 << 20)
    }

    fn block(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn mode_of(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Every directory and file under `p`, with its permission bits.
    fn modes(p: &Path, out: &mut Vec<(PathBuf, bool, u32)>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let md = e.metadata().unwrap();
            out.push((e.path(), md.is_dir(), md.permissions().mode() & 0o7777));
            if md.is_dir() {
                modes(&e.path(), out);
            }
        }
    }

    const K1: &str = "vol/chunks/01/0/1_0_200000";
    const K2: &str = "vol/chunks/02/0/2_0_200000";

    #[test]
    fn an_entry_copied_over_another_keys_file_is_dropped_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let d = DiskCache::open(&dir.path().join("c"), 1 << 30, 0.0).unwrap();
        let (b1, b2) = (block(200_000, 1), block(200_000, 2));
        d.store(K1, &b1);
        d.store(K2, &b2);
        assert_eq!(d.load(K1, &pool()).as_deref(), Some(&b1[..]));
        assert_eq!(
            d.load_range(K2, b2.len(), 70_000, 1000).as_deref(),
            Some(&b2[70_000..71_000])
        );
        let used = d.used();

        // A valid entry of K2 under K1's name: whole and ranged loads refuse it.
        std::fs::copy(d.path(K2), d.path(K1)).unwrap();
        assert!(
            d.load(K1, &pool()).is_none(),
            "another block's entry was served"
        );
        assert!(!d.path(K1).exists(), "and it is dropped");
        assert!(d.used() < used, "and no longer counted");
        d.store(K1, &b1);
        std::fs::copy(d.path(K2), d.path(K1)).unwrap();
        assert!(d.load_range(K1, b1.len(), 70_000, 1000).is_none());
        assert!(!d.path(K1).exists());

        // An entry of the earlier format (no key header) is dropped too.
        std::fs::write(d.path(K1), codec::encode_raw(&b1)).unwrap();
        assert!(d.load(K1, &pool()).is_none());
        assert!(!d.path(K1).exists());
        // K2 itself is untouched by all this.
        assert_eq!(d.load(K2, &pool()).as_deref(), Some(&b2[..]));
    }

    #[test]
    fn a_block_stored_raw_is_its_own_entry_and_compressed_ones_load_from_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let d = DiskCache::open(&dir.path().join("c"), 1 << 30, 0.0).unwrap();
        let b1 = block(200_000, 1);
        // What a writer stores for a block that does not compress (or on a
        // volume without compression), kept as it came.
        let stored = codec::encode(&b1, codec::parse_compression("none").unwrap());
        assert!(codec::is_plain_raw(&stored));
        assert!(d.store_verbatim(K1, &stored));
        let verbatim = std::fs::read(d.path(K1)).unwrap();
        assert!(d.store(K1, &b1));
        assert_eq!(
            std::fs::read(d.path(K1)).unwrap(),
            verbatim,
            "not the same entry"
        );
        assert_eq!(d.load(K1, &pool()).as_deref(), Some(&b1[..]));

        // A compressed block decodes into a pooled buffer, reused once the
        // block is dropped; what it held before never shows.
        let p = BufPool::new(256 << 10, 2);
        let text = b"vecfs pools its block buffers ".repeat(7000);
        let packed = Bytes::from(codec::encode(
            &text,
            codec::parse_compression("lz4").unwrap(),
        ));
        assert!(!codec::is_plain_raw(&packed));
        let one = decode_block(&p, packed.clone(), Some(text.len())).unwrap();
        assert_eq!(&one[..], &text[..]);
        drop(one);
        assert_eq!(p.idle(), 1);
        let two = decode_block(&p, packed.clone(), Some(text.len())).unwrap();
        assert_eq!(&two[..], &text[..]);
        assert_eq!(p.counts(), (1, 1));
        // A length other than the key's is refused before decoding.
        assert!(decode_block(&p, packed, Some(text.len() + 1)).is_err());
    }

    /// Whether `dir`'s file system takes O_DIRECT (tmpfs may not).
    fn takes_direct(dir: &Path) -> bool {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.join("probe"))
            .is_ok()
    }

    #[test]
    fn whole_blocks_go_to_disk_and_back_with_o_direct_and_exact_lengths() {
        let dir = tempfile::tempdir().unwrap();
        let d = DiskCache::open(&dir.path().join("c"), 1 << 30, 0.0).unwrap();
        let direct = takes_direct(dir.path());
        // Lengths that are not a multiple of the alignment, stored both ways.
        let len = (1 << 20) - 4321;
        let key = format!("vol/chunks/03/0/3_0_{len}");
        let b = block(len, 3);
        assert!(d.store(&key, &b));
        let entry = std::fs::metadata(d.path(&key)).unwrap().len() as usize;
        assert_eq!(
            entry,
            ENTRY_HEAD + codec::raw_head(&b).len() + len,
            "padding left in the entry"
        );
        assert_eq!(d.load(&key, &pool()).as_deref(), Some(&b[..]));
        let key2 = format!("vol/chunks/04/0/4_0_{len}");
        let b2 = block(len, 4);
        let stored = codec::encode(&b2, codec::parse_compression("none").unwrap());
        assert!(d.store_verbatim(&key2, &stored));
        assert_eq!(
            std::fs::read(d.path(&key2)).unwrap().len(),
            ENTRY_HEAD + stored.len()
        );
        assert_eq!(d.load(&key2, &pool()).as_deref(), Some(&b2[..]));
        // A range read of a direct-written entry sees the same bytes.
        assert_eq!(
            d.load_range(&key2, len, 70_000, 1000).as_deref(),
            Some(&b2[70_000..71_000])
        );
        if direct {
            assert_eq!(d.direct_counts(), (2, 2), "O_DIRECT was not used");
        }
        // Small entries go through the page cache.
        assert!(d.store(K1, &block(200_000, 1)));
        if direct {
            assert_eq!(d.direct_counts().0, 2);
        }
        // A damaged direct-written entry is still caught by its CRCs.
        let p = d.path(&key);
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        assert!(d.load(&key, &pool()).is_none());
        assert!(!p.exists(), "the corrupt entry was kept");
    }

    #[test]
    fn the_cache_is_private_and_an_older_looser_tree_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("c");
        let d = DiskCache::open(&root, 1 << 30, 0.0).unwrap();
        d.store(K1, &block(1000, 1));
        drop(d);
        let mut all = Vec::new();
        modes(&root, &mut all);
        assert!(all.len() >= 3, "{all:?}");
        for (p, is_dir, mode) in &all {
            assert_eq!(*mode, if *is_dir { 0o700 } else { 0o600 }, "{p:?}");
        }

        // What an older version left: 0755 directories, 0644 files.
        for (p, is_dir, _) in all.iter().chain([&(root.clone(), true, 0)]) {
            let loose = if *is_dir { 0o755 } else { 0o644 };
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(loose)).unwrap();
        }
        let d = DiskCache::open(&root, 1 << 30, 0.0).unwrap();
        assert_eq!(mode_of(&root), 0o700);
        for (p, is_dir, _) in &all {
            assert_eq!(mode_of(p), if *is_dir { 0o700 } else { 0o600 }, "{p:?}");
        }
        assert!(d.used() > 1000, "entries kept");
    }

    #[test]
    fn pieces_are_counted_from_the_key() {
        assert_eq!(pieces_of(K1), 4); // 200,000 bytes: three whole pieces and a part
        assert_eq!(pieces_of("v/chunks/00/0/7_1_4194304"), 64);
        assert_eq!(pieces_of("not-a-block-key"), 256);
    }

    #[tokio::test]
    async fn forget_drops_a_block_and_its_pieces_from_memory_and_disk() {
        let dir = tempfile::tempdir().unwrap();
        let d = DiskCache::open(&dir.path().join("c"), 1 << 30, 0.0).unwrap();
        let c = BlockCache::new(64 << 20, Some(d));
        let disk = c.disk().unwrap();
        let (b1, b2) = (
            Bytes::from(block(200_000, 1)),
            Bytes::from(block(200_000, 2)),
        );
        for (k, b) in [(K1, &b1), (K2, &b2)] {
            disk.store(k, b);
            c.insert_mem(k, b.clone()).await;
            for p in 0..4 {
                c.insert_mem(&format!("{k}@{p}"), b.slice(..10)).await;
            }
        }
        let used = disk.used();

        c.forget(K1).await;
        assert!(!c.contains(K1).await);
        for p in 0..4 {
            assert!(!c.contains(&format!("{K1}@{p}")).await, "piece {p} kept");
        }
        assert!(disk.used() < used, "the disk index let go at once");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while disk.path(K1).exists() {
            assert!(std::time::Instant::now() < deadline, "entry file kept");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // A later read of K1 must fetch it again.
        let got = c
            .get(K1, || async {
                Ok(Fetched::Stored(Bytes::from(codec::encode_raw(&b1))))
            })
            .await
            .unwrap();
        assert_eq!(got, b1);

        // The other block is untouched, in memory and on disk.
        assert!(c.contains(K2).await);
        assert!(c.contains(&format!("{K2}@3")).await);
        assert_eq!(disk.load(K2, &pool()), Some(b2));

        // Forgetting what is not cached (or twice) is harmless.
        c.forget(K1).await;
        c.forget("vol/chunks/03/0/3_0_65536").await;
        BlockCache::new(1 << 20, None).forget(K1).await;
    }
}
