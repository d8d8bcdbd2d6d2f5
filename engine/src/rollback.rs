//! Rollback: undoing what the last sync of a destination did, exactly, and only that.
//!
//! Before a sync commits anything, it records a *generation*: the destination's old manifest
//! (every entry with full metadata), what the sync will leave at each path it touches, and a
//! hard link to every old object it will replace or delete, in a store on the destination's
//! filesystem but outside the tree — so keeping the old version costs one `link` per replaced
//! object and no data. Rollback plans the old manifest against the tree as it is now and runs
//! the same staged pipeline (never lacking, whole or old), reading old content from the store;
//! an entry that changed since the sync (an admin's new file, an edit) is not the rollback's to
//! undo (invariant 8). It works after a killed sync as well: the generation is complete before
//! the first commit. Files the sync left alone keep their inode, so "same inode, unchanged
//! since" means "same content" here — the engine never writes into a live file.
//!
//! Layout: `STORE/gen-<N>/{manifest,info,touched,after,files/<index>,done}` where `<index>` is
//! the entry's position in the manifest. `touched` lists every path the sync acts on and
//! `after` the entries it leaves there (a touched path without one is deleted): what "what
//! the sync did" means to a rollback, which undoes that and leaves alone (reporting it) what
//! changed since. A generation still named `gen-<N>.partial` was interrupted while being made
//! and is discarded. `done` marks a generation whose sync ran to its end, listing the paths
//! it did not carry out; a sync that finds the newest generation without it continues that
//! generation (the killed run and its resumption are one sync to undo), keeping what it
//! replaces under the original indices. `kept-<N>-<n>/{manifest,files/<index>}` holds what a
//! forced rollback of generation N replaced although it had changed since the sync.
//!
//! Where: `STATE/trees/<key>/rollback` when the state directory shares the destination's
//! filesystem, else `<parent of DST>/.jailsync-rollback/<key>`, else (DST is a filesystem of
//! its own) `DST/.jailsync-rollback/<key>`, which no scan sees. Every directory of a store is
//! created 0700 (old setuid binaries and old secrets are kept in it) and opened without
//! following a symlink; the rest of the store is reached through that open directory.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::apply::{clean_leftovers, Apply, ApplyOpts, EntryError, Outcome};
use crate::entry::{Ent, Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx::{self, split_parent, MetaOpts};
use crate::journal::{Lock, StateDir};
use crate::manifest;
use crate::opts::{Pools, SyncOpts};
use crate::plan::{self, Op, Plan, PlanOpts, NONE};
use crate::progress::{Phase, Progress};
use crate::scan::{self, Excludes, ScanOpts};

/// One recorded generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub id: u64,
    /// Where it is read and written: through the store's open directory, so only while the
    /// [`Store`] it was listed from is open.
    pub dir: PathBuf,
    /// The store it is in, as people know it.
    pub store: PathBuf,
    /// Seconds since the epoch when it was recorded.
    pub time: i64,
    /// Paths the sync was about to change.
    pub changes: u64,
    pub source: String,
}

/// The rollback store of a destination, open.
pub struct Store {
    /// Where it is, for people (and messages).
    pub path: PathBuf,
    fd: OwnedFd,
}

impl Store {
    /// Opens (creating on demand) the store of `dst`; see the module doc for where it is.
    pub fn open(state: &StateDir, dst: &Path) -> Result<Store> {
        Ok(Store::locate(state, dst, true)?.expect("created"))
    }

    /// Opens the store of `dst` if there is one.
    pub fn find(state: &StateDir, dst: &Path) -> Result<Option<Store>> {
        Store::locate(state, dst, false)
    }

