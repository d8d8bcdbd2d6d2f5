//! Mounts below a live tree, read at the last safe point: an exchange moves whatever is
//! mounted in the tree it moves, so a mount is a bound the switch goes around, and one made
//! while a switch was being planned makes it planned again.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Home, Pending};
use crate::error::{Error, Result};

/// The first of `trees` with something mounted strictly below it, and that mount, read from
/// the mount table at the moment of asking: called at the last safe point, immediately before
/// an exchange, since an exchange moves whatever is mounted in the tree it moves (invariant
/// 12). Where there is no mount table to read (systems without `/proc/self/mountinfo`),
/// nothing is found here, and removals still never cross a mount
/// ([`fsx::remove_tree_at`](crate::fsx::remove_tree_at)).
pub fn first_mount_below(trees: &[&Path]) -> Option<(PathBuf, PathBuf)> {
    let table = crate::jail::mountinfo::MountTable::current().ok()?;
    trees.iter().find_map(|t| {
        let m = table.under(t).next()?;
        Some((t.to_path_buf(), m.target.clone()))
    })
}

/// Prepares the switch of every home given (with its argument), then reads the mount table
/// once more: a tree whose switch would now move a mount made since it was planned is
/// planned again (twice at most), else everything prepared is cancelled and the mount named.
pub fn prepare_around_mounts<T: Copy>(
    homes: &[Option<(&Home, T)>],
    prepare: impl Fn(&Home, T) -> Result<Pending>,
) -> Result<Vec<Option<Pending>>> {
    let mut pending: Vec<Option<Pending>> = Vec::new();
    let cancel = |pending: Vec<Option<Pending>>| {
        for (h, p) in homes.iter().zip(pending) {
            if let (Some((h, _)), Some(p)) = (h, p) {
                h.cancel(p);
            }
        }
    };
    for h in homes {
        match h.map(|(h, a)| prepare(h, a)).transpose() {
            Ok(p) => pending.push(p),
            Err(e) => {
                cancel(pending);
                return Err(e);
            }
        }
    }
    for (k, h) in homes.iter().enumerate() {
        let Some((home, a)) = *h else { continue };
        for attempt in 0..3 {
            let Some(m) = pending[k].as_ref().and_then(|p| home.moves_a_mount(p)) else {
                break;
            };
            if let Some(p) = pending[k].take() {
                home.cancel(p);
            }
            let again = if attempt < 2 {
                prepare(home, a)
            } else {
                Err(mount_moved(&m))
            };
            match again {
                Ok(p) => pending[k] = Some(p),
                Err(e) => {
                    cancel(pending);
                    return Err(e);
                }
            }
        }
    }
    Ok(pending)
}

fn mount_moved(m: &Path) -> Error {
    Error::bad(
        m,
        "was mounted while the switch was being planned, again and again: nothing was switched (the switch would have moved the mount); run again",
    )
}

impl Home {
    /// A mount point the prepared switch would move, read now: one made inside a subtree it
    /// exchanges (or anywhere below the tree, for a whole-tree exchange) since it was planned.
    pub fn moves_a_mount(&self, p: &Pending) -> Option<PathBuf> {
        match &p.steps {
            None => first_mount_below(&[&self.live_real()]).map(|(_, m)| m),
            Some(s) => self.mount_inside(s.items.iter().map(|i| &i.path[..])),
        }
    }

    /// A mount point at or below one of `paths` (relative to the live tree), read now.
    pub(super) fn mount_inside<'a>(
        &self,
        paths: impl Iterator<Item = &'a [u8]>,
    ) -> Option<PathBuf> {
        let table = crate::jail::mountinfo::MountTable::current().ok()?;
        let paths: Vec<&[u8]> = paths.collect();
        let live = self.live_real();
        let found = table.under(&live).map(|m| m.target.clone()).find(|m| {
            let rel = m.strip_prefix(&live).unwrap_or(m).as_os_str().as_bytes();
            paths.iter().any(|p| crate::entry::at_or_below(rel, p))
        });
        found
    }
}
