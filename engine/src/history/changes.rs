//! What a generation changed, and what a rollback would change: two trees of a destination's
//! history compared as a sync compares a jail with the live tree, and their package databases
//! ([`crate::packages`]) compared by package.
//!
//! Generation N is the tree as it was before run N, so what run N changed is gen-N against the
//! tree that replaced it: the next generation kept (the tree before the next run), or the live
//! tree when N is the newest. What a rollback to N would change is the live tree against gen-N.
//!
//! A generation's tree is not quite the tree it was: a sync sets metadata in place on inodes
//! the old and the new tree share (so gen-N shows the newer metadata), and defangs the old
//! tree's setuid binaries once it is a generation. Both are recorded (`gen-N.d/meta`,
//! `gen-N.d/defanged`), and put back here on the entries read, never on disk. An inode shared
//! by many generations takes the metadata of the earliest record at or after the generation
//! shown: a run that did not touch it left it as it was before. Links from other generations
//! do not count (every tree is compared by its own links), nor do the inodes the trees share
//! need reading: one inode is one content.
//!
//! What a run did not see is not shown: its excluded paths (recorded in `gen-N.d/info`), the
//! mount points below the tree and the entries the switch went around (pinned).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use crate::entry::{Entries, Entry, Kind};
use crate::error::{Error, IoContext, Result};
use crate::generation::Gen;
use crate::packages::{self, PackageDiff};
use crate::plan::{self, Plan, PlanOpts};
use crate::progress::Silent;
use crate::scan::{self, Excludes, ScanOpts};
use crate::switch::Home;
use crate::sync::Pools;
use crate::{defang, fsx, manifest};

/// One side of a change: a generation's tree as it was live, or the live tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Gen(u64),
    Live,
}

/// Files that differ between two trees, as a sync of `after` onto `before` would itemize
/// them (the plan's source is `after`, its destination `before`).
pub struct FileDiff {
    pub before: Entries,
    pub after: Entries,
    pub plan: Plan,
    /// Entries that could not be read (either side).
    pub errors: Vec<(PathBuf, io::Error)>,
}

/// The two trees of one change, with what their runs recorded.
pub struct Span<'h> {
    home: &'h Home,
    gens: &'h [Gen],
    pub before: Side,
    pub after: Side,
    /// The generations whose runs the change spans (their records say what was excluded).
    runs: Vec<u64>,
}

