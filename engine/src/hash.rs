//! Content hashing with blake3.
//!
//! Across many files we parallelize across files (the caller's `par_iter`); inside one file only
//! when it is big. Everything is read with `pread` into a per-thread buffer rather than mapped:
//! a jail file truncated by a build while mapped would kill us with SIGBUS, and for the sizes
//! package trees hold the copy into a warm buffer costs little. Big files are read in 256 KiB
//! slices, each hashed with `update_rayon` so both cores work on one large library. Buffers are
//! small and freed after the hash phase ([`release_buffers`]): they would otherwise stay for
//! the whole run beside the entry lists, which is most of what the process holds. Every worker
//! keeps one, and the last hashing runs at the run's peak (both trees held): 1 MiB slices
//! cost 4 MiB there at four workers, 256 KiB ones a quarter of that and split just as well.

use std::cell::RefCell;
use std::io;
use std::os::fd::BorrowedFd;

use crate::entry::Hash;

/// Below this a file is hashed on one thread; above it each slice is split across threads.
const PARALLEL_MIN: u64 = 4 << 20;
const SLICE: usize = 256 << 10;
/// Buffer for a file hashed on one thread.
const SMALL_MAX: usize = 256 << 10;

thread_local! {
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Hashes an open file to its end. Returns the hash and the number of bytes read.
pub fn hash_fd(fd: BorrowedFd<'_>, size_hint: u64) -> io::Result<(Hash, u64)> {
    // The buffer is taken out of the thread-local, not borrowed: while `update_rayon` waits for
    // its halves, rayon may run another hash on this same thread.
    let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let r = hash_with(fd, size_hint, &mut buf);
    BUF.with(|b| {
        let mut cur = b.borrow_mut();
        if cur.len() < buf.len() {
            *cur = buf;
        }
    });
    r
}

/// Frees the read buffers the threads of `pool` keep between files.
pub fn release_buffers(pool: &rayon::ThreadPool) {
    pool.broadcast(|_| BUF.with(|b| drop(std::mem::take(&mut *b.borrow_mut()))));
}

fn hash_with(fd: BorrowedFd<'_>, size_hint: u64, buf: &mut Vec<u8>) -> io::Result<(Hash, u64)> {
    let want = if size_hint >= PARALLEL_MIN {
        SLICE
    } else {
        (size_hint as usize + 1).clamp(16 << 10, SMALL_MAX)
    };
    if buf.len() < want {
        buf.resize(want, 0);
    }
    crate::fsx::read_hints(fd, size_hint, PARALLEL_MIN);
    let mut h = blake3::Hasher::new();
    let mut off = 0u64;
    loop {
        let n = read_full(fd, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        if n >= SLICE && size_hint >= PARALLEL_MIN {
            h.update_rayon(&buf[..n]);
        } else {
            h.update(&buf[..n]);
        }
        off += n as u64;
        if n < want {
            break;
        }
    }
    Ok((*h.finalize().as_bytes(), off))
}

fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(fd, &mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => {
                got += n;
                crate::progress::work(1);
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }
    Ok(got)
}

pub fn to_hex(h: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
