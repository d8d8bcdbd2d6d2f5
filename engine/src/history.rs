//! The history use cases of a destination: `history` (its generations, with the space each
//! holds), `prune`, and `rollback` of the trees given; those of a live root's upgrades
//! (`--root`) are in [`roots`]. Each takes the destination's lock, finishes what a killed run
//! left, and returns a report: the caller only prints it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::generation::{self, Gen, RolledBack};
use crate::journal::{Lock, StateDir};
use crate::switch::{self, Home};
use crate::sync::{self, Pools};
use crate::usage::{self, Usage};
use crate::{fsx, paths};

pub mod changes;
pub mod roots;

use crate::packages::PackageDiff;
pub use changes::FileDiff;
use changes::Span;

/// One generation as `history` and `prune` show it.
#[derive(Debug)]
pub struct GenReport {
    pub gen: Gen,
    /// Where it is read (through the home's open fd).
    pub io: PathBuf,
    /// The space only it holds; `None` when it could not be measured.
    pub usage: Option<Usage>,
    /// The packages its run changed, for a package tree (see [`crate::packages`]); a
    /// database that cannot be read is an error here, not of the listing.
    pub packages: Result<Option<PackageDiff>>,
}

/// A destination's generations (`history DST`).
#[derive(Debug)]
pub struct History {
    /// The destination, canonical.
    pub dst: PathBuf,
    /// Oldest first; empty when there is nothing to roll back.
    pub gens: Vec<GenReport>,
    /// The highest generation id ever removed (pruned or undone), if any: those up to it that
    /// are not in `gens` cannot be rolled back to.
    pub removed_through: Option<u64>,
}

/// What `prune` removed (or, dry run, would remove).
#[derive(Debug)]
pub struct PruneReport {
    /// The destination, resolved.
    pub dst: PathBuf,
    /// The generations removed, oldest first.
    pub removed: Vec<u64>,
    pub kept: usize,
    /// The space the removed generations held alone.
    pub freed: Usage,
    /// Generations left because programs still run from their releases (removed with
    /// `force`); counted in `kept`, not in `removed` nor `freed`.
    pub deferred: Vec<generation::Deferred>,
}

/// The generations of `dst` (canonicalized) and the space each holds.
pub fn history(dst: &Path, state_dir: &Path) -> Result<History> {
    let dst = crate::paths::canonical_tree(dst).map_err(|e| Error::io(dst, e))?;
    // Checked as every command checks it, though the generations live in the home.
    let _state = sync::open_state(state_dir, &[&dst])?;
    let gens = match switched_home(&dst)? {
        Some(home) => {
            let mut gens = sizes(&home, &dst)?;
            let list: Vec<Gen> = gens.iter().map(|g| g.gen.clone()).collect();
            for g in &mut gens {
                g.packages = Span::run(&home, &list, g.gen.id).and_then(|s| s.packages());
            }
            gens
        }
        None => Vec::new(),
    };
    let removed_through = Home::existing(&dst)?
        .map(|h| generation::removed_through(&h))
        .filter(|&n| n > 0);
    Ok(History {
        dst,
        gens,
        removed_through,
    })
}

/// The files run `id` of `dst` changed (`history DST --gen N -i`): generation `id` against
/// the tree that replaced it (see [`changes`]).
pub fn gen_files(dst: &Path, state_dir: &Path, id: u64) -> Result<FileDiff> {
    let dst = crate::paths::canonical_tree(dst).map_err(|e| Error::io(dst, e))?;
    let _state = sync::open_state(state_dir, &[&dst])?;
    let (home, gens) = generations(&dst, id)?;
    Span::run(&home, &gens, id)?.files()
}

/// What switching `dst` back to generation `id` would change (`rollback --root ROOT -n -i`,
/// tree by tree): read only, the rollback itself checks and switches.
pub fn rollback_preview(dst: &Path, id: u64) -> Result<(FileDiff, Option<PackageDiff>)> {
    let (home, gens) = generations(dst, id)?;
    let span = Span::rollback(&home, &gens, id);
    Ok((span.files()?, span.packages()?))
}

