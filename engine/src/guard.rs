//! The last look before a switch at what the admin owns: protected configuration and excluded
//! paths. The next tree holds them as they were when the run scanned (protected files) or
//! staged (excluded ones); a file written, replaced, created or removed there since would be
//! left behind in the old tree by the exchange — an edit silently undone. Such a run switches
//! nothing instead (run it again: it then decides on the new version).
//!
//! What is not a change: a live inode the next tree shares (an edit in place is carried by
//! the link itself), and metadata the run set on a shared inode (hence ctime is not compared).

// stat field widths differ between targets; the casts are no-ops only on some.
#![allow(clippy::unnecessary_cast)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::entry::{join, Entries, Kind};
use crate::fsx::{self, split_parent};
use crate::scan::Excludes;

/// What changed, and how (for the message).
#[derive(Debug, PartialEq)]
pub struct Changed {
    pub path: Vec<u8>,
    pub how: &'static str,
}

/// Looks at every live entry under `guard` (paths scanned into `dst`: protected files, or
/// directories whose whole subtree is protected) and every excluded entry of `holds_excluded`
/// (never scanned: compared with what was linked into the next tree). The first change found.
pub fn changed_since_scan(
    live: BorrowedFd<'_>,
    next: BorrowedFd<'_>,
    dst: &Entries,
    guard: &[Box<[u8]>],
    excludes: &Excludes,
    holds_excluded: &[Box<[u8]>],
) -> io::Result<Option<Changed>> {
    let g = Look {
        live,
        next,
        dst,
        excludes,
    };
    for p in guard {
        if let Some(c) = g.walk(p, true)? {
            return Ok(Some(c));
        }
    }
    if !excludes.is_empty() {
        for d in holds_excluded {
            let ld = match fsx::open_dir_beneath(live, d) {
                Ok(fd) => fd,
                // Gone since the scan: what it held went with it, nothing left to lose.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    continue
                }
                Err(e) => return Err(e),
            };
            for name in fsx::list_dir(ld.as_fd())? {
                if d.is_empty() && (name == crate::switch::IN_TREE_HOME || name == fsx::STORE_NAME)
                {
                    continue;
                }
                let path = join(d, &name);
                let is_dir = match fsx::lstat_at(ld.as_fd(), &fsx::cstr(&name)?) {
                    Ok(st) => fsx::kind_of(st.st_mode as u32) == Kind::Dir,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if excludes.matches(&path, &name, is_dir) {
                    if let Some(c) = g.walk(&path, false)? {
                        return Ok(Some(c));
                    }
                }
            }
        }
    }
    Ok(None)
}

struct Look<'a> {
    live: BorrowedFd<'a>,
    next: BorrowedFd<'a>,
    dst: &'a Entries,
    excludes: &'a Excludes,
}

/// (kind, dev, ino, size, mtime s, mtime ns) of `rel` under `root`; None when absent.
type Id = (Kind, u64, u64, u64, i64, u32);

fn id_at(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<Option<Id>> {
    let (parent, name) = split_parent(rel);
    let st = fsx::open_dir_beneath(root, parent).and_then(|d| {
        if name.is_empty() {
            fsx::fstat(d.as_fd())
        } else {
            fsx::lstat_at(d.as_fd(), &fsx::cstr(name)?)
        }
    });
    match st {
        Ok(st) => Ok(Some((
            fsx::kind_of(st.st_mode as u32),
            st.st_dev as u64,
            st.st_ino as u64,
            st.st_size as u64,
            st.st_mtime as i64,
            st.st_mtime_nsec as u32,
        ))),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Look<'_> {
    /// `scanned`: the scan listed this subtree (protected), so a live entry is compared with
    /// its scan; otherwise (excluded) only with what the next tree links.
    fn walk(&self, rel: &[u8], scanned: bool) -> io::Result<Option<Changed>> {
        let changed = |how| {
            Ok(Some(Changed {
                path: rel.to_vec(),
                how,
            }))
        };
        let was = if scanned {
            self.dst.search(rel).ok().map(|j| self.dst.at(j))
        } else {
            None
        };
        let Some(now) = id_at(self.live, rel)? else {
            return match was {
                Some(_) => changed("removed during the run"),
                None => Ok(None),
            };
        };
        if now.0 == Kind::Dir {
            if scanned && was.is_none_or(|w| w.kind != Kind::Dir) {
                return changed("created during the run");
            }
            let ld = fsx::open_dir_beneath(self.live, rel)?;
            for name in fsx::list_dir(ld.as_fd())? {
                let path = join(rel, &name);
                // Excluded entries are not scanned: the excluded pass looks at them.
                if scanned && !self.excludes.is_empty() {
                    let st = fsx::lstat_at(ld.as_fd(), &fsx::cstr(&name)?);
                    let is_dir = st.is_ok_and(|st| fsx::kind_of(st.st_mode as u32) == Kind::Dir);
                    if self.excludes.matches(&path, &name, is_dir) {
                        continue;
                    }
                }
                if let Some(c) = self.walk(&path, scanned)? {
                    return Ok(Some(c));
                }
            }
            // Removed names: scanned entries directly below that the live tree lacks now.
            if was.is_some() {
                let mut j = self.dst.search(rel).map_or(0, |j| j + 1);
                while j < self.dst.len() {
                    let p = self.dst.path(j);
                    let below = if rel.is_empty() {
                        true
                    } else {
                        p.starts_with(rel) && p.get(rel.len()) == Some(&b'/')
                    };
                    if !below {
                        break;
                    }
                    if split_parent(p).0 == rel && id_at(self.live, p)?.is_none() {
                        return Ok(Some(Changed {
                            path: p.to_vec(),
                            how: "removed during the run",
                        }));
                    }
                    j += 1;
                }
            }
            return Ok(None);
        }
        // The next tree shares this very inode: whatever was written to it is carried.
        if let Some(n) = id_at(self.next, rel)? {
            if (n.0, n.1, n.2) == (now.0, now.1, now.2) {
                return Ok(None);
            }
        }
        match was {
            None => changed(if scanned {
                "created during the run"
            } else {
                "created or replaced during the run"
            }),
            Some(w) => {
                let same = w.kind == now.0
                    && w.ino == now.2
                    && w.size == now.3
                    && w.mtime() == (now.4, now.5);
                if same {
                    Ok(None)
                } else {
                    changed("written or replaced during the run")
                }
            }
        }
    }
}
