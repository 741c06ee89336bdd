//! `vecfs docker-plugin`: Docker's volume plugin protocol (HTTP POST with
//! JSON over a unix socket, the socket dockerd discovers in
//! /run/docker/plugins). A volume is a META-URL plus `vecfs mount` options;
//! it is mounted once per node however many containers use it (reference
//! counted by mount ID) by a `vecfs mount -d` daemon of its own, and
//! unmounted after the last container's Unmount. Volume definitions and
//! mount references live in a JSON state file under --root, so a restarted
//! plugin knows them. META-URLs may hold passwords: the state file is
//! private (0600) and URLs are never logged or answered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  vecfs docker-plugin &\n  \
    docker volume create -d vecfs -o meta=redis://10.0.0.5:6379/1 -o subdir=milvus/db milvus-db\n  \
    docker run -v milvus-db:/var/lib/milvus/db milvusdb/milvus:1.1.1-cpu-d061621-330cc6")]
pub struct PluginArgs {
    /// Unix socket to serve (dockerd discovers plugins in /run/docker/plugins).
    #[arg(long, default_value = "/run/docker/plugins/vecfs.sock")]
    socket: PathBuf,
    /// Directory for the state file, mountpoints, caches and mount logs.
    #[arg(long, default_value = "/var/lib/vecfs/docker")]
    root: PathBuf,
    /// Log file of the plugin itself (default: stderr).
    #[arg(long)]
    pub log: Option<PathBuf>,
}

const MIME: &str = "application/vnd.docker.plugins.v1+json";
const STATE_FILE: &str = "volumes.json";

/// One volume as `docker volume create` defined it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Volume {
    /// META-URL (may carry a password: never logged, never answered).
    meta: String,
    /// The other `-o` options: `vecfs mount` flags without `--`, env-file=.
    #[serde(default)]
    opts: BTreeMap<String, String>,
    /// IDs of the mounts (containers) using it on this node.
    #[serde(default)]
    mounts: BTreeSet<String>,
}

#[derive(Serialize, Deserialize, Default, Debug)]
struct State {
    version: u32,
    volumes: BTreeMap<String, Volume>,
}

struct Plugin {
    root: PathBuf,
    /// One lock for the state and the mounts: requests are rare and a
    /// mount must not race an unmount of the same volume.
    state: tokio::sync::Mutex<State>,
}

/// A request's error: answered as {"Err": ...}.
#[derive(Debug)]
struct PluginError(String);

impl<E: std::fmt::Display> From<E> for PluginError {
    fn from(e: E) -> Self {
        PluginError(format!("{e:#}"))
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, PluginError> {
    Err(PluginError(msg.into()))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Req {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Opts")]
    opts: Option<BTreeMap<String, Value>>,
}

pub async fn run(a: PluginArgs) -> anyhow::Result<()> {
    for d in ["", "volumes", "cache", "logs"] {
        let p = a.root.join(d);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    let mut state = load_state(&a.root)?;
    // Mounts that did not survive (a reboot, a crash) have no users left:
    // dockerd mounts again for containers it restarts.
    for (name, v) in state.volumes.iter_mut() {
        if !v.mounts.is_empty() && !is_mounted(&mountpoint(&a.root, name)) {
            v.mounts.clear();
        }
    }
    save_state(&a.root, &state)?;
    let plugin = Arc::new(Plugin {
        root: a.root.clone(),
        state: tokio::sync::Mutex::new(state),
    });
    let listener = bind(&a.socket)?;
    tracing::info!(socket = %a.socket.display(), root = %a.root.display(), "serving the Docker volume plugin");
    println!(
        "vecfs: docker volume plugin listening on {}",
        a.socket.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let stream = match conn {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let plugin = plugin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(plugin.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!(error = %e, "plugin connection ended with an error");
            }
        });
    }
    // Volumes stay mounted: containers may still use them, and a restarted
    // plugin picks them up from the state file.
    let _ = std::fs::remove_file(&a.socket);
    tracing::info!("docker volume plugin stopped");
    Ok(())
}

/// Binds the socket, replacing a stale one but never a live plugin's.
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "{} is in use: another plugin is serving there",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))
}

async fn handle(
    plugin: Arc<Plugin>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                json!({ "Err": format!("cannot read the request: {e}") }),
            ))
        }
    };
    let r = dispatch(&plugin, &path, &body).await;
    Ok(match r {
        Ok(v) => reply(StatusCode::OK, v),
        Err(PluginError(e)) => {
            tracing::warn!(method = %path, error = %e, "request failed");
            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "Err": e }))
        }
    })
}

fn reply(status: StatusCode, v: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(MIME),
    );
    r
}

