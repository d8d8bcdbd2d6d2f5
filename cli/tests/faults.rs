//! Fault injection (issue 5): kill -9 at any moment, symlink races, a jail changing under the
//! copy, concurrent runs, bad input, a full disk, unreadable entries, and `--fsync`.
//!
//! Every test drives the real binary on real trees and checks the invariants of the design:
//! never lacks, whole or old, confined, jail read-only, exact after success, resumable.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::faultkit::*;

fn tempdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("jailsync-{name}-"))
        .tempdir()
        .expect("tempdir")
}

/// A temp dir on a memory filesystem when one with room is mounted (/dev/shm): loops that copy,
/// list and sync thousands of files many times then spend their time in the engine, not in
/// writeback. Falls back to the default temp dir.
fn fast_tempdir(name: &str) -> tempfile::TempDir {
    // SAFETY: zeroed statvfs is a valid out-buffer; the path is a NUL-terminated literal.
    let room = unsafe {
        let mut v: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c"/dev/shm".as_ptr(), &mut v) == 0 {
            v.f_bavail as u64 * v.f_frsize as u64
        } else {
            0
        }
    };
    if room < 1 << 30 {
        return tempdir(name);
    }
    tempfile::Builder::new()
        .prefix(&format!("jailsync-{name}-"))
        .tempdir_in("/dev/shm")
        .expect("tempdir in /dev/shm")
}

/// Phase durations from `sync -v`'s `phases: scan 0.1 s, hash 0.0 s, ...` line.
fn phases(stderr: &str) -> Vec<(String, f64)> {
    let Some(line) = stderr.lines().find_map(|l| l.strip_prefix("phases: ")) else {
        return Vec::new();
    };
    line.split(", ")
        .filter_map(|p| {
            let mut it = p.split_whitespace();
            let name = it.next()?.to_string();
            let secs = it.next()?.parse().ok()?;
            Some((name, secs))
        })
        .collect()
}

fn sync_args<'a>(src: &'a Path, dst: &'a Path, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    let mut v: Vec<&OsStr> = vec![OsStr::new("sync")];
    v.extend(extra.iter().map(OsStr::new));
    v.push(src.as_os_str());
    v.push(dst.as_os_str());
    v
}

// ---------------------------------------------------------------------------------------------
// 1. Crash loop.

/// Kills `sync` at random moments (aimed at each phase in turn, from a timed calibration run)
/// on a churned tree pair; after each kill every entry must be its old or new version and no
/// path both trees have may be missing; sometimes the resuming run is killed too; a final run
/// must converge exactly with no leftovers.
#[test]
fn crash_loop() {
    let iters: usize = std::env::var("JAILSYNC_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut rng = Rng::from_env("crash_loop");
    // JAILSYNC_CRASH_DISK=1 runs on the default temp dir (a disk) instead of memory.
    let tmp = if std::env::var_os("JAILSYNC_CRASH_DISK").is_some() {
        tempdir("crash")
    } else {
        fast_tempdir("crash")
    };
    let old = Tree::new(tmp.path().join("old"));
    let src = Tree::new(tmp.path().join("src"));
    churn(&old, &src, &mut rng, 3000, 4, 2 << 20);
    let (lo, ln) = (listing(&old.root), listing(&src.root));
    let dst = tmp.path().join("dst");
    let state = tmp.path().join("state");
    let extra: Vec<&str> = match std::env::var("JAILSYNC_CRASH_FSYNC") {
        Ok(v) if v == "0" => vec![],
        _ => vec!["--fsync"],
    };

    // Calibration: one full run, timed per phase.
    copy_tree(&old.root, &dst);
    let t0 = Instant::now();
    let mut args = sync_args(&src.root, &dst, &extra);
    args.insert(1, OsStr::new("-v"));
    let o = cmd(&state, &args).output().expect("run");
    let total = t0.elapsed().as_secs_f64();
    expect_code(&o, 0);
    assert_same(&src.root, &dst);
    let ph = phases(&stderr(&o));
    let busy: f64 = ph.iter().map(|p| p.1).sum();
    let startup = (total - busy).max(0.0) * 0.5;
    eprintln!("calibration: {total:.3} s, startup ~{startup:.3} s, phases {ph:?}");
    let mut windows = Vec::new();
    let mut at = startup;
    for (name, d) in &ph {
        windows.push((name.clone(), at, d.max(0.0005)));
        at += d;
    }

    let mut hist: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..iters {
        remove_tree(&dst);
        remove_tree(&state);
        copy_tree(&old.root, &dst);
        // The short late phases are aimed at from the moment the commit burst starts (the
        // first file it renames is big/b0, first in path order); the others from the start.
        let b0 = lstat(&dst, "big/b0").expect("big/b0").st_ino;
        let win = |name: &str| {
            windows
                .iter()
                .find(|w| w.0 == name)
                .map_or((0.0, 0.0), |w| (w.1, w.2))
        };
        let (commit, prune, fin) = (win("commit").1, win("prune").1, win("finalize").1);
        #[derive(PartialEq)]
        enum From {
            Start,
            Stage,
            Commit,
        }
        let (from, delay) = match i % 6 {
            0 => (From::Start, rng.unit() * total),
            1 => (
                From::Start,
                win("scan").0 + rng.unit() * (win("scan").1 + win("hash").1),
            ),
            // Staging is seen starting when a temp name appears beside big/b*.
            2 => (From::Stage, rng.unit() * win("stage").1),
            3 => (From::Commit, rng.unit() * commit),
            4 => (From::Commit, commit + rng.unit() * prune),
            _ => (From::Commit, commit + prune + rng.unit() * fin * 1.2),
        };
        let big_dir = dst.join("big");
        let (st, killed, err) = run_and_kill_after(
            cmd(&state, sync_args(&src.root, &dst, &extra)),
            || match from {
                From::Start => true,
                From::Stage => std::fs::read_dir(&big_dir).is_ok_and(|mut d| {
                    d.any(|e| e.is_ok_and(|e| e.file_name().as_encoded_bytes().starts_with(TMP)))
                }),
                // Not `lstat` (which panics without DST): on the portable layer DST is absent
                // for one rename during the switch.
                From::Commit => {
                    use std::os::unix::fs::MetadataExt;
                    std::fs::symlink_metadata(dst.join("big/b0")).is_ok_and(|m| m.ino() != b0)
                }
            },
            Duration::from_secs_f64(delay),
        );
        if !killed {
            assert_eq!(
                st.code(),
                Some(0),
                "iteration {i}: unkilled run failed:\n{err}"
            );
        }
        let now = live_or_aside(&dst);
        let bad = old_or_new(&lo, &ln, &now);
        assert!(
            bad.is_empty(),
            "iteration {i}, killed after {delay:.4} s: invariants broken:\n{}",
            bad.join("\n")
        );
        *hist.entry(classify(&lo, &ln, &now)).or_default() += 1;

        // Sometimes kill the resuming run as well.
        if i % 4 == 1 {
            let d2 = rng.unit() * total;
            let (st, killed, err) = run_and_kill(
                cmd(&state, sync_args(&src.root, &dst, &extra)),
                Duration::from_secs_f64(d2),
            );
            if !killed {
                assert_eq!(
                    st.code(),
                    Some(0),
                    "iteration {i}: resumed run failed:\n{err}"
                );
            }
            let bad = old_or_new(&lo, &ln, &live_or_aside(&dst));
            assert!(
                bad.is_empty(),
                "iteration {i}, resumed run killed after {d2:.4} s: invariants broken:\n{}",
                bad.join("\n")
            );
        }

        let o = cmd(&state, sync_args(&src.root, &dst, &[]))
            .output()
            .expect("run");
        expect_code(&o, 0);
        let l = listing(&dst);
        let left = leftovers(&l);
        assert!(
            left.is_empty(),
            "iteration {i}: leftovers after a full run: {left:?}"
        );
        if l != ln {
            panic!(
                "iteration {i} (killed after {delay:.4} s): did not converge:\n{}",
                ln.diff(&l)
            );
        }
    }
    eprintln!("crash_loop: {iters} iterations, interrupted states seen: {hist:?}");
}

// ---------------------------------------------------------------------------------------------
// 5. Bad input.

/// Runs `jailsync ARGS` and asserts exit 2 with a message naming `path` and `cause`.
#[track_caller]
fn refused(e: &Env, args: &[&OsStr], path: &str, cause: &str) {
    let o = e.js(args);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(path) && err.contains(cause),
        "message should name {path:?} and say {cause:?}:\n{err}"
    );
}

