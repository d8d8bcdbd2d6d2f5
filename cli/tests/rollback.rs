//! `rollback` and `history`: a sync undone exactly, also after the sync was killed midway.
//! The oracles are a pristine `cp -a` of the old tree compared with rsync
//! (`-aHAXc --delete -n -i` prints nothing when the trees match) and `jailsync verify` against a
//! manifest taken before the sync.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_jailsync")
}

fn run(state: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .expect("run jailsync")
}

fn ok(state: &Path, args: &[&str]) -> String {
    let o = run(state, args);
    assert!(
        o.status.success(),
        "jailsync {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sh(cmd: &str) {
    let s = Command::new("sh").arg("-c").arg(cmd).status().unwrap();
    assert!(s.success(), "{cmd}");
}

/// rsync's view of the differences between two trees (empty when identical).
fn rsync_diff(a: &Path, b: &Path) -> String {
    let o = Command::new("rsync")
        .args(["-aHAXc", "--delete", "-n", "-i"])
        .arg(format!("{}/", a.display()))
        .arg(format!("{}/", b.display()))
        .output()
        .expect("rsync is installed (.ci/run installs it)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// An old tree with every kind of object, and a new one that changes each in some way.
fn fixture(root: &Path) -> (PathBuf, PathBuf) {
    let old = root.join("live");
    let new = root.join("jail");
    write(&old.join("bin/prog"), b"old program");
    fs::set_permissions(old.join("bin/prog"), fs::Permissions::from_mode(0o4755)).unwrap();
    write(&old.join("lib/libz.so.1"), &vec![7u8; 100_000]);
    symlink("libz.so.1", old.join("lib/libz.so")).unwrap();
    write(&old.join("share/doc/a"), b"same");
    fs::hard_link(old.join("share/doc/a"), old.join("share/doc/a-link")).unwrap();
    write(&old.join("share/gone/deep/file"), b"removed by the sync");
    write(&old.join("becomes-dir"), b"a file first");
    fs::create_dir_all(old.join("becomes-file/sub")).unwrap();
    write(&old.join("becomes-file/sub/x"), b"x");
    symlink("elsewhere", old.join("becomes-link")).unwrap();
    write(&old.join("meta-only"), b"unchanged content");
    sh(&format!(
        "mkfifo {0}/fifo && setfattr -n user.k -v old {0}/meta-only && \
         touch -h -d '2001-02-03 04:05:06.123456789' {0}/lib/libz.so {0}/meta-only {0}/bin {0}",
        s(&old)
    ));

    sh(&format!("cp -a {} {}", s(&old), s(&new)));
    write(&new.join("bin/prog"), b"new program, longer");
    fs::set_permissions(new.join("bin/prog"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&new.join("lib/libz.so.2"), &vec![9u8; 120_000]);
    fs::remove_file(new.join("lib/libz.so")).unwrap();
    symlink("libz.so.2", new.join("lib/libz.so")).unwrap();
    fs::remove_file(new.join("share/doc/a-link")).unwrap();
    write(&new.join("share/doc/a-link"), b"same");
    fs::remove_dir_all(new.join("share/gone")).unwrap();
    fs::remove_file(new.join("becomes-dir")).unwrap();
    write(&new.join("becomes-dir/inner"), b"now a dir");
    fs::remove_dir_all(new.join("becomes-file")).unwrap();
    write(&new.join("becomes-file"), b"now a file");
    fs::remove_file(new.join("becomes-link")).unwrap();
    fs::create_dir_all(new.join("becomes-link")).unwrap();
    sh(&format!(
        "setfattr -n user.k -v new {0}/meta-only && touch -d '2020-01-01' {0}/meta-only && \
         chmod 600 {0}/meta-only",
        s(&new)
    ));
    (old, new)
}

/// 400 files in 20 directories, each with other content in the jail.
fn many_files(live: &Path, jail: &Path) {
    for i in 0..400 {
        let rel = format!("many/d{}/f{i}", i % 20);
        write(&live.join(&rel), format!("old {i}").as_bytes());
        write(&jail.join(&rel), format!("new content {i}").as_bytes());
    }
}

/// A `sync --fsync -q JAIL LIVE` in the background, to be killed midway.
fn spawn_sync(state: &Path, jail: &Path, live: &Path) -> std::process::Child {
    Command::new(bin())
        .arg("--state-dir")
        .arg(state)
        .args(["sync", "--fsync", "-q", s(jail), s(live)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn rollback_restores_the_old_tree_exactly() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let (live, jail) = fixture(t.path());
    let pristine = t.path().join("pristine");
    sh(&format!("cp -a {} {}", s(&live), s(&pristine)));
    let before = t.path().join("before.manifest");
    ok(&state, &["manifest", s(&live), "-o", s(&before), "-q"]);

    ok(&state, &["sync", s(&jail), s(&live)]);
    assert_eq!(rsync_diff(&jail, &live), "", "sync did not converge");
    let hist = ok(&state, &["history", s(&live)]);
    assert_eq!(hist.lines().count(), 1, "one generation expected: {hist}");

    ok(&state, &["rollback", s(&live)]);
    assert_eq!(rsync_diff(&pristine, &live), "", "rollback is not exact");
    ok(&state, &["verify", "-c", s(&before), s(&live)]);
    // The generation is spent; nothing is left inside the tree.
    assert_eq!(ok(&state, &["history", s(&live)]), "");
    let o = run(&state, &["rollback", s(&live)]);
    assert_eq!(o.status.code(), Some(2), "nothing to roll back is an error");
    let leftovers = Command::new("find")
        .arg(&live)
        .args(["-name", ".jailsync-*"])
        .output()
        .unwrap();
    assert!(leftovers.stdout.is_empty());
}

fn names(d: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "state")
        .collect();
    v.sort();
    v
}

#[test]
fn no_rollback_and_keep() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let (live, jail) = fixture(t.path());
    // A change switched with nothing kept leaves nothing of ours beside the tree (rsync's
    // testsuite diffs DST's parent).
    let parent_before = names(live.parent().unwrap());
    ok(&state, &["sync", "--no-rollback", s(&jail), s(&live)]);
    assert_eq!(ok(&state, &["history", s(&live)]), "");
    assert_eq!(names(live.parent().unwrap()), parent_before);
    write(&jail.join("counter"), b"x");
    ok(&state, &["sync", "--no-rollback", s(&jail), s(&live)]);
    assert_eq!(fs::read(live.join("counter")).unwrap(), b"x");
    assert_eq!(names(live.parent().unwrap()), parent_before);
    for i in 0..4 {
        write(&jail.join("counter"), format!("{i}").as_bytes());
        ok(&state, &["sync", "--keep", "2", s(&jail), s(&live)]);
    }
    let hist = ok(&state, &["history", s(&live)]);
    assert_eq!(hist.lines().count(), 2, "{hist}");
    // Rolling back twice walks back two syncs.
    ok(&state, &["rollback", s(&live)]);
    assert_eq!(fs::read(live.join("counter")).unwrap(), b"2");
    ok(&state, &["rollback", s(&live)]);
    assert_eq!(fs::read(live.join("counter")).unwrap(), b"1");
}

/// A sync killed at random moments: whenever a generation was recorded, rollback must restore
/// the old tree exactly; when none was, the tree must still be the old one (nothing committed).
#[test]
fn rollback_after_a_killed_sync() {
    let t = tempfile::tempdir().unwrap();
    let (live0, jail) = fixture(t.path());
    // Enough entries that the kill lands inside the run; --fsync slows the commit down.
    many_files(&live0, &jail);
    let iters: u64 = std::env::var("JAILSYNC_ROLLBACK_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut rolled = 0;
    for i in 0..iters {
        let live = t.path().join(format!("live{i}"));
        let state = t.path().join(format!("state{i}"));
        sh(&format!("cp -a {} {}", s(&live0), s(&live)));
        let mut child = spawn_sync(&state, &jail, &live);
        std::thread::sleep(Duration::from_millis(5 + i * 37 % 300));
        let _ = child.kill();
        let _ = child.wait();
        let hist = ok(&state, &["history", s(&live)]);
        if hist.is_empty() {
            // Killed before its switch: nothing may have been committed. Metadata-only changes
            // made in place while staging show until the next run on the tree sets them back,
            // under its lock (here a rollback that finds nothing to roll back).
            let _ = run(&state, &["rollback", s(&live)]);
            let o = run(&state, &["sync", "-n", "-i", s(&live0), s(&live)]);
            let diff = String::from_utf8_lossy(&o.stdout).into_owned();
            assert_eq!(diff, "", "iteration {i}: tree changed without a generation");
        } else {
            ok(&state, &["rollback", s(&live)]);
            assert_eq!(
                rsync_diff(&live0, &live),
                "",
                "iteration {i}: rollback not exact"
            );
            rolled += 1;
        }
    }
    eprintln!("killed {iters} syncs, {rolled} rolled back from a generation");
}

/// A hard-link group split by a sync (one member rewritten, the other untouched) is rejoined by
/// the rollback, with no staged name left behind.
#[test]
fn rollback_rejoins_a_split_hard_link_group() {
    let t = tempfile::tempdir().unwrap();
    let state = t.path().join("state");
    let live = t.path().join("live");
    let jail = t.path().join("jail");
    write(&live.join("a"), b"shared");
    fs::hard_link(live.join("a"), live.join("b")).unwrap();
    let pristine = t.path().join("pristine");
    sh(&format!("cp -a {} {}", s(&live), s(&pristine)));
    sh(&format!("cp -a {} {}", s(&live), s(&jail)));
    // In the jail, `a` is rewritten on its own: the group splits.
    fs::remove_file(jail.join("a")).unwrap();
    write(&jail.join("a"), b"new a");
    sh(&format!("touch -r {0}/b {0}/a", s(&jail)));
    ok(&state, &["sync", s(&jail), s(&live)]);
    assert_eq!(rsync_diff(&jail, &live), "");
    ok(&state, &["rollback", s(&live)]);
    assert_eq!(rsync_diff(&pristine, &live), "", "group not rejoined");
    let names: Vec<_> = fs::read_dir(&live)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".jailsync-")),
        "left behind: {names:?}"
    );
}

/// A sync killed midway and then run again to the end is one sync for rollback: a single
/// rollback returns to the tree as it was before the killed run, not to the half-done state.
#[test]
fn one_rollback_undoes_a_killed_then_resumed_sync() {
    let t = tempfile::tempdir().unwrap();
    let (live0, jail) = fixture(t.path());
    many_files(&live0, &jail);
    let mut resumed = 0;
    for i in 0..6u64 {
        let live = t.path().join(format!("live{i}"));
        let state = t.path().join(format!("state{i}"));
        sh(&format!("cp -a {} {}", s(&live0), s(&live)));
        let mut child = spawn_sync(&state, &jail, &live);
        std::thread::sleep(Duration::from_millis(40 + i * 53));
        let _ = child.kill();
        let _ = child.wait();
        let before = ok(&state, &["history", s(&live)]).lines().count();
        ok(&state, &["sync", "-q", s(&jail), s(&live)]);
        assert_eq!(
            rsync_diff(&jail, &live),
            "",
            "iteration {i}: resume did not converge"
        );
        let after = ok(&state, &["history", s(&live)]).lines().count();
        assert_eq!(after, 1, "iteration {i}: one generation for the whole sync");
        if before == 1 {
            resumed += 1;
        }
        ok(&state, &["rollback", s(&live)]);
        assert_eq!(
            rsync_diff(&live0, &live),
            "",
            "iteration {i}: not back to the original"
        );
    }
    eprintln!("{resumed} of 6 runs were killed after their generation was recorded");
}
