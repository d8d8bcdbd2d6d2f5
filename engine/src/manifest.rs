//! The manifest: a sorted list of entries in a line-oriented text format, like BSD `mtree`.
//!
//! ```text
//! #jailsync-manifest 2
//! #stamp 1700000000.123456789
//! . dir mode=755 uid=0 gid=0 mtime=1700000000.000000000 ...
//! bin/ls file mode=755 uid=0 gid=0 size=142312 mtime=... blake3=<64 hex> ino=.. dev=.. nlink=1 ctime=..
//! lib/libz.so link mode=777 ... target=libz.so.1
//! #end 3
//! ```
//! One entry per line: the path (`.` for the root), the type (`file dir link fifo char block
//! socket`), then `key=value` fields in any order. Paths and values escape every byte outside
//! `!`..`~`, plus `\` and `=`, as `\ooo` (three octal digits), so names with spaces, newlines or
//! invalid UTF-8 round-trip. Fields: `mode` (octal, incl. setuid/setgid/sticky), `uid`, `gid`,
//! `size`, `mtime`/`ctime` (`sec.nsec`), `ino`, `dev`, `nlink`, `sparse=1` (a file with holes;
//! earlier versions wrote `blocks`, still read), `rdev` (devices),
//! `target` (symlinks), `blake3` (files whose content is known), and `xattr.NAME=VALUE` (one per
//! attribute). Hard-link groups are the entries sharing `dev`+`ino`, which are written for
//! every entry with more than one link, whatever its type (symlinks, fifos, sockets and devices
//! can be hard-linked too; manifests written before that list their groups as singles).
//! `#stamp` is when the stats were taken; `#end N` (since version 2) ends the manifest and
//! counts its entries; other `#` lines are ignored, and a higher format version is refused.
//!
//! Reading is strict, because a damaged manifest must not pass for a tree that differs: every
//! entry has `mode uid gid mtime`, a file `size` (and `blake3` in a manifest to verify against), a
//! symlink `target`, a device `rdev`, a hard-linked entry `ino` and `dev`; no field is given twice
//! or on a type it does not describe; the root `.` comes first, each other entry's parent is a
//! directory of the manifest, no path appears twice; and a file not ending in a newline, or a
//! version-2 file without its `#end` line, was truncated. Unknown fields (a newer minor revision)
//! are ignored.

use std::fs;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use crate::entry::{Ent, Entries, Entry, Hash, Kind, Xattr, CTIME_UNKNOWN};
use crate::error::{Error, IoContext, Result};
use crate::hash::{from_hex, to_hex};

pub const FORMAT_VERSION: u32 = 2;
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
        e.uid(),
        e.gid(),
        e.mtime().0,
        e.mtime().1
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
    // Hard-link groups of every type are part of what a tree promises (invariant 5).
    if e.is_multi_linked() || stat_fields {
        let _ = write!(out, " ino={} dev={} nlink={}", e.ino, e.dev(), e.nlink);
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
    write_lines_noted(w, stamp, entries, stat_fields, None)
}

/// Streams a manifest of `entries` (in path order, from wherever) to `w`, with an extra
/// comment line `#NOTE` after the header when given (readers ignore unknown comments).
pub fn write_lines_noted<'a, W: Write>(
    w: &mut W,
    stamp: (i64, u32),
    entries: impl Iterator<Item = Ent<'a>>,
    stat_fields: bool,
    note: Option<&str>,
) -> std::io::Result<()> {
    writeln!(w, "{MAGIC} {FORMAT_VERSION}")?;
    if let Some(n) = note {
        writeln!(w, "#{n}")?;
    }
    writeln!(w, "#stamp {}.{:09}", stamp.0, stamp.1)?;
    let mut line = Vec::with_capacity(256);
    let mut n = 0usize;
    for e in entries {
        line.clear();
        write_entry(&mut line, e, stat_fields);
        w.write_all(&line)?;
        n += 1;
    }
    writeln!(w, "#end {n}")
}

