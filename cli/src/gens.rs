//! Generations as `history` and `prune` list them: where a destination's are, and the space
//! each holds.

use std::path::{Path, PathBuf};

use anyhow::Result;
use jailsync_engine::usage::{self, Usage};
use jailsync_engine::{fsx, generation, switch};

/// One generation as `history` and `prune` show it.
pub struct GenSize {
    pub id: u64,
    /// Where it is read (through the home's open fd).
    pub io: PathBuf,
    pub usage: Option<Usage>,
}

/// The live tree's inodes, skipping our own in-tree homes.
pub fn live_set(dst: &Path) -> Result<std::collections::HashSet<u64>> {
    Ok(usage::live_inodes(
        dst,
        &[switch::IN_TREE_HOME, fsx::STORE_NAME],
    )?)
}

/// Sizes of the switched generations of `home`, oldest first.
/// A size that cannot be measured (a tree that cannot be walked) is shown as unknown: listing
/// the generations matters more.
pub fn switched_sizes(home: &switch::Home, dst: &Path) -> Result<Vec<GenSize>> {
    let live = live_set(dst).ok();
    let mut out = Vec::new();
    for g in generation::list(home)? {
        let io = home.io_path(&format!("gen-{}", g.id));
        let usage = live
            .as_ref()
            .and_then(|l| usage::held_only_by(std::slice::from_ref(&io), l).ok());
        out.push(GenSize {
            id: g.id,
            io,
            usage,
        });
    }
    Ok(out)
}

/// The home of a destination, if it holds generations.
pub fn switched_home(dst: &Path) -> Result<Option<switch::Home>> {
    let Some(home) = switch::Home::existing(dst)? else {
        return Ok(None);
    };
    if generation::list(&home)?.is_empty() {
        return Ok(None);
    }
    Ok(Some(home))
}
