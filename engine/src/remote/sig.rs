//! Block signatures (protocol 6), as rsync's: for a changed file whose old version on the host
//! the pusher does not hold, the host sends per fixed-size block of that old version a weak
//! rolling checksum and a truncated strong hash; the pusher slides a window over its new
//! content, finds the blocks the host already has, and sends COPY(block run) / LITERAL(bytes)
//! instructions, zstd-compressed. The host rebuilds from its old file and checks the result's
//! blake3 before using it: a wrong delta is an error, never a wrong file.
//!
//! What is sent: the instructions' compressed length `u32`; the instructions, one zstd frame:
//! `0x00` COPY: first block `u32`, blocks `u32`; `0x01` LITERAL: length `u32`; then the
//! literals' bytes, one zstd frame compressed against the bytes the COPYs make (in their
//! order) as its reference (as `--patch-from`): a literal like a copied region nearby (a
//! rebuilt binary's changed addresses) costs little, as rsync's compressor, primed with the
//! matched blocks, makes it.

use std::collections::HashMap;
use std::io;

use super::wire::{Dec, Enc};
use crate::entry::Hash;

/// Bytes of blake3 kept per block: with the 32-bit weak checksum, a false match needs 96 bits
/// to agree, and the whole file's blake3 is checked anyway.
pub const STRONG: usize = 8;
/// rsync's bounds on the block length.
const BLOCK_MIN: u64 = 700;
const BLOCK_MAX: u64 = 128 << 10;
const COPY: u8 = 0;
const LITERAL: u8 = 1;

/// The block length for an old version of `size` bytes: about its square root (rsync's rule:
/// signature and instruction costs grow alike), a multiple of 8, in [700, 128 KiB].
pub fn block_len(size: u64) -> u32 {
    let r = (size as f64).sqrt() as u64 & !7;
    r.clamp(BLOCK_MIN, BLOCK_MAX) as u32
}

/// rsync's weak checksum of `b`: `a` the sum of the bytes, `b` their sum weighted by distance
/// from the end, 16 bits each.
pub fn weak(data: &[u8]) -> u32 {
    let (mut a, mut b) = (0u32, 0u32);
    let n = data.len() as u32;
    for (i, &x) in data.iter().enumerate() {
        a = a.wrapping_add(x.into());
        b = b.wrapping_add((n - i as u32).wrapping_mul(x.into()));
    }
    (a & 0xffff) | (b << 16)
}

/// The weak checksum of the window moved one byte: `out` leaves, `inn` enters, `len` long.
pub fn roll(sum: u32, out: u8, inn: u8, len: u32) -> u32 {
    let a = (sum & 0xffff)
        .wrapping_sub(out.into())
        .wrapping_add(inn.into())
        & 0xffff;
    let b = (sum >> 16)
        .wrapping_sub(len.wrapping_mul(out.into()))
        .wrapping_add(a)
        & 0xffff;
    a | (b << 16)
}

pub fn strong(block: &[u8]) -> [u8; STRONG] {
    blake3::hash(block).as_bytes()[..STRONG]
        .try_into()
        .expect("8")
}

/// The signature of one old version.
#[derive(Debug, Clone, PartialEq)]
pub struct Sig {
    pub size: u64,
    pub blen: u32,
    pub weak: Vec<u32>,
    pub strong: Vec<[u8; STRONG]>,
}

impl Sig {
    pub fn of(data: &[u8]) -> Sig {
        let blen = block_len(data.len() as u64);
        let (weak, strong) = data
            .chunks(blen as usize)
            .map(|b| (self::weak(b), self::strong(b)))
            .unzip();
        Sig {
            size: data.len() as u64,
            blen,
            weak,
            strong,
        }
    }

    /// No signature: the host could not read the old version it named (it is sent whole).
    pub fn none() -> Sig {
        Sig {
            size: 0,
            blen: 0,
            weak: Vec::new(),
            strong: Vec::new(),
        }
    }

    fn blocks(size: u64, blen: u32) -> u64 {
        size.div_ceil(blen.max(1).into())
    }

    /// SIG's payload: the wanted hash, the old version's size, the block length, and per block
    /// the weak checksum and the strong hash.
    pub fn encode(&self, h: &Hash) -> Vec<u8> {
        let mut e = Enc::default().raw(h).u64(self.size).u32(self.blen);
        for (w, s) in self.weak.iter().zip(&self.strong) {
            e = e.u32(*w).raw(s);
        }
        e.0
    }

