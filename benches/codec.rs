//! Block codec benchmark: compression ratio and encode/decode speed per
//! encoding on generated float32 vectors, int64 ids and any real files given
//! in VECFS_BENCH_FILES (colon-separated; scripts/bench-codec.sh adds a faiss
//! HNSW and IVF index), then the end-to-end effect through a real mount: a
//! 51 MB float32 segment written and loaded cold and warm with `none`, `lz4`
//! and `auto`. Prints figures; asserts nothing.
//! Run: `cargo bench --bench codec` or `scripts/bench-codec.sh`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{dir_bytes, Rng};
use vecfs::codec::{self, Encoding};

fn float_vectors(bytes: usize) -> Vec<u8> {
    let mut r = Rng(42);
    let mut v = Vec::with_capacity(bytes + 8);
    v.extend_from_slice(&[0u8; 8]); // Milvus .rv header
    while v.len() < bytes {
        v.extend_from_slice(&r.normal().to_le_bytes());
    }
    v.truncate(bytes);
    v
}

fn ids(bytes: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes);
    let mut id: i64 = 449_912_345_678_901;
    while v.len() < bytes {
        v.extend_from_slice(&id.to_le_bytes());
        id += 1;
    }
    v.truncate(bytes);
    v
}

const BLOCK: usize = 4 << 20;

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn bench_data(name: &str, data: &[u8]) {
    let blocks: Vec<&[u8]> = data.chunks(BLOCK).collect();
    let mut encs = vec![
        ("raw", Some(Encoding::Raw)),
        ("lz4", Some(Encoding::Lz4)),
        (
            "shuffle4+lz4",
            Some(Encoding::ShuffleLz4 {
                width: 4,
                offset: 0,
            }),
        ),
        (
            "shuffle8+lz4",
            Some(Encoding::ShuffleLz4 {
                width: 8,
                offset: 0,
            }),
        ),
        ("zstd-1", Some(Encoding::Zstd)),
        (
            "shuffle4+zstd-1",
            Some(Encoding::ShuffleZstd {
                width: 4,
                offset: 0,
            }),
        ),
        (
            "shuffle8+zstd-1",
            Some(Encoding::ShuffleZstd {
                width: 8,
                offset: 0,
            }),
        ),
    ];
    encs.push(("auto", None));
    encs.push(("zstd:1 (auto shuffle)", None));
    println!(
        "\n{name}: {} MB in {} blocks of 4 MiB",
        data.len() / 1_000_000,
        blocks.len()
    );
    println!(
        "{:<24} {:>8} {:>12} {:>12}",
        "encoding", "ratio", "encode GB/s", "decode GB/s"
    );
    for (label, enc) in encs {
        let t = Instant::now();
        let stored: Vec<Vec<u8>> = blocks
            .iter()
            .map(|b| match enc {
                Some(e) => codec::encode_as(b, e, 1),
                None if label == "auto" => codec::encode(
                    b,
                    codec::parse_compression("auto")
                        .unwrap_or(codec::Codec::new(codec::Compression::Auto, 1)),
                ),
                None => codec::encode(b, codec::Codec::new(codec::Compression::Zstd, 1)),
            })
            .collect();
        let te = t.elapsed();
        let t = Instant::now();
        let mut n = 0;
        for s in &stored {
            n += codec::decode(s).map(|v| v.len()).unwrap_or(0);
        }
        let td = t.elapsed();
        assert_eq!(n, data.len(), "round trip");
        let size: usize = stored.iter().map(|s| s.len()).sum();
        println!(
            "{label:<24} {:>8.3} {:>12.2} {:>12.2}",
            data.len() as f64 / size as f64,
            gbps(data.len(), te),
            gbps(data.len(), td)
        );
    }
}

fn bench_shuffle() {
    let data = float_vectors(64 << 20);
    let mut s = vec![0u8; data.len()];
    let mut u = vec![0u8; data.len()];
    let t = Instant::now();
    s.copy_from_slice(&data);
    println!(
        "memcpy (for scale): {:.2} GB/s",
        gbps(data.len(), t.elapsed())
    );
    for width in [4, 8] {
        // warm the buffers first: measure the transform, not page faults
        codec::shuffle_into(&data, &mut s, width, 0);
        let t = Instant::now();
        codec::shuffle_into(&data, &mut s, width, 0);
        let ts = t.elapsed();
        codec::unshuffle_into(&s, &mut u, width, 0);
        let t = Instant::now();
        codec::unshuffle_into(&s, &mut u, width, 0);
        let tu = t.elapsed();
        assert!(u == data);
        println!(
            "shuffle{width}: {:.2} GB/s, unshuffle{width}: {:.2} GB/s",
            gbps(data.len(), ts),
            gbps(data.len(), tu)
        );
    }
}

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn end_to_end() {
    let segment = float_vectors(51_000_000);
    println!("\nend to end: a 51 MB float32 segment through a mount (file store, local Redis)");
    println!(
        "{:<8} {:>14} {:>12} {:>14} {:>14}",
        "codec", "stored MB", "write s", "cold load s", "warm load s"
    );
    for c in ["none", "lz4", "auto"] {
        let v = common::Volume::with_args(common::Storage::File, &["--compress", c]);
        let m = v.mount_with(&["--cache-dir", "memory"]);
        let t = Instant::now();
        std::fs::write(m.p("segment.rv"), &segment).unwrap();
        let tw = t.elapsed();
        m.unmount();
        let stored = match &v.backend {
            common::Backend::File(d) => dir_bytes(&d.path().join("objects")),
            _ => 0,
        };
        // cold: a fresh daemon with no cache at all, kernel caches dropped
        let m = v.mount_with(&["--cache-dir", "memory"]);
        drop_caches();
        let t = Instant::now();
        let back = std::fs::read(m.p("segment.rv")).unwrap();
        let tc = t.elapsed();
        assert_eq!(back.len(), segment.len());
        // warm: blocks in vecfs's memory cache, kernel page cache dropped
        drop_caches();
        let t = Instant::now();
        let back = std::fs::read(m.p("segment.rv")).unwrap();
        let tm = t.elapsed();
        assert!(back == segment);
        m.unmount();
        println!(
            "{c:<8} {:>14.1} {:>12.3} {:>14.3} {:>14.3}",
            stored as f64 / 1e6,
            tw.as_secs_f64(),
            tc.as_secs_f64(),
            tm.as_secs_f64()
        );
    }
}

fn main() {
    bench_shuffle();
    bench_data(
        "float32 vectors (normal, 8-byte header)",
        &float_vectors(64 << 20),
    );
    bench_data("int64 ids (sequential)", &ids(32 << 20));
    if let Ok(files) = std::env::var("VECFS_BENCH_FILES") {
        for f in files.split(':').filter(|f| !f.is_empty()) {
            match std::fs::read(f) {
                Ok(d) if !d.is_empty() => bench_data(f, &d),
                _ => println!("\n{f}: cannot read, skipped"),
            }
        }
    }
    end_to_end();
}
