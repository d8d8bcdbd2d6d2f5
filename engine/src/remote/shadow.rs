//! The content-addressed shadow of a push session: what the stager will copy, where this
//! host already holds that content (found by hash in its live trees) and what it lacks, the
//! session's private directories (`incoming-PID`, `incoming-PID.blobs`), and the filling of
//! each tree's shadow from live files and received blobs before staging.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use super::{RemoteError, Result};
use crate::entry::{Hash, Kind};
use crate::error::IoContext;
use crate::fsx::{self, split_parent};
use crate::hash::to_hex;
use crate::plan::{Op, NONE};
use crate::protect::{Decisions, Verdict};
use crate::sync::{self, Pools, SyncOpts, Tree};

/// Puts every file the stager will copy under its path in its tree's shadow, with the
/// jail's metadata (owner, mode, xattrs, times) set on the fd that made it: the stager
/// then only renames it into the next tree (see `SyncOpts::move_source`), and a kept
/// configuration file's jail version is read from here with the jail's size and mtime.
pub(super) fn fill_shadows(
    trees: &[Tree],
    blobs_dir: &Path,
    live: &HashMap<Hash, (usize, usize)>,
    uses: &HashMap<Hash, usize>,
    needs: &[Need],
    meta: fsx::MetaOpts,
) -> Result<()> {
    let blobs = fsx::open_root_nofollow(blobs_dir).at(blobs_dir)?;
    let lives: Vec<OwnedFd> = trees
        .iter()
        .map(|t| fsx::open_tree(&t.dst_path).at(&t.dst_path))
        .collect::<crate::Result<_>>()?;
    let mut left: HashMap<Hash, usize> = uses.clone();
    for (k, t) in trees.iter().enumerate() {
        let shadow = &t.src_path;
        let root = fsx::open_root_nofollow(shadow).at(shadow)?;
        let mut made: HashSet<Vec<u8>> = HashSet::new();
        let bare = !meta.xattrs || fsx::makes_bare(root.as_fd());
        // Needs come in path order: one open of each shadow directory, and of each live
        // directory read in a row.
        let mut dir: Option<(Vec<u8>, OwnedFd)> = None;
        let mut ldir: Option<(usize, Vec<u8>, OwnedFd)> = None;
        for (_, path, e, h) in needs.iter().filter(|n| n.0 == k) {
            let (parent, name) = split_parent(path);
            let at = || shadow.join(fsx::os(path));
            if dir.as_ref().is_none_or(|(p, _)| p.as_slice() != parent) {
                mkdirs(root.as_fd(), parent, &mut made).at(at())?;
                let fd = fsx::open_dir_beneath(root.as_fd(), parent).at(at())?;
                dir = Some((parent.to_vec(), fd));
            }
            let dir = dir.as_ref().expect("just set").1.as_fd();
            let h = *h;
            let made_fd: OwnedFd = if e.size == 0 {
                fsx::create_excl_at(dir, name).at(at())?
            } else if let Some(&(lk, dj)) = live.get(&h) {
                let lp = trees[lk].dst.path(dj);
                let (lparent, lname) = split_parent(lp);
                let shown = trees[lk].dst_path.join(fsx::os(lp));
                if ldir
                    .as_ref()
                    .is_none_or(|(k2, p, _)| *k2 != lk || p.as_slice() != lparent)
                {
                    let fd = fsx::open_dir_beneath(lives[lk].as_fd(), lparent).at(&shown)?;
                    ldir = Some((lk, lparent.to_vec(), fd));
                }
                let ld = ldir.as_ref().expect("just set").2.as_fd();
                let src = fsx::open_read_at(ld, lname).at(&shown)?;
                let out = fsx::create_excl_at(dir, name).at(at())?;
                fsx::copy_data(src.as_fd(), out.as_fd(), e.size, e.is_sparse()).at(at())?;
                // The live file is checked after the copy: a writer since its scan makes
                // the run fail here, never a wrong file staged.
                let (got, _) = crate::hash::hash_fd(src.as_fd(), e.size).at(&shown)?;
                if got != h {
                    return Err(RemoteError::Refused(format!(
                        "{}: changed while being copied; nothing was changed (run again)",
                        shown.display()
                    )));
                }
                out
            } else {
                let hex = to_hex(&h);
                let n = left.get_mut(&h).expect("wanted");
                *n -= 1;
                let src = fsx::open_read_at(blobs.as_fd(), hex.as_bytes()).at(at())?;
                let copy = |src: &OwnedFd| -> Result<OwnedFd> {
                    let out = fsx::create_excl_at(dir, name).at(at())?;
                    fsx::copy_data(src.as_fd(), out.as_fd(), e.size, e.is_sparse()).at(at())?;
                    Ok(out)
                };
                if *n == 0 {
                    // The last path to need this blob takes it (one inode, one mtime), or a
                    // copy when the trees' homes are on other filesystems. Its fd, opened
                    // before the move, is the moved inode's.
                    match fsx::rename_at(blobs.as_fd(), hex.as_bytes(), dir, name) {
                        Err(err) if err.raw_os_error() == Some(libc::EXDEV) => copy(&src)?,
                        r => {
                            r.at(at())?;
                            src
                        }
                    }
                } else {
                    copy(&src)?
                }
            };
            // Made by this session: nothing to read back or remove first, unless the
            // shadow passes xattrs on.
            if bare {
                fsx::set_meta_fresh_fd(made_fd.as_fd(), e, meta).at(at())?;
            } else {
                fsx::set_meta_fd(made_fd.as_fd(), e, meta).at(at())?;
            }
        }
    }
    Ok(())
}

