//! Bad input ends with one clear line naming the problem and what to do, a
//! non-zero exit, and nothing half-written. Secrets never show up in
//! messages, logs or `ps`.

mod common;

use std::fs;
use std::process::Output;

use common::{stderr, vecfs, Azurite, Redis, Storage, Volume, S3};

/// Asserts failure with exactly one error line that contains every `needle`.
fn fails_with(o: &Output, needles: &[&str]) -> String {
    assert!(!o.status.success(), "expected failure, got success");
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line expected, got:\n{err}");
    assert!(lines[0].starts_with("vecfs: error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "'{n}' missing from: {err}");
    }
    lines[0].to_string()
}

fn redis_is_empty(r: &Redis, db: u32) -> bool {
    r.cli(&["-n", &db.to_string(), "DBSIZE"]).trim() == "0"
}

#[test]
fn invalid_and_unreachable_meta_urls() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().to_string_lossy().into_owned();
    let o = vecfs(
        &["format", "http://u:pw@host/1", "vol1", "--bucket", &b],
        &[],
    );
    let line = fails_with(&o, &["invalid META-URL", "unsupported scheme", "redis://"]);
    assert!(!line.contains("pw@"), "password leaked: {line}");
    let o = vecfs(
        &[
            "format",
            "redis://127.0.0.1:notaport/1",
            "vol1",
            "--bucket",
            &b,
        ],
        &[],
    );
    fails_with(&o, &["invalid META-URL"]);
    let port = common::free_port().to_string();
    let url = format!("redis://127.0.0.1:{port}/1");
    let o = vecfs(&["format", &url, "vol1", "--bucket", &b], &[]);
    fails_with(&o, &["cannot connect to Redis", "redis-server running"]);
    let o = vecfs(&["status", &url], &[]);
    fails_with(&o, &["cannot connect to Redis"]);
}

