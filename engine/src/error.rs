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
    #[error("{path}: locked by pid {pid} since {since}")]
    Locked {
        path: PathBuf,
        pid: u32,
        since: String,
    },
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
