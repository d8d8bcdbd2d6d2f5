//! The portable implementation of [`Os`]: what every system other than Linux gets (NetBSD,
//! FreeBSD, illumos, macOS), and what Linux gets with `JAILSYNC_FSX=portable`.
//!
//! Only POSIX `*at` calls on held directory fds, and no `/proc`:
//! - **Confinement**: paths below a root are opened one component at a time with `O_NOFOLLOW`
//!   (a symlink anywhere fails the call, `..` and `.` are refused), where Linux resolves a
//!   whole path in one `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`. Same guarantee, one
//!   call per component.
//! - **xattrs**: a regular file or directory is opened (`O_NOFOLLOW | O_NONBLOCK`, never a
//!   device) and its fd used. A symlink or node has no fd to use, so the calls take its name
//!   relative to the working directory, moved onto the held directory fd (`fchdir`) for the
//!   call, under a lock: a name, never a path. The engine uses absolute paths only, so the
//!   moment the working directory is elsewhere changes nothing for other threads.
//! - **Exchange**: without `RENAME_EXCHANGE` (only Linux has it; macOS's `RENAME_SWAP` is not
//!   wrapped) a swap of `a` and `b` is three renames: `b` to an aside name in `a`'s directory,
//!   `a` to `b`, the aside to `a`. `b` (the live side, in every use of the engine) is absent
//!   for the length of one `rename` call, and `a` for another; a reader never sees a mix of
//!   the two trees, but one opening a path below `b` in that window gets `ENOENT`. A run killed
//!   in that window (power loss, SIGKILL: signals wait for a safe point) leaves `b` absent and
//!   the old tree under the aside name `.jailsync-tmp-PID-N` beside `a`, until an admin moves
//!   it back; see the README's portability section.
//! - **No-replace rename**: `renameat` after checking the target is absent: another writer in
//!   the same directory could slip a name in between (the engine holds the destination's lock,
//!   so only a process outside jailsync could).
//! - No `copy_file_range` (plain `pread`/`pwrite`), no `cachestat` (mapped files are never
//!   trusted from the cache by dirty-page state), no `O_NOATIME`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::{
    copy_range_rw, cstr, errno, kind_of, lstat_at, read_xattrs, times_of, walk_nofollow,
    write_xattrs, MetaOpts, Os, XTarget, TMP_PREFIX,
};
use crate::entry::{Entry, Kind, Xattrs};

pub struct Portable;

/// Held while the working directory is moved onto a directory fd (see the module doc).
static CWD_LOCK: Mutex<()> = Mutex::new(());

/// Runs `f` with the working directory moved to `dir`, so a bare name in it means that name in
/// `dir`; moves back before returning.
fn at_dir<T>(dir: BorrowedFd<'_>, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _g = CWD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    // The way back: the working directory held open, or (not readable to us) its path.
    let saved = match rfs::open(
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(fd),
        Err(_) => Err(std::env::current_dir()?),
    };
    rustix::process::fchdir(dir).map_err(errno)?;
    let r = f();
    // Going on with the working directory elsewhere would be worse than stopping.
    match &saved {
        Ok(fd) => rustix::process::fchdir(fd).expect("returning to the working directory"),
        Err(path) => std::env::set_current_dir(path).expect("returning to the working directory"),
    }
    r
}

/// Opens the regular file or directory `name` (of `kind`) for its fd, checking it is still
/// the inode `ino` (not swapped since the `lstat`).
fn open_same(dir: BorrowedFd<'_>, name: &CStr, kind: Kind, ino: u64) -> io::Result<OwnedFd> {
    let mut fl = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if kind == Kind::Dir {
        fl |= OFlags::DIRECTORY;
    }
    let fd = rfs::openat(dir, name, fl, Mode::empty()).map_err(errno)?;
    if rfs::fstat(&fd).map_err(errno)?.st_ino as u64 != ino {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    }
    Ok(fd)
}

static ASIDE: AtomicU64 = AtomicU64::new(0);

/// A name free in `dir` for an exchange's aside: a temporary name of the engine's shape, far
/// from the numbers the pipelines count with, so every cleanup of leftovers knows it.
fn aside_name(dir: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    loop {
        let n = (1u64 << 50) + ASIDE.fetch_add(1, Ordering::Relaxed);
        let mut name = TMP_PREFIX.to_vec();
        name.extend_from_slice(format!("{}-{n}", std::process::id()).as_bytes());
        match lstat_at(dir, &cstr(&name)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(name),
            Err(e) => return Err(e),
            Ok(_) => continue,
        }
    }
}

fn rename(fdir: BorrowedFd<'_>, from: &[u8], tdir: BorrowedFd<'_>, to: &[u8]) -> io::Result<()> {
    rfs::renameat(fdir, cstr(from)?.as_c_str(), tdir, cstr(to)?.as_c_str()).map_err(errno)
}

