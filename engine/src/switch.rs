//! Switching: the next tree replaces the live one in one atomic step, and the old tree
//! becomes the rollback generation.
//!
//! Each destination has a *home*: a directory private to root (0700, made so, never followed
//! through a symlink) on the destination's own mount, holding
//! - `next`: the tree being staged ([`crate::stage`]);
//! - `gen-<N>`: old trees, newest highest; `gen-<N>.d/` beside each holds what rollback needs
//!   (see [`crate::generation`]);
//! - `switching`: a journal that exists only while a switch is under way, so a run killed
//!   in the middle is finished forward by the next one.
//!
//! How the switch is made ([`Method`]), best first:
//! - **Tree**: the home is `PARENT/.jailsync-NAME`; one `renameat2(RENAME_EXCHANGE)` swaps
//!   `next` and the live root. A reader opening any path sees wholly the old release or wholly
//!   the new one. Needs: DST not a mount point, no mount below it, a writable parent.
//! - **Entries**: DST is a mount point or `/` (or its parent cannot take the home): the home
//!   is `DST/.jailsync-gens` (never synced, never deleted by a sync), and the tree switches by
//!   subtrees ([`crate::steps`]): each top-level entry exchanged on its own, back to back
//!   (libraries before programs); the root's own metadata is set in place.
//!
//! Either way, what must not move — a mount point below DST, an immutable or append-only
//! entry — is a bound, decided at the last safe point (the mount table read again right
//! before the exchanges): the switch goes around it by subtrees, from either home. A reader
//! can see a mix only across subtrees, for the microseconds between those calls.
//!
//! A filesystem without `RENAME_EXCHANGE` is refused (the portable layer's renames, chosen
//! with `JAILSYNC_FSX=portable`, switch there with a window where a name is absent).

// stat field widths differ between targets; the casts are no-ops only on some.
#![allow(clippy::unnecessary_cast)]

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};
use crate::fsx;
pub use crate::fsx::{write_file_at, write_with};
pub use crate::names::{home_name, is_ours, is_reserved_top, IN_TREE_HOME};
pub use crate::steps::Bounds;
use crate::steps::Steps;

mod aside;
mod link;
mod mounts;

pub use crate::opts::SwitchBy;
pub use aside::restore_live_aside;
use link::{cannot_link, LinkSwitch};
pub use mounts::{first_mount_below, prepare_around_mounts};

const NEXT: &[u8] = b"next";
const JOURNAL: &str = "switching";
/// Old metadata of live inodes a staging run changes in place (see [`crate::stage`]).
pub const PREMETA: &str = "premeta";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// One exchange of the whole tree.
    Tree,
    /// By subtrees, the home inside DST (DST is a mount point or `/`, or its parent is
    /// unusable).
    Entries,
    /// One rename of a new symlink over DST, which names a release kept in the home (see
    /// [`link`]).
    Link,
}

impl Method {
    pub fn describe(&self) -> String {
        match self {
            Method::Tree if !fsx::exchange_is_atomic() => "the whole tree renamed aside and the next renamed in (no atomic exchange on this system: the tree is absent for one rename)".into(),
            Method::Tree => "one exchange of the whole tree".into(),
            Method::Entries if !fsx::exchange_is_atomic() => "renames per subtree, each absent for one rename (no atomic exchange on this system; the tree is a mount point or `/`, or its parent cannot hold the staging area)".into(),
            Method::Entries => "one exchange per top-level entry, or per largest subtree around a mount point or immutable entry (the tree is a mount point or `/`, or its parent cannot hold the staging area)".into(),
            Method::Link => "one rename of a new symlink over the tree, naming the release in its home (a running program keeps the release it started in)".into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Method::Tree => "tree",
            Method::Entries => "entries",
            Method::Link => "link",
        }
    }
}

/// A destination's home, opened and checked.
pub struct Home {
    /// fsync the journal and the exchange (`--fsync`). Without it a switch is safe against a
    /// killed process (the page cache survives it) but not against power loss, like the rest
    /// of an unsynced run.
    pub durable: bool,
    pub path: PathBuf,
    pub fd: OwnedFd,
    pub method: Method,
    /// Where the home is: `Tree` beside DST, `Entries` inside it. Its journal is read as it
    /// was written (see [`Home::recover`]).
    pub layout: Method,
    /// The live tree.
    pub live: PathBuf,
    /// Entries this run found immutable or append-only: bounds of the switch (see
    /// [`crate::steps`]), with the mounts below the tree read at the switch itself.
    pub pinned: Vec<Box<[u8]>>,
    live_parent: OwnedFd,
    live_name: Vec<u8>,
    /// DST's parent's mtime before this run touched it (whole-tree method only): making the
    /// home, the exchange and removing the home are renames in the parent, which is not ours
    /// (rsync leaves it alone, and so do we: see [`Home::put_parent_mtime_back`]).
    parent_mtime: Option<(i64, u32)>,
}

