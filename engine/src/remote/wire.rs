//! Framing and payload encoding of the push protocol (see `docs/protocol.md`).
//!
//! A frame is one type byte, a little-endian `u32` payload length, then the payload. Every
//! length read from the wire is checked against a fixed limit *before* anything is allocated
//! for it, so a hostile peer can make us read at most [`MAX_PAYLOAD`] bytes per frame and
//! cannot make us allocate more.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{RemoteError, Result};

/// Bumped on any incompatible change. A peer one protocol apart is served with the older
/// feature set (see [`negotiate`]); further apart is refused, naming both versions.
/// 4: ALIVE carries the host's work counter and phase (it was empty).
/// 5: deltas: HAVE, MANIFEST_DELTA, WANT entries naming the host's old version, DELTA.
/// 6: block signatures: SIG_ASK, SIG, SIG_DELTA (for old versions the pusher does not hold).
pub const PROTOCOL: u32 = 6;
/// The oldest protocol this program still speaks (peers further than one apart are refused).
pub const MIN_PROTOCOL: u32 = 5;

/// The protocol this program announces: [`PROTOCOL`], or what `JAILSYNC_WIRE_PROTOCOL` says
/// (an operator's switch to keep a fleet on the older feature set while it is upgraded, and
/// what lets one build stand for the previous release in a mixed-version test). Never above
/// [`PROTOCOL`].
pub fn announced() -> u32 {
    std::env::var("JAILSYNC_WIRE_PROTOCOL")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(PROTOCOL, |p| p.min(PROTOCOL))
}

/// The protocol a session speaks, given what each side announced: the older of the two when
/// they are at most one apart and both spoken here; `None` (refuse) otherwise.
pub fn negotiate(ours: u32, theirs: u32) -> Option<u32> {
    let p = ours.min(theirs);
    (ours.abs_diff(theirs) <= 1 && p >= MIN_PROTOCOL).then_some(p)
}
pub const MAGIC: &[u8; 8] = b"JAILSYNC";
/// Raw bytes per compressed chunk (manifest text and blob data).
pub const CHUNK: usize = 1 << 20;
/// Largest payload accepted: a chunk that did not compress, plus zstd's worst-case overhead.
pub const MAX_PAYLOAD: usize = CHUNK + (CHUNK >> 7) + 1024;
/// Largest manifest (raw text, per tree) a serve accepts: ~5 million entries.
pub const MAX_MANIFEST: u64 = 1 << 30;
/// Most trees one push may name.
pub const MAX_TREES: u32 = 64;

/// Frame types.
pub mod t {
    pub const HELLO: u8 = 0x01;
    pub const ERROR: u8 = 0x02;
    pub const ALIVE: u8 = 0x03;
    pub const OPEN: u8 = 0x10;
    pub const MANIFEST: u8 = 0x11;
    pub const MANIFEST_END: u8 = 0x12;
    pub const HAVE: u8 = 0x13;
    pub const MANIFEST_DELTA: u8 = 0x14;
    pub const WANT: u8 = 0x20;
    pub const WANT_END: u8 = 0x21;
    pub const SIG_ASK: u8 = 0x22;
    pub const SIG: u8 = 0x23;
    pub const BLOB: u8 = 0x30;
    pub const DATA: u8 = 0x31;
    pub const BLOB_END: u8 = 0x32;
    pub const BLOBS_DONE: u8 = 0x33;
    pub const DELTA: u8 = 0x34;
    pub const SIG_DELTA: u8 = 0x35;
    pub const STAGED: u8 = 0x40;
    pub const SWITCH: u8 = 0x41;
    pub const ABORT: u8 = 0x42;
    pub const DONE: u8 = 0x43;
    pub const PLANNED: u8 = 0x44;
    pub const ROLLBACK: u8 = 0x50;
    pub const ROLLED: u8 = 0x51;

