//! The CLI contract: exit codes, `--dry-run`, `--json`, `--itemize`, quiet/summary output.

use std::ffi::OsStr;

use crate::common::*;
use serde_json::Value;

const T: i64 = 1_650_000_000;

fn sync_args<'a>(e: &'a Env, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    let mut a = vec![OsStr::new("sync")];
    a.extend(extra.iter().map(OsStr::new));
    a.push(e.src().as_os_str());
    a.push(e.dst().as_os_str());
    a
}

/// An old destination and a new source with one change of every kind.
fn changes(e: &Env) {
    e.src
        .file("new", b"new file")
        .dir("newdir")
        .symlink("newlink", "new")
        .file("content", b"new content, longer")
        .mtime("content", T, 1)
        .file("meta", b"same")
        .mtime("meta", T, 2)
        .file("mode", b"same")
        .mode("mode", 0o600)
        .file("f2d/x", b"x");
    e.dst
        .file("content", b"old content")
        .file("meta", b"same")
        .file("mode", b"same")
        .file("gone", b"gone")
        .file("f2d", b"file");
    e.src.mtime("mode", T, 3);
    e.dst.mtime("mode", T, 3);
}

#[test]
fn exit_0_on_success_and_summary_on_stderr() {
    let e = Env::new();
    e.src.file("a", b"a");
    let o = e.js(sync_args(&e, &[]));
    expect_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "",
        "sync without -i/--json prints nothing on stdout"
    );
    let err = stderr(&o);
    assert!(err.contains("1 created"), "human summary: {err}");
    assert!(err.contains("switch window"), "human summary: {err}");
    // -q: nothing at all.
    e.src.file("b", b"b");
    let o = e.js(sync_args(&e, &["-q"]));
    expect_code(&o, 0);
    assert_eq!((stdout(&o), stderr(&o)), (String::new(), String::new()));
}

#[test]
fn state_dir_from_environment() {
    let e = Env::new();
    e.src.file("a", b"a");
    let state = e.tmp.path().join("env-state");
    let o = std::process::Command::new(BIN)
        .env("JAILSYNC_STATE_DIR", &state)
        .arg("sync")
        .arg(e.src())
        .arg(e.dst())
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert!(state.is_dir(), "JAILSYNC_STATE_DIR not used");
    assert_same(e.src(), e.dst());
}

#[test]
fn exit_2_on_usage_errors() {
    let e = Env::new().with_dst();
    for args in [
        vec!["sync"],
        vec!["sync", "only-one"],
        vec!["sync", "--no-such-flag", "a", "b"],
        vec!["sync", "--threads", "many", "a", "b"],
        vec!["frobnicate"],
        vec!["verify", "x"],
    ] {
        let o = e.js(&args);
        expect_code(&o, 2);
        assert!(!stderr(&o).is_empty(), "{args:?}: no message");
    }
    // --help and --version are not errors.
    expect_code(&run(["--help"]), 0);
    expect_code(&run(["--version"]), 0);
}