impl<'h> Span<'h> {
    /// What run `id` changed: gen-`id` against the tree that replaced it.
    pub fn run(home: &'h Home, gens: &'h [Gen], id: u64) -> Result<Span<'h>> {
        let Some(at) = gens.iter().position(|g| g.id == id) else {
            return Err(Error::bad(
                &home.live,
                format!("no generation {id} (see `jailsync history`)"),
            ));
        };
        Ok(Span {
            home,
            gens,
            before: Side::Gen(id),
            after: gens.get(at + 1).map_or(Side::Live, |g| Side::Gen(g.id)),
            runs: vec![id],
        })
    }

    /// What rolling back to `id` would change: the live tree against gen-`id`.
    pub fn rollback(home: &'h Home, gens: &'h [Gen], id: u64) -> Span<'h> {
        Span {
            home,
            gens,
            before: Side::Live,
            after: Side::Gen(id),
            runs: gens.iter().map(|g| g.id).filter(|&n| n >= id).collect(),
        }
    }

    /// The package changes, when either tree holds a package database its runs did not
    /// exclude.
    pub fn packages(&self) -> Result<Option<PackageDiff>> {
        let rec = self.records();
        let (b, a) = (self.open(self.before)?, self.open(self.after)?);
        let Some(db) = packages::find_db(b.as_fd(), a.as_fd()) else {
            return Ok(None);
        };
        if excluded(
            &rec.excludes,
            &db.rel,
            db.format == packages::Format::Pkgsrc,
        ) {
            return Ok(None);
        }
        let d = packages::diff_trees(
            &db,
            (b.as_fd(), &self.shown(self.before)),
            (a.as_fd(), &self.shown(self.after)),
        )?;
        Ok(Some(d))
    }

    /// The files that differ, each tree read as it was (see the module's doc).
    pub fn files(&self) -> Result<FileDiff> {
        let rec = self.records();
        let pools = Pools::new(0);
        let mut bounds = crate::jail::mountinfo::points_below(&self.home.live_real());
        let sopts = ScanOpts {
            excludes: &rec.excludes,
            xattrs: rec.xattrs,
            defer_xattrs: false,
            ours: &[],
            mounts: &bounds,
        };
        let mut errors = Vec::new();
        let mut scan_side = |side: Side| -> Result<Entries> {
            let shown = self.shown(side);
            let s = scan::scan_tree(&self.io(side), &pools.walk, &sopts)
                .map_err(|e| e.map_path(|p| self.as_shown(side, p)))?;
            errors.extend(
                s.errors
                    .into_iter()
                    .map(|(p, e)| (shown.join(fsx::os(&p)), e)),
            );
            Ok(s.entries)
        };
        let (mut before, mut after) = (scan_side(self.before)?, scan_side(self.after)?);
        bounds.extend(rec.pinned);
        for (side, entries) in [(self.before, &mut before), (self.after, &mut after)] {
            entries.retain(|e| !bounds.iter().any(|b| crate::entry::at_or_below(e.path, b)));
            self.as_it_was(side, entries, rec.xattrs)?;
            count_own_links(entries);
        }
        same_inode_same_content(&mut after, &mut before);
        let (need_a, need_b) = plan::hash_needs(&after, &before);
        for (side, entries, need) in [
            (self.after, &mut after, need_a),
            (self.before, &mut before, need_b),
        ] {
            let need = need.iter().map(|&i| i as usize);
            let (_, errs) =
                crate::sync::hash_entries(&self.io(side), entries, need, &pools.work, &Silent)
                    .map_err(|e| e.map_path(|p| self.as_shown(side, p)))?;
            errors.extend(errs.into_iter().map(|(p, e)| (self.as_shown(side, p), e)));
        }
        let opts = PlanOpts {
            owner: true,
            xattrs: rec.xattrs,
        };
        Ok(FileDiff {
            plan: plan::plan(&after, &before, opts),
            before,
            after,
            errors,
        })
    }

    /// Where a side is read (a generation through the home's fd).
    fn io(&self, side: Side) -> PathBuf {
        match side {
            Side::Gen(n) => self.home.io_path(&String::from_utf8_lossy(
                &self.home.tree_name(&Home::gen_name(n)),
            )),
            // A tree switched by symlink is read where the link points.
            Side::Live => self.home.live_real(),
        }
    }

    /// A path read through the home's fd, as the admin knows it.
    fn as_shown(&self, side: Side, p: PathBuf) -> PathBuf {
        match p.strip_prefix(self.io(side)) {
            Ok(rel) => self.shown(side).join(rel),
            Err(_) => p,
        }
    }

    /// Where a side is, as shown to the admin.
    pub fn shown(&self, side: Side) -> PathBuf {
        match side {
            Side::Gen(n) => self.home.gen_path(n),
            Side::Live => self.home.live.clone(),
        }
    }

    fn open(&self, side: Side) -> Result<OwnedFd> {
        match side {
            Side::Gen(n) => self.home.open_in(&Home::gen_name(n)),
            Side::Live => fsx::open_root_nofollow(&self.home.live_real()).at(&self.home.live),
        }
    }

    /// What the runs of the span recorded: their excluded patterns (all of them: a path one
    /// run left alone is nobody's change), whether xattrs were read, what was pinned.
    fn records(&self) -> Records {
        let mut pats = Vec::new();
        let mut xattrs = true;
        let mut pinned = Vec::new();
        for n in &self.runs {
            let info = std::fs::read_to_string(self.record(*n).join("info")).unwrap_or_default();
            let mut read_xattrs = false;
            for l in info.lines() {
                if let Some(p) = l.strip_prefix("exclude=") {
                    pats.push(p.to_string());
                } else if let Some(h) = l.strip_prefix("pinned=") {
                    pinned.extend(crate::switch::unhex(h).map(Vec::into_boxed_slice));
                }
                read_xattrs |= l == "xattrs=1";
            }
            xattrs &= read_xattrs;
        }
        // Patterns a run accepted compile again; one that would not leaves nothing excluded
        // rather than failing a report.
        let excludes = Excludes::new(&pats).unwrap_or_else(|_| Excludes::new(&[]).expect("none"));
        Records {
            excludes,
            xattrs,
            pinned,
        }
    }

    fn record(&self, n: u64) -> PathBuf {
        self.home.io_path(&format!("gen-{n}.d"))
    }

    /// Puts back on a generation's entries what was recorded of them as they were live.
    fn as_it_was(&self, side: Side, entries: &mut Entries, xattrs: bool) -> Result<()> {
        let Side::Gen(n) = side else { return Ok(()) };
        let by_path = self
            .gens
            .iter()
            .find(|g| g.id == n)
            .map(|g| g.method.as_str());
        if by_path == Some("entries") && !entries.is_empty() {
            // Switched by subtrees, the root stayed live: gen-N's root is the home's.
            let root = fsx::open_root_nofollow(&self.home.live_real()).at(&self.home.live)?;
            let st = fsx::fstat(root.as_fd()).at(&self.home.live)?;
            let live = fsx::entry_from_stat(&st);
            set_meta(&mut entries[0], &live, false);
        }
        self.give_fangs_back(n, entries)?;
        let mut inos: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        for (i, e) in entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.kind != Kind::Dir)
        {
            inos.entry((e.dev(), e.ino)).or_default().push(i);
        }
        let mut done = vec![false; entries.len()];
        for g in self.gens.iter().filter(|g| g.id >= n) {
            let file = self.record(g.id).join("meta");
            let data = match std::fs::read(&file) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&file, e)),
            };
            let old = manifest::parse_records(&file, &data)?.entries;
            for r in old.iter() {
                // Directories are a tree's own: only its own run changed them in place.
                let hit: Vec<usize> = if r.kind == Kind::Dir {
                    match (g.id == n, entries.search(r.path)) {
                        (true, Ok(i)) if entries[i].kind == Kind::Dir => vec![i],
                        _ => Vec::new(),
                    }
                } else {
                    inos.get(&(r.dev(), r.ino)).cloned().unwrap_or_default()
                };
                for i in hit {
                    if !done[i] {
                        set_meta(&mut entries[i], &r, xattrs);
                        done[i] = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Setuid, setgid and file capabilities taken from gen-N's own files once it was a
    /// generation (see [`crate::defang`]).
    fn give_fangs_back(&self, n: u64, entries: &mut Entries) -> Result<()> {
        let Some(fangs) = defang::read_record(&self.record(n).join(defang::RECORD))? else {
            return Ok(());
        };
        for f in fangs {
            let Ok(i) = entries.search(&f.path) else {
                continue;
            };
            if entries[i].kind != Kind::File || entries[i].ino != f.ino {
                continue;
            }
            entries[i].mode = (f.mode & 0o7777) as u16;
            if let (Some(cap), Some(had)) = (&f.cap, entries[i].xattrs()) {
                let mut x: Vec<_> = had.to_vec();
                x.retain(|(k, _)| &k[..] != b"security.capability");
                x.push((b"security.capability"[..].into(), cap[..].into()));
                x.sort();
                entries[i].set_xattrs(Some(x.into_boxed_slice()));
            }
        }
        Ok(())
    }
}

struct Records {
    excludes: Excludes,
    xattrs: bool,
    pinned: Vec<Box<[u8]>>,
}

/// Whether `rel` (or a directory above it) is excluded by `ex`.
fn excluded(ex: &Excludes, rel: &[u8], is_dir: bool) -> bool {
    if rel.is_empty() || ex.is_empty() {
        return false;
    }
    let parts: Vec<usize> = rel
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'/')
        .map(|(i, _)| i)
        .chain([rel.len()])
        .collect();
    parts.iter().any(|&end| {
        let p = &rel[..end];
        let last = end == rel.len();
        ex.matches(p, crate::entry::split_parent(p).1, !last || is_dir)
    })
}

/// Sets `to`'s metadata (mode, owner, times; xattrs when they were read) to `from`'s.
fn set_meta(to: &mut Entry, from: &Entry, xattrs: bool) {
    to.mode = from.mode;
    to.set_owner(from.uid(), from.gid());
    let (s, ns) = from.mtime();
    to.set_mtime(s, ns);
    if xattrs {
        to.set_xattrs(from.xattrs().cloned());
    }
}

/// Each non-directory's link count as the tree itself holds it: the other names of a shared
/// inode are other generations' (or the live tree's), not this tree's hard links.
fn count_own_links(entries: &mut Entries) {
    let mut n: HashMap<(u64, u64), u32> = HashMap::new();
    for e in entries.iter().filter(|e| e.kind != Kind::Dir) {
        *n.entry((e.dev(), e.ino)).or_default() += 1;
    }
    for i in 0..entries.len() {
        if entries[i].kind != Kind::Dir {
            let k = (entries[i].dev(), entries[i].ino);
            entries[i].nlink = n[&k];
        }
    }
}

/// Files at one path that are one inode on both sides hold one content: a stand-in hash made
/// from the inode (never stored) spares reading them.
fn same_inode_same_content(a: &mut Entries, b: &mut Entries) {
    for i in 0..a.len() {
        let (path, kind, key) = {
            let e = a.at(i);
            (e.path.to_vec(), e.kind, (e.dev(), e.ino))
        };
        if kind != Kind::File || a.hash(i).is_some() {
            continue;
        }
        let Ok(j) = b.search(&path) else { continue };
        if b[j].kind != Kind::File || (b[j].dev(), b[j].ino) != key {
            continue;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"jailsync: one inode\0");
        h.update(&key.0.to_le_bytes());
        h.update(&key.1.to_le_bytes());
        let h = *h.finalize().as_bytes();
        a.set_hash(i, Some(h));
        b.set_hash(j, Some(h));
    }
}
