//! The mount table, as `/proc/self/mountinfo` describes it (see proc(5)):
//!
//! ```text
//! 36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//! id par dev root  mount point opts       optional… - fstype source super-options
//! ```
//!
//! `root` and `mount point` are octal-escaped (`\040` for a space, `\134` for a backslash);
//! a bind mount whose source directory was deleted shows its root as `/path//deleted`.
//! We read mountinfo rather than `/proc/mounts` because only mountinfo gives the bind
//! root, which is what tells two bind mounts of the same device apart.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::error::{Error, IoAt, Result};

pub const PROC_MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub id: u32,
    pub parent: u32,
    /// `st_dev` of the mounted filesystem, as (major, minor).
    pub dev: (u32, u32),
    /// The directory of that filesystem that is mounted (not `/` for bind mounts).
    pub root: PathBuf,
    /// Where it is mounted, as seen from this process's root.
    pub target: PathBuf,
    /// Per-mount flag: `ro` in the mount options.
    pub read_only: bool,
    pub fstype: String,
    /// The filesystem's source (`/dev/sda1`, `tmpfs`, …).
    pub source: String,
}

impl Mount {
    /// Whether the bind source was removed after mounting (the kernel marks it `//deleted`).
    pub fn source_deleted(&self) -> bool {
        self.root
            .as_os_str()
            .as_encoded_bytes()
            .ends_with(b"//deleted")
    }
}

/// The whole table, in kernel order (a mount always comes after the one it sits on,
/// and a mount stacked on the same target after the one it hides).
#[derive(Debug, Clone, Default)]
pub struct MountTable {
    pub mounts: Vec<Mount>,
}

/// The mount points strictly below `dir` (relative, sorted), read now; none where there is no
/// mount table to read.
pub fn points_below(dir: &Path) -> Vec<Box<[u8]>> {
    MountTable::current().map_or_else(|_| Vec::new(), |t| t.points_below(dir))
}

impl MountTable {
    /// Reads this process's mount table.
    pub fn current() -> Result<Self> {
        let text = std::fs::read(PROC_MOUNTINFO).at(PROC_MOUNTINFO)?;
        Self::parse(&text)
    }

    pub fn parse(text: &[u8]) -> Result<Self> {
        let mut mounts = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            mounts.push(parse_line(line).map_err(|why| Error::MountTable {
                line: i + 1,
                why: why.to_string(),
            })?);
        }
        Ok(MountTable { mounts })
    }

    /// The visible (topmost) mount at exactly `target`.
    pub fn at(&self, target: &Path) -> Option<&Mount> {
        self.mounts.iter().rev().find(|m| m.target == target)
    }

    /// Mounts strictly below `dir` (not `dir` itself), in table order.
    pub fn under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = &'a Mount> + 'a {
        self.mounts
            .iter()
            .filter(move |m| m.target != dir && m.target.starts_with(dir))
    }

    /// The mount points strictly below `dir`, relative to it, sorted and deduplicated.
    pub fn points_below(&self, dir: &Path) -> Vec<Box<[u8]>> {
        use std::os::unix::ffi::OsStrExt;
        let mut v: Vec<Box<[u8]>> = self
            .under(dir)
            .filter_map(|m| {
                Some(
                    m.target
                        .strip_prefix(dir)
                        .ok()?
                        .as_os_str()
                        .as_bytes()
                        .into(),
                )
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Names where a mount's content comes from, as a host path when some other mount of the
    /// same filesystem (outside `exclude`) shows that directory, else as `source:root`.
    pub fn describe_source(&self, m: &Mount, exclude: &Path) -> String {
        let best = self
            .mounts
            .iter()
            .filter(|n| n.dev == m.dev && !n.target.starts_with(exclude))
            .filter_map(|n| Some((n, m.root.strip_prefix(&n.root).ok()?)))
            .min_by_key(|(_, rest)| rest.components().count());
        match best {
            Some((n, rest)) if rest.as_os_str().is_empty() => n.target.display().to_string(),
            Some((n, rest)) => n.target.join(rest).display().to_string(),
            None => format!("{}:{}", m.source, m.root.display()),
        }
    }
}

fn parse_line(line: &[u8]) -> std::result::Result<Mount, &'static str> {
    let mut f = line.split(|&b| b == b' ');
    let mut next = |what| f.next().ok_or(what);
    let id = num(next("missing mount id")?)?;
    let parent = num(next("missing parent id")?)?;
    let dev = next("missing major:minor")?;
    let colon = dev
        .iter()
        .position(|&b| b == b':')
        .ok_or("bad major:minor")?;
    let dev = (num(&dev[..colon])?, num(&dev[colon + 1..])?);
    let root = PathBuf::from(unescape(next("missing root")?));
    let target = PathBuf::from(unescape(next("missing mount point")?));
    let opts = next("missing mount options")?;
    let read_only = opts.split(|&b| b == b',').any(|o| o == b"ro");
    // Optional fields (shared:N, master:N, …) end at a lone "-".
    while next("missing `-` separator")? != b"-" {}
    let fstype = unescape(next("missing fs type")?)
        .to_string_lossy()
        .into_owned();
    let source = unescape(next("missing source")?)
        .to_string_lossy()
        .into_owned();
    Ok(Mount {
        id,
        parent,
        dev,
        root,
        target,
        read_only,
        fstype,
        source,
    })
}

fn num(b: &[u8]) -> std::result::Result<u32, &'static str> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("bad number")
}

