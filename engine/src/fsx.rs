//! fd-relative filesystem calls: the only place the engine talks to the kernel about trees.
//!
//! Every live-side call is anchored at a directory fd that was opened beneath the destination
//! root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, where the kernel lacks
//! `openat2`, one `O_NOFOLLOW` component at a time), and every final component is a single name
//! acted on without following symlinks. A symlink planted anywhere in the destination therefore
//! makes the call fail instead of redirecting it outside the tree.
//!
//! The calls that differ between kernels sit behind one small trait, [`Os`], with two
//! implementations: [`linux`] (`openat2`, `renameat2(RENAME_EXCHANGE | RENAME_NOREPLACE)`,
//! `/proc/self/fd` for xattrs of symlinks and device nodes, `copy_file_range`, `cachestat`,
//! inode flags) and [`portable`] (POSIX `*at` calls only: a per-component `O_NOFOLLOW` walk,
//! `renameat` with an emulated exchange, xattrs through fds). Linux uses the first unless
//! `JAILSYNC_FSX=portable` (read once) selects the second, which is how the test suite runs
//! against what other systems get; every other system always gets the second. The public
//! functions below keep their names and signatures and delegate, so callers never choose.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

#[cfg(target_os = "linux")]
pub mod linux;
pub mod portable;

/// The OS calls that differ between kernels (see the module doc). Each method acts on a
/// name in an open directory, never following a symlink at it, as the public function of
/// the same purpose documents.
pub trait Os: Send + Sync {
    /// `linux` or `portable`, for `-v` and the tests.
    fn name(&self) -> &'static str;
    /// Opens the directory `rel` (a relative path of at most `PATH_CHUNK` bytes) beneath
    /// `base`, refusing symlinks, `..` and `.` on the way.
    fn open_beneath(&self, base: BorrowedFd<'_>, rel: &[u8], oflags: OFlags)
        -> io::Result<OwnedFd>;
    /// Extended attributes of `name` in `dir` (`None`: none, or not supported).
    fn read_xattrs_at(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Xattrs>>;
    /// Makes the xattrs of the open regular file or directory `fd` exactly `want`.
    fn write_xattrs_fd(&self, fd: BorrowedFd<'_>, want: Option<&Xattrs>) -> io::Result<()>;
    /// Makes the xattrs of `name` in `dir` (a symlink or a node, which are not opened)
    /// exactly `want`.
    fn write_xattrs_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        want: Option<&Xattrs>,
    ) -> io::Result<()>;
    /// Owner, mode, xattrs and mtime of the fifo, device or socket `name` in `dir`, which is
    /// never opened for I/O.
    fn set_node_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        e: &Entry,
        o: MetaOpts,
    ) -> io::Result<()>;
    /// Swaps `a` in `adir` and `b` in `bdir` (one mount).
    fn exchange(
        &self,
        adir: BorrowedFd<'_>,
        a: &[u8],
        bdir: BorrowedFd<'_>,
        b: &[u8],
    ) -> io::Result<()>;
    /// Whether [`Os::exchange`] is one atomic call (else both names are absent in turn, for
    /// the length of one rename each).
    fn exchange_is_atomic(&self) -> bool;
    /// Moves `from` in `fdir` to `to` in `tdir`, failing with `EEXIST` if `to` exists.
    fn move_noreplace(
        &self,
        fdir: BorrowedFd<'_>,
        from: &[u8],
        tdir: BorrowedFd<'_>,
        to: &[u8],
    ) -> io::Result<()>;
    /// Copies `len` bytes at `off` from `src` to `dst` (same offsets); returns bytes copied.
    fn copy_range(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        off: u64,
        len: u64,
    ) -> io::Result<u64>;
    /// See [`has_dirty_pages`].
    fn has_dirty_pages(&self, fd: BorrowedFd<'_>) -> Option<bool>;
    /// Whether the open file or directory is immutable or append-only.
    fn is_pinned(&self, fd: BorrowedFd<'_>) -> bool;
    /// Whether `name` in `dir` is immutable or append-only, answered without opening it (one
    /// call where opening costs three); `None` when that cannot be told so.
    fn is_pinned_at(&self, _dir: BorrowedFd<'_>, _name: &CStr) -> Option<bool> {
        None
    }
    /// Extra flags for opening a source file to read (`O_NOATIME` where there is one).
    fn read_flags(&self) -> OFlags;
    /// A path naming the directory `fd` itself (see [`fd_path`]).
    fn fd_path(&self, fd: BorrowedFd<'_>, known: &Path) -> PathBuf;
}

static SYS: OnceLock<&'static dyn Os> = OnceLock::new();

/// The implementation in use, chosen on first use (see the module doc).
pub fn sys() -> &'static dyn Os {
    *SYS.get_or_init(|| {
        #[cfg(target_os = "linux")]
        if std::env::var_os("JAILSYNC_FSX").as_deref() != Some(OsStr::new("portable")) {
            return &linux::Linux;
        }
        &portable::Portable
    })
}

/// The name of the implementation in use (`linux` or `portable`).
pub fn impl_name() -> &'static str {
    sys().name()
}

/// Whether exchanges are atomic here (`RENAME_EXCHANGE`); see [`Os::exchange_is_atomic`].
pub fn exchange_is_atomic() -> bool {
    sys().exchange_is_atomic()
}

/// A path to the open directory `fd`, for code that must use path-based calls on what is in
/// it (`known` is the path it was opened by). On Linux the `/proc/self/fd/N` magic link: no
/// component is resolved again, so one renamed or replaced by a symlink since redirects
/// nothing. Elsewhere `known` itself: only the owner of its parent can swap it.
pub fn fd_path(fd: BorrowedFd<'_>, known: &Path) -> PathBuf {
    sys().fd_path(fd, known)
}

use crate::entry::{Entry, Kind, Xattr, Xattrs};
pub use crate::names::{is_tmp_name, STORE_NAME, TMP_PREFIX};

/// Longest relative path handed to one `openat2` call; longer paths are resolved in pieces
/// so trees deeper than `PATH_MAX` still work.
const PATH_CHUNK: usize = 3072;

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

pub(crate) fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

/// Opens a directory given by an ordinary path (the roots the user named).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens a destination root, refusing a symlink as its last component.
pub fn open_root_nofollow(path: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens the directory `rel` (relative, may be empty for the root itself) beneath `root`,
/// refusing every symlink on the way.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let oflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if rel.is_empty() {
        return rfs::openat(root, c".", oflags, Mode::empty()).map_err(errno);
    }
    let mut cur: Option<OwnedFd> = None;
    for chunk in path_chunks(rel) {
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root);
        let next = sys().open_beneath(base, chunk, oflags)?;
        cur = Some(next);
    }
    Ok(cur.expect("non-empty path has a chunk"))
}

