//! mount(8) integration: `vecfs install-mount-helper` puts a `mount.vecfs`
//! symlink to this binary where mount(8) looks for helpers, and, invoked
//! under that name, the binary speaks the helper convention
//! (`mount.vecfs SPEC DIR [-sfnv] [-o OPTIONS]`): it maps the `-o` options
//! to `vecfs mount` flags and mounts in the background like `mount -d`.
//! The option mapping is shared with the Docker volume plugin.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{ArgAction, Args, CommandFactory, Parser};

/// The name mount(8) runs for file system type `vecfs`.
pub const HELPER_NAME: &str = "mount.vecfs";

#[derive(Args, Debug)]
#[command(after_help = "Example:\n  vecfs install-mount-helper\n  \
    echo 'redis://10.0.0.5:6379/1 /mnt/vecfs vecfs _netdev,cache-dir=/var/cache/vecfs,env-file=/etc/vecfs/milvus.env 0 0' >> /etc/fstab\n  \
    mount /mnt/vecfs")]
pub struct InstallArgs {
    /// Directory to put the `mount.vecfs` symlink in (mount(8) looks in
    /// /sbin and /usr/sbin only).
    #[arg(long, default_value = "/sbin")]
    dir: PathBuf,
}

/// Installs (or replaces) the `mount.vecfs` symlink to this executable.
pub fn install(a: InstallArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the vecfs executable")?;
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let link = a.dir.join(HELPER_NAME);
    match std::fs::symlink_metadata(&link) {
        Ok(md) if !md.file_type().is_symlink() => bail!(
            "{} exists and is not a symlink: remove it first if it is an old helper",
            link.display()
        ),
        _ => {}
    }
    if !a.dir.is_dir() {
        bail!("{} is not a directory", a.dir.display());
    }
    // A new link renamed over the old one: mount(8) never sees no helper.
    let tmp = a
        .dir
        .join(format!(".{HELPER_NAME}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&exe, &tmp)
        .with_context(|| format!("cannot create a symlink in {}", a.dir.display()))?;
    if let Err(e) = std::fs::rename(&tmp, &link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot install {}", link.display()));
    }
    println!("installed {} -> {}", link.display(), exe.display());
    Ok(())
}

/// Whether this process was started as `mount.vecfs` (through the symlink).
pub fn invoked_as_helper() -> bool {
    std::env::args_os()
        .next()
        .and_then(|a0| {
            Path::new(&a0)
                .file_name()
                .map(|n| n.to_string_lossy().starts_with(HELPER_NAME))
        })
        .unwrap_or(false)
}

/// Options mount(8) and fstab use for themselves, and ones vecfs always
/// applies: accepted and dropped.
const IGNORED: &[&str] = &[
    "defaults",
    "rw",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "netdev",
    "async",
    "dev",
    "suid",
    "exec",
    "atime",
    "noatime",
    "relatime",
    "nouser",
    "default_permissions",
];

/// Kernel mount flags that go to the FUSE mount unchanged (`vecfs mount -o`).
const KERNEL: &[&str] = &["nodev", "nosuid", "noexec"];

/// `vecfs mount` flags an option may not set: the helper decides them, or
/// they are secrets that do not belong in a world-readable fstab.
const REFUSED: &[(&str, &str)] = &[
    ("background", "the helper always mounts in the background"),
    ("options", "give FUSE options directly"),
    (
        "access-key",
        "keep object-store keys in an env-file= (ACCESS_KEY=...)",
    ),
    (
        "secret-key",
        "keep object-store keys in an env-file= (SECRET_KEY=...)",
    ),
];

/// `vecfs mount` flags and environment built from mount options.
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    /// Arguments for `vecfs mount` after META-URL and MOUNTPOINT.
    pub args: Vec<String>,
    /// Variables read from `env-file=` (META_PASSWORD, keys), for the daemon.
    pub env: Vec<(String, String)>,
    /// Options dropped under `-s` (sloppy), for a warning.
    pub skipped: Vec<String>,
}

/// Maps mount options (`key` or `key=value`, as in `-o a,b=c`) to `vecfs
/// mount` flags: `ro` is `--read-only`, `cache_dir`/`cache-dir=X` is
/// `--cache-dir=X`, and so on for every long flag of `vecfs mount`.
/// Unknown options are an error naming the option, unless `sloppy`.
pub fn map_options<'a>(
    opts: impl IntoIterator<Item = &'a str>,
    sloppy: bool,
) -> anyhow::Result<Mapped> {
    let cmd = crate::cli::mount::MountArgs::augment_args(clap::Command::new("mount"));
    let mut m = Mapped::default();
    for raw in opts {
        let o = raw.trim();
        if o.is_empty() {
            continue;
        }
        let (key, value) = match o.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v)),
            None => (o, None),
        };
        if IGNORED.contains(&key) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        if KERNEL.contains(&key) {
            m.args.push("-o".into());
            m.args.push(key.into());
            continue;
        }
        if key == "ro" || key == "read_only" || key == "read-only" {
            if value.is_none_or(truthy) {
                m.args.push("--read-only".into());
            }
            continue;
        }
        if key == "env-file" || key == "env_file" {
            let Some(path) = value.filter(|v| !v.is_empty()) else {
                bail!("mount option 'env-file' needs a file: env-file=/etc/vecfs/NAME.env");
            };
            m.env.extend(read_env_file(Path::new(path))?);
            continue;
        }
        let flag = key.replace('_', "-");
        if let Some((_, why)) = REFUSED.iter().find(|(k, _)| *k == flag) {
            bail!("mount option '{key}' is not allowed: {why}");
        }
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(flag.as_str()));
        let Some(arg) = arg else {
            if sloppy {
                m.skipped.push(key.to_string());
                continue;
            }
            bail!("unknown mount option '{key}' (see `vecfs mount --help` for the options; write them without the leading --)");
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, None) => m.args.push(format!("--{flag}")),
            (ArgAction::SetTrue, Some(v)) if truthy(v) => m.args.push(format!("--{flag}")),
            (ArgAction::SetTrue, Some(v)) if falsy(v) => {}
            (ArgAction::SetTrue, Some(v)) => {
                bail!("mount option '{key}' takes no value or true/false, not '{v}'")
            }
            // Options whose value may be left out (--allow-other).
            (_, None) if arg.get_num_args().is_none_or(|n| n.min_values() > 0) => {
                bail!("mount option '{key}' needs a value: {key}=VALUE")
            }
            (_, None) => m.args.push(format!("--{flag}")),
            (_, Some(v)) => m.args.push(format!("--{flag}={v}")),
        }
    }
    Ok(m)
}

