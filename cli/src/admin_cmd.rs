//! Admin commands around the engine: `prune`, `man`, `completions`.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use jailsync_engine::history;

use crate::args::{exit, Global};
use crate::output::human_bytes;

#[derive(Args, Debug)]
pub struct PruneCmd {
    /// The destination whose old generations to remove.
    pub dst: PathBuf,
    /// Generations to keep, newest first (0: remove them all; rollback is then impossible).
    #[arg(long, value_name = "N", required = true)]
    pub keep: usize,
    /// Show what would be removed; remove nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Prune the target of a DST that is a symlink (only one owned by root or you).
    #[arg(long)]
    pub follow_dst: bool,
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
        clap_mangen::generate_to(cmd, dir).with_context(|| dir.display().to_string())?;
        return Ok(exit::OK);
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    write_stdout(&page)
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
    let r = history::prune(&c.dst, c.follow_dst, &g.state_dir, c.keep, c.dry_run)?;
    let (dst, removed_ids, kept, freed) = (&r.dst, &r.removed, r.kept, r.freed);
    if g.json {
        let v = serde_json::json!({
            "type": "summary",
            "path": dst.display().to_string(),
            "dry_run": c.dry_run,
            "removed": removed_ids,
            "kept": kept,
            "freed_bytes": freed.own,
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
