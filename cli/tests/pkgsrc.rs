//! Issue 12: real pkgsrc hosts. Today's layout (package database inside the prefix,
//! configuration in `usr/pkg/etc`), the 2005 layout, configuration protection, a jail that can
//! build, and root-level history. Every test runs the real binary on real trees; the jail
//! test mounts for real in a private mount namespace, the switch order is traced with strace.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{self, expect_code, have, is_root, stderr, stdout, BIN};

/// A jail and a live root in one temp dir, with a state dir.
struct Host {
    _tmp: tempfile::TempDir,
    jail: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::Builder::new()
            .prefix("jailsync-pkgsrc-")
            .tempdir()
            .unwrap();
        let t = tmp.path().canonicalize().unwrap();
        let (jail, root, state) = (t.join("jail"), t.join("root"), t.join("state"));
        fs::create_dir_all(&jail).unwrap();
        fs::create_dir_all(&root).unwrap();
        Host {
            _tmp: tmp,
            jail,
            root,
            state,
        }
    }

    fn put(base: &Path, rel: &str, text: &str) {
        let p = base.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn jail_file(&self, rel: &str, text: &str) -> &Self {
        Self::put(&self.jail, rel, text);
        self
    }

    fn live_file(&self, rel: &str, text: &str) -> &Self {
        Self::put(&self.root, rel, text);
        self
    }

    fn live(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.root.join(rel)).ok()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("JAILSYNC_STATE_DIR")
            .env_remove("JAILSYNC_SWITCH");
        c
    }

    fn js(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn upgrade(&self, extra: &[&str]) -> Output {
        let mut a = vec!["upgrade", self.jail.to_str().unwrap(), "--root"];
        a.push(self.root.to_str().unwrap());
        a.extend_from_slice(extra);
        self.js(&a)
    }

    fn root_s(&self) -> &str {
        self.root.to_str().unwrap()
    }
}

