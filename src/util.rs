//! Small parsers and checks shared by the CLI: sizes with units, file
//! modes, volume names, and the mount table.

use std::path::{Path, PathBuf};

/// Parses `4M`, `512K`, `1G`, `4096` (plain numbers are in `default_unit` bytes).
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("'{s}' is not a size: use a number with an optional K, M, G or T suffix")
    })?;
    let mult = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => default_unit,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        other => {
            return Err(format!(
                "'{s}' has an unknown unit '{other}': use K, M, G or T"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses an octal permission mode as chmod takes it: `755`, `0755`, `1777`
/// (at most 07777: permission, sticky, setgid and setuid bits).
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("'{s}' is not an octal mode: use e.g. 755 or 1777"));
    }
    match u16::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("'{s}' is not a mode: at most 7777 (octal)")),
    }
}

/// Volume names become Redis hash tags and object key prefixes.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid volume name '{name}': use 3 to 63 characters from a-z, 0-9 and '-'"
        ))
    }
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of the mount table (`/proc/self/mountinfo`), unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system (its bdi name for FUSE).
    pub dev: String,
    pub mountpoint: PathBuf,
    /// e.g. `fuse`, `ext4`.
    pub fstype: String,
    /// e.g. `vecfs:NAME`.
    pub source: String,
}

impl MountEntry {
    /// The volume name when this is a vecfs mount.
    pub fn vecfs_volume(&self) -> Option<&str> {
        if !self.fstype.starts_with("fuse") {
            return None;
        }
        self.source.strip_prefix("vecfs:")
    }

    /// What to call its file system in messages: "vecfs" for ours.
    pub fn kind(&self) -> &str {
        if self.vecfs_volume().is_some() {
            "vecfs"
        } else {
            &self.fstype
        }
    }
}

/// The mount table in mount order; every command that asks what is mounted
/// where reads it here.
pub fn mount_table() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                dev: f.get(2)?.to_string(),
                mountpoint: PathBuf::from(unescape_mountinfo(f.get(4)?)),
                fstype: f.get(dash + 1)?.to_string(),
                source: f.get(dash + 2).map(|s| unescape_mountinfo(s))?,
            })
        })
        .collect()
}

/// Whatever is mounted exactly at `path` (the last mounted on top), if anything.
pub fn mount_entry(path: &Path) -> Option<MountEntry> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_at(mount_table(), &canon)
}

fn mount_at(table: Vec<MountEntry>, path: &Path) -> Option<MountEntry> {
    table.into_iter().rev().find(|m| m.mountpoint == path)
}

/// File-system type of whatever is mounted exactly at `path`, if anything.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    mount_entry(path).map(|m| m.fstype)
}

/// The mount `path` (absolute, canonical) lives on: the deepest mount point
/// above it, the last mounted on top when several share it.
pub fn mount_containing(path: &Path) -> Option<MountEntry> {
    containing(mount_table(), path)
}

fn containing(table: Vec<MountEntry>, path: &Path) -> Option<MountEntry> {
    let mut best: Option<MountEntry> = None;
    for m in table {
        if path.starts_with(&m.mountpoint)
            && best
                .as_ref()
                .is_none_or(|b| m.mountpoint.as_os_str().len() >= b.mountpoint.as_os_str().len())
        {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_table_lines_parse_unescaped_and_the_deepest_mount_wins() {
        let text = "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    60 22 0:50 / /mnt/with\\040space rw,nosuid - fuse vecfs:milvus rw\n\
                    61 60 0:51 / /mnt/with\\040space/inner rw - fuse sshfs#x rw\n\
                    62 22 0:52 / /mnt/with\\040space rw - fuse vecfs:other rw\n\
                    garbage line\n";
        let t = parse_mountinfo(text);
        assert_eq!(t.len(), 4);
        assert_eq!(t[1].mountpoint, Path::new("/mnt/with space"));
        assert_eq!(t[1].dev, "0:50");
        assert_eq!(t[1].vecfs_volume(), Some("milvus"));
        assert_eq!(t[2].vecfs_volume(), None);
        assert_eq!(t[0].kind(), "ext4");
        let top = mount_at(t.clone(), Path::new("/mnt/with space")).unwrap();
        assert_eq!(top.vecfs_volume(), Some("other"));
        let c = containing(t.clone(), Path::new("/mnt/with space/inner/x")).unwrap();
        assert_eq!(c.kind(), "fuse");
        let c = containing(t.clone(), Path::new("/mnt/with space/db")).unwrap();
        assert_eq!(c.vecfs_volume(), Some("other"));
        assert_eq!(containing(t, Path::new("/etc")).unwrap().kind(), "ext4");
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("755"), Ok(0o755));
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("1777"), Ok(0o1777));
        assert_eq!(parse_mode("0o700"), Ok(0o700));
        assert_eq!(parse_mode("0"), Ok(0));
        for bad in ["", "8", "rwx", "-755", "17777", "077777", "0o", "7 55"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4M", 1024), Ok(4 << 20));
        assert_eq!(parse_size("4096", 1024), Ok(4 << 20));
        assert_eq!(parse_size("1GiB", 1), Ok(1 << 30));
        assert!(parse_size("4X", 1).is_err());
        assert!(parse_size("", 1).is_err());
    }

    #[test]
    fn volume_names_are_checked() {
        assert!(check_volume_name("milvus-db1").is_ok());
        assert!(check_volume_name("ab").is_err());
        assert!(check_volume_name("Upper").is_err());
        assert!(check_volume_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn mountinfo_escapes_decode() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
    }
}
