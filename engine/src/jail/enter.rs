//! `jail enter`: chroot into a mounted jail and run a shell or a command in it.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::error::Error;
use super::{os, Jail};

/// The prompt used when the caller has none exported (most shells do not export `PS1`).
const DEFAULT_PS1: &str = "\\u@\\h:\\w\\$ ";

/// The jail's `PATH`: pkgsrc's prefix first, then the system's.
pub const JAIL_PATH: &str =
    "/usr/pkg/sbin:/usr/pkg/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the command inside gets of this process's environment, besides `keep`.
const KEPT: &[&str] = &["TERM", "HOME"];

/// Replaces this process with `argv` (or a shell) run inside the jail; returns only on
/// failure. The exit status is the command's own, since no process of ours remains.
///
/// The environment starts clean, as `env -i` (a host's variables name host paths, libraries
/// and tools the jail must not pick up): `TERM`, `HOME`, the variables named in `keep`,
/// `PATH` = [`JAIL_PATH`], `JAIL=<jail path>` and `PS1=<marker>::<PS1>`. `PROMPT_COMMAND`
/// puts the marker back in front of a `PS1` that a shell's rc file set, so an interactive
/// bash says where it is however it is configured.
pub fn enter(jail: &Jail, argv: &[OsString], keep: &[OsString]) -> Error {
    let marker = match jail.marker() {
        Ok(m) => m,
        Err(e) => return e,
    };
    let ps1 = std::env::var_os("PS1").unwrap_or_else(|| DEFAULT_PS1.into());
    let mut prompt = OsString::from(format!("{marker}::"));
    prompt.push(ps1);

    let (program, args) = match argv.split_first() {
        Some((p, rest)) => (p.clone(), rest),
        None => (shell(jail), &[][..]),
    };
    let mut cmd = Command::new(&program);
    cmd.args(args).env_clear();
    for k in KEPT
        .iter()
        .map(OsStr::new)
        .chain(keep.iter().map(OsString::as_os_str))
    {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    cmd.env("PATH", JAIL_PATH)
        .env("JAIL", &jail.root)
        .env("PS1", prompt);
    // Shell code: only a marker that cannot be read as any.
    let plain = |c: char| c.is_ascii_alphanumeric() || "_.-+@".contains(c);
    if marker.chars().all(plain) {
        let again = format!("case \"$PS1\" in {marker}::*) ;; *) PS1=\"{marker}::$PS1\" ;; esac");
        cmd.env("PROMPT_COMMAND", again);
    }

    // Chroot here rather than in a pre_exec hook: nothing of ours runs after exec anyway,
    // and a PATH lookup done after the chroot finds the jail's programs, not the host's.
    if let Err(e) = os::chroot(&jail.root) {
        return Error::io(&jail.root, e);
    }
    let e = cmd.exec();
    Error::io(
        program,
        std::io::Error::new(e.kind(), format!("cannot run in the jail: {e}")),
    )
}

/// `$SHELL` if the jail has it, else `/bin/sh`.
fn shell(jail: &Jail) -> OsString {
    std::env::var_os("SHELL")
        .filter(|s| {
            let rel = std::path::Path::new(s).strip_prefix("/").ok();
            rel.is_some_and(|r| jail.root.join(r).exists())
        })
        .unwrap_or_else(|| OsStr::new("/bin/sh").to_owned())
}
