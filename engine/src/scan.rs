//! The parallel walker.
//!
//! Each directory is one task on a dedicated rayon pool (not the one that hashes, so a burst of
//! big files cannot starve the walk). Rayon's per-thread LIFO deques with stealing keep the walk
//! depth-first, which bounds the number of directory fds held open at once, while idle threads
//! steal whole subtrees from the far end. A task lists its directory with `getdents`, `lstat`s
//! every name relative to the directory fd (no path resolution per file), reads symlink targets
//! and xattrs, and hands its entries back in one batch (per-task buffers, one lock per
//! directory). The result is sorted by path bytes, which puts every parent before its children.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use rayon::prelude::*;
use rustix::fs::{self as rfs, Mode, OFlags};

use crate::entry::{join, Ent, Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx::{self, entry_from_stat};

/// `--exclude` patterns with rsync-like meaning: a pattern with no `/` matches a name at any
/// depth; one with a `/` matches the whole relative path (a leading `/` anchors it at the root);
/// a trailing `/` matches directories only. Excluded paths are neither copied nor deleted.
#[derive(Clone, Default)]
pub struct Excludes {
    /// rsync filter rules ([`crate::filter`]), given as [`crate::filter::PREFIX`] strings: an
    /// entry they exclude is excluded whatever the plain patterns say, and so is one a plain
    /// pattern matches whatever the rules say (the program's own patterns are plain).
    rules: crate::filter::Rules,
    names: Option<GlobSet>,
    paths: Option<GlobSet>,
    dir_names: Option<GlobSet>,
    dir_paths: Option<GlobSet>,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> std::result::Result<Self, globset::Error> {
        let (mut names, mut paths, mut dnames, mut dpaths) = (vec![], vec![], vec![], vec![]);
        let mut rules = crate::filter::Rules::default();
        for p in patterns {
            if let Some(rule) = p.strip_prefix(crate::filter::PREFIX) {
                // The CLI checks each rule before it gets here; one that is still bad (a
                // hand-edited record) fails as an unclosed glob that names it.
                match crate::filter::parse(rule) {
                    Ok(line) => rules.push(line),
                    Err(_) => return Err(Glob::new(&format!("{p} [bad rule")).unwrap_err()),
                }
                continue;
            }
            let (p, dir_only) = match p.strip_suffix('/') {
                Some(s) => (s, true),
                None => (p.as_str(), false),
            };
            let anchored = p.contains('/');
            let p = p.trim_start_matches('/');
            let g: Glob = GlobBuilder::new(p).literal_separator(true).build()?;
            match (anchored, dir_only) {
                (false, false) => names.push(g),
                (true, false) => paths.push(g),
                (false, true) => dnames.push(g),
                (true, true) => dpaths.push(g),
            }
        }
        let build = |v: Vec<Glob>| -> std::result::Result<Option<GlobSet>, globset::Error> {
            if v.is_empty() {
                return Ok(None);
            }
            let mut b = GlobSetBuilder::new();
            for g in v {
                b.add(g);
            }
            b.build().map(Some)
        };
        Ok(Excludes {
            rules,
            names: build(names)?,
            paths: build(paths)?,
            dir_names: build(dnames)?,
            dir_paths: build(dpaths)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.names.is_none()
            && self.paths.is_none()
            && self.dir_names.is_none()
            && self.dir_paths.is_none()
    }

    pub fn matches(&self, path: &[u8], name: &[u8], is_dir: bool) -> bool {
        let m = |s: &Option<GlobSet>, b: &[u8]| s.as_ref().is_some_and(|s| s.is_match(fsx::os(b)));
        self.rules.decide(path, name, is_dir) == Some(true)
            || m(&self.names, name)
            || m(&self.paths, path)
            || (is_dir && (m(&self.dir_names, name) || m(&self.dir_paths, path)))
    }
}

pub struct ScanOpts<'a> {
    pub excludes: &'a Excludes,
    pub xattrs: bool,
    /// Leave every entry's xattrs (but the root's) to [`read_xattrs`], after the stat cache
    /// has vouched for those it can: a no-op sync then lists no file's xattrs.
    pub defer_xattrs: bool,
    /// Temporary names an earlier run recorded making in this tree (sorted; see
    /// [`crate::journal::StateDir::staged_names`]): found, they are leftovers to remove.
    pub ours: &'a [Box<[u8]>],
    /// Mount points below the tree (relative, sorted): another filesystem's, never this
    /// tree's content. Not listed, not descended into, on either side (as `rsync -x` keeps to
    /// one filesystem); their parents are kept as an excluded entry's are, and the switch
    /// goes around them ([`crate::steps`]).
    pub mounts: &'a [Box<[u8]>],
}

/// What a walk found.
#[derive(Default)]
pub struct Scan {
    /// Sorted by path; the root is first with an empty path.
    pub entries: Entries,
    /// Entries that could not be read, with the cause.
    pub errors: Vec<(Box<[u8]>, io::Error)>,
    /// Directories whose listing is incomplete: nothing below them may be treated as absent.
    pub incomplete: Vec<Box<[u8]>>,
    /// Temporary names left by an interrupted run (only names it recorded: see `ours`).
    pub leftovers: Vec<Box<[u8]>>,
    /// The top of the tree holds [`crate::names::STORE_NAME`]: a rollback store, never part of a tree.
    pub holds_store: bool,
    /// Directories that directly hold an excluded entry: they, and their ancestors, must not
    /// be deleted (an excluded path is neither copied nor deleted).
    pub holds_excluded: Vec<Box<[u8]>>,
    /// Names that were listed but gone before they could be read: a jail changing under the
    /// scan (a build deleting and recreating a file). Their counterparts in the other tree
    /// must not be taken for orphans on the strength of a moment's absence.
    pub vanished: Vec<Box<[u8]>>,
}

struct Ctx<'a> {
    opts: &'a ScanOpts<'a>,
    /// Every task appends its entries here. One list grown by doubling costs no copies and no
    /// more resident memory than its entries: past the allocator's mmap threshold it grows by
    /// `mremap`, and the unused tail is never touched. (Per-task lists joined at the end held
    /// every entry twice at the peak.)
    out: Mutex<Scan>,
}

/// Walks the tree at `root` on `pool`.
pub fn scan_tree(root: &Path, pool: &rayon::ThreadPool, opts: &ScanOpts<'_>) -> Result<Scan> {
    let fd = fsx::open_root(root).at(root)?;
    let st = fsx::fstat(fd.as_fd()).at(root)?;
    let mut top = entry_from_stat(&st);
    if top.kind != Kind::Dir {
        return Err(Error::bad(root, "not a directory"));
    }
    if opts.xattrs {
        top.set_xattrs(fsx::read_xattrs_at(fd.as_fd(), b".").at(root)?);
    }
    let ctx = Ctx {
        opts,
        out: Mutex::new(Scan::default()),
    };
    let fd = Arc::new(fd);
    pool.scope(|s| walk_dir(s, fd, Vec::new(), &ctx));
    let mut scan = ctx.out.into_inner().expect("walker panicked");
    scan.entries.push(b"", top);
    scan.entries.sort_by_path();
    scan.leftovers.sort();
    // A wide directory's chunks may each have reported it.
    for v in [&mut scan.holds_excluded, &mut scan.incomplete] {
        v.sort();
        v.dedup();
    }
    Ok(scan)
}

/// Above this many names a directory's `lstat`s are split into tasks of this size, so one
/// wide directory (`lib/`, `share/man/man3`) does not keep the other workers idle.
const WIDE: usize = 2048;

fn walk_dir<'s>(s: &rayon::Scope<'s>, dir: Arc<OwnedFd>, rel: Vec<u8>, ctx: &'s Ctx<'s>) {
    let mut names = match fsx::list_dir(dir.as_fd()) {
        Ok(n) => n,
        Err(e) => {
            let mut out = ctx.out.lock().expect("poisoned");
            out.errors.push((rel.clone().into(), e));
            out.incomplete.push(rel.into());
            return;
        }
    };
    crate::progress::work(1);
    let rel: Arc<[u8]> = rel.into();
    while names.len() > WIDE {
        let chunk = names.split_off(names.len() - WIDE);
        let (dir, rel) = (dir.clone(), rel.clone());
        s.spawn(move |s| stat_names(s, &dir, &rel, chunk, ctx));
    }
    stat_names(s, &dir, &rel, names, ctx);
}

