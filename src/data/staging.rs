//! Write-back staging (`mount --writeback`): the local, durable copy of
//! writes that close/fsync acknowledged before their blocks reached the
//! object store. Owns the staging directory of one volume
//! (`<cache-dir>/<volume uuid>/staging`, 0700, files 0600), its space
//! bound, and the recovery of what a crashed daemon left there.
//!
//! Layout: `blocks/b<n>` holds one block's raw bytes behind a tag and their
//! xxh3 (written and fsynced as soon as the block fills); `groups/<seq>-<ino>`
//! is the manifest (JSON) of one commit batch: the inode, the commit token
//! and per slice its chunk, offset, length, slice id and block files.
//! A manifest is written tmp + fsync + rename + fsync(dir) after its block
//! files are durable, and it is what makes a close acknowledged. It is
//! removed (durably) right after its commit is known applied and before
//! anything else of the file is committed, so replaying a leftover manifest
//! can only re-append the very bytes already there.
//!
//! Recovery (at mount): manifests are replayed in order. Each slice gets a
//! fresh slice id and its blocks are uploaded again from the staged copy
//! (objects uploaded under the old ids before the crash belong to the dead
//! session's orphan cleanup, which may delete them at any time), then the
//! batch is committed under its original token: a batch already applied is
//! recognised while its marker lives. Writes to a recovering inode wait for
//! its recovery before they commit, so old data never lands on new.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::DataStore;
use crate::cache::{free_share, private_dir_all, tighten, DIR_MODE, FILE_MODE};
use crate::error::{Error, Kind, Result};
use crate::meta::{Slice, INLINE_ID};

/// Every staged block file starts with this tag and the xxh3 of the bytes.
const BLOCK_TAG: [u8; 4] = *b"VSB1";
const BLOCK_HEAD: usize = 12;

/// A failed recovery is tried again after this pause (each try retries
/// transient failures for the store's `retry_for` itself).
const RECOVERY_PAUSE: Duration = Duration::from_secs(2);

/// One slice of a staged commit batch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StagedSlice {
    pub indx: u64,
    pub pos: u32,
    pub len: u32,
    /// The slice id the live writer used (and may have committed under).
    pub id: u64,
    /// The bytes are committed into Redis with the record (small file).
    pub inline: bool,
    /// Block files in block order (one file holding all bytes when inline).
    pub files: Vec<String>,
}

/// A commit batch staged by a close or fsync.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub version: u32,
    pub ino: u64,
    /// The batch's commit token: its first slice id.
    pub token: u64,
    pub slices: Vec<StagedSlice>,
}

