//! Redis outages (issue 10, "bounded, killable waits"): Redis (append-only,
//! so it loses nothing it acknowledged) is stopped for 5 s and for 60 s
//! while processes write, read, stat and list on a mount over moto. No
//! operation may block longer than the configured bound, a process blocked
//! on the mount must die at once on kill -9, reads through handles opened
//! before the outage keep working from the cache, every file closed
//! successfully reads back exactly, and the mount answers again within 2 s
//! of Redis returning.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{close, pattern, within, Mount, Redis, Volume, S3};

/// The bounds the mount is given (seconds).
/// Metadata bound of the long outage (the short one keeps the default, 20 s,
/// so a slow reload of Redis' data on a busy machine still fits in it).
const META_TIMEOUT: u64 = 10;
const IO_RETRY: u64 = 10;
/// The longest any single system call may take: metadata calls give up
/// after META_TIMEOUT; a close or fsync may first wait for a flush the
/// background flusher has under way (one retry window), then make its own
/// (another, whose last attempt gets at least 5 s), plus scheduling slack.
const OP_BOUND: Duration = Duration::from_secs(2 * IO_RETRY + 5 + 3);

/// `ballast` keys in another database make Redis take a while to load its
/// data when it restarts (it answers LOADING meanwhile).
fn s3_volume_with_aof_redis(ballast: u64) -> Volume {
    let redis = Redis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--enable-debug-command",
        "yes",
    ]);
    if ballast > 0 {
        redis.cli(&["-n", "3", "DEBUG", "POPULATE", &ballast.to_string()]);
        redis.cli(&["BGREWRITEAOF"]);
        common::wait_for("AOF rewrite", Duration::from_secs(60), || {
            redis
                .cli(&["INFO", "persistence"])
                .contains("aof_rewrite_in_progress:0")
        });
    }
    let s3 = S3::start();
    let port = s3.port;
    common::s3_volume(redis, s3, port, &[])
}

#[derive(Default)]
struct Record {
    /// Longest operation seen, and which.
    slowest: Mutex<(Duration, String)>,
    failures: AtomicU64,
    /// The first failures: what, when (since the test began), the error.
    failed: Mutex<Vec<String>>,
    ops: AtomicU64,
    /// Files whose close returned 0: (name, seed, length).
    closed: Mutex<Vec<(String, u64, usize)>>,
}

impl Record {
    fn timed<T>(&self, what: &str, f: impl FnOnce() -> std::io::Result<T>) -> Option<T> {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        self.ops.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.slowest.lock() {
            if took > s.0 {
                *s = (took, what.to_string());
            }
        }
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut f) = self.failed.lock() {
                    if f.len() < 10 {
                        f.push(format!("{what} after {took:?}: {e}"));
                    }
                }
                None
            }
        }
    }
}

fn write_file(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    close(f)
}

/// Creates, then writes and closes, timing each system call on its own
/// (each has its own bound).
fn timed_write(rec: &Record, path: &std::path::Path, data: &[u8]) -> bool {
    use std::io::Write;
    let Some(mut f) = rec.timed("create", || fs::File::create(path)) else {
        return false;
    };
    rec.timed("write", || f.write_all(data)).is_some() && rec.timed("close", || close(f)).is_some()
}

/// One worker: write a new file, read back an earlier one, stat, list.
fn worker(m: &Mount, id: usize, stop: &AtomicBool, rec: &Record) {
    let dir = m.p(&format!("w{id}"));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("w{id}/f{n}");
        let seed = (id as u64) << 32 | n;
        let len = 64 << 10;
        let data = pattern(len, seed);
        if timed_write(rec, &m.p(&name), &data) {
            rec.closed.lock().unwrap().push((name.clone(), seed, len));
        }
        let earlier = rec.closed.lock().unwrap().first().cloned();
        if let Some((name, seed, len)) = earlier {
            if let Some(back) = rec.timed("read", || fs::read(m.p(&name))) {
                assert!(back == pattern(len, seed), "{name}: wrong bytes read");
            }
        }
        rec.timed("stat", || fs::metadata(m.p(&name)));
        rec.timed("readdir", || fs::read_dir(&dir).map(|d| d.count()));
    }
}

/// How long `kill -9` takes to end a process blocked on the mount.
fn kill_blocked_process(m: &Mount, what: &str) -> Duration {
    let mut child = Command::new("stat")
        .arg(m.p(what))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Blocked: still running after a second (Redis is down, the lookup waits).
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the probe did not block on the outage"
    );
    let t = Instant::now();
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(libc::SIGKILL));
    t.elapsed()
}

