//! The thin FUSE adapter: each fuser callback decodes its request, hands it
//! to the tokio runtime and returns at once, so session threads never wait on
//! the network. Replies are sent from the task. All file-system logic is in
//! `vfs`; this file only converts types and errnos, and answers EINTR to
//! requests the kernel interrupts (a signalled or killed caller) where
//! giving up early is safe.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl,
    ReplyLock, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, RequestId, TimeOrNow,
    WriteFlags,
};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};

use crate::meta::{to_system, Attr, FileKind, SetAttr, TimeSet};
use crate::vfs::{Ctx, Entry, Vfs};

/// `vecfs rmr`: an ioctl on the parent directory, `_IOWR('V', 0x72, [u8;
/// 256])`. In: the name of the directory to remove, NUL-padded. Out: the
/// files and directories removed (two u64, little endian), then zeros.
pub const RMR_IOCTL: u32 = (3 << 30) | ((RMR_ARG_LEN as u32) << 16) | ((b'V' as u32) << 8) | 0x72;
pub const RMR_ARG_LEN: usize = 256;

/// Kernel cache invalidation through FUSE notify messages.
pub struct KernelNotifier(pub fuser::Notifier);

impl crate::vfs::Invalidator for KernelNotifier {
    fn inval_entry(&self, parent: u64, name: &[u8]) {
        // ENOENT just means the kernel has nothing cached: fine.
        if let Err(e) = self.0.inval_entry(INodeNo(parent), OsStr::from_bytes(name)) {
            tracing::debug!(parent, error = %e, "inval_entry");
        }
    }

    fn inval_inode(&self, ino: u64) {
        if let Err(e) = self.0.inval_inode(INodeNo(ino), 0, 0) {
            tracing::debug!(ino, error = %e, "inval_inode");
        }
    }
}

/// Requests in flight that the kernel may interrupt, by unique id.
#[derive(Default)]
struct Interrupts {
    live: Mutex<HashMap<u64, watch::Sender<bool>>>,
    /// Interrupts that came before their request was registered: another
    /// session thread read the request but has not dispatched it yet.
    early: Mutex<VecDeque<(u64, Instant)>>,
}

/// How long an unmatched interrupt is remembered (its request may already
/// have been answered, then it never matches).
const EARLY_INTERRUPT_TTL: Duration = Duration::from_secs(5);

impl Interrupts {
    fn register(self: &Arc<Self>, unique: u64) -> Interruptible {
        let (tx, rx) = watch::channel(false);
        let early = self.early.lock().map(|mut e| {
            e.retain(|(_, at)| at.elapsed() < EARLY_INTERRUPT_TTL);
            match e.iter().position(|(u, _)| *u == unique) {
                Some(i) => e.remove(i).is_some(),
                None => false,
            }
        });
        if early.unwrap_or(false) {
            let _ = tx.send(true);
        }
        if let Ok(mut l) = self.live.lock() {
            l.insert(unique, tx);
        }
        Interruptible {
            rx,
            unique,
            owner: self.clone(),
        }
    }

    fn interrupt(&self, unique: u64) {
        let found = self
            .live
            .lock()
            .map(|l| l.get(&unique).map(|tx| tx.send(true)).is_some())
            .unwrap_or(false);
        if !found {
            if let Ok(mut e) = self.early.lock() {
                if e.len() >= 1024 {
                    e.pop_front();
                }
                e.push_back((unique, Instant::now()));
            }
        }
    }
}

/// One registered request; unregisters when dropped.
struct Interruptible {
    rx: watch::Receiver<bool>,
    unique: u64,
    owner: Arc<Interrupts>,
}

impl Interruptible {
    /// Resolves once the kernel interrupts the request.
    async fn fired(&mut self) {
        if self.rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        if let Ok(mut l) = self.owner.live.lock() {
            l.remove(&self.unique);
        }
    }
}

pub struct FuseFs {
    vfs: Arc<Vfs>,
    rt: Handle,
    /// Bounds requests in flight, so a flood cannot exhaust memory.
    inflight: Arc<Semaphore>,
    interrupts: Arc<Interrupts>,
}

impl FuseFs {
    pub fn new(vfs: Arc<Vfs>, rt: Handle) -> FuseFs {
        FuseFs {
            vfs,
            rt,
            inflight: Arc::new(Semaphore::new(1024)),
            interrupts: Arc::default(),
        }
    }

