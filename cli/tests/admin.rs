//! What an admin meets around the engine: man page, completions, messages, safety rails,
//! generation sizes and `prune`, `--quick`.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::Value;

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `jailsync --state-dir STATE ARGS` with extra environment.
fn js_env(e: &Env, env: &[(&str, &str)], args: &[&OsStr]) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("--state-dir").arg(e.state()).args(args);
    c.env_remove("JAILSYNC_STATE_DIR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run jailsync")
}

#[test]
fn man_page_renders() {
    let o = run(["man"]);
    expect_code(&o, 0);
    let page = stdout(&o);
    assert!(page.contains(".TH jailsync 1"), "not a man page:\n{page}");
    for sub in ["sync", "upgrade", "prune", "completions"] {
        assert!(page.contains(sub), "{sub} missing from the page");
    }
    let dir = tempfile::tempdir().unwrap();
    let o = run([
        OsStr::new("man"),
        OsStr::new("--dir"),
        dir.path().as_os_str(),
    ]);
    expect_code(&o, 0);
    for f in [
        "jailsync.1",
        "jailsync-sync.1",
        "jailsync-prune.1",
        "jailsync-jail-mount.1",
    ] {
        assert!(dir.path().join(f).is_file(), "{f} not written");
    }
    if !have("man") {
        eprintln!("skipped rendering: man is not installed");
        return;
    }
    let r = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(dir.path().join("jailsync-sync.1"))
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "man failed: {}", stderr(&r));
    assert!(
        text.contains("SYNOPSIS") && text.contains("--max-delete") && text.contains("--mkpath"),
        "rendered page lacks its sections or options:\n{text}"
    );
    assert!(
        !String::from_utf8_lossy(&r.stderr).contains("warning"),
        "groff warnings: {}",
        stderr(&r)
    );
}

#[test]
fn completions_are_valid_scripts() {
    let o = run(["completions", "bash"]);
    expect_code(&o, 0);
    let script = stdout(&o);
    assert!(script.contains("upgrade") && script.contains("--max-delete"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("jailsync.bash");
    std::fs::write(&f, &script).unwrap();
    let r = Command::new("bash").arg("-n").arg(&f).output().unwrap();
    assert!(r.status.success(), "bash -n: {}", stderr(&r));
    // Loaded for real: the function is defined and completes a subcommand.
    let r = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(jailsync pru); COMP_CWORD=1; COMP_LINE='jailsync pru'; \
             COMP_POINT=12; _jailsync jailsync pru jailsync; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            f.display()
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&r.stdout)
            .lines()
            .any(|l| l == "prune"),
        "bash completion of `pru`: {} {}",
        stdout(&r),
        stderr(&r)
    );
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = run(["completions", shell]);
        expect_code(&o, 0);
        assert!(stdout(&o).contains("jailsync"), "{shell}");
    }
    if have("zsh") {
        std::fs::write(
            dir.path().join("_jailsync"),
            stdout(&run(["completions", "zsh"])),
        )
        .unwrap();
        let r = Command::new("zsh")
            .arg("-n")
            .arg(dir.path().join("_jailsync"))
            .output()
            .unwrap();
        assert!(r.status.success(), "zsh -n: {}", stderr(&r));
    }
}

