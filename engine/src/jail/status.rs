//! `jail status`: each line's state, plus what is mounted below the jail that no line lists.

use std::path::{Path, PathBuf};

use super::error::Result;
use super::mountinfo::MountTable;
use super::probe::{probe, Probe};
use super::Jail;

/// A mount below the jail that no `mountpoints` line accounts for.
#[derive(Debug, Clone)]
pub struct Unlisted {
    pub target: PathBuf,
    pub source: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub entries: Vec<Probe>,
    pub unlisted: Vec<Unlisted>,
}

impl Status {
    /// True when every line is as `mount` would leave it: mounted in the wanted mode, or
    /// linked, or skipped because the host lacks it.
    pub fn complete(&self) -> bool {
        use super::probe::State::*;
        self.entries.iter().all(|p| match p.state {
            Mounted { read_only } => read_only != p.entry.read_write,
            Linked | HostMissing => true,
            _ => false,
        })
    }
}

pub fn status(jail: &Jail, host_root: &Path) -> Result<Status> {
    let mps = jail.mountpoints()?;
    let table = MountTable::current()?;
    let entries = mps
        .entries
        .iter()
        .map(|e| probe(&jail.root, host_root, &mps.file, e, &table))
        .collect::<Result<Vec<_>>>()?;
    let mut unlisted: Vec<Unlisted> = Vec::new();
    for m in table.under(&jail.root) {
        // A recursive bind brings the host's mounts below its path along (dev/pts, dev/shm).
        let in_rbind = |p: &Probe| {
            p.entry.kind == super::mountpoints::Kind::Rbind && m.target.starts_with(&p.target)
        };
        if entries.iter().any(|p| p.target == m.target || in_rbind(p))
            || unlisted.iter().any(|u| u.target == m.target)
        {
            continue;
        }
        unlisted.push(Unlisted {
            target: m.target.clone(),
            source: table.describe_source(m, &jail.root),
            read_only: m.read_only,
        });
    }
    Ok(Status { entries, unlisted })
}
