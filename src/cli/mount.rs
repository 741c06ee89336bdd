//! `vecfs mount`: checks everything that can be checked before touching the
//! kernel (mountpoint, Redis, volume record, object store, subdir), then
//! mounts and serves until unmounted or signalled. With `-d` the command
//! starts itself again as a daemon and returns once the mount is ready, or
//! fails with the daemon's own error line.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use vecfs::cache::{BlockCache, DiskCache};
use vecfs::data::staging::Staging;
use vecfs::data::DataStore;
use vecfs::fuse::FuseFs;
use vecfs::meta::{FileKind, Meta, ROOT_INO};
use vecfs::object::{build_store, BlockStore, Credentials};
use vecfs::prefetch::warm::{WarmConfig, Warmer};
use vecfs::session;
use vecfs::util::{mounted_fstype, parse_size};
use vecfs::vfs::{Vfs, VfsConfig};

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// Redis URL of the volume (the password may come from META_PASSWORD).
    meta_url: String,
    /// An existing, empty directory to mount on.
    mountpoint: PathBuf,
    /// Run in the background; return once the mount is ready.
    #[arg(short = 'd', long)]
    background: bool,
    /// Mount read-only: every write answers EROFS.
    #[arg(long)]
    read_only: bool,
    /// Mount only this subdirectory of the volume.
    #[arg(long)]
    subdir: Option<String>,
    /// Let other users (and containers) use the mount [default: on for root].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    allow_other: Option<bool>,
    /// Directory of the local block cache ("memory" for none).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Disk cache size in MiB (suffixes K, M, G accepted).
    #[arg(long, default_value = "10240")]
    cache_size: String,
    /// Keep at least this share of the cache directory's file system free.
    #[arg(long, default_value_t = 0.1)]
    free_space_ratio: f64,
    /// Memory block cache in MiB.
    #[arg(long, default_value = "512")]
    mem_cache_size: String,
    /// Kernel read-ahead for the mount in KiB (needs root).
    #[arg(long, default_value_t = 8192)]
    readahead_kb: u32,
    /// Memory for write buffers in MiB.
    #[arg(long, default_value = "300")]
    buffer_size: String,
    /// Write-back: close and fsync return once the writes are staged durably
    /// in the cache directory; they are uploaded and committed in the
    /// background (other nodes see them after that). Needs a cache dir.
    #[arg(long)]
    writeback: bool,
    /// Seconds transient upload, commit and block-read failures are retried
    /// before fsync/close/read report EIO (unstored data stays buffered and
    /// is retried).
    #[arg(long, default_value_t = 30.0)]
    io_retry: f64,
    /// Seconds the kernel caches attributes [default: 30 with change
    /// events, which invalidate it at once; 1 with --no-events]. While the
    /// event channel is down, replies are cached 1 s at most.
    #[arg(long)]
    attr_cache: Option<f64>,
    /// Seconds the kernel caches file names [default: 30, or 1 with
    /// --no-events].
    #[arg(long)]
    entry_cache: Option<f64>,
    /// Seconds the kernel caches directory names [default: 30, or 1 with
    /// --no-events].
    #[arg(long)]
    dir_entry_cache: Option<f64>,
    /// Seconds a deleted file's objects are kept after it left the trash
    /// (or, without trash days, after its deletion).
    #[arg(long, default_value_t = 60)]
    delete_delay: u64,
    /// Seconds files stay in the trash, overriding the volume's trash days
    /// (tests); 0 is ignored.
    #[arg(long, hide = true, default_value_t = 0)]
    trash_expiry: u64,
    /// Do not subscribe to other nodes' change events (rely on the TTLs alone).
    #[arg(long)]
    no_events: bool,
    /// Warm files other nodes commit into this node's cache at once, before
    /// anything opens them: comma-separated file-name patterns, e.g.
    /// '*.rv,*.uid,bloom_filter' ('*' for every file). Needs change events.
    #[arg(long, value_name = "GLOB[,GLOB...]")]
    warm_on_commit: Option<String>,
    /// Blocks fetched at once by warm-on-commit, node-wide.
    #[arg(long, default_value_t = 16)]
    warm_concurrency: usize,
    /// MiB of warmed files also read into the kernel page cache, so the
    /// first read() never reaches the daemon; the oldest pushed files are
    /// dropped beyond it (0: no push).
    #[arg(long, default_value = "1024")]
    warm_page_cache: String,
    /// Seconds this node answers lookups and stats from its own metadata
    /// cache, which change events keep coherent (10 s at most while the
    /// event channel is down; off with --no-events; 0: off).
    #[arg(long, default_value_t = 60.0)]
    meta_cache: f64,
    /// Seconds between session heartbeats. Other nodes clean up a session
    /// silent for 5 of them (its locks go); this node stops granting locks
    /// and gives up the ones it holds after 2.5 of them without renewal.
    #[arg(long, default_value_t = 12)]
    heartbeat: u64,
    /// Seconds a metadata operation waits for an unreachable Redis
    /// (retrying) before it fails with EIO.
    #[arg(long, default_value_t = 20.0)]
    meta_timeout: f64,
    /// After each metadata change, wait until this many Redis replicas hold
    /// it (Redis WAIT) before answering, so a completed close() survives a
    /// failover to a replica. Costs a replica round trip per change.
    #[arg(long, default_value_t = 0)]
    meta_wait_replicas: u64,
    /// Serve Prometheus metrics on this address; port 0 picks a free port
    /// ("none" to switch off). Default 127.0.0.1:9567, or a free port when
    /// another mount holds it. `vecfs status` shows each mount's address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Log file (default for -d: /var/log/vecfs.log as root, else ~/.vecfs/vecfs.log).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Rotate the log file at this size in MiB (K, M, G accepted), keeping
    /// 3 older files (vecfs.log.1 to .3); 0: never rotate.
    #[arg(long, default_value = "64")]
    log_max_size: String,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
    /// Extra FUSE mount options, comma separated (e.g. -o noatime,nodev).
    #[arg(short = 'o')]
    options: Vec<String>,
    /// Access key / account name for the object store (or ACCESS_KEY).
    #[arg(long, env = "ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,
    /// Secret key / account key for the object store (or SECRET_KEY).
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn default_log() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/log/vecfs.log")
    } else {
        let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
        let dir = PathBuf::from(home).join(".vecfs");
        let _ = std::fs::create_dir_all(&dir);
        dir.join("vecfs.log")
    }
}

