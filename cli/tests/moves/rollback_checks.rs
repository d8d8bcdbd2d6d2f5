//! What a rollback checks before switching a generation back (issue 19, items 8 and 19):
//! - the configuration base it leaves is the one of the generation restored, however old (not
//!   only the newest sync's), so the next upgrade still tells the jail's files from the
//!   admin's edits;
//! - a change of xattrs, ACL or file capability made on the live tree since the sync is a
//!   change since the sync, like a chmod: refused unless `--force`, which keeps the tree that
//!   was live whole.
//!
//! Real trees, the real binary, real ACLs (`setfacl`) and capabilities (`setcap`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{expect_code, is_root, stderr, stdout, BIN};

fn js(state: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env_remove("JAILSYNC_STATE_DIR")
        .env_remove("JAILSYNC_SWITCH")
        .output()
        .unwrap()
}

/// Whether `prog` is on PATH (`setcap` has no `--version` that succeeds).
fn have(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A jail and a live root upgraded with `--tree opt/tool` (its `etc/` protected).
struct Host {
    _tmp: tempfile::TempDir,
    jail: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::Builder::new()
            .prefix("jailsync-rbchecks-")
            .tempdir()
            .unwrap();
        let t = tmp.path().canonicalize().unwrap();
        let (jail, root, state) = (t.join("jail"), t.join("root"), t.join("state"));
        fs::create_dir_all(jail.join("opt/tool/etc")).unwrap();
        fs::create_dir_all(root.join("opt")).unwrap();
        Host {
            _tmp: tmp,
            jail,
            root,
            state,
        }
    }

    fn jail(&self, rel: &str) -> PathBuf {
        self.jail.join("opt/tool").join(rel)
    }

    fn live(&self, rel: &str) -> PathBuf {
        self.root.join("opt/tool").join(rel)
    }

    fn tree(&self) -> String {
        self.live("")
            .to_str()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    }

    fn js(&self, args: &[&str]) -> Output {
        js(&self.state, args)
    }

    /// An upgrade offering `etc/a.conf` and `etc/b.conf` = `conf`, and `bin` = `bin`.
    fn upgrade(&self, conf: &str, bin: &str) -> Output {
        fs::write(self.jail("etc/a.conf"), conf).unwrap();
        fs::write(self.jail("etc/b.conf"), conf).unwrap();
        fs::write(self.jail("bin"), bin).unwrap();
        let (j, r) = (self.jail.to_str().unwrap(), self.root.to_str().unwrap());
        self.js(&["upgrade", j, "--root", r, "--tree", "opt/tool", "-i"])
    }

    /// Generation ids of the tree, oldest first.
    fn gens(&self) -> Vec<u64> {
        let o = self.js(&["history", &self.tree(), "--json"]);
        expect_code(&o, 0);
        let mut ids = Vec::new();
        for l in stdout(&o).lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["type"] == "generation" {
                ids.push(v["id"].as_u64().unwrap());
            }
        }
        // Listed newest first.
        ids.sort_unstable();
        ids
    }
}

/// Item 8: upgrades changing protected files, then a rollback past several of them: the base
/// is the restored generation's. `a.conf`, never edited, is then the jail's to replace at the
/// next upgrade (the old code kept the newest sync's base, took the restored file for an edit
/// and put the jail's version beside it); `b.conf`, edited before the restored generation's
/// sync, is still the admin's.
#[test]
fn rollback_past_several_generations_restores_that_generations_conf_base() {
    let h = Host::new();
    expect_code(&h.upgrade("v1\n", "tool v1\n"), 0);
    fs::write(h.live("etc/b.conf"), "mine\n").unwrap();
    for v in 2..=4 {
        let o = h.upgrade(&format!("v{v}\n"), &format!("tool v{v}\n"));
        expect_code(&o, 0);
        assert_eq!(read(&h.live("etc/a.conf")), format!("v{v}\n"));
        assert_eq!(read(&h.live("etc/b.conf")), "mine\n", "{}", stdout(&o));
    }
    // The generation holding v2 (switched out by the upgrade to v3): two syncs undone.
    let gens = h.gens();
    assert!(gens.len() >= 3, "generations: {gens:?}");
    let g = gens[gens.len() - 2].to_string();
    let o = h.js(&["rollback", &h.tree(), "--gen", &g]);
    expect_code(&o, 0);
    assert_eq!(read(&h.live("etc/a.conf")), "v2\n", "{}", stderr(&o));
    assert_eq!(read(&h.live("bin")), "tool v2\n");
    assert_eq!(read(&h.live("etc/b.conf")), "mine\n");

    let o = h.upgrade("v5\n", "tool v5\n");
    expect_code(&o, 0);
    let out = stdout(&o);
    assert_eq!(
        read(&h.live("etc/a.conf")),
        "v5\n",
        "a file never edited is the jail's to replace:\n{out}"
    );
    assert!(!h.live("etc/a.conf.jailsync-new").exists(), "{out}");
    assert!(!out.contains("*protected opt/tool/etc/a.conf"), "{out}");
    assert_eq!(read(&h.live("etc/b.conf")), "mine\n", "{out}");
    assert_eq!(read(&h.live("etc/b.conf.jailsync-new")), "v5\n");
}

