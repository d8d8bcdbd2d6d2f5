//! Synthetic package trees for jailsync's benchmarks and tests.
//!
//! A tree is a pkgsrc-like installation: `usr/pkg` (bin/, lib/ with versioned shared libraries
//! and their symlinks, include/, man/, share/doc/, deep share/ data trees, python site-packages)
//! and `var/db/pkg/NAME-VERSION/` with a `+CONTENTS` and the other metadata files per package.
//! Sizes are drawn from capped Pareto distributions, so most files are small and a few libraries
//! weigh megabytes, as in real package sets.
//!
//! [`gen_base`] builds a tree from a seed. [`mutate`] derives a second tree from an existing one:
//! the jail after a package-set upgrade, after a security fix, or an identical copy. Mutation
//! reads package membership back from `+CONTENTS`, so it works on any tree this module wrote
//! (including a mutated one) and copies anything it does not own unchanged.
//!
//! Everything is deterministic for a seed: packages are planned serially from one generator and
//! each file's content comes from its own seed, so the parallel write phase cannot reorder
//! anything observable. Each file is written exactly once, in 1 MiB chunks from a per-thread
//! buffer, because the disks we benchmark on are slow and creating inodes is the cost.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

pub mod rng;
pub use rng::Rng;

/// The two trees a package installation consists of, relative to the root.
pub const TREES: [&str; 2] = ["usr/pkg", "var/db/pkg"];

/// Metadata files per package in `var/db/pkg/NAME-VERSION/`.
const DB_FILES: [&str; 6] = [
    "+BUILD_INFO",
    "+COMMENT",
    "+CONTENTS",
    "+DESC",
    "+SIZE_ALL",
    "+SIZE_PKG",
];

/// 2025-06-01: base trees are "built" in the weeks after, upgrades ~90 days later.
const EPOCH_BASE: i64 = 1_748_736_000;
const DAY: i64 = 86_400;

// ---------------------------------------------------------------------------------------------
// The model: what a tree will contain, decided before anything is written.

