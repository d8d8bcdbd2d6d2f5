//! `upgrade`: the jail's package trees onto the live root, in phases (see
//! `jailsync_engine::layout`), with configuration protection and a root-level record that
//! `history --root` and `rollback --root` read.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use jailsync_engine::journal::StateDir;
use jailsync_engine::layout::Layout;
use jailsync_engine::protect::Rules;
use jailsync_engine::sync;

use crate::args::{engine_opts, exit, layout_of, phase_args, Global, SyncArgs};
use crate::output::Summary;
use crate::pipeline::{run_pairs, Hooks, Ran};
use crate::rails::check_deletes;
use crate::roots;

#[derive(Args, Debug)]
pub struct UpgradeCmd {
    /// The jail holding the rebuilt packages.
    pub jail: PathBuf,
    /// The live system's root.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// A tree to sync, relative to JAIL and ROOT (repeatable; default: `tree` lines of
    /// JAIL/jailsync.conf, else usr/pkg and var/db/pkg). The package database goes last.
    #[arg(long, value_name = "REL")]
    pub tree: Vec<PathBuf>,
    /// Also protect configuration files matching GLOB (ROOT-relative, `--exclude` syntax;
    /// repeatable; also `protect GLOB` lines of JAIL/jailsync.conf). Every tree's `etc/` is
    /// protected by default: see the README's "Configuration files".
    #[arg(long, value_name = "GLOB")]
    pub protect: Vec<String>,
    /// Do not protect every tree's `etc/` (GLOBs given still are).
    #[arg(long)]
    pub no_protect: bool,
    #[command(flatten)]
    pub args: SyncArgs,
}

/// Refuses an upgrade whose ROOT is a jail: ROOT, or a tree of it, carries the `.jail` marker
/// `jail init` and the seed's mkjail write. That is JAIL and `--root` swapped (`upgrade /
/// --root /usr/pkg_jail`), which would make the jail's trees copies of the live system's, or
/// one jail upgraded from another by mistake. `--force` upgrades it anyway.
fn check_not_a_jail(jail: &Path, root: &Path, trees: &[PathBuf]) -> Result<()> {
    let marker = jailsync_engine::jail::MARKER_FILE;
    let marked = std::iter::once(root.to_path_buf())
        .chain(trees.iter().map(|t| root.join(t)))
        .find(|d| std::fs::symlink_metadata(d.join(marker)).is_ok());
    let Some(at) = marked else { return Ok(()) };
    let swap = if std::fs::symlink_metadata(jail.join(marker)).is_ok() {
        String::new()
    } else {
        format!(
            "; JAIL and --root swapped? the jail goes first: `jailsync upgrade {} --root {}`",
            root.display(),
            jail.display()
        )
    };
    anyhow::bail!(
        "--root {}: {} has a {marker} marker, so it is a jail, not a live system{swap}; nothing \
         was changed (--force upgrades it all the same)",
        root.display(),
        at.join(marker).display()
    )
}

pub fn run_upgrade(mut c: UpgradeCmd, g: &Global) -> Result<u8> {
    let t0 = Instant::now();
    if !c.jail.is_dir() {
        anyhow::bail!(
            "{}: no such jail (the directory the rebuilt packages are in; `jailsync jail init \
             {}` makes one)",
            c.jail.display(),
            c.jail.display()
        );
    }
    let (layout, conf_protect) = layout_of(&c.jail, &c.tree)?;
    let jail_excludes = jailsync_engine::layout::read_conf_excludes(&c.jail)?;
    crate::filters::add_excludes(&mut c.args.exclude, &jail_excludes);
    if g.verbose > 0 && !g.quiet {
        for h in &layout.how {
            eprintln!("jailsync: layout: {h}");
        }
    }
    let rules = protect_rules(conf_protect, &c)?;
    if !c.args.force {
        check_not_a_jail(&c.jail, &c.root, &layout.trees)?;
    }
    let trees = Trees::check(&c, &layout)?;
    plan_ahead(&c, g, &layout, &trees, rules.as_ref())?;
    let record = if c.args.dry_run {
        None
    } else {
        Some(begin_record(&c, g, &trees)?)
    };
    let mut ran = run_phases(&c, g, &layout, &trees, &rules)?;
    if let Some(t) = ran.summary.as_mut() {
        t.elapsed = t0.elapsed();
    }
    if let Some((id, state)) = &record {
        roots::end(state, &trees.root, *id)?;
    }
    Ok(ran.finish(g))
}

