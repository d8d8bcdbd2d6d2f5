//! The stat cache: reusing a blake3 computed by an earlier run without reading the file again.
//!
//! A cached hash stands for the content the file had when it was hashed. The rules (racy-git):
//! 1. It is *written* only for entries whose ctime and mtime are older than the moment their
//!    stat was taken minus the timestamp granularity ([`cacheable`]). A file changed in the same
//!    clock tick as that stat could otherwise keep identical timestamps with new content.
//! 2. It is *reused* only when size, mtime and ctime (ns), inode, device, type and mode all match
//!    the current `lstat` ([`same_inode`]). ctime cannot be set from user space, so `touch -d`
//!    back to the old mtime after rewriting a file still changes ctime and forces a re-hash.
//!
//! The cache never lives inside a synced tree; see [`crate::journal`] for where it goes.

use crate::entry::{Ent, Entries, Entry, Hash, Kind, Xattrs, CTIME_UNKNOWN};

/// Granularity margin for filesystems with nanosecond timestamps: a kernel tick is at most
/// 10 ms (HZ=100); we take twice that.
const MARGIN_FINE_NS: i128 = 20_000_000;
/// Filesystems with whole-second timestamps (nanoseconds always 0) need a second.
const MARGIN_COARSE_NS: i128 = 1_000_000_000;

pub fn now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos())
}

fn ns(t: (i64, u32)) -> i128 {
    t.0 as i128 * 1_000_000_000 + t.1 as i128
}

/// Rule 1: may the hash of `e`, whose stat was taken at `stamp`, be stored?
pub fn cacheable(e: &Entry, stamp: (i64, u32)) -> bool {
    let ctime = e.ctime();
    if ctime == CTIME_UNKNOWN {
        return false;
    }
    let margin = if ctime.1 == 0 && e.mtime().1 == 0 {
        MARGIN_COARSE_NS
    } else {
        MARGIN_FINE_NS
    };
    let limit = ns(stamp) - margin;
    ns(ctime) < limit && ns(e.mtime()) < limit
}

/// What the cache keeps of one entry: the stat fields rule 2 compares, the hash, the xattrs.
/// (Its path stays with the reader: records come in path order and are matched as read.)
#[derive(Clone, Debug)]
pub struct Cached {
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub ino: u64,
    pub dev: u64,
    pub mode: u32,
    pub kind: Kind,
    pub hash: Option<Hash>,
    /// The entry's xattrs when they were read (`None`: the writing run did not read them).
    pub xattrs: Option<Option<Xattrs>>,
}

/// Rule 2: does `cached` describe exactly the inode `cur` describes now?
pub fn same_inode(cached: &Cached, cur: &Entry) -> bool {
    cached.kind == cur.kind
        && cached.size == cur.size
        && cached.mtime == cur.mtime()
        && cached.ctime == cur.ctime()
        && cached.ctime != CTIME_UNKNOWN
        && cached.ino == cur.ino
        && cached.dev == cur.dev()
        && cached.mode == u32::from(cur.mode)
}

// On disk: MAGIC, stamp (i64 s, u32 ns), then per entry: path length (u32), path, size,
// mtime s, mtime ns, ctime s, ctime ns, ino, dev, mode, type (a byte, see `kind_code`), a byte
// 1 followed by the blake3 for a hashed file (else 0), then its xattrs: a byte, 0 when the
// writing run did not read them, else 1, their count (u32) and each name and value (u32
// length, bytes) — little-endian — then END (a length no path has), the record count (u64),
// and last the blake3 of every byte before it. The xattrs obey the rules the hash does (an
// xattr change moves ctime), so a no-op run lists no entry's xattrs; directories and symlinks
// are kept for their xattrs alone.
// Binary because a no-op sync reads and writes it for every file of both trees, and text
// parsing was a third of such a run. The count is at the end so the file is written as it is
// encoded, never whole in memory. The user-facing format is the manifest; this is private
// state. The trailing checksum is what lets a damaged cache be ignored rather than believed: a
// flipped bit in a stored hash still parses, and would make `verify` report an identical file
// as changed (or, against the other side's hash, hide one).
const MAGIC: &[u8; 8] = b"JSCACHE6";
/// The format before: the same layout, but written by versions that could stage an entry
/// with an ACL inherited from the staging area and record the jail's xattrs (none) for it.
/// Its hashes stand; its xattrs are not believed (read again once, and the cache rewritten),
/// so such an ACL is seen by the next `verify` or sync instead of vouched for.
const MAGIC_XATTRS_UNTRUSTED: &[u8; 8] = b"JSCACHE5";
const END: u32 = u32::MAX;

