//! One transaction: "make the next release of these trees live", by switching whole trees.
//!
//! A run of prepared [`Tree`]s goes through four types, each step a method that consumes the
//! one before:
//!
//! 1. [`stage`] → [`Staged`]: every tree's next release is built in its home (`HOME/next`),
//!    before any tree is switched: a tree that fails to stage switches nothing of the run.
//! 2. [`Staged::record`] → [`Recorded`]: what each next tree holds is hashed and restated, and
//!    each old tree's generation record is written (rollback needs it before the switch).
//! 3. [`Recorded::gate`] → [`Ready`]: the last safe point. The stop flag, the fleet's gate
//!    (`push` waits there for every host), the guard (the admin's protected and excluded
//!    entries looked at once more, new ones included: invariant 11), the journals, and the
//!    mount table (read again immediately before the exchanges: invariant 12).
//! 4. [`Ready::switch`] → [`Switched`]: the exchanges, back to back (the package database
//!    last); if one fails, those made are switched back ([`Exchanges`]: the one step that
//!    makes a release live, which a rollback's transaction, [`back`], takes too). Then
//!    [`Switched::finish`]: old setuid files defanged (invariant 9), caches written,
//!    processes still running the old trees found, `--keep 0` applied, DST's parents' mtimes
//!    put back.
//!
//! Until [`Ready::switch`] has made its exchanges, dropping the transaction (an error, a
//! refusal, a fallback) abandons every tree: staged trees removed, metadata changed in place
//! set back, generation records discarded. Nothing can be switched without passing the gate:
//! [`Ready`] is only made by [`Recorded::gate`].

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::apply::{clean_leftovers, ApplyOpts, Outcome};
use crate::cache;
use crate::entry::{Entries, Kind};
use crate::error::{IoContext, Result};
use crate::fsx::{self, MetaOpts};
use crate::generation;
use crate::journal::StateDir;
use crate::plan::Op;
use crate::progress::Progress;
use crate::stage::Built;
use crate::switch::{Home, Pending};
use crate::sync::{hash_entries, Pools, Report, SwitchInfo, SyncOpts, Tree};

pub mod back;
pub use back::switch_back_all;

/// What a run needs besides its trees.
#[derive(Clone, Copy)]
pub struct Ctx<'c> {
    pub state: &'c StateDir,
    pub opts: &'c SyncOpts,
    pub pools: &'c Pools,
    pub progress: &'c dyn Progress,
}

impl Ctx<'_> {
    /// Generations kept (0: the old tree goes right after the switch).
    fn keep(&self) -> usize {
        if self.opts.rollback {
            self.opts.keep
        } else {
            0
        }
    }

    fn aopts(&self) -> ApplyOpts {
        ApplyOpts {
            meta: MetaOpts {
                owner: self.opts.owner,
                xattrs: self.opts.xattrs,
            },
            fsync: self.opts.fsync,
        }
    }
}

/// Staging's outcome: the transaction goes on, or it is over with a report and nothing
/// switched (a tree failed to stage).
pub enum Step<T> {
    Go(T),
    Done(Box<Report>),
}

/// Per tree: the live entries kept, the stamp of the stats, the source entries not staged.
type After = (Entries, (i64, u32), Vec<Box<[u8]>>);

/// The transaction's state, whatever its step. Dropped before its switches are made, it
/// abandons every tree (see the module doc).
struct Inner<'t, 'c> {
    cx: Ctx<'c>,
    trees: &'t mut [Tree],
    t0: Instant,
    report: Report,
    staged: Vec<Option<Built>>,
    afters: Vec<Option<After>>,
    gens: Vec<Option<u64>>,
    /// Until the switches are made: dropping abandons every tree.
    armed: bool,
}

impl Drop for Inner<'_, '_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for (k, t) in self.trees.iter().enumerate() {
            let Some(h) = t.home.as_ref() else { continue };
            let _ = h.abandon();
            if let Some(id) = self.gens.get(k).copied().flatten() {
                let _ = generation::discard(h, id);
            }
        }
    }
}

impl Inner<'_, '_> {
    /// Checks the stop flag (SIGINT, SIGTERM, SIGHUP) at a safe point before the switch.
    fn stopped(&self, t: &Tree) -> Result<()> {
        self.cx.opts.check_stop(
            &t.dst_path,
            "while staging: nothing was switched, the staged trees were removed and every live tree is as it was (run the same command again to finish)",
        )
    }

