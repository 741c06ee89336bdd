//! Writes of one file on this node, from the application's write() to the
//! committed slice records.
//!
//! Bytes are appended to the open slice's tail; each block that fills is
//! handed to an upload task at once (no copy) and the writer goes on. A
//! flush seals what is buffered, waits for every block to be stored, then
//! commits the slices in one atomic Redis step. The rules this file keeps:
//! - Nothing is dropped before it is committed: a failed upload keeps its
//!   bytes and is uploaded again by the next flush; a failed commit keeps
//!   every slice. Only a permanent answer from the commit itself (the file is
//!   gone, the volume is full) drops data, and that error then sticks.
//! - Commits are idempotent: each carries a token (its first slice id), so a
//!   commit retried after an ambiguous failure never applies twice.
//! - The state lock is a plain mutex held for memory operations only: no
//!   lookup, stat or read ever waits on an upload or a commit. Flushes are
//!   serialised by their own async lock; budget is taken before any lock.
//! - Bytes not committed yet stay readable through `overlay`.
//! - Write-back (`stage`, see staging.rs): with a staging area, every block
//!   is also written to local disk as it fills, and a close makes the
//!   slices written so far one durable batch (a manifest) without waiting
//!   for the store; the flusher commits it later as exactly that batch,
//!   under its token, and removes the manifest before anything else of the
//!   file commits.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::staging::{self, Manifest, StagedBlock, StagedSlice};
use super::{DataStore, Held, PendingBlocks, PendingSource, COMPACT_AT, PENDING_ID};
use crate::codec;
use crate::error::{Error, Kind, Result};
use crate::meta::{Attr, Slice, CHUNK_SIZE, INLINE_ID};

/// A block of a slice, handed to an upload task when it filled (or when a
/// flush sealed the slice). Its bytes stay here until the object is stored.
struct Block {
    index: u32,
    slot: Mutex<Slot>,
}

struct Slot {
    data: Option<Bytes>,
    held: Option<Held>,
    /// The object key, once stored.
    key: Option<String>,
    task: Option<JoinHandle<Result<()>>>,
    /// Stops the latest upload even while a flush is waiting on it.
    abort: Option<tokio::task::AbortHandle>,
    /// Write-back: the block's staged copy, being written or written
    /// (None inside: it could not be staged).
    staged: Option<StagedFut>,
    /// The staged copy, once part of a durable batch: the bytes may leave
    /// memory and are read (and uploaded) from here.
    staged_at: Option<PathBuf>,
}

type StagedFut = Shared<BoxFuture<'static, Option<StagedBlock>>>;

/// Write-back: a commit batch a close or fsync staged: the oldest `count`
/// slices after the groups before it.
struct Group {
    count: usize,
    manifest: Arc<Mutex<ManifestState>>,
}

