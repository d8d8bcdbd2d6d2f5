//! Staging: building the next release of a tree, whole, beside the live one.
//!
//! The next tree is made in a private directory on the live tree's filesystem (see
//! [`crate::switch`]) and is complete before anyone can see it:
//! - every directory is made fresh (mode 0700 until its metadata is set, deepest first, last);
//! - a non-directory the plan leaves alone (or changes only in metadata) is **hard-linked**
//!   from the live tree: the same inode, so nothing is copied and caches keyed by inode stay
//!   valid; a metadata-only change is then set on that shared inode (see below);
//! - new and changed files are copied from the source straight under their final names;
//!   hard-link followers are linked to their leader's new inode;
//! - live entries that must stay (excluded paths, directories that still hold them, entries
//!   whose source could not be read) are linked across too.
//!
//! **Metadata-only changes on a shared inode** are visible in the live tree as soon as they
//! are staged, before the switch: mode, owner, times and xattrs of a file whose content does
//! not change. That is the one thing not switched atomically, by choice — copying every file
//! whose mtime moved would write the whole release again on a slow disk. The generation keeps
//! the old metadata of these entries ([`Built::meta_in_place`]) and rollback sets it back.
//!
//! Any failure to write the next tree (no space, no inodes, an I/O error) fails the whole
//! build: the caller removes the next tree and the live one was never touched. A source entry
//! that cannot be read (or changes while copied) keeps its live version and is reported.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use crate::apply::{copy_checked, is_source_side, ApplyOpts, EntryError};
use crate::entry::{Ent, Entries, Kind};
use crate::fsx::{self, split_parent};
use crate::hash;
use crate::plan::{Op, Plan, NONE};
use crate::progress::{Phase, Progress};
use crate::scan::Excludes;

/// What a non-directory of the next tree is made from.
#[derive(Clone, Copy, PartialEq, Debug)]
enum From {
    /// Copied or created from the source entry.
    Source(u32),
    /// A hard link to the source's group leader, already staged.
    Follower(u32, u32),
    /// The live inode at the same path, linked; metadata of the source set on it when given.
    Live(u32, Option<u32>),
}

/// What building a next tree did.
#[derive(Debug, Default)]
pub struct Built {
    pub bytes_written: u64,
    /// Inodes shared with the live tree.
    pub linked: u64,
    /// Entries kept at their live version (or left out) because their source failed.
    pub errors: Vec<EntryError>,
    /// Source entries whose scanned hash proved stale while copying.
    pub stale: Vec<u32>,
    /// Destination indices of live inodes whose metadata was changed in place.
    pub meta_in_place: Vec<u32>,
    /// Live files found immutable or append-only (copied, not linked): they stay where they
    /// are, bounds of the switch (see [`crate::steps`]).
    pub pinned: Vec<Box<[u8]>>,
}

/// A failure that fails the whole build.
#[derive(Debug)]
pub struct Fatal {
    pub path: Box<[u8]>,
    pub error: io::Error,
}

pub struct Builder<'a> {
    pub src_root: BorrowedFd<'a>,
    pub live_root: BorrowedFd<'a>,
    pub next_root: BorrowedFd<'a>,
    pub src: &'a Entries,
    pub dst: &'a Entries,
    pub plan: &'a Plan,
    pub opts: ApplyOpts,
    pub excludes: &'a Excludes,
    /// Live directories that hold excluded entries (from the destination's scan).
    pub holds_excluded: &'a [Box<[u8]>],
    /// Non-zero when a signal asked the run to stop: the build ends early (the caller then
    /// discards it).
    pub stop: Option<&'a std::sync::atomic::AtomicUsize>,
    /// Source files are moved in as they are, not copied (see `SyncOpts::move_source`).
    pub move_source: bool,
    /// What is made in `next_root` starts without xattrs ([`fsx::makes_bare`]): the metadata
    /// of an entry made there is set without reading its xattrs first. That holds below it
    /// too: every directory of the next tree is made bare and gets its own (jail's) ACLs only
    /// in step 4 of [`Builder::build`], after everything in it is made, so nothing staged
    /// inherits a default ACL. Otherwise (a `next` with xattrs) each entry's are made exact,
    /// inherited ACLs removed (see [`fsx::strip_acls`] for the rule).
    pub next_bare: bool,
}

