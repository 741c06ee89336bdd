//! The trash (issue 12): with trash days, deleted files and files replaced
//! by rename wait under the read-only `.trash/<hour>/<parent>-<ino>-<name>`
//! with their content, root restores them with a rename, other nodes see
//! them, and the purge frees their objects and space once they expire;
//! without trash days nothing waits there.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{pattern, wait_for, Backend, Storage, Volume};
use futures::StreamExt;
use vecfs::object::{build_store, Credentials, StorageKind};

/// Objects in the volume's bucket.
fn objects(v: &Volume) -> usize {
    let Backend::S3(s) = &v.backend else {
        panic!("S3 volumes only")
    };
    let creds = Credentials {
        access_key: Some("testing".into()),
        secret_key: Some("testing".into()),
    };
    let bucket = format!("http://127.0.0.1:{}/vecfs-test", s.port);
    let store = build_store(StorageKind::S3, &bucket, &creds).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut n = 0;
        let mut l = store.list(None);
        while let Some(m) = l.next().await {
            m.unwrap();
            n += 1;
        }
        n
    })
}

/// Every file under `.trash/`: (path, name).
fn trash_files(mnt: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(hours) = std::fs::read_dir(mnt.join(".trash")) else {
        return out;
    };
    for h in hours {
        let h = h.unwrap();
        for e in std::fs::read_dir(h.path()).unwrap() {
            let e = e.unwrap();
            out.push((e.path(), e.file_name().to_string_lossy().into_owned()));
        }
    }
    out
}

/// The current UTC hour as the trash names its directories.
fn hour_now() -> String {
    let o = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d-%H"])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

#[test]
fn unlinked_file_waits_in_trash_and_mv_restores_it() {
    let v = Volume::with_args(Storage::S3, &["--block-size", "1M"]);
    let m = v.mount();
    let data = pattern(3 << 20, 7);
    common::write_closed(&m.p("seg.bin"), &data);
    let ino = std::fs::metadata(m.p("seg.bin")).unwrap().ino();
    // A handle open across the deletion keeps reading.
    let mut open = std::fs::File::open(m.p("seg.bin")).unwrap();
    std::fs::remove_file(m.p("seg.bin")).unwrap();
    assert!(!m.p("seg.bin").exists());
    let mut back = Vec::new();
    open.read_to_end(&mut back).unwrap();
    assert!(back == data, "the open handle lost the content");
    drop(open);

    let hour = hour_now();
    let entries = trash_files(&m.path);
    assert_eq!(entries.len(), 1, "trash: {entries:?}");
    let (path, name) = &entries[0];
    assert_eq!(name, &format!("1-{ino}-seg.bin"));
    assert!(
        path.parent().unwrap().ends_with(&hour) || path.to_string_lossy().contains(&hour[..10]),
        "hour dir of {path:?} is not {hour}"
    );
    assert!(std::fs::read(path).unwrap() == data, "trash copy differs");
    // Hidden from the root's listing, reachable by name.
    let root: BTreeSet<String> = std::fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!root.contains(".trash"), "root lists {root:?}");
    assert!(std::fs::metadata(m.p(".trash")).unwrap().is_dir());

    // Restore: a rename out of the trash.
    std::fs::rename(path, m.p("restored.bin")).unwrap();
    assert!(std::fs::read(m.p("restored.bin")).unwrap() == data);
    assert!(trash_files(&m.path).is_empty());
    // Same inode, intact after a remount too.
    assert_eq!(std::fs::metadata(m.p("restored.bin")).unwrap().ino(), ino);
    m.unmount();
    let m = v.mount();
    assert!(std::fs::read(m.p("restored.bin")).unwrap() == data);
}

#[test]
fn file_replaced_by_rename_keeps_its_old_version_in_trash() {
    let v = Volume::with_args(Storage::S3, &[]);
    let m = v.mount();
    std::fs::create_dir(m.p("d")).unwrap();
    let dino = std::fs::metadata(m.p("d")).unwrap().ino();
    common::write_closed(&m.p("d/meta.json"), b"version 1");
    let old = std::fs::metadata(m.p("d/meta.json")).unwrap().ino();
    common::write_closed(&m.p("d/meta.json.tmp"), b"version 2");
    std::fs::rename(m.p("d/meta.json.tmp"), m.p("d/meta.json")).unwrap();
    assert_eq!(std::fs::read(m.p("d/meta.json")).unwrap(), b"version 2");
    let entries = trash_files(&m.path);
    assert_eq!(entries.len(), 1, "trash: {entries:?}");
    assert_eq!(entries[0].1, format!("{dino}-{old}-meta.json"));
    assert_eq!(std::fs::read(&entries[0].0).unwrap(), b"version 1");
}

