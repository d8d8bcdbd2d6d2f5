//! Root-level history: one record per `upgrade` of a live root, across its trees, so that
//! `history --root` lists upgrades and `rollback --root` undoes the last one, every tree, in
//! reverse order.
//!
//! The record is written before anything is staged and names, per tree, the newest
//! generation that existed then (`before`). The generations the upgrade made are therefore
//! exactly those above it — whether the run finished, failed in a later phase or was
//! killed (the next locked run, or the rollback itself, finishes or undoes a half-made
//! switch first). Kept in the state dir (JSON lines, `upgrades` in the root's directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::generation::{self, RolledBack};
use crate::journal::{Lock, StateDir};
use crate::switch::{Home, Method};
use crate::sync::{self, Pools};

#[derive(Debug, Clone)]
pub struct TreeRec {
    pub rel: String,
    pub dst: PathBuf,
    pub before: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Upgrade {
    pub id: u64,
    pub start: i64,
    pub end: Option<i64>,
    pub jail: String,
    pub trees: Vec<TreeRec>,
    pub rolled_back: bool,
}

impl Upgrade {
    /// The record as one JSON object (as the file holds it).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "start": self.start,
            "end": self.end,
            "jail": self.jail,
            "trees": self.trees.iter().map(|t| json!({
                "rel": t.rel,
                "dst": t.dst.display().to_string(),
                "before": t.before,
            })).collect::<Vec<_>>(),
            "rolled_back": self.rolled_back,
        })
    }

    fn from_json(v: &Value) -> Option<Upgrade> {
        Some(Upgrade {
            id: v["id"].as_u64()?,
            start: v["start"].as_i64()?,
            end: v["end"].as_i64(),
            jail: v["jail"].as_str()?.to_string(),
            trees: v["trees"]
                .as_array()?
                .iter()
                .map(|t| {
                    Some(TreeRec {
                        rel: t["rel"].as_str()?.to_string(),
                        dst: PathBuf::from(t["dst"].as_str()?),
                        before: t["before"].as_u64(),
                    })
                })
                .collect::<Option<Vec<_>>>()?,
            rolled_back: v["rolled_back"].as_bool().unwrap_or(false),
        })
    }

    /// `rolled back`, `done` or `interrupted` (no end recorded).
    pub fn status(&self) -> &'static str {
        if self.rolled_back {
            "rolled back"
        } else if self.end.is_some() {
            "done"
        } else {
            "interrupted"
        }
    }
}

fn file(state: &StateDir, root: &Path) -> Result<PathBuf> {
    Ok(state.tree_dir(root)?.join("upgrades"))
}

/// The upgrades recorded for `root` (canonical), oldest first.
pub fn load(state: &StateDir, root: &Path) -> Result<Vec<Upgrade>> {
    let f = file(state, root)?;
    let text = match std::fs::read_to_string(&f) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(f, e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Upgrade::from_json(&v))
        .collect())
}

fn save(state: &StateDir, root: &Path, ups: &[Upgrade]) -> Result<()> {
    let f = file(state, root)?;
    let tmp = f.with_extension("new");
    let mut w = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    for u in ups {
        writeln!(w, "{}", u.to_json()).map_err(|e| Error::io(&tmp, e))?;
    }
    drop(w);
    std::fs::rename(&tmp, &f).map_err(|e| Error::io(&f, e))
}

/// The newest generation of `dst` now, if it has a home with any.
fn newest_gen(dst: &Path) -> Option<u64> {
    let home = Home::existing(dst).ok().flatten()?;
    generation::list(&home).ok()?.last().map(|g| g.id)
}

/// Records an upgrade about to start; returns its id. `trees`: (rel, source, destination).
pub fn begin(
    state: &StateDir,
    root: &Path,
    jail: &Path,
    trees: &[(PathBuf, PathBuf, PathBuf)],
) -> Result<u64> {
    let mut ups = load(state, root)?;
    let id = ups.last().map_or(1, |u| u.id + 1);
    ups.push(Upgrade {
        id,
        start: crate::cache::now().0,
        end: None,
        jail: jail.display().to_string(),
        trees: trees
            .iter()
            .map(|(rel, _, d)| TreeRec {
                rel: rel.display().to_string(),
                dst: d.clone(),
                before: newest_gen(d),
            })
            .collect(),
        rolled_back: false,
    });
    save(state, root, &ups)?;
    Ok(id)
}

