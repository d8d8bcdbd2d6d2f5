//! What on-call owns around a run (issue 22): the configuration file and `jailsync config`,
//! rsync's filter rules (rsync itself as the oracle), the restart report, the audit line,
//! `--stats`, the JSON error object and `--wait`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use crate::common::*;
use serde_json::Value;

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `jailsync ARGS` with `JAILSYNC_CONFIG=conf` (no state dir added).
fn js_conf(conf: &Path, args: &[&OsStr]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .env("JAILSYNC_CONFIG", conf)
        .output()
        .expect("run jailsync")
}

/// Path → what is there (`d`, `l TARGET`, or the file's content), below `root`.
fn contents(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            let what = if t.is_dir() {
                walk(root, &r, out);
                "d".to_string()
            } else if t.is_symlink() {
                format!("l {}", std::fs::read_link(e.path()).unwrap().display())
            } else {
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).into_owned()
            };
            out.insert(r.display().to_string(), what);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out.retain(|k, _| !k.starts_with(".jailsync"));
    out
}

/// `hosts` in the configuration file are push's targets when the command line names none
/// (here a bare root, pushed over a pipe); named ones replace them, and the jail's own
/// `host` lines come before the file's.
#[test]
fn push_takes_its_hosts_from_the_configuration_file() {
    let t = tempfile::tempdir().unwrap();
    let (jail, root, other) = (
        Tree::new(t.path().join("jail")),
        Tree::new(t.path().join("root")),
        Tree::new(t.path().join("other")),
    );
    jail.file("usr/pkg/bin/tool", b"new\n");
    root.file("usr/pkg/bin/tool", b"old\n");
    other.file("usr/pkg/bin/tool", b"old\n");
    let conf = t.path().join("jailsync.toml");
    std::fs::write(
        &conf,
        format!(
            "state-dir = {:?}\nhosts = [{:?}]\n",
            t.path().join("state").display().to_string(),
            root.root.display().to_string()
        ),
    )
    .unwrap();
    let push = |extra: &[&OsStr]| {
        let mut a: Vec<&OsStr> = vec![OsStr::new("push"), jail.root.as_os_str()];
        a.extend(extra);
        a.extend([OsStr::new("--tree"), OsStr::new("usr/pkg")]);
        js_conf(&conf, &a)
    };
    expect_code(&push(&[]), 0);
    assert_eq!(
        std::fs::read(root.path("usr/pkg/bin/tool")).unwrap(),
        b"new\n"
    );
    assert_eq!(
        std::fs::read(other.path("usr/pkg/bin/tool")).unwrap(),
        b"old\n"
    );
    // Named on the command line: only those.
    root.file("usr/pkg/bin/tool", b"edited\n");
    expect_code(&push(&[other.root.as_os_str()]), 0);
    assert_eq!(
        std::fs::read(other.path("usr/pkg/bin/tool")).unwrap(),
        b"new\n"
    );
    assert_eq!(
        std::fs::read(root.path("usr/pkg/bin/tool")).unwrap(),
        b"edited\n"
    );
    // The jail's own `host` lines come before the file's.
    jail.file(
        "jailsync.conf",
        format!("# its fleet\nhost {}\n", other.root.display()),
    );
    jail.file("usr/pkg/bin/tool", b"newer\n");
    expect_code(&push(&[]), 0);
    assert_eq!(
        std::fs::read(other.path("usr/pkg/bin/tool")).unwrap(),
        b"newer\n"
    );
    assert_eq!(
        std::fs::read(root.path("usr/pkg/bin/tool")).unwrap(),
        b"edited\n"
    );
    std::fs::remove_file(jail.path("jailsync.conf")).unwrap();
    // None anywhere: a clear refusal.
    std::fs::write(&conf, "").unwrap();
    let o = push(&[]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("no host to push to"), "{}", stderr(&o));
}

