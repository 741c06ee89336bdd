//! A long mixed run (issue 10): two mounts of one volume (Redis with its
//! append-only file; moto behind the HTTP fault proxy), several workers
//! per mount doing a seeded random mix of create, write, append,
//! overwrite, truncate, rename, unlink, mkdir, rmdir, readdir, stat and
//! read, each in its own subtree so its model of that subtree is exact.
//! Every result is checked against the model on the worker's own mount at
//! once, and every file a worker closes is read on the other mount too
//! (close-to-open). In the middle the store fails for a while (503s,
//! resets, cut bodies) and Redis restarts once; no operation may fail and
//! no byte may differ. Each daemon's RSS is sampled every 10 s and must
//! stay within --mem-cache-size + --buffer-size + 200 MiB.
//!
//! VECFS_LONG_SECS sets the length (default 300 s, what CI runs);
//! VECFS_LONG_SEED replays a run; VECFS_LONG_WORKERS sets workers per mount.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::httpfault::{Fault, HttpFault, Rule};
use common::{abort_mount, close, within, Mount, Redis, Rng, S3};

const MEM_CACHE_MIB: u64 = 64;
const BUFFER_MIB: u64 = 64;
/// How long another mount may take to show a closed file: its kernel
/// entry cache (1 s) and, after the Redis restart cut its change events,
/// its metadata cache TTL (10 s), with slack.
const CONVERGE: Duration = Duration::from_secs(20);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// `--meta-timeout SECS` when this vecfs has the option (metadata calls
/// retried across a Redis restart), else nothing: the run then shows what
/// an application sees without it.
fn meta_timeout_args() -> Vec<String> {
    let help = Command::new(common::VECFS)
        .args(["mount", "--help"])
        .output()
        .expect("vecfs mount --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    if help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
        .any(|w| w == "--meta-timeout")
    {
        vec!["--meta-timeout".into(), "30".into()]
    } else {
        println!("note: `vecfs mount` has no --meta-timeout; metadata calls are not retried");
        Vec::new()
    }
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Dir,
    File(Vec<u8>),
}

struct Shared {
    start: Instant,
    /// What went wrong: when, which worker, what.
    problems: Mutex<Vec<String>>,
    /// Closed files another mount showed only after a retry (stale entry
    /// or attribute caches), with when: information, not failures.
    late: Mutex<Vec<String>>,
    ops: AtomicU64,
    cross_checks: AtomicU64,
    max_op_ms: AtomicU64,
}

impl Shared {
    fn problem(&self, who: &str, what: String) {
        let at = self.start.elapsed();
        println!("PROBLEM at {at:.1?} {who}: {what}");
        self.problems
            .lock()
            .unwrap()
            .push(format!("{at:.1?} {who}: {what}"));
    }
}

struct Worker {
    who: String,
    mine: PathBuf,
    other: PathBuf,
    model: BTreeMap<String, Entry>,
    rng: Rng,
    sh: Arc<Shared>,
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Worker {
    fn dirs(&self) -> Vec<String> {
        let mut d = vec![String::new()];
        d.extend(
            self.model
                .iter()
                .filter(|(_, e)| **e == Entry::Dir)
                .map(|(k, _)| k.clone()),
        );
        d
    }

    fn files(&self) -> Vec<String> {
        self.model
            .iter()
            .filter(|(_, e)| matches!(e, Entry::File(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        (!v.is_empty()).then(|| v[self.rng.below(v.len() as u64) as usize].clone())
    }

    /// A file path in an existing directory, taken or not.
    fn file_path(&mut self) -> String {
        let dirs = self.dirs();
        let d = self.pick(&dirs).unwrap_or_default();
        join(&d, &format!("f{}", self.rng.below(5)))
    }

    /// Mostly small files, some of several blocks; random or compressible.
    fn data(&mut self) -> Vec<u8> {
        let n = match self.rng.below(100) {
            0..=59 => self.rng.below(64 << 10),
            60..=94 => self.rng.below(1 << 20),
            _ => self.rng.below(3 << 20),
        } as usize;
        if self.rng.below(3) == 0 {
            let mut r = Rng(self.rng.next() | 1);
            (0..n).map(|_| (r.below(8) * 16) as u8).collect()
        } else {
            self.rng.bytes(n)
        }
    }

    fn file(&self, rel: &str) -> Vec<u8> {
        match self.model.get(rel) {
            Some(Entry::File(d)) => d.clone(),
            _ => Vec::new(),
        }
    }

    /// One random operation, applied to the mount and the model, with its
    /// result checked. Returns false after a failure (the model may no
    /// longer be exact, so the worker stops).
    fn step(&mut self) -> bool {
        let t = Instant::now();
        let choice = self.rng.below(100);
        let files = self.files();
        let r: Result<(String, Option<String>), String> = match choice {
            0..=19 => {
                let rel = self.file_path();
                if self.model.get(&rel) == Some(&Entry::Dir) {
                    return true;
                }
                let data = self.data();
                let res = (|| {
                    let mut f = File::create(self.mine.join(&rel))?;
                    f.write_all(&data)?;
                    close(f)
                })();
                self.model.insert(rel.clone(), Entry::File(data.clone()));
                res.map(|_| (format!("create {rel} {}", data.len()), Some(rel.clone())))
                    .map_err(|e| format!("create {rel} ({} bytes): {e}", data.len()))
            }
            20..=44 => {
                let Some(rel) = self.pick(&files) else {
                    return true;
                };
                let mut cur = self.file(&rel);
                let off = self.rng.below(cur.len() as u64 + (256 << 10));
                let n = self.rng.below(512 << 10) as usize;
                let data = self.rng.bytes(n);
                let res = (|| {
                    let f = OpenOptions::new().write(true).open(self.mine.join(&rel))?;
                    f.write_all_at(&data, off)?;
                    close(f)
                })();
                if n > 0 {
                    let end = off as usize + n;
                    if cur.len() < end {
                        cur.resize(end, 0);
                    }
                    cur[off as usize..end].copy_from_slice(&data);
                }
                self.model.insert(rel.clone(), Entry::File(cur));
                res.map(|_| (format!("write {rel} {off}+{n}"), Some(rel.clone())))
                    .map_err(|e| format!("write {rel} {off}+{n}: {e}"))
            }
            45..=54 => {
                let Some(rel) = self.pick(&files) else {
                    return true;
                };
                let n = self.rng.below(64 << 10) as usize;
                let data = self.rng.bytes(n);
                let res = (|| {
                    let mut f = OpenOptions::new().append(true).open(self.mine.join(&rel))?;
                    f.write_all(&data)?;
                    close(f)
                })();
                let mut cur = self.file(&rel);
                cur.extend_from_slice(&data);
                self.model.insert(rel.clone(), Entry::File(cur));
                res.map(|_| (format!("append {rel} {n}"), Some(rel.clone())))
                    .map_err(|e| format!("append {rel} {n}: {e}"))
            }
            55..=61 => {
                let Some(rel) = self.pick(&files) else {
                    return true;
                };
                let mut cur = self.file(&rel);
                let len = self.rng.below(cur.len() as u64 + (128 << 10));
                let res = (|| {
                    let f = OpenOptions::new().write(true).open(self.mine.join(&rel))?;
                    f.set_len(len)?;
                    close(f)
                })();
                cur.resize(len as usize, 0);
                self.model.insert(rel.clone(), Entry::File(cur));
                res.map(|_| (format!("truncate {rel} {len}"), Some(rel.clone())))
                    .map_err(|e| format!("truncate {rel} {len}: {e}"))
            }
            62..=68 => {
                let Some(from) = self.pick(&files) else {
                    return true;
                };
                let to = self.file_path();
                if to == from || self.model.get(&to) == Some(&Entry::Dir) {
                    return true;
                }
                let res = fs::rename(self.mine.join(&from), self.mine.join(&to));
                if let Some(e) = self.model.remove(&from) {
                    self.model.insert(to.clone(), e);
                }
                res.map(|_| (format!("rename {from} -> {to}"), Some(to.clone())))
                    .map_err(|e| format!("rename {from} -> {to}: {e}"))
            }
            69..=70 => {
                let dirs: Vec<String> = self.dirs().into_iter().skip(1).collect();
                let Some(from) = self.pick(&dirs) else {
                    return true;
                };
                let to = format!("d{}", self.rng.below(6));
                if self.model.contains_key(&to) {
                    return true;
                }
                let res = fs::rename(self.mine.join(&from), self.mine.join(&to));
                let moved: Vec<String> = self
                    .model
                    .keys()
                    .filter(|k| **k == from || k.starts_with(&format!("{from}/")))
                    .cloned()
                    .collect();
                for k in moved {
                    let e = self.model.remove(&k).unwrap_or(Entry::Dir);
                    self.model.insert(format!("{to}{}", &k[from.len()..]), e);
                }
                res.map(|_| (format!("rename dir {from} -> {to}"), None))
                    .map_err(|e| format!("rename dir {from} -> {to}: {e}"))
            }
            71..=77 => {
                let Some(rel) = self.pick(&files) else {
                    return true;
                };
                let res = fs::remove_file(self.mine.join(&rel));
                self.model.remove(&rel);
                res.map(|_| (format!("unlink {rel}"), None))
                    .map_err(|e| format!("unlink {rel}: {e}"))
            }
            78..=80 => {
                let to = format!("d{}", self.rng.below(6));
                if self.model.contains_key(&to) || self.dirs().len() > 3 {
                    return true;
                }
                let res = fs::create_dir(self.mine.join(&to));
                self.model.insert(to.clone(), Entry::Dir);
                res.map(|_| (format!("mkdir {to}"), None))
                    .map_err(|e| format!("mkdir {to}: {e}"))
            }
            81..=82 => {
                let empty: Vec<String> = self
                    .dirs()
                    .into_iter()
                    .skip(1)
                    .filter(|d| !self.model.keys().any(|k| k.starts_with(&format!("{d}/"))))
                    .collect();
                let Some(d) = self.pick(&empty) else {
                    return true;
                };
                let res = fs::remove_dir(self.mine.join(&d));
                self.model.remove(&d);
                res.map(|_| (format!("rmdir {d}"), None))
                    .map_err(|e| format!("rmdir {d}: {e}"))
            }
            83..=88 => {
                let dirs = self.dirs();
                let d = self.pick(&dirs).unwrap_or_default();
                let want: Vec<String> = self
                    .model
                    .keys()
                    .filter(|k| match k.rsplit_once('/') {
                        Some((parent, _)) => *parent == d,
                        None => d.is_empty(),
                    })
                    .map(|k| k.rsplit('/').next().unwrap_or(k).to_string())
                    .collect();
                match fs::read_dir(self.mine.join(&d)).and_then(|rd| {
                    rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                        .collect::<std::io::Result<Vec<_>>>()
                }) {
                    Ok(mut got) => {
                        got.sort();
                        if got == want {
                            Ok((format!("readdir {d:?}"), None))
                        } else {
                            Err(format!("readdir {d:?}: got {got:?}, want {want:?}"))
                        }
                    }
                    Err(e) => Err(format!("readdir {d:?}: {e}")),
                }
            }
            89..=93 => {
                let keys: Vec<String> = self.model.keys().cloned().collect();
                let Some(rel) = self.pick(&keys) else {
                    return true;
                };
                let want = self.model.get(&rel).cloned();
                match fs::symlink_metadata(self.mine.join(&rel)) {
                    Ok(md) => match want {
                        Some(Entry::Dir) if md.is_dir() => Ok((format!("stat {rel}"), None)),
                        Some(Entry::File(d)) if md.is_file() && md.len() == d.len() as u64 => {
                            Ok((format!("stat {rel}"), None))
                        }
                        w => Err(format!(
                            "stat {rel}: dir {} len {}, want {:?}",
                            md.is_dir(),
                            md.len(),
                            w.map(|e| match e {
                                Entry::Dir => "dir".to_string(),
                                Entry::File(d) => format!("file of {}", d.len()),
                            })
                        )),
                    },
                    Err(e) => Err(format!("stat {rel}: {e}")),
                }
            }
            _ => {
                let Some(rel) = self.pick(&files) else {
                    return true;
                };
                let want = self.file(&rel);
                match fs::read(self.mine.join(&rel)) {
                    Ok(got) if got == want => Ok((format!("read {rel}"), None)),
                    Ok(got) => Err(format!(
                        "read {rel}: {} bytes differ from the model's {} (first at {:?})",
                        got.len(),
                        want.len(),
                        got.iter().zip(&want).position(|(a, b)| a != b)
                    )),
                    Err(e) => Err(format!("read {rel}: {e}")),
                }
            }
        };
        let ms = t.elapsed().as_millis() as u64;
        self.sh.max_op_ms.fetch_max(ms, Ordering::Relaxed);
        self.sh.ops.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok((_, Some(closed))) => self.cross_check(&closed),
            Ok(_) => true,
            Err(e) => {
                self.sh.problem(&self.who, format!("{e} (after {ms} ms)"));
                false
            }
        }
    }

    /// The file just closed reads the same on the other mount.
    fn cross_check(&mut self, rel: &str) -> bool {
        let want = self.file(rel);
        let p = self.other.join(rel);
        let t = Instant::now();
        let mut last = String::new();
        loop {
            match fs::read(&p) {
                Ok(got) if got == want => {
                    self.sh.cross_checks.fetch_add(1, Ordering::Relaxed);
                    if !last.is_empty() {
                        self.sh.late.lock().unwrap().push(format!(
                            "{:.1?} {} {rel}: after {:.1?} ({last})",
                            self.sh.start.elapsed(),
                            self.who,
                            t.elapsed()
                        ));
                    }
                    return true;
                }
                Ok(got) => {
                    last = format!("{} bytes, want {}", got.len(), want.len());
                }
                // Not yet there (a negative entry cached before the change
                // event arrived) is retried; any other error is a failure.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => last = format!("{e}"),
                Err(e) => {
                    self.sh.problem(
                        &self.who,
                        format!("other mount, read {rel} after its close: {e}"),
                    );
                    return false;
                }
            }
            if t.elapsed() > CONVERGE {
                self.sh.problem(
                    &self.who,
                    format!("other mount, {rel}: {last} after {CONVERGE:?}"),
                );
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole subtree under `root` equals the model.
    fn compare_tree(&self, root: &Path, label: &str) -> Vec<String> {
        let mut got = BTreeMap::new();
        let mut stack = vec![String::new()];
        let mut errs = Vec::new();
        while let Some(rel) = stack.pop() {
            let rd = match fs::read_dir(root.join(&rel)) {
                Ok(rd) => rd,
                Err(e) => {
                    errs.push(format!("{label} {}: readdir {rel:?}: {e}", self.who));
                    continue;
                }
            };
            for e in rd.flatten() {
                let k = join(&rel, &e.file_name().to_string_lossy());
                let p = root.join(&k);
                if p.is_dir() {
                    stack.push(k.clone());
                    got.insert(k, Entry::Dir);
                } else {
                    match fs::read(&p) {
                        Ok(d) => {
                            got.insert(k, Entry::File(d));
                        }
                        Err(e) => errs.push(format!("{label} {}: read {k}: {e}", self.who)),
                    }
                }
            }
        }
        for (k, e) in &self.model {
            if got.get(k) != Some(e) {
                errs.push(format!("{label} {}: {k} differs or is missing", self.who));
            }
        }
        for k in got.keys().filter(|k| !self.model.contains_key(*k)) {
            errs.push(format!("{label} {}: {k} should not exist", self.who));
        }
        errs
    }
}

#[test]
fn long_mixed_run_with_a_redis_restart_and_store_faults() {
    let secs = env_num("VECFS_LONG_SECS", 300);
    let seed = env_num("VECFS_LONG_SEED", 20_261_202);
    let per_mount = env_num("VECFS_LONG_WORKERS", 3);
    println!("long run: {secs} s, seed {seed} (VECFS_LONG_SEED), {per_mount} workers per mount");

    let s3 = S3::start();
    let px = Arc::new(HttpFault::start_seeded(s3.port, seed));
    let port = px.port;
    let v = Arc::new(common::s3_volume(
        Redis::start_aof(),
        s3,
        port,
        &["--block-size", "1M"],
    ));
    let mut args: Vec<String> = vec![
        "--mem-cache-size".into(),
        MEM_CACHE_MIB.to_string(),
        "--buffer-size".into(),
        BUFFER_MIB.to_string(),
    ];
    args.extend(meta_timeout_args());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mounts = [v.mount_with(&args), v.mount_with(&args)];
    let pids: Vec<u32> = mounts.iter().map(Mount::pid).collect();
    let paths: Vec<PathBuf> = mounts.iter().map(|m| m.path.clone()).collect();

    let sh = Arc::new(Shared {
        start: Instant::now(),
        problems: Mutex::new(Vec::new()),
        late: Mutex::new(Vec::new()),
        ops: AtomicU64::new(0),
        cross_checks: AtomicU64::new(0),
        max_op_ms: AtomicU64::new(0),
    });
    let mut workers = Vec::new();
    for (mi, root) in paths.iter().enumerate() {
        for k in 0..per_mount {
            let who = format!("m{mi}w{k}");
            fs::create_dir(root.join(&who)).unwrap();
            workers.push(Worker {
                mine: root.join(&who),
                other: paths[1 - mi].join(&who),
                model: BTreeMap::new(),
                rng: Rng(
                    (seed ^ (mi as u64 * 1000 + k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
                ),
                sh: sh.clone(),
                who,
            });
        }
    }

    let total = Duration::from_secs(secs);
    let (pids2, paths2) = (pids.clone(), paths.clone());
    let (sh2, px2, v2) = (sh.clone(), px.clone(), v.clone());
    let (workers, rss, events) = within(
        "long run",
        total + Duration::from_secs(300),
        move || {
            for (pid, p) in pids2.iter().zip(&paths2) {
                abort_mount(*pid, p);
            }
        },
        move || {
            let stop = AtomicBool::new(false);
            let sh = sh2;
            std::thread::scope(|s| {
                let handles: Vec<_> = workers
                    .into_iter()
                    .map(|mut w| {
                        let stop = &stop;
                        s.spawn(move || {
                            while !stop.load(Ordering::Acquire) && w.step() {}
                            w
                        })
                    })
                    .collect();
                // The controller: faults on schedule, RSS every 10 s.
                let mut rss: Vec<(u64, u64, u64)> = Vec::new();
                let mut events: Vec<String> = Vec::new();
                let (fault_at, redis_at) = (total * 3 / 10, total * 6 / 10);
                let (mut faulted, mut restarted) = (false, false);
                let mut next_rss = Duration::ZERO;
                let mut armed = Vec::new();
                while sh.start.elapsed() < total && handles.iter().any(|h| !h.is_finished()) {
                    let now = sh.start.elapsed();
                    if now >= next_rss {
                        rss.push((now.as_secs(), rss_kib(pids[0]), rss_kib(pids[1])));
                        next_rss += Duration::from_secs(10);
                    }
                    if !faulted && now >= fault_at {
                        faulted = true;
                        let window = Duration::from_secs(10);
                        let rule = |f: Fault, p: f64| Rule::new(f).fraction(p).lasting(window);
                        armed.push(px2.add(rule(Fault::Status(503), 0.25)));
                        armed.push(px2.add(rule(Fault::Status(500), 0.05)));
                        armed.push(px2.add(rule(Fault::ResetRequest, 0.1)));
                        armed.push(px2.add(rule(Fault::ResetResponse, 0.1)));
                        armed.push(px2.add(rule(Fault::Truncate, 0.1).method("GET")));
                        armed.push(px2.add(rule(Fault::Delay(Duration::from_millis(300)), 0.2)));
                        events.push(format!("{now:.1?}: store faults on for {window:?}"));
                    }
                    if !restarted && now >= redis_at {
                        restarted = true;
                        events.push(format!("{now:.1?}: redis stopping"));
                        v2.redis.stop();
                        events.push(format!("{:.1?}: redis stopped", sh.start.elapsed()));
                        std::thread::sleep(Duration::from_secs(2));
                        v2.redis.restart();
                        events.push(format!("{:.1?}: redis back", sh.start.elapsed()));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                stop.store(true, Ordering::Release);
                let workers: Vec<Worker> = handles.into_iter().map(|h| h.join().unwrap()).collect();
                rss.push((
                    sh.start.elapsed().as_secs(),
                    rss_kib(pids[0]),
                    rss_kib(pids[1]),
                ));
                let fired: Vec<u64> = armed.iter().map(|a| a.fired()).collect();
                events.push(format!(
                    "store faults fired per rule {fired:?}; restarted redis: {restarted}"
                ));
                (workers, rss, (events, faulted, restarted, fired))
            })
        },
    );
    let (events, faulted, restarted, fired) = events;

    println!("events: {events:#?}");
    println!(
        "{} operations, {} cross-mount checks, slowest op {} ms",
        sh.ops.load(Ordering::Relaxed),
        sh.cross_checks.load(Ordering::Relaxed),
        sh.max_op_ms.load(Ordering::Relaxed)
    );
    println!("RSS (s, mount 0 KiB, mount 1 KiB): {rss:?}");
    let late = sh.late.lock().unwrap();
    println!(
        "{} closed files the other mount showed late: {late:#?}",
        late.len()
    );
    println!(
        "proxy: {} GET, {} PUT, injected {}",
        px.requests("GET"),
        px.requests("PUT"),
        px.injected_total()
    );

    // The trees at the end, on both mounts, and after a remount.
    let mut tree_errs = Vec::new();
    for w in &workers {
        tree_errs.extend(w.compare_tree(&w.mine, "own mount"));
        tree_errs.extend(w.compare_tree(&w.other, "other mount"));
    }
    let [m0, m1] = mounts;
    m0.unmount();
    m1.unmount();
    let fresh = v.mount();
    for w in &workers {
        tree_errs.extend(w.compare_tree(&fresh.path.join(&w.who), "remount"));
    }
    fresh.unmount();

    let problems = sh.problems.lock().unwrap();
    assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
    assert!(tree_errs.is_empty(), "seed {seed}: {tree_errs:#?}");
    assert!(
        faulted && restarted,
        "the run ended before its faults: {events:?}"
    );
    assert!(
        fired.iter().sum::<u64>() > 0,
        "no store fault fired during the window"
    );
    let bound = (MEM_CACHE_MIB + BUFFER_MIB + 200) << 10;
    let over: Vec<_> = rss.iter().filter(|r| r.1 > bound || r.2 > bound).collect();
    assert!(over.is_empty(), "RSS above {bound} KiB: {over:?}");
}
