//! META-URL parsing: `redis://[user:pass@]host[:port][/db]`, `rediss://`,
//! `unix:///path.sock[?db=N]`, a bare `host[:port]`, and the Sentinel form
//! `redis[s]://[user:pass@]MASTER_NAME,HOST1[:26379],HOST2[:26379][/db]`,
//! and the Redis Cluster form `redis[s]+cluster://[user:pass@]H1[:PORT],H2[:PORT],...[/0]`
//! (any reachable node finds the rest; a cluster has database 0 only).
//! TLS options ride in the query (`tls_ca`, `tls_cert`, `tls_key`,
//! `insecure`). The password may come from META_PASSWORD instead (and the
//! sentinels' from SENTINEL_PASSWORD), so it stays out of `ps`. Only the
//! redacted form of a URL is ever printed.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

#[derive(Debug, thiserror::Error)]
#[error("invalid META-URL '{shown}': {reason}")]
pub struct UrlError {
    shown: String,
    reason: String,
}

#[derive(Clone)]
pub struct MetaUrl {
    /// How to reach the data node: for a Sentinel URL its address is a
    /// placeholder, replaced by the master the sentinels name.
    pub info: ConnectionInfo,
    /// The URL with any password replaced by `****`.
    pub redacted: String,
    /// Set for the Sentinel form.
    pub sentinel: Option<SentinelSpec>,
    /// Set for the Redis Cluster form: the nodes listed (seeds: the
    /// cluster client learns the others from them). `info` holds the
    /// first one, with the credentials and TLS mode of all.
    pub cluster: Option<Vec<(String, u16)>>,
    /// A CA and/or client certificate for `rediss://` (from `tls_ca`,
    /// `tls_cert`, `tls_key`); None trusts the public web roots.
    pub certs: Option<TlsCertificates>,
}

/// Where the sentinels are and which master to ask them for.
#[derive(Clone)]
pub struct SentinelSpec {
    pub master: String,
    pub nodes: Vec<(String, u16)>,
    /// SENTINEL_PASSWORD: sentinels often have a password of their own.
    pub password: Option<String>,
}

pub const SENTINEL_PORT: u16 = 26379;
pub const REDIS_PORT: u16 = 6379;

impl MetaUrl {
    /// `rediss://`: error messages then mention certificates.
    pub fn uses_tls(&self) -> bool {
        matches!(self.info.addr, ConnectionAddr::TcpTls { .. })
    }

    /// A client for `info` with this URL's certificates.
    pub fn client_for(&self, info: ConnectionInfo) -> redis::RedisResult<redis::Client> {
        match &self.certs {
            Some(c) if matches!(info.addr, ConnectionAddr::TcpTls { .. }) => {
                redis::Client::build_with_tls(info, c.clone())
            }
            _ => redis::Client::open(info),
        }
    }

    /// The connection details of a server at `host:port` (a master the
    /// sentinels named), with this URL's database, credentials and TLS.
    pub fn at(&self, host: String, port: u16) -> ConnectionInfo {
        let addr = match &self.info.addr {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        ConnectionInfo {
            addr,
            redis: self.info.redis.clone(),
        }
    }
}

pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((cred, host)) = rest.rsplit_once('@') {
            let user = cred.split_once(':').map(|(u, _)| u).unwrap_or("");
            return format!("{scheme}://{user}:****@{host}");
        }
        return url.to_string();
    }
    match url.rsplit_once('@') {
        Some((_, host)) => format!("****@{host}"),
        None => url.to_string(),
    }
}

/// A TCP META-URL cut at its authority: `scheme://[cred@]hosts` + tail.
struct Authority<'a> {
    scheme: &'a str,
    cred: Option<&'a str>,
    hosts: &'a str,
    /// `/DB?options`, as given.
    tail: &'a str,
}

impl<'a> Authority<'a> {
    fn of(url: &'a str) -> Authority<'a> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("redis", ""));
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(cut);
        let (cred, hosts) = match authority.rsplit_once('@') {
            Some((c, h)) => (Some(c), h),
            None => (None, authority),
        };
        Authority {
            scheme,
            cred,
            hosts,
            tail,
        }
    }

    /// The same URL naming one host, for the redis crate's parser.
    fn with_host(&self, (h, p): &(String, u16)) -> String {
        let host = if h.contains(':') {
            format!("[{h}]")
        } else {
            h.clone()
        };
        let (scheme, tail) = (self.scheme, self.tail);
        match self.cred {
            Some(c) => format!("{scheme}://{c}@{host}:{p}{tail}"),
            None => format!("{scheme}://{host}:{p}{tail}"),
        }
    }
}

/// `host[:port]` or `[v6addr][:port]`.
fn host_port(s: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, tail) = rest.split_once(']')?;
        match tail.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if tail.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    Some((host.to_string(), port))
}

