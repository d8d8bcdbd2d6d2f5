//! The paths a user names (SRC, DST, ROOT and its trees, the state dir): how each is resolved
//! to a directory, and how two are compared.
//!
//! **Resolution is the same whatever the spelling.** An argument is first cleaned lexically:
//! `.` components and trailing slashes go, and `..` removes the name before it, as `cd` does.
//! So `DST/sub`, `DST/sub/`, `DST/sub/.` and `DST/sub/x/..` all name `sub` in `DST`, and nothing
//! appended to a name makes the kernel follow it. The ancestors of that last name are the
//! user's own way to it and are followed, but only through symlinks owned by root or by the
//! caller ([`canonical_owned`]); the last name must be a directory, or a symlink that is
//! followed only when the caller allows it and, again, only when the link is owned by root or
//! by the caller (as rsync's `--copy-unsafe-links` family trusts a link by who could have
//! planted it). Trees below a root (`upgrade`'s `ROOT/REL`, `JAIL/REL`) are reached
//! without following any symlink on the way: a tree's path is inside the root, whose contents
//! are not the user's word.
//!
//! **Comparison is by identity, never by path** (design invariant 10). A bind mount of `SRC/sub`
//! is `SRC/sub` under another name; so is a symlink, or a path spelled differently. A [`Loc`]
//! holds what identifies a directory: the (device, inode) of the directory and of each of its
//! ancestors up to `/` (found through `..` on file descriptors), and its place inside its
//! filesystem (the mount's root in `/proc/self/mountinfo` plus the path below the mount). The
//! second is what catches a bind mount of a *subdirectory*: its `..` leads to where it is
//! mounted, not to the directory it shows, so the ancestor chain alone would miss it. A `Loc`
//! also keeps the places that mounts *below* the directory show, since a sync walks into them:
//! a destination holding a mount of part of the source would write into the jail.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::error::{Error, IoContext, Result};
use crate::jail::mountinfo::MountTable;

/// Opens that only name a directory: `O_PATH` where there is one (no read permission needed
/// on it), else a plain read-only open.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const HANDLE: OFlags = OFlags::PATH;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const HANDLE: OFlags = OFlags::RDONLY;

/// Symlinks followed in a row before giving up (as the kernel's own limit).
const MAX_LINKS: usize = 40;

/// `p` made absolute and cleaned lexically: no `.`, no `..`, no trailing slash.
pub fn clean(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().at(p)?.join(p)
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The canonical form of `p` (made absolute, cleaned), whose tail may not exist yet, reached
/// by following only the symlinks among its names that root or the caller owns. Whoever owns
/// a link chose where it leads: a link planted by another user in an ancestor of DST (a
/// `/srv/www -> /etc` in a directory that user may write) would make a sync of `/srv/www/x`
/// write in `/etc/x`. rsync trusts a link by who could have planted it; so does this, for
/// every name on the way, not only the last. `shown` and `what` name the argument in the
/// error, which names the link and its owner.
pub fn canonical_owned(p: &Path, shown: &Path, what: &str) -> Result<PathBuf> {
    let me = rustix::process::geteuid().as_raw();
    // Names still to walk, the next on top.
    let mut todo: Vec<OsString> = clean(p)?
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let mut out = PathBuf::from("/");
    let mut links = 0;
    while let Some(name) = todo.pop() {
        if name == ".." {
            out.pop();
            continue;
        }
        let next = out.join(&name);
        let md = match std::fs::symlink_metadata(&next) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Missing from here on: nothing below can be a link; the rest is lexical.
                out = next;
                while let Some(n) = todo.pop() {
                    if n == ".." {
                        out.pop();
                    } else {
                        out.push(n);
                    }
                }
                return Ok(out);
            }
            Err(e) => return Err(Error::io(&next, e)),
        };
        if !md.file_type().is_symlink() {
            out = next;
            continue;
        }
        if md.uid() != 0 && md.uid() != me {
            return Err(Error::bad(
                shown,
                format!(
                    "the {what} is reached through the symlink {} owned by uid {}, neither root \
                     nor the caller: not followed (name the {what} by its real path if you \
                     trust that link)",
                    next.display(),
                    md.uid()
                ),
            ));
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(Error::bad(shown, "too many levels of symlinks"));
        }
        let target = std::fs::read_link(&next).at(&next)?;
        if target.is_absolute() {
            out = PathBuf::from("/");
        }
        // `.` components are dropped; `..` is walked from the link's directory, as the kernel
        // does.
        for c in target.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    }
    Ok(out)
}