#[test]
fn wrong_redis_password_is_reported_without_the_secret() {
    let r = Redis::start_with(&["--requirepass", "s3cr3t-pass"]);
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("o").to_string_lossy().into_owned();
    let url = format!("redis://:wrong-guess@127.0.0.1:{}/1", r.port);
    let o = vecfs(&["format", &url, "vol1", "--bucket", &b], &[]);
    let line = fails_with(&o, &["refused the credentials", "META_PASSWORD"]);
    assert!(!line.contains("wrong-guess"), "password leaked: {line}");

    // The right password from META_PASSWORD works, and stays out of the output.
    let plain = format!("redis://127.0.0.1:{}/1", r.port);
    let o = vecfs(
        &["format", &plain, "vol1", "--bucket", &b],
        &[("META_PASSWORD", "s3cr3t-pass")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("s3cr3t"), "{out}");

    // A password in the URL is redacted wherever the URL is printed.
    let with_pw = format!("redis://:s3cr3t-pass@127.0.0.1:{}/1", r.port);
    let o = vecfs(&["status", &with_pw], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("s3cr3t"), "{out}");
    assert!(out.contains("\"name\": \"vol1\""), "{out}");

    // A background mount keeps the password out of `ps` (its command line).
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let log = dir.path().join("log");
    let o = vecfs(
        &[
            "mount",
            &with_pw,
            mp.to_str().unwrap(),
            "-d",
            "--log",
            log.to_str().unwrap(),
            "--cache-dir",
            dir.path().join("c").to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let mut seen_daemon = false;
    for p in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(mp.to_str().unwrap()) && cmd.contains("mount") {
                seen_daemon = true;
                assert!(!cmd.contains("s3cr3t"), "password in ps: {cmd}");
            }
        }
    }
    assert!(seen_daemon, "the daemon is running");
    let logtext = fs::read_to_string(&log).unwrap_or_default();
    assert!(!logtext.contains("s3cr3t"), "password in log");
    let o = vecfs(&["umount", mp.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn mounting_an_unformatted_volume() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let o = vecfs(&["mount", &r.url(3), dir.path().to_str().unwrap()], &[]);
    fails_with(&o, &["no volume is formatted", "vecfs format"]);
    let o = vecfs(
        &[
            "mount",
            &r.url(3),
            dir.path().to_str().unwrap(),
            "-d",
            "--log",
            dir.path().join("l").to_str().unwrap(),
        ],
        &[],
    );
    fails_with(&o, &["no volume is formatted"]);
    assert!(!common::is_fuse_mount(dir.path()));
}

#[test]
fn missing_bucket_and_refused_credentials() {
    let s3 = S3::start();
    let r = Redis::start();
    let url = format!("http://127.0.0.1:{}/never-created", s3.port);
    let env = [("AWS_ACCESS_KEY_ID", "a"), ("AWS_SECRET_ACCESS_KEY", "b")];
    let o = vecfs(
        &[
            "format",
            &r.url(1),
            "vol1",
            "--storage",
            "s3",
            "--bucket",
            &url,
        ],
        &env,
    );
    fails_with(&o, &["does not exist", "create it first"]);
    assert!(redis_is_empty(&r, 1), "nothing written to Redis");

    let az = Azurite::start();
    let c = az.container("real");
    let o = vecfs(
        &[
            "format",
            &r.url(2),
            "vol2",
            "--storage",
            "azure",
            "--bucket",
            &c,
            "--secret-key",
            "bm90LXRoZS1rZXk=",
        ],
        &[],
    );
    let line = fails_with(&o, &["object store check failed", "credentials"]);
    assert!(!line.contains("bm90LXRoZS1rZXk"), "key leaked: {line}");
    assert!(redis_is_empty(&r, 2), "nothing written to Redis");
}

#[test]
fn bad_mountpoints() {
    let v = Volume::new(Storage::File);
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let o = vecfs(&["mount", &v.url, missing.to_str().unwrap()], &[]);
    fails_with(&o, &["does not exist", "mkdir"]);
    let file = dir.path().join("file");
    fs::write(&file, b"").unwrap();
    let o = vecfs(&["mount", &v.url, file.to_str().unwrap()], &[]);
    fails_with(&o, &["not a directory"]);
    let m = v.mount();
    let o = vecfs(&["mount", &v.url, m.path.to_str().unwrap()], &[]);
    fails_with(&o, &["already mounted", "umount"]);
    let o = vecfs(&["umount", missing.to_str().unwrap()], &[]);
    fails_with(&o, &["not mounted"]);
    m.unmount();
}

#[test]
fn bad_format_options() {
    let r = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().to_string_lossy().into_owned();
    let url = r.url(1);
    let format_vol1 = |extra: &[&str]| {
        let mut args = vec!["format", url.as_str(), "vol1", "--bucket", b.as_str()];
        args.extend_from_slice(extra);
        vecfs(&args, &[])
    };
    let o = format_vol1(&["--block-size", "3M"]);
    fails_with(&o, &["not a power of two", "4M"]);
    let o = format_vol1(&["--block-size", "lots"]);
    fails_with(&o, &["--block-size", "not a size"]);
    for name in ["ab", "Upper", "has_underscore", &"x".repeat(64)] {
        let o = vecfs(&["format", &r.url(1), name, "--bucket", &b], &[]);
        fails_with(&o, &["invalid volume name", "a-z, 0-9"]);
    }
    let o = format_vol1(&["--storage", "ftp"]);
    fails_with(&o, &["unknown storage", "file, s3, azure"]);
    let o = format_vol1(&["--compress", "brotli"]);
    fails_with(&o, &["unknown compression"]);
    let o = format_vol1(&["--inline-size", "1M"]);
    fails_with(&o, &["--inline-size 1M is too large", "at most 64K"]);
    for bad in ["999", "rwxr-xr-x", "0x1ff", ""] {
        let o = format_vol1(&["--root-mode", bad]);
        fails_with(&o, &["--root-mode", "not an octal mode", "1777"]);
    }
    let o = format_vol1(&["--root-mode", "17777"]);
    fails_with(&o, &["--root-mode", "at most 7777"]);
    assert!(redis_is_empty(&r, 1), "nothing half-written");

    // Formatting again with the same settings is harmless; a different layout needs --force.
    let ok = vecfs(&["format", &r.url(1), "vol1", "--bucket", &b], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let again = vecfs(
        &[
            "format",
            &r.url(1),
            "vol1",
            "--bucket",
            &b,
            "--trash-days",
            "3",
        ],
        &[],
    );
    assert!(again.status.success(), "{}", stderr(&again));
    let other = dir.path().join("elsewhere");
    let o = vecfs(
        &[
            "format",
            &r.url(1),
            "vol1",
            "--bucket",
            other.to_str().unwrap(),
        ],
        &[],
    );
    fails_with(&o, &["already exists", "--force"]);
    let forced = vecfs(
        &[
            "format",
            &r.url(1),
            "vol1",
            "--bucket",
            other.to_str().unwrap(),
            "--force",
        ],
        &[],
    );
    assert!(forced.status.success(), "{}", stderr(&forced));
}

#[test]
fn background_mount_status_and_umount() {
    let v = Volume::new(Storage::File);
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).unwrap();
    let log = dir.path().join("log");
    let o = vecfs(
        &[
            "mount",
            &v.url,
            mp.to_str().unwrap(),
            "-d",
            "--log",
            log.to_str().unwrap(),
            "--cache-dir",
            dir.path().join("c").to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("vecfs umount"));
    assert!(common::is_fuse_mount(&mp), "mounted when -d returns");
    fs::write(mp.join("x"), b"data").unwrap();
    let st = vecfs(&["status", &v.url], &[]);
    let out = String::from_utf8_lossy(&st.stdout);
    assert!(out.contains(mp.to_str().unwrap()), "session listed: {out}");
    let o = vecfs(&["umount", mp.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!common::is_fuse_mount(&mp));
    // The session is gone once the daemon exits.
    common::wait_for(
        "session cleanup",
        std::time::Duration::from_secs(20),
        || {
            let st = vecfs(&["status", &v.url], &[]);
            !String::from_utf8_lossy(&st.stdout).contains(mp.to_str().unwrap())
        },
    );
}

#[test]
fn permission_checks_apply_to_other_users() {
    use std::os::unix::process::CommandExt;
    let v = Volume::new(Storage::File);
    let m = v.mount();
    fs::write(m.p("rootonly"), b"secret").unwrap();
    fs::set_permissions(
        m.p("rootonly"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::write(m.p("public"), b"open").unwrap();
    let run = |cmd: &str| {
        std::process::Command::new("sh")
            .args(["-c", cmd])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let o = run(&format!("cat {}", m.p("public").display()));
    assert!(
        o.status.success(),
        "other users can read 0644 files (allow_other)"
    );
    assert_eq!(o.stdout, b"open");
    let o = run(&format!("cat {}", m.p("rootonly").display()));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    let o = run(&format!("echo x > {}", m.p("public").display()));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    // A fresh volume's root is 0755 (as mkfs makes it): others may not create
    // there until its owner opens it up.
    let o = run(&format!("mkdir {}", m.p("newdir").display()));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    fs::set_permissions(&m.path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let o = run(&format!("mkdir {}", m.p("opendir").display()));
    assert!(o.status.success(), "{}", stderr(&o));
    m.unmount();
}

#[test]
fn unix_socket_meta_url_works() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("redis.sock");
    let r = Redis::start_with(&[
        "--unixsocket",
        sock.to_str().unwrap(),
        "--unixsocketperm",
        "700",
    ]);
    common::wait_for("socket", std::time::Duration::from_secs(10), || {
        sock.exists()
    });
    let url = format!("unix://{}?db=2", sock.display());
    let b = dir.path().join("objects");
    let o = vecfs(
        &["format", &url, "sockvol", "--bucket", b.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        r.cli(&["-n", "2", "EXISTS", "{sockvol}setting"]).trim(),
        "1"
    );
    let o = vecfs(&["status", &url], &[]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("sockvol"),
        "{}",
        stderr(&o)
    );
}
