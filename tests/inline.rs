//! Small files through real mounts: their bytes are committed to Redis with
//! the slice record (no object PUT), read back on another node, grow past
//! the inline size into objects without losing a byte, and their Redis keys
//! go when the file does.

mod common;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{pattern, wait_for, Storage, Volume};

fn inline_keys(v: &Volume) -> usize {
    v.redis
        .cli(&["-n", "1", "--scan", "--pattern", "{testvol}b*"])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

#[test]
fn small_files_live_in_redis_and_grow_into_objects() {
    let v = Volume::with_args(Storage::S3, &["--trash-days", "0", "--inline-size", "8K"]);
    let (a, metrics) = v.mount_with_metrics(&["--delete-delay", "0"]);
    let puts0 = metrics.get("vecfs_object_put_total");
    std::fs::create_dir(a.p("meta")).unwrap();
    for i in 0..20 {
        std::fs::write(
            a.p(&format!("meta/{i}.json")),
            pattern(100 + i * 300, i as u64),
        )
        .unwrap();
    }
    assert_eq!(
        metrics.get("vecfs_object_put_total"),
        puts0,
        "small files cost no object PUT"
    );
    assert_eq!(inline_keys(&v), 20);

    // another node reads them
    let b = v.mount();
    for i in 0..20 {
        let got = std::fs::read(b.p(&format!("meta/{i}.json"))).unwrap();
        assert!(
            got == pattern(100 + i * 300, i as u64),
            "file {i} on node b"
        );
    }

    // a small file grows past the inline size: its first bytes stay inline,
    // the rest goes to objects, and every byte reads back
    let grow = a.p("meta/0.json");
    let big = pattern(3 << 20, 99);
    {
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&grow)
            .unwrap();
        f.write_all_at(&big, 100).unwrap();
        f.sync_all().unwrap();
    }
    assert!(metrics.get("vecfs_object_put_total") > puts0);
    let mut want = pattern(100, 0);
    want.extend_from_slice(&big);
    assert!(
        std::fs::read(b.p("meta/0.json")).unwrap() == want,
        "grown file on node b"
    );

    // deleting files frees their Redis bytes (after the grace period)
    for i in 1..20 {
        std::fs::remove_file(a.p(&format!("meta/{i}.json"))).unwrap();
    }
    wait_for("inline bytes freed", Duration::from_secs(30), || {
        inline_keys(&v) == 1
    });
    b.unmount();
    a.unmount();
}
