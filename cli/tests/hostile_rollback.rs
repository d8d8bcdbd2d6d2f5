//! Issue 10, items 5–8 and 11: a rollback undoes only what the sync did; only names this
//! program recorded are removed as its temporary files; rollback is never silently off; the
//! rollback store is private; and a destination that runs out of space or inodes while staging
//! gets nothing of the run.
//!
//! Each test fails on the code before the fix. Mount tests run the real binary in a private
//! mount namespace (see `faultkit::TmpfsNs`).

// These are the tests of the per-file pipeline's rollback store (issue 10); the tree switch's
// generations have theirs in `switch.rs`.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::*;
use crate::faultkit;
use crate::faultkit::*;

const T: i64 = 1_600_000_000;

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

/// `jailsync --state-dir STATE ARGS...`.
fn js(state: &Path, args: &[&OsStr]) -> Output {
    let mut all: Vec<&OsStr> = vec![OsStr::new("--state-dir"), state.as_os_str()];
    all.extend_from_slice(args);
    run(all)
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

/// A listing without the rollback store kept at the top of a destination.
fn listing_without_store(root: &Path) -> Listing {
    let mut l = listing(root);
    l.0.retain(|p, _| !p.starts_with(b".jailsync-rollback"));
    l
}

fn can_mount() -> bool {
    is_root() && have("unshare") && have("nsenter")
}

// ---------------------------------------------------------------------------------------------
// Item 5: a rollback undoes what the sync did, and only that.

/// An old tree, a jail that replaces `a` and adds `n`; `b` and `d/x` are the same in both.
fn item5_fixture(e: &Env) -> PathBuf {
    e.dst
        .file("a", "old a")
        .file("b", "b")
        .file("d/x", "x")
        .mtime("b", T, 0)
        .mtime("d/x", T, 0)
        .mtime("d", T, 0);
    e.src
        .file("a", "new a")
        .file("b", "b")
        .file("d/x", "x")
        .file("n", "new n")
        .mtime("b", T, 0)
        .mtime("d/x", T, 0)
        .mtime("d", T, 0);
    let pristine = e.tmp.path().join("pristine");
    copy_tree(e.dst(), &pristine);
    e.sync(&[]);
    pristine
}

#[test]
fn item5_rollback_leaves_what_changed_since_the_sync_and_says_so() {
    force_per_file();
    let e = Env::new().with_dst();
    item5_fixture(&e);
    // The admin, after the sync: a new file, a new directory, an edit of a file the sync did
    // not touch, an edit (in place) of a file the sync created.
    std::fs::write(e.dst.path("admin-new"), "admin new").unwrap();
    std::fs::create_dir(e.dst.path("d/admin-dir")).unwrap();
    std::fs::write(e.dst.path("d/admin-dir/f"), "admin f").unwrap();
    std::fs::write(e.dst.path("b"), "b, edited by the admin").unwrap();
    std::fs::write(e.dst.path("n"), "admin n").unwrap();

    let o = e.js([os("rollback"), e.dst().as_os_str()]);
    expect_code(&o, 1);
    let err = stderr(&o);
    for p in ["admin-new", "b", "n", "d/admin-dir"] {
        let full = e.dst.path(p);
        assert!(
            err.contains(full.to_str().unwrap()),
            "{p} not reported:\n{err}"
        );
    }
    // Left alone.
    assert_eq!(read(e.dst.path("admin-new")), "admin new");
    assert_eq!(read(e.dst.path("d/admin-dir/f")), "admin f");
    assert_eq!(read(e.dst.path("b")), "b, edited by the admin");
    assert_eq!(read(e.dst.path("n")), "admin n");
    // What the sync did, and nobody touched since, is undone.
    assert_eq!(read(e.dst.path("a")), "old a");
    assert_eq!(read(e.dst.path("d/x")), "x");
}

#[test]
fn item5_force_rolls_back_but_keeps_the_changed_entries_in_the_store() {
    force_per_file();
    let e = Env::new().with_dst();
    let pristine = item5_fixture(&e);
    std::fs::write(e.dst.path("admin-new"), "admin new").unwrap();
    std::fs::write(e.dst.path("a"), "admin a").unwrap();
    std::fs::write(e.dst.path("n"), "admin n").unwrap();

    let o = e.js([os("rollback"), os("--force"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    assert_same(&pristine, e.dst());
    // The admin's versions were kept before being rolled back.
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(&e.state(), &mut files, &mut dirs);
    for want in ["admin new", "admin a", "admin n"] {
        assert!(
            files.iter().any(|(_, c)| c == want.as_bytes()),
            "{want:?} not kept in the rollback store:\n{}",
            stderr(&o)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 6: only names this program recorded are removed as its temporary files.

#[test]
fn item6_user_entries_named_like_temp_files_are_synced_and_kept() {
    force_per_file();
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

#[test]
fn item6_a_killed_runs_temp_names_are_removed_and_only_they() {
    force_per_file();
    let e = Env::new().with_dst();
    let mut rng = Rng::new(6);
    for i in 0..24 {
        e.dst.file(format!("f{i}"), rng.bytes(1 << 20));
        e.src.file(format!("f{i}"), rng.bytes(1 << 20));
    }
    // A user's file of the reserved shape, in both trees: it must survive every run.
    let user = ".jailsync-tmp-1-1";
    e.dst.file(user, "mine").mtime(user, T, 0);
    e.src.file(user, "mine").mtime(user, T, 0);
    let ours = |root: &Path| -> Vec<String> {
        std::fs::read_dir(root)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".jailsync-tmp-") && n != user)
            .collect()
    };
    let mut caught = false;
    for round in 0..20 {
        // New content each round: a run that finished left nothing to stage.
        for i in 0..24 {
            e.src.file(format!("f{i}"), rng.bytes(1 << 20));
        }
        eprintln!("round {round}");
        let c = faultkit::cmd(
            &e.state(),
            [
                os("sync"),
                os("--fsync"),
                e.src().as_os_str(),
                e.dst().as_os_str(),
            ],
        );
        let dst = e.dst().to_path_buf();
        let (_, killed, _) = run_and_kill_after(c, || !ours(&dst).is_empty(), Duration::ZERO);
        if killed && !ours(e.dst()).is_empty() {
            caught = true;
            break;
        }
    }
    assert!(caught, "never caught a run with staged names");
    let left = ours(e.dst());
    // The next run cleans them up instead of planning them as deletions.
    let plan = e.pending();
    for n in &left {
        assert!(
            !plan.contains(n.as_str()),
            "{n} planned as an entry:\n{plan}"
        );
    }
    assert!(!plan.contains(user), "the user's file is in sync:\n{plan}");
    e.sync(&[]);
    e.assert_synced();
    assert!(ours(e.dst()).is_empty(), "left: {:?}", ours(e.dst()));
    assert_eq!(read(e.dst.path(user)), "mine");
}

// ---------------------------------------------------------------------------------------------
// Item 7: rollback is never silently off.

/// Clears `chattr +a` again, so the temp dir can be removed even if the test fails.
struct AppendOnly(PathBuf);

impl AppendOnly {
    fn set(p: PathBuf) -> Option<AppendOnly> {
        let ok = Command::new("chattr")
            .arg("+a")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(AppendOnly(p))
    }
}

impl Drop for AppendOnly {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-a").arg(&self.0).status();
    }
}

#[test]
fn item7_an_entry_that_cannot_be_kept_refuses_the_sync() {
    force_per_file();
    require_root!();
    let e = Env::new().with_dst();
    e.dst.file("f", "old f").file("g", "old g");
    e.src.file("f", "new f").file("g", "new g");
    let Some(_guard) = AppendOnly::set(e.dst.path("f")) else {
        eprintln!("skipped: chattr +a unsupported here (needs root and ext4/xfs/btrfs)");
        return;
    };
    let before = listing(e.dst());
    let args = [
        os("sync"),
        os("-q"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ];
    let o = e.js(args);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(e.dst.path("f").to_str().unwrap()) && err.contains("--no-rollback"),
        "the refusal names the entry and the way out:\n{err}"
    );
    assert_eq!(listing(e.dst()), before, "destination changed");
    assert_eq!(partials(&e.state()), Vec::<PathBuf>::new(), "stale partial");
    // Without rollback the sync runs; f itself cannot be replaced (exit 1).
    let o = e.js([
        os("sync"),
        os("-q"),
        os("--no-rollback"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 1);
    assert_eq!(read(e.dst.path("g")), "new g");
}

#[test]
fn item7_a_mount_inside_the_destination_refuses_the_sync() {
    force_per_file();
    require!(can_mount(), "needs root, unshare and nsenter");
    let tmp = tempdir("item7-exdev");
    let t = tmp.path();
    let dst = Tree::new(t.join("dst"));
    dst.file("top", "old top").dir("sub");
    let Some(ns) = TmpfsNs::new(&dst.path("sub"), "16m") else {
        panic!("could not mount a tmpfs in a private mount namespace");
    };
    std::fs::write(ns.outside("f"), "old sub f").unwrap();
    let src = Tree::new(t.join("src"));
    src.file("top", "new top").file("sub/f", "new sub f");
    let state = t.join("state");
    let dst_out = ns.outside("").parent().unwrap().to_path_buf();
    let before = listing(&dst_out);
    let run = |extra: &[&str]| {
        ns.command(BIN)
            .arg("--state-dir")
            .arg(&state)
            .arg("sync")
            .args(extra)
            .arg(&src.root)
            .arg(&dst.root)
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .unwrap()
    };
    let o = run(&["-q"]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("sub/f") && err.contains("--no-rollback"),
        "the refusal names the entry and the way out:\n{err}"
    );
    assert_eq!(listing(&dst_out), before, "destination changed");
    assert_eq!(partials(&state), Vec::<PathBuf>::new(), "stale partial");
    let o = run(&["--no-rollback"]);
    expect_code(&o, 0);
    assert_eq!(listing(&dst_out), listing(&src.root));
}

#[test]
fn item7_a_destination_on_its_own_filesystem_keeps_its_store_at_its_top() {
    force_per_file();
    require!(can_mount(), "needs root, unshare and nsenter");
    let tmp = tempdir("item7-own-fs");
    let t = tmp.path();
    let old = Tree::new(t.join("old"));
    old.file("a", "old a").file("b", "b").mtime("b", T, 0);
    let src = Tree::new(t.join("src"));
    src.file("a", "new a").file("b", "b").file("c", "new c");
    src.mtime("b", T, 0);
    let dst = t.join("dst");
    std::fs::create_dir(&dst).unwrap();
    let Some(ns) = TmpfsNs::new(&dst, "16m") else {
        panic!("could not mount a tmpfs in a private mount namespace");
    };
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", old.root.display()))
        .arg(ns.outside(""))
        .status()
        .unwrap();
    assert!(st.success());
    // The state dir is on another filesystem than DST, and so is DST's parent.
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
    let store = dst.join(".jailsync-rollback");
    let o = jsn(&[os("sync"), os("-v"), src.root.as_os_str(), dst.as_os_str()]);
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains(store.to_str().unwrap()),
        "-v does not say where the rollback store is:\n{}",
        stderr(&o)
    );
    let o = jsn(&[os("history"), dst.as_os_str()]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(
        stderr(&o).contains(store.to_str().unwrap()),
        "history does not say where the rollback store is:\n{}",
        stderr(&o)
    );
    let md = std::fs::symlink_metadata(ns.outside(".jailsync-rollback")).unwrap();
    assert!(
        md.is_dir() && md.mode() & 0o7777 == 0o700,
        "{:o}",
        md.mode()
    );
    // Excluded from the sync: never listed, never deleted, and verify sees no difference.
    src.file("c", "newer c");
    let o = jsn(&[os("sync"), os("-i"), src.root.as_os_str(), dst.as_os_str()]);
    expect_code(&o, 0);
    assert!(!stdout(&o).contains(".jailsync-rollback"), "{}", stdout(&o));
    assert!(ns.outside(".jailsync-rollback").is_dir());
    let o = jsn(&[os("verify"), src.root.as_os_str(), dst.as_os_str()]);
    expect_code(&o, 0);
    // Two rollbacks return to the old tree.
    for _ in 0..2 {
        let o = jsn(&[os("rollback"), dst.as_os_str()]);
        expect_code(&o, 0);
    }
    assert_eq!(
        listing_without_store(&ns.outside("")),
        listing(&old.root),
        "not rolled back"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 8: the rollback store is private, and never reached through a symlink.

#[test]
fn item8_the_rollback_store_is_private_from_creation() {
    force_per_file();
    require_root!();
    require!(have("setpriv"), "needs setpriv to run as nobody");
    let tmp = tempdir("item8-private");
    let t = tmp.path();
    std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dst = Tree::new(t.join("dst"));
    dst.file("bin/prog", "old prog")
        .mode("bin/prog", 0o4755)
        .file("secret/key", "old key")
        .mode("secret", 0o700);
    let src = Tree::new(t.join("src"));
    src.file("bin/prog", "new prog")
        .mode("bin/prog", 0o755)
        .file("secret/key", "new key")
        .mode("secret", 0o700);
    let state = t.join("state");
    // A umask that would widen anything created with default modes.
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("--state-dir")
        .arg(&state)
        .arg("sync")
        .arg(&src.root)
        .arg(&dst.root)
        .env_remove("JAILSYNC_STATE_DIR")
        .env("JAILSYNC_SWITCH", "per-file")
        .output()
        .unwrap();
    expect_code(&o, 0);
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(&state, &mut files, &mut dirs);
    let md = std::fs::metadata(&state).unwrap();
    dirs.push((state.clone(), md.mode() & 0o7777));
    let open: Vec<_> = dirs.iter().filter(|(_, m)| m & 0o077 != 0).collect();
    assert!(open.is_empty(), "directories others can enter: {open:?}");
    let kept: Vec<&PathBuf> = files
        .iter()
        .filter(|(_, c)| c == b"old prog" || c == b"old key")
        .map(|(p, _)| p)
        .collect();
    assert_eq!(kept.len(), 2, "old versions not kept: {files:?}");
    for p in kept {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg("cat")
            .arg(p)
            .output()
            .unwrap();
        assert!(!o.status.success(), "nobody can read {}", p.display());
    }
}

#[test]
fn item8_a_symlink_at_the_stores_place_is_never_followed() {
    force_per_file();
    require_root!();
    // The store goes beside DST only when the state dir is on another filesystem.
    let shm = tempfile::Builder::new()
        .prefix("jailsync-item8-state-")
        .tempdir_in("/dev/shm");
    let Ok(shm) = shm else {
        eprintln!("skipped: no /dev/shm for a state dir on another filesystem");
        return;
    };
    let tmp = tempdir("item8-symlink");
    let t = tmp.path();
    let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
    require!(
        dev(shm.path()) != dev(t),
        "/dev/shm is on the same filesystem as the temp dir"
    );
    let state = shm.path().join("state");
    let dst = Tree::new(t.join("live"));
    dst.file("f", "old f");
    let src = Tree::new(t.join("jail"));
    src.file("f", "new f");
    let evil = Tree::new(t.join("evil"));
    std::os::unix::fs::symlink(&evil.root, t.join(".jailsync-rollback")).unwrap();
    let sync = [os("sync"), src.root.as_os_str(), dst.root.as_os_str()];
    let o = js(&state, &sync);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(".jailsync-rollback") && err.contains("symlink"),
        "the refusal names the store and the cause:\n{err}"
    );
    assert!(
        listing(&evil.root).0.len() == 1,
        "written through the symlink: {:?}",
        listing(&evil.root)
    );
    assert_eq!(read(dst.path("f")), "old f");

    // Without the symlink the store is made there, private.
    std::fs::remove_file(t.join(".jailsync-rollback")).unwrap();
    let o = js(&state, &sync);
    expect_code(&o, 0);
    let store = t.join(".jailsync-rollback");
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    walk(&store, &mut files, &mut dirs);
    dirs.push((
        store.clone(),
        std::fs::metadata(&store).unwrap().mode() & 0o7777,
    ));
    assert!(dirs.iter().all(|(_, m)| *m == 0o700), "{dirs:?}");
    assert!(files.iter().any(|(_, c)| c == b"old f"), "{files:?}");
}

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
    force_per_file();
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
    force_per_file();
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
