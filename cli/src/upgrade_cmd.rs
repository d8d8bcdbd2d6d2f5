//! `upgrade`: the arguments to the engine's use case (`jailsync_engine::upgrade`), each
//! phase run by the pipeline `sync` uses (which prints as it goes), the summary printed.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use jailsync_engine::sync::SyncOpts;
use jailsync_engine::upgrade::{self, Phase, Steps, UpgradeRequest};

use crate::args::{engine_opts, exit, phase_args, Global, SyncArgs};
use crate::pipeline::{run_pairs, Hooks, Ran};

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

pub fn run_upgrade(c: UpgradeCmd, g: &Global) -> Result<u8> {
    let t0 = Instant::now();
    let req = UpgradeRequest {
        jail: c.jail,
        root: c.root,
        trees: c.tree,
        protect: c.protect,
        no_protect: c.no_protect,
        force: c.args.force,
        dry_run: c.args.dry_run,
        follow_dst: c.args.follow_dst,
        max_delete: c.args.max_delete,
        state_dir: g.state_dir.clone(),
        switch: crate::args::engine_opts(&c.args)?.switch,
    };
    let mut phases = Phases {
        ran: Ran {
            code: exit::OK,
            summary: None,
            verbose_phases: None,
            stats: c.args.stats,
        },
        args: c.args,
        g,
    };
    upgrade::upgrade(&req, &mut phases)?;
    let mut ran = phases.ran;
    if let Some(t) = ran.summary.as_mut() {
        t.elapsed = t0.elapsed();
    }
    Ok(ran.finish(g))
}

/// The CLI's part of an upgrade: its options, and the phases run so far, their summaries
/// added up.
struct Phases<'a> {
    args: SyncArgs,
    g: &'a Global,
    ran: Ran,
}

impl Steps for Phases<'_> {
    type Error = anyhow::Error;

    fn layout(&mut self, how: &[String]) {
        if self.g.verbose > 0 && !self.g.quiet {
            for h in how {
                eprintln!("jailsync: layout: {h}");
            }
        }
    }

    fn jail_excludes(&mut self, pats: &[String]) {
        crate::filters::add_excludes(&mut self.args.exclude, pats);
    }

    fn plan_opts(&self, excludes: &[String], protect: bool) -> Result<SyncOpts> {
        let mut a = phase_args(&self.args, excludes, protect);
        a.dry_run = true;
        engine_opts(&a)
    }

    fn run_phase(&mut self, phase: &Phase) -> Result<bool> {
        if phase.index > 0 && self.g.verbose > 0 && !self.g.quiet {
            eprintln!(
                "jailsync: the package database now: {}",
                phase
                    .trees
                    .iter()
                    .map(|t| t.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let hooks = Hooks {
            extra_excludes: phase.excludes.clone(),
            protect: phase.protect.clone(),
        };
        let ran = run_pairs(phase.pairs.clone(), &self.args, self.g, &hooks)?;
        self.ran.code = self.ran.code.max(ran.code);
        self.ran.verbose_phases = ran.verbose_phases.or(self.ran.verbose_phases.take());
        let Some(s) = ran.summary else {
            // Nothing of that phase was switched: the database stays with the old release.
            return Ok(false);
        };
        match self.ran.summary.as_mut() {
            Some(t) => t.add(&s),
            None => self.ran.summary = Some(s),
        }
        Ok(true)
    }
}
