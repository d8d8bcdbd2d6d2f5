//! The switch by symlink (`--switch link`): DST becomes `DST -> .jailsync-NAME/rel-N` and each
//! switch is one rename of a new symlink over it. Checked with real programs running from the
//! live tree, a watcher reading DST throughout, a killed run, and conversion both ways.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The release DST's link names, as `rel-N`.
fn release(dst: &Path) -> String {
    let t = std::fs::read_link(dst).expect("DST is a symlink");
    let t = t.to_string_lossy().into_owned();
    let name = dst.file_name().unwrap().to_string_lossy();
    t.strip_prefix(&format!(".jailsync-{name}/"))
        .unwrap_or_else(|| panic!("unexpected link target {t}"))
        .to_string()
}

fn home(e: &Env) -> PathBuf {
    e.tmp.path().join(".jailsync-dst")
}

/// Release A / B of a small "program tree": a data file read by path, a program, a setuid
/// binary whose content changes.
fn release_tree(t: &Tree, v: &str) {
    // Unchanged between releases (rewritten, its new mtime would be a metadata-only change,
    // which is made on the shared inode before the switch: see the README).
    if !t.path("app/run.sh").exists() {
        t.file("app/run.sh", "#!/bin/sh\necho hi\n")
            .mode("app/run.sh", 0o755);
    }
    t.file("app/data", format!("release {v}\n"))
        .file("bin/su-tool", format!("setuid {v}"))
        .mode("bin/su-tool", 0o4755);
    for i in 0..50 {
        t.file(format!("lib/m{i:02}"), format!("{v}{i}"));
    }
}

#[test]
fn a_directory_becomes_a_link_switches_by_rename_and_converts_back() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&[]);
    assert!(e.dst().is_dir() && !e.dst().is_symlink());
    let before = listing(e.dst());
    // Nothing changes, but the kind does: the tree is switched anyway.
    e.sync(&["--switch", "link"]);
    assert!(e.dst().is_symlink(), "DST did not become a link");
    assert_eq!(listing(e.dst()), before, "the conversion changed content");
    let h = std::fs::metadata(home(&e)).unwrap();
    assert_eq!(
        h.mode() & 0o777,
        0o711,
        "releases must be reachable by every user"
    );
    let r1 = release(e.dst());
    // A plain sync keeps the kind.
    release_tree(&e.src, "B");
    e.src.remove("lib/m07");
    let out = e.js(["-v", "sync"]
        .iter()
        .map(OsStr::new)
        .chain([e.src().as_os_str(), e.dst().as_os_str()]));
    expect_code(&out, 0);
    let r2 = release(e.dst());
    assert_ne!(r1, r2, "the link names the same release");
    e.assert_synced();
    // The old release keeps its real path (the generation's alias names it).
    let old = home(&e).join(&r1);
    assert_eq!(
        std::fs::read_to_string(old.join("app/data")).unwrap(),
        "release A\n"
    );
    assert!(
        std::fs::read_link(home(&e).join("gen-3")).is_ok(),
        "generation 3 is no alias"
    );
    // Defanged: the old setuid binary the new release replaced lost its bit.
    let m = std::fs::metadata(old.join("bin/su-tool")).unwrap().mode();
    assert_eq!(m & 0o6000, 0, "old setuid binary kept its bit: {m:o}");
    // A user other than root reaches the live release through DST.
    if have("runuser") {
        let o = Command::new("runuser")
            .args(["-u", "nobody", "--", "cat"])
            .arg(e.dst().join("app/data"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&o.stdout), "release B\n", "{o:?}");
    } else {
        eprintln!("skipped the unprivileged read: runuser not installed");
    }
    // Rollback is the rename back, exact.
    let b = listing(e.dst());
    e.assert_rollback_restores(&before);
    assert_eq!(release(e.dst()), r1);
    // And back to a directory: one exchange, the content the same.
    e.sync(&["--switch", "exchange"]);
    assert!(
        e.dst().is_dir() && !e.dst().is_symlink(),
        "DST is still a link"
    );
    assert_eq!(listing(e.dst()), b);
    e.assert_synced();
    let hist = e.js([OsStr::new("history"), e.dst().as_os_str()]);
    expect_code(&hist, 0);
}

