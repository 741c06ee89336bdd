//! An HTTP/1.1 fault proxy for object-store tests: forwards a loopback port
//! to an S3 server (moto) request by request, and on command from the test
//! cuts connections, delays requests, resets connections mid-request or
//! mid-response, answers 500/503 with an S3 XML error body, truncates a
//! response body (fewer bytes than its Content-Length, then close) or
//! corrupts it (bytes flipped, length kept). Faults are rules matched by
//! method and key substring, firing for the next N matches, a seeded
//! fraction of them and/or a time window; every firing is counted, so a
//! test can prove its fault was actually injected.
//!
//! Each client connection is served by one thread, keep-alive included:
//! requests are framed by Content-Length or chunked encoding (forwarded
//! byte for byte, so signatures stay valid); each request goes upstream on a
//! fresh connection, so an idle upstream connection can never go stale,
//! while the client's connection is kept alive whatever the server says;
//! a response is read whole, re-framed with Content-Length when it came
//! chunked or ended by a close, before the fault (if any) is applied.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::proxy::reset_on_close;

/// What a rule does to a request it matches.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Holds the request this long, then forwards it.
    Delay(Duration),
    /// Answers this status (500, 503, ...) with an S3 XML error body
    /// without forwarding the request.
    Status(u16),
    /// Forwards the head and half of the body, then resets both connections:
    /// the client never gets an answer.
    ResetRequest,
    /// Forwards the request, sends the client the response head and half
    /// of its body (half the head when there is no body), then resets.
    ResetResponse,
    /// Sends the response head (its Content-Length unchanged) and half the
    /// body, then closes the connection cleanly (FIN). Only 2xx responses
    /// with a body.
    Truncate,
    /// Flips bytes of the response body (its length kept), the middle byte
    /// always among them. Only 2xx responses with a body.
    Corrupt,
}

impl Fault {
    fn on_response(&self) -> bool {
        matches!(
            self,
            Fault::ResetResponse | Fault::Truncate | Fault::Corrupt
        )
    }

    fn name(&self) -> &'static str {
        match self {
            Fault::Delay(_) => "delay",
            Fault::Status(_) => "status",
            Fault::ResetRequest => "reset-request",
            Fault::ResetResponse => "reset-response",
            Fault::Truncate => "truncate",
            Fault::Corrupt => "corrupt",
        }
    }
}

/// A fault and the requests it applies to. Without limits it fires on
/// every matching request until removed.
#[derive(Clone, Debug)]
pub struct Rule {
    fault: Fault,
    method: Option<String>,
    key: Option<String>,
    times: Option<u64>,
    fraction: f64,
    window: Option<Duration>,
}

impl Rule {
    pub fn new(fault: Fault) -> Rule {
        Rule {
            fault,
            method: None,
            key: None,
            times: None,
            fraction: 1.0,
            window: None,
        }
    }

    /// Only requests with this method (GET, PUT, DELETE, HEAD, POST).
    pub fn method(mut self, m: &str) -> Rule {
        self.method = Some(m.to_ascii_uppercase());
        self
    }

    /// Only requests whose target (path and query) contains `s`.
    pub fn key(mut self, s: &str) -> Rule {
        self.key = Some(s.to_string());
        self
    }

    /// Fires at most `n` times, then stays in place doing nothing.
    pub fn times(mut self, n: u64) -> Rule {
        self.times = Some(n);
        self
    }

    /// Fires on this share of the matching requests (seeded, so a run
    /// replays), e.g. 0.3.
    pub fn fraction(mut self, p: f64) -> Rule {
        self.fraction = p;
        self
    }

    /// Fires only during this long from when it is added.
    pub fn lasting(mut self, d: Duration) -> Rule {
        self.window = Some(d);
        self
    }
}

/// A rule in place: how often it fired.
#[derive(Clone)]
pub struct Armed {
    fired: Arc<AtomicU64>,
    id: u64,
}

impl Armed {
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::Acquire)
    }
}

struct Active {
    rule: Rule,
    id: u64,
    left: Option<u64>,
    until: Option<Instant>,
    fired: Arc<AtomicU64>,
}

#[derive(Default)]
struct Rules {
    list: Vec<Active>,
    rng: u64,
    next_id: u64,
}

