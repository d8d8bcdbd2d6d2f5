//! The excluded entries of a rollback: carried from the live tree into the generation
//! switched back (see [`Carry`]), and looked at once more right before the switch.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use crate::entry::{Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::switch::{self, Home};

/// What a rollback does with excluded entries. They are the live system's, before and after
/// a rollback as at a sync: the generation switched back gets the live tree's current ones in
/// place of its own (a service's database written since the sync, a new log anywhere the
/// patterns match), and loses those the live tree no longer has; so the rollback changes
/// nothing there. Planned by [`check`](super::check), made by
/// [`crate::txn::back`].
#[derive(Debug, Default)]
pub struct Carry {
    /// The live tree's excluded entries the restored tree will hold, path order.
    pub carried: Vec<Box<[u8]>>,
    /// The generation's excluded entries the live tree no longer has: removed from it.
    pub dropped: Vec<Box<[u8]>>,
    /// Directories the generation lacks that will hold carried entries: made as the live ones
    /// are (as a sync keeps a directory holding an excluded entry).
    pub made: Vec<Box<[u8]>>,
    /// Live excluded entries the generation holds the tree's own entry (or a non-directory)
    /// in the way of: reported as changes since the sync, never carried.
    pub blocked: Vec<Box<[u8]>>,
    /// The sync's exclude patterns.
    patterns: Vec<String>,
    /// Live directories holding excluded entries: where the guard looks again.
    holds: Vec<Box<[u8]>>,
    /// The live tree as scanned (with excludes): the guard looks for excluded entries made
    /// since anywhere in it, and the tree switched out is defanged by it.
    pub(super) live: Entries,
    /// Whether that scan read every entry's xattrs (file capabilities known).
    pub(super) live_xattrs: bool,
    /// The generation's excluded entries to remove (dropped, or replaced by the live one).
    remove: Vec<Box<[u8]>>,
    /// Of `carried`, those the generation already holds (the same inode): left alone.
    same: Vec<Box<[u8]>>,
    /// The generation's directories whose listing the carry changes, with their mtimes: set
    /// back afterwards, since they are the old tree's and rollback restores them exactly.
    touched: Vec<(Box<[u8]>, Mtime)>,
}

/// Seconds and nanoseconds.
type Mtime = (i64, u32);

fn os_err(root: &Path) -> impl Fn((Box<[u8]>, io::Error)) -> Error + '_ {
    move |(p, e)| Error::io(root.join(fsx::os(&p)), e)
}

/// Plans [`Carry`] for generation `id`: the live tree's excluded entries (in `holds`, from the
/// scan just made) against the generation's own (found by scanning it).
pub(super) fn plan_carry(
    home: &Home,
    id: u64,
    patterns: Vec<String>,
    excludes: &crate::scan::Excludes,
    holds: Vec<Box<[u8]>>,
    pool: &rayon::ThreadPool,
) -> Result<Carry> {
    let mut c = Carry::default();
    if excludes.is_empty() {
        return Ok(c);
    }
    let live = fsx::open_tree(&home.live).at(&home.live)?;
    let mut live_ex =
        crate::excluded::list(live.as_fd(), excludes, &holds).map_err(os_err(&home.live))?;
    live_ex.retain(|p| !programs_own(p));
    let gpath = home.gen_path(id);
    let gio = home.io_path(&String::from_utf8_lossy(
        &home.tree_name(&Home::gen_name(id)),
    ));
    let sopts = crate::scan::ScanOpts {
        excludes,
        xattrs: false,
        defer_xattrs: false,
        ours: &[],
        mounts: &[],
    };
    let gscan = crate::scan::scan_tree(&gio, pool, &sopts)?;
    let gen = home.open_in(&Home::gen_name(id))?;
    let mut gen_ex = crate::excluded::list(gen.as_fd(), excludes, &gscan.holds_excluded)
        .map_err(os_err(&gpath))?;
    gen_ex.retain(|p| !programs_own(p));
    let ge = &gscan.entries;
    let id_of = |fd: &std::os::fd::OwnedFd, p: &[u8]| -> Option<(Kind, u64)> {
        let (parent, name) = fsx::split_parent(p);
        let d = fsx::open_dir_beneath(fd.as_fd(), parent).ok()?;
        let st = fsx::lstat_at(d.as_fd(), &fsx::cstr(name).ok()?).ok()?;
        Some((fsx::kind_of(st.st_mode as u32), st.st_ino as u64))
    };
    let mut parents: Vec<Box<[u8]>> = Vec::new();
    for p in &gen_ex {
        let live_has = live_ex.binary_search(p).is_ok();
        let (g, l) = (id_of(&gen, p), id_of(&live, p));
        if live_has && g.is_some_and(|g| g.0 != Kind::Dir && Some(g) == l) {
            c.same.push(p.clone());
            continue;
        }
        if !live_has {
            c.dropped.push(p.clone());
        }
        c.remove.push(p.clone());
        parents.push(fsx::split_parent(p).0.into());
    }
    let removed = |p: &[u8]| c.remove.binary_search_by(|x| (**x).cmp(p)).is_ok();
    let mut made = std::collections::BTreeSet::new();
    for p in &live_ex {
        if c.same.binary_search(p).is_ok() {
            c.carried.push(p.clone());
            continue;
        }
        // Each ancestor must be a directory of the generation, or absent there (made).
        let parent = fsx::split_parent(p).0;
        let mut blocked = false;
        let mut first_missing = None;
        for (k, _) in parent.iter().enumerate().filter(|(_, &b)| b == b'/') {
            let a = &parent[..k];
            match ge.search(a) {
                Ok(i) if ge.at(i).kind == Kind::Dir => {}
                Ok(_) => blocked = true,
                Err(_) => first_missing = first_missing.or(Some(a)),
            }
            if blocked || first_missing.is_some() {
                break;
            }
        }
        if !blocked && first_missing.is_none() && !parent.is_empty() {
            match ge.search(parent) {
                Ok(i) if ge.at(i).kind == Kind::Dir => {}
                Ok(_) => blocked = true,
                Err(_) => first_missing = Some(parent),
            }
        }
        // The tree's own entry at the very path (not one of its excluded ones).
        blocked |= ge.search(p).is_ok() && !removed(p);
        if blocked {
            c.blocked.push(p.clone());
            continue;
        }
        match first_missing {
            Some(m) => {
                parents.push(fsx::split_parent(m).0.into());
                let mut a = parent;
                while a.len() >= m.len() {
                    made.insert(Box::<[u8]>::from(a));
                    a = fsx::split_parent(a).0;
                }
            }
            None => parents.push(parent.into()),
        }
        c.carried.push(p.clone());
    }
    c.made = made.into_iter().collect();
    parents.sort_unstable();
    parents.dedup();
    for d in parents {
        if let Ok(i) = ge.search(&d) {
            let m = ge.at(i).mtime();
            c.touched.push((d, m));
        }
    }
    c.patterns = patterns;
    // A blocked entry is not carried (a forced rollback keeps it with the tree it replaces):
    // the guard does not look for it in the generation.
    c.holds = holds
        .into_iter()
        .filter(|h| !c.blocked.iter().any(|b| fsx::split_parent(b).0 == &**h))
        .collect();
    Ok(c)
}