    fn home(&self, k: usize) -> &Home {
        self.trees[k]
            .home
            .as_ref()
            .expect("a switched tree has a home")
    }
}

/// The trees staged, nothing recorded or switched yet.
#[must_use = "dropping a staged transaction abandons every tree"]
pub struct Staged<'t, 'c>(Inner<'t, 'c>);
/// Every next tree described and every generation recorded; nothing switched.
#[must_use = "dropping a recorded transaction abandons every tree"]
pub struct Recorded<'t, 'c>(Inner<'t, 'c>);
/// Past the gate and the guard, journals written: only the exchanges are left.
#[must_use = "dropping a ready transaction abandons every tree"]
pub struct Ready<'t, 'c>(Inner<'t, 'c>, Vec<Option<Pending>>);
/// The switches made; per tree, whether DST's parent gets its mtime back.
pub struct Switched<'t, 'c>(Inner<'t, 'c>, Vec<bool>);

/// Makes the next release live in every tree, switching whole trees: [`stage`], record,
/// gate (`gate` is asked at the last safe point with the report so far; an error there gives
/// up every tree and is returned), switch, finish.
pub fn switch_all_gated(
    trees: &mut [Tree],
    state: &StateDir,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
    gate: &mut dyn FnMut(&Report) -> Result<()>,
) -> Result<Report> {
    let cx = Ctx {
        state,
        opts,
        pools,
        progress,
    };
    let staged = match stage(trees, cx)? {
        Step::Go(s) => s,
        Step::Done(r) => return Ok(*r),
    };
    let ready = staged.record()?.gate(gate)?;
    Ok(ready.switch()?.finish())
}

/// [`switch_all_gated`] without a gate.
pub fn switch_all(
    trees: &mut [Tree],
    state: &StateDir,
    opts: &SyncOpts,
    pools: &Pools,
    progress: &dyn Progress,
) -> Result<Report> {
    switch_all_gated(trees, state, opts, pools, progress, &mut |_| Ok(()))
}

/// Step 1: stages every tree's next release in its home.
pub fn stage<'t, 'c>(trees: &'t mut [Tree], cx: Ctx<'c>) -> Result<Step<Staged<'t, 'c>>> {
    let mut tx = Inner {
        cx,
        trees,
        t0: Instant::now(),
        report: Report::default(),
        staged: Vec::new(),
        afters: Vec::new(),
        gens: Vec::new(),
        armed: true,
    };
    for k in 0..tx.trees.len() {
        let t = &tx.trees[k];
        tx.stopped(t)?;
        cx.progress.tree(&t.dst_path);
        if !t.dst_leftovers.is_empty() {
            // Temporary names an older version's killed per-file run recorded and left: ours,
            // not the tree's.
            let dfd = fsx::open_tree(&t.dst_path).at(&t.dst_path)?;
            if clean_leftovers(dfd.as_fd(), &t.dst_leftovers).is_empty() {
                let _ = cx.state.clear_staged(&t.dst_path);
            }
        }
        if t.plan.is_empty() && !t.converts {
            tx.staged.push(None);
            continue;
        }
        let r = stage_one(t, &cx);
        tx.stopped(&tx.trees[k])?;
        match r? {
            Ok(built) => {
                // Pinned files stay where they are at the switch: bounds of its subtrees.
                if let Some(h) = tx.trees[k].home.as_mut() {
                    h.pinned.extend(built.pinned.iter().cloned());
                }
                tx.staged.push(Some(built))
            }
            Err(f) => return Ok(Step::Done(Box::new(staging_failed(tx, k, f)))),
        }
    }
    Ok(Step::Go(Staged(tx)))
}