/// A manifest a previous daemon left behind.
pub struct Leftover {
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// A staged block: its file and the space it holds.
#[derive(Clone, Debug)]
pub struct StagedBlock {
    pub path: PathBuf,
    pub bytes: u64,
}

pub struct Staging {
    dir: PathBuf,
    /// Bytes of block files allowed; past it (or past the free-space
    /// floor) nothing more is staged and closes write through.
    capacity: u64,
    free_ratio: f64,
    used: AtomicU64,
    next: AtomicU64,
    /// Stage new writes (`--writeback`); leftovers are recovered either way.
    accept: bool,
    /// Held for the mount's life: two daemons never share a staging area
    /// (the second would replay the first's live batches).
    _lock: std::fs::File,
    /// Inodes with leftover batches not committed yet -> how many.
    recovering: Mutex<HashMap<u64, usize>>,
    recovered: Notify,
}

fn sync_dir(p: &Path) -> std::io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

fn io_err(what: &str, e: std::io::Error) -> Error {
    Error::transient(format!("write-back staging: {what}: {e}"))
}

impl Staging {
    /// Opens (or, when `accept`, creates) the staging area under `dir`,
    /// locks it, drops what no manifest names (blocks of writes never
    /// acknowledged, half-written manifests) and returns the manifests
    /// left, oldest first. None: there is no staging area and nothing is
    /// to be staged.
    pub fn open(
        dir: &Path,
        capacity: u64,
        free_ratio: f64,
        accept: bool,
    ) -> std::io::Result<Option<(Staging, Vec<Leftover>)>> {
        let dir = dir.join("staging");
        if !accept && !dir.exists() {
            return Ok(None);
        }
        for d in [dir.clone(), dir.join("blocks"), dir.join("groups")] {
            private_dir_all(&d)?;
            tighten(&d, &std::fs::metadata(&d)?, DIR_MODE)?;
        }
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(dir.join("lock"))?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(std::io::Error::other(format!(
                "{} is in use by another vecfs mount (give each mount of a volume its own --cache-dir)",
                dir.display()
            )));
        }
        let mut leftovers = Vec::new();
        let mut named = std::collections::HashSet::new();
        let mut max_seq = 0u64;
        for e in std::fs::read_dir(dir.join("groups"))?.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let seq = name
                .split_once('-')
                .and_then(|(s, _)| u64::from_str_radix(s, 16).ok());
            let Some(seq) = seq.filter(|_| !name.starts_with('.')) else {
                let _ = std::fs::remove_file(&p); // a manifest half written
                continue;
            };
            let parsed = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok());
            match parsed {
                Some(m) => {
                    max_seq = max_seq.max(seq);
                    for s in &m.slices {
                        named.extend(s.files.iter().cloned());
                    }
                    leftovers.push((
                        seq,
                        Leftover {
                            path: p,
                            manifest: m,
                        },
                    ));
                }
                None => {
                    // Renamed into place only after an fsync: unreadable
                    // means damaged, and its bytes cannot be trusted.
                    tracing::error!(path = %p.display(), "unreadable write-back manifest; its data is lost");
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        leftovers.sort_by_key(|(seq, _)| *seq);
        let mut used = 0u64;
        let mut max_file = 0u64;
        for e in std::fs::read_dir(dir.join("blocks"))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() || !named.contains(&name) {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            tighten(&e.path(), &md, FILE_MODE)?;
            used += md.len();
            if let Some(n) = name
                .strip_prefix('b')
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            {
                max_file = max_file.max(n);
            }
        }
        let mut recovering = HashMap::new();
        for (_, l) in &leftovers {
            *recovering.entry(l.manifest.ino).or_insert(0) += 1;
        }
        let st = Staging {
            dir,
            capacity,
            free_ratio,
            used: AtomicU64::new(used),
            next: AtomicU64::new(max_seq.max(max_file) + 1),
            accept,
            _lock: lock,
            recovering: Mutex::new(recovering),
            recovered: Notify::new(),
        };
        Ok(Some((st, leftovers.into_iter().map(|(_, l)| l).collect())))
    }

    /// Whether new writes are staged (write-back is on).
    pub fn accepts(&self) -> bool {
        self.accept
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn block_path(&self, name: &str) -> PathBuf {
        self.dir.join("blocks").join(name)
    }

    /// Takes `n` bytes of staging space, unless that would pass the bound
    /// or the disk's free-space floor.
    fn reserve(&self, n: u64) -> bool {
        if free_share(&self.dir) < self.free_ratio {
            return false;
        }
        let mut cur = self.used();
        loop {
            if cur + n > self.capacity {
                return false;
            }
            match self
                .used
                .compare_exchange(cur, cur + n, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Writes `raw` to a new block file and fsyncs it (its directory entry
    /// is made durable with the manifest that names it). None when there
    /// is no room or the disk failed: the writes then go through.
    pub async fn stage_block(self: &Arc<Self>, raw: Bytes) -> Option<StagedBlock> {
        let bytes = (BLOCK_HEAD + raw.len()) as u64;
        if !self.reserve(bytes) {
            tracing::debug!(bytes, "write-back staging full; writing through");
            return None;
        }
        let name = format!("b{:016x}", self.next.fetch_add(1, Ordering::Relaxed));
        let path = self.block_path(&name);
        let p2 = path.clone();
        let written = tokio::task::spawn_blocking(move || write_block_file(&p2, &raw)).await;
        match written {
            Ok(Ok(())) => Some(StagedBlock { path, bytes }),
            Ok(Err(e)) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot stage a block; writing through");
                let _ = std::fs::remove_file(&path);
                self.release(bytes);
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "block staging task failed");
                self.release(bytes);
                None
            }
        }
    }

    /// Removes a staged block file (its batch is committed or dropped).
    pub fn remove_block(self: &Arc<Self>, b: StagedBlock) {
        let me = self.clone();
        let remove = move || {
            if std::fs::remove_file(&b.path).is_ok() {
                me.release(b.bytes);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }

    /// Makes a batch durable: the block files' directory entries, then the
    /// manifest (tmp + fsync + rename + fsync of its directory). From here
    /// on a crash does not lose the batch. Returns the manifest's path.
    pub async fn write_manifest(self: &Arc<Self>, m: &Manifest) -> Result<PathBuf> {
        let body = serde_json::to_vec(m).map_err(|e| Error::internal(e.to_string()))?;
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let groups = self.dir.join("groups");
        let path = groups.join(format!("{seq:016x}-{}", m.ino));
        let tmp = groups.join(format!(".{seq:016x}.tmp"));
        let blocks = self.dir.join("blocks");
        let p2 = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            sync_dir(&blocks)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &p2).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            sync_dir(&groups)
        })
        .await?
        .map_err(|e| io_err("manifest", e))?;
        Ok(path)
    }

    /// Removes a manifest durably: once this returns, a crash can no
    /// longer replay the batch.
    pub async fn remove_manifest(&self, path: PathBuf) -> Result<()> {
        let groups = self.dir.join("groups");
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            sync_dir(&groups)
        })
        .await?
        .map_err(|e| io_err("remove manifest", e))
    }

    /// Whether `ino` still has leftover batches to commit.
    pub fn is_recovering(&self, ino: u64) -> bool {
        self.recovering
            .lock()
            .is_ok_and(|r| r.get(&ino).is_some_and(|n| *n > 0))
    }

    /// Waits (at most `limit`) until the leftover batches of `ino` are
    /// committed or dropped: a newer write must never be overlaid by them.
    pub async fn wait_recovered(&self, ino: u64, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let woken = self.recovered.notified();
            if !self.is_recovering(ino) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Err(Error::transient(format!(
                    "inode {ino}: earlier write-back data is not committed yet"
                )));
            }
        }
    }

    fn recovered_one(&self, ino: u64) {
        if let Ok(mut r) = self.recovering.lock() {
            if let Some(n) = r.get_mut(&ino) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    r.remove(&ino);
                }
            }
        }
        self.recovered.notify_waiters();
    }
}