    /// A SIG payload, checked: the block length is this size's, one entry per block.
    pub fn decode(p: &[u8]) -> io::Result<(Hash, Sig)> {
        let mut d = Dec::new(p, "SIG");
        let (h, size, blen) = (d.hash()?, d.u64()?, d.u32()?);
        if blen == 0 && size == 0 {
            d.end()?;
            return Ok((h, Sig::none()));
        }
        if size > super::delta::MAX || blen != block_len(size) {
            return Err(super::wire::bad(format!(
                "SIG of {size} bytes in blocks of {blen}"
            )));
        }
        let n = Self::blocks(size, blen);
        let (mut weak, mut strong) = (Vec::new(), Vec::new());
        for _ in 0..n {
            weak.push(d.u32()?);
            strong.push(d.raw(STRONG)?.try_into().expect("8"));
        }
        d.end()?;
        Ok((
            h,
            Sig {
                size,
                blen,
                weak,
                strong,
            },
        ))
    }

    pub fn is_none(&self) -> bool {
        self.blen == 0
    }

    /// The length of block `i` (the last may be short).
    fn len_of(&self, i: usize) -> usize {
        let start = i as u64 * u64::from(self.blen);
        (self.size - start).min(self.blen.into()) as usize
    }
}

/// Instructions being written: consecutive COPYs of consecutive blocks merged into one.
#[derive(Default)]
pub struct Ops {
    pub out: Vec<u8>,
    /// The literals' bytes, in order.
    pub lits: Vec<u8>,
    /// The bytes the COPYs make, in order: the literals' reference.
    pub known: Vec<u8>,
    /// The COPY being extended: (first block, blocks).
    run: Option<(u32, u32)>,
}

