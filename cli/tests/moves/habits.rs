//! Habits a new user brings from rsync (items 24 and 25): `sync JAIL/usr/pkg ROOT/usr` meant as
//! "copy pkg into usr", a run that would delete most of its destination, JAIL and `--root`
//! swapped, and a run that writes in DST's parent (whose mtime rsync never moves).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// `jailsync --state-dir STATE ARGS...`, never forced to a lesser switch method.
fn js(state: &Path, args: &[&OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_jailsync"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("JAILSYNC_SWITCH")
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap()
}

fn tmp(prefix: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let p = t.path().canonicalize().unwrap();
    (t, p)
}

/// A directory's mtime to the nanosecond.
fn mtime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

/// Dates a directory in the past, so any write in it shows in its mtime.
fn date_back(p: &Path) {
    let o = Command::new("touch")
        .args(["-h", "-d", "2020-01-02 03:04:05.123456789"])
        .arg(p)
        .output()
        .unwrap();
    assert!(o.status.success());
}

fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `S` (the jail's tree) and `P/dst`, an exact copy of it (`cp -a`), `P` dated back.
fn identical_pair() -> (tempfile::TempDir, PathBuf) {
    let (t, p) = tmp("jailsync-habits-");
    let s = Tree::new(p.join("S"));
    s.file("bin/tool", "v1\n")
        .file("lib/libx.so", "x\n")
        .dir("share/doc");
    fs::create_dir(p.join("P")).unwrap();
    let o = Command::new("cp")
        .arg("-a")
        .arg(p.join("S"))
        .arg(p.join("P/dst"))
        .output()
        .unwrap();
    assert!(o.status.success());
    date_back(&p.join("P"));
    (t, p)
}

/// Item 25: `sync --no-rollback` with nothing to do made and removed `P/.jailsync-dst`, so
/// P's mtime moved on every run; `rsync -a S/ P/dst/` leaves it, and so must we.
#[test]
fn noop_no_rollback_leaves_the_parent_as_rsync_does() {
    let (_t, p) = identical_pair();
    let parent = p.join("P");
    let before = mtime(&parent);
    let (s, d) = (p.join("S"), p.join("P/dst"));
    let o = js(
        &p.join("state"),
        &[
            os("sync"),
            os("--no-rollback"),
            s.as_os_str(),
            d.as_os_str(),
        ],
    );
    expect_code(&o, 0);
    assert_eq!(
        mtime(&parent),
        before,
        "the no-op moved DST's parent's mtime"
    );
    assert_eq!(names(&parent), ["dst"]);
    assert_same(&s, &d);
    if have("rsync") {
        // The oracle: rsync's own no-op leaves the parent as it was too.
        let o = Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", s.display()))
            .arg(format!("{}/", d.display()))
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_eq!(mtime(&parent), before, "rsync moved it (oracle broken)");
    }
}

/// Item 25: a first run with nothing to do made DST's home (and its rollback state) although
/// nothing was switched: a no-op writes nothing in DST's parent.
#[test]
fn noop_first_run_makes_no_home() {
    let (_t, p) = identical_pair();
    let parent = p.join("P");
    let before = mtime(&parent);
    let (s, d) = (p.join("S"), p.join("P/dst"));
    let o = js(
        &p.join("state"),
        &[os("sync"), s.as_os_str(), d.as_os_str()],
    );
    expect_code(&o, 0);
    assert_eq!(names(&parent), ["dst"], "a home was made for nothing");
    assert_eq!(mtime(&parent), before);
}

/// Item 25: a switch renames in DST's parent (the home made, the exchange, the home removed
/// with `--no-rollback`); the parent's mtime is put back each time, as rsync never moves it.
/// A rollback, the same exchange back, puts it back too.
#[test]
fn switch_and_rollback_put_the_parent_mtime_back() {
    let (_t, p) = identical_pair();
    let parent = p.join("P");
    let before = mtime(&parent);
    let (s, d, state) = (p.join("S"), p.join("P/dst"), p.join("state"));
    fs::write(s.join("bin/tool"), "v2\n").unwrap();
    let o = js(
        &state,
        &[
            os("sync"),
            os("--no-rollback"),
            s.as_os_str(),
            d.as_os_str(),
        ],
    );
    expect_code(&o, 0);
    assert_same(&s, &d);
    assert_eq!(names(&parent), ["dst"]);
    assert_eq!(mtime(&parent), before, "--no-rollback switch");

    fs::write(s.join("bin/tool"), "v3\n").unwrap();
    expect_code(&js(&state, &[os("sync"), s.as_os_str(), d.as_os_str()]), 0);
    assert_same(&s, &d);
    assert_eq!(names(&parent), [".jailsync-dst", "dst"]);
    assert_eq!(mtime(&parent), before, "switch keeping a generation");

    expect_code(&js(&state, &[os("rollback"), d.as_os_str()]), 0);
    assert_eq!(fs::read_to_string(d.join("bin/tool")).unwrap(), "v2\n");
    assert_eq!(mtime(&parent), before, "rollback");
}
