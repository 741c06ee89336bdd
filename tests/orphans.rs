//! Nothing leaks (issue 10): blocks a daemon uploaded but never committed
//! before it was killed are found through its session's pending-upload
//! journal and deleted once the session is cleaned (by another node, or by
//! the restarted mount); the store then holds exactly the objects that
//! committed slices name. The deleter gets past an entry it cannot delete
//! and retries it, and two read-write nodes never delete the same objects.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, wait_for, Backend, Mount, Storage, Volume};
use futures::StreamExt;
use vecfs::meta::{is_inline, Meta, Slice};
use vecfs::object::{build_store, BlockStore, Credentials, StorageKind};

/// The volume as the store and Redis see it, below any mount.
struct Inspect {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn object_store::ObjectStore>,
    blocks: BlockStore,
    redis: redis::Client,
    block_size: u32,
}

impl Inspect {
    fn new(v: &Volume) -> Inspect {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (kind, bucket) = match &v.backend {
            Backend::File(d) => (
                StorageKind::File,
                d.path().join("objects").to_string_lossy().into_owned(),
            ),
            Backend::S3(s) => (
                StorageKind::S3,
                format!("http://127.0.0.1:{}/vecfs-test", s.port),
            ),
            Backend::Azure(_) => unimplemented!("not used here"),
        };
        let creds = Credentials {
            access_key: Some("testing".into()),
            secret_key: Some("testing".into()),
        };
        let store = build_store(kind, &bucket, &creds).unwrap();
        let block_size = rt.block_on(async {
            let url = vecfs::meta::url::parse(&v.url).unwrap();
            let meta = Meta::connect(&url, "testvol").await.unwrap();
            meta.load_format().await.unwrap().unwrap().block_size
        });
        Inspect {
            rt,
            blocks: BlockStore::new(store.clone(), "testvol"),
            store,
            redis: redis::Client::open(v.url.as_str()).unwrap(),
            block_size,
        }
    }

    /// Every object in the bucket.
    fn stored(&self) -> BTreeSet<String> {
        self.rt.block_on(async {
            let mut out = BTreeSet::new();
            let mut l = self.store.list(None);
            while let Some(m) = l.next().await {
                out.insert(m.unwrap().location.to_string());
            }
            out
        })
    }

    fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.redis.get_connection().unwrap();
        redis::cmd("KEYS").arg(pattern).query(&mut c).unwrap()
    }

    fn zcard(&self, key: &str) -> u64 {
        let mut c = self.redis.get_connection().unwrap();
        redis::cmd("ZCARD").arg(key).query(&mut c).unwrap()
    }

    /// The object keys of every slice record in every chunk list.
    fn referenced(&self) -> BTreeSet<String> {
        let mut c = self.redis.get_connection().unwrap();
        let mut out = BTreeSet::new();
        let bs = self.block_size;
        for k in self.keys("{testvol}c*") {
            let recs: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .query(&mut c)
                .unwrap();
            for r in recs {
                let s = Slice::decode(&r).unwrap();
                if s.id == 0 || is_inline(s.id) {
                    continue;
                }
                for bi in 0..s.size.div_ceil(bs) {
                    out.insert(self.blocks.block_key(s.id, bi, bs.min(s.size - bi * bs)));
                }
            }
        }
        out
    }

    /// Objects no slice names.
    fn unreferenced(&self) -> Vec<String> {
        let refs = self.referenced();
        self.stored()
            .into_iter()
            .filter(|k| !refs.contains(k))
            .collect()
    }

    /// The store holds exactly what slices name, with no deletion or
    /// journaled upload outstanding.
    fn settled(&self) -> bool {
        let (stored, refs) = (self.stored(), self.referenced());
        stored == refs
            && self.zcard("{testvol}delslices") == 0
            && self.zcard("{testvol}delfiles") == 0
            && self.keys("{testvol}uploads*").is_empty()
    }

    fn explain(&self) -> String {
        let (stored, refs) = (self.stored(), self.referenced());
        format!(
            "{} objects stored, {} referenced, {} unreferenced, {} referenced but missing, \
             delslices {}, delfiles {}, journals {:?}",
            stored.len(),
            refs.len(),
            stored.difference(&refs).count(),
            refs.difference(&stored).count(),
            self.zcard("{testvol}delslices"),
            self.zcard("{testvol}delfiles"),
            self.keys("{testvol}uploads*")
        )
    }
}

