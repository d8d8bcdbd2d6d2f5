//! `jail remove`: deletes a jail directory, but never one with anything mounted below it —
//! removing files through a live bind mount would delete the host's own files.

use std::path::PathBuf;

use super::error::{Error, Result};
use super::mountinfo::MountTable;
use super::{Jail, MARKER_FILE};

/// Removes the jail tree. Refused while any mount is below it (listing them), and for a
/// directory without a `.jail` marker, so a mistyped path cannot take a host tree with it.
pub fn remove(jail: &Jail) -> Result<()> {
    let marker = jail.root.join(MARKER_FILE);
    if std::fs::symlink_metadata(&marker).is_err() {
        return Err(Error::refused(
            &jail.root,
            "has no .jail marker: not removing a directory that is not a jail",
        ));
    }
    let table = MountTable::current()?;
    let live: Vec<PathBuf> = table.under(&jail.root).map(|m| m.target.clone()).collect();
    // The jail root may itself be a filesystem of its own; only mounts below it matter.
    if !live.is_empty() {
        let list: Vec<String> = live.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::refused(
            &jail.root,
            format!(
                "refusing to remove a jail with live mounts (run `jailsync jail umount` first): {}",
                list.join(", ")
            ),
        ));
    }
    // std's remove_dir_all never follows symlinks, so a link to a host path inside the jail
    // removes the link, not its target.
    std::fs::remove_dir_all(&jail.root).map_err(|e| Error::io(&jail.root, e))
}
