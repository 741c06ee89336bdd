//! Test harness: private servers (redis-server, moto's S3 server, Azurite)
//! on random loopback ports in temporary directories, and real FUSE mounts
//! of the `vecfs` binary. Everything is torn down on drop.
#![allow(dead_code)]

pub mod httpfault;
pub mod proxy;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const VECFS: &str = env!("CARGO_BIN_EXE_vecfs");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// close(2) with its result: dropping a `File` throws close errors away.
pub fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    // SAFETY: the fd was just taken out of the File, so it is closed once.
    match unsafe { libc::close(f.into_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// fsync(2) of an open file.
pub fn fsync(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fsync on an fd the File owns.
    match unsafe { libc::fsync(f.as_raw_fd()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// A volume on moto's bucket `vecfs-test` whose store requests go to
/// loopback `port` (moto's own, or a fault proxy's in front of it).
pub fn s3_volume(redis: Redis, s3: S3, port: u16, extra: &[&str]) -> Volume {
    s3.bucket("vecfs-test");
    let bucket = format!("http://127.0.0.1:{port}/vecfs-test");
    let env = vec![
        ("AWS_ACCESS_KEY_ID".to_string(), "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), "testing".to_string()),
    ];
    Volume::format(redis, Backend::S3(s3), "s3", &bucket, env, extra)
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(poll_until(timeout, cond), "timed out waiting for {what}");
}

/// Polls `cond` until it holds (true) or `timeout` passes (false).
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    true
}

fn port_open(port: u16) -> bool {
    port_open_on("127.0.0.1", port)
}

fn port_open_on(host: &str, port: u16) -> bool {
    std::net::TcpStream::connect((host, port)).is_ok()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Redis {
    proc: std::sync::Mutex<Option<Proc>>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// A Redis that keeps every write in its append-only file (fsync per
    /// write), so `stop` and `restart` lose nothing it acknowledged.
    pub fn start_aof() -> Redis {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    pub fn start_with(extra: &[&str]) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut args: Vec<String> = ["--port", &port.to_string(), "--bind", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--save", "", "--appendonly", "no", "--dir"].map(String::from));
        args.push(dir.path().to_string_lossy().into_owned());
        args.extend(extra.iter().map(|s| s.to_string()));
        let r = Redis {
            proc: std::sync::Mutex::new(None),
            dir,
            args,
            port,
        };
        r.restart();
        r
    }

    /// Starts the server (again) on the same port and directory, and waits
    /// until it answers PING (not LOADING).
    pub fn restart(&self) {
        let mut slot = self.proc.lock().unwrap();
        assert!(slot.is_none(), "redis-server is already running");
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        *slot = Some(Proc(child));
        drop(slot);
        // Ready when it answers (a password-protected one answers NOAUTH),
        // not while it is still loading its data.
        wait_for("redis-server", Duration::from_secs(20), || {
            port_open(self.port) && {
                let r = self.cli(&["ping"]);
                r.contains("PONG") || r.contains("NOAUTH")
            }
        });
    }

    /// Stops the server gracefully (SIGTERM: the AOF is flushed) and waits
    /// until it has exited and its port is closed.
    pub fn stop(&self) {
        let Some(mut p) = self.proc.lock().unwrap().take() else {
            return;
        };
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(p.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(p); // SIGKILL if it is still there
        wait_for("redis port closed", Duration::from_secs(10), || {
            !port_open(self.port)
        });
    }

    /// Kills the server with SIGKILL, as a crash would: nothing is flushed.
    pub fn kill9(&self) {
        let p = self.proc.lock().unwrap().take();
        drop(p); // Proc's drop sends SIGKILL and reaps
        wait_for("redis port closed", Duration::from_secs(10), || {
            !port_open(self.port)
        });
    }

    /// The server's process id, while it runs (to SIGSTOP it, say).
    pub fn pid(&self) -> Option<u32> {
        self.proc.lock().unwrap().as_ref().map(|p| p.0.id())
    }

    pub fn is_running(&self) -> bool {
        self.proc.lock().unwrap().is_some()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, db: u32) -> String {
        format!("redis://127.0.0.1:{}/{}", self.port, db)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let o = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

pub struct S3 {
    _proc: Proc,
    pub port: u16,
}

impl S3 {
    /// moto's S3 server (PyPI moto[server]) on loopback.
    pub fn start() -> S3 {
        Self::start_on("127.0.0.1")
    }

    pub fn start_on(host: &str) -> S3 {
        let port = free_port();
        let child = Command::new("moto_server")
            .args(["-H", host, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (pip install 'moto[server]')");
        let s = S3 {
            _proc: Proc(child),
            port,
        };
        wait_for("moto_server", Duration::from_secs(60), || {
            port_open_on(host, port)
        });
        s
    }

    pub fn bucket(&self, name: &str) -> String {
        let url = format!("http://127.0.0.1:{}/{}", self.port, name);
        mkbucket("s3", &url);
        url
    }
}

pub struct Azurite {
    _proc: Proc,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let child = Command::new("azurite-blob")
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .args(["--skipApiVersionCheck", "--silent", "-l"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite-blob must be installed (npm install -g azurite)");
        let a = Azurite {
            _proc: Proc(child),
            _dir: dir,
            port,
        };
        wait_for("azurite", Duration::from_secs(60), || port_open(port));
        a
    }

    pub fn container(&self, name: &str) -> String {
        let url = format!("http://127.0.0.1:{}/devstoreaccount1/{}", self.port, name);
        mkbucket("azure", &url);
        url
    }
}

fn mkbucket(kind: &str, url: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkbucket.py");
    let o = Command::new("python3")
        .arg(script)
        .args([kind, url])
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "mkbucket {kind} {url}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `vecfs` with arguments and extra environment.
pub fn vecfs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(VECFS);
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run vecfs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    File,
    S3,
    Azure,
}

/// Keeps whichever object-store server a volume needs alive.
pub enum Backend {
    File(tempfile::TempDir),
    S3(S3),
    Azure(Azurite),
}

/// A formatted volume: its Redis, its object store and how to mount it.
pub struct Volume {
    pub redis: Redis,
    pub backend: Backend,
    pub url: String,
    pub name: String,
    pub env: Vec<(String, String)>,
}

impl Volume {
    pub fn new(storage: Storage) -> Volume {
        Self::with_args(storage, &[])
    }

    pub fn with_args(storage: Storage, extra: &[&str]) -> Volume {
        let redis = Redis::start();
        let mut env: Vec<(String, String)> = Vec::new();
        let (backend, kind, bucket) = match storage {
            Storage::File => {
                let d = tempfile::tempdir().expect("tempdir");
                let b = d.path().join("objects").to_string_lossy().into_owned();
                (Backend::File(d), "file", b)
            }
            Storage::S3 => {
                let s = S3::start();
                let b = s.bucket("vecfs-test");
                env.push(("AWS_ACCESS_KEY_ID".into(), "testing".into()));
                env.push(("AWS_SECRET_ACCESS_KEY".into(), "testing".into()));
                (Backend::S3(s), "s3", b)
            }
            Storage::Azure => {
                let a = Azurite::start();
                let b = a.container("vecfs-test");
                env.push((
                    "AZURE_STORAGE_CONNECTION_STRING".into(),
                    "UseDevelopmentStorage=true".into(),
                ));
                (Backend::Azure(a), "azure", b)
            }
        };
        Self::format(redis, backend, kind, &bucket, env, extra)
    }

    /// Formats volume `testvol` in db 1 of `redis` on a store the caller
    /// set up (e.g. a bucket URL that goes through a fault `Proxy`).
    pub fn format(
        redis: Redis,
        backend: Backend,
        kind: &str,
        bucket: &str,
        env: Vec<(String, String)>,
        extra: &[&str],
    ) -> Volume {
        let url = redis.url(1);
        let name = "testvol".to_string();
        let mut args = vec!["format", &url, &name, "--storage", kind, "--bucket", bucket];
        args.extend_from_slice(extra);
        let v = Volume {
            redis,
            backend,
            url: url.clone(),
            name: name.clone(),
            env,
        };
        let o = vecfs(&args, &v.env_refs());
        assert!(o.status.success(), "format failed: {}", stderr(&o));
        v
    }

    pub fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect()
    }

    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// Mounts with the Prometheus endpoint on a free port, once it answers.
    pub fn mount_with_metrics(&self, extra: &[&str]) -> (Mount, Metrics) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--metrics", &addr]);
        let m = self.mount_with(&args);
        wait_for("metrics endpoint", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        (m, Metrics(port))
    }

    /// Mounts in the foreground as a child process, so the test owns it.
    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        self.mount_via(&[], &self.url, extra)
    }

    /// Mounts with a command prefix (e.g. `nsenter --net=...`) and META-URL.
    pub fn mount_via(&self, wrapper: &[&str], url: &str, extra: &[&str]) -> Mount {
        mount_at(wrapper, url, &self.env, extra)
    }
}

/// Mounts META-URL `url` in the foreground as a child process (through
/// `wrapper`, a command prefix, if any) with environment `env`, once the
/// mount is ready.
pub fn mount_at(wrapper: &[&str], url: &str, env: &[(String, String)], extra: &[&str]) -> Mount {
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let mp = dir.path().join("mnt");
        std::fs::create_dir(&mp).expect("mkdir mountpoint");
        let cache = dir.path().join("cache");
        let log = dir.path().join("vecfs.log");
        let mut c = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(VECFS);
                c
            }
            None => Command::new(VECFS),
        };
        c.args(["mount", url]).arg(&mp);
        if !extra.contains(&"--cache-dir") {
            c.arg("--cache-dir").arg(&cache);
        }
        c.arg("--log")
            .arg(&log)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn vecfs mount");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_fuse_mount(&mp) {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "vecfs mount exited with {st}: {err}\nlog: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "mount did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Mount {
            child: Some(child),
            path: mp,
            log,
            _dir: dir,
        }
    }
}

/// A Redis Cluster on loopback ports, each node with its own directory
/// (and so its own `nodes.conf`), slots spread by `redis-cli --cluster
/// create`. Torn down on drop.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub const NODE_ARGS: [&'static str; 6] = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "5000",
    ];

    /// A cluster-enabled server, not yet in a cluster. Its bus port is a
    /// free port too: the default, the client port + 10000, does not exist
    /// for a client port above 55535 (a third of the ephemeral range) and
    /// the server would exit at start. `extra` comes last, so it may
    /// override NODE_ARGS (e.g. `--cluster-node-timeout`).
    pub fn node(extra: &[&str]) -> Redis {
        let bus = free_port().to_string();
        let mut args: Vec<&str> = Self::NODE_ARGS.to_vec();
        args.extend(["--cluster-port", &bus]);
        args.extend_from_slice(extra);
        Redis::start_with(&args)
    }

    /// `masters` masters, no replicas.
    pub fn start(masters: usize) -> Cluster {
        Self::start_with(masters, 0, &[])
    }

    /// `masters` masters with `replicas` replicas each (which nodes become
    /// masters is `redis-cli`'s choice: see `masters()`), every node
    /// started with `extra` too. Returns once the cluster is ok and every
    /// replica is in sync with its master.
    pub fn start_with(masters: usize, replicas: usize, extra: &[&str]) -> Cluster {
        let nodes: Vec<Redis> = (0..masters * (1 + replicas))
            .map(|_| Self::node(extra))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        let o = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            o.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let c = Cluster { nodes };
        c.wait_ok();
        if replicas > 0 {
            wait_for("the replicas are in sync", Duration::from_secs(30), || {
                let ms = c.masters();
                ms.len() == masters
                    && c.nodes.iter().enumerate().all(|(i, n)| {
                        let info = n.cli(&["info", "replication"]);
                        if ms.contains(&i) {
                            info.contains(&format!("connected_slaves:{replicas}"))
                        } else {
                            info.contains("master_link_status:up")
                        }
                    })
            });
        }
        c
    }

    /// Waits until every running node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        wait_for("cluster_state:ok", Duration::from_secs(30), || {
            self.nodes
                .iter()
                .filter(|n| n.is_running())
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
        });
    }

    /// CLUSTER NODES as the first running node that answers sees it.
    pub fn view(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.cli(&["cluster", "nodes"]))
            .find(|v| !v.trim().is_empty())
            .unwrap_or_default()
    }

    /// The index in `nodes` of the node at `addr` (`ip:port@cport`).
    fn index_of(&self, addr: &str) -> Option<usize> {
        let port: u16 = addr
            .split('@')
            .next()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())?;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// The nodes a running node sees as healthy masters.
    pub fn masters(&self) -> Vec<usize> {
        let mut m: Vec<usize> = self
            .view()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let flags = f.get(2)?;
                (flags.split(',').any(|x| x == "master") && !flags.contains("fail"))
                    .then(|| self.index_of(f.get(1)?))?
            })
            .collect();
        m.sort();
        m
    }

    /// The replicas of node `master` (by CLUSTER NODES' master-id field).
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        let id = self.nodes[master]
            .cli(&["cluster", "myid"])
            .trim()
            .to_string();
        self.view()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(3) == Some(&id.as_str())).then(|| self.index_of(f.get(1)?))?
            })
            .collect()
    }

    /// `redis+cluster://` naming every node, starting with the node
    /// `first` (an index into `nodes`).
    pub fn url_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        let hosts: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", self.nodes[(first + i) % n].port))
            .collect();
        format!("redis+cluster://{}/", hosts.join(","))
    }

    /// The hash slot of `key` (CLUSTER KEYSLOT).
    pub fn keyslot(&self, key: &str) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .map(|n| n.cli(&["cluster", "keyslot", key]))
            .unwrap_or_default()
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number")
    }

    /// The index of the master that owns `slot` (from CLUSTER NODES:
    /// `id ip:port@cport flags master ping pong epoch state slots...`, as
    /// the first running node sees it).
    pub fn owner(&self, slot: u16) -> usize {
        let map = self.view();
        let line = map
            .lines()
            .find(|l| {
                l.split(' ').skip(8).any(|r| match r.split_once('-') {
                    Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    },
                    None => r.parse() == Ok(slot),
                })
            })
            .unwrap_or_else(|| panic!("no node owns slot {slot}:\n{map}"));
        let addr = line.split(' ').nth(1).unwrap_or("");
        self.index_of(addr)
            .unwrap_or_else(|| panic!("slot {slot} owned by an unknown node {addr}"))
    }

    /// Every key on every node, with the index of the node holding it.
    pub fn keys(&self, pattern: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for k in n.cli(&["--scan", "--pattern", pattern]).lines() {
                if !k.is_empty() {
                    out.push((i, k.to_string()));
                }
            }
        }
        out
    }
}

