//! Reusable block buffers. Every block a read brings in (a GET body, a block
//! decoded from its compressed form, a disk-cache entry) needs a buffer of
//! about the block size. Allocating each fresh leaves glibc holding freed
//! 4 MiB buffers per arena (RSS grows past the budgets) or, with a fixed
//! mmap threshold, costs fresh pages (a page fault per 4 KiB) per block.
//! This pool keeps a few buffers of one size mapped and hands them out
//! again: a buffer goes back to the pool when the last `Bytes` made from it
//! drops (the memory cache evicted its block and every reply using it was
//! sent), and beyond `max_idle` idle buffers it is unmapped at once, so the
//! pool never holds more than `max_idle` buffers nobody uses.
//!
//! Buffers are anonymous mappings, not heap memory: unmapping one gives its
//! pages back to the kernel at once, whatever glibc's arenas look like. A
//! buffer's bytes are always initialised (zero when fresh, earlier contents
//! when reused); whoever takes one overwrites the part it hands on.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// One anonymous mapping of `cap` bytes.
struct Region {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: a Region owns its mapping exclusively; moving it between threads
// moves that ownership.
unsafe impl Send for Region {}
// SAFETY: shared access only reads through `&[u8]`.
unsafe impl Sync for Region {}

impl Region {
    fn map(cap: usize) -> Option<Region> {
        // SAFETY: a private anonymous mapping; no file, no fixed address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        NonNull::new(p.cast::<u8>()).map(|ptr| Region { ptr, cap })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `map` with this length and nothing
        // borrows it any more (the Region is being dropped).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
    }
}

struct Inner {
    cap: usize,
    max_idle: usize,
    idle: Mutex<Vec<Region>>,
    /// Buffers mapped fresh, and takes served by a pooled buffer.
    mapped: AtomicU64,
    reused: AtomicU64,
}

/// A pool of buffers of one capacity; cheap to clone (shared).
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<Inner>,
}

/// Takes smaller than this share of the capacity get a buffer of their own
/// size: the memory cache weighs a block by its length, so a small block
/// must not pin a whole pooled buffer.
const MIN_SHARE_NUM: usize = 3;
const MIN_SHARE_DEN: usize = 4;

impl BufPool {
    /// A pool of `cap`-byte buffers keeping at most `max_idle` unused ones.
    pub fn new(cap: usize, max_idle: usize) -> BufPool {
        BufPool {
            inner: Arc::new(Inner {
                cap,
                max_idle,
                idle: Mutex::new(Vec::new()),
                mapped: AtomicU64::new(0),
                reused: AtomicU64::new(0),
            }),
        }
    }

    /// The buffers for blocks of up to `block_size` bytes: room for a
    /// stored block (header and frame table) or a disk-cache entry of one.
    pub fn for_blocks(block_size: usize) -> BufPool {
        // 8 idle buffers: 32 MiB with 4 MiB blocks.
        BufPool::new(block_size + (64 << 10), 8)
    }

    pub fn capacity(&self) -> usize {
        self.inner.cap
    }

    /// A buffer of `len` bytes (contents unspecified): a pooled one when
    /// `len` suits the pool, else one of exactly `len` bytes.
    pub fn take(&self, len: usize) -> PoolBuf {
        let i = &self.inner;
        if len > i.cap || len * MIN_SHARE_DEN < i.cap * MIN_SHARE_NUM {
            return PoolBuf {
                mem: Mem::Heap(vec![0u8; len]),
                len,
            };
        }
        let pooled = i.idle.lock().ok().and_then(|mut v| v.pop());
        let region = match pooled {
            Some(r) => {
                i.reused.fetch_add(1, Ordering::Relaxed);
                crate::metrics::POOL_REUSED.add(1);
                Some(r)
            }
            None => Region::map(i.cap).inspect(|_| {
                i.mapped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::POOL_MAPPED.add(1);
            }),
        };
        match region {
            Some(r) => PoolBuf {
                mem: Mem::Pooled(Some(r), self.inner.clone()),
                len,
            },
            // Out of address space or mappings: the heap may still serve.
            None => PoolBuf {
                mem: Mem::Heap(vec![0u8; len]),
                len,
            },
        }
    }

    /// Unused buffers the pool holds now.
    pub fn idle(&self) -> usize {
        self.inner.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// (buffers mapped fresh, takes served by a pooled buffer) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.inner.mapped.load(Ordering::Relaxed),
            self.inner.reused.load(Ordering::Relaxed),
        )
    }
}

enum Mem {
    Pooled(Option<Region>, Arc<Inner>),
    Heap(Vec<u8>),
}

