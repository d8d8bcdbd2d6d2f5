//! The integration-test environment: a fixture builder for real trees, a canonical listing
//! that captures every piece of metadata `sync` promises to reproduce, and helpers that run
//! the real `jailsync` binary.
//!
//! Everything here works fd-relative (one `openat` per component, never following symlinks), so
//! fixtures and listings work in trees deeper than `PATH_MAX` and a symlink planted in a tree
//! is listed, not followed.

#![allow(dead_code)]

pub mod gen;

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_jailsync");

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the calling test (with a printed reason) unless it runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            eprintln!("skipped: needs root (owners, devices, trusted.* xattrs)");
            return;
        }
    };
}

/// Skips the calling test (with the printed reason) unless `cond` holds.
#[macro_export]
macro_rules! require {
    ($cond:expr, $why:expr) => {
        if !$cond {
            eprintln!("skipped: {}", $why);
            return;
        }
    };
}

/// Whether this test run drives the binary's portable OS layer (`JAILSYNC_FSX=portable`, the
/// CI's second pass): no atomic exchange, so a switched path is absent for one rename.
pub fn portable() -> bool {
    std::env::var_os("JAILSYNC_FSX").is_some_and(|v| v == "portable")
}

/// Whether device nodes can be made here (root without CAP_MKNOD in a container cannot).
pub fn can_mknod() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let Ok(d) = tempfile::tempdir() else {
            return false;
        };
        let p = cstr(d.path().join("c").as_os_str().as_bytes());
        // SAFETY: valid C string.
        unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3)) == 0 }
    })
}

/// Whether `trusted.*` xattrs can be set here (needs CAP_SYS_ADMIN and filesystem support).
pub fn can_trusted_xattr() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let Ok(d) = tempfile::tempdir() else {
            return false;
        };
        let f = d.path().join("f");
        if std::fs::write(&f, b"").is_err() {
            return false;
        }
        let p = cstr(f.as_os_str().as_bytes());
        let k = cstr(b"trusted.probe");
        // SAFETY: valid C strings and a one-byte buffer.
        unsafe { libc::setxattr(p.as_ptr(), k.as_ptr(), b"1".as_ptr().cast(), 1, 0) == 0 }
    })
}

