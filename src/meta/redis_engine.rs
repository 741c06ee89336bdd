//! The Redis engine. Key layout (every key carries the volume's hash tag, so
//! a Redis Cluster keeps a volume in one slot and the Lua scripts stay legal):
//!
//! | key                 | type   | holds                                        |
//! |---------------------|--------|----------------------------------------------|
//! | `{v}setting`        | string | the volume record (JSON, no secrets)         |
//! | `{v}i<ino>`         | string | packed attributes (72 bytes)                 |
//! | `{v}d<ino>`         | hash   | name -> type(1) + ino(8)                     |
//! | `{v}c<ino>_<chunk>` | list   | slice records (24 bytes each), oldest first  |
//! | `{v}b<slice id>`    | string | bytes of an inline slice (small files)       |
//! | `{v}s<ino>`         | string | symlink target                               |
//! | `{v}x<ino>`         | hash   | extended attributes                          |
//! | `{v}delfiles`       | zset   | `ino:length` of deleted files, by due time   |
//! | `{v}delslices`      | zset   | slice records no file uses, by drop time     |
//! | `{v}sessions`       | zset   | session id -> heartbeat expiry               |
//! | `{v}session<sid>`   | string | session info (JSON)                          |
//! | `{v}sustained<sid>` | set    | unlinked inodes the session still has open   |
//! | `{v}w<token>`       | string | a commit applied (idempotent retries; 1 h)   |
//! | `{v}uploads<sid>`   | zset   | slice ids the session is uploading, not yet  |
//! |                     |        | committed -> bytes uploaded (crash orphans)  |
//! | `{v}trashpurger`    | string | session id holding the trash-purge lease     |
//!
//! The trash is an ordinary directory tree under the reserved inode
//! `TRASH_INO` (`.trash` at the root, looked up by name only).
//!
//! Counters: `nextinode`, `nextslice`, `nextsession`, `usedSpace`, `totalInodes`.
//! Per file this costs one 72-byte string plus a 9-byte directory field.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{AsyncCommands, Script, Value};

use super::url::MetaUrl;
use super::{
    now, Attr, DirEntry, FileKind, Format, MetaError, Result, SetAttr, Slice, TimeSet, CHUNK_SIZE,
};

/// Flattens script arguments of mixed types into Redis argument bytes.
macro_rules! args {
    ($($x:expr),* $(,)?) => {{
        let mut v: Vec<Vec<u8>> = Vec::new();
        $( v.extend(redis::ToRedisArgs::to_redis_args($x)); )*
        v
    }};
}

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// A script and whether it runs under an operation marker: scripts whose
/// repetition would differ from one run (a create that happened answers
/// EEXIST the second time, an unlink ENOENT) are marked, so a retry after a
/// lost reply returns the first attempt's reply instead of applying twice.
/// Reads and naturally repeatable scripts run plain.
struct Lua {
    script: Script,
    marked: bool,
}

struct Scripts {
    lookup: Lua,
    mknod: Lua,
    unlink: Lua,
    rmdir: Lua,
    rename: Lua,
    link: Lua,
    setattr: Lua,
    truncate: Lua,
    write: Script,
    compact: Lua,
    fallocate: Lua,
    setxattr: Lua,
    release: Lua,
    claim_due: Lua,
    release_due: Lua,
    abandon: Lua,
    journal: Lua,
    format: Lua,
    setlk: Lua,
    getlk: Lua,
    clean_session: Lua,
    renew_session: Lua,
    expired_sessions: Lua,
    remove_batch: Lua,
    lease: Lua,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}\n{body}"))
}

fn plain(body: &str) -> Lua {
    Lua {
        script: script(body),
        marked: false,
    }
}

/// KEYS[2] is the operation's marker (its reply, kept for an hour after
/// success); KEYS[3..] are markers of earlier operations whose replies
/// arrived, deleted here so markers do not pile up.
fn marked(body: &str) -> Lua {
    Lua {
        script: Script::new(&format!(
            "{PRELUDE}\n\
             for i = 3, #KEYS do redis.call(\"DEL\", KEYS[i]) end\n\
             local OPMARK = KEYS[2]\n\
             if OPMARK then\n\
               local seen = redis.call(\"GET\", OPMARK)\n\
               if seen then return cmsgpack.unpack(seen) end\n\
             end\n\
             local function op()\n{body}\nend\n\
             local r = op()\n\
             if OPMARK and r[1] == 0 then redis.call(\"SET\", OPMARK, cmsgpack.pack(r), \"EX\", 3600) end\n\
             return r"
        )),
        marked: true,
    }
}

impl Scripts {
    fn new() -> Self {
        let s = Self::build();
        let names = [
            ("lookup", &s.lookup.script),
            ("mknod", &s.mknod.script),
            ("unlink", &s.unlink.script),
            ("rmdir", &s.rmdir.script),
            ("rename", &s.rename.script),
            ("link", &s.link.script),
            ("setattr", &s.setattr.script),
            ("truncate", &s.truncate.script),
            ("write", &s.write),
            ("compact", &s.compact.script),
            ("fallocate", &s.fallocate.script),
            ("setxattr", &s.setxattr.script),
            ("release", &s.release.script),
            ("claim_due", &s.claim_due.script),
            ("release_due", &s.release_due.script),
            ("abandon", &s.abandon.script),
            ("journal", &s.journal.script),
            ("format", &s.format.script),
            ("setlk", &s.setlk.script),
            ("getlk", &s.getlk.script),
            ("clean_session", &s.clean_session.script),
            ("renew_session", &s.renew_session.script),
            ("expired_sessions", &s.expired_sessions.script),
        ];
        let _ = SCRIPT_NAMES.set(
            names
                .iter()
                .map(|(n, sc)| (sc.get_hash().to_string(), *n))
                .collect(),
        );
        s
    }

    fn build() -> Self {
        Scripts {
            lookup: plain(include_str!("lua/lookup.lua")),
            mknod: marked(include_str!("lua/mknod.lua")),
            unlink: marked(include_str!("lua/unlink.lua")),
            rmdir: marked(include_str!("lua/rmdir.lua")),
            rename: marked(include_str!("lua/rename.lua")),
            link: marked(include_str!("lua/link.lua")),
            setattr: marked(include_str!("lua/setattr.lua")),
            truncate: marked(include_str!("lua/truncate.lua")),
            write: script(include_str!("lua/write.lua")),
            compact: marked(include_str!("lua/compact.lua")),
            fallocate: marked(include_str!("lua/fallocate.lua")),
            setxattr: marked(include_str!("lua/setxattr.lua")),
            release: marked(include_str!("lua/release.lua")),
            claim_due: marked(include_str!("lua/claim_due.lua")),
            release_due: plain(include_str!("lua/release_due.lua")),
            abandon: plain(include_str!("lua/abandon.lua")),
            journal: plain(include_str!("lua/journal.lua")),
            format: marked(include_str!("lua/format.lua")),
            setlk: marked(include_str!("lua/setlk.lua")),
            getlk: plain(include_str!("lua/getlk.lua")),
            clean_session: marked(include_str!("lua/clean_session.lua")),
            renew_session: plain(include_str!("lua/renew_session.lua")),
            expired_sessions: plain(include_str!("lua/expired_sessions.lua")),
            // Repeating a batch only finds its entries gone: plain.
            remove_batch: plain(include_str!("lua/remove_batch.lua")),
            lease: plain(include_str!("lua/lease.lua")),
        }
    }
}

/// Ids handed out from a Redis counter in batches, to spare a round trip per file.
struct IdBatch {
    next: u64,
    end: u64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub sid: u64,
    pub host: String,
    pub pid: u32,
    pub mountpoint: String,
    pub version: String,
    pub start: i64,
    pub read_only: bool,
    #[serde(default)]
    pub expire: i64,
    /// Address the mount serves Prometheus metrics on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// What a commit did: the file's attributes after it, per chunk touched how
/// many records it keeps, and the records it dropped as hidden.
pub struct Committed {
    pub attr: Attr,
    pub kept: Vec<(u64, usize)>,
    pub dropped: Vec<Slice>,
}

/// Slices in flight tracked for `journal_upload`'s session check.
const MAX_JOURNAL_SESSIONS: usize = 100_000;

pub struct Meta {
    target: Arc<Target>,
    conn: TimedConn,
    /// This mount's session id (0 before registration), sent with every
    /// script so change events and locks name their origin.
    sid: AtomicU64,
    prefix: String,
    scripts: Scripts,
    inodes: Mutex<IdBatch>,
    slices: Mutex<IdBatch>,
    /// Tokens of commits that succeeded, whose idempotency markers the next
    /// commit deletes.
    commit_markers: Mutex<Vec<u64>>,
    /// Operation markers: this connection's random prefix, the next number, and
    /// markers of operations whose replies arrived (the next marked script
    /// deletes them).
    op_nonce: u64,
    op_seq: AtomicU64,
    op_markers: Mutex<Vec<String>>,
    /// The session each slice still being uploaded had its first block
    /// journaled under. A slice whose blocks span two sessions is refused:
    /// the first session's cleanup may have handed its earlier blocks to
    /// the deleter, and the commit's journal check sees only the last one.
    journal_sessions: Mutex<HashMap<u64, u64>>,
    meta_timeout_ms: AtomicU64,
    /// `--meta-wait-replicas`: replicas that must hold a change before it
    /// is acknowledged (0: do not wait).
    wait_replicas: AtomicU64,
}

/// A connection whose requests have a deadline each and are retried while
/// Redis is unreachable, for at most `retry_for` in all: an outage becomes a
/// bounded wait and then a transient error, never a hang. Retries resend
/// the same bytes, so they are safe for reads, for marked scripts (see
/// [`Lua`]) and for commits (their token).
#[derive(Clone)]
pub struct TimedConn {
    inner: Link,
    call_timeout: Duration,
    retry_for: Duration,
}

fn deadline_passed(timeout: Duration) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer within {timeout:?}"),
    ))
}

