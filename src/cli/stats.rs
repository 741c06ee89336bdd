//! `vecfs stats MOUNTPOINT`: a live view of one mount, like `juicefs
//! stats`. Reads the mount's hidden `.stats` file (the same text as its
//! Prometheus endpoint) every interval and prints one line of rates per
//! interval: FUSE operations and latency, application throughput, Redis
//! requests and latency, object-store requests, bytes and errors, cache
//! hit ratio, buffer and read-ahead use, warm-ups.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  vecfs stats /mnt/vecfs              # refresh every second until Ctrl-C\n  vecfs stats /mnt/vecfs --count 5    # five lines, then exit"
)]
pub struct StatsArgs {
    /// A mounted vecfs file system.
    mountpoint: PathBuf,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print this many refreshes, then exit (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// One reading of `.stats`: every sample summed over its labels, by name
/// (`vecfs_fuse_op_duration_seconds_count` is the count of all ops).
#[derive(Default)]
struct Sample {
    values: HashMap<String, f64>,
    at: Option<Instant>,
}

impl Sample {
    fn parse(text: &str) -> Sample {
        let mut values: HashMap<String, f64> = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.parse::<f64>() else {
                continue;
            };
            // Buckets would add up to nonsense: sums and counts only.
            if key.contains("_bucket{") {
                continue;
            }
            let name = key.split('{').next().unwrap_or(key);
            *values.entry(name.to_string()).or_default() += v;
        }
        Sample {
            values,
            at: Some(Instant::now()),
        }
    }

    fn get(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }
}

fn read_stats(path: &Path) -> anyhow::Result<Sample> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sample::parse(&text))
}

/// Rates between two readings.
struct Line {
    fuse_ops: f64,
    fuse_ms: Option<f64>,
    read_mb: f64,
    write_mb: f64,
    meta_ops: f64,
    meta_ms: Option<f64>,
    obj_req: f64,
    obj_in_mb: f64,
    obj_out_mb: f64,
    obj_err: f64,
    hit_pct: Option<f64>,
    buf_mib: f64,
    ahead_mib: f64,
    warm: f64,
}

const MB: f64 = 1e6;
const MIB: f64 = (1u64 << 20) as f64;

impl Line {
    fn between(a: &Sample, b: &Sample) -> Line {
        let dt = match (a.at, b.at) {
            (Some(x), Some(y)) => y.duration_since(x).as_secs_f64().max(1e-3),
            _ => 1.0,
        };
        let d = |n: &str| (b.get(n) - a.get(n)).max(0.0);
        let mean_ms = |h: &str| {
            let n = d(&format!("{h}_count"));
            (n > 0.0).then(|| d(&format!("{h}_sum")) / n * 1000.0)
        };
        let hits = d("vecfs_mem_cache_hit_total") + d("vecfs_disk_cache_hit_total");
        let fetched = d("vecfs_object_get_total") + d("vecfs_object_range_get_total");
        Line {
            fuse_ops: d("vecfs_fuse_op_duration_seconds_count") / dt,
            fuse_ms: mean_ms("vecfs_fuse_op_duration_seconds"),
            read_mb: d("vecfs_read_bytes_total") / dt / MB,
            write_mb: d("vecfs_write_bytes_total") / dt / MB,
            meta_ops: d("vecfs_meta_request_duration_seconds_count") / dt,
            meta_ms: mean_ms("vecfs_meta_request_duration_seconds"),
            obj_req: d("vecfs_object_request_duration_seconds_count") / dt,
            obj_in_mb: d("vecfs_object_get_bytes_total") / dt / MB,
            obj_out_mb: d("vecfs_object_put_bytes_total") / dt / MB,
            obj_err: d("vecfs_object_errors_total") / dt,
            hit_pct: (hits + fetched > 0.0).then(|| hits / (hits + fetched) * 100.0),
            buf_mib: b.get("vecfs_buffer_bytes") / MIB,
            ahead_mib: b.get("vecfs_readahead_bytes") / MIB,
            warm: d("vecfs_warm_files_total") / dt,
        }
    }
}