/// Opens `rel` beneath `base` one component at a time, each with `O_NOFOLLOW`: a symlink
/// anywhere on the way fails the call (`ELOOP` on Linux), and `..`/`.` are refused, so the walk
/// never leaves `base`.
pub(crate) fn walk_nofollow(
    base: BorrowedFd<'_>,
    rel: &[u8],
    oflags: OFlags,
) -> io::Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if comp == b".." || comp == b"." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path component '..' or '.'",
            ));
        }
        let b = cur.as_ref().map(|f| f.as_fd()).unwrap_or(base);
        cur = Some(rfs::openat(b, cstr(comp)?.as_c_str(), oflags, Mode::empty()).map_err(errno)?);
    }
    cur.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

/// Splits a long relative path at `/` boundaries into pieces of at most `PATH_CHUNK` bytes.
fn path_chunks(rel: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = rel;
    while rest.len() > PATH_CHUNK {
        let cut = rest[..PATH_CHUNK]
            .iter()
            .rposition(|&b| b == b'/')
            .unwrap_or(PATH_CHUNK);
        out.push(&rest[..cut]);
        rest = &rest[(cut + 1).min(rest.len())..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

pub use crate::entry::split_parent;

pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<rfs::Stat> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
}

/// `mode` is `st_mode`, whose width differs between systems (u16 on the BSDs and macOS).
pub fn kind_of(mode: impl Into<u32>) -> Kind {
    match FileType::from_raw_mode(mode.into() as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::Char,
        FileType::BlockDevice => Kind::Block,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => Kind::Socket,
    }
}

pub fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    rfs::readlinkat(dir, name, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(errno)
}

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
        rfs::fchmod(fd, Mode::from_raw_mode(0o700)).map_err(errno)?;
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

/// Opens a source file for reading without following a symlink and without touching atime.
pub fn open_read_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let fl = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let extra = sys().read_flags();
    match rfs::openat(dir, c.as_c_str(), fl | extra, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOATIME is refused on files we do not own unless we are root.
        Err(rustix::io::Errno::PERM) if !extra.is_empty() => {
            rfs::openat(dir, c.as_c_str(), fl, Mode::empty()).map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

/// Creates a new file `name` in `dir` (must not exist) for writing.
pub fn create_excl_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    rfs::openat(
        dir,
        c.as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(errno)
}

/// Copies `size` bytes of `src` into the empty file `dst`, keeping holes: data extents are
/// found with `SEEK_DATA`/`SEEK_HOLE` and copied with `copy_file_range` (which reflinks where
/// the filesystem can), and the file is extended to its full size with `ftruncate`.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    size: u64,
    sparse: bool,
) -> io::Result<u64> {
    if size == 0 {
        return Ok(0);
    }
    let written = if sparse {
        copy_sparse(src, dst, size)?
    } else {
        copy_range(src, dst, 0, size)?
    };
    // Holes at the end (or a source that shrank) leave the file short of its size.
    if sparse || written != size {
        rfs::ftruncate(dst, size).map_err(errno)?;
    }
    Ok(written)
}

#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_vendor = "apple",
    target_os = "illumos",
    target_os = "solaris"
))]
fn copy_sparse(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> io::Result<u64> {
    let mut written = 0u64;
    let mut pos = 0u64;
    while pos < size {
        let data = match rfs::seek(src, rfs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(errno(e)),
        };
        if data >= size {
            break;
        }
        let hole = rfs::seek(src, rfs::SeekFrom::Hole(data))
            .map_err(errno)?
            .min(size);
        written += copy_range(src, dst, data, hole - data)?;
        pos = hole;
    }
    Ok(written)
}

/// No `SEEK_DATA` here (NetBSD, OpenBSD): holes are copied as zeros.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_os = "dragonfly",
    target_vendor = "apple",
    target_os = "illumos",
    target_os = "solaris"
)))]
fn copy_sparse(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> io::Result<u64> {
    copy_range(src, dst, 0, size)
}

fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<u64> {
    sys().copy_range(src, dst, off, len)
}

pub(crate) fn copy_range_rw(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let want = ((len - done) as usize).min(buf.len());
        let n = rustix::io::pread(src, &mut buf[..want], off + done).map_err(errno)?;
        if n == 0 {
            break;
        }
        let mut w = 0;
        while w < n {
            w += rustix::io::pwrite(dst, &buf[w..n], off + done + w as u64).map_err(errno)?;
        }
        done += n as u64;
        crate::progress::work(1);
    }
    Ok(done)
}

