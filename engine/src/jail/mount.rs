//! `jail mount`: every line of `mountpoints`, read-only unless `rw`, only if not mounted yet.
//!
//! Two passes. The first probes every line and refuses the whole request (nothing changed)
//! if any line is unsafe or conflicts with what is mounted. The second acts, parents before
//! children, and records a failure per line instead of stopping, so one bad host path does
//! not leave the rest of the jail unmounted.

use std::path::{Path, PathBuf};

use super::error::{Error, IoAt, Result};
use super::mountinfo::MountTable;
use super::mountpoints::MountPoint;
use super::probe::{probe, Host, Probe, State};
use super::{os, Jail};

/// What `mount` did with one line.
#[derive(Debug)]
pub enum Action {
    Mounted {
        read_only: bool,
    },
    AlreadyMounted {
        read_only: bool,
    },
    /// Was mounted from the right place with the other mode; switched.
    Remounted {
        read_only: bool,
    },
    Linked,
    AlreadyLinked,
    /// Host path missing: reported and skipped.
    Skipped,
    Failed(Error),
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Mounted { .. } => "mounted",
            Action::AlreadyMounted { .. } => "already-mounted",
            Action::Remounted { .. } => "remounted",
            Action::Linked => "linked",
            Action::AlreadyLinked => "already-linked",
            Action::Skipped => "skipped",
            Action::Failed(_) => "failed",
        }
    }
}

#[derive(Debug)]
pub struct Done {
    pub entry: MountPoint,
    pub host: PathBuf,
    pub target: PathBuf,
    pub action: Action,
}

/// Checks every line and returns the probes, parents first; refuses on the first conflict.
pub fn plan(jail: &Jail, host_root: &Path) -> Result<Vec<Probe>> {
    let mps = jail.mountpoints()?;
    let table = MountTable::current()?;
    let mut probes = Vec::with_capacity(mps.entries.len());
    for e in &mps.entries {
        let p = probe(&jail.root, host_root, &mps.file, e, &table)?;
        let conflict = match &p.state {
            State::Foreign { source, .. } => Some(format!(
                "{} is mounted from {source}, not from {}",
                p.target.display(),
                p.host.display()
            )),
            State::Stale { .. } => Some(format!(
                "{} is a stale mount ({} is gone); run `jailsync jail umount` first",
                p.target.display(),
                p.host.display()
            )),
            State::Occupied { why } => Some(format!("{} {why}", p.target.display())),
            // Through a jail symlink, two lines can name one place; mounting both would stack.
            State::HostMissing => None,
            _ => probes
                .iter()
                .find(|q: &&Probe| q.target == p.target && q.state != State::HostMissing)
                .map(|q| {
                    format!(
                        "{} is the same place as line {} ({})",
                        p.target.display(),
                        q.entry.line,
                        q.entry.path.display()
                    )
                }),
        };
        if let Some(why) = conflict {
            return Err(Error::Line {
                file: mps.file.clone(),
                line: e.line,
                why,
            });
        }
        probes.push(p);
    }
    // Parents first, so a child is mounted on top of its parent's mount, not hidden under it.
    probes.sort_by_key(|p| p.target.components().count());
    Ok(probes)
}

/// Mounts the jail. Refusals come back as `Err` before anything changed; per-line failures
/// while mounting come back as [`Action::Failed`].
pub fn mount(jail: &Jail, host_root: &Path) -> Result<Vec<Done>> {
    let probes = plan(jail, host_root)?;
    Ok(probes
        .into_iter()
        .map(|p| {
            let action = apply(jail, &p).unwrap_or_else(Action::Failed);
            Done {
                entry: p.entry,
                host: p.host,
                target: p.target,
                action,
            }
        })
        .collect())
}

fn apply(jail: &Jail, p: &Probe) -> Result<Action> {
    let want_ro = !p.entry.read_write;
    match (&p.state, &p.host_kind) {
        (State::Mounted { read_only }, _) if *read_only == want_ro => Ok(Action::AlreadyMounted {
            read_only: *read_only,
        }),
        (State::Mounted { .. }, _) => {
            os::set_read_only(&p.target, want_ro).at(&p.target)?;
            Ok(Action::Remounted { read_only: want_ro })
        }
        (State::Linked, _) => Ok(Action::AlreadyLinked),
        (State::NotLinked, Host::Link(to)) => {
            make_parents(jail, &p.target)?;
            std::os::unix::fs::symlink(to, &p.target).at(&p.target)?;
            Ok(Action::Linked)
        }
        (State::NotMounted, kind) => {
            use super::mountpoints::Kind;
            make_mount_point(
                jail,
                &p.target,
                *kind == Host::Dir || p.entry.kind.is_virtual(),
            )?;
            let r = match p.entry.kind {
                Kind::Bind => os::bind(&p.host, &p.target, want_ro),
                Kind::Rbind => os::rbind(&p.host, &p.target),
                Kind::Proc => os::mount_fs("proc", &p.target, ""),
                Kind::Tmpfs => os::mount_fs("tmpfs", &p.target, "mode=1777"),
            };
            r.map_err(|e| Error::Io {
                path: p.target.clone(),
                cause: std::io::Error::new(
                    e.kind(),
                    format!(
                        "mounting {} ({}): {e}",
                        p.host.display(),
                        p.entry.kind.name()
                    ),
                ),
            })?;
            Ok(Action::Mounted { read_only: want_ro })
        }
        _ => Ok(Action::Skipped),
    }
}

fn make_mount_point(jail: &Jail, target: &Path, dir: bool) -> Result<()> {
    if target.exists() {
        return Ok(());
    }
    make_parents(jail, target)?;
    if dir {
        std::fs::create_dir(target).at(target)
    } else {
        std::fs::File::create(target).map(drop).at(target)
    }
}

/// Creates the missing parents of `target` (which does not exist), refusing when `target`
/// would land inside a mount under the jail: it would really be created on the host.
fn make_parents(jail: &Jail, target: &Path) -> Result<()> {
    let existing = target
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(&jail.root);
    let table = MountTable::current()?;
    let holder = table
        .mounts
        .iter()
        .filter(|m| existing.starts_with(&m.target))
        .max_by_key(|m| m.target.components().count());
    if let Some(m) = holder.filter(|m| m.target != jail.root && m.target.starts_with(&jail.root)) {
        return Err(Error::refused(
            target,
            format!(
                "would be created inside the mount at {}, that is on the host; create it there",
                m.target.display()
            ),
        ));
    }
    match target.parent() {
        Some(parent) => std::fs::create_dir_all(parent).at(parent),
        None => Ok(()),
    }
}
