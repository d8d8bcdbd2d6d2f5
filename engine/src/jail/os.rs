//! The OS layer: the few calls that differ between Linux and the BSDs.
//!
//! Linux has bind mounts (`mount --bind`), which ignore the read-only flag on the first
//! call, so a read-only bind is two calls: bind, then `remount,bind,ro` (as mksandbox does).
//! NetBSD has null mounts (`mount_null -o ro`), done in one call; that side shells out to
//! the system tools, which already know the `struct null_args` layout, and has no mount table
//! reader yet (it would use getmntinfo(3)), so it is a place to grow, not a finished port.

use std::io;
use std::path::Path;

/// How to unmount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmount {
    /// Fails with `EBUSY` while in use.
    Normal,
    /// Detaches now; the kernel frees the mount when its last user goes (Linux `MNT_DETACH`).
    Detach,
}

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use rustix::fs::{statvfs, StatVfsMountFlags as Sv};
    use rustix::mount::{mount_bind, mount_remount, unmount as umount2, MountFlags, UnmountFlags};

    pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        mount_bind(source, target)?;
        if read_only {
            if let Err(e) = set_read_only(target, true) {
                // Never leave a read-write view of something asked to be read-only.
                let _ = umount2(target, UnmountFlags::DETACH);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn set_read_only(target: &Path, read_only: bool) -> io::Result<()> {
        // A bind remount replaces all per-mount flags; keep the ones the mount already has
        // (nosuid, nodev, …), which the kernel also requires when they are locked.
        let have = statvfs(target)?.f_flag;
        let mut flags = MountFlags::BIND;
        for (sv, ms) in [
            (Sv::NOSUID, MountFlags::NOSUID),
            (Sv::NODEV, MountFlags::NODEV),
            (Sv::NOEXEC, MountFlags::NOEXEC),
            (Sv::NOATIME, MountFlags::NOATIME),
            (Sv::NODIRATIME, MountFlags::NODIRATIME),
            (Sv::RELATIME, MountFlags::RELATIME),
        ] {
            if have.contains(sv) {
                flags |= ms;
            }
        }
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        Ok(mount_remount(target, flags, "")?)
    }

    pub fn unmount(target: &Path, how: Unmount) -> io::Result<()> {
        let flags = match how {
            Unmount::Normal => UnmountFlags::empty(),
            Unmount::Detach => UnmountFlags::DETACH,
        };
        // NOFOLLOW: a symlink planted at a mount point must not redirect the unmount.
        Ok(umount2(target, flags | UnmountFlags::NOFOLLOW)?)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;
    use std::process::Command;

    fn run(cmd: &mut Command) -> io::Result<()> {
        let out = cmd.output()?;
        if out.status.success() {
            return Ok(());
        }
        let msg = String::from_utf8_lossy(&out.stderr);
        Err(io::Error::other(msg.trim().to_string()))
    }

    pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        let mode = if read_only { "ro" } else { "rw" };
        run(Command::new("mount_null")
            .args(["-o", mode])
            .arg(source)
            .arg(target))
    }

    pub fn set_read_only(target: &Path, read_only: bool) -> io::Result<()> {
        let mode = if read_only { "update,ro" } else { "update,rw" };
        run(Command::new("mount").args(["-o", mode]).arg(target))
    }

    pub fn unmount(target: &Path, how: Unmount) -> io::Result<()> {
        let mut cmd = Command::new("umount");
        if how == Unmount::Detach {
            cmd.arg("-f");
        }
        run(cmd.arg(target))
    }
}

/// Mounts `source` on `target` (bind on Linux, null mount on NetBSD), read-only if asked.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    imp::bind(source, target, read_only)
}

/// Switches an existing bind mount between read-only and read-write.
pub fn set_read_only(target: &Path, read_only: bool) -> io::Result<()> {
    imp::set_read_only(target, read_only)
}

pub fn unmount(target: &Path, how: Unmount) -> io::Result<()> {
    imp::unmount(target, how)
}

/// Changes this process's root to `dir` and its working directory to the new `/`.
pub fn chroot(dir: &Path) -> io::Result<()> {
    rustix::process::chroot(dir)?;
    Ok(rustix::process::chdir("/")?)
}