async fn dispatch(p: &Plugin, path: &str, body: &[u8]) -> Result<Value, PluginError> {
    // dockerd sends `null` to Activate and may send nothing at all.
    let req: Req = if body.iter().all(u8::is_ascii_whitespace) {
        Req::default()
    } else {
        match serde_json::from_slice::<Option<Req>>(body) {
            Ok(r) => r.unwrap_or_default(),
            Err(e) => return err(format!("malformed request body: {e}")),
        }
    };
    match path {
        "/Plugin.Activate" => Ok(json!({ "Implements": ["VolumeDriver"] })),
        "/VolumeDriver.Capabilities" => Ok(json!({ "Capabilities": { "Scope": "global" } })),
        "/VolumeDriver.Create" => p.create(&req).await,
        "/VolumeDriver.Remove" => p.remove(&req).await,
        "/VolumeDriver.Mount" => p.mount(&req).await,
        "/VolumeDriver.Unmount" => p.unmount(&req).await,
        "/VolumeDriver.Path" => p.path(&req).await,
        "/VolumeDriver.Get" => p.get(&req).await,
        "/VolumeDriver.List" => p.list().await,
        other => err(format!("unsupported plugin method {other}")),
    }
}

/// Docker's own rule for volume names; it also keeps them inside --root.
fn check_name(name: &str) -> Result<(), PluginError> {
    let mut b = name.bytes();
    let ok = b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 255
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        err(format!(
            "invalid volume name '{name}': use [a-zA-Z0-9][a-zA-Z0-9_.-]+"
        ))
    }
}

fn mountpoint(root: &Path, name: &str) -> PathBuf {
    root.join("volumes").join(name)
}

fn is_mounted(p: &Path) -> bool {
    vecfs::util::mounted_fstype(p).is_some_and(|t| t.starts_with("fuse"))
}

impl Plugin {
    fn save(&self, st: &State) -> Result<(), PluginError> {
        save_state(&self.root, st).map_err(PluginError::from)
    }

    async fn create(&self, r: &Req) -> Result<Value, PluginError> {
        check_name(&r.name)?;
        let mut opts: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in r.opts.clone().unwrap_or_default() {
            let v = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            opts.insert(k, v);
        }
        let mut st = self.state.lock().await;
        let meta = opts.remove("meta");
        if let Some(existing) = st.volumes.get(&r.name) {
            // Another node, or `docker run -v name:...`, creating it again.
            let same = meta.as_ref().is_none_or(|m| *m == existing.meta)
                && (opts.is_empty() || opts == existing.opts);
            return if same {
                Ok(json!({}))
            } else {
                err(format!(
                    "volume {} already exists with other options: remove it first",
                    r.name
                ))
            };
        }
        let Some(meta) = meta.filter(|m| !m.is_empty()) else {
            return err("missing option meta: docker volume create -d vecfs -o meta=redis://HOST:6379/1 NAME");
        };
        vecfs::meta::url::parse(&meta)?;
        let mapped = super::mount_helper::map_option_map(&opts)?;
        super::mount_helper::check_mount_args(&mapped.args)?;
        st.volumes.insert(
            r.name.clone(),
            Volume {
                meta,
                opts,
                mounts: BTreeSet::new(),
            },
        );
        self.save(&st)?;
        tracing::info!(volume = %r.name, "created");
        Ok(json!({}))
    }

    async fn remove(&self, r: &Req) -> Result<Value, PluginError> {
        let mut st = self.state.lock().await;
        let Some(v) = st.volumes.get(&r.name) else {
            return err(format!("no such volume: {}", r.name));
        };
        if !v.mounts.is_empty() {
            return err(format!(
                "volume {} is in use by {} mount(s)",
                r.name,
                v.mounts.len()
            ));
        }
        st.volumes.remove(&r.name);
        self.save(&st)?;
        let _ = std::fs::remove_dir(mountpoint(&self.root, &r.name));
        tracing::info!(volume = %r.name, "removed (its data stays in the vecfs volume)");
        Ok(json!({}))
    }

    async fn mount(&self, r: &Req) -> Result<Value, PluginError> {
        let mut st = self.state.lock().await;
        let Some(v) = st.volumes.get(&r.name).cloned() else {
            return err(format!("no such volume: {}", r.name));
        };
        let mp = mountpoint(&self.root, &r.name);
        if !is_mounted(&mp) {
            let root = self.root.clone();
            let name = r.name.clone();
            let mp2 = mp.clone();
            tokio::task::spawn_blocking(move || mount_volume(&root, &name, &v, &mp2)).await??;
        }
        if let Some(v) = st.volumes.get_mut(&r.name) {
            v.mounts.insert(r.id.clone());
        }
        self.save(&st)?;
        tracing::info!(volume = %r.name, id = %r.id, "mounted");
        Ok(json!({ "Mountpoint": mp }))
    }

