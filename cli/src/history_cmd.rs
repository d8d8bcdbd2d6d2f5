//! `history`: the rollback generations of a destination, or with `--root` the upgrades of a
//! live root.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use jailsync_engine::history;

use crate::args::{exit, Global};
use crate::output::{size_json, size_text};

#[derive(Args, Debug)]
pub struct HistoryCmd {
    /// The destination whose rollback generations to list.
    #[arg(required_unless_present = "root", conflicts_with = "root")]
    pub dst: Option<PathBuf>,
    /// List the upgrades of this live root instead (one line per upgrade, all its trees).
    #[arg(long, value_name = "ROOT")]
    pub root: Option<PathBuf>,
}

pub fn run_history(c: HistoryCmd, g: &Global) -> Result<u8> {
    let Some(dst) = &c.dst else {
        return crate::roots::history(c.root.as_deref().expect("clap: dst or root"), g);
    };
    let h = history::history(dst, &g.state_dir)?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if let Some(n) = h.removed_through {
        if g.json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"type": "removed", "through": n})
            )?;
        } else if !g.quiet {
            eprintln!(
                "{}: generations up to {n} not listed were removed (pruned, or undone by a rollback): they cannot be rolled back to",
                h.dst.display()
            );
        }
    }
    if h.gens.is_empty() {
        if !g.quiet && !g.json {
            eprintln!("{}: nothing to roll back", h.dst.display());
        }
        return Ok(exit::OK);
    }
    for history::GenReport { gen, usage, .. } in h.gens.iter().rev() {
        let when = jailsync_engine::journal::format_time(gen.time);
        if g.json {
            let v = serde_json::json!({
                "type": "generation",
                "id": gen.id,
                "time": when,
                "changes": gen.changes,
                "source": gen.source,
                "method": gen.method,
                "tree": gen.tree.display().to_string(),
                "size": size_json(*usage),
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:>6}  {when}  {:>7} changes  {}  from {}  (old tree at {})",
                gen.id,
                gen.changes,
                size_text(*usage),
                gen.source,
                gen.tree.display()
            )?;
        }
    }
    Ok(exit::OK)
}
