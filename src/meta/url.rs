//! META-URL parsing: `redis://[user:pass@]host[:port][/db]`, `rediss://`,
//! `unix:///path.sock[?db=N]` and a bare `host[:port]`. The password may come
//! from META_PASSWORD instead, so it stays out of `ps`. Only the redacted form
//! of a URL is ever printed.

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

#[derive(Debug, thiserror::Error)]
#[error("invalid META-URL '{shown}': {reason}")]
pub struct UrlError {
    shown: String,
    reason: String,
}

pub struct MetaUrl {
    pub info: ConnectionInfo,
    /// The URL with any password replaced by `****`.
    pub redacted: String,
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
    let normalized = if raw.contains("://") {
        let scheme = raw.split("://").next().unwrap_or("");
        match scheme {
            "redis" | "rediss" => raw.to_string(),
            "unix" | "redis+unix" => raw.to_string(),
            other => {
                return Err(err(&format!(
                    "unsupported scheme '{other}': use redis://, rediss:// or unix://"
                )))
            }
        }
    } else {
        format!("redis://{raw}")
    };
    let mut info = normalized.as_str().into_connection_info().map_err(|e| {
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
    if let Ok(pw) = std::env::var("META_PASSWORD") {
        if !pw.is_empty() {
            info.redis.password = Some(pw);
        }
    }
    Ok(MetaUrl { info, redacted })
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
}
