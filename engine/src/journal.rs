//! State that lives outside the synced trees: the state directory, per-tree stat caches.
//!
//! Layout: `STATE/trees/<key>/` per tree, `<key>` being the first 16 hex digits of the blake3 of
//! the tree's canonical path. Each holds `path` (the tree's path, for people) and `cache` (the
//! stat-cache manifest).

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::hash::to_hex;
use crate::paths::Loc;

pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// Opens (creating if needed) the state directory and checks it is usable.
    pub fn open(root: &Path) -> Result<StateDir> {
        fs::create_dir_all(root.join("trees")).at(root)?;
        let md = fs::metadata(root).at(root)?;
        if !md.is_dir() {
            return Err(Error::bad(root, "state dir is not a directory"));
        }
        Ok(StateDir { root: root.into() })
    }

    /// The per-tree directory for a canonical tree path (created on demand).
    pub fn tree_dir(&self, tree: &Path) -> Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let key = to_hex(blake3::hash(tree.as_os_str().as_bytes()).as_bytes());
        let d = self.root.join("trees").join(&key[..16]);
        if !d.is_dir() {
            fs::create_dir_all(&d).at(&d)?;
            fs::write(d.join("path"), tree.as_os_str().as_bytes()).at(&d)?;
        }
        Ok(d)
    }

    pub fn cache_path(&self, tree: &Path) -> Result<PathBuf> {
        Ok(self.tree_dir(tree)?.join("cache"))
    }
}

/// Refuses a state dir (`state`, canonical; `shown` as the user named it) that is one of the
/// trees or inside one: the tree would then hold our state. Compared by identity (device and
/// inode, see [`Loc`]), so a bind mount or symlink of a tree is no way around it.
pub fn check_outside(shown: &Path, state: &Path, trees: &[&Path]) -> Result<()> {
    let s = Loc::of(state)?;
    for t in trees {
        if s.within(&Loc::of(t)?) {
            return Err(Error::bad(
                shown,
                format!("state dir is inside the synced tree {}", t.display()),
            ));
        }
    }
    Ok(())
}

/// An advisory lock on one destination, held for the whole run. `flock` is released by the
/// kernel when its holder dies, so a lock left by a killed run is simply taken over; the file's
/// text (pid and start time) only serves the message of whoever finds it held.
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    pub fn acquire(state: &StateDir, tree: &Path) -> Result<Lock> {
        use std::io::{Read, Seek, Write};
        use std::os::fd::AsFd;
        let path = state.tree_dir(tree)?.join("lock");
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        match rustix::fs::flock(
            f.as_fd(),
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut s = String::new();
                let _ = f.read_to_string(&mut s);
                let mut it = s.split_whitespace();
                let pid = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                let since = it.collect::<Vec<_>>().join(" ");
                return Err(Error::Locked {
                    path: tree.into(),
                    pid,
                    since: if since.is_empty() { "?".into() } else { since },
                });
            }
            Err(e) => return Err(Error::io(&path, e.into())),
        }
        let now = crate::cache::now();
        f.set_len(0).at(&path)?;
        f.rewind().at(&path)?;
        write!(f, "{} {}", std::process::id(), format_time(now.0)).at(&path)?;
        Ok(Lock { _file: f })
    }
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, no time zone database needed).
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
