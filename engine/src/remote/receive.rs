//! What a push session receives: the manifests (whole, or from version 5 as a delta against
//! the one this host received last, which it keeps in the tree's state), and the blobs it
//! asked for (whole, in compressed chunks, or as a delta against this host's old version of
//! the file). Everything is bounded before it is allocated and checked against its hash
//! before it is used: a wrong delta is an error, never a wrong file.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use super::session::Session;
use super::shadow::{write_runs, Work};
use super::wire::{self, t, Dec};
use super::{RemoteError, Result};
use crate::entry::Hash;
use crate::error::IoContext;
use crate::fsx::{self, split_parent};
use crate::hash::to_hex;
use crate::manifest;
use crate::sync::{SyncOpts, Tree};

impl Session<'_> {
    /// Reads the manifest of each tree: chunks until MANIFEST_END, or (5) MANIFEST_DELTA, the
    /// chunks of a delta against the manifest this host holds, and MANIFEST_END. The first
    /// frame is already in the buffer. Returns each manifest and its text.
    pub(super) fn manifests(
        &mut self,
        trees: &[Vec<u8>],
        first_kind: u8,
    ) -> Result<Vec<(manifest::Manifest, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut first = true;
        for (k, rel) in trees.iter().enumerate() {
            let mut text = Vec::new();
            // (base text, hash and length of the text it makes).
            let mut delta: Option<(usize, Hash, u64)> = None;
            let mut frames = 0;
            loop {
                let kind = if std::mem::take(&mut first) {
                    first_kind
                } else {
                    self.recv()?
                };
                frames += 1;
                match kind {
                    t::MANIFEST_DELTA if frames == 1 && self.proto >= 5 => {
                        delta = Some(self.manifest_delta_head(k)?);
                    }
                    t::MANIFEST => {
                        let raw = match delta {
                            Some(_) => self.buf.clone(),
                            None => wire::unchunk(&self.buf, wire::CHUNK)?,
                        };
                        // A delta is never larger than the text it makes (plus zstd's
                        // framing): refused before it is held.
                        let most = match delta {
                            Some((_, _, len)) => len + (1 << 20),
                            None => wire::MAX_MANIFEST,
                        };
                        if (text.len() + raw.len()) as u64 > most {
                            return Err(RemoteError::Refused(format!(
                                "manifest of {} over {} bytes",
                                wire::printable(rel),
                                wire::MAX_MANIFEST
                            )));
                        }
                        text.extend_from_slice(&raw);
                    }
                    t::MANIFEST_END => {
                        let mut d = Dec::new(&self.buf, "MANIFEST_END");
                        if d.u32()? as usize != k {
                            return Err(RemoteError::Protocol("manifests out of order".into()));
                        }
                        d.end()?;
                        break;
                    }
                    k => {
                        return Err(RemoteError::Protocol(format!(
                            "expected MANIFEST, got {}",
                            t::name(k)
                        )))
                    }
                }
            }
            if let Some((k, hash, len)) = delta {
                let base = &self.held[k].as_ref().expect("checked").1;
                text = super::delta::decode(base, &text, len)?;
                if blake3::hash(&text).as_bytes() != &hash {
                    return Err(RemoteError::Refused(format!(
                        "the manifest of {} made from its delta does not match its hash: nothing was changed",
                        wire::printable(rel)
                    )));
                }
            }
            let shown = PathBuf::from(format!("manifest of {}", String::from_utf8_lossy(rel)));
            // Strict: structure, no `..`, every file with its hash (see `manifest`).
            out.push((manifest::parse(&shown, &text)?, text));
        }
        Ok(out)
    }

    /// MANIFEST_DELTA's payload: the base must be the manifest this host said it holds.
    fn manifest_delta_head(&self, k: usize) -> Result<(usize, Hash, u64)> {
        let mut d = Dec::new(&self.buf, "MANIFEST_DELTA");
        let (base, hash, len) = (d.hash()?, d.hash()?, d.u64()?);
        d.end()?;
        if self.held.get(k).and_then(|h| h.as_ref()).map(|h| h.0) != Some(base) {
            return Err(RemoteError::Protocol(
                "a manifest delta against a manifest this host does not hold".into(),
            ));
        }
        if len > super::delta::MAX {
            return Err(RemoteError::Protocol("a manifest delta too large".into()));
        }
        Ok((k, hash, len))
    }

    pub(super) fn receive_blobs(
        &mut self,
        work: &Work,
        want: &HashMap<Hash, u64>,
        bases: &HashMap<Hash, (Hash, usize, usize)>,
        trees: &[Tree],
        opts: &SyncOpts,
    ) -> Result<()> {
        let mut got: HashSet<Hash> = HashSet::new();
        // (6) The wanted hashes this host sent block signatures of.
        let mut signed: HashSet<Hash> = HashSet::new();
        let dir = fsx::open_root_nofollow(&work.blobs).at(&work.blobs)?;
        let mut first = true;
        loop {
            if let Some(sig) = opts.stop_signal() {
                return Err(RemoteError::Aborted(format!(
                    "stopped by signal {sig} while receiving: nothing was switched"
                )));
            }
            let kind = self.recv()?;
            match kind {
                t::SIG_ASK if self.proto >= 6 && std::mem::take(&mut first) => {
                    signed = self.send_sigs(bases, trees)?;
                    continue;
                }
                _ => first = false,
            }
            match kind {
                t::BLOBS_DONE => break,
                t::BLOB => {
                    let mut d = Dec::new(&self.buf, "BLOB");
                    let (h, size) = (d.hash()?, d.u64()?);
                    d.end()?;
                    if want.get(&h) != Some(&size) || got.contains(&h) {
                        return Err(RemoteError::Protocol(format!(
                            "blob {} of {size} bytes was not asked for",
                            to_hex(&h)
                        )));
                    }
                    self.receive_blob(dir.as_fd(), &h, size)?;
                    got.insert(h);
                }
                t::DELTA | t::SIG_DELTA if self.proto >= 5 => {
                    let by_sig = kind == t::SIG_DELTA;
                    let mut d = Dec::new(&self.buf, t::name(kind));
                    let (h, size, base) = (d.hash()?, d.u64()?, d.hash()?);
                    d.end()?;
                    let old = bases.get(&h).filter(|b| b.0 == base);
                    let asked = !by_sig || (self.proto >= 6 && signed.contains(&h));
                    let (Some(&(_, k, j)), false, true) = (old, got.contains(&h), asked) else {
                        return Err(RemoteError::Protocol(format!(
                            "a delta of {} against {} was not asked for",
                            to_hex(&h),
                            to_hex(&base)
                        )));
                    };
                    if want.get(&h) != Some(&size) {
                        return Err(RemoteError::Protocol("a delta of another size".into()));
                    }
                    let old = (&base, &trees[k], j);
                    self.receive_delta(dir.as_fd(), &h, size, old, by_sig)?;
                    got.insert(h);
                }
                k => {
                    return Err(RemoteError::Protocol(format!(
                        "expected BLOB, got {}",
                        t::name(k)
                    )))
                }
            }
        }
        if got.len() != want.len() {
            return Err(RemoteError::Protocol(format!(
                "{} blobs asked for, {} received",
                want.len(),
                got.len()
            )));
        }
        Ok(())
    }

    /// One blob sent as a delta against this host's old version of a file (`old`: its hash,
    /// tree and live index) into `dir/HEX`: the old version read and checked against its
    /// hash, the delta's chunks gathered (never more than a whole file's worth), decoded to
    /// exactly `size` bytes and checked against `h` before anything is written. A delta that
    /// does not make `h` is an error: nothing is staged, the host stays as it was.
    fn receive_delta(
        &mut self,
        dir: BorrowedFd<'_>,
        h: &Hash,
        size: u64,
        old: (&Hash, &Tree, usize),
        by_sig: bool,
    ) -> Result<()> {
        let (base, t, j) = old;
        let lp = t.dst.path(j);
        let shown = t.dst_path.join(fsx::os(lp));
        let old = read_live(&t.dst_path, lp).at(&shown)?;
        if blake3::hash(&old).as_bytes() != base {
            return Err(RemoteError::Refused(format!(
                "{}: changed since it was scanned (the base of a delta); nothing was changed (run again)",
                shown.display()
            )));
        }
        let mut z = Vec::new();
        loop {
            match self.recv()? {
                t::DATA => {
                    if (z.len() + self.buf.len()) as u64 > super::delta::MAX + (1 << 20) {
                        return Err(RemoteError::Protocol("a delta larger than its file".into()));
                    }
                    z.extend_from_slice(&self.buf);
                }
                t::BLOB_END => {
                    Dec::new(&self.buf, "BLOB_END").end()?;
                    break;
                }
                k => {
                    return Err(RemoteError::Protocol(format!(
                        "expected DATA, got {}",
                        t::name(k)
                    )))
                }
            }
        }
        let name = to_hex(h);
        let how = if by_sig {
            "a signature delta"
        } else {
            "a delta"
        };
        let wrong = |why: String| {
            RemoteError::Refused(format!(
                "blob {name}, sent as {how} against {}: {why}: nothing was changed",
                shown.display()
            ))
        };
        let data = if by_sig {
            super::sig::decode(&old, &z, size)
        } else {
            super::delta::decode(&old, &z, size)
        };
        let data = data.map_err(|e| wrong(e.to_string()))?;
        if blake3::hash(&data).as_bytes() != h {
            return Err(wrong("what it makes does not match its hash".into()));
        }
        let f = fs::File::from(fsx::create_excl_at(dir, name.as_bytes())?);
        write_runs(&f, &data, 0)?;
        f.set_len(size)?;
        Ok(())
    }

    /// (6) SIG_ASK: the block signatures of this host's old versions of the files asked (each
    /// a wanted hash with an old version named in WANT), one SIG each, in the order asked. An
    /// old version that cannot be read as named (changed since the scan) gets an empty one:
    /// its file is sent whole. Returns the hashes signed, the ones a SIG_DELTA may come for.
    fn send_sigs(
        &mut self,
        bases: &HashMap<Hash, (Hash, usize, usize)>,
        trees: &[Tree],
    ) -> Result<HashSet<Hash>> {
        use rayon::prelude::*;
        if self.buf.is_empty() || !self.buf.len().is_multiple_of(32) {
            return Err(RemoteError::Protocol("SIG_ASK not a list of hashes".into()));
        }
        let mut asked = HashSet::new();
        let mut files = Vec::new();
        for c in self.buf.chunks(32) {
            let h: Hash = c.try_into().expect("32");
            let Some(&(base, k, j)) = bases.get(&h).filter(|_| asked.insert(h)) else {
                return Err(RemoteError::Protocol(format!(
                    "signatures asked for {}, not a wanted file with an old version (or twice)",
                    to_hex(&h)
                )));
            };
            files.push((
                h,
                base,
                trees[k].dst_path.clone(),
                trees[k].dst.path(j).to_vec(),
            ));
        }
        self.out.doing(SIGNING, None);
        let sigs: Vec<Vec<u8>> = files
            .par_iter()
            .map(|(h, base, root, lp)| {
                let sig = match read_live(root, lp) {
                    Ok(old) if blake3::hash(&old).as_bytes() == base => super::sig::Sig::of(&old),
                    _ => super::sig::Sig::none(),
                };
                crate::progress::work(1);
                sig.encode(h)
            })
            .collect();
        for p in sigs {
            self.send(t::SIG, &p)?;
        }
        Ok(asked)
    }

    /// One blob into `dir/HEX`: chunks decompressed (never past the size announced), zero
    /// blocks left as holes, checked against its hash.
    fn receive_blob(&mut self, dir: BorrowedFd<'_>, h: &Hash, size: u64) -> Result<()> {
        let name = to_hex(h);
        let fd = fsx::create_excl_at(dir, name.as_bytes())?;
        let f = fs::File::from(fd);
        let mut hasher = blake3::Hasher::new();
        let mut at = 0u64;
        loop {
            match self.recv()? {
                t::DATA => {
                    let left = (size - at).min(wire::CHUNK as u64) as usize;
                    if left == 0 {
                        return Err(RemoteError::Protocol("blob longer than announced".into()));
                    }
                    let raw = wire::unchunk(&self.buf, left)?;
                    hasher.update(&raw);
                    write_runs(&f, &raw, at)?;
                    at += raw.len() as u64;
                }
                t::BLOB_END => {
                    Dec::new(&self.buf, "BLOB_END").end()?;
                    break;
                }
                k => {
                    return Err(RemoteError::Protocol(format!(
                        "expected DATA, got {}",
                        t::name(k)
                    )))
                }
            }
        }
        f.set_len(size)?;
        if at != size || hasher.finalize().as_bytes() != h {
            return Err(RemoteError::Refused(format!(
                "blob {name}: its content does not match its hash (did the jail change during the push?): nothing was changed"
            )));
        }
        Ok(())
    }
}

/// What ALIVE says while the signatures are made.
const SIGNING: &str = "reading its old files for block signatures";

/// The live file `lp` of the tree at `root` (opened beneath it, no symlink followed), at most
/// [`super::delta::MAX`] bytes (a base is never larger: more is an error).
fn read_live(root: &std::path::Path, lp: &[u8]) -> io::Result<Vec<u8>> {
    let r = fsx::open_tree(root)?;
    let (parent, name) = split_parent(lp);
    let d = fsx::open_dir_beneath(r.as_fd(), parent)?;
    let f = fs::File::from(fsx::open_read_at(d.as_fd(), name)?);
    let mut v = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(f, super::delta::MAX + 1), &mut v)?;
    if v.len() as u64 > super::delta::MAX {
        return Err(io::Error::other("larger than a delta's base may be"));
    }
    Ok(v)
}
