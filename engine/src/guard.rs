//! The last look before a switch at what the admin owns: protected configuration and excluded
//! paths. The next tree holds them as they were when the run scanned (protected files) or
//! staged (excluded ones); a file written, replaced, created or removed there since would be
//! left behind in the old tree by the exchange — an edit silently undone. Such a run switches
//! nothing instead (run it again: it then decides on the new version).
//!
//! What is not a change: a live inode the next tree shares (an edit in place is carried by
//! the link itself), and metadata the run set on a shared inode (hence ctime is not compared).
//!
//! The look is cheap on big subtrees (an excluded cache of 100k files): the live tree is walked
//! directory by directory, each name `lstat`ed once relative to its open directory; the next
//! tree is asked about a directory's files through one open of that directory; and what the
//! scan saw below a directory is merged with its listing, not looked up per name.

// stat field widths differ between targets; the casts are no-ops only on some.
#![allow(clippy::unnecessary_cast)]

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::entry::{join, Ent, Entries, Kind};
use crate::fsx::{self, split_parent};
use crate::protect::Rules;
use crate::scan::Excludes;
use crate::stage::Dirs;

/// What changed, and how (for the message).
#[derive(Debug, PartialEq)]
pub struct Changed {
    pub path: Vec<u8>,
    pub how: &'static str,
}

/// Which entries that appear after the scan are the admin's (see [`Look::appeared`]).
#[derive(Clone, Copy, Default)]
pub struct Watch<'a> {
    /// Those a protection glob matches.
    pub protected: Option<Protected<'a>>,
    /// Those an exclude pattern matches: only where an admin gave one (the program's own
    /// patterns match only what it makes itself).
    pub excluded: bool,
}

/// The protection rules a tree's run decided with, for entries that appear after its scan.
#[derive(Clone, Copy)]
pub struct Protected<'a> {
    pub rules: &'a Rules,
    /// The tree's root-relative name (globs match `prefix/path`).
    pub prefix: &'a [u8],
}

/// Looks at every live entry under `guard` (paths scanned into `dst`: protected files, or
/// directories whose whole subtree is protected), every excluded entry of `holds_excluded`
/// (never scanned: compared with what was linked into the next tree), and, where the run has
/// excludes an admin gave (`watch_new`) or protection globs, every entry that appeared anywhere
/// since the scan and matches one (see [`Look::appeared`]). The first change found.
pub fn changed_since_scan(
    live: BorrowedFd<'_>,
    next: BorrowedFd<'_>,
    dst: &Entries,
    guard: &[Box<[u8]>],
    excludes: &Excludes,
    holds_excluded: &[Box<[u8]>],
    watch: Watch<'_>,
) -> io::Result<Option<Changed>> {
    let Watch {
        protected,
        excluded: watch_new,
    } = watch;
    let g = Look {
        live,
        next_root: next,
        next: RefCell::new(Dirs::new(next)),
        dst,
        excludes,
    };
    for p in guard {
        if let Some(c) = g.top(p)? {
            return Ok(Some(c));
        }
    }
    if let Some(c) = g.excluded(holds_excluded)? {
        return Ok(Some(c));
    }
    let globs = protected.filter(|p| p.rules.has_globs());
    if (watch_new && !excludes.is_empty()) || globs.is_some() {
        let new = New {
            holds_excluded,
            protected: globs,
        };
        return g.appeared(b"", live, true, &new);
    }
    Ok(None)
}

/// What makes an entry that appeared since the scan the admin's (see [`Look::appeared`]).
struct New<'a> {
    holds_excluded: &'a [Box<[u8]>],
    protected: Option<Protected<'a>>,
}