    pub fn name(t: u8) -> &'static str {
        match t {
            HELLO => "HELLO",
            ERROR => "ERROR",
            ALIVE => "ALIVE",
            OPEN => "OPEN",
            MANIFEST => "MANIFEST",
            MANIFEST_END => "MANIFEST_END",
            HAVE => "HAVE",
            MANIFEST_DELTA => "MANIFEST_DELTA",
            WANT => "WANT",
            WANT_END => "WANT_END",
            SIG_ASK => "SIG_ASK",
            SIG => "SIG",
            BLOB => "BLOB",
            DATA => "DATA",
            BLOB_END => "BLOB_END",
            BLOBS_DONE => "BLOBS_DONE",
            DELTA => "DELTA",
            SIG_DELTA => "SIG_DELTA",
            STAGED => "STAGED",
            SWITCH => "SWITCH",
            ABORT => "ABORT",
            DONE => "DONE",
            PLANNED => "PLANNED",
            ROLLBACK => "ROLLBACK",
            ROLLED => "ROLLED",
            _ => "unknown",
        }
    }
}

pub(super) fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

/// Reads one frame into `buf` (reused between frames). `Ok(None)`: the peer closed the stream
/// cleanly between frames.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<u8>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(bad(format!(
            "{} frame of {len} bytes (at most {MAX_PAYLOAD} accepted)",
            t::name(head[0])
        )));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    Ok(Some(head[0]))
}

pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    assert!(payload.len() <= MAX_PAYLOAD, "frame too large to send");
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Builds a payload.
#[derive(Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A byte string: `u32` length, then the bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_le_bytes());
        self.0.extend_from_slice(b);
        self
    }
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
}

/// Reads a payload; every read is bounds-checked against what the frame holds.
pub struct Dec<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8], what: &'static str) -> Self {
        Dec { b, what }
    }
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(bad(format!("{} frame cut short", self.what)));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn u8(&mut self) -> io::Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    pub fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    pub fn bytes(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn raw(&mut self, n: usize) -> io::Result<&'a [u8]> {
        self.take(n)
    }
    pub fn hash(&mut self) -> io::Result<[u8; 32]> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    pub fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    /// Refuses trailing bytes: a frame says exactly what it holds.
    pub fn end(&self) -> io::Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(bad(format!(
                "{} frame has {} extra bytes",
                self.what,
                self.b.len()
            )))
        }
    }
}

/// Decompresses one chunk, refusing more than `limit` bytes of output (never allocating more).
pub fn unchunk(data: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    // One context per thread: making one per chunk (allocating and clearing its tables) was a
    // measurable share of a host's CPU.
    thread_local! {
        static D: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    D.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new()?);
        }
        d.as_mut()
            .expect("made")
            .decompress(data, limit)
            .map_err(|e| bad(format!("bad compressed chunk (or over {limit} bytes): {e}")))
    })
}

pub fn chunk(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    thread_local! {
        static C: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    C.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        c.as_mut().expect("made").1.compress(data)
    })
}

/// A text from the peer made safe to print: control characters (terminal escapes) replaced,
/// and cut to a length a message needs.
pub fn printable(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(4096)]);
    s.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// Counts the bytes that pass (both directions of a connection share one counter), and,
/// with a `timeout`, refuses to wait longer than it for the stream to move: the peer (or the
/// network) stalls. Each side of one connection is used by one thread that either reads or
/// writes, so waiting at most `timeout` per call is "no byte either way for `timeout`".
pub struct Counted<T> {
    pub inner: T,
    pub n: Arc<AtomicU64>,
    pub timeout: Option<Duration>,
    /// Rates every write is held to (`--bwlimit` per host, and one shared by the fleet).
    pub limits: Vec<Throttle>,
}

/// A rate in bytes per second, shared by every connection holding a clone: one per host
/// (`--bwlimit`), or one for the whole fleet. A writer that goes over it sleeps off its
/// debt; the debt is shared, so the holders together keep to the rate.
#[derive(Clone)]
pub struct Throttle(Arc<std::sync::Mutex<Bucket>>);