/// What a directory argument may be at its last name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// A symlink is refused; `hint` says how to allow it.
    Never { hint: &'static str },
    /// A symlink owned by root or the caller is followed.
    Owned,
}

/// Resolves a directory argument (see the module doc) to its canonical path, which need not
/// exist yet. `what` names the argument in messages ("destination", "state dir").
pub fn resolve_dir(arg: &Path, what: &str, follow: Follow) -> Result<PathBuf> {
    let abs = clean(arg)?;
    let (Some(parent), Some(name)) = (abs.parent(), abs.file_name()) else {
        return Ok(abs); // `/`
    };
    let parent = canonical_owned(parent, arg, what)?;
    last_name(arg, what, &parent.join(name), follow, 0)
}

/// Resolves `rel` (relative, only plain names: callers check) below the canonical directory
/// `base`, following no symlink on the way; the last name is treated as by [`resolve_dir`].
/// `shown` is how `base` is named in messages.
pub fn resolve_beneath(
    shown: &Path,
    base: &Path,
    rel: &Path,
    what: &str,
    follow: Follow,
) -> Result<PathBuf> {
    let names: Vec<OsString> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    let Some((last, dirs)) = names.split_last() else {
        return Ok(base.to_path_buf());
    };
    let mut cur = base.to_path_buf();
    let mut cur_shown = shown.to_path_buf();
    for n in dirs {
        cur.push(n);
        cur_shown.push(n);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() && is_switch_link(&cur) => {
                return Err(Error::bad(
                    &cur_shown,
                    format!(
                        "is switched by symlink: {} inside it is part of its release, not a {what} switched on its own (`upgrade` switches both in one rename; `sync --switch exchange` makes it a directory again)",
                        rel.display()
                    ),
                ))
            }
            Ok(md) if md.file_type().is_symlink() => {
                return Err(Error::bad(
                    &cur_shown,
                    format!("is a symlink, and a {what} is never reached through one"),
                ))
            }
            Ok(md) if !md.is_dir() => {
                return Err(Error::bad(&cur_shown, "exists and is not a directory"))
            }
            Ok(_) => {}
            // Missing: nothing below can be a symlink.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&cur_shown, e)),
        }
    }
    cur.push(last);
    cur_shown.push(last);
    last_name(&cur_shown, what, &cur, follow, 0)
}

/// Whether `p` is this program's switch link to a release in its home (see
/// [`crate::fsx::open_tree`]).
pub fn is_switch_link(p: &Path) -> bool {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return false;
    };
    let Ok(pfd) = crate::fsx::open_root(parent) else {
        return false;
    };
    let name = name.as_encoded_bytes();
    matches!(crate::fsx::switch_link_at(pfd.as_fd(), name), Ok(Some(_)))
        && crate::fsx::open_tree_at(pfd.as_fd(), name).is_ok()
}

/// `p` canonical, as `fs::canonicalize` makes it, but a destination switched by symlink
/// keeps its own name (the link is the destination; its target changes every switch).
pub fn canonical_tree(p: &Path) -> io::Result<PathBuf> {
    if let (Some(parent), Some(name)) = (p.parent(), p.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            std::env::current_dir()?
        } else {
            std::fs::canonicalize(parent)?
        };
        let full = parent.join(name);
        if is_switch_link(&full) {
            return Ok(full);
        }
    }
    std::fs::canonicalize(p)
}

/// The real path of the release `p` names when it is this program's switch link
/// (`PARENT/.jailsync-NAME/rel-N`).
pub fn release_path(p: &Path) -> Option<PathBuf> {
    let (parent, name) = (p.parent()?, p.file_name()?);
    let pfd = crate::fsx::open_root(parent).ok()?;
    let rel = crate::fsx::switch_link_at(pfd.as_fd(), name.as_encoded_bytes()).ok()??;
    let home = crate::names::home_name(name.as_encoded_bytes());
    Some(
        parent
            .join(crate::fsx::os(&home))
            .join(crate::fsx::os(&rel)),
    )
}

