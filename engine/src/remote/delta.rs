//! Deltas: a file's new content compressed against an old version both sides hold, as
//! `zstd --patch-from` does (the old version is zstd's *reference prefix*: the new content is
//! encoded as matches into it plus what is new). Used for the blobs a host lacks whose path it
//! holds an older version of, and for the manifests a host received before.
//!
//! Both sides hold the whole old and new content in memory, so a delta is only made for files
//! of at most [`MAX`] bytes (larger ones are sent whole, in chunks). A delta is never trusted:
//! the receiver decodes at most the announced size and checks the result's blake3 before it
//! uses it (see `session::Session::receive_delta`).

use std::io::{self, Read, Write};

/// Largest old or new content a delta is made for (each side holds both in memory).
pub const MAX: u64 = 64 << 20;

/// The window a delta needs: the reference and the new content together, as `--patch-from`
/// sizes it. Both sides compute it from sizes they know; the decoder's limit is [`WINDOW_MAX`].
fn window_log(base: usize, new: usize) -> u32 {
    let n = (base + new).max(1 << 10);
    (usize::BITS - (n - 1).leading_zeros()).clamp(10, WINDOW_MAX)
}

/// `2^WINDOW_MAX` bytes cover [`MAX`] of reference plus [`MAX`] of new content.
const WINDOW_MAX: u32 = 27;

/// `new` compressed against `base`.
pub fn encode(base: &[u8], new: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut e = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, base)?;
    e.window_log(window_log(base.len(), new.len()))?;
    // Long-distance matching finds a moved block far back in a big reference (a relinked
    // library), as `--patch-from` turns it on.
    e.long_distance_matching(base.len() > 1 << 20)?;
    e.set_pledged_src_size(Some(new.len() as u64))?;
    e.write_all(new)?;
    e.finish()
}

/// The content `delta` encodes against `base`: exactly `size` bytes, or an error (a delta
/// that decodes to more or fewer bytes, or not at all, is refused; the caller checks the hash).
pub fn decode(base: &[u8], delta: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    if size > MAX {
        return Err(bad(format!("a delta of {size} bytes (at most {MAX})")));
    }
    let mut d = zstd::stream::read::Decoder::with_ref_prefix(delta, base)?;
    d.window_log_max(WINDOW_MAX)?;
    let mut out = Vec::with_capacity(size as usize);
    d.take(size + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("bad delta: {e}")))?;
    if out.len() as u64 != size {
        return Err(bad(format!(
            "bad delta: {} bytes decoded, {size} announced",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
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
    fn a_small_edit_of_a_big_file_costs_little_and_decodes_exactly() {
        let old = bytes(3 << 20, 7);
        let mut new = old.clone();
        new[1 << 20..(1 << 20) + 4096].copy_from_slice(&bytes(4096, 9));
        new.extend_from_slice(&bytes(10_000, 11));
        let d = encode(&old, &new, 3).unwrap();
        assert!(d.len() < 32 << 10, "{} bytes", d.len());
        assert_eq!(decode(&old, &d, new.len() as u64).unwrap(), new);
    }

    #[test]
    fn a_delta_against_another_base_or_of_another_size_is_refused_or_differs() {
        let old = bytes(200_000, 1);
        let new = [&old[..100_000], b"patched", &old[100_000..]].concat();
        let d = encode(&old, &new, 3).unwrap();
        // Announced larger or smaller than it decodes: refused.
        assert!(decode(&old, &d, new.len() as u64 + 1).is_err());
        assert!(decode(&old, &d, new.len() as u64 - 1).is_err());
        // Against another reference: an error or other bytes, never silently `new`.
        let other = bytes(200_000, 2);
        if let Ok(got) = decode(&other, &d, new.len() as u64) {
            assert_ne!(got, new);
        }
        // Cut short: refused.
        assert!(decode(&old, &d[..d.len() / 2], new.len() as u64).is_err());
    }
}
