//! `rollback`: undo the last sync of each destination given (trees switched whole are
//! switched back together), or with `--root` the last upgrade of a live root.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use jailsync_engine::history::{self, Rollback, RollbackOpts};
use jailsync_engine::sync;

use crate::args::{exit, stop_on_signals, Global};
use crate::output::{self, report_carry, report_error};

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
    /// Print what the rollback changes (with -n: would change), one rsync-style line per
    /// entry on stdout, and for a package tree the packages it takes back (see "History" in
    /// jailsync(1)).
    #[arg(short, long)]
    pub itemize: bool,
    /// Roll back the target of a DST that is a symlink (only one owned by root or you).
    #[arg(long)]
    pub follow_dst: bool,
    /// Also roll back entries changed since the sync: the tree is switched back and the tree
    /// that was live, with those changes, is kept whole beside the generations (`kept-N`).
    /// Without it they are left as they are and reported (exit 1).
    #[arg(long)]
    pub force: bool,
}

pub fn run_rollback(c: RollbackCmd, g: &Global) -> Result<u8> {
    // A rollback takes milliseconds once it begins: SIGINT, SIGTERM and SIGHUP wait for it
    // (a half-made one would leave the newer release's metadata on the older files); a
    // SIGKILL is finished by the next command (see `generation::recover`).
    let stop = (!c.dry_run).then(stop_on_signals);
    let code = if let Some(root) = &c.root {
        crate::roots::rollback(root, c.force, c.dry_run, c.itemize, g)?
    } else {
        rollback_trees(&c, g).map_err(|e| upgraded_root_hint(e, &c, g))?
    };
    match stop.map(|f| f.load(std::sync::atomic::Ordering::SeqCst)) {
        Some(sig) if sig != 0 => {
            eprintln!("jailsync: signal {sig} received: the rollback was finished first");
            Ok((128 + sig) as u8)
        }
        _ => Ok(code),
    }
}

/// A DST that is the live root of upgrades (`upgrade --root DST`) has no generations of its
/// own: its trees do. The error then says how to roll the upgrade back.
fn upgraded_root_hint(e: anyhow::Error, c: &RollbackCmd, g: &Global) -> anyhow::Error {
    let [dst] = c.dst.as_slice() else { return e };
    let Ok(canon) = jailsync_engine::paths::canonical_tree(dst) else {
        return e;
    };
    let upgrades = sync::open_state(&g.state_dir, &[&canon])
        .ok()
        .and_then(|s| crate::roots::load(&s, &canon).ok())
        .unwrap_or_default();
    if upgrades.is_empty() {
        return e;
    }
    e.context(format!(
        "{} is the live root of {} upgrade(s): roll the last one back with `jailsync rollback \
         --root {}`",
        dst.display(),
        upgrades.len(),
        dst.display()
    ))
}

/// `rollback DST...`: the trees given, switched back together.
fn rollback_trees(c: &RollbackCmd, g: &Global) -> Result<u8> {
    let opts = RollbackOpts {
        gen: c.gen,
        dry_run: c.dry_run,
        force: c.force,
        follow_dst: c.follow_dst,
    };
    // Trees switched whole are checked first and switched back together at the end, back to
    // back, so an upgrade's trees are never in different releases for longer than that.
    let mut rb = history::check_trees(&c.dst, &g.state_dir, opts)?;
    for (dst, r) in rb.trees() {
        crate::audit::tree(dst, Some(r.generation.id));
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    report_checked(&rb, c, g, &mut out)?;
    if c.itemize && !rb.refused() {
        print_preview(&rb, g, &mut out)?;
    }
    rb.switch_back()?;
    let errors = report_rolled_back(&rb, c, g, &mut out)?;
    out.flush()?;
    Ok(if errors > 0 { exit::PARTIAL } else { exit::OK })
}

/// What the check found, before anything is switched: entries changed since the sync, and
/// the excluded entries the rollback carries.
fn report_checked(rb: &Rollback, c: &RollbackCmd, g: &Global, out: &mut impl Write) -> Result<()> {
    for (live, r) in rb.trees() {
        for ch in &r.changed {
            let p = live.join(jailsync_engine::fsx::os(&ch.path));
            if g.json {
                let v = serde_json::json!({"type": "changed", "path": output::json_path(&ch.path), "what": ch.what});
                writeln!(out, "{v}")?;
            } else if !g.quiet || !c.force {
                eprintln!("jailsync: {}: {}", p.display(), ch.what);
            }
        }
    }
    for (live, r) in rb.trees() {
        report_carry(out, g, live, &r.carry, c.dry_run)?;
    }
    Ok(())
}

/// What switching back changes, tree by tree, before anything is switched: the itemized
/// lines (paths prefixed with the tree when several are given) and the packages.
fn print_preview(rb: &Rollback, g: &Global, out: &mut impl Write) -> Result<()> {
    let previews = rb.preview()?;
    let several = previews.len() > 1;
    for ((live, _), preview) in rb.trees().zip(&previews) {
        output::print_tree_preview(out, g, live, preview, several)?;
    }
    Ok(())
}

/// Each tree's errors and summary. Returns the number of errors (changed entries count when
/// they refused the rollback).
fn report_rolled_back(
    rb: &Rollback,
    c: &RollbackCmd,
    g: &Global,
    out: &mut impl Write,
) -> Result<usize> {
    let changed = rb.changed();
    let refused = rb.refused();
    let mut errors = if refused { changed } else { 0 };
    for (dst, r) in rb.trees() {
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
                    s.method.describe(),
                    s.window.as_secs_f64() * 1000.0,
                    s.old.display()
                );
            }
        }
    }
    Ok(errors)
}
