//! The data path. `writer` turns application writes into slices: bytes are
//! buffered per file, every block that fills is encoded and uploaded at once
//! (bounded in parallel, retried while the failure is transient), and a
//! flush commits the slice records only after every block is stored: upload
//! before commit, so metadata never names missing data. This file owns the
//! shared store (budgets, the block fetch path) and the reader: a chunk's
//! slice list is replayed and the blocks a read needs come through the
//! shared cache, or from a writer's buffers for data not yet committed.

pub mod staging;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use crate::cache::{BlockCache, Fetched};
use crate::codec::{self, Codec, Layout};
use crate::error::{Error, Result};
use crate::meta::{build_pieces, is_inline, Meta, Piece, Slice};
use crate::object::BlockStore;

pub use writer::FileWriter;

/// Marks the local id of a slice still being written on this node: it only
/// appears in the slice lists a reader replays here, never in Redis. Below
/// INLINE_ID, so the two never mix.
pub const PENDING_ID: u64 = 1 << 51;

pub fn is_pending(id: u64) -> bool {
    id & PENDING_ID != 0 && !is_inline(id)
}

/// Where a block of a slice not yet committed can be read: bytes still held
/// by the writer, its write-back staged copy, or (once uploaded) its object.
#[derive(Clone, Debug)]
pub enum PendingSource {
    Mem(Bytes),
    Staged(std::path::PathBuf),
    Key(String),
}

/// Blocks of this node's uncommitted slices, by (local id, block index).
pub type PendingBlocks = HashMap<(u64, u32), PendingSource>;

/// Bytes of write buffers in flight, counted as they are held: a write
/// takes what it buffers, a stored block gives its bytes back. When the
/// budget runs dry, `pressure` asks the flusher to write partial buffers
/// out, so a writer never waits for memory that only a flush could free.
pub struct Budget {
    sem: Arc<Semaphore>,
    pub pressure: Notify,
}

/// Budget bytes held by a buffer; given back when dropped.
#[derive(Debug)]
pub struct Held {
    sem: Arc<Semaphore>,
    n: usize,
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.n
    }

    /// Moves `k` bytes (at most all) of this hold into a new one.
    pub fn split(&mut self, k: usize) -> Held {
        let k = k.min(self.n);
        self.n -= k;
        Held {
            sem: self.sem.clone(),
            n: k,
        }
    }

    pub fn absorb(&mut self, mut other: Held) {
        self.n += other.n;
        other.n = 0;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.n > 0 {
            self.sem.add_permits(self.n);
        }
    }
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        Budget {
            sem: Arc::new(Semaphore::new(
                bytes.min(Semaphore::MAX_PERMITS as u64) as usize
            )),
            pressure: Notify::new(),
        }
    }

    pub fn empty(&self) -> Held {
        Held {
            sem: self.sem.clone(),
            n: 0,
        }
    }

    /// Takes `n` bytes, asking for a flush first when they are not free.
    pub async fn take(&self, n: usize) -> Result<Held> {
        let n32 = n.min(u32::MAX as usize) as u32;
        let permit = match self.sem.clone().try_acquire_many_owned(n32) {
            Ok(p) => p,
            Err(_) => {
                self.pressure.notify_one();
                crate::metrics::BUFFER_WAITS.add(1);
                self.sem
                    .clone()
                    .acquire_many_owned(n32)
                    .await
                    .map_err(|e| Error::internal(format!("write budget closed: {e}")))?
            }
        };
        permit.forget();
        Ok(Held {
            sem: self.sem.clone(),
            n: n32 as usize,
        })
    }

    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

