//! Package names from a tree's package database, so `history` and `rollback` can say which
//! releases a run took in and out ("webd-2.2 → webd-2.3, +jq-1.7, −less-590"), not only
//! which files.
//!
//! A tree is a *package tree* when it holds one of these, looked for in this order (the same
//! place on both sides of a change; the first found on either side is the one compared):
//! - pkgsrc: the tree itself is a package database (a directory whose subdirectories hold
//!   `+CONTENTS`: `upgrade` switches `usr/pkg/pkgdb` or `var/db/pkg` as a tree of its own), or
//!   it holds one at `pkgdb/` (a `LOCALBASE` tree), `usr/pkg/pkgdb/` or `var/db/pkg/` (a
//!   root). A package is a subdirectory with `+CONTENTS`; its name is the `@name` line there
//!   (the directory's name when there is none, as `pkg_info` falls back), its architecture
//!   `MACHINE_ARCH` in `+BUILD_INFO`.
//! - dpkg: `var/lib/dpkg/status`, or `status` when the tree is dpkg's directory itself (it
//!   also holds `info/`). A package is a stanza whose `Status:` ends in `installed` (`ii`,
//!   and `hi` held), named by `Package:`, `Version:` and `Architecture:`.
//!
//! Everything is read beneath the tree's root without following a symlink: a database that
//! is a symlink is not read (the run that synced it did not follow it either).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::fsx;

/// The database formats read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Pkgsrc,
    Dpkg,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Pkgsrc => "pkgsrc",
            Format::Dpkg => "dpkg",
        }
    }
}

/// Where a tree keeps its package database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Db {
    pub format: Format,
    /// Relative to the tree (empty: the tree itself): pkgsrc's directory, dpkg's `status`.
    pub rel: Vec<u8>,
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: Option<String>,
}

/// One package a change took in, took out, or replaced by another version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The package's name (dpkg: `name:arch` where the name is installed for several).
    pub name: String,
    /// Its version before (None: added).
    pub old: Option<String>,
    /// Its version after (None: removed).
    pub new: Option<String>,
    format: Format,
}

impl Change {
    /// How the format's own tools spell a package at `version`: pkgsrc's `name-version`,
    /// apt's `name=version`.
    pub fn label(&self, version: &str) -> String {
        match self.format {
            Format::Pkgsrc => format!("{}-{version}", self.name),
            Format::Dpkg => format!("{}={version}", self.name),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) => write!(f, "{} → {}", self.label(o), self.label(n)),
            (None, Some(n)) => write!(f, "+{}", self.label(n)),
            (Some(o), None) => write!(f, "−{}", self.label(o)),
            (None, None) => write!(f, "{}", self.name),
        }
    }
}

/// What a change did to a tree's packages: versions changed first, then packages added, then
/// removed, each by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageDiff {
    pub db: Db,
    pub changes: Vec<Change>,
}

impl PackageDiff {
    /// One line: `webd-2.2 → webd-2.3, +jq-1.7, −less-590` (empty when no package changed).
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self.changes.iter().map(ToString::to_string).collect();
        parts.join(", ")
    }
}

/// The database of a tree before and after a change, each open at its root; None when neither
/// side has one.
pub fn find_db(before: BorrowedFd<'_>, after: BorrowedFd<'_>) -> Option<Db> {
    candidates()
        .into_iter()
        .find(|db| holds(before, db) || holds(after, db))
}

