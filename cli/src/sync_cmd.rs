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
}

#[derive(Args, Debug)]
pub struct RollbackCmd {
    /// Destination(s) whose last sync to undo (for an upgrade: ROOT/usr/pkg ROOT/var/db/pkg).
    #[arg(required = true)]
    pub dst: Vec<PathBuf>,
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
    pub dst: PathBuf,
}

#[derive(Args, Debug)]
pub struct SyncCmd {
    /// The tree to copy from (e.g. the jail's usr/pkg).
    pub src: PathBuf,
    /// The tree to make identical to SRC (created if missing).
    pub dst: PathBuf,
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

fn engine_opts(a: &SyncArgs) -> Result<SyncOpts> {
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
    let inner: Box<dyn Progress> = if Bars::wanted(g.quiet, g.json) {
        Box::new(Bars::new())
    } else {
        Box::new(Silent)
    };
    Box::new(Timed::new(inner))
}

pub fn run_sync(c: SyncCmd, g: &Global) -> Result<u8> {
    // Canonical paths: state (caches, locks, rollback) is keyed by them.
    let (s, d) = sync::check_pair(&c.src, &c.dst, c.args.follow_dst)?;
    run_pairs(vec![(s, d, Vec::new())], &c.args, g)
}

/// The trees of an upgrade: `--tree`, else `tree REL` lines of JAIL/jailsync.conf, else the
/// seed's two. Any tree ending in `db/pkg` is moved last: the database must never list a
/// package whose files are not in place yet.
pub fn upgrade_trees(jail: &Path, given: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut trees: Vec<PathBuf> = given.to_vec();
    if trees.is_empty() {
        let conf = jail.join("jailsync.conf");
        match std::fs::read_to_string(&conf) {
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    match line.split_once(char::is_whitespace) {
                        Some(("tree", rel)) => trees.push(PathBuf::from(rel.trim())),
                        _ => bail!(
                            "{}:{}: expected `tree REL`, found {line:?}",
                            conf.display(),
                            n + 1
                        ),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| conf.display().to_string()),
        }
    }
    if trees.is_empty() {
        trees = vec!["usr/pkg".into(), "var/db/pkg".into()];
    }
    for t in &trees {
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
    let (db, mut rest): (Vec<PathBuf>, Vec<PathBuf>) =
        trees.into_iter().partition(|t| t.ends_with("db/pkg"));
    rest.extend(db);
    Ok(rest)
}

pub fn run_upgrade(c: UpgradeCmd, g: &Global) -> Result<u8> {
    use std::os::unix::ffi::OsStrExt;
    let trees = upgrade_trees(&c.jail, &c.tree)?;
    let mut pairs = Vec::new();
    for t in &trees {
        let (s, d) = sync::check_tree(&c.jail, &c.root, t, c.args.follow_dst)?;
        pairs.push((s, d, t.as_os_str().as_bytes().to_vec()));
    }
    run_pairs(pairs, &c.args, g)
}

/// Runs checked (source, destination, itemize prefix) pairs, their paths canonical.
fn run_pairs(checked: Vec<(PathBuf, PathBuf, Vec<u8>)>, a: &SyncArgs, g: &Global) -> Result<u8> {
    let t0 = Instant::now();
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
    let prog = progress(g);
    let mut trees: Vec<Tree> = Vec::new();
    for (s, d, _) in &checked {
        trees.push(sync::prepare(s, d, Some(&state), &opts, &pools, &*prog)?);
    }
    let mut switched = None;
    if !a.dry_run && sync::all_switchable(&trees) {
        let r = sync::switch_all(&mut trees, &state, &opts, &pools, &*prog)?;
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
        return Ok(exit::PARTIAL);
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
        for (p, e) in &t.scan_errors {
            errors += 1;
            report_error(&mut out, g, &p.display().to_string(), "scan", e)?;
        }
        if let Some(r) = &report {
            let o = &r.outcomes[k];
            for e in &o.errors {
                errors += 1;
                let p = t.dst_path.join(jailsync_engine::fsx::os(&e.path));
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
    let summary = Summary {
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
    if g.json {
        writeln!(out, "{}", summary.json())?;
    }
    out.flush()?;
    if !g.quiet && !g.json {
        eprintln!("{}", summary.human());
        if g.verbose > 0 {
            eprintln!("phases: {}", prog.report());
        }
    }
    Ok(if errors > 0 { exit::PARTIAL } else { exit::OK })
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
    let opts = SyncOpts {
        excludes: Excludes::new(&c.exclude).context("bad --exclude pattern")?,
        checksum: c.checksum,
        dry_run: true,
        ..SyncOpts::default()
    };
    // verify only reads: a symlinked DST is followed (when owned by root or the caller),
    // whatever its spelling.
    let dst = paths::resolve_dir(&c.dst, "destination", Follow::Owned)?;
    if !dst.is_dir() {
        bail!("{}: not a directory", c.dst.display());
    }
    let pools = Pools::new(0);
    let prog = progress(g);
    // State is only read and written for caches here; a read-only state dir is no error.
    let state = sync::open_state(&g.state_dir, &[&dst]).ok();
    let tree = if c.src.is_dir() {
        let (src, dst) = sync::check_pair(&c.src, &c.dst, true)?;
        sync::prepare(&src, &dst, state.as_ref(), &opts, &pools, &*prog)?
    } else {
        let m = manifest::read_file(&c.src)?;
        sync::prepare_from_manifest(&c.src, m, &dst, state.as_ref(), &opts, &pools, &*prog)?
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    output::print_changes(&mut out, &tree.plan, &tree.src, &tree.dst, b"", g.json)?;
    for (p, e) in &tree.scan_errors {
        report_error(&mut out, g, &p.display().to_string(), "scan", e)?;
    }
    let differ = !tree.plan.is_empty() || !tree.scan_errors.is_empty();
    if g.json {
        let v = serde_json::json!({
            "type": "summary",
            "match": !differ,
            "differences": tree.plan.actions.len(),
            "errors": tree.scan_errors.len(),
        });
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    if !g.quiet && !g.json {
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
            home.recover()?;
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
    errors += rollback_switched(&mut switched, &c, g, &mut out)?;
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
    let changed: usize = items.iter().map(|(_, r, _, _)| r.changed.len()).sum();
    let refused = changed > 0 && !c.force && !c.dry_run;
    if refused {
        errors += changed;
    } else if !c.dry_run {
        let mut batch: Vec<_> = items.iter_mut().map(|(h, r, _, _)| (&*h, r)).collect();
        jailsync_engine::generation::switch_back_all(&mut batch)?;
    }
    for (home, r, state, _) in items.iter() {
        let dst = &home.live;
        for (p, e) in &r.errors {
            errors += 1;
            report_error(out, g, &p.display().to_string(), "rollback", e)?;
        }
        // The stat cache described the tree switched away.
        if r.switched.is_some() {
            if let Ok(p) = state.cache_path(dst) {
                let _ = std::fs::remove_file(p);
            }
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

pub fn run_history(c: HistoryCmd, g: &Global) -> Result<u8> {
    let dst = std::fs::canonicalize(&c.dst).with_context(|| c.dst.display().to_string())?;
    let state = sync::open_state(&g.state_dir, &[&dst])?;
    if let Some(home) = switched_home(&dst)? {
        let stdout = io::stdout();
        let mut out = stdout.lock();
        for gen in jailsync_engine::generation::list(&home)?.iter().rev() {
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
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "{:>6}  {when}  {:>7} changes  from {}  (old tree at {})",
                    gen.id,
                    gen.changes,
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
    for gen in gens.iter().rev() {
        let when = jailsync_engine::journal::format_time(gen.time);
        if g.json {
            let v = serde_json::json!({
                "type": "generation",
                "id": gen.id,
                "time": when,
                "changes": gen.changes,
                "source": gen.source,
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:>6}  {when}  {:>7} changes  from {}",
                gen.id, gen.changes, gen.source
            )?;
        }
    }
    if gens.is_empty() && !g.quiet && !g.json {
        eprintln!("{}: nothing to roll back", dst.display());
    }
    Ok(exit::OK)
}
