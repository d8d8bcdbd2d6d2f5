//! Invariant 1, "never lacks": a path present in both the old destination and the source
//! exists at every instant of a sync. Checked two ways:
//!
//! - **strace**: every `unlink`/`rmdir`/`rename` the sync makes is recorded (with `-y`, so
//!   fd-relative calls name their directory); no common path may be removed, or renamed away
//!   other than by `RENAME_EXCHANGE` with a staged (`.jailsync-tmp-`) name.
//! - **watcher**: while a large sync runs, the test `lstat`s every common path in a tight loop
//!   and fails on the first one missing; it also checks sampled files are always complete, old
//!   or new content (invariant 2).
//!
//! Both checks are proven able to fail: the same check is run against a naive
//! delete-then-copy (`rm -rf` + `cp -a`) and against `rsync --delete`, which removes a
//! directory before putting a file in its place, and must report violations there
//! (`*_catches_*` tests below).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;
use crate::common::*;

/// Old destination and new source sharing many paths, with every kind of change: content
/// updates, metadata-only changes, type changes in every direction (incl. non-empty dirs),
/// hard-link splits and merges, symlink retargets, deletions and creations.
fn fixture(e: &Env, bulk: usize, size: usize) {
    for i in 0..bulk {
        let p = format!("bulk/d{:02}/f{i:05}", i % 40);
        e.dst.file(&p, vec![b'o'; size]);
        e.src.file(&p, vec![b'n'; size]);
    }
    for i in 0..bulk / 4 {
        let p = format!("meta/f{i:05}");
        e.dst.file(&p, b"same");
        e.src.file(&p, b"same").mode(&p, 0o600);
    }
    // Type changes.
    e.dst.file("t/f2d", b"file");
    e.src.file("t/f2d/x", b"dir now");
    e.dst.file("t/d2f/a/b", b"deep").file("t/d2f/c", b"c");
    e.src.file("t/d2f", b"file now");
    e.dst.file("t/f2l", b"file");
    e.src.symlink("t/f2l", "d2f");
    e.dst.symlink("t/l2f", "x");
    e.src.file("t/l2f", b"file now");
    e.dst.file("t/d2l/x", b"x");
    e.src.symlink("t/d2l", "f2d");
    e.dst.symlink("t/l2d", "x");
    e.src.file("t/l2d/y", b"y");
    // Hard links.
    e.dst
        .file("h/split1", b"s")
        .hardlink("h/split2", "h/split1");
    e.src.file("h/split1", b"s").file("h/split2", b"s");
    e.dst.file("h/merge1", b"m").file("h/merge2", b"m");
    e.src
        .file("h/merge1", b"m")
        .hardlink("h/merge2", "h/merge1");
    // Symlinks, creations, deletions.
    e.dst.symlink("l/retarget", "old");
    e.src.symlink("l/retarget", "new");
    e.dst.file("gone/a", b"a").file("gone2", b"g");
    e.src.file("new/b", b"b").file("new2", b"n");
}

/// Paths (relative) present in both trees.
fn common_paths(a: &Path, b: &Path) -> Vec<Vec<u8>> {
    let (la, lb) = (listing(a), listing(b));
    la.0.keys()
        .filter(|p| lb.0.contains_key(*p))
        .cloned()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// strace.

/// One recorded call that succeeded, with its path arguments resolved.
#[derive(Debug)]
struct Call {
    name: String,
    paths: Vec<PathBuf>,
    exchange: bool,
    /// The thread that made it.
    pid: String,
}

/// The portable OS layer (`JAILSYNC_FSX=portable`) has no `RENAME_EXCHANGE`: it swaps `a` and
/// `b` by three renames of one thread, back to back — `b` to a temporary name beside `a`, `a`
/// to `b`, the temporary name to `a` — so `b` is absent for the length of one rename (the
/// guarantee that layer gives up, see the README). Each such triple becomes one exchange here,
/// and only when it has exactly that shape; everything else is checked as before.
fn fold_emulated_exchanges(calls: Vec<Call>) -> Vec<Call> {
    let is_aside = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".jailsync-tmp-"))
    };
    let mut calls: Vec<Option<Call>> = calls.into_iter().map(Some).collect();
    for i in 0..calls.len() {
        let Some(c) = &calls[i] else { continue };
        if c.name != "renameat" || !is_aside(&c.paths[1]) {
            continue;
        }
        let (b, aside, pid) = (c.paths[0].clone(), c.paths[1].clone(), c.pid.clone());
        let mut next =
            (i + 1..calls.len()).filter(|&k| calls[k].as_ref().is_some_and(|c| c.pid == pid));
        let (Some(j), Some(k)) = (next.next(), next.next()) else {
            continue;
        };
        let (cj, ck) = (calls[j].as_ref().unwrap(), calls[k].as_ref().unwrap());
        let a = cj.paths[0].clone();
        if cj.name == "renameat"
            && ck.name == "renameat"
            && cj.paths[1] == b
            && ck.paths == [aside.clone(), a.clone()]
            && aside.parent() == a.parent()
        {
            calls[i] = Some(Call {
                name: "renameat2".into(),
                paths: vec![a, b],
                exchange: true,
                pid,
            });
            calls[j] = None;
            calls[k] = None;
        }
    }
    calls.into_iter().flatten().collect()
}