/// The packages each side lists, compared. A side without the database lists none (a tree
/// whose every package was removed, or one that had none yet).
pub fn diff_trees(
    db: &Db,
    (before, before_shown): (BorrowedFd<'_>, &Path),
    (after, after_shown): (BorrowedFd<'_>, &Path),
) -> Result<PackageDiff> {
    let old = read(before, db).at(before_shown.join(fsx::os(&db.rel)))?;
    let new = read(after, db).at(after_shown.join(fsx::os(&db.rel)))?;
    Ok(PackageDiff {
        db: db.clone(),
        changes: diff(db.format, &old, &new),
    })
}

fn candidates() -> Vec<Db> {
    let pkgsrc = |rel: &str| Db {
        format: Format::Pkgsrc,
        rel: rel.as_bytes().to_vec(),
    };
    let dpkg = |rel: &str| Db {
        format: Format::Dpkg,
        rel: rel.as_bytes().to_vec(),
    };
    vec![
        pkgsrc(""),
        pkgsrc("pkgdb"),
        pkgsrc("usr/pkg/pkgdb"),
        pkgsrc("var/db/pkg"),
        dpkg("var/lib/dpkg/status"),
        dpkg("status"),
    ]
}

/// Whether the tree open at `root` holds `db`.
fn holds(root: BorrowedFd<'_>, db: &Db) -> bool {
    match db.format {
        Format::Pkgsrc => fsx::open_dir_beneath(root, &db.rel)
            .ok()
            .is_some_and(|d| pkgsrc_dirs(d.as_fd(), true).is_ok_and(|p| !p.is_empty())),
        Format::Dpkg => {
            let (parent, name) = fsx::split_parent(&db.rel);
            // `status` alone is too common a name: dpkg's directory also holds `info/`.
            let dpkg_dir = parent.is_empty();
            fsx::open_dir_beneath(root, parent).ok().is_some_and(|d| {
                open_file(d.as_fd(), name).is_ok()
                    && (!dpkg_dir || fsx::open_subdir(d.as_fd(), b"info").is_ok())
            })
        }
    }
}

/// The packages of `db` in the tree open at `root`; none when the database is not there.
fn read(root: BorrowedFd<'_>, db: &Db) -> io::Result<Vec<Package>> {
    let (parent, name) = match db.format {
        Format::Pkgsrc => (&db.rel[..], &b""[..]),
        Format::Dpkg => fsx::split_parent(&db.rel),
    };
    let dir = match fsx::open_dir_beneath(root, parent) {
        Ok(d) => d,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    match db.format {
        Format::Pkgsrc => read_pkgsrc(dir.as_fd()),
        Format::Dpkg => match read_text(dir.as_fd(), name) {
            Ok(text) => Ok(parse_dpkg_status(&text)),
            Err(e) if absent(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        },
    }
}

fn absent(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// The subdirectories of a pkgsrc database that hold `+CONTENTS`, each open (only the
/// first with `first`).
fn pkgsrc_dirs(db: BorrowedFd<'_>, first: bool) -> io::Result<Vec<(Vec<u8>, OwnedFd)>> {
    let mut names = fsx::list_dir(db)?;
    names.sort();
    let mut out = Vec::new();
    for name in names {
        // Not a directory, or a symlink: not a package's record.
        let Ok(d) = fsx::open_subdir(db, &name) else {
            continue;
        };
        if open_file(d.as_fd(), b"+CONTENTS").is_ok() {
            out.push((name, d));
            if first {
                break;
            }
        }
    }
    Ok(out)
}

fn read_pkgsrc(db: BorrowedFd<'_>) -> io::Result<Vec<Package>> {
    let mut out = Vec::new();
    for (dir_name, d) in pkgsrc_dirs(db, false)? {
        let pkgname =
            at_name(d.as_fd())?.unwrap_or_else(|| String::from_utf8_lossy(&dir_name).into_owned());
        let arch = match read_text(d.as_fd(), b"+BUILD_INFO") {
            Ok(info) => info
                .lines()
                .find_map(|l| l.strip_prefix("MACHINE_ARCH="))
                .map(|a| a.trim().to_string()),
            Err(e) if absent(&e) => None,
            Err(e) => return Err(e),
        };
        let (name, version) = split_pkgname(&pkgname);
        out.push(Package {
            name: name.into(),
            version: version.into(),
            arch,
        });
    }
    Ok(out)
}

/// The `@name` of a package's `+CONTENTS`. It is in the header, before the first file: the
/// rest (megabytes for the largest packages) is not read.
fn at_name(pkg: BorrowedFd<'_>) -> io::Result<Option<String>> {
    let f = std::fs::File::from(open_file(pkg, b"+CONTENTS")?);
    let mut line = Vec::new();
    let mut r = io::BufReader::new(f);
    loop {
        line.clear();
        if io::BufRead::read_until(&mut r, b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end();
        if let Some(n) = l.strip_prefix("@name ").map(str::trim) {
            return Ok((!n.is_empty()).then(|| n.to_string()));
        }
        // Past the header: the first file.
        if !l.starts_with('@') {
            return Ok(None);
        }
    }
}

/// pkgsrc's `PKGNAME` is `PKGBASE-PKGVERSION`, and a version holds no `-`.
fn split_pkgname(n: &str) -> (&str, &str) {
    n.rsplit_once('-').unwrap_or((n, ""))
}

/// The installed packages of a dpkg `status` file: stanzas apart by blank lines, fields
/// `Name: value` with continuation lines starting with a space or a tab.
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |k: &str| {
            stanza.lines().find_map(|l| {
                let (name, v) = l.split_once(':')?;
                (!l.starts_with([' ', '\t']) && name.eq_ignore_ascii_case(k))
                    .then(|| v.trim().to_string())
            })
        };
        let installed =
            field("Status").is_some_and(|s| s.split_whitespace().last() == Some("installed"));
        let (Some(name), true) = (field("Package"), installed) else {
            continue;
        };
        out.push(Package {
            name,
            version: field("Version").unwrap_or_default(),
            arch: field("Architecture"),
        });
    }
    out
}

/// `old` to `new`, by package: a name in both with another version is a change; a name
/// installed for several architectures (dpkg's multiarch) is told apart by them.
pub fn diff(format: Format, old: &[Package], new: &[Package]) -> Vec<Change> {
    let mut archs: BTreeMap<&str, BTreeSet<Option<&str>>> = BTreeMap::new();
    for p in old.iter().chain(new) {
        archs.entry(&p.name).or_default().insert(p.arch.as_deref());
    }
    let key = |p: &Package| match (&p.arch, archs[p.name.as_str()].len() > 1) {
        (Some(a), true) if format == Format::Dpkg => format!("{}:{a}", p.name),
        _ => p.name.clone(),
    };
    let index = |l: &[Package]| -> BTreeMap<String, String> {
        l.iter().map(|p| (key(p), p.version.clone())).collect()
    };
    let (was, now) = (index(old), index(new));
    let change = |name: &String, old: Option<&String>, new: Option<&String>| Change {
        name: name.clone(),
        old: old.cloned(),
        new: new.cloned(),
        format,
    };
    let mut out: Vec<Change> = was
        .iter()
        .filter_map(|(n, v)| {
            now.get(n)
                .filter(|w| *w != v)
                .map(|w| change(n, Some(v), Some(w)))
        })
        .collect();
    out.extend(
        now.iter()
            .filter(|(n, _)| !was.contains_key(*n))
            .map(|(n, v)| change(n, None, Some(v))),
    );
    out.extend(
        was.iter()
            .filter(|(n, _)| !now.contains_key(*n))
            .map(|(n, v)| change(n, Some(v), None)),
    );
    out
}

/// A regular file `name` in `dir`, open for reading (never through a symlink).
fn open_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    let fd = fsx::open_read_at(dir, name)?;
    let st = fsx::fstat(fd.as_fd())?;
    if fsx::kind_of(st.st_mode as u32) != crate::entry::Kind::File {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(fd)
}

/// A database file's text (bytes that are not UTF-8 replaced: names and versions are ASCII).
fn read_text(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<String> {
    let mut data = Vec::new();
    std::fs::File::from(open_file(dir, name)?).read_to_end(&mut data)?;
    Ok(String::from_utf8_lossy(&data).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::write_tree;

    fn p(name: &str, version: &str) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            arch: None,
        }
    }

    fn open(p: &Path) -> OwnedFd {
        fsx::open_root(p).unwrap()
    }

    #[test]
    fn a_diff_names_changed_then_added_then_removed() {
        let old = [p("webd", "2.2"), p("less", "590"), p("zlib", "1.3")];
        let new = [p("zlib", "1.3"), p("jq", "1.7"), p("webd", "2.3")];
        let d = PackageDiff {
            db: Db {
                format: Format::Pkgsrc,
                rel: b"pkgdb".to_vec(),
            },
            changes: diff(Format::Pkgsrc, &old, &new),
        };
        assert_eq!(d.summary(), "webd-2.2 → webd-2.3, +jq-1.7, −less-590");
        assert!(diff(Format::Pkgsrc, &old, &old).is_empty());
    }

    #[test]
    fn dpkg_names_an_architecture_only_where_a_name_has_several() {
        let arch = |n: &str, v: &str, a: &str| Package {
            arch: Some(a.into()),
            ..p(n, v)
        };
        let old = [
            arch("libc6", "2.36-8", "amd64"),
            arch("jq", "1.6-2", "amd64"),
        ];
        let new = [
            arch("libc6", "2.36-9", "amd64"),
            arch("libc6", "2.36-9", "i386"),
            arch("jq", "1.6-2", "amd64"),
        ];
        let s: Vec<String> = diff(Format::Dpkg, &old, &new)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            s,
            [
                "libc6:amd64=2.36-8 → libc6:amd64=2.36-9",
                "+libc6:i386=2.36-9"
            ]
        );
    }

    /// Stanzas as dpkg writes them: a multi-line description, conffiles, a package removed
    /// with its configuration kept (`deinstall ok config-files`) and one held.
    const STATUS: &str = "\
Package: jq
Status: install ok installed
Priority: optional
Section: utils
Installed-Size: 102
Maintainer: Debian Maintainers <x@example.org>
Architecture: amd64
Multi-Arch: foreign
Version: 1.6-2.1
Depends: libjq1 (= 1.6-2.1), libc6 (>= 2.34)
Description: lightweight and flexible command-line JSON processor
 jq is like sed for JSON data
 .
 Package: not-a-package (a continuation line)

Package: webd
Status: deinstall ok config-files
Architecture: amd64
Version: 2.2
Conffiles:
 /etc/webd.conf 0123456789abcdef0123456789abcdef

Package: less
Status: hold ok installed
Architecture: amd64
Version: 590-2
";

    #[test]
    fn dpkg_status_lists_installed_and_held_packages_only() {
        let got = parse_dpkg_status(STATUS);
        let names: Vec<(&str, &str)> = got
            .iter()
            .map(|p| (p.name.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(names, [("jq", "1.6-2.1"), ("less", "590-2")]);
        assert_eq!(got[0].arch.as_deref(), Some("amd64"));
    }

    #[test]
    fn a_pkgsrc_database_is_found_in_a_tree_or_as_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_tree(
            &a,
            &[
                (
                    "pkgdb/webd-2.2/+CONTENTS",
                    "@comment $NetBSD$\n@name webd-2.2\n@cwd /usr/pkg\nbin/webd\n",
                ),
                (
                    "pkgdb/webd-2.2/+BUILD_INFO",
                    "MACHINE_ARCH=x86_64\nOPSYS=NetBSD\n",
                ),
                (
                    "pkgdb/less-590/+CONTENTS",
                    "@cwd /usr/pkg\nbin/less\n@name late-1\n",
                ),
                // The record's own name wins over its directory's.
                (
                    "pkgdb/jq-1.6/+CONTENTS",
                    "@comment x\n@name jq-1.7nb1\n@cwd /usr/pkg\n",
                ),
                ("pkgdb/pkgdb.byfile.db", "not a package\n"),
                ("bin/webd", "2.2\n"),
            ],
        );
        fs_mkdir(&b);
        let db = find_db(open(&a).as_fd(), open(&b).as_fd()).expect("found on one side");
        assert_eq!(db.rel, b"pkgdb");
        let d = diff_trees(&db, (open(&a).as_fd(), &a), (open(&b).as_fd(), &b)).unwrap();
        // No @name before the first file: the directory's name.
        assert_eq!(d.summary(), "−jq-1.7nb1, −less-590, −webd-2.2");
        let pkgs = read(open(&a).as_fd(), &db).unwrap();
        assert_eq!(pkgs[2].arch.as_deref(), Some("x86_64"));
        // The database as a tree of its own.
        let inner = a.join("pkgdb");
        let db = find_db(open(&inner).as_fd(), open(&inner).as_fd()).unwrap();
        assert_eq!((db.format, db.rel.as_slice()), (Format::Pkgsrc, &b""[..]));
        assert!(find_db(open(&b).as_fd(), open(&a.join("bin")).as_fd()).is_none());
    }

    #[test]
    fn a_dpkg_database_is_found_and_a_symlinked_one_is_not_read() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_tree(&a, &[("var/lib/dpkg/status", STATUS)]);
        write_tree(
            &b,
            &[("var/lib/dpkg/status", &STATUS.replace("590-2", "643-1"))],
        );
        let db = find_db(open(&a).as_fd(), open(&b).as_fd()).unwrap();
        assert_eq!(db.format, Format::Dpkg);
        let d = diff_trees(&db, (open(&a).as_fd(), &a), (open(&b).as_fd(), &b)).unwrap();
        assert_eq!(d.summary(), "less=590-2 → less=643-1");
        // dpkg's directory as the tree: `status` and `info/`.
        let dir = a.join("var/lib/dpkg");
        assert!(find_db(open(&dir).as_fd(), open(&dir).as_fd()).is_none());
        fs_mkdir(&dir.join("info"));
        let db = find_db(open(&dir).as_fd(), open(&dir).as_fd()).unwrap();
        assert_eq!(db.rel, b"status");
        // A status file that is a symlink is not followed.
        let c = t.path().join("c");
        fs_mkdir(&c.join("var/lib/dpkg"));
        std::os::unix::fs::symlink(a.join("var/lib/dpkg/status"), c.join("var/lib/dpkg/status"))
            .unwrap();
        assert!(find_db(open(&c).as_fd(), open(&c).as_fd()).is_none());
        let db = find_db(open(&a).as_fd(), open(&c).as_fd()).unwrap();
        let e = diff_trees(&db, (open(&a).as_fd(), &a), (open(&c).as_fd(), &c)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}/var/lib/dpkg/status: ", c.display())),
            "{e}"
        );
    }

    fn fs_mkdir(p: &Path) {
        std::fs::create_dir_all(p).unwrap();
    }
}