/// Worth another attempt: the request may not have reached a working Redis.
fn retryable(e: &redis::RedisError) -> bool {
    // A reconnect to a Redis still loading its data fails in SELECT, as a
    // plain response error whose detail says LOADING.
    let loading = e.detail().is_some_and(|d| d.contains("LOADING"));
    // A WAIT sent to a cluster slot's master by a slot map that lags a
    // failover can reach the old master, back as a replica of the new one.
    let replica = e
        .detail()
        .is_some_and(|d| d.contains("WAIT cannot be used with replica"));
    loading
        || replica
        // A cluster whose slot map is being rebuilt (a node gone or moved).
        // MOVED/ASK reach here when the client's own few redirects ran out:
        // in a failover, the other nodes name the dead master until its
        // replica takes over. The command did not run; the client has
        // asked for a new slot map meanwhile.
        || matches!(
            e.kind(),
            redis::ErrorKind::ClusterConnectionNotFound
                | redis::ErrorKind::ClusterDown
                | redis::ErrorKind::TryAgain
                | redis::ErrorKind::Moved
                | redis::ErrorKind::Ask
        )
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.code(),
            Some("LOADING" | "TRYAGAIN" | "BUSY" | "MASTERDOWN" | "READONLY" | "CLUSTERDOWN")
        )
}

/// Server answers that mean "not now" (loading its data after a restart,
/// failing over, busy with a script). They arrive as values, not errors:
/// the caller's conversion would turn them into EIO without a retry.
fn busy_answer(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => matches!(
            e.code(),
            "LOADING"
                | "TRYAGAIN"
                | "BUSY"
                | "MASTERDOWN"
                | "READONLY"
                | "CLUSTERDOWN"
                | "MOVED"
                | "ASK"
        ),
        Value::Array(items) => items.iter().any(busy_answer),
        _ => false,
    }
}

impl TimedConn {
    async fn with_retries<T, F, Fut>(
        &self,
        busy: impl Fn(&T) -> bool,
        mut attempt: F,
    ) -> redis::RedisResult<T>
    where
        F: FnMut(Link) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let start = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let left = self.retry_for.saturating_sub(start.elapsed());
            let t = self.call_timeout.min(left.max(Duration::from_millis(100)));
            let r = match tokio::time::timeout(t, attempt(self.inner.clone())).await {
                Ok(r) => r,
                Err(_) => {
                    self.inner.timed_out().await;
                    Err(deadline_passed(t))
                }
            };
            let again = match &r {
                Err(e) => retryable(e),
                Ok(v) => busy(v),
            };
            if !again || start.elapsed() + backoff >= self.retry_for {
                return r;
            }
            crate::metrics::META_RETRIES.add(1);
            if let Err(e) = &r {
                tracing::debug!(error = %e, "Redis request failed; retrying");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

impl TimedConn {
    /// Runs a script (EVALSHA, and on NOSCRIPT a SCRIPT LOAD and EVALSHA
    /// again, as `invoke_async` does), trying again while the answer stays
    /// NOSCRIPT, within the retry budget. After a cluster failover the
    /// promoted replica has none of the scripts (Redis does not replicate
    /// SCRIPT LOAD), and until the client's slot map follows, the SCRIPT
    /// LOAD (sent to the slot's master in that map, or to a random node
    /// when that master cannot be reached: the cluster client's fallback)
    /// can land on another node than the EVALSHA, which follows MOVED.
    /// NOSCRIPT means the script did not run, so another attempt is safe.
    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &mut self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> redis::RedisResult<T> {
        let start = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(20);
        loop {
            let r = inv.invoke_async(self).await;
            match &r {
                Err(e)
                    if e.kind() == redis::ErrorKind::NoScriptError
                        && start.elapsed() + backoff < self.retry_for =>
                {
                    tracing::debug!("script missing after loading it; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                _ => return r,
            }
        }
    }
}

/// Script names by SHA1, for the latency metrics (EVALSHA names only the hash).
static SCRIPT_NAMES: std::sync::OnceLock<std::collections::HashMap<String, &'static str>> =
    std::sync::OnceLock::new();

/// Command names seen, as static strings for metric labels (a handful:
/// the commands this module sends).
static COMMAND_NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

/// What a request is, for the latency metrics: the script's name for a
/// script, else the command (e.g. "GET", "HMGET").
fn command_kind(cmd: &redis::Cmd) -> &'static str {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        redis::Arg::Cursor => None,
    });
    let Some(name) = args.next() else {
        return "other";
    };
    if name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL") {
        let sha = args.next().and_then(|h| std::str::from_utf8(h).ok());
        return sha
            .and_then(|h| SCRIPT_NAMES.get()?.get(h).copied())
            .unwrap_or("script");
    }
    let Ok(name) = std::str::from_utf8(name) else {
        return "other";
    };
    let upper = name.to_ascii_uppercase();
    let Ok(mut seen) = COMMAND_NAMES.lock() else {
        return "other";
    };
    if let Some(n) = seen.iter().find(|n| **n == upper) {
        return n;
    }
    if seen.len() >= 64 || upper.len() > 24 {
        return "other";
    }
    // Leaked once per command name, at most 64 of them.
    let n: &'static str = Box::leak(upper.into_boxed_str());
    seen.push(n);
    n
}

/// A pipeline is named after its script if it runs one (a script load
/// and its first run), else "pipeline".
fn pipeline_kind(p: &redis::Pipeline) -> &'static str {
    p.cmd_iter()
        .map(command_kind)
        .find(|k| {
            SCRIPT_NAMES
                .get()
                .is_some_and(|m| m.values().any(|v| v == k))
        })
        .unwrap_or("pipeline")
}

impl redis::aio::ConnectionLike for TimedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        let kind = command_kind(cmd);
        Box::pin(async move {
            let t = std::time::Instant::now();
            let r = self
                .with_retries(busy_answer, move |l| l.command(cmd))
                .await;
            crate::metrics::observe_meta(kind, t.elapsed());
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        let kind = pipeline_kind(cmd);
        Box::pin(async move {
            let t = std::time::Instant::now();
            let r = self
                .with_retries(
                    |v: &Vec<Value>| v.iter().any(busy_answer),
                    move |l| l.commands(cmd, offset, count),
                )
                .await;
            crate::metrics::observe_meta(kind, t.elapsed());
            r
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Link::Fixed(m) => m.get_db(),
            Link::Sentinel(r) => r.target.url.info.redis.db,
            Link::Cluster(_) => 0,
        }
    }
}

/// Deadline of one Redis request, reconnecting included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a metadata request is retried while Redis is unreachable
/// before the operation fails with EIO (`--meta-timeout`).
pub const DEFAULT_META_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest a WAIT blocks the connection in one round (milliseconds).
const WAIT_ROUND_MS: u64 = 500;

/// Longest pause between attempts, so a returning Redis is noticed within
/// about a second.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// The server's run id ("" when the user may not run INFO). Keyless: it
/// goes wherever the pipeline it rides in goes, and a cluster never
/// redirects it (keyed, it bounced between the two nodes of a slot under
/// migration, where ASKING covers only the command after it).
const RUN_ID: &str = r#"
local info = redis.pcall("INFO", "server")
if type(info) ~= "string" then return "" end
return string.match(info, "run_id:(%x+)") or ""
"#;

/// `cmd` ("HSCAN" or "ZSCAN") of `key` from `cursor`: the next cursor, the
/// flat field/value (or member/score) list and the answering server's run
/// id. A cursor means nothing to another server (a promoted replica, or
/// the same one restarted, hashes with another seed), so going on from it
/// after a failover would skip members silently: callers compare the ids.
/// The id is asked right after the scan in one pipeline, which goes to one
/// server on one connection (a cluster sends it to the volume's slot, and
/// on a redirect sends it whole again), so it names the server that
/// answered the scan. (Running the scan inside a script instead cost Redis
/// half as much again per entry.)
pub(crate) async fn member_scan_step(
    conn: &mut TimedConn,
    cmd: &str,
    key: &str,
    cursor: u64,
    count: usize,
) -> Result<(u64, Vec<Vec<u8>>, String)> {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    let run_id = S.get_or_init(|| redis::Script::new(RUN_ID));
    let mut pipe = redis::pipe();
    pipe.cmd(cmd).arg(key).arg(cursor).arg("COUNT").arg(count);
    pipe.cmd("EVALSHA").arg(run_id.get_hash()).arg(0);
    for _ in 0..3 {
        match pipe
            .query_async::<((u64, Vec<Vec<u8>>), String)>(conn)
            .await
        {
            Ok(((next, flat), server)) => return Ok((next, flat, server)),
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                // A restart or failover forgets scripts. SCRIPT goes where
                // the volume lives in a cluster, as the pipeline does.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(RUN_ID)
                    .query_async(conn)
                    .await
                    .map_err(redis_err)?;
            }
            Err(e) => return Err(redis_err(e)),
        }
    }
    Err(MetaError::Redis {
        msg: "Redis keeps answering NOSCRIPT for a script just loaded".into(),
        transient: true,
    })
}

