//! Issue 10, hostile and careless path arguments: every spelling of a destination resolves the
//! same way, trees are compared by identity (bind mounts alias nothing), overlapping
//! destinations are locked or refused, and a damaged manifest is refused, not "verified".
//!
//! Tests are named after the items (`item1_…`) so the closing note can cite them.
//! Bind mounts are made in a private mount namespace of the test's own thread (the binary,
//! spawned from it, inherits it); without root or `unshare` those tests say why and skip.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const NOBODY: u32 = 65534;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `p` followed by `suffix` as typed (`/`, `/.`, `//`), which `Path::join` would normalize.
fn spelled(p: &Path, suffix: &str) -> OsString {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    s
}

/// Asserts exit 2 and a message holding every one of `needles`.
#[track_caller]
fn refused(o: &std::process::Output, needles: &[&str]) {
    expect_code(o, 2);
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "message should contain {n:?}:\n{err}");
    }
}

fn lchown(p: &Path, uid: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let r = unsafe { libc::lchown(c.as_ptr(), uid, uid) };
    assert_eq!(r, 0, "lchown {}", p.display());
}

// ---------------------------------------------------------------------------------------------
// Private mount namespace and bind mounts.

/// Moves the calling thread into a private mount namespace (once per thread); false if this
/// machine cannot (not root, no CAP_SYS_ADMIN).
fn private_ns() -> bool {
    thread_local!(static DONE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) });
    DONE.with(|d| {
        if let Some(ok) = d.get() {
            return ok;
        }
        // SAFETY: unshare and mount with valid arguments; they only change this thread's view
        // of the mount table (CLONE_NEWNS implies CLONE_FS, unshared for this thread alone).
        let ok = is_root()
            && unsafe {
                libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        std::ptr::null(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0
            };
        d.set(Some(ok));
        ok
    })
}

/// A bind mount, unmounted when dropped (before the temp dir holding it is removed).
struct Bind(CString);

