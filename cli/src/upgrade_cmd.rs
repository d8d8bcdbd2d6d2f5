//! `upgrade`: the jail's package trees onto the live root, in phases (see
//! `jailsync_engine::layout`), with configuration protection and a root-level record that
//! `history --root` and `rollback --root` read.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
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

pub fn run_upgrade(c: UpgradeCmd, g: &Global) -> Result<u8> {
    let t0 = Instant::now();
    let (layout, conf_protect) = layout_of(&c.jail, &c.tree)?;
    if g.verbose > 0 && !g.quiet {
        for h in &layout.how {
            eprintln!("jailsync: layout: {h}");
        }
    }
    let mut globs = conf_protect;
    globs.extend(c.protect.iter().cloned());
    let rules = Rules::new(!c.no_protect, &globs).context("bad --protect pattern")?;
    let rules = (!rules.is_empty()).then_some(rules);

    if !c.args.force {
        check_not_a_jail(&c.jail, &c.root, &layout.trees)?;
    }

    // Every tree and every overlap checked before anything is touched. A nested database
    // overlaps only the tree that holds it, which carries it across (see `layout`).
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
    let root_c = {
        let (t, _, d) = &all[0];
        let mut r = d.clone();
        for _ in t.components() {
            r.pop();
        }
        r
    };

    // A phase's trees as (source, destination, tree) for `run_pairs`.
    let pairs_of = |trees: &[PathBuf]| -> Vec<(PathBuf, PathBuf, Vec<u8>)> {
        trees
            .iter()
            .map(|t| {
                let (_, s, d) = all.iter().find(|(x, _, _)| x == t).expect("checked");
                (s.clone(), d.clone(), t.as_os_str().as_bytes().to_vec())
            })
            .collect()
    };
    // --max-delete holds for the whole upgrade: with more than one phase, every phase is
    // planned first (as a dry run: nothing locked or changed), so a later phase is never
    // refused after an earlier one has switched. Without it, the default guard against
    // deleting most of a tree is per tree: only the later phases (a nested package database,
    // small) are planned ahead; the first is checked when it runs, before it switches.
    let guarded = c.args.max_delete.is_some() || !c.args.force;
    if guarded && !c.args.dry_run {
        let mut phases = layout.phases();
        if c.args.max_delete.is_none() && !phases.is_empty() {
            phases.remove(0);
        }
        if layout.phases().len() > 1 {
            let state = sync::open_state(
                &g.state_dir,
                &all.iter().map(|(_, _, d)| d.as_path()).collect::<Vec<_>>(),
            )?;
            let pools = jailsync_engine::sync::Pools::new(0);
            let mut planned = Vec::new();
            for (trees, excludes) in &phases {
                let mut a = phase_args(&c.args, excludes, rules.is_some());
                a.dry_run = true;
                let opts = engine_opts(&a)?;
                let checked = pairs_of(trees);
                let mut ts = Vec::new();
                for (s, d, _) in &checked {
                    let quiet = jailsync_engine::progress::Silent;
                    ts.push(sync::prepare(s, d, Some(&state), &opts, &pools, &quiet)?);
                }
                if let Some(r) = &rules {
                    crate::conf::decide_all(r, &mut ts, &checked, &state)?;
                }
                planned.extend(ts);
            }
            check_deletes(&planned, &c.args)?;
        }
    }

    let record = if c.args.dry_run {
        None
    } else {
        let state = sync::open_state(
            &g.state_dir,
            &all.iter().map(|(_, _, d)| d.as_path()).collect::<Vec<_>>(),
        )?;
        // A switch a killed run left half made is finished (or undone) first, each under its
        // tree's lock: so the record below names the generations that exist before this run,
        // and a nested database's home, which the tree holding it carries across when staged,
        // is never copied with a switch half made.
        for (_, _, d) in &all {
            if d.is_dir() {
                let _lock = jailsync_engine::journal::Lock::acquire(&state, d)?;
                if let Some(home) = jailsync_engine::switch::Home::existing(d)? {
                    jailsync_engine::generation::recover(&home, Some(&state))?;
                }
            }
        }
        Some((roots::begin(&state, &root_c, &c.jail, &all)?, state))
    };

    let mut total: Option<Summary> = None;
    let mut code = exit::OK;
    let mut phases_report = None;
    for (k, (trees, excludes)) in layout.phases().into_iter().enumerate() {
        let checked = pairs_of(&trees);
        if k > 0 && g.verbose > 0 && !g.quiet {
            eprintln!(
                "jailsync: the package database now: {}",
                trees
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
        // A nested database's parent belongs to the tree holding it, which set its mtime:
        // the database's own switch (and its home, made on the first run) must not change it.
        let parents: Vec<_> = if k > 0 && !c.args.dry_run {
            checked
                .iter()
                .filter_map(|(_, d, _)| d.parent())
                .filter_map(|p| jailsync_engine::protect::DirMtime::of(p).ok())
                .collect()
        } else {
            Vec::new()
        };
        let ran = run_pairs(checked, &c.args, g, &hooks);
        for p in &parents {
            let _ = p.restore();
        }
        let ran = ran?;
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
    if let Some(t) = total.as_mut() {
        t.elapsed = t0.elapsed();
    }
    if let Some((id, state)) = &record {
        roots::end(state, &root_c, *id)?;
    }
    Ok(Ran {
        code,
        summary: total,
        verbose_phases: phases_report,
    }
    .finish(g))
}