enum ManifestState {
    Writing,
    Durable(PathBuf),
    /// Could not be staged: closes write through until it commits.
    Failed,
    /// Committed or dropped while still being written: the writer of the
    /// manifest removes it.
    Settled,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A slice not committed yet.
struct PendingSlice {
    /// Its id in the slice lists replayed on this node until it commits.
    local: u64,
    indx: u64,
    pos: u32,
    len: u32,
    /// The volume-wide slice id, taken from Redis when first needed.
    id: Arc<OnceCell<u64>>,
    blocks: Vec<Arc<Block>>,
    tail: Vec<u8>,
    tail_held: Held,
    /// Sealed by a flush: later writes start a new slice.
    sealed: bool,
    /// A small file's bytes, committed into Redis with the record.
    inline: Option<Bytes>,
    /// Write-back: the staged copy of `inline`.
    inline_file: Arc<Mutex<Option<StagedBlock>>>,
}

impl PendingSlice {
    /// What a flush or a stage needs of a sealed slice.
    fn view(&self) -> SealedView {
        SealedView {
            indx: self.indx,
            pos: self.pos,
            len: self.len,
            id: self.id.clone(),
            blocks: self.blocks.clone(),
            inline: self.inline.clone(),
            inline_file: self.inline_file.clone(),
        }
    }
}

/// What a flush commits of one slice, taken under the state lock.
struct SealedView {
    indx: u64,
    pos: u32,
    len: u32,
    id: Arc<OnceCell<u64>>,
    blocks: Vec<Arc<Block>>,
    inline: Option<Bytes>,
    inline_file: Arc<Mutex<Option<StagedBlock>>>,
}

#[derive(Default)]
struct State {
    slices: Vec<PendingSlice>,
    next_local: u64,
    /// Data was dropped for a permanent reason: every later flush says so.
    lost: Option<Error>,
    dirty_since: Option<Instant>,
    last_write: Option<Instant>,
    /// When the last flush failed for a reason retrying may fix: the
    /// flusher tries again (not more often than RETRY_PAUSE).
    failing: Option<Instant>,
    /// Slices (the oldest this many) whose commit was sent but is not
    /// known to be applied: retried as one batch under the same token.
    frozen: Option<usize>,
    /// Write-back batches covering the oldest slices, in order.
    groups: VecDeque<Group>,
}

/// Pending writes of one inode on this node, shared by all its handles.
pub struct FileWriter {
    ino: u64,
    ds: Arc<DataStore>,
    state: Mutex<State>,
    flushing: tokio::sync::Mutex<()>,
    /// Serialises `stage`; a commit takes it briefly, so it never goes out
    /// while a manifest is being written.
    staging: tokio::sync::Mutex<()>,
    /// A background flush of this file is queued or running.
    pub background: AtomicBool,
}

/// Past this many slices a writer asks for a flush (each record is replayed
/// by every read); past four times as many the writer flushes itself.
pub const MAX_PENDING_SLICES: usize = 64;

/// A flush that failed is tried again by the flusher after this pause
/// (each try itself retries transient failures for `retry_for`).
const RETRY_PAUSE: Duration = Duration::from_secs(2);

impl FileWriter {
    pub fn new(ino: u64, ds: Arc<DataStore>) -> FileWriter {
        FileWriter {
            ino,
            ds,
            state: Mutex::new(State::default()),
            flushing: tokio::sync::Mutex::new(()),
            staging: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave half-updated state
        // that matters more than losing the writer: recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_dirty(&self) -> bool {
        !self.state().slices.is_empty()
    }

    /// Buffers `data` at file offset `off`, holding `held` (the budget
    /// for its bytes, taken by the caller before any lock: a flush may be
    /// what frees it); uploads blocks as they fill. Returns how many slices
    /// are pending.
    pub fn write(&self, off: u64, data: &[u8], mut held: Held) -> Result<usize> {
        let bs = self.ds.block_size as usize;
        let mut st = self.state();
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let indx = at / CHUNK_SIZE;
            let cpos = (at % CHUNK_SIZE) as u32;
            let n = ((CHUNK_SIZE - cpos as u64) as usize).min(data.len() - done);
            let append = matches!(st.slices.last(),
                Some(s) if !s.sealed && s.indx == indx && s.pos + s.len == cpos);
            if !append {
                let local = PENDING_ID | (st.next_local & (PENDING_ID - 1));
                st.next_local += 1;
                st.slices.push(PendingSlice {
                    local,
                    indx,
                    pos: cpos,
                    len: 0,
                    id: Arc::new(OnceCell::new()),
                    blocks: Vec::new(),
                    tail: Vec::new(),
                    tail_held: self.ds.budget.empty(),
                    sealed: false,
                    inline: None,
                    inline_file: Arc::new(Mutex::new(None)),
                });
            }
            let Some(s) = st.slices.last_mut() else {
                return Err(Error::internal("writer lost its slice"));
            };
            let mut rest = &data[done..done + n];
            while !rest.is_empty() {
                let take = (bs - s.tail.len()).min(rest.len());
                if s.tail.capacity() == 0 && rest.len() >= bs / 4 {
                    s.tail.reserve_exact(bs);
                }
                s.tail.extend_from_slice(&rest[..take]);
                s.tail_held.absorb(held.split(take));
                s.len += take as u32;
                rest = &rest[take..];
                if s.tail.len() == bs {
                    seal_tail(&self.ds, s);
                }
            }
            done += n;
        }
        let now = Instant::now();
        st.last_write = Some(now);
        st.dirty_since.get_or_insert(now);
        Ok(st.slices.len())
    }

