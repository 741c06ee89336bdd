//! The read-ahead policy: which reads are sequential, how far ahead of a
//! sequential reader blocks are kept in flight, and when a file read at
//! random is worth fetching whole in the background.
//!
//! - A *stream* is one handle's position (where its last read ended, how
//!   far prefetch has been started). A read is sequential when it is large
//!   (kernel read-ahead sends up to 1 MiB per request, out of order), starts
//!   the file, or lands near the previous one while that one was sequential
//!   too or two near reads ran in a row. A single random read that happens
//!   to land near the last one is not a stream: before, one such read fired
//!   a whole-block fetch and a read-ahead window grown to 128 MiB, and a
//!   random reader of a 1 GiB file pulled several times the file.
//! - The *window* is kept per inode, not per handle: a new handle on a file
//!   this node read sequentially before starts with the window the last
//!   reader grew. It doubles each time a sequential read waited for the
//!   store and halves when the memory cache is nearly full. Random reads
//!   leave it alone. A file never read here starts at two blocks; from its
//!   second sequential read (a reader past the header) it gets at least
//!   the window the node's readers grew most recently (`START_MAX_BLOCKS`
//!   at most): vector segments are new files read whole, one after another,
//!   and each ramping up from two blocks paid three or four round trips to
//!   the store before the window covered the file. A program that reads
//!   only the first bytes of many files still gets what it got before (two
//!   blocks, four once the first read waited), and teaches the node nothing.
//! - A file whose random reads missed every cache `FILL_AFTER_MISSES` times
//!   gets its remaining blocks fetched in the background (into the disk
//!   cache, bounded by the caller), so later reads hit; after a fill the
//!   count starts again, so a file rewritten meanwhile is filled again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::data::DataStore;
use crate::error::Result;
use crate::meta::CHUNK_SIZE;

/// Requests at least this large are never treated as random reads.
pub const RANDOM_READ_MAX: u32 = 128 << 10;

/// Random reads that had to go to the store before the rest of the file is
/// fetched in the background.
pub const FILL_AFTER_MISSES: u32 = 8;

/// Inodes whose read state is kept; past this, states unused for
/// `STATE_IDLE` are dropped (and all of them if that is not enough).
const MAX_INODES: usize = 65_536;

/// The largest window (in blocks) a file never read here starts with.
const START_MAX_BLOCKS: u64 = 8;
const STATE_IDLE: Duration = Duration::from_secs(600);