fn truthy(v: &str) -> bool {
    matches!(v, "true" | "1" | "yes" | "on")
}

fn falsy(v: &str) -> bool {
    matches!(v, "false" | "0" | "no" | "off")
}

/// Reads `KEY=VALUE` lines (`#` comments, optional `export ` and quotes),
/// as systemd's EnvironmentFile and docker's --env-file write them.
pub fn read_env_file(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read env file {}", path.display()))?;
    if let Ok(md) = std::fs::metadata(path) {
        if md.permissions().mode() & 0o077 != 0 {
            eprintln!(
                "vecfs: warning: env file {} is readable by other users: chmod 600 it",
                path.display()
            );
        }
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l).trim_start();
        let Some((k, v)) = l.split_once('=') else {
            // The line may hold a secret: only its number is shown.
            bail!(
                "env file {} line {}: expected KEY=VALUE",
                path.display(),
                n + 1
            );
        };
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!(
                "env file {} line {}: '{k}' is not a variable name",
                path.display(),
                n + 1
            );
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The helper's command line, as mount(8) passes it.
#[derive(Debug, Default, PartialEq)]
struct HelperCall {
    spec: String,
    dir: PathBuf,
    options: Vec<String>,
    sloppy: bool,
    fake: bool,
    verbose: u8,
}

fn parse_helper_args(args: &[OsString]) -> anyhow::Result<HelperCall> {
    let usage = "usage: mount.vecfs META-URL MOUNTPOINT [-sfnv] [-o OPTIONS]";
    let mut call = HelperCall::default();
    let mut positional: Vec<String> = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) {
            // -o and -t take a value (attached or next), the rest are letters.
            let mut chars = flags.chars();
            while let Some(c) = chars.next() {
                match c {
                    'o' | 't' | 'N' => {
                        let rest: String = chars.by_ref().collect();
                        let v = if rest.is_empty() {
                            it.next()
                                .with_context(|| format!("-{c} needs a value; {usage}"))?
                        } else {
                            rest
                        };
                        match c {
                            'o' => call.options.extend(v.split(',').map(String::from)),
                            't' => {
                                if !matches!(v.as_str(), "vecfs" | "fuse.vecfs") {
                                    bail!("mount.vecfs mounts type vecfs, not '{v}'");
                                }
                            }
                            _ => bail!("mount.vecfs cannot mount into another namespace (-N)"),
                        }
                    }
                    's' => call.sloppy = true,
                    'f' => call.fake = true,
                    'n' => {} // there is no mtab to write
                    'v' => call.verbose += 1,
                    'r' => call.options.push("ro".into()),
                    'w' => {}
                    other => bail!("unknown flag -{other}; {usage}"),
                }
            }
        } else {
            positional.push(a);
        }
    }
    match positional.as_slice() {
        [spec, dir] => {
            call.spec = spec.clone();
            call.dir = PathBuf::from(dir);
        }
        _ => bail!("{usage}"),
    }
    Ok(call)
}

