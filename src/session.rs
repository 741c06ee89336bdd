//! Mount sessions: registration in Redis, the heartbeat that keeps a session
//! alive (and cleans up after expired ones), clean deregistration, and the
//! listener for other nodes' change events. Deletion is in `deleter`.

use std::sync::Arc;
use std::time::Duration;

use crate::meta::{now, Event, Meta, SessionInfo};
use crate::vfs::Vfs;

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

/// A session silent for this many heartbeats is taken for dead.
pub const MISSED_HEARTBEATS: u64 = 5;

/// Keeps the session's expiry in the future while the mount lives and, on
/// read-write mounts, cleans up after sessions whose heartbeat stopped:
/// their locks go and their unlinked-but-open files are deleted. The Redis
/// script lets exactly one node clean each dead session.
pub fn spawn_heartbeat(
    meta: Arc<Meta>,
    info: SessionInfo,
    every: Duration,
    clean_others: bool,
) -> tokio::task::JoinHandle<()> {
    let ttl = (every.as_secs().max(1) * MISSED_HEARTBEATS) as i64;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = meta.write_session(&info, ttl).await {
                tracing::warn!(error = %e, "session heartbeat failed");
            }
            if !clean_others {
                continue;
            }
            match meta.expired_sessions(now().0).await {
                Ok(dead) => {
                    for sid in dead.into_iter().filter(|s| *s != info.sid) {
                        match meta.clean_session(sid).await {
                            Ok(true) => tracing::info!(sid, "cleaned up after an expired session"),
                            Ok(false) => {}
                            Err(e) => {
                                tracing::warn!(sid, error = %e, "cannot clean expired session")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list expired sessions"),
            }
        }
    })
}

/// Follows the volume's change channel and drops kernel caches for what
/// other nodes changed. A lost connection is retried; meanwhile the
/// attribute and entry TTLs bound how long anything can be stale.
pub async fn run_event_listener(vfs: Arc<Vfs>) {
    use futures::StreamExt;
    loop {
        match vfs.meta.subscribe().await {
            Ok(mut ps) => {
                tracing::debug!("subscribed to change events");
                vfs.events_resumed();
                let mut stream = ps.on_message();
                while let Some(msg) = stream.next().await {
                    let Some(ev) = Event::parse(msg.get_payload_bytes()) else {
                        continue;
                    };
                    tracing::trace!(?ev, "change event");
                    if ev.sid() != vfs.sid() || vfs.sid() == 0 {
                        vfs.on_remote_change(ev).await;
                    }
                }
                tracing::warn!("change channel closed; resubscribing");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to change events"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
