//! Small files through real mounts: their bytes are committed to Redis with
//! the slice record (no object PUT), read back on another node, grow past
//! the inline size into objects without losing a byte, and their Redis keys
//! go when the file does.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{free_port, pattern, wait_for, Storage, Volume};

fn metric(port: u16, name: &str) -> u64 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from metrics:\n{body}"))
}

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
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let a = v.mount_with(&["--metrics", &addr, "--delete-delay", "0"]);
    wait_for("metrics endpoint", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let puts0 = metric(port, "vecfs_object_put_total");
    std::fs::create_dir(a.p("meta")).unwrap();
    for i in 0..20 {
        std::fs::write(
            a.p(&format!("meta/{i}.json")),
            pattern(100 + i * 300, i as u64),
        )
        .unwrap();
    }
    assert_eq!(
        metric(port, "vecfs_object_put_total"),
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
    assert!(metric(port, "vecfs_object_put_total") > puts0);
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
