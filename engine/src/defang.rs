//! Old setuid and setgid binaries and file capabilities are defanged in the trees a switch
//! leaves behind (invariant 9).
//!
//! A process whose working directory (or an open directory fd) was inside the live tree
//! before a switch still reaches the old tree afterwards, wherever the exchange put it: an
//! unprivileged shell parked in `DST/bin` can run the replaced setuid-root `./tool` for as
//! long as the generation is kept, the home's 0700 notwithstanding (the path is never walked
//! again). dpkg strips these bits from files it replaces for the same reason. So, after each
//! switch, every file of the old tree that the new live tree does not share (its inode is not
//! live: linked files are the live ones and keep everything) loses setuid, setgid and
//! `security.capability`. The generation records what it took (`gen-N.d/defanged`, written
//! before the first change), and rolling the generation back gives it back before the switch
//! makes it live again ([`restore`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::entry::{Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::stage::Dirs;
use crate::switch::{hex, unhex, Home};

/// The record's name in a generation's `gen-N.d/`.
pub const RECORD: &str = "defanged";

/// Bits that grant privilege on exec.
const FANGS: u32 = 0o6000;

/// One file defanged: where, which inode, and what it had.
#[derive(Debug, Clone, PartialEq)]
pub struct Fang {
    pub path: Box<[u8]>,
    pub ino: u64,
    pub mode: u32,
    pub cap: Option<Vec<u8>>,
}

/// The old tree's files that may grant privilege and that the live tree does not share,
/// in path order: regular files whose inode is not among `live_inos` (sorted) and that carry
/// setuid or setgid, or a file capability. With `xattrs_known` (the scan read every entry's
/// xattrs) the capability is known from the entry; otherwise every executable is a candidate
/// and [`defang`] asks the file itself.
pub fn old_only<'a>(
    old: &'a Entries,
    live_inos: &'a [u64],
    xattrs_known: bool,
) -> impl Iterator<Item = (&'a [u8], u64)> + 'a {
    let capped = |e: &crate::entry::Ent<'_>| {
        e.xattrs()
            .is_some_and(|x| x.iter().any(|(n, _)| &n[..] == b"security.capability"))
    };
    old.iter()
        .filter(|e| e.kind == Kind::File && e.mode & 0o111 != 0)
        .filter(move |e| !xattrs_known || u32::from(e.mode) & FANGS != 0 || capped(e))
        .filter(|e| live_inos.binary_search(&e.ino).is_err())
        .map(|e| (e.path, e.ino))
}

