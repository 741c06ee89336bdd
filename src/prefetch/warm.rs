//! Warm-on-commit: when another node commits a file whose name matches
//! `--warm-on-commit`, its blocks are fetched into this node's cache at
//! once, and (within `--warm-page-cache`) read through the mount so the
//! kernel's page cache holds it before the application's first read.
//!
//! Driven by the change events other nodes publish: an entry event whose
//! name matches (a create, or a rename over the old name as Milvus replaces
//! `bloom_filter`) is looked up and remembered; a later inode event of a
//! remembered file (its writer committed) warms it again. Missing an event
//! costs only speed: the file is read the ordinary way then.
//!
//! Staleness: blocks are immutable objects named by slice id, so a warmed
//! block can never be stale. The page-cache push reads through the mount,
//! which serves whatever is committed; if the file changed while it was
//! read, its pages are dropped again afterwards (the change event that
//! announced the change may have been handled before the read finished).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};

use crate::meta::{build_pieces, Attr, Event, FileKind, CHUNK_SIZE};
use crate::metrics;
use crate::vfs::Vfs;

/// Which files to warm and how much to spend on it.
#[derive(Clone, Debug)]
pub struct WarmConfig {
    /// File-name patterns (the last path component), e.g. `*.rv`.
    pub patterns: Vec<glob::Pattern>,
    /// Blocks fetched at once for warm-ups, node-wide.
    pub concurrency: usize,
    /// Bytes of warmed files kept pushed into the kernel page cache (0: no push).
    pub page_cache_bytes: u64,
    /// Files larger than this are not warmed (they would evict each other).
    pub max_file_bytes: u64,
    /// Where this node's mount is, for the page-cache push.
    pub mountpoint: PathBuf,
}

/// Parses `--warm-on-commit`: comma-separated glob patterns.
pub fn parse_patterns(spec: &str) -> Result<Vec<glob::Pattern>, String> {
    let mut out = Vec::new();
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if p.contains('/') {
            return Err(format!(
                "pattern '{p}' contains '/': patterns match file names only (e.g. '*.rv,bloom_filter')"
            ));
        }
        out.push(glob::Pattern::new(p).map_err(|e| format!("pattern '{p}': {e}"))?);
    }
    if out.is_empty() {
        return Err("no pattern given (e.g. '*.rv,*.uid,bloom_filter', or '*' for all)".into());
    }
    Ok(out)
}

/// What a warm-up needs to know has not changed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Version {
    mtime: (i64, u32),
    length: u64,
}

impl Version {
    fn of(a: &Attr) -> Version {
        Version {
            mtime: a.mtime,
            length: a.length,
        }
    }
}

enum Job {
    /// Entry `name` of `parent` appeared or was replaced.
    Entry(u64, Vec<u8>),
    /// A watched file's data changed.
    Inode(u64),
}

#[derive(Default)]
struct State {
    /// Files whose name matched, with where they were seen (for the push).
    watched: HashMap<u64, (u64, Vec<u8>)>,
    /// The version each file was last warmed (and pushed) at: a second
    /// event for the same content (a file's create and its commit arrive
    /// as two) costs nothing.
    done: HashMap<u64, Version>,
    /// Being warmed; a second request while busy runs it once more after.
    busy: HashSet<u64>,
    again: HashSet<u64>,
    /// Directory -> (parent, name), learned while resolving paths, and the
    /// way back, so an entry event on (parent, name) (a directory renamed
    /// or removed) forgets it.
    dirs: HashMap<u64, (u64, Vec<u8>)>,
    dir_names: HashMap<(u64, Vec<u8>), u64>,
    /// Files in the page cache by push: inode -> (push number, bytes
    /// charged); `order` holds (inode, push number) oldest first, with
    /// entries of later pushes of the same inode skipped when they surface.
    pushed: HashMap<u64, (u64, u64)>,
    order: VecDeque<(u64, u64)>,
    pushed_bytes: u64,
    pushes: u64,
}

