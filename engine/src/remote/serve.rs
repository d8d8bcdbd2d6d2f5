//! The remote end of `push` (`jailsync serve`): reads requests on one stream, answers on
//! another, and stages and switches its trees with the same engine code as `upgrade`.
//!
//! Where the content comes from: the jail's manifest stands for the source tree
//! ([`sync::prepare_given`]); the files the plan copies are put, under their paths, in a
//! private *shadow* directory of the state dir, each from a live file of this host with the
//! same hash (moved, renamed or shared content is never sent) or from a blob received. The
//! stager then reads the shadow exactly as it reads a jail. The shadow, the blobs and the stat
//! cache kept for the shadow go when the session ends, however it ends (a killed session's
//! are removed by the next one).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, BufRead, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::wire::{self, t, Dec, Enc};
use super::{RemoteError, Result};
use crate::entry::{Hash, Kind};
use crate::error::IoContext;
use crate::fsx::{self, split_parent};
use crate::hash::to_hex;
use crate::manifest;
use crate::paths::{self, Follow};
use crate::plan::{Counts, Op, NONE};
use crate::progress::{Phase, Progress};
use crate::protect::{Base, Decisions, Rules, Verdict};
use crate::sync::{self, Pools, SyncOpts, Tree};

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
}

pub type RecordBeginFn =
    Box<dyn Fn(&Path, &Path, &str, &[(PathBuf, PathBuf)]) -> std::result::Result<u64, String>>;
pub type RecordEndFn = Box<dyn Fn(&Path, &Path, u64) -> std::result::Result<(), String>>;

/// What OPEN asks for.
#[derive(Clone, Default)]
pub struct Open {
    /// Where the push comes from (`host:jail`), for the generations' records.
    pub source: Vec<u8>,
    pub root: Vec<u8>,
    pub trees: Vec<Vec<u8>>,
    pub state_dir: Vec<u8>,
    pub flags: u32,
    pub keep: u32,
    pub threads: u32,
    /// `--protect` globs and `protect` lines of the jail's jailsync.conf (see `protect`).
    pub protect: Vec<Vec<u8>>,
    /// Exclude patterns for the trees holding another: the homes of databases nested in a
    /// tree (their rollback generations stay on the host).
    pub excludes: Vec<Vec<u8>>,
    /// `--exclude` patterns, for every tree of every phase (as `upgrade --exclude`).
    pub exclude_all: Vec<Vec<u8>>,
    /// Send ALIVE after this long working without a frame either way (0: never): the local
    /// side's `--timeout` then measures a stalled connection, not a long scan.
    pub keepalive_ms: u32,
}

pub mod flag {
    pub const XATTRS: u32 = 1;
    pub const ROLLBACK: u32 = 2;
    pub const FSYNC: u32 = 4;
    pub const FORCE: u32 = 8;
    /// Protect every tree's `etc/` (configuration protection's default rule).
    pub const PROTECT_ETC: u32 = 16;
    /// Apply configuration protection (set whenever a rule is given).
    pub const PROTECT: u32 = 32;
    /// Plan and report (PLANNED); receive, stage and write nothing.
    pub const DRY_RUN: u32 = 64;
}

fn enc_list(mut e: Enc, l: &[Vec<u8>]) -> Enc {
    e = e.u32(l.len() as u32);
    for x in l {
        e = e.bytes(x);
    }
    e
}

fn dec_list(d: &mut Dec, what: &str) -> Result<Vec<Vec<u8>>> {
    let n = d.u32()?;
    if n > 256 {
        return Err(RemoteError::Protocol(format!("OPEN names {n} {what}")));
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let b = d.bytes()?.to_vec();
        if b.is_empty() || b.len() > 4096 || b.contains(&0) || std::str::from_utf8(&b).is_err() {
            return Err(RemoteError::Refused(format!(
                "{}: not a valid {what} pattern",
                wire::printable(&b)
            )));
        }
        out.push(b);
    }
    Ok(out)
}