#[test]
fn bad_input_refused_untouched() {
    let e = Env::new().with_dst();
    e.src.file("a", "new").dir("sub").file("sub/f", "x");
    e.dst.file("a", "old").file("orphan", "o").dir("inner");
    let t = e.tmp.path();
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let (ls, ld) = (listing(e.src()), listing(e.dst()));
    let untouched = |what: &str| {
        assert_eq!(listing(e.src()), ls, "{what}: source changed");
        assert_eq!(listing(e.dst()), ld, "{what}: destination changed");
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let nope = t.join("nope");
    refused(
        &e,
        &[OsStr::new("sync"), nope.as_os_str(), dst],
        &s(&nope),
        "No such file",
    );
    let err = stderr(&e.js([OsStr::new("sync"), nope.as_os_str(), dst]));
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "cause repeated:
{err}"
    );
    untouched("missing source");

    let f = e.src.path("a");
    refused(
        &e,
        &[OsStr::new("sync"), f.as_os_str(), dst],
        &s(&f),
        "not a directory",
    );
    untouched("source is a file");

    refused(
        &e,
        &[OsStr::new("sync"), src, src],
        &s(e.src()),
        "same directory",
    );
    let alias = t.join("alias");
    std::os::unix::fs::symlink(e.src(), &alias).unwrap();
    refused(
        &e,
        &[OsStr::new("sync"), alias.as_os_str(), src],
        &s(e.src()),
        "same directory",
    );
    untouched("source is the destination");

    let inside = e.src.path("sub/new");
    refused(
        &e,
        &[OsStr::new("sync"), src, inside.as_os_str()],
        "sub/new",
        "inside the source",
    );
    assert!(
        !inside.exists(),
        "destination inside the source was created"
    );
    untouched("destination inside the source");

    let inner = e.dst.path("inner");
    refused(
        &e,
        &[OsStr::new("sync"), inner.as_os_str(), dst],
        &s(&inner),
        "inside the destination",
    );
    untouched("source inside the destination");

    // DST a symlink to elsewhere: refused, then accepted with --follow-dst.
    let elsewhere = Tree::new(t.join("elsewhere"));
    elsewhere.file("keep", "k");
    let le = listing(&elsewhere.root);
    let dlink = t.join("dlink");
    std::os::unix::fs::symlink(&elsewhere.root, &dlink).unwrap();
    refused(
        &e,
        &[OsStr::new("sync"), src, dlink.as_os_str()],
        &s(&dlink),
        "symlink",
    );
    assert_eq!(
        listing(&elsewhere.root),
        le,
        "symlinked destination's target changed"
    );
    untouched("destination is a symlink");
    let o = e.js([
        OsStr::new("sync"),
        OsStr::new("--follow-dst"),
        src,
        dlink.as_os_str(),
    ]);
    expect_code(&o, 0);
    assert_same(e.src(), &elsewhere.root);
    assert!(dlink.symlink_metadata().unwrap().file_type().is_symlink());
    // --follow-dst still refuses a link into the source, or to the source itself.
    let (l1, l2) = (t.join("l1"), t.join("l2"));
    std::os::unix::fs::symlink(e.src.path("sub"), &l1).unwrap();
    std::os::unix::fs::symlink(e.src(), &l2).unwrap();
    let fdst = OsStr::new("--follow-dst");
    refused(
        &e,
        &[OsStr::new("sync"), fdst, src, l1.as_os_str()],
        &s(&l1),
        "inside the source",
    );
    refused(
        &e,
        &[OsStr::new("sync"), fdst, src, l2.as_os_str()],
        &s(&l2),
        "same directory",
    );
    // A destination that is a file.
    let dfile = t.join("dfile");
    std::fs::write(&dfile, "f").unwrap();
    refused(
        &e,
        &[OsStr::new("sync"), src, dfile.as_os_str()],
        &s(&dfile),
        "not a directory",
    );
    assert_eq!(std::fs::read(&dfile).unwrap(), b"f");
    untouched("destination links and files");

    // State dir unusable: a regular file; inside the destination; inside the source.
    let sfile = t.join("statefile");
    std::fs::write(&sfile, "not a dir").unwrap();
    for state in [sfile.clone(), e.dst.path("state"), e.src.path("state")] {
        let o = run([
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("sync"),
            src,
            dst,
        ]);
        expect_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(&s(&state)),
            "message should name the state dir:\n{err}"
        );
        untouched(&format!("state dir {}", state.display()));
    }
    assert_eq!(std::fs::read(&sfile).unwrap(), b"not a dir");
}

#[test]
fn bad_manifest_refused_corrupt_cache_ignored() {
    let e = Env::new();
    e.src
        .file("a", "one")
        .file("b", "two")
        .dir("d")
        .file("d/c", "three");
    e.sync(&[]);
    let m = e.tmp.path().join("m");
    let o = e.js([
        OsStr::new("manifest"),
        e.src().as_os_str(),
        OsStr::new("-o"),
        m.as_os_str(),
    ]);
    expect_code(&o, 0);
    let good = std::fs::read_to_string(&m).unwrap();
    let verify = |text: &str| {
        std::fs::write(&m, text).unwrap();
        e.js([OsStr::new("verify"), m.as_os_str(), e.dst().as_os_str()])
    };
    expect_code(&verify(&good), 0);
    let ms = m.to_str().unwrap();

    // Future version, garbage, a bad field, a path escaping the tree: exit 2, file:line.
    let future = good.replacen(good.lines().next().unwrap(), "#jailsync-manifest 99", 1);
    let lines: Vec<&str> = good.lines().collect();
    let bad_at = |n: usize, repl: &str| {
        let mut l = lines.clone();
        l[n - 1] = repl;
        l.join("\n") + "\n"
    };
    // The last entry's line (an `#end` line follows it).
    let n_last = 1 + lines.iter().rposition(|l| !l.starts_with('#')).unwrap();
    let cases = [
        (future, format!("{ms}:1:"), "newer"),
        ("garbage\n".to_string(), format!("{ms}:1:"), "manifest"),
        (
            bad_at(n_last, "a file mode=99999 uid=0 gid=0 mtime=1.0"),
            format!("{ms}:{n_last}:"),
            "mode",
        ),
        (
            bad_at(
                n_last,
                "../etc/passwd file mode=644 uid=0 gid=0 mtime=1.0 size=1",
            ),
            format!("{ms}:{n_last}:"),
            "not a clean relative path",
        ),
        (
            bad_at(
                n_last,
                "/etc/passwd file mode=644 uid=0 gid=0 mtime=1.0 size=1",
            ),
            format!("{ms}:{n_last}:"),
            "not a clean relative path",
        ),
        (
            good[..good.len() - 30].to_string(),
            format!("{ms}:{n_last}:"),
            "",
        ),
    ];
    for (text, at, why) in &cases {
        let o = verify(text);
        expect_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(at.as_str()) && err.contains(why),
            "verify of a bad manifest should name {at} ({why}):\n{err}"
        );
    }

    // Corrupt, truncated and other-version stat caches: ignored, the sync stays exact.
    let caches = || -> Vec<(String, std::path::PathBuf)> {
        std::fs::read_dir(e.state().join("trees"))
            .unwrap()
            .map(|d| d.unwrap().path())
            .filter(|d| d.join("cache").exists())
            .map(|d| {
                let tree = std::fs::read_to_string(d.join("path")).unwrap_or_default();
                (tree, d.join("cache"))
            })
            .collect()
    };
    assert!(caches().len() >= 2, "expected stat caches for both trees");
    type Corrupt<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
    let corruptions: [Corrupt; 3] = [
        &|_| b"\0\x01garbage\nmore".to_vec(),
        &|c| c[..c.len() / 2].to_vec(),
        &|c| {
            let mut c = c.to_vec();
            let n = 8.min(c.len());
            c[..n].copy_from_slice(&b"JSCACHE9"[..n]);
            c
        },
    ];
    for (k, corrupt) in corruptions.iter().enumerate() {
        for (_, c) in caches() {
            let data = std::fs::read(&c).unwrap();
            std::fs::write(&c, corrupt(&data)).unwrap();
        }
        // Same sizes, new contents: only a (wrongly trusted) cache could hide the change.
        e.src
            .file("a", format!("on{k}"))
            .file("d/c", format!("thre{k}"));
        e.sync(&[]);
        e.assert_synced();
    }
    // One flipped bit at the end of the destination's cache (a cached hash, or whatever
    // guards it) must not make an identical tree look different, nor a different one equal.
    let dst_c = std::fs::canonicalize(e.dst()).unwrap();
    let (_, c) = caches()
        .into_iter()
        .find(|(t, _)| Path::new(t) == dst_c)
        .expect("a cache for the destination");
    let mut data = std::fs::read(&c).unwrap();
    *data.last_mut().unwrap() ^= 1;
    std::fs::write(&c, &data).unwrap();
    let v = e.js([
        OsStr::new("verify"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&v, 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Concurrent runs.

/// The pid in the lock file of a destination, once some run has written it.
fn lock_holder(state: &Path) -> Option<u32> {
    let trees = std::fs::read_dir(state.join("trees")).ok()?;
    for t in trees.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("lock")) {
            if let Some(pid) = s.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return Some(pid);
            }
        }
    }
    None
}

