//! Metadata: times, owner, mode, extended attributes, ACLs, file capabilities, inode flags,
//! and the private directories whose owner and mode are the point.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};

use super::open::{fstat, kind_of, lstat_at};
use super::{cstr, errno, sys};
use crate::entry::{Entry, Kind, Xattr, Xattrs};

fn parse_xattr_names(buf: &[u8]) -> Vec<&[u8]> {
    buf.split(|&b| b == 0).filter(|n| !n.is_empty()).collect()
}

/// What the xattr calls act on: a path (`follow`: the `getxattr` family, else `lgetxattr`),
/// or an open file or directory (`fgetxattr`).
#[derive(Clone, Copy)]
#[cfg_attr(
    not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "hurd",
        target_vendor = "apple"
    )),
    allow(dead_code)
)]
pub(crate) enum XTarget<'a> {
    Path(&'a CStr, bool),
    Fd(BorrowedFd<'a>),
}

/// "No such attribute": `ENODATA` on Linux, `ENOATTR` on the BSDs and macOS.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "hurd"))]
fn no_attr(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NODATA
}
#[cfg(target_vendor = "apple")]
fn no_attr(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::NOATTR
}
/// No xattr calls are made there (see `xcall`).
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "hurd",
    target_vendor = "apple"
)))]
fn no_attr(_: rustix::io::Errno) -> bool {
    false
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "hurd",
    target_vendor = "apple"
))]
mod xcall {
    use super::*;
    use rustix::io::Result;

    pub fn list(t: XTarget<'_>, buf: &mut [u8]) -> Result<usize> {
        match t {
            XTarget::Path(p, true) => rfs::listxattr(p, buf),
            XTarget::Path(p, false) => rfs::llistxattr(p, buf),
            XTarget::Fd(fd) => rfs::flistxattr(fd, buf),
        }
    }
    pub fn list_query(t: XTarget<'_>) -> Result<usize> {
        match t {
            XTarget::Path(p, true) => rfs::listxattr_query(p),
            XTarget::Path(p, false) => rfs::llistxattr_query(p),
            XTarget::Fd(fd) => rfs::flistxattr_query(fd),
        }
    }
    pub fn get(t: XTarget<'_>, n: &CStr, buf: &mut [u8]) -> Result<usize> {
        match t {
            XTarget::Path(p, true) => rfs::getxattr(p, n, buf),
            XTarget::Path(p, false) => rfs::lgetxattr(p, n, buf),
            XTarget::Fd(fd) => rfs::fgetxattr(fd, n, buf),
        }
    }
    pub fn get_query(t: XTarget<'_>, n: &CStr) -> Result<usize> {
        match t {
            XTarget::Path(p, true) => rfs::getxattr_query(p, n),
            XTarget::Path(p, false) => rfs::lgetxattr_query(p, n),
            XTarget::Fd(fd) => rfs::fgetxattr_query(fd, n),
        }
    }
    pub fn set(t: XTarget<'_>, n: &CStr, v: &[u8]) -> Result<()> {
        let f = rfs::XattrFlags::empty();
        match t {
            XTarget::Path(p, true) => rfs::setxattr(p, n, v, f),
            XTarget::Path(p, false) => rfs::lsetxattr(p, n, v, f),
            XTarget::Fd(fd) => rfs::fsetxattr(fd, n, v, f),
        }
    }
    pub fn remove(t: XTarget<'_>, n: &CStr) -> Result<()> {
        match t {
            XTarget::Path(p, true) => rfs::removexattr(p, n),
            XTarget::Path(p, false) => rfs::lremovexattr(p, n),
            XTarget::Fd(fd) => rfs::fremovexattr(fd, n),
        }
    }
}

/// Systems whose xattr interface rustix does not wrap (the BSDs' `extattr_*`, illumos'
/// attribute directories): none are read, and setting one is refused.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "hurd",
    target_vendor = "apple"
)))]
mod xcall {
    use super::*;
    use rustix::io::{Errno, Result};

    pub fn list(_: XTarget<'_>, _: &mut [u8]) -> Result<usize> {
        Ok(0)
    }
    pub fn list_query(_: XTarget<'_>) -> Result<usize> {
        Ok(0)
    }
    pub fn get(_: XTarget<'_>, _: &CStr, _: &mut [u8]) -> Result<usize> {
        Err(Errno::NOTSUP)
    }
    pub fn get_query(_: XTarget<'_>, _: &CStr) -> Result<usize> {
        Err(Errno::NOTSUP)
    }
    pub fn set(_: XTarget<'_>, _: &CStr, _: &[u8]) -> Result<()> {
        Err(Errno::NOTSUP)
    }
    pub fn remove(_: XTarget<'_>, _: &CStr) -> Result<()> {
        Err(Errno::NOTSUP)
    }
}