fn open_and_walk<'s>(
    s: &rayon::Scope<'s>,
    parent: &OwnedFd,
    name: std::ffi::CString,
    rel: Vec<u8>,
    ctx: &'s Ctx<'s>,
) {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rfs::openat(parent.as_fd(), name.as_c_str(), flags, Mode::empty()) {
        Ok(sub) => walk_dir(s, Arc::new(sub), rel, ctx),
        Err(err) => {
            let mut out = ctx.out.lock().expect("poisoned");
            out.errors.push((rel.clone().into(), io::Error::from(err)));
            out.incomplete.push(rel.into());
        }
    }
}

/// `lstat`s `names` in `dir` (at `rel`), spawning a walk for every subdirectory, and hands the
/// entries over in one batch.
fn stat_names<'s>(
    s: &rayon::Scope<'s>,
    dir: &Arc<OwnedFd>,
    rel: &[u8],
    names: Vec<Vec<u8>>,
    ctx: &'s Ctx<'s>,
) {
    let mut local = Entries::new();
    let mut errors: Vec<(Box<[u8]>, io::Error)> = Vec::new();
    let mut leftovers = Vec::new();
    let mut vanished = Vec::new();
    let mut incomplete = false;
    let mut holds_excluded = false;
    let mut holds_store = false;
    // One step per name, counted once per chunk: a shared counter bumped per name would bounce
    // its cache line between every walker thread.
    crate::progress::work(names.len() as u64);
    for name in names {
        let path = join(rel, &name);
        let ours = || {
            ctx.opts
                .ours
                .binary_search_by(|p| p[..].cmp(&path[..]))
                .is_ok()
        };
        if crate::names::is_tmp_name(&name) && ours() {
            leftovers.push(path.into_boxed_slice());
            continue;
        }
        let cname = match fsx::cstr(&name) {
            Ok(c) => c,
            Err(e) => {
                errors.push((path.into(), e));
                continue;
            }
        };
        let st = match fsx::lstat_at(dir.as_fd(), &cname) {
            Ok(st) => st,
            // Vanished between listing and stat: not there now, but maybe back in a moment.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                vanished.push(path.into_boxed_slice());
                continue;
            }
            Err(e) => {
                errors.push((path.into(), e));
                incomplete = true;
                continue;
            }
        };
        if crate::names::is_ours(&name, &st) {
            // A home (or an older version's per-file store) at the top is where this tree's runs keep
            // its own: not part of the tree, on either side. One deeper is a nested tree's:
            // not this tree's content either, but kept where it is, as an excluded entry is
            // (the next tree links it across).
            if rel.is_empty()
                && (name == crate::names::IN_TREE_HOME || name == crate::names::STORE_NAME)
            {
                holds_store |= name == crate::names::STORE_NAME;
            } else {
                holds_excluded = true;
            }
            continue;
        }
        let mut e = entry_from_stat(&st);
        let is_dir = e.kind == Kind::Dir;
        let mounted = || {
            ctx.opts
                .mounts
                .binary_search_by(|m| (**m).cmp(&path[..]))
                .is_ok()
        };
        if (is_dir && !ctx.opts.mounts.is_empty() && mounted())
            || (!ctx.opts.excludes.is_empty() && ctx.opts.excludes.matches(&path, &name, is_dir))
        {
            holds_excluded = true;
            continue;
        }
        if e.kind == Kind::Symlink {
            match fsx::read_link_at(dir.as_fd(), &cname) {
                Ok(t) => e.set_target(Some(t.into_boxed_slice())),
                Err(err) => {
                    errors.push((path.into(), err));
                    continue;
                }
            }
        }
        if ctx.opts.xattrs && !ctx.opts.defer_xattrs {
            match fsx::read_xattrs_at(dir.as_fd(), &name) {
                Ok(x) => e.set_xattrs(x),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    vanished.push(path.into());
                    continue;
                }
                Err(err) => {
                    errors.push((path.into(), err));
                    continue;
                }
            }
        }
        if is_dir {
            // Opened when the task runs, not now: a directory with thousands of subdirectories
            // would otherwise hold one fd per queued task and run out of descriptors.
            let (parent, child_rel) = (dir.clone(), path.clone());
            s.spawn(move |s| open_and_walk(s, &parent, cname, child_rel, ctx));
        }
        local.push(&path, e);
    }
    let mut out = ctx.out.lock().expect("poisoned");
    out.entries.append(&mut local);
    out.errors.append(&mut errors);
    out.leftovers.append(&mut leftovers);
    out.vanished.append(&mut vanished);
    if holds_excluded {
        out.holds_excluded.push(rel.into());
    }
    out.holds_store |= holds_store;
    if incomplete {
        out.incomplete.push(rel.into());
    }
}