/// Stages one tree (its plan not empty) in its home: older generations pruned first (outside
/// the switch, and only when a new one is made), the old values of metadata changed in place
/// saved, then the next tree built.
fn stage_one(t: &Tree, cx: &Ctx<'_>) -> Result<std::result::Result<Built, crate::stage::Fatal>> {
    let home = t.home.as_ref().expect("a switched tree has a home");
    generation::prune(home, cx.keep().saturating_sub(1))?;
    let next = home.make_next()?;
    // Metadata-only changes are made on the live inodes while staging: their old values are
    // saved first, so a run that stops before its switch sets them back.
    let pre = || {
        t.plan
            .actions
            .iter()
            .filter(|a| a.op == Op::Meta)
            .map(|a| (t.src.at(a.src as usize), t.dst.at(a.dst as usize)))
            .filter(|(s, d)| s.kind != Kind::Dir && s.kind == d.kind)
            .map(|(_, d)| d)
    };
    if pre().next().is_some() {
        crate::stage::save_meta(
            &home.fd,
            crate::switch::PREMETA,
            pre(),
            cx.opts.xattrs,
            &home.path.join(crate::switch::PREMETA),
            home.durable,
        )?;
    }
    let aopts = cx.aopts();
    let sfd = fsx::open_root(&t.src_path).at(&t.src_path)?;
    let lfd = fsx::open_tree(&t.dst_path).at(&t.dst_path)?;
    let b = crate::stage::Builder {
        src_root: sfd.as_fd(),
        live_root: lfd.as_fd(),
        next_root: next.as_fd(),
        src: &t.src,
        dst: &t.dst,
        plan: &t.plan,
        opts: aopts,
        excludes: &cx.opts.excludes,
        holds_excluded: &t.dst_holds_excluded,
        stop: cx.opts.stop.as_deref(),
        move_source: cx.opts.move_source,
        next_bare: !aopts.meta.xattrs || fsx::makes_bare(next.as_fd()),
    };
    Ok(b.build(&cx.pools.work, cx.progress))
}

/// A tree that failed to stage: nothing of the run is switched (the transaction, dropped,
/// abandons every tree).
fn staging_failed(tx: Inner<'_, '_>, k: usize, f: crate::stage::Fatal) -> Report {
    let mut report = Report::default();
    let at = tx.trees[k].dst_path.join(fsx::os(&f.path));
    report.aborted = Some(format!(
        "{}: {} (while staging; nothing was switched, the live trees are as they were)",
        at.display(),
        f.error
    ));
    report.elapsed = tx.t0.elapsed();
    report.outcomes = tx.trees.iter().map(|_| Outcome::default()).collect();
    report
}

impl<'t, 'c> Staged<'t, 'c> {
    /// Step 2: what each next tree holds, and its generation record, before any switch.
    /// Stats are taken only once a tick has passed since the last link or write, so the
    /// racy rule lets the cache vouch for every file the next run sees unchanged (the source
    /// hashing usually covers that wait).
    pub fn record(self) -> Result<Recorded<'t, 'c>> {
        let mut tx = self.0;
        let staged_at = Instant::now();
        for k in 0..tx.trees.len() {
            let built = tx.staged[k].take();
            let r = record_one(&mut tx, k, built.as_ref(), staged_at);
            tx.staged[k] = built;
            let (after, id) = r?;
            tx.afters.push(after);
            tx.gens.push(id);
        }
        tx.report.stage_time = tx.t0.elapsed();
        Ok(Recorded(tx))
    }
}

/// [`Staged::record`] for tree `k`: its source hashed where the copies left it unknown, the
/// source's cache written, and (if it was staged) the next tree restated and its old tree's
/// generation recorded.
fn record_one(
    tx: &mut Inner<'_, '_>,
    k: usize,
    built: Option<&Built>,
    staged_at: Instant,
) -> Result<(Option<After>, Option<u64>)> {
    let cx = tx.cx;
    let keep = cx.keep();
    let t = &mut tx.trees[k];
    if let Some(b) = built {
        hash_copied(t, b, &cx)?;
    }
    write_source_cache(t, built.is_some(), &cx);
    let Some(built) = built else {
        return Ok((None, None));
    };
    let home = t.home.as_ref().expect("a switched tree has a home");
    // What the next tree holds: the source's entries with the staged objects' stats
    // (restated in place), and the live entries kept that the source lacks.
    if let Some(w) = Duration::from_millis(30).checked_sub(staged_at.elapsed()) {
        std::thread::sleep(w);
    }
    let stamp = cache::now();
    let next = fsx::open_root_nofollow(&home.next_path()).at(home.next_path())?;
    let missing =
        crate::stage::restat(next.as_fd(), &mut t.src, &cx.pools.work).at(home.next_path())?;
    // An entry whose source failed holds its live version: the live hash, target, xattrs.
    for e in &built.errors {
        if let (Ok(i), Ok(j)) = (t.src.search(&e.path), t.dst.search(&e.path)) {
            let d = t.dst.at(j);
            let (h, target, x) = (
                d.hash.copied(),
                d.target().map(Box::from),
                d.xattrs().cloned(),
            );
            let same = t.src[i].ino == d.ino;
            t.src.set_hash(i, if same { h } else { None });
            t.src[i].set_target(target);
            t.src[i].set_xattrs(x);
        }
    }
    // Pinned entries stay where they are at the switch (bounds): the live inode, not the
    // copy staged in its place, is what the next tree holds there.
    for p in &home.pinned {
        if let (Ok(i), Ok(j)) = (t.src.search(p), t.dst.search(p)) {
            let (ino, (cs, cn)) = (t.dst.at(j).ino, t.dst.at(j).ctime());
            t.src[i].ino = ino;
            t.src[i].set_ctime(cs, cn);
        }
    }
    crate::quick::live_hashes(&mut t.src, &t.dst, &t.quick_same);
    let kept = kept_live(t);
    // Old metadata to set back on rollback: entries changed in place, and the directories a
    // switch by subtrees leaves in place (set at the switch). Indices, in path order.
    let mut meta: Vec<u32> = home
        .spines_now()
        .iter()
        .filter_map(|p| t.dst.search(p).ok().map(|j| j as u32))
        .collect();
    meta.extend(built.meta_in_place.iter().copied());
    meta.sort_unstable();
    meta.dedup();
    let id = generation::next_id(home)?;
    if keep > 0 {
        let conf_base = crate::protect::base_path(cx.state, &t.dst_path)?;
        generation::write_record(
            home,
            id,
            home.method.name(),
            &generation::Record {
                source: t.source_label.as_ref().unwrap_or(&t.src_path),
                changes: t.plan.actions.len() as u64,
                old: &t.dst,
                meta,
                after: (&t.src, &kept),
                missing: &missing,
                excludes: &cx.opts.exclude_patterns,
                xattrs: cx.opts.xattrs,
                conf_base: &conf_base,
                pinned: &home.pinned,
                protect: t.protect.as_ref(),
            },
        )?;
    }
    Ok((Some((kept, stamp, missing)), Some(id)))
}

