//! Orchestration: one or more (source, destination) tree pairs through scan, hash, plan and the
//! staged pipeline.
//!
//! `sync` is one pair; `upgrade` is several, and the order across pairs matters: every tree is
//! staged before any is committed (a failure while staging leaves the live system untouched),
//! commits run in the order given (the package database last, so it never lists a package whose
//! files are not yet in place), and orphans are pruned only after every commit.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apply::Outcome;
use crate::cache;
use crate::entry::{Ent, Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::hash;
use crate::journal::{check_outside, Lock, StateDir};
use crate::manifest::Manifest;
use crate::paths::{self, Follow};
use crate::plan::{self, Op, Plan, PlanOpts};
use crate::progress::{Phase, Progress};
use crate::scan::{self, Scan, ScanOpts};
use crate::switch::{Home, Method};

pub use crate::opts::{Pools, SyncOpts};

mod checks;

use checks::refuse_source_in_home;
pub use checks::{check_disjoint, check_pair, check_tree, follow_dst};

/// One (source, destination) pair after scanning and planning.
pub struct Tree {
    pub src_path: PathBuf,
    pub dst_path: PathBuf,
    pub src: Entries,
    pub dst: Entries,
    pub plan: Plan,
    /// Entries that could not be read while scanning or hashing (source or destination).
    pub scan_errors: Vec<(PathBuf, io::Error)>,
    pub src_stamp: (i64, u32),
    pub dst_stamp: (i64, u32),
    pub hashed_bytes: u64,
    pub cache_hits: usize,
    /// Per side (source, destination): entries in the cache as loaded, and files hashed now.
    /// A cache whose every entry was reused and nothing new hashed is not rewritten.
    pub(crate) cache_loaded: [Option<usize>; 2],
    pub(crate) hashed: [usize; 2],
    pub(crate) dst_leftovers: Vec<Box<[u8]>>,
    /// Live directories holding excluded entries (the next tree must keep those).
    pub(crate) dst_holds_excluded: Vec<Box<[u8]>>,
    /// `--quick` pairs taken as the same unread (source indices, sorted): the next tree links
    /// the live file, so the source's hash must never be recorded for it.
    pub(crate) quick_same: Vec<u32>,
    /// Where and how the tree is switched (None: dry run or no state).
    pub home: Option<Home>,
    _lock: Option<Lock>,
    /// What the rollback generation names as the source, when not `src_path` (push: the
    /// pushing host's jail, not the shadow the files were staged from).
    pub source_label: Option<PathBuf>,
    /// Live paths the admin owns (protected configuration), looked at once more just before
    /// the switch: a change since the scan switches nothing (see `guard`).
    pub guard: Vec<Box<[u8]>>,
    /// The protection rules and the tree's root-relative name, for protected entries that
    /// appear after the scan (see `guard`).
    pub protect: Option<(crate::protect::Rules, Vec<u8>)>,
    /// `--switch` asks for another kind than DST is (a directory to become a switch link, or
    /// back): the tree is switched even with nothing to change.
    pub converts: bool,
}

impl Tree {
    /// Lets go of the destination's lock once its switch is done (push: before a tree nested
    /// in it is prepared, as `upgrade`'s next phase is).
    pub fn unlock(&mut self) {
        self._lock = None;
    }
}

/// What a whole run did.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    /// Things the user should know that are not errors of an entry.
    pub notes: Vec<String>,
    pub elapsed: Duration,
    pub switch_window: Duration,
    /// Per tree, for trees switched whole: how, and what became of the old tree.
    pub switches: Vec<Option<SwitchInfo>>,
    /// Processes still using files of an old tree after the switch.
    pub procs: Vec<crate::procs::ProcUse>,
    /// Why nothing was switched (a tree failed to stage); the live trees are untouched.
    pub aborted: Option<String>,
    /// Time spent before the first switch (staging) and after the last (cleanup).
    pub stage_time: Duration,
    pub cleanup_time: Duration,
}

