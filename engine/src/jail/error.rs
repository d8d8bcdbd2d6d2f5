//! Jail errors. Each names the path (and, for the `mountpoints` file, the line) it concerns,
//! so the CLI can print it as is.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the message and deliberately not a `source()`: a reporter that
    // prints the chain (anyhow's `{:#}`) would otherwise print it twice.
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },
    /// A line of the `mountpoints` file is malformed or asks for something unsafe.
    #[error("{file}:{line}: {why}")]
    Line {
        file: PathBuf,
        line: usize,
        why: String,
    },
    /// The request is refused before anything is changed (jail is `/`, file exists, …).
    #[error("{path}: {why}")]
    Refused { path: PathBuf, why: String },
    /// `/proc/self/mountinfo` could not be understood.
    #[error("/proc/self/mountinfo:{line}: {why}")]
    MountTable { line: usize, why: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, cause: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            cause,
        }
    }

    pub fn refused(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Error::Refused {
            path: path.into(),
            why: why.into(),
        }
    }

    /// True when the request itself is wrong (bad input, unsafe, conflicting state), as opposed
    /// to the system failing while carrying it out. The CLI maps the first kind to exit 2.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Line { .. } | Error::Refused { .. })
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoAt<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, Error>;
}

impl<T> IoAt<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, Error> {
        self.map_err(|e| Error::io(path, e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
