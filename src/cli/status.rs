//! `vecfs status`: the volume record (never any secret) and live sessions.

use clap::Args;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Redis URL of the volume.
    meta_url: String,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
}

pub async fn run(a: StatusArgs) -> anyhow::Result<()> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    let (used, inodes) = meta.usage().await?;
    let sessions = meta.list_sessions().await?;
    let out = serde_json::json!({
        "setting": fmt,
        "usage": {"bytes": used, "inodes": inodes},
        "sessions": sessions,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
