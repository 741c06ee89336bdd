//! `vecfs gc` (issue 12): objects no metadata names are found, and with
//! --delete removed, exactly them: stray objects uploaded under the
//! volume's prefix and the objects of a file whose chunk list was deleted
//! from Redis. Referenced objects, objects younger than the age window and
//! keys that are not block keys survive. Bad arguments get one-line errors.

mod common;
mod maint_util;

use std::os::unix::fs::MetadataExt;

use common::{pattern, Redis, S3};
use maint_util::{run, run_json, Raw};

/// A volume on moto with 64 KiB blocks, no inline data and no trash.
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

#[test]
fn gc_finds_and_deletes_exactly_the_leaked_objects() {
    let v = volume();
    let m = v.mount();
    std::fs::write(m.p("keep"), pattern(200_000, 1)).unwrap();
    std::fs::write(m.p("lose"), pattern(150_000, 2)).unwrap();
    let lose_ino = std::fs::metadata(m.p("lose")).unwrap().ino();
    m.unmount();
    let raw = Raw::new(&v);
    let before = raw.objects();
    // keep: 4 blocks, lose: 3 blocks.
    assert_eq!(before.len(), 7, "objects: {before:?}");

    // Damage: two stray block objects, a key that is no block key, and the
    // metadata of `lose` (its chunk list) gone.
    raw.put("testvol/chunks/3f/0/990001_0_1000", b"stray one");
    raw.put("testvol/chunks/40/0/990002_1_5", b"stray two");
    raw.put("testvol/chunks/notablock", b"foreign");
    let ck = format!("{{testvol}}c{lose_ino}_0");
    let recs: Vec<Vec<u8>> = raw.cmd(&[b"LRANGE", ck.as_bytes(), b"0", b"-1"]);
    let ids: Vec<u64> = recs
        .iter()
        .map(|r| vecfs::meta::Slice::decode(r).unwrap().id)
        .collect();
    let n: i64 = raw.cmd(&[b"DEL", ck.as_bytes()]);
    assert_eq!(n, 1, "the chunk key of `lose` was {ck}");
    let lost: Vec<String> = before
        .keys()
        .filter(|k| vecfs::object::parse_block_key(k).is_some_and(|(id, _, _)| ids.contains(&id)))
        .cloned()
        .collect();
    assert_eq!(lost.len(), 3, "blocks of `lose`: {before:?}");

    // Listing changes nothing.
    let (ok, r) = run_json(&v, &["gc", &v.url, "--min-age", "0", "--json"]);
    assert!(ok, "{r}");
    assert_eq!(r["listed"]["objects"], 10, "{r}");
    assert_eq!(r["leaked"]["objects"], 5, "{r}");
    assert_eq!(r["referenced"]["objects"], 4, "{r}");
    assert_eq!(r["foreign"]["objects"], 1, "{r}");
    assert_eq!(r["deleted"]["objects"], 0, "{r}");
    assert_eq!(raw.objects().len(), 10);

    // --delete removes exactly the leaked ones.
    let (ok, r) = run_json(&v, &["gc", &v.url, "--delete", "--min-age", "0", "--json"]);
    assert!(ok, "{r}");
    assert_eq!(r["deleted"]["objects"], 5, "{r}");
    let after = raw.objects();
    let mut want: Vec<String> = before
        .keys()
        .filter(|k| !lost.contains(k))
        .cloned()
        .collect();
    want.push("testvol/chunks/notablock".into());
    want.sort();
    assert_eq!(after.keys().cloned().collect::<Vec<_>>(), want);

    // The surviving file reads back whole.
    let m = v.mount();
    assert_eq!(std::fs::read(m.p("keep")).unwrap(), pattern(200_000, 1));
    m.unmount();

    // A fresh stray is younger than the default window (1 h): kept.
    raw.put("testvol/chunks/41/0/990003_0_9", b"in flight");
    let (ok, r) = run_json(&v, &["gc", &v.url, "--delete", "--json"]);
    assert!(ok, "{r}");
    assert_eq!(r["young"]["objects"], 1, "{r}");
    assert_eq!(r["deleted"]["objects"], 0, "{r}");
    assert!(raw.objects().contains_key("testvol/chunks/41/0/990003_0_9"));

    // Human output names the leaked keys and the counts.
    let (ok, out, _) = run(&v, &["gc", &v.url, "--min-age", "0"]);
    assert!(ok);
    assert!(
        out.contains("leaked: testvol/chunks/41/0/990003_0_9"),
        "{out}"
    );
    assert!(out.contains("1 leaked"), "{out}");
}

