//! Streaming reads of a whole volume's metadata for the maintenance
//! commands (`gc`, `fsck`, `info`): SCAN over the volume's hash-tagged keys
//! in batches, each batch's values fetched in one pipelined round trip, so
//! a large volume is walked without blocking Redis or holding it all.
//!
//! These are reads across many round trips, so they see no single instant
//! of the volume: callers that act on what they saw (gc's deletions, fsck's
//! repairs) guard each action with its own atomic check.
//!
//! What a walk must never do is end early and look complete: gc would take
//! every object it did not see named for leaked. So each SCAN step runs in a
//! script keyed by the volume's record (a plain SCAN has no key, and a
//! cluster client that cannot reach the slot's master sends it to any node,
//! which answers with nothing), and the walk fails when the server's run id
//! changes under it (a failover or restart: a cursor means nothing to
//! another server).

use redis::Value;

use crate::meta::redis_err;
use crate::meta::{is_inline, Attr, Meta, MetaError, Result, Slice, SLICE_LEN};

/// Keys per SCAN call (a hint to Redis) and per pipelined batch.
const SCAN_COUNT: usize = 1000;

/// One SCAN step where the volume lives: KEYS[1] is the volume's record,
/// so a cluster routes it to the slot's master (MOVED, never another node's
/// empty answer); the server's run id comes back with the cursor.
const SCAN_STEP: &str = r#"
local r = redis.call("SCAN", ARGV[1], "MATCH", ARGV[2], "COUNT", ARGV[3])
local id = string.match(redis.call("INFO", "server"), "run_id:(%x+)")
return {r[1], r[2], id or ""}
"#;

fn scan_step() -> &'static redis::Script {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    S.get_or_init(|| redis::Script::new(SCAN_STEP))
}

/// A walk over the volume's keys that start with `kind` followed by a digit
/// (`c` for chunk lists, `i` for inodes, `d` for directories, ...), in
/// batches, each key given without the volume prefix. A key may come twice
/// (SCAN's guarantee): callers must not mind.
pub struct KeyScan<'a> {
    meta: &'a Meta,
    conn: crate::meta::TimedConn,
    pattern: String,
    cursor: u64,
    done: bool,
    /// The run id of the server the walk started on.
    server: Option<String>,
}