const HEADER: &str = concat!(
    " ------fuse------ ---app MB/s--- ------meta------ ---------object store--------- -cache- --MiB used-- -warm-\n",
    "    ops/s      ms    read  write     ops/s      ms   req/s  in MB/s out MB/s err/s   hit %    buf  ahead files/s"
);

fn opt(v: Option<f64>, width: usize, prec: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.prec$}"),
        None => format!("{:>width$}", "-"),
    }
}

fn render(l: &Line) -> String {
    format!(
        "{:>9.0} {} {:>7.1} {:>6.1} {:>9.0} {} {:>7.0} {:>8.1} {:>8.1} {:>5.0} {} {:>6.0} {:>6.0} {:>7.1}",
        l.fuse_ops,
        opt(l.fuse_ms, 7, 2),
        l.read_mb,
        l.write_mb,
        l.meta_ops,
        opt(l.meta_ms, 7, 2),
        l.obj_req,
        l.obj_in_mb,
        l.obj_out_mb,
        l.obj_err,
        opt(l.hit_pct, 7, 1),
        l.buf_mib,
        l.ahead_mib,
        l.warm,
    )
}

pub fn run(a: StatsArgs) -> anyhow::Result<()> {
    if !(a.interval.is_finite() && a.interval > 0.0) {
        bail!("--interval must be a number of seconds > 0 (e.g. 1)");
    }
    if a.count == Some(0) {
        bail!("--count must be at least 1");
    }
    let path = a.mountpoint.join(".stats");
    if !a.mountpoint.is_dir() {
        bail!("{} is not a directory", a.mountpoint.display());
    }
    if std::fs::metadata(&path).is_err() {
        bail!(
            "{} is not a vecfs mount (it has no .stats file)",
            a.mountpoint.display()
        );
    }
    let every = Duration::from_secs_f64(a.interval);
    let mut prev = read_stats(&path)?;
    let mut printed = 0u64;
    loop {
        if printed % 20 == 0 {
            println!("{HEADER}");
        }
        std::thread::sleep(every);
        let now = read_stats(&path)?;
        println!("{}", render(&Line::between(&prev, &now)));
        prev = now;
        printed += 1;
        if a.count.is_some_and(|n| printed >= n) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_two_readings() {
        let a = Sample::parse(
            "# TYPE x counter\nvecfs_fuse_op_duration_seconds_count{op=\"read\"} 10\n\
             vecfs_fuse_op_duration_seconds_sum{op=\"read\"} 0.5\n\
             vecfs_fuse_op_duration_seconds_bucket{le=\"1\",op=\"read\"} 10\n\
             vecfs_mem_cache_hit_total 1\nvecfs_object_get_total 1\n",
        );
        let mut b = Sample::parse(
            "vecfs_fuse_op_duration_seconds_count{op=\"read\"} 20\n\
             vecfs_fuse_op_duration_seconds_count{op=\"open\"} 10\n\
             vecfs_fuse_op_duration_seconds_sum{op=\"read\"} 0.9\n\
             vecfs_fuse_op_duration_seconds_sum{op=\"open\"} 0.1\n\
             vecfs_mem_cache_hit_total 4\nvecfs_object_get_total 2\n",
        );
        b.at = a.at.map(|t| t + Duration::from_secs(2));
        let l = Line::between(&a, &b);
        assert!((l.fuse_ops - 10.0).abs() < 1e-9);
        assert!((l.fuse_ms.unwrap_or(0.0) - 25.0).abs() < 1e-9);
        assert!((l.hit_pct.unwrap_or(0.0) - 75.0).abs() < 1e-9);
        assert!(l.meta_ms.is_none());
        assert_eq!(render(&l).split_whitespace().count(), 14);
    }
}
