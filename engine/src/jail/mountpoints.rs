//! The `mountpoints` file: one path a line, relative to both the host root and the jail,
//! optionally followed by ` rw` (or ` ro`, the default) for a bind mount of the host path, or
//! by what to mount there instead (what a jail needs to build, as mksandbox and sandboxctl
//! mount it): `rbind` (the host path bound recursively, with the mounts below it, read-write:
//! `dev` with `dev/pts`, `dev/shm`, a writable `/dev/null`), `proc` (a procfs), `tmpfs` (a
//! private tmpfs, mode 1777). `#` starts a comment line.
//!
//! ```text
//! # host path    mode
//! bin
//! usr/include
//! usr/pkgsrc     rw
//! proc           proc
//! dev            rbind
//! tmp            tmpfs
//! ```
//!
//! Parsing is strict and purely lexical: a path that is absolute, empty, or has a `..`
//! component is refused here, so no later step has to wonder whether a path can leave the
//! jail through its spelling. (Symlinks inside the jail are checked later, on disk.)

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::error::{Error, IoAt, Result};

/// The seed's list (mkjail plus what pkgsrc's mksandbox mounts on Linux and NetBSD).
/// `jail init` keeps only the entries that exist on the host.
pub const SEED: &[&str] = &[
    "bin",
    "sbin",
    "lib",
    "lib32",
    "lib64",
    "libexec",
    "etc",
    "dev rbind",
    "proc proc",
    "tmp tmpfs",
    "usr/bin",
    "usr/sbin",
    "usr/lib",
    "usr/lib32",
    "usr/lib64",
    "usr/libexec",
    "usr/libdata",
    "usr/include",
    "usr/share",
    "usr/games",
    "usr/X11R7",
    "usr/pkgsrc rw",
];

/// What a line mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The host path, read-only unless `rw`.
    Bind,
    /// The host path and every mount below it, read-write; no event propagates back to the
    /// host (made a slave), so unmounting the jail's copies never unmounts the host's.
    Rbind,
    /// A procfs of the caller's pid namespace.
    Proc,
    /// A fresh tmpfs, private to the jail.
    Tmpfs,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bind => "bind",
            Kind::Rbind => "rbind",
            Kind::Proc => "proc",
            Kind::Tmpfs => "tmpfs",
        }
    }

    /// A filesystem made for the jail, not a view of a host path.
    pub fn is_virtual(self) -> bool {
        matches!(self, Kind::Proc | Kind::Tmpfs)
    }
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    /// Normalised relative path: no `.`, `..`, root or trailing slash.
    pub path: PathBuf,
    pub read_write: bool,
    pub kind: Kind,
    /// 1-based line number in the file, for messages.
    pub line: usize,
}

/// A parsed `mountpoints` file.
#[derive(Debug, Clone)]
pub struct Mountpoints {
    pub file: PathBuf,
    pub entries: Vec<MountPoint>,
}

impl Mountpoints {
    pub fn read(file: &Path) -> Result<Self> {
        let text = std::fs::read(file).at(file)?;
        Self::parse(file, &text)
    }

    /// Parses `text`; `file` is only used to name errors.
    pub fn parse(file: &Path, text: &[u8]) -> Result<Self> {
        let mut entries: Vec<MountPoint> = Vec::new();
        for (i, raw) in text.split(|&b| b == b'\n').enumerate() {
            let line = i + 1;
            let bad = |why: String| Error::Line {
                file: file.to_path_buf(),
                line,
                why,
            };
            let mut fields = raw
                .split(|b| b.is_ascii_whitespace())
                .filter(|f| !f.is_empty());
            let Some(first) = fields.next() else { continue };
            if first.starts_with(b"#") {
                continue;
            }
            let path = normalise(OsStr::from_bytes(first)).map_err(|why| {
                bad(format!(
                    "{}: {why}",
                    String::from_utf8_lossy(first).escape_debug()
                ))
            })?;
            let (read_write, kind) = match fields.next() {
                None => (false, Kind::Bind),
                Some(b"rw") => (true, Kind::Bind),
                Some(b"ro") => (false, Kind::Bind),
                Some(b"rbind") => (true, Kind::Rbind),
                Some(b"proc") => (true, Kind::Proc),
                Some(b"tmpfs") => (true, Kind::Tmpfs),
                Some(other) => {
                    return Err(bad(format!(
                        "unknown option {:?} (expected `rw`, `ro`, `rbind`, `proc` or `tmpfs`)",
                        String::from_utf8_lossy(other)
                    )))
                }
            };
            if let Some(extra) = fields.next() {
                return Err(bad(format!(
                    "unexpected {:?} after the mode (paths with blanks are not supported)",
                    String::from_utf8_lossy(extra)
                )));
            }
            if let Some(prev) = entries.iter().find(|e| e.path == path) {
                return Err(bad(format!(
                    "{} is already listed on line {}",
                    path.display(),
                    prev.line
                )));
            }
            entries.push(MountPoint {
                path,
                read_write,
                kind,
                line,
            });
        }
        Ok(Mountpoints {
            file: file.to_path_buf(),
            entries,
        })
    }
}

/// Checks that `p` stays inside whatever it is joined to, and drops `.` and trailing slashes.
fn normalise(p: &OsStr) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` would leave the jail"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("must be relative to the jail (no leading `/`)")
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("names the jail itself");
    }
    Ok(out)
}

/// Renders entries back into the file format (used by `jail init`).
pub fn render(lines: &[&str]) -> String {
    let mut s = String::from(
        "# jailsync mountpoints: one host path per line, relative to / and to the jail.\n\
         # Mounted read-only unless followed by `rw`. Host symlinks are recreated, not mounted.\n",
    );
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Mountpoints> {
        Mountpoints::parse(Path::new("mp"), s.as_bytes())
    }

    #[test]
    fn comments_blanks_modes() {
        let k = parse("proc proc\ndev rbind\ntmp tmpfs\nbin\n").unwrap();
        let kinds: Vec<_> = k.entries.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [Kind::Proc, Kind::Rbind, Kind::Tmpfs, Kind::Bind]);
        let m = parse("# c\n\n  bin\nusr/pkgsrc rw\n./usr//include/ ro\n\t# indented\n").unwrap();
        let got: Vec<_> = m
            .entries
            .iter()
            .map(|e| (e.path.to_str().unwrap(), e.read_write, e.line))
            .collect();
        assert_eq!(
            got,
            [
                ("bin", false, 3),
                ("usr/pkgsrc", true, 4),
                ("usr/include", false, 5)
            ]
        );
    }

    #[test]
    fn refusals_name_the_line() {
        for (text, line, needle) in [
            ("bin\n../etc\n", 2, ".."),
            ("/etc\n", 1, "relative"),
            ("bin\nusr/a/../../x\n", 2, ".."),
            (".\n", 1, "jail itself"),
            ("bin rx\n", 1, "unknown option"),
            ("bin rw extra\n", 1, "unexpected"),
            ("bin\nbin rw\n", 2, "line 1"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("mp:{line}: ")), "{text:?}: {e}");
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn seed_parses() {
        let text = render(SEED);
        let m = parse(&text).unwrap();
        assert_eq!(m.entries.len(), SEED.len());
    }
}