/// Splits the argument list of an strace line into raw tokens.
fn args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            while i < b.len() && b[i] != b',' {
                if b[i] == b'<' {
                    while i < b.len() && b[i] != b'>' {
                        i += 1;
                    }
                }
                i += 1;
            }
        }
        out.push(s[start..i.min(s.len())].trim().to_string());
        while i < b.len() && (b[i] == b',' || b[i] == b' ') {
            i += 1;
        }
    }
    out
}

fn unquote(t: &str) -> Option<String> {
    let t = t.strip_prefix('"')?.strip_suffix('"')?;
    Some(t.replace("\\\"", "\"").replace("\\\\", "\\"))
}

/// `5</a/dir>` → `/a/dir`; `AT_FDCWD` → `cwd`, the calling process's.
fn dirfd(t: &str, cwd: &Path) -> Option<PathBuf> {
    if t == "AT_FDCWD" {
        return Some(cwd.to_path_buf());
    }
    let open = t.find('<')?;
    let p = t[open + 1..].strip_suffix('>')?;
    Some(PathBuf::from(p.strip_suffix(" (deleted)").unwrap_or(p)))
}

/// Parses an strace `-f -y -o` file into the successful calls, joining interrupted lines.
/// Relative paths are resolved against each process's own cwd, followed through `chdir` and
/// inherited by the children it forks (rsync works in DST after a `chdir`).
fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let start = std::env::current_dir().unwrap();
    let mut cwds: HashMap<String, PathBuf> = HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let full = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(head) = pending.remove(pid) else {
                continue;
            };
            let Some(idx) = rest.find(" resumed>") else {
                continue;
            };
            format!("{head}{}", &rest[idx + " resumed>".len()..])
        } else {
            rest.to_string()
        };
        let Some(open) = full.find('(') else { continue };
        let name = full[..open].to_string();
        // strace pads short calls to align the `= result` column.
        let Some((close, ret)) = full.rfind(" = ").and_then(|eq| {
            let head = full[..eq].trim_end();
            head.ends_with(')')
                .then(|| (head.len() - 1, full[eq + 3..].trim_start()))
        }) else {
            continue;
        };
        if ret.starts_with('-') {
            continue; // failed: changed nothing
        }
        let cwd = cwds.get(pid).unwrap_or(&start).clone();
        match &*name {
            "chdir" => {
                let a = args(&full[open + 1..close]);
                cwds.insert(pid.to_string(), cwd.join(unquote(&a[0]).unwrap()));
                continue;
            }
            "clone" | "clone3" | "fork" | "vfork" => {
                let child = ret.split_whitespace().next().unwrap_or("");
                cwds.insert(child.to_string(), cwd);
                continue;
            }
            _ => {}
        }
        if ![
            "unlink",
            "unlinkat",
            "rmdir",
            "rename",
            "renameat",
            "renameat2",
            "openat",
            "mkdirat",
            "symlinkat",
            "linkat",
            "mknodat",
        ]
        .contains(&&*name)
        {
            continue;
        }
        if name == "openat" && !full[..close].contains("O_CREAT") {
            continue;
        }
        let a = args(&full[open + 1..close]);
        let mut paths = Vec::new();
        let exchange = full[..close].contains("RENAME_EXCHANGE");
        match &*name {
            "unlink" | "rmdir" => paths.push(cwd.join(unquote(&a[0]).unwrap())),
            "rename" => {
                paths.push(cwd.join(unquote(&a[0]).unwrap()));
                paths.push(cwd.join(unquote(&a[1]).unwrap()));
            }
            "unlinkat" | "openat" | "mkdirat" | "mknodat" => {
                paths.push(dirfd(&a[0], &cwd).unwrap().join(unquote(&a[1]).unwrap()))
            }
            "symlinkat" => paths.push(dirfd(&a[1], &cwd).unwrap().join(unquote(&a[2]).unwrap())),
            "linkat" => paths.push(dirfd(&a[2], &cwd).unwrap().join(unquote(&a[3]).unwrap())),
            _ => {
                paths.push(dirfd(&a[0], &cwd).unwrap().join(unquote(&a[1]).unwrap()));
                paths.push(dirfd(&a[2], &cwd).unwrap().join(unquote(&a[3]).unwrap()));
            }
        }
        calls.push(Call {
            name,
            paths,
            exchange,
            pid: pid.to_string(),
        });
    }
    if portable() {
        calls = fold_emulated_exchanges(calls);
    }
    calls
}

