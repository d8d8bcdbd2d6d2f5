//! What a rollback checks before switching a generation back (issue 19, item 8): the
//! configuration base it leaves is the one of the generation restored, however old (not only
//! the newest sync's), so the next upgrade still tells the jail's files from the admin's edits.
//!
//! Real trees, the real binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{expect_code, stderr, stdout, BIN};

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
