//! The session loop of `jailsync serve`, the remote end of `push`: reads requests on one
//! stream, answers on another, and stages and switches its trees with the same engine code as
//! `upgrade`: HELLO, OPEN, the manifests, WANT, the blobs, the staging up to the fleet's gate,
//! the switch and DONE (or a rollback), with the keepalive that tells the local side this
//! host is at work.
//!
//! Where the content comes from: the jail's manifest stands for the source tree
//! ([`sync::prepare_given`]); the files the plan copies are put, under their paths, in a
//! private *shadow* directory of the state dir (see [`super::shadow`]). The stager then reads
//! the shadow exactly as it reads a jail. The shadow, the blobs and the stat cache kept for
//! the shadow go when the session ends, however it ends (a killed session's are removed by
//! the next one).

use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::serve::{check_allowed, resolve, root_of, ServeEnv};
use super::shadow::{
    check_room, fill_shadows, forget_shadows, held_manifests, hold_manifest, lacks, meta_of,
    need_list, needs, Lacks, Work, UNSET,
};
use super::sum::{Protecting, Sum};
use super::wire::{self, flag, t, Dec, Enc, Open};
use super::{RemoteError, Result};
use crate::entry::{Hash, Kind};
use crate::fsx::split_parent;
use crate::manifest;
use crate::plan::Counts;
use crate::progress::{Phase, Progress};
use crate::protect::{Base, Decisions, Rules};
use crate::sync::{self, Pools, SyncOpts, Tree};

/// One session over `r`/`w`. Errors are also sent to the peer (best effort) before returning.
pub fn serve(r: &mut dyn BufRead, w: Box<dyn Write + Send>, env: &ServeEnv) -> Result<()> {
    let mut s = Session {
        r,
        out: Arc::new(Out {
            w: Mutex::new(w),
            quiet_since: Mutex::new(None),
            doing: Mutex::new(("opening".into(), None)),
            unmeasured: AtomicBool::new(false),
        }),
        buf: Vec::new(),
        alive: None,
        proto: wire::MIN_PROTOCOL,
        held: Vec::new(),
        cpu: env.cpu_seconds,
    };
    let res = s.run(env);
    if let Err(e) = &res {
        if !matches!(e, RemoteError::Aborted(_)) {
            let _ = s.send(t::ERROR, e.to_string().as_bytes());
        }
    }
    // Nothing more after the last frame: the keepalive stops.
    *s.out.quiet_since.lock().expect("poisoned") = None;
    s.alive = None;
    res
}

/// The stream to the local side, shared with the keepalive thread.
pub(super) struct Out {
    w: Mutex<Box<dyn Write + Send>>,
    /// Since when this side has worked without a frame either way; `None` while it waits
    /// for the local side's next frame (the local side owes it), and once the session ends.
    quiet_since: Mutex<Option<Instant>>,
    /// What this side is doing, and in which tree: ALIVE names it, so that the local side
    /// can say where a host stopped moving.
    doing: Mutex<(String, Option<PathBuf>)>,
    /// The work is another process's (`rollback --root`), whose steps this process cannot
    /// count: the keepalive then counts one step per ALIVE, as before steps were counted.
    unmeasured: AtomicBool,
}

impl Out {
    pub(super) fn doing(&self, what: &str, tree: Option<&Path>) {
        *self.doing.lock().expect("poisoned") = (what.to_string(), tree.map(Path::to_path_buf));
    }

    /// ALIVE's payload: the work counter ([`crate::progress::work_done`]) and the phase.
    fn alive(&self) -> Vec<u8> {
        if self.unmeasured.load(Ordering::Relaxed) {
            crate::progress::work(1);
        }
        let (what, tree) = &*self.doing.lock().expect("poisoned");
        let text = match tree {
            Some(t) => format!("{what} in {}", t.display()),
            None => what.clone(),
        };
        Enc::default()
            .u64(crate::progress::work_done())
            .bytes(text.as_bytes())
            .0
    }
}