/// The entries a cache of `entries` keeps: hashed regular files that rule 1 allows, and with
/// `xattrs` (the entries' xattrs were read) directories and symlinks, for those alone.
pub fn records<'a>(
    entries: impl IntoIterator<Item = Ent<'a>>,
    stamp: (i64, u32),
    xattrs: bool,
) -> impl Iterator<Item = Ent<'a>> {
    entries.into_iter().filter(move |e| {
        let wanted = match e.kind {
            Kind::File => e.hash.is_some(),
            Kind::Dir => xattrs && !e.path.is_empty(), // the root's are always read
            Kind::Symlink => xattrs,
            _ => false,
        };
        wanted && e.path.len() <= MAX_PATH && cacheable(e, stamp)
    })
}

fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Fifo => 3,
        Kind::Char => 4,
        Kind::Block => 5,
        Kind::Socket => 6,
    }
}

fn kind_of_code(c: u8) -> Option<Kind> {
    [
        Kind::File,
        Kind::Dir,
        Kind::Symlink,
        Kind::Fifo,
        Kind::Char,
        Kind::Block,
        Kind::Socket,
    ]
    .get(c as usize)
    .copied()
}

/// Longer paths (possible below `openat` chains) are not cached: the reader takes a longer
/// length for damage.
const MAX_PATH: usize = 1 << 16;

/// What [`fill_from_file`] found.
pub struct Filled {
    /// Hashes reused.
    pub hits: usize,
    /// Records the file holds.
    pub records: usize,
    /// Per entry: its xattrs were filled from the cache too (empty unless asked for).
    pub xattrs_known: Vec<bool>,
    /// Every record that matched had its xattrs (else the cache is worth rewriting).
    pub xattrs_complete: bool,
}

/// Fills hashes of `entries` (sorted, none hashed yet) straight from the cache file, without
/// holding the file in memory: one pass checks the checksum, a second fills. With `xattrs`,
/// the xattrs of those entries too, where the cache has them. `None` (and nothing filled) when
/// the file is missing or not to be believed.
pub fn fill_from_file(
    path: &std::path::Path,
    entries: &mut Entries,
    xattrs: bool,
) -> Option<Filled> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let body = len.checked_sub(32)?;
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut (&mut f).take(body), &mut h).ok()?;
    let mut sum = [0u8; 32];
    f.read_exact(&mut sum).ok()?;
    if h.finalize().as_bytes() != &sum {
        return None;
    }
    // Clearing on a malformed body (below) must not discard hashes from elsewhere.
    debug_assert!(entries.iter().all(|e| e.hash.is_none()));
    f.seek(std::io::SeekFrom::Start(0)).ok()?;
    let mut r = Reader {
        r: std::io::BufReader::with_capacity(1 << 16, f.take(body)),
        path: Vec::new(),
    };
    let mut known = if xattrs {
        vec![false; entries.len()]
    } else {
        Vec::new()
    };
    let mut unknown = 0;
    let res = fill(&mut r, entries, &mut known, &mut unknown);
    match res {
        Some((hits, records)) => Some(Filled {
            hits,
            records,
            xattrs_known: known,
            xattrs_complete: unknown == 0,
        }),
        None => {
            // Checked, then malformed: nothing it filled may stand.
            for i in 0..entries.len() {
                entries.set_hash(i, None);
                if known.get(i) == Some(&true) {
                    entries[i].set_xattrs(None);
                }
            }
            None
        }
    }
}