/// Every entry of a tree but jailsync's homes: path -> kind and content (or target).
fn contents(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let n = e.file_name();
            if n.to_string_lossy().starts_with(".jailsync-") {
                continue;
            }
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, format!("dir {:o}", m.permissions().mode() & 0o7777));
                walk(base, &p, out);
            } else if m.is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
            } else {
                out.insert(rel, fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    walk(root, root, &mut out);
    out
}

/// The modern layout: programs and configuration in usr/pkg, the database in usr/pkg/pkgdb.
fn modern(h: &Host) {
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.24\n")
        .jail_file("usr/pkg/lib/libssl.so", "ssl 3.0\n")
        .jail_file("usr/pkg/etc/nginx/nginx.conf", "worker_processes 1;\n")
        .jail_file("usr/pkg/etc/nginx/mime.types", "text/html html;\n")
        .jail_file("usr/pkg/etc/ssl/openssl.cnf", "[default]\n")
        .jail_file("usr/pkg/etc/old.conf", "old defaults\n")
        .jail_file("usr/pkg/etc/gone.conf", "gone defaults\n")
        .jail_file("usr/pkg/pkgdb/nginx-1.24/+CONTENTS", "@name nginx-1.24\n")
        .jail_file("usr/pkg/pkgdb/openssl-3.0/+CONTENTS", "@name openssl-3.0\n");
}

#[test]
fn modern_layout_upgraded_twice_with_an_admin_edit_in_between() {
    let h = Host::new();
    modern(&h);
    // The first-run rule: a live file already there that differs from the jail counts as
    // the admin's edit (no base yet).
    h.live_file("usr/pkg/etc/ssl/openssl.cnf", "[default]\nadmin = yes\n");
    h.jail_file("usr/pkg/etc/unused.conf", "x\n");

    let o = h.upgrade(&["-i"]);
    expect_code(&o, 0);
    let out = stdout(&o);
    // -i names the tree of each path: usr/pkg/… and usr/pkg/pkgdb/….
    assert!(out.contains("usr/pkg/bin/nginx"), "{out}");
    assert!(out.contains("usr/pkg/pkgdb/nginx-1.24/+CONTENTS"), "{out}");
    assert!(
        out.contains("*protected usr/pkg/etc/ssl/openssl.cnf"),
        "{out}"
    );
    assert_eq!(
        h.live("usr/pkg/etc/ssl/openssl.cnf").unwrap(),
        "[default]\nadmin = yes\n",
        "first run: the differing live file is kept"
    );
    assert_eq!(
        h.live("usr/pkg/etc/ssl/openssl.cnf.jailsync-new").unwrap(),
        "[default]\n"
    );
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.24\n");
    assert!(h.root.join("usr/pkg/pkgdb/nginx-1.24/+CONTENTS").is_file());
    assert!(
        stderr(&o).contains("configuration: 1 kept as edited with the jail's version written"),
        "{}",
        stderr(&o)
    );

    // The admin edits two files and leaves the others; the jail is rebuilt.
    h.live_file("usr/pkg/etc/nginx/nginx.conf", "worker_processes 8;\n")
        .live_file("usr/pkg/etc/old.conf", "old defaults\nadmin tuned\n")
        .live_file("usr/pkg/etc/gone.conf", "gone defaults\nadmin tuned\n");
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n")
        .jail_file("usr/pkg/etc/nginx/nginx.conf", "worker_processes auto;\n")
        .jail_file("usr/pkg/etc/nginx/mime.types", "text/html html htm;\n");
    fs::remove_file(h.jail.join("usr/pkg/etc/gone.conf")).unwrap();
    fs::remove_dir_all(h.jail.join("usr/pkg/pkgdb/nginx-1.24")).unwrap();
    h.jail_file("usr/pkg/pkgdb/nginx-1.26/+CONTENTS", "@name nginx-1.26\n");
    // Also dropped by the jail, never edited: deleted as usual.
    fs::remove_file(h.jail.join("usr/pkg/etc/unused.conf")).unwrap();

    let dry = h.upgrade(&["-n", "-i", "--json"]);
    expect_code(&dry, 0);
    let o = h.upgrade(&["--json"]);
    expect_code(&o, 0);
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdict = |p: &str| {
        lines
            .iter()
            .find(|v| v["type"] == "config" && v["path"] == p)
            .map(|v| v["verdict"].as_str().unwrap().to_string())
    };
    assert_eq!(
        verdict("usr/pkg/etc/nginx/nginx.conf").as_deref(),
        Some("kept-new")
    );
    assert_eq!(verdict("usr/pkg/etc/old.conf").as_deref(), Some("kept"));
    assert_eq!(
        verdict("usr/pkg/etc/gone.conf").as_deref(),
        Some("kept-dropped")
    );
    assert_eq!(
        verdict("usr/pkg/etc/nginx/mime.types"),
        None,
        "unedited: followed"
    );
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["config_new"], 1, "{summary}");
    assert_eq!(summary["config_kept"], 3, "{summary}");
    // The dry run said the same and changed nothing else.
    assert!(stdout(&dry).contains("\"verdict\":\"kept-new\""));

    // Edited and changed in the jail: kept, the jail's beside it.
    assert_eq!(
        h.live("usr/pkg/etc/nginx/nginx.conf").unwrap(),
        "worker_processes 8;\n"
    );
    assert_eq!(
        h.live("usr/pkg/etc/nginx/nginx.conf.jailsync-new").unwrap(),
        "worker_processes auto;\n"
    );
    // Edited, unchanged in the jail: kept, nothing beside it.
    assert_eq!(
        h.live("usr/pkg/etc/old.conf").unwrap(),
        "old defaults\nadmin tuned\n"
    );
    assert!(h.live("usr/pkg/etc/old.conf.jailsync-new").is_none());
    // Unedited: follows the jail.
    assert_eq!(
        h.live("usr/pkg/etc/nginx/mime.types").unwrap(),
        "text/html html htm;\n"
    );
    // Dropped by the jail but edited: kept. Dropped and never edited: deleted.
    assert_eq!(
        h.live("usr/pkg/etc/gone.conf").unwrap(),
        "gone defaults\nadmin tuned\n"
    );
    assert!(h.live("usr/pkg/etc/unused.conf").is_none());
    // The first run's pending file stays until the admin resolves it.
    assert!(h.live("usr/pkg/etc/ssl/openssl.cnf.jailsync-new").is_some());
    // Programs and database followed.
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26\n");
    assert!(h.root.join("usr/pkg/pkgdb/nginx-1.26/+CONTENTS").is_file());
    assert!(!h.root.join("usr/pkg/pkgdb/nginx-1.24").exists());

    // verify: kept configuration is not a difference (said on stderr), the rest matches.
    let j = h.jail.join("usr/pkg");
    let r = h.root.join("usr/pkg");
    let v = h.js(&["verify", j.to_str().unwrap(), r.to_str().unwrap()]);
    expect_code(&v, 0);
    // nginx.conf, old.conf, gone.conf, and openssl.cnf kept since the first run.
    assert!(
        stderr(&v).contains("4 configuration files kept"),
        "{}",
        stderr(&v)
    );
    // A real difference still is one.
    h.live_file("usr/pkg/bin/nginx", "tampered\n");
    let v = h.js(&["verify", j.to_str().unwrap(), r.to_str().unwrap()]);
    expect_code(&v, 1);
    h.live_file("usr/pkg/bin/nginx", "nginx 1.26\n");

    // conf-diff shows both pending files as unified diffs, exit 1 while any is pending.
    let d = h.js(&["conf-diff", h.root_s()]);
    expect_code(&d, 1);
    let text = stdout(&d);
    assert!(
        text.contains("-worker_processes 8;\n+worker_processes auto;\n"),
        "{text}"
    );
    assert!(
        text.contains("+++ ") && text.contains("openssl.cnf.jailsync-new"),
        "{text}"
    );
    // Resolved by the admin: nothing pending.
    fs::remove_file(h.root.join("usr/pkg/etc/nginx/nginx.conf.jailsync-new")).unwrap();
    fs::remove_file(h.root.join("usr/pkg/etc/ssl/openssl.cnf.jailsync-new")).unwrap();
    expect_code(&h.js(&["conf-diff", h.root_s()]), 0);

    // --no-protect: the jail wins everywhere (what `sync` does).
    let o = h.upgrade(&["--no-protect"]);
    expect_code(&o, 0);
    assert_eq!(
        h.live("usr/pkg/etc/nginx/nginx.conf").unwrap(),
        "worker_processes auto;\n"
    );
    assert!(h.live("usr/pkg/etc/gone.conf").is_none());
}

/// Runs `cmd` under strace; returns the successful RENAME_EXCHANGE calls as
/// (directory of the second name, second name).
fn exchanges(cmd: &Command, trace: &Path) -> Vec<(String, String)> {
    let mut s = Command::new("strace");
    s.args([
        "-f",
        "-qq",
        "-y",
        "-e",
        "signal=none",
        "-e",
        "trace=rename,renameat,renameat2",
        "-o",
    ])
    .arg(trace)
    .arg(cmd.get_program())
    .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    let o = s.output().unwrap();
    expect_code(&o, 0);
    let text = fs::read_to_string(trace).unwrap();
    let mut out = Vec::new();
    // A switch moves the home's "next" onto the live name: one RENAME_EXCHANGE, or on the
    // portable layer (JAILSYNC_FSX=portable) the middle of its three renames. The homes' own
    // probes (`.probe-a` <-> `.probe-b`) are not switches.
    for l in text.lines().filter(|l| {
        let args = l.find('(').map_or("", |i| &l[i + 1..]);
        let parts: Vec<&str> = args.split(", ").collect();
        // From the home into the live tree's parent (not "next" -> "gen-N" inside the home).
        let dir = |p: Option<&&str>| {
            p.and_then(|p| p.split_once('<'))
                .map(|(_, d)| d.to_string())
        };
        l.ends_with("= 0")
            && parts.get(1) == Some(&"\"next\"")
            && dir(parts.first()) != dir(parts.get(2))
            && !l.contains(".probe-")
    }) {
        // renameat2(3</a/home>, "next", 4</a>, "pkg", RENAME_EXCHANGE) = 0
        let args = &l[l.find('(').unwrap() + 1..];
        let parts: Vec<&str> = args.split(", ").collect();
        let dir = parts[2];
        let dir = &dir[dir.find('<').unwrap() + 1..dir.rfind('>').unwrap()];
        out.push((
            dir.to_string(),
            parts[3]
                .split(')')
                .next()
                .unwrap()
                .trim_matches('"')
                .to_string(),
        ));
    }
    out
}