/// The home of `dst` and its generations, for a report on generation `id`.
fn generations(dst: &Path, id: u64) -> Result<(Home, Vec<Gen>)> {
    let Some(home) = switched_home(dst)? else {
        return Err(Error::bad(
            dst,
            format!("no generation {id}: nothing to roll back"),
        ));
    };
    let gens = generation::list(&home)?;
    Ok((home, gens))
}

/// Removes all but the newest `keep` generations of `dst` (resolved as `sync` resolves a
/// destination), under its lock; a dry run only measures.
pub fn prune(
    dst: &Path,
    follow_dst: bool,
    state_dir: &Path,
    keep: usize,
    dry_run: bool,
    force: bool,
) -> Result<PruneReport> {
    let dst = resolve_dst(dst, follow_dst)?;
    let state = sync::open_state(state_dir, &[&dst])?;
    // Under the destination's lock: a sync running now may be about to record a generation.
    let _lock = Lock::acquire(&state, &dst)?;
    let mut report = PruneReport {
        dst,
        removed: Vec::new(),
        kept: 0,
        freed: Usage::default(),
        deferred: Vec::new(),
    };
    let Some(home) = Home::existing(&report.dst)? else {
        if state.tree_dir(&report.dst)?.join("cache").exists() {
            return Ok(report);
        }
        return Err(Error::bad(
            &report.dst,
            format!(
                "never synced by jailsync (with this state dir, {}): nothing to prune",
                state_dir.display()
            ),
        ));
    };
    generation::recover(&home, Some(&state))?;
    let gens = sizes(&home, &report.dst)?;
    let cut = gens.len().saturating_sub(keep);
    // A release programs still run from stays (unless forced): neither removed nor freed.
    let (doomed, busy): (Vec<&GenReport>, Vec<&GenReport>) = gens[..cut]
        .iter()
        .partition(|g| force || !generation::runs_from(&home, g.gen.id));
    let doomed_io: Vec<PathBuf> = doomed.iter().map(|s| s.io.clone()).collect();
    report.freed = usage::held_only_by(&doomed_io, &live_set(&report.dst)?)?;
    report.removed = doomed.iter().map(|s| s.gen.id).collect();
    report.kept = gens.len() - cut + busy.len();
    if !dry_run {
        report.deferred = generation::prune_unless_used(&home, keep, force)?;
    }
    Ok(report)
}

/// How `rollback` of trees runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RollbackOpts {
    /// The generation to switch back in (default: the newest).
    pub gen: Option<u64>,
    pub dry_run: bool,
    /// Switch back even trees changed since their sync (keeping the tree that was live).
    pub force: bool,
    /// A DST that is a symlink is followed (only one owned by root or the caller).
    pub follow_dst: bool,
}

/// One tree checked for a rollback, under its lock.
struct Checked {
    home: Home,
    r: RolledBack,
    state: StateDir,
    _lock: Lock,
}

/// The trees of a `rollback DST...`, checked and locked: nothing is switched until
/// [`Rollback::switch_back`], so what changed can be shown first.
pub struct Rollback {
    items: Vec<Checked>,
    opts: RollbackOpts,
}

/// Checks the trees `dsts` for a rollback (each resolved as `sync` resolves a destination,
/// locked, a killed run's switch finished first). A tree inside another given, or one without
/// a generation, is refused.
pub fn check_trees(dsts: &[PathBuf], state_dir: &Path, opts: RollbackOpts) -> Result<Rollback> {
    refuse_nested(dsts)?;
    let pools = Pools::new(0);
    let mut items = Vec::new();
    for shown in dsts {
        let dst = resolve_dst(shown, opts.follow_dst)?;
        let state = sync::open_state(state_dir, &[&dst])?;
        let lock = Lock::acquire(&state, &dst)?;
        if let Some(home) = Home::existing(&dst)? {
            // A killed run's switch is finished (or undone) first, under the lock.
            generation::recover(&home, Some(&state))?;
        }
        let Some(home) = switched_home(&dst)? else {
            return Err(Error::bad(
                &dst,
                "nothing to roll back: no generation recorded (a sync with --no-rollback or --keep 0 keeps none)",
            ));
        };
        let mut r = generation::check(&home, opts.gen, &pools.walk)?;
        generation::plan_conf(&home, &mut r, &state)?;
        items.push(Checked {
            home,
            r,
            state,
            _lock: lock,
        });
    }
    Ok(Rollback { items, opts })
}

