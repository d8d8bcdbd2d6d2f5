//! Issue 22: `history` says what each run changed — its files with `-i`, and for a package
//! tree its packages ("webd-2.2 → webd-2.3, +jq-1.7, −less-590") — and `rollback -n -i`
//! what a rollback would change. The databases are real: a pkgsrc `pkgdb` as pkg_install
//! writes it, and a dpkg status database written by dpkg itself (`dpkg --root` installing
//! packages built with `dpkg-deb`). Every change is made by real runs of the binary.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{expect_code, have, listing, stderr, stdout, BIN};

/// A temp dir holding a jail, a live root and a state dir.
struct Site {
    _tmp: tempfile::TempDir,
    jail: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Site {
    fn new() -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("jailsync-pkgnames-")
            .tempdir()
            .unwrap();
        let t = tmp.path().canonicalize().unwrap();
        let (jail, root, state) = (t.join("jail"), t.join("root"), t.join("state"));
        fs::create_dir_all(&jail).unwrap();
        fs::create_dir_all(&root).unwrap();
        Site {
            _tmp: tmp,
            jail,
            root,
            state,
        }
    }

    fn js(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("JAILSYNC_STATE_DIR")
            .env_remove("JAILSYNC_SWITCH")
            .output()
            .unwrap()
    }

    /// Runs `args`, expecting exit 0; returns stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let o = self.js(args);
        expect_code(&o, 0);
        stdout(&o)
    }

    fn put(&self, rel: &str, text: &str) {
        let p = self.jail.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A package's record as pkg_install writes it in `pkgdb/NAME-VERSION/`.
fn pkgsrc_package(site: &Site, db: &str, name: &str, version: &str, files: &[&str]) {
    let dir = format!("{db}/{name}-{version}");
    let mut contents = format!(
        "@comment $NetBSD: bsd.pkg.mk,v 1.2000 2024/01/01 00:00:00 user Exp $\n\
         @name {name}-{version}\n@pkgdep libc>=1.0\n@cwd /usr/pkg\n"
    );
    for f in files {
        contents.push_str(&format!(
            "{f}\n@comment MD5:0123456789abcdef0123456789abcdef\n"
        ));
    }
    contents.push_str("@ignore\n+BUILD_INFO\n");
    site.put(&format!("{dir}/+CONTENTS"), &contents);
    site.put(
        &format!("{dir}/+BUILD_INFO"),
        &format!(
            "BUILD_DATE=2024-01-01 00:00:00 +0000\nCATEGORIES=www\nMACHINE_ARCH=x86_64\n\
             OPSYS=NetBSD\nOS_VERSION=10.0\nPKGPATH=www/{name}\nPKGTOOLS_VERSION=20211115\n"
        ),
    );
    site.put(&format!("{dir}/+COMMENT"), &format!("The {name} program\n"));
    site.put(&format!("{dir}/+DESC"), &format!("{name} does things.\n"));
    site.put(&format!("{dir}/+SIZE_PKG"), "4096\n");
}

/// The newest generation's id, from `history --json`.
fn newest(site: &Site, tree: &Path) -> u64 {
    let out = site.ok(&["--json", "history", s(tree)]);
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "generation")
        .map(|v| v["id"].as_u64().unwrap())
        .max()
        .expect("a generation")
}

