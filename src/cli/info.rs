//! `vecfs info PATH...`: what is behind files and directories of a mounted
//! volume: a file's inode, length, chunks, slices and object keys (with
//! their stored sizes); a directory's recursive totals.
//!
//! Finding the volume: the mount table names the mount's volume
//! (`vecfs:NAME`); the META-URL comes from `--meta-url` / VECFS_META_URL,
//! or else from the process serving the mount (its command line, or its
//! environment for daemons started with `@env`), which only its owner and
//! root can read. The URL, which may hold a password, is never printed.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Args;
use vecfs::data::DataStore;
use vecfs::meta::{build_pieces, is_inline, FileKind, Meta, CHUNK_SIZE, ROOT_INO};

use super::progress::{human, spinner, StoreArgs};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    vecfs info /mnt/vecfs/db/segment_1/vectors.bin   # inode, chunks, slices, object keys\n  \
    vecfs info /mnt/vecfs/db                         # recursive totals of a directory\n  \
    VECFS_META_URL=redis://:PASS@host/1 vecfs info /mnt/vecfs/db --json")]
pub struct InfoArgs {
    /// Files or directories inside a vecfs mount.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Redis URL of the mount's volume (default: found from the process
    /// serving the mount, which works for its owner and root).
    #[arg(long, env = "VECFS_META_URL", hide_env_values = true)]
    meta_url: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// The vecfs mount holding `p`: (mountpoint, volume name).
fn mount_of(p: &Path) -> anyhow::Result<(PathBuf, String)> {
    let canon = std::fs::canonicalize(p)
        .with_context(|| format!("{}: no such file or directory", p.display()))?;
    match vecfs::util::mount_containing(&canon) {
        Some(m) => match m.vecfs_volume() {
            Some(name) => Ok((m.mountpoint.clone(), name.to_string())),
            None => bail!("{} is not on a vecfs mount", p.display()),
        },
        None => bail!("{} is not on a vecfs mount", p.display()),
    }
}

/// The META-URL and `--subdir` of the process serving `mountpoint`.
fn served_by(mountpoint: &Path) -> Option<(String, Option<String>)> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let Some(m) = args.iter().position(|a| a == "mount") else {
            continue;
        };
        if !args
            .first()
            .is_some_and(|a| a.rsplit('/').next().is_some_and(|b| b.starts_with("vecfs")))
        {
            continue;
        }
        let (Some(url), Some(mp)) = (args.get(m + 1), args.get(m + 2)) else {
            continue;
        };
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        let mp = cwd.join(mp);
        if std::fs::canonicalize(&mp).ok().as_deref() != Some(mountpoint) && mp != mountpoint {
            continue;
        }
        let subdir = args
            .iter()
            .position(|a| a == "--subdir")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| {
                args.iter()
                    .find_map(|a| a.strip_prefix("--subdir=").map(str::to_string))
            });
        let url = if url == "@env" {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            env.split(|b| *b == 0).find_map(|kv| {
                std::str::from_utf8(kv)
                    .ok()?
                    .strip_prefix("VECFS_META_URL=")
                    .map(str::to_string)
            })?
        } else {
            url.clone()
        };
        return Some((url, subdir));
    }
    None
}

#[derive(Default, serde::Serialize)]
struct Totals {
    files: u64,
    dirs: u64,
    bytes: u64,
    objects: u64,
    stored_bytes: u64,
}

