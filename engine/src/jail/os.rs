//! The OS layer: the few calls that differ between Linux and the BSDs.
//!
//! Linux has bind mounts (`mount --bind`), which ignore the read-only flag on the first
//! call, so a read-only bind is two calls: bind, then `remount,bind,ro` (as mksandbox does).
//! NetBSD has null mounts (`mount_null -o ro`), done in one call; that side shells out to
//! the system tools, which already know the `struct null_args` layout, and has no mount table
//! reader yet (it would use getmntinfo(3)), so it is a place to grow, not a finished port.
//!
//! The Linux side uses rustix rather than nix: the engine already depends on it for
//! `openat2`, and it covers mount, umount2, fstatvfs and chroot without `unsafe` here.

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
    use rustix::fs::{
        fstat, fstatvfs, openat, openat2, FileType, Mode, OFlags, ResolveFlags,
        StatVfsMountFlags as Sv, CWD,
    };
    use rustix::io::Errno;
    use rustix::mount::{mount_bind, mount_remount, unmount as umount2, MountFlags, UnmountFlags};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::PathBuf;

    /// A directory (or file) opened without following any symlink on its way, named by its
    /// `/proc/self/fd` link. mount(2) follows symlinks in the paths it is given, so a link
    /// swapped into the jail between our check and the call could redirect a mount onto the
    /// host; the magic link instead resolves to exactly what was opened.
    struct Pinned {
        _fd: OwnedFd,
        path: PathBuf,
        flags: Sv,
    }

    fn pin(path: &Path) -> io::Result<Pinned> {
        let how = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        let fd = match openat2(CWD, path, how, Mode::empty(), ResolveFlags::NO_SYMLINKS) {
            // Kernels before 5.6: only the last component can be checked.
            Err(Errno::NOSYS) => openat(CWD, path, how, Mode::empty())?,
            r => r?,
        };
        // O_NOFOLLOW with O_PATH opens a final symlink itself rather than failing.
        if FileType::from_raw_mode(fstat(&fd)?.st_mode) == FileType::Symlink {
            return Err(Errno::LOOP.into());
        }
        let flags = fstatvfs(&fd)?.f_flag;
        Ok(Pinned {
            path: PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            _fd: fd,
            flags,
        })
    }

    pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
        mount_bind(source, &pin(target)?.path)?;
        if read_only {
            if let Err(e) = set_read_only(target, true) {
                // Never leave a read-write view of something asked to be read-only.
                let _ = umount2(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
                return Err(e);
            }
        }
        Ok(())
    }

    pub fn rbind(source: &Path, target: &Path) -> io::Result<()> {
        use rustix::mount::{mount_bind_recursive, mount_change, MountPropagationFlags};
        let t = pin(target)?;
        mount_bind_recursive(source, &t.path)?;
        // A recursive bind of a shared mount joins its peer group: unmounting the jail's
        // `dev/pts` would then unmount the host's. As a slave it only receives events.
        let t = pin(target)?;
        if let Err(e) = mount_change(
            &t.path,
            MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
        ) {
            let _ = umount2(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW);
            return Err(e.into());
        }
        Ok(())
    }

    pub fn mount_fs(fstype: &str, target: &Path, data: &str) -> io::Result<()> {
        let t = pin(target)?;
        let data = std::ffi::CString::new(data).map_err(io::Error::other)?;
        let flags = MountFlags::NOSUID | MountFlags::NODEV;
        let flags = if fstype == "proc" {
            flags | MountFlags::NOEXEC
        } else {
            flags
        };
        Ok(rustix::mount::mount(
            fstype,
            &t.path,
            fstype,
            flags,
            Some(data.as_c_str()),
        )?)
    }

    pub fn set_read_only(target: &Path, read_only: bool) -> io::Result<()> {
        // Pinned after the bind, so the handle is the new mount's root, not the directory
        // under it (remounting that would change the jail's own filesystem).
        let t = pin(target)?;
        // A bind remount replaces all per-mount flags; keep the ones the mount already has
        // (nosuid, nodev, …), which the kernel also requires when they are locked.
        let mut flags = MountFlags::BIND;
        for (sv, ms) in [
            (Sv::NOSUID, MountFlags::NOSUID),
            (Sv::NODEV, MountFlags::NODEV),
            (Sv::NOEXEC, MountFlags::NOEXEC),
            (Sv::NOATIME, MountFlags::NOATIME),
            (Sv::NODIRATIME, MountFlags::NODIRATIME),
            (Sv::RELATIME, MountFlags::RELATIME),
        ] {
            if t.flags.contains(sv) {
                flags |= ms;
            }
        }
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        Ok(mount_remount(&t.path, flags, "")?)
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

    pub fn rbind(_source: &Path, target: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{}: recursive binds are Linux-only", target.display()),
        ))
    }

    pub fn mount_fs(fstype: &str, target: &Path, _data: &str) -> io::Result<()> {
        let t = if fstype == "proc" { "procfs" } else { fstype };
        run(Command::new("mount").args(["-t", t, t]).arg(target))
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

/// Binds `source` and every mount below it on `target`, read-write, as a slave (Linux).
pub fn rbind(source: &Path, target: &Path) -> io::Result<()> {
    imp::rbind(source, target)
}

/// Mounts a fresh filesystem of `fstype` (`proc`, `tmpfs`) on `target`, nosuid and nodev.
pub fn mount_fs(fstype: &str, target: &Path, data: &str) -> io::Result<()> {
    imp::mount_fs(fstype, target, data)
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
