//! Issue 10, items 3 and 4: hard links between entries that are not regular files.
//!
//! - Item 3: a symlink, fifo, socket or device node in DST that shares its inode with an entry
//!   outside DST (or inside SRC) must be replaced by a new object, never changed in place —
//!   chmod, chown, utimensat and xattr calls all act on the inode, so on every name it has.
//! - Item 4: hard-link groups of those types are recreated as groups (as rsync `-H` does), and
//!   `verify` (against a tree or a manifest) sees a group split or merged.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::*;

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

fn verify(e: &Env, src: &Path) -> std::process::Output {
    e.js([OsStr::new("verify"), src.as_os_str(), e.dst().as_os_str()])
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

/// A group of fifos in DST that matches the jail's group but is also linked from outside is
/// restaged whole; an unchanged entry linked from outside is left alone (same inode).
#[test]
fn item3_group_linked_from_outside_is_restaged_and_unchanged_ones_are_kept() {
    let e = Env::new().with_dst();
    let outside = Tree::new(e.tmp.path().join("outside"));
    outside
        .fifo("p")
        .mtime("p", T, 0)
        .symlink("same", "t")
        .mtime("same", T, 0);
    e.dst
        .hardlink("a", "../outside/p")
        .hardlink("b", "../outside/p")
        .hardlink("same", "../outside/same");
    e.src
        .fifo("a")
        .hardlink("b", "a")
        .mode("a", 0o600)
        .mtime("a", T, 5)
        .symlink("same", "t")
        .mtime("same", T, 0);
    let before = listing(&outside.root);
    e.sync(&[]);
    e.assert_synced();
    assert_eq!(listing(&outside.root), before, "the outside fifo changed");
    assert!(same_inode(e.dst(), "a", e.dst(), "b"));
    assert!(same_inode(&outside.root, "same", e.dst(), "same"));
}

/// Rollback links a kept old inode back into DST; when that inode is also linked from outside
/// and its metadata moved there since, setting the recorded metadata on it would write outside
/// DST. The old tree comes back with the very inode it had (linked to the outside entry, as
/// before the sync), whole or by subtrees, and nothing outside is written.
#[test]
fn item3_rollback_does_not_set_metadata_on_an_inode_linked_from_outside() {
    for method in ["entries", "tree"] {
        rollback_leaves_outside_links_alone(method);
    }
}

fn rollback_leaves_outside_links_alone(method: &str) {
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
    let js = |args: &[&OsStr]| {
        std::process::Command::new(BIN)
            .arg("--state-dir")
            .arg(e.state())
            .args(args)
            .env("JAILSYNC_SWITCH", method)
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .unwrap()
    };
    expect_code(
        &js(&[OsStr::new("sync"), e.src().as_os_str(), e.dst().as_os_str()]),
        0,
    );
    e.assert_synced();
    // The admin changes the outside entries afterwards.
    outside.mode("f", 0o640).mtime("f", T, 9).mode("p", 0o640);
    let changed = listing(&outside.root);
    let o = js(&[OsStr::new("rollback"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    assert_eq!(
        listing(&outside.root),
        changed,
        "{method}: rollback changed entries outside DST"
    );
    for n in ["f", "p"] {
        assert_eq!(
            ino(e.dst(), n),
            ino(&outside.root, n),
            "{n}: not the old inode again"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 4: groups of every type recreated, and seen by verify.

/// Each kind as a group of three names (two in one directory, one in another), synced onto a
/// fresh DST and onto one where the groups were split and regrouped differently.
#[test]
fn item4_groups_of_every_non_regular_kind_are_recreated() {
    let devices = is_root() && can_mknod();
    let e = Env::new();
    let kinds = every_kind(&e.src, devices);
    e.src.dir("sub");
    for k in &kinds {
        e.src
            .hardlink(format!("{k}2"), k)
            .hardlink(format!("sub/{k}3"), k);
    }
    e.sync(&[]);
    e.assert_synced();
    for k in &kinds {
        assert!(same_inode(e.dst(), k, e.dst(), &format!("sub/{k}3")), "{k}");
    }

    // An old DST: the same objects, grouped otherwise.
    let e2 = Env::new().with_dst();
    every_kind(&e2.src, devices);
    every_kind(&e2.dst, devices);
    e2.src.dir("sub");
    e2.dst.dir("sub");
    for k in &kinds {
        e2.src
            .hardlink(format!("{k}2"), k)
            .hardlink(format!("sub/{k}3"), k);
        // `k` and `sub/k3` one inode, `k2` its own (renamed in below): the group is split.
        e2.dst.hardlink(format!("sub/{k}3"), k);
    }
    let dst2 = Tree::new(e2.tmp.path().join("copies"));
    every_kind(&dst2, devices);
    for k in &kinds {
        std::fs::rename(dst2.path(k), e2.dst.path(format!("{k}2"))).unwrap();
    }
    for t in [&e2.src, &e2.dst] {
        for k in &kinds {
            for p in [k.to_string(), format!("{k}2"), format!("sub/{k}3")] {
                t.mtime(&p, T, 1);
            }
        }
        t.settle_dirs(T);
    }
    e2.sync(&[]);
    e2.assert_synced();
}

/// `verify` (tree and manifest) reports a split group and a merged one; the listing helper
/// sees both too, and the manifest records the grouping of every type.
#[test]
fn item4_verify_sees_split_and_merged_groups() {
    let devices = is_root() && can_mknod();
    let e = Env::new();
    let kinds = every_kind(&e.src, devices);
    for k in &kinds {
        e.src.hardlink(format!("{k}2"), k);
        e.src.mtime(k, T, 1);
    }
    // Singles in the jail that DST will merge below.
    e.src.symlink("single1", "s").symlink("single2", "s");
    for p in ["single1", "single2"] {
        e.src.mtime(p, T, 2);
    }
    e.src.settle_dirs(T);
    e.sync(&[]);
    e.assert_synced();
    let manifest = e.tmp.path().join("manifest");
    let o = e.js([
        OsStr::new("manifest"),
        OsStr::new("-o"),
        manifest.as_os_str(),
        e.src().as_os_str(),
    ]);
    expect_code(&o, 0);
    let text = std::fs::read_to_string(&manifest).unwrap();
    for k in &kinds {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{k}2 ")))
            .unwrap();
        assert!(line.contains(" ino="), "no grouping recorded: {line}");
    }
    expect_code(&verify(&e, &manifest), 0);

    let scratch = Tree::new(e.tmp.path().join("scratch"));
    for k in &kinds {
        // Split: the second name becomes its own inode, its metadata otherwise the same
        // (made beside DST, on its filesystem, and renamed in).
        make(&scratch, k, k);
        if *k != "link" {
            scratch.mode(k, lstat(e.dst(), k).unwrap().st_mode & 0o7777);
        }
        scratch.mtime(k, T, 1);
        std::fs::rename(scratch.path(k), e.dst.path(format!("{k}2"))).unwrap();
        e.dst.settle_dirs(T);
        assert_ne!(
            listing(e.dst()),
            listing(e.src()),
            "the listing misses a split {k} group"
        );
        expect_code(&verify(&e, e.src()), 1);
        expect_code(&verify(&e, &manifest), 1);
        // Repaired by a sync.
        e.sync(&[]);
        e.assert_synced();
    }

    // Merged: two singles of the jail made one inode in DST.
    e.dst.remove("single2").hardlink("single2", "single1");
    e.dst.settle_dirs(T);
    assert_ne!(listing(e.dst()), listing(e.src()));
    expect_code(&verify(&e, e.src()), 1);
    expect_code(&verify(&e, &manifest), 1);
    e.sync(&[]);
    e.assert_synced();
}

/// A sync that splits a group of symlinks (the jail has them apart) is undone by `rollback`:
/// the group comes back, with its mtime.
#[test]
fn item4_rollback_restores_a_group_of_symlinks_and_fifos() {
    let e = Env::new().with_dst();
    e.dst
        .symlink("a", "t")
        .hardlink("b", "a")
        .mtime("a", T, 3)
        .fifo("p")
        .hardlink("q", "p")
        .mtime("p", T, 3)
        .file("f", b"old");
    e.dst.settle_dirs(T);
    e.src
        .symlink("a", "t")
        .symlink("b", "t")
        .fifo("p")
        .fifo("q")
        .file("f", b"new");
    for p in ["a", "b", "p", "q"] {
        e.src.mtime(p, T, 3);
    }
    let before = listing(e.dst());
    e.sync(&[]);
    e.assert_synced();
    e.assert_rollback_restores(&before);
}