impl Rollback {
    /// Each tree (its live path) and its rollback, in the order given.
    pub fn trees(&self) -> impl Iterator<Item = (&Path, &RolledBack)> {
        self.items.iter().map(|c| (c.home.live.as_path(), &c.r))
    }

    /// What switching each tree back would change (`rollback -n -i`): its files and, for a
    /// package tree, its packages, in the order given.
    pub fn preview(&self) -> Result<Vec<(FileDiff, Option<PackageDiff>)>> {
        let mut out = Vec::new();
        for c in &self.items {
            let gens = generation::list(&c.home)?;
            let span = Span::rollback(&c.home, &gens, c.r.generation.id);
            out.push((span.files()?, span.packages()?));
        }
        Ok(out)
    }

    /// Entries changed since the sync, over every tree.
    pub fn changed(&self) -> usize {
        self.items.iter().map(|c| c.r.changed.len()).sum()
    }

    /// Whether changes since the sync refuse the rollback (not forced, not a dry run).
    pub fn refused(&self) -> bool {
        self.changed() > 0 && !self.opts.force && !self.opts.dry_run
    }

    /// Switches every tree back, together (see [`crate::txn::switch_back_all`]), unless
    /// refused or a dry run.
    pub fn switch_back(&mut self) -> Result<()> {
        if self.items.is_empty() || self.refused() || self.opts.dry_run {
            return Ok(());
        }
        let state = self.items.first().map(|c| c.state.clone());
        let mut batch: Vec<_> = self.items.iter_mut().map(|c| (&c.home, &mut c.r)).collect();
        crate::txn::switch_back_all(&mut batch, state.as_ref())
    }
}

/// Trees switched together are locked together; a tree inside another (a nested package
/// database) cannot be, and is rolled back on its own.
fn refuse_nested(dsts: &[PathBuf]) -> Result<()> {
    let canon: Vec<PathBuf> = dsts
        .iter()
        .map(|d| crate::paths::canonical_tree(d).unwrap_or_else(|_| d.clone()))
        .collect();
    for a in &canon {
        if let Some(b) = canon.iter().find(|b| *b != a && a.starts_with(b)) {
            return Err(Error::bad(
                a,
                format!(
                    "inside {}, also given: roll them back one at a time, the inner one first, or the whole last upgrade with `jailsync rollback --root ROOT`",
                    b.display()
                ),
            ));
        }
    }
    Ok(())
}

/// A destination argument resolved as `sync` resolves one (the same whatever the spelling),
/// which must be a directory.
fn resolve_dst(shown: &Path, follow_dst: bool) -> Result<PathBuf> {
    let dst = paths::resolve_dir(shown, "destination", sync::follow_dst(follow_dst))?;
    if !std::fs::metadata(&dst)
        .map_err(|e| Error::io(shown, e))?
        .is_dir()
    {
        return Err(Error::bad(shown, "not a directory"));
    }
    Ok(dst)
}

/// The live tree's inodes, skipping our own in-tree homes.
fn live_set(dst: &Path) -> Result<HashSet<u64>> {
    usage::live_inodes(dst, &[switch::IN_TREE_HOME, fsx::STORE_NAME])
}