/// Remembers the last directory opened under one root; entries come in path order.
pub(crate) struct Dirs<'r> {
    root: BorrowedFd<'r>,
    last: Option<(Vec<u8>, OwnedFd)>,
}

impl<'r> Dirs<'r> {
    pub(crate) fn new(root: BorrowedFd<'r>) -> Self {
        Dirs { root, last: None }
    }

    pub(crate) fn get(&mut self, rel: &[u8]) -> io::Result<BorrowedFd<'_>> {
        if self.last.as_ref().is_none_or(|(p, _)| p != rel) {
            let fd = fsx::open_dir_beneath(self.root, rel)?;
            self.last = Some((rel.to_vec(), fd));
        }
        Ok(self.last.as_ref().expect("just set").1.as_fd())
    }
}

impl<'a> Builder<'a> {
    /// Builds the whole next tree. The caller owns `next_root` (an empty directory) and
    /// removes it on failure.
    pub fn build(&self, pool: &rayon::ThreadPool, progress: &dyn Progress) -> Result<Built, Fatal> {
        let (dirs, items) = self.layout();
        let mut built = Built::default();
        progress.start(Phase::Stage, (dirs.len() + items.len()) as u64);
        progress.total_bytes(
            items
                .iter()
                .filter_map(|f| match f {
                    From::Source(si) => Some(self.src.at(*si as usize)),
                    _ => None,
                })
                .filter(|e| e.kind == Kind::File)
                .map(|e| e.size)
                .sum(),
        );

        // 1. Directories, parents first, private (0700) until their metadata is set.
        let mut cache = Dirs::new(self.next_root);
        for d in &dirs {
            let p = d.path(self);
            if p.is_empty() {
                continue;
            }
            let (parent, name) = split_parent(p);
            cache
                .get(parent)
                .and_then(|fd| fsx::mkdir_at(fd, name, 0o700))
                .map_err(|error| Fatal {
                    path: p.into(),
                    error,
                })?;
            progress.advance(1, 0);
        }
        drop(cache);

        // 2. Non-directories across the workers; followers after their leaders.
        // Followers last (a stable sort keeps path order within each part): two slices of one
        // list, not two more lists of the whole tree.
        let mut items = items;
        items.sort_by_key(|f| matches!(f, From::Follower(..)));
        let split = items.partition_point(|f| !matches!(f, From::Follower(..)));
        let (leaders, followers) = items.split_at(split);
        let bytes = AtomicU64::new(0);
        let linked = AtomicU64::new(0);
        let out = Mutex::new(Built::default());
        let fatal: Mutex<Option<Fatal>> = Mutex::new(None);
        for batch in [leaders, followers] {
            pool.install(|| {
                batch.par_chunks(64).for_each(|chunk| {
                    let mut s = Dirs::new(self.src_root);
                    let mut l = Dirs::new(self.live_root);
                    let mut n = Dirs::new(self.next_root);
                    let mut local = Built::default();
                    for &from in chunk {
                        let stopping = self.stop.is_some_and(|s| s.load(Ordering::Relaxed) != 0);
                        if stopping || fatal.lock().expect("poisoned").is_some() {
                            return;
                        }
                        let path = self.item_path(from);
                        match self.make_one(path, from, &mut s, &mut l, &mut n, &mut local) {
                            Ok((b, shared)) => {
                                bytes.fetch_add(b, Ordering::Relaxed);
                                linked.fetch_add(shared as u64, Ordering::Relaxed);
                                progress.advance(1, b);
                            }
                            Err(error) => {
                                *fatal.lock().expect("poisoned") = Some(Fatal {
                                    path: path.into(),
                                    error,
                                });
                                return;
                            }
                        }
                    }
                    let mut o = out.lock().expect("poisoned");
                    o.errors.append(&mut local.errors);
                    o.stale.append(&mut local.stale);
                    o.meta_in_place.append(&mut local.meta_in_place);
                    o.pinned.append(&mut local.pinned);
                });
            });
            if let Some(f) = fatal.lock().expect("poisoned").take() {
                return Err(f);
            }
        }
        let o = out.into_inner().expect("poisoned");
        built.errors = o.errors;
        built.stale = o.stale;
        built.meta_in_place = o.meta_in_place;
        built.meta_in_place.sort_unstable();
        built.pinned = o.pinned;
        built.bytes_written = bytes.into_inner();
        built.linked = linked.into_inner();

        // 3. Live entries that stay without being in either scan: excluded ones and foreign
        // files named like our temporary ones.
        self.carry_unscanned()
            .map_err(|(path, error)| Fatal { path, error })?;

        // 4. Directory metadata, deepest first (children are in place, so mtimes stick).
        let mut cache = Dirs::new(self.next_root);
        for d in dirs.iter().rev() {
            let p = d.path(self);
            let e = d.entry(self);
            let r = if p.is_empty() {
                fsx::set_meta_fd(self.next_root, &e, self.opts.meta).and_then(|()| {
                    if self.opts.fsync {
                        fsx::fsync(self.next_root)?;
                    }
                    Ok(())
                })
            } else {
                let (parent, name) = split_parent(p);
                cache.get(parent).and_then(|fd| {
                    // Every directory here was made by step 1.
                    self.set_made_meta(fd, name, &e)?;
                    if self.opts.fsync {
                        fsx::fsync(fsx::open_dir_beneath(fd, name)?.as_fd())?;
                    }
                    Ok(())
                })
            };
            r.map_err(|error| Fatal {
                path: p.into(),
                error,
            })?;
        }
        hash::release_buffers(pool);
        progress.finish(Phase::Stage);
        Ok(built)
    }