#[test]
fn gc_deferred_deletions_and_bad_arguments() {
    let v = volume();
    // A mount whose deleter waits an hour: the deleted file stays queued.
    let m = v.mount_with(&["--delete-delay", "3600"]);
    std::fs::write(m.p("gone"), pattern(100_000, 3)).unwrap();
    std::fs::remove_file(m.p("gone")).unwrap();
    m.unmount();
    let raw = Raw::new(&v);
    assert_eq!(raw.objects().len(), 2);
    // Not due under the mounts' delay: reported pending, objects kept.
    let (ok, r) = run_json(
        &v,
        &[
            "gc",
            &v.url,
            "--delete",
            "--min-age",
            "0",
            "--delete-delay",
            "3600",
            "--json",
        ],
    );
    assert!(ok, "{r}");
    assert_eq!(r["pending_files"], 1, "{r}");
    assert_eq!(r["pending_file_bytes"], 100_000, "{r}");
    assert_eq!(r["leaked"]["objects"], 0, "{r}");
    assert_eq!(raw.objects().len(), 2);
    // Due: gc finishes it.
    let (ok, r) = run_json(
        &v,
        &[
            "gc",
            &v.url,
            "--min-age",
            "0",
            "--delete-delay",
            "0",
            "--json",
        ],
    );
    assert!(ok, "{r}");
    assert_eq!(r["finished_files"], 1, "{r}");
    assert_eq!(r["pending_files"], 0, "{r}");
    assert!(raw.objects().is_empty(), "{:?}", raw.objects());

    // Bad arguments: one line each, no panic.
    for (args, want) in [
        (
            vec!["gc", "redis://127.0.0.1:1/1"],
            "cannot connect to Redis",
        ),
        (vec!["gc", &v.url, "--name", "nosuch"], "nosuch"),
        (vec!["gc", &v.url, "--min-age", "soon"], "duration"),
        (vec!["gc", "bogus://x"], "bogus"),
    ] {
        let (ok, _, err) = run(&v, &args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let (ok, out, _) = run(&v, &["gc", "--help"]);
    assert!(
        ok && out.contains("Examples:") && out.contains("--delete"),
        "{out}"
    );
}

/// A walk of the volume's keys (gc's referenced slices, fsck, dump) that
/// outlives its server, as in a failover or a restart, fails instead of
/// ending early: the old cursor means nothing to the new server, and a walk
/// that looked complete would let gc take every object it did not see named
/// for leaked. Before, the walk simply ended with what it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_walk_across_a_server_change_fails_instead_of_ending_short() {
    use vecfs::maintenance::scan::KeyScan;
    let redis = Redis::start();
    let fill = "for i = 1, 5000 do redis.call('SET', '{walk}c1_' .. i, 'x') end";
    redis.cli(&["-n", "1", "EVAL", fill, "0"]);
    let url = vecfs::meta::url::parse(&redis.url(1)).unwrap();
    let meta = vecfs::meta::Meta::connect(&url, "walk").await.unwrap();
    let mut walk = KeyScan::new(&meta, "c");
    let mut seen = walk.next_batch().await.unwrap().unwrap().len();
    redis.stop();
    redis.restart();
    // The restarted server has none of the keys (no persistence here), so
    // a walk that went on would end at once, complete in appearance.
    let end = loop {
        match walk.next_batch().await {
            Ok(Some(keys)) => seen += keys.len(),
            other => break other,
        }
    };
    let err = end.expect_err("the walk ended as if complete after its server changed");
    assert!(
        err.to_string().contains("changed during a walk"),
        "unexpected error: {err}"
    );
    assert!(
        seen < 5000,
        "the walk saw every key before the restart: {seen}"
    );
}

/// As above for a walk over one sorted set (gc's and fsck's read of the
/// deletion queues, dump's too) or hash (dump's directories): ZSCAN and
/// HSCAN cursors are as meaningless to another server as SCAN's.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_walk_across_a_server_change_fails_instead_of_ending_short() {
    use vecfs::maintenance::scan::MemberScan;
    // Kept across the restart: the old cursor meets a full set again.
    let redis = Redis::start_aof();
    let fill = "for i = 1, 5000 do redis.call('ZADD', '{walk}delslices', i, 'm' .. i) end";
    redis.cli(&["-n", "1", "EVAL", fill, "0"]);
    let url = vecfs::meta::url::parse(&redis.url(1)).unwrap();
    let meta = vecfs::meta::Meta::connect(&url, "walk").await.unwrap();
    let mut walk = MemberScan::zset(&meta, "delslices");
    let mut seen = walk.next_page().await.unwrap().unwrap().len() / 2;
    assert!(seen > 0, "the first page has members");
    redis.stop();
    redis.restart();
    let end = loop {
        match walk.next_page().await {
            Ok(Some(flat)) => seen += flat.len() / 2,
            other => break other,
        }
    };
    let err = end.expect_err("the walk ended as if complete after its server changed");
    assert!(
        err.to_string().contains("changed during a walk"),
        "unexpected error: {err}"
    );
    assert!(seen < 5000, "the walk saw every member before the restart");
}
