//! Generations of a switched tree: the old trees a switch leaves in the destination's home
//! ([`crate::switch`]), what rollback needs to switch one back, listing and pruning.
//!
//! `gen-<N>` is the whole old tree (for the per-entry method: its old top-level entries). Its
//! unchanged files are the live tree's own inodes, so a generation costs directories and
//! links, no data. Beside it, `gen-<N>.d/` holds:
//! - `info`: when, from which source, by which method;
//! - `after`: a manifest (with stat fields) of the live tree as the switch left it, so
//!   rollback can tell what changed since (an admin's edit) and refuse to switch it away;
//! - `meta`: the old metadata of inodes shared by both trees whose metadata the sync changed
//!   in place (and, for the per-entry method, of the root): rollback sets it back;
//! - `inos`: the inode numbers of the generation's non-directories (sorted, u64 LE). A later
//!   sync discounts those links when it asks whether a live file is linked from outside the
//!   tree (it is, by our own generations, and that must not turn every metadata change into a
//!   copy);
//! - `conf-base`: the configuration base as it was before the sync (the one that goes with
//!   this tree), installed again by a rollback to it however many syncs that undoes; `info`
//!   says `conf_base=saved` or `conf_base=none` (there was none). Records without the line
//!   come from an older jailsync: their rollback sets back only the last sync's base.
//!
//! `info` also says `xattrs=1` when the sync read xattrs: `after` then holds every entry's
//! xattrs (ACLs and file capabilities among them), and a rollback compares them.
//!
//! A `gen-<N>.d` without its `gen-<N>` is a switch that never happened, and is removed.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::entry::{Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::journal::StateDir;
use crate::manifest;
use crate::switch::{self, Home};

mod carry;
mod conf;
mod journal;
mod record;

pub use carry::Carry;
use carry::{carry, guard_carry, plan_carry};
pub use conf::ConfCarry;
pub use journal::recover;
use journal::{after_switch_back, write_rollback_journal, ROLLING_BACK};
use record::{info_field, saved_base};
pub use record::{write_record, Record};

#[derive(Debug, Clone)]
pub struct Gen {
    pub id: u64,
    pub tree: PathBuf,
    pub time: i64,
    pub source: String,
    pub method: String,
    pub changes: u64,
}

/// Where generation `n`'s record is, for reading and writing (through the home's fd; see
/// [`Home::io_path`]).
fn meta_io(home: &Home, n: u64) -> PathBuf {
    home.io_path(&format!("gen-{n}.d"))
}

/// Generations present, oldest first (complete ones: tree and records both there).
pub fn list(home: &Home) -> Result<Vec<Gen>> {
    let mut out = Vec::new();
    for name in fsx::list_dir(home.fd.as_fd()).at(&home.path)? {
        let Some(n) = std::str::from_utf8(&name)
            .ok()
            .and_then(|s| s.strip_prefix("gen-"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let d = meta_io(home, n);
        let Ok(info) = fs::read_to_string(d.join("info")) else {
            continue;
        };
        let field = |k: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .unwrap_or("")
                .to_string()
        };
        out.push(Gen {
            id: n,
            tree: home.gen_path(n),
            time: field("time").parse().unwrap_or(0),
            source: field("source"),
            method: field("method"),
            changes: field("changes").parse().unwrap_or(0),
        });
    }
    out.sort_by_key(|g| g.id);
    Ok(out)
}

/// The highest id of a generation (or undone/kept tree) ever removed from this home: ids are
/// never reused, even once every generation is pruned (`--keep 1`, `prune --keep 0`), since
/// root-level records and rollback name generations by id. Written only when a real one is
/// removed (not when an id is merely handed out to a run that then died), so it also tells
/// "the generation a run made was pruned" from "that run made none".
const LAST_REMOVED: &str = "last-removed";

fn last_removed(home: &Home) -> u64 {
    fs::read_to_string(home.io_path(LAST_REMOVED))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0)
}

/// Notes that generation `n` (or `undone-n`, `kept-n`) is about to be removed.
fn note_removed(home: &Home, n: u64) -> Result<()> {
    if n <= last_removed(home) {
        return Ok(());
    }
    switch::write_file_at(
        &home.fd,
        LAST_REMOVED,
        format!("{n}\n").as_bytes(),
        &home.path.join(LAST_REMOVED),
        home.durable,
    )
}

