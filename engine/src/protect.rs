//! Configuration protection, like dpkg's conffiles or Gentoo's CONFIG_PROTECT.
//!
//! As root, pkgsrc's `PKG_SYSCONFDIR` is `/usr/pkg/etc`, inside the synced tree: a plain sync
//! would put the jail's defaults over the admin's edits. Protected files (every tree's `etc/`
//! by default, plus globs) are merged three-way, with the *base* being the jail's version
//! jailsync last synced (its hash, recorded in the state dir per destination after each
//! successful run, see [`Base`]):
//!
//! | live vs base | jail vs base | result |
//! |---|---|---|
//! | same | any | the jail's (normal sync) |
//! | edited | same | live kept |
//! | edited | changed | live kept, the jail's written as `NAME.jailsync-new` beside it |
//! | edited | dropped | live kept |
//!
//! With no base for a path (first run, or newly protected) a live file that differs from the
//! jail counts as edited and the jail's changed. Decisions are made on the plan before the next
//! tree is staged: a kept file is simply not replaced (the staging links the live inode
//! across, as for any unchanged file) and a kept file the jail dropped is not deleted.
//! `*.jailsync-new` files are never synced nor deleted (the caller excludes them), and are
//! written after the switch (a rollback switches them away with the tree).
//!
//! Only content is merged: a metadata-only change (mode, owner, mtime) of a protected file
//! whose content is the jail's is applied as for any file.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use crate::entry::{Entries, Entry, Hash, Kind};
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

#[derive(Clone, Debug)]
pub struct Decision {
    /// Relative to the tree.
    pub path: Box<[u8]>,
    pub verdict: Verdict,
    /// The live (kept) content's hash.
    pub live: Hash,
    /// The jail's entry (None: the jail dropped it) and its hash.
    pub jail: Option<(Entry, Hash)>,
}

/// The protection decisions of one tree.
#[derive(Debug, Default)]
pub struct Decisions {
    pub list: Vec<Decision>,
}

/// The hashes of the jail's protected files at the last successful sync of a destination.
#[derive(Debug, Default)]
pub struct Base {
    map: HashMap<Box<[u8]>, Hash>,
}

const BASE_MAGIC: &[u8] = b"#jailsync-conf-base 1\n";
const KEPT_MAGIC: &[u8] = b"#jailsync-conf-kept 1\n";

/// Records: `<code><hex hash> <path>\0` (paths never hold a NUL).
fn parse_records(data: &[u8], magic: &[u8]) -> Vec<(u8, Hash, Box<[u8]>)> {
    let Some(body) = data.strip_prefix(magic) else {
        return Vec::new();
    };
    body.split_inclusive(|&b| b == 0)
        .filter_map(|r| r.strip_suffix(&[0]))
        .filter_map(|r| {
            let (&code, rest) = r.split_first()?;
            let hex = std::str::from_utf8(rest.get(..64)?).ok()?;
            let path = rest.get(65..)?;
            Some((code, from_hex(hex)?, path.into()))
        })
        .collect()
}

