//! The refusals a run makes before it changes anything, when what it was asked looks like a
//! mistake: a destination whose parent is missing (a typo), a plan deleting more than it may.

use std::path::Path;

use anyhow::{bail, Context, Result};
use jailsync_engine::sync;

use crate::args::SyncArgs;

/// A destination whose parent does not exist is most likely a typo: refused unless
/// `--mkpath`, before anything (state included) is made.
pub fn check_parent(dst: &Path, mkpath: bool) -> Result<()> {
    if mkpath || std::fs::symlink_metadata(dst).is_ok() {
        return Ok(());
    }
    let abs = std::path::absolute(dst).with_context(|| dst.display().to_string())?;
    if let Some(parent) = abs.parent() {
        if !parent.is_dir() {
            bail!(
                "{}: its parent {} does not exist (pass --mkpath to create it)",
                dst.display(),
                parent.display()
            );
        }
    }
    Ok(())
}

/// A destination with more entries than this is guarded against a mass deletion by default.
/// Below it a plan deleting most of the tree is ordinary (a small tree rebuilt, as randomized
/// tests do), and a wrong pair costs little; the mistake this catches empties real trees
/// (38,279 entries in the report that asked for it).
pub const MASS_DELETE_MIN: u64 = 256;

/// Refuses, before anything is changed, a run that would delete more than it is allowed to:
/// with `--max-delete N`, more than N entries in all; without it (and without `--force`), more
/// than half of any destination's entries once it has more than [`MASS_DELETE_MIN`]. That is
/// what a wrong pair looks like, not an upgrade: `sync JAIL/usr/pkg ROOT/usr` (rsync's "into"
/// habit), a JAIL and ROOT swapped, a jail that lost most of its packages. A dry run is shown
/// in full, with a warning that the real run would be refused.
pub fn check_deletes(trees: &[sync::Tree], a: &SyncArgs) -> Result<()> {
    if a.max_delete.is_some() {
        return check_max_delete(trees, a.max_delete);
    }
    if a.force {
        return Ok(());
    }
    for t in trees {
        // The root is never deleted, and is not one of the tree's entries here.
        let entries = t.dst.len().saturating_sub(1) as u64;
        let n = jailsync_engine::plan::Counts::of(&t.plan).deleted;
        if entries <= MASS_DELETE_MIN || n * 2 <= entries {
            continue;
        }
        let why = format!(
            "{}: would delete {n} of its {entries} entries, more than half: most likely not the \
             source or destination meant (see `-n -i`); pass --max-delete {n} or --force if it is",
            t.dst_path.display()
        );
        if a.dry_run {
            eprintln!("jailsync: warning: {why}; a run without -n would be refused");
        } else {
            bail!("{why}; nothing was changed");
        }
    }
    Ok(())
}

/// `--max-delete N`: refuses, before anything is changed, a run that would delete more than
/// N entries (each entry below a removed directory counts; a type change does not).
pub fn check_max_delete(trees: &[sync::Tree], max: Option<u64>) -> Result<()> {
    let Some(max) = max else { return Ok(()) };
    let n: u64 = trees
        .iter()
        .map(|t| jailsync_engine::plan::Counts::of(&t.plan).deleted)
        .sum();
    if n > max {
        let shown: Vec<String> = trees
            .iter()
            .map(|t| t.dst_path.display().to_string())
            .collect();
        bail!(
            "{}: would delete {n} entr{}, more than --max-delete {max}; nothing was changed",
            shown.join(", "),
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}
