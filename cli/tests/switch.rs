//! The one-switch design: a tree's next release is staged whole in its home and switched in by
//! one exchange; the old tree is the rollback generation. These tests run the real binary on
//! real trees and watch the live tree from outside while it happens.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn home_of(dst: &Path) -> PathBuf {
    let mut n = b".jailsync-".to_vec();
    n.extend_from_slice(dst.file_name().unwrap().as_bytes());
    dst.parent().unwrap().join(OsStr::from_bytes(&n))
}

/// A release pair: `n` files of which every third changes content (its version in a header),
/// every fifth only its mode and mtime, plus some added and removed.
fn releases(e: &Env, n: usize) {
    for i in 0..n {
        let dir = format!("d{}/s{}", i % 17, i % 5);
        e.dst
            .file(format!("{dir}/f{i}"), format!("old release, file {i}\n"));
        if i % 3 == 0 {
            e.src
                .file(format!("{dir}/f{i}"), format!("new release, file {i}\n"));
        } else {
            e.src
                .file(format!("{dir}/f{i}"), format!("old release, file {i}\n"));
        }
        if i % 5 == 1 {
            e.src.mode(format!("{dir}/f{i}"), 0o600);
        }
        e.src
            .mtime(format!("{dir}/f{i}"), 1_700_000_000 + i as i64, 0);
        e.dst
            .mtime(format!("{dir}/f{i}"), 1_600_000_000 + i as i64, 0);
    }
    for i in 0..n / 10 {
        e.src.file(format!("added/a{i}"), format!("added {i}"));
        e.dst.file(format!("removed/r{i}"), format!("removed {i}"));
    }
    e.src.symlink("current", "d1");
    e.dst.symlink("current", "d0");
}

/// Changed files to watch: (relative path, old content, new content).
fn watched(n: usize) -> Vec<(String, Vec<u8>, Vec<u8>)> {
    (0..n)
        .step_by(3)
        .take(40)
        .map(|i| {
            (
                format!("d{}/s{}/f{i}", i % 17, i % 5),
                format!("old release, file {i}\n").into_bytes(),
                format!("new release, file {i}\n").into_bytes(),
            )
        })
        .collect()
}

#[derive(Default, Debug)]
struct Seen {
    sweeps: u64,
    torn: u64,
    lacking: u64,
    garbage: u64,
    old: u64,
    new: u64,
}

/// Sweeps the watched files until `stop`, each sweep through one fd of the live root opened
/// anew, as a program that starts resolves its files: with the tree switched by one exchange,
/// a sweep sees one release whole.
fn reader(root: PathBuf, files: Vec<(String, Vec<u8>, Vec<u8>)>, stop: Arc<AtomicBool>) -> Seen {
    use std::os::unix::fs::OpenOptionsExt;
    let mut s = Seen::default();
    while !stop.load(Ordering::Relaxed) {
        let Ok(dir) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&root)
        else {
            s.lacking += 1;
            continue;
        };
        let base = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&dir)
        ));
        let (mut o, mut n) = (false, false);
        for (rel, old, new) in &files {
            match std::fs::read(base.join(rel)) {
                Ok(d) if &d == old => o = true,
                Ok(d) if &d == new => n = true,
                Ok(_) => s.garbage += 1,
                Err(_) => s.lacking += 1,
            }
        }
        s.sweeps += 1;
        match (o, n) {
            (true, true) => s.torn += 1,
            (true, false) => s.old += 1,
            (false, true) => s.new += 1,
            _ => {}
        }
    }
    s
}

fn watch_while<T>(root: &Path, n: usize, f: impl FnOnce() -> T) -> (T, Seen) {
    let stop = Arc::new(AtomicBool::new(false));
    let h = {
        let (root, files, stop) = (root.to_path_buf(), watched(n), stop.clone());
        std::thread::spawn(move || reader(root, files, stop))
    };
    std::thread::sleep(Duration::from_millis(50));
    let r = f();
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    (r, h.join().unwrap())
}

