//! The stat cache: reusing a blake3 computed by an earlier run without reading the file again.
//!
//! A cached hash stands for the content the file had when it was hashed. The rules (racy-git):
//! 1. It is *written* only for entries whose ctime and mtime are older than the moment their
//!    stat was taken minus the timestamp granularity ([`cacheable`]). A file changed in the same
//!    clock tick as that stat could otherwise keep identical timestamps with new content.
//! 2. It is *reused* only when size, mtime and ctime (ns), inode, device, type and mode all match
//!    the current `lstat` ([`reuse`]). ctime cannot be set from user space, so `touch -d` back to
//!    the old mtime after rewriting a file still changes ctime and forces a re-hash.
//!
//! The cache never lives inside a synced tree; see [`crate::journal`] for where it goes.

use crate::entry::{Entry, Hash, Kind};

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
    let margin = if e.ctime_nsec == 0 && e.mtime_nsec == 0 {
        MARGIN_COARSE_NS
    } else {
        MARGIN_FINE_NS
    };
    let limit = ns(stamp) - margin;
    ns((e.ctime, e.ctime_nsec)) < limit && ns((e.mtime, e.mtime_nsec)) < limit
}

/// What the cache keeps of one regular file: the stat fields rule 2 compares, and the hash.
#[derive(Clone, Debug)]
pub struct Cached {
    pub path: Box<[u8]>,
    pub size: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    pub ino: u64,
    pub dev: u64,
    pub mode: u32,
    pub hash: Hash,
}

/// Rule 2: the cached hash, if `cached` describes exactly the inode `cur` describes now.
pub fn reuse(cached: &Cached, cur: &Entry) -> Option<Hash> {
    let same = cur.kind == Kind::File
        && cached.size == cur.size
        && cached.mtime == (cur.mtime, cur.mtime_nsec)
        && cached.ctime == (cur.ctime, cur.ctime_nsec)
        && cached.ino == cur.ino
        && cached.dev == cur.dev
        && cached.mode == cur.mode;
    same.then_some(cached.hash)
}

// On disk: MAGIC, stamp (i64 s, u32 ns), count (u64), then per entry: path length (u32), path,
// size, mtime s, mtime ns, ctime s, ctime ns, ino, dev, mode, blake3 — little-endian — and
// last the blake3 of every byte before it. Binary because a no-op sync reads and writes it for
// every file of both trees, and text parsing was a third of such a run. The user-facing format
// is the manifest; this is private state. The trailing checksum is what lets a damaged cache
// be ignored rather than believed: a flipped bit in a stored hash still parses, and would make
// `verify` report an identical file as changed (or, against the other side's hash, hide one).
const MAGIC: &[u8; 8] = b"JSCACHE2";

/// Fills hashes of `entries` (sorted) straight from the cache file, without building the cache
/// in memory (a whole tree's cache was a large part of a run's peak). Returns the hashes reused
/// and the records the file holds; `None` when the file is missing or not to be believed.
pub fn fill_from_file(path: &std::path::Path, entries: &mut [Entry]) -> Option<(usize, usize)> {
    let all = std::fs::read(path).ok()?;
    let (data, sum) = all.split_at(all.len().checked_sub(32)?);
    if blake3::hash(data).as_bytes() != sum {
        return None;
    }
    let mut r = Reader { d: data, at: 0 };
    if r.take(8)? != MAGIC {
        return None;
    }
    let _stamp = (r.i64()?, r.u32()?);
    let n = r.u64()?;
    // Parse everything first: a file that turns out malformed halfway must fill nothing.
    let mut fills: Vec<(usize, Hash)> = Vec::new();
    let mut j = 0;
    let mut prev: &[u8] = &[];
    for k in 0..n {
        let len = r.u32()? as usize;
        let path = r.take(len)?;
        if k > 0 && path <= prev {
            return None;
        }
        prev = path;
        let c = Cached {
            path: Box::default(),
            size: r.u64()?,
            mtime: (r.i64()?, r.u32()?),
            ctime: (r.i64()?, r.u32()?),
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
            hash: r.take(32)?.try_into().ok()?,
        };
        while j < entries.len() && &entries[j].path[..] < path {
            j += 1;
        }
        if j < entries.len() && &entries[j].path[..] == path {
            if let Some(h) = reuse(&c, &entries[j]) {
                fills.push((j, h));
            }
        }
    }
    if r.at != data.len() {
        return None;
    }
    let hits = fills.len();
    for (j, h) in fills {
        entries[j].hash = Some(h);
    }
    Some((hits, n as usize))
}

