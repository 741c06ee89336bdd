//! `vecfs umount`: detaches a mount; `--force` detaches it lazily even when busy.

use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;
use clap::Args;

#[derive(Args, Debug)]
pub struct UmountArgs {
    mountpoint: PathBuf,
    /// Detach even when files are open (lazy unmount).
    #[arg(short, long)]
    force: bool,
}

pub fn run(a: UmountArgs) -> anyhow::Result<()> {
    let mp = &a.mountpoint;
    match vecfs::util::mounted_fstype(mp) {
        Some(t) if t.starts_with("fuse") => {}
        Some(t) => bail!("{} is a {t} mount, not vecfs", mp.display()),
        None => bail!("{} is not mounted", mp.display()),
    }
    // A busy mount may be busy only with the daemon's own page-cache
    // push (--warm-on-commit reads a file through the mount for a few
    // tens of milliseconds): try again for a moment before giving up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match try_unmount(mp, a.force) {
            Ok(()) => {
                println!("unmounted {}", mp.display());
                return Ok(());
            }
            Err(e) if e.contains("busy") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(last) => bail!(
                "cannot unmount {}: {last}; close the files open there or use --force",
                mp.display()
            ),
        }
    }
}

pub(crate) fn try_unmount(mp: &std::path::Path, force: bool) -> Result<(), String> {
    let mut tries: Vec<Command> = Vec::new();
    let mut um = Command::new("umount");
    if force {
        um.arg("-l");
    }
    um.arg(mp);
    tries.push(um);
    let mut fm = Command::new("fusermount3");
    fm.arg(if force { "-uz" } else { "-u" }).arg(mp);
    tries.push(fm);
    let mut last = String::new();
    for mut c in tries {
        match c.output() {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}
