//! Object-store faults through the HTTP fault proxy (tests/common/
//! httpfault.rs), with real mounts on moto: 500/503 answers, connections
//! reset mid-request and mid-response, delays and short outages during
//! writes and reads are retried and the data reads back exactly (on the
//! writing mount and on a fresh one, whose cache is empty); truncated and
//! corrupted GET bodies are EIO for the reader, never wrong bytes or zeros;
//! a store that refuses every upload for good makes every fsync and close
//! EIO, never 0, and the data still lands once it is back. Every test
//! checks that its faults actually fired.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::httpfault::{Fault, HttpFault, Rule};
use common::{abort_mount, close, fsync, pattern, wait_for, within, Mount, Redis, Volume, S3};

/// Object keys of data blocks (not the format probe).
const CHUNKS: &str = "/chunks/";

/// Longest a single file system call may take here, with slack for a busy
/// 2-core machine: a stuck call fails the test instead of hanging it.
const OP_DEADLINE: Duration = Duration::from_secs(120);

/// The retry bound the refused-upload tests mount with, and how much
/// longer than it a failing fsync or close may take to report: object_store's
/// own retries of the last attempt (at most ~3 s), a background flush of the
/// file already under way, a busy machine.
const IO_RETRY: Duration = Duration::from_secs(2);
const REPORT_SLACK: Duration = Duration::from_secs(16);

/// A volume on moto whose every store request goes through the fault proxy.
fn s3_behind_faults(extra: &[&str]) -> (Volume, HttpFault) {
    let s3 = S3::start();
    let px = HttpFault::start(s3.port);
    let port = px.port;
    (common::s3_volume(Redis::start(), s3, port, extra), px)
}

/// Float vectors with few distinct values: compressible, so stored lz4.
fn vectors(len: usize, seed: u64) -> Vec<u8> {
    let mut r = common::Rng(seed | 1);
    (0..len / 4)
        .flat_map(|_| ((r.below(16) as f32) * 0.25).to_le_bytes())
        .collect()
}

/// Files of several blocks (1 MiB blocks), random and compressible, and
/// one of a single partial block; none small enough to be kept inline.
fn sample_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("seg-random".into(), pattern((5 << 20) + 12345, 7)),
        ("seg-vectors".into(), vectors(3 << 20, 8)),
        ("small".into(), pattern(300 << 10, 9)),
    ]
}

fn aborter(m: &Mount) -> impl FnOnce() {
    let (pid, path) = (m.pid(), m.path.clone());
    move || abort_mount(pid, &path)
}

fn outcome<T>(r: &std::io::Result<T>) -> String {
    match r {
        Ok(_) => "0".into(),
        Err(e) => format!("{e}"),
    }
}

fn is_eio<T>(r: &std::io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

/// Writes each file through one handle and checks that close returns 0.
fn write_files(m: &Mount, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let (p, data) = (m.p(name), data.clone());
        let what = format!("write {name}");
        let r = within(&what, OP_DEADLINE, aborter(m), move || {
            let mut f = File::create(p)?;
            f.write_all(&data)?;
            close(f)
        });
        assert!(r.is_ok(), "{what}: close returned {}", outcome(&r));
    }
}

/// Reads each file whole under the watchdog; its bytes must be exact.
fn read_back(m: &Mount, files: &[(String, Vec<u8>)], label: &str) {
    for (name, data) in files {
        let p = m.p(name);
        let got = within(
            &format!("read {name}"),
            OP_DEADLINE,
            aborter(m),
            move || fs::read(p),
        );
        match got {
            Ok(got) => {
                assert_eq!(got.len(), data.len(), "{label}: {name}: length");
                assert!(got == *data, "{label}: {name}: bytes differ");
            }
            Err(e) => panic!("{label}: {name}: read failed: {e}"),
        }
    }
}

