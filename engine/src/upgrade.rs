//! `upgrade` as a use case: the jail's package trees onto the live root, in phases (see
//! `layout`), with configuration protection and a root-level record (`history::roots`) that
//! `history --root` and `rollback --root` read.
//!
//! The steps: the jail and its layout, the protection rules, the jail-marker check, every
//! tree and overlap checked, the `--max-delete` preflight over every phase, the record
//! begun (after a half-made switch is finished), then the phases in order, the record ended.
//! Running a phase (plan, decide, switch, report) is the caller's [`Steps::run_phase`]: the
//! CLI prints each tree's changes as they are made, which is no business of the engine's.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::deletes::{self, DeleteError};
use crate::error::Error;
use crate::history::roots;
use crate::journal::{Lock, StateDir};
use crate::layout::{self, Layout};
use crate::protect::{self, Base, Decisions, DirMtime, Rules};
use crate::sync::{self, Pools, SyncOpts, Tree};

/// What the user asked of an upgrade.
#[derive(Debug, Clone, Default)]
pub struct UpgradeRequest {
    /// The jail holding the rebuilt packages.
    pub jail: PathBuf,
    /// The live system's root.
    pub root: PathBuf,
    /// Trees given (`--tree`); none: the jail's `tree` lines, else the layout it has.
    pub trees: Vec<PathBuf>,
    /// Globs to protect besides the jail's `protect` lines.
    pub protect: Vec<String>,
    /// Do not protect every tree's `etc/` by default.
    pub no_protect: bool,
    /// Upgrade a root that is a jail, and delete most of a tree, all the same.
    pub force: bool,
    pub dry_run: bool,
    pub follow_dst: bool,
    pub max_delete: Option<u64>,
    pub state_dir: PathBuf,
    /// How the trees are switched (`--switch`; `None`: as each is now).
    pub switch: Option<crate::opts::SwitchBy>,
}

/// The refusals of an upgrade itself (the trees' own are the engine's [`Error`]).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(
        "{}: no such jail (the directory the rebuilt packages are in; `jailsync jail init {}` \
         makes one)",
        .0.display(),
        .0.display()
    )]
    NoJail(PathBuf),
    /// ROOT, or a tree of it, carries the jail marker (`marker`: that file). `swapped`: the
    /// jail has none, so JAIL and `--root` were most likely given the wrong way round.
    #[error(
        "--root {}: {} has a {} marker, so it is a jail, not a live system{}; nothing was \
         changed (--force upgrades it all the same)",
        .root.display(),
        .marker.display(),
        crate::jail::MARKER_FILE,
        swap_hint(.root, .swapped.as_deref())
    )]
    IsAJail {
        root: PathBuf,
        marker: PathBuf,
        swapped: Option<PathBuf>,
    },
    #[error("{}: a tree must be a relative path without `..`", .0.display())]
    BadTree(PathBuf),
    // The cause is in the message, not a `source()` (the CLI prints the chain).
    #[error("bad --protect pattern: {0}")]
    BadProtect(globset::Error),
}

fn swap_hint(root: &Path, jail: Option<&Path>) -> String {
    match jail {
        Some(jail) => format!(
            "; JAIL and --root swapped? the jail goes first: `jailsync upgrade {} --root {}`",
            root.display(),
            jail.display()
        ),
        None => String::new(),
    }
}

/// One tree of an upgrade, checked: its name under JAIL and ROOT, and both paths canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePaths {
    pub rel: PathBuf,
    pub src: PathBuf,
    pub dst: PathBuf,
}

/// (source, destination, itemize prefix) of a run's pairs, paths canonical.
pub type Pair = (PathBuf, PathBuf, Vec<u8>);

/// One phase as the caller runs it: its trees, their pairs, the excludes that make an outer
/// tree carry a nested database across, and the protection rules.
#[derive(Clone)]
pub struct Phase {
    pub index: usize,
    pub trees: Vec<PathBuf>,
    pub pairs: Vec<Pair>,
    pub excludes: Vec<String>,
    pub protect: Option<Rules>,
}

/// What a phase did: `switched` false stops the upgrade (the database stays with the old
/// release).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseReport {
    pub trees: Vec<PathBuf>,
    pub switched: bool,
}

