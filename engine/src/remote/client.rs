//! The local end of `push`: one connection per host, driven step by step by the caller (who
//! decides, for the whole fleet, when to switch).
//!
//! The local side never writes a file: it reads the jail (paths from its own scan, each
//! opened beneath the tree's root without following a symlink) and writes to the connection.
//! What the remote sends is validated: frame sizes before allocation, WANT hashes against the
//! jail's (a remote can only obtain content it is about to receive anyway), texts made
//! printable.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::delta;
use super::store::Store;
use super::wire::Open;
use super::wire::{self, t, Counted, Dec, Enc};
use super::{RemoteError, Result};
use crate::entry::{Entries, Hash, Kind};
use crate::fsx::{self, split_parent};
use crate::manifest::{self, Manifest};
use sigs::{Sent, Sigs};

mod sigs;

/// The jail's trees as pushed to every host: manifests compressed once, and where each
/// content hash can be read.
pub struct Source {
    pub trees: Vec<SourceTree>,
    by_hash: HashMap<Hash, (usize, usize)>,
    level: i32,
    chunks: Mutex<Chunks>,
    /// What was pushed before (the references of deltas); `None`: every file is sent whole.
    store: Option<Store>,
}

/// The key of a shared chunk: (content, reference, chunk). A whole blob's chunk `c` is
/// `(h, NO_BASE, c)`; a delta of `h` against `base` is `(h, base, DELTA)`, held whole.
type Key = (Hash, Hash, u64);
const NO_BASE: Hash = [0; 32];
const DELTA: u64 = u64::MAX;

/// Compressed chunks recently sent, shared by every host's connection: hosts running the same
/// old release want the same blobs in the same order (the jail's path order) at about the same
/// time, so each chunk is compressed once for the fleet, not once per host. A chunk being
/// compressed is a slot the other hosts wait on rather than compress it too (hosts that start
/// together reach each chunk together). Bounded (oldest out first).
struct Chunks {
    map: HashMap<Key, Slot>,
    order: std::collections::VecDeque<Key>,
    bytes: usize,
}

/// One chunk: compressed once, by whichever host asked first; an error is each asker's.
type Slot = Arc<std::sync::OnceLock<std::result::Result<Arc<Vec<u8>>, String>>>;

/// Memory the shared chunks may hold.
const CHUNKS_MAX: usize = 64 << 20;

impl Source {
    /// The compressed chunk (or delta) `key`: from the shared chunks or made by `make`.
    fn chunk(
        &self,
        key: Key,
        make: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<Arc<Vec<u8>>> {
        let slot = {
            let mut ch = self.chunks.lock().expect("poisoned");
            match ch.map.get(&key) {
                Some(s) => s.clone(),
                None => {
                    let s = Slot::default();
                    ch.map.insert(key, s.clone());
                    ch.order.push_back(key);
                    s
                }
            }
        };
        let mut made = false;
        let z = slot.get_or_init(|| {
            made = true;
            make().map(Arc::new).map_err(|e| e.to_string())
        });
        let z = z.clone().map_err(io::Error::other)?;
        if made {
            // Only finished chunks count; the oldest go first (a host still waiting on one
            // holds its slot, not the map).
            let mut ch = self.chunks.lock().expect("poisoned");
            if !ch.map.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                return Ok(z); // evicted while being made: never counted
            }
            ch.bytes += z.len();
            while ch.bytes > CHUNKS_MAX {
                let Some(k) = ch.order.pop_front() else { break };
                if let Some(v) = ch.map.remove(&k) {
                    if let Some(Ok(v)) = v.get() {
                        ch.bytes -= v.len();
                    }
                }
            }
        }
        Ok(z)
    }
}

pub struct SourceTree {
    pub rel: Vec<u8>,
    /// The jail's tree (canonical).
    pub path: PathBuf,
    pub entries: Entries,
    /// The manifest text, in compressed chunks.
    chunks: Vec<Vec<u8>>,
    pub manifest_bytes: u64,
    /// The manifest text and its hash: a host that holds an older text gets a delta.
    text: Vec<u8>,
    text_hash: Hash,
}

