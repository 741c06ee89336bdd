//! Single-node correctness under ordinary concurrency (issue 9): on ONE mount
//! with default options, data the file system acknowledged is never lost,
//! hidden or stalled. Appends raced by stat and by `ls -l`; a file stat'ed
//! and read right after its own close while a sibling directory churns;
//! inodes and space freed when unlink overtakes the kernel's release; data
//! kept, and the error sticky, across a failed commit (Redis restarted) and
//! a failed upload (object store cut off by a fault proxy); tiny writes that
//! must not starve every other writer and stat; stats and reads that must
//! not wait on an upload; the local copies (disk cache, file store) and the
//! root directory closed to other users; and a disk cache that drops dead
//! blocks and never serves one block's entry for another. Sections follow
//! the numbered items.
//!
//! Every worker loop is bounded by count and time, and every test that can
//! hang in a FUSE request runs under a watchdog that kills the daemon (which
//! fails the pending requests) instead of hanging the test process.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{
    abort_mount, close, fsync, pattern, within, Backend, Mount, Redis, Storage, Volume, S3,
};

/// The mount option that bounds how long a failed upload or commit is
/// retried before fsync reports the error (seconds), under the names it may
/// have. The first one `vecfs mount --help` lists is passed; none is passed
/// when it lists none, so the failure tests exercise the real behaviour
/// before and after the option exists.
const IO_RETRY_FLAGS: &[&str] = &["--io-retry", "--io-retry-secs"];
const IO_RETRY_SECS: u64 = 3;

/// Longest any single file system call in the failure tests may take: the
/// retry bound plus generous slack for a 2-core CI machine.
const OP_DEADLINE: Duration = Duration::from_secs(IO_RETRY_SECS + 90);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Aborts the mount from a watchdog without borrowing it.
fn aborter(m: &Mount) -> impl FnOnce() {
    let (pid, path) = (m.pid(), m.path.clone());
    move || abort_mount(pid, &path)
}

// ---- 1. appends raced by stat / listing ---------------------------------------

const REC: usize = 32;
const RECORDS: usize = 2_000;

/// Record `i` of writer `w`: 32 bytes, unique, self-describing.
fn record(w: u8, i: usize) -> [u8; REC] {
    let mut r = [b'.'; REC];
    let head = format!("w{w} record {i:010} ");
    r[..head.len()].copy_from_slice(head.as_bytes());
    r[REC - 1] = b'\n';
    r
}

#[derive(Debug, Default)]
struct Audit {
    /// Records whose bytes are not exactly some writer's record.
    torn: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
}

/// Checks that `data` holds every record 0..n of each writer exactly once,
/// each writer's in order (writers may interleave).
fn audit(data: &[u8], writers: &[u8], n: usize) -> Audit {
    let mut a = Audit::default();
    let mut seen = vec![vec![0u32; n]; writers.len()];
    let mut last: Vec<Option<usize>> = vec![None; writers.len()];
    if data.len() % REC != 0 {
        a.torn += 1;
    }
    for r in data.chunks_exact(REC) {
        let parsed = std::str::from_utf8(&r[..20]).ok().and_then(|s| {
            let w: u8 = s.get(1..2)?.parse().ok()?;
            let i: usize = s.get(10..20)?.parse().ok()?;
            Some((w, i))
        });
        let hit = parsed.and_then(|(w, i)| {
            let k = writers.iter().position(|x| *x == w)?;
            (i < n && r == record(w, i)).then_some((k, i))
        });
        let Some((k, i)) = hit else {
            a.torn += 1;
            continue;
        };
        seen[k][i] += 1;
        if last[k].is_some_and(|l| i <= l) {
            a.out_of_order += 1;
        }
        last[k] = Some(i);
    }
    for s in &seen {
        a.lost += s.iter().filter(|c| **c == 0).count();
        a.duplicated += s
            .iter()
            .map(|c| c.saturating_sub(1) as usize)
            .sum::<usize>();
    }
    a
}

#[derive(Clone, Copy, Debug)]
enum Form {
    /// open(O_APPEND), write, close per record.
    OpenWriteClose,
    /// one O_APPEND fd for all records, write + fsync each.
    WriteFsync,
}

#[derive(Clone, Copy, Debug)]
enum Prober {
    /// stat(2) of the log in a tight loop.
    Stat,
    /// `ls -l` of its directory: readdir, then lstat of every entry.
    List,
}

fn append(path: &Path, form: Form, w: u8, n: usize) {
    match form {
        Form::OpenWriteClose => {
            for i in 0..n {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .unwrap_or_else(|e| panic!("open for record {i}: {e}"));
                f.write_all(&record(w, i))
                    .unwrap_or_else(|e| panic!("write record {i}: {e}"));
                close(f).unwrap_or_else(|e| panic!("close after record {i}: {e}"));
            }
        }
        Form::WriteFsync => {
            let mut f = OpenOptions::new().append(true).open(path).unwrap();
            for i in 0..n {
                f.write_all(&record(w, i))
                    .unwrap_or_else(|e| panic!("write record {i}: {e}"));
                fsync(&f).unwrap_or_else(|e| panic!("fsync after record {i}: {e}"));
            }
            close(f).unwrap();
        }
    }
}

