//! Excluded entries are the live system's, before and after a rollback (issue 19, item 3):
//! a switched rollback carries the live tree's current excluded entries into the generation it
//! switches back, as a sync carries them into the next tree. Every test runs the real binary
//! on real trees; the switch by subtrees is forced through `JAILSYNC_SWITCH` on
//! each command (never the test process's environment, which the tests share).

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{expect_code, listing, stderr, stdout, Env, Listing, BIN};

/// A source and destination pair synced with `excludes`, by `method` (None: the default).
struct Case {
    e: Env,
    method: Option<&'static str>,
    excludes: Vec<&'static str>,
}

impl Case {
    fn new(method: Option<&'static str>, excludes: &[&'static str]) -> Case {
        Case {
            e: Env::new().with_dst(),
            method,
            excludes: excludes.to_vec(),
        }
    }

    fn dst(&self) -> &Path {
        self.e.dst()
    }

    fn js(&self, args: &[&OsStr]) -> Output {
        let mut c = Command::new(BIN);
        c.env_remove("JAILSYNC_STATE_DIR")
            .arg("--state-dir")
            .arg(self.e.state())
            .args(args);
        if let Some(m) = self.method {
            c.env("JAILSYNC_SWITCH", m);
        }
        c.output().expect("run jailsync")
    }

    /// `sync --exclude P... SRC DST`, exit 0.
    #[track_caller]
    fn sync(&self) {
        let mut args: Vec<&OsStr> = vec![OsStr::new("sync")];
        for x in &self.excludes {
            args.extend([OsStr::new("--exclude"), OsStr::new(x)]);
        }
        args.extend([self.e.src().as_os_str(), self.dst().as_os_str()]);
        let o = self.js(&args);
        expect_code(&o, 0);
    }

    /// `rollback [EXTRA...] DST`.
    fn rollback(&self, extra: &[&str]) -> Output {
        let mut args: Vec<&OsStr> = vec![OsStr::new("rollback")];
        args.extend(extra.iter().map(OsStr::new));
        args.push(self.dst().as_os_str());
        self.js(&args)
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.dst().join(rel)).ok()
    }

    /// Writes `rel` as a service does: a new inode renamed over the old one.
    fn replace(&self, rel: &str, content: &str) {
        let p = self.dst().join(rel);
        let tmp = p.with_extension("tmp-write");
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&tmp, content).unwrap();
        fs::rename(&tmp, &p).unwrap();
    }
}

/// `l` without the entries `skip` says are not the sync's (excluded, and the directories the
/// rollback keeps for them).
fn without(l: &Listing, skip: impl Fn(&str) -> bool) -> Listing {
    let mut l = l.clone();
    l.0.retain(|p, _| !skip(&String::from_utf8_lossy(p)));
    l
}

fn under_var(p: &str) -> bool {
    p == "var" || p.starts_with("var/")
}

/// The issue's scenario: `sync --exclude '/var/'`, the service writes `var/db/users.db`, the
/// rollback must keep it (not switch the staging-time `var/` back and leave it in `undone-1`
/// for the next sync to delete).
fn db_written_since_the_sync_survives_rollback_and_the_next_sync(method: Option<&'static str>) {
    let c = Case::new(method, &["/var/"]);
    c.e.dst
        .file("usr/bin/tool", "old tool\n")
        .file("var/db/groups.db", "groups\n")
        .settle_dirs(1_600_000_000);
    c.e.src.file("usr/bin/tool", "new tool\n");
    let before = listing(c.dst());
    c.sync();
    assert_eq!(c.read("usr/bin/tool").as_deref(), Some("new tool\n"));
    fs::write(c.dst().join("var/db/users.db"), "alice\nbob\n").unwrap();

    let o = c.rollback(&[]);
    expect_code(&o, 0);
    assert_eq!(
        c.read("var/db/users.db").as_deref(),
        Some("alice\nbob\n"),
        "the service's new database was lost by the rollback\n{}",
        stderr(&o)
    );
    assert_eq!(c.read("var/db/groups.db").as_deref(), Some("groups\n"));
    // Everything the sync owns is exactly as before it.
    let after = listing(c.dst());
    let (b, a) = (without(&before, under_var), without(&after, under_var));
    assert!(
        b == a,
        "rollback is not exact outside var/:\n{}",
        b.diff(&a)
    );

    // The next sync removes `undone-1`: the database must not go with it.
    c.sync();
    assert_eq!(c.read("var/db/users.db").as_deref(), Some("alice\nbob\n"));
    assert_eq!(c.read("usr/bin/tool").as_deref(), Some("new tool\n"));
}

