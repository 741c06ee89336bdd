//! What the kernel was told: the names and inodes it may be caching, so
//! attribute and entry TTLs can be long (tens of seconds) while other
//! nodes' change events flow. Each event drops the entry it names; when the
//! event channel was down (events may have been missed) everything told is
//! dropped once it is back. Replies get the short TTL while events are not
//! flowing, when an event arrived while the reply was being made (the
//! kernel would cache a dentry after its invalidation passed), and for
//! names past the tracking budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Names tracked at most (about 100 bytes each); past it, new names get
/// the short TTL instead of being remembered.
const MAX_NAMES: usize = 400_000;

/// Names one inode keeps (hard links, renames seen here); past it the
/// entry gets the short TTL.
const MAX_NAMES_PER_INODE: usize = 8;

/// One inode the kernel holds: its lookup count (as the kernel counts it,
/// so FORGET can drop it) and the names it was given under.
#[derive(Default)]
struct Known {
    lookups: u64,
    names: Vec<(u64, Box<[u8]>)>,
}

#[derive(Default)]
struct Told {
    by_ino: HashMap<u64, Known>,
    names: usize,
}

/// Everything the kernel was told, to invalidate after missed events.
pub struct Snapshot {
    pub inodes: Vec<u64>,
    pub names: Vec<(u64, Box<[u8]>)>,
}

pub struct KernelView {
    /// Change events are on for this mount: the long TTLs rely on them.
    events: bool,
    /// The event channel is subscribed now.
    live: AtomicBool,
    /// Moves at every remote change and channel loss/recovery: a reply
    /// prepared across a move may carry what an invalidation just dropped.
    remote_gen: AtomicU64,
    short: Duration,
    told: Mutex<Told>,
}

impl KernelView {
    /// `events`: whether change events keep the kernel's caches coherent;
    /// without them the configured TTLs are used as given. `short`: the
    /// TTL when a reply cannot rely on events.
    pub fn new(events: bool, short: Duration) -> KernelView {
        KernelView {
            events,
            live: AtomicBool::new(false),
            remote_gen: AtomicU64::new(0),
            short,
            told: Mutex::new(Told::default()),
        }
    }

    /// Take before reading what a reply will carry; hand to `name_ttls`.
    pub fn snapshot_gen(&self) -> u64 {
        self.remote_gen.load(Ordering::Acquire)
    }

