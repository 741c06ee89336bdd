//! One open directory's listing, paged: entries come from Redis a page at a
//! time (HSCAN) as the kernel reads on, and entries before the kernel's
//! offset are dropped, so listing a directory of a million names never
//! holds it whole, and each readdir call copies one reply's worth of
//! entries, not the rest of the listing.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::DirItem;

/// Entries asked of Redis per page.
pub(super) const PAGE: usize = 1000;

/// The names' 128-bit hashes are already uniform: the set's hasher folds
/// them to 64 bits instead of hashing them again (SipHash was a fifth of
/// the daemon's time listing a large directory).
#[derive(Default)]
struct Fold(u64);

impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

type Seen = HashSet<u128, BuildHasherDefault<Fold>>;

pub(super) struct Listing {
    /// Offset of `items[0]`: offset n means "after the n-th entry", as the
    /// kernel passes it back.
    base: u64,
    /// Entries not yet consumed, each with the `Recent` ticket taken before
    /// its attributes were read.
    items: VecDeque<(DirItem, u64)>,
    /// HSCAN cursor of the next page.
    cursor: u64,
    done: bool,
    pages: u64,
    /// Names given so far, once the directory spans more than one page:
    /// HSCAN may repeat entries when the hash is resized during the scan.
    /// 16 bytes per name; a small directory keeps none.
    seen: Option<Seen>,
    /// Run id of the Redis server the cursor belongs to ("" unknown).
    server: String,
}

impl Listing {
    /// A listing that starts with `head` ("." and "..").
    pub(super) fn new(head: Vec<DirItem>, ticket: u64) -> Listing {
        Listing {
            base: 0,
            items: head.into_iter().map(|it| (it, ticket)).collect(),
            cursor: 0,
            done: false,
            pages: 0,
            seen: None,
            server: String::new(),
        }
    }

    /// Drops what the kernel consumed before `offset`. False when `offset`
    /// lies before what is kept (a rewind or seekdir back): the caller
    /// starts the listing again.
    pub(super) fn skip_to(&mut self, offset: u64) -> bool {
        if offset < self.base {
            return false;
        }
        while self.base < offset && self.items.pop_front().is_some() {
            self.base += 1;
        }
        true
    }

    /// Whether a reply of `max` entries from `offset` needs another page.
    pub(super) fn wants_more(&self, offset: u64, max: usize) -> bool {
        !self.done && self.base + (self.items.len() as u64) < offset + max as u64
    }

    /// Whether to read the next page ahead, once a reply that ends at
    /// `next` (the offset the kernel resumes from) was sent: fewer than a
    /// page of entries are kept beyond it.
    pub(super) fn wants_ahead(&self, next: u64) -> bool {
        !self.done
            && next >= self.base
            && self.base + (self.items.len() as u64) < next + PAGE as u64
    }

    pub(super) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Appends a page read at `cursor()` from the server with run id
    /// `server`; `next` is the cursor HSCAN answered (0: the scan is
    /// complete). True when the server changed since the last page (a
    /// failover or restart): its cursor meant nothing there (the new server
    /// hashes with another seed, so going on would skip names silently),
    /// and the scan starts again from 0, the names already given kept out
    /// by the name set.
    pub(super) fn add_page(
        &mut self,
        next: u64,
        page: Vec<DirItem>,
        ticket: u64,
        server: &str,
    ) -> bool {
        let first = self.pages == 0;
        self.pages += 1;
        // Exact, "" included: a failover to a server that will not tell its
        // id (an ACL without +info there) is a change too.
        let moved = !first && server != self.server;
        if moved || first {
            self.server = server.to_string();
        }
        self.cursor = if moved { 0 } else { next };
        self.done = !moved && next == 0;
        if first && self.done {
            // The whole directory in one page: nothing can repeat.
            self.items.extend(page.into_iter().map(|it| (it, ticket)));
            return false;
        }
        let seen = self.seen.get_or_insert_with(Seen::default);
        for it in page {
            if seen.insert(xxhash_rust::xxh3::xxh3_128(&it.name)) {
                self.items.push_back((it, ticket));
            }
        }
        moved
    }