#[test]
fn without_trash_days_nothing_waits_and_objects_go() {
    let v = Volume::with_args(Storage::S3, &["--trash-days", "0", "--block-size", "1M"]);
    let m = v.mount_with(&["--delete-delay", "0"]);
    common::write_closed(&m.p("f"), &pattern(2 << 20, 1));
    assert!(objects(&v) >= 2);
    std::fs::remove_file(m.p("f")).unwrap();
    assert_eq!(
        std::fs::metadata(m.p(".trash"))
            .map_err(|e| e.raw_os_error())
            .err(),
        Some(Some(libc::ENOENT))
    );
    wait_for("objects freed", Duration::from_secs(30), || {
        objects(&v) == 0
    });
    // The name stays reserved, so turning trash days on later finds it free.
    assert_eq!(
        std::fs::create_dir(m.p(".trash"))
            .map_err(|e| e.raw_os_error())
            .err(),
        Some(Some(libc::EPERM))
    );
}

#[test]
fn nothing_but_the_file_system_writes_into_the_trash() {
    let v = Volume::with_args(Storage::S3, &[]);
    let m = v.mount();
    common::write_closed(&m.p("a"), b"abc");
    std::fs::remove_file(m.p("a")).unwrap();
    let entries = trash_files(&m.path);
    assert_eq!(entries.len(), 1);
    let (file, _) = &entries[0];
    let hour = file.parent().unwrap().to_path_buf();
    let err = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    let eperm = Some(libc::EPERM);
    assert_eq!(
        err(std::fs::File::create(hour.join("new")).map(|_| ())),
        eperm
    );
    assert_eq!(
        err(std::fs::File::create(m.p(".trash/new")).map(|_| ())),
        eperm
    );
    assert_eq!(err(std::fs::create_dir(m.p(".trash/2000-01-01-00"))), eperm);
    common::write_closed(&m.p("b"), b"b");
    assert_eq!(err(std::fs::rename(m.p("b"), hour.join("b"))), eperm);
    assert_eq!(err(std::fs::hard_link(m.p("b"), hour.join("b"))), eperm);
    assert_eq!(
        err(std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .map(|_| ())),
        eperm
    );
    assert_eq!(
        err(std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .and_then(|f| f.set_len(0))),
        eperm
    );
    assert_eq!(err(std::fs::rename(&hour, m.p("hour"))), eperm);
    // The name is taken at the root.
    assert!(std::fs::create_dir(m.p(".trash")).is_err());
    assert!(std::fs::rename(m.p("b"), m.p(".trash")).is_err());
    assert_eq!(std::fs::read(file).unwrap(), b"abc");
}

#[test]
fn expired_entries_are_purged_freeing_objects_and_space() {
    let v = Volume::with_args(Storage::S3, &["--block-size", "1M"]);
    let m = v.mount_with(&["--trash-expiry", "3", "--delete-delay", "0"]);
    let (used0, inodes0) = common::df(&m.path);
    common::write_closed(&m.p("big"), &pattern(4 << 20, 3));
    let (used1, inodes1) = common::df(&m.path);
    assert!(used1 >= used0 + (4 << 20), "{used0} -> {used1}");
    assert_eq!(inodes1, inodes0 + 1);
    assert_eq!(objects(&v), 4);
    std::fs::remove_file(m.p("big")).unwrap();
    // In the trash it still counts (its hour directory and the trash too).
    let (used2, _) = common::df(&m.path);
    assert!(used2 >= used1, "trash must count toward used space");
    assert_eq!(trash_files(&m.path).len(), 1);
    wait_for("trash purged", Duration::from_secs(30), || {
        trash_files(&m.path).is_empty()
    });
    wait_for("objects freed", Duration::from_secs(30), || {
        objects(&v) == 0
    });
    wait_for("space back", Duration::from_secs(30), || {
        // Only the (empty) trash directory itself is left; its hour
        // directory goes once its hour is over.
        let (u, i) = common::df(&m.path);
        u <= used0 + 2 * 4096 && i <= inodes0 + 2
    });
}

#[test]
fn a_second_node_sees_the_trash_and_only_one_purges() {
    let v = Volume::with_args(Storage::S3, &[]);
    let a = v.mount();
    let b = v.mount();
    common::write_closed(&a.p("x"), b"from node a");
    std::fs::remove_file(a.p("x")).unwrap();
    wait_for("trash entry on node b", Duration::from_secs(10), || {
        trash_files(&b.path).len() == 1
    });
    let entries = trash_files(&b.path);
    assert_eq!(std::fs::read(&entries[0].0).unwrap(), b"from node a");
    std::fs::rename(&entries[0].0, b.p("x")).unwrap();
    wait_for("restored file on node a", Duration::from_secs(10), || {
        std::fs::read(a.p("x")).ok().as_deref() == Some(&b"from node a"[..])
    });
    // One purge lease for the volume, held by one of the sessions.
    let holder = v.redis.cli(&["-n", "1", "GET", "{testvol}trashpurger"]);
    assert!(!holder.trim().is_empty(), "no node holds the purge lease");
}