    /// Decides, in path order, every directory and non-directory of the next tree.
    fn layout(&self) -> (Vec<DirFrom>, Vec<From>) {
        let (src, dst) = (self.src, self.dst);
        // Per source entry: the op planned for it (None: unchanged). Per destination entry:
        // whether the plan deletes it. One byte each: this runs for every entry of both trees.
        let mut sop: Vec<Option<Op>> = vec![None; src.len()];
        // Only hard-link followers have a leader (few): a map over them, not over every entry.
        let mut leader_of: std::collections::HashMap<u32, u32> = Default::default();
        let mut deleted = vec![false; dst.len()];
        for a in &self.plan.actions {
            if a.src != NONE {
                sop[a.src as usize] = Some(a.op);
                if a.link_to != NONE {
                    leader_of.insert(a.src, a.link_to);
                }
            } else if a.op == Op::Delete {
                deleted[a.dst as usize] = true;
            }
        }
        let leader = |i: u32| leader_of.get(&i).copied().unwrap_or(NONE);
        let mut dirs = Vec::new();
        let mut items = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < src.len() || j < dst.len() {
            let order = match (src.get(i), dst.get(j)) {
                (Some(s), Some(d)) => s.path.cmp(d.path),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let (si, dj) = match order {
                std::cmp::Ordering::Less => (Some(i), None),
                std::cmp::Ordering::Greater => (None, Some(j)),
                std::cmp::Ordering::Equal => (Some(i), Some(j)),
            };
            i += si.is_some() as usize;
            j += dj.is_some() as usize;
            match (si, dj) {
                (Some(si), dj) => {
                    let s = src.at(si);
                    let op = sop[si];
                    let live_same = dj.filter(|&dj| dst.at(dj).kind == s.kind);
                    match (op, live_same) {
                        // Unchanged, or only its metadata: the live inode (directories are
                        // always new).
                        (None | Some(Op::Meta), Some(dj)) if s.kind != Kind::Dir => {
                            let meta = (op == Some(Op::Meta)).then_some(si as u32);
                            items.push(From::Live(dj as u32, meta));
                        }
                        (None | Some(Op::Meta), Some(_)) => dirs.push(DirFrom::Src(si as u32)),
                        // Planned nothing but of another type: a live directory the plan keeps
                        // because it holds excluded entries.
                        (None, None) if dj.is_some() => {
                            let dj = dj.expect("checked");
                            if dst.at(dj).kind == Kind::Dir {
                                dirs.push(DirFrom::Live(dj as u32));
                            } else {
                                items.push(From::Live(dj as u32, None));
                            }
                        }
                        _ if s.kind == Kind::Dir => dirs.push(DirFrom::Src(si as u32)),
                        _ => {
                            let l = leader(si as u32);
                            if l == NONE {
                                items.push(From::Source(si as u32));
                            } else {
                                items.push(From::Follower(si as u32, l));
                            }
                        }
                    }
                }
                (None, Some(dj)) => {
                    if deleted[dj] {
                        continue;
                    }
                    // Kept by the plan: it holds excluded entries, or its source side could
                    // not be read.
                    if dst.at(dj).kind == Kind::Dir {
                        dirs.push(DirFrom::Live(dj as u32));
                    } else {
                        items.push(From::Live(dj as u32, None));
                    }
                }
                (None, None) => unreachable!(),
            }
        }
        // An entry below a path that is not a directory of the next tree cannot be made (its
        // parent was deleted or turned into a file): it is left out, as the plan deletes it.
        // Parents come before children in path order, so one pass sees every parent decided.
        let mut kept: std::collections::HashSet<&[u8]> = Default::default();
        let mut keep_dirs = Vec::with_capacity(dirs.len());
        for d in &dirs {
            let p = d.path(self);
            if p.is_empty() || kept.contains(split_parent(p).0) {
                kept.insert(p);
                keep_dirs.push(*d);
            }
        }
        items.retain(|f| kept.contains(split_parent(self.item_path(*f)).0));
        (keep_dirs, items)
    }

    fn item_path(&self, f: From) -> &'a [u8] {
        match f {
            From::Source(si) | From::Follower(si, _) => self.src.path(si as usize),
            From::Live(dj, _) => self.dst.path(dj as usize),
        }
    }