/// How one tree was switched.
#[derive(Debug, Clone)]
pub struct SwitchInfo {
    pub method: Method,
    pub window: Duration,
    pub calls: usize,
    /// The rollback generation the old tree became (None with `--keep 0`).
    pub generation: Option<u64>,
    pub generation_path: Option<PathBuf>,
    pub linked: u64,
    /// Old-only setuid/setgid files or file capabilities defanged in the generation.
    pub defanged: usize,
}

impl Report {
    pub fn bytes_written(&self) -> u64 {
        self.outcomes.iter().map(|o| o.bytes_written).sum()
    }
}

/// Scans both trees, hashes what must be compared, and plans. Takes the destination's lock
/// (unless `state` is `None`, as for `verify`).
pub fn prepare(
    src_path: &Path,
    dst_path: &Path,
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Tree> {
    prepare_impl(src_path, None, dst_path, state, opts, pools, progress)
}

/// [`prepare`] with the source's entries given (every file's hash known), not scanned: for a
/// remote whose source is a manifest sent by `push`. `src_path` must hold, under their paths,
/// every file the plan copies (see `remote::serve`).
pub fn prepare_given(
    src_path: &Path,
    src: Manifest,
    dst_path: &Path,
    state: &StateDir,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Tree> {
    prepare_impl(
        src_path,
        Some(src),
        dst_path,
        Some(state),
        opts,
        pools,
        progress,
    )
}

fn prepare_impl(
    src_path: &Path,
    given: Option<Manifest>,
    dst_path: &Path,
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Tree> {
    progress.tree(dst_path);
    let (lock, home) = open_destination(src_path, dst_path, state, opts)?;
    let mut sc = scan_both(src_path, given, dst_path, state, opts, pools, progress)?;
    if let Some(h) = home.as_ref() {
        let kept = crate::generation::kept_inodes(h);
        crate::generation::discount_own_links(&mut sc.d.entries, &kept);
    }
    progress.finish(Phase::Scan);
    fsx::release_freed_memory();
    opts.check_stop(dst_path, "while scanning: nothing was changed")?;
    let (protect, mut scan_errors) = unreadable(&mut sc, src_path, dst_path);
    let quick = opts
        .quick
        .then(|| crate::quick::same_by_stat(&sc.s.entries, &sc.d.entries));
    let (hashed_bytes, hashed) = hash_both(
        &mut sc,
        src_path,
        dst_path,
        quick.as_ref(),
        pools,
        progress,
        &mut scan_errors,
    )?;
    opts.check_stop(dst_path, "while hashing: nothing was changed")?;
    let Scanned { s, d, .. } = &mut sc;
    let mut plan = plan::plan(
        &s.entries,
        &d.entries,
        PlanOpts {
            owner: opts.owner,
            xattrs: opts.xattrs,
        },
    );
    if let Some(q) = &quick {
        crate::quick::withdraw_content(&mut plan, q);
    }
    protect_unreadable(&mut plan, &d.entries, &protect);
    let converts = converts(dst_path, opts);
    let home = home_for_plan(home, dst_path, (&s.entries, &d.entries), &plan, state, opts)?;
    let dst_holds_excluded = d.holds_excluded.clone();
    for p in crate::excluded::keep_excluded_parents(&mut plan, &d.entries, &d.holds_excluded) {
        scan_errors.push((
            dst_path.join(fsx::os(&p)),
            io::Error::other("not replaced by a non-directory: it holds excluded entries"),
        ));
    }
    let Scanned {
        s,
        d,
        src_stamp,
        dst_stamp,
        cache_hits,
        cache_loaded,
    } = sc;
    Ok(Tree {
        src_path: src_path.into(),
        dst_path: dst_path.into(),
        src: s.entries,
        dst: d.entries,
        plan,
        scan_errors,
        src_stamp,
        dst_stamp,
        hashed_bytes,
        cache_hits,
        cache_loaded,
        hashed,
        dst_leftovers: d.leftovers,
        dst_holds_excluded,
        quick_same: quick.map_or_else(Vec::new, crate::quick::sorted),
        home,
        _lock: lock,
        source_label: None,
        guard: Vec::new(),
        protect: None,
        converts,
    })
}

/// The destination opened for a run: locked (a dry run only checks no run holds it), a tree a
/// killed run left aside put back, made if missing, and its home opened if a run made one: a
/// switch a killed run left half done is finished before anything is read, and a staging area
/// inside the tree must not be scanned as part of it. A home not made yet is made only once
/// the plan has something to switch (see [`home_for_plan`]): a run with nothing to do writes
/// nothing, not even in DST's parent.
fn open_destination(
    src_path: &Path,
    dst_path: &Path,
    state: Option<&StateDir>,
    opts: &SyncOpts,
) -> Result<(Option<Lock>, Option<Home>)> {
    let lock = match state {
        Some(s) if !opts.dry_run => Some(Lock::acquire(s, dst_path)?),
        // A dry run locks nothing, but reading a tree a run is changing gives only noise.
        Some(s) => {
            Lock::probe(s, dst_path)?;
            None
        }
        _ => None,
    };
    if lock.is_some() {
        // Put back a tree a killed run left aside (portable layer only; see the function).
        crate::switch::restore_live_aside(dst_path)?;
    }
    if !dst_path.exists() && !opts.dry_run {
        fs::create_dir_all(dst_path).at(dst_path)?;
    }
    refuse_source_in_home(src_path, dst_path)?;
    let home = match state {
        Some(_) if !opts.dry_run && Home::exists(dst_path) => {
            Some(open_home(dst_path, opts, state)?)
        }
        _ => None,
    };
    Ok((lock, home))
}

/// Entries that could not be read, with the cause.
type ScanErrors = Vec<(PathBuf, io::Error)>;

/// Both trees as scanned, with their stat caches applied.
struct Scanned {
    s: Scan,
    d: Scan,
    src_stamp: (i64, u32),
    dst_stamp: (i64, u32),
    cache_hits: usize,
    cache_loaded: [Option<usize>; 2],
}

/// Scans both trees at once (the source may come as a manifest instead), then fills in the
/// hashes and xattrs their stat caches may vouch for (the racy-git rules of `cache`).
fn scan_both(
    src_path: &Path,
    given: Option<Manifest>,
    dst_path: &Path,
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Scanned> {
    // DST's mount points are another filesystem's: left out on both sides.
    let mounts = crate::jail::mountinfo::points_below(
        &crate::paths::release_path(dst_path).unwrap_or_else(|| dst_path.to_path_buf()),
    );
    let sopts = ScanOpts {
        excludes: &opts.excludes,
        xattrs: opts.xattrs,
        defer_xattrs: true,
        ours: &[],
        mounts: &mounts,
    };
    // Only names an earlier run recorded are its leftovers; the source has none.
    let ours = state.map(|s| s.staged_names(dst_path)).unwrap_or_default();
    let dopts = ScanOpts {
        ours: &ours,
        ..sopts
    };
    progress.start(Phase::Scan, 0);
    let src_stamp = cache::now();
    let dst_exists = dst_path.exists();
    let given_stamp = given.as_ref().map(|m| m.stamp);
    let given_src = given.map(|m| Scan {
        entries: m.entries,
        ..Scan::default()
    });
    let (s, d) = rayon::join(
        || match given_src {
            Some(s) => Ok(s),
            None => scan::scan_tree(src_path, &pools.walk, &sopts),
        },
        || {
            if dst_exists {
                scan::scan_tree(dst_path, &pools.walk, &dopts).map(Some)
            } else {
                Ok(None)
            }
        },
    );
    let dst_stamp = src_stamp;
    let src_stamp = given_stamp.unwrap_or(src_stamp);
    let mut s = s?;
    let mut d = d?;
    let mut cache_hits = 0;
    let mut cache_loaded = [None, None];
    let src_scan = given_stamp.is_none().then_some(&mut s);
    for (k, (tree, scan)) in [(src_path, src_scan), (dst_path, d.as_mut())]
        .into_iter()
        .enumerate()
    {
        if let Some(scan) = scan {
            if let Some(f) = fill_and_read_xattrs(tree, scan, state, opts, pools)? {
                cache_hits += f.hits;
                // A cache that could not vouch for xattrs it was asked for is rewritten.
                if !opts.xattrs || f.xattrs_complete {
                    cache_loaded[k] = Some(f.records);
                }
            }
        }
    }
    let d = match d {
        Some(d) => d,
        None => empty_scan(&s),
    };
    Ok(Scanned {
        s,
        d,
        src_stamp,
        dst_stamp,
        cache_hits,
        cache_loaded,
    })
}

/// What could not be read: the source entries whose live counterparts must be left as they
/// are (returned first), and every error to report. The top of a tree may hold a rollback
/// store, never synced: one in the jail is reported (never dropped silently), one in the
/// destination kept. A source entry gone between listing and stat is reported and its live
/// counterpart left as it was; a destination entry gone is simply not there.
fn unreadable(sc: &mut Scanned, src_path: &Path, dst_path: &Path) -> (Vec<Box<[u8]>>, ScanErrors) {
    let s = &mut sc.s;
    if s.holds_store {
        s.errors.push((
            crate::names::STORE_NAME.into(),
            io::Error::other("name reserved for jailsync's rollback store; not synced"),
        ));
    }
    let mut protect: Vec<Box<[u8]>> = s.incomplete.clone();
    protect.extend(s.errors.iter().map(|(p, _)| p.clone()));
    protect.extend(s.vanished.iter().cloned());
    let mut scan_errors = Vec::new();
    for p in &s.vanished {
        scan_errors.push((
            src_path.join(fsx::os(p)),
            io::Error::other("vanished while being scanned; its live version is left (run again)"),
        ));
    }
    take_errors(&mut scan_errors, src_path, s);
    take_errors(&mut scan_errors, dst_path, &mut sc.d);
    (protect, scan_errors)
}

/// Hashes what the plan needs and no cache vouched for (with `--quick`, not what the stats
/// already pair): returns the bytes hashed and the files hashed per side.
fn hash_both(
    sc: &mut Scanned,
    src_path: &Path,
    dst_path: &Path,
    quick: Option<&std::collections::HashSet<u32>>,
    pools: &Pools,
    progress: &dyn Progress,
    scan_errors: &mut ScanErrors,
) -> Result<(u64, [usize; 2])> {
    let (s, d) = (&mut sc.s, &mut sc.d);
    let (mut sn, mut dn) = plan::hash_needs(&s.entries, &d.entries);
    if let Some(q) = quick {
        crate::quick::skip_hashing(&mut sn, q, &s.entries, &d.entries, true);
        crate::quick::skip_hashing(&mut dn, q, &s.entries, &d.entries, false);
    }
    progress.start(Phase::Hash, (sn.len() + dn.len()) as u64);
    progress.total_bytes(
        sn.iter().map(|&i| s.entries[i as usize].size).sum::<u64>()
            + dn.iter().map(|&i| d.entries[i as usize].size).sum::<u64>(),
    );
    let mut hashed_bytes = 0;
    let hashed = [sn.len(), dn.len()];
    for (root, entries, need) in [
        (src_path, &mut s.entries, sn),
        (dst_path, &mut d.entries, dn),
    ] {
        let need = need.iter().map(|&i| i as usize);
        let (bytes, errs) = hash_entries(root, entries, need, &pools.work, progress)?;
        hashed_bytes += bytes;
        scan_errors.extend(errs);
    }
    progress.finish(Phase::Hash);
    fsx::release_freed_memory();
    Ok((hashed_bytes, hashed))
}

/// Whether `--switch` asks `dst_path` to change kind (see [`Tree::converts`]).
fn converts(dst_path: &Path, opts: &SyncOpts) -> bool {
    let link = crate::paths::is_switch_link(dst_path);
    !opts.dry_run
        && opts
            .switch
            .is_some_and(|b| (b == crate::opts::SwitchBy::Link) != link)
}

/// The home once the plan is known: made now if the plan has something to switch and none
/// exists yet. An immutable or append-only live directory the plan leaves alone is a bound
/// the switch goes around; one the plan would change (or change below) is refused.
fn home_for_plan(
    home: Option<Home>,
    dst_path: &Path,
    trees: (&Entries, &Entries),
    plan: &Plan,
    state: Option<&StateDir>,
    opts: &SyncOpts,
) -> Result<Option<Home>> {
    let mut home = home;
    let switches = !plan.is_empty() || converts(dst_path, opts);
    if home.is_none() && state.is_some() && !opts.dry_run && switches {
        home = Some(open_home(dst_path, opts, state)?);
    }
    if let Some(h) = home.as_mut().filter(|_| !plan.is_empty()) {
        h.pinned = pinned(dst_path, trees, plan)?;
    }
    Ok(home)
}

/// Opens (making it if need be) the home of `dst_path`, finishing or discarding what a killed
/// run left there.
fn open_home(dst_path: &Path, opts: &SyncOpts, state: Option<&StateDir>) -> Result<Home> {
    let mut h = Home::open_as(dst_path, opts.switch)?;
    h.durable = opts.fsync;
    crate::generation::recover(&h, state)?;
    crate::generation::prune_undone(&h)?;
    Ok(h)
}

/// Gives a prepared tree its home if it has none yet (a tree with nothing to do is prepared
/// without one): for `push`, whose session keeps its received files in every tree's home.
pub fn ensure_home(t: &mut Tree, opts: &SyncOpts) -> Result<()> {
    if t.home.is_none() && !opts.dry_run {
        // A home made now has nothing of a killed run to finish.
        t.home = Some(open_home(&t.dst_path, opts, None)?);
    }
    Ok(())
}

/// Scans one tree on its own and fills in the hashes its stat cache may vouch for. Returns the
/// scan, when its stats were taken, the entries that could not be read, and the cache hits.
type OneScan = (Scan, (i64, u32), Vec<(PathBuf, io::Error)>, usize);
fn scan_one(
    root: &Path,
    mounts: &[Box<[u8]>],
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<OneScan> {
    let ours = state.map(|s| s.staged_names(root)).unwrap_or_default();
    let sopts = ScanOpts {
        excludes: &opts.excludes,
        xattrs: opts.xattrs,
        defer_xattrs: true,
        ours: &ours,
        mounts,
    };
    let stamp = cache::now();
    progress.start(Phase::Scan, 0);
    let mut s = scan::scan_tree(root, &pools.walk, &sopts)?;
    let hits = fill_and_read_xattrs(root, &mut s, state, opts, pools)?.map_or(0, |f| f.hits);
    progress.finish(Phase::Scan);
    let mut errors = Vec::new();
    take_errors(&mut errors, root, &mut s);
    Ok((s, stamp, errors, hits))
}

/// Fills what the tree's stat cache vouches for (hashes, and xattrs), then reads the xattrs
/// the scan deferred for every other entry. A corrupt or other-version cache is ignored: it
/// can only cost a re-hash.
fn fill_and_read_xattrs(
    root: &Path,
    scan: &mut Scan,
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
) -> Result<Option<cache::Filled>> {
    let filled = match (state, opts.checksum) {
        (Some(state), false) => state
            .cache_path(root)
            .ok()
            .and_then(|p| cache::fill_from_file(&p, &mut scan.entries, opts.xattrs)),
        _ => None,
    };
    if opts.xattrs {
        let known = filled.as_ref().map_or(&[][..], |f| &f.xattrs_known[..]);
        scan::read_xattrs(root, scan, known, &pools.walk)?;
    }
    Ok(filled)
}

/// Like [`prepare`] for `verify` against a manifest: the manifest's entries stand for the
/// source (their hashes as recorded); only the destination is scanned and hashed.
pub fn prepare_from_manifest(
    manifest_path: &Path,
    m: Manifest,
    dst_path: &Path,
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Tree> {
    // `manifest::parse` made sure the root `.` is its first entry, a directory.
    let mounts = crate::jail::mountinfo::points_below(
        &crate::paths::release_path(dst_path).unwrap_or_else(|| dst_path.to_path_buf()),
    );
    let (mut d, stamp, mut scan_errors, cache_hits) =
        scan_one(dst_path, &mounts, state, opts, pools, progress)?;
    let mut src = m.entries;
    let under_mount = |p: &[u8]| mounts.iter().any(|m| crate::entry::at_or_below(p, m));
    if !opts.excludes.is_empty() || !mounts.is_empty() {
        src.retain(|e| {
            e.path.is_empty()
                || !(under_mount(e.path)
                    || opts.excludes.matches(e.path, e.name(), e.kind == Kind::Dir))
        });
    }
    let (_, dn) = plan::hash_needs(&src, &d.entries);
    progress.start(Phase::Hash, dn.len() as u64);
    let need = dn.iter().map(|&i| i as usize);
    let (hashed_bytes, errs) = hash_entries(dst_path, &mut d.entries, need, &pools.work, progress)?;
    progress.finish(Phase::Hash);
    scan_errors.extend(errs);
    let popts = PlanOpts {
        owner: opts.owner,
        xattrs: opts.xattrs,
    };
    let plan = plan::plan(&src, &d.entries, popts);
    let converts = converts(dst_path, opts);
    Ok(Tree {
        src_path: manifest_path.into(),
        dst_path: dst_path.into(),
        src,
        dst: d.entries,
        plan,
        scan_errors,
        src_stamp: m.stamp,
        dst_stamp: stamp,
        hashed_bytes,
        cache_hits,
        cache_loaded: [None, None],
        hashed: [0, 0],
        dst_leftovers: Vec::new(),
        dst_holds_excluded: Vec::new(),
        quick_same: Vec::new(),
        home: None,
        _lock: None,
        source_label: None,
        guard: Vec::new(),
        protect: None,
        converts,
    })
}

/// A destination that does not exist yet (dry run): an empty directory.
fn empty_scan(src: &Scan) -> Scan {
    let mut root = src.entries[0].clone();
    root.mode = 0;
    root.set_mtime(0, root.mtime().1);
    root.set_xattrs(None);
    let mut entries = Entries::new();
    entries.push(b"", root);
    Scan {
        entries,
        ..Scan::default()
    }
}

fn take_errors(out: &mut Vec<(PathBuf, io::Error)>, root: &Path, s: &mut Scan) {
    for (p, e) in s.errors.drain(..) {
        out.push((root.join(fsx::os(&p)), e));
    }
}

/// An unreadable source entry must not make its destination counterpart look like an orphan,
/// and nothing below a source directory that could not be listed may be deleted.
fn protect_unreadable(plan: &mut Plan, dst: &Entries, protect: &[Box<[u8]>]) {
    if protect.is_empty() {
        return;
    }
    plan.actions
        .retain(|a| a.op != Op::Delete || !scan::under_any(protect, dst.path(a.dst as usize)));
}

/// Hashes `need` (indices into `entries`) in parallel across files. A file that cannot be read
/// keeps no hash (so it compares as different) and is reported.
pub(crate) fn hash_entries(
    root: &Path,
    entries: &mut Entries,
    need: impl ExactSizeIterator<Item = usize>,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> Result<(u64, Vec<(PathBuf, io::Error)>)> {
    if need.len() == 0 {
        return Ok((0, Vec::new()));
    }
    // Room for every new hash at once: grown by doubling, the list was copied at each step
    // and its old copy (in the heap, not mapped) stayed resident beside the new one.
    entries.reserve_hashes(need.len());
    let rootfd = fsx::open_root(root).at(root)?;
    let hash_one = |dir: BorrowedFd<'_>, e: Ent<'_>| {
        let fd = fsx::open_read_at(dir, e.name())?;
        let r = hash::hash_fd(fd.as_fd(), e.size)?;
        // Changed since the scan: the hash stands for nothing we know.
        let st = fsx::fstat(fd.as_fd())?;
        if st.st_size as u64 != e.size
            || st.st_mtime != e.mtime().0
            || st.st_mtime_nsec as u32 != e.mtime().1
            || !e.same_ctime(st.st_ctime as i64, st.st_ctime_nsec as u32)
        {
            return Err(io::Error::other("changed while being hashed"));
        }
        Ok(r)
    };
    let mut bytes = 0;
    let mut errs = Vec::new();
    scan::in_dir_runs(
        rootfd.as_fd(),
        entries,
        need,
        pool,
        |dir, e| {
            let r = hash_one(dir, e);
            progress.advance(1, e.size);
            r
        },
        |es, i, r| match r {
            Ok((h, n)) => {
                es.set_hash(i, Some(h));
                bytes += n;
            }
            Err(e) => errs.push((root.join(fsx::os(es.path(i))), e)),
        },
    );
    hash::release_buffers(pool);
    Ok((bytes, errs))
}

/// Hashes the live files `need` (indices into `t.dst`) that the plan did not need hashed: a
/// remote of `push` looks for content it already holds elsewhere in its trees. Files that
/// cannot be read stay without a hash.
pub fn hash_live(t: &mut Tree, need: &[usize], pools: &Pools) -> Result<()> {
    let quiet = crate::progress::Silent;
    hash_entries(
        &t.dst_path,
        &mut t.dst,
        need.iter().copied(),
        &pools.work,
        &quiet,
    )?;
    t.hashed[1] += need.len();
    Ok(())
}

/// Writes the stat cache of a tree scanned on its own (`manifest`, `verify`).
pub fn store_cache(
    state: &StateDir,
    tree: &Path,
    entries: &Entries,
    stamp: (i64, u32),
    xattrs: bool,
) {
    if let Ok(p) = state.cache_path(tree) {
        let _ = cache::write_file(
            &p,
            cache::records(entries.iter(), stamp, xattrs),
            stamp,
            xattrs,
        );
    }
}

/// Scans one tree and hashes every regular file (reusing the cache where allowed).
pub fn scan_and_hash(
    root: &Path,
    state: Option<&StateDir>,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<(Manifest, Vec<(PathBuf, io::Error)>)> {
    let (mut s, stamp, mut errors, _) = scan_one(root, &[], state, opts, pools, progress)?;
    let need: Vec<u32> = s
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == Kind::File && e.hash.is_none())
        .map(|(i, _)| i as u32)
        .collect();
    progress.start(Phase::Hash, need.len() as u64);
    let need = need.iter().map(|&i| i as usize);
    let (_, errs) = hash_entries(root, &mut s.entries, need, &pools.work, progress)?;
    progress.finish(Phase::Hash);
    errors.extend(errs);
    if let Some(state) = state {
        store_cache(state, root, &s.entries, stamp, opts.xattrs);
    }
    Ok((
        Manifest {
            stamp,
            entries: s.entries,
        },
        errors,
    ))
}

/// Makes sure the state directory is usable and outside every tree (`trees` canonical). A
/// symlinked state dir is followed only when owned by root or the caller.
pub fn open_state(dir: &Path, trees: &[&Path]) -> Result<StateDir> {
    let state_c = paths::resolve_dir(dir, "state dir", Follow::Owned)?;
    // Checked before the state dir is created: a refused run must leave no trace in a tree.
    check_outside(dir, &state_c, trees)?;
    StateDir::open(&state_c)
}

/// The live directories that are immutable or append-only: they stay where they are (bounds
/// of the switch). One the plan changes, or changes anything below, and a file the plan
/// changes that is, are refused: nothing can rename or replace them.
fn pinned(root: &Path, (src, dst): (&Entries, &Entries), plan: &Plan) -> Result<Vec<Box<[u8]>>> {
    let fd = fsx::open_tree(root).at(root)?;
    let mut touched = vec![false; dst.len()];
    for a in plan.actions.iter().filter(|a| a.dst != plan::NONE) {
        touched[a.dst as usize] = true;
    }
    let mut found: Vec<Box<[u8]>> = Vec::new();
    let mut dirs: Option<(Vec<u8>, std::os::fd::OwnedFd)> = None;
    for (j, e) in dst.iter().enumerate() {
        if e.kind != Kind::Dir && !(touched[j] && e.kind == Kind::File) {
            continue;
        }
        let (p, n) = fsx::split_parent(e.path);
        let is_pinned = if e.path.is_empty() {
            fsx::is_pinned_at(fd.as_fd(), b"", e.kind)
        } else {
            if dirs.as_ref().is_none_or(|(dp, _)| dp.as_slice() != p) {
                dirs = fsx::open_dir_beneath(fd.as_fd(), p)
                    .ok()
                    .map(|f| (p.to_vec(), f));
            }
            dirs.as_ref()
                .is_some_and(|(_, d)| fsx::is_pinned_at(d.as_fd(), n, e.kind))
        };
        if !is_pinned {
            continue;
        }
        let below = |a: &plan::Action| {
            let q = plan.path(a, src, dst);
            crate::entry::at_or_below(q, e.path)
        };
        if touched[j] || e.path.is_empty() || plan.actions.iter().any(below) {
            return Err(Error::bad(
                root.join(fsx::os(e.path)),
                "is immutable or append-only and this release changes it or what it holds: nothing was changed (`chattr -i -a` it, then run again)",
            ));
        }
        found.push(e.path.into());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use std::fs;

    use crate::testkit::write_tree as tree;

    fn chattr(flag: &str, p: &Path) -> bool {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(p)
            .status()
            .is_ok_and(|s| s.success())
    }

    /// An immutable directory the release changes below refuses the plan, naming it and the
    /// fix; one it leaves alone becomes a bound of the switch.
    #[test]
    fn prepare_refuses_changes_below_an_immutable_directory_and_bounds_the_others() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        tree(&src, &[("locked/f", "new"), ("kept/k", "k"), ("x", "new")]);
        tree(&dst, &[("locked/f", "old"), ("kept/k", "k"), ("x", "old")]);
        for p in ["kept/k", "kept", ""] {
            let t = fs::metadata(src.join(p)).unwrap().modified().unwrap();
            fs::File::open(dst.join(p))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        if !chattr("+i", &dst.join("locked")) {
            eprintln!("skipped: chattr +i is not available here (needs root and ext4/xfs/btrfs)");
            return;
        }
        let (opts, pools) = (SyncOpts::default(), Pools::new(2));
        let st = open_state(&d.path().join("state"), &[&src, &dst]).unwrap();
        let e = prepare(&src, &dst, Some(&st), &opts, &pools, &Silent)
            .err()
            .expect("refused");
        assert!(chattr("-i", &dst.join("locked")));
        let msg = e.to_string();
        assert!(
            msg.contains("/locked") && msg.contains("chattr -i"),
            "{msg}"
        );
        // The same with the release leaving it alone: planned, the directory a bound.
        fs::write(src.join("locked/f"), "old").unwrap();
        let t = fs::metadata(dst.join("locked/f"))
            .unwrap()
            .modified()
            .unwrap();
        fs::File::options()
            .write(true)
            .open(src.join("locked/f"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        let t = fs::metadata(dst.join("locked"))
            .unwrap()
            .modified()
            .unwrap();
        fs::File::open(src.join("locked"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(chattr("+i", &dst.join("locked")));
        let r = prepare(&src, &dst, Some(&st), &opts, &pools, &Silent);
        assert!(chattr("-i", &dst.join("locked")));
        let t = r.unwrap();
        let pinned: Vec<&[u8]> = t
            .home
            .as_ref()
            .unwrap()
            .pinned
            .iter()
            .map(|p| &p[..])
            .collect();
        assert_eq!(pinned, [&b"locked"[..]]);
    }
}