/// A buffer from a pool; goes back to it when dropped (directly, or as the
/// owner of the `Bytes` made by `freeze`).
pub struct PoolBuf {
    mem: Mem,
    len: usize,
}

impl PoolBuf {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shortens the buffer (a body that came shorter than announced).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Immutable shared bytes; the buffer returns to its pool when the last
    /// of them (and of their slices) drops.
    pub fn freeze(mut self) -> Bytes {
        let len = self.len;
        match &mut self.mem {
            Mem::Heap(v) => {
                let mut v = std::mem::take(v);
                v.truncate(len);
                Bytes::from(v)
            }
            Mem::Pooled(..) => Bytes::from_owner(self),
        }
    }
}

impl AsRef<[u8]> for PoolBuf {
    fn as_ref(&self) -> &[u8] {
        match &self.mem {
            // SAFETY: the region is mapped for `cap >= len` bytes, all of
            // them initialised (zero or earlier contents), and lives as
            // long as `self`.
            Mem::Pooled(Some(r), _) => unsafe {
                std::slice::from_raw_parts(r.ptr.as_ptr(), self.len)
            },
            Mem::Pooled(None, _) => &[],
            Mem::Heap(v) => &v[..self.len],
        }
    }
}

impl AsMut<[u8]> for PoolBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        match &mut self.mem {
            // SAFETY: as in as_ref; `&mut self` makes the access exclusive.
            Mem::Pooled(Some(r), _) => unsafe {
                std::slice::from_raw_parts_mut(r.ptr.as_ptr(), self.len)
            },
            Mem::Pooled(None, _) => &mut [],
            Mem::Heap(v) => &mut v[..self.len],
        }
    }
}

impl Drop for PoolBuf {
    fn drop(&mut self) {
        if let Mem::Pooled(r, inner) = &mut self.mem {
            if let Some(r) = r.take() {
                if let Ok(mut idle) = inner.idle.lock() {
                    if idle.len() < inner.max_idle {
                        idle.push(r);
                        return;
                    }
                }
                // Beyond the bound (or a poisoned lock): unmapped here.
                drop(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_reused_once_its_last_bytes_drop() {
        let pool = BufPool::new(1 << 20, 4);
        let mut b = pool.take(1 << 20);
        b.as_mut().fill(7);
        let addr = b.as_ref().as_ptr() as usize;
        let bytes = b.freeze();
        let slice = bytes.slice(100..200);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "returned while a slice still uses it");
        assert!(slice.iter().all(|&x| x == 7));
        drop(slice);
        assert_eq!(pool.idle(), 1, "not returned when the last slice dropped");
        let again = pool.take(900 << 10);
        assert_eq!(again.as_ref().as_ptr() as usize, addr, "not reused");
        assert_eq!(again.len(), 900 << 10);
        assert_eq!(pool.counts(), (1, 1));
    }

    #[test]
    fn the_pool_keeps_at_most_max_idle_buffers() {
        let pool = BufPool::new(256 << 10, 3);
        let held: Vec<Bytes> = (0..10)
            .map(|i| {
                let mut b = pool.take(256 << 10);
                b.as_mut().fill(i as u8);
                b.freeze()
            })
            .collect();
        assert_eq!(pool.counts(), (10, 0));
        for (i, b) in held.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8), "buffers share memory");
        }
        drop(held);
        assert_eq!(pool.idle(), 3, "more than max_idle kept");
        // The next three come from the pool, the fourth is mapped fresh.
        let again: Vec<PoolBuf> = (0..4).map(|_| pool.take(200 << 10)).collect();
        assert_eq!(pool.counts(), (11, 3));
        assert_eq!(pool.idle(), 0);
        drop(again);
        assert_eq!(pool.idle(), 3);
    }

    #[test]
    fn small_and_oversized_takes_get_their_own_buffer() {
        let pool = BufPool::new(1 << 20, 4);
        for len in [0, 4096, (1 << 20) / 2, (1 << 20) + 1] {
            let mut b = pool.take(len);
            assert_eq!(b.len(), len);
            b.as_mut().fill(1);
            let f = b.freeze();
            assert_eq!(f.len(), len);
        }
        assert_eq!(
            pool.counts(),
            (0, 0),
            "a small block pinned a pooled buffer"
        );
        assert_eq!(pool.idle(), 0);
        // A pooled buffer dropped without being frozen goes back too.
        drop(pool.take(1 << 20));
        assert_eq!(pool.idle(), 1);
        let mut t = pool.take(1 << 20);
        t.truncate(10);
        assert_eq!(t.freeze().len(), 10);
    }
}