    /// Sets the metadata of an entry this build made.
    fn set_made_meta(&self, dir: BorrowedFd<'_>, name: &[u8], e: &Ent<'_>) -> io::Result<()> {
        if self.next_bare {
            fsx::set_meta_fresh_at(dir, name, e, self.opts.meta)
        } else {
            fsx::set_meta_at(dir, name, e, self.opts.meta)
        }
    }

    /// Makes one non-directory. Returns (bytes written, shares a live inode).
    fn make_one(
        &self,
        path: &[u8],
        from: From,
        s: &mut Dirs,
        l: &mut Dirs,
        n: &mut Dirs,
        out: &mut Built,
    ) -> io::Result<(u64, bool)> {
        let (parent, name) = split_parent(path);
        match from {
            From::Live(dj, meta) => {
                let ld = l.get(parent)?;
                let nd = n.get(parent)?;
                if let Err(err) = fsx::link_at(ld, name, nd, name) {
                    return self.copy_unlinkable(err, (dj, meta), path, (ld, nd), out);
                }
                // The name may hold another inode than the one scanned (replaced since): never
                // set the jail's metadata on it, nor vouch for it with the scan's hash. A file of
                // the jail is made from the jail instead; a live-only one keeps its newest version.
                let st = fsx::lstat_at(nd, &fsx::cstr(name)?)?;
                if st.st_ino as u64 != self.dst.at(dj as usize).ino {
                    let si = match meta {
                        Some(si) => Some(si as usize),
                        None => self.src.search(path).ok(),
                    };
                    if let Some(si) = si.filter(|&si| self.src.at(si).kind != Kind::Dir) {
                        fsx::unlink_at(nd, name)?;
                        let e = self.src.at(si);
                        return self
                            .make_one_from(e, si as u32, path, parent, name, s, l, n, out)
                            .map(|b| (b.0, false));
                    }
                    return Ok((0, true));
                }
                if let Some(si) = meta {
                    fsx::set_meta_at(nd, name, &self.src.at(si as usize), self.opts.meta)?;
                    out.meta_in_place.push(dj);
                }
                Ok((0, true))
            }
            From::Follower(_, leader) => {
                let lp = self.src.path(leader as usize);
                let (lparent, lname) = split_parent(lp);
                let lfd = fsx::open_dir_beneath(self.next_root, lparent)?;
                let nd = n.get(parent)?;
                match fsx::link_at(lfd.as_fd(), lname, nd, name) {
                    Ok(()) => Ok((0, false)),
                    // Its leader's source could not be read and it had no live version: the
                    // follower fails as the leader did, keeping its own live version.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        let kept = match self.dst.search(path) {
                            Ok(dj) if self.dst.at(dj).kind != Kind::Dir => {
                                fsx::link_at(l.get(parent)?, name, n.get(parent)?, name)?;
                                true
                            }
                            _ => false,
                        };
                        out.errors.push(EntryError {
                            path: path.into(),
                            phase: Phase::Stage,
                            error: io::Error::other(
                                "its hard-link group's first member could not be read from the source",
                            ),
                        });
                        Ok((0, kept))
                    }
                    Err(e) => Err(e),
                }
            }
            From::Source(si) => {
                let e = self.src.at(si as usize);
                self.make_one_from(e, si, path, parent, name, s, l, n, out)
            }
        }
    }

    /// A live file that cannot take one more link (EMLINK) or may not be linked (EPERM: it is
    /// immutable or append-only) is copied into the next tree instead. A pinned one also stays
    /// where it is at the switch (a bound): the copy goes with the old tree, which can then be
    /// pruned.
    fn copy_unlinkable(
        &self,
        err: io::Error,
        (dj, meta): (u32, Option<u32>),
        path: &[u8],
        (ld, nd): (BorrowedFd<'_>, BorrowedFd<'_>),
        out: &mut Built,
    ) -> io::Result<(u64, bool)> {
        let d = self.dst.at(dj as usize);
        if !matches!(err.raw_os_error(), Some(libc::EPERM | libc::EMLINK)) || d.kind != Kind::File {
            return Err(err);
        }
        let name = split_parent(path).1;
        if err.raw_os_error() == Some(libc::EPERM) && fsx::is_pinned_at(ld, name, Kind::File) {
            out.pinned.push(path.into());
        }
        let (b, _) = copy_checked(ld, name, nd, name, d, true, self.next_bare, self.opts)?;
        if let Some(si) = meta {
            fsx::set_meta_at(nd, name, &self.src.at(si as usize), self.opts.meta)?;
        }
        Ok((b, false))
    }

    /// Makes a non-directory from its source entry; when the source cannot be read, the live
    /// version stays (if there is one of the same type) and the entry's error is recorded.
    #[allow(clippy::too_many_arguments)]
    fn make_one_from(
        &self,
        e: Ent<'_>,
        si: u32,
        path: &[u8],
        parent: &[u8],
        name: &[u8],
        s: &mut Dirs,
        l: &mut Dirs,
        n: &mut Dirs,
        out: &mut Built,
    ) -> io::Result<(u64, bool)> {
        match self.make_from_source(e, si, parent, name, s, n, out) {
            Ok(b) => Ok((b, false)),
            Err(err) if is_source_side(&err) => {
                // The live version stays, if there is one of the same type.
                let kept = match self.dst.search(path) {
                    Ok(dj) if self.dst.at(dj).kind != Kind::Dir => {
                        let ld = l.get(parent)?;
                        fsx::link_at(ld, name, n.get(parent)?, name)?;
                        true
                    }
                    _ => false,
                };
                out.errors.push(EntryError {
                    path: path.into(),
                    phase: Phase::Stage,
                    error: err,
                });
                Ok((0, kept))
            }
            Err(err) => Err(err),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make_from_source(
        &self,
        e: Ent<'_>,
        si: u32,
        parent: &[u8],
        name: &[u8],
        s: &mut Dirs,
        n: &mut Dirs,
        out: &mut Built,
    ) -> io::Result<u64> {
        match e.kind {
            Kind::File if self.move_source => {
                let sd = s.get(parent)?;
                let nd = n.get(parent)?;
                match fsx::rename_at(sd, name, nd, name) {
                    // Its metadata is already the entry's (see `SyncOpts::move_source`).
                    Ok(()) => {
                        if self.opts.fsync {
                            fsx::fsync(fsx::open_read_at(nd, name)?.as_fd())?;
                        }
                        Ok(e.size)
                    }
                    Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                        let (b, _) =
                            copy_checked(sd, name, nd, name, e, true, self.next_bare, self.opts)?;
                        Ok(b)
                    }
                    Err(err) => Err(err),
                }
            }
            Kind::File => {
                let sd = s.get(parent)?;
                let nd = n.get(parent)?;
                let (b, stale) =
                    copy_checked(sd, name, nd, name, e, true, self.next_bare, self.opts)?;
                if stale {
                    out.stale.push(si);
                }
                Ok(b)
            }
            Kind::Symlink => {
                let nd = n.get(parent)?;
                fsx::symlink_at(e.target().unwrap_or_default(), nd, name)?;
                self.set_made_meta(nd, name, &e)?;
                Ok(0)
            }
            Kind::Fifo | Kind::Char | Kind::Block | Kind::Socket => {
                let nd = n.get(parent)?;
                fsx::mknod_at(nd, name, &e)?;
                self.set_made_meta(nd, name, &e)?;
                Ok(0)
            }
            Kind::Dir => unreachable!("directories are made first"),
        }
    }

    /// Links live entries that neither scan listed but that must survive the switch: the
    /// excluded ones (found and carried as rollback carries them, see [`crate::excluded`]).
    fn carry_unscanned(&self) -> Result<(), (Box<[u8]>, io::Error)> {
        for path in crate::excluded::list(self.live_root, self.excludes, self.holds_excluded)? {
            let (parent, name) = split_parent(&path);
            self.clone_live(parent, name)
                .map_err(|e| (path.clone(), e))?;
        }
        Ok(())
    }

    /// Recreates live `parent/name` in the next tree: directories made with their metadata,
    /// everything else hard-linked.
    fn clone_live(&self, parent: &[u8], name: &[u8]) -> io::Result<()> {
        let ld = fsx::open_dir_beneath(self.live_root, parent)?;
        let nd = match fsx::open_dir_beneath(self.next_root, parent) {
            Ok(fd) => fd,
            // Its parent is not part of the next tree: nothing to keep it in.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        crate::excluded::clone_at(ld.as_fd(), nd.as_fd(), name, self.opts.meta)
    }
}

/// Where a directory of the next tree takes its metadata from.
#[derive(Clone, Copy, Debug)]
enum DirFrom {
    Src(u32),
    Live(u32),
}

impl DirFrom {
    fn path<'b>(&self, b: &'b Builder<'_>) -> &'b [u8] {
        match *self {
            DirFrom::Src(i) => b.src.path(i as usize),
            DirFrom::Live(j) => b.dst.path(j as usize),
        }
    }

    fn entry<'b>(&self, b: &'b Builder<'_>) -> Ent<'b> {
        match *self {
            DirFrom::Src(i) => b.src.at(i as usize),
            DirFrom::Live(j) => b.dst.at(j as usize),
        }
    }
}

const XATTRS_READ_NOTE: &str = "xattrs-read";
const XATTRS_READ: &[u8] = b"\n#xattrs-read\n";

/// Writes `entries` (old metadata of live inodes about to be changed in place, in path
/// order) to `name` in `dir` before the change (durably when asked), streamed: a run stopped
/// before its switch sets them back. With `xattrs` the file says the entries' xattrs were read
/// (and are to be restored).
pub fn save_meta<'e>(
    dir: &OwnedFd,
    name: &str,
    entries: impl Iterator<Item = Ent<'e>>,
    xattrs: bool,
    shown: &std::path::Path,
    durable: bool,
) -> crate::Result<()> {
    let note = xattrs.then_some(XATTRS_READ_NOTE);
    crate::fsx::write_with(dir, name, shown, durable, |w| {
        crate::manifest::write_lines_noted(&mut { w }, crate::cache::now(), entries, true, note)
    })
}

