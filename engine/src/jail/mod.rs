//! Jail management: the seed's mkjail/umkjail, done right.
//!
//! A jail is a directory holding a `.jail` marker (its first line is put in front of the
//! shell prompt inside the chroot) and a `mountpoints` file (host paths to mount into it).
//!
//! - [`init`] makes the working directories and those two files;
//! - [`mount()`] mounts each line read-only (or `rw`), recreates host symlinks as symlinks,
//!   and leaves alone what is already mounted from the right place — the mount table
//!   ([`mountinfo`]) is read first, which is what the seed's author asked for;
//! - [`umount()`] unmounts everything below the jail, deepest first;
//! - [`status()`] reports each line and any mount no line lists;
//! - [`enter()`] chroots and runs a shell or a command.
//!
//! Safety rests on two checks done before anything changes: lines are lexically confined
//! ([`mountpoints`]), and their targets are resolved on disk without following a symlink
//! out of the jail ([`confine`]). The mount calls themselves live in [`os`], the one place
//! that differs between Linux (bind mounts) and NetBSD (null mounts).

pub mod confine;
pub mod enter;
pub mod error;
pub mod init;
pub mod mount;
pub mod mountinfo;
pub mod mountpoints;
pub mod os;
pub mod probe;
pub mod remove;
pub mod status;
pub mod umount;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub use enter::enter;
pub use error::{Error, Result};
pub use init::{init, InitLayout, InitOptions, Initialized, DEFAULT_MARKER};
pub use mount::{mount, Action, Done};
pub use mountpoints::{MountPoint, Mountpoints};
pub use probe::{Host, Probe, State};
pub use remove::remove;
pub use status::{status, Status, Unlisted};
pub use umount::{umount, Outcome, Unmounted};

use error::IoAt;

pub const MARKER_FILE: &str = ".jail";
pub const MOUNTPOINTS_FILE: &str = "mountpoints";

/// The seed's default jail, used when invoked as `mkjail`/`umkjail` without `$JAIL`.
pub const DEFAULT_JAIL: &str = "/usr/pkg_jail";

/// An existing jail directory, by its canonical path (the form the mount table uses).
#[derive(Debug, Clone)]
pub struct Jail {
    pub root: PathBuf,
}

impl Jail {
    /// Opens `path`, refusing `/` and anything that is not a directory.
    pub fn open(path: &Path) -> Result<Self> {
        let root = path.canonicalize().at(path)?;
        if root == Path::new("/") {
            return Err(Error::refused(path, "refusing to use / as a jail"));
        }
        if !root.is_dir() {
            return Err(Error::refused(path, "not a directory"));
        }
        Ok(Jail { root })
    }

    pub fn mountpoints_file(&self) -> PathBuf {
        self.root.join(MOUNTPOINTS_FILE)
    }

    pub fn mountpoints(&self) -> Result<Mountpoints> {
        Mountpoints::read(&self.mountpoints_file())
    }

    /// First line of `.jail`; the default marker when the file is missing (hand-made jails).
    pub fn marker(&self) -> Result<String> {
        let f = self.root.join(MARKER_FILE);
        match std::fs::read_to_string(&f) {
            Ok(s) => Ok(s.lines().next().unwrap_or("").trim().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(DEFAULT_MARKER.to_string()),
            Err(e) => Err(Error::io(f, e)),
        }
    }
}
