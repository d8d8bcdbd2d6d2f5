//! Protected configuration the admin changed since the sync, carried across a rollback with
//! the three-way rule of an upgrade (as dpkg keeps conffile edits across a downgrade): the
//! admin's file goes with the restored tree, so merging a `NAME.jailsync-new` never blocks
//! the rollback of a release.
//!
//! For each protected file modified (or replaced) since the sync, with the base the sync
//! recorded (what the jail offered), the admin's file A and the generation's G:
//! - G is A (one inode, an edit in place of a file both trees share): nothing to do;
//! - G is the base: the release being restored has what the admin started from, so A takes
//!   G's place;
//! - else both changed it: A takes G's place and G is kept beside it as
//!   `NAME.jailsync-new`, listed for `conf-diff` after the switch.
//!
//! A file the admin created since, where the sync's protection rules (recorded with the
//! generation) cover it, is linked into the generation too, when the generation has its
//! directory and nothing of its own at that path.
//!
//! Anything else changed since the sync still refuses the rollback: only what the release
//! owns can.

// stat field widths differ between targets; the casts are no-ops only on some.
#![allow(clippy::unnecessary_cast)]

use std::os::fd::AsFd;

use super::{Changed, RolledBack};
use crate::entry::Kind;
use crate::error::{IoContext, Result};
use crate::fsx;
use crate::journal::StateDir;
use crate::protect::{Base, Print, NEW_SUFFIX};
use crate::switch::Home;

/// One protected file carried into the generation.
#[derive(Debug, Clone)]
pub struct ConfCarry {
    pub path: Box<[u8]>,
    /// The generation's own version goes beside as `NAME.jailsync-new` (both changed it).
    pub aside: bool,
    /// Created by the admin since the sync: the generation has nothing there.
    pub new: bool,
    /// The admin's file as the check saw it (inode, size, mtime): looked at again before the
    /// switch (not its ctime: linking it into the generation moves that).
    seen: (u64, i64, i64, i64),
    print: Print,
    meta: crate::protect::Meta,
    /// The generation's version, written beside when `aside`.
    beside: (Print, crate::protect::Meta),
}

/// Moves the protected files among `rb.changed` into `rb.conf`, deciding each by the rule
/// above; the rest stay changes that refuse the rollback.
pub fn plan(home: &Home, rb: &mut RolledBack, state: &StateDir) -> Result<()> {
    let base = Base::load(state, &home.live)?;
    let rules = rules_of_last_sync(home);
    let live = fsx::open_tree(&home.live).at(&home.live)?;
    let Ok(gen) = home.open_in(&Home::gen_name(rb.generation.id)) else {
        return Ok(());
    };
    let mut rest = Vec::new();
    for ch in std::mem::take(&mut rb.changed) {
        let covered = |p: &[u8]| rules.as_ref().is_some_and(|(r, pre)| r.covers(pre, p));
        let decided = match base.get(&ch.path) {
            Some(b) if is_content_change(&ch) => {
                decide(live.as_fd(), gen.as_fd(), &ch.path, Some(b))
            }
            _ if ch.what == "created since the sync" && covered(&ch.path) => {
                decide(live.as_fd(), gen.as_fd(), &ch.path, None)
            }
            _ => None,
        };
        match decided {
            Some(Some(c)) => rb.conf.push(c),
            Some(None) => {}
            None => rest.push(ch),
        }
    }
    rb.changed = rest;
    Ok(())
}

/// The protection rules the newest sync recorded with its generation (none recorded: none).
fn rules_of_last_sync(home: &Home) -> Option<(crate::protect::Rules, Vec<u8>)> {
    let newest = super::list(home).ok()?.last()?.id;
    let info = std::fs::read_to_string(super::meta_io(home, newest).join("info")).ok()?;
    let field = |k: &'static str| info.lines().filter_map(move |l| l.strip_prefix(k));
    let defaults = field("protect_defaults=").next()? == "1";
    let prefix = crate::switch::unhex(field("protect_prefix=").next()?)?;
    let globs: Vec<String> = field("protect=").map(String::from).collect();
    let rules = crate::protect::Rules::new(defaults, &globs).ok()?;
    Some((rules, prefix))
}

fn seen(st: &rustix::fs::Stat) -> (u64, i64, i64, i64) {
    (
        st.st_ino as u64,
        st.st_size as i64,
        st.st_mtime as i64,
        st.st_mtime_nsec as i64,
    )
}

fn is_content_change(ch: &Changed) -> bool {
    matches!(
        ch.what,
        "modified since the sync" | "replaced since the sync"
    )
}

