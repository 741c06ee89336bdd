//! `vecfs format`: checks the object store (write, read back, delete a probe)
//! before anything is written to Redis, then records the volume. Formatting
//! again with the same layout only updates the tunable settings. A new
//! volume's root directory is made as mkfs makes one: 0755 (or
//! `--root-mode`), owned by the user running format.

use anyhow::{bail, Context};
use clap::Args;
use vecfs::codec::parse_compression;
use vecfs::meta::{Format, Meta};
use vecfs::object::{build_store, BlockStore, Credentials, StorageKind};
use vecfs::util::{check_volume_name, parse_mode, parse_size};

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Redis URL: redis://[user:pass@]host[:port][/db], rediss://, unix:///path, or a host.
    meta_url: String,
    /// Volume name: 3-63 characters from a-z, 0-9 and '-'.
    name: String,
    /// Object storage kind: file, s3 or azure (wasb).
    #[arg(long, default_value = "file")]
    storage: String,
    /// A directory for file; http(s)://ENDPOINT/BUCKET for s3;
    /// http(s)://ENDPOINT/ACCOUNT/CONTAINER or https://ACCOUNT.blob.core.windows.net/CONTAINER for azure.
    #[arg(long)]
    bucket: Option<String>,
    /// Access key (S3) or account name (Azure); also ACCESS_KEY / AWS_ACCESS_KEY_ID.
    #[arg(long, env = "ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,
    /// Secret key (S3) or account key (Azure); also SECRET_KEY / AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Block size: a power of two from 64K to 16M (plain numbers are KiB).
    #[arg(long, default_value = "4M")]
    block_size: String,
    /// Block compression: auto (per block: raw, lz4 or byte-shuffle + lz4,
    /// whichever pays), lz4, zstd[:LEVEL] (shuffled where it pays) or none.
    #[arg(long, default_value = "auto")]
    compress: String,
    /// Days deleted data is kept before its objects are removed (0: soon after deletion).
    #[arg(long, default_value_t = 1)]
    trash_days: u32,
    /// Space limit in GiB (0: unlimited).
    #[arg(long, default_value_t = 0)]
    capacity: u64,
    /// Inode limit (0: unlimited).
    #[arg(long, default_value_t = 0)]
    inodes: u64,
    /// Keep the bytes of small files (slices ending within this many bytes of
    /// the file's start) in Redis: one round trip per small file instead of
    /// an object PUT (0: off; at most 64K).
    #[arg(long, default_value = "16K")]
    inline_size: String,
    /// Mode of a new volume's root directory, in octal (e.g. 1777 for a
    /// shared, sticky root) [default: 755]; it is owned by the user running
    /// format. An existing volume's root keeps its mode (chmod it on a mount).
    #[arg(long)]
    root_mode: Option<String>,
    /// Overwrite an existing volume with a different layout.
    #[arg(long)]
    force: bool,
}

/// `--inline-size` (shared with `vecfs config`): at most 64K and the block size.
pub fn parse_inline_size(raw: &str, block_size: u64) -> anyhow::Result<u32> {
    let n = parse_size(raw, 1).map_err(|e| anyhow::anyhow!("--inline-size: {e}"))?;
    if n > 64 << 10 || n > block_size {
        bail!(
            "--inline-size {raw} is too large: Redis keeps these bytes in memory; use at most 64K (0 turns it off)"
        );
    }
    Ok(n as u32)
}

fn default_bucket(name: &str) -> String {
    let base = if nix_is_root() {
        "/var/lib/vecfs".to_string()
    } else {
        format!(
            "{}/.vecfs/local",
            std::env::var("HOME").unwrap_or_else(|_| ".".into())
        )
    };
    format!("{base}/{name}")
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub async fn run(a: FormatArgs) -> anyhow::Result<()> {
    check_volume_name(&a.name).map_err(anyhow::Error::msg)?;
    let storage: StorageKind = a.storage.parse().map_err(anyhow::Error::msg)?;
    let codec = parse_compression(&a.compress).map_err(|e| anyhow::anyhow!("--compress: {e}"))?;
    let block_size =
        parse_size(&a.block_size, 1024).map_err(|e| anyhow::anyhow!("--block-size: {e}"))?;
    if !block_size.is_power_of_two() || !(64 << 10..=16 << 20).contains(&block_size) {
        bail!(
            "--block-size {} is not a power of two between 64K and 16M: use e.g. 1M or 4M",
            a.block_size
        );
    }
    let inline_size = parse_inline_size(&a.inline_size, block_size)?;
    let root_mode = parse_mode(a.root_mode.as_deref().unwrap_or("755"))
        .map_err(|e| anyhow::anyhow!("--root-mode: {e}"))?;
    let bucket = match (&a.bucket, storage) {
        (Some(b), _) => b.clone(),
        (None, StorageKind::File) => default_bucket(&a.name),
        (None, other) => bail!("--bucket is required for {other} storage"),
    };
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let meta = Meta::connect(&u, &a.name).await?;
    let old = meta.load_format().await?;
    let creds = Credentials {
        access_key: a.access_key.clone(),
        secret_key: a.secret_key.clone(),
    };
    let new = Format {
        name: a.name.clone(),
        uuid: old
            .as_ref()
            .map(|o| o.uuid.clone())
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>())),
        storage,
        bucket: bucket.clone(),
        block_size: block_size as u32,
        compression: codec.compression,
        zstd_level: codec.zstd_level,
        trash_days: a.trash_days,
        capacity: a.capacity << 30,
        inodes: a.inodes,
        meta_version: 1,
        inline_size,
    };
    if let Some(o) = &old {
        if !o.same_layout(&new) && !a.force {
            bail!(
                "volume '{}' already exists in {} with storage {} bucket {} block size {}: \
                 formatting it differently would orphan its data; use --force to overwrite",
                o.name,
                u.redacted,
                o.storage,
                o.bucket,
                o.block_size
            );
        }
    }
    let store = build_store(storage, &bucket, &creds)
        .with_context(|| format!("cannot use {storage} bucket {bucket}"))?;
    BlockStore::new(store, &a.name)
        .probe()
        .await
        .with_context(|| {
            format!(
                "object store check failed for {storage} bucket {bucket} \
                 (does the bucket exist and do the credentials allow writing?)"
            )
        })?;
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    meta.init(&new, root_mode, uid, gid).await?;
    println!(
        "{} volume '{}' in {} (storage {} bucket {}, block size {} KiB, compression {})",
        if old.is_some() {
            "updated"
        } else {
            "formatted"
        },
        new.name,
        u.redacted,
        new.storage,
        new.bucket,
        new.block_size >> 10,
        new.codec()
    );
    if old.is_some() && a.root_mode.is_some() {
        println!("--root-mode left the existing root as it was: chmod it on a mount instead");
    }
    Ok(())
}
