//! The portable OS layer (`JAILSYNC_FSX=portable`, what systems other than Linux get) is the
//! one used when selected: a sync under strace makes none of the Linux-only calls and never
//! goes through `/proc/self/fd`, yet leaves the destination exact. The same run with the
//! Linux layer makes those calls, so the trace would show a portable run that used them.
//! (The CI runs the whole suite a second time under `JAILSYNC_FSX=portable`.)

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use crate::common::*;

/// Calls only the Linux layer makes (`listxattrat` and `cachestat` may show as raw numbers).
const LINUX_ONLY: &[&str] = &[
    "openat2(",
    "renameat2(",
    "copy_file_range(",
    "cachestat(",
    "listxattrat(",
    "syscall_0x1d1(",
    "syscall_0x1c3(",
];

/// A release and its update: changed, new, removed files, a directory that becomes a file
/// (a change of type), symlinks, hard links, nested directories, xattrs on
/// a file, a directory and (where trusted.* can be set) a symlink.
fn fixture(e: &Env) {
    for t in [&e.src, &e.dst] {
        t.file("lib/libz.so.1", b"zlib 1\n")
            .file("bin/prog", b"prog 1\n")
            .file("share/doc/a/b/c/readme", b"same\n")
            .symlink("lib/libz.so", "libz.so.1")
            .file("gone", b"old only\n")
            .dir("etc");
    }
    e.dst.file("was-dir/inner", b"x\n").remove("gone");
    e.dst.file("gone", b"old only\n");
    e.src
        .file("lib/libz.so.1", b"zlib 2, longer\n")
        .file("bin/new", b"new program\n")
        .hardlink("bin/prog2", "bin/prog")
        .file("was-dir", b"now a file\n")
        .remove("gone")
        .xattr("lib/libz.so.1", "user.v", b"2")
        .xattr("share/doc", "user.d", b"d");
    if can_trusted_xattr() {
        e.src.xattr("lib/libz.so", "trusted.l", b"on a link");
    }
}

/// Runs `jailsync ARGS` under `strace -f` (every call) with `JAILSYNC_FSX` set to `fsx` (or
/// unset) and `JAILSYNC_SWITCH` to `switch`; returns the trace and the binary's output.
fn traced_env(
    e: &Env,
    fsx: Option<&str>,
    switch: Option<&str>,
    args: &[&OsStr],
) -> (String, std::process::Output) {
    let log = e.tmp.path().join("trace");
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-s", "256", "-o"])
        .arg(&log)
        .arg(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR");
    for (k, v) in [("JAILSYNC_FSX", fsx), ("JAILSYNC_SWITCH", switch)] {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let o = cmd.output().expect("run strace");
    (std::fs::read_to_string(&log).unwrap(), o)
}

fn traced(e: &Env, fsx: Option<&str>, args: &[&OsStr]) -> (String, std::process::Output) {
    traced_env(e, fsx, None, args)
}

fn offending(trace: &str) -> Vec<&str> {
    trace
        .lines()
        .filter(|l| LINUX_ONLY.iter().any(|c| l.contains(c)) || l.contains("/proc/self/fd"))
        .collect()
}

fn sync_args<'a>(e: &'a Env, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    let mut a: Vec<&OsStr> = vec![OsStr::new("sync")];
    a.extend(extra.iter().map(OsStr::new));
    a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
    a
}

fn check_portable_run(e: &Env, extra: &[&str], method: &str) {
    let (trace, o) = traced(e, Some("portable"), &sync_args(e, extra));
    expect_code(&o, 0);
    let bad = offending(&trace);
    assert!(
        bad.is_empty(),
        "the portable layer made Linux-only calls:\n{}",
        bad.join("\n")
    );
    // It did switch, by renames, and said so.
    assert!(trace.contains("renameat("), "no renameat in the trace");
    let sw = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "switch")
        .expect("a switch line");
    assert_eq!(sw["method"], method, "{sw}");
    assert_eq!(sw["atomic"], false, "{sw}");
    e.assert_synced();
}

#[test]
fn portable_layer_makes_no_linux_only_calls_and_syncs_exactly() {
    require!(have("strace"), "strace is not installed");
    let e = Env::new().with_dst();
    fixture(&e);
    check_portable_run(&e, &["--json"], "tree");
    // Rollback by the same renames, back to the old tree exactly.
    let (trace, o) = traced(
        &e,
        Some("portable"),
        &[OsStr::new("rollback"), e.dst().as_os_str()],
    );
    expect_code(&o, 0);
    assert!(
        offending(&trace).is_empty(),
        "{}",
        offending(&trace).join("\n")
    );
    assert!(
        e.dst.path("was-dir/inner").exists(),
        "rollback did not restore the old tree"
    );
}

#[test]
fn portable_switch_by_subtrees_makes_no_linux_only_calls() {
    require!(have("strace"), "strace is not installed");
    let e = Env::new().with_dst();
    fixture(&e);
    let (trace, o) = traced_env(
        &e,
        Some("portable"),
        Some("entries"),
        &sync_args(&e, &["--json"]),
    );
    expect_code(&o, 0);
    let bad = offending(&trace);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    e.assert_synced();
}

/// The control: the Linux layer does make those calls on the same run, so the trace and its
/// reading would catch a portable run that made them.
#[test]
fn linux_layer_is_the_default_and_uses_openat2_and_renameat2() {
    require!(have("strace"), "strace is not installed");
    let e = Env::new().with_dst();
    fixture(&e);
    let (trace, o) = traced(&e, None, &sync_args(&e, &["--json"]));
    expect_code(&o, 0);
    for call in ["openat2(", "renameat2("] {
        assert!(
            trace.lines().any(|l| l.contains(call)),
            "the Linux layer made no {call}"
        );
    }
    assert!(
        trace.contains("RENAME_EXCHANGE"),
        "no exchange in the trace"
    );
    let sw = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "switch")
        .expect("a switch line");
    assert_eq!(sw["atomic"], true, "{sw}");
    e.assert_synced();
}

