//! State that lives outside the synced trees: the state directory, per-tree stat caches.
//!
//! Layout: `STATE/trees/<key>/` per tree, `<key>` being the first 16 hex digits of the blake3 of
//! the tree's canonical path. Each holds `path` (the tree's path, for people) and `cache` (the
//! stat-cache manifest).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::hash::to_hex;

pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the state directory and checks it is usable.
    pub fn open(root: &Path) -> Result<StateDir> {
        fs::create_dir_all(root.join("trees")).at(root)?;
        let md = fs::metadata(root).at(root)?;
        if !md.is_dir() {
            return Err(Error::bad(root, "state dir is not a directory"));
        }
        Ok(StateDir { root: root.into() })
    }

    /// The per-tree directory for a canonical tree path (created on demand).
    pub fn tree_dir(&self, tree: &Path) -> Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let key = to_hex(blake3::hash(tree.as_os_str().as_bytes()).as_bytes());
        let d = self.root.join("trees").join(&key[..16]);
        if !d.is_dir() {
            fs::create_dir_all(&d).at(&d)?;
            fs::write(d.join("path"), tree.as_os_str().as_bytes()).at(&d)?;
        }
        Ok(d)
    }

    pub fn cache_path(&self, tree: &Path) -> Result<PathBuf> {
        Ok(self.tree_dir(tree)?.join("cache"))
    }
}

/// Refuses a state dir inside one of the trees: the tree would then hold our state.
pub fn check_outside(state: &Path, trees: &[&Path]) -> Result<()> {
    let s = fs::canonicalize(state).unwrap_or_else(|_| state.to_path_buf());
    for t in trees {
        if s.starts_with(t) {
            return Err(Error::bad(
                state,
                format!("state dir is inside the synced tree {}", t.display()),
            ));
        }
    }
    Ok(())
}
