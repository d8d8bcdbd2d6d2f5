//! Admin commands around the engine: `prune`, `man`, `completions`.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use jailsync_engine::{history, sync};

use crate::args::{exit, Global};
use crate::output::human_bytes;

#[derive(Args, Debug)]
pub struct PruneCmd {
    /// The destination whose old generations to remove.
    #[arg(required_unless_present = "root", conflicts_with = "root")]
    pub dst: Option<PathBuf>,
    /// Prune every tree the upgrades of this live root synced (see `history --root`).
    #[arg(long, value_name = "ROOT")]
    pub root: Option<PathBuf>,
    /// Generations to keep, newest first (0: remove them all; rollback is then impossible;
    /// default: the configuration file's `keep`, else 3).
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub keep: usize,
    /// Show what would be removed; remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Prune the target of a DST that is a symlink (only one owned by root or you).
    #[arg(long)]
    pub follow_dst: bool,
    /// Remove generations whose releases programs still run from (a destination switched
    /// by symlink); without it they are kept, and the programs named.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct ManCmd {
    /// Write jailsync.1 and one page per subcommand (jailsync-sync.1, ...) into DIR instead.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompletionsCmd {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `cmd`: the whole command line's description (main's `Cli`).
pub fn run_man(c: ManCmd, cmd: clap::Command) -> Result<u8> {
    if let Some(dir) = &c.dir {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        clap_mangen::generate_to(cmd.clone(), dir).with_context(|| dir.display().to_string())?;
        // The top page with the sections clap knows nothing of.
        let top = dir.join("jailsync.1");
        std::fs::write(&top, main_page(cmd)?).with_context(|| top.display().to_string())?;
        return Ok(exit::OK);
    }
    write_stdout(&main_page(cmd)?)
}

/// jailsync(1): what clap_mangen renders, with FILTER RULES, FILES, ENVIRONMENT, EXIT
/// STATUS, EXAMPLES and SEE ALSO before its version section.
fn main_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    man.render_extra_section(&mut page)?;
    page.extend_from_slice(crate::manpage::SECTIONS.as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// `cmd`: the whole command line's description (main's `Cli`).
pub fn run_completions(c: CompletionsCmd, mut cmd: clap::Command) -> Result<u8> {
    let mut script = Vec::new();
    // Rendered to memory first: the generators panic on a failed write, and a closed stdout
    // must end quietly (see `pipe`).
    clap_complete::generate(c.shell, &mut cmd, "jailsync", &mut script);
    write_stdout(&script)
}

fn write_stdout(bytes: &[u8]) -> Result<u8> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(exit::OK)
}

pub fn run_prune(c: PruneCmd, g: &Global) -> Result<u8> {
    let Some(root) = &c.root else {
        let dst = c.dst.clone().expect("clap requires DST without --root");
        return prune_one(&c, &dst, g);
    };
    let root_c = std::fs::canonicalize(root).with_context(|| root.display().to_string())?;
    let state = sync::open_state(&g.state_dir, &[&root_c])?;
    let mut dsts: Vec<PathBuf> = crate::roots::load(&state, &root_c)?
        .into_iter()
        .flat_map(|u| u.trees.into_iter().map(|t| t.dst))
        .collect();
    dsts.sort();
    dsts.dedup();
    drop(state);
    if dsts.is_empty() {
        bail!(
            "--root {}: no upgrade recorded for this root (nothing to prune; `jailsync history \
             --root {}` lists them)",
            root.display(),
            root.display()
        );
    }
    for d in &dsts {
        prune_one(&c, d, g)?;
    }
    Ok(exit::OK)
}

/// Prunes one destination.
fn prune_one(c: &PruneCmd, shown: &std::path::Path, g: &Global) -> Result<u8> {
    let r = history::prune(
        shown,
        c.follow_dst,
        &g.state_dir,
        c.keep,
        c.dry_run,
        c.force,
    )?;
    for d in &r.deferred {
        let who: Vec<String> = d
            .procs
            .iter()
            .map(|p| format!("{} ({})", p.pid, p.comm))
            .collect();
        // Asks for action, so printed even with -q.
        eprintln!(
            "{}: {} kept: programs still run from {}: {} (restart them, or prune --force)",
            r.dst.display(),
            d.name,
            d.tree.display(),
            who.join(", ")
        );
    }
    let (dst, removed_ids, kept, freed) = (&r.dst, &r.removed, r.kept, r.freed);
    if g.json {
        let v = serde_json::json!({
            "type": "summary",
            "path": dst.display().to_string(),
            "dry_run": c.dry_run,
            "removed": removed_ids,
            "kept": kept,
            "freed_bytes": freed.own,
            "deferred": r.deferred.iter().map(|d| serde_json::json!({
                "name": d.name,
                "tree": d.tree.display().to_string(),
                "pids": d.procs.iter().map(|p| p.pid).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        writeln!(io::stdout().lock(), "{v}")?;
    } else if !g.quiet {
        eprintln!(
            "{}: {} {} generation{}{}, {} {}; {kept} kept",
            dst.display(),
            if c.dry_run { "would remove" } else { "removed" },
            removed_ids.len(),
            if removed_ids.len() == 1 { "" } else { "s" },
            if removed_ids.is_empty() {
                String::new()
            } else {
                format!(
                    " ({})",
                    removed_ids
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            human_bytes(freed.own),
            if c.dry_run { "to free" } else { "freed" },
        );
    }
    Ok(exit::OK)
}