/// The upgrade and its rollback as a concurrent reader sees them: never torn, nothing lacking,
/// nothing partial — and the reader saw both releases, so it was really watching.
#[test]
fn reader_never_sees_a_torn_tree_during_sync_or_rollback() {
    let e = Env::new().with_dst();
    let n = 3000;
    releases(&e, n);
    let (out, seen) = watch_while(e.dst(), n, || e.sync(&["--json"]));
    assert!(
        seen.old > 0 && seen.new > 0,
        "the reader saw one release only: {seen:?}"
    );
    // Without an atomic exchange (the portable layer) the tree is absent for one rename,
    // which a sweep may catch; it still never sees a mix or a partial file.
    let lacking = if portable() { 0 } else { seen.lacking };
    assert_eq!(
        (seen.torn, lacking, seen.garbage),
        (0, 0, 0),
        "sync: {seen:?}"
    );
    let lines = json_lines(&out);
    let sw = lines
        .iter()
        .find(|l| l["type"] == "switch")
        .expect("a switch line");
    assert_eq!(sw["method"], "tree", "{sw}");
    assert_eq!(sw["calls"], 1, "{sw}");
    e.assert_synced();

    let (o, seen) = watch_while(e.dst(), n, || {
        e.js([OsStr::new("rollback"), e.dst().as_os_str()])
    });
    expect_code(&o, 0);
    assert!(
        seen.old > 0 && seen.new > 0,
        "the reader saw one release only: {seen:?}"
    );
    // Without an atomic exchange (the portable layer) the tree is absent for one rename,
    // which a sweep may catch; it still never sees a mix or a partial file.
    let lacking = if portable() { 0 } else { seen.lacking };
    assert_eq!(
        (seen.torn, lacking, seen.garbage),
        (0, 0, 0),
        "rollback: {seen:?}"
    );
}

/// Metadata-only changes are made on the inode both trees share, before the switch (the
/// one thing not switched atomically, by design); rollback sets them back exactly, and the
/// whole original tree comes back (listing identical, inodes of unchanged files kept).
#[test]
fn rollback_restores_the_old_tree_exactly_with_metadata_changed_in_place() {
    let e = Env::new().with_dst();
    releases(&e, 300);
    e.dst
        .hardlink("d2/s2/hl", "d2/s2/f2")
        .settle_dirs(1_500_000_000);
    e.src.hardlink("d2/s2/hl", "d2/s2/f2");
    let before = listing(e.dst());
    let ino_before = ino(e.dst(), "d1/s1/f1");
    e.sync(&[]);
    // Unchanged content: the same inode (linked, not copied), its new mode set in place.
    assert_eq!(ino(e.dst(), "d1/s1/f1"), ino_before);
    e.assert_synced();
    e.assert_rollback_restores(&before);
    assert_eq!(ino(e.dst(), "d1/s1/f1"), ino_before);
    // And forward again: the generation left by rollback is usable.
    e.sync(&[]);
    e.assert_synced();
}

/// Many metadata-only changes of every sort (mtime alone, mode, owner, xattrs, a symlink's
/// times and owner), spread over many directories: rollback sets each back exactly, the ones
/// that differ only in mtime included, whichever thread restores them.
#[test]
fn rollback_sets_back_every_sort_of_metadata_changed_in_place() {
    let e = Env::new().with_dst();
    for i in 0..1500 {
        let p = format!("d{}/s{}/f{i}", i % 23, i % 7);
        for t in [&e.src, &e.dst] {
            t.file(&p, format!("same content {i}\n"));
        }
        e.dst.mtime(&p, 1_600_000_000 + i as i64, 7);
        e.src.mtime(&p, 1_700_000_000 + i as i64, 9);
        match i % 10 {
            1 => {
                e.src.mode(&p, 0o600);
            }
            2 => {
                e.src.owner(&p, 1234, 5678);
            }
            3 => {
                e.dst.xattr(&p, "user.tag", "old");
                e.src.xattr(&p, "user.tag", "new");
            }
            4 => {
                e.src.xattr(&p, "user.added", "x");
            }
            5 => {
                // Nothing but the mtime's nanoseconds.
                e.src.mtime(&p, 1_600_000_000 + i as i64, 8);
            }
            _ => {}
        }
    }
    for t in [&e.src, &e.dst] {
        t.symlink("d0/link", "s0");
    }
    e.src.owner("d0/link", 42, 43);
    e.dst.settle_dirs(1_500_000_000);
    e.src.settle_dirs(1_500_000_000);
    let before = listing(e.dst());
    e.sync(&[]);
    e.assert_synced();
    e.assert_rollback_restores(&before);
}

