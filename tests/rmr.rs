//! `vecfs rmr` (issue 12): removes a directory tree through the mount's
//! server-side bulk removal. The tree is gone at once on this node and, by
//! change events, on another; df's inodes and space come back and the
//! objects are freed; with trash days the files wait in the trash.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{pattern, stderr, vecfs, wait_for, Storage, Volume};

/// `dirs` directories of `files` files each, one nested directory more.
fn tree(root: &Path, dirs: usize, files: usize) -> usize {
    std::fs::create_dir(root).unwrap();
    for d in 0..dirs {
        let dir = root.join(format!("seg{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..files {
            common::write_closed(
                &dir.join(format!("f{f}")),
                &pattern(3000, (d * files + f) as u64),
            );
        }
    }
    std::fs::create_dir_all(root.join("seg0/deep/er")).unwrap();
    common::write_closed(&root.join("seg0/deep/er/big"), &pattern(1 << 20, 9));
    dirs * files + 1
}

fn rmr(p: &Path) -> Output {
    vecfs(&["rmr", p.to_str().unwrap()], &[])
}

fn redis_objects(v: &Volume) -> usize {
    let common::Backend::File(d) = &v.backend else {
        unreachable!()
    };
    let mut n = 0;
    let mut stack = vec![d.path().join("objects")];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn rmr_removes_the_tree_everywhere_and_gives_space_back() {
    let v = Volume::with_args(
        Storage::File,
        &[
            "--trash-days",
            "0",
            "--block-size",
            "1M",
            "--inline-size",
            "0",
        ],
    );
    let a = v.mount_with(&["--delete-delay", "0"]);
    let b = v.mount();
    let (used0, inodes0) = common::df(&a.path);
    let objects0 = redis_objects(&v);
    let n = tree(&a.p("segments"), 4, 50);
    std::fs::create_dir(a.p("keep")).unwrap();
    common::write_closed(&a.p("keep/x"), b"stays");
    let (used1, inodes1) = common::df(&a.path);
    assert_eq!(inodes1, inodes0 + n as u64 + 4 + 3 + 2);
    assert!(used1 > used0);
    assert!(redis_objects(&v) > objects0);
    // Node b has the tree in its dentry cache.
    assert!(b.p("segments/seg3/f49").exists());
    assert!(b.p("segments/seg0/deep/er/big").exists());

    let o = rmr(&a.p("segments"));
    assert!(o.status.success(), "rmr failed: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!("removed {n} files and 7 directories")),
        "{out}"
    );
    assert!(!a.p("segments").exists());
    assert!(!a.p("segments/seg3/f49").exists());
    wait_for("tree gone on node b", Duration::from_secs(5), || {
        !b.p("segments/seg3/f49").exists() && !b.p("segments").exists()
    });
    assert_eq!(std::fs::read(b.p("keep/x")).unwrap(), b"stays");
    let (used2, inodes2) = common::df(&a.path);
    assert_eq!(inodes2, inodes0 + 2);
    assert!(used2 <= used0 + 4096 + 4096, "{used0} -> {used2}");
    wait_for("objects freed", Duration::from_secs(30), || {
        redis_objects(&v) == objects0 + 1
    });
    // The name is free again.
    std::fs::create_dir(a.p("segments")).unwrap();
}

#[test]
fn rmr_honours_the_trash() {
    let v = Volume::with_args(Storage::File, &[]);
    let m = v.mount();
    std::fs::create_dir_all(m.p("db/seg")).unwrap();
    for i in 0..5 {
        common::write_closed(
            &m.p(&format!("db/seg/f{i}")),
            format!("content {i}").as_bytes(),
        );
    }
    let o = rmr(&m.p("db/seg"));
    assert!(o.status.success(), "rmr failed: {}", stderr(&o));
    assert!(!m.p("db/seg").exists());
    let mut found = Vec::new();
    for h in std::fs::read_dir(m.p(".trash")).unwrap() {
        for e in std::fs::read_dir(h.unwrap().path()).unwrap() {
            let e = e.unwrap();
            found.push((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    found.sort();
    assert_eq!(found.len(), 5, "{found:?}");
    for (i, (name, data)) in found.iter().enumerate() {
        assert!(name.ends_with(&format!("-f{i}")), "{name}");
        assert_eq!(data, format!("content {i}").as_bytes());
    }
}

#[test]
fn rmr_refuses_what_it_cannot_remove() {
    let v = Volume::with_args(Storage::File, &[]);
    let m = v.mount();
    common::write_closed(&m.p("file"), b"x");
    let o = rmr(&m.p("file"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
    let o = rmr(&m.p("missing"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    let local = tempfile::tempdir().unwrap();
    std::fs::create_dir(local.path().join("d")).unwrap();
    let o = rmr(&local.path().join("d"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a vecfs mount") || stderr(&o).contains("file system"));
    assert!(local.path().join("d").exists());
    let o = rmr(&m.path);
    assert!(!o.status.success(), "removed the mount point itself");
    assert_eq!(std::fs::read(m.p("file")).unwrap(), b"x");
}
