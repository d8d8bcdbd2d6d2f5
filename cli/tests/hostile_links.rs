//! Issue 10, item 3: hard links between entries that are not regular files.
//!
//! - Item 3: a symlink, fifo, socket or device node in DST that shares its inode with an entry
//!   outside DST (or inside SRC) must be replaced by a new object, never changed in place —
//!   chmod, chown, utimensat and xattr calls all act on the inode, so on every name it has.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::*;

const T: i64 = 1_600_000_000;

/// A socket node made with `mknod` (no listener needed: only the inode matters here).
fn socket(t: &Tree, rel: &str) {
    let p = std::ffi::CString::new(t.path(rel).as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFSOCK | 0o644, 0) };
    assert_eq!(
        r,
        0,
        "mknod socket {rel}: {}",
        std::io::Error::last_os_error()
    );
    t.mode(rel, 0o644);
}

/// The same (dev, ino)?
fn same_inode(a: &Path, ra: &str, b: &Path, rb: &str) -> bool {
    let (x, y) = (lstat(a, ra).unwrap(), lstat(b, rb).unwrap());
    (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)
}

/// One object of kind `kind` (a name [`every_kind`] uses) at `rel`.
fn make(t: &Tree, rel: &str, kind: &str) {
    match kind {
        "link" => {
            t.symlink(rel, "target");
        }
        "fifo" => {
            t.fifo(rel);
        }
        "sock" => socket(t, rel),
        "char" => {
            t.chardev(rel, 1, 3);
        }
        "block" => {
            t.blockdev(rel, 7, 0);
        }
        _ => unreachable!("{kind}"),
    }
}

/// One entry of every non-regular kind this machine can make, each named after its kind.
fn every_kind(t: &Tree, devices: bool) -> Vec<&'static str> {
    let mut kinds = vec!["link", "fifo", "sock"];
    if devices {
        kinds.extend(["char", "block"]);
    } else {
        eprintln!("device nodes skipped: needs root with CAP_MKNOD");
    }
    for k in &kinds {
        make(t, k, k);
    }
    kinds
}

// ---------------------------------------------------------------------------------------------
// Item 3: linked from outside DST, replaced, never modified in place.

/// Each kind's DST entry is a hard link of an entry outside DST; the jail's has other mode,
/// owner and mtime. The outside entries must come through unchanged.
#[test]
fn item3_non_regular_entries_linked_from_outside_are_replaced_not_changed_in_place() {
    let devices = is_root() && can_mknod();
    let e = Env::new().with_dst();
    let outside = Tree::new(e.tmp.path().join("outside"));
    let kinds = every_kind(&outside, devices);
    for k in &kinds {
        outside.mtime(k, T, 0);
        e.dst.hardlink(k, format!("../outside/{k}"));
    }
    let src_kinds = every_kind(&e.src, devices);
    assert_eq!(kinds, src_kinds);
    for k in &kinds {
        if *k != "link" {
            e.src.mode(k, 0o600);
        }
        if is_root() {
            e.src.owner(k, 1, 1);
        }
        e.src.mtime(k, T, 7);
    }
    let before = listing(&outside.root);
    e.sync(&[]);
    e.assert_synced();
    assert_eq!(
        listing(&outside.root),
        before,
        "an entry outside DST changed:\n{}",
        before.diff(&listing(&outside.root))
    );
    for k in &kinds {
        assert!(
            !same_inode(&outside.root, k, e.dst(), k),
            "{k} is still the outside inode"
        );
    }
}

/// DST's entry is a hard link of a *different* entry of SRC (one filesystem): setting its
/// metadata in place would write into the jail. `Env::sync` checks SRC is left as it was.
#[test]
fn item3_entry_linked_into_the_jail_is_not_changed_through_dst() {
    let e = Env::new().with_dst();
    e.src
        .fifo("p")
        .mode("p", 0o644)
        .mtime("p", T, 0)
        .fifo("q")
        .mode("q", 0o600)
        .mtime("q", T, 9)
        .symlink("l", "t")
        .mtime("l", T, 0)
        .symlink("m", "t")
        .mtime("m", T, 9);
    e.dst.hardlink("q", "../src/p").hardlink("m", "../src/l");
    e.sync(&[]);
    e.assert_synced();
    assert!(!same_inode(e.src(), "p", e.dst(), "q"));
    assert!(!same_inode(e.src(), "l", e.dst(), "m"));
}

/// A symlink's xattrs (trusted.* and security.* are allowed on symlinks) belong to the inode
/// too: a link shared with an outside symlink must not carry the jail's xattrs out.
#[test]
fn item3_xattrs_of_a_symlink_linked_from_outside_are_not_set_in_place() {
    require_root!();
    require!(can_trusted_xattr(), "cannot set trusted.* xattrs here");
    let e = Env::new().with_dst();
    let outside = Tree::new(e.tmp.path().join("outside"));
    outside
        .symlink("l", "t")
        .xattr("l", "trusted.k", b"outside")
        .mtime("l", T, 0);
    e.dst.hardlink("l", "../outside/l");
    e.src
        .symlink("l", "t")
        .xattr("l", "trusted.k", b"jail")
        .mtime("l", T, 0);
    let before = listing(&outside.root);
    e.sync(&[]);
    e.assert_synced();
    assert_eq!(
        listing(&outside.root),
        before,
        "the outside symlink changed"
    );
}

/// Rollback links a kept old inode back into DST; when that inode is also linked from outside
/// and its metadata moved there since, setting the recorded metadata on it would write outside
/// DST. The restored entry is then a copy; outside, the admin's change stays.
#[test]
fn item3_rollback_does_not_set_metadata_on_an_inode_linked_from_outside() {
    let e = Env::new().with_dst();
    let outside = Tree::new(e.tmp.path().join("outside"));
    outside
        .file("f", b"shared")
        .mode("f", 0o644)
        .mtime("f", T, 0)
        .fifo("p")
        .mtime("p", T, 0);
    e.dst
        .hardlink("f", "../outside/f")
        .hardlink("p", "../outside/p");
    e.dst.settle_dirs(T);
    e.src
        .file("f", b"shared")
        .mode("f", 0o600)
        .mtime("f", T, 5)
        .fifo("p")
        .mode("p", 0o600)
        .mtime("p", T, 5);
    let before = listing(e.dst());
    e.sync(&[]);
    e.assert_synced();
    // The admin changes the outside entries afterwards.
    outside.mode("f", 0o640).mtime("f", T, 9).mode("p", 0o640);
    let changed = listing(&outside.root);
    let o = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    assert_eq!(
        listing(&outside.root),
        changed,
        "rollback changed entries outside DST"
    );
    let after = listing(e.dst());
    assert!(
        after == before,
        "rollback did not restore DST:\n{}",
        before.diff(&after)
    );
}