/// The metadata the stager would set, set instead when a shadow file is made.
pub(super) fn meta_of(opts: &SyncOpts) -> fsx::MetaOpts {
    fsx::MetaOpts {
        owner: opts.owner,
        xattrs: opts.xattrs,
    }
}

/// Writes `data` at `at`, leaving its all-zero 4 KiB blocks as holes: one write per run of
/// blocks holding data (a write per block was most of a host's system time).
pub(super) fn write_runs(f: &fs::File, data: &[u8], at: u64) -> io::Result<()> {
    const B: usize = 4096;
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let end = (i + B).min(data.len());
        let zero = data[i..end].iter().all(|&b| b == 0);
        match (zero, start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                f.write_all_at(&data[s..i], at + s as u64)?;
                start = None;
            }
            _ => {}
        }
        i = end;
    }
    if let Some(s) = start {
        f.write_all_at(&data[s..], at + s as u64)?;
    }
    Ok(())
}

/// What this host holds and lacks of the content the shadows need.
pub(super) struct Lacks {
    /// Where each content hash is live here: (tree, live index).
    pub(super) live: HashMap<Hash, (usize, usize)>,
    /// Content found nowhere here, with its size: what to ask for.
    pub(super) want: HashMap<Hash, u64>,
    /// How many shadow files take each wanted blob.
    pub(super) uses: HashMap<Hash, usize>,
    /// Files copied from content found here.
    pub(super) found: u64,
    /// (5) For wanted content, this host's old version of a file that needs it (the live
    /// file at the same path): its hash, tree and live index. The local side may send a
    /// delta against it.
    pub(super) bases: HashMap<Hash, (Hash, usize, usize)>,
}