impl State {
    fn forget_dir_name(&mut self, parent: u64, name: &[u8]) {
        if let Some(dir) = self.dir_names.remove(&(parent, name.to_vec())) {
            self.dirs.remove(&dir);
        }
    }

    fn learn_dir(&mut self, dir: u64, parent: u64, name: Vec<u8>) {
        if self.dirs.len() >= MAX_WATCHED {
            self.dirs.clear();
            self.dir_names.clear();
        }
        self.dir_names.insert((parent, name.clone()), dir);
        self.dirs.insert(dir, (parent, name));
    }

    /// Records a push of `bytes` and returns what must leave the page
    /// cache to stay within `budget` (never files open here: `in_use`).
    fn charge(
        &mut self,
        ino: u64,
        bytes: u64,
        budget: u64,
        in_use: impl Fn(u64) -> bool,
    ) -> Vec<(u64, u64)> {
        self.pushes += 1;
        let n = self.pushes;
        if let Some((_, old)) = self.pushed.insert(ino, (n, bytes)) {
            self.pushed_bytes -= old;
        }
        self.pushed_bytes += bytes;
        self.order.push_back((ino, n));
        let mut out = Vec::new();
        let mut kept = Vec::new();
        while self.pushed_bytes > budget {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            match self.pushed.get(&old) {
                Some(&(m, b)) if m == at => {
                    if old != ino && in_use(old) {
                        // Read by someone now: its pages are theirs, not a
                        // guess ahead of demand; it no longer counts.
                        self.pushed.remove(&old);
                        self.pushed_bytes -= b;
                        continue;
                    }
                    if old == ino {
                        // The file just pushed is the only one left over
                        // the budget: keep it (the push checked its size).
                        kept.push((old, at));
                        break;
                    }
                    self.pushed.remove(&old);
                    self.pushed_bytes -= b;
                    out.push((old, b));
                }
                _ => {} // a later push of that inode is further back
            }
        }
        for k in kept.into_iter().rev() {
            self.order.push_front(k);
        }
        out
    }
}