/// Item 8 through `rollback --root`, which undoes the last upgrade each time: twice in a row
/// the second must find the base of the generation it restores (the old code had only
/// `conf-base.prev`, used up by the first, and dropped the base: every protected file then
/// looked edited).
#[test]
fn root_rollback_twice_restores_each_generations_conf_base() {
    let h = Host::new();
    for v in 1..=4 {
        expect_code(&h.upgrade(&format!("v{v}\n"), &format!("tool v{v}\n")), 0);
    }
    let root = h.root.to_str().unwrap();
    for _ in 0..2 {
        let o = h.js(&["rollback", "--root", root]);
        expect_code(&o, 0);
    }
    assert_eq!(read(&h.live("etc/a.conf")), "v2\n");
    let o = h.upgrade("v5\n", "tool v5\n");
    expect_code(&o, 0);
    let out = stdout(&o);
    assert_eq!(read(&h.live("etc/a.conf")), "v5\n", "{out}");
    assert_eq!(read(&h.live("etc/b.conf")), "v5\n", "{out}");
    assert!(!out.contains("*protected"), "{out}");
}

fn run(prog: &str, args: &[&str], p: &Path) {
    let o = Command::new(prog).args(args).arg(p).output().unwrap();
    assert!(
        o.status.success(),
        "{prog} {args:?} {}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let o = Command::new("getfattr")
        .args(["--absolute-names", "-n", name, "--only-values"])
        .arg(p)
        .output()
        .unwrap();
    o.status.success().then_some(o.stdout)
}

/// A source with `bin/tool` (carrying an xattr of the jail's) and `share/doc`, synced once
/// with `extra` over an old destination: one generation to roll back to. Returns the temp
/// dir, DST, the state dir and DST's parent.
fn synced(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("jailsync-rbchecks-")
        .tempdir()
        .unwrap();
    let t = tmp.path().canonicalize().unwrap();
    let (src, dst, state) = (t.join("src"), t.join("dst"), t.join("state"));
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("share")).unwrap();
    fs::write(src.join("bin/tool"), "new\n").unwrap();
    run(
        "setfattr",
        &["-n", "user.jail", "-v", "1"],
        &src.join("bin/tool"),
    );
    fs::write(src.join("share/doc"), "doc\n").unwrap();
    fs::create_dir_all(dst.join("bin")).unwrap();
    fs::write(dst.join("bin/tool"), "old\n").unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let mut args = vec!["sync"];
    args.extend(extra);
    args.extend([s, d]);
    expect_code(&js(&state, &args), 0);
    (tmp, dst, state, t)
}

/// Item 19: an xattr, an ACL or a file capability set on the live tree since the sync refuses
/// the rollback (the path and what changed named, nothing switched); `--force` switches and
/// keeps the tree that was live whole, the change with it. The xattrs the sync itself set are
/// no change; after a sync that did not read xattrs (`--no-xattrs`), they are not compared.
#[test]
fn rollback_refuses_after_an_xattr_acl_or_capability_change() {
    if !is_root() || !have("setfacl") || !have("setcap") || !have("setfattr") {
        eprintln!("skipped: needs root, setfacl, setcap and setfattr");
        return;
    }
    type Change = (&'static str, &'static str, fn(&Path), &'static str);
    let cases: &[Change] = &[
        (
            "bin/tool",
            "xattrs changed",
            |p| run("setfattr", &["-n", "user.note", "-v", "mine"], p),
            "user.note",
        ),
        (
            "bin/tool",
            "xattrs changed",
            |p| run("setfattr", &["-x", "user.jail"], p),
            "",
        ),
        (
            "share/doc",
            "ACL changed",
            |p| run("setfacl", &["-m", "u:65534:r"], p),
            "system.posix_acl_access",
        ),
        (
            "share",
            "ACL changed",
            |p| run("setfacl", &["-d", "-m", "u:65534:rx"], p),
            "system.posix_acl_default",
        ),
        (
            "bin/tool",
            "capability changed",
            |p| run("setcap", &["cap_net_bind_service=ep"], p),
            "security.capability",
        ),
    ];
    for &(rel, what, change, name) in cases {
        let (_tmp, dst, state, t) = synced(&[]);
        let d = dst.to_str().unwrap();
        let p = dst.join(rel);
        assert_eq!(
            xattr(&dst.join("bin/tool"), "user.jail").as_deref(),
            Some(&b"1"[..])
        );
        change(&p);
        let o = js(&state, &["rollback", d]);
        expect_code(&o, 1);
        let err = stderr(&o);
        let line = format!("{}: {what} since the sync", p.display());
        assert!(err.contains(&line), "{rel} ({what}): {err}");
        assert!(err.contains("not rolled back"), "{err}");
        assert_eq!(read(&dst.join("bin/tool")), "new\n", "nothing switched");
        let changed = |p: &Path| match name {
            "" => xattr(p, "user.jail").is_none(),
            n => xattr(p, n).is_some(),
        };
        assert!(changed(&p), "{rel}: the change is left as it is");

        // Forced: the old tree is back and the changed one kept whole, the change with it.
        let o = js(&state, &["rollback", d, "--force"]);
        expect_code(&o, 0);
        assert_eq!(read(&dst.join("bin/tool")), "old\n", "{}", stderr(&o));
        let kept: Vec<PathBuf> = fs::read_dir(t.join(".jailsync-dst"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with("kept-")
            })
            .collect();
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(
            changed(&kept[0].join(rel)),
            "{rel}: the kept tree has the change"
        );
    }

    // A sync that read no xattrs recorded none: compared without them, as before.
    let (_tmp, dst, state, _) = synced(&["--no-xattrs"]);
    run(
        "setfattr",
        &["-n", "user.note", "-v", "x"],
        &dst.join("bin/tool"),
    );
    let d = dst.to_str().unwrap();
    let o = js(&state, &["rollback", d]);
    expect_code(&o, 0);
    assert_eq!(read(&dst.join("bin/tool")), "old\n", "{}", stderr(&o));
}