/// Whether an external program is installed.
pub fn have(prog: &str) -> bool {
    Command::new(prog)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

// ---------------------------------------------------------------------------------------------
// Low-level, fd-relative calls.

fn cstr(b: &[u8]) -> CString {
    CString::new(b).expect("no NUL in test paths")
}

fn check(r: libc::c_int, what: &str, path: &[u8]) -> libc::c_int {
    if r < 0 {
        panic!("{what} {}: {}", esc(path), io::Error::last_os_error());
    }
    r
}

fn open_dir_at(dir: RawFd, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstr(name);
    // SAFETY: valid C string; the returned fd is owned by us.
    let fd = unsafe {
        libc::openat(
            dir,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_path(p: &Path) -> OwnedFd {
    open_dir_at(libc::AT_FDCWD, p.as_os_str().as_bytes())
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

/// Opens the parent directory of `rel` beneath `root` (creating missing directories with mode
/// 0755 when `create`), returning it and the last component (`.` for the root itself).
fn parent_of(root: &Path, rel: &[u8], create: bool) -> (OwnedFd, Vec<u8>) {
    let mut cur = open_path(root);
    let comps: Vec<&[u8]> = rel
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, dirs)) = comps.split_last() else {
        return (cur, b".".to_vec());
    };
    for c in dirs {
        let next = match open_dir_at(cur.as_raw_fd(), c) {
            Ok(f) => f,
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                let cc = cstr(c);
                // SAFETY: valid fd and C string.
                check(
                    unsafe { libc::mkdirat(cur.as_raw_fd(), cc.as_ptr(), 0o755) },
                    "mkdir",
                    rel,
                );
                // SAFETY: as above; umask must not decide the mode.
                check(
                    unsafe { libc::fchmodat(cur.as_raw_fd(), cc.as_ptr(), 0o755, 0) },
                    "chmod",
                    rel,
                );
                open_dir_at(cur.as_raw_fd(), c).expect("just made")
            }
            Err(e) => panic!("open parent of {}: {e}", esc(rel)),
        };
        cur = next;
    }
    (cur, last.to_vec())
}

/// `/proc/self/fd/N/name`: a short path to any entry, however deep, for the xattr calls that
/// have no `*at` form. `l*` variants do not follow `name` itself.
fn proc_path(dir: &OwnedFd, name: &[u8]) -> CString {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if name != b"." {
        p.push(b'/');
        p.extend_from_slice(name);
    }
    cstr(&p)
}

fn lstat_at(dir: RawFd, name: &[u8]) -> io::Result<libc::stat> {
    let c = cstr(name);
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, C string, buffer.
    let r = unsafe { libc::fstatat(dir, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// lstat of `root/rel`, fd-relative (works beyond PATH_MAX).
pub fn lstat(root: &Path, rel: impl AsRef<[u8]>) -> io::Result<libc::stat> {
    let (d, n) = parent_of(root, rel.as_ref(), false);
    lstat_at(d.as_raw_fd(), &n)
}

/// Inode number of `root/rel` (to prove a file was not rewritten).
pub fn ino(root: &Path, rel: impl AsRef<[u8]>) -> u64 {
    lstat(root, rel.as_ref())
        .unwrap_or_else(|e| panic!("lstat {}: {e}", esc(rel.as_ref())))
        .st_ino
}

/// A printable form of path bytes (non-UTF-8 and control bytes escaped).
pub fn esc(p: &[u8]) -> String {
    p.iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fixture builder.

/// Builds entries beneath a root with exact metadata. Paths are relative bytes; missing parent
/// directories are created with mode 0755. Call `owner` before `mode` when both matter
/// (chown clears setuid bits) — `owner` re-applies the mode it found, so either order works.
pub struct Tree {
    pub root: PathBuf,
}

impl Tree {
    pub fn new(root: impl Into<PathBuf>) -> Tree {
        let root = root.into();
        std::fs::create_dir_all(&root).expect("create tree root");
        Tree { root }
    }

    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel.as_ref()))
    }

    /// A regular file with mode 0644 and the given content (replacing any file there).
    pub fn file(&self, rel: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        // Fast path for short paths whose parent exists: one open by path (fixtures of
        // thousands of files). The slow path below works at any depth.
        if rel.len() < 2048 {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o644)
                .open(self.path(rel));
            if let Ok(mut f) = f {
                io::Write::write_all(&mut f, content.as_ref()).expect("write fixture file");
                f.set_permissions(std::fs::Permissions::from_mode(0o644))
                    .expect("chmod fixture file");
                return self;
            }
        }
        let (d, n) = parent_of(&self.root, rel, true);
        let c = cstr(&n);
        // SAFETY: valid fd and C string; the fd is owned by the File below.
        let fd = check(
            unsafe {
                libc::openat(
                    d.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_TRUNC
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                )
            },
            "create",
            rel,
        );
        // SAFETY: fresh fd.
        let mut f = unsafe { File::from_raw_fd(fd) };
        io::Write::write_all(&mut f, content.as_ref()).expect("write fixture file");
        // SAFETY: valid fd.
        check(unsafe { libc::fchmod(fd, 0o644) }, "chmod", rel);
        self
    }

    /// A sparse file of `size` bytes holding `data` at the given offsets, holes elsewhere.
    pub fn sparse(&self, rel: impl AsRef<[u8]>, size: u64, data: &[(u64, &[u8])]) -> &Self {
        let rel = rel.as_ref();
        self.file(rel, b"");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path(rel))
            .expect("open sparse");
        f.set_len(size).expect("truncate");
        for (off, d) in data {
            std::os::unix::fs::FileExt::write_all_at(&f, d, *off).expect("pwrite");
        }
        self
    }

    /// A directory with mode 0755 (parents too).
    pub fn dir(&self, rel: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        let (d, n) = parent_of(&self.root, rel, true);
        if n == b"." {
            return self;
        }
        let c = cstr(&n);
        // SAFETY: valid fd and C string.
        let r = unsafe { libc::mkdirat(d.as_raw_fd(), c.as_ptr(), 0o755) };
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            panic!("mkdir {}: {}", esc(rel), io::Error::last_os_error());
        }
        // SAFETY: as above.
        check(
            unsafe { libc::fchmodat(d.as_raw_fd(), c.as_ptr(), 0o755, 0) },
            "chmod",
            rel,
        );
        self
    }

    pub fn symlink(&self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        let (d, n) = parent_of(&self.root, rel, true);
        let (c, t) = (cstr(&n), cstr(target.as_ref()));
        // SAFETY: valid fd and C strings.
        check(
            unsafe { libc::symlinkat(t.as_ptr(), d.as_raw_fd(), c.as_ptr()) },
            "symlink",
            rel,
        );
        self
    }

    /// A hard link `rel` to the existing `to`.
    pub fn hardlink(&self, rel: impl AsRef<[u8]>, to: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        let (td, tn) = parent_of(&self.root, to.as_ref(), false);
        let (d, n) = parent_of(&self.root, rel, true);
        let (a, b) = (cstr(&tn), cstr(&n));
        // SAFETY: valid fds and C strings.
        check(
            unsafe { libc::linkat(td.as_raw_fd(), a.as_ptr(), d.as_raw_fd(), b.as_ptr(), 0) },
            "link",
            rel,
        );
        self
    }

    fn mknod(&self, rel: &[u8], mode: libc::mode_t, dev: libc::dev_t) -> &Self {
        let (d, n) = parent_of(&self.root, rel, true);
        let c = cstr(&n);
        // SAFETY: valid fd and C string.
        check(
            unsafe { libc::mknodat(d.as_raw_fd(), c.as_ptr(), mode, dev) },
            "mknod",
            rel,
        );
        // SAFETY: as above; umask must not decide the mode.
        check(
            unsafe { libc::fchmodat(d.as_raw_fd(), c.as_ptr(), mode & 0o7777, 0) },
            "chmod",
            rel,
        );
        self
    }

    pub fn fifo(&self, rel: impl AsRef<[u8]>) -> &Self {
        self.mknod(rel.as_ref(), libc::S_IFIFO | 0o644, 0)
    }

    pub fn chardev(&self, rel: impl AsRef<[u8]>, major: u32, minor: u32) -> &Self {
        self.mknod(
            rel.as_ref(),
            libc::S_IFCHR | 0o600,
            libc::makedev(major, minor),
        )
    }

    pub fn blockdev(&self, rel: impl AsRef<[u8]>, major: u32, minor: u32) -> &Self {
        self.mknod(
            rel.as_ref(),
            libc::S_IFBLK | 0o660,
            libc::makedev(major, minor),
        )
    }

    /// Exact permission bits (incl. setuid/setgid/sticky). Not for symlinks.
    pub fn mode(&self, rel: impl AsRef<[u8]>, mode: u32) -> &Self {
        let rel = rel.as_ref();
        let (d, n) = parent_of(&self.root, rel, false);
        let c = cstr(&n);
        // SAFETY: valid fd and C string.
        check(
            unsafe { libc::fchmodat(d.as_raw_fd(), c.as_ptr(), mode, 0) },
            "chmod",
            rel,
        );
        self
    }

    /// Numeric owner and group, without following a symlink; keeps the mode bits.
    pub fn owner(&self, rel: impl AsRef<[u8]>, uid: u32, gid: u32) -> &Self {
        let rel = rel.as_ref();
        let (d, n) = parent_of(&self.root, rel, false);
        let st = lstat_at(d.as_raw_fd(), &n).expect("lstat before chown");
        let c = cstr(&n);
        // SAFETY: valid fd and C string.
        check(
            unsafe {
                libc::fchownat(
                    d.as_raw_fd(),
                    c.as_ptr(),
                    uid,
                    gid,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
            "chown",
            rel,
        );
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            self.mode(rel, st.st_mode & 0o7777);
        }
        self
    }

    /// mtime (and atime) in seconds + nanoseconds, on files, directories and symlinks alike.
    pub fn mtime(&self, rel: impl AsRef<[u8]>, sec: i64, nsec: i64) -> &Self {
        let rel = rel.as_ref();
        let (d, n) = parent_of(&self.root, rel, false);
        let c = cstr(&n);
        let ts = [
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            },
        ];
        // SAFETY: valid fd, C string and two timespecs.
        check(
            unsafe {
                libc::utimensat(
                    d.as_raw_fd(),
                    c.as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
            "utimensat",
            rel,
        );
        self
    }

    /// Sets an extended attribute without following a symlink.
    pub fn xattr(&self, rel: impl AsRef<[u8]>, name: &str, value: impl AsRef<[u8]>) -> &Self {
        let rel = rel.as_ref();
        let (d, n) = parent_of(&self.root, rel, false);
        let p = proc_path(&d, &n);
        let k = cstr(name.as_bytes());
        let v = value.as_ref();
        // SAFETY: valid C strings and buffer.
        let r = unsafe {
            if n == b"." {
                libc::setxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0)
            } else {
                libc::lsetxattr(p.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0)
            }
        };
        check(r, "setxattr", rel);
        self
    }

    /// Removes an entry (recursively for directories); short paths only.
    pub fn remove(&self, rel: impl AsRef<[u8]>) -> &Self {
        let p = self.path(rel);
        let md = std::fs::symlink_metadata(&p).expect("remove: lstat");
        if md.is_dir() {
            std::fs::remove_dir_all(&p).expect("remove dir");
        } else {
            std::fs::remove_file(&p).expect("remove file");
        }
        self
    }

    /// Sets a fixed mtime on every directory (bottom-up), so listings do not depend on when
    /// the fixture was built. Short paths only.
    pub fn settle_dirs(&self, sec: i64) -> &Self {
        let l = listing(&self.root);
        for (p, r) in l.0.iter().rev() {
            if r.kind == 'd' {
                self.mtime(p, sec, 0);
            }
        }
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical listing.

/// Everything `sync` promises to reproduce about one entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Rec {
    /// `f` file, `d` dir, `l` symlink, `p` fifo, `c` char dev, `b` block dev, `s` socket.
    pub kind: char,
    /// Permission bits incl. setuid/setgid/sticky (not for symlinks: Linux ignores them).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    /// Files and symlinks; directory sizes depend on the filesystem's history.
    pub size: Option<u64>,
    pub hash: Option<String>,
    pub target: Option<Vec<u8>>,
    pub rdev: Option<u64>,
    /// Hard-link group: the first path (in listing order) sharing this inode within the tree.
    pub link: Option<Vec<u8>>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `st_blocks * 512 < size`.
    pub sparse: bool,
}

impl fmt::Debug for Rec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:05o} {}:{} {}.{:09}",
            self.kind, self.mode, self.uid, self.gid, self.mtime.0, self.mtime.1
        )?;
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(h) = &self.hash {
            write!(f, " b3={}", &h[..16])?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> {}", esc(t))?;
        }
        if let Some(r) = self.rdev {
            write!(
                f,
                " dev={},{}",
                libc::major(r as libc::dev_t),
                libc::minor(r as libc::dev_t)
            )?;
        }
        if let Some(l) = &self.link {
            write!(f, " link={}", esc(l))?;
        }
        for (k, v) in &self.xattrs {
            write!(f, " {}={}", esc(k), esc(v))?;
        }
        if self.sparse {
            write!(f, " sparse")?;
        }
        Ok(())
    }
}

