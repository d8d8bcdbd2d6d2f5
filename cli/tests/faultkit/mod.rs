//! Fault-injection kit: a seeded churned tree pair, the "whole or old, never lacks" check of
//! a destination caught mid-sync, killing the real binary at a chosen moment, and a private
//! mount namespace holding a small tmpfs.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::common::{esc, Listing, Rec, Tree, BIN};

/// Prefix of the engine's temporary names.
pub const TMP: &[u8] = b".jailsync-tmp-";

// ---------------------------------------------------------------------------------------------
// Randomness: splitmix64, seeded from JAILSYNC_FAULT_SEED or the clock (printed, to replay).

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `JAILSYNC_FAULT_SEED`, else from the clock; printed so a failure replays.
    pub fn from_env(test: &str) -> Rng {
        let seed = std::env::var("JAILSYNC_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: JAILSYNC_FAULT_SEED={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The churned pair.

#[derive(Clone)]
enum Obj {
    Absent,
    File {
        data: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Link(Vec<u8>),
    Dir(Vec<(String, Vec<u8>)>),
}

fn small_size(rng: &mut Rng) -> usize {
    let r = rng.unit();
    if r < 0.75 {
        rng.below(2048) as usize
    } else if r < 0.99 {
        2048 + rng.below(14 << 10) as usize
    } else {
        (64 << 10) + rng.below(192 << 10) as usize
    }
}

fn rand_file(rng: &mut Rng) -> Obj {
    let n = small_size(rng);
    Obj::File {
        data: rng.bytes(n),
        mode: if rng.below(4) == 0 { 0o755 } else { 0o644 },
        mtime: 1_500_000_000 + rng.below(100_000_000) as i64,
    }
}

fn rand_dir(rng: &mut Rng) -> Obj {
    let n = 1 + rng.below(4);
    Obj::Dir(
        (0..n)
            .map(|i| {
                let sz = small_size(rng);
                (format!("c{i}"), rng.bytes(sz))
            })
            .collect(),
    )
}

fn rand_link(rng: &mut Rng) -> Obj {
    Obj::Link(format!("../target-{}", rng.below(1_000_000)).into_bytes())
}

fn rand_obj(rng: &mut Rng) -> Obj {
    let r = rng.unit();
    if r < 0.80 {
        rand_file(rng)
    } else if r < 0.90 {
        rand_link(rng)
    } else {
        rand_dir(rng)
    }
}

/// The new state of a slot given its old one.
fn churn_obj(rng: &mut Rng, old: &Obj) -> Obj {
    let r = rng.unit();
    match old {
        _ if r < 0.50 => old.clone(),
        Obj::Absent => rand_obj(rng),
        // Content changed, same kind (half of the files keep their size, so both sides must
        // be hashed to see it).
        Obj::File { data, mode, mtime } if r < 0.65 => {
            let n = if rng.below(2) == 0 {
                data.len()
            } else {
                small_size(rng)
            };
            Obj::File {
                data: rng.bytes(n),
                mode: *mode,
                mtime: *mtime + 1,
            }
        }
        // Metadata only.
        Obj::File { data, mode, mtime } if r < 0.75 => Obj::File {
            data: data.clone(),
            mode: *mode ^ 0o111,
            mtime: *mtime + 7,
        },
        Obj::Link(_) if r < 0.75 => rand_link(rng),
        Obj::Dir(children) if r < 0.75 => {
            let mut c = children.clone();
            let sz = small_size(rng);
            c[0].1 = rng.bytes(sz);
            if c.len() > 1 {
                c.pop();
            }
            c.push(("added".into(), rng.bytes(100)));
            Obj::Dir(c)
        }
        _ if r < 0.85 => Obj::Absent,
        // Type change.
        Obj::File { .. } => {
            if rng.below(2) == 0 {
                rand_link(rng)
            } else {
                rand_dir(rng)
            }
        }
        Obj::Link(_) => {
            if rng.below(2) == 0 {
                rand_file(rng)
            } else {
                rand_dir(rng)
            }
        }
        Obj::Dir(_) => {
            if rng.below(2) == 0 {
                rand_file(rng)
            } else {
                rand_link(rng)
            }
        }
    }
}

fn put(t: &Tree, rel: &str, o: &Obj) {
    match o {
        Obj::Absent => {}
        Obj::File { data, mode, mtime } => {
            t.file(rel, data)
                .mode(rel, *mode)
                .mtime(rel, *mtime, 123_456_789);
        }
        Obj::Link(target) => {
            t.symlink(rel, target);
        }
        Obj::Dir(children) => {
            t.dir(rel);
            for (n, d) in children {
                let p = format!("{rel}/{n}");
                t.file(&p, d).mtime(&p, 1_400_000_000, 0);
            }
        }
    }
}

fn put_many(t: &Tree, dir: &str, n: usize, rng: &mut Rng) {
    t.dir(dir);
    for i in 0..n {
        let sz = small_size(rng);
        t.file(format!("{dir}/f{i}"), rng.bytes(sz));
    }
}

/// Builds a churned pair: `old` (the live tree before the sync) and `new` (the jail) with
/// about `slots` entries changed, added, removed, changed in type (file, dir, symlink, both
/// ways), changed in metadata only, hard-link groups kept, rewritten and regrouped, whole
/// subtrees appearing, vanishing and flipping type, and `big` files of `big_size` bytes
/// rewritten at the same size.
pub fn churn(old: &Tree, new: &Tree, rng: &mut Rng, slots: usize, big: usize, big_size: usize) {
    let per_dir = 50;
    let subdirs = slots.div_ceil(per_dir).max(1);
    for s in 0..subdirs {
        let dir = format!("d{}/s{}", s / 5, s % 5);
        old.dir(&dir);
        new.dir(&dir);
        for e in 0..per_dir {
            let rel = format!("{dir}/e{e:02}");
            let r = rng.unit();
            let o = if r < 0.95 { rand_obj(rng) } else { Obj::Absent };
            let n = churn_obj(rng, &o);
            put(old, &rel, &o);
            put(new, &rel, &n);
        }
        // Hard links: kept, rewritten together, or regrouped.
        let (a, b, c) = (
            format!("{dir}/hl_a"),
            format!("{dir}/hl_b"),
            format!("{dir}/hl_c"),
        );
        let n = 300 + rng.below(3000) as usize;
        let data = rng.bytes(n);
        old.file(&a, &data).hardlink(&b, &a);
        match s % 3 {
            0 => {
                new.file(&a, &data).hardlink(&b, &a);
            }
            1 => {
                let d2 = rng.bytes(data.len());
                new.file(&a, &d2).hardlink(&b, &a).hardlink(&c, &a);
            }
            _ => {
                new.file(&a, &data).file(&b, &data);
            }
        }
    }
    // Whole subtrees.
    put_many(old, "gone", 60, rng);
    put_many(new, "fresh", 60, rng);
    put_many(old, "flip", 40, rng);
    new.file("flip", rng.bytes(5000));
    old.file("flop", rng.bytes(5000));
    put_many(new, "flop", 40, rng);
    put_many(old, "dir2link", 20, rng);
    new.symlink("dir2link", "fresh");
    old.symlink("link2dir", "gone");
    put_many(new, "link2dir", 20, rng);
    // Metadata the sync must also converge on after a crash: xattrs, setuid bits, owners,
    // fifos and devices changing type or number.
    let root = crate::common::is_root();
    for i in 0..20 {
        let x = format!("meta/x{i}");
        old.file(&x, b"same").xattr(&x, "user.k", "v1");
        new.file(&x, b"same")
            .xattr(&x, "user.k", if i % 2 == 0 { "v2" } else { "v1" });
        if root {
            let q = format!("meta/s{i}");
            old.file(&q, b"suid").owner(&q, 1000, 1000).mode(&q, 0o4755);
            new.file(&q, b"suid")
                .owner(&q, 0, if i % 2 == 0 { 0 } else { 1000 })
                .mode(&q, 0o4755);
        }
    }
    old.fifo("meta/p2f");
    new.file("meta/p2f", "was a fifo");
    old.file("meta/f2p", "becomes a fifo");
    new.fifo("meta/f2p");
    if root {
        old.chardev("meta/dev", 1, 3);
        new.chardev("meta/dev", 1, 5);
    }
    // Big files rewritten at the same size: a torn one would show in its hash.
    for i in 0..big {
        let p = format!("big/b{i}");
        old.file(&p, rng.bytes(big_size))
            .mtime(&p, 1_600_000_000, 0);
        new.file(&p, rng.bytes(big_size))
            .mtime(&p, 1_600_000_001, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Checks on a destination caught mid-sync.

/// Is some component of `p` a temporary name?
pub fn in_tmp(p: &[u8]) -> bool {
    p.split(|&b| b == b'/').any(|c| c.starts_with(TMP))
}

/// Paths of a listing under a temporary name (top-most only).
pub fn leftovers(l: &Listing) -> Vec<String> {
    l.0.keys()
        .filter(|p| {
            let last = p.rsplit(|&b| b == b'/').next().unwrap_or(p);
            last.starts_with(TMP) && !in_tmp(&p[..p.len() - last.len()])
        })
        .map(|p| esc(p))
        .collect()
}

/// Kind and content of an entry: what "old or new version" compares.
fn content(r: &Rec) -> (char, &Option<String>, &Option<Vec<u8>>, Option<u64>) {
    (r.kind, &r.hash, &r.target, r.rdev)
}

/// Everything wrong with `now` as a state between `old` and `new`: an entry that is neither
/// its old nor its new version (kind and content), a path both trees have that is missing, or
/// a stray name that is not a temporary one.
pub fn old_or_new(old: &Listing, new: &Listing, now: &Listing) -> Vec<String> {
    let mut bad = Vec::new();
    for (p, r) in &now.0 {
        if in_tmp(p) {
            continue;
        }
        let c = content(r);
        let is_old = old.0.get(p).is_some_and(|o| content(o) == c);
        let is_new = new.0.get(p).is_some_and(|n| content(n) == c);
        if !is_old && !is_new {
            bad.push(format!(
                "{}: neither old nor new: now {r:?}, old {:?}, new {:?}",
                esc(p),
                old.0.get(p),
                new.0.get(p)
            ));
        }
    }
    for p in old.0.keys() {
        if new.0.contains_key(p) && !now.0.contains_key(p) {
            bad.push(format!("{}: in both trees but missing", esc(p)));
        }
    }
    bad
}

/// A rough label for where a sync was interrupted, from what the destination shows.
pub fn classify(old: &Listing, new: &Listing, now: &Listing) -> &'static str {
    let tmp = !leftovers(now).is_empty();
    let mut any_new = false;
    let mut all_new = true;
    for (p, n) in &new.0 {
        if old.0.get(p).is_some_and(|o| content(o) == content(n)) {
            continue;
        }
        match now.0.get(p) {
            Some(r) if content(r) == content(n) => any_new = true,
            _ => all_new = false,
        }
    }
    let orphans = now.0.keys().any(|p| !in_tmp(p) && !new.0.contains_key(p));
    match (any_new, all_new, tmp, orphans) {
        (false, _, false, _) => "scan/hash",
        (false, _, true, _) => "stage",
        (true, false, _, _) => "commit",
        (true, true, _, true) | (true, true, true, false) => "prune",
        (true, true, false, false) => "finalize/done",
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

pub fn cmd<I, S>(state: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(BIN);
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .stdin(Stdio::null());
    c
}

/// Runs `c`, SIGKILLs it after `delay` if still running. Returns its status, whether it was
/// killed, and its stderr.
pub fn run_and_kill(c: Command, delay: Duration) -> (ExitStatus, bool, String) {
    run_and_kill_after(c, || true, delay)
}

/// Runs `c`; once `trigger` (polled in a tight loop) returns true, waits `delay` more and
/// SIGKILLs it if it is still running.
pub fn run_and_kill_after(
    mut c: Command,
    mut trigger: impl FnMut() -> bool,
    delay: Duration,
) -> (ExitStatus, bool, String) {
    let mut child = c
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jailsync");
    let mut t0 = None;
    let mut killed = false;
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return (st, false, read_stderr(&mut child));
        }
        let Some(t) = t0 else {
            if trigger() {
                t0 = Some(Instant::now());
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
            continue;
        };
        let el = t.elapsed();
        if el >= delay {
            break;
        }
        std::thread::sleep((delay - el).min(Duration::from_micros(500)));
    }
    if child.try_wait().expect("wait").is_none() {
        child.kill().expect("kill");
        killed = true;
    }
    let st = child.wait().expect("wait");
    (st, killed, read_stderr(&mut child))
}

fn read_stderr(c: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// `cp -a FROM TO` (keeps hard links, modes, times, xattrs).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

pub fn remove_tree(p: &Path) {
    if p.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display()));
    }
}

// ---------------------------------------------------------------------------------------------
// A private mount namespace holding a small tmpfs, reachable through /proc/PID/root. The
// namespace (and the tmpfs) dies with its holder process, so nothing leaks into the host's
// mount table even when a test panics.

pub struct TmpfsNs {
    holder: Child,
    /// The mount point as seen inside the namespace.
    pub inner: PathBuf,
}

impl TmpfsNs {
    /// Mounts a tmpfs of `size` (e.g. "8m") on the existing directory `at`, privately.
    pub fn new(at: &Path, size: &str) -> Option<TmpfsNs> {
        let script = format!(
            "mount -t tmpfs -o size={size},mode=755 jailsync-test {} && echo ready && exec sleep 600",
            at.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        use std::io::BufRead;
        let mut line = String::new();
        let out = holder.stdout.take().expect("piped");
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let o = holder.wait_with_output().ok()?;
            eprintln!(
                "tmpfs namespace unavailable: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Some(TmpfsNs {
            holder,
            inner: at.into(),
        })
    }

    /// `rel` (relative to the mount point) as reachable from outside the namespace.
    pub fn outside(&self, rel: &str) -> PathBuf {
        let mut p = PathBuf::from(format!("/proc/{}/root", self.holder.id()));
        p.push(self.inner.strip_prefix("/").expect("absolute"));
        if !rel.is_empty() {
            p.push(rel);
        }
        p
    }

    /// `rel` as seen inside the namespace.
    pub fn inside(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.inner.clone()
        } else {
            self.inner.join(rel)
        }
    }

    /// A command run inside the namespace.
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .arg("--")
            .arg(prog);
        c
    }
}

impl Drop for TmpfsNs {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
