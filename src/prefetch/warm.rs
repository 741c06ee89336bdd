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
    /// Being warmed; a second request while busy runs it once more after.
    busy: HashSet<u64>,
    again: HashSet<u64>,
    /// Directory -> (parent, name), learned while resolving paths.
    dirs: HashMap<u64, (u64, Vec<u8>)>,
    /// Files pushed into the page cache, oldest first, and their bytes.
    pushed: VecDeque<(u64, u64)>,
    pushed_bytes: u64,
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
        let job = match ev {
            Event::Entry { parent, name, .. } if self.matches(name) => {
                Job::Entry(*parent, name.clone())
            }
            Event::Inode { ino, .. } => {
                let watched = self.state.lock().is_ok_and(|s| s.watched.contains_key(ino));
                if !watched {
                    return;
                }
                Job::Inode(*ino)
            }
            _ => return,
        };
        if self.jobs.try_send(job).is_err() {
            metrics::WARM_SKIPPED.add(1);
            tracing::debug!("warm-up queue full; event dropped");
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
            let Ok(permit) = self.files.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
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
                drop(permit);
            });
        }
    }

    /// The file's current version, or None when it is gone or not a file.
    async fn version(&self, ino: u64) -> Option<(Version, Attr)> {
        match self.vfs.meta.getattr(ino).await {
            Ok(a) if a.kind == FileKind::File => Some((Version::of(&a), a)),
            _ => None,
        }
    }

    async fn warm_file(&self, ino: u64) {
        let Some((version, attr)) = self.version(ino).await else {
            return;
        };
        if attr.length == 0 {
            return;
        }
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
        if self.cfg.page_cache_bytes >= attr.length {
            self.push_page_cache(ino, version).await;
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
                        if s.dirs.len() >= MAX_WATCHED {
                            s.dirs.clear();
                        }
                        s.dirs.insert(cur, (attr.parent, e.name.clone()));
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
    async fn push_page_cache(&self, ino: u64, version: Version) {
        let Some((parent, name)) = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.watched.get(&ino).cloned())
        else {
            return;
        };
        let Some(dir) = self.dir_path(parent).await else {
            tracing::debug!(ino, "page-cache push: directory not under this mount");
            return;
        };
        let path = self.cfg.mountpoint.join(dir).join(OsStr::from_bytes(&name));
        let expect_ino = self.vfs.shown(ino);
        let len = version.length;
        let read = tokio::task::spawn_blocking(move || read_through(&path, expect_ino, len)).await;
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                // Another file under that name by now: forget the stale path.
                if let Ok(mut s) = self.state.lock() {
                    s.dirs.remove(&parent);
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(ino, error = %e, "page-cache push failed");
                return;
            }
            Err(_) => return,
        }
        if self.version(ino).await.map(|v| v.0) != Some(version) {
            // Changed while it was read: what the kernel holds may be old.
            self.vfs.invalidate_inode(ino).await;
            return;
        }
        metrics::PAGE_CACHE_PUSHED_BYTES.add(len);
        let evict = match self.state.lock() {
            Ok(mut s) => {
                s.pushed.retain(|(i, _)| *i != ino);
                s.pushed.push_back((ino, len));
                s.pushed_bytes = s.pushed.iter().map(|(_, n)| n).sum();
                let mut out = Vec::new();
                while s.pushed_bytes > self.cfg.page_cache_bytes {
                    let Some((old, n)) = s.pushed.pop_front() else {
                        break;
                    };
                    s.pushed_bytes -= n;
                    out.push((old, n));
                }
                out
            }
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

    #[test]
    fn bad_patterns_are_named() {
        assert!(parse_patterns("").unwrap_err().contains("no pattern"));
        assert!(parse_patterns("db/*.rv").unwrap_err().contains("db/*.rv"));
        assert!(parse_patterns("[a").unwrap_err().contains("[a"));
    }
}
