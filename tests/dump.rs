//! `vecfs dump` / `load` / `config` / `destroy` on real volumes: a tree built
//! through a mount survives dump → load into another Redis → mount, byte
//! for byte and attribute for attribute; the dump holds no secret; load
//! refuses non-empty targets and cleans up after a truncated dump; config
//! changes reach a running mount's `df`; destroy leaves no key and no object.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, FileTimes, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, UNIX_EPOCH};

use common::{pattern, stderr, vecfs, wait_for, Backend, Redis, Storage, Volume, S3};

const REDIS_PW: &str = "Redis-Pw-4f1d9c";
const ACCESS: &str = "AKIDDUMPTEST4242";
const SECRET: &str = "Secret-Key-9b7e3a1c";

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Every xattr of `p` (not following symlinks), sorted by name.
fn xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    // SAFETY: buffers of the given lengths.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "listxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out = BTreeMap::new();
    for name in names.split(|c| *c == 0).filter(|n| !n.is_empty()) {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(m >= 0, "getxattr {}", p.display());
        v.truncate(m as usize);
        out.insert(name.to_vec(), v);
    }
    out
}

/// What a tree looks like, independent of inode numbers: per relative path
/// its kind, mode, owner, size, times, link count, xattrs and symlink target;
/// the groups of paths sharing an inode; and file contents.
#[derive(Debug, PartialEq)]
struct Tree {
    stats: BTreeMap<OsString, String>,
    links: BTreeSet<Vec<OsString>>,
    contents: BTreeMap<OsString, Vec<u8>>,
}

fn snapshot(root: &Path) -> Tree {
    let mut stats = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<OsString>> = BTreeMap::new();
    let mut files = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).unwrap();
        let target = if m.file_type().is_symlink() {
            format!("{:?}", fs::read_link(&p).unwrap())
        } else {
            String::new()
        };
        stats.insert(
            rel.clone().into_os_string(),
            format!(
                "mode {:o} uid {} gid {} size {} atime {}.{} mtime {}.{} ctime {}.{} nlink {} xattrs {:?} target {target}",
                m.mode(),
                m.uid(),
                m.gid(),
                if m.is_dir() { 0 } else { m.size() },
                m.atime(),
                m.atime_nsec(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.nlink(),
                xattrs(&p),
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                todo.push(rel.join(e.unwrap().file_name()));
            }
        } else {
            by_ino
                .entry(m.ino())
                .or_default()
                .push(rel.clone().into_os_string());
            if m.is_file() {
                files.push(rel);
            }
        }
    }
    // Contents last: reading must not change what was compared above.
    let contents = files
        .into_iter()
        .map(|rel| {
            let b = fs::read(root.join(&rel)).unwrap();
            (rel.into_os_string(), b)
        })
        .collect();
    let links = by_ino
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Tree {
        stats,
        links,
        contents,
    }
}