impl Ops {
    fn copy(&mut self, i: u32, b: &[u8]) {
        self.known.extend_from_slice(b);
        match &mut self.run {
            Some((first, n)) if *first + *n == i => *n += 1,
            _ => {
                self.flush();
                self.run = Some((i, 1));
            }
        }
    }
    fn literal(&mut self, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        self.flush();
        self.out.push(LITERAL);
        self.out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.lits.extend_from_slice(b);
    }
    fn flush(&mut self) {
        if let Some((first, n)) = self.run.take() {
            self.out.push(COPY);
            self.out.extend_from_slice(&first.to_le_bytes());
            self.out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// The instructions making `new` from the old version `sig` describes, and the bytes they
/// copy from it: a window of one block slides over `new`; where its weak checksum is a block's
/// and its strong hash too, that block is copied and the window jumps past it. The old
/// version's short last block is matched at the end of `new` only.
pub fn diff(sig: &Sig, new: &[u8]) -> Ops {
    let mut ops = Ops::default();
    let l = sig.blen as usize;
    // Full blocks by weak checksum, each distinct (weak, strong) once (a file of zeros is one
    // block many times over).
    let mut table: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut seen: HashMap<(u32, [u8; STRONG]), ()> = HashMap::new();
    for i in 0..sig.weak.len() {
        if sig.len_of(i) == l && seen.insert((sig.weak[i], sig.strong[i]), ()).is_none() {
            table.entry(sig.weak[i]).or_default().push(i as u32);
        }
    }
    // A first sieve on 20 bits of the weak checksum: most windows match no block.
    let mut sieve = vec![0u64; 1 << 14];
    let bit = |w: u32| ((w ^ (w >> 20)) & 0xf_ffff) as usize;
    for w in table.keys() {
        sieve[bit(*w) >> 6] |= 1 << (bit(*w) & 63);
    }
    let (mut pos, mut lit) = (0usize, 0usize);
    if l > 0 && new.len() >= l {
        let mut w = weak(&new[..l]);
        loop {
            let b = bit(w);
            let hit = sieve[b >> 6] & (1 << (b & 63)) != 0;
            let found = hit
                .then(|| table.get(&w))
                .flatten()
                .and_then(|c| {
                    let s = strong(&new[pos..pos + l]);
                    c.iter().find(|&&i| sig.strong[i as usize] == s)
                })
                .copied();
            if let Some(i) = found {
                ops.literal(&new[lit..pos]);
                ops.copy(i, &new[pos..pos + l]);
                pos += l;
                lit = pos;
                if pos + l > new.len() {
                    break;
                }
                w = weak(&new[pos..pos + l]);
                continue;
            }
            if pos + l >= new.len() {
                break;
            }
            w = roll(w, new[pos], new[pos + l], l as u32);
            pos += 1;
        }
    }
    // The old version's short last block, at the very end.
    let last = sig.weak.len();
    if last > 0 && sig.len_of(last - 1) < l {
        let tl = sig.len_of(last - 1);
        let tail = new.len().saturating_sub(tl);
        if new.len() >= tl
            && tail >= lit
            && weak(&new[tail..]) == sig.weak[last - 1]
            && strong(&new[tail..]) == sig.strong[last - 1]
        {
            ops.literal(&new[lit..tail]);
            ops.copy(last as u32 - 1, &new[tail..]);
            lit = new.len();
        }
    }
    ops.literal(&new[lit..]);
    ops.flush();
    ops
}

/// The most an honest instruction stream for `size` bytes in blocks of `blen` can take: a
/// COPY and a LITERAL per block.
fn ops_max(size: u64, blen: u32) -> u64 {
    14 * (size / u64::from(blen.max(1)) + 2)
}

/// `new` as compressed instructions against `sig`'s old version, or `None` when that does
/// not pay: less than a sixteenth of it is found in the old version (its whole-file
/// compression would then cost about as much).
pub fn encode(sig: &Sig, new: &[u8], level: i32) -> io::Result<Option<Vec<u8>>> {
    if sig.is_none() {
        return Ok(None);
    }
    let ops = diff(sig, new);
    if ops.known.len() * 16 < new.len() {
        return Ok(None);
    }
    Ok(Some(pack(&ops, level)?))
}

/// Instructions and literals as sent.
pub fn pack(ops: &Ops, level: i32) -> io::Result<Vec<u8>> {
    let z = zstd::bulk::compress(&ops.out, level)?;
    let mut v = (z.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(&z);
    if !ops.lits.is_empty() {
        v.extend_from_slice(&super::delta::encode(&ops.known, &ops.lits, level)?);
    }
    Ok(v)
}

/// The content `z` makes from `old`: exactly `size` bytes, or an error (undecodable, larger
/// than an honest one, a copy of a block `old` does not have, more or fewer bytes). The caller
/// checks the hash.
pub fn decode(old: &[u8], z: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if size > super::delta::MAX {
        return Err(bad(format!(
            "a delta of {size} bytes (at most {})",
            super::delta::MAX
        )));
    }
    let blen = block_len(old.len() as u64) as usize;
    let mut d = Dec::new(z, "signature delta");
    let n = d.u32()? as usize;
    let most = ops_max(size, blen as u32);
    let ops = zstd::bulk::decompress(d.raw(n)?, most as usize)
        .map_err(|e| bad(format!("bad instructions (or over {most} bytes): {e}")))?;
    // Each piece: a copy (also the literals' reference), or a literal's length.
    let mut parts: Vec<Result<&[u8], usize>> = Vec::new();
    let (mut known, mut lits, mut total) = (Vec::new(), 0usize, 0u64);
    let mut o = Dec::new(&ops, "signature delta");
    while !o.is_empty() {
        let part = match o.u8()? {
            COPY => {
                let (first, n) = (o.u32()? as usize, o.u32()? as usize);
                let blocks = old.len().div_ceil(blen);
                if n == 0 || first.saturating_add(n) > blocks {
                    return Err(bad(format!(
                        "a copy of blocks {first}+{n} the old version lacks"
                    )));
                }
                let b = &old[first * blen..((first + n) * blen).min(old.len())];
                known.extend_from_slice(b);
                Ok(b)
            }
            LITERAL => Err(o.u32()? as usize),
            k => return Err(bad(format!("unknown instruction {k}"))),
        };
        total += part.map_or_else(|n| n, <[u8]>::len) as u64;
        if total > size {
            return Err(bad(format!("makes more than the {size} bytes announced")));
        }
        if let Err(n) = part {
            lits += n;
        }
        parts.push(part);
    }
    if total != size {
        return Err(bad(format!("makes {total} bytes, {size} announced")));
    }
    let lits = match lits {
        0 => {
            d.end()?;
            Vec::new()
        }
        n => super::delta::decode(&known, d.rest(), n as u64)?,
    };
    let (mut out, mut at) = (Vec::with_capacity(size as usize), 0);
    for p in parts {
        match p {
            Ok(b) => out.extend_from_slice(b),
            Err(n) => {
                out.extend_from_slice(&lits[at..at + n]);
                at += n;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn the_rolling_checksum_equals_the_checksum_of_each_window() {
        let d = bytes(5000, 1);
        for l in [1usize, 7, 700, 1024] {
            let mut w = weak(&d[..l]);
            for p in 1..d.len() - l {
                w = roll(w, d[p - 1], d[p + l - 1], l as u32);
                assert_eq!(w, weak(&d[p..p + l]), "window {l} at {p}");
            }
        }
        assert_ne!(weak(b"abcd"), weak(b"abdc"), "order counts");
    }

    #[test]
    fn block_lengths_follow_the_square_root_within_bounds() {
        assert_eq!(block_len(0), 700);
        assert_eq!(block_len(100_000), 700);
        assert_eq!(block_len(1 << 20), 1024);
        assert_eq!(block_len(64 << 20), 8192);
        assert_eq!(block_len(1 << 40), 128 << 10);
        assert_eq!(block_len(3_000_000) % 8, 0);
    }

    #[test]
    fn shifted_and_edited_content_is_rebuilt_exactly_from_few_literals() {
        let old = bytes(1 << 20, 2);
        // An insertion near the start (everything after it shifted), an edit, a new tail.
        let mut new = [&old[..1000], b"inserted!", &old[1000..]].concat();
        new[500_000..504_096].copy_from_slice(&bytes(4096, 3));
        new.extend_from_slice(&bytes(3000, 4));
        let sig = Sig::of(&old);
        let (sig2, _) = Sig::decode(&sig.encode(&[7; 32]))
            .map(|(h, s)| (s, h))
            .unwrap();
        assert_eq!(sig2, sig);
        let ops = diff(&sig, &new);
        assert!(ops.known.len() > new.len() * 9 / 10, "{}", ops.known.len());
        assert!(
            ops.lits.len() < 16 << 10,
            "{} bytes of literals",
            ops.lits.len()
        );
        let z = encode(&sig, &new, 3).unwrap().expect("pays");
        assert!(z.len() < 16 << 10, "{} bytes sent", z.len());
        assert_eq!(decode(&old, &z, new.len() as u64).unwrap(), new);
        // The same file again: all copies, its short last block included.
        let odd = &old[..old.len() - 5];
        let sig = Sig::of(odd);
        let ops = diff(&sig, odd);
        assert_eq!((ops.known.len(), ops.lits.len()), (odd.len(), 0));
        assert!(ops.out.len() < 32, "{:?}", ops.out);
        let z = encode(&sig, odd, 3).unwrap().unwrap();
        assert_eq!(decode(odd, &z, odd.len() as u64).unwrap(), odd);
        // Small and empty files.
        for (o, n) in [(&b""[..], &b"new"[..]), (b"old", b""), (b"abc", b"abc")] {
            let z = pack(&diff(&Sig::of(o), n), 3).unwrap();
            assert_eq!(decode(o, &z, n.len() as u64).unwrap(), n);
        }
    }

    #[test]
    fn unrelated_content_does_not_pay_and_bad_streams_are_refused() {
        let old = bytes(200_000, 5);
        let other = bytes(200_000, 6);
        assert!(encode(&Sig::of(&old), &other, 3).unwrap().is_none());
        assert!(encode(&Sig::none(), &old, 3).unwrap().is_none());
        let new = [&old[..100_000], b"patched", &old[100_000..]].concat();
        let z = encode(&Sig::of(&old), &new, 3).unwrap().unwrap();
        // Announced larger or smaller, against another old version, cut short: refused or
        // other bytes, never silently `new`.
        assert!(decode(&old, &z, new.len() as u64 + 1).is_err());
        assert!(decode(&old, &z, new.len() as u64 - 1).is_err());
        assert!(decode(&old[..50_000], &z, new.len() as u64).is_err());
        if let Ok(got) = decode(&other, &z, new.len() as u64) {
            assert_ne!(got, new);
        }
        assert!(decode(&old, &z[..z.len() / 2], new.len() as u64).is_err());
        // A copy past the old version's blocks, an unknown instruction.
        let ops = |raw: &[u8]| {
            let z = zstd::bulk::compress(raw, 3).unwrap();
            [&(z.len() as u32).to_le_bytes()[..], &z].concat()
        };
        let past = ops(&[&[COPY][..], &1000u32.to_le_bytes(), &1u32.to_le_bytes()].concat());
        assert!(decode(&old, &past, 700).is_err());
        let first = ops(&[&[COPY][..], &0u32.to_le_bytes(), &1u32.to_le_bytes()].concat());
        assert_eq!(decode(&old, &first, 700).unwrap(), &old[..700]);
        assert!(
            decode(&old, &[&first[..], b"x"].concat(), 700).is_err(),
            "extra bytes"
        );
        assert!(decode(&old, &ops(&[9u8, 0, 0]), 0).is_err());
        // A signature whose block length is not its size's, or with a block missing.
        let mut p = Sig::of(&old).encode(&[1; 32]);
        assert!(Sig::decode(&p[..p.len() - 1]).is_err());
        p[40] ^= 1;
        assert!(Sig::decode(&p).is_err());
    }
}