/// Every call that creates, removes or renames a name.
/// (`chdir` and the forks are traced only to resolve relative paths.)
const ALL_CALLS: &str = "openat,mkdirat,symlinkat,linkat,mknodat,unlink,unlinkat,rename,\
     renameat,renameat2,rmdir,chdir,clone,clone3,fork,vfork";

/// Runs `cmd` under strace; returns the successful unlink/rmdir/rename calls.
fn traced(cmd: &mut Command, out: &Path) -> Vec<Call> {
    traced_with(
        cmd,
        out,
        "unlink,unlinkat,rename,renameat,renameat2,rmdir,chdir,clone,clone3,fork,vfork",
    )
}

/// Runs `cmd` under strace, tracing `calls` (a comma list).
fn traced_with(cmd: &mut Command, out: &Path, calls: &str) -> Vec<Call> {
    let prog = cmd.get_program().to_owned();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
    let mut strace = Command::new("strace");
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => strace.env(k, v),
            None => strace.env_remove(k),
        };
    }
    let o = strace
        .args(["-f", "-qq", "-y", "-s", "65535", "-e", "signal=none", "-e"])
        .arg(format!("trace={calls}"))
        .arg("-o")
        .arg(out)
        .arg(prog)
        .args(args)
        .output()
        .expect("run strace");
    assert!(
        o.status.success(),
        "traced command failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    parse_trace(&std::fs::read_to_string(out).unwrap())
}

/// Calls that made a common path (absolute, under `dst`) vanish, as printable lines.
fn violations(calls: &[Call], dst: &Path, common: &[Vec<u8>]) -> Vec<String> {
    let set: HashSet<PathBuf> = common
        .iter()
        .map(|p| {
            if p.is_empty() {
                dst.to_path_buf()
            } else {
                dst.join(OsStr::from_bytes(p))
            }
        })
        .collect();
    // A staged name: a per-file temporary, or anything in a jailsync home (the staged next
    // tree), which an exchange with a live path swaps in whole.
    let staged = |p: &Path| {
        p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".jailsync-tmp-"))
            || in_home(p)
    };
    let mut v = Vec::new();
    for c in calls {
        let bad = match &*c.name {
            "unlink" | "unlinkat" | "rmdir" => set.contains(&c.paths[0]),
            "openat" | "mkdirat" | "symlinkat" | "linkat" | "mknodat" => false,
            // The source of a rename leaves its place, unless it swaps with a staged name.
            _ if c.exchange => {
                (set.contains(&c.paths[0]) || set.contains(&c.paths[1]))
                    && !(staged(&c.paths[0]) || staged(&c.paths[1]))
            }
            _ => set.contains(&c.paths[0]),
        };
        if bad {
            v.push(format!("{c:?}"));
        }
    }
    v
}

/// Whether `p` is inside a jailsync home (`PARENT/.jailsync-NAME/…` or `DST/.jailsync-gens/…`).
fn in_home(p: &Path) -> bool {
    p.components().any(|c| {
        let n = c.as_os_str().as_bytes();
        n.starts_with(b".jailsync-") && !n.starts_with(b".jailsync-tmp-")
    })
}

fn need_strace() -> bool {
    if !have("strace") {
        eprintln!("skipped: strace not installed (.ci/run installs it)");
        return false;
    }
    true
}