fn write_block_file(path: &Path, raw: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    let mut head = [0u8; BLOCK_HEAD];
    head[..4].copy_from_slice(&BLOCK_TAG);
    head[4..].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(raw).to_le_bytes());
    f.write_all(&head)?;
    f.write_all(raw)?;
    f.sync_all()
}

/// The bytes of a staged block, checked against their hash.
pub fn read_block(path: &Path) -> Result<Bytes> {
    let data = std::fs::read(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            Kind::NotFound
        } else {
            Kind::Transient
        };
        Error::new(kind, format!("staged block {}: {e}", path.display()))
    })?;
    let ok = data.len() >= BLOCK_HEAD
        && data[..4] == BLOCK_TAG
        && data[4..BLOCK_HEAD] == xxhash_rust::xxh3::xxh3_64(&data[BLOCK_HEAD..]).to_le_bytes();
    if !ok {
        return Err(Error::corrupt(format!(
            "staged block {} fails its check",
            path.display()
        )));
    }
    Ok(Bytes::from(data).slice(BLOCK_HEAD..))
}

/// `read_block` off the async workers.
pub async fn load_block(path: PathBuf) -> Result<Bytes> {
    tokio::task::spawn_blocking(move || read_block(&path)).await?
}

/// Commits what a previous daemon staged, oldest batch first, in the
/// background. A batch whose file is gone (or that Redis refuses for
/// good) is dropped with an error line; a transient failure is retried
/// after a pause, holding back the later batches (their order matters).
pub fn spawn_recovery(
    ds: Arc<DataStore>,
    staging: Arc<Staging>,
    leftovers: Vec<Leftover>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !leftovers.is_empty() {
            tracing::info!(
                batches = leftovers.len(),
                "committing write-back data left by an earlier daemon"
            );
        }
        for l in leftovers {
            let ino = l.manifest.ino;
            // New slice ids, kept across tries of this batch.
            let mut ids: Vec<Option<u64>> = vec![None; l.manifest.slices.len()];
            loop {
                match recover_batch(&ds, &l.manifest, &mut ids).await {
                    Ok(()) => {
                        tracing::info!(ino, token = l.manifest.token, "write-back batch committed");
                        break;
                    }
                    Err(e) if matches!(e.kind, Kind::Fs(_) | Kind::Corrupt | Kind::NotFound) => {
                        tracing::error!(ino, token = l.manifest.token, error = %e,
                            "write-back batch dropped: it cannot be committed");
                        delete_uploaded(&ds, &l.manifest, &ids).await;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(ino, error = %e, "write-back batch not committed yet; retrying");
                        tokio::time::sleep(RECOVERY_PAUSE).await;
                    }
                }
            }
            // Gone before anything else of the file may commit.
            loop {
                match staging.remove_manifest(l.path.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot remove a write-back manifest; retrying");
                        tokio::time::sleep(RECOVERY_PAUSE).await;
                    }
                }
            }
            for s in &l.manifest.slices {
                for f in &s.files {
                    let path = staging.block_path(f);
                    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    staging.remove_block(StagedBlock { path, bytes });
                }
            }
            staging.recovered_one(ino);
        }
    })
}

