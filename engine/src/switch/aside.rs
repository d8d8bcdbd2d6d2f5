//! Recovery of the portable OS layer's emulated exchange: without `RENAME_EXCHANGE` a tree
//! exchange is three renames, and a run killed between them leaves a tree aside in the home.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{home_name, Home};
use crate::error::{IoContext, Result};
use crate::fsx;

/// The one directory (or switch link) under a temporary name in `home`, if exactly one is
/// there: where an exchange emulated by renames (no `RENAME_EXCHANGE`: the portable OS layer,
/// see [`fsx::portable`]) keeps the live tree while the run that made it was killed.
pub(super) fn aside_in(home: BorrowedFd<'_>) -> Option<Vec<u8>> {
    use crate::entry::Kind;
    let is_dir = |n: &[u8]| {
        fsx::cstr(n).is_ok_and(|c| {
            fsx::lstat_at(home, &c)
                .is_ok_and(|st| matches!(fsx::kind_of(st.st_mode), Kind::Dir | Kind::Symlink))
        })
    };
    let names: Vec<Vec<u8>> = fsx::list_dir(home)
        .ok()?
        .into_iter()
        .filter(|n| fsx::is_tmp_name(n) && is_dir(n))
        .collect();
    <[Vec<u8>; 1]>::try_from(names).ok().map(|[n]| n)
}

/// A run killed between the first two renames of an emulated tree exchange leaves `live`
/// absent and its tree aside in the home: this puts it back, so the journal then shows a
/// switch that never began (abandoned as usual). Under the destination's lock, before
/// anything else looks at `live`; does nothing when `live` exists or no switch was under way.
pub fn restore_live_aside(live: &Path) -> Result<()> {
    if live.symlink_metadata().is_ok() {
        return Ok(());
    }
    let (Some(parent), Some(name)) = (live.parent(), live.file_name()) else {
        return Ok(());
    };
    let Ok(pfd) = fsx::open_root(parent) else {
        return Ok(());
    };
    let hname = home_name(name.as_bytes());
    let Ok(home) = fsx::open_subdir(pfd.as_fd(), &hname) else {
        return Ok(());
    };
    if fsx::lstat_at(home.as_fd(), c"switching").is_err() {
        return Ok(());
    }
    if let Some(aside) = aside_in(home.as_fd()) {
        fsx::move_noreplace(home.as_fd(), &aside, pfd.as_fd(), name.as_bytes()).at(live)?;
    }
    Ok(())
}

impl Home {
    /// Killed after the second rename of an emulated exchange (see [`restore_live_aside`]):
    /// the new tree is live, the old one aside instead of at `from` (and `to` not made yet);
    /// it goes to `from`, so the journal's last step makes it the generation as after a real
    /// exchange.
    pub(super) fn restore_from_aside(&self, from: &[u8], to: &[u8]) -> Result<()> {
        // Both absent only then: with `to` in place the exchange was finished and renamed.
        if !self.holds(from) && !self.holds(to) {
            if let Some(aside) = aside_in(self.fd.as_fd()) {
                fsx::rename_at(self.fd.as_fd(), &aside, self.fd.as_fd(), from)
                    .at(self.path.join(OsStr::from_bytes(from)))?;
            }
        }
        Ok(())
    }
}
