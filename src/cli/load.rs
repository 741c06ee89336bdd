//! `vecfs load`: writes a dump (see src/meta/dump.rs) into an empty Redis
//! database in pipelined batches; a load that fails removes what it wrote.

use std::io::{BufRead, BufReader};

use anyhow::{bail, Context};
use clap::Args;
use vecfs::meta::dump::{self, DumpError};
use vecfs::meta::Meta;

#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    vecfs load redis://newhost:6379/1 backup.json\n  \
    zstd -dc backup.json.zst | vecfs load redis://newhost:6379/1 -\n\n\
The target database must hold no volume and no key of the dumped volume. \
The loaded volume uses the same objects (storage and bucket) as the dumped \
one: mount only one of the two, or deletions in one free data the other \
still uses.")]
pub struct LoadArgs {
    /// Redis URL to load into (an empty database).
    meta_url: String,
    /// The dump to read; `-` is stdin.
    file: String,
}

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    let u = crate::cli::meta_url_arg(&a.meta_url)?;
    let mut input: Box<dyn BufRead> = if a.file == "-" {
        Box::new(BufReader::with_capacity(1 << 20, std::io::stdin().lock()))
    } else {
        Box::new(BufReader::with_capacity(
            1 << 20,
            std::fs::File::open(&a.file)
                .with_context(|| format!("cannot open dump file {}", a.file))?,
        ))
    };
    let header =
        dump::read_header(&mut input).with_context(|| format!("cannot load {}", a.file))?;
    let meta = Meta::connect(&u, &header.volume.name).await?;
    match dump::check_empty(&meta, &u.redacted).await {
        Ok(()) => {}
        Err(DumpError::NotEmpty(msg)) => bail!("refusing to load: {msg}"),
        Err(e) => return Err(e.into()),
    }
    let bar = crate::cli::dump::progress_bar(0, "inodes");
    let r = dump::load(&meta, &header, &mut input, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    match r {
        Ok(l) => {
            println!(
                "loaded volume '{}' (uuid {}) into {}: {} inodes, {} directory entries, \
                 {} inline slices, {} deleted files and {} deleted slices pending",
                l.volume,
                header.volume.uuid,
                u.redacted,
                l.end.inodes,
                l.end.entries,
                l.end.inlines,
                l.end.delfiles,
                l.end.delslices
            );
            Ok(())
        }
        Err(e) => {
            // The target was empty: everything of this volume there is ours.
            let cleanup = match dump::remove_keys(&meta, &|_| {}).await {
                Ok(_) => "the partial load was removed".to_string(),
                Err(c) => format!(
                    "removing the partial load failed too ({c}): delete the keys matching {}* by hand",
                    meta.prefix()
                ),
            };
            bail!("load of {} failed: {e}; {cleanup}", a.file)
        }
    }
}
