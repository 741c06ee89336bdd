//! Mount sessions: registration in Redis, the heartbeat that keeps a session
//! alive, clean deregistration, and the background deleter that frees the
//! objects of deleted files once their grace period has passed. Each deletion
//! is claimed through Redis first, so one node does it, not all of them.

use std::sync::Arc;
use std::time::Duration;

use crate::data::DataStore;
use crate::meta::{now, Meta, SessionInfo, Slice};

pub fn session_info(mountpoint: &str, read_only: bool) -> SessionInfo {
    SessionInfo {
        sid: 0,
        host: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        mountpoint: mountpoint.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        start: now().0,
        read_only,
        expire: 0,
    }
}

/// Keeps the session's expiry in the future while the mount lives.
pub fn spawn_heartbeat(meta: Arc<Meta>, info: SessionInfo) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if let Err(e) = meta.write_session(&info).await {
                tracing::warn!(error = %e, "session heartbeat failed");
            }
        }
    })
}

/// Frees objects of deleted files and dropped slices whose grace period ended.
pub fn spawn_deleter(data: Arc<DataStore>, grace: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = delete_due(&data, grace).await {
                tracing::warn!(error = %e, "background deletion failed; will retry");
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    })
}

pub async fn delete_due(data: &DataStore, grace: Duration) -> anyhow::Result<usize> {
    let meta = &data.meta;
    let due = now().0 - grace.as_secs() as i64;
    let mut done = 0;
    for (ino, length) in meta.due_deleted_files(due, 100).await? {
        let member = format!("{ino}:{length}");
        if !meta.claim("delfiles", &member, 600).await? {
            continue;
        }
        let slices = meta.deleted_file_slices(ino, length).await?;
        data.delete_slice_objects(&slices).await?;
        meta.finish_deleted_file(ino, length).await?;
        done += 1;
    }
    for rec in meta.due_deleted_slices(due, 1000).await? {
        let s = Slice::decode(&rec)?;
        data.delete_slice_objects(&[s]).await?;
        meta.forget_deleted_slice(&rec).await?;
        done += 1;
    }
    Ok(done)
}
