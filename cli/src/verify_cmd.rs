//! `verify`: check that a tree matches another tree or a manifest exactly.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use jailsync_engine::manifest;
use jailsync_engine::paths::{self, Follow};
use jailsync_engine::scan::Excludes;
use jailsync_engine::sync::{self, Pools, SyncOpts};

use crate::args::{exit, Global};
use crate::output::{self, progress, report_error};

#[derive(Args, Debug)]
pub struct VerifyCmd {
    /// A tree, or a manifest written by `jailsync manifest`.
    pub src: PathBuf,
    /// The tree to check.
    pub dst: PathBuf,
    /// Ignore cached hashes.
    #[arg(short, long)]
    pub checksum: bool,
    /// Leave paths matching GLOB out (not compared); repeatable, as `sync --exclude`.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub rules: crate::args::RuleArgs,
}

pub fn run_verify(c: VerifyCmd, g: &Global) -> Result<u8> {
    // verify only reads: a symlinked DST is followed (when owned by root or the caller),
    // whatever its spelling.
    let dst = paths::resolve_dir(&c.dst, "destination", Follow::Owned)?;
    if !dst.is_dir() {
        bail!("{}: not a directory", c.dst.display());
    }
    // State is only read and written for caches here; a read-only state dir is no error.
    let state = sync::open_state(&g.state_dir, &[&dst]).ok();
    // Configuration kept with the admin's edits by the last upgrade is not a difference, nor
    // are the jail's versions written beside it (see the README's "Configuration files").
    let kept = state
        .as_ref()
        .and_then(|s| crate::conf::kept_for_verify(s, &dst));
    let mut patterns = c.exclude.clone();
    if let Some(s) = &state {
        patterns.extend(crate::conf::nested_homes(s, &dst));
    }
    if kept.is_some() {
        patterns.push(jailsync_engine::protect::NEW_EXCLUDE.into());
        patterns.push(jailsync_engine::protect::ASIDE_EXCLUDE.into());
    }
    let opts = SyncOpts {
        excludes: Excludes::new(&patterns).context("bad --exclude pattern")?,
        checksum: c.checksum,
        dry_run: true,
        ..SyncOpts::default()
    };
    let pools = Pools::new(0);
    let prog = progress(g);
    let mut tree = if c.src.is_dir() {
        let (src, dst) = sync::check_pair(&c.src, &c.dst, true)?;
        sync::prepare(&src, &dst, state.as_ref(), &opts, &pools, &*prog)?
    } else {
        let m = manifest::read_file(&c.src)?;
        sync::prepare_from_manifest(&c.src, m, &dst, state.as_ref(), &opts, &pools, &*prog)?
    };
    let (kept_config, kept_changed) = match &kept {
        Some(kept) => crate::conf::drop_kept(&mut tree, kept)?,
        None => (0, 0),
    };
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    // -q: the exit code is the whole answer.
    let tell = !g.quiet || g.json;
    if tell {
        output::print_changes(&mut out, &tree.plan, &tree.src, &tree.dst, b"", g.json)?;
        for (p, e) in &tree.scan_errors {
            report_error(&mut out, g, &p.display().to_string(), "scan", e)?;
        }
    }
    let differ = !tree.plan.is_empty() || !tree.scan_errors.is_empty();
    if g.json {
        let v = serde_json::json!({
            "type": "summary",
            "match": !differ,
            "differences": tree.plan.actions.len(),
            "errors": tree.scan_errors.len(),
            "config_kept": kept_config,
            "config_kept_changed": kept_changed,
        });
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    if !g.quiet && !g.json {
        if kept_config > 0 {
            eprintln!(
                "{}: {kept_config} configuration file{} kept with local edits (not counted; see `jailsync conf-diff`)",
                c.dst.display(),
                if kept_config == 1 { "" } else { "s" }
            );
        }
        if kept_changed > 0 {
            eprintln!(
                "{}: {kept_changed} configuration entr{} kept with local edits changed since (counted)",
                c.dst.display(),
                if kept_changed == 1 { "y" } else { "ies" }
            );
        }
        if differ {
            eprintln!(
                "{}: {} differences from {}",
                c.dst.display(),
                tree.plan.actions.len(),
                c.src.display()
            );
        } else if g.verbose > 0 {
            eprintln!("{}: matches {}", c.dst.display(), c.src.display());
        }
    }
    Ok(if differ { exit::PARTIAL } else { exit::OK })
}
