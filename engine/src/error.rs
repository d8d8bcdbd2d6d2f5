//! Typed errors. Every variant names the path it concerns; the CLI adds nothing but context.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message and deliberately not a `source()`: printing the chain
    // (anyhow's `{:#}`) would repeat it.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    /// A path the user gave cannot be used as asked.
    #[error("{path}: {why}")]
    BadInput { path: PathBuf, why: String },
    #[error("{path}:{line}: {why}")]
    Manifest {
        path: PathBuf,
        line: usize,
        why: String,
    },
    /// A signal asked the run to stop; it stopped at a safe point (see the message).
    #[error("{path}: stopped by signal {signal} {when}")]
    Stopped {
        path: PathBuf,
        signal: i32,
        when: String,
    },
    /// Rollback is on and what the sync would change cannot be kept for it: nothing is done.
    #[error(
        "{path}: {why}; nothing was changed (pass --no-rollback to sync without keeping the \
         old versions)"
    )]
    NoRollback { path: PathBuf, why: String },
    /// `path` cannot be locked: `held` (the same path, or one above or below it) is locked by
    /// another run.
    #[error("{path}: {}locked by pid {pid} since {since}", overlap_note(.path, .held))]
    Locked {
        path: PathBuf,
        held: PathBuf,
        pid: u32,
        since: String,
    },
}

fn overlap_note(path: &std::path::Path, held: &std::path::Path) -> String {
    if path == held {
        String::new()
    } else {
        format!("overlaps {}, ", held.display())
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause: source,
        }
    }

    pub fn bad(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Error::BadInput {
            path: path.into(),
            why: why.into(),
        }
    }

    /// The same error about another path (`f` maps the one it names).
    pub fn map_path(self, f: impl FnOnce(PathBuf) -> PathBuf) -> Self {
        match self {
            Error::Io { path, cause } => Error::Io {
                path: f(path),
                cause,
            },
            Error::BadInput { path, why } => Error::BadInput { path: f(path), why },
            Error::Manifest { path, line, why } => Error::Manifest {
                path: f(path),
                line,
                why,
            },
            Error::NoRollback { path, why } => Error::NoRollback { path: f(path), why },
            Error::Stopped { path, signal, when } => Error::Stopped {
                path: f(path),
                signal,
                when,
            },
            Error::Locked {
                path,
                pid,
                since,
                held,
            } => Error::Locked {
                path: f(path),
                pid,
                since,
                held,
            },
        }
    }
}

/// Attaches a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, Error>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, Error> {
        self.map_err(|e| Error::io(path, e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