/// A whole tree, sorted by path bytes; the root is `""`.
#[derive(Clone, PartialEq, Eq)]
pub struct Listing(pub BTreeMap<Vec<u8>, Rec>);

impl fmt::Debug for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        for (p, r) in &self.0 {
            let p = if p.is_empty() { ".".into() } else { esc(p) };
            // Deep paths are long: show their tail.
            let p = if p.len() > 120 {
                format!("…{}", &p[p.len() - 100..])
            } else {
                p
            };
            writeln!(f, "  {p}  {r:?}")?;
        }
        Ok(())
    }
}

impl Listing {
    pub fn get(&self, rel: impl AsRef<[u8]>) -> Option<&Rec> {
        self.0.get(rel.as_ref())
    }

    /// Lines that differ between two listings (`-` only here, `+` only there).
    pub fn diff(&self, other: &Listing) -> String {
        let mut s = String::new();
        for (p, r) in &self.0 {
            match other.0.get(p) {
                Some(o) if o == r => {}
                Some(o) => s += &format!("  {}\n   - {r:?}\n   + {o:?}\n", esc(p)),
                None => s += &format!("- {}  {r:?}\n", esc(p)),
            }
        }
        for (p, o) in &other.0 {
            if !self.0.contains_key(p) {
                s += &format!("+ {}  {o:?}\n", esc(p));
            }
        }
        s
    }
}