async fn recover_batch(ds: &Arc<DataStore>, m: &Manifest, ids: &mut [Option<u64>]) -> Result<()> {
    let Some(staging) = ds.staging.clone() else {
        return Err(Error::internal("no staging area"));
    };
    // A file deleted meanwhile: nothing to upload.
    ds.retry("getattr", || async { Ok(ds.meta.getattr(m.ino).await?) })
        .await?;
    let bs = ds.block_size;
    let mut records = Vec::with_capacity(m.slices.len());
    for (s, slot) in m.slices.iter().zip(ids.iter_mut()) {
        let id = match slot {
            Some(id) => *id,
            None => {
                let id = ds
                    .retry("slice id", || async { Ok(ds.meta.new_slice_id().await?) })
                    .await?;
                *slot = Some(id);
                id
            }
        };
        let want = if s.inline {
            1
        } else {
            s.len.div_ceil(bs) as usize
        };
        if s.files.len() != want {
            return Err(Error::corrupt(format!(
                "manifest of inode {}: {} block files for {} bytes",
                m.ino,
                s.files.len(),
                s.len
            )));
        }
        let mut inline = None;
        for (index, f) in s.files.iter().enumerate() {
            let raw = load_block(staging.block_path(f)).await?;
            let expect = if s.inline {
                s.len
            } else {
                bs.min(s.len - index as u32 * bs)
            };
            if raw.len() != expect as usize {
                return Err(Error::corrupt(format!(
                    "staged block {f}: {} bytes, the manifest says {expect}",
                    raw.len()
                )));
            }
            if s.inline {
                inline = Some(raw.to_vec());
            } else {
                super::writer::store_block(ds, id, index as u32, raw).await?;
            }
        }
        let id = if s.inline { id | INLINE_ID } else { id };
        let slice = Slice {
            pos: s.pos,
            id,
            size: s.len,
            off: 0,
            len: s.len,
        };
        records.push((s.indx, slice, inline));
    }
    // The original token: a batch the dead daemon committed is not applied twice.
    ds.retry("commit", || async {
        ds.meta
            .write_slices(m.ino, &records, ds.capacity, m.token)
            .await
            .map_err(Error::from)
    })
    .await?;
    Ok(())
}

