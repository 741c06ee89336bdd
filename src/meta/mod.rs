//! Metadata: the types every engine speaks (attributes, slices, the volume
//! record) and the Redis engine that stores them. Every change is one atomic
//! step (a Lua script), so concurrent nodes never interleave half-done updates.

pub mod dump;
mod redis_engine;
pub mod url;

pub(crate) use redis_engine::{member_scan_step, redis_err};
pub use redis_engine::{Committed, Meta, SessionInfo, TimedConn, DEFAULT_META_TIMEOUT};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::codec::{Codec, Compression};
use crate::object::StorageKind;

pub const ROOT_INO: u64 = 1;
/// The trash directory (`.trash` at the volume root): a reserved inode just
/// below 2^52, so the Lua scripts (doubles) see it exactly and the inode
/// counter never reaches it. Other reserved inodes take the numbers below
/// it (`TRASH_INO - 1`, ...). Must match TRASH in prelude.lua.
pub const TRASH_INO: u64 = (1 << 52) - 2;
/// Its name at the root.
pub const TRASH_NAME: &[u8] = b".trash";
pub const CHUNK_SIZE: u64 = 64 << 20;
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Error)]
pub enum MetaError {
    /// A file-system error the caller hands to the application as is.
    #[error("{}", std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// Redis failed or refused; `transient` when trying again may help
    /// (connection lost, timeout, server loading), not for bad credentials.
    #[error("{msg}")]
    Redis { msg: String, transient: bool },
    #[error("metadata is corrupt: {0}")]
    Corrupt(String),
}

impl MetaError {
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::Errno(e) => *e,
            MetaError::Redis { .. } | MetaError::Corrupt(_) => libc::EIO,
        }
    }
}

pub type Result<T> = std::result::Result<T, MetaError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    BlockDev = 5,
    CharDev = 6,
    Socket = 7,
}

impl FileKind {
    pub fn from_u8(v: u8) -> Option<FileKind> {
        Some(match v {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::BlockDev,
            6 => FileKind::CharDev,
            7 => FileKind::Socket,
            _ => return None,
        })
    }

    /// The kind encoded in the S_IFMT bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// Inode attributes, stored packed in 72 bytes (layout shared with prelude.lua).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub flags: u8,
    pub kind: FileKind,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub nlink: u32,
    pub length: u64,
    pub rdev: u32,
    pub parent: u64,
}

pub const ATTR_LEN: usize = 72;

impl Attr {
    pub fn decode(b: &[u8]) -> Result<Attr> {
        if b.len() != ATTR_LEN {
            return Err(MetaError::Corrupt(format!(
                "attribute record of {} bytes (expected {ATTR_LEN})",
                b.len()
            )));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let kind = FileKind::from_u8(b[1])
            .ok_or_else(|| MetaError::Corrupt(format!("unknown file type {}", b[1])))?;
        Ok(Attr {
            flags: b[0],
            kind,
            mode: u16_at(2),
            uid: u32_at(4),
            gid: u32_at(8),
            atime: (u64_at(12) as i64, u32_at(20)),
            mtime: (u64_at(24) as i64, u32_at(32)),
            ctime: (u64_at(36) as i64, u32_at(44)),
            nlink: u32_at(48),
            length: u64_at(52),
            rdev: u32_at(60),
            parent: u64_at(64),
        })
    }

    /// The packed form `decode` reads (and prelude.lua's AFMT).
    pub fn encode(&self) -> [u8; ATTR_LEN] {
        let mut b = [0u8; ATTR_LEN];
        b[0] = self.flags;
        b[1] = self.kind as u8;
        b[2..4].copy_from_slice(&self.mode.to_le_bytes());
        b[4..8].copy_from_slice(&self.uid.to_le_bytes());
        b[8..12].copy_from_slice(&self.gid.to_le_bytes());
        for (o, (s, ns)) in [(12, self.atime), (24, self.mtime), (36, self.ctime)] {
            b[o..o + 8].copy_from_slice(&s.to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&ns.to_le_bytes());
        }
        b[48..52].copy_from_slice(&self.nlink.to_le_bytes());
        b[52..60].copy_from_slice(&self.length.to_le_bytes());
        b[60..64].copy_from_slice(&self.rdev.to_le_bytes());
        b[64..72].copy_from_slice(&self.parent.to_le_bytes());
        b
    }

    pub fn full_mode(&self) -> u32 {
        let t = match self.kind {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::BlockDev => libc::S_IFBLK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::Socket => libc::S_IFSOCK,
        };
        t | self.mode as u32
    }

    pub fn mtime_system(&self) -> SystemTime {
        to_system(self.mtime)
    }
}

pub fn to_system((s, ns): (i64, u32)) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::new(s as u64, ns.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs()) + Duration::from_nanos(ns as u64)
    }
}

