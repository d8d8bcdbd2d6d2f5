//! Fault injection (issue 5): kill -9 at any moment, symlink races, a jail changing under the
//! copy, concurrent runs, bad input, a full disk, unreadable entries, and `--fsync`.
//!
//! Every test drives the real binary on real trees and checks the invariants of the design:
//! never lacks, whole or old, confined, jail read-only, exact after success, resumable.

mod common;
mod faultkit;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use faultkit::*;

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
    let tmp = fast_tempdir("crash");
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
        let (from_commit, delay) = match i % 6 {
            0 => (false, rng.unit() * total),
            1 => (
                false,
                win("scan").0 + rng.unit() * (win("scan").1 + win("hash").1),
            ),
            2 => (false, win("stage").0 + rng.unit() * win("stage").1),
            3 => (true, rng.unit() * commit),
            4 => (true, commit + rng.unit() * prune),
            _ => (true, commit + prune + rng.unit() * fin * 1.2),
        };
        let (st, killed, err) = run_and_kill_after(
            cmd(&state, sync_args(&src.root, &dst, &extra)),
            || !from_commit || lstat(&dst, "big/b0").is_ok_and(|s| s.st_ino != b0),
            Duration::from_secs_f64(delay),
        );
        if !killed {
            assert_eq!(
                st.code(),
                Some(0),
                "iteration {i}: unkilled run failed:\n{err}"
            );
        }
        let now = listing(&dst);
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
            let bad = old_or_new(&lo, &ln, &listing(&dst));
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
