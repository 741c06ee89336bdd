//! Command-line surface, mirroring what JuiceFS users know: format, mount,
//! umount, status. Each subcommand lives in its own file.

mod bench;
mod config;
mod destroy;
mod docker_plugin;
mod dump;
mod format;
mod fsck;
mod gc;
mod info;
mod load;
mod mount;
mod mount_helper;
mod progress;
mod rmr;
mod sdnotify;
mod stats;
mod status;
mod umount;
mod warmup;

use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use vecfs::meta::{url, Format, Meta};

#[derive(Parser, Debug)]
#[command(
    name = "vecfs",
    version,
    about = "A shared POSIX file system for vector databases"
)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Command,
}

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Create (or update) a volume: records it in Redis after checking the object store.
    Format(format::FormatArgs),
    /// Mount a volume with FUSE.
    Mount(mount::MountArgs),
    /// Unmount a mounted volume.
    Umount(umount::UmountArgs),
    /// Show the volume record and its live sessions.
    Status(status::StatusArgs),
    /// Load files or directories of a mount into the local cache.
    Warmup(warmup::WarmupArgs),
    /// Measure throughput and latency on a directory (vecfs or any other).
    Bench(bench::BenchArgs),
    /// Find (and with --delete remove) objects no metadata references.
    Gc(gc::GcArgs),
    /// Check that entries, inodes, counters and objects agree (--repair fixes).
    Fsck(fsck::FsckArgs),
    /// Show the inode, chunks, slices and objects behind files of a mount.
    Info(info::InfoArgs),
    /// Write a volume's whole metadata as JSON lines (a backup).
    Dump(dump::DumpArgs),
    /// Load a dump into an empty Redis database.
    Load(load::LoadArgs),
    /// Show or change a volume's mutable settings.
    Config(config::ConfigArgs),
    /// Remove a volume's objects and metadata for good.
    Destroy(destroy::DestroyArgs),
    /// Live view of a mount: operations, latency, object store, cache, buffers.
    Stats(stats::StatsArgs),
    /// Remove directory trees of a mount on the server side, in bulk.
    Rmr(rmr::RmrArgs),
    /// Install the mount(8) helper `mount.vecfs` (for `mount -t vecfs` and /etc/fstab).
    InstallMountHelper(mount_helper::InstallArgs),
    /// Serve Docker's volume plugin protocol (`docker volume create -d vecfs`).
    DockerPlugin(docker_plugin::PluginArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Format(a) => {
            private_umask();
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(format::run(a))
        }
        Command::Mount(a) => mount::run(a, cli.verbose),
        Command::Umount(a) => {
            init_logging(cli.verbose, None)?;
            umount::run(a)
        }
        Command::Status(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(status::run(a))
        }
        Command::Warmup(a) => warmup::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Gc(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(gc::run(a))
        }
        Command::Info(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(info::run(a))
        }
        Command::Fsck(a) => {
            init_logging(cli.verbose, None)?;
            if !runtime()?.block_on(fsck::run(a))? {
                // Problems remain: the report is printed, exit 1.
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Dump(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(dump::run(a))
        }
        Command::Load(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(load::run(a))
        }
        Command::Config(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(config::run(a))
        }
        Command::Destroy(a) => {
            init_logging(cli.verbose, None)?;
            runtime()?.block_on(destroy::run(a))
        }
        Command::Stats(a) => stats::run(a),
        Command::Rmr(a) => rmr::run(a),
        Command::InstallMountHelper(a) => mount_helper::install(a),
        Command::DockerPlugin(a) => {
            private_umask();
            init_logging(cli.verbose, a.log.as_deref())?;
            runtime()?.block_on(docker_plugin::run(a))
        }
    }
}

/// Started as `mount.vecfs` (mount(8) and /etc/fstab), the binary speaks
/// mount(8)'s helper convention instead of its own command line: the exit
/// code then follows mount(8) (32: mount failure).
pub fn run_as_invoked() -> Option<i32> {
    if !mount_helper::invoked_as_helper() {
        return None;
    }
    Some(match mount_helper::run_helper() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mount.vecfs: error: {e:#}");
            32
        }
    })
}

/// Whatever `format` and `mount` create on local disk (the `file` store's
/// objects and directories, the disk cache, the log) is private to this
/// user: objects and cache entries are the plaintext of files whatever
/// those files' modes, and object_store's LocalFileSystem creates them with
/// the process umask. Set before any thread starts, and inherited by the
/// daemon `mount -d` starts. Modes of files created through FUSE come from
/// the request (the caller's mode and umask, applied in mknod.lua), never
/// from this process's umask.
pub fn private_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vecfs-worker")
        .build()
        .context("cannot start the async runtime")
}

/// What `-v` asks to log; RUST_LOG overrides it.
pub fn log_filter(verbose: u8) -> tracing_subscriber::EnvFilter {
    let default = match verbose {
        // The redis crate warns about each cluster node it fails to reach,
        // which the one error vecfs reports (or its retries) already cover.
        0 => "vecfs=info,redis=error,warn",
        1 => "vecfs=debug,info",
        _ => "trace",
    };
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

pub fn init_logging(verbose: u8, file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let filter = log_filter(verbose);
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let r = match file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open log file {}", p.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init()
        }
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    r.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

/// The META-URL, or, for `@env`, the one the parent process handed over in
/// VECFS_META_URL (so background daemons keep passwords out of `ps`).
pub fn meta_url_arg(raw: &str) -> anyhow::Result<url::MetaUrl> {
    let s = if raw == "@env" {
        std::env::var("VECFS_META_URL").context("VECFS_META_URL is not set")?
    } else {
        raw.to_string()
    };
    Ok(url::parse(&s)?)
}

/// Connects to the volume recorded in this Redis database.
pub async fn open_volume(
    u: &url::MetaUrl,
    name: Option<&str>,
) -> anyhow::Result<(Arc<Meta>, Format)> {
    let name = match name {
        Some(n) => n.to_string(),
        None => match Meta::find_volume(u).await? {
            Some(n) => n,
            None => bail!(
                "no volume is formatted in {}: run `vecfs format {} NAME` first",
                u.redacted,
                u.redacted
            ),
        },
    };
    let meta = Meta::connect(u, &name).await?;
    let Some(fmt) = meta.load_format().await? else {
        bail!(
            "volume '{name}' is not formatted in {}: run `vecfs format {} {name}` first",
            u.redacted,
            u.redacted
        );
    };
    Ok((Arc::new(meta), fmt))
}