/// The engine's progress calls during a push, turned into the phase ALIVE names. The steps
/// themselves are counted by [`crate::progress::work`] where the bytes move; `advance` adds
/// the steps that move none (a link, a rename, metadata set).
pub(super) struct Beat(Arc<Out>);

impl Progress for Beat {
    fn start(&self, phase: Phase, _total: u64) {
        let what = match phase {
            Phase::Scan => "scanning",
            Phase::Hash => "hashing",
            Phase::Stage => "staging",
            Phase::Commit => "switching",
            Phase::Prune => "pruning old generations",
            Phase::Finalize => "finishing the switch",
        };
        let tree = self.0.doing.lock().expect("poisoned").1.clone();
        self.0.doing(what, tree.as_deref());
    }
    fn advance(&self, n: u64, _bytes: u64) {
        crate::progress::work(n);
    }
    fn tree(&self, dst: &Path) {
        let what = self.0.doing.lock().expect("poisoned").0.clone();
        self.0.doing(&what, Some(dst));
    }
}

pub(super) struct Session<'a> {
    r: &'a mut dyn BufRead,
    pub(super) out: Arc<Out>,
    pub(super) buf: Vec<u8>,
    /// Dropped: the keepalive thread ends.
    alive: Option<mpsc::Sender<()>>,
    /// The protocol the session speaks (the older of the two sides').
    pub(super) proto: u32,
    /// (5) The manifest this host last received for each tree, with its hash: the base of a
    /// manifest delta.
    pub(super) held: Vec<Option<(Hash, Vec<u8>)>>,
    cpu: Option<fn() -> f64>,
}