#[test]
fn nested_database_is_switched_last_with_the_old_one_carried_across() {
    if !have("strace") {
        eprintln!("skipped: strace not installed (.ci/run installs it)");
        return;
    }
    let h = Host::new();
    modern(&h);
    expect_code(&h.upgrade(&[]), 0);
    let db_ino = |h: &Host| {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(h.root.join("usr/pkg/pkgdb/openssl-3.0/+CONTENTS"))
            .unwrap()
            .ino()
    };
    let before = db_ino(&h);
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n");
    fs::remove_dir_all(h.jail.join("usr/pkg/pkgdb/nginx-1.24")).unwrap();
    h.jail_file("usr/pkg/pkgdb/nginx-1.26/+CONTENTS", "@name nginx-1.26\n");
    let mut c = h.cmd(&["upgrade", h.jail.to_str().unwrap(), "--root", h.root_s()]);
    c.arg("-q");
    let x = exchanges(&c, &h.root.parent().unwrap().join("trace"));
    let usr = h.root.join("usr").display().to_string();
    let pkg = h.root.join("usr/pkg").display().to_string();
    assert_eq!(
        x,
        vec![(usr, "pkg".to_string()), (pkg, "pkgdb".to_string())],
        "usr/pkg switched first (carrying the old database), then the database"
    );
    // The unchanged database entry is the same inode: carried across by links, not copied.
    assert_eq!(db_ino(&h), before);
    assert!(h.root.join("usr/pkg/pkgdb/nginx-1.26/+CONTENTS").is_file());
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26\n");
    // Nothing left to do, and the database tree is no longer refused as an overlap.
    let again = h.upgrade(&["-n", "-i"]);
    expect_code(&again, 0);
    assert_eq!(stdout(&again), "");
    // Per tree, both at once cannot be locked together: said plainly, nothing changed.
    let (outer, inner) = (h.root.join("usr/pkg"), h.root.join("usr/pkg/pkgdb"));
    let o = h.js(&["rollback", outer.to_str().unwrap(), inner.to_str().unwrap()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("one at a time"), "{}", stderr(&o));
    assert_eq!(
        h.live("usr/pkg/bin/nginx").unwrap(),
        "nginx 1.26
"
    );
}

#[test]
fn root_rollback_restores_both_trees_also_after_a_killed_run() {
    let h = Host::new();
    modern(&h);
    expect_code(&h.upgrade(&[]), 0);
    let first = contents(&h.root);
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n")
        .jail_file("usr/pkg/etc/nginx/mime.types", "text/html html htm;\n");
    fs::remove_dir_all(h.jail.join("usr/pkg/pkgdb/nginx-1.24")).unwrap();
    h.jail_file("usr/pkg/pkgdb/nginx-1.26/+CONTENTS", "@name nginx-1.26\n");
    expect_code(&h.upgrade(&[]), 0);
    let second = contents(&h.root);
    assert_ne!(first, second);

    let hist = h.js(&["history", "--root", h.root_s()]);
    expect_code(&hist, 0);
    let text = stdout(&hist);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("usr/pkg usr/pkg/pkgdb"),
        "{text}"
    );

    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 0);
    let err = stderr(&o);
    // Reverse order: the database first.
    let db = err.find("usr/pkg/pkgdb: rolled back").expect(&err);
    let pkg = err.find("usr/pkg: rolled back").expect(&err);
    assert!(db < pkg, "{err}");
    assert_eq!(
        contents(&h.root),
        first,
        "both trees as after the first upgrade"
    );
    assert!(stdout(&h.js(&["history", "--root", h.root_s()])).contains("rolled back"));

    // A run killed between the two trees' switches (strace kills it as it makes the
    // database's exchange): rollback --root undoes what it did.
    if !have("strace") {
        eprintln!("killed-run part skipped: strace not installed (.ci/run installs it)");
        return;
    }
    if common::portable() {
        // The kill is placed by counting RENAME_EXCHANGE calls, which the portable layer does
        // not make; its own kill points are tested in portable.rs (the Linux pass runs this).
        eprintln!("killed-run part skipped under JAILSYNC_FSX=portable (see portable.rs)");
        return;
    }
    let c = h.cmd(&["upgrade", h.jail.to_str().unwrap(), "--root", h.root_s()]);
    let o = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "signal=none",
            "-e",
            "trace=rename,renameat,renameat2",
            "-e",
            // renameat2 calls of a run: a probe in each home before its exchange; the 4th
            // is the database's exchange, failed and killed before it happens.
            "inject=renameat2:error=EIO:signal=SIGKILL:when=4",
            "-o",
            "/dev/null",
        ])
        .arg(c.get_program())
        .args(c.get_args())
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0), "the run was killed");
    // usr/pkg was switched, the database not: the live root is between releases.
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26\n");
    assert!(h.root.join("usr/pkg/pkgdb/nginx-1.24").is_dir());
    let hist = stdout(&h.js(&["history", "--root", h.root_s()]));
    assert!(
        hist.lines().next().unwrap().contains("interrupted"),
        "{hist}"
    );
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 0);
    assert_eq!(contents(&h.root), first, "the killed run undone");

    // Killed before the database's exchange (above), or just after it (before its old tree
    // is renamed to its generation: a run's renameat calls are, per tree, three records, then
    // that rename); then usr/pkg changes in the jail too, so the rerun stages usr/pkg and
    // carries the database's home across. The rerun converges; rolling it back leaves what the
    // killed run left; rolling that back gives the first release again.
    for (trace, inject) in [
        (
            "trace=rename,renameat,renameat2",
            "inject=renameat2:error=EIO:signal=SIGKILL:when=4",
        ),
        ("trace=renameat", "inject=renameat:signal=SIGKILL:when=8"),
    ] {
        h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n");
        let o = Command::new("strace")
            .args(["-f", "-qq", "-e", "signal=none", "-e", trace, "-e", inject])
            .args(["-o", "/dev/null"])
            .arg(c.get_program())
            .args(c.get_args())
            .env_remove("JAILSYNC_STATE_DIR")
            .output()
            .unwrap();
        assert_ne!(o.status.code(), Some(0), "{inject}: the run was killed");
        let killed = contents(&h.root);
        assert_eq!(killed["usr/pkg/bin/nginx"], "nginx 1.26\n", "{inject}");
        h.jail_file("usr/pkg/bin/nginx", "nginx 1.26 patched\n");
        expect_code(&h.upgrade(&[]), 0);
        assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26 patched\n");
        assert!(h.root.join("usr/pkg/pkgdb/nginx-1.26").is_dir(), "{inject}");
        let j = h.jail.join("usr/pkg");
        let r = h.root.join("usr/pkg");
        let v = h.js(&["verify", j.to_str().unwrap(), r.to_str().unwrap()]);
        expect_code(&v, 0);
        expect_code(&h.js(&["rollback", "--root", h.root_s()]), 0);
        assert_eq!(contents(&h.root), killed, "{inject}: the rerun undone");
        expect_code(&h.js(&["rollback", "--root", h.root_s()]), 0);
        assert_eq!(contents(&h.root), first, "{inject}: the killed run undone");
    }
}

