//! Rollback: undoing the last sync of a destination exactly.
//!
//! Before a sync commits anything, it records a *generation*: the destination's old manifest
//! (every entry with full metadata) and a hard link to every old object the sync will replace
//! or delete, in a store on the destination's filesystem but outside the tree — so keeping the
//! old version costs one `link` per replaced object and no data. Rollback plans the old manifest
//! against the tree as it is now and runs the same staged pipeline (never lacking, whole or old),
//! reading old content from the store. It works after a killed sync as well: the generation is
//! complete before the first commit. Unchanged files keep their inode, so "same inode" means
//! "same content" here — the engine never writes into a live file.
//!
//! Layout: `STORE/gen-<N>/{manifest,info,files/<index>,done}` where `<index>` is the entry's
//! position in the manifest. A generation still named `gen-<N>.partial` was interrupted while
//! being made and is discarded. `done` marks a generation whose sync ran to its end; a sync that
//! finds the newest generation without it continues that generation (the killed run and its
//! resumption are one sync to undo), keeping what it replaces under the original indices. The store is `STATE/trees/<key>/rollback` when the state directory shares
//! the destination's filesystem, else `<parent of DST>/.jailsync-rollback/<key>`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::apply::{clean_leftovers, Apply, ApplyOpts, Outcome};
use crate::entry::{Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx::{self, split_parent, MetaOpts};
use crate::journal::{Lock, StateDir};
use crate::manifest;
use crate::plan::{self, Op, Plan, PlanOpts, NONE};
use crate::progress::{Phase, Progress};
use crate::scan::{self, Excludes, ScanOpts};
use crate::sync::{Pools, SyncOpts};

/// One recorded generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub id: u64,
    pub dir: PathBuf,
    /// Seconds since the epoch when it was recorded.
    pub time: i64,
    /// Paths the sync was about to change.
    pub changes: u64,
    pub source: String,
}

/// The rollback store of a destination (created on demand), or why there is none.
pub fn store_dir(state: &StateDir, dst: &Path) -> Result<PathBuf> {
    let tree_dir = state.tree_dir(dst)?;
    let dst_dev = fs::metadata(dst).at(dst)?.dev();
    if fs::metadata(&tree_dir).at(&tree_dir)?.dev() == dst_dev {
        return Ok(tree_dir.join("rollback"));
    }
    let parent = dst
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| Error::bad(dst, "no place for a rollback store on its filesystem"))?;
    if fs::metadata(parent).at(parent)?.dev() != dst_dev {
        return Err(Error::bad(
            dst,
            "is a mount point and the state dir is on another filesystem: no rollback store \
             (use --no-rollback, or a --state-dir on the same filesystem)",
        ));
    }
    let key = tree_dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    Ok(parent.join(".jailsync-rollback").join(key))
}

/// Records a generation for `plan` about to be applied to `dst` (whose old entries are `old`).
pub fn preserve(
    store: &Path,
    dst: &Path,
    old: &Entries,
    plan: &Plan,
    source: &Path,
    excludes: &[String],
    pool: &rayon::ThreadPool,
) -> Result<Generation> {
    fs::create_dir_all(store).at(store)?;
    let gens = list(store)?;
    if let Some(last) = gens.last() {
        if !last.dir.join("done").exists() {
            resume(last, dst, old, plan, pool)?;
            return Ok(last.clone());
        }
    }
    let id = gens.iter().map(|g| g.id).max().unwrap_or(0) + 1;
    let partial = store.join(format!("gen-{id:06}.partial"));
    // A leftover from a killed run of the same id: start over.
    if partial.exists() {
        fs::remove_dir_all(&partial).at(&partial)?;
    }
    let files = partial.join("files");
    fs::create_dir_all(&files).at(&files)?;
    let stamp = crate::cache::now();
    manifest::write_entries(&partial.join("manifest"), stamp, old, true)?;
    let time = stamp.0;
    let mut info = format!(
        "time {time}\nchanges {}\nsource {}\n",
        plan.actions.len(),
        source.display()
    );
    for x in excludes {
        info.push_str(&format!("exclude {x}\n"));
    }
    fs::write(partial.join("info"), info).at(partial.join("info"))?;

    // Directories are recorded in the manifest; their children have their own actions.
    let keep: Vec<(u32, u32)> = doomed(old, plan).map(|j| (j, j)).collect();
    link_kept(dst, &files, old, &keep, pool)?;
    let dir = store.join(format!("gen-{id:06}"));
    fs::rename(&partial, &dir).at(&dir)?;
    Ok(Generation {
        id,
        dir,
        time,
        changes: plan.actions.len() as u64,
        source: source.display().to_string(),
    })
}

