//! Shared by the maintenance-command tests (gc, fsck, info): a direct view
//! of a test volume's S3 bucket and Redis, below any mount, to inject
//! damage and check what the commands did.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::common::{vecfs, Backend, Volume};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::ObjectStore;
use vecfs::object::{build_store, Credentials, StorageKind};

pub struct Raw {
    pub rt: tokio::runtime::Runtime,
    pub store: Arc<dyn ObjectStore>,
    pub redis: redis::Client,
}

impl Raw {
    pub fn new(v: &Volume) -> Raw {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let bucket = match &v.backend {
            Backend::S3(s) => format!("http://127.0.0.1:{}/vecfs-test", s.port),
            _ => unimplemented!("the maintenance tests run on S3"),
        };
        let creds = Credentials {
            access_key: Some("testing".into()),
            secret_key: Some("testing".into()),
        };
        let store = build_store(StorageKind::S3, &bucket, &creds).unwrap();
        Raw {
            rt,
            store,
            redis: redis::Client::open(v.url.as_str()).unwrap(),
        }
    }

    /// Every object in the bucket with its size.
    pub fn objects(&self) -> BTreeMap<String, u64> {
        self.rt.block_on(async {
            let mut out = BTreeMap::new();
            let mut l = self.store.list(None);
            while let Some(m) = l.next().await {
                let m = m.unwrap();
                out.insert(m.location.to_string(), m.size);
            }
            out
        })
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        self.rt.block_on(async {
            self.store
                .put(&ObjPath::from(key), data.to_vec().into())
                .await
                .unwrap();
        });
    }

    pub fn delete(&self, key: &str) {
        self.rt
            .block_on(async { self.store.delete(&ObjPath::from(key)).await.unwrap() });
    }

    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        let mut c = self.redis.get_connection().unwrap();
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).unwrap()
    }
}

/// Runs `vecfs ARGS` with the volume's environment; (success, stdout, stderr).
pub fn run(v: &Volume, args: &[&str]) -> (bool, String, String) {
    let o = vecfs(args, &v.env_refs());
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs a command that prints JSON and parses it.
pub fn run_json(v: &Volume, args: &[&str]) -> (bool, serde_json::Value) {
    let (ok, out, err) = run(v, args);
    let j = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {out}\nstderr: {err}"));
    (ok, j)
}
