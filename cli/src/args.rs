//! What every command shares from its arguments: the global options, the exit codes, the
//! options of `sync` and `upgrade` and the engine options they make, and the trees an upgrade
//! names. Imports no other file of the CLI.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use jailsync_engine::layout::Layout;
use jailsync_engine::scan::Excludes;
use jailsync_engine::sync::SyncOpts;

/// Exit codes shared by every subcommand.
pub mod exit {
    pub const OK: u8 = 0;
    /// Differences found (verify) or some entries failed.
    pub const PARTIAL: u8 = 1;
    /// Usage error or fatal error.
    pub const FATAL: u8 = 2;
}

/// The state dir's default on this OS (the BSDs keep package state in /var/db, Linux in
/// /var/lib); [`OLD_STATE_DIR`] is used instead when only it exists.
pub const DEFAULT_STATE_DIR: &str = if cfg!(any(
    target_os = "netbsd",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "dragonfly"
)) {
    "/var/db/jailsync"
} else {
    "/var/lib/jailsync"
};

/// The default of earlier versions, on every OS.
pub const OLD_STATE_DIR: &str = "/var/db/jailsync";

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
    /// Where manifests, journals, locks and rollback data live (never inside a synced tree;
    /// default: the configuration file's `state-dir`, else /var/lib/jailsync on Linux and
    /// /var/db/jailsync on the BSDs, or /var/db/jailsync where only that one exists).
    #[arg(
        long,
        global = true,
        env = "JAILSYNC_STATE_DIR",
        default_value = DEFAULT_STATE_DIR,
        hide_default_value = true
    )]
    pub state_dir: PathBuf,
    /// When another run holds a destination's lock, wait for it to end (up to SECS seconds;
    /// without a value, for as long as it takes) instead of failing at once.
    #[arg(
        long,
        global = true,
        value_name = "SECS",
        num_args = 0..=1,
        require_equals = true
    )]
    pub wait: Option<Option<u64>>,
    /// The configuration file (default /etc/jailsync.conf, if there; see FILES).
    #[arg(long, global = true, env = "JAILSYNC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// rsync's filter options beside `--exclude` (see FILTER RULES in jailsync(1)), for `sync`,
/// `upgrade` and `verify`.
#[derive(Args, Debug, Clone, Default)]
pub struct RuleArgs {
    /// Do not exclude what matches PATTERN (rsync's `--include`): with the other filter
    /// options, the first rule that matches a path decides, in the order given.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Exclude the patterns of FILE, one a line (`+ `/`- ` prefixes, `!` clears, `#` or `;`
    /// comments), as rsync's `--exclude-from`.
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// A filter rule in rsync's syntax: `- PATTERN`, `+ PATTERN`, `-! PATTERN` (where it does
    /// not match), `!` (clear), `merge FILE` (its lines are rules). See FILTER RULES.
    #[arg(short = 'f', long, value_name = "RULE", allow_hyphen_values = true)]
    pub filter: Vec<String>,
}

