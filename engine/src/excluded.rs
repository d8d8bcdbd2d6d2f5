//! Excluded entries are the live system's, before and after any switch: a sync links them
//! from the live tree into the next one ([`crate::stage`]), a rollback into the generation it
//! switches back ([`crate::generation`]). Both find them and carry them across with the code
//! here, so the two cannot disagree on what "excluded" or "carried" means.
//!
//! Carrying a non-directory is a hard link (the same inode: an edit in place made after the
//! carry is carried by the link itself); a directory is made anew with the live one's exact
//! metadata and its contents carried the same way, recursively.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::entry::Entries;
use crate::entry::{join, Kind};
use crate::fsx::{self, MetaOpts};
use crate::plan::{Op, Plan};
use crate::scan::Excludes;

/// A path (relative to the tree) and what went wrong there.
pub type PathError = (Box<[u8]>, io::Error);

/// The excluded entries directly in each directory of `holds` (relative to `root`), in path
/// order. Our own homes at the top are nobody's content and never listed. A name gone between
/// listing and look is not there.
pub fn list(
    root: BorrowedFd<'_>,
    excludes: &Excludes,
    holds: &[Box<[u8]>],
) -> Result<Vec<Box<[u8]>>, PathError> {
    let mut out = Vec::new();
    for d in holds {
        let dir = fsx::open_dir_beneath(root, d).map_err(|e| (d.clone(), e))?;
        for name in fsx::list_dir(dir.as_fd()).map_err(|e| (d.clone(), e))? {
            if d.is_empty()
                && (name == crate::names::IN_TREE_HOME || name == crate::names::STORE_NAME)
            {
                continue;
            }
            let path = join(d, &name);
            let c = fsx::cstr(&name).map_err(|e| (path.clone().into(), e))?;
            let st = match fsx::lstat_at(dir.as_fd(), &c) {
                Ok(st) => st,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err((path.into(), e)),
            };
            let is_dir = fsx::kind_of(st.st_mode as u32) == Kind::Dir;
            // A nested tree's home is kept where it is, as an excluded entry is (see `scan`).
            if excludes.matches(&path, &name, is_dir) || crate::names::is_ours(&name, &st) {
                out.push(path.into_boxed_slice());
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Carries `name` of the directory `from` into the directory `to`: a directory made with its
/// metadata (after its contents, so its mtime sticks), everything else hard-linked.
pub fn clone_at(
    from: BorrowedFd<'_>,
    to: BorrowedFd<'_>,
    name: &[u8],
    meta: MetaOpts,
) -> io::Result<()> {
    let c = fsx::cstr(name)?;
    let st = fsx::lstat_at(from, &c)?;
    if fsx::kind_of(st.st_mode as u32) != Kind::Dir {
        return fsx::link_at(from, name, to, name);
    }
    let mut e = crate::fsx::entry_from_stat(&st);
    if meta.xattrs {
        e.set_xattrs(fsx::read_xattrs_at(from, name)?);
    }
    fsx::mkdir_at(to, name, 0o700)?;
    let fsub = fsx::open_dir_beneath(from, name)?;
    let tsub = fsx::open_dir_beneath(to, name)?;
    for child in fsx::list_dir(fsub.as_fd())? {
        clone_at(fsub.as_fd(), tsub.as_fd(), &child, meta)?;
    }
    fsx::set_meta_fd(tsub.as_fd(), &e, meta)
}

/// A destination directory holding an excluded entry is not deleted (nor are its ancestors):
/// the excluded entry must survive, and planning the delete would repeat on every run. Nor is
/// it exchanged for a non-directory, which would delete the excluded entry with it: it stays,
/// what else it held is removed, and its path is returned to be reported.
pub(crate) fn keep_excluded_parents(
    plan: &mut Plan,
    dst: &Entries,
    holds: &[Box<[u8]>],
) -> Vec<Box<[u8]>> {
    use std::collections::{HashMap, HashSet};
    if holds.is_empty() {
        return Vec::new();
    }
    let mut keep: HashSet<&[u8]> = HashSet::new();
    for h in holds {
        let mut p: &[u8] = h;
        while !p.is_empty() && keep.insert(p) {
            p = fsx::split_parent(p).0;
        }
    }
    let dpath = |a: &crate::plan::Action| dst.path(a.dst as usize);
    let refused: Vec<Box<[u8]>> = plan
        .actions
        .iter()
        .filter(|a| {
            a.op == Op::Exchange && dst[a.dst as usize].kind == Kind::Dir && keep.contains(dpath(a))
        })
        .map(|a| dpath(a).into())
        .collect();
    let dropped: HashSet<u32> = plan
        .actions
        .iter()
        .filter(|a| a.op == Op::Exchange && refused.iter().any(|r| &r[..] == dpath(a)))
        .map(|a| a.src)
        .collect();
    plan.actions.retain(|a| match a.op {
        Op::Delete => !keep.contains(dpath(a)),
        Op::Exchange => !dropped.contains(&a.src),
        _ => true,
    });
    let mut leaders: HashMap<u32, u32> = HashMap::new();
    for a in plan.actions.iter_mut() {
        if a.op == Op::Delete
            && a.covered
            && crate::scan::under_any(&refused, dst.path(a.dst as usize))
        {
            a.covered = false;
        }
        // A hard-link group whose leader was dropped gets its next member as leader.
        if a.link_to != crate::plan::NONE && dropped.contains(&a.link_to) {
            match leaders.get(&a.link_to) {
                Some(&l) => a.link_to = l,
                None => {
                    leaders.insert(a.link_to, a.src);
                    a.link_to = crate::plan::NONE;
                }
            }
        }
    }
    refused
}