/// Page-cache bytes a file of `len` bytes occupies.
fn pages_of(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

const MAX_WATCHED: usize = 100_000;
/// Files warmed at once (each with up to `concurrency` blocks in flight).
const FILES_AT_ONCE: usize = 4;

pub struct Warmer {
    vfs: Arc<Vfs>,
    cfg: WarmConfig,
    jobs: mpsc::Sender<Job>,
    state: Mutex<State>,
    blocks: Arc<Semaphore>,
    files: Arc<Semaphore>,
    queue_full_told: AtomicBool,
    push_failure_told: AtomicBool,
}

impl Warmer {
    /// Starts the warmer's worker; feed it with `on_event`.
    pub fn start(vfs: Arc<Vfs>, cfg: WarmConfig) -> Arc<Warmer> {
        let (tx, rx) = mpsc::channel(4096);
        let w = Arc::new(Warmer {
            blocks: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            files: Arc::new(Semaphore::new(FILES_AT_ONCE)),
            vfs,
            cfg,
            jobs: tx,
            state: Mutex::new(State::default()),
            queue_full_told: AtomicBool::new(false),
            push_failure_told: AtomicBool::new(false),
        });
        tokio::spawn(w.clone().run(rx));
        w
    }

    fn matches(&self, name: &[u8]) -> bool {
        let Ok(name) = std::str::from_utf8(name) else {
            return false;
        };
        self.cfg.patterns.iter().any(|p| p.matches(name))
    }

    /// Another node changed something. Never waits: a full queue drops the
    /// event (the file is then read the ordinary way).
    pub fn on_event(&self, ev: &Event) {
        if let Event::Entry { parent, name, .. } = ev {
            if let Ok(mut s) = self.state.lock() {
                s.forget_dir_name(*parent, name);
            }
        }
        let job = match ev {
            Event::Entry { parent, name, .. } if self.matches(name) => {
                Job::Entry(*parent, name.clone())
            }
            Event::Inode { ino, .. } => {
                let watched = self.state.lock().is_ok_and(|s| s.watched.contains_key(ino));
                if !watched {
                    return;
                }
                // The commit dropped the kernel's pages of the file (see
                // Vfs::on_remote_change): warm and push it again.
                if let Ok(mut s) = self.state.lock() {
                    s.done.remove(ino);
                }
                Job::Inode(*ino)
            }
            _ => return,
        };
        if self.jobs.try_send(job).is_err() {
            metrics::WARM_SKIPPED.add(1);
            if !self.queue_full_told.swap(true, Ordering::Relaxed) {
                tracing::warn!("warm-up queue full: change events dropped, those files are read from the store when opened");
            }
        }
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.recv().await {
            let ino = match job {
                Job::Inode(ino) => ino,
                Job::Entry(parent, name) => match self.vfs.meta.lookup(parent, &name).await {
                    Ok((ino, attr)) if attr.kind == FileKind::File => {
                        if let Ok(mut s) = self.state.lock() {
                            if s.watched.len() >= MAX_WATCHED {
                                s.watched.clear();
                            }
                            s.watched.insert(ino, (parent, name));
                        }
                        ino
                    }
                    // Gone again, or not a file: nothing to warm.
                    _ => continue,
                },
            };
            let fresh = self.state.lock().is_ok_and(|mut s| {
                if s.busy.insert(ino) {
                    true
                } else {
                    s.again.insert(ino);
                    false
                }
            });
            if !fresh {
                continue;
            }
            let me = self.clone();
            // Waits for its turn in its own task: a small file's event is
            // never stuck behind the queue of a few large ones.
            tokio::spawn(async move {
                let Ok(_permit) = me.files.clone().acquire_owned().await else {
                    return;
                };
                loop {
                    me.warm_file(ino).await;
                    let rerun = me.state.lock().is_ok_and(|mut s| {
                        if s.again.remove(&ino) {
                            true
                        } else {
                            s.busy.remove(&ino);
                            false
                        }
                    });
                    if !rerun {
                        break;
                    }
                }
            });
        }
    }

    /// The file's current version, or None when it is gone, moved to the
    /// trash (deleted, as far as readers are concerned) or not a file.
    async fn version(&self, ino: u64) -> Option<(Version, Attr)> {
        match self.vfs.meta.getattr(ino).await {
            // A move into the trash sets ctime only: a file never moved
            // needs no look at its directory.
            Ok(a) if a.kind == FileKind::File => {
                if a.ctime != a.mtime && self.vfs.in_trash(&a).await.unwrap_or(true) {
                    return None;
                }
                Some((Version::of(&a), a))
            }
            _ => None,
        }
    }

    async fn warm_file(&self, ino: u64) {
        let Some((version, attr)) = self.version(ino).await else {
            if let Ok(mut s) = self.state.lock() {
                s.watched.remove(&ino);
                s.done.remove(&ino);
            }
            return;
        };
        if attr.length == 0 {
            return;
        }
        if self
            .state
            .lock()
            .is_ok_and(|s| s.done.get(&ino) == Some(&version))
        {
            return;
        }
        let Some((parent, name)) = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.watched.get(&ino).cloned())
        else {
            return;
        };
        // Only what this mount shows (--subdir): other trees' files are
        // not this node's business.
        let Some(dir) = self.dir_path(parent).await else {
            metrics::WARM_SKIPPED.add(1);
            tracing::debug!(ino, "not under this mount's root; not warmed");
            return;
        };
        if attr.length > self.cfg.max_file_bytes {
            metrics::WARM_SKIPPED.add(1);
            tracing::debug!(
                ino,
                length = attr.length,
                "file larger than the cache allows; not warmed"
            );
            return;
        }
        let started = std::time::Instant::now();
        let chunks = attr.length.div_ceil(CHUNK_SIZE);
        for indx in 0..chunks {
            let records = match self.vfs.meta.read_chunk(ino, indx).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(ino, indx, error = %e, "warm-up: cannot read the slice list");
                    return;
                }
            };
            let pieces = build_pieces(&records);
            let len = (attr.length - indx * CHUNK_SIZE).min(CHUNK_SIZE) as u32;
            let keys = self.vfs.data.block_keys(&pieces, 0, len);
            let fetches = keys.into_iter().map(|key| {
                let slots = self.blocks.clone();
                async move {
                    let _slot = slots.acquire_owned().await.ok()?;
                    match self.vfs.data.warm_block(key.clone()).await {
                        Ok(n) => Some(n),
                        Err(e) => {
                            tracing::debug!(key, error = %e, "warm-up fetch failed");
                            None
                        }
                    }
                }
            });
            let got = futures::future::join_all(fetches).await;
            if got.iter().any(Option::is_none) {
                // Replaced meanwhile (its old blocks deleted), or the store
                // is failing: the next read fetches what is missing.
                metrics::WARM_SKIPPED.add(1);
                return;
            }
            metrics::WARM_BYTES.add(got.into_iter().flatten().map(|n| n as u64).sum());
            // A file replaced, truncated or deleted meanwhile: stop. Its
            // change event queues a fresh warm-up if it still matters.
            if self.version(ino).await.map(|v| v.0) != Some(version) {
                metrics::WARM_SKIPPED.add(1);
                return;
            }
        }
        metrics::WARM_FILES.add(1);
        tracing::debug!(ino, length = attr.length, elapsed = ?started.elapsed(), "warmed");
        if let Ok(mut s) = self.state.lock() {
            if s.done.len() >= MAX_WATCHED {
                s.done.clear();
            }
            s.done.insert(ino, version);
        }
        if self.cfg.page_cache_bytes >= pages_of(attr.length) {
            let path = self.cfg.mountpoint.join(dir).join(OsStr::from_bytes(&name));
            self.push_page_cache(ino, version, path, parent).await;
        }
    }

    /// Path of directory `dir` below the mount's root, learned from its
    /// parent's listing (cached); None when it is not under the root.
    async fn dir_path(&self, dir: u64) -> Option<PathBuf> {
        let root = self.vfs.cfg.root;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = dir;
        for _ in 0..256 {
            if cur == root {
                let mut p = PathBuf::new();
                for part in parts.iter().rev() {
                    p.push(OsStr::from_bytes(part));
                }
                return Some(p);
            }
            let known = self
                .state
                .lock()
                .ok()
                .and_then(|s| s.dirs.get(&cur).cloned());
            let (parent, name) = match known {
                Some(k) => k,
                None => {
                    let attr = self.vfs.meta.getattr(cur).await.ok()?;
                    if attr.kind != FileKind::Dir || attr.parent == 0 || attr.parent == cur {
                        return None;
                    }
                    let entries = self.vfs.meta.readdir(attr.parent).await.ok()?;
                    let e = entries.into_iter().find(|e| e.ino == cur)?;
                    if let Ok(mut s) = self.state.lock() {
                        s.learn_dir(cur, attr.parent, e.name.clone());
                    }
                    (attr.parent, e.name)
                }
            };
            parts.push(name);
            cur = parent;
        }
        None
    }

    /// Reads the warmed file through the mount, which fills the kernel's
    /// page cache the ordinary way (the kernel takes pushed pages only for
    /// inodes it already knows; a new file is unknown to it).
    async fn push_page_cache(&self, ino: u64, version: Version, path: PathBuf, parent: u64) {
        let expect_ino = self.vfs.shown(ino);
        let len = version.length;
        let read = tokio::task::spawn_blocking(move || read_through(&path, expect_ino, len)).await;
        let failed = match read {
            Ok(Ok(true)) => None,
            // Another file under that name by now.
            Ok(Ok(false)) => Some("the name holds another file by now".to_string()),
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failed {
            metrics::PAGE_CACHE_PUSH_FAILURES.add(1);
            // The path may be stale (a directory renamed): learn it anew.
            if let Ok(mut s) = self.state.lock() {
                s.dirs.clear();
                s.dir_names.clear();
            }
            if !self.push_failure_told.swap(true, Ordering::Relaxed) {
                tracing::warn!(ino, parent, error = %why, "page-cache push failed (told once; vecfs_page_cache_push_failures_total counts them)");
            } else {
                tracing::debug!(ino, parent, error = %why, "page-cache push failed");
            }
            return;
        }
        if self.version(ino).await.map(|v| v.0) != Some(version) {
            // Changed while it was read: what the kernel holds may be old.
            self.vfs.invalidate_inode(ino).await;
            return;
        }
        metrics::PAGE_CACHE_PUSHED_BYTES.add(len);
        let evict = match self.state.lock() {
            Ok(mut s) => s.charge(ino, pages_of(len), self.cfg.page_cache_bytes, |i| {
                self.vfs.is_open(i)
            }),
            Err(_) => Vec::new(),
        };
        for (old, n) in evict {
            metrics::PAGE_CACHE_DROPPED_BYTES.add(n);
            self.vfs.invalidate_inode(old).await;
        }
    }
}