/// Looks for the content of every need (and of the later trees' `later`) in the live trees.
pub(super) fn lacks(
    trees: &mut [Tree],
    needs: &[Need],
    later: &[(Hash, u64)],
    pools: &Pools,
    with_bases: bool,
) -> Result<Lacks> {
    // The old version of each needed file: the live file at its path (hashed below).
    let old: Vec<Option<usize>> = needs
        .iter()
        .map(|(k, path, e, _)| {
            let t = &trees[*k];
            let j = t.dst.search(path).ok()?;
            let o = t.dst.at(j);
            let fits = |n: u64| n > 0 && n <= super::delta::MAX;
            (with_bases && o.kind == Kind::File && fits(o.size) && fits(e.size)).then_some(j)
        })
        .collect();
    // Live files that may hold content the plan copies: those of a size it needs.
    let sizes: HashSet<u64> = needs.iter().map(|n| n.2.size).collect();
    for (k, t) in trees.iter_mut().enumerate() {
        let olds: HashSet<usize> = needs
            .iter()
            .zip(&old)
            .filter(|(n, _)| n.0 == k)
            .filter_map(|(_, j)| *j)
            .collect();
        let idx: Vec<usize> = (0..t.dst.len())
            .filter(|&j| {
                let e = t.dst.at(j);
                e.kind == Kind::File
                    && e.hash.is_none()
                    && e.size > 0
                    && (sizes.contains(&e.size) || olds.contains(&j))
            })
            .collect();
        sync::hash_live(t, &idx, pools)?;
    }
    let mut live: HashMap<Hash, (usize, usize)> = HashMap::new();
    for (k, t) in trees.iter().enumerate() {
        for (j, e) in t.dst.iter().enumerate() {
            if let (Kind::File, Some(h)) = (e.kind, e.hash) {
                live.entry(*h).or_insert((k, j));
            }
        }
    }
    // What this host lacks: distinct hashes of needed non-empty content found nowhere here.
    let mut want: HashMap<Hash, u64> = HashMap::new();
    let mut uses: HashMap<Hash, usize> = HashMap::new();
    let mut found = 0u64;
    let mut bases = HashMap::new();
    for ((k, _, e, h), j) in needs.iter().zip(&old) {
        let h = *h;
        if e.size == 0 {
            continue;
        }
        if live.contains_key(&h) {
            found += 1;
        } else {
            want.insert(h, e.size);
            *uses.entry(h).or_default() += 1;
            if let Some(b) = j.and_then(|j| trees[*k].dst.at(j).hash) {
                bases.entry(h).or_insert((*b, *k, j.expect("some")));
            }
        }
    }
    // The later trees' content not on this host: received now, kept in the blobs dir
    // for them (one more use, so no shadow of this phase takes it away).
    for (h, size) in later {
        if !live.contains_key(h) {
            want.insert(*h, *size);
            *uses.entry(*h).or_default() += 1;
        }
    }
    Ok(Lacks {
        live,
        want,
        uses,
        found,
        bases,
    })
}

/// The shadow's place until the tree's home is open.
pub(super) const UNSET: &str = "/nonexistent/jailsync-shadow";

/// Every file the shadows must hold: those the stager copies, and the jail's version of each
/// kept configuration file that changed in the jail (written as `NAME.jailsync-new` after
/// the switch, from the shadow).
pub(super) fn need_list(trees: &[Tree], decisions: Option<&[Decisions]>) -> Vec<Need> {
    let mut out: Vec<Need> = needs(trees)
        .into_iter()
        .map(|(k, si)| {
            let e = trees[k].src.at(si);
            let h = *e.hash.expect("the manifest gives every file's hash");
            (k, Box::from(e.path), (*e).clone(), h)
        })
        .collect();
    for (k, d) in decisions.unwrap_or_default().iter().enumerate() {
        for x in d.list.iter().filter(|x| x.verdict == Verdict::KeptNew) {
            let (e, p) = x.jail.as_ref().expect("kept-new has the jail's");
            // Only a file's content comes from the shadow; a symlink or device is made from
            // its entry.
            if e.kind == crate::entry::Kind::File {
                out.push((k, x.path.clone(), e.clone(), p.digest));
            }
        }
    }
    out
}

/// The shadow's stat cache (written by the switch like any source's) is not kept.
pub(super) fn forget_shadows(trees: &[Tree], state: &crate::journal::StateDir) {
    for t in trees {
        if t.src_path != Path::new(UNSET) {
            if let Ok(d) = state.tree_dir(&t.src_path) {
                let _ = crate::fsx::remove_tree(d);
            }
        }
    }
}

/// A file a shadow must hold: (tree, path, the jail's entry, its hash).
pub(super) type Need = (usize, Box<[u8]>, crate::entry::Entry, Hash);