/// How a file gets its content.
#[derive(Clone, Debug)]
pub enum Content {
    /// `size` pseudo-random bytes from `seed`.
    Gen { size: u64, seed: u64 },
    /// Copied from an existing file (content unchanged by a mutation).
    Copy(PathBuf),
    /// Literal bytes (package metadata).
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
pub enum Node {
    File {
        content: Content,
        mode: u32,
    },
    Symlink(String),
    /// A hard link to another file of the tree, by path relative to the root; written after
    /// every file so the target exists.
    HardLink(String),
    /// A directory that must exist even when empty.
    Dir,
}

/// One entry to write: path relative to the root, what it is, and its mtime (seconds, ns).
#[derive(Clone, Debug)]
pub struct Item {
    pub path: String,
    pub node: Node,
    pub mtime: Option<(i64, u32)>,
}

/// A package: files under `usr/pkg` (paths relative to `usr/pkg`) plus its db entry.
#[derive(Clone, Debug)]
struct Package {
    name: String,
    version: String,
    build_time: i64,
    files: Vec<(String, Node)>,
    comment: String,
}

impl Package {
    fn pkgname(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }
}

/// Size classes, as (minimum, Pareto shape, cap) in bytes before `size_scale`.
#[derive(Clone, Copy)]
enum Class {
    Bin,
    SharedLib,
    StaticLib,
    Header,
    Doc,
    Man,
    Data,
    Python,
    Tiny,
}

impl Class {
    fn sample(self, rng: &mut Rng, scale: f64) -> u64 {
        let (xm, alpha, cap) = match self {
            Class::Bin => (12e3, 1.1, 8e6),
            Class::SharedLib => (40e3, 0.9, 30e6),
            Class::StaticLib => (60e3, 1.0, 20e6),
            Class::Header => (600.0, 1.3, 200e3),
            Class::Doc => (900.0, 1.2, 400e3),
            Class::Man => (1500.0, 1.5, 100e3),
            Class::Data => (250.0, 0.95, 4e6),
            Class::Python => (500.0, 1.2, 300e3),
            Class::Tiny => (20.0, 1.5, 2e3),
        };
        // 1.5 brings the mean near the trees (~0.8 GB for 27k entries).
        (rng.pareto(xm, alpha, cap) * 1.5 * scale).max(1.0) as u64
    }
}

const SYLLABLES: &[&str] = &[
    "ba", "co", "di", "fu", "ga", "ke", "lo", "mi", "nu", "pa", "qu", "ro", "si", "ta", "vo", "xe",
    "zy", "gtk", "ml", "tex", "xml", "ssl", "png", "font", "gnu", "net", "db", "qt", "ar", "en",
    "ix", "or", "um",
];
const PREFIXES: &[&str] = &[
    "", "", "", "", "lib", "py311-", "p5-", "xf86-", "ruby32-", "gst-",
];
const DATA_EXT: &[&str] = &[
    "dat", "xml", "txt", "png", "svg", "mo", "conf", "json", "ttf", "db", "tmpl", "el", "pm",
];

fn word(rng: &mut Rng, min: u64, max: u64) -> String {
    let n = rng.range(min, max);
    (0..n)
        .map(|_| SYLLABLES[rng.below(SYLLABLES.len() as u64) as usize])
        .collect()
}

fn version(rng: &mut Rng) -> String {
    format!("{}.{}.{}", rng.below(4), rng.below(30), rng.below(12))
}

/// Bumps the last numeric component of a version, keeping the rest.
fn bump(v: &str, rng: &mut Rng) -> String {
    let base = v.split("nb").next().unwrap_or(v);
    let mut parts: Vec<u64> = base.split('.').filter_map(|p| p.parse().ok()).collect();
    if parts.is_empty() {
        return format!("{base}.1");
    }
    let i = if rng.chance(0.2) && parts.len() > 1 {
        parts.len() - 2
    } else {
        parts.len() - 1
    };
    parts[i] += 1 + rng.below(2);
    for p in parts.iter_mut().skip(i + 1) {
        *p = 0;
    }
    parts
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

/// Plans one package of about `n` entries under `usr/pkg`.
fn plan_package(rng: &mut Rng, name: String, n: usize, scale: f64, build_time: i64) -> Package {
    let mut files: Vec<(String, Node)> = Vec::new();
    let base = base_of(&name).to_string();
    let file = |rng: &mut Rng, class: Class, mode: u32| Node::File {
        content: Content::Gen {
            size: class.sample(rng, scale),
            seed: rng.next_u64(),
        },
        mode,
    };
    let is_lib = name.starts_with("lib");
    let is_py = name.starts_with("py311-");

    // Executables, sometimes a hard-linked alias (gzip/gunzip style) or a symlinked one.
    if !is_lib && n >= 2 {
        let nb = 1 + rng.below(1 + (n as u64 / 20).min(6));
        for i in 0..nb {
            let p = if i == 0 {
                format!("bin/{name}")
            } else {
                format!("bin/{name}-{}", word(rng, 1, 2))
            };
            if files.iter().any(|(q, _)| *q == p) {
                continue;
            }
            // A few daemons' helpers are setuid, which a sync must carry exactly.
            let mode = if rng.chance(0.01) { 0o4755 } else { 0o755 };
            files.push((p, file(rng, Class::Bin, mode)));
        }
        if rng.chance(0.15) {
            files.push((
                format!("bin/un{name}"),
                Node::HardLink(format!("usr/pkg/bin/{name}")),
            ));
        }
        if rng.chance(0.1) {
            files.push((format!("bin/{base}-alias"), Node::Symlink(name.clone())));
        }
    }
    // Shared libraries with the usual symlink chain, plus static archives and libtool files.
    if (is_lib || rng.chance(0.4)) && n >= 5 {
        for i in 0..rng.range(1, 3) {
            let stem = if i == 0 {
                format!("lib{base}")
            } else {
                format!("lib{base}_{}", word(rng, 1, 1))
            };
            let (ma, mi, pa) = (rng.below(5), rng.below(20), rng.below(10));
            let real = format!("{stem}.so.{ma}.{mi}.{pa}");
            if files.iter().any(|(q, _)| *q == format!("lib/{real}")) {
                continue;
            }
            files.push((format!("lib/{real}"), file(rng, Class::SharedLib, 0o755)));
            files.push((format!("lib/{stem}.so.{ma}"), Node::Symlink(real.clone())));
            files.push((format!("lib/{stem}.so"), Node::Symlink(real)));
            if rng.chance(0.5) {
                files.push((format!("lib/{stem}.a"), file(rng, Class::StaticLib, 0o644)));
            }
            files.push((format!("lib/{stem}.la"), file(rng, Class::Tiny, 0o644)));
        }
        files.push((
            format!("lib/pkgconfig/{base}.pc"),
            file(rng, Class::Tiny, 0o644),
        ));
    }
    for i in 0..rng.range(1, 3) {
        let (sec, suf) = if i == 0 {
            (1, String::new())
        } else {
            (3, format!("_{i}"))
        };
        files.push((
            format!("man/man{sec}/{base}{suf}.{sec}"),
            file(rng, Class::Man, 0o644),
        ));
    }

    // The rest: headers, docs and a deep data tree, in clustered directories.
    let remaining = n.saturating_sub(files.len());
    let n_inc = if is_lib {
        remaining * 2 / 5
    } else {
        remaining / 8
    };
    let n_doc = remaining / 10;
    let data_root = if is_py {
        format!("lib/python3.11/site-packages/{base}")
    } else {
        format!("share/{name}")
    };
    let mut dirs: HashMap<&str, Vec<String>> = HashMap::new();
    dirs.insert("inc", vec![format!("include/{base}")]);
    dirs.insert("doc", vec![format!("share/doc/{name}")]);
    dirs.insert("data", vec![data_root]);
    let mut serial = 0usize;
    while files.len() < n {
        let k = files.len() - (n - remaining);
        let (pool, class, ext) = if k < n_inc {
            ("inc", Class::Header, "h")
        } else if k < n_inc + n_doc {
            ("doc", Class::Doc, "html")
        } else if is_py {
            (
                "data",
                Class::Python,
                if rng.chance(0.5) { "py" } else { "pyc" },
            )
        } else {
            let e = DATA_EXT[rng.below(DATA_EXT.len() as u64) as usize];
            ("data", Class::Data, e)
        };
        let ds = dirs.get_mut(pool).expect("pool");
        // Mostly fill a recent directory; sometimes open a subdirectory (depth up to ~8).
        if rng.chance(0.12) {
            let parent = ds[ds.len() - 1 - rng.below(ds.len().min(4) as u64) as usize].clone();
            if parent.matches('/').count() < 9 {
                ds.push(format!("{parent}/{}", word(rng, 1, 3)));
            }
        }
        let dir = ds[ds.len() - 1 - rng.below(ds.len().min(3) as u64) as usize].clone();
        serial += 1;
        let stem = format!("{}{serial}", word(rng, 1, 2));
        if serial > 3 && rng.chance(0.01) {
            // A symlink to a sibling, like share/foo/current -> foo-1.2.dat.
            let prev = files
                .iter()
                .rev()
                .find(|(p, n)| {
                    matches!(n, Node::File { .. }) && p.rsplit_once('/').map(|x| x.0) == Some(&*dir)
                })
                .map(|(p, _)| p.rsplit('/').next().unwrap_or(p).to_string());
            if let Some(t) = prev {
                files.push((format!("{dir}/{stem}-link"), Node::Symlink(t)));
                continue;
            }
        }
        files.push((format!("{dir}/{stem}.{ext}"), file(rng, class, 0o644)));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    Package {
        comment: format!("The {} {}", word(rng, 1, 2), word(rng, 2, 3)),
        name,
        version: version(rng),
        build_time,
        files,
    }
}

/// The name files of a package are named after (`libfoo` and `py311-foo` both give `foo`).
fn base_of(name: &str) -> &str {
    let b = name.rsplit('-').next().unwrap_or(name);
    let b = b.strip_prefix("lib").unwrap_or(b);
    if b.is_empty() {
        name
    } else {
        b
    }
}

/// A new package name whose base is unused too, so no two packages ever claim one path.
fn unique_name(rng: &mut Rng, taken: &mut HashSet<String>) -> String {
    loop {
        let prefix = PREFIXES[rng.below(PREFIXES.len() as u64) as usize];
        let name = format!("{prefix}{}", word(rng, 2, 3));
        let base = base_of(&name).to_string();
        if !taken.contains(&name) && !taken.contains(&base) {
            taken.insert(base);
            taken.insert(name.clone());
            return name;
        }
    }
}

/// Package sizes: a few giants (texlive-like), many with a handful of files.
fn package_size(rng: &mut Rng) -> usize {
    rng.pareto(6.0, 1.1, 3000.0) as usize
}

/// Plans packages holding `files` entries in total (db files included), the last one cut to fit.
fn plan_packages(
    rng: &mut Rng,
    files: usize,
    scale: f64,
    taken: &mut HashSet<String>,
    t0: i64,
) -> Vec<Package> {
    let mut pkgs = Vec::new();
    let mut total = 0usize;
    while total + DB_FILES.len() < files {
        let want = package_size(rng).min(files - total - DB_FILES.len());
        let name = unique_name(rng, taken);
        let t = t0 + rng.below(30 * DAY as u64) as i64;
        let mut p = plan_package(rng, name, want.max(1), scale, t);
        // Planning rounds up (symlink chains); trim so `--files` is exact.
        while total + p.files.len() + DB_FILES.len() > files && p.files.len() > 1 {
            let i = p
                .files
                .iter()
                .rposition(|(_, n)| !matches!(n, Node::Dir))
                .unwrap_or(0);
            let gone = p.files.remove(i).0;
            let gone_abs = format!("usr/pkg/{gone}");
            p.files
                .retain(|(_, n)| !matches!(n, Node::HardLink(t) if *t == gone_abs));
        }
        total += p.files.len() + DB_FILES.len();
        pkgs.push(p);
    }
    pkgs
}

/// The `var/db/pkg` entry of a package, pkgsrc style.
fn db_items(p: &Package, rng: &mut Rng, mtime: (i64, u32)) -> Vec<Item> {
    let dir = format!("var/db/pkg/{}", p.pkgname());
    let mut contents = format!("@comment $NetBSD$\n@name {}\n@cwd /usr/pkg\n", p.pkgname());
    let mut size = 0u64;
    for (path, node) in &p.files {
        contents.push_str(path);
        contents.push('\n');
        match node {
            Node::File { content, .. } => {
                let (s, tag) = match content {
                    Content::Gen { size, seed } => (*size, *seed),
                    Content::Copy(_) => (0, rng.next_u64()),
                    Content::Bytes(b) => (b.len() as u64, b.len() as u64),
                };
                size += s;
                contents.push_str(&format!("@comment MD5:{tag:016x}{:016x}\n", tag ^ 0x5555));
            }
            Node::Symlink(t) => contents.push_str(&format!("@comment Symlink:{t}\n")),
            Node::HardLink(_) | Node::Dir => {}
        }
    }
    let desc = format!("{}\n\n{}\n", p.comment, word(rng, 20, 60));
    let build = format!(
        "BUILD_DATE={}\nMACHINE_ARCH=x86_64\nOPSYS=NetBSD\nPKGPATH=misc/{}\nPKGTOOLS_VERSION=20250101\n",
        p.build_time, p.name
    );
    let meta = |name: &str, b: String| Item {
        path: format!("{dir}/{name}"),
        node: Node::File {
            content: Content::Bytes(b.into_bytes()),
            mode: 0o644,
        },
        mtime: Some(mtime),
    };
    vec![
        meta("+BUILD_INFO", build),
        meta("+COMMENT", format!("{}\n", p.comment)),
        meta("+CONTENTS", contents),
        meta("+DESC", desc),
        meta("+SIZE_ALL", format!("{}\n", size + 4096)),
        meta("+SIZE_PKG", format!("{size}\n")),
    ]
}

/// Turns packages into items: their files (mtime = build time + a few seconds) and db entries.
fn package_items(
    p: &Package,
    rng: &mut Rng,
    keep_mtime: &HashMap<String, (i64, u32)>,
) -> Vec<Item> {
    let mut out = Vec::with_capacity(p.files.len() + DB_FILES.len());
    for (path, node) in &p.files {
        let full = format!("usr/pkg/{path}");
        let mtime = keep_mtime.get(&full).copied().unwrap_or_else(|| {
            (
                p.build_time + rng.below(600) as i64,
                rng.below(1_000_000_000) as u32,
            )
        });
        out.push(Item {
            path: full,
            node: node.clone(),
            mtime: Some(mtime),
        });
    }
    let t = (p.build_time + 600, rng.below(1_000_000_000) as u32);
    out.extend(db_items(p, rng, t));
    out
}

// ---------------------------------------------------------------------------------------------
// Writing.

/// What was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub files: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub dirs: u64,
    pub bytes: u64,
}

impl Written {
    fn add(&mut self, o: Written) {
        self.files += o.files;
        self.symlinks += o.symlinks;
        self.hardlinks += o.hardlinks;
        self.dirs += o.dirs;
        self.bytes += o.bytes;
    }
}

fn ensure_empty(out: &Path) -> io::Result<()> {
    match fs::read_dir(out) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not empty", out.display()),
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(out),
        Err(e) => Err(e),
    }
}

fn with_path<T>(r: io::Result<T>, p: &Path) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))
}

