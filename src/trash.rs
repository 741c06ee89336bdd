//! The trash: with `trash_days > 0`, a regular file that loses its last
//! name (unlink, replaced by rename, `vecfs rmr`) is moved, inside the same
//! Lua script, to `.trash/<YYYY-MM-DD-HH>/<parent>-<ino>-<name>` (UTC hour
//! of deletion) instead of being freed (see `to_trash` in prelude.lua). It
//! keeps its inode, chunks and space there; open handles keep working. Root
//! restores it with a rename out of the trash; nothing else can write into
//! it. This module owns the purge: one node at a time (a Redis lease) frees
//! entries older than the retention, handing their objects to the deferred
//! deleter, and removes hour directories once empty and over.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::meta::{FileKind, Meta, Result, TRASH_INO};

/// Name of the purge lease in Redis.
const LEASE: &str = "trashpurger";

/// Entries removed per script call.
const BATCH: usize = 500;

/// Epoch second of the start of an hour directory's hour, from its name
/// `YYYY-MM-DD-HH` (UTC); None for any other name.
pub fn parse_hour(name: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(name).ok()?;
    let p: Vec<&str> = s.split('-').collect();
    if p.len() != 4
        || p.iter()
            .any(|x| x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let (y, m, d, h): (i64, i64, i64, i64) = (
        p[0].parse().ok()?,
        p[1].parse().ok()?,
        p[2].parse().ok()?,
        p[3].parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(0..24).contains(&h) {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + h * 3600)
}

/// What one purge pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub files: u64,
    pub dirs: u64,
}

pub struct Purger {
    meta: Arc<Meta>,
    /// Fixed retention (tests, `--trash-expiry`); else the volume's
    /// trash_days, read again each pass so `vecfs config` takes effect.
    pub fixed: Option<Duration>,
}

impl Purger {
    pub fn new(meta: Arc<Meta>, fixed: Option<Duration>) -> Purger {
        Purger { meta, fixed }
    }

    async fn retention(&self) -> Result<Duration> {
        if let Some(r) = self.fixed {
            return Ok(r);
        }
        let days = self.meta.load_format().await?.map_or(0, |f| f.trash_days);
        Ok(Duration::from_secs(days as u64 * 86400))
    }

    /// Runs in the background on every read-write node; only the lease
    /// holder purges. Looks every quarter of the retention, at least once
    /// a minute and at most once a second.
    pub fn spawn(self) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let every = match self.retention().await {
                    Ok(r) => (r / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
                    Err(_) => Duration::from_secs(60),
                };
                let ttl = (every.as_secs() as i64 * 3).max(30);
                match self.meta.take_lease(LEASE, ttl).await {
                    Ok(true) => match self.pass().await {
                        Ok(p) if p.files + p.dirs > 0 => {
                            tracing::info!(files = p.files, dirs = p.dirs, "purged expired trash")
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "trash purge failed; will retry"),
                    },
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot take the trash-purge lease"),
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Frees every trash entry that entered the trash more than the
    /// retention ago, then the hour directories left empty.
    pub async fn pass(&self) -> Result<Purged> {
        let retention = self.retention().await?.as_secs() as i64;
        // The server's clock, which dated the moves into the trash.
        let now = self.meta.server_time().await?;
        let cutoff = now - retention;
        let mut out = Purged::default();
        let hours = match self.meta.readdir(TRASH_INO).await {
            Ok(h) => h,
            Err(crate::meta::MetaError::Errno(libc::ENOENT)) => return Ok(out),
            Err(e) => return Err(e),
        };
        for h in hours {
            if h.kind != FileKind::Dir {
                continue;
            }
            // Unknown names (none today) are left alone.
            let Some(start) = parse_hour(&h.name) else {
                continue;
            };
            // Everything in it entered the trash during its hour.
            if start > cutoff {
                continue;
            }
            let entries = self.meta.readdir(h.ino).await?;
            let mut due: Vec<(Vec<u8>, u64)> = Vec::with_capacity(entries.len());
            if start + 3600 <= cutoff {
                due.extend(entries.into_iter().map(|e| (e.name, e.ino)));
            } else {
                // The hour straddles the cutoff: by each file's ctime (the
                // script checks it again, atomically).
                let inos: Vec<u64> = entries.iter().map(|e| e.ino).collect();
                let attrs = self.meta.getattrs(&inos).await?;
                for (e, a) in entries.into_iter().zip(attrs) {
                    if a.is_none_or(|a| a.ctime.0 <= cutoff) {
                        due.push((e.name, e.ino));
                    }
                }
            }
            for batch in due.chunks(BATCH) {
                let (f, d, _) = self.meta.remove_entries(h.ino, true, cutoff, batch).await?;
                out.files += f;
                out.dirs += d;
            }
            // An hour that is over gets no more files: its directory goes
            // once empty (the script checks that).
            if start + 3600 <= now {
                let (_, d, _) = self
                    .meta
                    .remove_entries(TRASH_INO, true, cutoff, &[(h.name.clone(), h.ino)])
                    .await?;
                out.dirs += d;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_names_parse() {
        assert_eq!(parse_hour(b"1970-01-01-00"), Some(0));
        assert_eq!(parse_hour(b"2000-03-01-05"), Some(951_868_800 + 5 * 3600));
        assert_eq!(parse_hour(b"2026-12-03-04"), Some(1_796_256_000 + 4 * 3600));
        assert_eq!(parse_hour(b"2026-13-03-04"), None);
        assert_eq!(parse_hour(b"x"), None);
        assert_eq!(parse_hour(b"2026-12-03"), None);
    }
}
