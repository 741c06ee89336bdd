//! A TCP fault proxy: forwards a loopback port to an upstream server (moto,
//! Redis) until the test switches it down. Down drops every open connection
//! and resets new ones at once, as a crashed or unreachable server would;
//! up forwards again. One thread accepts, two threads pump each connection.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

struct Shared {
    up: AtomicBool,
    frozen: AtomicBool,
    /// Holds only what the server sends back (requests still arrive).
    replies_frozen: AtomicBool,
    /// Pumps holding bytes while frozen.
    holding: AtomicUsize,
    stop: AtomicBool,
    next: AtomicU64,
    /// Both ends of every forwarded connection, to cut them when going down.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Per connection: whether it subscribed (a Redis SUBSCRIBE went
    /// through it), and whether it is muted.
    flags: Mutex<HashMap<u64, Arc<ConnFlags>>>,
    upstream: SocketAddr,
}

#[derive(Default)]
struct ConnFlags {
    subscriber: AtomicBool,
    /// Silently dead: bytes either way are read and dropped, and the
    /// connection stays open (no FIN, no reset), as across a partition.
    muted: AtomicBool,
}

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// Closing with SO_LINGER 0 sends a RST instead of a FIN: the client sees
/// "connection reset", not a clean end of a response.
pub fn reset_on_close(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn pump(sh: &Shared, mut from: TcpStream, mut to: TcpStream, replies: bool, fl: &ConnFlags) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if fl.muted.load(Ordering::Acquire) {
                    continue;
                }
                if !replies && contains_ignore_case(&buf[..n], b"SUBSCRIBE") {
                    fl.subscriber.store(true, Ordering::Release);
                }
                let held = |sh: &Shared| {
                    sh.frozen.load(Ordering::Acquire)
                        || (replies && sh.replies_frozen.load(Ordering::Acquire))
                };
                if held(sh) {
                    sh.holding.fetch_add(1, Ordering::AcqRel);
                    while held(sh) && !sh.stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    sh.holding.fetch_sub(1, Ordering::AcqRel);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            frozen: AtomicBool::new(false),
            replies_frozen: AtomicBool::new(false),
            holding: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            next: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            flags: Mutex::new(HashMap::new()),
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream)),
        });
        let sh = shared.clone();
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if sh.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !sh.up.load(Ordering::Acquire) {
                    reset_on_close(&client);
                    continue; // dropped: reset
                }
                let sh = sh.clone();
                std::thread::spawn(move || Self::forward(sh, client));
            }
        });
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    fn forward(sh: Arc<Shared>, client: TcpStream) {
        let server = match TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(_) => {
                reset_on_close(&client);
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = sh.next.fetch_add(1, Ordering::Relaxed);
        let clones = || -> io::Result<_> {
            Ok((
                client.try_clone()?,
                server.try_clone()?,
                client.try_clone()?,
                server.try_clone()?,
            ))
        };
        let Ok((c1, s1, c2, s2)) = clones() else {
            return;
        };
        {
            let mut conns = sh.conns.lock().unwrap();
            // Went down between accept and connect: do not forward.
            if !sh.up.load(Ordering::Acquire) {
                reset_on_close(&client);
                return;
            }
            conns.insert(id, (c2, s2));
        }
        let fl = Arc::new(ConnFlags::default());
        sh.flags.lock().unwrap().insert(id, fl.clone());
        let sh2 = sh.clone();
        let fl2 = fl.clone();
        let back = std::thread::spawn(move || pump(&sh2, s1, c1, true, &fl2));
        pump(&sh, client, server, false, &fl);
        let _ = back.join();
        sh.conns.lock().unwrap().remove(&id);
        sh.flags.lock().unwrap().remove(&id);
    }

    /// Cuts every open connection and resets new ones until `up`.
    pub fn down(&self) {
        let mut conns = self.shared.conns.lock().unwrap();
        self.shared.up.store(false, Ordering::Release);
        for (_, (c, s)) in conns.drain() {
            reset_on_close(&c);
            reset_on_close(&s);
            let _ = c.shutdown(Shutdown::Both);
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.shared.up.store(true, Ordering::Release);
    }

    /// Holds every byte in flight (both directions) until `thaw`.
    pub fn freeze(&self) {
        self.shared.frozen.store(true, Ordering::Release);
    }

    /// Lets requests through but holds the answers until `thaw` (or a
    /// `down`, which then loses them: a request applied, its reply lost).
    pub fn freeze_replies(&self) {
        self.shared.replies_frozen.store(true, Ordering::Release);
    }

    pub fn thaw(&self) {
        self.shared.frozen.store(false, Ordering::Release);
        self.shared.replies_frozen.store(false, Ordering::Release);
    }

    /// Every connection open now that subscribed (Redis pub/sub) goes
    /// silent for good: what either end sends is dropped and nothing
    /// closes, so the client finds out only by noticing the silence.
    /// Connections opened later pass. Returns how many were muted.
    pub fn mute_subscribers(&self) -> usize {
        let flags = self.shared.flags.lock().unwrap();
        let mut n = 0;
        for f in flags.values() {
            if f.subscriber.load(Ordering::Acquire) {
                f.muted.store(true, Ordering::Release);
                n += 1;
            }
        }
        n
    }

    /// How many connection directions are holding bytes right now.
    pub fn holding(&self) -> usize {
        self.shared.holding.load(Ordering::Acquire)
    }

    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.thaw();
        self.down();
        self.shared.stop.store(true, Ordering::Release);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