/// Sorted inode numbers of the non-directories of the given lists (a tree's entries).
pub fn inodes<'a>(lists: impl IntoIterator<Item = &'a Entries>) -> Vec<u64> {
    let mut v: Vec<u64> = lists
        .into_iter()
        .flat_map(|l| l.iter().filter(|e| e.kind != Kind::Dir).map(|e| e.ino))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Defangs, in the tree open as `root`, the `candidates` (path, inode) that carry setuid,
/// setgid or a file capability; a path whose inode is no longer the one named is left alone.
/// When `record` is given (the generation's `gen-N.d`), what is taken is written there first,
/// so a rollback can give it back even after a run killed halfway. Returns what was taken.
pub fn defang<'a>(
    root: BorrowedFd<'_>,
    shown: &Path,
    candidates: impl Iterator<Item = (&'a [u8], u64)>,
    record: Option<(&OwnedFd, &Path)>,
    durable: bool,
) -> Result<Vec<Fang>> {
    let mut dirs = Dirs::new(root);
    let mut found: Vec<(Fang, OwnedFd)> = Vec::new();
    for (path, ino) in candidates {
        let Some(fd) = open_file(&mut dirs, path, ino) else {
            continue;
        };
        let st = fsx::fstat(fd.as_fd()).at(shown.join(fsx::os(path)))?;
        let mode = st.st_mode as u32 & 0o7777;
        let cap = fsx::file_capability(fd.as_fd()).at(shown.join(fsx::os(path)))?;
        if mode & FANGS != 0 || cap.is_some() {
            let f = Fang {
                path: path.into(),
                ino,
                mode,
                cap,
            };
            found.push((f, fd));
        }
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((dir, at)) = record {
        let fangs: Vec<&Fang> = found.iter().map(|(f, _)| f).collect();
        write_record(dir, at, &fangs, durable)?;
    }
    for (f, fd) in &found {
        let at = || shown.join(fsx::os(&f.path));
        if f.cap.is_some() {
            fsx::set_file_capability(fd.as_fd(), None).at(at())?;
        }
        if f.mode & FANGS != 0 {
            fsx::chmod_fd(fd.as_fd(), f.mode & !FANGS).at(at())?;
        }
    }
    Ok(found.into_iter().map(|(f, _)| f).collect())
}

/// Gives back (`give_back`), in the tree open as `root`, what [`defang`] recorded at `record`
/// (a generation about to be switched back in), or takes it again (a rollback whose switch
/// failed). A file whose inode changed is skipped and reported. No record: nothing was taken.
pub fn restore(
    root: BorrowedFd<'_>,
    shown: &Path,
    record: &Path,
    give_back: bool,
) -> Result<Vec<(PathBuf, io::Error)>> {
    let fangs = match read_record(record)? {
        Some(f) => f,
        None => return Ok(Vec::new()),
    };
    let mut dirs = Dirs::new(root);
    let mut errors = Vec::new();
    for f in fangs {
        let at = shown.join(fsx::os(&f.path));
        let Some(fd) = open_file(&mut dirs, &f.path, f.ino) else {
            errors.push((
                at,
                io::Error::other("not restored: no longer the file defanged"),
            ));
            continue;
        };
        let (mode, cap) = if give_back {
            (f.mode, f.cap.as_deref())
        } else {
            (f.mode & !FANGS, None)
        };
        let r = fsx::chmod_fd(fd.as_fd(), mode).and_then(|()| match (&f.cap, cap) {
            (None, _) => Ok(()),
            (Some(_), c) => fsx::set_file_capability(fd.as_fd(), c),
        });
        if let Err(e) = r {
            errors.push((at, e));
        }
    }
    Ok(errors)
}

/// The regular file `path` below the last-directory cursor's root, if it is still inode `ino`.
fn open_file(dirs: &mut Dirs<'_>, path: &[u8], ino: u64) -> Option<OwnedFd> {
    let (parent, name) = fsx::split_parent(path);
    let dir = dirs.get(parent).ok()?;
    let fd = fsx::open_read_at(dir, name).ok()?;
    let st = fsx::fstat(fd.as_fd()).ok()?;
    (fsx::kind_of(st.st_mode as u32) == Kind::File && st.st_ino as u64 == ino).then_some(fd)
}

/// One line per file: hex path, inode, octal mode, hex capability or `-`.
fn write_record(dir: &OwnedFd, at: &Path, fangs: &[&Fang], durable: bool) -> Result<()> {
    crate::switch::write_with(dir, RECORD, &at.join(RECORD), durable, |w| {
        for f in fangs {
            let cap = f.cap.as_deref().map_or_else(|| "-".to_string(), hex);
            writeln!(w, "{} {} {:o} {}", hex(&f.path), f.ino, f.mode, cap)?;
        }
        Ok(())
    })
}

/// What a generation's record (`gen-N.d/defanged`) says was taken; None: no record.
pub fn read_record(p: &Path) -> Result<Option<Vec<Fang>>> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(p, e)),
    };
    let bad = |n: usize| Error::bad(p, format!("line {}: not a defanged-file record", n + 1));
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split(' ').collect();
        let [path, ino, mode, cap] = f[..] else {
            return Err(bad(n));
        };
        out.push(Fang {
            path: unhex(path).ok_or_else(|| bad(n))?.into(),
            ino: ino.parse().map_err(|_| bad(n))?,
            mode: u32::from_str_radix(mode, 8).map_err(|_| bad(n))?,
            cap: match cap {
                "-" => None,
                c => Some(unhex(c).ok_or_else(|| bad(n))?),
            },
        });
    }
    Ok(Some(out))
}

/// Defangs generation `id` of `home` right after the switch that made it: the old tree's files
/// that the live tree (the entries of `live`) does not share. What is taken is recorded in the
/// generation's `gen-N.d/` for [`restore`].
pub fn generation(
    home: &Home,
    id: u64,
    old: &Entries,
    live: &[&Entries],
    xattrs_known: bool,
) -> Result<usize> {
    let inos = inodes(live.iter().copied());
    let gpath = home.gen_path(id);
    let gen = home.open_in(&Home::gen_name(id))?;
    let rname = format!("gen-{id}.d");
    let rpath = home.path.join(&rname);
    let rec = fsx::open_subdir(home.fd.as_fd(), rname.as_bytes()).at(&rpath)?;
    let taken = defang(
        gen.as_fd(),
        &gpath,
        old_only(old, &inos, xattrs_known),
        Some((&rec, &rpath)),
        home.durable,
    )?;
    Ok(taken.len())
}

/// Defangs `name` in `home` (the tree a rollback switched out: `undone-N`, `kept-N`): the files
/// of `old` (that tree, as scanned before the rollback) whose inodes `live_inos` (sorted: the
/// tree switched back in) lacks. Nothing is recorded: such a tree is never switched back.
pub fn replaced(
    home: &Home,
    name: &Path,
    old: &Entries,
    xattrs_known: bool,
    live_inos: &[u64],
) -> Result<usize> {
    let shown = home.path.join(name);
    let root = home.open_in(name.as_os_str().as_encoded_bytes())?;
    let taken = defang(
        root.as_fd(),
        &shown,
        old_only(old, live_inos, xattrs_known),
        None,
        false,
    )?;
    Ok(taken.len())
}