impl Session<'_> {
    pub(super) fn send(&mut self, kind: u8, p: &[u8]) -> Result<()> {
        let mut w = self.out.w.lock().expect("poisoned");
        wire::write_frame(&mut *w, kind, p)?;
        w.flush()?;
        drop(w);
        *self.out.quiet_since.lock().expect("poisoned") = Some(Instant::now());
        Ok(())
    }

    /// The next frame; the peer's ERROR and a closed stream become errors.
    pub(super) fn recv(&mut self) -> Result<u8> {
        *self.out.quiet_since.lock().expect("poisoned") = None;
        let r = wire::read_frame(&mut self.r, &mut self.buf);
        *self.out.quiet_since.lock().expect("poisoned") = Some(Instant::now());
        match r? {
            None => Err(RemoteError::Aborted(
                "the connection closed (nothing was switched)".into(),
            )),
            Some(t::ERROR) => Err(RemoteError::Aborted(format!(
                "the local side said: {}",
                wire::printable(&self.buf)
            ))),
            Some(k) => Ok(k),
        }
    }

    /// From now on, an ALIVE frame whenever this side has worked `every` without a frame
    /// either way (scanning, hashing, copying, staging, switching, rolling back). A thread
    /// of its own: those are engine calls that cannot stop to say so. ALIVE carries the work
    /// counter, not just "this process exists": a worker stuck in one system call keeps this
    /// thread running but not the counter, and the local side's `--timeout` fails the host
    /// on that (see `client::Conn::alive`).
    fn keepalive(&mut self, every: Duration) {
        let (tx, rx) = mpsc::channel::<()>();
        let out = self.out.clone();
        std::thread::spawn(move || loop {
            match rx.recv_timeout(every / 4) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
            let due = out
                .quiet_since
                .lock()
                .expect("poisoned")
                .is_some_and(|q| q.elapsed() >= every);
            if due {
                let p = out.alive();
                let mut w = out.w.lock().expect("poisoned");
                if wire::write_frame(&mut *w, t::ALIVE, &p)
                    .and_then(|()| w.flush())
                    .is_err()
                {
                    return;
                }
                if let Some(q) = out.quiet_since.lock().expect("poisoned").as_mut() {
                    *q = Instant::now();
                }
            }
        });
        self.alive = Some(tx);
    }

    fn expect(&mut self, kind: u8) -> Result<()> {
        let k = self.recv()?;
        if k != kind {
            return Err(RemoteError::Protocol(format!(
                "expected {}, got {}",
                t::name(kind),
                t::name(k)
            )));
        }
        Ok(())
    }

    fn run(&mut self, env: &ServeEnv) -> Result<()> {
        self.send(t::HELLO, &super::hello())?;
        self.expect(t::HELLO)?;
        self.proto = super::check_hello(&self.buf, "local")?;
        self.expect(t::OPEN)?;
        let open = Open::decode(&self.buf)?;
        if open.keepalive_ms > 0 {
            self.keepalive(Duration::from_millis(open.keepalive_ms.max(10).into()));
        }
        let state_dir = if open.state_dir.is_empty() {
            env.default_state_dir.clone()
        } else {
            PathBuf::from(std::ffi::OsStr::from_bytes(&open.state_dir))
        };
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&open.root));
        let dsts = resolve(&root, &open.trees)?;
        // Before anything is read from the trees or written anywhere.
        check_allowed(env, &root, &open, &dsts, &state_dir)?;
        if self.proto >= 5 {
            // A dry run writes nothing here, not even a tree's state directory: it gets the
            // manifests whole.
            if open.flags & flag::DRY_RUN == 0 {
                self.held = held_manifests(&state_dir, &dsts);
            } else {
                self.held = vec![None; dsts.len()];
            }
            let have: Vec<u8> = self
                .held
                .iter()
                .flat_map(|h| h.as_ref().map_or([0; 32], |(h, _)| *h))
                .collect();
            self.send(t::HAVE, &have)?;
        }
        match self.recv()? {
            t::ROLLBACK => {
                Dec::new(&self.buf, "ROLLBACK").end()?;
                self.out
                    .doing("rolling back (`jailsync rollback --root`)", None);
                self.out.unmeasured.store(true, Ordering::Relaxed);
                let (code, out) = (env.rollback)(
                    &root_of(&dsts[0], &open.trees[0]),
                    open.flags & flag::FORCE != 0,
                    open.flags & flag::DRY_RUN != 0,
                    &state_dir,
                );
                let p = Enc::default().u8(code).bytes(out.as_bytes()).0;
                self.send(t::ROLLED, &p)
            }
            k @ (t::MANIFEST | t::MANIFEST_DELTA) => self.push(env, &open, &state_dir, &dsts, k),
            k => Err(RemoteError::Protocol(format!(
                "expected MANIFEST or ROLLBACK, got {}",
                t::name(k)
            ))),
        }
    }

    fn push(
        &mut self,
        env: &ServeEnv,
        open: &Open,
        state_dir: &Path,
        dsts: &[PathBuf],
        first_kind: u8,
    ) -> Result<()> {
        let received = self.manifests(&open.trees, first_kind)?;
        let state = sync::open_state(
            state_dir,
            &dsts.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
        )?;
        let mut manifests = Vec::new();
        for ((m, text), dst) in received.into_iter().zip(dsts) {
            // The base of the next push's manifest delta (a dry run writes nothing).
            if self.proto >= 5 && open.flags & flag::DRY_RUN == 0 {
                hold_manifest(&state, dst, &text);
            }
            manifests.push(m);
        }
        let text = |l: &[Vec<u8>]| -> Vec<String> {
            l.iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        };
        let globs = text(&open.protect);
        let rules = if open.flags & flag::PROTECT != 0 {
            let r = Rules::new(open.flags & flag::PROTECT_ETC != 0, &globs)
                .map_err(|e| RemoteError::Refused(format!("bad protect pattern: {e}")))?;
            (!r.is_empty()).then_some(r)
        } else {
            None
        };
        // As `upgrade`: the trees' extra excludes, `--exclude`, and a kept file's jail
        // version (`*.jailsync-new`) never synced nor deleted.
        let mut patterns = text(&open.excludes);
        patterns.extend(text(&open.exclude_all));
        if rules.is_some() {
            patterns.push(crate::protect::NEW_EXCLUDE.to_string());
            patterns.push(crate::protect::ASIDE_EXCLUDE.to_string());
        }
        let excludes = crate::scan::Excludes::new(&patterns)
            .map_err(|e| RemoteError::Refused(format!("bad exclude pattern: {e}")))?;
        let opts = SyncOpts {
            excludes,
            exclude_patterns: patterns,
            xattrs: open.flags & flag::XATTRS != 0,
            rollback: open.flags & flag::ROLLBACK != 0,
            fsync: open.flags & flag::FSYNC != 0,
            keep: open.keep as usize,
            threads: open.threads as usize,
            stop: env.stop.clone(),
            move_source: true,
            dry_run: open.flags & flag::DRY_RUN != 0,
            ..SyncOpts::default()
        };
        let pools = Pools::new(opts.threads);
        // The root-level record `history --root` and `rollback --root` read, as `upgrade`
        // writes it: before anything is staged (a dry run records nothing).
        let root_c = root_of(&dsts[0], &open.trees[0]);
        let source = String::from_utf8_lossy(&open.source).into_owned();
        let record = match &env.record_begin {
            Some(_) if opts.dry_run => None,
            Some(begin) => {
                let pairs: Vec<(PathBuf, PathBuf)> = open
                    .trees
                    .iter()
                    .zip(dsts)
                    .map(|(t, d)| (PathBuf::from(std::ffi::OsStr::from_bytes(t)), d.clone()))
                    .collect();
                Some(begin(state_dir, &root_c, &source, &pairs).map_err(RemoteError::Refused)?)
            }
            None => None,
        };
        // The later trees (nested databases) exclude only `--exclude` and the kept files'
        // versions.
        let mut opts2 = opts.clone();
        let mut later_patterns = text(&open.exclude_all);
        if rules.is_some() {
            later_patterns.push(crate::protect::NEW_EXCLUDE.to_string());
            later_patterns.push(crate::protect::ASIDE_EXCLUDE.to_string());
        }
        opts2.excludes = crate::scan::Excludes::new(&later_patterns)
            .map_err(|e| RemoteError::Refused(format!("bad exclude pattern: {e}")))?;
        opts2.exclude_patterns = later_patterns;
        let res = self.push_trees(
            open,
            manifests,
            dsts,
            &state,
            &opts,
            &opts2,
            &pools,
            rules.as_ref(),
        );
        if let (Some(id), Some(end)) = (record, &env.record_end) {
            let r = end(state_dir, &root_c, id);
            if res.is_ok() {
                r.map_err(RemoteError::Refused)?;
            }
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn push_trees(
        &mut self,
        open: &Open,
        manifests: Vec<manifest::Manifest>,
        dsts: &[PathBuf],
        state: &crate::journal::StateDir,
        opts: &SyncOpts,
        opts2: &SyncOpts,
        pools: &Pools,
        rules: Option<&Rules>,
    ) -> Result<()> {
        let label = format!("push from {}", wire::printable(&open.source));
        // As `upgrade`'s phases (`layout::Layout::phases`): a tree inside another (a nested
        // package database) is switched after it, as its own tree; the outer tree excludes
        // it and its home (the excludes OPEN gives).
        let rel_of = |b: &Vec<u8>| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        let rels: Vec<PathBuf> = open.trees.iter().map(rel_of).collect();
        let inner: Vec<bool> = rels
            .iter()
            .map(|t| rels.iter().any(|o| o != t && t.starts_with(o)))
            .collect();
        let mut first = Vec::new();
        let mut later = Later {
            trees: Vec::new(),
            opts: opts2,
            want: Vec::new(),
            label: label.clone(),
        };
        for (k, (mut m, dst)) in manifests.into_iter().zip(dsts).enumerate() {
            // An excluded path is neither created, changed nor deleted: the live scan does
            // not see it, so its tree is planned without it (and what is below it).
            drop_excluded(
                &mut m,
                if inner[k] {
                    &opts2.excludes
                } else {
                    &opts.excludes
                },
            );
            if inner[k] {
                later.trees.push((open.trees[k].clone(), m, dst.clone()));
            } else {
                first.push((open.trees[k].clone(), m, dst.clone()));
            }
        }
        // What the later trees will copy, planned now against their live trees (then let go:
        // a nested tree's lock conflicts with the outer one's): it is received with the rest,
        // before the fleet's word.
        let mut later_counts = Counts::default();
        let beat = Beat(self.out.clone());
        for (rel, m, dst) in &later.trees {
            let copy = manifest::Manifest {
                stamp: m.stamp,
                entries: m.entries.clone(),
            };
            let mut t = sync::prepare_given(UNSET.as_ref(), copy, dst, state, opts2, pools, &beat)?;
            if opts.dry_run {
                t.src_path = t.dst_path.clone();
                let rel = std::slice::from_ref(rel);
                decide_trees(std::slice::from_mut(&mut t), rel, state, rules)?;
                add_counts(&mut later_counts, &t);
            }
            for (_, si) in needs(std::slice::from_ref(&t)) {
                let e = t.src.at(si);
                if e.size > 0 {
                    later.want.push((*e.hash.expect("hashed"), e.size));
                }
            }
        }
        let rels_first: Vec<Vec<u8>> = first.iter().map(|(r, _, _)| r.clone()).collect();
        let mut trees: Vec<Tree> = Vec::new();
        for (_, m, dst) in first {
            let mut t = sync::prepare_given(UNSET.as_ref(), m, &dst, state, opts, pools, &beat)?;
            t.source_label = Some(label.clone().into());
            trees.push(t);
        }
        if opts.dry_run {
            return self.report_plan(
                &mut trees,
                &rels_first,
                state,
                pools,
                rules,
                &later.want,
                later_counts,
            );
        }
        let res = Work::make(&mut trees, opts).and_then(|work| {
            let decisions = decide_trees(&mut trees, &rels_first, state, rules)?;
            let r = self.push_prepared(
                &mut trees,
                &work,
                state,
                opts,
                pools,
                rules.map(|r| (r, &decisions[..], &rels_first[..])),
                later,
            );
            drop(work);
            r
        });
        // The shadow's stat cache (written by the switch like any source's) is not kept.
        forget_shadows(&trees, state);
        res
    }

    /// A dry run's answer (PLANNED): what the plans change and what this host lacks, nothing
    /// received, staged or written.
    #[allow(clippy::too_many_arguments)]
    fn report_plan(
        &mut self,
        trees: &mut [Tree],
        rels: &[Vec<u8>],
        state: &crate::journal::StateDir,
        pools: &Pools,
        rules: Option<&Rules>,
        later_want: &[(Hash, u64)],
        mut counts: Counts,
    ) -> Result<()> {
        // There is no shadow: protection takes every hash from the manifest, never reading
        // a source file.
        for t in trees.iter_mut() {
            t.src_path = t.dst_path.clone();
        }
        let decisions = decide_trees(trees, rels, state, rules)?;
        let needs = need_list(trees, rules.map(|_| &decisions[..]));
        self.out.doing(LOOKING, None);
        let l = lacks(trees, &needs, later_want, pools, false)?;
        for t in trees.iter() {
            add_counts(&mut counts, t);
        }
        let p = Enc::default()
            .u64(counts.created)
            .u64(counts.updated)
            .u64(counts.type_changed)
            .u64(counts.metadata)
            .u64(counts.deleted)
            .u64(l.want.len() as u64)
            .u64(l.want.values().sum())
            .u64(needs.len() as u64)
            .u64(l.found)
            .0;
        self.send(t::PLANNED, &p)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_prepared(
        &mut self,
        trees: &mut [Tree],
        work: &Work,
        state: &crate::journal::StateDir,
        opts: &SyncOpts,
        pools: &Pools,
        protect: Option<Protecting<'_>>,
        later: Later,
    ) -> Result<()> {
        let t0 = Instant::now();
        // Every file the shadows must hold: those the stager copies, and the jail's version
        // of each kept configuration file that changed in the jail (written as
        // `NAME.jailsync-new` after the switch, from the shadow).
        let needs = need_list(trees, protect.map(|p| p.1));
        let Lacks {
            live,
            want,
            uses,
            found,
            bases,
        } = {
            self.out.doing(LOOKING, None);
            lacks(trees, &needs, &later.want, pools, self.proto >= 5)?
        };
        check_room(trees, &needs)?;
        let list: Vec<Hash> = want.keys().copied().collect();
        // From version 5 each wanted hash comes with the hash of this host's old version of
        // the file (zero: none), the base of a delta.
        let entry = |h: &Hash| -> Vec<u8> {
            let mut v = h.to_vec();
            if self.proto >= 5 {
                v.extend_from_slice(&bases.get(h).map_or([0; 32], |b| b.0));
            }
            v
        };
        let wire: Vec<Vec<u8>> = list.iter().map(entry).collect();
        for c in wire.chunks(wire::CHUNK / 64) {
            self.send(t::WANT, &c.concat())?;
        }
        let p = Enc::default()
            .u64(list.len() as u64)
            .u64(needs.len() as u64)
            .u64(found)
            .0;
        self.send(t::WANT_END, &p)?;
        self.receive_blobs(work, &want, &bases, trees, opts)?;
        self.out.doing(FILLING, None);
        fill_shadows(trees, &work.blobs, &live, &uses, &needs, meta_of(opts))?;
        let beat = Beat(self.out.clone());

        // Stage, then wait at the last safe point for the fleet's word.
        let mut gated = false;
        let mut chan: Option<Result<()>> = None;
        let changes: u64 = trees.iter().map(|t| t.plan.actions.len() as u64).sum();
        let r = {
            let this = &mut *self;
            let dst0 = trees[0].dst_path.clone();
            let mut gate = |rep: &sync::Report| -> crate::Result<()> {
                gated = true;
                let _ = rep;
                let p = Enc::default()
                    .u64(changes)
                    .u64(t0.elapsed().as_millis() as u64)
                    .0;
                let r = this.send(t::STAGED, &p).and_then(|()| {
                    match this.recv()? {
                    t::SWITCH => Ok(()),
                    t::ABORT => Err(RemoteError::Aborted(
                        "the local side said abort (another host failed): nothing was switched here"
                            .into(),
                    )),
                    k => Err(RemoteError::Protocol(format!(
                        "expected SWITCH or ABORT, got {}",
                        t::name(k)
                    ))),
                }
                });
                match r {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let why = e.to_string();
                        chan = Some(Err(e));
                        Err(crate::Error::bad(dst0.clone(), why))
                    }
                }
            };
            crate::txn::switch_all_gated(trees, state, opts, pools, &beat, &mut gate)
        };
        if let Some(Err(e)) = chan {
            return Err(e);
        }
        let report = r?;
        if let Some(why) = &report.aborted {
            return Err(RemoteError::Refused(why.clone()));
        }
        if !gated {
            return Err(RemoteError::Protocol(
                "switched without the fleet's word".into(),
            ));
        }
        let mut sum = Sum::default();
        sum.add(trees, &report, changes, state, protect)?;
        if !later.trees.is_empty() {
            for t in trees.iter_mut() {
                t.unlock();
            }
            let l = later;
            let rules = protect.map(|p| p.0);
            run_later(l, &work.blobs, state, pools, rules, &mut sum, &beat)?;
        }
        let p = Enc::default()
            .u64(sum.window.as_nanos() as u64)
            .u64(sum.changes)
            .u64(sum.bytes)
            .u32(sum.procs)
            .u32(sum.n_err)
            .bytes(sum.errors.as_bytes())
            .u32(sum.tally[0])
            .u32(sum.tally[1])
            .u32(sum.tally[2]);
        // (5) This host's CPU, microseconds: the fleet's cost is reported host by host.
        let p = match self.proto >= 5 {
            true => p.u64((self.cpu.map_or(0.0, |f| f()) * 1e6) as u64).0,
            false => p.0,
        };
        self.send(t::DONE, &p)
    }
}

pub(super) fn add_counts(c: &mut Counts, t: &Tree) {
    let n = Counts::of(&t.plan);
    c.created += n.created;
    c.updated += n.updated;
    c.type_changed += n.type_changed;
    c.metadata += n.metadata;
    c.deleted += n.deleted;
}

/// Leaves out of a manifest what `ex` excludes, with everything below it (a scan never
/// enters an excluded directory). The root stays.
pub(super) fn drop_excluded(m: &mut manifest::Manifest, ex: &crate::scan::Excludes) {
    if ex.is_empty() {
        return;
    }
    m.entries.retain(|e| {
        e.path.is_empty()
            || !(ex.matches(e.path, split_parent(e.path).1, e.kind == Kind::Dir)
                || excluded_below(ex, e.path))
    });
}

/// Is `path` below an excluded directory?
pub(super) fn excluded_below(ex: &crate::scan::Excludes, path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &c)| {
        c == b'/' && {
            let dir = &path[..i];
            ex.matches(dir, split_parent(dir).1, true)
        }
    })
}