    /// Whether a background flush is due: the last write is `idle` old, the
    /// oldest buffered byte `max_age` old, slices pile up, or the last flush
    /// failed.
    pub fn flush_due(&self, idle: Duration, max_age: Duration) -> bool {
        let st = self.state();
        if st.slices.is_empty() {
            return false;
        }
        if let Some(at) = st.failing {
            return at.elapsed() >= RETRY_PAUSE;
        }
        // Acknowledged to the application already: commit at once.
        !st.groups.is_empty()
            || st.slices.len() >= MAX_PENDING_SLICES
            || st.last_write.is_none_or(|t| t.elapsed() >= idle)
            || st.dirty_since.is_none_or(|t| t.elapsed() >= max_age)
    }

    /// Drops everything buffered (the file is gone).
    pub fn discard(&self) {
        let mut st = self.state();
        // A batch whose commit was sent may still apply: its journal entries
        // are left to that commit or to the session's cleanup.
        let sent = st.frozen.unwrap_or(0).min(st.slices.len());
        self.ds.abandon_uploads(uploaded_ids(&st.slices[sent..]));
        for g in st.groups.drain(..) {
            settle_manifest(&self.ds, &g.manifest);
        }
        for s in st.slices.drain(..) {
            drop_staged_slice(&self.ds, &s.blocks, &s.inline_file);
            for b in s.blocks {
                if let Ok(mut slot) = b.slot.lock() {
                    if let Some(t) = slot.task.take() {
                        t.abort();
                    }
                    if let Some(a) = slot.abort.take() {
                        a.abort();
                    }
                    // A flush still running must not upload it again.
                    slot.data = None;
                    slot.held = None;
                    slot.staged_at = None;
                }
            }
        }
        st.dirty_since = None;
        st.failing = None;
        st.frozen = None;
    }

    /// The slices of chunk `indx` not committed yet (oldest first, under
    /// their local ids) and the blocks that hold bytes [from, to) of the
    /// chunk, so a read sees this node's own writes before they commit.
    pub fn overlay(&self, indx: u64, from: u32, to: u32) -> (Vec<Slice>, PendingBlocks) {
        let st = self.state();
        let bs = self.ds.block_size;
        let mut slices = Vec::new();
        let mut blocks = PendingBlocks::new();
        for s in st.slices.iter().filter(|s| s.indx == indx && s.len > 0) {
            slices.push(Slice {
                pos: s.pos,
                id: s.local,
                size: s.len,
                off: 0,
                len: s.len,
            });
            if s.pos >= to || s.pos + s.len <= from {
                continue;
            }
            if let Some(b) = &s.inline {
                blocks.insert((s.local, 0), PendingSource::Mem(b.clone()));
                continue;
            }
            for b in &s.blocks {
                let start = s.pos + b.index * bs;
                if start >= to || start + bs <= from {
                    continue;
                }
                let Ok(slot) = b.slot.lock() else { continue };
                let src = match (&slot.data, &slot.staged_at, &slot.key) {
                    (Some(d), _, _) => PendingSource::Mem(d.clone()),
                    (None, Some(p), _) => PendingSource::Staged(p.clone()),
                    (None, None, Some(k)) => PendingSource::Key(k.clone()),
                    (None, None, None) => continue,
                };
                blocks.insert((s.local, b.index), src);
            }
            if !s.tail.is_empty() {
                let index = s.blocks.len() as u32;
                let start = s.pos + index * bs;
                if start < to {
                    // Only as much of the tail as the read reaches.
                    let upto = ((to - start) as usize).min(s.tail.len());
                    blocks.insert(
                        (s.local, index),
                        PendingSource::Mem(Bytes::copy_from_slice(&s.tail[..upto])),
                    );
                }
            }
        }
        (slices, blocks)
    }