#[test]
fn strace_no_common_path_removed_or_renamed_away() {
    if !need_strace() {
        return;
    }
    for method in ["tree", "entries"] {
        no_common_path_removed_with(method);
    }
}

fn no_common_path_removed_with(method: &str) {
    let e = Env::new().with_dst();
    fixture(&e, 200, 64);
    let common = common_paths(e.src(), e.dst());
    let mut cmd = Command::new(BIN);
    cmd.env("JAILSYNC_SWITCH", method);
    cmd.arg("--state-dir")
        .arg(e.state())
        .arg("sync")
        .arg(e.src())
        .arg(e.dst());
    let calls = traced_with(&mut cmd, &e.tmp.path().join("trace"), ALL_CALLS);
    // The trace must have seen the engine at work, or the check below proves nothing.
    assert!(
        calls.iter().any(|c| c.exchange),
        "no RENAME_EXCHANGE traced: {calls:?}"
    );
    assert!(calls
        .iter()
        .any(|c| c.name.starts_with("rename") && !c.exchange));
    assert!(calls.iter().any(|c| c.name == "unlinkat"));
    // Invariant 4: nothing is created, removed or renamed in the jail.
    let in_src: Vec<&Call> = calls
        .iter()
        .filter(|c| c.paths.iter().any(|p| p.starts_with(e.src())))
        .collect();
    assert!(in_src.is_empty(), "the sync changed SRC: {in_src:?}");
    let v = violations(&calls, e.dst(), &common);
    assert!(
        v.is_empty(),
        "{method}: common paths removed or renamed away:\n{}",
        v.join("\n")
    );
    if method == "tree" {
        // Never torn: the live tree changed by exactly one call, the exchange of its root.
        let live: Vec<&Call> = calls
            .iter()
            .filter(|c| {
                changes_name(c)
                    && c.paths
                        .iter()
                        .any(|p| p.starts_with(e.dst()) && !in_home(p))
            })
            .collect();
        assert!(
            live.len() == 1 && live[0].exchange && live[0].paths.contains(&e.dst().to_path_buf()),
            "the live tree changed by other calls than one exchange of its root:\n{live:#?}"
        );
    }
    assert_same(e.src(), e.dst());
}

/// Calls that create, remove or move a name (metadata calls and opens do not).
fn changes_name(c: &Call) -> bool {
    matches!(
        &*c.name,
        "unlink" | "unlinkat" | "rmdir" | "mkdirat" | "symlinkat" | "linkat" | "mknodat"
    ) || c.name.starts_with("rename")
}

/// Proves the strace check can fail: `rsync --delete` (rmdir before it puts a file where a
/// directory was) and a naive `rm -rf` + `cp -a` on the same fixture are caught.
#[test]
fn strace_check_catches_rsync_and_naive_copy() {
    if !need_strace() {
        return;
    }
    let e = Env::new().with_dst();
    fixture(&e, 20, 16);
    let common = common_paths(e.src(), e.dst());
    if have("rsync") {
        let mut src = e.src().as_os_str().to_owned();
        src.push("/");
        let mut cmd = Command::new("rsync");
        cmd.args(["-aH", "--delete"]).arg(src).arg(e.dst());
        let calls = traced(&mut cmd, &e.tmp.path().join("trace-rsync"));
        let v = violations(&calls, e.dst(), &common);
        assert!(
            !v.is_empty(),
            "the check missed rsync's remove-then-replace"
        );
    }
    let e = Env::new().with_dst();
    fixture(&e, 20, 16);
    let common = common_paths(e.src(), e.dst());
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"rm -rf "$2" && cp -a "$1" "$2""#)
        .arg("sh")
        .arg(e.src())
        .arg(e.dst());
    let calls = traced(&mut cmd, &e.tmp.path().join("trace-naive"));
    let v = violations(&calls, e.dst(), &common);
    assert!(v.len() > 20, "the check missed a delete-then-copy: {v:?}");
}

// ---------------------------------------------------------------------------------------------
// Concurrent watcher.

struct Watch {
    missing: Vec<String>,
    torn: Vec<String>,
    rounds: usize,
    /// Runs of consecutive rounds that found some path missing.
    missing_episodes: usize,
}