/// 503s, 500s and connections reset before and after the store took a
/// block: every close returns 0 once the retries got through, and the data
/// reads back exactly on the writer and on a fresh mount.
#[test]
fn uploads_are_retried_through_5xx_and_resets() {
    let (v, px) = s3_behind_faults(&["--block-size", "1M"]);
    let m = v.mount();
    let put = |f: Fault, n: u64| px.add(Rule::new(f).method("PUT").key(CHUNKS).times(n));
    let armed = [
        ("503", put(Fault::Status(503), 4), 4),
        ("500", put(Fault::Status(500), 2), 2),
        ("reset mid-request", put(Fault::ResetRequest, 3), 3),
        ("reset mid-response", put(Fault::ResetResponse, 3), 3),
        ("delay", put(Fault::Delay(Duration::from_millis(700)), 2), 2),
    ];
    let files = sample_files();
    write_files(&m, &files);
    for (what, a, n) in &armed {
        assert_eq!(a.fired(), *n, "{what}: not every fault fired");
    }
    println!(
        "PUT requests {}, faults injected {}",
        px.requests("PUT"),
        px.injected_total()
    );
    read_back(&m, &files, "writer");
    let fresh = v.mount();
    let gets = px.requests("GET");
    read_back(&fresh, &files, "fresh mount");
    assert!(
        px.requests("GET") > gets,
        "the fresh mount read from its cache"
    );
    fresh.unmount();
    m.unmount();
}

/// Reads on a fresh mount (empty cache, so every block comes from the
/// store) through 503s, resets before and during the answer, one-off
/// truncated bodies (resumed) and delays: exact bytes.
#[test]
fn downloads_are_retried_through_5xx_resets_and_cut_bodies() {
    let (v, px) = s3_behind_faults(&["--block-size", "1M"]);
    let m = v.mount();
    let files = sample_files();
    write_files(&m, &files);
    m.unmount();

    let fresh = v.mount();
    let get = |f: Fault, n: u64| px.add(Rule::new(f).method("GET").key(CHUNKS).times(n));
    let armed = [
        ("503", get(Fault::Status(503), 3), 3),
        ("500", get(Fault::Status(500), 2), 2),
        ("reset mid-request", get(Fault::ResetRequest, 2), 2),
        ("reset mid-response", get(Fault::ResetResponse, 2), 2),
        ("truncated once", get(Fault::Truncate, 2), 2),
        ("delay", get(Fault::Delay(Duration::from_millis(700)), 2), 2),
    ];
    read_back(&fresh, &files, "fresh mount");
    for (what, a, n) in &armed {
        assert_eq!(a.fired(), *n, "{what}: not every fault fired");
    }
    fresh.unmount();
}

/// The store answers every block GET with 503 for a few seconds (a
/// throttling burst or a restarting gateway): readers wait it out within
/// the retry bound and get exact bytes, not EIO.
#[test]
fn reads_wait_out_a_short_store_outage() {
    let (v, px) = s3_behind_faults(&["--block-size", "1M"]);
    let m = v.mount();
    let files = sample_files();
    write_files(&m, &files);
    m.unmount();

    let fresh = v.mount();
    let t = Instant::now();
    let outage = Duration::from_secs(6);
    let a = px.add(
        Rule::new(Fault::Status(503))
            .method("GET")
            .key(CHUNKS)
            .lasting(outage),
    );
    read_back(&fresh, &files, "fresh mount during a 6 s outage");
    println!(
        "read back after {:?}; {} GETs answered 503",
        t.elapsed(),
        a.fired()
    );
    assert!(a.fired() > 0, "no GET was refused");
    fresh.unmount();
}