#[test]
fn exit_2_on_bad_input() {
    let e = Env::new().with_dst();
    e.src.file("a", b"a").dir("sub");
    e.dst.file("keep", b"k");
    let before = listing(e.dst());
    let missing = e.tmp.path().join("missing");
    let inside = e.src.path("sub/dst");
    let link = e.tmp.path().join("link-to-dst");
    std::os::unix::fs::symlink(e.dst(), &link).unwrap();
    let file = e.src.path("a");
    let sub = e.src.path("sub");
    let cases: Vec<(&str, Vec<&OsStr>)> = vec![
        (
            "SRC missing",
            vec![missing.as_os_str(), e.dst().as_os_str()],
        ),
        ("SRC == DST", vec![e.src().as_os_str(), e.src().as_os_str()]),
        (
            "DST inside SRC",
            vec![e.src().as_os_str(), inside.as_os_str()],
        ),
        ("SRC inside DST", vec![sub.as_os_str(), e.src().as_os_str()]),
        ("DST a symlink", vec![e.src().as_os_str(), link.as_os_str()]),
        ("SRC a file", vec![file.as_os_str(), e.dst().as_os_str()]),
        ("DST a file", vec![e.src().as_os_str(), file.as_os_str()]),
    ];
    for (what, paths) in cases {
        let mut a = vec![OsStr::new("sync")];
        a.extend(paths);
        let o = e.js(&a);
        expect_code(&o, 2);
        let err = stderr(&o);
        assert!(err.contains("error"), "{what}: {err}");
        assert!(
            err.contains(e.tmp.path().to_str().unwrap()),
            "{what}: error names no path: {err}"
        );
    }
    assert!(!inside.exists(), "DST inside SRC was created");
    assert_eq!(listing(e.dst()), before, "a refused sync changed DST");
    // A bad glob, a state dir inside a synced tree.
    expect_code(&e.js(sync_args(&e, &["--exclude", "a[b"])), 2);
    let o = run([
        OsStr::new("--state-dir"),
        e.dst.path("state").as_os_str(),
        OsStr::new("sync"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 2);
    assert_eq!(listing(e.dst()), before, "a refused sync changed DST");
    // verify: missing DST, garbage manifest.
    expect_code(
        &e.js([
            OsStr::new("verify"),
            e.src().as_os_str(),
            missing.as_os_str(),
        ]),
        2,
    );
    let junk = e.tmp.path().join("junk");
    std::fs::write(&junk, b"this is not a manifest\n").unwrap();
    expect_code(
        &e.js([OsStr::new("verify"), junk.as_os_str(), e.dst().as_os_str()]),
        2,
    );
    // --follow-dst syncs through the symlink.
    let mut a = vec![OsStr::new("sync"), OsStr::new("--follow-dst")];
    a.extend([e.src().as_os_str(), link.as_os_str()]);
    expect_code(&e.js(&a), 0);
    assert_same(e.src(), e.dst());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn verify_exit_1_with_itemized_differences() {
    let e = Env::new();
    e.src.file("a", b"a").file("b", b"b");
    e.sync(&[]);
    e.dst.file("a", b"A");
    let o = e.js([
        OsStr::new("verify"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 1);
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
    assert!(stdout(&o).starts_with(">fc"), "{}", stdout(&o));
    // --json: the change, then a summary saying so.
    let mut a = vec![OsStr::new("--json"), OsStr::new("verify")];
    a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
    let o = e.js(&a);
    expect_code(&o, 1);
    let lines = json_lines(&stdout(&o));
    assert_eq!(lines.last().unwrap()["type"], "summary");
    assert_eq!(lines.last().unwrap()["match"], false);
}

#[test]
fn dry_run_changes_nothing() {
    let e = Env::new().with_dst();
    changes(&e);
    let (src_before, dst_before) = (listing(e.src()), listing(e.dst()));
    let out = e.sync(&["-n", "-i"]);
    assert!(!out.is_empty());
    e.sync(&["--dry-run"]);
    let o = e.js(sync_args(&e, &["-n", "--json"]));
    expect_code(&o, 0);
    assert_eq!(json_lines(&stdout(&o)).last().unwrap()["dry_run"], true);
    assert_eq!(listing(e.dst()), dst_before, "dry run changed DST");
    assert_eq!(listing(e.src()), src_before, "dry run changed SRC");
    // The dry run announced exactly what the real run does.
    let real = e.sync(&["-i"]);
    assert_eq!(out, real);
    e.assert_synced();

    // A missing DST is not created by a dry run.
    let e = Env::new();
    e.src.file("a", b"a");
    let out = e.sync(&["-n", "-i"]);
    assert!(out.contains(">f+++++++++ a"), "{out}");
    assert!(!e.dst().exists(), "dry run created DST");
}

/// `sync --json`, expecting exit `code`: the output and its parsed lines.
fn sync_json(e: &Env, code: i32) -> (std::process::Output, Vec<Value>) {
    let o = e.js(sync_args(e, &["--json"]));
    expect_code(&o, code);
    let lines = json_lines(&stdout(&o));
    (o, lines)
}

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|err| panic!("not JSON: {l:?}: {err}")))
        .collect()
}

#[test]
fn json_lines_parse_and_end_with_a_summary() {
    let e = Env::new().with_dst();
    changes(&e);
    e.src.file(b"bad-\xff-name".as_slice(), b"x");
    let (o, lines) = sync_json(&e, 0);
    let (last, rest) = lines.split_last().unwrap();
    assert_eq!(last["type"], "summary", "{last}");
    // Besides changes: one line per switched tree (how, and where the old tree went).
    let changes: Vec<&Value> = rest.iter().filter(|l| l["type"] != "switch").collect();
    assert_eq!(rest.len() - changes.len(), 1, "one switch line");
    for k in [
        "bytes_written",
        "elapsed_ms",
        "switch_window_ms",
        "errors",
        "changes",
        "created",
        "deleted",
    ] {
        assert!(last[k].is_number(), "summary lacks {k}: {last}");
    }
    assert_eq!(last["errors"], 0);
    assert_eq!(last["changes"].as_u64().unwrap() as usize, changes.len());
    assert!(last["bytes_written"].as_u64().unwrap() > 0);
    for c in &changes {
        assert_eq!(c["type"], "change", "{c}");
        assert_eq!(c["item"].as_str().unwrap().len(), 11, "{c}");
        assert!(
            c["path"].is_string() || c["path"]["bytes"].is_string(),
            "{c}"
        );
    }
    // The non-UTF-8 name comes as base64 bytes.
    let bad = changes
        .iter()
        .find(|c| c["path"]["bytes"].is_string())
        .expect("a non-UTF-8 path");
    assert_eq!(bad["path"]["bytes"], "YmFkLf8tbmFtZQ==");
    // Nothing on stderr in JSON mode but errors.
    assert_eq!(stderr(&o), "");
    // In sync: only the summary, with zero changes (also with -i and -v: JSON wins).
    let o = e.js(sync_args(&e, &["--json", "-i", "-v"]));
    let lines = json_lines(&stdout(&o));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["changes"], 0);
}

#[test]
fn itemize_format() {
    let e = Env::new().with_dst();
    changes(&e);
    let out = e.sync(&["-i"]);
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        ">f+++++++++ new",
        "cd+++++++++ newdir/",
        "cL+++++++++ newlink -> new",
        ">fcst...... content",
        ".f..t...... meta",
        ".f...p..... mode",
        "*deleting   gone",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in:\n{out}");
    }
    // A type change: the new kind, all plus signs.
    assert!(lines.contains(&"cd+++++++++ f2d/"), "{out}");
    assert!(lines.contains(&">f+++++++++ f2d/x"), "{out}");
    // Every line is an 11-character code, a space, a path.
    for l in &lines {
        assert!(l.len() > 12 && l.as_bytes()[11] == b' ', "{l:?}");
    }
    // Same size, other bytes, other mtime: rsync's ">fc.t......".
    e.src.file("meta", b"SAME").mtime("meta", T, 9);
    let out = e.sync(&["-i"]);
    assert_eq!(out, ">fc.t...... meta\n");
    // Odd names are printed escaped on one line each.
    e.src.file(b"new\nline".as_slice(), b"x");
    let out = e.sync(&["-i"]);
    let named: Vec<&str> = out.lines().filter(|l| l.contains("line")).collect();
    assert_eq!(named, [">f+++++++++ new\\nline"], "{out:?}");
}