/// What one switch did.
#[derive(Debug, Clone)]
pub struct Switched {
    /// From the first exchange to the last: the only time a reader could see a mix (zero
    /// for a whole-tree exchange but the one call's own duration).
    pub window: Duration,
    /// Exchanges and renames made.
    pub calls: usize,
    /// Where the old tree is now.
    pub old: PathBuf,
    /// How it was made: the whole tree, or by subtrees.
    pub method: Method,
}

fn mtime_of(st: &rustix::fs::Stat) -> (i64, u32) {
    (st.st_mtime as i64, st.st_mtime_nsec as u32)
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes (or opens) a private directory `name` in `dir`: mode 0700 from creation, owned by
/// us, never a symlink, without ACLs. One that exists with other owner or looser mode is
/// refused: something other than this program made it. A default ACL it inherited from `dir`
/// (DST's parent, or DST itself for the in-tree home) is removed each time it is opened, so
/// nothing staged or kept below it inherits one ([`fsx::strip_acls`]).
pub fn private_dir(dir: &OwnedFd, name: &[u8], shown: &Path) -> Result<OwnedFd> {
    match fsx::mkdir_at(dir.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(shown, e)),
    }
    let fd = fsx::open_subdir(dir.as_fd(), name).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
            Error::bad(shown, "is a symlink or not a directory; refusing to use it")
        } else {
            Error::io(shown, e)
        }
    })?;
    let st = fsx::fstat(fd.as_fd()).at(shown)?;
    // 0711 is a home whose releases programs run from (see `link`).
    if st.st_uid != euid() || st.st_mode & 0o066 != 0 {
        return Err(Error::bad(
            shown,
            format!(
                "exists with owner {} and mode {:o}; jailsync makes it 0700 and owned by uid {} (remove it, or fix its mode, if it is jailsync's)",
                st.st_uid,
                st.st_mode & 0o7777,
                euid()
            ),
        ));
    }
    fsx::strip_acls(fd.as_fd()).at(shown)?;
    Ok(fd)
}

/// The home an earlier run made for the live tree `name` (open as `live_fd` in
/// `live_parent`), without making one: beside it (`Tree`) or inside it (`Entries`).
fn found_home(
    live_parent: &OwnedFd,
    live_fd: &OwnedFd,
    name: &[u8],
    live: &Path,
) -> Result<Option<(Method, PathBuf, OwnedFd)>> {
    let beside = home_name(name);
    let places = [
        (
            Method::Tree,
            live_parent,
            beside.as_slice(),
            live.with_file_name(OsStr::from_bytes(&beside)),
        ),
        (
            Method::Entries,
            live_fd,
            IN_TREE_HOME,
            live.join(OsStr::from_bytes(IN_TREE_HOME)),
        ),
    ];
    for (layout, dir, n, shown) in places {
        let Ok(c) = fsx::cstr(n) else { continue };
        let ours = fsx::lstat_at(dir.as_fd(), &c).is_ok_and(|st| is_ours(n, &st));
        if ours {
            let fd = fsx::open_subdir(dir.as_fd(), n).at(&shown)?;
            return Ok(Some((layout, shown, fd)));
        }
    }
    Ok(None)
}

impl Home {
    /// Picks the switch method for `live` (canonical, existing) and opens its home, finishing
    /// or discarding whatever a killed run left there.
    pub fn open(live: &Path) -> Result<Home> {
        Self::open_with(live, true, None)
    }

    /// [`Home::open`], switching the way the admin asked (`None`: as DST is now).
    pub fn open_as(live: &Path, by: Option<SwitchBy>) -> Result<Home> {
        Self::open_with(live, true, by)
    }