/// Writes a manifest of `entries` (in path order, from wherever) to `path` without making a
/// list of them: for the engine's own state files. Atomic (a new file renamed into place);
/// not fsynced.
pub fn write_ents<'a>(
    path: &Path,
    stamp: (i64, u32),
    entries: impl Iterator<Item = Ent<'a>>,
) -> Result<()> {
    write_ents_stat(path, stamp, entries, false)
}

/// [`write_ents`], with the stat fields when `stat_fields` (see [`write_to`]).
pub fn write_ents_stat<'a>(
    path: &Path,
    stamp: (i64, u32),
    entries: impl Iterator<Item = Ent<'a>>,
    stat_fields: bool,
) -> Result<()> {
    let tmp = path.with_extension("new");
    let r = (|| -> std::io::Result<()> {
        let mut w = BufWriter::with_capacity(1 << 16, fs::File::create(&tmp)?);
        write_lines(&mut w, stamp, entries, stat_fields)?;
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

/// A decimal number: digits only (no sign, no blanks), in range for `T`.
fn num<T: std::str::FromStr>(v: &[u8]) -> Option<T> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `sec.frac`: seconds (may be negative), then 1 to 9 digits of fraction, read as a decimal
/// fraction (`1.5` is 1.5 s; the writer always gives nine digits). `sec` alone means `.0`.
fn time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (a, b) = s.split_once('.').unwrap_or((s, "0"));
    let digits = a.strip_prefix('-').unwrap_or(a);
    if b.is_empty() || b.len() > 9 || !b.bytes().all(|c| c.is_ascii_digit()) || digits.is_empty() {
        return None;
    }
    let sec = num::<u64>(digits.as_bytes()).and_then(|n| i64::try_from(n).ok())?;
    let ns: u32 = b.parse().ok()?;
    Some((
        if a.starts_with('-') { -sec } else { sec },
        ns * 10u32.pow(9 - b.len() as u32),
    ))
}

/// One line: the entry's path, the entry, its hash.
type Line = (Vec<u8>, Entry, Option<Hash>);

/// Which fields a kind of entry must have and may have.
fn field_allowed(kind: Kind, key: &[u8]) -> bool {
    match key {
        b"size" | b"blake3" | b"sparse" | b"blocks" => kind == Kind::File,
        b"target" => kind == Kind::Symlink,
        b"rdev" => matches!(kind, Kind::Char | Kind::Block),
        _ => true,
    }
}

/// Parses one entry line. `need_hash`: a file must carry its content's hash (a manifest to
/// verify against; a rollback generation's record of the old tree knows only some).
fn parse_line(line: &[u8], need_hash: bool) -> std::result::Result<Line, String> {
    let mut toks = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let path = parse_path(toks.next().ok_or("empty line")?)?;
    let kind = toks
        .next()
        .and_then(|k| std::str::from_utf8(k).ok())
        .and_then(Kind::from_name)
        .ok_or("missing or unknown type")?;
    if path.is_empty() && kind != Kind::Dir {
        return Err("the root `.` is not a directory".into());
    }
    let mut fields = Fields::new(kind);
    for t in toks {
        fields.read(t)?;
    }
    let (e, hash) = fields.finish(need_hash)?;
    Ok((path, e, hash))
}

/// A line's path token: `.` for the root, else an escaped clean relative path.
fn parse_path(p: &[u8]) -> std::result::Result<Vec<u8>, String> {
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
    Ok(path)
}

/// The `key=value` fields of one line, read into its entry.
struct Fields<'l> {
    e: Entry,
    hash: Option<Hash>,
    blocks: Option<u64>,
    xattrs: Vec<Xattr>,
    // Set on the entry together once the line is read: one lookup in the table of owners and
    // devices, and no half-made triples in it.
    uid: u32,
    gid: u32,
    dev: u64,
    // Known fields seen, to refuse one given twice (which value would be meant?).
    seen: Vec<&'l [u8]>,
}

impl<'l> Fields<'l> {
    fn new(kind: Kind) -> Self {
        let mut e = Entry::new(kind);
        e.nlink = 1;
        Fields {
            e,
            hash: None,
            blocks: None,
            xattrs: Vec::new(),
            uid: 0,
            gid: 0,
            dev: 0,
            seen: Vec::new(),
        }
    }

    /// Reads the field token `t`: one this kind of entry may have, given once.
    fn read(&mut self, t: &'l [u8]) -> std::result::Result<(), String> {
        let kind = self.e.kind;
        let eq = t
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| format!("field {:?} without '='", String::from_utf8_lossy(t)))?;
        let (k, v) = (&t[..eq], &t[eq + 1..]);
        let name = String::from_utf8_lossy(k);
        if !field_allowed(kind, k) {
            return Err(format!("field {name} on a {}", kind.name()));
        }
        let known = matches!(
            k,
            b"mode"
                | b"uid"
                | b"gid"
                | b"size"
                | b"ino"
                | b"dev"
                | b"nlink"
                | b"rdev"
                | b"sparse"
                | b"blocks"
                | b"mtime"
                | b"ctime"
                | b"blake3"
                | b"target"
        );
        if known || k.starts_with(b"xattr.") {
            if self.seen.contains(&k) {
                return Err(format!("field {name} given twice"));
            }
            self.seen.push(k);
        }
        self.set(k, v).map_err(|()| format!("bad value for {name}"))
    }

    /// Sets the value `v` of the field `k`; `Err` if it is not a valid one.
    fn set(&mut self, k: &[u8], v: &[u8]) -> std::result::Result<(), ()> {
        let e = &mut self.e;
        match k {
            b"mode" => {
                e.mode = std::str::from_utf8(v)
                    .ok()
                    .filter(|s| !s.is_empty() && s.bytes().all(|c| (b'0'..=b'7').contains(&c)))
                    .and_then(|s| u16::from_str_radix(s, 8).ok())
                    .filter(|m| *m <= 0o7777)
                    .ok_or(())?;
            }
            b"uid" => self.uid = num(v).ok_or(())?,
            b"gid" => self.gid = num(v).ok_or(())?,
            b"size" => e.size = num(v).ok_or(())?,
            b"ino" => e.ino = num(v).ok_or(())?,
            b"dev" => self.dev = num(v).ok_or(())?,
            b"nlink" => e.nlink = num(v).filter(|n| *n > 0).ok_or(())?,
            b"rdev" => e.set_rdev(num(v).ok_or(())?),
            b"sparse" => {
                e.sparse = match v {
                    b"0" => false,
                    b"1" => true,
                    _ => return Err(()),
                }
            }
            // Written by earlier versions: the allocated 512-byte blocks.
            b"blocks" => self.blocks = Some(num::<u64>(v).ok_or(())?),
            b"mtime" => {
                let (s, n) = time(v).ok_or(())?;
                e.set_mtime(s, n)
            }
            b"ctime" => {
                let (s, ns) = time(v).ok_or(())?;
                e.set_ctime(s, ns);
            }
            b"blake3" => {
                self.hash = Some(
                    std::str::from_utf8(v)
                        .ok()
                        .filter(|s| s.bytes().all(|c| c.is_ascii_hexdigit()))
                        .and_then(from_hex)
                        .ok_or(())?,
                )
            }
            b"target" => {
                let t = unescape(v).filter(|t| !t.is_empty()).ok_or(())?;
                e.set_target(Some(t.into_boxed_slice()));
            }
            _ if k.starts_with(b"xattr.") => {
                let name = unescape(&k[6..]).filter(|n| !n.is_empty()).ok_or(())?;
                let val = unescape(v).ok_or(())?;
                self.xattrs
                    .push((name.into_boxed_slice(), val.into_boxed_slice()));
            }
            // Fields from a newer minor revision are ignored.
            _ => {}
        }
        Ok(())
    }

    /// The entry and its hash, once every field it must have was read.
    fn finish(self, need_hash: bool) -> std::result::Result<(Entry, Option<Hash>), String> {
        let Fields {
            mut e,
            hash,
            blocks,
            mut xattrs,
            uid,
            gid,
            dev,
            seen,
        } = self;
        let kind = e.kind;
        e.set_ids(uid, gid, dev);
        // Every field the writer always gives this kind of entry must be here: a line cut
        // short or edited must not read as an entry that merely differs.
        let mut required: Vec<&str> = vec!["mode", "uid", "gid", "mtime"];
        match kind {
            Kind::File => {
                required.push("size");
                if need_hash {
                    required.push("blake3");
                }
            }
            Kind::Symlink => required.push("target"),
            Kind::Char | Kind::Block => required.push("rdev"),
            _ => {}
        }
        // A hard-link group is known only by its members' shared dev+ino.
        if e.nlink > 1 {
            required.extend(["ino", "dev"]);
        }
        if let Some(f) = required.iter().find(|f| !seen.contains(&f.as_bytes())) {
            return Err(format!("missing field {f}"));
        }
        if let Some(b) = blocks {
            e.sparse |= kind == Kind::File && b.saturating_mul(512) < e.size;
        }
        if !xattrs.is_empty() {
            xattrs.sort();
            e.set_xattrs(Some(xattrs.into_boxed_slice()));
        }
        Ok((e, hash))
    }
}

