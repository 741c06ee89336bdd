//! Warm-on-commit (issue 11): a reader mount B with `--warm-on-commit`
//! loads the files writer mount A commits before anything on B opens them,
//! and pushes them into B's page cache within `--warm-page-cache`. Real
//! redis-server, moto S3 (through the HTTP fault proxy where a test needs
//! slow GETs) and two vecfs processes.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::time::Duration;

use common::httpfault::{Fault, HttpFault, Rule};
use common::{
    pattern, poll_until, resident_pages, wait_for, Metrics, Mount, Redis, Storage, Volume, S3,
};

const SOON: Duration = Duration::from_secs(30);

fn gets(m: &Metrics) -> u64 {
    m.get("vecfs_object_get_total") + m.get("vecfs_object_range_get_total")
}

/// Writes `body` to `rel` on `a` with one write and a close, as Milvus does.
fn write_file(a: &Mount, rel: &str, body: &[u8]) {
    let mut f = File::create(a.p(rel)).unwrap();
    f.write_all(body).unwrap();
    common::close(f).unwrap();
}

/// Writes a temp file and renames it over `rel`, as Milvus replaces
/// `bloom_filter` and `deleted_docs`.
fn replace_file(a: &Mount, rel: &str, body: &[u8]) {
    let tmp = format!("{rel}.tmp");
    write_file(a, &tmp, body);
    fs::rename(a.p(&tmp), a.p(rel)).unwrap();
}

/// The warm-up counters, for failure messages.
fn state(m: &Metrics) -> String {
    [
        "vecfs_object_get_total",
        "vecfs_object_range_get_total",
        "vecfs_warm_files_total",
        "vecfs_warm_skipped_total",
        "vecfs_warm_bytes_total",
        "vecfs_page_cache_pushed_bytes_total",
        "vecfs_mem_cache_hit_total",
        "vecfs_disk_cache_hit_total",
    ]
    .iter()
    .map(|n| format!("{n}={}", m.get(n)))
    .collect::<Vec<_>>()
    .join(" ")
}

/// B follows A's change events once a probe file A writes gets warmed.
fn wait_subscribed(a: &Mount, b: &Metrics, probe: &str) {
    let before = b.get("vecfs_warm_files_total");
    let deadline = std::time::Instant::now() + SOON;
    // A probe created before the reader subscribed is never warmed (its
    // create event was missed): create it afresh until one is.
    loop {
        let _ = fs::remove_file(a.p(probe));
        write_file(a, probe, b"probe");
        if poll_until(Duration::from_secs(2), || {
            b.get("vecfs_warm_files_total") > before
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reader never warmed the probe"
        );
    }
}

#[test]
fn committed_files_are_in_the_readers_cache_before_the_first_open() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    let (b, bm) = v.mount_with_metrics(&[
        "--read-only",
        "--warm-on-commit",
        "*.rv,bloom_filter,probe",
        "--warm-page-cache",
        "0",
    ]);
    fs::create_dir_all(a.p("db/tables/c1/seg1")).unwrap();
    wait_subscribed(&a, &bm, "probe");
    let fetched = bm.get("vecfs_warm_bytes_total");

    let rv = pattern((12 << 20) + 8, 1);
    let uid = pattern(1 << 20, 2);
    let bloom = pattern(512 << 10, 3);
    write_file(&a, "db/tables/c1/seg1/1.rv", &rv);
    write_file(&a, "db/tables/c1/seg1/1.uid", &uid);
    replace_file(&a, "db/tables/c1/seg1/bloom_filter", &bloom);
    // Files count once per event (a create and a commit: twice); the
    // bytes fetched name their blocks.
    wait_for("1.rv and bloom_filter warmed on B", SOON, || {
        bm.get("vecfs_warm_bytes_total") >= fetched + (rv.len() + bloom.len()) as u64
    });

    // The load itself never reaches the store.
    let before = gets(&bm);
    assert_eq!(fs::read(b.p("db/tables/c1/seg1/1.rv")).unwrap(), rv);
    assert_eq!(
        fs::read(b.p("db/tables/c1/seg1/bloom_filter")).unwrap(),
        bloom
    );
    assert_eq!(
        gets(&bm),
        before,
        "B fetched from the store while loading warmed files"
    );
    // A file no pattern names is fetched on demand (and the counter works).
    assert_eq!(fs::read(b.p("db/tables/c1/seg1/1.uid")).unwrap(), uid);
    assert!(
        gets(&bm) > before,
        "1.uid was warmed though no pattern names it"
    );
    // A read-only reader never writes to the store.
    assert_eq!(bm.get("vecfs_object_put_total"), 0);
    assert_eq!(bm.get("vecfs_object_delete_total"), 0);
}

