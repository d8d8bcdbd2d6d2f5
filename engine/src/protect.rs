//! Configuration protection, like dpkg's conffiles or Gentoo's CONFIG_PROTECT.
//!
//! As root, pkgsrc's `PKG_SYSCONFDIR` is `/usr/pkg/etc`, inside the synced tree: a plain sync
//! would put the jail's defaults over the admin's edits. Protected entries (every tree's `etc/`
//! by default, plus globs) are merged three-way, with the *base* being the jail's version
//! jailsync last synced (its [`Print`]: type and content, recorded in the state dir per
//! destination after each successful run, see [`Base`]):
//!
//! | live vs base | jail vs base | result |
//! |---|---|---|
//! | same | any | the jail's (normal sync) |
//! | edited | same | live kept |
//! | edited | changed | live kept, the jail's written as `NAME.jailsync-new` beside it |
//! | edited | dropped | live kept |
//!
//! **Every type is compared** (invariant 11): a file by its content, a symlink by its target,
//! a device by its number, a directory, fifo or socket by its type alone. An admin who turned
//! `etc/a.conf` into a symlink to `/srv/conf/a.conf`, or into a directory, has edited it like
//! one who rewrote it. A kept directory is kept whole: everything below it is the admin's, so
//! no decision is made (and nothing planned) inside it. A jail directory kept out by an
//! admin's non-directory leaves its whole subtree out, and the base keeps its old records for
//! that subtree, so it is offered again. A live directory the jail dropped with no record in
//! the base (a base written before types were recorded, or a new one) is decided by its
//! contents, as it always was: it stays exactly when it holds something kept.
//!
//! With no base for a path (first run, or newly protected) a live entry that differs from the
//! jail counts as edited and the jail's changed. Decisions are made on the plan before the next
//! tree is staged: a kept entry is simply not replaced (its source entry then describes the live
//! one, so the staging links the live inode across, or makes a kept directory afresh and links
//! its contents, as for anything unchanged) and a kept entry the jail dropped is not deleted.
//! `*.jailsync-new` files are never synced nor deleted (the caller excludes them), and are
//! written after the switch (a rollback switches them away with the tree).
//!
//! **The base moves only for what was really applied** ([`finish`]): an entry whose jail version
//! could not be staged or applied, or whose `NAME.jailsync-new` could not be written (a name
//! too long with the suffix, no space), keeps its old record, so the next run offers the jail's
//! version again instead of taking it for seen.
//!
//! **An admin's own `NAME.jailsync-new`** (one that is neither what jailsync last offered nor
//! what it offers now) is never written over: it is renamed to the first free
//! `NAME.jailsync-new.N` (excluded from every sync like the suffix itself) and reported.
//!
//! Only content (and type) is merged: a metadata-only change (mode, owner, mtime) of a
//! protected entry whose content is the jail's is applied as for any entry.
//!
//! This file holds the model (rules, prints, verdicts, decisions); the rule itself is in
//! `merge`, the base store in `base`, the writing of `NAME.jailsync-new` in `beside` and
//! `conf-diff`'s diff in `diff`, all re-exported here as `protect::name`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::entry::{Ent, Entries, Entry, Hash, Kind};
use crate::fsx;
use crate::hash::hash_fd;
use crate::scan::Excludes;

mod base;
mod beside;
mod diff;
mod merge;

pub use base::{
    add_kept_new, base_path, base_prev_exists, install_base, load_kept, undo_base, undo_base_once,
    Base, Kept, GEN_BASE,
};
pub use diff::unified_diff;
pub use merge::{decide, finish, unapplied, Finished, SetAside};

/// Suffix of the jail's version of a kept file whose jail version changed too.
pub const NEW_SUFFIX: &str = ".jailsync-new";
/// The exclude pattern that keeps `*.jailsync-new` out of every sync (never copied, deleted
/// or compared).
pub const NEW_EXCLUDE: &str = "*.jailsync-new";
/// The exclude pattern for an admin's own `NAME.jailsync-new` set aside as
/// `NAME.jailsync-new.N`: the admin's, so never synced nor deleted either (and, unlike the
/// files jailsync writes, carried across a rollback as the live system's).
pub const ASIDE_EXCLUDE: &str = "*.jailsync-new.[0-9]*";