/// Turns a Redis failure into a message that says what to do, without secrets.
pub(crate) fn redis_err(e: redis::RedisError) -> MetaError {
    let code = e.code().unwrap_or("");
    let denied = code == "WRONGPASS"
        || code == "NOAUTH"
        || code == "NOPERM"
        || e.kind() == redis::ErrorKind::AuthenticationFailed;
    let transient = !denied
        && (retryable(&e)
            || e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || matches!(
                code,
                "LOADING" | "TRYAGAIN" | "BUSY" | "MASTERDOWN" | "READONLY"
            ));
    let msg = if code == "NOPERM" {
        format!(
            "the Redis user lacks a permission vecfs needs ({e}): see the ACL rule in the \
             README, \"Redis high availability and security\""
        )
    } else if denied {
        "Redis refused the credentials: check the user and password in META-URL or META_PASSWORD"
            .to_string()
    } else if e.is_connection_refusal() {
        "cannot connect to Redis (connection refused): is redis-server running at that address?"
            .to_string()
    } else if e.is_timeout() {
        "Redis did not answer in time: check the address and the network".to_string()
    } else if e.is_io_error() {
        format!("cannot reach Redis: {e}")
    } else {
        format!("Redis error: {e}")
    };
    MetaError::Redis { msg, transient }
}

fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MetaError::Corrupt("expected an integer".into())),
        other => Err(MetaError::Corrupt(format!(
            "expected an integer, got {other:?}"
        ))),
    }
}

fn bytes(v: &Value) -> Result<&[u8]> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => Err(MetaError::Corrupt(format!("expected bytes, got {other:?}"))),
    }
}

/// Splits a script's `{errno, ...}` reply.
fn outcome(v: Value) -> Result<Vec<Value>> {
    let items = match v {
        Value::Array(items) => items,
        other => {
            return Err(MetaError::Corrupt(format!(
                "unexpected script reply {other:?}"
            )))
        }
    };
    let code = items
        .first()
        .map(int)
        .transpose()?
        .ok_or_else(|| MetaError::Corrupt("empty script reply".into()))?;
    if code != 0 {
        return Err(MetaError::Errno(code as i32));
    }
    Ok(items)
}

/// One connection with short timeouts, for checks that must fail fast:
/// to the one server, or a cluster connection (keyed commands go to the
/// node owning their slot).
async fn plain_connection(target: &Target) -> Result<PlainConn> {
    let explain = |e| connect_err(&target.url, e);
    if let Some(cc) = &target.cluster {
        let cfg = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(Duration::from_secs(5))
            .set_response_timeout(Duration::from_secs(10));
        return cc
            .get_async_connection_with_config(cfg)
            .await
            .map(PlainConn::Cluster)
            .map_err(explain);
    }
    let client = target.client().await.map_err(explain)?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(Duration::from_secs(10));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .map(PlainConn::Single)
        .map_err(explain)
}

/// What [`plain_connection`] gives.
enum PlainConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for PlainConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            PlainConn::Single(c) => c.req_packed_command(cmd),
            PlainConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            PlainConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            PlainConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            PlainConn::Single(c) => c.get_db(),
            PlainConn::Cluster(_) => 0,
        }
    }
}

/// The Redis Cluster hash slot of `key` (CRC16-XMODEM of its hash tag, the
/// part between the first `{` and the next `}` when not empty, mod 16384).
/// Every key of a volume carries the tag `{NAME}`, so a volume lives in
/// slot `key_slot("{NAME}")` whole.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(key) {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3fff
}

/// A failure to connect, explained for the URL's kind (TLS, sentinels).
fn connect_err(url: &MetaUrl, e: redis::RedisError) -> MetaError {
    let text = format!("{e:?}").to_lowercase();
    if url.uses_tls()
        && [
            "certificate",
            "unknownissuer",
            "tls",
            "handshake",
            "invalidcert",
        ]
        .iter()
        .any(|w| text.contains(w))
    {
        return MetaError::Redis {
            msg: format!(
                "TLS handshake with Redis failed ({e}): the server's certificate is not \
                 trusted. Give the CA that signed it with ?tls_ca=/path/ca.pem in META-URL \
                 (or ?insecure=true to skip verification, for tests only)"
            ),
            transient: false,
        };
    }
    if let Some(nodes) = &url.cluster {
        // The cluster client reports a refused password inside an I/O
        // error of its initial connections: by its text.
        let auth = matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
            || e.kind() == redis::ErrorKind::AuthenticationFailed
            || ["AuthenticationFailed", "WRONGPASS", "NOAUTH"]
                .iter()
                .any(|w| text.contains(&w.to_lowercase()));
        if auth && !matches!(e.code(), Some("NOPERM")) {
            return MetaError::Redis {
                msg: "the Redis Cluster refused the credentials: check the user and password \
                      in META-URL or META_PASSWORD"
                    .into(),
                transient: false,
            };
        }
        if !auth {
            let nodes: Vec<String> = nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            // The crate's message may list every node's failure on lines
            // of their own: one line here.
            let why = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            return MetaError::Redis {
                msg: format!(
                    "cannot reach the Redis Cluster through the nodes {}: {why} \
                     (check the addresses in the redis+cluster:// URL and that the \
                     cluster is up: CLUSTER INFO says cluster_state:ok)",
                    nodes.join(",")
                ),
                transient: true,
            };
        }
    }
    if let Some(s) = &url.sentinel {
        if !matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM")) {
            let nodes: Vec<String> = s.nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            return MetaError::Redis {
                msg: format!(
                    "cannot find the master '{}' through the sentinels {}: {e} \
                     (check the sentinel addresses, MASTER_NAME and SENTINEL_PASSWORD)",
                    s.master,
                    nodes.join(",")
                ),
                transient: true,
            };
        }
    }
    redis_err(e)
}

/// One connection attempt per reconnect: `TimedConn` retries with its own
/// short backoff and budget. (The manager's own retries wait at least a
/// second before the first one: its backoff starts at one second whatever
/// the factor.)
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(CALL_TIMEOUT)
        .set_number_of_retries(0)
}

/// Where the metadata server is: one fixed address, or whichever server
/// the sentinels name as master at the time of asking.
pub(crate) struct Target {
    url: MetaUrl,
    /// The client of a fixed address (None behind sentinels or a cluster).
    fixed: Option<redis::Client>,
    /// The client of a Redis Cluster (`redis+cluster://`).
    cluster: Option<redis::cluster::ClusterClient>,
}

fn conn_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(CALL_TIMEOUT)
}

impl Target {
    fn new(url: &MetaUrl) -> Result<Target> {
        if let Some(nodes) = &url.cluster {
            let seeds: Vec<redis::ConnectionInfo> =
                nodes.iter().map(|(h, p)| url.at(h.clone(), *p)).collect();
            // Few quick retries of its own (MOVED/ASK redirects, a slot map
            // being rebuilt); TimedConn retries the rest within its budget.
            let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
                .retries(4)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(CALL_TIMEOUT);
            if let Some(c) = &url.certs {
                b = b.certs(c.clone());
            }
            return Ok(Target {
                url: url.clone(),
                fixed: None,
                cluster: Some(b.build().map_err(redis_err)?),
            });
        }
        let fixed = match url.sentinel {
            Some(_) => None,
            None => Some(url.client_for(url.info.clone()).map_err(redis_err)?),
        };
        Ok(Target {
            url: url.clone(),
            fixed,
            cluster: None,
        })
    }

    /// A pub/sub connection to one of a cluster's listed nodes, trying
    /// them in turn: a classic PUBLISH reaches every node of a cluster,
    /// so any one will do.
    async fn cluster_pubsub(
        &self,
        nodes: &[(String, u16)],
    ) -> redis::RedisResult<redis::aio::PubSub> {
        let mut last = None;
        for (h, p) in nodes {
            let client = self.url.client_for(self.url.at(h.clone(), *p))?;
            match tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub()).await {
                Ok(Ok(ps)) => return Ok(ps),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(deadline_passed(Duration::from_secs(5))),
            }
            tracing::debug!(node = %format!("{h}:{p}"), "no pub/sub connection; trying the next node");
        }
        Err(last.unwrap_or_else(|| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "no cluster node given",
            ))
        }))
    }

    /// A client for the master now: behind sentinels, asks every sentinel
    /// that answers and follows the one with the newest configuration
    /// epoch (a sentinel that has not yet seen a failover names the old
    /// master, which may be back, empty, still calling itself master),
    /// then checks that server says it is a master.
    async fn client(&self) -> redis::RedisResult<redis::Client> {
        if let Some(c) = &self.fixed {
            return Ok(c.clone());
        }
        let Some(s) = &self.url.sentinel else {
            return self.url.client_for(self.url.info.clone());
        };
        let mut best: Option<(i64, String, u16)> = None;
        let mut last = None;
        for (host, port) in &s.nodes {
            match self
                .ask_sentinel(&s.master, host, *port, s.password.clone())
                .await
            {
                Ok(found) => {
                    if best.as_ref().is_none_or(|b| found.0 > b.0) {
                        best = Some(found);
                    }
                }
                Err(e) => {
                    tracing::debug!(sentinel = %format!("{host}:{port}"), error = %e, "sentinel gave no master");
                    last = Some(e);
                }
            }
        }
        let Some((_, mhost, mport)) = best else {
            return Err(last.unwrap_or_else(|| {
                redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no sentinel given",
                ))
            }));
        };
        let client = self.url.client_for(self.url.at(mhost.clone(), mport))?;
        let mut m = client
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut m).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(client),
            Some(Value::SimpleString(r)) if r == "master" => Ok(client),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "MASTERDOWN",
                format!("{mhost}:{mport}, named master by the sentinels, is not a master yet"),
            ))),
        }
    }

    /// One sentinel's view of the master: (config epoch, host, port).
    async fn ask_sentinel(
        &self,
        master: &str,
        host: &str,
        port: u16,
        password: Option<String>,
    ) -> redis::RedisResult<(i64, String, u16)> {
        let mut at = self.url.at(host.to_string(), port);
        // Sentinels have no databases and their own password.
        at.redis = redis::RedisConnectionInfo {
            password,
            ..Default::default()
        };
        let sc = self.url.client_for(at)?;
        let mut c = sc
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await?;
        let r: redis::RedisResult<std::collections::HashMap<String, String>> =
            redis::cmd("SENTINEL")
                .arg("master")
                .arg(master)
                .query_async(&mut c)
                .await;
        let unknown = || {
            redis::RedisError::from((
                redis::ErrorKind::ResponseError,
                "the sentinel knows no master of that name",
                format!("'{master}' at {host}:{port}: check MASTER_NAME in META-URL"),
            ))
        };
        let m = match r {
            Ok(m) => m,
            Err(e) if e.detail().is_some_and(|d| d.contains("No such master")) => {
                return Err(unknown())
            }
            Err(e) => return Err(e),
        };
        let field = |k: &str| m.get(k).cloned().ok_or_else(unknown);
        let epoch = field("config-epoch")?.parse().unwrap_or(0);
        let mport = field("port")?.parse().map_err(|_| unknown())?;
        Ok((epoch, field("ip")?, mport))
    }
}