/// Log files kept besides the live one when rotating.
const LOG_KEEP: usize = 3;

/// Logging to `path`, rotated by size (`--log-max-size`); the same levels
/// as `init_logging`.
fn init_file_logging(verbose: u8, path: &Path, max: &str) -> anyhow::Result<()> {
    let max = parse_size(max, 1 << 20).map_err(|e| anyhow::anyhow!("--log-max-size: {e}"))?;
    let filter = super::log_filter(verbose);
    let file = vecfs::logfile::RotatingFile::open(path, max, LOG_KEEP)
        .with_context(|| format!("cannot open log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn check_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    let md = std::fs::metadata(mp).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!(
                "mountpoint {} does not exist: create it with mkdir -p",
                mp.display()
            )
        } else {
            anyhow::anyhow!("cannot use mountpoint {}: {e}", mp.display())
        }
    })?;
    if !md.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    let canon = std::fs::canonicalize(mp)
        .with_context(|| format!("cannot resolve mountpoint {}", mp.display()))?;
    if let Some(t) = mounted_fstype(&canon) {
        bail!(
            "{} is already mounted ({t}): unmount it first with `vecfs umount {}`",
            canon.display(),
            canon.display()
        );
    }
    Ok(canon)
}

pub fn run(a: MountArgs, verbose: u8) -> anyhow::Result<()> {
    crate::cli::private_umask();
    let mp = check_mountpoint(&a.mountpoint)?;
    if a.background {
        return spawn_daemon(&a, &mp, verbose);
    }
    let log = a.log.clone();
    match &log {
        Some(p) => init_file_logging(verbose, p, &a.log_max_size)?,
        None => crate::cli::init_logging(verbose, None)?,
    }
    limit_malloc_arenas();
    let rt = crate::cli::runtime()?;
    let prepared = rt.block_on(prepare(&a, &mp));
    let (vfs, bg, warm) = match prepared {
        Ok(v) => v,
        Err(e) => {
            if a.log.is_some() {
                tracing::error!("mount failed: {e:#}");
            }
            return Err(e);
        }
    };
    serve(&rt, vfs.clone(), &a, &mp, warm)?;
    rt.block_on(async {
        for h in bg {
            h.abort();
        }
        vfs.flush_all().await;
        // Blocks a read fetched just before the unmount reach the disk cache.
        if !vfs
            .data
            .cache
            .drain_disk_writes(Duration::from_secs(10))
            .await
        {
            tracing::warn!("disk cache writes still queued at exit are dropped");
        }
        let sid = vfs.sid();
        if sid != 0 {
            if let Err(e) = vfs.meta.clean_session(sid, true).await {
                tracing::warn!(error = %e, "cannot deregister session");
            }
        }
    });
    tracing::info!(mountpoint = %mp.display(), "unmounted");
    Ok(())
}

