//! Shared bits of the maintenance commands (gc, fsck, info): progress
//! bars on stderr (hidden when stderr is not a terminal), durations on the
//! command line, and opening a volume's object store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use vecfs::cache::BlockCache;
use vecfs::data::DataStore;
use vecfs::meta::{Format, Meta};
use vecfs::object::{build_store, BlockStore, Credentials};

/// A spinner with a running count; indicatif draws nothing when stderr is
/// not a terminal, so scripts and logs see only the summary.
pub fn spinner(what: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// `90`, `90s`, `15m`, `1h`, `2d` -> a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (e.g. 90s, 15m, 1h, 2d)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("'{s}': unknown unit '{unit}' (use s, m, h or d)")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("'{s}' is too long"))
}

/// Object-store credentials as `mount` takes them.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Access key (S3) or account name (Azure); also ACCESS_KEY / AWS_ACCESS_KEY_ID.
    #[arg(long, env = "ACCESS_KEY", hide_env_values = true)]
    pub access_key: Option<String>,
    /// Secret key (S3) or account key (Azure); also SECRET_KEY / AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
}

/// The volume's data store, without a disk cache or any background task
/// (the deleter's passes are run by the caller).
pub fn data_store(
    meta: Arc<Meta>,
    fmt: &Format,
    creds: &StoreArgs,
) -> anyhow::Result<Arc<DataStore>> {
    let creds = Credentials {
        access_key: creds.access_key.clone(),
        secret_key: creds.secret_key.clone(),
    };
    let store = build_store(fmt.storage, &fmt.bucket, &creds)
        .with_context(|| format!("cannot use {} bucket {}", fmt.storage, fmt.bucket))?;
    let blocks = Arc::new(BlockStore::new(store, &fmt.name));
    let cache = Arc::new(BlockCache::new(64 << 20, None));
    Ok(Arc::new(DataStore::new(
        meta,
        blocks,
        cache,
        fmt.block_size,
        fmt.codec(),
        64 << 20,
        fmt.capacity,
    )))
}

/// `1.5 GiB`-style sizes for summaries.
pub fn human(bytes: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("h").is_err());
    }
}
