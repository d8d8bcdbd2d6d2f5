//! The staged pipeline: stage -> commit -> prune -> finalize.
//!
//! - **Stage** writes every new object under a temporary name (`.jailsync-tmp-*`) in the
//!   directory of its target, metadata set on the open fd before anyone can see it; a new
//!   directory is built whole under one temporary name. Files are copied by several workers
//!   (the time goes to creating inodes in the kernel, so more workers than cores still pay).
//!   Nothing visible in the live tree changes in this phase, so it may take as long as it likes.
//! - **Commit** renames staged objects over their targets in one short burst — data and
//!   libraries first, then new directories, then executables, so a program never starts
//!   against its old libraries' replacements half-done — exchanges type changes with
//!   `RENAME_EXCHANGE`, and applies metadata-only changes. The burst's duration is the "switch
//!   window".
//! - **Prune** removes orphans (deepest first) and the old objects that exchanges moved aside.
//! - **Finalize** sets directory modes and times bottom-up (adding and removing children moved
//!   their mtimes), with an fsync of each touched directory when durability is asked for.
//!
//! Every call on the destination is relative to a directory fd opened beneath its root with
//! symlinks refused (see [`crate::fsx`]); the source is only ever opened for reading.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::entry::{join, Ent, Entries, Entry, Kind};
use crate::fsx::{self, split_parent, MetaOpts};
use crate::hash;
use crate::plan::{change, Action, Op, Plan, NONE};
use crate::progress::{Phase, Progress};

#[derive(Clone, Copy, Debug)]
pub struct ApplyOpts {
    pub meta: MetaOpts,
    /// fsync data before each rename and each touched directory after.
    pub fsync: bool,
}

/// An entry that could not be synced, with the phase and the cause.
#[derive(Debug)]
pub struct EntryError {
    pub path: Box<[u8]>,
    pub phase: Phase,
    pub error: io::Error,
}

/// What a tree's apply did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub bytes_written: u64,
    pub switch_window: Duration,
    pub errors: Vec<EntryError>,
    /// Directories left in place because they still hold entries (excluded ones, or entries
    /// created by someone else during the run).
    pub kept: Vec<Box<[u8]>>,
    /// Per planned action: false where it was not carried out (so summaries count what was
    /// done, not what was planned). Empty until the run's last phase.
    pub done: Vec<bool>,
}

/// One tree being applied. Phases are separate methods so `upgrade` can stage every tree
/// before committing any.
pub struct Apply<'a> {
    src_root: OwnedFd,
    dst_root: OwnedFd,
    src: &'a Entries,
    dst: &'a Entries,
    plan: &'a Plan,
    opts: ApplyOpts,
    /// Per action: whether and where it was staged (see [`Apply::loc`]). Locations follow
    /// from the action's index and path, so they are not stored: stored, they were 14 of the
    /// 129 MB a 200k-file upgrade peaked at.
    staged: Vec<Staged>,
    /// Per action: it failed; later phases leave it alone.
    failed: Vec<bool>,
    /// Staging names that hold old objects after an exchange.
    moved_aside: Vec<Box<[u8]>>,
    /// Where a source file's content is, relative to the source root, when not at its own path
    /// (rollback reads old content from its store). Its mtime is then not checked: a store
    /// link shares an inode whose metadata may have moved since.
    src_map: Option<HashMap<u32, Box<[u8]>>>,
    /// Source entries whose scanned hash proved not to describe their content when copied.
    stale: Mutex<Vec<u32>>,
    pub outcome: Outcome,
}

/// Remembers the last directory opened, since actions come in path order.
struct DirCache<'r> {
    root: BorrowedFd<'r>,
    last: Option<(Vec<u8>, OwnedFd)>,
    /// Whether `last` passes no xattrs on ([`fsx::makes_bare`]), once asked.
    bare: Option<bool>,
}

impl<'r> DirCache<'r> {
    fn new(root: BorrowedFd<'r>) -> Self {
        DirCache {
            root,
            last: None,
            bare: None,
        }
    }

    fn get(&mut self, rel: &[u8]) -> io::Result<BorrowedFd<'_>> {
        let hit = self.last.as_ref().is_some_and(|(p, _)| p == rel);
        if !hit {
            let fd = fsx::open_dir_beneath(self.root, rel)?;
            self.last = Some((rel.to_vec(), fd));
            self.bare = None;
        }
        Ok(self.last.as_ref().expect("just set").1.as_fd())
    }

    /// Whether what is made in the directory `rel` starts without xattrs (no default ACL to
    /// inherit): read once per directory opened.
    fn makes_bare(&mut self, rel: &[u8]) -> io::Result<bool> {
        self.get(rel)?;
        let fd = self.last.as_ref().expect("just opened").1.as_fd();
        Ok(*self.bare.get_or_insert_with(|| fsx::makes_bare(fd)))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Staged {
    Not,
    /// Under a temporary name beside its target: `parent/<tmp_name(k)>`.
    Beside,
    /// Inside the new directory of action `top` (itself `Beside`), under its final name.
    Inside(u32),
}

/// `.jailsync-tmp-<run>-<k>`: computed again whenever needed, so kept cheap. `<run>` is a
/// random number per process (a pid repeats; a leftover copied back from a backup would then
/// bear the very name a later run stages). A name that exists already is never taken over
/// (see [`Apply::stage`]), and only names recorded before they were made are ever removed as
/// leftovers (see [`crate::journal::StateDir::record_staged`]).
fn tmp_name(k: usize) -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    use std::io::Write;
    static RUN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let run = *RUN.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    });
    let mut n = Vec::with_capacity(fsx::TMP_PREFIX.len() + 32);
    n.extend_from_slice(fsx::TMP_PREFIX);
    let _ = write!(n, "{run}-{k}");
    n
}

