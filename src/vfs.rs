//! The kernel-free file system: inode numbers as the kernel sees them (a
//! `--subdir` root appears as inode 1), open files and handles, name and size
//! checks, attribute/entry TTLs, close-to-open consistency and errno mapping.
//! The FUSE adapter only decodes requests and calls in here, so everything
//! below can be driven by tests without a kernel mount.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod dir;
mod kernel;

/// Entries read from Redis per page of a directory listing.
pub const READDIR_PAGE: usize = dir::PAGE;

use crate::data::writer::MAX_PENDING_SLICES;
use crate::data::{DataStore, FileWriter, PendingBlocks};
use crate::error::Error;
use crate::meta::{
    Attr, Event, FileKind, Format, Meta, MetaError, Piece, SetAttr, CHUNK_SIZE, MAX_NAME_LEN,
    ROOT_INO, TRASH_INO, TRASH_NAME,
};
use crate::metacache::MetaCache;
use crate::prefetch::readahead::{ReadAhead, Stream};
use crate::session::Lease;
use crate::statsfile::{is_stats_fh, is_stats_name, StatsFile, STATS_INO};
use dir::Listing;

/// Drops kernel caches (FUSE notify). Calls may block briefly in the kernel,
/// so the VFS makes them from blocking threads, never from async workers.
pub trait Invalidator: Send + Sync {
    fn inval_entry(&self, parent: u64, name: &[u8]);
    fn inval_inode(&self, ino: u64);
}

/// Lock ranges end at "to end of file", which Lua numbers cannot hold exactly.
const LOCK_EOF: u64 = 1 << 53;

/// A directory entry as the bulk removal names it: (name, inode).
type NamedIno = (Vec<u8>, u64);

/// Failures reach the kernel as an errno; unexpected ones are logged here.
pub type VResult<T> = std::result::Result<T, i32>;

fn meta_errno(op: &str, e: MetaError) -> i32 {
    match &e {
        MetaError::Errno(n) => *n,
        other => {
            crate::metrics::count_error(match other {
                MetaError::Redis {
                    transient: true, ..
                } => crate::error::Kind::Transient,
                MetaError::Redis { .. } => crate::error::Kind::Denied,
                _ => crate::error::Kind::Corrupt,
            });
            tracing::error!(op, error = %other, "metadata failure");
            libc::EIO
        }
    }
}

fn data_errno(op: &str, e: Error) -> i32 {
    match e.kind {
        crate::error::Kind::Fs(n) => n,
        _ => {
            crate::metrics::count_error(e.kind);
            tracing::error!(op, error = %e, "data failure");
            e.errno()
        }
    }
}

#[derive(Clone, Debug)]
pub struct VfsConfig {
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
    pub dir_entry_ttl: Duration,
    pub read_only: bool,
    /// The volume inode shown as the mount's root.
    pub root: u64,
    /// Most bytes read ahead of a sequential reader; the window starts at two
    /// blocks and doubles each time the reader had to wait for the store.
    pub readahead: u64,
    /// How long this node answers lookups and stats from its own cache
    /// (kept coherent by change events; zero turns it off).
    pub meta_cache_ttl: Duration,
    /// After how long without a heartbeat other nodes clean this session.
    pub session_ttl: Duration,
    /// Other nodes' change events invalidate this node's kernel caches: the
    /// TTLs above are then used only while the event channel is up (else
    /// SHORT_TTL), and everything the kernel was told is dropped after the
    /// channel was lost.
    pub events: bool,
}

/// TTL of kernel entries and attributes that change events cannot be
/// relied on to invalidate.
pub const SHORT_TTL: Duration = Duration::from_secs(1);

impl Default for VfsConfig {
    fn default() -> Self {
        VfsConfig {
            attr_ttl: Duration::from_secs(1),
            entry_ttl: Duration::from_secs(1),
            dir_entry_ttl: Duration::from_secs(1),
            read_only: false,
            root: ROOT_INO,
            readahead: 128 << 20,
            meta_cache_ttl: Duration::ZERO,
            session_ttl: Duration::from_secs(60),
            events: false,
        }
    }
}