/// Hashes the files copied without a known hash (or with one the copy proved stale), from
/// the source the copy just read (in the page cache, and checked against the scan's stat as
/// any hashing is): the copies hold that content, so neither side is read again by the next
/// run. A scanned hash the copy proved stale is dropped first, and hashed again here.
fn hash_copied(t: &mut Tree, b: &Built, cx: &Ctx<'_>) -> Result<()> {
    let mut failed: Vec<&[u8]> = b.errors.iter().map(|e| &e.path[..]).collect();
    failed.sort_unstable();
    for &i in &b.stale {
        t.src.set_hash(i as usize, None);
    }
    // u32 indices: at the run's peak (both trees held), half what usize costs.
    let need: Vec<u32> = (0..t.src.len())
        .filter(|&i| {
            let e = t.src.at(i);
            e.kind == Kind::File
                && e.hash.is_none()
                && failed.binary_search(&e.path).is_err()
                && t.quick_same.binary_search(&(i as u32)).is_err()
        })
        .map(|i| i as u32)
        .collect();
    let quiet = crate::progress::Silent;
    let need_ix = need.iter().map(|&i| i as usize);
    // A file that could not be hashed stays without a hash (and out of the caches).
    let _ = hash_entries(&t.src_path, &mut t.src, need_ix, &cx.pools.work, &quiet)?;
    Ok(())
}

/// The source's stat cache, with the source's own stats (before the restat replaces them).
/// A cache every entry of which was reused, with nothing hashed now, is left as it is (a
/// no-op run writes nothing); a source moved in goes with the run, so it gets none.
fn write_source_cache(t: &Tree, built: bool, cx: &Ctx<'_>) {
    let xattrs = cx.opts.xattrs;
    let records = || t.src.iter();
    let unchanged = !built
        && t.hashed[0] == 0
        && t.cache_loaded[0] == Some(cache::records(records(), t.src_stamp, xattrs).count());
    if let (false, false, Ok(p)) = (
        unchanged,
        cx.opts.move_source,
        cx.state.cache_path(&t.src_path),
    ) {
        let _ = cache::write_file(
            &p,
            cache::records(records(), t.src_stamp, xattrs),
            t.src_stamp,
            xattrs,
        );
    }
}

/// The live entries the next tree keeps that the source lacks (excluded ones' parents, kept
/// configuration): neither deleted by the plan nor in the source.
fn kept_live(t: &Tree) -> Entries {
    let mut deleted = vec![false; t.dst.len()];
    for a in t.plan.actions.iter().filter(|a| a.op == Op::Delete) {
        deleted[a.dst as usize] = true;
    }
    let mut kept = Entries::new();
    for (j, d) in t.dst.iter().enumerate() {
        if !deleted[j] && t.src.search(d.path).is_err() {
            kept.push_ent(d);
        }
    }
    kept
}