fn systime(t: (i64, u32)) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.0.max(0) as u64, t.1)
}

fn set_link_mtime(p: &Path, t: (i64, u32)) -> io::Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: t.0,
            tv_nsec: t.1 as _,
        },
        last_modification: Timespec {
            tv_sec: t.0,
            tv_nsec: t.1 as _,
        },
    };
    utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

thread_local! {
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

const CHUNK: usize = 1 << 20;

fn write_file(
    p: &Path,
    content: &Content,
    mode: u32,
    mtime: Option<(i64, u32)>,
) -> io::Result<u64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o777)
        .open(p)?;
    let n = match content {
        Content::Gen { size, seed } => BUF.with(|b| -> io::Result<u64> {
            let mut buf = b.borrow_mut();
            buf.resize(CHUNK, 0);
            let mut rng = Rng::new(*seed);
            let mut left = *size;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                rng.fill(&mut buf[..n]);
                f.write_all(&buf[..n])?;
                left -= n as u64;
            }
            Ok(*size)
        })?,
        // std's File-to-File copy uses copy_file_range: no bytes through user space.
        Content::Copy(src) => io::copy(&mut with_path(File::open(src), src)?, &mut f)?,
        Content::Bytes(b) => {
            f.write_all(b)?;
            b.len() as u64
        }
    };
    // The umask may have cleared bits, and open never sets setuid: set the exact mode.
    if mode & 0o7777 != (mode & 0o777) || mode & 0o022 != 0 {
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
    }
    if let Some(t) = mtime {
        f.set_times(fs::FileTimes::new().set_modified(systime(t)))?;
    }
    Ok(n)
}