/// The configuration protection rules: `protect` lines of JAIL/jailsync.conf, `--protect`,
/// and every tree's `etc/` unless `--no-protect`; None when there are none.
fn protect_rules(conf_protect: Vec<String>, c: &UpgradeCmd) -> Result<Option<Rules>> {
    let mut globs = conf_protect;
    globs.extend(c.protect.iter().cloned());
    let rules = Rules::new(!c.no_protect, &globs).context("bad --protect pattern")?;
    Ok((!rules.is_empty()).then_some(rules))
}

/// An upgrade's trees, checked: (tree, source, destination) each, and the live root.
struct Trees {
    all: Vec<(PathBuf, PathBuf, PathBuf)>,
    /// ROOT, canonical (the first destination without its tree's components).
    root: PathBuf,
}

impl Trees {
    /// Every tree and every overlap checked before anything is touched. A nested database
    /// overlaps only the tree that holds it, which carries it across (see `layout`).
    fn check(c: &UpgradeCmd, layout: &Layout) -> Result<Trees> {
        let mut all: Vec<(PathBuf, PathBuf, PathBuf)> = Vec::new();
        for t in &layout.trees {
            let (s, d) = sync::check_tree(&c.jail, &c.root, t, c.args.follow_dst)?;
            all.push((t.clone(), s, d));
        }
        let nested = layout.nested();
        let disjoint = |skip: &[&PathBuf]| -> Result<()> {
            let pairs: Vec<(&Path, &Path)> = all
                .iter()
                .filter(|(t, _, _)| !skip.contains(&t))
                .map(|(_, s, d)| (s.as_path(), d.as_path()))
                .collect();
            sync::check_disjoint(&pairs)?;
            Ok(())
        };
        let inner: Vec<&PathBuf> = nested.iter().map(|(db, _)| db).collect();
        disjoint(&inner)?;
        for (_, outer) in &nested {
            disjoint(&[outer])?;
        }
        let root = {
            let (t, _, d) = &all[0];
            let mut r = d.clone();
            for _ in t.components() {
                r.pop();
            }
            r
        };
        Ok(Trees { all, root })
    }

    /// A phase's trees as (source, destination, tree) for `run_pairs`.
    fn pairs_of(&self, trees: &[PathBuf]) -> Vec<(PathBuf, PathBuf, Vec<u8>)> {
        trees
            .iter()
            .map(|t| {
                let (_, s, d) = self.all.iter().find(|(x, _, _)| x == t).expect("checked");
                (s.clone(), d.clone(), t.as_os_str().as_bytes().to_vec())
            })
            .collect()
    }

    /// The state dir for every destination.
    fn open_state(&self, g: &Global) -> Result<StateDir> {
        Ok(sync::open_state(
            &g.state_dir,
            &self
                .all
                .iter()
                .map(|(_, _, d)| d.as_path())
                .collect::<Vec<_>>(),
        )?)
    }
}