/// Today's pkgsrc layout upgraded twice: the database's own tree names the packages the
/// second upgrade changed, its files are itemized (the setuid binary as it was, not as the
/// generation keeps it defanged), the prefix's history leaves the database to its own tree,
/// and `rollback -n -i` names what a rollback would take back without changing a thing.
#[test]
fn pkgsrc_history_names_the_packages_an_upgrade_changed() {
    let site = Site::new();
    site.put("usr/pkg/bin/webd", "webd 2.2\n");
    site.put("usr/pkg/bin/less", "less 590\n");
    site.put("usr/pkg/share/doc/webd/README", "webd\n");
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.2", &["bin/webd"]);
    pkgsrc_package(&site, "usr/pkg/pkgdb", "less", "590", &["bin/less"]);
    let setuid = |p: &Path| fs::set_permissions(p, fs::Permissions::from_mode(0o4755)).unwrap();
    setuid(&site.jail.join("usr/pkg/bin/webd"));
    site.ok(&["upgrade", s(&site.jail), "--root", s(&site.root)]);

    fs::remove_file(site.jail.join("usr/pkg/bin/less")).unwrap();
    fs::remove_dir_all(site.jail.join("usr/pkg/pkgdb/less-590")).unwrap();
    fs::remove_dir_all(site.jail.join("usr/pkg/pkgdb/webd-2.2")).unwrap();
    site.put("usr/pkg/bin/webd", "webd 2.3\n");
    site.put("usr/pkg/bin/jq", "jq 1.7\n");
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.3", &["bin/webd"]);
    pkgsrc_package(&site, "usr/pkg/pkgdb", "jq", "1.7", &["bin/jq"]);
    site.ok(&["upgrade", s(&site.jail), "--root", s(&site.root)]);

    let usr_pkg = site.root.join("usr/pkg");
    let pkgdb = usr_pkg.join("pkgdb");
    let out = site.ok(&["history", s(&pkgdb)]);
    assert!(
        out.contains("packages: webd-2.2 → webd-2.3, +jq-1.7, −less-590"),
        "{out}"
    );
    assert!(out.contains("packages: +less-590, +webd-2.2"), "{out}");

    // --gen N -i: that run's files, and its packages in the JSON too.
    let n = newest(&site, &pkgdb);
    let out = site.ok(&["history", s(&pkgdb), "--gen", &n.to_string(), "-i"]);
    assert_eq!(
        out.lines().filter(|l| l.contains("packages:")).count(),
        1,
        "{out}"
    );
    for want in [
        "cd+++++++++ jq-1.7/",
        ">f+++++++++ jq-1.7/+CONTENTS",
        "*deleting   less-590/+BUILD_INFO",
        "cd+++++++++ webd-2.3/",
    ] {
        assert!(out.lines().any(|l| l == want), "{want:?} in\n{out}");
    }
    let json = site.ok(&[
        "--json",
        "history",
        s(&pkgdb),
        "--gen",
        &n.to_string(),
        "-i",
    ]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let g = lines.iter().find(|v| v["type"] == "generation").unwrap();
    assert_eq!(g["id"], n);
    assert_eq!(g["packages"]["format"], "pkgsrc");
    assert_eq!(
        g["packages"]["summary"],
        "webd-2.2 → webd-2.3, +jq-1.7, −less-590"
    );
    assert_eq!(
        g["packages"]["changes"][0],
        serde_json::json!({"name": "webd", "old": "2.2", "new": "2.3"})
    );
    assert!(
        lines.iter().any(|v| v["type"] == "change"
            && v["path"] == "jq-1.7/+CONTENTS"
            && v["op"] == "create"),
        "{json}"
    );

    // The prefix: its database is its own tree (excluded from the prefix's runs), so the
    // prefix names no packages; its files are itemized, the replaced setuid binary as it
    // was live (setuid both times: no `p`).
    let n = newest(&site, &usr_pkg);
    let out = site.ok(&["history", s(&usr_pkg), "--gen", &n.to_string(), "-i"]);
    assert!(!out.contains("packages:"), "{out}");
    assert!(
        !out.contains("pkgdb"),
        "the database is not the prefix's: {out}"
    );
    let webd = out.lines().find(|l| l.ends_with(" bin/webd")).expect(&out);
    assert!(webd.starts_with(">fc"), "{out}");
    assert!(!webd.contains('p'), "the mode as it was live: {out}");
    assert!(out.lines().any(|l| l == "*deleting   bin/less"), "{out}");
    assert!(out.lines().any(|l| l == ">f+++++++++ bin/jq"), "{out}");
    assert!(!out.contains("README"), "unchanged: {out}");

    // rollback -n -i: the way back, and nothing changes.
    let before = listing(&site.root);
    let out = site.ok(&["rollback", "-n", "-i", s(&pkgdb)]);
    assert!(
        out.lines()
            .any(|l| l == "packages: webd-2.3 → webd-2.2, +less-590, −jq-1.7"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "*deleting   jq-1.7/+CONTENTS"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "cd+++++++++ less-590/"), "{out}");
    // The whole upgrade: each tree's lines name the tree.
    let out = site.ok(&["rollback", "--root", s(&site.root), "-n", "-i"]);
    let want = format!(
        "{}: packages: webd-2.3 → webd-2.2, +less-590, −jq-1.7",
        pkgdb.display()
    );
    assert!(out.lines().any(|l| l == want), "{want:?} in\n{out}");
    let want = format!("*deleting   {}/bin/jq", usr_pkg.display());
    assert!(out.lines().any(|l| l == want), "{want:?} in\n{out}");
    let after = listing(&site.root);
    assert!(
        before == after,
        "a dry run changed:\n{}",
        before.diff(&after)
    );
    // The same, itemized, when it is done.
    let o = site.js(&["rollback", "-i", s(&pkgdb)]);
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("packages: webd-2.3 → webd-2.2, +less-590, −jq-1.7"),
        "{}",
        stderr(&o)
    );
    assert!(pkgdb.join("less-590/+CONTENTS").is_file());
}