/// The last name of a directory argument: `full` (its parent canonical) as it is, a missing
/// name as it will be, or a symlink's target when `follow` allows.
fn last_name(
    shown: &Path,
    what: &str,
    full: &Path,
    follow: Follow,
    depth: usize,
) -> Result<PathBuf> {
    let md = match std::fs::symlink_metadata(full) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(full.to_path_buf()),
        Err(e) => return Err(Error::io(shown, e)),
    };
    // A destination switched by symlink is named by its link, whatever `follow` says: the
    // link is this program's, and its release is opened through its home (`fsx::open_tree`).
    if md.is_dir() || (md.file_type().is_symlink() && is_switch_link(full)) {
        return Ok(full.to_path_buf());
    }
    if !md.file_type().is_symlink() {
        return Err(Error::bad(
            shown,
            format!("{what} exists and is not a directory"),
        ));
    }
    match follow {
        Follow::Never { hint } => {
            return Err(Error::bad(shown, format!("{what} is a symlink ({hint})")))
        }
        Follow::Owned => {}
    }
    // Whoever owns the link chose where it leads: only root and the caller are trusted to.
    let me = rustix::process::geteuid().as_raw();
    if md.uid() != 0 && md.uid() != me {
        return Err(Error::bad(
            shown,
            format!(
                "{what} is a symlink owned by uid {}, neither root nor the caller: not followed",
                md.uid()
            ),
        ));
    }
    if depth >= MAX_LINKS {
        return Err(Error::bad(shown, "too many levels of symlinks"));
    }
    let target = std::fs::read_link(full).at(shown)?;
    let parent = full.parent().unwrap_or(Path::new("/"));
    // Each link of a chain is judged on its own; the target's own ancestors are followed.
    let next = clean(&parent.join(&target))?;
    let (Some(tp), Some(tn)) = (next.parent(), next.file_name()) else {
        return Ok(next);
    };
    let resolved = last_name(
        shown,
        what,
        &canonical_owned(tp, shown, what)?.join(tn),
        follow,
        depth + 1,
    )?;
    if !resolved.is_dir() {
        return Err(Error::bad(
            shown,
            format!(
                "{what} is a symlink to {}, which is not a directory",
                target.display()
            ),
        ));
    }
    Ok(resolved)
}

/// Whether `p` (canonical) is at or below a mount point strictly below `tree` (canonical),
/// read from the mount table now (see [`Loc::behind_mount_of`]).
fn behind_mount(p: &Path, tree: &Path) -> bool {
    MountTable::current().is_ok_and(|t| t.under(tree).any(|m| p.starts_with(&m.target)))
}

/// What identifies a directory that may not exist yet: its nearest existing ancestor's
/// identity, and the names below it still to be made.
#[derive(Debug, Clone)]
pub struct Loc {
    /// (st_dev, st_ino) of the existing directory, then of each ancestor up to `/`.
    chain: Vec<(u64, u64)>,
    /// (filesystem, path inside it) of the existing directory, when the mount table says.
    phys: Option<((u32, u32), PathBuf)>,
    /// Names below the existing directory that do not exist yet.
    tail: PathBuf,
    /// (filesystem, path inside it) that each mount strictly below the directory shows, and
    /// where it is mounted.
    mounts_below: Vec<((u32, u32), PathBuf, PathBuf)>,
}

impl Loc {
    /// The identity of `p` (a canonical path, see [`resolve_dir`]).
    pub fn of(p: &Path) -> Result<Loc> {
        // A destination switched by symlink is the release its link names.
        let release = release_path(p);
        let p = release.as_deref().unwrap_or(p);
        let mut tail = Vec::new();
        let mut cur = p;
        let fd = loop {
            let flags = HANDLE | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rfs::open(cur, flags, Mode::empty()) {
                Ok(fd) => break fd,
                Err(rustix::io::Errno::NOENT) if cur.parent().is_some() => {
                    tail.push(cur.file_name().unwrap_or_default().to_os_string());
                    cur = cur.parent().unwrap_or(Path::new("/"));
                }
                Err(e) => return Err(Error::io(cur, e.into())),
            }
        };
        let chain = ancestor_ids(fd.as_fd()).at(cur)?;
        let table = MountTable::current().ok();
        let phys = table.as_ref().and_then(|t| physical(t, fd.as_fd(), cur));
        // A directory still to be made holds no mount.
        let mounts_below = match &table {
            Some(t) if tail.is_empty() => t
                .under(cur)
                .filter(|m| !m.source_deleted())
                .map(|m| (m.dev, m.root.clone(), m.target.clone()))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Loc {
            chain,
            phys,
            tail: tail.iter().rev().collect(),
            mounts_below,
        })
    }

    fn id(&self) -> (u64, u64) {
        self.chain[0]
    }

    /// Whether both are the same directory.
    pub fn same(&self, other: &Loc) -> bool {
        self.id() == other.id() && self.tail == other.tail
    }

    /// Whether this is `other` or a directory below it.
    pub fn within(&self, other: &Loc) -> bool {
        if !other.tail.as_os_str().is_empty() {
            // `other` is partly still to be made: only a path through the same missing names
            // can be below it.
            return self.id() == other.id() && self.tail.starts_with(&other.tail);
        }
        if self.chain.contains(&other.id()) {
            return true;
        }
        match (&self.phys, &other.phys) {
            (Some((d1, p1)), Some((d2, p2))) => d1 == d2 && p1.starts_with(p2),
            _ => false,
        }
    }