/// Reads the xattrs the scan deferred, for every entry but the root and those `known` marks
/// (the stat cache vouched for them), in runs of path order with each directory opened once.
/// As in the walk, an entry gone by now is dropped and listed as vanished, one that cannot be
/// read is dropped and listed as an error, and a directory goes with everything below it.
pub fn read_xattrs(
    root: &Path,
    scan: &mut Scan,
    known: &[bool],
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let rootfd = fsx::open_root(root).at(root)?;
    let Scan {
        entries,
        errors,
        vanished,
        ..
    } = scan;
    let need = (1..entries.len()).filter(|&i| !known.get(i).copied().unwrap_or(false));
    let mut dropped: Vec<Box<[u8]>> = Vec::new();
    in_dir_runs(
        rootfd.as_fd(),
        entries,
        need,
        pool,
        |dir, e| fsx::read_xattrs_at(dir, e.name()),
        |es, i, r| match r {
            Ok(x) => es[i].set_xattrs(x),
            Err(e) => {
                let p: Box<[u8]> = es.path(i).into();
                if e.kind() == io::ErrorKind::NotFound {
                    vanished.push(p.clone());
                } else {
                    errors.push((p.clone(), e));
                }
                dropped.push(p);
            }
        },
    );
    if !dropped.is_empty() {
        // Checked by ancestors, not pairwise: thousands of unreadable entries stay cheap.
        let gone: std::collections::HashSet<Box<[u8]>> = dropped.into_iter().collect();
        entries.retain(|e| {
            let mut p: &[u8] = e.path;
            while !p.is_empty() {
                if gone.contains(p) {
                    return false;
                }
                p = fsx::split_parent(p).0;
            }
            true
        });
    }
    Ok(())
}

