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
//!
//! The calls are filed by job in private submodules — `open` (opening and walking, looking at
//! entries), `meta` (times, owner, xattrs, ACLs, capabilities, private directories), `copy`
//! (file data), `remove` (removal that never crosses a mount), `write` (atomic whole-file
//! writes) — and re-exported here, so every caller names them `fsx::name`. The OS verbs that
//! make, rename, exchange and unlink names stay in this file.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

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

use crate::entry::{Entry, Kind, Xattrs};
pub use crate::names::{is_tmp_name, STORE_NAME, TMP_PREFIX};

mod copy;
mod meta;
mod open;
mod remove;
mod write;

pub(crate) use copy::copy_range_rw;
pub use copy::{copy_data, has_dirty_pages, read_hints};
pub(crate) use meta::{check_kind, read_xattrs, times_of, write_xattrs, XTarget};
pub use meta::{
    chmod_fd, file_capability, is_pinned_at, makes_bare, open_private_dir, read_xattrs_at,
    set_file_capability, set_meta_at, set_meta_fd, set_meta_fresh_at, set_meta_fresh_fd, set_mtime,
    set_times_at, strip_acls, MetaOpts,
};
pub(crate) use open::walk_nofollow;
pub use open::{
    create_excl_at, entry_from_stat, fstat, kind_of, list_dir, lstat_at, open_dir_beneath,
    open_read_at, open_root, open_root_nofollow, open_subdir, open_tree, open_tree_at,
    read_link_at, switch_link_at,
};
pub use remove::{
    is_mount_root_fd, mount_in_the_way, remove_contents, remove_tree, remove_tree_at,
};
pub use write::{write_file_at, write_with};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

pub(crate) fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))
}

pub use crate::entry::split_parent;

pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    rfs::fsync(fd).map_err(errno)
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

pub fn unlink_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    rfs::unlinkat(dir, c.as_c_str(), AtFlags::empty()).map_err(errno)
}

pub fn rmdir_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let c = cstr(name)?;
    rfs::unlinkat(dir, c.as_c_str(), AtFlags::REMOVEDIR).map_err(errno)
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

/// Swaps `a` in `adir` and `b` in `bdir` atomically (both on one mount; `adir` and `bdir` may
/// be the same directory): neither name is ever absent, and whoever opens either path sees
/// one whole object or the other (where [`exchange_is_atomic`]; elsewhere see [`portable`]).
/// The one exchange of the engine.
pub fn exchange_between(
    adir: BorrowedFd<'_>,
    a: &[u8],
    bdir: BorrowedFd<'_>,
    b: &[u8],
) -> io::Result<()> {
    sys().exchange(adir, a, bdir, b)
}

/// Moves (or, in one directory, publishes) `from` in `fdir` as `to` in `tdir`, failing if `to`
/// exists. The one no-replace rename of the engine.
pub fn move_noreplace(
    fdir: BorrowedFd<'_>,
    from: &[u8],
    tdir: BorrowedFd<'_>,
    to: &[u8],
) -> io::Result<()> {
    sys().move_noreplace(fdir, from, tdir, to)
}

/// The same checks over every implementation this system has (xcp's style): each must keep
/// the guarantees the public functions document, whichever the environment selects.
#[cfg(test)]
mod both;
