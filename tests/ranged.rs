//! Random reads of compressed blocks through real mounts: a 4 KiB read
//! fetches the block's frame table and the one frame that holds it (ranged
//! GETs), never the whole block; from the disk cache it reads only frames
//! too; the bytes are right either way. Traffic is read from the daemon's
//! Prometheus endpoint.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use common::{stderr, vecfs, wait_for, Rng, Storage, Volume};

/// Text-like bytes: lz4 halves them, byte shuffling does not help, so each
/// block is stored as plain lz4 in 256 KiB frames.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let words: Vec<Vec<u8>> = (0..200)
        .map(|_| {
            let n = 3 + r.below(8) as usize;
            (0..n).map(|_| b'a' + r.below(26) as u8).collect()
        })
        .collect();
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(&words[r.below(200) as usize]);
        out.push(b' ');
    }
    out.truncate(len);
    out
}

fn random_reads(path: &std::path::Path, data: &[u8], offsets: &[u64]) {
    let f = File::open(path).unwrap();
    for &off in offsets {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf == data[off as usize..off as usize + 4096],
            "bytes at {off} differ"
        );
    }
}

#[test]
fn random_reads_of_compressed_blocks_fetch_frames_not_blocks() {
    let v = Volume::with_args(Storage::S3, &["--compress", "lz4"]);
    let data = text(48 << 20, 5);
    let a = v.mount();
    std::fs::write(a.p("index.bin"), &data).unwrap();
    a.unmount();

    let mut r = Rng(77);
    // Page-aligned, never at 0, each more than a block from the one
    // before: a random reader.
    let mut offsets: Vec<u64> = Vec::new();
    while offsets.len() < 30 {
        let off = (1 + r.below((data.len() as u64 - 8192) / 4096 - 1)) * 4096;
        if offsets
            .last()
            .is_none_or(|p: &u64| p.abs_diff(off) > 8 << 20)
        {
            offsets.push(off);
        }
    }
    let (b, metrics) = v.mount_with_metrics(&["--cache-dir", "memory"]);
    // the mount's probe object counts too: measure from here
    let whole0 = metrics.get("vecfs_object_get_total");
    let bytes0 = metrics.get("vecfs_object_get_bytes_total");
    random_reads(&b.p("index.bin"), &data, &offsets);
    let whole = metrics.get("vecfs_object_get_total") - whole0;
    let ranged = metrics.get("vecfs_object_range_get_total");
    let bytes = metrics.get("vecfs_object_get_bytes_total") - bytes0;
    assert_eq!(whole, 0, "no whole-block GET for random 4 KiB reads");
    assert!(ranged >= offsets.len() as u64, "{ranged} ranged GETs");
    // A frame holds 256 KiB raw (about half that stored); whole blocks
    // would have cost about 2 MiB per read.
    assert!(
        bytes < offsets.len() as u64 * (256 << 10),
        "{bytes} bytes fetched for {} reads of 4 KiB",
        offsets.len()
    );
    // A sequential reader still gets whole blocks (and read-ahead), or for
    // the blocks random reads touched, the frames they did not fetch:
    // a few GETs per block, never one per read.
    let gets = |m: &common::Metrics| {
        m.get("vecfs_object_get_total") + m.get("vecfs_object_range_get_total")
    };
    let gets0 = gets(&metrics);
    let mut whole_file = Vec::new();
    File::open(b.p("index.bin"))
        .unwrap()
        .read_to_end(&mut whole_file)
        .unwrap();
    assert!(whole_file == data, "sequential read");
    let seq_gets = gets(&metrics) - gets0;
    assert!(
        (12..=36).contains(&seq_gets),
        "{seq_gets} GETs for a sequential read of 12 blocks"
    );
    b.unmount();

    // From the disk cache, random reads read frames of the cached blocks,
    // and the object store is not asked at all.
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let c = v.mount_with(&["--cache-dir", cache_dir]);
    let o = vecfs(&["warmup", c.p("index.bin").to_str().unwrap(), "-q"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    wait_for("blocks on disk", std::time::Duration::from_secs(10), || {
        common::dir_bytes(cache.path()) >= data.len() as u64
    });
    c.unmount();
    let (d, metrics) = v.mount_with_metrics(&["--cache-dir", cache_dir]);
    let bytes0 = metrics.get("vecfs_object_get_bytes_total");
    random_reads(&d.p("index.bin"), &data, &offsets);
    assert_eq!(metrics.get("vecfs_object_get_bytes_total"), bytes0);
    assert!(metrics.get("vecfs_disk_cache_hit_total") >= offsets.len() as u64);
    d.unmount();
}

#[test]
fn ten_readers_of_one_segment_download_it_once() {
    let v = Volume::new(Storage::S3);
    let data = common::pattern(24 << 20, 8); // six blocks
    let a = v.mount();
    std::fs::write(a.p("seg"), &data).unwrap();
    a.unmount();
    let (b, metrics) = v.mount_with_metrics(&["--cache-dir", "memory"]);
    let bytes0 = metrics.get("vecfs_object_get_bytes_total");
    let path = b.p("seg");
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let p = path.clone();
            std::thread::spawn(move || std::fs::read(p).unwrap())
        })
        .collect();
    for r in readers {
        assert!(r.join().unwrap() == data, "a reader got other bytes");
    }
    // Random data is stored raw: 24 MiB once, plus headers, plus the few
    // frames a reader whose first request lands mid-file (the page cache
    // already held the start) fetches before a whole-block fetch begins.
    // Ten separate downloads would be 240 MiB.
    let fetched = metrics.get("vecfs_object_get_bytes_total") - bytes0;
    assert!(
        fetched <= 30 << 20,
        "{fetched} bytes fetched for ten readers of 24 MiB"
    );
    b.unmount();
}