/// The carry of `path` (Some(None): nothing to carry), or None when it cannot be carried
/// (then it stays a change since the sync): the admin's regular file against the
/// generation's, for a file the jail has (`base`, its print at the sync); for one the admin
/// created (no base), where the generation has its directory and nothing at its path.
fn decide(
    live: std::os::fd::BorrowedFd<'_>,
    gen: std::os::fd::BorrowedFd<'_>,
    path: &[u8],
    base: Option<&Print>,
) -> Option<Option<ConfCarry>> {
    let (parent, name) = fsx::split_parent(path);
    let c = fsx::cstr(name).ok()?;
    let ldir = fsx::open_dir_beneath(live, parent).ok()?;
    let gdir = fsx::open_dir_beneath(gen, parent).ok()?;
    let a = fsx::lstat_at(ldir.as_fd(), &c).ok()?;
    let g = fsx::lstat_at(gdir.as_fd(), &c).ok();
    let file = |st: &rustix::fs::Stat| fsx::kind_of(st.st_mode) == Kind::File;
    let print = |d: std::os::fd::BorrowedFd<'_>| -> Option<Print> {
        let fd = fsx::open_read_at(d, name).ok()?;
        let (h, _) = crate::hash::hash_fd(fd.as_fd(), 0).ok()?;
        Some(Print::file(h))
    };
    let meta = |st: &rustix::fs::Stat| crate::protect::Meta::of(&fsx::entry_from_stat(st));
    if !file(&a) {
        return None;
    }
    let theirs = match (base, &g) {
        (None, None) => None,
        (Some(_), Some(g)) if file(g) => {
            // One inode (an edit in place of a file both trees share): already carried.
            if (a.st_dev, a.st_ino) == (g.st_dev, g.st_ino) {
                return Some(None);
            }
            Some((print(gdir.as_fd())?, meta(g)))
        }
        _ => return None,
    };
    let ours = print(ldir.as_fd())?;
    Some(Some(ConfCarry {
        path: path.into(),
        aside: matches!((base, &theirs), (Some(b), Some((t, _))) if t != b),
        new: base.is_none(),
        seen: seen(&a),
        print: ours,
        meta: meta(&a),
        beside: theirs.unwrap_or((ours, meta(&a))),
    }))
}

/// Makes the carry in generation `id` (before its switch): each admin's file linked in place
/// of the generation's, the generation's kept beside where both changed it; the directories'
/// mtimes set back (they are the old tree's, restored exactly).
pub fn carry(home: &Home, id: u64, conf: &[ConfCarry]) -> Result<()> {
    if conf.is_empty() {
        return Ok(());
    }
    let gen = home.open_in(&Home::gen_name(id))?;
    let live = fsx::open_tree(&home.live).at(&home.live)?;
    let gpath = home.gen_path(id);
    let meta = fsx::MetaOpts {
        owner: fsx::geteuid_is_root(),
        xattrs: true,
    };
    for c in conf {
        let (parent, name) = fsx::split_parent(&c.path);
        let at = gpath.join(fsx::os(&c.path));
        let gdir = fsx::open_dir_beneath(gen.as_fd(), parent).at(&at)?;
        let ldir = fsx::open_dir_beneath(live.as_fd(), parent).at(&at)?;
        let st = fsx::fstat(gdir.as_fd()).at(&at)?;
        let mut new = name.to_vec();
        new.extend_from_slice(NEW_SUFFIX.as_bytes());
        if c.aside {
            let _ = fsx::remove_tree_at(gdir.as_fd(), &new);
            fsx::rename_at(gdir.as_fd(), name, gdir.as_fd(), &new).at(&at)?;
        } else if !c.new {
            fsx::unlink_at(gdir.as_fd(), name).at(&at)?;
        }
        crate::excluded::clone_at(ldir.as_fd(), gdir.as_fd(), name, meta).at(&at)?;
        fsx::set_mtime(gdir.as_fd(), st.st_mtime as i64, st.st_mtime_nsec as u32).at(&at)?;
    }
    Ok(())
}

/// The admin's files looked at once more before the switch: one changed since the check
/// would be left in the tree switched away.
pub fn guard(home: &Home, conf: &[ConfCarry]) -> Result<()> {
    let live = fsx::open_tree(&home.live).at(&home.live)?;
    for c in conf {
        let (parent, name) = fsx::split_parent(&c.path);
        let at = home.live.join(fsx::os(&c.path));
        let st = fsx::open_dir_beneath(live.as_fd(), parent)
            .and_then(|d| fsx::lstat_at(d.as_fd(), &fsx::cstr(name)?))
            .at(&at)?;
        if seen(&st) != c.seen {
            return Err(crate::Error::bad(
                at,
                "changed again while the rollback carried it: nothing was switched; run again",
            ));
        }
    }
    Ok(())
}

/// After the switch: the files kept with the generation's version beside are listed as kept
/// (`conf-diff` shows them), under the base the rollback installed; so is each
/// `NAME.jailsync-new` written, under its own name, so that the next upgrade knows it for one
/// of this program's and writes its own over it.
pub fn record_kept(state: &StateDir, home: &Home, conf: &[ConfCarry]) -> Result<()> {
    let mut kept: Vec<(Box<[u8]>, Print, crate::protect::Meta)> = Vec::new();
    for c in conf.iter().filter(|c| c.aside) {
        kept.push((c.path.clone(), c.print, c.meta));
        let mut new = c.path.to_vec();
        new.extend_from_slice(NEW_SUFFIX.as_bytes());
        kept.push((new.into(), c.beside.0, c.beside.1));
    }
    crate::protect::add_kept_new(state, &home.live, &kept)
}
