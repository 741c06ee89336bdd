//! Object storage: builds an `object_store` backend from the volume's storage
//! kind and bucket plus credentials from flags or the environment, and wraps
//! it with the block naming scheme, length checks and retries.
//!
//! Secrets never leave this module: they are taken from flags/environment at
//! build time and no error message or log line prints them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, PutPayload, RetryConfig};
use thiserror::Error;

use crate::metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    File,
    S3,
    Azure,
}

impl std::str::FromStr for StorageKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "file" | "local" => Ok(StorageKind::File),
            "s3" | "minio" => Ok(StorageKind::S3),
            "azure" | "wasb" | "abfs" => Ok(StorageKind::Azure),
            other => Err(format!(
                "unknown storage '{other}': use one of file, s3, azure (wasb)"
            )),
        }
    }
}

impl std::fmt::Display for StorageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageKind::File => "file",
            StorageKind::S3 => "s3",
            StorageKind::Azure => "azure",
        })
    }
}

/// Credentials given on the command line; empty fields fall back to the environment.
#[derive(Clone, Default)]
pub struct Credentials {
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

#[derive(Debug, Error)]
pub enum ObjectError {
    #[error("bad bucket '{bucket}': {reason}")]
    BadBucket { bucket: String, reason: String },
    #[error("the bucket (or container) does not exist: create it first")]
    MissingBucket,
    #[error("object {key} not found in the store")]
    NotFound { key: String },
    #[error("object {key} has {actual} bytes, expected {expected}")]
    ShortObject {
        key: String,
        expected: usize,
        actual: usize,
    },
    #[error("{0}")]
    Denied(String),
    #[error("object store: {0}")]
    Store(String),
}

impl From<object_store::Error> for ObjectError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => ObjectError::NotFound { key: path },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => ObjectError::Denied(
                "the store refused the credentials (access denied): check the access and secret keys"
                    .into(),
            ),
            other => ObjectError::Store(redact_store_error(&other.to_string())),
        }
    }
}

