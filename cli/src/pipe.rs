//! A closed stdout (`jailsync verify ... | head`) ends the program quietly, for every command.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE: `?` carries it up as
//! an error and `println!` panics. Both are caught here and turned into what a shell expects
//! of `head`'s writer: death by SIGPIPE, which shells do not report. SIGPIPE is not simply
//! restored to its default at start: a sync writes its itemized lines after switching, and a
//! signal must never stop it at an arbitrary point; here it is raised only once the command
//! has returned (or the panicking print has nothing left to do).

use std::io;

/// Whether `e` (or one of its causes) is a write to a closed pipe.
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return io.kind() == io::ErrorKind::BrokenPipe;
        }
        // Engine errors carry their io cause in the message, not as a source.
        matches!(
            c.downcast_ref::<jailsync_engine::Error>(),
            Some(jailsync_engine::Error::Io { cause, .. }) if cause.kind() == io::ErrorKind::BrokenPipe
        )
    })
}

/// Dies of SIGPIPE, as a C program writing to a closed pipe would; 141 (128 + 13) if that
/// somehow does not kill us.
pub fn end_quietly() -> ! {
    // SAFETY: restoring the default disposition and raising a signal at ourselves; no
    // handler runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// `println!` on a closed stdout panics with "failed printing to stdout: Broken pipe": that
/// one panic ends quietly too; every other keeps the default report.
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            end_quietly();
        }
        default(info)
    }));
}
