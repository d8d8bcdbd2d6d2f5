//! What staging shares with the reports: copying a file of the jail into the next tree
//! without ever installing a copy torn by a writer in the jail ([`copy_checked`]), the
//! outcome of a tree's run and its per-entry errors (source side or destination side), and the
//! removal of temporary names an older version's killed per-file run recorded leaving.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::entry::{Ent, Kind};
use crate::fsx::{self, split_parent, MetaOpts};
use crate::hash;
use crate::progress::Phase;

#[derive(Clone, Copy, Debug)]
pub struct ApplyOpts {
    pub meta: MetaOpts,
    /// fsync data before each rename and each touched directory after.
    pub fsync: bool,
}

/// An entry that could not be synced, with the phase and the cause.
#[derive(Debug)]
pub struct EntryError {
    pub path: Box<[u8]>,
    pub phase: Phase,
    pub error: io::Error,
}

/// What a tree's apply did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub bytes_written: u64,
    pub switch_window: Duration,
    pub errors: Vec<EntryError>,
    /// Directories left in place because they still hold entries (excluded ones, or entries
    /// created by someone else during the run).
    pub kept: Vec<Box<[u8]>>,
    /// Per planned action: false where it was not carried out (so summaries count what was
    /// done, not what was planned). Empty until the run's last phase.
    pub done: Vec<bool>,
}

/// Removes temporary names a killed run left in the destination.
pub fn clean_leftovers(dst_root: BorrowedFd<'_>, leftovers: &[Box<[u8]>]) -> Vec<EntryError> {
    let mut errs = Vec::new();
    for l in leftovers {
        let (p, n) = split_parent(l);
        let r = fsx::open_dir_beneath(dst_root, p).and_then(|d| fsx::remove_tree_at(d.as_fd(), n));
        if let Err(e) = r {
            errs.push(EntryError {
                path: l.clone(),
                phase: Phase::Stage,
                error: e,
            });
        }
    }
    errs
}

/// An error of the source side of a copy (unreadable, or changed by a writer in the jail): the
/// entry's old version may stay, unlike a failure to write the destination.
#[derive(Debug)]
pub(crate) struct SourceSide(String);

impl std::fmt::Display for SourceSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceSide {}

fn source_side(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, SourceSide(msg))
}

/// A copy of an entry's error (`io::Error` is not `Clone`) that keeps its source-side mark.
pub(crate) fn copy_error(e: &io::Error) -> io::Error {
    if is_source_side(e) {
        source_side(e.kind(), e.to_string())
    } else {
        io::Error::new(e.kind(), e.to_string())
    }
}

/// Whether a staging error is about reading the source (its path is then the source's).
pub fn is_source_side(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<SourceSide>())
}

/// Copies a source file into a new file `dname` in `ddir`, refusing to install a copy torn by a writer in the jail: the
/// source's size, mtime and ctime must be what the scan saw and must not move during the
/// copy, and its content must hash the same before and after it (one retry for a change
/// during the copy). `bare`: `ddir` passes no xattrs on ([`fsx::makes_bare`]); otherwise the
/// copy may have inherited a default ACL, which its metadata setting removes when the source
/// lacks it (see [`fsx::strip_acls`] for the rule).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_checked(
    sdir: BorrowedFd<'_>,
    sname: &[u8],
    ddir: BorrowedFd<'_>,
    dname: &[u8],
    e: Ent<'_>,
    at_own_path: bool,
    bare: bool,
    opts: ApplyOpts,
) -> io::Result<(u64, bool)> {
    let mut stale_hash = false;
    for attempt in 0..2 {
        // Errors are reported under the destination path; say that this one is the jail's.
        let sfd = fsx::open_read_at(sdir, sname)
            .map_err(|e| source_side(e.kind(), format!("cannot open the source file: {e}")))?;
        let before = fsx::fstat(sfd.as_fd())?;
        if fsx::kind_of(before.st_mode) != Kind::File
            || before.st_size as u64 != e.size
            || (at_own_path
                && (before.st_mtime != e.mtime().0 || before.st_mtime_nsec as u32 != e.mtime().1))
        {
            return Err(source_side(
                io::ErrorKind::Other,
                "source changed since it was scanned; left as it was (run again)".into(),
            ));
        }
        // A writer through a shared mapping (a linker writing its output) changes content
        // without moving mtime once its pages are dirty, so the stat check cannot see it:
        // the source must also hash after the copy as it did before. "Before" is the
        // scan's hash on the first attempt (no extra read; it may come from a stale cache,
        // hence the retry hashes afresh). A file with no dirty page now (written long ago,
        // the usual case in a jail) cannot change without moving mtime: no hashing then.
        let quiet = fsx::has_dirty_pages(sfd.as_fd()) == Some(false);
        let want = match e.hash {
            _ if quiet || e.size == 0 => None,
            Some(h) if attempt == 0 && at_own_path => Some(*h),
            _ => Some(hash::hash_fd(sfd.as_fd(), e.size)?.0),
        };
        let dfd = fsx::create_excl_at(ddir, dname)?;
        let r = fsx::copy_data(sfd.as_fd(), dfd.as_fd(), e.size, e.is_sparse());
        let after = fsx::fstat(sfd.as_fd())?;
        let mut stable = before.st_size == after.st_size
            && before.st_mtime == after.st_mtime
            && before.st_mtime_nsec == after.st_mtime_nsec
            && before.st_ctime == after.st_ctime
            && before.st_ctime_nsec == after.st_ctime_nsec;
        if let (true, Ok(_), Some(h)) = (stable, &r, want) {
            stable = hash::hash_fd(sfd.as_fd(), e.size)?.0 == h;
            if !stable && attempt == 0 && e.hash == Some(&h) {
                // Torn while hashed, or a cached hash outlived its content: either way it
                // must not be cached again.
                stale_hash = true;
            }
        }
        match r {
            Ok(n) if stable => {
                if bare {
                    fsx::set_meta_fresh_fd(dfd.as_fd(), &e, opts.meta)?;
                } else {
                    fsx::set_meta_fd(dfd.as_fd(), &e, opts.meta)?;
                }
                if opts.fsync {
                    fsx::fsync(dfd.as_fd())?;
                }
                return Ok((n, stale_hash));
            }
            Ok(_) => {
                drop(dfd);
                fsx::unlink_at(ddir, dname)?;
                if attempt == 1 {
                    return Err(source_side(
                        io::ErrorKind::Other,
                        "source changed while being copied; left as it was".into(),
                    ));
                }
            }
            Err(err) => {
                drop(dfd);
                let _ = fsx::unlink_at(ddir, dname);
                return Err(err);
            }
        }
    }
    unreachable!()
}
