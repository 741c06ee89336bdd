//! Consistency check (`vecfs fsck`): directory entries and inodes agree (no
//! dangling entry, no orphan inode, link counts right), the volume's
//! counters (`usedSpace`, `totalInodes`) match its inodes, and every object
//! a slice names exists (with `check_data`, is fetched and decodes with its
//! checksum and length right). With `repair`, what is safely fixable is
//! fixed, each fix one atomic Lua step that first checks the state it saw
//! is still there (so a concurrent change is never overwritten):
//! dangling entries are dropped, link counts and counters set, orphan
//! inodes moved to `/lost+found` (or released when their link count is 0
//! and no session holds them open), chunk lists of missing inodes handed to
//! the deleter. Missing objects are reported, never "fixed".
//!
//! The scan reads the volume across many round trips: on a volume in use,
//! a change racing the scan can show up as a problem that is not one.
//! Every problem is re-checked before it is reported or repaired.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use redis::{Script, Value};

use super::scan::{self, KeyScan};
use crate::codec;
use crate::data::DataStore;
use crate::error::Result;
use crate::meta::{redis_err, Attr, FileKind, MetaError, ROOT_INO, TRASH_INO};
use crate::object::parse_block_key;

pub struct FsckOptions {
    pub repair: bool,
    pub check_data: bool,
    /// Check only these inodes (a subtree, `--path`): their entries, link
    /// counts and objects; the volume-wide checks (orphans, counters) are
    /// skipped.
    pub only: Option<HashSet<u64>>,
}

/// Every inode under directory `top` (itself included), by walking it.
pub async fn subtree(meta: &crate::meta::Meta, top: u64) -> Result<HashSet<u64>> {
    let mut out = HashSet::from([top]);
    let mut dirs = vec![top];
    while let Some(d) = dirs.pop() {
        for e in meta.readdir(d).await? {
            if out.insert(e.ino) && e.kind == FileKind::Dir {
                dirs.push(e.ino);
            }
        }
    }
    Ok(out)
}

/// The inode of an absolute path inside the volume.
pub async fn resolve(meta: &crate::meta::Meta, path: &str) -> Result<u64> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        ino = meta.lookup(ino, part.as_bytes()).await?.0;
    }
    Ok(ino)
}

/// What fsck is doing, for a progress display.
pub enum Phase {
    Inodes(u64),
    Entries(u64),
    Chunks(u64),
    Listing(u64),
    Data(u64, u64),
}

#[derive(Debug, Default)]
pub struct FsckReport {
    pub inodes: u64,
    pub directories: u64,
    pub entries: u64,
    pub chunks: u64,
    pub objects_checked: u64,
    /// Problems found, one line each.
    pub problems: Vec<String>,
    /// Repairs done, one line each.
    pub repaired: Vec<String>,
    /// Problems left (found and not repaired).
    pub remaining: u64,
}

#[derive(Clone, Copy)]
struct Node {
    kind: FileKind,
    nlink: u32,
    length: u64,
}

const LOST_FOUND: &[u8] = b"lost+found";

/// Bytes a file's length charges to usedSpace (as prelude.lua's `space`).
fn space(len: u64) -> u64 {
    len.div_ceil(4096) * 4096
}