#[test]
fn concurrent_run_refused_then_stale_lock_taken_over() {
    let e = Env::new();
    let mut rng = Rng::new(5);
    for i in 0..3000 {
        e.src.file(format!("d{}/f{i}", i % 30), rng.bytes(200));
    }
    let state = e.state();
    let args = sync_args(e.src(), e.dst(), &[]);
    // The first run is caught holding the lock and frozen (SIGSTOP), so "slow" is certain.
    let mut first = None;
    for _ in 0..10 {
        remove_tree(e.dst());
        remove_tree(&state);
        let mut child = cmd(&state, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let t0 = Instant::now();
        while lock_holder(&state) != Some(pid) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(100));
        }
        freeze(pid);
        if child.try_wait().unwrap().is_none() && lock_holder(&state) == Some(pid) {
            first = Some(child);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut first = first.expect("could not catch a run holding its lock");
    let pid = first.id();

    let t0 = Instant::now();
    let o = run([OsStr::new("--state-dir"), state.as_os_str()]
        .into_iter()
        .chain(args.iter().copied()));
    let took = t0.elapsed();
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("locked by pid {pid} since "))
            && err.contains(e.dst().to_str().unwrap()),
        "second run should name the holder and the destination:\n{err}"
    );
    let since = err.split(" since ").nth(1).unwrap_or("");
    let since = since.split_whitespace().next().unwrap_or("");
    assert!(
        since.len() >= 20 && since.ends_with('Z'),
        "lock time looks wrong: {since:?}"
    );
    assert!(
        err.contains("--wait"),
        "the refusal should say how to queue:\n{err}"
    );
    assert!(
        took < Duration::from_secs(2),
        "second run waited {took:?} instead of failing at once"
    );

    // The holder dies mid-run; the lock is stale and the next run takes it over.
    first.kill().unwrap();
    first.wait().unwrap();
    let o = run([OsStr::new("--state-dir"), state.as_os_str()]
        .into_iter()
        .chain(args.iter().copied()));
    expect_code(&o, 0);
    assert_same(e.src(), e.dst());
    assert_ne!(
        lock_holder(&state),
        Some(pid),
        "lock file still names the dead holder"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Confinement: planted symlinks and a racing attacker.

/// `renameat2(RENAME_EXCHANGE)` of two paths.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).unwrap();
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
fn planted_symlink_replaced_not_followed() {
    let e = Env::new().with_dst();
    let outside = Tree::new(e.tmp.path().join("outside"));
    outside
        .file("sentinel", "do not touch")
        .file("a", "outside a")
        .file("sub/c", "outside c")
        .file("orphan", "outside orphan");
    e.src
        .file("victim/a", "new a")
        .file("victim/b", "new b")
        .file("victim/sub/c", "new c");
    e.src.file("plain/x", "x").file("asfile", "f");
    // Where the jail has directories, the live tree holds symlinks to the outside dir: one at
    // the top, one below a real directory, one where the jail has a file.
    let b = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    e.dst.symlink("victim", b(&outside.root));
    e.dst
        .dir("plain")
        .symlink("plain/x", b(&outside.path("sentinel")));
    e.dst.symlink("asfile", b(&outside.path("a")));
    let (lo, ls) = (listing(&outside.root), listing(e.src()));
    e.sync(&[]);
    assert_eq!(
        listing(&outside.root),
        lo,
        "written through a planted symlink"
    );
    assert_eq!(listing(e.src()), ls, "jail changed");
    e.assert_synced();
}

/// An attacker keeps swapping live directories for symlinks to an outside directory (the
/// outside one a copy of the live one, so any write, chmod, utime or delete through the link
/// would show there) while syncs run.
#[test]
fn racing_symlink_swap_never_followed() {
    let e = Env::new().with_dst();
    let t = e.tmp.path().to_path_buf();
    let mut rng = Rng::new(77);
    for i in 0..150 {
        e.dst.file(format!("victim/f{i}"), rng.bytes(100));
        e.dst.file(format!("w/x/y/g{i}"), rng.bytes(100));
    }
    for i in 0..40 {
        e.dst.file(format!("victim/orphan{i}"), "o");
        e.dst.file(format!("w/x/y/orphan{i}"), "o");
    }
    let outside = t.join("outside");
    copy_tree(&e.dst.path("victim"), &outside);
    std::fs::write(outside.join("sentinel"), "do not touch").unwrap();
    let lo = listing(&outside);
    // Parking places for the real directories, inside DST but excluded from the sync.
    std::os::unix::fs::symlink(&outside, e.dst.path(".park")).unwrap();
    std::os::unix::fs::symlink(&outside, e.dst.path("w/x/.park")).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swaps = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let racers: Vec<_> = [("victim", ".park"), ("w/x/y", "w/x/.park")]
        .into_iter()
        .enumerate()
        .map(|(k, (live, park))| {
            let (live, park) = (e.dst.path(live), e.dst.path(park));
            let (stop, swaps) = (stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(k as u64);
                let mut swapped = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if exchange(&live, &park).is_ok() {
                        swapped = !swapped;
                        swaps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_micros(rng.below(200)));
                }
                // Leave the real directory in place.
                if swapped {
                    exchange(&live, &park).unwrap();
                }
            })
        })
        .collect();

    let args = |extra: &'static [&'static str]| {
        let mut v: Vec<std::ffi::OsString> =
            vec!["sync".into(), "--exclude".into(), ".park".into()];
        v.extend(extra.iter().map(|s| s.into()));
        v.push(e.src().into());
        v.push(e.dst().into());
        v
    };
    let mut codes = BTreeMap::new();
    for round in 0..8 {
        // New contents every round, so every run has writes, renames, chmods and deletes to do.
        for i in 0..150 {
            e.src.file(format!("victim/f{i}"), rng.bytes(100 + round));
            e.src.file(format!("w/x/y/g{i}"), rng.bytes(100 + round));
            if round % 2 == 1 {
                e.src.mode(format!("victim/f{i}"), 0o600);
            }
        }
        let ls = listing(e.src());
        let o = e.js(args(&[]));
        let err = stderr(&o);
        assert!(
            o.status.code().is_some() && !err.contains("panicked"),
            "round {round}: {err}"
        );
        *codes.entry(o.status.code()).or_insert(0) += 1;
        assert_eq!(
            listing(&outside),
            lo,
            "round {round}: the outside directory changed:\n{err}"
        );
        assert_eq!(listing(e.src()), ls, "round {round}: the jail changed");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in racers {
        r.join().unwrap();
    }
    let swaps = swaps.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("racing_symlink_swap: {swaps} swaps, exit codes {codes:?}");
    assert!(swaps > 100, "the racers hardly ran");
    assert_eq!(listing(&outside), lo, "the outside directory changed");
    // Once the attacker stops, a run converges. The parking places are excluded and, since
    // the sync also renames the swapped names, may hold either a link or a directory now.
    for park in [".park", "w/x/.park"] {
        let p = e.dst.path(park);
        if p.symlink_metadata().unwrap().is_dir() {
            remove_tree(&p);
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let o = e.js(args(&[]));
    expect_code(&o, 0);
    assert_same(e.src(), e.dst());
}

// ---------------------------------------------------------------------------------------------
// 3. A jail file rewritten while it is copied.

const CHUNK: usize = 1 << 20;

/// Chunk `j` of version `v` of the rewritten file: every 8-byte word is `v << 32 | j`.
fn version_chunk(v: u64, j: usize, buf: &mut [u8]) {
    let w = (v << 32 | j as u64).to_le_bytes();
    for c in buf.chunks_mut(8) {
        c.copy_from_slice(&w[..c.len()]);
    }
}

/// The version of each chunk of `data`, or None where a chunk is no version at all.
fn chunk_versions(data: &[u8]) -> Vec<Option<u64>> {
    let mut want = vec![0u8; CHUNK];
    data.chunks(CHUNK)
        .enumerate()
        .map(|(j, c)| {
            let v = u64::from_le_bytes(c.get(..8)?.try_into().unwrap()) >> 32;
            version_chunk(v, j, &mut want);
            (c == &want[..c.len()]).then_some(v)
        })
        .collect()
}

/// (version, chunk, just before the write, just after it).
type ChunkWrite = (u64, usize, Instant, Instant);

/// A writer rewriting a jail file in place, chunk by chunk, version after version (pausing
/// `pause` between whole versions), logging when each chunk landed.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    log: std::sync::Arc<std::sync::Mutex<Vec<ChunkWrite>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// `mapped`: write through a shared mapping (as linkers do) instead of `pwrite`.
    fn start(path: &Path, chunks: usize, first: u64, pause: Duration, mapped: bool) -> Writer {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::FileExt;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, l, p) = (stop.clone(), log.clone(), path.to_path_buf());
        let thread = std::thread::spawn(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap();
            let len = chunks * CHUNK;
            let map = if mapped {
                // SAFETY: a fresh shared mapping of a file opened read-write, unmapped below.
                let m = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        f.as_raw_fd(),
                        0,
                    )
                };
                assert_ne!(m, libc::MAP_FAILED, "mmap");
                Some(m)
            } else {
                None
            };
            let mut buf = vec![0u8; CHUNK];
            let mut v = first;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                for j in 0..chunks {
                    version_chunk(v, j, &mut buf);
                    let t0 = Instant::now();
                    match map {
                        // SAFETY: chunk j lies inside the `len`-byte mapping.
                        Some(m) => unsafe {
                            std::ptr::copy_nonoverlapping(
                                buf.as_ptr(),
                                m.cast::<u8>().add(j * CHUNK),
                                CHUNK,
                            )
                        },
                        None => f.write_all_at(&buf, (j * CHUNK) as u64).unwrap(),
                    }
                    l.lock().unwrap().push((v, j, t0, Instant::now()));
                }
                v += 1;
                std::thread::sleep(pause);
            }
            if let Some(m) = map {
                // SAFETY: as mapped above.
                unsafe { libc::munmap(m, len) };
            }
        });
        Writer {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// At most how long the source held exactly `state` (a whole version, or a version partly
    /// overwritten by the next), if it ever did: from just before the write that made it to
    /// just after the write that ended it, so a stall of the writer anywhere counts.
    /// A state may also have one chunk caught half-written (`None`) between the two
    /// versions: the writer stopped inside that chunk's write for at most the time it took.
    fn held(&self, state: &[Option<u64>]) -> Option<Duration> {
        let log = self.log.lock().unwrap();
        let v = match state[0] {
            Some(v) => v,
            None => state.get(1).copied().flatten()? + 1,
        };
        let k = state.iter().take_while(|&&c| c == Some(v)).count();
        let partial = k < state.len() && state[k].is_none();
        let rest = &state[k + usize::from(partial)..];
        if rest.iter().any(|&c| c != Some(v.wrapping_sub(1))) {
            return None; // not "prefix of one version, rest of the previous"
        }
        let find = |j: usize| log.iter().position(|&(lv, lj, _, _)| lv == v && lj == j);
        if partial {
            let i = find(k)?;
            return Some(log[i].3 - log[i].2);
        }
        // The state began with the write of chunk k-1 of version v and ended with the next.
        let i = find(k.checked_sub(1)?)?;
        let end = log.get(i + 1).map_or_else(Instant::now, |e| e.3);
        Some(end - log[i].2)
    }

    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn source_rewritten_during_copy_never_torn() {
    let chunks = 24;
    let e = Env::new().with_dst();
    let mut rng = Rng::new(3);
    let old_big = rng.bytes(chunks * CHUNK);
    let old_hash = blake3::hash(&old_big);
    e.dst.file("big", &old_big).file("small", "old small");
    // Same size on both sides, so both are hashed before planning.
    e.src.file("big", &old_big).file("small", "new small");
    let big_src = e.src.path("big");
    let big_dst = e.dst.path("big");
    let sync = || e.js(sync_args(e.src(), e.dst(), &[]));

    // Every copy of the file is made to last 300 ms (strace delays copy_file_range) while a
    // writer rewrites it without pause: no stable copy can be had (nor, where the copy falls
    // back to read/write, a quiet moment). The old file stays, the run names the path and
    // exits 1, and the other entries are synced.
    if have("strace") {
        let mut w = Writer::start(&big_src, chunks, 1 << 20, Duration::ZERO, false);
        let mut c = std::process::Command::new("strace");
        c.args([
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=copy_file_range",
            "-e",
            "inject=copy_file_range:delay_enter=300000",
            BIN,
            "--state-dir",
        ])
        .arg(e.state())
        .args(sync_args(e.src(), e.dst(), &[]))
        .env_remove("JAILSYNC_STATE_DIR");
        let o = c.output().expect("run strace");
        w.stop();
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains(big_src.to_str().unwrap()) || err.contains(big_dst.to_str().unwrap()),
            "the unstable file should be named:\n{err}"
        );
        assert_eq!(
            blake3::hash(&std::fs::read(&big_dst).unwrap()),
            old_hash,
            "old version replaced"
        );
        assert_eq!(std::fs::read(e.dst.path("small")).unwrap(), b"new small");
    } else {
        eprintln!("strace not installed: the forced-slow copy case is skipped");
    }

    // A writer pausing between whole versions: every run leaves the old file or a copy the
    // source really held unchanged for longer than a copy takes (a whole version, or a
    // half-rewritten one whose writer was descheduled); a torn copy is content the source
    // never held still (24 MiB cannot be copied in under a millisecond).
    let mut w = Writer::start(&big_src, chunks, 1, Duration::from_millis(40), false);
    let mut got = Vec::new();
    for round in 0..8 {
        e.src.file("small", format!("round {round}"));
        let o = sync();
        let code = o.status.code();
        assert!(
            matches!(code, Some(0) | Some(1)),
            "round {round}: {}",
            stderr(&o)
        );
        if code == Some(1) {
            assert!(stderr(&o).contains("big"), "round {round}: {}", stderr(&o));
        }
        let d = std::fs::read(&big_dst).unwrap();
        if blake3::hash(&d) == old_hash {
            got.push((code, None));
            continue;
        }
        let state = chunk_versions(&d);
        match w.held(&state) {
            Some(_) if state.iter().all(|&c| c == state[0]) => got.push((code, state[0])),
            Some(t) if t >= Duration::from_millis(1) => {
                eprintln!("round {round}: copied a half-written version the writer left for {t:?}");
                got.push((code, state[0]));
            }
            held => panic!(
                "round {round}: torn copy installed (chunk versions {state:?}, held {held:?}):\n{}",
                stderr(&o)
            ),
        }
    }
    w.stop();
    eprintln!("source_rewritten: (exit, version installed) per round: {got:?}");

    // Quiet again: a rerun converges.
    e.sync(&[]);
    e.assert_synced();
}

