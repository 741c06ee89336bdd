//! Block cache: decoded blocks in memory (moka, weighed by bytes) and, when
//! a cache directory is given, their encoded form on local disk.
//!
//! Keys are object keys, which name immutable blocks, so an entry is never
//! stale and the disk cache survives restarts. Every fetch goes through
//! `get_with`, which lets one task fetch a block while every other reader of
//! the same block waits for that result (single-flight). Disk entries keep
//! the block envelope, so they are checksummed again on every read; a corrupt
//! entry is dropped and the block fetched anew.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::codec;

#[derive(Debug, thiserror::Error, Clone)]
pub enum CacheError {
    #[error("{0}")]
    Fetch(Arc<String>),
}

pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    used: AtomicU64,
}

impl DiskCache {
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<DiskCache> {
        std::fs::create_dir_all(dir.join("blocks"))?;
        let mut used = 0;
        if let Ok(rd) = std::fs::read_dir(dir.join("blocks")) {
            for sub in rd.flatten() {
                if let Ok(files) = std::fs::read_dir(sub.path()) {
                    for f in files.flatten() {
                        used += f.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                }
            }
        }
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            used: AtomicU64::new(used),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        let name = key.replace('/', "_");
        self.dir
            .join("blocks")
            .join(format!("{:02x}", h & 0xff))
            .join(name)
    }

    fn load(&self, key: &str) -> Option<Vec<u8>> {
        let p = self.path(key);
        let data = std::fs::read(&p).ok()?;
        match codec::decode(&data) {
            Ok(raw) => Some(raw),
            Err(e) => {
                tracing::warn!(key, error = %e, "dropping corrupt disk cache entry");
                let _ = std::fs::remove_file(&p);
                None
            }
        }
    }

    fn store(&self, key: &str, encoded: &[u8]) {
        if self.used.load(Ordering::Relaxed) + encoded.len() as u64 > self.capacity {
            return;
        }
        let p = self.path(key);
        let Some(parent) = p.parent() else { return };
        if std::fs::create_dir_all(parent).is_err() {
            return;
        }
        // Temp file + rename: a crash never leaves a half-written entry under the real name.
        let tmp = p.with_extension(format!("tmp{}", rand::random::<u32>()));
        if std::fs::write(&tmp, encoded).is_ok() && std::fs::rename(&tmp, &p).is_ok() {
            self.used.fetch_add(encoded.len() as u64, Ordering::Relaxed);
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

pub struct BlockCache {
    mem: moka::future::Cache<String, Bytes>,
    disk: Option<Arc<DiskCache>>,
}

impl BlockCache {
    pub fn new(mem_bytes: u64, disk: Option<DiskCache>) -> BlockCache {
        let mem = moka::future::Cache::builder()
            .weigher(|_k: &String, v: &Bytes| v.len().min(u32::MAX as usize) as u32)
            .max_capacity(mem_bytes)
            .build();
        BlockCache {
            mem,
            disk: disk.map(Arc::new),
        }
    }

    /// Returns the decoded block, fetching it (once, however many ask) with
    /// `fetch`, which yields the encoded block.
    pub async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Bytes, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, String>>,
    {
        let disk = self.disk.clone();
        let k = key.to_string();
        self.mem
            .try_get_with(key.to_string(), async move {
                if let Some(d) = disk.clone() {
                    let k2 = k.clone();
                    if let Ok(Some(raw)) = tokio::task::spawn_blocking(move || d.load(&k2)).await {
                        return Ok(Bytes::from(raw));
                    }
                }
                let encoded = fetch().await?;
                let raw = tokio::task::spawn_blocking(move || codec::decode(&encoded))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("block {k}: {e}"))?;
                let raw = Bytes::from(raw);
                if let Some(d) = disk {
                    let r = raw.clone();
                    tokio::task::spawn_blocking(move || d.store(&k, &codec::encode_raw(&r)));
                }
                Ok::<Bytes, String>(raw)
            })
            .await
            .map_err(|e: Arc<String>| CacheError::Fetch(e))
    }

    /// Remembers a block just written, so the writer's own reads stay local.
    pub async fn insert(&self, key: &str, raw: Bytes) {
        self.mem.insert(key.to_string(), raw.clone()).await;
        if let Some(d) = self.disk.clone() {
            let k = key.to_string();
            tokio::task::spawn_blocking(move || d.store(&k, &codec::encode_raw(&raw)));
        }
    }

    pub async fn contains(&self, key: &str) -> bool {
        self.mem.contains_key(key)
    }
}