impl Source {
    /// `level`: zstd's compression level for manifests and blobs; `store`: what was pushed
    /// before, the references of deltas (none: every file and manifest is sent whole).
    pub fn new(
        trees: Vec<(Vec<u8>, PathBuf, Manifest)>,
        level: i32,
        store: Option<Store>,
    ) -> io::Result<Source> {
        let mut out = Vec::new();
        let mut by_hash = HashMap::new();
        for (k, (rel, path, m)) in trees.into_iter().enumerate() {
            let mut text = Vec::new();
            manifest::write_to(&mut text, m.stamp, &m.entries, false)?;
            let chunks = text
                .chunks(wire::CHUNK)
                .map(|c| wire::chunk(c, level))
                .collect::<io::Result<Vec<_>>>()?;
            for (i, e) in m.entries.iter().enumerate() {
                if let (Kind::File, Some(h)) = (e.kind, e.hash) {
                    by_hash.entry(*h).or_insert((k, i));
                }
            }
            out.push(SourceTree {
                rel,
                path,
                entries: m.entries,
                chunks,
                manifest_bytes: text.len() as u64,
                text_hash: *blake3::hash(&text).as_bytes(),
                text,
            });
        }
        Ok(Source {
            trees: out,
            by_hash,
            level,
            chunks: Mutex::new(Chunks {
                map: HashMap::new(),
                order: Default::default(),
                bytes: 0,
            }),
            store,
        })
    }

    /// Keeps what the hosts now hold (every file of the jail up to [`delta::MAX`], and the
    /// manifests) in the store, for the next push's deltas; then prunes the store to its size.
    /// Content already held is not read again. Returns the bytes read from the jail.
    pub fn remember(&self) -> io::Result<u64> {
        use rayon::prelude::*;
        let Some(store) = &self.store else {
            return Ok(0);
        };
        for t in &self.trees {
            if t.text.len() as u64 <= delta::MAX {
                store.put(&t.text_hash, &t.text)?;
            }
        }
        let todo: Vec<(&Hash, &(usize, usize))> = self
            .by_hash
            .iter()
            .filter(|(h, &(k, i))| {
                let size = self.trees[k].entries.at(i).size;
                size > 0 && size <= delta::MAX && !store.has(h)
            })
            .collect();
        let read = todo
            .par_iter()
            .map(|(h, &(k, i))| -> io::Result<u64> {
                let data = self.read_whole(k, i)?;
                // The jail changed since its scan: not this content, not kept.
                if blake3::hash(&data).as_bytes() == *h {
                    store.put(h, &data)?;
                }
                Ok(data.len() as u64)
            })
            .collect::<io::Result<Vec<u64>>>()?;
        let mut keep: HashSet<Hash> = self.by_hash.keys().copied().collect();
        keep.extend(self.trees.iter().map(|t| t.text_hash));
        store.prune(&keep)?;
        Ok(read.iter().sum())
    }

    /// The jail file `(tree, index)`, opened beneath its tree without following a symlink.
    fn open_jail(&self, k: usize, i: usize) -> io::Result<std::fs::File> {
        let tr = &self.trees[k];
        let e = tr.entries.at(i);
        let root = fsx::open_root(&tr.path)?;
        let (parent, name) = split_parent(e.path);
        let dir = fsx::open_dir_beneath(root.as_fd(), parent)?;
        Ok(std::fs::File::from(fsx::open_read_at(dir.as_fd(), name)?))
    }

