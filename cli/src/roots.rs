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

use anyhow::{bail, Context, Result};
use jailsync_engine::generation;
use jailsync_engine::journal::{format_time, Lock, StateDir};
use jailsync_engine::switch::Home;
use jailsync_engine::sync::{self, Pools};
use serde_json::{json, Value};

use crate::args::{exit, Global};

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
    fn to_json(&self) -> Value {
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
}

fn file(state: &StateDir, root: &Path) -> Result<PathBuf> {
    Ok(state.tree_dir(root)?.join("upgrades"))
}

pub fn load(state: &StateDir, root: &Path) -> Result<Vec<Upgrade>> {
    let f = file(state, root)?;
    let text = match std::fs::read_to_string(&f) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| f.display().to_string()),
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
    let mut w = std::fs::File::create(&tmp).with_context(|| tmp.display().to_string())?;
    for u in ups {
        writeln!(w, "{}", u.to_json())?;
    }
    drop(w);
    std::fs::rename(&tmp, &f).with_context(|| f.display().to_string())?;
    Ok(())
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
        start: jailsync_engine::cache::now().0,
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
        u.end = Some(jailsync_engine::cache::now().0);
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

fn open(root: &Path, g: &Global) -> Result<(PathBuf, StateDir)> {
    let root_c = std::fs::canonicalize(root).with_context(|| root.display().to_string())?;
    let state = sync::open_state(&g.state_dir, &[])?;
    Ok((root_c, state))
}

/// `history --root ROOT`.
pub fn history(root: &Path, g: &Global) -> Result<u8> {
    let (root_c, state) = open(root, g)?;
    let ups = load(&state, &root_c)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for u in ups.iter().rev() {
        let status = if u.rolled_back {
            "rolled back"
        } else if u.end.is_some() {
            "done"
        } else {
            "interrupted"
        };
        if g.json {
            let mut v = u.to_json();
            v["type"] = json!("upgrade");
            v["status"] = json!(status);
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:>6}  {}  {:<11}  from {}  trees {}",
                u.id,
                format_time(u.start),
                status,
                u.jail,
                u.trees
                    .iter()
                    .map(|t| t.rel.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )?;
        }
    }
    if ups.is_empty() && !g.quiet && !g.json {
        eprintln!("{}: no upgrades recorded", root_c.display());
    }
    Ok(exit::OK)
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
/// rollback unless `force`.
pub fn rollback(root: &Path, force: bool, dry_run: bool, g: &Global) -> Result<u8> {
    let (root_c, state) = open(root, g)?;
    let mut ups = load(&state, &root_c)?;
    let Some(u) = ups.iter().rev().find(|u| !u.rolled_back).cloned() else {
        bail!(
            "{}: no upgrade to roll back (see `jailsync history --root`)",
            root_c.display()
        );
    };
    let pools = Pools::new(0);
    // 1. Check, tree by tree (each under its own lock: a nested tree's lock conflicts with
    // the one holding it, so they are never held together).
    let mut todo: Vec<(PathBuf, u64)> = Vec::new();
    let mut changed = 0;
    for t in u.trees.iter().rev() {
        let _lock = Lock::acquire(&state, &t.dst)?;
        // A tree a killed run left aside (portable layer) is put back first.
        jailsync_engine::switch::restore_live_aside(&t.dst)?;
        if !t.dst.is_dir() {
            continue;
        }
        let Some(home) = Home::existing(&t.dst)? else {
            continue;
        };
        generation::recover(&home, Some(&state))?;
        let Some(id) = made_by(&home, t)? else {
            // No generation newer than the upgrade's start: the upgrade left this tree as it
            // was, unless the generation it made is gone (ids are never reused, so the last
            // one handed out tells).
            if generation::removed_after(&home, t.before.unwrap_or(0)) {
                bail!(
                    "{}: the generation upgrade {} made is gone (pruned?): it cannot be rolled back",
                    t.dst.display(),
                    u.id
                );
            }
            continue;
        };
        // Anything synced into the tree after the upgrade (a `sync`, a `push`) would be undone
        // with it, unnamed: the newest generation must be the upgrade's own.
        let newest = generation::list(&home)?.last().map_or(0, |g| g.id);
        if newest != id {
            bail!(
                "{}: synced again after upgrade {} (generation {newest} is newer than its {id}): roll that back first with `jailsync rollback {}`",
                t.dst.display(),
                u.id,
                t.dst.display()
            );
        }
        let r = generation::check(&home, Some(id), &pools.walk)?;
        for ch in &r.changed {
            changed += 1;
            let p = t.dst.join(jailsync_engine::fsx::os(&ch.path));
            if g.json {
                println!(
                    "{}",
                    json!({"type": "changed", "path": p.display().to_string(), "what": ch.what})
                );
            } else {
                eprintln!("jailsync: {}: {}", p.display(), ch.what);
            }
        }
        if dry_run {
            crate::output::report_carry(&mut std::io::stdout(), g, &t.dst, &r.carry, true)?;
        }
        todo.push((t.dst.clone(), id));
    }
    if changed > 0 && !force {
        eprintln!(
            "{}: upgrade {} not rolled back: {changed} entr{} changed since (left alone; --force rolls back anyway, keeping each changed tree whole beside its generations)",
            root_c.display(),
            u.id,
            if changed == 1 { "y" } else { "ies" }
        );
        return Ok(exit::PARTIAL);
    }
    if todo.is_empty() {
        bail!(
            "{}: upgrade {} left nothing to roll back (no tree holds a generation it made)",
            root_c.display(),
            u.id
        );
    }
    // 2. Switch back, in reverse order of the upgrade.
    for (dst, id) in &todo {
        if dry_run {
            if !g.quiet && !g.json {
                eprintln!("{}: would roll back to generation {id}", dst.display());
            }
            continue;
        }
        let _lock = Lock::acquire(&state, dst)?;
        let home = Home::existing(dst)?.context("its home is gone")?;
        generation::recover(&home, Some(&state))?;
        let mut r = generation::check(&home, Some(*id), &pools.walk)?;
        generation::switch_back_all(&mut [(&home, &mut r)], Some(&state))?;
        crate::output::report_carry(&mut std::io::stdout(), g, dst, &r.carry, false)?;
        for (p, e) in &r.errors {
            eprintln!("jailsync: {}: {e} (while rolling back)", p.display());
        }
        if g.json {
            println!(
                "{}",
                json!({"type": "rollback", "path": dst.display().to_string(), "generation": id,
                       "window_ms": r.switched.as_ref().map(|s| s.window.as_secs_f64() * 1000.0)})
            );
        } else if !g.quiet {
            let how = r.switched.as_ref().map_or(&home.method, |s| &s.method);
            eprintln!(
                "{}: rolled back to generation {id} by {}",
                dst.display(),
                how.describe()
            );
        }
    }
    if !dry_run {
        if let Some(x) = ups.iter_mut().find(|x| x.id == u.id) {
            x.rolled_back = true;
        }
        save(&state, &root_c, &ups)?;
        if !g.quiet && !g.json {
            eprintln!(
                "{}: upgrade {} rolled back ({} tree{})",
                root_c.display(),
                u.id,
                todo.len(),
                if todo.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(exit::OK)
}