struct Bucket {
    rate: f64,
    /// Bytes that may be written now (negative: owed).
    allowance: f64,
    last: std::time::Instant,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle(Arc::new(std::sync::Mutex::new(Bucket {
            rate: bytes_per_sec.max(1) as f64,
            allowance: 0.0,
            last: std::time::Instant::now(),
        })))
    }

    /// Accounts for `n` bytes written, sleeping while the holders are ahead of the rate.
    pub fn take(&self, n: usize) {
        let wait = {
            let mut b = self.0.lock().expect("poisoned");
            let now = std::time::Instant::now();
            // A burst of at most a tenth of a second after an idle spell.
            let rate = b.rate;
            b.allowance =
                (b.allowance + now.duration_since(b.last).as_secs_f64() * rate).min(rate / 10.0);
            b.last = now;
            b.allowance -= n as f64;
            (b.allowance < 0.0).then(|| Duration::from_secs_f64(-b.allowance / rate))
        };
        if let Some(w) = wait {
            std::thread::sleep(w);
        }
    }
}

impl<T: AsFd> Counted<T> {
    fn wait(&self, write: bool) -> io::Result<()> {
        let Some(t) = self.timeout else { return Ok(()) };
        if crate::fsx::wait_ready(self.inner.as_fd(), write, t)? {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no progress for {} s (nothing received or sent; --timeout): the host stalls or the network is down",
                t.as_secs_f64()
            ),
        ))
    }
}

