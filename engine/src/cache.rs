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

/// A tree's stat cache, sorted by path.
#[derive(Default)]
pub struct Cache {
    pub stamp: (i64, u32),
    pub entries: Vec<Cached>,
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

/// Fills in hashes of `entries` (sorted) from a cache (sorted) where rule 2 allows.
/// Returns how many were reused.
pub fn fill_from(entries: &mut [Entry], cache: &Cache) -> usize {
    let mut n = 0;
    let mut j = 0;
    let c = &cache.entries;
    for e in entries.iter_mut().filter(|e| e.kind == Kind::File) {
        while j < c.len() && c[j].path < e.path {
            j += 1;
        }
        if j < c.len() && c[j].path == e.path {
            if let Some(h) = reuse(&c[j], e) {
                e.hash = Some(h);
                n += 1;
            }
        }
    }
    n
}

/// Builds the cache to store: hashed files whose stat rule 1 allows.
pub fn to_store<'a>(entries: impl IntoIterator<Item = &'a Entry>, stamp: (i64, u32)) -> Cache {
    let entries = entries
        .into_iter()
        .filter(|e| e.kind == Kind::File && cacheable(e, stamp))
        .filter_map(|e| {
            Some(Cached {
                path: e.path.clone(),
                size: e.size,
                mtime: (e.mtime, e.mtime_nsec),
                ctime: (e.ctime, e.ctime_nsec),
                ino: e.ino,
                dev: e.dev,
                mode: e.mode,
                hash: e.hash?,
            })
        })
        .collect();
    Cache { stamp, entries }
}

// On disk: MAGIC, stamp (i64 s, u32 ns), count (u64), then per entry: path length (u32), path,
// size, mtime s, mtime ns, ctime s, ctime ns, ino, dev, mode, blake3 — little-endian — and
// last the blake3 of every byte before it. Binary because a no-op sync reads and writes it for
// every file of both trees, and text parsing was a third of such a run. The user-facing format
// is the manifest; this is private state. The trailing checksum is what lets a damaged cache
// be ignored rather than believed: a flipped bit in a stored hash still parses, and would make
// `verify` report an identical file as changed (or, against the other side's hash, hide one).
const MAGIC: &[u8; 8] = b"JSCACHE2";

/// Reads a cache; a missing, truncated, corrupt or other-version file is `None` (it can only
/// cost a re-hash).
pub fn load(path: &std::path::Path) -> Option<Cache> {
    let all = std::fs::read(path).ok()?;
    let (data, sum) = all.split_at(all.len().checked_sub(32)?);
    if blake3::hash(data).as_bytes() != sum {
        return None;
    }
    let mut r = Reader { d: data, at: 0 };
    if r.take(8)? != MAGIC {
        return None;
    }
    let stamp = (r.i64()?, r.u32()?);
    let n = r.u64()?;
    let mut entries = Vec::with_capacity(n.min(1 << 24) as usize);
    for _ in 0..n {
        let len = r.u32()? as usize;
        let path: Box<[u8]> = r.take(len)?.into();
        entries.push(Cached {
            path,
            size: r.u64()?,
            mtime: (r.i64()?, r.u32()?),
            ctime: (r.i64()?, r.u32()?),
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
            hash: r.take(32)?.try_into().ok()?,
        });
    }
    if r.at != data.len() || !entries.windows(2).all(|w| w[0].path < w[1].path) {
        return None;
    }
    Some(Cache { stamp, entries })
}

/// Writes a cache atomically (temp file and rename; not fsynced, see [`load`]).
pub fn save(path: &std::path::Path, c: &Cache) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(24 + c.entries.len() * 120);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&c.stamp.0.to_le_bytes());
    out.extend_from_slice(&c.stamp.1.to_le_bytes());
    out.extend_from_slice(&(c.entries.len() as u64).to_le_bytes());
    for e in &c.entries {
        out.extend_from_slice(&(e.path.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.path);
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime.0.to_le_bytes());
        out.extend_from_slice(&e.mtime.1.to_le_bytes());
        out.extend_from_slice(&e.ctime.0.to_le_bytes());
        out.extend_from_slice(&e.ctime.1.to_le_bytes());
        out.extend_from_slice(&e.ino.to_le_bytes());
        out.extend_from_slice(&e.dev.to_le_bytes());
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.hash);
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &out)?;
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
        let c = to_store(&es, later);
        assert_eq!(c.entries.len(), 2);
        let p = t.path().join("cache");
        save(&p, &c).unwrap();
        let back = load(&p).expect("loads");
        assert_eq!(back.entries.len(), 2);
        let mut fresh = vec![entry(t.path(), "a"), entry(t.path(), "b")];
        fresh.iter_mut().for_each(|e| e.hash = None);
        assert_eq!(fill_from(&mut fresh, &back), 2);
        assert_eq!(fresh[0].hash, es[0].hash);

        // Truncated, garbage, other version: ignored.
        let data = std::fs::read(&p).unwrap();
        for bad in [&data[..data.len() - 1], b"garbage".as_slice(), b"JSCACHE9"] {
            std::fs::write(&p, bad).unwrap();
            assert!(load(&p).is_none());
        }
    }

    #[test]
    fn racy_entries_are_neither_stored_nor_reused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a"), b"one").unwrap();
        let e = entry(t.path(), "a");
        // Rule 1: a stat taken in the same tick as the write is not stored.
        assert!(to_store(std::slice::from_ref(&e), (e.mtime, e.mtime_nsec))
            .entries
            .is_empty());
        let c = to_store(std::slice::from_ref(&e), (e.mtime + 10, 0));
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
            fill_from(&mut now, &c),
            0,
            "a rewritten file must be hashed again"
        );
    }
}