/// Tells the kernel the file is about to be read whole, once: a wider readahead window for
/// a file bigger than the default window, and the whole of a big file (`whole_from` bytes and
/// up) asked for at once, so a cold read keeps the device busy instead of waiting for one
/// window after another. Hints only: where there is no `posix_fadvise` they are skipped.
pub fn read_hints(fd: BorrowedFd<'_>, size: u64, whole_from: u64) {
    #[cfg(not(target_vendor = "apple"))]
    {
        use rustix::fs::{fadvise, Advice};
        if size >= 128 << 10 {
            let _ = fadvise(fd, 0, None, Advice::Sequential);
        }
        if size >= whole_from {
            let _ = fadvise(fd, 0, None, Advice::WillNeed);
        }
    }
    #[cfg(target_vendor = "apple")]
    let _ = (fd, size, whole_from);
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<rfs::Stat> {
    rfs::fstat(fd).map_err(errno)
}

pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::fsync(fd).map_err(errno)
}

/// Whether any page of the open file is dirty or under writeback (`cachestat(2)`, Linux 6.5);
/// `None` when the kernel cannot tell. A page can be written through a shared mapping without
/// a fault — and so without moving mtime — only while it is dirty: once written back it is
/// write-protected again, and the next write faults and updates the times.
pub fn has_dirty_pages(fd: BorrowedFd<'_>) -> Option<bool> {
    sys().has_dirty_pages(fd)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    rfs::symlinkat(t.as_c_str(), dir, c.as_c_str()).map_err(errno)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<()> {
    let c = cstr(name)?;
    let ft = match e.kind {
        Kind::Fifo => FileType::Fifo,
        Kind::Char => FileType::CharacterDevice,
        Kind::Block => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a node")),
    };
    mknodat(dir, &c, ft, e.rdev())
}

#[cfg(not(target_vendor = "apple"))]
fn mknodat(dir: BorrowedFd<'_>, c: &CStr, ft: FileType, rdev: u64) -> io::Result<()> {
    rfs::mknodat(dir, c, ft, Mode::from_raw_mode(0o600), rdev as _).map_err(errno)
}

/// rustix has no mknodat for macOS, and fifos or device nodes in a package tree are rare there.
#[cfg(target_vendor = "apple")]
fn mknodat(_: BorrowedFd<'_>, _: &CStr, _: FileType, _: u64) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "creating fifos and device nodes is not supported on this system",
    ))
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

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<()> {
    let c = cstr(name)?;
    rfs::mkdirat(dir, c.as_c_str(), Mode::from_raw_mode(mode as _)).map_err(errno)
}