/// While `child` runs, lstat every path in `paths` in a loop; for `(path, old, new)` in
/// `contents`, read the file and require one of the two contents, whole.
fn watch(mut child: std::process::Child, paths: &[PathBuf], contents: &[Sample]) -> Watch {
    let mut w = Watch {
        missing: Vec::new(),
        torn: Vec::new(),
        rounds: 0,
        missing_episodes: 0,
    };
    let mut was_missing = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = child.try_wait().expect("wait").is_some();
        let mut missing = false;
        for p in paths {
            if let Err(e) = std::fs::symlink_metadata(p) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    missing = true;
                    if w.missing.len() < 20 {
                        w.missing.push(p.display().to_string());
                    }
                }
            }
        }
        w.missing_episodes += usize::from(missing && !was_missing);
        was_missing = missing;
        for (p, old, new) in contents {
            match std::fs::read(p) {
                Ok(b) if &b == old || &b == new => {}
                Ok(b) => w.torn.push(format!("{}: {} bytes", p.display(), b.len())),
                Err(_) => {} // a missing path is reported above
            }
        }
        w.rounds += 1;
        if done || Instant::now() > deadline {
            break;
        }
    }
    let st = child.wait().expect("wait");
    assert!(
        st.success() || !w.missing.is_empty(),
        "watched command failed: {st}"
    );
    w
}

/// A file to read while watching, with its old and new content.
type Sample = (PathBuf, Vec<u8>, Vec<u8>);

fn watch_paths(e: &Env) -> (Vec<PathBuf>, Vec<Sample>) {
    let common = common_paths(e.src(), e.dst());
    let paths: Vec<PathBuf> = common.iter().map(|p| e.dst.path(p)).collect();
    let mut contents = Vec::new();
    let files = common
        .iter()
        .filter(|p| p.starts_with(b"bulk/") && p.len() > b"bulk/d00".len());
    for p in files.step_by(97) {
        let old = std::fs::read(e.dst.path(p)).unwrap();
        let new = std::fs::read(e.src.path(p)).unwrap();
        contents.push((e.dst.path(p), old, new));
    }
    (paths, contents)
}