/// A volume formatted on a Redis Cluster (whose lifetime the caller
/// keeps), on the local `file` store.
pub struct ClusterVolume {
    pub url: String,
    pub name: String,
    pub env: Vec<(String, String)>,
    pub store: tempfile::TempDir,
}

impl ClusterVolume {
    pub fn format(url: &str, name: &str, extra: &[&str]) -> ClusterVolume {
        let store = tempfile::tempdir().expect("tempdir");
        let bucket = store.path().join("objects").to_string_lossy().into_owned();
        let mut args = vec![
            "format",
            url,
            name,
            "--storage",
            "file",
            "--bucket",
            &bucket,
        ];
        args.extend_from_slice(extra);
        let o = vecfs(&args, &[]);
        assert!(o.status.success(), "format failed: {}", stderr(&o));
        ClusterVolume {
            url: url.to_string(),
            name: name.to_string(),
            env: Vec::new(),
            store,
        }
    }

    /// The store's directory (the `--bucket`).
    pub fn bucket(&self) -> PathBuf {
        self.store.path().join("objects")
    }

    pub fn mount(&self) -> Mount {
        self.mount_with(&[])
    }

    /// Mounts by name: a cluster may hold several volumes.
    pub fn mount_with(&self, extra: &[&str]) -> Mount {
        let mut args = vec!["--name", self.name.as_str()];
        args.extend_from_slice(extra);
        mount_at(&[], &self.url, &self.env, &args)
    }
}

