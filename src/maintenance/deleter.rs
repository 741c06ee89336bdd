//! The background deleter: frees the objects (and inline bytes) of deleted
//! files (`delfiles`) and of slices no file refers to (`delslices`: hidden
//! by later writes, compacted, truncated away, or uploaded by a session that
//! died or gave up before committing them) once their grace period passed.
//!
//! Every read-write node runs one. Work is claimed from Redis in batches with
//! a lease, so two nodes never do the same deletions; objects are deleted in
//! batches (multi-object requests where the store has them) a few at a time;
//! an entry whose deletion fails is given back, due again a little later for
//! any node, and never stops the rest of the pass. While work is due the
//! deleter goes on at once; it only waits when the queues are empty.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::data::DataStore;
use crate::meta::{is_inline, Result, Slice};
use crate::metrics;

/// Counts of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Deleted files whose objects are now gone.
    pub files: usize,
    /// Deleted-slice entries whose objects are now gone.
    pub slices: usize,
    /// Entries claimed but not done (given back for a later try).
    pub failed: usize,
}

impl Pass {
    pub fn claimed(&self) -> usize {
        self.files + self.slices + self.failed
    }
}

pub struct Deleter {
    data: Arc<DataStore>,
    grace: i64,
    /// Grace of deleted files, when it differs: with a trash they waited
    /// there already, while overwritten slices wait the trash's time here.
    pub files_grace: Option<Duration>,
    /// How long a claim keeps other nodes off an entry: far longer than a
    /// pass takes, short enough that a node dying mid-pass delays little.
    pub lease: Duration,
    /// An entry whose deletion failed is due again after this long.
    pub retry_after: Duration,
    /// Entries claimed per queue and pass.
    pub batch: usize,
    /// How long an idle deleter waits before looking again.
    pub idle: Duration,
}

/// Which queue an entry came from.
#[derive(Clone, Copy)]
enum Queue {
    Files,
    Slices,
}

impl Queue {
    fn zset(self) -> &'static str {
        match self {
            Queue::Files => "delfiles",
            Queue::Slices => "delslices",
        }
    }
}