pub struct UpgradeReport {
    /// How the layout was found (one line each).
    pub layout: Vec<String>,
    pub trees: Vec<TreePaths>,
    /// ROOT, canonical.
    pub root: PathBuf,
    pub protect: Option<Rules>,
    /// The root-level record's id (none for a dry run).
    pub record: Option<u64>,
    /// The phases run, in order (a phase that switched nothing is the last).
    pub phases: Vec<PhaseReport>,
}

/// The caller's part of an upgrade: the options a phase is planned with, and running it.
pub trait Steps {
    /// The caller's error: the engine's, the upgrade's and the delete guard's convert to it.
    type Error: From<Error> + From<UpgradeError> + From<DeleteError>;

    /// The layout was found, `how` says how (before anything is checked).
    fn layout(&mut self, _how: &[String]) {}

    /// The jail's `exclude` lines, to be added to the run's own.
    fn jail_excludes(&mut self, pats: &[String]);

    /// The options a phase is planned with as a dry run (the preflight): the run's own plus
    /// `excludes`, and the protected run's own files left alone when `protect`.
    fn plan_opts(&self, excludes: &[String], protect: bool) -> Result<SyncOpts, Self::Error>;

    /// Runs one phase whole (plan, protect, guard, switch, report); true when it switched.
    fn run_phase(&mut self, phase: &Phase) -> Result<bool, Self::Error>;
}

/// Runs an upgrade (see the module's steps). Nothing is changed before every tree, overlap
/// and (with more than one phase) every phase's deletions are checked.
pub fn upgrade<S: Steps>(req: &UpgradeRequest, steps: &mut S) -> Result<UpgradeReport, S::Error> {
    if !req.jail.is_dir() {
        return Err(UpgradeError::NoJail(req.jail.clone()).into());
    }
    let (mut layout, conf_protect) =
        layout_of(&req.jail, &req.trees).map_err(UpgradeFail::into_caller::<S::Error>)?;
    if by_link(req, &layout) {
        layout.merge_nested();
    }
    steps.jail_excludes(&layout::read_conf_excludes(&req.jail)?);
    steps.layout(&layout.how);
    let rules = protect_rules(conf_protect, req)?;
    if !req.force {
        check_not_a_jail(&req.jail, &req.root, &layout.trees)?;
    }
    let trees = check_trees(req, &layout)?;
    let root = root_of(&trees);
    plan_ahead(req, steps, &layout, &trees, rules.as_ref())?;
    let record = if req.dry_run {
        None
    } else {
        Some(begin_record(req, &trees, &root)?)
    };
    let phases = run_phases(req, steps, &layout, &trees, rules.as_ref())?;
    if let Some((id, state)) = &record {
        roots::end(state, &root, *id)?;
    }
    Ok(UpgradeReport {
        layout: layout.how,
        trees,
        root,
        protect: rules,
        record: record.map(|(id, _)| id),
        phases,
    })
}

/// The trees of an upgrade: given, else `tree` lines of JAIL/jailsync.conf, else the layout
/// the jail has (databases last); and the jail's `protect` lines.
pub fn layout_of(jail: &Path, given: &[PathBuf]) -> Result<(Layout, Vec<String>), UpgradeFail> {
    let (conf_trees, conf_protect) = layout::read_conf(jail)?;
    let l = if !given.is_empty() {
        Layout::given(given.to_vec())
    } else if !conf_trees.is_empty() {
        Layout::given(conf_trees)
    } else {
        Layout::detect(jail)?
    };
    check_rel(&l.trees)?;
    Ok((l, conf_protect))
}

/// Either refusal [`layout_of`] makes.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeFail {
    #[error(transparent)]
    Engine(#[from] Error),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
}

impl UpgradeFail {
    /// Into the caller's error, the engine's kept as it is (so it can be told apart).
    pub fn into_caller<E: From<Error> + From<UpgradeError>>(self) -> E {
        match self {
            UpgradeFail::Engine(e) => e.into(),
            UpgradeFail::Upgrade(e) => e.into(),
        }
    }
}

/// Refuses a tree that is not a plain relative path.
pub fn check_rel(trees: &[PathBuf]) -> Result<(), UpgradeError> {
    for t in trees {
        let bad = t.is_absolute()
            || t.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)));
        if bad || t.as_os_str().is_empty() {
            return Err(UpgradeError::BadTree(t.clone()));
        }
    }
    Ok(())
}