    /// Up to `max` entries from the first kept one, each with the offset
    /// that resumes after it and its ticket.
    pub(super) fn page(&self, max: usize) -> impl Iterator<Item = (u64, &DirItem, u64)> {
        self.items
            .iter()
            .take(max)
            .enumerate()
            .map(move |(i, (it, ticket))| (self.base + i as u64 + 1, it, *ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::FileKind;

    fn item(name: &str) -> DirItem {
        DirItem {
            ino: 1,
            name: name.as_bytes().to_vec(),
            kind: FileKind::File,
            attr: None,
            volatile: false,
        }
    }

    fn names(l: &Listing, max: usize) -> Vec<(u64, String)> {
        l.page(max)
            .map(|(off, it, _)| (off, String::from_utf8_lossy(&it.name).into_owned()))
            .collect()
    }

    #[test]
    fn a_single_page_directory_is_given_whole_with_offsets_after_each_entry() {
        let mut l = Listing::new(vec![item("."), item("..")], 0);
        assert!(l.wants_more(0, 10));
        l.add_page(0, vec![item("a"), item("b")], 1, "s");
        assert!(!l.wants_more(0, 10));
        assert!(l.seen.is_none(), "one page keeps no name set");
        assert_eq!(
            names(&l, 10),
            vec![
                (1, ".".into()),
                (2, "..".into()),
                (3, "a".into()),
                (4, "b".into())
            ]
        );
    }

    #[test]
    fn consumed_entries_are_dropped_and_pages_fetched_only_when_needed() {
        let mut l = Listing::new(vec![item("."), item("..")], 0);
        l.add_page(7, (0..5).map(|i| item(&format!("f{i}"))).collect(), 1, "s");
        assert!(!l.wants_more(0, 3), "seven kept entries cover a reply of 3");
        assert!(l.wants_more(5, 3), "offset 5 + 3 needs more than seven");
        assert!(l.skip_to(5));
        assert_eq!(l.items.len(), 2, "entries before offset 5 are gone");
        assert_eq!(names(&l, 10), vec![(6, "f3".into()), (7, "f4".into())]);
        assert!(!l.skip_to(4), "a rewind before what is kept restarts");
        assert_eq!(l.cursor(), 7);
    }

    #[test]
    fn skipping_past_everything_kept_waits_for_later_pages() {
        let mut l = Listing::new(vec![item("."), item("..")], 0);
        assert!(l.skip_to(4));
        assert_eq!(l.base, 2);
        l.add_page(3, vec![item("a"), item("b"), item("c")], 1, "s");
        assert!(l.skip_to(4));
        assert_eq!(names(&l, 10), vec![(5, "c".into())]);
    }

    #[test]
    fn a_page_is_read_ahead_once_fewer_than_a_page_remain_beyond_the_reply() {
        let mut l = Listing::new(vec![], 0);
        l.add_page(
            5,
            (0..PAGE).map(|i| item(&format!("f{i}"))).collect(),
            1,
            "s",
        );
        assert!(!l.wants_ahead(0), "a whole page kept beyond offset 0");
        assert!(l.wants_ahead(1), "one entry given: less than a page left");
        assert!(l.skip_to(800));
        assert!(l.wants_ahead(800));
        l.add_page(0, (0..10).map(|i| item(&format!("g{i}"))).collect(), 2, "s");
        assert!(!l.wants_ahead(805), "the scan is complete");
        assert!(
            !l.wants_ahead(700),
            "an offset before what is kept: a rewind"
        );
    }

    #[test]
    fn the_seen_set_keeps_distinct_hashes_apart() {
        let mut s = Seen::default();
        for i in 0..10_000u32 {
            assert!(s.insert(xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes())));
        }
        assert!(!s.insert(xxhash_rust::xxh3::xxh3_128(&7u32.to_le_bytes())));
        assert_eq!(s.len(), 10_000);
    }

    #[test]
    fn entries_a_resized_hash_repeats_are_given_once() {
        let mut l = Listing::new(vec![], 0);
        l.add_page(9, vec![item("a"), item("b")], 1, "s");
        l.add_page(4, vec![item("b"), item("c"), item("a")], 2, "s");
        l.add_page(0, vec![item("d")], 3, "s");
        assert!(!l.wants_more(0, 100));
        let got: Vec<String> = names(&l, 100).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, vec!["a", "b", "c", "d"]);
        let tickets: Vec<u64> = l.page(100).map(|(_, _, t)| t).collect();
        assert_eq!(
            tickets,
            vec![1, 1, 2, 3],
            "each entry keeps its page's ticket"
        );
    }

    #[test]
    fn a_page_from_another_server_restarts_the_scan_without_repeating_names() {
        let mut l = Listing::new(vec![], 0);
        assert!(!l.add_page(9, vec![item("a"), item("b")], 1, "one"));
        // A restart: the old cursor 9 meant nothing to the new server.
        assert!(l.add_page(4, vec![item("c"), item("a")], 2, "two"));
        assert_eq!(l.cursor(), 0, "the scan starts again from the beginning");
        assert!(l.wants_more(0, 100), "not complete, whatever the page said");
        assert!(!l.add_page(7, vec![item("b"), item("d")], 3, "two"));
        assert_eq!(l.cursor(), 7);
        assert!(!l.add_page(0, vec![item("e")], 4, "two"));
        assert!(!l.wants_more(0, 100));
        let got: Vec<String> = names(&l, 100).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, vec!["a", "b", "c", "d", "e"]);
        // A server that will not tell its run id changes nothing...
        let mut l = Listing::new(vec![], 0);
        l.add_page(9, vec![item("a")], 1, "");
        assert!(!l.add_page(0, vec![item("b")], 2, ""));
        assert!(!l.wants_more(0, 100));
        // ...but a failover to one is a change, and back again too.
        let mut l = Listing::new(vec![], 0);
        l.add_page(9, vec![item("a")], 1, "one");
        assert!(l.add_page(0, vec![item("b")], 2, ""), "one -> \"\"");
        assert!(
            l.wants_more(0, 100),
            "cursor 0 from another server is no end"
        );
        assert!(l.add_page(5, vec![item("c")], 3, "one"), "\"\" -> one");
        assert!(!l.add_page(0, vec![item("a"), item("d")], 4, "one"));
        let got: Vec<String> = names(&l, 100).into_iter().map(|(_, n)| n).collect();
        assert_eq!(got, vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn a_restart_seen_on_the_last_page_still_scans_again() {
        let mut l = Listing::new(vec![], 0);
        l.add_page(9, vec![item("a")], 1, "one");
        assert!(l.add_page(0, vec![item("b")], 2, "two"));
        assert!(
            l.wants_more(0, 100),
            "cursor 0 from another server is no end"
        );
    }
}
