//! Metrics and logs on real mounts (redis-server, moto, FUSE): the
//! Prometheus endpoint scraped and parsed (histograms per FUSE op, Redis
//! call and store method; store counters after a cold read; the error
//! counter after an induced failure), ports of two mounts on one host,
//! the hidden `.stats` file, `vecfs stats`, and the log staying quiet
//! under a Python session.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use common::*;

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    assert!(
        resp.starts_with("HTTP/1.0 200") || resp.starts_with("HTTP/1.1 200"),
        "{resp}"
    );
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample named exactly `key` (labels included).
fn sample(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn value(text: &str, key: &str) -> f64 {
    sample(text, key).unwrap_or(0.0)
}

/// Checks histogram `name`'s series with label `label`: buckets present,
/// cumulative, ending in +Inf equal to the count. Returns the count.
fn histogram(text: &str, name: &str, label: &str) -> f64 {
    let bucket_prefix = format!("{name}_bucket{{le=\"");
    let tail = format!("\",{label}}}");
    let buckets: Vec<(String, f64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&bucket_prefix)?;
            let (le, v) = rest.split_once(&tail)?;
            Some((le.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    assert!(
        buckets.len() >= 10,
        "{name}{{{label}}}: {} buckets\n{text}",
        buckets.len()
    );
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "{name}{{{label}}} buckets not cumulative: {buckets:?}"
    );
    let (last_le, last) = buckets.last().cloned().unwrap_or_default();
    assert_eq!(last_le, "+Inf");
    let count = value(text, &format!("{name}_count{{{label}}}"));
    assert_eq!(count, last, "{name}{{{label}}}: count vs +Inf bucket");
    count
}

fn object_reads(text: &str) -> f64 {
    histogram(
        text,
        "vecfs_object_request_duration_seconds",
        "method=\"get\"",
    ) + value(
        text,
        "vecfs_object_request_duration_seconds_count{method=\"range\"}",
    )
}

#[test]
fn endpoint_histograms_store_counters_and_errors() {
    let v = Volume::new(Storage::S3);
    let (a, ma) = v.mount_with_metrics(&[]);
    let one = pattern(3 << 20, 1);
    std::fs::write(a.p("one"), &one).unwrap();
    std::fs::write(a.p("two"), pattern(3 << 20, 2)).unwrap();
    std::fs::create_dir(a.p("dir")).unwrap();
    assert_eq!(std::fs::read_dir(a.p("")).unwrap().count(), 3);
    let t = scrape(ma.0);
    for op in ["create", "write", "flush", "mkdir", "lookup", "readdirplus"] {
        let label = format!("op=\"{op}\"");
        let n = histogram(&t, "vecfs_fuse_op_duration_seconds", &label);
        assert!(n > 0.0, "no {op} counted\n{t}");
    }
    // Redis calls by script name (the commit is "write") and by command.
    for kind in ["mknod", "write"] {
        let label = format!("kind=\"{kind}\"");
        assert!(histogram(&t, "vecfs_meta_request_duration_seconds", &label) > 0.0);
    }
    assert!(
        histogram(
            &t,
            "vecfs_object_request_duration_seconds",
            "method=\"put\""
        ) >= 2.0
    );
    assert!(value(&t, "vecfs_object_put_total") >= 2.0);
    assert!(value(&t, "vecfs_buffer_capacity_bytes") > 0.0);
    assert!(sample(&t, "vecfs_mem_cache_bytes").is_some(), "{t}");
    assert!(sample(&t, "vecfs_disk_cache_entries").is_some(), "{t}");
    assert!(t.ends_with("# EOF\n"));

    // A cold read on a second mount fetches from the store.
    let (b, mb) = v.mount_with_metrics(&["--cache-dir", "memory"]);
    // (The mount's store probe did a GET already.)
    let t0 = scrape(mb.0);
    assert_eq!(std::fs::read(b.p("one")).unwrap(), one);
    let t1 = scrape(mb.0);
    assert!(object_reads(&t1) > object_reads(&t0), "{t1}");
    assert!(value(&t1, "vecfs_object_get_bytes_total") >= (3 << 20) as f64 / 2.0);
    assert!(value(&t1, "vecfs_read_bytes_total") >= (3 << 20) as f64);
    let ratio = value(&t1, "vecfs_cache_hit_ratio");
    assert!((0.0..=1.0).contains(&ratio));

    b.unmount();
    a.unmount();
}

#[test]
fn error_counter_moves_when_objects_are_lost() {
    let v = Volume::new(Storage::File);
    let objects = match &v.backend {
        Backend::File(d) => d.path().join("objects"),
        _ => unreachable!(),
    };
    let a = v.mount_with(&[]);
    std::fs::write(a.p("f"), pattern(2 << 20, 3)).unwrap();
    a.unmount();
    let (b, mb) = v.mount_with_metrics(&["--cache-dir", "memory"]);
    let t0 = scrape(mb.0);
    // The objects go behind the mount's back: the read fails and is counted.
    let mut removed = 0;
    let mut dirs = vec![objects];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.to_string_lossy().contains("/chunks/") {
                std::fs::remove_file(&p).unwrap();
                removed += 1;
            }
        }
    }
    assert!(removed > 0);
    assert!(std::fs::read(b.p("f")).is_err());
    let t1 = scrape(mb.0);
    let lost = |t: &str| value(t, "vecfs_errors_total{kind=\"not_found\"}");
    assert!(lost(&t1) > lost(&t0), "{t1}");
    assert!(value(&t1, "vecfs_fuse_errors_total") > value(&t0, "vecfs_fuse_errors_total"));
    b.unmount();
}