impl<'a> KeyScan<'a> {
    pub fn new(meta: &'a Meta, kind: &str) -> KeyScan<'a> {
        let pattern = format!("{}{kind}[0-9]*", glob_escape(meta.prefix()));
        KeyScan::matching(meta, pattern)
    }

    /// A walk over the volume's keys that start with the literal `start`
    /// (every key of the volume for "").
    pub fn starting(meta: &'a Meta, start: &str) -> KeyScan<'a> {
        let pattern = format!("{}{}*", glob_escape(meta.prefix()), glob_escape(start));
        KeyScan::matching(meta, pattern)
    }

    fn matching(meta: &'a Meta, pattern: String) -> KeyScan<'a> {
        KeyScan {
            meta,
            conn: meta.maintenance_conn(),
            pattern,
            cursor: 0,
            done: false,
            server: None,
        }
    }

    /// The next batch (maybe empty), None at the end; keys without the
    /// volume prefix.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<String>>> {
        let prefix = self.meta.prefix();
        Ok(self.next_keys().await?.map(|keys| {
            keys.into_iter()
                .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
                .collect()
        }))
    }

    /// As `next_batch`, with the keys whole.
    pub async fn next_keys(&mut self) -> Result<Option<Vec<String>>> {
        if self.done {
            return Ok(None);
        }
        let mut step = scan_step().key(format!("{}setting", self.meta.prefix()));
        step.arg(self.cursor).arg(&self.pattern).arg(SCAN_COUNT);
        let (next, keys, server): (u64, Vec<String>, String) =
            self.conn.invoke(&step).await.map_err(redis_err)?;
        same_server(&mut self.server, server)?;
        self.cursor = next;
        self.done = next == 0;
        Ok(Some(keys))
    }
}

/// Fails when `server` is not the run id the walk started on (kept in
/// `first`).
fn same_server(first: &mut Option<String>, server: String) -> Result<()> {
    match first {
        None => *first = Some(server),
        Some(first) if *first != server => {
            return Err(MetaError::Redis {
                msg: "the Redis server changed during a walk of the volume's metadata \
                      (a failover or restart): nothing was concluded from it; run the \
                      command again"
                    .into(),
                transient: true,
            })
        }
        Some(_) => {}
    }
    Ok(())
}

/// A walk over the members of one hash (HSCAN) or sorted set (ZSCAN) of the
/// volume in pages, each page a flat field/value (member/score) list. As
/// with `KeyScan`, a walk whose server changes midway fails instead of
/// ending short.
pub struct MemberScan {
    conn: crate::meta::TimedConn,
    cmd: &'static str,
    key: String,
    cursor: u64,
    done: bool,
    server: Option<String>,
}

impl MemberScan {
    /// ZSCAN of the volume's sorted set `zset` (name without the prefix).
    pub fn zset(meta: &Meta, zset: &str) -> MemberScan {
        MemberScan::of(meta, "ZSCAN", format!("{}{zset}", meta.prefix()))
    }

    /// HSCAN of the volume's hash `hash` (name without the prefix).
    pub fn hash(meta: &Meta, hash: &str) -> MemberScan {
        MemberScan::of(meta, "HSCAN", format!("{}{hash}", meta.prefix()))
    }

    fn of(meta: &Meta, cmd: &'static str, key: String) -> MemberScan {
        MemberScan {
            conn: meta.maintenance_conn(),
            cmd,
            key,
            cursor: 0,
            done: false,
            server: None,
        }
    }

    /// The next page (maybe empty), None at the end.
    pub async fn next_page(&mut self) -> Result<Option<Vec<Vec<u8>>>> {
        if self.done {
            return Ok(None);
        }
        let (next, flat, server) = crate::meta::member_scan_step(
            &mut self.conn,
            self.cmd,
            &self.key,
            self.cursor,
            SCAN_COUNT,
        )
        .await?;
        if server.is_empty() {
            return Err(MetaError::Redis {
                msg: format!(
                    "the Redis user may not run INFO, so a walk of {} cannot tell a \
                     failover from a complete answer: grant +info (README, ACL)",
                    self.key
                ),
                transient: false,
            });
        }
        same_server(&mut self.server, server)?;
        if flat.len() % 2 != 0 {
            return Err(MetaError::Corrupt(format!(
                "{} of {}: reply of odd length",
                self.cmd, self.key
            )));
        }
        self.cursor = next;
        self.done = next == 0;
        Ok(Some(flat))
    }
}

/// Escapes glob metacharacters of a volume prefix for SCAN MATCH.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `c<ino>_<indx>` -> (ino, indx).
pub fn parse_chunk_key(k: &str) -> Option<(u64, u64)> {
    let (a, b) = k.strip_prefix('c')?.split_once('_')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// `<kind><number>` -> number.
pub fn parse_num_key(k: &str, kind: char) -> Option<u64> {
    k.strip_prefix(kind)?.parse().ok()
}

/// The slice lists of a batch of chunk keys (prefix-less), one round trip.
pub async fn read_chunks(meta: &Meta, keys: &[String]) -> Result<Vec<Vec<Slice>>> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("LRANGE")
            .arg(format!("{}{k}", meta.prefix()))
            .arg(0)
            .arg(-1);
    }
    let raw: Vec<Vec<Vec<u8>>> = pipe
        .query_async(&mut meta.maintenance_conn())
        .await
        .map_err(redis_err)?;
    raw.iter()
        .map(|l| l.iter().map(|b| Slice::decode(b)).collect())
        .collect()
}

/// The attributes of a batch of inode keys (prefix-less) as raw records
/// (None: gone meanwhile), one round trip.
pub async fn read_raw(meta: &Meta, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
    let full: Vec<String> = keys
        .iter()
        .map(|k| format!("{}{k}", meta.prefix()))
        .collect();
    redis::cmd("MGET")
        .arg(&full)
        .query_async(&mut meta.maintenance_conn())
        .await
        .map_err(redis_err)
}

/// Every member of a sorted set of the volume, in pages (ZSCAN), with scores.
pub async fn zset_members(meta: &Meta, zset: &str) -> Result<Vec<(Vec<u8>, f64)>> {
    let mut walk = MemberScan::zset(meta, zset);
    let mut out = Vec::new();
    while let Some(flat) = walk.next_page().await? {
        let mut it = flat.into_iter();
        while let (Some(member), Some(score)) = (it.next(), it.next()) {
            let score = std::str::from_utf8(&score)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| MetaError::Corrupt(format!("{zset}: score {score:?}")))?;
            out.push((member, score));
        }
    }
    Ok(out)
}

