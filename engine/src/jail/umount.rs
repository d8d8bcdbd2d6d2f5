//! `jail umount`: everything mounted below the jail, listed or not, deepest first.
//! Only unmounts; never removes a file or directory.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{Error, Result};
use super::mountinfo::MountTable;
use super::os::{self, Unmount};
use super::Jail;

/// A busy mount (a shell cwd'd inside, a build still writing) often frees within a second
/// or two; retrying that long saves the user a second command without hanging on a real hold.
const BUSY_RETRIES: u32 = 20;
const BUSY_PAUSE: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub enum Outcome {
    Unmounted,
    /// Still busy after the retries; detached (`--force`), freed when its last user goes.
    Detached,
    Failed(Error),
}

#[derive(Debug)]
pub struct Unmounted {
    pub target: PathBuf,
    pub outcome: Outcome,
}

/// Unmounts every mount strictly below the jail root. `force` detaches busy mounts.
pub fn umount(jail: &Jail, force: bool) -> Result<Vec<Unmounted>> {
    let table = MountTable::current()?;
    // Table order puts a mount after the one it sits on (and after the one it hides), so
    // walking it backwards, then sorting by depth, unmounts children and top layers first.
    let mut targets: Vec<PathBuf> = table.under(&jail.root).map(|m| m.target.clone()).collect();
    targets.reverse();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));

    let mut done = Vec::with_capacity(targets.len());
    for target in targets {
        let outcome = match unmount_retrying(&target) {
            Ok(()) => Outcome::Unmounted,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && force => {
                match os::unmount(&target, Unmount::Detach) {
                    Ok(()) => Outcome::Detached,
                    Err(e) => Outcome::Failed(Error::io(&target, e)),
                }
            }
            // Already gone: detached along with a parent, or unmounted by someone else.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => continue,
            Err(e) => Outcome::Failed(Error::io(&target, e)),
        };
        done.push(Unmounted { target, outcome });
    }
    Ok(done)
}

fn unmount_retrying(target: &std::path::Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match os::unmount(target, Unmount::Normal) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < BUSY_RETRIES => {
                tries += 1;
                std::thread::sleep(BUSY_PAUSE);
            }
            r => return r,
        }
    }
}