#[test]
fn layout_of_2005_still_works() {
    let h = Host::new();
    h.jail_file("usr/pkg/bin/tool", "v1\n")
        .jail_file("usr/pkg/etc/tool.conf", "defaults\n")
        .jail_file("var/db/pkg/tool-1/+CONTENTS", "@name tool-1\n");
    let o = h.upgrade(&["-i"]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("var/db/pkg/tool-1/+CONTENTS"),
        "{}",
        stdout(&o)
    );
    h.live_file("usr/pkg/etc/tool.conf", "defaults\nlocal\n");
    h.jail_file("usr/pkg/bin/tool", "v2\n")
        .jail_file("usr/pkg/etc/tool.conf", "defaults v2\n");
    fs::remove_dir_all(h.jail.join("var/db/pkg/tool-1")).unwrap();
    h.jail_file("var/db/pkg/tool-2/+CONTENTS", "@name tool-2\n");
    expect_code(&h.upgrade(&[]), 0);
    assert_eq!(h.live("usr/pkg/bin/tool").unwrap(), "v2\n");
    assert_eq!(
        h.live("usr/pkg/etc/tool.conf").unwrap(),
        "defaults\nlocal\n"
    );
    assert_eq!(
        h.live("usr/pkg/etc/tool.conf.jailsync-new").unwrap(),
        "defaults v2\n"
    );
    assert!(h.root.join("var/db/pkg/tool-2/+CONTENTS").is_file());
    assert!(!h.root.join("var/db/pkg/tool-1").exists());
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 0);
    assert_eq!(h.live("usr/pkg/bin/tool").unwrap(), "v1\n");
    assert!(h.root.join("var/db/pkg/tool-1/+CONTENTS").is_file());
    assert!(h.live("usr/pkg/etc/tool.conf.jailsync-new").is_none());
    // The base went back with the rollback: the restored, edited file is still the admin's.
    expect_code(&h.upgrade(&[]), 0);
    assert_eq!(
        h.live("usr/pkg/etc/tool.conf").unwrap(),
        "defaults\nlocal\n"
    );
}

#[test]
fn layout_from_mk_conf_and_refusals() {
    let h = Host::new();
    h.jail_file("etc/mk.conf", "LOCALBASE=/opt/pkg\nPKG_DBDIR=/opt/pkg/db\n")
        .jail_file("opt/pkg/bin/x", "x\n")
        .jail_file("opt/pkg/db/x-1/+CONTENTS", "@name x-1\n");
    let o = h.upgrade(&["-v"]);
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("PKG_DBDIR /opt/pkg/db from"),
        "{}",
        stderr(&o)
    );
    assert!(h.root.join("opt/pkg/db/x-1/+CONTENTS").is_file());
    assert!(h.root.join("opt/pkg/bin/x").is_file());
    // A jail with no package tree is refused by name, nothing touched.
    let e = Host::new();
    e.jail_file("etc/motd", "hi\n");
    let o = e.upgrade(&[]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("no package trees"), "{}", stderr(&o));
    // Genuinely overlapping user trees stay refused.
    let o = h.upgrade(&["--tree", "opt", "--tree", "opt/pkg/bin"]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
}

