//! `sync`, `upgrade`, `verify` and `manifest`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use jailsync_engine::entry::display_path;
use jailsync_engine::manifest;
use jailsync_engine::paths::{self, Follow};
use jailsync_engine::plan::Counts;
use jailsync_engine::progress::{Progress, Silent};
use jailsync_engine::scan::Excludes;
use jailsync_engine::sync::{self, Pools, SyncOpts, Tree};

use crate::output::{self, Bars, Summary, Timed};
use crate::{exit, Global};

/// Options shared by `sync` and `upgrade`.
#[derive(Args, Debug, Clone)]
pub struct SyncArgs {
    /// Show what would change; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print one rsync-style line per change on stdout.
    #[arg(short, long)]
    pub itemize: bool,
    /// Ignore cached hashes: hash every file that must be compared.
    #[arg(short, long)]
    pub checksum: bool,
    /// Leave paths matching GLOB alone (neither copied nor deleted). Repeatable. No `/`: any
    /// name at any depth; with `/`: the whole relative path (leading `/` anchors); trailing `/`:
    /// directories only.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
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
}

#[derive(Args, Debug)]
pub struct RollbackCmd {
    /// Destination(s) whose last sync to undo (for an upgrade: ROOT/usr/pkg ROOT/var/db/pkg).
    #[arg(required_unless_present = "root", conflicts_with = "root")]
    pub dst: Vec<PathBuf>,
    /// Undo the last `upgrade` of this live root: every tree it switched, in reverse order
    /// (also after a run that was killed or failed in a later tree).
    #[arg(long, value_name = "ROOT", conflicts_with = "gen")]
    pub root: Option<PathBuf>,
    /// Roll back to this generation instead of the newest (see `history`).
    #[arg(long, value_name = "N")]
    pub gen: Option<u64>,
    /// Show what would change; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print one rsync-style line per change on stdout.
    #[arg(short, long)]
    pub itemize: bool,
    /// Roll back the target of a DST that is a symlink (only one owned by root or you).
    #[arg(long)]
    pub follow_dst: bool,
    /// Also roll back entries changed since the sync. A tree switched whole is switched back
    /// and the tree that was live, with those changes, is kept whole beside the generations;
    /// per-file generations keep each changed entry in the rollback store first. Without it
    /// they are left as they are and reported (exit 1).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct HistoryCmd {
    /// The destination whose rollback generations to list.
    #[arg(required_unless_present = "root", conflicts_with = "root")]
    pub dst: Option<PathBuf>,
    /// List the upgrades of this live root instead (one line per upgrade, all its trees).
    #[arg(long, value_name = "ROOT")]
    pub root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SyncCmd {
    /// The tree to copy from (e.g. the jail's usr/pkg). `SRC` and `SRC/` mean the same: DST
    /// is made identical to SRC, like `rsync -a --delete SRC/ DST/`. rsync reads `SRC` without
    /// the slash as "SRC into DST" (DST/NAME); where that reading is likely (the names differ
    /// and DST holds an entry named as SRC that SRC lacks, or is named as SRC's parent: `sync
    /// JAIL/usr/pkg /usr`) the run is refused, naming both commands: write `SRC/` to make DST
    /// identical, `DST/NAME` to copy into it.
    pub src: PathBuf,
    /// The tree to make identical to SRC (created if missing; its parent must exist).
    pub dst: PathBuf,
    /// Create DST's missing parent directories too (without it a DST whose parent does not
    /// exist is refused: likely a typo).
    #[arg(long)]
    pub mkpath: bool,
    #[command(flatten)]
    pub args: SyncArgs,
}

#[derive(Args, Debug)]
pub struct UpgradeCmd {
    /// The jail holding the rebuilt packages.
    pub jail: PathBuf,
    /// The live system's root.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// A tree to sync, relative to JAIL and ROOT (repeatable; default: `tree` lines of
    /// JAIL/jailsync.conf, else usr/pkg and var/db/pkg). The package database goes last.
    #[arg(long, value_name = "REL")]
    pub tree: Vec<PathBuf>,
    /// Also protect configuration files matching GLOB (ROOT-relative, `--exclude` syntax;
    /// repeatable; also `protect GLOB` lines of JAIL/jailsync.conf). Every tree's `etc/` is
    /// protected by default: see the README's "Configuration files".
    #[arg(long, value_name = "GLOB")]
    pub protect: Vec<String>,
    /// Do not protect every tree's `etc/` (GLOBs given still are).
    #[arg(long)]
    pub no_protect: bool,
    #[command(flatten)]
    pub args: SyncArgs,
}

#[derive(Args, Debug)]
pub struct VerifyCmd {
    /// A tree, or a manifest written by `jailsync manifest`.
    pub src: PathBuf,
    /// The tree to check.
    pub dst: PathBuf,
    /// Ignore cached hashes.
    #[arg(short, long)]
    pub checksum: bool,
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ManifestCmd {
    /// The tree to describe.
    pub tree: PathBuf,
    /// Where to write it (default: stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Ignore cached hashes.
    #[arg(short, long)]
    pub checksum: bool,
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
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

fn progress(g: &Global) -> Box<Timed<Box<dyn Progress>>> {
    progress_named(g, Vec::new())
}

/// Progress whose bars name each tree (`names`: destination, name shown).
fn progress_named(g: &Global, names: Vec<(PathBuf, String)>) -> Box<Timed<Box<dyn Progress>>> {
    let inner: Box<dyn Progress> = if Bars::wanted(g.quiet, g.json) {
        Box::new(Bars::new(names))
    } else {
        Box::new(Silent)
    };
    Box::new(Timed::new(inner))
}

pub fn run_sync(c: SyncCmd, g: &Global) -> Result<u8> {
    // Canonical paths: state (caches, locks, rollback) is keyed by them.
    let (s, d) = sync::check_pair(&c.src, &c.dst, c.args.follow_dst)?;
    check_rsync_habit(&c.src, &s, &c.dst, &d)?;
    crate::admin_cmd::check_parent(&c.dst, c.mkpath)?;
    let ran = run_pairs(vec![(s, d, Vec::new())], &c.args, g, &Hooks::default())?;
    Ok(ran.finish(g))
}

/// Refuses the one spelling whose meaning differs between rsync and us when rsync's is the
/// likely one. `rsync -a /jail/usr/pkg /usr` (the seed's own line) copies `pkg` *into* `/usr`;
/// `sync` makes DST identical to SRC, so the same words would delete all of `/usr` but `pkg`'s
/// content, other destinations' homes with it. Tests, scripts and the README use `sync SRC DST`
/// with differing names for the identical-tree meaning, so a differing name alone is not
/// refused; what marks rsync's reading is SRC without a trailing slash, a different name, and
/// DST already holding an entry of SRC's name (SRC holding none) or named as SRC's parent. `SRC/` (or `SRC/.`)
/// always means "identical", as in rsync. `src` and `dst` as the user spelled them, `src_c`
/// and `dst_c` resolved.
fn check_rsync_habit(src: &Path, src_c: &Path, dst: &Path, dst_c: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let spelled = src.as_os_str().as_bytes();
    let last = src.components().next_back();
    if spelled.ends_with(b"/")
        || spelled.ends_with(b"/.")
        || !matches!(last, Some(std::path::Component::Normal(_)))
    {
        return Ok(());
    }
    // The name rsync would give the copy: SRC's as spelled (a symlink is not followed there).
    let (Some(name), Some(dname)) = (src.file_name(), dst_c.file_name()) else {
        return Ok(());
    };
    if name == dname {
        return Ok(());
    }
    // DST/NAME is rsync's target only when it is not SRC/NAME's counterpart: a tree holding
    // an entry of its own name (`src/src`) is synced onto a copy of itself.
    let holds = std::fs::symlink_metadata(dst_c.join(name)).is_ok()
        && std::fs::symlink_metadata(src_c.join(name)).is_err();
    let parents_name = src_c.parent().and_then(Path::file_name) == Some(dname);
    if !holds && !parents_name {
        return Ok(());
    }
    let (s, d, n) = (src.display(), dst.display(), name.to_string_lossy());
    let into = dst.join(name);
    bail!(
        "sync {s} {d}: ambiguous: rsync copies {n} into {d} (as {into}), while sync makes {d} \
         identical to {s}, deleting all of {d} that {n} lacks; nothing was changed. Say which \
         you mean:\n    jailsync sync {s}/ {d}    (make {d} identical to {s})\n    jailsync \
         sync {s} {into}    (copy {n} into {d})",
        into = into.display()
    );
}

/// Refuses a tree that is not a plain relative path.
pub fn check_rel(trees: &[PathBuf]) -> Result<()> {
    for t in trees {
        let bad = t.is_absolute()
            || t.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad || t.as_os_str().is_empty() {
            bail!(
                "{}: a tree must be a relative path without `..`",
                t.display()
            );
        }
    }
    Ok(())
}

pub fn run_upgrade(c: UpgradeCmd, g: &Global) -> Result<u8> {
    crate::upgrade_cmd::run(c, g)
}

/// What `upgrade` adds to a run of pairs: excludes for one phase (a nested database and its
/// home), and configuration protection.
#[derive(Default)]
pub struct Hooks {
    pub extra_excludes: Vec<String>,
    pub protect: Option<jailsync_engine::protect::Rules>,
}

/// A run of pairs, its summary not printed yet (an upgrade in phases prints one).
pub struct Ran {
    pub code: u8,
    /// None: nothing was switched (staging failed, reported).
    pub summary: Option<Summary>,
    pub verbose_phases: Option<String>,
}

impl Ran {
    /// Prints the summary (stdout JSON or stderr line); returns the exit code.
    pub fn finish(self, g: &Global) -> u8 {
        if let Some(summary) = &self.summary {
            if g.json {
                println!("{}", summary.json());
            } else if !g.quiet {
                eprintln!("{}", summary.human());
                if let Some(p) = &self.verbose_phases {
                    eprintln!("phases: {p}");
                }
            }
        }
        self.code
    }
}

/// Runs checked (source, destination, itemize prefix) pairs, their paths canonical.
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

pub fn run_pairs(
    checked: Vec<(PathBuf, PathBuf, Vec<u8>)>,
    a: &SyncArgs,
    g: &Global,
    hooks: &Hooks,
) -> Result<Ran> {
    let t0 = Instant::now();
    let a2 = phase_args(a, &hooks.extra_excludes, hooks.protect.is_some());
    let a = &a2;
    let opts = engine_opts(a)?;
    let pairs: Vec<(&Path, &Path)> = checked
        .iter()
        .map(|(s, d, _)| (s.as_path(), d.as_path()))
        .collect();
    sync::check_disjoint(&pairs)?;
    let all: Vec<&Path> = checked
        .iter()
        .flat_map(|(s, d, _)| [s.as_path(), d.as_path()])
        .collect();
    let state = sync::open_state(&g.state_dir, &all)?;
    let pools = Pools::new(opts.threads);
    let prog = progress_named(
        g,
        checked
            .iter()
            .map(|(_, d, rel)| (d.clone(), String::from_utf8_lossy(rel).into_owned()))
            .collect(),
    );
    let mut trees: Vec<Tree> = Vec::new();
    for (s, d, _) in &checked {
        trees.push(sync::prepare(s, d, Some(&state), &opts, &pools, &*prog)?);
    }
    let decisions = match &hooks.protect {
        Some(rules) => crate::conf::decide_all(rules, &mut trees, &checked, &state)?,
        None => Vec::new(),
    };
    // After the protection decisions: configuration they keep is not deleted.
    crate::admin_cmd::check_deletes(&trees, a)?;
    let mut switched = None;
    if !a.dry_run && sync::all_switchable(&trees) {
        let r = jailsync_engine::txn::switch_all(&mut trees, &state, &opts, &pools, &*prog)?;
        match &r.fallback {
            Some(why) => {
                for t in trees.iter_mut() {
                    if let Some(h) = t.home.as_mut() {
                        h.method = jailsync_engine::switch::Method::PerFile(why.clone());
                    }
                }
            }
            None => switched = Some(r),
        }
    }
    let report = if a.dry_run {
        None
    } else if switched.is_some() {
        switched
    } else {
        if g.verbose > 0 && !g.quiet {
            for t in &trees {
                if let Some(h) = &t.home {
                    eprintln!(
                        "jailsync: {}: switch by {}",
                        t.dst_path.display(),
                        h.method.describe()
                    );
                }
            }
        }
        Some(sync::apply_all(
            &trees,
            Some(&state),
            &opts,
            &pools,
            &*prog,
        )?)
    };
    if let Some(why) = report.as_ref().and_then(|r| r.aborted.as_ref()) {
        eprintln!("jailsync: {why}");
        return Ok(Ran {
            code: exit::PARTIAL,
            summary: None,
            verbose_phases: None,
        });
    }

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut counts = Counts::default();
    let mut errors = 0;
    for (k, t) in trees.iter().enumerate() {
        let done: &[bool] = report.as_ref().map_or(&[], |r| &r.outcomes[k].done);
        output::add_counts(&mut counts, Counts::of_done(&t.plan, done));
        if a.itemize || g.json {
            output::print_changes(&mut out, &t.plan, &t.src, &t.dst, &checked[k].2, g.json)?;
        }
        if let Some(d) = decisions.get(k) {
            crate::conf::print_decisions(&mut out, d, &checked[k].2, a.itemize, g.json)?;
        }
        for (p, e) in &t.scan_errors {
            errors += 1;
            report_error(&mut out, g, &p.display().to_string(), "scan", e)?;
        }
        if let Some(r) = &report {
            let o = &r.outcomes[k];
            for e in &o.errors {
                errors += 1;
                // Named where the problem is: the jail's file when it could not be read.
                let side = if jailsync_engine::apply::is_source_side(&e.error) {
                    &t.src_path
                } else {
                    &t.dst_path
                };
                let p = side.join(jailsync_engine::fsx::os(&e.path));
                report_error(
                    &mut out,
                    g,
                    &p.display().to_string(),
                    e.phase.name(),
                    &e.error,
                )?;
            }
            if g.verbose > 0 && !g.json {
                for p in &o.kept {
                    eprintln!(
                        "jailsync: kept {}: not empty (holds excluded or new entries)",
                        t.dst_path.join(jailsync_engine::fsx::os(p)).display()
                    );
                }
            }
        }
    }
    if let Some(r) = &report {
        if !g.quiet {
            for n in &r.notes {
                eprintln!("jailsync: note: {n}");
            }
        }
        output::print_switches(&mut out, g, &trees, r)?;
        if g.verbose > 0 && !g.json {
            for (gen, t) in r.generations.iter().zip(&trees) {
                if let Some(gen) = gen {
                    eprintln!(
                        "jailsync: {}: rollback generation {} kept in {}",
                        t.dst_path.display(),
                        gen.id,
                        gen.store.display()
                    );
                }
            }
        }
    }
    let mut conf = crate::conf::Tally::of(&decisions);
    if !a.dry_run {
        if let (Some(rules), Some(r)) = (&hooks.protect, &report) {
            errors += crate::conf::finish_all(
                rules, &trees, &checked, &decisions, r, &state, &mut conf, &mut out, g,
            )?;
        }
    }
    let summary = Summary {
        conf: hooks.protect.as_ref().map(|_| conf),
        counts,
        bytes_written: report.as_ref().map_or(0, |r| r.bytes_written()),
        elapsed: t0.elapsed(),
        switch_window: report
            .as_ref()
            .map_or(Default::default(), |r| r.switch_window),
        errors,
        dry_run: a.dry_run,
        hashed_bytes: trees.iter().map(|t| t.hashed_bytes).sum(),
        cache_hits: trees.iter().map(|t| t.cache_hits).sum(),
    };
    out.flush()?;
    Ok(Ran {
        code: if errors > 0 { exit::PARTIAL } else { exit::OK },
        summary: Some(summary),
        verbose_phases: (g.verbose > 0).then(|| prog.report()),
    })
}

fn report_error(
    out: &mut impl Write,
    g: &Global,
    path: &str,
    phase: &str,
    e: &io::Error,
) -> io::Result<()> {
    if g.json {
        let v = serde_json::json!({"type": "error", "path": path, "phase": phase, "error": e.to_string()});
        writeln!(out, "{v}")?;
    }
    eprintln!("jailsync: {path}: {e} (while {phase})");
    Ok(())
}

pub fn run_verify(c: VerifyCmd, g: &Global) -> Result<u8> {
    // verify only reads: a symlinked DST is followed (when owned by root or the caller),
    // whatever its spelling.
    let dst = paths::resolve_dir(&c.dst, "destination", Follow::Owned)?;
    if !dst.is_dir() {
        bail!("{}: not a directory", c.dst.display());
    }
    // State is only read and written for caches here; a read-only state dir is no error.
    let state = sync::open_state(&g.state_dir, &[&dst]).ok();
    // Configuration kept with the admin's edits by the last upgrade is not a difference, nor
    // are the jail's versions written beside it (see the README's "Configuration files").
    let kept = state
        .as_ref()
        .and_then(|s| crate::conf::kept_for_verify(s, &dst));
    let mut patterns = c.exclude.clone();
    if let Some(s) = &state {
        patterns.extend(crate::conf::nested_homes(s, &dst));
    }
    if kept.is_some() {
        patterns.push(jailsync_engine::protect::NEW_EXCLUDE.into());
        patterns.push(jailsync_engine::protect::ASIDE_EXCLUDE.into());
    }
    let opts = SyncOpts {
        excludes: Excludes::new(&patterns).context("bad --exclude pattern")?,
        checksum: c.checksum,
        dry_run: true,
        ..SyncOpts::default()
    };
    let pools = Pools::new(0);
    let prog = progress(g);
    let mut tree = if c.src.is_dir() {
        let (src, dst) = sync::check_pair(&c.src, &c.dst, true)?;
        sync::prepare(&src, &dst, state.as_ref(), &opts, &pools, &*prog)?
    } else {
        let m = manifest::read_file(&c.src)?;
        sync::prepare_from_manifest(&c.src, m, &dst, state.as_ref(), &opts, &pools, &*prog)?
    };
    let (kept_config, kept_changed) = match &kept {
        Some(kept) => crate::conf::drop_kept(&mut tree, kept)?,
        None => (0, 0),
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // -q: the exit code is the whole answer.
    let tell = !g.quiet || g.json;
    if tell {
        output::print_changes(&mut out, &tree.plan, &tree.src, &tree.dst, b"", g.json)?;
        for (p, e) in &tree.scan_errors {
            report_error(&mut out, g, &p.display().to_string(), "scan", e)?;
        }
    }
    let differ = !tree.plan.is_empty() || !tree.scan_errors.is_empty();
    if g.json {
        let v = serde_json::json!({
            "type": "summary",
            "match": !differ,
            "differences": tree.plan.actions.len(),
            "errors": tree.scan_errors.len(),
            "config_kept": kept_config,
            "config_kept_changed": kept_changed,
        });
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    if !g.quiet && !g.json {
        if kept_config > 0 {
            eprintln!(
                "{}: {kept_config} configuration file{} kept with local edits (not counted; see `jailsync conf-diff`)",
                c.dst.display(),
                if kept_config == 1 { "" } else { "s" }
            );
        }
        if kept_changed > 0 {
            eprintln!(
                "{}: {kept_changed} configuration entr{} kept with local edits changed since (counted)",
                c.dst.display(),
                if kept_changed == 1 { "y" } else { "ies" }
            );
        }
        if differ {
            eprintln!(
                "{}: {} differences from {}",
                c.dst.display(),
                tree.plan.actions.len(),
                c.src.display()
            );
        } else if g.verbose > 0 {
            eprintln!("{}: matches {}", c.dst.display(), c.src.display());
        }
    }
    Ok(if differ { exit::PARTIAL } else { exit::OK })
}

pub fn run_manifest(c: ManifestCmd, g: &Global) -> Result<u8> {
    let opts = SyncOpts {
        excludes: Excludes::new(&c.exclude).context("bad --exclude pattern")?,
        checksum: c.checksum,
        ..SyncOpts::default()
    };
    let pools = Pools::new(0);
    let prog = progress(g);
    // The stat cache is keyed by the canonical path, whatever the spelling.
    let tree = std::fs::canonicalize(&c.tree).with_context(|| c.tree.display().to_string())?;
    let state = sync::open_state(&g.state_dir, &[&tree]).ok();
    let (m, errors) = sync::scan_and_hash(&tree, state.as_ref(), &opts, &pools, &*prog)?;
    for (p, e) in &errors {
        eprintln!("jailsync: {}: {e}", p.display());
    }
    match &c.output {
        Some(p) => manifest::write_file_durable(p, &m, false)?,
        None => {
            let stdout = io::stdout();
            let mut l = io::BufWriter::with_capacity(1 << 16, stdout.lock());
            manifest::write_to(&mut l, m.stamp, &m.entries, false)?;
            l.flush()?;
        }
    }
    if !g.quiet && !g.json {
        if let Some(p) = &c.output {
            eprintln!(
                "{}: {} entries written to {}",
                display_path(c.tree.as_os_str().as_encoded_bytes()),
                m.entries.len(),
                p.display()
            );
        }
    }
    Ok(if errors.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

pub fn run_rollback(c: RollbackCmd, g: &Global) -> Result<u8> {
    // A rollback takes milliseconds once it begins: SIGINT, SIGTERM and SIGHUP wait for it
    // (a half-made one would leave the newer release's metadata on the older files); a
    // SIGKILL is finished by the next command (see `generation::recover`).
    let stop = (!c.dry_run).then(stop_on_signals);
    let code = if let Some(root) = &c.root {
        crate::roots::rollback(root, c.force, c.dry_run, g)?
    } else {
        rollback_trees(&c, g)?
    };
    match stop.map(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
        Some(sig) if sig != 0 => {
            eprintln!("jailsync: signal {sig} received: the rollback was finished first");
            Ok((128 + sig) as u8)
        }
        _ => Ok(code),
    }
}

/// `rollback DST...`: the trees given, switched back together.
fn rollback_trees(c: &RollbackCmd, g: &Global) -> Result<u8> {
    // Trees switched together are locked together; a tree inside another (a nested package
    // database) cannot be, and is rolled back on its own.
    let canon: Vec<PathBuf> = c
        .dst
        .iter()
        .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
        .collect();
    for a in &canon {
        if let Some(b) = canon.iter().find(|b| *b != a && a.starts_with(b)) {
            bail!(
                "{}: inside {}, also given: roll them back one at a time, the inner one first, or the whole last upgrade with `jailsync rollback --root ROOT`",
                a.display(),
                b.display()
            );
        }
    }
    let opts = SyncOpts {
        dry_run: c.dry_run,
        ..SyncOpts::default()
    };
    let pools = Pools::new(0);
    let prog = progress(g);
    let mut errors = 0;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // Trees switched whole are checked first and switched back together at the end, back to
    // back, so an upgrade's trees are never in different releases for longer than that.
    let mut switched = Vec::new();
    for dst in &c.dst {
        // Resolved as `sync` resolves a destination: the same whatever the spelling.
        let shown = dst;
        let dst = paths::resolve_dir(dst, "destination", sync::follow_dst(c.follow_dst))?;
        if !std::fs::metadata(&dst)
            .with_context(|| shown.display().to_string())?
            .is_dir()
        {
            bail!("{}: not a directory", shown.display());
        }
        let state = sync::open_state(&g.state_dir, &[&dst])?;
        let lock = jailsync_engine::journal::Lock::acquire(&state, &dst)?;
        if let Some(home) = jailsync_engine::switch::Home::existing(&dst)? {
            // A killed run's switch is finished (or undone) first, under the lock.
            jailsync_engine::generation::recover(&home, Some(&state))?;
        }
        if let Some(home) = switched_home(&dst)? {
            let r = jailsync_engine::generation::check(&home, c.gen, &pools.walk)?;
            switched.push((home, r, state, lock));
            continue;
        }
        drop(lock);
        let r = jailsync_engine::rollback::rollback(
            &state, &dst, c.gen, c.force, &opts, &pools, &*prog,
        )?;
        if c.itemize || g.json {
            output::print_changes(&mut out, &r.plan, &r.old, &r.cur, b"", g.json)?;
        }
        let since = io::Error::other(
            "changed since the sync; left as it is (--force rolls it back, keeping it in the \
             rollback store first)",
        );
        for p in &r.changed {
            errors += 1;
            let p = dst.join(jailsync_engine::fsx::os(p));
            report_error(&mut out, g, &p.display().to_string(), "rollback", &since)?;
        }
        if let (Some((dir, n)), false) = (&r.kept, g.quiet) {
            eprintln!(
                "jailsync: {}: {n} entries changed since the sync kept in {} before being \
                 rolled back",
                dst.display(),
                dir.display()
            );
        }
        if let Some(o) = &r.outcome {
            for e in &o.errors {
                errors += 1;
                let p = dst.join(jailsync_engine::fsx::os(&e.path));
                report_error(
                    &mut out,
                    g,
                    &p.display().to_string(),
                    e.phase.name(),
                    &e.error,
                )?;
            }
        }
        if g.json {
            let v = serde_json::json!({
                "type": "summary",
                "path": dst.display().to_string(),
                "generation": r.generation.id,
                "dry_run": c.dry_run,
                "changes": r.plan.actions.len(),
                "errors": errors,
            });
            writeln!(out, "{v}")?;
        } else if !g.quiet {
            eprintln!(
                "{}: {} generation {} ({} changes){}",
                dst.display(),
                if c.dry_run {
                    "would roll back to"
                } else {
                    "rolled back to"
                },
                r.generation.id,
                r.plan.actions.len(),
                if errors > 0 {
                    format!(", {errors} errors")
                } else {
                    String::new()
                }
            );
        }
    }
    errors += rollback_switched(&mut switched, c, g, &mut out)?;
    out.flush()?;
    Ok(if errors > 0 { exit::PARTIAL } else { exit::OK })
}

/// The home of a destination whose last sync switched a whole tree (with generations left).
fn switched_home(dst: &Path) -> Result<Option<jailsync_engine::switch::Home>> {
    let Some(home) = jailsync_engine::switch::Home::existing(dst)? else {
        return Ok(None);
    };
    if !home.is_switchable() || jailsync_engine::generation::list(&home)?.is_empty() {
        return Ok(None);
    }
    Ok(Some(home))
}

/// A destination whose rollback is a switch, checked and locked.
type Checked = (
    jailsync_engine::switch::Home,
    jailsync_engine::generation::RolledBack,
    jailsync_engine::journal::StateDir,
    jailsync_engine::journal::Lock,
);

/// Rolls back the checked trees by switching their generations back in, all together. If
/// any changed since its sync (and not `--force`), none is switched. Returns the number of
/// errors (changed entries count).
fn rollback_switched(
    items: &mut [Checked],
    c: &RollbackCmd,
    g: &Global,
    out: &mut impl Write,
) -> Result<usize> {
    if items.is_empty() {
        return Ok(0);
    }
    let mut errors = 0;
    for (home, r, _, _) in items.iter() {
        for ch in &r.changed {
            let p = home.live.join(jailsync_engine::fsx::os(&ch.path));
            if g.json {
                let v = serde_json::json!({"type": "changed", "path": output::json_path(&ch.path), "what": ch.what});
                writeln!(out, "{v}")?;
            } else if !g.quiet || !c.force {
                eprintln!("jailsync: {}: {}", p.display(), ch.what);
            }
        }
    }
    for (home, r, _, _) in items.iter() {
        report_carry(out, g, &home.live, &r.carry, c.dry_run)?;
    }
    let changed: usize = items.iter().map(|(_, r, _, _)| r.changed.len()).sum();
    let refused = changed > 0 && !c.force && !c.dry_run;
    if refused {
        errors += changed;
    } else if !c.dry_run {
        let state = items
            .first()
            .map(|(_, _, s, _)| jailsync_engine::journal::StateDir::clone(s));
        let mut batch: Vec<_> = items.iter_mut().map(|(h, r, _, _)| (&*h, r)).collect();
        jailsync_engine::generation::switch_back_all(&mut batch, state.as_ref())?;
    }
    for (home, r, _, _) in items.iter() {
        let dst = &home.live;
        for (p, e) in &r.errors {
            errors += 1;
            report_error(out, g, &p.display().to_string(), "rollback", e)?;
        }
        if g.json {
            let v = serde_json::json!({
                "type": "summary",
                "path": dst.display().to_string(),
                "generation": r.generation.id,
                "dry_run": c.dry_run,
                "switched": r.switched.is_some(),
                "window_ms": r.switched.as_ref().map(|s| s.window.as_secs_f64() * 1000.0),
                "changed_since_sync": r.changed.len(),
                "excluded_carried": r.carry.carried.len(),
                "kept_as": r.kept_as.as_ref().map(|p| p.display().to_string()),
                "errors": errors,
            });
            writeln!(out, "{v}")?;
        } else if !g.quiet {
            if refused {
                eprintln!(
                    "{}: not rolled back: {} entr{} changed since the sync (left alone; --force switches generation {} back anyway and keeps the current tree)",
                    dst.display(),
                    changed,
                    if changed == 1 { "y" } else { "ies" },
                    r.generation.id
                );
            } else if c.dry_run {
                eprintln!(
                    "{}: would roll back to generation {} (one switch)",
                    dst.display(),
                    r.generation.id
                );
            } else if let Some(s) = &r.switched {
                eprintln!(
                    "{}: rolled back to generation {} by {} in {:.3} ms; the tree it replaced is at {}",
                    dst.display(),
                    r.generation.id,
                    home.method.describe(),
                    s.window.as_secs_f64() * 1000.0,
                    s.old.display()
                );
            }
        }
    }
    Ok(errors)
}

/// What a switched rollback does with excluded entries (the live system's, kept as they are
/// now): each carried into the restored tree, and each the generation held but the live tree
/// no longer has. Named one by one for `-n` and `--json`, counted otherwise.
pub fn report_carry(
    out: &mut impl Write,
    g: &Global,
    live: &Path,
    carry: &jailsync_engine::generation::Carry,
    dry_run: bool,
) -> Result<()> {
    let lines = carry
        .carried
        .iter()
        .map(|p| (p, "excluded: carried across as it is now"))
        .chain(carry.dropped.iter().map(|p| {
            (
                p,
                "excluded, gone from the live tree since the sync: stays gone",
            )
        }));
    for (p, what) in lines {
        if g.json {
            let kind = if what.starts_with("excluded:") {
                "carried"
            } else {
                "dropped"
            };
            let v = serde_json::json!({"type": kind, "path": output::json_path(p), "what": what});
            writeln!(out, "{v}")?;
        } else if dry_run && !g.quiet {
            let p = live.join(jailsync_engine::fsx::os(p));
            eprintln!("jailsync: {}: {what}", p.display());
        }
    }
    let n = carry.carried.len();
    if n > 0 && !dry_run && !g.quiet && !g.json {
        eprintln!(
            "{}: {n} excluded entr{} carried across (the live system's, kept as they are)",
            live.display(),
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

pub fn run_history(c: HistoryCmd, g: &Global) -> Result<u8> {
    let Some(dst) = &c.dst else {
        return crate::roots::history(c.root.as_deref().expect("clap: dst or root"), g);
    };
    let dst = std::fs::canonicalize(dst).with_context(|| dst.display().to_string())?;
    let state = sync::open_state(&g.state_dir, &[&dst])?;
    if let Some(home) = switched_home(&dst)? {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        let sizes = crate::admin_cmd::switched_sizes(&home, &dst)?;
        for (gen, size) in jailsync_engine::generation::list(&home)?
            .iter()
            .zip(&sizes)
            .rev()
        {
            let when = jailsync_engine::journal::format_time(gen.time);
            if g.json {
                let v = serde_json::json!({
                    "type": "generation",
                    "id": gen.id,
                    "time": when,
                    "changes": gen.changes,
                    "source": gen.source,
                    "method": gen.method,
                    "tree": gen.tree.display().to_string(),
                    "size": crate::admin_cmd::size_json(size.usage),
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "{:>6}  {when}  {:>7} changes  {}  from {}  (old tree at {})",
                    gen.id,
                    gen.changes,
                    crate::admin_cmd::size_text(size.usage),
                    gen.source,
                    gen.tree.display()
                )?;
            }
        }
        return Ok(exit::OK);
    }
    let store = jailsync_engine::rollback::Store::find(&state, &dst)?;
    let gens = match &store {
        Some(store) => jailsync_engine::rollback::list(store)?,
        None => Vec::new(),
    };
    if let (Some(store), false, false) = (&store, g.quiet, g.json) {
        eprintln!("{}: rollback store {}", dst.display(), store.path.display());
    }
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let sizes = crate::admin_cmd::store_sizes(&gens, &dst)?;
    for (gen, size) in gens.iter().zip(&sizes).rev() {
        let when = jailsync_engine::journal::format_time(gen.time);
        if g.json {
            let v = serde_json::json!({
                "type": "generation",
                "id": gen.id,
                "time": when,
                "changes": gen.changes,
                "source": gen.source,
                "size": crate::admin_cmd::size_json(size.usage),
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:>6}  {when}  {:>7} changes  {}  from {}",
                gen.id,
                gen.changes,
                crate::admin_cmd::size_text(size.usage),
                gen.source
            )?;
        }
    }
    if gens.is_empty() && !g.quiet && !g.json {
        eprintln!("{}: nothing to roll back", dst.display());
    }
    Ok(exit::OK)
}
