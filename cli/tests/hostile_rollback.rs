//! Issue 10, items 6 and 11: names shaped like temporary ones are content like any other,
//! and a destination that runs out of space or inodes while staging gets nothing of the run.
//! (The per-file pipeline's rollback store, which items 5, 7 and 8 were about, is retired: the
//! generations of the one switch have their tests in `switch.rs` and `moves`.)
//!
//! Mount tests run the real binary in a private mount namespace (see `faultkit::TmpfsNs`).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::faultkit::*;

fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("jailsync-{name}-"))
        .tempdir()
        .expect("tempdir")
}

fn read(p: impl AsRef<Path>) -> String {
    let p = p.as_ref();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Every regular file below `dir` (content), and every directory (path, mode).
fn walk(dir: &Path, files: &mut Vec<(PathBuf, Vec<u8>)>, dirs: &mut Vec<(PathBuf, u32)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd {
        let ent = ent.unwrap();
        let md = std::fs::symlink_metadata(ent.path()).unwrap();
        if md.is_dir() {
            dirs.push((ent.path(), md.mode() & 0o7777));
            walk(&ent.path(), files, dirs);
        } else if md.is_file() {
            files.push((ent.path(), std::fs::read(ent.path()).unwrap_or_default()));
        }
    }
}

/// Names below `dir` that end in `.partial` (an interrupted or abandoned generation).
fn partials(dir: &Path) -> Vec<PathBuf> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(dir, &mut files, &mut dirs);
    dirs.into_iter()
        .map(|(p, _)| p)
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect()
}

fn can_mount() -> bool {
    is_root() && have("unshare") && have("nsenter")
}

// ---------------------------------------------------------------------------------------------
// Item 5: a rollback undoes what the sync did, and only that.

// ---------------------------------------------------------------------------------------------
// Item 6: only names this program recorded are removed as its temporary files.

#[test]
fn item6_user_entries_named_like_temp_files_are_synced_and_kept() {
    let e = Env::new().with_dst();
    e.dst
        .file(".jailsync-tmp-12-34", "user file")
        .file(".jailsync-tmp-5-6/x", "user dir's file")
        .file("keep", "k");
    e.src
        .file(".jailsync-tmp-7-8", "a jail file")
        .file("keep", "k");
    let out = e.sync(&["-i"]);
    for p in [
        ".jailsync-tmp-12-34",
        ".jailsync-tmp-5-6/x",
        ".jailsync-tmp-7-8",
    ] {
        assert!(out.contains(p), "{p} missing from -i:\n{out}");
    }
    e.assert_synced();
    // Deleted as orphans like any other entry: kept for rollback.
    let o = e.js([os("rollback"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    assert_eq!(read(e.dst.path(".jailsync-tmp-12-34")), "user file");
    assert_eq!(read(e.dst.path(".jailsync-tmp-5-6/x")), "user dir's file");
    assert!(!e.dst.path(".jailsync-tmp-7-8").exists());
}

// ---------------------------------------------------------------------------------------------
// Item 7: rollback is never silently off.

// ---------------------------------------------------------------------------------------------
// Item 8: the rollback store is private, and never reached through a symlink.

// ---------------------------------------------------------------------------------------------
// Item 11: out of space or inodes while staging: nothing of the run is committed.

/// Used and free inodes of the filesystem at `p`.
fn inodes(p: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: zeroed statvfs is a valid out-buffer; `c` is NUL-terminated.
    unsafe {
        let mut v: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut v), 0);
        (v.f_files as u64 - v.f_ffree as u64, v.f_ffree as u64)
    }
}

#[test]
fn item11_out_of_inodes_in_an_upgrade_commits_nothing() {
    require!(can_mount(), "needs root, unshare and nsenter");
    let tmp = tempdir("item11-inodes");
    let t = tmp.path();
    let jail = Tree::new(t.join("jail"));
    let root = t.join("root");
    std::fs::create_dir(&root).unwrap();
    let Some(ns) = TmpfsNs::new(&root, "64m,nr_inodes=100000") else {
        panic!("could not mount a tmpfs in a private mount namespace");
    };
    let live = Tree::new(ns.outside(""));
    for i in 0..5 {
        live.file(format!("usr/pkg/bin/p{i}"), format!("old {i}"));
        jail.file(format!("usr/pkg/bin/p{i}"), format!("new {i}"));
    }
    live.file("var/db/pkg/old/+CONTENTS", "old");
    jail.file("var/db/pkg/old/+CONTENTS", "old");
    for i in 0..100 {
        jail.file(format!("var/db/pkg/new{i}/+CONTENTS"), "new");
    }
    // Room for the rollback generations and the first tree, not for the second.
    let (used, _) = inodes(&ns.outside(""));
    let st = ns
        .command("mount")
        .arg("-o")
        .arg(format!("remount,nr_inodes={}", used + 60))
        .arg(ns.inside(""))
        .status()
        .unwrap();
    assert!(st.success(), "remount");
    let trees = ["usr/pkg", "var/db/pkg"];
    let before: Vec<Listing> = trees.iter().map(|r| listing(&live.path(r))).collect();
    let state = t.join("state");
    let upgrade = || {
        ns.command(BIN)
            .arg("--state-dir")
            .arg(&state)
            .arg("upgrade")
            .arg(&jail.root)
            .arg("--root")
            .arg(ns.inside(""))
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .unwrap()
    };
    let o = upgrade();
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    for (r, b) in trees.iter().zip(&before) {
        let now = listing(&live.path(r));
        assert!(now == *b, "{r} changed:\n{}\n{err}", b.diff(&now));
    }
    assert_eq!(partials(&ns.outside("")), Vec::<PathBuf>::new());

    let st = ns
        .command("mount")
        .arg("-o")
        .arg("remount,nr_inodes=100000")
        .arg(ns.inside(""))
        .status()
        .unwrap();
    assert!(st.success(), "remount");
    let o = upgrade();
    expect_code(&o, 0);
    for r in trees {
        assert_eq!(listing(&live.path(r)), listing(&jail.path(r)), "{r}");
    }
}

#[test]
fn item11_out_of_space_commits_nothing_and_leaves_no_generation() {
    require!(can_mount(), "needs root, unshare and nsenter");
    let tmp = tempdir("item11-space");
    let t = tmp.path();
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(ns) = TmpfsNs::new(&mnt, "4m") else {
        panic!("could not mount a tmpfs in a private mount namespace");
    };
    let mut rng = Rng::new(11);
    let live = Tree::new(ns.outside("dst"));
    let src = Tree::new(t.join("src"));
    for i in 0..10 {
        live.file(format!("s{i}"), rng.bytes(1000));
        src.file(format!("s{i}"), rng.bytes(1000));
    }
    // Staged in path order: the small files first, then more than the filesystem holds.
    src.file("z1", rng.bytes(3 << 20))
        .file("z2", rng.bytes(2 << 20));
    let before = listing(&live.root);
    let state = t.join("state");
    let jsn = |args: &[&OsStr]| {
        ns.command(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .unwrap()
    };
    let dst_in = ns.inside("dst");
    let o = jsn(&[os("sync"), src.root.as_os_str(), dst_in.as_os_str()]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("No space left on device"), "{err}");
    let now = listing(&live.root);
    assert!(now == before, "changed:\n{}\n{err}", before.diff(&now));
    let o = jsn(&[os("history"), dst_in.as_os_str()]);
    assert_eq!(
        stdout(&o),
        "",
        "a generation for a run that changed nothing"
    );
}
