//! Differential test: one seeded random sequence of file operations applied to
//! a vecfs mount and to a local directory; after every step the results
//! (errno included) and the whole trees (names, types, sizes, modes, link
//! counts, symlink targets, contents) must agree. The same run goes on across
//! an unmount and a remount, proving persistence. Set VECFS_DIFF_SEED to
//! replay a failing seed; the seed is printed with every failure. A
//! concurrent variant runs an appender, a lister and mutators on one mount
//! at once, each mutator in its own subtree so the model stays exact.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{abort_mount, within, Rng, Storage, Volume};

#[derive(Debug, PartialEq)]
enum Node {
    Dir {
        mode: u32,
        nlink: u64,
    },
    File {
        mode: u32,
        nlink: u64,
        size: u64,
        hash: u64,
    },
    Link {
        target: PathBuf,
    },
}

fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in fs::read_dir(&dir).expect("read_dir") {
            let e = e.expect("dir entry");
            let rel = rel.join(e.file_name());
            let p = root.join(&rel);
            let md = fs::symlink_metadata(&p).expect("lstat");
            let node = if md.file_type().is_symlink() {
                Node::Link {
                    target: fs::read_link(&p).expect("readlink"),
                }
            } else if md.is_dir() {
                stack.push(rel.clone());
                Node::Dir {
                    mode: md.mode(),
                    nlink: md.nlink(),
                }
            } else {
                Node::File {
                    mode: md.mode(),
                    nlink: md.nlink(),
                    size: md.len(),
                    hash: hash(&fs::read(&p).expect("read")),
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

fn errno<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

/// Picks a path: an existing directory of the local tree plus a name from a
/// small pool, so operations often hit existing entries.
fn pick(rng: &mut Rng, local: &Path) -> PathBuf {
    let mut dirs = vec![PathBuf::new()];
    for (p, n) in snapshot(local) {
        if matches!(n, Node::Dir { .. }) {
            dirs.push(p);
        }
    }
    let d = dirs[rng.below(dirs.len() as u64) as usize].clone();
    let names = ["a", "b", "c", "d", "e", "seg", "idx", "dir1", "dir2"];
    d.join(names[rng.below(names.len() as u64) as usize])
}

/// Applies one random operation to `root`; the same rng state gives the same op.
fn apply(op: u64, rng: &mut Rng, root: &Path, a: &Path, b: &Path) -> String {
    let (pa, pb) = (root.join(a), root.join(b));
    let r: Result<String, i32> = match op {
        0 | 1 => {
            let n = rng.below(300_000) as usize;
            let data = rng.bytes(n);
            errno(fs::write(&pa, &data)).map(|_| format!("create {}", data.len()))
        }
        2 | 3 => {
            let off = rng.below(400_000);
            let n = 1 + rng.below(200_000) as usize;
            let data = rng.bytes(n);
            errno(OpenOptions::new().write(true).open(&pa))
                .and_then(|f| errno(f.write_all_at(&data, off)))
                .map(|_| format!("write {off}+{}", data.len()))
        }
        4 => {
            let len = rng.below(500_000);
            errno(OpenOptions::new().write(true).open(&pa))
                .and_then(|f| errno(f.set_len(len)))
                .map(|_| format!("truncate {len}"))
        }
        5 => errno(fs::rename(&pa, &pb)).map(|_| "rename".into()),
        6 => errno(fs::remove_file(&pa)).map(|_| "unlink".into()),
        7 => errno(fs::create_dir(&pa)).map(|_| "mkdir".into()),
        8 => errno(fs::remove_dir(&pa)).map(|_| "rmdir".into()),
        9 => errno(fs::hard_link(&pa, &pb)).map(|_| "link".into()),
        10 => errno(std::os::unix::fs::symlink(b, &pa)).map(|_| "symlink".into()),
        _ => {
            let off = rng.below(400_000);
            let mut buf = vec![0u8; 1 + rng.below(100_000) as usize];
            errno(fs::File::open(&pa))
                .and_then(|f| errno(f.read_at(&mut buf, off)))
                .map(|n| format!("read {} hash {}", n, hash(&buf[..n])))
        }
    };
    match r {
        Ok(s) => s,
        Err(e) => format!("errno {e}"),
    }
}

fn run(seed: u64, steps: usize, storage: Storage) {
    println!("differential seed={seed} (replay with VECFS_DIFF_SEED={seed})");
    let v = Volume::new(storage);
    let mut m = v.mount();
    let local_dir = tempfile::tempdir().expect("tempdir");
    let local = local_dir.path().join("ref");
    fs::create_dir(&local).expect("mkdir");
    let mut rng = Rng(seed | 1);
    let mut succeeded = 0;
    for step in 0..steps {
        if step == steps / 2 {
            m.unmount();
            m = v.mount();
            assert_eq!(
                snapshot(&local),
                snapshot(&m.path),
                "seed {seed}: trees differ after remount"
            );
        }
        let op = rng.below(12);
        let a = pick(&mut rng, &local);
        let b = pick(&mut rng, &local);
        // Each side gets an identical copy of the rng for the op's own draws.
        let mut r1 = Rng(rng.next() | 1);
        let mut r2 = Rng(r1.0);
        let got_local = apply(op, &mut r1, &local, &a, &b);
        let got_vecfs = apply(op, &mut r2, &m.path, &a, &b);
        assert_eq!(
            got_local, got_vecfs,
            "seed {seed} step {step}: op {op} on {a:?} {b:?} differs"
        );
        if !got_local.starts_with("errno") {
            succeeded += 1;
        }
        let (sl, sv) = (snapshot(&local), snapshot(&m.path));
        if sl != sv {
            for (k, n) in &sl {
                if sv.get(k) != Some(n) {
                    println!("local {k:?}: {n:?} / vecfs: {:?}", sv.get(k));
                }
            }
            for k in sv.keys().filter(|k| !sl.contains_key(*k)) {
                println!("only in vecfs: {k:?}");
            }
            panic!("seed {seed} step {step}: trees differ after op {op} ({got_local})");
        }
    }
    println!("seed {seed}: {succeeded} of {steps} operations succeeded");
    assert!(
        succeeded * 4 > steps,
        "seed {seed}: too few operations succeeded to prove anything"
    );
    m.unmount();
}

fn seed() -> u64 {
    std::env::var("VECFS_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        })
}

#[test]
fn random_operations_match_a_local_directory() {
    run(seed(), 400, Storage::File);
}

#[test]
fn fixed_seed_on_s3_matches_a_local_directory() {
    run(20261126, 200, Storage::S3);
}

/// Lists the first differences between two snapshots.
fn diff(sl: &BTreeMap<PathBuf, Node>, sv: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, n) in sl {
        if sv.get(k) != Some(n) {
            out.push(format!("local {k:?}: {n:?} / vecfs: {:?}", sv.get(k)));
        }
    }
    for k in sv.keys().filter(|k| !sl.contains_key(*k)) {
        out.push(format!("only in vecfs: {k:?}"));
    }
    out.truncate(10);
    out
}

const MUTATORS: u64 = 3;

/// Several threads on one mount at once, each applying every operation to
/// the model (a local directory) too: one appends records to a shared log
/// (open O_APPEND, write, close), one lists the top directory and each
/// mutator's directory with an lstat of every entry (`ls -l`), and the
/// mutators run the random operations above, each in its own subtree so
/// the model stays exact. Each mutator's results must match op by op; the
/// log's size as listed never shrinks nor runs ahead of what was appended;
/// at the end, and after a remount, the whole tree equals the model.
#[test]
fn concurrent_operations_match_a_local_directory() {
    const APPENDS: usize = 1_500;
    const STEPS: usize = 300;
    let seed = seed();
    println!("concurrent differential seed={seed} (replay with VECFS_DIFF_SEED={seed})");
    let v = Volume::new(Storage::File);
    let mut m = v.mount();
    let local_dir = tempfile::tempdir().expect("tempdir");
    let local = local_dir.path().join("ref");
    fs::create_dir(&local).expect("mkdir");
    for root in [&local, &m.path] {
        fs::write(root.join("log"), b"").unwrap();
        for k in 0..MUTATORS {
            fs::create_dir(root.join(format!("mut{k}"))).unwrap();
        }
    }
    let (mp, lp) = (m.path.clone(), local.clone());
    let (pid, path) = (m.pid(), m.path.clone());
    let problems = within(
        "concurrent differential",
        Duration::from_secs(400),
        move || abort_mount(pid, &path),
        move || {
            // Bytes of the log whose append has started (the most a listing may see).
            let started = AtomicU64::new(0);
            std::thread::scope(|s| {
                let (mp, lp, started) = (&mp, &lp, &started);
                let appender = s.spawn(move || {
                    let mut rng = Rng((seed ^ 0xa99e7d) | 1);
                    let mut bad = Vec::new();
                    let mut len = 0u64;
                    for i in 0..APPENDS {
                        let n = 1 + rng.below(200) as usize;
                        let data = rng.bytes(n);
                        len += data.len() as u64;
                        started.store(len, Ordering::Release);
                        for root in [lp, mp] {
                            let r = OpenOptions::new()
                                .append(true)
                                .open(root.join("log"))
                                .and_then(|mut f| std::io::Write::write_all(&mut f, &data));
                            if let Err(e) = r {
                                bad.push(format!("append {i} to {root:?}: {e}"));
                            }
                        }
                        // Own writes are visible on the writing node at once.
                        let seen = fs::metadata(mp.join("log")).map(|md| md.len());
                        if seen.as_ref().ok() != Some(&len) && bad.len() < 10 {
                            bad.push(format!("after append {i}: stat {seen:?}, appended {len}"));
                        }
                    }
                    bad
                });
                let mutators: Vec<_> = (0..MUTATORS)
                    .map(|k| {
                        s.spawn(move || {
                            let (l, r) = (lp.join(format!("mut{k}")), mp.join(format!("mut{k}")));
                            let mut rng = Rng((seed.wrapping_add(k * 0x9e37_79b9)) | 1);
                            let mut bad = Vec::new();
                            for step in 0..STEPS {
                                let op = rng.below(12);
                                let a = pick(&mut rng, &l);
                                let b = pick(&mut rng, &l);
                                let mut r1 = Rng(rng.next() | 1);
                                let mut r2 = Rng(r1.0);
                                let got_local = apply(op, &mut r1, &l, &a, &b);
                                let got_vecfs = apply(op, &mut r2, &r, &a, &b);
                                if got_local != got_vecfs {
                                    bad.push(format!(
                                        "mut{k} step {step}: op {op} on {a:?} {b:?}: \
                                         local {got_local} / vecfs {got_vecfs}"
                                    ));
                                    break;
                                }
                                if step % 25 == 24 || step == STEPS - 1 {
                                    let d = diff(&snapshot(&l), &snapshot(&r));
                                    if !d.is_empty() {
                                        bad.push(format!("mut{k} step {step}: {d:#?}"));
                                        break;
                                    }
                                }
                            }
                            bad
                        })
                    })
                    .collect();
                // The lister: `ls -l` of the top and of every mutator's directory.
                let mut bad = Vec::new();
                let (mut listings, mut last_log) = (0u64, 0u64);
                let deadline = Instant::now() + Duration::from_secs(300);
                let running =
                    || !appender.is_finished() || mutators.iter().any(|t| !t.is_finished());
                while running() && Instant::now() < deadline {
                    let mut dirs = vec![mp.to_path_buf()];
                    dirs.extend((0..MUTATORS).map(|k| mp.join(format!("mut{k}"))));
                    for d in dirs {
                        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                            let Ok(md) = e.metadata() else { continue };
                            if d == *mp && e.file_name() == "log" {
                                let most = started.load(Ordering::Acquire);
                                if md.len() < last_log && bad.len() < 10 {
                                    bad.push(format!("log shrank: {last_log} -> {}", md.len()));
                                }
                                if md.len() > most && bad.len() < 10 {
                                    bad.push(format!("log {} > appended {most}", md.len()));
                                }
                                last_log = last_log.max(md.len());
                            }
                        }
                    }
                    listings += 1;
                }
                println!("{listings} listings during the run");
                bad.extend(appender.join().unwrap());
                for t in mutators {
                    bad.extend(t.join().unwrap());
                }
                bad
            })
        },
    );
    assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    let d = diff(&snapshot(&local), &snapshot(&m.path));
    assert!(d.is_empty(), "seed {seed}: trees differ at the end: {d:#?}");
    m.unmount();
    m = v.mount();
    let d = diff(&snapshot(&local), &snapshot(&m.path));
    assert!(
        d.is_empty(),
        "seed {seed}: trees differ after remount: {d:#?}"
    );
    m.unmount();
}
