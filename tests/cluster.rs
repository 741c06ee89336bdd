//! Redis Cluster (issue 13): a volume whose META-URL lists the nodes of a
//! cluster (`redis+cluster://H1:P1,H2:P2,H3:P3/`). Real servers on
//! loopback: three masters made a cluster by `redis-cli --cluster create`.
//! Each URL lists first a node that does NOT own the volume's slot, so
//! every keyed request has to follow the slot map (MOVED), keyless ones
//! (SCAN, WAIT, TIME) have to be routed to the slot owner by vecfs, and
//! the mounts' change events come from a node other than the one their
//! scripts publish on.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tls::{make_ca, make_leaf};
use common::*;

const SOON: Duration = Duration::from_secs(5);

/// A cluster URL for volume `name` whose first node does not own its slot.
fn url_for(c: &Cluster, name: &str) -> String {
    let owner = c.owner(c.keyslot(&format!("{{{name}}}")));
    c.url_from((owner + 1) % c.nodes.len())
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn setxattr(p: &Path, name: &str, value: &[u8]) -> i32 {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    // SAFETY: valid C strings and a buffer of the given length.
    unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    }
}

fn getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).unwrap());
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (rc >= 0).then(|| {
        buf.truncate(rc as usize);
        buf
    })
}

fn flock(f: &File, op: i32) -> i32 {
    // SAFETY: flock on an fd the File owns.
    match unsafe { libc::flock(f.as_raw_fd(), op) } {
        0 => 0,
        _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
    }
}

/// fcntl F_SETLK of a write (or unlock) lock on bytes [start, start+len).
fn setlk(f: &File, typ: i32, start: i64, len: i64) -> i32 {
    // SAFETY: an all-zero flock is valid; filled in below.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: F_SETLK with a valid flock on an fd the File owns.
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) } {
        0 => 0,
        _ => std::io::Error::last_os_error().raw_os_error().unwrap_or(-1),
    }
}

/// The pid F_GETLK reports as holding a conflicting lock (0: none).
fn getlk_pid(f: &File, start: i64, len: i64) -> i32 {
    // SAFETY: as in setlk.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: F_GETLK with a valid flock on an fd the File owns.
    assert_eq!(
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) },
        0
    );
    if fl.l_type == libc::F_UNLCK as i16 {
        0
    } else {
        fl.l_pid
    }
}

/// Every key of volume `name` is in one slot, on the node that owns it.
fn assert_one_slot(c: &Cluster, name: &str) -> usize {
    let keys = c.keys(&format!("{{{name}}}*"));
    assert!(keys.len() > 3, "volume {name} has keys: {keys:?}");
    let owner = c.owner(c.keyslot(&format!("{{{name}}}")));
    let elsewhere: Vec<_> = keys.iter().filter(|(i, _)| *i != owner).collect();
    assert!(
        elsewhere.is_empty(),
        "keys off the slot owner: {elsewhere:?}"
    );
    keys.len()
}

