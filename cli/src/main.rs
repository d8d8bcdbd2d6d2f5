//! `jailsync`: rebuild packages in a jail, move them onto the live system with no downtime.
//!
//! A thin layer over `jailsync-engine`: argument parsing, output formats and exit codes.
//! Invoked as `mkjail`, `umkjail` or `sync_pkg` it behaves like the seed's scripts.

mod jail_cmd;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Exit codes shared by every subcommand.
pub mod exit {
    pub const OK: u8 = 0;
    /// Differences found (verify) or some entries failed.
    pub const PARTIAL: u8 = 1;
    /// Usage error or fatal error.
    pub const FATAL: u8 = 2;
}

#[derive(Parser, Debug)]
#[command(name = "jailsync", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options every subcommand accepts.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Emit JSON lines on stdout, ending with a summary object.
    #[arg(long, global = true)]
    pub json: bool,
    /// Where manifests, journals, locks and rollback data live (never inside a synced tree).
    #[arg(
        long,
        global = true,
        env = "JAILSYNC_STATE_DIR",
        default_value = "/var/db/jailsync"
    )]
    pub state_dir: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Jail lifecycle: init, mount, umount, status, enter.
    #[command(subcommand)]
    Jail(jail_cmd::JailCmd),
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let cli = match Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::FATAL
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.cmd {
        Cmd::Jail(j) => jail_cmd::run(j, &cli.global),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("jailsync: error: {e:#}");
            ExitCode::from(exit::FATAL)
        }
    }
}