/// Every block GET answers with a damaged body: each read of the file on a
/// fresh mount, whole or a few KiB at scattered offsets (ranged frame
/// reads), is EIO; none returns bytes. Once the store answers properly
/// again the same mount reads exact bytes: nothing bad was cached.
fn damaged_bodies_are_eio(fault: Fault) {
    let (v, px) = s3_behind_faults(&["--block-size", "1M"]);
    let m = v.mount();
    let files = sample_files();
    write_files(&m, &files);
    m.unmount();

    // A short retry bound: a truncated body is a transient failure, retried
    // (and resumed) until then.
    let fresh = v.mount_with(&["--io-retry", "1"]);
    let a = px.add(Rule::new(fault.clone()).method("GET").key(CHUNKS));
    let mut wrong = Vec::new();
    let mut results = Vec::new();
    for (name, data) in &files {
        let p = fresh.p(name);
        let whole = within("read whole", OP_DEADLINE, aborter(&fresh), move || {
            fs::read(p)
        });
        if let Ok(got) = &whole {
            if got != data {
                wrong.push(format!(
                    "{name}: whole read returned {} wrong bytes",
                    got.len()
                ));
            }
        }
        results.push((format!("{name} whole"), outcome(&whole), is_eio(&whole)));
        let step = data.len() / 2;
        for k in 0..2 {
            let off = (k * step + 1000 * k) as u64;
            let p = fresh.p(name);
            let r = within("pread", OP_DEADLINE, aborter(&fresh), move || {
                let f = File::open(p)?;
                let mut buf = vec![0u8; 8192];
                let n = f.read_at(&mut buf, off)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            });
            if let Ok(got) = &r {
                let end = (off as usize + got.len()).min(data.len());
                if got[..] != data[off as usize..end] {
                    wrong.push(format!("{name}: pread at {off} returned wrong bytes"));
                }
            }
            results.push((format!("{name} @{off}"), outcome(&r), is_eio(&r)));
        }
    }
    println!("{fault:?}: fired {} times; reads: {results:?}", a.fired());
    assert!(
        wrong.is_empty(),
        "{fault:?}: wrong bytes served: {wrong:#?}"
    );
    assert!(a.fired() > 0, "{fault:?}: never injected");
    let not_eio: Vec<_> = results.iter().filter(|r| !r.2).collect();
    assert!(
        not_eio.is_empty(),
        "{fault:?}: reads that were not EIO: {not_eio:?}"
    );

    px.clear();
    read_back(&fresh, &files, "after the store recovered");
    fresh.unmount();
}

#[test]
fn corrupted_bodies_are_eio_never_wrong_bytes() {
    damaged_bodies_are_eio(Fault::Corrupt);
}

#[test]
fn truncated_bodies_are_eio_never_wrong_bytes() {
    damaged_bodies_are_eio(Fault::Truncate);
}