/// `writers` threads append `RECORDS` records each to one log while another
/// thread probes it; then the log must hold every record exactly once.
fn append_race(form: Form, prober: Prober, writers: u8) {
    let v = Volume::new(Storage::File);
    let m = v.mount();
    fs::create_dir(m.p("wal")).unwrap();
    for k in 0..8 {
        fs::write(
            m.p(&format!("wal/segment_{k}")),
            pattern(1000 + k, k as u64),
        )
        .unwrap();
    }
    let log = m.p("wal/log");
    File::create(&log).unwrap();
    let dir = m.p("wal");
    let started = Instant::now();
    let probes = within(
        "appends with a concurrent prober",
        Duration::from_secs(240),
        aborter(&m),
        move || {
            let running = AtomicUsize::new(writers as usize);
            let probes = AtomicU64::new(0);
            std::thread::scope(|s| {
                for w in 0..writers {
                    let (log, running) = (&log, &running);
                    s.spawn(move || {
                        // A panicking writer must still let the prober stop.
                        struct Done<'a>(&'a AtomicUsize);
                        impl Drop for Done<'_> {
                            fn drop(&mut self) {
                                self.0.fetch_sub(1, Ordering::Release);
                            }
                        }
                        let _done = Done(running);
                        append(log, form, w, RECORDS);
                    });
                }
                let deadline = Instant::now() + Duration::from_secs(200);
                while running.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                    match prober {
                        Prober::Stat => {
                            let _ = fs::metadata(&log);
                        }
                        Prober::List => {
                            for e in fs::read_dir(&dir).unwrap().flatten() {
                                let _ = e.metadata();
                            }
                        }
                    }
                    probes.fetch_add(1, Ordering::Relaxed);
                }
            });
            probes.into_inner()
        },
    );
    let data = fs::read(m.p("wal/log")).unwrap();
    let ids: Vec<u8> = (0..writers).collect();
    let a = audit(&data, &ids, RECORDS);
    let want = writers as usize * RECORDS * REC;
    println!(
        "{form:?} x{writers} with {prober:?}: {} probes, {:?}; file {} bytes (want {want}); {a:?}",
        probes,
        started.elapsed(),
        data.len()
    );
    assert!(
        data.len() == want
            && a.lost == 0
            && a.torn == 0
            && a.duplicated == 0
            && a.out_of_order == 0,
        "acknowledged appends damaged: file {} bytes, want {want}; records lost: {}, torn: {}, \
         duplicated: {}, out of order: {}",
        data.len(),
        a.lost,
        a.torn,
        a.duplicated,
        a.out_of_order
    );
    m.unmount();
}

#[test]
fn appends_survive_concurrent_stat() {
    append_race(Form::OpenWriteClose, Prober::Stat, 1);
}

#[test]
fn appends_with_fsync_survive_concurrent_stat() {
    append_race(Form::WriteFsync, Prober::Stat, 1);
}

#[test]
fn appends_survive_concurrent_listing() {
    append_race(Form::OpenWriteClose, Prober::List, 1);
}

#[test]
fn appends_with_fsync_survive_concurrent_listing() {
    append_race(Form::WriteFsync, Prober::List, 1);
}

/// O_APPEND atomicity: two writers through their own fds on one node, each
/// 32-byte write lands whole at the end, none on top of another.
#[test]
fn two_appenders_keep_every_record() {
    append_race(Form::WriteFsync, Prober::Stat, 2);
}

// ---- 2. a file read right after its own close -----------------------------------

