//! The switch by symlink: DST is a symlink `NAME -> .jailsync-NAME/rel-N` to a release kept in
//! its home, and a switch is one `rename(2)` of a new symlink over it — atomic on every POSIX
//! system, with or without `RENAME_EXCHANGE`. A release keeps one real path from the moment it
//! goes live until it is pruned: a program that resolved its own path (Node's main module,
//! `$ORIGIN`, `/proc/self/exe`, Python's script directory — not its prefix, which CPython
//! takes from the executable's path with only a final symlink resolved) goes on loading from
//! the release it started in, where an exchange would hand it the next release's files under
//! the same path.
//!
//! Generations keep their ids and records: generation N's tree is the release its alias names
//! (`gen-N -> rel-K` inside the home; likewise `undone-N`, `kept-N`), or a directory of that
//! name made by the exchange. A directory DST is converted by exchanging it with the new link
//! (one `RENAME_EXCHANGE`: never lacking, never torn); back, by exchanging the link with a
//! directory (`--switch exchange`).
//!
//! The home is 0711 while it holds releases: programs of every user must reach them; nothing
//! in it can be listed, and `next` and the records stay 0700.

use std::os::fd::{AsFd, OwnedFd};

use super::{Home, Method, JOURNAL, NEXT};
use crate::entry::Kind;
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::names::{is_rel_name, link_target, rel_of_target, REL_PREFIX};

/// Where a new symlink is made before it is renamed over DST.
const SWAP: &[u8] = b"swap";

/// A switch by symlink, journaled: the release going live, and what DST was (the release its
/// link named, or a directory this switch converts).
#[derive(Debug, Clone)]
pub(crate) struct LinkSwitch {
    pub rel: Vec<u8>,
    pub old: Option<Vec<u8>>,
}

impl Home {
    /// The release DST's switch link names now; `None` when DST is a directory.
    pub fn live_release(&self) -> Option<Vec<u8>> {
        fsx::switch_link_at(self.live_parent.as_fd(), &self.live_name)
            .ok()
            .flatten()
    }

    /// Where the live tree really is: DST, or the release its link names (where the kernel
    /// shows what is mounted in it).
    pub fn live_real(&self) -> std::path::PathBuf {
        self.live_release()
            .map_or_else(|| self.live.clone(), |r| self.path.join(fsx::os(&r)))
    }

    /// The directory in the home that holds the tree `name` (`gen-N`, `undone-N`, `kept-N`):
    /// the release its alias names, or `name` itself.
    pub fn tree_name(&self, name: &[u8]) -> Vec<u8> {
        self.alias_of(name).unwrap_or_else(|| name.to_vec())
    }

    fn alias_of(&self, name: &[u8]) -> Option<Vec<u8>> {
        let c = fsx::cstr(name).ok()?;
        let st = fsx::lstat_at(self.fd.as_fd(), &c).ok()?;
        if fsx::kind_of(st.st_mode) != Kind::Symlink {
            return None;
        }
        let t = fsx::read_link_at(self.fd.as_fd(), &c).ok()?;
        rel_of_target(None, &t).map(<[u8]>::to_vec)
    }

    /// Opens the tree `name` in the home (through its alias, see [`Home::tree_name`]).
    pub fn open_in(&self, name: &[u8]) -> Result<OwnedFd> {
        let real = self.tree_name(name);
        fsx::open_subdir(self.fd.as_fd(), &real).at(self.path.join(fsx::os(&real)))
    }

    /// Removes the tree `name` from the home: an alias goes, and the release it named once
    /// nothing else names it (neither DST's link nor another alias).
    pub fn remove_in(&self, name: &[u8]) -> Result<()> {
        let alias = self.alias_of(name);
        fsx::remove_tree_at(self.fd.as_fd(), name).at(self.path.join(fsx::os(name)))?;
        if let Some(rel) = alias {
            if !self.named_releases().contains(&rel) {
                fsx::remove_tree_at(self.fd.as_fd(), &rel).at(self.path.join(fsx::os(&rel)))?;
            }
        }
        Ok(())
    }

