//! Many nodes, one directory: two and three real mounts of one volume, each
//! its own vecfs process, sharing one redis-server and one S3 server.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{pattern, resident_pages, wait_for, Storage, Volume};

const SOON: Duration = Duration::from_secs(5);

/// Kernel caches far longer than any wait in these tests: only change
/// events (or their loss being made good) can explain a change seen.
const LONG_TTLS: [&str; 6] = [
    "--attr-cache",
    "60",
    "--entry-cache",
    "60",
    "--dir-entry-cache",
    "60",
];

#[test]
fn close_to_open_and_directory_changes_cross_nodes() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    let b = v.mount();
    let c = v.mount();

    // B caches the old attributes, then A rewrites and closes: B's open sees it all.
    fs::write(a.p("seg"), b"v1").unwrap();
    assert_eq!(fs::read(b.p("seg")).unwrap(), b"v1");
    let body = pattern(10 << 20, 3);
    {
        let mut f = File::create(a.p("seg")).unwrap();
        f.write_all(&body).unwrap();
    } // close
    assert_eq!(fs::read(b.p("seg")).unwrap(), body, "close-to-open on B");
    assert_eq!(fs::read(c.p("seg")).unwrap(), body, "close-to-open on C");

    // fsync also publishes, without close.
    let mut f = OpenOptions::new().append(true).open(a.p("seg")).unwrap();
    f.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    assert_eq!(fs::read(b.p("seg")).unwrap().len(), body.len() + 4);
    drop(f);

    // Directory changes on A are seen by B and C well within the TTL.
    fs::create_dir_all(a.p("db/collection_1")).unwrap();
    fs::write(a.p("db/collection_1/segment"), b"x").unwrap();
    wait_for("mkdir+create on B", SOON, || {
        b.p("db/collection_1/segment").exists()
    });
    fs::set_permissions(
        a.p("db/collection_1/segment"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    wait_for("chmod on B", SOON, || {
        fs::metadata(b.p("db/collection_1/segment"))
            .map(|m| m.mode() & 0o777)
            .ok()
            == Some(0o600)
    });
    fs::rename(
        a.p("db/collection_1/segment"),
        a.p("db/collection_1/renamed"),
    )
    .unwrap();
    wait_for("rename on B", SOON, || {
        b.p("db/collection_1/renamed").exists() && !b.p("db/collection_1/segment").exists()
    });
    fs::remove_file(a.p("db/collection_1/renamed")).unwrap();
    fs::remove_dir(a.p("db/collection_1")).unwrap();
    wait_for("rmdir on C", SOON, || !c.p("db/collection_1").exists());
    let listed: Vec<_> = fs::read_dir(b.p("db")).unwrap().collect();
    assert!(listed.is_empty(), "B lists the emptied directory");

    // Two nodes writing one file at once: metadata stays sane and the result
    // is some order of their writes.
    let wa = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(a.p("shared"))
        .unwrap();
    let wb = OpenOptions::new().write(true).open(b.p("shared")).unwrap();
    use std::os::unix::fs::FileExt;
    wa.write_all_at(&[b'a'; 100_000], 0).unwrap();
    wb.write_all_at(&[b'b'; 100_000], 50_000).unwrap();
    drop(wa);
    drop(wb);
    let got = fs::read(c.p("shared")).unwrap();
    assert_eq!(got.len(), 150_000);
    assert!(got[..50_000].iter().all(|x| *x == b'a'));
    assert!(got[100_000..].iter().all(|x| *x == b'b'));
    let mid = &got[50_000..100_000];
    assert!(mid.iter().all(|x| *x == b'a') || mid.iter().all(|x| *x == b'b'));
    a.unmount();
    b.unmount();
    c.unmount();
}

#[test]
fn directory_changes_are_seen_within_the_ttl_without_events() {
    let v = Volume::new(Storage::File);
    let a = v.mount_with(&["--no-events"]);
    let b = v.mount_with(&["--no-events", "--attr-cache", "1", "--entry-cache", "1"]);
    fs::write(a.p("f"), b"1").unwrap();
    assert_eq!(fs::metadata(b.p("f")).unwrap().len(), 1);
    fs::write(a.p("f"), b"123").unwrap();
    // stat alone (no open) relies on the attribute TTL
    wait_for("size within the TTL", Duration::from_secs(3), || {
        fs::metadata(b.p("f")).map(|m| m.len()).ok() == Some(3)
    });
    fs::remove_file(a.p("f")).unwrap();
    wait_for("unlink within the TTL", Duration::from_secs(3), || {
        !b.p("f").exists()
    });
    a.unmount();
    b.unmount();
}

#[test]
fn page_cache_kept_for_unchanged_files_and_dropped_for_changed_ones() {
    let v = Volume::new(Storage::File);
    let a = v.mount();
    let b = v.mount();
    let body = pattern(4 << 20, 9);
    fs::write(a.p("index"), &body).unwrap();
    assert_eq!(fs::read(b.p("index")).unwrap(), body);
    let first = resident_pages(&b.p("index"));
    // The second open of an unchanged file keeps the kernel's pages.
    assert_eq!(fs::read(b.p("index")).unwrap(), body);
    let kept = resident_pages(&b.p("index"));
    assert!(kept > 0, "pages kept across opens ({first} then {kept})");
    // A changes it: B's next open must not serve the old pages.
    let new = pattern(4 << 20, 10);
    fs::write(a.p("index"), &new).unwrap();
    assert_eq!(fs::read(b.p("index")).unwrap(), new, "no stale pages");
    a.unmount();
    b.unmount();
}

/// A helper process holding a lock: python3 (fcntl) prints "ok" once it has it.
struct Holder(Child);

impl Holder {
    fn start(code: &str) -> Holder {
        let mut c = Command::new("python3")
            .args(["-c", code])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ok", "lock holder failed: {line}");
        Holder(c)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ok` until it holds, failing the test after SOON.
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + SOON;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {SOON:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn py(code: &str) -> (bool, String) {
    let o = Command::new("python3").args(["-c", code]).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn lockf_code(path: &Path, excl: bool, nb: bool, start: u64, len: u64, hold: bool) -> String {
    format!(
        "import fcntl,sys\nf=open({p:?},'r+')\nfcntl.lockf(f, {mode}{nb}, {len}, {start})\nprint('ok', flush=True)\n{hold}",
        p = path.to_str().unwrap(),
        mode = if excl { "fcntl.LOCK_EX" } else { "fcntl.LOCK_SH" },
        nb = if nb { "|fcntl.LOCK_NB" } else { "" },
        hold = if hold { "sys.stdin.read()" } else { "" },
    )
}

#[test]
fn fcntl_and_flock_locks_hold_across_nodes() {
    let v = Volume::new(Storage::File);
    let a = v.mount();
    let b = v.mount();
    fs::write(a.p("lock"), b"").unwrap();
    let (pa, pb) = (a.p("lock"), b.p("lock"));

    // fcntl write lock on A: B's F_SETLK fails with EAGAIN, F_GETLK reports it.
    let holder = Holder::start(&lockf_code(&pa, true, true, 0, 0, true));
    let (ok, out) = py(&lockf_code(&pb, true, true, 0, 0, false));
    assert!(!ok && out.contains("Errno 11"), "B must get EAGAIN: {out}");
    let (ok, out) = py(&lockf_code(&pb, false, true, 0, 0, false));
    assert!(!ok, "even a read lock conflicts with a write lock: {out}");
    let getlk = format!(
        "import fcntl,struct\nf=open({:?},'r+')\nr=fcntl.fcntl(f, fcntl.F_GETLK, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 0, 0))\nprint(struct.unpack('hhqqi', r)[0] == fcntl.F_WRLCK)",
        pb.to_str().unwrap()
    );
    assert_eq!(py(&getlk).1, "True", "F_GETLK on B sees A's lock");

    // F_SETLKW on B waits until A's holder exits, then gets the lock.
    let mut waiter = Command::new("python3")
        .args(["-c", &lockf_code(&pb, true, false, 0, 0, false)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "B waits while A holds the lock"
    );
    drop(holder); // process exit releases its locks
    let deadline = Instant::now() + SOON;
    loop {
        if let Some(st) = waiter.try_wait().unwrap() {
            assert!(st.success(), "B got the lock after A let go");
            break;
        }
        assert!(Instant::now() < deadline, "B never got the lock");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Byte ranges: disjoint ranges coexist, overlapping ones conflict;
    // shared locks coexist.
    let free = |p: &Path| py(&lockf_code(p, true, true, 0, 0, false)).0;
    eventually("B's waiter let go", || free(&pa));
    let holder = Holder::start(&lockf_code(&pa, true, true, 0, 100, true));
    assert!(
        py(&lockf_code(&pb, true, true, 100, 100, false)).0,
        "disjoint range"
    );
    assert!(
        !py(&lockf_code(&pb, true, true, 50, 100, false)).0,
        "overlapping range"
    );
    drop(holder);
    // The holder's exit releases its locks through an asynchronous FUSE
    // flush/release, so they may linger for a moment after wait() returned.
    eventually("the range holder let go", || free(&pa));
    let shared = Holder::start(&lockf_code(&pa, false, true, 0, 0, true));
    assert!(
        py(&lockf_code(&pb, false, true, 0, 0, false)).0,
        "shared locks coexist"
    );
    drop(shared);
    eventually("the shared holders let go", || free(&pa));

    // flock: exclusive on A blocks B until A closes.
    let flock = |p: &Path, hold: bool| {
        format!(
            "import fcntl,sys\nf=open({:?})\nfcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)\nprint('ok', flush=True)\n{}",
            p.to_str().unwrap(),
            if hold { "sys.stdin.read()" } else { "" }
        )
    };
    let holder = Holder::start(&flock(&pa, true));
    let (ok, out) = py(&flock(&pb, false));
    assert!(
        !ok && out.contains("Errno 11"),
        "flock conflicts across nodes: {out}"
    );
    drop(holder);
    eventually("flock free after the holder exited", || {
        py(&flock(&pb, false)).0
    });
    a.unmount();
    b.unmount();
}

#[test]
fn a_killed_node_loses_its_locks_and_open_unlinked_files() {
    // Without trash days: an unlinked file then lives only while open.
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let a = v.mount_with(&["--heartbeat", "1"]);
    let b = v.mount_with(&["--heartbeat", "1"]);
    fs::write(a.p("lock"), b"").unwrap();
    fs::write(a.p("ghost"), pattern(100_000, 1)).unwrap();
    let ghost_ino = fs::metadata(a.p("ghost")).unwrap().ino();
    let holder = Holder::start(&lockf_code(&a.p("lock"), true, true, 0, 0, true));
    let keeper = Holder::start(&format!(
        "import os,sys\nf=open({:?},'rb')\nos.unlink({:?})\nprint('ok', flush=True)\nsys.stdin.read()",
        a.p("ghost").to_str().unwrap(),
        a.p("ghost").to_str().unwrap()
    ));
    let inode_key = format!("{{{}}}i{}", v.name, ghost_ino);
    assert_eq!(
        v.redis.cli(&["-n", "1", "EXISTS", &inode_key]).trim(),
        "1",
        "kept while open"
    );
    assert!(!py(&lockf_code(&b.p("lock"), true, true, 0, 0, false)).0);

    a.kill9();
    drop(holder);
    drop(keeper);
    // B notices A's session expired and cleans up after it.
    wait_for(
        "lock released after A died",
        Duration::from_secs(30),
        || py(&lockf_code(&b.p("lock"), true, true, 0, 0, false)).0,
    );
    wait_for(
        "open-unlinked file deleted",
        Duration::from_secs(30),
        || v.redis.cli(&["-n", "1", "EXISTS", &inode_key]).trim() == "0",
    );
    let st = common::vecfs(&["status", &v.url], &[]);
    let sessions = String::from_utf8_lossy(&st.stdout);
    assert_eq!(
        sessions.matches("\"sid\"").count(),
        1,
        "only B is left: {sessions}"
    );
    b.unmount();
}

#[test]
fn unlinked_open_file_is_deleted_at_last_close() {
    // Without trash days (with them, the file waits in .trash: tests/trash.rs).
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let a = v.mount();
    fs::write(a.p("tmp"), b"data").unwrap();
    let ino = fs::metadata(a.p("tmp")).unwrap().ino();
    let f = File::open(a.p("tmp")).unwrap();
    fs::remove_file(a.p("tmp")).unwrap();
    let key = format!("{{{}}}i{}", v.name, ino);
    assert_eq!(v.redis.cli(&["-n", "1", "EXISTS", &key]).trim(), "1");
    drop(f);
    wait_for("inode gone after last close", SOON, || {
        v.redis.cli(&["-n", "1", "EXISTS", &key]).trim() == "0"
    });
    a.unmount();
}

#[test]
fn read_only_mount_refuses_every_write() {
    let v = Volume::new(Storage::File);
    let a = v.mount();
    fs::create_dir(a.p("d")).unwrap();
    fs::write(a.p("d/f"), b"content").unwrap();
    let r = v.mount_with(&["--read-only"]);
    assert_eq!(fs::read(r.p("d/f")).unwrap(), b"content");
    let erofs = |res: std::io::Result<()>| res.err().and_then(|e| e.raw_os_error());
    assert_eq!(erofs(fs::write(r.p("d/new"), b"x")), Some(libc::EROFS));
    assert_eq!(erofs(fs::write(r.p("d/f"), b"x")), Some(libc::EROFS));
    assert_eq!(erofs(fs::create_dir(r.p("d2"))), Some(libc::EROFS));
    assert_eq!(erofs(fs::remove_file(r.p("d/f"))), Some(libc::EROFS));
    assert_eq!(erofs(fs::rename(r.p("d/f"), r.p("d/g"))), Some(libc::EROFS));
    assert_eq!(
        erofs(fs::set_permissions(
            r.p("d/f"),
            fs::Permissions::from_mode(0o600)
        )),
        Some(libc::EROFS)
    );
    assert_eq!(fs::read(a.p("d/f")).unwrap(), b"content", "nothing changed");
    r.unmount();
    a.unmount();
}

#[test]
fn bind_mounted_subdirectory_and_subdir_mounts() {
    use std::os::unix::process::CommandExt;
    let v = Volume::new(Storage::File);
    let a = v.mount();
    fs::create_dir_all(a.p("milvus/db")).unwrap();
    fs::set_permissions(a.p("milvus/db"), fs::Permissions::from_mode(0o777)).unwrap();
    // What `docker run -v /mnt/vecfs/milvus/db:/var/lib/milvus/db` does.
    let target = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .arg("--bind")
        .arg(a.p("milvus/db"))
        .arg(target.path())
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(target.path().join("by-root"), b"r").unwrap();
    let o = Command::new("sh")
        .args([
            "-c",
            &format!(
                "echo n > {0}/by-nobody && cat {0}/by-root && mkdir {0}/d && ls {0}",
                target.path().display()
            ),
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = fs::metadata(a.p("milvus/db/by-nobody")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 65534));
    assert_eq!(fs::read(a.p("milvus/db/by-root")).unwrap(), b"r");
    let _ = Command::new("umount").arg(target.path()).status();

    // --subdir shows only the subtree.
    let s = v.mount_with(&["--subdir", "milvus/db"]);
    assert!(s.p("by-nobody").exists());
    assert!(!s.p("milvus").exists());
    fs::write(s.p("from-subdir"), b"s").unwrap();
    assert_eq!(fs::read(a.p("milvus/db/from-subdir")).unwrap(), b"s");
    s.unmount();
    let dir = tempfile::tempdir().unwrap();
    let o = common::vecfs(
        &[
            "mount",
            &v.url,
            dir.path().to_str().unwrap(),
            "--subdir",
            "nope",
        ],
        &[],
    );
    assert!(
        common::stderr(&o).contains("--subdir nope"),
        "{}",
        common::stderr(&o)
    );
    a.unmount();
}

#[test]
fn change_events_beat_long_ttls() {
    let v = Volume::new(Storage::File);
    let a = v.mount_with(&LONG_TTLS);
    let b = v.mount_with(&LONG_TTLS);
    fs::write(a.p("f"), b"1").unwrap();
    assert_eq!(fs::metadata(b.p("f")).unwrap().len(), 1); // B caches for 60 s
    fs::write(a.p("f"), b"12345").unwrap();
    wait_for("new size pushed to B", SOON, || {
        fs::metadata(b.p("f")).map(|m| m.len()).ok() == Some(5)
    });
    fs::set_permissions(a.p("f"), fs::Permissions::from_mode(0o640)).unwrap();
    wait_for("chmod pushed to B", SOON, || {
        fs::metadata(b.p("f")).map(|m| m.mode() & 0o777).ok() == Some(0o640)
    });
    fs::remove_file(a.p("f")).unwrap();
    wait_for("unlink pushed to B", SOON, || !b.p("f").exists());
    a.unmount();
    b.unmount();
}

/// With change events flowing, the kernel keeps names and attributes past
/// the short (1 s) TTL: a stat then no longer reaches the daemon.
#[test]
fn the_kernel_keeps_what_change_events_keep_coherent() {
    let v = Volume::new(Storage::File);
    let a = v.mount();
    let (b, metrics) = v.mount_with_metrics(&[]);
    let channel = format!("{{{}}}events", v.name);
    wait_for("both nodes subscribed", SOON, || {
        v.redis.cli(&["PUBSUB", "NUMSUB", &channel]).lines().nth(1) == Some("2")
    });
    fs::create_dir(a.p("d")).unwrap();
    fs::write(a.p("d/f"), b"1").unwrap();
    assert_eq!(fs::metadata(b.p("d/f")).unwrap().len(), 1);
    let asked = || {
        ["lookup", "getattr"]
            .iter()
            .map(|op| {
                metrics.get(&format!(
                    "vecfs_fuse_op_duration_seconds_count{{op=\"{op}\"}}"
                ))
            })
            .sum::<u64>()
    };
    // Past the short TTL: only the long one can keep them now.
    std::thread::sleep(vecfs::vfs::SHORT_TTL + Duration::from_millis(500));
    let before = asked();
    for _ in 0..10 {
        assert_eq!(fs::metadata(b.p("d/f")).unwrap().len(), 1);
    }
    assert_eq!(asked(), before, "stats reached the daemon");
    // and a change still gets through at once
    fs::write(a.p("d/f"), b"12345").unwrap();
    wait_for("new size on B", SOON, || {
        fs::metadata(b.p("d/f")).map(|m| m.len()).ok() == Some(5)
    });
    a.unmount();
    b.unmount();
}

/// Changes made while a node's event channel was cut reach it once the
/// channel is back: the kernel drops every name and attribute it was told,
/// instead of serving them for the rest of their (long) TTL.
#[test]
fn changes_missed_while_the_event_channel_was_down_are_not_served() {
    let v = Volume::new(Storage::File);
    let a = v.mount_with(&LONG_TTLS);
    let b = v.mount_with(&LONG_TTLS);
    fs::create_dir(a.p("d")).unwrap();
    fs::write(a.p("d/f"), b"1").unwrap();
    fs::write(a.p("d/g"), b"g").unwrap();
    wait_for("B sees the files", SOON, || {
        b.p("d/g").exists() && fs::metadata(b.p("d/f")).map(|m| m.len()).ok() == Some(1)
    });
    // Every subscriber drops; nodes resubscribe a second later.
    v.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    fs::write(a.p("d/f"), b"12345").unwrap();
    fs::remove_file(a.p("d/g")).unwrap();
    fs::set_permissions(a.p("d"), fs::Permissions::from_mode(0o700)).unwrap();
    wait_for("B drops what it was told before the cut", SOON, || {
        fs::metadata(b.p("d/f")).map(|m| m.len()).ok() == Some(5)
            && !b.p("d/g").exists()
            && fs::metadata(b.p("d")).map(|m| m.mode() & 0o777).ok() == Some(0o700)
    });
    a.unmount();
    b.unmount();
}

#[test]
fn metadata_cache_follows_other_nodes_changes() {
    // This node's metadata cache would keep answering for 60 s if change
    // events did not clear it.
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    let b = v.mount_with(&["--meta-cache", "60"]);
    fs::create_dir(a.p("d")).unwrap();
    fs::write(a.p("d/f"), b"1").unwrap();
    let before = fs::metadata(b.p("d/f")).unwrap();
    assert_eq!(before.len(), 1);
    fs::write(a.p("d/f"), b"12345").unwrap();
    wait_for("new size on B", SOON, || {
        fs::metadata(b.p("d/f")).map(|m| m.len()).ok() == Some(5)
    });
    fs::rename(a.p("d/f"), a.p("d/g")).unwrap();
    wait_for("rename on B", SOON, || {
        !b.p("d/f").exists() && fs::metadata(b.p("d/g")).map(|m| m.len()).ok() == Some(5)
    });
    fs::write(a.p("d/f"), b"new").unwrap();
    wait_for("re-created name on B", SOON, || {
        fs::metadata(b.p("d/f")).map(|m| (m.len(), m.ino())).ok()
            == Some((3, fs::metadata(a.p("d/f")).unwrap().ino()))
    });
    fs::remove_file(a.p("d/g")).unwrap();
    wait_for("unlink on B", SOON, || !b.p("d/g").exists());
    // and B lists what A lists
    let names = |m: &common::Mount| {
        let mut n: Vec<_> = fs::read_dir(m.p("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b));
    a.unmount();
    b.unmount();
}

/// Milvus replaces `bloom_filter` by renaming a new file over it. A reader
/// node whose kernel still holds the old name (its change event not yet
/// handled; here held for good: no events, 60 s entry cache) must open the
/// new file, not fail with ENOENT or read the replaced one, also while
/// another node keeps the replaced file open.
#[test]
fn an_open_through_a_name_replaced_on_another_node_gets_the_new_file() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    // Within the attribute TTL the kernel opens at once; past it (the
    // default 1 s), it asks for the old inode's attributes first.
    for (attr_cache, wait) in [("60", Duration::ZERO), ("1", Duration::from_millis(1200))] {
        let b = v.mount_with(&[
            "--no-events",
            "--entry-cache",
            "60",
            "--attr-cache",
            attr_cache,
        ]);
        replaced_names_on(&a, &b, wait);
    }
}

fn replaced_names_on(a: &common::Mount, b: &common::Mount, wait: Duration) {
    let replace = |body: &[u8]| {
        fs::write(a.p("bloom_filter.tmp"), body).unwrap();
        fs::rename(a.p("bloom_filter.tmp"), a.p("bloom_filter")).unwrap();
        // Lets B's attribute cache of the old file expire (a TTL, not a
        // condition that could be polled).
        std::thread::sleep(wait);
    };
    replace(b"version 1");
    assert_eq!(fs::read(b.p("bloom_filter")).unwrap(), b"version 1");
    replace(b"version 2, longer");
    assert_eq!(fs::read(b.p("bloom_filter")).unwrap(), b"version 2, longer");

    let held = File::open(a.p("bloom_filter")).unwrap();
    replace(b"v3");
    assert_eq!(
        fs::read(b.p("bloom_filter")).unwrap(),
        b"v3",
        "B opened the replaced file another node holds open"
    );
    drop(held);

    // B itself holds the old file open: a new open by name still gets the new one.
    let mine = File::open(b.p("bloom_filter")).unwrap();
    replace(b"v4 from A");
    assert_eq!(
        fs::read(b.p("bloom_filter")).unwrap(),
        b"v4 from A",
        "B reopened the replaced file it holds open"
    );
    drop(mine);

    fs::remove_file(a.p("bloom_filter")).unwrap();
    let err = fs::read(b.p("bloom_filter")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
}