    fn open_with(live: &Path, probe: bool, by: Option<SwitchBy>) -> Result<Home> {
        // `/` has no parent to exchange it in: it switches by subtrees, its home inside it.
        let is_root = live.parent().is_none();
        let (parent, name) = match (live.parent(), live.file_name()) {
            (Some(p), Some(n)) => (p.to_path_buf(), n.as_bytes().to_vec()),
            _ => (live.to_path_buf(), b".".to_vec()),
        };
        let live_parent = fsx::open_root(&parent).at(&parent)?;
        let live_fd = fsx::open_tree_at(live_parent.as_fd(), &name).at(live)?;
        let is_link = matches!(fsx::switch_link_at(live_parent.as_fd(), &name), Ok(Some(_)));
        let table = crate::jail::mountinfo::MountTable::current().ok();
        let st_live = fsx::fstat(live_fd.as_fd()).at(live)?;
        let st_parent = fsx::fstat(live_parent.as_fd()).at(&parent)?;
        let is_mount = is_root
            || st_live.st_dev != st_parent.st_dev
            || table.as_ref().is_some_and(|t| t.at(live).is_some());
        // JAILSYNC_SWITCH=entries forces the switch by subtrees: for tests and for measuring
        // the methods against each other on one tree.
        let forced = std::env::var("JAILSYNC_SWITCH").ok();
        // A home made inside the tree by an earlier run stays the home of its generations.
        let inside = matches!(
            found_home(&live_parent, &live_fd, &name, live)?,
            Some((Method::Entries, _, _))
        );
        let entries = is_mount || inside || forced.as_deref() == Some("entries");
        let link = by.map_or(is_link, |b| b == SwitchBy::Link);
        let mut method = match (entries, link) {
            (true, false) => Method::Entries,
            (true, true) if is_root => return Err(cannot_link(live, "it is `/`")),
            (true, true) if is_mount => return Err(cannot_link(live, "it is a mount point")),
            (true, true) => return Err(cannot_link(live, "its generations are kept inside it")),
            (false, true) => Method::Link,
            (false, false) => Method::Tree,
        };
        let mut home = None;
        let mut parent_mtime = None;
        if matches!(method, Method::Tree | Method::Link) {
            let hname = home_name(&name);
            let hpath = parent.join(OsStr::from_bytes(&hname));
            let before = mtime_of(&fsx::fstat(live_parent.as_fd()).at(&parent)?);
            match private_dir(&live_parent, &hname, &hpath) {
                Ok(fd) => {
                    // Making the home is our write in a directory that is not ours: its mtime
                    // is put back at once, so a run that stops before switching leaves it too.
                    let now = fsx::fstat(live_parent.as_fd()).at(&parent)?;
                    if mtime_of(&now) != before {
                        fsx::set_mtime(live_parent.as_fd(), before.0, before.1).at(&parent)?;
                    }
                    parent_mtime = Some(before);
                    home = Some((hpath, fd))
                }
                // A read-only or otherwise unusable parent: stage inside the tree instead.
                Err(Error::Io { cause, .. })
                    if method == Method::Tree
                        && matches!(
                            cause.raw_os_error(),
                            Some(libc::EROFS | libc::EACCES | libc::EPERM)
                        ) =>
                {
                    method = Method::Entries
                }
                Err(e) => return Err(e),
            }
        }
        if method == Method::Entries {
            let hpath = live.join(OsStr::from_bytes(IN_TREE_HOME));
            // Making the home moves the root's mtime, which is the tree's, not ours: put it
            // back, so the tree's listing (and a later rollback) is untouched by it.
            let before = fsx::fstat(live_fd.as_fd()).at(live)?;
            let fd = private_dir(&live_fd, IN_TREE_HOME, &hpath)?;
            let after = fsx::fstat(live_fd.as_fd()).at(live)?;
            if (after.st_mtime, after.st_mtime_nsec) != (before.st_mtime, before.st_mtime_nsec) {
                let mut e = crate::entry::Entry::new(crate::entry::Kind::Dir);
                e.set_mtime(before.st_mtime as i64, before.st_mtime_nsec as u32);
                fsx::set_times_at(live_fd.as_fd(), b".", &e).at(live)?;
            }
            home = Some((hpath, fd));
        }
        let (path, fd) = home.expect("a home is made for either method");
        let h = Home {
            durable: false,
            path,
            fd,
            layout: if method == Method::Link {
                Method::Tree
            } else {
                method.clone()
            },
            parent_mtime: parent_mtime.filter(|_| method != Method::Entries),
            method,
            live: live.into(),
            live_parent,
            live_name: name,
            pinned: Vec::new(),
        };
        // Recovery is not done here: only under the destination's lock (see `recover`).
        // (Renames emulating an exchange work everywhere: nothing to probe.)
        if probe && h.layout == Method::Tree {
            h.set_reach()?;
        }
        if probe && fsx::exchange_is_atomic() && !h.exchange_works() {
            return Err(Error::bad(
                live,
                "its filesystem cannot exchange two names atomically (RENAME_EXCHANGE): nothing was changed (JAILSYNC_FSX=portable switches by renames instead, each name absent for the time of one rename)",
            ));
        }
        Ok(h)
    }

    /// Whether DST's parent still has the mtime this run found (or put back): nobody else
    /// wrote there since. Asked just before the switch, so [`Home::put_parent_mtime_back`]
    /// never hides another program's change to the parent behind the old mtime.
    pub fn parent_as_found(&self) -> bool {
        let Some(before) = self.parent_mtime else {
            return false;
        };
        fsx::fstat(self.live_parent.as_fd()).is_ok_and(|st| mtime_of(&st) == before)
    }

    /// Sets DST's parent's mtime back to what this run found, after the switch (and the
    /// removal of an empty home) renamed in it: the parent's entries the admin sees are the
    /// same, DST and its hidden home, so its mtime is too, as with `rsync -a SRC/ DST/`.
    pub fn put_parent_mtime_back(&self) -> io::Result<()> {
        match self.parent_mtime {
            Some((s, ns)) => fsx::set_mtime(self.live_parent.as_fd(), s, ns),
            None => Ok(()),
        }
    }

