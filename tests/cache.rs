//! The local block cache through real mounts: warmup fills it, it survives a
//! restart and serves reads without the object store, corrupt entries are
//! dropped and refetched, and it stays within its size. Local copies (cache
//! and `file` store) are private to the daemon's user, and a fresh volume's
//! root is made as mkfs makes one.

mod common;

use std::fs;
use std::path::Path;

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::process::{Command, Output};

use common::{dir_bytes, pattern, stderr, vecfs, wait_for, Backend, Storage, Volume};

/// Runs `cmd` through sh as uid/gid 65534 (nobody) with no extra groups.
fn as_nobody(cmd: &str) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["sh", "-c", cmd])
        .output()
        .expect("setpriv (util-linux)")
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn open_up(p: &Path) {
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every directory and file strictly below `p` is 0700 / 0600 and nobody
/// can read a file; returns how many files there were.
fn assert_private(p: &Path) -> usize {
    let mut files = 0;
    for e in fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        let md = fs::symlink_metadata(&path).unwrap();
        if md.is_dir() {
            assert_eq!(mode(&path), 0o700, "directory {}", path.display());
            files += assert_private(&path);
        } else {
            assert_eq!(mode(&path), 0o600, "file {}", path.display());
            let o = as_nobody(&format!("cat '{}' > /dev/null", path.display()));
            assert!(!o.status.success(), "nobody read {}", path.display());
            files += 1;
        }
    }
    files
}

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