    fn locate(state: &StateDir, dst: &Path, create: bool) -> Result<Option<Store>> {
        let tree_dir = state.tree_dir(dst)?;
        let dst_dev = fs::metadata(dst).at(dst)?.dev();
        if fs::metadata(&tree_dir).at(&tree_dir)?.dev() == dst_dev {
            return Store::open_below(&tree_dir, &[b"rollback"], false, create);
        }
        let key = tree_dir
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default();
        let names = [fsx::STORE_NAME, &key[..]];
        match dst.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) if fs::metadata(parent).at(parent)?.dev() == dst_dev => {
                Store::open_below(parent, &names, false, create)
            }
            // DST is the top of its filesystem: the store lives at its top, where scans skip it.
            _ => Store::open_below(dst, &names, true, create),
        }
    }

    /// Opens `anchor/names[0]/names[1]...`, each a private directory (see
    /// [`fsx::open_private_dir`]). `in_tree`: the anchor is the destination itself, whose
    /// mtime the new store must not move (it would show as a difference).
    fn open_below(
        anchor: &Path,
        names: &[&[u8]],
        in_tree: bool,
        create: bool,
    ) -> Result<Option<Store>> {
        let mut fd = fsx::open_root(anchor).at(anchor)?;
        let before = fsx::fstat(fd.as_fd()).at(anchor)?;
        let mut path = anchor.to_path_buf();
        for (i, name) in names.iter().enumerate() {
            path.push(fsx::os(name));
            let (sub, created) = match fsx::open_private_dir(fd.as_fd(), name, create) {
                Ok(x) => x,
                Err(e) if !create && e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(path, e)),
            };
            if created && in_tree && i == 0 {
                let e = crate::fsx::entry_from_stat(&before);
                fsx::set_times_at(fd.as_fd(), b".", &e).at(anchor)?;
            }
            fd = sub;
        }
        Ok(Some(Store { path, fd }))
    }

    /// The store reached through its open directory ([`fsx::fd_path`]): no component on
    /// the way to it is resolved again, so one renamed or replaced by a symlink since it was
    /// opened redirects nothing.
    fn dir(&self) -> PathBuf {
        fsx::fd_path(self.fd.as_fd(), &self.path)
    }

    /// An error about a path in the store, naming it as people know it.
    fn named(&self, e: Error) -> Error {
        let dir = self.dir();
        e.map_path(|p| match p.strip_prefix(&dir) {
            Ok(rest) => self.path.join(rest),
            Err(_) => p,
        })
    }
}

/// `mkdir` of a store directory: 0700 from the start.
fn mkdir_private(p: &Path) -> Result<()> {
    fs::DirBuilder::new().mode(0o700).create(p).at(p)
}

