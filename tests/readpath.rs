//! The read path of issue 11 through real mounts (redis-server, moto's S3
//! server): a process reading a cold file at random pulls at most about
//! the file from the store (before, one random read landing near the last
//! one started whole-block fetches and a read-ahead window grown to
//! 128 MiB: several times the file), the rest of the file is fetched in
//! the background after a few misses so later reads hit, and a sequential
//! reader after random ones keeps the frames they fetched. Traffic is read
//! from the daemon's Prometheus endpoint.

mod common;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{poll_until, Metrics, Rng, Storage, Volume};

const MIB: u64 = 1 << 20;

/// Stored bytes beyond the raw ones: each 4 MiB block carries a header and
/// a frame table (528 bytes), fetched once with the block and once more
/// for the table a ranged reader needs.
fn headers(len: u64) -> u64 {
    2 * 528 * len.div_ceil(4 * MIB)
}

/// Opens `path` for random reads as fio does (POSIX_FADV_RANDOM: the
/// kernel reads only the pages asked for).
fn open_random(path: &std::path::Path) -> File {
    let f = File::open(path).unwrap();
    // SAFETY: an advice call on a descriptor this File owns.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    f
}

/// `n` random 4 KiB reads, each checked against `data`.
fn random_reads(f: &File, data: &[u8], r: &mut Rng, n: usize) {
    let pages = data.len() as u64 / 4096;
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let off = r.below(pages) * 4096;
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == data[off as usize..off as usize + 4096],
            "bytes at {off} differ"
        );
    }
}

fn fetched(m: &Metrics) -> u64 {
    m.get("vecfs_object_get_bytes_total")
}

#[test]
fn random_reads_of_a_cold_file_fetch_it_at_most_once() {
    let v = Volume::new(Storage::S3);
    let len = 64 * MIB; // 16 blocks, incompressible: stored raw
    let data = common::pattern(len as usize, 11);
    let a = v.mount();
    std::fs::write(a.p("index"), &data).unwrap();
    a.unmount();

    let (b, m) = v.mount_with_metrics(&[]);
    let bytes0 = fetched(&m);
    let f = open_random(&b.p("index"));
    let mut r = Rng(2024);
    let reads = 600;
    random_reads(&f, &data, &mut r, reads);
    // The target of issue 11: at most twice the bytes read or the file,
    // whichever is larger (plus block headers). Wait for the background
    // fill, which brings the whole file once.
    let bound = (2 * reads as u64 * 4096).max(len) + headers(len);
    poll_until(Duration::from_secs(60), || {
        fetched(&m) - bytes0 >= len || fetched(&m) - bytes0 > bound
    });
    let after_fill = fetched(&m) - bytes0;
    assert!(
        after_fill <= bound,
        "{after_fill} bytes fetched for {reads} random reads of 4 KiB of a {len}-byte file (bound {bound})"
    );
    assert!(
        after_fill >= len,
        "the rest of the file was not fetched in the background ({after_fill} of {len} bytes)"
    );
    assert!(m.get("vecfs_fill_block_total") > 0, "no background fill");
    // Later random reads hit the caches: no store traffic at all.
    let gets = m.get("vecfs_object_get_total") + m.get("vecfs_object_range_get_total");
    random_reads(&f, &data, &mut r, 400);
    assert_eq!(
        m.get("vecfs_object_get_total") + m.get("vecfs_object_range_get_total"),
        gets,
        "random reads after the fill went to the store"
    );
    assert_eq!(fetched(&m) - bytes0, after_fill);
    drop(f);
    b.unmount();
}

#[test]
fn a_sequential_reader_keeps_the_frames_random_reads_fetched() {
    let v = Volume::new(Storage::S3);
    let len = 32 * MIB;
    let data = common::pattern(len as usize, 12);
    let a = v.mount();
    std::fs::write(a.p("seg"), &data).unwrap();
    a.unmount();

    let (b, m) = v.mount_with_metrics(&["--cache-dir", "memory"]);
    let bytes0 = fetched(&m);
    // A few random reads (too few to start a fill), far apart.
    let f = open_random(&b.p("seg"));
    let mut buf = vec![0u8; 4096];
    for off in [3 * MIB + 8192, 9 * MIB + 4096, 17 * MIB, 27 * MIB + 65536] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(buf == data[off as usize..off as usize + 4096]);
    }
    drop(f);
    let random = fetched(&m) - bytes0;
    assert!(random >= 4 * 65536, "{random} bytes for four random reads");
    // Then the whole file, sequentially.
    let all = std::fs::read(b.p("seg")).unwrap();
    assert!(all == data, "sequential read");
    let total = fetched(&m) - bytes0;
    assert!(
        total <= len + headers(len),
        "{total} bytes fetched for a {len}-byte file: frames fetched by random reads were fetched again"
    );
    b.unmount();
}