impl<'t, 'c> Recorded<'t, 'c> {
    /// Step 3, the last safe point: the stop flag, a directory not ours to move, the gate,
    /// the guard, the journals (each reading the mounts). Any refusal gives up every tree.
    pub fn gate(self, gate: &mut dyn FnMut(&Report) -> Result<()>) -> Result<Ready<'t, 'c>> {
        let tx = self.0;
        if let Some(t) = tx.trees.first() {
            tx.stopped(t)?;
        }
        if let Some(p) = blocked_move(&tx) {
            // Not ours to move (an unprivileged run): refused before anything moved.
            return Err(crate::Error::bad(
                p,
                "is not writable, and moving a directory needs that without root: nothing was switched (run as root, or give this user write permission on it)",
            ));
        }
        gate(&tx.report)?;
        guard(&tx)?;
        let pending = prepare_all(&tx)?;
        Ok(Ready(tx, pending))
    }
}

/// The first directory a switching tree would have to move that this (unprivileged) run may
/// not.
fn blocked_move(tx: &Inner<'_, '_>) -> Option<PathBuf> {
    (0..tx.trees.len())
        .filter(|&k| tx.gens[k].is_some())
        .find_map(|k| tx.home(k).blocked_move())
}

/// The admin's files, once more: an edit made while staging, or a protected or excluded
/// entry made anywhere since the scan, would be left in the old tree by the switch.
fn guard(tx: &Inner<'_, '_>) -> Result<()> {
    let opts = tx.cx.opts;
    // Only an admin's excludes can match an entry someone else makes while the run stages
    // (the listing of every live directory that finds those is skipped otherwise).
    let watch_new = opts
        .exclude_patterns
        .iter()
        .any(|p| !crate::protect::is_own_pattern(p));
    for (k, t) in tx.trees.iter().enumerate() {
        let globs = t.protect.as_ref().is_some_and(|(r, _)| r.has_globs());
        if tx.gens[k].is_none() || (t.guard.is_empty() && opts.excludes.is_empty() && !globs) {
            continue;
        }
        let home = tx.home(k);
        let live = fsx::open_tree(&t.dst_path).at(&t.dst_path)?;
        let next = fsx::open_root_nofollow(&home.next_path()).at(home.next_path())?;
        let changed = crate::guard::changed_since_scan(
            live.as_fd(),
            next.as_fd(),
            &t.dst,
            &t.guard,
            &opts.excludes,
            &t.dst_holds_excluded,
            crate::guard::Watch {
                protected: t
                    .protect
                    .as_ref()
                    .map(|(rules, prefix)| crate::guard::Protected { rules, prefix }),
                excluded: watch_new,
            },
        )
        .at(&t.dst_path)?;
        if let Some(c) = changed {
            return Err(crate::Error::bad(
                t.dst_path.join(fsx::os(&c.path)),
                format!(
                    "{} (it is protected or excluded, so the switch would have left that in the old tree): nothing was switched; run again",
                    c.how
                ),
            ));
        }
    }
    Ok(())
}

/// Every journal first (durable writes), so nothing slow sits between the switches of two
/// trees. Each reads the mount table as it plans (invariant 12): a mount made below a tree
/// while it was staged is a bound its switch goes around ([`Home::bounds_now`]), never
/// moved into the old generation. The table is read once more after the journals: a mount
/// made meanwhile has its tree planned again.
fn prepare_all(tx: &Inner<'_, '_>) -> Result<Vec<Option<Pending>>> {
    let homes: Vec<Option<(&Home, u64)>> = (0..tx.trees.len())
        .map(|k| tx.gens[k].map(|id| (tx.home(k), id)))
        .collect();
    crate::switch::prepare_around_mounts(&homes, |h, id| h.prepare_in(id))
}

impl<'t, 'c> Ready<'t, 'c> {
    /// Step 4: the exchanges, back to back in the order given (the package database last).
    /// If one fails, those made are switched back and every tree is abandoned: never half.
    pub fn switch(self) -> Result<Switched<'t, 'c>> {
        let Ready(mut tx, pending) = self;
        // DST's parents nobody else wrote in since this run looked: only those get their
        // mtime back after the switch (another program's change there must stay visible).
        let put_back: Vec<bool> = (0..tx.trees.len())
            .map(|k| pending[k].is_some() && tx.home(k).parent_as_found())
            .collect();
        let meta = tx.cx.aopts().meta;
        let made = Exchanges(pending).make(
            |k| tx.home(k),
            |k, p| set_spines_meta(&tx.trees[k], p.spines(), meta),
        )?;
        // From here a made switch is never given up.
        tx.armed = false;
        tx.report.switch_window = made.window;
        tx.report.switches = tx.trees.iter().map(|_| None).collect();
        for one in made {
            let k = one.tree;
            let s = one.finish(tx.home(k))?;
            let info = switched_info(&mut tx, k, s);
            tx.report.switches[k] = Some(info);
        }
        Ok(Switched(tx, put_back))
    }
}

