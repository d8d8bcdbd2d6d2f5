//! `jailsync jail …`: the seed's mkjail/umkjail, done right.
//!
//! Exit codes: 0 done; 1 some mount point failed (the others were handled), or for `status`,
//! the jail is not fully mounted; 2 refused (nothing changed) or fatal.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use jailsync_engine::jail::{self, Action, InitOptions, Jail, Outcome, State};
use serde_json::{json, Value};

use crate::args::{exit, Global};
use crate::output::json_path;

/// `jail init --layout`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Layout {
    Pkgsrc,
    Debian,
    Bare,
}

#[derive(Subcommand, Debug)]
pub enum JailCmd {
    /// Create the working directories, the `.jail` marker and the `mountpoints` file.
    Init {
        /// The jail directory (made if missing).
        jail: PathBuf,
        /// First line of `.jail`, shown in front of the prompt inside the jail.
        #[arg(long, default_value = jail::DEFAULT_MARKER)]
        marker: String,
        /// Copy this mountpoints file (default: pkgsrc's mkjail list, as far as this host has it).
        #[arg(long, value_name = "FILE")]
        mountpoints: Option<PathBuf>,
        /// Overwrite an existing `.jail` and `mountpoints`.
        #[arg(long)]
        force: bool,
        /// Look host paths up below DIR instead of `/`.
        #[arg(long, value_name = "DIR", default_value = "/")]
        host_root: PathBuf,
        /// The package database directory to create in the jail (relative; `var/db/pkg` for
        /// the 2005 layout).
        #[arg(long, value_name = "REL", default_value = "usr/pkg/pkgdb")]
        pkg_dbdir: PathBuf,
        /// What the jail will hold: `pkgsrc` (the host's system mounted read-only, pkgsrc's
        /// directories), `debian` (a system of its own, e.g. debootstrap: only proc, dev and
        /// tmp mounted, no pkgsrc directories), `bare` (the marker and an empty mountpoints).
        #[arg(long, value_enum, default_value_t = Layout::Pkgsrc)]
        layout: Layout,
    },
    /// Mount each line of JAIL/mountpoints (read-only unless `rw`), unless already mounted.
    Mount {
        /// The jail directory (made by `jail init`).
        jail: PathBuf,
        /// Mount host paths from below DIR instead of `/`.
        #[arg(long, value_name = "DIR", default_value = "/")]
        host_root: PathBuf,
    },
    /// Unmount everything mounted below JAIL, deepest first. Never removes files.
    Umount {
        /// The jail directory (made by `jail init`).
        jail: PathBuf,
        /// Detach mounts that stay busy (they go away when their last user does).
        #[arg(long)]
        force: bool,
    },
    /// Delete the jail directory, and forget what the state dir recorded for trees in it;
    /// refused while anything is mounted below it. Asks first on a terminal.
    Remove {
        /// The jail directory (it must have the `.jail` marker).
        jail: PathBuf,
        /// Do not ask, even on a terminal.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Show each mount point's state; exit 1 unless all are mounted as listed.
    Status {
        /// The jail directory (made by `jail init`).
        jail: PathBuf,
        /// Compare with host paths below DIR instead of `/`.
        #[arg(long, value_name = "DIR", default_value = "/")]
        host_root: PathBuf,
    },
    /// Mount if needed, chroot, and run a shell (or CMD) in a clean environment: TERM, HOME,
    /// the jail's PATH, JAIL, and PS1 with the jail's marker in front.
    Enter {
        /// The jail directory (made by `jail init`).
        jail: PathBuf,
        /// Mount host paths from below DIR instead of `/`.
        #[arg(long, value_name = "DIR", default_value = "/")]
        host_root: PathBuf,
        /// Pass this variable of the caller's environment in as well (repeatable).
        #[arg(long, value_name = "VAR")]
        keep_env: Vec<OsString>,
        /// Command and arguments to run instead of a shell (after `--`).
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
}

/// The jail a command names, with the fix where it is not one: a missing directory, or one
/// without the `.jail` marker and `mountpoints` file `jail init` writes.
fn open_jail(path: &Path) -> anyhow::Result<Jail> {
    if std::fs::symlink_metadata(path).is_err() {
        anyhow::bail!(
            "{}: no such jail (make one with `jailsync jail init {}`)",
            path.display(),
            path.display()
        );
    }
    let j = Jail::open(path)?;
    if std::fs::symlink_metadata(j.mountpoints_file()).is_err() {
        anyhow::bail!(
            "{}: not a jail: it has no mountpoints file (make one with `jailsync jail init {}`, \
             or --force over an existing one)",
            path.display(),
            path.display()
        );
    }
    Ok(j)
}

/// Mounting is root's: one line saying so, instead of one failure per mount point.
fn needs_root(what: &str) -> anyhow::Result<()> {
    if !jailsync_engine::fsx::geteuid_is_root() {
        anyhow::bail!("`jail {what}` needs root (it mounts and unmounts): run it as root");
    }
    Ok(())
}

pub fn run(cmd: JailCmd, global: &Global) -> anyhow::Result<u8> {
    match &cmd {
        JailCmd::Mount { .. } => needs_root("mount")?,
        JailCmd::Umount { .. } => needs_root("umount")?,
        JailCmd::Enter { .. } => needs_root("enter")?,
        _ => {}
    }
    match cmd {
        JailCmd::Init {
            jail,
            marker,
            mountpoints,
            force,
            host_root,
            pkg_dbdir,
            layout,
        } => {
            let layout = match layout {
                Layout::Pkgsrc => jail::InitLayout::Pkgsrc,
                Layout::Debian => jail::InitLayout::Debian,
                Layout::Bare => jail::InitLayout::Bare,
            };
            let opts = InitOptions {
                marker: &marker,
                mountpoints: mountpoints.as_deref(),
                force,
                host_root: &host_root,
                pkg_dbdir: &pkg_dbdir,
                layout,
            };
            init(&jail, &opts, global)
        }
        JailCmd::Mount { jail, host_root } => {
            let jail = open_jail(&jail)?;
            let done = jail::mount(&jail, &host_root)?;
            report_mount(&done, global, &mut std::io::stdout().lock(), true)
        }
        JailCmd::Umount { jail, force } => umount(&jail, force, global),
        JailCmd::Remove { jail, yes } => remove(&jail, yes, global),
        JailCmd::Status { jail, host_root } => {
            status(&jail, &host_root, global).or_else(|e| {
                match e.downcast_ref::<std::io::Error>() {
                    // `status | head` closing the pipe early is not a failure.
                    Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
                    _ => Err(e),
                }
            })
        }
        JailCmd::Enter {
            jail,
            host_root,
            keep_env,
            cmd,
        } => {
            let jail = open_jail(&jail)?;
            let done = jail::mount(&jail, &host_root)?;
            // Stdout belongs to the command; the mount report goes to stderr, and only
            // when asked for or when something failed.
            let code = report_mount(&done, global, &mut std::io::stderr().lock(), false)?;
            if code != exit::OK {
                anyhow::bail!(
                    "{}: not entering a partly mounted jail",
                    jail.root.display()
                );
            }
            Err(jail::enter(&jail, &cmd, &keep_env).into())
        }
    }
}

fn jp(p: &Path) -> Value {
    json_path(p.as_os_str().as_bytes())
}

/// The path as the `mountpoints` file spells it, for human output.
fn rel(p: &Path) -> String {
    p.display().to_string()
}

fn mode(read_only: bool) -> &'static str {
    if read_only {
        "ro"
    } else {
        "rw"
    }
}

/// `jail remove`: asks on a terminal (unless `yes`), removes, forgets the trees' records.
fn remove(path: &Path, yes: bool, global: &Global) -> anyhow::Result<u8> {
    use std::io::IsTerminal;
    let j = Jail::open(path)?;
    if !yes && std::io::stdin().is_terminal() {
        eprint!(
            "jailsync: remove the jail {} and everything in it? [y/N] ",
            j.root.display()
        );
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("jailsync: {}: not removed", j.root.display());
            return Ok(exit::FATAL);
        }
    }
    jail::remove(&j)?;
    let forgotten = forget_trees(&global.state_dir, &j.root);
    if !global.quiet && !global.json {
        eprintln!("removed {}", j.root.display());
        if forgotten > 0 {
            eprintln!("forgot the state of {forgotten} synced tree(s) that were in it");
        }
    }
    Ok(exit::OK)
}