pub async fn run(
    data: Arc<DataStore>,
    opts: &FsckOptions,
    progress: &(dyn Fn(Phase) + Sync),
) -> Result<FsckReport> {
    let meta = data.meta.clone();
    let mut r = FsckReport::default();

    // 1. Inodes.
    let mut nodes: HashMap<u64, Node> = HashMap::new();
    let mut raw_attr: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut scan_i = KeyScan::new(&meta, "i");
    while let Some(keys) = scan_i.next_batch().await? {
        if keys.is_empty() {
            continue;
        }
        let vals = scan::read_raw(&meta, &keys).await?;
        for (k, v) in keys.iter().zip(vals) {
            let (Some(ino), Some(v)) = (scan::parse_num_key(k, 'i'), v) else {
                continue;
            };
            match Attr::decode(&v) {
                Ok(a) => {
                    nodes.insert(
                        ino,
                        Node {
                            kind: a.kind,
                            nlink: a.nlink,
                            length: a.length,
                        },
                    );
                    raw_attr.insert(ino, v);
                }
                Err(e) => r
                    .problems
                    .push(format!("inode {ino}: unreadable record: {e}")),
            }
        }
        progress(Phase::Inodes(nodes.len() as u64));
    }
    r.inodes = nodes.len() as u64;

    // Inodes unlinked but still open on some session.
    let mut sustained: HashSet<u64> = HashSet::new();
    for k in scan::keys_like(&meta, "sustained").await? {
        let m: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}{k}", meta.prefix()))
            .query_async(&mut meta.maintenance_conn())
            .await
            .map_err(redis_err)?;
        sustained.extend(m.iter().filter_map(|s| s.parse::<u64>().ok()));
    }

    // 2. Directory entries.
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut dangling: Vec<(u64, Vec<u8>, Vec<u8>, u64)> = Vec::new();
    let mut scan_d = KeyScan::new(&meta, "d");
    while let Some(keys) = scan_d.next_batch().await? {
        for k in keys {
            let Some(dir) = scan::parse_num_key(&k, 'd') else {
                continue;
            };
            if !matches!(nodes.get(&dir), Some(n) if n.kind == FileKind::Dir) {
                r.problems
                    .push(format!("entries of inode {dir}, which is not a directory"));
                continue;
            }
            r.directories += 1;
            let raw: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(format!("{}{k}", meta.prefix()))
                .query_async(&mut meta.maintenance_conn())
                .await
                .map_err(redis_err)?;
            for (name, v) in raw {
                r.entries += 1;
                if v.len() != 9 {
                    r.problems.push(format!(
                        "directory {dir}: entry '{}' unreadable",
                        String::from_utf8_lossy(&name)
                    ));
                    continue;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&v[1..9]);
                let target = u64::from_le_bytes(b);
                match nodes.get(&target) {
                    None => dangling.push((dir, name, v, target)),
                    Some(n) => {
                        *links.entry(target).or_default() += 1;
                        if n.kind == FileKind::Dir {
                            *subdirs.entry(dir).or_default() += 1;
                        }
                        if FileKind::from_u8(v[0]) != Some(n.kind) {
                            r.problems.push(format!(
                                "directory {dir}: entry '{}' says type {} but inode {target} is a {:?}",
                                String::from_utf8_lossy(&name),
                                v[0],
                                n.kind
                            ));
                        }
                    }
                }
            }
        }
        progress(Phase::Entries(r.entries));
    }

    for (dir, name, entry, target) in dangling {
        if opts.only.as_ref().is_some_and(|o| !o.contains(&dir)) {
            continue;
        }
        // Re-check: the inode may have been created after the inode scan.
        if meta
            .getattrs(&[target])
            .await?
            .first()
            .is_some_and(|a| a.is_some())
        {
            continue;
        }
        let shown = String::from_utf8_lossy(&name).into_owned();
        r.problems.push(format!(
            "directory {dir}: entry '{shown}' points at missing inode {target}"
        ));
        if opts.repair {
            let done = drop_entry(&meta, dir, &name, &entry, target).await?;
            if done {
                r.repaired
                    .push(format!("dropped entry '{shown}' of directory {dir}"));
            }
        }
    }

    // Counters, before any repair (each repair below keeps them in step);
    // a mount changing them meanwhile makes the compare-and-set skip.
    if opts.only.is_none() {
        let total = nodes.len() as u64;
        let used: u64 = nodes.values().map(|n| space(n.length)).sum();
        let (cur_used, cur_total) = meta.usage().await?;
        for (name, cur, want) in [
            ("totalInodes", cur_total, total),
            ("usedSpace", cur_used, used),
        ] {
            if cur != want {
                r.problems.push(format!(
                    "counter {name} is {cur}, the inodes add up to {want}"
                ));
                if opts.repair && set_counter(&meta, name, cur, want).await? {
                    r.repaired.push(format!("counter {name}: {cur} -> {want}"));
                }
            }
        }
    }

    // 3. Link counts, orphans.
    let mut lost_found: Option<u64> = None;
    let mut inos: Vec<u64> = nodes.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        if opts.only.as_ref().is_some_and(|o| !o.contains(&ino)) {
            continue;
        }
        let n = nodes[&ino];
        let refs = links.get(&ino).copied().unwrap_or(0);
        // `.trash` hangs off the root without an entry (found by name).
        let entryless = ino == ROOT_INO || ino == TRASH_INO;
        if !entryless && refs == 0 && opts.only.is_none() {
            if n.nlink == 0 && sustained.contains(&ino) {
                continue; // unlinked, still open somewhere
            }
            let what = if n.nlink == 0 {
                "released"
            } else {
                "moved to /lost+found"
            };
            r.problems.push(format!(
                "inode {ino} ({:?}, nlink {}) has no directory entry",
                n.kind, n.nlink
            ));
            if opts.repair {
                let Some(old) = raw_attr.get(&ino) else {
                    continue;
                };
                let done = if n.nlink == 0 {
                    release_inode(&meta, ino, old).await?
                } else {
                    let lf = match lost_found {
                        Some(lf) => lf,
                        None => {
                            let lf = ensure_lost_found(&meta).await?;
                            lost_found = Some(lf);
                            lf
                        }
                    };
                    adopt(&meta, ino, old, lf).await?
                };
                if done {
                    r.repaired.push(format!("inode {ino}: {what}"));
                }
            }
            continue;
        }
        let want = if n.kind == FileKind::Dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            refs
        };
        if n.nlink != want {
            r.problems.push(format!(
                "inode {ino} ({:?}): nlink {} but {} links found",
                n.kind, n.nlink, want
            ));
            if opts.repair {
                if let Some(old) = raw_attr.get(&ino) {
                    if set_nlink(&meta, ino, old, want).await? {
                        r.repaired
                            .push(format!("inode {ino}: nlink {} -> {want}", n.nlink));
                    }
                }
            }
        }
    }

    // 5. Chunks and the objects they name.
    let deleted: HashSet<u64> = scan::zset_members(&meta, "delfiles")
        .await?
        .into_iter()
        .filter_map(|(m, _)| {
            std::str::from_utf8(&m)
                .ok()?
                .split_once(':')?
                .0
                .parse()
                .ok()
        })
        .collect();
    // (slice id, block index, raw length) -> owning inode.
    let mut expected: Vec<(u64, u32, u32, u64)> = Vec::new();
    let mut inline: Vec<(u64, u64)> = Vec::new();
    let bs = data.block_size;
    let mut scan_c = KeyScan::new(&meta, "c");
    while let Some(keys) = scan_c.next_batch().await? {
        if keys.is_empty() {
            continue;
        }
        let lists = scan::read_chunks(&meta, &keys).await?;
        for (k, list) in keys.iter().zip(lists) {
            r.chunks += 1;
            let Some((ino, indx)) = scan::parse_chunk_key(k) else {
                continue;
            };
            if opts.only.as_ref().is_some_and(|o| !o.contains(&ino)) {
                continue;
            }
            if !nodes.contains_key(&ino) {
                if deleted.contains(&ino) {
                    continue; // the deleter frees it
                }
                r.problems.push(format!(
                    "chunk {indx} of missing inode {ino} ({} slices)",
                    list.len()
                ));
                if opts.repair && orphan_chunk(&meta, k, ino).await? {
                    r.repaired.push(format!(
                        "chunk {indx} of missing inode {ino}: slices handed to the deleter"
                    ));
                }
                continue;
            }
            for s in list {
                if s.id == 0 {
                    continue;
                }
                if crate::meta::is_inline(s.id) {
                    inline.push((s.id, ino));
                    continue;
                }
                for bi in 0..s.size.div_ceil(bs) {
                    expected.push((s.id, bi, bs.min(s.size - bi * bs), ino));
                }
            }
        }
        progress(Phase::Chunks(r.chunks));
    }
    expected.sort_unstable();
    expected.dedup_by_key(|e| (e.0, e.1, e.2));

    // Inline slices' bytes.
    for batch in inline.chunks(1000) {
        let mut pipe = redis::pipe();
        for (id, _) in batch {
            pipe.cmd("EXISTS").arg(format!("{}b{id}", meta.prefix()));
        }
        let ex: Vec<bool> = pipe
            .query_async(&mut meta.maintenance_conn())
            .await
            .map_err(redis_err)?;
        for ((id, ino), e) in batch.iter().zip(ex) {
            if !e {
                r.problems
                    .push(format!("inode {ino}: inline slice {id} has no bytes"));
            }
        }
    }

    // The store, streamed; only block keys are kept (24 bytes each).
    let mut stored: Vec<(u64, u32, u32, u64)> = Vec::new();
    let mut list = data.blocks.list_blocks();
    let mut listed = 0u64;
    while let Some(m) = list.next().await {
        let m = m?;
        listed += 1;
        if listed % 1000 == 0 {
            progress(Phase::Listing(listed));
        }
        if let Some((id, bi, len)) = parse_block_key(m.location.as_ref()) {
            stored.push((id, bi, len, m.size));
        }
    }
    stored.sort_unstable();
    let mut present: Vec<(String, u32, u64)> = Vec::new();
    for (id, bi, len, ino) in &expected {
        let key = data.blocks.block_key(*id, *bi, *len);
        match stored.binary_search_by(|s| (s.0, s.1, s.2).cmp(&(*id, *bi, *len))) {
            Ok(i) => {
                let size = stored[i].3;
                if size < codec::HEADER_LEN as u64 {
                    r.problems.push(format!(
                        "inode {ino}: object {key} is {size} bytes, shorter than a block header"
                    ));
                } else {
                    present.push((key, *len, *ino));
                }
            }
            Err(_) => {
                // Listing is eventually consistent on some stores: ask.
                match data.blocks.head_size(&key).await? {
                    Some(_) => present.push((key, *len, *ino)),
                    None => r
                        .problems
                        .push(format!("inode {ino}: object {key} is missing")),
                }
            }
        }
    }
    r.objects_checked = expected.len() as u64;
    drop(stored);

    // 6. Contents.
    if opts.check_data {
        let total = present.len() as u64;
        let mut done = 0u64;
        let mut results = futures::stream::iter(present.into_iter().map(|(key, len, ino)| {
            let data = data.clone();
            async move {
                let why = match data.blocks.get(&key).await {
                    Err(e) => Some(format!("cannot be read: {e}")),
                    Ok(b) => match codec::decode(&b) {
                        Err(e) => Some(format!("is corrupt: {e}")),
                        Ok(raw) if raw.len() != len as usize => {
                            Some(format!("holds {} bytes, its key says {len}", raw.len()))
                        }
                        Ok(_) => None,
                    },
                };
                why.map(|w| format!("inode {ino}: object {key} {w}"))
            }
        }))
        .buffer_unordered(8);
        while let Some(p) = results.next().await {
            done += 1;
            progress(Phase::Data(done, total));
            if let Some(p) = p {
                r.problems.push(p);
            }
        }
    }

    r.remaining = (r.problems.len() - r.repaired.len().min(r.problems.len())) as u64;
    Ok(r)
}