/// Out of space or inodes: the destination cannot hold the new release, so none of it is
/// committed (a quota counts the same).
fn is_out_of_room(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The actions that make an object under a staging name.
fn staged_op(a: &Action) -> bool {
    matches!(a.op, Op::Create | Op::Replace | Op::Exchange)
}

fn err_other(msg: &str) -> io::Error {
    io::Error::other(msg.to_string())
}

impl<'a> Apply<'a> {
    pub fn new(
        src_root: OwnedFd,
        dst_root: OwnedFd,
        src: &'a Entries,
        dst: &'a Entries,
        plan: &'a Plan,
        opts: ApplyOpts,
    ) -> Self {
        let n = plan.actions.len();
        let mut a = Apply {
            src_root,
            dst_root,
            src,
            dst,
            plan,
            opts,
            staged: vec![Staged::Not; n],
            failed: vec![false; n],
            moved_aside: Vec::new(),
            src_map: None,
            stale: Mutex::new(Vec::new()),
            outcome: Outcome::default(),
        };
        a.locate();
        a
    }

    /// Works out every staging location (before anything is made, so the names can be
    /// recorded first). Inside a new directory, an entry is staged under its final name
    /// beneath that directory's location; the outermost new directory is remembered.
    fn locate(&mut self) {
        let mut tops: HashMap<&[u8], u32> = HashMap::new();
        for (k, a) in self.plan.actions.iter().enumerate() {
            if !matches!(a.op, Op::Create | Op::Replace | Op::Exchange) {
                continue;
            }
            let s = self.src.at(a.src as usize);
            let staged = if a.inside {
                match tops.get(split_parent(s.path).0) {
                    Some(&top) => Staged::Inside(top),
                    None => continue, // parent failed to plan a location; reported in stage
                }
            } else {
                Staged::Beside
            };
            if s.kind == Kind::Dir {
                let top = match staged {
                    Staged::Inside(top) => top,
                    _ => k as u32,
                };
                tops.insert(s.path, top);
            }
            self.staged[k] = staged;
        }
    }

    /// The temporary names this apply will create beside their targets (relative to the
    /// destination root; what is inside a new directory goes with it).
    pub fn staging_names(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        (0..self.staged.len())
            .filter(|&k| self.staged[k] == Staged::Beside)
            .filter_map(|k| self.loc(k))
    }

    /// Temporary names of this apply that may still exist after its last phase: a failed
    /// entry's or an exchanged-out object's whose removal failed too. They stay recorded for
    /// the next run to remove.
    pub fn staged_remaining(&self) -> Vec<Box<[u8]>> {
        let mut cache = DirCache::new(self.dst_root.as_fd());
        (0..self.staged.len())
            .filter(|&k| {
                self.staged[k] == Staged::Beside
                    && (self.failed[k] || self.plan.actions[k].op == Op::Exchange)
            })
            .filter_map(|k| self.loc(k))
            .filter(|l| {
                let (p, n) = split_parent(l);
                let gone = |e: &io::Error| {
                    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
                };
                match cache
                    .get(p)
                    .and_then(|d| fsx::lstat_at(d, fsx::cstr(n)?.as_c_str()))
                {
                    Ok(_) => true,
                    Err(e) => !gone(&e),
                }
            })
            .map(Vec::into_boxed_slice)
            .collect()
    }

    /// The first entry whose staging failed for want of space or inodes, if any: then the
    /// destination cannot hold the new release, and nothing of the run may be committed.
    pub fn out_of_room(&self) -> Option<&EntryError> {
        self.outcome
            .errors
            .iter()
            .find(|e| e.phase == Phase::Stage && is_out_of_room(&e.error))
    }

    /// Gives up after staging: removes every staged object and marks every action as not
    /// carried out. The live tree is as it was.
    pub fn abandon(&mut self) {
        let mut cache = DirCache::new(self.dst_root.as_fd());
        let mut errors = Vec::new();
        for k in (0..self.plan.actions.len()).rev() {
            // Failed entries were discarded already.
            if self.staged[k] != Staged::Beside || self.failed[k] {
                continue;
            }
            let loc = self.loc(k).expect("staged beside");
            let (p, n) = split_parent(&loc);
            if let Err(e) = cache.get(p).and_then(|d| fsx::remove_tree_at(d, n)) {
                errors.push(EntryError {
                    path: loc.into(),
                    phase: Phase::Stage,
                    error: e,
                });
            }
        }
        // Making and removing names moved the mtimes of their directories: put them back.
        let mut dirs: Vec<&[u8]> = self
            .plan
            .actions
            .iter()
            .filter(|a| matches!(a.op, Op::Create | Op::Replace | Op::Exchange) && !a.inside)
            .map(|a| split_parent(self.src.path(a.src as usize)).0)
            .collect();
        dirs.dedup();
        for d in dirs {
            let Ok(j) = self.dst.search(d) else { continue };
            let r = fsx::open_dir_beneath(self.dst_root.as_fd(), d)
                .and_then(|fd| fsx::set_times_at(fd.as_fd(), b".", &self.dst[j]));
            if let Err(e) = r {
                errors.push(EntryError {
                    path: d.into(),
                    phase: Phase::Stage,
                    error: e,
                });
            }
        }
        self.outcome.errors.extend(errors);
        self.failed.iter_mut().for_each(|f| *f = true);
    }

    /// Reads file content from other places than the source entries' paths (see `src_map`).
    pub fn with_source_map(mut self, map: HashMap<u32, Box<[u8]>>) -> Self {
        self.src_map = Some(map);
        self
    }

    /// Where action `k` was staged, relative to the destination root.
    fn loc(&self, k: usize) -> Option<Vec<u8>> {
        let path = |k: usize| self.src.path(self.plan.actions[k].src as usize);
        match self.staged[k] {
            Staged::Not => None,
            Staged::Beside => Some(join(split_parent(path(k)).0, &tmp_name(k))),
            // Its directory's name was taken (by an entry not ours): it has no place.
            Staged::Inside(top) if self.staged[top as usize] != Staged::Beside => None,
            Staged::Inside(top) => {
                let top = top as usize;
                let mut l = join(split_parent(path(top)).0, &tmp_name(top));
                l.extend_from_slice(&path(k)[path(top).len()..]);
                Some(l)
            }
        }
    }

    fn path(&self, a: &Action) -> &'a [u8] {
        self.plan.path(a, self.src, self.dst)
    }

    fn fail_all(&mut self, phase: Phase, failures: Vec<(usize, io::Error)>) {
        for (k, e) in failures {
            self.fail(k, phase, e);
        }
    }

    fn fail(&mut self, k: usize, phase: Phase, error: io::Error) {
        self.failed[k] = true;
        let path = self.path(&self.plan.actions[k]).into();
        self.outcome.errors.push(EntryError { path, phase, error });
    }

    /// A staging name that exists already is someone else's entry: it is left alone (not
    /// staged, so never discarded or published), and the action fails.
    fn not_ours(&mut self, failures: &[(usize, io::Error)]) {
        for (k, e) in failures {
            if e.kind() == io::ErrorKind::AlreadyExists && self.staged[*k] == Staged::Beside {
                self.staged[*k] = Staged::Not;
            }
        }
    }

    /// Creates every object at its staging location.
    pub fn stage(&mut self, pool: &rayon::ThreadPool, progress: &dyn Progress) {
        let total = self.plan.actions.iter().filter(|a| staged_op(a)).count() as u64;
        progress.start(Phase::Stage, total);
        self.stage_dirs(progress);
        self.stage_objects(pool, progress);
        self.stage_links(progress);
        // Before directory modes can make staged directories read-only.
        self.discard_failed();
        self.finish_dirs();
        self.discard_failed();
        // Copies hash what they read; the commit and prune need no buffers.
        hash::release_buffers(pool);
        progress.finish(Phase::Stage);
    }

    /// Staging, step 1: new directories, parents first (path order), private until
    /// finalized. One inside a directory that could not be made is not made either.
    fn stage_dirs(&mut self, progress: &dyn Progress) {
        let actions = &self.plan.actions;
        let mut cache = DirCache::new(self.dst_root.as_fd());
        let mut dir_failures = Vec::new();
        let mut failed_dirs = vec![false; actions.len()];
        for (k, a) in actions.iter().enumerate() {
            if !staged_op(a) || self.src[a.src as usize].kind != Kind::Dir {
                continue;
            }
            let top_failed = matches!(self.staged[k], Staged::Inside(t) if failed_dirs[t as usize]);
            let loc = self.loc(k).filter(|_| !top_failed);
            let Some(loc) = loc else {
                dir_failures.push((k, err_other("parent directory could not be staged")));
                failed_dirs[k] = true;
                continue;
            };
            let (p, n) = split_parent(&loc);
            let r = cache.get(p).and_then(|d| fsx::mkdir_at(d, n, 0o700));
            if let Err(e) = r {
                dir_failures.push((k, e));
                failed_dirs[k] = true;
            }
            progress.advance(1, 0);
        }
        drop(cache);
        self.not_ours(&dir_failures);
        self.fail_all(Phase::Stage, dir_failures);
        // Everything inside a directory that failed fails with it (nothing may be created in
        // an entry found at its name: it is not ours).
        let orphaned: Vec<(usize, io::Error)> = (0..actions.len())
            .filter(|&k| !self.failed[k])
            .filter(|&k| matches!(self.staged[k], Staged::Inside(t) if self.failed[t as usize]))
            .map(|k| (k, err_other("parent directory could not be staged")))
            .collect();
        self.fail_all(Phase::Stage, orphaned);
    }

    /// Staging, step 2: files, symlinks and nodes, by several workers (hard-link followers
    /// wait for their leader).
    fn stage_objects(&mut self, pool: &rayon::ThreadPool, progress: &dyn Progress) {
        let actions = &self.plan.actions;
        let work: Vec<usize> = (0..actions.len())
            .filter(|&k| {
                let a = &actions[k];
                staged_op(a)
                    && !self.failed[k]
                    && self.staged[k] != Staged::Not
                    && a.link_to == NONE
                    && self.src[a.src as usize].kind != Kind::Dir
            })
            .collect();
        let bytes = AtomicU64::new(0);
        let errors: Mutex<Vec<(usize, io::Error)>> = Mutex::new(Vec::new());
        {
            let this = &*self;
            pool.install(|| {
                work.par_chunks(32).for_each(|chunk| {
                    let mut scache = DirCache::new(this.src_root.as_fd());
                    let mut dcache = DirCache::new(this.dst_root.as_fd());
                    for &k in chunk {
                        match this.stage_one(k, &mut scache, &mut dcache) {
                            Ok(n) => {
                                bytes.fetch_add(n, Ordering::Relaxed);
                                progress.advance(1, n);
                            }
                            Err(e) => errors.lock().expect("poisoned").push((k, e)),
                        }
                    }
                });
            });
        }
        self.outcome.bytes_written += bytes.into_inner();
        let errors = errors.into_inner().expect("poisoned");
        self.not_ours(&errors);
        self.fail_all(Phase::Stage, errors);
    }

    /// Staging, step 3: hard-link followers, linked to their leader's staged inode.
    fn stage_links(&mut self, progress: &dyn Progress) {
        let actions = &self.plan.actions;
        // Only hard-link groups need it (few): a map over every action was a large transient.
        let leaders: std::collections::HashSet<u32> = actions
            .iter()
            .filter(|a| a.link_to != NONE)
            .map(|a| a.link_to)
            .collect();
        let src_to_action: HashMap<u32, usize> = actions
            .iter()
            .enumerate()
            .filter(|(_, a)| a.src != NONE && staged_op(a) && leaders.contains(&a.src))
            .map(|(k, a)| (a.src, k))
            .collect();
        let mut link_failures = Vec::new();
        let mut cache = DirCache::new(self.dst_root.as_fd());
        for (k, a) in actions.iter().enumerate() {
            if a.link_to == NONE || !staged_op(a) || self.failed[k] {
                continue;
            }
            let Some(loc) = self.loc(k) else { continue };
            let leader = src_to_action[&a.link_to];
            let r = match (self.loc(leader), self.failed[leader]) {
                (Some(lloc), false) => {
                    let (lp, ln) = split_parent(&lloc);
                    let (p, n) = split_parent(&loc);
                    fsx::open_dir_beneath(self.dst_root.as_fd(), lp).and_then(|ld| {
                        let d = cache.get(p)?;
                        fsx::link_at(ld.as_fd(), ln, d, n)
                    })
                }
                _ => Err(err_other("its hard-link leader could not be staged")),
            };
            if let Err(e) = r {
                link_failures.push((k, e));
            }
            progress.advance(1, 0);
        }
        drop(cache);
        self.not_ours(&link_failures);
        self.fail_all(Phase::Stage, link_failures);
    }

    /// Staging, step 4: new directories' metadata, deepest first, now that their contents
    /// are in place.
    fn finish_dirs(&mut self) {
        let actions = &self.plan.actions;
        let mut meta_failures = Vec::new();
        let mut cache = DirCache::new(self.dst_root.as_fd());
        for (k, a) in actions.iter().enumerate().rev() {
            if !staged_op(a) || self.failed[k] || self.src[a.src as usize].kind != Kind::Dir {
                continue;
            }
            let Some(loc) = self.loc(k) else { continue };
            let (p, n) = split_parent(&loc);
            let s = &self.src[a.src as usize];
            let r = cache.get(p).and_then(|d| {
                fsx::set_meta_at(d, n, s, self.opts.meta)?;
                if self.opts.fsync {
                    let sub = fsx::open_dir_beneath(d, n)?;
                    fsx::fsync(sub.as_fd())?;
                }
                Ok(())
            });
            if let Err(e) = r {
                meta_failures.push((k, e));
            }
        }
        drop(cache);
        self.fail_all(Phase::Stage, meta_failures);
    }

    /// Removes what failed entries left at their staging locations — a file, link or node
    /// whose metadata could not be set, a directory that could not be finished — so a failed
    /// entry is neither published half-made (inside a new directory it already has its final
    /// name) nor left under a temporary name. Best effort: the entry is reported already, and
    /// the next run removes any temporary name left.
    fn discard_failed(&self) {
        let mut cache = DirCache::new(self.dst_root.as_fd());
        for k in (0..self.plan.actions.len()).rev() {
            if !self.failed[k] {
                continue;
            }
            if let Some(loc) = self.loc(k) {
                let (p, n) = split_parent(&loc);
                let _ = cache.get(p).and_then(|d| fsx::remove_tree_at(d, n));
            }
        }
    }

    /// Creates one non-directory at its staging location. Returns bytes written.
    fn stage_one(&self, k: usize, scache: &mut DirCache, dcache: &mut DirCache) -> io::Result<u64> {
        let a = &self.plan.actions[k];
        let s = self.src.at(a.src as usize);
        let loc = self.loc(k).expect("has a location");
        let (p, n) = split_parent(&loc);
        match s.kind {
            Kind::File => {
                let mapped = self.src_map.as_ref().map(|m| m.get(&a.src));
                let from: &[u8] = match mapped {
                    Some(Some(p)) => p,
                    Some(None) => return Err(err_other("its old content was not kept")),
                    None => s.path,
                };
                let (sp, sn) = split_parent(from);
                // A live directory (or one staged in it) may have a default ACL that the copy
                // inherits: asked once per directory, and only when xattrs are set at all.
                let bare = !self.opts.meta.xattrs || dcache.makes_bare(p)?;
                let sdir = scache.get(sp)?;
                let ddir = dcache.get(p)?;
                if mapped.is_some() {
                    // Rollback: the kept inode is the old file, complete and on this
                    // filesystem; linking it back writes no data. Copy only across devices.
                    match fsx::link_at(sdir, sn, ddir, n) {
                        // Its metadata is never set in place: the inode may have names
                        // outside the destination (it had them before the sync), and they
                        // would change too. Still as recorded, it is the old entry exactly;
                        // changed since, a copy takes the recorded metadata instead.
                        Ok(()) if self.meta_as_recorded(ddir, n, &s)? => return Ok(0),
                        Ok(()) => fsx::unlink_at(ddir, n)?,
                        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {}
                        Err(e) => return Err(e),
                    }
                }
                let own = self.src_map.is_none();
                let (b, stale) = copy_checked(sdir, sn, ddir, n, s, own, bare, self.opts)?;
                // A source hash found stale is remembered so it is not cached.
                if stale {
                    self.stale.lock().expect("poisoned").push(a.src);
                }
                Ok(b)
            }
            Kind::Symlink => {
                let d = dcache.get(p)?;
                let t = s.target().unwrap_or_default();
                fsx::symlink_at(t, d, n)?;
                fsx::set_meta_at(d, n, &s, self.opts.meta)?;
                Ok(0)
            }
            Kind::Fifo | Kind::Char | Kind::Block | Kind::Socket => {
                let d = dcache.get(p)?;
                fsx::mknod_at(d, n, &s)?;
                fsx::set_meta_at(d, n, &s, self.opts.meta)?;
                Ok(0)
            }
            Kind::Dir => unreachable!("directories are staged separately"),
        }
    }

    /// Has the entry `name` in `dir` the metadata `e` records (as far as this run sets it)?
    fn meta_as_recorded(&self, dir: BorrowedFd<'_>, name: &[u8], e: &Entry) -> io::Result<bool> {
        let mut cur = crate::fsx::entry_from_stat(&fsx::lstat_at(dir, &fsx::cstr(name)?)?);
        if self.opts.meta.xattrs {
            cur.set_xattrs(fsx::read_xattrs_at(dir, name)?);
        }
        let popts = crate::plan::PlanOpts {
            owner: self.opts.meta.owner,
            xattrs: self.opts.meta.xattrs,
        };
        Ok(cur.kind == e.kind && crate::plan::meta_changes(e, &cur, popts) == 0)
    }

    /// Applies metadata-only changes, then publishes staged objects in one burst.
    ///
    /// Metadata changes are in place and atomic per call, so they go first and outside the
    /// switch window. The burst runs in waves — data, libraries and symlinks; then new
    /// directories; then executables — each wave spread over the workers (renames in different
    /// directories do not contend, and the window shrinks with them).
    pub fn commit(&mut self, pool: &rayon::ThreadPool, progress: &dyn Progress) {
        let actions = &self.plan.actions;
        let rank = |a: &Action| {
            let s = &self.src[a.src as usize];
            match s.kind {
                Kind::Dir => 1,
                Kind::File if s.is_executable() => 2,
                _ => 0,
            }
        };
        let mut waves: [Vec<usize>; 3] = Default::default();
        for (k, a) in actions.iter().enumerate() {
            if matches!(a.op, Op::Create | Op::Replace | Op::Exchange)
                && !a.inside
                && !self.failed[k]
                && self.staged[k] != Staged::Not
            {
                waves[rank(a)].push(k);
            }
        }
        let metas: Vec<usize> = (0..actions.len())
            .filter(|&k| {
                actions[k].op == Op::Meta && self.src[actions[k].src as usize].kind != Kind::Dir
            })
            .collect();
        let total = waves.iter().map(Vec::len).sum::<usize>() + metas.len();
        progress.start(Phase::Commit, total as u64);
        let failures: Mutex<Vec<(usize, io::Error)>> = Mutex::new(Vec::new());
        let moved: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());
        let this = &*self;
        pool.install(|| {
            metas.par_chunks(64).for_each(|chunk| {
                let mut cache = DirCache::new(this.dst_root.as_fd());
                for &k in chunk {
                    let a = &actions[k];
                    let s = this.src.at(a.src as usize);
                    let (p, n) = split_parent(s.path);
                    let r = cache.get(p).and_then(|d| {
                        if a.changes & !change::TIME == 0 {
                            // Only the mtime moved (the common case in an upgrade): one call.
                            fsx::set_times_at(d, n, &s)
                        } else {
                            fsx::set_meta_at(d, n, &s, this.opts.meta)
                        }
                    });
                    if let Err(e) = r {
                        failures.lock().expect("poisoned").push((k, e));
                    }
                    progress.advance(1, 0);
                }
            });
        });
        let t0 = Instant::now();
        pool.install(|| {
            for wave in &waves {
                wave.par_chunks(64).for_each(|chunk| {
                    let mut cache = DirCache::new(this.dst_root.as_fd());
                    for &k in chunk {
                        let a = &actions[k];
                        let loc = this.loc(k).expect("staged");
                        let (p, tmp) = split_parent(&loc);
                        let name = split_parent(this.src.path(a.src as usize)).1;
                        let r = cache.get(p).and_then(|d| match a.op {
                            Op::Create => fsx::move_noreplace(d, tmp, d, name),
                            Op::Replace => {
                                fsx::rename_at(d, tmp, d, name)?;
                                // A rollback may link back the very inode the target still
                                // is (a regrouped hard link); rename then succeeds without
                                // moving anything and the staged name must go.
                                if this.src_map.is_some() {
                                    match fsx::unlink_at(d, tmp) {
                                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                                            return Err(e)
                                        }
                                        _ => {}
                                    }
                                }
                                Ok(())
                            }
                            _ => fsx::exchange_between(d, tmp, d, name),
                        });
                        match r {
                            Ok(()) if a.op == Op::Exchange => {
                                moved.lock().expect("poisoned").push(loc.into())
                            }
                            Ok(()) => {}
                            Err(e) => failures.lock().expect("poisoned").push((k, e)),
                        }
                        progress.advance(1, 0);
                    }
                });
            }
        });
        self.outcome.switch_window = t0.elapsed();
        self.moved_aside
            .extend(moved.into_inner().expect("poisoned"));
        for (k, e) in failures.into_inner().expect("poisoned") {
            // A staged object that could not be published is removed in prune, with what the
            // exchanges moved aside, instead of lingering under its temporary name.
            if let Some(loc) = self.loc(k) {
                self.moved_aside.push(loc.into());
            }
            self.fail(k, Phase::Commit, e);
        }
        progress.finish(Phase::Commit);
    }

    /// Removes orphans deepest first, and what exchanges moved aside.
    /// What the run did, with which actions were carried out.
    pub fn into_outcome(mut self) -> Outcome {
        let mut o = std::mem::take(&mut self.outcome);
        o.done = self.failed.iter().map(|f| !f).collect();
        for p in &o.kept {
            // A directory kept because it is not empty was not deleted.
            if let Some(k) = self
                .plan
                .actions
                .iter()
                .position(|a| a.op == Op::Delete && self.dst.path(a.dst as usize) == &p[..])
            {
                o.done[k] = false;
            }
        }
        o
    }

    pub fn prune(&mut self, pool: &rayon::ThreadPool, progress: &dyn Progress) {
        let actions = &self.plan.actions;
        let deletes: Vec<usize> = (0..actions.len())
            .rev()
            .filter(|&k| actions[k].op == Op::Delete && !actions[k].covered)
            .collect();
        progress.start(
            Phase::Prune,
            (deletes.len() + self.moved_aside.len()) as u64,
        );
        let mut cache = DirCache::new(self.dst_root.as_fd());
        let mut failures = Vec::new();
        for loc in std::mem::take(&mut self.moved_aside) {
            let (p, n) = split_parent(&loc);
            if let Err(e) = cache.get(p).and_then(|d| fsx::remove_tree_at(d, n)) {
                self.outcome.errors.push(EntryError {
                    path: loc.clone(),
                    phase: Phase::Prune,
                    error: e,
                });
            }
            progress.advance(1, 0);
        }
        // Files first, spread over the workers (their order does not matter), then directories
        // deepest first, each empty by the time its turn comes.
        let (files, dirs): (Vec<usize>, Vec<usize>) = deletes
            .iter()
            .partition(|&&k| self.dst[actions[k].dst as usize].kind != Kind::Dir);
        let outcomes: Mutex<Vec<(usize, io::Result<()>)>> = Mutex::new(Vec::new());
        let this = &*self;
        pool.install(|| {
            files.par_chunks(64).for_each(|chunk| {
                let mut cache = DirCache::new(this.dst_root.as_fd());
                let mut local = Vec::with_capacity(chunk.len());
                for &k in chunk {
                    let (p, n) = split_parent(this.dst.path(actions[k].dst as usize));
                    local.push((k, cache.get(p).and_then(|dir| fsx::unlink_at(dir, n))));
                    progress.advance(1, 0);
                }
                outcomes.lock().expect("poisoned").extend(local);
            });
        });
        let mut results = outcomes.into_inner().expect("poisoned");
        for &k in &dirs {
            let (p, n) = split_parent(self.dst.path(actions[k].dst as usize));
            results.push((k, cache.get(p).and_then(|dir| fsx::rmdir_at(dir, n))));
            progress.advance(1, 0);
        }
        for (k, r) in results {
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => self
                    .outcome
                    .kept
                    .push(self.dst.path(actions[k].dst as usize).into()),
                // The parent is gone (removed or never openable): nothing left to remove.
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
                Err(e) => failures.push((k, e)),
            }
        }
        drop(cache);
        self.fail_all(Phase::Prune, failures);
        progress.finish(Phase::Prune);
    }

    /// Sets directory metadata bottom-up where contents or metadata changed.
    pub fn finalize(&mut self, progress: &dyn Progress) {
        let actions = &self.plan.actions;
        let mut touched: HashSet<&[u8]> = HashSet::new();
        for a in actions.iter().filter(|a| !a.inside) {
            let p = self.plan.path(a, self.src, self.dst);
            touched.insert(split_parent(p).0);
            if a.op == Op::Meta && self.src[a.src as usize].kind == Kind::Dir {
                touched.insert(p);
            }
        }
        // Only directories that exist in both trees; new ones were finished while staged.
        let mut dirs: Vec<(&[u8], usize, usize)> = Vec::new();
        let mut j = 0;
        for (i, s) in self.src.iter().enumerate() {
            if s.kind != Kind::Dir || !touched.contains(s.path) {
                continue;
            }
            while j < self.dst.len() && self.dst.path(j) < s.path {
                j += 1;
            }
            if j < self.dst.len() && self.dst.path(j) == s.path && self.dst[j].kind == Kind::Dir {
                dirs.push((s.path, i, j));
            }
        }
        progress.start(Phase::Finalize, dirs.len() as u64);
        let popts = crate::plan::PlanOpts {
            owner: self.opts.meta.owner,
            xattrs: self.opts.meta.xattrs,
        };
        let mut cache = DirCache::new(self.dst_root.as_fd());
        for &(path, i, j) in dirs.iter().rev() {
            let s = &self.src[i];
            let r = if path.is_empty() {
                fsx::set_meta_fd(self.dst_root.as_fd(), s, self.opts.meta).and_then(|()| {
                    if self.opts.fsync {
                        fsx::fsync(self.dst_root.as_fd())
                    } else {
                        Ok(())
                    }
                })
            } else {
                let (p, n) = split_parent(path);
                cache.get(p).and_then(|d| {
                    // Usually only the mtime moved (children came and went): one call.
                    if crate::plan::meta_changes(s, &self.dst[j], popts) & !change::TIME == 0 {
                        fsx::set_times_at(d, n, s)?;
                    } else {
                        fsx::set_meta_at(d, n, s, self.opts.meta)?;
                    }
                    if self.opts.fsync {
                        let sub = fsx::open_dir_beneath(d, n)?;
                        fsx::fsync(sub.as_fd())?;
                    }
                    Ok(())
                })
            };
            if let Err(e) = r {
                self.outcome.errors.push(EntryError {
                    path: path.into(),
                    phase: Phase::Finalize,
                    error: e,
                });
            }
            progress.advance(1, 0);
        }
        progress.finish(Phase::Finalize);
    }

    /// Source entries (indices) whose hash from the scan must not be cached: the content
    /// found when copying them was another.
    pub fn stale_hashes(&self) -> Vec<u32> {
        self.stale.lock().expect("poisoned").clone()
    }

    /// Was action `k` carried out?
    pub fn done(&self, k: usize) -> bool {
        !self.failed[k]
    }
}