    async fn unmount(&self, r: &Req) -> Result<Value, PluginError> {
        let mut st = self.state.lock().await;
        let Some(v) = st.volumes.get_mut(&r.name) else {
            return err(format!("no such volume: {}", r.name));
        };
        v.mounts.remove(&r.id);
        let last = v.mounts.is_empty();
        let mp = mountpoint(&self.root, &r.name);
        if last && is_mounted(&mp) {
            let mp2 = mp.clone();
            let r2 = tokio::task::spawn_blocking(move || unmount_volume(&mp2)).await?;
            if let Err(e) = r2 {
                // Still mounted: keep the reference so a retry unmounts.
                v.mounts.insert(r.id.clone());
                return Err(e.into());
            }
        }
        self.save(&st)?;
        tracing::info!(volume = %r.name, id = %r.id, unmounted = last, "unmount");
        Ok(json!({}))
    }

    async fn path(&self, r: &Req) -> Result<Value, PluginError> {
        let st = self.state.lock().await;
        if !st.volumes.contains_key(&r.name) {
            return err(format!("no such volume: {}", r.name));
        }
        Ok(json!({ "Mountpoint": self.shown_mountpoint(&r.name) }))
    }

    async fn get(&self, r: &Req) -> Result<Value, PluginError> {
        let st = self.state.lock().await;
        let Some(v) = st.volumes.get(&r.name) else {
            return err(format!("no such volume: {}", r.name));
        };
        let mut opts = v.opts.clone();
        opts.insert("meta".into(), vecfs::meta::url::redact(&v.meta));
        Ok(json!({ "Volume": {
            "Name": r.name,
            "Mountpoint": self.shown_mountpoint(&r.name),
            "Status": { "mounts": v.mounts.len(), "options": opts },
        }}))
    }

    async fn list(&self) -> Result<Value, PluginError> {
        let st = self.state.lock().await;
        let vols: Vec<Value> = st
            .volumes
            .keys()
            .map(|n| json!({ "Name": n, "Mountpoint": self.shown_mountpoint(n) }))
            .collect();
        Ok(json!({ "Volumes": vols }))
    }

    /// The mountpoint while mounted here, else "" (as Docker expects).
    fn shown_mountpoint(&self, name: &str) -> String {
        let mp = mountpoint(&self.root, name);
        if is_mounted(&mp) {
            mp.to_string_lossy().into_owned()
        } else {
            String::new()
        }
    }
}

/// Mounts a volume with `vecfs mount -d`: the META-URL travels in the
/// environment, never on a command line. Each volume gets its own cache
/// directory and log under --root unless its options say otherwise.
fn mount_volume(root: &Path, name: &str, v: &Volume, mp: &Path) -> anyhow::Result<()> {
    let mapped = super::mount_helper::map_option_map(&v.opts)?;
    std::fs::create_dir_all(mp).with_context(|| format!("cannot create {}", mp.display()))?;
    let exe = std::env::current_exe().context("cannot find the vecfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.args(["mount", "@env"]).arg(mp).arg("-d");
    let has = |flag: &str| {
        mapped
            .args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !has("--cache-dir") {
        cmd.arg(format!(
            "--cache-dir={}",
            root.join("cache").join(name).display()
        ));
    }
    if !has("--log") {
        cmd.arg(format!(
            "--log={}",
            root.join("logs").join(format!("{name}.log")).display()
        ));
    }
    if !has("--metrics") {
        // One endpoint per volume: a fixed default port would collide.
        cmd.arg("--metrics=none");
    }
    cmd.args(&mapped.args)
        .env("VECFS_META_URL", &v.meta)
        .envs(mapped.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null());
    let out = cmd.output().context("cannot start vecfs mount")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("vecfs: error: "))
            .unwrap_or("vecfs mount failed");
        bail!("cannot mount volume {name}: {msg}");
    }
    Ok(())
}

fn unmount_volume(mp: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the vecfs executable")?;
    let out = Command::new(exe)
        .arg("umount")
        .arg(mp)
        .stdin(Stdio::null())
        .output()
        .context("cannot run vecfs umount")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let msg = stderr
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("vecfs: error: "))
            .unwrap_or("vecfs umount failed");
        bail!("{msg}");
    }
    // The daemon exits after the kernel let go; wait so a Mount right after
    // this does not find the mountpoint still busy.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while is_mounted(mp) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

fn load_state(root: &Path) -> anyhow::Result<State> {
    let p = root.join(STATE_FILE);
    match std::fs::read(&p) {
        Ok(b) => {
            let st: State = serde_json::from_slice(&b)
                .with_context(|| format!("{} is not a plugin state file", p.display()))?;
            if st.version > 1 {
                bail!(
                    "{} was written by a newer vecfs (state version {})",
                    p.display(),
                    st.version
                );
            }
            Ok(st)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State {
            version: 1,
            ..State::default()
        }),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// Writes the state file whole (temporary file, fsync, rename): a crash
/// leaves the old or the new state, never half of one. 0600: it holds
/// META-URLs, passwords included.
fn save_state(root: &Path, st: &State) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let p = root.join(STATE_FILE);
    let tmp = root.join(format!("{STATE_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(&State {
        version: 1,
        volumes: st.volumes.clone(),
    })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &p).with_context(|| format!("cannot replace {}", p.display()))?;
    Ok(())
}
