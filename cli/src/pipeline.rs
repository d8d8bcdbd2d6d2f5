//! The run `sync` and each phase of `upgrade` share: plan every pair, decide protected
//! configuration, check the deletions, switch (one transaction), then report.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use jailsync_engine::apply::Outcome;
use jailsync_engine::journal::StateDir;
use jailsync_engine::plan::Counts;
use jailsync_engine::progress::Progress;
use jailsync_engine::protect::{Decisions, Rules};
use jailsync_engine::sync::{self, Pools, Report, SyncOpts, Tree};
use jailsync_engine::upgrade;

use crate::args::{engine_opts, exit, phase_args, Global, SyncArgs};
use crate::output::{self, Summary, Tally, Timed};

/// What `upgrade` adds to a run of pairs: excludes for one phase (a nested database and its
/// home), and configuration protection.
#[derive(Default)]
pub struct Hooks {
    pub extra_excludes: Vec<String>,
    pub protect: Option<Rules>,
}

/// A run of pairs, its summary not printed yet (an upgrade in phases prints one).
pub struct Ran {
    pub code: u8,
    /// None: nothing was switched (staging failed, reported).
    pub summary: Option<Summary>,
    pub verbose_phases: Option<String>,
    /// `--stats`: the summary as rsync's statistics block too.
    pub stats: bool,
}

impl Ran {
    /// Prints the summary (stdout JSON or stderr line); returns the exit code.
    pub fn finish(self, g: &Global) -> u8 {
        if let Some(summary) = &self.summary {
            output::print_summary(summary, self.verbose_phases.as_deref(), g, self.stats);
        }
        self.code
    }
}

/// (source, destination, itemize prefix) of each pair, paths canonical.
pub type Pairs = [(PathBuf, PathBuf, Vec<u8>)];

/// What every step of a run uses (dropped in this order: the bars, the pools, the state).
struct Engine {
    prog: Box<Timed<Box<dyn Progress>>>,
    pools: Pools,
    state: StateDir,
    opts: SyncOpts,
}

/// Runs checked (source, destination, itemize prefix) pairs, their paths canonical.
pub fn run_pairs(
    checked: Vec<(PathBuf, PathBuf, Vec<u8>)>,
    a: &SyncArgs,
    g: &Global,
    hooks: &Hooks,
) -> Result<Ran> {
    let t0 = Instant::now();
    let a = &phase_args(a, &hooks.extra_excludes, hooks.protect.is_some());
    let en = open(&checked, a, g)?;
    let (mut trees, decisions) = plan_all(&checked, a, hooks, &en)?;
    let report = if a.dry_run {
        crate::audit::dry_run();
        None
    } else {
        Some(switch_all(&mut trees, &en)?)
    };
    if let Some(why) = report.as_ref().and_then(|r| r.aborted.as_ref()) {
        eprintln!("jailsync: {why}");
        return Ok(Ran {
            code: exit::PARTIAL,
            summary: None,
            verbose_phases: None,
            stats: a.stats,
        });
    }

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut counts = Counts::default();
    let mut errors = 0;
    for (k, t) in trees.iter().enumerate() {
        let done: &[bool] = report.as_ref().map_or(&[], |r| &r.outcomes[k].done);
        output::add_counts(&mut counts, Counts::of_done(&t.plan, done));
        let prefix = &checked[k].2;
        if a.itemize || g.json {
            output::print_changes(&mut out, &t.plan, &t.src, &t.dst, prefix, g.json)?;
        }
        if let Some(d) = decisions.get(k) {
            crate::conf::print_decisions(&mut out, d, prefix, a.itemize, g.json)?;
        }
        errors += report_tree(&mut out, t, report.as_ref().map(|r| &r.outcomes[k]), g)?;
    }
    if let Some(r) = &report {
        report_run(&mut out, &trees, r, g)?;
    }
    let mut conf = Tally::of(&decisions);
    if !a.dry_run {
        if let (Some(rules), Some(r)) = (&hooks.protect, &report) {
            errors += crate::conf::finish_all(
                rules, &trees, &checked, &decisions, r, &en.state, &mut conf, &mut out, g,
            )?;
            crate::conf::announce(&decisions, &trees, a.itemize, g);
        }
    }
    if let Some(r) = &report {
        audit_trees(&trees, r);
        crate::audit::counts(counts, r.bytes_written());
    }
    let summary = Summary {
        conf: hooks.protect.as_ref().map(|_| conf),
        counts,
        bytes_written: report.as_ref().map_or(0, |r| r.bytes_written()),
        elapsed: t0.elapsed(),
        switch_window: report
            .as_ref()
            .map_or(Default::default(), |r| r.switch_window),
        errors,
        dry_run: a.dry_run,
        hashed_bytes: trees.iter().map(|t| t.hashed_bytes).sum(),
        cache_hits: trees.iter().map(|t| t.cache_hits).sum(),
        files: kinds(&trees),
        total_size: trees
            .iter()
            .flat_map(|t| t.src.iter())
            .filter(|e| e.kind == jailsync_engine::entry::Kind::File)
            .map(|e| e.size)
            .sum(),
    };
    out.flush()?;
    Ok(Ran {
        code: if errors > 0 { exit::PARTIAL } else { exit::OK },
        summary: Some(summary),
        verbose_phases: (g.verbose > 0).then(|| en.prog.report()),
        stats: a.stats,
    })
}