/// The store refuses every upload for good (as `fault` says): every fsync
/// and close of every handle that wrote the file is EIO, each time, and
/// never 0; another node sees nothing of the data (nothing was committed
/// that names missing objects). Once the store takes uploads again the
/// daemon's background retries commit it, after the last close, and a
/// fresh mount reads it exactly.
fn refused_uploads_fail_every_fsync_and_close(fault: Fault) {
    let (v, px) = s3_behind_faults(&["--block-size", "1M"]);
    let m = v.mount_with(&["--io-retry", &IO_RETRY.as_secs().to_string()]);
    // Twelve blocks, so a flush that retried them one after another would
    // take far longer than the bound.
    let body = pattern((12 << 20) + 777, 51);
    let extra = pattern(64 << 10, 52);
    let p = m.p("wal.log");
    let a = px.add(Rule::new(fault.clone()).method("PUT").key(CHUNKS));
    let f1 = File::create(&p).unwrap();
    let f2 = OpenOptions::new().write(true).open(&p).unwrap();
    f1.write_all_at(&body, 0).unwrap();

    let f1 = Arc::new(Mutex::new(Some(f1)));
    let f2 = Arc::new(Mutex::new(Some(f2)));
    let mut during: Vec<(String, String, Duration)> = Vec::new();
    let mut run = |what: &str, f: Box<dyn FnOnce() -> std::io::Result<()> + Send>| {
        let t = Instant::now();
        let r = within(what, OP_DEADLINE, aborter(&m), f);
        during.push((what.to_string(), outcome(&r), t.elapsed()));
    };
    for i in 0..3 {
        let f1 = f1.clone();
        run(
            &format!("fsync {i} of the writing handle"),
            Box::new(move || fsync(f1.lock().unwrap().as_ref().unwrap())),
        );
    }
    let f2c = f2.clone();
    run(
        "fsync of a second handle",
        Box::new(move || fsync(f2c.lock().unwrap().as_ref().unwrap())),
    );
    let f1c = f1.clone();
    run(
        "close of the writing handle",
        Box::new(move || close(f1c.lock().unwrap().take().unwrap())),
    );
    let (f2c, tail) = (f2.clone(), extra.clone());
    let at = body.len() as u64;
    run(
        "write more + fsync on the second handle",
        Box::new(move || {
            let g = f2c.lock().unwrap();
            let f = g.as_ref().unwrap();
            f.write_all_at(&tail, at)?;
            fsync(f)
        }),
    );
    let f2c = f2.clone();
    run(
        "close of the second handle",
        Box::new(move || close(f2c.lock().unwrap().take().unwrap())),
    );
    let (p2, tail) = (p.clone(), extra.clone());
    let at2 = at + extra.len() as u64;
    run(
        "open, write, close again",
        Box::new(move || {
            let f = OpenOptions::new().write(true).open(p2)?;
            f.write_all_at(&tail, at2)?;
            close(f)
        }),
    );
    println!("{fault:?} ({} injected): {during:#?}", a.fired());
    let zero: Vec<_> = during.iter().filter(|d| d.1 == "0").collect();
    assert!(
        zero.is_empty(),
        "returned 0 with the data not stored: {zero:?}"
    );
    let eio = outcome(&Err::<(), _>(std::io::Error::from_raw_os_error(libc::EIO)));
    let other: Vec<_> = during.iter().filter(|d| d.1 != eio).collect();
    assert!(
        other.is_empty(),
        "not EIO while the store refused: {other:?}"
    );
    let slow: Vec<_> = during
        .iter()
        .filter(|d| d.2 > IO_RETRY + REPORT_SLACK)
        .collect();
    assert!(
        slow.is_empty(),
        "took longer than --io-retry {IO_RETRY:?} + {REPORT_SLACK:?} to report: {slow:?}"
    );
    assert!(a.fired() > 0, "{fault:?}: never injected");

    // Nothing names data that is not stored: another node sees no bytes.
    let other_node = v.mount();
    let seen = fs::read(other_node.p("wal.log")).unwrap();
    assert!(
        seen.is_empty(),
        "another node sees {} bytes that were never stored",
        seen.len()
    );

    // The store is back: the daemon keeps retrying after the last close.
    px.clear();
    let mut want = body.clone();
    want.extend_from_slice(&extra);
    want.extend_from_slice(&extra);
    let q = other_node.p("wal.log");
    wait_for(
        "the background retry to commit the data",
        Duration::from_secs(120),
        || fs::read(&q).is_ok_and(|got| got.len() == want.len()),
    );
    let got = fs::read(&q).unwrap();
    assert!(got == want, "bytes differ after the background commit");
    other_node.unmount();
    m.unmount();
}

#[test]
fn uploads_refused_with_503_for_good_fail_every_fsync_and_close() {
    refused_uploads_fail_every_fsync_and_close(Fault::Status(503));
}

#[test]
fn uploads_reset_for_good_fail_every_fsync_and_close() {
    refused_uploads_fail_every_fsync_and_close(Fault::ResetRequest);
}