// ---------------------------------------------------------------------------------------------
// 6. A full disk, unreadable entries.

/// The destination lives on an 8 MiB tmpfs in a private mount namespace; the jail does not fit.
/// Per-entry errors, exit 1, every file old or new, the old version of a big file that could
/// not be staged still in place, nothing pruned whose replacement failed, no temp files left;
/// once the filesystem is big enough a rerun converges.
#[test]
fn enospc_on_small_tmpfs() {
    if !is_root() || !have("unshare") || !have("nsenter") {
        eprintln!("skipped: needs root, unshare and nsenter for a private tmpfs");
        return;
    }
    let tmp = tempdir("enospc");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(ns) = TmpfsNs::new(&mnt, "8m") else {
        panic!("could not mount a tmpfs in a private mount namespace");
    };
    let mut rng = Rng::new(11);
    // Old live tree (on the tmpfs): a 5 MiB file the jail changes (staging it needs 10 MiB at
    // once: it can never be written), a type change whose new file is big, orphans, small
    // files; new files of which only some fit.
    let old = Tree::new(tmp.path().join("old"));
    let src = Tree::new(tmp.path().join("src"));
    let big_old = rng.bytes(5 << 20);
    old.file("big", &big_old).mtime("big", 1_600_000_000, 0);
    src.file("big", rng.bytes(5 << 20))
        .mtime("big", 1_600_000_001, 0);
    for i in 0..5 {
        old.file(format!("tc/f{i}"), rng.bytes(1000));
    }
    src.file("tc", rng.bytes(2 << 20));
    for i in 0..20 {
        old.file(format!("orphans/o{i}"), rng.bytes(100));
        old.file(format!("small/s{i}"), rng.bytes(500));
        src.file(format!("small/s{i}"), rng.bytes(500));
    }
    for i in 0..4 {
        src.file(format!("new/n{i}"), rng.bytes(1 << 20));
    }
    let dst_out = ns.outside("dst");
    copy_tree(&old.root, &dst_out);
    let (lo, ln) = (listing(&old.root), listing(&src.root));
    let state = tmp.path().join("state");
    let run_in_ns = || {
        ns.command(BIN)
            .arg("--state-dir")
            .arg(&state)
            // --force: the orphans and the type change delete 26 of DST's 49 entries, more
            // than half, which is refused by default.
            .args(sync_args(&src.root, &ns.inside("dst"), &["--force"]))
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .expect("run in namespace")
    };

    for run in 0..2 {
        let o = run_in_ns();
        expect_code(&o, 1);
        let err = stderr(&o);
        let dst_in = ns.inside("dst");
        let named = err
            .lines()
            .filter(|l| {
                l.contains("No space left on device") && l.contains(dst_in.to_str().unwrap())
            })
            .count();
        eprintln!("enospc run {run}:\n{err}");
        assert!(
            named >= 1,
            "run {run}: expected per-entry ENOSPC errors naming paths:\n{err}"
        );
        let now = listing(&dst_out);
        let bad = old_or_new(&lo, &ln, &now);
        assert!(
            bad.is_empty(),
            "run {run}: invariants broken:\n{}\n{err}",
            bad.join("\n")
        );
        let left = leftovers(&now);
        assert!(
            left.is_empty(),
            "run {run}: temp files left behind: {left:?}\n{err}"
        );
        assert!(
            std::fs::read(dst_out.join("big")).unwrap() == big_old,
            "run {run}: the old big file is not intact"
        );
        // tc: if the new file could not be installed, the old directory keeps all its files.
        if now.get("tc").is_some_and(|r| r.kind == 'd') {
            for i in 0..5 {
                assert!(
                    now.get(format!("tc/f{i}")).is_some(),
                    "run {run}: tc/f{i} pruned though tc was not replaced"
                );
            }
        }
    }

    // Room enough now (remount bigger, in the namespace): a rerun converges exactly.
    let st = ns
        .command("mount")
        .args(["-o", "remount,size=64m"])
        .arg(ns.inside(""))
        .status()
        .unwrap();
    assert!(st.success(), "remount");
    let o = run_in_ns();
    expect_code(&o, 0);
    let now = listing(&dst_out);
    assert!(now == ln, "did not converge:\n{}", ln.diff(&now));
}

