//! fd-relative filesystem calls: the only place the engine talks to the kernel about trees.
//!
//! Every live-side call is anchored at a directory fd that was opened beneath the destination
//! root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (or, where the kernel lacks
//! `openat2`, one `O_NOFOLLOW` component at a time), and every final component is a single name
//! acted on without following symlinks. A symlink planted anywhere in the destination therefore
//! makes the call fail instead of redirecting it outside the tree.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps,
    CWD,
};

use crate::entry::{Entry, Kind, Xattr, Xattrs};

/// Prefix of every temporary name the engine creates in a destination tree.
pub const TMP_PREFIX: &[u8] = b".jailsync-tmp-";

/// The rollback store's name where it lives beside a destination, or at the top of one that
/// is a filesystem of its own. At the top of a tree it is never scanned, synced or deleted.
pub const STORE_NAME: &[u8] = b".jailsync-rollback";

/// Longest relative path handed to one `openat2` call; longer paths are resolved in pieces
/// so trees deeper than `PATH_MAX` still work.
const PATH_CHUNK: usize = 3072;

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

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
        let next = open_beneath_chunk(base, chunk, oflags)?;
        cur = Some(next);
    }
    Ok(cur.expect("non-empty path has a chunk"))
}

fn open_beneath_chunk(base: BorrowedFd<'_>, chunk: &[u8], oflags: OFlags) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        match rfs::openat2(
            base,
            cstr(chunk)?.as_c_str(),
            oflags,
            Mode::empty(),
            resolve,
        ) {
            Ok(fd) => return Ok(fd),
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            // openat2 may report a transient race as EAGAIN; the per-component walk is exact.
            Err(rustix::io::Errno::AGAIN) => {}
            Err(e) => return Err(errno(e)),
        }
    }
    let mut cur: Option<OwnedFd> = None;
    for comp in chunk.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
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

/// Splits `a/b/c` into (`a/b`, `c`).
pub fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<rfs::Stat> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
}

pub fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode as _) {
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

/// A path that reaches `name` inside `dir` through procfs without following a symlink at the
/// last component: used for the xattr calls, which have no fd-relative form.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> CString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    CString::new(p).expect("names carry no NUL")
}

fn fd_proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

fn parse_xattr_names(buf: &[u8]) -> Vec<&[u8]> {
    buf.split(|&b| b == 0).filter(|n| !n.is_empty()).collect()
}

static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);

/// `listxattrat(2)` (Linux 6.13): lists names relative to a directory fd in one call, where the
/// procfs path costs a magic-link walk per entry. `None` when the kernel lacks it.
fn listxattrat_empty(dir: BorrowedFd<'_>, name: &CStr) -> Option<io::Result<bool>> {
    if NO_LISTXATTRAT.load(Ordering::Relaxed) {
        return None;
    }
    // The number is shared by every architecture's unified syscall table.
    const SYS_LISTXATTRAT: libc::c_long = 465;
    let mut buf = [0u8; 1];
    // SAFETY: valid fd, NUL-terminated name, buffer pointer and length describe `buf`.
    let r = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            buf.as_mut_ptr(),
            0usize,
        )
    };
    if r >= 0 {
        return Some(Ok(r == 0));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            NO_LISTXATTRAT.store(true, Ordering::Relaxed);
            None
        }
        Some(libc::ENOTSUP) => Some(Ok(true)),
        _ => Some(Err(e)),
    }
}

/// Reads all extended attributes of `name` in `dir` (not following a symlink).
pub fn read_xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Xattrs>> {
    // Most entries have none: ask cheaply first.
    if let Ok(c) = cstr(name) {
        if let Some(r) = listxattrat_empty(dir, &c) {
            if r? {
                return Ok(None);
            }
        }
    }
    let p = proc_path(dir, name);
    read_xattrs_path(&p, false)
}