/// The source trees' entries by kind: regular, directory, symlink, other.
fn kinds(trees: &[Tree]) -> [u64; 4] {
    use jailsync_engine::entry::Kind;
    let mut k = [0u64; 4];
    for e in trees.iter().flat_map(|t| t.src.iter()) {
        k[match e.kind {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            _ => 3,
        }] += 1;
    }
    k
}

/// Each tree and the generation its old state became, for the audit line.
fn audit_trees(trees: &[Tree], r: &Report) {
    for (k, t) in trees.iter().enumerate() {
        let switched = r
            .switches
            .get(k)
            .and_then(|s| s.as_ref())
            .and_then(|s| s.generation);
        crate::audit::tree(&t.dst_path, switched);
    }
}

/// Checks the pairs are disjoint, then opens the state dir (for all of them), the pools and
/// the progress bars (named by tree).
fn open(checked: &Pairs, a: &SyncArgs, g: &Global) -> Result<Engine> {
    let opts = engine_opts(a)?;
    let pairs: Vec<(&Path, &Path)> = checked
        .iter()
        .map(|(s, d, _)| (s.as_path(), d.as_path()))
        .collect();
    sync::check_disjoint(&pairs)?;
    let all: Vec<&Path> = checked
        .iter()
        .flat_map(|(s, d, _)| [s.as_path(), d.as_path()])
        .collect();
    let state = sync::open_state(&g.state_dir, &all)?;
    let pools = Pools::new(opts.threads);
    let prog = output::progress_named(
        g,
        checked
            .iter()
            .map(|(_, d, rel)| (d.clone(), String::from_utf8_lossy(rel).into_owned()))
            .collect(),
    );
    Ok(Engine {
        prog,
        pools,
        state,
        opts,
    })
}

/// Scans and plans every pair, decides protected configuration, and refuses (before anything
/// changes) a plan deleting more than it may.
fn plan_all(
    checked: &Pairs,
    a: &SyncArgs,
    hooks: &Hooks,
    en: &Engine,
) -> Result<(Vec<Tree>, Vec<Decisions>)> {
    let mut trees: Vec<Tree> = Vec::new();
    for (s, d, _) in checked {
        trees.push(sync::prepare(
            s,
            d,
            Some(&en.state),
            &en.opts,
            &en.pools,
            &*en.prog,
        )?);
    }
    let decisions = match &hooks.protect {
        Some(rules) => upgrade::decide_all(rules, &mut trees, checked, &en.state)?,
        None => Vec::new(),
    };
    // After the protection decisions: configuration they keep is not deleted.
    crate::rails::check_deletes(&trees, a)?;
    Ok((trees, decisions))
}

/// Makes the next release of every tree live: one transaction (see the engine's `txn`).
fn switch_all(trees: &mut [Tree], en: &Engine) -> Result<Report> {
    Ok(jailsync_engine::txn::switch_all(
        trees, &en.state, &en.opts, &en.pools, &*en.prog,
    )?)
}

/// One tree's errors (scan, then the run's `o`) and, with `-v`, the directories kept because
/// they were not empty. Returns the number of errors.
fn report_tree(out: &mut impl Write, t: &Tree, o: Option<&Outcome>, g: &Global) -> Result<usize> {
    let mut errors = 0;
    for (p, e) in &t.scan_errors {
        errors += 1;
        output::report_error(out, g, &p.display().to_string(), "scan", e)?;
    }
    let Some(o) = o else { return Ok(errors) };
    for e in &o.errors {
        errors += 1;
        // Named where the problem is: the jail's file when it could not be read.
        let side = if jailsync_engine::apply::is_source_side(&e.error) {
            &t.src_path
        } else {
            &t.dst_path
        };
        let p = side.join(jailsync_engine::fsx::os(&e.path));
        output::report_error(out, g, &p.display().to_string(), e.phase.name(), &e.error)?;
    }
    if g.verbose > 0 && !g.json {
        for p in &o.kept {
            eprintln!(
                "jailsync: kept {}: not empty (holds excluded or new entries)",
                t.dst_path.join(jailsync_engine::fsx::os(p)).display()
            );
        }
    }
    Ok(errors)
}

/// The run's notes and its switches (each names where its old tree is kept).
fn report_run(out: &mut impl Write, trees: &[Tree], r: &Report, g: &Global) -> Result<()> {
    if !g.quiet {
        for n in &r.notes {
            eprintln!("jailsync: note: {n}");
        }
    }
    output::print_switches(out, g, trees, r)?;
    Ok(())
}