/// Root reads everything, so the unreadable-entry case runs the binary as `nobody`
/// (setpriv): a source file and a source directory it may not read. The rest is synced, the
/// run exits 1 naming them, and their live counterparts are not deleted or replaced.
/// A new state dir under `t`, and it and `dst` given to user nobody.
fn owned_by_nobody(t: &Path, dst: &Path) -> std::path::PathBuf {
    let state = t.join("state");
    std::fs::create_dir(&state).unwrap();
    let st = std::process::Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dst)
        .arg(&state)
        .status()
        .unwrap();
    assert!(st.success());
    state
}

/// `jailsync sync SRC DST` as user nobody (uid/gid 65534, no groups), with `state`.
fn sync_as_nobody(src: &Path, dst: &Path, state: &Path) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(sync_args(src, dst, &[]))
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap()
}

#[test]
fn eacces_on_single_entries() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv to run as nobody");
        return;
    }
    let tmp = tempdir("eacces");
    let t = tmp.path();
    let chmod = |p: &Path, m: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    chmod(t, 0o755);
    let src = Tree::new(t.join("src"));
    let dst = Tree::new(t.join("dst"));
    src.file("ok", "new ok")
        .file("secret", "new secret")
        .file("closed/x", "new x");
    src.file("sub/y", "new y");
    dst.file("ok", "old ok")
        .file("secret", "old secret")
        .file("closed/x", "old x");
    dst.file("closed/only_live", "keep me")
        .file("sub/y", "old y");
    src.file("newsecret", "n");
    src.mode("secret", 0o000)
        .mode("closed", 0o000)
        .mode("newsecret", 0o000);
    let state = owned_by_nobody(t, &dst.root);
    let ls = listing(&src.root);
    let o = sync_as_nobody(&src.root, &dst.root, &state);
    expect_code(&o, 1);
    let err = stderr(&o);
    for name in ["secret", "closed"] {
        assert!(
            err.lines()
                .any(|l| l.contains(name) && l.contains("Permission denied")),
            "{name} should be reported with its cause:\n{err}"
        );
    }
    // A copy that fails on the jail's side says so (errors are keyed by the live path).
    assert!(
        err.lines().any(|l| l.contains("newsecret")
            && l.contains("source")
            && l.contains("Permission denied")),
        "newsecret: the message should say the source could not be read:\n{err}"
    );
    assert!(!dst.path("newsecret").exists());
    let read = |p: &str| {
        std::fs::read_to_string(dst.path(p)).unwrap_or_else(|e| panic!("{p}: {e}\n{err}"))
    };
    assert_eq!(read("ok"), "new ok");
    assert_eq!(read("sub/y"), "new y");
    assert_eq!(
        read("secret"),
        "old secret",
        "unreadable source replaced its live file"
    );
    assert_eq!(read("closed/x"), "old x");
    assert_eq!(
        read("closed/only_live"),
        "keep me",
        "deleted below an unlistable source dir"
    );
    assert_eq!(listing(&src.root), ls, "jail changed");

    // A state dir this user cannot use: refused before anything is touched.
    let locked = t.join("rootonly");
    std::fs::create_dir(&locked).unwrap();
    chmod(&locked, 0o700);
    let ld = listing(&dst.root);
    let o = sync_as_nobody(&src.root, &dst.root, &locked);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(locked.to_str().unwrap()) && err.contains("Permission denied"),
        "the unusable state dir should be named with the cause:\n{err}"
    );
    assert_eq!(listing(&dst.root), ld, "destination touched");
}

