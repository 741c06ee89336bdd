//! The local block cache through real mounts: warmup fills it, it survives a
//! restart and serves reads without the object store, corrupt entries are
//! dropped and refetched, and it stays within its size.

mod common;

use std::fs;
use std::path::Path;

use common::{dir_bytes, pattern, stderr, vecfs, wait_for, Backend, Storage, Volume};

fn block_files(p: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                block_files(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
}

#[test]
fn warmup_fills_a_cache_that_survives_restarts_and_serves_without_the_store() {
    let v = Volume::new(Storage::File);
    let files: Vec<Vec<u8>> = (0..3).map(|i| pattern(7 << 20, i)).collect();
    let a = v.mount();
    fs::create_dir_all(a.p("db/seg")).unwrap();
    for (i, f) in files.iter().enumerate() {
        fs::write(a.p(&format!("db/seg/f{i}")), f).unwrap();
    }
    a.unmount();

    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let b = v.mount_with(&["--cache-dir", cache_dir]);
    assert!(dir_bytes(cache.path()) < 1 << 20, "starts empty");
    let o = vecfs(&["warmup", b.p("db").to_str().unwrap(), "-q"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("warmed up 3 files, 21.0 MiB"), "{out}");
    wait_for("blocks on disk", std::time::Duration::from_secs(10), || {
        dir_bytes(cache.path()) >= 21 << 20
    });
    b.unmount();

    // The store goes away; a restarted daemon still reads from its disk cache.
    let Backend::File(store) = &v.backend else {
        unreachable!()
    };
    fs::remove_dir_all(store.path().join("objects")).unwrap();
    let c = v.mount_with(&["--cache-dir", cache_dir]);
    for (i, f) in files.iter().enumerate() {
        assert!(
            fs::read(c.p(&format!("db/seg/f{i}"))).unwrap() == *f,
            "file {i} from cache"
        );
    }
    c.unmount();

    let o = vecfs(&["warmup", "/tmp"], &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a vecfs mount") || stderr(&o).contains("not on a vecfs"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn corrupt_cache_entries_are_dropped_and_refetched() {
    let v = Volume::new(Storage::File);
    let body = pattern(6 << 20, 4);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let a = v.mount_with(&["--cache-dir", cache_dir]);
    fs::write(a.p("f"), &body).unwrap();
    wait_for("cached", std::time::Duration::from_secs(10), || {
        dir_bytes(cache.path()) >= 6 << 20
    });
    a.unmount();
    let mut blocks = Vec::new();
    block_files(cache.path(), &mut blocks);
    assert!(!blocks.is_empty());
    for b in &blocks {
        let mut d = fs::read(b).unwrap();
        let mid = d.len() / 2;
        d[mid] ^= 0xff;
        fs::write(b, d).unwrap();
    }
    let b = v.mount_with(&["--cache-dir", cache_dir]);
    assert!(
        fs::read(b.p("f")).unwrap() == body,
        "right bytes despite a corrupt cache"
    );
    assert!(
        b.log_text().contains("dropping corrupt disk cache entry"),
        "{}",
        b.log_text()
    );
    b.unmount();
}

#[test]
fn disk_cache_stays_within_its_size() {
    let v = Volume::with_args(Storage::File, &["--block-size", "1M"]);
    let cache = tempfile::tempdir().unwrap();
    let a = v.mount_with(&[
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--cache-size",
        "8",
    ]);
    for i in 0..5 {
        fs::write(a.p(&format!("f{i}")), pattern(8 << 20, i)).unwrap();
        let _ = fs::read(a.p(&format!("f{i}"))).unwrap();
    }
    wait_for(
        "cache within 8 MiB",
        std::time::Duration::from_secs(15),
        || dir_bytes(cache.path()) <= 8 << 20,
    );
    assert!(dir_bytes(cache.path()) > 1 << 20, "but still used");
    a.unmount();
}