/// Sets back metadata saved by [`save_meta`] on the tree at `live`, on each entry that is
/// still the same inode (one replaced since is not ours to touch).
pub fn restore_meta(
    live: &std::path::Path,
    file: &std::path::Path,
) -> crate::Result<Vec<(std::path::PathBuf, io::Error)>> {
    use crate::error::IoContext;
    let data = std::fs::read(file).at(file)?;
    let xattrs = data
        .windows(XATTRS_READ.len())
        .take(4096)
        .any(|w| w == XATTRS_READ);
    let old = crate::manifest::parse_records(file, &data)?.entries;
    let meta = fsx::MetaOpts {
        owner: fsx::geteuid_is_root(),
        xattrs,
    };
    let root = fsx::open_tree(live).at(live)?;
    // Grouped by directory, each opened once; metadata set on a child never moves its
    // directory's times, so the order is free.
    let mut order: Vec<usize> = (0..old.len()).collect();
    order.sort_by(|&i, &j| split_parent(old.path(i)).0.cmp(split_parent(old.path(j)).0));
    // On a few threads (a rollback's time after its switch is mostly this): each its own
    // run of directories.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(order.len().div_ceil(512).max(1));
    let chunk = order.len().div_ceil(threads).max(1);
    let (old, root) = (&old, root.as_fd());
    let errors = std::thread::scope(|s| {
        let hs: Vec<_> = order
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut errors = Vec::new();
                    let mut dirs = Dirs::new(root);
                    for &i in part {
                        let e = old.at(i);
                        let r = if e.path.is_empty() {
                            fsx::set_meta_fd(root, &e, meta)
                        } else {
                            restore_one(&mut dirs, e, meta)
                        };
                        match r {
                            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                            Err(err) => errors.push((live.join(fsx::os(e.path)), err)),
                            Ok(()) => {}
                        }
                    }
                    errors
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("a restoring thread panicked"))
            .collect()
    });
    Ok(errors)
}

