//! Dump and load of a volume's whole metadata (`vecfs dump`, `vecfs load`),
//! and removal of all its keys (`vecfs destroy`, a failed load).
//!
//! The dump format is JSON lines: one record per line, each an object whose
//! only key names the record's kind. A dump is written while walking the
//! tree depth-first, one directory page (at most [`PAGE`] entries) at a
//! time, and read back line by line, so neither side ever holds more than a
//! page of a volume in memory. Version 1 records:
//!
//! - `{"header": {"format": "vecfs-dump", "version": 1, "volume": {..}}}`:
//!   always first; `volume` is the volume record (it holds no secret).
//! - `{"inode": {"ino", "kind", "mode", "uid", "gid", "atime", "mtime",
//!   "ctime", "nlink", "length", "rdev", "parent", "flags", "target"?,
//!   "xattrs"?, "chunks"?}}`: every live inode once (a hard-linked file
//!   once, however many names it has). Times are `[seconds, nanoseconds]`;
//!   `chunks` is `[{"index", "slices": [{"pos", "id", "size", "off",
//!   "len"}]}]`, the slice list of each 64 MiB chunk, oldest first.
//! - `{"entries": {"dir": INO, "entries": [{"name", "ino", "kind"}]}}`: a
//!   page of a directory's entries.
//! - `{"inline": {"id": ID, "data": BASE64}}`: bytes of an inline slice.
//! - `{"delfile": {"ino", "length", "due", "chunks"}}`: a deleted file whose
//!   objects are not freed yet (also files unlinked while open on a node:
//!   sessions are not dumped, so they are freed after a load).
//! - `{"delslice": {"record": BASE64, "due"}}`: a slice record no file uses
//!   whose object is not freed yet.
//! - `{"end": {"next_inode", "next_slice", "inodes", "entries", ..}}`:
//!   always last; a dump without it is truncated and load refuses it.
//!
//! Byte strings (names, xattr names and values, symlink targets) are JSON
//! strings when they are UTF-8 and `{"base64": ".."}` otherwise. Sessions,
//! locks, upload journals and idempotency markers are not dumped.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::Error as _;
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use super::{
    is_inline, Attr, FileKind, Format, Meta, MetaError, Slice, TimedConn, CHUNK_SIZE, INLINE_ID,
    ROOT_INO, TRASH_INO,
};

pub const DUMP_VERSION: u32 = 1;
const MAGIC: &str = "vecfs-dump";
/// Directory entries per page (one `entries` record, a few round trips).
pub const PAGE: usize = 1000;
/// Commands per pipeline when loading or removing keys.
const BATCH: usize = 2000;

#[derive(Debug, Error)]
pub enum DumpError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("line {line} of the dump: {msg}")]
    Bad { line: u64, msg: String },
    #[error("{0}")]
    NotEmpty(String),
}

/// Bytes that are a JSON string when they are UTF-8, else `{"base64": ..}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Raw(pub Vec<u8>);

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(t) => s.serialize_str(t),
            Err(_) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("base64", &B64.encode(&self.0))?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Raw, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum R {
            Text(String),
            Encoded { base64: String },
        }
        match R::deserialize(d)? {
            R::Text(t) => Ok(Raw(t.into_bytes())),
            R::Encoded { base64 } => B64.decode(base64).map(Raw).map_err(D::Error::custom),
        }
    }
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Header(Header),
    Inode(InodeRec),
    Entries(EntriesRec),
    Inline(InlineRec),
    Delfile(DelFileRec),
    Delslice(DelSliceRec),
    End(EndRec),
}