    fn exchange_works(&self) -> bool {
        let (a, b) = (b".probe-a".as_slice(), b".probe-b".as_slice());
        let _ = fsx::remove_tree_at(self.fd.as_fd(), a);
        let _ = fsx::remove_tree_at(self.fd.as_fd(), b);
        let ok = fsx::mkdir_at(self.fd.as_fd(), a, 0o700).is_ok()
            && fsx::mkdir_at(self.fd.as_fd(), b, 0o700).is_ok()
            && fsx::exchange_between(self.fd.as_fd(), a, self.fd.as_fd(), b).is_ok();
        let _ = fsx::rmdir_at(self.fd.as_fd(), a);
        let _ = fsx::rmdir_at(self.fd.as_fd(), b);
        ok
    }

    /// A path to `rel` inside the home through the home's open fd: the home's own name (in
    /// DST's root, for the per-entry method) may be swapped by whoever can write there, the
    /// directory we opened cannot.
    pub fn io_path(&self, rel: &str) -> PathBuf {
        fsx::fd_path(self.fd.as_fd(), &self.path).join(rel)
    }

    pub fn next_path(&self) -> PathBuf {
        self.path.join(OsStr::from_bytes(NEXT))
    }

    /// Makes an empty `next`, removing one a killed run left. It carries no ACL (the home has
    /// none; checked again here, as what it passes down is every staged entry's).
    pub fn make_next(&self) -> Result<OwnedFd> {
        let p = self.next_path();
        fsx::remove_tree_at(self.fd.as_fd(), NEXT).at(&p)?;
        fsx::mkdir_at(self.fd.as_fd(), NEXT, 0o700).at(&p)?;
        let fd = fsx::open_subdir(self.fd.as_fd(), NEXT).at(&p)?;
        fsx::strip_acls(fd.as_fd()).at(&p)?;
        Ok(fd)
    }

    /// Gives up a staged `next` that will not be switched: it goes, and metadata changed in
    /// place while staging is set back.
    pub fn abandon(&self) -> Result<()> {
        let pm = self.io_path(PREMETA);
        if fsx::lstat_at(self.fd.as_fd(), c"premeta").is_ok() {
            crate::stage::restore_meta(&self.live, &pm)?;
            let _ = fsx::unlink_at(self.fd.as_fd(), PREMETA.as_bytes());
        }
        self.discard_next()
    }

    pub fn discard_next(&self) -> Result<()> {
        fsx::remove_tree_at(self.fd.as_fd(), NEXT).at(self.next_path())
    }

    /// Whether the home holds an entry `name` (of any type, a dangling alias too).
    pub(crate) fn holds(&self, name: &[u8]) -> bool {
        fsx::cstr(name).is_ok_and(|c| fsx::lstat_at(self.fd.as_fd(), &c).is_ok())
    }

    pub fn gen_name(n: u64) -> Vec<u8> {
        format!("gen-{n}").into_bytes()
    }

    /// Where generation `n`'s tree is: `gen-N`, or the release its alias names.
    pub fn gen_path(&self, n: u64) -> PathBuf {
        self.path
            .join(OsStr::from_bytes(&self.tree_name(&Self::gen_name(n))))
    }

    fn live_fd(&self) -> io::Result<OwnedFd> {
        fsx::open_tree_at(self.live_parent.as_fd(), &self.live_name)
    }

    /// Switches `next` in, making the old tree generation `n`. Never half: the journal is
    /// written first, and a run killed after it is finished forward by [`Home::recover`].
    pub fn switch_in(&self, n: u64) -> Result<Switched> {
        let p = self.prepare_in(n)?;
        self.exchange(&p)?;
        self.finish(p)
    }

    /// Journals the switch of `next` in (old tree to become generation `n`); see
    /// [`Home::exchange`]. Several trees are prepared first and exchanged back to back, so
    /// the durable writes of one do not sit between the switches of two.
    pub fn prepare_in(&self, n: u64) -> Result<Pending> {
        self.prepare(NEXT, &Self::gen_name(n), &[])
    }

    /// Journals switching generation `n` back in; the tree it replaces ends at `home/to`
    /// (`undone-<n>`, removed by the next sync, or `kept-<n>` when it holds changes made
    /// after the sync).
    pub fn prepare_back(&self, n: u64, to: &str, pinned: &[Box<[u8]>]) -> Result<Pending> {
        let _ = fsx::remove_tree_at(self.fd.as_fd(), to.as_bytes());
        self.prepare(&Self::gen_name(n), to.as_bytes(), pinned)
    }

    /// Whether a sync made a home for `live` (beside it or, per entry, inside it).
    pub fn exists(live: &Path) -> bool {
        let parent = live.parent().unwrap_or(Path::new("/"));
        let name = home_name(live.file_name().map_or(&b""[..], |n| n.as_bytes()));
        let candidates = [
            parent.join(OsStr::from_bytes(&name)),
            live.join(OsStr::from_bytes(IN_TREE_HOME)),
        ];
        candidates.iter().any(|c| c.is_dir())
    }

