//! Commits against a real redis-server, below the mount: a commit retried
//! after a lost reply applies once (idempotency token), and a record that
//! appears twice never gets its objects journaled for deletion while a copy
//! is still in the chunk.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{Storage, Volume};
use vecfs::meta::{Meta, Slice};

fn records(v: &Volume, ino: u64) -> usize {
    v.redis
        .cli(&["-n", "1", "LLEN", &format!("{{testvol}}c{ino}_0")])
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_retried_commit_applies_once() {
    let v = Volume::new(Storage::File);
    let m = v.mount();
    std::fs::write(m.p("f"), vec![7u8; 100 << 10]).unwrap();
    let ino = std::fs::metadata(m.p("f")).unwrap().ino();
    m.unmount();
    let before = records(&v, ino);
    assert_eq!(before, 1);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = vecfs::meta::url::parse(&v.url).unwrap();
        let meta = Meta::connect(&url, "testvol").await.unwrap();
        let id = meta.new_slice_id().await.unwrap();
        // A hole record stands in for new data: no object needed.
        let rec = Slice {
            pos: 0,
            id: 0,
            size: 4096,
            off: 0,
            len: 4096,
        };
        let batch = vec![(0u64, rec, None)];
        let first = meta.write_slices(ino, &batch, 0, id).await.unwrap();
        let again = meta.write_slices(ino, &batch, 0, id).await.unwrap();
        assert_eq!(first.attr.length, again.attr.length);
        assert_eq!(records(&v, ino), before + 1, "the retry applied again");
        // A different commit with the same record is a new commit.
        let other = meta.new_slice_id().await.unwrap();
        meta.write_slices(ino, &batch, 0, other).await.unwrap();
        // The older hole is hidden by the newer one and pruned.
        assert_eq!(records(&v, ino), before + 1);
    });
}

#[test]
fn a_duplicate_record_keeps_its_objects() {
    let v = Volume::new(Storage::File);
    let m = v.mount();
    std::fs::write(m.p("f"), vec![1u8; 1 << 20]).unwrap();
    let ino = std::fs::metadata(m.p("f")).unwrap().ino();
    m.unmount();
    let raw = v.redis.cli(&[
        "-n",
        "1",
        "--no-raw",
        "LINDEX",
        &format!("{{testvol}}c{ino}_0"),
        "0",
    ]);
    assert!(!raw.trim().is_empty());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = vecfs::meta::url::parse(&v.url).unwrap();
        let meta = Meta::connect(&url, "testvol").await.unwrap();
        let recs = meta.read_chunk(ino, 0).await.unwrap();
        assert_eq!(recs.len(), 1);
        // The same record committed again (as a commit applied twice would).
        let token = meta.new_slice_id().await.unwrap();
        let done = meta
            .write_slices(ino, &[(0, recs[0], None)], 0, token)
            .await
            .unwrap();
        assert!(
            done.dropped.is_empty(),
            "a record still in the chunk was journaled: {:?}",
            done.dropped
        );
        assert_eq!(meta.read_chunk(ino, 0).await.unwrap(), recs);
    });
    let journaled = v.redis.cli(&["-n", "1", "ZCARD", "{testvol}delslices"]);
    assert_eq!(journaled.trim(), "0");
}