/// A program that resolved its real path at start keeps reading its own release's files by
/// that path after a switch by symlink; with an exchange the same path holds the new release
/// (the check can fail).
#[test]
fn a_running_program_keeps_its_release() {
    for (kind, keeps) in [("link", true), ("exchange", false)] {
        let e = Env::new();
        release_tree(&e.src, "A");
        e.sync(&["--switch", kind]);
        let marker = e.tmp.path().join("started");
        let script = r#"real=$(readlink -f "$1"); : > "$2"; sleep 1; cat "$real/data""#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .arg(e.dst().join("app"))
            .arg(&marker)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !marker.exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        release_tree(&e.src, "B");
        e.sync(&[]);
        let out = child.wait_with_output().unwrap();
        let seen = String::from_utf8_lossy(&out.stdout).into_owned();
        let want = if keeps { "release A\n" } else { "release B\n" };
        assert_eq!(seen, want, "switch by {kind}");
    }
}

/// A killed switch by symlink is finished or undone by the next run, never half: DST is the
/// old release or the new one at every kill, and nothing of ours is left behind.
#[test]
fn a_killed_link_switch_is_old_or_new_and_recovered() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&["--switch", "link"]);
    let a = listing(e.dst());
    release_tree(&e.src, "B");
    let b = {
        let t = tempfile::tempdir().unwrap();
        let c = t.path().join("copy");
        let o = Command::new("cp")
            .arg("-a")
            .arg(e.src())
            .arg(&c)
            .output()
            .unwrap();
        assert!(o.status.success());
        listing(&c)
    };
    let journal = home(&e).join("switching");
    let (mut old, mut new, mut killed) = (0, 0, 0);
    for i in 0..12u64 {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(e.state())
            .arg("sync")
            .arg(e.src())
            .arg(e.dst());
        let delay = Duration::from_micros(i * 40);
        let (_, k, _) = crate::faultkit::run_and_kill_after(c, || journal.exists(), delay);
        killed += usize::from(k);
        let now = listing(e.dst());
        if now == a {
            old += 1;
        } else if now == b {
            new += 1;
        } else {
            panic!("a killed link switch left a mix:\n{}", a.diff(&now));
        }
        // The next run finishes or undoes it; then DST is the old release again for the
        // next round (a rollback, itself a switch by rename).
        e.sync(&[]);
        assert_eq!(listing(e.dst()), b);
        let names: Vec<String> = std::fs::read_dir(home(&e))
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        for n in ["next", "swap", "switching"] {
            assert!(
                !names.iter().any(|x| x == n),
                "{n} left in the home: {names:?}"
            );
        }
        let o = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
        expect_code(&o, 0);
        assert_eq!(listing(e.dst()), a);
    }
    eprintln!("killed {killed} of 12 runs: {old} old, {new} new");
}

/// Readers of DST never see it missing nor a file torn while it is switched by symlink back
/// and forth — in both OS layers, since a rename needs no atomic exchange.
#[test]
fn readers_never_see_a_link_switch_lack_or_tear() {
    let e = Env::new();
    for i in 0..300 {
        e.src
            .file(format!("d{:02}/f{i:04}", i % 10), vec![b'a'; 4096]);
    }
    e.sync(&["--switch", "link"]);
    let paths: Vec<PathBuf> = (0..300)
        .step_by(7)
        .map(|i| e.dst().join(format!("d{:02}/f{i:04}", i % 10)))
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (paths, stop) = (paths.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut missing, mut torn, mut rounds) = (Vec::new(), Vec::new(), 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for p in &paths {
                    match std::fs::read(p) {
                        Ok(b) if b == vec![b'a'; 4096] || b == vec![b'b'; 4096] => {}
                        Ok(b) => torn.push(format!("{}: {} bytes", p.display(), b.len())),
                        Err(err) => missing.push(format!("{}: {err}", p.display())),
                    }
                }
                rounds += 1;
            }
            (missing, torn, rounds)
        })
    };
    for round in 0..6 {
        let c = if round % 2 == 0 { b'b' } else { b'a' };
        for i in 0..300 {
            e.src.file(format!("d{:02}/f{i:04}", i % 10), vec![c; 4096]);
        }
        e.sync(&[]);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (missing, torn, rounds) = watcher.join().unwrap();
    eprintln!("watcher: {rounds} rounds (portable layer: {})", portable());
    assert!(
        missing.is_empty(),
        "missing during link switches: {missing:?}"
    );
    assert!(torn.is_empty(), "torn during link switches: {torn:?}");
    e.assert_synced();
}