#[test]
fn config_file_gives_defaults_flags_override_and_config_says_where() {
    let e = Env::new().with_dst();
    let conf = e.tmp.path().join("jailsync.toml");
    let state = e.state();
    std::fs::write(
        &conf,
        format!(
            "# on-call's defaults\nstate-dir = {:?}\nmax-delete = 1\nexclude = [\"*.log\"]\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    e.src.file("a", "new").file("app.log", "jail's log");
    e.dst
        .file("old1", "x")
        .file("old2", "y")
        .file("app.log", "live log");
    let sync = |extra: &[&str]| {
        let mut a: Vec<&OsStr> = vec![OsStr::new("sync")];
        a.extend(extra.iter().map(OsStr::new));
        a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
        js_conf(&conf, &a)
    };
    // The file's max-delete refuses two deletes; the flag overrides it.
    let o = sync(&[]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("delete"), "{}", stderr(&o));
    assert!(e.dst().join("old1").exists());
    expect_code(&sync(&["--max-delete", "5"]), 0);
    // The file's exclude applied: the live log is the live system's.
    assert_eq!(
        std::fs::read_to_string(e.dst().join("app.log")).unwrap(),
        "live log"
    );
    assert!(!e.dst().join("old1").exists());
    // Its state dir used: the generation is recorded there.
    assert!(
        state.join("trees").is_dir(),
        "the file's state-dir was not used"
    );

    let o = js_conf(&conf, &[OsStr::new("config")]);
    expect_code(&o, 0);
    let out = stdout(&o);
    let conf_s = conf.display().to_string();
    for want in [
        format!("max-delete = 1  # {conf_s}:3"),
        format!("exclude = [\"*.log\"]  # {conf_s}:4"),
        format!(
            "state-dir = {:?}  # {conf_s}:2",
            state.display().to_string()
        ),
        "keep = 3  # default".to_string(),
    ] {
        assert!(out.contains(&want), "no {want:?} in:\n{out}");
    }
    let o = js_conf(
        &conf,
        &[
            OsStr::new("--state-dir"),
            OsStr::new("/x"),
            OsStr::new("config"),
            OsStr::new("--json"),
        ],
    );
    let v = json_lines(&stdout(&o));
    let sd = v.iter().find(|x| x["key"] == "state-dir").unwrap();
    assert_eq!(sd["value"], "/x");
    assert_eq!(sd["from"], "--state-dir");
}

#[test]
fn config_file_unknown_key_is_an_error_naming_the_line() {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("c.toml");
    std::fs::write(&conf, "keep = 2\n\nkeeep = 3\n").unwrap();
    let o = js_conf(&conf, &[OsStr::new("config")]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: line 3: unknown field `keeep`",
            conf.display()
        )),
        "{err}"
    );
    // Commands no setting changes work whatever the file says.
    expect_code(&js_conf(&conf, &[OsStr::new("man")]), 0);
    // A file named explicitly must be there.
    let o = js_conf(&d.path().join("missing"), &[OsStr::new("config")]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
}

/// The fixture the filter tests sync: a source, and a destination with entries to replace,
/// delete, and keep (where excluded).
fn filter_fixture(e: &Env) {
    e.src
        .file("keep.log", "s")
        .file("other.log", "s")
        .file("top-only", "s")
        .file("sub/top-only", "s")
        .file("tmp/a", "s")
        .file("tmpf/tmp", "s")
        .file("etc/keep/a.conf", "s")
        .file("etc/keep/deep/b", "s")
        .file("etc/drop.conf", "s")
        .file("opt/lib/x.so", "s")
        .file("opt/lib/x.txt", "s")
        .file("x/y", "s")
        .file("a/x/y", "s")
        .file("ax/y", "s")
        .file("bin/tool", "s")
        .file("README", "s");
    e.dst
        .file("other.log", "live")
        .file("etc/drop.conf", "live")
        .file("etc/local.conf", "live")
        .file("etc/keep/old", "live")
        .file("tmp/live", "live")
        .file("top-only", "live")
        .file("sub/top-only", "live")
        .file("a/x/y", "live")
        .file("ax/y", "live")
        .file("gone", "live")
        .file("LEGACY", "live");
}

/// Syncs with jailsync and with rsync (into a copy of the destination), the same filter
/// arguments, and asserts the same resulting tree.
fn same_as_rsync(e: &Env, args: &[&str]) {
    let theirs = e.tmp.path().join("rsync-dst");
    let o = Command::new("cp")
        .arg("-a")
        .arg(e.dst())
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(o.status.success());
    let mut a: Vec<&OsStr> = vec![OsStr::new("sync")];
    a.extend(args.iter().map(OsStr::new));
    a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
    expect_code(&e.js(&a), 0);
    let mut s = e.src().as_os_str().to_owned();
    s.push("/");
    let mut d = theirs.as_os_str().to_owned();
    d.push("/");
    let o = Command::new("rsync")
        .args(["-a", "--delete"])
        .args(args)
        .arg(s)
        .arg(d)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (ours, theirs) = (contents(e.dst()), contents(&theirs));
    assert_eq!(ours, theirs, "jailsync {args:?} differs from rsync");
}

#[test]
fn filter_merge_file_leaves_what_rsync_leaves() {
    require!(have("rsync"), "rsync not installed (the oracle)");
    let e = Env::new().with_dst();
    filter_fixture(&e);
    let before = contents(e.dst());
    let rules = e.tmp.path().join("rules");
    let more = e.tmp.path().join("more");
    std::fs::write(
        &rules,
        format!(
            "# what the live system keeps\n+ keep.log\n- *.log\n- /top-only\n- tmp/\n\
         + /etc/keep/***\n- /etc/*\nmerge {}\n",
            more.display()
        ),
    )
    .unwrap();
    std::fs::write(&more, "; per-host\n- x/y\n-! **[a-z]**\n").unwrap();
    let merge = format!("merge {}", rules.display());
    same_as_rsync(&e, &["--filter", &merge]);
    // What the rules mean, spelled out: an excluded live file stays, an included one goes.
    let got = contents(e.dst());
    assert_eq!(got["other.log"], "live");
    assert_eq!(got["etc/local.conf"], "live");
    assert!(!got.contains_key("gone"));
    // `-!`: what has no lowercase letter is excluded.
    assert_eq!(got["LEGACY"], "live");
    assert!(!got.contains_key("README"));
    assert!(got.contains_key("keep.log") && !got.contains_key("x/y") && got.contains_key("ax/y"));
    // verify with the same rules leaves alone what the sync left alone; without, differs.
    let verify = |f: &[&str]| {
        let mut a = vec![OsStr::new("verify")];
        a.extend(f.iter().map(OsStr::new));
        a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
        e.js(&a)
    };
    expect_code(&verify(&["--filter", &merge]), 0);
    expect_code(&verify(&[]), 1);
    // The rules are recorded with the generation: its rollback compares what the sync saw.
    expect_code(&e.js([OsStr::new("rollback"), e.dst().as_os_str()]), 0);
    assert_eq!(contents(e.dst()), before, "rollback after a filtered sync");
}

#[test]
fn include_exclude_order_and_exclude_from_as_rsync() {
    require!(have("rsync"), "rsync not installed (the oracle)");
    let e = Env::new().with_dst();
    filter_fixture(&e);
    // rsync's idiom: every directory, the .so files, nothing else.
    same_as_rsync(
        &e,
        &["--include", "*/", "--include", "*.so", "--exclude", "*"],
    );

    let e = Env::new().with_dst();
    filter_fixture(&e);
    let from = e.tmp.path().join("ex");
    std::fs::write(&from, "# comment\n+ keep.log\n*.log\n!\n- /etc/*\n").unwrap();
    let f = from.display().to_string();
    same_as_rsync(&e, &["--exclude-from", &f, "--filter", "- tmp/"]);
}

#[test]
fn bad_rules_are_refused_naming_the_file_and_line() {
    let e = Env::new().with_dst();
    e.src.file("a", "x");
    let rules = e.tmp.path().join("rules");
    std::fs::write(&rules, "- ok\n: .rsync-filter\n").unwrap();
    let merge = format!("merge {}", rules.display());
    let o = e.js([
        OsStr::new("sync"),
        OsStr::new("--filter"),
        OsStr::new(&merge),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: line 2", rules.display())),
        "{err}"
    );
    assert!(
        err.contains("per-directory merge files are not supported"),
        "{err}"
    );
    assert!(
        !e.dst().join("a").exists(),
        "a refused run changed the destination"
    );
}

#[test]
fn jail_conf_exclude_lines_keep_live_entries() {
    let jail = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let j = Tree::new(jail.path());
    j.file("jailsync.conf", "tree opt/app\nexclude *.local\n")
        .file("opt/app/bin/x", "new")
        .file("opt/app/etc.local", "jail");
    let r = Tree::new(root.path());
    r.file("opt/app/bin/x", "old")
        .file("opt/app/site.local", "live");
    let o = run([
        OsStr::new("--state-dir"),
        state.path().as_os_str(),
        OsStr::new("upgrade"),
        jail.path().as_os_str(),
        OsStr::new("--root"),
        root.path().as_os_str(),
    ]);
    expect_code(&o, 0);
    let got = contents(&root.path().join("opt/app"));
    assert_eq!(got["bin/x"], "new");
    assert_eq!(got["site.local"], "live");
    assert!(
        !got.contains_key("etc.local"),
        "an excluded jail entry was copied"
    );
}

/// A child running `exe`, killed and reaped on drop.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `exe 600` and waits until the kernel shows it mapping `exe`.
fn start(exe: &Path) -> Running {
    let c = Command::new(exe)
        .arg("600")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let maps = format!("/proc/{}/maps", c.id());
    let want = exe.display().to_string();
    for _ in 0..500 {
        if std::fs::read_to_string(&maps).is_ok_and(|m| m.contains(&want)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Running(c)
}

/// A real cgroup named like a systemd service for `pid` (v1's systemd hierarchy or the
/// unified one), removed on drop; None (with the reason printed) where none can be made.
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new(pid: u32, name: &str) -> Option<Cgroup> {
        for base in [
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let d = Path::new(base).join(name);
            if std::fs::create_dir(&d).is_ok() {
                if std::fs::write(d.join("cgroup.procs"), pid.to_string()).is_ok() {
                    return Some(Cgroup(d));
                }
                let _ = std::fs::remove_dir(&d);
            }
        }
        eprintln!(
            "cgroup part skipped: no writable cgroup hierarchy here (needs root and cgroupfs)"
        );
        None
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Only empty once its process is gone: the process is killed first (declared later).
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

#[test]
fn restart_report_names_processes_of_every_kept_generation_even_quiet() {
    require!(
        cfg!(target_os = "linux"),
        "the restart report reads Linux's /proc"
    );
    let e = Env::new();
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(sleep) = sleep else {
        eprintln!("skipped: no sleep binary to run from the tree");
        return;
    };
    let mut bin = std::fs::read(sleep).unwrap();
    e.src
        .file("bin/sleepy", &bin)
        .mode("bin/sleepy", 0o755)
        .file("v", "1");
    e.sync(&[]);
    let exe = e.dst().join("bin/sleepy");
    let p = start(&exe);
    let pid = p.0.id();
    let name = format!("jailsync-test-{pid}.service");
    let cg = if is_root() {
        Cgroup::new(pid, &name)
    } else {
        None
    };

    // Upgrade the binary: the process now runs generation 1's file.
    bin.push(0);
    e.src.file("bin/sleepy", &bin).file("v", "2");
    let sync_q = |json: bool| {
        let mut a: Vec<&OsStr> = vec![OsStr::new("sync"), OsStr::new("-q")];
        if json {
            a.push(OsStr::new("--json"));
        }
        a.extend([e.src().as_os_str(), e.dst().as_os_str()]);
        let o = e.js(&a);
        expect_code(&o, 0);
        o
    };
    let o = sync_q(false);
    let err = stderr(&o);
    let line = format!("pid {pid} (sleepy");
    assert!(err.contains(&line), "no restart line under -q:\n{err}");
    if cg.is_some() {
        assert!(
            err.contains(&format!("systemctl restart {name}")),
            "no unit named:\n{err}"
        );
    }
    // A further upgrade that does not touch the binary: the process still runs an older
    // generation than this run's, and is still named.
    e.src.file("v", "3");
    let o = sync_q(true);
    let v = json_lines(&stdout(&o));
    let proc = v
        .iter()
        .find(|x| x["type"] == "process" && x["pid"] == pid)
        .unwrap_or_else(|| panic!("no process object for {pid}:\n{}", stdout(&o)));
    assert!(
        proc["file"].as_str().unwrap().ends_with("bin/sleepy"),
        "{proc}"
    );
    if cg.is_some() {
        assert_eq!(proc["unit"], name.as_str());
    }
    // On demand, for that tree: exit 1 (action needed).
    let o = e.js([OsStr::new("procs"), e.dst().as_os_str()]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains(&line), "{}", stderr(&o));
    drop(p);
    let o = e.js([OsStr::new("procs"), e.dst().as_os_str()]);
    expect_code(&o, 0);
    drop(cg);
}

#[test]
fn procs_finds_a_deleted_file_under_a_tree() {
    require!(
        cfg!(target_os = "linux"),
        "the restart report reads Linux's /proc"
    );
    let e = Env::new();
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(sleep) = sleep else {
        eprintln!("skipped: no sleep binary to run from the tree");
        return;
    };
    e.src
        .file("bin/other", std::fs::read(sleep).unwrap())
        .mode("bin/other", 0o755);
    e.sync(&[]);
    let exe = e.dst().join("bin/other");
    let p = start(&exe);
    // What a package manager replacing files in place leaves: the old file unlinked.
    std::fs::remove_file(&exe).unwrap();
    let o = e.js([
        OsStr::new("--json"),
        OsStr::new("procs"),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 1);
    let v = json_lines(&stdout(&o));
    assert!(
        v.iter()
            .any(|x| x["pid"] == p.0.id() && x["file"] == exe.display().to_string()),
        "{}",
        stdout(&o)
    );
    // Without ROOT: every tree synced with this state dir, and only those (not the
    // directories above them, whose records are only locks).
    let o = e.js([OsStr::new("--json"), OsStr::new("procs")]);
    expect_code(&o, 1);
    let v = json_lines(&stdout(&o));
    assert!(
        !v.is_empty() && v.iter().all(|x| x["pid"] == p.0.id()),
        "{}",
        stdout(&o)
    );
}

/// `jailsync ARGS` (state dir of `e`) with the audit line sent to `sock`.
fn js_logged(e: &Env, sock: &Path, args: &[&OsStr]) -> std::process::Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(e.state())
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .env("JAILSYNC_SYSLOG_SOCKET", sock)
        .output()
        .expect("run jailsync")
}

#[test]
fn audit_line_per_run_to_a_syslog_socket() {
    use std::os::unix::net::UnixDatagram;
    let e = Env::new();
    let sock = e.tmp.path().join("log.sock");
    let log = UnixDatagram::bind(&sock).unwrap();
    log.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let recv = || {
        let mut buf = vec![0u8; 4096];
        let n = log.recv(&mut buf).expect("no audit line");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    e.src.file("a", "12345").file("b", "x");
    let (src, dst) = (e.src().as_os_str(), e.dst().as_os_str());
    expect_code(&js_logged(&e, &sock, &[OsStr::new("sync"), src, dst]), 0);
    let l = recv();
    let dst_s = std::fs::canonicalize(e.dst())
        .unwrap()
        .display()
        .to_string();
    assert!(l.starts_with("<30>jailsync["), "{l}");
    for want in [
        "command=sync".to_string(),
        format!("trees={dst_s}"),
        "created=".to_string(),
        "exit=0 result=ok".to_string(),
    ] {
        assert!(l.contains(&want), "no {want:?} in {l}");
    }
    e.src.file("a", "changed");
    expect_code(&js_logged(&e, &sock, &[OsStr::new("sync"), src, dst]), 0);
    let l = recv();
    let gen = l
        .split(' ')
        .find_map(|w| w.strip_prefix("generations="))
        .unwrap_or_else(|| panic!("no generations in {l}"))
        .to_string();
    assert!(gen.parse::<u64>().is_ok() && l.contains("updated=1"), "{l}");
    assert!(l.contains("bytes=7"), "{l}");
    // A dry run changes nothing and logs nothing; a read-only command neither.
    expect_code(
        &js_logged(&e, &sock, &[OsStr::new("sync"), OsStr::new("-n"), src, dst]),
        0,
    );
    expect_code(&js_logged(&e, &sock, &[OsStr::new("history"), dst]), 0);
    // A fatal error is logged with its cause and exit 2.
    let missing = e.tmp.path().join("missing");
    expect_code(
        &js_logged(&e, &sock, &[OsStr::new("sync"), missing.as_os_str(), dst]),
        2,
    );
    let l = recv();
    assert!(
        l.starts_with("<27>") && l.contains("exit=2 result=error: "),
        "{l}"
    );
    assert!(l.contains("missing"), "{l}");
    expect_code(&js_logged(&e, &sock, &[OsStr::new("rollback"), dst]), 0);
    let l = recv();
    assert!(
        l.contains("command=rollback") && l.contains(&format!("generations={gen} ")),
        "{l}"
    );
    // Nothing listening: the run is no worse for it.
    drop(log);
    std::fs::remove_file(&sock).unwrap();
    expect_code(&js_logged(&e, &sock, &[OsStr::new("sync"), src, dst]), 0);
}

#[test]
fn stats_block_counts_files_sizes_and_speedup() {
    let e = Env::new();
    e.src
        .file("a", "12345")
        .file("d/b", "0123456789")
        .symlink("l", "a");
    let out = e.sync(&["--stats"]);
    for want in [
        "Number of files: 5 (reg: 2, dir: 2, link: 1, special: 0)",
        "Number of created files: 4",
        "Total file size: 15 bytes",
        "total size is 15  speedup is",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    // Nothing to write the second time: the speed-up is the whole size.
    let out = e.sync(&["--stats"]);
    assert!(out.contains("wrote 0 bytes"), "{out}");
    assert!(out.contains("speedup is 15.00"), "{out}");
}

#[test]
fn json_fatal_error_is_an_object_on_stdout() {
    let e = Env::new();
    let missing = e.tmp.path().join("missing");
    let o = e.js([
        OsStr::new("--json"),
        OsStr::new("sync"),
        missing.as_os_str(),
        e.dst().as_os_str(),
    ]);
    expect_code(&o, 2);
    let v = json_lines(&stdout(&o));
    let last = v.last().expect("no JSON on stdout");
    assert_eq!(last["type"], "error");
    assert_eq!(last["fatal"], true);
    assert_eq!(last["exit"], 2);
    assert!(
        last["error"].as_str().unwrap().contains("missing"),
        "{last}"
    );
    // A usage error too.
    let o = e.js(["--json", "sync", "--no-such-flag"]);
    expect_code(&o, 2);
    let v = json_lines(&stdout(&o));
    assert_eq!(v.last().unwrap()["type"], "error");
}

/// The lock file of `dst` in `state` (after a run made it).
fn lock_file(state: &Path, dst: &Path) -> std::path::PathBuf {
    let dst = std::fs::canonicalize(dst).unwrap();
    for d in std::fs::read_dir(state.join("trees")).unwrap() {
        let d = d.unwrap().path();
        if std::fs::read(d.join("path")).ok().as_deref() == Some(dst.as_os_str().as_encoded_bytes())
        {
            return d.join("lock");
        }
    }
    panic!("no lock file for {}", dst.display());
}

#[test]
fn wait_queues_behind_a_run_holding_the_lock() {
    use std::os::fd::AsRawFd;
    let e = Env::new();
    e.src.file("a", "1");
    e.sync(&[]);
    e.src.file("a", "2");
    // What a run holds while it changes the tree: an exclusive flock on its lock file.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_file(&e.state(), e.dst()))
        .unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
    let args = |w: &str| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = vec!["--state-dir".into(), e.state().into()];
        if !w.is_empty() {
            v.push(w.into());
        }
        v.extend(["sync".into(), e.src().into(), e.dst().into()]);
        v
    };
    let o = run(args(""));
    expect_code(&o, 2);
    assert!(stderr(&o).contains("pass --wait"), "{}", stderr(&o));
    let t0 = std::time::Instant::now();
    let o = run(args("--wait=1"));
    expect_code(&o, 2);
    assert!(
        t0.elapsed() >= std::time::Duration::from_secs(1),
        "did not wait"
    );
    let mut child = Command::new(BIN)
        .args(args("--wait"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        child.try_wait().unwrap().is_none(),
        "--wait did not wait for the lock"
    );
    assert_eq!(std::fs::read_to_string(e.dst().join("a")).unwrap(), "1");
    drop(held);
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
    assert_eq!(std::fs::read_to_string(e.dst().join("a")).unwrap(), "2");
}

#[test]
fn kept_configuration_is_named_even_quiet_when_a_merge_is_due() {
    let jail = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let j = Tree::new(jail.path());
    j.file("jailsync.conf", "tree opt/app\n")
        .file("opt/app/etc/app.conf", "port 1\n")
        .file("opt/app/etc/other.conf", "x\n");
    let up = || {
        run([
            OsStr::new("--state-dir"),
            state.path().as_os_str(),
            OsStr::new("-q"),
            OsStr::new("upgrade"),
            jail.path().as_os_str(),
            OsStr::new("--root"),
            root.path().as_os_str(),
        ])
    };
    expect_code(&up(), 0);
    let live = root.path().join("opt/app/etc/app.conf");
    std::fs::write(&live, "port 2 # the admin's\n").unwrap();
    j.file("opt/app/etc/app.conf", "port 1\nnew-option yes\n");
    let o = up();
    expect_code(&o, 0);
    let err = stderr(&o);
    let live_c = std::fs::canonicalize(&live).unwrap();
    assert!(
        err.contains(&format!(
            "{}: kept as edited here; the jail's version is {}.jailsync-new",
            live_c.display(),
            live_c.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("other.conf"),
        "an untouched file named:\n{err}"
    );
    assert!(root
        .path()
        .join("opt/app/etc/app.conf.jailsync-new")
        .exists());
    // Kept again, the jail unchanged since: nothing to do, so named only with -v.
    let again = |v: &str| {
        let mut a = vec![OsStr::new("--state-dir"), state.path().as_os_str()];
        if !v.is_empty() {
            a.push(OsStr::new(v));
        }
        a.extend([
            OsStr::new("upgrade"),
            jail.path().as_os_str(),
            OsStr::new("--root"),
            root.path().as_os_str(),
        ]);
        let o = run(a);
        expect_code(&o, 0);
        stderr(&o)
    };
    let err = again("");
    assert!(
        !err.contains("app.conf:"),
        "a file merely kept again named:\n{err}"
    );
    let err = again("-v");
    let want = format!(
        "{}: kept as edited here (unchanged in the jail)",
        live_c.display()
    );
    assert!(err.contains(&want), "{err}");
}

/// Every key the configuration file takes, as `jailsync config` lists them.
fn config_keys() -> Vec<String> {
    let d = tempfile::tempdir().unwrap();
    let conf = d.path().join("c.toml");
    std::fs::write(&conf, "").unwrap();
    let o = js_conf(&conf, &[OsStr::new("--json"), OsStr::new("config")]);
    expect_code(&o, 0);
    json_lines(&stdout(&o))
        .iter()
        .filter(|v| v["type"] == "setting")
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn man_page_documents_every_config_key_filters_and_exit_status() {
    let o = run(["man"]);
    expect_code(&o, 0);
    let page = stdout(&o);
    for s in [
        "FILTER RULES",
        "RESTART REPORT",
        "AUDIT TRAIL",
        "FILES",
        "ENVIRONMENT",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(
            page.contains(&format!(".SH \"{s}\"")) || page.contains(&format!(".SH {s}\n")),
            "no {s} section"
        );
    }
    let keys = config_keys();
    assert!(keys.len() >= 9, "{keys:?}");
    for k in keys {
        let roff = k.replace('-', "\\-");
        assert!(
            page.contains(&format!("\\fB{roff}\\fR")),
            "config key {k} not documented"
        );
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    for k in config_keys() {
        assert!(
            readme.contains(&format!("`{k}`")),
            "config key {k} not in the README"
        );
    }
    // The per-command pages keep the extra sections on the top page.
    let d = tempfile::tempdir().unwrap();
    expect_code(
        &run([OsStr::new("man"), OsStr::new("--dir"), d.path().as_os_str()]),
        0,
    );
    let top = std::fs::read_to_string(d.path().join("jailsync.1")).unwrap();
    assert!(top.contains("FILTER RULES"));
}

/// Runs `script` with `sh` in a private mount namespace (`$JS` the binary, `$J` a jail path
/// in a temp dir); None (reason printed) where that cannot be done.
fn in_namespace(script: &str) -> Option<(tempfile::TempDir, String)> {
    if !is_root() || !have("unshare") {
        eprintln!("skipped: needs root and unshare(1) for a private mount namespace");
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("JS", BIN)
        .env("J", t.path().join("j"))
        .output()
        .unwrap();
    let out = format!("{}\n--- stderr\n{}", stdout(&o), stderr(&o));
    Some((t, out))
}

#[test]
fn jail_enter_starts_a_clean_environment_with_the_jail_prompt() {
    let script = r#"
"$JS" jail init "$J" --marker TJ >/dev/null || echo init_failed
FOO=host SECRET=host PS1='$ ' "$JS" jail enter --keep-env FOO "$J" -- /bin/sh -c \
    'echo "foo=$FOO"; echo "secret=${SECRET:-unset}"; echo "path=$PATH"; echo "ps1=$PS1"'
if [ -x /bin/bash ]; then
    mkdir -p "$J/hh" && echo 'PS1="rc> "' > "$J/hh/.bashrc"
    printf 'echo "bash=$PS1"\nexit\n' | HOME=/hh "$JS" jail enter "$J" -- /bin/bash -i 2>/dev/null
fi
"#;
    let Some((_t, out)) = in_namespace(script) else {
        return;
    };
    assert!(!out.contains("init_failed"), "{out}");
    assert!(out.contains("foo=host\n"), "--keep-env not passed:\n{out}");
    assert!(
        out.contains("secret=unset\n"),
        "the caller's environment leaked:\n{out}"
    );
    assert!(out.contains("path=/usr/pkg/sbin:/usr/pkg/bin:"), "{out}");
    assert!(out.contains("ps1=TJ::$ \n"), "{out}");
    if Path::new("/bin/bash").exists() {
        assert!(
            out.contains("bash=TJ::rc> "),
            "an rc file's PS1 lost the marker:\n{out}"
        );
    }
}

#[test]
fn jail_init_layouts_make_only_what_the_jail_holds() {
    let t = tempfile::tempdir().unwrap();
    let deb = t.path().join("deb");
    expect_code(
        &run([
            OsStr::new("jail"),
            OsStr::new("init"),
            deb.as_os_str(),
            OsStr::new("--layout"),
            OsStr::new("debian"),
        ]),
        0,
    );
    let mp = std::fs::read_to_string(deb.join("mountpoints")).unwrap();
    let lines: Vec<&str> = mp.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(lines, ["proc proc", "dev rbind", "tmp tmpfs"]);
    assert!(
        !deb.join("usr/pkg").exists() && !deb.join("usr/obj").exists(),
        "pkgsrc dirs in a debian jail"
    );
    assert!(deb.join("tmp").is_dir() && deb.join(".jail").is_file());
    let bare = t.path().join("bare");
    expect_code(
        &run([
            OsStr::new("jail"),
            OsStr::new("init"),
            bare.as_os_str(),
            OsStr::new("--layout"),
            OsStr::new("bare"),
        ]),
        0,
    );
    let names: Vec<String> = std::fs::read_dir(&bare)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, [".jail", "mountpoints"]);
    let pkg = t.path().join("pkg");
    expect_code(
        &run([
            OsStr::new("jail"),
            OsStr::new("init"),
            pkg.as_os_str(),
            OsStr::new("--host-root"),
            t.path().as_os_str(),
        ]),
        0,
    );
    assert!(
        pkg.join("usr/pkg/pkgdb").is_dir(),
        "the default layout lost its pkgsrc dirs"
    );
}

#[test]
fn jail_remove_asks_on_a_terminal_and_forgets_the_jails_state() {
    let e = Env::new();
    let j = e.tmp.path().join("j");
    expect_code(
        &run([
            OsStr::new("jail"),
            OsStr::new("init"),
            j.as_os_str(),
            OsStr::new("--layout"),
            OsStr::new("bare"),
        ]),
        0,
    );
    // A tree synced into the jail has records in the state dir.
    e.src.file("a", "x");
    let inside = j.join("usr/pkg");
    std::fs::create_dir_all(j.join("usr")).unwrap();
    expect_code(
        &e.js([OsStr::new("sync"), e.src().as_os_str(), inside.as_os_str()]),
        0,
    );
    let jc = std::fs::canonicalize(&j).unwrap();
    let records = || {
        std::fs::read_dir(e.state().join("trees"))
            .unwrap()
            .filter(|d| {
                let p = std::fs::read(d.as_ref().unwrap().path().join("path")).unwrap_or_default();
                Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&p))
                    .starts_with(&jc)
            })
            .count()
    };
    assert!(records() >= 1, "no records of the synced tree");
    if have("script") {
        // On a terminal, "n" keeps it.
        let cmd = format!(
            "{BIN} --state-dir {} jail remove {}",
            e.state().display(),
            j.display()
        );
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("printf 'n\\n' | script -qec '{cmd}' /dev/null"))
            .output()
            .unwrap();
        assert!(
            stdout(&o).contains("[y/N]"),
            "no question on a terminal:\n{}",
            stdout(&o)
        );
        assert!(j.join(".jail").exists(), "removed without a yes");
    } else {
        eprintln!("terminal part skipped: script(1) not installed");
    }
    let o = e.js([
        OsStr::new("jail"),
        OsStr::new("remove"),
        OsStr::new("--yes"),
        j.as_os_str(),
    ]);
    expect_code(&o, 0);
    assert!(!j.exists());
    assert_eq!(records(), 0, "the jail's tree records were kept");
}

#[test]
fn error_messages_say_the_fix() {
    let e = Env::new();
    let t = e.tmp.path();
    let jail = t.join("jail");
    let root = t.join("root");
    Tree::new(&jail)
        .file("opt/app/bin/x", "1")
        .file("jailsync.conf", "tree opt/app\n");
    std::fs::create_dir_all(&root).unwrap();
    let err_of = |args: &[&OsStr]| {
        let o = e.js(args);
        expect_code(&o, 2);
        stderr(&o)
    };
    // A missing jail.
    let err = err_of(&[
        OsStr::new("upgrade"),
        t.join("nojail").as_os_str(),
        OsStr::new("--root"),
        root.as_os_str(),
    ]);
    assert!(
        err.contains("no such jail") && err.contains("jailsync jail init"),
        "{err}"
    );
    // A positional ROOT.
    let err = err_of(&[OsStr::new("upgrade"), jail.as_os_str(), root.as_os_str()]);
    assert!(err.contains(&format!("--root {}", root.display())), "{err}");
    // `rollback ROOT` after `upgrade --root ROOT`.
    expect_code(
        &e.js([
            OsStr::new("-q"),
            OsStr::new("upgrade"),
            jail.as_os_str(),
            OsStr::new("--root"),
            root.as_os_str(),
        ]),
        0,
    );
    let err = err_of(&[OsStr::new("rollback"), root.as_os_str()]);
    assert!(
        err.contains(&format!("jailsync rollback --root {}", root.display())),
        "{err}"
    );
    // `prune` of a path never synced; `prune --root` with the default --keep.
    let never = t.join("never");
    std::fs::create_dir(&never).unwrap();
    let err = err_of(&[OsStr::new("prune"), never.as_os_str()]);
    assert!(err.contains("never synced"), "{err}");
    let o = e.js([OsStr::new("prune"), OsStr::new("--root"), root.as_os_str()]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("opt/app"), "{}", stderr(&o));
    // A jail that is not there.
    let o = run([
        OsStr::new("jail"),
        OsStr::new("mount"),
        t.join("nojail").as_os_str(),
    ]);
    if is_root() {
        expect_code(&o, 2);
        assert!(stderr(&o).contains("no such jail"), "{}", stderr(&o));
    }
    // Not root: one line.
    if is_root() && have("setpriv") {
        expect_code(
            &run([
                OsStr::new("jail"),
                OsStr::new("init"),
                jail.as_os_str(),
                OsStr::new("--force"),
            ]),
            0,
        );
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                BIN,
                "jail",
                "mount",
            ])
            .arg(&jail)
            .output()
            .unwrap();
        expect_code(&o, 2);
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("needs root"), "{err}");
    }
}

#[test]
fn shipped_example_configuration_is_valid() {
    let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/examples/jailsync.conf");
    let o = js_conf(&ex, &[OsStr::new("--json"), OsStr::new("config")]);
    expect_code(&o, 0);
    let v = json_lines(&stdout(&o));
    let keep = v.iter().find(|x| x["key"] == "keep").unwrap();
    assert_eq!(keep["value"], 5);
    assert!(
        keep["from"].as_str().unwrap().ends_with("jailsync.conf:5"),
        "{keep}"
    );
}