pub fn from_system(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let s = -(d.as_secs() as i64);
            if d.subsec_nanos() == 0 {
                (s, 0)
            } else {
                (s - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

pub fn now() -> (i64, u32) {
    from_system(SystemTime::now())
}

/// One write session inside a chunk: bytes [off, off+len) of slice `id`
/// (whose total size is `size`) placed at `pos` in the chunk. id 0 is a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slice {
    pub pos: u32,
    pub id: u64,
    pub size: u32,
    pub off: u32,
    pub len: u32,
}

pub const SLICE_LEN: usize = 24;

impl Slice {
    pub fn encode(&self) -> [u8; SLICE_LEN] {
        let mut b = [0u8; SLICE_LEN];
        b[0..4].copy_from_slice(&self.pos.to_le_bytes());
        b[4..12].copy_from_slice(&self.id.to_le_bytes());
        b[12..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.off.to_le_bytes());
        b[20..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Slice> {
        if b.len() != SLICE_LEN {
            return Err(MetaError::Corrupt(format!(
                "slice record of {} bytes",
                b.len()
            )));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[4..12]);
        Ok(Slice {
            pos: u32_at(0),
            id: u64::from_le_bytes(id),
            size: u32_at(12),
            off: u32_at(16),
            len: u32_at(20),
        })
    }
}

/// A piece of a chunk as a reader sees it after replaying the slice list:
/// `len` bytes at chunk offset `pos`, taken from slice `id` at `off` (id 0: zeros).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub pos: u32,
    pub id: u64,
    pub size: u32,
    pub off: u32,
    pub len: u32,
}

/// Marks a slice whose bytes live in Redis (small files), not in objects.
/// Below 2^53, so the Lua scripts (doubles) still see ids exactly.
pub const INLINE_ID: u64 = 1 << 52;

pub fn is_inline(id: u64) -> bool {
    id & INLINE_ID != 0
}

/// Replays a chunk's slice list: later slices win, uncovered ranges are holes.
pub fn build_pieces(slices: &[Slice]) -> Vec<Piece> {
    let mut pieces: Vec<Piece> = Vec::new();
    for s in slices {
        if s.len == 0 {
            continue;
        }
        let (start, end) = (s.pos as u64, s.pos as u64 + s.len as u64);
        let mut next = Vec::with_capacity(pieces.len() + 2);
        for p in pieces.drain(..) {
            let (ps, pe) = (p.pos as u64, p.pos as u64 + p.len as u64);
            if pe <= start || ps >= end {
                next.push(p);
                continue;
            }
            if ps < start {
                next.push(Piece {
                    len: (start - ps) as u32,
                    ..p
                });
            }
            if pe > end {
                let cut = end - ps;
                next.push(Piece {
                    pos: end as u32,
                    off: p.off + cut as u32,
                    len: (pe - end) as u32,
                    ..p
                });
            }
        }
        next.push(Piece {
            pos: s.pos,
            id: s.id,
            size: s.size,
            off: s.off,
            len: s.len,
        });
        next.sort_by_key(|p| p.pos);
        pieces = next;
    }
    pieces
}

/// The volume record, stored as JSON. It holds no secrets.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Format {
    pub name: String,
    pub uuid: String,
    pub storage: StorageKind,
    pub bucket: String,
    pub block_size: u32,
    pub compression: Compression,
    /// zstd level, when compression is zstd.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    pub trash_days: u32,
    /// Bytes; 0 is unlimited.
    pub capacity: u64,
    /// 0 is unlimited.
    pub inodes: u64,
    pub meta_version: u32,
    /// Slices that end within this many bytes of a file's start are kept in
    /// Redis, not the object store (0: never; volumes from before it: 0).
    #[serde(default)]
    pub inline_size: u32,
}

fn default_zstd_level() -> i32 {
    1
}

impl Format {
    pub fn codec(&self) -> Codec {
        Codec::new(self.compression, self.zstd_level)
    }

    /// Settings that change where and how data is stored: formatting again
    /// with different values would orphan existing data.
    pub fn same_layout(&self, other: &Format) -> bool {
        self.name == other.name
            && self.storage == other.storage
            && self.bucket == other.bucket
            && self.block_size == other.block_size
    }
}

/// A change another node made, as published on the volume's channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The entry `name` of directory `parent` appeared, vanished or changed.
    Entry {
        sid: u64,
        parent: u64,
        name: Vec<u8>,
    },
    /// Attributes or data of `ino` changed.
    Inode { sid: u64, ino: u64 },
    /// A node checking that its subscription still delivers: it expects
    /// its own probe back; every other node ignores it (nodes from before
    /// it do not parse it).
    Probe { sid: u64 },
}

impl Event {
    pub fn parse(b: &[u8]) -> Option<Event> {
        if b.len() < 17 {
            return None;
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let rest = &b[17..];
        let slash = rest.iter().position(|c| *c == b'/')?;
        let sid = std::str::from_utf8(&rest[..slash]).ok()?.parse().ok()?;
        let name = rest[slash + 1..].to_vec();
        match b[0] {
            1 => Some(Event::Entry {
                sid,
                parent: u64_at(1),
                name,
            }),
            2 => Some(Event::Inode {
                sid,
                ino: u64_at(9),
            }),
            3 => Some(Event::Probe { sid }),
            _ => None,
        }
    }

    /// The message of a probe from session `sid` (the layout `parse` reads).
    pub fn probe(sid: u64) -> Vec<u8> {
        let mut b = vec![0u8; 17];
        b[0] = 3;
        b.extend_from_slice(format!("{sid}/").as_bytes());
        b
    }

    pub fn sid(&self) -> u64 {
        match self {
            Event::Entry { sid, .. } | Event::Inode { sid, .. } | Event::Probe { sid } => *sid,
        }
    }
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: FileKind,
}

/// Which attributes a setattr changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<(i64, u32)>,
}

#[derive(Clone, Copy, Debug)]
pub enum TimeSet {
    Now,
    At((i64, u32)),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_reads_back_as_one_and_names_its_session() {
        let ev = Event::parse(&Event::probe(42));
        assert_eq!(ev, Some(Event::Probe { sid: 42 }));
        assert_eq!(ev.map(|e| e.sid()), Some(42));
    }

    fn s(pos: u32, id: u64, len: u32) -> Slice {
        Slice {
            pos,
            id,
            size: len,
            off: 0,
            len,
        }
    }

    #[test]
    fn later_slices_win_and_split_earlier_ones() {
        let p = build_pieces(&[s(0, 1, 100), s(10, 2, 20)]);
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].id, p[0].pos, p[0].len), (1, 0, 10));
        assert_eq!((p[1].id, p[1].pos, p[1].len), (2, 10, 20));
        assert_eq!((p[2].id, p[2].pos, p[2].off, p[2].len), (1, 30, 30, 70));
    }

    #[test]
    fn attr_round_trips() {
        let a = Attr {
            flags: 3,
            kind: FileKind::Symlink,
            mode: 0o4755,
            uid: 1000,
            gid: 7,
            atime: (-5, 999_999_999),
            mtime: (1_700_000_000, 1),
            ctime: (i64::MAX, 2),
            nlink: 9,
            length: u64::MAX,
            rdev: 77,
            parent: 42,
        };
        assert_eq!(Attr::decode(&a.encode()).unwrap(), a);
    }

    #[test]
    fn slice_round_trips() {
        let x = Slice {
            pos: 1,
            id: u64::MAX - 3,
            size: 7,
            off: 2,
            len: 5,
        };
        assert_eq!(Slice::decode(&x.encode()).unwrap(), x);
    }

    #[test]
    fn negative_times_round_trip() {
        let t = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(to_system(from_system(t)), t);
    }
}
