//! One filesystem object as the engine sees it: full `lstat` metadata, symlink target, xattrs
//! and (for regular files, once known) the blake3 of its content.

/// One extended attribute: name and value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);
/// Extended attributes, sorted by name.
pub type Xattrs = Box<[Xattr]>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    #[default]
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "link",
            Kind::Fifo => "fifo",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Socket => "socket",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "file" => Kind::File,
            "dir" => Kind::Dir,
            "link" => Kind::Symlink,
            "fifo" => Kind::Fifo,
            "char" => Kind::Char,
            "block" => Kind::Block,
            "socket" => Kind::Socket,
            _ => return None,
        })
    }

    /// rsync's one-letter file type in itemized output.
    pub fn itemize_char(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'L',
            Kind::Char | Kind::Block => 'D',
            Kind::Fifo | Kind::Socket => 'S',
        }
    }
}

/// The ctime of an entry whose real one does not fit (see [`Entry::ctime`]): an impossible
/// nanosecond value, so it matches no stat.
pub const CTIME_UNKNOWN: (i64, u32) = (i64::MIN, u32::MAX);

/// Content hash (blake3).
pub type Hash = [u8; 32];

/// No hash known (the value of [`Entry`]'s hash slot).
const NO_HASH: u32 = u32::MAX;

/// Kept small: a run holds one for every object of both trees, so its size is most of the
/// run's memory (see the size test below). Its path and hash live in the [`Entries`] that holds
/// it: one buffer of paths costs a path's bytes, where one allocation each cost half as much
/// again, and most entries have no hash. Owner and device are one index into a process-wide
/// table ([`Ids`]): a tree has a handful of distinct ones.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Where this entry's path is in its list's path buffer: the offset in the low
    /// [`OFF_BITS`] bits, the length above them (see [`path_in`]).
    path_at: u64,
    pub size: u64,
    /// The modification time in nanoseconds, or [`IN_EXTRA`] (see [`Entry::mtime`]).
    mtime_ns: i64,
    /// The status change time in nanoseconds (see [`Entry::ctime`]).
    ctime_ns: i64,
    pub ino: u64,
    /// What few entries have (symlink target, xattrs, device number), behind one pointer.
    extra: Option<Box<Extra>>,
    /// Index into its list's hashes, or [`NO_HASH`].
    hash_ix: u32,
    pub nlink: u32,
    /// uid, gid and device: an index into [`Ids`].
    ids: u32,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u16,
    pub kind: Kind,
    /// A regular file with holes (fewer blocks allocated than its size needs).
    pub sparse: bool,
}

/// The `mtime_ns` of an entry whose mtime does not fit 64 bits of nanoseconds (years 1678 to
/// 2262, or a forged nanosecond count): the real one is in its [`Extra`].
const IN_EXTRA: i64 = i64::MIN;