/// Builds a tree with every kind of thing a dump must carry.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir(root.join("shared")).unwrap();
    fs::set_permissions(root.join("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("a/small.txt"), b"inline bytes live in Redis").unwrap();
    fs::write(root.join("a/empty"), b"").unwrap();
    // Several blocks (1 MiB blocks) in one chunk.
    fs::write(root.join("a/b/big.bin"), pattern(3_500_000, 7)).unwrap();
    // Sparse, over two chunks: a hole, then bytes past 64 MiB.
    {
        let mut f = fs::File::create(root.join("a/b/c/sparse")).unwrap();
        f.write_all(b"head").unwrap();
        f.seek(SeekFrom::Start((64 << 20) + 12345)).unwrap();
        f.write_all(&pattern(5000, 9)).unwrap();
    }
    // Overwritten in place: two slices in one chunk.
    {
        fs::write(root.join("a/over"), pattern(300_000, 1)).unwrap();
        let mut f = OpenOptions::new()
            .write(true)
            .open(root.join("a/over"))
            .unwrap();
        f.seek(SeekFrom::Start(1000)).unwrap();
        f.write_all(&pattern(2000, 2)).unwrap();
    }
    std::os::unix::fs::symlink("b/big.bin", root.join("a/link")).unwrap();
    std::os::unix::fs::symlink("/nowhere/at all", root.join("dangling")).unwrap();
    fs::write(root.join("a/hard1"), b"one inode, three names").unwrap();
    fs::hard_link(root.join("a/hard1"), root.join("shared/hard2")).unwrap();
    fs::hard_link(root.join("a/hard1"), root.join("a/b/hard3")).unwrap();
    let odd = root.join(OsStr::from_bytes(b"not-utf8-\xff\xfe"));
    fs::write(&odd, b"odd name").unwrap();
    setxattr(&root.join("a/small.txt"), "user.text", b"plain value");
    setxattr(
        &root.join("a/small.txt"),
        "user.binary",
        &[0, 0xff, 0x80, 1],
    );
    setxattr(&root.join("a/b"), "user.dir", b"on a directory");
    fs::set_permissions(root.join("a/small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("a/b/big.bin"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(root.join("a/small.txt"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(root.join("a/link"), Some(42), Some(43)).unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(root.join("a/empty"))
        .unwrap();
    f.set_times(
        FileTimes::new()
            .set_accessed(UNIX_EPOCH + Duration::new(1_000_000_000, 123))
            .set_modified(UNIX_EPOCH + Duration::new(1_500_000_000, 456_789)),
    )
    .unwrap();
    // Deleted: its objects wait in the deletion queue (trash days 0).
    fs::write(root.join("gone"), pattern(2_000_000, 3)).unwrap();
    fs::remove_file(root.join("gone")).unwrap();
}

fn lines(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn keys(r: &Redis, db: u32, pw: Option<&str>) -> Vec<String> {
    let mut args = vec!["-n".to_string(), db.to_string()];
    if let Some(pw) = pw {
        args.extend(["--no-auth-warning".into(), "-a".into(), pw.into()]);
    }
    args.extend(["--scan".into()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    r.cli(&a).lines().map(String::from).collect()
}

/// A volume in a password-protected Redis on moto S3 with explicit keys.
fn secret_volume() -> Volume {
    let redis = Redis::start_with(&["--requirepass", REDIS_PW]);
    let s3 = S3::start();
    let bucket = s3.bucket("vecfs-test");
    let url = format!("redis://:{REDIS_PW}@127.0.0.1:{}/1", redis.port);
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET.to_string()),
    ];
    let v = Volume {
        redis,
        backend: Backend::S3(s3),
        url: url.clone(),
        name: "testvol".into(),
        env,
    };
    let o = vecfs(
        &[
            "format",
            &url,
            "testvol",
            "--storage",
            "s3",
            "--bucket",
            &bucket,
            "--block-size",
            "1M",
            "--trash-days",
            "0",
        ],
        &v.env_refs(),
    );
    assert!(o.status.success(), "format: {}", stderr(&o));
    v
}

/// The same volume record, metadata in `url`, objects in `v`'s store.
fn loaded(v: &Volume, redis: Redis, url: String) -> Volume {
    Volume {
        redis,
        backend: Backend::File(tempfile::tempdir().unwrap()),
        url,
        name: v.name.clone(),
        env: v.env.clone(),
    }
}

#[test]
fn a_loaded_dump_gives_back_the_same_tree() {
    let v = secret_volume();
    let m = v.mount();
    build_tree(&m.p(""));
    m.unmount();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("dump.json");
    let o = vecfs(&["dump", &v.url, file.to_str().unwrap()], &v.env_refs());
    assert!(o.status.success(), "dump: {}", stderr(&o));

    // Versioned, complete, and without any secret.
    let text = fs::read_to_string(&file).unwrap();
    let l = lines(&file);
    assert!(
        l[0].starts_with("{\"header\":{\"format\":\"vecfs-dump\",\"version\":1"),
        "{}",
        l[0]
    );
    assert!(l.last().unwrap().starts_with("{\"end\":"), "no end record");
    for secret in [REDIS_PW, ACCESS, SECRET] {
        assert!(!text.contains(secret), "the dump holds a secret");
    }
    assert!(
        text.contains("{\"delfile\":"),
        "the pending deletion is missing"
    );
    assert!(text.contains("{\"inline\":"), "inline bytes are missing");
    assert!(
        text.contains("{\"base64\":"),
        "non-UTF-8 bytes are not encoded"
    );

    // Into a fresh Redis, then mount both and compare.
    let r2 = Redis::start();
    let url2 = r2.url(0);
    let o = vecfs(&["load", &url2, file.to_str().unwrap()], &[]);
    assert!(o.status.success(), "load: {}", stderr(&o));
    let v2 = loaded(&v, r2, url2.clone());
    assert!(
        v2.redis
            .cli(&["-n", "0", "ZCARD", "{testvol}delfiles"])
            .trim()
            == "1",
        "the deletion queue was not loaded"
    );
    let (ma, mb) = (v.mount(), v2.mount());
    let (a, b) = (snapshot(&ma.p("")), snapshot(&mb.p("")));
    assert_eq!(a.links.len(), 1, "hard links not seen: {:?}", a.links);
    assert_eq!(a.links.iter().next().unwrap().len(), 3);
    assert!(a.contents.len() >= 8, "{:?}", a.contents.keys());
    assert!(a.stats.len() >= 16, "{:?}", a.stats.keys());
    let sparse = &a.contents[OsStr::new("a/b/c/sparse")];
    assert_eq!(sparse.len(), (64 << 20) + 12345 + 5000);
    assert_eq!(&sparse[(64 << 20) + 12345..], &pattern(5000, 9)[..]);
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.links, b.links);
    for (k, x) in &a.contents {
        assert!(b.contents.get(k) == Some(x), "contents of {k:?} differ");
    }
    assert_eq!(a.contents.len(), b.contents.len());
    // The loaded volume works: a new file gets a new inode, not a dumped one.
    fs::write(mb.p("new-after-load"), b"fresh").unwrap();
    let new_ino = fs::metadata(mb.p("new-after-load")).unwrap().ino();
    let max_old = fs::metadata(mb.p("a/hard1")).unwrap().ino();
    assert!(new_ino > max_old, "inode {new_ino} reused after load");
    ma.unmount();
    mb.unmount();

    // A non-empty target is refused and left as it was.
    let before = keys(&v2.redis, 0, None).len();
    let o = vecfs(&["load", &url2, file.to_str().unwrap()], &[]);
    assert!(
        !o.status.success(),
        "load into a non-empty database succeeded"
    );
    assert!(stderr(&o).contains("refusing to load"), "{}", stderr(&o));
    assert_eq!(keys(&v2.redis, 0, None).len(), before);
    // So is a database where another volume is formatted.
    let other = tempfile::tempdir().unwrap();
    let url5 = v2.redis.url(5);
    let o = vecfs(
        &[
            "format",
            &url5,
            "othervol",
            "--bucket",
            other.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = vecfs(&["load", &url5, file.to_str().unwrap()], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("othervol"), "{}", stderr(&o));

    // A truncated dump is refused and leaves nothing behind.
    let cut = scratch.path().join("cut.json");
    fs::write(&cut, l[..l.len() / 2].join("\n") + "\n").unwrap();
    let o = vecfs(&["load", &v2.redis.url(3), cut.to_str().unwrap()], &[]);
    assert!(!o.status.success(), "a truncated dump loaded");
    assert!(stderr(&o).contains("truncated"), "{}", stderr(&o));
    assert!(
        keys(&v2.redis, 3, None).is_empty(),
        "a failed load left keys"
    );

    // dump - | load -: the same records as the file dump.
    let mut dump = Command::new(common::VECFS)
        .args(["dump", &v.url, "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let load = Command::new(common::VECFS)
        .args(["load", &v2.redis.url(4), "-"])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(dump.wait().unwrap().success());
    assert!(load.status.success(), "load -: {}", stderr(&load));
    let again = scratch.path().join("again.json");
    let o = vecfs(&["dump", &v2.redis.url(4), again.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (mut x, mut y) = (l.clone(), lines(&again));
    x.sort();
    y.sort();
    assert_eq!(x, y, "dump → load → dump changed the records");
}

fn statvfs_bytes(p: &Path) -> u64 {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_blocks * s.f_frsize
}

#[test]
fn config_shows_and_changes_settings_and_mounts_follow() {
    let v = Volume::new(Storage::File);
    let o = vecfs(&["config", &v.url], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("trash-days: 1"), "{out}");
    assert!(out.contains("capacity: 0 (unlimited)"), "{out}");
    let m = v.mount();
    assert!(statvfs_bytes(&m.p("")) >= 1 << 50);

    let o = vecfs(
        &["config", &v.url, "--capacity", "2", "--trash-days", "3"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("capacity: 0 (unlimited) -> 2 GiB"), "{out}");
    assert!(out.contains("trash-days: 1 -> 3"), "{out}");
    let o = vecfs(&["config", &v.url], &[]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("trash-days: 3") && out.contains("capacity: 2 GiB"),
        "{out}"
    );
    // The running mount's df follows without a remount.
    wait_for("df to show 2 GiB", Duration::from_secs(20), || {
        statvfs_bytes(&m.p("")) == 2 << 30
    });

    for (args, want) in [
        (vec!["--block-size", "1M"], "cannot be changed"),
        (vec!["--bucket", "/elsewhere"], "cannot be changed"),
        (vec!["--inline-size", "1M"], "too large"),
        (vec!["--capacity", "lots"], "invalid value"),
    ] {
        let mut a = vec!["config", v.url.as_str()];
        a.extend(args);
        let o = vecfs(&a, &[]);
        assert!(!o.status.success(), "{a:?} succeeded");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    m.unmount();
}

/// Object keys in moto's bucket.
fn bucket_keys(s3: &S3) -> Vec<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", s3.port)).unwrap();
    write!(
        s,
        "GET /vecfs-test?list-type=2 HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        s3.port
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "listing failed: {body}");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn destroy_needs_the_uuid_and_no_mount_then_leaves_nothing() {
    let v = Volume::with_args(Storage::S3, &["--block-size", "1M"]);
    let m = v.mount();
    fs::write(m.p("big"), pattern(3_000_000, 5)).unwrap();
    fs::write(m.p("small"), b"tiny").unwrap();
    let Backend::S3(s3) = &v.backend else {
        unreachable!()
    };
    wait_for("objects uploaded", Duration::from_secs(20), || {
        bucket_keys(s3).len() >= 3
    });
    let o = vecfs(&["status", &v.url], &[]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let uuid = st["setting"]["uuid"].as_str().unwrap().to_string();

    let o = vecfs(&["destroy", &v.url, "0123456789abcdef"], &v.env_refs());
    assert!(!o.status.success(), "a wrong UUID destroyed the volume");
    assert!(stderr(&o).contains("vecfs status"), "{}", stderr(&o));
    let o = vecfs(&["destroy", &v.url, &uuid], &v.env_refs());
    assert!(!o.status.success(), "destroyed a mounted volume");
    assert!(stderr(&o).contains("mounted"), "{}", stderr(&o));
    assert!(!keys(&v.redis, 1, None).is_empty());
    m.unmount();

    let o = vecfs(&["destroy", &v.url, &uuid], &v.env_refs());
    assert!(o.status.success(), "destroy: {}", stderr(&o));
    let left = keys(&v.redis, 1, None);
    assert!(left.is_empty(), "keys left: {left:?}");
    let objs = bucket_keys(s3);
    assert!(objs.is_empty(), "objects left: {objs:?}");
    let o = vecfs(&["status", &v.url], &[]);
    assert!(!o.status.success(), "the volume is still there");
}

#[test]
fn a_file_unlinked_while_open_is_dumped_as_a_pending_deletion() {
    let v = Volume::with_args(Storage::File, &["--inline-size", "0", "--trash-days", "0"]);
    let m = v.mount();
    let mut f = fs::File::create(m.p("held")).unwrap();
    f.write_all(&pattern(300_000, 4)).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(m.p("held")).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("d.json");
    let o = vecfs(&["dump", &v.url, file.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = fs::read_to_string(&file).unwrap();
    let del: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("{\"delfile\":"))
        .collect();
    assert_eq!(del.len(), 1, "{text}");
    assert!(del[0].contains("\"length\":300000"), "{}", del[0]);
    assert!(
        del[0].contains("\"slices\":[{"),
        "its slices are missing: {}",
        del[0]
    );
    drop(f);
    m.unmount();
}

/// `.trash` hangs off the root without an entry: fsck must not call it an
/// orphan (nor `--repair` move it to lost+found), and a dump must carry it
/// and what waits in it, without the loaded inode counter jumping to its
/// reserved number.
#[test]
fn the_trash_survives_fsck_dump_and_load() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "1"]);
    let m = v.mount();
    fs::write(m.p("kept"), pattern(300_000, 5)).unwrap();
    fs::write(m.p("deleted"), pattern(200_000, 6)).unwrap();
    fs::remove_file(m.p("deleted")).unwrap();
    m.unmount();
    let o = vecfs(&["fsck", &v.url], &[]);
    assert!(
        o.status.success(),
        "fsck of a volume with a trash: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );

    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("d.json");
    let o = vecfs(&["dump", &v.url, file.to_str().unwrap()], &[]);
    assert!(o.status.success(), "dump: {}", stderr(&o));
    let r2 = Redis::start();
    let url2 = r2.url(0);
    let o = vecfs(&["load", &url2, file.to_str().unwrap()], &[]);
    assert!(o.status.success(), "load: {}", stderr(&o));
    let v2 = loaded(&v, r2, url2.clone());
    let o = vecfs(&["fsck", &url2], &[]);
    assert!(
        o.status.success(),
        "fsck after load: {}{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );

    let mb = v2.mount();
    let hours: Vec<PathBuf> = fs::read_dir(mb.p(".trash"))
        .expect("no .trash after load")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(hours.len(), 1, "{hours:?}");
    let files: Vec<PathBuf> = fs::read_dir(&hours[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].to_string_lossy().ends_with("-deleted"),
        "{files:?}"
    );
    assert_eq!(fs::read(&files[0]).unwrap(), pattern(200_000, 6));
    assert_eq!(fs::read(mb.p("kept")).unwrap(), pattern(300_000, 5));
    fs::write(mb.p("new"), b"n").unwrap();
    let ino = fs::metadata(mb.p("new")).unwrap().ino();
    assert!(ino < 1 << 40, "the inode counter jumped to {ino}");
    mb.unmount();
}
