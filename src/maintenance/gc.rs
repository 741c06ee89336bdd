//! Garbage collection (`vecfs gc`): finds objects under the volume's block
//! prefix that no metadata names (leaked by a crash between upload and
//! commit, or by a delete that failed) and, when asked, deletes them; first
//! it finishes the deferred deletions that are due, as a mount's deleter
//! would.
//!
//! Safety: an object is leaked only if its key parses as a block key, its
//! slice id is in no chunk list, upload journal or deletion queue (see
//! `scan::referenced_slices`, read before the listing starts), and it is
//! older than the age window, so uploads in flight while gc runs (whose
//! slices may commit after the scan) are never touched.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use super::deleter::Deleter;
use super::scan;
use crate::data::DataStore;
use crate::error::{Error, Result};
use crate::object::parse_block_key;

pub struct GcOptions {
    /// Delete the leaked objects (otherwise only list them).
    pub delete: bool,
    /// Objects younger than this are never leaked.
    pub min_age: Duration,
    /// A deferred deletion is due once this long passed (the volume's
    /// trash days, or the mounts' delete delay).
    pub grace: Duration,
    /// Leaked keys to hand back for printing (at most this many).
    pub show: usize,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Count {
    pub objects: u64,
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    /// Every object under the block prefix.
    pub listed: Count,
    /// Objects of slices some metadata names.
    pub referenced: Count,
    /// Unreferenced objects older than the window.
    pub leaked: Count,
    /// Unreferenced objects younger than the window (left alone).
    pub young: Count,
    /// Objects whose key is not a block key (left alone).
    pub foreign: Count,
    /// Leaked objects deleted (with `delete`).
    pub deleted: Count,
    /// Leaked objects whose deletion failed.
    pub delete_failed: u64,
    /// Deferred deletions finished now: files and slices.
    pub finished_files: u64,
    pub finished_slices: u64,
    /// Deferred deletions still queued (not due yet, or failing).
    pub pending_files: u64,
    pub pending_file_bytes: u64,
    pub pending_slices: u64,
    pub pending_slice_bytes: u64,
    /// Slice ids the metadata names.
    pub referenced_slices: u64,
    /// Some leaked keys, for the operator to see.
    pub leaked_keys: Vec<String>,
}

/// What gc is doing, for a progress display.
pub enum Phase {
    Deferred(u64),
    Metadata(u64),
    Listing(u64),
    Deleting(u64),
}

/// Objects deleted per request batch.
const DELETE_BATCH: usize = 1000;

pub async fn run(
    data: Arc<DataStore>,
    opts: &GcOptions,
    progress: &(dyn Fn(Phase) + Sync),
) -> Result<GcReport> {
    let mut r = GcReport::default();
    let meta = data.meta.clone();

    // 1. Deferred deletions that are due, as a mount's deleter does them.
    let deleter = Deleter::new(data.clone(), opts.grace);
    for _ in 0..100_000 {
        let p = deleter.pass().await?;
        r.finished_files += p.files as u64;
        r.finished_slices += p.slices as u64;
        progress(Phase::Deferred(r.finished_files + r.finished_slices));
        // Failed entries are due again only later: stop when nothing new
        // was done.
        if p.files + p.slices == 0 {
            break;
        }
    }
    let (pf, pfb, ps, psb) = scan::pending_deletions(&meta).await?;
    (r.pending_files, r.pending_file_bytes) = (pf, pfb);
    (r.pending_slices, r.pending_slice_bytes) = (ps, psb);

    // 2. What metadata names. Anything uploaded after this instant is young.
    let started = SystemTime::now();
    let cutoff = started
        .checked_sub(opts.min_age)
        .unwrap_or(UNIX_EPOCH)
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let (refs, _) = scan::referenced_slices(&meta, &|n| progress(Phase::Metadata(n))).await?;
    r.referenced_slices = refs.len() as u64;

    // 3. The store, streamed.
    let mut doomed: Vec<(String, u64)> = Vec::new();
    let mut list = data.blocks.list_blocks();
    while let Some(m) = list.next().await {
        let m = m?;
        let key = m.location.to_string();
        r.listed.add(m.size);
        if r.listed.objects % 1000 == 0 {
            progress(Phase::Listing(r.listed.objects));
        }
        let Some((id, _, _)) = parse_block_key(&key) else {
            r.foreign.add(m.size);
            continue;
        };
        if refs.contains(id) {
            r.referenced.add(m.size);
            continue;
        }
        let modified = m.last_modified.timestamp_millis() as f64 / 1000.0;
        if modified > cutoff {
            r.young.add(m.size);
            continue;
        }
        r.leaked.add(m.size);
        if r.leaked_keys.len() < opts.show {
            r.leaked_keys.push(key.clone());
        }
        if opts.delete {
            doomed.push((key, m.size));
            if doomed.len() >= DELETE_BATCH {
                delete(&data, &mut doomed, &mut r).await;
                progress(Phase::Deleting(r.deleted.objects));
            }
        }
    }
    progress(Phase::Listing(r.listed.objects));
    if !doomed.is_empty() {
        delete(&data, &mut doomed, &mut r).await;
        progress(Phase::Deleting(r.deleted.objects));
    }
    Ok(r)
}

async fn delete(data: &DataStore, doomed: &mut Vec<(String, u64)>, r: &mut GcReport) {
    let keys: Vec<String> = doomed.iter().map(|(k, _)| k.clone()).collect();
    let results = data.blocks.delete_many(&keys).await;
    for ((key, size), res) in doomed.drain(..).zip(results) {
        match res {
            Ok(()) => r.deleted.add(size),
            Err(e) => {
                r.delete_failed += 1;
                tracing::warn!(key, error = %Error::from(e), "cannot delete leaked object");
            }
        }
    }
}