impl Default for Entry {
    fn default() -> Entry {
        Entry {
            path_at: 0,
            size: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            ino: 0,
            extra: None,
            hash_ix: NO_HASH,
            nlink: 0,
            ids: 0,
            mode: 0,
            kind: Kind::File,
            sparse: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Extra {
    target: Option<Box<[u8]>>,
    xattrs: Option<Xattrs>,
    rdev: u64,
    /// An mtime `mtime_ns` cannot hold.
    mtime: Option<(i64, u32)>,
}

/// Every (uid, gid, device) a run has seen, each once, indexed by [`Entry`]'s `ids`. Index 0 is
/// (0, 0, 0), so a default entry needs none. Read without a lock (every slot is written once,
/// before its index is handed out); a new triple is added under a mutex, which each thread
/// reaches only for triples it has not met (see `LOCAL`).
struct Ids {
    /// Segment `k` holds indices `2^k - 1 .. 2^(k+1) - 1`: a slot never moves once written.
    segs: [std::sync::OnceLock<Box<[std::sync::OnceLock<Triple>]>>; 32],
    index: std::sync::Mutex<std::collections::HashMap<Triple, u32>>,
}

type Triple = (u32, u32, u64);

static IDS: std::sync::LazyLock<Ids> = std::sync::LazyLock::new(|| {
    let ids = Ids {
        segs: std::array::from_fn(|_| std::sync::OnceLock::new()),
        index: Default::default(),
    };
    ids.index.lock().expect("poisoned").insert((0, 0, 0), 0);
    ids.slot(0).set((0, 0, 0)).expect("first");
    ids
});

thread_local! {
    /// This thread's copy of the triples it has met (most threads meet a few).
    static LOCAL: std::cell::RefCell<std::collections::HashMap<Triple, u32>> = Default::default();
}

impl Ids {
    fn slot(&self, i: u32) -> &std::sync::OnceLock<Triple> {
        let k = (u64::from(i) + 1).ilog2();
        let seg = self.segs[k as usize]
            .get_or_init(|| (0..1u64 << k).map(|_| std::sync::OnceLock::new()).collect());
        &seg[(u64::from(i) + 1 - (1 << k)) as usize]
    }

    fn get(&self, i: u32) -> Triple {
        *self
            .slot(i)
            .get()
            .expect("an index is handed out after its slot is set")
    }

    fn intern(&self, t: Triple) -> u32 {
        if t == (0, 0, 0) {
            return 0;
        }
        if let Some(i) = LOCAL.with(|l| l.borrow().get(&t).copied()) {
            return i;
        }
        let i = {
            let mut index = self.index.lock().expect("poisoned");
            let n = u32::try_from(index.len()).expect("fewer than 4G owners and devices");
            *index.entry(t).or_insert_with(|| {
                self.slot(n).set(t).expect("a fresh slot");
                n
            })
        };
        LOCAL.with(|l| l.borrow_mut().insert(t, i));
        i
    }
}

impl Entry {
    /// An entry with every other field zero (and no extras); its path is given when it is
    /// pushed onto an [`Entries`].
    pub fn new(kind: Kind) -> Entry {
        Entry {
            kind,
            ..Entry::default()
        }
    }

    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.sparse
    }

    pub fn uid(&self) -> u32 {
        IDS.get(self.ids).0
    }

    pub fn gid(&self) -> u32 {
        IDS.get(self.ids).1
    }

    /// The device (`st_dev`) the entry is on.
    pub fn dev(&self) -> u64 {
        IDS.get(self.ids).2
    }

    pub fn set_uid(&mut self, uid: u32) {
        let (_, g, d) = IDS.get(self.ids);
        self.ids = IDS.intern((uid, g, d));
    }

    pub fn set_gid(&mut self, gid: u32) {
        let (u, _, d) = IDS.get(self.ids);
        self.ids = IDS.intern((u, gid, d));
    }

    pub fn set_owner(&mut self, uid: u32, gid: u32) {
        let d = IDS.get(self.ids).2;
        self.ids = IDS.intern((uid, gid, d));
    }

    pub fn set_dev(&mut self, dev: u64) {
        let (u, g, _) = IDS.get(self.ids);
        self.ids = IDS.intern((u, g, dev));
    }

    /// Owner and device together, from a stat: one table lookup.
    pub fn set_ids(&mut self, uid: u32, gid: u32, dev: u64) {
        self.ids = IDS.intern((uid, gid, dev));
    }

    /// The same owner and device as `o` (one comparison).
    pub fn same_ids(&self, o: &Entry) -> bool {
        self.ids == o.ids
    }

    /// The modification time (seconds, nanoseconds), exactly as set.
    pub fn mtime(&self) -> (i64, u32) {
        if self.mtime_ns == IN_EXTRA {
            if let Some(t) = self.extra.as_ref().and_then(|x| x.mtime) {
                return t;
            }
        }
        (
            self.mtime_ns.div_euclid(1_000_000_000),
            self.mtime_ns.rem_euclid(1_000_000_000) as u32,
        )
    }

    pub fn set_mtime(&mut self, secs: i64, nsec: u32) {
        let ns = (nsec < 1_000_000_000)
            .then(|| {
                secs.checked_mul(1_000_000_000)?
                    .checked_add(i64::from(nsec))
            })
            .flatten()
            .filter(|&n| n != IN_EXTRA);
        match ns {
            Some(n) => {
                self.mtime_ns = n;
                if self.extra.as_ref().is_some_and(|x| x.mtime.is_some()) {
                    self.extra_mut(|x| x.mtime = None);
                }
            }
            None => {
                self.mtime_ns = IN_EXTRA;
                self.extra_mut(|x| x.mtime = Some((secs, nsec)));
            }
        }
    }

    /// A symlink's target.
    pub fn target(&self) -> Option<&[u8]> {
        self.extra.as_ref()?.target.as_deref()
    }

    /// Extended attributes, sorted by name (`None`: none read).
    pub fn xattrs(&self) -> Option<&Xattrs> {
        self.extra.as_ref()?.xattrs.as_ref()
    }

    /// A device's number (0 for everything else).
    pub fn rdev(&self) -> u64 {
        self.extra.as_ref().map_or(0, |x| x.rdev)
    }

    pub fn set_target(&mut self, t: Option<Box<[u8]>>) {
        if t.is_some() || self.extra.is_some() {
            self.extra_mut(|x| x.target = t);
        }
    }

    pub fn set_xattrs(&mut self, x: Option<Xattrs>) {
        // The scan sets `None` on nearly every entry: no allocation for that.
        if x.is_some() || self.extra.is_some() {
            self.extra_mut(|e| e.xattrs = x);
        }
    }

    pub fn set_rdev(&mut self, r: u64) {
        if r != 0 || self.extra.is_some() {
            self.extra_mut(|x| x.rdev = r);
        }
    }

    fn extra_mut(&mut self, f: impl FnOnce(&mut Extra)) {
        let mut x = self.extra.take().unwrap_or_default();
        f(&mut x);
        if x.target.is_some() || x.xattrs.is_some() || x.rdev != 0 || x.mtime.is_some() {
            self.extra = Some(x);
        }
    }

    /// The status change time (seconds, nanoseconds). The kernel sets it to the current time,
    /// so it fits in 64 bits of nanoseconds (years 1678 to 2262); one that does not (a forged
    /// image) reads as [`CTIME_UNKNOWN`] and never lets the stat cache vouch for the entry.
    pub fn ctime(&self) -> (i64, u32) {
        if self.ctime_ns == i64::MIN {
            return CTIME_UNKNOWN;
        }
        (
            self.ctime_ns.div_euclid(1_000_000_000),
            self.ctime_ns.rem_euclid(1_000_000_000) as u32,
        )
    }

    pub fn set_ctime(&mut self, secs: i64, nsec: u32) {
        self.ctime_ns = ctime_ns(secs, nsec);
    }

    /// Is the ctime the stat's `(secs, nsec)`, as far as this entry can tell (an unknown one
    /// matches an unknown one: the stat saw the same forged value)?
    pub fn same_ctime(&self, secs: i64, nsec: u32) -> bool {
        ctime_ns(secs, nsec) == self.ctime_ns
    }

    pub fn is_executable(&self) -> bool {
        self.kind == Kind::File && self.mode & 0o111 != 0
    }

    pub fn same_mtime(&self, o: &Entry) -> bool {
        // Equal nanosecond counts are equal times, but for two kept in their extras.
        self.mtime_ns == o.mtime_ns && (self.mtime_ns != IN_EXTRA || self.mtime() == o.mtime())
    }

    /// Hard-linked (more than one name for the inode somewhere). Any type but a directory can
    /// be: symlinks, fifos, sockets and devices too (`link(2)` on a symlink links the symlink).
    pub fn is_multi_linked(&self) -> bool {
        self.kind != Kind::Dir && self.nlink > 1
    }
}

/// A ctime as nanoseconds, `i64::MIN` when it does not fit (see [`Entry::ctime`]).
fn ctime_ns(secs: i64, nsec: u32) -> i64 {
    secs.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(i64::from(nsec.min(999_999_999))))
        .filter(|&n| n != i64::MIN)
        .unwrap_or(i64::MIN)
}

/// One entry with its path and hash, as read from an [`Entries`].
#[derive(Clone, Copy, Debug)]
pub struct Ent<'a> {
    /// Path relative to the tree root, `/`-separated, no `.` or `..`; empty for the root.
    pub path: &'a [u8],
    pub hash: Option<&'a Hash>,
    e: &'a Entry,
}

