//! Generates package trees for jailsync's benchmarks.
//!
//!     gen-tree base --files N [--seed S] [--size-scale F] OUT
//!     gen-tree mutate --kind upgrade|security|noop [--seed S] FROM OUT
//!     gen-tree diff A B        # how B differs from A (reads both trees)

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use jailsync_benches::{diff_trees, gen_base, mutate, BaseOpts, MutateKind, Written};

const USAGE: &str = "usage:
  gen-tree base --files N [--seed S] [--size-scale F] OUT
  gen-tree mutate --kind upgrade|security|noop [--seed S] FROM OUT
  gen-tree diff A B";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-tree: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().ok_or(USAGE)?;
    if cmd == "-h" || cmd == "--help" {
        println!("{USAGE}");
        return Ok(());
    }
    let (mut files, mut seed, mut scale, mut kind) = (27_000usize, 1u64, 1.0f64, None);
    let mut pos: Vec<PathBuf> = Vec::new();
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--files" => {
                files = val("--files")?
                    .parse()
                    .map_err(|e| format!("--files: {e}"))?
            }
            "--seed" => seed = val("--seed")?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--size-scale" => {
                scale = val("--size-scale")?
                    .parse()
                    .map_err(|e| format!("--size-scale: {e}"))?
            }
            "--kind" => kind = Some(val("--kind")?.parse::<MutateKind>()?),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => pos.push(a.into()),
        }
    }
    let t = Instant::now();
    let report = |w: Written| {
        eprintln!(
            "gen-tree: {} files, {} symlinks, {} hard links, {} dirs, {:.1} MB in {:.2?}",
            w.files,
            w.symlinks,
            w.hardlinks,
            w.dirs,
            w.bytes as f64 / 1e6,
            t.elapsed()
        )
    };
    match (cmd.as_str(), pos.as_slice()) {
        ("base", [out]) => {
            let o = BaseOpts {
                files,
                seed,
                size_scale: scale,
            };
            report(gen_base(out, &o).map_err(|e| e.to_string())?);
        }
        ("mutate", [from, out]) => {
            let kind = kind.ok_or("mutate needs --kind")?;
            report(mutate(from, out, kind, seed).map_err(|e| e.to_string())?);
        }
        ("diff", [a, b]) => {
            let d = diff_trees(a, b).map_err(|e| e.to_string())?;
            let pct = |n: usize| 100.0 * n as f64 / d.entries.max(1) as f64;
            println!(
                "entries {} ({:.1} MB)  changed {} ({:.1}%)  metadata-only {} ({:.1}%)  removed {} ({:.1}%)  added {} ({:.1}%)",
                d.entries,
                d.bytes_a as f64 / 1e6,
                d.changed,
                pct(d.changed),
                d.meta_only,
                pct(d.meta_only),
                d.removed,
                pct(d.removed),
                d.added,
                pct(d.added)
            );
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}