/// Parses a manifest to verify against: every file must carry its hash. Errors name the file
/// and line; a manifest from a newer format version is refused rather than half-understood,
/// and a truncated or malformed one is refused rather than read as differences.
pub fn parse(path: &Path, data: &[u8]) -> Result<Manifest> {
    parse_impl(path, data, true, false)
}

/// Parses a manifest this program recorded of a tree it did not hash whole (a rollback
/// generation): files may lack their hash; everything else is checked as by [`parse`].
pub fn parse_recorded(path: &Path, data: &[u8]) -> Result<Manifest> {
    parse_impl(path, data, false, false)
}

/// Parses a list of entries this program recorded that is not a whole tree (the entries a
/// sync touched, old metadata to set back): lines and truncation are checked, the tree shape
/// is not.
pub fn parse_records(path: &Path, data: &[u8]) -> Result<Manifest> {
    parse_impl(path, data, false, true)
}

/// [`read_file`] for a list read by [`parse_records`].
pub fn read_records(path: &Path) -> Result<Manifest> {
    let data = fs::read(path).at(path)?;
    parse_records(path, &data)
}

fn parse_impl(path: &Path, data: &[u8], need_hash: bool, partial: bool) -> Result<Manifest> {
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
    // The writer ends every line; a last line without its newline was cut.
    let n_lines = data.split(|&b| b == b'\n').count() - usize::from(data.ends_with(b"\n"));
    if !data.ends_with(b"\n") {
        return Err(err(
            n_lines,
            "truncated: the file ends inside this line".into(),
        ));
    }
    let mut end: Option<(usize, u64)> = None;
    let mut last = 1;
    for (i, line) in lines {
        if line.is_empty() {
            continue;
        }
        if let Some((at, _)) = end {
            return Err(err(i + 1, format!("text after the `#end` line {at}")));
        }
        last = i + 1;
        if let Some(rest) = line.strip_prefix(b"#") {
            if let Some(v) = rest.strip_prefix(b"stamp ") {
                m.stamp = time(v).ok_or_else(|| err(i + 1, "bad stamp".into()))?;
            } else if let Some(v) = rest.strip_prefix(b"end ") {
                let n = num(v).ok_or_else(|| err(i + 1, "bad entry count".into()))?;
                end = Some((i + 1, n));
            }
            continue;
        }
        let (path, e, hash) = parse_line(line, need_hash).map_err(|w| err(i + 1, w))?;
        let k = m.entries.push(&path, e);
        m.entries.set_hash(k, hash);
    }
    // Since version 2 the last line counts the entries, so a manifest cut at a line boundary
    // is told from a whole one.
    match end {
        None if ver >= 2 => {
            return Err(err(
                last,
                "truncated after this line (no `#end` line)".into(),
            ))
        }
        Some((at, n)) if n != m.entries.len() as u64 => {
            return Err(err(
                at,
                format!(
                    "truncated or edited: {} entries, `#end` says {n}",
                    m.entries.len()
                ),
            ))
        }
        _ => {}
    }
    if partial {
        m.entries.sort_by_path();
    } else {
        check_structure(path, data, &mut m.entries)?;
    }
    Ok(m)
}