/// Removes temporary names a killed run left in the destination.
pub fn clean_leftovers(dst_root: BorrowedFd<'_>, leftovers: &[Box<[u8]>]) -> Vec<EntryError> {
    let mut errs = Vec::new();
    for l in leftovers {
        let (p, n) = split_parent(l);
        let r = fsx::open_dir_beneath(dst_root, p).and_then(|d| fsx::remove_tree_at(d.as_fd(), n));
        if let Err(e) = r {
            errs.push(EntryError {
                path: l.clone(),
                phase: Phase::Stage,
                error: e,
            });
        }
    }
    errs
}

/// An error of the source side of a copy (unreadable, or changed by a writer in the jail): the
/// entry's old version may stay, unlike a failure to write the destination.
#[derive(Debug)]
pub(crate) struct SourceSide(String);

impl std::fmt::Display for SourceSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceSide {}

fn source_side(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, SourceSide(msg))
}

/// A copy of an entry's error (`io::Error` is not `Clone`) that keeps its source-side mark.
pub(crate) fn copy_error(e: &io::Error) -> io::Error {
    if is_source_side(e) {
        source_side(e.kind(), e.to_string())
    } else {
        io::Error::new(e.kind(), e.to_string())
    }
}

/// Whether a staging error is about reading the source (its path is then the source's).
pub fn is_source_side(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<SourceSide>())
}

