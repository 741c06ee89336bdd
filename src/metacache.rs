//! This node's cache of names (parent, name -> inode) and attributes, so a
//! stat or lookup whose kernel entry expired is answered without a Redis
//! round trip. It stays coherent because every change this node makes drops
//! what it touches, and every other node's change arrives as an event that
//! drops it too (the vfs turns the cache off when events are off, and clears
//! it when the event channel reconnects, since events may have been missed).
//! A generation counter keeps a lookup that raced with an invalidation from
//! caching what it read before it. Open always asks Redis (close-to-open).
//! While the event channel is down nothing invalidates the cache, so only
//! entries younger than `DEGRADED_TTL` are used until it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::meta::Attr;

/// Past this many entries a map is cleared rather than evicted piecemeal.
const MAX_ENTRIES: usize = 500_000;

/// The longest an entry is used while change events may be missed: the
/// bound every entry had before events kept the cache coherent for longer.
pub const DEGRADED_TTL: Duration = Duration::from_secs(10);

/// (parent, name) -> (inode, when cached)
type Names = HashMap<(u64, Vec<u8>), (u64, Instant)>;

pub struct MetaCache {
    ttl: Duration,
    /// The event channel is down (or not up yet): entries older than
    /// `DEGRADED_TTL` are not used.
    degraded: AtomicBool,
    generation: AtomicU64,
    names: Mutex<Names>,
    attrs: Mutex<HashMap<u64, (Attr, Instant)>>,
    /// Inodes known to have no `security.capability` attribute: the kernel
    /// asks before every write (to drop file capabilities), and a Redis
    /// round trip per 8-byte write would be most of its cost.
    no_caps: Mutex<HashMap<u64, Instant>>,
}

impl MetaCache {
    /// A cache whose entries live `ttl` at most (zero: off).
    pub fn new(ttl: Duration) -> MetaCache {
        MetaCache {
            ttl,
            degraded: AtomicBool::new(true),
            generation: AtomicU64::new(0),
            names: Mutex::new(HashMap::new()),
            attrs: Mutex::new(HashMap::new()),
            no_caps: Mutex::new(HashMap::new()),
        }
    }

    fn on(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// Take before reading Redis; hand to `put` after.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn fresh(&self, at: Instant) -> bool {
        let ttl = if self.degraded.load(Ordering::Acquire) {
            self.ttl.min(DEGRADED_TTL)
        } else {
            self.ttl
        };
        at.elapsed() < ttl
    }