/// Every source file the stager copies, as (tree, source index): a file the plan does not
/// leave to its live inode, and not a hard-link follower (linked to its leader in the next
/// tree). Mirrors `stage::Builder::layout`.
pub(super) fn needs(trees: &[Tree]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (k, t) in trees.iter().enumerate() {
        let mut op: Vec<Option<Op>> = vec![None; t.src.len()];
        let mut follower = vec![false; t.src.len()];
        for a in &t.plan.actions {
            if a.src != NONE {
                op[a.src as usize] = Some(a.op);
                follower[a.src as usize] = a.link_to != NONE;
            }
        }
        for (i, e) in t.src.iter().enumerate() {
            if e.kind != Kind::File || follower[i] {
                continue;
            }
            let live_same = t
                .dst
                .search(e.path)
                .is_ok_and(|j| t.dst.at(j).kind == Kind::File);
            let kept = matches!(op[i], None | Some(Op::Meta)) && live_same;
            if !kept && (op[i].is_some() || !live_same) {
                out.push((k, i));
            }
        }
    }
    out
}

/// `mkdir -p` of `rel` below `root`, private (0700), remembering what exists.
pub(super) fn mkdirs(
    root: BorrowedFd<'_>,
    rel: &[u8],
    made: &mut HashSet<Vec<u8>>,
) -> io::Result<()> {
    if rel.is_empty() || made.contains(rel) {
        return Ok(());
    }
    let (parent, name) = split_parent(rel);
    mkdirs(root, parent, made)?;
    let pd = fsx::open_dir_beneath(root, parent)?;
    match fsx::mkdir_at(pd.as_fd(), name, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    made.insert(rel.to_vec());
    Ok(())
}

/// This session's private directories: `incoming-PID` in each tree's home (the shadow: on the
/// live tree's filesystem, so its files are moved into the next tree, never copied twice) and
/// `incoming-PID.blobs` in the first tree's home. Removed on drop; those of sessions no longer
/// running are removed when a session starts.
pub(super) struct Work {
    pub(super) dirs: Vec<PathBuf>,
    pub(super) blobs: PathBuf,
}

impl Work {
    pub(super) fn make(trees: &mut [Tree], opts: &SyncOpts) -> Result<Work> {
        // A tree with nothing to do is prepared without a home; the session needs every one.
        for t in trees.iter_mut() {
            sync::ensure_home(t, opts)?;
        }
        // (Only a dry run makes none, and a dry run stages nothing.)
        if let Some(t) = trees
            .iter()
            .find(|t| t.home.is_none() && !t.plan.is_empty())
        {
            return Err(RemoteError::Refused(format!(
                "{}: no home to stage in (a dry run): nothing was changed",
                t.dst_path.display()
            )));
        }
        let pid = std::process::id();
        let mk = |p: &Path| fs::DirBuilder::new().mode(0o700).create(p).at(p);
        let mut work = Work {
            dirs: Vec::new(),
            blobs: PathBuf::new(),
        };
        for t in trees.iter_mut() {
            let home = t.home.as_ref().expect("switchable").path.clone();
            if let Ok(rd) = fs::read_dir(&home) {
                for e in rd.flatten() {
                    let n = e.file_name();
                    let Some(rest) = n.to_str().and_then(|s| s.strip_prefix("incoming-")) else {
                        continue;
                    };
                    let other = rest.split('.').next().and_then(|p| p.parse::<u32>().ok());
                    if other.is_some_and(|p| p == pid || !Path::new(&format!("/proc/{p}")).exists())
                    {
                        let _ = crate::fsx::remove_tree(e.path());
                    }
                }
            }
            let shadow = home.join(format!("incoming-{pid}"));
            mk(&shadow)?;
            work.dirs.push(shadow.clone());
            if work.blobs.as_os_str().is_empty() {
                work.blobs = home.join(format!("incoming-{pid}.blobs"));
                mk(&work.blobs)?;
                work.dirs.push(work.blobs.clone());
            }
            t.src_path = shadow;
        }
        Ok(work)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = crate::fsx::remove_tree(d);
        }
    }
}