pub struct DataStore {
    pub meta: Arc<Meta>,
    pub blocks: Arc<BlockStore>,
    pub cache: Arc<BlockCache>,
    pub block_size: u32,
    pub codec: Codec,
    /// Slices ending within this many bytes of a file's start are inline.
    pub inline_size: u32,
    /// Bytes of write buffers allowed in flight.
    pub budget: Budget,
    /// How long transient upload and commit failures are retried before a
    /// flush reports EIO (the data stays buffered and is retried later).
    pub retry_for: Duration,
    uploads: Arc<Semaphore>,
    fetches: Arc<Semaphore>,
    /// Frame tables of blocks read at random, by object key: a random
    /// reader fetches a block's table once, then only the frames it needs.
    layouts: moka::future::Cache<String, Option<Arc<Layout>>>,
    /// Blocks being fetched whole right now: a random read of one of them
    /// joins that fetch rather than fetching its frames a second time.
    fetching: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Blocks a background fill is fetching into the disk cache right now,
    /// each with a signal for when it is there: a reader of one of them
    /// waits for it rather than fetching its bytes a second time.
    /// Ranged reads of a block going to the store are counted here too: a
    /// fill waits for them and keeps what they fetched, and a ranged read
    /// of a block being filled waits for the fill.
    flights: std::sync::Mutex<HashMap<String, Flight>>,
    /// A ranged read of some block ended.
    ranged_done: Notify,
    /// Blocks background fills fetch at once, node-wide.
    fills: Arc<Semaphore>,
    /// Read-ahead budget, node-wide: bytes of blocks prefetched (or being
    /// prefetched) that no read has used yet. However many files are read
    /// at once, read-ahead never holds more; a prefetch waits for room.
    ahead_budget: Arc<Semaphore>,
    ahead_bytes: usize,
    /// Blocks read ahead and not read yet, each with its charge on
    /// `ahead_budget` (None while its prefetch waits for room) and when it
    /// was charged. A read of the block gives the charge back; a charge
    /// nobody read for `AHEAD_STALE` is given back by the next prefetch
    /// that has to wait (the reader went away).
    ahead: std::sync::Mutex<HashMap<String, Ahead>>,
    /// Chunks being compacted by this node (inode, chunk index); see
    /// `maintenance::compaction`.
    pub(crate) compacting: std::sync::Mutex<std::collections::HashSet<(u64, u64)>>,
    pub capacity: u64,
    /// Write-back staging area (`mount --writeback`), and where batches
    /// a crashed daemon staged wait to be committed.
    pub staging: Option<Arc<staging::Staging>>,
}

pub use crate::maintenance::compaction::COMPACT_AT;

/// Prefix of the cache keys of inline slices' bytes.
const INLINE_PREFIX: &str = "inline/";

/// Random reads are served in pieces of this many raw bytes (the smallest
/// frame size), each cached in memory on its own.
const PIECE: usize = codec::MIN_FRAME;

/// A prefetched block no read used for this long stops counting against
/// the read-ahead budget.
const AHEAD_STALE: Duration = Duration::from_secs(10);