    /// The home of `live` if a sync made one (never creates it).
    pub fn existing(live: &Path) -> Result<Option<Home>> {
        if Home::exists(live) {
            // No probe: a reader (history) must not write, and a sync made the home already.
            return Home::open_with(live, false, None).map(Some);
        }
        Ok(None)
    }

    /// What stays where it is in this switch, read now (the last safe point): the mount
    /// points below the live tree and the entries this run found immutable or append-only.
    pub fn bounds_now(&self, pinned: &[Box<[u8]>]) -> Bounds {
        let mut b = Vec::new();
        // A switch by symlink moves nothing inside the tree: only a mount must stay.
        if self.method != Method::Link {
            b.extend_from_slice(&self.pinned);
            b.extend_from_slice(pinned);
        }
        b.extend(crate::jail::mountinfo::points_below(&self.live_real()));
        Bounds::new(b)
    }

    /// The directories a switch made now leaves in place (root first; none for a whole-tree
    /// exchange): their old metadata goes in the generation's record.
    pub fn spines_now(&self) -> Vec<Box<[u8]>> {
        let bounds = self.bounds_now(&[]);
        if !self.by_steps(&bounds) {
            return Vec::new();
        }
        let mut s = bounds.spines();
        if s.is_empty() {
            s.push(Box::default());
        }
        s
    }

    /// The one choice of how a switch is made: the whole tree in one exchange where its home
    /// is beside it and nothing in it must stay, else by subtrees around what must.
    fn by_steps(&self, bounds: &Bounds) -> bool {
        self.method == Method::Entries || !bounds.is_empty()
    }

    /// Plans and durably journals exchanging the tree at `home/from` with the live one (the
    /// displaced live tree to end at `home/to`): what moves where, by inode, so a killed run
    /// can tell done from not done.
    fn prepare(&self, from: &[u8], to: &[u8], pinned: &[Box<[u8]>]) -> Result<Pending> {
        let jpath = self.path.join(JOURNAL);
        let from_fd = self.open_in(from)?;
        let root_ino = fsx::fstat(from_fd.as_fd()).at(&jpath)?.st_ino;
        let bounds = self.bounds_now(pinned);
        let mut link = None;
        let steps = if self.by_steps(&bounds) {
            let live = self.live_fd().at(&self.live)?;
            let ours = |n: &[u8]| n == IN_TREE_HOME || n == fsx::STORE_NAME;
            Some(Steps::plan(live, from_fd, &bounds, &ours, &self.live)?)
        } else {
            if self.method == Method::Link {
                link = Some(self.prepare_link(from, to)?);
            }
            None
        };
        let by = match (&steps, &link) {
            (Some(_), _) => "steps",
            (None, Some(_)) => "link",
            (None, None) => "tree",
        };
        let mut j = Vec::new();
        let _ = writeln!(j, "from {}", hex(from));
        let _ = writeln!(j, "to {}", hex(to));
        let _ = writeln!(j, "ino {root_ino}");
        let _ = writeln!(j, "by {by}");
        let link = link.map(|(lines, l)| {
            j.extend_from_slice(&lines);
            l
        });
        for i in steps.iter().flat_map(|s| &s.items) {
            let _ = writeln!(j, "{} {} {}", i.step.word(), hex(&i.path), i.ino);
        }
        write_file_at(&self.fd, JOURNAL, &j, &jpath, self.durable)?;
        if let Some(l) = &link {
            if let Err(e) = self.ready_link(from, l) {
                let _ = self.unready_link(from, l);
                return Err(e);
            }
        }
        Ok(Pending {
            from: from.to_vec(),
            to: to.to_vec(),
            steps,
            link,
        })
    }

    /// Makes the prepared switch: only renames, nothing durable in between. Returns how long
    /// it took and the calls made. On failure, what was done is undone (the tree is wholly
    /// old again) and the journal removed.
    pub fn exchange(&self, p: &Pending) -> Result<(Duration, usize)> {
        let t0 = Instant::now();
        let r = match (&p.steps, &p.link) {
            (None, Some(l)) => self.swap_link(l).map_err(|e| Error::io(&self.live, e)),
            (None, None) => self
                .exchange_whole(&p.from)
                .map_err(|e| Error::io(&self.live, e)),
            (Some(s), _) => s
                .run()
                .map_err(|(path, e)| Error::io(self.live.join(fsx::os(&path)), e)),
        };
        if let Err(e) = r {
            if let Some(l) = &p.link {
                let _ = self.unready_link(&p.from, l);
            }
            let _ = fsx::unlink_at(self.fd.as_fd(), JOURNAL.as_bytes());
            return Err(e);
        }
        Ok((t0.elapsed(), p.calls()))
    }

