//! Redis over TLS (`rediss://` with a CA and client certificate made here
//! with the openssl CLI; a wrong CA is a clear error, not a hang) and a
//! restricted ACL user (the README's rule: only the volume's keys, its
//! change channel and the commands vecfs sends), including a user without
//! the channel, refused at mount.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::tls::{make_ca, make_leaf};
use common::*;

fn file_volume(redis: Redis, url: &str, env: &[(&str, &str)], extra: &[&str]) -> Volume {
    let store = tempfile::tempdir().expect("tempdir");
    let bucket = store.path().join("objects").to_string_lossy().into_owned();
    let mut args = vec![
        "format",
        url,
        "testvol",
        "--storage",
        "file",
        "--bucket",
        &bucket,
    ];
    args.extend_from_slice(extra);
    let o = vecfs(&args, env);
    assert!(o.status.success(), "format failed: {}", stderr(&o));
    Volume {
        redis,
        backend: Backend::File(store),
        url: url.to_string(),
        name: "testvol".into(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[test]
fn tls_with_test_ca_and_client_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let d = certs.path();
    make_ca(d, "ca");
    make_leaf(d, "ca", "server");
    make_leaf(d, "ca", "client");
    make_ca(d, "otherca");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let tls_port = free_port();
    // The plain port stays for the harness' readiness check; vecfs uses
    // only the TLS one, which demands a client certificate.
    let redis = Redis::start_with(&[
        "--tls-port",
        &tls_port.to_string(),
        "--tls-cert-file",
        &p("server.pem"),
        "--tls-key-file",
        &p("server.key"),
        "--tls-ca-cert-file",
        &p("ca.pem"),
        "--tls-auth-clients",
        "yes",
    ]);
    let base = format!("rediss://127.0.0.1:{tls_port}/1");
    let url = format!(
        "{base}?tls_ca={}&tls_cert={}&tls_key={}",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let vol = file_volume(redis, &url, &[], &[]);
    let m = vol.mount();
    let m2 = vol.mount();
    std::fs::write(m.p("over-tls"), b"secret bytes").expect("write over TLS");
    assert_eq!(std::fs::read(m2.p("over-tls")).unwrap(), b"secret bytes");
    // The TLS port carried the mounts' connections.
    let clients = vol.redis.cli(&["client", "list"]);
    assert!(
        clients.lines().filter(|l| l.contains("cmd=")).count() >= 3,
        "{clients}"
    );

    // A CA that did not sign the server's certificate: a clear error, fast.
    let wrong = format!(
        "{base}?tls_ca={}&tls_cert={}&tls_key={}",
        p("otherca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let t = Instant::now();
    let o = vecfs(&["status", &wrong], &[]);
    let e = stderr(&o);
    assert!(!o.status.success(), "a wrong CA was accepted");
    assert!(
        e.contains("TLS") && e.contains("certificate") && e.contains("tls_ca"),
        "unclear error: {e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "wrong CA took {:?}",
        t.elapsed()
    );

    // Skipping verification works (and is documented as for tests only).
    let insecure = format!(
        "{base}?insecure=true&tls_cert={}&tls_key={}",
        p("client.pem"),
        p("client.key")
    );
    let o = vecfs(&["status", &insecure], &[]);
    assert!(o.status.success(), "insecure: {}", stderr(&o));
    m2.unmount();
    m.unmount();
}

/// The README's ACL rule for volume `testvol` (db 1).
const ACL_RULE: &str = "resetkeys ~{testvol}* resetchannels &{testvol}events -@all \
+ping +select +evalsha +script|load +get +mget +incrby \
+hget +hgetall +hkeys +hdel +zadd +zrem +zrange +del +lrange +multi +exec \
+publish +subscribe +unsubscribe +wait +role \
+decr +exists +hexists +hlen +hset +incr +lpush +ltrim +rpush +sadd +set +setnx \
+smembers +srem +time +zrangebyscore +zscore +hscan +zcard +info";

fn acl(redis: &Redis, user: &str, pw: &str, rule: &str) {
    let mut args = vec!["acl", "setuser", user, "reset", "on"];
    let pass = format!(">{pw}");
    args.push(&pass);
    args.extend(rule.split_whitespace());
    let r = redis.cli(&args);
    assert!(r.trim() == "OK", "ACL SETUSER: {r}");
}

#[test]
fn restricted_acl_user_works_and_missing_channel_is_refused() {
    let redis = Redis::start();
    acl(&redis, "vecfs", "vecfs-pw", ACL_RULE);
    let url = format!("redis://vecfs@127.0.0.1:{}/1", redis.port);
    let env = [("META_PASSWORD", "vecfs-pw")];
    let vol = file_volume(redis, &url, &env, &[]);
    let m = vol.mount_with(&["--name", "testvol"]);
    let m2 = vol.mount_with(&[
        "--name",
        "testvol",
        "--attr-cache",
        "30",
        "--entry-cache",
        "30",
    ]);
    // Everyday operations as the restricted user.
    std::fs::create_dir(m.p("d")).unwrap();
    std::fs::write(m.p("d/a"), b"one").unwrap();
    std::fs::rename(m.p("d/a"), m.p("d/b")).unwrap();
    std::fs::write(m.p("d/c"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("b", m.p("d/l")).unwrap();
    std::fs::hard_link(m.p("d/b"), m.p("d/h")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(m.p("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "c", "h", "l"]);
    // The second mount caches for 30 s: seeing changes at once proves the
    // change events reach it.
    assert_eq!(std::fs::read(m2.p("d/b")).unwrap(), b"one");
    std::fs::write(m.p("d/b"), b"two!").unwrap();
    wait_for(
        "second mount sees the change",
        Duration::from_secs(10),
        || std::fs::read(m2.p("d/b")).ok().as_deref() == Some(b"two!".as_slice()),
    );
    std::fs::remove_file(m.p("d/h")).unwrap();
    std::fs::remove_file(m.p("d/c")).unwrap();
    wait_for(
        "second mount sees the removal",
        Duration::from_secs(10),
        || !m2.p("d/c").exists(),
    );
    let log = m.log_text() + &m2.log_text();
    assert!(!log.contains("NOPERM"), "a command was refused:\n{log}");

    // The same rule without the channel: refused at mount, naming it.
    let nochan = ACL_RULE.replace("&{testvol}events", "");
    acl(&vol.redis, "nochan", "nochan-pw", &nochan);
    let url2 = format!("redis://nochan@127.0.0.1:{}/1", vol.redis.port);
    let dir = tempfile::tempdir().unwrap();
    // Under `timeout`: should the mount wrongly succeed, it serves in the
    // foreground until then.
    let mp = dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let o = Command::new("timeout")
        .args(["20", VECFS, "mount", &url2])
        .arg(&mp)
        .args(["--name", "testvol", "--metrics", "none", "--cache-dir"])
        .arg(dir.path().join("c"))
        .env("META_PASSWORD", "nochan-pw")
        .output()
        .expect("run vecfs");
    let e = stderr(&o);
    assert!(
        !o.status.success() && o.status.code() != Some(124),
        "mounted without the channel permission"
    );
    assert!(
        e.contains("{testvol}events") && e.contains("ACL"),
        "unclear: {e}"
    );
    assert!(!e.contains("nochan-pw"), "{e}");
    m2.unmount();
    m.unmount();
}

/// The README promises a mount whose user may not run INFO lists as
/// before (a directory of several HSCAN pages whole), warning once that a
/// listing spanning a failover could then miss names.
#[test]
fn a_user_without_info_lists_large_directories_and_is_warned() {
    let redis = Redis::start();
    let rule = ACL_RULE.replace(" +info", "");
    assert_ne!(rule, ACL_RULE, "the README rule has +info");
    acl(&redis, "noinfo", "noinfo-pw", &rule);
    let url = format!("redis://noinfo@127.0.0.1:{}/1", redis.port);
    let env = [("META_PASSWORD", "noinfo-pw")];
    let vol = file_volume(redis, &url, &env, &[]);
    let m = vol.mount_with(&["--name", "testvol"]);
    let d = m.p("many");
    std::fs::create_dir(&d).unwrap();
    const N: usize = 2_500; // three pages of 1,000
    for i in 0..N {
        std::fs::File::create(d.join(format!("f{i:05}"))).unwrap();
    }
    let names: std::collections::HashSet<String> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), N, "every name listed once");
    let log = m.log_text();
    assert_eq!(
        log.matches("may not run INFO").count(),
        1,
        "warned once:\n{log}"
    );
    m.unmount();
}
