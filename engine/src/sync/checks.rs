//! The checks of a run's (source, destination) pairs and paths, before anything is touched:
//! how a destination is resolved, trees apart by identity, pairs disjoint, a source outside
//! DST's own home.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::paths::{self, Follow, Loc};

/// How a destination's last name may be a symlink: followed only with `--follow-dst` (and then
/// only one owned by root or the caller, see [`paths`]).
pub fn follow_dst(yes: bool) -> Follow {
    if yes {
        Follow::Owned
    } else {
        Follow::Never {
            hint: "pass --follow-dst to sync into its target",
        }
    }
}

/// Checks a (source, destination) pair before anything is touched; returns their canonical
/// paths. The destination is resolved the same way whatever its spelling (see [`paths`]).
pub fn check_pair(src: &Path, dst: &Path, follow: bool) -> Result<(PathBuf, PathBuf)> {
    let src_c = source_dir(src)?;
    let dst_c = paths::resolve_dir(dst, "destination", follow_dst(follow))?;
    check_apart(src, &src_c, dst, &dst_c)?;
    Ok((src_c, dst_c))
}

/// Checks `upgrade`'s tree `rel`: JAIL/REL and ROOT/REL, neither reached through a symlink
/// below JAIL or ROOT (ROOT's own last name is treated as a destination's). Returns the
/// canonical pair.
pub fn check_tree(
    jail: &Path,
    root: &Path,
    rel: &Path,
    follow: bool,
) -> Result<(PathBuf, PathBuf)> {
    let jail_c = source_dir(jail)?;
    let root_c = paths::resolve_dir(root, "root", follow_dst(follow))?;
    fs::metadata(&root_c).at(root)?;
    // The jail's contents are not trusted to say where a tree is read from.
    let never = Follow::Never {
        hint: "a tree of the jail is never followed",
    };
    let src_c = paths::resolve_beneath(jail, &jail_c, rel, "tree", never)?;
    let (src, dst) = (jail.join(rel), root.join(rel));
    if !fs::metadata(&src_c).at(&src)?.is_dir() {
        return Err(Error::bad(&src, "source is not a directory"));
    }
    let dst_c = paths::resolve_beneath(root, &root_c, rel, "tree", follow_dst(follow))?;
    check_apart(&src, &src_c, &dst, &dst_c)?;
    Ok((src_c, dst_c))
}

/// Refuses a run whose (source, destination) pairs overlap: a destination that is, holds or
/// lies inside another would be synced by two plans, each deleting what the other makes; one
/// overlapping another pair's source would write into the jail. Compared by identity ([`Loc`]),
/// so the same tree twice, `usr` with `usr/pkg`, and aliases by symlink or bind mount are all
/// caught before anything is touched. Paths are canonical.
pub fn check_disjoint(pairs: &[(&Path, &Path)]) -> Result<()> {
    let locs = pairs
        .iter()
        .map(|(s, d)| Ok((Loc::of(s)?, Loc::of(d)?)))
        .collect::<Result<Vec<_>>>()?;
    for (i, (_, di)) in locs.iter().enumerate() {
        for (j, (sj, dj)) in locs.iter().enumerate() {
            if j > i && di.overlaps(dj) {
                return Err(Error::bad(
                    pairs[i].1,
                    format!(
                        "overlaps {}, another destination of this run",
                        pairs[j].1.display()
                    ),
                ));
            }
            if j != i && di.overlaps(sj) {
                return Err(Error::bad(
                    pairs[i].1,
                    format!(
                        "overlaps {}, the source of another tree of this run",
                        pairs[j].0.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A source directory: followed wherever it leads (it is only read).
fn source_dir(src: &Path) -> Result<PathBuf> {
    if !fs::metadata(src).at(src)?.is_dir() {
        return Err(Error::bad(src, "source is not a directory"));
    }
    fs::canonicalize(src).at(src)
}

/// Refuses a pair whose trees are one, or one inside the other, by identity (device and
/// inode, see [`Loc`]): a bind mount or a symlink aliases a tree as well as its path does.
/// `src` and `dst` are as the user named them, `src_c` and `dst_c` resolved.
fn check_apart(src: &Path, src_c: &Path, dst: &Path, dst_c: &Path) -> Result<()> {
    let s = Loc::of(src_c)?;
    let d = Loc::of(dst_c)?;
    if d.same(&s) {
        return Err(Error::bad(
            dst,
            "source and destination are the same directory",
        ));
    }
    if d.within(&s) {
        return Err(Error::bad(
            dst,
            format!("destination is inside the source {}", src_c.display()),
        ));
    }
    // Behind a mount point of DST the source is another filesystem's, which the run never
    // enters (the jail mounted in the live root, for `sync /mnt/jail/ /`).
    let apart = s.behind_mount_of(src_c, &d, dst_c);
    if s.within(&d) && !apart {
        return Err(Error::bad(
            src,
            format!("source is inside the destination {}", dst_c.display()),
        ));
    }
    // A sync walks into mounts: one showing part of the other tree aliases it as well.
    if let Some(m) = d.mount_into(&s).filter(|_| !apart) {
        return Err(Error::bad(
            m,
            format!(
                "a mount inside the destination shows (part of) the source {}",
                src_c.display()
            ),
        ));
    }
    if let Some(m) = s.mount_into(&d) {
        return Err(Error::bad(
            m,
            format!(
                "a mount inside the source shows (part of) the destination {}",
                dst_c.display()
            ),
        ));
    }
    Ok(())
}

/// A source inside DST's own home (`sync HOME/gen-N DST`, the path `history` prints) would be
/// pruned or moved by the very run that reads it: refused, pointing at rollback.
pub(super) fn refuse_source_in_home(src: &Path, dst: &Path) -> Result<()> {
    let name = dst.file_name().map_or(&b""[..], |n| n.as_encoded_bytes());
    let homes = [
        dst.parent()
            .map(|p| p.join(fsx::os(&crate::switch::home_name(name)))),
        Some(dst.join(fsx::os(crate::switch::IN_TREE_HOME))),
    ];
    match homes.iter().flatten().find(|h| src.starts_with(h)) {
        Some(h) => Err(crate::Error::bad(
            src,
            format!(
                "is inside {}, the home of {} (its rollback generations): to make a generation live again, run `jailsync rollback --gen N {}` (see `jailsync history {}`)",
                h.display(),
                dst.display(),
                dst.display(),
                dst.display()
            ),
        )),
        None => Ok(()),
    }
}
