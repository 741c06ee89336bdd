//! The mount's log file with size-based rotation: when `vecfs.log` would
//! pass its size limit it becomes `vecfs.log.1` (`.1` becomes `.2`, and so
//! on; the oldest beyond `keep` is removed) and a new file starts. A
//! daemon that runs for months keeps at most (keep + 1) x limit on disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub struct RotatingFile {
    path: PathBuf,
    /// Rotate before the file passes this many bytes (0: never).
    max: u64,
    /// Rotated files kept besides the live one.
    keep: usize,
    file: File,
    len: u64,
}

fn open_append(p: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(p)
}

/// `vecfs.log` -> `vecfs.log.N`.
fn numbered(p: &Path, n: usize) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RotatingFile {
    pub fn open(path: &Path, max: u64, keep: usize) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max,
            keep,
            file,
            len,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            // Nothing kept: start the file over.
            self.file.set_len(0)?;
            self.len = 0;
            return Ok(());
        }
        let _ = std::fs::remove_file(numbered(&self.path, self.keep));
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.max > 0 && self.len > 0 && self.len + buf.len() as u64 > self.max {
            // A failed rotation (a read-only directory, say) must not cost
            // the line: keep writing to the file we have.
            if let Err(e) = self.rotate() {
                let _ = writeln!(self.file, "vecfs: cannot rotate the log: {e}");
                self.len = 0;
            }
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("vecfs.log");
        let mut f = RotatingFile::open(&p, 100, 2).expect("open");
        for i in 0..20 {
            writeln!(f, "line {i:02} {}", "x".repeat(30)).expect("write");
        }
        let sizes = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(sizes(&p) <= 100 && sizes(&p) > 0);
        assert!(sizes(&numbered(&p, 1)) > 0);
        assert!(sizes(&numbered(&p, 2)) > 0);
        assert!(!numbered(&p, 3).exists());
        let last = std::fs::read_to_string(&p).expect("read");
        assert!(last.contains("line 19"));
        let older = std::fs::read_to_string(numbered(&p, 1)).expect("read");
        assert!(!older.contains("line 19"));
    }
}