impl Open {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default()
            .bytes(&self.source)
            .bytes(&self.root)
            .u32(self.trees.len() as u32);
        for t in &self.trees {
            e = e.bytes(t);
        }
        let e = e
            .bytes(&self.state_dir)
            .u32(self.flags)
            .u32(self.keep)
            .u32(self.threads);
        let e = enc_list(e, &self.protect);
        let e = enc_list(e, &self.excludes);
        enc_list(e, &self.exclude_all).u32(self.keepalive_ms).0
    }

    fn decode(p: &[u8]) -> Result<Open> {
        let mut d = Dec::new(p, "OPEN");
        let source = d.bytes()?.to_vec();
        let root = d.bytes()?.to_vec();
        let n = d.u32()?;
        if n == 0 || n > wire::MAX_TREES {
            return Err(RemoteError::Protocol(format!("OPEN names {n} trees")));
        }
        let mut trees = Vec::new();
        for _ in 0..n {
            trees.push(d.bytes()?.to_vec());
        }
        let o = Open {
            source,
            root,
            trees,
            state_dir: d.bytes()?.to_vec(),
            flags: d.u32()?,
            keep: d.u32()?,
            threads: d.u32()?,
            protect: dec_list(&mut d, "protect")?,
            excludes: dec_list(&mut d, "exclude")?,
            exclude_all: dec_list(&mut d, "exclude")?,
            keepalive_ms: d.u32()?,
        };
        d.end()?;
        let abs = |b: &[u8]| b.first() == Some(&b'/') && !b.contains(&0);
        if !abs(&o.root) || !(o.state_dir.is_empty() || abs(&o.state_dir)) {
            return Err(RemoteError::Refused(
                "the root and the state dir must be absolute paths".into(),
            ));
        }
        for t in &o.trees {
            let p = Path::new(std::ffi::OsStr::from_bytes(t));
            let plain = p.components().all(|c| matches!(c, Component::Normal(_)));
            if t.is_empty() || t.contains(&0) || !plain || p.is_absolute() {
                return Err(RemoteError::Refused(format!(
                    "{}: a tree must be a relative path without `..`",
                    wire::printable(t)
                )));
            }
        }
        if o.threads > 256 {
            return Err(RemoteError::Protocol("more than 256 threads asked".into()));
        }
        Ok(o)
    }
}

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
struct Out {
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
    fn doing(&self, what: &str, tree: Option<&Path>) {
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
struct Beat(Arc<Out>);

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

struct Session<'a> {
    r: &'a mut dyn BufRead,
    out: Arc<Out>,
    buf: Vec<u8>,
    /// Dropped: the keepalive thread ends.
    alive: Option<mpsc::Sender<()>>,
}

impl Session<'_> {
    fn send(&mut self, kind: u8, p: &[u8]) -> Result<()> {
        let mut w = self.out.w.lock().expect("poisoned");
        wire::write_frame(&mut *w, kind, p)?;
        w.flush()?;
        drop(w);
        *self.out.quiet_since.lock().expect("poisoned") = Some(Instant::now());
        Ok(())
    }