impl Os for Portable {
    fn name(&self) -> &'static str {
        "portable"
    }

    fn open_beneath(
        &self,
        base: BorrowedFd<'_>,
        rel: &[u8],
        oflags: OFlags,
    ) -> io::Result<OwnedFd> {
        walk_nofollow(base, rel, oflags)
    }

    fn read_xattrs_at(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Xattrs>> {
        let c = cstr(name)?;
        let st = lstat_at(dir, &c)?;
        let kind = kind_of(st.st_mode as u32);
        if matches!(kind, Kind::File | Kind::Dir) {
            match open_same(dir, &c, kind, st.st_ino as u64) {
                Ok(fd) => return read_xattrs(XTarget::Fd(fd.as_fd())),
                // Unreadable to us (not root): the name still works.
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
                Err(e) => return Err(e),
            }
        }
        at_dir(dir, || read_xattrs(XTarget::Path(&c, false)))
    }

    fn write_xattrs_fd(&self, fd: BorrowedFd<'_>, want: Option<&Xattrs>) -> io::Result<()> {
        write_xattrs(XTarget::Fd(fd), want)
    }

    fn write_xattrs_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        want: Option<&Xattrs>,
    ) -> io::Result<()> {
        let c = cstr(name)?;
        at_dir(dir, || write_xattrs(XTarget::Path(&c, false), want))
    }

    fn set_node_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        e: &Entry,
        o: MetaOpts,
    ) -> io::Result<()> {
        let c = cstr(name)?;
        let st = lstat_at(dir, &c)?;
        if kind_of(st.st_mode as u32) != e.kind {
            return Err(io::Error::other(format!(
                "changed type underneath us (expected {})",
                e.kind.name()
            )));
        }
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
        // The mode after the xattrs, as `set_meta_fd` does (an ACL removed leaves its mask).
        if o.xattrs {
            at_dir(dir, || write_xattrs(XTarget::Path(&c, false), e.xattrs()))?;
        }
        // POSIX fchmodat with AT_SYMLINK_NOFOLLOW (native on the BSDs, macOS and illumos; on
        // Linux, glibc 2.39 uses fchmodat2 and older ones emulate it). rustix refuses the flag
        // on Linux, hence libc.
        // SAFETY: valid directory fd and NUL-terminated name.
        let r = unsafe {
            libc::fchmodat(
                std::os::fd::AsRawFd::as_raw_fd(&dir),
                c.as_ptr(),
                (e.mode & 0o7777) as libc::mode_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        rfs::utimensat(dir, c.as_c_str(), &times_of(e), AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
    }

    fn exchange(
        &self,
        adir: BorrowedFd<'_>,
        a: &[u8],
        bdir: BorrowedFd<'_>,
        b: &[u8],
    ) -> io::Result<()> {
        // Like RENAME_EXCHANGE, both must exist: checked before anything moves.
        lstat_at(adir, &cstr(a)?)?;
        lstat_at(bdir, &cstr(b)?)?;
        let aside = aside_name(adir)?;
        rename(bdir, b, adir, &aside)?;
        // `b` is absent from here…
        if let Err(e) = rename(adir, a, bdir, b) {
            // …and back: nothing swapped.
            rename(adir, &aside, bdir, b)?;
            return Err(e);
        }
        // …to here; `a` is absent until the next call returns.
        rename(adir, &aside, adir, a)
    }

    fn exchange_is_atomic(&self) -> bool {
        false
    }

    fn move_noreplace(
        &self,
        fdir: BorrowedFd<'_>,
        from: &[u8],
        tdir: BorrowedFd<'_>,
        to: &[u8],
    ) -> io::Result<()> {
        match lstat_at(tdir, &cstr(to)?) {
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        rename(fdir, from, tdir, to)
    }

    fn copy_range(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        off: u64,
        len: u64,
    ) -> io::Result<u64> {
        copy_range_rw(src, dst, off, len)
    }

    fn has_dirty_pages(&self, _fd: BorrowedFd<'_>) -> Option<bool> {
        None
    }

    fn is_pinned(&self, fd: BorrowedFd<'_>) -> bool {
        pinned(fd)
    }

    fn read_flags(&self) -> OFlags {
        OFlags::empty()
    }

    fn fd_path(&self, _fd: BorrowedFd<'_>, known: &Path) -> PathBuf {
        known.to_path_buf()
    }
}

/// Immutable or append-only: the inode flags ioctl on Linux (no other call tells), `st_flags`
/// (chflags) on the BSDs and macOS; systems with neither pin nothing.
#[cfg(target_os = "linux")]
fn pinned(fd: BorrowedFd<'_>) -> bool {
    rfs::ioctl_getflags(fd)
        .is_ok_and(|f| f.intersects(rfs::IFlags::IMMUTABLE | rfs::IFlags::APPEND))
}

#[cfg(any(
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_vendor = "apple"
))]
fn pinned(fd: BorrowedFd<'_>) -> bool {
    let mask = (libc::UF_IMMUTABLE | libc::UF_APPEND | libc::SF_IMMUTABLE | libc::SF_APPEND) as u64;
    rfs::fstat(fd).is_ok_and(|st| st.st_flags as u64 & mask != 0)
}

#[cfg(not(any(
    target_os = "linux",
    target_os = "freebsd",
    target_os = "netbsd",
    target_os = "openbsd",
    target_os = "dragonfly",
    target_vendor = "apple"
)))]
fn pinned(_fd: BorrowedFd<'_>) -> bool {
    false
}
