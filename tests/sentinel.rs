//! Redis Sentinel: a volume whose META-URL names a master and three
//! sentinels keeps working when the master is killed (the replica is
//! promoted, the mount follows without a remount), and with
//! `--meta-wait-replicas 1` no file whose close() succeeded is lost.
//! Real servers on loopback: one master, one replica, three sentinels
//! (password-protected, so SENTINEL_PASSWORD is exercised too).

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const MASTER: &str = "vecfsmaster";
const SENTINEL_PW: &str = "sentinel-secret";

struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 requirepass {SENTINEL_PW}\nsentinel sentinel-pass {SENTINEL_PW}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                dir = dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let s = Sentinel {
            child,
            port,
            _dir: dir,
        };
        wait_for("sentinel", Duration::from_secs(20), || {
            s.cli(&["ping"]).contains("PONG")
        });
        s
    }

    fn cli(&self, args: &[&str]) -> String {
        let o = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .env("REDISCLI_AUTH", SENTINEL_PW)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The master's port as this sentinel sees it.
    fn master_port(&self) -> String {
        self.cli(&["sentinel", "get-master-addr-by-name", MASTER])
            .lines()
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

/// One close() the writer saw: the file, and whether it returned 0.
struct Done {
    i: u64,
    ok: bool,
    at: Instant,
}

fn content(i: u64) -> Vec<u8> {
    pattern(1000 + (i as usize % 7) * 3000, i)
}

fn failover(wait_replicas: bool) {
    let master = Redis::start();
    let mport = master.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &mport]);
    wait_for("replica in sync", Duration::from_secs(20), || {
        replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    });
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port)).collect();
    // Every sentinel knows the replica and the other two before the kill,
    // or the failover could not be agreed on.
    wait_for("sentinels see each other", Duration::from_secs(30), || {
        sentinels.iter().all(|s| {
            let m = s.cli(&["sentinel", "master", MASTER]);
            let other = m
                .lines()
                .skip_while(|l| *l != "num-other-sentinels")
                .nth(1)
                .unwrap_or("");
            let reps = s.cli(&["sentinel", "replicas", MASTER]);
            other.trim() == "2" && reps.contains(&replica.port.to_string())
        })
    });
    let hosts: Vec<String> = sentinels
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port))
        .collect();
    let url = format!("redis://{MASTER},{}/1", hosts.join(","));
    let store = tempfile::tempdir().expect("tempdir");
    let bucket = store.path().join("objects").to_string_lossy().into_owned();
    let env = vec![("SENTINEL_PASSWORD".to_string(), SENTINEL_PW.to_string())];
    let o = vecfs(
        &[
            "format",
            &url,
            "testvol",
            "--storage",
            "file",
            "--bucket",
            &bucket,
        ],
        &[("SENTINEL_PASSWORD", SENTINEL_PW)],
    );
    assert!(o.status.success(), "format failed: {}", stderr(&o));
    // The volume keeps the replica (it outlives the master); the master is
    // killed by hand.
    let vol = Volume {
        redis: replica,
        backend: Backend::File(store),
        url: url.clone(),
        name: "testvol".into(),
        env,
    };
    let mut extra = vec!["--meta-timeout", "40", "--heartbeat", "2"];
    if wait_replicas {
        extra.extend(["--meta-wait-replicas", "1"]);
    }
    let m = vol.mount_with(&extra);
    std::fs::create_dir(m.p("w")).expect("mkdir");
    // A second node caching for 30 s: it sees a change made after the
    // failover at once only if its change-event subscription followed
    // the master.
    let watcher = vol.mount_with(&["--attr-cache", "30", "--entry-cache", "30"]);
    std::fs::write(m.p("probe"), b"before").expect("write probe");
    assert_eq!(std::fs::metadata(watcher.p("probe")).unwrap().len(), 6);

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<Done>::new()));
    let writer = {
        let (stop, log, dir) = (stop.clone(), log.clone(), m.p("w"));
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let ok = std::fs::File::create(dir.join(format!("f{i}")))
                    .and_then(|mut f| {
                        f.write_all(&content(i))?;
                        close(f)
                    })
                    .is_ok();
                log.lock().unwrap().push(Done {
                    i,
                    ok,
                    at: Instant::now(),
                });
            }
        })
    };
    let ok_count = |log: &Arc<Mutex<Vec<Done>>>, after: Instant| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|d| d.ok && d.at > after)
            .count()
    };
    let t0 = Instant::now();
    wait_for("writes before the kill", Duration::from_secs(20), || {
        ok_count(&log, t0) >= 200
    });

    // The replica stops taking the master's stream for a moment before the
    // master dies: what the master acknowledged meanwhile exists nowhere
    // else, as with a lagging replica. Without WAIT those closes returned
    // 0; with it they cannot have.
    let rpid = vol.redis.pid().expect("replica runs") as i32;
    // SAFETY: signalling a child process of this test by its pid.
    unsafe { libc::kill(rpid, libc::SIGSTOP) };
    let stopped = Instant::now();
    poll_until(Duration::from_millis(800), || ok_count(&log, stopped) >= 30);
    // Closes that returned while no replica could acknowledge anything.
    let unreplicated = ok_count(&log, stopped);
    master.kill9();
    // SAFETY: as above.
    unsafe { libc::kill(rpid, libc::SIGCONT) };
    let killed = Instant::now();
    wait_for(
        "the sentinels promote the replica",
        Duration::from_secs(30),
        || sentinels[0].master_port() == vol.redis.port.to_string(),
    );
    let promoted = killed.elapsed();
    // The old master comes back (empty: no persistence) and the sentinels
    // make it a replica of the new one: a replica to WAIT for again.
    master.restart();
    let resumed = poll_until(
        Duration::from_secs(30) - killed.elapsed().min(Duration::from_secs(30)),
        || ok_count(&log, killed + Duration::from_millis(1)) >= 50,
    );
    let resumed_after = killed.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer thread");
    let log = std::mem::take(&mut *log.lock().unwrap());
    let failed = log.iter().filter(|d| !d.ok).count();
    assert!(
        resumed,
        "writes did not resume within 30 s of the master's death ({failed} closes failed); log:\n{}",
        m.log_text()
    );
    // Changes made before the watcher resubscribed are not announced (its
    // kernel cache keeps them for the TTL): change the file again until
    // one change shows up there within a second.
    let mut len = 6;
    let t = Instant::now();
    let followed = poll_until(Duration::from_secs(15), || {
        len += 1;
        std::fs::write(m.p("probe"), vec![b'x'; len]).expect("write probe");
        poll_until(Duration::from_secs(1), || {
            std::fs::metadata(watcher.p("probe")).map(|a| a.len()).ok() == Some(len as u64)
        })
    });
    println!(
        "the watcher saw a change {:.1}s after the writes resumed",
        t.elapsed().as_secs_f64()
    );
    assert!(
        followed,
        "the second mount's change events did not follow the failover; its log:\n{}",
        watcher.log_text()
    );
    watcher.unmount();
    m.unmount();

    // A fresh mount, through the sentinels, on the promoted master.
    let m = vol.mount();
    let mut lost = Vec::new();
    for d in log.iter().filter(|d| d.ok) {
        match std::fs::read(m.p(&format!("w/f{}", d.i))) {
            Ok(b) if b == content(d.i) => {}
            _ => lost.push(d.i),
        }
    }
    let acked = log.iter().filter(|d| d.ok).count();
    println!(
        "meta-wait-replicas {}: promoted after {:.1}s, writes resumed {:.1}s after the kill; \
         {acked} closes returned 0, {failed} failed, {} of the acknowledged files lost {:?}",
        wait_replicas as u8,
        promoted.as_secs_f64(),
        resumed_after.as_secs_f64(),
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    println!(
        "meta-wait-replicas {}: {unreplicated} closes returned 0 while the replica was stopped",
        wait_replicas as u8
    );
    if wait_replicas {
        // One close may have had its WAIT answered just before the stop.
        assert!(
            unreplicated <= 1,
            "{unreplicated} closes returned 0 with no replica to hold their changes"
        );
        assert!(
            lost.is_empty(),
            "files whose close() returned 0 were lost in the failover: {lost:?}"
        );
    }
    m.unmount();
}

