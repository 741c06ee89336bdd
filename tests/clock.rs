//! Clock safety (issue 13): a node whose clock is 10 minutes off must not
//! move the volume's timeline. Deferred-deletion due times, file times and
//! the trash's hours come from the Redis server's clock, so a slow node
//! cannot make another node delete objects before their grace period ends
//! (readers elsewhere may still hold the old slice lists), and a fast node
//! cannot hold deletions back for its offset. The skewed node runs under
//! libfaketime (Debian's `faketime`), the way a badly synced host would.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{pattern, wait_for, Backend, Mount, Storage, Volume};

const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Mounts `v` on a node whose wall clock is `offset` seconds off (the
/// monotonic clock, which timers use, is left alone).
fn skewed_mount(v: &Volume, offset: i64, extra: &[&str]) -> Mount {
    assert!(
        Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: install Debian's faketime (scripts/deps.sh --test does)"
    );
    let preload = format!("LD_PRELOAD={FAKETIME_LIB}");
    let fake = format!("FAKETIME={offset:+}");
    let wrapper = [
        "env",
        preload.as_str(),
        fake.as_str(),
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
        "NO_FAKE_STAT=1",
    ];
    v.mount_via(&wrapper, &v.url, extra)
}

/// The Redis server's clock, in seconds.
fn redis_time(v: &Volume) -> i64 {
    let out = v.redis.cli(&["TIME"]);
    out.lines().next().unwrap().trim().parse().unwrap()
}

fn objects(v: &Volume) -> usize {
    let Backend::File(d) = &v.backend else {
        panic!("file volumes only")
    };
    fn count(p: &Path) -> usize {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                count(&e.path())
            } else {
                1
            }
        })
        .sum()
    }
    count(&d.path().join("objects"))
}

fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap();
}

#[test]
fn a_slow_node_neither_dates_files_in_the_past_nor_makes_deletions_due_early() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0", "--inline-size", "0"]);
    // The deleters wait 5 minutes: well inside the 10-minute skew.
    let slow = skewed_mount(&v, -600, &["--delete-delay", "300"]);
    let normal = v.mount_with(&["--delete-delay", "300"]);
    write(&slow.p("f"), &pattern(3 << 20, 1));
    let ino = std::fs::metadata(slow.p("f")).unwrap().ino();
    let now = redis_time(&v);
    let mtime = std::fs::metadata(normal.p("f")).unwrap().mtime();
    assert!(
        (mtime - now).abs() < 60,
        "a file written on the slow node is dated {} s from the server's clock",
        mtime - now
    );
    let stored = objects(&v);
    assert!(stored > 0, "no objects written");
    std::fs::remove_file(slow.p("f")).unwrap();
    let member = format!("{ino}:{}", 3 << 20);
    let mut score = String::new();
    wait_for("the deletion to be queued", Duration::from_secs(10), || {
        score = v
            .redis
            .cli(&["-n", "1", "ZSCORE", "{testvol}delfiles", &member]);
        !score.trim().is_empty()
    });
    let due: f64 = score.trim().parse().unwrap();
    let now = redis_time(&v);
    assert!(
        (due as i64 - now).abs() < 60,
        "the slow node queued the deletion {} s from the server's clock: \
         the other node's deleter would take it before its grace period",
        due as i64 - now
    );
    // Neither deleter takes it now (both wait 300 s from the server's clock).
    assert_eq!(
        objects(&v),
        stored,
        "objects deleted before their grace period"
    );
    slow.unmount();
    normal.unmount();
}

#[test]
fn a_fast_node_does_not_hold_deletions_back() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0", "--inline-size", "0"]);
    // Only the node with the right clock is quick to delete: the fast
    // node's own deleter (an hour of grace) must not be what passes this.
    let fast = skewed_mount(&v, 600, &["--delete-delay", "3600"]);
    let normal = v.mount_with(&["--delete-delay", "1"]);
    write(&fast.p("g"), &pattern(2 << 20, 2));
    assert!(objects(&v) > 0, "no objects written");
    std::fs::remove_file(fast.p("g")).unwrap();
    // Due a second after the delete by the server's clock: a deleter takes
    // it within a few idle rounds (not 10 minutes later).
    wait_for(
        "the deleted file's objects to go",
        Duration::from_secs(60),
        || objects(&v) == 0,
    );
    fast.unmount();
    normal.unmount();
}