/// Asserts two trees list identically, printing only the differing entries.
#[track_caller]
pub fn assert_same(a: &Path, b: &Path) {
    let (la, lb) = (listing(a), listing(b));
    if la != lb {
        panic!(
            "trees differ: {} vs {}\n{}",
            a.display(),
            b.display(),
            la.diff(&lb)
        );
    }
}

/// The canonical listing of a tree: lstat only, symlinks never followed.
pub fn listing(root: &Path) -> Listing {
    // A destination switched by symlink is listed as the release it names.
    let real = match std::fs::symlink_metadata(root) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(root).expect("resolve"),
        _ => root.to_path_buf(),
    };
    let fd = open_path(&real);
    let mut out = BTreeMap::new();
    let mut inodes: Vec<(Vec<u8>, (u64, u64))> = Vec::new();
    let st = lstat_at(fd.as_raw_fd(), b".").expect("lstat root");
    let mut rec = record(&fd, b".", &st);
    rec.xattrs = xattrs(&fd, b".");
    out.insert(Vec::new(), rec);
    walk(&fd, &[], &mut out, &mut inodes);
    // Hard-link groups, canonicalized to the first path of each group.
    let mut count: HashMap<(u64, u64), usize> = HashMap::new();
    for (_, k) in &inodes {
        *count.entry(*k).or_default() += 1;
    }
    inodes.sort();
    let mut first: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for (p, k) in &inodes {
        if count[k] > 1 {
            let l = first.entry(*k).or_insert_with(|| p.clone()).clone();
            out.get_mut(p).expect("listed").link = Some(l);
        }
    }
    Listing(out)
}