/// Removes the state dir's records of destinations inside `root` (caches, locks, rollback
/// records of trees that are gone); how many.
fn forget_trees(state_dir: &Path, root: &Path) -> usize {
    use std::os::unix::ffi::OsStringExt;
    let Ok(rd) = std::fs::read_dir(state_dir.join("trees")) else {
        return 0;
    };
    let mut n = 0;
    for d in rd.flatten() {
        let Ok(p) = std::fs::read(d.path().join("path")) else {
            continue;
        };
        let p = PathBuf::from(OsString::from_vec(p));
        if p.starts_with(root) && std::fs::remove_dir_all(d.path()).is_ok() {
            n += 1;
        }
    }
    n
}

fn init(path: &Path, opts: &InitOptions, global: &Global) -> anyhow::Result<u8> {
    let done = jail::init(path, opts)?;
    if global.json {
        let v = json!({
            "type": "init",
            "jail": jp(&done.root),
            "created": done.created.iter().map(|p| jp(p)).collect::<Vec<_>>(),
            "written": done.written.iter().map(|p| jp(p)).collect::<Vec<_>>(),
            "left_out": done.left_out,
        });
        println!("{v}");
    } else if !global.quiet {
        println!(
            "{}: created {} director{}, wrote {}",
            done.root.display(),
            done.created.len(),
            if done.created.len() == 1 { "y" } else { "ies" },
            done.written
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" and ")
        );
        if !done.left_out.is_empty() {
            println!(
                "left out mount points this host lacks: {}",
                done.left_out.join(" ")
            );
        }
        if global.verbose > 0 {
            for c in &done.created {
                println!("created {}", c.display());
            }
        }
    }
    Ok(exit::OK)
}