fn write_item(root: &Path, it: &Item) -> io::Result<Written> {
    let p = root.join(&it.path);
    let mut w = Written::default();
    match &it.node {
        Node::File { content, mode } => {
            w.bytes = with_path(write_file(&p, content, *mode, it.mtime), &p)?;
            w.files = 1;
        }
        Node::Symlink(t) => {
            with_path(std::os::unix::fs::symlink(t, &p), &p)?;
            if let Some(t) = it.mtime {
                with_path(set_link_mtime(&p, t), &p)?;
            }
            w.symlinks = 1;
        }
        Node::HardLink(t) => {
            with_path(fs::hard_link(root.join(t), &p), &p)?;
            w.hardlinks = 1;
        }
        Node::Dir => {}
    }
    Ok(w)
}

/// Writes `items` (paths relative to `root`), creating parent directories as needed. Files and
/// symlinks go in parallel; hard links after them; then directory mtimes, deepest first, for
/// directories listed in `dir_mtimes` (writing into a directory changes its mtime).
fn write_items(
    root: &Path,
    items: &[Item],
    dir_mtimes: &BTreeMap<String, (i64, u32)>,
) -> io::Result<Written> {
    let mut dirs: Vec<&str> = TREES.to_vec();
    for it in items {
        let mut p = it.path.as_str();
        if matches!(it.node, Node::Dir) {
            dirs.push(p);
        }
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.push(parent);
            p = parent;
        }
    }
    dirs.sort_unstable();
    dirs.dedup();
    let mut w = Written::default();
    // Sorted order puts parents first, so each mkdir is one syscall.
    for d in &dirs {
        let p = root.join(d);
        match fs::create_dir(&p) {
            Ok(()) => w.dirs += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return with_path(Err(e), &p),
        }
    }
    // Chunks keep rayon's per-item overhead small next to a create + write.
    let (links, rest): (Vec<&Item>, Vec<&Item>) = items
        .iter()
        .partition(|it| matches!(it.node, Node::HardLink(_)));
    let ws = rest
        .par_chunks(64)
        .map(|c| {
            let mut w = Written::default();
            for it in c {
                w.add(write_item(root, it)?);
            }
            Ok(w)
        })
        .collect::<io::Result<Vec<_>>>()?;
    for x in ws {
        w.add(x);
    }
    for it in links {
        w.add(write_item(root, it)?);
    }
    for (d, t) in dir_mtimes.iter().rev() {
        let p = root.join(d);
        if p.is_dir() {
            with_path(set_link_mtime(&p, *t), &p)?;
        }
    }
    Ok(w)
}

// ---------------------------------------------------------------------------------------------
// Base trees.

#[derive(Clone, Debug)]
pub struct BaseOpts {
    /// Entries (files, symlinks, hard links) across both trees.
    pub files: usize,
    pub seed: u64,
    /// Multiplies every file size (1.0 gives ~30 KB a file on average, like the trees).
    pub size_scale: f64,
}

