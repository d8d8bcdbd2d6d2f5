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

use crate::entry::{join, Kind};
use crate::fsx::{self, MetaOpts};
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
            if d.is_empty() && (name == crate::switch::IN_TREE_HOME || name == fsx::STORE_NAME) {
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
            if excludes.matches(&path, &name, is_dir) || crate::switch::is_ours(&name, &st) {
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
    let mut e = crate::scan::entry_from_stat(&st);
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