/// The highest id removed from this home (pruned, or undone by a rollback and cleaned up);
/// 0 when none ever was. Generations up to it that are not listed cannot be rolled back to.
pub fn removed_through(home: &Home) -> u64 {
    last_removed(home)
}

/// Whether a generation newer than `n` existed here and was removed since (pruned).
pub fn removed_after(home: &Home, n: u64) -> bool {
    last_removed(home) > n
}

/// The number the next generation gets.
pub fn next_id(home: &Home) -> Result<u64> {
    let mut max = last_removed(home);
    for name in fsx::list_dir(home.fd.as_fd()).at(&home.path)? {
        let s = String::from_utf8_lossy(&name);
        let digits = s
            .strip_prefix("gen-")
            .or_else(|| s.strip_prefix("undone-"))
            .or_else(|| s.strip_prefix("kept-"))
            .map(|r| r.trim_end_matches(".d"));
        if let Some(n) = digits.and_then(|d| d.parse::<u64>().ok()) {
            max = max.max(n);
        }
    }
    Ok(max + 1)
}

/// A generation (or an undone tree) left in place: programs still run from its release.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// `gen-N` or `undone-N`.
    pub name: String,
    pub tree: PathBuf,
    pub procs: Vec<crate::procs::ProcUse>,
}

/// Whether the tree `name` is a release programs run from (never true for a directory the
/// exchange made: its programs reached it by DST's path, which now names another tree).
fn in_use(home: &Home, name: &[u8]) -> Option<Deferred> {
    let real = home.tree_name(name);
    if real == name {
        return None;
    }
    let tree = home.path.join(fsx::os(&real));
    let procs = crate::procs::running_from(&tree, live_via(home, name, &real).as_ref());
    (!procs.is_empty()).then(|| Deferred {
        name: String::from_utf8_lossy(name).into_owned(),
        tree,
        procs,
    })
}

/// Whether programs still run from generation `n`'s release (see [`Deferred`]).
pub fn runs_from(home: &Home, n: u64) -> bool {
    in_use(home, &Home::gen_name(n)).is_some()
}

/// When the release `real` (aliased by `name`) was live through DST's link: from its rename
/// into place (its directory's ctime) to the alias made right after it was switched out (the
/// alias's mtime). A rollback that made it live again since only widens the window.
fn live_via(home: &Home, name: &[u8], real: &[u8]) -> Option<crate::procs::LiveVia> {
    let at = |n: &[u8]| fsx::lstat_at(home.fd.as_fd(), &fsx::cstr(n).ok()?).ok();
    let (rel, alias) = (at(real)?, at(name)?);
    Some(crate::procs::LiveVia {
        link: home.live.clone(),
        // Slack: a file's times are the kernel's coarse clock, a start time is in ticks.
        from: rel.st_ctime as f64 + rel.st_ctime_nsec as f64 / 1e9 - 0.1,
        to: alias.st_mtime as f64 + alias.st_mtime_nsec as f64 / 1e9 + 0.1,
    })
}

/// Removes records of switches that never happened, undone trees, and all but the newest
/// `keep` generations. Runs before staging: removing links moves the ctime of inodes the live
/// tree shares, so it must happen before the new tree's stats are recorded.
pub fn prune(home: &Home, keep: usize) -> Result<Vec<Deferred>> {
    prune_unless_used(home, keep, false)
}