impl std::ops::Deref for Ent<'_> {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        self.e
    }
}

impl<'a> Ent<'a> {
    fn new(paths: &'a [u8], hashes: &'a [Hash], e: &'a Entry) -> Ent<'a> {
        Ent {
            path: path_in(paths, e.path_at),
            hash: hashes.get(e.hash_ix as usize),
            e,
        }
    }

    pub fn name(&self) -> &'a [u8] {
        split_parent(self.path).1
    }
}

/// A list of entries (one tree's, or a manifest's) with their paths in one buffer, each ended
/// by a NUL (no path holds one), and the known hashes in another.
#[derive(Clone, Debug, Default)]
pub struct Entries {
    list: Vec<Entry>,
    paths: Vec<u8>,
    hashes: Vec<Hash>,
}

/// Bits of [`Entry`]'s `path_at` that hold the offset (a terabyte of path bytes); the rest
/// hold the length, which saves looking for the NUL on every comparison while sorting.
const OFF_BITS: u32 = 40;
/// The length field's value for a path too long for it (megabytes deep): found by its NUL.
const LONG: u64 = (1 << (64 - OFF_BITS)) - 1;

fn path_in(paths: &[u8], at: u64) -> &[u8] {
    let off = (at & ((1 << OFF_BITS) - 1)) as usize;
    match at >> OFF_BITS {
        LONG => {
            let s = &paths[off..];
            &s[..memchr::memchr(0, s).expect("paths end with a NUL")]
        }
        len => &paths[off..off + len as usize],
    }
}