    /// The one exchange of the whole tree, with write permission lent to the two roots for
    /// it where an unprivileged run needs that (see [`crate::steps::Lent`]).
    fn exchange_whole(&self, from: &[u8]) -> io::Result<()> {
        let mut lent = crate::steps::Lent::default();
        if !rustix::process::geteuid().is_root() {
            lent.lend(self.fd.as_fd(), from, true, 0);
            lent.lend(self.live_parent.as_fd(), &self.live_name, false, 1);
        }
        let r = fsx::exchange_between(
            self.fd.as_fd(),
            from,
            self.live_parent.as_fd(),
            &self.live_name,
        );
        // Where each root is now (0: the staged one, 1: the live one): the staged one live
        // once the exchange was made.
        let live_end = |k: usize| (k == 0) == r.is_ok();
        lent.give_back(
            |_, k| {
                if live_end(k) {
                    self.live_parent.as_fd()
                } else {
                    self.fd.as_fd()
                }
            },
            |k| if live_end(k) { &self.live_name } else { from },
        );
        r
    }

    /// Undoes an exchange made by [`Home::exchange`] (when a later tree of the same run could
    /// not be switched), and forgets the journal.
    pub fn unexchange(&self, p: &Pending) -> Result<()> {
        let r = match (&p.steps, &p.link) {
            (None, Some(l)) => {
                self.unswap_link(&p.from, l)?;
                Ok(())
            }
            (None, None) => fsx::exchange_between(
                self.fd.as_fd(),
                &p.from,
                self.live_parent.as_fd(),
                &self.live_name,
            ),
            (Some(s), _) => s.undo(),
        };
        r.at(&self.live)?;
        fsx::unlink_at(self.fd.as_fd(), JOURNAL.as_bytes()).at(self.path.join(JOURNAL))
    }

    /// Forgets a prepared switch that was not made.
    pub fn cancel(&self, p: Pending) {
        if let Some(l) = &p.link {
            let _ = self.unready_link(&p.from, l);
        }
        let _ = fsx::unlink_at(self.fd.as_fd(), JOURNAL.as_bytes());
    }

    /// Completes a made switch: the displaced tree takes its name, the journal goes.
    pub fn finish(&self, p: Pending) -> Result<Switched> {
        match &p.link {
            Some(l) => self.finish_link(&p.from, &p.to, l)?,
            None => self.finish_journal(&p.from, &p.to)?,
        }
        Ok(Switched {
            window: Duration::ZERO,
            calls: p.calls(),
            old: self.path.join(OsStr::from_bytes(&self.tree_name(&p.to))),
            method: p.method(),
        })
    }

