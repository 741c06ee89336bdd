//! `mount -t vecfs` and /etc/fstab through the `mount.vecfs` helper:
//! mount(8) looks helpers up in /sbin only, so the test installs the
//! helper there (and puts back whatever was there after), mounts a volume
//! whose Redis wants a password, and checks that the password never shows
//! in a command line.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const PASSWORD: &str = "s3cret-redis-pw";
const LINK: &str = "/sbin/mount.vecfs";

/// Holds /sbin/mount.vecfs for one test (tests of this file may run as
/// parallel processes) and puts back what was there before.
struct Helper {
    _lock: std::fs::File,
    previous: Option<PathBuf>,
}

impl Helper {
    fn install() -> Helper {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/tmp/vecfs-test-mount-helper.lock")
            .expect("lock file");
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this File owns.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let previous = std::fs::read_link(LINK).ok();
        let o = vecfs(&["install-mount-helper", "--dir", "/sbin"], &[]);
        assert!(o.status.success(), "install: {}", stderr(&o));
        let target = std::fs::read_link(LINK).expect("helper symlink");
        assert_eq!(
            std::fs::canonicalize(target).unwrap(),
            std::fs::canonicalize(VECFS).unwrap()
        );
        Helper {
            _lock: lock,
            previous,
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(LINK);
        if let Some(p) = &self.previous {
            let _ = std::os::unix::fs::symlink(p, LINK);
        }
    }
}

/// Detaches a mount the test made through mount(8) if the test fails.
struct Detach(PathBuf);

impl Drop for Detach {
    fn drop(&mut self) {
        if is_fuse_mount(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
    }
}

fn password_volume() -> Volume {
    let redis = Redis::start_with(&["--requirepass", PASSWORD]);
    let d = tempfile::tempdir().unwrap();
    let bucket = d.path().join("objects").to_string_lossy().into_owned();
    Volume::format(
        redis,
        Backend::File(d),
        "file",
        &bucket,
        vec![("META_PASSWORD".into(), PASSWORD.into())],
        &[],
    )
}

/// Command lines of all processes that mention `needle`.
fn cmdlines_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            let s = String::from_utf8_lossy(&b).replace('\0', " ");
            if s.contains(needle) {
                out.push(s);
            }
        }
    }
    out
}

fn mount8(args: &[&str]) -> std::process::Output {
    Command::new("mount")
        .args(args)
        .env_remove("META_PASSWORD")
        .output()
        .expect("mount(8)")
}

fn umount8(p: &Path) {
    let o = Command::new("umount").arg(p).output().expect("umount");
    assert!(
        o.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_for("unmounted", Duration::from_secs(10), || !is_fuse_mount(p));
}

#[test]
fn mount_t_vecfs_and_fstab_with_netdev() {
    let _h = Helper::install();
    let vol = password_volume();
    // Written through an ordinary mount, read through mount(8)'s.
    let m = vol.mount();
    std::fs::create_dir(m.p("db")).unwrap();
    std::fs::write(m.p("db/segment.rv"), b"rows and vectors").unwrap();
    m.unmount();

    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let _d1 = Detach(mp.clone());
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/1", vol.redis.port);
    let opts = format!(
        "_netdev,defaults,cache-dir={},cache-size=64,log={},metrics=none,warm-on-commit=*.rv",
        dir.path().join("cache").display(),
        dir.path().join("vecfs.log").display()
    );
    let o = mount8(&["-t", "vecfs", &url, mp.to_str().unwrap(), "-o", &opts]);
    assert!(
        o.status.success(),
        "mount -t vecfs: {}\nlog: {}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(dir.path().join("vecfs.log")).unwrap_or_default()
    );
    // mount(8) returned: the mount is there and answers.
    assert!(is_fuse_mount(&mp));
    assert_eq!(
        std::fs::read(mp.join("db/segment.rv")).unwrap(),
        b"rows and vectors"
    );
    std::fs::write(mp.join("db/new"), b"x").unwrap();
    // The daemon runs, and no command line shows the password.
    let daemons = cmdlines_with(mp.to_str().unwrap());
    assert!(
        daemons.iter().any(|c| c.contains(" mount @env ")),
        "no daemon for {}: {daemons:?}",
        mp.display()
    );
    assert!(
        cmdlines_with(PASSWORD).is_empty(),
        "the password shows in ps: {:?}",
        cmdlines_with(PASSWORD)
    );
    umount8(&mp);

    // An fstab line: the URL without password, META_PASSWORD from an env
    // file, read-only.
    let env = dir.path().join("vol.env");
    std::fs::write(
        &env,
        format!("# for mount.vecfs\nMETA_PASSWORD={PASSWORD}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mp2 = dir.path().join("fstab-mnt");
    std::fs::create_dir(&mp2).unwrap();
    let _d2 = Detach(mp2.clone());
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# test fstab\n{url} {mp} vecfs _netdev,ro,env-file={env},cache-dir={cache},log={log},metrics=none,x-systemd.requires=redis.service 0 0\n",
            url = vol.url,
            mp = mp2.display(),
            env = env.display(),
            cache = dir.path().join("cache2").display(),
            log = dir.path().join("vecfs2.log").display(),
        ),
    )
    .unwrap();
    let o = mount8(&["-a", "-T", fstab.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "mount -a: {}\nlog: {}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(dir.path().join("vecfs2.log")).unwrap_or_default()
    );
    assert!(
        is_fuse_mount(&mp2),
        "mount -a did not mount the _netdev line"
    );
    // `mount -a` again (after an fstab edit, say) leaves the mount alone.
    let o = mount8(&["-a", "-T", fstab.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "mount -a again: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        cmdlines_with(mp2.to_str().unwrap())
            .iter()
            .filter(|c| c.contains(" mount @env "))
            .count(),
        1,
        "a second daemon for the same mountpoint"
    );
    assert_eq!(std::fs::read(mp2.join("db/new")).unwrap(), b"x");
    let e = std::fs::write(mp2.join("db/ro"), b"y").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    umount8(&mp2);
}

#[test]
fn bad_options_fail_with_the_option_named() {
    let _h = Helper::install();
    let vol = Volume::new(Storage::File);
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let _d = Detach(mp.clone());
    let o = mount8(&[
        "-t",
        "vecfs",
        &vol.url,
        mp.to_str().unwrap(),
        "-o",
        "_netdev,cache-size=64,turbo=on",
    ]);
    assert!(!o.status.success(), "an unknown option was accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("'turbo'"), "{err}");
    assert!(!is_fuse_mount(&mp));
    // A secret in the options is refused (fstab is world-readable).
    let o = mount8(&[
        "-t",
        "vecfs",
        &vol.url,
        mp.to_str().unwrap(),
        "-o",
        "secret-key=abc",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("env-file"), "{err}");
    // The daemon's own error comes back through mount(8).
    let o = mount8(&[
        "-t",
        "vecfs",
        &vol.url,
        dir.path().join("missing").to_str().unwrap(),
        "-o",
        "metrics=none",
    ]);
    assert!(!o.status.success());
}