/// Files written and closed: they must survive anything that follows.
fn write_closed(m: &Mount) -> Vec<(String, Vec<u8>)> {
    let sizes = [(3 << 20) + 123, 200 << 10, 5000, 1 << 20, (2 << 20) - 7];
    sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let name = format!("closed{i}");
            let data = pattern(n, i as u64 + 1);
            std::fs::write(m.p(&name), &data).unwrap();
            (name, data)
        })
        .collect()
}

/// Writers that go on writing 1 MiB pieces (never closing) until the mount
/// dies; each counts the bytes it got written.
fn start_writers(m: &Mount, n: usize) -> (Vec<Arc<AtomicU64>>, Vec<std::thread::JoinHandle<()>>) {
    let mut progress = Vec::new();
    let mut threads = Vec::new();
    for i in 0..n {
        let done = Arc::new(AtomicU64::new(0));
        progress.push(done.clone());
        let path = m.p(&format!("big{i}"));
        threads.push(std::thread::spawn(move || {
            let Ok(mut f) = std::fs::File::create(path) else {
                return;
            };
            let piece = pattern(1 << 20, 100 + i as u64);
            for _ in 0..1024 {
                if f.write_all(&piece).is_err() {
                    return;
                }
                done.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
        }));
    }
    (progress, threads)
}

/// Kills `m` while its writers are mid-file, with many blocks uploaded and
/// not committed, and checks that the kill really left such blocks.
fn kill_mid_write(m: Mount, ins: &Inspect) {
    let (progress, threads) = start_writers(&m, 2);
    wait_for("writers past 24 MiB", Duration::from_secs(120), || {
        progress
            .iter()
            .all(|p| p.load(Ordering::SeqCst) >= 24 << 20)
    });
    m.kill9();
    for t in threads {
        let _ = t.join();
    }
    let orphans = ins.unreferenced();
    assert!(
        orphans.len() >= 4,
        "the kill left too few uploaded-but-uncommitted blocks to prove anything: {}",
        ins.explain()
    );
}

fn check_reads(m: &Mount, closed: &[(String, Vec<u8>)]) {
    for (name, data) in closed {
        assert!(
            std::fs::read(m.p(name)).unwrap() == *data,
            "{name} differs after the crash"
        );
    }
    // What the killed writers committed still reads: no referenced object
    // was deleted.
    for i in 0..2 {
        std::fs::read(m.p(&format!("big{i}"))).unwrap();
    }
}

const OPTS: [&str; 4] = ["--heartbeat", "1", "--delete-delay", "0"];

#[test]
fn another_node_deletes_what_a_killed_writer_left_uncommitted() {
    let v = Volume::with_args(Storage::S3, &["--trash-days", "0", "--block-size", "1M"]);
    let ins = Inspect::new(&v);
    let b = v.mount_with(&OPTS);
    let a = v.mount_with(&OPTS);
    let closed = write_closed(&a);
    kill_mid_write(a, &ins);
    // B sees A's session expire, cleans it and deletes the journaled blocks.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !ins.settled() {
        assert!(
            std::time::Instant::now() < deadline,
            "orphans remain: {}",
            ins.explain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_reads(&b, &closed);
    b.unmount();
}

#[test]
fn a_restarted_mount_deletes_what_its_killed_predecessor_left() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0", "--block-size", "1M"]);
    let ins = Inspect::new(&v);
    let a = v.mount_with(&OPTS);
    let closed = write_closed(&a);
    kill_mid_write(a, &ins);
    let again = v.mount_with(&OPTS);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !ins.settled() {
        assert!(
            std::time::Instant::now() < deadline,
            "orphans remain: {}",
            ins.explain()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    check_reads(&again, &closed);
    // A clean unmount leaves no journal behind either.
    again.unmount();
    assert!(ins.keys("{testvol}uploads*").is_empty());
    assert!(ins.settled(), "{}", ins.explain());
}

/// The object file of `key` in a file store becomes a non-empty directory:
/// deleting it fails (for root too) until the directory goes.
fn block_deletion(v: &Volume, key: &str) -> std::path::PathBuf {
    let Backend::File(d) = &v.backend else {
        panic!("file store only")
    };
    let p = d.path().join("objects").join(key);
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("x"), b"x").unwrap();
    p
}

#[test]
fn a_failing_entry_does_not_stop_the_deleter() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let ins = Inspect::new(&v);
    let (m, metrics) = v.mount_with_metrics(&["--delete-delay", "0"]);
    for i in 0..40 {
        std::fs::write(m.p(&format!("f{i}")), pattern(100 << 10, i)).unwrap();
    }
    // One object of the 40 files cannot be deleted.
    let keys: Vec<String> = ins.referenced().into_iter().collect();
    assert_eq!(keys.len(), 40);
    let stuck = block_deletion(&v, &keys[17]);
    for i in 0..40 {
        std::fs::remove_file(m.p(&format!("f{i}"))).unwrap();
    }
    wait_for(
        "the other 39 files deleted",
        Duration::from_secs(30),
        || {
            ins.zcard("{testvol}delfiles") == 1
                && metrics.get("vecfs_deleter_files_total") == 39
                && metrics.get("vecfs_deleter_failures_total") >= 1
        },
    );
    let left = ins.stored();
    assert_eq!(left.len(), 1, "only the stuck object is left: {left:?}");
    // Once the store lets go, the entry is retried and done.
    std::fs::remove_dir_all(&stuck).unwrap();
    wait_for("the stuck file deleted", Duration::from_secs(30), || {
        ins.zcard("{testvol}delfiles") == 0
    });
    assert!(ins.stored().is_empty(), "{}", ins.explain());
    assert_eq!(metrics.get("vecfs_deleter_files_total"), 40);
    m.unmount();
}

#[test]
fn two_nodes_never_delete_the_same_objects() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0"]);
    let ins = Inspect::new(&v);
    let (a, ma) = v.mount_with_metrics(&["--delete-delay", "0"]);
    let (b, mb) = v.mount_with_metrics(&["--delete-delay", "0"]);
    let n = 300;
    for i in 0..n {
        std::fs::write(a.p(&format!("f{i}")), pattern(64 << 10, i)).unwrap();
    }
    wait_for("writes settled", Duration::from_secs(30), || ins.settled());
    let before = ins.stored();
    assert_eq!(before.len(), n as usize);
    let deletes = || ma.get("vecfs_object_delete_total") + mb.get("vecfs_object_delete_total");
    let base = deletes();
    // Half the files are overwritten in place (their old slices become
    // deleted-slice entries), the other half removed (deleted files), from
    // both nodes at once.
    std::thread::scope(|s| {
        for (m, part) in [(&a, 0), (&b, 1)] {
            s.spawn(move || {
                for i in (part..n).step_by(2) {
                    let p = m.p(&format!("f{i}"));
                    if i % 4 < 2 {
                        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
                        f.write_all(&pattern(64 << 10, i + 1000)).unwrap();
                    } else {
                        std::fs::remove_file(&p).unwrap();
                    }
                }
            });
        }
    });
    wait_for("old objects deleted", Duration::from_secs(60), || {
        ins.settled() && ins.stored().is_disjoint(&before)
    });
    let (da, db) = (
        ma.get("vecfs_object_delete_total"),
        mb.get("vecfs_object_delete_total"),
    );
    assert_eq!(
        deletes() - base,
        before.len() as u64,
        "every old object deleted exactly once (node totals {da} and {db})"
    );
    a.unmount();
    b.unmount();
}

#[test]
fn uploads_of_a_refused_commit_are_deleted() {
    let v = Volume::with_args(Storage::File, &["--trash-days", "0", "--block-size", "1M"]);
    let ins = Inspect::new(&v);
    let a = v.mount_with(&["--delete-delay", "0"]);
    let b = v.mount_with(&["--delete-delay", "0"]);
    let mut f = std::fs::File::create(a.p("f")).unwrap();
    f.sync_all().unwrap();
    // Full blocks are uploaded at once; the commit waits for fsync (or the
    // flusher's idle second). Meanwhile the file goes away on B.
    f.write_all(&pattern(8 << 20, 9)).unwrap();
    std::fs::remove_file(b.p("f")).unwrap();
    assert!(
        f.sync_all().is_err(),
        "the commit of a file removed elsewhere must be refused"
    );
    drop(f);
    wait_for(
        "the refused uploads deleted",
        Duration::from_secs(30),
        || ins.settled(),
    );
    assert!(ins.stored().is_empty(), "{}", ins.explain());
    a.unmount();
    b.unmount();
}
