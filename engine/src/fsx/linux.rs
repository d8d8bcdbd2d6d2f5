//! The Linux implementation of [`Os`]: `openat2`, `renameat2`, and `/proc/self/fd` paths for
//! the calls that have no fd-relative form (xattrs of symlinks, metadata of device nodes).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, RenameFlags, ResolveFlags, CWD};

use super::{
    check_kind, copy_range_rw, cstr, errno, read_xattrs, times_of, walk_nofollow, write_xattrs,
    MetaOpts, Os, XTarget,
};
use crate::entry::{Entry, Xattrs};

pub struct Linux;

static NO_OPENAT2: AtomicBool = AtomicBool::new(false);
static NO_LISTXATTRAT: AtomicBool = AtomicBool::new(false);
static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);

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

/// `listxattrat(2)` (Linux 6.13): lists names relative to a directory fd in one call, where the
/// procfs path costs a magic-link walk per entry. `None` when the kernel lacks it.
fn listxattrat_empty(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<io::Result<bool>> {
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

impl Os for Linux {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn open_beneath(
        &self,
        base: BorrowedFd<'_>,
        rel: &[u8],
        oflags: OFlags,
    ) -> io::Result<OwnedFd> {
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rfs::openat2(base, cstr(rel)?.as_c_str(), oflags, Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
                // openat2 may report a transient race as EAGAIN; the per-component walk is exact.
                Err(rustix::io::Errno::AGAIN) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        walk_nofollow(base, rel, oflags)
    }

    fn read_xattrs_at(&self, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Xattrs>> {
        // Most entries have none: ask cheaply first.
        if let Ok(c) = cstr(name) {
            if let Some(r) = listxattrat_empty(dir, &c) {
                if r? {
                    return Ok(None);
                }
            }
        }
        read_xattrs(XTarget::Path(&proc_path(dir, name), false))
    }

    fn write_xattrs_fd(&self, fd: BorrowedFd<'_>, want: Option<&Xattrs>) -> io::Result<()> {
        // Through the magic link, which also works for an `O_PATH` handle.
        write_xattrs(XTarget::Path(&fd_proc_path(fd), true), want)
    }

    fn write_xattrs_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        want: Option<&Xattrs>,
    ) -> io::Result<()> {
        write_xattrs(XTarget::Path(&proc_path(dir, name), false), want)
    }

    fn set_node_meta(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        e: &Entry,
        o: MetaOpts,
    ) -> io::Result<()> {
        let c = cstr(name)?;
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
                Some(rfs::Uid::from_raw(e.uid())),
                Some(rfs::Gid::from_raw(e.gid())),
                AtFlags::empty(),
            )
            .map_err(errno)?;
        }
        // The mode after the xattrs, as `set_meta_fd` does (an ACL removed leaves its mask).
        if o.xattrs {
            write_xattrs(XTarget::Path(&p, true), e.xattrs())?;
        }
        rfs::chmodat(
            CWD,
            p.as_c_str(),
            Mode::from_raw_mode((e.mode & 0o7777) as _),
            AtFlags::empty(),
        )
        .map_err(errno)?;
        rfs::utimensat(CWD, p.as_c_str(), &times_of(e), AtFlags::empty()).map_err(errno)
    }

    fn exchange(
        &self,
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

    fn exchange_is_atomic(&self) -> bool {
        true
    }

    fn move_noreplace(
        &self,
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

    fn copy_range(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        off: u64,
        len: u64,
    ) -> io::Result<u64> {
        let mut done = 0u64;
        while done < len {
            let mut soff = off + done;
            let mut doff = off + done;
            // At most 16 MiB a call: each call is a step of `progress::work`, and a big file
            // copied in one call would look stuck to a keepalive for as long as it takes.
            let want = (len - done).min(16 << 20) as usize;
            match rfs::copy_file_range(src, Some(&mut soff), dst, Some(&mut doff), want) {
                Ok(0) => break, // source shrank: the caller's after-copy check catches it
                Ok(n) => {
                    done += n as u64;
                    crate::progress::work(1);
                }
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

    fn has_dirty_pages(&self, fd: BorrowedFd<'_>) -> Option<bool> {
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

    fn is_pinned(&self, fd: BorrowedFd<'_>) -> bool {
        rfs::ioctl_getflags(fd)
            .is_ok_and(|f| f.intersects(rfs::IFlags::IMMUTABLE | rfs::IFlags::APPEND))
    }

    fn is_pinned_at(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Option<bool> {
        use rfs::{StatxAttributes as A, StatxFlags};
        let flags = A::IMMUTABLE | A::APPEND;
        // A filesystem that does not report both flags through statx is asked by ioctl.
        let st = rfs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::empty()).ok()?;
        st.stx_attributes_mask
            .contains(flags)
            .then(|| st.stx_attributes.intersects(flags))
    }

    fn read_flags(&self) -> OFlags {
        OFlags::NOATIME
    }

    fn fd_path(&self, fd: BorrowedFd<'_>, _known: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
}
