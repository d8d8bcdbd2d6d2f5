//! The run `sync` and each phase of `upgrade` share: plan every pair, decide protected
//! configuration, check the deletions, switch (or apply per file), then report.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use jailsync_engine::plan::Counts;
use jailsync_engine::protect::Rules;
use jailsync_engine::sync::{self, Pools, Tree};

use crate::args::{engine_opts, exit, phase_args, Global, SyncArgs};
use crate::output::{self, progress_named, report_error, Summary, Tally};

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
}

impl Ran {
    /// Prints the summary (stdout JSON or stderr line); returns the exit code.
    pub fn finish(self, g: &Global) -> u8 {
        if let Some(summary) = &self.summary {
            output::print_summary(summary, self.verbose_phases.as_deref(), g);
        }
        self.code
    }
}

/// Runs checked (source, destination, itemize prefix) pairs, their paths canonical.
pub fn run_pairs(
    checked: Vec<(PathBuf, PathBuf, Vec<u8>)>,
    a: &SyncArgs,
    g: &Global,
    hooks: &Hooks,
) -> Result<Ran> {
    let t0 = Instant::now();
    let a2 = phase_args(a, &hooks.extra_excludes, hooks.protect.is_some());
    let a = &a2;
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
    let prog = progress_named(
        g,
        checked
            .iter()
            .map(|(_, d, rel)| (d.clone(), String::from_utf8_lossy(rel).into_owned()))
            .collect(),
    );
    let mut trees: Vec<Tree> = Vec::new();
    for (s, d, _) in &checked {
        trees.push(sync::prepare(s, d, Some(&state), &opts, &pools, &*prog)?);
    }
    let decisions = match &hooks.protect {
        Some(rules) => crate::conf::decide_all(rules, &mut trees, &checked, &state)?,
        None => Vec::new(),
    };
    // After the protection decisions: configuration they keep is not deleted.
    crate::rails::check_deletes(&trees, a)?;
    let mut switched = None;
    if !a.dry_run && sync::all_switchable(&trees) {
        let r = jailsync_engine::txn::switch_all(&mut trees, &state, &opts, &pools, &*prog)?;
        match &r.fallback {
            Some(why) => {
                for t in trees.iter_mut() {
                    if let Some(h) = t.home.as_mut() {
                        h.method = jailsync_engine::switch::Method::PerFile(why.clone());
                    }
                }
            }
            None => switched = Some(r),
        }
    }
    let report = if a.dry_run {
        None
    } else if switched.is_some() {
        switched
    } else {
        if g.verbose > 0 && !g.quiet {
            for t in &trees {
                if let Some(h) = &t.home {
                    eprintln!(
                        "jailsync: {}: switch by {}",
                        t.dst_path.display(),
                        h.method.describe()
                    );
                }
            }
        }
        Some(sync::apply_all(
            &trees,
            Some(&state),
            &opts,
            &pools,
            &*prog,
        )?)
    };
    if let Some(why) = report.as_ref().and_then(|r| r.aborted.as_ref()) {
        eprintln!("jailsync: {why}");
        return Ok(Ran {
            code: exit::PARTIAL,
            summary: None,
            verbose_phases: None,
        });
    }

    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut counts = Counts::default();
    let mut errors = 0;
    for (k, t) in trees.iter().enumerate() {
        let done: &[bool] = report.as_ref().map_or(&[], |r| &r.outcomes[k].done);
        output::add_counts(&mut counts, Counts::of_done(&t.plan, done));
        if a.itemize || g.json {
            output::print_changes(&mut out, &t.plan, &t.src, &t.dst, &checked[k].2, g.json)?;
        }
        if let Some(d) = decisions.get(k) {
            crate::conf::print_decisions(&mut out, d, &checked[k].2, a.itemize, g.json)?;
        }
        for (p, e) in &t.scan_errors {
            errors += 1;
            report_error(&mut out, g, &p.display().to_string(), "scan", e)?;
        }
        if let Some(r) = &report {
            let o = &r.outcomes[k];
            for e in &o.errors {
                errors += 1;
                // Named where the problem is: the jail's file when it could not be read.
                let side = if jailsync_engine::apply::is_source_side(&e.error) {
                    &t.src_path
                } else {
                    &t.dst_path
                };
                let p = side.join(jailsync_engine::fsx::os(&e.path));
                report_error(
                    &mut out,
                    g,
                    &p.display().to_string(),
                    e.phase.name(),
                    &e.error,
                )?;
            }
            if g.verbose > 0 && !g.json {
                for p in &o.kept {
                    eprintln!(
                        "jailsync: kept {}: not empty (holds excluded or new entries)",
                        t.dst_path.join(jailsync_engine::fsx::os(p)).display()
                    );
                }
            }
        }
    }
    if let Some(r) = &report {
        if !g.quiet {
            for n in &r.notes {
                eprintln!("jailsync: note: {n}");
            }
        }
        output::print_switches(&mut out, g, &trees, r)?;
        if g.verbose > 0 && !g.json {
            for (gen, t) in r.generations.iter().zip(&trees) {
                if let Some(gen) = gen {
                    eprintln!(
                        "jailsync: {}: rollback generation {} kept in {}",
                        t.dst_path.display(),
                        gen.id,
                        gen.store.display()
                    );
                }
            }
        }
    }
    let mut conf = Tally::of(&decisions);
    if !a.dry_run {
        if let (Some(rules), Some(r)) = (&hooks.protect, &report) {
            errors += crate::conf::finish_all(
                rules, &trees, &checked, &decisions, r, &state, &mut conf, &mut out, g,
            )?;
        }
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
    };
    out.flush()?;
    Ok(Ran {
        code: if errors > 0 { exit::PARTIAL } else { exit::OK },
        summary: Some(summary),
        verbose_phases: (g.verbose > 0).then(|| prog.report()),
    })
}
