//! The jail OS layer against the real kernel, in a private mount namespace.
//!
//! The outer test re-runs this test binary under `unshare --mount --propagation private`,
//! selecting the `#[ignore]`d inner test, so mounts made by the inner one never reach the
//! host. Needs root; elsewhere it prints why it skipped.

#![cfg(target_os = "linux")]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use jailsync_engine::jail::mountinfo::MountTable;
use jailsync_engine::jail::os;

const INNER: &str = "JAILSYNC_TEST_IN_NAMESPACE";

#[test]
fn os_layer_in_a_private_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: bind mounts need root");
        return;
    }
    let me = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(&me)
        .args([
            "--exact",
            "inner",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .output();
    let Ok(out) = out else {
        eprintln!("skipping: cannot run unshare");
        return;
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "inner test did not run:\n{text}");
}

#[test]
#[ignore = "run by os_layer_in_a_private_namespace"]
fn inner() {
    if std::env::var_os(INNER).is_none() {
        // Never mount outside the private namespace (e.g. under `--include-ignored`).
        eprintln!("skipping: runs only inside os_layer_in_a_private_namespace");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().canonicalize().unwrap();
    let (src, jail, outside) = (t.join("src"), t.join("jail"), t.join("outside"));
    for d in [&src, &jail, &outside] {
        fs::create_dir(d).unwrap();
    }

    // A source mount with nosuid,nodev: a read-only bind of it keeps both flags.
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "nosuid,nodev", "tmpfs"])
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    fs::create_dir(src.join("d")).unwrap();
    let target = jail.join("d");
    fs::create_dir(&target).unwrap();
    os::bind(&src.join("d"), &target, true).unwrap();
    let opts = mount_options(&target);
    for want in ["ro", "nosuid", "nodev"] {
        assert!(opts.split(',').any(|o| o == want), "{want} missing: {opts}");
    }
    assert!(fs::write(target.join("x"), "x").is_err());
    // The jail's own filesystem was not the one made read-only.
    fs::write(jail.join("still-writable"), "x").unwrap();

    os::set_read_only(&target, false).unwrap();
    fs::write(target.join("x"), "x").unwrap();
    assert!(src.join("d/x").exists());

    // A symlink as the target, or on the way to it, is never followed.
    symlink(&outside, jail.join("link")).unwrap();
    for bad in [jail.join("link"), jail.join("link/sub")] {
        fs::create_dir_all(outside.join("sub")).unwrap();
        let e = os::bind(&src.join("d"), &bad, true).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ELOOP),
            "{}: {e}",
            bad.display()
        );
    }
    let table = MountTable::current().unwrap();
    assert!(table.at(&outside).is_none());
    assert!(table.at(&outside.join("sub")).is_none());

    os::unmount(&target, os::Unmount::Normal).unwrap();
    let e = os::unmount(&target, os::Unmount::Normal).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

/// The per-mount options column of mountinfo for `target`.
fn mount_options(target: &Path) -> String {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = target.to_str().unwrap();
    text.lines()
        .rev()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f[4] == want)
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| panic!("{want} not mounted"))
}