    fn read_whole(&self, k: usize, i: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_jail(k, i)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The delta of blob `h` against `base` (shared by the fleet: made once per distinct old
    /// version), or `None` when the store does not hold `base` intact.
    fn delta(&self, h: &Hash, base: &Hash) -> Option<Arc<Vec<u8>>> {
        let store = self.store.as_ref()?;
        let &(k, i) = self.by_hash.get(h)?;
        if !store.has(base) || self.trees[k].entries.at(i).size > delta::MAX {
            return None;
        }
        self.chunk((*h, *base, DELTA), || {
            let old = store
                .get(base, delta::MAX)
                .ok_or_else(|| io::Error::other("not in the store"))?;
            let new = self.read_whole(k, i)?;
            delta::encode(&old, &new, self.level)
        })
        .ok()
    }

    /// Tree `k`'s manifest as a delta against the text `base` a host holds, if the store
    /// holds it too.
    fn manifest_delta(&self, k: usize, base: &Hash) -> Option<Arc<Vec<u8>>> {
        let store = self.store.as_ref()?;
        let t = &self.trees[k];
        if *base == NO_BASE || t.text.len() as u64 > delta::MAX || !store.has(base) {
            return None;
        }
        self.chunk((t.text_hash, *base, DELTA), || {
            let old = store
                .get(base, delta::MAX)
                .ok_or_else(|| io::Error::other("not in the store"))?;
            delta::encode(&old, &t.text, self.level)
        })
        .ok()
    }
}

/// Where a host's push is; read by the caller's progress display.
#[derive(Default)]
pub struct Status {
    /// Index into [`PHASES`].
    pub phase: AtomicUsize,
    pub blobs: AtomicU64,
    pub blobs_sent: AtomicU64,
    pub blob_bytes: AtomicU64,
    pub blob_bytes_sent: AtomicU64,
    /// Blobs sent as a delta against the host's old version, and manifests likewise.
    pub deltas: AtomicU64,
    pub manifest_deltas: AtomicU64,
    /// (6) Blobs sent as instructions against the host's block signatures.
    pub sig_deltas: AtomicU64,
    /// The protocol the session speaks (0 until HELLO).
    pub protocol: AtomicU64,
    /// All bytes both ways over the connection.
    pub wire: Arc<AtomicU64>,
}

pub const PHASES: [&str; 8] = [
    "connecting",
    "scanning",
    "sending",
    "staging",
    "staged",
    "switching",
    "done",
    "failed",
];
pub mod phase {
    pub const CONNECTING: usize = 0;
    pub const SCANNING: usize = 1;
    pub const SENDING: usize = 2;
    pub const STAGING: usize = 3;
    pub const STAGED: usize = 4;
    pub const SWITCHING: usize = 5;
    pub const DONE: usize = 6;
    pub const FAILED: usize = 7;
}

/// What a host lacks, once its plan is made: the hashes it wants (each with its old version
/// of the file, where it has one) and how many files it will copy, of those found there.
#[derive(Debug, Clone, Default)]
pub struct Want {
    list: Vec<Hash>,
    bases: HashMap<Hash, Hash>,
    /// (6) The host's block signatures of the old versions the store does not hold.
    sigs: Sigs,
    pub files_needed: u64,
    pub found: u64,
}

/// What the remote said when it had staged.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Files the remote copied from content it already had.
    pub found_on_host: u64,
    pub files_needed: u64,
    pub stage_time: Duration,
    /// Blobs sent as a delta against the host's old version of the file.
    pub deltas: u64,
    /// Manifests sent as a delta against the one the host received last.
    pub manifest_deltas: u64,
    /// (6) Blobs sent as instructions against the host's block signatures.
    pub sig_deltas: u64,
    /// The protocol the session spoke.
    pub protocol: u32,
}

/// What a host would do (a dry run): its plans' counts over every tree, and what it lacks.
#[derive(Debug, Clone, Default)]
pub struct Planned {
    pub created: u64,
    pub updated: u64,
    pub type_changed: u64,
    pub metadata: u64,
    pub deleted: u64,
    /// Distinct contents the host has nowhere, and their bytes (raw): what a push sends.
    pub blobs: u64,
    pub blob_bytes: u64,
    pub files_needed: u64,
    /// Files the host would copy from content it already has.
    pub found_on_host: u64,
}

/// What the remote said after its switch.
#[derive(Debug, Clone, Default)]
pub struct Done {
    pub switch_window: Duration,
    pub changes: u64,
    pub bytes_written: u64,
    pub procs: u32,
    pub errors: u32,
    pub error_text: String,
    /// Protected configuration files kept with the host's edits: unchanged in the jail, with
    /// the jail's version written as `NAME.jailsync-new`, dropped by the jail.
    pub kept: [u32; 3],
    /// (5) The host's CPU time for the session (its `serve` process).
    pub cpu: Option<Duration>,
}

pub struct Conn {
    child: Child,
    r: BufReader<Counted<ChildStdout>>,
    w: BufWriter<Counted<ChildStdin>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    buf: Vec<u8>,
    pub status: Arc<Status>,
    /// Fails a host whose work does not move for this long (and a connection that does not).
    timeout: Option<Duration>,
    /// The host's work counter in its last ALIVE, and when the host last moved: its counter
    /// changed, or it sent anything else.
    work: Option<u64>,
    moved: Instant,
    /// The protocol the session speaks (the older of the two sides').
    proto: u32,
    /// (5) The hash of the manifest the host holds for each tree (zero: none).
    have: Vec<Hash>,
}

impl Conn {
    /// Starts `argv` (ssh ... HOST 'jailsync serve', or a local `jailsync serve`). With a
    /// `timeout`, a wait for the connection longer than it fails (see [`wire::Counted`]); pass
    /// a keepalive below it in OPEN so that a host working silently is not taken for stalled.
    /// `limits`: the rates what is sent to this host is held to (see [`wire::Throttle`]).
    pub fn spawn(
        argv: &[OsString],
        status: Arc<Status>,
        timeout: Option<Duration>,
        limits: Vec<wire::Throttle>,
    ) -> io::Result<Conn> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", prog.to_string_lossy())))?;
        let out = child.stdout.take().expect("piped");
        let inp = child.stdin.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        // The last few KiB of what ssh (or the remote shell) says: the cause of a lost
        // connection. Read on its own thread so a chatty stderr cannot block the remote.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let keep = stderr.clone();
        let th = std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = err.read(&mut b) {
                if n == 0 {
                    break;
                }
                let mut k = keep.lock().expect("poisoned");
                k.extend_from_slice(&b[..n]);
                let len = k.len();
                if len > 8192 {
                    k.drain(..len - 8192);
                }
            }
        });
        let wire = status.wire.clone();
        Ok(Conn {
            child,
            r: BufReader::with_capacity(
                1 << 16,
                Counted {
                    inner: out,
                    n: wire.clone(),
                    timeout,
                    limits: Vec::new(),
                },
            ),
            w: BufWriter::with_capacity(
                1 << 16,
                Counted {
                    inner: inp,
                    n: wire,
                    timeout,
                    limits,
                },
            ),
            stderr,
            stderr_thread: Some(th),
            buf: Vec::new(),
            status,
            timeout,
            work: None,
            moved: Instant::now(),
            proto: wire::MIN_PROTOCOL,
            have: Vec::new(),
        })
    }

    fn send(&mut self, kind: u8, p: &[u8]) -> Result<()> {
        wire::write_frame(&mut self.w, kind, p).map_err(|e| self.lost(e))
    }

    fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| self.lost(e))
    }

    /// The next frame but ALIVE (the host working, which only the timeout cares about).
    fn recv(&mut self) -> Result<u8> {
        loop {
            let r = wire::read_frame(&mut self.r, &mut self.buf);
            if matches!(r, Ok(Some(k)) if k != t::ALIVE) {
                self.moved = Instant::now();
            }
            return match r {
                Ok(Some(t::ALIVE)) => {
                    self.alive()?;
                    continue;
                }
                Ok(Some(t::ERROR)) => Err(RemoteError::Remote(wire::printable(&self.buf))),
                Ok(Some(k)) => Ok(k),
                Ok(None) => Err(self.closed("the connection closed")),
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    Err(RemoteError::Protocol(e.to_string()))
                }
                // A stalled host says nothing more: no waiting for its last words.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(RemoteError::Io(e)),
                Err(e) => Err(self.closed(&e.to_string())),
            };
        }
    }

    /// An ALIVE: the host's work counter moved, or for how long it has not. A host that keeps
    /// its connection alive while its work stands still (a worker stuck in one system call) is
    /// failed after the timeout, naming what it was doing; a slow one that moves never is.
    fn alive(&mut self) -> Result<()> {
        let mut d = Dec::new(&self.buf, "ALIVE");
        let (work, doing) = (d.u64()?, wire::printable(d.bytes()?));
        d.end()?;
        if self.work != Some(work) {
            self.work = Some(work);
            self.moved = Instant::now();
            return Ok(());
        }
        match self.timeout {
            Some(t) if self.moved.elapsed() >= t => Err(RemoteError::Stuck {
                doing,
                idle: self.moved.elapsed(),
            }),
            _ => Ok(()),
        }
    }

    fn expect(&mut self, kind: u8) -> Result<()> {
        let k = self.recv()?;
        if k != kind {
            return Err(RemoteError::Protocol(format!(
                "expected {}, got {}",
                t::name(kind),
                t::name(k)
            )));
        }
        Ok(())
    }

    /// A write failed: the remote may have said why before going away.
    fn lost(&mut self, e: io::Error) -> RemoteError {
        if e.kind() == io::ErrorKind::TimedOut {
            return RemoteError::Io(e);
        }
        for _ in 0..64 {
            match wire::read_frame(&mut self.r, &mut self.buf) {
                Ok(Some(t::ERROR)) => return RemoteError::Remote(wire::printable(&self.buf)),
                Ok(Some(_)) => continue,
                _ => break,
            }
        }
        self.closed(&e.to_string())
    }

    /// The connection ended unexpectedly: what ssh said, if anything.
    fn closed(&mut self, what: &str) -> RemoteError {
        // Give ssh a moment to exit and say why.
        let _ = self.w.get_mut().inner.flush();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(th) = self.stderr_thread.take() {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = th.join();
            } else {
                self.stderr_thread = Some(th);
            }
        }
        let said = wire::printable(&self.stderr.lock().expect("poisoned"));
        let said = said.trim();
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!(" ({s})"),
            _ => String::new(),
        };
        if said.is_empty() {
            RemoteError::Io(io::Error::other(format!("{what}{status}")))
        } else {
            RemoteError::Io(io::Error::other(format!("{what}{status}: {said}")))
        }
    }

    /// HELLO both ways, then OPEN.
    pub fn open(&mut self, o: &Open) -> Result<()> {
        self.status
            .phase
            .store(phase::CONNECTING, Ordering::Relaxed);
        // Ours first: a serve of another version says so in its ERROR, and we say so in ours.
        self.send(t::HELLO, &super::hello())?;
        self.flush()?;
        self.expect(t::HELLO)?;
        match super::check_hello(&self.buf, "remote") {
            Ok(p) => self.proto = p,
            Err(e) => {
                let _ = self.send(t::ERROR, e.to_string().as_bytes());
                let _ = self.flush();
                return Err(e);
            }
        }
        self.status
            .protocol
            .store(self.proto.into(), Ordering::Relaxed);
        self.send(t::OPEN, &o.encode())?;
        if self.proto >= 5 {
            // What the host holds of each tree's manifest: the base of a manifest delta.
            self.flush()?;
            self.expect(t::HAVE)?;
            if self.buf.len() != 32 * o.trees.len() {
                return Err(RemoteError::Protocol("HAVE not one hash per tree".into()));
            }
            self.have = self
                .buf
                .chunks(32)
                .map(|c| c.try_into().expect("32"))
                .collect();
        }
        Ok(())
    }

    /// Sends the manifests and learns what the host lacks: its plan is made (version and free
    /// space checked), no content has moved yet.
    pub fn want(&mut self, src: &Source) -> Result<Want> {
        self.send_manifests(src)?;
        // What the host lacks: only hashes of this jail, each once; from version 5 each with
        // the hash of the host's old version of the file (zero: none).
        let mut want: Vec<Hash> = Vec::new();
        let mut bases: HashMap<Hash, Hash> = HashMap::new();
        let mut seen: HashSet<Hash> = HashSet::new();
        let width = if self.proto >= 5 { 64 } else { 32 };
        let (files_needed, found) = loop {
            match self.recv()? {
                t::WANT => {
                    if !self.buf.len().is_multiple_of(width) {
                        return Err(RemoteError::Protocol("WANT not a list of hashes".into()));
                    }
                    for w in self.buf.chunks(width) {
                        let h: Hash = w[..32].try_into().expect("32");
                        if width == 64 && w[32..] != NO_BASE {
                            bases.insert(h, w[32..].try_into().expect("32"));
                        }
                        if !src.by_hash.contains_key(&h) || !seen.insert(h) {
                            return Err(RemoteError::Protocol(format!(
                                "the remote asked for {}, not a file of this jail (or twice)",
                                crate::hash::to_hex(&h)
                            )));
                        }
                        want.push(h);
                    }
                }
                t::WANT_END => {
                    let mut d = Dec::new(&self.buf, "WANT_END");
                    let (n, needed, found) = (d.u64()?, d.u64()?, d.u64()?);
                    d.end()?;
                    if n != want.len() as u64 {
                        return Err(RemoteError::Protocol("WANT count differs".into()));
                    }
                    break (needed, found);
                }
                k => {
                    return Err(RemoteError::Protocol(format!(
                        "expected WANT, got {}",
                        t::name(k)
                    )))
                }
            }
        };
        let sigs = self.ask_sigs(src, &want, &bases)?;
        Ok(Want {
            list: want,
            bases,
            sigs,
            files_needed,
            found,
        })
    }

    /// Sends what the host lacks (`w`, from [`Conn::want`]) and waits until the host has
    /// staged every tree (or failed).
    pub fn send_content(&mut self, src: &Source, w: Want) -> Result<Staged> {
        let Want {
            list: mut want,
            bases,
            sigs,
            files_needed,
            found,
        } = w;
        let size = |h: &Hash| {
            let (k, i) = src.by_hash[h];
            src.trees[k].entries[i].size
        };
        let total: u64 = want.iter().map(size).sum();
        self.status
            .blobs
            .store(want.len() as u64, Ordering::Relaxed);
        self.status.blob_bytes.store(total, Ordering::Relaxed);
        self.status.phase.store(phase::SENDING, Ordering::Relaxed);
        // Path order within each tree reads the jail roughly in its directory order.
        want.sort_by_key(|h| src.by_hash[h]);
        let mut raw = vec![0u8; wire::CHUNK];
        let (mut deltas, mut sig_deltas) = (0, 0);
        for h in &want {
            match self.send_wanted(src, h, &bases, &sigs, &mut raw)? {
                Sent::Delta => deltas += 1,
                Sent::SigDelta => sig_deltas += 1,
                Sent::Whole => {}
            }
            self.status.blobs_sent.fetch_add(1, Ordering::Relaxed);
        }
        self.send(t::BLOBS_DONE, &[])?;
        self.flush()?;
        self.status.phase.store(phase::STAGING, Ordering::Relaxed);
        self.expect(t::STAGED)?;
        let mut d = Dec::new(&self.buf, "STAGED");
        let (_changes, ms) = (d.u64()?, d.u64()?);
        d.end()?;
        self.status.phase.store(phase::STAGED, Ordering::Relaxed);
        Ok(Staged {
            blobs: want.len() as u64,
            blob_bytes: total,
            found_on_host: found,
            files_needed,
            stage_time: Duration::from_millis(ms),
            deltas,
            sig_deltas,
            manifest_deltas: self.status.manifest_deltas.load(Ordering::Relaxed),
            protocol: self.proto,
        })
    }

    fn send_manifests(&mut self, src: &Source) -> Result<()> {
        for (k, tr) in src.trees.iter().enumerate() {
            // A host holding an older manifest of this tree that the store holds too gets a
            // delta (a repeated push: a few hundred bytes instead of the whole list).
            let base = self.have.get(k).copied().unwrap_or(NO_BASE);
            match src.manifest_delta(k, &base) {
                Some(z) => {
                    let head = Enc::default()
                        .raw(&base)
                        .raw(&tr.text_hash)
                        .u64(tr.text.len() as u64)
                        .0;
                    self.send(t::MANIFEST_DELTA, &head)?;
                    for c in z.chunks(wire::CHUNK) {
                        self.send(t::MANIFEST, c)?;
                    }
                    self.status.manifest_deltas.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    for c in &tr.chunks {
                        self.send(t::MANIFEST, c)?;
                    }
                }
            }
            self.send(t::MANIFEST_END, &Enc::default().u32(k as u32).0)?;
        }
        self.flush()?;
        self.status.phase.store(phase::SCANNING, Ordering::Relaxed);
        Ok(())
    }

    /// A dry run (OPEN with [`super::wire::flag::DRY_RUN`]): sends the manifests and returns
    /// what the host would do. Nothing else is sent.
    pub fn plan(&mut self, src: &Source) -> Result<Planned> {
        self.send_manifests(src)?;
        self.expect(t::PLANNED)?;
        let mut d = Dec::new(&self.buf, "PLANNED");
        let p = Planned {
            created: d.u64()?,
            updated: d.u64()?,
            type_changed: d.u64()?,
            metadata: d.u64()?,
            deleted: d.u64()?,
            blobs: d.u64()?,
            blob_bytes: d.u64()?,
            files_needed: d.u64()?,
            found_on_host: d.u64()?,
        };
        d.end()?;
        self.status.phase.store(phase::DONE, Ordering::Relaxed);
        Ok(p)
    }

    /// Blob `h` as a delta against the host's old version `base`: DELTA, the delta in
    /// chunks, BLOB_END. The host checks what it decodes against `h`.
    fn send_delta(&mut self, src: &Source, h: &Hash, base: &Hash, z: &[u8]) -> Result<()> {
        let (k, i) = src.by_hash[h];
        let size = src.trees[k].entries.at(i).size;
        self.send(t::DELTA, &Enc::default().raw(h).u64(size).raw(base).0)?;
        for c in z.chunks(wire::CHUNK) {
            self.send(t::DATA, c)?;
        }
        self.status.deltas.fetch_add(1, Ordering::Relaxed);
        self.status
            .blob_bytes_sent
            .fetch_add(size, Ordering::Relaxed);
        self.send(t::BLOB_END, &[])
    }

    fn send_blob(&mut self, src: &Source, h: &Hash, raw: &mut [u8]) -> Result<()> {
        let (k, i) = src.by_hash[h];
        let tr = &src.trees[k];
        let e = tr.entries.at(i);
        let shown = tr.path.join(fsx::os(e.path));
        // A jail file that cannot be read fails this host's push before anything is sent of
        // it: the remote has staged nothing.
        let f = src.open_jail(k, i).map_err(|e| {
            RemoteError::Refused(format!("{}: {e} (reading the jail)", shown.display()))
        })?;
        self.send(t::BLOB, &Enc::default().raw(h).u64(e.size).0)?;
        let mut at = 0u64;
        let mut c = 0u64;
        while at < e.size {
            let want = (e.size - at).min(raw.len() as u64) as usize;
            let z = src.chunk((*h, NO_BASE, c), || {
                use std::os::unix::fs::FileExt;
                f.read_exact_at(&mut raw[..want], at).map_err(|err| {
                    let why = if err.kind() == io::ErrorKind::UnexpectedEof {
                        "shorter than when it was scanned (the jail changed during the push)"
                            .to_string()
                    } else {
                        format!("{err} (reading the jail)")
                    };
                    io::Error::other(format!("{}: {why}", shown.display()))
                })?;
                wire::chunk(&raw[..want], src.level)
            });
            let z = z.map_err(|e| RemoteError::Refused(e.to_string()))?;
            self.send(t::DATA, &z)?;
            at += want as u64;
            c += 1;
            self.status
                .blob_bytes_sent
                .fetch_add(want as u64, Ordering::Relaxed);
        }
        self.send(t::BLOB_END, &[])
    }

    /// Tells a staged host to switch; returns what it did.
    pub fn switch(&mut self) -> Result<Done> {
        self.status.phase.store(phase::SWITCHING, Ordering::Relaxed);
        self.send(t::SWITCH, &[])?;
        self.flush()?;
        self.expect(t::DONE)?;
        let mut d = Dec::new(&self.buf, "DONE");
        let mut done = Done {
            switch_window: Duration::from_nanos(d.u64()?),
            changes: d.u64()?,
            bytes_written: d.u64()?,
            procs: d.u32()?,
            errors: d.u32()?,
            error_text: wire::printable(d.bytes()?),
            kept: [d.u32()?, d.u32()?, d.u32()?],
            cpu: None,
        };
        if self.proto >= 5 {
            done.cpu = Some(Duration::from_micros(d.u64()?));
        }
        d.end()?;
        self.status.phase.store(phase::DONE, Ordering::Relaxed);
        Ok(done)
    }

    /// Tells a staged host to give up its staging (best effort: a host that went away has
    /// switched nothing either).
    pub fn abort(&mut self) {
        let _ = self.send(t::ABORT, &[]);
        let _ = self.flush();
    }

    /// Asks the host to roll its trees back; returns its exit code and output.
    pub fn rollback(&mut self) -> Result<(u8, String)> {
        self.send(t::ROLLBACK, &[])?;
        self.flush()?;
        self.expect(t::ROLLED)?;
        let mut d = Dec::new(&self.buf, "ROLLED");
        let code = d.u8()?;
        let out = wire::printable(d.bytes()?);
        d.end()?;
        Ok((code, out))
    }

    /// Closes the connection and waits for the command to end.
    pub fn close(mut self) {
        drop(self.w);
        let _ = self.child.wait();
        if let Some(th) = self.stderr_thread.take() {
            let _ = th.join();
        }
    }

    /// Ends a connection that failed: the command is killed if it is still running.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        self.close();
    }
}
