//! Writing the jail's version of a kept entry beside it as `NAME.jailsync-new`, and setting an
//! admin's own file of that name aside.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use super::{hash_at, Print, NEW_SUFFIX};
use crate::entry::{Entry, Kind};
use crate::fsx;

/// Writing the jail's version of one kept entry as `name` beside it.
pub(super) struct NewWrite<'a> {
    pub(super) sroot: BorrowedFd<'a>,
    pub(super) droot: BorrowedFd<'a>,
    /// The kept entry (its jail version is read from `sroot` there) and the name to write.
    pub(super) path: &'a [u8],
    pub(super) name: &'a [u8],
    /// What a `name` jailsync wrote may hold: the jail's version it last offered (the old
    /// base's) or the one it offers now. Anything else there is the admin's.
    pub(super) ours: &'a [Option<Print>],
    pub(super) owner: bool,
}

impl NewWrite<'_> {
    /// Writes the jail's entry `e` through a temporary name beside `name`; returns where an
    /// admin's own `name` was set aside, if one was in the way.
    pub(super) fn write(&self, e: &Entry) -> io::Result<Option<Box<[u8]>>> {
        if e.kind == Kind::Dir {
            return Err(io::Error::other(
                "the jail's version is a directory: not written beside the kept entry",
            ));
        }
        let (dp, dn) = fsx::split_parent(self.name);
        let dd = fsx::open_dir_beneath(self.droot, dp)?;
        // Ends in the suffix too: a run killed here leaves a name no sync touches.
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(dn);
        tmp.extend_from_slice(format!(".{}{NEW_SUFFIX}", std::process::id()).as_bytes());
        let _ = fsx::unlink_at(dd.as_fd(), &tmp);
        // The directory keeps the jail's mtime: writing beside a kept file is not a change
        // `verify` should see.
        let before = fsx::fstat(dd.as_fd())?;
        let r = self.make(dd.as_fd(), &tmp, e).and_then(|()| {
            let aside = self.set_aside(dd.as_fd(), dn)?;
            fsx::rename_at(dd.as_fd(), &tmp, dd.as_fd(), dn)?;
            Ok(aside)
        });
        if r.is_err() {
            let _ = fsx::unlink_at(dd.as_fd(), &tmp);
        }
        fsx::set_mtime(
            dd.as_fd(),
            before.st_mtime as i64,
            before.st_mtime_nsec as u32,
        )?;
        r
    }

    /// Makes the jail's entry `e` as `tmp` in `dd`.
    fn make(&self, dd: BorrowedFd<'_>, tmp: &[u8], e: &Entry) -> io::Result<()> {
        let meta = fsx::MetaOpts {
            owner: self.owner,
            xattrs: false,
        };
        if e.kind != Kind::File {
            match e.kind {
                Kind::Symlink => fsx::symlink_at(e.target().unwrap_or_default(), dd, tmp)?,
                _ => fsx::mknod_at(dd, tmp, e)?,
            }
            return fsx::set_meta_at(dd, tmp, e, meta);
        }
        let (sp, sn) = fsx::split_parent(self.path);
        let sd = fsx::open_dir_beneath(self.sroot, sp)?;
        let from = fsx::open_read_at(sd.as_fd(), sn)?;
        let to = fsx::create_excl_at(dd, tmp)?;
        let mut r = std::fs::File::from(from);
        let mut w = std::fs::File::from(to);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        w.write_all(&buf)?;
        fsx::set_meta_fd(w.as_fd(), e, meta)
    }

    /// An entry at `dn` that is not one jailsync wrote is the admin's: renamed (never
    /// replaced) to the first free `dn.N`. Returns that name, relative to the tree.
    fn set_aside(&self, dd: BorrowedFd<'_>, dn: &[u8]) -> io::Result<Option<Box<[u8]>>> {
        let st = match fsx::lstat_at(dd, &fsx::cstr(dn)?) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut e = Entry::new(fsx::kind_of(st.st_mode));
        let now = match e.kind {
            Kind::File => Print::file(hash_at(dd, dn)?),
            Kind::Symlink => {
                e.set_target(Some(fsx::read_link_at(dd, &fsx::cstr(dn)?)?.into()));
                Print::special(&e)
            }
            _ => {
                e.set_rdev(st.st_rdev);
                Print::special(&e)
            }
        };
        if self.ours.contains(&Some(now)) {
            return Ok(None);
        }
        for n in 1u32.. {
            let mut to = dn.to_vec();
            to.extend_from_slice(format!(".{n}").as_bytes());
            match fsx::move_noreplace(dd, dn, dd, &to) {
                Ok(()) => {
                    let mut rel = fsx::split_parent(self.name).0.to_vec();
                    if !rel.is_empty() {
                        rel.push(b'/');
                    }
                    rel.extend_from_slice(&to);
                    return Ok(Some(rel.into()));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("some NAME.jailsync-new.N is free")
    }
}