/// Entries this program made that no rule makes the live system's: a home (a nested tree's,
/// with its generations: nobody's content, invariant 13) and a `NAME.jailsync-new` a sync
/// wrote beside a kept configuration file (it goes with the release that wrote it).
fn programs_own(p: &[u8]) -> bool {
    let name = fsx::split_parent(p).1;
    switch::is_reserved_top(name) || name.ends_with(crate::protect::NEW_SUFFIX.as_bytes())
}

/// Makes the planned [`Carry`] in generation `id`: its stale excluded entries removed, the
/// live ones linked in (directories recreated with their exact metadata), the generation's
/// own directories' mtimes set back.
pub(super) fn carry(home: &Home, id: u64, c: &Carry) -> Result<()> {
    if c.carried.is_empty() && c.remove.is_empty() {
        return Ok(());
    }
    let gpath = home.gen_path(id);
    let gen = home.open_in(&Home::gen_name(id))?;
    let live = fsx::open_tree(&home.live).at(&home.live)?;
    let meta = fsx::MetaOpts {
        owner: fsx::geteuid_is_root(),
        xattrs: true,
    };
    let in_gen = |p: &[u8]| gpath.join(fsx::os(p));
    for p in &c.remove {
        let (parent, name) = fsx::split_parent(p);
        fsx::open_dir_beneath(gen.as_fd(), parent)
            .and_then(|d| fsx::remove_tree_at(d.as_fd(), name))
            .at(in_gen(p))?;
    }
    for p in &c.made {
        let (parent, name) = fsx::split_parent(p);
        fsx::open_dir_beneath(gen.as_fd(), parent)
            .and_then(|d| fsx::mkdir_at(d.as_fd(), name, 0o700))
            .at(in_gen(p))?;
    }
    for p in c
        .carried
        .iter()
        .filter(|p| c.same.binary_search(p).is_err())
    {
        let (parent, name) = fsx::split_parent(p);
        let r = fsx::open_dir_beneath(live.as_fd(), parent).and_then(|l| {
            let g = fsx::open_dir_beneath(gen.as_fd(), parent)?;
            crate::excluded::clone_at(l.as_fd(), g.as_fd(), name, meta)
        });
        match r {
            // Gone from the live tree since the check: the guard reports it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => r.at(home.live.join(fsx::os(p)))?,
        }
    }
    // Directories made here take the live ones' metadata, deepest first (children in place).
    for p in c.made.iter().rev() {
        let (parent, name) = fsx::split_parent(p);
        let r = (|| -> io::Result<()> {
            let l = fsx::open_dir_beneath(live.as_fd(), parent)?;
            let st = fsx::lstat_at(l.as_fd(), &fsx::cstr(name)?)?;
            let mut e = crate::fsx::entry_from_stat(&st);
            e.set_xattrs(fsx::read_xattrs_at(l.as_fd(), name)?);
            let g = fsx::open_dir_beneath(gen.as_fd(), p)?;
            fsx::set_meta_fd(g.as_fd(), &e, meta)
        })();
        r.at(in_gen(p))?;
    }
    for (d, (s, ns)) in &c.touched {
        let mut e = crate::entry::Entry::new(Kind::Dir);
        e.set_mtime(*s, *ns);
        let (parent, name) = fsx::split_parent(d);
        let r = if d.is_empty() {
            fsx::set_times_at(gen.as_fd(), b".", &e)
        } else {
            fsx::open_dir_beneath(gen.as_fd(), parent)
                .and_then(|p| fsx::set_times_at(p.as_fd(), name, &e))
        };
        r.at(in_gen(d))?;
    }
    Ok(())
}