fn truthy(v: &Value) -> bool {
    matches!(v, Value::Int(1))
}

/// Drops entry `name` of `dir` if it still points at `target` and the
/// inode is still missing.
async fn drop_entry(
    meta: &crate::meta::Meta,
    dir: u64,
    name: &[u8],
    entry: &[u8],
    target: u64,
) -> Result<bool> {
    let s = Script::new(
        r#"if redis.call("HGET", KEYS[1], ARGV[1]) == ARGV[2] and redis.call("EXISTS", KEYS[2]) == 0 then
  redis.call("HDEL", KEYS[1], ARGV[1]); return 1 end
return 0"#,
    );
    let v = scan::eval(
        meta,
        &s,
        &[format!("d{dir}"), format!("i{target}")],
        &[name.to_vec(), entry.to_vec()],
    )
    .await?;
    Ok(truthy(&v))
}

/// Replaces an attribute record if it is still `old`.
async fn swap_attr(meta: &crate::meta::Meta, ino: u64, old: &[u8], new: &[u8]) -> Result<bool> {
    let s = Script::new(
        r#"if redis.call("GET", KEYS[1]) == ARGV[1] then redis.call("SET", KEYS[1], ARGV[2]); return 1 end
return 0"#,
    );
    let v = scan::eval(
        meta,
        &s,
        &[format!("i{ino}")],
        &[old.to_vec(), new.to_vec()],
    )
    .await?;
    Ok(truthy(&v))
}