fn fill<R: std::io::Read>(
    r: &mut Reader<R>,
    entries: &mut Entries,
    known: &mut [bool],
    unknown: &mut usize,
) -> Option<(usize, usize)> {
    let trust_xattrs = match &r.array::<8>()? {
        m if m == MAGIC => true,
        m if m == MAGIC_XATTRS_UNTRUSTED => false,
        _ => return None,
    };
    let _stamp = (r.i64()?, r.u32()?);
    let (mut j, mut hits, mut n) = (0, 0, 0u64);
    let mut prev: Vec<u8> = Vec::new();
    loop {
        let len = r.u32()?;
        if len == END {
            break;
        }
        r.read_path(len as usize)?;
        if n > 0 && r.path <= prev {
            return None;
        }
        n += 1;
        let c = Cached {
            size: r.u64()?,
            mtime: (r.i64()?, r.u32()?),
            ctime: (r.i64()?, r.u32()?),
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
            kind: kind_of_code(r.array::<1>()?[0])?,
            hash: match r.array::<1>()?[0] {
                0 => None,
                1 => Some(r.array::<32>()?),
                _ => return None,
            },
            xattrs: r.xattrs()?.filter(|_| trust_xattrs),
        };
        while j < entries.len() && entries.path(j) < &r.path[..] {
            j += 1;
        }
        if j < entries.len() && entries.path(j) == &r.path[..] && same_inode(&c, &entries[j]) {
            // The same inode (rule 2): a file's cached hash stands.
            if let (Kind::File, Some(h)) = (entries[j].kind, c.hash) {
                entries.set_hash(j, Some(h));
                hits += 1;
            }
            if let Some(k) = known.get_mut(j) {
                match c.xattrs {
                    Some(x) => {
                        entries[j].set_xattrs(x);
                        *k = true;
                    }
                    None => *unknown += 1,
                }
            }
        }
        std::mem::swap(&mut prev, &mut r.path);
    }
    if r.u64()? != n || r.array::<1>().is_some() {
        return None;
    }
    Some((hits, n as usize))
}

/// Writes the cache of `records` (sorted; see [`records`]) atomically: encoded straight into a
/// temp file, then renamed (not fsynced: a cache lost in a crash costs a re-hash, and a torn
/// one fails its checksum in [`fill_from_file`]). `xattrs`: the entries' xattrs were read (so
/// "none" means none). Returns the number of records.
pub fn write_file<'a>(
    path: &std::path::Path,
    records: impl IntoIterator<Item = Ent<'a>>,
    stamp: (i64, u32),
    xattrs: bool,
) -> std::io::Result<usize> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let r = (|| {
        let f = std::fs::File::create(&tmp)?;
        let mut w = Summed {
            w: std::io::BufWriter::with_capacity(1 << 16, f),
            h: blake3::Hasher::new(),
        };
        let n = encode(&mut w, records, stamp, xattrs)?;
        let sum = *w.h.finalize().as_bytes();
        w.w.write_all(&sum)?;
        w.w.into_inner().map_err(|e| e.into_error())?;
        Ok(n)
    })();
    match r {
        Ok(n) => std::fs::rename(&tmp, path).map(|()| n),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn encode<'a, W: std::io::Write>(
    w: &mut W,
    records: impl IntoIterator<Item = Ent<'a>>,
    stamp: (i64, u32),
    xattrs: bool,
) -> std::io::Result<usize> {
    w.write_all(MAGIC)?;
    w.write_all(&stamp.0.to_le_bytes())?;
    w.write_all(&stamp.1.to_le_bytes())?;
    let mut n = 0usize;
    let mut rec = Vec::with_capacity(256);
    for e in records {
        rec.clear();
        rec.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        rec.extend_from_slice(e.path);
        rec.extend_from_slice(&e.size.to_le_bytes());
        rec.extend_from_slice(&e.mtime().0.to_le_bytes());
        rec.extend_from_slice(&e.mtime().1.to_le_bytes());
        let (cs, cn) = e.ctime();
        rec.extend_from_slice(&cs.to_le_bytes());
        rec.extend_from_slice(&cn.to_le_bytes());
        rec.extend_from_slice(&e.ino.to_le_bytes());
        rec.extend_from_slice(&e.dev().to_le_bytes());
        rec.extend_from_slice(&u32::from(e.mode).to_le_bytes());
        rec.push(kind_code(e.kind));
        match (e.kind, e.hash) {
            (Kind::File, Some(h)) => {
                rec.push(1);
                rec.extend_from_slice(h);
            }
            _ => rec.push(0),
        }
        rec.push(xattrs as u8);
        if xattrs {
            let x = e.xattrs().map_or(&[][..], |x| &x[..]);
            rec.extend_from_slice(&(x.len() as u32).to_le_bytes());
            for (k, v) in x {
                rec.extend_from_slice(&(k.len() as u32).to_le_bytes());
                rec.extend_from_slice(k);
                rec.extend_from_slice(&(v.len() as u32).to_le_bytes());
                rec.extend_from_slice(v);
            }
        }
        w.write_all(&rec)?;
        n += 1;
    }
    w.write_all(&END.to_le_bytes())?;
    w.write_all(&(n as u64).to_le_bytes())?;
    Ok(n)
}