#[test]
fn issue19_db_written_in_an_excluded_dir_since_the_sync_survives_rollback() {
    db_written_since_the_sync_survives_rollback_and_the_next_sync(None);
}

#[test]
fn issue19_per_entry_method_carries_excluded_entries_at_rollback() {
    db_written_since_the_sync_survives_rollback_and_the_next_sync(Some("entries"));
}

#[test]
fn per_entry_method_keeps_its_home_in_the_tree_while_carrying() {
    let c = Case::new(Some("entries"), &["*.log", "/data/"]);
    c.e.dst
        .file("bin/app", "v1\n")
        .file("data/state", "s1\n")
        .file("lib/x.so", "lib\n");
    c.e.src
        .file("bin/app", "v2\n")
        .file("lib/x.so", "lib\n")
        .file("share/doc", "d\n");
    c.sync();
    assert!(
        c.dst().join(".jailsync-gens").is_dir(),
        "the per-entry method was not used"
    );
    c.replace("data/state", "s2\n");
    fs::write(c.dst().join("data/new"), "n\n").unwrap();
    fs::write(c.dst().join("lib/app.log"), "log\n").unwrap();
    let o = c.rollback(&[]);
    expect_code(&o, 0);
    assert_eq!(c.read("bin/app").as_deref(), Some("v1\n"));
    assert_eq!(c.read("share/doc"), None);
    assert_eq!(c.read("data/state").as_deref(), Some("s2\n"));
    assert_eq!(c.read("data/new").as_deref(), Some("n\n"));
    assert_eq!(c.read("lib/app.log").as_deref(), Some("log\n"));
}

/// A name pattern matches anywhere: a log created since the sync in a directory that held no
/// excluded entry before (the sync's scan never listed it as holding one) is carried too, and
/// so is one in a directory the sync created (kept, as a sync keeps a directory holding an
/// excluded entry).
#[test]
fn issue19_a_new_log_in_a_previously_log_less_dir_is_carried() {
    let c = Case::new(None, &["*.log"]);
    c.e.dst
        .file("opt/app/data", "old\n")
        .file("var/log/old.log", "old log\n")
        .settle_dirs(1_600_000_000);
    c.e.src
        .file("opt/app/data", "new\n")
        .file("opt/added/readme", "r\n");
    let before = listing(c.dst());
    c.sync();
    fs::write(c.dst().join("opt/app/run.log"), "started\n").unwrap();
    fs::write(c.dst().join("opt/added/x.log"), "x\n").unwrap();
    fs::write(c.dst().join("var/log/old.log"), "appended in place\n").unwrap();

    let o = c.rollback(&[]);
    expect_code(&o, 0);
    assert_eq!(c.read("opt/app/data").as_deref(), Some("old\n"));
    assert_eq!(c.read("opt/app/run.log").as_deref(), Some("started\n"));
    assert_eq!(c.read("opt/added/x.log").as_deref(), Some("x\n"));
    assert_eq!(
        c.read("opt/added/readme"),
        None,
        "the sync's own file stays undone"
    );
    assert_eq!(
        c.read("var/log/old.log").as_deref(),
        Some("appended in place\n")
    );
    // The old tree's directories keep their exact metadata (mtimes included) although the
    // carry added to them.
    let after = listing(c.dst());
    let skip = |p: &str| p.ends_with(".log") || p == "opt/added";
    let (b, a) = (without(&before, skip), without(&after, skip));
    assert!(b == a, "rollback is not exact:\n{}", b.diff(&a));
    // The next sync keeps them all.
    c.sync();
    assert_eq!(c.read("opt/app/run.log").as_deref(), Some("started\n"));
    assert_eq!(c.read("opt/added/x.log").as_deref(), Some("x\n"));
}

