//! Session fencing (issue 10): node A's Redis link goes through a fault
//! proxy, node B's does not. A short cut of A's link must change nothing:
//! B's contender never gets the lock A holds, and A's open-but-unlinked
//! file survives. A cut longer than the session expiry lets B clean A's
//! session and take the lock, but only after A's lock holder was told
//! (ENOLCK or EIO on its next lock operation); A then starts a new session
//! and its locks work again.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{pattern, wait_for, Mount, Storage, Volume};

/// F_SETLK over the whole file; `typ` is F_WRLCK or F_UNLCK.
fn setlk(f: &File, typ: i32) -> std::io::Result<()> {
    // SAFETY: a zeroed flock is a valid value; every field used is set.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    // SAFETY: fcntl on an fd the File owns, with a valid flock.
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn open_rw(p: std::path::PathBuf) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

/// Tries to take the lock on B every 100 ms until told to stop; records
/// when it first got it (and keeps it).
fn contender(f: File, stop: Arc<AtomicBool>, got: Arc<Mutex<Option<Instant>>>) -> File {
    while !stop.load(Ordering::Relaxed) {
        match setlk(&f, libc::F_WRLCK) {
            Ok(()) => {
                *got.lock().unwrap() = Some(Instant::now());
                break;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
            // B's own lease unsure (its heartbeat late on a loaded machine):
            // it grants nothing meanwhile, which is no answer about A.
            Err(e) if e.raw_os_error() == Some(libc::ENOLCK) => {}
            Err(e) => panic!("contender: unexpected {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f
}

struct Nodes {
    v: Volume,
    proxy: Proxy,
    a: Mount,
    b: Mount,
}

fn two_nodes(a_args: &[&str]) -> Nodes {
    let v = Volume::new(Storage::File);
    let proxy = Proxy::start(v.redis.port);
    let url = format!("redis://127.0.0.1:{}/1", proxy.port);
    let a = v.mount_via(&[], &url, a_args);
    let b = v.mount_with(&["--heartbeat", "1"]);
    Nodes { v, proxy, a, b }
}

#[test]
fn a_short_cut_gives_no_lock_away_and_deletes_no_open_file() {
    // Heartbeat 2 s: the session expires after 10 s without renewal.
    let n = two_nodes(&["--heartbeat", "2"]);
    fs::write(n.a.p("lockfile"), b"x").unwrap();
    let held = open_rw(n.a.p("lockfile"));
    setlk(&held, libc::F_WRLCK).unwrap();
    let body = pattern(3 << 20, 7);
    fs::write(n.a.p("unlinked"), &body).unwrap();
    let mut open_unlinked = File::open(n.a.p("unlinked")).unwrap();
    fs::remove_file(n.a.p("unlinked")).unwrap();

    let theirs = open_rw(n.b.p("lockfile"));
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(None));
    let c = {
        let (stop, got) = (stop.clone(), got.clone());
        std::thread::spawn(move || contender(theirs, stop, got))
    };

    n.proxy.down();
    std::thread::sleep(Duration::from_secs(3)); // the cut
    n.proxy.up();
    // Past the full expiry counted from the start of the cut: B would have
    // cleaned A by now had A's heartbeat not resumed.
    std::thread::sleep(Duration::from_secs(12));
    assert!(
        got.lock().unwrap().is_none(),
        "B got the lock A's holder still holds"
    );
    setlk(&held, libc::F_WRLCK).expect("A's holder lost its lock after a 3 s cut");
    let mut back = Vec::new();
    open_unlinked.read_to_end(&mut back).unwrap();
    assert!(
        back == body,
        "A's open-but-unlinked file changed or vanished"
    );
    assert!(
        !n.a.log_text().contains("started a new session"),
        "A's session was cleaned after a 3 s cut"
    );

    // The contender works: it gets the lock once A lets go.
    setlk(&held, libc::F_UNLCK).unwrap();
    wait_for(
        "B to get the released lock",
        Duration::from_secs(10),
        || got.lock().unwrap().is_some(),
    );
    stop.store(true, Ordering::Relaxed);
    drop(c.join().unwrap());
    drop((held, open_unlinked));
    let Nodes { a, b, .. } = n;
    a.unmount();
    b.unmount();
}

#[test]
fn a_cut_longer_than_the_expiry_tells_the_holder_before_the_lock_moves() {
    // Heartbeat 1 s: expiry 5 s, A fences itself after 2.5 s.
    let n = two_nodes(&["--heartbeat", "1", "--meta-timeout", "2"]);
    fs::write(n.a.p("lockfile"), b"x").unwrap();
    let held = Arc::new(open_rw(n.a.p("lockfile")));
    setlk(&held, libc::F_WRLCK).unwrap();

    // A's holder re-asserts its lock every 200 ms and notes when it is
    // first told it may not have it any more.
    let told: Arc<Mutex<Option<(Instant, i32)>>> = Arc::new(Mutex::new(None));
    let stop_holder = Arc::new(AtomicBool::new(false));
    let holder = {
        let (held, told, stop) = (held.clone(), told.clone(), stop_holder.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && told.lock().unwrap().is_none() {
                if let Err(e) = setlk(&held, libc::F_WRLCK) {
                    *told.lock().unwrap() = Some((Instant::now(), e.raw_os_error().unwrap_or(0)));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let theirs = open_rw(n.b.p("lockfile"));
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(Mutex::new(None));
    let c = {
        let (stop, got) = (stop.clone(), got.clone());
        std::thread::spawn(move || contender(theirs, stop, got))
    };

    n.proxy.down();
    wait_for(
        "B to take the lock of A's expired session",
        Duration::from_secs(40),
        || got.lock().unwrap().is_some(),
    );
    let got_at = got.lock().unwrap().unwrap();
    stop_holder.store(true, Ordering::Relaxed);
    holder.join().unwrap();
    let (told_at, errno) = told.lock().unwrap().expect("A's holder was never told");
    assert!(
        told_at < got_at,
        "B got the lock {:?} before A's holder was told",
        told_at - got_at
    );
    assert!(
        errno == libc::ENOLCK || errno == libc::EIO,
        "A's holder was told with errno {errno}"
    );

    n.proxy.up();
    wait_for("A to start a new session", Duration::from_secs(30), || {
        n.a.log_text().contains("started a new session")
    });
    // The old session's lock is not revived: B holds it, A must wait.
    let again = setlk(&held, libc::F_WRLCK);
    let again = again.err().and_then(|e| e.raw_os_error());
    assert!(
        again == Some(libc::EAGAIN) || again == Some(libc::ENOLCK),
        "A's holder took the lock B holds: {again:?}"
    );
    // Once B lets go, A's locks work again under its new session.
    stop.store(true, Ordering::Relaxed);
    let theirs = c.join().unwrap();
    setlk(&theirs, libc::F_UNLCK).unwrap();
    wait_for("A to lock again", Duration::from_secs(10), || {
        setlk(&held, libc::F_WRLCK).is_ok()
    });
    drop((held, theirs));
    let Nodes { v, a, b, .. } = n;
    a.unmount();
    b.unmount();
    drop(v);
}

/// A process waiting for a lock (blocking flock, as `flock -w` does with an
/// alarm) gets EINTR when its signal arrives, and leaves no lock behind.
/// Without FUSE INTERRUPT handling the wait only ends when the lock is free.
#[test]
fn a_blocking_lock_wait_is_interrupted_and_leaves_no_lock() {
    let v = Volume::new(Storage::File);
    let a = v.mount();
    let b = v.mount();
    fs::write(a.p("lockfile"), b"x").unwrap();
    let held = open_rw(a.p("lockfile"));
    setlk(&held, libc::F_WRLCK).unwrap();

    let path = b.p("lockfile");
    let t = Instant::now();
    let waited = common::within(
        "flock -w 1 to give up",
        Duration::from_secs(30),
        || {},
        move || {
            std::process::Command::new("flock")
                .args(["-w", "1"])
                .arg(&path)
                .arg("true")
                .status()
                .unwrap()
        },
    );
    let took = t.elapsed();
    assert_eq!(waited.code(), Some(1), "flock -w got the lock A holds");
    assert!(
        took < Duration::from_secs(3),
        "the interrupted wait took {took:?}"
    );

    setlk(&held, libc::F_UNLCK).unwrap();
    let free = std::process::Command::new("flock")
        .args(["-n"])
        .arg(b.p("lockfile"))
        .arg("true")
        .status()
        .unwrap();
    assert!(free.success(), "the interrupted waiter left a lock behind");
    drop(held);
    a.unmount();
    b.unmount();
}

/// Uploads of a node whose session expired and was cleaned were handed to
/// the deleter; committing them after the node re-registered would make a
/// file point at objects about to be deleted. The commit is refused: fsync
/// says EIO, and the file another node sees never points at missing data.
#[test]
fn uploads_of_a_cleaned_session_are_never_committed() {
    // No trash: B's deleter frees what A's cleanup handed it at once.
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let proxy = Proxy::start(v.redis.port);
    let url = format!("redis://127.0.0.1:{}/1", proxy.port);
    let a = v.mount_via(
        &[],
        &url,
        &["--heartbeat", "1", "--meta-timeout", "2", "--io-retry", "2"],
    );
    let b = v.mount_with(&["--heartbeat", "1", "--delete-delay", "0"]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(a.p("seg"))
        .unwrap();
    let body = pattern(12 << 20, 9);
    std::os::unix::fs::FileExt::write_all_at(&f, &body, 0).unwrap();
    // Full blocks are uploaded (and journaled) as they fill. Asked over a
    // connection of the test's own: spawning redis-cli would fork this
    // process, and the child's close-on-exec of the open file is a close
    // (FUSE flush) that commits the uploads.
    let mut redis = redis::Client::open(v.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let mut journal = || -> String {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("{testvol}uploads*")
            .query(&mut redis)
            .unwrap_or_default();
        keys.join(" ")
    };
    // The flusher commits a file idle for a second: keep writing (through
    // this very descriptor: a dup's close would be a flush) until A is cut
    // off, or a slow machine commits the uploads before the cut and the
    // test would prove nothing.
    let writing = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut at = body.len() as u64;
            while writing.load(Ordering::Relaxed) {
                std::os::unix::fs::FileExt::write_all_at(&f, b"x", at).unwrap();
                at += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        wait_for("uploads journaled", Duration::from_secs(20), || {
            !journal().trim().is_empty()
        });
        proxy.down();
        writing.store(false, Ordering::Relaxed);
    });
    // (Not through redis-cli: a fork would close the descriptor, a flush.)
    let committed: Vec<String> = redis::cmd("KEYS")
        .arg("{testvol}c[0-9]*")
        .query(
            &mut redis::Client::open(v.url.as_str())
                .unwrap()
                .get_connection()
                .unwrap(),
        )
        .unwrap();
    assert!(
        committed.is_empty(),
        "the uploads were committed before A was cut off: {committed:?}"
    );
    wait_for("A's session cleaned", Duration::from_secs(40), || {
        journal().trim().is_empty()
    });
    proxy.up();
    wait_for("A to start a new session", Duration::from_secs(30), || {
        a.log_text().contains("started a new session")
    });
    // SAFETY: fsync on an fd the File owns.
    let synced = unsafe { libc::fsync(f.as_raw_fd()) };
    assert_eq!(
        synced,
        -1,
        "fsync committed uploads of a cleaned session; A's log:\n{}",
        a.log_text()
    );
    drop(f);
    // Once the deleter is through, whatever B sees reads without error
    // (no slice names a deleted object).
    let deleted = common::poll_until(Duration::from_secs(30), || {
        v.redis
            .cli(&["-n", "1", "ZCARD", "{testvol}delslices"])
            .trim()
            == "0"
    });
    assert!(
        deleted,
        "deleter not through: {} / B log: {}",
        v.redis.cli(&[
            "-n",
            "1",
            "ZRANGE",
            "{testvol}delslices",
            "0",
            "-1",
            "WITHSCORES"
        ]),
        b.log_text()
    );
    let back = fs::read(b.p("seg")).expect("reading the file on B");
    assert!(
        back.is_empty() || back == body,
        "B sees {} bytes",
        back.len()
    );
    a.unmount();
    b.unmount();
}
