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
    let net = make_net_at(
        format!("vecfs-t{id}"),
        format!("vfh{id}"),
        format!("vfn{id}"),
        &format!("10.231.{id}.1/24"),
        &format!("10.231.{id}.2/24"),
        None,
    )?;
    Some((net, format!("10.231.{id}.1")))
}

/// Namespace `ns` joined to the host by a veth pair (`host_if` on the host
/// with `host_cidr`, `peer` inside with `ns_cidr`), routed by default via
/// `gateway` when given.
fn make_net_at(
    ns: String,
    host_if: String,
    peer: String,
    host_cidr: &str,
    ns_cidr: &str,
    gateway: Option<&str>,
) -> Option<Net> {
    let net = Net { ns, host_if };
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
        && ip(&["addr", "add", host_cidr, "dev", &net.host_if])
        && ip(&["link", "set", &net.host_if, "up"])
        && ip(&["-n", &net.ns, "addr", "add", ns_cidr, "dev", &peer])
        && ip(&["-n", &net.ns, "link", "set", &peer, "up"])
        && ip(&["-n", &net.ns, "link", "set", "lo", "up"])
        && gateway.is_none_or(|g| ip(&["-n", &net.ns, "route", "add", "default", "via", g]));
    ok.then_some(net)
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

/// Reader nodes of the many-readers test.
const READERS: usize = 8;

/// `vecfs_object_get_bytes_total` of the mount at `root`, from its `.stats`.
fn get_bytes(root: &std::path::Path) -> u64 {
    let text = fs::read_to_string(root.join(".stats")).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("vecfs_object_get_bytes_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Drops `path`'s pages from this node's page cache, so the next read
/// reaches the daemon.
fn drop_pages(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    // SAFETY: an advice on an fd the File owns.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

#[test]
fn eight_reader_nodes_each_fetch_a_fresh_file_from_the_store_once() {
    // One namespace per reader, each a /30 of 10.232.ID.0/24, routed via
    // its host side; the servers listen on the first pair's host address.
    let id = std::process::id() % 200 + 20;
    let mut nets = Vec::new();
    for k in 0..READERS as u32 {
        let (h, n) = (4 * k + 1, 4 * k + 2);
        let Some(net) = make_net_at(
            format!("vecfs-m{id}-{k}"),
            format!("vth{id}-{k}"),
            format!("vtn{id}-{k}"),
            &format!("10.232.{id}.{h}/30"),
            &format!("10.232.{id}.{n}/30"),
            Some(&format!("10.232.{id}.{h}")),
        ) else {
            println!("SKIP: the kernel refused to create network namespaces with veth pairs");
            return;
        };
        nets.push(net);
    }
    let host_ip = format!("10.232.{id}.1");
    let redis = Redis::start_with(&["--bind", "127.0.0.1", &host_ip, "--protected-mode", "no"]);
    let s3 = S3::start_on(&host_ip);
    let url = format!("redis://{host_ip}:{}/1", redis.port);
    let bucket = format!("http://{host_ip}:{}/netns-many", s3.port);
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
            "many",
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
        name: "many".into(),
        env: env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    };
    let writer = v.mount_via(&[], &url, &[]);
    let readers: Vec<_> = nets
        .iter()
        .map(|n| {
            let nsenter = format!("--net=/run/netns/{}", n.ns);
            v.mount_via(&["nsenter", &nsenter], &url, &["--read-only"])
        })
        .collect();

    // A fresh file, written after every reader mounted.
    let body = std::sync::Arc::new(common::pattern(24 << 20, 13));
    fs::write(writer.p("segment.rv"), &*body).unwrap();
    let before: Vec<u64> = readers.iter().map(|r| get_bytes(&r.path)).collect();
    // Every reader loads it at once, then again through its daemon (the
    // page cache dropped): the store is read once per reader.
    for round in 0..2 {
        std::thread::scope(|s| {
            for (k, r) in readers.iter().enumerate() {
                let body = body.clone();
                s.spawn(move || {
                    let p = r.p("segment.rv");
                    if round == 1 {
                        drop_pages(&p);
                    }
                    let got = fs::read(&p).unwrap();
                    assert_eq!(got.len(), body.len(), "reader {k} round {round}: length");
                    assert!(got == *body, "reader {k} round {round}: content differs");
                });
            }
        });
    }
    for (k, r) in readers.iter().enumerate() {
        let fetched = get_bytes(&r.path) - before[k];
        let size = body.len() as u64;
        assert!(
            fetched >= size && fetched <= size + size / 50,
            "reader {k} fetched {fetched} bytes from the store for a {size}-byte file"
        );
    }
    for r in readers {
        r.unmount();
    }
    writer.unmount();
    drop(v);
    drop(nets);
}
