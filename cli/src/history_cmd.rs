//! `history`: the rollback generations of a destination (with the packages each run changed,
//! and with `-i` its files), or with `--root` the upgrades of a live root.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use jailsync_engine::history::{self, GenReport, History};

use crate::args::{exit, Global};
use crate::output::{self, size_json, size_text};

#[derive(Args, Debug)]
pub struct HistoryCmd {
    /// The destination whose rollback generations to list.
    #[arg(required_unless_present = "root", conflicts_with = "root")]
    pub dst: Option<PathBuf>,
    /// List the upgrades of this live root instead (one line per upgrade, all its trees).
    #[arg(long, value_name = "ROOT")]
    pub root: Option<PathBuf>,
    /// Show only generation N (what the run that made it changed).
    #[arg(long, value_name = "N", conflicts_with = "root")]
    pub gen: Option<u64>,
    /// Also print what each generation's run changed, one rsync-style line per entry on stdout
    /// (`*deleting` for removals): the generation's tree as it was live against the tree that
    /// replaced it (the next generation, or the live tree). See "History" in jailsync(1).
    #[arg(short, long, conflicts_with = "root")]
    pub itemize: bool,
}

pub fn run_history(c: HistoryCmd, g: &Global) -> Result<u8> {
    let Some(dst) = &c.dst else {
        return crate::roots::history(c.root.as_deref().expect("clap: dst or root"), g);
    };
    let h = history::history(dst, &g.state_dir)?;
    if let Some(n) = c.gen {
        if !h.gens.iter().any(|r| r.gen.id == n) {
            let gone = h.removed_through.is_some_and(|t| n <= t);
            bail!(
                "{}: no generation {n}{} (see `jailsync history {}`)",
                h.dst.display(),
                if gone {
                    ": it was removed (pruned, or undone by a rollback), and what its run changed with it"
                } else {
                    ""
                },
                dst.display()
            );
        }
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    if let (Some(n), None) = (h.removed_through, c.gen) {
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
    let mut errors = 0;
    for r in h
        .gens
        .iter()
        .rev()
        .filter(|r| c.gen.is_none_or(|n| n == r.gen.id))
    {
        errors += print_gen(&mut out, &h, r, g)?;
        if c.itemize {
            errors += print_files(&mut out, &h, r, g)?;
        }
    }
    out.flush()?;
    Ok(if errors > 0 { exit::PARTIAL } else { exit::OK })
}

/// One generation's line, and the packages its run changed. Returns the errors reported.
fn print_gen(out: &mut impl Write, h: &History, r: &GenReport, g: &Global) -> Result<usize> {
    let GenReport { gen, usage, .. } = r;
    let when = jailsync_engine::journal::format_time(gen.time);
    let packages = match &r.packages {
        Ok(p) => p.as_ref(),
        Err(e) => {
            eprintln!(
                "jailsync: {}: generation {}: packages not named: {e}",
                h.dst.display(),
                gen.id
            );
            None
        }
    };
    let failed = usize::from(r.packages.is_err());
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
            "packages": match &r.packages {
                Ok(p) => p.as_ref().map(|p| output::packages_json(p, &gen.tree)),
                Err(e) => Some(serde_json::json!({"error": e.to_string()})),
            },
        });
        writeln!(out, "{v}")?;
        return Ok(failed);
    }
    writeln!(
        out,
        "{:>6}  {when}  {:>7} changes  {}  from {}  (old tree at {})",
        gen.id,
        gen.changes,
        size_text(*usage),
        gen.source,
        gen.tree.display()
    )?;
    if let Some(p) = packages {
        writeln!(out, "        {}", output::packages_line(p))?;
    }
    Ok(failed)
}

/// The itemized lines of one generation's run (JSON `change` objects with `--json`, each
/// after its generation's object). Returns the entries that could not be read.
fn print_files(out: &mut impl Write, h: &History, r: &GenReport, g: &Global) -> Result<usize> {
    let d = history::gen_files(&h.dst, &g.state_dir, r.gen.id)?;
    output::print_changes(out, &d.plan, &d.after, &d.before, b"", g.json)?;
    for (p, e) in &d.errors {
        output::report_error(out, g, &p.display().to_string(), "history", e)?;
    }
    Ok(d.errors.len())
}