/// Whether an exclude pattern is one this program adds for its own files (`NAME.jailsync-new`
/// and the ones set aside), not one an admin gave: entries it matches are never made by
/// anyone else while a run stages.
pub fn is_own_pattern(p: &str) -> bool {
    p == NEW_EXCLUDE || p == ASIDE_EXCLUDE
}

/// Which paths are protected.
#[derive(Clone, Default)]
pub struct Rules {
    /// Every tree's top-level `etc/`.
    pub defaults: bool,
    globs: Excludes,
    have_globs: bool,
    /// The globs as given (a generation records them: its rollback knows what is protected).
    pub given: Vec<String>,
}

impl Rules {
    /// `globs` match the path relative to the root of the run (for `upgrade`, ROOT-relative:
    /// `usr/pkg/share/foo/*.conf`), with the same syntax as `--exclude`.
    pub fn new(defaults: bool, globs: &[String]) -> std::result::Result<Rules, globset::Error> {
        Ok(Rules {
            defaults,
            globs: Excludes::new(globs)?,
            have_globs: !globs.is_empty(),
            given: globs.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        !self.defaults && !self.have_globs
    }

    /// Whether paths outside `etc/` can be protected (by `--protect` globs).
    pub fn has_globs(&self) -> bool {
        self.have_globs
    }

    /// Is the file at `path` (relative to a tree whose root-relative name is `prefix`)
    /// protected?
    pub fn covers(&self, prefix: &[u8], path: &[u8]) -> bool {
        if self.defaults && path.starts_with(b"etc/") {
            return true;
        }
        if !self.have_globs {
            return false;
        }
        let full = if prefix.is_empty() {
            path.to_vec()
        } else {
            crate::entry::join(prefix, path)
        };
        let name = fsx::split_parent(path).1;
        self.globs.matches(&full, name, false)
    }
}

/// What was decided for one protected file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The admin's version stays; the jail's did not change since the last sync.
    Kept,
    /// The admin's version stays; the jail's is written as `NAME.jailsync-new`.
    KeptNew,
    /// The jail dropped it, the admin had edited it: it stays.
    KeptDropped,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Kept => "kept",
            Verdict::KeptNew => "kept-new",
            Verdict::KeptDropped => "kept-dropped",
        }
    }

    fn code(self) -> u8 {
        match self {
            Verdict::Kept => b'K',
            Verdict::KeptNew => b'N',
            Verdict::KeptDropped => b'D',
        }
    }

    fn from_code(c: u8) -> Option<Verdict> {
        Some(match c {
            b'K' => Verdict::Kept,
            b'N' => Verdict::KeptNew,
            b'D' => Verdict::KeptDropped,
            _ => return None,
        })
    }
}

/// What a protected entry is, as the three-way merge compares it: its type and, for the
/// types that have content, a digest of it (a file's blake3, a symlink target's, a device
/// number's). Directories, fifos and sockets are equal when their types are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Print {
    pub kind: Kind,
    pub digest: Hash,
}

impl Print {
    pub fn file(h: Hash) -> Print {
        Print {
            kind: Kind::File,
            digest: h,
        }
    }

    /// The print of a non-file entry (its content is in the entry itself).
    fn special(e: &Entry) -> Print {
        let digest = match e.kind {
            Kind::Symlink => *blake3::hash(e.target().unwrap_or_default()).as_bytes(),
            Kind::Char | Kind::Block => *blake3::hash(&e.rdev().to_le_bytes()).as_bytes(),
            _ => [0; 32],
        };
        Print {
            kind: e.kind,
            digest,
        }
    }

    /// The print of entry `e` at `path` under `root`, hashing a file whose hash is not known.
    fn of(root: BorrowedFd<'_>, path: &[u8], e: &Ent<'_>) -> io::Result<Print> {
        match (e.kind, e.hash) {
            (Kind::File, Some(h)) => Ok(Print::file(*h)),
            (Kind::File, None) => hash_at(root, path).map(Print::file),
            _ => Ok(Print::special(e)),
        }
    }