/// A prefix synced whole, its database inside it (not a tree of its own): its history names
/// the packages. A generation that is gone is refused by name.
#[test]
fn a_database_inside_the_synced_tree_is_named_by_its_history() {
    let site = Site::new();
    site.put("usr/pkg/bin/webd", "webd 2.2\n");
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.2", &["bin/webd"]);
    let (jail, live) = (site.jail.join("usr/pkg"), site.root.join("pkg"));
    let src = format!("{}/", s(&jail));
    site.ok(&["sync", &src, s(&live)]);
    fs::remove_dir_all(jail.join("pkgdb/webd-2.2")).unwrap();
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.3", &["bin/webd"]);
    site.put("usr/pkg/bin/webd", "webd 2.3\n");
    site.ok(&["sync", &src, s(&live)]);
    let n = newest(&site, &live);
    let out = site.ok(&["history", s(&live), "--gen", &n.to_string()]);
    assert!(out.contains("packages: webd-2.2 → webd-2.3"), "{out}");
    assert_eq!(
        out.lines().count(),
        2,
        "one generation, its packages: {out}"
    );
    // -i without --gen: every generation, newest first, each followed by its lines.
    let out = site.ok(&["history", s(&live), "-i"]);
    let at = |needle: &str| {
        out.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in\n{out}"))
    };
    assert!(at("packages: webd-2.2 → webd-2.3") < at("*deleting   pkgdb/webd-2.2/+CONTENTS"));
    assert!(at("*deleting   pkgdb/webd-2.2/+CONTENTS") < at("packages: +webd-2.2"));
    assert!(at("packages: +webd-2.2") < at(">f+++++++++ pkgdb/webd-2.2/+CONTENTS"));
    let o = site.js(&["history", s(&live), "--gen", "999"]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("no generation 999"), "{}", stderr(&o));
}