/// Runs as `mount.vecfs`: maps the call to `vecfs mount -d` and returns
/// once the mount is ready (or with the daemon's error).
pub fn run_helper() -> anyhow::Result<()> {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-h" || a == "--help" || a == "--version")
    {
        println!(
            "mount.vecfs: mount(8) helper of vecfs {}\n\
             usage: mount.vecfs META-URL MOUNTPOINT [-sfnv] [-o OPTIONS]\n\
             OPTIONS are `vecfs mount` flags without the leading -- (cache-dir=/var/cache/vecfs,\n\
             cache-size=20480,ro,...), env-file=FILE (META_PASSWORD=..., ACCESS_KEY=...),\n\
             and the usual fstab options (_netdev, defaults, noauto, nofail, x-systemd.*).",
            env!("CARGO_PKG_VERSION")
        );
        return Ok(());
    }
    let call = parse_helper_args(&args)?;
    let mapped = map_options(call.options.iter().map(String::as_str), call.sloppy)?;
    if !mapped.skipped.is_empty() {
        eprintln!(
            "mount.vecfs: ignoring unknown options (sloppy): {}",
            mapped.skipped.join(",")
        );
    }
    if call.fake {
        return Ok(());
    }
    // The daemon inherits these (META_PASSWORD is read when the URL is
    // parsed); nothing else runs yet, so setting them cannot race a reader.
    for (k, v) in &mapped.env {
        std::env::set_var(k, v);
    }
    if already_mounted(&call.spec, &call.dir, &mapped.args) {
        // `mount -a` again: mount(8) cannot match the fstab line to the
        // mount (its source is vecfs:NAME, not the URL), so it asks again.
        eprintln!(
            "mount.vecfs: {} is already mounted (this volume)",
            call.dir.display()
        );
        return Ok(());
    }
    let mut argv: Vec<OsString> = vec!["vecfs".into()];
    for _ in 0..call.verbose {
        argv.push("-v".into());
    }
    argv.push("mount".into());
    // The URL (and any password in it) stays in this process: `mount -d`
    // hands it to the daemon through the environment.
    argv.push(call.spec.into());
    argv.push(call.dir.into_os_string());
    argv.push("-d".into());
    argv.extend(mapped.args.into_iter().map(OsString::from));
    let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string().lines().next().unwrap_or("bad mount options")
        )
    })?;
    crate::cli::run(cli)
}