/// Copies a source file into a new file `dname` in `ddir`, refusing to install a copy torn by a writer in the jail: the
/// source's size, mtime and ctime must be what the scan saw and must not move during the
/// copy, and its content must hash the same before and after it (one retry for a change
/// during the copy). `bare`: `ddir` passes no xattrs on ([`fsx::makes_bare`]); otherwise the
/// copy may have inherited a default ACL, which its metadata setting removes when the source
/// lacks it (see [`fsx::strip_acls`] for the rule).
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_checked(
    sdir: BorrowedFd<'_>,
    sname: &[u8],
    ddir: BorrowedFd<'_>,
    dname: &[u8],
    e: Ent<'_>,
    at_own_path: bool,
    bare: bool,
    opts: ApplyOpts,
) -> io::Result<(u64, bool)> {
    let mut stale_hash = false;
    for attempt in 0..2 {
        // Errors are reported under the destination path; say that this one is the jail's.
        let sfd = fsx::open_read_at(sdir, sname)
            .map_err(|e| source_side(e.kind(), format!("cannot open the source file: {e}")))?;
        let before = fsx::fstat(sfd.as_fd())?;
        if fsx::kind_of(before.st_mode) != Kind::File
            || before.st_size as u64 != e.size
            || (at_own_path
                && (before.st_mtime != e.mtime().0 || before.st_mtime_nsec as u32 != e.mtime().1))
        {
            return Err(source_side(
                io::ErrorKind::Other,
                "source changed since it was scanned; left as it was (run again)".into(),
            ));
        }
        // A writer through a shared mapping (a linker writing its output) changes content
        // without moving mtime once its pages are dirty, so the stat check cannot see it:
        // the source must also hash after the copy as it did before. "Before" is the
        // scan's hash on the first attempt (no extra read; it may come from a stale cache,
        // hence the retry hashes afresh). A file with no dirty page now (written long ago,
        // the usual case in a jail) cannot change without moving mtime: no hashing then.
        let quiet = fsx::has_dirty_pages(sfd.as_fd()) == Some(false);
        let want = match e.hash {
            _ if quiet || e.size == 0 => None,
            Some(h) if attempt == 0 && at_own_path => Some(*h),
            _ => Some(hash::hash_fd(sfd.as_fd(), e.size)?.0),
        };
        let dfd = fsx::create_excl_at(ddir, dname)?;
        let r = fsx::copy_data(sfd.as_fd(), dfd.as_fd(), e.size, e.is_sparse());
        let after = fsx::fstat(sfd.as_fd())?;
        let mut stable = before.st_size == after.st_size
            && before.st_mtime == after.st_mtime
            && before.st_mtime_nsec == after.st_mtime_nsec
            && before.st_ctime == after.st_ctime
            && before.st_ctime_nsec == after.st_ctime_nsec;
        if let (true, Ok(_), Some(h)) = (stable, &r, want) {
            stable = hash::hash_fd(sfd.as_fd(), e.size)?.0 == h;
            if !stable && attempt == 0 && e.hash == Some(&h) {
                // Torn while hashed, or a cached hash outlived its content: either way it
                // must not be cached again.
                stale_hash = true;
            }
        }
        match r {
            Ok(n) if stable => {
                if bare {
                    fsx::set_meta_fresh_fd(dfd.as_fd(), &e, opts.meta)?;
                } else {
                    fsx::set_meta_fd(dfd.as_fd(), &e, opts.meta)?;
                }
                if opts.fsync {
                    fsx::fsync(dfd.as_fd())?;
                }
                return Ok((n, stale_hash));
            }
            Ok(_) => {
                drop(dfd);
                fsx::unlink_at(ddir, dname)?;
                if attempt == 1 {
                    return Err(source_side(
                        io::ErrorKind::Other,
                        "source changed while being copied; left as it was".into(),
                    ));
                }
            }
            Err(err) => {
                drop(dfd);
                let _ = fsx::unlink_at(ddir, dname);
                return Err(err);
            }
        }
    }
    unreachable!()
}