/// Blocks fetched at once by background fills (node-wide): with 4 MiB
/// blocks at most 8 x (stored + raw) = 64 MiB in flight.
const FILL_CONCURRENCY: usize = 8;

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
        // A single write (up to 1 MiB) plus a few blocks must always fit.
        let budget = buffer_bytes.max(4 * block_size as u64 + (2 << 20));
        // Read-ahead may fill half the memory cache (prefetched blocks wait
        // there for their reader and must not push each other out), and
        // always has room for two blocks.
        let ahead_bytes = (cache.mem_capacity() / 2)
            .max(2 * block_size as u64)
            .min(Semaphore::MAX_PERMITS as u64) as usize;
        let mut store = DataStore {
            meta,
            blocks,
            cache,
            block_size,
            codec,
            inline_size: 0,
            budget: Budget::new(budget),
            retry_for: Duration::from_secs(30),
            uploads: Arc::new(Semaphore::new(16)),
            fetches: Arc::new(Semaphore::new(32)),
            layouts: moka::future::Cache::new(16_384),
            fetching: std::sync::Mutex::new(std::collections::HashSet::new()),
            flights: std::sync::Mutex::new(HashMap::new()),
            ranged_done: Notify::new(),
            fills: Arc::new(Semaphore::new(FILL_CONCURRENCY)),
            ahead_budget: Arc::new(Semaphore::new(0)),
            ahead_bytes: 0,
            ahead: std::sync::Mutex::new(HashMap::new()),
            compacting: std::sync::Mutex::new(std::collections::HashSet::new()),
            capacity,
            staging: None,
        };
        store.ahead_budget = Arc::new(Semaphore::new(ahead_bytes));
        store.ahead_bytes = ahead_bytes;
        store
    }

    /// A read used `key`: its read-ahead charge (if any) is given back.
    fn ahead_used(&self, key: &str) {
        if let Ok(mut a) = self.ahead.lock() {
            if !a.is_empty() {
                a.remove(key);
            }
        }
    }

    /// Gives back the charges of prefetched blocks nobody read in time.
    fn ahead_sweep(&self) {
        let now = std::time::Instant::now();
        if let Ok(mut a) = self.ahead.lock() {
            a.retain(|_, e| e.permit.is_none() || now.duration_since(e.since) < AHEAD_STALE);
        }
    }

    /// Room for `n` bytes of read-ahead for `key`, waiting while the
    /// budget is spent. None when a read used the block meanwhile (or
    /// another prefetch of it holds the charge): nothing to fetch then.
    async fn ahead_charge(&self, key: &str, n: usize) -> Option<()> {
        let n = n.min(self.ahead_bytes).min(u32::MAX as usize) as u32;
        let permit = loop {
            let acquire = self.ahead_budget.clone().acquire_many_owned(n);
            match tokio::time::timeout(Duration::from_secs(1), acquire).await {
                Ok(Ok(p)) => break p,
                Ok(Err(_)) => return None,
                Err(_) => self.ahead_sweep(),
            }
        };
        let mut a = self.ahead.lock().ok()?;
        let e = a.get_mut(key)?;
        if e.permit.is_some() {
            return None;
        }
        e.permit = Some(permit);
        e.since = std::time::Instant::now();
        Some(())
    }

    /// Runs `op` until it succeeds, fails for a reason retrying cannot fix,
    /// or `retry_for` has passed; waits back off from 50 ms to 5 s. An
    /// attempt is cut off at the deadline (but gets at least
    /// `MIN_ATTEMPT`), so the whole takes at most `retry_for` + `MIN_ATTEMPT`
    /// even when each attempt retries inside (Redis requests do).
    pub async fn retry<T, F, Fut>(&self, what: &str, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.retry_until(tokio::time::Instant::now() + self.retry_for, what, op)
            .await
    }

    /// `retry` with a deadline shared by several steps (a flush's slice ids
    /// and commit), so their waits do not add up.
    pub async fn retry_until<T, F, Fut>(
        &self,
        deadline: tokio::time::Instant,
        what: &str,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        const MIN_ATTEMPT: Duration = Duration::from_secs(5);
        let mut wait = Duration::from_millis(50);
        loop {
            let limit = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(MIN_ATTEMPT);
            let attempt = tokio::time::timeout(limit, op())
                .await
                .unwrap_or_else(|_| Err(Error::transient(format!("no answer within {limit:?}"))));
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && tokio::time::Instant::now() + wait < deadline => {
                    tracing::debug!(what, error = %e, "transient failure; retrying");
                    crate::metrics::RETRIES.add(1);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.context(what)),
            }
        }
    }

    async fn fetch_block(&self, key: String) -> Result<Bytes> {
        if let Some(id) = key.strip_prefix(INLINE_PREFIX) {
            let id: u64 = id
                .parse()
                .map_err(|_| Error::internal(format!("bad inline key {key}")))?;
            let meta = self.meta.clone();
            return self
                .cache
                .mem_get_with(&key, async move {
                    meta.read_inline(id)
                        .await
                        .map(Bytes::from)
                        .map_err(Error::from)
                })
                .await;
        }
        self.wait_fill(&key).await;
        let k = key.clone();
        let fetching = &self.fetching;
        self.cache
            .get(&key, move || async move {
                if let Ok(mut f) = fetching.lock() {
                    f.insert(k.clone());
                }
                let got = self.fetch_whole(&k).await;
                if let Ok(mut f) = fetching.lock() {
                    f.remove(&k);
                }
                got
            })
            .await
    }

    /// A whole block from the store: when this node already holds some of
    /// its frames (random reads fetched them), those are kept and only the
    /// others are fetched, so no byte of a block comes twice while cached.
    async fn fetch_whole(&self, key: &str) -> Result<Fetched> {
        if let Some(raw_len) = raw_len_of(key) {
            match self.assemble(key, raw_len).await {
                Ok(Some(raw)) => return Ok(Fetched::Raw(raw)),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(key, error = %e, "assembling from frames failed, reading the block")
                }
            }
        }
        self.fetch_stored(key, None).await.map(Fetched::Stored)
    }

    /// The raw block put together from its pieces in memory and ranged GETs
    /// of its other frames; None when its frame table is not known here or
    /// no frame of it is in memory (one whole GET is cheaper then).
    async fn assemble(&self, key: &str, raw_len: usize) -> Result<Option<Bytes>> {
        let Some(Some(layout)) = self.layouts.get(key).await else {
            return Ok(None);
        };
        if layout.raw_len != raw_len || layout.frame_size % PIECE != 0 {
            return Ok(None);
        }
        let per = layout.frame_size / PIECE;
        let pieces = raw_len.div_ceil(PIECE);
        let mut have: Vec<Option<Vec<Bytes>>> = Vec::with_capacity(layout.frame_count());
        for f in 0..layout.frame_count() {
            let mut parts = Vec::with_capacity(per);
            for p in f * per..((f + 1) * per).min(pieces) {
                match self.cache.mem_peek(&format!("{key}@{p}")).await {
                    Some(b) => parts.push(b),
                    None => break,
                }
            }
            let whole = parts.len() == ((f + 1) * per).min(pieces) - f * per;
            have.push(whole.then_some(parts));
        }
        if have.iter().all(|h| h.is_none()) {
            return Ok(None);
        }
        let mut raw = vec![0u8; raw_len];
        // Runs of missing frames, each one ranged GET.
        let mut runs = Vec::new();
        let mut f = 0;
        while f < have.len() {
            if let Some(parts) = &have[f] {
                let mut at = f * layout.frame_size;
                for b in parts {
                    let n = b.len().min(raw_len - at);
                    raw[at..at + n].copy_from_slice(&b[..n]);
                    at += n;
                }
                f += 1;
                continue;
            }
            let start = f;
            while f < have.len() && have[f].is_none() {
                f += 1;
            }
            runs.push(start..f);
        }
        let got = futures::future::join_all(runs.into_iter().map(|r| {
            let layout = layout.clone();
            async move {
                let stored = self
                    .fetch_stored(key, Some(layout.stored_range(&r)))
                    .await?;
                let r2 = r.clone();
                let dec = tokio::task::spawn_blocking(move || layout.decode_frames(r2, &stored))
                    .await?
                    .map_err(|e| Error::from(e).context(format!("block {key}")))?;
                Ok::<_, Error>((r, dec))
            }
        }))
        .await;
        for g in got {
            let (r, dec) = g?;
            let at = r.start * layout.frame_size;
            if at + dec.len() > raw.len() {
                return Err(Error::corrupt(format!("block {key}: frames past its end")));
            }
            raw[at..at + dec.len()].copy_from_slice(&dec);
        }
        Ok(Some(Bytes::from(raw)))
    }

    /// Registers a ranged read of `key` going to the store, or hands back
    /// the signal of the fill fetching it now.
    fn begin_ranged(
        &self,
        key: &str,
    ) -> std::result::Result<RangedFlight<'_>, tokio::sync::watch::Receiver<bool>> {
        if let Ok(mut f) = self.flights.lock() {
            let e = f.entry(key.to_string()).or_default();
            if let Some(rx) = &e.fill {
                return Err(rx.clone());
            }
            e.ranged += 1;
        }
        Ok(RangedFlight {
            store: self,
            key: key.to_string(),
        })
    }

    /// Waits while a background fill is fetching `key` (it will be on disk).
    async fn wait_fill(&self, key: &str) {
        let rx = self
            .flights
            .lock()
            .ok()
            .and_then(|f| f.get(key).and_then(|e| e.fill.clone()));
        if let Some(mut rx) = rx {
            // The filler dropping its sender (failed) ends the wait too.
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// Fetches whichever of `blocks` (key, raw length) this node does not
    /// hold yet into the disk cache, a few at a time, without pushing
    /// anything out of memory. Stops at the first failure or when the disk
    /// cache refuses (full). Returns how many blocks it fetched.
    pub async fn fill(self: &Arc<Self>, blocks: Vec<String>) -> Result<usize> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut fetched = 0;
        let mut failed = None;
        for key in blocks {
            if key.starts_with(INLINE_PREFIX) || self.cache.has(&key) || self.being_fetched(&key) {
                continue;
            }
            // Never fetch what the disk cache would refuse.
            let room = raw_len_of(&key).unwrap_or(self.block_size as usize) as u64
                * FILL_CONCURRENCY as u64;
            if !self.cache.disk().is_some_and(|d| d.has_room(room)) {
                failed = Some(Error::transient("the disk cache is full"));
                break;
            }
            let permit = self
                .fills
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
            // Reap what finished; stop early on a failure.
            while let Some(r) = tasks.try_join_next() {
                match r.map_err(Error::from).and_then(|r| r) {
                    Ok(true) => fetched += 1,
                    Ok(false) => {}
                    Err(e) => failed = Some(e),
                }
            }
            if failed.is_some() {
                break;
            }
            let me = self.clone();
            tasks.spawn(async move {
                let r = me.fill_block(key).await;
                drop(permit);
                r
            });
        }
        while let Some(r) = tasks.join_next().await {
            match r.map_err(Error::from).and_then(|r| r) {
                Ok(true) => fetched += 1,
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(fetched),
        }
    }

    /// One block of a fill; false when it was not fetched (held already or
    /// being fetched by someone else).
    async fn fill_block(&self, key: String) -> Result<bool> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        // Claim the block, then let ranged reads of it already under way
        // finish: their frames are kept, not fetched again.
        loop {
            let done = self.ranged_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            {
                let Ok(mut f) = self.flights.lock() else {
                    return Ok(false);
                };
                let e = f.entry(key.clone()).or_default();
                if e.fill.is_some() && !e.fill.as_ref().is_some_and(|r| r.same_channel(&rx)) {
                    return Ok(false);
                }
                e.fill = Some(rx.clone());
                if e.ranged == 0 {
                    break;
                }
            }
            done.await;
        }
        let got = async {
            if self.cache.has(&key) || self.being_fetched(&key) {
                return Ok(false);
            }
            let block = match self.fetch_whole(&key).await? {
                Fetched::Raw(raw) => Fetched::Raw(raw),
                Fetched::Stored(stored) => {
                    // Checked (decoded) before it is kept; a block stored
                    // raw is kept as it came, a compressed one decoded.
                    let pool = self.cache.pool().clone();
                    let (k2, s2) = (key.clone(), stored.clone());
                    let raw = tokio::task::spawn_blocking(move || {
                        crate::cache::decode_block(&pool, s2, raw_len_of(&k2))
                            .map_err(|e| e.context(format!("block {k2}")))
                    })
                    .await??;
                    if codec::is_plain_raw(&stored) {
                        Fetched::Stored(stored)
                    } else {
                        Fetched::Raw(raw)
                    }
                }
            };
            if !self.cache.store_disk(&key, block).await {
                return Err(Error::transient("the disk cache refused a block (full?)"));
            }
            crate::metrics::FILL_BLOCKS.add(1);
            Ok(true)
        }
        .await;
        if let Ok(mut f) = self.flights.lock() {
            if let Some(e) = f.get_mut(&key) {
                e.fill = None;
                if e.ranged == 0 {
                    f.remove(&key);
                }
            }
        }
        let _ = tx.send(true);
        got
    }

    /// Largest file a background fill takes on: a quarter of the disk
    /// cache (0 without one: filling memory would push out what readers use).
    /// (bytes charged, budget) of read-ahead, node-wide (for the metrics).
    pub fn readahead_usage(&self) -> (u64, u64) {
        let free = self.ahead_budget.available_permits().min(self.ahead_bytes);
        ((self.ahead_bytes - free) as u64, self.ahead_bytes as u64)
    }

    pub fn fill_limit(&self) -> u64 {
        self.cache.disk().map(|d| d.capacity() / 4).unwrap_or(0)
    }

    /// An object, or bytes `range` of it, from the store. Transient
    /// failures (5xx, resets, bodies cut short) are retried for `retry_for`,
    /// as uploads are: a store that throttles or restarts for a few seconds
    /// delays readers instead of failing them. No fetch permit is held
    /// while backing off.
    async fn fetch_stored(
        &self,
        key: &str,
        range: Option<std::ops::Range<usize>>,
    ) -> Result<Bytes> {
        self.retry("read", || async {
            let _permit = self
                .fetches
                .acquire()
                .await
                .map_err(|e| Error::internal(e.to_string()))?;
            match &range {
                None => self.blocks.get_pooled(key, self.cache.pool()).await,
                Some(r) => self.blocks.get_range(key, r.clone()).await,
            }
            .map_err(Error::from)
        })
        .await
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

    /// The blocks of `piece` that cover bytes [from, to) of the piece:
    /// (block index, block length, copy start within block, copy length).
    fn piece_blocks(&self, p: &Piece, from: u32, to: u32) -> Vec<(u32, u32, u32, u32)> {
        let bs = self.block_size;
        let mut out = Vec::new();
        let mut s = p.off + from;
        let end = p.off + to;
        while s < end {
            let bi = s / bs;
            let bstart = bi * bs;
            let blen = bs.min(p.size - bstart);
            let n = (end - s).min(bstart + blen - s);
            out.push((bi, blen, s - bstart, n));
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
            let pending = is_pending(p.id);
            for (bi, block_len, at, n) in self.piece_blocks(p, s - ps, e - ps) {
                jobs.push(BlockRead {
                    key: if pending {
                        String::new()
                    } else {
                        self.block_key(p.id, bi, block_len)
                    },
                    pending: pending.then_some((p.id, bi)),
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
    /// See `read_chunk_parts`.
    pub async fn read_chunk_range(
        &self,
        pieces: &[Piece],
        off: u32,
        buf: &mut [u8],
        random: bool,
        pending: &PendingBlocks,
    ) -> Result<bool> {
        let (slices, missed) = self
            .read_chunk_slices(pieces, off, buf.len() as u32, random, pending)
            .await?;
        for (dst, b) in slices {
            buf[dst..dst + b.len()].copy_from_slice(&b);
        }
        Ok(missed)
    }

    /// Reads [off, off+len) of a chunk described by `pieces` as slices of
    /// the blocks that hold the bytes (shared with the cache: no copy),
    /// appended to `out` in order; holes are slices of a static zero page.
    /// Their lengths add up to `len`. A reply is sent from them with one
    /// writev, so the kernel's copy is the only one on the read path.
    ///
    /// A `random` reader gets only the frames it needs of blocks that are
    /// not in memory; a sequential one gets whole blocks, which read-ahead
    /// has usually fetched already. Pieces of slices this node has not
    /// committed yet are read from `pending`.
    ///
    /// True when a random read had to fetch frames from the store (a miss
    /// of every cache), which the read-ahead policy counts.
    pub async fn read_chunk_parts(
        &self,
        pieces: &[Piece],
        off: u32,
        len: u32,
        random: bool,
        pending: &PendingBlocks,
        out: &mut Vec<Bytes>,
    ) -> Result<bool> {
        let (mut slices, missed) = self
            .read_chunk_slices(pieces, off, len, random, pending)
            .await?;
        slices.sort_by_key(|(dst, _)| *dst);
        let mut at = 0;
        for (dst, b) in slices {
            if dst < at {
                return Err(Error::internal(format!(
                    "overlapping block reads at {dst} (< {at})"
                )));
            }
            push_zeros(out, dst - at);
            at = dst + b.len();
            out.push(b);
        }
        push_zeros(out, (len as usize).saturating_sub(at));
        Ok(missed)
    }

    /// The block parts a read of [off, off+len) needs, each with where it
    /// goes in the caller's range. Holes are left out.
    async fn read_chunk_slices(
        &self,
        pieces: &[Piece],
        off: u32,
        len: u32,
        random: bool,
        pending: &PendingBlocks,
    ) -> Result<(Vec<(usize, Bytes)>, bool)> {
        let end = off + len;
        let jobs = self.block_reads(pieces, off, end);
        let missed = std::sync::atomic::AtomicBool::new(false);
        let missed = &missed;
        // Blocks are fetched concurrently (each through the single-flight cache).
        let futs = jobs.iter().map(|j| async move {
            if let Some((local, index)) = j.pending {
                return match pending.get(&(local, index)) {
                    Some(PendingSource::Mem(b)) => Ok((b.clone(), j.at)),
                    // Gone when its batch committed meanwhile: the caller
                    // reads again with a fresh slice list.
                    Some(PendingSource::Staged(p)) => {
                        staging::load_block(p.clone()).await.map(|b| (b, j.at))
                    }
                    Some(PendingSource::Key(k)) => {
                        self.fetch_block(k.clone()).await.map(|b| (b, j.at))
                    }
                    None => Err(Error::internal(format!(
                        "block {index} of a pending slice is missing"
                    ))),
                };
            }
            let key = &j.key;
            let ranged = random && j.len < j.block_len / 2 && !key.starts_with(INLINE_PREFIX);
            if ranged {
                self.wait_fill(key).await;
            }
            if ranged && !self.being_fetched(key) && !self.cache.contains(key).await {
                match self
                    .read_frames(key, j.block_len, j.at, j.len, missed)
                    .await
                {
                    Ok(b) => return Ok((b, 0)),
                    Err(e) => {
                        tracing::debug!(key, error = %e, "ranged read failed, reading the block")
                    }
                }
            }
            self.fetch_block(key.clone()).await.map(|b| (b, j.at))
        });
        let results = futures::future::join_all(futs).await;
        for j in &jobs {
            if j.pending.is_none() {
                self.ahead_used(&j.key);
            }
        }
        let mut slices = Vec::with_capacity(jobs.len());
        for (j, r) in jobs.iter().zip(results) {
            let (block, at) = r?;
            if at + j.len > block.len() {
                return Err(Error::corrupt(format!(
                    "block shorter than its key says ({} < {})",
                    block.len(),
                    at + j.len
                )));
            }
            slices.push((j.dst, block.slice(at..at + j.len)));
        }
        Ok((slices, missed.load(std::sync::atomic::Ordering::Relaxed)))
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
        missed: &std::sync::atomic::AtomicBool,
    ) -> Result<Bytes> {
        let first = off / PIECE;
        let last = (off + len).div_ceil(PIECE);
        let mut out = Vec::with_capacity(len);
        for p in first..last {
            let piece = self.read_piece(key, raw_len, p, missed).await?;
            let (ps, pe) = (p * PIECE, p * PIECE + piece.len());
            let (s, e) = (off.max(ps), (off + len).min(pe));
            out.extend_from_slice(&piece[s - ps..e - ps]);
        }
        Ok(Bytes::from(out))
    }

    async fn read_piece(
        &self,
        key: &str,
        raw_len: usize,
        p: usize,
        missed: &std::sync::atomic::AtomicBool,
    ) -> Result<Bytes> {
        let piece_key = format!("{key}@{p}");
        let init = async {
            let start = p * PIECE;
            let len = PIECE.min(raw_len - start);
            let _flight = loop {
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
                match self.begin_ranged(key) {
                    Ok(f) => break f,
                    // Being filled: it will be on disk (or the fill failed).
                    Err(mut rx) => {
                        let _ = rx.wait_for(|done| *done).await;
                    }
                }
            };
            missed.store(true, std::sync::atomic::Ordering::Relaxed);
            let layout = self.layout(key, raw_len).await?;
            let frames = layout.frames_for(start, len);
            if frames.is_empty() {
                return Err(Error::corrupt(format!(
                    "block {key}: no frame holds byte {start}"
                )));
            }
            let stored = self
                .fetch_stored(key, Some(layout.stored_range(&frames)))
                .await?;
            let l2 = layout.clone();
            let f2 = frames.clone();
            let raw = tokio::task::spawn_blocking(move || l2.decode_frames(f2, &stored))
                .await?
                .map_err(|e| Error::from(e).context(format!("block {key}")))?;
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
                    // In memory before the flight ends (a fill then keeps it).
                    self.cache.insert_mem(&piece_key, part.clone()).await;
                    mine = part;
                } else {
                    self.cache.insert_mem(&format!("{key}@{q}"), part).await;
                }
                at += n;
            }
            Ok(mine)
        };
        self.cache.mem_get_with(&piece_key, init).await
    }

    /// The frame table of a stored block (one small ranged GET, then cached).
    async fn layout(&self, key: &str, raw_len: usize) -> Result<Arc<Layout>> {
        let found = self
            .layouts
            .try_get_with(key.to_string(), async {
                let prefix = Layout::prefix_len(raw_len);
                let head = self.fetch_stored(key, Some(0..prefix)).await?;
                Layout::parse(&head)
                    .map(|l| l.map(Arc::new))
                    .map_err(|e| Error::from(e).context(format!("block {key}")))
            })
            .await
            .map_err(|e: Arc<Error>| (*e).clone())?;
        found.ok_or_else(|| Error::corrupt(format!("block {key} has no frame table")))
    }

    /// Keys of the committed blocks that cover chunk range [off, off+len).
    pub fn block_keys(&self, pieces: &[Piece], off: u32, len: u32) -> Vec<String> {
        let mut keys: Vec<String> = self
            .block_reads(pieces, off, off.saturating_add(len))
            .into_iter()
            .filter(|j| j.pending.is_none())
            .map(|j| j.key)
            .collect();
        keys.dedup();
        keys
    }

    /// Loads one block into the cache unless it is there already (in
    /// memory, or on disk: not promoted into memory then, where it would
    /// push out blocks readers use). Returns the bytes it fetched.
    pub async fn warm_block(&self, key: String) -> Result<usize> {
        if self.cache.contains(&key).await || self.cache.disk().is_some_and(|d| d.has(&key)) {
            return Ok(0);
        }
        self.fetch_block(key).await.map(|b| b.len())
    }

    /// Starts fetching the blocks that cover chunk range [off, off+len) into
    /// the cache without waiting for them.
    pub fn prefetch(self: &Arc<Self>, pieces: &[Piece], off: u32, len: u32) {
        for key in self.block_keys(pieces, off, len) {
            // Claim the block for read-ahead; one claimed already (read
            // ahead, not read yet) is left alone.
            let fresh = self.ahead.lock().is_ok_and(|mut a| {
                use std::collections::hash_map::Entry;
                match a.entry(key.clone()) {
                    Entry::Occupied(_) => false,
                    Entry::Vacant(v) => {
                        v.insert(Ahead {
                            permit: None,
                            since: std::time::Instant::now(),
                        });
                        true
                    }
                }
            });
            if !fresh {
                continue;
            }
            let me = self.clone();
            tokio::spawn(async move {
                let n = raw_len_of(&key).unwrap_or(me.block_size as usize);
                if me.cache.contains(&key).await {
                    me.ahead_used(&key);
                    return;
                }
                // None: a read used the block while this waited (its claim
                // is gone), nothing to fetch or give back.
                if me.ahead_charge(&key, n).await.is_none() {
                    return;
                }
                if me.cache.contains(&key).await {
                    me.ahead_used(&key);
                    return;
                }
                if let Err(e) = me.fetch_block(key.clone()).await {
                    tracing::debug!(key, error = %e, "prefetch failed");
                    me.ahead_used(&key);
                }
            });
        }
    }

    pub async fn chunk_pieces(&self, ino: u64, indx: u64) -> Result<Vec<Piece>> {
        Ok(build_pieces(&self.meta.read_chunk(ino, indx).await?))
    }

    /// The cache keys of a slice's blocks.
    fn slice_keys(&self, s: &Slice) -> Vec<String> {
        if s.id == 0 {
            return Vec::new();
        }
        if is_inline(s.id) {
            return vec![format!("{INLINE_PREFIX}{}", s.id)];
        }
        let bs = self.block_size;
        (0..s.size.div_ceil(bs))
            .map(|bi| self.blocks.block_key(s.id, bi, bs.min(s.size - bi * bs)))
            .collect()
    }

    /// Drops slices' blocks (and their frame tables) from this node's
    /// memory and disk cache.
    pub async fn forget_cached(&self, slices: &[Slice]) {
        for s in slices {
            for key in self.slice_keys(s) {
                self.layouts.invalidate(&key).await;
                self.cache.forget(&key).await;
            }
        }
    }

    /// The object keys of a slice's blocks (none for holes and inline slices).
    pub fn object_keys(&self, s: &Slice) -> Vec<String> {
        if is_inline(s.id) {
            return Vec::new();
        }
        self.slice_keys(s)
    }

    /// Hands slices this node uploaded (some blocks of) and will never
    /// commit to the deleter, through the session's upload journal. In the
    /// background: the caller may hold locks; should it fail, the session's
    /// own cleanup does it.
    pub fn abandon_uploads(self: &Arc<Self>, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.clone();
        rt.spawn(async move {
            let r = me
                .retry("abandon uploads", || async {
                    Ok(me.meta.abandon_uploads(&ids).await?)
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "cannot hand dropped uploads to the deleter; the session's cleanup will");
            }
        });
    }
}

/// A block read ahead: its charge on the read-ahead budget.
struct Ahead {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    since: std::time::Instant,
}

/// What is under way for one block: a background fill, ranged reads.
#[derive(Default)]
struct Flight {
    fill: Option<tokio::sync::watch::Receiver<bool>>,
    ranged: usize,
}

/// A ranged read of a block under way; ends when dropped.
struct RangedFlight<'a> {
    store: &'a DataStore,
    key: String,
}

impl Drop for RangedFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut f) = self.store.flights.lock() {
            if let Some(e) = f.get_mut(&self.key) {
                e.ranged = e.ranged.saturating_sub(1);
                if e.ranged == 0 && e.fill.is_none() {
                    f.remove(&self.key);
                }
            }
        }
        self.store.ranged_done.notify_waiters();
    }
}

/// Zeros for the holes of a read reply, shared by every reply.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Appends `n` zero bytes to a reply as slices of `ZEROS`.
fn push_zeros(out: &mut Vec<Bytes>, mut n: usize) {
    while n > 0 {
        let k = n.min(ZEROS.len());
        out.push(Bytes::from_static(&ZEROS[..k]));
        n -= k;
    }
}

/// The raw length a block key ends in (`..._{id}_{index}_{len}`).
fn raw_len_of(key: &str) -> Option<usize> {
    key.rsplit('_').next().and_then(|l| l.parse().ok())
}

/// Part of one block a read needs: `len` bytes from `at` within the block
/// (of `block_len` raw bytes), copied to `dst` in the caller's buffer.
struct BlockRead {
    key: String,
    /// (local id, block index) of a block of a slice not committed yet.
    pending: Option<(u64, u32)>,
    block_len: usize,
    at: usize,
    len: usize,
    dst: usize,
}
