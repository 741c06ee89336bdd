//! `vecfs config`: shows a volume's mutable settings, or changes them in one
//! atomic compare-and-set of the volume record (`Meta::update_format`),
//! validated by the same parsers `format` uses. Settings that decide where
//! and how data is laid out are refused with the reason.

use anyhow::bail;
use clap::Args;
use vecfs::codec::parse_compression;
use vecfs::meta::Format;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    vecfs config redis://localhost:6379/1\n  \
    vecfs config redis://localhost:6379/1 --capacity 500 --trash-days 7\n\n\
Running mounts pick up --capacity and --inodes within a few seconds; the \
other settings apply from the next mount. Block size, storage and bucket \
cannot be changed: existing objects are named and cut by them.")]
pub struct ConfigArgs {
    /// Redis URL of the volume.
    meta_url: String,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
    /// Days deleted data is kept before its objects are removed (0: soon after deletion).
    #[arg(long)]
    trash_days: Option<u32>,
    /// Space limit in GiB (0: unlimited).
    #[arg(long)]
    capacity: Option<u64>,
    /// Inode limit (0: unlimited).
    #[arg(long)]
    inodes: Option<u64>,
    /// Keep files' first bytes up to this size in Redis (0: off; at most 64K).
    #[arg(long)]
    inline_size: Option<String>,
    /// Compression of new blocks: auto, lz4, zstd[:LEVEL] or none (existing
    /// blocks keep theirs).
    #[arg(long)]
    compress: Option<String>,
    /// Refused: objects are cut by it.
    #[arg(long, hide = true)]
    block_size: Option<String>,
    /// Refused: existing objects live there.
    #[arg(long, hide = true)]
    storage: Option<String>,
    /// Refused: existing objects live there.
    #[arg(long, hide = true)]
    bucket: Option<String>,
}

/// The mutable settings as (name, shown value).
fn shown(f: &Format) -> Vec<(&'static str, String)> {
    let limit = |n: u64, unit: &str| {
        if n == 0 {
            "0 (unlimited)".to_string()
        } else {
            format!("{n}{unit}")
        }
    };
    let cap = if f.capacity % (1 << 30) == 0 {
        limit(f.capacity >> 30, " GiB")
    } else {
        format!("{} bytes", f.capacity)
    };
    vec![
        ("trash-days", f.trash_days.to_string()),
        ("capacity", cap),
        ("inodes", limit(f.inodes, "")),
        ("inline-size", format!("{} bytes", f.inline_size)),
        ("compress", f.codec().to_string()),
    ]
}

pub async fn run(a: ConfigArgs) -> anyhow::Result<()> {
    for (flag, given, why) in [
        (
            "--block-size",
            a.block_size.is_some(),
            "existing objects are cut in blocks of this size",
        ),
        (
            "--storage",
            a.storage.is_some(),
            "existing objects live in this store",
        ),
        (
            "--bucket",
            a.bucket.is_some(),
            "existing objects live in this bucket",
        ),
    ] {
        if given {
            bail!("{flag} cannot be changed: {why}; format a new volume and copy the files into it instead");
        }
    }
    let codec = match &a.compress {
        Some(c) => Some(parse_compression(c).map_err(|e| anyhow::anyhow!("--compress: {e}"))?),
        None => None,
    };
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    let inline = match &a.inline_size {
        Some(s) => Some(crate::cli::format::parse_inline_size(
            s,
            fmt.block_size as u64,
        )?),
        None => None,
    };
    let capacity = match a.capacity {
        Some(g) => Some(
            g.checked_mul(1 << 30)
                .ok_or_else(|| anyhow::anyhow!("--capacity {g} GiB is too large"))?,
        ),
        None => None,
    };
    let changing = a.trash_days.is_some()
        || capacity.is_some()
        || a.inodes.is_some()
        || inline.is_some()
        || codec.is_some();
    println!(
        "volume '{}' (uuid {}) in {}",
        fmt.name, fmt.uuid, u.redacted
    );
    if !changing {
        for (k, v) in shown(&fmt) {
            println!("  {k}: {v}");
        }
        return Ok(());
    }
    let (old, new) = meta
        .update_format(|cur| {
            let mut f = cur.clone();
            if let Some(d) = a.trash_days {
                f.trash_days = d;
            }
            if let Some(c) = capacity {
                f.capacity = c;
            }
            if let Some(n) = a.inodes {
                f.inodes = n;
            }
            if let Some(i) = inline {
                f.inline_size = i;
            }
            if let Some(c) = codec {
                f.compression = c.compression;
                f.zstd_level = c.zstd_level;
            }
            f
        })
        .await?;
    for ((k, o), (_, n)) in shown(&old).into_iter().zip(shown(&new)) {
        if o != n {
            println!("  {k}: {o} -> {n}");
        } else {
            println!("  {k}: {o}");
        }
    }
    Ok(())
}