/// Resolves `--subdir` to the inode shown as the mount's root.
async fn resolve_subdir(meta: &Meta, subdir: &str) -> anyhow::Result<u64> {
    let mut ino = ROOT_INO;
    for part in subdir.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let (next, attr) = meta
            .lookup(ino, part.as_bytes())
            .await
            .map_err(|e| anyhow::anyhow!("--subdir {subdir}: '{part}': {e}; create it first"))?;
        if attr.kind != FileKind::Dir {
            bail!("--subdir {subdir}: '{part}' is not a directory");
        }
        ino = next;
    }
    Ok(ino)
}

type Background = Vec<tokio::task::JoinHandle<()>>;

async fn prepare(
    a: &MountArgs,
    mp: &Path,
) -> anyhow::Result<(Arc<Vfs>, Background, Option<WarmConfig>)> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    let creds = Credentials {
        access_key: a.access_key.clone(),
        secret_key: a.secret_key.clone(),
    };
    let store = build_store(fmt.storage, &fmt.bucket, &creds)
        .with_context(|| format!("cannot use {} bucket {}", fmt.storage, fmt.bucket))?;
    let blocks = Arc::new(BlockStore::new(store, &fmt.name));
    if !a.read_only {
        blocks.probe().await.with_context(|| {
            format!(
                "object store check failed for {} bucket {} (does it exist, do the credentials allow writing?)",
                fmt.storage, fmt.bucket
            )
        })?;
    }
    let mib =
        |s: &str, what: &str| parse_size(s, 1 << 20).map_err(|e| anyhow::anyhow!("--{what}: {e}"));
    let mut staging = None;
    if a.writeback && a.read_only {
        bail!("--writeback needs a writable mount (drop --read-only)");
    }
    if a.writeback
        && a.cache_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str() == "memory")
    {
        bail!("--writeback stages writes in the cache directory: give --cache-dir a directory, not memory");
    }
    let disk = match &a.cache_dir {
        Some(d) if d.as_os_str() == "memory" => None,
        dir => {
            let d = dir.clone().unwrap_or_else(|| {
                if is_root() {
                    PathBuf::from("/var/cache/vecfs")
                } else {
                    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
                        .join(".vecfs/cache")
                }
            });
            let d = d.join(&fmt.uuid);
            // Leftovers of a crashed daemon are committed whether or not
            // this mount stages new writes; a read-only mount leaves them.
            if !a.read_only {
                staging = Staging::open(
                    &d,
                    mib(&a.cache_size, "cache-size")?,
                    a.free_space_ratio,
                    a.writeback,
                )
                .with_context(|| {
                    format!(
                        "cannot use the write-back staging area under {}",
                        d.display()
                    )
                })?;
            }
            Some(
                DiskCache::open(&d, mib(&a.cache_size, "cache-size")?, a.free_space_ratio)
                    .with_context(|| format!("cannot use cache directory {}", d.display()))?,
            )
        }
    };
    let warm_patterns = match &a.warm_on_commit {
        Some(_) if a.no_events => {
            bail!("--warm-on-commit learns of commits from change events: drop --no-events")
        }
        Some(spec) => Some(
            vecfs::prefetch::warm::parse_patterns(spec)
                .map_err(|e| anyhow::anyhow!("--warm-on-commit: {e}"))?,
        ),
        None => None,
    };
    let warm_page_cache = mib(&a.warm_page_cache, "warm-page-cache")?;
    if a.warm_concurrency == 0 {
        bail!("--warm-concurrency must be at least 1 (e.g. 16)");
    }
    let cache_bytes = match &a.cache_dir {
        Some(d) if d.as_os_str() == "memory" => mib(&a.mem_cache_size, "mem-cache-size")?,
        _ => mib(&a.cache_size, "cache-size")?,
    };
    let cache = Arc::new(
        BlockCache::new(mib(&a.mem_cache_size, "mem-cache-size")?, disk)
            .with_block_size(fmt.block_size as usize),
    );
    let mut data = DataStore::new(
        meta.clone(),
        blocks,
        cache,
        fmt.block_size,
        fmt.codec(),
        mib(&a.buffer_size, "buffer-size")?,
        fmt.capacity,
    );
    data.inline_size = fmt.inline_size;
    if !(a.io_retry.is_finite() && a.io_retry >= 0.0) {
        bail!("--io-retry must be a number of seconds >= 0 (e.g. 30)");
    }
    data.retry_for = Duration::from_secs_f64(a.io_retry);
    let leftovers = match staging {
        Some((st, left)) => {
            data.staging = Some(Arc::new(st));
            left
        }
        None => Vec::new(),
    };
    let data = Arc::new(data);
    let root = match &a.subdir {
        Some(s) => resolve_subdir(&meta, s).await?,
        None => ROOT_INO,
    };
    let secs = |v: f64, what: &str| {
        if v.is_finite() && v >= 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!("--{what} must be a number of seconds >= 0"))
        }
    };
    // Events invalidate the kernel's caches, so they can hold long.
    let ttl_default = if a.no_events { 1.0 } else { 30.0 };
    let cfg = VfsConfig {
        attr_ttl: secs(a.attr_cache.unwrap_or(ttl_default), "attr-cache")?,
        entry_ttl: secs(a.entry_cache.unwrap_or(ttl_default), "entry-cache")?,
        dir_entry_ttl: secs(a.dir_entry_cache.unwrap_or(ttl_default), "dir-entry-cache")?,
        events: !a.no_events,
        read_only: a.read_only,
        root,
        meta_cache_ttl: if a.no_events {
            Duration::ZERO
        } else {
            secs(a.meta_cache, "meta-cache")?
        },
        session_ttl: Duration::from_secs(a.heartbeat.max(1) * session::MISSED_HEARTBEATS),
        ..VfsConfig::default()
    };
    if !(a.meta_timeout.is_finite() && a.meta_timeout > 0.0) {
        bail!("--meta-timeout must be a number of seconds > 0 (e.g. 20)");
    }
    meta.set_meta_timeout(Duration::from_secs_f64(a.meta_timeout));
    meta.set_wait_replicas(a.meta_wait_replicas);
    // A missing channel permission fails the mount now, not each change
    // later (or, for a listener, silently).
    meta.check_channel(!a.read_only, !a.no_events).await?;
    let trash = fmt.trash_days;
    let vfs = Arc::new(Vfs::new(meta.clone(), data.clone(), fmt, cfg));
    let warm = warm_patterns.map(|patterns| WarmConfig {
        patterns,
        concurrency: a.warm_concurrency,
        page_cache_bytes: warm_page_cache,
        max_file_bytes: cache_bytes / 2,
        mountpoint: mp.to_path_buf(),
    });
    if warm
        .as_ref()
        .is_some_and(|w| w.max_file_bytes < vfs.format.block_size as u64)
    {
        tracing::warn!(
            "--warm-on-commit: the cache is too small to warm anything (files up to half of it are warmed): raise --cache-size"
        );
    }
    let mut bg = Vec::new();
    if !(0.0..1.0).contains(&a.free_space_ratio) {
        bail!("--free-space-ratio must be between 0 and 1 (e.g. 0.1)");
    }
    bg.extend(data.cache.spawn_evictor());
    if !a.read_only {
        bg.push(vfs.spawn_flusher());
    }
    if let Some(st) = data.staging.clone() {
        // In the background: the mount is usable at once.
        bg.push(vecfs::data::staging::spawn_recovery(
            data.clone(),
            st,
            leftovers,
        ));
    }
    vecfs::metrics::set_node(vecfs::metrics::Node {
        data: data.clone(),
        buffer_bytes: mib(&a.buffer_size, "buffer-size")?,
    });
    let metrics_addr = match a.metrics.as_deref() {
        Some("none") => None,
        asked => {
            let addr = asked.unwrap_or(vecfs::metrics::DEFAULT_ADDR);
            // The default port taken (another mount on this host): a free
            // one. A busy address asked for costs the metrics, not the mount.
            match vecfs::metrics::bind(addr, asked.is_none()).await {
                Ok(l) => {
                    let bound = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    tracing::info!(addr = %bound, "serving metrics on http://{bound}/metrics");
                    bg.push(tokio::spawn(vecfs::metrics::serve(l)));
                    Some(bound)
                }
                Err(e) => {
                    tracing::warn!(addr, error = %e, "metrics not served");
                    None
                }
            }
        }
    };
    // Read-only mounts register too (status lists them, their locks can be
    // cleaned), but run no deletion and clean no other sessions.
    let every = Duration::from_secs(a.heartbeat.max(1));
    let info = session::session_info(&mp.to_string_lossy(), a.read_only, metrics_addr);
    let ttl = vfs.lease.ttl().as_secs() as i64;
    let sid = meta.register_session(info.clone(), ttl).await?;
    bg.push(session::spawn_heartbeat(
        meta.clone(),
        vecfs::meta::SessionInfo { sid, ..info },
        every,
        vfs.lease.clone(),
    ));
    if !a.read_only {
        bg.push(vecfs::maintenance::sessions::spawn_session_cleaner(
            meta.clone(),
            every,
        ));
    }
    bg.push(vfs.spawn_limits_refresher(every.min(Duration::from_secs(5))));
    if !a.read_only {
        let fixed = (a.trash_expiry > 0).then(|| Duration::from_secs(a.trash_expiry));
        let delay = Duration::from_secs(a.delete_delay);
        let mut deleter = if trash > 0 {
            // Deleted files wait in the trash; overwritten, truncated and
            // compacted slices wait as long in the deleter's queue.
            let keep = fixed.unwrap_or(Duration::from_secs(trash as u64 * 86400));
            vecfs::maintenance::deleter::Deleter::new(data, keep)
        } else {
            vecfs::maintenance::deleter::Deleter::new(data, delay)
        };
        if trash > 0 {
            deleter.files_grace = Some(delay);
        }
        bg.push(deleter.spawn());
        // Runs even with trash days 0: entries left from before go.
        bg.push(vecfs::trash::Purger::new(meta.clone(), fixed).spawn());
    }
    Ok((vfs, bg, warm))
}

