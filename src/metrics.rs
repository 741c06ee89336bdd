//! Process-wide metrics and the Prometheus endpoint `vecfs mount --metrics
//! ADDR` serves them on (also the content of the hidden `.stats` file).
//!
//! Everything is encoded by one `prometheus-client` registry. Counters and
//! gauges bumped on hot paths stay plain atomics in `static`s (call sites
//! do `metrics::X.add(n)`), read by a collector at scrape time; latency
//! histograms and per-kind error counters are label families; cache,
//! buffer and read-ahead gauges are read from the mounted node when
//! scraped (`set_node`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter as PCounter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
pub struct Counter {
    name: &'static str,
    help: &'static str,
    value: AtomicU64,
}

impl Counter {
    pub const fn new(name: &'static str, help: &'static str) -> Counter {
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

pub static FUSE_ERRORS: Counter = Counter::new(
    "vecfs_fuse_errors_total",
    "FUSE requests answered with an error (ENOENT of a lookup included)",
);

/// A gauge set where its value changes (not read at scrape time).
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    value: AtomicI64,
}

impl Gauge {
    pub const fn new(name: &'static str, help: &'static str) -> Gauge {
        Gauge {
            name,
            help,
            value: AtomicI64::new(0),
        }
    }

    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

pub static SESSIONS: Gauge = Gauge::new(
    "vecfs_sessions",
    "live sessions (mounts, all nodes) of the volume at this node's last heartbeat",
);

static COUNTERS: [&Counter; 31] = [
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
    &FUSE_ERRORS,
];

static GAUGES: [&Gauge; 1] = [&SESSIONS];

/// One label, both parts static: no allocation per observation.
type Label = [(&'static str, &'static str); 1];
type Latencies = Family<Label, Histogram, fn() -> Histogram>;

/// 100 µs to 30 s, in 1-2.5-5 steps: a cached stat to a slow store GET.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

static FUSE_OPS: LazyLock<Latencies> = LazyLock::new(|| Family::new_with_constructor(latency));
static META_CALLS: LazyLock<Latencies> = LazyLock::new(|| Family::new_with_constructor(latency));
static OBJECT_CALLS: LazyLock<Latencies> = LazyLock::new(|| Family::new_with_constructor(latency));
static OBJECT_ERRORS: LazyLock<Family<Label, PCounter>> = LazyLock::new(Family::default);
static ERRORS: LazyLock<Family<Label, PCounter>> = LazyLock::new(Family::default);

/// A FUSE request `op` took `d`, from its arrival to its reply.
pub fn observe_fuse(op: &'static str, d: Duration) {
    FUSE_OPS
        .get_or_create(&[("op", op)])
        .observe(d.as_secs_f64());
}

/// A Redis request of `kind` (script name or command) took `d`, retries included.
pub fn observe_meta(kind: &'static str, d: Duration) {
    META_CALLS
        .get_or_create(&[("kind", kind)])
        .observe(d.as_secs_f64());
}

/// An object-store request `method` took `d`; `ok`: it succeeded.
pub fn observe_object(method: &'static str, d: Duration, ok: bool) {
    OBJECT_CALLS
        .get_or_create(&[("method", method)])
        .observe(d.as_secs_f64());
    if !ok {
        OBJECT_ERRORS.get_or_create(&[("method", method)]).inc();
    }
}

/// A failure of the data or metadata path that reached an application.
pub fn count_error(kind: crate::error::Kind) {
    use crate::error::Kind;
    let k = match kind {
        Kind::Transient => "transient",
        Kind::NotFound => "not_found",
        Kind::Corrupt => "corrupt",
        Kind::Denied => "denied",
        Kind::Fs(_) => "fs",
        Kind::Internal => "internal",
    };
    ERRORS.get_or_create(&[("kind", k)]).inc();
}

/// What the scrape-time gauges read: the mounted node's caches and budgets.
pub struct Node {
    pub data: Arc<crate::data::DataStore>,
    /// `--buffer-size` in bytes.
    pub buffer_bytes: u64,
}

static NODE: OnceLock<Node> = OnceLock::new();
static START: LazyLock<std::time::Instant> = LazyLock::new(std::time::Instant::now);

/// Makes the node's cache and buffer gauges part of every scrape.
pub fn set_node(node: Node) {
    LazyLock::force(&START);
    let _ = NODE.set(node);
}

/// Counters, gauges and figures computed from them, read at each scrape.
#[derive(Debug)]
struct Scalars;

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    // OpenMetrics names the sample `<name>_total`.
    let name = name.strip_suffix("_total").unwrap_or(name);
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<V>(e: &mut DescriptorEncoder, name: &str, help: &str, v: V) -> std::fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue,
{
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Collector for Scalars {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        for c in COUNTERS {
            counter(&mut e, c.name, c.help, c.get())?;
        }
        for g in GAUGES {
            gauge(&mut e, g.name, g.help, g.get())?;
        }
        gauge(
            &mut e,
            "vecfs_uptime_seconds",
            "seconds since the mount started",
            START.elapsed().as_secs_f64(),
        )?;
        // Block reads: served from memory, from disk, or fetched.
        let mem = MEM_CACHE_HITS.get();
        let disk = DISK_CACHE_HITS.get();
        let fetched = OBJECT_GETS.get() + OBJECT_RANGE_GETS.get();
        gauge(
            &mut e,
            "vecfs_cache_hit_ratio",
            "share of block reads served from memory or disk rather than the store, since the mount started",
            ratio(mem + disk, mem + disk + fetched),
        )?;
        gauge(
            &mut e,
            "vecfs_mem_cache_hit_ratio",
            "share of block reads served from memory, since the mount started",
            ratio(mem, mem + disk + fetched),
        )?;
        gauge(
            &mut e,
            "vecfs_disk_cache_hit_ratio",
            "share of the block reads memory missed that the disk cache served, since the mount started",
            ratio(disk, disk + fetched),
        )?;
        let Some(node) = NODE.get() else {
            return Ok(());
        };
        let cache = &node.data.cache;
        let (mem_bytes, mem_entries) = cache.mem_usage();
        gauge(
            &mut e,
            "vecfs_mem_cache_bytes",
            "bytes of blocks in the memory cache",
            mem_bytes,
        )?;
        gauge(
            &mut e,
            "vecfs_mem_cache_entries",
            "blocks in the memory cache",
            mem_entries,
        )?;
        gauge(
            &mut e,
            "vecfs_mem_cache_capacity_bytes",
            "size of the memory cache (--mem-cache-size)",
            cache.mem_capacity(),
        )?;
        if let Some(d) = cache.disk() {
            gauge(
                &mut e,
                "vecfs_disk_cache_bytes",
                "bytes in the disk cache",
                d.used(),
            )?;
            gauge(
                &mut e,
                "vecfs_disk_cache_entries",
                "blocks in the disk cache",
                d.entries() as u64,
            )?;
            gauge(
                &mut e,
                "vecfs_disk_cache_capacity_bytes",
                "size of the disk cache (--cache-size)",
                d.capacity(),
            )?;
        }
        let free = node.data.budget.available() as u64;
        gauge(
            &mut e,
            "vecfs_buffer_bytes",
            "bytes of write buffers in use",
            node.buffer_bytes.saturating_sub(free),
        )?;
        gauge(
            &mut e,
            "vecfs_buffer_capacity_bytes",
            "memory for write buffers (--buffer-size)",
            node.buffer_bytes,
        )?;
        let (ahead, ahead_cap) = node.data.readahead_usage();
        gauge(
            &mut e,
            "vecfs_readahead_bytes",
            "bytes of blocks read ahead that no read used yet",
            ahead,
        )?;
        gauge(
            &mut e,
            "vecfs_readahead_capacity_bytes",
            "read-ahead budget, node-wide",
            ahead_cap,
        )
    }
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let mut r = Registry::default();
    r.register_collector(Box::new(Scalars));
    r.register(
        "vecfs_fuse_op_duration_seconds",
        "FUSE requests by operation, from arrival to reply",
        FUSE_OPS.clone(),
    );
    r.register(
        "vecfs_meta_request_duration_seconds",
        "Redis requests by script or command, retries included",
        META_CALLS.clone(),
    );
    r.register(
        "vecfs_object_request_duration_seconds",
        "object-store requests by method (get, range, put, delete, list, head, copy), retries included",
        OBJECT_CALLS.clone(),
    );
    r.register(
        "vecfs_object_errors",
        "object-store requests that failed, by method",
        OBJECT_ERRORS.clone(),
    );
    r.register(
        "vecfs_errors",
        "failures that reached an application, by kind (transient, not_found, corrupt, denied, internal, fs)",
        ERRORS.clone(),
    );
    r
});

/// Every metric in the OpenMetrics text format (what Prometheus scrapes).
pub fn render() -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &REGISTRY) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// The default `--metrics` address; when another mount holds it, the OS
/// picks a free port instead (see `bind`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:9567";

