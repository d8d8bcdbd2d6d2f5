//! `jailsync procs [ROOT]`: the restart report on demand (see `jailsync_engine::procs`).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::args::{exit, Global};

#[derive(Args, Debug)]
pub struct ProcsCmd {
    /// A live tree to look at, with its kept generations (default: every tree synced, from
    /// the state dir). Exit 1 when some process needs a restart.
    pub root: Option<PathBuf>,
}

/// The destinations synced with this state dir (a record with a stat cache: the others are
/// only the locks of the directories above a tree), below `under` (all when None).
fn synced_trees(g: &Global, under: Option<&std::path::Path>) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(g.state_dir.join("trees")) else {
        return out;
    };
    for d in rd.flatten() {
        if !d.path().join("cache").exists() {
            continue;
        }
        let Ok(p) = std::fs::read(d.path().join("path")) else {
            continue;
        };
        let p = PathBuf::from(std::ffi::OsString::from_vec(p));
        if under.is_none_or(|u| p.starts_with(u)) {
            out.push(p);
        }
    }
    out.sort();
    out
}

pub fn run_procs(c: ProcsCmd, g: &Global) -> Result<u8> {
    let root = match &c.root {
        Some(r) => Some(jailsync_engine::paths::canonical_tree(r).with_context(|| {
            format!(
                "{}: not a tree to look at (give a synced destination)",
                r.display()
            )
        })?),
        None => None,
    };
    let mut trees = synced_trees(g, root.as_deref());
    if let Some(r) = &root {
        if !trees.contains(r) {
            trees.push(r.clone());
        }
    }
    if !jailsync_engine::procs::SUPPORTED {
        eprintln!("jailsync: procs: not supported on this system (reads Linux's /proc/PID/maps)");
        return Ok(exit::FATAL);
    }
    let procs = jailsync_engine::procs::restart_report(&trees);
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    crate::output::print_procs(&mut out, g, &procs)?;
    out.flush()?;
    if procs.is_empty() && !g.quiet && !g.json {
        eprintln!(
            "jailsync: no process uses an old release of {} tree(s)",
            trees.len()
        );
    }
    Ok(if procs.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}
