//! The manifest: a sorted list of entries in a line-oriented text format, like BSD `mtree`.
//!
//! ```text
//! #jailsync-manifest 1
//! #stamp 1700000000.123456789
//! . dir mode=755 uid=0 gid=0 mtime=1700000000.000000000 ...
//! bin/ls file mode=755 uid=0 gid=0 size=142312 mtime=... blake3=<64 hex> ino=.. dev=.. nlink=1 ctime=..
//! lib/libz.so link mode=777 ... target=libz.so.1
//! ```
//! One entry per line: the path (`.` for the root), the type (`file dir link fifo char block
//! socket`), then `key=value` fields in any order. Paths and values escape every byte outside
//! `!`..`~`, plus `\` and `=`, as `\ooo` (three octal digits), so names with spaces, newlines or
//! invalid UTF-8 round-trip. Fields: `mode` (octal, incl. setuid/setgid/sticky), `uid`, `gid`,
//! `size`, `mtime`/`ctime` (`sec.nsec`), `ino`, `dev`, `nlink`, `sparse=1` (a file with holes;
//! earlier versions wrote `blocks`, still read), `rdev` (devices),
//! `target` (symlinks), `blake3` (files whose content is known), and `xattr.NAME=VALUE` (one per
//! attribute). Hard-link groups are the entries sharing `dev`+`ino`. `#stamp` is when the stats
//! were taken; unknown `#` lines are ignored, and a higher format version is refused.

use std::fs;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use crate::entry::{Ent, Entries, Entry, Hash, Kind, CTIME_UNKNOWN};
use crate::error::{Error, IoContext, Result};
use crate::hash::{from_hex, to_hex};

pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &str = "#jailsync-manifest";

/// A manifest in memory.
#[derive(Default)]
pub struct Manifest {
    /// When the stats were taken (seconds, nanoseconds).
    pub stamp: (i64, u32),
    /// Sorted by path.
    pub entries: Entries,
}

pub fn escape(out: &mut Vec<u8>, b: &[u8]) {
    for &c in b {
        if (0x21..=0x7e).contains(&c) && c != b'\\' && c != b'=' {
            out.push(c);
        } else {
            out.push(b'\\');
            out.push(b'0' + (c >> 6));
            out.push(b'0' + ((c >> 3) & 7));
            out.push(b'0' + (c & 7));
        }
    }
}

pub fn unescape(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            let d = s.get(i + 1..i + 4)?;
            if !d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                return None;
            }
            let v = (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
            out.push(u8::try_from(v).ok()?);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn write_entry(out: &mut Vec<u8>, e: Ent<'_>, stat_fields: bool) {
    if e.path.is_empty() {
        out.push(b'.');
    } else {
        escape(out, e.path);
    }
    let _ = write!(
        out,
        " {} mode={:o} uid={} gid={} mtime={}.{:09}",
        e.kind.name(),
        e.mode,
        e.uid,
        e.gid,
        e.mtime,
        e.mtime_nsec
    );
    if e.kind == Kind::File {
        let _ = write!(out, " size={}", e.size);
        if let Some(h) = e.hash {
            let _ = write!(out, " blake3={}", to_hex(h));
        }
    }
    if matches!(e.kind, Kind::Char | Kind::Block) {
        let _ = write!(out, " rdev={}", e.rdev());
    }
    if let Some(t) = e.target() {
        out.extend_from_slice(b" target=");
        escape(out, t);
    }
    if e.kind == Kind::File && e.nlink > 1 || stat_fields {
        let _ = write!(out, " ino={} dev={} nlink={}", e.ino, e.dev, e.nlink);
    }
    if stat_fields && e.ctime() != CTIME_UNKNOWN {
        let (s, ns) = e.ctime();
        let _ = write!(out, " ctime={s}.{ns:09}");
    }
    if e.is_sparse() {
        // Holes are part of what a tree promises (sparse files stay sparse).
        out.extend_from_slice(b" sparse=1");
    }
    if let Some(x) = e.xattrs() {
        for (k, v) in x.iter() {
            out.extend_from_slice(b" xattr.");
            escape(out, k);
            out.push(b'=');
            escape(out, v);
        }
    }
    out.push(b'\n');
}

/// Streams a manifest of `entries` to `w` one line at a time, so a large tree's manifest is
/// never whole in memory. `stat_fields` adds what only a stat cache needs (ctime and inode
/// numbers of singly-linked files).
pub fn write_to<W: Write>(
    w: &mut W,
    stamp: (i64, u32),
    entries: &Entries,
    stat_fields: bool,
) -> std::io::Result<()> {
    write_lines(w, stamp, entries.iter(), stat_fields)
}

fn write_lines<'a, W: Write>(
    w: &mut W,
    stamp: (i64, u32),
    entries: impl Iterator<Item = Ent<'a>>,
    stat_fields: bool,
) -> std::io::Result<()> {
    writeln!(w, "{MAGIC} {FORMAT_VERSION}")?;
    writeln!(w, "#stamp {}.{:09}", stamp.0, stamp.1)?;
    let mut line = Vec::with_capacity(256);
    for e in entries {
        line.clear();
        write_entry(&mut line, e, stat_fields);
        w.write_all(&line)?;
    }
    Ok(())
}

