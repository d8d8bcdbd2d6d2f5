//! What one `mountpoints` line looks like right now, on the host and in the jail.
//! `mount` acts on it, `status` reports it; both share this one reading.

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::confine;
use super::error::{Error, IoAt, Result};
use super::mountinfo::MountTable;
use super::mountpoints::MountPoint;

/// What the host has at `HOST/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Missing,
    /// A symlink, recreated in the jail rather than mounted (e.g. merged-/usr `bin -> usr/bin`).
    Link(PathBuf),
    Dir,
    File,
}

/// The state of one mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Mounted from the right host path.
    Mounted {
        read_only: bool,
    },
    NotMounted,
    /// Something else is mounted there; `source` names it.
    Foreign {
        source: String,
        read_only: bool,
    },
    /// Mounted, but the host path was removed (or replaced) since.
    Stale {
        read_only: bool,
    },
    /// The jail holds the same symlink as the host.
    Linked,
    /// The host path is a symlink that the jail lacks.
    NotLinked,
    /// The jail holds something else where the mount point or link must go.
    Occupied {
        why: String,
    },
    /// Nothing on the host and nothing mounted: skipped.
    HostMissing,
}

impl State {
    /// Short, stable name (used in JSON and human output).
    pub fn name(&self) -> &'static str {
        match self {
            State::Mounted { .. } => "mounted",
            State::NotMounted => "not-mounted",
            State::Foreign { .. } => "foreign",
            State::Stale { .. } => "stale",
            State::Linked => "linked",
            State::NotLinked => "not-linked",
            State::Occupied { .. } => "occupied",
            State::HostMissing => "host-missing",
        }
    }

    /// Read-only flag of whatever is mounted there, if anything.
    pub fn read_only(&self) -> Option<bool> {
        match self {
            State::Mounted { read_only }
            | State::Foreign { read_only, .. }
            | State::Stale { read_only } => Some(*read_only),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub entry: MountPoint,
    /// `HOST_ROOT/PATH`.
    pub host: PathBuf,
    /// Where it goes in the jail, with every symlink but the last component resolved.
    pub target: PathBuf,
    pub host_kind: Host,
    pub state: State,
    /// Mounts hidden under the visible one at `target` (the seed's mkjail, run twice, stacks
    /// a second mount on the first; `umount` removes them all).
    pub stacked: usize,
}

/// Reads the state of `entry`. Refuses (with the line) an entry whose target would leave
/// the jail through a symlink, or whose host path lies inside the jail.
pub fn probe(
    jail: &Path,
    host_root: &Path,
    file: &Path,
    entry: &MountPoint,
    table: &MountTable,
) -> Result<Probe> {
    let refuse = |why: String| Error::Line {
        file: file.to_path_buf(),
        line: entry.line,
        why: format!("{}: {why}", entry.path.display()),
    };
    let host = host_root.join(&entry.path);
    let target = confine::resolve(jail, &entry.path).map_err(refuse)?;
    if entry.kind.is_virtual() {
        return Ok(probe_virtual(entry, host, target, table));
    }

    let host_kind = match std::fs::symlink_metadata(&host) {
        Err(e) if e.kind() == ErrorKind::NotFound => Host::Missing,
        Err(e) => return Err(Error::io(&host, e)),
        Ok(m) if m.is_symlink() => Host::Link(std::fs::read_link(&host).at(&host)?),
        Ok(m) => {
            let real = host.canonicalize().at(&host)?;
            if real.starts_with(jail) {
                return Err(refuse(format!(
                    "host path {} is inside the jail",
                    real.display()
                )));
            }
            if m.is_dir() {
                Host::Dir
            } else {
                Host::File
            }
        }
    };

    let mounted = table.at(&target);
    let in_jail = std::fs::symlink_metadata(&target);
    let state = match (&host_kind, mounted) {
        (Host::Missing, Some(m)) => State::Stale {
            read_only: m.read_only,
        },
        (Host::Missing, None) => State::HostMissing,
        (Host::Link(want), _) => match in_jail {
            Err(e) if e.kind() == ErrorKind::NotFound => State::NotLinked,
            Err(e) => return Err(Error::io(&target, e)),
            Ok(m) if m.is_symlink() && std::fs::read_link(&target).at(&target)? == *want => {
                State::Linked
            }
            Ok(_) => State::Occupied {
                why: format!("is not a symlink to {}", want.display()),
            },
        },
        (_, Some(m)) if m.source_deleted() => State::Stale {
            read_only: m.read_only,
        },
        (_, Some(m)) => {
            if same_file(&target, &host)? {
                State::Mounted {
                    read_only: m.read_only,
                }
            } else {
                State::Foreign {
                    source: table.describe_source(m, jail),
                    read_only: m.read_only,
                }
            }
        }
        (kind, None) => match in_jail {
            Err(e) if e.kind() == ErrorKind::NotFound => State::NotMounted,
            Err(e) => return Err(Error::io(&target, e)),
            Ok(m) if m.is_symlink() => State::Occupied {
                why: "is a symlink in the jail".into(),
            },
            Ok(m) if m.is_dir() == (*kind == Host::Dir) => State::NotMounted,
            Ok(m) => State::Occupied {
                why: format!(
                    "is a {} in the jail but a {} on the host",
                    if m.is_dir() { "directory" } else { "file" },
                    if *kind == Host::Dir {
                        "directory"
                    } else {
                        "file"
                    },
                ),
            },
        },
    };
    let stacked = table
        .mounts
        .iter()
        .filter(|m| m.target == target)
        .count()
        .saturating_sub(1);
    Ok(Probe {
        entry: entry.clone(),
        host,
        target,
        host_kind,
        state,
        stacked,
    })
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let ma = std::fs::metadata(a).at(a)?;
    let mb = std::fs::metadata(b).at(b)?;
    Ok(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

/// A `proc` or `tmpfs` line: no host path; mounted when a filesystem of that type is there.
fn probe_virtual(entry: &MountPoint, host: PathBuf, target: PathBuf, table: &MountTable) -> Probe {
    let want = match entry.kind {
        super::mountpoints::Kind::Proc => "proc",
        _ => "tmpfs",
    };
    let state = match table.at(&target) {
        Some(m) if m.fstype == want => State::Mounted {
            read_only: m.read_only,
        },
        Some(m) => State::Foreign {
            source: format!("{} ({})", m.source, m.fstype),
            read_only: m.read_only,
        },
        None => match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_symlink() => State::Occupied {
                why: "is a symlink in the jail".into(),
            },
            Ok(m) if !m.is_dir() => State::Occupied {
                why: "is a file in the jail".into(),
            },
            _ => State::NotMounted,
        },
    };
    let stacked = table
        .mounts
        .iter()
        .filter(|m| m.target == target)
        .count()
        .saturating_sub(1);
    Probe {
        entry: entry.clone(),
        host,
        target,
        host_kind: Host::Dir,
        state,
        stacked,
    }
}