/// Writes a live tree under `out` (created; must be empty if it exists).
pub fn gen_base(out: &Path, o: &BaseOpts) -> io::Result<Written> {
    ensure_empty(out)?;
    let mut rng = Rng::new(o.seed);
    let mut taken = HashSet::new();
    let pkgs = plan_packages(&mut rng, o.files, o.size_scale, &mut taken, EPOCH_BASE);
    let none = HashMap::new();
    let items: Vec<Item> = pkgs
        .iter()
        .flat_map(|p| package_items(p, &mut rng, &none))
        .collect();
    write_items(out, &items, &BTreeMap::new())
}

// ---------------------------------------------------------------------------------------------
// Mutations.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MutateKind {
    /// A package-set upgrade: ~55% of entries change content, every mtime changes, ~10% removed,
    /// ~13% added (new packages among them), versioned libraries renamed, a few type changes.
    Upgrade,
    /// A security fix: a few packages rebuilt, ~2% of entries change; the rest identical.
    Security,
    /// An identical copy, mtimes included.
    Noop,
}

impl std::str::FromStr for MutateKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "upgrade" => Ok(MutateKind::Upgrade),
            "security" => Ok(MutateKind::Security),
            "noop" => Ok(MutateKind::Noop),
            _ => Err(format!("unknown kind {s:?} (upgrade, security, noop)")),
        }
    }
}

/// Target fractions of an upgrade, of the source tree's entry count.
pub const UPGRADE_CHANGED: f64 = 0.55;
pub const UPGRADE_REMOVED: f64 = 0.10;
pub const UPGRADE_ADDED: f64 = 0.13;
pub const SECURITY_CHANGED: f64 = 0.02;

/// One non-directory entry of an existing tree.
#[derive(Clone, Debug)]
struct Found {
    kind: FoundKind,
    mode: u32,
    size: u64,
    ino: u64,
    mtime: (i64, u32),
}

#[derive(Clone, Debug)]
enum FoundKind {
    File,
    Symlink(String),
    Other,
}

/// Every entry below `root/rel`, by path relative to `root`, sorted; directories separately.
fn walk(
    root: &Path,
    rel: &str,
    files: &mut BTreeMap<String, Found>,
    dirs: &mut BTreeMap<String, ((i64, u32), bool)>,
) -> io::Result<()> {
    let p = root.join(rel);
    let md = match fs::symlink_metadata(&p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return with_path(Err(e), &p),
    };
    let mtime = (md.mtime(), md.mtime_nsec() as u32);
    if md.is_dir() {
        let mut names: Vec<String> = with_path(fs::read_dir(&p), &p)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<io::Result<_>>()?;
        names.sort();
        dirs.insert(rel.to_string(), (mtime, names.is_empty()));
        for n in names {
            walk(root, &format!("{rel}/{n}"), files, dirs)?;
        }
        return Ok(());
    }
    let kind = if md.file_type().is_symlink() {
        FoundKind::Symlink(fs::read_link(&p)?.to_string_lossy().into_owned())
    } else if md.is_file() {
        FoundKind::File
    } else {
        FoundKind::Other
    };
    files.insert(
        rel.to_string(),
        Found {
            kind,
            mode: md.mode() & 0o7777,
            size: md.size(),
            ino: md.ino(),
            mtime,
        },
    );
    Ok(())
}

/// A package read back from `var/db/pkg/NAME-VERSION/+CONTENTS`.
struct DbPkg {
    dir: String,
    name: String,
    version: String,
    comment: String,
    /// Paths relative to `usr/pkg`.
    files: Vec<String>,
}