/// Builds `NAME_VERSION_all.deb` holding `usr/bin/NAME`.
fn deb(dir: &Path, name: &str, version: &str) -> PathBuf {
    let root = dir.join(format!("{name}-{version}"));
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: Test <test@example.org>\nDescription: {name} for a test\n \
             A longer description.\n"
        ),
    )
    .unwrap();
    fs::write(
        root.join(format!("usr/bin/{name}")),
        format!("{name} {version}\n"),
    )
    .unwrap();
    let out = dir.join(format!("{name}_{version}_all.deb"));
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// dpkg itself, on the jail: `dpkg --root JAIL ARGS`.
fn dpkg(jail: &Path, args: &[&std::ffi::OsStr]) {
    let o = Command::new("dpkg")
        .arg(format!("--root={}", jail.display()))
        .args(["--force-script-chrootless", "--force-not-root"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "dpkg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A root whose packages dpkg installs in the jail, synced whole: history names the versions
/// dpkg's status database lists (installed ones only: a removed package's conffiles stanza
/// is no package), JSON carries them, and `rollback -n -i` names the way back.
#[test]
fn dpkg_history_names_the_packages_a_sync_changed() {
    require!(
        have("dpkg") && have("dpkg-deb"),
        "dpkg and dpkg-deb are not installed"
    );
    let site = Site::new();
    let debs = site.root.parent().unwrap().join("debs");
    fs::create_dir_all(&debs).unwrap();
    let admin = site.jail.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::create_dir_all(admin.join("updates")).unwrap();
    fs::write(admin.join("status"), "").unwrap();
    let os = |p: &PathBuf| p.as_os_str().to_owned();
    let install = |pkgs: &[(&str, &str)]| {
        let files: Vec<_> = pkgs.iter().map(|(n, v)| os(&deb(&debs, n, v))).collect();
        let mut a: Vec<&std::ffi::OsStr> = vec!["-i".as_ref()];
        a.extend(files.iter().map(|f| f.as_os_str()));
        dpkg(&site.jail, &a);
    };
    install(&[("webd", "2.2-1"), ("less", "590-2")]);
    let src = format!("{}/", s(&site.jail));
    site.ok(&["sync", &src, s(&site.root)]);
    install(&[("webd", "2.3-1"), ("jq", "1.7.1-3")]);
    dpkg(&site.jail, &["--remove".as_ref(), "less".as_ref()]);
    site.ok(&["sync", &src, s(&site.root)]);

    let n = newest(&site, &site.root);
    let out = site.ok(&["history", s(&site.root), "--gen", &n.to_string(), "-i"]);
    assert!(
        out.contains("packages: webd=2.2-1 → webd=2.3-1, +jq=1.7.1-3, −less=590-2"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == "*deleting   usr/bin/less"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == ">f+++++++++ usr/bin/jq"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(">fc") && l.ends_with(" var/lib/dpkg/status")),
        "{out}"
    );
    let json = site.ok(&["--json", "history", s(&site.root)]);
    let g: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "generation")
        .collect();
    let newest_json = g.iter().find(|v| v["id"] == n).unwrap();
    assert_eq!(newest_json["packages"]["format"], "dpkg");
    assert_eq!(
        newest_json["packages"]["changes"],
        serde_json::json!([
            {"name": "webd", "old": "2.2-1", "new": "2.3-1"},
            {"name": "jq", "old": null, "new": "1.7.1-3"},
            {"name": "less", "old": "590-2", "new": null},
        ])
    );

    let before = listing(&site.root);
    let out = site.ok(&["rollback", "-n", "-i", s(&site.root)]);
    assert!(
        out.lines()
            .any(|l| l == "packages: webd=2.3-1 → webd=2.2-1, +less=590-2, −jq=1.7.1-3"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l == ">f+++++++++ usr/bin/less"),
        "{out}"
    );
    let json = site.ok(&["--json", "rollback", "-n", "-i", s(&site.root)]);
    let p: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["type"] == "packages")
        .expect(&json);
    assert_eq!(p["format"], "dpkg");
    assert_eq!(p["path"], s(&site.root));
    assert_eq!(
        p["changes"][0],
        serde_json::json!({"name": "webd", "old": "2.3-1", "new": "2.2-1"})
    );
    let after = listing(&site.root);
    assert!(
        before == after,
        "a dry run changed:\n{}",
        before.diff(&after)
    );

    // dpkg's own directory as the tree: its status file names the packages.
    let admin_live = site.root.parent().unwrap().join("dpkg");
    let src = format!("{}/", s(&admin));
    site.ok(&["sync", &src, s(&admin_live)]);
    dpkg(&site.jail, &["--remove".as_ref(), "jq".as_ref()]);
    site.ok(&["sync", &src, s(&admin_live)]);
    let out = site.ok(&["history", s(&admin_live)]);
    assert!(out.contains("packages: −jq=1.7.1-3"), "{out}");
    // A status file that is a symlink is not read: the listing goes on, the error names it.
    fs::remove_file(admin_live.join("status")).unwrap();
    std::os::unix::fs::symlink(admin.join("status"), admin_live.join("status")).unwrap();
    let o = site.js(&["history", s(&admin_live)]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("packages not named")
            && err.contains(&format!("{}/status: ", admin_live.display())),
        "{err}"
    );
    // The older generation is compared with the newer, both readable.
    let out = stdout(&o);
    assert!(out.contains("packages: +jq=1.7.1-3, +webd=2.3-1"), "{out}");
    assert_eq!(out.lines().count(), 3, "both generations listed: {out}");
}

/// The man pages say it: the top page's History section (the package rules), and the pages of
/// `history` and `rollback` their options.
#[test]
fn man_pages_document_history_packages_and_itemizing() {
    let d = tempfile::tempdir().unwrap();
    let o = crate::common::run([
        std::ffi::OsStr::new("man"),
        "--dir".as_ref(),
        d.path().as_os_str(),
    ]);
    expect_code(&o, 0);
    let page = |n: &str| fs::read_to_string(d.path().join(n)).unwrap();
    let top = page("jailsync.1");
    for want in [
        ".SS \"History\"",
        "webd\\-2.2 \\(-> webd\\-2.3, +jq\\-1.7, \\(miless\\-590",
        "\\fB@name\\fR",
        "\\fBMACHINE_ARCH\\fR",
        "\\fIvar/lib/dpkg/status\\fR",
        "\\fIusr/pkg/pkgdb/\\fR",
        "\\fBrollback \\-n \\-i DST\\fR",
    ] {
        assert!(top.contains(want), "{want:?} not in jailsync.1");
    }
    let history = page("jailsync-history.1");
    for want in ["\\-\\-gen", "\\-\\-itemize", "rsync\\-style line per entry"] {
        assert!(
            history.contains(want),
            "{want:?} not in jailsync-history.1:\n{history}"
        );
    }
    let rollback = page("jailsync-rollback.1");
    assert!(
        rollback.contains("the packages it takes back"),
        "{rollback}"
    );
}

/// A tree switched by subtrees (its home inside it, its root's metadata set in place): the
/// home is no change, the root is not taken for one, and a mode set in place on a file both
/// releases share is shown as it was.
#[test]
fn a_tree_switched_by_subtrees_is_itemized_as_it_was() {
    let site = Site::new();
    site.put("usr/pkg/bin/webd", "webd 2.2\n");
    site.put("usr/pkg/share/doc", "same\n");
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.2", &["bin/webd"]);
    let (jail, live) = (site.jail.join("usr/pkg"), site.root.join("pkg"));
    let src = format!("{}/", s(&jail));
    let sync = || {
        let o = Command::new(BIN)
            .arg("--state-dir")
            .arg(&site.state)
            .args(["sync", &src, s(&live)])
            .env_remove("JAILSYNC_STATE_DIR")
            .env("JAILSYNC_SWITCH", "entries")
            .output()
            .unwrap();
        expect_code(&o, 0);
    };
    sync();
    fs::set_permissions(jail.join("share/doc"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_dir_all(jail.join("pkgdb/webd-2.2")).unwrap();
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.3", &["bin/webd"]);
    site.put("usr/pkg/bin/webd", "webd 2.3\n");
    sync();
    assert!(live.join(".jailsync-gens").is_dir(), "switched by subtrees");
    let n = newest(&site, &live);
    let out = site.ok(&["history", s(&live), "--gen", &n.to_string(), "-i"]);
    assert!(out.contains("packages: webd-2.2 → webd-2.3"), "{out}");
    assert!(out.lines().any(|l| l == ".f...p..... share/doc"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(">fc") && l.ends_with(" bin/webd")),
        "{out}"
    );
    // The generation's line says where its tree is; no itemized line is the home.
    assert!(
        out.lines().skip(1).all(|l| !l.contains(".jailsync")),
        "the home is nobody's content: {out}"
    );
    assert!(!out.lines().any(|l| l.ends_with(" ./")), "the root: {out}");
}

/// A tree switched by symlink (DST -> its home's release): the live tree is read where the
/// link points, each generation through its alias.
#[test]
fn a_tree_switched_by_symlink_is_itemized_and_named() {
    let site = Site::new();
    site.put("usr/pkg/bin/webd", "webd 2.2\n");
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.2", &["bin/webd"]);
    let (jail, live) = (site.jail.join("usr/pkg"), site.root.join("pkg"));
    let src = format!("{}/", s(&jail));
    site.ok(&["sync", "--switch", "link", &src, s(&live)]);
    fs::remove_dir_all(jail.join("pkgdb/webd-2.2")).unwrap();
    pkgsrc_package(&site, "usr/pkg/pkgdb", "webd", "2.3", &["bin/webd"]);
    site.put("usr/pkg/bin/webd", "webd 2.3\n");
    site.put("usr/pkg/bin/jq", "jq 1.7\n");
    site.ok(&["sync", &src, s(&live)]);
    assert!(
        fs::symlink_metadata(&live)
            .unwrap()
            .file_type()
            .is_symlink(),
        "switched by symlink"
    );
    let n = newest(&site, &live);
    let out = site.ok(&["history", s(&live), "--gen", &n.to_string(), "-i"]);
    assert!(out.contains("packages: webd-2.2 → webd-2.3"), "{out}");
    assert!(out.lines().any(|l| l == ">f+++++++++ bin/jq"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(">fc") && l.ends_with(" bin/webd")),
        "{out}"
    );
    let out = site.ok(&["rollback", "-n", "-i", s(&live)]);
    assert!(out.contains("packages: webd-2.3 → webd-2.2"), "{out}");
    assert!(out.lines().any(|l| l == "*deleting   bin/jq"), "{out}");
}
