//! `--quick`: rsync's rule instead of content comparison, for those who accept its blind spot.
//!
//! A pair of regular files with the same size and the same mtime to the nanosecond is taken
//! as the same content, unread. The blind spot: content changed by something that then set the
//! mtime back (or wrote it within the same nanosecond tick on a coarse-clock filesystem) is not
//! seen; without `--quick` every same-size pair is compared by blake3. Where both hashes are
//! already known (stat cache) they decide, as they cost nothing.
//!
//! No hash is invented for a pair taken as the same: the stat caches record only hashes that
//! were computed, so a later run without `--quick` still compares the content.

use std::collections::HashSet;

use crate::entry::{Entries, Kind};
use crate::plan::{change, Op, Plan};

/// Source indices of the pairs `--quick` takes as the same content without reading them.
pub fn same_by_stat(src: &Entries, dst: &Entries) -> HashSet<u32> {
    let mut out = HashSet::new();
    let (mut i, mut j) = (0, 0);
    while i < src.len() && j < dst.len() {
        match src.path(i).cmp(dst.path(j)) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                let (a, b) = (src.at(i), dst.at(j));
                let unknown = a.hash.is_none() || b.hash.is_none();
                if a.kind == Kind::File
                    && b.kind == Kind::File
                    && a.size == b.size
                    && a.mtime().0 == b.mtime().0
                    && a.mtime().1 == b.mtime().1
                    // Hard-link groups are planned as wholes: left to the content rule.
                    && a.nlink == 1
                    && b.nlink == 1
                    && unknown
                {
                    out.insert(i as u32);
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Drops the indices of `same` from a list of files to hash (`src_side`: the list is of
/// source indices; else of destination indices, matched through the paths).
pub fn skip_hashing(
    need: &mut Vec<u32>,
    same: &HashSet<u32>,
    src: &Entries,
    dst: &Entries,
    src_side: bool,
) {
    if src_side {
        need.retain(|i| !same.contains(i));
    } else {
        let paths: HashSet<&[u8]> = same.iter().map(|&i| src.path(i as usize)).collect();
        need.retain(|&j| !paths.contains(dst.path(j as usize)));
    }
}

/// The plan's content changes of `same` pairs withdrawn: a change of metadata alone stays
/// (as a metadata-only action), a pair with nothing else to do leaves the plan.
pub fn withdraw_content(plan: &mut Plan, same: &HashSet<u32>) {
    let content_only = change::CONTENT;
    let mut drop = vec![false; plan.actions.len()];
    for (k, a) in plan.actions.iter_mut().enumerate() {
        let structural = change::NEW | change::SIZE | change::TYPE | change::LINK;
        if a.op != Op::Replace
            || a.src == u32::MAX
            || a.link_to != u32::MAX
            || !same.contains(&a.src)
        {
            continue;
        }
        if a.changes & structural != 0 || a.changes & content_only == 0 {
            continue;
        }
        a.changes &= !content_only;
        if a.changes == 0 {
            drop[k] = true;
        } else {
            a.op = Op::Meta;
        }
    }
    if drop.iter().any(|&d| d) {
        crate::plan::drop_actions(plan, &drop);
    }
}

pub fn sorted(same: HashSet<u32>) -> Vec<u32> {
    let mut v: Vec<u32> = same.into_iter().collect();
    v.sort_unstable();
    v
}

/// After staging, `next` (the source's entries restated to the next tree's inodes) holds the
/// live file at each `same` path: its hash is the live one's when that is known and the inode
/// is the same, else unknown. The source's hash there would describe content the live file
/// may not have.
pub fn live_hashes(next: &mut Entries, live: &Entries, same: &[u32]) {
    for &i in same {
        let i = i as usize;
        let h = match live.search(next.path(i)) {
            Ok(j) if live.at(j).ino == next.at(i).ino => live.at(j).hash.copied(),
            _ => None,
        };
        next.set_hash(i, h);
    }
}