fn serve(
    rt: &tokio::runtime::Runtime,
    vfs: Arc<Vfs>,
    a: &MountArgs,
    mp: &Path,
    warm: Option<WarmConfig>,
) -> anyhow::Result<()> {
    use fuser::{Config, MountOption, SessionACL};
    let mut cfg = Config::default();
    let name = vfs.format.name.clone();
    cfg.mount_options = vec![
        MountOption::FSName(format!("vecfs:{name}")),
        MountOption::Subtype("vecfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    if a.read_only {
        cfg.mount_options.push(MountOption::RO);
    }
    for group in &a.options {
        for o in group.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            cfg.mount_options.push(match o {
                "ro" => MountOption::RO,
                "rw" => MountOption::RW,
                "nodev" => MountOption::NoDev,
                "nosuid" => MountOption::NoSuid,
                "noexec" => MountOption::NoExec,
                "noatime" => continue,
                "allow_other" | "allow_root" | "default_permissions" => continue,
                other => MountOption::CUSTOM(other.to_string()),
            });
        }
    }
    let allow_other = a.allow_other.unwrap_or_else(is_root);
    cfg.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    let fs = FuseFs::new(vfs.clone(), rt.handle().clone());
    let mut session = fuser::Session::new(fs, mp, &cfg).with_context(|| {
        format!(
            "cannot mount {} with FUSE (is /dev/fuse available and fuse3 installed?)",
            mp.display()
        )
    })?;
    vfs.set_invalidator(Arc::new(vecfs::fuse::KernelNotifier(session.notifier())));
    set_kernel_readahead(mp, a.readahead_kb);
    if !a.no_events {
        // The warmer reads through the mount: started once it exists.
        let warmer = warm.map(|w| {
            let _rt = rt.enter();
            Warmer::start(vfs.clone(), w)
        });
        rt.spawn(session::run_event_listener(vfs.clone(), warmer));
    }
    let mut unmounter = session.unmount_callable();
    tracing::info!(mountpoint = %mp.display(), volume = %name, "mounted");
    println!("vecfs: mounted volume {name} at {}", mp.display());
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        spawn_ready_notifier(mp, &name);
    }
    // A signal unmounts; the session loop then ends and we clean up.
    let mp2 = mp.to_path_buf();
    rt.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!(mountpoint = %mp2.display(), "signal received, unmounting");
        let _ = super::sdnotify::notify("STOPPING=1");
        if let Err(e) = unmounter.unmount() {
            // Busy (a process has a file open there): detach it, so the
            // mountpoint is free at once and a restart can mount again; the
            // session ends, and this daemon exits, when the last file closes.
            tracing::warn!(error = %e, "mount busy: detaching it lazily; open files are served until closed");
            if let Err(e) = super::umount::try_unmount(&mp2, true) {
                tracing::warn!(error = %e, "lazy unmount failed; try vecfs umount --force");
            }
        }
    });
    session.run().context("FUSE session ended with an error")?;
    Ok(())
}