impl Bind {
    fn new(from: &Path, at: &Path) -> Bind {
        std::fs::create_dir_all(at).unwrap();
        let f = CString::new(from.as_os_str().as_bytes()).unwrap();
        let a = CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C strings; a plain bind mount in our private namespace.
        let r = unsafe {
            libc::mount(
                f.as_ptr(),
                a.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(
            r,
            0,
            "bind {} at {}: {}",
            from.display(),
            at.display(),
            std::io::Error::last_os_error()
        );
        Bind(a)
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        // SAFETY: valid C string.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

macro_rules! require_ns {
    () => {
        if !private_ns() {
            eprintln!("skipped: needs root and a private mount namespace for bind mounts");
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Item 1: a destination is resolved the same way whatever its spelling.

/// `live/sub` is a symlink to `outside`, a directory the sync must never touch.
fn symlinked_sub(e: &Env) -> (PathBuf, Tree, Listing) {
    e.src.file("new", "from the jail");
    let outside = Tree::new(e.tmp.path().join("outside"));
    outside.file("precious", "must not be deleted");
    let live = Tree::new(e.tmp.path().join("live"));
    live.file("keep", "k");
    symlink(&outside.root, live.path("sub")).unwrap();
    let before = listing(&outside.root);
    (live.path("sub"), outside, before)
}

#[test]
fn item1_trailing_slash_or_dot_never_follows_a_symlinked_destination() {
    let e = Env::new();
    let (sub, outside, before) = symlinked_sub(&e);
    for suffix in ["/", "/.", "/./", "//", "/.//.", ""] {
        let dst = spelled(&sub, suffix);
        let o = e.js([os("sync"), e.src().as_os_str(), &dst]);
        refused(&o, &["symlink", "--follow-dst", sub.to_str().unwrap()]);
        assert_eq!(
            listing(&outside.root),
            before,
            "sync into {dst:?} changed the symlink's target"
        );
    }
    // Relative spellings too.
    let o = run_in(
        e.tmp.path(),
        &e.state(),
        [os("sync"), e.src().as_os_str(), os("live/sub/")],
    );
    refused(&o, &["symlink"]);
    assert_eq!(listing(&outside.root), before);
    // `..` is taken as written: `live/sub/..` is `live`, never the parent of the link's target.
    let o = e.js([os("sync"), e.src().as_os_str(), &spelled(&sub, "/..")]);
    expect_code(&o, 0);
    assert_eq!(listing(&outside.root), before);
    assert_same(e.src(), &e.tmp.path().join("live"));
}

/// Runs the binary with `cwd` as its working directory.
fn run_in<I, S>(cwd: &Path, state: &Path, args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::process::Command::new(BIN)
        .current_dir(cwd)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap()
}

#[test]
fn item1_follow_dst_follows_only_a_link_owned_by_root_or_the_caller() {
    require_root!();
    let e = Env::new();
    let (sub, outside, before) = symlinked_sub(&e);
    lchown(&sub, NOBODY);
    for suffix in ["/", "/.", ""] {
        let dst = spelled(&sub, suffix);
        let o = e.js([os("sync"), os("--follow-dst"), e.src().as_os_str(), &dst]);
        refused(&o, &["owned by uid 65534", sub.to_str().unwrap()]);
        assert_eq!(listing(&outside.root), before);
    }
    // The same link, owned by root: followed, whatever the spelling.
    lchown(&sub, 0);
    let o = e.js([
        os("sync"),
        os("--follow-dst"),
        e.src().as_os_str(),
        &spelled(&sub, "/."),
    ]);
    expect_code(&o, 0);
    assert_same(e.src(), &outside.root);
    assert!(sub.symlink_metadata().unwrap().file_type().is_symlink());
}

/// JAIL/usr/pkg and ROOT/usr/pkg (with a file each), in `e.tmp`.
fn upgrade_fixture(e: &Env) -> (Tree, Tree) {
    let jail = Tree::new(e.tmp.path().join("jail"));
    jail.file("usr/pkg/bin/tool", "new tool");
    let root = Tree::new(e.tmp.path().join("root"));
    root.file("usr/pkg/bin/tool", "old tool");
    (jail, root)
}

fn upgrade(e: &Env, jail: &Path, root: &OsStr, extra: &[&str]) -> std::process::Output {
    let mut a: Vec<&OsStr> = vec![os("upgrade"), jail.as_os_str(), os("--root"), root];
    a.extend(extra.iter().map(|s| os(s)));
    e.js(a)
}

#[test]
fn item1_upgrade_never_reaches_a_tree_through_a_symlink() {
    let e = Env::new();
    let (jail, root) = upgrade_fixture(&e);
    let elsewhere = Tree::new(e.tmp.path().join("elsewhere"));
    elsewhere.file("pkg/precious", "not a package");
    let before = listing(&elsewhere.root);

    // ROOT/usr is a symlink: ROOT/usr/pkg is not inside ROOT, whatever --follow-dst says.
    std::fs::remove_dir_all(root.path("usr")).unwrap();
    symlink(&elsewhere.root, root.path("usr")).unwrap();
    for extra in [
        &["--tree", "usr/pkg"][..],
        &["--tree", "usr/pkg/", "--follow-dst"],
    ] {
        let o = upgrade(&e, &jail.root, root.root.as_os_str(), extra);
        refused(&o, &["symlink", root.path("usr").to_str().unwrap()]);
        assert_eq!(
            listing(&elsewhere.root),
            before,
            "upgrade went through ROOT/usr"
        );
    }

    // ROOT/usr/pkg itself a symlink: refused unless --follow-dst, as for `sync`.
    std::fs::remove_file(root.path("usr")).unwrap();
    root.dir("usr");
    symlink(elsewhere.path("pkg"), root.path("usr/pkg")).unwrap();
    for tree in ["usr/pkg", "usr/pkg/", "usr/pkg/."] {
        let o = upgrade(&e, &jail.root, root.root.as_os_str(), &["--tree", tree]);
        refused(&o, &["symlink", "--follow-dst"]);
        assert_eq!(listing(&elsewhere.root), before);
    }

    // ROOT itself a symlink, spelled with a trailing slash.
    std::fs::remove_file(root.path("usr/pkg")).unwrap();
    root.dir("usr/pkg");
    let rlink = e.tmp.path().join("rootlink");
    symlink(&elsewhere.root, &rlink).unwrap();
    let o = upgrade(&e, &jail.root, &spelled(&rlink, "/"), &["--tree", "pkg"]);
    refused(&o, &["symlink", "--follow-dst"]);
    assert_eq!(listing(&elsewhere.root), before);

    // A symlink in the jail's path of a tree: the jail cannot redirect what is read.
    std::fs::rename(jail.path("usr"), jail.path("real-usr")).unwrap();
    symlink("real-usr", jail.path("usr")).unwrap();
    let lroot = listing(&root.root);
    let o = upgrade(
        &e,
        &jail.root,
        root.root.as_os_str(),
        &["--tree", "usr/pkg"],
    );
    refused(&o, &["symlink", jail.path("usr").to_str().unwrap()]);
    assert_eq!(listing(&root.root), lroot);
}

#[test]
fn item1_rollback_and_verify_resolve_a_destination_the_same_whatever_its_spelling() {
    require_root!();
    let e = Env::new();
    let (sub, outside, _) = symlinked_sub(&e);
    // The admin once synced `outside` itself: it has a generation to roll back to.
    let o = e.js([os("sync"), e.src().as_os_str(), outside.root.as_os_str()]);
    expect_code(&o, 0);
    let synced = listing(&outside.root);
    for suffix in ["/", "/.", ""] {
        let o = e.js([os("rollback"), &spelled(&sub, suffix)]);
        refused(&o, &["symlink", sub.to_str().unwrap()]);
        assert_eq!(
            listing(&outside.root),
            synced,
            "rollback went through {sub:?}"
        );
    }
    // verify only reads, and follows a link owned by root or the caller, whatever the
    // spelling; one owned by anybody else is refused.
    for suffix in ["/", "/.", ""] {
        let o = e.js([os("verify"), e.src().as_os_str(), &spelled(&sub, suffix)]);
        expect_code(&o, 0);
    }
    lchown(&sub, NOBODY);
    for suffix in ["/", "/.", ""] {
        let o = e.js([os("verify"), e.src().as_os_str(), &spelled(&sub, suffix)]);
        refused(&o, &["owned by uid 65534"]);
    }
}

#[test]
fn item1_state_dir_through_a_link_owned_by_another_user_is_refused() {
    require_root!();
    let e = Env::new().with_dst();
    e.src.file("f", "x");
    let real = e.tmp.path().join("real-state");
    std::fs::create_dir(&real).unwrap();
    let link = e.tmp.path().join("state-link");
    symlink(&real, &link).unwrap();
    lchown(&link, NOBODY);
    for suffix in ["/", "/.", ""] {
        let o = run([
            os("--state-dir"),
            &spelled(&link, suffix),
            os("sync"),
            e.src().as_os_str(),
            e.dst().as_os_str(),
        ]);
        refused(&o, &["owned by uid 65534", link.to_str().unwrap()]);
        assert!(std::fs::read_dir(&real).unwrap().next().is_none());
    }
    // Owned by root: an admin's symlinked state dir works as before.
    lchown(&link, 0);
    let o = run([
        os("--state-dir"),
        &spelled(&link, "/"),
        os("sync"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 0);
    assert!(real.join("trees").is_dir());
}

// ---------------------------------------------------------------------------------------------
// Item 2: trees compared by identity, not by path.

#[test]
fn item2_destination_aliasing_the_source_through_a_bind_mount_is_refused() {
    require_ns!();
    let e = Env::new();
    e.src
        .file("a", "jail")
        .file("sub/b", "jail too")
        .dir("sub/deeper");
    let ls = listing(e.src());
    let t = e.tmp.path();
    let _m1 = Bind::new(&e.src.path("sub"), &t.join("mnt-sub"));
    let _m2 = Bind::new(e.src(), &t.join("mnt-src"));
    let cases = [
        (t.join("mnt-sub"), "inside the source"),
        (t.join("mnt-sub/new"), "inside the source"),
        (t.join("mnt-sub/deeper"), "inside the source"),
        (t.join("mnt-src"), "same directory"),
        (t.join("mnt-src/sub"), "inside the source"),
        (t.join("mnt-src/new/newer"), "inside the source"),
    ];
    for (dst, why) in &cases {
        let o = e.js([os("sync"), e.src().as_os_str(), dst.as_os_str()]);
        refused(&o, &[why, dst.to_str().unwrap()]);
        assert_eq!(
            listing(e.src()),
            ls,
            "sync into {} changed the jail",
            dst.display()
        );
    }
    assert!(!e.src.path("new").exists() && !e.src.path("sub/new").exists());
}

#[test]
fn item2_source_aliasing_the_destination_through_a_bind_mount_is_refused() {
    require_ns!();
    let e = Env::new().with_dst();
    e.dst.file("keep", "live").file("sub/f", "live too");
    let ld = listing(e.dst());
    let t = e.tmp.path();
    let _m1 = Bind::new(&e.dst.path("sub"), &t.join("mnt-sub"));
    let _m2 = Bind::new(e.dst(), &t.join("mnt-dst"));
    for (src, why) in [
        (t.join("mnt-sub"), "inside the destination"),
        (t.join("mnt-dst"), "same directory"),
    ] {
        let o = e.js([os("sync"), src.as_os_str(), e.dst().as_os_str()]);
        refused(&o, &[why]);
        assert_eq!(
            listing(e.dst()),
            ld,
            "sync from {} changed DST",
            src.display()
        );
    }
}

#[test]
fn item2_a_tree_holding_a_mount_of_the_other_is_refused() {
    require_ns!();
    let e = Env::new().with_dst();
    e.src.file("a", "jail").file("sub/b", "jail too");
    e.dst
        .file("keep", "live")
        .file("sub/f", "live too")
        .dir("mnt");
    let t = e.tmp.path();
    let other = Tree::new(t.join("other"));
    other.file("o", "other");
    // DST/mnt shows SRC/sub: a sync would rewrite the jail through it.
    {
        let _m = Bind::new(&e.src.path("sub"), &e.dst.path("mnt"));
        let (ls, ld) = (listing(e.src()), listing(e.dst()));
        let o = e.js([os("sync"), e.src().as_os_str(), e.dst().as_os_str()]);
        refused(&o, &["mount", e.dst.path("mnt").to_str().unwrap()]);
        assert_eq!(listing(e.src()), ls, "the jail changed through DST/mnt");
        assert_eq!(listing(e.dst()), ld);
    }
    // OTHER/mnt (a source) shows DST/sub: a sync from it would read and rewrite DST/sub.
    {
        let _m = Bind::new(&e.dst.path("sub"), &other.path("mnt"));
        let ld = listing(e.dst());
        let o = e.js([os("sync"), other.root.as_os_str(), e.dst().as_os_str()]);
        refused(&o, &["mount", other.path("mnt").to_str().unwrap()]);
        assert_eq!(listing(e.dst()), ld);
    }
    // A mount of something unrelated inside DST is no overlap (it only cannot be kept for a
    // rollback, issue 10 item 7, hence --no-rollback).
    let _m = Bind::new(&other.root, &e.dst.path("mnt"));
    let o = e.js([
        os("sync"),
        os("--no-rollback"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    assert_ne!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn item2_state_dir_inside_a_tree_through_a_bind_mount_is_refused() {
    require_ns!();
    let e = Env::new().with_dst();
    e.src.file("f", "x");
    e.dst.file("g", "y");
    let (ls, ld) = (listing(e.src()), listing(e.dst()));
    let t = e.tmp.path();
    let _m1 = Bind::new(e.dst(), &t.join("mnt-dst"));
    let _m2 = Bind::new(e.src(), &t.join("mnt-src"));
    for state in [
        t.join("mnt-dst/state"),
        t.join("mnt-src/state"),
        t.join("mnt-dst"),
    ] {
        let o = run([
            os("--state-dir"),
            state.as_os_str(),
            os("sync"),
            e.src().as_os_str(),
            e.dst().as_os_str(),
        ]);
        refused(&o, &["state dir", state.to_str().unwrap()]);
        assert_eq!(listing(e.src()), ls);
        assert_eq!(listing(e.dst()), ld);
    }
}

// ---------------------------------------------------------------------------------------------
// Item 9: one lock covers a destination, everything below it and everything above it.

/// The pid in the lock file of the destination `dst` (a canonical path), once written.
fn lock_holder(state: &Path, dst: &Path) -> Option<u32> {
    for t in std::fs::read_dir(state.join("trees")).ok()?.flatten() {
        let p = std::fs::read(t.path().join("path")).unwrap_or_default();
        if p == dst.as_os_str().as_bytes() {
            let s = std::fs::read_to_string(t.path().join("lock")).ok()?;
            return s.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

/// A `sync SRC DST` caught holding its lock and frozen (SIGSTOP); killed when dropped.
struct Held(Child);

impl Held {
    fn new(state: &Path, src: &Path, dst: &Path) -> Held {
        let dst_c = dst; // callers pass canonical paths
        for _ in 0..20 {
            // Made beforehand: the run is caught right after taking its lock, before it has
            // made anything.
            std::fs::create_dir_all(dst).unwrap();
            let child = std::process::Command::new(BIN)
                .arg("--state-dir")
                .arg(state)
                .args([os("sync"), src.as_os_str(), dst.as_os_str()])
                .env_remove("JAILSYNC_STATE_DIR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut child = Held(child);
            let pid = child.0.id();
            let t0 = Instant::now();
            while lock_holder(state, dst_c) != Some(pid) && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_micros(100));
            }
            freeze(pid);
            if child.0.try_wait().unwrap().is_none() && lock_holder(state, dst_c) == Some(pid) {
                return child;
            }
        }
        panic!(
            "could not catch a sync into {} holding its lock",
            dst.display()
        );
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A source big enough that a sync of it is easy to catch while it holds its lock.
fn big_source(root: &Path) -> Tree {
    let t = Tree::new(root);
    for i in 0..3000 {
        t.file(
            format!("d{}/f{i}", i % 30),
            format!("content {i} {}", "x".repeat(i % 300)),
        );
    }
    t
}

#[test]
fn item9_nested_destinations_exclude_each_other() {
    let e = Env::new();
    let t = e.tmp.path().canonicalize().unwrap();
    let s1 = big_source(&t.join("s1"));
    let s2 = Tree::new(t.join("s2"));
    s2.file("mine", "s2's file");
    let x = t.join("x");
    let sub = x.join("sub");
    let state = e.state();

    // `sync S1 X` holds X: `sync S2 X/sub` is refused, naming X and the holder.
    {
        let holder = Held::new(&state, &s1.root, &x);
        let before = listing(&x);
        let o = e.js([os("sync"), s2.root.as_os_str(), sub.as_os_str()]);
        refused(
            &o,
            &[
                &format!("locked by pid {}", holder.pid()),
                x.to_str().unwrap(),
                sub.to_str().unwrap(),
            ],
        );
        assert_eq!(listing(&x), before, "X changed under its holder");
    }
    std::fs::remove_dir_all(&x).unwrap();

    // `sync S1 X/sub` holds X/sub: `sync S2 X` is refused naming X/sub; a sibling of X/sub
    // is no overlap and runs.
    {
        let holder = Held::new(&state, &s1.root, &sub);
        let before = listing(&x);
        let o = e.js([os("sync"), s2.root.as_os_str(), x.as_os_str()]);
        refused(
            &o,
            &[
                &format!("locked by pid {}", holder.pid()),
                sub.to_str().unwrap(),
            ],
        );
        assert_eq!(listing(&x), before, "X/sub changed under its holder");
        let sibling = x.join("other");
        let o = e.js([os("sync"), s2.root.as_os_str(), sibling.as_os_str()]);
        expect_code(&o, 0);
        assert_same(&s2.root, &sibling);
    }
    // Holders gone (killed): nothing stale is left to refuse the next run.
    std::fs::remove_dir_all(&x).unwrap();
    let o = e.js([os("sync"), s2.root.as_os_str(), x.as_os_str()]);
    expect_code(&o, 0);
}

// ---------------------------------------------------------------------------------------------
// Item 10: overlapping trees of one upgrade.

#[test]
fn item10_overlapping_upgrade_trees_are_refused_untouched() {
    let e = Env::new();
    let (jail, root) = upgrade_fixture(&e);
    jail.file("usr/other", "x")
        .file("var/db/pkg/tool/+CONTENTS", "db");
    root.file("usr/old", "orphan")
        .file("var/db/pkg/old/+CONTENTS", "db");
    let (lj, lr) = (listing(&jail.root), listing(&root.root));
    let untouched = |what: &str| {
        assert_eq!(listing(&jail.root), lj, "{what}: the jail changed");
        assert_eq!(listing(&root.root), lr, "{what}: the live root changed");
        assert!(!e.state().exists(), "{what}: the state dir was made");
    };
    let cases: &[&[&str]] = &[
        &["--tree", "usr", "--tree", "usr/pkg"],
        &["--tree", "usr/pkg", "--tree", "usr"],
        &["--tree", "usr/pkg", "--tree", "usr/pkg"],
        &["--tree", "usr/pkg", "--tree", "usr/pkg/"],
        &[
            "--tree",
            "usr/pkg/bin",
            "--tree",
            "var/db/pkg",
            "--tree",
            "usr/pkg",
        ],
    ];
    for extra in cases {
        let o = upgrade(&e, &jail.root, root.root.as_os_str(), extra);
        refused(&o, &["overlap"]);
        untouched(&extra.join(" "));
    }
    // The same from `tree` lines of JAIL/jailsync.conf.
    std::fs::write(jail.path("jailsync.conf"), "tree usr\ntree usr/pkg\n").unwrap();
    let lj = listing(&jail.root);
    let o = upgrade(&e, &jail.root, root.root.as_os_str(), &[]);
    refused(&o, &["overlap", "usr/pkg"]);
    assert_eq!(listing(&jail.root), lj);
    assert_eq!(listing(&root.root), lr);
    std::fs::remove_file(jail.path("jailsync.conf")).unwrap();
}

#[test]
fn item10_upgrade_trees_aliased_by_a_bind_mount_or_link_are_refused() {
    require_ns!();
    let e = Env::new();
    let (jail, root) = upgrade_fixture(&e);
    jail.file("opt/x", "x");
    // ROOT/opt a bind mount of ROOT/usr/pkg/bin.
    let lj = listing(&jail.root);
    {
        let _m = Bind::new(&root.path("usr/pkg/bin"), &root.path("opt"));
        let lr = listing(&root.root);
        let o = upgrade(
            &e,
            &jail.root,
            root.root.as_os_str(),
            &["--tree", "opt", "--tree", "usr/pkg"],
        );
        refused(&o, &["overlap"]);
        assert_eq!(listing(&jail.root), lj);
        assert_eq!(listing(&root.root), lr);
    }
    // ROOT/opt a root-owned symlink to ROOT/usr/pkg, followed with --follow-dst.
    std::fs::remove_dir(root.path("opt")).unwrap();
    symlink(root.path("usr/pkg"), root.path("opt")).unwrap();
    let lr = listing(&root.root);
    let o = upgrade(
        &e,
        &jail.root,
        root.root.as_os_str(),
        &["--follow-dst", "--tree", "usr/pkg", "--tree", "opt"],
    );
    refused(&o, &["overlap"]);
    assert_eq!(listing(&jail.root), lj);
    assert_eq!(listing(&root.root), lr);
}

// ---------------------------------------------------------------------------------------------
// Item 12: a damaged manifest is refused, never read as differences.

#[test]
fn item12_truncated_or_malformed_manifest_is_refused() {
    let e = Env::new();
    e.src
        .file("a", "one")
        .file("b", "two")
        .dir("d")
        .file("d/c", "three")
        .symlink("l", "a");
    e.sync(&[]);
    let m = e.tmp.path().join("m");
    expect_code(
        &e.js([os("manifest"), e.src().as_os_str(), os("-o"), m.as_os_str()]),
        0,
    );
    let good = std::fs::read_to_string(&m).unwrap();
    let ms = m.to_str().unwrap().to_string();
    let verify = |text: &str| {
        std::fs::write(&m, text).unwrap();
        e.js([os("verify"), m.as_os_str(), e.dst().as_os_str()])
    };
    expect_code(&verify(&good), 0);

    let lines: Vec<&str> = good.lines().collect();
    let line_of = |prefix: &str| 1 + lines.iter().position(|l| l.starts_with(prefix)).unwrap();
    // Replace one field of the line starting with `prefix` (drop it when `to` is empty).
    let edit = |prefix: &str, field: &str, to: &str| -> (String, usize) {
        let n = line_of(prefix);
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        l[n - 1] = l[n - 1]
            .split(' ')
            .filter_map(|t| {
                if t.starts_with(&format!("{field}=")) {
                    (!to.is_empty()).then(|| to.to_string())
                } else {
                    Some(t.to_string())
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        (l.join("\n") + "\n", n)
    };
    let mut cases: Vec<(String, usize, &str)> = Vec::new();
    for (prefix, field, to, why) in [
        ("a file", "size", "", "size"),
        ("a file", "blake3", "", "blake3"),
        ("a file", "blake3", "blake3=abc", "blake3"),
        ("a file", "uid", "", "uid"),
        ("a file", "gid", "", "gid"),
        ("a file", "mtime", "", "mtime"),
        ("a file", "mtime", "mtime=1.1234567891", "mtime"),
        ("a file", "size", "size=-1", "size"),
        ("a file", "mode", "mode=644 mode=600", "mode"),
        ("d dir", "mode", "mode=755 size=4", "size"),
        ("l link", "target", "", "target"),
        ("l link", "mode", "mode=777 blake3=00", "blake3"),
    ] {
        let (text, n) = edit(prefix, field, to);
        cases.push((text, n, why));
    }
    // Cut at a line boundary (the last entry lost, and what followed it), and inside a line
    // right after a field (every remaining field well-formed, the hash gone).
    let last_entry = lines.iter().rposition(|l| !l.starts_with('#')).unwrap();
    cases.push((
        lines[..last_entry].join("\n") + "\n",
        last_entry,
        "truncated",
    ));
    let at = good.find("\nd/c file").unwrap() + 1;
    let cut_field = good[..at + good[at..].find(" blake3=").unwrap()].to_string();
    cases.push((cut_field, line_of("d/c file"), "truncated"));
    // An entry whose parent is not in the manifest.
    let mut orphan = lines.clone();
    let n = line_of("b file");
    let extra = "x/y file mode=644 uid=0 gid=0 mtime=1.000000000 size=0 blake3=af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    orphan[n - 1] = extra;
    cases.push((orphan.join("\n") + "\n", n, "parent"));

    for (text, n, why) in &cases {
        let o = verify(text);
        expect_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{ms}:{n}:")) && err.contains(why),
            "should name {ms}:{n}: and say {why:?}:\n{err}\nmanifest:\n{text}"
        );
    }
}
