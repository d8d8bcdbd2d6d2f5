//! Old setuid/setgid binaries and file capabilities are defanged in the trees a switch leaves
//! behind (invariant 9): a process whose working directory was inside the live tree before
//! the switch still reaches the old tree, and could run a replaced setuid-root program as root
//! for as long as the generation is kept. Rolling back gives the bits back.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

const JS: &str = env!("CARGO_BIN_EXE_jailsync");

fn js(state: &Path, args: &[&str]) -> std::process::Output {
    Command::new(JS)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("JAILSYNC_SWITCH")
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn getcap(p: &Path) -> String {
    let o = Command::new("getcap").arg(p).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A world-traversable temp dir with `S` (the jail) and `D` (live), both holding `bin/tool`:
/// the live one is a setuid-root copy of `id` (so it says whose it runs as), the jail's a new
/// release of it (not setuid).
fn setup() -> Option<(tempfile::TempDir, std::path::PathBuf)> {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv");
        return None;
    }
    let tmp = tempfile::Builder::new()
        .prefix("jailsync-fangs-")
        .tempdir()
        .unwrap();
    let t = tmp.path().canonicalize().unwrap();
    fs::set_permissions(&t, fs::Permissions::from_mode(0o755)).unwrap();
    for d in ["S/bin", "D/bin"] {
        fs::create_dir_all(t.join(d)).unwrap();
        fs::set_permissions(t.join(d), fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::set_permissions(t.join("S"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(t.join("D"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy("/usr/bin/id", t.join("D/bin/tool")).unwrap();
    fs::set_permissions(t.join("D/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    let mut new = fs::read("/usr/bin/id").unwrap();
    new.extend_from_slice(b"\0new release");
    fs::write(t.join("S/bin/tool"), new).unwrap();
    fs::set_permissions(t.join("S/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    Some((tmp, t))
}

/// Issue 19 item 6: an unprivileged shell parked in `D/bin` before the switch runs `./tool`
/// after it: that is the old, setuid-root file, now in the generation. It used to run as
/// root; it now runs as the user. `rollback` gives the bit back.
#[test]
fn a_shell_parked_in_the_old_tree_cannot_run_the_old_setuid_binary_as_root() {
    let Some((_tmp, t)) = setup() else { return };
    let (s, d, state) = (t.join("S"), t.join("D"), t.join("state"));
    // The shell: cd into the live bin, wait for the switch (a file appears), run ./tool.
    let go = t.join("go");
    let script = format!(
        "cd {} && while [ ! -e {} ]; do sleep 0.02; done; ./tool -u",
        d.join("bin").display(),
        go.display()
    );
    let shell = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it settle in the old tree's bin before the switch.
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let cwd = fs::read_link(format!("/proc/{}/cwd", shell.id())).unwrap_or_default();
        if cwd == d.join("bin") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = js(&state, &["sync", s.to_str().unwrap(), d.to_str().unwrap()]);
    expect_code(&o, 0);
    fs::write(&go, "").unwrap();
    let out = shell.wait_with_output().unwrap();
    let euid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        euid,
        "65534",
        "the old setuid-root binary ran as root from the generation ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    let old = t.join(".jailsync-D/gen-1/bin/tool");
    assert_eq!(mode(&old), 0o755, "the generation's copy is defanged");
    assert_eq!(
        mode(&d.join("bin/tool")),
        0o755,
        "the live (new) file is the jail's"
    );
    // Rollback gives it back, exactly.
    let o = js(&state, &["rollback", d.to_str().unwrap()]);
    expect_code(&o, 0);
    assert_eq!(
        mode(&d.join("bin/tool")),
        0o4755,
        "rollback restores setuid"
    );
    assert!(
        fs::read(d.join("bin/tool")).unwrap() == fs::read("/usr/bin/id").unwrap(),
        "the old release is live again"
    );
    // The release switched out by the rollback is defanged in turn? It had no setuid file;
    // the restored tree verifies against the old one.
}

/// Issue 19 item 6, the other kinds: setgid, a file capability, and a setuid file the jail
/// dropped (deleted, not replaced). A setuid file both trees share (unchanged, linked) is
/// live and keeps its bit.
#[test]
fn setgid_capabilities_and_deleted_setuid_files_are_defanged_and_restored() {
    let Some((_tmp, t)) = setup() else { return };
    if !have("setcap") {
        eprintln!("skipped: setcap is not installed (the CI installs libcap2-bin)");
        return;
    }
    let (s, d, state) = (t.join("S"), t.join("D"), t.join("state"));
    let tree = Tree::new(&d);
    tree.file("bin/sg", "old sg\n").mode("bin/sg", 0o2755);
    tree.file("bin/capped", "old capped\n")
        .mode("bin/capped", 0o755);
    tree.file("bin/gone", "dropped\n").mode("bin/gone", 0o4755);
    tree.file("bin/same", "unchanged\n")
        .mode("bin/same", 0o4755);
    let st = Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(d.join("bin/capped"))
        .status()
        .unwrap();
    if !st.success() {
        eprintln!("skipped: this filesystem takes no file capabilities");
        return;
    }
    let src = Tree::new(&s);
    src.file("bin/sg", "new sg\n").mode("bin/sg", 0o2755);
    src.file("bin/capped", "new capped\n")
        .mode("bin/capped", 0o755);
    src.file("bin/same", "unchanged\n").mode("bin/same", 0o4755);
    // Same mtime as the live one, so it is the same file to the plan.
    let m = fs::metadata(d.join("bin/same"))
        .unwrap()
        .modified()
        .unwrap();
    fs::File::options()
        .write(true)
        .open(s.join("bin/same"))
        .unwrap()
        .set_modified(m)
        .unwrap();
    let o = js(&state, &["sync", s.to_str().unwrap(), d.to_str().unwrap()]);
    expect_code(&o, 0);
    let g = t.join(".jailsync-D/gen-1/bin");
    assert_eq!(mode(&g.join("sg")), 0o755, "setgid taken");
    assert_eq!(
        mode(&g.join("gone")),
        0o755,
        "a deleted setuid file is defanged too"
    );
    assert_eq!(getcap(&g.join("capped")), "", "capability taken");
    assert_eq!(
        mode(&d.join("bin/same")),
        0o4755,
        "a live (shared) file keeps its bit"
    );
    assert_eq!(
        mode(&d.join("bin/sg")),
        0o2755,
        "the new release's bits are the jail's"
    );
    let o = js(&state, &["rollback", d.to_str().unwrap()]);
    expect_code(&o, 0);
    assert_eq!(mode(&d.join("bin/sg")), 0o2755);
    assert_eq!(mode(&d.join("bin/gone")), 0o4755);
    assert_eq!(mode(&d.join("bin/same")), 0o4755);
    assert!(
        getcap(&d.join("bin/capped")).contains("cap_net_raw"),
        "capability given back"
    );
    // The new release, switched out by the rollback, is defanged in its turn.
    let undone = t.join(".jailsync-D/undone-1/bin/sg");
    assert_eq!(
        mode(&undone),
        0o755,
        "the tree a rollback switches out is defanged"
    );
}