#[test]
fn pushed_files_are_read_without_the_daemon_and_the_budget_holds() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    let (b, bm) = v.mount_with_metrics(&[
        "--read-only",
        "--warm-on-commit",
        "*.rv",
        "--warm-page-cache",
        "20",
    ]);
    fs::create_dir_all(a.p("db/seg")).unwrap();
    wait_subscribed(&a, &bm, "db/probe.rv");
    let len = 8 << 20;
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| pattern(len, 10 + i)).collect();
    let pushed0 = bm.get("vecfs_page_cache_pushed_bytes_total");
    for (i, body) in bodies.iter().enumerate() {
        write_file(&a, &format!("db/seg/{i}.rv"), body);
        // One at a time, so the oldest-first order of the budget is known.
        wait_for("the file pushed into B's page cache", SOON, || {
            bm.get("vecfs_page_cache_pushed_bytes_total") >= pushed0 + (i as u64 + 1) * len as u64
        });
    }
    // 3 x 8 MiB pushed with a 20 MiB budget: the oldest went out again.
    // (Polled: a file is read into the page cache before older ones are
    // dropped, so the budget may be over by one file for a moment.)
    let resident = || -> Vec<usize> {
        (0..3)
            .map(|i| resident_pages(&b.p(&format!("db/seg/{i}.rv"))) * 4096)
            .collect()
    };
    let held = poll_until(SOON, || {
        let r = resident();
        r.iter().sum::<usize>() <= 20 << 20 && r[2] == len
    });
    assert!(
        held,
        "page cache over the 20 MiB budget or the newest file not resident: {:?} bytes",
        resident()
    );
    assert!(bm.get("vecfs_page_cache_dropped_bytes_total") >= len as u64);

    // Its first read never reaches the daemon.
    let served = bm.get("vecfs_read_bytes_total");
    assert_eq!(fs::read(b.p("db/seg/2.rv")).unwrap(), bodies[2]);
    assert_eq!(
        bm.get("vecfs_read_bytes_total"),
        served,
        "the read of a pushed file went to the daemon"
    );
    // The dropped one reads back right, from the daemon's cache.
    let before = gets(&bm);
    assert_eq!(fs::read(b.p("db/seg/0.rv")).unwrap(), bodies[0]);
    assert_eq!(gets(&bm), before);
}

#[test]
fn a_file_replaced_during_its_warm_up_is_never_served_stale() {
    let s3 = S3::start();
    let px = HttpFault::start(s3.port);
    let port = px.port;
    let v = common::s3_volume(Redis::start(), s3, port, &[]);
    let a = v.mount();
    let (b, bm) = v.mount_with_metrics(&["--read-only", "--warm-on-commit", "*.rv"]);
    wait_subscribed(&a, &bm, "probe.rv");

    for (round, in_place) in [(0u64, false), (1, true)] {
        let name = format!("x{round}.rv");
        let old = pattern(16 << 20, 20 + round);
        let new = pattern(12 << 20, 30 + round);
        // B's GETs crawl: its warm-up of the old content is under way
        // when A replaces the file.
        let slow = px.add(Rule::new(Fault::Delay(Duration::from_millis(700))).method("GET"));
        write_file(&a, &name, &old);
        wait_for("B's warm-up to start fetching", SOON, || slow.fired() > 0);
        if in_place {
            let mut f = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(a.p(&name))
                .unwrap();
            f.write_all(&new).unwrap();
            common::close(f).unwrap();
        } else {
            replace_file(&a, &name, &new);
        }
        assert_eq!(
            fs::read(b.p(&name)).unwrap(),
            new,
            "B served the replaced content (round {round})"
        );
        px.remove(&slow);
        // And after every warm-up and push has settled.
        wait_for("B's warm-ups to finish", SOON, || {
            bm.get("vecfs_warm_files_total") + bm.get("vecfs_warm_skipped_total") >= 3 + 2 * round
        });
        assert_eq!(fs::read(b.p(&name)).unwrap(), new, "round {round}, settled");
    }

    // Deleted during its warm-up: gone on B too, and the warm-up gives up.
    let skipped = bm.get("vecfs_warm_skipped_total");
    let slow = px.add(Rule::new(Fault::Delay(Duration::from_millis(700))).method("GET"));
    write_file(&a, "gone.rv", &pattern(16 << 20, 50));
    wait_for("B's warm-up to start fetching", SOON, || slow.fired() > 0);
    fs::remove_file(a.p("gone.rv")).unwrap();
    let err = fs::read(b.p("gone.rv")).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err}");
    px.remove(&slow);
    wait_for("the warm-up of the deleted file to give up", SOON, || {
        bm.get("vecfs_warm_skipped_total") > skipped
    });
}