impl Entries {
    pub fn new() -> Entries {
        Entries::default()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn at(&self, i: usize) -> Ent<'_> {
        Ent::new(&self.paths, &self.hashes, &self.list[i])
    }

    pub fn get(&self, i: usize) -> Option<Ent<'_>> {
        (i < self.list.len()).then(|| self.at(i))
    }

    pub fn first(&self) -> Option<Ent<'_>> {
        self.get(0)
    }

    pub fn path(&self, i: usize) -> &[u8] {
        path_in(&self.paths, self.list[i].path_at)
    }

    pub fn hash(&self, i: usize) -> Option<&Hash> {
        self.hashes.get(self.list[i].hash_ix as usize)
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Ent<'_>> + ExactSizeIterator + Clone {
        (0..self.list.len()).map(|i| self.at(i))
    }

    /// Adds `e` at `path` (which must not hold a NUL); returns its index.
    pub fn push(&mut self, path: &[u8], mut e: Entry) -> usize {
        assert!(memchr::memchr(0, path).is_none(), "a path holds a NUL");
        assert!(
            self.paths.len() + path.len() < 1 << OFF_BITS,
            "a terabyte of paths"
        );
        e.path_at = self.paths.len() as u64 | (path.len() as u64).min(LONG) << OFF_BITS;
        e.hash_ix = NO_HASH;
        self.paths.extend_from_slice(path);
        self.paths.push(0);
        self.list.push(e);
        self.list.len() - 1
    }

    /// Adds a copy of `e` (from this or another list), hash included.
    pub fn push_ent(&mut self, e: Ent<'_>) -> usize {
        let i = self.push(e.path, e.e.clone());
        self.set_hash(i, e.hash.copied());
        i
    }

    pub fn set_hash(&mut self, i: usize, h: Option<Hash>) {
        let e = &mut self.list[i];
        match h {
            // The old slot, if any, is left unused: hashes are set once but for rare resets.
            None => e.hash_ix = NO_HASH,
            Some(h) if e.hash_ix != NO_HASH => self.hashes[e.hash_ix as usize] = h,
            Some(h) => {
                e.hash_ix = u32::try_from(self.hashes.len())
                    .ok()
                    .filter(|&n| n != NO_HASH)
                    .expect("fewer than 4G hashes");
                self.hashes.push(h);
            }
        }
    }

    /// Makes room for `n` more hashes, exactly: the list is never grown past what it holds.
    pub fn reserve_hashes(&mut self, n: usize) {
        self.hashes.reserve_exact(n);
    }

    /// Moves every entry of `other` to the end of this list.
    pub fn append(&mut self, other: &mut Entries) {
        let base = self.paths.len() as u64;
        // Offsets stay below the length bits, so adding to the packed value moves the offset.
        assert!(
            self.paths.len() + other.paths.len() < 1 << OFF_BITS,
            "a terabyte of paths"
        );
        let hbase = self.hashes.len();
        self.list.reserve(other.list.len());
        for mut e in other.list.drain(..) {
            e.path_at += base;
            if e.hash_ix != NO_HASH {
                e.hash_ix =
                    u32::try_from(hbase + e.hash_ix as usize).expect("fewer than 4G hashes");
            }
            self.list.push(e);
        }
        self.paths.append(&mut other.paths);
        self.hashes.append(&mut other.hashes);
    }

    /// Sorts by path bytes (parents before their children), in parallel on the current pool.
    pub fn sort_by_path(&mut self) {
        use rayon::slice::ParallelSliceMut;
        let paths = &self.paths;
        self.list
            .par_sort_unstable_by(|a, b| path_in(paths, a.path_at).cmp(path_in(paths, b.path_at)));
    }

    /// The index of `path`, or where it would go, in a list sorted by path.
    pub fn search(&self, path: &[u8]) -> Result<usize, usize> {
        self.list
            .binary_search_by(|e| path_in(&self.paths, e.path_at).cmp(path))
    }

    /// Keeps the entries `keep` accepts (their paths' bytes stay in the buffer).
    pub fn retain(&mut self, mut keep: impl FnMut(Ent<'_>) -> bool) {
        let (paths, hashes) = (&self.paths, &self.hashes);
        self.list.retain(|e| keep(Ent::new(paths, hashes, e)));
    }
}