/// Reads `path` whole if it is still inode `ino` of `len` bytes; false
/// when it is not (renamed or replaced since).
fn read_through(path: &std::path::Path, ino: u64, len: u64) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let md = f.metadata()?;
    if md.ino() != ino || md.len() != len {
        return Ok(false);
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if f.read(&mut buf)? == 0 {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_file_names() {
        let p = parse_patterns("*.rv, *.uid ,bloom_filter").unwrap();
        let m = |n: &str| p.iter().any(|p| p.matches(n));
        assert!(m("1700000000.rv"));
        assert!(m("x.uid"));
        assert!(m("bloom_filter"));
        assert!(!m("bloom_filter.tmp"));
        assert!(!m("deleted_docs"));
        assert!(parse_patterns("*").unwrap()[0].matches("anything"));
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_oldest_push_leaves_first_and_a_repush_is_charged_once() {
        let mut s = State::default();
        let none_open = |_| false;
        assert!(s.charge(1, 8 * MIB, 20 * MIB, none_open).is_empty());
        assert!(s.charge(2, 8 * MIB, 20 * MIB, none_open).is_empty());
        // Pushed again (changed and re-warmed): moves to the back, counted once.
        assert!(s.charge(1, 8 * MIB, 20 * MIB, none_open).is_empty());
        assert_eq!(s.pushed_bytes, 16 * MIB);
        assert_eq!(
            s.charge(3, 8 * MIB, 20 * MIB, none_open),
            vec![(2, 8 * MIB)]
        );
        assert_eq!(s.pushed_bytes, 16 * MIB);
        assert_eq!(
            s.charge(4, 8 * MIB, 20 * MIB, none_open),
            vec![(1, 8 * MIB)]
        );
    }

    #[test]
    fn files_open_here_are_never_dropped_and_stop_counting() {
        let mut s = State::default();
        s.charge(1, 8 * MIB, 20 * MIB, |_| false);
        s.charge(2, 8 * MIB, 20 * MIB, |_| false);
        let out = s.charge(3, 8 * MIB, 20 * MIB, |i| i == 1);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(s.pushed_bytes, 16 * MIB);
        assert!(!s.pushed.contains_key(&1));
    }

    #[test]
    fn small_files_are_charged_whole_pages() {
        let mut s = State::default();
        let mut dropped = 0;
        for ino in 0..1000 {
            dropped += s.charge(ino, pages_of(8), 400 * 4096, |_| false).len();
        }
        assert_eq!(s.pushed_bytes, 400 * 4096);
        assert_eq!(dropped, 600);
    }

    #[test]
    fn a_renamed_directory_is_forgotten() {
        let mut s = State::default();
        s.learn_dir(10, 1, b"seg".to_vec());
        s.forget_dir_name(1, b"seg");
        assert!(s.dirs.is_empty() && s.dir_names.is_empty());
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(parse_patterns("").unwrap_err().contains("no pattern"));
        assert!(parse_patterns("db/*.rv").unwrap_err().contains("db/*.rv"));
        assert!(parse_patterns("[a").unwrap_err().contains("[a"));
    }
}