#[test]
fn issue19_an_excluded_file_deleted_since_the_sync_stays_deleted() {
    let c = Case::new(None, &["/var/", "*.log"]);
    c.e.dst
        .file("usr/a", "1\n")
        .file("var/cache/a", "a\n")
        .file("var/cache/b", "b\n")
        .file("usr/lib/gone.log", "g\n");
    c.e.src.file("usr/a", "2\n").dir("usr/lib");
    c.sync();
    fs::remove_file(c.dst().join("var/cache/a")).unwrap();
    fs::remove_file(c.dst().join("usr/lib/gone.log")).unwrap();
    let o = c.rollback(&[]);
    expect_code(&o, 0);
    assert_eq!(c.read("usr/a").as_deref(), Some("1\n"));
    assert_eq!(
        c.read("var/cache/a"),
        None,
        "a deleted excluded file came back"
    );
    assert_eq!(c.read("usr/lib/gone.log"), None, "a deleted log came back");
    assert_eq!(c.read("var/cache/b").as_deref(), Some("b\n"));
}

#[test]
fn issue19_an_excluded_file_edited_since_the_sync_keeps_the_edit() {
    let c = Case::new(None, &["/var/"]);
    c.e.dst
        .file("usr/a", "1\n")
        .file("var/conf", "v1\n")
        .file("var/in-place", "v1\n")
        .symlink("var/current", "conf");
    c.e.src.file("usr/a", "2\n");
    c.sync();
    // An editor's save (a new inode), an append in place, a symlink retargeted.
    c.replace("var/conf", "v2 by the admin\n");
    fs::write(c.dst().join("var/in-place"), "v2 in place\n").unwrap();
    fs::remove_file(c.dst().join("var/current")).unwrap();
    std::os::unix::fs::symlink("in-place", c.dst().join("var/current")).unwrap();
    let o = c.rollback(&[]);
    expect_code(&o, 0);
    assert_eq!(c.read("usr/a").as_deref(), Some("1\n"));
    assert_eq!(c.read("var/conf").as_deref(), Some("v2 by the admin\n"));
    assert_eq!(c.read("var/in-place").as_deref(), Some("v2 in place\n"));
    assert_eq!(
        fs::read_link(c.dst().join("var/current")).unwrap(),
        Path::new("in-place")
    );
}

#[test]
fn issue19_rollback_dry_run_names_what_is_carried() {
    let c = Case::new(None, &["/var/", "*.log"]);
    c.e.dst
        .file("usr/a", "1\n")
        .file("var/db/groups.db", "g\n")
        .file("usr/old.log", "o\n");
    c.e.src.file("usr/a", "2\n");
    c.sync();
    fs::write(c.dst().join("var/db/users.db"), "u\n").unwrap();
    fs::write(c.dst().join("usr/new.log"), "n\n").unwrap();
    fs::remove_file(c.dst().join("usr/old.log")).unwrap();
    let before = listing(c.dst());

    let o = c.rollback(&["-n"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    let named = |rel: &str| format!("{}: excluded", c.dst().join(rel).display());
    for rel in ["var", "usr/new.log", "usr/old.log"] {
        assert!(
            err.contains(&named(rel)),
            "`rollback -n` does not name {rel}:\n{err}"
        );
    }
    assert!(listing(c.dst()) == before, "`rollback -n` changed the tree");

    let o = c.rollback(&["-n", "--json"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    let kinds: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "carried" || v["type"] == "dropped")
        .map(|v| (v["type"].as_str().unwrap().into(), v["path"].to_string()))
        .collect();
    for want in [
        ("carried", "var"),
        ("carried", "usr/new.log"),
        ("dropped", "usr/old.log"),
    ] {
        assert!(
            kinds.iter().any(|(k, p)| k == want.0 && p.contains(want.1)),
            "--json lacks {want:?}:\n{out}"
        );
    }

    // And the real rollback does what the dry run said.
    expect_code(&c.rollback(&[]), 0);
    assert_eq!(c.read("var/db/users.db").as_deref(), Some("u\n"));
    assert_eq!(c.read("usr/new.log").as_deref(), Some("n\n"));
    assert_eq!(c.read("usr/old.log"), None);
    assert_eq!(c.read("usr/a").as_deref(), Some("1\n"));
}