/// --max-delete holds for the whole upgrade: with more than one phase, every phase is
/// planned first (as a dry run: nothing locked or changed), so a later phase is never
/// refused after an earlier one has switched. Without it, the default guard against
/// deleting most of a tree is per tree: only the later phases (a nested package database,
/// small) are planned ahead; the first is checked when it runs, before it switches.
fn plan_ahead(
    c: &UpgradeCmd,
    g: &Global,
    layout: &Layout,
    trees: &Trees,
    rules: Option<&Rules>,
) -> Result<()> {
    let guarded = c.args.max_delete.is_some() || !c.args.force;
    if !guarded || c.args.dry_run || layout.phases().len() <= 1 {
        return Ok(());
    }
    let mut phases = layout.phases();
    if c.args.max_delete.is_none() {
        phases.remove(0);
    }
    let state = trees.open_state(g)?;
    let pools = sync::Pools::new(0);
    let mut planned = Vec::new();
    for (ptrees, excludes) in &phases {
        let mut a = phase_args(&c.args, excludes, rules.is_some());
        a.dry_run = true;
        let opts = engine_opts(&a)?;
        let checked = trees.pairs_of(ptrees);
        let mut ts = Vec::new();
        for (s, d, _) in &checked {
            let quiet = jailsync_engine::progress::Silent;
            ts.push(sync::prepare(s, d, Some(&state), &opts, &pools, &quiet)?);
        }
        if let Some(r) = rules {
            crate::conf::decide_all(r, &mut ts, &checked, &state)?;
        }
        planned.extend(ts);
    }
    check_deletes(&planned, &c.args)
}

/// Records the upgrade about to start (see `roots`); returns its id and the state dir.
fn begin_record(c: &UpgradeCmd, g: &Global, trees: &Trees) -> Result<(u64, StateDir)> {
    let state = trees.open_state(g)?;
    // A switch a killed run left half made is finished (or undone) first, each under its
    // tree's lock: so the record below names the generations that exist before this run,
    // and a nested database's home, which the tree holding it carries across when staged,
    // is never copied with a switch half made.
    for (_, _, d) in &trees.all {
        if d.is_dir() {
            let _lock = jailsync_engine::journal::Lock::acquire(&state, d)?;
            if let Some(home) = jailsync_engine::switch::Home::existing(d)? {
                jailsync_engine::generation::recover(&home, Some(&state))?;
            }
        }
    }
    Ok((
        roots::begin(&state, &trees.root, &c.jail, &trees.all)?,
        state,
    ))
}

/// Runs the phases in order, their summaries added up; stops after a phase that switched
/// nothing (the package database then stays with the old release).
fn run_phases(
    c: &UpgradeCmd,
    g: &Global,
    layout: &Layout,
    trees: &Trees,
    rules: &Option<Rules>,
) -> Result<Ran> {
    let mut total: Option<Summary> = None;
    let mut code = exit::OK;
    let mut phases_report = None;
    for (k, (ptrees, excludes)) in layout.phases().into_iter().enumerate() {
        let checked = trees.pairs_of(&ptrees);
        if k > 0 && g.verbose > 0 && !g.quiet {
            eprintln!(
                "jailsync: the package database now: {}",
                ptrees
                    .iter()
                    .map(|t| t.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let hooks = Hooks {
            extra_excludes: excludes,
            protect: rules.clone(),
        };
        let ran = run_phase(k > 0, checked, &c.args, g, &hooks)?;
        code = code.max(ran.code);
        phases_report = ran.verbose_phases.or(phases_report);
        match ran.summary {
            Some(s) => match total.as_mut() {
                Some(t) => t.add(&s),
                None => total = Some(s),
            },
            // Nothing of that phase was switched: the database stays with the old release.
            None => break,
        }
    }
    Ok(Ran {
        code,
        summary: total,
        verbose_phases: phases_report,
        stats: c.args.stats,
    })
}

/// One phase. A nested database's parent (`nested`: a phase after the first) belongs to the
/// tree holding it, which set its mtime: the database's own switch (and its home, made on
/// the first run) must not change it.
fn run_phase(
    nested: bool,
    checked: Vec<(PathBuf, PathBuf, Vec<u8>)>,
    a: &SyncArgs,
    g: &Global,
    hooks: &Hooks,
) -> Result<Ran> {
    let parents: Vec<_> = if nested && !a.dry_run {
        checked
            .iter()
            .filter_map(|(_, d, _)| d.parent())
            .filter_map(|p| jailsync_engine::protect::DirMtime::of(p).ok())
            .collect()
    } else {
        Vec::new()
    };
    let ran = run_pairs(checked, a, g, hooks);
    for p in &parents {
        let _ = p.restore();
    }
    ran
}