/// Refuses, before anything is asked for, when a filesystem cannot hold the files the
/// shadows will: the next tree is staged beside the live one, so each file the stager copies
/// takes room once (a sparse file counted by its data only, so over-counted at most). Said
/// before any content moves, so that a full host fails at once rather than after its transfer.
pub(super) fn check_room(trees: &[Tree], needs: &[Need]) -> Result<()> {
    // (filesystem id, bytes needed, bytes free, a tree on it).
    let mut fss: Vec<(u64, u64, u64, &Path)> = Vec::new();
    for (k, t) in trees.iter().enumerate() {
        let need: u64 = needs
            .iter()
            .filter(|n| n.0 == k && !n.2.is_sparse())
            .map(|n| n.2.size)
            .sum();
        // Where the room cannot be read, the staging itself says ENOSPC, as before.
        let Ok(st) = rustix::fs::statvfs(&t.dst_path) else {
            continue;
        };
        let free = st.f_bavail.saturating_mul(st.f_frsize);
        match fss.iter_mut().find(|f| f.0 == st.f_fsid) {
            Some(f) => f.1 += need,
            None => fss.push((st.f_fsid, need, free, &t.dst_path)),
        }
    }
    match fss.into_iter().find(|f| f.1 > f.2) {
        Some((_, need, free, at)) => Err(RemoteError::Refused(format!(
            "{}: the next release needs {need} bytes of new files there, its filesystem has \
             {free} free: nothing was sent or changed (free some space, or push fewer trees)",
            at.display()
        ))),
        None => Ok(()),
    }
}

/// Where this host keeps the last manifest it received for a tree (the base of a delta).
const HELD: &str = "push-manifest";

/// The manifest this host last received for each tree, if it has one it can use as a base.
pub(super) fn held_manifests(state_dir: &Path, dsts: &[PathBuf]) -> Vec<Option<(Hash, Vec<u8>)>> {
    let state = sync::open_state(
        state_dir,
        &dsts.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    );
    dsts.iter()
        .map(|d| {
            let dir = state.as_ref().ok()?.tree_dir(d).ok()?;
            let z = fs::read(dir.join(HELD)).ok()?;
            let text = zstd::bulk::decompress(&z, super::delta::MAX as usize).ok()?;
            Some((*blake3::hash(&text).as_bytes(), text))
        })
        .collect()
}

/// Keeps `text` as the last manifest received for `dst` (best effort: without it the next
/// push sends the manifest whole).
pub(super) fn hold_manifest(state: &crate::journal::StateDir, dst: &Path, text: &[u8]) {
    if text.len() as u64 > super::delta::MAX {
        return;
    }
    let Ok(dir) = state.tree_dir(dst) else { return };
    let Ok(z) = zstd::bulk::compress(text, 1) else {
        return;
    };
    let tmp = dir.join(format!("{HELD}.{}", std::process::id()));
    if fs::write(&tmp, z).is_err() || fs::rename(&tmp, dir.join(HELD)).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn runs_of_data_are_written_whole_and_zero_blocks_stay_holes() {
        let d = tempfile::tempdir().unwrap();
        // Blocks: data, zero, zero, data, data, zero, then a short data tail; written at an
        // offset, as a second chunk of a blob is.
        let mut data = vec![0u8; 6 * 4096 + 100];
        for b in [0usize, 3, 4] {
            data[b * 4096 + 7] = 1;
        }
        data[6 * 4096 + 99] = 9;
        let p = d.path().join("f");
        let f = fs::File::create(&p).unwrap();
        let at = 1 << 20;
        write_runs(&f, &data, at).unwrap();
        f.set_len(at + data.len() as u64).unwrap();
        let got = fs::read(&p).unwrap();
        assert!(got[..at as usize].iter().all(|&b| b == 0));
        assert_eq!(&got[at as usize..], &data[..]);
        // Four blocks hold data; the rest (the first MiB and the zero blocks) are holes.
        let blocks = f.metadata().unwrap().blocks() * 512;
        assert!(blocks <= 5 * 4096, "{blocks} bytes allocated");
        // All zero: nothing written.
        let g = fs::File::create(d.path().join("g")).unwrap();
        write_runs(&g, &[0u8; 3 * 4096], 0).unwrap();
        assert_eq!(g.metadata().unwrap().len(), 0);
    }
}