impl<T: Read + AsFd> Read for Counted<T> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.wait(false)?;
        let n = self.inner.read(b)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<T: Write + AsFd> Write for Counted<T> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.wait(true)?;
        let n = self.inner.write(b)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        for l in &self.limits {
            l.take(n);
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// What OPEN asks for.
#[derive(Clone, Default)]
pub struct Open {
    /// Where the push comes from (`host:jail`), for the generations' records.
    pub source: Vec<u8>,
    pub root: Vec<u8>,
    pub trees: Vec<Vec<u8>>,
    pub state_dir: Vec<u8>,
    pub flags: u32,
    pub keep: u32,
    pub threads: u32,
    /// `--protect` globs and `protect` lines of the jail's jailsync.conf (see `protect`).
    pub protect: Vec<Vec<u8>>,
    /// Exclude patterns for the trees holding another: the homes of databases nested in a
    /// tree (their rollback generations stay on the host).
    pub excludes: Vec<Vec<u8>>,
    /// `--exclude` patterns, for every tree of every phase (as `upgrade --exclude`).
    pub exclude_all: Vec<Vec<u8>>,
    /// Send ALIVE after this long working without a frame either way (0: never): the local
    /// side's `--timeout` then measures a stalled connection, not a long scan.
    pub keepalive_ms: u32,
}

pub mod flag {
    pub const XATTRS: u32 = 1;
    pub const ROLLBACK: u32 = 2;
    pub const FSYNC: u32 = 4;
    pub const FORCE: u32 = 8;
    /// Protect every tree's `etc/` (configuration protection's default rule).
    pub const PROTECT_ETC: u32 = 16;
    /// Apply configuration protection (set whenever a rule is given).
    pub const PROTECT: u32 = 32;
    /// Plan and report (PLANNED); receive, stage and write nothing.
    pub const DRY_RUN: u32 = 64;
}

pub(super) fn enc_list(mut e: Enc, l: &[Vec<u8>]) -> Enc {
    e = e.u32(l.len() as u32);
    for x in l {
        e = e.bytes(x);
    }
    e
}

pub(super) fn dec_list(d: &mut Dec, what: &str) -> Result<Vec<Vec<u8>>> {
    let n = d.u32()?;
    if n > 256 {
        return Err(RemoteError::Protocol(format!("OPEN names {n} {what}")));
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let b = d.bytes()?.to_vec();
        if b.is_empty() || b.len() > 4096 || b.contains(&0) || std::str::from_utf8(&b).is_err() {
            return Err(RemoteError::Refused(format!(
                "{}: not a valid {what} pattern",
                printable(&b)
            )));
        }
        out.push(b);
    }
    Ok(out)
}

impl Open {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default()
            .bytes(&self.source)
            .bytes(&self.root)
            .u32(self.trees.len() as u32);
        for t in &self.trees {
            e = e.bytes(t);
        }
        let e = e
            .bytes(&self.state_dir)
            .u32(self.flags)
            .u32(self.keep)
            .u32(self.threads);
        let e = enc_list(e, &self.protect);
        let e = enc_list(e, &self.excludes);
        enc_list(e, &self.exclude_all).u32(self.keepalive_ms).0
    }

    pub(super) fn decode(p: &[u8]) -> Result<Open> {
        let mut d = Dec::new(p, "OPEN");
        let source = d.bytes()?.to_vec();
        let root = d.bytes()?.to_vec();
        let n = d.u32()?;
        if n == 0 || n > MAX_TREES {
            return Err(RemoteError::Protocol(format!("OPEN names {n} trees")));
        }
        let mut trees = Vec::new();
        for _ in 0..n {
            trees.push(d.bytes()?.to_vec());
        }
        let o = Open {
            source,
            root,
            trees,
            state_dir: d.bytes()?.to_vec(),
            flags: d.u32()?,
            keep: d.u32()?,
            threads: d.u32()?,
            protect: dec_list(&mut d, "protect")?,
            excludes: dec_list(&mut d, "exclude")?,
            exclude_all: dec_list(&mut d, "exclude")?,
            keepalive_ms: d.u32()?,
        };
        d.end()?;
        let abs = |b: &[u8]| b.first() == Some(&b'/') && !b.contains(&0);
        if !abs(&o.root) || !(o.state_dir.is_empty() || abs(&o.state_dir)) {
            return Err(RemoteError::Refused(
                "the root and the state dir must be absolute paths".into(),
            ));
        }
        for t in &o.trees {
            let p = Path::new(std::ffi::OsStr::from_bytes(t));
            let plain = p.components().all(|c| matches!(c, Component::Normal(_)));
            if t.is_empty() || t.contains(&0) || !plain || p.is_absolute() {
                return Err(RemoteError::Refused(format!(
                    "{}: a tree must be a relative path without `..`",
                    printable(t)
                )));
            }
        }
        if o.threads > 256 {
            return Err(RemoteError::Protocol("more than 256 threads asked".into()));
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_lengths_are_refused_unread() {
        let mut v = Vec::new();
        write_frame(&mut v, t::OPEN, b"abc").unwrap();
        let mut buf = Vec::new();
        let mut r = &v[..];
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Some(t::OPEN));
        assert_eq!(buf, b"abc");
        assert_eq!(read_frame(&mut r, &mut buf).unwrap(), None);

        // A declared length of 4 GiB: refused from the header alone, nothing allocated.
        let huge = [t::DATA, 0xff, 0xff, 0xff, 0xff];
        let e = read_frame(&mut &huge[..], &mut buf).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        assert!(buf.capacity() < MAX_PAYLOAD);

        // Cut inside the header or the payload.
        assert!(read_frame(&mut &v[..3], &mut buf).is_err());
        assert!(read_frame(&mut &v[..6], &mut buf).is_err());
    }

    #[test]
    fn decoding_is_bounds_checked() {
        let p = Enc::default().u32(7).bytes(b"xy").0;
        let mut d = Dec::new(&p, "OPEN");
        assert_eq!(d.u32().unwrap(), 7);
        assert_eq!(d.bytes().unwrap(), b"xy");
        d.end().unwrap();
        // A string claiming more bytes than the frame has.
        let p = Enc::default().u32(1000).raw(b"xy").0;
        assert!(Dec::new(&p, "OPEN").bytes().is_err());
    }

    #[test]
    fn a_throttle_holds_its_holders_together_to_the_rate() {
        let t = Throttle::new(1 << 20);
        let t0 = std::time::Instant::now();
        let th: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..16 {
                        t.take(16 << 10);
                    }
                })
            })
            .collect();
        for h in th {
            h.join().unwrap();
        }
        // 512 KiB at 1 MiB/s, less the first tenth of a second's burst at most.
        let took = t0.elapsed().as_secs_f64();
        assert!((0.35..1.5).contains(&took), "{took} s");
    }

    #[test]
    fn decompression_is_bounded() {
        let z = chunk(&vec![0u8; 4 << 20], 3).unwrap();
        assert!(z.len() < 4096);
        assert!(unchunk(&z, CHUNK).is_err());
        assert_eq!(unchunk(&z, 4 << 20).unwrap().len(), 4 << 20);
        assert_eq!(printable(b"a\x1b[2Jb"), "a?[2Jb");
    }
}
