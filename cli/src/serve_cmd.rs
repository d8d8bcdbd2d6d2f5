//! `jailsync serve`: the remote end of `push`, speaking the push protocol on stdin/stdout
//! (started by `push` through ssh). Nothing else may write to stdout here.

use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use clap::Args;
use jailsync_engine::remote::serve::ServeEnv;
use jailsync_engine::remote::session::serve;

use crate::args::{exit, Global};

#[derive(Args, Debug)]
pub struct ServeCmd {
    /// Serve only trees that are DIR or lie below it (repeatable; compared by identity, not
    /// by spelling). Any other tree, or a `push --rollback` of a root whose last upgrade
    /// touched one, is refused before anything is read or written, naming the root and this
    /// list; and the state dir is pinned to this serve's own (`jailsync --state-dir DIR
    /// serve`, default /var/db/jailsync): a push naming another (`--remote-state-dir`) is
    /// refused. Each tree's home (`PARENT/.jailsync-NAME`) stays beside it as ever.
    #[arg(long, value_name = "DIR")]
    pub allow_root: Vec<PathBuf>,
}

pub fn run_serve(c: ServeCmd, g: &Global) -> Result<u8> {
    let mut r = io::stdin().lock();
    // Shared with the session's keepalive thread (each frame is written whole under a lock).
    let w = Box::new(BufWriter::with_capacity(1 << 16, io::stdout()));
    let env = ServeEnv {
        default_state_dir: g.state_dir.clone(),
        allow_roots: c.allow_root.clone(),
        // ssh going away sends SIGHUP: the session stops at its next safe point, before any
        // switch, and removes what it staged.
        stop: Some(crate::args::stop_on_signals()),
        rollback: {
            let allowed = c.allow_root.clone();
            Box::new(move |root, force, dry_run, state| {
                if let Err(e) = rollback_allowed(root, state, &allowed) {
                    return (exit::FATAL, format!("{e:#}"));
                }
                rollback(root, force, dry_run, state)
            })
        },
        // The same root-level record as `upgrade`'s (`history --root`, `rollback --root`).
        record_begin: Some(Box::new(|state_dir, root, source, trees| {
            let state =
                jailsync_engine::sync::open_state(state_dir, &[]).map_err(|e| e.to_string())?;
            // As `upgrade`: a switch a killed run left half made is finished (or undone)
            // first, each under its tree's lock, so the record names the generations that
            // exist before this push.
            for (_, d) in trees {
                if d.is_dir() {
                    let _lock = jailsync_engine::journal::Lock::acquire(&state, d)
                        .map_err(|e| e.to_string())?;
                    if let Some(home) =
                        jailsync_engine::switch::Home::existing(d).map_err(|e| e.to_string())?
                    {
                        jailsync_engine::generation::recover(&home, Some(&state))
                            .map_err(|e| e.to_string())?;
                    }
                }
            }
            let triples: Vec<(PathBuf, PathBuf, PathBuf)> = trees
                .iter()
                .map(|(rel, d)| (rel.clone(), PathBuf::new(), d.clone()))
                .collect();
            crate::roots::begin(&state, root, Path::new(source), &triples)
                .map_err(|e| format!("{e:#}"))
        })),
        cpu_seconds: Some(crate::push_cmd::own_cpu_seconds),
        record_end: Some(Box::new(|state_dir, root, id| {
            let state =
                jailsync_engine::sync::open_state(state_dir, &[]).map_err(|e| e.to_string())?;
            crate::roots::end(&state, root, id).map_err(|e| format!("{e:#}"))
        })),
    };
    match serve(&mut r, w, &env) {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            eprintln!("jailsync serve: {e}");
            Ok(exit::PARTIAL)
        }
    }
}

/// With `--allow-root`, a rollback of ROOT switches back the trees of its last upgrade or
/// push, which the root-level record names, not OPEN: each must be allowed too (an admin's
/// own `upgrade --root /` may have switched trees the key may not touch).
fn rollback_allowed(root: &Path, state_dir: &Path, allowed: &[PathBuf]) -> Result<()> {
    use jailsync_engine::paths::{self, Follow, Loc};
    if allowed.is_empty() {
        return Ok(());
    }
    let state = jailsync_engine::sync::open_state(state_dir, &[])?;
    let root_c = std::fs::canonicalize(root)?;
    let Some(last) = crate::roots::load(&state, &root_c)?
        .into_iter()
        .rev()
        .find(|u| !u.rolled_back)
    else {
        return Ok(()); // `rollback --root` says there is nothing to roll back
    };
    let locs = allowed
        .iter()
        .map(|a| Loc::of(&paths::resolve_dir(a, "allowed root", Follow::Owned)?))
        .collect::<jailsync_engine::Result<Vec<_>>>()?;
    for t in &last.trees {
        if !locs
            .iter()
            .any(|a| Loc::of(&t.dst).is_ok_and(|l| l.within(a)))
        {
            let list: Vec<String> = allowed.iter().map(|p| p.display().to_string()).collect();
            anyhow::bail!(
                "root {}: its last upgrade (id {}) switched {}, not inside the roots this host \
                 serves (serve --allow-root {}): refused, nothing was rolled back",
                root.display(),
                last.id,
                t.dst.display(),
                list.join(", ")
            );
        }
    }
    Ok(())
}

/// `push --rollback` on this host: `jailsync rollback --root ROOT`, as its own process so its
/// output cannot reach the protocol stream. The root-level record says which push (or
/// upgrade) to undo, undoes every tree of it in reverse order, and is marked rolled back, so
/// `history --root` tells the truth and the next `rollback --root` goes one further back.
fn rollback(root: &Path, force: bool, dry_run: bool, state: &Path) -> (u8, String) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return (exit::FATAL, format!("cannot find this program: {e}")),
    };
    let mut c = Command::new(exe);
    c.arg("--state-dir")
        .arg(state)
        .arg("rollback")
        .arg("--root")
        .arg(root);
    if force {
        c.arg("--force");
    }
    if dry_run {
        c.arg("--dry-run");
    }
    match c.stdin(std::process::Stdio::null()).output() {
        Ok(o) => {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            (o.status.code().map_or(exit::FATAL, |c| c as u8), text)
        }
        Err(e) => (exit::FATAL, format!("cannot run rollback: {e}")),
    }
}
