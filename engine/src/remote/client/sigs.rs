//! (6) The pusher's half of block signatures (see [`super::super::sig`]): for the wanted files
//! whose old version on the host the store does not hold, one SIG_ASK per host before any
//! content moves, and a SIG_DELTA for each file the host's blocks cover enough of.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::delta;
use super::super::sig::{self, Sig};
use super::super::wire::{self, t, Enc};
use super::super::{RemoteError, Result};
use super::{Conn, Source};
use crate::entry::Hash;

/// Smallest new content worth asking a signature for: below it a file is a few hundred bytes
/// compressed, about what its signature and instructions would cost.
const ASK_MIN: u64 = 2048;
/// Most files one SIG_ASK names (one frame); any beyond go as before.
const ASK_MAX: usize = wire::CHUNK / 32;
/// The shared chunks' key for a signature delta: `(h, id of the signature, SIG_DELTA)`.
const SIG_DELTA: u64 = u64::MAX - 1;

/// Signatures a host sent: per wanted hash, the blake3 of the SIG (hosts sending the same one
/// share the delta made against it) and the signature.
pub type Sigs = HashMap<Hash, (Hash, Arc<Sig>)>;

/// How one wanted content went.
pub enum Sent {
    Whole,
    Delta,
    SigDelta,
}

impl Source {
    /// Does the store hold `base` (a zstd delta is then made against it)?
    fn holds(&self, base: &Hash) -> bool {
        self.store.as_ref().is_some_and(|s| s.has(base))
    }

    /// Blob `h` as instructions against the host's blocks `s` (made once per distinct
    /// signature for the fleet), or `None` when that does not pay.
    fn sig_delta(&self, h: &Hash, s: &Sig, id: &Hash) -> Option<Arc<Vec<u8>>> {
        let &(k, i) = self.by_hash.get(h)?;
        self.chunk((*h, *id, SIG_DELTA), || {
            let new = self.read_whole(k, i)?;
            if blake3::hash(&new).as_bytes() != h {
                // The jail changed since its scan: sent whole, the host's check says so.
                return Err(io::Error::other("changed since the scan"));
            }
            sig::encode(s, &new, self.level)?.ok_or_else(|| io::Error::other("does not pay"))
        })
        .ok()
    }
}

impl Conn {
    /// Asks the host for the signatures of its old versions of the wanted files the store
    /// does not hold (of a size worth it): one SIG_ASK, one SIG each in order. Nothing is
    /// asked before version 6, nor when no file qualifies.
    pub(super) fn ask_sigs(
        &mut self,
        src: &Source,
        want: &[Hash],
        bases: &HashMap<Hash, Hash>,
    ) -> Result<Sigs> {
        let mut out = Sigs::new();
        if self.proto < 6 {
            return Ok(out);
        }
        let size = |h: &Hash| {
            let (k, i) = src.by_hash[h];
            src.trees[k].entries.at(i).size
        };
        let ask: Vec<Hash> = want
            .iter()
            .filter(|h| bases.get(*h).is_some_and(|b| !src.holds(b)))
            .filter(|h| (ASK_MIN..=delta::MAX).contains(&size(h)))
            .take(ASK_MAX)
            .copied()
            .collect();
        if ask.is_empty() {
            return Ok(out);
        }
        self.send(t::SIG_ASK, &ask.concat())?;
        self.flush()?;
        for h in &ask {
            self.expect(t::SIG)?;
            let (got, s) =
                Sig::decode(&self.buf).map_err(|e| RemoteError::Protocol(e.to_string()))?;
            if got != *h {
                return Err(RemoteError::Protocol("SIG not the one asked for".into()));
            }
            if !s.is_none() {
                out.insert(got, (*blake3::hash(&self.buf).as_bytes(), Arc::new(s)));
            }
        }
        Ok(out)
    }

    /// Sends wanted content `h`: a zstd delta against the host's old version when the store
    /// holds it; else instructions against the host's blocks when they pay; else whole.
    pub(super) fn send_wanted(
        &mut self,
        src: &Source,
        h: &Hash,
        bases: &HashMap<Hash, Hash>,
        sigs: &Sigs,
        raw: &mut [u8],
    ) -> Result<Sent> {
        let base = bases.get(h);
        if let Some((b, z)) = base.and_then(|b| Some((b, src.delta(h, b)?))) {
            self.send_delta(src, h, b, &z)?;
            return Ok(Sent::Delta);
        }
        let by_sig = sigs.get(h).and_then(|(id, s)| src.sig_delta(h, s, id));
        if let (Some(b), Some(z)) = (base, by_sig) {
            let (k, i) = src.by_hash[h];
            let size = src.trees[k].entries.at(i).size;
            self.send(t::SIG_DELTA, &Enc::default().raw(h).u64(size).raw(b).0)?;
            for c in z.chunks(wire::CHUNK) {
                self.send(t::DATA, c)?;
            }
            self.status.sig_deltas.fetch_add(1, Ordering::Relaxed);
            self.status
                .blob_bytes_sent
                .fetch_add(size, Ordering::Relaxed);
            self.send(t::BLOB_END, &[])?;
            return Ok(Sent::SigDelta);
        }
        self.send_blob(src, h, raw)?;
        Ok(Sent::Whole)
    }
}
