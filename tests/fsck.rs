//! `vecfs fsck` (issue 12): a clean volume reports no problem; a dangling
//! directory entry, a wrong link count and an orphan inode are reported,
//! repaired by --repair (after which fsck is clean and the mount works),
//! and a missing or corrupt object is reported (never "repaired"), also
//! when only the subtree holding it is checked.

mod common;
mod maint_util;

use std::os::unix::fs::MetadataExt;

use common::{pattern, Redis, S3};
use maint_util::{run, Raw};

fn volume() -> common::Volume {
    let s3 = S3::start();
    let port = s3.port;
    common::s3_volume(
        Redis::start(),
        s3,
        port,
        &[
            "--block-size",
            "64K",
            "--inline-size",
            "0",
            "--trash-days",
            "0",
        ],
    )
}

/// fsck's verdict: (exit ok, stdout).
fn fsck(v: &common::Volume, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["fsck", v.url.as_str()];
    args.extend_from_slice(extra);
    let (ok, out, err) = run(v, &args);
    assert!(!err.contains("panicked"), "{err}");
    (ok, out)
}

#[test]
fn fsck_finds_and_repairs_broken_metadata() {
    let v = volume();
    let m = v.mount();
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::create_dir(m.p("d/sub")).unwrap();
    std::fs::write(m.p("d/f"), pattern(200_000, 1)).unwrap();
    std::fs::hard_link(m.p("d/f"), m.p("d/f2")).unwrap();
    std::fs::write(m.p("g"), pattern(70_000, 2)).unwrap();
    std::fs::write(m.p("o"), pattern(10_000, 3)).unwrap();
    std::os::unix::fs::symlink("d/f", m.p("ln")).unwrap();
    let g = std::fs::metadata(m.p("g")).unwrap().ino();
    let o = std::fs::metadata(m.p("o")).unwrap().ino();
    m.unmount();

    let (ok, out) = fsck(&v, &[]);
    assert!(ok, "{out}");
    assert!(out.contains(": 0 problems"), "{out}");

    let raw = Raw::new(&v);
    // A dangling entry, a wrong link count, an orphan inode (entry gone).
    let mut entry = vec![1u8];
    entry.extend_from_slice(&999_999u64.to_le_bytes());
    let _: i64 = raw.cmd(&[b"HSET", b"{testvol}d1", b"ghost", &entry]);
    let gi = format!("{{testvol}}i{g}");
    let _: i64 = raw.cmd(&[b"SETRANGE", gi.as_bytes(), b"48", &5u32.to_le_bytes()]);
    let n: i64 = raw.cmd(&[b"HDEL", b"{testvol}d1", b"o"]);
    assert_eq!(n, 1);

    let (ok, out) = fsck(&v, &[]);
    assert!(!ok, "fsck passed a broken volume: {out}");
    assert!(
        out.contains("entry 'ghost' points at missing inode 999999"),
        "{out}"
    );
    assert!(
        out.contains(&format!("inode {g} (File): nlink 5 but 1")),
        "{out}"
    );
    assert!(
        out.contains(&format!("inode {o} (File, nlink 1) has no directory entry")),
        "{out}"
    );
    // Checking changed nothing.
    let (ok, _) = fsck(&v, &[]);
    assert!(!ok);

    let (ok, out) = fsck(&v, &["--repair"]);
    assert!(ok, "{out}");
    assert!(out.contains("repaired: dropped entry 'ghost'"), "{out}");
    assert!(
        out.contains(&format!("repaired: inode {g}: nlink 5 -> 1")),
        "{out}"
    );
    assert!(
        out.contains(&format!("repaired: inode {o}: moved to /lost+found")),
        "{out}"
    );
    let (ok, out) = fsck(&v, &[]);
    assert!(ok, "{out}");
    assert!(out.contains(": 0 problems"), "{out}");

    // The mount works: the ghost is gone, the orphan is in lost+found, the
    // file with the fixed count can be removed, hard links read.
    let m = v.mount();
    let names: Vec<String> = std::fs::read_dir(m.path.clone())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.contains(&"ghost".to_string()), "{names:?}");
    assert_eq!(
        std::fs::read(m.p(&format!("lost+found/ino-{o}"))).unwrap(),
        pattern(10_000, 3)
    );
    assert_eq!(std::fs::metadata(m.p("g")).unwrap().nlink(), 1);
    std::fs::remove_file(m.p("g")).unwrap();
    assert_eq!(std::fs::read(m.p("d/f2")).unwrap(), pattern(200_000, 1));
    m.unmount();
    let (ok, out) = fsck(&v, &[]);
    assert!(ok, "{out}");
}

