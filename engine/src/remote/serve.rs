//! What a host serves (`jailsync serve`): the environment the command line gives a session,
//! and the rules checked before anything is read or written: the trees resolved on this host
//! without following a symlink, and `--allow-root`'s confinement.
//!
//! The remote end of `push` is split by job: [`super::wire`] the protocol's frames and
//! messages, [`super::session`] the session loop, [`super::shadow`] the content-addressed
//! shadow (where the content of each file to copy comes from: a live file of this host with
//! the same hash, or a blob received), [`super::sum`] what DONE reports.

use std::fs;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::wire::{self, Open};
use super::{RemoteError, Result};
use crate::error::IoContext;
use crate::paths::{self, Follow};

/// Rolls back the last upgrade or push of a root as `rollback --root` does (root, force, dry
/// run, state dir): exit code and output.
pub type RollbackFn = Box<dyn Fn(&Path, bool, bool, &Path) -> (u8, String)>;

/// What the command line gives a session.
pub struct ServeEnv {
    /// Used when OPEN names no state dir; the only one allowed with `allow_roots`.
    pub default_state_dir: PathBuf,
    /// `serve --allow-root DIR...`: when not empty, every tree a push or rollback names must
    /// be one of these directories or lie below one, and the state dir is pinned to
    /// `default_state_dir` (see [`check_allowed`]). Empty: any absolute root and state dir.
    pub allow_roots: Vec<PathBuf>,
    /// Set by the caller's signal handler (SIGHUP when ssh goes away): stop at a safe point.
    pub stop: Option<Arc<AtomicUsize>>,
    /// `jailsync rollback --root` of the root (run by the CLI): exit code and output.
    pub rollback: RollbackFn,
    /// Records the push as a root-level upgrade (root, source, (rel, dst) of each tree): its id.
    pub record_begin: Option<RecordBeginFn>,
    /// Ends that record (a push that switched nothing is forgotten).
    pub record_end: Option<RecordEndFn>,
    /// This process's CPU seconds so far (DONE reports it from version 5: what a host spent).
    pub cpu_seconds: Option<fn() -> f64>,
}

pub type RecordBeginFn =
    Box<dyn Fn(&Path, &Path, &str, &[(PathBuf, PathBuf)]) -> std::result::Result<u64, String>>;
pub type RecordEndFn = Box<dyn Fn(&Path, &Path, u64) -> std::result::Result<(), String>>;

/// The root a tree's destination belongs to: `dst` without the tree's `rel` components.
pub(super) fn root_of(dst: &Path, rel: &[u8]) -> PathBuf {
    let mut r = dst.to_path_buf();
    for _ in Path::new(std::ffi::OsStr::from_bytes(rel)).components() {
        r.pop();
    }
    r
}

/// The ROOT/REL of each tree, resolved on this host: no symlink followed below ROOT (nor
/// ROOT's own last name), as `upgrade` does.
pub(super) fn resolve(root: &Path, trees: &[Vec<u8>]) -> Result<Vec<PathBuf>> {
    let never = || Follow::Never {
        hint: "push never follows a symlink on the remote",
    };
    let root_c = paths::resolve_dir(root, "root", never())?;
    fs::metadata(&root_c).at(root)?;
    trees
        .iter()
        .map(|rel| {
            let rel = Path::new(std::ffi::OsStr::from_bytes(rel));
            Ok(paths::resolve_beneath(root, &root_c, rel, "tree", never())?)
        })
        .collect()
}

/// `serve --allow-root`: the rule a forced command (`command="jailsync serve --allow-root
/// /usr/pkg ..."` in authorized_keys) relies on, as rsync's `rrsync` and daemon modules do.
/// Every tree (ROOT/REL, resolved as the session will use it: no symlink followed below ROOT)
/// must be an allowed directory or lie below one, compared by identity, not spelling
/// (invariant 10: a bind mount or another spelling of `/etc` is `/etc`); and the state dir is
/// this serve's own, since a state dir chosen by the pusher would let it write records and
/// caches anywhere. Without an allow-list, any absolute root and state dir is served (a key
/// that may run `jailsync serve` may write as root wherever it says).
pub(super) fn check_allowed(
    env: &ServeEnv,
    root: &Path,
    open: &Open,
    dsts: &[PathBuf],
    state_dir: &Path,
) -> Result<()> {
    if env.allow_roots.is_empty() {
        return Ok(());
    }
    let list = env
        .allow_roots
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut allowed = Vec::new();
    for a in &env.allow_roots {
        let c = paths::resolve_dir(a, "allowed root", Follow::Owned)?;
        allowed.push(paths::Loc::of(&c)?);
    }
    for (d, rel) in dsts.iter().zip(&open.trees) {
        let at = paths::Loc::of(d)?;
        if !allowed.iter().any(|a| at.within(a)) {
            return Err(RemoteError::Refused(format!(
                "root {}, tree {} ({}): not inside the roots this host serves \
                 (serve --allow-root {list}): refused before anything was read or written",
                root.display(),
                wire::printable(rel),
                d.display()
            )));
        }
    }
    let own = paths::resolve_dir(&env.default_state_dir, "state dir", Follow::Owned)?;
    let asked = paths::resolve_dir(state_dir, "state dir", Follow::Owned)?;
    if !paths::Loc::of(&asked)?.same(&paths::Loc::of(&own)?) {
        return Err(RemoteError::Refused(format!(
            "state dir {}: this host serves only with its own ({}), being restricted to \
             --allow-root {list}: refused before anything was read or written (push without \
             --remote-state-dir)",
            state_dir.display(),
            own.display()
        )));
    }
    Ok(())
}