impl Rules {
    fn chance(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The first live rule of this phase that matches and takes its turn.
    fn pick(
        &mut self,
        method: &str,
        target: &str,
        response: bool,
        usable: impl Fn(&Fault) -> bool,
    ) -> Option<Fault> {
        let now = Instant::now();
        for i in 0..self.list.len() {
            let a = &self.list[i];
            let r = &a.rule;
            if r.fault.on_response() != response
                || !usable(&r.fault)
                || a.left == Some(0)
                || a.until.is_some_and(|u| now >= u)
                || r.method.as_deref().is_some_and(|m| m != method)
                || r.key.as_deref().is_some_and(|k| !target.contains(k))
            {
                continue;
            }
            let p = r.fraction;
            if p < 1.0 && self.chance() >= p {
                continue;
            }
            let a = &mut self.list[i];
            if let Some(n) = a.left.as_mut() {
                *n -= 1;
            }
            a.fired.fetch_add(1, Ordering::AcqRel);
            return Some(a.rule.fault.clone());
        }
        None
    }
}

struct Shared {
    upstream: SocketAddr,
    up: AtomicBool,
    stop: AtomicBool,
    rules: Mutex<Rules>,
    /// Requests seen, by method.
    requests: Mutex<HashMap<String, u64>>,
    /// Faults injected, by kind (Fault::name).
    injected: Mutex<HashMap<&'static str, u64>>,
    /// The last faults injected, for failure messages.
    log: Mutex<Vec<String>>,
    next_conn: AtomicU64,
    /// Client side of every open connection, to cut them when going down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn note(&self, fault: &Fault, method: &str, target: &str) {
        *self
            .injected
            .lock()
            .unwrap()
            .entry(fault.name())
            .or_default() += 1;
        let mut log = self.log.lock().unwrap();
        if log.len() >= 200 {
            log.remove(0);
        }
        log.push(format!("{fault:?} {method} {target}"));
    }
}

pub struct HttpFault {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl HttpFault {
    /// Listens on a free loopback port, forwarding to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> HttpFault {
        Self::start_seeded(upstream, 0x5eed_f417)
    }

    /// As `start`, with the seed of the `fraction` draws.
    pub fn start_seeded(upstream: u16, seed: u64) -> HttpFault {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind http fault proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream)),
            up: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            rules: Mutex::new(Rules {
                rng: seed | 1,
                ..Default::default()
            }),
            requests: Mutex::new(HashMap::new()),
            injected: Mutex::new(HashMap::new()),
            log: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
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
                    continue;
                }
                let sh = sh.clone();
                std::thread::spawn(move || serve(sh, client));
            }
        });
        HttpFault {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// Puts a rule in place (after the ones already there: the first rule
    /// that matches a request and takes its turn applies).
    pub fn add(&self, rule: Rule) -> Armed {
        let mut rules = self.shared.rules.lock().unwrap();
        let fired = Arc::new(AtomicU64::new(0));
        let id = rules.next_id;
        rules.next_id += 1;
        rules.list.push(Active {
            left: rule.times,
            until: rule.window.map(|d| Instant::now() + d),
            rule,
            id,
            fired: fired.clone(),
        });
        Armed { fired, id }
    }

    pub fn remove(&self, armed: &Armed) {
        self.shared
            .rules
            .lock()
            .unwrap()
            .list
            .retain(|a| a.id != armed.id);
    }

    /// Removes every rule: requests pass untouched again.
    pub fn clear(&self) {
        self.shared.rules.lock().unwrap().list.clear();
    }

    /// Cuts every open connection and resets new ones until `up`.
    pub fn down(&self) {
        let mut conns = self.shared.conns.lock().unwrap();
        self.shared.up.store(false, Ordering::Release);
        for (_, c) in conns.drain() {
            reset_on_close(&c);
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.shared.up.store(true, Ordering::Release);
    }

    /// Requests seen with this method (faulted ones included).
    pub fn requests(&self, method: &str) -> u64 {
        self.shared
            .requests
            .lock()
            .unwrap()
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// Faults injected of one kind: "delay", "status", "reset-request",
    /// "reset-response", "truncate", "corrupt".
    pub fn injected(&self, kind: &str) -> u64 {
        self.shared
            .injected
            .lock()
            .unwrap()
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    pub fn injected_total(&self) -> u64 {
        self.shared.injected.lock().unwrap().values().sum()
    }

    /// The last faults injected (at most 200), oldest first.
    pub fn log(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }
}

impl Drop for HttpFault {
    fn drop(&mut self) {
        self.clear();
        self.down();
        self.shared.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// A request or response head: the start line and the header lines.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").and_then(|v| v.parse().ok())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn set(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

/// Reads a head; None at a clean end of stream before its first byte.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = String::new();
    // Tolerate empty lines between messages (RFC 9112 2.2).
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim_end().is_empty() {
            break;
        }
    }
    let start = line.trim_end().to_string();
    let mut headers = Vec::new();
    let mut size = start.len();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        size += line.len();
        if size > 256 << 10 {
            return Err(io::Error::other("head too large"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Head { start, headers }))
}

/// Reads a chunked body. Returns (the bytes as they came on the wire, the
/// decoded body).
fn read_chunked(r: &mut impl BufRead) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut wire = Vec::new();
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        wire.extend_from_slice(line.as_bytes());
        let size = line.trim_end().split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
        if n == 0 {
            // Trailers up to the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                wire.extend_from_slice(line.as_bytes());
                if line.trim_end().is_empty() {
                    return Ok((wire, body));
                }
            }
        }
        let at = body.len();
        body.resize(at + n, 0);
        r.read_exact(&mut body[at..])?;
        wire.extend_from_slice(&body[at..]);
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        wire.extend_from_slice(&crlf);
    }
}

fn read_exact_vec(r: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v)?;
    Ok(v)
}