/// The switches of a run's trees, journaled (by tree: `None` where there is nothing to
/// switch), to be made back to back by [`Exchanges::make`]: the one step that makes a release
/// live, for a sync's transaction and a rollback's ([`back`]) alike.
pub struct Exchanges(pub Vec<Option<Pending>>);

/// The exchanges [`Exchanges::make`] made, in order, and the time they took together.
pub struct Made {
    made: Vec<Exchanged>,
    /// From the first exchange to the last: the only time a reader could see the trees of
    /// the run in different releases.
    pub window: Duration,
}

/// One tree's exchange, made: its journal is finished by [`Exchanged::finish`].
pub struct Exchanged {
    /// The tree's index.
    pub tree: usize,
    pending: Pending,
    window: Duration,
    calls: usize,
}

impl Exchanges {
    /// Makes every exchange, back to back in the order given (`home` gives each tree's home),
    /// each followed by `then` (nothing slow: it sits between two trees' switches). If an
    /// exchange or a `then` fails, those made are switched back (the last first), those not
    /// reached are forgotten, and the error is returned: never half.
    pub fn make<'h>(
        self,
        home: impl Fn(usize) -> &'h Home,
        mut then: impl FnMut(usize, &Pending) -> Result<()>,
    ) -> Result<Made> {
        let t0 = Instant::now();
        let mut made: Vec<Exchanged> = Vec::new();
        let mut todo = self.0.into_iter().enumerate();
        while let Some((k, p)) = todo.next() {
            let Some(p) = p else { continue };
            let r = home(k).exchange(&p).and_then(|(window, calls)| {
                // Made: whatever fails from here is undone with the others.
                made.push(Exchanged {
                    tree: k,
                    pending: p,
                    window,
                    calls,
                });
                then(k, &made[made.len() - 1].pending)
            });
            if let Err(e) = r {
                for x in made.iter().rev() {
                    let _ = home(x.tree).unexchange(&x.pending);
                }
                for (j, p) in todo {
                    if let Some(p) = p {
                        home(j).cancel(p);
                    }
                }
                return Err(e);
            }
        }
        Ok(Made {
            made,
            window: t0.elapsed(),
        })
    }
}

impl IntoIterator for Made {
    type Item = Exchanged;
    type IntoIter = std::vec::IntoIter<Exchanged>;

    fn into_iter(self) -> Self::IntoIter {
        self.made.into_iter()
    }
}

impl Exchanged {
    /// Completes the switch in `home` (its tree's): the displaced tree takes its name, the
    /// journal goes. The switch's window and calls are its exchange's.
    pub fn finish(self, home: &Home) -> Result<crate::switch::Switched> {
        let s = home.finish(self.pending)?;
        Ok(crate::switch::Switched {
            window: self.window,
            calls: self.calls,
            ..s
        })
    }
}

/// A switch by subtrees leaves its spines in place (the root first): their metadata is the
/// next tree's from now.
fn set_spines_meta(t: &Tree, spines: &[Box<[u8]>], meta: MetaOpts) -> Result<()> {
    let root = fsx::open_tree(&t.dst_path).at(&t.dst_path)?;
    for sp in spines {
        let Ok(i) = t.src.search(sp) else { continue };
        let at = t.dst_path.join(fsx::os(sp));
        let d = fsx::open_dir_beneath(root.as_fd(), sp).at(&at)?;
        fsx::set_meta_fd(d.as_fd(), &t.src.at(i), meta).at(&at)?;
    }
    Ok(())
}

