//! Opening roots, directories beneath them and files in them, and looking at what is there
//! (`lstat`, listing, the stat → [`Entry`] mapping), never following a symlink below a root.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

use super::{cstr, errno, sys};
use crate::entry::{Entry, Kind};

/// Longest relative path handed to one `openat2` call; longer paths are resolved in pieces
/// so trees deeper than `PATH_MAX` still work.
const PATH_CHUNK: usize = 3072;

/// Opens a directory given by an ordinary path (the roots the user named).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens a destination root, refusing a symlink as its last component.
pub fn open_root_nofollow(path: &Path) -> io::Result<OwnedFd> {
    rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(errno)
}

/// The release the destination `name` in `parent` is, when `name` is this program's switch
/// symlink (`NAME -> .jailsync-NAME/rel-N`, made by root or the caller, see
/// [`crate::names::rel_of_target`]); `None` for anything else.
pub fn switch_link_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let c = cstr(name)?;
    let st = lstat_at(parent, &c)?;
    let me = rustix::process::geteuid().as_raw();
    if kind_of(st.st_mode) != Kind::Symlink || (st.st_uid != 0 && st.st_uid != me) {
        return Ok(None);
    }
    let target = read_link_at(parent, &c)?;
    Ok(crate::names::rel_of_target(Some(name), &target).map(<[u8]>::to_vec))
}

/// Opens the destination tree `name` in `parent`: a directory, never through a symlink — but
/// for this program's own switch link, whose release is opened through its home (checked to
/// be ours), the one symlink a destination may be.
pub fn open_tree_at(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let Some(rel) = switch_link_at(parent, name).unwrap_or(None) else {
        return open_subdir(parent, name);
    };
    let hname = crate::names::home_name(name);
    let home = open_subdir(parent, &hname)?;
    if !crate::names::is_ours(&hname, &fstat(home.as_fd())?) {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    open_subdir(home.as_fd(), &rel)
}

/// [`open_tree_at`] for a destination's canonical path.
pub fn open_tree(path: &Path) -> io::Result<OwnedFd> {
    match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => open_tree_at(open_root(p)?.as_fd(), n.as_encoded_bytes()),
        _ => open_root_nofollow(path),
    }
}

/// Opens the directory `rel` (relative, may be empty for the root itself) beneath `root`,
/// refusing every symlink on the way.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    let oflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if rel.is_empty() {
        return rfs::openat(root, c".", oflags, Mode::empty()).map_err(errno);
    }
    let mut cur: Option<OwnedFd> = None;
    for chunk in path_chunks(rel) {
        let base = cur.as_ref().map(|f| f.as_fd()).unwrap_or(root);
        let next = sys().open_beneath(base, chunk, oflags)?;
        cur = Some(next);
    }
    Ok(cur.expect("non-empty path has a chunk"))
}

/// Opens `rel` beneath `base` one component at a time, each with `O_NOFOLLOW`: a symlink
/// anywhere on the way fails the call (`ELOOP` on Linux), and `..`/`.` are refused, so the walk
/// never leaves `base`.
pub(crate) fn walk_nofollow(
    base: BorrowedFd<'_>,
    rel: &[u8],
    oflags: OFlags,
) -> io::Result<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    for comp in rel.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        if comp == b".." || comp == b"." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "path component '..' or '.'",
            ));
        }
        let b = cur.as_ref().map(|f| f.as_fd()).unwrap_or(base);
        cur = Some(rfs::openat(b, cstr(comp)?.as_c_str(), oflags, Mode::empty()).map_err(errno)?);
    }
    cur.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
}

/// Splits a long relative path at `/` boundaries into pieces of at most `PATH_CHUNK` bytes.
fn path_chunks(rel: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = rel;
    while rest.len() > PATH_CHUNK {
        let cut = rest[..PATH_CHUNK]
            .iter()
            .rposition(|&b| b == b'/')
            .unwrap_or(PATH_CHUNK);
        out.push(&rest[..cut]);
        rest = &rest[(cut + 1).min(rest.len())..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<rfs::Stat> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)
}

/// `mode` is `st_mode`, whose width differs between systems (u16 on the BSDs and macOS).
pub fn kind_of(mode: impl Into<u32>) -> Kind {
    match FileType::from_raw_mode(mode.into() as _) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::Char,
        FileType::BlockDevice => Kind::Block,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => Kind::Socket,
    }
}

pub fn read_link_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    rfs::readlinkat(dir, name, Vec::new())
        .map(|c| c.into_bytes())
        .map_err(errno)
}

/// Opens a source file for reading without following a symlink and without touching atime.
pub fn open_read_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let fl = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let extra = sys().read_flags();
    match rfs::openat(dir, c.as_c_str(), fl | extra, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // O_NOATIME is refused on files we do not own unless we are root.
        Err(rustix::io::Errno::PERM) if !extra.is_empty() => {
            rfs::openat(dir, c.as_c_str(), fl, Mode::empty()).map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

/// Creates a new file `name` in `dir` (must not exist) for writing.
pub fn create_excl_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    rfs::openat(
        dir,
        c.as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(errno)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<rfs::Stat> {
    rfs::fstat(fd).map_err(errno)
}

/// Names in a directory, without `.` and `..`.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let mut d = rfs::Dir::read_from(dir).map_err(errno)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent.map_err(errno)?;
        let n = ent.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        out.push(n.to_vec());
    }
    Ok(out)
}

/// Opens the directory `name` in `dir` without following a symlink.
pub fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    rfs::openat(
        dir,
        c.as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

// stat field widths differ between targets; the casts are no-ops only on some.
#[allow(clippy::unnecessary_cast)]
pub fn entry_from_stat(st: &rfs::Stat) -> Entry {
    let kind = kind_of(st.st_mode as u32);
    let mut e = Entry::new(kind);
    e.mode = (st.st_mode as u32 & 0o7777) as u16;
    if kind == Kind::File || kind == Kind::Symlink {
        e.size = st.st_size as u64;
    }
    e.set_mtime(st.st_mtime as i64, st.st_mtime_nsec as u32);
    e.set_ctime(st.st_ctime as i64, st.st_ctime_nsec as u32);
    (e.ino, e.nlink) = (st.st_ino as u64, st.st_nlink as u32);
    e.set_ids(st.st_uid, st.st_gid, st.st_dev as u64);
    e.sparse = kind == Kind::File && (st.st_blocks as u64).saturating_mul(512) < e.size;
    if matches!(kind, Kind::Char | Kind::Block) {
        e.set_rdev(st.st_rdev as u64);
    }
    e
}
