//! Progress reporting. The engine never prints; the CLI implements this trait (indicatif).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Scan,
    Hash,
    Stage,
    Commit,
    Prune,
    Finalize,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Scan => "scan",
            Phase::Hash => "hash",
            Phase::Stage => "stage",
            Phase::Commit => "commit",
            Phase::Prune => "prune",
            Phase::Finalize => "finalize",
        }
    }
}

/// Called from worker threads; implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    /// A phase starts; `total` is the number of items (0 when unknown).
    fn start(&self, _phase: Phase, _total: u64) {}
    /// `n` more items of the current phase are done (`bytes` of data among them).
    fn advance(&self, _n: u64, _bytes: u64) {}
    fn finish(&self, _phase: Phase) {}
    /// The bytes the current phase will read or write, when known (after `start`).
    fn total_bytes(&self, _bytes: u64) {}
    /// The phases that follow work on the tree at `dst` (one of several in an `upgrade`).
    fn tree(&self, _dst: &std::path::Path) {}
}

impl<P: Progress + ?Sized> Progress for Box<P> {
    fn start(&self, phase: Phase, total: u64) {
        (**self).start(phase, total)
    }
    fn advance(&self, n: u64, bytes: u64) {
        (**self).advance(n, bytes)
    }
    fn finish(&self, phase: Phase) {
        (**self).finish(phase)
    }
    fn total_bytes(&self, bytes: u64) {
        (**self).total_bytes(bytes)
    }
    fn tree(&self, dst: &std::path::Path) {
        (**self).tree(dst)
    }
}

/// Reports nothing.
pub struct Silent;
impl Progress for Silent {}

/// Work done by this process, in steps: a directory listed, an entry looked at, a read or a
/// copy of at most a few MiB, an item staged. It only ever grows while work moves, and stops
/// when a worker is stuck inside one system call (a read from a dead NFS server never
/// returns), which is what `serve`'s keepalive reports: a host whose counter does not move is
/// stuck, however alive its connection looks.
///
/// One counter for the process, not one per run: the steps are counted where the bytes move
/// (`hash`, `fsx`'s copies, the scan), far below anything that knows which run it serves, and
/// a `serve` process runs one session. Relaxed: only "did it change" is ever asked.
static WORK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// `n` more steps of work done (at least one).
pub fn work(n: u64) {
    WORK.fetch_add(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// The steps done so far by this process.
pub fn work_done() -> u64 {
    WORK.load(std::sync::atomic::Ordering::Relaxed)
}