/// Reads all extended attributes of `name` in `dir` (not following a symlink).
pub fn read_xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Xattrs>> {
    sys().read_xattrs_at(dir, name)
}

/// Reads every xattr of `t`, sorted; `None` when it has none (or the filesystem has none).
pub(crate) fn read_xattrs(t: XTarget<'_>) -> io::Result<Option<Xattrs>> {
    let mut buf = vec![0u8; 256];
    let n = loop {
        match xcall::list(t, &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = xcall::list_query(t).map_err(errno)?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(errno(e)),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    let names = buf[..n].to_vec();
    let mut out: Vec<Xattr> = Vec::new();
    for xname in parse_xattr_names(&names) {
        let cname = cstr(xname)?;
        let mut val = vec![0u8; 256];
        let got = loop {
            match xcall::get(t, cname.as_c_str(), &mut val[..]) {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => {
                    let need = xcall::get_query(t, cname.as_c_str()).map_err(errno)?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                // Removed between list and get: it no longer exists.
                Err(e) if no_attr(e) => break None,
                Err(e) => return Err(errno(e)),
            }
        };
        if let Some(n) = got {
            val.truncate(n);
            out.push((xname.into(), val.into_boxed_slice()));
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    out.sort();
    Ok(Some(out.into_boxed_slice()))
}

/// Makes the xattrs of `t` exactly `want`.
pub(crate) fn write_xattrs(t: XTarget<'_>, want: Option<&Xattrs>) -> io::Result<()> {
    let have = read_xattrs(t)?;
    let want: &[Xattr] = want.map(|w| &w[..]).unwrap_or(&[]);
    if let Some(have) = &have {
        for (name, _) in have.iter() {
            if !want.iter().any(|(n, _)| n == name) {
                let c = cstr(name)?;
                match xcall::remove(t, c.as_c_str()) {
                    Ok(()) => {}
                    Err(e) if no_attr(e) => {}
                    Err(e) => return Err(errno(e)),
                }
            }
        }
    }
    for (name, value) in want {
        if let Some(have) = &have {
            if have.iter().any(|(n, v)| n == name && v == value) {
                continue;
            }
        }
        let c = cstr(name)?;
        xcall::set(t, c.as_c_str(), value).map_err(errno)?;
    }
    Ok(())
}

pub(crate) fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

pub(crate) fn times_of(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: ts(e.mtime().0, e.mtime().1),
    }
}

/// Which metadata to set. Owner is set only when we may (root).
#[derive(Clone, Copy, Debug)]
pub struct MetaOpts {
    pub owner: bool,
    pub xattrs: bool,
}

/// Like [`set_meta_fd`] for a file this run just created in a directory that passes nothing
/// on ([`makes_bare`]): it has no xattrs to compare with or remove, so none are read (one
/// procfs lookup less per staged file). Made anywhere else it may hold an inherited ACL: use
/// [`set_meta_fd`], which removes it.
pub fn set_meta_fresh_fd(fd: BorrowedFd<'_>, e: &Entry, o: MetaOpts) -> io::Result<()> {
    let lean = MetaOpts {
        xattrs: o.xattrs && e.xattrs().is_some(),
        ..o
    };
    set_meta_fd(fd, e, lean)
}

/// Like [`set_meta_at`] for an entry this run just made (see [`set_meta_fresh_fd`]).
pub fn set_meta_fresh_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    e: &Entry,
    o: MetaOpts,
) -> io::Result<()> {
    let lean = MetaOpts {
        xattrs: o.xattrs && e.xattrs().is_some(),
        ..o
    };
    set_meta_at(dir, name, e, lean)
}

/// Whether what is made in `dir` starts without xattrs, so that the fresh setters above may
/// skip reading them: `dir` has none to pass on (a default ACL would be inherited).
pub fn makes_bare(dir: BorrowedFd<'_>) -> bool {
    matches!(read_xattrs_at(dir, b"."), Ok(None))
}

/// A directory's default ACL (Linux's name for it): copied onto every entry made in the
/// directory as its access ACL, and onto a directory made there as its default ACL too.
const ACL_DEFAULT: &CStr = c"system.posix_acl_default";
/// An entry's own (access) ACL.
const ACL_ACCESS: &CStr = c"system.posix_acl_access";

/// **Exact ACLs** (invariant 5): an entry we make ends with the jail's ACLs and nothing else,
/// none inherited from where it was made. Two halves enforce it: the directories we stage in
/// (homes, `next`, the state directory and stores) carry no ACL, so nothing made in them or
/// below them before the jail's own ACLs are set inherits one ([`strip_acls`]); and where a
/// default ACL can be in effect (`!`[`makes_bare`]), an entry's metadata is set by
/// [`set_meta_fd`]/[`set_meta_at`], which remove the access (and default) ACL the jail's entry
/// lacks and set the mode after that.
///
/// Removes the access and default ACLs of the open directory `fd` and makes it 0700 again when
/// it had one; returns whether it had. A private directory made where a default ACL is in
/// effect (`setfacl -d` on DST's parent) inherits it, and would pass it on to every entry
/// staged below it. Where there are no ACLs (or no xattrs) nothing changes.
pub fn strip_acls(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::io::Errno;
    let mut had = false;
    for name in [ACL_DEFAULT, ACL_ACCESS] {
        match xcall::remove(XTarget::Fd(fd), name) {
            Ok(()) => had = true,
            Err(e) if no_attr(e) || e == Errno::NOTSUP || e == Errno::OPNOTSUPP => {}
            Err(e) => return Err(errno(e)),
        }
    }
    if had {
        // Private, but still traversable where it was (a home releases run from: 0711).
        let x = rfs::fstat(fd).map_err(errno)?.st_mode as u32 & 0o011;
        rfs::fchmod(fd, Mode::from_raw_mode((0o700 | x) as _)).map_err(errno)?;
    }
    Ok(had)
}

/// Sets owner, xattrs, mode and times of an open regular file or directory, in that order:
/// `chown` clears setuid bits and file capabilities; the mode comes after the xattrs because
/// removing an inherited ACL leaves the mode's group bits at its mask, and setting one moves
/// them; every change bumps ctime but times come last so mtime sticks.
pub fn set_meta_fd(fd: BorrowedFd<'_>, e: &Entry, o: MetaOpts) -> io::Result<()> {
    if o.owner {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(e.uid())),
            Some(rfs::Gid::from_raw(e.gid())),
        )
        .map_err(errno)?;
    }
    if o.xattrs {
        sys().write_xattrs_fd(fd, e.xattrs())?;
    }
    rfs::fchmod(fd, Mode::from_raw_mode((e.mode & 0o7777) as _)).map_err(errno)?;
    rfs::futimens(fd, &times_of(e)).map_err(errno)
}

/// Sets only the mtime of `name` in `dir`, never following a symlink.
pub fn set_times_at(dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<()> {
    let c = cstr(name)?;
    rfs::utimensat(dir, c.as_c_str(), &times_of(e), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
}

/// Sets metadata on the entry `name` in `dir`, which must be of kind `e.kind`; never follows a
/// symlink and never opens a device or fifo for I/O.
pub fn set_meta_at(dir: BorrowedFd<'_>, name: &[u8], e: &Entry, o: MetaOpts) -> io::Result<()> {
    let c = cstr(name)?;
    match e.kind {
        Kind::File | Kind::Dir => {
            let mut fl = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
            if e.kind == Kind::Dir {
                fl |= OFlags::DIRECTORY;
            }
            let fd = rfs::openat(dir, c.as_c_str(), fl, Mode::empty()).map_err(errno)?;
            check_kind(fd.as_fd(), e.kind)?;
            set_meta_fd(fd.as_fd(), e, o)
        }
        Kind::Symlink => {
            if o.owner {
                rfs::chownat(
                    dir,
                    c.as_c_str(),
                    Some(rfs::Uid::from_raw(e.uid())),
                    Some(rfs::Gid::from_raw(e.gid())),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno)?;
            }
            if o.xattrs {
                sys().write_xattrs_at(dir, name, e.xattrs())?;
            }
            rfs::utimensat(dir, c.as_c_str(), &times_of(e), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno)
        }
        Kind::Fifo | Kind::Char | Kind::Block | Kind::Socket => {
            sys().set_node_meta(dir, name, e, o)
        }
    }
}

pub(crate) fn check_kind(fd: BorrowedFd<'_>, want: Kind) -> io::Result<()> {
    let st = rfs::fstat(fd).map_err(errno)?;
    if kind_of(st.st_mode as u32) != want {
        return Err(io::Error::other(format!(
            "changed type underneath us (expected {})",
            want.name()
        )));
    }
    Ok(())
}

/// Opens the directory `name` in `dir` for state only this user may read, creating it with
/// mode 0700 (the umask can only narrow that; there is no moment it is wider). A symlink there
/// is refused, never followed; so is a directory someone else owns (they could read or swap
/// what is kept in it). One made wider by an older version is narrowed. Returns the directory
/// and whether it was created now (only if `create`; else a missing one is `NotFound`).
pub fn open_private_dir(
    dir: BorrowedFd<'_>,
    name: &[u8],
    create: bool,
) -> io::Result<(OwnedFd, bool)> {
    let c = cstr(name)?;
    let created = create
        && match rfs::mkdirat(dir, c.as_c_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(errno(e)),
        };
    let refuse = |why: &str| Err(io::Error::other(why.to_string()));
    let fl = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rfs::openat(dir, c.as_c_str(), fl, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => return refuse("is a symlink: not followed"),
        Err(rustix::io::Errno::NOTDIR) => {
            return match lstat_at(dir, c.as_c_str()) {
                Ok(st) if kind_of(st.st_mode) == Kind::Symlink => {
                    refuse("is a symlink: not followed")
                }
                _ => refuse("is not a directory"),
            }
        }
        Err(e) => return Err(errno(e)),
    };
    let st = fstat(fd.as_fd())?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(io::Error::other(format!(
            "is owned by uid {}, not by this user (uid {me}): nothing is kept there",
            st.st_uid
        )));
    }
    if st.st_mode & 0o077 != 0 {
        rfs::fchmod(fd.as_fd(), Mode::from_raw_mode(0o700)).map_err(errno)?;
    }
    // What is kept here must not inherit a default ACL from where the directory was made.
    strip_acls(fd.as_fd())?;
    Ok((fd, created))
}

/// The file capability (`security.capability`) of the open file `fd`, if it has one.
pub fn file_capability(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    #[cfg(target_os = "linux")]
    {
        let mut buf = vec![0u8; 64];
        loop {
            match rfs::fgetxattr(fd, c"security.capability", &mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(Some(buf));
                }
                Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
                Err(e) if no_attr(e) || e == rustix::io::Errno::NOTSUP => return Ok(None),
                Err(e) => return Err(errno(e)),
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        Ok(None)
    }
}

/// Sets (`Some`) or removes (`None`) the file capability of the open file `fd`.
pub fn set_file_capability(fd: BorrowedFd<'_>, cap: Option<&[u8]>) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let name = c"security.capability";
        let r = match cap {
            Some(v) => rfs::fsetxattr(fd, name, v, rfs::XattrFlags::empty()),
            None => rfs::fremovexattr(fd, name),
        };
        match r {
            Err(e) if cap.is_none() && no_attr(e) => Ok(()),
            r => r.map_err(errno),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd, cap);
        Ok(())
    }
}

/// Sets the permission bits (with setuid, setgid, sticky) of the open file `fd`.
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rfs::fchmod(fd, Mode::from_raw_mode((mode & 0o7777) as _)).map_err(errno)
}

/// Whether `name` in `dir` (a regular file or directory) is immutable or append-only: such an
/// entry, or anything in such a directory, must not be switched away — the admin pinned it.
/// Other types and filesystems without inode flags are never pinned.
pub fn is_pinned_at(dir: BorrowedFd<'_>, name: &[u8], kind: Kind) -> bool {
    if !matches!(kind, Kind::File | Kind::Dir) {
        return false;
    }
    let Ok(c) = cstr(if name.is_empty() { b"." } else { name }) else {
        return false;
    };
    if let Some(p) = sys().is_pinned_at(dir, &c) {
        return p;
    }
    let fl = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rfs::openat(dir, c.as_c_str(), fl, Mode::empty()) else {
        return false;
    };
    sys().is_pinned(fd.as_fd())
}

pub fn set_mtime(fd: BorrowedFd<'_>, secs: i64, nsec: u32) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let t = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs as _,
            tv_nsec: nsec as _,
        },
    };
    rustix::fs::futimens(fd, &t).map_err(io::Error::from)
}
