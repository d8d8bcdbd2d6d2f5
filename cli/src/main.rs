//! `jailsync`: rebuild packages in a jail, move them onto the live system with no downtime.
//!
//! A thin layer over `jailsync-engine`: argument parsing, output formats and exit codes.
//! Invoked as `mkjail`, `umkjail` or `sync_pkg` it behaves like the seed's scripts.

mod admin_cmd;
mod args;
mod audit;
mod conf;
mod config;
mod filters;
mod hints;
mod history_cmd;
mod jail_cmd;
mod manifest_cmd;
mod manpage;
mod output;
mod pipe;
mod pipeline;
mod procs_cmd;
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

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// pkgsrc's sync_pkg: sync each package tree of a jail onto the live root.
    Upgrade(upgrade_cmd::UpgradeCmd),
    /// Check that DST matches a tree or a manifest exactly (exit 1 with differences).
    Verify(verify_cmd::VerifyCmd),
    /// Write a manifest of a tree (blake3 per file, full metadata), for `verify`.
    Manifest(manifest_cmd::ManifestCmd),
    /// Undo the last sync of DST exactly (never lacking, whole or old).
    Rollback(rollback_cmd::RollbackCmd),
    /// List the syncs of DST that can be rolled back, with the packages each changed (and
    /// with -i its files).
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
    /// Print the settings in force (configuration file, environment, defaults) and where
    /// each came from.
    Config,
    /// List processes still running an old release of a synced tree (restart them).
    Procs(procs_cmd::ProcsCmd),
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
    let parsed = Cli::command()
        .try_get_matches_from(argv)
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (mut cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::FATAL
            } else {
                exit::OK
            };
            if code == exit::FATAL && std::env::args_os().any(|a| a == "--json") {
                let msg = e.kind().to_string();
                print_json_error(&format!("usage: {msg}"));
            }
            let _ = e.print();
            if let Some(h) = usage_hint(&e) {
                eprintln!("jailsync: {h}");
            }
            return ExitCode::from(code);
        }
    };
    if let Some(w) = cli.global.wait {
        jailsync_engine::journal::set_lock_wait(w.map(std::time::Duration::from_secs));
    }
    let conf = match settle(&mut cli, &matches) {
        Ok(c) => c,
        Err(e) => return fatal(&e, &cli.global),
    };
    let audited = audited(&cli.cmd);
    let result = match cli.cmd {
        Cmd::Config => config::run_config(&conf, &cli.global),
        Cmd::Procs(c) => procs_cmd::run_procs(c, &cli.global),
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
    if let Some(name) = audited {
        match &result {
            Ok(code) => audit::log(name, *code, None),
            Err(e) => match e.downcast_ref::<jailsync_engine::Error>() {
                // Stopped at a safe point: the exit status says by which signal.
                Some(jailsync_engine::Error::Stopped { signal, .. }) => {
                    audit::log(name, 128 + *signal as u8, None)
                }
                _ => audit::log(name, exit::FATAL, Some(&error_chain(e))),
            },
        }
    }
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
            fatal(&e, &cli.global)
        }
    }
}

/// The fix for a usage error clap cannot know: a live root given as a second argument (it
/// is `--root ROOT`, as rollback and history take it too).
fn usage_hint(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let subs = ["upgrade", "rollback", "history", "prune"];
    let sub = std::env::args()
        .skip(1)
        .find(|a| subs.contains(&a.as_str()))?;
    (!arg.starts_with('-'))
        .then(|| format!("a live root is given with --root: `jailsync {sub} ... --root {arg}`"))
}

/// The name of a command that may change a live system (the audit trail logs it).
fn audited(c: &Cmd) -> Option<&'static str> {
    match c {
        Cmd::Sync(_) => Some("sync"),
        Cmd::Upgrade(_) => Some("upgrade"),
        Cmd::Rollback(c) => (!c.dry_run).then_some("rollback"),
        Cmd::Prune(c) => (!c.dry_run).then_some("prune"),
        Cmd::Push(c) => (!c.dry_run).then_some("push"),
        _ => None,
    }
}

