//! The hidden `.stats` file at the mount root (as JuiceFS has): reading it
//! returns the metrics text of this mount, the same as the Prometheus
//! endpoint, so `vecfs stats MOUNTPOINT` needs no port. It lives in no
//! Redis record: a reserved inode number, answered by `vfs` before any
//! metadata lookup; it is read-only, never listed, and nothing can be
//! created, renamed or linked over its name in the root.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::meta::{Attr, FileKind, ROOT_INO};

/// Inode number of `.stats`: far above any the volume's counter hands out
/// (the range JuiceFS also keeps for its internal files).
pub const STATS_INO: u64 = 0x7FFF_FFFF_0000_0003;
pub const STATS_NAME: &[u8] = b".stats";

/// Handles of `.stats` have this bit set, so `vfs` tells them apart from
/// file handles without a lookup.
const FH_BIT: u64 = 1 << 62;

/// Open handles of `.stats`, each with the text rendered when it was opened
/// (a reader that reads in pieces sees one consistent snapshot).
pub struct StatsFile {
    open: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    next: AtomicU64,
    uid: u32,
    gid: u32,
}

impl Default for StatsFile {
    fn default() -> Self {
        // SAFETY: geteuid/getegid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        StatsFile {
            open: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            uid,
            gid,
        }
    }
}

/// Whether `name` in kernel directory `parent` is the reserved name.
pub fn is_stats_name(parent: u64, name: &[u8]) -> bool {
    parent == ROOT_INO && name == STATS_NAME
}

pub fn is_stats_fh(fh: u64) -> bool {
    fh & FH_BIT != 0
}

impl StatsFile {
    /// Read-only for everyone, owned by the daemon's user; the length is
    /// that of the text now (reads go to the daemon whatever it says).
    pub fn attr(&self) -> Attr {
        let now = crate::meta::now();
        Attr {
            flags: 0,
            kind: FileKind::File,
            mode: 0o444,
            uid: self.uid,
            gid: self.gid,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            length: crate::metrics::render().len() as u64,
            rdev: 0,
            parent: ROOT_INO,
        }
    }

    /// Opens for reading only: any write access is EACCES (root included,
    /// whom the kernel's permission check would let through).
    pub fn open(&self, flags: i32) -> Result<u64, i32> {
        let acc = flags & libc::O_ACCMODE;
        if acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(libc::EACCES);
        }
        let fh = FH_BIT | self.next.fetch_add(1, Ordering::Relaxed);
        let text = Arc::new(crate::metrics::render().into_bytes());
        if let Ok(mut o) = self.open.lock() {
            o.insert(fh, text);
        }
        Ok(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let text = self
            .open
            .lock()
            .map_err(|_| libc::EIO)?
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)?;
        let start = (offset as usize).min(text.len());
        let end = start.saturating_add(size as usize).min(text.len());
        Ok(text[start..end].to_vec())
    }

    pub fn release(&self, fh: u64) {
        if let Ok(mut o) = self.open.lock() {
            o.remove(&fh);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_snapshot_per_handle() {
        let s = StatsFile::default();
        assert_eq!(s.open(libc::O_WRONLY), Err(libc::EACCES));
        assert_eq!(s.open(libc::O_RDWR), Err(libc::EACCES));
        assert_eq!(s.open(libc::O_RDONLY | libc::O_TRUNC), Err(libc::EACCES));
        let fh = s.open(libc::O_RDONLY).expect("open");
        assert!(is_stats_fh(fh));
        let all = s.read(fh, 0, 1 << 20).expect("read");
        assert!(String::from_utf8_lossy(&all).contains("vecfs_object_get_total"));
        let tail = s.read(fh, 10, 5).expect("read");
        assert_eq!(tail, all[10..15]);
        assert!(s
            .read(fh, all.len() as u64 + 10, 5)
            .expect("eof")
            .is_empty());
        s.release(fh);
        assert_eq!(s.read(fh, 0, 1), Err(libc::EBADF));
        assert!(is_stats_name(ROOT_INO, b".stats"));
        assert!(!is_stats_name(5, b".stats"));
    }
}