    /// Commits everything written before the call. `on_commit` runs with the
    /// committed attributes before the slices leave the overlay, so readers
    /// never see a moment where the bytes are in neither place. It must not
    /// call back into this writer.
    pub async fn flush(&self, on_commit: impl Fn(&Attr)) -> Result<()> {
        let _serial = self.flushing.lock().await;
        // Everything written before this call: the slices present now.
        let mut target = {
            let mut st = self.state();
            seal_all(&self.ds, &mut st);
            st.slices.len()
        };
        while target > 0 {
            // A batch whose commit was sent is retried exactly as it was (same
            // slices, same token) until it is known applied: a bigger batch
            // under its token would be taken for it and the rest lost.
            // A staged batch goes out as it was staged (its manifest names
            // its token); a frozen one is always the first group, if any.
            let batch = {
                let mut st = self.state();
                let n = st
                    .frozen
                    .or_else(|| st.groups.front().map(|g| g.count))
                    .unwrap_or(target)
                    .min(st.slices.len());
                if n == 0 {
                    break;
                }
                st.frozen = Some(n);
                st.slices[..n]
                    .iter()
                    .map(PendingSlice::view)
                    .collect::<Vec<_>>()
            };
            let n = batch.len();
            let r = self.store_and_commit(&batch).await;
            if let Ok(attr) = &r {
                // Before the slices leave the overlay (and outside the state
                // lock: the caller takes its own locks).
                on_commit(attr);
            }
            if matches!(&r, Err(e) if matches!(e.kind, Kind::Fs(_))) {
                // Dropped for good: its manifest must not be replayed either.
                self.remove_manifest(n).await;
            }
            let mut st = self.state();
            let n = n.min(st.slices.len());
            if r.is_ok() || matches!(&r, Err(e) if matches!(e.kind, Kind::Fs(_))) {
                if st.groups.front().is_some_and(|g| g.count == n) {
                    st.groups.pop_front();
                }
                for s in &st.slices[..n] {
                    drop_staged_slice(&self.ds, &s.blocks, &s.inline_file);
                }
            }
            match r {
                Ok(_) => {
                    // The batch is the oldest slices: later writes were appended.
                    st.slices.drain(..n);
                    st.frozen = None;
                    st.failing = None;
                    if st.slices.is_empty() {
                        st.dirty_since = None;
                    }
                    target = target.saturating_sub(n);
                }
                Err(e) if matches!(e.kind, Kind::Fs(_)) => {
                    // Redis refused the commit itself (the file is gone, the
                    // volume is full): retrying cannot help. The error sticks.
                    tracing::error!(ino = self.ino, error = %e, "commit refused; buffered data dropped");
                    self.ds.abandon_uploads(uploaded_ids(&st.slices[..n]));
                    st.slices.drain(..n);
                    st.frozen = None;
                    st.lost = Some(e.clone());
                    st.failing = None;
                    return Err(e);
                }
                Err(e) => {
                    st.failing = Some(Instant::now());
                    return Err(e);
                }
            }
        }
        // Data dropped earlier stays reported, even when later writes commit.
        self.lost()
    }