/// `follow`: `p` is a `/proc/self/fd/N` magic link to the object itself (an open fd, maybe
/// `O_PATH`), which the `l*` calls would not follow: they would act on the link and fail.
fn read_xattrs_path(p: &CStr, follow: bool) -> io::Result<Option<Xattrs>> {
    let mut buf = vec![0u8; 256];
    let n = loop {
        let r = if follow {
            rfs::listxattr(p, &mut buf[..])
        } else {
            rfs::llistxattr(p, &mut buf[..])
        };
        match r {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = if follow {
                    rfs::listxattr_query(p)
                } else {
                    rfs::llistxattr_query(p)
                }
                .map_err(errno)?;
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
            let r = if follow {
                rfs::getxattr(p, cname.as_c_str(), &mut val[..])
            } else {
                rfs::lgetxattr(p, cname.as_c_str(), &mut val[..])
            };
            match r {
                Ok(n) => break Some(n),
                Err(rustix::io::Errno::RANGE) => {
                    let need = if follow {
                        rfs::getxattr_query(p, cname.as_c_str())
                    } else {
                        rfs::lgetxattr_query(p, cname.as_c_str())
                    }
                    .map_err(errno)?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                // Removed between list and get: it no longer exists.
                Err(rustix::io::Errno::NODATA) => break None,
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

/// Makes the xattrs of the object at `p` exactly `want` (`follow` as in [`read_xattrs_path`]).
fn write_xattrs_path(p: &CStr, want: Option<&Xattrs>, follow: bool) -> io::Result<()> {
    let have = read_xattrs_path(p, follow)?;
    let want: &[Xattr] = want.map(|w| &w[..]).unwrap_or(&[]);
    if let Some(have) = &have {
        for (name, _) in have.iter() {
            if !want.iter().any(|(n, _)| n == name) {
                let c = cstr(name)?;
                let r = if follow {
                    rfs::removexattr(p, c.as_c_str())
                } else {
                    rfs::lremovexattr(p, c.as_c_str())
                };
                match r {
                    Ok(()) | Err(rustix::io::Errno::NODATA) => {}
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
        if follow {
            rfs::setxattr(p, c.as_c_str(), value, rfs::XattrFlags::empty())
        } else {
            rfs::lsetxattr(p, c.as_c_str(), value, rfs::XattrFlags::empty())
        }
        .map_err(errno)?;
    }
    Ok(())
}

fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

fn times_of(e: &Entry) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: ts(e.mtime, e.mtime_nsec),
    }
}

/// Which metadata to set. Owner is set only when we may (root).
#[derive(Clone, Copy, Debug)]
pub struct MetaOpts {
    pub owner: bool,
    pub xattrs: bool,
}

/// Like [`set_meta_fd`] for a file this run just created: it has no xattrs to compare with or
/// remove, so none are read (one procfs lookup less per staged file).
pub fn set_meta_fresh_fd(fd: BorrowedFd<'_>, e: &Entry, o: MetaOpts) -> io::Result<()> {
    let lean = MetaOpts {
        xattrs: o.xattrs && e.xattrs().is_some(),
        ..o
    };
    set_meta_fd(fd, e, lean)
}

/// Sets owner, mode, xattrs and times of an open regular file or directory, in that order:
/// `chown` clears setuid bits, and every change bumps ctime but times come last so mtime sticks.
pub fn set_meta_fd(fd: BorrowedFd<'_>, e: &Entry, o: MetaOpts) -> io::Result<()> {
    if o.owner {
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(e.uid)),
            Some(rfs::Gid::from_raw(e.gid)),
        )
        .map_err(errno)?;
    }
    rfs::fchmod(fd, Mode::from_raw_mode((e.mode & 0o7777) as _)).map_err(errno)?;
    if o.xattrs {
        write_xattrs_path(&fd_proc_path(fd), e.xattrs(), true)?;
    }
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
                    Some(rfs::Uid::from_raw(e.uid)),
                    Some(rfs::Gid::from_raw(e.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(errno)?;
            }
            if o.xattrs {
                write_xattrs_path(&proc_path(dir, name), e.xattrs(), false)?;
            }
            rfs::utimensat(dir, c.as_c_str(), &times_of(e), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno)
        }
        Kind::Fifo | Kind::Char | Kind::Block | Kind::Socket => {
            // O_PATH gives a handle to the node itself without opening the device.
            let fd = rfs::openat(
                dir,
                c.as_c_str(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            check_kind(fd.as_fd(), e.kind)?;
            let p = fd_proc_path(fd.as_fd());
            if o.owner {
                rfs::chownat(
                    CWD,
                    p.as_c_str(),
                    Some(rfs::Uid::from_raw(e.uid)),
                    Some(rfs::Gid::from_raw(e.gid)),
                    AtFlags::empty(),
                )
                .map_err(errno)?;
            }
            rfs::chmodat(
                CWD,
                p.as_c_str(),
                Mode::from_raw_mode((e.mode & 0o7777) as _),
                AtFlags::empty(),
            )
            .map_err(errno)?;
            if o.xattrs {
                write_xattrs_path(&p, e.xattrs(), true)?;
            }
            rfs::utimensat(CWD, p.as_c_str(), &times_of(e), AtFlags::empty()).map_err(errno)
        }
    }
}

fn check_kind(fd: BorrowedFd<'_>, want: Kind) -> io::Result<()> {
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
    match rfs::openat(dir, c.as_c_str(), fl | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOATIME is refused on files we do not own unless we are root.
        Err(rustix::io::Errno::PERM) => {
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
    let mut written = 0u64;
    if sparse {
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
    } else {
        written = copy_range(src, dst, 0, size)?;
    }
    // Holes at the end (or a source that shrank) leave the file short of its size.
    if sparse || written != size {
        rfs::ftruncate(dst, size).map_err(errno)?;
    }
    Ok(written)
}

fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let mut soff = off + done;
        let mut doff = off + done;
        let want = (len - done).min(1 << 30) as usize;
        match rfs::copy_file_range(src, Some(&mut soff), dst, Some(&mut doff), want) {
            Ok(0) => break, // source shrank: the caller's after-copy check catches it
            Ok(n) => done += n as u64,
            Err(rustix::io::Errno::XDEV)
            | Err(rustix::io::Errno::NOSYS)
            | Err(rustix::io::Errno::INVAL)
            | Err(rustix::io::Errno::OPNOTSUPP) => {
                return Ok(done + copy_range_rw(src, dst, off + done, len - done)?)
            }
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(done)
}

fn copy_range_rw(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<u64> {
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
    }
    Ok(done)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<rfs::Stat> {
    rfs::fstat(fd).map_err(errno)
}

pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::fsync(fd).map_err(errno)
}

static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

/// Whether any page of the open file is dirty or under writeback (`cachestat(2)`, Linux 6.5);
/// `None` when the kernel cannot tell. A page can be written through a shared mapping without
/// a fault — and so without moving mtime — only while it is dirty: once written back it is
/// write-protected again, and the next write faults and updates the times.
pub fn has_dirty_pages(fd: BorrowedFd<'_>) -> Option<bool> {
    if NO_CACHESTAT.load(Ordering::Relaxed) {
        return None;
    }
    // The number is shared by every architecture's unified syscall table.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    let range = Range { off: 0, len: 0 }; // len 0: to the end of the file
    let mut st = Stat::default();
    // SAFETY: valid fd; both structs have the kernel's layout and outlive the call.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        return Some(st.nr_dirty != 0 || st.nr_writeback != 0);
    }
    if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        NO_CACHESTAT.store(true, Ordering::Relaxed);
    }
    None
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
    rfs::mknodat(
        dir,
        c.as_c_str(),
        ft,
        Mode::from_raw_mode(0o600),
        e.rdev() as _,
    )
    .map_err(errno)
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
    let f = cstr(from)?;
    let t = cstr(to)?;
    rfs::renameat_with(dir, f.as_c_str(), dir, t.as_c_str(), RenameFlags::NOREPLACE).map_err(errno)
}

/// Swaps `a` and `b` atomically: neither name is ever absent.
pub fn exchange_at(dir: BorrowedFd<'_>, a: &[u8], b: &[u8]) -> io::Result<()> {
    let ca = cstr(a)?;
    let cb = cstr(b)?;
    rfs::renameat_with(
        dir,
        ca.as_c_str(),
        dir,
        cb.as_c_str(),
        RenameFlags::EXCHANGE,
    )
    .map_err(errno)
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
/// symlinks. Used for exchanged-out old entries and for leftovers of killed runs.
pub fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    let st = match lstat_at(dir, c.as_c_str()) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if kind_of(st.st_mode as u32) != Kind::Dir {
        return unlink_at(dir, name);
    }
    let sub = rfs::openat(
        dir,
        c.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    for child in list_dir(sub.as_fd())? {
        remove_tree_at(sub.as_fd(), &child)?;
    }
    drop(sub);
    rmdir_at(dir, name)
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

/// Is `name` one of the engine's temporary names (`.jailsync-tmp-<pid>-<n>`)? Only that exact
/// shape counts, so an ordinary file that merely starts with the prefix is synced like any other.
pub fn is_tmp_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
        return false;
    };
    let mut parts = rest.split(|&b| b == b'-');
    let digits =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

pub fn geteuid_is_root() -> bool {
    rustix::process::geteuid().is_root()
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
/// absent, and whoever opens either path sees one whole object or the other.
pub fn exchange_between(
    adir: BorrowedFd<'_>,
    a: &[u8],
    bdir: BorrowedFd<'_>,
    b: &[u8],
) -> io::Result<()> {
    let ca = cstr(a)?;
    let cb = cstr(b)?;
    rfs::renameat_with(
        adir,
        ca.as_c_str(),
        bdir,
        cb.as_c_str(),
        RenameFlags::EXCHANGE,
    )
    .map_err(errno)
}

/// Moves `from` in `fdir` to `to` in `tdir`, failing if `to` exists.
pub fn move_noreplace(
    fdir: BorrowedFd<'_>,
    from: &[u8],
    tdir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    let f = cstr(from)?;
    let t = cstr(to)?;
    rfs::renameat_with(
        fdir,
        f.as_c_str(),
        tdir,
        t.as_c_str(),
        RenameFlags::NOREPLACE,
    )
    .map_err(errno)
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
    let fl = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let Ok(fd) = rfs::openat(dir, c.as_c_str(), fl, Mode::empty()) else {
        return false;
    };
    rfs::ioctl_getflags(&fd)
        .is_ok_and(|f| f.intersects(rfs::IFlags::IMMUTABLE | rfs::IFlags::APPEND))
}