/// Clears the immutable flag again, so the temp dir can be removed even if the test fails.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(p: std::path::PathBuf) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&p)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Immutable(p))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// An immutable or append-only entry cannot be renamed or replaced: one the release changes
/// (or changes below) refuses the whole run, naming it and the fix, with nothing changed (a
/// release applied around it would be torn).
#[test]
fn immutable_entries_the_release_changes_refuse_the_run_and_change_nothing() {
    require_root!();
    let e = Env::new().with_dst();
    e.src.file("locked/f", b"new").file("ok", b"fine");
    e.dst.file("locked/f", b"old");
    let Some(_guard) = Immutable::set(e.dst.path("locked")) else {
        eprintln!("skipped: chattr +i not supported here");
        return;
    };
    let before = listing(e.dst());
    let o = e.js(sync_args(&e, &[]));
    expect_code(&o, 2);
    assert!(
        stderr(&o).contains("/locked") && stderr(&o).contains("chattr -i"),
        "{}",
        stderr(&o)
    );
    assert_eq!(listing(e.dst()), before, "something was changed");
    drop(_guard);

    // An immutable file the release replaces, and an immutable directory it deletes.
    let e = Env::new().with_dst();
    e.src.file("f", b"new").file("g", b"g").mode("g", 0o600);
    e.dst
        .file("f", b"old")
        .file("g", b"g")
        .file("gone", b"1")
        .file("stuck/f", b"s");
    let _f = Immutable::set(e.dst.path("f")).expect("chattr worked above");
    let o = e.js(sync_args(&e, &["--no-rollback"]));
    expect_code(&o, 2);
    assert!(stderr(&o).contains("/f"), "{}", stderr(&o));
    drop(_f);
    let _stuck = Immutable::set(e.dst.path("stuck")).expect("chattr worked above");
    let before = listing(e.dst());
    let o = e.js(sync_args(&e, &[]));
    expect_code(&o, 2);
    assert!(stderr(&o).contains("/stuck"), "{}", stderr(&o));
    assert_eq!(listing(e.dst()), before, "something was changed");
}