/// A jail over this host, mounted for real in a private mount namespace: `enter` runs a
/// non-login command with /proc, a recursive, writable /dev and a private /tmp; `umount`
/// undoes all of it, recursive mounts too, and never a host mount.
#[test]
fn jail_that_can_build() {
    if !is_root() {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: `unshare --mount` is unavailable here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let j = tmp.path().canonicalize().unwrap().join("jail");
    let script = r#"
set -u
"$JS" jail init "$J" > "$T/init.out"; echo init=$?
grep -c '^proc proc$' "$J/mountpoints" | sed 's/^/proc_line=/'
grep -c '^dev rbind$' "$J/mountpoints" | sed 's/^/dev_line=/'
grep -c '^tmp tmpfs$' "$J/mountpoints" | sed 's/^/tmp_line=/'
test -d "$J/usr/pkg/pkgdb" && echo pkgdb=yes
host_pts=$(grep -c ' /dev/pts ' /proc/self/mountinfo)
"$JS" jail enter "$J" -- /bin/sh -c 'cat /proc/self/status > /tmp/status && grep -c "^Pid:" /tmp/status; echo x > /dev/null && echo devnull=ok; test -c /dev/pts/ptmx && echo pts=ok' > "$T/enter.out"; echo enter=$?
cat "$T/enter.out"
awk '$5 == "'"$J"'/tmp" { for (i = 7; i <= NF; i++) if ($i == "-") { print "tmpfs=" $(i+1) } }' /proc/self/mountinfo
awk '$5 == "'"$J"'/proc" { for (i = 7; i <= NF; i++) if ($i == "-") { print "procfs=" $(i+1) } }' /proc/self/mountinfo
"$JS" jail status "$J" > "$T/status.out"; echo status=$?
grep -c unlisted "$T/status.out" | sed 's/^/unlisted=/'
echo below=$(grep -c " $J/dev/" /proc/self/mountinfo)
"$JS" jail umount "$J" > /dev/null; echo umount=$?
echo left=$(grep -c " $J" /proc/self/mountinfo)
test -e "$J/tmp/status" && echo tmp_private=no || echo tmp_private=yes
echo host_pts_kept=$(test "$(grep -c ' /dev/pts ' /proc/self/mountinfo)" = "$host_pts" && echo yes)
"#;
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("JS", BIN)
        .env("J", &j)
        .env("T", tmp.path())
        .env_remove("JAILSYNC_STATE_DIR")
        .output()
        .unwrap();
    let out = stdout(&o);
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in\n{out}\n{}", stderr(&o)))
            .to_string()
    };
    assert_eq!(get("init"), "0", "{out}");
    assert_eq!(get("proc_line"), "1");
    assert_eq!(get("dev_line"), "1");
    assert_eq!(get("tmp_line"), "1");
    assert_eq!(get("pkgdb"), "yes");
    assert_eq!(get("enter"), "0", "{out}\n{}", stderr(&o));
    assert_eq!(
        out.lines().find(|l| !l.contains('=')).map(str::trim),
        Some("1"),
        "{out}"
    );
    assert_eq!(get("devnull"), "ok");
    assert_eq!(get("pts"), "ok", "dev is bound recursively");
    assert_eq!(get("tmpfs"), "tmpfs");
    assert_eq!(get("procfs"), "proc");
    assert_eq!(
        get("tmp_private"),
        "yes",
        "/tmp inside is not the jail directory's"
    );
    assert_eq!(
        get("status"),
        "0",
        "{}",
        fs::read_to_string(tmp.path().join("status.out")).unwrap_or_default()
    );
    assert_eq!(
        get("unlisted"),
        "0",
        "dev's submounts belong to its rbind line"
    );
    assert_ne!(get("below"), "0", "dev/pts came along");
    assert_eq!(get("umount"), "0");
    assert_eq!(get("left"), "0", "everything below the jail unmounted");
    assert_eq!(
        get("host_pts_kept"),
        "yes",
        "the host's /dev/pts is still mounted"
    );
    let init = fs::read_to_string(tmp.path().join("init.out")).unwrap();
    // This host may lack some seed paths (lib32, usr/X11R7, …): init names them.
    if !Path::new("/usr/X11R7").exists() {
        assert!(
            init.contains("left out mount points this host lacks:") && init.contains("usr/X11R7"),
            "{init}"
        );
    }
    let _ = OsStr::new("");
}

#[test]
fn protect_globs_from_the_command_line_and_jailsync_conf() {
    let h = Host::new();
    h.jail_file("usr/pkg/bin/t", "1\n")
        .jail_file("usr/pkg/share/t/a.conf", "a1\n")
        .jail_file("usr/pkg/share/t/b.rc", "b1\n")
        .jail_file("usr/pkg/share/t/c.txt", "c1\n")
        .jail_file("var/db/pkg/t-1/+CONTENTS", "@name t-1\n");
    expect_code(&h.upgrade(&[]), 0);
    for f in ["a.conf", "b.rc", "c.txt"] {
        h.live_file(&format!("usr/pkg/share/t/{f}"), "local\n");
        h.jail_file(&format!("usr/pkg/share/t/{f}"), "2\n");
    }
    h.jail_file("jailsync.conf", "# mine\nprotect *.rc\n");
    let o = h.upgrade(&["--protect", "usr/pkg/share/t/*.conf", "-i"]);
    expect_code(&o, 0);
    assert_eq!(
        h.live("usr/pkg/share/t/a.conf").unwrap(),
        "local\n",
        "--protect"
    );
    assert_eq!(
        h.live("usr/pkg/share/t/a.conf.jailsync-new").unwrap(),
        "2\n"
    );
    assert_eq!(
        h.live("usr/pkg/share/t/b.rc").unwrap(),
        "local\n",
        "protect line"
    );
    assert_eq!(
        h.live("usr/pkg/share/t/c.txt").unwrap(),
        "2\n",
        "not protected"
    );
    // A bad line in jailsync.conf is refused by name and line, nothing changed.
    h.jail_file("jailsync.conf", "protect *.rc\nprotekt x\n");
    let o = h.upgrade(&[]);
    expect_code(&o, 2);
    assert!(
        stderr(&o).contains("jailsync.conf") && stderr(&o).contains("line 2"),
        "{}",
        stderr(&o)
    );
}