    /// Another node changed something (call before invalidating).
    pub fn remote_change(&self) {
        self.remote_gen.fetch_add(1, Ordering::AcqRel);
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The channel is lost: until it is back, replies get the short TTL.
    pub fn events_down(&self) {
        self.live.store(false, Ordering::Release);
        self.remote_change();
    }

    /// The channel is subscribed again: returns everything the kernel was
    /// told, to invalidate, then lets long TTLs resume with `events_up`.
    pub fn resume_snapshot(&self) -> Snapshot {
        self.remote_change();
        let Ok(t) = self.told.lock() else {
            return Snapshot {
                inodes: Vec::new(),
                names: Vec::new(),
            };
        };
        Snapshot {
            inodes: t.by_ino.keys().copied().collect(),
            names: t
                .by_ino
                .values()
                .flat_map(|k| k.names.iter().cloned())
                .collect(),
        }
    }

    pub fn events_up(&self) {
        self.live.store(true, Ordering::Release);
    }

    /// Long TTLs apply (events on and flowing), or events are off and the
    /// configured TTLs are the user's choice.
    fn trusted(&self) -> bool {
        !self.events || self.is_live()
    }

    /// Attribute TTL for a reply about `ino` (shown number) that creates
    /// no name: long only for an inode the kernel got through a tracked
    /// name (or the root), since only those are invalidated after missed
    /// events.
    pub fn attr_ttl(&self, ino: u64, base: Duration) -> Duration {
        if !self.events {
            return base;
        }
        let tracked = ino == crate::meta::ROOT_INO
            || self.told.lock().is_ok_and(|t| t.by_ino.contains_key(&ino));
        if self.is_live() && tracked {
            base
        } else {
            base.min(self.short)
        }
    }

    /// The kernel gets `ino` under `(parent, name)` (shown numbers): counts
    /// the lookup and returns the (attr, entry) TTLs to send, the short one
    /// where the entry cannot be relied on. `gen`: from `snapshot_gen`,
    /// taken before the reply's content was read.
    pub fn name_ttls(
        &self,
        gen: u64,
        parent: u64,
        name: &[u8],
        ino: u64,
        attr_ttl: Duration,
        entry_ttl: Duration,
    ) -> (Duration, Duration) {
        let remembered = self.remember(parent, name, ino);
        if !self.events {
            return (attr_ttl, entry_ttl);
        }
        if remembered && self.trusted() && self.snapshot_gen() == gen {
            (attr_ttl, entry_ttl)
        } else {
            (attr_ttl.min(self.short), entry_ttl.min(self.short))
        }
    }

    /// Counts one lookup of `ino`; false when its name could not be kept.
    fn remember(&self, parent: u64, name: &[u8], ino: u64) -> bool {
        let Ok(mut t) = self.told.lock() else {
            return false;
        };
        let full = t.names >= MAX_NAMES;
        let t = &mut *t;
        let known = match t.by_ino.get_mut(&ino) {
            Some(k) => k,
            None if full => return false,
            None => t.by_ino.entry(ino).or_default(),
        };
        known.lookups += 1;
        if known
            .names
            .iter()
            .any(|(p, n)| *p == parent && **n == *name)
        {
            return true;
        }
        if full || known.names.len() >= MAX_NAMES_PER_INODE {
            return false;
        }
        known.names.push((parent, name.into()));
        t.names += 1;
        true
    }

    /// This node moved `ino` to `(parent, name)`; the kernel moved its
    /// dentry along, with the TTL it had.
    pub fn renamed(&self, parent: u64, name: &[u8], ino: u64) {
        let Ok(mut t) = self.told.lock() else {
            return;
        };
        let t = &mut *t;
        let Some(k) = t.by_ino.get_mut(&ino) else {
            return;
        };
        if !k.names.iter().any(|(p, n)| *p == parent && **n == *name)
            && k.names.len() < MAX_NAMES_PER_INODE
        {
            k.names.push((parent, name.into()));
            t.names += 1;
        }
    }

    /// The kernel dropped `n` lookups of `ino` (FORGET), or did not take
    /// one it was offered (a full readdirplus reply).
    pub fn forget(&self, ino: u64, n: u64) {
        let Ok(mut t) = self.told.lock() else {
            return;
        };
        let Some(k) = t.by_ino.get_mut(&ino) else {
            return;
        };
        k.lookups = k.lookups.saturating_sub(n);
        if k.lookups == 0 {
            if let Some(k) = t.by_ino.remove(&ino) {
                t.names -= k.names.len();
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        self.told
            .lock()
            .map(|t| (t.by_ino.len(), t.names))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);
    const SHORT: Duration = Duration::from_secs(1);

    fn live() -> KernelView {
        let k = KernelView::new(true, SHORT);
        k.events_up();
        k
    }

    #[test]
    fn long_ttls_only_while_events_flow() {
        let k = KernelView::new(true, SHORT);
        let g = k.snapshot_gen();
        assert_eq!(k.name_ttls(g, 1, b"a", 5, LONG, LONG), (SHORT, SHORT));
        k.events_up();
        let g = k.snapshot_gen();
        assert_eq!(k.name_ttls(g, 1, b"a", 5, LONG, LONG), (LONG, LONG));
        assert_eq!(k.attr_ttl(5, LONG), LONG);
        k.events_down();
        assert_eq!(k.attr_ttl(5, LONG), SHORT);
        assert_eq!(k.attr_ttl(1, LONG), SHORT);
    }

    #[test]
    fn without_events_the_configured_ttls_stand() {
        let k = KernelView::new(false, SHORT);
        let g = k.snapshot_gen();
        assert_eq!(k.name_ttls(g, 1, b"a", 5, LONG, LONG), (LONG, LONG));
        assert_eq!(k.attr_ttl(9, LONG), LONG);
    }

    #[test]
    fn a_reply_that_raced_an_event_is_short_lived() {
        let k = live();
        let g = k.snapshot_gen();
        k.remote_change();
        assert_eq!(k.name_ttls(g, 1, b"a", 5, LONG, LONG), (SHORT, SHORT));
        // Still remembered: a later missed event must drop it too.
        assert_eq!(k.resume_snapshot().inodes, vec![5]);
    }

    #[test]
    fn untracked_inodes_get_short_attributes() {
        let k = live();
        assert_eq!(k.attr_ttl(7, LONG), SHORT);
        assert_eq!(k.attr_ttl(crate::meta::ROOT_INO, LONG), LONG);
    }

    #[test]
    fn forget_drops_an_inode_once_every_lookup_is_returned() {
        let k = live();
        let g = k.snapshot_gen();
        k.name_ttls(g, 1, b"a", 5, LONG, LONG);
        k.name_ttls(g, 1, b"a", 5, LONG, LONG);
        k.name_ttls(g, 1, b"b", 5, LONG, LONG);
        assert_eq!(k.tracked(), (1, 2));
        k.forget(5, 2);
        assert_eq!(k.tracked(), (1, 2));
        k.forget(5, 1);
        assert_eq!(k.tracked(), (0, 0));
        k.forget(5, 1);
        k.forget(6, 1);
        assert_eq!(k.tracked(), (0, 0));
    }

    #[test]
    fn the_snapshot_names_every_name_and_inode_told() {
        let k = live();
        let g = k.snapshot_gen();
        k.name_ttls(g, 1, b"a", 5, LONG, LONG);
        k.name_ttls(g, 5, b"b", 6, LONG, LONG);
        let s = k.resume_snapshot();
        let mut inodes = s.inodes;
        inodes.sort();
        assert_eq!(inodes, vec![5, 6]);
        let mut names = s.names;
        names.sort();
        assert_eq!(names, vec![(1, b"a"[..].into()), (5, b"b"[..].into())]);
    }

    #[test]
    fn a_rename_here_adds_the_new_name() {
        let k = live();
        let g = k.snapshot_gen();
        k.name_ttls(g, 1, b"a", 5, LONG, LONG);
        k.renamed(2, b"b", 5);
        k.renamed(2, b"c", 9);
        let mut names = k.resume_snapshot().names;
        names.sort();
        assert_eq!(names, vec![(1, b"a"[..].into()), (2, b"b"[..].into())]);
    }

    #[test]
    fn too_many_names_for_one_inode_get_short_ttls() {
        let k = live();
        let g = k.snapshot_gen();
        for i in 0..MAX_NAMES_PER_INODE {
            let name = format!("n{i}");
            assert_eq!(
                k.name_ttls(g, 1, name.as_bytes(), 5, LONG, LONG),
                (LONG, LONG)
            );
        }
        assert_eq!(k.name_ttls(g, 1, b"more", 5, LONG, LONG), (SHORT, SHORT));
    }
}