/// `vecfs status` sessions' metrics addresses.
fn status_addrs(v: &Volume) -> Vec<String> {
    let o = vecfs(&["status", &v.url], &v.env_refs());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("status JSON");
    j["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter_map(|s| s["metrics"].as_str().map(String::from))
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}

#[test]
fn mounts_on_one_host_never_share_a_port() {
    let v = Volume::new(Storage::File);
    // Port 0: each mount gets a free port of its own.
    let a = v.mount_with(&["--metrics", "127.0.0.1:0"]);
    let b = v.mount_with(&["--metrics", "127.0.0.1:0"]);
    // Default settings, twice (the second finds the default port taken,
    // by the first or by anything else on the host).
    let c = v.mount_with(&[]);
    let d = v.mount_with(&[]);
    let addrs = status_addrs(&v);
    assert_eq!(addrs.len(), 4, "{addrs:?}");
    let mut ports: Vec<u16> = addrs.iter().map(|a| port_of(a)).collect();
    assert!(ports.iter().all(|p| *p != 0), "{addrs:?}");
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4, "ports shared: {addrs:?}");
    for p in &ports {
        assert!(scrape(*p).contains("vecfs_fuse_op_duration_seconds"));
    }
    // The chosen address is in the log too.
    assert!(a.log_text().contains("serving metrics"), "{}", a.log_text());
    for m in [a, b, c, d] {
        m.unmount();
    }
}