/// Root-level rollback names generations by id: ids never restart when none is left
/// (`--keep 1`), a tree synced again after the upgrade refuses it (the later run would be
/// undone unnamed), a pruned generation refuses it rather than "rolling back 0 trees", and
/// `--max-delete` holds for the whole two-phase upgrade (never one phase switched, the next
/// refused).
#[test]
fn root_rollback_and_max_delete_hold_across_runs_and_phases() {
    let h = Host::new();
    modern(&h);
    h.live_file("usr/.keep", "");
    for v in ["1.25", "1.26", "1.27"] {
        h.jail_file("usr/pkg/bin/nginx", &format!("nginx {v}\n"));
        expect_code(&h.upgrade(&["-q", "--keep", "1"]), 0);
    }
    let o = h.js(&["history", "--root", h.root_s()]);
    expect_code(&o, 0);
    assert_eq!(stdout(&o).lines().count(), 3, "{}", stdout(&o));
    expect_code(&h.js(&["rollback", "--root", h.root_s()]), 0);
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26\n");

    // A per-tree sync after an upgrade: rolling back the upgrade would undo it too.
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.28\n");
    expect_code(&h.upgrade(&["-q"]), 0);
    let tree = format!("{}/usr/pkg", h.root_s());
    let extra = h.root.join("extra");
    Host::put(&extra, "bin/tool", "tool\n");
    let o = h.js(&[
        "sync",
        extra.to_str().unwrap(),
        &tree,
        "-q",
        "--exclude",
        "/pkgdb/",
        "--exclude",
        "/.jailsync-pkgdb/",
    ]);
    expect_code(&o, 0);
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 2);
    assert!(
        stderr(&o).contains("synced again after upgrade"),
        "{}",
        stderr(&o)
    );
    assert_eq!(h.live("usr/pkg/bin/tool").unwrap(), "tool\n");

    // Its generation pruned: refused, not "rolled back (0 trees)".
    expect_code(&h.js(&["rollback", &tree, "-q"]), 0);
    expect_code(&h.js(&["prune", &tree, "--keep", "0"]), 0);
    let before = contents(&h.root);
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("is gone"), "{}", stderr(&o));
    assert_eq!(contents(&h.root), before);

    // --max-delete over both phases: 1 deletion in usr/pkg, 2 in the database, limit 2.
    fs::remove_file(h.jail.join("usr/pkg/lib/libssl.so")).unwrap();
    fs::remove_dir_all(h.jail.join("usr/pkg/pkgdb/openssl-3.0")).unwrap();
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.29\n");
    let before = contents(&h.root);
    let o = h.upgrade(&["-q", "--max-delete", "2"]);
    expect_code(&o, 2);
    assert!(
        stderr(&o).contains("would delete 3 entries"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        contents(&h.root),
        before,
        "a phase switched before the refusal"
    );
    expect_code(&h.upgrade(&["-q", "--max-delete", "3"]), 0);
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.29\n");
}

/// A directory named `next` below a jailsync home under `dir`: staging has begun.
fn staging_dir(dir: &Path) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if !p.is_dir() || p.is_symlink() {
            continue;
        }
        let parent_is_home = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("jailsync"));
        if parent_is_home && e.file_name() == "next" {
            return Some(p);
        }
        if let Some(n) = staging_dir(&p) {
            return Some(n);
        }
    }
    None
}

fn staging_under(dir: &Path) -> bool {
    staging_dir(dir).is_some()
}

/// `upgrade` under strace, every `linkat` delayed 150 ms: staging lasts long enough for the
/// test to change the live tree between the decision and the switch.
fn upgrade_with_slow_links(h: &Host, extra: &[&str]) -> std::process::Child {
    let mut c = h.cmd(&["upgrade", h.jail.to_str().unwrap(), "--root", h.root_s()]);
    c.args(extra);
    let mut s = Command::new("strace");
    s.args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=linkat"])
        .args(["-e", "inject=linkat:delay_enter=150000"])
        .arg(c.get_program())
        .args(c.get_args())
        .env_remove("JAILSYNC_STATE_DIR")
        .env_remove("JAILSYNC_SWITCH")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    s.spawn().unwrap()
}