/// Attribute layout (see `Attr::decode`): nlink at 48, parent at 64.
const NLINK_AT: usize = 48;
const PARENT_AT: usize = 64;

fn patched(old: &[u8], nlink: Option<u32>, parent: Option<u64>) -> Result<Vec<u8>> {
    if old.len() != crate::meta::ATTR_LEN {
        return Err(MetaError::Corrupt("attribute record of the wrong size".into()).into());
    }
    let mut b = old.to_vec();
    if let Some(n) = nlink {
        b[NLINK_AT..NLINK_AT + 4].copy_from_slice(&n.to_le_bytes());
    }
    if let Some(p) = parent {
        b[PARENT_AT..PARENT_AT + 8].copy_from_slice(&p.to_le_bytes());
    }
    Ok(b)
}

async fn set_nlink(meta: &crate::meta::Meta, ino: u64, old: &[u8], n: u32) -> Result<bool> {
    swap_attr(meta, ino, old, &patched(old, Some(n), None)?).await
}

async fn set_counter(meta: &crate::meta::Meta, name: &str, cur: u64, want: u64) -> Result<bool> {
    let s = Script::new(
        r#"if tonumber(redis.call("GET", KEYS[1]) or "0") == tonumber(ARGV[1]) then
  redis.call("SET", KEYS[1], ARGV[2]); return 1 end
return 0"#,
    );
    let v = scan::eval(
        meta,
        &s,
        &[name.to_string()],
        &[cur.to_string().into_bytes(), want.to_string().into_bytes()],
    )
    .await?;
    Ok(truthy(&v))
}