/// [`prune`], leaving a release programs still run from ([`Deferred`]) unless `force`.
pub fn prune_unless_used(home: &Home, keep: usize, force: bool) -> Result<Vec<Deferred>> {
    let gens = list(home)?;
    let mut deferred = Vec::new();
    for name in fsx::list_dir(home.fd.as_fd()).at(&home.path)? {
        let s = String::from_utf8_lossy(&name).into_owned();
        let orphan_record = s
            .strip_prefix("gen-")
            .and_then(|r| r.strip_suffix(".d"))
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|n| !gens.iter().any(|g| g.id == n));
        let orphan_tree = s
            .strip_prefix("gen-")
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|n| !gens.iter().any(|g| g.id == n));
        if s.starts_with("undone-") && !force {
            if let Some(d) = in_use(home, &name) {
                deferred.push(d);
                continue;
            }
        }
        if orphan_tree || s.starts_with("undone-") {
            let n = s.trim_start_matches("gen-").trim_start_matches("undone-");
            if let Ok(n) = n.parse::<u64>() {
                note_removed(home, n)?;
            }
        }
        if orphan_record || orphan_tree || s.starts_with("undone-") {
            home.remove_in(&name)?;
        }
    }
    let drop = gens.len().saturating_sub(keep);
    for g in &gens[..drop] {
        match in_use(home, &Home::gen_name(g.id)).filter(|_| !force) {
            Some(d) => deferred.push(d),
            None => remove(home, g.id)?,
        }
    }
    for rel in home.unnamed_releases() {
        let tree = home.path.join(fsx::os(&rel));
        if force || crate::procs::running_from(&tree, None).is_empty() {
            fsx::remove_tree_at(home.fd.as_fd(), &rel).at(&tree)?;
        }
    }
    Ok(deferred)
}

/// Removes the trees rollbacks switched away (`undone-*`). Before scanning: their links to
/// the live tree's inodes would make every live file look linked from outside the tree, and
/// a sync would copy what it could keep. A release programs still run from stays.
pub fn prune_undone(home: &Home) -> Result<()> {
    for name in fsx::list_dir(home.fd.as_fd()).at(&home.path)? {
        if name.starts_with(b"undone-") && in_use(home, &name).is_none() {
            if let Some(n) = std::str::from_utf8(&name[7..])
                .ok()
                .and_then(|d| d.parse::<u64>().ok())
            {
                note_removed(home, n)?;
            }
            home.remove_in(&name)?;
        }
    }
    Ok(())
}

/// Removes generation `n` (its record first: a tree without one is pruned next time).
pub fn remove(home: &Home, n: u64) -> Result<()> {
    note_removed(home, n)?;
    discard(home, n)
}

/// Removes the record (and tree) of generation `n` that was never switched in: unlike
/// [`remove`], not noted as a removed generation.
pub fn discard(home: &Home, n: u64) -> Result<()> {
    let rec = format!("gen-{n}.d");
    fsx::remove_tree_at(home.fd.as_fd(), rec.as_bytes()).at(home.path.join(&rec))?;
    home.remove_in(&Home::gen_name(n))
}

/// Gives back (or takes again) what `defang` took from generation `n`'s old-only files.
fn fangs(home: &Home, n: u64, give_back: bool) -> Result<Vec<(PathBuf, io::Error)>> {
    let gpath = home.gen_path(n);
    let gen = home.open_in(&Home::gen_name(n))?;
    let record = meta_io(home, n).join(crate::defang::RECORD);
    crate::defang::restore(gen.as_fd(), &gpath, &record, give_back)
}