/// Writes a manifest of `entries` (in path order, from wherever) to `path` without making a
/// list of them: for the engine's own state files. Atomic (a new file renamed into place);
/// not fsynced.
pub fn write_ents<'a>(
    path: &Path,
    stamp: (i64, u32),
    entries: impl Iterator<Item = Ent<'a>>,
) -> Result<()> {
    let tmp = path.with_extension("new");
    let r = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
        write_lines(&mut w, stamp, entries, false)?;
        w.flush()?;
        fs::rename(&tmp, path)
    })();
    r.at(path)
}

/// Writes a manifest to a file atomically (temp file, rename). Not fsynced: a cache lost in a
/// crash costs one re-hash, and a torn one fails to parse and is ignored; a user's manifest
/// (`jailsync manifest -o`) is flushed by [`write_file_durable`].
fn write_impl(
    path: &Path,
    stamp: (i64, u32),
    entries: &Entries,
    stat_fields: bool,
    durable: bool,
) -> Result<()> {
    // Only a regular file (or a new name) is replaced by a rename. `-o /dev/null`, a fifo,
    // `/dev/stdout` or another symlink is written through, as a shell redirection would: a
    // rename would put a regular file in place of the device or the link.
    if let Ok(md) = fs::symlink_metadata(path) {
        if !md.file_type().is_file() && !md.is_dir() {
            let f = fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)
                .at(path)?;
            let mut w = BufWriter::with_capacity(1 << 16, f);
            write_to(&mut w, stamp, entries, stat_fields).at(path)?;
            w.flush().at(path)?;
            return Ok(());
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("manifest"),
        std::process::id()
    ));
    let f = fs::File::create(&tmp).at(&tmp)?;
    let mut w = BufWriter::with_capacity(1 << 16, f);
    write_to(&mut w, stamp, entries, stat_fields).at(&tmp)?;
    let f = w.into_inner().map_err(|e| e.into_error()).at(&tmp)?;
    if durable {
        f.sync_data().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    Ok(())
}

pub fn write_file_durable(path: &Path, m: &Manifest, stat_fields: bool) -> Result<()> {
    write_impl(path, m.stamp, &m.entries, stat_fields, true)
}

pub fn write_file(path: &Path, m: &Manifest, stat_fields: bool) -> Result<()> {
    write_impl(path, m.stamp, &m.entries, stat_fields, false)
}

/// [`write_file`] from borrowed entries (no copy of a large tree's list).
pub fn write_entries(
    path: &Path,
    stamp: (i64, u32),
    entries: &Entries,
    stat_fields: bool,
) -> Result<()> {
    write_impl(path, stamp, entries, stat_fields, false)
}

fn num<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (a, b) = s.split_once('.').unwrap_or((s, "0"));
    let ns: u32 = b.parse().ok()?;
    if ns >= 1_000_000_000 {
        return None;
    }
    Some((a.parse().ok()?, ns))
}

/// One line: the entry's path, the entry, its hash.
type Line = (Vec<u8>, Entry, Option<Hash>);