/// The generations of `home`, oldest first, with the space each holds. A size that cannot
/// be measured (a tree that cannot be walked) is unknown: listing the generations matters
/// more.
fn sizes(home: &Home, dst: &Path) -> Result<Vec<GenReport>> {
    let live = live_set(dst).ok();
    let mut out = Vec::new();
    for gen in generation::list(home)? {
        let io = home.io_path(&String::from_utf8_lossy(
            &home.tree_name(&crate::switch::Home::gen_name(gen.id)),
        ));
        let usage = live
            .as_ref()
            .and_then(|l| usage::held_only_by(std::slice::from_ref(&io), l).ok());
        out.push(GenReport {
            gen,
            io,
            usage,
            packages: Ok(None),
        });
    }
    Ok(out)
}

/// The home of a destination, if it holds generations.
fn switched_home(dst: &Path) -> Result<Option<Home>> {
    let Some(home) = Home::existing(dst)? else {
        return Ok(None);
    };
    if generation::list(&home)?.is_empty() {
        return Ok(None);
    }
    Ok(Some(home))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use crate::sync::SyncOpts;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    /// A source, a destination and a state dir apart from both, in one temp dir.
    struct Site {
        _t: tempfile::TempDir,
        src: PathBuf,
        dst: PathBuf,
        state: PathBuf,
    }

    fn site() -> Site {
        let t = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(t.path()).unwrap();
        let (src, dst, state) = (base.join("src"), base.join("dst"), base.join("state"));
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::create_dir_all(dst.join("etc")).unwrap();
        fs::write(dst.join("etc/app.conf"), "v0\n").unwrap();
        Site {
            _t: t,
            src,
            dst,
            state,
        }
    }

    /// Syncs `src` onto `dst` with `etc/app.conf` holding `text` (and a release file of
    /// `size` bytes), as `sync` does: one transaction, leaving a generation.
    fn sync_release(s: &Site, dst: &Path, text: &str, size: usize) {
        fs::write(s.src.join("etc/app.conf"), text).unwrap();
        fs::write(s.src.join("release"), text.repeat(size / text.len())).unwrap();
        let opts = SyncOpts {
            keep: 10,
            ..SyncOpts::default()
        };
        let pools = Pools::new(2);
        let state = sync::open_state(&s.state, &[&s.src, dst]).unwrap();
        let mut t = sync::prepare(&s.src, dst, Some(&state), &opts, &pools, &Silent).unwrap();
        crate::txn::switch_all(std::slice::from_mut(&mut t), &state, &opts, &pools, &Silent)
            .unwrap();
    }

    fn conf(dst: &Path) -> String {
        fs::read_to_string(dst.join("etc/app.conf")).unwrap()
    }

    fn ids(h: &History) -> Vec<u64> {
        h.gens.iter().map(|g| g.gen.id).collect()
    }

    #[test]
    fn history_lists_each_sync_oldest_first_with_what_it_holds() {
        let s = site();
        let h = history(&s.dst, &s.state).unwrap();
        assert!(h.gens.is_empty(), "no sync yet: {:?}", ids(&h));
        sync_release(&s, &s.dst, "v1\n", 64 << 10);
        sync_release(&s, &s.dst, "v2\n", 64 << 10);
        let h = history(&s.dst, &s.state).unwrap();
        assert_eq!(h.dst, s.dst);
        let got = ids(&h);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0] < got[1], "{got:?}");
        let newest = &h.gens[1];
        assert_eq!(newest.gen.source, s.src.display().to_string());
        // The newest generation holds v1's release alone (the live tree has v2's).
        let own = newest.usage.expect("measured").own;
        assert!(own >= 64 << 10, "{own}");
        assert_eq!(
            fs::read_to_string(newest.gen.tree.join("etc/app.conf")).unwrap(),
            "v1\n"
        );
    }

    /// The itemized paths of a diff, with their rsync-style codes.
    fn items(d: &FileDiff) -> Vec<String> {
        d.plan
            .actions
            .iter()
            .map(|a| {
                let p = d.plan.path(a, &d.after, &d.before);
                format!(
                    "{} {}",
                    crate::plan::itemize(a, &d.after),
                    String::from_utf8_lossy(p)
                )
            })
            .collect()
    }

    /// Run 1 installs webd-2.2 and less; run 2 upgrades webd, adds jq, drops less and only
    /// touches the mode of a file both releases share (set in place on the shared inode).
    #[test]
    fn history_names_the_packages_and_files_each_run_changed() {
        use std::os::unix::fs::PermissionsExt;
        let s = site();
        let pkg = |name: &str| format!("@comment $NetBSD$\n@name {name}\n@cwd /usr/pkg\n");
        let w = |files: &[(&str, &str)]| crate::testkit::write_tree(&s.src, files);
        w(&[
            ("pkgdb/webd-2.2/+CONTENTS", &pkg("webd-2.2")),
            ("pkgdb/less-590/+CONTENTS", &pkg("less-590")),
            ("bin/webd", "webd 2.2\n"),
            ("bin/less", "less\n"),
            ("share/doc", "same\n"),
        ]);
        sync_release(&s, &s.dst, "v1\n", 16);
        fs::remove_dir_all(s.src.join("pkgdb/webd-2.2")).unwrap();
        fs::remove_dir_all(s.src.join("pkgdb/less-590")).unwrap();
        fs::remove_file(s.src.join("bin/less")).unwrap();
        w(&[
            ("pkgdb/webd-2.3/+CONTENTS", &pkg("webd-2.3")),
            ("pkgdb/jq-1.7/+CONTENTS", &pkg("jq-1.7")),
            ("bin/webd", "webd 2.3\n"),
        ]);
        fs::set_permissions(s.src.join("share/doc"), fs::Permissions::from_mode(0o600)).unwrap();
        let doc_before = fs::metadata(s.dst.join("share/doc")).unwrap();
        sync_release(&s, &s.dst, "v1\n", 16);
        // The shared file's metadata changed in place: the generation's link shows the new mode.
        let h = history(&s.dst, &s.state).unwrap();
        let [first, second] = &h.gens[..] else {
            panic!("{:?}", ids(&h))
        };
        let names = |g: &GenReport| g.packages.as_ref().unwrap().as_ref().map(|d| d.summary());
        assert_eq!(names(first).as_deref(), Some("+less-590, +webd-2.2"));
        assert_eq!(
            names(second).as_deref(),
            Some("webd-2.2 → webd-2.3, +jq-1.7, −less-590")
        );
        assert_eq!(
            fs::metadata(second.gen.tree.join("share/doc"))
                .unwrap()
                .ino(),
            doc_before.ino(),
            "one inode, two trees"
        );
        let got = items(&gen_files(&s.dst, &s.state, second.gen.id).unwrap());
        let has = |want: &str| got.iter().any(|l| l == want);
        assert!(has(">fc.t...... bin/webd"), "{got:?}");
        assert!(has("*deleting   bin/less"), "{got:?}");
        assert!(has(".f...p..... share/doc"), "the mode as it was: {got:?}");
        assert!(has("cd+++++++++ pkgdb/jq-1.7"), "{got:?}");
        // One line per path, none for what neither run changed.
        assert_eq!(got.len(), 15, "{got:?}");
        // Rolling back to the second generation would undo exactly that, the other way.
        let rb = check_trees(
            std::slice::from_ref(&s.dst),
            &s.state,
            RollbackOpts {
                dry_run: true,
                ..RollbackOpts::default()
            },
        )
        .unwrap();
        let [(files, pkgs)] = &rb.preview().unwrap()[..] else {
            panic!("one tree")
        };
        assert_eq!(
            pkgs.as_ref().unwrap().summary(),
            "webd-2.3 → webd-2.2, +less-590, −jq-1.7"
        );
        let back = items(files);
        assert!(back.iter().any(|l| l == ">f+++++++++ bin/less"), "{back:?}");
        assert!(
            back.iter().any(|l| l == ".f...p..... share/doc"),
            "{back:?}"
        );
        assert_eq!(back.len(), got.len(), "{back:?} vs {got:?}");
    }

    #[test]
    fn prune_measures_on_a_dry_run_and_removes_the_oldest() {
        let s = site();
        for v in ["v1\n", "v2\n", "v3\n"] {
            sync_release(&s, &s.dst, v, 64 << 10);
        }
        let before = ids(&history(&s.dst, &s.state).unwrap());
        assert_eq!(before.len(), 3);
        let dry = prune(&s.dst, false, &s.state, 1, true, false).unwrap();
        assert_eq!(dry.removed, before[..2]);
        assert_eq!(dry.kept, 1);
        // The oldest is the tree before the first sync; the second holds v1's release alone.
        assert!(dry.freed.own >= 64 << 10, "{:?}", dry.freed);
        assert_eq!(ids(&history(&s.dst, &s.state).unwrap()), before, "dry run");
        let done = prune(&s.dst, false, &s.state, 1, false, false).unwrap();
        assert_eq!(done.removed, dry.removed);
        assert_eq!(done.freed, dry.freed);
        assert_eq!(ids(&history(&s.dst, &s.state).unwrap()), before[2..]);
        let again = prune(&s.dst, false, &s.state, 1, false, false).unwrap();
        assert!(again.removed.is_empty());
        assert_eq!(again.kept, 1);
    }

    #[test]
    fn prune_refuses_a_file_and_a_tree_never_synced() {
        let s = site();
        let e = prune(
            &s.dst.join("etc/app.conf"),
            false,
            &s.state,
            1,
            false,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = prune(&s.dst, false, &s.state, 0, false, false).unwrap_err();
        assert!(e.to_string().contains("never synced"), "{e}");
    }

    #[test]
    fn rollback_switches_the_last_sync_back() {
        let s = site();
        sync_release(&s, &s.dst, "v1\n", 4096);
        sync_release(&s, &s.dst, "v2\n", 4096);
        let mut rb = check_trees(
            std::slice::from_ref(&s.dst),
            &s.state,
            RollbackOpts::default(),
        )
        .unwrap();
        assert_eq!((rb.changed(), rb.refused()), (0, false));
        rb.switch_back().unwrap();
        let (live, r) = rb.trees().next().unwrap();
        assert_eq!(live, s.dst);
        assert!(r.switched.is_some());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        drop(rb);
        assert_eq!(conf(&s.dst), "v1\n");
        // The generation switched back in is live again, no longer history.
        assert_eq!(history(&s.dst, &s.state).unwrap().gens.len(), 1);
    }

    #[test]
    fn rollback_of_a_tree_changed_since_is_refused_unless_forced() {
        let s = site();
        sync_release(&s, &s.dst, "v1\n", 4096);
        sync_release(&s, &s.dst, "v2\n", 4096);
        fs::write(s.dst.join("etc/app.conf"), "admin's edit\n").unwrap();
        let dry = RollbackOpts {
            dry_run: true,
            ..RollbackOpts::default()
        };
        let mut rb = check_trees(std::slice::from_ref(&s.dst), &s.state, dry).unwrap();
        assert_eq!((rb.changed(), rb.refused()), (1, false), "a dry run shows");
        rb.switch_back().unwrap();
        drop(rb);
        assert_eq!(conf(&s.dst), "admin's edit\n");
        let mut rb = check_trees(
            std::slice::from_ref(&s.dst),
            &s.state,
            RollbackOpts::default(),
        )
        .unwrap();
        assert!(rb.refused());
        let (_, r) = rb.trees().next().unwrap();
        assert_eq!(r.changed[0].path.as_ref(), b"etc/app.conf");
        rb.switch_back().unwrap();
        assert!(rb.trees().all(|(_, r)| r.switched.is_none()));
        drop(rb);
        assert_eq!(conf(&s.dst), "admin's edit\n");
        let force = RollbackOpts {
            force: true,
            ..RollbackOpts::default()
        };
        let mut rb = check_trees(std::slice::from_ref(&s.dst), &s.state, force).unwrap();
        rb.switch_back().unwrap();
        let kept = rb.trees().next().unwrap().1.kept_as.clone().expect("kept");
        drop(rb);
        assert_eq!(conf(&s.dst), "v1\n");
        assert_eq!(conf(&kept), "admin's edit\n");
    }

    #[test]
    fn rollback_refuses_nested_trees_and_a_tree_without_generations() {
        let s = site();
        let inner = s.dst.join("etc");
        let e = check_trees(
            &[s.dst.clone(), inner.clone()],
            &s.state,
            RollbackOpts::default(),
        )
        .err()
        .expect("nested");
        assert!(
            e.to_string().starts_with(&format!(
                "{}: inside {}, also given",
                inner.display(),
                s.dst.display()
            )),
            "{e}"
        );
        let e = check_trees(
            std::slice::from_ref(&s.dst),
            &s.state,
            RollbackOpts::default(),
        )
        .err()
        .expect("no generation");
        assert!(e.to_string().contains("nothing to roll back"), "{e}");
    }

    /// An upgrade whose old trees were pruned is marked: its record stays, its way back is
    /// gone; the newer one, whose generation is kept, is not.
    #[test]
    fn a_root_history_marks_upgrades_whose_generations_were_pruned() {
        let s = site();
        let root = s.dst.clone();
        let usr = root.join("usr");
        fs::create_dir_all(usr.join("etc")).unwrap();
        sync_release(&s, &usr, "v1\n", 4096);
        let state = sync::open_state(&s.state, &[]).unwrap();
        let trees = [(PathBuf::from("usr"), s.src.clone(), usr.clone())];
        for v in ["v2\n", "v3\n"] {
            let id = roots::begin(&state, &root, &s.src, &trees).unwrap();
            sync_release(&s, &usr, v, 4096);
            roots::end(&state, &root, id).unwrap();
        }
        let h = roots::history(&root, &s.state).unwrap();
        assert_eq!(h.pruned, [false, false]);
        let r = prune(&usr, false, &s.state, 1, false, false).unwrap();
        assert_eq!(r.kept, 1);
        let h = roots::history(&root, &s.state).unwrap();
        assert_eq!(
            h.pruned,
            [true, false],
            "the older upgrade's generation is gone"
        );
    }

    #[test]
    fn rollback_of_a_root_undoes_its_last_upgrade_once() {
        let s = site();
        let root = s.dst.clone();
        let usr = root.join("usr");
        fs::create_dir_all(usr.join("etc")).unwrap();
        sync_release(&s, &usr, "v1\n", 4096);
        let state = sync::open_state(&s.state, &[]).unwrap();
        let trees = [(PathBuf::from("usr"), s.src.clone(), usr.clone())];
        let id = roots::begin(&state, &root, &s.src, &trees).unwrap();
        sync_release(&s, &usr, "v2\n", 4096);
        roots::end(&state, &root, id).unwrap();
        let h = roots::history(&root, &s.state).unwrap();
        assert_eq!(h.upgrades.len(), 1);
        assert_eq!(h.upgrades[0].status(), "done");

        let mut steps = Vec::new();
        let r = roots::rollback(&root, &s.state, false, false, |step| -> Result<()> {
            steps.push(match step {
                roots::RootStep::Checked { dst, .. } => format!("checked {}", dst.display()),
                roots::RootStep::Would { dst, id } => format!("would {} {id}", dst.display()),
                roots::RootStep::Done { dst, .. } => format!("done {}", dst.display()),
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(
            steps,
            [
                format!("checked {}", usr.display()),
                format!("done {}", usr.display())
            ]
        );
        assert_eq!((r.upgrade, r.trees, r.refused), (id, 1, false));
        assert_eq!(conf(&usr), "v1\n");
        let h = roots::history(&root, &s.state).unwrap();
        assert_eq!(h.upgrades[0].status(), "rolled back");
        let e = roots::rollback(&root, &s.state, false, false, |_| -> Result<()> { Ok(()) })
            .expect_err("nothing left");
        assert!(e.to_string().contains("no upgrade to roll back"), "{e}");
    }
}
