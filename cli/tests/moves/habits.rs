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

/// A jail's `usr/pkg` and a live `usr` holding `pkg` (synced once, so with its home
/// `usr/.jailsync-pkg`) beside other trees.
fn jail_and_live() -> (tempfile::TempDir, PathBuf) {
    let (t, p) = tmp("jailsync-habits-");
    let jail = Tree::new(p.join("jail"));
    jail.file("usr/pkg/bin/tool", "v2\n")
        .file("usr/pkg/lib/libtool.so", "2\n");
    let live = Tree::new(p.join("live"));
    live.file("usr/pkg/bin/tool", "v1\n")
        .file("usr/pkg/lib/libtool.so", "1\n");
    for k in 0..300 {
        live.file(format!("usr/bin/prog{k}"), format!("{k}\n"));
    }
    live.file("usr/lib/libc.so", "c\n");
    let state = p.join("state");
    let (s, d) = (p.join("jail/usr/pkg"), p.join("live/usr/pkg"));
    expect_code(&js(&state, &[os("sync"), s.as_os_str(), d.as_os_str()]), 0);
    fs::write(p.join("jail/usr/pkg/bin/tool"), "v3\n").unwrap();
    (t, p)
}

/// Item 24: `sync JAIL/usr/pkg LIVE/usr`, rsync's "copy pkg into usr", made LIVE/usr a copy of
/// pkg: every other entry of usr deleted, and pkg's rollback home with them. Refused, naming
/// both commands the user may have meant; each of those then does what it says.
#[test]
fn rsync_into_habit_is_refused_naming_both_meanings() {
    let (_t, p) = jail_and_live();
    let state = p.join("state");
    let src = p.join("jail/usr/pkg");
    let usr = p.join("live/usr");
    let before = listing(&p.join("live"));
    let o = js(&state, &[os("sync"), src.as_os_str(), usr.as_os_str()]);
    expect_code(&o, 2);
    let err = stderr(&o);
    let (s, u) = (src.display(), usr.display());
    assert!(err.contains(&format!("jailsync sync {s}/ {u}")), "{err}");
    assert!(err.contains(&format!("jailsync sync {s} {u}/pkg")), "{err}");
    assert!(
        before == listing(&p.join("live")),
        "the refused run changed the live tree"
    );

    // What rsync makes of the same words (the oracle for "into"): usr keeps its entries and
    // gains pkg's new content at usr/pkg.
    if have("rsync") {
        let (_t2, q) = tmp("jailsync-habits-rsync-");
        let o = Command::new("cp")
            .arg("-a")
            .arg(p.join("live"))
            .arg(q.join("live"))
            .output()
            .unwrap();
        assert!(o.status.success());
        // -c: the jail's file was rewritten within the second, at the same size.
        let o = Command::new("rsync")
            .arg("-ac")
            .arg(&src)
            .arg(q.join("live/usr"))
            .output()
            .unwrap();
        assert!(o.status.success());
        assert!(q.join("live/usr/bin/prog0").exists());
        assert_eq!(
            fs::read_to_string(q.join("live/usr/pkg/bin/tool")).unwrap(),
            "v3\n"
        );
    }

    // The "into" meaning, spelled out: usr/pkg identical to the jail's, usr's other trees kept.
    let into = usr.join("pkg");
    let o = js(&state, &[os("sync"), src.as_os_str(), into.as_os_str()]);
    expect_code(&o, 0);
    assert_same(&src, &into);
    assert!(usr.join("bin/prog0").exists() && usr.join("lib/libc.so").exists());
    // `SRC/` is the identical-tree meaning: it reaches the mass-delete guard, below.
    let slash = PathBuf::from(format!("{}/", src.display()));
    let o = js(&state, &[os("sync"), slash.as_os_str(), usr.as_os_str()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("--max-delete"), "{}", stderr(&o));
    assert!(usr.join("bin/prog0").exists());
}

/// Item 24: a run that would delete most of DST (the wrong pair) is refused by default, exit
/// 2, nothing changed, naming `--max-delete` and `--force`; `-n` shows the plan with a
/// warning; either flag lets it run.
#[test]
fn deleting_most_of_dst_is_refused_by_default() {
    let (_t, p) = tmp("jailsync-habits-");
    let state = p.join("state");
    let src = Tree::new(p.join("S"));
    src.file("keep/a", "a\n");
    let dst = Tree::new(p.join("D"));
    dst.file("keep/a", "a\n");
    for k in 0..300 {
        dst.file(format!("old/f{k}"), "x\n");
    }
    let (s, d) = (p.join("S"), p.join("D"));
    let before = listing(&d);
    let o = js(&state, &[os("sync"), s.as_os_str(), d.as_os_str()]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("would delete 301 of its 303 entries")
            && err.contains("--max-delete 301")
            && err.contains("--force"),
        "{err}"
    );
    assert!(before == listing(&d), "the refused run changed DST");

    let o = js(
        &state,
        &[os("sync"), os("-n"), os("-i"), s.as_os_str(), d.as_os_str()],
    );
    expect_code(&o, 0);
    assert!(stdout(&o).contains("*deleting"), "{}", stdout(&o));
    assert!(stderr(&o).contains("would be refused"), "{}", stderr(&o));
    assert!(before == listing(&d));

    // An explicit limit replaces the default one.
    let o = js(
        &state,
        &[
            os("sync"),
            os("--max-delete"),
            os("40"),
            s.as_os_str(),
            d.as_os_str(),
        ],
    );
    expect_code(&o, 2);
    let o = js(
        &state,
        &[
            os("sync"),
            os("--max-delete"),
            os("301"),
            s.as_os_str(),
            d.as_os_str(),
        ],
    );
    expect_code(&o, 0);
    assert_same(&s, &d);

    // --force, on a fresh copy of the old tree.
    fs::remove_dir_all(&d).unwrap();
    let dst = Tree::new(&d);
    dst.file("keep/a", "a\n");
    for k in 0..300 {
        dst.file(format!("old/f{k}"), "x\n");
    }
    let o = js(
        &state,
        &[os("sync"), os("--force"), s.as_os_str(), d.as_os_str()],
    );
    expect_code(&o, 0);
    assert_same(&s, &d);
}

/// Item 24: `upgrade LIVE --root JAIL` (swapped) was accepted without a word although the
/// target carries the `.jail` marker: refused, naming the swap; JAIL untouched.
#[test]
fn upgrade_with_a_jail_as_root_is_refused_naming_the_swap() {
    let (_t, p) = tmp("jailsync-habits-");
    let state = p.join("state");
    let jail = Tree::new(p.join("jail"));
    jail.file(".jail", "PKG-JAIL\n")
        .file("usr/pkg/bin/tool", "v2\n")
        .file("var/db/pkg/tool-2/+CONTENTS", "tool-2\n");
    let live = Tree::new(p.join("live"));
    live.file("usr/pkg/bin/tool", "v1\n")
        .file("var/db/pkg/tool-1/+CONTENTS", "tool-1\n");
    let (j, l) = (p.join("jail"), p.join("live"));
    let before = listing(&j);
    let o = js(
        &state,
        &[os("upgrade"), l.as_os_str(), os("--root"), j.as_os_str()],
    );
    expect_code(&o, 2);
    let err = stderr(&o);
    let want = format!("jailsync upgrade {} --root {}", j.display(), l.display());
    assert!(err.contains(".jail") && err.contains(&want), "{err}");
    assert!(
        before == listing(&j),
        "the refused upgrade changed the jail"
    );

    // The right way round works; --force takes a marked root when that is really meant.
    let o = js(
        &state,
        &[os("upgrade"), j.as_os_str(), os("--root"), l.as_os_str()],
    );
    expect_code(&o, 0);
    assert_same(&j.join("usr/pkg"), &l.join("usr/pkg"));
    let o = js(
        &state,
        &[
            os("upgrade"),
            os("--force"),
            l.as_os_str(),
            os("--root"),
            j.as_os_str(),
        ],
    );
    expect_code(&o, 0);
}
