//! Atomic whole-file writes: the one way the engine replaces a small file of its own.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::open::create_excl_at;
use super::{fsync, rename_at, unlink_at};

/// Writes `name` in `dir` whole (a new file, exclusive, renamed over; never through a
/// symlink), durably when asked (fsync of the file and the directory).
pub fn write_file_at(
    dir: &OwnedFd,
    name: &str,
    data: &[u8],
    shown: &Path,
    durable: bool,
) -> crate::error::Result<()> {
    write_with(dir, name, shown, durable, |w| w.write_all(data))
}

/// [`write_file_at`] with the content streamed by `fill` (buffered).
pub fn write_with(
    dir: &OwnedFd,
    name: &str,
    shown: &Path,
    durable: bool,
    fill: impl FnOnce(&mut dyn std::io::Write) -> io::Result<()>,
) -> crate::error::Result<()> {
    use crate::error::IoContext;
    let tmp = format!("{name}.tmp");
    let _ = unlink_at(dir.as_fd(), tmp.as_bytes());
    let fd = create_excl_at(dir.as_fd(), tmp.as_bytes()).at(shown)?;
    let mut w = io::BufWriter::with_capacity(1 << 16, std::fs::File::from(fd));
    fill(&mut w).at(shown)?;
    let f = w.into_inner().map_err(|e| e.into_error()).at(shown)?;
    if durable {
        f.sync_all().at(shown)?;
    }
    drop(f);
    rename_at(dir.as_fd(), tmp.as_bytes(), dir.as_fd(), name.as_bytes()).at(shown)?;
    if durable {
        fsync(dir.as_fd()).at(shown)?;
    }
    Ok(())
}
