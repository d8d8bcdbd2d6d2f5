//! The three-way rule: deciding each protected entry of a planned tree against the base
//! (see the table in the parent module's doc), and recording what a run really applied.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use super::base::{kept_meta_prefix, write_records, Base, BASE_MAGIC, KEPT_MAGIC};
use super::beside::NewWrite;
use super::{Decision, Decisions, Meta, Print, Rules, Verdict, NEW_SUFFIX};
use crate::entry::{Entries, Kind};
use crate::error::{IoContext, Result};
use crate::fsx;
use crate::journal::StateDir;
use crate::plan::{self, Op, Plan, NONE};

/// Whether `path` lies strictly below one of `dirs`.
fn below_any(dirs: &[Box<[u8]>], path: &[u8]) -> bool {
    dirs.iter()
        .any(|d| path.starts_with(d) && path.get(d.len()) == Some(&b'/'))
}

/// Decides every protected entry of a planned tree and changes the plan (and the source
/// entries of kept ones, which then describe the live version the next tree keeps).
/// `prefix` is the tree's root-relative name (for globs).
#[allow(clippy::too_many_arguments)]
pub fn decide(
    rules: &Rules,
    prefix: &[u8],
    base: &Base,
    src_root: &Path,
    dst_root: &Path,
    src: &mut Entries,
    dst: &Entries,
    plan: &mut Plan,
) -> Result<Decisions> {
    let mut out = Decisions::default();
    if rules.is_empty() || plan.is_empty() {
        return Ok(out);
    }
    let sfd = fsx::open_root(src_root).at(src_root)?;
    let dfd = fsx::open_tree(dst_root).at(dst_root)?;
    let mut drop = vec![false; plan.actions.len()];
    // Live entries a kept entry needs: its directories, which the plan may delete.
    let mut undelete: Vec<Box<[u8]>> = Vec::new();
    let mut mirror: Vec<(usize, usize, Print)> = Vec::new();
    // Kept paths whose subtree goes with them: a kept live directory (its contents are the
    // admin's) or a jail directory kept out (its contents cannot be made under a non-directory).
    // The plan is in path order, so a directory is decided before anything below it.
    let mut whole: Vec<Box<[u8]>> = Vec::new();
    for (k, a) in plan.actions.iter().enumerate() {
        let path = plan.path(a, src, dst);
        if below_any(&whole, path) {
            drop[k] = true;
            if a.src != NONE {
                out.unapplied.push(path.into());
            }
            continue;
        }
        if !rules.covers(prefix, path) || a.dst == NONE {
            continue;
        }
        let d = dst.at(a.dst as usize);
        let live = Print::of(dfd.as_fd(), path, &d).at(dst_root.join(fsx::os(path)))?;
        let b = base.get(path);
        let decision = |verdict, jail| Decision {
            path: path.into(),
            verdict,
            live,
            live_meta: Meta::of(&d),
            jail,
        };
        match a.op {
            Op::Replace | Op::Exchange if a.src != NONE => {
                let s = src.at(a.src as usize);
                let j = Print::of(sfd.as_fd(), path, &s).at(src_root.join(fsx::os(path)))?;
                let edited = match b {
                    Some(b) => live != *b,
                    None => live != j,
                };
                if !edited || live == j {
                    continue;
                }
                drop[k] = true;
                mirror.push((a.src as usize, a.dst as usize, live));
                if d.kind == Kind::Dir || s.kind == Kind::Dir {
                    whole.push(path.into());
                }
                // A jail directory is not written beside (it would be a second tree to
                // merge by hand): the admin's entry stays, and so does the jail's directory
                // in the jail.
                let verdict = if s.kind != Kind::Dir && b.is_none_or(|b| j != *b) {
                    Verdict::KeptNew
                } else {
                    Verdict::Kept
                };
                out.list.push(decision(verdict, Some(((*s).clone(), j))));
            }
            Op::Delete => {
                if b.is_some_and(|b| *b == live) {
                    continue;
                }
                // A directory with no record of another type is decided by its contents (it
                // stays if something in it is kept): a base written before types were recorded
                // has no directories, and keeping every such one whole would keep files the
                // admin never touched.
                if d.kind == Kind::Dir && b.is_none_or(|b| b.kind == Kind::Dir) {
                    continue;
                }
                drop[k] = true;
                undelete.push(fsx::split_parent(path).0.into());
                if d.kind == Kind::Dir {
                    whole.push(path.into());
                }
                out.list.push(decision(Verdict::KeptDropped, None));
            }
            _ => {}
        }
    }
    keep_parents(plan, dst, &undelete, &mut drop);
    for (si, dj, x) in
        keep_holding_dirs(plan, src, dst, sfd.as_fd(), base, &undelete, &mut drop).at(src_root)?
    {
        mirror.push((si, dj, x.live));
        out.list.push(x);
    }
    plan::drop_actions(plan, &drop);
    for (si, dj, live) in mirror {
        mirror_live(src, si, dst, dj, live);
    }
    out.list.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// A kept entry's directories stay too (deleting them would take it along).
fn keep_parents(plan: &Plan, dst: &Entries, undelete: &[Box<[u8]>], drop: &mut [bool]) {
    for (k, a) in plan.actions.iter().enumerate() {
        if a.op != Op::Delete || a.src != NONE {
            continue;
        }
        let p = dst.path(a.dst as usize);
        if undelete.iter().any(|u| crate::entry::at_or_below(u, p)) {
            drop[k] = true;
        }
    }
}

/// A live directory the jail turned into a non-directory stays when something below it is
/// kept (an edited entry the jail dropped with it): exchanging it out would take that along.
/// It is kept like an edited entry, the jail's version offered beside it (`KeptNew`); the rest
/// of what it held follows the jail (deleted where unedited, now one by one: no longer covered
/// by the exchange). Returns (source index, destination index, decision) of each.
fn keep_holding_dirs(
    plan: &mut Plan,
    src: &Entries,
    dst: &Entries,
    sroot: BorrowedFd<'_>,
    base: &Base,
    undelete: &[Box<[u8]>],
    drop: &mut [bool],
) -> io::Result<Vec<(usize, usize, Decision)>> {
    let mut out = Vec::new();
    let mut held: Vec<Box<[u8]>> = Vec::new();
    for (k, a) in plan.actions.iter().enumerate() {
        if a.op != Op::Exchange || a.src == NONE || drop[k] {
            continue;
        }
        let d = dst.at(a.dst as usize);
        let p = d.path;
        if d.kind != Kind::Dir || !undelete.iter().any(|u| crate::entry::at_or_below(u, p)) {
            continue;
        }
        let s = src.at(a.src as usize);
        let j = Print::of(sroot, p, &s)?;
        let live = Print::special(&d);
        drop[k] = true;
        held.push(p.into());
        let verdict = if base.get(p).is_some_and(|b| *b == j) {
            Verdict::Kept
        } else {
            Verdict::KeptNew
        };
        let x = Decision {
            path: p.into(),
            verdict,
            live,
            live_meta: Meta::of(&d),
            jail: Some(((*s).clone(), j)),
        };
        out.push((a.src as usize, a.dst as usize, x));
    }
    if !held.is_empty() {
        for a in plan.actions.iter_mut().filter(|a| a.op == Op::Delete) {
            if below_any(&held, dst.path(a.dst as usize)) {
                a.covered = false;
            }
        }
    }
    Ok(out)
}

/// The source entry of a kept entry now describes the live one the next tree keeps (type,
/// target, device, metadata): the staging then links it (or makes a kept directory with its
/// metadata and links what it holds), and the records and caches say what is really there.
fn mirror_live(src: &mut Entries, si: usize, dst: &Entries, dj: usize, live: Print) {
    let d = dst[dj].clone();
    let x = dst.at(dj).xattrs().cloned();
    let e = &mut src[si];
    (e.size, e.mode, e.ino, e.nlink, e.sparse) = (d.size, d.mode, d.ino, d.nlink, d.sparse);
    e.kind = d.kind;
    e.set_target(d.target().map(Into::into));
    e.set_rdev(d.rdev());
    let (ms, mn) = d.mtime();
    e.set_mtime(ms, mn);
    e.set_ids(d.uid(), d.gid(), d.dev());
    let (cs, cn) = d.ctime();
    e.set_ctime(cs, cn);
    e.set_xattrs(x);
    src.set_hash(si, (live.kind == Kind::File).then_some(live.digest));
}

/// An admin's own `NAME.jailsync-new` (`.0`) renamed to `.1`, relative to the tree.
pub type SetAside = (Box<[u8]>, Box<[u8]>);

/// What [`finish`] did with the jail's versions of kept entries.
#[derive(Debug, Default)]
pub struct Finished {
    /// The `NAME.jailsync-new` written (relative paths).
    pub written: Vec<Box<[u8]>>,
    /// Those that could not be, with why (their base records did not move).
    pub failed: Vec<(Box<[u8]>, io::Error)>,
    /// An admin's own `NAME.jailsync-new` found in the way and renamed.
    pub set_aside: Vec<SetAside>,
}

/// The paths of a tree whose jail version was not put in place by its run: the entries that
/// failed (staged or applied from their live version) and the actions not carried out.
pub fn unapplied(
    plan: &Plan,
    src: &Entries,
    dst: &Entries,
    outcome: &crate::apply::Outcome,
) -> Vec<Box<[u8]>> {
    let mut out: Vec<Box<[u8]>> = outcome.errors.iter().map(|e| e.path.clone()).collect();
    for (a, done) in plan.actions.iter().zip(&outcome.done) {
        if !done {
            out.push(plan.path(a, src, dst).into());
        }
    }
    out
}

/// After a successful run: writes each `NAME.jailsync-new` into the live tree (whole: a
/// temporary name, then a rename over an older one of ours), then records the new base (the
/// jail's protected entries' prints, but the old record for every path in `unapplied`, the
/// decisions' own unapplied and each `NAME.jailsync-new` not written) and the kept entries.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    state: &StateDir,
    rules: &Rules,
    prefix: &[u8],
    src_root: &Path,
    dst_root: &Path,
    src: &Entries,
    d: &Decisions,
    unapplied: &[Box<[u8]>],
    owner: bool,
) -> Result<Finished> {
    let mut done = Finished::default();
    let old = Base::load(state, dst_root)?;
    // A `NAME.jailsync-new` a rollback wrote is listed as kept under its own name.
    let kept = super::load_kept(state, dst_root);
    let sfd = fsx::open_root(src_root).at(src_root)?;
    let dfd = fsx::open_tree(dst_root).at(dst_root)?;
    let mut held: HashSet<&[u8]> = unapplied.iter().map(|p| p.as_ref()).collect();
    held.extend(d.unapplied.iter().map(|p| p.as_ref()));
    for dec in d.list.iter().filter(|x| x.verdict == Verdict::KeptNew) {
        let (e, j) = dec.jail.as_ref().expect("kept-new has the jail's");
        let mut name = dec.path.to_vec();
        name.extend_from_slice(NEW_SUFFIX.as_bytes());
        let by_rollback = kept.iter().find(|k| *k.path == *name).map(|k| k.live);
        let ours = [old.get(&dec.path).copied(), Some(*j), by_rollback];
        let w = NewWrite {
            sroot: sfd.as_fd(),
            droot: dfd.as_fd(),
            path: &dec.path,
            name: &name,
            ours: &ours,
            owner,
        };
        match w.write(e) {
            Ok(aside) => {
                done.set_aside
                    .extend(aside.map(|a| (name.clone().into(), a)));
                done.written.push(name.into());
            }
            Err(err) => {
                held.insert(&dec.path);
                done.failed.push((name.into(), err));
            }
        }
    }
    let base = new_base(rules, prefix, sfd.as_fd(), src, d, &old, &held);
    let dir = state.tree_dir(dst_root)?;
    // The base before this run, for a rollback of it by a jailsync that reads only this
    // (`undo_base`); a generation saves its own copy too (`install_base`).
    let cur = dir.join("conf-base");
    if cur.exists() {
        let prev = dir.join("conf-base.prev");
        std::fs::copy(&cur, &prev).at(&prev)?;
    }
    write_records(
        &dir.join("conf-base"),
        BASE_MAGIC,
        base.iter()
            .map(|(p, h)| (vec![h.code()], &h.digest, p.to_vec())),
    )?;
    write_records(
        &dir.join("conf-kept"),
        KEPT_MAGIC,
        d.list.iter().map(|x| {
            let mut p = kept_meta_prefix(&x.live_meta);
            p.extend_from_slice(&x.path);
            (vec![x.verdict.code(), x.live.code()], &x.live.digest, p)
        }),
    )?;
    Ok(done)
}

/// The base a run leaves: what the jail offered this time for every protected entry it has,
/// except the `held` paths, whose jail version was not put in place (nor beside): their old
/// record, or none.
fn new_base(
    rules: &Rules,
    prefix: &[u8],
    sroot: BorrowedFd<'_>,
    src: &Entries,
    d: &Decisions,
    old: &Base,
    held: &HashSet<&[u8]>,
) -> Vec<(Box<[u8]>, Print)> {
    let decided: HashMap<&[u8], &Decision> = d.list.iter().map(|x| (x.path.as_ref(), x)).collect();
    let mut base: Vec<(Box<[u8]>, Print)> = Vec::new();
    for e in src.iter() {
        if !rules.covers(prefix, e.path) {
            continue;
        }
        if held.contains(e.path) {
            if let Some(b) = old.get(e.path) {
                base.push((e.path.into(), *b));
            }
            continue;
        }
        // A kept entry's source now describes the live one: the jail's print is the
        // decision's.
        let p = match decided.get(e.path).and_then(|x| x.jail.as_ref()) {
            Some((_, j)) => *j,
            None => match Print::of(sroot, e.path, &e) {
                Ok(p) => p,
                Err(_) => continue,
            },
        };
        base.push((e.path.into(), p));
    }
    base
}