/// Binds the metrics listener on `addr` (port 0: a free port). With
/// `fall_back` (the address was not asked for), a busy port gives way to a
/// free one on the same host, so mounts never collide.
pub async fn bind(addr: &str, fall_back: bool) -> std::io::Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Err(e) if fall_back && e.kind() == std::io::ErrorKind::AddrInUse => {
            let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("127.0.0.1");
            tokio::net::TcpListener::bind(format!("{host}:0")).await
        }
        other => other,
    }
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `render()` over HTTP/1 on `listener`: GET /metrics (or /).
pub async fn serve(listener: tokio::net::TcpListener) {
    use http_body_util::Full;
    use hyper::{Request, Response, StatusCode};
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let (status, body) = match req.uri().path() {
                        "/" | "/metrics" => (StatusCode::OK, render()),
                        _ => (
                            StatusCode::NOT_FOUND,
                            "not found: try /metrics\n".to_string(),
                        ),
                    };
                    let resp = Response::builder()
                        .status(status)
                        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
                        .body(Full::new(bytes::Bytes::from(body)))
                        .unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(resp)
                });
            let io = hyper_util::rt::TokioIo::new(sock);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_errors() {
        OBJECT_PUTS.add(3);
        observe_fuse("lookup", Duration::from_millis(2));
        observe_object("get", Duration::from_millis(30), false);
        count_error(crate::error::Kind::NotFound);
        let text = render();
        assert!(text.contains("# TYPE vecfs_object_put counter"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.starts_with("vecfs_object_put_total ")));
        assert!(
            text.contains("vecfs_fuse_op_duration_seconds_bucket{le=\"0.0025\",op=\"lookup\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vecfs_object_errors_total{method=\"get\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("vecfs_errors_total{kind=\"not_found\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
