//! Copying a file's data (holes kept, `copy_file_range` where there is one) and the page
//! cache hints and questions that go with reading it.

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs as rfs;

use super::{errno, sys};

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

/// Whether any page of the open file is dirty or under writeback (`cachestat(2)`, Linux 6.5);
/// `None` when the kernel cannot tell. A page can be written through a shared mapping without
/// a fault — and so without moving mtime — only while it is dirty: once written back it is
/// write-protected again, and the next write faults and updates the times.
pub fn has_dirty_pages(fd: BorrowedFd<'_>) -> Option<bool> {
    sys().has_dirty_pages(fd)
}