/// Under the portable layer a switched tree is absent for exactly one rename: the live tree
/// goes aside, and the very next call of that thread renames the staged tree in.
#[test]
fn portable_switch_is_absent_for_one_rename_only() {
    require!(have("strace"), "strace is not installed");
    let e = Env::new().with_dst();
    fixture(&e);
    let log = e.tmp.path().join("trace");
    let o = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-y",
            "-s",
            "256",
            "-e",
            "trace=rename,renameat,renameat2",
            "-o",
        ])
        .arg(&log)
        .arg(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(sync_args(&e, &[]))
        .env("JAILSYNC_FSX", "portable")
        .env_remove("JAILSYNC_SWITCH")
        .output()
        .expect("run strace");
    expect_code(&o, 0);
    let trace = std::fs::read_to_string(&log).unwrap();
    let dst_name = e.dst().file_name().unwrap().to_str().unwrap();
    let parent = e.dst().parent().unwrap().to_str().unwrap();
    // renameat(AT_FDCWD</…/parent>, "dst", …) moves the live tree away; the next rename by
    // the same pid must put one back at that name.
    let lines: Vec<(&str, &str)> = trace
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(pid, rest)| (pid, rest.trim_start()))
        .collect();
    let away = lines
        .iter()
        .position(|(_, c)| {
            c.starts_with("renameat(")
                && c.contains(&format!("<{parent}>, \"{dst_name}\""))
                && c.ends_with("= 0")
        })
        .unwrap_or_else(|| panic!("the live tree was never renamed away:\n{trace}"));
    let pid = lines[away].0;
    let next = lines[away + 1..]
        .iter()
        .find(|(p, _)| *p == pid)
        .expect("a call after moving the tree aside");
    assert!(
        next.1.contains(&format!("<{parent}>, \"{dst_name}\"")) && next.1.ends_with("= 0"),
        "after {:?} the next call was {:?}",
        lines[away].1,
        next.1
    );
    e.assert_synced();
}

/// With the directory fds of the portable layer, xattrs are read and written through fds
/// and names, never `/proc` paths: a root directory's own xattr and a directory's survive.
#[test]
fn portable_layer_keeps_xattrs_exactly() {
    let e = Env::new().with_dst();
    e.src
        .file("f", b"f\n")
        .xattr("f", "user.a", b"1")
        .xattr("", "user.root", b"r")
        .dir("d")
        .xattr("d", "user.d", b"dd");
    e.dst.file("f", b"f\n").xattr("f", "user.gone", b"x");
    let o = Command::new(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(sync_args(&e, &[]))
        .env("JAILSYNC_FSX", "portable")
        .output()
        .unwrap();
    expect_code(&o, 0);
    assert_same(e.src(), e.dst());
}

/// The states a kill inside the portable exchange's renames leaves (made here by hand, as the
/// engine's renames would have, with the journal it writes before them): the next run puts
/// the tree back (killed after the first rename: the live tree is absent, aside in the home)
/// or makes the aside the generation (after the second: the new tree is live, `next` absent),
/// then converges, with nothing left under a temporary name.
#[test]
fn a_run_killed_inside_the_portable_exchange_is_recovered() {
    use std::os::unix::fs::MetadataExt;
    for after_second in [false, true] {
        let e = Env::new().with_dst();
        fixture(&e);
        let run = || {
            Command::new(BIN)
                .arg("--state-dir")
                .arg(e.state())
                .args(sync_args(&e, &[]))
                .env("JAILSYNC_FSX", "portable")
                .env_remove("JAILSYNC_SWITCH")
                .output()
                .unwrap()
        };
        let old = listing(e.dst());
        let home = e.tmp.path().join(".jailsync-dst");
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        // A staged tree (any content: the recovery never reads it) and the switch journal.
        let next = home.join("next");
        std::fs::create_dir(&next).unwrap();
        std::fs::write(next.join("staged"), b"s").unwrap();
        let ino = std::fs::metadata(&next).unwrap().ino();
        let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
        std::fs::write(
            home.join("switching"),
            format!("from {}\nto {}\nino {ino}\n", hex("next"), hex("gen-1")),
        )
        .unwrap();
        let aside = home.join(".jailsync-tmp-4242-1125899906842624");
        std::fs::rename(e.dst(), &aside).unwrap();
        if after_second {
            std::fs::rename(&next, e.dst()).unwrap();
        }
        let tmp_left = || -> Vec<_> {
            std::fs::read_dir(&home)
                .unwrap()
                .map(|d| d.unwrap().file_name())
                .filter(|n| n.as_bytes().starts_with(b".jailsync-tmp-"))
                .collect()
        };
        if after_second {
            // Any run under the lock recovers first; a rollback with nothing recorded to roll
            // back only recovers: the old tree becomes generation 1, as after a real exchange.
            let _ = e.js([OsStr::new("rollback"), e.dst().as_os_str()]);
            assert!(tmp_left().is_empty(), "left {:?}", tmp_left());
            assert!(
                listing(&home.join("gen-1")) == old,
                "the old tree is not generation 1"
            );
        }
        let o = run();
        expect_code(&o, 0);
        assert_same(e.src(), e.dst());
        assert!(
            tmp_left().is_empty(),
            "after_second {after_second}: left {:?}",
            tmp_left()
        );
    }
}