#[test]
fn posix_operations_on_a_cluster_volume() {
    let c = Cluster::start(3);
    let url = url_for(&c, "clustervol");
    let v = ClusterVolume::format(&url, "clustervol", &["--block-size", "64K"]);
    let m = v.mount();

    // create / write / read, a file of many blocks and a small (inline) one
    let big = pattern(3 << 20, 1);
    write_closed(&m.p("big"), &big);
    assert_eq!(fs::read(m.p("big")).unwrap(), big);
    fs::write(m.p("small"), b"hello cluster").unwrap();
    assert_eq!(fs::read(m.p("small")).unwrap(), b"hello cluster");
    // overwrite in the middle, then append
    {
        let mut f = OpenOptions::new().write(true).open(m.p("big")).unwrap();
        f.seek(SeekFrom::Start(100_000)).unwrap();
        f.write_all(&[7u8; 5000]).unwrap();
        close(f).unwrap();
    }
    let mut want = big.clone();
    want[100_000..105_000].fill(7);
    assert_eq!(fs::read(m.p("big")).unwrap(), want);

    // truncate down and up
    let f = OpenOptions::new().write(true).open(m.p("big")).unwrap();
    f.set_len(70_000).unwrap();
    f.set_len(80_000).unwrap();
    close(f).unwrap();
    let mut got = Vec::new();
    File::open(m.p("big"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len(), 80_000);
    assert_eq!(&got[..70_000], &want[..70_000]);
    assert!(got[70_000..].iter().all(|b| *b == 0));

    // mkdir / rename / unlink / rmdir
    fs::create_dir(m.p("d")).unwrap();
    fs::rename(m.p("small"), m.p("d/moved")).unwrap();
    assert!(!m.p("small").exists());
    assert_eq!(fs::read(m.p("d/moved")).unwrap(), b"hello cluster");
    assert_eq!(
        fs::remove_dir(m.p("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(m.p("d/moved")).unwrap();
    fs::remove_dir(m.p("d")).unwrap();
    assert!(!m.p("d").exists());

    // symlink / hard link
    std::os::unix::fs::symlink("big", m.p("sym")).unwrap();
    assert_eq!(fs::read_link(m.p("sym")).unwrap(), Path::new("big"));
    assert_eq!(fs::read(m.p("sym")).unwrap().len(), 80_000);
    fs::hard_link(m.p("big"), m.p("hard")).unwrap();
    assert_eq!(fs::metadata(m.p("big")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(m.p("hard")).unwrap().ino(),
        fs::metadata(m.p("big")).unwrap().ino()
    );
    fs::remove_file(m.p("big")).unwrap();
    assert_eq!(fs::read(m.p("hard")).unwrap().len(), 80_000);

    // xattrs
    assert_eq!(setxattr(&m.p("hard"), "user.k", b"v1"), 0);
    assert_eq!(
        getxattr(&m.p("hard"), "user.k").as_deref(),
        Some(&b"v1"[..])
    );
    assert_eq!(getxattr(&m.p("hard"), "user.none"), None);

    // a directory of a few hundred entries, listed whole
    fs::create_dir(m.p("many")).unwrap();
    for i in 0..400 {
        close(File::create(m.p(&format!("many/f{i:03}"))).unwrap()).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(m.p("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: Vec<String> = (0..400).map(|i| format!("f{i:03}")).collect();
    assert_eq!(names, want);

    // flock and fcntl locks (conflicts across nodes: two_mounts_...)
    let f = File::open(m.p("hard")).unwrap();
    assert_eq!(flock(&f, libc::LOCK_EX | libc::LOCK_NB), 0);
    assert_eq!(flock(&f, libc::LOCK_UN), 0);
    let w = OpenOptions::new().write(true).open(m.p("hard")).unwrap();
    assert_eq!(setlk(&w, libc::F_WRLCK, 0, 100), 0);
    assert_eq!(setlk(&w, libc::F_UNLCK, 0, 100), 0);
    drop((f, w));

    // Every key of the volume sits in its slot, on its owner.
    let n = assert_one_slot(&c, "clustervol");
    println!(
        "volume keys: {n}, all on node {}",
        c.owner(c.keyslot("{clustervol}"))
    );

    // A remount reads everything back.
    m.unmount();
    let m = v.mount();
    assert_eq!(fs::read(m.p("hard")).unwrap().len(), 80_000);
    assert_eq!(fs::read_dir(m.p("many")).unwrap().count(), 400);
    m.unmount();
}

#[test]
fn two_mounts_of_a_cluster_volume_see_each_other() {
    let c = Cluster::start(3);
    let url = url_for(&c, "sharedvol");
    let v = ClusterVolume::format(&url, "sharedvol", &[]);
    let a = v.mount();
    // B caches for 30 s: it sees A's namespace changes within SOON only
    // through the change events, published on the slot owner and received
    // on the first listed node (not the owner).
    let b = v.mount_with(&["--attr-cache", "30", "--entry-cache", "30"]);

    let body = pattern(5 << 20, 9);
    write_closed(&a.p("seg"), &body);
    assert_eq!(fs::read(b.p("seg")).unwrap(), body, "close-to-open on B");

    // B has looked up `seg`; a rename on A must drop B's cached entry.
    fs::rename(a.p("seg"), a.p("seg2")).unwrap();
    wait_for("rename seen on B", SOON, || {
        !b.p("seg").exists() && b.p("seg2").exists()
    });
    assert_eq!(fs::read(b.p("seg2")).unwrap(), body);
    fs::create_dir(a.p("dir")).unwrap();
    wait_for("mkdir seen on B", SOON, || b.p("dir").is_dir());
    fs::write(b.p("dir/from-b"), b"b wrote this").unwrap();
    assert_eq!(fs::read(a.p("dir/from-b")).unwrap(), b"b wrote this");

    // Locks conflict across the two nodes.
    let fa = OpenOptions::new().write(true).open(a.p("seg2")).unwrap();
    let fb = OpenOptions::new().write(true).open(b.p("seg2")).unwrap();
    assert_eq!(flock(&fa, libc::LOCK_EX | libc::LOCK_NB), 0);
    assert_eq!(flock(&fb, libc::LOCK_EX | libc::LOCK_NB), libc::EWOULDBLOCK);
    assert_eq!(flock(&fa, libc::LOCK_UN), 0);
    assert_eq!(flock(&fb, libc::LOCK_EX | libc::LOCK_NB), 0);
    assert_eq!(flock(&fb, libc::LOCK_UN), 0);
    assert_eq!(setlk(&fa, libc::F_WRLCK, 0, 10), 0);
    assert_eq!(setlk(&fb, libc::F_WRLCK, 5, 10), libc::EAGAIN);
    assert_ne!(getlk_pid(&fb, 5, 10), 0, "B sees A's lock");
    assert_eq!(setlk(&fb, libc::F_WRLCK, 10, 10), 0, "no overlap");
    assert_eq!(setlk(&fa, libc::F_UNLCK, 0, 10), 0);
    assert_eq!(setlk(&fb, libc::F_WRLCK, 0, 10), 0);
    drop((fa, fb));

    // An unlink on B is seen on A.
    fs::remove_file(b.p("dir/from-b")).unwrap();
    wait_for("unlink seen on A", SOON, || !a.p("dir/from-b").exists());
    b.unmount();
    a.unmount();
}

#[test]
fn two_volumes_on_one_cluster_stay_apart() {
    let c = Cluster::start(3);
    let (s1, s2) = (c.keyslot("{vol-one}"), c.keyslot("{vol-two}"));
    assert_ne!(s1, s2, "the test's two names must land on different slots");
    let v1 = ClusterVolume::format(&url_for(&c, "vol-one"), "vol-one", &[]);
    let v2 = ClusterVolume::format(&url_for(&c, "vol-two"), "vol-two", &["--trash-days", "0"]);
    let m1 = v1.mount();
    let m2 = v2.mount();
    fs::write(m1.p("same-name"), b"one").unwrap();
    fs::write(m2.p("same-name"), b"two, longer").unwrap();
    fs::create_dir(m1.p("only-in-one")).unwrap();
    assert_eq!(fs::read(m1.p("same-name")).unwrap(), b"one");
    assert_eq!(fs::read(m2.p("same-name")).unwrap(), b"two, longer");
    assert!(!m2.p("only-in-one").exists());
    fs::remove_file(m2.p("same-name")).unwrap();
    assert_eq!(fs::read(m1.p("same-name")).unwrap(), b"one");
    let names = |m: &Mount| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&m.path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&m1), ["only-in-one", "same-name"]);
    assert!(names(&m2).is_empty(), "{:?}", names(&m2));
    // Each volume's keys in its own slot.
    assert_one_slot(&c, "vol-one");
    assert_one_slot(&c, "vol-two");
    // Both are listed; the status of each shows its own settings.
    let o = vecfs(&["status", &v2.url, "--name", "vol-two"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("vol-two") && !out.contains("vol-one"), "{out}");
    m1.unmount();
    m2.unmount();
}

#[test]
fn gc_fsck_dump_and_destroy_on_a_cluster_volume() {
    let c = Cluster::start(3);
    let url = url_for(&c, "toolvol");
    let v = ClusterVolume::format(
        &url,
        "toolvol",
        &[
            "--block-size",
            "64K",
            "--inline-size",
            "0",
            "--trash-days",
            "0",
        ],
    );
    let m = v.mount();
    fs::create_dir(m.p("d")).unwrap();
    for i in 0..20 {
        write_closed(
            &m.p(&format!("d/f{i}")),
            &pattern(100_000 + i * 1000, i as u64),
        );
    }
    m.unmount();

    // fsck: clean.
    let o = vecfs(&["fsck", &url], &[]);
    assert!(
        o.status.success(),
        "fsck: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );

    // gc: finds the objects SCAN-found chunk lists name, and one stray.
    let stray = v.bucket().join("toolvol/chunks/3f/0/990001_0_1000");
    fs::create_dir_all(stray.parent().unwrap()).unwrap();
    fs::write(&stray, b"stray").unwrap();
    let o = vecfs(&["gc", &url, "--min-age", "0", "--json"], &[]);
    assert!(o.status.success(), "gc: {}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["leaked"]["objects"], 1, "{r}");
    assert_eq!(r["referenced"]["objects"], 40, "{r}");
    let o = vecfs(&["gc", &url, "--min-age", "0", "--delete", "--json"], &[]);
    assert!(o.status.success(), "gc --delete: {}", stderr(&o));
    assert!(!stray.exists());

    // fsck finds a dangling entry (an inode key removed by hand) and repairs it.
    let m = v.mount();
    let ino = fs::metadata(m.p("d/f3")).unwrap().ino();
    m.unmount();
    let owner = c.owner(c.keyslot("{toolvol}"));
    let gone = c.nodes[owner].cli(&["del", &format!("{{toolvol}}i{ino}")]);
    assert_eq!(gone.trim(), "1");
    let o = vecfs(&["fsck", &url], &[]);
    assert!(!o.status.success(), "fsck must see the damage");
    let o = vecfs(&["fsck", &url, "--repair"], &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("f3"), "{out}{}", stderr(&o));
    let o = vecfs(&["fsck", &url], &[]);
    assert!(
        o.status.success(),
        "fsck after repair: {}",
        String::from_utf8_lossy(&o.stdout)
    );

    // dump, and load into a plain Redis: the same tree.
    let dump = tempfile::NamedTempFile::new().unwrap();
    let o = vecfs(&["dump", &url, dump.path().to_str().unwrap()], &[]);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    let text = fs::read_to_string(dump.path()).unwrap();
    assert!(text.lines().count() > 20, "{text}");
    let plain = Redis::start();
    let o = vecfs(&["load", &plain.url(1), dump.path().to_str().unwrap()], &[]);
    assert!(o.status.success(), "load: {}", stderr(&o));
    let loaded = mount_at(&[], &plain.url(1), &[], &[]);
    let mut names: Vec<String> = fs::read_dir(loaded.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 19, "{names:?}");
    assert_eq!(fs::read(loaded.p("d/f7")).unwrap(), pattern(107_000, 7));
    loaded.unmount();

    // destroy: every key of the volume goes, from the node that held them.
    let o = vecfs(&["status", &url], &[]);
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let uuid = status["setting"]["uuid"].as_str().unwrap_or("").to_string();
    assert!(
        !uuid.is_empty(),
        "status: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = vecfs(&["destroy", &url, &uuid], &[]);
    assert!(o.status.success(), "destroy: {}", stderr(&o));
    assert!(
        c.keys("{toolvol}*").is_empty(),
        "{:?}",
        c.keys("{toolvol}*")
    );
}

/// WAIT goes to the slot owner: with a replica of that master,
/// `--meta-wait-replicas 1` works (WAIT sent to every master would count
/// 0 replicas on the others and time out).
#[test]
fn meta_wait_replicas_on_a_cluster() {
    let c = Cluster::start(3);
    let owner = c.owner(c.keyslot("{waitvol}"));
    let replica = Cluster::node(&[]);
    let id = c.nodes[owner].cli(&["cluster", "myid"]).trim().to_string();
    let o = std::process::Command::new("redis-cli")
        .args(["--cluster", "add-node"])
        .arg(format!("127.0.0.1:{}", replica.port))
        .arg(format!("127.0.0.1:{}", c.nodes[owner].port))
        .args(["--cluster-slave", "--cluster-master-id", &id])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "add-node: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    wait_for("the replica is in sync", Duration::from_secs(30), || {
        c.nodes[owner]
            .cli(&["info", "replication"])
            .contains("connected_slaves:1")
            && replica
                .cli(&["info", "replication"])
                .contains("master_link_status:up")
    });
    c.wait_ok();
    let url = url_for(&c, "waitvol");
    let v = ClusterVolume::format(&url, "waitvol", &[]);
    let m = v.mount_with(&["--meta-wait-replicas", "1", "--meta-timeout", "5"]);
    for i in 0..20 {
        write_closed(&m.p(&format!("f{i}")), &pattern(1000, i));
    }
    fs::create_dir(m.p("d")).unwrap();
    fs::rename(m.p("f0"), m.p("d/f0")).unwrap();
    assert_eq!(fs::read(m.p("d/f0")).unwrap(), pattern(1000, 0));
    // The replica holds the changes.
    let keys = replica.cli(&["dbsize"]);
    assert!(
        keys.trim().parse::<u64>().unwrap_or(0) > 20,
        "replica keys: {keys}"
    );
    m.unmount();
}

/// Bad cluster URLs fail at once with one line that says what is wrong,
/// never a panic, never the password.
#[test]
fn bad_cluster_urls_are_clear_errors() {
    let bucket = tempfile::tempdir().unwrap();
    let b = bucket.path().to_str().unwrap();
    let format = |url: &str| {
        let t = std::time::Instant::now();
        let o = vecfs(
            &["format", url, "badvol", "--storage", "file", "--bucket", b],
            &[],
        );
        let e = stderr(&o);
        assert!(!o.status.success(), "{url}: {e}");
        assert!(!e.contains("panicked"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{url}: took {:?}",
            t.elapsed()
        );
        e
    };
    // No node answers.
    let (p1, p2) = (free_port(), free_port());
    let e = format(&format!(
        "redis+cluster://:s3cret@127.0.0.1:{p1},127.0.0.1:{p2}/"
    ));
    assert!(
        e.contains("Redis Cluster") && e.contains(&p1.to_string()),
        "{e}"
    );
    // A database other than 0.
    let e = format(&format!("redis+cluster://:s3cret@127.0.0.1:{p1}/2"));
    assert!(e.contains("database 0"), "{e}");
    // A server that is no cluster node.
    let plain = Redis::start();
    let e = format(&format!(
        "redis+cluster://:s3cret@127.0.0.1:{}/",
        plain.port
    ));
    assert!(e.contains("Redis Cluster"), "{e}");
    // A wrong password.
    let locked = Redis::start_with(&["--requirepass", "right"]);
    let e = format(&format!(
        "redis+cluster://:s3cret@127.0.0.1:{}/",
        locked.port
    ));
    assert!(e.contains("password") || e.contains("credentials"), "{e}");
}

/// Kernel caches (and so a second mount's view) longer than any wait here:
/// a change shows on another mount in time only through its change events.
const LONG_TTLS: [&str; 6] = [
    "--attr-cache",
    "60",
    "--entry-cache",
    "60",
    "--dir-entry-cache",
    "60",
];

/// `redis+cluster://` naming `nodes` (indices into `c.nodes`) in that order.
fn url_of(c: &Cluster, nodes: &[usize]) -> String {
    let hosts: Vec<String> = nodes
        .iter()
        .map(|i| format!("127.0.0.1:{}", c.nodes[*i].port))
        .collect();
    format!("redis+cluster://{}/", hosts.join(","))
}

/// Pub/sub clients (subscribed connections) of one node; 0 if it is down.
fn pubsub_clients(r: &Redis) -> usize {
    r.cli(&["client", "list", "type", "pubsub"])
        .lines()
        .filter(|l| l.contains("sub="))
        .count()
}

/// One close() the writer saw: the file, and whether it returned 0.
struct Done {
    i: u64,
    ok: bool,
    at: Instant,
}

fn content(i: u64) -> Vec<u8> {
    pattern(500 + (i as usize % 5) * 2000, i)
}

/// The master that owns the volume's slot is killed (SIGKILL) under a
/// writer loop; its replica is promoted by the cluster and the same
/// mount goes on writing there, with no remount. With
/// `--meta-wait-replicas 1` every close() that returned 0 is on the
/// replica, so no such file is lost. A second mount whose pub/sub
/// connection was on the killed node (its URL lists that node first)
/// reconnects to another listed node and still sees changes.
#[test]
fn failover_of_the_volume_master_under_a_writer() {
    let c = Cluster::start_with(3, 1, &["--cluster-node-timeout", "2000"]);
    let name = "failvol";
    let slot = c.keyslot("{failvol}");
    let owner = c.owner(slot);
    let replicas = c.replicas_of(owner);
    assert_eq!(replicas.len(), 1, "{}", c.view());
    let replica = replicas[0];
    let masters = c.masters();
    assert_eq!(masters.len(), 3, "{}", c.view());
    // The URLs list the masters only: the promoted replica is known to the
    // client through the slot map alone. A's starts with another master,
    // B's with the owner, so B's change events come from the node killed.
    let others: Vec<usize> = masters.iter().copied().filter(|m| *m != owner).collect();
    let url_a = url_of(&c, &[others[0], owner, others[1]]);
    let url_b = url_of(&c, &[owner, others[0], others[1]]);
    let v = ClusterVolume::format(&url_a, name, &[]);
    let a = v.mount_with(&[
        "--meta-wait-replicas",
        "1",
        "--meta-timeout",
        "40",
        "--heartbeat",
        "2",
    ]);
    let mut b_args = vec!["--name", name, "--heartbeat", "2"];
    b_args.extend_from_slice(&LONG_TTLS);
    let b = mount_at(&[], &url_b, &[], &b_args);
    fs::create_dir(a.p("w")).unwrap();
    fs::write(a.p("probe"), b"before").unwrap();
    assert_eq!(fs::metadata(b.p("probe")).unwrap().len(), 6);
    wait_for("B subscribed on the owner", SOON, || {
        pubsub_clients(&c.nodes[owner]) >= 1
    });

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Done>::new()));
    let writer = {
        let (stop, log, dir) = (stop.clone(), log.clone(), a.p("w"));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ok = File::create(dir.join(format!("f{i}")))
                    .and_then(|mut f| {
                        f.write_all(&content(i))?;
                        close(f)
                    })
                    .is_ok();
                log.lock().unwrap().push(Done {
                    i,
                    ok,
                    at: Instant::now(),
                });
            }
        })
    };
    let ok_after = |t: Instant| -> Vec<u64> {
        log.lock()
            .unwrap()
            .iter()
            .filter(|d| d.ok && d.at > t)
            .map(|d| d.i)
            .collect()
    };
    let t0 = Instant::now();
    wait_for("writes before the kill", Duration::from_secs(30), || {
        ok_after(t0).len() >= 100
    });

    let before_kill = Instant::now();
    c.nodes[owner].kill9();
    let killed = Instant::now();
    wait_for(
        "the cluster promotes the replica",
        Duration::from_secs(30),
        || c.nodes[replica].cli(&["role"]).starts_with("master") && c.owner(slot) == replica,
    );
    let promoted = killed.elapsed();
    // The old master comes back (empty: no persistence, but its
    // nodes.conf) and the cluster makes it a replica of the new one: a
    // replica for WAIT again.
    c.nodes[owner].restart();
    wait_for(
        "the old master rejoins as a replica",
        Duration::from_secs(30),
        || {
            c.nodes[owner].cli(&["role"]).starts_with("slave")
                && c.nodes[replica]
                    .cli(&["info", "replication"])
                    .contains("connected_slaves:1")
        },
    );
    let left = Duration::from_secs(30).saturating_sub(killed.elapsed());
    let resumed = poll_until(left, || ok_after(killed).len() >= 50);
    let resumed_after = killed.elapsed();
    if !resumed {
        stop.store(true, Ordering::Relaxed);
    }
    assert!(
        resumed,
        "writes did not resume within 30 s of the kill ({} after it); log:\n{}",
        ok_after(killed).len(),
        a.log_text()
    );
    // Files made after the failover read back, on A and on B.
    let fresh = ok_after(killed);
    for i in fresh.iter().take(20) {
        let p = format!("w/f{i}");
        assert_eq!(fs::read(a.p(&p)).unwrap(), content(*i), "{p} on A");
        assert_eq!(fs::read(b.p(&p)).unwrap(), content(*i), "{p} on B");
    }

    // B's subscription was on the killed node: it is now on another listed
    // node (A's too), and a change A makes reaches B's 60 s caches.
    wait_for("both mounts subscribed again", SOON, || {
        others
            .iter()
            .map(|i| pubsub_clients(&c.nodes[*i]))
            .sum::<usize>()
            >= 2
    });
    // Changes made before B resubscribed may not have been announced:
    // change the probe until one change shows on B within a second.
    let mut len = 6;
    let followed = poll_until(Duration::from_secs(15), || {
        len += 1;
        fs::write(a.p("probe"), vec![b'x'; len]).unwrap();
        poll_until(Duration::from_secs(1), || {
            fs::metadata(b.p("probe")).map(|m| m.len()).ok() == Some(len as u64)
        })
    });
    assert!(
        followed,
        "B's change events did not come back after the failover; its log:\n{}",
        b.log_text()
    );
    fs::write(a.p("after-failover"), b"new").unwrap();
    wait_for("a new file on A shows on B", SOON, || {
        fs::read(b.p("after-failover")).ok().as_deref() == Some(&b"new"[..])
    });

    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let log = std::mem::take(&mut *log.lock().unwrap());
    let failed = log.iter().filter(|d| !d.ok).count();
    let a_log = a.log_text();
    b.unmount();
    a.unmount();

    // A fresh mount on the promoted master: every acknowledged file.
    let m = v.mount();
    let lost: Vec<u64> = log
        .iter()
        .filter(|d| d.ok)
        .filter(|d| fs::read(m.p(&format!("w/f{}", d.i))).ok() != Some(content(d.i)))
        .map(|d| d.i)
        .collect();
    let acked_before = log.iter().filter(|d| d.ok && d.at < before_kill).count();
    println!(
        "promoted {:.1}s and writes resumed {:.1}s after the kill; {acked_before} closes \
         returned 0 before it, {} in all, {failed} failed; {} lost",
        promoted.as_secs_f64(),
        resumed_after.as_secs_f64(),
        log.iter().filter(|d| d.ok).count(),
        lost.len()
    );
    assert!(acked_before >= 100);
    assert!(
        lost.is_empty(),
        "files whose close() returned 0 were lost: {:?}",
        &lost[..lost.len().min(20)]
    );
    // The README's promise: a failover is retried like an outage, up to
    // --meta-timeout (40 s here), so no request fails meanwhile.
    let failures: Vec<&str> = a_log
        .lines()
        .filter(|l| l.contains("metadata failure"))
        .collect();
    assert!(
        failed == 0 && failures.is_empty(),
        "{failed} closes failed during the failover; A's failed requests:\n{}",
        failures.join("\n")
    );
    m.unmount();
}

/// A node of a TLS-only cluster: no plaintext port (`port 0`); clients,
/// the cluster bus and replication all speak TLS, and clients must show a
/// certificate of the test's CA (`certs` holds `ca`, `server`, `client`).
struct TlsNode {
    child: Child,
    port: u16,
    certs: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-cli over TLS with the test's CA and client certificate.
fn tls_cli(certs: &Path) -> Command {
    let mut c = Command::new("redis-cli");
    c.arg("--tls")
        .arg("--cacert")
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join("client.pem"))
        .arg("--key")
        .arg(certs.join("client.key"));
    c
}

impl TlsNode {
    fn start(certs: &Path) -> TlsNode {
        let dir = tempfile::tempdir().unwrap();
        let (port, bus) = (free_port(), free_port());
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(Cluster::NODE_ARGS)
            .args(["--cluster-port", &bus.to_string()])
            .arg("--tls-cert-file")
            .arg(certs.join("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.join("ca.pem"))
            .args(["--tls-auth-clients", "yes"])
            .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let n = TlsNode {
            child,
            port,
            certs: certs.to_path_buf(),
            _dir: dir,
        };
        wait_for("TLS redis-server", Duration::from_secs(20), || {
            n.cli(&["ping"]).contains("PONG")
        });
        n
    }

    fn cli(&self, args: &[&str]) -> String {
        let o = tls_cli(&self.certs)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// A cluster reachable over TLS only (`rediss+cluster://` with the test's
/// CA in `tls_ca`, a client certificate in `tls_cert`/`tls_key`, as for
/// `rediss://`): format, two mounts, data and change events; a CA that did
/// not sign the nodes' certificate is a clear one-line error at format and
/// at mount, at once.
#[test]
fn tls_only_cluster() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_ca(d, "ca");
    make_leaf(d, "ca", "server");
    make_leaf(d, "ca", "client");
    make_ca(d, "otherca");
    let nodes: Vec<TlsNode> = (0..3).map(|_| TlsNode::start(d)).collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let o = tls_cli(d)
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli --cluster create");
    assert!(
        o.status.success(),
        "cluster create over TLS failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    wait_for("cluster_state:ok", Duration::from_secs(30), || {
        nodes
            .iter()
            .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
    });
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let url_with = |ca: &str| {
        format!(
            "rediss+cluster://{}/?tls_ca={}&tls_cert={}&tls_key={}",
            addrs.join(","),
            p(ca),
            p("client.pem"),
            p("client.key")
        )
    };

    let v = ClusterVolume::format(&url_with("ca.pem"), "tlsvol", &[]);
    let a = v.mount();
    let b = v.mount_with(&LONG_TTLS);
    let body = pattern(300_000, 11);
    write_closed(&a.p("over-tls"), &body);
    assert_eq!(fs::read(a.p("over-tls")).unwrap(), body);
    assert_eq!(
        fs::metadata(b.p("over-tls")).unwrap().len(),
        body.len() as u64
    );
    assert_eq!(fs::read(b.p("over-tls")).unwrap(), body);
    // B caches for 60 s: a change shows there through the change events,
    // received over TLS.
    fs::write(a.p("over-tls"), b"short").unwrap();
    wait_for("B sees the new size", SOON, || {
        fs::metadata(b.p("over-tls")).map(|m| m.len()).ok() == Some(5)
    });
    // The volume's keys went to its slot's owner, over TLS.
    let slot = nodes[0].cli(&["cluster", "keyslot", "{tlsvol}"]);
    let held: u64 = nodes
        .iter()
        .map(|n| {
            n.cli(&["cluster", "countkeysinslot", slot.trim()])
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum();
    assert!(held > 3, "keys in the volume's slot: {held}");
    b.unmount();
    a.unmount();

    // A CA that did not sign the nodes' certificate.
    let wrong = url_with("otherca.pem");
    let store = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = vecfs(
        &[
            "format",
            &wrong,
            "othervol",
            "--storage",
            "file",
            "--bucket",
            store.path().to_str().unwrap(),
        ],
        &[],
    );
    let e = stderr(&o);
    assert!(!o.status.success(), "format with a wrong CA succeeded");
    assert_clear_tls_error("format", &e, t);
    // Mount, under `timeout`: should it wrongly succeed, it serves in the
    // foreground until then.
    let mp = store.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let t = Instant::now();
    let o = Command::new("timeout")
        .args(["30", VECFS, "mount", &wrong])
        .arg(&mp)
        .args(["--name", "tlsvol", "--metrics", "none", "--cache-dir"])
        .arg(store.path().join("cache"))
        .output()
        .expect("run vecfs");
    let e = stderr(&o);
    assert!(
        !o.status.success() && o.status.code() != Some(124),
        "mounted with a wrong CA: {e}"
    );
    assert_clear_tls_error("mount", &e, t);
}

/// A refusal of a wrong CA by `what`, started at `t`: one clear line, no
/// panic, within 15 s.
fn assert_clear_tls_error(what: &str, e: &str, t: Instant) {
    println!("{what} with a wrong CA: {}", e.trim());
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert!(
        e.contains("TLS") && e.contains("certificate") && e.contains("tls_ca"),
        "unclear error: {e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "{what} took {:?}",
        t.elapsed()
    );
}