/// Sorts the entries if need be and checks they form a tree: the root `.` first, no path
/// twice, every entry's parent a directory of the manifest. Errors name the offending line
/// (found again in `data`, on the error path only).
fn check_structure(path: &Path, data: &[u8], es: &mut Entries) -> Result<()> {
    let err = |p: &[u8], nth: usize, why: String| Error::Manifest {
        path: path.into(),
        line: line_of(data, p, nth),
        why,
    };
    let show = crate::entry::display_path;
    if !(1..es.len()).all(|i| es.path(i - 1) < es.path(i)) {
        es.sort_by_path();
    }
    match es.iter().next() {
        None => {
            return Err(Error::Manifest {
                path: path.into(),
                line: 1,
                why: "no entries (not even the root `.`)".into(),
            })
        }
        Some(e) if !e.path.is_empty() => {
            return Err(err(
                e.path,
                0,
                "no root directory entry `.` before this one".into(),
            ))
        }
        _ => {}
    }
    for i in 1..es.len() {
        let p = es.path(i);
        if es.path(i - 1) == p {
            return Err(err(p, 1, format!("duplicate path {}", show(p))));
        }
        let (parent, _) = crate::fsx::split_parent(p);
        let ok = es.search(parent).is_ok_and(|j| es[j].kind == Kind::Dir);
        if !ok {
            return Err(err(
                p,
                0,
                format!(
                    "the parent of {} is not a directory of the manifest",
                    show(p)
                ),
            ));
        }
    }
    Ok(())
}