    /// Runs `work` as a task of its own and replies with its result, or with
    /// EINTR as soon as the kernel interrupts the request; the work then
    /// finishes unobserved. Only for requests that change nothing the
    /// caller could rely on (reads, stats, waits for a commit that goes on
    /// in the background anyway), so a killed process goes at once.
    fn spawn_interruptible<T, W, R>(&self, op: &'static str, req: &Request, work: W, reply: R)
    where
        T: Send + 'static,
        W: Future<Output = Result<T, i32>> + Send + 'static,
        R: FnOnce(Result<T, i32>) + Send + 'static,
    {
        let mut intr = self.interrupts.register(req.unique().0);
        self.spawn(op, async move {
            let mut task = tokio::spawn(work);
            let r = tokio::select! {
                r = &mut task => r.unwrap_or(Err(libc::EIO)),
                _ = intr.fired() => {
                    crate::metrics::INTERRUPTS.add(1);
                    Err(libc::EINTR)
                }
            };
            reply(r)
        });
    }

    /// Runs `f` (which replies) as a task; its time from now to the end
    /// of `f` is the latency of FUSE operation `op`.
    fn spawn<F>(&self, op: &'static str, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let sem = self.inflight.clone();
        let start = Instant::now();
        self.rt.spawn(async move {
            let _permit = sem.acquire_owned().await;
            f.await;
            crate::metrics::observe_fuse(op, start.elapsed());
        });
    }
}

/// Observes the latency of a request answered on the session thread.
struct OpTimer(&'static str, Instant);

impl Drop for OpTimer {
    fn drop(&mut self) {
        crate::metrics::observe_fuse(self.0, self.1.elapsed());
    }
}

fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Every error reply passes here: counted.
fn errno(e: i32) -> Errno {
    crate::metrics::FUSE_ERRORS.add(1);
    Errno::from_i32(e)
}

fn kind(k: FileKind) -> FileType {
    match k {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::Socket => FileType::Socket,
    }
}

/// Entries a readdir request makes sure are kept (reading pages) before
/// its reply is filled: a page, more than the kernel's largest buffer
/// (the getdents size, up to 128 KiB) takes of plus entries, and about
/// what 32 KiB takes of short names. A reply is filled until the kernel's
/// buffer is full or the kept entries end; the next page is then read
/// ahead while the kernel consumes the reply.
const READDIR_WANT: usize = crate::vfs::READDIR_PAGE;

fn blank_dir_attr(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.length,
        blocks: a.length.div_ceil(512),
        atime: to_system(a.atime),
        mtime: to_system(a.mtime),
        ctime: to_system(a.ctime),
        crtime: to_system(a.ctime),
        kind: kind(a.kind),
        perm: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<Entry, i32>) {
    match r {
        Ok(e) => reply.entry_with_ttls(
            &e.attr_ttl,
            &e.entry_ttl,
            &file_attr(e.ino, &e.attr),
            Generation(0),
        ),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), i32>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(crate::meta::from_system(t)),
    }
}

fn bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, i32>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let want = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS;
        let have = config.capabilities();
        let _ = config.add_capabilities(want & have);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn destroy(&mut self) {
        let vfs = self.vfs.clone();
        let _ = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), vfs.flush_all()).await
        });
    }

    // fuser's batch_forget comes here once per inode.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.vfs.kernel_forget(ino.0, nlookup);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(name));
        self.spawn_interruptible(
            "lookup",
            req,
            async move { vfs.lookup(&c, parent.0, &name).await },
            |r| reply_entry(reply, r),
        );
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(e) = self.vfs.getattr_cached(ino.0) {
            let _timer = OpTimer("getattr", Instant::now());
            return reply.attr(&e.attr_ttl, &file_attr(e.ino, &e.attr));
        }
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "getattr",
            req,
            async move { vfs.getattr(ino.0).await },
            |r| match r {
                Ok(e) => reply.attr(&e.attr_ttl, &file_attr(e.ino, &e.attr)),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (vfs, c) = (self.vfs.clone(), ctx(req));
        let set = SetAttr {
            mode,
            uid,
            gid,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(crate::meta::from_system),
        };
        self.spawn("setattr", async move {
            match vfs.setattr(&c, ino.0, &set, size).await {
                Ok(e) => reply.attr(&e.attr_ttl, &file_attr(e.ino, &e.attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "readlink",
            req,
            async move { vfs.readlink(ino.0).await },
            |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(name));
        self.spawn("mknod", async move {
            reply_entry(
                reply,
                vfs.mknod(&c, parent.0, &name, mode, umask, rdev, b"").await,
            )
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(name));
        self.spawn("mkdir", async move {
            reply_entry(reply, vfs.mkdir(&c, parent.0, &name, mode, umask).await)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(name));
        self.spawn("unlink", async move {
            reply_empty(reply, vfs.unlink(&c, parent.0, &name).await)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(name));
        self.spawn("rmdir", async move {
            reply_empty(reply, vfs.rmdir(&c, parent.0, &name).await)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(link_name));
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn("symlink", async move {
            reply_entry(reply, vfs.symlink(&c, parent.0, &name, &target).await)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (vfs, c) = (self.vfs.clone(), ctx(req));
        let (name, newname) = (bytes(name), bytes(newname));
        let flags = flags.bits();
        self.spawn("rename", async move {
            reply_empty(
                reply,
                vfs.rename(&c, parent.0, &name, newparent.0, &newname, flags)
                    .await,
            )
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(newname));
        self.spawn("link", async move {
            reply_entry(reply, vfs.link(&c, ino.0, newparent.0, &name).await)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (vfs, c) = (self.vfs.clone(), ctx(req));
        self.spawn("open", async move {
            match vfs.open(&c, ino.0, flags.0).await {
                Ok(o) => {
                    let mut f = if o.keep_cache {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    if o.direct_io {
                        f |= FopenFlags::FOPEN_DIRECT_IO;
                    }
                    reply.opened(FileHandle(o.fh), f)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "read",
            req,
            async move { vfs.read(fh.0, offset, size).await },
            |r| match r {
                Ok(parts) => {
                    let iov: Vec<std::io::IoSlice<'_>> =
                        parts.iter().map(|p| std::io::IoSlice::new(p)).collect();
                    reply.data_parts(&iov)
                }
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Only the wait for buffer budget is abandoned on an interrupt:
        // once buffered, the write is acknowledged.
        let vfs = self.vfs.clone();
        let data = data.to_vec();
        let mut intr = self.interrupts.register(req.unique().0);
        self.spawn("write", async move {
            let interrupted = async move {
                intr.fired().await;
                crate::metrics::INTERRUPTS.add(1);
            };
            match vfs.write(fh.0, offset, &data, interrupted).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Buffered data is committed in the background whether or not
        // close waits for it.
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "flush",
            req,
            async move { vfs.flush(fh.0, Some(lock_owner.0)).await },
            |r| reply_empty(reply, r),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let vfs = self.vfs.clone();
        let flock_owner = lock_owner.map(|o| o.0);
        self.spawn("release", async move {
            reply_empty(reply, vfs.release(fh.0, flock_owner).await)
        });
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let vfs = self.vfs.clone();
        self.spawn_interruptible("fsync", req, async move { vfs.fsync(fh.0).await }, |r| {
            reply_empty(reply, r)
        });
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        if cmd != RMR_IOCTL {
            // Terminal probes (TCGETS from every Python open) and the like:
            // ENOTTY, what a regular file answers, so isatty() is false
            // with no error for the caller to report.
            tracing::debug!(ino = ino.0, cmd, "ioctl: not supported (ENOTTY)");
            reply.error(Errno::ENOTTY);
            return;
        }
        let end = in_data
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(in_data.len());
        let name = in_data[..end].to_vec();
        let (vfs, c) = (self.vfs.clone(), ctx(req));
        self.spawn("rmr", async move {
            match vfs.rmr(&c, ino.0, &name).await {
                Ok((files, dirs)) => {
                    let mut out = [0u8; RMR_ARG_LEN];
                    out[..8].copy_from_slice(&files.to_le_bytes());
                    out[8..16].copy_from_slice(&dirs.to_le_bytes());
                    reply.ioctl(0, &out)
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let vfs = self.vfs.clone();
        self.spawn("opendir", async move {
            match vfs.opendir(ino.0, true).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let vfs = self.vfs.clone();
        self.spawn("readdir", async move {
            let r = vfs
                .readdir_fill(fh.0, offset, READDIR_WANT, false, |off, it| {
                    reply.add(
                        INodeNo(it.ino),
                        off,
                        kind(it.kind),
                        OsStr::from_bytes(&it.name),
                    )
                })
                .await;
            match r {
                Ok(next) => {
                    reply.ok();
                    tokio::spawn(async move { vfs.readdir_ahead(fh.0, next, false).await });
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let vfs = self.vfs.clone();
        self.spawn("readdirplus", async move {
            let r = vfs
                .readdir_fill(fh.0, offset, READDIR_WANT, true, |off, it| {
                    match vfs.entry_for_item(ino.0, it) {
                        Some(e) => {
                            let full = reply.add(
                                INodeNo(it.ino),
                                off,
                                OsStr::from_bytes(&it.name),
                                &e.entry_ttl,
                                &file_attr(e.ino, &e.attr),
                                Generation(0),
                            );
                            if full {
                                vfs.entry_unsent(it);
                            }
                            full
                        }
                        // ".." without attributes: a zero TTL keeps the kernel asking.
                        None => reply.add(
                            INodeNo(0),
                            off,
                            OsStr::from_bytes(&it.name),
                            &Duration::ZERO,
                            &blank_dir_attr(it.ino, kind(it.kind)),
                            Generation(0),
                        ),
                    }
                })
                .await;
            match r {
                Ok(next) => {
                    reply.ok();
                    tokio::spawn(async move { vfs.readdir_ahead(fh.0, next, true).await });
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _timer = OpTimer("releasedir", Instant::now());
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory changes are committed to Redis before each reply.
        reply.ok();
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "statfs",
            req,
            async move { vfs.statfs().await },
            |r| match r {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, 255, s.bsize,
                ),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (vfs, name, value) = (self.vfs.clone(), bytes(name), value.to_vec());
        self.spawn("setxattr", async move {
            reply_empty(reply, vfs.setxattr(ino.0, &name, &value, flags).await)
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let (vfs, name) = (self.vfs.clone(), bytes(name));
        self.spawn_interruptible(
            "getxattr",
            req,
            async move { vfs.getxattr(ino.0, &name).await },
            move |r| reply_xattr(reply, size, r),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "listxattr",
            req,
            async move { vfs.listxattr(ino.0).await },
            move |r| reply_xattr(reply, size, r),
        );
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (vfs, name) = (self.vfs.clone(), bytes(name));
        self.spawn("removexattr", async move {
            reply_empty(reply, vfs.removexattr(ino.0, &name).await)
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (vfs, c) = (self.vfs.clone(), ctx(req));
        let mask = mask.bits();
        self.spawn_interruptible(
            "access",
            req,
            async move { vfs.access(&c, ino.0, mask).await },
            |r| reply_empty(reply, r),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (vfs, c, name) = (self.vfs.clone(), ctx(req), bytes(name));
        self.spawn("create", async move {
            match vfs.create(&c, parent.0, &name, mode, umask, flags).await {
                Ok((e, o)) => reply.created(
                    &e.entry_ttl,
                    &file_attr(e.ino, &e.attr),
                    Generation(0),
                    FileHandle(o.fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn getlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        let vfs = self.vfs.clone();
        self.spawn_interruptible(
            "getlk",
            req,
            async move { vfs.getlk(fh.0, lock_owner.0, start, end, typ).await },
            |r| match r {
                Ok((t, s, e, pid)) => reply.locked(s, e, t, pid),
                Err(e) => reply.error(errno(e)),
            },
        );
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        // A waiting lock gives up between attempts (never after Redis
        // granted it), so an interrupted F_SETLKW leaves no lock behind.
        let vfs = self.vfs.clone();
        let mut intr = self.interrupts.register(req.unique().0);
        self.spawn("setlk", async move {
            let interrupted = Box::pin(async move {
                intr.fired().await;
                crate::metrics::INTERRUPTS.add(1);
            });
            reply_empty(
                reply,
                vfs.setlk(fh.0, lock_owner.0, start, end, typ, pid, sleep, interrupted)
                    .await,
            )
        });
    }

    fn interrupt(&self, _req: &Request, unique: RequestId) {
        self.interrupts.interrupt(unique.0);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let vfs = self.vfs.clone();
        self.spawn("fallocate", async move {
            reply_empty(reply, vfs.fallocate(fh.0, offset, length, mode).await)
        });
    }

    // Operations vecfs does not implement answer at debug level: fuser's
    // defaults log a warning each, and every Python open() asks for TCGETS
    // (isatty), 25,000 lines for one session.

    fn poll(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // ENOSYS: the kernel stops asking and treats files as always ready.
        tracing::debug!(ino = ino.0, "poll: not supported (ENOSYS)");
        reply.error(Errno::ENOSYS);
    }

    fn bmap(
        &self,
        _req: &Request,
        ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        tracing::debug!(ino = ino.0, "bmap: not supported (ENOSYS)");
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        // ENOSYS: the kernel seeks by itself from now on (SEEK_DATA/HOLE
        // then see the whole file as data).
        tracing::debug!(ino = ino.0, whence, "lseek: not supported (ENOSYS)");
        reply.error(Errno::ENOSYS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        // ENOSYS: the kernel falls back to reads and writes.
        tracing::debug!(
            ino_in = ino_in.0,
            ino_out = ino_out.0,
            "copy_file_range: not supported (ENOSYS)"
        );
        reply.error(Errno::ENOSYS);
    }
}