/// The configuration protection rules: the jail's `protect` lines, the request's globs, and
/// every tree's `etc/` unless `no_protect`; None when there are none.
fn protect_rules(
    conf_protect: Vec<String>,
    req: &UpgradeRequest,
) -> Result<Option<Rules>, UpgradeError> {
    let mut globs = conf_protect;
    globs.extend(req.protect.iter().cloned());
    let rules = Rules::new(!req.no_protect, &globs).map_err(UpgradeError::BadProtect)?;
    Ok((!rules.is_empty()).then_some(rules))
}

/// Refuses an upgrade whose ROOT is a jail: ROOT, or a tree of it, carries the marker `jail
/// init` and the seed's mkjail write. That is JAIL and ROOT swapped (`upgrade / --root
/// /usr/pkg_jail`), which would make the jail's trees copies of the live system's, or one
/// jail upgraded from another by mistake.
fn check_not_a_jail(jail: &Path, root: &Path, trees: &[PathBuf]) -> Result<(), UpgradeError> {
    let marker = crate::jail::MARKER_FILE;
    let marked = std::iter::once(root.to_path_buf())
        .chain(trees.iter().map(|t| root.join(t)))
        .find(|d| std::fs::symlink_metadata(d.join(marker)).is_ok());
    let Some(at) = marked else { return Ok(()) };
    let jail_marked = std::fs::symlink_metadata(jail.join(marker)).is_ok();
    Err(UpgradeError::IsAJail {
        root: root.to_path_buf(),
        marker: at.join(marker),
        swapped: (!jail_marked).then(|| jail.to_path_buf()),
    })
}

/// Whether the trees holding a nested database are switched by symlink: asked, or (unasked)
/// already so. Such a tree switches its database with it, in the same rename.
fn by_link(req: &UpgradeRequest, layout: &Layout) -> bool {
    match req.switch {
        Some(b) => b == crate::opts::SwitchBy::Link,
        None => layout
            .nested()
            .iter()
            .any(|(_, outer)| crate::paths::is_switch_link(&req.root.join(outer))),
    }
}

/// Every tree and every overlap checked before anything is touched. A nested database
/// overlaps only the tree that holds it, which carries it across (see `layout`).
fn check_trees(req: &UpgradeRequest, layout: &Layout) -> Result<Vec<TreePaths>, Error> {
    let mut all = Vec::new();
    for t in &layout.trees {
        let (src, dst) = sync::check_tree(&req.jail, &req.root, t, req.follow_dst)?;
        all.push(TreePaths {
            rel: t.clone(),
            src,
            dst,
        });
    }
    let nested = layout.nested();
    let disjoint = |skip: &[&PathBuf]| -> Result<(), Error> {
        let pairs: Vec<(&Path, &Path)> = all
            .iter()
            .filter(|t| !skip.contains(&&t.rel))
            .map(|t| (t.src.as_path(), t.dst.as_path()))
            .collect();
        sync::check_disjoint(&pairs)
    };
    let inner: Vec<&PathBuf> = nested.iter().map(|(db, _)| db).collect();
    disjoint(&inner)?;
    for (_, outer) in &nested {
        disjoint(&[outer])?;
    }
    Ok(all)
}

/// ROOT, canonical: the first destination without its tree's components.
fn root_of(trees: &[TreePaths]) -> PathBuf {
    let t = &trees[0];
    let mut r = t.dst.clone();
    for _ in t.rel.components() {
        r.pop();
    }
    r
}