fn parse_line(line: &[u8]) -> std::result::Result<Line, String> {
    let mut toks = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let p = toks.next().ok_or("empty line")?;
    let path = if p == b"." {
        Vec::new()
    } else {
        unescape(p).ok_or("bad escape in path")?
    };
    if path.first() == Some(&b'/')
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b".." || c == b".")
            && !path.is_empty()
        || path.contains(&0)
    {
        return Err(format!(
            "path {:?} is not a clean relative path",
            String::from_utf8_lossy(&path)
        ));
    }
    let kind = toks
        .next()
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(Kind::from_name)
        .ok_or("missing or unknown type")?;
    let mut e = Entry::new(kind);
    let mut hash = None;
    e.nlink = 1;
    let mut blocks = None;
    let mut xattrs = Vec::new();
    let mut seen_mode = false;
    for t in toks {
        let eq = t
            .iter()
            .position(|&b| b == b'=')
            .ok_or("field without '='")?;
        let (k, v) = (&t[..eq], &t[eq + 1..]);
        let bad = || format!("bad value for {}", String::from_utf8_lossy(k));
        match k {
            b"mode" => {
                e.mode = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| u16::from_str_radix(s, 8).ok())
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(bad)?;
                seen_mode = true;
            }
            b"uid" => e.uid = num(v).ok_or_else(bad)?,
            b"gid" => e.gid = num(v).ok_or_else(bad)?,
            b"size" => e.size = num(v).ok_or_else(bad)?,
            b"ino" => e.ino = num(v).ok_or_else(bad)?,
            b"dev" => e.dev = num(v).ok_or_else(bad)?,
            b"nlink" => e.nlink = num(v).ok_or_else(bad)?,
            b"rdev" => e.set_rdev(num(v).ok_or_else(bad)?),
            b"sparse" => e.sparse = num::<u8>(v).ok_or_else(bad)? != 0,
            // Written by earlier versions: the allocated 512-byte blocks.
            b"blocks" => blocks = Some(num::<u64>(v).ok_or_else(bad)?),
            b"mtime" => (e.mtime, e.mtime_nsec) = time(v).ok_or_else(bad)?,
            b"ctime" => {
                let (s, ns) = time(v).ok_or_else(bad)?;
                e.set_ctime(s, ns);
            }
            b"blake3" => {
                hash = Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(from_hex)
                        .ok_or_else(bad)?,
                )
            }
            b"target" => e.set_target(Some(unescape(v).ok_or_else(bad)?.into_boxed_slice())),
            _ if k.starts_with(b"xattr.") => {
                let name = unescape(&k[6..]).ok_or_else(bad)?;
                let val = unescape(v).ok_or_else(bad)?;
                xattrs.push((name.into_boxed_slice(), val.into_boxed_slice()));
            }
            // Fields from a newer minor revision are ignored.
            _ => {}
        }
    }
    if !seen_mode {
        return Err("missing mode".into());
    }
    if kind == Kind::Symlink && e.target().is_none() {
        return Err("symlink without target".into());
    }
    if let Some(b) = blocks {
        e.sparse |= kind == Kind::File && b.saturating_mul(512) < e.size;
    }
    if !xattrs.is_empty() {
        xattrs.sort();
        e.set_xattrs(Some(xattrs.into_boxed_slice()));
    }
    Ok((path, e, hash))
}

/// Parses a manifest. Errors name the file and line; a manifest from a newer format version is
/// refused rather than half-understood.
pub fn parse(path: &Path, data: &[u8]) -> Result<Manifest> {
    let err = |line: usize, why: String| Error::Manifest {
        path: path.into(),
        line,
        why,
    };
    let mut m = Manifest::default();
    let mut lines = data.split(|&b| b == b'\n').enumerate();
    let header = lines.next().map(|(_, l)| l).unwrap_or(b"");
    let header = std::str::from_utf8(header).unwrap_or("");
    let ver = header
        .strip_prefix(MAGIC)
        .map(str::trim)
        .ok_or_else(|| err(1, "not a jailsync manifest (missing header)".into()))?;
    let ver: u32 = ver
        .parse()
        .map_err(|_| err(1, format!("bad format version {ver:?}")))?;
    if ver > FORMAT_VERSION {
        return Err(err(
            1,
            format!(
                "format version {ver} is newer than this jailsync understands ({FORMAT_VERSION})"
            ),
        ));
    }
    for (i, line) in lines {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix(b"#") {
            if let Some(v) = rest.strip_prefix(b"stamp ") {
                m.stamp = time(v).ok_or_else(|| err(i + 1, "bad stamp".into()))?;
            }
            continue;
        }
        let (path, e, hash) = parse_line(line).map_err(|w| err(i + 1, w))?;
        let k = m.entries.push(&path, e);
        m.entries.set_hash(k, hash);
    }
    let es = &mut m.entries;
    let sorted = (1..es.len()).all(|i| es.path(i - 1) < es.path(i));
    if !sorted {
        es.sort_by_path();
        if let Some(i) = (1..es.len()).find(|&i| es.path(i - 1) == es.path(i)) {
            return Err(err(
                0,
                format!("duplicate path {}", crate::entry::display_path(es.path(i))),
            ));
        }
    }
    Ok(m)
}