    /// Why `from` cannot be switched in by this (unprivileged) process, if it cannot: moving a
    /// directory to another parent needs write permission on it (to update its `..`), which
    /// root has anyway. Checked before the switch, so a refusal never leaves it half made.
    pub fn cannot_move(&self, from: &[u8]) -> Option<PathBuf> {
        if rustix::process::geteuid().is_root() {
            return None;
        }
        let writable = |d: BorrowedFd<'_>, n: &[u8]| -> bool {
            let Ok(c) = fsx::cstr(n) else { return false };
            // A directory of ours is lent write permission for its move (`steps::Lent`).
            let (is_dir, ours) = fsx::lstat_at(d, &c).map_or((false, false), |st| {
                let dir = fsx::kind_of(st.st_mode as u32) == crate::entry::Kind::Dir;
                (dir, st.st_uid == euid())
            });
            !is_dir
                || ours
                || rustix::fs::accessat(
                    d,
                    c.as_c_str(),
                    rustix::fs::Access::WRITE_OK,
                    rustix::fs::AtFlags::EACCESS,
                )
                .is_ok()
        };
        let from_fd = self.open_in(from).ok()?;
        let live = self.live_fd().ok()?;
        match self.method {
            // Renames inside the home and of a symlink: no directory changes parent.
            Method::Link => {}
            Method::Tree => {
                if !writable(self.fd.as_fd(), from) {
                    return Some(self.path.join(OsStr::from_bytes(from)));
                }
                if !writable(self.live_parent.as_fd(), &self.live_name) {
                    return Some(self.live.clone());
                }
            }
            _ => {
                for (dir, shown) in [
                    (&from_fd, self.path.join(OsStr::from_bytes(from))),
                    (&live, self.live.clone()),
                ] {
                    for n in fsx::list_dir(dir.as_fd()).unwrap_or_default() {
                        if n != IN_TREE_HOME && n != fsx::STORE_NAME && !writable(dir.as_fd(), &n) {
                            return Some(shown.join(OsStr::from_bytes(&n)));
                        }
                    }
                }
            }
        }
        None
    }

    /// A directory this process may not move, blocking the switch of `next` (see
    /// [`Home::cannot_move`]).
    pub fn blocked_move(&self) -> Option<PathBuf> {
        self.cannot_move(NEXT)
    }

    fn finish_journal(&self, from: &[u8], to: &[u8]) -> Result<()> {
        // The exchange made durable before the journal that could redo it goes.
        if self.durable {
            fsx::fsync(self.live_parent.as_fd()).at(self.live.parent().unwrap_or(&self.live))?;
        }
        // A run killed after this rename but before the journal went finds `from` gone and
        // `to` in place: done already (and `to` must not be touched then).
        if self.holds(from) {
            let _ = fsx::remove_tree_at(self.fd.as_fd(), to);
            fsx::rename_at(self.fd.as_fd(), from, self.fd.as_fd(), to)
                .at(self.path.join(OsStr::from_bytes(to)))?;
        }
        if self.durable {
            fsx::fsync(self.fd.as_fd()).at(&self.path)?;
        }
        // The generation's record holds these now.
        let _ = fsx::unlink_at(self.fd.as_fd(), PREMETA.as_bytes());
        fsx::unlink_at(self.fd.as_fd(), JOURNAL.as_bytes()).at(self.path.join(JOURNAL))?;
        Ok(())
    }

    /// Finishes a switch a killed run left under way (forward: the journal was complete
    /// before the first exchange), else discards a half-staged `next` and sets back metadata
    /// it changed in place. Only under the destination's lock: another run's `next` is not
    /// a leftover.
    pub fn recover(&self) -> Result<()> {
        let jpath = self.path.join(JOURNAL);
        let text = match fs::read(self.io_path(JOURNAL)) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.abandon();
            }
            Err(e) => return Err(Error::io(&jpath, e)),
        };
        let bad = || {
            Error::bad(
                &jpath,
                "unreadable switch journal; move it away after checking the tree",
            )
        };
        let mut from = None;
        let mut to = None;
        let mut ino = None;
        // Journals written before the `by` line: as the home's layout switches.
        let mut by_steps = self.layout != Method::Tree;
        let mut by_link = false;
        let (mut rel, mut old) = (None, None);
        let mut steps = Vec::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let s = std::str::from_utf8(line).map_err(|_| bad())?;
            let (k, v) = s.split_once(' ').ok_or_else(bad)?;
            match k {
                "from" => from = Some(unhex(v).ok_or_else(bad)?),
                "to" => to = Some(unhex(v).ok_or_else(bad)?),
                "ino" => ino = Some(v.parse::<u64>().map_err(|_| bad())?),
                "by" => (by_steps, by_link) = (v == "steps", v == "link"),
                "rel" => rel = Some(unhex(v).ok_or_else(bad)?),
                "old" => old = Some(v.to_string()),
                w => {
                    let (n, i) = v.split_once(' ').ok_or_else(bad)?;
                    let i = i.parse::<u64>().map_err(|_| bad())?;
                    steps.push((
                        crate::steps::Step::from_word(w).ok_or_else(bad)?,
                        unhex(n).ok_or_else(bad)?,
                        i,
                    ));
                }
            }
        }
        let (Some(from), Some(to), Some(ino)) = (from, to, ino) else {
            return Err(bad());
        };
        if by_link {
            let l = Home::link_from_journal(rel, old.as_deref()).ok_or_else(bad)?;
            return self.recover_link(&from, &to, &l);
        }
        let live = self.live_fd().at(&self.live)?;
        if !by_steps {
            let now = fsx::fstat(live.as_fd()).at(&self.live)?.st_ino;
            if now as u64 == ino {
                // The exchange happened: only the renames after it are missing.
                self.restore_from_aside(&from, &to)?;
                self.finish_journal(&from, &to)?;
            } else {
                // It did not: the switch never began.
                fsx::unlink_at(self.fd.as_fd(), JOURNAL.as_bytes()).at(&jpath)?;
                return self.abandon();
            }
        } else {
            // Killed after its last rename: only the journal is left to go.
            if !self.holds(&from) {
                self.finish_journal(&from, &to)?;
                return self.discard_next();
            }
            // Finishing moves subtrees: never one a mount made since sits in.
            if let Some(m) = self.mount_inside(steps.iter().map(|(_, p, _)| &p[..])) {
                return Err(Error::bad(
                    m,
                    "is mounted inside a subtree a killed run was switching: unmount it, then run again to finish that switch",
                ));
            }
            let from_fd = self.open_in(&from)?;
            crate::steps::finish(live.as_fd(), from_fd.as_fd(), &steps, &self.live)?;
            self.finish_journal(&from, &to)?;
        }
        let _ = self.discard_next();
        Ok(())
    }
}

/// A switch journaled and ready to be made (see [`Home::prepare_in`]): the whole tree in one
/// exchange, or by subtrees.
pub struct Pending {
    from: Vec<u8>,
    to: Vec<u8>,
    steps: Option<Steps>,
    link: Option<LinkSwitch>,
}

impl Pending {
    /// The switch's kind: the whole tree, or by subtrees.
    pub fn method(&self) -> Method {
        match (&self.steps, &self.link) {
            (Some(_), _) => Method::Entries,
            (None, Some(_)) => Method::Link,
            (None, None) => Method::Tree,
        }
    }