/// An admin's edit made while the next tree is being staged (after the run decided what to
/// keep) must not be left behind in the old tree by the switch: the run switches nothing, and
/// the next run decides on the edited file. Staging is slowed with strace (every link waits
/// 150 ms) so the edit lands between the decision and the switch.
#[test]
fn an_edit_made_while_staging_is_never_switched_away() {
    if !have("strace") {
        eprintln!("skipped: strace not installed");
        return;
    }
    for case in [
        "rewrite",
        "replace",
        "new file",
        "excluded",
        "excluded removed",
    ] {
        let h = Host::new();
        modern(&h);
        for i in 0..6 {
            h.jail_file(&format!("usr/pkg/share/doc/f{i}"), "unchanged\n");
        }
        // Names no jail has, left alone: the switch must carry them, even one made while
        // staging.
        h.live_file("usr/pkg/share/cache/index.db", "cached\n");
        let ex: &[&str] = &["--exclude", "cache/"];
        expect_code(&h.upgrade(ex), 0);
        // The next release changes a program and the default nginx.conf (not edited here).
        h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n")
            .jail_file("usr/pkg/etc/nginx/nginx.conf", "worker_processes auto;\n");
        let child = upgrade_with_slow_links(&h, ex);
        let t0 = std::time::Instant::now();
        // Excluded entries are linked into the next tree last: the new one comes after that.
        let ready =
            |n: &Path| !case.starts_with("excluded") || n.join("share/cache/index.db").exists();
        while !staging_dir(&h.root).is_some_and(|n| ready(&n)) {
            assert!(t0.elapsed().as_secs() < 30, "{case}: staging never began");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let conf = h.root.join("usr/pkg/etc/nginx/nginx.conf");
        match case {
            // An editor writing in place.
            "rewrite" => fs::write(&conf, "worker_processes 16;\n").unwrap(),
            // An editor writing a new file and renaming it over.
            "replace" => {
                let tmp = h.root.join("usr/pkg/etc/nginx/.nginx.conf.swp");
                fs::write(&tmp, "worker_processes 16;\n").unwrap();
                fs::rename(&tmp, &conf).unwrap();
            }
            "new file" => {
                fs::write(h.root.join("usr/pkg/etc/nginx/site.conf"), "server {}\n").unwrap()
            }
            "excluded" => {
                fs::write(h.root.join("usr/pkg/share/cache/fresh.db"), "fresh\n").unwrap()
            }
            // Already linked into the next tree: switching would bring it back.
            _ => fs::remove_file(h.root.join("usr/pkg/share/cache/index.db")).unwrap(),
        }
        let admins_change_is_there = || match case {
            "excluded" => assert_eq!(h.live("usr/pkg/share/cache/fresh.db").unwrap(), "fresh\n"),
            "excluded removed" => assert!(h.live("usr/pkg/share/cache/index.db").is_none()),
            "new file" => assert_eq!(
                h.live("usr/pkg/etc/nginx/site.conf").unwrap(),
                "server {}\n"
            ),
            _ => assert_eq!(
                h.live("usr/pkg/etc/nginx/nginx.conf").unwrap(),
                "worker_processes 16;\n",
                "{case}"
            ),
        };
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{case}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("during the run") && stderr(&o).contains("nothing was switched"),
            "{case}: {}",
            stderr(&o)
        );
        // Nothing switched: the old program, and the admin's change where it was made.
        assert_eq!(
            h.live("usr/pkg/bin/nginx").unwrap(),
            "nginx 1.24\n",
            "{case}"
        );
        admins_change_is_there();
        assert!(!staging_under(&h.root), "{case}: the staged tree was left");

        // Run again: the edit is now the admin's and is kept.
        let o = h.upgrade(ex);
        expect_code(&o, 0);
        assert_eq!(
            h.live("usr/pkg/bin/nginx").unwrap(),
            "nginx 1.26\n",
            "{case}"
        );
        if case != "excluded removed" {
            assert_eq!(h.live("usr/pkg/share/cache/index.db").unwrap(), "cached\n");
        }
        admins_change_is_there();
        if !matches!(case, "excluded" | "excluded removed" | "new file") {
            assert_eq!(
                h.live("usr/pkg/etc/nginx/nginx.conf.jailsync-new").unwrap(),
                "worker_processes auto;\n",
                "{case}"
            );
        }
    }
}

/// A live file whose metadata the jail changed is replaced, while the next tree is staged, by
/// a hard link to a file outside the tree: the run must neither set the jail's owner or mode on
/// that outside inode nor publish it; the path gets the jail's file.
#[test]
fn a_live_file_replaced_while_staging_never_gets_the_jails_metadata() {
    if !have("strace") {
        eprintln!("skipped: strace not installed");
        return;
    }
    let h = Host::new();
    modern(&h);
    for i in 0..8 {
        h.jail_file(&format!("usr/pkg/share/doc/f{i}"), "unchanged\n");
    }
    h.jail_file("usr/pkg/share/zz/tool.conf", "jail content\n");
    expect_code(&h.upgrade(&[]), 0);
    let live = h.root.join("usr/pkg/share/zz/tool.conf");
    let jailf = h.jail.join("usr/pkg/share/zz/tool.conf");
    fs::set_permissions(&live, fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(&jailf, fs::Permissions::from_mode(0o644)).unwrap();
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n");
    let secret = h.root.parent().unwrap().join("secret");
    fs::write(&secret, "secret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();

    let child = upgrade_with_slow_links(&h, &[]);
    let t0 = std::time::Instant::now();
    while !staging_under(&h.root) {
        assert!(t0.elapsed().as_secs() < 30, "staging never began");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Replaced before staging reaches it (it sorts last of the tree's files).
    let tmp = live.with_extension("new");
    fs::hard_link(&secret, &tmp).unwrap();
    fs::rename(&tmp, &live).unwrap();
    let o = child.wait_with_output().unwrap();
    expect_code(&o, 0);
    let m = fs::metadata(&secret).unwrap();
    assert_eq!(
        m.permissions().mode() & 0o7777,
        0o600,
        "the outside file was chmod'ed"
    );
    assert_eq!(
        h.live("usr/pkg/share/zz/tool.conf").unwrap(),
        "jail content\n"
    );
    let lm = fs::symlink_metadata(&live).unwrap();
    assert_eq!(lm.permissions().mode() & 0o7777, 0o644);
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&lm),
        std::os::unix::fs::MetadataExt::ino(&m)
    );
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26\n");
}

/// `upgrade --switch link`: the prefix becomes a symlink to its release and the nested
/// database is switched with it in the same rename (no phase of its own); the next upgrade
/// keeps the kind unasked, `rollback --root` goes back across the conversion, and an admin's
/// configuration edit is kept through the link.
#[test]
fn upgrade_by_symlink_switches_the_prefix_and_its_database_in_one_rename() {
    let h = Host::new();
    modern(&h);
    expect_code(&h.upgrade(&[]), 0);
    let pkg = h.root.join("usr/pkg");
    let first = contents(&pkg);
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.26\n");
    fs::remove_dir_all(h.jail.join("usr/pkg/pkgdb/nginx-1.24")).unwrap();
    h.jail_file("usr/pkg/pkgdb/nginx-1.26/+CONTENTS", "@name nginx-1.26\n");
    let o = h.upgrade(&["--switch", "link", "-v"]);
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("switched with /usr/pkg in one rename"),
        "{}",
        stderr(&o)
    );
    assert!(
        fs::symlink_metadata(&pkg).unwrap().is_symlink(),
        "usr/pkg is no link"
    );
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "nginx 1.26\n");
    assert!(h.root.join("usr/pkg/pkgdb/nginx-1.26/+CONTENTS").is_file());
    assert!(!h.root.join("usr/pkg/pkgdb/nginx-1.24").exists());
    let second = contents(&pkg);
    // Unasked, the next upgrade keeps the link.
    h.jail_file("usr/pkg/lib/libssl.so", "ssl 3.1\n");
    let target = fs::read_link(&pkg).unwrap();
    expect_code(&h.upgrade(&[]), 0);
    assert_ne!(
        fs::read_link(&pkg).unwrap(),
        target,
        "the link was not switched"
    );
    assert_eq!(h.live("usr/pkg/lib/libssl.so").unwrap(), "ssl 3.1\n");
    // Nothing left to do through the link.
    let again = h.upgrade(&["-n", "-i"]);
    expect_code(&again, 0);
    assert_eq!(stdout(&again), "");
    // Back one upgrade, then one more: across the conversion.
    expect_code(&h.js(&["rollback", "--root", h.root_s()]), 0);
    assert_eq!(contents(&pkg), second);
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 0);
    assert_eq!(contents(&pkg), first, "{}", stderr(&o));
    // The admin's edit is kept through the link, and conf-diff names the tree by it.
    h.live_file(
        "usr/pkg/etc/nginx/nginx.conf",
        "worker_processes 4; # admin\n",
    );
    h.jail_file("usr/pkg/etc/nginx/nginx.conf", "worker_processes 2;\n");
    expect_code(&h.upgrade(&["-q"]), 0);
    assert!(fs::symlink_metadata(&pkg).unwrap().is_symlink());
    assert_eq!(
        h.live("usr/pkg/etc/nginx/nginx.conf").unwrap(),
        "worker_processes 4; # admin\n"
    );
    let diff = h.js(&["conf-diff", pkg.to_str().unwrap()]);
    expect_code(&diff, 1);
    assert!(
        stdout(&diff).contains("+worker_processes 2;"),
        "{}",
        stdout(&diff)
    );
}

