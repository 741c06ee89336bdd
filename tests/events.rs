//! Change events when a node's subscription dies without closing: the
//! connection stays open and delivers nothing (a host gone without a
//! reset, a partition). The node's long kernel and metadata-cache TTLs
//! rely on those events, so it must notice the silence by itself.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{free_port, wait_for, Metrics, Storage, Volume};

/// Kernel and metadata-cache TTLs far past the test's waits: only change
/// events, or their loss being noticed and made good, explain a change seen.
const LONG: [&str; 8] = [
    "--attr-cache",
    "120",
    "--entry-cache",
    "120",
    "--dir-entry-cache",
    "120",
    "--meta-cache",
    "120",
];

/// The longest a node takes to notice a silent channel and make it good:
/// its probe goes out every 5 s and must come back within 10 s, then 1 s
/// before it resubscribes (16 s at most); plus a margin for a loaded machine.
const NOTICED: Duration = Duration::from_secs(25);

const SOON: Duration = Duration::from_secs(5);

/// FUSE requests (lookups and stats) the daemon has answered.
fn asked(m: &Metrics) -> u64 {
    ["lookup", "getattr"]
        .iter()
        .map(|op| {
            m.get_or_zero(&format!(
                "vecfs_fuse_op_duration_seconds_count{{op=\"{op}\"}}"
            ))
        })
        .sum()
}

/// Stats `paths` until they have been answered by the kernel alone for
/// longer than the short TTL: it then holds them with the long TTLs. (A
/// first reply that raced the change events of their creation gets the
/// short TTL; the kernel asks again after it.)
fn until_the_kernel_holds(m: &Metrics, paths: &[PathBuf]) {
    let mut since = (asked(m), Instant::now());
    wait_for(
        "the kernel to hold the names and attributes",
        SOON * 2,
        || {
            for p in paths {
                fs::metadata(p).unwrap();
            }
            let n = asked(m);
            if n != since.0 {
                since = (n, Instant::now());
            }
            since.1.elapsed() > vecfs::vfs::SHORT_TTL + Duration::from_millis(300)
        },
    );
}

#[test]
fn a_silently_dead_event_channel_is_noticed_and_made_good() {
    let v = Volume::new(Storage::File);
    let a = v.mount_with(&LONG);
    // B reaches Redis through a proxy that can silence its subscription.
    let proxy = Proxy::start(v.redis.port);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut args = LONG.to_vec();
    args.extend_from_slice(&["--metrics", &addr]);
    let b = v.mount_via(&[], &format!("redis://127.0.0.1:{}/1", proxy.port), &args);
    wait_for("metrics endpoint", SOON, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let metrics = Metrics(port);
    let channel = format!("{{{}}}events", v.name);
    wait_for("both nodes subscribed", SOON, || {
        v.redis.cli(&["PUBSUB", "NUMSUB", &channel]).lines().nth(1) == Some("2")
    });

    fs::write(a.p("f"), b"1").unwrap();
    fs::write(a.p("g"), b"g").unwrap();
    wait_for("B sees the files", SOON, || {
        b.p("g").exists() && fs::metadata(b.p("f")).map(|m| m.len()).ok() == Some(1)
    });
    until_the_kernel_holds(&metrics, &[b.p("f"), b.p("g")]);

    // B's subscription goes silent; its other connections still work.
    assert_eq!(proxy.mute_subscribers(), 1, "B's one subscription");
    let muted = Instant::now();
    fs::write(a.p("f"), b"12345").unwrap();
    fs::remove_file(a.p("g")).unwrap();
    // The change events are lost: B's kernel still serves what it holds.
    assert_eq!(fs::metadata(b.p("f")).unwrap().len(), 1);
    assert!(b.p("g").exists());

    wait_for(
        "B to see A's changes once it noticed the silence",
        NOTICED,
        || fs::metadata(b.p("f")).map(|m| m.len()).ok() == Some(5) && !b.p("g").exists(),
    );
    eprintln!(
        "B saw the changes {:?} after its channel went silent",
        muted.elapsed()
    );
    assert!(
        b.log_text().contains("change channel delivers nothing"),
        "{}",
        b.log_text()
    );
    // and events flow again on the new subscription
    until_the_kernel_holds(&metrics, &[b.p("f")]);
    fs::write(a.p("f"), b"123").unwrap();
    wait_for("the next change pushed to B", SOON, || {
        fs::metadata(b.p("f")).map(|m| m.len()).ok() == Some(3)
    });
    a.unmount();
    b.unmount();
}