/// Sets back the metadata of one saved entry, if it is still that inode (a directory: still a
/// directory at that path). What already matches is not set again: an upgrade's in-place
/// changes are mostly mtimes, and a rollback then costs a stat and one `utimensat` each.
fn restore_one(dirs: &mut Dirs<'_>, e: Ent<'_>, meta: fsx::MetaOpts) -> io::Result<()> {
    let (p, name) = split_parent(e.path);
    let d = dirs.get(p)?;
    let c = fsx::cstr(name)?;
    let st = fsx::lstat_at(d, &c)?;
    if e.kind != Kind::Dir && st.st_ino as u64 != e.ino {
        return Ok(());
    }
    let only_times = fsx::kind_of(st.st_mode as u32) == e.kind
        && (st.st_mode as u32 & 0o7777) as u16 == e.mode
        && (!meta.owner || (st.st_uid, st.st_gid) == (e.uid(), e.gid()))
        && (!meta.xattrs || fsx::read_xattrs_at(d, name)?.as_ref() == e.xattrs());
    if !only_times {
        return fsx::set_meta_at(d, name, &e, meta);
    }
    if (st.st_mtime as i64, st.st_mtime_nsec as u32) != e.mtime() {
        fsx::set_times_at(d, name, &e)?;
    }
    Ok(())
}