    /// The next frame; the peer's ERROR and a closed stream become errors.
    fn recv(&mut self) -> Result<u8> {
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
        super::check_hello(&self.buf, "local")?;
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
            t::MANIFEST => self.push(env, &open, &state_dir, &dsts),
            k => Err(RemoteError::Protocol(format!(
                "expected MANIFEST or ROLLBACK, got {}",
                t::name(k)
            ))),
        }
    }

    /// Reads the manifest of each tree: chunks until MANIFEST_END. The first chunk's frame is
    /// already in the buffer.
    fn manifests(&mut self, trees: &[Vec<u8>]) -> Result<Vec<manifest::Manifest>> {
        let mut out = Vec::new();
        let mut first = true;
        for (k, rel) in trees.iter().enumerate() {
            let mut text = Vec::new();
            loop {
                let kind = if first {
                    first = false;
                    t::MANIFEST
                } else {
                    self.recv()?
                };
                match kind {
                    t::MANIFEST => {
                        let raw = wire::unchunk(&self.buf, wire::CHUNK)?;
                        if (text.len() + raw.len()) as u64 > wire::MAX_MANIFEST {
                            return Err(RemoteError::Refused(format!(
                                "manifest of {} over {} bytes",
                                wire::printable(rel),
                                wire::MAX_MANIFEST
                            )));
                        }
                        text.extend_from_slice(&raw);
                    }
                    t::MANIFEST_END => {
                        let mut d = Dec::new(&self.buf, "MANIFEST_END");
                        if d.u32()? as usize != k {
                            return Err(RemoteError::Protocol("manifests out of order".into()));
                        }
                        d.end()?;
                        break;
                    }
                    k => {
                        return Err(RemoteError::Protocol(format!(
                            "expected MANIFEST, got {}",
                            t::name(k)
                        )))
                    }
                }
            }
            let shown = PathBuf::from(format!("manifest of {}", String::from_utf8_lossy(rel)));
            // Strict: structure, no `..`, every file with its hash (see `manifest`).
            out.push(manifest::parse(&shown, &text)?);
        }
        Ok(out)
    }

    fn push(
        &mut self,
        env: &ServeEnv,
        open: &Open,
        state_dir: &Path,
        dsts: &[PathBuf],
    ) -> Result<()> {
        let manifests = self.manifests(&open.trees)?;
        let state = sync::open_state(
            state_dir,
            &dsts.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
        )?;
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
        let l = lacks(trees, &needs, later_want, pools)?;
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
        } = {
            self.out.doing(LOOKING, None);
            lacks(trees, &needs, &later.want, pools)?
        };
        let list: Vec<Hash> = want.keys().copied().collect();
        for c in list.chunks(wire::CHUNK / 32) {
            self.send(t::WANT, &c.concat())?;
        }
        let p = Enc::default()
            .u64(list.len() as u64)
            .u64(needs.len() as u64)
            .u64(found)
            .0;
        self.send(t::WANT_END, &p)?;
        self.receive_blobs(work, &want, opts)?;
        self.out.doing(FILLING, None);
        Self::fill_shadows(trees, &work.blobs, &live, &uses, &needs, meta_of(opts))?;
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
        if let Some(why) = &report.fallback {
            return Err(RemoteError::Refused(format!(
                "cannot be switched whole ({why}); nothing was changed"
            )));
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
            .u32(sum.tally[2])
            .0;
        self.send(t::DONE, &p)
    }

    fn receive_blobs(
        &mut self,
        work: &Work,
        want: &HashMap<Hash, u64>,
        opts: &SyncOpts,
    ) -> Result<()> {
        let mut got: HashSet<Hash> = HashSet::new();
        let dir = fsx::open_root_nofollow(&work.blobs).at(&work.blobs)?;
        loop {
            if let Some(sig) = opts.stop_signal() {
                return Err(RemoteError::Aborted(format!(
                    "stopped by signal {sig} while receiving: nothing was switched"
                )));
            }
            match self.recv()? {
                t::BLOBS_DONE => break,
                t::BLOB => {
                    let mut d = Dec::new(&self.buf, "BLOB");
                    let (h, size) = (d.hash()?, d.u64()?);
                    d.end()?;
                    if want.get(&h) != Some(&size) || got.contains(&h) {
                        return Err(RemoteError::Protocol(format!(
                            "blob {} of {size} bytes was not asked for",
                            to_hex(&h)
                        )));
                    }
                    self.receive_blob(dir.as_fd(), &h, size)?;
                    got.insert(h);
                }
                k => {
                    return Err(RemoteError::Protocol(format!(
                        "expected BLOB, got {}",
                        t::name(k)
                    )))
                }
            }
        }
        if got.len() != want.len() {
            return Err(RemoteError::Protocol(format!(
                "{} blobs asked for, {} received",
                want.len(),
                got.len()
            )));
        }
        Ok(())
    }

    /// One blob into `dir/HEX`: chunks decompressed (never past the size announced), zero
    /// blocks left as holes, checked against its hash.
    fn receive_blob(&mut self, dir: BorrowedFd<'_>, h: &Hash, size: u64) -> Result<()> {
        let name = to_hex(h);
        let fd = fsx::create_excl_at(dir, name.as_bytes())?;
        let f = fs::File::from(fd);
        let mut hasher = blake3::Hasher::new();
        let mut at = 0u64;
        loop {
            match self.recv()? {
                t::DATA => {
                    let left = (size - at).min(wire::CHUNK as u64) as usize;
                    if left == 0 {
                        return Err(RemoteError::Protocol("blob longer than announced".into()));
                    }
                    let raw = wire::unchunk(&self.buf, left)?;
                    hasher.update(&raw);
                    write_runs(&f, &raw, at)?;
                    at += raw.len() as u64;
                }
                t::BLOB_END => {
                    Dec::new(&self.buf, "BLOB_END").end()?;
                    break;
                }
                k => {
                    return Err(RemoteError::Protocol(format!(
                        "expected DATA, got {}",
                        t::name(k)
                    )))
                }
            }
        }
        f.set_len(size)?;
        if at != size || hasher.finalize().as_bytes() != h {
            return Err(RemoteError::Refused(format!(
                "blob {name}: its content does not match its hash (did the jail change during the push?): nothing was changed"
            )));
        }
        Ok(())
    }

    /// Puts every file the stager will copy under its path in its tree's shadow, with the
    /// jail's metadata (owner, mode, xattrs, times) set on the fd that made it: the stager
    /// then only renames it into the next tree (see `SyncOpts::move_source`), and a kept
    /// configuration file's jail version is read from here with the jail's size and mtime.
    fn fill_shadows(
        trees: &[Tree],
        blobs_dir: &Path,
        live: &HashMap<Hash, (usize, usize)>,
        uses: &HashMap<Hash, usize>,
        needs: &[Need],
        meta: fsx::MetaOpts,
    ) -> Result<()> {
        let blobs = fsx::open_root_nofollow(blobs_dir).at(blobs_dir)?;
        let lives: Vec<OwnedFd> = trees
            .iter()
            .map(|t| fsx::open_root_nofollow(&t.dst_path).at(&t.dst_path))
            .collect::<crate::Result<_>>()?;
        let mut left: HashMap<Hash, usize> = uses.clone();
        for (k, t) in trees.iter().enumerate() {
            let shadow = &t.src_path;
            let root = fsx::open_root_nofollow(shadow).at(shadow)?;
            let mut made: HashSet<Vec<u8>> = HashSet::new();
            let bare = !meta.xattrs || fsx::makes_bare(root.as_fd());
            // Needs come in path order: one open of each shadow directory, and of each live
            // directory read in a row.
            let mut dir: Option<(Vec<u8>, OwnedFd)> = None;
            let mut ldir: Option<(usize, Vec<u8>, OwnedFd)> = None;
            for (_, path, e, h) in needs.iter().filter(|n| n.0 == k) {
                let (parent, name) = split_parent(path);
                let at = || shadow.join(fsx::os(path));
                if dir.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
                    mkdirs(root.as_fd(), parent, &mut made).at(at())?;
                    let fd = fsx::open_dir_beneath(root.as_fd(), parent).at(at())?;
                    dir = Some((parent.to_vec(), fd));
                }
                let dir = dir.as_ref().expect("just set").1.as_fd();
                let h = *h;
                let made_fd: OwnedFd = if e.size == 0 {
                    fsx::create_excl_at(dir, name).at(at())?
                } else if let Some(&(lk, dj)) = live.get(&h) {
                    let lp = trees[lk].dst.path(dj);
                    let (lparent, lname) = split_parent(lp);
                    let shown = trees[lk].dst_path.join(fsx::os(lp));
                    if ldir
                        .as_ref()
                        .is_none_or(|(k2, p, _)| *k2 != lk || p.as_slice() != lparent)
                    {
                        let fd = fsx::open_dir_beneath(lives[lk].as_fd(), lparent).at(&shown)?;
                        ldir = Some((lk, lparent.to_vec(), fd));
                    }
                    let ld = ldir.as_ref().expect("just set").2.as_fd();
                    let src = fsx::open_read_at(ld, lname).at(&shown)?;
                    let out = fsx::create_excl_at(dir, name).at(at())?;
                    fsx::copy_data(src.as_fd(), out.as_fd(), e.size, e.is_sparse()).at(at())?;
                    // The live file is checked after the copy: a writer since its scan makes
                    // the run fail here, never a wrong file staged.
                    let (got, _) = crate::hash::hash_fd(src.as_fd(), e.size).at(&shown)?;
                    if got != h {
                        return Err(RemoteError::Refused(format!(
                            "{}: changed while being copied; nothing was changed (run again)",
                            shown.display()
                        )));
                    }
                    out
                } else {
                    let hex = to_hex(&h);
                    let n = left.get_mut(&h).expect("wanted");
                    *n -= 1;
                    let src = fsx::open_read_at(blobs.as_fd(), hex.as_bytes()).at(at())?;
                    let copy = |src: &OwnedFd| -> Result<OwnedFd> {
                        let out = fsx::create_excl_at(dir, name).at(at())?;
                        fsx::copy_data(src.as_fd(), out.as_fd(), e.size, e.is_sparse()).at(at())?;
                        Ok(out)
                    };
                    if *n == 0 {
                        // The last path to need this blob takes it (one inode, one mtime), or a
                        // copy when the trees' homes are on other filesystems. Its fd, opened
                        // before the move, is the moved inode's.
                        match fsx::rename_at(blobs.as_fd(), hex.as_bytes(), dir, name) {
                            Err(err) if err.raw_os_error() == Some(libc::EXDEV) => copy(&src)?,
                            r => {
                                r.at(at())?;
                                src
                            }
                        }
                    } else {
                        copy(&src)?
                    }
                };
                // Made by this session: nothing to read back or remove first, unless the
                // shadow passes xattrs on.
                if bare {
                    fsx::set_meta_fresh_fd(made_fd.as_fd(), e, meta).at(at())?;
                } else {
                    fsx::set_meta_fd(made_fd.as_fd(), e, meta).at(at())?;
                }
            }
        }
        Ok(())
    }
}