/// systemd `Type=notify`: READY=1 once the mount answers. A stat of the
/// mountpoint waits for the session loop (FUSE INIT, then GETATTR), so it
/// runs on a thread of its own while `session.run()` serves.
fn spawn_ready_notifier(mp: &Path, name: &str) {
    let mp = mp.to_path_buf();
    let status = format!("READY=1\nSTATUS=serving volume {name} at {}", mp.display());
    std::thread::spawn(move || {
        if let Err(e) = std::fs::metadata(&mp) {
            if e.raw_os_error() == Some(libc::ENOTCONN) {
                return; // the session died before it answered
            }
        }
        match super::sdnotify::notify(&status) {
            Ok(_) => tracing::debug!("told the service manager the mount is ready"),
            Err(e) => tracing::warn!(error = %e, "cannot notify the service manager"),
        }
    });
}

/// The kernel reads ahead at most `read_ahead_kb` of a FUSE mount (128 KiB
/// by default), which keeps sequential loads to a trickle of requests.
/// Raising it (root only) lets the kernel keep many 1 MiB reads in flight.
fn set_kernel_readahead(mp: &Path, kb: u32) {
    // The device number comes from the mount table: a stat() of the mount
    // point would wait for this very daemon, which is not serving yet.
    let Some(dev) = vecfs::util::mount_entry(mp).map(|m| m.dev) else {
        return;
    };
    let path = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, kb.to_string()) {
        tracing::debug!(path, error = %e, "cannot raise the kernel read-ahead");
    }
}

