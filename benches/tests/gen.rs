//! The generator's promises: determinism for a seed, and the mix of changes each mutation
//! claims (the benchmark's figures are only comparable if these hold).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use jailsync_benches::{diff_trees, gen_base, mutate, BaseOpts, Diff, MutateKind};

const N: usize = 2500;

fn base(dir: &Path, seed: u64) {
    let w = gen_base(
        dir,
        &BaseOpts {
            files: N,
            seed,
            size_scale: 0.2,
        },
    )
    .unwrap();
    assert_eq!((w.files + w.symlinks + w.hardlinks) as usize, N);
    assert!(w.symlinks > 0 && w.hardlinks > 0, "{w:?}");
}

fn frac(n: usize, d: &Diff) -> f64 {
    n as f64 / d.entries as f64
}

/// Directory mtimes, which `diff_trees` does not look at.
fn dir_mtimes(root: &Path, rel: &str, out: &mut Vec<(String, i64, i64)>) {
    let p = root.join(rel);
    let md = fs::symlink_metadata(&p).unwrap();
    if md.is_dir() {
        out.push((rel.to_string(), md.mtime(), md.mtime_nsec()));
        let mut names: Vec<_> = fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            dir_mtimes(root, &format!("{rel}/{n}"), out);
        }
    }
}

#[test]
fn base_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    base(&t.path().join("a"), 7);
    base(&t.path().join("b"), 7);
    base(&t.path().join("c"), 8);
    let same = diff_trees(&t.path().join("a"), &t.path().join("b")).unwrap();
    assert_eq!(
        (same.changed, same.meta_only, same.removed, same.added),
        (0, 0, 0, 0)
    );
    assert_eq!(same.entries, N);
    let other = diff_trees(&t.path().join("a"), &t.path().join("c")).unwrap();
    assert!(other.removed > N / 2, "{other:?}");
}

#[test]
fn mutations_have_the_promised_mix() {
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("base");
    base(&b, 1);

    let up = t.path().join("upgrade");
    mutate(&b, &up, MutateKind::Upgrade, 2).unwrap();
    let d = diff_trees(&b, &up).unwrap();
    assert!((frac(d.changed, &d) - 0.55).abs() < 0.05, "{d:?}");
    assert!((frac(d.removed, &d) - 0.10).abs() < 0.03, "{d:?}");
    assert!((frac(d.added, &d) - 0.13).abs() < 0.03, "{d:?}");
    // Every surviving entry got a new mtime: nothing is untouched.
    assert_eq!(d.entries, d.changed + d.meta_only + d.removed, "{d:?}");
    // Same seed, same jail.
    let up2 = t.path().join("upgrade2");
    mutate(&b, &up2, MutateKind::Upgrade, 2).unwrap();
    let same = diff_trees(&up, &up2).unwrap();
    assert_eq!(
        (same.changed, same.meta_only, same.removed, same.added),
        (0, 0, 0, 0)
    );

    let sec = t.path().join("security");
    mutate(&b, &sec, MutateKind::Security, 2).unwrap();
    let d = diff_trees(&b, &sec).unwrap();
    let f = frac(d.changed, &d);
    assert!(f > 0.005 && f < 0.05, "{d:?}");
    assert_eq!((d.removed, d.added), (0, 0), "{d:?}");

    let noop = t.path().join("noop");
    mutate(&b, &noop, MutateKind::Noop, 2).unwrap();
    let d = diff_trees(&b, &noop).unwrap();
    assert_eq!((d.changed, d.meta_only, d.removed, d.added), (0, 0, 0, 0));
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for t in ["usr/pkg", "var/db/pkg"] {
        dir_mtimes(&b, t, &mut x);
        dir_mtimes(&noop, t, &mut y);
    }
    assert_eq!(x, y);
}

#[test]
fn upgrade_of_an_upgrade_still_works() {
    // Mutation reads +CONTENTS back, so it must accept its own output.
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("base");
    base(&b, 3);
    let one = t.path().join("one");
    let two = t.path().join("two");
    mutate(&b, &one, MutateKind::Upgrade, 4).unwrap();
    mutate(&one, &two, MutateKind::Upgrade, 5).unwrap();
    let d = diff_trees(&one, &two).unwrap();
    assert!((frac(d.changed, &d) - 0.55).abs() < 0.07, "{d:?}");
}
