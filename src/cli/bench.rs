//! `vecfs bench PATH`: quick throughput and latency figures on any mounted
//! directory (vecfs, local disk, another FUSE file system), as `juicefs
//! bench`: big-file write and read, small-file write/read/stat/remove, with
//! `-p N` parallel jobs. Kernel caches are dropped before each read phase
//! when run as root, so reads come from the file system, not the page cache.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use vecfs::util::parse_size;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A directory on the file system to measure.
    path: PathBuf,
    /// Parallel jobs.
    #[arg(short = 'p', long, default_value_t = 1)]
    threads: usize,
    /// Size of each job's big file (K, M, G suffixes).
    #[arg(long, default_value = "1G")]
    big_file_size: String,
    /// Small files per job.
    #[arg(long, default_value_t = 100)]
    small_file_count: usize,
    /// Size of each small file.
    #[arg(long, default_value = "128K")]
    small_file_size: String,
}

fn drop_caches() {
    // Only root may; elsewhere reads may come from the page cache (said in the output).
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Runs `f(job)` on `n` threads and returns the wall time.
fn parallel<F>(n: usize, f: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> anyhow::Result<()> + Sync,
{
    let start = Instant::now();
    std::thread::scope(|s| {
        let f = &f;
        let hs: Vec<_> = (0..n).map(|j| s.spawn(move || f(j))).collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a bench job panicked"))?
            })
            .collect::<anyhow::Result<Vec<()>>>()
    })?;
    Ok(start.elapsed())
}

fn row(item: &str, amount: f64, unit: &str, per_op: Duration) {
    println!(
        "| {item:<20} | {amount:>12.1} {unit:<8} | {:>10.3} ms/op |",
        per_op.as_secs_f64() * 1000.0
    );
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let big = parse_size(&a.big_file_size, 1).map_err(anyhow::Error::msg)?;
    let small = parse_size(&a.small_file_size, 1).map_err(anyhow::Error::msg)? as usize;
    let jobs = a.threads.max(1);
    let dir = a.path.join(format!("__vecfs_bench_{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot create {}: is PATH a writable directory?",
            dir.display()
        )
    })?;
    let big_path = |j: usize| dir.join(format!("big.{j}"));
    let small_path = |j: usize, i: usize| dir.join(format!("small.{j}.{i}"));
    let chunk: Vec<u8> = (0..1usize << 20)
        .map(|i| ((i * 2_654_435_761) >> 13) as u8)
        .collect();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("vecfs bench {} ({jobs} jobs)", a.path.display());
    println!("| {:<20} | {:>21} | {:>16} |", "item", "value", "latency");

    let t = parallel(jobs, |j| {
        let mut f = std::fs::File::create(big_path(j))?;
        let mut left = big;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        Ok(())
    })?;
    let total = big * jobs as u64;
    let ops = total.div_ceil(1 << 20).max(1) as u32;
    row(
        "write big file",
        mib(total) / t.as_secs_f64(),
        "MiB/s",
        t * jobs as u32 / ops,
    );
    drop_caches();
    let t = parallel(jobs, |j| {
        let mut f = std::fs::File::open(big_path(j))?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf)? > 0 {}
        Ok(())
    })?;
    row(
        "read big file",
        mib(total) / t.as_secs_f64(),
        "MiB/s",
        t * jobs as u32 / ops,
    );

    let n = a.small_file_count;
    let files = (n * jobs).max(1) as u32;
    let t = parallel(jobs, |j| {
        for i in 0..n {
            let mut f = std::fs::File::create(small_path(j, i))?;
            f.write_all(&chunk[..small.min(chunk.len())])?;
        }
        Ok(())
    })?;
    row(
        "write small files",
        files as f64 / t.as_secs_f64(),
        "files/s",
        t * jobs as u32 / files,
    );
    drop_caches();
    let t = parallel(jobs, |j| {
        let mut buf = Vec::with_capacity(small);
        for i in 0..n {
            buf.clear();
            std::fs::File::open(small_path(j, i))?.read_to_end(&mut buf)?;
        }
        Ok(())
    })?;
    row(
        "read small files",
        files as f64 / t.as_secs_f64(),
        "files/s",
        t * jobs as u32 / files,
    );
    drop_caches();
    let t = parallel(jobs, |j| {
        for i in 0..n {
            std::fs::metadata(small_path(j, i))?;
        }
        Ok(())
    })?;
    row(
        "stat files",
        files as f64 / t.as_secs_f64(),
        "files/s",
        t * jobs as u32 / files,
    );
    let t = parallel(jobs, |j| {
        for i in 0..n {
            std::fs::remove_file(small_path(j, i))?;
        }
        std::fs::remove_file(big_path(j))?;
        Ok(())
    })?;
    row(
        "remove files",
        files as f64 / t.as_secs_f64(),
        "files/s",
        t * jobs as u32 / files,
    );
    let _ = std::fs::remove_dir(&dir);
    if !Path::new("/proc/sys/vm/drop_caches").exists() {
        println!("(kernel caches could not be dropped: reads may be cached)");
    }
    Ok(())
}