/// Destination entries (indices into `old`) that `plan` replaces or removes and that are not
/// directories (those live on in the manifest; their children have their own actions).
fn doomed<'a>(old: &'a Entries, plan: &'a Plan) -> impl Iterator<Item = u32> + 'a {
    plan.actions
        .iter()
        .filter(|a| a.dst != NONE && matches!(a.op, Op::Replace | Op::Exchange | Op::Delete))
        .filter(|a| old[a.dst as usize].kind != Kind::Dir)
        .map(|a| a.dst)
}

/// Hard-links each `(index, entry)` of `keep` (an index into `entries`) into `files/<index>`,
/// in parallel. An entry already gone is skipped.
fn link_kept(
    dst: &Path,
    files: &Path,
    entries: &Entries,
    keep: &[(u32, u32)],
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let root = fsx::open_root_nofollow(dst).at(dst)?;
    let fdir = fsx::open_root(files).at(files)?;
    let first_err: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
    pool.install(|| {
        use rayon::prelude::*;
        keep.par_chunks(64).for_each(|chunk| {
            let mut last: Option<(&[u8], std::os::fd::OwnedFd)> = None;
            for &(j, i) in chunk {
                let e = entries.at(i as usize);
                let (p, n) = split_parent(e.path);
                let r = (|| -> io::Result<()> {
                    if last.as_ref().is_none_or(|(lp, _)| *lp != p) {
                        last = Some((p, fsx::open_dir_beneath(root.as_fd(), p)?));
                    }
                    let d = &last.as_ref().expect("just set").1;
                    fsx::link_at(d.as_fd(), n, fdir.as_fd(), j.to_string().as_bytes())
                })();
                match r {
                    Ok(()) => {}
                    // Gone already (someone removed it): nothing to keep. Kept already (a
                    // resumed run): the link is there.
                    Err(err)
                        if matches!(
                            err.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                        ) => {}
                    Err(err) => {
                        let mut f = first_err.lock().expect("poisoned");
                        if f.is_none() {
                            *f = Some(Error::io(dst.join(fsx::os(e.path)), err));
                        }
                    }
                }
            }
        });
    });
    match first_err.into_inner().expect("poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Marks a generation's sync as finished. A generation without the mark belongs to a run that
/// was killed: the next sync of the same destination continues it instead of starting another,
/// so one rollback still returns to the tree as it was before the killed run.
pub fn mark_done(g: &Generation) -> Result<()> {
    let p = g.dir.join("done");
    fs::write(&p, b"").at(&p)
}

/// A run that found nothing left to do completes a killed run's generation.
pub fn finish_interrupted(store: &Path) -> Result<()> {
    match list(store)?.last() {
        Some(g) if !g.dir.join("done").exists() => mark_done(g),
        _ => Ok(()),
    }
}

/// Continues an unfinished generation: its manifest is the tree before the killed run; what
/// this run replaces or removes and that is still the original object (same path, same inode)
/// is kept under its original index.
fn resume(
    g: &Generation,
    dst: &Path,
    cur: &Entries,
    plan: &Plan,
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let m = manifest::read_file(&g.dir.join("manifest"))?;
    let orig: HashMap<&[u8], (u32, u64, u64)> = m
        .entries
        .iter()
        .enumerate()
        .map(|(j, e)| (e.path, (j as u32, e.dev, e.ino)))
        .collect();
    let keep: Vec<(u32, u32)> = doomed(cur, plan)
        .filter_map(|i| {
            let e = cur.at(i as usize);
            match orig.get(e.path) {
                Some(&(j, dev, ino)) if dev == e.dev && ino == e.ino => Some((j, i)),
                _ => None,
            }
        })
        .collect();
    link_kept(dst, &g.dir.join("files"), cur, &keep, pool)
}

/// Complete generations, oldest first. Interrupted ones are removed.
pub fn list(store: &Path) -> Result<Vec<Generation>> {
    let rd = match fs::read_dir(store) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(store, e)),
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.at(store)?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("gen-") else {
            continue;
        };
        if rest.ends_with(".partial") {
            let _ = fs::remove_dir_all(ent.path());
            continue;
        }
        let Ok(id) = rest.parse::<u64>() else {
            continue;
        };
        let info = fs::read_to_string(ent.path().join("info")).unwrap_or_default();
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_default()
        };
        out.push(Generation {
            id,
            dir: ent.path(),
            time: field("time ").parse().unwrap_or(0),
            changes: field("changes ").parse().unwrap_or(0),
            source: field("source "),
        });
    }
    out.sort_by_key(|g| g.id);
    Ok(out)
}

