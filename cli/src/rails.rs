//! The refusals a run makes before it changes anything, when what it was asked looks like a
//! mistake: a destination whose parent is missing (a typo), a plan deleting more than it may.

use std::path::Path;

use anyhow::{bail, Context, Result};
use jailsync_engine::{deletes, sync};

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

/// Refuses, before anything is changed, a run that would delete more than it is allowed to
/// (see `jailsync_engine::deletes`); a dry run is shown in full, with a warning that the real
/// run would be refused.
pub fn check_deletes(trees: &[sync::Tree], a: &SyncArgs) -> Result<()> {
    let limit = deletes::Limit {
        max: a.max_delete,
        force: a.force,
        dry_run: a.dry_run,
    };
    for w in deletes::check(trees, limit)? {
        eprintln!("jailsync: warning: {w}");
    }
    Ok(())
}
