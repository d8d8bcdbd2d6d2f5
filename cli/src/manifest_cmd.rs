//! `manifest`: describe a tree (blake3 per file, full metadata) for `verify`.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use jailsync_engine::entry::display_path;
use jailsync_engine::manifest;
use jailsync_engine::scan::Excludes;
use jailsync_engine::sync::{self, Pools, SyncOpts};

use crate::args::{exit, Global};
use crate::output::progress;

#[derive(Args, Debug)]
pub struct ManifestCmd {
    /// The tree to describe.
    pub tree: PathBuf,
    /// Where to write it (default: stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Ignore cached hashes.
    #[arg(short, long)]
    pub checksum: bool,
    /// Leave paths matching GLOB out (not listed); repeatable, as `sync --exclude`.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

pub fn run_manifest(c: ManifestCmd, g: &Global) -> Result<u8> {
    let opts = SyncOpts {
        excludes: Excludes::new(&c.exclude).context("bad --exclude pattern")?,
        checksum: c.checksum,
        ..SyncOpts::default()
    };
    let pools = Pools::new(0);
    let prog = progress(g);
    // The stat cache is keyed by the canonical path, whatever the spelling.
    let tree = std::fs::canonicalize(&c.tree).with_context(|| c.tree.display().to_string())?;
    let state = sync::open_state(&g.state_dir, &[&tree]).ok();
    let (m, errors) = sync::scan_and_hash(&tree, state.as_ref(), &opts, &pools, &*prog)?;
    for (p, e) in &errors {
        eprintln!("jailsync: {}: {e}", p.display());
    }
    match &c.output {
        Some(p) => manifest::write_file_durable(p, &m, false)?,
        None => {
            let stdout = io::stdout();
            let mut l = io::BufWriter::with_capacity(1 << 16, stdout.lock());
            manifest::write_to(&mut l, m.stamp, &m.entries, false)?;
            l.flush()?;
        }
    }
    if !g.quiet && !g.json {
        if let Some(p) = &c.output {
            eprintln!(
                "{}: {} entries written to {}",
                display_path(c.tree.as_os_str().as_encoded_bytes()),
                m.entries.len(),
                p.display()
            );
        }
    }
    Ok(if errors.is_empty() {
        exit::OK
    } else {
        exit::PARTIAL
    })
}