/// An immutable entry the release leaves as it is stays where it is: the switch goes around it
/// (its directory is left in place, every other entry exchanged), a file of it found while
/// staging is copied into the old tree's place instead of linked, so the generation can be
/// pruned; rollback goes around it the same way.
#[test]
fn immutable_entries_the_release_leaves_alone_are_switched_around() {
    require_root!();
    let e = Env::new().with_dst();
    e.src
        .file("lib/frozen", b"same")
        .file("lib/x", b"new")
        .file("pinned/p", b"p")
        .file("bin/tool", b"new");
    e.dst
        .file("lib/frozen", b"same")
        .file("lib/x", b"old")
        .file("pinned/p", b"p")
        .file("bin/tool", b"old");
    // What the release leaves alone is the same on both sides, times included.
    for t in [&e.src, &e.dst] {
        t.mtime("lib/frozen", T, 0).mtime("pinned/p", T, 0);
        t.settle_dirs(T);
    }
    let Some(_f) = Immutable::set(e.dst.path("lib/frozen")) else {
        eprintln!("skipped: chattr +i not supported here");
        return;
    };
    let _p = Immutable::set(e.dst.path("pinned")).expect("chattr worked above");
    let (frozen, pinned) = (ino(e.dst(), "lib/frozen"), ino(e.dst(), "pinned"));
    let o = e.js(sync_args(&e, &["-v"]));
    expect_code(&o, 0);
    assert!(stderr(&o).contains("subtree"), "{}", stderr(&o));
    e.assert_synced();
    assert_eq!(ino(e.dst(), "lib/frozen"), frozen, "the pinned file moved");
    assert_eq!(ino(e.dst(), "pinned"), pinned, "the pinned directory moved");
    let o = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    assert_eq!(std::fs::read(e.dst.path("lib/x")).unwrap(), b"old");
    assert_eq!(std::fs::read(e.dst.path("bin/tool")).unwrap(), b"old");
    assert_eq!(ino(e.dst(), "lib/frozen"), frozen);
    let o = e.js([
        OsStr::new("prune"),
        OsStr::new("--keep"),
        OsStr::new("0"),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 0);
}

#[test]
fn relative_paths_work_from_the_current_directory() {
    let e = Env::new();
    e.src.file("a/b", b"b");
    let o = std::process::Command::new(BIN)
        .current_dir(e.tmp.path())
        .args(["--state-dir", "state", "sync", "src", "dst/"])
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert_same(e.src(), e.dst());
    let o = std::process::Command::new(BIN)
        .current_dir(e.tmp.path().join("src"))
        .args(["--state-dir", "../state", "verify", ".", "../dst"])
        .output()
        .unwrap();
    expect_code(&o, 0);
}

#[test]
fn options_that_must_not_change_the_result() {
    for opts in [
        &["--fsync"][..],
        &["--threads", "1"],
        &["--threads", "16"],
        &["-c"],
        &["-v"],
        &["-q"],
    ] {
        let e = Env::new().with_dst();
        changes(&e);
        e.src
            .file("h1", b"h")
            .hardlink("h2", "h1")
            .symlink("l", "h1");
        e.sync(opts);
        e.assert_synced();
    }
}

#[test]
fn verify_and_manifest_honour_excludes() {
    let e = Env::new();
    e.src.file("a", b"a").file("cache/x", b"x");
    e.sync(&[]);
    e.dst.file("cache/x", b"changed").file("cache/y", b"new");
    let v = |extra: &[&str]| {
        let mut a = vec![OsStr::new("verify")];
        a.extend(extra.iter().map(OsStr::new));
        a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
        e.js(&a)
    };
    expect_code(&v(&[]), 1);
    expect_code(&v(&["--exclude", "cache"]), 0);
    let m = e.tmp.path().join("m");
    let o = e.js([
        OsStr::new("manifest"),
        e.src().as_os_str(),
        OsStr::new("--exclude"),
        OsStr::new("cache"),
        OsStr::new("-o"),
        m.as_os_str(),
    ]);
    expect_code(&o, 0);
    let mut a = vec![
        OsStr::new("verify"),
        OsStr::new("--exclude"),
        OsStr::new("cache"),
    ];
    a.extend([m.as_os_str(), e.dst().as_os_str()]);
    expect_code(&e.js(&a), 0);
    // Without the exclusion the extra entries under cache/ are differences.
    expect_code(
        &e.js([OsStr::new("verify"), m.as_os_str(), e.dst().as_os_str()]),
        1,
    );
}

/// The summary counts what was done: a delete refused by the filesystem is not counted.
/// Names that start like our temporary names, even in their exact shape, are synced like any
/// other: only names a run recorded before making them are its own (issue 10, item 6).
#[test]
fn temporary_name_prefix_is_not_swallowed() {
    let e = Env::new().with_dst();
    e.src
        .file(".jailsync-tmp-notes", b"a")
        .file(".jailsync-tmp-1-2", b"b")
        .file("x", b"x");
    e.sync(&[]);
    e.assert_synced();
    assert_eq!(
        std::fs::read(e.dst.path(".jailsync-tmp-1-2")).unwrap(),
        b"b"
    );
}
