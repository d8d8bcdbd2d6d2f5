//! `sync`: make DST identical to SRC.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use jailsync_engine::sync;

use crate::args::{Global, SyncArgs};
use crate::pipeline::{run_pairs, Hooks};
use crate::rails::check_parent;

#[derive(Args, Debug)]
pub struct SyncCmd {
    /// The tree to copy from (e.g. the jail's usr/pkg). `SRC` and `SRC/` mean the same: DST
    /// is made identical to SRC, like `rsync -a --delete SRC/ DST/`. rsync reads `SRC` without
    /// the slash as "SRC into DST" (DST/NAME); where that reading is likely (the names differ
    /// and DST holds an entry named as SRC that SRC lacks, or is named as SRC's parent: `sync
    /// JAIL/usr/pkg /usr`) the run is refused, naming both commands: write `SRC/` to make DST
    /// identical, `DST/NAME` to copy into it.
    pub src: PathBuf,
    /// The tree to make identical to SRC (created if missing; its parent must exist).
    pub dst: PathBuf,
    /// Create DST's missing parent directories too (without it a DST whose parent does not
    /// exist is refused: likely a typo).
    #[arg(long)]
    pub mkpath: bool,
    #[command(flatten)]
    pub args: SyncArgs,
}

pub fn run_sync(c: SyncCmd, g: &Global) -> Result<u8> {
    // Canonical paths: state (caches, locks, rollback) is keyed by them.
    let (s, d) = sync::check_pair(&c.src, &c.dst, c.args.follow_dst)?;
    check_rsync_habit(&c.src, &s, &c.dst, &d)?;
    check_parent(&c.dst, c.mkpath)?;
    let ran = run_pairs(vec![(s, d, Vec::new())], &c.args, g, &Hooks::default())?;
    Ok(ran.finish(g))
}

/// Refuses the one spelling whose meaning differs between rsync and us when rsync's is the
/// likely one. `rsync -a /jail/usr/pkg /usr` (the seed's own line) copies `pkg` *into* `/usr`;
/// `sync` makes DST identical to SRC, so the same words would delete all of `/usr` but `pkg`'s
/// content, other destinations' homes with it. Tests, scripts and the README use `sync SRC DST`
/// with differing names for the identical-tree meaning, so a differing name alone is not
/// refused; what marks rsync's reading is SRC without a trailing slash, a different name, and
/// DST already holding an entry of SRC's name (SRC holding none) or named as SRC's parent. `SRC/` (or `SRC/.`)
/// always means "identical", as in rsync. `src` and `dst` as the user spelled them, `src_c`
/// and `dst_c` resolved.
fn check_rsync_habit(src: &Path, src_c: &Path, dst: &Path, dst_c: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let spelled = src.as_os_str().as_bytes();
    let last = src.components().next_back();
    if spelled.ends_with(b"/")
        || spelled.ends_with(b"/.")
        || !matches!(last, Some(std::path::Component::Normal(_)))
    {
        return Ok(());
    }
    // The name rsync would give the copy: SRC's as spelled (a symlink is not followed there).
    let (Some(name), Some(dname)) = (src.file_name(), dst_c.file_name()) else {
        return Ok(());
    };
    if name == dname {
        return Ok(());
    }
    // DST/NAME is rsync's target only when it is not SRC/NAME's counterpart: a tree holding
    // an entry of its own name (`src/src`) is synced onto a copy of itself.
    let holds = std::fs::symlink_metadata(dst_c.join(name)).is_ok()
        && std::fs::symlink_metadata(src_c.join(name)).is_err();
    let parents_name = src_c.parent().and_then(Path::file_name) == Some(dname);
    if !holds && !parents_name {
        return Ok(());
    }
    let (s, d, n) = (src.display(), dst.display(), name.to_string_lossy());
    let into = dst.join(name);
    bail!(
        "sync {s} {d}: ambiguous: rsync copies {n} into {d} (as {into}), while sync makes {d} \
         identical to {s}, deleting all of {d} that {n} lacks; nothing was changed. Say which \
         you mean:\n    jailsync sync {s}/ {d}    (make {d} identical to {s})\n    jailsync \
         sync {s} {into}    (copy {n} into {d})",
        into = into.display()
    );
}
