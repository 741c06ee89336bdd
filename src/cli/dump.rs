//! `vecfs dump`: writes a volume's whole metadata as versioned JSON lines
//! (the format is described in src/meta/dump.rs) to a file or stdout, and
//! the progress bar every long-running command of this family shares.

use std::io::{BufWriter, IsTerminal, Write};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    vecfs dump redis://localhost:6379/1 backup.json\n  \
    vecfs dump redis://localhost:6379/1 - | zstd > backup.json.zst\n\n\
The dump holds every inode, directory entry, slice list, inline file bytes, \
symlink, xattr and pending deletion, and the volume record (which holds no \
secret). Sessions and locks are not dumped. Dumping a volume while it is \
written gives a usable dump, but not a point-in-time one.")]
pub struct DumpArgs {
    /// Redis URL of the volume.
    meta_url: String,
    /// Where to write the dump; `-` is stdout.
    file: String,
    /// Volume name, when the database holds more than one.
    #[arg(long)]
    name: Option<String>,
}

/// A progress bar on stderr counting `unit`, of `len` steps (0: unknown),
/// hidden when stderr is not a terminal (scripts, logs, tests).
pub fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, tpl) = if len > 0 {
        (
            ProgressBar::new(len),
            format!("{{spinner}} [{{elapsed_precise}}] [{{wide_bar}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"),
        )
    } else {
        (
            ProgressBar::new_spinner(),
            format!("{{spinner}} [{{elapsed_precise}}] {{pos}} {unit} ({{per_sec}})"),
        )
    };
    if let Ok(style) = ProgressStyle::with_template(&tpl) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

pub async fn run(a: DumpArgs) -> anyhow::Result<()> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let (meta, fmt) = crate::cli::open_volume(&u, a.name.as_deref()).await?;
    let (_, total) = meta.usage().await?;
    let out: Box<dyn Write> = if a.file == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&a.file)
                .with_context(|| format!("cannot create dump file {}", a.file))?,
        )
    };
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let bar = progress_bar(total, "inodes");
    let r = vecfs::meta::dump::dump(&meta, &fmt, &mut w, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let end = match r {
        Ok(end) => end,
        Err(e) => {
            if a.file != "-" {
                // A partial dump would only be refused later: do not leave one.
                drop(w);
                let _ = std::fs::remove_file(&a.file);
            }
            return Err(
                anyhow::Error::new(e).context(format!("dump of volume '{}' failed", fmt.name))
            );
        }
    };
    eprintln!(
        "dumped volume '{}': {} inodes, {} directory entries, {} inline slices, \
         {} deleted files and {} deleted slices pending",
        fmt.name, end.inodes, end.entries, end.inlines, end.delfiles, end.delslices
    );
    Ok(())
}