#[test]
fn stats_file_and_stats_command() {
    let v = Volume::new(Storage::File);
    let m = v.mount_with(&["--metrics", "none"]);
    std::fs::write(m.p("f"), b"data").unwrap();

    let text = std::fs::read_to_string(m.p(".stats")).unwrap();
    assert!(
        text.contains("vecfs_fuse_op_duration_seconds_count{op=\"create\"}"),
        "{text}"
    );
    // Every read is fresh (direct I/O): a second read sees the first.
    let again = std::fs::read_to_string(m.p(".stats")).unwrap();
    let reads = |t: &str| value(t, "vecfs_fuse_op_duration_seconds_count{op=\"read\"}");
    assert!(reads(&again) > reads(&text), "stale .stats");
    let md = std::fs::metadata(m.p(".stats")).unwrap();
    assert!(md.is_file());
    assert_eq!(md.permissions().mode() & 0o777, 0o444);

    // Hidden from listings.
    let names: Vec<String> = std::fs::read_dir(m.p(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["f".to_string()]);

    // Read-only, even for root; cannot be removed, replaced or shadowed.
    let errno = |r: std::io::Result<()>| r.err().and_then(|e| e.raw_os_error());
    let w = std::fs::OpenOptions::new().write(true).open(m.p(".stats"));
    assert_eq!(errno(w.map(|_| ())), Some(libc::EACCES));
    let t = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p(".stats"));
    assert_eq!(errno(t.map(|_| ())), Some(libc::EACCES));
    assert_eq!(
        errno(std::fs::remove_file(m.p(".stats"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(std::fs::rename(m.p("f"), m.p(".stats"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(std::fs::rename(m.p(".stats"), m.p("g"))),
        Some(libc::EPERM)
    );
    let x = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(m.p(".stats"));
    assert_eq!(errno(x.map(|_| ())), Some(libc::EEXIST));
    assert_eq!(
        errno(std::fs::create_dir(m.p(".stats"))),
        Some(libc::EEXIST)
    );
    assert_eq!(
        errno(std::fs::hard_link(m.p("f"), m.p(".stats"))),
        Some(libc::EEXIST)
    );
    let chmod = std::fs::set_permissions(m.p(".stats"), std::fs::Permissions::from_mode(0o666));
    assert_eq!(errno(chmod), Some(libc::EPERM));
    // Only the root has it.
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/.stats"), b"mine").unwrap();
    assert_eq!(std::fs::read(m.p("d/.stats")).unwrap(), b"mine");

    // vecfs stats: two refreshes while a writer works.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (p, stop) = (m.p("w"), stop.clone());
        std::thread::spawn(move || {
            let chunk = vec![7u8; 1 << 20];
            let mut f = std::fs::File::create(&p).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(&chunk).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mp = m.path.to_string_lossy().into_owned();
    let o = vecfs(&["stats", &mp, "--count", "2"], &[]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let rows: Vec<Vec<f64>> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            l.split_whitespace()
                .map(|x| x.parse().unwrap_or(-1.0))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert_eq!(r.len(), 14, "{out}");
        // The writer's ~1 MiB per 20 ms and .stats reads: operations
        // flowed, at a plausible mean latency, and bytes were written.
        assert!(r[0] >= 10.0, "fuse ops/s: {out}");
        assert!(r[1] > 0.0 && r[1] < 5000.0, "fuse ms: {out}");
    }
    assert!(rows.iter().any(|r| r[3] > 1.0), "write MB/s: {out}");
    assert!(out.contains("ops/s"), "{out}");
    let bad = vecfs(&["stats", "/tmp", "--count", "1"], &[]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("not a vecfs mount"),
        "{}",
        stderr(&bad)
    );
    m.unmount();
}

#[test]
fn python_session_leaves_no_warning_and_logs_rotate() {
    let v = Volume::new(Storage::File);
    // Debug level, so the log grows; small files to see them rotate.
    let m = v.mount_with(&["-v", "--log-max-size", "16K"]);
    let mp = m.path.to_string_lossy().into_owned();
    let script = format!(
        r#"
import os, select
for i in range(300):
    with open("{mp}/f%d" % (i % 10), "w") as f:
        f.write("x" * 100)
    with open("{mp}/f%d" % (i % 10)) as f:
        f.read()
fd = os.open("{mp}/f0", os.O_RDONLY)
p = select.poll(); p.register(fd, select.POLLIN); p.poll(0)
os.lseek(fd, 0, os.SEEK_DATA)
os.close(fd)
"#
    );
    let o = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = m.log.clone();
    let numbered = |n: usize| {
        let mut s = log.as_os_str().to_owned();
        s.push(format!(".{n}"));
        std::path::PathBuf::from(s)
    };
    let mut all = String::new();
    for p in [numbered(3), numbered(2), numbered(1), log.clone()] {
        all.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
    }
    let warnings: Vec<&str> = all
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("Not Implemented"))
        .collect();
    assert!(
        warnings.is_empty(),
        "{} warnings, e.g. {:?}",
        warnings.len(),
        &warnings[..warnings.len().min(3)]
    );
    // The unsupported ioctl was asked, and answered quietly.
    assert!(
        all.contains("ioctl: not supported"),
        "no ioctl seen: {}",
        &all[..all.len().min(3000)]
    );
    // Rotated at 16 KiB, at most 3 older files.
    assert!(numbered(1).exists(), "log not rotated");
    assert!(std::fs::metadata(&log).unwrap().len() <= 16 << 10);
    assert!(std::fs::metadata(numbered(1)).unwrap().len() <= 16 << 10);
    assert!(!numbered(4).exists());
    m.unmount();
}

use std::os::unix::fs::PermissionsExt;