impl Look<'_> {
    /// The excluded entries of the directories that held some at the scan.
    fn excluded(&self, holds_excluded: &[Box<[u8]>]) -> io::Result<Option<Changed>> {
        let (g, live, excludes) = (self, self.live, self.excludes);
        if excludes.is_empty() {
            return Ok(None);
        }
        for d in holds_excluded {
            let ld = match fsx::open_dir_beneath(live, d) {
                Ok(fd) => fd,
                // Gone since the scan, with what it held: lost if the next tree links any.
                Err(e) if absent(&e) => match g.lost(d, None, &[], true)? {
                    None => continue,
                    c => return Ok(c),
                },
                Err(e) => return Err(e),
            };
            let mut names = fsx::list_dir(ld.as_fd())?;
            names.sort_unstable();
            // An excluded entry the next tree links but the live directory lost: the switch
            // would bring it back.
            if let Some(c) = g.lost(d, Some(ld.as_fd()), &names, true)? {
                return Ok(Some(c));
            }
            for name in names {
                // Homes, stores and temporary names are nobody's content (invariant 13).
                if crate::names::is_reserved_top(&name) {
                    continue;
                }
                let Some(now) = id_at(ld.as_fd(), &name)? else {
                    continue;
                };
                let path = join(d, &name);
                if excludes.matches(&path, &name, now.kind == Kind::Dir) {
                    let c = g.entry(&path, (ld.as_fd(), &name), Some(now), None, false)?;
                    if c.is_some() {
                        return Ok(c);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Entries that appeared in the live directory `rel` (open as `ld`) or below it since the
    /// scan and are the admin's: excluded (`*.log` written into a directory that held no
    /// excluded entry at the scan, or anywhere in a directory made since) or protected by a
    /// glob. The next tree does not hold them, so the switch would leave them in the old tree
    /// (and `--no-rollback` would delete them): a change. Every directory the scan saw is
    /// listed once and merged with what the scan saw there; only new names are looked at.
    /// `scanned`: the scan saw `rel` (else it is new, and so is everything in it).
    fn appeared(
        &self,
        rel: &[u8],
        ld: BorrowedFd<'_>,
        scanned: bool,
        new: &New<'_>,
    ) -> io::Result<Option<Changed>> {
        let mut names = fsx::list_dir(ld)?;
        names.sort_unstable();
        let seen = if scanned {
            self.children(rel)
        } else {
            Vec::new()
        };
        let mut k = 0;
        for name in &names {
            if crate::names::is_reserved_top(name) {
                continue;
            }
            while k < seen.len() && seen[k].0 < name.as_slice() {
                k += 1;
            }
            let path = join(rel, name);
            let was = (k < seen.len() && seen[k].0 == name.as_slice()).then(|| seen[k].1);
            let Some(now) = id_at(ld, name)? else {
                continue;
            };
            let is_dir = now.kind == Kind::Dir;
            if let Some(j) = was {
                // Seen at the scan: only its directory is walked further (a scanned
                // directory is never an excluded one: those are not scanned).
                if is_dir && self.dst.at(j).kind == Kind::Dir {
                    if let Some(c) = self.appeared_below(&path, ld, name, true, new)? {
                        return Ok(Some(c));
                    }
                }
                continue;
            }
            if self.excludes.matches(&path, name, is_dir) {
                // Excluded entries present at the scan are the other pass's.
                if new
                    .holds_excluded
                    .binary_search_by(|d| (**d).cmp(rel))
                    .is_ok()
                {
                    continue;
                }
                return Ok(Some(Changed {
                    path,
                    how: "created during the run",
                }));
            }
            let protected = new
                .protected
                .is_some_and(|p| !is_dir && p.rules.covers(p.prefix, &path));
            if protected && !self.linked_across(&path, now)? {
                return Ok(Some(Changed {
                    path,
                    how: "created during the run",
                }));
            }
            if is_dir {
                if let Some(c) = self.appeared_below(&path, ld, name, false, new)? {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// [`Look::appeared`] for the subdirectory `name` of `ld`; one gone or replaced since it
    /// was listed is not looked into.
    fn appeared_below(
        &self,
        path: &[u8],
        ld: BorrowedFd<'_>,
        name: &[u8],
        scanned: bool,
        new: &New<'_>,
    ) -> io::Result<Option<Changed>> {
        match fsx::open_subdir(ld, name) {
            Ok(sub) => self.appeared(path, sub.as_fd(), scanned, new),
            Err(e) if absent(&e) || e.raw_os_error() == Some(libc::ELOOP) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the next tree holds this very live inode at `rel`.
    fn linked_across(&self, rel: &[u8], now: Id) -> io::Result<bool> {
        let (parent, leaf) = split_parent(rel);
        let n = match self.next.borrow_mut().get(parent) {
            Ok(nd) => id_at(nd, leaf)?,
            Err(e) if absent(&e) => None,
            Err(e) => return Err(e),
        };
        Ok(n.is_some_and(|n| (n.kind, n.dev, n.ino) == (now.kind, now.dev, now.ino)))
    }
}

struct Look<'a> {
    live: BorrowedFd<'a>,
    next_root: BorrowedFd<'a>,
    /// Asked about non-directories only, a directory's files one after another.
    next: RefCell<Dirs<'a>>,
    dst: &'a Entries,
    excludes: &'a Excludes,
}

/// What is compared of an entry found now.
#[derive(Clone, Copy)]
struct Id {
    kind: Kind,
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
}

/// A name missing, or a path through something that is no longer a directory.
fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR))
}

fn id_of(st: &rustix::fs::Stat) -> Id {
    Id {
        kind: fsx::kind_of(st.st_mode as u32),
        dev: st.st_dev as u64,
        ino: st.st_ino as u64,
        size: st.st_size as u64,
        mtime: st.st_mtime as i64,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

/// `name` in the open directory `dir`, not followed; None when absent.
fn id_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Id>> {
    match fsx::lstat_at(dir, &fsx::cstr(name)?) {
        Ok(st) => Ok(Some(id_of(&st))),
        Err(e) if absent(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The first index in `lo..hi` of `dst` whose path is not below `key`.
fn lower_bound(dst: &Entries, mut lo: usize, mut hi: usize, key: &[u8]) -> usize {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if dst.path(mid) < key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// `prefix` with its last byte, a `/`, made the next byte up (`0`): every path starting with
/// `prefix` sorts below it, and nothing else between those and it.
fn past(prefix: &[u8]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    *k.last_mut().expect("a prefix ends with '/'") = b'/' + 1;
    k
}

impl Look<'_> {
    /// A guarded path, from the root: it, and everything below it, was scanned.
    fn top(&self, rel: &[u8]) -> io::Result<Option<Changed>> {
        let was = self.dst.search(rel).ok().map(|j| self.dst.at(j));
        let (parent, name) = split_parent(rel);
        let pd = match fsx::open_dir_beneath(self.live, parent) {
            Ok(fd) => fd,
            Err(e) if absent(&e) => return self.entry(rel, (self.live, name), None, was, true),
            Err(e) => return Err(e),
        };
        let now = if name.is_empty() {
            Some(id_of(&fsx::fstat(pd.as_fd())?))
        } else {
            id_at(pd.as_fd(), name)?
        };
        self.entry(rel, (pd.as_fd(), name), now, was, true)
    }

    /// `rel`, a name in an open live directory (`at`), as it is now and as the scan saw it.
    /// `scanned`: the scan listed this subtree (protected), so a live entry is compared with
    /// its scan; otherwise (excluded) only with what the next tree links.
    fn entry(
        &self,
        rel: &[u8],
        at: (BorrowedFd<'_>, &[u8]),
        now: Option<Id>,
        was: Option<Ent<'_>>,
        scanned: bool,
    ) -> io::Result<Option<Changed>> {
        let changed = |how| {
            Ok(Some(Changed {
                path: rel.to_vec(),
                how,
            }))
        };
        // What the next tree holds at `rel` (asked only below excluded entries, which the
        // scan did not see).
        let in_next = || -> io::Result<Option<Id>> {
            let (parent, leaf) = split_parent(rel);
            match self.next.borrow_mut().get(parent) {
                Ok(nd) => id_at(nd, leaf),
                Err(e) if absent(&e) => Ok(None),
                Err(e) => Err(e),
            }
        };
        let Some(now) = now else {
            return match was {
                Some(_) => changed("removed during the run"),
                // Gone since its directory was listed, but linked into the next tree.
                None if !scanned && in_next()?.is_some() => changed("removed during the run"),
                None => Ok(None),
            };
        };
        if now.kind == Kind::Dir {
            if scanned && was.is_none_or(|w| w.kind != Kind::Dir) {
                return changed("created during the run");
            }
            if !scanned && in_next()?.is_some_and(|n| n.kind != Kind::Dir) {
                return changed("created or replaced during the run");
            }
            let ld = fsx::open_dir_beneath(at.0, at.1)?;
            return self.dir(rel, ld.as_fd(), scanned);
        }
        // The next tree shares this very inode: whatever was written to it is carried.
        if self.linked_across(rel, now)? {
            return Ok(None);
        }
        match was {
            None => changed(if scanned {
                "created during the run"
            } else {
                "created or replaced during the run"
            }),
            Some(w) => {
                let same = w.kind == now.kind
                    && w.ino == now.ino
                    && w.size == now.size
                    && w.mtime() == (now.mtime, now.mtime_nsec);
                if same {
                    Ok(None)
                } else {
                    changed("written or replaced during the run")
                }
            }
        }
    }

    /// The live directory `rel`, open as `ld`. Its files before its subdirectories, so the
    /// next tree's directory is opened once for all of them.
    fn dir(&self, rel: &[u8], ld: BorrowedFd<'_>, scanned: bool) -> io::Result<Option<Changed>> {
        let mut names = fsx::list_dir(ld)?;
        names.sort_unstable();
        // What the scan saw here, merged with the listing (both in name order): each name's
        // scanned entry, and the scanned names the directory lacks now.
        let mut was = vec![None; names.len()];
        if scanned {
            let seen = self.children(rel);
            let mut i = 0;
            for (name, j) in seen {
                while i < names.len() && names[i].as_slice() < name {
                    i += 1;
                }
                if i < names.len() && names[i] == name {
                    was[i] = Some(j);
                } else {
                    return Ok(Some(Changed {
                        path: self.dst.path(j).to_vec(),
                        how: "removed during the run",
                    }));
                }
            }
        }
        // Below an excluded entry the next tree holds what staging linked: a name it has and
        // the live directory lacks was removed since.
        if !scanned {
            if let Some(c) = self.lost(rel, Some(ld), &names, false)? {
                return Ok(Some(c));
            }
        }
        let mut dirs = Vec::new();
        for (name, was) in names.iter().zip(was) {
            // This program's own names (an older version's temporary files, homes) are nobody's
            // content.
            if was.is_none() && crate::names::is_reserved_top(name) {
                continue;
            }
            let path = join(rel, name);
            let now = id_at(ld, name)?;
            let is_dir = now.is_some_and(|n| n.kind == Kind::Dir);
            // Excluded entries are not scanned: the excluded pass looks at them.
            if scanned && self.excludes.matches(&path, name, is_dir) {
                continue;
            }
            let was = was.map(|j| self.dst.at(j));
            if is_dir {
                dirs.push((path, name, now, was));
            } else if let Some(c) = self.entry(&path, (ld, name), now, was, scanned)? {
                return Ok(Some(c));
            }
        }
        for (path, name, now, was) in dirs {
            if let Some(c) = self.entry(&path, (ld, name), now, was, scanned)? {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The first name of the next tree's directory `rel` that the live one (`live`, listed
    /// as `live_names`, sorted) lost: with `excluded_only`, only names the excludes match (the
    /// directory holds excluded entries beside the tree's own, which the run itself adds),
    /// and also one still there but no longer excluded (a directory-only pattern's directory
    /// replaced by a file or symlink, which the per-name pass then takes for the tree's own).
    fn lost(
        &self,
        rel: &[u8],
        live: Option<BorrowedFd<'_>>,
        live_names: &[Vec<u8>],
        excluded_only: bool,
    ) -> io::Result<Option<Changed>> {
        let nd = match fsx::open_dir_beneath(self.next_root, rel) {
            Ok(fd) => fd,
            // Not in the next tree (made during the run, or its parent was not kept).
            Err(e) if absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        for name in fsx::list_dir(nd.as_fd())? {
            let listed = live_names.binary_search(&name).is_ok();
            if listed && !excluded_only {
                // Below an excluded entry the per-name pass compares what is there.
                continue;
            }
            let path = join(rel, &name);
            if excluded_only {
                let Some(n) = id_at(nd.as_fd(), &name)? else {
                    continue;
                };
                if !self.excludes.matches(&path, &name, n.kind == Kind::Dir) {
                    continue;
                }
                if listed {
                    let now = match live {
                        Some(l) => id_at(l, &name)?,
                        None => None,
                    };
                    match now {
                        Some(now) if (now.kind == Kind::Dir) == (n.kind == Kind::Dir) => continue,
                        Some(_) => {
                            return Ok(Some(Changed {
                                path,
                                how: "replaced during the run",
                            }))
                        }
                        // Gone since it was listed.
                        None => {}
                    }
                }
            }
            return Ok(Some(Changed {
                path,
                how: "removed during the run",
            }));
        }
        Ok(None)
    }

    /// The scanned entries directly below the directory `rel` (name, index), in name order.
    /// A subtree is one range of the path-sorted list, but a child's own entries need not
    /// follow it at once (`a-b` and `a.c` sort between `a` and `a/…`): each child's subtree is
    /// stepped over with one search, so every entry is looked at by its parent alone.
    fn children(&self, rel: &[u8]) -> Vec<(&[u8], usize)> {
        let dst = self.dst;
        let prefix = join(rel, b"");
        let (mut j, end) = if rel.is_empty() {
            (dst.search(b"").map_or_else(|i| i, |i| i + 1), dst.len())
        } else {
            let start = lower_bound(dst, 0, dst.len(), &prefix);
            (start, lower_bound(dst, start, dst.len(), &past(&prefix)))
        };
        let mut out = Vec::new();
        while j < end {
            let p = dst.path(j);
            let rest = &p[prefix.len()..];
            match memchr::memchr(b'/', rest) {
                None => {
                    out.push((rest, j));
                    j += 1;
                }
                Some(k) => j = lower_bound(dst, j, end, &past(&p[..prefix.len() + k + 1])),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan_tree, ScanOpts};
    use std::fs;
    use std::path::{Path, PathBuf};

    /// `etc` is protected and `big/` excluded (at any depth: `lib/big`, and `etc/d1/big` inside
    /// the protected one). Several names sort between a directory and its own entries
    /// (`etc-x`, `etc.bak`, `d2.old`, `d3.z` come before `etc/…`, `d2/…`, `d3/…`), so a
    /// directory's entries do not follow it at once in the path-sorted scan.
    const FILES: &[&str] = &[
        "etc/a",
        "etc/d1/b",
        "etc/d1/d2/c",
        "etc/d1/d2/d3/e",
        "etc/d1/d2/d3/f",
        "etc/d1/d2/d3.z",
        "etc/d1/d2.old",
        "etc/d1/big/x",
        "etc/d1-x/g",
        "etc/d1.bak",
        "etc/p/q/r",
        "etc.bak/h",
        "etc-x",
        "big/a",
        "big/d1/b",
        "big/d1/d2/c",
        "big/d1/d2/d3/e",
        "big/d1.bak",
        "lib/k",
        "lib/big/m",
    ];

    struct Fixture {
        _t: tempfile::TempDir,
        live: PathBuf,
        next: PathBuf,
        dst: Entries,
        holds_excluded: Vec<Box<[u8]>>,
        excludes: Excludes,
    }

    /// Makes `next` what staging makes of an unchanged tree: its directories, every file a
    /// link to the live inode.
    fn link_tree(from: &Path, to: &Path) {
        fs::create_dir(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let t = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                link_tree(&e.path(), &t);
            } else {
                fs::hard_link(e.path(), t).unwrap();
            }
        }
    }

    fn fixture() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        for f in FILES {
            let p = live.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, f).unwrap();
        }
        let next = t.path().join("next");
        link_tree(&live, &next);
        let excludes = Excludes::new(&["big/".to_string()]).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let opts = ScanOpts {
            excludes: &excludes,
            xattrs: false,
            defer_xattrs: false,
            ours: &[],
            mounts: &[],
        };
        let scan = scan_tree(&live, &pool, &opts).unwrap();
        Fixture {
            _t: t,
            live,
            next,
            dst: scan.entries,
            holds_excluded: scan.holds_excluded,
            excludes,
        }
    }

    fn look(f: &Fixture) -> Option<Changed> {
        let live = fsx::open_root_nofollow(&f.live).unwrap();
        let next = fsx::open_root_nofollow(&f.next).unwrap();
        changed_since_scan(
            live.as_fd(),
            next.as_fd(),
            &f.dst,
            &[b"etc"[..].into()],
            &f.excludes,
            &f.holds_excluded,
            Watch {
                protected: None,
                excluded: true,
            },
        )
        .unwrap()
    }

    /// A new inode at `p` (an editor's write to a temporary name and rename over).
    fn replace(p: &Path) {
        let tmp = p.with_extension("swp");
        fs::write(&tmp, "new").unwrap();
        fs::rename(&tmp, p).unwrap();
    }

    #[test]
    // A table of cases, one per line: its length is the table's, not a sequence of steps.
    #[allow(clippy::too_many_lines)]
    fn every_change_under_protected_and_excluded_dirs_is_found_at_any_depth() {
        use std::io::Write;
        type Change = fn(&Path);
        let cases: &[(&str, Change, Option<&str>)] = &[
            ("nothing", |_| {}, None),
            // Written in place: the next tree links that very inode, which carries it.
            (
                "rewrite protected in place",
                |l| {
                    let mut f = fs::OpenOptions::new()
                        .append(true)
                        .open(l.join("etc/d1/d2/d3/e"))
                        .unwrap();
                    f.write_all(b"more").unwrap();
                },
                None,
            ),
            (
                "rewrite excluded in place",
                |l| fs::write(l.join("big/d1/d2/c"), "changed").unwrap(),
                None,
            ),
            // Outside both: the sync itself decides on those.
            (
                "unguarded",
                |l| {
                    fs::remove_file(l.join("lib/k")).unwrap();
                    fs::write(l.join("lib/new"), "n").unwrap();
                    fs::write(l.join("etc.bak/h"), "n").unwrap();
                },
                None,
            ),
            ("replace at 1", |l| replace(&l.join("etc/a")), Some("etc/a")),
            (
                "replace at 4",
                |l| replace(&l.join("etc/d1/d2/d3/f")),
                Some("etc/d1/d2/d3/f"),
            ),
            (
                "replace excluded at 1",
                |l| replace(&l.join("big/a")),
                Some("big/a"),
            ),
            (
                "replace excluded at 4",
                |l| replace(&l.join("big/d1/d2/d3/e")),
                Some("big/d1/d2/d3/e"),
            ),
            (
                "remove at 1",
                |l| fs::remove_file(l.join("etc/a")).unwrap(),
                Some("etc/a"),
            ),
            (
                "remove at 2",
                |l| fs::remove_file(l.join("etc/d1/b")).unwrap(),
                Some("etc/d1/b"),
            ),
            (
                "remove at 3",
                |l| fs::remove_file(l.join("etc/d1/d2/c")).unwrap(),
                Some("etc/d1/d2/c"),
            ),
            (
                "remove at 4",
                |l| fs::remove_file(l.join("etc/d1/d2/d3/e")).unwrap(),
                Some("etc/d1/d2/d3/e"),
            ),
            (
                "remove at 3, no sibling sorts between",
                |l| fs::remove_file(l.join("etc/p/q/r")).unwrap(),
                Some("etc/p/q/r"),
            ),
            (
                "remove a directory",
                |l| fs::remove_dir_all(l.join("etc/d1/d2/d3")).unwrap(),
                Some("etc/d1/d2/d3"),
            ),
            (
                "remove the protected directory",
                |l| fs::remove_dir_all(l.join("etc")).unwrap(),
                Some("etc"),
            ),
            (
                "add at 1",
                |l| fs::write(l.join("etc/new"), "n").unwrap(),
                Some("etc/new"),
            ),
            (
                "add at 3",
                |l| fs::write(l.join("etc/d1/d2/new"), "n").unwrap(),
                Some("etc/d1/d2/new"),
            ),
            // Issue 19 item 4: excluded entries made where the scan saw none.
            (
                "excluded directory made in a directory without excluded entries",
                |l| fs::create_dir(l.join("etc.bak/big")).unwrap(),
                Some("etc.bak/big"),
            ),
            (
                "excluded directory made inside a directory made during the run",
                |l| fs::create_dir_all(l.join("lib/new/big")).unwrap(),
                Some("lib/new/big"),
            ),
            (
                "add a directory at 2",
                |l| fs::create_dir(l.join("etc/d1/new")).unwrap(),
                Some("etc/d1/new"),
            ),
            (
                "a directory where a file was",
                |l| {
                    fs::remove_file(l.join("etc/d1/d2/c")).unwrap();
                    fs::create_dir(l.join("etc/d1/d2/c")).unwrap();
                },
                Some("etc/d1/d2/c"),
            ),
            (
                "add excluded at 1",
                |l| fs::write(l.join("big/new"), "n").unwrap(),
                Some("big/new"),
            ),
            (
                "add excluded at 4",
                |l| fs::write(l.join("big/d1/d2/d3/new"), "n").unwrap(),
                Some("big/d1/d2/d3/new"),
            ),
            (
                "add excluded below unprotected",
                |l| fs::write(l.join("lib/big/new"), "n").unwrap(),
                Some("lib/big/new"),
            ),
            (
                "add excluded below protected",
                |l| fs::write(l.join("etc/d1/big/new"), "n").unwrap(),
                Some("etc/d1/big/new"),
            ),
            (
                "remove excluded at 1",
                |l| fs::remove_file(l.join("big/a")).unwrap(),
                Some("big/a"),
            ),
            (
                "remove excluded at 4",
                |l| fs::remove_file(l.join("big/d1/d2/d3/e")).unwrap(),
                Some("big/d1/d2/d3/e"),
            ),
            (
                "remove an excluded directory",
                |l| fs::remove_dir_all(l.join("big/d1/d2")).unwrap(),
                Some("big/d1/d2"),
            ),
            (
                "remove the excluded top",
                |l| fs::remove_dir_all(l.join("lib/big")).unwrap(),
                Some("lib/big"),
            ),
            (
                "an excluded directory replaced by a symlink",
                |l| {
                    fs::remove_dir_all(l.join("lib/big")).unwrap();
                    std::os::unix::fs::symlink("/nonexistent", l.join("lib/big")).unwrap();
                },
                Some("lib/big"),
            ),
            (
                "an excluded file replaced by an empty directory",
                |l| {
                    fs::remove_file(l.join("big/d1.bak")).unwrap();
                    fs::create_dir(l.join("big/d1.bak")).unwrap();
                },
                Some("big/d1.bak"),
            ),
            (
                "remove the directory holding an excluded one",
                |l| fs::remove_dir_all(l.join("lib")).unwrap(),
                Some("lib/big"),
            ),
            (
                "remove excluded below protected",
                |l| fs::remove_file(l.join("etc/d1/big/x")).unwrap(),
                Some("etc/d1/big/x"),
            ),
            (
                "replace excluded below protected",
                |l| replace(&l.join("etc/d1/big/x")),
                Some("etc/d1/big/x"),
            ),
        ];
        let mut wrong = Vec::new();
        for (name, change, want) in cases {
            let f = fixture();
            change(&f.live);
            let got = look(&f);
            let got = got.map(|c| (String::from_utf8_lossy(&c.path).into_owned(), c.how));
            if got.as_ref().map(|g| g.0.as_str()) != *want {
                wrong.push(format!("{name}: {got:?}, not {want:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