/// Names of the volume's keys matching a literal prefix plus `*` (e.g.
/// every session's upload journal `uploads*`), prefix-less.
pub async fn keys_like(meta: &Meta, start: &str) -> Result<Vec<String>> {
    let mut walk = KeyScan::starting(meta, start);
    let mut out = Vec::new();
    while let Some(keys) = walk.next_batch().await? {
        out.extend(keys);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Slice ids that hold objects, as a sorted, deduplicated list (8 bytes
/// per slice: a volume of a million 64 MiB files needs 8 MB here).
#[derive(Debug, Default)]
pub struct SliceSet {
    ids: Vec<u64>,
}

impl SliceSet {
    pub fn push(&mut self, id: u64) {
        if id != 0 && !is_inline(id) {
            self.ids.push(id);
        }
    }

    /// Sorts and drops duplicates: call once everything is pushed.
    pub fn seal(&mut self) {
        self.ids.sort_unstable();
        self.ids.dedup();
    }

    pub fn contains(&self, id: u64) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What [`referenced_slices`] looked at.
#[derive(Debug, Default)]
pub struct RefStats {
    pub chunks: u64,
    pub records: u64,
    pub uploading: u64,
    pub deferred: u64,
}

/// Every slice id some metadata still names: upload journals of sessions
/// (uploads not committed yet, or handed to the deleter at cleanup),
/// chunk lists (live files, open-but-unlinked files, deleted files whose
/// objects the deleter has not freed yet, trash), and the deferred
/// deletion queue. Read in that order: a slice moves from a journal to a
/// chunk list to the queue, each move atomic, so reading the places in the
/// order slices move through them never misses one that existed when the
/// scan started. Slices newer than that are protected by gc's age window.
pub async fn referenced_slices(
    meta: &Meta,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(SliceSet, RefStats)> {
    let mut set = SliceSet::default();
    let mut st = RefStats::default();
    for k in keys_like(meta, "uploads").await? {
        for (m, _) in zset_members(meta, &k).await? {
            if let Some(id) = std::str::from_utf8(&m).ok().and_then(|s| s.parse().ok()) {
                set.push(id);
                st.uploading += 1;
            }
        }
    }
    let mut scan = KeyScan::new(meta, "c");
    while let Some(keys) = scan.next_batch().await? {
        if keys.is_empty() {
            continue;
        }
        for l in read_chunks(meta, &keys).await? {
            st.chunks += 1;
            for s in l {
                st.records += 1;
                set.push(s.id);
            }
        }
        progress(st.chunks);
    }
    for (m, _) in zset_members(meta, "delslices").await? {
        if m.len() == SLICE_LEN {
            let s = Slice::decode(&m)?;
            set.push(s.id);
            st.deferred += 1;
        }
    }
    set.seal();
    Ok((set, st))
}

/// Deferred deletions still queued: (files, their bytes, slices, their bytes).
pub async fn pending_deletions(meta: &Meta) -> Result<(u64, u64, u64, u64)> {
    let (mut files, mut fbytes, mut slices, mut sbytes) = (0, 0, 0, 0);
    for (m, _) in zset_members(meta, "delfiles").await? {
        files += 1;
        if let Some(len) = std::str::from_utf8(&m)
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(_, l)| l.parse::<u64>().ok())
        {
            fbytes += len;
        }
    }
    for (m, _) in zset_members(meta, "delslices").await? {
        if let Ok(s) = Slice::decode(&m) {
            slices += 1;
            sbytes += s.size as u64;
        }
    }
    Ok((files, fbytes, slices, sbytes))
}

/// Decodes an inode record, naming the inode in the error.
pub fn decode_attr(ino: u64, b: &[u8]) -> Result<Attr> {
    Attr::decode(b).map_err(|e| MetaError::Corrupt(format!("inode {ino}: {e}")))
}

/// Runs a one-off Lua script (a repair: each is one atomic step).
pub async fn eval(
    meta: &Meta,
    script: &redis::Script,
    keys: &[String],
    args: &[Vec<u8>],
) -> Result<Value> {
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(format!("{}{k}", meta.prefix()));
    }
    for a in args {
        inv.arg(a.as_slice());
    }
    inv.invoke_async::<Value>(&mut meta.maintenance_conn())
        .await
        .map_err(redis_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse() {
        assert_eq!(parse_chunk_key("c12_3"), Some((12, 3)));
        assert_eq!(parse_chunk_key("c12"), None);
        assert_eq!(parse_num_key("i42", 'i'), Some(42));
        assert_eq!(parse_num_key("d42", 'i'), None);
        assert_eq!(glob_escape("{a*b}"), "{a\\*b}");
    }

    #[test]
    fn slice_sets_hold_object_slices_only() {
        let mut s = SliceSet::default();
        for id in [5, 0, 3, 5, crate::meta::INLINE_ID | 7] {
            s.push(id);
        }
        s.seal();
        assert_eq!(s.len(), 2);
        assert!(s.contains(3) && s.contains(5) && !s.contains(0) && !s.contains(7));
    }
}