pub fn is_fuse_mount(p: &Path) -> bool {
    let target = p.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|s| {
            s.lines().any(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                f.len() > 4 && f[4] == target && l.contains(" - fuse")
            })
        })
        .unwrap_or(false)
}

pub struct Mount {
    child: Option<Child>,
    pub path: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Unmounts and waits for the daemon to exit cleanly.
    pub fn unmount(mut self) {
        self.stop(true);
    }

    fn stop(&mut self, check: bool) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let o = Command::new("umount").arg(&self.path).output();
        if !matches!(&o, Ok(o) if o.status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    if check {
                        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                        assert!(st.success(), "daemon exited with {st}; log:\n{log}");
                        // An unmount from outside is how a session ends, not
                        // a failure to report.
                        assert!(
                            !log.contains("Failed to umount"),
                            "an ordinary unmount logged a warning; log:\n{log}"
                        );
                    }
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(!check, "daemon did not exit after unmount");
                    return;
                }
            }
        }
    }

    /// The mount's private directory (0700 from tempfile): holds the
    /// mountpoint `mnt`, the default cache dir `cache` and `vecfs.log`.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// The disk cache directory the harness passes unless the test gave one.
    pub fn cache_dir(&self) -> PathBuf {
        self._dir.path().join("cache")
    }

    /// For watchdogs: kills the daemon (every pending FUSE request then
    /// fails with ENOTCONN, so no thread stays blocked in the kernel) and
    /// detaches the mount. Callable from any thread; Drop reaps the child.
    pub fn abort(&self) {
        abort_mount(self.pid(), &self.path);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the daemon the hard way, as a power loss would, and detaches
    /// the dead mount.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.stop(false);
    }
}

