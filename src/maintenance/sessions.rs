//! Cleanup after dead sessions: a read-write node periodically looks for
//! sessions whose heartbeat expiry passed and releases what they held.

use std::sync::Arc;
use std::time::Duration;

use crate::meta::Meta;

/// On read-write mounts, cleans up after sessions whose expiry passed (by
/// Redis' clock): their locks go and their unlinked-but-open files are
/// deleted. The Redis script lets exactly one node clean each dead session.
pub fn spawn_session_cleaner(meta: Arc<Meta>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let dead = match meta.expired_sessions().await {
                Ok(dead) => dead,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list expired sessions");
                    continue;
                }
            };
            for sid in dead.into_iter().filter(|s| *s != meta.sid()) {
                match meta.clean_session(sid, false).await {
                    Ok(true) => tracing::info!(sid, "cleaned up after an expired session"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(sid, error = %e, "cannot clean expired session"),
                }
            }
        }
    })
}