fn read_db(root: &Path) -> io::Result<Vec<DbPkg>> {
    let db = root.join("var/db/pkg");
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(&db) else {
        return Ok(out);
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for dir in names {
        let mut s = String::new();
        if File::open(db.join(&dir).join("+CONTENTS"))
            .and_then(|mut f| f.read_to_string(&mut s))
            .is_err()
        {
            continue;
        }
        let pkgname = s
            .lines()
            .find_map(|l| l.strip_prefix("@name "))
            .unwrap_or(&dir)
            .to_string();
        let (name, version) = match pkgname.rsplit_once('-') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (pkgname.clone(), "1.0".into()),
        };
        let comment = fs::read_to_string(db.join(&dir).join("+COMMENT"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        let files = s
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('@') && !l.starts_with('+'))
            .map(str::to_string)
            .collect();
        out.push(DbPkg {
            dir: format!("var/db/pkg/{dir}"),
            name,
            version,
            comment,
            files,
        });
    }
    Ok(out)
}

/// Derives a tree from `from` into `out` (created; must be empty if it exists).
pub fn mutate(from: &Path, out: &Path, kind: MutateKind, seed: u64) -> io::Result<Written> {
    ensure_empty(out)?;
    let mut found = BTreeMap::new();
    let mut dirs = BTreeMap::new();
    for t in TREES {
        walk(from, t, &mut found, &mut dirs)?;
    }
    let db = read_db(from)?;
    let mut rng = Rng::new(seed ^ 0x6a09_e667_f3bc_c908);
    let total = found.len();

    // Who owns what: db directories and the files their +CONTENTS lists.
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut db_dir: HashMap<&str, usize> = HashMap::new();
    for (i, p) in db.iter().enumerate() {
        db_dir.insert(&p.dir, i);
        for f in &p.files {
            owner.insert(format!("usr/pkg/{f}"), i);
        }
    }
    // The package whose db directory holds `path`.
    let db_of = |path: &str| -> Option<usize> {
        let rest = path.strip_prefix("var/db/pkg/")?;
        let d = rest.split('/').next()?;
        db_dir.get(format!("var/db/pkg/{d}").as_str()).copied()
    };
    // Non-directory entries strictly below directory `d`.
    let below = |d: &str| {
        let pre = format!("{d}/");
        found
            .range(pre.clone()..)
            .take_while(move |(k, _)| k.starts_with(&pre))
    };

    // Per package: removed, rebuilt (new mtimes, content may change), version bumped.
    let n = db.len();
    let mut removed = vec![false; n];
    let mut rebuilt = vec![false; n];
    let mut bumped = vec![false; n];
    match kind {
        MutateKind::Noop => {}
        MutateKind::Upgrade => {
            // Whole packages dropped, within a budget so one giant cannot skew the mix.
            let mut budget = total * 3 / 100;
            // A version bump renames the db directory (and libraries): keep those under ~4%.
            let p_bump = (0.04 * total as f64 / (n.max(1) * (DB_FILES.len() + 1)) as f64).min(0.5);
            for i in 0..n {
                let sz = db[i].files.len() + DB_FILES.len();
                removed[i] = sz <= budget && rng.chance(0.04);
                if removed[i] {
                    budget -= sz;
                }
                rebuilt[i] = !removed[i];
                bumped[i] = rebuilt[i] && rng.chance(p_bump);
            }
        }
        MutateKind::Security => {
            // Rebuild a few small-to-medium packages until ~2% of the entries are covered.
            let want = (total as f64 * SECURITY_CHANGED / 0.85) as usize;
            let mut order: Vec<usize> = (0..n).collect();
            rng.shuffle(&mut order);
            let mut got = 0;
            for i in order {
                let sz = db[i].files.len() + DB_FILES.len();
                if got >= want.max(1) {
                    break;
                }
                if got + sz > want + want / 2 + 8 {
                    continue;
                }
                rebuilt[i] = true;
                got += sz;
            }
        }
    }

    // Versioned shared libraries of bumped packages get a new name; links follow them.
    let mut renamed: HashMap<String, String> = HashMap::new();
    for (i, p) in db.iter().enumerate() {
        if !bumped[i] {
            continue;
        }
        for f in &p.files {
            if let Some((stem, ver)) = f.split_once(".so.") {
                let full = format!("usr/pkg/{f}");
                if ver.matches('.').count() == 2
                    && matches!(found.get(&full).map(|x| &x.kind), Some(FoundKind::File))
                {
                    renamed.insert(full, format!("usr/pkg/{stem}.so.{}", bump(ver, &mut rng)));
                }
            }
        }
    }
    // Type changes: a data file becomes a directory, a small leaf directory becomes a file.
    let mut file_to_dir: HashSet<String> = HashSet::new();
    let mut dir_to_file: HashSet<String> = HashSet::new();
    if kind == MutateKind::Upgrade {
        for (i, p) in db.iter().enumerate() {
            if !bumped[i] || !rng.chance(0.08) {
                continue;
            }
            if let Some(f) = p.files.iter().find(|f| f.starts_with("share/")) {
                let full = format!("usr/pkg/{f}");
                if matches!(found.get(&full).map(|x| &x.kind), Some(FoundKind::File)) {
                    file_to_dir.insert(full);
                }
            }
            // A leaf directory whose entries are all this package's plain files.
            let mut leaf: BTreeMap<&str, usize> = BTreeMap::new();
            for f in &p.files {
                if let Some((d, _)) = f.rsplit_once('/') {
                    if d.starts_with("share/") && d.matches('/').count() >= 2 {
                        *leaf.entry(d).or_default() += 1;
                    }
                }
            }
            if let Some((d, _)) = leaf.iter().find(|(d, &c)| {
                let full = format!("usr/pkg/{d}");
                c <= 4
                    && !dirs.keys().any(|k| k.starts_with(&format!("{full}/")))
                    && below(&full).all(|(k, f)| {
                        owner.get(k) == Some(&i)
                            && matches!(f.kind, FoundKind::File)
                            && !file_to_dir.contains(k)
                    })
            }) {
                dir_to_file.insert(format!("usr/pkg/{d}"));
            }
        }
    }
    let under_dir_to_file = |p: &str| {
        p.rsplit_once('/')
            .is_some_and(|(d, _)| dir_to_file.contains(d))
    };

    // Structural removals and additions are fixed; per-entry chances make up the targets.
    let mut struct_removed = 0usize;
    let mut struct_added = 0usize;
    let mut struct_changed = 0usize;
    let mut candidates = 0usize;
    for (path, f) in &found {
        let o = owner.get(path).copied();
        let db_of = db_of(path);
        if o.is_some_and(|i| removed[i]) || db_of.is_some_and(|i| removed[i]) {
            struct_removed += 1;
        } else if db_of.is_some_and(|i| bumped[i]) || renamed.contains_key(path) {
            struct_removed += 1;
            struct_added += 1;
        } else if file_to_dir.contains(path) {
            struct_removed += 1;
            struct_added += 2;
        } else if under_dir_to_file(path) {
            struct_removed += 1;
        } else if o.is_some() && matches!(f.kind, FoundKind::File) {
            candidates += 1;
        } else if db_of.is_some_and(|i| rebuilt[i]) && !path.ends_with("/+COMMENT") {
            struct_changed += 1; // rewritten metadata of a rebuilt package
        } else if let FoundKind::Symlink(t) = &f.kind {
            let dir = path.rsplit_once('/').map(|x| x.0).unwrap_or("");
            if renamed.contains_key(&format!("{dir}/{t}")) {
                struct_changed += 1;
            }
        }
    }
    struct_added += dir_to_file.len();
    let (p_remove, p_change, add_target) = match kind {
        MutateKind::Upgrade => {
            let rm = (UPGRADE_REMOVED * total as f64 - struct_removed as f64).max(0.0);
            let p_rm = (rm / candidates.max(1) as f64).min(0.5);
            let left = candidates as f64 * (1.0 - p_rm);
            let ch = UPGRADE_CHANGED * total as f64 - struct_changed as f64;
            let p_ch = (ch / left.max(1.0)).clamp(0.0, 1.0);
            let add = (UPGRADE_ADDED * total as f64 - struct_added as f64).max(0.0);
            (p_rm, p_ch, add as usize)
        }
        MutateKind::Security => (0.0, 0.85, 0),
        MutateKind::Noop => (0.0, 0.0, 0),
    };

    // New build times per rebuilt package.
    let t_new: Vec<i64> = (0..n)
        .map(|_| EPOCH_BASE + 90 * DAY + rng.below(30 * DAY as u64) as i64)
        .collect();

    // Rebuild every surviving package's file list, then the db from it.
    let mut pkgs: Vec<Package> = db
        .iter()
        .enumerate()
        .map(|(i, p)| Package {
            name: p.name.clone(),
            version: if bumped[i] {
                bump(&p.version, &mut rng)
            } else {
                p.version.clone()
            },
            build_time: t_new[i],
            files: Vec::new(),
            comment: p.comment.clone(),
        })
        .collect();
    let mut keep_mtime: HashMap<String, (i64, u32)> = HashMap::new();
    let mut items: Vec<Item> = Vec::new();
    // Hard-link groups: the first surviving member (in path order) carries the content.
    let mut group: HashMap<u64, String> = HashMap::new();
    for (path, f) in &found {
        let o = owner.get(path).copied();
        if db_of(path).is_some() {
            continue; // regenerated below (or copied for noop)
        }
        let Some(i) = o else {
            // Not ours: carried over unchanged.
            items.push(copy_item(from, path, f, &mut group));
            continue;
        };
        if removed[i] || under_dir_to_file(path) {
            continue;
        }
        let rel = path.strip_prefix("usr/pkg/").unwrap_or(path).to_string();
        if !rebuilt[i] {
            keep_mtime.insert(path.clone(), f.mtime);
            let it = copy_item(from, path, f, &mut group);
            pkgs[i].files.push((rel, it.node));
            continue;
        }
        if file_to_dir.contains(path) {
            for k in 0..2 {
                pkgs[i].files.push((
                    format!("{rel}/part{k}.dat"),
                    Node::File {
                        content: Content::Gen {
                            size: Class::Data.sample(&mut rng, 1.0),
                            seed: rng.next_u64(),
                        },
                        mode: 0o644,
                    },
                ));
            }
            continue;
        }
        let target_path = renamed.get(path).cloned().unwrap_or_else(|| path.clone());
        let trel = target_path
            .strip_prefix("usr/pkg/")
            .unwrap_or(&target_path)
            .to_string();
        match &f.kind {
            FoundKind::Symlink(t) => {
                // Follow a renamed library; other links are rebuilt as they were.
                let dir = path.rsplit_once('/').map(|x| x.0).unwrap_or("");
                let t2 = renamed
                    .get(&format!("{dir}/{t}"))
                    .map(|n| n.rsplit('/').next().unwrap_or(n).to_string())
                    .unwrap_or_else(|| t.clone());
                pkgs[i].files.push((trel, Node::Symlink(t2)));
            }
            FoundKind::File => {
                if let Some(first) = group.get(&f.ino) {
                    pkgs[i].files.push((trel, Node::HardLink(first.clone())));
                    continue;
                }
                if renamed.contains_key(path) || !rng.chance(p_remove) {
                    group.insert(f.ino, target_path.clone());
                    let content = if renamed.contains_key(path) || rng.chance(p_change) {
                        let size = if rng.chance(0.3) {
                            f.size
                        } else {
                            (f.size as f64 * (0.8 + 0.45 * rng.f64())) as u64
                        };
                        Content::Gen {
                            size,
                            seed: rng.next_u64(),
                        }
                    } else {
                        Content::Copy(from.join(path))
                    };
                    pkgs[i].files.push((
                        trel,
                        Node::File {
                            content,
                            mode: f.mode,
                        },
                    ));
                }
            }
            FoundKind::Other => {}
        }
    }
    for d in &dir_to_file {
        let i = below(d).next().and_then(|(k, _)| owner.get(k).copied());
        if let Some(i) = i {
            let rel = d.strip_prefix("usr/pkg/").unwrap_or(d).to_string();
            pkgs[i].files.push((
                rel,
                Node::File {
                    content: Content::Gen {
                        size: Class::Data.sample(&mut rng, 1.0),
                        seed: rng.next_u64(),
                    },
                    mode: 0o644,
                },
            ));
        }
    }

    // Additions: about half as new files in surviving packages, half as new packages.
    if add_target > 0 {
        let in_existing = add_target / 2;
        let alive: Vec<usize> = (0..n).filter(|&i| rebuilt[i]).collect();
        let mut serial = 0;
        for _ in 0..in_existing {
            if alive.is_empty() {
                break;
            }
            let i = alive[rng.below(alive.len() as u64) as usize];
            let Some(dir) = pkgs[i]
                .files
                .iter()
                .filter(|(p, _)| p.starts_with("share/") || p.starts_with("include/"))
                .map(|(p, _)| {
                    p.rsplit_once('/')
                        .map(|x| x.0.to_string())
                        .unwrap_or_default()
                })
                .next()
            else {
                continue;
            };
            serial += 1;
            pkgs[i].files.push((
                format!("{dir}/new{serial}-{}.dat", word(&mut rng, 1, 2)),
                Node::File {
                    content: Content::Gen {
                        size: Class::Data.sample(&mut rng, 1.0),
                        seed: rng.next_u64(),
                    },
                    mode: 0o644,
                },
            ));
        }
        let added_so_far: usize = serial;
        let mut taken: HashSet<String> = db
            .iter()
            .flat_map(|p| [p.name.clone(), base_of(&p.name).to_string()])
            .collect();
        let t0 = EPOCH_BASE + 90 * DAY;
        let new = plan_packages(
            &mut rng,
            add_target.saturating_sub(added_so_far),
            1.0,
            &mut taken,
            t0,
        );
        pkgs.extend(new);
    }

    let mut dir_mtimes = BTreeMap::new();
    for (i, p) in pkgs.iter_mut().enumerate() {
        if i < n && removed[i] {
            continue;
        }
        p.files.sort_by(|a, b| a.0.cmp(&b.0));
        if i < n && !rebuilt[i] {
            // Untouched package: its db entry is copied byte for byte with its mtimes.
            for (path, f) in found.range(format!("{}/", db[i].dir)..) {
                if !path.starts_with(&format!("{}/", db[i].dir)) {
                    break;
                }
                items.push(copy_item(from, path, f, &mut group));
            }
            // Every file of an untouched package keeps its mtime, so the generator is unused.
            items.extend(
                package_items(p, &mut Rng::new(0), &keep_mtime)
                    .into_iter()
                    .filter(|it| it.path.starts_with("usr/pkg/")),
            );
            continue;
        }
        // Rebuilt: new mtimes from the package's new build time.
        let mut prng = Rng::new(rng.next_u64());
        items.extend(package_items(p, &mut prng, &keep_mtime));
    }
    // Directories keep their mtimes unless something in them changed (upgrade: everything).
    if kind != MutateKind::Upgrade {
        // A package manager replaces files by unlink and create, which touches their directory.
        let changed_dirs: HashSet<String> = items
            .iter()
            .filter(|it| found.get(&it.path).map(|f| f.mtime) != it.mtime)
            .filter_map(|it| it.path.rsplit_once('/').map(|x| x.0.to_string()))
            .collect();
        for (d, (t, empty)) in &dirs {
            if kind == MutateKind::Noop || !changed_dirs.contains(d) {
                dir_mtimes.insert(d.clone(), *t);
            }
            if *empty {
                items.push(Item {
                    path: d.clone(),
                    node: Node::Dir,
                    mtime: None,
                });
            }
        }
    }
    write_items(out, &items, &dir_mtimes)
}

/// An existing entry carried over unchanged, mtime included (hard links stay linked).
fn copy_item(from: &Path, path: &str, f: &Found, group: &mut HashMap<u64, String>) -> Item {
    let node = match &f.kind {
        FoundKind::Symlink(t) => Node::Symlink(t.clone()),
        FoundKind::File => match group.get(&f.ino) {
            Some(first) => Node::HardLink(first.clone()),
            None => {
                group.insert(f.ino, path.to_string());
                Node::File {
                    content: Content::Copy(from.join(path)),
                    mode: f.mode,
                }
            }
        },
        FoundKind::Other => Node::Dir,
    };
    Item {
        path: path.to_string(),
        node,
        mtime: Some(f.mtime),
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing trees (for tests and for the benchmark's report).

/// How `b` differs from `a`, counting non-directory entries of both trees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Entries in `a`.
    pub entries: usize,
    /// In both, different content, symlink target or type.
    pub changed: usize,
    /// In both with the same content but another mtime or mode.
    pub meta_only: usize,
    pub removed: usize,
    pub added: usize,
    pub bytes_a: u64,
}

/// Compares two trees by content (reads every file present in both).
pub fn diff_trees(a: &Path, b: &Path) -> io::Result<Diff> {
    let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
    let (mut da, mut db) = (BTreeMap::new(), BTreeMap::new());
    for t in TREES {
        walk(a, t, &mut fa, &mut da)?;
        walk(b, t, &mut fb, &mut db)?;
    }
    let mut d = Diff {
        entries: fa.len(),
        ..Diff::default()
    };
    for (p, x) in &fa {
        d.bytes_a += x.size;
        let Some(y) = fb.get(p) else {
            d.removed += 1;
            continue;
        };
        let same = match (&x.kind, &y.kind) {
            (FoundKind::Symlink(s), FoundKind::Symlink(t)) => s == t,
            (FoundKind::File, FoundKind::File) => {
                x.size == y.size && same_bytes(&a.join(p), &b.join(p))?
            }
            _ => false,
        };
        if !same {
            d.changed += 1;
        } else if x.mtime != y.mtime || x.mode != y.mode {
            d.meta_only += 1;
        }
    }
    d.added = fb.keys().filter(|p| !fa.contains_key(*p)).count();
    Ok(d)
}

fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut x, mut y) = (File::open(a)?, File::open(b)?);
    let (mut bx, mut by) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = x.read(&mut bx)?;
        if n == 0 {
            return Ok(y.read(&mut by[..1])? == 0);
        }
        y.read_exact(&mut by[..n])?;
        if bx[..n] != by[..n] {
            return Ok(false);
        }
    }
}