/// Milvus sizes a binlog read from a stat by path right after its own flush:
/// write, close, stat, re-open and read, in a loop, while another thread
/// creates and deletes small files next door (each such change moves the
/// node's metadata-cache generation under the commit).
#[test]
fn reopen_after_close_sees_full_size() {
    let soak = Duration::from_secs(env_num("VECFS_SOAK_SECS", 60));
    let v = Volume::new(Storage::File);
    let m = v.mount();
    fs::create_dir(m.p("binlogs")).unwrap();
    fs::create_dir(m.p("tmp")).unwrap();
    let root = m.path.clone();
    let report = within(
        "write-close-reopen loop",
        soak + Duration::from_secs(180),
        aborter(&m),
        move || {
            let stop = AtomicBool::new(false);
            let churn = AtomicU64::new(0);
            let big = pattern((4 << 20) + 8192, 77);
            let mut rng = common::Rng(0x5eed);
            let (mut files, mut wrong_size, mut short_reads, mut wrong_bytes) = (0u64, 0, 0, 0);
            let mut first_bad = Vec::new();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut j = 0u64;
                    while !stop.load(Ordering::Relaxed) && j < 10_000_000 {
                        let p = root.join(format!("tmp/t{}", j % 16));
                        let _ = fs::write(&p, b"small");
                        let _ = fs::remove_file(&p);
                        j += 1;
                        churn.store(j, Ordering::Relaxed);
                    }
                });
                let start = Instant::now();
                while start.elapsed() < soak && files < 1_000_000 {
                    let len = (64 << 10) + rng.below((4 << 20) - (64 << 10)) as usize;
                    let at = rng.below(8192) as usize;
                    let body = &big[at..at + len];
                    let p = root.join(format!("binlogs/{files}.log"));
                    let mut f = File::create(&p).unwrap();
                    f.write_all(body).unwrap();
                    close(f).unwrap();
                    let size = fs::metadata(&p).unwrap().len();
                    let got = fs::read(&p).unwrap();
                    if size != len as u64 {
                        wrong_size += 1;
                    }
                    if got.len() < len {
                        short_reads += 1;
                    }
                    if got.len() == len && got != body {
                        wrong_bytes += 1;
                    }
                    if (size != len as u64 || got != body) && first_bad.len() < 5 {
                        first_bad.push(format!(
                            "file {files}: wrote {len}, stat {size}, read {}",
                            got.len()
                        ));
                    }
                    // Keep only the last few files: the loop may write gigabytes.
                    if files >= 4 {
                        let _ = fs::remove_file(root.join(format!("binlogs/{}.log", files - 4)));
                    }
                    files += 1;
                }
                stop.store(true, Ordering::Relaxed);
            });
            (
                files,
                wrong_size,
                short_reads,
                wrong_bytes,
                churn.into_inner(),
                first_bad,
            )
        },
    );
    let (files, wrong_size, short_reads, wrong_bytes, churn, first_bad) = report;
    println!(
        "{files} files in {soak:?} with {churn} sibling create+unlink: \
         {wrong_size} wrong sizes after close, {short_reads} short reads, {wrong_bytes} wrong bytes"
    );
    assert!(files > 0);
    assert!(
        wrong_size == 0 && short_reads == 0 && wrong_bytes == 0,
        "of {files} files: {wrong_size} stat'ed with the wrong size right after close, \
         {short_reads} read back short, {wrong_bytes} with wrong bytes; first: {first_bad:#?}"
    );
    m.unmount();
}

// ---- 3. unlink right after close ---------------------------------------------------