/// A small seeded xorshift generator, so tests and benchmarks replay exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// A daemon's Prometheus endpoint.
pub struct Metrics(pub u16);

impl Metrics {
    /// The current value of counter `name`.
    pub fn get(&self, name: &str) -> u64 {
        let body = self.body();
        Self::find(&body, name).unwrap_or_else(|| panic!("{name} missing from metrics:\n{body}"))
    }

    /// The current value of counter `name`, 0 while it has no sample yet
    /// (a labelled counter appears at its first count).
    pub fn get_or_zero(&self, name: &str) -> u64 {
        Self::find(&self.body(), name).unwrap_or(0)
    }

    fn body(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.0)).expect("metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .expect("request");
        let mut body = String::new();
        s.read_to_string(&mut body).expect("response");
        body
    }

    fn find(body: &str, name: &str) -> Option<u64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..len).map(|_| (r.next() >> 24) as u8).collect()
}

/// Pages of `path` resident in the page cache, without faulting any in.
pub fn resident_pages(path: &Path) -> usize {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as usize;
    if len == 0 {
        return 0;
    }
    // SAFETY: a read-only shared mapping of an open file, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    let pages = len.div_ceil(4096);
    let mut vec = vec![0u8; pages];
    // SAFETY: addr/len is the mapping made above; vec has one byte per page.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    // SAFETY: unmapping what was mapped.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(rc, 0);
    vec.iter().filter(|b| **b & 1 == 1).count()
}