fn write_records<'a>(
    file: &Path,
    magic: &[u8],
    recs: impl Iterator<Item = (u8, &'a Hash, &'a [u8])>,
) -> Result<()> {
    let tmp = file.with_extension("new");
    let r = (|| -> io::Result<()> {
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(magic)?;
        for (code, h, p) in recs {
            w.write_all(&[code])?;
            w.write_all(to_hex(h).as_bytes())?;
            w.write_all(b" ")?;
            w.write_all(p)?;
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
        Ok(Base {
            map: parse_records(&data, BASE_MAGIC)
                .into_iter()
                .map(|(_, h, p)| (p, h))
                .collect(),
        })
    }

    pub fn get(&self, path: &[u8]) -> Option<&Hash> {
        self.map.get(path)
    }
}

/// The files kept with the admin's edits at the last run (for `verify` and `conf-diff`).
pub fn load_kept(state: &StateDir, dst: &Path) -> Vec<(Verdict, Hash, Box<[u8]>)> {
    let Ok(p) = state.tree_dir(dst).map(|d| d.join("conf-kept")) else {
        return Vec::new();
    };
    let data = std::fs::read(p).unwrap_or_default();
    parse_records(&data, KEPT_MAGIC)
        .into_iter()
        .filter_map(|(c, h, p)| Some((Verdict::from_code(c)?, h, p)))
        .collect()
}

fn hash_at(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<Hash> {
    let (parent, name) = fsx::split_parent(path);
    let d = fsx::open_dir_beneath(root, parent)?;
    let f = fsx::open_read_at(d.as_fd(), name)?;
    Ok(hash_fd(f.as_fd(), 0)?.0)
}

/// The live paths these rules protect in a scanned tree, for the last look before its switch
/// (`guard`): `etc` whole (new files there count too) and each file the globs cover.
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

/// Decides every protected file of a planned tree and changes the plan (and the source
/// entries of kept files, which then describe the live version the next tree keeps).
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
    // Live entries a kept file needs: its directories, which the plan may delete.
    let mut undelete: Vec<Box<[u8]>> = Vec::new();
    let mut mirror: Vec<(usize, usize, Hash)> = Vec::new();
    for (k, a) in plan.actions.iter().enumerate() {
        let path = plan.path(a, src, dst);
        if !rules.covers(prefix, path) || a.dst == NONE {
            continue;
        }
        let d = dst.at(a.dst as usize);
        if d.kind != Kind::File {
            continue;
        }
        let live_hash = |h: Option<&Hash>| match h {
            Some(h) => Ok(*h),
            None => hash_at(dfd.as_fd(), path).at(dst_root.join(fsx::os(path))),
        };
        match a.op {
            Op::Replace | Op::Exchange if a.src != NONE => {
                let s = src.at(a.src as usize);
                if s.kind != Kind::File {
                    continue;
                }
                let l = live_hash(d.hash)?;
                let j = match s.hash {
                    Some(h) => *h,
                    None => hash_at(sfd.as_fd(), path).at(src_root.join(fsx::os(path)))?,
                };
                let b = base.get(path);
                let edited = match b {
                    Some(b) => l != *b,
                    None => l != j,
                };
                if !edited || l == j {
                    continue;
                }
                let jail_changed = b.is_none_or(|b| j != *b);
                drop[k] = true;
                mirror.push((a.src as usize, a.dst as usize, l));
                out.list.push(Decision {
                    path: path.into(),
                    verdict: if jail_changed {
                        Verdict::KeptNew
                    } else {
                        Verdict::Kept
                    },
                    live: l,
                    jail: Some(((*s).clone(), j)),
                });
            }
            Op::Delete => {
                let l = live_hash(d.hash)?;
                if base.get(path).is_some_and(|b| *b == l) {
                    continue;
                }
                drop[k] = true;
                undelete.push(fsx::split_parent(path).0.into());
                out.list.push(Decision {
                    path: path.into(),
                    verdict: Verdict::KeptDropped,
                    live: l,
                    jail: None,
                });
            }
            _ => {}
        }
    }
    // A kept file's directories stay too (deleting them would take it along).
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
    plan::drop_actions(plan, &drop);
    // The source entry of a kept file now describes the live file the next tree links: the
    // records and caches then say what is really there.
    for (si, dj, l) in mirror {
        let d = dst[dj].clone();
        let x = dst.at(dj).xattrs().cloned();
        let e = &mut src[si];
        (e.size, e.mode, e.ino, e.nlink, e.sparse) = (d.size, d.mode, d.ino, d.nlink, d.sparse);
        let (ms, mn) = d.mtime();
        e.set_mtime(ms, mn);
        e.set_ids(d.uid(), d.gid(), d.dev());
        let (cs, cn) = d.ctime();
        e.set_ctime(cs, cn);
        e.set_xattrs(x);
        src.set_hash(si, Some(l));
    }
    out.list.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The `.jailsync-new` files written (relative paths), and those that could not be, with why.
pub type Finished = (Vec<Box<[u8]>>, Vec<(Box<[u8]>, io::Error)>);

/// After a successful run: writes each `NAME.jailsync-new` into the live tree (whole: a
/// temporary name, then a rename over an older one), then records the new base (the jail's
/// protected files' hashes) and the kept files. Returns the `.jailsync-new` paths written
/// (relative to the tree) and the errors met writing them.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    state: &StateDir,
    rules: &Rules,
    prefix: &[u8],
    src_root: &Path,
    dst_root: &Path,
    src: &Entries,
    d: &Decisions,
    owner: bool,
) -> Result<Finished> {
    let mut written = Vec::new();
    let mut errors = Vec::new();
    let sfd = fsx::open_root(src_root).at(src_root)?;
    let dfd = fsx::open_root_nofollow(dst_root).at(dst_root)?;
    for dec in d.list.iter().filter(|x| x.verdict == Verdict::KeptNew) {
        let (e, _) = dec.jail.as_ref().expect("kept-new has the jail's");
        let mut name = dec.path.to_vec();
        name.extend_from_slice(NEW_SUFFIX.as_bytes());
        match write_new(sfd.as_fd(), dfd.as_fd(), &dec.path, &name, e, owner) {
            Ok(()) => written.push(name.into()),
            Err(err) => errors.push((name.into(), err)),
        }
    }
    // The base: what the jail offered this time, for every protected file it has.
    let decided: HashMap<&[u8], &Decision> = d.list.iter().map(|x| (x.path.as_ref(), x)).collect();
    let mut base: Vec<(Box<[u8]>, Hash)> = Vec::new();
    for (i, e) in src.iter().enumerate() {
        if e.kind != Kind::File || !rules.covers(prefix, e.path) {
            continue;
        }
        let h = match decided.get(e.path).and_then(|x| x.jail.as_ref()) {
            Some((_, j)) => *j,
            None => match src.hash(i) {
                Some(h) => *h,
                None => match hash_at(sfd.as_fd(), e.path) {
                    Ok(h) => h,
                    Err(_) => continue,
                },
            },
        };
        base.push((e.path.into(), h));
    }
    let dir = state.tree_dir(dst_root)?;
    // The base before this run, for a rollback of it (see `undo_base`).
    let cur = dir.join("conf-base");
    if cur.exists() {
        let prev = dir.join("conf-base.prev");
        std::fs::copy(&cur, &prev).at(&prev)?;
    }
    write_records(
        &dir.join("conf-base"),
        BASE_MAGIC,
        base.iter().map(|(p, h)| (b'B', h, p.as_ref())),
    )?;
    write_records(
        &dir.join("conf-kept"),
        KEPT_MAGIC,
        d.list
            .iter()
            .map(|x| (x.verdict.code(), &x.live, x.path.as_ref())),
    )?;
    Ok((written, errors))
}

/// After a rollback of `dst`'s last sync: the base is again the one before it (else every
/// protected file the rollback restored would look edited to the next run), and the kept
/// list, which described the tree switched away, is dropped.
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

/// Copies the jail's `path` to live `name` through a temporary name beside it.
fn write_new(
    sroot: BorrowedFd<'_>,
    droot: BorrowedFd<'_>,
    path: &[u8],
    name: &[u8],
    e: &Entry,
    owner: bool,
) -> io::Result<()> {
    let (sp, sn) = fsx::split_parent(path);
    let sd = fsx::open_dir_beneath(sroot, sp)?;
    let (dp, dn) = fsx::split_parent(name);
    let dd = fsx::open_dir_beneath(droot, dp)?;
    // Ends in the suffix too: a run killed here leaves a name no sync touches.
    let mut tmp = b".".to_vec();
    tmp.extend_from_slice(dn);
    tmp.extend_from_slice(format!(".{}{NEW_SUFFIX}", std::process::id()).as_bytes());
    let _ = fsx::unlink_at(dd.as_fd(), &tmp);
    // The directory keeps the jail's mtime: writing beside a kept file is not a change
    // `verify` should see.
    let before = fsx::fstat(dd.as_fd())?;
    let r = (|| {
        let from = fsx::open_read_at(sd.as_fd(), sn)?;
        let to = fsx::create_excl_at(dd.as_fd(), &tmp)?;
        let mut r = std::fs::File::from(from);
        let mut w = std::fs::File::from(to);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        w.write_all(&buf)?;
        let meta = fsx::MetaOpts {
            owner,
            xattrs: false,
        };
        fsx::set_meta_fd(w.as_fd(), e, meta)?;
        fsx::rename_at(dd.as_fd(), &tmp, dd.as_fd(), dn)
    })();
    if r.is_err() {
        let _ = fsx::unlink_at(dd.as_fd(), &tmp);
    }
    set_mtime(
        dd.as_fd(),
        before.st_mtime as i64,
        before.st_mtime_nsec as u32,
    )?;
    r
}

fn set_mtime(fd: BorrowedFd<'_>, secs: i64, nsec: u32) -> io::Result<()> {
    use rustix::fs::{Timespec, Timestamps, UTIME_OMIT};
    let t = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs as _,
            tv_nsec: nsec as _,
        },
    };
    rustix::fs::futimens(fd, &t).map_err(io::Error::from)
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
        set_mtime(self.fd.as_fd(), self.mtime.0, self.mtime.1)
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
        let recs = [(b'N', &h, &b"etc/a b"[..]), (b'D', &h, &b"etc/\n"[..])];
        write_records(&f, KEPT_MAGIC, recs.iter().copied()).unwrap();
        let got = parse_records(&std::fs::read(&f).unwrap(), KEPT_MAGIC);
        assert_eq!(got.len(), 2);
        assert_eq!(&*got[1].2, b"etc/\n");
        assert_eq!(got[0].0, b'N');
    }
}