/// A phase's trees as (source, destination, tree) pairs.
fn pairs_of(all: &[TreePaths], trees: &[PathBuf]) -> Vec<Pair> {
    trees
        .iter()
        .map(|rel| {
            let t = all.iter().find(|t| &t.rel == rel).expect("checked");
            (
                t.src.clone(),
                t.dst.clone(),
                rel.as_os_str().as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The state dir for every destination.
fn open_state(req: &UpgradeRequest, trees: &[TreePaths]) -> Result<StateDir, Error> {
    let dsts: Vec<&Path> = trees.iter().map(|t| t.dst.as_path()).collect();
    sync::open_state(&req.state_dir, &dsts)
}

/// --max-delete holds for the whole upgrade: with more than one phase, every phase is
/// planned first (as a dry run: nothing locked or changed), so a later phase is never
/// refused after an earlier one has switched. Without it, the default guard against
/// deleting most of a tree is per tree: only the later phases (a nested package database,
/// small) are planned ahead; the first is checked when it runs, before it switches.
fn plan_ahead<S: Steps>(
    req: &UpgradeRequest,
    steps: &S,
    layout: &Layout,
    trees: &[TreePaths],
    rules: Option<&Rules>,
) -> Result<(), S::Error> {
    let guarded = req.max_delete.is_some() || !req.force;
    if !guarded || req.dry_run || layout.phases().len() <= 1 {
        return Ok(());
    }
    let mut phases = layout.phases();
    if req.max_delete.is_none() {
        phases.remove(0);
    }
    let state = open_state(req, trees)?;
    let pools = Pools::new(0);
    let mut planned = Vec::new();
    for (ptrees, excludes) in &phases {
        let opts = steps.plan_opts(excludes, rules.is_some())?;
        let pairs = pairs_of(trees, ptrees);
        let mut ts = Vec::new();
        for (s, d, _) in &pairs {
            let quiet = crate::progress::Silent;
            ts.push(sync::prepare(s, d, Some(&state), &opts, &pools, &quiet)?);
        }
        if let Some(r) = rules {
            decide_all(r, &mut ts, &pairs, &state)?;
        }
        planned.extend(ts);
    }
    let limit = deletes::Limit {
        max: req.max_delete,
        force: req.force,
        dry_run: false,
    };
    deletes::check(&planned, limit)?;
    Ok(())
}

/// Decides the protected files of every tree (see `protect::decide`), and makes each tree's
/// switch keep them.
pub fn decide_all(
    rules: &Rules,
    trees: &mut [Tree],
    pairs: &[Pair],
    state: &StateDir,
) -> Result<Vec<Decisions>, Error> {
    let mut out = Vec::new();
    for (k, t) in trees.iter_mut().enumerate() {
        // A destination a dry run would create has nothing to protect.
        if !t.dst_path.is_dir() {
            out.push(Decisions::default());
            continue;
        }
        let prefix = &pairs[k].2;
        let base = Base::load(state, &t.dst_path)?;
        t.guard = protect::guard_paths(rules, prefix, &t.dst);
        t.protect = Some((rules.clone(), prefix.clone()));
        out.push(protect::decide(
            rules,
            prefix,
            &base,
            &t.src_path,
            &t.dst_path,
            &mut t.src,
            &t.dst,
            &mut t.plan,
        )?);
    }
    Ok(out)
}

/// Records the upgrade about to start (see `history::roots`); returns its id and the state
/// dir.
fn begin_record(
    req: &UpgradeRequest,
    trees: &[TreePaths],
    root: &Path,
) -> Result<(u64, StateDir), Error> {
    let state = open_state(req, trees)?;
    // A switch a killed run left half made is finished (or undone) first, each under its
    // tree's lock: so the record below names the generations that exist before this run,
    // and a nested database's home, which the tree holding it carries across when staged,
    // is never copied with a switch half made.
    for t in trees {
        if t.dst.is_dir() {
            let _lock = Lock::acquire(&state, &t.dst)?;
            if let Some(home) = crate::switch::Home::existing(&t.dst)? {
                crate::generation::recover(&home, Some(&state))?;
            }
        }
    }
    let triples: Vec<(PathBuf, PathBuf, PathBuf)> = trees
        .iter()
        .map(|t| (t.rel.clone(), t.src.clone(), t.dst.clone()))
        .collect();
    let id = roots::begin(&state, root, &req.jail, &triples)?;
    Ok((id, state))
}

/// Runs the phases in order; stops after a phase that switched nothing (the package
/// database then stays with the old release).
fn run_phases<S: Steps>(
    req: &UpgradeRequest,
    steps: &mut S,
    layout: &Layout,
    trees: &[TreePaths],
    rules: Option<&Rules>,
) -> Result<Vec<PhaseReport>, S::Error> {
    let mut out = Vec::new();
    for (index, (ptrees, excludes)) in layout.phases().into_iter().enumerate() {
        let phase = Phase {
            index,
            pairs: pairs_of(trees, &ptrees),
            trees: ptrees,
            excludes,
            protect: rules.cloned(),
        };
        let switched = run_phase(req, steps, &phase)?;
        out.push(PhaseReport {
            trees: phase.trees,
            switched,
        });
        if !switched {
            break;
        }
    }
    Ok(out)
}

/// One phase. A nested database's parent (a phase after the first) belongs to the tree
/// holding it, which set its mtime: the database's own switch (and its home, made on the
/// first run) must not change it.
fn run_phase<S: Steps>(
    req: &UpgradeRequest,
    steps: &mut S,
    phase: &Phase,
) -> Result<bool, S::Error> {
    let parents: Vec<DirMtime> = if phase.index > 0 && !req.dry_run {
        phase
            .pairs
            .iter()
            .filter_map(|(_, d, _)| d.parent())
            .filter_map(|p| DirMtime::of(p).ok())
            .collect()
    } else {
        Vec::new()
    };
    let ran = steps.run_phase(phase);
    for p in &parents {
        let _ = p.restore();
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use crate::scan::Excludes;
    use std::fs;

    type BoxErr = Box<dyn std::error::Error + Send + Sync>;

    /// A jail and a live root, pkgsrc-like: `usr/pkg` holding its database `usr/pkg/pkgdb`
    /// (so the database is a nested tree, switched in a phase of its own, last), and a state
    /// dir apart from both.
    struct Site {
        _t: tempfile::TempDir,
        jail: PathBuf,
        root: PathBuf,
        state: PathBuf,
    }

    fn write(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn site() -> Site {
        let t = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(t.path()).unwrap();
        let (jail, root, state) = (base.join("jail"), base.join("root"), base.join("state"));
        for (top, v) in [(&jail, "2"), (&root, "1")] {
            write(&top.join("usr/pkg/bin/app"), &format!("app {v}\n"));
            write(&top.join("usr/pkg/etc/app.conf"), "setting=1\n");
            write(
                &top.join(format!("usr/pkg/pkgdb/app-{v}/+CONTENTS")),
                "bin/app\n",
            );
        }
        Site {
            _t: t,
            jail,
            root,
            state,
        }
    }

    fn request(s: &Site) -> UpgradeRequest {
        UpgradeRequest {
            jail: s.jail.clone(),
            root: s.root.clone(),
            trees: vec!["usr/pkg/pkgdb".into(), "usr/pkg".into()],
            state_dir: s.state.clone(),
            ..UpgradeRequest::default()
        }
    }

    /// Runs each phase as `sync` does (plan, protect, guard, one transaction), and notes
    /// what the live root looked like when each began.
    #[derive(Default)]
    struct Runner {
        state_dir: PathBuf,
        seen: Vec<(usize, Vec<PathBuf>, String, bool)>,
        planned: usize,
    }

    fn opts(excludes: &[String], protect: bool, dry_run: bool) -> Result<SyncOpts, BoxErr> {
        let mut pats = excludes.to_vec();
        if protect {
            pats.push(protect::NEW_EXCLUDE.to_string());
            pats.push(protect::ASIDE_EXCLUDE.to_string());
        }
        Ok(SyncOpts {
            excludes: Excludes::new(&pats)?,
            exclude_patterns: pats,
            dry_run,
            keep: 5,
            ..SyncOpts::default()
        })
    }

    impl Steps for Runner {
        type Error = BoxErr;

        fn jail_excludes(&mut self, pats: &[String]) {
            assert!(pats.is_empty(), "the jail has no exclude lines");
        }

        fn plan_opts(&self, excludes: &[String], protect: bool) -> Result<SyncOpts, BoxErr> {
            opts(excludes, protect, true)
        }

        fn run_phase(&mut self, phase: &Phase) -> Result<bool, BoxErr> {
            let root = phase.pairs[0]
                .1
                .ancestors()
                .nth(phase.trees[0].components().count());
            let live = root.unwrap();
            self.seen.push((
                phase.index,
                phase.trees.clone(),
                fs::read_to_string(live.join("usr/pkg/bin/app"))?,
                live.join("usr/pkg/pkgdb/app-1").exists(),
            ));
            let opts = opts(&phase.excludes, phase.protect.is_some(), false)?;
            let dirs: Vec<&Path> = phase.pairs.iter().map(|(_, d, _)| d.as_path()).collect();
            let state = sync::open_state(&self.state_dir, &dirs)?;
            let pools = Pools::new(1);
            let mut trees = Vec::new();
            for (s, d, _) in &phase.pairs {
                trees.push(sync::prepare(s, d, Some(&state), &opts, &pools, &Silent)?);
            }
            if let Some(r) = &phase.protect {
                decide_all(r, &mut trees, &phase.pairs, &state)?;
            }
            self.planned += trees.len();
            deletes::check(&trees, deletes::Limit::default())?;
            let report = crate::txn::switch_all(&mut trees, &state, &opts, &pools, &Silent)?;
            Ok(report.aborted.is_none())
        }
    }

    #[test]
    fn upgrades_the_tree_then_its_database_and_records_it() {
        let s = site();
        let mut run = Runner {
            state_dir: s.state.clone(),
            ..Runner::default()
        };
        let r = upgrade(&request(&s), &mut run).unwrap();
        // The database goes last, in a phase of its own, whatever order it was given in.
        let rels: Vec<&Path> = r.trees.iter().map(|t| t.rel.as_path()).collect();
        assert_eq!(rels, [Path::new("usr/pkg"), Path::new("usr/pkg/pkgdb")]);
        assert_eq!(r.root, fs::canonicalize(&s.root).unwrap());
        let phases: Vec<(Vec<PathBuf>, bool)> = r
            .phases
            .iter()
            .map(|p| (p.trees.clone(), p.switched))
            .collect();
        assert_eq!(
            phases,
            [
                (vec![PathBuf::from("usr/pkg")], true),
                (vec![PathBuf::from("usr/pkg/pkgdb")], true)
            ]
        );
        // When the database's phase began the packages were new and the database still old.
        assert_eq!(run.seen[0].2, "app 1\n");
        assert_eq!(run.seen[1].0, 1);
        assert_eq!(run.seen[1].2, "app 2\n");
        assert!(run.seen[1].3, "the old database until its own phase");
        // Now both are the jail's: the outer tree carried the database across untouched.
        assert_eq!(
            fs::read_to_string(s.root.join("usr/pkg/bin/app")).unwrap(),
            "app 2\n"
        );
        assert!(s.root.join("usr/pkg/pkgdb/app-2/+CONTENTS").is_file());
        assert!(!s.root.join("usr/pkg/pkgdb/app-1").exists());
        // Every tree's etc/ is protected by default.
        assert!(r.protect.is_some());
        // One root-level record, ended, naming both trees.
        let state = StateDir::open(&fs::canonicalize(&s.state).unwrap()).unwrap();
        let ups = roots::load(&state, &r.root).unwrap();
        assert_eq!(ups.len(), 1);
        assert_eq!(Some(ups[0].id), r.record);
        assert!(ups[0].end.is_some());
        assert_eq!(ups[0].trees.len(), 2);
    }

    #[test]
    fn max_delete_is_checked_over_every_phase_before_anything_switches() {
        let s = site();
        let mut run = Runner {
            state_dir: s.state.clone(),
            ..Runner::default()
        };
        let req = UpgradeRequest {
            max_delete: Some(0),
            ..request(&s)
        };
        let e = upgrade(&req, &mut run).err().expect("refused");
        // The database's phase deletes app-1: refused before the first phase ran.
        let d = e.downcast_ref::<DeleteError>().expect("the delete guard");
        assert!(matches!(d, DeleteError::OverMax { max: 0, .. }), "{d}");
        assert!(run.seen.is_empty());
        assert_eq!(
            fs::read_to_string(s.root.join("usr/pkg/bin/app")).unwrap(),
            "app 1\n"
        );
    }

    #[test]
    fn a_root_that_is_a_jail_is_refused_with_the_swap_named() {
        let s = site();
        write(&s.root.join(crate::jail::MARKER_FILE), "");
        let mut run = Runner::default();
        let e = upgrade(&request(&s), &mut run).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains("so it is a jail"), "{msg}");
        assert!(msg.contains("JAIL and --root swapped?"), "{msg}");
        assert!(run.seen.is_empty());
        // --force upgrades it all the same.
        let mut run = Runner {
            state_dir: s.state.clone(),
            ..Runner::default()
        };
        let req = UpgradeRequest {
            force: true,
            ..request(&s)
        };
        upgrade(&req, &mut run).unwrap();
        assert_eq!(run.seen.len(), 2);
    }

    #[test]
    fn a_missing_jail_is_refused_by_name() {
        let s = site();
        let req = UpgradeRequest {
            jail: s.jail.join("nope"),
            ..request(&s)
        };
        let e = upgrade(&req, &mut Runner::default())
            .err()
            .expect("refused");
        assert!(e.to_string().ends_with("makes one)"), "{e}");
        assert!(e.downcast_ref::<UpgradeError>().is_some());
    }
}