/// `/lost+found`, made (mode 0700, owned by root) if missing.
async fn ensure_lost_found(meta: &crate::meta::Meta) -> Result<u64> {
    match meta.lookup(ROOT_INO, LOST_FOUND).await {
        Ok((ino, a)) if a.kind == FileKind::Dir => return Ok(ino),
        Ok(_) => {
            return Err(
                MetaError::Corrupt("/lost+found exists and is not a directory".into()).into(),
            )
        }
        Err(MetaError::Errno(libc::ENOENT)) => {}
        Err(e) => return Err(e.into()),
    }
    match meta
        .mknod(
            ROOT_INO,
            LOST_FOUND,
            FileKind::Dir,
            0o700,
            0,
            0,
            0,
            0,
            b"",
            (0, 0),
        )
        .await
    {
        Ok((ino, _)) => Ok(ino),
        // Made meanwhile by someone else.
        Err(MetaError::Errno(libc::EEXIST)) => Ok(meta.lookup(ROOT_INO, LOST_FOUND).await?.0),
        Err(e) => Err(e.into()),
    }
}

/// Links orphan inode `ino` into lost+found as `ino-<n>`, if its record is
/// still `old` (one step: entry, inode's link count and parent, and for a
/// directory lost+found's link count).
async fn adopt(meta: &crate::meta::Meta, ino: u64, old: &[u8], lf: u64) -> Result<bool> {
    let a = Attr::decode(old)?;
    let nlink = if a.kind == FileKind::Dir {
        a.nlink.max(2)
    } else {
        1
    };
    let new = patched(old, Some(nlink), Some(lf))?;
    let mut entry = vec![a.kind as u8];
    entry.extend_from_slice(&ino.to_le_bytes());
    let s = Script::new(
        r#"if redis.call("GET", KEYS[2]) ~= ARGV[2] then return 0 end
if redis.call("HSETNX", KEYS[1], ARGV[1], ARGV[4]) == 0 then return 0 end
redis.call("SET", KEYS[2], ARGV[3])
if ARGV[5] == "1" then
  local p = redis.call("GET", KEYS[3])
  if p then
    local n = struct.unpack("<I4", p, 49)
    redis.call("SET", KEYS[3], string.sub(p, 1, 48) .. struct.pack("<I4", n + 1) .. string.sub(p, 53))
  end
end
return 1"#,
    );
    let v = scan::eval(
        meta,
        &s,
        &[format!("d{lf}"), format!("i{ino}"), format!("i{lf}")],
        &[
            format!("ino-{ino}").into_bytes(),
            old.to_vec(),
            new,
            entry,
            if a.kind == FileKind::Dir {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
        ],
    )
    .await?;
    Ok(truthy(&v))
}

/// Frees an inode with no link that no session holds open, as unlink does
/// for its last link: the record goes, a file's data to the deleter.
async fn release_inode(meta: &crate::meta::Meta, ino: u64, old: &[u8]) -> Result<bool> {
    let a = Attr::decode(old)?;
    let s = Script::new(
        r#"if redis.call("GET", KEYS[1]) ~= ARGV[1] then return 0 end
redis.call("DEL", KEYS[1], KEYS[2], KEYS[3])
if ARGV[2] == "1" and tonumber(ARGV[3]) > 0 then
  redis.call("ZADD", KEYS[4], tonumber(redis.call("TIME")[1]), ARGV[4] .. ":" .. ARGV[3])
end
redis.call("DECR", KEYS[5])
redis.call("DECRBY", KEYS[6], ARGV[5])
return 1"#,
    );
    let v = scan::eval(
        meta,
        &s,
        &[
            format!("i{ino}"),
            format!("x{ino}"),
            format!("s{ino}"),
            "delfiles".into(),
            "totalInodes".into(),
            "usedSpace".into(),
        ],
        &[
            old.to_vec(),
            if a.kind == FileKind::File {
                b"1".to_vec()
            } else {
                b"0".to_vec()
            },
            a.length.to_string().into_bytes(),
            ino.to_string().into_bytes(),
            space(a.length).to_string().into_bytes(),
        ],
    )
    .await?;
    Ok(truthy(&v))
}

/// Hands the slices of a chunk list whose inode is gone to the deleter.
async fn orphan_chunk(meta: &crate::meta::Meta, key: &str, ino: u64) -> Result<bool> {
    let s = Script::new(
        r#"if redis.call("EXISTS", KEYS[2]) == 1 then return 0 end
local now = tonumber(redis.call("TIME")[1])
for _, r in ipairs(redis.call("LRANGE", KEYS[1], 0, -1)) do
  local _, id, size = struct.unpack("<I4I8I4I4I4", r)
  if id ~= 0 then redis.call("ZADD", KEYS[3], now, struct.pack("<I4I8I4I4I4", 0, id, size, 0, size)) end
end
redis.call("DEL", KEYS[1])
return 1"#,
    );
    let v = scan::eval(
        meta,
        &s,
        &[key.to_string(), format!("i{ino}"), "delslices".into()],
        &[],
    )
    .await?;
    Ok(truthy(&v))
}