/// The connection a [`TimedConn`] sends on.
#[derive(Clone)]
enum Link {
    /// A fixed address: the redis crate's manager reconnects to it.
    Fixed(ConnectionManager),
    /// Behind sentinels: a reconnect asks them where the master is now.
    Sentinel(Arc<Resolving>),
    /// A Redis Cluster: the crate's cluster connection follows MOVED/ASK
    /// and the slot map; `home` is the volume's slot, where keyless
    /// commands and pipelines go.
    Cluster(ClusterLink),
}

#[derive(Clone)]
struct ClusterLink {
    conn: ClusterConnection,
    home: u16,
}

impl ClusterLink {
    fn home_route(&self) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::SpecificNode(Route::new(self.home, SlotAddr::Master))
    }
}

/// Keyless commands that concern the volume and so must reach the node
/// that owns its slot: SCAN (each node scans only its own keys), WAIT
/// (counts the replicas of the node the writes went to), TIME (the clock
/// the scripts use), SCRIPT LOAD (for the EVALSHA that follows), PING. A
/// script called without keys would otherwise go to a random node too.
/// Everything else is routed by its key.
fn routes_home(cmd: &redis::Cmd) -> bool {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        redis::Arg::Simple(b) => Some(b),
        redis::Arg::Cursor => None,
    });
    let Some(name) = args.next() else {
        return false;
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("EVAL") || is("EVALSHA") {
        return args.nth(1).is_none_or(|n| n == b"0");
    }
    ["SCAN", "WAIT", "TIME", "SCRIPT", "PING"]
        .iter()
        .any(|n| is(n))
}

struct Resolving {
    target: Arc<Target>,
    /// The connection in use and its number; None after a failure, so the
    /// next request resolves the master again.
    slot: tokio::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: AtomicU64,
}

impl Resolving {
    async fn get(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut slot = self.slot.lock().await;
        if let Some((g, c)) = &*slot {
            return Ok((*g, c.clone()));
        }
        let client = self.target.client().await?;
        let c = client
            .get_multiplexed_async_connection_with_config(&conn_config())
            .await?;
        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *slot = Some((g, c.clone()));
        Ok((g, c))
    }

    /// Forgets connection `g` (None: whichever is current) after it failed
    /// or its server stopped being the master.
    async fn drop_conn(&self, g: Option<u64>) {
        let mut slot = self.slot.lock().await;
        if matches!(&*slot, Some((cur, _)) if g.is_none_or(|g| g == *cur)) {
            *slot = None;
        }
    }

    /// Whether a request's outcome says the server is gone or demoted.
    fn lost<T>(r: &redis::RedisResult<T>, demoted: impl Fn(&T) -> bool) -> bool {
        match r {
            Err(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || e.is_connection_dropped()
                    || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
            }
            Ok(v) => demoted(v),
        }
    }
}

fn demoted(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => matches!(e.code(), "READONLY" | "MASTERDOWN"),
        Value::Array(items) => items.iter().any(demoted),
        _ => false,
    }
}

impl Link {
    /// A connection for volume `prefix` (`{NAME}`: a cluster routes
    /// keyless commands to its slot).
    async fn new(target: &Arc<Target>, prefix: &str) -> Result<Link> {
        if let Some(cc) = &target.cluster {
            let conn = cc
                .get_async_connection()
                .await
                .map_err(|e| connect_err(&target.url, e))?;
            return Ok(Link::Cluster(ClusterLink {
                conn,
                home: key_slot(prefix.as_bytes()),
            }));
        }
        match &target.fixed {
            Some(client) => Ok(Link::Fixed(
                ConnectionManager::new_with_config(client.clone(), manager_config())
                    .await
                    .map_err(redis_err)?,
            )),
            None => Ok(Link::Sentinel(Arc::new(Resolving {
                target: target.clone(),
                slot: tokio::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
            }))),
        }
    }

    async fn command(self, cmd: &redis::Cmd) -> redis::RedisResult<Value> {
        match self {
            Link::Fixed(mut m) => m.send_packed_command(cmd).await,
            Link::Sentinel(r) => {
                let (g, mut c) = r.get().await?;
                let out = c.send_packed_command(cmd).await;
                if Resolving::lost(&out, demoted) {
                    r.drop_conn(Some(g)).await;
                }
                out
            }
            Link::Cluster(mut c) if routes_home(cmd) => {
                let to = RoutingInfo::SingleNode(c.home_route());
                c.conn.route_command(cmd, to).await
            }
            Link::Cluster(mut c) => {
                redis::aio::ConnectionLike::req_packed_command(&mut c.conn, cmd).await
            }
        }
    }

    async fn commands(
        self,
        p: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        match self {
            Link::Fixed(mut m) => m.send_packed_commands(p, offset, count).await,
            Link::Sentinel(r) => {
                let (g, mut c) = r.get().await?;
                let out = c.send_packed_commands(p, offset, count).await;
                if Resolving::lost(&out, |v: &Vec<Value>| v.iter().any(demoted)) {
                    r.drop_conn(Some(g)).await;
                }
                out
            }
            // Every pipeline of a volume holds its keys only (one slot).
            Link::Cluster(mut c) => {
                let to = c.home_route();
                c.conn.route_pipeline(p, offset, count, to).await
            }
        }
    }

    /// A request got no answer in time: behind sentinels the server may be
    /// unreachable for good, so the next attempt asks them again.
    async fn timed_out(&self) {
        if let Link::Sentinel(r) = self {
            r.drop_conn(None).await;
        }
    }
}

impl Meta {
    /// Connects and checks that Redis answers (and accepts the password).
    pub async fn connect(url: &MetaUrl, volume: &str) -> Result<Meta> {
        // A plain connection first: its failure carries the real reason,
        // where the manager would retry for a long time.
        let target = Arc::new(Target::new(url)?);
        let mut probe = plain_connection(&target).await?;
        let _: String = redis::cmd("PING")
            .query_async(&mut probe)
            .await
            .map_err(redis_err)?;
        let prefix = format!("{{{volume}}}");
        let conn = Link::new(&target, &prefix).await?;
        Ok(Meta {
            target,
            conn: TimedConn {
                inner: conn,
                call_timeout: CALL_TIMEOUT,
                retry_for: DEFAULT_META_TIMEOUT,
            },
            sid: AtomicU64::new(0),
            prefix,
            scripts: Scripts::new(),
            inodes: Mutex::new(IdBatch { next: 0, end: 0 }),
            slices: Mutex::new(IdBatch { next: 0, end: 0 }),
            commit_markers: Mutex::new(Vec::new()),
            op_nonce: rand::random(),
            op_seq: AtomicU64::new(0),
            op_markers: Mutex::new(Vec::new()),
            journal_sessions: Mutex::new(HashMap::new()),
            meta_timeout_ms: AtomicU64::new(DEFAULT_META_TIMEOUT.as_millis() as u64),
            wait_replicas: AtomicU64::new(0),
        })
    }

    /// After each metadata change, wait until `n` replicas hold it
    /// (`--meta-wait-replicas`), so an acknowledged change survives a
    /// failover to one of them.
    pub fn set_wait_replicas(&self, n: u64) {
        self.wait_replicas.store(n, Ordering::Relaxed);
    }

    /// Redis WAIT on `conn`, the connection the change went out on (WAIT
    /// covers that connection's writes): retried in short rounds, since
    /// a blocked WAIT holds up the connection's other requests, until the
    /// meta timeout. Not enough replicas in time: a transient error, so
    /// the change is not acknowledged (it may still be on the master).
    async fn await_replicas(&self, conn: &mut TimedConn) -> Result<()> {
        let n = self.wait_replicas.load(Ordering::Relaxed);
        if n == 0 {
            return Ok(());
        }
        let start = std::time::Instant::now();
        let budget = Duration::from_millis(self.meta_timeout_ms.load(Ordering::Relaxed));
        loop {
            let got: u64 = redis::cmd("WAIT")
                .arg(n)
                .arg(WAIT_ROUND_MS)
                .query_async(conn)
                .await
                .map_err(redis_err)?;
            if got >= n {
                return Ok(());
            }
            if start.elapsed() >= budget {
                return Err(MetaError::Redis {
                    msg: format!(
                        "only {got} of {n} Redis replicas acknowledged a change within \
                         {budget:?} (--meta-wait-replicas): are the replicas up?"
                    ),
                    transient: true,
                });
            }
        }
    }

