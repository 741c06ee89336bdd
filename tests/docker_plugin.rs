//! `vecfs docker-plugin` driven over its unix socket the way dockerd
//! drives a volume plugin: HTTP/1.1 POSTs with JSON bodies
//! (Accept: application/vnd.docker.plugins.v1.2+json), answers decoded
//! as dockerd does (an "Err" field means failure).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const PASSWORD: &str = "plugin-redis-pw";

struct Plugin {
    child: Child,
    socket: PathBuf,
    root: PathBuf,
}

impl Plugin {
    fn start(dir: &Path) -> Plugin {
        let socket = dir.join("run/vecfs.sock");
        let root = dir.join("root");
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new(VECFS)
            .arg("docker-plugin")
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .arg("--log")
            .arg(dir.join("plugin.log"))
            .env_remove("RUST_LOG")
            .env_remove("META_PASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vecfs docker-plugin");
        wait_for("plugin socket", Duration::from_secs(10), || {
            UnixStream::connect(&socket).is_ok()
        });
        Plugin {
            child,
            socket,
            root,
        }
    }

    /// One plugin call; returns (HTTP status, JSON body).
    fn call(&self, method: &str, body: &Value) -> (u16, Value) {
        // dockerd encodes a nil request as `null` (Plugin.Activate).
        let body = format!("{body}\n");
        let mut s = UnixStream::connect(&self.socket).expect("connect plugin");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST /{method} HTTP/1.1\r\nHost: plugin\r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Length: {}\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
             Content-Type: application/vnd.docker.plugins.v1+json\r\nAccept-Encoding: gzip\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let code: u16 = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status:?}"));
        let mut len = 0usize;
        let mut ctype = String::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse().unwrap(),
                "content-type" => ctype = v.trim().to_string(),
                _ => {}
            }
        }
        assert_eq!(ctype, "application/vnd.docker.plugins.v1+json");
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).unwrap();
        let v: Value = serde_json::from_slice(&buf).unwrap_or_else(|e| {
            panic!(
                "{method}: not JSON ({e}): {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
        (code, v)
    }

    /// A call that must succeed as dockerd judges it.
    fn ok(&self, method: &str, body: Value) -> Value {
        let (code, v) = self.call(method, &body);
        assert!(
            code == 200 && v.get("Err").is_none_or(|e| e.as_str() == Some("")),
            "{method} failed ({code}): {v}\nlog: {}",
            std::fs::read_to_string(self.root.parent().unwrap().join("plugin.log"))
                .unwrap_or_default()
        );
        v
    }

    /// A call that must fail with an Err; returns it.
    fn fails(&self, method: &str, body: Value) -> String {
        let (code, v) = self.call(method, &body);
        let e = v["Err"].as_str().unwrap_or("").to_string();
        assert!(
            code != 200 && !e.is_empty(),
            "{method} did not fail: {code} {v}"
        );
        e
    }

    fn stop(&mut self) {
        // SAFETY: signalling the plugin this test spawned, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Mounts the plugin's daemons hold, if the test failed midway.
        if let Ok(rd) = std::fs::read_dir(self.root.join("volumes")) {
            for e in rd.flatten() {
                if is_fuse_mount(&e.path()) {
                    let _ = Command::new("umount").arg("-l").arg(e.path()).output();
                }
            }
        }
    }
}

fn password_volume() -> Volume {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]);
    let d = tempfile::tempdir().unwrap();
    let bucket = d.path().join("objects").to_string_lossy().into_owned();
    Volume::format(
        redis,
        Backend::File(d),
        "file",
        &bucket,
        vec![("META_PASSWORD".into(), PASSWORD.into())],
        &[],
    )
}