    /// Whether this directory (at `path`) is reached through a mount point below `tree` (at
    /// `tree_path`) and is not `tree`'s own filesystem there: a place no sync of `tree`
    /// enters (its mount points are bounds, neither scanned, written nor moved; see
    /// [`crate::steps`]), so it may hold the source or the state dir (`sync /mnt/jail/ /`
    /// with the jail and the state dir mounted in the root). A bind mount of part of `tree`
    /// itself is still `tree`.
    pub fn behind_mount_of(&self, path: &Path, tree: &Loc, tree_path: &Path) -> bool {
        let tree_itself = match (&self.phys, &tree.phys) {
            (Some((d1, p1)), Some((d2, p2))) => d1 == d2 && p1.starts_with(p2),
            _ => true,
        };
        !tree_itself && behind_mount(path, tree_path)
    }

    /// Whether one is the other or below it, or holds a mount showing part of the other.
    pub fn overlaps(&self, other: &Loc) -> bool {
        self.within(other)
            || other.within(self)
            || self.mount_into(other).is_some()
            || other.mount_into(self).is_some()
    }

    /// A mount below this directory that shows `other`, part of it, or a directory holding it
    /// (where it is mounted).
    pub fn mount_into(&self, other: &Loc) -> Option<&Path> {
        let (dev, p) = other.phys.as_ref()?;
        let p = p.join(&other.tail);
        self.mounts_below
            .iter()
            .find(|(d, root, _)| d == dev && (p.starts_with(root) || root.starts_with(&p)))
            .map(|(_, _, target)| target.as_path())
    }
}

/// (st_dev, st_ino) of `dir` and of each ancestor reached by `..`, up to the root (whose `..`
/// is itself).
fn ancestor_ids(dir: std::os::fd::BorrowedFd<'_>) -> io::Result<Vec<(u64, u64)>> {
    let id = |fd: std::os::fd::BorrowedFd<'_>| -> io::Result<(u64, u64)> {
        let st = rfs::fstat(fd)?;
        // st_dev is narrower on some systems (i32 on macOS).
        #[allow(clippy::unnecessary_cast)]
        Ok((st.st_dev as u64, st.st_ino as u64))
    };
    let mut chain = vec![id(dir)?];
    let mut cur: Option<OwnedFd> = None;
    loop {
        let base = cur.as_ref().map_or(dir, |f| f.as_fd());
        let up = rfs::openat(
            base,
            c"..",
            HANDLE | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let i = id(up.as_fd())?;
        if chain.last() == Some(&i) {
            return Ok(chain);
        }
        chain.push(i);
        cur = Some(up);
    }
}