/// Entries whose metadata the kernel refuses while they are staged (as `nobody`, setting a
/// `security.*` xattr is EPERM): a new file, a symlink, a new directory, and a file inside a
/// new directory. The first is reported and nothing is switched: nothing half-made is
/// published, and no temporary name is left for the next run to clean.
#[test]
fn metadata_refused_while_staged_leaves_nothing() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv to run as nobody");
        return;
    }
    let tmp = tempdir("metafail");
    let t = tmp.path();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let src = Tree::new(t.join("src"));
    let dst = Tree::new(t.join("dst"));
    src.file("plain", "p").file("f", "f").file("newdir/g", "g");
    src.file("okdir/fine", "fine").file("okdir/bad", "bad");
    src.file("old", "new content").symlink("lnk", "target");
    dst.file("old", "old content");
    let mut refused = Vec::new();
    for p in ["f", "newdir", "okdir/bad", "old", "lnk"] {
        let st = std::process::Command::new("setfattr")
            .args(["-h", "-n", "security.jailsync-test", "-v", "1"])
            .arg(src.path(p))
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("skipped: cannot set security.* xattrs here (setfattr, filesystem)");
            return;
        }
        refused.push(p);
    }
    let state = owned_by_nobody(t, &dst.root);
    let o = sync_as_nobody(&src.root, &dst.root, &state);
    expect_code(&o, 1);
    let err = stderr(&o);
    // One release, one switch: the first entry that cannot be staged gives up the run.
    assert!(
        refused
            .iter()
            .any(|p| err.contains(dst.path(p).to_str().unwrap()))
            && err.contains("nothing was switched"),
        "a refused entry should be reported:\n{err}"
    );
    let l = listing(&dst.root);
    let left = leftovers(&l);
    assert!(left.is_empty(), "temporary names left: {left:?}\n{err}");
    for p in ["f", "newdir", "newdir/g", "okdir/bad", "lnk"] {
        assert!(l.get(p).is_none(), "{p} published though it failed:\n{err}");
    }
    assert_eq!(
        std::fs::read_to_string(dst.path("old")).unwrap(),
        "old content"
    );
    // Nothing of the release went live: the others were not published either.
    for p in ["plain", "okdir/fine"] {
        assert!(
            l.get(p).is_none(),
            "{p} published though the run gave up:\n{err}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. --fsync.

/// Under strace: with `--fsync` every staged file and directory of the next tree is fsynced
/// before the exchange that publishes them (and the journal's directory too), and DST's parent
/// after it; without it, nothing is.
#[test]
fn fsync_orders_data_then_exchange_then_parent() {
    if !have("strace") {
        eprintln!("skipped: strace not installed");
        return;
    }
    if portable() {
        eprintln!("skipped: the portable layer switches by three renames, not one exchange; the Linux pass checks the order");
        return;
    }
    let e = Env::new().with_dst();
    e.dst
        .file("a/changed", "old")
        .file("top", "old top")
        .file("a/gone", "x");
    e.src
        .file("a/changed", "new!")
        .file("top", "new top")
        .file("a/added", "added");
    e.src.file("newdir/f1", "f1").file("newdir/sub/f2", "f2");
    let log = e.tmp.path().join("strace.log");
    let traced = |extra: &[&str]| {
        let o = std::process::Command::new("strace")
            .args(["-f", "-qq", "-y", "-s", "256", "-o"])
            .arg(&log)
            .args(["-e", "trace=fsync,fdatasync,rename,renameat,renameat2"])
            .arg(BIN)
            .arg("--state-dir")
            .arg(e.state())
            .args(sync_args(e.src(), e.dst(), extra))
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .expect("run strace");
        expect_code(&o, 0);
        std::fs::read_to_string(&log).unwrap()
    };
    let text = traced(&["--fsync"]);
    let lines: Vec<&str> = text.lines().collect();
    let dst = e.dst().to_str().unwrap().to_string();
    let parent = e.dst().parent().unwrap().to_str().unwrap().to_string();
    let next = format!("{parent}/.jailsync-dst/next");
    // fsync'd paths (strace -y prints the fd's path), with their line numbers.
    let fsyncs: Vec<(usize, &str)> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("fsync(") || l.contains("fdatasync("))
        .filter_map(|(i, l)| {
            let a = l.find('<')? + 1;
            let b = a + l[a..].find('>')?;
            Some((i, &l[a..b]))
        })
        .collect();
    let exchange = lines
        .iter()
        .position(|l| l.contains("RENAME_EXCHANGE") && l.contains("\"next\"") && l.contains("= 0"))
        .unwrap_or_else(|| panic!("no exchange of the next tree in the trace:\n{text}"));
    for f in [
        "a/changed",
        "top",
        "a/added",
        "newdir/f1",
        "newdir/sub/f2",
        "newdir",
        "a",
        "",
    ] {
        let want = if f.is_empty() {
            next.clone()
        } else {
            format!("{next}/{f}")
        };
        assert!(
            fsyncs.iter().any(|(j, p)| *j < exchange && *p == want),
            "{want} not fsynced before the exchange:\n{text}"
        );
    }
    assert!(
        fsyncs.iter().any(|(j, p)| *j > exchange && *p == parent),
        "{parent} (DST's parent) not fsynced after the exchange:\n{text}"
    );
    assert!(
        !fsyncs
            .iter()
            .any(|(_, p)| p.starts_with(&format!("{dst}/"))),
        "{text}"
    );
    // And without --fsync, no fsync at all.
    e.src.file("top", "newer top");
    let text = traced(&[]);
    assert!(
        !text.contains("fsync(") && !text.contains("fdatasync("),
        "fsync without --fsync:\n{text}"
    );
    e.assert_synced();
}

/// Live entries the kernel refuses to change (`chattr +i`: EPERM on rename, unlink, create)
/// that the release changes: the run is refused naming the first, exit 2, nothing changed and
/// no temporary name left; once they are unlocked, the same run syncs.
#[test]
fn immutable_live_entries_the_release_changes_refuse_it() {
    let e = Env::new().with_dst();
    e.src
        .file("locked", "new")
        .file("idir/x", "new x")
        .file("ok", "ok");
    e.dst.file("locked", "old").file("idir/orphan", "o");
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .arg(e.dst.path("locked"))
            .arg(e.dst.path("idir"))
            .status()
            .is_ok_and(|s| s.success())
    };
    if !is_root() || !chattr("+i") {
        eprintln!("skipped: chattr +i unsupported here (needs root and ext4/xfs/btrfs)");
        return;
    }
    let o = e.js(sync_args(e.src(), e.dst(), &["--no-rollback"]));
    let ok = chattr("-i");
    assert!(ok, "chattr -i");
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("immutable or append-only") && err.contains("chattr -i"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(e.dst.path("locked")).unwrap(),
        "old"
    );
    assert_eq!(
        std::fs::read_to_string(e.dst.path("idir/orphan")).unwrap(),
        "o"
    );
    assert!(
        !e.dst.path("ok").exists(),
        "the release was applied in part"
    );
    let left = leftovers(&listing(e.dst()));
    assert!(left.is_empty(), "temp files left: {left:?}");
    e.sync(&[]);
    e.assert_synced();
}

