//! Mount sessions: registration in Redis, the heartbeat that keeps a session
//! alive and fences the node when it cannot, and the listener for other
//! nodes' change events. Cleaning up after dead sessions, deferred deletion
//! and compaction are in `maintenance`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::meta::{now, Event, Meta, MetaError, SessionInfo};
use crate::prefetch::warm::Warmer;
use crate::vfs::Vfs;

/// `metrics`: the address the mount's Prometheus endpoint is bound to.
pub fn session_info(mountpoint: &str, read_only: bool, metrics: Option<String>) -> SessionInfo {
    SessionInfo {
        sid: 0,
        host: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        pid: std::process::id(),
        mountpoint: mountpoint.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        start: now().0,
        read_only,
        expire: 0,
        metrics,
    }
}

/// A session silent for this many heartbeats is taken for dead.
pub const MISSED_HEARTBEATS: u64 = 5;

/// What this node knows of its own session's life, shared with the vfs so
/// no lock is granted while the session might be expiring.
///
/// The guarantee: other nodes clean a session only after `ttl` has passed
/// on Redis' clock since its last renewal reached Redis. This node counts
/// from when it *sent* that renewal, which is earlier, and stops granting
/// locks (and treats the ones it holds as lost) after half of `ttl`. So a
/// lock is never held here and granted elsewhere at once, unless this
/// process stalls longer than half the expiry between a check and its use.
pub struct Lease {
    ttl: Duration,
    /// When the last renewal that succeeded was sent.
    renewed: Mutex<Instant>,
    /// Locks taken before the current epoch are lost.
    epoch: AtomicU64,
    /// Fenced since the last renewal (the epoch moved already).
    fenced: AtomicBool,
}