/// Whole-block GETs so far.
fn whole_gets(m: &Metrics) -> u64 {
    m.get("vecfs_object_get_total")
}

#[test]
fn a_new_handle_starts_with_the_window_the_last_one_grew() {
    let v = Volume::new(Storage::S3);
    let len = 160 * MIB; // 40 blocks
    let data = common::pattern(len as usize, 13);
    let a = v.mount();
    std::fs::write(a.p("seg"), &data).unwrap();
    a.unmount();

    let (b, m) = v.mount_with_metrics(&["--cache-dir", "memory", "--mem-cache-size", "1024"]);
    let gets0 = whole_gets(&m);
    let mut buf = vec![0u8; MIB as usize];
    // Handle 1: two 1 MiB reads that wait for the store (no kernel
    // read-ahead: POSIX_FADV_RANDOM), so its window grows 8 -> 16 -> 32
    // MiB; it reads ahead blocks 1-4 and 36-39.
    let f = open_random(&b.p("seg"));
    for off in [0, 140 * MIB] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(buf == data[off as usize..(off + MIB) as usize]);
    }
    drop(f);
    assert!(
        poll_until(Duration::from_secs(30), || whole_gets(&m) - gets0 >= 10),
        "handle 1 fetched {} blocks, not 10",
        whole_gets(&m) - gets0
    );
    let gets1 = whole_gets(&m);
    // Handle 2 starts where nothing is cached: its first read waits and
    // doubles the file's 32 MiB window to 64 MiB, so blocks 15-31 come.
    // A window per handle would start at 8 MiB again (16 after the wait:
    // blocks 15-19).
    let f = open_random(&b.p("seg"));
    f.read_exact_at(&mut buf, 60 * MIB).unwrap();
    assert!(buf == data[(60 * MIB) as usize..(61 * MIB) as usize]);
    let grown = poll_until(Duration::from_secs(30), || whole_gets(&m) - gets1 >= 12);
    assert!(
        grown,
        "the second handle read ahead {} blocks: it did not start with the grown window",
        whole_gets(&m) - gets1
    );
    drop(f);
    b.unmount();
}

/// Peak resident set of process `pid` (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

/// Eight processes read eight different cold files at once: read-ahead is
/// charged to one node-wide budget, so the daemon's peak RSS stays within
/// --mem-cache-size + --buffer-size + 200 MiB. Before, each file grew its
/// own window (up to 128 MiB) and glibc kept freed block buffers in one
/// arena per thread: the daemon peaked at 365 MiB here (bound 328 MiB).
#[test]
fn many_cold_sequential_readers_stay_within_the_memory_budget() {
    const READERS: u64 = 8;
    let v = Volume::new(Storage::S3);
    let len = 128 * MIB; // 32 blocks per file, incompressible
    let a = v.mount();
    for i in 0..READERS {
        std::fs::write(a.p(&format!("f{i}")), common::pattern(len as usize, 20 + i)).unwrap();
    }
    a.unmount();

    let (mem, buf) = (64, 64);
    let (b, m) = v.mount_with_metrics(&[
        "--mem-cache-size",
        &mem.to_string(),
        "--buffer-size",
        &buf.to_string(),
    ]);
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let p = b.p(&format!("f{i}"));
            std::thread::spawn(move || {
                use std::io::Read;
                let want = common::pattern(len as usize, 20 + i);
                let mut f = File::open(p).unwrap();
                let mut got = vec![0u8; MIB as usize];
                let mut at = 0usize;
                loop {
                    let n = f.read(&mut got).unwrap();
                    if n == 0 {
                        break;
                    }
                    assert!(got[..n] == want[at..at + n], "file {i} differs at {at}");
                    at += n;
                }
                assert_eq!(at as u64, len, "file {i} short");
            })
        })
        .collect();
    for r in readers {
        r.join().unwrap();
    }
    assert!(
        fetched(&m) >= READERS * len,
        "the files did not come from the store"
    );
    let peak = peak_rss(b.pid());
    let bound = (mem + buf + 200) * MIB;
    eprintln!("peak RSS {} MiB (bound {} MiB)", peak >> 20, bound >> 20);
    assert!(
        peak <= bound,
        "peak RSS {} MiB > {} MiB (--mem-cache-size + --buffer-size + 200 MiB)",
        peak >> 20,
        bound >> 20
    );
    b.unmount();
}
