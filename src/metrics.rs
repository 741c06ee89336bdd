//! Process-wide counters (object-store traffic, cache hits, FUSE bytes) and
//! the Prometheus text endpoint `vecfs mount --metrics ADDR` serves them on.
//! Plain atomics, no registry: each counter is bumped on a hot path.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    const fn new(name: &'static str, help: &'static str) -> Counter {
        Counter {
            name,
            help,
            value: AtomicU64::new(0),
        }
    }

    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub static OBJECT_GETS: Counter = Counter::new("vecfs_object_get_total", "whole-object GETs");
pub static OBJECT_RANGE_GETS: Counter = Counter::new(
    "vecfs_object_range_get_total",
    "ranged GETs (frame tables and frames)",
);
pub static OBJECT_GET_BYTES: Counter = Counter::new(
    "vecfs_object_get_bytes_total",
    "bytes received from the object store",
);
pub static OBJECT_PUTS: Counter = Counter::new("vecfs_object_put_total", "object PUTs");
pub static OBJECT_PUT_BYTES: Counter = Counter::new(
    "vecfs_object_put_bytes_total",
    "bytes sent to the object store",
);
pub static OBJECT_DELETES: Counter = Counter::new("vecfs_object_delete_total", "object DELETEs");
pub static MEM_CACHE_HITS: Counter = Counter::new(
    "vecfs_mem_cache_hit_total",
    "block reads served from memory",
);
pub static DISK_CACHE_HITS: Counter = Counter::new(
    "vecfs_disk_cache_hit_total",
    "block or frame reads served from the disk cache",
);
pub static DISK_CACHE_WRITES: Counter = Counter::new(
    "vecfs_disk_cache_write_total",
    "blocks written to the disk cache in the background",
);
pub static DISK_CACHE_WRITE_DROPS: Counter = Counter::new(
    "vecfs_disk_cache_write_dropped_total",
    "blocks not written to the disk cache: its write queue was full or the write failed",
);
pub static POOL_MAPPED: Counter = Counter::new(
    "vecfs_block_buffer_mapped_total",
    "block buffers mapped fresh (the pool had none to reuse)",
);
pub static POOL_REUSED: Counter = Counter::new(
    "vecfs_block_buffer_reused_total",
    "block buffers taken from the pool again",
);
pub static FILL_BLOCKS: Counter = Counter::new(
    "vecfs_fill_block_total",
    "blocks of files read at random fetched into the disk cache in the background",
);
pub static READ_BYTES: Counter =
    Counter::new("vecfs_read_bytes_total", "bytes read by applications");
pub static WRITE_BYTES: Counter =
    Counter::new("vecfs_write_bytes_total", "bytes written by applications");

pub static RETRIES: Counter = Counter::new(
    "vecfs_retry_total",
    "uploads and commits retried after a transient failure",
);
pub static BUFFER_WAITS: Counter = Counter::new(
    "vecfs_buffer_wait_total",
    "writes that waited for write-buffer budget",
);
pub static BACKGROUND_FLUSHES: Counter = Counter::new(
    "vecfs_background_flush_total",
    "buffered writes committed by the flusher (idle, pressure or retry)",
);

pub static META_RETRIES: Counter = Counter::new(
    "vecfs_meta_retry_total",
    "Redis requests sent again after a connection failure or timeout",
);
pub static INTERRUPTS: Counter = Counter::new(
    "vecfs_interrupt_total",
    "requests answered EINTR because the calling process was interrupted",
);
pub static SESSION_FENCES: Counter = Counter::new(
    "vecfs_session_fence_total",
    "times this node could not renew its session in time and gave up its locks",
);
pub static DELETED_FILES: Counter = Counter::new(
    "vecfs_deleter_files_total",
    "deleted files whose objects the deleter removed",
);
pub static DELETED_SLICES: Counter = Counter::new(
    "vecfs_deleter_slices_total",
    "unreferenced slices (overwritten, compacted, orphaned uploads) whose objects the deleter removed",
);
pub static DELETE_FAILURES: Counter = Counter::new(
    "vecfs_deleter_failures_total",
    "deletion entries given back after a failure (retried later)",
);

pub static WARM_FILES: Counter = Counter::new(
    "vecfs_warm_files_total",
    "files other nodes committed that this node warmed into its cache (--warm-on-commit)",
);
pub static WARM_BYTES: Counter = Counter::new(
    "vecfs_warm_bytes_total",
    "bytes of blocks loaded into the cache by warm-on-commit",
);
pub static WARM_SKIPPED: Counter = Counter::new(
    "vecfs_warm_skipped_total",
    "warm-ups dropped (file changed or gone meanwhile, too large, fetch failed, queue full)",
);
pub static PAGE_CACHE_PUSHED_BYTES: Counter = Counter::new(
    "vecfs_page_cache_pushed_bytes_total",
    "bytes of warmed files read into the kernel page cache (--warm-page-cache)",
);
pub static PAGE_CACHE_DROPPED_BYTES: Counter = Counter::new(
    "vecfs_page_cache_dropped_bytes_total",
    "bytes of pushed files dropped from the page cache to stay within --warm-page-cache",
);

pub static PAGE_CACHE_PUSH_FAILURES: Counter = Counter::new(
    "vecfs_page_cache_push_failures_total",
    "page-cache pushes that could not read the warmed file through the mount",
);

static ALL: [&Counter; 30] = [
    &OBJECT_GETS,
    &OBJECT_RANGE_GETS,
    &OBJECT_GET_BYTES,
    &OBJECT_PUTS,
    &OBJECT_PUT_BYTES,
    &OBJECT_DELETES,
    &MEM_CACHE_HITS,
    &DISK_CACHE_HITS,
    &DISK_CACHE_WRITES,
    &DISK_CACHE_WRITE_DROPS,
    &POOL_MAPPED,
    &POOL_REUSED,
    &FILL_BLOCKS,
    &READ_BYTES,
    &WRITE_BYTES,
    &RETRIES,
    &BUFFER_WAITS,
    &BACKGROUND_FLUSHES,
    &META_RETRIES,
    &INTERRUPTS,
    &SESSION_FENCES,
    &DELETED_FILES,
    &DELETED_SLICES,
    &DELETE_FAILURES,
    &WARM_FILES,
    &WARM_BYTES,
    &WARM_SKIPPED,
    &PAGE_CACHE_PUSHED_BYTES,
    &PAGE_CACHE_DROPPED_BYTES,
    &PAGE_CACHE_PUSH_FAILURES,
];

/// All counters in the Prometheus text format.
pub fn render() -> String {
    let mut out = String::new();
    for c in ALL {
        out.push_str(&format!(
            "# HELP {} {}\n# TYPE {} counter\n{} {}\n",
            c.name,
            c.help,
            c.name,
            c.name,
            c.get()
        ));
    }
    out
}

/// Serves `render()` over HTTP on `listener` to any path (GET /metrics).
pub async fn serve(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            // The request itself does not matter: every path gets the counters.
            let _ = sock.read(&mut req).await;
            let body = render();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                body.len(),
                body
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}
