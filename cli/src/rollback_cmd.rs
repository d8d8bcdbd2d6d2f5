//! `rollback`: undo the last sync of each destination given (trees switched whole are
//! switched back together), or with `--root` the last upgrade of a live root.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use jailsync_engine::paths;
use jailsync_engine::sync::{self, Pools};

use crate::args::{exit, stop_on_signals, Global};
use crate::gens::switched_home;
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
    /// Print one rsync-style line per change on stdout.
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
        crate::roots::rollback(root, c.force, c.dry_run, g)?
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
    let Ok(canon) = std::fs::canonicalize(dst) else {
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
    let pools = Pools::new(0);
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
            crate::audit::tree(&dst, Some(r.generation.id));
            switched.push((home, r, state, lock));
            continue;
        }
        bail!(
            "{}: nothing to roll back: no generation recorded (a sync with --no-rollback or --keep 0 keeps none)",
            dst.display()
        );
    }
    let errors = rollback_switched(&mut switched, c, g, &mut out)?;
    out.flush()?;
    Ok(if errors > 0 { exit::PARTIAL } else { exit::OK })
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
                    s.method.describe(),
                    s.window.as_secs_f64() * 1000.0,
                    s.old.display()
                );
            }
        }
    }
    Ok(errors)
}