#[test]
fn cache_and_file_store_are_private_and_the_root_is_made_as_mkfs_makes_it() {
    let v = Volume::new(Storage::File);
    let Backend::File(store_tmp) = &v.backend else {
        unreachable!()
    };
    let store = store_tmp.path().join("objects");
    let cache = tempfile::tempdir().unwrap();
    // Open every parent to others, so only vecfs's own modes stand in the way.
    open_up(store_tmp.path());
    open_up(cache.path());
    let a = v.mount_with(&["--cache-dir", cache.path().to_str().unwrap()]);
    open_up(a.path.parent().unwrap());

    // The root: 0755, owned by the user who formatted (root here).
    let md = fs::metadata(&a.path).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!((md.uid(), md.gid()), (0, 0));

    // A root-owned 0600 file, large enough for objects and cache entries.
    let body = pattern(3 << 20, 9);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(a.p("secret"))
        .unwrap();
    std::io::Write::write_all(&mut f, &body).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(fs::read(a.p("secret")).unwrap() == body);
    wait_for("blocks cached", std::time::Duration::from_secs(10), || {
        dir_bytes(cache.path()) >= 3 << 20
    });

    // Controls: nobody can reach these parents and read an open file in them.
    fs::write(cache.path().join("control"), b"x").unwrap();
    fs::set_permissions(
        cache.path().join("control"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let o = as_nobody(&format!("cat '{}'", cache.path().join("control").display()));
    assert!(
        o.status.success(),
        "control: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::remove_file(cache.path().join("control")).unwrap();
    let o = as_nobody(&format!("cat '{}'", a.p("secret").display()));
    assert!(!o.status.success(), "the mount itself refuses nobody");

    assert_eq!(mode(&store), 0o700, "the store directory");
    assert!(assert_private(&store) >= 1, "objects in the store");
    assert!(assert_private(cache.path()) >= 1, "entries in the cache");

    // Nobody cannot delete (or replace) a root-owned file at the top level.
    let o = as_nobody(&format!("rm -f '{}'", a.p("secret").display()));
    assert!(!o.status.success());
    let o = as_nobody(&format!(
        "mv '{}' '{}'",
        a.p("secret").display(),
        a.p("x").display()
    ));
    assert!(!o.status.success());
    assert!(a.p("secret").exists());
    a.unmount();

    // A daemon started with -d (it starts itself again) keeps to the same modes.
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let cache2 = dir.path().join("cache");
    let o = vecfs(
        &[
            "mount",
            &v.url,
            mp.to_str().unwrap(),
            "-d",
            "--log",
            dir.path().join("log").to_str().unwrap(),
            "--cache-dir",
            cache2.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let body2 = pattern(2 << 20, 10);
    fs::write(mp.join("secret2"), &body2).unwrap();
    wait_for("blocks cached", std::time::Duration::from_secs(10), || {
        dir_bytes(&cache2) >= 2 << 20
    });
    let o = vecfs(&["umount", mp.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&cache2), 0o700, "a cache directory vecfs creates");
    assert_private(&cache2);
    assert_private(&store);
    assert_eq!(mode(&dir.path().join("log")), 0o600, "the daemon's log");
}

#[test]
fn root_mode_1777_makes_a_sticky_shared_root_that_reformatting_keeps() {
    let v = Volume::with_args(Storage::File, &["--root-mode", "1777"]);
    let a = v.mount();
    open_up(a.path.parent().unwrap());
    let md = fs::metadata(&a.path).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o1777);
    assert_eq!((md.uid(), md.gid()), (0, 0));

    // Anyone creates; only a file's owner (or the root's) deletes it.
    fs::write(a.p("roots"), b"r").unwrap();
    let o = as_nobody(&format!("echo n > '{}'", a.p("nobodys").display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_nobody(&format!("rm -f '{}'", a.p("roots").display()));
    assert!(!o.status.success());
    assert!(
        a.p("roots").exists(),
        "sticky: nobody cannot delete root's file"
    );
    let o = as_nobody(&format!("rm '{}'", a.p("nobodys").display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    a.unmount();

    // Formatting the volume again (even asking for another mode) keeps the root.
    let Backend::File(store_tmp) = &v.backend else {
        unreachable!()
    };
    let bucket = store_tmp.path().join("objects");
    let o = vecfs(
        &[
            "format",
            &v.url,
            &v.name,
            "--bucket",
            bucket.to_str().unwrap(),
            "--trash-days",
            "2",
            "--root-mode",
            "700",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("updated volume") && out.contains("--root-mode left"),
        "{out}"
    );
    let b = v.mount();
    assert_eq!(mode(&b.path), 0o1777);
    assert!(b.p("roots").exists());
    b.unmount();
}

/// Whole-object and ranged GETs so far.
fn gets(m: &common::Metrics) -> u64 {
    m.get("vecfs_object_get_total") + m.get("vecfs_object_range_get_total")
}

/// Bytes that compress (lz4 and shuffle find runs): stored compressed,
/// kept on disk in raw form.
fn compressible(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 4096) as u8) ^ ((i % 7) as u8))
        .collect()
}

/// Blocks a cold read fetched are written to the disk cache in the
/// background, off the read (a block stored raw as it came, a compressed
/// one in raw form), and an unmount right after the read waits for those
/// writes: a restarted daemon reads everything from its disk cache.
#[test]
fn blocks_a_read_fetched_reach_the_disk_cache_in_the_background_and_survive_a_remount() {
    let v = Volume::new(Storage::S3);
    let raw = pattern(24 << 20, 31); // 6 blocks, incompressible: stored raw
    let packed = compressible(18 << 20); // 5 blocks, stored compressed
    let a = v.mount_with(&["--cache-dir", "memory"]);
    fs::write(a.p("raw"), &raw).unwrap();
    fs::write(a.p("packed"), &packed).unwrap();
    a.unmount();

    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let (b, m) = v.mount_with_metrics(&["--cache-dir", cache_dir]);
    assert!(fs::read(b.p("raw")).unwrap() == raw, "raw file, cold");
    assert!(
        fs::read(b.p("packed")).unwrap() == packed,
        "packed file, cold"
    );
    assert!(gets(&m) >= 11, "the files did not come from the store");
    // Unmounted at once: the daemon waits for the queued writes.
    b.unmount();
    let mut entries = Vec::new();
    block_files(cache.path(), &mut entries);
    entries.retain(|p| {
        !p.extension()
            .is_some_and(|e| e.to_string_lossy().starts_with("tmp"))
    });
    assert!(entries.len() >= 11, "{} entries on disk", entries.len());

    let (c, m) = v.mount_with_metrics(&["--cache-dir", cache_dir]);
    let g0 = gets(&m); // the mount's probe of the store
    assert!(
        fs::read(c.p("raw")).unwrap() == raw,
        "raw file from the disk cache"
    );
    assert!(
        fs::read(c.p("packed")).unwrap() == packed,
        "packed file from the disk cache"
    );
    assert_eq!(
        gets(&m) - g0,
        0,
        "blocks the cold read fetched were not kept ({} whole GETs, {} hits, {} written)",
        m.get("vecfs_object_get_total"),
        m.get("vecfs_disk_cache_hit_total"),
        m.get("vecfs_disk_cache_write_total")
    );
    assert!(m.get("vecfs_disk_cache_hit_total") >= 11);
    c.unmount();
}

/// A background write the disk cache refused (full) leaves no entry, and
/// entries that a crash without fsync could leave damaged (cut short,
/// zero-filled, empty) are dropped on use: the bytes read are right every
/// time, refetched from the store.
#[test]
fn a_refused_or_damaged_background_write_never_yields_wrong_bytes() {
    let v = Volume::new(Storage::S3);
    let body = pattern(32 << 20, 32); // 8 blocks
    let a = v.mount_with(&["--cache-dir", "memory"]);
    fs::write(a.p("f"), &body).unwrap();
    a.unmount();

    // Room for two blocks of eight: the other writes are refused.
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let (b, m) = v.mount_with_metrics(&["--cache-dir", cache_dir, "--cache-size", "12"]);
    assert!(fs::read(b.p("f")).unwrap() == body, "cold read");
    wait_for(
        "disk cache writes done",
        std::time::Duration::from_secs(20),
        || {
            m.get("vecfs_disk_cache_write_total") + m.get("vecfs_disk_cache_write_dropped_total")
                >= 8
        },
    );
    assert!(
        m.get("vecfs_disk_cache_write_dropped_total") >= 1,
        "nothing refused"
    );
    assert!(
        m.get("vecfs_disk_cache_write_total") >= 1,
        "nothing written"
    );
    assert!(fs::read(b.p("f")).unwrap() == body, "warm read");
    b.unmount();

    let mut entries = Vec::new();
    block_files(cache.path(), &mut entries);
    entries.retain(|p| {
        !p.extension()
            .is_some_and(|e| e.to_string_lossy().starts_with("tmp"))
    });
    assert!(
        (1..8).contains(&entries.len()),
        "{} entries for a cache with room for two",
        entries.len()
    );
    // What a power loss after rename but before the data reached the disk
    // may leave: cut short, zero-filled, empty.
    for (i, e) in entries.iter().enumerate() {
        let len = fs::metadata(e).unwrap().len() as usize;
        match i % 3 {
            0 => fs::write(e, &fs::read(e).unwrap()[..len / 2]).unwrap(),
            1 => fs::write(e, vec![0u8; len]).unwrap(),
            _ => fs::write(e, b"").unwrap(),
        }
    }
    let (c, m) = v.mount_with_metrics(&["--cache-dir", cache_dir, "--cache-size", "12"]);
    let g0 = gets(&m); // the mount's probe of the store
    assert!(
        fs::read(c.p("f")).unwrap() == body,
        "wrong bytes from a damaged cache"
    );
    assert!(
        gets(&m) - g0 >= 8,
        "damaged entries were served: {} GETs",
        gets(&m) - g0
    );
    c.unmount();
}