    /// How long metadata requests are retried while Redis is unreachable.
    pub fn set_meta_timeout(&self, d: Duration) {
        self.meta_timeout_ms
            .store(d.as_millis() as u64, Ordering::Relaxed);
    }

    /// A connection of its own (the session heartbeat), so its requests
    /// never queue behind the mount's traffic, retried for `retry_for`.
    pub async fn own_connection(&self, retry_for: Duration) -> Result<TimedConn> {
        let inner = Link::new(&self.target, &self.prefix).await?;
        Ok(TimedConn {
            inner,
            call_timeout: CALL_TIMEOUT.min(retry_for.max(Duration::from_millis(200))),
            retry_for,
        })
    }

    /// Finds the only volume in this database when the caller did not name one.
    pub async fn find_volume(url: &MetaUrl) -> Result<Option<String>> {
        let mut c = plain_connection(&Target::new(url)?).await?;
        let names: Vec<String> = c.smembers("vecfs-volumes").await.map_err(|e| {
            if e.code() == Some("NOPERM") {
                MetaError::Redis {
                    msg: "this Redis user may not read the volume list (vecfs-volumes): \
                          give the volume name with --name"
                        .into(),
                    transient: false,
                }
            } else {
                redis_err(e)
            }
        })?;
        match names.len() {
            0 => Ok(None),
            1 => Ok(names.into_iter().next()),
            _ => Err(MetaError::Redis {
                msg: format!(
                    "this Redis database holds several volumes ({}): give the name with --name",
                    names.join(", ")
                ),
                transient: false,
            }),
        }
    }

    /// The volume's key prefix, its hash tag (`{name}`): the tools that
    /// walk every key of the volume (gc, fsck, info, dump, load, destroy).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A connection (deadlines and retries as every other call) for the
    /// tools' SCAN, pipelines and repair scripts.
    pub fn maintenance_conn(&self) -> TimedConn {
        self.conn()
    }

    pub fn sid(&self) -> u64 {
        self.sid.load(Ordering::Relaxed)
    }

    fn key(&self, k: &str) -> String {
        format!("{}{}", self.prefix, k)
    }

    fn ikey(&self, kind: char, ino: u64) -> String {
        format!("{}{}{}", self.prefix, kind, ino)
    }

    fn conn(&self) -> TimedConn {
        let mut c = self.conn.clone();
        c.retry_for = Duration::from_millis(self.meta_timeout_ms.load(Ordering::Relaxed));
        c
    }

    async fn run(&self, s: &Lua, args: Vec<Vec<u8>>) -> Result<Vec<Value>> {
        let mut conn = self.conn();
        let r = self.run_on(&mut conn, s, args).await?;
        // Marked scripts are the ones that change the namespace.
        if s.marked {
            self.await_replicas(&mut conn).await?;
        }
        Ok(r)
    }

    async fn run_on(
        &self,
        conn: &mut TimedConn,
        s: &Lua,
        args: Vec<Vec<u8>>,
    ) -> Result<Vec<Value>> {
        let (sec, ns) = now();
        let mut inv = s.script.key(self.key("setting"));
        let (mark, done) = if s.marked {
            let n = self.op_seq.fetch_add(1, Ordering::Relaxed);
            let mark = self.key(&format!("o{:x}_{n}", self.op_nonce));
            let done: Vec<String> = match self.op_markers.lock() {
                Ok(mut m) => {
                    let n = m.len().min(32);
                    m.drain(..n).collect()
                }
                Err(_) => Vec::new(),
            };
            inv.key(&mark);
            for d in &done {
                inv.key(d);
            }
            (Some(mark), done)
        } else {
            (None, Vec::new())
        };
        inv.arg(&self.prefix).arg(sec).arg(ns).arg(self.sid());
        for a in args {
            inv.arg(a);
        }
        let v = conn.invoke::<Value>(&inv).await.map_err(redis_err);
        if let (Some(mark), Ok(mut m)) = (mark, self.op_markers.lock()) {
            match &v {
                // Success leaves a marker; an errno reply or a failure may not.
                Ok(_) => m.push(mark),
                // Not known to be deleted: the next marked script tries again.
                Err(_) => m.extend(done),
            }
        }
        outcome(v?)
    }

    // ---- volume record -------------------------------------------------

    pub async fn load_format(&self) -> Result<Option<Format>> {
        let s: Option<String> = self
            .conn()
            .get(self.key("setting"))
            .await
            .map_err(redis_err)?;
        match s {
            None => Ok(None),
            Some(s) => serde_json::from_str(&s)
                .map(Some)
                .map_err(|e| MetaError::Corrupt(format!("volume record: {e}"))),
        }
    }

    /// Writes the volume record and, for a new volume, the root directory
    /// with `root_mode` (permission bits) owned by `uid`:`gid`; an existing
    /// root is kept as it is.
    pub async fn init(&self, f: &Format, root_mode: u16, uid: u32, gid: u32) -> Result<()> {
        let json = serde_json::to_string(f).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.run(&self.scripts.format, args![&json, &root_mode, &uid, &gid])
            .await?;
        // The database-wide list only spares `--name`: an ACL user kept to
        // the volume's keys may not write it, and needs no entry.
        let listed: redis::RedisResult<()> = self.conn().sadd("vecfs-volumes", &f.name).await;
        match listed {
            Err(e) if e.code() == Some("NOPERM") => {
                tracing::info!("volume not added to vecfs-volumes (ACL): mount with --name");
                Ok(())
            }
            r => r.map_err(redis_err),
        }
    }

    /// Changes the volume record atomically: `change` gets the stored record
    /// and returns the new one, written only if nobody changed the record
    /// meanwhile (compare-and-set on the stored JSON; a lost race reads it
    /// again). Returns (old, new).
    pub async fn update_format<F>(&self, change: F) -> Result<(Format, Format)>
    where
        F: Fn(&Format) -> Format,
    {
        let cas = Script::new(
            "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end \
             redis.call('SET', KEYS[1], ARGV[2]) return 1",
        );
        for _ in 0..20 {
            let raw: Option<String> = self
                .conn()
                .get(self.key("setting"))
                .await
                .map_err(redis_err)?;
            let Some(raw) = raw else {
                return Err(MetaError::Corrupt("the volume is not formatted".into()));
            };
            let old: Format = serde_json::from_str(&raw)
                .map_err(|e| MetaError::Corrupt(format!("volume record: {e}")))?;
            let new = change(&old);
            let json =
                serde_json::to_string(&new).map_err(|e| MetaError::Corrupt(e.to_string()))?;
            let mut inv = cas.key(self.key("setting"));
            inv.arg(&raw).arg(&json);
            let done: i64 = self.conn().invoke(&inv).await.map_err(redis_err)?;
            if done == 1 {
                return Ok((old, new));
            }
        }
        Err(MetaError::Redis {
            msg: "the volume record kept changing while it was updated: try again".into(),
            transient: true,
        })
    }

    // ---- ids -----------------------------------------------------------

    async fn next_id(&self, batch: &Mutex<IdBatch>, counter: &str, step: u64) -> Result<u64> {
        if let Ok(mut b) = batch.lock() {
            if b.next < b.end {
                b.next += 1;
                return Ok(b.next);
            }
        }
        let end: u64 = self
            .conn()
            .incr(self.key(counter), step)
            .await
            .map_err(redis_err)?;
        let mut b = batch
            .lock()
            .map_err(|_| MetaError::Corrupt("id allocator poisoned".into()))?;
        // Another task may have refilled meanwhile; take the newer range.
        b.next = end - step + 1;
        b.end = end;
        Ok(b.next)
    }

    pub async fn new_inode(&self) -> Result<u64> {
        self.next_id(&self.inodes, "nextinode", 100).await
    }

    pub async fn new_slice_id(&self) -> Result<u64> {
        self.next_id(&self.slices, "nextslice", 256).await
    }

