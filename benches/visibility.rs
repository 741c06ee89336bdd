//! Cross-node visibility latency: the time from close() on node A until node
//! B sees the new size of a file whose attributes B's kernel has cached,
//! with the change channel (FUSE notify on events) and without it (TTL only).
//! Prints figures; asserts nothing. Run: `cargo bench --bench visibility`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use common::{Storage, Volume};

fn measure(v: &Volume, extra: &[&str], trials: usize) -> Vec<Duration> {
    let a = v.mount_with(extra);
    let b = v.mount_with(extra);
    let mut out = Vec::with_capacity(trials);
    for i in 0..trials {
        let name = format!("f{}-{i}", extra.len());
        fs::write(a.p(&name), b"x").unwrap();
        // B caches the attributes (1 s TTL by default).
        while fs::metadata(b.p(&name)).map(|m| m.len()).ok() != Some(1) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut f = OpenOptions::new().append(true).open(a.p(&name)).unwrap();
        f.write_all(b"more").unwrap();
        drop(f); // close: committed
        let t0 = Instant::now();
        while fs::metadata(b.p(&name)).map(|m| m.len()).ok() != Some(5) {
            std::thread::sleep(Duration::from_micros(200));
            assert!(t0.elapsed() < Duration::from_secs(10), "never visible");
        }
        out.push(t0.elapsed());
    }
    a.unmount();
    b.unmount();
    out.sort();
    out
}

fn row(label: &str, d: &[Duration]) {
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!(
        "{label:<28} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        ms(d[0]),
        ms(d[d.len() / 2]),
        ms(d[d.len() * 9 / 10]),
        ms(d[d.len() - 1])
    );
}

fn main() {
    let trials = std::env::var("TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let v = Volume::new(Storage::File);
    let with = measure(&v, &[], trials);
    let without = measure(&v, &["--no-events"], trials);
    println!("cross-node visibility of a new size after close(), {trials} trials, attr TTL 1 s");
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "mode (ms)", "min", "median", "p90", "max"
    );
    row("change events (default)", &with);
    row("TTL only (--no-events)", &without);
}
