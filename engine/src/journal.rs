//! State that lives outside the synced trees: the state directory, per-tree stat caches.
//!
//! Layout: `STATE/trees/<key>/` per tree, `<key>` being the first 16 hex digits of the blake3 of
//! the tree's canonical path. Each holds `path` (the tree's path: for people, and to find the
//! runs on trees below another), `lock` (see [`Lock`]; ancestors of a destination get one too),
//! `cache` (the stat-cache manifest) and `staged` (the temporary names a run is making in the
//! tree).
//!
//! The state is private (invariant 9): what it holds describes the trees (paths, hashes, xattrs)
//! and the rollback store in it keeps old setuid binaries and old secrets. Its directories are
//! created 0700.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Error, IoContext, Result};
use crate::hash::to_hex;
use crate::paths::Loc;

#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

/// `mkdir -p` with mode 0700 for every directory it makes (never wider, even for a moment).
fn create_private(p: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .at(p)
}

const STAGED_MAGIC: &[u8] = b"#jailsync-staged 1\n";

impl StateDir {
    /// Opens (creating if needed) the state directory and checks it is usable.
    pub fn open(root: &Path) -> Result<StateDir> {
        let trees = root.join("trees");
        create_private(&trees)?;
        let md = fs::metadata(root).at(root)?;
        if !md.is_dir() {
            return Err(Error::bad(root, "state dir is not a directory"));
        }
        // Made by an older version with the umask's mode: everything per tree is below it.
        if let Ok(md) = fs::metadata(&trees) {
            if md.mode() & 0o077 != 0 && md.uid() == rustix::process::geteuid().as_raw() {
                fs::set_permissions(&trees, fs::Permissions::from_mode(0o700)).at(&trees)?;
            }
        }
        use std::os::fd::AsFd;
        // A default ACL inherited from where the state dir was made would pass on to every
        // cache and record kept below it (see `fsx::strip_acls`).
        for d in [root, trees.as_path()] {
            let fd = crate::fsx::open_root(d).at(d)?;
            let mine =
                crate::fsx::fstat(fd.as_fd()).at(d)?.st_uid == rustix::process::geteuid().as_raw();
            if mine {
                crate::fsx::strip_acls(fd.as_fd()).at(d)?;
            }
        }
        Ok(StateDir { root: root.into() })
    }

    /// The per-tree directory for a canonical tree path (created on demand).
    pub fn tree_dir(&self, tree: &Path) -> Result<PathBuf> {
        use std::os::unix::ffi::OsStrExt;
        let key = to_hex(blake3::hash(tree.as_os_str().as_bytes()).as_bytes());
        let d = self.root.join("trees").join(&key[..16]);
        if !d.is_dir() {
            create_private(&d)?;
            fs::write(d.join("path"), tree.as_os_str().as_bytes()).at(&d)?;
        }
        Ok(d)
    }

    pub fn cache_path(&self, tree: &Path) -> Result<PathBuf> {
        Ok(self.tree_dir(tree)?.join("cache"))
    }