#[test]
fn watcher_sees_every_common_path_throughout_a_large_sync() {
    let e = Env::new().with_dst();
    // ~1500 files of 8 KiB changing content: long enough for many watcher rounds.
    fixture(&e, 1500, 8192);
    let (paths, contents) = watch_paths(&e);
    let child = Command::new(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(["sync", "--threads", "2"])
        .arg(e.src())
        .arg(e.dst())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn jailsync");
    let w = watch(child, &paths, &contents);
    eprintln!("watcher: {} rounds over {} paths", w.rounds, paths.len());
    if portable() {
        // No atomic exchange: the tree may be seen absent, but only in the one window of its
        // one switch (a run of rounds, however long the sync was preempted there).
        assert!(
            w.missing_episodes <= 1,
            "paths missing in {} separate windows: {:?}",
            w.missing_episodes,
            w.missing
        );
    } else {
        assert!(
            w.missing.is_empty(),
            "paths missing during sync: {:?}",
            w.missing
        );
    }
    assert!(w.torn.is_empty(), "torn files during sync: {:?}", w.torn);
    assert_same(e.src(), e.dst());
}

/// Proves the watcher can fail: a naive delete-then-copy of the same tree is caught.
#[test]
fn watcher_catches_naive_delete_then_copy() {
    let e = Env::new().with_dst();
    fixture(&e, 1500, 8192);
    let (paths, contents) = watch_paths(&e);
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"rm -rf "$2" && cp -a "$1" "$2""#)
        .arg("sh")
        .arg(e.src())
        .arg(e.dst())
        .spawn()
        .expect("spawn sh");
    let w = watch(child, &paths, &contents);
    assert!(
        !w.missing.is_empty(),
        "the watcher missed a delete-then-copy"
    );
}

/// `upgrade` by whole-tree switches: every tree is staged (in its home, nothing created under a
/// live name) before any switch, each tree changes by one exchange of its root, the package
/// database's last, and old trees are removed only outside the live trees.
#[test]
fn upgrade_stages_all_then_switches_each_tree_once_db_last() {
    if !need_strace() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let jail = Tree::new(tmp.path().join("jail"));
    let root = Tree::new(tmp.path().join("root"));
    for i in 0..30 {
        jail.file(format!("usr/pkg/lib/l{i}"), format!("new {i}"));
        root.file(format!("usr/pkg/lib/l{i}"), format!("old {i}"));
        jail.file(format!("var/db/pkg/p{i}/+CONTENTS"), format!("new {i}"));
        root.file(format!("var/db/pkg/p{i}/+CONTENTS"), format!("old {i}"));
    }
    jail.file("usr/pkg/newdir/x", b"x")
        .file("usr/pkg/t/x", b"dir now");
    root.file("usr/pkg/t", b"file").file("usr/pkg/orphan", b"o");
    root.file("var/db/pkg/old-1/+CONTENTS", b"orphan package");
    let (pkg, db) = (root.path("usr/pkg"), root.path("var/db/pkg"));
    for round in 0..2 {
        if round == 1 {
            // A second upgrade also prunes (--keep 1): the old generation goes before staging.
            jail.file("usr/pkg/lib/l0", b"newer");
        }
        let mut cmd = Command::new(BIN);
        cmd.arg("--state-dir")
            .arg(tmp.path().join("state"))
            .arg("upgrade")
            .arg(&jail.root)
            .arg("--root")
            .arg(&root.root)
            .arg("--keep")
            .arg("1");
        let calls = traced_with(
            &mut cmd,
            &tmp.path().join(format!("trace{round}")),
            ALL_CALLS,
        );
        let (mut stage, mut switch_pkg, mut switch_db) = (vec![], vec![], vec![]);
        for (k, c) in calls.iter().enumerate() {
            if !changes_name(c) || !c.paths.iter().any(|p| p.starts_with(&root.root)) {
                continue;
            }
            let live = c.paths.iter().any(|p| !in_home(p));
            if !live {
                stage.push(k);
                continue;
            }
            assert!(
                c.exchange,
                "a live name changed other than by an exchange: {c:?}"
            );
            if c.paths.contains(&db) {
                switch_db.push(k);
            } else if c.paths.contains(&pkg) {
                switch_pkg.push(k);
            } else {
                panic!("an exchange below a tree's root: {c:?}\n{calls:#?}");
            }
        }
        assert_eq!(
            (switch_pkg.len(), switch_db.len()),
            // The second round changes nothing in the database: it is not switched at all.
            (1, usize::from(round == 0)),
            "one switch per changed tree: {:#?}",
            calls.iter().filter(|c| c.exchange).collect::<Vec<_>>()
        );
        assert!(
            switch_db.iter().all(|&d| switch_pkg[0] < d),
            "var/db/pkg switched before usr/pkg"
        );
        let first_stage_after = stage.iter().find(|&&k| k > switch_pkg[0]);
        // After the switches only the home's own bookkeeping moves (generation names).
        if let Some(&k) = first_stage_after {
            let c = &calls[k];
            assert!(
                !matches!(&*c.name, "mkdirat" | "linkat" | "symlinkat" | "mknodat"),
                "staging after a switch began: {c:?}"
            );
        }
        assert_same(&jail.path("usr/pkg"), &root.path("usr/pkg"));
        assert_same(&jail.path("var/db/pkg"), &root.path("var/db/pkg"));
    }
}

proptest::proptest! {
    // Each case runs one traced sync: keep the count small.
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 12,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// The strace check on random old/new trees: whatever changes (types, hard links), no
    /// common path is removed or renamed away.
    #[test]
    fn strace_random_trees(old in common::gen::tree(), new in common::gen::tree()) {
        if !have("strace") {
            return Ok(());
        }
        let e = Env::new().with_dst();
        let old_log = common::gen::build(&e.dst, &old);
        let new_log = common::gen::build(&e.src, &new);
        let common = common_paths(e.src(), e.dst());
        let mut cmd = Command::new(BIN);
        cmd.arg("--state-dir").arg(e.state()).arg("sync").arg(e.src()).arg(e.dst());
        let calls = traced(&mut cmd, &e.tmp.path().join("trace"));
        let v = violations(&calls, e.dst(), &common);
        proptest::prop_assert!(
            v.is_empty(),
            "old:\n  {}\nnew:\n  {}\nviolations:\n{}",
            old_log.join("\n  "),
            new_log.join("\n  "),
            v.join("\n")
        );
        let (ls, ld) = (listing(e.src()), listing(e.dst()));
        proptest::prop_assert!(ls == ld, "{}", ls.diff(&ld));
    }
}