fn read_dir(dir: &OwnedFd) -> Vec<Vec<u8>> {
    // SAFETY: dup gives fdopendir its own descriptor, which closedir closes.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    check(dup, "dup", b"");
    // SAFETY: valid fd.
    let dp = unsafe { libc::fdopendir(dup) };
    assert!(!dp.is_null(), "fdopendir: {}", io::Error::last_os_error());
    let mut names = Vec::new();
    loop {
        // SAFETY: dp is a valid DIR*.
        let ent = unsafe { libc::readdir(dp) };
        if ent.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    // SAFETY: dp is valid and closed once.
    unsafe { libc::closedir(dp) };
    names.sort();
    names
}

fn walk(
    dir: &OwnedFd,
    prefix: &[u8],
    out: &mut BTreeMap<Vec<u8>, Rec>,
    inodes: &mut Vec<(Vec<u8>, (u64, u64))>,
) {
    for name in read_dir(dir) {
        // The switch's home in a destination that is a mount point: jailsync's, not the
        // tree's (jailsync never lists it either).
        if prefix.is_empty() && name == b".jailsync-gens" {
            continue;
        }
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        let st = lstat_at(dir.as_raw_fd(), &name)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", esc(&path)));
        let mut rec = record(dir, &name, &st);
        rec.xattrs = xattrs(dir, &name);
        if rec.kind != 'd' {
            inodes.push((path.clone(), (st.st_dev, st.st_ino)));
        }
        let is_dir = rec.kind == 'd';
        out.insert(path.clone(), rec);
        if is_dir {
            let sub = open_dir_at(dir.as_raw_fd(), &name)
                .unwrap_or_else(|e| panic!("open {}: {e}", esc(&path)));
            walk(&sub, &path, out, inodes);
        }
    }
}

fn record(dir: &OwnedFd, name: &[u8], st: &libc::stat) -> Rec {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    };
    let mut r = Rec {
        kind,
        mode: if kind == 'l' { 0 } else { st.st_mode & 0o7777 },
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: (st.st_mtime, st.st_mtime_nsec),
        size: None,
        hash: None,
        target: None,
        rdev: None,
        link: None,
        xattrs: Vec::new(),
        sparse: false,
    };
    match kind {
        'f' => {
            r.size = Some(st.st_size as u64);
            r.sparse = (st.st_blocks as u64) * 512 < st.st_size as u64;
            let c = cstr(name);
            // SAFETY: valid fd and C string.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            check(fd, "open", name);
            // SAFETY: fresh fd.
            let mut f = unsafe { File::from_raw_fd(fd) };
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).expect("read fixture file");
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            r.hash = Some(h.finalize().to_hex().to_string());
        }
        'l' => {
            r.size = Some(st.st_size as u64);
            let c = cstr(name);
            let mut buf = vec![0u8; 8192];
            // SAFETY: valid fd, C string, buffer.
            let n = unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            check(n as libc::c_int, "readlink", name);
            buf.truncate(n as usize);
            r.target = Some(buf);
        }
        'c' | 'b' => r.rdev = Some(st.st_rdev),
        _ => {}
    }
    r
}