    /// The temporary names (relative paths) an earlier run recorded for `tree` and may have
    /// left there: the only entries a run removes as its own leftovers. A name merely shaped
    /// like ours is someone's entry like any other. Sorted. Unreadable or absent: none.
    pub fn staged_names(&self, tree: &Path) -> Vec<Box<[u8]>> {
        let Ok(p) = self.tree_dir(tree).map(|d| d.join("staged")) else {
            return Vec::new();
        };
        let Ok(data) = fs::read(&p) else {
            return Vec::new();
        };
        let Some(body) = data.strip_prefix(STAGED_MAGIC) else {
            return Vec::new();
        };
        // Each name ends with a NUL: a record cut short by a crash is not a name.
        let mut names: Vec<Box<[u8]>> = body
            .split_inclusive(|&b| b == 0)
            .filter_map(|r| r.strip_suffix(&[0]))
            .filter(|n| {
                !n.is_empty()
                    && n.first() != Some(&b'/')
                    && !n.split(|&b| b == b'/').any(|c| c.is_empty() || c == b"..")
                    && crate::fsx::is_tmp_name(crate::fsx::split_parent(n).1)
            })
            .map(Box::from)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Records the temporary names a run is about to create in `tree` (relative paths),
    /// replacing the earlier record; written before the first is made, so whatever a killed
    /// run leaves is on it. Atomic (a new file renamed into place); fsynced when `durable`.
    pub fn record_staged<'a>(
        &self,
        tree: &Path,
        names: impl IntoIterator<Item = &'a [u8]>,
        durable: bool,
    ) -> Result<()> {
        let p = self.tree_dir(tree)?.join("staged");
        let tmp = p.with_extension("new");
        let r = (|| -> io::Result<()> {
            let mut w = io::BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
            w.write_all(STAGED_MAGIC)?;
            for n in names {
                w.write_all(n)?;
                w.write_all(&[0])?;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            if durable {
                f.sync_data()?;
            }
            fs::rename(&tmp, &p)
        })();
        r.at(&p)
    }

    /// Forgets the recorded temporary names: none of them exists any more.
    pub fn clear_staged(&self, tree: &Path) -> Result<()> {
        let p = self.tree_dir(tree)?.join("staged");
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(p, e)),
            _ => Ok(()),
        }
    }
}

/// Refuses a state dir (`state`, canonical; `shown` as the user named it) that is one of the
/// trees or inside one: the tree would then hold our state (one behind a mount point below a
/// tree is not in it: a sync never enters there). Compared by identity (device and
/// inode, see [`Loc`]), so a bind mount or symlink of a tree is no way around it.
pub fn check_outside(shown: &Path, state: &Path, trees: &[&Path]) -> Result<()> {
    let s = Loc::of(state)?;
    for t in trees {
        let tl = Loc::of(t)?;
        if s.within(&tl) && !s.behind_mount_of(state, &tl, t) {
            return Err(Error::bad(
                shown,
                format!("state dir is inside the synced tree {}", t.display()),
            ));
        }
    }
    Ok(())
}

/// An advisory lock on one destination, and through it on everything above and below it,
/// held for the whole run.
///
/// Every path has a lock file, `STATE/trees/<key>/lock`. A run on destination D locks D's
/// exclusively and each ancestor's shared: two runs conflict exactly when one destination is
/// the other or inside it (exclusive meets exclusive, or shared meets exclusive), while runs on
/// siblings share their common ancestors. Paths are canonical, so any spelling of a tree takes
/// the same locks. `flock` is released by the kernel when its holder dies, so a lock left by a
/// killed run (even `kill -9`) is simply taken over; the exclusive holder's file holds its pid
/// and start time, which only serve the message of whoever finds it held.
pub struct Lock {
    _files: Vec<fs::File>,
}