pub fn read_file(path: &Path) -> Result<Manifest> {
    let data = fs::read(path).at(path)?;
    parse(path, &data)
}

/// Reads lines from any reader (used by tests and `verify -`).
pub fn read_from(path: &Path, r: impl BufRead) -> Result<Manifest> {
    let mut data = Vec::new();
    let mut r = r;
    r.read_to_end(&mut data).at(path)?;
    parse(path, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind) -> Entry {
        let mut e = Entry::new(kind);
        (e.mode, e.uid, e.gid, e.nlink) = (0o644, 1, 2, 1);
        (e.mtime, e.mtime_nsec) = (1_700_000_000, 5);
        e.set_ctime(1_700_000_001, 7);
        (e.ino, e.dev) = (42, 9);
        e
    }

    fn round_trip(entries: &Entries, stat_fields: bool) -> Entries {
        let mut out = Vec::new();
        write_to(&mut out, (1, 2), entries, stat_fields).unwrap();
        let m = parse(Path::new("m"), &out).unwrap();
        assert_eq!(m.stamp, (1, 2));
        m.entries
    }

    #[test]
    fn every_kind_of_field_round_trips() {
        let mut root = entry(Kind::Dir);
        root.set_xattrs(Some(
            vec![(b"user.a b".as_slice().into(), b"v\n=1".as_slice().into())].into(),
        ));
        let mut file = entry(Kind::File);
        (file.size, file.sparse) = (1 << 20, true);
        let mut link = entry(Kind::Symlink);
        link.set_target(Some(b"../x y".as_slice().into()));
        let mut dev = entry(Kind::Char);
        dev.set_rdev(0x103);
        let mut all = Entries::new();
        all.push(b"", root);
        let f = all.push(b"d/f\xffile", file);
        all.set_hash(f, Some([7; 32]));
        all.push(b"d/l", link);
        all.push(b"d/null", dev);
        for stat_fields in [false, true] {
            let back = round_trip(&all, stat_fields);
            assert_eq!(back.len(), all.len());
            for (a, b) in all.iter().zip(back.iter()) {
                assert_eq!(
                    (a.path, a.kind, a.mode, a.size),
                    (b.path, b.kind, b.mode, b.size)
                );
                assert_eq!((a.mtime, a.mtime_nsec), (b.mtime, b.mtime_nsec));
                assert_eq!((a.hash, a.sparse), (b.hash, b.sparse));
                assert_eq!(
                    (a.target(), a.rdev(), a.xattrs()),
                    (b.target(), b.rdev(), b.xattrs())
                );
                if stat_fields {
                    assert_eq!((a.ctime(), a.ino, a.dev), (b.ctime(), b.ino, b.dev));
                }
            }
        }
    }

    #[test]
    fn block_counts_from_earlier_versions_still_mean_sparse() {
        let text = b"#jailsync-manifest 1\n\
            . dir mode=755 uid=0 gid=0 mtime=1.0\n\
            dense file mode=644 uid=0 gid=0 mtime=1.0 size=8192 blocks=16\n\
            holey file mode=644 uid=0 gid=0 mtime=1.0 blocks=8 size=1048576\n";
        let m = parse(Path::new("m"), text).unwrap();
        let sparse: Vec<bool> = m.entries.iter().map(|e| e.is_sparse()).collect();
        assert_eq!(sparse, [false, false, true]);
    }
}