/// Undoes the kernel's `\ooo` escaping of blanks, newlines and backslashes.
pub fn unescape(b: &[u8]) -> OsString {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                match u8::try_from(v) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 4;
                        continue;
                    }
                    Err(_) => out.push(b'\\'),
                }
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
36 27 254:0 /srv/my\\040dir /jail/usr/a\\134b ro,nosuid,relatime shared:1 master:2 - ext4 /dev/vda rw
37 27 0:40 / /jail/tmp rw,relatime - tmpfs tmpfs rw
38 27 254:0 /srv/gone//deleted /jail/old ro - ext4 /dev/vda rw
39 37 0:40 /x /jail/tmp rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_escapes_and_optional_fields() {
        let t = MountTable::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(t.mounts.len(), 5);
        let m = &t.mounts[1];
        assert_eq!((m.id, m.parent, m.dev), (36, 27, (254, 0)));
        assert_eq!(m.root, Path::new("/srv/my dir"));
        assert_eq!(m.target, Path::new("/jail/usr/a\\b"));
        assert!(m.read_only);
        assert_eq!((m.fstype.as_str(), m.source.as_str()), ("ext4", "/dev/vda"));
        assert!(!t.mounts[0].read_only);
        assert!(t.mounts[3].source_deleted());
        assert!(!m.source_deleted());
    }

    #[test]
    fn topmost_under_and_describe() {
        let t = MountTable::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(t.at(Path::new("/jail/tmp")).unwrap().id, 39);
        let jail = Path::new("/jail");
        assert_eq!(t.under(jail).count(), 4);
        assert_eq!(t.under(Path::new("/")).count(), 4);
        assert_eq!(t.describe_source(&t.mounts[1], jail), "/srv/my dir");
        assert_eq!(t.describe_source(&t.mounts[2], jail), "tmpfs:/");
    }

    #[test]
    fn unescape_leaves_odd_backslashes() {
        assert_eq!(unescape(b"a\\040b\\9\\"), OsString::from("a b\\9\\"));
        assert_eq!(unescape(b"\\012"), OsString::from("\n"));
    }

    #[test]
    fn malformed_line_is_named() {
        let e = MountTable::parse(b"27 1 254:0 / / rw\n").unwrap_err();
        assert!(e.to_string().starts_with("/proc/self/mountinfo:1:"), "{e}");
    }

    #[test]
    fn reads_this_process_table() {
        let t = MountTable::current().unwrap();
        assert!(t.mounts.iter().any(|m| m.target == Path::new("/")));
    }
}