    /// Releases something still names: DST's link and every alias in the home.
    fn named_releases(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.live_release().into_iter().collect();
        for n in fsx::list_dir(self.fd.as_fd()).unwrap_or_default() {
            out.extend(self.alias_of(&n));
        }
        out
    }

    /// Releases in the home nothing names any more (a run killed between unlinking an alias and
    /// removing its release, or a removal deferred while programs ran from it).
    pub fn unnamed_releases(&self) -> Vec<Vec<u8>> {
        let named = self.named_releases();
        let mut out: Vec<Vec<u8>> = fsx::list_dir(self.fd.as_fd())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| is_rel_name(n) && !named.contains(n))
            .collect();
        out.sort();
        out
    }

    /// Makes the home traversable by everyone (0711: releases run from inside it), or private
    /// again (0700) once it holds none and DST is a directory.
    pub(super) fn set_reach(&self) -> Result<()> {
        let st = fsx::fstat(self.fd.as_fd()).at(&self.path)?;
        let holds = self.method == Method::Link
            || self.live_release().is_some()
            || fsx::list_dir(self.fd.as_fd())
                .unwrap_or_default()
                .iter()
                .any(|n| is_rel_name(n));
        let want = if holds { 0o711 } else { 0o700 };
        if st.st_mode & 0o777 != want {
            fsx::chmod_fd(self.fd.as_fd(), want).at(&self.path)?;
        }
        Ok(())
    }

    /// The journal lines and the pending switch by symlink of the tree `home/from` (`next`, or
    /// a generation) over DST. The release is named for the run (`rel-N` for `next` whose old
    /// tree becomes generation N); a generation that is a directory is first moved to a
    /// release of its own, leaving its alias, so the home is whole at every step.
    pub(super) fn prepare_link(&self, from: &[u8], to: &[u8]) -> Result<(Vec<u8>, LinkSwitch)> {
        let old = self.live_release();
        let rel = match self.alias_of(from) {
            Some(rel) => rel,
            None => {
                let id = to.iter().filter(|b| b.is_ascii_digit()).copied();
                let mut rel = REL_PREFIX.to_vec();
                rel.extend(id);
                if from != NEXT {
                    rel.extend_from_slice(b"-back");
                }
                rel
            }
        };
        let mut j = Vec::new();
        j.extend_from_slice(format!("rel {}\n", super::hex(&rel)).as_bytes());
        let old_word = old.as_deref().map_or_else(|| "dir".into(), super::hex);
        j.extend_from_slice(format!("old {old_word}\n").as_bytes());
        Ok((j, LinkSwitch { rel, old }))
    }

    /// After the journal: the release gets its name, and the new link is made in the home.
    pub(super) fn ready_link(&self, from: &[u8], l: &LinkSwitch) -> Result<()> {
        let shown = self.path.join(fsx::os(&l.rel));
        if self.alias_of(from).is_none() {
            // A release of that name nothing names is a killed run's leftover: never reused.
            if self.holds(&l.rel) && self.live_release().as_ref() != Some(&l.rel) {
                fsx::remove_tree_at(self.fd.as_fd(), &l.rel).at(&shown)?;
            }
            fsx::rename_at(self.fd.as_fd(), from, self.fd.as_fd(), &l.rel).at(&shown)?;
            if from != NEXT {
                fsx::symlink_at(&l.rel, self.fd.as_fd(), from).at(&shown)?;
            }
        }
        let _ = fsx::unlink_at(self.fd.as_fd(), SWAP);
        let target = link_target(&self.live_name, &l.rel);
        fsx::symlink_at(&target, self.fd.as_fd(), SWAP).at(self.path.join("swap"))
    }

    /// The switch itself: the new link renamed over DST's (one `rename(2)`), or exchanged with
    /// the directory DST is (the conversion).
    pub(super) fn swap_link(&self, l: &LinkSwitch) -> std::io::Result<()> {
        let (home, parent) = (self.fd.as_fd(), self.live_parent.as_fd());
        match l.old {
            Some(_) => fsx::rename_at(home, SWAP, parent, &self.live_name),
            None => fsx::exchange_between(home, SWAP, parent, &self.live_name),
        }
    }

    /// Undoes [`Home::swap_link`]: DST names its old release (or directory) again, and `next`
    /// is where it was.
    pub(super) fn unswap_link(&self, from: &[u8], l: &LinkSwitch) -> Result<()> {
        let (home, parent) = (self.fd.as_fd(), self.live_parent.as_fd());
        match &l.old {
            Some(old) => {
                let _ = fsx::unlink_at(home, SWAP);
                let target = link_target(&self.live_name, old);
                fsx::symlink_at(&target, home, SWAP).at(&self.path)?;
                fsx::rename_at(home, SWAP, parent, &self.live_name).at(&self.live)?;
            }
            None => fsx::exchange_between(home, SWAP, parent, &self.live_name).at(&self.live)?,
        }
        self.unready_link(from, l)
    }

    /// Puts `next` back under its name and drops the unused link: the state before
    /// [`Home::ready_link`].
    pub(super) fn unready_link(&self, from: &[u8], l: &LinkSwitch) -> Result<()> {
        let _ = fsx::unlink_at(self.fd.as_fd(), SWAP);
        if from == NEXT && !self.holds(NEXT) && self.live_release().as_ref() != Some(&l.rel) {
            let _ = fsx::rename_at(self.fd.as_fd(), &l.rel, self.fd.as_fd(), NEXT);
        }
        Ok(())
    }

    /// Completes a made switch by symlink (idempotent: a killed run's recovery repeats it):
    /// the tree DST was becomes `to` (an alias of its release, or the converted directory
    /// under that name), the generation switched in loses its alias, the journal goes.
    pub(super) fn finish_link(&self, from: &[u8], to: &[u8], l: &LinkSwitch) -> Result<()> {
        let home = self.fd.as_fd();
        let shown = self.path.join(fsx::os(to));
        if self.durable {
            fsx::fsync(self.live_parent.as_fd()).at(&self.live)?;
        }
        match &l.old {
            Some(old) => {
                if self.alias_of(to).as_ref() != Some(old) {
                    let _ = fsx::remove_tree_at(home, to);
                    fsx::symlink_at(old, home, to).at(&shown)?;
                }
                let _ = fsx::unlink_at(home, SWAP);
            }
            None if self.holds(SWAP) => {
                let _ = fsx::remove_tree_at(home, to);
                fsx::rename_at(home, SWAP, home, to).at(&shown)?;
            }
            // An emulated exchange killed before its last rename: the old tree is aside.
            None => {
                if let Some(aside) = super::aside::aside_in(home).filter(|_| !self.holds(to)) {
                    fsx::rename_at(home, &aside, home, to).at(&shown)?;
                }
            }
        }
        if from != NEXT && self.alias_of(from).as_ref() == Some(&l.rel) {
            fsx::unlink_at(home, from).at(self.path.join(fsx::os(from)))?;
        }
        if self.durable {
            fsx::fsync(home).at(&self.path)?;
        }
        let _ = fsx::unlink_at(home, super::PREMETA.as_bytes());
        fsx::unlink_at(home, JOURNAL.as_bytes()).at(self.path.join(JOURNAL))?;
        self.set_reach()
    }

    /// Finishes (DST names the release already) or undoes (it does not) a switch by symlink a
    /// killed run left journaled.
    pub(super) fn recover_link(&self, from: &[u8], to: &[u8], l: &LinkSwitch) -> Result<()> {
        if self.live_release().as_ref() == Some(&l.rel) {
            self.finish_link(from, to, l)?;
            let _ = self.discard_next();
            return Ok(());
        }
        self.unready_link(from, l)?;
        fsx::unlink_at(self.fd.as_fd(), JOURNAL.as_bytes()).at(self.path.join(JOURNAL))?;
        self.abandon()
    }

    /// Reads the `rel` and `old` journal lines back.
    pub(super) fn link_from_journal(rel: Option<Vec<u8>>, old: Option<&str>) -> Option<LinkSwitch> {
        let old = match old? {
            "dir" => None,
            h => Some(super::unhex(h)?),
        };
        Some(LinkSwitch { rel: rel?, old })
    }
}