/// The phases of a push that are the session's own, as ALIVE names them.
pub(super) const LOOKING: &str =
    "looking among its live files for the content it lacks (hashing them)";
pub(super) const FILLING: &str =
    "filling the shadow (copying content found on this host or received)";

/// Trees switched after the first ones (nested databases), as `upgrade`'s later phase.
pub(super) struct Later<'a> {
    /// (rel, manifest, destination).
    trees: Vec<(Vec<u8>, manifest::Manifest, PathBuf)>,
    opts: &'a SyncOpts,
    /// Content they will copy (hash, size), received with the first trees'.
    want: Vec<(Hash, u64)>,
    label: String,
}

/// The protection decisions of each tree, on the plans, with the shadows (empty yet) as the
/// sources: the manifest gives every hash, so nothing is read from them.
pub(super) fn decide_trees(
    trees: &mut [Tree],
    rels: &[Vec<u8>],
    state: &crate::journal::StateDir,
    rules: Option<&Rules>,
) -> Result<Vec<Decisions>> {
    let mut out = Vec::new();
    if let Some(rules) = rules {
        for (t, rel) in trees.iter_mut().zip(rels) {
            // Only a dry run meets a tree not made yet: nothing lives there to keep.
            if !t.dst_path.exists() {
                out.push(Decisions::default());
                continue;
            }
            let base = Base::load(state, &t.dst_path)?;
            t.guard = crate::protect::guard_paths(rules, rel, &t.dst);
            out.push(crate::protect::decide(
                rules,
                rel,
                &base,
                &t.src_path,
                &t.dst_path,
                &mut t.src,
                &t.dst,
                &mut t.plan,
            )?);
        }
    }
    Ok(out)
}