#[test]
fn volume_plugin_protocol_as_dockerd_speaks_it() {
    let vol = password_volume();
    // The subdirectory a volume shows must exist in the vecfs volume.
    let m = vol.mount();
    std::fs::create_dir_all(m.p("milvus/db")).unwrap();
    m.unmount();
    let meta = format!("redis://:{PASSWORD}@127.0.0.1:{}/1", vol.redis.port);

    let dir = tempfile::tempdir().unwrap();
    let mut p = Plugin::start(&dir.path().join("node1"));
    // Activate (dockerd sends `null`) and Capabilities.
    let (code, v) = p.call("Plugin.Activate", &Value::Null);
    assert_eq!(code, 200);
    assert_eq!(v, json!({"Implements": ["VolumeDriver"]}));
    let v = p.ok("VolumeDriver.Capabilities", Value::Null);
    assert_eq!(v, json!({"Capabilities": {"Scope": "global"}}));

    // Create with the META-URL, a subdir and mount options.
    p.ok(
        "VolumeDriver.Create",
        json!({"Name": "milvus-db", "Opts": {"meta": meta, "subdir": "milvus/db", "cache-size": "64"}}),
    );
    // Creating it again with the same options (another `docker run -v`) is fine.
    p.ok(
        "VolumeDriver.Create",
        json!({"Name": "milvus-db", "Opts": {}}),
    );
    let e = p.fails(
        "VolumeDriver.Create",
        json!({"Name": "bad", "Opts": {"meta": meta, "turbo": "on"}}),
    );
    assert!(e.contains("'turbo'"), "{e}");
    let e = p.fails("VolumeDriver.Create", json!({"Name": "nometa", "Opts": {}}));
    assert!(e.contains("meta"), "{e}");
    let e = p.fails(
        "VolumeDriver.Create",
        json!({"Name": "../etc", "Opts": {"meta": meta}}),
    );
    assert!(e.contains("invalid volume name"), "{e}");

    // Not mounted yet: Path and Get say so with an empty Mountpoint.
    assert_eq!(
        p.ok("VolumeDriver.Path", json!({"Name": "milvus-db"}))["Mountpoint"],
        ""
    );
    let g = p.ok("VolumeDriver.Get", json!({"Name": "milvus-db"}));
    assert_eq!(g["Volume"]["Name"], "milvus-db");
    assert!(
        !g.to_string().contains(PASSWORD),
        "Get shows the password: {g}"
    );
    let l = p.ok("VolumeDriver.List", json!({}));
    assert_eq!(l["Volumes"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["Volumes"][0]["Name"], "milvus-db");

    // Two containers mount it: one mount, the same path.
    let a = p.ok(
        "VolumeDriver.Mount",
        json!({"Name": "milvus-db", "ID": "container-a"}),
    );
    let mp = PathBuf::from(a["Mountpoint"].as_str().unwrap());
    assert!(is_fuse_mount(&mp), "{} is not mounted", mp.display());
    let b = p.ok(
        "VolumeDriver.Mount",
        json!({"Name": "milvus-db", "ID": "container-b"}),
    );
    assert_eq!(a["Mountpoint"], b["Mountpoint"]);
    assert_eq!(
        p.ok("VolumeDriver.Path", json!({"Name": "milvus-db"}))["Mountpoint"],
        a["Mountpoint"]
    );
    std::fs::write(mp.join("segment.rv"), b"written in container a").unwrap();
    assert!(
        cmdlines_with(PASSWORD).is_empty(),
        "the password shows in ps: {:?}",
        cmdlines_with(PASSWORD)
    );

    // A second node (its own plugin and root) reads it through its mount.
    let p2 = Plugin::start(&dir.path().join("node2"));
    p2.ok("VolumeDriver.Create", json!({"Name": "milvus-db", "Opts": {"meta": meta, "subdir": "milvus/db", "cache-size": "64", "read-only": ""}}));
    let c = p2.ok(
        "VolumeDriver.Mount",
        json!({"Name": "milvus-db", "ID": "reader-c"}),
    );
    let mp2 = PathBuf::from(c["Mountpoint"].as_str().unwrap());
    assert_ne!(mp, mp2);
    assert_eq!(
        std::fs::read(mp2.join("segment.rv")).unwrap(),
        b"written in container a"
    );
    // The subdir is the volume's root there too.
    let m = vol.mount();
    assert_eq!(
        std::fs::read(m.p("milvus/db/segment.rv")).unwrap(),
        b"written in container a"
    );
    m.unmount();
    p2.ok(
        "VolumeDriver.Unmount",
        json!({"Name": "milvus-db", "ID": "reader-c"}),
    );
    assert!(!is_fuse_mount(&mp2));

    // In use: Remove is refused. The first Unmount keeps the mount.
    let e = p.fails("VolumeDriver.Remove", json!({"Name": "milvus-db"}));
    assert!(e.contains("in use"), "{e}");
    p.ok(
        "VolumeDriver.Unmount",
        json!({"Name": "milvus-db", "ID": "container-a"}),
    );
    assert!(
        is_fuse_mount(&mp),
        "unmounted while container-b still uses it"
    );
    assert_eq!(
        std::fs::read(mp.join("segment.rv")).unwrap(),
        b"written in container a"
    );

    // A restarted plugin knows the volume and its remaining user.
    p.stop();
    assert!(is_fuse_mount(&mp), "the plugin's exit took the mount away");
    let state = std::fs::read_to_string(dir.path().join("node1/root/volumes.json")).unwrap();
    assert!(state.contains("container-b"), "{state}");
    let p = Plugin::start(&dir.path().join("node1"));
    let l = p.ok("VolumeDriver.List", json!({}));
    assert_eq!(l["Volumes"][0]["Name"], "milvus-db", "{l}");
    assert_eq!(l["Volumes"][0]["Mountpoint"], a["Mountpoint"]);
    p.ok(
        "VolumeDriver.Unmount",
        json!({"Name": "milvus-db", "ID": "container-b"}),
    );
    assert!(!is_fuse_mount(&mp), "still mounted after the last Unmount");
    assert_eq!(
        p.ok("VolumeDriver.Path", json!({"Name": "milvus-db"}))["Mountpoint"],
        ""
    );

    // Mount again after the last unmount works; then remove.
    let a = p.ok(
        "VolumeDriver.Mount",
        json!({"Name": "milvus-db", "ID": "container-d"}),
    );
    assert_eq!(
        std::fs::read(Path::new(a["Mountpoint"].as_str().unwrap()).join("segment.rv")).unwrap(),
        b"written in container a"
    );
    p.ok(
        "VolumeDriver.Unmount",
        json!({"Name": "milvus-db", "ID": "container-d"}),
    );
    p.ok("VolumeDriver.Remove", json!({"Name": "milvus-db"}));
    assert_eq!(p.ok("VolumeDriver.List", json!({}))["Volumes"], json!([]));

    // Unknown volumes and methods are errors dockerd can show.
    for m in [
        "VolumeDriver.Mount",
        "VolumeDriver.Unmount",
        "VolumeDriver.Path",
        "VolumeDriver.Get",
        "VolumeDriver.Remove",
    ] {
        let e = p.fails(m, json!({"Name": "nosuch", "ID": "x"}));
        assert!(e.contains("no such volume"), "{m}: {e}");
    }
    p.fails("VolumeDriver.Frobnicate", json!({}));
    // The log never shows the password.
    let log = std::fs::read_to_string(dir.path().join("node1/plugin.log")).unwrap();
    assert!(log.contains("milvus-db"), "{log}");
    assert!(!log.contains(PASSWORD), "the plugin log shows the password");
}

#[test]
fn a_failed_mount_reports_the_daemons_error() {
    let vol = Volume::new(Storage::File);
    let dir = tempfile::tempdir().unwrap();
    let p = Plugin::start(dir.path());
    p.ok(
        "VolumeDriver.Create",
        json!({"Name": "v1", "Opts": {"meta": vol.url, "subdir": "does/not/exist"}}),
    );
    let e = p.fails("VolumeDriver.Mount", json!({"Name": "v1", "ID": "c1"}));
    assert!(e.contains("does/not/exist"), "{e}");
    // Nothing holds it: it can be removed.
    p.ok("VolumeDriver.Remove", json!({"Name": "v1"}));
}

/// Command lines of all processes that mention `needle`.
fn cmdlines_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&b).replace('\0', " ");
            if s.contains(needle) {
                out.push(s);
            }
        }
    }
    out
}