/// A fatal error: on stderr with the fix where one is known.
fn fatal(e: &anyhow::Error, g: &Global) -> ExitCode {
    if g.json {
        print_json_error(&error_chain(e));
    }
    // The lock's fix on the same line: a cron mail shows one line per failed run.
    let lock_hint = hints::locked(e, g.wait.is_some())
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    eprintln!("jailsync: error: {}{lock_hint}", error_chain(e));
    if let Some(h) = hints::state_dir(e, &g.state_dir) {
        eprintln!("jailsync: {h}");
    }
    ExitCode::from(exit::FATAL)
}

/// With `--json`, a fatal error is an object on stdout too: automation always has a last
/// line to parse.
fn print_json_error(msg: &str) {
    let v = serde_json::json!({"type": "error", "fatal": true, "error": msg, "exit": exit::FATAL});
    println!("{v}");
}

/// The configuration file and the filter options applied to what was parsed: a key of the
/// file fills an option the command line left at its default (see `config`).
fn settle(cli: &mut Cli, m: &ArgMatches) -> anyhow::Result<config::Config> {
    let settings_used = !matches!(cli.cmd, Cmd::Man(_) | Cmd::Completions(_));
    let mut conf = config::load(&cli.global, settings_used)?;
    config::settle_state_dir(&mut cli.global, m, &mut conf);
    let Some((_, sub)) = m.subcommand() else {
        return Ok(conf);
    };
    match &mut cli.cmd {
        Cmd::Sync(c) => settle_sync(&mut c.args, sub, &conf)?,
        Cmd::Verify(c) => filters::settle(&mut c.exclude, &c.rules, sub, file_rules(&conf))?,
        Cmd::Upgrade(c) => {
            settle_sync(&mut c.args, sub, &conf)?;
            c.protect.extend(conf.protect.value.iter().cloned());
            if c.tree.is_empty() {
                c.tree = conf.trees.value.clone();
            }
        }
        Cmd::Prune(c) if config::defaulted(sub, "keep") => c.keep = conf.keep.value,
        Cmd::Push(c) => {
            if config::defaulted(sub, "ssh") {
                c.ssh = conf.ssh.value.clone();
            }
            filters::settle(&mut c.exclude, &c.rules, sub, file_rules(&conf))?;
            if c.tree.is_empty() {
                c.tree = conf.trees.value.clone();
            }
            // Hosts named on the command line (or in --hosts-from) replace the jail's `host`
            // lines, and those the configuration file's.
            if c.targets.is_empty() && c.hosts_from.is_none() {
                let of_jail = jailsync_engine::layout::read_conf_hosts(&c.jail)?;
                c.targets = if of_jail.is_empty() {
                    conf.hosts.value.clone()
                } else {
                    of_jail
                };
            }
        }
        _ => {}
    }
    Ok(conf)
}

/// `keep`, `max-delete` and the rules of the file under what the command line says.
fn settle_sync(
    a: &mut args::SyncArgs,
    m: &ArgMatches,
    conf: &config::Config,
) -> anyhow::Result<()> {
    if config::defaulted(m, "keep") {
        a.keep = conf.keep.value;
    }
    if a.max_delete.is_none() {
        a.max_delete = conf.max_delete.value;
    }
    if a.switch.is_none() {
        a.switch = conf.switch.value;
    }
    filters::settle(&mut a.exclude, &a.rules, m, file_rules(conf))
}

/// The configuration file's rules, as `filters` takes them.
fn file_rules(conf: &config::Config) -> filters::Conf<'_> {
    filters::Conf {
        filter: &conf.filter.value,
        filter_at: conf.filter.from.to_string(),
        exclude: &conf.exclude.value,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option and argument a user can see has help, and none says "seed" (the
    /// project's name for pkgsrc's scripts, not a host admin's word).
    #[test]
    fn every_option_has_help_without_jargon() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                if a.is_hide_set() || ["help", "version"].contains(&a.get_id().as_str()) {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.is_empty() || help.to_lowercase().contains("seed") {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for s in c.get_subcommands() {
                if s.is_hide_set() || s.get_name() == "help" {
                    continue;
                }
                let about = s.get_about().map(|h| h.to_string()).unwrap_or_default();
                if about.is_empty() || about.to_lowercase().contains("seed") {
                    missing.push(format!("{path} {}", s.get_name()));
                }
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "jailsync", &mut missing);
        assert!(missing.is_empty(), "no help, or jargon: {missing:#?}");
    }
}