/// All `user.*`, `security.*` and `trusted.*` attributes, sorted (not `system.*`: ACLs are
/// out of scope).
fn xattrs(dir: &OwnedFd, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let p = proc_path(dir, name);
    let follow = name == b".";
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe {
        if follow {
            libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Vec::new();
        }
        panic!("listxattr {}: {e}", esc(name));
    }
    buf.truncate(n as usize);
    let mut out = Vec::new();
    for k in buf.split(|&b| b == 0).filter(|k| !k.is_empty()) {
        if !(k.starts_with(b"user.") || k.starts_with(b"security.") || k.starts_with(b"trusted.")) {
            continue;
        }
        let kc = cstr(k);
        let mut v = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let m = unsafe {
            if follow {
                libc::getxattr(p.as_ptr(), kc.as_ptr(), v.as_mut_ptr().cast(), v.len())
            } else {
                libc::lgetxattr(p.as_ptr(), kc.as_ptr(), v.as_mut_ptr().cast(), v.len())
            }
        };
        check(m as libc::c_int, "getxattr", name);
        v.truncate(m as usize);
        out.push((k.to_vec(), v));
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// Running the binary.

/// Runs `jailsync` with the given arguments (no state dir added).
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(BIN)
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .expect("run jailsync")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit status `code`, showing the output otherwise.
#[track_caller]
pub fn expect_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A source tree, a destination tree and a state directory in one temp dir.
pub struct Env {
    pub tmp: TempDir,
    pub src: Tree,
    pub dst: Tree,
}

impl Env {
    /// `src/` exists (empty); `dst/` does not yet (sync creates it) unless `with_dst`.
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("jailsync-test-")
            .tempdir()
            .expect("tempdir");
        let src = Tree::new(tmp.path().join("src"));
        let dst = Tree {
            root: tmp.path().join("dst"),
        };
        Env { tmp, src, dst }
    }

    /// Creates an (empty) destination to fill with "old" contents.
    pub fn with_dst(self) -> Env {
        std::fs::create_dir_all(&self.dst.root).expect("mkdir dst");
        self
    }

    pub fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn src(&self) -> &Path {
        &self.src.root
    }

    pub fn dst(&self) -> &Path {
        &self.dst.root
    }

    /// Runs `jailsync --state-dir STATE ARGS...`.
    pub fn js<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["--state-dir".into(), self.state().into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        run(all)
    }

    /// `sync EXTRA... SRC DST`, asserting exit 0 and that SRC was left as it was (invariant
    /// 4: the jail is read-only to a sync); returns stdout.
    #[track_caller]
    pub fn sync(&self, extra: &[&str]) -> String {
        let mut args: Vec<&OsStr> = vec![OsStr::new("sync")];
        args.extend(extra.iter().map(OsStr::new));
        args.push(self.src().as_os_str());
        args.push(self.dst().as_os_str());
        let before = listing(self.src());
        let o = self.js(&args);
        expect_code(&o, 0);
        let after = listing(self.src());
        assert!(
            before == after,
            "sync changed SRC:\n{}",
            before.diff(&after)
        );
        stdout(&o)
    }

    /// `rollback DST`, asserting exit 0 and that DST is again exactly `before`.
    #[track_caller]
    pub fn assert_rollback_restores(&self, before: &Listing) {
        let o = self.js([OsStr::new("rollback"), self.dst().as_os_str()]);
        expect_code(&o, 0);
        let after = listing(self.dst());
        assert!(
            *before == after,
            "rollback is not exact:\n{}",
            before.diff(&after)
        );
    }

    /// What a further `sync -n -i` would do (empty when in sync).
    pub fn pending(&self) -> String {
        self.sync(&["-n", "-i"])
    }

    /// The full post-sync check: listings equal, nothing left to plan, `verify` agrees, and
    /// rsync (when installed) sees nothing to do.
    #[track_caller]
    pub fn assert_synced(&self) {
        assert_same(self.src(), self.dst());
        let p = self.pending();
        assert!(p.is_empty(), "second sync still plans:\n{p}");
        let v = self.js([
            OsStr::new("verify"),
            self.src().as_os_str(),
            self.dst().as_os_str(),
        ]);
        expect_code(&v, 0);
        self.assert_rsync_agrees();
    }

    /// rsync as an oracle: after a sync, `rsync -aHAXc --delete -n -i` has nothing to do.
    #[track_caller]
    pub fn assert_rsync_agrees(&self) {
        let out = rsync_dry(self.src(), self.dst());
        if let Some(out) = out {
            assert!(out.is_empty(), "rsync still sees differences:\n{out}");
        }
    }
}

/// `rsync -aHAXc --numeric-ids --delete -n -i SRC/ DST/` output, or None if rsync is missing.
pub fn rsync_dry(src: &Path, dst: &Path) -> Option<String> {
    if !have("rsync") {
        eprintln!("rsync oracle skipped: rsync not installed");
        return None;
    }
    let mut s = src.as_os_str().to_owned();
    s.push("/");
    let mut d = dst.as_os_str().to_owned();
    d.push("/");
    let o = Command::new("rsync")
        .args(["-aHAXc", "--numeric-ids", "--delete", "-n", "-i"])
        // The switch's home inside DST (switch by subtrees): jailsync's, not the tree's.
        .arg("--exclude=/.jailsync-gens")
        .arg(s)
        .arg(d)
        .output()
        .expect("run rsync");
    assert!(
        o.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Stops a child with SIGSTOP and waits until the kernel reports it stopped: kill(2) returns
/// before that, and the child may go on writing on another core meanwhile.
#[allow(dead_code)]
pub fn freeze(pid: u32) {
    // SAFETY: plain kill(2) on the caller's own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(5) {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        match state
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().chars().next())
        {
            Some(Some('T' | 't')) | None => return,
            _ => std::thread::sleep(std::time::Duration::from_micros(100)),
        }
    }
}
