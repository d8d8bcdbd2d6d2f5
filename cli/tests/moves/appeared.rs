//! The admin's entries are looked at twice (invariant 11), new ones included: an entry made
//! anywhere in the live tree while the run staged that matches an exclude rule or a
//! protection glob is not in the next tree, so the switch would leave it in the old one (and
//! `--no-rollback` would delete it). Such a run switches nothing; the next run keeps it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const JS: &str = env!("CARGO_BIN_EXE_jailsync");

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("jailsync-appeared-")
        .tempdir()
        .unwrap()
}

/// `jailsync ARGS` under strace, every `linkat` slowed by `us` microseconds, so staging lasts
/// long enough for the test to write into the live tree before the switch.
fn slowed(state: &Path, us: u32, args: &[&str]) -> Child {
    Command::new("strace")
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=linkat"])
        .arg("-e")
        .arg(format!("inject=linkat:delay_enter={us}"))
        .arg(JS)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("JAILSYNC_SWITCH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `p` exists (the run is staging).
fn wait_for(p: &Path) {
    let end = Instant::now() + Duration::from_secs(20);
    while p.symlink_metadata().is_err() {
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A jail tree and a live tree with 40 unchanged files (slowed links) and one changed.
fn trees(t: &Path, top: &str) -> (PathBuf, PathBuf) {
    let (s, d) = (t.join("S"), t.join("D"));
    for root in [&s, &d] {
        let tree = Tree::new(root.join(top));
        for i in 0..40 {
            tree.file(format!("bin/f{i:02}"), format!("same {i}\n"));
        }
        tree.dir("var");
    }
    fs::write(s.join(top).join("bin/tool"), "new\n").unwrap();
    fs::write(d.join(top).join("bin/tool"), "old\n").unwrap();
    (s, d)
}

fn have_strace() -> bool {
    if have("strace") {
        return true;
    }
    eprintln!("skipped: strace is not installed (the CI installs it)");
    false
}

/// Issue 19 item 4: `--exclude '*.log'`, and `var/app.log` written while staging into a
/// directory that held no excluded entry at the scan. It used to be left in the old tree
/// (and deleted with `--no-rollback`).
#[test]
fn an_excluded_file_made_while_staging_where_none_was_is_kept() {
    if !is_root() || !have_strace() {
        eprintln!("skipped: needs root and strace");
        return;
    }
    let tmp = tempdir();
    let t = tmp.path().canonicalize().unwrap();
    let (s, d) = trees(&t, "");
    let state = t.join("state");
    let args = [
        "sync",
        "--no-rollback",
        "--exclude",
        "*.log",
        s.to_str().unwrap(),
        d.to_str().unwrap(),
    ];
    let child = slowed(&state, 60_000, &args);
    wait_for(&t.join(".jailsync-D/next/bin"));
    fs::write(d.join("var/app.log"), "the service's log\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("var/app.log") && err.contains("nothing was switched"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(d.join("bin/tool")).unwrap(), "old\n");
    assert_eq!(
        fs::read_to_string(d.join("var/app.log")).unwrap(),
        "the service's log\n",
        "the excluded file was lost"
    );
    // The next run decides on it: kept, and the tree switched.
    let o = run([
        "--state-dir",
        state.to_str().unwrap(),
        "sync",
        "--no-rollback",
        "--exclude",
        "*.log",
        s.to_str().unwrap(),
        d.to_str().unwrap(),
    ]);
    expect_code(&o, 0);
    assert_eq!(fs::read_to_string(d.join("bin/tool")).unwrap(), "new\n");
    assert_eq!(
        fs::read_to_string(d.join("var/app.log")).unwrap(),
        "the service's log\n"
    );
}

/// Issue 19 item 12: a new file matching a `--protect` glob, made while the upgrade staged, is
/// the admin's: it used to be switched away with the old tree.
#[test]
fn a_protected_file_made_while_staging_is_kept() {
    if !is_root() || !have_strace() {
        eprintln!("skipped: needs root and strace");
        return;
    }
    let tmp = tempdir();
    let t = tmp.path().canonicalize().unwrap();
    let (jail, root) = trees(&t, "opt/app");
    let state = t.join("state");
    let args = [
        "upgrade",
        jail.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--tree",
        "opt/app",
        "--protect",
        "opt/app/var/*.conf",
    ];
    let child = slowed(&state, 60_000, &args);
    wait_for(&root.join("opt/.jailsync-app/next/bin"));
    fs::write(root.join("opt/app/var/site.conf"), "admin's\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("var/site.conf"), "{err}");
    assert_eq!(
        fs::read_to_string(root.join("opt/app/var/site.conf")).unwrap(),
        "admin's\n"
    );
    assert_eq!(
        fs::read_to_string(root.join("opt/app/bin/tool")).unwrap(),
        "old\n",
        "nothing is switched"
    );
}