fn status_of(h: &Head) -> u16 {
    h.start
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn error_response(code: u16, head_only: bool, n: u64) -> Vec<u8> {
    let (reason, s3code, msg) = match code {
        500 => (
            "Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        503 => (
            "Service Unavailable",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        _ => ("Error", "InternalError", "Injected fault."),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3code}</Code>\
         <Message>{msg}</Message><RequestId>fault{n}</RequestId><HostId>httpfault</HostId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: fault{n}\r\nServer: httpfault\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Flips bytes spread over the body, the middle one always among them.
fn corrupt(body: &mut [u8]) {
    let n = body.len();
    body[n / 2] ^= 0x5a;
    let step = (n / 16).max(1);
    let mut i = step / 2;
    while i < n {
        if i != n / 2 {
            body[i] ^= 0xa5;
        }
        i += step;
    }
}

fn serve(sh: Arc<Shared>, client: TcpStream) {
    let id = sh.next_conn.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let Ok(reader) = client.try_clone() else {
        return;
    };
    if let Ok(c) = client.try_clone() {
        let mut conns = sh.conns.lock().unwrap();
        if !sh.up.load(Ordering::Acquire) {
            reset_on_close(&client);
            return;
        }
        conns.insert(id, c);
    }
    let mut cr = BufReader::with_capacity(256 << 10, reader);
    let mut cw = client;
    // Ends when the client closes, a fault ends the connection, or an I/O
    // error does (the client then sees the connection go away).
    let _ = serve_requests(&sh, &mut cr, &mut cw);
    sh.conns.lock().unwrap().remove(&id);
}

/// How a request's handling ended.
enum Next {
    KeepAlive,
    Close,
    Reset,
}

fn serve_requests(
    sh: &Shared,
    cr: &mut BufReader<TcpStream>,
    cw: &mut TcpStream,
) -> io::Result<()> {
    loop {
        let Some(head) = read_head(cr)? else {
            return Ok(());
        };
        let mut parts = head.start.split_whitespace();
        let method = parts.next().unwrap_or("").to_ascii_uppercase();
        let target = parts.next().unwrap_or("").to_string();
        // The body exactly as it came, so a signed request stays valid.
        let body = if head.chunked() {
            read_chunked(cr)?.0
        } else {
            read_exact_vec(cr, head.content_length().unwrap_or(0))?
        };
        *sh.requests
            .lock()
            .unwrap()
            .entry(method.clone())
            .or_default() += 1;
        let next = handle(sh, &head, &method, &target, &body, cw)?;
        match next {
            Next::KeepAlive if !head.has_token("connection", "close") => {}
            Next::KeepAlive | Next::Close => {
                let _ = cw.flush();
                let _ = cw.shutdown(Shutdown::Write);
                return Ok(());
            }
            Next::Reset => {
                reset_on_close(cw);
                let _ = cw.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
}

fn handle(
    sh: &Shared,
    head: &Head,
    method: &str,
    target: &str,
    body: &[u8],
    cw: &mut TcpStream,
) -> io::Result<Next> {
    let fault = sh
        .rules
        .lock()
        .unwrap()
        .pick(method, target, false, |_| true);
    if let Some(f) = &fault {
        sh.note(f, method, target);
    }
    match &fault {
        Some(Fault::Status(code)) => {
            let n = sh.next_conn.load(Ordering::Relaxed);
            cw.write_all(&error_response(*code, method == "HEAD", n))?;
            return Ok(Next::KeepAlive);
        }
        Some(Fault::Delay(d)) => {
            let until = Instant::now() + *d;
            while Instant::now() < until && !sh.stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(10).min(*d));
            }
        }
        _ => {}
    }
    let mut up = match TcpStream::connect_timeout(&sh.upstream, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(_) => return Ok(Next::Reset),
    };
    let _ = up.set_nodelay(true);
    let _ = up.set_read_timeout(Some(Duration::from_secs(120)));
    up.write_all(&head.bytes())?;
    if matches!(fault, Some(Fault::ResetRequest)) {
        up.write_all(&body[..body.len() / 2])?;
        reset_on_close(&up);
        return Ok(Next::Reset);
    }
    up.write_all(body)?;
    let mut ur = BufReader::with_capacity(256 << 10, up);
    // Interim 1xx answers go straight through.
    let mut resp = loop {
        let Some(h) = read_head(&mut ur)? else {
            return Ok(Next::Reset);
        };
        if (100..200).contains(&status_of(&h)) && status_of(&h) != 101 {
            cw.write_all(&h.bytes())?;
            continue;
        }
        break h;
    };
    let status = status_of(&resp);
    // Connection handling is hop by hop: the upstream connection is used
    // once, the client's is kept alive (moto answers HTTP/1.0-style with
    // `Connection: close`, which would otherwise end every client
    // connection after one request).
    resp.remove("connection");
    resp.remove("keep-alive");
    if let Some(rest) = resp.start.strip_prefix("HTTP/1.0") {
        resp.start = format!("HTTP/1.1{rest}");
    }
    let bodyless = method == "HEAD" || status == 204 || status == 304;
    let mut rbody = if bodyless {
        Vec::new()
    } else if resp.chunked() {
        let (_, decoded) = read_chunked(&mut ur)?;
        resp.remove("transfer-encoding");
        resp.set("Content-Length", &decoded.len().to_string());
        decoded
    } else if let Some(n) = resp.content_length() {
        read_exact_vec(&mut ur, n)?
    } else {
        let mut v = Vec::new();
        ur.read_to_end(&mut v)?;
        resp.set("Content-Length", &v.len().to_string());
        v
    };
    let has_body = !rbody.is_empty();
    let ok = (200..300).contains(&status);
    let fault = sh.rules.lock().unwrap().pick(method, target, true, |f| {
        !matches!(f, Fault::Truncate | Fault::Corrupt) || (ok && has_body)
    });
    if let Some(f) = &fault {
        sh.note(f, method, target);
    }
    let head_bytes = resp.bytes();
    match fault {
        Some(Fault::ResetResponse) => {
            if has_body {
                cw.write_all(&head_bytes)?;
                cw.write_all(&rbody[..rbody.len() / 2])?;
            } else {
                cw.write_all(&head_bytes[..head_bytes.len() / 2])?;
            }
            let _ = cw.flush();
            Ok(Next::Reset)
        }
        Some(Fault::Truncate) => {
            cw.write_all(&head_bytes)?;
            cw.write_all(&rbody[..rbody.len() / 2])?;
            Ok(Next::Close)
        }
        other => {
            if matches!(other, Some(Fault::Corrupt)) {
                corrupt(&mut rbody);
            }
            cw.write_all(&head_bytes)?;
            cw.write_all(&rbody)?;
            Ok(Next::KeepAlive)
        }
    }
}