pub async fn run(a: InfoArgs) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for p in &a.paths {
        let (mp, name) = mount_of(p)?;
        let served = served_by(&mp);
        let url = match (&a.meta_url, &served) {
            (Some(u), _) => u.clone(),
            (None, Some((u, _))) => u.clone(),
            (None, None) => bail!(
                "cannot find the META-URL of the mount at {}: pass --meta-url (or VECFS_META_URL)",
                mp.display()
            ),
        };
        let u = crate::cli::meta_url_arg(&url)?;
        let (meta, fmt) = crate::cli::open_volume(&u, Some(&name)).await?;
        let data = super::progress::data_store(meta.clone(), &fmt, &a.store)?;
        let md =
            std::fs::symlink_metadata(p).with_context(|| format!("cannot stat {}", p.display()))?;
        let mut ino = md.ino();
        if ino == ROOT_INO {
            if let Some(sub) = served.as_ref().and_then(|s| s.1.as_deref()) {
                ino = vecfs::maintenance::fsck::resolve(&meta, sub).await?;
            }
        }
        let attr = meta
            .getattr(ino)
            .await
            .with_context(|| format!("{}: inode {ino} not found in volume {name}", p.display()))?;
        let j = if attr.kind == FileKind::Dir {
            let t = dir_totals(&meta, &data, ino).await?;
            serde_json::json!({"path": p, "inode": ino, "kind": "directory", "totals": t})
        } else {
            let mut j = file_info(&meta, &data, ino, attr.length).await?;
            j["path"] = serde_json::json!(p);
            j["kind"] = serde_json::json!(format!("{:?}", attr.kind).to_lowercase());
            j
        };
        if !a.json {
            print_human(&j);
        }
        out.push(j);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

async fn file_info(
    meta: &Meta,
    data: &Arc<DataStore>,
    ino: u64,
    length: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut chunks = Vec::new();
    let (mut nslices, mut nobjects, mut stored) = (0u64, 0u64, 0u64);
    for indx in 0..length.div_ceil(CHUNK_SIZE) {
        let recs = meta.read_chunk(ino, indx).await?;
        let live: HashSet<u64> = build_pieces(&recs).iter().map(|p| p.id).collect();
        let mut slices = Vec::new();
        for s in &recs {
            if s.id == 0 {
                continue;
            }
            nslices += 1;
            let mut objects = Vec::new();
            let keys = data.object_keys(s);
            let sizes = stored_sizes(data, &keys).await?;
            for (key, size) in keys.into_iter().zip(sizes) {
                nobjects += 1;
                stored += size.unwrap_or(0);
                objects.push(serde_json::json!({"key": key, "size": size}));
            }
            slices.push(serde_json::json!({
                "id": s.id, "pos": s.pos, "off": s.off, "len": s.len, "size": s.size,
                "inline": is_inline(s.id), "visible": live.contains(&s.id), "objects": objects,
            }));
        }
        chunks.push(serde_json::json!({"index": indx, "slices": slices}));
    }
    Ok(serde_json::json!({
        "inode": ino, "length": length, "chunks": chunks,
        "slice_count": nslices, "object_count": nobjects, "stored_bytes": stored,
    }))
}

async fn dir_totals(meta: &Meta, data: &Arc<DataStore>, top: u64) -> anyhow::Result<Totals> {
    let pb = spinner("walking");
    let mut t = Totals {
        dirs: 1,
        ..Totals::default()
    };
    let mut seen = HashSet::from([top]);
    let mut dirs = vec![top];
    while let Some(d) = dirs.pop() {
        for e in meta.readdir(d).await? {
            if !seen.insert(e.ino) {
                continue; // a hard link counted already
            }
            match e.kind {
                FileKind::Dir => {
                    t.dirs += 1;
                    dirs.push(e.ino);
                }
                FileKind::File => {
                    t.files += 1;
                    let Ok(a) = meta.getattr(e.ino).await else {
                        continue;
                    };
                    t.bytes += a.length;
                    for indx in 0..a.length.div_ceil(CHUNK_SIZE) {
                        let keys: Vec<String> = meta
                            .read_chunk(e.ino, indx)
                            .await?
                            .iter()
                            .flat_map(|s| data.object_keys(s))
                            .collect();
                        t.objects += keys.len() as u64;
                        for size in stored_sizes(data, &keys).await? {
                            t.stored_bytes += size.unwrap_or(0);
                        }
                    }
                }
                _ => t.files += 1,
            }
        }
        pb.set_message(format!(
            "{} files, {} dirs, {}",
            t.files,
            t.dirs,
            human(t.bytes)
        ));
    }
    pb.finish_and_clear();
    Ok(t)
}

/// Stored sizes of objects (None: missing), asked a few at a time.
async fn stored_sizes(data: &DataStore, keys: &[String]) -> anyhow::Result<Vec<Option<u64>>> {
    use futures::StreamExt;
    let sizes: Vec<_> = futures::stream::iter(keys.iter().map(|k| data.blocks.head_size(k)))
        .buffered(16)
        .collect()
        .await;
    Ok(sizes.into_iter().collect::<Result<_, _>>()?)
}

fn print_human(j: &serde_json::Value) {
    let path = j["path"].as_str().unwrap_or("");
    println!("{path}:");
    println!("  inode: {}", j["inode"]);
    if let Some(t) = j.get("totals") {
        let n = |k: &str| t[k].as_u64().unwrap_or(0);
        println!("  directories: {}", n("dirs"));
        println!("  files: {}", n("files"));
        println!("  bytes: {} ({})", n("bytes"), human(n("bytes")));
        println!(
            "  objects: {}, stored: {} ({})",
            n("objects"),
            n("stored_bytes"),
            human(n("stored_bytes"))
        );
        return;
    }
    let n = |k: &str| j[k].as_u64().unwrap_or(0);
    println!("  kind: {}", j["kind"].as_str().unwrap_or(""));
    println!("  length: {} ({})", n("length"), human(n("length")));
    println!(
        "  chunks: {}, slices: {}, objects: {}, stored: {} ({})",
        j["chunks"].as_array().map_or(0, |c| c.len()),
        n("slice_count"),
        n("object_count"),
        n("stored_bytes"),
        human(n("stored_bytes"))
    );
    for c in j["chunks"].as_array().into_iter().flatten() {
        println!("  chunk {}:", c["index"]);
        for s in c["slices"].as_array().into_iter().flatten() {
            println!(
                "    slice {} at {} (bytes {}..+{} of {}){}{}",
                s["id"],
                s["pos"],
                s["off"],
                s["len"],
                s["size"],
                if s["inline"] == true { ", inline" } else { "" },
                if s["visible"] == true {
                    ""
                } else {
                    ", hidden by later writes"
                }
            );
            for o in s["objects"].as_array().into_iter().flatten() {
                match o["size"].as_u64() {
                    Some(sz) => println!("      {} ({sz} bytes)", o["key"].as_str().unwrap_or("")),
                    None => println!("      {} (MISSING)", o["key"].as_str().unwrap_or("")),
                }
            }
        }
    }
}