/// Records a generation for `plan` about to make `dst` (whose entries are `old`) like `new`.
/// On failure nothing is left of a new generation.
#[allow(clippy::too_many_arguments)]
pub fn preserve(
    store: &Store,
    dst: &Path,
    old: &Entries,
    new: &Entries,
    plan: &Plan,
    source: &Path,
    excludes: &[String],
    pool: &rayon::ThreadPool,
) -> Result<Generation> {
    let gens = list(store)?;
    if let Some(last) = gens.last() {
        if !last.dir.join("done").exists() {
            resume(last, dst, old, new, plan, pool).map_err(|e| store.named(e))?;
            return Ok(last.clone());
        }
    }
    let id = gens.iter().map(|g| g.id).max().unwrap_or(0) + 1;
    let partial = store.dir().join(format!("gen-{id:06}.partial"));
    // A leftover from a killed run of the same id: start over.
    if partial.exists() {
        crate::fsx::remove_tree(&partial)
            .at(&partial)
            .map_err(|e| store.named(e))?;
    }
    let made = (|| -> Result<i64> {
        mkdir_private(&partial)?;
        let files = partial.join("files");
        mkdir_private(&files)?;
        let stamp = crate::cache::now();
        manifest::write_entries(&partial.join("manifest"), stamp, old, true)?;
        Left::record(&partial, new, old, plan)?;
        let mut info = format!(
            "time {}\nchanges {}\nsource {}\n",
            stamp.0,
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
        Ok(stamp.0)
    })();
    let time = match made {
        Ok(t) => t,
        Err(e) => {
            // No stale partial: the next run would only remove it again.
            let _ = crate::fsx::remove_tree(&partial);
            return Err(store.named(e));
        }
    };
    let dir = store.dir().join(format!("gen-{id:06}"));
    fs::rename(&partial, &dir)
        .at(&dir)
        .map_err(|e| store.named(e))?;
    Ok(Generation {
        id,
        dir,
        store: store.path.clone(),
        time,
        changes: plan.actions.len() as u64,
        source: source.display().to_string(),
    })
}

/// Removes a generation recorded by a run that then changed nothing.
pub fn discard(g: &Generation) -> Result<()> {
    crate::fsx::remove_tree(&g.dir).at(g.store.join(g.dir.file_name().unwrap_or_default()))
}

/// What a sync leaves at the paths it touches.
struct Left {
    /// Every path the sync acts on, sorted.
    touched: Vec<Box<[u8]>>,
    /// The entries it writes there (its source's), sorted; a touched path without one it
    /// deletes.
    after: Entries,
}

impl Left {
    /// Records in generation `dir` what `plan` (from `old` to `new`) leaves, streamed from the
    /// plan (no copy of a large upgrade's entries).
    fn record(dir: &Path, new: &Entries, old: &Entries, plan: &Plan) -> Result<()> {
        let after = plan
            .actions
            .iter()
            .filter(|a| a.op != Op::Delete)
            .map(|a| new.at(a.src as usize));
        manifest::write_ents(&dir.join("after"), (0, 0), after)?;
        let touched = plan.actions.iter().map(|a| plan.path(a, new, old));
        write_paths(&dir.join("touched"), touched)
    }

    /// Adds what `plan` leaves to what an earlier run of the same sync (killed) recorded.
    fn add(self, dir: &Path, new: &Entries, old: &Entries, plan: &Plan) -> Result<()> {
        let now: std::collections::HashSet<&[u8]> = plan
            .actions
            .iter()
            .map(|a| plan.path(a, new, old))
            .collect();
        let mut touched: Vec<&[u8]> = now.iter().copied().collect();
        touched.extend(self.touched.iter().map(|p| &p[..]));
        touched.sort_unstable();
        touched.dedup();
        let mut after: Entries = self
            .after
            .iter()
            .filter(|x| !now.contains(x.path))
            .collect();
        for a in plan.actions.iter().filter(|a| a.op != Op::Delete) {
            after.push_ent(new.at(a.src as usize));
        }
        after.sort_by_path();
        manifest::write_ents(&dir.join("after"), (0, 0), after.iter())?;
        write_paths(&dir.join("touched"), touched.into_iter())
    }

    /// What generation `dir` recorded (None: made by a version that did not record it).
    fn read(dir: &Path) -> Result<Option<Left>> {
        let p = dir.join("touched");
        let text = match fs::read(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(p, e)),
        };
        let touched = read_paths(&p, &text)?;
        let after = manifest::read_records(&dir.join("after"))?.entries;
        Ok(Some(Left { touched, after }))
    }

    fn touches(&self, p: &[u8]) -> bool {
        self.touched.binary_search_by(|x| (**x).cmp(p)).is_ok()
    }
}

/// One path a line, escaped as in a manifest (`.` for the root). Atomic, like the manifests.
fn write_paths<'a>(p: &Path, paths: impl Iterator<Item = &'a [u8]>) -> Result<()> {
    use std::io::Write;
    let tmp = p.with_extension("new");
    let r = (|| -> io::Result<()> {
        let mut w = io::BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
        let mut line = Vec::new();
        for x in paths {
            line.clear();
            if x.is_empty() {
                line.push(b'.');
            } else {
                manifest::escape(&mut line, x);
            }
            line.push(b'\n');
            w.write_all(&line)?;
        }
        w.flush()?;
        fs::rename(&tmp, p)
    })();
    r.at(p)
}

