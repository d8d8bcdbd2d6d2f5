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

use super::wire::Open;
use super::wire::{self, t, Counted, Dec, Enc};
use super::{RemoteError, Result};
use crate::entry::{Entries, Hash, Kind};
use crate::fsx::{self, split_parent};
use crate::manifest::{self, Manifest};

/// The jail's trees as pushed to every host: manifests compressed once, and where each
/// content hash can be read.
pub struct Source {
    pub trees: Vec<SourceTree>,
    by_hash: HashMap<Hash, (usize, usize)>,
    level: i32,
    chunks: Mutex<Chunks>,
}

/// Compressed chunks recently sent, shared by every host's connection: hosts running the same
/// old release want the same blobs in the same order (the jail's path order) at about the same
/// time, so each chunk is compressed once for the fleet, not once per host. A chunk being
/// compressed is a slot the other hosts wait on rather than compress it too (hosts that start
/// together reach each chunk together). Bounded (oldest out first).
struct Chunks {
    map: HashMap<(Hash, u64), Slot>,
    order: std::collections::VecDeque<(Hash, u64)>,
    bytes: usize,
}

/// One chunk: compressed once, by whichever host asked first; an error is each asker's.
type Slot = Arc<std::sync::OnceLock<std::result::Result<Arc<Vec<u8>>, String>>>;

/// Memory the shared chunks may hold.
const CHUNKS_MAX: usize = 64 << 20;

impl Source {
    /// Chunk `c` of the blob `h`, compressed: from the shared chunks or made by `make`.
    fn chunk(
        &self,
        h: &Hash,
        c: u64,
        make: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<Arc<Vec<u8>>> {
        let slot = {
            let mut ch = self.chunks.lock().expect("poisoned");
            match ch.map.get(&(*h, c)) {
                Some(s) => s.clone(),
                None => {
                    let s = Slot::default();
                    ch.map.insert((*h, c), s.clone());
                    ch.order.push_back((*h, c));
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
            if !ch.map.get(&(*h, c)).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
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
}

impl Source {
    /// `level`: zstd's compression level for manifests and blobs.
    pub fn new(trees: Vec<(Vec<u8>, PathBuf, Manifest)>, level: i32) -> io::Result<Source> {
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
        })
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

/// What the remote said when it had staged.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Files the remote copied from content it already had.
    pub found_on_host: u64,
    pub files_needed: u64,
    pub stage_time: Duration,
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
}

impl Conn {
    /// Starts `argv` (ssh ... HOST 'jailsync serve', or a local `jailsync serve`). With a
    /// `timeout`, a wait for the connection longer than it fails (see [`wire::Counted`]); pass
    /// a keepalive below it in OPEN so that a host working silently is not taken for stalled.
    pub fn spawn(
        argv: &[OsString],
        status: Arc<Status>,
        timeout: Option<Duration>,
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
                },
            ),
            w: BufWriter::with_capacity(
                1 << 16,
                Counted {
                    inner: inp,
                    n: wire,
                    timeout,
                },
            ),
            stderr,
            stderr_thread: Some(th),
            buf: Vec::new(),
            status,
            timeout,
            work: None,
            moved: Instant::now(),
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
        if let Err(e) = super::check_hello(&self.buf, "remote") {
            let _ = self.send(t::ERROR, e.to_string().as_bytes());
            let _ = self.flush();
            return Err(e);
        }
        self.send(t::OPEN, &o.encode())
    }

    /// Sends the manifests, learns what the host lacks, sends it, and waits until the host has
    /// staged every tree (or failed).
    pub fn push(&mut self, src: &Source) -> Result<Staged> {
        self.send_manifests(src)?;
        // What the host lacks: only hashes of this jail, each once.
        let mut want: Vec<Hash> = Vec::new();
        let mut seen: HashSet<Hash> = HashSet::new();
        let (files_needed, found) = loop {
            match self.recv()? {
                t::WANT => {
                    if !self.buf.len().is_multiple_of(32) {
                        return Err(RemoteError::Protocol("WANT not a list of hashes".into()));
                    }
                    for h in self.buf.chunks(32) {
                        let h: Hash = h.try_into().expect("32");
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
        for h in &want {
            self.send_blob(src, h, &mut raw)?;
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
        })
    }

    fn send_manifests(&mut self, src: &Source) -> Result<()> {
        for (k, tr) in src.trees.iter().enumerate() {
            for c in &tr.chunks {
                self.send(t::MANIFEST, c)?;
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

    fn send_blob(&mut self, src: &Source, h: &Hash, raw: &mut [u8]) -> Result<()> {
        let (k, i) = src.by_hash[h];
        let tr = &src.trees[k];
        let e = tr.entries.at(i);
        let shown = tr.path.join(fsx::os(e.path));
        let open = || -> io::Result<std::fs::File> {
            let root = fsx::open_root(&tr.path)?;
            let (parent, name) = split_parent(e.path);
            let dir = fsx::open_dir_beneath(root.as_fd(), parent)?;
            Ok(std::fs::File::from(fsx::open_read_at(dir.as_fd(), name)?))
        };
        // A jail file that cannot be read fails this host's push before anything is sent of
        // it: the remote has staged nothing.
        let f = open().map_err(|e| {
            RemoteError::Refused(format!("{}: {e} (reading the jail)", shown.display()))
        })?;
        self.send(t::BLOB, &Enc::default().raw(h).u64(e.size).0)?;
        let mut at = 0u64;
        let mut c = 0u64;
        while at < e.size {
            let want = (e.size - at).min(raw.len() as u64) as usize;
            let z = src.chunk(h, c, || {
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
        let done = Done {
            switch_window: Duration::from_nanos(d.u64()?),
            changes: d.u64()?,
            bytes_written: d.u64()?,
            procs: d.u32()?,
            errors: d.u32()?,
            error_text: wire::printable(d.bytes()?),
            kept: [d.u32()?, d.u32()?, d.u32()?],
        };
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