/// Prints what `mount` did; returns 1 if a line failed. `chatty` prints every change
/// (not only failures) without `-v`.
fn report_mount(
    done: &[jail::Done],
    global: &Global,
    out: &mut impl Write,
    chatty: bool,
) -> anyhow::Result<u8> {
    let mut failed = 0;
    let mut changed = 0;
    for d in done {
        let path = rel(&d.entry.path);
        match &d.action {
            Action::Failed(e) => {
                failed += 1;
                eprintln!("jailsync: error: {e}");
            }
            Action::Skipped if !global.quiet && !global.json => {
                eprintln!(
                    "jailsync: warning: {}: not on the host, skipped",
                    d.host.display()
                );
            }
            Action::Mounted { .. } | Action::Remounted { .. } | Action::Linked => changed += 1,
            _ => {}
        }
        if global.json {
            let mut v = json!({
                "type": "mount",
                "path": jp(&d.entry.path),
                "target": jp(&d.target),
                "host": jp(&d.host),
                "action": d.action.name(),
            });
            match &d.action {
                Action::Mounted { read_only }
                | Action::AlreadyMounted { read_only }
                | Action::Remounted { read_only } => v["mode"] = mode(*read_only).into(),
                Action::Failed(e) => v["error"] = e.to_string().into(),
                _ => {}
            }
            writeln!(out, "{v}")?;
            continue;
        }
        let show = match &d.action {
            Action::Failed(_) | Action::Skipped => false,
            Action::AlreadyMounted { .. } | Action::AlreadyLinked => global.verbose > 0,
            _ => chatty || global.verbose > 0,
        };
        if show && !global.quiet {
            let detail = match &d.action {
                Action::Mounted { read_only }
                | Action::AlreadyMounted { read_only }
                | Action::Remounted { read_only } => {
                    format!("{} <- {}", mode(*read_only), d.host.display())
                }
                _ => format!("-> {}", d.target.display()),
            };
            writeln!(out, "{:<16} {path} {detail}", d.action.name())?;
        }
    }
    if global.json {
        let v = json!({
            "type": "summary",
            "lines": done.len(),
            "changed": changed,
            "skipped": done.iter().filter(|d| matches!(d.action, Action::Skipped)).count(),
            "failed": failed,
        });
        writeln!(out, "{v}")?;
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}

fn umount(path: &Path, force: bool, global: &Global) -> anyhow::Result<u8> {
    let jail = Jail::open(path)?;
    let done = jail::umount(&jail, force)?;
    let mut failed = 0;
    for u in &done {
        let (name, err) = match &u.outcome {
            Outcome::Unmounted => ("unmounted", None),
            Outcome::Detached => ("detached", None),
            Outcome::Failed(e) => {
                failed += 1;
                ("failed", Some(e.to_string()))
            }
        };
        if global.json {
            let mut v = json!({"type": "umount", "target": jp(&u.target), "action": name});
            if let Some(e) = &err {
                v["error"] = e.as_str().into();
            }
            println!("{v}");
        } else if let Some(e) = err {
            eprintln!("jailsync: error: {e}");
        } else if !global.quiet {
            println!("{name:<16} {}", u.target.display());
        }
    }
    if global.json {
        let v = json!({"type": "summary", "unmounted": done.len() - failed, "failed": failed});
        println!("{v}");
    }
    Ok(if failed > 0 { exit::PARTIAL } else { exit::OK })
}

fn status(path: &Path, host_root: &Path, global: &Global) -> anyhow::Result<u8> {
    let jail = Jail::open(path)?;
    let st = jail::status(&jail, host_root)
        .with_context(|| format!("status of {}", jail.root.display()))?;
    let mut out = std::io::stdout().lock();
    for p in &st.entries {
        // A host symlink is recreated, not mounted: it has no mode to want.
        let want = match p.host_kind {
            jail::Host::Link(_) => None,
            _ => Some(mode(!p.entry.read_write)),
        };
        if global.json {
            let mut v = json!({
                "type": "mountpoint",
                "path": jp(&p.entry.path),
                "line": p.entry.line,
                "target": jp(&p.target),
                "host": jp(&p.host),
                "state": p.state.name(),
                "want": want,
                "mode": p.state.read_only().map(mode),
            });
            if p.stacked > 0 {
                v["stacked"] = p.stacked.into();
            }
            match &p.state {
                State::Foreign { source, .. } => v["source"] = source.as_str().into(),
                State::Occupied { why } => v["why"] = why.as_str().into(),
                _ => {}
            }
            writeln!(out, "{v}")?;
        } else {
            let have = p.state.read_only().map(mode).unwrap_or("-");
            let detail = match &p.state {
                State::Foreign { source, .. } => {
                    format!(" (from {source}, want {})", p.host.display())
                }
                State::Stale { .. } => format!(" ({} is gone)", p.host.display()),
                State::Occupied { why } => format!(" ({} {why})", p.target.display()),
                State::Mounted { read_only } if *read_only == p.entry.read_write => {
                    format!(" (want {})", mode(!p.entry.read_write))
                }
                _ => String::new(),
            };
            let detail = match p.stacked {
                0 => detail,
                n => format!("{detail} (on top of {n} more)"),
            };
            writeln!(
                out,
                "{:<12} {have:<2} {}{detail}",
                p.state.name(),
                rel(&p.entry.path)
            )?;
        }
    }
    for u in &st.unlisted {
        if global.json {
            let v = json!({
                "type": "unlisted",
                "target": jp(&u.target),
                "source": u.source,
                "mode": mode(u.read_only),
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(
                out,
                "{:<12} {:<2} {} (from {}, not in mountpoints)",
                "unlisted",
                mode(u.read_only),
                u.target.display(),
                u.source
            )?;
        }
    }
    let complete = st.complete();
    if global.json {
        let count = |name: &str| st.entries.iter().filter(|p| p.state.name() == name).count();
        let v = json!({
            "type": "summary",
            "jail": jp(&jail.root),
            "complete": complete,
            "mounted": count("mounted"),
            "linked": count("linked"),
            "not_mounted": count("not-mounted") + count("not-linked"),
            "foreign": count("foreign"),
            "stale": count("stale"),
            "occupied": count("occupied"),
            "host_missing": count("host-missing"),
            "unlisted": st.unlisted.len(),
        });
        writeln!(out, "{v}")?;
    }
    Ok(if complete { exit::OK } else { exit::PARTIAL })
}