/// The line number of the `nth` (from 0) entry line for path `p`, or 0.
fn line_of(data: &[u8], p: &[u8], nth: usize) -> usize {
    data.split(|&b| b == b'\n')
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.is_empty() && !l.starts_with(b"#"))
        .filter(|(_, l)| {
            let t = l.split(|&b| b == b' ').next().unwrap_or(b"");
            (t == b"." && p.is_empty()) || unescape(t).is_some_and(|u| u == p)
        })
        .nth(nth)
        .map_or(0, |(i, _)| i + 1)
}

pub fn read_file(path: &Path) -> Result<Manifest> {
    let data = fs::read(path).at(path)?;
    parse(path, &data)
}

/// [`read_file`] for a manifest this program recorded (see [`parse_recorded`]).
pub fn read_recorded(path: &Path) -> Result<Manifest> {
    let data = fs::read(path).at(path)?;
    parse_recorded(path, &data)
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
        (e.mode, e.nlink) = (0o644, 1);
        e.set_owner(1, 2);
        e.set_mtime(1_700_000_000, 5);
        e.set_ctime(1_700_000_001, 7);
        e.ino = 42;
        e.set_dev(9);
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
        all.push(b"d", entry(Kind::Dir));
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
                assert_eq!(a.mtime(), b.mtime());
                assert_eq!((a.hash, a.sparse), (b.hash, b.sparse));
                assert_eq!(
                    (a.target(), a.rdev(), a.xattrs()),
                    (b.target(), b.rdev(), b.xattrs())
                );
                if stat_fields {
                    assert_eq!((a.ctime(), a.ino, a.dev()), (b.ctime(), b.ino, b.dev()));
                }
            }
        }
    }

    #[test]
    fn hard_link_groups_of_every_type_are_written() {
        let mut all = Entries::new();
        all.push(b"", entry(Kind::Dir));
        for (i, k) in [
            Kind::File,
            Kind::Symlink,
            Kind::Fifo,
            Kind::Char,
            Kind::Socket,
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = entry(k);
            if k == Kind::Symlink {
                e.set_target(Some(b"t".as_slice().into()));
            }
            (e.ino, e.nlink) = (100 + i as u64, 2);
            all.push(k.name().as_bytes(), e.clone());
            all.push(format!("{}2", k.name()).as_bytes(), e);
        }
        all.sort_by_path();
        // No hashes here: read as a recorded manifest (a verified one needs them).
        let mut out = Vec::new();
        write_to(&mut out, (1, 2), &all, false).unwrap();
        let back = parse_recorded(Path::new("m"), &out).unwrap().entries;
        for (a, b) in all.iter().zip(back.iter()).skip(1) {
            assert_eq!(
                (a.path, a.ino, a.dev(), a.nlink),
                (b.path, b.ino, b.dev(), b.nlink)
            );
        }
    }

    #[test]
    fn block_counts_from_earlier_versions_still_mean_sparse() {
        let text = b"#jailsync-manifest 1\n\
            . dir mode=755 uid=0 gid=0 mtime=1.0\n\
            dense file mode=644 uid=0 gid=0 mtime=1.0 size=8192 blocks=16\n\
            holey file mode=644 uid=0 gid=0 mtime=1.0 blocks=8 size=1048576\n";
        let m = parse_recorded(Path::new("m"), text).unwrap();
        let sparse: Vec<bool> = m.entries.iter().map(|e| e.is_sparse()).collect();
        assert_eq!(sparse, [false, false, true]);
    }

    /// A small manifest as `write_to` makes it, and its lines.
    fn sample() -> String {
        let mut all = Entries::new();
        let mut root = entry(Kind::Dir);
        root.mode = 0o755;
        all.push(b"", root);
        let mut dev = entry(Kind::Char);
        dev.set_rdev(0x103);
        all.push(b"dev", dev);
        let mut file = entry(Kind::File);
        file.size = 3;
        let f = all.push(b"f", file);
        all.set_hash(f, Some([7; 32]));
        let mut link = entry(Kind::Symlink);
        link.set_target(Some(b"f".as_slice().into()));
        all.push(b"l", link);
        let mut out = Vec::new();
        write_to(&mut out, (1, 2), &all, false).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The error of parsing `text`: its line and message.
    fn refusal(text: &str) -> (usize, String) {
        match parse(Path::new("m"), text.as_bytes()) {
            Ok(m) => panic!("accepted ({} entries):\n{text}", m.entries.len()),
            Err(Error::Manifest { line, why, .. }) => (line, why),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_field_is_checked_and_named_with_its_line() {
        let good = sample();
        parse(Path::new("m"), good.as_bytes()).unwrap();
        let lines: Vec<&str> = good.lines().collect();
        let at = |start: &str| 1 + lines.iter().position(|l| l.starts_with(start)).unwrap();
        // (line start, field, replacement or "" to drop it, what the message must name)
        let cases = [
            ("f ", "size", "", "size"),
            ("f ", "size", "size=x", "size"),
            ("f ", "blake3", "", "blake3"),
            ("f ", "blake3", "blake3=0707", "blake3"),
            ("f ", "uid", "", "uid"),
            ("f ", "gid", "gid=-1", "gid"),
            ("f ", "mtime", "", "mtime"),
            ("f ", "mtime", "mtime=1.", "mtime"),
            ("f ", "mtime", "mtime=1.0000000001", "mtime"),
            ("f ", "mtime", "mtime=1.2.3", "mtime"),
            ("f ", "mode", "mode=644 mode=600", "mode"),
            ("f ", "mode", "mode=644 target=x", "target"),
            ("f ", "mode", "mode=644 rdev=1", "rdev"),
            ("f ", "mode", "mode=644 sparse=2", "sparse"),
            ("f ", "mode", "mode=644 nlink=0", "nlink"),
            ("f ", "mode", "mode=644 nlink=2", "ino"),
            ("f ", "mode", "mode=644 xattr.=1", "xattr"),
            (". ", "mode", "mode=755 size=1", "size"),
            (". ", "mode", "mode=755 blake3=0707", "blake3"),
            ("dev ", "rdev", "", "rdev"),
            ("l ", "target", "", "target"),
            ("l ", "target", "target=", "target"),
            ("l ", "mode", "mode=777 sparse=1", "sparse"),
        ];
        for (start, field, to, why) in cases {
            let n = at(start);
            let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
            let key = format!("{field}=");
            l[n - 1] = l[n - 1]
                .split(' ')
                .filter_map(|t| match t.starts_with(&key) {
                    true => (!to.is_empty()).then(|| to.to_string()),
                    false => Some(t.to_string()),
                })
                .collect::<Vec<_>>()
                .join(" ");
            let text = l.join("\n") + "\n";
            let (line, msg) = refusal(&text);
            assert_eq!(line, n, "{start}{field} -> {to:?}: {msg}");
            assert!(msg.contains(why), "{start}{field} -> {to:?}: {msg}");
        }
    }

    #[test]
    fn a_truncated_manifest_is_refused() {
        let good = sample();
        let lines: Vec<&str> = good.lines().collect();
        let n = lines.len();
        // Whole lines lost from the end (the end marker with them, or entries too).
        for keep in 2..n {
            let text = lines[..keep].join("\n") + "\n";
            let (line, msg) = refusal(&text);
            assert_eq!(line, keep, "{keep} lines kept: {msg}");
            assert!(msg.contains("truncated"), "{keep} lines kept: {msg}");
        }
        // Cut inside the last entry line, right after a complete field.
        let f = good.find("\nf ").unwrap() + 1;
        let cut = &good[..f + good[f..].find(" blake3=").unwrap()];
        let (line, msg) = refusal(cut);
        assert_eq!(
            line,
            1 + lines.iter().position(|l| l.starts_with("f ")).unwrap()
        );
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn structure_is_checked_root_parents_and_duplicates() {
        let head = "#jailsync-manifest 1\n";
        let dir = "mode=755 uid=0 gid=0 mtime=1.0";
        let file = "mode=644 uid=0 gid=0 mtime=1.0 size=0 blake3=af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
        let (line, msg) = refusal(&format!("{head}a file {file}\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("root"), "{msg}");
        let (line, msg) = refusal(&format!("{head}. dir {dir}\nx/y file {file}\n"));
        assert_eq!(line, 3);
        assert!(msg.contains("parent"), "{msg}");
        let (line, msg) = refusal(&format!(
            "{head}. dir {dir}\na file {file}\na/b file {file}\n"
        ));
        assert_eq!(line, 4);
        assert!(msg.contains("parent"), "{msg}");
        let (line, msg) = refusal(&format!(
            "{head}. dir {dir}\nb file {file}\na file {file}\nb file {file}\n"
        ));
        assert_eq!(line, 5);
        assert!(msg.contains("duplicate"), "{msg}");
    }

    #[test]
    fn a_recorded_manifest_may_lack_hashes_a_verified_one_may_not() {
        let text = "#jailsync-manifest 1\n. dir mode=755 uid=0 gid=0 mtime=1.0\n\
                    f file mode=644 uid=0 gid=0 mtime=1.0 size=3\n";
        let m = parse_recorded(Path::new("m"), text.as_bytes()).unwrap();
        assert_eq!(m.entries.len(), 2);
        let (line, msg) = refusal(text);
        assert_eq!(line, 3);
        assert!(msg.contains("blake3"), "{msg}");
    }
}