    /// The error that dropped data earlier, if any.
    fn lost(&self) -> Result<()> {
        match &self.state().lost {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Write-back: makes everything written before the call durable on the
    /// local disk (each block's staged copy, then one manifest per new
    /// batch) without waiting for the store; the flusher commits it later.
    /// Ok(false): staging is off, full or failed: the caller commits
    /// instead (write-through). A data loss reported earlier still sticks.
    pub async fn stage(&self) -> Result<bool> {
        let Some(area) = self.ds.staging.clone().filter(|s| s.accepts()) else {
            return Ok(false);
        };
        let _serial = self.staging.lock().await;
        // Under the state lock: the new batches' composition is fixed here
        // (a commit already sent is one batch by itself: its token is set).
        let todo = {
            let mut st = self.state();
            seal_all(&self.ds, &mut st);
            if st
                .groups
                .iter()
                .any(|g| matches!(*lock(&g.manifest), ManifestState::Failed))
            {
                return Ok(false);
            }
            let grouped: usize = st.groups.iter().map(|g| g.count).sum();
            let total = st.slices.len();
            let mut cuts = Vec::new();
            if grouped < total {
                let mut from = grouped;
                if let Some(n) = st.frozen.filter(|n| grouped == 0 && *n < total) {
                    cuts.push((0, n));
                    from = n;
                }
                cuts.push((from, total));
            }
            let mut todo = Vec::new();
            for (a, b) in cuts {
                let manifest = Arc::new(Mutex::new(ManifestState::Writing));
                st.groups.push_back(Group {
                    count: b - a,
                    manifest: manifest.clone(),
                });
                let views: Vec<SealedView> =
                    st.slices[a..b].iter().map(PendingSlice::view).collect();
                todo.push((views, manifest));
            }
            todo
        };
        let mut ok = true;
        for (views, manifest) in todo {
            let written = if ok {
                self.write_batch(&area, &views).await
            } else {
                Err(Error::internal("an earlier batch could not be staged"))
            };
            match written {
                Ok(path) => {
                    let settled = {
                        let mut state = lock(&manifest);
                        if matches!(*state, ManifestState::Settled) {
                            Some(path)
                        } else {
                            *state = ManifestState::Durable(path);
                            None
                        }
                    };
                    if let Some(path) = settled {
                        // Committed (or dropped) while being written.
                        if let Err(e) = area.remove_manifest(path).await {
                            tracing::warn!(ino = self.ino, error = %e, "cannot remove a write-back manifest");
                        }
                        continue;
                    }
                    // On disk for good: the bytes may leave memory.
                    for v in &views {
                        for b in &v.blocks {
                            let path = b.slot.lock().ok().and_then(|s| s.staged.clone());
                            let Some(Some(sb)) = path.and_then(|f| f.peek().cloned()) else {
                                continue;
                            };
                            if let Ok(mut slot) = b.slot.lock() {
                                slot.staged_at = Some(sb.path);
                                slot.data = None;
                                slot.held = None;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(ino = self.ino, error = %e, "cannot stage; writing through");
                    *lock(&manifest) = ManifestState::Failed;
                    ok = false;
                }
            }
        }
        if !ok {
            return Ok(false);
        }
        self.lost()?;
        Ok(true)
    }

    /// Stages one batch: waits for its blocks' staged copies, stages
    /// inline bytes, writes the manifest. Returns the manifest's path.
    async fn write_batch(
        &self,
        area: &Arc<staging::Staging>,
        views: &[SealedView],
    ) -> Result<PathBuf> {
        let mut slices = Vec::with_capacity(views.len());
        for v in views {
            let id = slice_id(&self.ds, &v.id).await?;
            let mut files = Vec::new();
            let mut staged = Vec::new();
            if let Some(b) = &v.inline {
                let have = lock(&v.inline_file).clone();
                let sb = match have {
                    Some(sb) => sb,
                    None => {
                        let sb = area
                            .stage_block(b.clone())
                            .await
                            .ok_or_else(|| Error::internal("no room to stage"))?;
                        *lock(&v.inline_file) = Some(sb.clone());
                        sb
                    }
                };
                staged.push(sb);
            }
            for b in &v.blocks {
                let fut = b.slot.lock().ok().and_then(|s| s.staged.clone());
                match fut {
                    Some(f) => match f.await {
                        Some(sb) => staged.push(sb),
                        None => return Err(Error::internal("a block could not be staged")),
                    },
                    None => return Err(Error::internal("a block was not staged")),
                }
            }
            for sb in staged {
                let name = sb
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned());
                files.push(name.ok_or_else(|| Error::internal("staged block without a name"))?);
            }
            slices.push(StagedSlice {
                indx: v.indx,
                pos: v.pos,
                len: v.len,
                id,
                inline: v.inline.is_some(),
                files,
            });
        }
        let token = slices.first().map(|s| s.id).unwrap_or(0);
        let m = Manifest {
            version: 1,
            ino: self.ino,
            token,
            slices,
        };
        area.write_manifest(&m).await
    }

    /// The oldest `n` slices were committed (or dropped): removes their
    /// batch's manifest, if they were staged as one, durably, or has its
    /// writer remove it when it is still being written. (A batch sent
    /// before a close staged it is the first group by then.)
    async fn remove_manifest(&self, n: usize) {
        let m = {
            let st = self.state();
            match st.groups.front().filter(|g| g.count == n) {
                Some(g) => g.manifest.clone(),
                None => return,
            }
        };
        let path = {
            let mut state = lock(&m);
            match std::mem::replace(&mut *state, ManifestState::Settled) {
                ManifestState::Durable(p) => Some(p),
                ManifestState::Failed => {
                    *state = ManifestState::Failed;
                    None
                }
                _ => None,
            }
        };
        let (Some(path), Some(area)) = (path, self.ds.staging.clone()) else {
            return;
        };
        // Before anything else of this file commits: a replay of a batch
        // applied may only ever re-append the very same bytes.
        let mut wait = Duration::from_millis(50);
        while let Err(e) = area.remove_manifest(path.clone()).await {
            tracing::warn!(ino = self.ino, error = %e, "cannot remove a write-back manifest; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn store_and_commit(&self, batch: &[SealedView]) -> Result<Attr> {
        let ds = &self.ds;
        // Ids and commit share one retry window: a flush answers within
        // about --io-retry, not a multiple of it.
        let deadline = tokio::time::Instant::now() + ds.retry_for;
        // All at once (the upload slots bound the parallelism; write-back
        // defers every upload to here): blocks whose upload failed are
        // uploaded again, each retried for the retry bound, and one after
        // another a flush of N failed blocks took N times the bound.
        let waits = batch
            .iter()
            .flat_map(|v| v.blocks.iter().map(move |b| wait_stored(ds, &v.id, b)));
        if let Some(e) = futures::future::join_all(waits)
            .await
            .into_iter()
            .find_map(|r| r.err())
        {
            return Err(e);
        }
        let mut records = Vec::with_capacity(batch.len());
        for v in batch {
            let id = slice_id_by(ds, &v.id, deadline).await?;
            let id = if v.inline.is_some() {
                id | INLINE_ID
            } else {
                id
            };
            let slice = Slice {
                pos: v.pos,
                id,
                size: v.len,
                off: 0,
                len: v.len,
            };
            records.push((v.indx, slice, v.inline.as_ref().map(|b| b.to_vec())));
        }
        // Slice ids are unique volume-wide: the first one names this commit.
        let token = records.first().map(|r| r.1.id & !INLINE_ID).unwrap_or(0);
        if let Some(area) = &ds.staging {
            // Batches a crashed daemon staged for this file land first.
            if area.is_recovering(self.ino) {
                area.wait_recovered(self.ino, ds.retry_for).await?;
            }
            // No manifest is half written while a commit goes out.
            drop(self.staging.lock().await);
        }
        let done = ds
            .retry_until(deadline, "commit", || async {
                ds.meta
                    .write_slices(self.ino, &records, ds.capacity, token)
                    .await
                    .map_err(Error::from)
            })
            .await?;
        self.remove_manifest(batch.len()).await;
        for (indx, n) in done.kept {
            if n >= COMPACT_AT {
                ds.spawn_compaction(self.ino, indx);
            }
        }
        // Blocks of hidden slices are dead here: never let them fill the
        // cache (other nodes may still read the objects for a while).
        ds.forget_cached(&done.dropped).await;
        Ok(done.attr)
    }
}

/// `slice_id` within a deadline shared with the commit that needs it.
async fn slice_id_by(
    ds: &Arc<DataStore>,
    cell: &OnceCell<u64>,
    deadline: tokio::time::Instant,
) -> Result<u64> {
    cell.get_or_try_init(|| {
        ds.retry_until(deadline, "slice id", || async {
            Ok(ds.meta.new_slice_id().await?)
        })
    })
    .await
    .copied()
}

/// The slice's volume-wide id, taken from Redis once.
async fn slice_id(ds: &Arc<DataStore>, cell: &OnceCell<u64>) -> Result<u64> {
    cell.get_or_try_init(|| ds.retry("slice id", || async { Ok(ds.meta.new_slice_id().await?) }))
        .await
        .copied()
}

/// Ids of slices that may have stored objects (for the deleter, when
/// they are dropped uncommitted).
fn uploaded_ids(slices: &[PendingSlice]) -> Vec<u64> {
    slices
        .iter()
        .filter(|s| !s.blocks.is_empty())
        .filter_map(|s| s.id.get().copied())
        .collect()
}

/// Seals every open slice (a flush or stage takes what was written before
/// it): small files become inline, tails become blocks.
fn seal_all(ds: &Arc<DataStore>, st: &mut State) {
    let inline_size = ds.inline_size;
    for s in st.slices.iter_mut().filter(|s| !s.sealed) {
        s.sealed = true;
        let small = s.indx == 0 && s.blocks.is_empty() && s.len > 0 && s.pos + s.len <= inline_size;
        if small {
            s.inline = Some(Bytes::from(std::mem::take(&mut s.tail)));
        } else if !s.tail.is_empty() {
            seal_tail(ds, s);
        }
    }
}

/// Marks a batch's manifest settled (discard: no durability needed, the
/// file is gone and a replay finds no inode).
fn settle_manifest(ds: &Arc<DataStore>, m: &Arc<Mutex<ManifestState>>) {
    let path = match std::mem::replace(&mut *lock(m), ManifestState::Settled) {
        ManifestState::Durable(p) => p,
        _ => return,
    };
    if let (Some(area), Ok(h)) = (ds.staging.clone(), tokio::runtime::Handle::try_current()) {
        h.spawn(async move {
            if let Err(e) = area.remove_manifest(path).await {
                tracing::warn!(error = %e, "cannot remove a write-back manifest");
            }
        });
    }
}

/// Removes a slice's staged copies (it is committed or dropped), each
/// once it is written if that is still going on.
fn drop_staged_slice(
    ds: &Arc<DataStore>,
    blocks: &[Arc<Block>],
    inline_file: &Mutex<Option<StagedBlock>>,
) {
    let Some(area) = ds.staging.clone() else {
        return;
    };
    if let Some(sb) = lock(inline_file).take() {
        area.remove_block(sb);
    }
    let Ok(h) = tokio::runtime::Handle::try_current() else {
        return;
    };
    for b in blocks {
        let fut = b.slot.lock().ok().and_then(|mut s| s.staged.take());
        if let Some(fut) = fut {
            let area = area.clone();
            h.spawn(async move {
                if let Some(sb) = fut.await {
                    area.remove_block(sb);
                }
            });
        }
    }
}

/// Turns a slice's tail into a block and starts its upload (and, with
/// write-back, its staged copy).
fn seal_tail(ds: &Arc<DataStore>, s: &mut PendingSlice) {
    let data = Bytes::from(std::mem::take(&mut s.tail));
    let held = std::mem::replace(&mut s.tail_held, ds.budget.empty());
    let block = Arc::new(Block {
        index: s.blocks.len() as u32,
        slot: Mutex::new(Slot {
            data: Some(data.clone()),
            held: Some(held),
            key: None,
            task: None,
            abort: None,
            staged: None,
            staged_at: None,
        }),
    });
    match ds.staging.clone().filter(|a| a.accepts()) {
        // Write-back: the block goes to the local disk now and leaves
        // memory once there; its upload waits for the commit (a flush),
        // so a writer's closes never queue behind its own uploads.
        Some(area) => {
            let b = block.clone();
            let task = tokio::spawn(async move {
                let sb = area.stage_block(data).await;
                if let (Some(sb), Ok(mut slot)) = (&sb, b.slot.lock()) {
                    if slot.key.is_none() {
                        slot.staged_at = Some(sb.path.clone());
                        slot.data = None;
                        slot.held = None;
                    }
                }
                sb
            });
            let fut = async move { task.await.ok().flatten() }.boxed().shared();
            if let Ok(mut slot) = block.slot.lock() {
                slot.staged = Some(fut);
            }
        }
        None => start_upload(ds, &s.id, &block),
    }
    s.blocks.push(block);
}

/// Starts `b`'s upload unless it is stored or being stored.
fn start_upload(ds: &Arc<DataStore>, id: &Arc<OnceCell<u64>>, b: &Arc<Block>) {
    let Ok(mut slot) = b.slot.lock() else {
        return;
    };
    if slot.key.is_some() || slot.task.is_some() {
        return;
    }
    let task = spawn_block_upload(ds, id.clone(), b.clone());
    slot.abort = Some(task.abort_handle());
    slot.task = Some(task);
}

/// Waits until `b` is stored: joins its upload, and uploads it again when
/// an earlier attempt had failed.
async fn wait_stored(ds: &Arc<DataStore>, id: &Arc<OnceCell<u64>>, b: &Arc<Block>) -> Result<()> {
    for _ in 0..2 {
        let (task, fresh) = {
            let Ok(mut slot) = b.slot.lock() else {
                return Err(Error::internal("block slot poisoned"));
            };
            if slot.key.is_some() {
                return Ok(());
            }
            match slot.task.take() {
                Some(t) => (t, false),
                None => {
                    let t = spawn_block_upload(ds, id.clone(), b.clone());
                    slot.abort = Some(t.abort_handle());
                    (t, true)
                }
            }
        };
        match task.await.map_err(Error::from).and_then(|r| r) {
            Ok(()) => return Ok(()),
            // An upload started before this flush failed: try once more now.
            Err(e) if fresh => return Err(e),
            Err(e) => tracing::debug!(error = %e, "earlier upload failed; uploading again"),
        }
    }
    Err(Error::internal("block upload did not finish"))
}

fn spawn_block_upload(
    ds: &Arc<DataStore>,
    id: Arc<OnceCell<u64>>,
    block: Arc<Block>,
) -> JoinHandle<Result<()>> {
    let ds = ds.clone();
    tokio::spawn(async move {
        let (data, staged_at) = match block.slot.lock() {
            Ok(slot) if slot.key.is_some() => return Ok(()),
            Ok(slot) => (slot.data.clone(), slot.staged_at.clone()),
            Err(_) => (None, None),
        };
        let data = match (data, staged_at) {
            (Some(d), _) => d,
            (None, Some(p)) => staging::load_block(p).await?,
            (None, None) => return Err(Error::internal("block has neither bytes nor an object")),
        };
        let id = slice_id(&ds, &id).await?;
        let key = store_block(&ds, id, block.index, data).await?;
        if let Ok(mut slot) = block.slot.lock() {
            slot.data = None;
            slot.held = None;
            slot.key = Some(key);
        }
        Ok(())
    })
}

/// Encodes and stores one block, retrying transient failures; the block
/// then goes to this node's cache. Returns its object key.
pub(super) async fn store_block(
    ds: &Arc<DataStore>,
    id: u64,
    index: u32,
    raw: Bytes,
) -> Result<String> {
    let _slot = ds
        .uploads
        .acquire()
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    let key = ds.blocks.block_key(id, index, raw.len() as u32);
    let codec = ds.codec;
    let r2 = raw.clone();
    // Journaled before the upload (while the block encodes): a crash
    // between upload and commit leaves an object the session's cleanup finds.
    let end = index as u64 * ds.block_size as u64 + raw.len() as u64;
    let (parts, journaled) = tokio::join!(
        tokio::task::spawn_blocking(move || codec::encode_parts(&r2, codec)),
        ds.retry("journal upload", || async {
            Ok(ds.meta.journal_upload(id, end).await?)
        })
    );
    journaled?;
    let parts = parts?;
    ds.retry("upload", || async {
        ds.blocks
            .put_parts(&key, parts.clone())
            .await
            .map_err(Error::from)
    })
    .await?;
    ds.cache.insert_written(&key, raw).await;
    Ok(key)
}

/// Stores a block made elsewhere (compaction), holding `held` until done.
pub(crate) fn spawn_store_block(
    ds: &Arc<DataStore>,
    id: u64,
    index: u32,
    raw: Bytes,
    held: Held,
) -> JoinHandle<Result<()>> {
    let ds = ds.clone();
    tokio::spawn(async move {
        let _held = held;
        store_block(&ds, id, index, raw).await.map(|_| ())
    })
}