/// Options shared by `sync` and `upgrade`.
#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    /// Show what would change; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print one rsync-style line per change on stdout.
    #[arg(short, long)]
    pub itemize: bool,
    /// Print rsync's statistics block (files, sizes, bytes written, speed-up) on stdout.
    #[arg(long)]
    pub stats: bool,
    /// Ignore cached hashes: hash every file that must be compared.
    #[arg(short, long)]
    pub checksum: bool,
    /// Leave paths matching GLOB alone (neither copied nor deleted). Repeatable. No `/`: any
    /// name at any depth; with `/`: the whole relative path (unlike rsync, a `/` anywhere
    /// anchors it at the top); trailing `/`: directories only.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub rules: RuleArgs,
    /// Worker threads for walking, hashing and writing (default: twice the cores, 4..16).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// Make the result durable: fsync data before each rename and every touched directory.
    #[arg(long)]
    pub fsync: bool,
    /// Sync into the target of a destination that is a symlink (only one owned by root or
    /// you). Without it a symlinked destination is refused, however it is spelled (`DST/`,
    /// `DST/.`).
    #[arg(long)]
    pub follow_dst: bool,
    /// Neither compare nor copy extended attributes (one call per entry less while scanning).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Do not keep the replaced entries for `jailsync rollback`.
    #[arg(long)]
    pub no_rollback: bool,
    /// Rollback generations to keep per destination.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub keep: usize,
    /// Take files of equal size and mtime (to the nanosecond) as unchanged without reading
    /// them, as rsync does (blind to a content change whose mtime was set back).
    #[arg(long, conflicts_with = "checksum")]
    pub quick: bool,
    /// Refuse (exit 2, nothing changed) if more than N entries would be deleted, in all.
    /// Without it a run that would delete more than half of a destination's entries (one of
    /// more than 256) is refused: most likely the wrong source or destination.
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
    /// Run what is refused by default as most likely a mistake: deleting more than half of a
    /// destination (see --max-delete), an upgrade whose ROOT is a jail (has a `.jail` marker).
    #[arg(long)]
    pub force: bool,
    /// How DST is switched to the new release. `exchange`: DST is a directory, exchanged with
    /// the next tree in one `RENAME_EXCHANGE` (a program that loads code after the switch
    /// loads the new release's). `link`: DST becomes a symlink to the release in its home
    /// (`DST -> .jailsync-NAME/rel-N`), replaced by one rename, so a running program that
    /// resolved its real path (Node, `$ORIGIN`, `/proc/self/exe`) keeps loading from the
    /// release it started in; a directory DST is converted by one exchange.
    /// Default: as DST is now (a directory is exchanged, a switch link renamed over).
    #[arg(long, value_name = "HOW")]
    pub switch: Option<SwitchArg>,
}

/// `--switch`'s values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchArg {
    Exchange,
    Link,
}

pub(crate) fn engine_opts(a: &SyncArgs) -> Result<SyncOpts> {
    Ok(SyncOpts {
        excludes: Excludes::new(&a.exclude).context("bad --exclude pattern")?,
        checksum: a.checksum,
        dry_run: a.dry_run,
        fsync: a.fsync,
        threads: a.threads,
        rollback: !a.no_rollback,
        xattrs: !a.no_xattrs,
        keep: a.keep,
        exclude_patterns: a.exclude.clone(),
        stop: (!a.dry_run).then(stop_on_signals),
        quick: a.quick,
        switch: a.switch.map(|s| match s {
            SwitchArg::Exchange => jailsync_engine::opts::SwitchBy::Exchange,
            SwitchArg::Link => jailsync_engine::opts::SwitchBy::Link,
        }),
        ..SyncOpts::default()
    })
}

/// SIGINT, SIGTERM and SIGHUP no longer kill a sync: they set a flag (to the signal's number)
/// that the engine checks at its safe points; it then removes what it staged and returns
/// `Stopped`, which exits 128 + the signal (130 for SIGINT, 143 for SIGTERM).
pub(crate) fn stop_on_signals() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // Registration only fails for signals that cannot be caught; these three can.
        let _ = signal_hook::flag::register_usize(sig, flag.clone(), sig as usize);
    }
    flag
}

/// The arguments a phase runs with: its own excludes, and the jail's `.jailsync-new` files
/// left alone where configuration is protected.
pub(crate) fn phase_args(a: &SyncArgs, excludes: &[String], protect: bool) -> SyncArgs {
    let mut a2 = a.clone();
    a2.exclude.extend(excludes.iter().cloned());
    if protect {
        a2.exclude
            .push(jailsync_engine::protect::NEW_EXCLUDE.to_string());
        a2.exclude
            .push(jailsync_engine::protect::ASIDE_EXCLUDE.to_string());
    }
    a2
}

/// Refuses a tree that is not a plain relative path.
pub fn check_rel(trees: &[PathBuf]) -> Result<()> {
    Ok(jailsync_engine::upgrade::check_rel(trees)?)
}

/// The trees of an upgrade: `--tree`, else `tree` lines of JAIL/jailsync.conf, else the
/// layout the jail has. Databases go last.
pub fn layout_of(jail: &Path, given: &[PathBuf]) -> Result<(Layout, Vec<String>)> {
    jailsync_engine::upgrade::layout_of(jail, given).map_err(|e| e.into_caller())
}
