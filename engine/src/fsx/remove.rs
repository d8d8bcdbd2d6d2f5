//! Removing trees without ever crossing a mount point (invariant 12).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::open::{fstat, kind_of, list_dir, lstat_at, open_root};
use super::{cstr, errno, os, rmdir_at, unlink_at};
use crate::entry::Kind;

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
