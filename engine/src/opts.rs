//! What a run is asked to do, and the thread pools it does it with: given by the command,
//! read by every step.

use std::path::Path;
use std::sync::atomic::AtomicUsize;

use crate::error::{Error, Result};
use crate::fsx;
use crate::scan::Excludes;

#[derive(Clone)]
pub struct SyncOpts {
    pub excludes: Excludes,
    /// Ignore cached hashes: hash every file that needs comparing.
    pub checksum: bool,
    pub dry_run: bool,
    pub fsync: bool,
    /// Workers for walking and staging; 0 picks a default.
    pub threads: usize,
    /// Set owners (only possible as root).
    pub owner: bool,
    pub xattrs: bool,
    /// Record a rollback generation before committing.
    pub rollback: bool,
    /// Rollback generations to keep per destination.
    pub keep: usize,
    /// The `--exclude` patterns as given (recorded with a rollback generation).
    pub exclude_patterns: Vec<String>,
    /// Set (to the signal's number) by the caller's signal handler: the run stops at the next
    /// safe point — never between the switches of a run.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    /// Same size and mtime (ns) means same content, unread (see [`crate::quick`]).
    pub quick: bool,
    /// The source is private to this run and on the destination's filesystem (`push`'s
    /// shadow), its files made by this run with their entries' metadata already set: they are
    /// moved into the next tree as they are, not copied nor set again, and its stat cache is
    /// not written (the source goes when the run ends).
    pub move_source: bool,
    /// How a destination is switched (`--switch`); `None`: as it is now.
    pub switch: Option<SwitchBy>,
}

/// How the admin asked a destination to be switched (`--switch`); unasked, a destination
/// keeps what it is (a directory is exchanged, a switch link is renamed over).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchBy {
    /// The tree is a directory, exchanged with the next release.
    Exchange,
    /// The tree is a symlink to a release in its home, replaced by one rename.
    Link,
}

impl SyncOpts {
    /// The signal that asked to stop, if one did.
    pub fn stop_signal(&self) -> Option<i32> {
        stop_signal(self.stop.as_deref())
    }

    pub(crate) fn check_stop(&self, path: &Path, when: &str) -> Result<()> {
        check_stop(self.stop.as_deref(), path, when)
    }
}

/// The signal that asked to stop, if one did (the flag a caller's signal handler sets).
fn stop_signal(stop: Option<&AtomicUsize>) -> Option<i32> {
    let n = stop?.load(std::sync::atomic::Ordering::Relaxed);
    (n != 0).then_some(n as i32)
}

/// Stops at a safe point (`when` says which, and what was left) if a signal asked to: the
/// check of [`SyncOpts::check_stop`], for a run (a rollback) that has a flag but no options.
pub(crate) fn check_stop(stop: Option<&AtomicUsize>, path: &Path, when: &str) -> Result<()> {
    match stop_signal(stop) {
        Some(signal) => Err(Error::Stopped {
            path: path.into(),
            signal,
            when: when.into(),
        }),
        None => Ok(()),
    }
}

impl Default for SyncOpts {
    fn default() -> Self {
        SyncOpts {
            excludes: Excludes::default(),
            checksum: false,
            dry_run: false,
            fsync: false,
            threads: 0,
            owner: fsx::geteuid_is_root(),
            xattrs: true,
            rollback: true,
            keep: 3,
            exclude_patterns: Vec::new(),
            stop: None,
            quick: false,
            move_source: false,
            switch: None,
        }
    }
}

/// Thread pools, made once per process. Walking and hashing use different pools so a burst of
/// big files to hash cannot starve the walk; the staging workers outnumber the cores because
/// creating inodes mostly waits in the kernel.
pub struct Pools {
    pub walk: rayon::ThreadPool,
    pub work: rayon::ThreadPool,
}

impl Pools {
    pub fn new(threads: usize) -> Pools {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let n = if threads == 0 {
            (cores * 2).clamp(4, 16)
        } else {
            threads
        };
        let mk = |n: usize, name: &'static str| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(move |i| format!("jailsync-{name}-{i}"))
                .build()
                .expect("thread pool")
        };
        Pools {
            walk: mk(n, "walk"),
            work: mk(n, "work"),
        }
    }
}