/// Refuses what cannot become a symlink: a mount point, `/`, a tree whose home is inside it.
pub(super) fn cannot_link(live: &std::path::Path, why: &str) -> Error {
    Error::bad(
        live,
        format!(
            "cannot be switched by symlink: {why} (it keeps the exchange; pass --switch exchange)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::super::SwitchBy;
    use super::*;
    use crate::testkit::write_tree as tree;

    /// `P/live` switched by symlink once (release `rel-1`), and `next` staged for run 2.
    fn linked() -> (tempfile::TempDir, std::path::PathBuf, Home) {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        tree(&live, &[("bin/tool", "old")]);
        let home = Home::open_as(&live, Some(SwitchBy::Link)).unwrap();
        home.make_next().unwrap();
        tree(&home.next_path(), &[("bin/tool", "v1")]);
        home.switch_in(1).unwrap();
        assert_eq!(home.live_release().as_deref(), Some(&b"rel-1"[..]));
        home.make_next().unwrap();
        tree(&home.next_path(), &[("bin/tool", "v2")]);
        (t, live, home)
    }

    fn read(p: std::path::PathBuf) -> String {
        fs::read_to_string(p).unwrap()
    }

    #[test]
    fn a_link_switch_killed_before_its_rename_is_undone() {
        let (_t, live, home) = linked();
        let p = home.prepare_in(2).unwrap();
        assert_eq!(p.method(), Method::Link);
        drop(p); // killed: journal written, release named, new link made, not renamed
        home.recover().unwrap();
        assert_eq!(read(live.join("bin/tool")), "v1");
        assert_eq!(home.live_release().as_deref(), Some(&b"rel-1"[..]));
        let names = fsx::list_dir(home.fd.as_fd()).unwrap();
        for n in [&b"rel-2"[..], SWAP, JOURNAL.as_bytes(), NEXT] {
            assert!(
                !names.iter().any(|x| x == n),
                "{} left",
                String::from_utf8_lossy(n)
            );
        }
    }

    #[test]
    fn a_link_switch_killed_after_its_rename_is_finished() {
        let (_t, live, home) = linked();
        let p = home.prepare_in(2).unwrap();
        home.exchange(&p).unwrap();
        drop(p); // killed before the old release got its alias
        home.recover().unwrap();
        assert_eq!(read(live.join("bin/tool")), "v2");
        assert_eq!(home.tree_name(b"gen-2"), b"rel-1");
        assert_eq!(read(home.gen_path(2).join("bin/tool")), "v1");
        assert!(!home.io_path(JOURNAL).exists());
    }

    #[test]
    fn a_failed_later_tree_unswaps_the_link_and_puts_next_back() {
        let (_t, live, home) = linked();
        let p = home.prepare_in(2).unwrap();
        home.exchange(&p).unwrap();
        home.unexchange(&p).unwrap();
        assert_eq!(read(live.join("bin/tool")), "v1");
        assert_eq!(read(home.next_path().join("bin/tool")), "v2");
        assert!(home.unnamed_releases().is_empty());
    }

    #[test]
    fn removing_an_alias_removes_its_release_unless_live() {
        let (_t, _live, home) = linked();
        home.switch_in(2).unwrap();
        assert_eq!(home.tree_name(b"gen-2"), b"rel-1");
        home.remove_in(b"gen-2").unwrap();
        assert!(
            !home.path.join("rel-1").exists(),
            "an unnamed release was left"
        );
        assert!(
            home.path.join("rel-2").is_dir(),
            "the live release was removed"
        );
    }

    #[test]
    fn only_this_programs_link_forms_are_releases() {
        assert_eq!(
            rel_of_target(Some(b"pkg"), b".jailsync-pkg/rel-3"),
            Some(&b"rel-3"[..])
        );
        assert_eq!(rel_of_target(Some(b"pkg"), b".jailsync-other/rel-3"), None);
        assert_eq!(rel_of_target(Some(b"pkg"), b".jailsync-pkg/rel-3/.."), None);
        assert_eq!(
            rel_of_target(Some(b"pkg"), b"/abs/.jailsync-pkg/rel-3"),
            None
        );
        assert_eq!(rel_of_target(None, b"rel-2-back"), Some(&b"rel-2-back"[..]));
        assert_eq!(rel_of_target(None, b"../rel-2"), None);
        assert!(!is_rel_name(b"rel-"));
    }
}