/// Sorted inode numbers of generation `n`'s non-directories, as its switch recorded them.
fn gen_inodes(home: &Home, n: u64) -> Vec<u64> {
    let b = fs::read(meta_io(home, n).join("inos")).unwrap_or_default();
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Sorted inode numbers of every kept generation's non-directories (with repeats: an inode in
/// two generations is linked twice).
pub fn kept_inodes(home: &Home) -> Vec<u64> {
    let mut all = Vec::new();
    for g in list(home).unwrap_or_default() {
        all.extend(gen_inodes(home, g.id));
    }
    all.sort_unstable();
    all
}

/// Discounts, from the link counts of `dst`'s entries, the links our own generations hold:
/// a live file shared with a generation is not "linked from outside".
pub fn discount_own_links(dst: &mut Entries, kept: &[u64]) {
    if kept.is_empty() {
        return;
    }
    for k in 0..dst.len() {
        let e = &mut dst[k];
        if e.kind != Kind::Dir && e.nlink > 1 {
            let lo = kept.partition_point(|&i| i < e.ino);
            let hi = kept.partition_point(|&i| i <= e.ino);
            let own = (hi - lo) as u32;
            e.nlink = e.nlink.saturating_sub(own).max(1);
        }
    }
}

/// An entry of the live tree that differs from what the switch left.
#[derive(Debug)]
pub struct Changed {
    pub path: Box<[u8]>,
    pub what: &'static str,
}

/// Compares the live tree now with what generation `n`'s switch left there. With `xattrs`
/// (the sync read them, and `now` was scanned with them), xattrs are compared too: an ACL or
/// a file capability set since is an admin's change like a chmod, and switching it away
/// would drop it silently.
pub fn changed_since(home: &Home, n: u64, now: &Entries, xattrs: bool) -> Result<Vec<Changed>> {
    let after = manifest::read_recorded(&meta_io(home, n).join("after"))?.entries;
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < after.len() || j < now.len() {
        let ord = match (after.get(i), now.get(j)) {
            (Some(a), Some(b)) => a.path.cmp(b.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(Changed {
                    path: after.path(i).into(),
                    what: "deleted since the sync",
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(Changed {
                    path: now.path(j).into(),
                    what: "created since the sync",
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (a, b) = (after.at(i), now.at(j));
                let what = if a.kind != b.kind {
                    Some("type changed since the sync")
                } else if a.kind != Kind::Dir && a.ino != b.ino {
                    Some("replaced since the sync")
                } else if a.kind == Kind::File && (a.size != b.size || !a.same_mtime(&b)) {
                    Some("modified since the sync")
                } else if a.kind == Kind::Symlink && a.target() != b.target() {
                    Some("symlink changed since the sync")
                } else if a.mode != b.mode || a.uid() != b.uid() || a.gid() != b.gid() {
                    Some("mode or owner changed since the sync")
                } else if xattrs {
                    xattrs_changed(a.xattrs(), b.xattrs())
                } else {
                    None
                };
                if let Some(what) = what {
                    out.push(Changed {
                        path: a.path.into(),
                        what,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(out)
}

/// How two entries' xattrs differ, named for what an admin did: a file capability, an ACL
/// (access or default), or another xattr. None (no xattrs read) is no xattrs.
fn xattrs_changed(
    was: Option<&crate::entry::Xattrs>,
    now: Option<&crate::entry::Xattrs>,
) -> Option<&'static str> {
    let (was, now) = (
        was.map_or(&[][..], |x| &x[..]),
        now.map_or(&[][..], |x| &x[..]),
    );
    if was == now {
        return None;
    }
    fn get<'a>(xs: &'a [crate::entry::Xattr], name: &[u8]) -> Option<&'a [u8]> {
        xs.iter().find(|(n, _)| &**n == name).map(|(_, v)| &v[..])
    }
    // The names whose value differs (or that one side lacks).
    let names = was.iter().chain(now).map(|(n, _)| &n[..]);
    let changed: Vec<&[u8]> = names.filter(|n| get(was, n) != get(now, n)).collect();
    Some(if changed.iter().any(|n| *n == b"security.capability") {
        "capability changed since the sync"
    } else if changed.iter().any(|n| n.starts_with(b"system.posix_acl_")) {
        "ACL changed since the sync"
    } else {
        "xattrs changed since the sync"
    })
}

/// Sets back the metadata the sync of generation `n` changed in place (on inodes the old tree
/// shares with the new, and for the per-entry method the root's).
pub fn restore_meta(home: &Home, n: u64, live: &Path) -> Result<Vec<(PathBuf, io::Error)>> {
    crate::stage::restore_meta(live, &meta_io(home, n).join("meta"))
}

/// Refuses a generation id that is not there.
pub fn find(home: &Home, id: Option<u64>) -> Result<Gen> {
    let gens = list(home)?;
    match id {
        None => gens
            .last()
            .cloned()
            .ok_or_else(|| Error::bad(&home.live, "nothing to roll back")),
        Some(n) => gens.into_iter().find(|g| g.id == n).ok_or_else(|| {
            Error::bad(
                &home.live,
                format!("no generation {n} (see `jailsync history`)"),
            )
        }),
    }
}

/// What a rollback by switch did (or would have, when refused).
#[derive(Debug)]
pub struct RolledBack {
    pub generation: Gen,
    /// The generations undone (the one restored and every newer one), oldest first.
    pub undone: Vec<u64>,
    /// Entries changed since the sync; non-empty and not forced: nothing was switched.
    pub changed: Vec<Changed>,
    /// The live tree's excluded entries, carried into the generation before its switch.
    pub carry: Carry,
    pub switched: Option<switch::Switched>,
    /// Where the tree that was live went (it holds the changes above, when forced).
    pub kept_as: Option<PathBuf>,
    pub errors: Vec<(PathBuf, io::Error)>,
    /// Entries the undone syncs switched around: the switch back goes around them too.
    pub pinned: Vec<Box<[u8]>>,
    /// Protected configuration the admin changed since the sync, carried into the
    /// generation (see [`plan_conf`]).
    pub conf: Vec<ConfCarry>,
}

/// Prepares switching generation `id` (default: the newest) back in: the live tree is
/// compared with what the newest sync left. A change made since (an admin's edit, a new file)
/// refuses the rollback unless forced — one switch cannot keep some entries and undo others
/// without tearing the tree — and even forced, the tree that was live is kept whole
/// (`kept-<N>`). Nothing is switched here: see [`crate::txn::back`].
pub fn check(home: &Home, id: Option<u64>, pool: &rayon::ThreadPool) -> Result<RolledBack> {
    let gens = list(home)?;
    let g = find(home, id)?;
    let newest = gens.last().expect("found one").id;
    let info = fs::read_to_string(meta_io(home, newest).join("info")).unwrap_or_default();
    let pats: Vec<String> = info
        .lines()
        .filter_map(|l| l.strip_prefix("exclude="))
        .map(String::from)
        .collect();
    let excludes =
        crate::scan::Excludes::new(&pats).map_err(|e| Error::bad(&home.live, e.to_string()))?;
    // Xattrs are compared when the sync recorded them (older records do not say: compared
    // without, as then).
    let xattrs = info_field(&info, "xattrs") == Some("1");
    let mounts = crate::jail::mountinfo::points_below(&home.live_real());
    let sopts = crate::scan::ScanOpts {
        excludes: &excludes,
        xattrs,
        defer_xattrs: false,
        ours: &[],
        mounts: &mounts,
    };
    let scan = crate::scan::scan_tree(&home.live, pool, &sopts)?;
    let mut changed = changed_since(home, newest, &scan.entries, xattrs)?;
    // What the undone syncs switched around stays where it is when switching back.
    let mut pinned: Vec<Box<[u8]>> = Vec::new();
    for n in gens.iter().map(|x| x.id).filter(|&n| n >= g.id) {
        let info = fs::read_to_string(meta_io(home, n).join("info")).unwrap_or_default();
        pinned.extend(
            info.lines()
                .filter_map(|l| switch::unhex(l.strip_prefix("pinned=")?))
                .map(Vec::into_boxed_slice),
        );
    }
    let mut carry = plan_carry(home, g.id, pats, &excludes, scan.holds_excluded, pool)?;
    // The guard's last look lists the live tree against this scan (only names made since
    // are looked at), and the tree switched out is defanged by it.
    carry.live = scan.entries;
    carry.live_xattrs = xattrs;
    changed.extend(carry.blocked.iter().map(|p| Changed {
        path: p.clone(),
        what: "excluded (the live system's), and the generation has no directory to hold it",
    }));
    Ok(RolledBack {
        undone: gens.iter().map(|x| x.id).filter(|&n| n >= g.id).collect(),
        generation: g,
        changed,
        carry,
        switched: None,
        kept_as: None,
        pinned,
        conf: Vec::new(),
        errors: Vec::new(),
    })
}

/// Rollback's steps for one tree, in the order [`crate::txn::back`] takes them (which makes
/// every tree's step before the next step of any): nothing is switched by these.
///
/// Carries the live tree's excluded entries into the generation switched back. Rule: excluded
/// entries are the live system's before and after a rollback — the generation switched back
/// gets the live tree's current excluded entries (and loses those the live tree no longer
/// has), and they are looked at once more right before the switch ([`guard_carried`]).
pub fn carry_in(home: &Home, rb: &RolledBack) -> Result<()> {
    carry(home, rb.generation.id, &rb.carry)?;
    conf::carry(home, rb.generation.id, &rb.conf)
}

/// Takes the protected configuration the admin changed since the sync out of the changes
/// that refuse the rollback, to be carried across with the three-way rule of an upgrade (see
/// [`conf`]).
pub fn plan_conf(home: &Home, rb: &mut RolledBack, state: &StateDir) -> Result<()> {
    conf::plan(home, rb, state)
}

/// The carried entries looked at once more: a change since the carry would be left in the
/// tree switched away.
pub fn guard_carried(home: &Home, rb: &RolledBack) -> Result<()> {
    guard_carry(home, rb.generation.id, &rb.carry)?;
    conf::guard(home, &rb.conf)
}

/// Journals the switch of the generation back in; the tree it replaces goes to `undone-<G>`,
/// or `kept-<G>` when it holds changes made since the sync.
pub fn prepare_back(home: &Home, rb: &RolledBack) -> Result<switch::Pending> {
    let g = rb.generation.id;
    let to = if rb.changed.is_empty() {
        format!("undone-{g}")
    } else {
        format!("kept-{g}")
    };
    home.prepare_back(g, &to, &rb.pinned)
}

/// What follows the switch back, journaled before it (see [`recover`]): a rollback killed at
/// any point after this is finished by the next command under the lock.
pub fn journal_back(home: &Home, rb: &RolledBack, state: Option<&StateDir>) -> Result<()> {
    write_rollback_journal(home, rb, state)
}

/// Setuid/setgid bits and capabilities taken from the generation's old-only files when it was
/// switched out are given back before it is live again (see `defang`).
pub fn give_fangs_back(home: &Home, rb: &mut RolledBack) -> Result<()> {
    let errs = fangs(home, rb.generation.id, true)?;
    rb.errors.extend(errs);
    Ok(())
}

/// A switch back not made: the generation is still one, so its old setuid files are defanged
/// again, and no rollback is left to finish.
pub fn unjournal_back(home: &Home, rb: &RolledBack) {
    let _ = fangs(home, rb.generation.id, false);
    let _ = fsx::unlink_at(home.fd.as_fd(), ROLLING_BACK.as_bytes());
}

/// After the switch back (`done`): the tree switched out is defanged (it is reachable from a
/// cwd inside it, as any old tree is: its files the restored tree does not share), kept as
/// `rb.kept_as`, and the rollback's journaled work done (see `after_switch_back`).
pub fn after_back(
    home: &Home,
    rb: &mut RolledBack,
    state: Option<&StateDir>,
    done: switch::Switched,
) -> Result<()> {
    let g = rb.generation.id;
    if let Some(name) = done.old.file_name() {
        let inos = gen_inodes(home, g);
        if let Err(e) = crate::defang::replaced(
            home,
            Path::new(name),
            &rb.carry.live,
            rb.carry.live_xattrs,
            &inos,
        ) {
            rb.errors
                .push((done.old.clone(), io::Error::other(e.to_string())));
        }
    }
    rb.kept_as = Some(done.old.clone());
    rb.switched = Some(done);
    let errs = after_switch_back(home, state, g, &rb.undone)?;
    rb.errors.extend(errs);
    // Under the base the rollback installed: the files kept with the release's version beside.
    if let Some(state) = state {
        conf::record_kept(state, home, &rb.conf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xattr_change_is_named_for_what_changed() {
        let x = |v: &[(&str, &str)]| -> Option<crate::entry::Xattrs> {
            let v: Vec<crate::entry::Xattr> = v
                .iter()
                .map(|(n, v)| (n.as_bytes().into(), v.as_bytes().into()))
                .collect();
            (!v.is_empty()).then(|| v.into_boxed_slice())
        };
        let acl = ("system.posix_acl_access", "a");
        let cap = ("security.capability", "c");
        let user = ("user.note", "u");
        type Names<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Names, Names, Option<&str>)] = &[
            (&[], &[], None),
            (&[user, acl], &[user, acl], None),
            (&[], &[user], Some("xattrs changed since the sync")),
            (
                &[user],
                &[("user.note", "v")],
                Some("xattrs changed since the sync"),
            ),
            (&[user, acl], &[user], Some("ACL changed since the sync")),
            (
                &[user],
                &[user, ("system.posix_acl_default", "d")],
                Some("ACL changed since the sync"),
            ),
            (
                &[acl],
                &[acl, cap],
                Some("capability changed since the sync"),
            ),
        ];
        for (was, now, want) in cases {
            let (was, now) = (x(was), x(now));
            assert_eq!(
                xattrs_changed(was.as_ref(), now.as_ref()),
                *want,
                "{was:?} -> {now:?}"
            );
        }
    }
}