/// Gives `entries` (the source's, now staged at `next_root`) the stats of the staged objects:
/// inode, device, link count and ctime are the next tree's, everything else was made equal to
/// the source's. In place, a block at a time: a second list of a 200k-entry tree would cost
/// a third of the run's memory. Returns the paths not in the next tree (a source entry that
/// could not be read and had no live version), sorted.
pub fn restat(
    next_root: BorrowedFd<'_>,
    entries: &mut Entries,
    pool: &rayon::ThreadPool,
) -> io::Result<Vec<Box<[u8]>>> {
    let mut missing = Vec::new();
    const BLOCK: usize = 8192;
    type Got = (u64, u64, u32, i64, u32);
    let mut start = 0;
    while start < entries.len() {
        let end = (start + BLOCK).min(entries.len());
        let ents = &*entries;
        let got: Vec<io::Result<Got>> = pool.install(|| {
            (start..end)
                .into_par_iter()
                .with_min_len(256)
                .map_init(
                    || Dirs::new(next_root),
                    |dirs, i| {
                        let p = ents.path(i);
                        let st = if p.is_empty() {
                            fsx::fstat(next_root)?
                        } else {
                            let (parent, name) = split_parent(p);
                            fsx::lstat_at(dirs.get(parent)?, &fsx::cstr(name)?)?
                        };
                        Ok((
                            st.st_ino as u64,
                            st.st_dev as u64,
                            st.st_nlink as u32,
                            st.st_ctime as i64,
                            st.st_ctime_nsec as u32,
                        ))
                    },
                )
                .collect()
        });
        for (k, g) in got.into_iter().enumerate() {
            let (ino, dev, nlink, cs, cn) = match g {
                Ok(g) => g,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                    missing.push(entries.path(start + k).into());
                    continue;
                }
                Err(e) => return Err(e),
            };
            let e = &mut entries[start + k];
            (e.ino, e.nlink) = (ino, nlink);
            e.set_dev(dev);
            e.set_ctime(cs, cn);
        }
        start = end;
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsx::MetaOpts;
    use crate::progress::Silent;
    use crate::sync::{self, Pools, SyncOpts, Tree};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    use crate::testkit::write_tree as tree;

    /// Scans and plans `src` onto `dst` as a sync does, then builds the next tree in the home
    /// as the transaction's first step does.
    fn build(src: &Path, dst: &Path, state: &Path) -> (Tree, Result<Built, Fatal>) {
        let (opts, pools) = (SyncOpts::default(), Pools::new(2));
        let st = sync::open_state(state, &[src, dst]).unwrap();
        let t = sync::prepare(src, dst, Some(&st), &opts, &pools, &Silent).unwrap();
        let home = t.home.as_ref().expect("a plan with changes gets a home");
        let next = home.make_next().unwrap();
        let sfd = fsx::open_root(src).unwrap();
        let lfd = fsx::open_root_nofollow(dst).unwrap();
        let b = Builder {
            src_root: sfd.as_fd(),
            live_root: lfd.as_fd(),
            next_root: next.as_fd(),
            src: &t.src,
            dst: &t.dst,
            plan: &t.plan,
            opts: ApplyOpts {
                meta: MetaOpts {
                    owner: true,
                    xattrs: true,
                },
                fsync: false,
            },
            excludes: &opts.excludes,
            holds_excluded: &t.dst_holds_excluded,
            stop: None,
            move_source: false,
            next_bare: false,
        };
        let r = b.build(&pools.work, &Silent);
        (t, r)
    }

    #[test]
    fn unchanged_files_are_linked_and_changed_ones_copied() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        tree(
            &src,
            &[("lib/same", "s"), ("lib/x", "new!"), ("added", "a")],
        );
        tree(&dst, &[("lib/same", "s"), ("lib/x", "old"), ("gone", "g")]);
        // The same times, so "same" is unchanged in every respect.
        let same = fs::metadata(src.join("lib/same"))
            .unwrap()
            .modified()
            .unwrap();
        fs::File::options()
            .write(true)
            .open(dst.join("lib/same"))
            .unwrap()
            .set_modified(same)
            .unwrap();
        let (t, r) = build(&src, &dst, &d.path().join("state"));
        let built = r.unwrap();
        let next = t.home.as_ref().unwrap().next_path();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&next.join("lib/same")), ino(&dst.join("lib/same")));
        assert_ne!(ino(&next.join("lib/x")), ino(&dst.join("lib/x")));
        assert_eq!(fs::read(next.join("lib/x")).unwrap(), b"new!");
        assert_eq!(fs::read(next.join("added")).unwrap(), b"a");
        assert!(!next.join("gone").exists());
        assert_eq!(built.linked, 1);
        assert_eq!(built.bytes_written, 5, "only what changed is written");
        assert!(built.errors.is_empty() && built.pinned.is_empty());
        // Staging touched nothing live.
        assert_eq!(fs::read(dst.join("lib/x")).unwrap(), b"old");
        assert!(dst.join("gone").exists());
    }

    #[test]
    fn an_immutable_live_file_is_copied_and_reported_pinned() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        tree(&src, &[("lib/frozen", "f"), ("lib/x", "new")]);
        tree(&dst, &[("lib/frozen", "f"), ("lib/x", "old")]);
        let t0 = fs::metadata(src.join("lib/frozen"))
            .unwrap()
            .modified()
            .unwrap();
        fs::File::options()
            .write(true)
            .open(dst.join("lib/frozen"))
            .unwrap()
            .set_modified(t0)
            .unwrap();
        let chattr = |flag: &str| {
            std::process::Command::new("chattr")
                .arg(flag)
                .arg(dst.join("lib/frozen"))
                .status()
                .is_ok_and(|s| s.success())
        };
        if !chattr("+i") {
            eprintln!("skipped: chattr +i is not available here (needs root and ext4/xfs/btrfs)");
            return;
        }
        let (t, r) = build(&src, &dst, &d.path().join("state"));
        assert!(chattr("-i"));
        let built = r.unwrap();
        let next = t.home.as_ref().unwrap().next_path();
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_ne!(ino(&next.join("lib/frozen")), ino(&dst.join("lib/frozen")));
        assert_eq!(fs::read(next.join("lib/frozen")).unwrap(), b"f");
        assert_eq!(built.pinned, vec![Box::<[u8]>::from(&b"lib/frozen"[..])]);
    }
}
