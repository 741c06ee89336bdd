//! The one error type of the data path (object store, block cache, writer,
//! reader): what went wrong, as an errno for the application, and whether
//! trying again can help. Retry loops look only at `is_transient`; nothing
//! below the VFS flattens an error into a string and loses that.

use std::sync::Arc;

use crate::meta::MetaError;
use crate::object::ObjectError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The network, a timeout, a 5xx, Redis unreachable: worth retrying.
    Transient,
    /// An object or record that should exist does not.
    NotFound,
    /// Bytes failed a check (length, CRC, decoding).
    Corrupt,
    /// The store or Redis refused the credentials.
    Denied,
    /// A file-system answer for the application as it is (ENOENT, ENOSPC, ...).
    Fs(i32),
    /// A task died or a lock was poisoned: a bug, not the environment.
    Internal,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Error {
    pub kind: Kind,
    msg: Arc<str>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: Arc::from(msg.into()),
        }
    }

    pub fn transient(msg: impl Into<String>) -> Error {
        Error::new(Kind::Transient, msg)
    }

    pub fn corrupt(msg: impl Into<String>) -> Error {
        Error::new(Kind::Corrupt, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Error {
        Error::new(Kind::Internal, msg)
    }

    pub fn fs(errno: i32) -> Error {
        Error::new(
            Kind::Fs(errno),
            std::io::Error::from_raw_os_error(errno).to_string(),
        )
    }

    /// Adds what was being done to the message, keeping the kind.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        Error::new(self.kind, format!("{what}: {}", self.msg))
    }

    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Transient
    }

    pub fn errno(&self) -> i32 {
        match self.kind {
            Kind::Fs(e) => e,
            _ => libc::EIO,
        }
    }
}

impl From<ObjectError> for Error {
    fn from(e: ObjectError) -> Error {
        let kind = match &e {
            ObjectError::NotFound { .. } | ObjectError::MissingBucket => Kind::NotFound,
            ObjectError::ShortObject { .. } => Kind::Corrupt,
            ObjectError::BadBucket { .. } => Kind::Denied,
            ObjectError::Denied(_) => Kind::Denied,
            ObjectError::Store(_) => Kind::Transient,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<MetaError> for Error {
    fn from(e: MetaError) -> Error {
        let kind = match &e {
            MetaError::Errno(n) => Kind::Fs(*n),
            MetaError::Redis {
                transient: true, ..
            } => Kind::Transient,
            MetaError::Redis { .. } => Kind::Denied,
            MetaError::Corrupt(_) => Kind::Corrupt,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<crate::codec::CodecError> for Error {
    fn from(e: crate::codec::CodecError) -> Error {
        Error::corrupt(e.to_string())
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::internal(format!("background task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_errno_and_retry() {
        assert_eq!(Error::fs(libc::ENOSPC).errno(), libc::ENOSPC);
        assert!(!Error::fs(libc::ENOSPC).is_transient());
        let t: Error = ObjectError::Store("connection reset".into()).into();
        assert!(t.is_transient());
        assert_eq!(t.errno(), libc::EIO);
        let n: Error = ObjectError::NotFound { key: "k".into() }.into();
        assert!(!n.is_transient());
        let r: Error = MetaError::Redis {
            msg: "down".into(),
            transient: true,
        }
        .into();
        assert!(r.is_transient());
        assert!(Error::corrupt("crc")
            .context("block x")
            .to_string()
            .contains("block x: crc"));
    }
}