/// Where `dir` (opened from the canonical path `path`) lives inside its filesystem: the root of
/// its mount (from `table`, found by the mount id `statx` reports) joined with its path below
/// the mount point. None when the kernel cannot say.
#[cfg(target_os = "linux")]
fn physical(
    table: &MountTable,
    dir: std::os::fd::BorrowedFd<'_>,
    path: &Path,
) -> Option<((u32, u32), PathBuf)> {
    use rustix::fs::{AtFlags, StatxFlags};
    use std::os::unix::ffi::OsStrExt;
    let sx = rfs::statx(dir, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    if sx.stx_mask & StatxFlags::MNT_ID.bits() == 0 {
        return None;
    }
    let m = table
        .mounts
        .iter()
        .find(|m| u64::from(m.id) == sx.stx_mnt_id)?;
    if m.source_deleted() {
        return None;
    }
    let below = path.strip_prefix(&m.target).ok()?;
    let mut p = m.root.clone();
    if !below.as_os_str().as_bytes().is_empty() {
        p.push(below);
    }
    Some((m.dev, p))
}

/// No mount ids elsewhere (and no mount table reader yet, see `jail::os`): bind and null
/// mounts are then told apart only by (device, inode) of the directories themselves.
#[cfg(not(target_os = "linux"))]
fn physical(
    _table: &MountTable,
    _dir: std::os::fd::BorrowedFd<'_>,
    _path: &Path,
) -> Option<((u32, u32), PathBuf)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_dots_and_trailing_slashes() {
        for (given, want) in [
            ("/a/b/", "/a/b"),
            ("/a/b/.", "/a/b"),
            ("/a/./b//", "/a/b"),
            ("/a/b/..", "/a"),
            ("/a/b/../c/.", "/a/c"),
            ("/..", "/"),
            ("/", "/"),
        ] {
            assert_eq!(clean(Path::new(given)).unwrap(), Path::new(want), "{given}");
        }
    }

    #[test]
    fn a_symlinked_last_name_is_refused_whatever_the_spelling() {
        let t = tempfile::tempdir().unwrap();
        let t = t.path().canonicalize().unwrap();
        std::fs::create_dir(t.join("real")).unwrap();
        std::os::unix::fs::symlink(t.join("real"), t.join("link")).unwrap();
        let never = Follow::Never { hint: "no" };
        for s in ["link", "link/", "link/.", "link/./", "x/../link/"] {
            let arg = PathBuf::from(format!("{}/{s}", t.display()));
            let e = resolve_dir(&arg, "destination", never).unwrap_err();
            assert!(e.to_string().contains("is a symlink"), "{s}: {e}");
            let ok = resolve_dir(&arg, "destination", Follow::Owned).unwrap();
            assert_eq!(ok, t.join("real"), "{s}");
        }
        // Missing names resolve below their existing parent.
        let p = resolve_dir(&t.join("real/new/"), "destination", never).unwrap();
        assert_eq!(p, t.join("real/new"));
    }

    #[test]
    fn a_symlink_below_a_root_is_refused_even_when_following_the_last_name() {
        let t = tempfile::tempdir().unwrap();
        let t = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(t.join("else/pkg")).unwrap();
        std::os::unix::fs::symlink(t.join("else"), t.join("usr")).unwrap();
        let e = resolve_beneath(&t, &t, Path::new("usr/pkg"), "tree", Follow::Owned).unwrap_err();
        assert!(e.to_string().contains("is a symlink"), "{e}");
    }

    /// An ancestor symlink is followed only when root or the caller owns it, whatever the
    /// last name is; the refusal names the link and its owner.
    #[test]
    fn an_ancestor_symlink_owned_by_another_user_is_not_followed() {
        if !rustix::process::geteuid().is_root() {
            return; // chowning a link to another user needs root
        }
        let t = tempfile::tempdir().unwrap();
        let t = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(t.join("etc/sub")).unwrap();
        // A chain: mine -> theirs -> etc; "theirs" is another user's.
        std::os::unix::fs::symlink("etc", t.join("theirs")).unwrap();
        std::os::unix::fs::symlink("theirs", t.join("mine")).unwrap();
        std::os::unix::fs::lchown(t.join("theirs"), Some(1234), Some(1234)).unwrap();
        for arg in [
            "theirs/sub",
            "mine/sub",
            "mine/new/deeper",
            "etc/../mine/sub",
        ] {
            let e = resolve_dir(&t.join(arg), "destination", Follow::Owned).unwrap_err();
            let theirs = t.join("theirs");
            let want = format!("symlink {} owned by uid 1234", theirs.display());
            assert!(e.to_string().contains(&want), "{arg}: {e}");
        }
        // The same chain, all root's (the caller's): followed, `..` from the link's target.
        std::os::unix::fs::lchown(t.join("theirs"), Some(0), Some(0)).unwrap();
        let p = resolve_dir(&t.join("mine/sub"), "destination", Follow::Owned).unwrap();
        assert_eq!(p, t.join("etc/sub"));
        std::os::unix::fs::symlink("etc/sub", t.join("deep")).unwrap();
        let p = resolve_dir(&t.join("deep/../sub"), "destination", Follow::Owned).unwrap();
        // `deep/..` is cleaned lexically first (the user's spelling), as before.
        assert_eq!(p, t.join("sub"));
    }

    #[test]
    fn locations_compare_by_identity() {
        let t = tempfile::tempdir().unwrap();
        let t = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::os::unix::fs::symlink(t.join("a"), t.join("alias")).unwrap();
        let a = Loc::of(&t.join("a")).unwrap();
        let b = Loc::of(&t.join("a/b")).unwrap();
        // A symlink's own path names what it points to (canonicalization aside).
        let alias = Loc::of(&std::fs::canonicalize(t.join("alias")).unwrap()).unwrap();
        let new = Loc::of(&t.join("a/new/deeper")).unwrap();
        let other = Loc::of(&t.join("other")).unwrap();
        assert!(a.same(&alias) && b.within(&a) && !a.within(&b));
        assert!(new.within(&a) && !new.within(&b) && !new.same(&a));
        assert!(!other.overlaps(&a));
        assert!(Loc::of(&t.join("other/x")).unwrap().within(&other));
        assert!(!Loc::of(&t.join("otherx")).unwrap().within(&other));
    }
}