pub fn link_at(
    odir: BorrowedFd<'_>,
    oname: &[u8],
    ndir: BorrowedFd<'_>,
    nname: &[u8],
) -> io::Result<()> {
    let o = cstr(oname)?;
    let n = cstr(nname)?;
    rfs::linkat(odir, o.as_c_str(), ndir, n.as_c_str(), AtFlags::empty()).map_err(errno)
}

/// Atomically replaces `to` (if any, and not a directory) with `from`.
pub fn rename_at(
    dir: BorrowedFd<'_>,
    from: &[u8],
    tdir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    rfs::renameat(dir, f.as_c_str(), tdir, t.as_c_str()).map_err(errno)
}

/// Publishes `from` as `to`, failing if `to` exists.
pub fn rename_noreplace_at(dir: BorrowedFd<'_>, from: &[u8], to: &[u8]) -> io::Result<()> {
    sys().move_noreplace(dir, from, dir, to)
}

/// Swaps `a` and `b` atomically: neither name is ever absent (where [`exchange_is_atomic`];
/// elsewhere see [`portable`]).
pub fn exchange_at(dir: BorrowedFd<'_>, a: &[u8], b: &[u8]) -> io::Result<()> {
    sys().exchange(dir, a, dir, b)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    rfs::unlinkat(dir, c.as_c_str(), AtFlags::empty()).map_err(errno)
}

pub fn rmdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    rfs::unlinkat(dir, c.as_c_str(), AtFlags::REMOVEDIR).map_err(errno)
}

/// Removes `name` in `dir` and, if it is a directory, everything below it, never following
/// symlinks and **never crossing a mount point** (invariant 12): a directory that is the root
/// of a mount (another filesystem, or a bind mount of this one) is neither entered nor removed,
/// everything else is, and the call then fails naming the first such mount, as
/// `rm -r --one-file-system` does. Whatever is removed — an old generation, a staged tree, a
/// jail, an exchanged-out entry — a mount made into it since it was checked (or moved there by
/// a switch racing a `mount`) keeps its files.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let mut shown = name.to_vec();
    let mut blocked = None;
    remove_below(dir, name, &mut shown, &mut blocked)?;
    match blocked {
        None => Ok(()),
        Some(m) => Err(mount_in_the_way(&m)),
    }
}

/// Removes every entry inside the open directory `dir` (not `dir` itself), with the rules of
/// [`remove_tree_at`]; `dir` itself may be a mount root (a jail on its own filesystem).
pub fn remove_contents(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut blocked = None;
    for child in list_dir(dir)? {
        let mut shown = child.clone();
        remove_below(dir, &child, &mut shown, &mut blocked)?;
    }
    match blocked {
        None => Ok(()),
        Some(m) => Err(mount_in_the_way(&m)),
    }
}