fn read_paths(p: &Path, text: &[u8]) -> Result<Vec<Box<[u8]>>> {
    let mut out = Vec::new();
    for (i, l) in text.split(|&b| b == b'\n').enumerate() {
        if l.is_empty() {
            continue;
        }
        let path = if l == b"." {
            Vec::new()
        } else {
            manifest::unescape(l).ok_or_else(|| Error::Manifest {
                path: p.into(),
                line: i + 1,
                why: "bad escape in path".into(),
            })?
        };
        out.push(path.into_boxed_slice());
    }
    out.sort_unstable();
    Ok(out)
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
/// so one rollback still returns to the tree as it was before the killed run. `not_done`: the
/// paths whose actions were not carried out (what is there is not known to be the sync's).
pub fn mark_done<'a>(g: &Generation, not_done: impl Iterator<Item = &'a [u8]>) -> Result<()> {
    let p = g.dir.join("done");
    write_paths(&p, not_done).map_err(|e| e.map_path(|_| g.store.join("done")))
}

/// A run that found nothing left to do completes a killed run's generation.
pub fn finish_interrupted(store: &Store) -> Result<()> {
    match list(store)?.last() {
        Some(g) if !g.dir.join("done").exists() => mark_done(g, std::iter::empty()),
        _ => Ok(()),
    }
}

/// Continues an unfinished generation: its manifest is the tree before the killed run; what
/// this run replaces or removes and that is still the original object (same path, same inode)
/// is kept under its original index, and what this run touches is added to what it did.
fn resume(
    g: &Generation,
    dst: &Path,
    cur: &Entries,
    new: &Entries,
    plan: &Plan,
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let m = manifest::read_recorded(&g.dir.join("manifest"))?;
    let orig: HashMap<&[u8], (u32, u64, u64)> = m
        .entries
        .iter()
        .enumerate()
        .map(|(j, e)| (e.path, (j as u32, e.dev(), e.ino)))
        .collect();
    let keep: Vec<(u32, u32)> = doomed(cur, plan)
        .filter_map(|i| {
            let e = cur.at(i as usize);
            match orig.get(e.path) {
                Some(&(j, dev, ino)) if dev == e.dev() && ino == e.ino => Some((j, i)),
                _ => None,
            }
        })
        .collect();
    if let Some(earlier) = Left::read(&g.dir)? {
        earlier.add(&g.dir, new, cur, plan)?;
    }
    link_kept(dst, &g.dir.join("files"), cur, &keep, pool)
}

/// Complete generations, oldest first. Interrupted ones are removed.
pub fn list(store: &Store) -> Result<Vec<Generation>> {
    let dir = store.dir();
    let rd = fs::read_dir(&dir).at(&dir).map_err(|e| store.named(e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.at(&dir).map_err(|e| store.named(e))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("gen-") else {
            continue;
        };
        if rest.ends_with(".partial") {
            let _ = crate::fsx::remove_tree(ent.path());
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
            store: store.path.clone(),
            time: field("time ").parse().unwrap_or(0),
            changes: field("changes ").parse().unwrap_or(0),
            source: field("source "),
        });
    }
    out.sort_by_key(|g| g.id);
    Ok(out)
}