    // ---- namespace -----------------------------------------------------

    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        let v: Option<Vec<u8>> = self
            .conn()
            .get(self.ikey('i', ino))
            .await
            .map_err(redis_err)?;
        match v {
            Some(b) => Attr::decode(&b),
            None => Err(MetaError::Errno(libc::ENOENT)),
        }
    }

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<(u64, Attr)> {
        let r = self
            .run(&self.scripts.lookup, args![&parent, &name])
            .await?;
        if r.len() < 3 {
            return Err(MetaError::Corrupt("short lookup reply".into()));
        }
        Ok((int(&r[1])? as u64, Attr::decode(bytes(&r[2])?)?))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        umask: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: &[u8],
        limits: (u64, u64),
    ) -> Result<(u64, Attr)> {
        let ino = self.new_inode().await?;
        let r = self
            .run(
                &self.scripts.mknod,
                args![
                    &parent,
                    &name,
                    &ino,
                    &(kind as u8),
                    &mode,
                    &umask,
                    &uid,
                    &gid,
                    &rdev,
                    &target,
                    &limits.1,
                    &limits.0,
                ],
            )
            .await?;
        Ok((ino, Attr::decode(bytes(r.get(1).unwrap_or(&Value::Nil))?)?))
    }

    /// Removes `name`; `open_here(ino)` says whether this node still has the
    /// inode open, in which case its data survives until the last close.
    pub async fn unlink(
        &self,
        parent: u64,
        name: &[u8],
        sid: u64,
        open_here: impl Fn(u64) -> bool,
        mut hint: Option<u64>,
    ) -> Result<(u64, u32)> {
        for _ in 0..16 {
            // The inode the name held when last looked up here: when it is
            // still right this saves a round trip; the script checks it.
            let ino = match hint.take() {
                Some(ino) => ino,
                None => self.lookup(parent, name).await?.0,
            };
            let keep = open_here(ino) as u8;
            match self
                .run(
                    &self.scripts.unlink,
                    args![&parent, &name, &ino, &keep, &sid],
                )
                .await
            {
                Err(MetaError::Errno(libc::EAGAIN)) => continue,
                Err(e) => return Err(e),
                Ok(r) => return Ok((ino, int(r.get(1).unwrap_or(&Value::Int(0)))? as u32)),
            }
        }
        Err(MetaError::Errno(libc::EBUSY))
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.run(&self.scripts.rmdir, args![&parent, &name]).await?;
        Ok(())
    }

    /// Renames; returns the moved inode and the inode it replaced (0 if none).
    #[allow(clippy::too_many_arguments)]
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
        sid: u64,
        open_here: impl Fn(u64) -> bool,
    ) -> Result<(u64, u64)> {
        for _ in 0..16 {
            let dst = match self.lookup(newparent, newname).await {
                Ok((ino, _)) => ino,
                Err(MetaError::Errno(libc::ENOENT)) => 0,
                Err(e) => return Err(e),
            };
            let keep = (dst != 0 && open_here(dst)) as u8;
            match self
                .run(
                    &self.scripts.rename,
                    args![&parent, &name, &newparent, &newname, &flags, &dst, &keep, &sid],
                )
                .await
            {
                Err(MetaError::Errno(libc::EAGAIN)) => continue,
                Err(e) => return Err(e),
                Ok(r) => return Ok((int(r.get(1).unwrap_or(&Value::Int(0)))? as u64, dst)),
            }
        }
        Err(MetaError::Errno(libc::EBUSY))
    }

    pub async fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<Attr> {
        let r = self
            .run(&self.scripts.link, args![&ino, &newparent, &newname])
            .await?;
        Attr::decode(bytes(r.get(1).unwrap_or(&Value::Nil))?)
    }

    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let v: Option<Vec<u8>> = self
            .conn()
            .get(self.ikey('s', ino))
            .await
            .map_err(redis_err)?;
        v.ok_or(MetaError::Errno(libc::ENOENT))
    }

    pub async fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let raw: Vec<(Vec<u8>, Vec<u8>)> = self
            .conn()
            .hgetall(self.ikey('d', ino))
            .await
            .map_err(redis_err)?;
        raw.into_iter()
            .map(|(name, v)| decode_entry(name, &v))
            .collect()
    }

    /// One page of a directory (HSCAN from `cursor`, about `count`
    /// entries): the cursor to go on from (0 once the scan is complete) and
    /// the run id of the server that answered ("" when the user may not run
    /// INFO). A small directory comes back whole in one page. A page may
    /// repeat an entry an earlier page gave if the hash was resized in
    /// between; a cursor from another server (a failover or restart in
    /// between) means nothing: the caller starts again from 0.
    pub async fn readdir_page(
        &self,
        ino: u64,
        cursor: u64,
        count: usize,
    ) -> Result<(u64, Vec<DirEntry>, String)> {
        let (next, flat, server) = member_scan_step(
            &mut self.conn(),
            "HSCAN",
            &self.ikey('d', ino),
            cursor,
            count,
        )
        .await?;
        if flat.len() % 2 != 0 {
            return Err(MetaError::Corrupt("HSCAN reply of odd length".into()));
        }
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(name), Some(v)) = (it.next(), it.next()) {
            out.push(decode_entry(name, &v)?);
        }
        Ok((next, out, server))
    }

    /// Attributes of many inodes in one round trip; missing ones are None.
    pub async fn getattrs(&self, inos: &[u64]) -> Result<Vec<Option<Attr>>> {
        if inos.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = inos.iter().map(|i| self.ikey('i', *i)).collect();
        let vals: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        vals.into_iter()
            .map(|v| v.map(|b| Attr::decode(&b)).transpose())
            .collect()
    }

    pub async fn setattr(&self, ino: u64, s: &SetAttr) -> Result<Attr> {
        let mut mask = 0u32;
        let (mut at, mut mt, mut ct) = ((0i64, 0u32), (0i64, 0u32), (0i64, 0u32));
        if s.mode.is_some() {
            mask |= 1;
        }
        if s.uid.is_some() {
            mask |= 2;
        }
        if s.gid.is_some() {
            mask |= 4;
        }
        match s.atime {
            Some(TimeSet::At(t)) => {
                mask |= 8;
                at = t;
            }
            Some(TimeSet::Now) => mask |= 16,
            None => {}
        }
        match s.mtime {
            Some(TimeSet::At(t)) => {
                mask |= 32;
                mt = t;
            }
            Some(TimeSet::Now) => mask |= 64,
            None => {}
        }
        if let Some(t) = s.ctime {
            mask |= 128;
            ct = t;
        }
        let r = self
            .run(
                &self.scripts.setattr,
                args![
                    &ino,
                    &mask,
                    &s.mode.unwrap_or(0),
                    &s.uid.unwrap_or(0),
                    &s.gid.unwrap_or(0),
                    &at.0,
                    &at.1,
                    &mt.0,
                    &mt.1,
                    &ct.0,
                    &ct.1,
                ],
            )
            .await?;
        Attr::decode(bytes(r.get(1).unwrap_or(&Value::Nil))?)
    }

    /// Sets the length; returns the attributes and the slices it dropped
    /// (whole chunks past the new end, journaled for deletion).
    pub async fn truncate(
        &self,
        ino: u64,
        length: u64,
        capacity: u64,
    ) -> Result<(Attr, Vec<Slice>)> {
        let r = self
            .run(&self.scripts.truncate, args![&ino, &length, &capacity])
            .await?;
        let attr = Attr::decode(bytes(r.get(1).unwrap_or(&Value::Nil))?)?;
        let dropped = r
            .iter()
            .skip(2)
            .map(|v| Slice::decode(bytes(v)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((attr, dropped))
    }

    pub async fn fallocate(
        &self,
        ino: u64,
        mode: i32,
        off: u64,
        len: u64,
        capacity: u64,
    ) -> Result<Attr> {
        let r = self
            .run(
                &self.scripts.fallocate,
                args![&ino, &mode, &off, &len, &capacity],
            )
            .await?;
        Attr::decode(bytes(r.get(1).unwrap_or(&Value::Nil))?)
    }

    // ---- data ----------------------------------------------------------

    pub async fn read_chunk(&self, ino: u64, indx: u64) -> Result<Vec<Slice>> {
        let raw: Vec<Vec<u8>> = self
            .conn()
            .lrange(format!("{}c{}_{}", self.prefix, ino, indx), 0, -1)
            .await
            .map_err(redis_err)?;
        raw.iter().map(|b| Slice::decode(b)).collect()
    }

    /// Commits slices (chunk index, slice) in order, in one atomic step, and
    /// drops the records they hide. Returns the new attributes, per chunk
    /// touched how many records it keeps (long lists want compaction), and
    /// the records dropped (their objects are deleted after the grace
    /// period; the writer drops them from its cache at once).
    /// Inline slices come with their bytes, stored in Redis in the same step.
    ///
    /// `token` (unique, e.g. the first slice id) makes the commit idempotent:
    /// a retry after a lost reply finds the marker the first attempt left
    /// and applies nothing. Markers of commits whose replies arrived are
    /// deleted by the next commit.
    pub async fn write_slices(
        &self,
        ino: u64,
        slices: &[(u64, Slice, Option<Vec<u8>>)],
        capacity: u64,
        token: u64,
    ) -> Result<Committed> {
        let done: Vec<u64> = match self.commit_markers.lock() {
            Ok(mut m) => {
                let n = m.len().min(64);
                m.drain(..n).collect()
            }
            Err(_) => Vec::new(),
        };
        let (sec, ns) = now();
        let mut inv = self.scripts.write.key(self.key("setting"));
        inv.arg(&self.prefix)
            .arg(sec)
            .arg(ns)
            .arg(self.sid())
            .arg(ino)
            .arg(capacity)
            .arg(token)
            .arg(done.len());
        for t in &done {
            inv.arg(*t);
        }
        for (indx, s, data) in slices {
            let end = indx * CHUNK_SIZE + s.pos as u64 + s.len as u64;
            inv.arg(*indx)
                .arg(&s.encode()[..])
                .arg(end)
                .arg(data.as_deref().unwrap_or(&[]));
        }
        let mut conn = self.conn();
        let mut v = conn.invoke(&inv).await.map_err(redis_err);
        if v.is_ok() {
            if let Err(e) = self.await_replicas(&mut conn).await {
                v = Err(e);
            }
        }
        if let Ok(mut m) = self.commit_markers.lock() {
            if v.is_ok() && token != 0 {
                m.push(token);
            }
            if v.is_err() {
                // Not known to be deleted: try again with the next commit.
                m.extend(done);
            }
        }
        let r = outcome(v?)?;
        self.forget_journal_sessions(slices.iter().map(|(_, s, _)| s.id));
        let attr = Attr::decode(bytes(r.get(1).unwrap_or(&Value::Nil))?)?;
        let mut kept = Vec::new();
        if let Some(Value::Array(l)) = r.get(2) {
            for pair in l.chunks(2) {
                if let [indx, n] = pair {
                    kept.push((int(indx)? as u64, int(n)? as usize));
                }
            }
        }
        let mut dropped = Vec::new();
        if let Some(Value::Array(l)) = r.get(3) {
            for rec in l {
                dropped.push(Slice::decode(bytes(rec)?)?);
            }
        }
        Ok(Committed {
            attr,
            kept,
            dropped,
        })
    }

    /// Replaces the first `old.len()` records of a chunk with `new` (a slice
    /// holding their bytes) if the chunk still starts with them. Returns
    /// false (and journals `new` for deletion) when the chunk changed.
    pub async fn compact_chunk(
        &self,
        ino: u64,
        indx: u64,
        old: &[Slice],
        new: &Slice,
    ) -> Result<bool> {
        let joined: Vec<u8> = old.iter().flat_map(|s| s.encode()).collect();
        // Referenced or handed to the deleter by the script either way.
        self.forget_journal_sessions(std::iter::once(new.id));
        let new = new.encode().to_vec();
        match self
            .run(&self.scripts.compact, args![&ino, &indx, &joined, &new])
            .await
        {
            Ok(_) => Ok(true),
            Err(MetaError::Errno(e)) if e == libc::EAGAIN => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The bytes of an inline slice.
    pub async fn read_inline(&self, id: u64) -> Result<Vec<u8>> {
        let v: Option<Vec<u8>> = self
            .conn()
            .get(self.ikey('b', id))
            .await
            .map_err(redis_err)?;
        v.ok_or_else(|| MetaError::Corrupt(format!("inline slice {id} has no bytes")))
    }

    // ---- xattrs --------------------------------------------------------

    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let v: Option<Vec<u8>> = self
            .conn()
            .hget(self.ikey('x', ino), name)
            .await
            .map_err(redis_err)?;
        match v {
            Some(v) => Ok(v),
            None => {
                self.getattr(ino).await?;
                Err(MetaError::Errno(libc::ENODATA))
            }
        }
    }

    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        self.getattr(ino).await?;
        self.conn()
            .hkeys(self.ikey('x', ino))
            .await
            .map_err(redis_err)
    }

    pub async fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        self.run(&self.scripts.setxattr, args![&ino, &name, &value, &flags])
            .await?;
        Ok(())
    }

    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let n: i64 = self
            .conn()
            .hdel(self.ikey('x', ino), name)
            .await
            .map_err(redis_err)?;
        if n == 0 {
            self.getattr(ino).await?;
            return Err(MetaError::Errno(libc::ENODATA));
        }
        Ok(())
    }

    // ---- space ---------------------------------------------------------

    /// (bytes used, inodes used)
    pub async fn usage(&self) -> Result<(u64, u64)> {
        let (s, i): (Option<i64>, Option<i64>) = redis::pipe()
            .get(self.key("usedSpace"))
            .get(self.key("totalInodes"))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok((s.unwrap_or(0).max(0) as u64, i.unwrap_or(0).max(0) as u64))
    }

    // ---- sessions and background deletion ------------------------------

    /// Registers a new session alive for `ttl` seconds (by Redis' clock).
    pub async fn register_session(&self, mut info: SessionInfo, ttl: i64) -> Result<u64> {
        let sid: u64 = self
            .conn()
            .incr(self.key("nextsession"), 1)
            .await
            .map_err(redis_err)?;
        info.sid = sid;
        self.renew_on(&mut self.conn(), &info, ttl, true).await?;
        self.sid.store(sid, Ordering::Relaxed);
        Ok(sid)
    }

    /// Keeps session `info.sid` alive for `ttl` more seconds, on `conn`.
    /// `Errno(ENOENT)`: the session is gone (another node cleaned it).
    pub async fn renew_session(
        &self,
        conn: &mut TimedConn,
        info: &SessionInfo,
        ttl: i64,
    ) -> Result<()> {
        self.renew_on(conn, info, ttl, false).await
    }

    async fn renew_on(
        &self,
        conn: &mut TimedConn,
        info: &SessionInfo,
        ttl: i64,
        create: bool,
    ) -> Result<()> {
        let json = serde_json::to_string(info).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.run_on(
            conn,
            &self.scripts.renew_session,
            args![&info.sid, &ttl, &json, &(create as u8)],
        )
        .await?;
        Ok(())
    }

    /// Ends a session: its locks and unlinked-but-open files go with it.
    /// Another node's session only once it expired by Redis' clock; `own`
    /// at this session's clean unmount. Returns false when it was not
    /// cleaned here (not expired, or another node already did).
    pub async fn clean_session(&self, sid: u64, own: bool) -> Result<bool> {
        let r = self
            .run(&self.scripts.clean_session, args![&sid, &(own as u8)])
            .await?;
        Ok(int(r.get(1).unwrap_or(&Value::Int(0)))? == 1)
    }

    /// Sessions whose expiry passed, by Redis' clock.
    pub async fn expired_sessions(&self) -> Result<Vec<u64>> {
        let r = self.run(&self.scripts.expired_sessions, Vec::new()).await?;
        match r.get(1) {
            Some(Value::Array(ids)) => ids.iter().map(|v| int(v).map(|i| i as u64)).collect(),
            _ => Ok(Vec::new()),
        }
    }

    // ---- locks -----------------------------------------------------------

    /// Sets (typ 0 read, 1 write) or clears (2) a byte-range lock; EAGAIN on conflict.
    pub async fn setlk(
        &self,
        ino: u64,
        owner: u64,
        typ: u32,
        start: u64,
        end: u64,
        pid: u32,
    ) -> Result<()> {
        self.run(
            &self.scripts.setlk,
            args![&ino, &owner, &typ, &start, &end, &pid],
        )
        .await?;
        Ok(())
    }

    /// The first lock of another owner that conflicts: (type, start, end, pid), type 2 if none.
    pub async fn getlk(
        &self,
        ino: u64,
        owner: u64,
        typ: u32,
        start: u64,
        end: u64,
    ) -> Result<(u32, u64, u64, u32)> {
        let r = self
            .run(&self.scripts.getlk, args![&ino, &owner, &typ, &start, &end])
            .await?;
        let get =
            |i: usize| -> Result<i64> { r.get(i).map(int).transpose().map(|v| v.unwrap_or(0)) };
        Ok((
            get(1)? as u32,
            get(2)? as u64,
            get(3)? as u64,
            get(4)? as u32,
        ))
    }

    // ---- change events ---------------------------------------------------

    /// Publishes session `sid`'s liveness probe on the change channel.
    pub async fn publish_probe(&self, sid: u64) -> Result<()> {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.key("events"))
            .arg(super::Event::probe(sid))
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// Subscribes to the volume's change channel.
    pub async fn subscribe(&self) -> Result<redis::aio::PubSub> {
        let mut ps = self.pubsub().await?;
        ps.subscribe(self.key("events")).await.map_err(redis_err)?;
        Ok(ps)
    }

    /// A pub/sub connection to the current master (in a cluster, to the
    /// first listed node that answers).
    async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        if let Some(nodes) = &self.target.url.cluster {
            return self
                .target
                .cluster_pubsub(nodes)
                .await
                .map_err(|e| connect_err(&self.target.url, e));
        }
        let client = self
            .target
            .client()
            .await
            .map_err(|e| connect_err(&self.target.url, e))?;
        client.get_async_pubsub().await.map_err(redis_err)
    }

    /// The Redis server's clock (seconds): what the scripts date things by.
    pub async fn server_time(&self) -> Result<i64> {
        let (s, _us): (i64, i64) = redis::cmd("TIME")
            .query_async(&mut self.conn())
            .await
            .map_err(redis_err)?;
        Ok(s)
    }

    /// Sessions registered (live, or expired and not cleaned yet): one ZCARD.
    pub async fn session_count(&self) -> Result<u64> {
        self.conn()
            .zcard(self.key("sessions"))
            .await
            .map_err(redis_err)
    }

    /// Checks at mount that this Redis user may use the change channel:
    /// every change publishes on it (a writer without the right fails each
    /// change) and listeners subscribe to it (a reader without it would
    /// silently miss other nodes' changes). An empty message is ignored by
    /// listeners.
    pub async fn check_channel(&self, publish: bool, subscribe: bool) -> Result<()> {
        let channel = self.key("events");
        let explain = |e: redis::RedisError| -> MetaError {
            if e.code() == Some("NOPERM") {
                MetaError::Redis {
                    msg: format!(
                        "the Redis user may not use the change-event channel {channel} ({e}): \
                         add '&{channel}' (or '&{prefix}*') to its ACL rule, see \
                         \"Redis high availability and security\" in the README",
                        prefix = self.prefix
                    ),
                    transient: false,
                }
            } else {
                redis_err(e)
            }
        };
        if publish {
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg("")
                .query_async(&mut self.conn())
                .await
                .map_err(explain)?;
        }
        if subscribe {
            let mut ps = self.pubsub().await?;
            ps.subscribe(&channel).await.map_err(explain)?;
        }
        Ok(())
    }

    pub async fn list_sessions(&self) -> Result<Vec<SessionInfo>> {
        let sids: Vec<(u64, i64)> = self
            .conn()
            .zrange_withscores(self.key("sessions"), 0, -1)
            .await
            .map_err(redis_err)?;
        let mut out = Vec::new();
        for (sid, expire) in sids {
            let s: Option<String> = self
                .conn()
                .get(self.key(&format!("session{sid}")))
                .await
                .map_err(redis_err)?;
            if let Some(s) = s {
                if let Ok(i) = serde_json::from_str::<SessionInfo>(&s) {
                    out.push(SessionInfo { expire, ..i });
                }
            }
        }
        Ok(out)
    }

    /// The last local handle of an unlinked inode closed: drop it for good.
    pub async fn release_sustained(&self, ino: u64, sid: u64) -> Result<()> {
        self.run(&self.scripts.release, args![&ino, &sid]).await?;
        Ok(())
    }

    // ---- pending uploads and deferred deletion --------------------------

    /// Journals that this session is about to upload a block of slice `id`
    /// ending `end` bytes into the slice, before the upload starts: should
    /// the session die before the commit, its cleanup finds the object.
    /// The score keeps the furthest end (ZADD GT), which gives the slice's
    /// size whatever order its blocks are uploaded in.
    ///
    /// Fails with EIO (for good) when this slice's earlier blocks were
    /// journaled under a session this node has since replaced.
    pub async fn journal_upload(&self, id: u64, end: u64) -> Result<()> {
        let sid = self.sid();
        if let Ok(mut m) = self.journal_sessions.lock() {
            if m.len() >= MAX_JOURNAL_SESSIONS && !m.contains_key(&id) {
                // Leftovers of slices never committed or abandoned; those
                // in flight lose the check, not their data.
                m.clear();
            }
            match m.entry(id) {
                std::collections::hash_map::Entry::Occupied(e) if *e.get() != sid => {
                    tracing::warn!(
                        slice = id,
                        first = *e.get(),
                        now = sid,
                        "slice started under a session that was replaced; its data cannot be committed"
                    );
                    return Err(MetaError::Errno(libc::EIO));
                }
                std::collections::hash_map::Entry::Occupied(_) => {}
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(sid);
                }
            }
        }
        self.run(&self.scripts.journal, args![&id, &end]).await?;
        Ok(())
    }

    fn forget_journal_sessions(&self, ids: impl Iterator<Item = u64>) {
        if let Ok(mut m) = self.journal_sessions.lock() {
            for id in ids {
                m.remove(&id);
            }
        }
    }

    /// Slices this session uploaded (some blocks of) and will never commit:
    /// their journal entries become deleted-slice records.
    pub async fn abandon_uploads(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.forget_journal_sessions(ids.iter().copied());
        let mut a = Vec::with_capacity(ids.len());
        for id in ids {
            a.extend(redis::ToRedisArgs::to_redis_args(id));
        }
        self.run(&self.scripts.abandon, a).await?;
        Ok(())
    }

    /// Claims up to `limit` members of `zset` (`delfiles` or `delslices`)
    /// whose `grace` ended, for `lease` seconds: other nodes skip them.
    pub async fn claim_due(
        &self,
        zset: &str,
        grace: i64,
        lease: i64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        let r = self
            .run(
                &self.scripts.claim_due,
                args![&zset, &grace, &lease, &(limit as u64)],
            )
            .await?;
        match r.get(1) {
            Some(Value::Array(items)) => {
                items.iter().map(|v| bytes(v).map(<[u8]>::to_vec)).collect()
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Gives claimed members back, due again in `delay` seconds.
    pub async fn release_due(
        &self,
        zset: &str,
        grace: i64,
        delay: i64,
        members: &[Vec<u8>],
    ) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut a = args![&zset, &grace, &delay];
        for m in members {
            a.push(m.clone());
        }
        self.run(&self.scripts.release_due, a).await?;
        Ok(())
    }

    /// Every slice record of each deleted file `(ino, length)`, one round trip.
    pub async fn deleted_files_slices(&self, files: &[(u64, u64)]) -> Result<Vec<Vec<Slice>>> {
        let mut p = redis::pipe();
        let mut counts = Vec::with_capacity(files.len());
        for (ino, length) in files {
            let chunks = length.div_ceil(CHUNK_SIZE);
            counts.push(chunks as usize);
            for indx in 0..chunks {
                p.lrange(format!("{}c{}_{}", self.prefix, ino, indx), 0, -1);
            }
        }
        let lists: Vec<Vec<Vec<u8>>> = p.query_async(&mut self.conn()).await.map_err(redis_err)?;
        let mut lists = lists.into_iter();
        let mut out = Vec::with_capacity(files.len());
        for n in counts {
            let mut slices = Vec::new();
            for raw in lists.by_ref().take(n) {
                for b in raw {
                    slices.push(Slice::decode(&b)?);
                }
            }
            out.push(slices);
        }
        Ok(out)
    }

    /// Deleted files whose objects are gone: their chunk lists and queue
    /// entries go, in one atomic step.
    pub async fn finish_deleted_files(&self, files: &[(u64, u64)]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut p = redis::pipe();
        p.atomic();
        for (ino, length) in files {
            for indx in 0..length.div_ceil(CHUNK_SIZE) {
                p.del(format!("{}c{}_{}", self.prefix, ino, indx)).ignore();
            }
            p.zrem(self.key("delfiles"), format!("{ino}:{length}"))
                .ignore();
        }
        let _: () = p.query_async(&mut self.conn()).await.map_err(redis_err)?;
        Ok(())
    }

    /// Entries of `zset` (`delfiles`, `delslices`) that are done.
    pub async fn remove_due(&self, zset: &str, members: &[Vec<u8>]) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .conn()
            .zrem(self.key(zset), members)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// Drops the bytes of inline slices no file refers to.
    pub async fn delete_inlines(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.ikey('b', *id)).collect();
        let _: i64 = self.conn().del(keys).await.map_err(redis_err)?;
        Ok(())
    }

    // ---- bulk removal and the trash -------------------------------------

    /// Removes entries `(name, expected ino)` of directory `parent` in one
    /// atomic step (remove_batch.lua): files lose a link, empty directories
    /// go. `purge`: the trash purge (files whose ctime is after `cutoff`
    /// stay; nothing goes to the trash again). Returns (files, dirs,
    /// skipped).
    pub async fn remove_entries(
        &self,
        parent: u64,
        purge: bool,
        cutoff: i64,
        entries: &[(Vec<u8>, u64)],
    ) -> Result<(u64, u64, u64)> {
        let mut a = args![&parent, &(purge as u8), &cutoff];
        for (name, ino) in entries {
            a.push(name.clone());
            a.push(ino.to_string().into_bytes());
        }
        let r = self.run(&self.scripts.remove_batch, a).await?;
        let n = |i: usize| r.get(i).map(int).transpose().map(|v| v.unwrap_or(0) as u64);
        Ok((n(1)?, n(2)?, n(3)?))
    }

    /// Takes or renews the lease `name` for this session for `ttl` seconds;
    /// false while another session holds it.
    pub async fn take_lease(&self, name: &str, ttl: i64) -> Result<bool> {
        let r = self
            .run(&self.scripts.lease, args![&name, &ttl.max(1)])
            .await?;
        Ok(int(r.get(1).unwrap_or(&Value::Int(0)))? == 1)
    }
}

