//! Admin commands around the engine: `prune`, `man`, `completions`, and the generation sizes
//! `history` shows.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory};
use jailsync_engine::usage::{self, Usage};
use jailsync_engine::{fsx, generation, journal, paths, rollback, switch, sync};

use crate::output::human_bytes;
use crate::{exit, Global};

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

pub fn run_man(c: ManCmd) -> Result<u8> {
    let cmd = crate::Cli::command();
    if let Some(dir) = &c.dir {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        clap_mangen::generate_to(cmd, dir).with_context(|| dir.display().to_string())?;
        return Ok(exit::OK);
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut page)?;
    write_stdout(&page)
}

pub fn run_completions(c: CompletionsCmd) -> Result<u8> {
    let mut cmd = crate::Cli::command();
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

/// One generation as `history` and `prune` show it.
pub struct GenSize {
    pub id: u64,
    /// Where it is read (through the home's or store's open fd).
    pub io: PathBuf,
    pub usage: Option<Usage>,
}

/// The live tree's inodes, skipping our own in-tree homes.
fn live_set(dst: &Path) -> Result<std::collections::HashSet<u64>> {
    Ok(usage::live_inodes(
        dst,
        &[switch::IN_TREE_HOME, fsx::STORE_NAME],
    )?)
}

/// Sizes of the switched generations of `home`, oldest first.
/// A size that cannot be measured (a tree that cannot be walked) is shown as unknown: listing
/// the generations matters more.
pub fn switched_sizes(home: &switch::Home, dst: &Path) -> Result<Vec<GenSize>> {
    let live = live_set(dst).ok();
    let mut out = Vec::new();
    for g in generation::list(home)? {
        let io = home.io_path(&format!("gen-{}", g.id));
        let usage = live
            .as_ref()
            .and_then(|l| usage::held_only_by(std::slice::from_ref(&io), l).ok());
        out.push(GenSize {
            id: g.id,
            io,
            usage,
        });
    }
    Ok(out)
}

/// Sizes of the per-file store's generations, oldest first.
pub fn store_sizes(gens: &[rollback::Generation], dst: &Path) -> Result<Vec<GenSize>> {
    let live = live_set(dst).ok();
    Ok(gens
        .iter()
        .map(|g| GenSize {
            id: g.id,
            io: g.dir.clone(),
            usage: live
                .as_ref()
                .and_then(|l| usage::held_only_by(std::slice::from_ref(&g.dir), l).ok()),
        })
        .collect())
}

/// `size 12.0 MiB not in live (8.0 MiB its own)`, for `history`.
pub fn size_text(u: Option<Usage>) -> String {
    match u {
        Some(u) => format!(
            "{:>9} not live, {:>9} own",
            human_bytes(u.not_live),
            human_bytes(u.own)
        ),
        None => format!("{:>9}", "size ?"),
    }
}

pub fn size_json(u: Option<Usage>) -> serde_json::Value {
    match u {
        Some(u) => serde_json::json!({"not_live_bytes": u.not_live, "own_bytes": u.own}),
        None => serde_json::Value::Null,
    }
}

pub fn run_prune(c: PruneCmd, g: &Global) -> Result<u8> {
    let shown = &c.dst;
    let dst = paths::resolve_dir(shown, "destination", sync::follow_dst(c.follow_dst))?;
    if !std::fs::metadata(&dst)
        .with_context(|| shown.display().to_string())?
        .is_dir()
    {
        bail!("{}: not a directory", shown.display());
    }
    let state = sync::open_state(&g.state_dir, &[&dst])?;
    // Under the destination's lock: a sync running now may be about to record a generation.
    let _lock = journal::Lock::acquire(&state, &dst)?;
    let mut home_opt = switch::Home::existing(&dst)?;
    if let Some(home) = &home_opt {
        jailsync_engine::generation::recover(home, Some(&state))?;
    }
    home_opt = home_opt.filter(|h| h.is_switchable());
    let (gens, removed_ids, freed) = if let Some(home) = &home_opt {
        let gens = switched_sizes(home, &dst)?;
        let cut = gens.len().saturating_sub(c.keep);
        let doomed: Vec<PathBuf> = gens[..cut].iter().map(|s| s.io.clone()).collect();
        let freed = usage::held_only_by(&doomed, &live_set(&dst)?)?;
        let ids: Vec<u64> = gens[..cut].iter().map(|s| s.id).collect();
        if !c.dry_run {
            generation::prune(home, c.keep)?;
        }
        (gens.len(), ids, freed)
    } else if let Some(store) = rollback::Store::find(&state, &dst)? {
        let list = rollback::list(&store)?;
        let cut = list.len().saturating_sub(c.keep);
        let doomed: Vec<PathBuf> = list[..cut].iter().map(|g| g.dir.clone()).collect();
        let freed = usage::held_only_by(&doomed, &live_set(&dst)?)?;
        let ids: Vec<u64> = list[..cut].iter().map(|g| g.id).collect();
        if !c.dry_run {
            rollback::prune_generations(&store, c.keep)?;
        }
        (list.len(), ids, freed)
    } else {
        (0, Vec::new(), Usage::default())
    };
    let kept = gens - removed_ids.len();
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

/// A destination whose parent does not exist is most likely a typo: refused unless
/// `--mkpath`, before anything (state included) is made.
pub fn check_parent(dst: &Path, mkpath: bool) -> Result<()> {
    if mkpath || std::fs::symlink_metadata(dst).is_ok() {
        return Ok(());
    }
    let abs = std::path::absolute(dst).with_context(|| dst.display().to_string())?;
    if let Some(parent) = abs.parent() {
        if !parent.is_dir() {
            bail!(
                "{}: its parent {} does not exist (pass --mkpath to create it)",
                dst.display(),
                parent.display()
            );
        }
    }
    Ok(())
}

/// A destination with more entries than this is guarded against a mass deletion by default.
/// Below it a plan deleting most of the tree is ordinary (a small tree rebuilt, as randomized
/// tests do), and a wrong pair costs little; the mistake this catches empties real trees
/// (38,279 entries in the report that asked for it).
pub const MASS_DELETE_MIN: u64 = 256;

/// Refuses, before anything is changed, a run that would delete more than it is allowed to:
/// with `--max-delete N`, more than N entries in all; without it (and without `--force`), more
/// than half of any destination's entries once it has more than [`MASS_DELETE_MIN`]. That is
/// what a wrong pair looks like, not an upgrade: `sync JAIL/usr/pkg ROOT/usr` (rsync's "into"
/// habit), a JAIL and ROOT swapped, a jail that lost most of its packages. A dry run is shown
/// in full, with a warning that the real run would be refused.
pub fn check_deletes(trees: &[sync::Tree], a: &crate::sync_cmd::SyncArgs) -> Result<()> {
    if a.max_delete.is_some() {
        return check_max_delete(trees, a.max_delete);
    }
    if a.force {
        return Ok(());
    }
    for t in trees {
        // The root is never deleted, and is not one of the tree's entries here.
        let entries = t.dst.len().saturating_sub(1) as u64;
        let n = jailsync_engine::plan::Counts::of(&t.plan).deleted;
        if entries <= MASS_DELETE_MIN || n * 2 <= entries {
            continue;
        }
        let why = format!(
            "{}: would delete {n} of its {entries} entries, more than half: most likely not the \
             source or destination meant (see `-n -i`); pass --max-delete {n} or --force if it is",
            t.dst_path.display()
        );
        if a.dry_run {
            eprintln!("jailsync: warning: {why}; a run without -n would be refused");
        } else {
            bail!("{why}; nothing was changed");
        }
    }
    Ok(())
}

/// `--max-delete N`: refuses, before anything is changed, a run that would delete more than
/// N entries (each entry below a removed directory counts; a type change does not).
pub fn check_max_delete(trees: &[sync::Tree], max: Option<u64>) -> Result<()> {
    let Some(max) = max else { return Ok(()) };
    let n: u64 = trees
        .iter()
        .map(|t| jailsync_engine::plan::Counts::of(&t.plan).deleted)
        .sum();
    if n > max {
        let shown: Vec<String> = trees
            .iter()
            .map(|t| t.dst_path.display().to_string())
            .collect();
        bail!(
            "{}: would delete {n} entr{}, more than --max-delete {max}; nothing was changed",
            shown.join(", "),
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}
