//! The switch around what must stay where it is. A whole-tree exchange moves everything in
//! the tree; some things must not move: a mount point below DST (the mount would leave the
//! live tree), an immutable or append-only entry (it cannot be renamed), our own home inside
//! the tree. Those are *bounds*. Their ancestors are *spines*: directories that stay in place
//! (their metadata set after), while every other child of a spine is exchanged whole, one
//! `RENAME_EXCHANGE` per largest subtree that holds no bound. With no bound at all but the
//! tree's root itself (DST a mount point), that is one exchange per top-level entry.
//!
//! A reader sees each exchanged subtree wholly old or wholly new; a mix only across
//! subtrees, for the microseconds between back-to-back calls (programs' directories last).

// stat field widths differ between targets; the casts are no-ops only on some.
#![allow(clippy::unnecessary_cast)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::entry::{join, split_parent, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;

/// Paths (relative to the tree, sorted) that stay where they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounds(Vec<Box<[u8]>>);

impl Bounds {
    pub fn new(mut paths: Vec<Box<[u8]>>) -> Bounds {
        paths.sort_unstable();
        paths.dedup();
        Bounds(paths)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn paths(&self) -> &[Box<[u8]>] {
        &self.0
    }

    pub fn is_bound(&self, p: &[u8]) -> bool {
        self.0.binary_search_by(|b| (**b).cmp(p)).is_ok()
    }

    /// `p` is a strict ancestor of a bound (the root always is, once there is one).
    pub fn is_spine(&self, p: &[u8]) -> bool {
        if p.is_empty() {
            return !self.0.is_empty();
        }
        let mut prefix = p.to_vec();
        prefix.push(b'/');
        let i = self.0.partition_point(|b| **b < *prefix);
        self.0.get(i).is_some_and(|b| b.starts_with(&prefix))
    }

    /// Every spine, root first, in path order.
    pub fn spines(&self) -> Vec<Box<[u8]>> {
        let mut out: Vec<Box<[u8]>> = Vec::new();
        for b in &self.0 {
            let mut p: &[u8] = b;
            while !p.is_empty() {
                p = split_parent(p).0;
                out.push(p.into());
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// One step of a switch by subtrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// In both trees: exchanged.
    Swap,
    /// Only in the new tree: moved in.
    In,
    /// Only in the old tree: moved out (into the tree being switched out).
    Out,
}

impl Step {
    pub fn word(self) -> &'static str {
        match self {
            Step::Swap => "swap",
            Step::In => "in",
            Step::Out => "out",
        }
    }

    pub fn from_word(w: &str) -> Option<Step> {
        Some(match w {
            "swap" => Step::Swap,
            "in" => Step::In,
            "out" => Step::Out,
            _ => return None,
        })
    }

    pub fn run(self, live: BorrowedFd<'_>, next: BorrowedFd<'_>, n: &[u8]) -> io::Result<()> {
        match self {
            Step::Swap => fsx::exchange_between(next, n, live, n),
            Step::In => fsx::move_noreplace(next, n, live, n),
            Step::Out => fsx::move_noreplace(live, n, next, n),
        }
    }

    pub fn undo(self, live: BorrowedFd<'_>, next: BorrowedFd<'_>, n: &[u8]) -> io::Result<()> {
        match self {
            Step::Swap => fsx::exchange_between(next, n, live, n),
            Step::In => fsx::move_noreplace(live, n, next, n),
            Step::Out => fsx::move_noreplace(next, n, live, n),
        }
    }

    /// Whether the step is still to be made, from where the inode it moves is now (`live_ino`:
    /// what the live tree holds at its path).
    pub fn pending(self, live_ino: Option<u64>, moved: u64) -> bool {
        match self {
            Step::Out => live_ino == Some(moved),
            Step::In | Step::Swap => live_ino != Some(moved),
        }
    }
}

/// A step at a path, the inode it moves (journaled, so a killed run can tell done from not
/// done), and the directory pair it runs in.
pub struct Item {
    pub path: Vec<u8>,
    pub step: Step,
    pub ino: u64,
    dir: usize,
}

/// A switch by subtrees, planned: its steps in the order they run, the directories they run
/// in (opened once, at planning), and the spines.
pub struct Steps {
    pub items: Vec<Item>,
    /// (live, from) per directory the steps run in.
    dirs: Vec<(OwnedFd, OwnedFd)>,
    pub spines: Vec<Box<[u8]>>,
}

/// Directories holding programs switch last, so a program never starts against the old
/// libraries after its own switch.
fn program_dir(path: &[u8]) -> bool {
    matches!(split_parent(path).1, b"bin" | b"sbin" | b"libexec")
}

fn is_dir_at(dir: BorrowedFd<'_>, n: &[u8]) -> bool {
    fsx::cstr(n).is_ok_and(|c| {
        fsx::lstat_at(dir, &c).is_ok_and(|st| fsx::kind_of(st.st_mode as u32) == Kind::Dir)
    })
}

fn ino_at(dir: BorrowedFd<'_>, n: &[u8]) -> io::Result<u64> {
    Ok(fsx::lstat_at(dir, &fsx::cstr(n)?)?.st_ino as u64)
}

impl Steps {
    /// Plans switching the tree `from` (open) with the live tree `live` (open, shown as
    /// `shown`) around `bounds`. `ours` names top-level entries of the live tree that are
    /// nobody's content (our homes): never moved.
    pub fn plan(
        live: OwnedFd,
        from: OwnedFd,
        bounds: &Bounds,
        ours: &dyn Fn(&[u8]) -> bool,
        shown: &Path,
    ) -> Result<Steps> {
        let mut s = Steps {
            items: Vec::new(),
            dirs: Vec::new(),
            spines: Vec::new(),
        };
        s.walk(Vec::new(), live, from, bounds, ours, shown)?;
        // Stable: depth-first order within each group.
        s.items.sort_by_key(|i| program_dir(&i.path));
        Ok(s)
    }

    fn walk(
        &mut self,
        rel: Vec<u8>,
        live: OwnedFd,
        from: OwnedFd,
        bounds: &Bounds,
        ours: &dyn Fn(&[u8]) -> bool,
        shown: &Path,
    ) -> Result<()> {
        let at = |p: &[u8]| shown.join(fsx::os(p));
        let mut names = fsx::list_dir(from.as_fd()).at(at(&rel))?;
        names.sort_unstable();
        let mut live_names: Vec<Vec<u8>> = fsx::list_dir(live.as_fd())
            .at(at(&rel))?
            .into_iter()
            .filter(|n| !(rel.is_empty() && ours(n)))
            .collect();
        live_names.sort_unstable();
        self.spines.push(rel.clone().into());
        let dir = self.dirs.len();
        let mut sub: Vec<(Vec<u8>, OwnedFd, OwnedFd)> = Vec::new();
        for n in &live_names {
            let p = join(&rel, n);
            if bounds.is_bound(&p) || names.binary_search(n).is_ok() {
                continue;
            }
            if bounds.is_spine(&p) {
                return Err(no_spine(&at(&p)));
            }
            let ino = ino_at(live.as_fd(), n).at(at(&p))?;
            self.items.push(Item {
                path: p,
                step: Step::Out,
                ino,
                dir,
            });
        }
        for n in &names {
            let p = join(&rel, n);
            if bounds.is_bound(&p) {
                continue;
            }
            let in_live = live_names.binary_search(n).is_ok();
            if bounds.is_spine(&p) {
                if !(in_live && is_dir_at(live.as_fd(), n) && is_dir_at(from.as_fd(), n)) {
                    return Err(no_spine(&at(&p)));
                }
                let l = fsx::open_subdir(live.as_fd(), n).at(at(&p))?;
                let f = fsx::open_subdir(from.as_fd(), n).at(at(&p))?;
                sub.push((p, l, f));
                continue;
            }
            let ino = ino_at(from.as_fd(), n).at(at(&p))?;
            self.items.push(Item {
                path: p,
                step: if in_live { Step::Swap } else { Step::In },
                ino,
                dir,
            });
        }
        self.dirs.push((live, from));
        for (p, l, f) in sub {
            self.walk(p, l, f, bounds, ours, shown)?;
        }
        Ok(())
    }

    fn fds(&self, i: &Item) -> (BorrowedFd<'_>, BorrowedFd<'_>) {
        let (l, f) = &self.dirs[i.dir];
        (l.as_fd(), f.as_fd())
    }

    /// Makes every step, back to back; if one fails, those made are undone (the tree is
    /// wholly old again) and the failing path is returned with the cause. Directories an
    /// unprivileged run owns but may not move are lent write permission for it (see [`Lent`]).
    pub fn run(&self) -> std::result::Result<(), (Vec<u8>, io::Error)> {
        let lent = self.lend();
        let r = self.run_steps();
        lent.give_back(
            |from_side, k| {
                let i = &self.items[k];
                let (l, f) = self.fds(i);
                // Where the object is now: a staged one in the live tree once its step was made.
                let made = r.is_ok();
                if from_side == made {
                    l
                } else {
                    f
                }
            },
            |k| split_parent(&self.items[k].path).1,
        );
        r
    }

    /// The directories of the steps this process may not move but owns, lent write
    /// permission (none for root).
    fn lend(&self) -> Lent {
        let mut lent = Lent::default();
        if rustix::process::geteuid().is_root() {
            return lent;
        }
        for (k, i) in self.items.iter().enumerate() {
            let (l, f) = self.fds(i);
            let n = split_parent(&i.path).1;
            if i.step != Step::Out {
                lent.lend(f, n, true, k);
            }
            if i.step != Step::In {
                lent.lend(l, n, false, k);
            }
        }
        lent
    }

    fn run_steps(&self) -> std::result::Result<(), (Vec<u8>, io::Error)> {
        for (k, i) in self.items.iter().enumerate() {
            let (l, f) = self.fds(i);
            if let Err(e) = i.step.run(l, f, split_parent(&i.path).1) {
                for j in self.items[..k].iter().rev() {
                    let (l, f) = self.fds(j);
                    let _ = j.step.undo(l, f, split_parent(&j.path).1);
                }
                return Err((i.path.clone(), e));
            }
        }
        Ok(())
    }

    /// Undoes every step (all were made), last first.
    pub fn undo(&self) -> io::Result<()> {
        self.items.iter().rev().try_for_each(|i| {
            let (l, f) = self.fds(i);
            i.step.undo(l, f, split_parent(&i.path).1)
        })
    }
}

/// Moving a directory to another parent needs write permission on it (its `..` changes),
/// which root has anyway. An unprivileged run lends that permission to the directories it
/// owns for the moves and sets their modes back right after (the only moment their mode
/// differs); one it does not own is refused before the switch ([`crate::switch::Home::cannot_move`]).
#[derive(Default)]
pub struct Lent(Vec<(bool, usize, u32)>);

impl Lent {
    /// Lends `n` in `dir` write permission if it is a directory of ours without it; `from_side`:
    /// it is the staged tree's. `k` names the step.
    pub fn lend(&mut self, dir: BorrowedFd<'_>, n: &[u8], from_side: bool, k: usize) {
        let Ok(c) = fsx::cstr(n) else { return };
        let Ok(st) = fsx::lstat_at(dir, &c) else {
            return;
        };
        let me = rustix::process::geteuid().as_raw();
        let mode = st.st_mode as u32;
        if fsx::kind_of(mode) != Kind::Dir || st.st_uid != me || mode & 0o200 != 0 {
            return;
        }
        let with_w = rustix::fs::Mode::from_raw_mode((mode | 0o200) & 0o7777);
        if rustix::fs::chmodat(dir, c.as_c_str(), with_w, rustix::fs::AtFlags::empty()).is_ok() {
            self.0.push((from_side, k, mode & 0o7777));
        }
    }

    /// Sets every lent mode back: `dir_of(from_side, k)` is the directory the object is in
    /// now, `name_of(k)` its name.
    pub fn give_back<'a>(
        self,
        dir_of: impl Fn(bool, usize) -> BorrowedFd<'a>,
        name_of: impl Fn(usize) -> &'a [u8],
    ) {
        for (from_side, k, mode) in self.0 {
            if let Ok(c) = fsx::cstr(name_of(k)) {
                let m = rustix::fs::Mode::from_raw_mode(mode);
                let _ = rustix::fs::chmodat(
                    dir_of(from_side, k),
                    c.as_c_str(),
                    m,
                    rustix::fs::AtFlags::empty(),
                );
            }
        }
    }
}

fn no_spine(p: &Path) -> Error {
    Error::bad(
        p,
        "holds a mount point or an immutable entry below it, but is not a directory in both the live tree and the new release: the switch cannot go around it (unmount what is mounted below it, or make the release hold a directory there)",
    )
}

/// Finishes the steps of a journal a killed run left (each step is atomic, and the journal
/// names the inode each one moves: a step is pending while that inode is not yet where the
/// step takes it). `live` and `from` are the trees' roots.
pub fn finish(
    live: BorrowedFd<'_>,
    from: BorrowedFd<'_>,
    steps: &[(Step, Vec<u8>, u64)],
    shown: &Path,
) -> Result<()> {
    for (s, p, want) in steps {
        let (parent, n) = split_parent(p);
        let at = shown.join(fsx::os(p));
        let l = fsx::open_dir_beneath(live, parent).at(&at)?;
        let f = fsx::open_dir_beneath(from, parent).at(&at)?;
        let c = fsx::cstr(n).at(&at)?;
        let now = fsx::lstat_at(l.as_fd(), &c).ok().map(|st| st.st_ino as u64);
        if s.pending(now, *want) {
            s.run(l.as_fd(), f.as_fd(), n).at(&at)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[&str]) -> Bounds {
        Bounds::new(v.iter().map(|s| s.as_bytes().into()).collect())
    }

    #[test]
    fn spines_are_the_strict_ancestors_of_bounds() {
        let x = b(&["usr/local", "var/lib/docker", "proc"]);
        assert!(x.is_spine(b""));
        assert!(x.is_spine(b"usr"));
        assert!(x.is_spine(b"var/lib"));
        assert!(!x.is_spine(b"usr/local"), "a bound is not its own spine");
        assert!(!x.is_spine(b"us"));
        assert!(!x.is_spine(b"var/li"));
        assert!(!x.is_spine(b"etc"));
        assert!(x.is_bound(b"proc") && !x.is_bound(b"pro"));
        let s: Vec<Vec<u8>> = x.spines().iter().map(|p| p.to_vec()).collect();
        let want: Vec<Vec<u8>> = ["", "usr", "var", "var/lib"].map(|p| p.into()).to_vec();
        assert_eq!(s, want);
        assert!(!Bounds::default().is_spine(b""));
    }

    #[test]
    fn a_sibling_sorting_between_a_spine_and_its_bound_does_not_hide_it() {
        // "usr-x" sorts between "usr" and "usr/…": the search must still find "usr/local".
        let x = b(&["usr-x", "usr/local"]);
        assert!(x.is_spine(b"usr"));
        assert!(!x.is_spine(b"usr-x"));
    }

    fn tree(root: &Path, files: &[&str]) {
        for f in files {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if f.ends_with('/') {
                std::fs::create_dir_all(&p).unwrap();
            } else {
                std::fs::write(&p, f.as_bytes()).unwrap();
            }
        }
    }

    fn open(p: &Path) -> OwnedFd {
        fsx::open_root(p).unwrap()
    }

    #[test]
    fn the_switch_goes_around_bounds_and_undoes_cleanly() {
        let t = tempfile::tempdir().unwrap();
        let (live, next) = (t.path().join("live"), t.path().join("next"));
        tree(
            &live,
            &["usr/bin/a", "usr/lib/l", "usr/local/keep", "etc/x", "old"],
        );
        tree(
            &next,
            &["usr/bin/a", "usr/lib/l2", "usr/local/", "etc/y", "new"],
        );
        std::fs::write(next.join("usr/bin/a"), b"new a").unwrap();
        let bounds = b(&["usr/local"]);
        let s = Steps::plan(open(&live), open(&next), &bounds, &|_| false, &live).unwrap();
        let words: Vec<(String, Step)> = s
            .items
            .iter()
            .map(|i| (String::from_utf8_lossy(&i.path).into_owned(), i.step))
            .collect();
        assert_eq!(
            words,
            vec![
                ("old".into(), Step::Out),
                ("etc".into(), Step::Swap),
                ("new".into(), Step::In),
                ("usr/lib".into(), Step::Swap),
                ("usr/bin".into(), Step::Swap),
            ],
            "programs last; the bound and its spines never move"
        );
        s.run().unwrap();
        assert_eq!(std::fs::read(live.join("usr/bin/a")).unwrap(), b"new a");
        assert!(live.join("usr/local/keep").exists(), "the bound stayed");
        assert!(live.join("new").exists() && !live.join("old").exists());
        assert!(next.join("old").exists() && next.join("usr/lib/l").exists());
        s.undo().unwrap();
        assert_eq!(std::fs::read(live.join("usr/bin/a")).unwrap(), b"usr/bin/a");
        assert!(live.join("old").exists() && !live.join("new").exists());
    }

    #[test]
    fn a_spine_that_is_not_a_directory_in_the_release_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (live, next) = (t.path().join("live"), t.path().join("next"));
        tree(&live, &["var/lib/docker/x"]);
        tree(&next, &["var"]);
        let bounds = b(&["var/lib/docker"]);
        let e = Steps::plan(open(&live), open(&next), &bounds, &|_| false, &live)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("var"), "{e}");
    }

    #[test]
    fn killed_steps_are_finished_from_the_journal_inodes() {
        let t = tempfile::tempdir().unwrap();
        let (live, next) = (t.path().join("live"), t.path().join("next"));
        tree(&live, &["a/x", "b/y", "gone"]);
        tree(&next, &["a/x2", "b/y2"]);
        let s = Steps::plan(
            open(&live),
            open(&next),
            &Bounds::default(),
            &|_| false,
            &live,
        )
        .unwrap();
        let journal: Vec<(Step, Vec<u8>, u64)> = s
            .items
            .iter()
            .map(|i| (i.step, i.path.clone(), i.ino))
            .collect();
        // Killed after the first step.
        let first = &s.items[0];
        let (l, f) = s.fds(first);
        first.step.run(l, f, &first.path).unwrap();
        finish(open(&live).as_fd(), open(&next).as_fd(), &journal, &live).unwrap();
        assert!(live.join("a/x2").exists() && live.join("b/y2").exists());
        assert!(!live.join("gone").exists() && next.join("gone").exists());
        // Finishing again changes nothing.
        finish(open(&live).as_fd(), open(&next).as_fd(), &journal, &live).unwrap();
        assert!(live.join("a/x2").exists() && next.join("a/x").exists());
    }
}
