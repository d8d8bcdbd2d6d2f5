//! The guard against a plan deleting more than it may, checked before anything changes: what
//! a wrong pair looks like (`sync JAIL/usr/pkg ROOT/usr`, a JAIL and ROOT swapped, a jail that
//! lost most of its packages), not an upgrade.

use crate::plan::Counts;
use crate::sync::Tree;

/// A destination with more entries than this is guarded against a mass deletion by default.
/// Below it a plan deleting most of the tree is ordinary (a small tree rebuilt, as randomized
/// tests do), and a wrong pair costs little; the mistake this catches empties real trees
/// (38,279 entries in the report that asked for it).
pub const MASS_DELETE_MIN: u64 = 256;

/// What a run may delete: `--max-delete N`, `--force`, and whether it is a dry run (shown in
/// full, with a warning, rather than refused).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limit {
    pub max: Option<u64>,
    pub force: bool,
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// More than `--max-delete` in all (`shown`: the destinations, comma separated).
    #[error(
        "{shown}: would delete {n} entr{}, more than --max-delete {max}; nothing was changed",
        if *.n == 1 { "y" } else { "ies" }
    )]
    OverMax { shown: String, n: u64, max: u64 },
    /// More than half of one destination's entries (`why` names it).
    #[error("{0}; nothing was changed")]
    MostOf(String),
}

/// Refuses a run that would delete more than `limit` allows: with a maximum, more than it in
/// all; without one (and without `force`), more than half of any destination's entries once
/// it has more than [`MASS_DELETE_MIN`]. A dry run is not refused the latter: the warnings
/// returned say the real run would be.
pub fn check(trees: &[Tree], limit: Limit) -> Result<Vec<String>, DeleteError> {
    if let Some(max) = limit.max {
        check_max(trees, max)?;
        return Ok(Vec::new());
    }
    if limit.force {
        return Ok(Vec::new());
    }
    let mut warnings = Vec::new();
    for t in trees {
        // The root is never deleted, and is not one of the tree's entries here.
        let entries = t.dst.len().saturating_sub(1) as u64;
        let n = Counts::of(&t.plan).deleted;
        if entries <= MASS_DELETE_MIN || n * 2 <= entries {
            continue;
        }
        let why = format!(
            "{}: would delete {n} of its {entries} entries, more than half: most likely not the \
             source or destination meant (see `-n -i`); pass --max-delete {n} or --force if it is",
            t.dst_path.display()
        );
        if !limit.dry_run {
            return Err(DeleteError::MostOf(why));
        }
        warnings.push(format!("{why}; a run without -n would be refused"));
    }
    Ok(warnings)
}

/// More than `max` entries deleted in all (each entry below a removed directory counts; a
/// type change does not).
pub fn check_max(trees: &[Tree], max: u64) -> Result<(), DeleteError> {
    let n: u64 = trees.iter().map(|t| Counts::of(&t.plan).deleted).sum();
    if n > max {
        let shown: Vec<String> = trees
            .iter()
            .map(|t| t.dst_path.display().to_string())
            .collect();
        return Err(DeleteError::OverMax {
            shown: shown.join(", "),
            n,
            max,
        });
    }
    Ok(())
}