/// The proxy itself, spoken to in raw HTTP/1.1 over one keep-alive
/// connection: a Content-Length PUT and a chunked PUT are stored as sent,
/// GETs come back whole, corrupted (same length, other bytes), cut short
/// (fewer bytes than the Content-Length, then the connection closes), or
/// as a 503 with an S3 XML error body.
#[test]
fn the_fault_proxy_speaks_http_1_1() {
    use std::io::{BufRead, BufReader, Read};
    let s3 = S3::start();
    s3.bucket("pxtest");
    let px = HttpFault::start(s3.port);
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", px.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        (BufReader::new(s.try_clone().unwrap()), s)
    };
    // (status, headers, body read per Content-Length: as many bytes as came)
    let answer = |r: &mut BufReader<std::net::TcpStream>| {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status: u16 = match line.split_whitespace().nth(1) {
            Some(s) => s.parse().unwrap(),
            None => panic!("no status line: {line:?}"),
        };
        let mut len = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
        }
        assert!(!chunked, "the proxy re-frames chunked answers");
        let mut body = Vec::new();
        let _ = r.by_ref().take(len as u64).read_to_end(&mut body);
        (status, len, body)
    };
    let data = pattern(100_000, 3);
    let (mut r, mut w) = connect();
    let put = format!(
        "PUT /pxtest/a HTTP/1.1\r\nHost: 127.0.0.1\r\nx-amz-acl: public-read\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    w.write_all(put.as_bytes()).unwrap();
    w.write_all(&data).unwrap();
    assert_eq!(answer(&mut r).0, 200);
    w.write_all(b"PUT /pxtest/b HTTP/1.1\r\nHost: 127.0.0.1\r\nx-amz-acl: public-read\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for part in data.chunks(30_000) {
        w.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .unwrap();
        w.write_all(part).unwrap();
        w.write_all(b"\r\n").unwrap();
    }
    w.write_all(b"0\r\n\r\n").unwrap();
    assert_eq!(answer(&mut r).0, 200);
    let get = |w: &mut std::net::TcpStream, key: &str| {
        w.write_all(format!("GET /pxtest/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .unwrap()
    };
    for key in ["a", "b"] {
        get(&mut w, key);
        let (st, _, body) = answer(&mut r);
        assert_eq!(
            (st, body == data),
            (200, true),
            "GET {key}: {}",
            String::from_utf8_lossy(&body[..body.len().min(400)])
        );
    }
    let c = px.add(Rule::new(Fault::Corrupt).method("GET").times(1));
    get(&mut w, "a");
    let (st, len, body) = answer(&mut r);
    assert_eq!((st, len, body.len()), (200, data.len(), data.len()));
    assert!(body != data, "the corrupted body came back intact");
    assert_eq!(c.fired(), 1);
    let s = px.add(Rule::new(Fault::Status(503)).key("/pxtest/b").times(1));
    get(&mut w, "b");
    let (st, _, body) = answer(&mut r);
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(st, 503);
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    assert_eq!(s.fired(), 1);
    // Still the same connection: the 503 kept it alive.
    let t = px.add(Rule::new(Fault::Truncate).times(1));
    get(&mut w, "b");
    let (st, len, body) = answer(&mut r);
    assert_eq!((st, len), (200, data.len()));
    assert!(body.len() < len, "the body was not cut short");
    assert!(body[..] == data[..body.len()]);
    assert_eq!(t.fired(), 1);
    let mut rest = Vec::new();
    assert_eq!(
        r.read_to_end(&mut rest).unwrap(),
        0,
        "not closed after the cut"
    );
    assert_eq!(px.requests("GET"), 5);
    assert_eq!(px.requests("PUT"), 2);
    assert_eq!(px.injected_total(), 3);

    // Cut: open connections and new ones are reset until up again.
    let (mut r, mut w) = connect();
    px.down();
    let gone = w
        .write_all(b"GET /pxtest/a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .and_then(|_| r.read(&mut [0u8; 1]));
    assert!(matches!(gone, Ok(0) | Err(_)), "a cut connection answered");
    px.up();
    let (mut r, mut w) = connect();
    get(&mut w, "a");
    assert_eq!(answer(&mut r).0, 200);
}