/// The error of a removal that stopped at a mount point `rel` (relative to where it began).
pub fn mount_in_the_way(rel: &[u8]) -> io::Error {
    io::Error::other(format!(
        "{} is a mount point: not removed, nothing on that mount was touched (unmount it, then run again)",
        os(rel).to_string_lossy()
    ))
}

/// One step of [`remove_tree_at`]: `shown` is the path of `name` from where the removal began,
/// `blocked` the first mount point met (left alone, and so are its ancestors).
fn remove_below(
    dir: BorrowedFd<'_>,
    name: &[u8],
    shown: &mut Vec<u8>,
    blocked: &mut Option<Vec<u8>>,
) -> io::Result<()> {
    crate::progress::work(1);
    let c = cstr(name)?;
    let (kind, mount_root) = match entry_kind_and_mount(dir, c.as_c_str()) {
        Ok(k) => k,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if kind != Kind::Dir {
        return unlink_at(dir, name);
    }
    if mount_root {
        blocked.get_or_insert_with(|| shown.clone());
        return Ok(());
    }
    let sub = rfs::openat(
        dir,
        c.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    // The name may have been swapped for a mount root since it was looked at: the directory
    // opened is asked again, by its own fd.
    if is_mount_root_fd(sub.as_fd(), dir)? {
        blocked.get_or_insert_with(|| shown.clone());
        return Ok(());
    }
    let was_blocked = blocked.is_some();
    for child in list_dir(sub.as_fd())? {
        let len = shown.len();
        shown.push(b'/');
        shown.extend_from_slice(&child);
        let r = remove_below(sub.as_fd(), &child, shown, blocked);
        shown.truncate(len);
        r?;
    }
    drop(sub);
    if !was_blocked && blocked.is_some() {
        // A mount below: this directory holds it, so it stays.
        return Ok(());
    }
    match rmdir_at(dir, name) {
        // A mount met in another branch of an earlier sibling does not stop this one.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) && blocked.is_some() => Ok(()),
        r => r,
    }
}

/// The type of `name` in `dir` (not followed) and whether it is the root of a mount. Linux
/// says so directly (`STATX_ATTR_MOUNT_ROOT`, which also sees a bind mount of the same
/// filesystem); elsewhere a device other than its directory's is the sign.
fn entry_kind_and_mount(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(Kind, bool)> {
    #[cfg(target_os = "linux")]
    {
        use rfs::{StatxAttributes as A, StatxFlags as F};
        if let Ok(sx) = rfs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, F::TYPE | F::MODE) {
            let kind = kind_of(u32::from(sx.stx_mode));
            if sx.stx_attributes_mask.contains(A::MOUNT_ROOT) {
                return Ok((kind, sx.stx_attributes.contains(A::MOUNT_ROOT)));
            }
        }
    }
    let st = lstat_at(dir, name)?;
    let here = fstat(dir)?;
    let kind = kind_of(st.st_mode as u32);
    Ok((kind, kind == Kind::Dir && st.st_dev != here.st_dev))
}

/// Whether the open directory `fd` is the root of a mount (see [`entry_kind_and_mount`]);
/// `parent` is the directory it was opened from.
pub fn is_mount_root_fd(fd: BorrowedFd<'_>, parent: BorrowedFd<'_>) -> io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use rfs::{StatxAttributes as A, StatxFlags as F};
        if let Ok(sx) = rfs::statx(fd, c"", AtFlags::EMPTY_PATH, F::TYPE) {
            if sx.stx_attributes_mask.contains(A::MOUNT_ROOT) {
                return Ok(sx.stx_attributes.contains(A::MOUNT_ROOT));
            }
        }
    }
    Ok(fstat(fd)?.st_dev != fstat(parent)?.st_dev)
}

/// Removes the tree at `path` (see [`remove_tree_at`]); nothing there is fine.
pub fn remove_tree(path: impl AsRef<Path>) -> io::Result<()> {
    let path = path.as_ref();
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a root directory",
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let pfd = match open_root(parent) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_tree_at(pfd.as_fd(), name.as_bytes())
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

/// Names in a directory, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut d = rfs::Dir::read_from(dir).map_err(errno)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent.map_err(errno)?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        out.push(n.to_vec());
    }
    Ok(out)
}

pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

pub fn geteuid_is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Waits at most `timeout` until `fd` (a pipe or socket) can be read, or written when
/// `write`, without blocking; false when it still cannot. A hung-up or failed stream counts as
/// ready: the read or write that follows reports it.
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    write: bool,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let end = std::time::Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: if write { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for a descriptor the caller keeps open.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        match r {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Hands memory freed by a finished phase (the walk's per-directory lists, hash buffers) back
/// to the system. glibc keeps freed blocks in each thread's arena, where nothing later in the
/// run reuses most of them; on a 200k-file tree that was about 2% of the peak.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Swaps `a` in `adir` and `b` in `bdir` atomically (both on one mount): neither name is ever
/// absent, and whoever opens either path sees one whole object or the other (where
/// [`exchange_is_atomic`]; elsewhere see [`portable`]).
pub fn exchange_between(
    adir: BorrowedFd<'_>,
    a: &[u8],
    bdir: BorrowedFd<'_>,
    b: &[u8],
) -> io::Result<()> {
    sys().exchange(adir, a, bdir, b)
}

/// Moves `from` in `fdir` to `to` in `tdir`, failing if `to` exists.
pub fn move_noreplace(
    fdir: BorrowedFd<'_>,
    from: &[u8],
    tdir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    sys().move_noreplace(fdir, from, tdir, to)
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    rfs::openat(
        dir,
        c.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
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

// stat field widths differ between targets; the casts are no-ops only on some.
#[allow(clippy::unnecessary_cast)]
pub fn entry_from_stat(st: &rfs::Stat) -> Entry {
    let kind = kind_of(st.st_mode as u32);
    let mut e = Entry::new(kind);
    e.mode = (st.st_mode as u32 & 0o7777) as u16;
    if kind == Kind::File || kind == Kind::Symlink {
        e.size = st.st_size as u64;
    }
    e.set_mtime(st.st_mtime as i64, st.st_mtime_nsec as u32);
    e.set_ctime(st.st_ctime as i64, st.st_ctime_nsec as u32);
    (e.ino, e.nlink) = (st.st_ino as u64, st.st_nlink as u32);
    e.set_ids(st.st_uid, st.st_gid, st.st_dev as u64);
    e.sparse = kind == Kind::File && (st.st_blocks as u64).saturating_mul(512) < e.size;
    if matches!(kind, Kind::Char | Kind::Block) {
        e.set_rdev(st.st_rdev as u64);
    }
    e
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

/// Writes `name` in `dir` whole (a new file, exclusive, renamed over; never through a
/// symlink), durably when asked (fsync of the file and the directory).
pub fn write_file_at(
    dir: &OwnedFd,
    name: &str,
    data: &[u8],
    shown: &Path,
    durable: bool,
) -> crate::error::Result<()> {
    write_with(dir, name, shown, durable, |w| w.write_all(data))
}

/// [`write_file_at`] with the content streamed by `fill` (buffered).
pub fn write_with(
    dir: &OwnedFd,
    name: &str,
    shown: &Path,
    durable: bool,
    fill: impl FnOnce(&mut dyn std::io::Write) -> io::Result<()>,
) -> crate::error::Result<()> {
    use crate::error::IoContext;
    let tmp = format!("{name}.tmp");
    let _ = unlink_at(dir.as_fd(), tmp.as_bytes());
    let fd = create_excl_at(dir.as_fd(), tmp.as_bytes()).at(shown)?;
    let mut w = io::BufWriter::with_capacity(1 << 16, std::fs::File::from(fd));
    fill(&mut w).at(shown)?;
    let f = w.into_inner().map_err(|e| e.into_error()).at(shown)?;
    if durable {
        f.sync_all().at(shown)?;
    }
    drop(f);
    rename_at(dir.as_fd(), tmp.as_bytes(), dir.as_fd(), name.as_bytes()).at(shown)?;
    if durable {
        fsync(dir.as_fd()).at(shown)?;
    }
    Ok(())
}

/// The same checks over every implementation this system has (xcp's style): each must keep
/// the guarantees the public functions document, whichever the environment selects.
#[cfg(test)]
mod both;
