//! Space on disk held by kept trees (rollback generations), for `history` and `prune`.
//!
//! A generation shares every unchanged file's inode with the live tree, so `du` of it says
//! little. What counts is the blocks (`st_blocks`, so holes are not counted) of:
//! - **not live**: inodes the live tree does not link (the old versions of what later syncs
//!   changed or deleted), plus the generation's own directories; and
//! - **own**: the part of those no other tree links either (every link of the inode is inside
//!   the generation): what removing this generation alone frees.
//!
//! An old file kept by two generations is "not live" in both and "own" in neither; removing
//! both frees it, which [`held_only_by`] over the pair reports.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Bytes on disk (allocated blocks) of a kept tree.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Blocks of inodes the live tree does not link, and of the tree's directories.
    pub not_live: u64,
    /// Blocks of inodes linked only from inside the tree(s) measured, and their directories.
    pub own: u64,
}

/// Walks `roots` (never following symlinks, staying on the first root's device) and calls
/// `f(metadata)` for every entry below and including each root.
fn walk(roots: &[PathBuf], skip: &[&[u8]], mut f: impl FnMut(&fs::Metadata)) -> Result<()> {
    for root in roots {
        let top = fs::symlink_metadata(root).at(root)?;
        let dev = top.dev();
        f(&top);
        if !top.is_dir() {
            continue;
        }
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for ent in fs::read_dir(&dir).at(&dir)? {
                let ent = ent.at(&dir)?;
                use std::os::unix::ffi::OsStrExt;
                if dir == *root && skip.contains(&ent.file_name().as_bytes()) {
                    continue;
                }
                let p = ent.path();
                let md = fs::symlink_metadata(&p).at(&p)?;
                // A mount below the tree is another filesystem's business.
                if md.dev() != dev {
                    continue;
                }
                f(&md);
                if md.is_dir() {
                    stack.push(p);
                }
            }
        }
    }
    Ok(())
}

/// Inode numbers of the live tree's non-directories (same device as its root). `skip`: names
/// at its top not to enter (an in-tree home or rollback store).
pub fn live_inodes(live: &Path, skip: &[&[u8]]) -> Result<HashSet<u64>> {
    let mut out = HashSet::new();
    walk(&[live.to_path_buf()], skip, |md| {
        if !md.is_dir() {
            out.insert(md.ino());
        }
    })?;
    Ok(out)
}

/// The usage of the kept trees `roots` taken together, against the live tree's inodes.
pub fn held_only_by(roots: &[PathBuf], live: &HashSet<u64>) -> Result<Usage> {
    // inode -> (links seen, nlink, bytes)
    let mut seen: HashMap<u64, (u64, u64, u64)> = HashMap::new();
    let mut dirs = 0u64;
    walk(roots, &[], |md| {
        let bytes = md.blocks() * 512;
        if md.is_dir() {
            dirs += bytes;
            return;
        }
        seen.entry(md.ino()).or_insert((0, md.nlink(), bytes)).0 += 1;
    })?;
    let mut u = Usage {
        not_live: dirs,
        own: dirs,
    };
    for (ino, (links, nlink, bytes)) in seen {
        if live.contains(&ino) {
            continue;
        }
        u.not_live += bytes;
        if links >= nlink {
            u.own += bytes;
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_not_linked_from_live_and_own_ones() {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        let g1 = t.path().join("g1");
        let g2 = t.path().join("g2");
        for d in [&live, &g1, &g2] {
            fs::create_dir(d).unwrap();
        }
        let big = vec![7u8; 64 << 10];
        fs::write(live.join("same"), &big).unwrap();
        fs::hard_link(live.join("same"), g1.join("same")).unwrap();
        fs::write(g1.join("old"), &big).unwrap();
        fs::hard_link(g1.join("old"), g2.join("old")).unwrap();
        fs::write(g2.join("older"), &big).unwrap();
        let blocks = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
        let file = blocks(&g1.join("old"));
        assert!(file >= 64 << 10, "{file}");
        let inos = live_inodes(&live, &[]).unwrap();
        let u1 = held_only_by(std::slice::from_ref(&g1), &inos).unwrap();
        assert_eq!(u1.not_live, file + blocks(&g1));
        assert_eq!(u1.own, blocks(&g1), "`old` is also in g2");
        let u2 = held_only_by(std::slice::from_ref(&g2), &inos).unwrap();
        assert_eq!(u2.not_live, 2 * file + blocks(&g2));
        assert_eq!(u2.own, file + blocks(&g2));
        let both = held_only_by(&[g1.clone(), g2.clone()], &inos).unwrap();
        assert_eq!(both.own, 2 * file + blocks(&g1) + blocks(&g2));
    }
}
