//! `jail remove`: deletes a jail directory, but never one with anything mounted below it —
//! removing files through a live bind mount would delete the host's own files.

use std::os::fd::AsFd;
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
    // The table above is a look at one instant: a bind mount made since must still not be
    // deleted through. The removal itself never enters a mount point (nor follows a symlink:
    // a link to a host path inside the jail removes the link, not its target), and names the
    // mount it stopped at.
    // The root itself may be a filesystem of its own: its contents go, then the directory.
    let root = crate::fsx::open_root_nofollow(&jail.root).map_err(|e| Error::io(&jail.root, e))?;
    crate::fsx::remove_contents(root.as_fd()).map_err(|e| Error::io(&jail.root, e))?;
    drop(root);
    crate::fsx::remove_tree(&jail.root).map_err(|e| Error::io(&jail.root, e))
}