/// `prune` keeps a generation whose release a program still runs from, names the program,
/// and removes it with `--force` or once the program is gone.
#[test]
fn prune_defers_a_release_a_program_runs_from() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&["--switch", "link"]);
    let r1 = release(e.dst());
    let inside = home(&e).join(&r1).join("app");
    // A program working in the release (its cwd resolved through DST).
    let mut child = Command::new("sleep")
        .arg("60")
        .current_dir(e.dst().join("app"))
        .spawn()
        .unwrap();
    assert!(std::fs::read_link(format!("/proc/{}/cwd", child.id()))
        .unwrap()
        .starts_with(&inside));
    // An interpreter given a script by DST's path (as `node DST/app/main.js`), started while
    // the release was live: it may still load from it. One started after the switch may not.
    let by_path = |e: &Env| {
        Command::new("sh")
            .args(["-c", "sleep 60; :", "sh"])
            .arg(e.dst().join("app/data"))
            .current_dir(e.tmp.path())
            .spawn()
            .unwrap()
    };
    let mut before = by_path(&e);
    // Start times have a resolution of a clock tick, the window a slack of 0.1 s each way.
    std::thread::sleep(Duration::from_millis(400));
    release_tree(&e.src, "B");
    e.sync(&[]);
    std::thread::sleep(Duration::from_millis(400));
    let mut after = by_path(&e);
    std::thread::sleep(Duration::from_millis(100));
    let o = e.js([
        OsStr::new("prune"),
        OsStr::new("--keep"),
        OsStr::new("0"),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(err.contains(&format!("{} (sh)", before.id())), "{err}");
    assert!(!err.contains(&format!("{} (sh)", after.id())), "{err}");
    for c in [&mut before, &mut after] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    assert!(
        err.contains(&child.id().to_string()) && err.contains("prune --force"),
        "{err}"
    );
    assert!(inside.exists(), "a release a program runs from was pruned");
    let o = e.js([
        OsStr::new("prune"),
        OsStr::new("--keep"),
        OsStr::new("0"),
        OsStr::new("--force"),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 0);
    assert!(!inside.exists(), "--force kept the release");
    child.kill().unwrap();
    child.wait().unwrap();
    // The live release is never pruned.
    e.assert_synced();
    assert!(home(&e).join(release(e.dst())).is_dir());
}

/// A mount point below DST stays where it is: the switch goes around it by subtrees inside
/// the live release, and the link is not replaced.
#[test]
fn a_mount_below_a_linked_tree_is_switched_around() {
    if !is_root() {
        eprintln!("skipped: needs root for a mount");
        return;
    }
    let e = Env::new();
    release_tree(&e.src, "A");
    e.src.dir("mnt");
    e.sync(&["--switch", "link"]);
    let r1 = release(e.dst());
    release_tree(&e.src, "B");
    let script = format!(
        "set -e; mount --make-rprivate / ; mount -t tmpfs t {m}; echo kept > {m}/x; {bin} --state-dir {st} sync {s}/ {d}/; cat {m}/x; readlink {d}",
        m = e.dst().join("mnt").display(),
        bin = BIN,
        st = e.state().display(),
        s = e.src().display(),
        d = e.dst().display(),
    );
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("kept\n"), "the mount moved: {out}");
    assert!(
        out.trim_end().ends_with(&r1),
        "the link was replaced around a mount: {out}"
    );
    assert_eq!(
        std::fs::read_to_string(e.dst().join("app/data")).unwrap(),
        "release B\n"
    );
}

/// What cannot become a link is refused naming why, with nothing changed.
#[test]
fn a_tree_that_cannot_be_a_link_is_refused() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&[]);
    let before = listing(e.dst());
    let o = Command::new(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(["sync", "--switch", "link"])
        .arg(e.src())
        .arg(e.dst())
        .env("JAILSYNC_SWITCH", "entries")
        .output()
        .unwrap();
    expect_code(&o, 2);
    assert!(
        stderr(&o).contains("cannot be switched by symlink"),
        "{}",
        stderr(&o)
    );
    assert!(!e.dst().is_symlink());
    assert_eq!(listing(e.dst()), before);
    let _ = std::fs::set_permissions(e.dst(), std::fs::Permissions::from_mode(0o755));
}

/// The restart report of a tree switched by symlink: a program running the live release is
/// not reported (its release is in the home, as old ones are); once a switch leaves it on the
/// old release, it is.
#[test]
fn the_restart_report_tells_the_live_release_from_old_ones() {
    let Some(sleep) = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: no sleep binary to run from the tree");
        return;
    };
    let bin = std::fs::read(sleep).unwrap();
    let e = Env::new();
    e.src.file("bin/sleeper", &bin).mode("bin/sleeper", 0o755);
    e.sync(&["--switch", "link"]);
    let mut child = Command::new(e.dst().join("bin/sleeper"))
        .arg("30")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let pid = child.id().to_string();
    let procs = |e: &Env| {
        let o = e.js([
            OsStr::new("--json"),
            OsStr::new("procs"),
            e.dst().as_os_str(),
        ]);
        stdout(&o)
    };
    let before = procs(&e);
    let mut newer = bin.clone();
    newer.extend_from_slice(b"new release");
    e.src.file("bin/sleeper", &newer);
    e.sync(&[]);
    let after = procs(&e);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !before.contains(&pid),
        "the live release reported as old:\n{before}"
    );
    assert!(
        after.contains(&pid),
        "the old release's program not reported:\n{after}"
    );
}