/// Entries handled per round of [`in_dir_runs`]: enough to keep every worker busy, few enough
/// that their results cost little memory (one per entry of a large tree did).
const BLOCK: usize = 8192;

/// Runs `f` on each of `need` (indices into `entries`, in path order) in parallel, given the
/// entry's directory opened beneath `root`: runs of neighbours share one open instead of a walk
/// down per entry. A directory that cannot be opened is every one of its entries' error. The
/// results go to `done` on the calling thread, a block at a time.
pub fn in_dir_runs<T: Send>(
    root: BorrowedFd<'_>,
    entries: &mut Entries,
    need: impl Iterator<Item = usize>,
    pool: &rayon::ThreadPool,
    f: impl Fn(BorrowedFd<'_>, Ent<'_>) -> io::Result<T> + Sync,
    mut done: impl FnMut(&mut Entries, usize, io::Result<T>),
) {
    let mut need = need.peekable();
    let mut block = Vec::with_capacity(BLOCK);
    while need.peek().is_some() {
        block.clear();
        block.extend(need.by_ref().take(BLOCK));
        let es = &*entries;
        let results: Vec<(usize, io::Result<T>)> = pool.install(|| {
            block
                .par_chunks(32)
                .flat_map_iter(|chunk| {
                    let mut dir: Option<(&[u8], io::Result<OwnedFd>)> = None;
                    let mut out = Vec::with_capacity(chunk.len());
                    for &i in chunk {
                        let e = es.at(i);
                        let parent = fsx::split_parent(e.path).0;
                        if dir.as_ref().is_none_or(|(p, _)| *p != parent) {
                            dir = Some((parent, fsx::open_dir_beneath(root, parent)));
                        }
                        let r = match &dir.as_ref().expect("just set").1 {
                            Ok(d) => f(d.as_fd(), e),
                            Err(err) => Err(err.raw_os_error().map_or_else(
                                || io::Error::other(err.to_string()),
                                io::Error::from_raw_os_error,
                            )),
                        };
                        out.push((i, r));
                    }
                    out
                })
                .collect()
        });
        for (i, r) in results {
            done(entries, i, r);
        }
    }
}

/// Is `path` at or below one of the (sorted) `dirs`?
pub fn under_any(dirs: &[Box<[u8]>], path: &[u8]) -> bool {
    dirs.iter().any(|d| {
        d.is_empty() || (path.starts_with(d) && (path.len() == d.len() || path[d.len()] == b'/'))
    })
}