fn read_pem(what: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} file {path}: {e}"))
}

pub fn parse(raw: &str) -> Result<MetaUrl, UrlError> {
    let redacted = redact(raw);
    let err = |reason: &str| UrlError {
        shown: redacted.clone(),
        reason: reason.to_string(),
    };
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(err("empty; use redis://HOST:PORT/DB"));
    }
    let mut cluster = false;
    let normalized = if raw.contains("://") {
        let (scheme, rest) = raw.split_once("://").unwrap_or((raw, ""));
        match scheme {
            "redis" | "rediss" => raw.to_string(),
            "unix" | "redis+unix" => raw.to_string(),
            "redis+cluster" | "rediss+cluster" => {
                cluster = true;
                format!("{}://{rest}", scheme.trim_end_matches("+cluster"))
            }
            other => {
                return Err(err(&format!(
                    "unsupported scheme '{other}': use redis://, rediss://, \
                     redis+cluster:// or unix://"
                )))
            }
        }
    } else {
        format!("redis://{raw}")
    };
    let tcp = normalized.starts_with("redis://") || normalized.starts_with("rediss://");
    // Our own query options come off before the redis crate sees the URL
    // (it rejects what it does not know); the rest stays.
    let (mut base, mut tls_ca, mut tls_cert, mut tls_key, mut insecure) =
        (normalized.clone(), None, None, None, false);
    if tcp {
        if let Some((b, q)) = normalized.split_once('?') {
            let mut rest = Vec::new();
            for kv in q.split('&').filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match k {
                    "tls_ca" => tls_ca = Some(v.to_string()),
                    "tls_cert" => tls_cert = Some(v.to_string()),
                    "tls_key" => tls_key = Some(v.to_string()),
                    "insecure" => {
                        insecure = matches!(v, "" | "true" | "1" | "yes");
                    }
                    _ => rest.push(kv),
                }
            }
            base = if rest.is_empty() {
                b.to_string()
            } else {
                format!("{b}?{}", rest.join("&"))
            };
        }
    }
    // The Sentinel form: a comma in the host part. The master name takes
    // the host's place for the redis crate's parser; the real address
    // comes from the sentinels at each (re)connect.
    let mut sentinel = None;
    let mut cluster_nodes = None;
    if cluster {
        let a = Authority::of(&base);
        let mut nodes = Vec::new();
        for p in a.hosts.split(',') {
            nodes.push(host_port(p, REDIS_PORT).ok_or_else(|| {
                err(&format!(
                    "bad cluster node address '{p}': use \
                     redis+cluster://[user:pass@]HOST1:PORT,HOST2:PORT,.../"
                ))
            })?);
        }
        base = a.with_host(&nodes[0]);
        cluster_nodes = Some(nodes);
    } else if tcp {
        let a = Authority::of(&base);
        if a.hosts.contains(',') {
            let mut parts = a.hosts.split(',');
            let master = parts.next().unwrap_or("").to_string();
            if master.is_empty() || master.contains(':') {
                return Err(err("a Sentinel URL starts with the master name: \
                     redis://[user:pass@]MASTER_NAME,HOST1:26379,HOST2:26379/DB \
                     (for Redis Cluster: redis+cluster://HOST1:PORT,HOST2:PORT,.../)"));
            }
            let mut nodes = Vec::new();
            for p in parts {
                nodes.push(
                    host_port(p, SENTINEL_PORT).ok_or_else(|| {
                        err(&format!("bad sentinel address '{p}': use HOST[:PORT]"))
                    })?,
                );
            }
            base = a.with_host(&nodes[0]);
            sentinel = Some(SentinelSpec {
                master,
                nodes,
                password: std::env::var("SENTINEL_PASSWORD")
                    .ok()
                    .filter(|p| !p.is_empty()),
            });
        }
    }
    let mut info = base.as_str().into_connection_info().map_err(|e| {
        err(&format!(
            "{}; expected redis://[user:pass@]host[:port][/db]",
            e.detail().unwrap_or("malformed")
        ))
    })?;
    if let ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } = &info.addr {
        if host.is_empty() {
            return Err(err("no host given"));
        }
    }
    if cluster_nodes.is_some() && info.redis.db != 0 {
        return Err(err(&format!(
            "Redis Cluster has only database 0, not {}: drop the /{} from the URL",
            info.redis.db, info.redis.db
        )));
    }
    let tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
    if !tls && (tls_ca.is_some() || tls_cert.is_some() || tls_key.is_some() || insecure) {
        return Err(err(
            "tls_ca, tls_cert, tls_key and insecure need a rediss:// URL",
        ));
    }
    if let ConnectionAddr::TcpTls { insecure: i, .. } = &mut info.addr {
        *i |= insecure;
    }
    let client_tls = match (tls_cert, tls_key) {
        (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
            client_cert: read_pem("tls_cert", &c).map_err(|e| err(&e))?,
            client_key: read_pem("tls_key", &k).map_err(|e| err(&e))?,
        }),
        (None, None) => None,
        _ => return Err(err("tls_cert and tls_key go together")),
    };
    let root_cert = match tls_ca {
        Some(p) => Some(read_pem("tls_ca", &p).map_err(|e| err(&e))?),
        None => None,
    };
    let certs = (client_tls.is_some() || root_cert.is_some()).then_some(TlsCertificates {
        client_tls,
        root_cert,
    });
    if let Ok(pw) = std::env::var("META_PASSWORD") {
        if !pw.is_empty() {
            info.redis.password = Some(pw);
        }
    }
    Ok(MetaUrl {
        info,
        redacted,
        sentinel,
        cluster: cluster_nodes,
        certs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://u:secret@h:1/2"), "redis://u:****@h:1/2");
        assert_eq!(redact("redis://:secret@h"), "redis://:****@h");
        assert_eq!(redact("redis://h:6379/1"), "redis://h:6379/1");
    }

    #[test]
    fn bare_host_means_default_port() {
        let u = parse("localhost").unwrap();
        match u.info.addr {
            ConnectionAddr::Tcp(h, p) => assert_eq!((h.as_str(), p), ("localhost", 6379)),
            other => panic!("unexpected {other:?}"),
        }
        let u = parse("redis://127.0.0.1:7000/3").unwrap();
        assert_eq!(u.info.redis.db, 3);
    }

    #[test]
    fn bad_urls_are_rejected_without_secrets() {
        let e = parse("http://u:pw@host").err().unwrap().to_string();
        assert!(e.contains("unsupported scheme"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        assert!(parse("unix:///tmp/r.sock").is_ok());
    }

    #[test]
    fn sentinel_form() {
        let u = parse("redis://:pw@mymaster,127.0.0.1:26380,h2/3").unwrap();
        let s = u.sentinel.unwrap();
        assert_eq!(s.master, "mymaster");
        assert_eq!(
            s.nodes,
            vec![("127.0.0.1".to_string(), 26380), ("h2".to_string(), 26379)]
        );
        assert_eq!(u.info.redis.db, 3);
        assert!(!u.redacted.contains("pw"), "{}", u.redacted);
        assert!(parse("redis://h1:1,h2:2/0").is_err());
        assert!(parse("redis://127.0.0.1:6379/1")
            .unwrap()
            .sentinel
            .is_none());
    }

    #[test]
    fn cluster_form() {
        let u = parse("redis+cluster://:pw@127.0.0.1:7000,h2:7001,h3").unwrap();
        assert_eq!(
            u.cluster.as_deref(),
            Some(
                &[
                    ("127.0.0.1".to_string(), 7000),
                    ("h2".to_string(), 7001),
                    ("h3".to_string(), 6379)
                ][..]
            )
        );
        assert!(u.sentinel.is_none());
        assert_eq!(u.info.redis.db, 0);
        assert_eq!(u.info.redis.password.as_deref(), Some("pw"));
        assert!(!u.redacted.contains("pw"), "{}", u.redacted);
        assert!(matches!(u.info.addr, ConnectionAddr::Tcp(ref h, 7000) if h == "127.0.0.1"));
        let u = parse("redis+cluster://h1:7000/0").unwrap();
        assert_eq!(u.cluster.map(|n| n.len()), Some(1));
        let u = parse("rediss+cluster://h1:7000,h2:7001/?insecure=true").unwrap();
        assert!(matches!(
            u.info.addr,
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        assert!(u.uses_tls());
        let e = parse("redis+cluster://:secret@h1:7000,h2:7001/2")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("database 0"), "{e}");
        assert!(!e.contains("secret"), "{e}");
        let e = parse("redis+cluster://h1:x,h2").err().unwrap().to_string();
        assert!(e.contains("cluster node"), "{e}");
        // Several host:port without a master name is neither form.
        let e = parse("redis://h1:1,h2:2/0").err().unwrap().to_string();
        assert!(e.contains("redis+cluster://"), "{e}");
    }

    #[test]
    fn tls_options() {
        let u = parse("rediss://h:6380/1?insecure=true").unwrap();
        assert!(matches!(
            u.info.addr,
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        let e = parse("redis://h/1?tls_ca=/x").err().unwrap().to_string();
        assert!(e.contains("rediss://"), "{e}");
        let e = parse("rediss://h/1?tls_ca=/nonexistent/ca.pem")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tls_ca"), "{e}");
    }
}
