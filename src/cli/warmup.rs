//! `vecfs warmup PATH...`: loads files, or whole directory trees, of a
//! mounted volume into the node's block cache (memory and disk) and the
//! kernel page cache, so the first query finds its segments local. Files are
//! read whole, several at once; progress goes to stderr, a summary to stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug)]
pub struct WarmupArgs {
    /// Files or directories inside a vecfs mount.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Files loaded in parallel.
    #[arg(short = 'p', long, default_value_t = 4)]
    threads: usize,
    /// No progress line, only the summary.
    #[arg(short, long)]
    quiet: bool,
}

/// The mount a path lives on must be vecfs: a warmup of a local directory
/// would silently warm nothing.
fn check_on_vecfs(p: &Path) -> anyhow::Result<()> {
    let canon = std::fs::canonicalize(p)
        .with_context(|| format!("cannot warm up {}: it does not exist", p.display()))?;
    match vecfs::util::mount_containing(&canon) {
        Some(m) if m.vecfs_volume().is_some() => Ok(()),
        Some(m) => bail!(
            "{} is on a {} file system, not a vecfs mount",
            p.display(),
            m.kind()
        ),
        None => bail!("{} is not on a vecfs mount", p.display()),
    }
}

fn collect(p: &Path, out: &mut Vec<(PathBuf, u64)>) -> anyhow::Result<()> {
    let md =
        std::fs::symlink_metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
    if md.is_dir() {
        let rd = std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))?;
        for e in rd.flatten() {
            collect(&e.path(), out)?;
        }
    } else if md.is_file() {
        out.push((p.to_path_buf(), md.len()));
    }
    Ok(())
}

pub fn run(a: WarmupArgs) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for p in &a.paths {
        check_on_vecfs(p)?;
        collect(p, &mut files)?;
    }
    let total_bytes: u64 = files.iter().map(|f| f.1).sum();
    let total_files = files.len();
    let queue = Arc::new(Mutex::new(files));
    let done_bytes = Arc::new(AtomicU64::new(0));
    let done_files = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let workers: Vec<_> = (0..a.threads.max(1))
        .map(|_| {
            let (q, db, df, fl) = (
                queue.clone(),
                done_bytes.clone(),
                done_files.clone(),
                failed.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let next = q.lock().ok().and_then(|mut v| v.pop());
                    let Some((path, _)) = next else { break };
                    let r = std::fs::File::open(&path).and_then(|mut f| loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break Ok(());
                        }
                        db.fetch_add(n as u64, Ordering::Relaxed);
                    });
                    if let Err(e) = r {
                        if let Ok(mut v) = fl.lock() {
                            v.push(format!("{}: {e}", path.display()));
                        }
                    }
                    df.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    while !workers.iter().all(|w| w.is_finished()) {
        if !a.quiet {
            let b = done_bytes.load(Ordering::Relaxed);
            let pct = (b * 100).checked_div(total_bytes).unwrap_or(100);
            let bar = "#".repeat((pct / 5) as usize);
            eprint!(
                "\rwarming up [{bar:<20}] {pct:>3}%  {}/{} files  {} MiB",
                done_files.load(Ordering::Relaxed),
                total_files,
                b >> 20
            );
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for w in workers {
        let _ = w.join();
    }
    if !a.quiet {
        eprintln!();
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = done_bytes.load(Ordering::Relaxed);
    let failed = failed.lock().map(|v| v.clone()).unwrap_or_default();
    println!(
        "warmed up {} files, {:.1} MiB in {:.2} s ({:.0} MiB/s), {} failed",
        total_files - failed.len(),
        bytes as f64 / (1u64 << 20) as f64,
        secs,
        bytes as f64 / (1u64 << 20) as f64 / secs.max(1e-9),
        failed.len()
    );
    if let Some(first) = failed.first() {
        bail!("{} files could not be read, first: {first}", failed.len());
    }
    Ok(())
}