/// object_store errors may echo a URL with a SAS token or signature: query
/// strings are cut. Response bodies make them multi-line: keep one short line.
fn redact_store_error(msg: &str) -> String {
    let msg: String = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    let msg = msg.split(": <?xml").next().unwrap_or("").to_string();
    let mut out = String::with_capacity(msg.len());
    let mut in_query = false;
    for c in msg.chars() {
        if c == '?' {
            in_query = true;
            out.push_str("?<redacted>");
            continue;
        }
        if in_query && (c.is_whitespace() || c == ')' || c == '"' || c == ',') {
            in_query = false;
        }
        if !in_query {
            out.push(c);
        }
    }
    if out.len() > 400 {
        let mut cut = 400;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        max_retries: 5,
        retry_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

/// Splits `http://host:port/bucket[/prefix]` into endpoint, bucket and prefix.
fn split_endpoint(bucket: &str) -> Result<(String, String, String), ObjectError> {
    let bad = |reason: &str| ObjectError::BadBucket {
        bucket: bucket.to_string(),
        reason: reason.to_string(),
    };
    let url = url::Url::parse(bucket)
        .map_err(|_| bad("expected an endpoint URL such as http://127.0.0.1:9000/mybucket"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("the endpoint URL must start with http:// or https://"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| bad("the endpoint URL has no host"))?;
    let endpoint = match url.port() {
        Some(p) => format!("{}://{}:{}", url.scheme(), host, p),
        None => format!("{}://{}", url.scheme(), host),
    };
    let mut segs = url
        .path_segments()
        .map(|s| {
            s.filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if segs.is_empty() {
        return Err(bad(
            "no bucket name in the URL: append it as the first path segment",
        ));
    }
    let name = segs.remove(0);
    Ok((endpoint, name, segs.join("/")))
}

/// Makes the `file` store's directory private (0700): its objects are the
/// plaintext of every file, whatever the files' own modes. Missing parents
/// are created 0700 too. LocalFileSystem creates what lies below with the
/// process umask, which `format` and `mount` set to 0o077 (cli), so objects
/// are 0600 and their directories 0700; closing the top directory also
/// covers what an older version left 0644 below it. A sticky directory
/// (a shared scratch directory such as /tmp given as the bucket) is left
/// alone: closing it would lock out its other users; the directories
/// vecfs creates below it are private anyway.
fn private_store_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode != 0o700 && mode & 0o1000 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Builds the backend. `bucket` is a directory for `file`, an endpoint URL
/// with the bucket (or account/container) as path for `s3` and `azure`.
pub fn build_store(
    kind: StorageKind,
    bucket: &str,
    creds: &Credentials,
) -> Result<Arc<dyn ObjectStore>, ObjectError> {
    match kind {
        StorageKind::File => {
            let dir = bucket.strip_prefix("file://").unwrap_or(bucket);
            if dir.is_empty() {
                return Err(ObjectError::BadBucket {
                    bucket: bucket.into(),
                    reason: "empty directory".into(),
                });
            }
            private_store_dir(std::path::Path::new(dir)).map_err(|e| ObjectError::BadBucket {
                bucket: bucket.into(),
                reason: format!("cannot create a private (0700) directory: {e}"),
            })?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
                .map_err(ObjectError::from)?
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
        }
        StorageKind::S3 => {
            let (endpoint, name, _prefix) = split_endpoint(bucket)?;
            let access = creds
                .access_key
                .clone()
                .or_else(|| env_first(&["AWS_ACCESS_KEY_ID", "ACCESS_KEY"]));
            let secret = creds
                .secret_key
                .clone()
                .or_else(|| env_first(&["AWS_SECRET_ACCESS_KEY", "SECRET_KEY"]));
            let region = env_first(&["AWS_REGION", "AWS_DEFAULT_REGION"])
                .unwrap_or_else(|| "us-east-1".into());
            let mut b = object_store::aws::AmazonS3Builder::new()
                .with_endpoint(endpoint)
                .with_bucket_name(name)
                .with_region(region)
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_retry(retry_config());
            match (access, secret) {
                (Some(a), Some(s)) => {
                    b = b.with_access_key_id(a).with_secret_access_key(s);
                }
                _ => b = b.with_skip_signature(true),
            }
            Ok(Arc::new(b.build().map_err(ObjectError::from)?))
        }
        StorageKind::Azure => build_azure(bucket, creds),
    }
}

/// Parses `AZURE_STORAGE_CONNECTION_STRING` (`Key=Value;...`, or `UseDevelopmentStorage=true`).
fn parse_connection_string(s: &str) -> std::collections::HashMap<String, String> {
    s.split(';')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn build_azure(bucket: &str, creds: &Credentials) -> Result<Arc<dyn ObjectStore>, ObjectError> {
    let cs = std::env::var("AZURE_STORAGE_CONNECTION_STRING")
        .map(|s| parse_connection_string(&s))
        .unwrap_or_default();
    let dev = cs
        .get("usedevelopmentstorage")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut account = creds
        .access_key
        .clone()
        .or_else(|| cs.get("accountname").cloned())
        .or_else(|| env_first(&["AZURE_STORAGE_ACCOUNT"]));
    let mut key = creds
        .secret_key
        .clone()
        .or_else(|| cs.get("accountkey").cloned())
        .or_else(|| env_first(&["AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCESS_KEY"]));
    if dev {
        account.get_or_insert_with(|| AZURITE_ACCOUNT.into());
        key.get_or_insert_with(|| AZURITE_KEY.into());
    }
    // Bucket forms: https://ACCOUNT.blob.core.windows.net/CONTAINER,
    // http://127.0.0.1:10000/ACCOUNT/CONTAINER (emulator), or a bare container
    // name with the endpoint from the connection string.
    let (endpoint, container) = if bucket.contains("://") {
        let (endpoint, first, rest) = split_endpoint(bucket)?;
        let host = url::Url::parse(&endpoint)
            .ok()
            .and_then(|u| u.host_str().map(String::from))
            .unwrap_or_default();
        if let Some(acc) = host.strip_suffix(".blob.core.windows.net") {
            account.get_or_insert_with(|| acc.to_string());
            (None, first)
        } else {
            if rest.is_empty() {
                return Err(ObjectError::BadBucket {
                    bucket: bucket.into(),
                    reason: "expected http://HOST:PORT/ACCOUNT/CONTAINER for a custom endpoint"
                        .into(),
                });
            }
            if account.is_none() || dev {
                account = Some(first.clone());
            }
            if first == AZURITE_ACCOUNT && key.is_none() {
                key = Some(AZURITE_KEY.into());
            }
            (Some(format!("{endpoint}/{first}")), rest)
        }
    } else {
        let ep = cs
            .get("blobendpoint")
            .cloned()
            .or_else(|| dev.then(|| format!("http://127.0.0.1:10000/{AZURITE_ACCOUNT}")));
        (ep, bucket.to_string())
    };
    let account = account.ok_or_else(|| ObjectError::BadBucket {
        bucket: bucket.into(),
        reason: "no Azure account: set AZURE_STORAGE_CONNECTION_STRING or --access-key".into(),
    })?;
    let mut b = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(account)
        .with_container_name(container)
        .with_retry(retry_config());
    if let Some(k) = key {
        b = b.with_access_key(k);
    }
    if let Some(ep) = endpoint {
        b = b.with_endpoint(ep).with_allow_http(true);
    }
    Ok(Arc::new(b.build().map_err(ObjectError::from)?))
}

/// Slice id, block index and raw length of a block key made by
/// [`BlockStore::block_key`] (None for anything else).
pub fn parse_block_key(key: &str) -> Option<(u64, u32, u32)> {
    let name = key.rsplit('/').next()?;
    let mut it = name.split('_');
    let id = it.next()?.parse().ok()?;
    let index = it.next()?.parse().ok()?;
    let len = it.next()?.parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((id, index, len))
}

/// Times every request the store sends (latency histogram per method,
/// failures counted), whoever sends it: the one place object-store
/// requests are measured. A GET is timed until its body is read.
#[derive(Debug)]
struct Timed(Arc<dyn ObjectStore>);

impl std::fmt::Display for Timed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Observes one request when dropped: at the end of a call, or of the
/// stream (body, listing, batch delete) it answered with.
struct Watch {
    method: &'static str,
    start: std::time::Instant,
    ok: bool,
}

impl Watch {
    fn start(method: &'static str) -> Watch {
        Watch {
            method,
            start: std::time::Instant::now(),
            ok: true,
        }
    }

    fn result<T>(mut self, r: object_store::Result<T>) -> object_store::Result<T> {
        // A missing object is an answer, not a failure of the store.
        self.ok = matches!(&r, Ok(_) | Err(object_store::Error::NotFound { .. }));
        r
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        metrics::observe_object(self.method, self.start.elapsed(), self.ok);
    }
}

/// Passes `s` through, observing `w` when it ends (or is dropped).
fn watched<T: Send + 'static>(
    s: futures::stream::BoxStream<'_, object_store::Result<T>>,
    mut w: Watch,
) -> futures::stream::BoxStream<'_, object_store::Result<T>> {
    use futures::StreamExt;
    s.map(move |item| {
        // The whole Watch moves into the closure (not just its field), so
        // it is dropped, and observes, with the stream.
        let w = &mut w;
        if matches!(&item, Err(e) if !matches!(e, object_store::Error::NotFound { .. })) {
            w.ok = false;
        }
        item
    })
    .boxed()
}

#[async_trait::async_trait]
impl ObjectStore for Timed {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        let w = Watch::start("put");
        w.result(self.0.put_opts(location, payload, opts).await)
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        let w = Watch::start("put_multipart");
        w.result(self.0.put_multipart_opts(location, opts).await)
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        let method = if options.head {
            "head"
        } else if options.range.is_some() {
            "range"
        } else {
            "get"
        };
        let w = Watch::start(method);
        let mut r = match self.0.get_opts(location, options).await {
            Ok(r) => r,
            Err(e) => return w.result(Err(e)),
        };
        if let object_store::GetResultPayload::Stream(s) = r.payload {
            r.payload = object_store::GetResultPayload::Stream(watched(s, w));
        }
        Ok(r)
    }

    async fn delete(&self, location: &ObjPath) -> object_store::Result<()> {
        let w = Watch::start("delete");
        w.result(self.0.delete(location).await)
    }

    fn delete_stream<'a>(
        &'a self,
        locations: futures::stream::BoxStream<'a, object_store::Result<ObjPath>>,
    ) -> futures::stream::BoxStream<'a, object_store::Result<ObjPath>> {
        // The store's own batching (one request per 1,000 keys on S3) is kept.
        watched(self.0.delete_stream(locations), Watch::start("delete_many"))
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        watched(self.0.list(prefix), Watch::start("list"))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjPath>,
        offset: &ObjPath,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        watched(
            self.0.list_with_offset(prefix, offset),
            Watch::start("list"),
        )
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<object_store::ListResult> {
        let w = Watch::start("list");
        w.result(self.0.list_with_delimiter(prefix).await)
    }

    async fn copy(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        let w = Watch::start("copy");
        w.result(self.0.copy(from, to).await)
    }

    async fn copy_if_not_exists(&self, from: &ObjPath, to: &ObjPath) -> object_store::Result<()> {
        let w = Watch::start("copy");
        w.result(self.0.copy_if_not_exists(from, to).await)
    }
}

/// The block store: names blocks, checks lengths, counts traffic.
pub struct BlockStore {
    store: Arc<dyn ObjectStore>,
    volume: String,
}

impl BlockStore {
    pub fn new(store: Arc<dyn ObjectStore>, volume: &str) -> Self {
        BlockStore {
            store: Arc::new(Timed(store)),
            volume: volume.to_string(),
        }
    }

    /// Key of block `index` of slice `id`; `len` is the raw block length so a
    /// reader never needs a HEAD. A hashed prefix spreads load across partitions.
    pub fn block_key(&self, id: u64, index: u32, len: u32) -> String {
        let h = xxhash_rust::xxh3::xxh3_64(&id.to_le_bytes()) & 0xff;
        format!(
            "{}/chunks/{:02x}/{}/{}_{}_{}",
            self.volume,
            h,
            id / 1_000_000,
            id,
            index,
            len
        )
    }

    /// Every object under this volume's block prefix, as the store lists
    /// them (streamed: a large volume is never held in memory).
    pub fn list_blocks(
        &self,
    ) -> futures::stream::BoxStream<'static, Result<object_store::ObjectMeta, ObjectError>> {
        use futures::StreamExt;
        let prefix = ObjPath::from(format!("{}/chunks", self.volume));
        self.store
            .list(Some(&prefix))
            .map(|r| r.map_err(ObjectError::from))
            .boxed()
    }

    /// The stored size of an object (None: it does not exist).
    pub async fn head_size(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        match self.store.head(&ObjPath::from(key)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        self.put_parts(key, vec![data]).await
    }

    /// Stores an object given as pieces, sent in order without joining them.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), ObjectError> {
        let payload: PutPayload = parts.into_iter().collect();
        let n = payload.content_length() as u64;
        self.store.put(&ObjPath::from(key), payload).await?;
        metrics::OBJECT_PUTS.add(1);
        metrics::OBJECT_PUT_BYTES.add(n);
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        let r = self.store.get(&ObjPath::from(key)).await?;
        let b = r.bytes().await?;
        metrics::OBJECT_GETS.add(1);
        metrics::OBJECT_GET_BYTES.add(b.len() as u64);
        Ok(b)
    }

    /// As `get`, with the body read into a buffer from `pool` when it fits
    /// one (a whole block does): no fresh allocation per GET. A body the
    /// connection cut short is a transient error, never data.
    pub async fn get_pooled(
        &self,
        key: &str,
        pool: &crate::pool::BufPool,
    ) -> Result<Bytes, ObjectError> {
        use futures::StreamExt;
        let r = self.store.get(&ObjPath::from(key)).await?;
        let size = (r.range.end - r.range.start) as usize;
        // A local file comes whole from one read: no stream to copy from.
        let streamed = matches!(r.payload, object_store::GetResultPayload::Stream(_));
        if !streamed || size > pool.capacity() {
            let b = r.bytes().await?;
            metrics::OBJECT_GETS.add(1);
            metrics::OBJECT_GET_BYTES.add(b.len() as u64);
            return Ok(b);
        }
        let mut buf = pool.take(size);
        let mut at = 0;
        let mut body = r.into_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            let Some(dst) = buf.as_mut().get_mut(at..at + chunk.len()) else {
                return Err(ObjectError::Store(format!(
                    "object {key}: body longer than the {size} bytes announced"
                )));
            };
            dst.copy_from_slice(&chunk);
            at += chunk.len();
        }
        metrics::OBJECT_GETS.add(1);
        metrics::OBJECT_GET_BYTES.add(at as u64);
        if at != size {
            return Err(ObjectError::Store(format!(
                "object {key}: body cut short ({at} of {size} bytes)"
            )));
        }
        Ok(buf.freeze())
    }

    /// Bytes [range) of an object; a short answer is an error, never data.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Bytes, ObjectError> {
        let want = range.len();
        let b = self
            .store
            .get_range(&ObjPath::from(key), range.start as u64..range.end as u64)
            .await?;
        metrics::OBJECT_RANGE_GETS.add(1);
        metrics::OBJECT_GET_BYTES.add(b.len() as u64);
        if b.len() != want {
            return Err(ObjectError::ShortObject {
                key: key.to_string(),
                expected: want,
                actual: b.len(),
            });
        }
        Ok(b)
    }

    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        metrics::OBJECT_DELETES.add(1);
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes many objects, in batches (one multi-object request per batch
    /// on S3), several batches at a time. Returns each key's own
    /// outcome, in order: one failing key never hides the others. A key
    /// already gone counts as deleted.
    pub async fn delete_many(&self, keys: &[String]) -> Vec<Result<(), ObjectError>> {
        use futures::StreamExt;
        // At most 1,000 keys per request (the S3 limit), and a pass's keys
        // spread over several requests at once: stores without a
        // multi-object delete (local, Azure) run ten deletes per request.
        const MAX_BATCH: usize = 1000;
        const PARALLEL: usize = 8;
        let size = keys.len().div_ceil(PARALLEL).clamp(64, MAX_BATCH);
        // Owned pieces: the stream of batches must be Send for any lifetime.
        let store = self.store.clone();
        let batches = keys.chunks(size).map(|c| c.to_vec()).collect::<Vec<_>>();
        let batches = batches.into_iter().map(move |batch| {
            let store = store.clone();
            async move {
                metrics::OBJECT_DELETES.add(batch.len() as u64);
                let paths: Vec<object_store::Result<ObjPath>> = batch
                    .iter()
                    .map(|k| Ok(ObjPath::from(k.as_str())))
                    .collect();
                let got: Vec<object_store::Result<ObjPath>> = store
                    .delete_stream(futures::stream::iter(paths).boxed())
                    .collect()
                    .await;
                if got.len() == batch.len() {
                    // Stores answer per key, in the order asked.
                    got.into_iter()
                        .map(|r| match r {
                            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(ObjectError::from(e)),
                        })
                        .collect::<Vec<_>>()
                } else {
                    // The batch request itself failed: no key is known deleted.
                    let msg = got
                        .into_iter()
                        .find_map(|r| r.err())
                        .map(|e| ObjectError::from(e).to_string())
                        .unwrap_or_else(|| "batch delete answered for fewer keys".into());
                    batch
                        .iter()
                        .map(|_| Err(ObjectError::Store(msg.clone())))
                        .collect()
                }
            }
        });
        futures::stream::iter(batches)
            .buffered(PARALLEL)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Writes, reads back and deletes a probe object: proves the bucket exists
    /// and the credentials may write before anything is recorded in Redis.
    pub async fn probe(&self) -> Result<(), ObjectError> {
        let key = format!(
            "{}/probe-{}-{}",
            self.volume,
            std::process::id(),
            rand::random::<u32>()
        );
        let data = Bytes::from_static(b"vecfs probe");
        match self.put(&key, data.clone()).await {
            Err(ObjectError::NotFound { .. }) => return Err(ObjectError::MissingBucket),
            other => other?,
        }
        let back = self.get(&key).await?;
        if back != data {
            return Err(ObjectError::ShortObject {
                key,
                expected: data.len(),
                actual: back.len(),
            });
        }
        self.delete(&key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_parse_back() {
        let b = BlockStore::new(Arc::new(object_store::memory::InMemory::new()), "vol");
        let k = b.block_key(1234567, 3, 65536);
        assert_eq!(parse_block_key(&k), Some((1234567, 3, 65536)));
        assert_eq!(parse_block_key("vol/chunks/notablock"), None);
        assert_eq!(parse_block_key("vol/chunks/00/0/1_2_3_4"), None);
    }

    #[test]
    fn endpoint_is_split_into_host_bucket_and_prefix() {
        let (e, b, p) = split_endpoint("http://127.0.0.1:9000/bkt/a/b").unwrap();
        assert_eq!(
            (e.as_str(), b.as_str(), p.as_str()),
            ("http://127.0.0.1:9000", "bkt", "a/b")
        );
        assert!(split_endpoint("http://127.0.0.1:9000/").is_err());
        assert!(split_endpoint("ftp://x/y").is_err());
    }

    #[test]
    fn query_strings_are_redacted() {
        let m = redact_store_error("GET http://h/c/k?sig=SECRET&x=1 failed");
        assert!(!m.contains("SECRET"));
        assert!(m.contains("failed"));
    }

    #[test]
    fn connection_string_parses() {
        let cs = parse_connection_string(
            "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=k==;BlobEndpoint=http://x:1/a;",
        );
        assert_eq!(cs["accountname"], "a");
        assert_eq!(cs["accountkey"], "k==");
        assert_eq!(cs["blobendpoint"], "http://x:1/a");
    }
}
