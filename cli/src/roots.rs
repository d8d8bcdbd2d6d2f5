//! `history --root` and `rollback --root`: the upgrades of a live root, as the engine records
//! and rolls them back ([`jailsync_engine::history::roots`]), printed.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use jailsync_engine::history::roots::{self, RootStep};
use serde_json::json;

pub use jailsync_engine::history::roots::{begin, end, load};

use crate::args::{exit, Global};

/// `history --root ROOT`.
pub fn history(root: &Path, g: &Global) -> Result<u8> {
    let h = roots::history(root, &g.state_dir)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (u, &pruned) in h.upgrades.iter().zip(&h.pruned).rev() {
        // A generation of it pruned: the record stays, the way back is gone.
        let status = if pruned { "pruned" } else { u.status() };
        if g.json {
            let mut v = u.to_json();
            v["type"] = json!("upgrade");
            v["status"] = json!(status);
            v["can_roll_back"] = json!(!pruned && u.status() == "done");
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:>6}  {}  {:<11}  from {}  trees {}{}",
                u.id,
                jailsync_engine::journal::format_time(u.start),
                status,
                u.jail,
                u.trees
                    .iter()
                    .map(|t| t.rel.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                if pruned {
                    "  (its old trees were pruned: cannot be rolled back)"
                } else {
                    ""
                }
            )?;
        }
    }
    if h.upgrades.is_empty() && !g.quiet && !g.json {
        eprintln!("{}: no upgrades recorded", h.root.display());
    }
    Ok(exit::OK)
}

/// `rollback --root ROOT`: each step printed as the engine makes it.
pub fn rollback(root: &Path, force: bool, dry_run: bool, itemize: bool, g: &Global) -> Result<u8> {
    let r = roots::rollback(root, &g.state_dir, force, dry_run, |step| {
        print_step(&step, dry_run, g)?;
        match step {
            // What each tree's switch changes: with -n when it would be made, else before any.
            RootStep::Would { dst, id } if itemize => preview(dst, id, g),
            RootStep::Checked { dst, r } if itemize && !dry_run => preview(dst, r.generation.id, g),
            _ => Ok(()),
        }
    })?;
    if r.refused {
        let changed = r.changed;
        eprintln!(
            "{}: upgrade {} not rolled back: {changed} entr{} changed since (left alone; --force rolls back anyway, keeping each changed tree whole beside its generations)",
            r.root.display(),
            r.upgrade,
            if changed == 1 { "y" } else { "ies" }
        );
        return Ok(exit::PARTIAL);
    }
    if !dry_run && !g.quiet && !g.json {
        eprintln!(
            "{}: upgrade {} rolled back ({} tree{})",
            r.root.display(),
            r.upgrade,
            r.trees,
            if r.trees == 1 { "" } else { "s" }
        );
    }
    Ok(exit::OK)
}

/// One tree's `-i` lines, its paths prefixed with the tree.
fn preview(dst: &Path, id: u64, g: &Global) -> Result<()> {
    let p = jailsync_engine::history::rollback_preview(dst, id)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    crate::output::print_tree_preview(&mut out, g, dst, &p, true)
}

fn print_step(step: &RootStep<'_>, dry_run: bool, g: &Global) -> Result<()> {
    match *step {
        RootStep::Checked { dst, r } => {
            for ch in &r.changed {
                let p = dst.join(jailsync_engine::fsx::os(&ch.path));
                if g.json {
                    println!(
                        "{}",
                        json!({"type": "changed", "path": p.display().to_string(), "what": ch.what})
                    );
                } else {
                    eprintln!("jailsync: {}: {}", p.display(), ch.what);
                }
            }
            if dry_run {
                crate::output::report_carry(&mut std::io::stdout(), g, dst, &r.carry, true)?;
            }
        }
        RootStep::Would { dst, id } => {
            if !g.quiet && !g.json {
                eprintln!("{}: would roll back to generation {id}", dst.display());
            }
        }
        RootStep::Done { dst, id, r, how } => {
            crate::output::report_carry(&mut std::io::stdout(), g, dst, &r.carry, false)?;
            for (p, e) in &r.errors {
                eprintln!("jailsync: {}: {e} (while rolling back)", p.display());
            }
            if g.json {
                println!(
                    "{}",
                    json!({"type": "rollback", "path": dst.display().to_string(), "generation": id,
                           "window_ms": r.switched.as_ref().map(|s| s.window.as_secs_f64() * 1000.0)})
                );
            } else if !g.quiet {
                eprintln!(
                    "{}: rolled back to generation {id} by {}",
                    dst.display(),
                    how.describe()
                );
            }
        }
    }
    Ok(())
}
