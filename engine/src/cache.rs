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
use crate::manifest::Manifest;

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

/// Rule 2: the cached hash, if `cached` describes exactly the inode `cur` describes now.
pub fn reuse(cached: &Entry, cur: &Entry) -> Option<Hash> {
    let same = cached.kind == Kind::File
        && cur.kind == Kind::File
        && cached.size == cur.size
        && cached.mtime == cur.mtime
        && cached.mtime_nsec == cur.mtime_nsec
        && cached.ctime == cur.ctime
        && cached.ctime_nsec == cur.ctime_nsec
        && cached.ino == cur.ino
        && cached.dev == cur.dev
        && cached.mode == cur.mode;
    if same {
        cached.hash
    } else {
        None
    }
}

/// Fills in hashes of `entries` (sorted) from a cache manifest (sorted) where rule 2 allows.
/// Returns how many were reused.
pub fn fill_from(entries: &mut [Entry], cache: &Manifest) -> usize {
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

/// Builds the cache to store: every entry keeps its stat; hashes only where rule 1 allows.
pub fn to_store(entries: &[Entry], stamp: (i64, u32)) -> Manifest {
    let entries = entries
        .iter()
        .filter(|e| e.kind == Kind::File && e.hash.is_some())
        .map(|e| {
            let mut e = e.clone();
            if !cacheable(&e, stamp) {
                e.hash = None;
            }
            e
        })
        .filter(|e| e.hash.is_some())
        .collect();
    Manifest { stamp, entries }
}