/// The metadata the stager would set, set instead when a shadow file is made.
fn meta_of(opts: &SyncOpts) -> fsx::MetaOpts {
    fsx::MetaOpts {
        owner: opts.owner,
        xattrs: opts.xattrs,
    }
}

/// Writes `data` at `at`, leaving its all-zero 4 KiB blocks as holes: one write per run of
/// blocks holding data (a write per block was most of a host's system time).
fn write_runs(f: &fs::File, data: &[u8], at: u64) -> io::Result<()> {
    const B: usize = 4096;
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let end = (i + B).min(data.len());
        let zero = data[i..end].iter().all(|&b| b == 0);
        match (zero, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                f.write_all_at(&data[s..i], at + s as u64)?;
                start = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = start {
        f.write_all_at(&data[s..], at + s as u64)?;
    }
    Ok(())
}

/// What this host holds and lacks of the content the shadows need.
struct Lacks {
    /// Where each content hash is live here: (tree, live index).
    live: HashMap<Hash, (usize, usize)>,
    /// Content found nowhere here, with its size: what to ask for.
    want: HashMap<Hash, u64>,
    /// How many shadow files take each wanted blob.
    uses: HashMap<Hash, usize>,
    /// Files copied from content found here.
    found: u64,
}

/// Looks for the content of every need (and of the later trees' `later`) in the live trees.
fn lacks(
    trees: &mut [Tree],
    needs: &[Need],
    later: &[(Hash, u64)],
    pools: &Pools,
) -> Result<Lacks> {
    // Live files that may hold content the plan copies: those of a size it needs.
    let sizes: HashSet<u64> = needs.iter().map(|n| n.2.size).collect();
    for t in trees.iter_mut() {
        let idx: Vec<usize> = (0..t.dst.len())
            .filter(|&j| {
                let e = t.dst.at(j);
                e.kind == Kind::File && e.hash.is_none() && e.size > 0 && sizes.contains(&e.size)
            })
            .collect();
        sync::hash_live(t, &idx, pools)?;
    }
    let mut live: HashMap<Hash, (usize, usize)> = HashMap::new();
    for (k, t) in trees.iter().enumerate() {
        for (j, e) in t.dst.iter().enumerate() {
            if let (Kind::File, Some(h)) = (e.kind, e.hash) {
                live.entry(*h).or_insert((k, j));
            }
        }
    }
    // What this host lacks: distinct hashes of needed non-empty content found nowhere here.
    let mut want: HashMap<Hash, u64> = HashMap::new();
    let mut uses: HashMap<Hash, usize> = HashMap::new();
    let mut found = 0u64;
    for (_, _, e, h) in needs {
        let h = *h;
        if e.size == 0 {
            continue;
        }
        if live.contains_key(&h) {
            found += 1;
        } else {
            want.insert(h, e.size);
            *uses.entry(h).or_default() += 1;
        }
    }
    // The later trees' content not on this host: received now, kept in the blobs dir
    // for them (one more use, so no shadow of this phase takes it away).
    for (h, size) in later {
        if !live.contains_key(h) {
            want.insert(*h, *size);
            *uses.entry(*h).or_default() += 1;
        }
    }
    Ok(Lacks {
        live,
        want,
        uses,
        found,
    })
}

fn add_counts(c: &mut Counts, t: &Tree) {
    let n = Counts::of(&t.plan);
    c.created += n.created;
    c.updated += n.updated;
    c.type_changed += n.type_changed;
    c.metadata += n.metadata;
    c.deleted += n.deleted;
}

/// Leaves out of a manifest what `ex` excludes, with everything below it (a scan never
/// enters an excluded directory). The root stays.
fn drop_excluded(m: &mut manifest::Manifest, ex: &crate::scan::Excludes) {
    if ex.is_empty() {
        return;
    }
    m.entries.retain(|e| {
        e.path.is_empty()
            || !(ex.matches(e.path, split_parent(e.path).1, e.kind == Kind::Dir)
                || excluded_below(ex, e.path))
    });
}

/// The root a tree's destination belongs to: `dst` without the tree's `rel` components.
fn root_of(dst: &Path, rel: &[u8]) -> PathBuf {
    let mut r = dst.to_path_buf();
    for _ in Path::new(std::ffi::OsStr::from_bytes(rel)).components() {
        r.pop();
    }
    r
}

/// Is `path` below an excluded directory?
fn excluded_below(ex: &crate::scan::Excludes, path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &c)| {
        c == b'/' && {
            let dir = &path[..i];
            ex.matches(dir, split_parent(dir).1, true)
        }
    })
}