/// Marks upgrade `id` done; one that switched nothing (a no-op) is forgotten, so that
/// `rollback --root` undoes the last upgrade that changed something.
pub fn end(state: &StateDir, root: &Path, id: u64) -> Result<()> {
    let mut ups = load(state, root)?;
    if let Some(u) = ups.iter_mut().find(|u| u.id == id) {
        u.end = Some(crate::cache::now().0);
        let made = u
            .trees
            .iter()
            .any(|t| newest_gen(&t.dst).is_some_and(|n| t.before.is_none_or(|b| n > b)));
        if !made {
            ups.retain(|u| u.id != id);
        }
    }
    save(state, root, &ups)
}

/// `root` canonical, and the state dir.
fn open(root: &Path, state_dir: &Path) -> Result<(PathBuf, StateDir)> {
    let root_c = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let state = sync::open_state(state_dir, &[])?;
    Ok((root_c, state))
}

/// The upgrades of a live root (`history --root`).
#[derive(Debug)]
pub struct RootHistory {
    /// The root, canonical.
    pub root: PathBuf,
    /// Oldest first.
    pub upgrades: Vec<Upgrade>,
    /// Per upgrade: done and not rolled back, but a tree's generation it made is pruned, so
    /// it cannot be rolled back (nor can any upgrade before it).
    pub pruned: Vec<bool>,
}

pub fn history(root: &Path, state_dir: &Path) -> Result<RootHistory> {
    let (root, state) = open(root, state_dir)?;
    let upgrades = load(&state, &root)?;
    let mut pruned = Vec::with_capacity(upgrades.len());
    for (k, u) in upgrades.iter().enumerate() {
        pruned.push(u.end.is_some() && !u.rolled_back && !kept_all(u, &upgrades[k + 1..])?);
    }
    Ok(RootHistory {
        root,
        upgrades,
        pruned,
    })
}