impl std::ops::Index<usize> for Entries {
    type Output = Entry;
    fn index(&self, i: usize) -> &Entry {
        &self.list[i]
    }
}

impl std::ops::IndexMut<usize> for Entries {
    fn index_mut(&mut self, i: usize) -> &mut Entry {
        &mut self.list[i]
    }
}

impl<'a> FromIterator<Ent<'a>> for Entries {
    fn from_iter<I: IntoIterator<Item = Ent<'a>>>(it: I) -> Entries {
        let mut out = Entries::new();
        for e in it {
            out.push_ent(e);
        }
        out
    }
}

/// Shows a relative path for humans: UTF-8 as is, other bytes as `\xNN`; the root as `.`.
pub fn display_path(p: &[u8]) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let mut s = String::with_capacity(p.len());
    for chunk in p.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\n' {
                s.push_str("\\n");
            } else if c == '\\' {
                s.push_str("\\\\");
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Joins a relative path and a name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    if !parent.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// Two path-sorted lists as one, in path order (on equal paths `a`'s entry comes first).
pub fn merged<'a>(a: &'a Entries, b: &'a Entries) -> impl Iterator<Item = Ent<'a>> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || {
        let pick_a = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.path <= y.path,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if pick_a {
            i += 1;
            a.get(i - 1)
        } else {
            j += 1;
            b.get(j - 1)
        }
    })
}