/// Runs `args` with stdout a pipe whose reading end is already closed: every write fails
/// with EPIPE, deterministically.
fn with_closed_stdout(e: &Env, args: &[&OsStr]) -> std::process::Output {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two fds we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fds[0] is ours, closed once.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is ours; Stdio takes it over.
    let w = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    Command::new(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn closed_stdout_ends_quietly_for_every_command() {
    let e = Env::new().with_dst();
    for i in 0..50 {
        e.src.file(format!("f{i}"), format!("{i}"));
        e.dst.file(format!("g{i}"), format!("{i}"));
    }
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let s = OsStr::new;
    let cmds: Vec<Vec<&OsStr>> = vec![
        vec![s("verify"), src, dst],
        vec![s("manifest"), src],
        // --force: DST loses all it has, which a dry run would warn about on stderr.
        vec![s("sync"), s("-n"), s("-i"), s("--force"), src, dst],
        vec![s("--json"), s("verify"), src, dst],
        vec![s("completions"), s("bash")],
        vec![s("man")],
        vec![s("--help")],
    ];
    for args in &cmds {
        let o = with_closed_stdout(&e, args);
        assert!(
            o.stderr.is_empty(),
            "{args:?} printed on stderr: {}",
            stderr(&o)
        );
        // Killed by SIGPIPE, as `head`'s writer is expected to be (shells say nothing).
        let quiet = o.status.signal() == Some(libc::SIGPIPE) || o.status.code() == Some(0);
        assert!(quiet, "{args:?}: {:?}", o.status);
    }
    // Real output reaches a reader that keeps reading.
    let o = e.js([s("verify"), src, dst]);
    expect_code(&o, 1);
    // The sync that wrote its lines to a closed pipe was a dry run: nothing changed.
    assert!(e.dst.path("g0").exists());
    // A sync whose itemized output goes nowhere still completes, then ends quietly.
    let o = with_closed_stdout(&e, &[s("sync"), s("-i"), s("--force"), src, dst]);
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
    assert_same(e.src(), e.dst());
}

#[test]
fn verify_quiet_prints_nothing() {
    let e = Env::new().with_dst();
    e.src.file("a", "new").file("b", "b");
    e.dst.file("a", "old").file("c", "c");
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let o = e.js([OsStr::new("verify"), OsStr::new("-q"), src, dst]);
    expect_code(&o, 1);
    assert!(
        o.stdout.is_empty() && o.stderr.is_empty(),
        "-q printed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = e.js([OsStr::new("verify"), src, dst]);
    expect_code(&o, 1);
    assert!(
        stdout(&o).contains("c"),
        "without -q the differences are listed"
    );
    e.sync(&[]);
    let o = e.js([OsStr::new("verify"), OsStr::new("-q"), src, dst]);
    expect_code(&o, 0);
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
}

/// Runs the binary as user nobody.
fn as_nobody(args: &[&OsStr]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap()
}

fn chmod(p: &Path, m: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn chown_nobody(p: &Path) {
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn non_root_messages_name_the_state_dir_and_the_source() {
    if !is_root() || !have("setpriv") {
        eprintln!("skipped: needs root and setpriv to run as nobody");
        return;
    }
    let e = Env::new().with_dst();
    chmod(e.tmp.path(), 0o755);
    e.src.file("ok", "ok").file("secret", "new secret!");
    e.dst.file("secret", "old");
    chmod(&e.src.path("secret"), 0o000);
    chown_nobody(e.dst());
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());

    // The default state dir, root's: named, with both ways to choose another.
    let o = as_nobody(&[OsStr::new("sync"), src, dst]);
    expect_code(&o, 2);
    let err = stderr(&o);
    // The OS's default (/var/lib/jailsync on Linux), or the old one where only that exists.
    assert!(
        (err.contains("/var/lib/jailsync") || err.contains("/var/db/jailsync"))
            && err.contains("--state-dir")
            && err.contains("JAILSYNC_STATE_DIR"),
        "{err}"
    );
    let rootonly = e.tmp.path().join("rootonly");
    std::fs::create_dir(&rootonly).unwrap();
    chmod(&rootonly, 0o700);
    let o = as_nobody(&[
        OsStr::new("--state-dir"),
        rootonly.as_os_str(),
        OsStr::new("sync"),
        src,
        dst,
    ]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(rootonly.to_str().unwrap()) && err.contains("--state-dir"),
        "{err}"
    );

    // A usable state dir: the unreadable source file is named by its source path.
    let state = e.tmp.path().join("mine");
    std::fs::create_dir(&state).unwrap();
    chown_nobody(&state);
    let o = as_nobody(&[
        OsStr::new("--state-dir"),
        state.as_os_str(),
        OsStr::new("sync"),
        src,
        dst,
    ]);
    expect_code(&o, 1);
    let err = stderr(&o);
    let src_secret = e.src.path("secret").display().to_string();
    assert!(
        err.lines()
            .any(|l| l.contains(&src_secret) && l.contains("Permission denied")),
        "the source path should be named:\n{err}"
    );
    assert!(
        !err.contains(&e.dst.path("secret").display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(e.dst.path("secret")).unwrap(),
        "old"
    );
}

/// The lock file a run on `dst` takes, taken here as another run would hold it.
fn hold_lock(state: &Path, dst: &Path) -> std::fs::File {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let canon = std::fs::canonicalize(dst).unwrap();
    let key = blake3::hash(canon.as_os_str().as_encoded_bytes()).to_hex();
    let dir = state.join("trees").join(&key.as_str()[..16]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("path"), canon.as_os_str().as_encoded_bytes()).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(dir.join("lock"))
        .unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    f.set_len(0).unwrap();
    write!(f, "{} 2026-01-01T00:00:00Z", std::process::id()).unwrap();
    f
}

#[test]
fn dry_run_during_a_run_names_the_lock_holder() {
    let e = Env::new().with_dst();
    for i in 0..20 {
        e.src.file(format!("f{i}"), "same size");
        e.dst.file(format!("f{i}"), "SAME SIZE");
    }
    let held = hold_lock(&e.state(), e.dst());
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let want = format!("locked by pid {}", std::process::id());
    for args in [
        vec![OsStr::new("sync"), OsStr::new("-n"), src, dst],
        vec![OsStr::new("verify"), src, dst],
    ] {
        let o = e.js(&args);
        expect_code(&o, 2);
        let err = stderr(&o);
        assert!(err.contains(&want), "{args:?}:\n{err}");
        assert_eq!(err.lines().count(), 1, "one line, not a flood:\n{err}");
    }
    drop(held);
    // A child another test thread forks at that moment holds a copy of the lock's file
    // description until its exec closes it: the lock is free again within moments.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let o = loop {
        let o = e.js([OsStr::new("sync"), OsStr::new("-n"), src, dst]);
        if o.status.code() == Some(0) || std::time::Instant::now() > end {
            break o;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    expect_code(&o, 0);
}

#[test]
fn missing_parent_refused_unless_mkpath() {
    let e = Env::new();
    e.src.file("a", "a");
    let typo = e.tmp.path().join("nosuch/dir/dst");
    let o = e.js([OsStr::new("sync"), e.src().as_os_str(), typo.as_os_str()]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("does not exist") && err.contains("--mkpath"),
        "{err}"
    );
    assert!(
        !e.tmp.path().join("nosuch").exists(),
        "something was created"
    );
    assert!(!e.state().exists(), "state made for a refused run");
    let o = e.js([
        OsStr::new("sync"),
        OsStr::new("--mkpath"),
        e.src().as_os_str(),
        typo.as_os_str(),
    ]);
    expect_code(&o, 0);
    assert_same(e.src(), &typo);
    // A missing DST whose parent exists is made as before.
    e.sync(&[]);
    assert_same(e.src(), e.dst());
}

#[test]
fn max_delete_refuses_before_changing_anything() {
    let e = Env::new().with_dst();
    e.src.file("keep", "new");
    e.dst
        .file("keep", "old")
        .file("d/x", "1")
        .file("d/y", "2")
        .file("z", "3");
    let before = listing(e.dst());
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let o = e.js([
        OsStr::new("sync"),
        OsStr::new("--max-delete"),
        OsStr::new("3"),
        src,
        dst,
    ]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("would delete 4 entries") && err.contains("--max-delete 3"),
        "{err}"
    );
    assert!(
        before == listing(e.dst()),
        "changed:\n{}",
        before.diff(&listing(e.dst()))
    );
    e.sync(&["--max-delete", "4"]);
    assert_same(e.src(), e.dst());
}

/// A file of `n` random-ish bytes (distinct per `seed`), so each sync replaces it.
fn blob(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
}

fn history(e: &Env, env: &[(&str, &str)]) -> Vec<Value> {
    let o = js_env(
        e,
        env,
        &[
            OsStr::new("--json"),
            OsStr::new("history"),
            e.dst().as_os_str(),
        ],
    );
    expect_code(&o, 0);
    json_lines(&stdout(&o))
        .into_iter()
        .filter(|v| v["type"] == "generation")
        .collect()
}

/// The `removed` line of `history --json`: the highest generation id removed, if any.
fn removed_through(e: &Env, env: &[(&str, &str)]) -> Option<u64> {
    let o = js_env(
        e,
        env,
        &[
            OsStr::new("--json"),
            OsStr::new("history"),
            e.dst().as_os_str(),
        ],
    );
    json_lines(&stdout(&o))
        .into_iter()
        .find(|v| v["type"] == "removed")
        .and_then(|v| v["through"].as_u64())
}

fn sizes_and_prune(env: &[(&str, &str)]) {
    const N: usize = 256 << 10;
    let e = Env::new();
    e.src.file("same", blob(0, N)).file("big", blob(1, N));
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let sync = |args: &[&str]| {
        let mut a: Vec<&OsStr> = vec![OsStr::new("sync")];
        a.extend(args.iter().map(OsStr::new));
        a.extend([src, dst]);
        expect_code(&js_env(&e, env, &a), 0);
    };
    sync(&[]);
    for seed in 2..5 {
        e.src.file("big", blob(seed, N));
        sync(&["--keep", "5"]);
    }
    let gens = history(&e, env);
    // The first sync's (the empty old tree, a few directory blocks) and one per change.
    assert_eq!(gens.len(), 4, "{gens:?}");
    assert_eq!(removed_through(&e, env), None, "nothing removed yet");
    assert!(gens[3]["size"]["not_live_bytes"].as_u64().unwrap() < N as u64);
    for g in &gens[..3] {
        let not_live = g["size"]["not_live_bytes"].as_u64().unwrap();
        let own = g["size"]["own_bytes"].as_u64().unwrap();
        // One old `big` each; `same` is the live file's inode and not counted.
        assert!((N as u64..2 * N as u64).contains(&not_live), "{g}");
        assert!(own >= N as u64 && own <= not_live, "{g}");
    }
    let o = js_env(&e, env, &[OsStr::new("history"), dst]);
    assert!(
        stdout(&o).contains(" KiB not live, ") && stdout(&o).contains(" KiB own"),
        "{}",
        stdout(&o)
    );

    let prune = |keep: &str, dry: bool| {
        let mut a = vec![
            OsStr::new("--json"),
            OsStr::new("prune"),
            OsStr::new("--keep"),
            OsStr::new(keep),
        ];
        if dry {
            a.push(OsStr::new("-n"));
        }
        a.push(dst);
        let o = js_env(&e, env, &a);
        expect_code(&o, 0);
        json_lines(&stdout(&o)).pop().unwrap()
    };
    let v = prune("1", true);
    assert_eq!(v["removed"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(history(&e, env).len(), 4, "dry run removed something");
    let v = prune("1", false);
    assert_eq!(v["kept"], 1, "{v}");
    assert!(v["freed_bytes"].as_u64().unwrap() >= 2 * N as u64, "{v}");
    let gens = history(&e, env);
    assert_eq!(gens.len(), 1);
    assert_eq!(
        gens[0]["id"],
        v["removed"][2].as_u64().unwrap() + 1,
        "the newest is kept"
    );
    // History says which ids can no longer be rolled back to.
    assert_eq!(removed_through(&e, env), v["removed"][2].as_u64());
    let o = js_env(&e, env, &[OsStr::new("history"), dst]);
    assert!(
        stderr(&o).contains("cannot be rolled back to"),
        "{}",
        stderr(&o)
    );
    // What is kept still rolls back.
    let o = js_env(&e, env, &[OsStr::new("rollback"), dst]);
    expect_code(&o, 0);
    assert_eq!(std::fs::read(e.dst.path("big")).unwrap(), blob(3, N));
    sync(&[]);
    let v = prune("0", false);
    assert_eq!(v["kept"], 0, "{v}");
    assert!(history(&e, env).is_empty());
    let o = js_env(&e, env, &[OsStr::new("rollback"), dst]);
    assert_ne!(o.status.code(), Some(0), "rolled back after prune --keep 0");
    assert_same(e.src(), e.dst());
}

#[test]
fn history_sizes_and_prune_switched_generations() {
    sizes_and_prune(&[]);
}

#[test]
fn history_sizes_and_prune_generations_switched_by_subtrees() {
    sizes_and_prune(&[("JAILSYNC_SWITCH", "entries")]);
}

/// Under a terminal (`script` gives the run a pty) an upgrade draws bars naming the tree, with
/// entries and bytes of the phase's total; without one it draws nothing.
#[test]
fn progress_on_a_terminal_only() {
    if !have("script") {
        eprintln!("skipped: needs script (util-linux/bsdutils) for a pty");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let jail = Tree::new(t.path().join("jail"));
    let root = Tree::new(t.path().join("root"));
    // Same sizes, other content: every file is hashed on both sides, then copied.
    for i in 0..6 {
        jail.file(format!("usr/pkg/f{i}"), blob(i, 8 << 20));
        root.file(format!("usr/pkg/f{i}"), blob(i + 100, 8 << 20));
    }
    let cmd = format!(
        "{BIN} --state-dir {}/state upgrade {} --root {} --tree usr/pkg",
        t.path().display(),
        jail.root.display(),
        root.root.display()
    );
    let typescript = t.path().join("typescript");
    let o = Command::new("script")
        .args(["-qfec", &cmd])
        .arg(&typescript)
        .env("COLUMNS", "200")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = String::from_utf8_lossy(&std::fs::read(&typescript).unwrap()).replace('\r', "\n");
    let bars: Vec<&str> = text.lines().filter(|l| l.contains(" entries")).collect();
    assert!(
        bars.iter()
            .any(|l| l.contains("usr/pkg hash ") && l.contains("/12 entries")),
        "no hash bar naming the tree:\n{text}"
    );
    assert!(
        bars.iter().any(|l| l.contains(" of 96.0 MiB")),
        "no byte total for the hash phase:\n{text}"
    );
    // Rate and time left show once a file is done, if a tick falls before the phase ends
    // (not on a fast run): their text is checked by output.rs's unit test.
    assert_same(&jail.path("usr/pkg"), &root.path("usr/pkg"));
    // Not a terminal: no bars.
    jail.file("usr/pkg/f0", blob(7, 8 << 20));
    let o = run([
        OsStr::new("--state-dir"),
        t.path().join("state").as_os_str(),
        OsStr::new("upgrade"),
        jail.root.as_os_str(),
        OsStr::new("--root"),
        root.root.as_os_str(),
        OsStr::new("--tree"),
        OsStr::new("usr/pkg"),
    ]);
    expect_code(&o, 0);
    assert!(!stderr(&o).contains(" entries"), "{}", stderr(&o));
}

/// `--quick`: equal size and mtime (ns) is taken as equal content, unread, like rsync; its
/// blind spot stays visible to the next run without it (no hash is invented for such a file).
#[test]
fn quick_trusts_size_and_mtime_only() {
    const T: i64 = 1_650_000_000;
    let e = Env::new().with_dst();
    // Blind spot: same size, same mtime, other content.
    e.src.file("blind", "new!").mtime("blind", T, 5);
    e.dst.file("blind", "old!").mtime("blind", T, 5);
    // Same but for the mode: only the mode is set.
    e.src
        .file("mode", "aaaa")
        .mode("mode", 0o600)
        .mtime("mode", T, 6);
    e.dst
        .file("mode", "bbbb")
        .mode("mode", 0o644)
        .mtime("mode", T, 6);
    // Other mtime: compared by content as always.
    e.src.file("touched", "same").mtime("touched", T, 7);
    e.dst.file("touched", "same").mtime("touched", T, 8);
    e.src.file("changed", "new content").mtime("changed", T, 9);
    e.dst.file("changed", "old content").mtime("changed", T, 10);
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    let o = e.js([
        OsStr::new("--json"),
        OsStr::new("sync"),
        OsStr::new("--quick"),
        src,
        dst,
    ]);
    expect_code(&o, 0);
    let lines = json_lines(&stdout(&o));
    let sum = lines.last().unwrap();
    let item = |p: &str| {
        lines
            .iter()
            .find(|v| v["path"] == p)
            .map(|v| v["op"].as_str().unwrap().to_string())
    };
    assert_eq!(item("blind"), None, "{lines:?}");
    assert_eq!(item("mode").as_deref(), Some("metadata"), "{lines:?}");
    assert_eq!(item("touched").as_deref(), Some("metadata"), "{lines:?}");
    assert!(item("changed").is_some(), "{lines:?}");
    // Only the pairs whose mtimes differ were read: two files of 4 and 11 bytes on each side.
    assert_eq!(sum["bytes_hashed"], 2 * (4 + 11), "{sum}");
    let read = |p: &str| std::fs::read_to_string(e.dst.path(p)).unwrap();
    assert_eq!(read("blind"), "old!", "the blind spot, as documented");
    assert_eq!(read("mode"), "bbbb");
    assert_eq!(read("changed"), "new content");
    let mode = std::fs::metadata(e.dst.path("mode")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // Without --quick the content is compared: both differences show and are fixed.
    let pending = e.pending();
    assert!(
        pending.contains("blind") && pending.contains("mode"),
        "{pending}"
    );
    e.sync(&[]);
    e.assert_synced();
}