#[test]
fn a_reader_restarted_mid_stream_catches_up() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let args = [
        "--read-only",
        "--warm-on-commit",
        "*.rv",
        "--cache-dir",
        cache_dir,
    ];
    let (b, bm) = v.mount_with_metrics(&args);
    wait_subscribed(&a, &bm, "probe.rv");
    let bodies: Vec<Vec<u8>> = (0..4).map(|i| pattern(6 << 20, 40 + i)).collect();
    // The probe may count twice (its create and its commit); bytes fetched
    // by warm-ups name the file's blocks.
    let fetched = bm.get("vecfs_warm_bytes_total");
    write_file(&a, "f0.rv", &bodies[0]);
    wait_for("f0 warmed", SOON, || {
        bm.get("vecfs_warm_bytes_total") >= fetched + (6 << 20)
    });
    // Blocks reach the disk cache in the background after the warm-up.
    wait_for("f0 in B's disk cache", SOON, || {
        common::dir_bytes(cache.path()) >= 6 << 20
    });
    b.unmount();

    // Written while B is away: B misses their events.
    write_file(&a, "f1.rv", &bodies[1]);
    write_file(&a, "f2.rv", &bodies[2]);
    let (b, bm) = v.mount_with_metrics(&args);
    wait_subscribed(&a, &bm, "probe2.rv");
    let fetched = bm.get("vecfs_warm_bytes_total");
    write_file(&a, "f3.rv", &bodies[3]);
    wait_for("f3 warmed", SOON, || {
        bm.get("vecfs_warm_bytes_total") >= fetched + (6 << 20)
    });

    // f0 (warmed before the restart, on disk) and f3 load without the store;
    // the missed ones load from it, whole and right.
    let before = gets(&bm);
    assert_eq!(fs::read(b.p("f0.rv")).unwrap(), bodies[0]);
    assert_eq!(
        gets(&bm),
        before,
        "f0 (warmed before the restart) fetched again"
    );
    assert_eq!(fs::read(b.p("f3.rv")).unwrap(), bodies[3]);
    assert_eq!(gets(&bm), before, "f3 fetched again: {}", state(&bm));
    assert_eq!(fs::read(b.p("f1.rv")).unwrap(), bodies[1]);
    assert_eq!(fs::read(b.p("f2.rv")).unwrap(), bodies[2]);
    assert!(gets(&bm) > before);
}

#[test]
fn bad_warm_options_are_refused_with_a_clear_error() {
    let v = Volume::new(Storage::File);
    let mp = tempfile::tempdir().unwrap();
    let mp = mp.path().to_str().unwrap();
    for (args, want) in [
        (
            vec!["--warm-on-commit", "db/*.rv"],
            "patterns match file names",
        ),
        (vec!["--warm-on-commit", "[a"], "'[a'"),
        (
            vec!["--warm-on-commit", "*.rv", "--no-events"],
            "drop --no-events",
        ),
        (
            vec!["--warm-on-commit", "*.rv", "--warm-concurrency", "0"],
            "--warm-concurrency",
        ),
    ] {
        let mut all = vec!["mount", v.url.as_str(), mp];
        all.extend(args.iter());
        let out = common::vecfs(&all, &v.env_refs());
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = common::stderr(&out);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn a_subdir_mount_warms_only_its_own_tree() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    fs::create_dir_all(a.p("t1")).unwrap();
    fs::create_dir_all(a.p("t2")).unwrap();
    let (_b, bm) =
        v.mount_with_metrics(&["--read-only", "--subdir", "t1", "--warm-on-commit", "*"]);
    wait_subscribed(&a, &bm, "t1/probe");
    let skipped = bm.get("vecfs_warm_skipped_total");
    let bytes = bm.get("vecfs_warm_bytes_total");
    write_file(&a, "t2/other.rv", &pattern(8 << 20, 60));
    write_file(&a, "t1/mine.rv", &pattern(1 << 20, 61));
    wait_for("mine.rv warmed and other.rv passed over", SOON, || {
        bm.get("vecfs_warm_bytes_total") >= bytes + (1 << 20)
            && bm.get("vecfs_warm_skipped_total") > skipped
    });
    let fetched = bm.get("vecfs_warm_bytes_total") - bytes;
    assert!(
        fetched < 2 << 20,
        "{fetched} bytes warmed: the file outside --subdir was fetched"
    );
}

#[test]
fn files_in_a_renamed_directory_are_still_pushed() {
    let v = Volume::new(Storage::S3);
    let a = v.mount();
    let (b, bm) = v.mount_with_metrics(&["--read-only", "--warm-on-commit", "*.rv"]);
    fs::create_dir_all(a.p("db/segA")).unwrap();
    wait_subscribed(&a, &bm, "db/segA/probe.rv");
    let pushed = bm.get("vecfs_page_cache_pushed_bytes_total");
    let first = pattern(2 << 20, 70);
    write_file(&a, "db/segA/1.rv", &first);
    wait_for("1.rv pushed", SOON, || {
        bm.get("vecfs_page_cache_pushed_bytes_total") >= pushed + first.len() as u64
    });
    // Built under a temporary name, then renamed into place.
    fs::rename(a.p("db/segA"), a.p("db/segB")).unwrap();
    let second = pattern(3 << 20, 71);
    write_file(&a, "db/segB/2.rv", &second);
    wait_for("2.rv pushed under the directory's new name", SOON, || {
        bm.get("vecfs_page_cache_pushed_bytes_total")
            >= pushed + (first.len() + second.len()) as u64
    });
    assert_eq!(bm.get("vecfs_page_cache_push_failures_total"), 0);
    let served = bm.get("vecfs_read_bytes_total");
    assert_eq!(fs::read(b.p("db/segB/2.rv")).unwrap(), second);
    assert_eq!(bm.get("vecfs_read_bytes_total"), served);
}