#[derive(Serialize, Deserialize, Debug)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The vecfs version that wrote the dump.
    pub written_by: String,
    pub volume: Format,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceRec {
    pub pos: u32,
    pub id: u64,
    pub size: u32,
    pub off: u32,
    pub len: u32,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ChunkRec {
    pub index: u64,
    pub slices: Vec<SliceRec>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct InodeRec {
    pub ino: u64,
    pub kind: String,
    /// Permission bits, including setuid, setgid and sticky.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub nlink: u32,
    pub length: u64,
    #[serde(default)]
    pub rdev: u32,
    pub parent: u64,
    #[serde(default)]
    pub flags: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Raw>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<(Raw, Raw)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRec>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct EntryRec {
    pub name: Raw,
    pub ino: u64,
    pub kind: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct EntriesRec {
    pub dir: u64,
    pub entries: Vec<EntryRec>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct InlineRec {
    pub id: u64,
    /// Base64 of the slice's bytes.
    pub data: String,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct DelFileRec {
    pub ino: u64,
    pub length: u64,
    /// When it was deleted (seconds since the epoch, Redis' deletion queue score).
    pub due: i64,
    #[serde(default)]
    pub chunks: Vec<ChunkRec>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct DelSliceRec {
    /// Base64 of the 24-byte slice record, as queued.
    pub record: String,
    pub due: i64,
}

#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq, Eq)]
pub struct EndRec {
    pub next_inode: u64,
    pub next_slice: u64,
    pub inodes: u64,
    pub entries: u64,
    pub inlines: u64,
    pub delfiles: u64,
    pub delslices: u64,
}

pub fn kind_name(k: FileKind) -> &'static str {
    match k {
        FileKind::File => "file",
        FileKind::Dir => "dir",
        FileKind::Symlink => "symlink",
        FileKind::Fifo => "fifo",
        FileKind::BlockDev => "blockdev",
        FileKind::CharDev => "chardev",
        FileKind::Socket => "socket",
    }
}

fn kind_from_name(s: &str) -> Option<FileKind> {
    Some(match s {
        "file" => FileKind::File,
        "dir" => FileKind::Dir,
        "symlink" => FileKind::Symlink,
        "fifo" => FileKind::Fifo,
        "blockdev" => FileKind::BlockDev,
        "chardev" => FileKind::CharDev,
        "socket" => FileKind::Socket,
        _ => return None,
    })
}

fn redis_err(e: redis::RedisError) -> MetaError {
    MetaError::Redis {
        transient: e.is_io_error() || e.is_timeout(),
        msg: e.to_string(),
    }
}

fn slice_rec(s: &Slice) -> SliceRec {
    SliceRec {
        pos: s.pos,
        id: s.id,
        size: s.size,
        off: s.off,
        len: s.len,
    }
}

fn slice_of(r: &SliceRec) -> Slice {
    Slice {
        pos: r.pos,
        id: r.id,
        size: r.size,
        off: r.off,
        len: r.len,
    }
}

/// Writes one record as a line.
fn put(out: &mut dyn Write, r: &Record) -> Result<(), DumpError> {
    serde_json::to_writer(&mut *out, r).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Walks the volume and writes every record to `out`. `progress` gets the
/// number of inodes written so far.
pub async fn dump(
    meta: &Meta,
    fmt: &Format,
    out: &mut dyn Write,
    progress: &dyn Fn(u64),
) -> Result<EndRec, DumpError> {
    let mut d = Dumper {
        conn: meta.maintenance_conn(),
        p: meta.prefix().to_string(),
        end: EndRec::default(),
    };
    put(
        out,
        &Record::Header(Header {
            format: MAGIC.into(),
            version: DUMP_VERSION,
            written_by: env!("CARGO_PKG_VERSION").into(),
            volume: fmt.clone(),
        }),
    )?;
    // The root, then `.trash` (hung off the root without an entry) when
    // the volume has made one.
    let (root, trash): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::pipe()
        .get(format!("{}i{ROOT_INO}", d.p))
        .get(format!("{}i{TRASH_INO}", d.p))
        .query_async(&mut d.conn)
        .await
        .map_err(redis_err)?;
    let root = root.ok_or_else(|| MetaError::Corrupt("the root inode is missing".into()))?;
    let mut tops = vec![(ROOT_INO, Attr::decode(&root)?)];
    if let Some(t) = trash {
        tops.push((TRASH_INO, Attr::decode(&t)?));
    }
    // Directories and hard-linked files already written: a directory page
    // may come back twice when the directory changes during the dump.
    let mut seen: HashSet<u64> = tops.iter().map(|(ino, _)| *ino).collect();
    let mut stack: Vec<u64> = tops.iter().map(|(ino, _)| *ino).collect();
    d.inodes(out, tops).await?;
    while let Some(dir) = stack.pop() {
        let mut walk = crate::maintenance::scan::MemberScan::hash(meta, &format!("d{dir}"));
        while let Some(flat) = walk.next_page().await? {
            let mut found = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks(2) {
                let [name, v] = pair else { continue };
                if v.len() != 9 {
                    return Err(MetaError::Corrupt(format!(
                        "directory {dir}: entry of {} bytes",
                        v.len()
                    ))
                    .into());
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&v[1..9]);
                found.push((name.clone(), u64::from_le_bytes(a)));
            }
            let mut pipe = redis::pipe();
            for (_, ino) in &found {
                pipe.get(format!("{}i{ino}", d.p));
            }
            let attrs: Vec<Option<Vec<u8>>> = if found.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut d.conn).await.map_err(redis_err)?
            };
            let mut entries = Vec::with_capacity(found.len());
            let mut todo = Vec::new();
            for ((name, ino), a) in found.into_iter().zip(attrs) {
                let Some(a) = a else {
                    tracing::warn!(
                        "directory {dir}: entry {} names inode {ino}, which does not exist: left out",
                        String::from_utf8_lossy(&name)
                    );
                    continue;
                };
                let attr = Attr::decode(&a)?;
                entries.push(EntryRec {
                    name: Raw(name),
                    ino,
                    kind: kind_name(attr.kind).into(),
                });
                if attr.kind == FileKind::Dir {
                    if seen.insert(ino) {
                        stack.push(ino);
                        todo.push((ino, attr));
                    }
                } else if attr.nlink <= 1 || seen.insert(ino) {
                    todo.push((ino, attr));
                }
            }
            if !entries.is_empty() {
                d.end.entries += entries.len() as u64;
                put(out, &Record::Entries(EntriesRec { dir, entries }))?;
            }
            d.inodes(out, todo).await?;
            progress(d.end.inodes);
        }
    }
    d.pending_deletions(meta, out).await?;
    let (ni, ns): (Option<u64>, Option<u64>) = redis::pipe()
        .get(format!("{}nextinode", d.p))
        .get(format!("{}nextslice", d.p))
        .query_async(&mut d.conn)
        .await
        .map_err(redis_err)?;
    d.end.next_inode = ni.unwrap_or(0);
    d.end.next_slice = ns.unwrap_or(0);
    put(out, &Record::End(d.end.clone()))?;
    out.flush()?;
    Ok(d.end)
}

struct Dumper {
    conn: TimedConn,
    p: String,
    end: EndRec,
}

impl Dumper {
    /// Slice lists of the chunks of files of these lengths, one round trip.
    async fn chunks(&mut self, files: &[(u64, u64)]) -> Result<Vec<Vec<ChunkRec>>, DumpError> {
        let mut pipe = redis::pipe();
        let mut n = 0;
        for (ino, len) in files {
            for i in 0..len.div_ceil(CHUNK_SIZE) {
                pipe.lrange(format!("{}c{ino}_{i}", self.p), 0, -1);
                n += 1;
            }
        }
        let lists: Vec<Vec<Vec<u8>>> = if n == 0 {
            Vec::new()
        } else {
            pipe.query_async(&mut self.conn).await.map_err(redis_err)?
        };
        let mut lists = lists.into_iter();
        let mut out = Vec::with_capacity(files.len());
        for (_, len) in files {
            let mut chunks = Vec::new();
            for index in 0..len.div_ceil(CHUNK_SIZE) {
                let raw = lists.next().unwrap_or_default();
                if raw.is_empty() {
                    continue;
                }
                let mut slices = Vec::with_capacity(raw.len());
                for b in raw {
                    slices.push(slice_rec(&Slice::decode(&b)?));
                }
                chunks.push(ChunkRec { index, slices });
            }
            out.push(chunks);
        }
        Ok(out)
    }

    /// Writes the bytes of these inline slices, once per page (a slice
    /// shared across pages is written again: loading it twice is harmless,
    /// and remembering every id would grow with the volume).
    async fn inlines(&mut self, out: &mut dyn Write, ids: Vec<u64>) -> Result<(), DumpError> {
        let mut once = HashSet::new();
        let ids: Vec<u64> = ids
            .into_iter()
            .filter(|id| is_inline(*id) && once.insert(*id))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.get(format!("{}b{id}", self.p));
        }
        let data: Vec<Option<Vec<u8>>> =
            pipe.query_async(&mut self.conn).await.map_err(redis_err)?;
        for (id, b) in ids.into_iter().zip(data) {
            // Bytes already freed (a slice queued for deletion) have nothing to keep.
            if let Some(b) = b {
                self.end.inlines += 1;
                put(
                    out,
                    &Record::Inline(InlineRec {
                        id,
                        data: B64.encode(b),
                    }),
                )?;
            }
        }
        Ok(())
    }

    /// Writes these inodes with their xattrs, symlink targets, chunks and
    /// inline bytes.
    async fn inodes(
        &mut self,
        out: &mut dyn Write,
        list: Vec<(u64, Attr)>,
    ) -> Result<(), DumpError> {
        if list.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (ino, a) in &list {
            pipe.hgetall(format!("{}x{ino}", self.p));
            if a.kind == FileKind::Symlink {
                pipe.get(format!("{}s{ino}", self.p));
            }
        }
        let vals: Vec<redis::Value> = pipe.query_async(&mut self.conn).await.map_err(redis_err)?;
        let mut vals = vals.into_iter();
        let files: Vec<(u64, u64)> = list
            .iter()
            .map(|(ino, a)| {
                let len = if a.kind == FileKind::File {
                    a.length
                } else {
                    0
                };
                (*ino, len)
            })
            .collect();
        let mut chunks = self.chunks(&files).await?.into_iter();
        let mut inline_ids = Vec::new();
        for (ino, a) in list {
            let x: Vec<Vec<u8>> = vals
                .next()
                .map(|v| redis::from_redis_value(&v))
                .transpose()
                .map_err(redis_err)?
                .unwrap_or_default();
            let target = if a.kind == FileKind::Symlink {
                let t: Option<Vec<u8>> = vals
                    .next()
                    .map(|v| redis::from_redis_value(&v))
                    .transpose()
                    .map_err(redis_err)?
                    .flatten();
                Some(Raw(t.unwrap_or_default()))
            } else {
                None
            };
            let xattrs = x
                .chunks(2)
                .filter_map(|p| match p {
                    [n, v] => Some((Raw(n.clone()), Raw(v.clone()))),
                    _ => None,
                })
                .collect();
            let chunks = chunks.next().unwrap_or_default();
            for c in &chunks {
                inline_ids.extend(c.slices.iter().map(|s| s.id));
            }
            self.end.inodes += 1;
            put(
                out,
                &Record::Inode(InodeRec {
                    ino,
                    kind: kind_name(a.kind).into(),
                    mode: a.mode,
                    uid: a.uid,
                    gid: a.gid,
                    atime: a.atime,
                    mtime: a.mtime,
                    ctime: a.ctime,
                    nlink: a.nlink,
                    length: a.length,
                    rdev: a.rdev,
                    parent: a.parent,
                    flags: a.flags,
                    target,
                    xattrs,
                    chunks,
                }),
            )?;
        }
        self.inlines(out, inline_ids).await
    }

    /// Deleted files and slices whose objects are not freed yet, and files
    /// unlinked while open (held by a session, which a dump does not carry).
    async fn pending_deletions(
        &mut self,
        meta: &Meta,
        out: &mut dyn Write,
    ) -> Result<(), DumpError> {
        let mut files: Vec<(u64, u64, i64)> = Vec::new();
        let mut walk = crate::maintenance::scan::MemberScan::zset(meta, "delfiles");
        while let Some(flat) = walk.next_page().await? {
            for pair in flat.chunks(2) {
                let [m, score] = pair else { continue };
                let (m, score) = (String::from_utf8_lossy(m), String::from_utf8_lossy(score));
                let parsed = m
                    .split_once(':')
                    .and_then(|(i, l)| Some((i.parse().ok()?, l.parse().ok()?)));
                let Some((ino, len)) = parsed else {
                    tracing::warn!("deletion queue entry {m:?} is not ino:length: left out");
                    continue;
                };
                files.push((ino, len, score.parse::<f64>().unwrap_or(0.0) as i64));
            }
            self.delfiles(out, &mut files, PAGE).await?;
        }
        // Unlinked while open: their sessions' sets name them.
        let now = super::now().0;
        let mut walk = crate::maintenance::scan::KeyScan::starting(meta, "sustained");
        while let Some(keys) = walk.next_keys().await? {
            for k in keys {
                let inos: Vec<u64> = redis::cmd("SMEMBERS")
                    .arg(&k)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(redis_err)?;
                for ino in inos {
                    let a: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(format!("{}i{ino}", self.p))
                        .query_async(&mut self.conn)
                        .await
                        .map_err(redis_err)?;
                    if let Some(a) = a {
                        let a = Attr::decode(&a)?;
                        if a.kind == FileKind::File && a.length > 0 {
                            files.push((ino, a.length, now));
                        }
                    }
                }
                self.delfiles(out, &mut files, PAGE).await?;
            }
        }
        self.delfiles(out, &mut files, 0).await?;
        let mut walk = crate::maintenance::scan::MemberScan::zset(meta, "delslices");
        while let Some(flat) = walk.next_page().await? {
            let mut ids = Vec::new();
            for pair in flat.chunks(2) {
                let [m, score] = pair else { continue };
                if let Ok(s) = Slice::decode(m) {
                    ids.push(s.id);
                }
                let due = std::str::from_utf8(score)
                    .ok()
                    .and_then(|s| s.parse::<f64>().ok())
                    .unwrap_or(0.0) as i64;
                self.end.delslices += 1;
                put(
                    out,
                    &Record::Delslice(DelSliceRec {
                        record: B64.encode(m),
                        due,
                    }),
                )?;
            }
            self.inlines(out, ids).await?;
        }
        Ok(())
    }

    /// Writes queued deleted files once more than `keep` are waiting.
    async fn delfiles(
        &mut self,
        out: &mut dyn Write,
        files: &mut Vec<(u64, u64, i64)>,
        keep: usize,
    ) -> Result<(), DumpError> {
        if files.len() <= keep || files.is_empty() {
            return Ok(());
        }
        let list: Vec<(u64, u64, i64)> = std::mem::take(files);
        let lens: Vec<(u64, u64)> = list.iter().map(|(i, l, _)| (*i, *l)).collect();
        let chunks = self.chunks(&lens).await?;
        let mut ids = Vec::new();
        for ((ino, length, due), chunks) in list.into_iter().zip(chunks) {
            for c in &chunks {
                ids.extend(c.slices.iter().map(|s| s.id));
            }
            self.end.delfiles += 1;
            put(
                out,
                &Record::Delfile(DelFileRec {
                    ino,
                    length,
                    due,
                    chunks,
                }),
            )?;
        }
        self.inlines(out, ids).await
    }
}

/// What a load wrote.
#[derive(Debug, Default)]
pub struct Loaded {
    pub volume: String,
    pub end: EndRec,
    pub used_space: u64,
}

/// Reads a dump's header: the volume it holds.
pub fn read_header(input: &mut dyn BufRead) -> Result<Header, DumpError> {
    let mut line = String::new();
    input.read_line(&mut line)?;
    if line.trim().is_empty() {
        return Err(DumpError::Bad {
            line: 1,
            msg: "the dump is empty".into(),
        });
    }
    let bad = |msg: String| DumpError::Bad { line: 1, msg };
    let h = match serde_json::from_str::<Record>(&line) {
        Ok(Record::Header(h)) if h.format == MAGIC => h,
        _ => return Err(bad("this is not a vecfs dump (no vecfs-dump header)".into())),
    };
    if h.version > DUMP_VERSION {
        return Err(bad(format!(
            "dump format version {} is newer than this vecfs reads ({DUMP_VERSION}): use vecfs {} or later",
            h.version, h.written_by
        )));
    }
    Ok(h)
}

/// Refuses a database that holds any key of volume `meta` or any volume.
pub async fn check_empty(meta: &Meta, what: &str) -> Result<(), DumpError> {
    let mut conn = meta.maintenance_conn();
    let vols: Vec<String> = redis::cmd("SMEMBERS")
        .arg("vecfs-volumes")
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    if !vols.is_empty() {
        return Err(DumpError::NotEmpty(format!(
            "{what} already holds volume(s) {}: load only into an empty database \
             (`vecfs destroy` removes a volume)",
            vols.join(", ")
        )));
    }
    let mut walk = crate::maintenance::scan::KeyScan::starting(meta, "");
    while let Some(keys) = walk.next_keys().await? {
        if let Some(k) = keys.first() {
            return Err(DumpError::NotEmpty(format!(
                "{what} already has keys of this volume (e.g. {k}): load only into an empty database"
            )));
        }
    }
    Ok(())
}

/// Loads a dump whose header was read already into `meta`'s database
/// (checked empty by the caller). `progress` gets the inodes loaded so far.
pub async fn load(
    meta: &Meta,
    header: &Header,
    input: &mut dyn BufRead,
    progress: &dyn Fn(u64),
) -> Result<Loaded, DumpError> {
    let p = meta.prefix().to_string();
    let mut conn = meta.maintenance_conn();
    let mut pipe = redis::pipe();
    let mut queued = 0usize;
    let mut lineno = 1u64;
    let mut line = String::new();
    let mut seen = EndRec::default();
    let (mut max_ino, mut max_slice, mut used) = (ROOT_INO, 0u64, 0u64);
    let mut end: Option<EndRec> = None;
    let space = |len: u64| len.div_ceil(4096) * 4096;
    let top_slice = |chunks: &[ChunkRec]| {
        chunks
            .iter()
            .flat_map(|c| c.slices.iter())
            .map(|s| s.id & !INLINE_ID)
            .max()
            .unwrap_or(0)
    };
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        lineno += 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| DumpError::Bad { line: lineno, msg };
        if end.is_some() {
            return Err(bad("a record after the end record".into()));
        }
        let rec: Record = serde_json::from_str(&line).map_err(|e| bad(e.to_string()))?;
        match rec {
            Record::Header(_) => return Err(bad("a second header".into())),
            Record::Inode(r) => {
                let kind = kind_from_name(&r.kind)
                    .ok_or_else(|| bad(format!("unknown file kind {:?}", r.kind)))?;
                let a = Attr {
                    flags: r.flags,
                    kind,
                    mode: r.mode,
                    uid: r.uid,
                    gid: r.gid,
                    atime: r.atime,
                    mtime: r.mtime,
                    ctime: r.ctime,
                    nlink: r.nlink,
                    length: r.length,
                    rdev: r.rdev,
                    parent: r.parent,
                };
                pipe.set(format!("{p}i{}", r.ino), a.encode().as_slice())
                    .ignore();
                queued += 1;
                if let Some(t) = &r.target {
                    pipe.set(format!("{p}s{}", r.ino), &t.0).ignore();
                    queued += 1;
                }
                if !r.xattrs.is_empty() {
                    let pairs: Vec<(&[u8], &[u8])> = r
                        .xattrs
                        .iter()
                        .map(|(n, v)| (n.0.as_slice(), v.0.as_slice()))
                        .collect();
                    pipe.hset_multiple(format!("{p}x{}", r.ino), &pairs)
                        .ignore();
                    queued += 1;
                }
                queued += push_chunks(&mut pipe, &p, r.ino, &r.chunks);
                max_slice = max_slice.max(top_slice(&r.chunks));
                if r.ino < TRASH_INO {
                    // Reserved inodes sit above the counter's range.
                    max_ino = max_ino.max(r.ino);
                }
                used += space(r.length);
                seen.inodes += 1;
            }
            Record::Entries(r) => {
                if r.entries.is_empty() {
                    continue;
                }
                let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(r.entries.len());
                for e in r.entries {
                    let kind = kind_from_name(&e.kind)
                        .ok_or_else(|| bad(format!("unknown file kind {:?}", e.kind)))?;
                    let mut v = Vec::with_capacity(9);
                    v.push(kind as u8);
                    v.extend_from_slice(&e.ino.to_le_bytes());
                    pairs.push((e.name.0, v));
                }
                seen.entries += pairs.len() as u64;
                pipe.hset_multiple(format!("{p}d{}", r.dir), &pairs)
                    .ignore();
                queued += 1;
            }
            Record::Inline(r) => {
                let data = B64
                    .decode(&r.data)
                    .map_err(|e| bad(format!("inline slice {}: {e}", r.id)))?;
                pipe.set(format!("{p}b{}", r.id), data).ignore();
                queued += 1;
                max_slice = max_slice.max(r.id & !INLINE_ID);
                seen.inlines += 1;
            }
            Record::Delfile(r) => {
                pipe.zadd(
                    format!("{p}delfiles"),
                    format!("{}:{}", r.ino, r.length),
                    r.due,
                )
                .ignore();
                queued += 1 + push_chunks(&mut pipe, &p, r.ino, &r.chunks);
                max_slice = max_slice.max(top_slice(&r.chunks));
                max_ino = max_ino.max(r.ino);
                seen.delfiles += 1;
            }
            Record::Delslice(r) => {
                let rec = B64
                    .decode(&r.record)
                    .map_err(|e| bad(format!("deleted slice record: {e}")))?;
                if let Ok(s) = Slice::decode(&rec) {
                    max_slice = max_slice.max(s.id & !INLINE_ID);
                }
                pipe.zadd(format!("{p}delslices"), rec, r.due).ignore();
                queued += 1;
                seen.delslices += 1;
            }
            Record::End(e) => {
                let counts = (e.inodes, e.entries, e.inlines, e.delfiles, e.delslices);
                let got = (
                    seen.inodes,
                    seen.entries,
                    seen.inlines,
                    seen.delfiles,
                    seen.delslices,
                );
                if counts != got {
                    return Err(bad(format!(
                        "the dump announces (inodes, entries, inlines, deleted files, deleted slices) \
                         {counts:?} but holds {got:?}: it is damaged"
                    )));
                }
                end = Some(e);
            }
        }
        if queued >= BATCH {
            let _: () = pipe.query_async(&mut conn).await.map_err(redis_err)?;
            pipe = redis::pipe();
            queued = 0;
            progress(seen.inodes);
        }
    }
    let Some(end) = end else {
        return Err(DumpError::Bad {
            line: lineno,
            msg: "the dump ends without its end record: it is truncated".into(),
        });
    };
    // Counters: new ids must never reuse one the dump (or its objects) has.
    pipe.set(format!("{p}nextinode"), end.next_inode.max(max_ino))
        .ignore()
        .set(format!("{p}nextslice"), end.next_slice.max(max_slice))
        .ignore()
        .set(format!("{p}totalInodes"), seen.inodes)
        .ignore()
        .set(format!("{p}usedSpace"), used)
        .ignore();
    let _: () = pipe.query_async(&mut conn).await.map_err(redis_err)?;
    progress(seen.inodes);
    // The volume record last: a half-loaded database is no mountable volume.
    let json = serde_json::to_string(&header.volume)
        .map_err(|e| MetaError::Corrupt(format!("volume record: {e}")))?;
    // Two requests: the volume list is no key of the volume (in a Redis
    // Cluster it lives in another slot, so one pipeline cannot hold both).
    let _: () = redis::cmd("SET")
        .arg(format!("{p}setting"))
        .arg(json)
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    let _: () = redis::cmd("SADD")
        .arg("vecfs-volumes")
        .arg(&header.volume.name)
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    Ok(Loaded {
        volume: header.volume.name.clone(),
        end,
        used_space: used,
    })
}

fn push_chunks(pipe: &mut redis::Pipeline, p: &str, ino: u64, chunks: &[ChunkRec]) -> usize {
    let mut n = 0;
    for c in chunks {
        if c.slices.is_empty() {
            continue;
        }
        let recs: Vec<Vec<u8>> = c
            .slices
            .iter()
            .map(|s| slice_of(s).encode().to_vec())
            .collect();
        pipe.rpush(format!("{p}c{ino}_{}", c.index), recs).ignore();
        n += 1;
    }
    n
}

/// Removes every key of volume `meta` (the volume record last, so an
/// interrupted removal can be run again) and its name from the volume
/// list. `progress` gets the keys removed so far. Returns how many.
pub async fn remove_keys(meta: &Meta, progress: &dyn Fn(u64)) -> Result<u64, MetaError> {
    let mut conn = meta.maintenance_conn();
    let p = meta.prefix();
    let setting = format!("{p}setting");
    let mut n = 0u64;
    let mut walk = crate::maintenance::scan::KeyScan::starting(meta, "");
    while let Some(keys) = walk.next_keys().await? {
        let keys: Vec<String> = keys.into_iter().filter(|k| *k != setting).collect();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            n += keys.len() as u64;
            progress(n);
        }
    }
    // The name between the braces is the volume's.
    let name = p.trim_start_matches('{').trim_end_matches('}');
    // The volume list lives in another slot of a cluster: its own request.
    let gone: i64 = redis::cmd("UNLINK")
        .arg(&setting)
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    let _: i64 = redis::cmd("SREM")
        .arg("vecfs-volumes")
        .arg(name)
        .query_async(&mut conn)
        .await
        .map_err(redis_err)?;
    Ok(n + gone as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip_as_text_or_base64() {
        for b in [b"plain".to_vec(), vec![0xff, 0, 1, 0x80], Vec::new()] {
            let j = serde_json::to_string(&Raw(b.clone())).unwrap();
            assert_eq!(serde_json::from_str::<Raw>(&j).unwrap().0, b);
        }
        assert_eq!(serde_json::to_string(&Raw(b"a".to_vec())).unwrap(), "\"a\"");
        assert!(serde_json::to_string(&Raw(vec![0xff]))
            .unwrap()
            .contains("base64"));
    }

    #[test]
    fn kinds_round_trip() {
        for k in 1..=7 {
            let k = FileKind::from_u8(k).unwrap();
            assert_eq!(kind_from_name(kind_name(k)), Some(k));
        }
    }
}