/// An admin's change after the sync blocks the rollback (exit 1, nothing switched, named);
/// `--force` switches back and keeps the admin's tree whole in the home.
#[test]
fn rollback_refuses_over_changes_made_since_and_force_keeps_them() {
    let e = Env::new().with_dst();
    releases(&e, 60);
    e.sync(&[]);
    std::fs::write(e.dst.path("d0/s0/f0"), b"edited by the admin\n").unwrap();
    std::fs::write(e.dst.path("local.conf"), b"admin's own\n").unwrap();
    let live = listing(e.dst());
    let o = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("local.conf") && err.contains("d0/s0/f0"),
        "{err}"
    );
    assert!(
        live == listing(e.dst()),
        "a refused rollback changed the tree"
    );
    let o = e.js([
        OsStr::new("rollback"),
        OsStr::new("--force"),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 0);
    let kept = home_of(e.dst()).join("kept-1");
    assert_eq!(
        std::fs::read(kept.join("local.conf")).unwrap(),
        b"admin's own\n"
    );
    assert_eq!(
        std::fs::read(kept.join("d0/s0/f0")).unwrap(),
        b"edited by the admin\n"
    );
    assert_eq!(
        std::fs::read(e.dst.path("d0/s0/f0")).unwrap(),
        b"old release, file 0\n"
    );
}