/// Jail files replaced (rename over), deleted and recreated, grown and shrunk while syncs
/// run: every live file is always whole (one of the versions the jail ever had, or its old
/// one), runs exit 0 or 1, and once the jail is quiet a rerun converges.
#[test]
fn source_files_replaced_and_vanishing_during_sync() {
    let e = Env::new().with_dst();
    let versions = |i: usize, v: u64| -> Vec<u8> {
        // Every version is self-describing: a header and a size that depends on it.
        let mut d = format!("file {i} version {v}\n").into_bytes();
        d.resize(1000 + (v as usize % 7) * 20_000, b'0' + (v % 10) as u8);
        d
    };
    let n = 200;
    for i in 0..n {
        e.dst.file(format!("f{i}"), format!("old {i}"));
        e.src.file(format!("f{i}"), versions(i, 0));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Files that were ever absent from the jail for a moment: a listing that misses one is
    // a genuine (if brief) deletion and may be mirrored.
    let gone = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let src = e.src().to_path_buf();
    let churner = {
        let (stop, gone) = (stop.clone(), gone.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(9);
            let mut v = 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let i = rng.below(n as u64) as usize;
                let p = src.join(format!("f{i}"));
                match rng.below(3) {
                    // Replaced whole by a rename.
                    0 => {
                        let t = src.join(format!(".new{i}"));
                        std::fs::write(&t, versions(i, v)).unwrap();
                        std::fs::rename(&t, &p).unwrap();
                    }
                    // Vanishes for a moment.
                    1 => {
                        gone.lock().unwrap().insert(i);
                        let _ = std::fs::remove_file(&p);
                        std::thread::sleep(Duration::from_micros(200));
                        std::fs::write(&p, versions(i, v)).unwrap();
                    }
                    // Rewritten in place, growing or shrinking.
                    _ => std::fs::write(&p, versions(i, v)).unwrap(),
                }
                v += 1;
            }
        })
    };
    // Whole: the old file or one complete version. (Empty too: the jail really holds an empty
    // file between a rewrite's truncation and its write, and a descheduled writer can leave it
    // so for as long as a copy takes. A torn copy would be a partial version.)
    let whole = |d: &[u8], i: usize| -> bool {
        if d == format!("old {i}").as_bytes() || d.is_empty() {
            return true;
        }
        let head = String::from_utf8_lossy(&d[..d.len().min(40)]).to_string();
        let v = head
            .strip_prefix(&format!("file {i} version "))
            .and_then(|r| r.split('\n').next())
            .and_then(|v| v.parse::<u64>().ok());
        v.is_some_and(|v| d == versions(i, v))
    };
    let mut codes = BTreeMap::new();
    for round in 0..6 {
        let o = e.js([
            OsStr::new("sync"),
            OsStr::new("--exclude"),
            OsStr::new(".new*"),
            e.src().as_os_str(),
            e.dst().as_os_str(),
        ]);
        let code = o.status.code();
        assert!(
            matches!(code, Some(0) | Some(1)),
            "round {round}: {}",
            stderr(&o)
        );
        *codes.entry(code).or_insert(0) += 1;
        for i in 0..n {
            let p = e.dst.path(format!("f{i}"));
            let d = match std::fs::read(&p) {
                Ok(d) => d,
                Err(_) if gone.lock().unwrap().contains(&i) => continue,
                Err(err) => panic!("round {round}: f{i} missing from the live tree: {err}"),
            };
            assert!(
                whole(&d, i),
                "round {round}: f{i} is torn ({} bytes)",
                d.len()
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churner.join().unwrap();
    eprintln!("source_files_replaced: exit codes {codes:?}");
    e.sync(&[]);
    e.assert_synced();
}

/// The jail side of confinement: a jail directory keeps being swapped for a symlink to an
/// outside directory holding secrets under the same names. Nothing from outside the jail may
/// ever reach the live tree, and the outside directory is left alone.
#[test]
fn racing_symlink_swap_in_jail_never_followed() {
    let e = Env::new().with_dst();
    let t = e.tmp.path().to_path_buf();
    let secret = Tree::new(t.join("secret"));
    for i in 0..150 {
        secret.file(format!("f{i}"), format!("SECRET {i}"));
        e.src.file(format!("pkg/f{i}"), format!("jail {i}"));
        e.src.file(format!("a/b/lib/g{i}"), format!("jail lib {i}"));
        secret.file(format!("g{i}"), format!("SECRET lib {i}"));
    }
    let ls = listing(&secret.root);
    let b = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    e.src.symlink(".park", b(&secret.root));
    e.src.symlink("a/b/.park", b(&secret.root));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racers: Vec<_> = [("pkg", ".park"), ("a/b/lib", "a/b/.park")]
        .into_iter()
        .map(|(live, park)| {
            let (live, park) = (e.src.path(live), e.src.path(park));
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(1);
                let mut swapped = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if exchange(&live, &park).is_ok() {
                        swapped = !swapped;
                    }
                    std::thread::sleep(Duration::from_micros(rng.below(200)));
                }
                if swapped {
                    exchange(&live, &park).unwrap();
                }
            })
        })
        .collect();
    let leaked = |l: &Listing| -> Vec<String> {
        l.0.iter()
            .filter(|(_, r)| r.kind == 'f')
            .filter_map(|(p, _)| {
                let d = std::fs::read(e.dst().join(OsStr::from_bytes(p))).ok()?;
                d.starts_with(b"SECRET").then(|| esc(p))
            })
            .collect()
    };
    use std::os::unix::ffi::OsStrExt;
    let mut codes = BTreeMap::new();
    for round in 0..8 {
        // Old live contents to replace (the previous round may have mirrored a swapped-in
        // link; the fixture builder would write through it).
        let pkg = e.dst.path("pkg");
        if pkg.symlink_metadata().is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&pkg).unwrap();
        }
        for i in 0..150 {
            e.dst.file(format!("pkg/f{i}"), format!("old {round}"));
        }
        let o = e.js([
            OsStr::new("sync"),
            OsStr::new("--exclude"),
            OsStr::new(".park"),
            e.src().as_os_str(),
            e.dst().as_os_str(),
        ]);
        let err = stderr(&o);
        assert!(
            o.status.code().is_some() && !err.contains("panicked"),
            "round {round}: {err}"
        );
        *codes.entry(o.status.code()).or_insert(0) += 1;
        let l = listing(e.dst());
        let bad = leaked(&l);
        assert!(
            bad.is_empty(),
            "round {round}: outside content reached the live tree: {bad:?}"
        );
        // (A swapped-in link seen by the scan is copied as a link: that is mirroring, not
        // following.)
        assert_eq!(
            listing(&secret.root),
            ls,
            "round {round}: the outside dir changed"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in racers {
        r.join().unwrap();
    }
    eprintln!("racing_symlink_swap_in_jail: exit codes {codes:?}");
    // Quiet again: the excluded parking links aside, a rerun converges.
    std::fs::remove_file(e.src.path(".park")).unwrap();
    std::fs::remove_file(e.src.path("a/b/.park")).unwrap();
    e.sync(&[]);
    e.assert_synced();
}

// ---------------------------------------------------------------------------------------------
// 1b. Crash loop for `upgrade`: two trees, the package database committed last.

/// Does `now` show any new content of `new` (not already in `old`)? All of it?
fn progress_of(old: &Listing, new: &Listing, now: &Listing) -> (bool, bool) {
    let (mut any, mut all) = (false, true);
    for (p, n) in &new.0 {
        let same = |r: &Rec| r.kind == n.kind && r.hash == n.hash && r.target == n.target;
        if old.get(p).is_some_and(same) {
            continue;
        }
        if now.get(p).is_some_and(same) {
            any = true;
        } else {
            all = false;
        }
    }
    (any, all)
}

/// The listing of `dst`; or, with the portable OS layer (no atomic exchange) and a kill that
/// landed between the renames of its switch, of the live tree where that layer left it — the
/// one directory under a temporary name in DST's home — which the next run puts back.
fn live_or_aside(dst: &Path) -> Listing {
    if !portable() || dst.symlink_metadata().is_ok() {
        return listing(dst);
    }
    let mut h = b".jailsync-".to_vec();
    h.extend_from_slice(dst.file_name().unwrap().as_encoded_bytes());
    let home = dst.parent().unwrap().join(OsStr::from_bytes(&h));
    let asides: Vec<std::path::PathBuf> = std::fs::read_dir(&home)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.file_name().unwrap().as_bytes().starts_with(TMP) && p.is_dir())
        .collect();
    assert_eq!(asides.len(), 1, "{} is absent: {asides:?}", dst.display());
    eprintln!("killed inside the portable exchange: the tree is aside");
    listing(&asides[0])
}