/// Rollback keeps the admin's configuration work (issue 22): a protected file edited since
/// the upgrade is carried into the restored tree instead of refusing the rollback; one the
/// admin merged (both changed it) stays, with the restored release's version beside it as
/// `NAME.jailsync-new` for `conf-diff`; a change to a file the release owns still refuses.
#[test]
fn rollback_carries_the_admins_configuration_across() {
    let h = Host::new();
    modern(&h);
    expect_code(&h.upgrade(&["-q"]), 0);
    // The admin edits nginx.conf; the next release changes mime.types and the program.
    h.live_file(
        "usr/pkg/etc/nginx/nginx.conf",
        "worker_processes 4; # admin\n",
    );
    h.jail_file("usr/pkg/etc/nginx/mime.types", "text/html html htm;\n")
        .jail_file("usr/pkg/bin/nginx", "nginx 1.26\n");
    expect_code(&h.upgrade(&["-q"]), 0);
    // Since: the admin merges mime.types' new defaults with an edit of their own (a new file
    // renamed over it, as editors do) and edits nginx.conf again.
    let etc = h.root.join("usr/pkg/etc/nginx");
    fs::write(etc.join("tmp"), "text/html html htm; # admin\n").unwrap();
    fs::rename(etc.join("tmp"), etc.join("mime.types")).unwrap();
    h.live_file(
        "usr/pkg/etc/nginx/nginx.conf",
        "worker_processes 8; # admin\n",
    );
    // And creates a site configuration of their own (protected: under etc/).
    h.live_file("usr/pkg/etc/nginx/site.conf", "server { listen 81; }\n");
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 0);
    assert_eq!(
        h.live("usr/pkg/etc/nginx/site.conf").unwrap(),
        "server { listen 81; }\n",
        "the admin's new configuration file was not carried"
    );
    assert_eq!(
        h.live("usr/pkg/bin/nginx").unwrap(),
        "nginx 1.24\n",
        "not rolled back"
    );
    // The admin's files are live; the restored release's merged one is beside.
    assert_eq!(
        h.live("usr/pkg/etc/nginx/nginx.conf").unwrap(),
        "worker_processes 8; # admin\n"
    );
    assert_eq!(
        h.live("usr/pkg/etc/nginx/mime.types").unwrap(),
        "text/html html htm; # admin\n"
    );
    assert_eq!(
        h.live("usr/pkg/etc/nginx/mime.types.jailsync-new").unwrap(),
        "text/html html;\n"
    );
    assert!(h
        .live("usr/pkg/etc/nginx/nginx.conf.jailsync-new")
        .is_none());
    let diff = h.js(&["conf-diff", h.root.join("usr/pkg").to_str().unwrap()]);
    expect_code(&diff, 1);
    assert!(
        stdout(&diff).contains("mime.types.jailsync-new"),
        "{}",
        stdout(&diff)
    );
    // The next upgrade knows the rollback's `NAME.jailsync-new` for one of its own: the
    // jail's new version takes its place (no `.1` copy aside).
    h.jail_file(
        "usr/pkg/etc/nginx/mime.types",
        "text/html html htm shtml;\n",
    );
    // A file the release owns, changed since: the rollback still refuses, nothing changed.
    h.jail_file("usr/pkg/bin/nginx", "nginx 1.28\n");
    expect_code(&h.upgrade(&["-q"]), 0);
    assert_eq!(
        h.live("usr/pkg/etc/nginx/mime.types.jailsync-new").unwrap(),
        "text/html html htm shtml;\n"
    );
    assert!(h
        .live("usr/pkg/etc/nginx/mime.types.jailsync-new.1")
        .is_none());
    h.live_file("usr/pkg/bin/nginx", "patched by hand\n");
    let o = h.js(&["rollback", "--root", h.root_s()]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains("bin/nginx"), "{}", stderr(&o));
    assert_eq!(h.live("usr/pkg/bin/nginx").unwrap(), "patched by hand\n");
}
