//! Two nodes as separate hosts: one vecfs runs in its own network namespace
//! and reaches Redis and the S3 server over a veth link, not loopback.

mod common;

use std::fs;
use std::process::Command;

use common::{vecfs, wait_for, Redis, Volume, S3};

struct Net {
    ns: String,
    host_if: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A namespace with a veth pair: host side 10.231.N.1, namespace side 10.231.N.2.
fn make_net() -> Option<(Net, String)> {
    let id = std::process::id() % 200 + 20;
    let net = Net {
        ns: format!("vecfs-t{id}"),
        host_if: format!("vfh{id}"),
    };
    let peer = format!("vfn{id}");
    let host_ip = format!("10.231.{id}.1");
    let ns_ip = format!("10.231.{id}.2");
    let ok = ip(&["netns", "add", &net.ns])
        && ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])
        && ip(&["link", "set", &peer, "netns", &net.ns])
        && ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &net.host_if])
        && ip(&["link", "set", &net.host_if, "up"])
        && ip(&[
            "-n",
            &net.ns,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &peer,
        ])
        && ip(&["-n", &net.ns, "link", "set", &peer, "up"])
        && ip(&["-n", &net.ns, "link", "set", "lo", "up"]);
    if !ok {
        return None;
    }
    Some((net, host_ip))
}

#[test]
fn nodes_in_separate_network_namespaces_share_one_volume() {
    let Some((net, host_ip)) = make_net() else {
        println!("SKIP: the kernel refused to create a network namespace with a veth pair");
        return;
    };
    // Servers listen on the veth address (and loopback), as on a real host.
    let redis = Redis::start_with(&["--bind", "127.0.0.1", &host_ip, "--protected-mode", "no"]);
    let s3 = S3::start_on(&host_ip);
    let url = format!("redis://{host_ip}:{}/1", redis.port);
    let bucket = format!("http://{host_ip}:{}/netns-test", s3.port);
    let created = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/mkbucket.py"))
        .args(["s3", &bucket])
        .status()
        .unwrap();
    assert!(created.success());
    let env = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
    let o = vecfs(
        &[
            "format",
            &url,
            "netvol",
            "--storage",
            "s3",
            "--bucket",
            &bucket,
        ],
        &env,
    );
    assert!(o.status.success(), "{}", common::stderr(&o));

    let v = Volume {
        redis,
        backend: common::Backend::S3(s3),
        url: url.clone(),
        name: "netvol".into(),
        env: env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    };
    let nsenter = format!("--net=/run/netns/{}", net.ns);
    let a = v.mount_via(&["nsenter", &nsenter], &url, &[]);
    let b = v.mount_via(&[], &url, &[]);

    // The namespaced node really is cut off from the host's loopback.
    let probe = Command::new("nsenter")
        .args([
            &nsenter,
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &v.redis.port.to_string(),
            "ping",
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&probe.stdout).contains("PONG"),
        "namespace must not reach host loopback"
    );

    let body = common::pattern(9 << 20, 5);
    fs::write(a.p("segment"), &body).unwrap();
    assert_eq!(
        fs::read(b.p("segment")).unwrap(),
        body,
        "B reads what A wrote"
    );
    fs::create_dir(b.p("from-b")).unwrap();
    fs::write(b.p("from-b/ids"), b"12345").unwrap();
    wait_for(
        "A sees B's files",
        std::time::Duration::from_secs(5),
        || fs::read(a.p("from-b/ids")).ok().as_deref() == Some(b"12345"),
    );
    a.unmount();
    b.unmount();
    drop(v);
    drop(net);
}