/// Through the link, the live system's excluded entries stay: carried into each release.
#[test]
fn excluded_entries_go_with_each_release() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&["--switch", "link"]);
    // The live system writes a log the jail does not have.
    std::fs::create_dir_all(e.dst().join("var/log")).unwrap();
    std::fs::write(e.dst().join("var/log/app.log"), "log line\n").unwrap();
    release_tree(&e.src, "B");
    let before = release(e.dst());
    e.sync(&["--exclude", "var/"]);
    assert_ne!(release(e.dst()), before);
    let read = |p: &str| std::fs::read_to_string(e.dst().join(p)).unwrap();
    assert_eq!(
        read("var/log/app.log"),
        "log line\n",
        "an excluded entry was lost"
    );
    assert_eq!(read("app/data"), "release B\n");
    // And back on rollback: the live system's, not the generation's.
    std::fs::write(e.dst().join("var/log/app.log"), "log line\nmore\n").unwrap();
    expect_code(&e.js([OsStr::new("rollback"), e.dst().as_os_str()]), 0);
    assert_eq!(read("app/data"), "release A\n");
    assert_eq!(read("var/log/app.log"), "log line\nmore\n");
}

/// The portable layer converts by renames: a run killed after the first (DST's link moved
/// aside into the home, DST absent) is put back by the next run, which then converges.
#[test]
fn a_portable_conversion_killed_with_the_link_aside_is_recovered() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&["--switch", "link"]);
    let h = home(&e);
    // What the engine leaves there: a staged tree, its journal, the link renamed aside.
    let next = h.join("next");
    std::fs::create_dir(&next).unwrap();
    std::fs::write(next.join("staged"), b"s").unwrap();
    let ino = std::fs::metadata(&next).unwrap().ino();
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::write(
        h.join("switching"),
        format!(
            "from {}\nto {}\nino {ino}\nby tree\n",
            hex("next"),
            hex("gen-9")
        ),
    )
    .unwrap();
    std::fs::rename(e.dst(), h.join(".jailsync-tmp-4242-1125899906842624")).unwrap();
    assert!(std::fs::symlink_metadata(e.dst()).is_err());
    let o = Command::new(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(["sync", "--switch", "exchange"])
        .arg(e.src())
        .arg(e.dst())
        .env("JAILSYNC_FSX", "portable")
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert!(e.dst().is_dir() && !e.dst().is_symlink());
    e.assert_synced();
    let tmp: Vec<_> = std::fs::read_dir(&h)
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".jailsync-tmp-"))
        .collect();
    assert!(tmp.is_empty(), "left {tmp:?}");
}

/// A rollback by symlink killed at its switch is finished or undone by the next command: DST
/// is the release it left or the one it restores, never a mix, and the home keeps its names.
#[test]
fn a_killed_link_rollback_is_old_or_new_and_recovered() {
    let e = Env::new();
    release_tree(&e.src, "A");
    e.sync(&["--switch", "link"]);
    let a = listing(e.dst());
    release_tree(&e.src, "B");
    e.sync(&[]);
    let b = listing(e.dst());
    let journal = home(&e).join("switching");
    let mut killed = 0;
    for i in 0..10u64 {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(e.state())
            .arg("rollback")
            .arg(e.dst());
        let delay = Duration::from_micros(i * 30);
        let (_, k, _) = crate::faultkit::run_and_kill_after(c, || journal.exists(), delay);
        killed += usize::from(k);
        let now = listing(e.dst());
        assert!(
            now == a || now == b,
            "a killed rollback left a mix:\n{}",
            a.diff(&now)
        );
        // The next command finishes or undoes it; a sync then makes B live again.
        e.sync(&[]);
        assert_eq!(listing(e.dst()), b);
        for n in ["next", "swap", "switching"] {
            assert!(!home(&e).join(n).exists(), "{n} left in the home");
        }
        assert!(home(&e).join(release(e.dst())).is_dir());
    }
    eprintln!("killed {killed} of 10 rollbacks");
}
