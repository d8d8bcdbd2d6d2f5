//! `jail enter`: chroot into a mounted jail and run a shell or a command in it.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::error::Error;
use super::{os, Jail};

/// The prompt used when the caller has none exported (most shells do not export `PS1`).
const DEFAULT_PS1: &str = "\\u@\\h:\\w\\$ ";

/// Replaces this process with `argv` (or a shell) run inside the jail; returns only on
/// failure. The exit status is the command's own, since no process of ours remains.
///
/// The environment gets `JAIL=<jail path>` and `PS1=<marker>::<PS1>`, so an interactive
/// shell says where it is.
pub fn enter(jail: &Jail, argv: &[OsString]) -> Error {
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
    cmd.args(args).env("JAIL", &jail.root).env("PS1", prompt);

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