/// Kills `upgrade` at random moments: each tree must hold old-or-new entries only with
/// nothing missing, and no new package database entry may be visible before every new file of
/// usr/pkg is; a rerun converges both trees.
#[test]
fn crash_loop_upgrade_db_last() {
    let mut rng = Rng::from_env("crash_loop_upgrade");
    let tmp = fast_tempdir("crashup");
    let (jail, old_root) = (tmp.path().join("jail"), tmp.path().join("old"));
    let trees = ["usr/pkg", "var/db/pkg"];
    for (k, t) in trees.iter().enumerate() {
        let (o, n) = (Tree::new(old_root.join(t)), Tree::new(jail.join(t)));
        churn(
            &o,
            &n,
            &mut rng,
            if k == 0 { 1500 } else { 300 },
            2,
            1 << 20,
        );
    }
    let lo: Vec<Listing> = trees.iter().map(|t| listing(&old_root.join(t))).collect();
    let ln: Vec<Listing> = trees.iter().map(|t| listing(&jail.join(t))).collect();
    let (root, state) = (tmp.path().join("root"), tmp.path().join("state"));
    let args: Vec<&OsStr> = vec![
        OsStr::new("upgrade"),
        jail.as_os_str(),
        OsStr::new("--root"),
        root.as_os_str(),
    ];
    let reset = || {
        remove_tree(&root);
        remove_tree(&state);
        copy_tree(&old_root, &root);
    };
    reset();
    let t0 = Instant::now();
    expect_code(&cmd(&state, &args).output().unwrap(), 0);
    let total = t0.elapsed().as_secs_f64();
    for (k, t) in trees.iter().enumerate() {
        assert!(
            listing(&root.join(t)) == ln[k],
            "{t}: a full upgrade is not exact"
        );
    }
    let mut hits = 0;
    for i in 0..12 {
        reset();
        let b0 = lstat(&root, "usr/pkg/big/b0").unwrap().st_ino;
        let from_commit = i % 2 == 1;
        let delay = if from_commit {
            rng.unit() * 0.03
        } else {
            rng.unit() * total
        };
        let (_, killed, err) = run_and_kill_after(
            cmd(&state, &args),
            // Not `lstat`, which panics on a missing parent: with the portable OS layer the
            // tree is absent for the one rename of its switch, which this poll may catch.
            || {
                use std::os::unix::fs::MetadataExt;
                !from_commit
                    || std::fs::symlink_metadata(root.join("usr/pkg/big/b0"))
                        .is_ok_and(|m| m.ino() != b0)
            },
            Duration::from_secs_f64(delay),
        );
        let now: Vec<Listing> = trees.iter().map(|t| listing(&root.join(t))).collect();
        for (k, t) in trees.iter().enumerate() {
            let bad = old_or_new(&lo[k], &ln[k], &now[k]);
            assert!(
                bad.is_empty(),
                "iteration {i} ({t}, killed {killed}): {}\n{err}",
                bad.join("\n")
            );
        }
        let (db_any, _) = progress_of(&lo[1], &ln[1], &now[1]);
        let (pkg_any, pkg_all) = progress_of(&lo[0], &ln[0], &now[0]);
        assert!(
            !db_any || pkg_all,
            "iteration {i}: the package database shows new entries before usr/pkg is complete"
        );
        hits += usize::from(pkg_any && !db_any);
        expect_code(&cmd(&state, &args).output().unwrap(), 0);
        for (k, t) in trees.iter().enumerate() {
            let l = listing(&root.join(t));
            assert!(
                l == ln[k],
                "iteration {i}: {t} did not converge:\n{}",
                ln[k].diff(&l)
            );
        }
    }
    eprintln!("crash_loop_upgrade: {hits} kills between the usr/pkg and database commits");
}

/// A jail file written through a shared mapping, as linkers write their output: once the
/// pages are dirty the kernel no longer moves mtime, so only content can tell. While the
/// writer runs, no torn copy may be installed (only a state the source held unchanged for
/// longer than a copy takes, when the writer was descheduled); the run names the file and
/// exits 1 otherwise.
#[test]
fn source_written_through_mmap_never_torn() {
    let chunks = 16;
    let e = Env::new().with_dst();
    let old: Vec<u8> = Rng::new(4).bytes(chunks * CHUNK);
    e.dst.file("big", &old);
    e.src.file("big", vec![0u8; chunks * CHUNK]);
    let mut w = Writer::start(&e.src.path("big"), chunks, 1, Duration::ZERO, true);
    std::thread::sleep(Duration::from_millis(50));
    let mut codes = Vec::new();
    for round in 0..4 {
        let o = e.js(sync_args(e.src(), e.dst(), &[]));
        codes.push(o.status.code());
        let d = std::fs::read(e.dst.path("big")).unwrap();
        if d == old {
            expect_code(&o, 1);
            assert!(stderr(&o).contains("big"), "round {round}: {}", stderr(&o));
            continue;
        }
        let state = chunk_versions(&d);
        match w.held(&state) {
            Some(t) if t >= Duration::from_millis(1) => {
                eprintln!("round {round}: copied a state the stalled writer left for {t:?}")
            }
            held => panic!(
                "round {round}: torn copy of a file being written through mmap installed \
                 (chunk versions {state:?}, held {held:?}):\n{}",
                stderr(&o)
            ),
        }
    }
    w.stop();
    eprintln!("source_written_through_mmap: exit codes {codes:?}");
    e.sync(&[]);
    e.assert_synced();
}

/// An `upgrade` whose package database is being synced by someone else: refused at once with
/// the holder named, before anything of its other trees is touched.
#[test]
fn upgrade_refused_while_its_database_is_synced() {
    let tmp = tempdir("lockup");
    let t = tmp.path();
    let (jail, root, state) = (Tree::new(t.join("jail")), t.join("root"), t.join("state"));
    let mut rng = Rng::new(8);
    for i in 0..3000 {
        jail.file(format!("var/db/pkg/p{}/f{i}", i % 30), rng.bytes(100));
    }
    jail.file("usr/pkg/bin/tool", "new tool");
    let live = Tree::new(&root);
    live.file("usr/pkg/bin/tool", "old tool")
        .file("usr/pkg/orphan", "o");
    let lpkg = listing(&root.join("usr/pkg"));
    // A sync of the live database, frozen while it holds its lock (`root/var/db` does not
    // exist yet: --mkpath).
    let (jdb, ldb) = (jail.root.join("var/db/pkg"), root.join("var/db/pkg"));
    let args = sync_args(&jdb, &ldb, &["--mkpath"]);
    let mut holder = None;
    for _ in 0..10 {
        remove_tree(&ldb);
        remove_tree(&state);
        let mut child = cmd(&state, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while lock_holder(&state) != Some(child.id()) && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_micros(100));
        }
        freeze(child.id());
        if child.try_wait().unwrap().is_none() && lock_holder(&state) == Some(child.id()) {
            holder = Some(child);
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut holder = holder.expect("could not catch a sync holding its lock");
    let t0 = Instant::now();
    let o = cmd(
        &state,
        [
            OsStr::new("upgrade"),
            jail.root.as_os_str(),
            OsStr::new("--root"),
            root.as_os_str(),
        ],
    )
    .output()
    .unwrap();
    let took = t0.elapsed();
    holder.kill().unwrap();
    holder.wait().unwrap();
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("locked by pid {} since ", holder.id())),
        "the holder should be named:\n{err}"
    );
    assert!(took < Duration::from_secs(3), "refused only after {took:?}");
    assert_eq!(
        listing(&root.join("usr/pkg")),
        lpkg,
        "usr/pkg touched by a refused upgrade"
    );
}

/// `manifest -o` onto something that is not a regular file (a null device node, a symlink)
/// writes through it and leaves it what it was; a regular file is replaced atomically.
#[test]
fn manifest_output_onto_device_or_link_kept() {
    if !is_root() {
        eprintln!("skipped: needs root to make a device node");
        return;
    }
    let e = Env::new();
    e.src.file("a", "x");
    let t = e.tmp.path();
    let out = Tree::new(t.join("out"));
    out.chardev("null", 1, 3)
        .file("real", "old")
        .symlink("lnk", "real");
    for target in ["null", "lnk", "plain"] {
        let p = out.path(target);
        let o = e.js([
            OsStr::new("manifest"),
            e.src().as_os_str(),
            OsStr::new("-o"),
            p.as_os_str(),
        ]);
        expect_code(&o, 0);
    }
    let l = listing(&out.root);
    assert_eq!(
        l.get("null").map(|r| r.kind),
        Some('c'),
        "the device node was replaced"
    );
    assert_eq!(
        l.get("lnk").map(|r| r.kind),
        Some('l'),
        "the symlink was replaced"
    );
    let real = std::fs::read_to_string(out.path("real")).unwrap();
    assert!(
        real.starts_with("#jailsync-manifest"),
        "not written through the link: {real:?}"
    );
    let plain = std::fs::read_to_string(out.path("plain")).unwrap();
    assert!(plain.starts_with("#jailsync-manifest"));
    let stray: Vec<_> =
        l.0.keys()
            .filter(|k| k.starts_with(b"."))
            .map(|k| esc(k))
            .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");
}