/// How long [`Lock::acquire`] waits for a run holding the lock (`--wait`): milliseconds, 0 not
/// at all, `u64::MAX` for ever. One setting for the process, as a command waits alike for each
/// of its trees, wherever its lock is taken.
static LOCK_WAIT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes every later [`Lock::acquire`] of this process wait up to `wait` (None: for ever) for
/// the run holding the lock to end, instead of failing at once.
pub fn set_lock_wait(wait: Option<std::time::Duration>) {
    let ms = wait.map_or(u64::MAX, |d| d.as_millis().min(u64::MAX as u128 - 1) as u64);
    LOCK_WAIT_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

/// `take` again while it finds the lock held, as long as [`set_lock_wait`] allows.
fn waiting<T>(take: impl Fn() -> Result<T>) -> Result<T> {
    let limit = LOCK_WAIT_MS.load(std::sync::atomic::Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    loop {
        match take() {
            Err(Error::Locked { .. }) if (t0.elapsed().as_millis() as u64) < limit => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

impl Lock {
    /// Takes `tree`'s lock (and shared ones on the trees above it), waiting as
    /// [`set_lock_wait`] says; [`Error::Locked`] names the holder when it is not free in time.
    pub fn acquire(state: &StateDir, tree: &Path) -> Result<Lock> {
        waiting(|| Lock::try_acquire(state, tree))
    }

    fn try_acquire(state: &StateDir, tree: &Path) -> Result<Lock> {
        use std::io::{Seek, Write};
        let mut files = Vec::new();
        for above in tree.ancestors().skip(1) {
            let (f, path) = open_lock(state, above)?;
            if !try_flock(&f, &path, FlockOperation::NonBlockingLockShared)? {
                return Err(locked(tree, above, &f));
            }
            files.push(f);
        }
        let (mut f, path) = open_lock(state, tree)?;
        if !try_flock(&f, &path, FlockOperation::NonBlockingLockExclusive)? {
            // Held by a run on this very tree, or shared by runs on trees below it (which
            // cannot coexist with the former): name one of those first.
            return Err(holder_below(state, tree).unwrap_or_else(|| locked(tree, tree, &f)));
        }
        let now = crate::cache::now();
        f.set_len(0).at(&path)?;
        f.rewind().at(&path)?;
        write!(f, "{} {}", std::process::id(), format_time(now.0)).at(&path)?;
        files.push(f);
        Ok(Lock { _files: files })
    }

    /// For a run that only reads `tree` (a dry run): fails with [`Error::Locked`] when a run
    /// holds it, or a tree above or below it, since its reads would race that run's changes.
    /// Takes nothing: shared locks, released before returning.
    pub fn probe(state: &StateDir, tree: &Path) -> Result<()> {
        waiting(|| Lock::try_probe(state, tree))
    }

    fn try_probe(state: &StateDir, tree: &Path) -> Result<()> {
        for above in tree.ancestors() {
            let (f, path) = open_lock(state, above)?;
            if !try_flock(&f, &path, FlockOperation::NonBlockingLockShared)? {
                return Err(locked(tree, above, &f));
            }
        }
        match holder_below(state, tree) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The lock file of `tree` (created on demand), and its path.
fn open_lock(state: &StateDir, tree: &Path) -> Result<(fs::File, PathBuf)> {
    let path = state.tree_dir(tree)?.join("lock");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .at(&path)?;
    Ok((f, path))
}

/// Takes a lock without waiting; false when another run holds a conflicting one.
fn try_flock(f: &fs::File, path: &Path, op: FlockOperation) -> Result<bool> {
    use std::os::fd::AsFd;
    match rustix::fs::flock(f.as_fd(), op) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(Error::io(path, e.into())),
    }
}

/// The error for `tree` when `held`'s lock (file `f`) is held by another run.
fn locked(tree: &Path, held: &Path, f: &fs::File) -> Error {
    use std::io::{Read, Seek};
    // The holder writes its pid just after taking the lock: give it a moment.
    let mut text = String::new();
    for _ in 0..20 {
        text.clear();
        let mut r = f;
        if r.rewind().is_ok() && r.read_to_string(&mut text).is_ok() && !text.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut it = text.split_whitespace();
    let pid = it.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let since = it.collect::<Vec<_>>().join(" ");
    Error::Locked {
        path: tree.into(),
        held: held.into(),
        pid,
        since: if since.is_empty() { "?".into() } else { since },
    }
}

/// A run holding a destination strictly below `tree`, as the error to report, if any.
fn holder_below(state: &StateDir, tree: &Path) -> Option<Error> {
    use std::os::unix::ffi::OsStringExt;
    for d in fs::read_dir(state.root.join("trees")).ok()?.flatten() {
        let Ok(p) = fs::read(d.path().join("path")) else {
            continue;
        };
        let p = PathBuf::from(std::ffi::OsString::from_vec(p));
        if p == tree || !p.starts_with(tree) {
            continue;
        }
        let Ok(f) = fs::File::open(d.path().join("lock")) else {
            continue;
        };
        // Only an exclusive holder (a run on `p` itself) refuses a shared lock.
        if matches!(
            try_flock(&f, &p, FlockOperation::NonBlockingLockShared),
            Ok(false)
        ) {
            return Some(locked(tree, &p, &f));
        }
    }
    None
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