/// Whether `dir` already holds a mount of the volume `spec` names (its
/// mount source is `vecfs:NAME`). Anything else mounted there is left to
/// `vecfs mount`, which refuses with a clear error.
fn already_mounted(spec: &str, dir: &Path, args: &[String]) -> bool {
    let Some(entry) = vecfs::util::mount_entry(dir) else {
        return false;
    };
    let Some(mounted) = entry.vecfs_volume() else {
        return false;
    };
    if let Some(n) = args.iter().find_map(|a| a.strip_prefix("--name=")) {
        return n == mounted;
    }
    let Ok(u) = crate::cli::meta_url_arg(spec) else {
        return false;
    };
    let Ok(rt) = crate::cli::runtime() else {
        return false;
    };
    let found = rt.block_on(async {
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            vecfs::meta::Meta::find_volume(&u),
        )
        .await
    });
    matches!(found, Ok(Ok(Some(n))) if n == mounted)
}

/// `vecfs mount` flags from a map of options (the Docker plugin's `Opts`).
pub fn map_option_map(opts: &BTreeMap<String, String>) -> anyhow::Result<Mapped> {
    let list: Vec<String> = opts
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.clone()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    map_options(list.iter().map(String::as_str), false)
}

/// Checks that the `vecfs mount` flags parse (values are checked at mount).
pub fn check_mount_args(args: &[String]) -> anyhow::Result<()> {
    let mut argv = vec!["vecfs", "mount", "redis://check", "/"];
    argv.extend(args.iter().map(String::as_str));
    crate::cli::Cli::command()
        .try_get_matches_from(argv)
        .map(|_| ())
        .map_err(|e| {
            anyhow::anyhow!(
                "{}",
                e.to_string().lines().next().unwrap_or("bad mount options")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_args_follow_mount8() {
        let c = parse_helper_args(&os(&[
            "redis://h/1",
            "/mnt/v",
            "-n",
            "-o",
            "rw,_netdev,cache-dir=/c",
            "-sv",
        ]))
        .unwrap();
        assert_eq!(c.spec, "redis://h/1");
        assert_eq!(c.dir, PathBuf::from("/mnt/v"));
        assert_eq!(c.options, vec!["rw", "_netdev", "cache-dir=/c"]);
        assert!(c.sloppy && !c.fake);
        assert_eq!(c.verbose, 1);
        assert!(parse_helper_args(&os(&["only-one"])).is_err());
        assert!(parse_helper_args(&os(&["a", "b", "-t", "nfs"])).is_err());
        assert!(parse_helper_args(&os(&["a", "b", "-ocache-size=1"])).is_ok());
    }

    #[test]
    fn options_map_to_mount_flags() {
        let m = map_options(
            [
                "defaults",
                "_netdev",
                "x-systemd.automount",
                "ro",
                "cache_dir=/var/c",
                "cache-size=2G",
                "warm-on-commit=*.rv,*.uid",
                "allow_other",
                "no-events=false",
                "writeback",
                "nodev",
            ],
            false,
        )
        .unwrap();
        assert_eq!(
            m.args,
            vec![
                "--read-only",
                "--cache-dir=/var/c",
                "--cache-size=2G",
                "--warm-on-commit=*.rv,*.uid",
                "--allow-other",
                "--writeback",
                "-o",
                "nodev"
            ]
        );
        check_mount_args(&m.args).unwrap();
    }

    #[test]
    fn bad_options_are_named() {
        let e = map_options(["cache-dir=/c", "bogus=1"], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'bogus'"), "{e}");
        let e = map_options(["cache-size"], false).unwrap_err().to_string();
        assert!(e.contains("needs a value"), "{e}");
        let e = map_options(["secret-key=x"], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("env-file"), "{e}");
        let m = map_options(["bogus"], true).unwrap();
        assert_eq!(m.skipped, vec!["bogus"]);
    }

    #[test]
    fn env_files_parse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("e.env");
        std::fs::write(
            &p,
            "# secret\nMETA_PASSWORD=\"p w\"\nexport ACCESS_KEY=ak\n\nSECRET_KEY='x=y'\n",
        )
        .unwrap();
        let v = read_env_file(&p).unwrap();
        assert_eq!(
            v,
            vec![
                ("META_PASSWORD".to_string(), "p w".to_string()),
                ("ACCESS_KEY".to_string(), "ak".to_string()),
                ("SECRET_KEY".to_string(), "x=y".to_string()),
            ]
        );
        std::fs::write(&p, "META_PASSWORD hunter2\n").unwrap();
        let e = read_env_file(&p).unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