/// The report of tree `k`'s switch; its old tree's setuid/setgid files and capabilities the
/// new tree does not share are taken (invariant 9), since it stays reachable from a cwd
/// inside it.
fn switched_info(tx: &mut Inner<'_, '_>, k: usize, s: crate::switch::Switched) -> SwitchInfo {
    let old = s.old;
    let keep = tx.cx.keep();
    let id = tx.gens[k].expect("switched");
    let mut defanged = 0;
    if let (true, Some((kept, _, _))) = (keep > 0, &tx.afters[k]) {
        let t = &tx.trees[k];
        let known = tx.cx.opts.xattrs;
        match crate::defang::generation(tx.home(k), id, &t.dst, &[&t.src, kept], known) {
            Ok(n) => defanged = n,
            Err(e) => tx.report.notes.push(format!(
                "old setuid/setgid files of {} not defanged: {e}",
                t.dst_path.display()
            )),
        }
    }
    SwitchInfo {
        method: s.method,
        window: s.window,
        calls: s.calls,
        generation: (keep > 0).then_some(id),
        generation_path: (keep > 0).then_some(old),
        linked: tx.staged[k].as_ref().map_or(0, |b| b.linked),
        defanged,
    }
}

impl Switched<'_, '_> {
    /// After the switches: the live trees' caches and outcomes, who still runs the old trees,
    /// what `--keep 0` does not keep, DST's parents' mtimes.
    pub fn finish(self) -> Report {
        let Switched(mut tx, put_back) = self;
        let t_cleanup = Instant::now();
        for k in 0..tx.trees.len() {
            write_live_cache(&tx, k);
            let o = outcome(&tx, k);
            tx.report.outcomes.push(o);
        }
        // Every kept generation, not only this run's (a daemon two upgrades old is as
        // stale), before `--keep 0` drops this run's.
        let live: Vec<PathBuf> = tx.trees.iter().map(|t| t.dst_path.clone()).collect();
        tx.report.procs = crate::procs::restart_report(&live);
        if tx.cx.keep() == 0 {
            drop_old_trees(&tx);
        }
        for (t, _) in tx.trees.iter().zip(&put_back).filter(|(_, &b)| b) {
            if let Some(h) = t.home.as_ref() {
                let _ = h.put_parent_mtime_back();
            }
        }
        tx.report.cleanup_time = t_cleanup.elapsed();
        tx.report.elapsed = tx.t0.elapsed();
        std::mem::take(&mut tx.report)
    }
}

/// Tree `k`'s stat cache. Switched: what the next tree held, with the stats staging took.
/// Not switched: the live tree as scanned, written only when this run hashed something or
/// could not reuse every record (a first run), else left alone.
fn write_live_cache(tx: &Inner<'_, '_>, k: usize) {
    let (t, xattrs) = (&tx.trees[k], tx.cx.opts.xattrs);
    let Ok(p) = tx.cx.state.cache_path(&t.dst_path) else {
        return;
    };
    match &tx.afters[k] {
        None => {
            let records = || cache::records(t.dst.iter(), t.dst_stamp, xattrs);
            let unchanged = t.hashed[1] == 0 && t.cache_loaded[1] == Some(records().count());
            if !unchanged {
                let _ = cache::write_file(&p, records(), t.dst_stamp, xattrs);
            }
        }
        Some((kept, stamp, missing)) => {
            let live = crate::entry::merged(&t.src, kept)
                .filter(|e| missing.binary_search_by(|m| (**m).cmp(e.path)).is_err());
            let _ = cache::write_file(&p, cache::records(live, *stamp, xattrs), *stamp, xattrs);
        }
    }
}

/// Tree `k`'s outcome: every action done but those whose source failed (their live version
/// was kept), bytes written, the switch window.
fn outcome(tx: &Inner<'_, '_>, k: usize) -> Outcome {
    let t = &tx.trees[k];
    let mut o = Outcome {
        done: vec![true; t.plan.actions.len()],
        ..Outcome::default()
    };
    if let Some(b) = tx.staged[k].as_ref() {
        o.bytes_written = b.bytes_written;
        for e in &b.errors {
            if let Ok(a) = t
                .plan
                .actions
                .binary_search_by(|a| t.plan.path(a, &t.src, &t.dst).cmp(&e.path))
            {
                o.done[a] = false;
            }
        }
        o.errors = b
            .errors
            .iter()
            .map(|e| crate::apply::EntryError {
                path: e.path.clone(),
                phase: e.phase,
                error: crate::apply::copy_error(&e.error),
            })
            .collect();
    }
    o.switch_window = tx.report.switches[k]
        .as_ref()
        .map_or(Duration::ZERO, |s| s.window);
    o
}

