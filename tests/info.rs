//! `vecfs info` (issue 12): run on paths of a live mount, it finds the
//! volume by itself and lists a file's inode, chunks, slices and the object
//! keys behind it (each one in the store, with its stored size), and a
//! directory's recursive totals.

mod common;
mod maint_util;

use std::os::unix::fs::MetadataExt;

use common::{pattern, Redis, S3};
use maint_util::{run, run_json, Raw};

#[test]
fn info_shows_the_objects_behind_files_and_directory_totals() {
    let s3 = S3::start();
    let port = s3.port;
    let v = common::s3_volume(
        Redis::start(),
        s3,
        port,
        &["--block-size", "64K", "--inline-size", "0"],
    );
    let m = v.mount();
    std::fs::create_dir_all(m.p("db/seg1")).unwrap();
    std::fs::write(m.p("db/seg1/vectors"), pattern(200_000, 1)).unwrap();
    std::fs::write(m.p("db/seg1/ids"), pattern(70_000, 2)).unwrap();
    std::fs::write(m.p("db/top"), pattern(1_000, 3)).unwrap();
    let ino = std::fs::metadata(m.p("db/seg1/vectors")).unwrap().ino();
    let raw = Raw::new(&v);
    let stored = raw.objects();

    let path = m.p("db/seg1/vectors");
    let (ok, j) = run_json(&v, &["info", path.to_str().unwrap(), "--json"]);
    assert!(ok, "{j}");
    let f = &j[0];
    assert_eq!(f["inode"], ino, "{f}");
    assert_eq!(f["length"], 200_000, "{f}");
    assert_eq!(f["object_count"], 4, "{f}");
    let mut sum = 0;
    let mut keys = 0;
    for c in f["chunks"].as_array().unwrap() {
        for s in c["slices"].as_array().unwrap() {
            for o in s["objects"].as_array().unwrap() {
                let k = o["key"].as_str().unwrap();
                let size = stored
                    .get(k)
                    .unwrap_or_else(|| panic!("{k} not in the store"));
                assert_eq!(o["size"], *size);
                sum += size;
                keys += 1;
            }
        }
    }
    assert_eq!(keys, 4);
    assert_eq!(f["stored_bytes"], sum);

    // Human output names the keys.
    let (ok, out, err) = run(&v, &["info", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("inode: {ino}")), "{out}");
    assert!(out.contains("objects: 4"), "{out}");

    // A directory: recursive totals; stored bytes are the objects' sizes.
    let (ok, j) = run_json(&v, &["info", m.p("db").to_str().unwrap(), "--json"]);
    assert!(ok, "{j}");
    let t = &j[0]["totals"];
    assert_eq!(t["files"], 3, "{t}");
    assert_eq!(t["dirs"], 2, "{t}");
    assert_eq!(t["bytes"], 271_000, "{t}");
    assert_eq!(t["objects"], 4 + 2 + 1, "{t}");
    assert_eq!(t["stored_bytes"], stored.values().sum::<u64>(), "{t}");

    // Not a vecfs path; a missing path.
    let tmp = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(&v, &["info", tmp.path().to_str().unwrap()]);
    assert!(!ok && err.contains("is not on a vecfs mount"), "{err}");
    let (ok, _, err) = run(&v, &["info", m.p("nope").to_str().unwrap()]);
    assert!(!ok && err.contains("no such file"), "{err}");
    let (ok, out, _) = run(&v, &["info", "--help"]);
    assert!(ok && out.contains("Examples:"), "{out}");
    m.unmount();
}