/// The phases of a push that are the session's own, as ALIVE names them.
const LOOKING: &str = "looking among its live files for the content it lacks (hashing them)";
const FILLING: &str = "filling the shadow (copying content found on this host or received)";

/// The shadow's place until the tree's home is open.
const UNSET: &str = "/nonexistent/jailsync-shadow";

/// Trees switched after the first ones (nested databases), as `upgrade`'s later phase.
struct Later<'a> {
    /// (rel, manifest, destination).
    trees: Vec<(Vec<u8>, manifest::Manifest, PathBuf)>,
    opts: &'a SyncOpts,
    /// Content they will copy (hash, size), received with the first trees'.
    want: Vec<(Hash, u64)>,
    label: String,
}

/// The protection decisions of each tree, on the plans, with the shadows (empty yet) as the
/// sources: the manifest gives every hash, so nothing is read from them.
fn decide_trees(
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

/// Every file the shadows must hold: those the stager copies, and the jail's version of each
/// kept configuration file that changed in the jail (written as `NAME.jailsync-new` after
/// the switch, from the shadow).
fn need_list(trees: &[Tree], decisions: Option<&[Decisions]>) -> Vec<Need> {
    let mut out: Vec<Need> = needs(trees)
        .into_iter()
        .map(|(k, si)| {
            let e = trees[k].src.at(si);
            let h = *e.hash.expect("the manifest gives every file's hash");
            (k, Box::from(e.path), (*e).clone(), h)
        })
        .collect();
    for (k, d) in decisions.unwrap_or_default().iter().enumerate() {
        for x in d.list.iter().filter(|x| x.verdict == Verdict::KeptNew) {
            let (e, p) = x.jail.as_ref().expect("kept-new has the jail's");
            // Only a file's content comes from the shadow; a symlink or device is made from
            // its entry.
            if e.kind == crate::entry::Kind::File {
                out.push((k, x.path.clone(), e.clone(), p.digest));
            }
        }
    }
    out
}

/// The shadow's stat cache (written by the switch like any source's) is not kept.
fn forget_shadows(trees: &[Tree], state: &crate::journal::StateDir) {
    for t in trees {
        if t.src_path != Path::new(UNSET) {
            if let Ok(d) = state.tree_dir(&t.src_path) {
                let _ = crate::fsx::remove_tree(d);
            }
        }
    }
}

/// What DONE reports, over every phase.
#[derive(Default)]
struct Sum {
    window: std::time::Duration,
    changes: u64,
    bytes: u64,
    procs: u32,
    n_err: u32,
    errors: String,
    tally: [u32; 3],
}

impl Sum {
    /// One phase switched: its figures and errors, and configuration protection's end as
    /// after a local upgrade (the jail's versions of kept files written beside them, the new
    /// base recorded).
    fn add(
        &mut self,
        trees: &[Tree],
        report: &sync::Report,
        changes: u64,
        state: &crate::journal::StateDir,
        protect: Option<Protecting<'_>>,
    ) -> Result<()> {
        self.window += report.switch_window;
        self.changes += changes;
        self.bytes += report.bytes_written();
        self.procs += report.procs.len() as u32;
        for (t, o) in trees.iter().zip(&report.outcomes) {
            for e in &o.errors {
                self.n_err += 1;
                if self.errors.len() < 8192 {
                    self.errors.push_str(&format!(
                        "{}: {} (while {})\n",
                        t.dst_path.join(fsx::os(&e.path)).display(),
                        e.error,
                        e.phase.name()
                    ));
                }
            }
            for (p, e) in &t.scan_errors {
                self.n_err += 1;
                if self.errors.len() < 8192 {
                    self.errors
                        .push_str(&format!("{}: {e} (while scan)\n", p.display()));
                }
            }
        }
        // Configuration protection's end, as after a local upgrade: the jail's versions of
        // kept files written beside them, the new base recorded.
        if let Some((rules, decisions, rels)) = protect {
            let owner = fsx::geteuid_is_root();
            for (((t, d), rel), o) in trees.iter().zip(decisions).zip(rels).zip(&report.outcomes) {
                for x in &d.list {
                    self.tally[x.verdict as usize] += 1;
                }
                let unapplied = crate::protect::unapplied(&t.plan, &t.src, &t.dst, o);
                let done = crate::protect::finish(
                    state,
                    rules,
                    rel,
                    &t.src_path,
                    &t.dst_path,
                    &t.src,
                    d,
                    &unapplied,
                    owner,
                )?;
                for (p, e) in done.failed {
                    self.n_err += 1;
                    self.tally[Verdict::KeptNew as usize] -= 1;
                    if self.errors.len() < 8192 {
                        self.errors.push_str(&format!(
                            "{}: {e} (while writing the jail's version of a kept configuration file)\n",
                            t.dst_path.join(fsx::os(&p)).display()
                        ));
                    }
                }
                // Not an error, but the admin must hear of it: it rides with the errors.
                for (from, to) in done.set_aside {
                    if self.errors.len() < 8192 {
                        self.errors.push_str(&format!(
                            "{}: not written by jailsync: kept as {} (note)\n",
                            t.dst_path.join(fsx::os(&from)).display(),
                            t.dst_path.join(fsx::os(&to)).display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The later phase, once the first trees are switched: each nested database planned against
/// its live tree (carried across by the outer tree's switch), staged from this host's files
/// and the blobs received for it, and switched, as `upgrade` does.
fn run_later(
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
        let Lacks { live, uses, .. } = lacks(&mut trees, &needs, &[], pools)?;
        beat.0.doing(FILLING, None);
        Session::fill_shadows(&trees, blobs, &live, &uses, &needs, meta_of(l.opts))?;
        let changes: u64 = trees.iter().map(|t| t.plan.actions.len() as u64).sum();
        let report = crate::txn::switch_all(&mut trees, state, l.opts, pools, beat)?;
        for p in &parents {
            let _ = p.restore();
        }
        if let Some(why) = report.aborted.as_ref().or(report.fallback.as_ref()) {
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

/// Configuration protection of a push: the rules, each tree's decisions, each tree's name.
type Protecting<'a> = (&'a Rules, &'a [Decisions], &'a [Vec<u8>]);

/// A file a shadow must hold: (tree, path, the jail's entry, its hash).
type Need = (usize, Box<[u8]>, crate::entry::Entry, Hash);

/// Every source file the stager copies, as (tree, source index): a file the plan does not
/// leave to its live inode, and not a hard-link follower (linked to its leader in the next
/// tree). Mirrors `stage::Builder::layout`.
fn needs(trees: &[Tree]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (k, t) in trees.iter().enumerate() {
        let mut op: Vec<Option<Op>> = vec![None; t.src.len()];
        let mut follower = vec![false; t.src.len()];
        for a in &t.plan.actions {
            if a.src != NONE {
                op[a.src as usize] = Some(a.op);
                follower[a.src as usize] = a.link_to != NONE;
            }
        }
        for (i, e) in t.src.iter().enumerate() {
            if e.kind != Kind::File || follower[i] {
                continue;
            }
            let live_same = t
                .dst
                .search(e.path)
                .is_ok_and(|j| t.dst.at(j).kind == Kind::File);
            let kept = matches!(op[i], None | Some(Op::Meta)) && live_same;
            if !kept && (op[i].is_some() || !live_same) {
                out.push((k, i));
            }
        }
    }
    out
}

/// `mkdir -p` of `rel` below `root`, private (0700), remembering what exists.
fn mkdirs(root: BorrowedFd<'_>, rel: &[u8], made: &mut HashSet<Vec<u8>>) -> io::Result<()> {
    if rel.is_empty() || made.contains(rel) {
        return Ok(());
    }
    let (parent, name) = split_parent(rel);
    mkdirs(root, parent, made)?;
    let pd = fsx::open_dir_beneath(root, parent)?;
    match fsx::mkdir_at(pd.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    made.insert(rel.to_vec());
    Ok(())
}

/// The ROOT/REL of each tree, resolved on this host: no symlink followed below ROOT (nor
/// ROOT's own last name), as `upgrade` does.
fn resolve(root: &Path, trees: &[Vec<u8>]) -> Result<Vec<PathBuf>> {
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
fn check_allowed(
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

/// This session's private directories: `incoming-PID` in each tree's home (the shadow: on the
/// live tree's filesystem, so its files are moved into the next tree, never copied twice) and
/// `incoming-PID.blobs` in the first tree's home. Removed on drop; those of sessions no longer
/// running are removed when a session starts.
struct Work {
    dirs: Vec<PathBuf>,
    blobs: PathBuf,
}

impl Work {
    fn make(trees: &mut [Tree], opts: &SyncOpts) -> Result<Work> {
        // A tree with nothing to do is prepared without a home; the session needs every one.
        for t in trees.iter_mut() {
            sync::ensure_home(t, opts)?;
        }
        if !sync::all_switchable(trees) {
            let t = trees
                .iter()
                .find(|t| t.home.as_ref().is_none_or(|h| !h.is_switchable()))
                .expect("one is not");
            let how = t
                .home
                .as_ref()
                .map(|h| h.method.describe())
                .unwrap_or_default();
            return Err(RemoteError::Refused(format!(
                "{}: cannot be switched whole ({how}); push stages every host before switching any, \
                 which needs the tree switch: nothing was changed",
                t.dst_path.display()
            )));
        }
        let pid = std::process::id();
        let mk = |p: &Path| fs::DirBuilder::new().mode(0o700).create(p).at(p);
        let mut work = Work {
            dirs: Vec::new(),
            blobs: PathBuf::new(),
        };
        for t in trees.iter_mut() {
            let home = t.home.as_ref().expect("switchable").path.clone();
            if let Ok(rd) = fs::read_dir(&home) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    let Some(rest) = n.to_str().and_then(|s| s.strip_prefix("incoming-")) else {
                        continue;
                    };
                    let other = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
                    if other.is_some_and(|p| p == pid || !Path::new(&format!("/proc/{p}")).exists())
                    {
                        let _ = crate::fsx::remove_tree(e.path());
                    }
                }
            }
            let shadow = home.join(format!("incoming-{pid}"));
            mk(&shadow)?;
            work.dirs.push(shadow.clone());
            if work.blobs.as_os_str().is_empty() {
                work.blobs = home.join(format!("incoming-{pid}.blobs"));
                mk(&work.blobs)?;
                work.dirs.push(work.blobs.clone());
            }
            t.src_path = shadow;
        }
        Ok(work)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = crate::fsx::remove_tree(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn runs_of_data_are_written_whole_and_zero_blocks_stay_holes() {
        let d = tempfile::tempdir().unwrap();
        // Blocks: data, zero, zero, data, data, zero, then a short data tail; written at an
        // offset, as a second chunk of a blob is.
        let mut data = vec![0u8; 6 * 4096 + 100];
        for b in [0usize, 3, 4] {
            data[b * 4096 + 7] = 1;
        }
        data[6 * 4096 + 99] = 9;
        let p = d.path().join("f");
        let f = fs::File::create(&p).unwrap();
        let at = 1 << 20;
        write_runs(&f, &data, at).unwrap();
        f.set_len(at + data.len() as u64).unwrap();
        let got = fs::read(&p).unwrap();
        assert!(got[..at as usize].iter().all(|&b| b == 0));
        assert_eq!(&got[at as usize..], &data[..]);
        // Four blocks hold data; the rest (the first MiB and the zero blocks) are holes.
        let blocks = f.metadata().unwrap().blocks() * 512;
        assert!(blocks <= 5 * 4096, "{blocks} bytes allocated");
        // All zero: nothing written.
        let g = fs::File::create(d.path().join("g")).unwrap();
        write_runs(&g, &[0u8; 3 * 4096], 0).unwrap();
        assert_eq!(g.metadata().unwrap().len(), 0);
    }

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
