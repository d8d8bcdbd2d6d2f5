//! `jailsync`: rebuild packages in a jail, move them onto the live system with no downtime.
//!
//! A thin layer over `jailsync-engine`: argument parsing, output formats and exit codes.
//! Invoked as `mkjail`, `umkjail` or `sync_pkg` it behaves like the seed's scripts.

mod admin_cmd;
mod args;
mod conf;
mod hints;
mod history_cmd;
mod jail_cmd;
mod manifest_cmd;
mod output;
mod pipe;
mod pipeline;
mod push_cmd;
mod rails;
mod rollback_cmd;
mod roots;
mod serve_cmd;
mod sync_cmd;
mod upgrade_cmd;
mod verify_cmd;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use args::{exit, Global};

#[derive(Parser, Debug)]
#[command(name = "jailsync", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Make DST identical to SRC: new files first, old ones last, nothing ever missing.
    Sync(sync_cmd::SyncCmd),
    /// The seed's sync_pkg: sync each package tree of a jail onto the live root.
    Upgrade(upgrade_cmd::UpgradeCmd),
    /// Check that DST matches a tree or a manifest exactly (exit 1 with differences).
    Verify(verify_cmd::VerifyCmd),
    /// Write a manifest of a tree (blake3 per file, full metadata), for `verify`.
    Manifest(manifest_cmd::ManifestCmd),
    /// Undo the last sync of DST exactly (never lacking, whole or old).
    Rollback(rollback_cmd::RollbackCmd),
    /// List the syncs of DST that can be rolled back.
    History(history_cmd::HistoryCmd),
    /// Show the jail's versions of kept configuration files (`NAME.jailsync-new`) as unified
    /// diffs against the live ones (exit 1 when some are pending).
    ConfDiff {
        /// The live root (or one tree) to look in.
        root: PathBuf,
    },
    /// Push a jail's trees to many hosts over ssh; every host stages, then all switch.
    Push(push_cmd::PushCmd),
    /// The remote end of `push` (speaks its protocol on stdin/stdout; started by push).
    ///
    /// Without --allow-root it serves any absolute root and state dir the pusher names: a key
    /// that may run `jailsync serve` may write as root anywhere. To restrict a key, force the
    /// command in authorized_keys, as rsync's `rrsync` does, and name the state dir there:
    /// `command="jailsync --state-dir /var/db/jailsync serve --allow-root /usr/pkg
    /// --allow-root /var/db/pkg",restrict ssh-ed25519 ...`
    #[command(hide = true)]
    Serve(serve_cmd::ServeCmd),
    /// Jail lifecycle: init, mount, umount, status, enter.
    #[command(subcommand)]
    Jail(jail_cmd::JailCmd),
    /// Remove old rollback generations of DST to free space.
    Prune(admin_cmd::PruneCmd),
    /// Print the manual page (roff; `--dir` writes one page per subcommand).
    Man(admin_cmd::ManCmd),
    /// Print a shell completion script.
    Completions(admin_cmd::CompletionsCmd),
}

/// Invoked under one of the seed's script names, behave like it: `mkjail` is `jail mount`,
/// `umkjail` is `jail umount`, `sync_pkg` is `upgrade`, on `$JAIL` (default /usr/pkg_jail).
/// Further arguments are passed on.
fn seed_argv(argv: Vec<OsString>) -> Vec<OsString> {
    let name = argv
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let sub: &[&str] = match name {
        "mkjail" => &["jail", "mount"],
        "umkjail" => &["jail", "umount"],
        "sync_pkg" => &["upgrade"],
        _ => return argv,
    };
    let jail = std::env::var_os("JAIL").unwrap_or_else(|| "/usr/pkg_jail".into());
    let mut out: Vec<OsString> = vec!["jailsync".into()];
    out.extend(sub.iter().map(OsString::from));
    out.push(jail);
    out.extend(argv.into_iter().skip(1));
    out
}

/// glibc raises its mmap threshold each time a large block is freed, after which big entry
/// lists grow inside the heap by copying and leave freed holes behind; a fixed threshold keeps
/// them in their own mappings, which grow by `mremap` and return to the system when freed
/// (peak RSS of a 200k-file upgrade 114 MB -> 96 MB).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    pipe::quiet_on_closed_stdout();
    let argv = seed_argv(std::env::args_os().collect());
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
        Cmd::Sync(c) => sync_cmd::run_sync(c, &cli.global),
        Cmd::Upgrade(c) => upgrade_cmd::run_upgrade(c, &cli.global),
        Cmd::Verify(c) => verify_cmd::run_verify(c, &cli.global),
        Cmd::Manifest(c) => manifest_cmd::run_manifest(c, &cli.global),
        Cmd::Rollback(c) => rollback_cmd::run_rollback(c, &cli.global),
        Cmd::History(c) => history_cmd::run_history(c, &cli.global),
        Cmd::ConfDiff { root } => conf::run_conf_diff(&root, &cli.global),
        Cmd::Jail(j) => jail_cmd::run(j, &cli.global),
        Cmd::Prune(c) => admin_cmd::run_prune(c, &cli.global),
        Cmd::Man(c) => admin_cmd::run_man(c, Cli::command()),
        Cmd::Completions(c) => admin_cmd::run_completions(c, Cli::command()),
        Cmd::Push(c) => push_cmd::run_push(c, &cli.global),
        Cmd::Serve(c) => serve_cmd::run_serve(c, &cli.global),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if pipe::is_closed_stdout(&e) {
                pipe::end_quietly();
            }
            if let Some(jailsync_engine::Error::Stopped { path, signal, when }) =
                e.downcast_ref::<jailsync_engine::Error>()
            {
                let name = match *signal {
                    libc::SIGINT => "SIGINT",
                    libc::SIGTERM => "SIGTERM",
                    libc::SIGHUP => "SIGHUP",
                    _ => "a signal",
                };
                eprintln!("jailsync: {}: stopped by {name} {when}", path.display());
                return ExitCode::from(128 + *signal as u8);
            }
            eprintln!("jailsync: error: {}", error_chain(&e));
            if let Some(h) = hints::state_dir(&e, &cli.global.state_dir) {
                eprintln!("jailsync: {h}");
            }
            ExitCode::from(exit::FATAL)
        }
    }
}

/// The error and its causes, `: `-separated, skipping a cause the text already ends with: an
/// engine error prints its io cause itself and also reports it as its source.
fn error_chain(e: &anyhow::Error) -> String {
    let mut s = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if s.ends_with(&t) {
            continue;
        }
        if !s.is_empty() {
            s.push_str(": ");
        }
        s.push_str(&t);
    }
    s
}