/// Starts `vecfs mount` again without -d, detached, and waits for the mount.
/// glibc gives each thread that allocates under contention its own arena
/// (up to 8 per core) and keeps block-sized buffers freed there for reuse:
/// eight cold readers of different 256 MiB files peaked at 1.24 GiB RSS
/// with the defaults, past `--mem-cache-size` + `--buffer-size` + 200 MiB
/// = 1012 MiB, read-ahead budget or not (BENCHMARKS, "Read path: memory
/// budget"). Two arenas keep that reuse (no page faults per block, which a
/// fixed mmap threshold costs: +50 % CPU) and stay within the bound.
/// `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called once
        // before the runtime starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

fn spawn_daemon(a: &MountArgs, mp: &Path, verbose: u8) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the vecfs executable")?;
    let log = a.log.clone().unwrap_or_else(default_log);
    let mut args: Vec<String> = vec!["mount".into(), "@env".into(), mp.to_string_lossy().into()];
    for _ in 0..verbose {
        args.push("-v".into());
    }
    if a.read_only {
        args.push("--read-only".into());
    }
    if a.no_events {
        args.push("--no-events".into());
    }
    if a.writeback {
        args.push("--writeback".into());
    }
    let mut opt = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            args.push(format!("--{k}={v}"));
        }
    };
    opt("subdir", a.subdir.clone());
    opt("allow-other", a.allow_other.map(|b| b.to_string()));
    opt(
        "cache-dir",
        a.cache_dir
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
    );
    opt("cache-size", Some(a.cache_size.clone()));
    opt("free-space-ratio", Some(a.free_space_ratio.to_string()));
    opt("mem-cache-size", Some(a.mem_cache_size.clone()));
    opt("buffer-size", Some(a.buffer_size.clone()));
    opt("io-retry", Some(a.io_retry.to_string()));
    opt("readahead-kb", Some(a.readahead_kb.to_string()));
    opt("attr-cache", a.attr_cache.map(|v| v.to_string()));
    opt("entry-cache", a.entry_cache.map(|v| v.to_string()));
    opt("dir-entry-cache", a.dir_entry_cache.map(|v| v.to_string()));
    opt("delete-delay", Some(a.delete_delay.to_string()));
    opt("heartbeat", Some(a.heartbeat.to_string()));
    opt("meta-timeout", Some(a.meta_timeout.to_string()));
    opt("meta-wait-replicas", Some(a.meta_wait_replicas.to_string()));
    opt("meta-cache", Some(a.meta_cache.to_string()));
    opt("metrics", a.metrics.clone());
    opt("log-max-size", Some(a.log_max_size.clone()));
    opt("warm-on-commit", a.warm_on_commit.clone());
    opt("warm-concurrency", Some(a.warm_concurrency.to_string()));
    opt("warm-page-cache", Some(a.warm_page_cache.clone()));
    opt("log", Some(log.to_string_lossy().into_owned()));
    opt("name", a.name.clone());
    for o in &a.options {
        args.push("-o".into());
        args.push(o.clone());
    }
    let meta_url = if a.meta_url == "@env" {
        std::env::var("VECFS_META_URL").unwrap_or_default()
    } else {
        a.meta_url.clone()
    };
    let mut cmd = Command::new(exe);
    cmd.args(&args)
        .env("VECFS_META_URL", meta_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        // Readiness is this process's to report (it returns once mounted),
        // not the daemon's: systemd would take a stranger's READY=1.
        .env_remove("NOTIFY_SOCKET");
    // Secrets travel in the environment, never on the command line.
    if let Some(k) = &a.access_key {
        cmd.env("ACCESS_KEY", k);
    }
    if let Some(k) = &a.secret_key {
        cmd.env("SECRET_KEY", k);
    }
    let mut child = cmd.spawn().context("cannot start the vecfs daemon")?;
    let stderr = child.stderr.take();
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let errs2 = errors.clone();
    std::thread::spawn(move || {
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                if let Ok(mut v) = errs2.lock() {
                    v.push(line);
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = mounted_fstype(mp) {
            if t.starts_with("fuse") {
                println!(
                    "vecfs: mounted at {} (daemon pid {}, log {}); unmount with `vecfs umount {}`",
                    mp.display(),
                    child.id(),
                    log.display(),
                    mp.display()
                );
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            let lines = errors.lock().map(|v| v.clone()).unwrap_or_default();
            let msg = lines
                .iter()
                .rev()
                .find_map(|l| l.strip_prefix("vecfs: error: "))
                .map(String::from)
                .unwrap_or_else(|| {
                    format!("the daemon exited with {status}; see {}", log.display())
                });
            bail!("{msg}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the mount did not become ready within 60 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
