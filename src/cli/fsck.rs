//! `vecfs fsck META-URL [--repair] [--path P] [--check-data]`: checks that
//! entries, inodes, counters and objects agree, and with --repair fixes
//! what is safely fixable. The work is in `vecfs::maintenance::fsck`.

use clap::Args;
use vecfs::maintenance::fsck::{self, FsckOptions, Phase};

use super::progress::{spinner, StoreArgs};

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when no problem remains, 1 otherwise.\n\n\
Examples:\n  \
    vecfs fsck redis://localhost/1                      # check, change nothing\n  \
    vecfs fsck redis://localhost/1 --repair             # fix what is safely fixable\n  \
    vecfs fsck redis://localhost/1 --path /db/segments --check-data"
)]
pub struct FsckArgs {
    /// Redis URL of the volume.
    meta_url: String,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
    /// Fix what is safely fixable (dangling entries, link counts, counters,
    /// orphan inodes to /lost+found) and print each fix.
    #[arg(long)]
    repair: bool,
    /// Check only this directory tree of the volume (e.g. /db/segments).
    #[arg(long)]
    path: Option<String>,
    /// Also fetch every object and verify its checksum and length.
    #[arg(long)]
    check_data: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(a: FsckArgs) -> anyhow::Result<bool> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    let only = match &a.path {
        None => None,
        Some(p) => {
            let ino = fsck::resolve(&meta, p)
                .await
                .map_err(|e| anyhow::anyhow!("--path {p}: {e}"))?;
            Some(fsck::subtree(&meta, ino).await?)
        }
    };
    let data = super::progress::data_store(meta, &fmt, &a.store)?;
    let opts = FsckOptions {
        repair: a.repair,
        check_data: a.check_data,
        only,
    };
    let pb = spinner("reading inodes");
    let report = fsck::run(data, &opts, &|p| match p {
        Phase::Inodes(n) => pb.set_message(format!("reading inodes: {n}")),
        Phase::Entries(n) => pb.set_message(format!("reading directory entries: {n}")),
        Phase::Chunks(n) => pb.set_message(format!("reading chunks: {n}")),
        Phase::Listing(n) => pb.set_message(format!("listing objects: {n}")),
        Phase::Data(n, t) => pb.set_message(format!("checking data: {n}/{t} objects")),
    })
    .await;
    pb.finish_and_clear();
    let r = report?;
    for p in &r.problems {
        println!("problem: {p}");
    }
    for f in &r.repaired {
        println!("repaired: {f}");
    }
    println!(
        "checked {} inodes, {} directories, {} entries, {} chunks, {} objects{}: {} problems, {} repaired, {} remaining",
        r.inodes,
        r.directories,
        r.entries,
        r.chunks,
        r.objects_checked,
        if a.check_data { " (data verified)" } else { "" },
        r.problems.len(),
        r.repaired.len(),
        r.remaining
    );
    if r.remaining > 0 && !a.repair {
        println!("run with --repair to fix what is safely fixable");
    }
    Ok(r.remaining == 0)
}
