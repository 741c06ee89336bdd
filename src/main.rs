//! The `vecfs` command: parses the command line and hands each subcommand to
//! its module under `cli/`. Errors end as one line on stderr and exit code 1.

mod cli;

use clap::Parser;

fn main() {
    if let Some(code) = cli::run_as_invoked() {
        std::process::exit(code);
    }
    let args = cli::Cli::parse();
    if let Err(e) = cli::run(args) {
        eprintln!("vecfs: error: {e:#}");
        std::process::exit(1);
    }
}