/// Best effort: objects uploaded for a batch that was then dropped.
async fn delete_uploaded(ds: &Arc<DataStore>, m: &Manifest, ids: &[Option<u64>]) {
    let bs = ds.block_size;
    for (s, id) in m.slices.iter().zip(ids) {
        let Some(id) = id else { continue };
        if s.inline {
            continue;
        }
        for index in 0..s.len.div_ceil(bs) {
            let key = ds.blocks.block_key(*id, index, bs.min(s.len - index * bs));
            ds.cache.forget(&key).await;
            if let Err(e) = ds.blocks.delete(&key).await {
                tracing::debug!(key, error = %e, "cannot delete an object of a dropped batch");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: Vec<String>) -> Manifest {
        Manifest {
            version: 1,
            ino: 7,
            token: 42,
            slices: vec![StagedSlice {
                indx: 0,
                pos: 0,
                len: 100,
                id: 42,
                inline: false,
                files,
            }],
        }
    }

    #[tokio::test]
    async fn a_staged_batch_survives_reopen_and_unnamed_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let (st, left) = Staging::open(dir.path(), 1 << 30, 0.0, true)
            .unwrap()
            .unwrap();
        assert!(left.is_empty());
        let st = Arc::new(st);
        let b = st.stage_block(Bytes::from(vec![7u8; 100])).await.unwrap();
        let orphan = st.stage_block(Bytes::from(vec![8u8; 50])).await.unwrap();
        let name = b.path.file_name().unwrap().to_string_lossy().into_owned();
        let m = manifest(vec![name]);
        st.write_manifest(&m).await.unwrap();
        // Half-written manifests are dropped at open.
        std::fs::write(st.dir().join("groups/.00ff.tmp"), b"{").unwrap();
        drop(st);

        let (st, left) = Staging::open(dir.path(), 1 << 30, 0.0, false)
            .unwrap()
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].manifest, m);
        assert!(st.is_recovering(7) && !st.is_recovering(8));
        assert_eq!(&read_block(&b.path).unwrap()[..], &[7u8; 100][..]);
        assert!(
            !orphan.path.exists(),
            "a block no manifest names is dropped"
        );
        assert!(!st.dir().join("groups/.00ff.tmp").exists());
        assert_eq!(st.used(), b.bytes);
    }

    #[test]
    fn a_second_daemon_cannot_share_the_staging_area() {
        let dir = tempfile::tempdir().unwrap();
        let first = Staging::open(dir.path(), 1 << 30, 0.0, true).unwrap();
        let second = Staging::open(dir.path(), 1 << 30, 0.0, true);
        assert!(second.is_err(), "the lock was not taken");
        drop(first);
        assert!(Staging::open(dir.path(), 1 << 30, 0.0, true).is_ok());
    }

    #[test]
    fn no_staging_area_is_made_without_write_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Staging::open(dir.path(), 1 << 30, 0.0, false)
            .unwrap()
            .is_none());
        assert!(!dir.path().join("staging").exists());
    }

    #[tokio::test]
    async fn a_damaged_block_is_refused_and_space_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (st, _) = Staging::open(dir.path(), 300, 0.0, true).unwrap().unwrap();
        let st = Arc::new(st);
        let b = st.stage_block(Bytes::from(vec![1u8; 200])).await.unwrap();
        assert!(
            st.stage_block(Bytes::from(vec![1u8; 200])).await.is_none(),
            "staged past the bound"
        );
        let mut raw = std::fs::read(&b.path).unwrap();
        raw[BLOCK_HEAD + 5] ^= 1;
        std::fs::write(&b.path, raw).unwrap();
        assert_eq!(read_block(&b.path).unwrap_err().kind, Kind::Corrupt);
        let used = st.used();
        st.remove_block(b.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while st.used() != used - b.bytes {
            assert!(std::time::Instant::now() < deadline, "space not given back");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!b.path.exists());
    }
}
