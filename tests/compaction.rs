//! Space comes back through real mounts: slices hidden by later writes are
//! dropped from the chunk list and their objects deleted after the grace
//! period; a chunk whose list grows long (small overwrites) is compacted
//! into one slice in the background, and the bytes never change.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use common::{pattern, wait_for, Backend, Rng, Storage, Volume};

fn objects(v: &Volume) -> usize {
    fn count(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
    }
    let Backend::File(store) = &v.backend else {
        unreachable!("file storage only")
    };
    count(&store.path().join("objects").join("testvol").join("chunks"))
}

fn records(v: &Volume, ino: u64) -> usize {
    v.redis
        .cli(&["-n", "1", "LLEN", &format!("{{testvol}}c{ino}_0")])
        .trim()
        .parse()
        .unwrap_or(usize::MAX)
}

#[test]
fn overwritten_slices_are_dropped_and_their_objects_freed() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let m = v.mount_with(&["--delete-delay", "0"]);
    let path = m.p("seg");
    std::fs::write(&path, pattern(8 << 20, 1)).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    assert_eq!(objects(&v), 2, "two 4 MiB blocks");
    for seed in 2..5 {
        // rewritten in place, without O_TRUNC: only hiding frees the old slice
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&pattern(8 << 20, seed), 0).unwrap();
        f.sync_all().unwrap();
        assert_eq!(records(&v, ino), 1, "hidden records dropped at once");
    }
    wait_for("old blocks deleted", Duration::from_secs(30), || {
        objects(&v) == 2
    });
    assert!(std::fs::read(&path).unwrap() == pattern(8 << 20, 4));
    m.unmount();
}

#[test]
fn long_slice_lists_are_compacted_without_changing_a_byte() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let m = v.mount_with(&["--delete-delay", "0"]);
    let path = m.p("log");
    let mut model = pattern(2 << 20, 9);
    std::fs::write(&path, &model).unwrap();
    let ino = std::fs::metadata(&path).unwrap().ino();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let mut r = Rng(31);
    for i in 0..60u64 {
        let off = r.below(model.len() as u64 - 1000) as usize;
        let bytes = pattern(1000, 100 + i);
        f.write_all_at(&bytes, off as u64).unwrap();
        f.sync_all().unwrap(); // one slice per write
        model[off..off + 1000].copy_from_slice(&bytes);
    }
    drop(f);
    // 61 records without compaction; it runs in the background
    wait_for("chunk compacted", Duration::from_secs(30), || {
        records(&v, ino) < 20
    });
    wait_for("replaced slices deleted", Duration::from_secs(30), || {
        objects(&v) < 20
    });
    assert!(
        std::fs::read(&path).unwrap() == model,
        "same bytes on this mount"
    );
    m.unmount();
    let fresh = v.mount();
    assert!(
        std::fs::read(fresh.p("log")).unwrap() == model,
        "same bytes on a fresh mount"
    );
    fresh.unmount();
}