/// Bytes of all files below `p`.
pub fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            total += if md.is_dir() {
                dir_bytes(&e.path())
            } else {
                md.len()
            };
        }
    }
    total
}

/// Kills a mount daemon by pid and lazily unmounts its mountpoint.
pub fn abort_mount(pid: u32, path: &Path) {
    if pid != 0 {
        // SAFETY: signalling the daemon this test spawned, by its pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let _ = Command::new("umount").arg("-l").arg(path).output();
}

/// Runs `f` on its own thread and returns its result, or, if it has not
/// finished within `timeout`, calls `on_timeout` (e.g. `Mount::abort`, which
/// unblocks a thread stuck in a FUSE request) and panics: a hung file system
/// fails the test instead of hanging it. A panic in `f` is passed on.
pub fn within<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    on_timeout: impl FnOnce(),
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            let _ = t.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match t.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!("worker ended without a result"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            on_timeout();
            panic!("{what}: not finished within {timeout:?} (mount aborted)");
        }
    }
}

/// (bytes used, inodes used) as df sees them.
pub fn df(p: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: an all-zero statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, st a valid out-parameter.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (
        (st.f_blocks - st.f_bfree) * st.f_frsize,
        st.f_files - st.f_ffree,
    )
}

/// Writes `data` to a new file at `p` and closes it, checking the close.
pub fn write_closed(p: &Path, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
    close(f).unwrap();
}