/// Encodes the cache of `entries` (sorted; hashed files that rule 1 allows) without building
/// it in memory first. Returns the bytes to [`write_bytes`] and the number of records.
pub fn encode<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    stamp: (i64, u32),
) -> (Vec<u8>, usize) {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stamp.0.to_le_bytes());
    out.extend_from_slice(&stamp.1.to_le_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    let mut n = 0usize;
    for e in entries {
        let Some(hash) = e.hash else { continue };
        if e.kind != Kind::File || !cacheable(e, stamp) {
            continue;
        }
        out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.path);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime.to_le_bytes());
        out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
        out.extend_from_slice(&e.ctime.to_le_bytes());
        out.extend_from_slice(&e.ctime_nsec.to_le_bytes());
        out.extend_from_slice(&e.ino.to_le_bytes());
        out.extend_from_slice(&e.dev.to_le_bytes());
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&hash);
        n += 1;
    }
    out[count_at..count_at + 8].copy_from_slice(&(n as u64).to_le_bytes());
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    (out, n)
}

/// Writes encoded cache bytes atomically (temp file and rename; not fsynced: a cache lost in a
/// crash costs a re-hash, and a torn one fails its checksum in [`fill_from_file`]).
pub fn write_bytes(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

struct Reader<'a> {
    d: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.d.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::entry_from_stat;

    fn entry(dir: &std::path::Path, name: &str) -> Entry {
        let st = rustix::fs::lstat(dir.join(name)).unwrap();
        let mut e = entry_from_stat(name.as_bytes().into(), &st);
        e.hash = Some(*blake3::hash(&std::fs::read(dir.join(name)).unwrap()).as_bytes());
        e
    }

    #[test]
    fn round_trip_and_corruption() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"one").unwrap();
        std::fs::write(t.path().join("b"), b"two").unwrap();
        let es = vec![entry(t.path(), "a"), entry(t.path(), "b")];
        // Taken long after the files were written: both may be stored (rule 1).
        let later = (es[0].mtime + 10, 0);
        let (bytes, n) = encode(&es, later);
        assert_eq!(n, 2);
        let p = t.path().join("cache");
        write_bytes(&p, &bytes).unwrap();
        let mut fresh = vec![entry(t.path(), "a"), entry(t.path(), "b")];
        fresh.iter_mut().for_each(|e| e.hash = None);
        assert_eq!(fill_from_file(&p, &mut fresh), Some((2, 2)));
        assert_eq!(fresh[0].hash, es[0].hash);

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
            fresh.iter_mut().for_each(|e| e.hash = None);
            assert!(fill_from_file(&p, &mut fresh).is_none());
            assert!(fresh.iter().all(|e| e.hash.is_none()));
        }
    }

    #[test]
    fn racy_entries_are_neither_stored_nor_reused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"one").unwrap();
        let e = entry(t.path(), "a");
        // Rule 1: a stat taken in the same tick as the write is not stored.
        assert_eq!(
            encode(std::slice::from_ref(&e), (e.mtime, e.mtime_nsec)).1,
            0
        );
        let (bytes, _) = encode(std::slice::from_ref(&e), (e.mtime + 10, 0));
        let p = t.path().join("cache");
        write_bytes(&p, &bytes).unwrap();
        // Rule 2: same size, same mtime (set back), new content -> ctime moved -> no reuse.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(t.path().join("a"), b"ONE").unwrap();
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: e.mtime,
                tv_nsec: e.mtime_nsec as _,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: e.mtime,
                tv_nsec: e.mtime_nsec as _,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            t.path().join("a"),
            &ts,
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let mut now = vec![entry(t.path(), "a")];
        assert_eq!(
            (now[0].mtime, now[0].mtime_nsec, now[0].size),
            (e.mtime, e.mtime_nsec, e.size)
        );
        now[0].hash = None;
        assert_eq!(
            fill_from_file(&p, &mut now),
            Some((0, 1)),
            "a rewritten file must be hashed again"
        );
    }
}