/// A writer that hashes what passes through it (the cache's trailing checksum).
struct Summed<W> {
    w: W,
    h: blake3::Hasher,
}

impl<W: std::io::Write> std::io::Write for Summed<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(b)?;
        self.h.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

struct Reader<R> {
    r: R,
    path: Vec<u8>,
}

impl<R: std::io::Read> Reader<R> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).ok()?;
        Some(b)
    }
    fn read_path(&mut self, len: usize) -> Option<()> {
        // No path is longer than PATH_MAX; a bigger length is damage, not a reason to allocate.
        if len > MAX_PATH {
            return None;
        }
        self.path.resize(len, 0);
        self.r.read_exact(&mut self.path).ok()
    }
    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    fn bytes(&mut self, max: usize) -> Option<Box<[u8]>> {
        let len = self.u32()? as usize;
        if len > max {
            return None;
        }
        let mut b = vec![0u8; len];
        self.r.read_exact(&mut b).ok()?;
        Some(b.into())
    }
    /// A record's xattrs: `Some(None)` none, `None` inside for "not read", `None` outside for
    /// damage. Bounds are the kernel's (names 255 bytes, values 64 KiB).
    fn xattrs(&mut self) -> Option<Option<Option<Xattrs>>> {
        match self.array::<1>()?[0] {
            0 => Some(None),
            1 => {
                let n = self.u32()? as usize;
                if n > 1 << 16 {
                    return None;
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push((self.bytes(255)?, self.bytes(1 << 16)?));
                }
                Some(Some((!v.is_empty()).then(|| v.into_boxed_slice())))
            }
            _ => None,
        }
    }
    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsx::entry_from_stat;

    /// The entries at `names` in `dir`, hashed when `hashed`.
    fn entries(dir: &std::path::Path, names: &[&str], hashed: bool) -> Entries {
        let mut es = Entries::new();
        for name in names {
            let st = rustix::fs::lstat(dir.join(name)).unwrap();
            let i = es.push(name.as_bytes(), entry_from_stat(&st));
            if hashed {
                let h = *blake3::hash(&std::fs::read(dir.join(name)).unwrap()).as_bytes();
                es.set_hash(i, Some(h));
            }
        }
        es
    }

    fn no_hashes(es: &Entries) -> bool {
        es.iter().all(|e| e.hash.is_none())
    }

    #[test]
    fn round_trip_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"one").unwrap();
        std::fs::write(t.path().join("b"), b"two").unwrap();
        let es = entries(t.path(), &["a", "b"], true);
        // Taken long after the files were written: both may be stored (rule 1).
        let later = (es[0].mtime().0 + 10, 0);
        let p = t.path().join("cache");
        assert_eq!(
            write_file(&p, records(es.iter(), later, true), later, true).unwrap(),
            2
        );
        let mut fresh = entries(t.path(), &["a", "b"], false);
        let f = fill_from_file(&p, &mut fresh, true).unwrap();
        assert_eq!(
            (f.hits, f.records, &f.xattrs_known[..]),
            (2, 2, &[true, true][..])
        );
        assert_eq!(fresh.hash(0), es.hash(0));

        // Truncated, garbage, other version, one flipped bit: ignored, nothing filled.
        let data = std::fs::read(&p).unwrap();
        let mut flipped = data.clone();
        flipped[30] ^= 1;
        for bad in [
            &data[..data.len() - 1],
            b"garbage".as_slice(),
            b"JSCACHE9",
            &flipped,
        ] {
            std::fs::write(&p, bad).unwrap();
            let mut fresh = entries(t.path(), &["a", "b"], false);
            assert!(fill_from_file(&p, &mut fresh, true).is_none());
            assert!(no_hashes(&fresh));
        }

        // A correct checksum over a malformed body (the count disagrees, found only after
        // the first record was already filled): still nothing filled.
        let mut body = data[..data.len() - 32].to_vec();
        let at = body.len() - 8;
        body[at..].copy_from_slice(&7u64.to_le_bytes());
        let sum = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&sum);
        std::fs::write(&p, &body).unwrap();
        let mut fresh = entries(t.path(), &["a", "b"], false);
        assert!(fill_from_file(&p, &mut fresh, true).is_none());
        assert!(no_hashes(&fresh));
    }

    #[test]
    fn xattrs_are_vouched_for_only_when_read_and_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("a");
        std::fs::write(&f, b"one").unwrap();
        let set = |v: &[u8]| rustix::fs::setxattr(&f, "user.k", v, rustix::fs::XattrFlags::empty());
        if let Err(e) = set(b"v1") {
            eprintln!("skipping: no user xattrs on {}: {e}", t.path().display());
            return;
        }
        let mut e = entries(t.path(), &["a"], true);
        e[0].set_xattrs(Some(
            vec![(b"user.k".as_slice().into(), b"v1".as_slice().into())].into(),
        ));
        let later = (e[0].ctime().0 + 10, 0);
        let p = t.path().join("cache");
        // A cache written by a run that did (or did not) read xattrs, then loaded.
        let store = |read: bool| {
            write_file(&p, records(e.iter(), later, read), later, read).unwrap();
        };
        let load = || {
            let mut now = entries(t.path(), &["a"], false);
            let got = fill_from_file(&p, &mut now, true).unwrap();
            (got, now)
        };

        // Written by a run that read xattrs: they come back with the hash.
        store(true);
        let (got, now) = load();
        assert_eq!(got.xattrs_known, [true]);
        assert_eq!(now[0].xattrs(), e[0].xattrs());

        // Written by a run that did not read them (--no-xattrs): the hash only.
        store(false);
        let (got, now) = load();
        assert_eq!((got.hits, &got.xattrs_known[..]), (1, &[false][..]));
        assert!(now[0].xattrs().is_none());
        assert!(!got.xattrs_complete);

        // Changed since (ctime moves): neither.
        store(true);
        std::thread::sleep(std::time::Duration::from_millis(20));
        set(b"v2").unwrap();
        let (got, _) = load();
        assert_eq!((got.hits, &got.xattrs_known[..]), (0, &[false][..]));
    }

    #[test]
    fn older_format_keeps_its_hashes_but_not_its_xattrs() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"one").unwrap();
        let es = entries(t.path(), &["a"], true);
        let later = (es[0].mtime().0 + 10, 0);
        let p = t.path().join("cache");
        write_file(&p, records(es.iter(), later, true), later, true).unwrap();
        // The same body under the older magic, checksummed again.
        let data = std::fs::read(&p).unwrap();
        let mut body = data[..data.len() - 32].to_vec();
        body[..8].copy_from_slice(MAGIC_XATTRS_UNTRUSTED);
        let sum = *blake3::hash(&body).as_bytes();
        body.extend_from_slice(&sum);
        std::fs::write(&p, &body).unwrap();
        let mut now = entries(t.path(), &["a"], false);
        let got = fill_from_file(&p, &mut now, true).unwrap();
        // Its "no xattrs" may hide an inherited ACL: read again, and the cache rewritten.
        assert_eq!((got.hits, &got.xattrs_known[..]), (1, &[false][..]));
        assert!(!got.xattrs_complete);
        assert_eq!(now.hash(0), es.hash(0));
    }

    #[test]
    fn racy_entries_are_neither_stored_nor_reused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"one").unwrap();
        let es = entries(t.path(), &["a"], true);
        let e = &es[0];
        // Rule 1: a stat taken in the same tick as the write is not stored.
        let p = t.path().join("cache");
        let stamp = e.mtime();
        assert_eq!(records(es.iter(), stamp, true).count(), 0);
        let later = (e.mtime().0 + 10, 0);
        write_file(&p, records(es.iter(), later, true), later, true).unwrap();
        // Rule 2: same size, same mtime (set back), new content -> ctime moved -> no reuse.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(t.path().join("a"), b"ONE").unwrap();
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: e.mtime().0,
                tv_nsec: e.mtime().1 as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: e.mtime().0,
                tv_nsec: e.mtime().1 as _,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            t.path().join("a"),
            &ts,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let mut now = entries(t.path(), &["a"], false);
        assert_eq!((now[0].mtime(), now[0].size), (e.mtime(), e.size));
        let f = fill_from_file(&p, &mut now, true).unwrap();
        assert_eq!(
            (f.hits, f.records),
            (0, 1),
            "a rewritten file must be hashed again"
        );
    }
}
