//! `vecfs destroy`: removes a volume for good: its objects (listed under the
//! volume's prefix, deleted in batches), then every metadata key (SCAN by
//! the volume's hash tag, batched UNLINK, the volume record last so an
//! interrupted run can be repeated). The UUID is the confirmation.

use anyhow::{bail, Context};
use clap::Args;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use vecfs::meta::dump::remove_keys;
use vecfs::object::{build_store, BlockStore, Credentials};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    vecfs status redis://localhost:6379/1      # shows setting.uuid\n  \
    vecfs destroy redis://localhost:6379/1 3f2c...e9\n\n\
This deletes every object and every metadata key of the volume; it cannot \
be undone. Live sessions (mounts) make it refuse unless --force.")]
pub struct DestroyArgs {
    /// Redis URL of the volume.
    meta_url: String,
    /// The volume's UUID, as `vecfs status` shows it: the confirmation.
    uuid: String,
    /// Destroy even while mounts (live sessions) use the volume.
    #[arg(long)]
    force: bool,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
    /// Access key (S3) or account name (Azure); also ACCESS_KEY / AWS_ACCESS_KEY_ID.
    #[arg(long, env = "ACCESS_KEY", hide_env_values = true)]
    access_key: Option<String>,
    /// Secret key (S3) or account key (Azure); also SECRET_KEY / AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
}

/// Objects deleted per pass: each pass lists afresh from the start, so
/// deleting never disturbs a listing in progress.
const PASS: usize = 1000;

pub async fn run(a: DestroyArgs) -> anyhow::Result<()> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    if !fmt.uuid.eq_ignore_ascii_case(a.uuid.trim()) {
        bail!(
            "{} is not the UUID of volume '{}' in {}: `vecfs status {}` shows it (setting.uuid)",
            a.uuid,
            fmt.name,
            u.redacted,
            u.redacted
        );
    }
    let now = vecfs::meta::now().0;
    let live: Vec<String> = meta
        .list_sessions()
        .await?
        .into_iter()
        .filter(|s| s.expire > now)
        .map(|s| format!("{}:{} (session {})", s.host, s.mountpoint, s.sid))
        .collect();
    if !live.is_empty() {
        if !a.force {
            bail!(
                "volume '{}' is mounted ({}): unmount it first, or pass --force",
                fmt.name,
                live.join(", ")
            );
        }
        eprintln!(
            "destroying volume '{}' although mounted at {}",
            fmt.name,
            live.join(", ")
        );
    }
    let creds = Credentials {
        access_key: a.access_key.clone(),
        secret_key: a.secret_key.clone(),
    };
    let store = build_store(fmt.storage, &fmt.bucket, &creds)
        .with_context(|| format!("cannot use {} bucket {}", fmt.storage, fmt.bucket))?;
    let blocks = BlockStore::new(store.clone(), &fmt.name);
    let prefix = ObjPath::from(fmt.name.as_str());
    let bar = crate::cli::dump::progress_bar(0, "objects deleted");
    let mut objects = 0u64;
    loop {
        let mut keys = Vec::with_capacity(PASS);
        let mut listing = store.list(Some(&prefix));
        while keys.len() < PASS {
            match listing.next().await {
                Some(Ok(m)) => keys.push(m.location.to_string()),
                Some(Err(object_store::Error::NotFound { .. })) | None => break,
                Some(Err(e)) => {
                    bar.finish_and_clear();
                    bail!(
                        "cannot list the objects of volume '{}' in {} bucket {}: {e}; nothing \
                         of the metadata was removed",
                        fmt.name,
                        fmt.storage,
                        fmt.bucket
                    );
                }
            }
        }
        drop(listing);
        if keys.is_empty() {
            break;
        }
        let results = blocks.delete_many(&keys).await;
        if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
            let failed = results.iter().filter(|r| r.is_err()).count();
            bar.finish_and_clear();
            bail!(
                "{failed} objects of volume '{}' could not be deleted (first error: {e}); \
                 the metadata is kept: run destroy again",
                fmt.name
            );
        }
        objects += keys.len() as u64;
        bar.set_position(objects);
    }
    bar.finish_and_clear();
    let bar = crate::cli::dump::progress_bar(0, "keys removed");
    let keys = remove_keys(&meta, &|n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    println!(
        "destroyed volume '{}' (uuid {}): {objects} objects and {keys} metadata keys removed",
        fmt.name, fmt.uuid
    );
    Ok(())
}
