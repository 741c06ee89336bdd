//! `vecfs rmr PATH...`: removes directory trees of a mounted volume on the
//! server side. The command asks the mount (an ioctl on the parent
//! directory, so it needs neither the META-URL nor its password), and the
//! mount removes the tree in batches, each one atomic Lua step, honouring
//! the trash, instead of one FUSE round trip per file as `rm -rf` makes.

use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use vecfs::fuse::{RMR_ARG_LEN, RMR_IOCTL};

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  vecfs rmr /mnt/vecfs/milvus/db/segments/446112")]
pub struct RmrArgs {
    /// Directories inside a vecfs mount.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

fn remove(p: &Path) -> anyhow::Result<(u64, u64)> {
    let md = std::fs::symlink_metadata(p)
        .with_context(|| format!("cannot remove {}: it does not exist", p.display()))?;
    if !md.is_dir() {
        bail!(
            "{} is not a directory (rmr removes directory trees)",
            p.display()
        );
    }
    let name = p
        .file_name()
        .filter(|n| n.as_bytes() != b".." && n.as_bytes() != b".")
        .with_context(|| format!("{}: name the directory itself, not . or ..", p.display()))?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = std::fs::canonicalize(&parent)
        .with_context(|| format!("cannot resolve {}", parent.display()))?;
    match vecfs::util::mount_containing(&parent.join(name)) {
        Some(m) if parent.join(name) == m.mountpoint => {
            bail!(
                "{} is a mount point; rmr removes directories inside a mount",
                p.display()
            )
        }
        Some(m) if m.vecfs_volume().is_some() => {}
        Some(m) => bail!(
            "{} is on a {} file system, not a vecfs mount",
            p.display(),
            m.kind()
        ),
        None => bail!("{} is not on a vecfs mount", p.display()),
    }
    if name.len() >= RMR_ARG_LEN {
        bail!("{}: name too long", p.display());
    }
    let dir = std::fs::File::open(&parent)
        .with_context(|| format!("cannot open {}", parent.display()))?;
    let mut buf = [0u8; RMR_ARG_LEN];
    buf[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: the request's size (in RMR_IOCTL) is buf's length; the mount
    // reads and writes at most that many bytes.
    let r = unsafe { libc::ioctl(dir.as_raw_fd(), RMR_IOCTL as _, buf.as_mut_ptr()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTTY) {
            bail!(
                "{}: the mount does not support rmr (a vecfs older than this command?)",
                p.display()
            );
        }
        return Err(e).with_context(|| format!("cannot remove {}", p.display()));
    }
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&buf[o..o + 8]);
        u64::from_le_bytes(a)
    };
    Ok((u64_at(0), u64_at(8)))
}

pub fn run(a: RmrArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let (mut files, mut dirs) = (0, 0);
    for p in &a.paths {
        let (f, d) = remove(p)?;
        files += f;
        dirs += d;
    }
    println!(
        "removed {files} files and {dirs} directories in {:.2}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