/// Keeps the newest `keep` generations.
pub fn prune_generations(store: &Store, keep: usize) -> Result<()> {
    let gens = list(store)?;
    let n = gens.len().saturating_sub(keep);
    for g in &gens[..n] {
        crate::fsx::remove_tree(&g.dir)
            .at(&g.dir)
            .map_err(|e| store.named(e))?;
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
    /// Paths changed since the sync (or holding such a path): left as they are, unless forced.
    pub changed: Vec<Box<[u8]>>,
    /// Forced: where the entries that had changed since the sync were kept, and how many.
    pub kept: Option<(PathBuf, usize)>,
}

fn synthetic(tag: &[u8], a: u64, b: u64) -> crate::entry::Hash {
    let mut h = blake3::Hasher::new();
    h.update(tag);
    h.update(&a.to_le_bytes());
    h.update(&b.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Is `c` (an entry as it is now) what `w` describes, as far as an edit would show? Files and
/// others by type, mode, owner (when `owner`), mtime, size, target and device number; with
/// `ino`, files also by inode. A directory's mtime moves with its children, which are
/// compared one by one, so it does not count.
fn same(c: Option<Ent<'_>>, w: Option<Ent<'_>>, ino: bool, owner: bool) -> bool {
    let (c, w) = match (c, w) {
        (None, None) => return true,
        (Some(c), Some(w)) => (c, w),
        _ => return false,
    };
    c.kind == w.kind
        && c.mode == w.mode
        && (!owner || (c.uid(), c.gid()) == (w.uid(), w.gid()))
        && (c.kind == Kind::Dir
            || c.same_mtime(&w)
                && c.target() == w.target()
                && c.rdev() == w.rdev()
                && (c.kind != Kind::File
                    || c.size == w.size && (!ino || (c.dev(), c.ino) == (w.dev(), w.ino))))
}

/// What one generation's sync left, and the touched paths whose outcome is not known (a
/// killed run's, an entry that failed), where whatever is there counts as the sync's (`None`:
/// every touched path, the sync did not finish).
type Undone = (Left, Option<Vec<Box<[u8]>>>);

/// Tells what the syncs being undone left from what changed since.
struct Since {
    /// Per generation undone (the one rolled back to and every newer one). `None`: one was
    /// made by a version that did not record what its sync left; everything counts as the
    /// syncs'.
    gens: Option<Vec<Undone>>,
    owner: bool,
}

impl Since {
    fn read(gens: &[Generation], owner: bool) -> Result<Since> {
        let mut out = Vec::new();
        for g in gens {
            let Some(left) = Left::read(&g.dir)? else {
                return Ok(Since { gens: None, owner });
            };
            let done = g.dir.join("done");
            let unsure = match fs::read(&done) {
                Ok(text) => Some(read_paths(&done, &text)?),
                Err(_) => None,
            };
            out.push((left, unsure));
        }
        Ok(Since {
            gens: Some(out),
            owner,
        })
    }

    /// Has the entry at `p` changed since the syncs (compared with what a sync that touched
    /// it left there, else with the old entry)?
    fn changed(&self, p: &[u8], old: &Entries, cur: &Entries) -> bool {
        fn get<'e>(es: &'e Entries, p: &[u8]) -> Option<Ent<'e>> {
            es.search(p).ok().map(|i| es.at(i))
        }
        let Some(gens) = &self.gens else {
            return false;
        };
        let c = get(cur, p);
        for (left, unsure) in gens.iter().filter(|(l, _)| l.touches(p)) {
            let unsure = match unsure {
                None => true,
                Some(u) => u.binary_search_by(|x| (**x).cmp(p)).is_ok(),
            };
            if unsure || same(c, get(&left.after, p), false, self.owner) {
                return false;
            }
        }
        !same(c, get(old, p), true, self.owner)
    }
}

/// Takes out of `plan` the actions at `changed` paths and what they would create inside, and
/// keeps the directories holding a changed entry (neither deleted nor exchanged away). Returns
/// the directories so kept from an exchange, to be reported with the rest.
fn leave_alone(
    plan: &mut Plan,
    old: &Entries,
    cur: &Entries,
    changed: &[Box<[u8]>],
) -> Vec<Box<[u8]>> {
    let is_changed = |p: &[u8]| changed.binary_search_by(|x| (**x).cmp(p)).is_ok();
    let dropped_dirs: Vec<Box<[u8]>> = plan
        .actions
        .iter()
        .filter(|a| a.src != NONE && old[a.src as usize].kind == Kind::Dir)
        .map(|a| plan.path(a, old, cur))
        .filter(|p| is_changed(p))
        .map(Box::from)
        .collect();
    let drop: Vec<bool> = plan
        .actions
        .iter()
        .map(|a| {
            let p = plan.path(a, old, cur);
            is_changed(p) || a.inside && scan::under_any(&dropped_dirs, p)
        })
        .collect();
    plan::drop_actions(plan, &drop);
    // The changed entries that are there hold their directories.
    let holds: Vec<Box<[u8]>> = changed
        .iter()
        .filter(|p| !p.is_empty() && cur.search(p).is_ok())
        .map(|p| split_parent(p).0.into())
        .collect();
    crate::excluded::keep_excluded_parents(plan, cur, &holds)
}

/// Keeps the entries at `paths` (changed since the sync, about to be rolled back by force)
/// in a new `kept-<gen>-<n>` beside the generation: their manifest, and a hard link to each
/// non-directory. Returns its path as people know it.
fn keep_changed(
    store: &Store,
    g: &Generation,
    dst: &Path,
    cur: &Entries,
    paths: &[Box<[u8]>],
    pool: &rayon::ThreadPool,
) -> Result<PathBuf> {
    let (dir, name) = (1..)
        .map(|n| format!("kept-{:06}-{n}", g.id))
        .map(|name| (store.dir().join(&name), name))
        .find(|(d, _)| !d.exists())
        .expect("a free name");
    let r = (|| -> Result<()> {
        mkdir_private(&dir)?;
        let files = dir.join("files");
        mkdir_private(&files)?;
        let mut kept = Entries::new();
        let mut links = Vec::new();
        for p in paths {
            if let Ok(i) = cur.search(p) {
                let j = kept.push_ent(cur.at(i));
                if cur[i].kind != Kind::Dir {
                    links.push((j as u32, i as u32));
                }
            }
        }
        manifest::write_entries(&dir.join("manifest"), crate::cache::now(), &kept, true)?;
        link_kept(dst, &files, cur, &links, pool)
    })();
    r.map_err(|e| store.named(e))?;
    Ok(store.path.join(name))
}

/// Restores `dst` to generation `gen` (default: the newest): undoes what the sync did. An
/// entry changed since (compared with what the sync left) is left as it is and reported in
/// [`RollbackResult::changed`], unless `force`; then it is kept in the store first.
pub fn rollback(
    state: &StateDir,
    dst: &Path,
    gen: Option<u64>,
    force: bool,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<RollbackResult> {
    let _lock = if opts.dry_run {
        None
    } else {
        Some(Lock::acquire(state, dst)?)
    };
    let Some(store) = Store::find(state, dst)? else {
        return Err(Error::bad(dst, "nothing to roll back: no rollback store"));
    };
    let (g, undone) = choose_generation(&store, dst, gen)?;
    let m = manifest::read_recorded(&g.dir.join("manifest")).map_err(|e| store.named(e))?;
    let since = Since::read(&undone, opts.owner).map_err(|e| store.named(e))?;
    let excludes = recorded_excludes(&store, &g)?;
    let mut cur = scan_live(state, dst, &excludes, opts, pools, progress)?;
    let mut old = m.entries;
    let by_inode = hash_by_inode(&mut old, &mut cur.entries, &since);
    let popts = PlanOpts {
        owner: opts.owner,
        xattrs: opts.xattrs,
    };
    let mut plan = plan::plan(&old, &cur.entries, popts);

    // What changed since the sync is not the rollback's to undo: left alone (with the
    // directories holding it), or with `force` kept in the store first.
    let mut changed = changed_since(&plan, &old, &cur.entries, &since);
    let mut kept = None;
    if force {
        if !changed.is_empty() && !opts.dry_run {
            let dir = keep_changed(&store, &g, dst, &cur.entries, &changed, &pools.work)?;
            kept = Some((dir, changed.len()));
        }
        changed.clear();
    } else if !changed.is_empty() {
        let refused = leave_alone(&mut plan, &old, &cur.entries, &changed);
        changed.extend(refused);
        changed.sort_unstable();
        changed.dedup();
    }

    let map = source_map(&g, dst, &plan, &old, &cur.entries, &by_inode, opts.dry_run)?;
    let outcome = if opts.dry_run {
        None
    } else {
        let sfd = fsx::open_root(&g.dir)
            .at(&g.dir)
            .map_err(|e| store.named(e))?;
        let dfd = fsx::open_root_nofollow(dst).at(dst)?;
        let pre = clean_leftovers(dfd.as_fd(), &cur.leftovers);
        let aopts = ApplyOpts {
            meta: MetaOpts {
                owner: opts.owner,
                xattrs: opts.xattrs,
            },
            fsync: opts.fsync,
        };
        let ap = Apply::new(sfd, dfd, &old, &cur.entries, &plan, aopts).with_source_map(map);
        let outcome = restore(state, dst, ap, pre, opts, pools, progress)?;
        if outcome.errors.is_empty() && changed.is_empty() {
            // Rolled back: this generation is spent.
            crate::fsx::remove_tree(&g.dir)
                .at(&g.dir)
                .map_err(|e| store.named(e))?;
        }
        Some(outcome)
    };
    Ok(RollbackResult {
        generation: g,
        old,
        cur: cur.entries,
        plan,
        outcome,
        changed,
        kept,
    })
}

/// The generation to roll back to (`gen`, default the newest) and the generations that
/// rolling back to it undoes: its sync and every later one.
fn choose_generation(
    store: &Store,
    dst: &Path,
    gen: Option<u64>,
) -> Result<(Generation, Vec<Generation>)> {
    let gens = list(store)?;
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
    let undone = gens.into_iter().filter(|x| x.id >= g.id).collect();
    Ok((g, undone))
}

/// The exclude patterns the sync of `g` ran with (its `info`): what it excluded, the
/// rollback leaves alone too.
fn recorded_excludes(store: &Store, g: &Generation) -> Result<Excludes> {
    let info = fs::read_to_string(g.dir.join("info")).unwrap_or_default();
    let patterns: Vec<String> = info
        .lines()
        .filter_map(|l| l.strip_prefix("exclude ").map(str::to_string))
        .collect();
    Excludes::new(&patterns).map_err(|e| {
        Error::bad(
            store.path.join(format!("gen-{:06}/info", g.id)),
            format!("bad exclude pattern: {e}"),
        )
    })
}

/// Scans `dst` as it is now; an entry that cannot be read fails the rollback (it could not
/// tell what changed there).
fn scan_live(
    state: &StateDir,
    dst: &Path,
    excludes: &Excludes,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<scan::Scan> {
    let ours = state.staged_names(dst);
    let mounts = crate::jail::mountinfo::points_below(dst);
    let sopts = ScanOpts {
        excludes,
        xattrs: opts.xattrs,
        defer_xattrs: false,
        ours: &ours,
        mounts: &mounts,
    };
    progress.start(Phase::Scan, 0);
    let mut cur = scan::scan_tree(dst, &pools.walk, &sopts)?;
    progress.finish(Phase::Scan);
    if let Some((p, e)) = cur.errors.pop() {
        return Err(Error::io(dst.join(fsx::os(&p)), e));
    }
    Ok(cur)
}

/// Gives every file of `old` and `cur` a synthetic hash, so the plan compares content by
/// inode. Returns the files of `cur` unchanged since the syncs, by (device, inode): where an
/// old file's content may still be found.
///
/// Content equality by inode: the engine never writes into a live file, so a file the sync
/// left alone still has its old content. One changed since may have been edited in place:
/// neither its content nor its inode stands for the old content.
fn hash_by_inode(
    old: &mut Entries,
    cur: &mut Entries,
    since: &Since,
) -> HashMap<(u64, u64), usize> {
    let changed_file: Vec<bool> = (0..cur.len())
        .map(|i| cur[i].kind == Kind::File && since.changed(cur.path(i), old, cur))
        .collect();
    let by_inode: HashMap<(u64, u64), usize> = cur
        .iter()
        .enumerate()
        .filter(|(i, e)| e.kind == Kind::File && !changed_file[*i])
        .map(|(i, e)| ((e.dev(), e.ino), i))
        .collect();
    let cur_by_path: HashMap<&[u8], usize> =
        cur.iter().enumerate().map(|(i, e)| (e.path, i)).collect();
    let mut cur_hashes: Vec<Option<crate::entry::Hash>> = vec![None; cur.len()];
    let mut old_hashes: Vec<(usize, crate::entry::Hash)> = Vec::new();
    for (j, o) in old.iter().enumerate() {
        if o.kind != Kind::File {
            continue;
        }
        let h = match cur_by_path.get(o.path) {
            Some(&i) if cur[i].kind == Kind::File => {
                let c = &cur[i];
                if c.dev() == o.dev() && c.ino == o.ino && !changed_file[i] {
                    let h = synthetic(b"inode", c.dev(), c.ino);
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
        cur.set_hash(i, h);
    }
    by_inode
}

/// The paths `plan` acts on that changed since the syncs being undone.
fn changed_since(plan: &Plan, old: &Entries, cur: &Entries, since: &Since) -> Vec<Box<[u8]>> {
    plan.actions
        .iter()
        .map(|a| plan.path(a, old, cur))
        .filter(|p| since.changed(p, old, cur))
        .map(Box::from)
        .collect()
}

/// Where each file to restore takes its content from: its kept link, else an inode the tree
/// still has as the sync left it (linked into the store first, so the source is one place).
/// A dry run links nothing.
fn source_map(
    g: &Generation,
    dst: &Path,
    plan: &Plan,
    old: &Entries,
    cur: &Entries,
    by_inode: &HashMap<(u64, u64), usize>,
    dry_run: bool,
) -> Result<HashMap<u32, Box<[u8]>>> {
    let files = g.dir.join("files");
    let mut map: HashMap<u32, Box<[u8]>> = HashMap::new();
    for a in &plan.actions {
        if a.src == NONE || !matches!(a.op, Op::Create | Op::Replace | Op::Exchange) {
            continue;
        }
        let o = &old[a.src as usize];
        if o.kind != Kind::File || a.link_to != NONE {
            continue;
        }
        let rel = format!("files/{}", a.src);
        let keep = files.join(a.src.to_string());
        if fs::symlink_metadata(&keep).is_ok() {
            map.insert(a.src, rel.into_bytes().into());
        } else if let Some(&i) = by_inode.get(&(o.dev(), o.ino)) {
            if !dry_run {
                let p = dst.join(fsx::os(cur.path(i)));
                fs::hard_link(&p, &keep).at(&p)?;
            }
            map.insert(a.src, rel.into_bytes().into());
        }
    }
    Ok(map)
}

/// Runs the rollback's plan through the staged pipeline, its staging names recorded first
/// (with the leftovers `pre` that could not be removed) so that a killed rollback is finished
/// or discarded by the next command; `pre` heads the outcome's errors.
fn restore(
    state: &StateDir,
    dst: &Path,
    mut ap: Apply<'_>,
    pre: Vec<EntryError>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let stuck: Vec<&[u8]> = pre.iter().map(|e| &e.path[..]).collect();
    let names: Vec<Vec<u8>> = ap.staging_names().collect();
    state.record_staged(
        dst,
        stuck.iter().copied().chain(names.iter().map(|n| &n[..])),
        opts.fsync,
    )?;
    drop(names);
    ap.stage(&pools.work, progress);
    // Out of room: a half rollback would be a tree nobody had; nothing of it is committed.
    if ap.out_of_room().is_some() {
        ap.abandon();
    } else {
        ap.commit(&pools.work, progress);
        ap.prune(&pools.work, progress);
        ap.finalize(progress);
    }
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
    Ok(outcome)
}