    /// Whether change events may be missed (the channel is down).
    pub fn set_degraded(&self, degraded: bool) {
        self.degraded.store(degraded, Ordering::Release);
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<(u64, Attr)> {
        if !self.on() {
            return None;
        }
        let ino = {
            let names = self.names.lock().ok()?;
            let (ino, at) = names.get(&(parent, name.to_vec()))?;
            self.fresh(*at).then_some(*ino)?
        };
        Some((ino, self.attr(ino)?))
    }

    /// The inode a name held when this node last saw it (any age): a hint
    /// for operations that verify it in Redis anyway.
    pub fn ino_hint(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let names = self.names.lock().ok()?;
        names.get(&(parent, name.to_vec())).map(|(ino, _)| *ino)
    }

    pub fn attr(&self, ino: u64) -> Option<Attr> {
        if !self.on() {
            return None;
        }
        let attrs = self.attrs.lock().ok()?;
        let (attr, at) = attrs.get(&ino)?;
        self.fresh(*at).then_some(*attr)
    }

    /// Caches what was read from Redis, unless something was invalidated
    /// since `generation` was taken (the read may predate that change).
    ///
    /// Every generation bump happens under the attribute lock and this
    /// checks the generation under it too, so a change that lands between
    /// the check and the insert cannot be overwritten by an older read.
    /// Lock order: names, attrs, no_caps.
    pub fn put(&self, generation: u64, name: Option<(u64, &[u8])>, ino: u64, attr: Attr) {
        if !self.on() {
            return;
        }
        let mut names = match name {
            Some(_) => self.names.lock().ok(),
            None => None,
        };
        let Ok(mut attrs) = self.attrs.lock() else {
            return;
        };
        if self.generation() != generation {
            return;
        }
        let now = Instant::now();
        if let (Some((parent, name)), Some(names)) = (name, names.as_mut()) {
            if names.len() >= MAX_ENTRIES {
                names.clear();
            }
            names.insert((parent, name.to_vec()), (ino, now));
        }
        if attrs.len() >= MAX_ENTRIES {
            attrs.clear();
        }
        attrs.insert(ino, (attr, now));
    }

    /// This node changed `ino` and knows its attributes as Redis now has
    /// them: any read that started before must not cache what it saw
    /// (the generation moves), and this replaces the entry.
    pub fn replace(&self, ino: u64, attr: Attr) {
        if !self.on() {
            return;
        }
        if let Ok(mut attrs) = self.attrs.lock() {
            self.bump();
            if attrs.len() >= MAX_ENTRIES {
                attrs.clear();
            }
            attrs.insert(ino, (attr, Instant::now()));
        }
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Forgets a name (and the attributes of the inode it named).
    pub fn drop_name(&self, parent: u64, name: &[u8]) {
        if !self.on() {
            return;
        }
        let Ok(mut names) = self.names.lock() else {
            return;
        };
        let old = names.remove(&(parent, name.to_vec()));
        match old {
            Some((ino, _)) => self.drop_attr(ino),
            None => {
                if let Ok(_attrs) = self.attrs.lock() {
                    self.bump();
                }
            }
        }
    }

    /// Forgets every name that leads to `ino`, and its attributes: the
    /// inode is gone, so a retried lookup must ask Redis. Scans the names
    /// (only on that rare event), so the rest of the cache stays warm.
    pub fn drop_inode(&self, ino: u64) {
        if !self.on() {
            return;
        }
        if let Ok(mut names) = self.names.lock() {
            names.retain(|_, (i, _)| *i != ino);
        }
        self.drop_attr(ino);
    }

    pub fn drop_attr(&self, ino: u64) {
        if !self.on() {
            return;
        }
        if let Ok(mut a) = self.attrs.lock() {
            self.bump();
            a.remove(&ino);
            if let Ok(mut c) = self.no_caps.lock() {
                c.remove(&ino);
            }
        }
    }

    /// Whether `ino` is known to have no capability attribute.
    pub fn caps_absent(&self, ino: u64) -> bool {
        self.on()
            && self
                .no_caps
                .lock()
                .is_ok_and(|c| c.get(&ino).is_some_and(|at| self.fresh(*at)))
    }

    /// Remembers that `ino` had no capability attribute when read at
    /// `generation` (unless something was invalidated since).
    pub fn put_caps_absent(&self, generation: u64, ino: u64) {
        if !self.on() {
            return;
        }
        let Ok(_attrs) = self.attrs.lock() else {
            return;
        };
        if self.generation() != generation {
            return;
        }
        if let Ok(mut c) = self.no_caps.lock() {
            if c.len() >= MAX_ENTRIES {
                c.clear();
            }
            c.insert(ino, Instant::now());
        }
    }

    pub fn clear(&self) {
        let names = self.names.lock();
        let attrs = self.attrs.lock();
        self.bump();
        if let Ok(mut n) = names {
            n.clear();
        }
        if let Ok(mut a) = attrs {
            a.clear();
        }
        if let Ok(mut c) = self.no_caps.lock() {
            c.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(length: u64) -> Attr {
        Attr {
            flags: 0,
            kind: crate::meta::FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime: (0, 0),
            mtime: (0, 0),
            ctime: (0, 0),
            nlink: 1,
            length,
            rdev: 0,
            parent: 1,
        }
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let c = MetaCache::new(Duration::from_secs(10));
        let g = c.generation();
        c.put(g, Some((1, b"a")), 5, attr(1));
        assert_eq!(c.lookup(1, b"a").map(|(i, a)| (i, a.length)), Some((5, 1)));
        let g = c.generation();
        c.drop_attr(5); // another node changed inode 5 meanwhile
        c.put(g, Some((1, b"a")), 5, attr(1));
        assert!(c.lookup(1, b"a").is_none());
        c.drop_name(1, b"a");
        assert!(c.lookup(1, b"a").is_none());
        let off = MetaCache::new(Duration::ZERO);
        off.put(off.generation(), Some((1, b"a")), 5, attr(1));
        assert!(off.lookup(1, b"a").is_none());
    }

    #[test]
    fn while_events_are_down_only_young_entries_are_used() {
        let c = MetaCache::new(Duration::from_secs(60));
        c.set_degraded(false); // the channel is up
        c.put(c.generation(), None, 5, attr(1));
        c.put(c.generation(), None, 6, attr(2));
        let old = Instant::now() - DEGRADED_TTL - Duration::from_secs(1);
        if let Ok(mut a) = c.attrs.lock() {
            a.entry(5).and_modify(|e| e.1 = old);
        }
        assert_eq!(c.attr(5).map(|a| a.length), Some(1));
        c.set_degraded(true);
        assert!(
            c.attr(5).is_none(),
            "an entry older than the bound was used"
        );
        assert_eq!(c.attr(6).map(|a| a.length), Some(2));
        c.set_degraded(false);
        assert_eq!(c.attr(5).map(|a| a.length), Some(1));
        // Before the channel first comes up, the cache is degraded too.
        let fresh = MetaCache::new(Duration::from_secs(60));
        fresh.put(fresh.generation(), None, 5, attr(1));
        if let Ok(mut a) = fresh.attrs.lock() {
            a.entry(5).and_modify(|e| e.1 = old);
        }
        assert!(fresh.attr(5).is_none());
    }
}
