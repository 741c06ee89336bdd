//! The data path. Writers turn application writes into slices: each slice
//! buffers its bytes, and every block that fills is encoded and uploaded at
//! once (bounded in parallel) while the application goes on writing. A flush
//! uploads the tails, waits for every upload, and only then commits the
//! slice records to metadata: upload before commit, so metadata never names
//! missing data. Readers replay a chunk's slice list and fetch the blocks they
//! need through the shared cache, prefetching ahead of sequential readers.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::cache::BlockCache;
use crate::codec::{self, Codec, Layout};
use crate::meta::{build_pieces, is_inline, Meta, MetaError, Piece, Slice, CHUNK_SIZE, INLINE_ID};
use crate::object::BlockStore;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("object store: {0}")]
    Store(String),
}

impl DataError {
    pub fn errno(&self) -> i32 {
        match self {
            DataError::Meta(m) => m.errno(),
            DataError::Store(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

pub struct DataStore {
    pub meta: Arc<Meta>,
    pub blocks: Arc<BlockStore>,
    pub cache: Arc<BlockCache>,
    pub block_size: u32,
    pub codec: Codec,
    /// Slices ending within this many bytes of a file's start are inline.
    pub inline_size: u32,
    /// Bytes of write buffers allowed in flight, in KiB permits.
    buffer_budget: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    fetches: Arc<Semaphore>,
    /// Frame tables of blocks read at random, by object key: a random
    /// reader fetches a block's table once, then only the frames it needs.
    layouts: moka::future::Cache<String, Option<Arc<Layout>>>,
    /// Blocks being fetched whole right now: a random read of one of them
    /// joins that fetch rather than fetching its frames a second time.
    fetching: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Chunks being compacted by this node (inode, chunk index).
    compacting: std::sync::Mutex<std::collections::HashSet<(u64, u64)>>,
    pub capacity: u64,
}

/// A chunk whose list keeps this many records after a write is compacted:
/// every read replays the list, and each record may cost a fetch.
pub const COMPACT_AT: usize = 16;

/// Prefix of the cache keys of inline slices' bytes.
const INLINE_PREFIX: &str = "inline/";

/// Random reads are served in pieces of this many raw bytes (the smallest
/// frame size), each cached in memory on its own.
const PIECE: usize = codec::MIN_FRAME;

impl DataStore {
    pub fn new(
        meta: Arc<Meta>,
        blocks: Arc<BlockStore>,
        cache: Arc<BlockCache>,
        block_size: u32,
        codec: Codec,
        buffer_bytes: u64,
        capacity: u64,
    ) -> DataStore {
        let kib = (buffer_bytes / 1024).clamp(4096, u32::MAX as u64 / 2) as usize;
        DataStore {
            meta,
            blocks,
            cache,
            block_size,
            codec,
            inline_size: 0,
            buffer_budget: Arc::new(Semaphore::new(kib)),
            uploads: Arc::new(Semaphore::new(16)),
            fetches: Arc::new(Semaphore::new(32)),
            layouts: moka::future::Cache::new(16_384),
            fetching: std::sync::Mutex::new(std::collections::HashSet::new()),
            compacting: std::sync::Mutex::new(std::collections::HashSet::new()),
            capacity,
        }
    }

    async fn fetch_block(&self, key: String) -> Result<Bytes> {
        if let Some(id) = key.strip_prefix(INLINE_PREFIX) {
            let id: u64 = id
                .parse()
                .map_err(|_| DataError::Store(format!("bad inline key {key}")))?;
            let meta = self.meta.clone();
            return self
                .cache
                .mem_get_with(&key, async move {
                    meta.read_inline(id)
                        .await
                        .map(Bytes::from)
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| DataError::Store(e.to_string()));
        }
        let blocks = self.blocks.clone();
        let fetches = self.fetches.clone();
        let k = key.clone();
        let fetching = &self.fetching;
        self.cache
            .get(&key, move || async move {
                if let Ok(mut f) = fetching.lock() {
                    f.insert(k.clone());
                }
                let got = async {
                    let _permit = fetches.acquire_owned().await.map_err(|e| e.to_string())?;
                    blocks.get(&k).await.map_err(|e| e.to_string())
                }
                .await;
                if let Ok(mut f) = fetching.lock() {
                    f.remove(&k);
                }
                got
            })
            .await
            .map_err(|e| DataError::Store(e.to_string()))
    }

    fn being_fetched(&self, key: &str) -> bool {
        self.fetching.lock().is_ok_and(|f| f.contains(key))
    }

    /// Where a block lives: an object key, or for an inline slice (one
    /// block, kept in Redis) a key the fetch path recognises.
    fn block_key(&self, id: u64, index: u32, len: u32) -> String {
        if is_inline(id) {
            format!("{INLINE_PREFIX}{id}")
        } else {
            self.blocks.block_key(id, index, len)
        }
    }

    /// The blocks of `piece` that cover bytes [from, to) of the piece.
    fn piece_blocks(&self, p: &Piece, from: u32, to: u32) -> Vec<(String, u32, u32, u32)> {
        // (key, block length, copy start within block, copy len)
        let bs = self.block_size;
        let mut out = Vec::new();
        let mut s = p.off + from;
        let end = p.off + to;
        while s < end {
            let bi = s / bs;
            let bstart = bi * bs;
            let blen = bs.min(p.size - bstart);
            let n = (end - s).min(bstart + blen - s);
            out.push((self.block_key(p.id, bi, blen), blen, s - bstart, n));
            s += n;
        }
        out
    }

    /// The block reads that cover chunk range [off, end). Holes are left out.
    fn block_reads(&self, pieces: &[Piece], off: u32, end: u32) -> Vec<BlockRead> {
        let mut jobs = Vec::new();
        for p in pieces {
            let (ps, pe) = (p.pos, p.pos + p.len);
            if pe <= off || ps >= end || p.id == 0 {
                continue;
            }
            let s = ps.max(off);
            let e = pe.min(end);
            let mut dst = (s - off) as usize;
            for (key, block_len, at, n) in self.piece_blocks(p, s - ps, e - ps) {
                jobs.push(BlockRead {
                    key,
                    block_len: block_len as usize,
                    at: at as usize,
                    len: n as usize,
                    dst,
                });
                dst += n as usize;
            }
        }
        jobs
    }

    /// Reads [off, off+len) of a chunk described by `pieces` into `buf`,
    /// which the caller hands in zeroed: holes are left as they are.
    /// A `random` reader gets only the frames it needs of blocks that are
    /// not in memory; a sequential one gets whole blocks, which read-ahead
    /// has usually fetched already.
    pub async fn read_chunk_range(
        &self,
        pieces: &[Piece],
        off: u32,
        buf: &mut [u8],
        random: bool,
    ) -> Result<()> {
        let end = off + buf.len() as u32;
        let jobs = self.block_reads(pieces, off, end);
        // Blocks are fetched concurrently (each through the single-flight cache).
        let futs = jobs.iter().map(|j| async move {
            let key = &j.key;
            let ranged = random && j.len < j.block_len / 2 && !key.starts_with(INLINE_PREFIX);
            if ranged && !self.being_fetched(key) && !self.cache.contains(key).await {
                match self.read_frames(key, j.block_len, j.at, j.len).await {
                    Ok(b) => return Ok((b, 0)),
                    Err(e) => {
                        tracing::debug!(key, error = %e, "ranged read failed, reading the block")
                    }
                }
            }
            self.fetch_block(key.clone()).await.map(|b| (b, j.at))
        });
        let results = futures::future::join_all(futs).await;
        for (j, r) in jobs.iter().zip(results) {
            let (block, at) = r?;
            if at + j.len > block.len() {
                return Err(DataError::Store(format!(
                    "block shorter than its key says ({} < {})",
                    block.len(),
                    at + j.len
                )));
            }
            buf[j.dst..j.dst + j.len].copy_from_slice(&block[at..at + j.len]);
        }
        Ok(())
    }

    /// Raw bytes [off, off+len) of a block, fetched as 64 KiB pieces: each
    /// from memory, or the disk cache, or the frames of the stored block
    /// that hold it (one ranged GET), with every frame's CRC checked.
    async fn read_frames(
        &self,
        key: &str,
        raw_len: usize,
        off: usize,
        len: usize,
    ) -> Result<Bytes> {
        let first = off / PIECE;
        let last = (off + len).div_ceil(PIECE);
        let mut out = Vec::with_capacity(len);
        for p in first..last {
            let piece = self.read_piece(key, raw_len, p).await?;
            let (ps, pe) = (p * PIECE, p * PIECE + piece.len());
            let (s, e) = (off.max(ps), (off + len).min(pe));
            out.extend_from_slice(&piece[s - ps..e - ps]);
        }
        Ok(Bytes::from(out))
    }

    async fn read_piece(&self, key: &str, raw_len: usize, p: usize) -> Result<Bytes> {
        let piece_key = format!("{key}@{p}");
        let init = async {
            let start = p * PIECE;
            let len = PIECE.min(raw_len - start);
            if let Some(d) = self.cache.disk() {
                let k = key.to_string();
                let got =
                    tokio::task::spawn_blocking(move || d.load_range(&k, raw_len, start, len))
                        .await
                        .ok()
                        .flatten();
                if let Some(raw) = got {
                    return Ok(Bytes::from(raw));
                }
            }
            let layout = self.layout(key, raw_len).await?;
            let frames = layout.frames_for(start, len);
            if frames.is_empty() {
                return Err(DataError::Store(format!(
                    "block {key}: no frame holds byte {start}"
                )));
            }
            let stored = {
                let _permit = self
                    .fetches
                    .acquire()
                    .await
                    .map_err(|e| DataError::Store(e.to_string()))?;
                self.blocks
                    .get_range(key, layout.stored_range(&frames))
                    .await
                    .map_err(|e| DataError::Store(e.to_string()))?
            };
            let l2 = layout.clone();
            let f2 = frames.clone();
            let raw = tokio::task::spawn_blocking(move || l2.decode_frames(f2, &stored))
                .await
                .map_err(|e| DataError::Store(e.to_string()))?
                .map_err(|e| DataError::Store(format!("block {key}: {e}")))?;
            // The frames decoded hold other pieces too: keep them all.
            let raw = Bytes::from(raw);
            let base = frames.start * layout.frame_size;
            let mut mine = Bytes::new();
            let mut at = 0;
            while at < raw.len() {
                let q = (base + at) / PIECE;
                let n = PIECE.min(raw.len() - at);
                let part = raw.slice(at..at + n);
                if q == p {
                    mine = part;
                } else {
                    self.cache.insert_mem(&format!("{key}@{q}"), part).await;
                }
                at += n;
            }
            Ok(mine)
        };
        self.cache
            .mem_get_with(&piece_key, async {
                init.await.map_err(|e: DataError| e.to_string())
            })
            .await
            .map_err(|e| DataError::Store(e.to_string()))
    }

    /// The frame table of a stored block (one small ranged GET, then cached).
    async fn layout(&self, key: &str, raw_len: usize) -> Result<Arc<Layout>> {
        let found = self
            .layouts
            .try_get_with(key.to_string(), async {
                let prefix = Layout::prefix_len(raw_len);
                let head = self
                    .blocks
                    .get_range(key, 0..prefix)
                    .await
                    .map_err(|e| e.to_string())?;
                Layout::parse(&head)
                    .map(|l| l.map(Arc::new))
                    .map_err(|e| format!("block {key}: {e}"))
            })
            .await
            .map_err(|e| DataError::Store(e.to_string()))?;
        found.ok_or_else(|| DataError::Store(format!("block {key} has no frame table")))
    }

    /// Starts fetching the blocks that cover chunk range [off, off+len) into
    /// the cache without waiting for them.
    pub fn prefetch(self: &Arc<Self>, pieces: &[Piece], off: u32, len: u32) {
        let mut keys: Vec<String> = self
            .block_reads(pieces, off, off.saturating_add(len))
            .into_iter()
            .map(|j| j.key)
            .collect();
        keys.dedup();
        for key in keys {
            let me = self.clone();
            tokio::spawn(async move {
                if me.cache.contains(&key).await {
                    return;
                }
                if let Err(e) = me.fetch_block(key.clone()).await {
                    tracing::debug!(key, error = %e, "prefetch failed");
                }
            });
        }
    }

    /// Compacts a chunk in the background unless this node already is.
    pub fn spawn_compaction(self: &Arc<Self>, ino: u64, indx: u64) {
        let fresh = self
            .compacting
            .lock()
            .is_ok_and(|mut set| set.insert((ino, indx)));
        if !fresh {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me.compact_chunk(ino, indx).await {
                Ok(n) => tracing::debug!(ino, indx, records = n, "compacted chunk"),
                Err(e) => tracing::warn!(ino, indx, error = %e, "compaction failed"),
            }
            if let Ok(mut set) = me.compacting.lock() {
                set.remove(&(ino, indx));
            }
        });
    }

    /// Rewrites the bytes a chunk's records describe as one new slice and
    /// swaps it in atomically for those records (records appended meanwhile
    /// stay on top). The old slices are journaled for deferred deletion, so
    /// readers holding the old list keep working for the grace period.
    /// Returns how many records were merged (0: nothing to do or lost a race).
    pub async fn compact_chunk(self: &Arc<Self>, ino: u64, indx: u64) -> Result<usize> {
        let records = self.meta.read_chunk(ino, indx).await?;
        if records.len() < 2 {
            return Ok(0);
        }
        let start = records.iter().map(|r| r.pos).min().unwrap_or(0);
        let end = records.iter().map(|r| r.pos + r.len).max().unwrap_or(0);
        if end <= start {
            return Ok(0);
        }
        let pieces = build_pieces(&records);
        let id = self.meta.new_slice_id().await?;
        let bs = self.block_size;
        let mut uploads = Vec::new();
        let mut at = start;
        let mut bi = 0;
        while at < end {
            let n = bs.min(end - at);
            let permit = self
                .buffer_budget
                .clone()
                .acquire_many_owned(n.div_ceil(1024))
                .await
                .map_err(|e| DataError::Store(e.to_string()))?;
            let mut raw = vec![0u8; n as usize];
            self.read_chunk_range(&pieces, at, &mut raw, false).await?;
            uploads.push(spawn_upload(self, id, bi, raw, vec![permit]));
            at += n;
            bi += 1;
        }
        for u in uploads {
            u.await
                .map_err(|e| DataError::Store(format!("upload task failed: {e}")))??;
        }
        let size = end - start;
        let new = Slice {
            pos: start,
            id,
            size,
            off: 0,
            len: size,
        };
        if self.meta.compact_chunk(ino, indx, &records, &new).await? {
            Ok(records.len())
        } else {
            Ok(0)
        }
    }

    pub async fn chunk_pieces(&self, ino: u64, indx: u64) -> Result<Vec<Piece>> {
        Ok(build_pieces(&self.meta.read_chunk(ino, indx).await?))
    }

    /// Deletes the objects of slices nobody refers to any more.
    pub async fn delete_slice_objects(&self, slices: &[Slice]) -> Result<()> {
        for s in slices {
            if s.id == 0 {
                continue;
            }
            if is_inline(s.id) {
                self.meta.delete_inline(s.id).await?;
                continue;
            }
            let bs = self.block_size;
            let n = s.size.div_ceil(bs);
            for bi in 0..n {
                let blen = bs.min(s.size - bi * bs);
                self.blocks
                    .delete(&self.blocks.block_key(s.id, bi, blen))
                    .await
                    .map_err(|e| DataError::Store(e.to_string()))?;
            }
        }
        Ok(())
    }
}

/// Part of one block a read needs: `len` bytes from `at` within the block
/// (of `block_len` raw bytes), copied to `dst` in the caller's buffer.
struct BlockRead {
    key: String,
    block_len: usize,
    at: usize,
    len: usize,
    dst: usize,
}

/// One slice being written: bytes buffered since the last uploaded block.
struct SliceBuf {
    indx: u64,
    pos: u32,
    id: u64,
    len: u32,
    uploaded: u32,
    buf: Vec<u8>,
    permits: Vec<OwnedSemaphorePermit>,
}

/// Pending writes of one inode on this node, shared by all its handles.
pub struct FileWriter {
    ino: u64,
    slices: Vec<SliceBuf>,
    uploads: Vec<JoinHandle<Result<()>>>,
    /// Highest end offset written but not yet committed.
    pub pending_len: u64,
    buffered: u64,
}

const MAX_PENDING_SLICES: usize = 64;

impl FileWriter {
    pub fn new(ino: u64) -> FileWriter {
        FileWriter {
            ino,
            slices: Vec::new(),
            uploads: Vec::new(),
            pending_len: 0,
            buffered: 0,
        }
    }

    pub fn is_dirty(&self) -> bool {
        !self.slices.is_empty()
    }

    /// Buffers `data` at file offset `off`; uploads blocks as they fill.
    /// Returns true when the caller should flush (too many small slices).
    pub async fn write(&mut self, ds: &Arc<DataStore>, off: u64, data: &[u8]) -> Result<bool> {
        let mut done = 0usize;
        while done < data.len() {
            let pos_in_file = off + done as u64;
            let indx = pos_in_file / CHUNK_SIZE;
            let cpos = (pos_in_file % CHUNK_SIZE) as u32;
            let room = (CHUNK_SIZE - cpos as u64) as usize;
            let n = room.min(data.len() - done);
            let part = &data[done..done + n];
            let append = matches!(self.slices.last(),
                Some(s) if s.indx == indx && s.pos + s.len == cpos);
            if !append {
                let id = ds.meta.new_slice_id().await?;
                self.slices.push(SliceBuf {
                    indx,
                    pos: cpos,
                    id,
                    len: 0,
                    uploaded: 0,
                    buf: Vec::new(),
                    permits: Vec::new(),
                });
            }
            let kib = (n as u32).div_ceil(1024);
            let permit = ds
                .buffer_budget
                .clone()
                .acquire_many_owned(kib)
                .await
                .map_err(|e| DataError::Store(e.to_string()))?;
            let bs = ds.block_size;
            let mut spawned = Vec::new();
            if let Some(s) = self.slices.last_mut() {
                s.permits.push(permit);
                // Fill the current block; each one that fills is handed to an
                // upload task whole (no copy) and a fresh buffer starts.
                let mut rest = part;
                while !rest.is_empty() {
                    let room = (bs - (s.len - s.uploaded)) as usize;
                    let take = room.min(rest.len());
                    if s.buf.capacity() == 0 {
                        s.buf.reserve_exact(bs as usize);
                    }
                    s.buf.extend_from_slice(&rest[..take]);
                    s.len += take as u32;
                    rest = &rest[take..];
                    if s.len - s.uploaded == bs {
                        let raw = std::mem::take(&mut s.buf);
                        let bi = s.uploaded / bs;
                        s.uploaded += bs;
                        // Permits are released once this block is in the store.
                        let held = std::mem::take(&mut s.permits);
                        spawned.push(spawn_upload(ds, s.id, bi, raw, held));
                    }
                }
            }
            self.uploads.extend(spawned);
            self.buffered += n as u64;
            self.pending_len = self.pending_len.max(pos_in_file + n as u64);
            done += n;
        }
        Ok(self.slices.len() >= MAX_PENDING_SLICES)
    }

    /// Uploads the tails, waits for all uploads, commits all slices in order.
    pub async fn flush(&mut self, ds: &Arc<DataStore>) -> Result<Option<crate::meta::Attr>> {
        if self.slices.is_empty() {
            return Ok(None);
        }
        let bs = ds.block_size;
        let mut inline: Vec<Option<Vec<u8>>> = Vec::with_capacity(self.slices.len());
        for s in self.slices.iter_mut() {
            // A small file's bytes go to Redis with the commit: one round
            // trip instead of an object PUT and then the commit.
            let small = s.indx == 0 && s.uploaded == 0 && s.pos + s.len <= ds.inline_size;
            if small && s.len > 0 {
                s.id |= INLINE_ID;
                s.uploaded = s.len;
                inline.push(Some(std::mem::take(&mut s.buf)));
                continue;
            }
            inline.push(None);
            if s.len > s.uploaded {
                let raw = std::mem::take(&mut s.buf);
                let bi = s.uploaded / bs;
                s.uploaded = s.len;
                let held = std::mem::take(&mut s.permits);
                self.uploads.push(spawn_upload(ds, s.id, bi, raw, held));
            }
        }
        let mut first_err = None;
        for h in self.uploads.drain(..) {
            let r = match h.await {
                Ok(r) => r,
                Err(e) => Err(DataError::Store(format!("upload task failed: {e}"))),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            // The data never reached the store: drop it rather than commit a
            // slice that points at missing blocks.
            self.slices.clear();
            self.pending_len = 0;
            return Err(e);
        }
        let records: Vec<(u64, Slice, Option<Vec<u8>>)> = self
            .slices
            .iter()
            .zip(inline)
            .map(|(s, data)| {
                let slice = Slice {
                    pos: s.pos,
                    id: s.id,
                    size: s.len,
                    off: 0,
                    len: s.len,
                };
                (s.indx, slice, data)
            })
            .collect();
        self.slices.clear();
        self.buffered = 0;
        self.pending_len = 0;
        let (attr, kept) = ds
            .meta
            .write_slices(self.ino, &records, ds.capacity)
            .await?;
        for (indx, n) in kept {
            if n >= COMPACT_AT {
                ds.spawn_compaction(self.ino, indx);
            }
        }
        Ok(Some(attr))
    }
}

fn spawn_upload(
    ds: &Arc<DataStore>,
    id: u64,
    index: u32,
    raw: Vec<u8>,
    held: Vec<OwnedSemaphorePermit>,
) -> JoinHandle<Result<()>> {
    let ds = ds.clone();
    tokio::spawn(async move {
        let _held = held;
        let _slot = ds
            .uploads
            .acquire()
            .await
            .map_err(|e| DataError::Store(e.to_string()))?;
        let key = ds.blocks.block_key(id, index, raw.len() as u32);
        let codec = ds.codec;
        let raw = Bytes::from(raw);
        let r2 = raw.clone();
        let parts = tokio::task::spawn_blocking(move || codec::encode_parts(&r2, codec))
            .await
            .map_err(|e| DataError::Store(e.to_string()))?;
        ds.blocks
            .put_parts(&key, parts)
            .await
            .map_err(|e| DataError::Store(e.to_string()))?;
        ds.cache.insert_written(&key, raw).await;
        Ok(())
    })
}