/// One handle's reading position.
#[derive(Clone, Debug)]
pub struct Stream {
    /// End of the last read (u64::MAX before the first).
    last_end: u64,
    /// Whether the last read counted as sequential.
    sequential: bool,
    /// Reads in a row that landed near the one before.
    near: u32,
    /// How far ahead prefetch has been started.
    prefetched_to: u64,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            last_end: u64::MAX,
            sequential: false,
            near: 0,
            prefetched_to: 0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct InodeRead {
    window: u64,
    /// Sequential reads seen (saturating).
    reads: u32,
    /// Random reads that went to the store since the last fill.
    misses: u32,
    /// A background fill of this file is running.
    filling: bool,
    used: Instant,
}

/// Read-ahead state of every inode this node reads.
pub struct ReadAhead {
    block: u64,
    max_window: u64,
    inodes: Mutex<HashMap<u64, InodeRead>>,
    /// The window the node's sequential readers grew last (capped at
    /// `START_MAX_BLOCKS`): where a file never read here starts.
    learned: std::sync::atomic::AtomicU64,
}

impl ReadAhead {
    /// `block`: the volume's block size; `max_window`: most bytes kept in
    /// flight ahead of a sequential reader (0: no read-ahead).
    pub fn new(block: u64, max_window: u64) -> ReadAhead {
        ReadAhead {
            block: block.max(1),
            max_window,
            inodes: Mutex::new(HashMap::new()),
            learned: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The window a reader of a file never read here starts with.
    pub fn initial_window(&self) -> u64 {
        (2 * self.block).min(self.max_window.max(self.block))
    }

    /// The window the node's readers grew lately, as a file's second
    /// sequential read may start from (see the header).
    fn learned_window(&self) -> u64 {
        self.learned
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(START_MAX_BLOCKS * self.block)
            .min(self.max_window.max(self.block))
    }

    /// The current window of `ino`.
    pub fn window(&self, ino: u64) -> u64 {
        self.inodes
            .lock()
            .ok()
            .and_then(|m| m.get(&ino).map(|s| s.window))
            .unwrap_or_else(|| self.initial_window())
    }

    fn with_inode<T>(&self, ino: u64, f: impl FnOnce(&mut InodeRead) -> T) -> Option<T> {
        let mut m = self.inodes.lock().ok()?;
        if m.len() >= MAX_INODES && !m.contains_key(&ino) {
            let now = Instant::now();
            m.retain(|_, s| now.duration_since(s.used) < STATE_IDLE || s.filling);
            if m.len() >= MAX_INODES {
                m.retain(|_, s| s.filling);
            }
        }
        let initial = self.initial_window();
        let s = m.entry(ino).or_insert(InodeRead {
            window: initial,
            reads: 0,
            misses: 0,
            filling: false,
            used: Instant::now(),
        });
        s.used = Instant::now();
        Some(f(s))
    }

    /// Classifies a read of `size` bytes at `offset` (ending at `end`) on
    /// stream `s`, and moves the stream there. True: sequential.
    pub fn classify(&self, s: &mut Stream, offset: u64, size: u32, end: u64) -> bool {
        let near = s.last_end != u64::MAX && s.last_end.abs_diff(offset) <= self.block;
        let sequential =
            size >= RANDOM_READ_MAX || offset == 0 || (near && (s.sequential || s.near >= 1));
        s.near = if near { s.near.saturating_add(1) } else { 0 };
        s.sequential = sequential;
        s.last_end = end;
        sequential
    }

    /// After a sequential read on `s` that ended at `end` of a file of
    /// `len` bytes: adapts `ino`'s window (`waited`: the read had to wait
    /// for the store; `pressure`: the memory cache is nearly full) and
    /// returns the file range to prefetch now, if any.
    pub fn after_sequential(
        &self,
        ino: u64,
        s: &mut Stream,
        end: u64,
        len: u64,
        waited: bool,
        pressure: bool,
    ) -> Option<(u64, u64)> {
        if self.max_window == 0 {
            return None;
        }
        let (block, max) = (self.block, self.max_window.max(self.block));
        let window = self
            .with_inode(ino, |st| {
                st.reads = st.reads.saturating_add(1);
                if st.reads == 2 && !pressure {
                    st.window = st.window.max(self.learned_window());
                }
                if pressure {
                    st.window = (st.window / 2).max(block);
                } else if waited {
                    st.window = (st.window * 2).min(max);
                }
                // A first read (maybe only a header) teaches the node nothing.
                if st.reads > 1 && (pressure || waited) {
                    self.learned
                        .store(st.window, std::sync::atomic::Ordering::Relaxed);
                }
                st.window
            })
            .unwrap_or_else(|| self.initial_window());
        let want_to = end.saturating_add(window).min(len);
        let from = s.prefetched_to.max(end);
        if want_to > from + window / 4 || (from < len && want_to == len) {
            s.prefetched_to = want_to;
            Some((from, want_to))
        } else {
            None
        }
    }

    /// A random read of `ino` had to go to the store. True when the caller
    /// should now fetch the rest of the file in the background (and call
    /// `fill_done` when that ends).
    pub fn random_miss(&self, ino: u64) -> bool {
        self.with_inode(ino, |st| {
            st.misses = st.misses.saturating_add(1);
            if st.misses >= FILL_AFTER_MISSES && !st.filling {
                st.filling = true;
                true
            } else {
                false
            }
        })
        .unwrap_or(false)
    }

    /// The background fill of `ino` ended: misses count from zero again.
    pub fn fill_done(&self, ino: u64) {
        self.with_inode(ino, |st| {
            st.filling = false;
            st.misses = 0;
        });
    }
}

/// Fetches the blocks of `ino` (`len` bytes) this node does not hold into
/// the disk cache, in the background; `ra` learns when it is done.
pub fn spawn_fill(data: Arc<DataStore>, ra: Arc<ReadAhead>, ino: u64, len: u64) {
    tokio::spawn(async move {
        match fill_file(&data, ino, len).await {
            Ok(n) => tracing::debug!(ino, blocks = n, "filled a file read at random"),
            Err(e) => tracing::debug!(ino, error = %e, "background fill stopped"),
        }
        ra.fill_done(ino);
    });
}

async fn fill_file(data: &Arc<DataStore>, ino: u64, len: u64) -> Result<usize> {
    let mut keys = Vec::new();
    for indx in 0..len.div_ceil(CHUNK_SIZE) {
        let pieces = data.chunk_pieces(ino, indx).await?;
        let n = (len - indx * CHUNK_SIZE).min(CHUNK_SIZE) as u32;
        keys.extend(data.block_keys(&pieces, 0, n));
    }
    data.fill(keys).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4 << 20;

    fn ra() -> ReadAhead {
        ReadAhead::new(B, 128 << 20)
    }

    #[test]
    fn kernel_read_ahead_and_the_start_of_a_file_are_sequential() {
        let r = ra();
        let mut s = Stream::default();
        assert!(r.classify(&mut s, 0, 4096, 4096), "offset 0");
        // 1 MiB requests far apart and out of order (async read-ahead).
        let mut s = Stream::default();
        assert!(r.classify(&mut s, 300 << 20, 1 << 20, 301 << 20));
        assert!(r.classify(&mut s, 100 << 20, 1 << 20, 101 << 20));
        // Small reads continuing a sequential stream stay sequential.
        let mut s = Stream::default();
        assert!(r.classify(&mut s, 0, 4096, 4096));
        assert!(r.classify(&mut s, 4096, 4096, 8192));
        assert!(r.classify(&mut s, 8192, 4096, 12288));
    }

    #[test]
    fn one_random_read_landing_near_the_last_is_not_a_stream() {
        let r = ra();
        let mut s = Stream::default();
        assert!(!r.classify(&mut s, 500 << 20, 4096, (500 << 20) + 4096));
        assert!(!r.classify(&mut s, 7 << 20, 4096, (7 << 20) + 4096));
        // by chance within a block of the last one: still random
        assert!(!r.classify(&mut s, 9 << 20, 4096, (9 << 20) + 4096));
        assert!(!r.classify(&mut s, 900 << 20, 4096, (900 << 20) + 4096));
        // two near reads in a row: a small-request sequential reader
        assert!(!r.classify(&mut s, (900 << 20) + 4096, 4096, (900 << 20) + 8192));
        assert!(r.classify(&mut s, (900 << 20) + 8192, 4096, (900 << 20) + 12288));
    }

    #[test]
    fn the_window_grows_while_the_reader_waits_and_shrinks_under_pressure() {
        let r = ra();
        let mut s = Stream::default();
        assert_eq!(r.window(1), 2 * B);
        let p = r.after_sequential(1, &mut s, 1 << 20, 1 << 30, true, false);
        assert_eq!(r.window(1), 4 * B);
        assert_eq!(p, Some((1 << 20, (1 << 20) + 4 * B)));
        // Already in flight: nothing new until a quarter window is used.
        assert_eq!(
            r.after_sequential(1, &mut s, 2 << 20, 1 << 30, false, false),
            None
        );
        for _ in 0..10 {
            r.after_sequential(1, &mut s, 2 << 20, 1 << 30, true, false);
        }
        assert_eq!(r.window(1), 128 << 20, "capped");
        r.after_sequential(1, &mut s, 2 << 20, 1 << 30, false, true);
        assert_eq!(r.window(1), 64 << 20, "halved under pressure");
        for _ in 0..10 {
            r.after_sequential(1, &mut s, 2 << 20, 1 << 30, false, true);
        }
        assert_eq!(r.window(1), B, "never below a block");
        // The end of the file bounds what is prefetched.
        let mut s = Stream::default();
        assert_eq!(
            r.after_sequential(2, &mut s, 0, 3 << 20, false, false),
            Some((0, 3 << 20))
        );
        assert_eq!(
            r.after_sequential(2, &mut s, 1 << 20, 3 << 20, false, false),
            None
        );
    }

    #[test]
    fn a_new_handle_starts_with_the_window_the_last_reader_grew() {
        let r = ra();
        let mut first = Stream::default();
        for i in 0..4u64 {
            r.after_sequential(7, &mut first, i << 20, 1 << 30, true, false);
        }
        assert_eq!(r.window(7), 32 * B);
        // A second handle (a new stream) prefetches that far at once.
        let mut second = Stream::default();
        assert!(r.classify(&mut second, 0, 1 << 20, 1 << 20));
        assert_eq!(
            r.after_sequential(7, &mut second, 1 << 20, 1 << 30, false, false),
            Some((1 << 20, (1 << 20) + 32 * B))
        );
        // Another file still starts small.
        assert_eq!(r.window(8), 2 * B);
    }

    #[test]
    fn a_new_file_starts_with_the_window_readers_grew_lately() {
        let r = ra();
        assert_eq!(r.window(1), 2 * B, "nothing learned yet");
        // A reader of file 1 past its header grows the window: 4, 8 blocks.
        let mut s = Stream::default();
        r.after_sequential(1, &mut s, 8, 1 << 30, true, false);
        assert_eq!(r.learned_window(), 0, "a first read teaches nothing");
        r.after_sequential(1, &mut s, 1 << 20, 1 << 30, true, false);
        assert_eq!(r.window(1), 8 * B);
        // File 2: its first read (a header) still gets the small window...
        let mut s = Stream::default();
        assert_eq!(
            r.after_sequential(2, &mut s, 8, 1 << 30, false, false),
            Some((8, 8 + 2 * B))
        );
        // ...and its second starts from what the node learned.
        assert_eq!(
            r.after_sequential(2, &mut s, 1 << 20, 1 << 30, false, false),
            Some((8 + 2 * B, (1 << 20) + 8 * B))
        );
        // Header-only readers of many files teach nothing.
        for ino in 10..20 {
            let mut s = Stream::default();
            r.after_sequential(ino, &mut s, 8, 1 << 30, true, false);
            assert!(r.window(ino) <= 4 * B);
        }
        for _ in 0..6 {
            r.after_sequential(1, &mut s, 1 << 20, 1 << 30, true, false);
        }
        assert_eq!(r.learned_window(), START_MAX_BLOCKS * B, "capped");
        // Memory pressure on a reader brings new files back down.
        for _ in 0..10 {
            r.after_sequential(1, &mut s, 1 << 20, 1 << 30, false, true);
        }
        assert_eq!(r.learned_window(), B);
        let mut s = Stream::default();
        r.after_sequential(3, &mut s, 8, 1 << 30, false, false);
        r.after_sequential(3, &mut s, 1 << 20, 1 << 30, false, false);
        assert_eq!(r.window(3), 2 * B);
    }

    #[test]
    fn no_read_ahead_when_switched_off() {
        let r = ReadAhead::new(B, 0);
        let mut s = Stream::default();
        assert_eq!(r.after_sequential(1, &mut s, 0, 1 << 30, true, false), None);
    }

    #[test]
    fn a_fill_starts_after_a_few_random_misses_once_at_a_time() {
        let r = ra();
        for _ in 1..FILL_AFTER_MISSES {
            assert!(!r.random_miss(3));
        }
        assert!(r.random_miss(3), "the miss that starts the fill");
        for _ in 0..3 * FILL_AFTER_MISSES {
            assert!(!r.random_miss(3), "one fill at a time");
        }
        r.fill_done(3);
        for _ in 1..FILL_AFTER_MISSES {
            assert!(!r.random_miss(3));
        }
        assert!(r.random_miss(3), "counted again after the fill");
        assert!(!r.random_miss(4), "per file");
    }
}