/// Who asks: the kernel's view of the calling process.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Ctx {
    pub fn root() -> Ctx {
        Ctx {
            uid: 0,
            gid: 0,
            pid: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
    pub attr_ttl: Duration,
    pub entry_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct DirItem {
    pub ino: u64,
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub attr: Option<Attr>,
    /// The directory changed since its listing was read: the kernel gets
    /// this entry with zero TTLs, so a name removed meanwhile is looked up
    /// again instead of living on as a dentry.
    pub volatile: bool,
}

/// Chunk index -> (committed slice records, replayed pieces), valid until
/// this node changes the file or a new open asks for fresh metadata
/// (close-to-open). The generation moves at every invalidation, so a read
/// that fetched a list before one never caches what it fetched.
#[derive(Default)]
struct ChunkCache {
    generation: u64,
    chunks: HashMap<u64, ChunkLists>,
}

/// A chunk's committed slice records and their replay.
type ChunkLists = (Arc<Vec<crate::meta::Slice>>, Arc<Vec<Piece>>);

/// State of an inode that has open handles on this node (or, after its
/// last close, writes that could not be committed yet).
struct OpenFile {
    /// Handles, plus unlink/rename calls pinning the entry meanwhile.
    refs: u32,
    writer: Arc<FileWriter>,
    chunks: Arc<Mutex<ChunkCache>>,
    /// This node's view of the length: the committed length as opened,
    /// raised by every acknowledged write, set by truncate.
    length: Arc<AtomicU64>,
    /// Written or truncated here since opened: attribute replies must
    /// show `length` at least.
    wrote: Arc<std::sync::atomic::AtomicBool>,
    /// Writes hold it shared, truncate and fallocate exclusively (across
    /// their flush, the Redis change and the length update).
    gate: Arc<tokio::sync::RwLock<()>>,
    unlinked: bool,
}

impl OpenFile {
    fn handles(&self) -> Handles {
        Handles {
            writer: self.writer.clone(),
            chunks: self.chunks.clone(),
            length: self.length.clone(),
            wrote: self.wrote.clone(),
            gate: self.gate.clone(),
        }
    }
}

/// What a request needs of an open file, taken out of the open-file table.
struct Handles {
    writer: Arc<FileWriter>,
    chunks: Arc<Mutex<ChunkCache>>,
    length: Arc<AtomicU64>,
    wrote: Arc<std::sync::atomic::AtomicBool>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// Attributes this node produced by its own changes (commits, truncates),
/// numbered. A Redis read that started before such a change may have seen
/// the file before it; whoever took `ticket()` before reading asks `newer`
/// and answers with the newer attributes instead. This is what keeps a
/// stat racing a commit from handing the kernel a length it already
/// outgrew (the kernel would then append over acknowledged data).
struct Recent {
    inner: Mutex<RecentInner>,
}

struct RecentInner {
    seq: u64,
    last_prune: std::time::Instant,
    /// Changes below this number were forgotten.
    pruned_below: u64,
    by_ino: HashMap<u64, (u64, Attr, std::time::Instant)>,
    /// Directories whose entries changed, by the number of the change.
    dirs: HashMap<u64, (u64, std::time::Instant)>,
}

/// Answer of `Recent::newer`.
enum Newer {
    /// No change here since the ticket: what was read stands.
    No,
    /// This node changed the inode since: these attributes are newer.
    Yes(Attr),
    /// The record was forgotten: read again.
    Unknown,
}

/// Changes are remembered this long: far longer than any Redis read.
const RECENT_KEEP: Duration = Duration::from_secs(60);

impl Recent {
    fn new() -> Recent {
        Recent {
            inner: Mutex::new(RecentInner {
                seq: 0,
                last_prune: std::time::Instant::now(),
                pruned_below: 0,
                by_ino: HashMap::new(),
                dirs: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ticket(&self) -> u64 {
        self.lock().seq
    }

    fn record(&self, ino: u64, attr: Attr) {
        let mut r = self.lock();
        r.seq += 1;
        let seq = r.seq;
        r.by_ino.insert(ino, (seq, attr, std::time::Instant::now()));
        // Pruning walks the map: at most once a second, not per change.
        if r.by_ino.len() > 4096 && r.last_prune.elapsed() >= Duration::from_secs(1) {
            r.last_prune = std::time::Instant::now();
            let mut cut = r.pruned_below;
            r.by_ino.retain(|_, (seq, _, at)| {
                let keep = at.elapsed() < RECENT_KEEP;
                if !keep {
                    cut = cut.max(*seq + 1);
                }
                keep
            });
            r.pruned_below = cut;
        }
    }

    /// An entry of directory `dir` appeared, vanished or was renamed.
    fn dir_change(&self, dir: u64) {
        let mut r = self.lock();
        r.seq += 1;
        let seq = r.seq;
        r.dirs.insert(dir, (seq, std::time::Instant::now()));
        if r.dirs.len() > 4096 && r.last_prune.elapsed() >= Duration::from_secs(1) {
            r.last_prune = std::time::Instant::now();
            let mut cut = r.pruned_below;
            r.dirs.retain(|_, (seq, at)| {
                let keep = at.elapsed() < RECENT_KEEP;
                if !keep {
                    cut = cut.max(*seq + 1);
                }
                keep
            });
            r.pruned_below = cut;
        }
    }

    /// Whether `dir` changed (or may have) since `ticket`.
    fn dir_changed(&self, dir: u64, ticket: u64) -> bool {
        let r = self.lock();
        match r.dirs.get(&dir) {
            Some((seq, _)) => *seq > ticket,
            None => ticket < r.pruned_below,
        }
    }

    fn record_keep_len(&self, ino: u64, mut attr: Attr) {
        let mut r = self.lock();
        if let Some((_, a, _)) = r.by_ino.get(&ino) {
            attr.length = attr.length.max(a.length);
        }
        r.seq += 1;
        let seq = r.seq;
        r.by_ino.insert(ino, (seq, attr, std::time::Instant::now()));
    }

    fn forget(&self, ino: u64) {
        let mut r = self.lock();
        if let Some((seq, _, _)) = r.by_ino.remove(&ino) {
            r.pruned_below = r.pruned_below.max(seq + 1);
        }
    }

    fn newer(&self, ino: u64, ticket: u64) -> Newer {
        let r = self.lock();
        match r.by_ino.get(&ino) {
            Some((seq, attr, _)) if *seq > ticket => Newer::Yes(*attr),
            Some(_) => Newer::No,
            None if ticket < r.pruned_below => Newer::Unknown,
            None => Newer::No,
        }
    }
}

/// (mtime, length): what identifies a version of a file's content.
type Version = ((i64, u32), u64);

struct FileHandle {
    ino: u64,
    writable: bool,
    /// Where this handle reads (the read-ahead policy's view of it).
    stream: Mutex<Stream>,
}

struct DirHandle {
    /// The directory (volume inode).
    ino: u64,
    /// readdirplus: entries carry attributes.
    plus: bool,
    /// `Recent` ticket taken at opendir: a directory changed since gives
    /// its entries zero TTLs.
    ticket: u64,
    /// Only this handle's readers wait on it, across a page's fetch.
    listing: tokio::sync::Mutex<Listing>,
}

enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

pub struct OpenReply {
    pub fh: u64,
    pub keep_cache: bool,
    /// Bypass the page cache (`.stats`: every read is fresh).
    pub direct_io: bool,
}

pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
}

pub struct Vfs {
    pub meta: Arc<Meta>,
    pub data: Arc<DataStore>,
    pub format: Format,
    pub cfg: VfsConfig,
    open: Mutex<HashMap<u64, OpenFile>>,
    invalidator: std::sync::OnceLock<Arc<dyn Invalidator>>,
    /// Last attributes handed to the kernel, to know when its cache is stale.
    reported: Mutex<HashMap<u64, Version>>,
    /// (inode, lock owner) pairs that took a lock here, with the session
    /// epoch they took it in: a close only talks to Redis when there may be
    /// something to release, and a lock from an older epoch is lost.
    lock_owners: Mutex<HashMap<(u64, u64), u64>>,
    /// This node's session: locks are granted only while it is safely alive.
    pub lease: Arc<Lease>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// mtime and length each file had when last opened here, for FOPEN_KEEP_CACHE.
    seen: Mutex<HashMap<u64, Version>>,
    /// Inodes the kernel reached through `.trash` (hour directories and the
    /// files in them): an open of a trashed file through any other name is
    /// an open through a stale dentry of a file since deleted or replaced.
    via_trash: Mutex<std::collections::HashSet<u64>>,
    mcache: MetaCache,
    recent: Recent,
    /// Wakes the flusher early (a writer piles up slices).
    kick: tokio::sync::Notify,
    /// Read-ahead windows and random-read fills, per inode.
    readahead: Arc<ReadAhead>,
    /// Space and inode limits, from the volume record: `vecfs config`
    /// changes them under running mounts ([`Vfs::spawn_limits_refresher`]).
    capacity: AtomicU64,
    max_inodes: AtomicU64,
    /// The hidden `.stats` file at the mount root.
    stats: StatsFile,
    /// Names and inodes the kernel may cache, and the TTLs they may get.
    kernel: kernel::KernelView,
}

/// How often the flusher looks for buffered writes to commit, and when:
/// the last write is FLUSH_IDLE old, or the oldest buffered one FLUSH_MAX_AGE.
const FLUSH_TICK: Duration = Duration::from_millis(250);
const FLUSH_IDLE: Duration = Duration::from_secs(1);
const FLUSH_MAX_AGE: Duration = Duration::from_secs(5);

fn lock_type(typ: i32) -> VResult<u32> {
    match typ {
        libc::F_RDLCK => Ok(0),
        libc::F_WRLCK => Ok(1),
        libc::F_UNLCK => Ok(2),
        _ => Err(libc::EINVAL),
    }
}

fn check_name(name: &[u8]) -> VResult<()> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(libc::EINVAL);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(libc::ENAMETOOLONG);
    }
    Ok(())
}

impl Vfs {
    pub fn new(meta: Arc<Meta>, data: Arc<DataStore>, format: Format, cfg: VfsConfig) -> Vfs {
        let mcache = MetaCache::new(cfg.meta_cache_ttl);
        let lease = Arc::new(Lease::new(cfg.session_ttl));
        let readahead = Arc::new(ReadAhead::new(data.block_size as u64, cfg.readahead));
        Vfs {
            meta,
            data,
            capacity: AtomicU64::new(format.capacity),
            max_inodes: AtomicU64::new(format.inodes),
            format,
            open: Mutex::new(HashMap::new()),
            invalidator: std::sync::OnceLock::new(),
            reported: Mutex::new(HashMap::new()),
            lock_owners: Mutex::new(HashMap::new()),
            lease,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            seen: Mutex::new(HashMap::new()),
            via_trash: Mutex::new(std::collections::HashSet::new()),
            mcache,
            recent: Recent::new(),
            kick: tokio::sync::Notify::new(),
            readahead,
            stats: StatsFile::default(),
            kernel: kernel::KernelView::new(cfg.events, SHORT_TTL),
            cfg,
        }
    }

    /// The event channel (re)connected: events may have been missed, so
    /// the kernel forgets every name and attribute it was told before long
    /// TTLs resume.
    pub async fn events_resumed(&self) {
        self.mcache.clear();
        self.mcache.set_degraded(false);
        let told = self.kernel.resume_snapshot();
        if let Some(inv) = self.invalidator.get().cloned() {
            let _ = tokio::task::spawn_blocking(move || {
                for (parent, name) in &told.names {
                    inv.inval_entry(*parent, name);
                }
                inv.inval_inode(ROOT_INO);
                for ino in told.inodes {
                    inv.inval_inode(ino);
                }
            })
            .await;
        }
        self.kernel.events_up();
    }

    /// The event channel is lost: replies get short TTLs until it is back.
    /// The metadata cache stays (during a Redis outage it is what still
    /// answers), its entries used for `DEGRADED_TTL` at most; it is cleared
    /// on resubscribe.
    pub fn events_lost(&self) {
        self.mcache.set_degraded(true);
        self.kernel.events_down();
    }

    /// The kernel dropped `n` lookups of (shown) inode `ino`.
    pub fn kernel_forget(&self, ino: u64, n: u64) {
        self.kernel.forget(ino, n);
    }

    /// `e` goes to the kernel under `(parent, name)` (`parent` a volume
    /// inode); `gen` was taken before its content was read.
    fn named(&self, gen: u64, parent: u64, name: &[u8], e: Entry) -> Entry {
        // Not `e.attr_ttl`: `entry` shortened it for an inode not yet told.
        let (attr_ttl, entry_ttl) = self.kernel.name_ttls(
            gen,
            self.shown(parent),
            name,
            e.ino,
            self.cfg.attr_ttl,
            e.entry_ttl,
        );
        Entry {
            attr_ttl,
            entry_ttl,
            ..e
        }
    }

    /// Kernel inode -> volume inode.
    fn real(&self, ino: u64) -> u64 {
        if ino == ROOT_INO {
            self.cfg.root
        } else {
            ino
        }
    }

    /// Volume inode -> kernel inode.
    pub fn shown(&self, ino: u64) -> u64 {
        if ino == self.cfg.root {
            ROOT_INO
        } else {
            ino
        }
    }

    /// `.trash` at the volume root names the trash (hidden from readdir,
    /// found by lookup): no file may take or lose that name.
    fn reserved(&self, real_parent: u64, name: &[u8]) -> VResult<()> {
        if real_parent == ROOT_INO && name == TRASH_NAME {
            Err(libc::EPERM)
        } else {
            Ok(())
        }
    }

    fn writable(&self) -> VResult<()> {
        if self.cfg.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }

    pub fn sid(&self) -> u64 {
        self.meta.sid()
    }

    pub fn set_invalidator(&self, inv: Arc<dyn Invalidator>) {
        let _ = self.invalidator.set(inv);
    }

    /// Drops the kernel's attributes and page cache of `real`.
    pub async fn invalidate_inode(&self, real: u64) {
        if let Some(inv) = self.invalidator.get().cloned() {
            let ino = self.shown(real);
            let _ = tokio::task::spawn_blocking(move || inv.inval_inode(ino)).await;
        }
    }

    /// Another node changed something: drop what this node cached about it.
    pub async fn on_remote_change(&self, ev: Event) {
        if matches!(ev, Event::Probe { .. }) {
            return; // changes nothing
        }
        self.kernel.remote_change();
        match ev {
            Event::Probe { .. } => {}
            Event::Inode { ino, .. } => {
                self.mcache.drop_attr(ino);
                self.recent.forget(ino);
                self.forget_pieces(ino);
                if let Ok(mut seen) = self.seen.lock() {
                    seen.remove(&ino);
                }
                if let Ok(mut r) = self.reported.lock() {
                    r.remove(&ino);
                }
                self.invalidate_inode(ino).await;
            }
            Event::Entry { parent, name, .. } => {
                self.recent.dir_change(parent);
                self.mcache.drop_name(parent, &name);
                self.mcache.drop_attr(parent);
                if let Some(inv) = self.invalidator.get().cloned() {
                    let p = self.shown(parent);
                    let _ = tokio::task::spawn_blocking(move || inv.inval_entry(p, &name)).await;
                }
            }
        }
    }

    fn limits(&self) -> (u64, u64) {
        (
            self.capacity.load(Ordering::Relaxed),
            self.max_inodes.load(Ordering::Relaxed),
        )
    }

    /// Reads the volume record every `every` and applies its space and
    /// inode limits, so `vecfs config --capacity` reaches running mounts.
    pub fn spawn_limits_refresher(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let vfs = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(vfs) = vfs.upgrade() else { return };
                match vfs.meta.load_format().await {
                    Ok(Some(f)) => {
                        vfs.capacity.store(f.capacity, Ordering::Relaxed);
                        vfs.max_inodes.store(f.inodes, Ordering::Relaxed);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot reload the volume record"),
                }
            }
        })
    }

    /// Overlays what this node knows better than Redis: the length of
    /// writes it acknowledged, committed or not. Never waits on a writer.
    fn fix_attr(&self, ino: u64, mut attr: Attr) -> Attr {
        if let Some(h) = self.open_state(ino) {
            if h.wrote.load(Ordering::Acquire) {
                attr.length = attr.length.max(h.length.load(Ordering::Acquire));
            }
        }
        attr
    }

    /// Settles attributes read from Redis after taking `ticket`: a change
    /// this node made meanwhile wins. None: read again.
    fn settle(&self, ino: u64, ticket: u64, attr: Attr) -> Option<Attr> {
        match self.recent.newer(ino, ticket) {
            Newer::No => Some(attr),
            Newer::Yes(mine) => Some(mine),
            Newer::Unknown => None,
        }
    }

    /// This node changed `ino` and Redis answered with `attr`: remember it
    /// so reads that raced the change cannot answer with what they saw.
    fn changed_here(&self, ino: u64, attr: Attr) {
        self.recent.record(ino, attr);
        self.mcache.replace(ino, attr);
    }

    /// As `changed_here`, for a change that leaves the length alone (mode,
    /// times, links): its reply may have been read before a commit that
    /// finished first, so it never lowers the length remembered, and the
    /// metadata cache entry is dropped rather than replaced.
    fn changed_meta_here(&self, ino: u64, attr: Attr) {
        self.recent.record_keep_len(ino, attr);
        self.mcache.drop_attr(ino);
    }

    fn entry(&self, ino: u64, attr: Attr) -> Entry {
        if attr.kind == FileKind::File {
            if let Ok(mut r) = self.reported.lock() {
                if r.len() > 200_000 {
                    r.clear();
                }
                r.insert(ino, (attr.mtime, attr.length));
            }
        }
        Entry {
            ino: self.shown(ino),
            attr: Attr {
                parent: self.shown(attr.parent),
                ..attr
            },
            attr_ttl: self.kernel.attr_ttl(self.shown(ino), self.cfg.attr_ttl),
            entry_ttl: if attr.kind == FileKind::Dir {
                self.cfg.dir_entry_ttl
            } else {
                self.cfg.entry_ttl
            },
        }
    }

    /// The `.stats` file's entry: attributes never cached by the kernel,
    /// so its length follows the text.
    fn stats_entry(&self) -> Entry {
        Entry {
            ino: STATS_INO,
            attr: self.stats.attr(),
            attr_ttl: Duration::ZERO,
            entry_ttl: self.cfg.entry_ttl,
        }
    }

    fn open_state(&self, ino: u64) -> Option<Handles> {
        let open = self.open.lock().ok()?;
        open.get(&ino).map(OpenFile::handles)
    }

    fn is_open_here(&self, ino: u64) -> bool {
        self.open
            .lock()
            .map(|o| o.contains_key(&ino))
            .unwrap_or(false)
    }

    /// This node removed the last name of `ino`, open here.
    fn unlinked_here(&self, ino: u64) -> bool {
        self.open
            .lock()
            .is_ok_and(|o| o.get(&ino).is_some_and(|f| f.unlinked))
    }

    /// Whether any handle on this node has `ino` open.
    pub fn is_open(&self, ino: u64) -> bool {
        self.is_open_here(ino)
    }

    /// Takes a reference on `ino` if it is open here (see unlink).
    fn pin(&self, ino: u64) -> bool {
        match self.open.lock() {
            Ok(mut o) => match o.get_mut(&ino) {
                Some(f) => {
                    f.refs += 1;
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// `pin`, remembering the pinned inode in `pinned` for the unpin.
    fn pin_into(&self, pinned: &Mutex<Vec<u64>>, ino: u64) -> bool {
        let keep = self.pin(ino);
        if keep {
            if let Ok(mut p) = pinned.lock() {
                p.push(ino);
            }
        }
        keep
    }

    /// Ends a pin; `unlinked`: the call took the file's last name.
    async fn unpin(&self, ino: u64, unlinked: bool) {
        if unlinked {
            if let Ok(mut o) = self.open.lock() {
                if let Some(f) = o.get_mut(&ino) {
                    f.unlinked = true;
                }
            }
        }
        if let Err(e) = self.drop_ref(ino).await {
            tracing::warn!(ino, errno = e, "cannot free an unlinked file");
        }
    }

    /// Drops one reference to an open file. The last one removes the entry
    /// (unless writes wait to be committed: the flusher keeps retrying
    /// them) and frees the inode if it lost its last name meanwhile.
    async fn drop_ref(&self, ino: u64) -> VResult<()> {
        let free = {
            let mut o = self.open.lock().map_err(|_| libc::EIO)?;
            let Some(f) = o.get_mut(&ino) else {
                return Ok(());
            };
            f.refs = f.refs.saturating_sub(1);
            if f.refs > 0 {
                false
            } else if f.unlinked {
                f.writer.discard();
                o.remove(&ino);
                true
            } else {
                if !f.writer.is_dirty() {
                    o.remove(&ino);
                }
                false
            }
        };
        if free {
            self.mcache.drop_attr(ino);
            self.recent.forget(ino);
            self.meta
                .release_sustained(ino, self.sid())
                .await
                .map_err(|e| meta_errno("release", e))?;
        }
        Ok(())
    }

    fn forget_pieces(&self, ino: u64) {
        if let Some(h) = self.open_state(ino) {
            if let Ok(mut c) = h.chunks.lock() {
                c.generation += 1;
                c.chunks.clear();
            }
        }
    }

    // ---- names -----------------------------------------------------------

    pub async fn lookup(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> VResult<Entry> {
        if is_stats_name(parent, name) {
            return Ok(self.stats_entry());
        }
        if name.len() > MAX_NAME_LEN {
            return Err(libc::ENAMETOOLONG);
        }
        let parent = self.real(parent);
        let gen = self.kernel.snapshot_gen();
        if parent == ROOT_INO && name == TRASH_NAME {
            // Made by the first deletion into it.
            let attr = self.fresh_attr(TRASH_INO, "lookup").await?;
            return Ok(self.named(gen, parent, name, self.entry(TRASH_INO, attr)));
        }
        let mut settled = true;
        let (ino, attr) = match self.mcache.lookup(parent, name) {
            Some(hit) => hit,
            None => {
                let mut tries = 0;
                loop {
                    let generation = self.mcache.generation();
                    let ticket = self.recent.ticket();
                    let (ino, attr) = self
                        .meta
                        .lookup(parent, name)
                        .await
                        .map_err(|e| meta_errno("lookup", e))?;
                    tries += 1;
                    match self.settle(ino, ticket, attr) {
                        Some(a) => {
                            self.mcache.put(generation, Some((parent, name)), ino, a);
                            break (ino, a);
                        }
                        None if tries < 3 => continue,
                        None => {
                            settled = false;
                            break (ino, attr);
                        }
                    }
                }
            }
        };
        if parent == TRASH_INO || self.reached_via_trash(parent) {
            self.note_via_trash(&[ino]);
        }
        let attr = self.fix_attr(ino, attr);
        let e = self.named(gen, parent, name, self.entry(ino, attr));
        Ok(if settled {
            e
        } else {
            // Changing here as it was read: let the kernel ask again soon.
            Entry {
                attr_ttl: e.attr_ttl.min(SHORT_TTL),
                entry_ttl: e.entry_ttl.min(SHORT_TTL),
                ..e
            }
        })
    }

    fn reached_via_trash(&self, ino: u64) -> bool {
        self.via_trash.lock().is_ok_and(|s| s.contains(&ino))
    }

    fn note_via_trash(&self, inos: &[u64]) {
        if let Ok(mut s) = self.via_trash.lock() {
            if s.len() > 100_000 {
                // Forgetting costs one ESTALE and a fresh lookup at most.
                s.clear();
            }
            s.extend(inos);
        }
    }

    /// An inode's attributes from Redis (or from a change this node made
    /// while reading), remembered in the metadata cache.
    async fn fresh_attr(&self, real: u64, op: &str) -> VResult<Attr> {
        let mut tries = 0;
        loop {
            let generation = self.mcache.generation();
            let ticket = self.recent.ticket();
            let attr = self
                .meta
                .getattr(real)
                .await
                .map_err(|e| meta_errno(op, e))?;
            tries += 1;
            match self.settle(real, ticket, attr) {
                Some(a) => {
                    self.mcache.put(generation, None, real, a);
                    return Ok(a);
                }
                None if tries < 3 => continue,
                None => return Ok(attr),
            }
        }
    }

    /// `getattr` when this node's metadata cache can answer at once, so the
    /// FUSE adapter replies without handing the request to a task.
    pub fn getattr_cached(&self, ino: u64) -> Option<Entry> {
        if ino == STATS_INO {
            return None;
        }
        let real = self.real(ino);
        let attr = self.mcache.attr(real)?;
        Some(self.entry(real, self.fix_attr(real, attr)))
    }

    pub async fn getattr(&self, ino: u64) -> VResult<Entry> {
        if ino == STATS_INO {
            return Ok(self.stats_entry());
        }
        let real = self.real(ino);
        let attr = match self.mcache.attr(real) {
            Some(a) => a,
            // Gone from Redis: the kernel reached it through a name it
            // cached (with default_permissions, open asks for attributes
            // first); ESTALE makes a path walk look the name up again. An
            // fstat of a handle on it gets ESTALE too, as on NFS.
            None => match self.fresh_attr(real, "getattr").await {
                Err(libc::ENOENT) => return Err(self.stale_name(real)),
                other => other?,
            },
        };
        let attr = self.fix_attr(real, attr);
        Ok(self.entry(real, attr))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        target: &[u8],
    ) -> VResult<Entry> {
        if is_stats_name(parent, name) {
            return Err(libc::EEXIST);
        }
        self.writable()?;
        check_name(name)?;
        let kind = FileKind::from_mode(mode).ok_or(libc::EINVAL)?;
        let parent = self.real(parent);
        self.reserved(parent, name)?;
        let gen = self.kernel.snapshot_gen();
        let (ino, attr) = self
            .meta
            .mknod(
                parent,
                name,
                kind,
                mode & 0o7777,
                umask,
                ctx.uid,
                ctx.gid,
                rdev,
                target,
                self.limits(),
            )
            .await
            .map_err(|e| meta_errno("mknod", e))?;
        self.mcache.drop_attr(parent);
        self.recent.dir_change(parent);
        self.mcache
            .put(self.mcache.generation(), Some((parent, name)), ino, attr);
        Ok(self.named(gen, parent, name, self.entry(ino, attr)))
    }

    pub async fn mkdir(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> VResult<Entry> {
        self.mknod(
            ctx,
            parent,
            name,
            libc::S_IFDIR | (mode & 0o7777),
            umask,
            0,
            b"",
        )
        .await
    }

    pub async fn symlink(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> VResult<Entry> {
        if target.is_empty() {
            return Err(libc::ENOENT);
        }
        if target.len() >= 4096 {
            return Err(libc::ENAMETOOLONG);
        }
        self.mknod(ctx, parent, name, libc::S_IFLNK | 0o777, 0, 0, target)
            .await
    }

    pub async fn readlink(&self, ino: u64) -> VResult<Vec<u8>> {
        if ino == STATS_INO {
            return Err(libc::EINVAL);
        }
        self.meta
            .readlink(self.real(ino))
            .await
            .map_err(|e| meta_errno("readlink", e))
    }

    pub async fn unlink(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> VResult<()> {
        if is_stats_name(parent, name) {
            return Err(libc::EPERM);
        }
        self.writable()?;
        check_name(name)?;
        self.reserved(self.real(parent), name)?;
        let sid = self.sid();
        // An open file is pinned while the script runs: a release racing
        // the unlink then cannot drop the entry before it is marked
        // unlinked, which would leave the inode held forever.
        let pinned = Mutex::new(Vec::new());
        let r = self
            .meta
            .unlink(
                self.real(parent),
                name,
                sid,
                |i| self.pin_into(&pinned, i),
                self.mcache.ino_hint(self.real(parent), name),
            )
            .await;
        let gone = match &r {
            Ok((ino, 0)) => Some(*ino),
            _ => None,
        };
        for i in pinned.into_inner().unwrap_or_default() {
            // A failed call may still have applied (lost reply): ask Redis.
            let unlinked = Some(i) == gone
                || (r.is_err() && matches!(self.meta.getattr(i).await, Ok(a) if a.nlink == 0));
            self.unpin(i, unlinked).await;
        }
        let (ino, _) = r.map_err(|e| meta_errno("unlink", e))?;
        self.recent.dir_change(self.real(parent));
        self.mcache.drop_name(self.real(parent), name);
        self.mcache.drop_attr(self.real(parent));
        self.mcache.drop_attr(ino);
        Ok(())
    }

    pub async fn rmdir(&self, _ctx: &Ctx, parent: u64, name: &[u8]) -> VResult<()> {
        if is_stats_name(parent, name) {
            return Err(libc::ENOTDIR);
        }
        self.writable()?;
        if name == b"." {
            return Err(libc::EINVAL);
        }
        if name == b".." {
            return Err(libc::ENOTEMPTY);
        }
        check_name(name)?;
        self.reserved(self.real(parent), name)?;
        let r = self
            .meta
            .rmdir(self.real(parent), name)
            .await
            .map_err(|e| meta_errno("rmdir", e));
        self.recent.dir_change(self.real(parent));
        self.mcache.drop_name(self.real(parent), name);
        self.mcache.drop_attr(self.real(parent));
        r
    }

    /// Non-root callers need write and search permission on a directory
    /// whose entries they remove (the sticky bit aside, as rm -rf needs).
    async fn may_empty(&self, ctx: &Ctx, real_dir: u64) -> VResult<()> {
        if ctx.uid == 0 {
            return Ok(());
        }
        self.access(ctx, self.shown(real_dir), libc::W_OK | libc::X_OK)
            .await
    }

    /// `vecfs rmr`: removes directory `name` of `parent` with everything
    /// below it on the server side, up to 500 entries per atomic step,
    /// deepest directories first. Files take the trash when the volume
    /// keeps one. Other nodes learn of each removal from its change event;
    /// this node's kernel forgets the tree with the top directory's entry.
    /// Returns (files, directories) removed.
    pub async fn rmr(&self, ctx: &Ctx, parent: u64, name: &[u8]) -> VResult<(u64, u64)> {
        const BATCH: usize = 500;
        self.writable()?;
        check_name(name)?;
        let parent = self.real(parent);
        self.reserved(parent, name)?;
        let (top, attr) = self
            .meta
            .lookup(parent, name)
            .await
            .map_err(|e| meta_errno("rmr", e))?;
        if attr.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        self.may_empty(ctx, parent).await?;
        // Every directory of the tree with its entries, parents first.
        let mut tree: Vec<(u64, Vec<NamedIno>)> = Vec::new();
        let mut next = vec![top];
        while let Some(d) = next.pop() {
            let entries = self
                .meta
                .readdir(d)
                .await
                .map_err(|e| meta_errno("rmr", e))?;
            next.extend(
                entries
                    .iter()
                    .filter(|e| e.kind == FileKind::Dir)
                    .map(|e| e.ino),
            );
            tree.push((d, entries.into_iter().map(|e| (e.name, e.ino)).collect()));
        }
        let (mut files, mut dirs) = (0u64, 0u64);
        let mut result = Ok(());
        for (d, entries) in tree.iter().rev() {
            if let Err(e) = self.may_empty(ctx, *d).await {
                result = Err(e);
                break;
            }
            for batch in entries.chunks(BATCH) {
                match self.meta.remove_entries(*d, false, 0, batch).await {
                    Ok((f, n, _)) => {
                        files += f;
                        dirs += n;
                    }
                    Err(e) => {
                        result = Err(meta_errno("rmr", e));
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
        }
        let mut left = 1;
        if result.is_ok() {
            match self
                .meta
                .remove_entries(parent, false, 0, &[(name.to_vec(), top)])
                .await
            {
                Ok((_, n, skipped)) => {
                    dirs += n;
                    left = skipped;
                }
                Err(e) => result = Err(meta_errno("rmr", e)),
            }
        }
        // Whatever went, this node's caches must not show it any longer.
        self.mcache.clear();
        self.recent.dir_change(parent);
        if let Some(inv) = self.invalidator.get().cloned() {
            let (p, n) = (self.shown(parent), name.to_vec());
            let _ = tokio::task::spawn_blocking(move || inv.inval_entry(p, &n)).await;
        }
        result?;
        if left > 0 {
            // Something was created inside meanwhile.
            return Err(libc::ENOTEMPTY);
        }
        Ok((files, dirs))
    }

    /// flags: RENAME_NOREPLACE (1), RENAME_EXCHANGE (2).
    pub async fn rename(
        &self,
        _ctx: &Ctx,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> VResult<()> {
        if is_stats_name(parent, name) || is_stats_name(newparent, newname) {
            return Err(libc::EPERM);
        }
        self.writable()?;
        check_name(name)?;
        check_name(newname)?;
        if flags & !3 != 0 || flags == 3 {
            return Err(libc::EINVAL);
        }
        self.reserved(self.real(parent), name)?;
        self.reserved(self.real(newparent), newname)?;
        let sid = self.sid();
        // As in unlink: a replaced file open here stays pinned meanwhile.
        let pinned = Mutex::new(Vec::new());
        let r = self
            .meta
            .rename(
                self.real(parent),
                name,
                self.real(newparent),
                newname,
                flags,
                sid,
                |i| self.pin_into(&pinned, i),
            )
            .await;
        let replaced = r.as_ref().map(|(_, d)| *d).unwrap_or(0);
        for i in pinned.into_inner().unwrap_or_default() {
            let gone = i == replaced
                && flags & 2 == 0
                && matches!(self.meta.getattr(i).await, Ok(a) if a.nlink == 0);
            self.unpin(i, gone).await;
        }
        let (moved, _) = r.map_err(|e| meta_errno("rename", e))?;
        // The kernel moves its dentries: the names to drop after missed
        // events are the new ones now.
        self.kernel
            .renamed(self.shown(self.real(newparent)), newname, self.shown(moved));
        if flags & 2 != 0 {
            self.kernel
                .renamed(self.shown(self.real(parent)), name, self.shown(replaced));
        }
        for (p, n) in [(parent, name), (newparent, newname)] {
            self.recent.dir_change(self.real(p));
            self.mcache.drop_name(self.real(p), n);
            self.mcache.drop_attr(self.real(p));
        }
        self.mcache.drop_attr(replaced);
        Ok(())
    }

    pub async fn link(
        &self,
        _ctx: &Ctx,
        ino: u64,
        newparent: u64,
        newname: &[u8],
    ) -> VResult<Entry> {
        if ino == STATS_INO {
            return Err(libc::EPERM);
        }
        if is_stats_name(newparent, newname) {
            return Err(libc::EEXIST);
        }
        self.writable()?;
        check_name(newname)?;
        self.reserved(self.real(newparent), newname)?;
        let real = self.real(ino);
        let gen = self.kernel.snapshot_gen();
        let attr = self
            .meta
            .link(real, self.real(newparent), newname)
            .await
            .map_err(|e| meta_errno("link", e))?;
        self.changed_meta_here(real, attr);
        self.recent.dir_change(self.real(newparent));
        self.mcache.drop_attr(self.real(newparent));
        let attr = self.fix_attr(real, attr);
        Ok(self.named(gen, self.real(newparent), newname, self.entry(real, attr)))
    }

    // ---- attributes ------------------------------------------------------

    pub async fn setattr(
        &self,
        _ctx: &Ctx,
        ino: u64,
        set: &SetAttr,
        size: Option<u64>,
    ) -> VResult<Entry> {
        if ino == STATS_INO {
            return Err(libc::EPERM);
        }
        self.writable()?;
        let real = self.real(ino);
        let mut attr = None;
        if let Some(size) = size {
            if size > (1u64 << 50) {
                return Err(libc::EFBIG);
            }
            let gate = self.open_state(real).map(|h| h.gate);
            let _gate = match &gate {
                Some(g) => Some(g.write().await),
                None => None,
            };
            self.flush_inode(real).await?;
            let (a, dropped) = self
                .meta
                .truncate(real, size, self.limits().0)
                .await
                .map_err(|e| meta_errno("truncate", e))?;
            // Their objects wait the trash days; their blocks must not wait
            // in this node's cache.
            self.data.forget_cached(&dropped).await;
            if let Some(h) = self.open_state(real) {
                h.length.store(size, Ordering::Release);
                h.wrote.store(true, Ordering::Release);
            }
            self.forget_pieces(real);
            self.changed_here(real, a);
            attr = Some(a);
        }
        let any = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some()
            || set.ctime.is_some();
        if any {
            let a = self
                .meta
                .setattr(real, set)
                .await
                .map_err(|e| meta_errno("setattr", e))?;
            self.changed_meta_here(real, a);
            attr = Some(a);
        }
        let attr = match attr {
            Some(a) => a,
            None => self.fresh_attr(real, "getattr").await?,
        };
        let attr = self.fix_attr(real, attr);
        Ok(self.entry(real, attr))
    }

    pub async fn access(&self, ctx: &Ctx, ino: u64, mask: i32) -> VResult<()> {
        if ino == STATS_INO {
            return if mask & (libc::W_OK | libc::X_OK) != 0 {
                Err(libc::EACCES)
            } else {
                Ok(())
            };
        }
        let attr = self
            .meta
            .getattr(self.real(ino))
            .await
            .map_err(|e| meta_errno("access", e))?;
        if mask & libc::W_OK != 0 && self.cfg.read_only {
            return Err(libc::EROFS);
        }
        if ctx.uid == 0 {
            if mask & libc::X_OK != 0 && attr.kind != FileKind::Dir && attr.mode & 0o111 == 0 {
                return Err(libc::EACCES);
            }
            return Ok(());
        }
        let bits = if ctx.uid == attr.uid {
            (attr.mode >> 6) & 7
        } else if ctx.gid == attr.gid {
            (attr.mode >> 3) & 7
        } else {
            attr.mode & 7
        } as i32;
        if mask & bits != mask & 7 {
            return Err(libc::EACCES);
        }
        Ok(())
    }

    pub async fn statfs(&self) -> VResult<Statfs> {
        let (used, inodes) = self
            .meta
            .usage()
            .await
            .map_err(|e| meta_errno("statfs", e))?;
        let bsize = 4096u64;
        let (capacity, max_inodes) = self.limits();
        let total = if capacity > 0 {
            capacity
        } else {
            (1u64 << 50).max(used * 2)
        };
        let total_files = if max_inodes > 0 {
            max_inodes
        } else {
            (10u64 << 20).max(inodes * 2)
        };
        Ok(Statfs {
            blocks: total / bsize,
            bfree: total.saturating_sub(used) / bsize,
            files: total_files,
            ffree: total_files.saturating_sub(inodes),
            bsize: bsize as u32,
        })
    }

    // ---- xattrs ----------------------------------------------------------

    fn check_xattr_name(name: &[u8]) -> VResult<()> {
        if name.is_empty() {
            return Err(libc::EINVAL);
        }
        if name.len() > 255 {
            return Err(libc::ERANGE);
        }
        if name.starts_with(b"system.posix_acl_") {
            // ACLs would be stored but never enforced: refuse rather than mislead.
            return Err(libc::EOPNOTSUPP);
        }
        Ok(())
    }

    pub async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> VResult<()> {
        if ino == STATS_INO {
            return Err(libc::EPERM);
        }
        self.writable()?;
        Self::check_xattr_name(name)?;
        if value.len() > 65536 {
            return Err(libc::E2BIG);
        }
        let f = if flags & libc::XATTR_CREATE != 0 {
            1
        } else if flags & libc::XATTR_REPLACE != 0 {
            2
        } else {
            0
        };
        self.mcache.drop_attr(self.real(ino));
        let r = self.meta.setxattr(self.real(ino), name, value, f).await;
        // Again after: a read racing the change may have cached its absence.
        self.mcache.drop_attr(self.real(ino));
        r.map_err(|e| meta_errno("setxattr", e))
    }

    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> VResult<Vec<u8>> {
        if ino == STATS_INO {
            return Err(libc::ENODATA);
        }
        Self::check_xattr_name(name)?;
        let real = self.real(ino);
        let caps = name == b"security.capability";
        if caps && self.mcache.caps_absent(real) {
            return Err(libc::ENODATA);
        }
        let generation = self.mcache.generation();
        let r = self.meta.getxattr(real, name).await;
        if caps && matches!(r, Err(MetaError::Errno(libc::ENODATA))) {
            self.mcache.put_caps_absent(generation, real);
        }
        r.map_err(|e| meta_errno("getxattr", e))
    }

    /// Names, each followed by a NUL, as listxattr(2) returns them.
    pub async fn listxattr(&self, ino: u64) -> VResult<Vec<u8>> {
        if ino == STATS_INO {
            return Ok(Vec::new());
        }
        let names = self
            .meta
            .listxattr(self.real(ino))
            .await
            .map_err(|e| meta_errno("listxattr", e))?;
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> VResult<()> {
        if ino == STATS_INO {
            return Err(libc::EPERM);
        }
        self.writable()?;
        Self::check_xattr_name(name)?;
        self.mcache.drop_attr(self.real(ino));
        let r = self.meta.removexattr(self.real(ino), name).await;
        self.mcache.drop_attr(self.real(ino));
        r.map_err(|e| meta_errno("removexattr", e))
    }

    // ---- directories -----------------------------------------------------

    pub async fn opendir(&self, ino: u64, plus: bool) -> VResult<u64> {
        if ino == STATS_INO {
            return Err(libc::ENOTDIR);
        }
        let real = self.real(ino);
        let ticket = self.recent.ticket();
        let mut listing = self.dir_head(real, plus, ticket).await?;
        // The first page now, so a small directory costs what it did.
        self.fetch_dir_page(real, plus, &mut listing).await?;
        let d = DirHandle {
            ino: real,
            plus,
            ticket,
            listing: tokio::sync::Mutex::new(listing),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.handles.lock() {
            h.insert(fh, Handle::Dir(Arc::new(d)));
        }
        Ok(fh)
    }

    /// A listing holding "." and "..", checking that `real` is a directory.
    async fn dir_head(&self, real: u64, plus: bool, ticket: u64) -> VResult<Listing> {
        let attr = self
            .meta
            .getattr(real)
            .await
            .map_err(|e| meta_errno("opendir", e))?;
        if attr.kind != FileKind::Dir {
            return Err(libc::ENOTDIR);
        }
        let parent = if real == self.cfg.root {
            real
        } else {
            attr.parent
        };
        let parent_attr = if plus {
            self.meta.getattr(parent).await.ok()
        } else {
            None
        };
        let head = vec![
            DirItem {
                ino: self.shown(real),
                name: b".".to_vec(),
                kind: FileKind::Dir,
                attr: Some(attr),
                volatile: false,
            },
            DirItem {
                ino: self.shown(parent),
                name: b"..".to_vec(),
                kind: FileKind::Dir,
                attr: parent_attr,
                volatile: false,
            },
        ];
        Ok(Listing::new(head, ticket))
    }

    /// Reads the listing's next page (with attributes for readdirplus).
    async fn fetch_dir_page(&self, ino: u64, plus: bool, listing: &mut Listing) -> VResult<()> {
        let (next, entries, server) = self
            .meta
            .readdir_page(ino, listing.cursor(), dir::PAGE)
            .await
            .map_err(|e| meta_errno("readdir", e))?;
        if server.is_empty() {
            static TOLD: std::sync::Once = std::sync::Once::new();
            TOLD.call_once(|| {
                tracing::warn!(
                    "the Redis user may not run INFO: a listing of a large directory that \
                     spans a Redis failover or restart can miss names; grant +info \
                     (README, ACL)"
                )
            });
        }
        // An hour directory of the trash is only reached by a lookup in
        // `.trash`, which noted it: its files may then be opened.
        if ino == TRASH_INO || self.reached_via_trash(ino) {
            let inos: Vec<u64> = entries.iter().map(|e| e.ino).collect();
            self.note_via_trash(&inos);
        }
        let ticket = self.recent.ticket();
        let attrs = if plus {
            let inos: Vec<u64> = entries.iter().map(|e| e.ino).collect();
            self.meta
                .getattrs(&inos)
                .await
                .map_err(|e| meta_errno("readdirplus", e))?
        } else {
            vec![None; entries.len()]
        };
        let mut page = Vec::with_capacity(entries.len());
        for (e, a) in entries.into_iter().zip(attrs) {
            if plus && a.is_none() {
                continue; // removed meanwhile
            }
            page.push(DirItem {
                ino: self.shown(e.ino),
                name: e.name,
                kind: e.kind,
                attr: a.map(|a| Attr {
                    parent: self.shown(a.parent),
                    ..a
                }),
                volatile: false,
            });
        }
        if listing.add_page(next, page, ticket, &server) {
            tracing::info!(
                "directory {ino}: Redis changed during the listing (failover or restart): \
                 scanning it again from the start, names already given left out"
            );
        }
        Ok(())
    }

    /// Entries from `offset` on (offset n resumes after the n-th entry),
    /// each handed to `add` with the offset that resumes after it, until
    /// `add` answers true (the reply is full: that entry was not taken) or
    /// the kept entries run out; further pages are read first until at
    /// least `want` entries are kept from `offset` (or the directory ends).
    /// Returns the offset the kernel will resume from. Attributes are
    /// settled now against what this node changed since they were read,
    /// so a listing never shows a file shorter than writes this node
    /// already acknowledged.
    ///
    /// Pages read for a plain readdir request come without attributes:
    /// with READDIRPLUS_AUTO the kernel asks for them only while something
    /// looks at the entries (`ls -l`), not for `ls -f` or a segment scan;
    /// a plain request is given the kept entries as they are, not copied.
    pub async fn readdir_fill(
        &self,
        fh: u64,
        offset: u64,
        want: usize,
        plus: bool,
        mut add: impl FnMut(u64, &DirItem) -> bool,
    ) -> VResult<u64> {
        let d = self.dir_handle(fh)?;
        let mut listing = d.listing.lock().await;
        if !listing.skip_to(offset) {
            // rewinddir or seekdir back: list again from the start.
            *listing = self.dir_head(d.ino, d.plus, d.ticket).await?;
            listing.skip_to(offset);
        }
        while listing.wants_more(offset, want) {
            self.fetch_dir_page(d.ino, d.plus && plus, &mut listing)
                .await?;
            listing.skip_to(offset);
        }
        let volatile = self.recent.dir_changed(d.ino, d.ticket);
        let mut next = offset;
        for (off, it, ticket) in listing.page(usize::MAX) {
            let full = if !plus || it.attr.is_none() {
                add(off, it)
            } else {
                let mut it = it.clone();
                it.volatile = volatile;
                if let Some(a) = it.attr.filter(|a| a.kind == FileKind::File) {
                    let real = self.real(it.ino);
                    let settled = self.settle(real, ticket, a);
                    // Forgotten whether it changed: send it, but let the
                    // kernel ask again at once.
                    it.volatile |= settled.is_none();
                    let a = self.fix_attr(real, settled.unwrap_or(a));
                    it.attr = Some(Attr {
                        parent: self.shown(a.parent),
                        ..a
                    });
                }
                add(off, &it)
            };
            if full {
                break;
            }
            next = off;
        }
        Ok(next)
    }

    /// Reads the listing's next page ahead once a reply ending at `next`
    /// was sent, while the kernel consumes it, so the next readdir finds
    /// it kept. A failure is left for that readdir to meet again.
    pub async fn readdir_ahead(&self, fh: u64, next: u64, plus: bool) {
        let Ok(d) = self.dir_handle(fh) else {
            return;
        };
        let mut listing = d.listing.lock().await;
        if listing.wants_ahead(next) {
            let _ = self
                .fetch_dir_page(d.ino, d.plus && plus, &mut listing)
                .await;
        }
    }

    fn dir_handle(&self, fh: u64) -> VResult<Arc<DirHandle>> {
        match self.handles.lock().map_err(|_| libc::EIO)?.get(&fh) {
            Some(Handle::Dir(d)) => Ok(d.clone()),
            _ => Err(libc::EBADF),
        }
    }

    /// The entry readdirplus gives the kernel for `item` of directory
    /// `dir` (as the kernel numbers it); None for an item without
    /// attributes. Call `entry_unsent` if the reply had no room for it
    /// after all.
    pub fn entry_for_item(&self, dir: u64, item: &DirItem) -> Option<Entry> {
        let gen = self.kernel.snapshot_gen();
        let a = item.attr?;
        let entry_ttl = if a.kind == FileKind::Dir {
            self.cfg.dir_entry_ttl
        } else {
            self.cfg.entry_ttl
        };
        // The kernel links no dentry (and counts no lookup) for these.
        let (attr_ttl, entry_ttl) = if item.name == b"." || item.name == b".." {
            (self.kernel.attr_ttl(item.ino, self.cfg.attr_ttl), entry_ttl)
        } else {
            self.kernel
                .name_ttls(gen, dir, &item.name, item.ino, self.cfg.attr_ttl, entry_ttl)
        };
        if item.volatile {
            return Some(Entry {
                ino: item.ino,
                attr: a,
                attr_ttl: Duration::ZERO,
                entry_ttl: Duration::ZERO,
            });
        }
        Some(Entry {
            ino: item.ino,
            attr: a,
            attr_ttl,
            entry_ttl,
        })
    }

    /// `entry_for_item` gave `item` an entry the reply had no room for:
    /// the kernel counts no lookup of it.
    pub fn entry_unsent(&self, item: &DirItem) {
        if item.attr.is_some() && item.name != b"." && item.name != b".." {
            self.kernel.forget(item.ino, 1);
        }
    }

    pub fn releasedir(&self, fh: u64) {
        if let Ok(mut h) = self.handles.lock() {
            h.remove(&fh);
        }
    }

    // ---- files -----------------------------------------------------------

    fn add_open(&self, ino: u64, length: u64) {
        if let Ok(mut o) = self.open.lock() {
            let e = o.entry(ino).or_insert_with(|| OpenFile {
                refs: 0,
                writer: Arc::new(FileWriter::new(ino, self.data.clone())),
                chunks: Arc::new(Mutex::new(ChunkCache::default())),
                length: Arc::new(AtomicU64::new(length)),
                wrote: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                gate: Arc::new(tokio::sync::RwLock::new(())),
                unlinked: false,
            });
            e.refs += 1;
            // Close-to-open: a new open re-reads the slice lists.
            if let Ok(mut c) = e.chunks.lock() {
                c.generation += 1;
                c.chunks.clear();
            }
            if !e.writer.is_dirty() {
                if e.wrote.load(Ordering::Acquire) {
                    e.length.fetch_max(length, Ordering::AcqRel);
                } else {
                    e.length.store(length, Ordering::Release);
                }
            }
        }
    }

    fn new_file_handle(&self, ino: u64, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.handles.lock() {
            h.insert(
                fh,
                Handle::File(Arc::new(FileHandle {
                    ino,
                    writable,
                    stream: Mutex::new(Stream::default()),
                })),
            );
        }
        fh
    }

    /// FOPEN_KEEP_CACHE only when the file is unchanged since this node last
    /// opened it: segments are immutable, so hot reads never leave the kernel.
    fn keep_cache(&self, ino: u64, attr: &Attr) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        let now = (attr.mtime, attr.length);
        let keep = seen.get(&ino) == Some(&now);
        seen.insert(ino, now);
        if seen.len() > 100_000 {
            seen.clear();
        }
        keep
    }

    pub async fn open(&self, _ctx: &Ctx, ino: u64, flags: i32) -> VResult<OpenReply> {
        if ino == STATS_INO {
            return self.stats.open(flags).map(|fh| OpenReply {
                fh,
                keep_cache: false,
                direct_io: true,
            });
        }
        let real = self.real(ino);
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        if writable || flags & libc::O_TRUNC != 0 {
            self.writable()?;
        }
        // The kernel resolved the name through a dentry it cached before
        // another node replaced or removed the file (its change event may
        // still be on the way). ESTALE makes the kernel look the name up
        // again (LOOKUP_REVAL) and open what it names now, instead of
        // failing with ENOENT or serving the replaced content.
        let attr = match self.fresh_attr(real, "open").await {
            Err(libc::ENOENT) => return Err(self.stale_name(real)),
            other => other?,
        };
        // A file with no name left can be opened by name only through a
        // stale dentry; through /proc/PID/fd only when this node removed
        // its last name (the kernel then dropped the name itself).
        if attr.kind == FileKind::File && attr.nlink == 0 && !self.unlinked_here(real) {
            return Err(self.stale_name(real));
        }
        match attr.kind {
            FileKind::Dir => return Err(libc::EISDIR),
            FileKind::File => {}
            _ => return Err(libc::ENXIO),
        }
        // A move into the trash sets ctime only: a file whose ctime is its
        // mtime (written, never chmod'ed or moved) needs no parent lookup.
        if self.format.trash_days > 0 && attr.ctime != attr.mtime && self.in_trash(&attr).await? {
            // Deleted or replaced since the kernel cached the name it used
            // (a name under .trash was looked up here, and noted).
            if !self.reached_via_trash(real) {
                return Err(self.stale_name(real));
            }
            if writable || flags & libc::O_TRUNC != 0 {
                return Err(libc::EPERM);
            }
        }
        let keep_cache = !writable && self.keep_cache(real, &attr);
        // Close-to-open: if the kernel may hold older attributes or pages
        // than Redis has now, drop them before the application reads.
        let stale = self
            .reported
            .lock()
            .map(|r| r.get(&real) != Some(&(attr.mtime, attr.length)))
            .unwrap_or(true);
        if stale && !self.is_open_here(real) {
            self.invalidate_inode(real).await;
            if let Ok(mut r) = self.reported.lock() {
                r.insert(real, (attr.mtime, attr.length));
            }
        }
        self.add_open(real, attr.length);
        let fh = self.new_file_handle(real, writable);
        Ok(OpenReply {
            fh,
            keep_cache,
            direct_io: false,
        })
    }

    /// `real` is no longer what the name the kernel opened names: forget
    /// what this node cached (the lookup the kernel retries must reach
    /// Redis) and answer ESTALE.
    fn stale_name(&self, real: u64) -> i32 {
        tracing::debug!(
            ino = real,
            "replaced or removed file reached through an old name: ESTALE, the kernel looks up again"
        );
        self.mcache.drop_inode(real);
        libc::ESTALE
    }

    /// A file whose (only) name is in the trash: read-only there.
    pub(crate) async fn in_trash(&self, attr: &Attr) -> VResult<bool> {
        if attr.parent == 0 || attr.parent == ROOT_INO {
            return Ok(false);
        }
        let pa = match self.mcache.attr(attr.parent) {
            Some(a) => a,
            None => match self.fresh_attr(attr.parent, "open").await {
                Ok(a) => a,
                Err(libc::ENOENT) => return Ok(false),
                Err(e) => return Err(e),
            },
        };
        Ok(pa.parent == TRASH_INO)
    }

    pub async fn create(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> VResult<(Entry, OpenReply)> {
        let entry = self
            .mknod(
                ctx,
                parent,
                name,
                libc::S_IFREG | (mode & 0o7777),
                umask,
                0,
                b"",
            )
            .await?;
        let real = self.real(entry.ino);
        self.add_open(real, 0);
        let acc = flags & libc::O_ACCMODE;
        let fh = self.new_file_handle(real, acc != libc::O_RDONLY);
        Ok((
            entry,
            OpenReply {
                fh,
                keep_cache: false,
                direct_io: false,
            },
        ))
    }

    fn file_handle(&self, fh: u64) -> VResult<Arc<FileHandle>> {
        let h = self.handles.lock().map_err(|_| libc::EIO)?;
        match h.get(&fh) {
            Some(Handle::File(f)) => Ok(f.clone()),
            Some(Handle::Dir(_)) => Err(libc::EISDIR),
            None => Err(libc::EBADF),
        }
    }

    /// Committed slice records of a chunk and their replay, from the open
    /// file's cache or Redis.
    async fn committed(&self, ino: u64, indx: u64, h: &Handles) -> VResult<ChunkLists> {
        let generation = match h.chunks.lock() {
            Ok(c) => {
                if let Some(hit) = c.chunks.get(&indx) {
                    return Ok(hit.clone());
                }
                c.generation
            }
            Err(_) => 0,
        };
        let records = Arc::new(
            self.meta
                .read_chunk(ino, indx)
                .await
                .map_err(|e| meta_errno("read", e))?,
        );
        let pieces = Arc::new(crate::meta::build_pieces(&records));
        if let Ok(mut c) = h.chunks.lock() {
            // Not if the file changed while this list was being read.
            if c.generation == generation {
                c.chunks.insert(indx, (records.clone(), pieces.clone()));
            }
        }
        Ok((records, pieces))
    }

    /// What a read of chunk bytes [from, to) replays: committed records with
    /// this node's uncommitted slices on top, and where the latter's blocks
    /// are. The overlay is taken first: a commit finishing in between then
    /// shows its slices in both views, never in neither.
    async fn chunk_view(
        &self,
        ino: u64,
        indx: u64,
        h: &Handles,
        from: u32,
        to: u32,
    ) -> VResult<(Arc<Vec<Piece>>, PendingBlocks)> {
        let (mine, pending) = h.writer.overlay(indx, from, to);
        let (records, pieces) = self.committed(ino, indx, h).await?;
        if mine.is_empty() {
            return Ok((pieces, pending));
        }
        let mut all = Vec::with_capacity(records.len() + mine.len());
        all.extend_from_slice(&records);
        all.extend(mine);
        Ok((Arc::new(crate::meta::build_pieces(&all)), pending))
    }

    /// Bytes [offset, offset+size) of an open file (fewer at its end), as
    /// slices of the cached blocks that hold them, in order: the reply is
    /// sent from them without joining them first.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> VResult<Vec<Bytes>> {
        if is_stats_fh(fh) {
            return self
                .stats
                .read(fh, offset, size)
                .map(|v| vec![Bytes::from(v)]);
        }
        let h = self.file_handle(fh)?;
        let ino = h.ino;
        let of = self.open_state(ino).ok_or(libc::EBADF)?;
        let len = of.length.load(Ordering::Acquire);
        if offset >= len {
            return Ok(Vec::new());
        }
        let end = (offset + size as u64).min(len);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        // Sequential or random: see prefetch::readahead.
        let sequential = match h.stream.lock() {
            Ok(mut st) => self.readahead.classify(&mut st, offset, size, end),
            Err(_) => true,
        };
        let mut missed = false;
        let mut pos = offset;
        while pos < end {
            let indx = pos / CHUNK_SIZE;
            let coff = (pos % CHUNK_SIZE) as u32;
            let n = ((indx + 1) * CHUNK_SIZE).min(end) - pos;
            let to = coff + n as u32;
            let (pieces, pending) = self.chunk_view(ino, indx, &of, coff, to).await?;
            let kept = out.len();
            match self
                .data
                .read_chunk_parts(&pieces, coff, n as u32, !sequential, &pending, &mut out)
                .await
            {
                Ok(m) => missed |= m,
                Err(e) => {
                    // The cached slice list may name slices that compaction or
                    // an overwrite replaced and whose objects are gone by now.
                    tracing::debug!(ino, error = %e, "read failed; retrying with a fresh slice list");
                    self.forget_pieces(ino);
                    let (pieces, pending) = self.chunk_view(ino, indx, &of, coff, to).await?;
                    out.truncate(kept);
                    missed |= self
                        .data
                        .read_chunk_parts(&pieces, coff, n as u32, !sequential, &pending, &mut out)
                        .await
                        .map_err(|e| data_errno("read", e))?;
                }
            }
            pos += n;
        }
        crate::metrics::READ_BYTES.add(end - offset);
        if sequential {
            // Keep the next window in flight: grown while the reader waits
            // on the store, shrunk when the memory cache is nearly full (so
            // prefetched blocks do not evict each other before use).
            let waited = started.elapsed() > Duration::from_millis(1);
            let pressure = self.data.cache.under_pressure();
            let plan = match h.stream.lock() {
                Ok(mut st) => self
                    .readahead
                    .after_sequential(ino, &mut st, end, len, waited, pressure),
                Err(_) => None,
            };
            if let Some((from, want_to)) = plan {
                let mut p = from;
                while p < want_to {
                    let indx = p / CHUNK_SIZE;
                    let coff = (p % CHUNK_SIZE) as u32;
                    let n = ((indx + 1) * CHUNK_SIZE).min(want_to) - p;
                    if let Ok((_, pieces)) = self.committed(ino, indx, &of).await {
                        self.data.prefetch(&pieces, coff, n as u32);
                    }
                    p += n;
                }
            }
        } else if missed && len <= self.data.fill_limit() && self.readahead.random_miss(ino) {
            // A random reader that keeps missing: fetch the rest of the
            // file into the disk cache in the background.
            crate::prefetch::readahead::spawn_fill(
                self.data.clone(),
                self.readahead.clone(),
                ino,
                len,
            );
        }
        Ok(out)
    }

    /// Buffers a write. Waiting for write-buffer budget (the store is slow
    /// or down and buffers cannot drain) ends with EINTR when `interrupted`
    /// fires, or EIO after `--io-retry`: nothing of the write is kept then.
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        interrupted: impl std::future::Future<Output = ()>,
    ) -> VResult<u32> {
        if is_stats_fh(fh) {
            return Err(libc::EBADF);
        }
        self.writable()?;
        let h = self.file_handle(fh)?;
        if !h.writable {
            return Err(libc::EBADF);
        }
        if offset.saturating_add(data.len() as u64) > (1u64 << 50) {
            return Err(libc::EFBIG);
        }
        let of = self.open_state(h.ino).ok_or(libc::EBADF)?;
        // Budget before any lock: waiting for it never blocks anyone else.
        let wait_limit = self.data.retry_for.max(Duration::from_secs(5));
        let held = tokio::select! {
            r = tokio::time::timeout(wait_limit, self.data.budget.take(data.len())) => match r {
                Ok(r) => r.map_err(|e| data_errno("write", e))?,
                Err(_) => {
                    tracing::warn!(ino = h.ino, "no write buffer freed within {wait_limit:?}: EIO");
                    return Err(libc::EIO);
                }
            },
            _ = interrupted => return Err(libc::EINTR),
        };
        let pending = {
            // Shared: a truncate of this file waits for the write, and the
            // write for it, so lengths never interleave.
            let _gate = of.gate.read().await;
            let pending = of
                .writer
                .write(offset, data, held)
                .map_err(|e| data_errno("write", e))?;
            // Before the reply: from now on every attribute reply shows it.
            of.length
                .fetch_max(offset + data.len() as u64, Ordering::AcqRel);
            of.wrote.store(true, Ordering::Release);
            pending
        };
        crate::metrics::WRITE_BYTES.add(data.len() as u64);
        if pending >= 4 * MAX_PENDING_SLICES {
            // The flusher is not keeping up with this writer: help it. The
            // write itself is buffered either way; a failure sticks for fsync.
            if let Err(e) = self.flush_inode(h.ino).await {
                tracing::debug!(ino = h.ino, errno = e, "flush of many small slices failed");
            }
        } else if pending >= MAX_PENDING_SLICES {
            self.kick.notify_one();
        }
        Ok(data.len() as u32)
    }

    /// The writer committed: its slices are in Redis now.
    fn after_commit(&self, ino: u64, h: &Handles, attr: Attr) {
        if let Ok(mut c) = h.chunks.lock() {
            c.generation += 1;
            c.chunks.clear();
        }
        h.length.fetch_max(attr.length, Ordering::AcqRel);
        self.changed_here(ino, attr);
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(&ino);
        }
    }

    /// Commits every write to `ino` buffered on this node.
    async fn flush_inode(&self, ino: u64) -> VResult<()> {
        let Some(h) = self.open_state(ino) else {
            return Ok(());
        };
        h.writer
            .flush(|attr| self.after_commit(ino, &h, *attr))
            .await
            .map_err(|e| data_errno("flush", e))
    }

    /// Commits buffered writes in the background: those idle for a moment,
    /// the oldest ones when the write budget runs dry, and those whose last
    /// flush failed (and the files closed meanwhile, kept for this).
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let vfs = self.clone();
        tokio::spawn(async move {
            loop {
                let pressure = tokio::select! {
                    _ = tokio::time::sleep(FLUSH_TICK) => false,
                    _ = vfs.data.budget.pressure.notified() => true,
                    _ = vfs.kick.notified() => false,
                };
                let due: Vec<(u64, Arc<FileWriter>)> = match vfs.open.lock() {
                    Ok(o) => o
                        .iter()
                        .filter(|(_, f)| {
                            if pressure {
                                f.writer.is_dirty()
                            } else {
                                f.writer.flush_due(FLUSH_IDLE, FLUSH_MAX_AGE)
                            }
                        })
                        .map(|(ino, f)| (*ino, f.writer.clone()))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                for (ino, w) in due {
                    if w.background.swap(true, Ordering::AcqRel) {
                        continue; // one at a time per file
                    }
                    let vfs = vfs.clone();
                    tokio::spawn(async move {
                        let r = vfs.flush_inode(ino).await;
                        crate::metrics::BACKGROUND_FLUSHES.add(1);
                        if r.is_err() && w.is_dirty() {
                            tracing::warn!(
                                ino,
                                "background flush failed; the data stays buffered and is retried"
                            );
                        }
                        vfs.forget_if_closed(ino);
                        w.background.store(false, Ordering::Release);
                    });
                }
            }
        })
    }

    /// Drops the entry of a file closed everywhere here once its writes
    /// are committed.
    fn forget_if_closed(&self, ino: u64) {
        if let Ok(mut o) = self.open.lock() {
            if o.get(&ino)
                .is_some_and(|f| f.refs == 0 && !f.writer.is_dirty())
            {
                o.remove(&ino);
            }
        }
    }

    /// What close, fsync and release wait for: with write-back, the
    /// writes staged durably on the local disk (the flusher commits them
    /// next); otherwise, or when staging is full or failed, committed.
    async fn persist_inode(&self, ino: u64) -> VResult<()> {
        let write_back = self.data.staging.as_ref().is_some_and(|s| s.accepts());
        if write_back {
            let Some(h) = self.open_state(ino) else {
                return Ok(());
            };
            match h.writer.stage().await {
                Ok(true) => {
                    self.kick.notify_one();
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => return Err(data_errno("stage", e)),
            }
        }
        self.flush_inode(ino).await
    }

    /// close(2): commit buffered writes, drop the closing process's POSIX
    /// locks. Closing a handle that cannot write does not wait for other
    /// handles' uploads.
    pub async fn flush(&self, fh: u64, lock_owner: Option<u64>) -> VResult<()> {
        if is_stats_fh(fh) {
            return Ok(());
        }
        let h = self.file_handle(fh)?;
        let r = if h.writable {
            self.persist_inode(h.ino).await
        } else {
            Ok(())
        };
        if let Some(owner) = lock_owner {
            self.unlock_all(h.ino, owner).await;
        }
        r
    }

    pub async fn fsync(&self, fh: u64) -> VResult<()> {
        if is_stats_fh(fh) {
            return Ok(());
        }
        let h = self.file_handle(fh)?;
        self.persist_inode(h.ino).await
    }

    async fn unlock_all(&self, ino: u64, owner: u64) {
        let had = self
            .lock_owners
            .lock()
            .map(|mut s| s.remove(&(ino, owner)).is_some())
            .unwrap_or(true);
        if had {
            if let Err(e) = self.meta.setlk(ino, owner, 2, 0, LOCK_EOF, 0).await {
                tracing::warn!(ino, error = %e, "cannot release locks");
            }
        }
    }

    /// F_GETLK: the first conflicting lock, or F_UNLCK.
    pub async fn getlk(
        &self,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> VResult<(i32, u64, u64, u32)> {
        let h = self.file_handle(fh)?;
        let typ = lock_type(typ)?;
        let (t, s, e, pid) = self
            .meta
            .getlk(h.ino, owner, typ, start.min(LOCK_EOF), end.min(LOCK_EOF))
            .await
            .map_err(|e| meta_errno("getlk", e))?;
        let t = match t {
            0 => libc::F_RDLCK,
            1 => libc::F_WRLCK,
            _ => return Ok((libc::F_UNLCK, start, end, 0)),
        };
        let e = if e >= LOCK_EOF { i64::MAX as u64 } else { e };
        Ok((t, s, e, pid))
    }

    /// F_SETLK / F_SETLKW (sleep) and flock: locks held in Redis, so they
    /// hold across nodes. A waiting lock polls with backoff until granted
    /// or `interrupted` fires (EINTR).
    ///
    /// Fencing: while this node's session may be expiring no lock is granted
    /// (ENOLCK), and an owner whose lock was taken before the node last gave
    /// up its locks gets ENOLCK once, on its next lock operation: it must
    /// not go on believing it holds a lock another node may hold now.
    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        fh: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        mut interrupted: impl std::future::Future<Output = ()> + Unpin,
    ) -> VResult<()> {
        let h = self.file_handle(fh)?;
        let t = lock_type(typ)?;
        let key = (h.ino, owner);
        let lost = self
            .lock_owners
            .lock()
            .map(|mut s| match s.get(&key) {
                Some(e) if *e < self.lease.epoch() => s.remove(&key).is_some(),
                _ => false,
            })
            .unwrap_or(false);
        if lost {
            // What is left of it in Redis (the session may still be alive).
            if let Err(e) = self.meta.setlk(h.ino, owner, 2, 0, LOCK_EOF, 0).await {
                tracing::debug!(ino = h.ino, error = %e, "cannot drop a lost lock");
            }
            return Err(libc::ENOLCK);
        }
        let mut wait = Duration::from_millis(5);
        loop {
            if t != 2 && self.lease.in_danger() {
                return Err(libc::ENOLCK);
            }
            let epoch = self.lease.epoch();
            if t != 2 {
                if let Ok(mut s) = self.lock_owners.lock() {
                    s.entry(key).or_insert(epoch);
                }
            }
            match self
                .meta
                .setlk(h.ino, owner, t, start.min(LOCK_EOF), end.min(LOCK_EOF), pid)
                .await
            {
                Err(MetaError::Errno(libc::EAGAIN)) if sleep => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut interrupted => return Err(libc::EINTR),
                    }
                    wait = (wait * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(meta_errno("setlk", e)),
                Ok(()) => return Ok(()),
            }
        }
    }

    pub async fn release(&self, fh: u64, flock_owner: Option<u64>) -> VResult<()> {
        if is_stats_fh(fh) {
            self.stats.release(fh);
            return Ok(());
        }
        let h = match self.handles.lock().map_err(|_| libc::EIO)?.remove(&fh) {
            Some(Handle::File(f)) => f,
            _ => return Err(libc::EBADF),
        };
        let ino = h.ino;
        let flushed = if h.writable {
            self.persist_inode(ino).await
        } else {
            Ok(())
        };
        if let Some(owner) = flock_owner {
            self.unlock_all(ino, owner).await;
        }
        self.drop_ref(ino).await?;
        flushed
    }

    pub async fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> VResult<()> {
        self.writable()?;
        let h = self.file_handle(fh)?;
        if !h.writable {
            return Err(libc::EBADF);
        }
        if length == 0 {
            return Err(libc::EINVAL);
        }
        let gate = self.open_state(h.ino).map(|h| h.gate);
        let _gate = match &gate {
            Some(g) => Some(g.write().await),
            None => None,
        };
        self.flush_inode(h.ino).await?;
        let attr = self
            .meta
            .fallocate(h.ino, mode, offset, length, self.limits().0)
            .await
            .map_err(|e| meta_errno("fallocate", e))?;
        if let Some(of) = self.open_state(h.ino) {
            of.length.store(attr.length, Ordering::Release);
            of.wrote.store(true, Ordering::Release);
        }
        self.forget_pieces(h.ino);
        self.changed_here(h.ino, attr);
        Ok(())
    }

    /// Commits every buffered write on this node (unmount, shutdown).
    pub async fn flush_all(&self) {
        let inos: Vec<u64> = self
            .open
            .lock()
            .map(|o| o.keys().copied().collect())
            .unwrap_or_default();
        for ino in inos {
            if let Err(e) = self.flush_inode(ino).await {
                tracing::error!(ino, errno = e, "flush at shutdown failed");
            }
        }
    }
}