/// A directory field: type (1 byte) + inode (8 bytes, little endian).
fn decode_entry(name: Vec<u8>, v: &[u8]) -> Result<DirEntry> {
    if v.len() != 9 {
        return Err(MetaError::Corrupt(format!(
            "directory entry of {} bytes",
            v.len()
        )));
    }
    let kind = FileKind::from_u8(v[0])
        .ok_or_else(|| MetaError::Corrupt(format!("entry type {}", v[0])))?;
    let mut b = [0u8; 8];
    b.copy_from_slice(&v[1..9]);
    Ok(DirEntry {
        name,
        ino: u64::from_le_bytes(b),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slots_follow_redis_cluster() {
        // Values CLUSTER KEYSLOT gives.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"{foo}bar"), key_slot(b"foo"));
        assert_eq!(key_slot(b"{testvol}i1"), key_slot(b"{testvol}c1_0"));
        // An empty tag hashes the whole key.
        assert_eq!(key_slot(b"{}foo"), key_slot(b"{}foo"));
        assert_ne!(key_slot(b"{}foo"), key_slot(b"foo"));
    }

    #[test]
    fn cluster_failover_answers_are_retried() {
        let e = |k, d: &str| redis::RedisError::from((k, "server error", d.to_string()));
        use redis::ErrorKind::{Ask, Moved, ResponseError};
        assert!(retryable(&e(Moved, "13137 127.0.0.1:7000")));
        assert!(retryable(&e(Ask, "13137 127.0.0.1:7000")));
        assert!(retryable(&e(
            ResponseError,
            "WAIT cannot be used with replica instances. Please also note..."
        )));
        assert!(!retryable(&e(ResponseError, "wrong number of arguments")));
    }

    #[test]
    fn keyless_volume_commands_route_home() {
        assert!(routes_home(redis::cmd("SCAN").arg(0)));
        assert!(routes_home(redis::cmd("wait").arg(1).arg(500)));
        assert!(routes_home(redis::cmd("SCRIPT").arg("LOAD").arg("x")));
        assert!(routes_home(redis::cmd("EVALSHA").arg("abc").arg(0)));
        assert!(!routes_home(
            redis::cmd("EVALSHA").arg("abc").arg(1).arg("{v}setting")
        ));
        assert!(!routes_home(redis::cmd("GET").arg("{v}i1")));
    }
}