#[test]
fn fsck_reports_missing_and_corrupt_objects() {
    let v = volume();
    let m = v.mount();
    std::fs::create_dir(m.p("a")).unwrap();
    std::fs::write(m.p("a/f"), pattern(150_000, 1)).unwrap();
    std::fs::write(m.p("b"), pattern(100_000, 2)).unwrap();
    let f = std::fs::metadata(m.p("a/f")).unwrap().ino();
    let b = std::fs::metadata(m.p("b")).unwrap().ino();
    m.unmount();
    let raw = Raw::new(&v);
    let (ok, out) = fsck(&v, &["--check-data"]);
    assert!(ok, "{out}");
    assert!(out.contains("(data verified): 0 problems"), "{out}");

    let slice_keys = |ino: u64| -> Vec<String> {
        let ck = format!("{{testvol}}c{ino}_0");
        let recs: Vec<Vec<u8>> = raw.cmd(&[b"LRANGE", ck.as_bytes(), b"0", b"-1"]);
        let ids: Vec<u64> = recs
            .iter()
            .map(|r| vecfs::meta::Slice::decode(r).unwrap().id)
            .collect();
        raw.objects()
            .into_keys()
            .filter(|k| {
                vecfs::object::parse_block_key(k).is_some_and(|(id, _, _)| ids.contains(&id))
            })
            .collect()
    };
    let fkeys = slice_keys(f);
    let bkeys = slice_keys(b);
    assert_eq!((fkeys.len(), bkeys.len()), (3, 2));

    // A missing object of a/f.
    raw.delete(&fkeys[1]);
    let (ok, out) = fsck(&v, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("inode {f}: object {} is missing", fkeys[1])),
        "{out}"
    );
    assert!(out.contains(": 1 problems"), "{out}");
    // --repair cannot bring data back: still failing.
    let (ok, out) = fsck(&v, &["--repair"]);
    assert!(!ok, "{out}");
    // Only the subtree holding it: still found; another subtree is clean.
    let (ok, out) = fsck(&v, &["--path", "/a"]);
    assert!(!ok && out.contains("is missing"), "{out}");

    // A corrupt object of b: only --check-data sees it.
    raw.put(&bkeys[0], &vec![7u8; 1000]);
    let (_, out) = fsck(&v, &[]);
    assert!(!out.contains(&bkeys[0]), "{out}");
    let (ok, out) = fsck(&v, &["--check-data"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("inode {b}: object {} is corrupt", bkeys[0])),
        "{out}"
    );

    // Bad arguments.
    let (ok, _, err) = run(&v, &["fsck", &v.url, "--path", "/nope"]);
    assert!(!ok && err.contains("--path /nope"), "{err}");
    let (ok, out, _) = run(&v, &["fsck", "--help"]);
    assert!(
        ok && out.contains("Examples:") && out.contains("--repair"),
        "{out}"
    );
}

/// A live mount with an unlinked file still open (its inode has no entry
/// and nlink 0, held by the session) and a directory tree: no problem, and
/// --repair touches nothing.
#[test]
fn fsck_is_clean_on_a_live_volume_with_an_open_unlinked_file() {
    let v = volume();
    let m = v.mount();
    std::fs::create_dir_all(m.p("x/y/z")).unwrap();
    std::fs::write(m.p("x/y/z/f"), pattern(100_000, 1)).unwrap();
    std::fs::write(m.p("held"), pattern(80_000, 2)).unwrap();
    let f = std::fs::File::open(m.p("held")).unwrap();
    std::fs::remove_file(m.p("held")).unwrap();
    let (ok, out) = fsck(&v, &["--repair"]);
    assert!(ok, "{out}");
    assert!(out.contains(": 0 problems, 0 repaired"), "{out}");
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut buf).unwrap();
    assert_eq!(buf, pattern(80_000, 2));
    drop(f);
    m.unmount();
    let (ok, out) = fsck(&v, &[]);
    assert!(ok, "{out}");
}