/// The last look before a rollback's switch: the live excluded entries must be what
/// [`carry`] put in the generation (the sync's own guard, with the generation as the next
/// tree). A change in between would be left in the tree switched away: nothing is switched.
pub(super) fn guard_carry(home: &Home, id: u64, c: &Carry) -> Result<()> {
    if c.patterns.is_empty() {
        return Ok(());
    }
    // `NAME.jailsync-new` files go with the release that wrote them: not carried, not looked
    // at (see `programs_own`).
    let pats: Vec<String> = c
        .patterns
        .iter()
        .filter(|p| p.as_str() != crate::protect::NEW_EXCLUDE)
        .cloned()
        .collect();
    let excludes =
        crate::scan::Excludes::new(&pats).map_err(|e| Error::bad(&home.live, e.to_string()))?;
    let gen = home.open_in(&Home::gen_name(id))?;
    let live = fsx::open_tree(&home.live).at(&home.live)?;
    let changed = crate::guard::changed_since_scan(
        live.as_fd(),
        gen.as_fd(),
        &c.live,
        &[],
        &excludes,
        &c.holds,
        crate::guard::Watch {
            protected: None,
            excluded: true,
        },
    )
    .at(&home.live)?;
    match changed {
        None => Ok(()),
        Some(ch) => Err(Error::bad(
            home.live.join(fsx::os(&ch.path)),
            format!(
                "{} (it is excluded, so the rollback would have left that in the tree it replaces): nothing was switched; run again",
                ch.how
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A live tree and a hand-made generation 1 (its own `var/` copy, stale), carried.
    fn carried() -> (tempfile::TempDir, Home, Carry) {
        let t = tempfile::tempdir().unwrap();
        let live = t.path().join("live");
        fs::create_dir_all(live.join("var/db")).unwrap();
        fs::write(live.join("var/db/users.db"), "new\n").unwrap();
        fs::write(live.join("tool"), "v2\n").unwrap();
        let home = Home::open(&live).unwrap();
        let gen = home.gen_path(1);
        fs::create_dir_all(gen.join("var/db")).unwrap();
        fs::write(gen.join("var/db/stale.db"), "old\n").unwrap();
        fs::write(gen.join("tool"), "v1\n").unwrap();
        let pats = vec!["/var/".to_string()];
        let ex = crate::scan::Excludes::new(&pats).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let sopts = crate::scan::ScanOpts {
            excludes: &ex,
            xattrs: false,
            defer_xattrs: false,
            ours: &[],
            mounts: &[],
        };
        let holds = crate::scan::scan_tree(&live, &pool, &sopts)
            .unwrap()
            .holds_excluded;
        let c = plan_carry(&home, 1, pats, &ex, holds, &pool).unwrap();
        assert_eq!(c.carried, vec![Box::from(&b"var"[..])]);
        carry(&home, 1, &c).unwrap();
        assert_eq!(fs::read(gen.join("var/db/users.db")).unwrap(), b"new\n");
        assert!(!gen.join("var/db/stale.db").exists());
        assert_eq!(fs::read(gen.join("tool")).unwrap(), b"v1\n");
        (t, home, c)
    }

    #[test]
    fn carried_entries_pass_the_guard() {
        let (_t, home, c) = carried();
        guard_carry(&home, 1, &c).unwrap();
    }

    #[test]
    fn an_excluded_entry_changed_after_the_carry_switches_nothing() {
        type Change = fn(&Path);
        let cases: &[(&str, Change)] = &[
            ("created", |l| {
                fs::write(l.join("var/db/late.db"), "x").unwrap()
            }),
            ("removed", |l| {
                fs::remove_file(l.join("var/db/users.db")).unwrap()
            }),
            ("replaced", |l| {
                fs::write(l.join("var/db/t"), "x").unwrap();
                fs::rename(l.join("var/db/t"), l.join("var/db/users.db")).unwrap();
            }),
        ];
        for (name, change) in cases {
            let (_t, home, c) = carried();
            change(&home.live);
            let e = guard_carry(&home, 1, &c).expect_err(name);
            assert!(
                e.to_string().contains("nothing was switched"),
                "{name}: {e}"
            );
        }
    }
}