impl Deleter {
    pub fn new(data: Arc<DataStore>, grace: Duration) -> Deleter {
        Deleter {
            data,
            grace: grace.as_secs() as i64,
            files_grace: None,
            lease: Duration::from_secs(600),
            retry_after: Duration::from_secs(5),
            batch: 500,
            idle: Duration::from_secs(1),
        }
    }

    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.pass().await {
                    // More may be due: go on without waiting.
                    Ok(p) if p.claimed() > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "background deletion failed; will retry"),
                }
                tokio::time::sleep(self.idle).await;
            }
        })
    }

    fn queue_grace(&self, q: Queue) -> i64 {
        match (q, self.files_grace) {
            (Queue::Files, Some(g)) => g.as_secs() as i64,
            _ => self.grace,
        }
    }

    /// Claims and deletes one batch of each queue.
    pub async fn pass(&self) -> Result<Pass> {
        let mut p = Pass::default();
        let meta = &self.data.meta;
        let lease = self.lease.as_secs().max(1) as i64;
        let files = meta
            .claim_due(
                "delfiles",
                self.queue_grace(Queue::Files),
                lease,
                self.batch,
            )
            .await?;
        if !files.is_empty() {
            self.delete_files(files, &mut p).await;
        }
        let slices = meta
            .claim_due("delslices", self.grace, lease, self.batch)
            .await?;
        if !slices.is_empty() {
            self.delete_slices(slices, &mut p).await;
        }
        Ok(p)
    }

    async fn delete_files(&self, members: Vec<Vec<u8>>, p: &mut Pass) {
        let meta = &self.data.meta;
        let mut files = Vec::with_capacity(members.len());
        let mut claimed = Vec::with_capacity(members.len());
        let mut bad = Vec::new();
        for m in members {
            match parse_file(&m) {
                Some(f) => {
                    files.push(f);
                    claimed.push(m);
                }
                None => bad.push(m),
            }
        }
        self.drop_bad(Queue::Files, bad).await;
        let slices = match meta.deleted_files_slices(&files).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read deleted files' slices; retrying later");
                self.give_back(Queue::Files, claimed, p).await;
                return;
            }
        };
        let ok = self.delete_groups(&slices).await;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for ((f, m), ok) in files.into_iter().zip(claimed).zip(ok) {
            if ok {
                done.push(f);
            } else {
                failed.push(m);
            }
        }
        // Should this fail, the lease runs out and the entries are done
        // again (objects already gone count as deleted).
        match meta.finish_deleted_files(&done).await {
            Ok(()) => {
                p.files += done.len();
                metrics::DELETED_FILES.add(done.len() as u64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot finish deleted files"),
        }
        self.give_back(Queue::Files, failed, p).await;
    }

    async fn delete_slices(&self, records: Vec<Vec<u8>>, p: &mut Pass) {
        let meta = &self.data.meta;
        let mut groups = Vec::with_capacity(records.len());
        let mut claimed = Vec::with_capacity(records.len());
        let mut bad = Vec::new();
        for r in records {
            match Slice::decode(&r) {
                Ok(s) => {
                    groups.push(vec![s]);
                    claimed.push(r);
                }
                Err(_) => bad.push(r),
            }
        }
        self.drop_bad(Queue::Slices, bad).await;
        let ok = self.delete_groups(&groups).await;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for (r, ok) in claimed.into_iter().zip(ok) {
            if ok {
                done.push(r);
            } else {
                failed.push(r);
            }
        }
        match meta.remove_due(Queue::Slices.zset(), &done).await {
            Ok(()) => {
                p.slices += done.len();
                metrics::DELETED_SLICES.add(done.len() as u64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot finish deleted slices"),
        }
        self.give_back(Queue::Slices, failed, p).await;
    }

    /// Deletes the objects and inline bytes of each group of slices;
    /// returns per group whether all of it is gone.
    async fn delete_groups(&self, groups: &[Vec<Slice>]) -> Vec<bool> {
        let data = &self.data;
        let mut ok = vec![true; groups.len()];
        let mut keys = Vec::new();
        let mut owner = Vec::new();
        let mut inline = Vec::new();
        let mut inline_owner = Vec::new();
        for (g, slices) in groups.iter().enumerate() {
            for s in slices.iter().filter(|s| s.id != 0) {
                if is_inline(s.id) {
                    inline.push(s.id);
                    inline_owner.push(g);
                } else {
                    for k in data.object_keys(s) {
                        keys.push(k);
                        owner.push(g);
                    }
                }
            }
            // Never let the dead blocks be served from this node's cache.
            data.forget_cached(slices).await;
        }
        let mut failures = 0usize;
        let mut first = None;
        for ((key, g), r) in keys
            .iter()
            .zip(&owner)
            .zip(data.blocks.delete_many(&keys).await)
        {
            if let Err(e) = r {
                ok[*g] = false;
                failures += 1;
                first.get_or_insert_with(|| format!("{key}: {e}"));
            }
        }
        if let Err(e) = data.meta.delete_inlines(&inline).await {
            for g in inline_owner {
                ok[g] = false;
            }
            failures += inline.len();
            first.get_or_insert_with(|| format!("inline slices: {e}"));
        }
        if let Some(first) = first {
            tracing::warn!(failures, first = %first, "some objects could not be deleted; retrying them later");
        }
        ok
    }

    /// Claimed entries not done: due again after `retry_after`, for any node.
    async fn give_back(&self, q: Queue, members: Vec<Vec<u8>>, p: &mut Pass) {
        if members.is_empty() {
            return;
        }
        p.failed += members.len();
        metrics::DELETE_FAILURES.add(members.len() as u64);
        let delay = self.retry_after.as_secs() as i64;
        if let Err(e) = self
            .data
            .meta
            .release_due(q.zset(), self.queue_grace(q), delay, &members)
            .await
        {
            // The lease runs out instead.
            tracing::warn!(error = %e, "cannot give back failed deletions");
        }
    }

    /// Entries nobody can ever act on (corrupt records) leave the queue.
    async fn drop_bad(&self, q: Queue, members: Vec<Vec<u8>>) {
        if members.is_empty() {
            return;
        }
        tracing::error!(
            queue = q.zset(),
            count = members.len(),
            "dropping unreadable deletion entries"
        );
        if let Err(e) = self.data.meta.remove_due(q.zset(), &members).await {
            tracing::warn!(error = %e, "cannot drop unreadable deletion entries");
        }
    }
}

/// A `delfiles` member: `ino:length`.
fn parse_file(m: &[u8]) -> Option<(u64, u64)> {
    let (a, b) = std::str::from_utf8(m).ok()?.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_members_parse() {
        assert_eq!(parse_file(b"12:4096"), Some((12, 4096)));
        assert_eq!(parse_file(b"12"), None);
        assert_eq!(parse_file(b"x:1"), None);
    }
}
