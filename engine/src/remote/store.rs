//! The pusher's store of what it pushed before, keyed by blake3: the references its deltas
//! are made against (see `docs/protocol.md`, *Deltas*).
//!
//! Why the pusher keeps the old content rather than asking the host for block signatures (as
//! rsync does): after a push the hosts hold exactly the jail's content, which the pusher has
//! in hand at that moment; keeping it costs one compression of each new content for the whole
//! fleet and some disk here, and then every later delta is made once per distinct old version
//! for every host that holds it, with zstd's full match finder rather than fixed blocks, and
//! with no round trip of signatures (one per changed file per host with rsync). A host holding
//! content the store no longer has (pushed from elsewhere, or evicted) gets its files by block
//! signatures (protocol 6, `sig.rs`) or whole: the store is a cache, never needed for
//! correctness.
//!
//! Layout: `DIR/HEX`, one zstd frame of the whole content, written to a temporary name and
//! renamed. Every read is checked against its hash (a damaged entry is removed and reads as
//! absent). Bounded by size: after each push the content of the jail just pushed is kept and
//! the rest goes, oldest first, until the store fits.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::entry::Hash;
use crate::hash::to_hex;

pub struct Store {
    dir: PathBuf,
    /// Compressed bytes the store may hold.
    max: u64,
}

impl Store {
    /// Opens (or makes, private) the store at `dir`, holding at most `max` bytes.
    pub fn open(dir: &Path, max: u64) -> io::Result<Store> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            max,
        })
    }

    fn path(&self, h: &Hash) -> PathBuf {
        self.dir.join(to_hex(h))
    }

    pub fn has(&self, h: &Hash) -> bool {
        self.path(h).is_file()
    }

    /// The content of `h` (at most `limit` bytes), if held and intact.
    pub fn get(&self, h: &Hash, limit: u64) -> Option<Vec<u8>> {
        let p = self.path(h);
        let z = fs::read(&p).ok()?;
        let data = zstd::bulk::decompress(&z, limit as usize).ok();
        match data {
            Some(d) if blake3::hash(&d).as_bytes() == h => Some(d),
            _ => {
                // Damaged or not what its name says: never used, made again next time.
                let _ = fs::remove_file(&p);
                None
            }
        }
    }

    /// Keeps `data` as the content of `h` (the caller has checked the hash).
    pub fn put(&self, h: &Hash, data: &[u8]) -> io::Result<()> {
        let p = self.path(h);
        if p.is_file() {
            return Ok(());
        }
        // Level 1: the store is written once per new content and read rarely.
        let z = zstd::bulk::compress(data, 1)?;
        let tmp = self
            .dir
            .join(format!(".{}.{}", to_hex(h), std::process::id()));
        fs::write(&tmp, z)?;
        fs::rename(&tmp, &p)
    }

    /// Removes entries not in `keep`, oldest first, until the store fits its size; then, if
    /// it still does not, the oldest of the rest. Leftover temporary files go too.
    pub fn prune(&self, keep: &HashSet<Hash>) -> io::Result<()> {
        let mut all = Vec::new();
        let mut total = 0u64;
        for e in fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let Ok(md) = e.metadata() else { continue };
            if name.starts_with('.') {
                let _ = fs::remove_file(e.path());
                continue;
            }
            let kept = crate::hash::from_hex(&name).is_some_and(|h| keep.contains(&h));
            total += md.len();
            all.push((kept, md.modified().ok(), md.len(), e.path()));
        }
        all.sort_by_key(|(kept, t, _, _)| (*kept, *t));
        for (_, _, len, p) in all {
            if total <= self.max {
                break;
            }
            if fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_round_trips_a_damaged_entry_reads_as_absent_and_pruning_keeps_the_jails() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&d.path().join("store"), 1 << 20).unwrap();
        let (a, b) = (vec![1u8; 100_000], vec![2u8; 300_000]);
        let (ha, hb) = (*blake3::hash(&a).as_bytes(), *blake3::hash(&b).as_bytes());
        s.put(&ha, &a).unwrap();
        s.put(&hb, &b).unwrap();
        assert_eq!(s.get(&ha, 1 << 20).unwrap(), a);
        assert!(s.get(&ha, 10).is_none(), "over the limit");
        // Another content under a's name: refused and removed.
        fs::write(s.path(&ha), zstd::bulk::compress(&b, 1).unwrap()).unwrap();
        assert!(s.get(&ha, 1 << 20).is_none());
        assert!(!s.has(&ha));
        s.put(&ha, &a).unwrap();
        // A store of 0 bytes keeps nothing; pruning removes what the jail no longer has first.
        let small = Store::open(&d.path().join("store"), 0).unwrap();
        small.prune(&HashSet::from([hb])).unwrap();
        assert!(!small.has(&ha) && !small.has(&hb));
        s.put(&ha, &a).unwrap();
        s.put(&hb, &b).unwrap();
        let tiny = Store {
            dir: s.dir.clone(),
            max: fs::metadata(s.path(&hb)).unwrap().len(),
        };
        tiny.prune(&HashSet::from([hb])).unwrap();
        assert!(!tiny.has(&ha) && tiny.has(&hb));
    }
}
