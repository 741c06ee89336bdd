//! `vecfs gc META-URL [--delete]`: lists objects no metadata references
//! (leaked by a crash between upload and commit, or a failed delete) and,
//! with --delete, removes them; finishes deferred deletions that are due.
//! The work is in `vecfs::maintenance::gc`.

use std::time::Duration;

use clap::Args;
use vecfs::maintenance::gc::{self, GcOptions, Phase};

use super::progress::{human, parse_duration, spinner, StoreArgs};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    vecfs gc redis://localhost/1              # list leaked objects, change nothing\n  \
    vecfs gc redis://localhost/1 --delete     # delete them (objects younger than 1h are kept)\n  \
    vecfs gc redis://localhost/1 --delete --min-age 10m")]
pub struct GcArgs {
    /// Redis URL of the volume.
    meta_url: String,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
    /// Delete the leaked objects (without it gc only reports).
    #[arg(long)]
    delete: bool,
    /// Objects younger than this are never leaked, so uploads in flight
    /// (committed after gc read the metadata) survive: 90s, 15m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    min_age: Duration,
    /// Seconds a deleted file's objects are kept when the volume has no
    /// trash days (as `mount --delete-delay`): deferred deletions older than
    /// this are finished now.
    #[arg(long, default_value_t = 60)]
    delete_delay: u64,
    /// How many leaked keys to print (the counts cover all of them).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn run(a: GcArgs) -> anyhow::Result<()> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    let data = super::progress::data_store(meta, &fmt, &a.store)?;
    let grace = if fmt.trash_days > 0 {
        Duration::from_secs(fmt.trash_days as u64 * 86400)
    } else {
        Duration::from_secs(a.delete_delay)
    };
    let opts = GcOptions {
        delete: a.delete,
        min_age: a.min_age,
        grace,
        show: a.show,
    };
    let pb = spinner("finishing due deletions");
    let report = gc::run(data, &opts, &|p| match p {
        Phase::Deferred(n) => pb.set_message(format!("finishing due deletions: {n}")),
        Phase::Metadata(n) => pb.set_message(format!("reading metadata: {n} chunks")),
        Phase::Listing(n) => pb.set_message(format!("listing objects: {n}")),
        Phase::Deleting(n) => pb.set_message(format!("deleting leaked objects: {n}")),
    })
    .await;
    pb.finish_and_clear();
    let r = report?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for k in &r.leaked_keys {
            println!("leaked: {k}");
        }
        println!(
            "listed {} objects ({}): {} referenced ({}), {} leaked ({}), {} too young to judge ({}), {} not block keys",
            r.listed.objects,
            human(r.listed.bytes),
            r.referenced.objects,
            human(r.referenced.bytes),
            r.leaked.objects,
            human(r.leaked.bytes),
            r.young.objects,
            human(r.young.bytes),
            r.foreign.objects,
        );
        if a.delete {
            println!(
                "deleted {} leaked objects ({}), {} failed",
                r.deleted.objects,
                human(r.deleted.bytes),
                r.delete_failed
            );
        } else if r.leaked.objects > 0 {
            println!("run again with --delete to remove the leaked objects");
        }
        println!(
            "deferred deletions: {} files and {} slices finished now; pending {} files ({}) and {} slices ({})",
            r.finished_files,
            r.finished_slices,
            r.pending_files,
            human(r.pending_file_bytes),
            r.pending_slices,
            human(r.pending_slice_bytes),
        );
    }
    if r.delete_failed > 0 {
        anyhow::bail!("{} leaked objects could not be deleted", r.delete_failed);
    }
    Ok(())
}
