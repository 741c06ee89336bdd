//! Every FUSE operation through a real mount, with its error cases, on each
//! storage kind: a local directory, S3 (moto) and Azure Blob (Azurite).

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{pattern, Mount, Storage, Volume};

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn last_errno(rc: i64) -> i32 {
    if rc >= 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> i32 {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both paths are valid NUL-terminated strings.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    last_errno(rc as i64)
}

fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> i32 {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid strings and a buffer of the given length.
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    last_errno(rc as i64)
}

fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 65536];
    // SAFETY: the buffer is as long as we say.
    let rc = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return Err(last_errno(-1));
    }
    buf.truncate(rc as usize);
    Ok(buf)
}

fn listxattr(p: &Path) -> Vec<String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: the buffer is as long as we say.
    let rc = unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(rc >= 0, "listxattr failed: {}", last_errno(-1));
    buf.truncate(rc as usize);
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn removexattr(p: &Path, name: &str) -> i32 {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid strings.
    last_errno(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) } as i64)
}

fn fallocate(f: &File, mode: i32, off: i64, len: i64) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call.
    last_errno(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } as i64)
}

/// Namespace operations and their errors.
fn namespace(m: &Mount) {
    let d = m.p("ns");
    fs::create_dir(&d).unwrap();
    assert_eq!(errno(fs::create_dir(&d)), libc::EEXIST);
    assert_eq!(errno(fs::create_dir(m.p("missing/child"))), libc::ENOENT);
    assert_eq!(errno(fs::metadata(m.p("ns/nothing"))), libc::ENOENT);

    fs::write(d.join("f"), b"hello").unwrap();
    assert_eq!(errno(fs::metadata(d.join("f/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::create_dir(d.join("f"))), libc::EEXIST);
    assert_eq!(errno(fs::remove_dir(d.join("f"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_file(d.join("nope"))), libc::ENOENT);

    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("sub/g"), b"x").unwrap();
    assert_eq!(errno(fs::remove_dir(d.join("sub"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(d.join("sub"))), libc::EISDIR);
    assert_eq!(
        fs::metadata(&d).unwrap().nlink(),
        3,
        "dir nlink counts subdirs"
    );

    // symlink / readlink
    std::os::unix::fs::symlink("sub/g", d.join("ln")).unwrap();
    assert_eq!(fs::read_link(d.join("ln")).unwrap(), Path::new("sub/g"));
    assert_eq!(fs::read(d.join("ln")).unwrap(), b"x");
    assert!(fs::symlink_metadata(d.join("ln"))
        .unwrap()
        .file_type()
        .is_symlink());

    // hard links
    fs::hard_link(d.join("f"), d.join("f2")).unwrap();
    assert_eq!(fs::metadata(d.join("f")).unwrap().nlink(), 2);
    assert_eq!(
        errno(fs::hard_link(d.join("sub"), d.join("sub2"))),
        libc::EPERM
    );
    assert_eq!(
        errno(fs::hard_link(d.join("f"), d.join("f2"))),
        libc::EEXIST
    );
    fs::remove_file(d.join("f2")).unwrap();
    assert_eq!(fs::metadata(d.join("f")).unwrap().nlink(), 1);

    // mknod: fifo and a character device
    let fifo = cpath(&d.join("fifo"));
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(d.join("fifo")).unwrap().file_type()
    ));
    let dev = cpath(&d.join("null"));
    // SAFETY: valid path.
    let rc = unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) };
    assert_eq!(rc, 0, "mknod chr: {}", last_errno(-1));
    assert_eq!(
        fs::metadata(d.join("null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );

    // rename: plain, overwrite, flags, loops
    fs::rename(d.join("f"), d.join("f3")).unwrap();
    assert_eq!(fs::read(d.join("f3")).unwrap(), b"hello");
    fs::write(d.join("victim"), b"old").unwrap();
    fs::rename(d.join("f3"), d.join("victim")).unwrap();
    assert_eq!(fs::read(d.join("victim")).unwrap(), b"hello");
    fs::write(d.join("other"), b"other").unwrap();
    assert_eq!(
        renameat2(&d.join("other"), &d.join("victim"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        renameat2(&d.join("other"), &d.join("victim"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(d.join("victim")).unwrap(), b"other");
    assert_eq!(fs::read(d.join("other")).unwrap(), b"hello");
    assert_eq!(
        renameat2(&d.join("other"), &d.join("absent"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    assert_eq!(errno(fs::rename(&d, d.join("sub/inside"))), libc::EINVAL);
    fs::create_dir(d.join("empty")).unwrap();
    assert_eq!(
        errno(fs::rename(d.join("empty"), d.join("sub"))),
        libc::ENOTEMPTY
    );
    assert_eq!(
        errno(fs::rename(d.join("empty"), d.join("victim"))),
        libc::ENOTDIR
    );
    assert_eq!(
        errno(fs::rename(d.join("victim"), d.join("empty"))),
        libc::EISDIR
    );
    fs::rename(d.join("empty"), d.join("sub/moved")).unwrap();
    assert!(fs::metadata(d.join("sub/moved")).unwrap().is_dir());
    assert_eq!(fs::metadata(d.join("sub")).unwrap().nlink(), 3);

    // names: arbitrary bytes up to 255
    let weird = std::ffi::OsStr::from_bytes(b"caf\xe9-\xff\x01name");
    fs::write(d.join(weird), b"bytes").unwrap();
    let listed: Vec<_> = fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(listed.iter().any(|n| n == weird), "non-UTF-8 name listed");
    let long = "n".repeat(255);
    fs::write(d.join(&long), b"").unwrap();
    assert_eq!(
        errno(fs::write(d.join("n".repeat(256)), b"")),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(fs::create_dir(d.join("d".repeat(256)))),
        libc::ENAMETOOLONG
    );
}

/// Attributes: chmod, chown, times, truncate, access.
fn attributes(m: &Mount) {
    let f = m.p("attrs");
    fs::write(&f, b"0123456789").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    let c = cpath(&f);
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123,
        },
        libc::timespec {
            tv_sec: 1_500_000_000,
            tv_nsec: 456_789,
        },
    ];
    // SAFETY: valid path and two timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) },
        0
    );
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 456_789));

    // truncate shrinks, then extension reads zeros where data was
    let t = OpenOptions::new().write(true).open(&f).unwrap();
    t.set_len(4).unwrap();
    t.set_len(8).unwrap();
    drop(t);
    assert_eq!(fs::read(&f).unwrap(), b"0123\0\0\0\0");
    assert_eq!(
        errno(OpenOptions::new().write(true).open(m.p("."))),
        libc::EISDIR
    );

    // access(2)
    let c = cpath(&f);
    // SAFETY: valid path.
    assert_eq!(
        unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) },
        0
    );
    // SAFETY: valid path.
    assert_ne!(
        unsafe { libc::access(c.as_ptr(), libc::X_OK) },
        0,
        "no x bit"
    );

    // setgid directories hand their group down
    let sg = m.p("sgid");
    fs::create_dir(&sg).unwrap();
    std::os::unix::fs::chown(&sg, None, Some(4242)).unwrap();
    fs::set_permissions(&sg, fs::Permissions::from_mode(0o2775)).unwrap();
    fs::write(sg.join("child"), b"").unwrap();
    assert_eq!(fs::metadata(sg.join("child")).unwrap().gid(), 4242);
    fs::create_dir(sg.join("subdir")).unwrap();
    assert_ne!(fs::metadata(sg.join("subdir")).unwrap().mode() & 0o2000, 0);
}

/// Data: sequential, sparse, overwrites, fsync, fallocate, many entries.
fn data(m: &Mount) {
    // a file of several blocks written in odd-sized pieces
    let body = pattern(9 * 1024 * 1024 + 12345, 1);
    {
        let mut f = File::create(m.p("seq")).unwrap();
        for part in body.chunks(777_777) {
            f.write_all(part).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(fs::read(m.p("seq")).unwrap(), body);

    // sparse: holes read as zeros
    {
        let f = File::create(m.p("sparse")).unwrap();
        f.write_all_at(b"tail", 100 << 20).unwrap();
        f.write_all_at(b"head", 10).unwrap();
    }
    let mut f = File::open(m.p("sparse")).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (100 << 20) + 4);
    let mut buf = vec![1u8; 1 << 20];
    f.seek(SeekFrom::Start(50 << 20)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "hole reads zeros");
    let mut head = [0u8; 16];
    f.seek(SeekFrom::Start(8)).unwrap();
    f.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"\0\0head\0\0\0\0\0\0\0\0\0\0");

    // overwrite in the middle, read while the handle is still open (read-your-writes)
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("seq"))
        .unwrap();
    rw.write_all_at(b"OVERWRITE", 4 << 20).unwrap();
    let mut back = [0u8; 9];
    rw.read_exact_at(&mut back, 4 << 20).unwrap();
    assert_eq!(&back, b"OVERWRITE");
    drop(rw);
    let mut expect = body.clone();
    expect[4 << 20..(4 << 20) + 9].copy_from_slice(b"OVERWRITE");
    assert_eq!(fs::read(m.p("seq")).unwrap(), expect);

    // append mode
    {
        let mut a = OpenOptions::new().append(true).open(m.p("seq")).unwrap();
        a.write_all(b"APPENDED").unwrap();
    }
    assert_eq!(
        fs::metadata(m.p("seq")).unwrap().len(),
        body.len() as u64 + 8
    );

    // fallocate: grow, punch a hole, zero a range, unsupported modes
    let fa = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.p("falloc"))
        .unwrap();
    fa.write_all_at(&[7u8; 8192], 0).unwrap();
    assert_eq!(fallocate(&fa, 0, 0, 1 << 20), 0);
    assert_eq!(fa.metadata().unwrap().len(), 1 << 20);
    assert_eq!(
        fallocate(
            &fa,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            100,
            200
        ),
        0
    );
    let mut chunk = [9u8; 400];
    fa.read_exact_at(&mut chunk, 0).unwrap();
    assert!(chunk[..100].iter().all(|b| *b == 7));
    assert!(chunk[100..300].iter().all(|b| *b == 0));
    assert!(chunk[300..].iter().all(|b| *b == 7));
    assert_eq!(
        fallocate(&fa, libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
        libc::EOPNOTSUPP
    );
    assert_eq!(
        fallocate(&fa, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096),
        libc::EOPNOTSUPP
    );
    drop(fa);

    // O_EXCL create on an existing file
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.p("falloc"))
        ),
        libc::EEXIST
    );
    // O_TRUNC
    fs::write(m.p("falloc"), b"short").unwrap();
    assert_eq!(fs::read(m.p("falloc")).unwrap(), b"short");

    // readdir of a big directory, with attributes
    let big = m.p("bigdir");
    fs::create_dir(&big).unwrap();
    for i in 0..600 {
        fs::write(big.join(format!("segment_{i:04}")), i.to_string()).unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 600);
    assert_eq!(names[599], "segment_0599");
    assert_eq!(fs::read_to_string(big.join("segment_0421")).unwrap(), "421");

    // an unlinked file stays readable through its open handle
    fs::write(m.p("ghost"), b"still here").unwrap();
    let mut g = File::open(m.p("ghost")).unwrap();
    fs::remove_file(m.p("ghost")).unwrap();
    assert_eq!(errno(fs::metadata(m.p("ghost"))), libc::ENOENT);
    let mut s = String::new();
    g.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
}

/// Extended attributes and statfs.
fn xattrs_and_statfs(m: &Mount) {
    let f = m.p("xa");
    fs::write(&f, b"").unwrap();
    assert_eq!(setxattr(&f, "user.milvus", b"segment-1", 0), 0);
    assert_eq!(getxattr(&f, "user.milvus").unwrap(), b"segment-1");
    assert_eq!(
        setxattr(&f, "user.milvus", b"again", libc::XATTR_CREATE),
        libc::EEXIST
    );
    assert_eq!(
        setxattr(&f, "user.absent", b"v", libc::XATTR_REPLACE),
        libc::ENODATA
    );
    assert_eq!(setxattr(&f, "user.milvus", b"v2", libc::XATTR_REPLACE), 0);
    assert_eq!(setxattr(&f, "user.bin", &[0, 1, 2, 255], 0), 0);
    assert_eq!(getxattr(&f, "user.bin").unwrap(), vec![0, 1, 2, 255]);
    let mut names = listxattr(&f);
    names.sort();
    assert_eq!(names, vec!["user.bin", "user.milvus"]);
    assert_eq!(getxattr(&f, "user.nothing"), Err(libc::ENODATA));
    assert_eq!(removexattr(&f, "user.bin"), 0);
    assert_eq!(removexattr(&f, "user.bin"), libc::ENODATA);
    assert_eq!(listxattr(&f), vec!["user.milvus"]);

    let c = cpath(&m.path);
    // SAFETY: an all-zero statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-parameter.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bfree <= st.f_blocks);
    assert!(st.f_files > st.f_ffree, "some inodes are in use");
    assert_eq!(st.f_namemax, 255);
}

fn everything(m: &Mount) {
    namespace(m);
    attributes(m);
    data(m);
    xattrs_and_statfs(m);
}

#[test]
fn all_operations_on_file_storage() {
    let v = Volume::new(Storage::File);
    let m = v.mount();
    everything(&m);
    m.unmount();
}

#[test]
fn all_operations_on_s3() {
    let v = Volume::new(Storage::S3);
    let m = v.mount();
    everything(&m);
    m.unmount();
}

#[test]
fn all_operations_on_azure() {
    let v = Volume::new(Storage::Azure);
    let m = v.mount();
    everything(&m);
    m.unmount();
}

#[test]
fn statfs_honours_capacity_and_inode_limits() {
    // Without trash days: a file in the trash keeps its inode and space.
    let v = Volume::with_args(
        Storage::File,
        &["--capacity", "1", "--inodes", "20", "--trash-days", "0"],
    );
    let m = v.mount();
    let c = cpath(&m.path);
    // SAFETY: zeroed out-parameter, valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, 1 << 30);
    assert_eq!(st.f_files, 20);
    let mut made = 0;
    let mut last = 0;
    for i in 0..40 {
        match fs::write(m.p(&format!("f{i}")), b"x") {
            Ok(()) => made += 1,
            Err(e) => {
                last = e.raw_os_error().unwrap_or(0);
                break;
            }
        }
    }
    assert_eq!(last, libc::ENOSPC, "the inode limit ends creation");
    assert_eq!(made, 19, "root plus 19 files fill 20 inodes");
    // the space limit refuses data past the capacity
    fs::remove_file(m.p("f0")).unwrap();
    let f = File::create(m.p("big")).unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut err = 0;
    for i in 0..1100u64 {
        if let Err(e) = f.write_all_at(&chunk, i << 20) {
            err = e.raw_os_error().unwrap_or(0);
            break;
        }
    }
    if err == 0 {
        err = errno(f.sync_all());
    }
    assert_eq!(err, libc::ENOSPC, "writing past the capacity fails");
    drop(f);
    m.unmount();
}

#[test]
fn multi_chunk_file_with_random_overwrites() {
    let v = Volume::with_args(Storage::File, &["--block-size", "1M"]);
    let m = v.mount();
    let len: usize = (1 << 30) + 3 * (1 << 20) + 17; // > 16 chunks
    let mut model = pattern(len, 7);
    {
        let mut f = File::create(m.p("huge")).unwrap();
        for part in model.chunks(1 << 20) {
            f.write_all(part).unwrap();
        }
    }
    // random overwrites, some across chunk boundaries
    let f = OpenOptions::new().write(true).open(m.p("huge")).unwrap();
    let mut x: u64 = 99;
    for i in 0..40 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut off = (x >> 20) as usize % (len - 300_000);
        if i % 10 == 0 {
            off = (64 << 20) * (1 + i / 10) - 1000; // straddle a chunk boundary
        }
        let size = 1 + (x as usize % 250_000);
        let data = pattern(size, x);
        f.write_all_at(&data, off as u64).unwrap();
        model[off..off + size].copy_from_slice(&data);
    }
    drop(f);
    let mut r = File::open(m.p("huge")).unwrap();
    assert_eq!(r.metadata().unwrap().len(), len as u64);
    let mut buf = vec![0u8; 8 << 20];
    let mut pos = 0;
    while pos < len {
        let n = r.read(&mut buf).unwrap();
        assert!(n > 0, "short read at {pos}");
        assert!(
            buf[..n] == model[pos..pos + n],
            "mismatch in [{pos}, {})",
            pos + n
        );
        pos += n;
    }
    drop(r);
    m.unmount();
}
