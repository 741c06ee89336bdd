//! Background compaction: a chunk whose slice list grew long (small
//! overwrites, appends) is rewritten as one slice and swapped in atomically.
//! The writer triggers it after a commit that leaves `COMPACT_AT` records or
//! more; the replaced slices go to the deleter through `delslices`.

use std::sync::Arc;

use bytes::Bytes;

use crate::data::{writer, DataStore, PendingBlocks};
use crate::error::{Error, Result};
use crate::meta::{build_pieces, Slice};

/// A chunk whose list keeps this many records after a write is compacted:
/// every read replays the list, and each record may cost a fetch.
pub const COMPACT_AT: usize = 16;

impl DataStore {
    /// Compacts a chunk in the background unless this node already is.
    pub fn spawn_compaction(self: &Arc<Self>, ino: u64, indx: u64) {
        let fresh = self
            .compacting
            .lock()
            .is_ok_and(|mut set| set.insert((ino, indx)));
        if !fresh {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            match me.compact_chunk(ino, indx).await {
                Ok(n) => tracing::debug!(ino, indx, records = n, "compacted chunk"),
                Err(e) => tracing::warn!(ino, indx, error = %e, "compaction failed"),
            }
            if let Ok(mut set) = me.compacting.lock() {
                set.remove(&(ino, indx));
            }
        });
    }

    /// Rewrites the bytes a chunk's records describe as one new slice and
    /// swaps it in atomically for those records (records appended meanwhile
    /// stay on top). The old slices are journaled for deferred deletion, so
    /// readers holding the old list keep working for the grace period.
    /// Returns how many records were merged (0: nothing to do or lost a race).
    pub async fn compact_chunk(self: &Arc<Self>, ino: u64, indx: u64) -> Result<usize> {
        let records = self.meta.read_chunk(ino, indx).await?;
        if records.len() < 2 {
            return Ok(0);
        }
        let start = records.iter().map(|r| r.pos).min().unwrap_or(0);
        let end = records.iter().map(|r| r.pos + r.len).max().unwrap_or(0);
        if end <= start {
            return Ok(0);
        }
        let pieces = build_pieces(&records);
        let id = self.meta.new_slice_id().await?;
        let bs = self.block_size;
        let mut uploads = Vec::new();
        let mut at = start;
        let mut bi = 0;
        let mut stored = Ok(());
        while at < end {
            let n = bs.min(end - at);
            let held = match self.budget.take(n as usize).await {
                Ok(h) => h,
                Err(e) => {
                    stored = Err(e);
                    break;
                }
            };
            let mut raw = vec![0u8; n as usize];
            let pending = PendingBlocks::new();
            if let Err(e) = self
                .read_chunk_range(&pieces, at, &mut raw, false, &pending)
                .await
                .map(|_| ())
            {
                stored = Err(e);
                break;
            }
            uploads.push(writer::spawn_store_block(
                self,
                id,
                bi,
                Bytes::from(raw),
                held,
            ));
            at += n;
            bi += 1;
        }
        for u in uploads {
            if let Err(e) = u.await.map_err(Error::from).and_then(|r| r) {
                stored = Err(e);
            }
        }
        if let Err(e) = stored {
            // Blocks already stored go to the deleter.
            self.abandon_uploads(vec![id]);
            return Err(e);
        }
        let size = end - start;
        let new = Slice {
            pos: start,
            id,
            size,
            off: 0,
            len: size,
        };
        let swapped = match self.meta.compact_chunk(ino, indx, &records, &new).await {
            Ok(v) => v,
            Err(e) => {
                self.abandon_uploads(vec![id]);
                return Err(e.into());
            }
        };
        if swapped {
            self.forget_cached(&records).await;
            Ok(records.len())
        } else {
            Ok(0)
        }
    }
}
