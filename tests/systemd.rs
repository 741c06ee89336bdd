//! The daemon run the way examples/vecfs@.service runs it: in the
//! foreground with NOTIFY_SOCKET set (Type=notify), stopped with SIGTERM.
//! The test plays systemd's part: it listens on the datagram socket.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Starts `vecfs mount` in the foreground like the unit's ExecStart.
fn start(vol: &Volume, dir: &Path, notify_socket: &str) -> Child {
    let mp = dir.join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    Command::new(VECFS)
        .args(["mount", "@env"])
        .arg(&mp)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .arg("--log")
        .arg(dir.join("vecfs.log"))
        .args(["--metrics", "none"])
        .env("VECFS_META_URL", &vol.url)
        .env("NOTIFY_SOCKET", notify_socket)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn vecfs mount")
}

/// The next notification, or None after `timeout`.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    sock.recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn sigterm(c: &Child) {
    // SAFETY: signalling the daemon this test spawned, by its pid.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
}

fn wait_exit(c: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("the daemon did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the daemon and detaches its mount if the test fails.
struct Guard(u32, std::path::PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        abort_mount(self.0, &self.1);
    }
}

#[test]
fn ready_once_the_mount_answers_and_sigterm_unmounts() {
    let vol = Volume::new(Storage::File);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = start(&vol, dir.path(), sock_path.to_str().unwrap());
    let mp = dir.path().join("mnt");
    let _g = Guard(child.id(), mp.clone());

    let msg = recv(&sock, Duration::from_secs(30)).expect("no READY=1 within 30 s");
    // READY=1 only once the mount is in the table and answers at once.
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(is_fuse_mount(&mp), "READY=1 before the mount exists");
    let t = Instant::now();
    std::fs::write(mp.join("f"), b"served").unwrap();
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"served");
    assert!(t.elapsed() < Duration::from_secs(5));
    // Exactly one READY=1.
    assert_eq!(recv(&sock, Duration::from_millis(300)), None);

    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert!(st.success(), "the daemon exited with {st} on SIGTERM");
    assert!(!is_fuse_mount(&mp), "still mounted after SIGTERM");
    let stopping = recv(&sock, Duration::from_secs(1)).unwrap_or_default();
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}");
    // What was written before the stop is in the volume.
    let m = vol.mount();
    assert_eq!(std::fs::read(m.p("f")).unwrap(), b"served");
    m.unmount();
}

#[test]
fn abstract_notify_socket_and_busy_mount_on_sigterm() {
    let vol = Volume::new(Storage::File);
    let dir = tempfile::tempdir().unwrap();
    // systemd's usual NOTIFY_SOCKET is a path, but '@' names an abstract one.
    let name = format!("vecfs-test-notify-{}", std::process::id());
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap()
    };
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let mut child = start(&vol, dir.path(), &format!("@{name}"));
    let mp = dir.path().join("mnt");
    let _g = Guard(child.id(), mp.clone());
    let msg = recv(&sock, Duration::from_secs(30)).expect("no READY=1 within 30 s");
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");

    // A file open there (a container still running): SIGTERM detaches the
    // mount at once, the open file keeps working, and the daemon exits
    // cleanly when it is closed.
    use std::io::{Read, Seek, Write};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(mp.join("busy"))
        .unwrap();
    f.write_all(b"open across the stop").unwrap();
    sigterm(&child);
    wait_for("mountpoint detached", Duration::from_secs(10), || {
        !is_fuse_mount(&mp)
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a file still open"
    );
    f.rewind().unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"open across the stop");
    close(f).unwrap();
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert!(st.success(), "the daemon exited with {st}");
    let m = vol.mount();
    assert_eq!(std::fs::read(m.p("busy")).unwrap(), b"open across the stop");
    m.unmount();
}

#[test]
fn example_unit_passes_systemd_analyze_verify() {
    let Ok(o) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: unit not linted");
        return;
    };
    assert!(o.status.success());
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vecfs@.service"),
    )
    .unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("Restart=on-failure"));
    // verify checks that ExecStart's binary exists: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vecfs@.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/vecfs", VECFS)).unwrap();
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("vecfs@lint.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let own: Vec<&str> = err.lines().filter(|l| l.contains("vecfs@")).collect();
    assert!(o.status.success() && own.is_empty(), "{err}");
}
