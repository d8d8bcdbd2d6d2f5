//! Configuration protection keeps the admin's configuration whatever its type (issue 19,
//! items 9, 10, 17 and 18): a symlinked, directory or fifo config is edited configuration like
//! a rewritten file; the base moves only for what was really written; `verify` compares a kept
//! entry with what the run kept; an admin's own `NAME.jailsync-new` is never written over.
//! Each test upgrades one tree (`--tree opt/tool`, whose `etc/` is protected) with the real
//! binary on real trees.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{expect_code, stderr, stdout, BIN};

/// A jail and a live root, each with `opt/tool`, and a state dir.
struct Host {
    _tmp: tempfile::TempDir,
    jail: PathBuf,
    root: PathBuf,
    state: PathBuf,
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::Builder::new()
            .prefix("jailsync-conf-")
            .tempdir()
            .unwrap();
        let t = tmp.path().canonicalize().unwrap();
        let (jail, root, state) = (t.join("jail"), t.join("root"), t.join("state"));
        fs::create_dir_all(jail.join("opt/tool/etc")).unwrap();
        fs::create_dir_all(root.join("opt")).unwrap();
        fs::write(jail.join("opt/tool/bin"), "tool v1\n").unwrap();
        Host {
            _tmp: tmp,
            jail,
            root,
            state,
        }
    }

    /// The jail's `opt/tool/REL`.
    fn jail(&self, rel: &str) -> PathBuf {
        self.jail.join("opt/tool").join(rel)
    }

    /// The live `opt/tool/REL`.
    fn live(&self, rel: &str) -> PathBuf {
        self.root.join("opt/tool").join(rel)
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

    fn upgrade(&self) -> Output {
        let (j, r) = (self.jail.to_str().unwrap(), self.root.to_str().unwrap());
        self.js(&["upgrade", j, "--root", r, "--tree", "opt/tool", "-i"])
    }

    fn verify(&self) -> Output {
        let j = self.jail.join("opt/tool");
        let l = self.root.join("opt/tool");
        self.js(&["verify", j.to_str().unwrap(), l.to_str().unwrap()])
    }

    /// A first upgrade with `etc/a.conf` = "v1": the base records it.
    fn first(&self) {
        fs::write(self.jail("etc/a.conf"), "v1\n").unwrap();
        expect_code(&self.upgrade(), 0);
        assert_eq!(read(&self.live("etc/a.conf")), "v1\n");
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn an_admins_symlinked_config_is_replaced_by_the_jails_file() {
    let h = Host::new();
    h.first();
    fs::remove_file(h.live("etc/a.conf")).unwrap();
    std::os::unix::fs::symlink("/srv/conf/a.conf", h.live("etc/a.conf")).unwrap();
    fs::write(h.jail("etc/a.conf"), "v2\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    assert!(
        stdout(&o).contains("*protected opt/tool/etc/a.conf (kept"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        fs::read_link(h.live("etc/a.conf")).unwrap(),
        Path::new("/srv/conf/a.conf"),
        "the admin's symlink is kept"
    );
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new")), "v2\n");
    // Kept as it is: verify counts no difference.
    expect_code(&h.verify(), 0);
}

#[test]
fn a_config_the_admin_turned_into_a_directory_is_reported_kept_yet_emptied() {
    let h = Host::new();
    h.first();
    fs::remove_file(h.live("etc/a.conf")).unwrap();
    fs::create_dir_all(h.live("etc/a.conf/sub")).unwrap();
    fs::write(h.live("etc/a.conf/local.conf"), "mine\n").unwrap();
    fs::write(h.live("etc/a.conf/sub/deep.conf"), "deep\n").unwrap();
    fs::write(h.jail("etc/a.conf"), "v2\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    assert!(h.live("etc/a.conf").is_dir(), "{}", stdout(&o));
    assert_eq!(read(&h.live("etc/a.conf/local.conf")), "mine\n");
    assert_eq!(read(&h.live("etc/a.conf/sub/deep.conf")), "deep\n");
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new")), "v2\n");
    // One decision, for the directory: what it holds goes with it.
    let out = stdout(&o);
    assert_eq!(out.matches("*protected").count(), 1, "{out}");
    expect_code(&h.verify(), 0);
    // And the next run keeps it again, with nothing new to offer.
    let o = h.upgrade();
    expect_code(&o, 0);
    assert_eq!(read(&h.live("etc/a.conf/sub/deep.conf")), "deep\n");
}

#[test]
fn a_jail_symlink_over_an_edited_file_replaces_the_edit() {
    let h = Host::new();
    h.first();
    fs::write(h.live("etc/a.conf"), "v1\nmine\n").unwrap();
    fs::remove_file(h.jail("etc/a.conf")).unwrap();
    std::os::unix::fs::symlink("a.conf.d/default", h.jail("etc/a.conf")).unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    assert_eq!(read(&h.live("etc/a.conf")), "v1\nmine\n", "{}", stdout(&o));
    assert_eq!(
        fs::read_link(h.live("etc/a.conf.jailsync-new")).unwrap(),
        Path::new("a.conf.d/default"),
        "the jail's symlink is offered beside"
    );
}

#[test]
fn an_admins_fifo_in_place_of_a_config_is_replaced() {
    let h = Host::new();
    h.first();
    fs::remove_file(h.live("etc/a.conf")).unwrap();
    mkfifo(&h.live("etc/a.conf"));
    fs::write(h.jail("etc/a.conf"), "v2\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    let m = fs::symlink_metadata(h.live("etc/a.conf")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()),
        "{}",
        stdout(&o)
    );
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new")), "v2\n");
}

/// `NAME.jailsync-new` over 255 bytes: never writable, so the jail's version must be offered
/// (and fail, loudly) on every run, not taken for seen after the first.
#[test]
fn a_jailsync_new_that_cannot_be_written_still_advances_the_base() {
    let h = Host::new();
    let name = format!("etc/{}", "n".repeat(250));
    fs::write(h.jail(&name), "v1\n").unwrap();
    expect_code(&h.upgrade(), 0);
    fs::write(h.live(&name), "v1\nmine\n").unwrap();
    fs::write(h.jail(&name), "v2\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 1);
    assert!(
        stderr(&o).contains("while writing the jail's version"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read(&h.live(&name)), "v1\nmine\n");
    // Nothing changed since: the jail's v2 was never offered, so it still is.
    let o = h.upgrade();
    assert!(
        stdout(&o).contains("changed in the jail; the jail's version goes to"),
        "the jail's version is offered again:\n{}",
        stdout(&o)
    );
    expect_code(&o, 1);
}

#[test]
fn verify_skips_a_kept_config_rewritten_and_made_setuid() {
    let h = Host::new();
    h.first();
    fs::write(h.live("etc/a.conf"), "v1\nmine\n").unwrap();
    fs::write(h.jail("etc/a.conf"), "v2\n").unwrap();
    expect_code(&h.upgrade(), 0);
    let o = h.verify();
    expect_code(&o, 0);
    assert!(
        stderr(&o).contains("1 configuration file"),
        "{}",
        stderr(&o)
    );
    // Changed since the run kept it: a difference like any other.
    fs::write(h.live("etc/a.conf"), "rewritten\n").unwrap();
    fs::set_permissions(h.live("etc/a.conf"), fs::Permissions::from_mode(0o4777)).unwrap();
    let o = h.verify();
    expect_code(&o, 1);
    assert!(stdout(&o).contains("etc/a.conf"), "{}", stdout(&o));
    // Its mode alone counts too.
    fs::write(h.live("etc/a.conf"), "v1\nmine\n").unwrap();
    expect_code(&h.verify(), 1);
    fs::set_permissions(h.live("etc/a.conf"), fs::Permissions::from_mode(0o644)).unwrap();
    expect_code(&h.verify(), 0);
}

#[test]
fn an_admins_own_jailsync_new_is_replaced_without_a_word() {
    let h = Host::new();
    h.first();
    fs::write(h.live("etc/a.conf"), "v1\nmine\n").unwrap();
    fs::write(h.live("etc/a.conf.jailsync-new"), "my notes\n").unwrap();
    fs::write(h.jail("etc/a.conf"), "v2\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new")), "v2\n");
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new.1")), "my notes\n");
    assert!(
        stderr(&o).contains("not one jailsync wrote: kept as")
            && stderr(&o).contains("a.conf.jailsync-new.1"),
        "said so:\n{}",
        stderr(&o)
    );
    // Ours, pending, is replaced by the next offer without a word; the admin's stays, and no
    // sync deletes it.
    fs::write(h.jail("etc/a.conf"), "v3\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new")), "v3\n");
    assert_eq!(read(&h.live("etc/a.conf.jailsync-new.1")), "my notes\n");
    assert!(!h.live("etc/a.conf.jailsync-new.2").exists());
    assert!(
        !stderr(&o).contains("not one jailsync wrote"),
        "{}",
        stderr(&o)
    );
    expect_code(&h.verify(), 0);
}

/// The jail turned a directory into a file; the admin had edited a file in it: the edit is
/// reported kept, so the directory holding it must stay (what else it held follows the jail).
#[test]
fn an_edited_file_in_a_directory_the_jail_made_a_file_is_reported_kept_yet_removed() {
    let h = Host::new();
    fs::create_dir_all(h.jail("etc/a.d")).unwrap();
    fs::write(h.jail("etc/a.d/x.conf"), "x1\n").unwrap();
    fs::write(h.jail("etc/a.d/y.conf"), "y1\n").unwrap();
    expect_code(&h.upgrade(), 0);
    fs::write(h.live("etc/a.d/x.conf"), "x1\nmine\n").unwrap();
    fs::remove_dir_all(h.jail("etc/a.d")).unwrap();
    fs::write(h.jail("etc/a.d"), "now a file\n").unwrap();
    let o = h.upgrade();
    expect_code(&o, 0);
    assert_eq!(
        read(&h.live("etc/a.d/x.conf")),
        "x1\nmine\n",
        "{}",
        stdout(&o)
    );
    assert!(
        !h.live("etc/a.d/y.conf").exists(),
        "unedited: follows the jail"
    );
    assert_eq!(read(&h.live("etc/a.d.jailsync-new")), "now a file\n");
    expect_code(&h.verify(), 0);
}

/// The admin replaced a configuration directory with a symlink to their own; the jail still
/// ships the directory: the symlink stays, and nothing of the jail's directory lands beside or
/// through it.
#[test]
fn an_admins_symlink_in_place_of_a_config_directory_is_replaced() {
    let h = Host::new();
    fs::create_dir_all(h.jail("etc/a.d")).unwrap();
    fs::write(h.jail("etc/a.d/x.conf"), "x1\n").unwrap();
    expect_code(&h.upgrade(), 0);
    fs::remove_dir_all(h.live("etc/a.d")).unwrap();
    std::os::unix::fs::symlink("/srv/conf/a.d", h.live("etc/a.d")).unwrap();
    fs::write(h.jail("etc/a.d/x.conf"), "x2\n").unwrap();
    fs::write(h.jail("etc/a.d/new.conf"), "new\n").unwrap();
    for _ in 0..2 {
        let o = h.upgrade();
        expect_code(&o, 0);
        assert_eq!(
            fs::read_link(h.live("etc/a.d")).unwrap(),
            Path::new("/srv/conf/a.d"),
            "{}",
            stdout(&o)
        );
        assert!(!h.live("etc/a.d.jailsync-new").exists());
        expect_code(&h.verify(), 0);
    }
}