/// `--keep 0`: the old trees switched out now go, and an empty home with them (its parent's
/// mtime is put back after). A tree with nothing to do touches nothing.
fn drop_old_trees(tx: &Inner<'_, '_>) {
    for (k, t) in tx.trees.iter().enumerate() {
        let (Some(id), Some(h)) = (tx.gens[k], t.home.as_ref()) else {
            continue;
        };
        // A release programs still run from (switch by symlink) stays until `prune`.
        if generation::runs_from(h, id) {
            continue;
        }
        let _ = h.remove_in(&Home::gen_name(id));
        if let (Some(parent), Some(name)) = (h.path.parent(), h.path.file_name()) {
            if let Ok(p) = fsx::open_root_nofollow(parent) {
                let _ = fsx::rmdir_at(p.as_fd(), name.as_encoded_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::Path;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    fn read(root: &Path, rel: &str) -> String {
        fs::read_to_string(root.join(rel)).unwrap()
    }

    /// The switch journal of a home (`switching`): there while a switch is prepared.
    fn journaled(h: &Home) -> bool {
        h.io_path("switching").exists()
    }

    /// Live trees `P/a`, `P/b`, ... each holding `tool` = "old", and each home's `next`
    /// staged by hand with `tool` = "new" (what `stage` builds), every switch journaled.
    fn staged(names: &[&str]) -> (tempfile::TempDir, Vec<Home>, Vec<Option<Pending>>) {
        let t = tempfile::tempdir().unwrap();
        let mut homes = Vec::new();
        let mut pending = Vec::new();
        for n in names {
            let live = t.path().join(n);
            write(&live, "bin/tool", "old");
            let home = Home::open(&live).unwrap();
            home.make_next().unwrap();
            write(&home.next_path(), "bin/tool", "new");
            pending.push(Some(home.prepare_in(1).unwrap()));
            homes.push(home);
        }
        (t, homes, pending)
    }

    #[test]
    fn the_exchanges_switch_every_tree_and_finish_into_generations() {
        let (_t, homes, mut pending) = staged(&["a", "skipped", "b"]);
        // A tree with nothing to switch sits between the others.
        if let Some(p) = pending[1].take() {
            homes[1].cancel(p);
        }
        let mut seen = Vec::new();
        let made = Exchanges(pending)
            .make(
                |k| &homes[k],
                |k, _| {
                    seen.push(k);
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(seen, [0, 2], "`then` follows each exchange made");
        for one in made {
            let k = one.tree;
            let s = one.finish(&homes[k]).unwrap();
            assert_eq!((s.calls, s.method), (1, crate::switch::Method::Tree));
            assert_eq!(read(&s.old, "bin/tool"), "old");
        }
        for k in [0, 2] {
            assert_eq!(read(&homes[k].live, "bin/tool"), "new");
            assert!(!journaled(&homes[k]), "a journal outlived its switch");
        }
        assert_eq!(read(&homes[1].live, "bin/tool"), "old");
    }

    #[test]
    fn a_failed_exchange_switches_back_those_made_and_forgets_the_rest() {
        let (_t, homes, pending) = staged(&["a", "b", "c"]);
        // The second tree's staged release is gone by its exchange: that exchange fails.
        fsx::remove_tree_at(homes[1].fd.as_fd(), b"next").unwrap();
        let e = Exchanges(pending)
            .make(|k| &homes[k], |_, _| Ok(()))
            .err()
            .expect("the second exchange failed");
        assert!(
            e.to_string()
                .starts_with(&homes[1].live.display().to_string()),
            "{e}"
        );
        for h in &homes {
            assert_eq!(read(&h.live, "bin/tool"), "old", "{}", h.live.display());
            assert!(!journaled(h), "{}: journal left", h.live.display());
        }
        // The first was switched and back: its staged tree is in its home again, ready to
        // be abandoned by the transaction (not lost in the live tree).
        assert_eq!(read(&homes[0].next_path(), "bin/tool"), "new");
    }

    #[test]
    fn a_failed_step_after_an_exchange_undoes_that_exchange_too() {
        let (_t, homes, pending) = staged(&["a", "b"]);
        let e = Exchanges(pending)
            .make(
                |k| &homes[k],
                |k, _| {
                    if k == 1 {
                        Err(crate::Error::bad(&homes[k].live, "refused after"))
                    } else {
                        Ok(())
                    }
                },
            )
            .err()
            .expect("the second tree's step failed");
        assert!(e.to_string().contains("refused after"), "{e}");
        for h in &homes {
            assert_eq!(read(&h.live, "bin/tool"), "old", "{}", h.live.display());
            assert_eq!(read(&h.next_path(), "bin/tool"), "new");
            assert!(!journaled(h));
        }
    }
}