fn redis_outage(outage: Duration, ballast: u64, meta_timeout: u64) {
    let v = s3_volume_with_aof_redis(ballast);
    let meta = meta_timeout.to_string();
    let io = IO_RETRY.to_string();
    let m = Arc::new(v.mount_with(&["--meta-timeout", &meta, "--io-retry", &io]));
    for id in 0..3 {
        fs::create_dir(m.p(&format!("w{id}"))).unwrap();
    }
    // Closed before the outage, and one of them open and fully read (cached).
    let before: Vec<(String, u64, usize)> = (0..8)
        .map(|i| {
            (
                format!("before{i}"),
                1000 + i,
                (1 << 20) + i as usize * 4097,
            )
        })
        .collect();
    for (name, seed, len) in &before {
        write_file(&m.p(name), &pattern(*len, *seed)).unwrap();
    }
    let mut cached = fs::File::open(m.p("before0")).unwrap();
    let mut all = Vec::new();
    cached.read_to_end(&mut all).unwrap();
    assert!(all == pattern(before[0].2, before[0].1));

    let stop = Arc::new(AtomicBool::new(false));
    let rec = Arc::new(Record::default());
    let workers: Vec<_> = (0..3)
        .map(|id| {
            let (m, stop, rec) = (m.clone(), stop.clone(), rec.clone());
            std::thread::spawn(move || worker(&m, id, &stop, &rec))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let ops_before = rec.ops.load(Ordering::Relaxed);
    assert!(
        ops_before > 0,
        "the workers made no progress before the outage"
    );

    v.redis.stop();
    let down_at = Instant::now();
    // Reads through a handle opened before the outage come from the cache.
    let mut cached_reads = 0;
    for _ in 0..5 {
        cached.seek(SeekFrom::Start(0)).unwrap();
        let mut again = Vec::new();
        cached.read_to_end(&mut again).unwrap();
        assert!(again == all, "cached read during the outage differs");
        cached_reads += 1;
    }
    assert_eq!(cached_reads, 5);
    let kill_took = kill_blocked_process(&m, "no-such-file");
    assert!(
        kill_took < Duration::from_secs(2),
        "kill -9 of a process blocked on the mount took {kill_took:?}"
    );
    let left = outage.saturating_sub(down_at.elapsed());
    std::thread::sleep(left); // the outage itself, not a synchronisation
    v.redis.restart();
    let back_at = Instant::now();

    // The mount answers again within 2 s of Redis returning.
    let probe = m.p("after-outage");
    let recovered = within(
        "first operation after the outage",
        Duration::from_secs(OP_BOUND.as_secs() + 10),
        || {},
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while fs::create_dir(&probe).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            Instant::now()
        },
    );
    let recovery = recovered.saturating_duration_since(back_at);
    assert!(
        recovery < Duration::from_secs(2),
        "the mount took {recovery:?} to work again after Redis returned"
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        within(
            "worker to stop",
            OP_BOUND * 4,
            || {},
            move || w.join().unwrap(),
        );
    }
    let (slowest, what) = rec.slowest.lock().unwrap().clone();
    assert!(
        slowest <= OP_BOUND,
        "{what} blocked for {slowest:?} (bound {OP_BOUND:?})"
    );
    let failures = rec.failures.load(Ordering::Relaxed);
    if outage + Duration::from_secs(3) < Duration::from_secs(meta_timeout) {
        // Shorter than the bound: operations wait it out and succeed.
        assert_eq!(
            failures,
            0,
            "operations failed during a short outage: {:?}",
            rec.failed.lock().unwrap()
        );
    } else {
        assert!(failures > 0, "a long outage failed no operation");
    }
    eprintln!(
        "outage {outage:?}: {} operations, {failures} failed, slowest {what} {slowest:?}, \
         kill -9 {kill_took:?}, recovery {recovery:?}",
        rec.ops.load(Ordering::Relaxed)
    );
    drop(cached);
    let m = Arc::try_unwrap(m).ok().unwrap();
    m.unmount();

    // Every file closed successfully, before or during the outage, is intact.
    let fresh = v.mount();
    let closed = rec.closed.lock().unwrap().clone();
    assert!(!closed.is_empty());
    for (name, seed, len) in before.iter().chain(closed.iter()) {
        let back = fs::read(fresh.p(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(back == pattern(*len, *seed), "{name}: wrong bytes");
    }
    fresh.unmount();
}

#[test]
fn a_5s_redis_outage_is_waited_out() {
    // Reconnects meet a Redis that answers LOADING for a while: a reconnect
    // failing in SELECT must be retried too.
    redis_outage(Duration::from_secs(5), 1_000_000, 20);
}

#[test]
fn a_60s_redis_outage_fails_operations_within_the_bound() {
    redis_outage(Duration::from_secs(60), 0, META_TIMEOUT);
}

/// With the object store cut off, buffers cannot drain: a writer that ran
/// the write budget dry waits. That wait is killable at once, and bounded
/// by `--io-retry` (EIO) for a writer that is not killed.
#[test]
fn a_writer_waiting_for_buffers_on_a_dead_store_is_killable_and_bounded() {
    use common::proxy::Proxy;
    let s3 = S3::start();
    let proxy = Proxy::start(s3.port);
    let port = proxy.port;
    let v = common::s3_volume(Redis::start(), s3, port, &[]);
    let m = v.mount_with(&["--buffer-size", "8", "--io-retry", "6"]);
    proxy.down();
    let dd = |name: &str| {
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "count=64", "status=none"])
            .arg(format!("of={}", m.p(name).display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut killed = dd("killed");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        killed.try_wait().unwrap().is_none(),
        "64 MiB fit into an 8 MiB buffer with the store down"
    );
    let t = Instant::now();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let kill_took = t.elapsed();
    assert!(
        kill_took < Duration::from_secs(2),
        "kill -9 took {kill_took:?}"
    );

    let mut bounded = dd("bounded");
    let t = Instant::now();
    let st = within(
        "dd to fail",
        Duration::from_secs(60),
        || {},
        move || bounded.wait().unwrap(),
    );
    let took = t.elapsed();
    assert!(!st.success(), "dd succeeded with the store down");
    assert!(took < Duration::from_secs(20), "the write waited {took:?}");
    eprintln!("kill -9 {kill_took:?}; unkilled writer failed after {took:?}");
    proxy.up();
    m.unmount();
}