/// Keeps the newest `keep` generations.
pub fn prune_generations(store: &Path, keep: usize) -> Result<()> {
    let gens = list(store)?;
    let n = gens.len().saturating_sub(keep);
    for g in &gens[..n] {
        fs::remove_dir_all(&g.dir).at(&g.dir)?;
    }
    Ok(())
}

/// What a rollback did (or, dry run, would do).
pub struct RollbackResult {
    pub generation: Generation,
    pub old: Entries,
    pub cur: Entries,
    pub plan: Plan,
    pub outcome: Option<Outcome>,
}

fn synthetic(tag: &[u8], a: u64, b: u64) -> crate::entry::Hash {
    let mut h = blake3::Hasher::new();
    h.update(tag);
    h.update(&a.to_le_bytes());
    h.update(&b.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Restores `dst` to generation `gen` (default: the newest).
pub fn rollback(
    state: &StateDir,
    dst: &Path,
    gen: Option<u64>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<RollbackResult> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(Lock::acquire(state, dst)?)
    };
    let store = store_dir(state, dst)?;
    let gens = list(&store)?;
    let g = match gen {
        Some(id) => gens.iter().find(|g| g.id == id).cloned().ok_or_else(|| {
            Error::bad(
                dst,
                format!("no rollback generation {id} (see `jailsync history`)"),
            )
        })?,
        None => gens
            .last()
            .cloned()
            .ok_or_else(|| Error::bad(dst, "nothing to roll back: no generation recorded"))?,
    };
    let m = manifest::read_file(&g.dir.join("manifest"))?;
    let info = fs::read_to_string(g.dir.join("info")).unwrap_or_default();
    let patterns: Vec<String> = info
        .lines()
        .filter_map(|l| l.strip_prefix("exclude ").map(str::to_string))
        .collect();
    let excludes = Excludes::new(&patterns)
        .map_err(|e| Error::bad(g.dir.join("info"), format!("bad exclude pattern: {e}")))?;
    let ours = state.staged_names(dst);
    let sopts = ScanOpts {
        excludes: &excludes,
        xattrs: opts.xattrs,
        defer_xattrs: false,
        ours: &ours,
    };
    progress.start(Phase::Scan, 0);
    let mut cur = scan::scan_tree(dst, &pools.walk, &sopts)?;
    progress.finish(Phase::Scan);
    if let Some((p, e)) = cur.errors.pop() {
        return Err(Error::io(dst.join(fsx::os(&p)), e));
    }
    let mut old = m.entries;

    // Content equality by inode: unchanged files were never written in place.
    let cur_by_path: HashMap<&[u8], usize> = cur
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path, i))
        .collect();
    let mut cur_hashes: Vec<Option<crate::entry::Hash>> = vec![None; cur.entries.len()];
    let mut old_hashes: Vec<(usize, crate::entry::Hash)> = Vec::new();
    for (j, o) in old.iter().enumerate() {
        if o.kind != Kind::File {
            continue;
        }
        let h = match cur_by_path.get(o.path) {
            Some(&i) if cur.entries[i].kind == Kind::File => {
                let c = &cur.entries[i];
                if c.dev == o.dev && c.ino == o.ino {
                    let h = synthetic(b"inode", c.dev, c.ino);
                    cur_hashes[i] = Some(h);
                    h
                } else {
                    cur_hashes[i] = Some(synthetic(b"cur", i as u64, 0));
                    synthetic(b"old", j as u64, 0)
                }
            }
            _ => synthetic(b"old", j as u64, 0),
        };
        old_hashes.push((j, h));
    }
    drop(cur_by_path);
    for (j, h) in old_hashes {
        old.set_hash(j, Some(h));
    }
    for (i, h) in cur_hashes.into_iter().enumerate() {
        cur.entries.set_hash(i, h);
    }
    let popts = PlanOpts {
        owner: opts.owner,
        xattrs: opts.xattrs,
    };
    let plan = plan::plan(&old, &cur.entries, popts);

    // Where each file to restore takes its content from: its kept link, else an inode the tree
    // still has (linked into the store first, so the source is one place).
    let files = g.dir.join("files");
    let mut map: HashMap<u32, Box<[u8]>> = HashMap::new();
    let by_inode: HashMap<(u64, u64), usize> = cur
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::File)
        .map(|(i, e)| ((e.dev, e.ino), i))
        .collect();
    for a in &plan.actions {
        if a.src == NONE || !matches!(a.op, Op::Create | Op::Replace | Op::Exchange) {
            continue;
        }
        let o = &old[a.src as usize];
        if o.kind != Kind::File || a.link_to != NONE {
            continue;
        }
        let rel = format!("files/{}", a.src);
        let kept = files.join(a.src.to_string());
        if fs::symlink_metadata(&kept).is_ok() {
            map.insert(a.src, rel.into_bytes().into());
        } else if let Some(&i) = by_inode.get(&(o.dev, o.ino)) {
            if !opts.dry_run {
                let p = dst.join(fsx::os(cur.entries.path(i)));
                fs::hard_link(&p, &kept).at(&p)?;
            }
            map.insert(a.src, rel.into_bytes().into());
        }
    }
    if opts.dry_run {
        return Ok(RollbackResult {
            generation: g,
            old,
            cur: cur.entries,
            plan,
            outcome: None,
        });
    }
    let sfd = fsx::open_root(&g.dir).at(&g.dir)?;
    let dfd = fsx::open_root_nofollow(dst).at(dst)?;
    let pre = clean_leftovers(dfd.as_fd(), &cur.leftovers);
    let aopts = ApplyOpts {
        meta: MetaOpts {
            owner: opts.owner,
            xattrs: opts.xattrs,
        },
        fsync: opts.fsync,
    };
    let mut ap = Apply::new(sfd, dfd, &old, &cur.entries, &plan, aopts).with_source_map(map);
    let stuck: Vec<&[u8]> = pre.iter().map(|e| &e.path[..]).collect();
    let names: Vec<Vec<u8>> = ap.staging_names().collect();
    state.record_staged(
        dst,
        stuck.iter().copied().chain(names.iter().map(|n| &n[..])),
        opts.fsync,
    )?;
    drop(names);
    ap.stage(&pools.work, progress);
    ap.commit(&pools.work, progress);
    ap.prune(&pools.work, progress);
    ap.finalize(progress);
    let remaining = ap.staged_remaining();
    let mut outcome = ap.into_outcome();
    if remaining.is_empty() && stuck.is_empty() {
        state.clear_staged(dst)?;
    } else {
        let all = stuck
            .iter()
            .copied()
            .chain(remaining.iter().map(|n| &n[..]));
        state.record_staged(dst, all, opts.fsync)?;
    }
    outcome.errors.splice(0..0, pre);
    if outcome.errors.is_empty() {
        // Rolled back: this generation is spent.
        fs::remove_dir_all(&g.dir).at(&g.dir)?;
    }
    Ok(RollbackResult {
        generation: g,
        old,
        cur: cur.entries,
        plan,
        outcome: Some(outcome),
    })
}