/// Whether every tree of upgrade `u` still holds the generation `u` made: an id above its
/// `before` and not above what the next upgrade of that tree (in `later`) found.
fn kept_all(u: &Upgrade, later: &[Upgrade]) -> Result<bool> {
    for t in &u.trees {
        let until = later
            .iter()
            .flat_map(|n| n.trees.iter())
            .find(|n| n.dst == t.dst)
            .map(|n| n.before);
        let Some(home) = Home::existing(&t.dst)? else {
            return Ok(false);
        };
        let made = generation::list(&home)?.iter().any(|g| {
            t.before.is_none_or(|b| g.id > b) && until.is_none_or(|n| n.is_some_and(|n| g.id <= n))
        });
        if !made {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What `rollback --root` reports as it goes: each step is shown as it happens, so a tree
/// rolled back stays reported when a later one fails.
pub enum RootStep<'a> {
    /// A tree checked: what changed since the upgrade, what its rollback carries.
    Checked { dst: &'a Path, r: &'a RolledBack },
    /// A dry run: the tree would be switched back to generation `id`.
    Would { dst: &'a Path, id: u64 },
    /// The tree switched back to generation `id`, by `how`.
    Done {
        dst: &'a Path,
        id: u64,
        r: &'a RolledBack,
        how: &'a Method,
    },
}

/// What `rollback --root` did.
#[derive(Debug)]
pub struct RootRollback {
    /// The root, canonical.
    pub root: PathBuf,
    /// The upgrade rolled back.
    pub upgrade: u64,
    /// Entries changed since the upgrade, over every tree.
    pub changed: usize,
    /// Refused for those changes (not forced): nothing was switched.
    pub refused: bool,
    /// The trees switched back (or, dry run, that would be).
    pub trees: usize,
}

/// The generation an upgrade's switch of `t` made (the first above `before`), if any.
fn made_by(home: &Home, t: &TreeRec) -> Result<Option<u64>> {
    Ok(generation::list(home)?
        .iter()
        .map(|g| g.id)
        .find(|&id| t.before.is_none_or(|b| id > b)))
}

/// `rollback --root ROOT`: the last upgrade not rolled back, every tree, in reverse order.
/// Every tree is checked first; a tree changed since (an admin's edit) refuses the whole
/// rollback unless `force`. `on` is told each step as it happens.
pub fn rollback<E: From<Error>>(
    root: &Path,
    state_dir: &Path,
    force: bool,
    dry_run: bool,
    mut on: impl FnMut(RootStep<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<RootRollback, E> {
    let (root, state) = open(root, state_dir)?;
    let mut ups = load(&state, &root)?;
    let Some(u) = ups.iter().rev().find(|u| !u.rolled_back).cloned() else {
        return Err(Error::bad(
            &root,
            "no upgrade to roll back (see `jailsync history --root`)",
        )
        .into());
    };
    let pools = Pools::new(0);
    // 1. Check, tree by tree (each under its own lock: a nested tree's lock conflicts with
    // the one holding it, so they are never held together).
    let mut todo: Vec<(PathBuf, u64)> = Vec::new();
    let mut changed = 0;
    for t in u.trees.iter().rev() {
        let Some(id) = check_tree(&state, &u, t, &pools, &mut |r| {
            changed += r.changed.len();
            on(RootStep::Checked { dst: &t.dst, r })
        })?
        else {
            continue;
        };
        todo.push((t.dst.clone(), id));
    }
    let mut report = RootRollback {
        root,
        upgrade: u.id,
        changed,
        refused: changed > 0 && !force,
        trees: todo.len(),
    };
    if report.refused {
        return Ok(report);
    }
    if todo.is_empty() {
        return Err(Error::bad(
            &report.root,
            format!(
                "upgrade {} left nothing to roll back (no tree holds a generation it made)",
                u.id
            ),
        )
        .into());
    }
    // 2. Switch back, in reverse order of the upgrade.
    for (dst, id) in &todo {
        if dry_run {
            on(RootStep::Would { dst, id: *id })?;
            continue;
        }
        let _lock = Lock::acquire(&state, dst)?;
        let home = Home::existing(dst)?.ok_or_else(|| Error::bad(dst, "its home is gone"))?;
        generation::recover(&home, Some(&state))?;
        let mut r = generation::check(&home, Some(*id), &pools.walk)?;
        generation::plan_conf(&home, &mut r, &state)?;
        crate::txn::switch_back_all(&mut [(&home, &mut r)], Some(&state))?;
        let how = r.switched.as_ref().map_or(&home.method, |s| &s.method);
        on(RootStep::Done {
            dst,
            id: *id,
            r: &r,
            how,
        })?;
    }
    if !dry_run {
        if let Some(x) = ups.iter_mut().find(|x| x.id == u.id) {
            x.rolled_back = true;
        }
        save(&state, &report.root, &ups)?;
    }
    report.trees = todo.len();
    Ok(report)
}

/// Checks tree `t` of upgrade `u` under its lock: the generation the upgrade made there, if
/// any, checked (`on` is given the check); refused when it is gone or a later sync is newer.
fn check_tree<E: From<Error>>(
    state: &StateDir,
    u: &Upgrade,
    t: &TreeRec,
    pools: &Pools,
    on: &mut dyn FnMut(&RolledBack) -> std::result::Result<(), E>,
) -> std::result::Result<Option<u64>, E> {
    let _lock = Lock::acquire(state, &t.dst)?;
    // A tree a killed run left aside (portable layer) is put back first.
    crate::switch::restore_live_aside(&t.dst)?;
    if !t.dst.is_dir() {
        return Ok(None);
    }
    let Some(home) = Home::existing(&t.dst)? else {
        return Ok(None);
    };
    generation::recover(&home, Some(state))?;
    let Some(id) = made_by(&home, t)? else {
        // No generation newer than the upgrade's start: the upgrade left this tree as it
        // was, unless the generation it made is gone (ids are never reused, so the last
        // one handed out tells).
        if generation::removed_after(&home, t.before.unwrap_or(0)) {
            return Err(Error::bad(
                &t.dst,
                format!(
                    "the generation upgrade {} made is gone (pruned?): it cannot be rolled back",
                    u.id
                ),
            )
            .into());
        }
        return Ok(None);
    };
    // Anything synced into the tree after the upgrade (a `sync`, a `push`) would be undone
    // with it, unnamed: the newest generation must be the upgrade's own.
    let newest = generation::list(&home)?.last().map_or(0, |g| g.id);
    if newest != id {
        return Err(Error::bad(
            &t.dst,
            format!(
                "synced again after upgrade {} (generation {newest} is newer than its {id}): roll that back first with `jailsync rollback {}`",
                u.id,
                t.dst.display()
            ),
        )
        .into());
    }
    let mut r = generation::check(&home, Some(id), &pools.walk)?;
    generation::plan_conf(&home, &mut r, state)?;
    on(&r)?;
    Ok(Some(id))
}
