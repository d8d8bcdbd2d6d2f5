//! ACLs are exact (invariant 5): every entry a sync makes ends with the jail's access and
//! default ACLs and nothing else, whatever default ACL is in effect where it was made — DST's
//! parent (the home beside DST lives there) or DST itself (the in-tree home of the switch by
//! subtrees). Each scenario runs over both switch methods; the CI's second pass runs it again
//! over the portable OS layer.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

const ACCESS: &str = "system.posix_acl_access";
const DEFAULT: &str = "system.posix_acl_default";

/// The switch methods: the whole tree, per top-level entry (in-tree home), per file.
const METHODS: [&str; 2] = ["tree", "entries"];

/// The xattr `name` of `p` (not following a symlink); `None` when absent or unsupported.
fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let k = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and buffer.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA | libc::EOPNOTSUPP) => return None,
            _ => panic!("lgetxattr {} {name}: {e}", p.display()),
        }
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn mode(p: &Path) -> u32 {
    std::os::unix::fs::MetadataExt::mode(&std::fs::symlink_metadata(p).unwrap()) & 0o7777
}

#[track_caller]
fn setfacl(args: &[&str], p: &Path) {
    let o = Command::new("setfacl").args(args).arg(p).output().unwrap();
    assert!(
        o.status.success(),
        "setfacl {args:?} {}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Why ACLs cannot be tested here, if they cannot.
fn no_acls(dir: &Path) -> Option<String> {
    if !have("setfacl") {
        return Some("setfacl not installed (Debian package `acl`)".into());
    }
    let probe = dir.join("acl-probe");
    std::fs::write(&probe, b"").unwrap();
    let o = Command::new("setfacl")
        .args(["-m", "u:65534:r"])
        .arg(&probe)
        .output()
        .unwrap();
    std::fs::remove_file(&probe).unwrap();
    (!o.status.success()).then(|| {
        format!(
            "no POSIX ACLs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })
}

/// `PARENT` with a default ACL granting uid 65534 (nobody) everything, and `PARENT/d`, the
/// destination, made after it (so it inherits that ACL, as a tree made under it would).
struct Fixture {
    env: Env,
    parent: PathBuf,
    dst: PathBuf,
    method: &'static str,
}

impl Fixture {
    fn new(method: &'static str) -> Option<Fixture> {
        let env = Env::new();
        if let Some(why) = no_acls(env.tmp.path()) {
            eprintln!("skipped: {why}");
            return None;
        }
        let parent = env.tmp.path().join("parent");
        std::fs::create_dir(&parent).unwrap();
        setfacl(&["-d", "-m", "u:65534:rwx"], &parent);
        let dst = parent.join("d");
        std::fs::create_dir(&dst).unwrap();
        assert!(
            xattr(&dst, DEFAULT).is_some(),
            "DST inherits the default ACL"
        );
        Some(Fixture {
            env,
            parent,
            dst,
            method,
        })
    }

    fn src(&self) -> &Path {
        self.env.src()
    }

    /// The state directory, below `PARENT` too (so it would inherit the default ACL).
    fn state(&self) -> PathBuf {
        self.parent.join("state")
    }

    /// `jailsync ARGS...` with this fixture's state dir and switch method.
    fn js(&self, args: &[&OsStr]) -> Output {
        Command::new(BIN)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env_remove("JAILSYNC_STATE_DIR")
            .env("JAILSYNC_SWITCH", self.method)
            .output()
            .expect("run jailsync")
    }

    /// `sync EXTRA... SRC DST`, asserting exit 0; returns stdout.
    #[track_caller]
    fn sync(&self, extra: &[&str]) -> String {
        let mut args: Vec<&OsStr> = vec![OsStr::new("sync")];
        args.extend(extra.iter().map(OsStr::new));
        args.extend([self.src().as_os_str(), self.dst.as_os_str()]);
        let o = self.js(&args);
        assert!(
            o.status.success(),
            "[{}] sync {extra:?} failed:\n{}{}",
            self.method,
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// `verify [-c] SRC DST`'s exit code and output.
    fn verify(&self, checksum: bool) -> (i32, String) {
        let mut args = vec![OsStr::new("verify")];
        if checksum {
            args.push(OsStr::new("-c"));
        }
        args.extend([self.src().as_os_str(), self.dst.as_os_str()]);
        let o = self.js(&args);
        (o.status.code().unwrap_or(-1), stdout(&o) + &stderr(&o))
    }

    /// Each of `rels` has in DST exactly the source's access and default ACLs and mode.
    #[track_caller]
    fn assert_acls_exact(&self, rels: &[&str]) {
        for rel in rels {
            let (s, d) = (self.src().join(rel), self.dst.join(rel));
            for name in [ACCESS, DEFAULT] {
                assert_eq!(
                    xattr(&d, name),
                    xattr(&s, name),
                    "[{}] {rel}: {name} differs from the jail's",
                    self.method
                );
            }
            assert_eq!(
                mode(&d),
                mode(&s),
                "[{}] {rel}: mode {:o}, the jail's is {:o}",
                self.method,
                mode(&d),
                mode(&s)
            );
        }
    }

    /// `verify` (with and without `-c`) finds nothing, and a further sync plans nothing.
    #[track_caller]
    fn assert_in_sync(&self) {
        for checksum in [false, true] {
            let (code, out) = self.verify(checksum);
            assert_eq!(code, 0, "[{}] verify (-c: {checksum}):\n{out}", self.method);
        }
        let p = self.sync(&["-n", "-i"]);
        assert!(
            p.is_empty(),
            "[{}] a second sync still plans:\n{p}",
            self.method
        );
    }

    /// The homes this method uses and the state directory carry no ACL to pass down.
    #[track_caller]
    fn assert_homes_bare(&self) {
        for home in [
            self.parent.join(".jailsync-d"),
            self.dst.join(".jailsync-gens"),
            self.state().join("trees"),
        ] {
            if home.exists() {
                for name in [ACCESS, DEFAULT] {
                    assert_eq!(xattr(&home, name), None, "{}: {name}", home.display());
                }
                assert_eq!(mode(&home), 0o700, "{}", home.display());
            }
        }
    }
}

/// Issue 19 item 5: a 0660 root-only file synced below a parent with a default ACL granting
/// `nobody` rwx must not become readable or writable by `nobody` — nor any other entry.
#[test]
fn parent_default_acl_is_not_inherited() {
    crate::require_root!();
    for method in METHODS {
        let Some(f) = Fixture::new(method) else {
            return;
        };
        let s = &f.env.src;
        s.file("secret", b"root only\n").mode("secret", 0o660);
        s.dir("sub").mode("sub", 0o750);
        s.file("sub/g", b"g\n").mode("sub/g", 0o640);
        s.symlink("link", "secret");
        s.fifo("pipe").mode("pipe", 0o600);
        f.sync(&[]);
        f.assert_acls_exact(&["", "secret", "sub", "sub/g", "pipe"]);
        assert_eq!(xattr(&f.dst.join("link"), ACCESS), None, "[{method}] link");
        f.assert_homes_bare();
        f.assert_in_sync();

        // Entries added later, into the synced tree, are made the same way.
        s.file("sub/later", b"later\n").mode("sub/later", 0o600);
        s.dir("newdir").mode("newdir", 0o700);
        s.file("newdir/x", b"x\n").mode("newdir/x", 0o660);
        f.sync(&[]);
        f.assert_acls_exact(&["", "sub", "sub/later", "newdir", "newdir/x"]);
        f.assert_in_sync();

        // An ACL an admin adds later is seen: its ctime moved, no cache vouches for it.
        setfacl(&["-m", "u:65534:rw"], &f.dst.join("secret"));
        let (code, out) = f.verify(false);
        assert_eq!(code, 1, "[{method}] verify missed an added ACL:\n{out}");
    }
}

/// The jail's own ACLs come across exactly: a directory with a default ACL keeps it, an entry
/// below it that has no access ACL in the jail has none in DST (also when it is added to a
/// live directory that already holds that default ACL), and one with an access ACL keeps
/// exactly it.
#[test]
fn jail_acls_are_copied_and_only_they() {
    crate::require_root!();
    for method in METHODS {
        let Some(f) = Fixture::new(method) else {
            return;
        };
        let s = &f.env.src;
        s.dir("share").mode("share", 0o755);
        s.file("share/plain", b"p\n").mode("share/plain", 0o660);
        s.file("share/granted", b"g\n").mode("share/granted", 0o640);
        setfacl(&["-m", "u:1:r"], &s.path("share/granted"));
        setfacl(&["-d", "-m", "u:65534:rwx"], &s.path("share"));
        // Made after the default ACL: these carry it in the jail too (kept as they are).
        s.dir("share/inherits");
        s.file("share/inherits/x", b"x\n");
        s.fifo("share/inherits/p");
        f.sync(&[]);
        let all = [
            "",
            "share",
            "share/plain",
            "share/granted",
            "share/inherits",
            "share/inherits/x",
            "share/inherits/p",
        ];
        f.assert_acls_exact(&all);
        assert!(xattr(&f.dst.join("share/granted"), ACCESS).is_some());
        assert!(xattr(&f.dst.join("share/inherits/x"), ACCESS).is_some());
        f.assert_homes_bare();
        f.assert_in_sync();

        // New entries without ACLs in a directory whose default ACL the live tree has now.
        s.file("share/bare", b"b\n").mode("share/bare", 0o660);
        s.fifo("share/bare-pipe");
        s.dir("share/bare-dir");
        for rel in ["share/bare", "share/bare-pipe", "share/bare-dir"] {
            setfacl(&["-b"], &s.path(rel));
        }
        s.mode("share/bare", 0o660).mode("share/bare-dir", 0o700);
        s.mode("share/bare-pipe", 0o600);
        s.file("share/bare-dir/y", b"y\n")
            .mode("share/bare-dir/y", 0o604);
        f.sync(&[]);
        let more = [
            "share/bare",
            "share/bare-pipe",
            "share/bare-dir",
            "share/bare-dir/y",
        ];
        f.assert_acls_exact(&more);
        f.assert_acls_exact(&all);
        f.assert_in_sync();
    }
}

/// With `--no-xattrs` no ACL is synced, but the homes still pass none down: what is staged
/// there is bare. (Per file, entries are made in the live directories, whose ACLs are the
/// admin's when xattrs are not synced: not checked.)
#[test]
fn no_xattrs_still_stages_nothing_inherited() {
    crate::require_root!();
    for method in ["tree", "entries"] {
        let Some(f) = Fixture::new(method) else {
            return;
        };
        let s = &f.env.src;
        s.file("secret", b"root only\n").mode("secret", 0o660);
        s.dir("sub").mode("sub", 0o750);
        s.file("sub/g", b"g\n").mode("sub/g", 0o640);
        s.fifo("pipe").mode("pipe", 0o600);
        f.sync(&["--no-xattrs"]);
        let rels = ["secret", "sub", "sub/g", "pipe"];
        if method == "tree" {
            f.assert_acls_exact(&[""]);
        }
        f.assert_acls_exact(&rels);
        f.assert_homes_bare();
    }
}
