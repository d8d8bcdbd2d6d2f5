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

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use crate::entry::{Ent, Entries, Entry, Hash, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::hash::{from_hex, hash_fd, to_hex};
use crate::journal::StateDir;
use crate::plan::{self, Op, Plan, NONE};
use crate::scan::Excludes;

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
}

impl Rules {
    /// `globs` match the path relative to the root of the run (for `upgrade`, ROOT-relative:
    /// `usr/pkg/share/foo/*.conf`), with the same syntax as `--exclude`.
    pub fn new(defaults: bool, globs: &[String]) -> std::result::Result<Rules, globset::Error> {
        Ok(Rules {
            defaults,
            globs: Excludes::new(globs)?,
            have_globs: !globs.is_empty(),
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

/// The prints of the jail's protected entries at the last successful sync of a destination.
#[derive(Debug, Default)]
pub struct Base {
    map: HashMap<Box<[u8]>, Print>,
}

/// Version 1 recorded files only; version 2 every type (its records' codes are
/// [`Print::code`]). Both are read; only version 2 is written, under a new magic so that an
/// older jailsync reads it as no base at all (first-run rules) rather than take a symlink's
/// record for a file's.
const BASE_MAGIC_V1: &[u8] = b"#jailsync-conf-base 1\n";
const BASE_MAGIC: &[u8] = b"#jailsync-conf-base 2\n";
const KEPT_MAGIC_V1: &[u8] = b"#jailsync-conf-kept 1\n";
const KEPT_MAGIC: &[u8] = b"#jailsync-conf-kept 2\n";

/// Records: `<code><hex hash> <path>\0` (paths never hold a NUL); `extra` more code bytes
/// before the hash (the kept list's type code).
fn parse_records(data: &[u8], magic: &[u8], extra: usize) -> Vec<(Vec<u8>, Hash, Box<[u8]>)> {
    let Some(body) = data.strip_prefix(magic) else {
        return Vec::new();
    };
    body.split_inclusive(|&b| b == 0)
        .filter_map(|r| r.strip_suffix(&[0]))
        .filter_map(|r| {
            let (codes, rest) = r.split_at_checked(1 + extra)?;
            let hex = std::str::from_utf8(rest.get(..64)?).ok()?;
            let path = rest.get(65..)?;
            Some((codes.to_vec(), from_hex(hex)?, path.into()))
        })
        .collect()
}

fn write_records<'a>(
    file: &Path,
    magic: &[u8],
    recs: impl Iterator<Item = (Vec<u8>, &'a Hash, Vec<u8>)>,
) -> Result<()> {
    let tmp = file.with_extension("new");
    let r = (|| -> io::Result<()> {
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(magic)?;
        for (codes, h, p) in recs {
            w.write_all(&codes)?;
            w.write_all(to_hex(h).as_bytes())?;
            w.write_all(b" ")?;
            w.write_all(&p)?;
            w.write_all(&[0])?;
        }
        w.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, file)
    })();
    r.at(file)
}

impl Base {
    pub fn load(state: &StateDir, dst: &Path) -> Result<Base> {
        let p = state.tree_dir(dst)?.join("conf-base");
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(p, e)),
        };
        let v1 = parse_records(&data, BASE_MAGIC_V1, 0)
            .into_iter()
            .map(|(_, h, p)| (p, Print::file(h)));
        let v2 = parse_records(&data, BASE_MAGIC, 0)
            .into_iter()
            .filter_map(|(c, h, p)| {
                let kind = Print::kind_of_code(c[0])?;
                Some((p, Print { kind, digest: h }))
            });
        Ok(Base {
            map: v1.chain(v2).collect(),
        })
    }

    pub fn get(&self, path: &[u8]) -> Option<&Print> {
        self.map.get(path)
    }
}

/// One entry kept with the admin's edits at the last run (for `verify` and `conf-diff`).
#[derive(Clone, Debug)]
pub struct Kept {
    pub verdict: Verdict,
    pub path: Box<[u8]>,
    /// What the run kept (and its metadata; None in a list written before it was recorded).
    pub live: Print,
    pub meta: Option<Meta>,
}

impl Kept {
    /// Whether the live entry `e` at `path` under `root` is still what the run kept: same
    /// type and content, and same mode, owner and group where those were recorded.
    pub fn matches(&self, root: BorrowedFd<'_>, e: &Ent<'_>) -> io::Result<bool> {
        if e.kind != self.live.kind || self.meta.is_some_and(|m| m != Meta::of(e)) {
            return Ok(false);
        }
        Ok(Print::of(root, &self.path, e)? == self.live)
    }
}

/// The kept list's records: `<verdict><type>`, the hash, then `<mode>:<uid>:<gid>/` in front
/// of the path (a path never starts with a digit-colon run ending in `/`, since it is
/// relative; the `/` ends the field).
fn kept_meta_prefix(m: &Meta) -> Vec<u8> {
    format!("{:o}:{}:{}/", m.mode, m.uid, m.gid).into_bytes()
}

fn split_kept_meta(p: &[u8]) -> Option<(Meta, &[u8])> {
    let slash = p.iter().position(|&b| b == b'/')?;
    let s = std::str::from_utf8(&p[..slash]).ok()?;
    let mut it = s.split(':');
    let mode = u16::from_str_radix(it.next()?, 8).ok()?;
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    Some((Meta { mode, uid, gid }, &p[slash + 1..]))
}

/// The entries kept with the admin's edits at the last run.
pub fn load_kept(state: &StateDir, dst: &Path) -> Vec<Kept> {
    let Ok(p) = state.tree_dir(dst).map(|d| d.join("conf-kept")) else {
        return Vec::new();
    };
    let data = std::fs::read(p).unwrap_or_default();
    let v1 = parse_records(&data, KEPT_MAGIC_V1, 0)
        .into_iter()
        .filter_map(|(c, h, p)| {
            Some(Kept {
                verdict: Verdict::from_code(c[0])?,
                path: p,
                live: Print::file(h),
                meta: None,
            })
        });
    let v2 = parse_records(&data, KEPT_MAGIC, 1)
        .into_iter()
        .filter_map(|(c, h, p)| {
            let (meta, path) = split_kept_meta(&p)?;
            Some(Kept {
                verdict: Verdict::from_code(c[0])?,
                path: path.into(),
                live: Print {
                    kind: Print::kind_of_code(c[1])?,
                    digest: h,
                },
                meta: Some(meta),
            })
        });
    v1.chain(v2).collect()
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
    let dfd = fsx::open_root_nofollow(dst_root).at(dst_root)?;
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
        if undelete
            .iter()
            .any(|u| u.as_ref() == p || (u.starts_with(p) && u.get(p.len()) == Some(&b'/')))
        {
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
        if d.kind != Kind::Dir
            || !undelete
                .iter()
                .any(|u| u.as_ref() == p || (u.starts_with(p) && u.get(p.len()) == Some(&b'/')))
        {
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
    let sfd = fsx::open_root(src_root).at(src_root)?;
    let dfd = fsx::open_root_nofollow(dst_root).at(dst_root)?;
    let mut held: HashSet<&[u8]> = unapplied.iter().map(|p| p.as_ref()).collect();
    held.extend(d.unapplied.iter().map(|p| p.as_ref()));
    for dec in d.list.iter().filter(|x| x.verdict == Verdict::KeptNew) {
        let (e, j) = dec.jail.as_ref().expect("kept-new has the jail's");
        let mut name = dec.path.to_vec();
        name.extend_from_slice(NEW_SUFFIX.as_bytes());
        let ours = [old.get(&dec.path).copied(), Some(*j)];
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

/// The name of the copy of the base a generation's record saves (see [`install_base`]).
pub const GEN_BASE: &str = "conf-base";

/// The file holding `dst`'s base: what a generation saves as the base before its sync (see
/// [`install_base`]).
pub fn base_path(state: &StateDir, dst: &Path) -> Result<PathBuf> {
    Ok(state.tree_dir(dst)?.join("conf-base"))
}

/// After a rollback to a generation that saved the base before its sync (`saved`, or `None`
/// when there was none then): that base is `dst`'s again, however many syncs the rollback
/// undoes — else every protected file the restored tree holds that a later sync changed
/// would look edited to the next run, and the jail's versions would never be installed.
/// `conf-base.prev` goes too (it is the base before a sync now undone), and so does the kept
/// list, which described the tree switched away. Safe to repeat: the same bytes are written
/// again.
pub fn install_base(state: &StateDir, dst: &Path, saved: Option<&Path>) -> Result<()> {
    let dir = state.tree_dir(dst)?;
    let cur = dir.join("conf-base");
    match saved {
        Some(from) => {
            let data = std::fs::read(from).at(from)?;
            // Whole or old, as `write_records` writes it.
            let tmp = cur.with_extension("new");
            std::fs::write(&tmp, &data).at(&tmp)?;
            std::fs::rename(&tmp, &cur).at(&cur)?;
        }
        None => remove_if_there(&cur)?,
    }
    remove_if_there(&dir.join("conf-base.prev"))?;
    remove_if_there(&dir.join("conf-kept"))
}

fn remove_if_there(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(p, e)),
        _ => Ok(()),
    }
}

/// Whether the base before the last sync's is kept (`conf-base.prev`).
pub fn base_prev_exists(state: &StateDir, dst: &Path) -> Result<bool> {
    Ok(state.tree_dir(dst)?.join("conf-base.prev").exists())
}

/// [`undo_base`] made safe to repeat (a killed rollback's is done again by the next command):
/// `prev` says whether `conf-base.prev` was there when the rollback began; while it still is,
/// it replaces `conf-base`; once gone, that step is done. Without `prev` known, as
/// [`undo_base`].
pub fn undo_base_once(state: &StateDir, dst: &Path, prev: Option<bool>) -> Result<()> {
    let dir = state.tree_dir(dst)?;
    match prev {
        Some(true) if !dir.join("conf-base.prev").exists() => {
            let kept = dir.join("conf-kept");
            if kept.exists() {
                std::fs::remove_file(&kept).at(&kept)?;
            }
            Ok(())
        }
        _ => undo_base(state, dst),
    }
}

/// After a rollback of `dst`'s last sync whose generation saved no base (recorded by an
/// older jailsync): the base is again the one before it (else every protected file the
/// rollback restored would look edited to the next run), and the kept list, which described
/// the tree switched away, is dropped. Only the last sync's can be undone this way: a rollback
/// past several such generations leaves the base of the one before the last.
pub fn undo_base(state: &StateDir, dst: &Path) -> Result<()> {
    let dir = state.tree_dir(dst)?;
    let prev = dir.join("conf-base.prev");
    let cur = dir.join("conf-base");
    if prev.exists() {
        std::fs::rename(&prev, &cur).at(&cur)?;
    } else if cur.exists() {
        std::fs::remove_file(&cur).at(&cur)?;
    }
    let kept = dir.join("conf-kept");
    if kept.exists() {
        std::fs::remove_file(&kept).at(&kept)?;
    }
    Ok(())
}

/// Writing the jail's version of one kept entry as `name` beside it.
struct NewWrite<'a> {
    sroot: BorrowedFd<'a>,
    droot: BorrowedFd<'a>,
    /// The kept entry (its jail version is read from `sroot` there) and the name to write.
    path: &'a [u8],
    name: &'a [u8],
    /// What a `name` jailsync wrote may hold: the jail's version it last offered (the old
    /// base's) or the one it offers now. Anything else there is the admin's.
    ours: &'a [Option<Print>],
    owner: bool,
}

impl NewWrite<'_> {
    /// Writes the jail's entry `e` through a temporary name beside `name`; returns where an
    /// admin's own `name` was set aside, if one was in the way.
    fn write(&self, e: &Entry) -> io::Result<Option<Box<[u8]>>> {
        if e.kind == Kind::Dir {
            return Err(io::Error::other(
                "the jail's version is a directory: not written beside the kept entry",
            ));
        }
        let (dp, dn) = fsx::split_parent(self.name);
        let dd = fsx::open_dir_beneath(self.droot, dp)?;
        // Ends in the suffix too: a run killed here leaves a name no sync touches.
        let mut tmp = b".".to_vec();
        tmp.extend_from_slice(dn);
        tmp.extend_from_slice(format!(".{}{NEW_SUFFIX}", std::process::id()).as_bytes());
        let _ = fsx::unlink_at(dd.as_fd(), &tmp);
        // The directory keeps the jail's mtime: writing beside a kept file is not a change
        // `verify` should see.
        let before = fsx::fstat(dd.as_fd())?;
        let r = self.make(dd.as_fd(), &tmp, e).and_then(|()| {
            let aside = self.set_aside(dd.as_fd(), dn)?;
            fsx::rename_at(dd.as_fd(), &tmp, dd.as_fd(), dn)?;
            Ok(aside)
        });
        if r.is_err() {
            let _ = fsx::unlink_at(dd.as_fd(), &tmp);
        }
        fsx::set_mtime(
            dd.as_fd(),
            before.st_mtime as i64,
            before.st_mtime_nsec as u32,
        )?;
        r
    }

    /// Makes the jail's entry `e` as `tmp` in `dd`.
    fn make(&self, dd: BorrowedFd<'_>, tmp: &[u8], e: &Entry) -> io::Result<()> {
        let meta = fsx::MetaOpts {
            owner: self.owner,
            xattrs: false,
        };
        if e.kind != Kind::File {
            match e.kind {
                Kind::Symlink => fsx::symlink_at(e.target().unwrap_or_default(), dd, tmp)?,
                _ => fsx::mknod_at(dd, tmp, e)?,
            }
            return fsx::set_meta_at(dd, tmp, e, meta);
        }
        let (sp, sn) = fsx::split_parent(self.path);
        let sd = fsx::open_dir_beneath(self.sroot, sp)?;
        let from = fsx::open_read_at(sd.as_fd(), sn)?;
        let to = fsx::create_excl_at(dd, tmp)?;
        let mut r = std::fs::File::from(from);
        let mut w = std::fs::File::from(to);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        w.write_all(&buf)?;
        fsx::set_meta_fd(w.as_fd(), e, meta)
    }

    /// An entry at `dn` that is not one jailsync wrote is the admin's: renamed (never
    /// replaced) to the first free `dn.N`. Returns that name, relative to the tree.
    fn set_aside(&self, dd: BorrowedFd<'_>, dn: &[u8]) -> io::Result<Option<Box<[u8]>>> {
        let st = match fsx::lstat_at(dd, &fsx::cstr(dn)?) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut e = Entry::new(fsx::kind_of(st.st_mode));
        let now = match e.kind {
            Kind::File => Print::file(hash_at(dd, dn)?),
            Kind::Symlink => {
                e.set_target(Some(fsx::read_link_at(dd, &fsx::cstr(dn)?)?.into()));
                Print::special(&e)
            }
            _ => {
                e.set_rdev(st.st_rdev);
                Print::special(&e)
            }
        };
        if self.ours.contains(&Some(now)) {
            return Ok(None);
        }
        for n in 1u32.. {
            let mut to = dn.to_vec();
            to.extend_from_slice(format!(".{n}").as_bytes());
            match fsx::rename_noreplace_at(dd, dn, &to) {
                Ok(()) => {
                    let mut rel = fsx::split_parent(self.name).0.to_vec();
                    if !rel.is_empty() {
                        rel.push(b'/');
                    }
                    rel.extend_from_slice(&to);
                    return Ok(Some(rel.into()));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("some NAME.jailsync-new.N is free")
    }
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

/// A unified diff of `old` and `new` (lines), with `ctx` lines of context; empty when equal.
/// The edit script comes from imara-diff's histogram diff: linear in space (a table of every
/// pair of lines took gigabytes for a 30 000-line file) and near-linear in time on real input.
pub fn unified_diff(old_name: &str, new_name: &str, old: &str, new: &str, ctx: usize) -> String {
    use imara_diff::{Algorithm, Diff, InternedInput};
    let mut input: InternedInput<&str> = InternedInput::default();
    input.update_before(old.lines());
    input.update_after(new.lines());
    let mut diff = Diff::compute(Algorithm::Histogram, &input);
    diff.postprocess_lines(&input);
    let (a, b) = (&input.before, &input.after);
    let line = |t: imara_diff::Token| input.interner[t];
    // The edit script: (tag, line index in a, line index in b); removals before additions.
    let mut ops: Vec<(char, usize, usize)> = Vec::with_capacity(a.len().max(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && diff.is_removed(i as u32) {
            ops.push(('-', i, j));
            i += 1;
        } else if j < b.len() && diff.is_added(j as u32) {
            ops.push(('+', i, j));
            j += 1;
        } else {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        }
    }
    let changes: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    if changes.is_empty() {
        return String::new();
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let mut c = 0;
    while c < changes.len() {
        // One hunk: changes closer than 2*ctx lines share their context.
        let mut last = c;
        while last + 1 < changes.len() && changes[last + 1] - changes[last] <= 2 * ctx + 1 {
            last += 1;
        }
        let start = changes[c].saturating_sub(ctx);
        let end = (changes[last] + ctx + 1).min(ops.len());
        let (a0, b0) = (ops[start].1, ops[start].2);
        let ac = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let bc = ops[start..end].iter().filter(|o| o.0 != '-').count();
        let at = |s: usize, c: usize| if c == 0 { s } else { s + 1 };
        out.push_str(&format!(
            "@@ -{},{ac} +{},{bc} @@\n",
            at(a0, ac),
            at(b0, bc)
        ));
        for &(t, i, j) in &ops[start..end] {
            out.push(t);
            out.push_str(line(if t == '+' { b[j] } else { a[i] }));
            out.push('\n');
        }
        c = last + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_of_one_changed_line() {
        let d = unified_diff(
            "a",
            "b",
            "1\n2\n3\n4\n5\n6\n7\n8\n",
            "1\n2\n3\n4\nfive\n6\n7\n8\n",
            2,
        );
        assert_eq!(
            d,
            "--- a\n+++ b\n@@ -3,5 +3,5 @@\n 3\n 4\n-5\n+five\n 6\n 7\n"
        );
        assert_eq!(unified_diff("a", "b", "x\n", "x\n", 3), "");
        let d = unified_diff("a", "b", "", "new\n", 3);
        assert_eq!(d, "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+new\n");
    }

    /// The peak resident size of this process so far, in KiB.
    fn peak_rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let l = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        l.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The LCS table of a 30 000-line file took 3.5 GB (and a 20 000-line one aborted under a
    /// 1 GiB limit): the diff must stay linear in space.
    #[test]
    fn conf_diff_of_a_30k_line_file_runs_in_bounded_memory() {
        let old: String = (0..30_000).map(|i| format!("option_{i} = {i}\n")).collect();
        let new: String = (0..30_000)
            .map(|i| match i % 1000 {
                0 => format!("option_{i} = changed\n"),
                _ => format!("option_{i} = {i}\n"),
            })
            .collect();
        let before = peak_rss_kib();
        let d = unified_diff("a", "b", &old, &new, 3);
        let grown_mib = (peak_rss_kib() - before) / 1024;
        assert!(
            grown_mib < 128,
            "the diff grew the peak RSS by {grown_mib} MiB"
        );
        assert_eq!(d.matches("\n@@ ").count(), 30, "one hunk per changed line");
        assert!(d.contains("-option_29000 = 29000\n+option_29000 = changed\n"));
        // Nothing in common at all: still quick and small.
        let other: String = (0..30_000).map(|i| format!("other {i}\n")).collect();
        let d = unified_diff("a", "b", &old, &other, 3);
        assert_eq!(d.lines().filter(|l| l.starts_with('-')).count(), 30_001);
    }

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

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r");
        let h = [7u8; 32];
        let recs = [
            (b"Nl".to_vec(), &h, b"644:0:0/etc/a b".to_vec()),
            (b"DB".to_vec(), &h, b"4755:1:2/etc/\n".to_vec()),
        ];
        write_records(&f, KEPT_MAGIC, recs.iter().cloned()).unwrap();
        let got = parse_records(&std::fs::read(&f).unwrap(), KEPT_MAGIC, 1);
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].0, b"Nl");
        let (m, p) = split_kept_meta(&got[1].2).unwrap();
        assert_eq!((m.mode, m.uid, m.gid, p), (0o4755, 1, 2, &b"etc/\n"[..]));
    }

    /// A base written before types were recorded is still read: its records are files.
    #[test]
    fn a_version_1_base_is_read_as_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r");
        let h = [9u8; 32];
        let recs = [(b"B".to_vec(), &h, b"etc/a.conf".to_vec())];
        write_records(&f, BASE_MAGIC_V1, recs.iter().cloned()).unwrap();
        let data = std::fs::read(&f).unwrap();
        let got = parse_records(&data, BASE_MAGIC_V1, 0);
        assert_eq!(got.len(), 1);
        assert!(parse_records(&data, BASE_MAGIC, 0).is_empty());
        let mut l = Entry::new(Kind::Symlink);
        l.set_target(Some(b"/srv/conf/a.conf"[..].into()));
        let p = Print::special(&l);
        assert_ne!(
            p,
            Print::file(*blake3::hash(b"/srv/conf/a.conf").as_bytes())
        );
        assert_eq!(Print::kind_of_code(p.code()), Some(Kind::Symlink));
    }
}