/// Generations are private to root from creation (old setuid binaries inside stay out of
/// reach), and `--keep N` bounds them.
#[test]
fn generations_are_private_and_bounded_by_keep() {
    let e = Env::new().with_dst();
    e.dst.file("bin/su", "old su").mode("bin/su", 0o4755);
    for round in 0..4 {
        e.src
            .file("bin/su", format!("su {round}"))
            .mode("bin/su", 0o4755);
        e.sync(&["--keep", "2"]);
    }
    let home = home_of(e.dst());
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    };
    assert_eq!(mode(&home), 0o700);
    let gens: Vec<String> = std::fs::read_dir(&home)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-") && !n.ends_with(".d"))
        .collect();
    assert_eq!(gens.len(), 2, "{gens:?}");
    let o = e.js([OsStr::new("history"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
}

/// A home that is not ours (a symlink planted there, or a directory others may enter) is
/// refused, not followed.
#[test]
fn a_planted_home_is_refused() {
    let e = Env::new().with_dst();
    e.src.file("f", "new");
    e.dst.file("f", "old");
    let outside = e.tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, home_of(e.dst())).unwrap();
    let o = e.js([OsStr::new("sync"), e.src().as_os_str(), e.dst().as_os_str()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("symlink"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(std::fs::read(e.dst.path("f")).unwrap(), b"old");
    std::fs::remove_file(home_of(e.dst())).unwrap();
    std::fs::create_dir(home_of(e.dst())).unwrap();
    std::fs::set_permissions(
        home_of(e.dst()),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = e.js([OsStr::new("sync"), e.src().as_os_str(), e.dst().as_os_str()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("0700"), "{}", stderr(&o));
}

/// The first no-op after a sync reads no file: every file of the new tree was written or
/// linked by the sync, so its hash is known and recorded under the racy rule.
#[test]
fn first_noop_after_a_sync_hashes_nothing() {
    let e = Env::new().with_dst();
    releases(&e, 500);
    // The jail's file settled before the sync (one written in the same clock tick as the
    // scan is racy, and is rightly read again by the next run).
    e.src
        .file("big", vec![7u8; 300_000])
        .mtime("big", 1_600_000_000, 0);
    e.dst.file("big", vec![8u8; 300_000]);
    // Past the cache's granularity margin (20 ms) since the last write: a scan within it
    // rightly leaves the file uncached, and the no-op below would read it again.
    std::thread::sleep(Duration::from_millis(60));
    e.sync(&[]);
    let o = e.js([
        OsStr::new("sync"),
        OsStr::new("--json"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 0);
    let l = json_lines(&stdout(&o));
    let s = l.last().unwrap();
    assert_eq!(s["changes"], 0, "{s}");
    assert_eq!(
        s["bytes_hashed"], 0,
        "the first no-op read files again: {s}"
    );
}

/// Killed (SIGKILL) at any moment, a run leaves the tree wholly old or wholly new; the next
/// run finishes the job, and a rollback then gives the old tree back exactly.
#[test]
fn killed_at_any_point_the_tree_is_old_or_new() {
    let e = Env::new().with_dst();
    releases(&e, 4000);
    let (old, new) = (listing(e.dst()), listing(e.src()));
    // How long a whole run takes here, to spread the kills over it.
    let probe = Env::new().with_dst();
    releases(&probe, 4000);
    let t0 = Instant::now();
    probe.sync(&[]);
    let full = t0.elapsed();
    let mut saw = (0, 0);
    for k in 0..10u32 {
        let mut child = Command::new(BIN)
            .arg("--state-dir")
            .arg(e.state())
            .arg("sync")
            .arg(e.src())
            .arg(e.dst())
            .env_remove("JAILSYNC_STATE_DIR")
            .spawn()
            .unwrap();
        std::thread::sleep(full * k / 9);
        let _ = child.kill();
        let _ = child.wait();
        let now = listing(e.dst());
        // Content and structure are one release whole; metadata-only changes on inodes both
        // trees share may already show (made while staging, by design) and are set back by
        // the next run's recovery.
        if !content_eq(&now, &old) && !content_eq(&now, &new) {
            panic!("kill {k} left a torn tree:\n{}", old.diff(&now));
        }
        if now != old && now != new {
            // Recovery runs under the lock at the start of the next run; a rollback request
            // (with nothing to roll back) is such a run.
            let _ = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
            let now = listing(e.dst());
            assert!(
                now == old || now == new,
                "kill {k}: recovery did not restore the metadata:\n{}",
                old.diff(&now)
            );
        }
        let now = listing(e.dst());
        if now == old {
            saw.0 += 1;
        } else if now == new {
            saw.1 += 1;
            // Back to old for the next kill.
            let o = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
            expect_code(&o, 0);
            assert!(listing(e.dst()) == old, "rollback after kill {k} not exact");
        } else {
            panic!("kill {k} left a torn tree:\n{}", old.diff(&now));
        }
    }
    eprintln!("kills: {saw:?} (old, new)");
    e.sync(&[]);
    e.assert_synced();
}

/// Same paths, types, contents and link targets.
fn content_eq(a: &Listing, b: &Listing) -> bool {
    a.0.len() == b.0.len()
        && a.0.iter().zip(&b.0).all(|((pa, ra), (pb, rb))| {
            pa == pb && ra.kind == rb.kind && ra.hash == rb.hash && ra.target == rb.target
        })
}

/// SIGTERM or SIGINT during staging: the run stops at its next safe point, removes what it
/// staged, leaves the live tree as it was, says so, and exits 128 + the signal.
#[test]
fn a_signal_stops_the_run_before_the_switch() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let e = Env::new().with_dst();
        releases(&e, 6000);
        let old = listing(e.dst());
        let child = Command::new(BIN)
            .arg("--state-dir")
            .arg(e.state())
            .arg("sync")
            .arg(e.src())
            .arg(e.dst())
            .env_remove("JAILSYNC_STATE_DIR")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Signalled once staging is under way (its `next` exists).
        let next = home_of(e.dst()).join("next");
        let t0 = Instant::now();
        while !next.exists() && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        if o.status.code() == Some(0) {
            // It finished before the signal landed: the tree must be new then.
            assert_same(e.src(), e.dst());
            eprintln!("signal {sig} arrived after the run ended");
            continue;
        }
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert!(err.contains("nothing was switched"), "{err}");
        assert!(old == listing(e.dst()), "the live tree changed");
        assert!(!next.exists(), "staged tree left behind");
        // The lock went with the process; a rerun finishes.
        e.sync(&[]);
        e.assert_synced();
    }
}

/// After the switch, a process still running a program of the old tree is named (like
/// needrestart), with `--json` too.
#[test]
fn processes_still_running_the_old_release_are_reported() {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    require!(sleep.is_some(), "no sleep binary to run from the tree");
    let bin = std::fs::read(sleep.unwrap()).unwrap();
    let e = Env::new().with_dst();
    e.dst.file("bin/sleeper", &bin).mode("bin/sleeper", 0o755);
    let mut newer = bin.clone();
    newer.extend_from_slice(b"new release");
    e.src.file("bin/sleeper", &newer).mode("bin/sleeper", 0o755);
    let mut child = Command::new(e.dst.path("bin/sleeper"))
        .arg("30")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let o = e.js([
        OsStr::new("sync"),
        OsStr::new("--json"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    expect_code(&o, 0);
    let l = json_lines(&stdout(&o));
    let p = l
        .iter()
        .find(|v| v["type"] == "process" && v["pid"] == child.id())
        .unwrap_or_else(|| {
            panic!(
                "the old sleeper (pid {}) is not reported:\n{}",
                child.id(),
                stdout(&o)
            )
        });
    assert!(p["file"].as_str().unwrap().ends_with("bin/sleeper"), "{p}");
}

/// DST is a mount point of its own: the tree cannot be exchanged, so each top-level entry is
/// (one call each), the staging area lives at the top of DST's filesystem, never synced and
/// never seen by `verify`; rollback switches back the same way.
#[test]
fn a_mount_point_destination_switches_per_top_level_entry() {
    require!(
        is_root() && have("unshare"),
        "needs root and unshare for a private tmpfs"
    );
    let e = Env::new().with_dst();
    releases(&e, 200);
    let dst = e.dst().display().to_string();
    // The old release, copied aside: the tmpfs mounted over DST gets a copy of it.
    let old_tree = e.tmp.path().join("old");
    let o = Command::new("cp")
        .arg("-a")
        .arg(e.dst())
        .arg(&old_tree)
        .output()
        .unwrap();
    assert!(o.status.success());
    let script = format!(
        "set -e; mount -t tmpfs tmpfs {dst}; cp -a {src_old}/. {dst}/; \
         {bin} --state-dir {st} verify {src_old} {dst} > {t}/before-sync || true; \
         {bin} --state-dir {st} sync --json {src} {dst} > {t}/out; \
         {bin} --state-dir {st} verify {src} {dst}; \
         ls -a {dst} > {t}/ls; stat -c %a {dst}/.jailsync-gens > {t}/mode; \
         {bin} --state-dir {st} rollback {dst}; \
         {bin} --state-dir {st} verify {src_old} {dst} > {t}/after-rollback || true",
        src_old = old_tree.display(),
        bin = BIN,
        st = e.state().display(),
        src = e.src().display(),
        t = e.tmp.path().display(),
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = std::fs::read_to_string(e.tmp.path().join("out")).unwrap();
    let sw = json_lines(&out)
        .into_iter()
        .find(|l| l["type"] == "switch")
        .expect("a switch line");
    assert_eq!(sw["method"], "entries", "{sw}");
    assert!(sw["calls"].as_u64().unwrap() >= 3, "{sw}");
    let ls = std::fs::read_to_string(e.tmp.path().join("ls")).unwrap();
    assert!(ls.lines().any(|l| l == ".jailsync-gens"), "{ls}");
    assert_eq!(
        std::fs::read_to_string(e.tmp.path().join("mode"))
            .unwrap()
            .trim(),
        "700"
    );
    // The tmpfs root is not quite the copied tree (its mode is the mount's): compare with how
    // it stood before the sync.
    let before = std::fs::read_to_string(e.tmp.path().join("before-sync")).unwrap();
    let after = std::fs::read_to_string(e.tmp.path().join("after-rollback")).unwrap();
    assert_eq!(after, before, "rollback did not restore the old release");
}
