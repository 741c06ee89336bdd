//! Small parsers and checks shared by the CLI: sizes with units, file
//! modes, volume names, and the mount table.

use std::path::Path;

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

/// File-system type of whatever is mounted exactly at `path`, if anything.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    mount_entry(path).map(|(fstype, _)| fstype)
}

/// File-system type and source (e.g. `fuse`, `vecfs:NAME`) of whatever is
/// mounted exactly at `path`, if anything.
pub fn mount_entry(path: &Path) -> Option<(String, String)> {
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let target = canon.to_string_lossy().into_owned();
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 10 {
            continue;
        }
        if unescape_mountinfo(f[4]) != target {
            continue;
        }
        if let Some(dash) = f.iter().position(|x| *x == "-") {
            if let Some(t) = f.get(dash + 1) {
                let source = f.get(dash + 2).map(|s| unescape_mountinfo(s));
                // the last one mounted on top wins
                found = Some((t.to_string(), source.unwrap_or_default()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

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