/// The later phase, once the first trees are switched: each nested database planned against
/// its live tree (carried across by the outer tree's switch), staged from this host's files
/// and the blobs received for it, and switched, as `upgrade` does.
pub(super) fn run_later(
    l: Later,
    blobs: &Path,
    state: &crate::journal::StateDir,
    pools: &Pools,
    rules: Option<&Rules>,
    sum: &mut Sum,
    beat: &Beat,
) -> Result<()> {
    // A nested database's parent belongs to the tree holding it, which set its mtime: the
    // database's own switch must not change it.
    let parents: Vec<_> = l
        .trees
        .iter()
        .filter_map(|(_, _, d)| d.parent())
        .filter_map(|p| crate::protect::DirMtime::of(p).ok())
        .collect();
    let rels: Vec<Vec<u8>> = l.trees.iter().map(|(r, _, _)| r.clone()).collect();
    let mut trees = Vec::new();
    for (_, m, dst) in l.trees {
        let mut t = sync::prepare_given(UNSET.as_ref(), m, &dst, state, l.opts, pools, beat)?;
        t.source_label = Some(l.label.clone().into());
        trees.push(t);
    }
    let res = Work::make(&mut trees, l.opts).and_then(|work| {
        let decisions = decide_trees(&mut trees, &rels, state, rules)?;
        let needs = need_list(&trees, rules.map(|_| &decisions[..]));
        beat.0.doing(LOOKING, None);
        let Lacks { live, uses, .. } = lacks(&mut trees, &needs, &[], pools, false)?;
        beat.0.doing(FILLING, None);
        fill_shadows(&trees, blobs, &live, &uses, &needs, meta_of(l.opts))?;
        let changes: u64 = trees.iter().map(|t| t.plan.actions.len() as u64).sum();
        let report = crate::txn::switch_all(&mut trees, state, l.opts, pools, beat)?;
        for p in &parents {
            let _ = p.restore();
        }
        if let Some(why) = report.aborted.as_ref() {
            return Err(RemoteError::Refused(format!(
                "the package database was not switched ({why}); the packages were: it stays with the old release"
            )));
        }
        let r = sum.add(
            &trees,
            &report,
            changes,
            state,
            rules.map(|r| (r, &decisions[..], &rels[..])),
        );
        drop(work);
        r
    });
    forget_shadows(&trees, state);
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io;

    /// A host at work without a frame (here a rollback taking 300 ms) sends ALIVE meanwhile
    /// when OPEN asks for a keepalive, and never otherwise.
    #[test]
    fn a_host_at_work_says_so_only_when_asked() {
        for keepalive_ms in [50u32, 0] {
            let root = tempfile::tempdir().unwrap();
            fs::create_dir_all(root.path().join("usr/pkg")).unwrap();
            let (to_serve, mut local_w) = io::pipe().unwrap();
            let (mut local_r, from_serve) = io::pipe().unwrap();
            let open = Open {
                source: b"test:/jail".to_vec(),
                root: root.path().as_os_str().as_bytes().to_vec(),
                trees: vec![b"usr/pkg".to_vec()],
                state_dir: Vec::new(),
                flags: 0,
                keep: 1,
                threads: 1,
                protect: Vec::new(),
                excludes: Vec::new(),
                exclude_all: Vec::new(),
                keepalive_ms,
            };
            for (k, p) in [
                (t::HELLO, super::super::hello()),
                (t::OPEN, open.encode()),
                (t::ROLLBACK, Vec::new()),
            ] {
                wire::write_frame(&mut local_w, k, &p).unwrap();
            }
            let reader = std::thread::spawn(move || {
                let (mut kinds, mut buf) = (Vec::new(), Vec::new());
                while let Some(k) = wire::read_frame(&mut local_r, &mut buf).unwrap() {
                    kinds.push(k);
                }
                kinds
            });
            let env = ServeEnv {
                default_state_dir: root.path().join("state"),
                allow_roots: Vec::new(),
                stop: None,
                rollback: Box::new(|_, _, _, _| {
                    std::thread::sleep(Duration::from_millis(300));
                    (0, "rolled back".into())
                }),
                record_begin: None,
                record_end: None,
                cpu_seconds: None,
            };
            let mut r = io::BufReader::new(to_serve);
            serve(&mut r, Box::new(from_serve), &env).unwrap();
            let kinds = reader.join().unwrap();
            let alive = kinds.iter().filter(|&&k| k == t::ALIVE).count();
            assert_eq!(kinds.first(), Some(&t::HELLO), "{kinds:?}");
            assert_eq!(kinds.last(), Some(&t::ROLLED), "{kinds:?}");
            if keepalive_ms > 0 {
                assert!(alive >= 2, "{kinds:?}");
            } else {
                assert_eq!(alive, 0, "{kinds:?}");
            }
        }
    }
}