fn counter(v: &Volume, name: &str) -> i64 {
    let k = format!("{{{}}}{name}", v.name);
    v.redis
        .cli(&["-n", "1", "get", &k])
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Members of every session's `sustained` set (unlinked but open inodes).
fn sustained(v: &Volume) -> Vec<String> {
    let pattern = format!("{{{}}}sustained*", v.name);
    let keys = v.redis.cli(&["-n", "1", "--scan", "--pattern", &pattern]);
    keys.lines()
        .filter(|k| !k.is_empty())
        .flat_map(|k| {
            v.redis
                .cli(&["-n", "1", "smembers", k])
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// The kernel's RELEASE of a closed file can arrive after the UNLINK that
/// follows the close: the file must be freed whatever the order.
#[test]
fn unlink_right_after_close_frees_everything() {
    const FILES: usize = 2_000;
    // Without trash days (the trash would keep the files, by design).
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let m = v.mount();
    let (inodes0, space0) = (counter(&v, "totalInodes"), counter(&v, "usedSpace"));
    let root = m.path.clone();
    let started = Instant::now();
    let inos = within(
        "create-write-close-unlink loop",
        Duration::from_secs(240),
        aborter(&m),
        move || {
            let body = pattern(100 << 10, 5);
            let mut inos = Vec::with_capacity(FILES);
            for i in 0..FILES {
                let p = root.join(format!("f{i}"));
                let mut f = File::create(&p).unwrap();
                inos.push(f.metadata().unwrap().ino());
                f.write_all(&body).unwrap();
                close(f).unwrap();
                fs::remove_file(&p).unwrap();
            }
            inos
        },
    );
    println!(
        "{FILES} x (create, write 100 KiB, close, unlink) in {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut inodes, mut space) = (0, 0);
    while Instant::now() < deadline {
        (inodes, space) = (counter(&v, "totalInodes"), counter(&v, "usedSpace"));
        if (inodes, space) == (inodes0, space0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut cmd = vec!["-n".to_string(), "1".into(), "exists".into()];
    cmd.extend(inos.iter().map(|i| format!("{{{}}}i{i}", v.name)));
    let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let keys_left: i64 = v.redis.cli(&args).trim().parse().unwrap_or(-1);
    let held = sustained(&v);
    println!(
        "totalInodes {inodes0} -> {inodes}, usedSpace {space0} -> {space}; \
         {keys_left} inode keys left, {} sustained",
        held.len()
    );
    assert_eq!(
        (inodes - inodes0, space - space0, keys_left, held.len()),
        (0, 0, 0, 0),
        "after 30 s: {} inodes and {} bytes still counted, {keys_left} of {FILES} inode keys \
         left, sustained set holds {} (first {:?})",
        inodes - inodes0,
        space - space0,
        held.len(),
        held.iter().take(5).collect::<Vec<_>>()
    );
    m.unmount();
}

// ---- 4. failed commit / failed upload ---------------------------------------------

/// The retry-bound option, if this vecfs has it.
fn io_retry_args() -> Vec<String> {
    let help = Command::new(common::VECFS)
        .args(["mount", "--help"])
        .output()
        .expect("vecfs mount --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let listed = |flag: &str| {
        help.split(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .any(|w| w == flag)
    };
    match IO_RETRY_FLAGS.iter().find(|f| listed(f)) {
        Some(f) => vec![f.to_string(), IO_RETRY_SECS.to_string()],
        None => {
            println!("note: `vecfs mount` lists none of {IO_RETRY_FLAGS:?}; default retry bound");
            Vec::new()
        }
    }
}

fn mount_with_retry_bound(v: &Volume) -> Mount {
    let args = io_retry_args();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    v.mount_with(&refs)
}

/// Runs one file system call under the watchdog.
fn op<T: Send + 'static>(
    m: &Mount,
    what: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    within(what, OP_DEADLINE, aborter(m), f)
}

fn outcome(r: &std::io::Result<()>) -> String {
    match r {
        Ok(()) => "0".into(),
        Err(e) => format!("{e}"),
    }
}

/// 1 MiB written through two handles; then the outage: every fsync and the
/// close while it lasts must fail (never 0); after it a fsync commits the
/// data and a fresh mount reads back exactly what was written.
fn outage_keeps_data(v: &Volume, m: Mount, down: &dyn Fn(), up: &dyn Fn()) {
    let body = pattern(1 << 20, 41);
    let half = body.len() / 2;
    let p = m.p("wal.log");
    let f1 = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let f2 = OpenOptions::new().write(true).open(&p).unwrap();
    f1.write_all_at(&body[..half], 0).unwrap();
    f2.write_all_at(&body[half..], half as u64).unwrap();
    let (f1, f2) = (Arc::new(Mutex::new(Some(f1))), Arc::new(f2));

    down();
    let mut during = Vec::new();
    for (what, fd) in [
        ("fsync 1", 1),
        ("fsync 2", 1),
        ("fsync of the other handle", 2),
    ] {
        let (f1, f2) = (f1.clone(), f2.clone());
        let t = Instant::now();
        let r = op(&m, what, move || match fd {
            1 => fsync(f1.lock().unwrap().as_ref().unwrap()),
            _ => fsync(&f2),
        });
        during.push((what, outcome(&r), t.elapsed()));
    }
    let f1c = f1.clone();
    let t = Instant::now();
    let r = op(&m, "close", move || {
        close(f1c.lock().unwrap().take().unwrap())
    });
    during.push(("close", outcome(&r), t.elapsed()));
    up();

    // Recovery: the next fsync retries and commits (allow a few tries while
    // connections come back).
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let f2 = f2.clone();
        let r = op(&m, "fsync after recovery", move || fsync(&f2));
        after.push(outcome(&r));
        if r.is_ok() || Instant::now() > deadline || after.len() >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let f2 = Arc::try_unwrap(f2).expect("no other user of the handle");
    let closed = outcome(&op(&m, "close after recovery", move || close(f2)));
    let size_here = fs::metadata(&p).map(|md| md.len()).unwrap_or(0);
    println!("during the outage: {during:?}");
    println!("after: fsync {after:?}, close {closed}, stat here {size_here}");
    m.unmount();

    let fresh = v.mount();
    let got = fs::read(fresh.p("wal.log")).unwrap_or_default();
    println!(
        "fresh mount reads {} bytes (want {})",
        got.len(),
        body.len()
    );
    let returned_zero: Vec<_> = during.iter().filter(|d| d.1 == "0").collect();
    assert!(
        returned_zero.is_empty(),
        "returned 0 while the data was not committed: {returned_zero:?} (all: {during:?})"
    );
    let eio = outcome(&Err(std::io::Error::from_raw_os_error(libc::EIO)));
    let not_eio: Vec<_> = during.iter().filter(|d| d.1 != eio).collect();
    assert!(not_eio.is_empty(), "not EIO during the outage: {not_eio:?}");
    assert_eq!(
        after.last().map(String::as_str),
        Some("0"),
        "fsync after recovery: {after:?}"
    );
    assert_eq!(closed, "0", "close after recovery");
    assert_eq!(size_here, body.len() as u64, "stat on the writing node");
    assert_eq!(got.len(), body.len(), "fresh mount: file size");
    assert!(got == body, "fresh mount: bytes differ");
    fresh.unmount();
}

/// The commit fails: Redis (with its append-only file) stops after the data
/// is written and comes back on the same port and directory.
#[test]
fn failed_commit_keeps_data() {
    let store = tempfile::tempdir().unwrap();
    let bucket = store.path().join("objects").to_string_lossy().into_owned();
    let v = Volume::format(
        Redis::start_aof(),
        Backend::File(store),
        "file",
        &bucket,
        Vec::new(),
        &[],
    );
    let m = mount_with_retry_bound(&v);
    outage_keeps_data(&v, m, &|| v.redis.stop(), &|| v.redis.restart());
}

/// A volume on moto whose every request goes through a fault proxy.
fn s3_behind_proxy() -> (Volume, Proxy) {
    let s3 = S3::start();
    let proxy = Proxy::start(s3.port);
    let port = proxy.port;
    (common::s3_volume(Redis::start(), s3, port, &[]), proxy)
}

/// The upload fails: the object store (moto behind a fault proxy) drops
/// every connection and resets new ones, then comes back.
#[test]
fn failed_upload_keeps_data() {
    let (v, proxy) = s3_behind_proxy();
    let m = mount_with_retry_bound(&v);
    outage_keeps_data(&v, m, &|| proxy.down(), &|| proxy.up());
}

// ---- 5. tiny writes must not starve the node --------------------------------------

/// A worker's progress, for the stall detector.
#[derive(Default)]
struct Progress {
    count: AtomicU64,
    done: AtomicBool,
}

/// A commit that reached Redis but whose reply was lost (fsync answers
/// EIO), then more writes, then recovery: the next fsync must commit the
/// new writes too. A retry that sent the grown batch under the first
/// commit's idempotency token was taken for the old one and dropped them.
#[test]
fn a_commit_whose_reply_was_lost_keeps_later_writes() {
    let v = Volume::new(Storage::File);
    let proxy = Proxy::start(v.redis.port);
    let url = format!("redis://127.0.0.1:{}/1", proxy.port);
    let args = io_retry_args();
    let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
    refs.extend(["--no-events"]);
    let m = v.mount_via(&[], &url, &refs);
    // Loads the write script and a batch of slice ids, so the commit below
    // needs no Redis answer before it is sent.
    fs::write(m.p("warm"), pattern(256 << 10, 70)).unwrap();
    // Small enough to be committed inline: an object slice's upload is
    // journaled in Redis first, and that answer is frozen below too.
    let first = pattern(8 << 10, 71);
    let second = pattern(256 << 10, 72);
    let f = File::create(m.p("seg")).unwrap();
    let ino = f.metadata().unwrap().ino();
    f.write_all_at(&first, 0).unwrap();

    proxy.freeze_replies();
    let f = Arc::new(f);
    let f2 = f.clone();
    let synced = std::thread::spawn(move || fsync(&f2));
    let chunk = format!("{{testvol}}c{ino}_0");
    common::wait_for("the commit to reach Redis", Duration::from_secs(30), || {
        v.redis.cli(&["-n", "1", "LLEN", &chunk]).trim() == "1"
    });
    proxy.down(); // the reply is lost
    let r = synced.join().unwrap();
    assert!(r.is_err(), "fsync returned 0 with its reply lost");
    proxy.thaw();

    f.write_all_at(&second, first.len() as u64).unwrap();
    proxy.up();
    let mut ok = false;
    for _ in 0..5 {
        if fsync(&f).is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "fsync after recovery kept failing");
    drop(f);
    m.unmount();
    let fresh = v.mount();
    let back = fs::read(fresh.p("seg")).unwrap();
    assert_eq!(back.len(), first.len() + second.len(), "later writes lost");
    assert!(back[..first.len()] == first[..] && back[first.len()..] == second[..]);
}

/// One process makes many 8-byte writes (each held 1 KiB of the node's
/// write budget until its 4 MiB block filled, so the budget ran dry), while
/// another streams a big file and a third stats files, timing each stat.
/// All must finish; the stat loop's p99 must stay under 100 ms.
#[test]
fn tiny_writes_do_not_starve_the_node() {
    // The figure: 1,000,000 (before the fix, 16,384 of them held
    // a 16 MiB budget when each write held 1 KiB).
    let tiny_n = env_num("VECFS_TINY_WRITES", 1_000_000);
    let big_mib = env_num("VECFS_BIG_WRITE_MIB", 256);
    let v = Volume::new(Storage::File);
    // A small budget runs dry within seconds when each tiny write holds 1 KiB.
    let budget = env_num("VECFS_TINY_BUFFER_MIB", 16).to_string();
    let m = v.mount_with(&["--buffer-size", &budget]);
    fs::write(m.p("other"), b"x").unwrap();
    let names = ["tiny", "big", "other"];
    let progress: Arc<[Progress; 3]> = Arc::new(Default::default());
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let started = Instant::now();

    let (root, pr) = (m.path.clone(), progress.clone());
    let tiny = std::thread::spawn(move || {
        let mut f = File::create(root.join("tiny")).unwrap();
        for i in 0..tiny_n {
            f.write_all(&i.to_le_bytes()).unwrap();
            pr[0].count.store(i + 1, Ordering::Relaxed);
        }
        close(f).unwrap();
        pr[0].done.store(true, Ordering::Release);
    });
    let (root, pr) = (m.path.clone(), progress.clone());
    let big = std::thread::spawn(move || {
        let mut f = File::create(root.join("big")).unwrap();
        for i in 0..big_mib {
            f.write_all(&pattern(1 << 20, i)).unwrap();
            pr[1].count.store(i + 1, Ordering::Relaxed);
        }
        close(f).unwrap();
        pr[1].done.store(true, Ordering::Release);
    });
    let (root, pr, lat) = (m.path.clone(), progress.clone(), latencies.clone());
    let stat = std::thread::spawn(move || {
        let mut n = 0u64;
        while !(pr[0].done.load(Ordering::Acquire) && pr[1].done.load(Ordering::Acquire))
            && n < 100_000_000
        {
            for name in names {
                let t = Instant::now();
                let _ = fs::metadata(root.join(name));
                lat.lock().unwrap().push(t.elapsed());
                n += 1;
                pr[2].count.store(n, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        pr[2].done.store(true, Ordering::Release);
    });

    // Watchdog: fail (killing the daemon, so blocked threads get ENOTCONN)
    // when the whole run exceeds its deadline or a worker stops moving.
    let deadline = Duration::from_secs(env_num("VECFS_TINY_DEADLINE_SECS", 400));
    let stall = Duration::from_secs(30);
    let mut last: Vec<(u64, Instant)> = vec![(0, Instant::now()); 3];
    let mut failure = None;
    while !progress.iter().all(|p| p.done.load(Ordering::Acquire)) {
        for (k, p) in progress.iter().enumerate() {
            let c = p.count.load(Ordering::Relaxed);
            if c != last[k].0 || p.done.load(Ordering::Acquire) {
                last[k] = (c, Instant::now());
            } else if last[k].1.elapsed() > stall {
                failure.get_or_insert(format!(
                    "{} worker stalled for {stall:?} at {c}",
                    ["tiny writer", "big writer", "stat loop"][k]
                ));
            }
        }
        if started.elapsed() > deadline {
            failure.get_or_insert(format!("not finished within {deadline:?}"));
        }
        if failure.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let counts: Vec<u64> = progress
        .iter()
        .map(|p| p.count.load(Ordering::Relaxed))
        .collect();
    if let Some(f) = failure {
        m.abort();
        // The aborted connection fails the blocked requests; give the
        // workers a moment to notice, but never wait on them unboundedly.
        let t = Instant::now();
        while ![&tiny, &big, &stat].iter().all(|h| h.is_finished())
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{f}: after {:?}, {} of {tiny_n} tiny writes, {} of {big_mib} MiB, {} stats \
             (mount aborted)",
            started.elapsed(),
            counts[0],
            counts[1],
            counts[2]
        );
    }
    for h in [tiny, big, stat] {
        if let Err(p) = h.join() {
            std::panic::resume_unwind(p);
        }
    }
    let elapsed = started.elapsed();
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let q = |x: f64| lat[((lat.len() as f64 * x) as usize).min(lat.len() - 1)];
    println!(
        "{tiny_n} 8-byte writes + {big_mib} MiB in {elapsed:?}; {} stats: p50 {:?}, p99 {:?}, \
         max {:?}",
        lat.len(),
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );

    // Everything acknowledged is there.
    let got = fs::read(m.p("tiny")).unwrap();
    assert_eq!(got.len() as u64, tiny_n * 8, "tiny file size");
    for (i, c) in got.chunks_exact(8).enumerate() {
        assert_eq!(c, (i as u64).to_le_bytes(), "tiny write {i}");
    }
    {
        let mut f = File::open(m.p("big")).unwrap();
        assert_eq!(f.metadata().unwrap().len(), big_mib << 20, "big file size");
        let mut buf = vec![0u8; 1 << 20];
        for i in 0..big_mib {
            f.read_exact(&mut buf).unwrap();
            assert!(buf == pattern(1 << 20, i), "big file MiB {i} differs");
        }
    } // closed before the unmount
    assert!(
        q(0.99) < Duration::from_millis(100),
        "stat p99 {:?} (p50 {:?}, max {:?}, {} stats) while tiny and big writes ran",
        q(0.99),
        q(0.5),
        lat[lat.len() - 1],
        lat.len()
    );
    m.unmount();
}

// ---- 6. nothing waits on an upload ---------------------------------------------

/// Whether thread `tid` of this process is inside system call `nr`.
fn in_syscall(tid: i64, nr: i64) -> bool {
    fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .is_ok_and(|s| s.split(' ').next() == Some(nr.to_string().as_str()))
}

/// A file's flush is stuck uploading (the store's network frozen): a stat
/// of it, an `ls -l` of its directory, a read of it and a read of another
/// file must not wait for that upload.
#[test]
fn stat_and_read_do_not_wait_for_an_upload() {
    const FAST: Duration = Duration::from_secs(1);
    const HELD: Duration = Duration::from_secs(6);
    let (v, proxy) = s3_behind_proxy();
    let m = v.mount();
    let other = pattern(1 << 20, 1);
    fs::write(m.p("other"), &other).unwrap();
    let body = pattern((9 << 20) + 4096, 2);
    let mut f = File::create(m.p("seg")).unwrap();
    proxy.freeze();
    f.write_all(&body).unwrap();

    let f = Arc::new(f);
    let (tx, rx) = std::sync::mpsc::channel();
    let f2 = f.clone();
    let syncing = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() } as i64);
        fsync(&f2)
    });
    let tid = rx.recv().unwrap();
    common::wait_for("fsync waiting on the frozen store", HELD, || {
        in_syscall(tid, libc::SYS_fsync) && proxy.holding() > 0
    });
    // The fsync request still has to reach the daemon's upload wait, which
    // cannot be observed from here.
    std::thread::sleep(Duration::from_millis(300));

    // Each probe on its own thread, so one that waits cannot hide another.
    type Probe = fn(&Path) -> std::io::Result<()>;
    let probes: [(&str, Probe); 4] = [
        ("stat of the file", |root| {
            fs::metadata(root.join("seg")).map(|_| ())
        }),
        ("ls -l of its directory", |root| {
            for e in fs::read_dir(root)? {
                e?.metadata()?;
            }
            Ok(())
        }),
        ("read of the file", |root| {
            let r = File::open(root.join("seg"))?;
            // SAFETY: advice on an open fd; drops clean cached pages so
            // the read goes to the daemon.
            unsafe { libc::posix_fadvise(r.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            let mut buf = vec![0u8; 4096];
            r.read_exact_at(&mut buf, 0)?;
            close(r)
        }),
        ("read of another file", |root| {
            fs::read(root.join("other")).map(|_| ())
        }),
    ];
    let threads: Vec<_> = probes
        .into_iter()
        .map(|(what, probe)| {
            let root = m.path.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = probe(&root);
                (what, t.elapsed(), outcome(&r))
            })
        })
        .collect();
    let t = Instant::now();
    while !threads.iter().all(|t| t.is_finished()) && t.elapsed() < HELD {
        std::thread::sleep(Duration::from_millis(10));
    }
    proxy.thaw();
    let (pid, path) = (m.pid(), m.path.clone());
    let took = within(
        "probes after the thaw",
        Duration::from_secs(60),
        || abort_mount(pid, &path),
        move || {
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        },
    );
    let synced = within(
        "fsync after the thaw",
        OP_DEADLINE,
        aborter(&m),
        move || syncing.join().unwrap(),
    );
    println!(
        "while an upload was held: {took:?}; fsync then: {}",
        outcome(&synced)
    );
    let slow: Vec<_> = took
        .iter()
        .filter(|(_, d, r)| *d >= FAST || r != "0")
        .collect();
    assert!(
        slow.is_empty(),
        "waited on the held upload (or failed): {slow:?}"
    );
    assert!(synced.is_ok(), "fsync after the thaw: {}", outcome(&synced));
    let f = Arc::try_unwrap(f).expect("no other user of the handle");
    close(f).unwrap();
    assert!(fs::read(m.p("seg")).unwrap() == body, "file bytes");
    m.unmount();
}

// ---- 7. other users ------------------------------------------------------------------

const NOBODY: u32 = 65534;

/// Runs a command as uid/gid 65534 with no supplementary groups.
fn as_nobody(cmd: &str, args: &[&Path]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} as nobody: {e}"))
}

/// Regular files below `dir`, listed as root.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Root's 0600 file must not be readable by another user through this
/// node's local copies, and another user must not delete root's files in
/// the root directory. The test's temp dirs (0700 from tempfile) are opened
/// to 0755 so that only vecfs's own modes protect what is inside.
#[test]
fn non_root_cannot_read_cache_or_delete_in_root() {
    const SECRET: &[u8] = b"vecfs-secret-7f3a9c2e-do-not-leak";
    let v = Volume::new(Storage::File);
    let Backend::File(store) = &v.backend else {
        unreachable!()
    };
    let objects = store.path().join("objects");
    let m = v.mount();
    for d in [store.path(), m.dir()] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    }

    // Incompressible bytes (stored raw), larger than the inline size (kept
    // out of Redis), with the secret every 4 KiB.
    let mut body = pattern(256 << 10, 99);
    for at in (0..body.len() - SECRET.len()).step_by(4096) {
        body[at..at + SECRET.len()].copy_from_slice(SECRET);
    }
    let p = m.p("secret");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    f.write_all(&body).unwrap();
    close(f).unwrap();
    assert_eq!(fs::read(&p).unwrap(), body);

    // The local copies really hold the plaintext (else this proves nothing).
    let cache = m.cache_dir();
    let holding = |d: &Path| {
        files_below(d)
            .into_iter()
            .filter(|f| fs::read(f).is_ok_and(|b| contains(&b, SECRET)))
            .count()
    };
    common::wait_for(
        "the secret in the disk cache",
        Duration::from_secs(10),
        || holding(&cache) > 0,
    );
    assert!(holding(&objects) > 0, "the file store holds the secret");

    // As another user: through the mount (permission check), then every
    // local file, each opened by path.
    let o = as_nobody("cat", &[&p]);
    assert!(
        !o.status.success() && !contains(&o.stdout, SECRET),
        "nobody read the 0600 file through the mount"
    );
    let mut readable = Vec::new();
    let mut leaked = Vec::new();
    for d in [&cache, &objects] {
        for f in files_below(d) {
            let o = as_nobody("cat", &[&f]);
            if o.status.success() {
                if contains(&o.stdout, SECRET) {
                    leaked.push(f.clone());
                }
                readable.push(f);
            }
        }
    }
    let modes = |d: &Path| fs::metadata(d).map(|m| m.mode() & 0o7777).unwrap_or(0);
    println!(
        "cache dir {:o}, store dir {:o}; {} local files readable by nobody, {} with the secret",
        modes(&cache),
        modes(&objects),
        readable.len(),
        leaked.len()
    );
    let mut problems = Vec::new();
    if !leaked.is_empty() || !readable.is_empty() {
        problems.push(format!(
            "nobody read root's local copies: {} files with the secret ({:?}), {} readable in \
             all ({:?}); cache dir mode {:o}, store dir mode {:o}",
            leaked.len(),
            leaked.iter().take(3).collect::<Vec<_>>(),
            readable.len(),
            readable.iter().take(3).collect::<Vec<_>>(),
            modes(&cache),
            modes(&objects)
        ));
    }

    // The root directory: nobody may delete root's file there.
    let victim = m.p("roots-file");
    fs::write(&victim, b"mine").unwrap();
    let o = as_nobody("unlink", &[&victim]);
    let err = String::from_utf8_lossy(&o.stderr);
    let root_mode = modes(&m.path);
    if o.status.success() || !victim.exists() {
        problems.push(format!(
            "nobody deleted root's file in the root directory (root mode {root_mode:o})"
        ));
    } else if !(err.contains("Permission denied") || err.contains("Operation not permitted")) {
        problems.push(format!(
            "unlink as nobody failed, but not with EACCES/EPERM: {err}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    m.unmount();
}

// ---- 8. cache hygiene -------------------------------------------------------------

/// Blocks of slices a later write hides, and of deleted files, leave this
/// node's disk cache: only live data stays (trash off, no delete delay).
#[test]
fn dead_blocks_leave_the_disk_cache() {
    const MIB: u64 = 1 << 20;
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let m = v.mount_with(&["--delete-delay", "0"]);
    let cache = m.cache_dir();
    fs::write(m.p("a"), pattern(16 << 20, 1)).unwrap();
    fs::write(m.p("a"), pattern(16 << 20, 2)).unwrap(); // replaces every block
    fs::write(m.p("b"), pattern(16 << 20, 3)).unwrap();
    fs::remove_file(m.p("b")).unwrap();
    // Small overwrites, compacted after 16 records: their slices die too.
    let f = OpenOptions::new().write(true).open(m.p("a")).unwrap();
    let mut rng = common::Rng(7);
    for _ in 0..40 {
        f.write_all_at(&pattern(64 << 10, rng.next()), rng.below(16 << 20))
            .unwrap();
        fsync(&f).unwrap();
    }
    close(f).unwrap();
    let live = fs::metadata(m.p("a")).unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut held = common::dir_bytes(&cache);
    while held > live + 4 * MIB && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        held = common::dir_bytes(&cache);
    }
    println!(
        "disk cache holds {:.1} MiB for {:.1} MiB of live data",
        held as f64 / MIB as f64,
        live as f64 / MIB as f64
    );
    assert!(
        held <= live + 4 * MIB,
        "after 30 s the disk cache still holds {:.1} MiB for {:.1} MiB of live data",
        held as f64 / MIB as f64,
        live as f64 / MIB as f64
    );
    m.unmount();
}

/// A disk-cache entry is bound to its key: a valid entry of another block
/// copied over it is rejected (and the block fetched again), never served.
#[test]
fn a_disk_cache_entry_is_bound_to_its_key() {
    let v = Volume::new(Storage::File);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_str().unwrap().to_string();
    let (a, b) = (pattern(1 << 20, 1), pattern(1 << 20, 2));
    let m = v.mount_with(&["--cache-dir", &dir]);
    fs::write(m.p("a"), &a).unwrap();
    fs::write(m.p("b"), &b).unwrap();
    // Same length, so both entries are the same size and equally valid.
    let entry_of = |data: &[u8]| {
        files_below(cache.path())
            .into_iter()
            .find(|f| fs::read(f).is_ok_and(|c| contains(&c, &data[..4096])))
    };
    common::wait_for(
        "both blocks in the disk cache",
        Duration::from_secs(10),
        || entry_of(&a).is_some() && entry_of(&b).is_some(),
    );
    m.unmount();
    let (ea, eb) = (entry_of(&a).unwrap(), entry_of(&b).unwrap());
    assert_ne!(ea, eb);
    fs::copy(&eb, &ea).unwrap();

    let m = v.mount_with(&["--cache-dir", &dir]);
    let got = fs::read(m.p("a")).unwrap();
    assert!(
        got == a,
        "file a read back {} (its cache entry {ea:?} holds b's block)",
        if got == b { "b's bytes" } else { "wrong bytes" }
    );
    m.unmount();
}