#[test]
fn failover_with_wait_replicas_loses_nothing() {
    failover(true);
}

#[test]
fn failover_without_wait_reports_losses() {
    failover(false);
}

/// A wrong master name fails at once with a message naming the sentinels,
/// and the sentinel password never shows.
#[test]
fn unknown_master_name_is_a_clear_error() {
    let master = Redis::start();
    let s = Sentinel::start(master.port);
    let url = format!("redis://nosuchmaster,127.0.0.1:{}/1", s.port);
    let started = Instant::now();
    let o = vecfs(
        &[
            "format",
            &url,
            "testvol",
            "--storage",
            "file",
            "--bucket",
            "/tmp/x",
        ],
        &[("SENTINEL_PASSWORD", SENTINEL_PW)],
    );
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("nosuchmaster") && e.contains("sentinel"), "{e}");
    assert!(!e.contains(SENTINEL_PW), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20), "took too long");
}

/// What `--meta-wait-replicas 1` costs: creates per second (create+close of
/// empty files) and write+close latency of 64 KiB files, with and without,
/// on one master with one replica on loopback. Prints figures only. Run:
/// `cargo test --test sentinel wait_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn wait_cost() {
    let master = Redis::start();
    let mport = master.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &mport]);
    wait_for("replica in sync", Duration::from_secs(20), || {
        replica
            .cli(&["info", "replication"])
            .contains("master_link_status:up")
    });
    let store = tempfile::tempdir().expect("tempdir");
    let bucket = store.path().join("objects").to_string_lossy().into_owned();
    let url = master.url(1);
    let o = vecfs(
        &[
            "format",
            &url,
            "testvol",
            "--storage",
            "file",
            "--bucket",
            &bucket,
        ],
        &[],
    );
    assert!(o.status.success(), "format failed: {}", stderr(&o));
    let vol = Volume {
        redis: master,
        backend: Backend::File(store),
        url,
        name: "testvol".into(),
        env: Vec::new(),
    };
    let data = pattern(64 << 10, 7);
    for round in 0..2 {
        for wait in [false, true] {
            let extra: &[&str] = if wait {
                &["--meta-wait-replicas", "1"]
            } else {
                &[]
            };
            let m = vol.mount_with(extra);
            let dir = m.p(&format!("r{round}w{}", wait as u8));
            std::fs::create_dir(&dir).unwrap();
            let n = 2000;
            let t = Instant::now();
            for i in 0..n {
                close(std::fs::File::create(dir.join(format!("e{i}"))).unwrap()).unwrap();
            }
            let creates = n as f64 / t.elapsed().as_secs_f64();
            let mut lat = Vec::new();
            for i in 0..300 {
                let t = Instant::now();
                let mut f = std::fs::File::create(dir.join(format!("d{i}"))).unwrap();
                f.write_all(&data).unwrap();
                close(f).unwrap();
                lat.push(t.elapsed());
            }
            lat.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "round {round} meta-wait-replicas {}: {creates:.0} creates/s; 64 KiB write+close \
                 p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
                wait as u8,
                ms(lat[lat.len() / 2]),
                ms(lat[lat.len() * 9 / 10]),
                ms(lat[lat.len() * 99 / 100]),
            );
            m.unmount();
        }
    }
}