/// Whether `path` is `dir` or lies below it (relative paths; the empty `dir`, the root,
/// holds every path).
pub fn at_or_below(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty()
        || (path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/'))
}

/// Splits `a/b/c` into (`a/b`, `c`).
pub fn split_parent(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_stays_small() {
        // One per object of both trees: 200k-file trees hold 400k of them.
        assert!(
            std::mem::size_of::<Entry>() <= 64,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn ctime_round_trips_or_is_unknown() {
        let mut e = Entry::default();
        for t in [
            (0, 0),
            (1_700_000_000, 999_999_999),
            (-1, 5),
            (9_000_000_000, 1),
        ] {
            e.set_ctime(t.0, t.1);
            assert_eq!(e.ctime(), t);
        }
        for t in [(i64::MAX, 0), (i64::MIN, 0), (-9_300_000_000, 0)] {
            e.set_ctime(t.0, t.1);
            assert_eq!(e.ctime(), CTIME_UNKNOWN);
        }
    }

    #[test]
    fn mtimes_round_trip_exactly() {
        let mut e = Entry::default();
        // In range, then out of it (kept in the extra), then in range again (extra gone).
        for t in [
            (1_700_000_000, 999_999_999),
            (-1, 5),
            (i64::MAX, 7),
            (i64::MIN, 0),
            (-9_300_000_000, 3),
            (1, 1_500_000_000),
            (0, 0),
        ] {
            e.set_mtime(t.0, t.1);
            assert_eq!(e.mtime(), t);
        }
        assert!(e.extra.is_none());
        let (mut a, mut b) = (Entry::default(), Entry::default());
        a.set_mtime(i64::MAX, 1);
        b.set_mtime(i64::MAX, 2);
        assert!(!a.same_mtime(&b));
        b.set_mtime(i64::MAX, 1);
        assert!(a.same_mtime(&b));
        b.set_mtime(5, 1);
        assert!(!a.same_mtime(&b) && !b.same_mtime(&a));
        // The extra's other contents survive an mtime coming back into range.
        a.set_target(Some(b"t".as_slice().into()));
        a.set_mtime(5, 1);
        assert_eq!((a.target(), a.mtime()), (Some(b"t".as_slice()), (5, 1)));
        assert!(a.same_mtime(&b));
    }

    #[test]
    fn owners_and_devices_are_exact_across_threads() {
        // Many distinct triples (more than a segment or two), made on several threads at once,
        // each read back exactly; equal triples share an index.
        let made: Vec<Vec<Entry>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4u32)
                .map(|t| {
                    s.spawn(move || {
                        (0..5000u32)
                            .map(|i| {
                                let mut e = Entry::default();
                                e.set_ids(i % 700, u32::MAX - i % 3, u64::from(t % 2) << 40 | 7);
                                e
                            })
                            .collect()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (t, es) in made.iter().enumerate() {
            for (i, e) in es.iter().enumerate() {
                let i = i as u32;
                let want = (i % 700, u32::MAX - i % 3, ((t % 2) as u64) << 40 | 7);
                assert_eq!((e.uid(), e.gid(), e.dev()), want);
                assert!(e.same_ids(&made[(t + 2) % 4][i as usize]));
            }
        }
        let mut e = made[0][1].clone();
        e.set_uid(12345);
        assert_eq!((e.uid(), e.gid(), e.dev()), (12345, u32::MAX - 1, 7));
        e.set_gid(0);
        e.set_dev(u64::MAX);
        assert_eq!((e.uid(), e.gid(), e.dev()), (12345, 0, u64::MAX));
        e.set_owner(0, 0);
        e.set_dev(0);
        assert!(e.same_ids(&Entry::default()));
    }

    #[test]
    fn extras_round_trip() {
        let mut e = Entry::default();
        assert_eq!((e.target(), e.xattrs(), e.rdev()), (None, None, 0));
        e.set_target(Some(b"t".as_slice().into()));
        e.set_rdev(7);
        assert_eq!((e.target(), e.rdev()), (Some(b"t".as_slice()), 7));
        e.set_target(None);
        e.set_rdev(0);
        assert!(e.extra.is_none());
    }

    #[test]
    fn entries_keep_paths_and_hashes_apart() {
        let mut a = Entries::new();
        a.push(b"b", Entry::new(Kind::File));
        a.push(b"", Entry::new(Kind::Dir));
        a.set_hash(0, Some([1; 32]));
        let mut b = Entries::new();
        b.push(b"a/x", Entry::new(Kind::File));
        b.set_hash(0, Some([2; 32]));
        b.push(b"a", Entry::new(Kind::Dir));
        a.append(&mut b);
        assert!(b.is_empty());
        a.sort_by_path();
        let got: Vec<_> = a
            .iter()
            .map(|e| (e.path, e.hash.copied(), e.kind))
            .collect();
        assert_eq!(
            got,
            [
                (&b""[..], None, Kind::Dir),
                (b"a", None, Kind::Dir),
                (b"a/x", Some([2; 32]), Kind::File),
                (b"b", Some([1; 32]), Kind::File),
            ]
        );
        assert_eq!((a.search(b"a/x"), a.search(b"a/y")), (Ok(2), Err(3)));
        a.set_hash(3, Some([3; 32]));
        a.set_hash(2, None);
        assert_eq!((a.hash(2), a.hash(3)), (None, Some(&[3; 32])));
        a.retain(|e| e.kind == Kind::File);
        assert_eq!(
            a.iter().map(|e| e.path).collect::<Vec<_>>(),
            [&b"a/x"[..], b"b"]
        );
        let c: Entries = a.iter().rev().collect();
        assert_eq!((c.path(0), c.hash(0)), (&b"b"[..], Some(&[3; 32])));

        // A path longer than the length field holds is found by its NUL.
        let long = vec![b'x'; LONG as usize + 5];
        let mut d = Entries::new();
        d.push(b"a", Entry::new(Kind::File));
        d.push(&long, Entry::new(Kind::File));
        d.append(&mut c.clone());
        assert_eq!(
            (d.path(0), d.path(1).len(), d.path(2)),
            (&b"a"[..], long.len(), &b"b"[..])
        );
    }
}