impl Lease {
    pub fn new(ttl: Duration) -> Lease {
        Lease {
            ttl,
            renewed: Mutex::new(Instant::now()),
            epoch: AtomicU64::new(0),
            fenced: AtomicBool::new(false),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The session may expire soon, or has: grant no lock.
    pub fn in_danger(&self) -> bool {
        self.renewed
            .lock()
            .map(|r| r.elapsed() > self.ttl / 2)
            .unwrap_or(true)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Gives up every lock held here: from now on they count as lost.
    pub fn fence(&self, why: &str) {
        if !self.fenced.swap(true, Ordering::AcqRel) {
            self.epoch.fetch_add(1, Ordering::AcqRel);
            crate::metrics::SESSION_FENCES.add(1);
            tracing::warn!(
                "{why}: locks held on this node are lost (their next lock operation answers \
                 ENOLCK) and no new lock is granted until the session is renewed"
            );
        }
    }

    fn renewed(&self, sent: Instant) {
        if let Ok(mut r) = self.renewed.lock() {
            *r = sent;
        }
        self.fenced.store(false, Ordering::Release);
    }
}

/// Keeps the session alive on a connection of its own. A renewal that finds
/// the session gone (another node cleaned it after it expired) starts a new
/// session: the old one's locks and unlinked files stay gone. A watchdog
/// fences the node when renewals stop for half the expiry.
pub fn spawn_heartbeat(
    meta: Arc<Meta>,
    mut info: SessionInfo,
    every: Duration,
    lease: Arc<Lease>,
) -> tokio::task::JoinHandle<()> {
    let ttl = lease.ttl().as_secs() as i64;
    let watchdog = {
        let lease = lease.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if lease.in_danger() {
                    lease.fence("cannot renew this node's session in time");
                }
            }
        })
    };
    tokio::spawn(async move {
        let _watchdog = AbortOnDrop(watchdog);
        let mut conn = None;
        let mut failing = false;
        loop {
            if !failing {
                tokio::time::sleep(every).await;
            }
            let sent = Instant::now();
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match meta.own_connection(every).await {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        warn_once(&mut failing, &e);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            match meta.renew_session(c, &info, ttl).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(sid = info.sid, "session heartbeat resumed");
                    }
                    failing = false;
                    lease.renewed(sent);
                    if let Ok(n) = meta.session_count().await {
                        crate::metrics::SESSIONS.set(n as i64);
                    }
                }
                Err(MetaError::Errno(libc::ENOENT)) => {
                    lease.fence("this node's session expired and another node cleaned it up");
                    match meta.register_session(info.clone(), ttl).await {
                        Ok(sid) => {
                            tracing::warn!(old = info.sid, sid, "started a new session");
                            info.sid = sid;
                            failing = false;
                            lease.renewed(sent);
                        }
                        Err(e) => warn_once(&mut failing, &e),
                    }
                }
                Err(e) => warn_once(&mut failing, &e),
            }
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn warn_once(failing: &mut bool, e: &MetaError) {
    if !*failing {
        tracing::warn!(error = %e, "session heartbeat failed; retrying");
    }
    *failing = true;
}

/// How often a listener checks that its subscription still delivers, and
/// how long its own probe may take to come back. A connection can die
/// without closing (a host gone without a reset, a partition): without the
/// probe, this node would keep long kernel and metadata-cache TTLs on a
/// channel that delivers nothing.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// Follows the volume's change channel and drops kernel caches for what
/// other nodes changed. A lost connection is retried; meanwhile replies
/// carry short TTLs, and once it is back the kernel drops everything it
/// was told (events may have been missed).
pub async fn run_event_listener(vfs: Arc<Vfs>, warmer: Option<Arc<Warmer>>) {
    use futures::StreamExt;
    loop {
        // A subscription whose answer never comes (a silent connection)
        // must not hold the listener: it is tried again.
        match tokio::time::timeout(PROBE_WAIT, vfs.meta.subscribe()).await {
            Ok(Ok(mut ps)) => {
                tracing::debug!("subscribed to change events");
                vfs.events_resumed().await;
                let mut stream = ps.on_message();
                let mut tick = tokio::time::interval(PROBE_EVERY);
                // By when a probe that went out must be back (None: none out).
                let mut probe_due: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        msg = stream.next() => {
                            let Some(msg) = msg else {
                                tracing::warn!("change channel closed; resubscribing");
                                break;
                            };
                            let Some(ev) = Event::parse(msg.get_payload_bytes()) else {
                                continue;
                            };
                            tracing::trace!(?ev, "change event");
                            if let Event::Probe { sid } = ev {
                                if sid == vfs.sid() {
                                    probe_due = None;
                                }
                                continue;
                            }
                            if ev.sid() != vfs.sid() || vfs.sid() == 0 {
                                // Kernel caches first: a warm-up must not read
                                // through entries the change made stale.
                                vfs.on_remote_change(ev.clone()).await;
                                if let Some(w) = &warmer {
                                    w.on_event(&ev);
                                }
                            }
                        }
                        // Its own timer, not the next tick: checked on ticks,
                        // a probe was given up after 10 or 15 s by timer jitter.
                        _ = tokio::time::sleep_until(
                            probe_due.unwrap_or_else(tokio::time::Instant::now)
                        ), if probe_due.is_some() => {
                            tracing::warn!(
                                "change channel delivers nothing (this node's probe did not \
                                 come back); resubscribing"
                            );
                            break;
                        }
                        _ = tick.tick() => {
                            // A probe that cannot be published proves nothing
                            // either way (Redis down, or a user without the
                            // right to publish): only one that went out counts.
                            // Its time runs from before the publish.
                            let sid = vfs.sid();
                            let due = tokio::time::Instant::now() + PROBE_WAIT;
                            if probe_due.is_none()
                                && sid != 0
                                && vfs.meta.publish_probe(sid).await.is_ok()
                            {
                                probe_due = Some(due);
                            }
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to change events"),
            Err(_) => tracing::warn!("subscribing to change events timed out; retrying"),
        }
        vfs.events_lost();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