    /// The record code of its type. A file's is `B`, what every record of a version 1 base
    /// was (when only files were compared).
    fn code(&self) -> u8 {
        match self.kind {
            Kind::File => b'B',
            Kind::Dir => b'd',
            Kind::Symlink => b'l',
            Kind::Fifo => b'p',
            Kind::Char => b'c',
            Kind::Block => b'b',
            Kind::Socket => b's',
        }
    }

    fn kind_of_code(c: u8) -> Option<Kind> {
        Some(match c {
            b'B' => Kind::File,
            b'd' => Kind::Dir,
            b'l' => Kind::Symlink,
            b'p' => Kind::Fifo,
            b'c' => Kind::Char,
            b'b' => Kind::Block,
            b's' => Kind::Socket,
            _ => return None,
        })
    }
}

/// What `verify` compares a kept entry's metadata against: mode (with setuid, setgid and
/// sticky bits), owner and group, as the run kept them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
}

impl Meta {
    pub fn of(e: &Entry) -> Meta {
        Meta {
            mode: e.mode,
            uid: e.uid(),
            gid: e.gid(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Decision {
    /// Relative to the tree.
    pub path: Box<[u8]>,
    pub verdict: Verdict,
    /// What the live (kept) entry is, and its metadata.
    pub live: Print,
    pub live_meta: Meta,
    /// The jail's entry (None: the jail dropped it) and its print.
    pub jail: Option<(Entry, Print)>,
}

/// The protection decisions of one tree.
#[derive(Debug, Default)]
pub struct Decisions {
    pub list: Vec<Decision>,
    /// Jail entries left out below a kept entry (a jail directory kept out by the admin's
    /// non-directory): never applied, so the base keeps its records for them.
    pub unapplied: Vec<Box<[u8]>>,
}

fn hash_at(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<Hash> {
    let (parent, name) = fsx::split_parent(path);
    let d = fsx::open_dir_beneath(root, parent)?;
    let f = fsx::open_read_at(d.as_fd(), name)?;
    Ok(hash_fd(f.as_fd(), 0)?.0)
}

/// The live paths these rules protect in a scanned tree, for the last look before its switch
/// (`guard`): `etc` whole (new files there count too) and each entry the globs cover.
pub fn guard_paths(rules: &Rules, prefix: &[u8], dst: &Entries) -> Vec<Box<[u8]>> {
    let mut out: Vec<Box<[u8]>> = Vec::new();
    if rules.defaults && dst.search(b"etc").is_ok() {
        out.push(b"etc"[..].into());
    }
    if rules.have_globs {
        for e in dst.iter() {
            let inside_etc = rules.defaults && e.path.starts_with(b"etc/");
            if e.kind != Kind::Dir && !inside_etc && rules.covers(prefix, e.path) {
                out.push(e.path.into());
            }
        }
    }
    out
}

/// The mtime of the directory at `path` (opened without following a symlink), and a way to
/// set it back: a nested tree's switch renames inside its parent, which belongs to the tree
/// holding it and must keep the mtime that tree's switch gave it.
pub struct DirMtime {
    fd: std::os::fd::OwnedFd,
    mtime: (i64, u32),
}

impl DirMtime {
    pub fn of(path: &Path) -> io::Result<DirMtime> {
        let fd = fsx::open_root_nofollow(path)?;
        let st = fsx::fstat(fd.as_fd())?;
        Ok(DirMtime {
            fd,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
        })
    }

    pub fn restore(&self) -> io::Result<()> {
        fsx::set_mtime(self.fd.as_fd(), self.mtime.0, self.mtime.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_cover_etc_and_globs() {
        let r = Rules::new(true, &["usr/pkg/share/x/*.conf".into(), "*.rc".into()]).unwrap();
        assert!(r.covers(b"usr/pkg", b"etc/nginx/nginx.conf"));
        assert!(!r.covers(b"usr/pkg", b"share/etc/x"));
        assert!(r.covers(b"usr/pkg", b"share/x/a.conf"));
        assert!(!r.covers(b"var/db/pkg", b"share/x/a.conf"));
        assert!(r.covers(b"var/db/pkg", b"deep/down/boot.rc"));
        let none = Rules::new(false, &[]).unwrap();
        assert!(none.is_empty() && !none.covers(b"", b"etc/x"));
    }
}