    /// Exchanges and renames the switch makes.
    pub fn calls(&self) -> usize {
        self.steps.as_ref().map_or(1, |s| s.items.len())
    }

    /// Directories left in place whose metadata is set after the switch, root first (none
    /// for a whole-tree exchange).
    pub fn spines(&self) -> &[Box<[u8]>] {
        self.steps.as_ref().map_or(&[], |s| &s.spines)
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use crate::testkit::write_tree as tree;

    fn read(p: PathBuf) -> String {
        fs::read_to_string(p).unwrap()
    }

    /// A live tree `P/live` and a home with `next` staged as the new release (a copy made by
    /// hand: what `stage` builds).
    fn staged(pinned: &[&str]) -> (tempfile::TempDir, PathBuf, Home) {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        let old = [
            ("lib/frozen", "same"),
            ("lib/x", "old"),
            ("bin/tool", "old"),
            ("gone", "g"),
        ];
        tree(&live, &old);
        let mut home = Home::open(&live).unwrap();
        home.pinned = pinned.iter().map(|p| p.as_bytes().into()).collect();
        home.make_next().unwrap();
        let next = home.next_path();
        let new = [
            ("lib/frozen", "same"),
            ("lib/x", "new"),
            ("bin/tool", "new"),
            ("added", "a"),
        ];
        tree(&next, &new);
        (t, live, home)
    }

    #[test]
    fn a_plain_directory_switches_whole_in_one_exchange() {
        let (_t, live, home) = staged(&[]);
        assert_eq!(home.method, Method::Tree);
        let p = home.prepare_in(1).unwrap();
        assert_eq!(
            (p.calls(), p.spines().len(), p.method()),
            (1, 0, Method::Tree)
        );
        home.exchange(&p).unwrap();
        let s = home.finish(p).unwrap();
        assert_eq!(read(live.join("bin/tool")), "new");
        assert!(!live.join("gone").exists() && live.join("added").exists());
        assert_eq!(read(s.old.join("bin/tool")), "old");
        assert!(
            !home.io_path(JOURNAL).exists(),
            "the journal outlived the switch"
        );
    }

    #[test]
    fn a_pinned_entry_stays_and_the_rest_switches_by_subtrees() {
        let (_t, live, home) = staged(&["lib/frozen"]);
        let frozen = fs::metadata(live.join("lib/frozen")).unwrap().ino();
        let lib = fs::metadata(live.join("lib")).unwrap().ino();
        let p = home.prepare_in(1).unwrap();
        assert_eq!(p.method(), Method::Entries);
        let spines: Vec<&[u8]> = p.spines().iter().map(|s| &s[..]).collect();
        assert_eq!(
            spines,
            [&b""[..], b"lib"],
            "the root and the bound's parent stay"
        );
        home.exchange(&p).unwrap();
        let s = home.finish(p).unwrap();
        assert_eq!(read(live.join("lib/x")), "new");
        assert_eq!(read(live.join("bin/tool")), "new");
        assert!(!live.join("gone").exists() && live.join("added").exists());
        assert_eq!(fs::metadata(live.join("lib/frozen")).unwrap().ino(), frozen);
        assert_eq!(
            fs::metadata(live.join("lib")).unwrap().ino(),
            lib,
            "a spine moved"
        );
        // The old tree holds what was switched out, and the staged copy of the bound.
        assert_eq!(read(s.old.join("lib/x")), "old");
        assert_eq!(read(s.old.join("gone")), "g");
        assert!(s.old.join("lib/frozen").exists());
    }

    #[test]
    fn a_switch_by_subtrees_killed_after_its_journal_is_finished_forward() {
        let (_t, live, home) = staged(&["lib/frozen"]);
        let p = home.prepare_in(1).unwrap();
        // Killed before any step: the journal is complete, so the next run makes them all.
        drop(p);
        assert!(home.io_path(JOURNAL).exists());
        home.recover().unwrap();
        assert_eq!(read(live.join("lib/x")), "new");
        assert_eq!(read(live.join("bin/tool")), "new");
        assert!(!live.join("gone").exists() && live.join("added").exists());
        assert_eq!(read(home.gen_path(1).join("gone")), "g");
        assert!(!home.io_path(JOURNAL).exists());
        // Finishing is done once: a second recovery finds nothing to do.
        home.recover().unwrap();
        assert_eq!(read(live.join("lib/x")), "new");
    }

    #[test]
    fn a_whole_switch_killed_before_its_exchange_is_abandoned() {
        let (_t, live, home) = staged(&[]);
        let p = home.prepare_in(1).unwrap();
        drop(p);
        home.recover().unwrap();
        assert_eq!(
            read(live.join("bin/tool")),
            "old",
            "a switch that never began went forward"
        );
        assert!(!home.next_path().exists(), "the staged tree was left");
        assert!(!home.io_path(JOURNAL).exists());
    }
}
