//! `jailsync push` through a real OpenSSH server started by each test on 127.0.0.1 (generated
//! host and client keys, root login by key only), several "hosts" being several roots behind
//! it. The remote binary is this build's (`--remote-bin`).

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// An sshd of our own, killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    /// None (with the reason printed) when this machine cannot run one.
    fn start() -> Option<Sshd> {
        if !is_root() {
            eprintln!("skipped: needs root (sshd with root login)");
            return None;
        }
        let ssh_ok = Command::new("ssh")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        if !Path::new("/usr/sbin/sshd").exists() || !ssh_ok {
            eprintln!("skipped: needs openssh-server and openssh-client (.ci/run installs them)");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("jailsync-sshd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        for k in ["host_key", "client_key"] {
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(k))
                .output()
                .expect("ssh-keygen");
            assert!(o.status.success(), "ssh-keygen: {}", stderr(&o));
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // sshd refuses to start without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = d.join("sshd_config");
            std::fs::write(
                &conf,
                format!(
                    "ListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile none\n\
                     AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                     AllowUsers root\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                    d = d.display()
                ),
            )
            .unwrap();
            let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
            std::fs::write(
                d.join("known_hosts"),
                format!("[127.0.0.1]:{port} {host_pub}"),
            )
            .unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&conf)
                .args(["-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
                .spawn()
                .expect("sshd");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Sshd { child, port, dir });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start: {}",
            std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default()
        );
    }

    /// The `--ssh` command reaching it, checking its host key.
    fn ssh(&self) -> String {
        let d = self.dir.path().display();
        format!(
            "ssh -p {} -i {d}/client_key -o StrictHostKeyChecking=yes -o UserKnownHostsFile={d}/known_hosts \
             -o BatchMode=yes -o LogLevel=ERROR",
            self.port
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A jail, hosts `h1`..`hN` (empty roots, made) and the sshd reaching them, in one temp dir with
/// the local state dir and the hosts' (one for all: they are one machine) beside them. Any other
/// name is a host whose root does not exist yet.
struct Fleet {
    tmp: tempfile::TempDir,
    jail: Tree,
    hosts: usize,
    // Last: killed after the roots are gone, as when each test held its own.
    sshd: Option<Sshd>,
}

impl Fleet {
    /// With an sshd; None (the test skipped, the reason printed) when this machine cannot run one.
    fn start(hosts: usize) -> Option<Fleet> {
        let sshd = Sshd::start()?;
        Some(Fleet::with(hosts, Some(sshd)))
    }

    /// Without one: the hosts are reached as bare roots, over a pipe.
    fn local(hosts: usize) -> Fleet {
        Fleet::with(hosts, None)
    }

    fn with(hosts: usize, sshd: Option<Sshd>) -> Fleet {
        let tmp = tempfile::Builder::new()
            .prefix("jailsync-push-")
            .tempdir()
            .expect("tempdir");
        let jail = Tree::new(tmp.path().join("jail"));
        let f = Fleet {
            tmp,
            jail,
            hosts,
            sshd,
        };
        for i in 1..=hosts {
            f.tree(&format!("h{i}"));
        }
        f
    }

    fn root(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// The root of host `name`, made if it was not.
    fn tree(&self, name: &str) -> Tree {
        Tree::new(self.root(name))
    }

    fn host(&self, name: &str) -> String {
        format!("127.0.0.1:{}", self.root(name).display())
    }

    /// Every host made at the start, as push targets.
    fn hosts(&self) -> Vec<String> {
        (1..=self.hosts)
            .map(|i| self.host(&format!("h{i}")))
            .collect()
    }

    fn local_state(&self) -> PathBuf {
        self.tmp.path().join("state-local")
    }

    fn remote_state(&self) -> PathBuf {
        self.tmp.path().join("state-remote")
    }

    /// The `--ssh` command reaching the hosts.
    fn ssh(&self) -> String {
        self.sshd.as_ref().expect("a fleet with an sshd").ssh()
    }

    /// An executable file `name` in the temp dir holding `text`.
    fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A push of the jail to `targets`, to change before it is run.
    fn push_to<T: AsRef<OsStr>>(&self, targets: &[T]) -> Push<'_> {
        Push {
            f: self,
            targets: targets.iter().map(|t| t.as_ref().to_owned()).collect(),
            ssh: self.sshd.as_ref().map(|s| s.ssh().into()),
            remote_bin: self.sshd.as_ref().map(|_| BIN.into()),
            args: Vec::new(),
        }
    }

    /// `jailsync push` of the jail to `targets` with `extra`, run to its end.
    fn push<T: AsRef<OsStr>>(&self, targets: &[T], extra: &[&str]) -> Output {
        self.push_to(targets).args(extra).run()
    }
}

/// `jailsync --state-dir LOCAL push JAIL TARGETS... [--ssh SSH] [--remote-bin BIN]
/// --remote-state-dir REMOTE ARGS...`; the ssh and the remote binary are the fleet's sshd and
/// this build, or none with a fleet that has no sshd.
struct Push<'f> {
    f: &'f Fleet,
    targets: Vec<OsString>,
    ssh: Option<OsString>,
    remote_bin: Option<OsString>,
    args: Vec<OsString>,
}

impl Push<'_> {
    fn ssh(mut self, ssh: impl AsRef<OsStr>) -> Self {
        self.ssh = Some(ssh.as_ref().to_owned());
        self
    }

    fn remote_bin(mut self, bin: impl AsRef<OsStr>) -> Self {
        self.remote_bin = Some(bin.as_ref().to_owned());
        self
    }

    fn args(mut self, extra: &[&str]) -> Self {
        self.args.extend(extra.iter().map(OsString::from));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_remove("JAILSYNC_STATE_DIR")
            .arg("--state-dir")
            .arg(self.f.local_state())
            .arg("push")
            .arg(&self.f.jail.root)
            .args(&self.targets);
        if let Some(ssh) = &self.ssh {
            c.arg("--ssh").arg(ssh);
        }
        if let Some(bin) = &self.remote_bin {
            c.arg("--remote-bin").arg(bin);
        }
        c.arg("--remote-state-dir")
            .arg(self.f.remote_state())
            .args(&self.args);
        c
    }

    fn run(&self) -> Output {
        run_within(&mut self.command())
    }
}

/// Runs `c` to its end, killed (and the test failed) after two minutes: a push that hangs must
/// fail the test, not the suite.
fn run_within(c: &mut Command) -> Output {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let a = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let b = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "timed out: {c:?}\n{}",
                String::from_utf8_lossy(&b.join().unwrap())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: a.join().unwrap(),
        stderr: b.join().unwrap(),
    }
}

/// The JSON lines of a run's stdout.
fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn summary(o: &Output) -> serde_json::Value {
    json_lines(o)
        .into_iter()
        .find(|v| v["type"] == "summary")
        .unwrap_or_else(|| panic!("no summary:\n{}\n{}", stdout(o), stderr(o)))
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small release: programs, a library, links, a hard-link pair, a sparse file, xattrs,
/// modes and times, and its package database.
fn release(j: &Tree, big: &[u8]) {
    j.file("usr/pkg/bin/tool", b"#!/bin/sh\necho new\n")
        .mode("usr/pkg/bin/tool", 0o755)
        .file("usr/pkg/lib/libbig.so.2", big)
        .symlink("usr/pkg/lib/libbig.so", "libbig.so.2")
        .file("usr/pkg/share/doc/README", b"read me\n")
        .hardlink("usr/pkg/share/doc/README.link", "usr/pkg/share/doc/README")
        .sparse("usr/pkg/share/sparse.img", 1 << 20, &[(4096, b"data")])
        .file("usr/pkg/etc/empty", b"")
        .xattr("usr/pkg/bin/tool", "user.jailsync", b"v2")
        .mode("usr/pkg/bin", 0o750)
        .file("var/db/pkg/big-2.0/+CONTENTS", b"lib/libbig.so.2\n")
        .mtime("usr/pkg/bin/tool", 1_700_000_123, 456)
        .settle_dirs(1_700_000_000);
}

/// A host's live trees (its homes beside them are the engine's, made on first contact).
fn live(f: &Fleet, host: &str) -> Vec<Listing> {
    ["usr/pkg", "var/db/pkg"]
        .iter()
        .map(|t| listing(&f.root(host).join(t)))
        .collect()
}

/// A host running an older release of `release`'s package.
fn old_release(host: &Tree) {
    host.file("usr/pkg/bin/tool", b"old\n")
        .file("var/db/pkg/big-1.0/+CONTENTS", b"old\n");
}

fn same_as_jail(f: &Fleet, host: &str) {
    for t in ["usr/pkg", "var/db/pkg"] {
        assert_same(&f.jail.path(t), &f.root(host).join(t));
    }
}

#[test]
fn push_over_ssh_makes_every_host_the_jail_repeats_cheaply_and_rolls_back() {
    let Some(f) = Fleet::start(3) else { return };
    let big = random(2 << 20, 1);
    release(&f.jail, &big);
    // h1 runs the old release, which already holds the new library under another name (a
    // rename in the new release: its content must not be sent again); h2 is empty; h3 has
    // no trees yet.
    f.tree("h1")
        .file("usr/pkg/bin/tool", b"#!/bin/sh\necho old\n")
        .file("usr/pkg/lib/libbig.so.1", &big)
        .symlink("usr/pkg/lib/libbig.so", "libbig.so.1")
        .file("usr/pkg/lib/gone.so", b"removed by the upgrade")
        .file("var/db/pkg/big-1.0/+CONTENTS", b"lib/libbig.so.1\n");
    f.tree("h2").dir("usr/pkg").dir("var/db/pkg");
    let h1_before = listing(&f.root("h1/usr/pkg"));
    let jail_before = listing(&f.jail.root);
    let hosts = f.hosts();

    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 0);
    for h in ["h1", "h2", "h3"] {
        same_as_jail(&f, h);
    }
    assert!(
        listing(&f.jail.root) == jail_before,
        "push changed the jail"
    );
    let s = summary(&o);
    assert_eq!(s["switched"], 3, "{s}");
    assert!(s["staged_to_switched_ms"].as_f64().is_some(), "{s}");
    let first = s["wire_bytes"].as_u64().unwrap();
    let lines = json_lines(&o);
    let host = |name: &str| {
        lines
            .iter()
            .find(|v| v["host"] == f.host(name))
            .unwrap()
            .clone()
    };
    // h1 had the library's content: it was found there, not sent.
    assert!(
        host("h1")["found_on_host"].as_u64().unwrap() >= 1,
        "{}",
        host("h1")
    );
    let sent = |h: &str| host(h)["blob_bytes"].as_u64().unwrap();
    assert!(sent("h2") >= 2 << 20, "{}", host("h2"));
    assert!(
        sent("h2") - sent("h1") >= 2 << 20,
        "{} {}",
        host("h1"),
        host("h2")
    );
    // Wire bytes count both directions of every connection: at least what was sent.
    let per_host: u64 = lines
        .iter()
        .filter_map(|v| v["wire_bytes"].as_u64())
        .sum::<u64>()
        - first;
    assert_eq!(per_host, first, "summary is the sum of the hosts");
    assert!(first > 2 * (2 << 20), "{first}");

    // Again: nothing to send but the manifests.
    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 0);
    let again = summary(&o)["wire_bytes"].as_u64().unwrap();
    assert!(
        again * 50 < first,
        "a repeated push sent {again} bytes, the first {first}"
    );
    for h in ["h1", "h2", "h3"] {
        same_as_jail(&f, h);
    }

    // Every host back to what it ran before.
    let o = f.push(&hosts[..1], &["--rollback"]);
    expect_code(&o, 0);
    assert!(
        listing(&f.root("h1/usr/pkg")) == h1_before,
        "rollback did not restore h1"
    );
}

#[test]
fn a_host_that_cannot_stage_keeps_every_other_host_unswitched() {
    let Some(f) = Fleet::start(3) else { return };
    release(&f.jail, &random(64 << 10, 2));
    for h in ["h1", "h2", "h3"] {
        old_release(&f.tree(h));
    }
    // h2's home for usr/pkg cannot be made: a file holds its name.
    std::fs::write(f.root("h2/usr/.jailsync-pkg"), b"in the way").unwrap();
    let before: Vec<_> = ["h1", "h2", "h3"].iter().map(|h| live(&f, h)).collect();
    let hosts = f.hosts();

    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("jailsync: {}: ", f.host("h2"))) && err.contains(".jailsync-pkg"),
        "{err}"
    );
    for (k, h) in ["h1", "h2", "h3"].iter().enumerate() {
        assert!(live(&f, h) == before[k], "{h} changed");
        let next = f.root(h).join("usr/.jailsync-pkg/next");
        assert!(!next.exists(), "{} left staged", next.display());
    }
    let s = summary(&o);
    assert_eq!(
        (s["switched"].as_u64(), s["failed"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(s["not_switched"], 2, "{s}");
    let r = s["results"].as_array().unwrap();
    assert_eq!(r.len(), 3, "{s}");
    assert_eq!(r[1]["host"], f.host("h2"), "{s}");
    assert_eq!(r[1]["result"], "failed", "{s}");
    assert!(
        r[1]["error"].as_str().unwrap().contains(".jailsync-pkg"),
        "{s}"
    );
    // h2 failed while planning, before any content moved: the others were sent none.
    assert_eq!(r[0]["result"], "not sent", "{s}");

    // Allowing one failure, the others switch; h2 stays as it was, and the run still says so.
    let o = f.push(&hosts, &["--max-failed", "1"]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains(&f.host("h2")), "{}", stderr(&o));
    same_as_jail(&f, "h1");
    same_as_jail(&f, "h3");
    assert!(live(&f, "h2") == before[1]);
}

#[test]
fn a_connection_killed_mid_transfer_leaves_the_host_untouched() {
    let Some(f) = Fleet::start(1) else { return };
    release(&f.jail, &random(4 << 20, 3));
    old_release(&f.tree("h1"));
    let before = live(&f, "h1");
    // An ssh whose connection is killed (SIGKILL) once 1 MB of the 4 MB library has gone in.
    let wrap = f.script(
        "ssh-killed",
        &format!(
            "#!/bin/bash\nfifo=$(mktemp -u)\nmkfifo \"$fifo\"\n{ssh} \"$@\" < \"$fifo\" &\npid=$!\n\
             stdbuf -i0 -o0 head -c 1000000 > \"$fifo\"\nkill -9 $pid\nrm -f \"$fifo\"\nwait $pid\n",
            ssh = f.ssh()
        ),
    );
    let o = f.push_to(&f.hosts()).ssh(&wrap).run();
    expect_code(&o, 1);
    assert!(stderr(&o).contains(&f.host("h1")), "{}", stderr(&o));
    assert!(live(&f, "h1") == before, "h1 changed");

    // The next push (once the killed session has let go of its lock) finishes the job.
    let t0 = Instant::now();
    loop {
        let o = f.push(&f.hosts(), &[]);
        if o.status.code() == Some(0) {
            break;
        }
        assert!(
            stderr(&o).contains("locked by") && t0.elapsed() < Duration::from_secs(20),
            "{}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    same_as_jail(&f, "h1");
}

/// A fake `serve` in Python (independent of our protocol code): greets with `version`, reads
/// the request, then misbehaves as `mode` says.
fn fake_serve(f: &Fleet, mode: &str, version: &str) -> PathBuf {
    fake_serve_speaking(f, mode, version, jailsync_engine::remote::wire::PROTOCOL)
}

/// A fake serve announcing protocol `proto` (from 5 it says it holds no manifest: HAVE).
fn fake_serve_speaking(f: &Fleet, mode: &str, version: &str, proto: u32) -> PathBuf {
    let script = format!(
        r#"#!/usr/bin/python3
import struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
def send(t, p):
    out.write(struct.pack('<BI', t, len(p)) + p); out.flush()
def recv():
    h = inp.read(5)
    if len(h) < 5: sys.exit(0)
    t, n = struct.unpack('<BI', h)
    return t, inp.read(n)
v = b'{version}'
send(0x01, b'JAILSYNC' + struct.pack('<I', {proto}) + struct.pack('<I', len(v)) + v)
t, _ = recv()
t, p = recv()  # OPEN
o = 0
for _ in range(2):  # source, root
    o += 4 + struct.unpack('<I', p[o:o + 4])[0]
ntrees = struct.unpack('<I', p[o:o + 4])[0]
width = 32
if {proto} >= 5:
    send(0x13, b'\x00' * 32 * ntrees); width = 64
ends = 0
while ends < ntrees:
    t, p = recv()
    if t == 0x12: ends += 1
mode = '{mode}'
if mode == 'want-foreign':
    send(0x20, b'\x41' * width); send(0x21, struct.pack('<QQQ', 1, 1, 0))
elif mode == 'huge-frame':
    out.write(struct.pack('<BI', 0x20, 0xffffffff)); out.flush()
elif mode == 'escape':
    send(0x02, b'../../etc/passwd written \x1b[2J\x1b]0;owned\x07')
elif mode == 'blob-to-local':
    send(0x30, b'\x00' * 32 + struct.pack('<Q', 5)); send(0x31, b'hello'); send(0x32, b'')
elif mode == 'short-staged':
    send(0x21, struct.pack('<QQQ', 0, 0, 0)); recv(); send(0x40, b'\x01')
inp.read()
"#
    );
    f.script(&format!("fake-serve-{mode}-{proto}"), &script)
}

#[test]
fn a_hostile_remote_cannot_make_the_local_side_write_anything() {
    let Some(f) = Fleet::start(0) else { return };
    require!(
        Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3 for the fake serve"
    );
    release(&f.jail, &random(32 << 10, 4));
    let cwd = f.tmp.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    for (mode, says) in [
        ("want-foreign", "not a file of this jail"),
        ("huge-frame", "at most"),
        ("escape", "../../etc/passwd written ?[2J?]0;owned?"),
        ("blob-to-local", "expected WANT, got BLOB"),
        ("short-staged", "STAGED frame cut short"),
    ] {
        let fake = fake_serve(&f, mode, version);
        // The local state dir (the jail's stat cache) is the one place push writes.
        let seen = || {
            let mut l = listing(f.tmp.path());
            l.0.retain(|k, _| !k.is_empty() && !k.starts_with(b"state-local"));
            l
        };
        let before = seen();
        let o = run_within(
            f.push_to(&[f.host("h1")])
                .remote_bin(&fake)
                .command()
                .current_dir(&cwd),
        );
        expect_code(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains(&f.host("h1")) && err.contains(says),
            "{mode}: {err}"
        );
        assert!(
            !err.contains('\x1b'),
            "{mode}: an escape reached the terminal"
        );
        // Nothing written anywhere we can see: the jail, the fake's directory, the cwd (the
        // local state dir was made by the first run's jail scan and holds only its cache).
        let after = seen();
        let diff = before.diff(&after);
        assert!(before == after, "{mode}: the local side wrote:\n{diff}");
        assert!(!f.root("h1").exists(), "{mode}");
    }
}

#[test]
fn versions_that_differ_are_refused_both_ways() {
    let Some(f) = Fleet::start(0) else { return };
    require!(
        Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3 for the fake serve"
    );
    release(&f.jail, b"x");
    // Two protocols apart: refused at the greeting, naming both versions.
    let proto = jailsync_engine::remote::wire::PROTOCOL;
    let fake = fake_serve_speaking(&f, "none", "0.0.0-other", proto - 2);
    let o = f.push_to(&[f.host("h1")]).remote_bin(&fake).run();
    expect_code(&o, 1);
    let err = stderr(&o);
    let ours = env!("CARGO_PKG_VERSION");
    assert!(
        err.contains(&format!(
            "remote jailsync is version 0.0.0-other (protocol {})",
            proto - 2
        )) && err.contains(&format!("this one {ours} (protocol {proto})"))
            && err.contains("install the same version"),
        "{err}"
    );
    assert!(!f.root("h1").exists());

    // Our serve, greeted by a client of another version, says so and stages nothing.
    let mut serve = Command::new(BIN)
        .args(["--state-dir"])
        .arg(f.remote_state())
        .arg("serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let v = b"9.9.9";
    let mut hello = b"JAILSYNC".to_vec();
    hello.extend_from_slice(&1u32.to_le_bytes());
    hello.extend_from_slice(&(v.len() as u32).to_le_bytes());
    hello.extend_from_slice(v);
    let mut frame = vec![0x01];
    frame.extend_from_slice(&(hello.len() as u32).to_le_bytes());
    frame.extend_from_slice(&hello);
    serve.stdin.take().unwrap().write_all(&frame).unwrap();
    let o = serve.wait_with_output().unwrap();
    expect_code(&o, 1);
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.contains("local jailsync is version 9.9.9")
            && said.contains("install the same version"),
        "{said}"
    );
}

#[test]
fn a_bare_root_is_pushed_over_a_pipe_with_the_same_protocol() {
    let f = Fleet::local(1);
    release(&f.jail, &random(100 << 10, 5));
    f.tree("h1").file("usr/pkg/bin/tool", b"old\n");
    let o = f.push(&[f.root("h1")], &["--json"]);
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    let s = summary(&o);
    assert_eq!(s["switched"], 1, "{s}");
    assert!(s["wire_bytes"].as_u64().unwrap() > 0, "{s}");
}

#[test]
fn a_host_waiting_staged_is_left_untouched_when_push_dies() {
    let Some(f) = Fleet::start(1) else { return };
    release(&f.jail, &random(64 << 10, 6));
    old_release(&f.tree("h1"));
    let before = live(&f, "h1");
    // "stall" is h2 reached through a relay that stops passing on what it is sent once the
    // content is through (holding the connection open), so h2 never stages and h1 stages and
    // waits for the fleet's word; push is then killed.
    old_release(&f.tree("h2"));
    let h2_before = live(&f, "h2");
    let wrap = stalling_ssh(&f);
    let mut push = f
        .push_to(&[f.host("h1"), format!("stall:{}", f.root("h2").display())])
        .ssh(&wrap)
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Staged: both trees' next release made and recorded as generation 1.
    let staged = |t: &str| {
        let home = f.root("h1").join(t);
        home.join("next").is_dir() && home.join("gen-1.d").is_dir()
    };
    let t0 = Instant::now();
    while !(staged("usr/.jailsync-pkg") && staged("var/db/.jailsync-pkg")) {
        assert!(t0.elapsed() < Duration::from_secs(60), "h1 never staged");
        if push.try_wait().unwrap().is_some() {
            let mut e = String::new();
            std::io::Read::read_to_string(push.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("push ended early: {e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    push.kill().unwrap();
    push.wait().unwrap();
    // The remote sees its connection end and gives up what it staged.
    let t0 = Instant::now();
    while f.root("h1/usr/.jailsync-pkg/next").exists()
        || f.root("h1/var/db/.jailsync-pkg/next").exists()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "h1 kept its staging"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(live(&f, "h1") == before, "h1 changed");
    assert!(live(&f, "h2") == h2_before, "h2 changed");
}

/// An `--ssh` for the host named `stall` (127.0.0.1 through the fleet's ssh): it passes on
/// what push sends until the content is through (BLOBS_DONE), then swallows the rest, holding
/// the connection open; any other host is reached directly.
fn stalling_ssh(f: &Fleet) -> PathBuf {
    let script = format!(
        r#"#!/usr/bin/python3
import os, struct, subprocess, sys
args = sys.argv[1:]
if 'stall' not in args:
    os.execvp('ssh', {ssh:?}.split() + args)
args = ['127.0.0.1' if a == 'stall' else a for a in args]
p = subprocess.Popen({ssh:?}.split() + args, stdin=subprocess.PIPE)
inp, out = sys.stdin.buffer, p.stdin
while True:
    h = inp.read(5)
    if len(h) < 5:
        break
    t, n = struct.unpack('<BI', h)
    body = inp.read(n)
    if t == 0x33:
        while inp.read(65536):
            pass
        break
    out.write(h + body); out.flush()
out.close()
sys.exit(p.wait())
"#,
        ssh = f.ssh()
    );
    f.script("ssh-stall", &script)
}

/// `jailsync --state-dir` (the hosts' state dir) with `args`, on this machine: what an admin
/// runs on a host.
fn on_host(f: &Fleet, args: &[&std::ffi::OsStr]) -> Output {
    let mut c = Command::new(BIN);
    c.env_remove("JAILSYNC_STATE_DIR")
        .arg("--state-dir")
        .arg(f.remote_state())
        .args(args);
    run_within(&mut c)
}

fn host_line(o: &Output, f: &Fleet, name: &str) -> serde_json::Value {
    json_lines(o)
        .into_iter()
        .find(|v| v["type"] == "host" && v["host"] == f.host(name))
        .unwrap_or_else(|| panic!("no line for {name}:\n{}", stdout(o)))
}

#[test]
fn push_keeps_a_hosts_edited_configuration_as_upgrade_does() {
    let Some(f) = Fleet::start(2) else { return };
    f.jail
        .file("usr/pkg/bin/tool", b"v1\n")
        .file("usr/pkg/etc/app.conf", b"listen 80 # v1\n")
        .file("usr/pkg/share/app/app.ini", b"mode=1 # v1\n")
        .file("usr/pkg/share/app/other.cfg", b"x=1 # v1\n")
        // Protected by the jail's jailsync.conf (app.ini) and by --protect (other.cfg).
        .file("jailsync.conf", b"protect usr/pkg/share/app/*.ini\n");
    let hosts = f.hosts();
    let protect = ["--json", "--protect", "usr/pkg/share/app/*.cfg"];
    expect_code(&f.push(&hosts, &protect), 0);
    // The admin of h1 edits two protected files; h2 is left as pushed.
    f.tree("h1")
        .file("usr/pkg/etc/app.conf", b"listen 8080 # ADMIN\n")
        .file("usr/pkg/share/app/app.ini", b"mode=2 # ADMIN\n")
        .file("usr/pkg/share/app/other.cfg", b"x=2 # ADMIN\n");
    // The next release changes the program and app.conf, not app.ini.
    f.jail
        .file("usr/pkg/bin/tool", b"v2\n")
        .file("usr/pkg/etc/app.conf", b"listen 80 # v2\n");
    let o = f.push(&hosts, &protect);
    expect_code(&o, 0);
    let read = |h: &str, p: &str| std::fs::read(f.root(h).join(p)).unwrap();
    assert_eq!(read("h1", "usr/pkg/bin/tool"), b"v2\n");
    assert_eq!(read("h1", "usr/pkg/etc/app.conf"), b"listen 8080 # ADMIN\n");
    assert_eq!(
        read("h1", "usr/pkg/etc/app.conf.jailsync-new"),
        b"listen 80 # v2\n"
    );
    assert_eq!(read("h1", "usr/pkg/share/app/app.ini"), b"mode=2 # ADMIN\n");
    assert_eq!(read("h1", "usr/pkg/share/app/other.cfg"), b"x=2 # ADMIN\n");
    assert!(!f.root("h1/usr/pkg/share/app/app.ini.jailsync-new").exists());
    let c = &host_line(&o, &f, "h1")["config"];
    assert_eq!(
        (c["kept"].as_u64(), c["kept_new"].as_u64()),
        (Some(2), Some(1)),
        "{c}"
    );
    // h2 had no edit: it runs the jail's files.
    same_as_jail_tree(&f, "h2", "usr/pkg");
    assert_eq!(host_line(&o, &f, "h2")["config"]["kept_new"], 0);
    // The host's base moved to the jail's v2: pushed again, the pending file stays (never
    // deleted by a sync) and the edit is kept as unchanged in the jail.
    let o = f.push(&hosts, &protect);
    expect_code(&o, 0);
    assert_eq!(read("h1", "usr/pkg/etc/app.conf"), b"listen 8080 # ADMIN\n");
    assert_eq!(
        read("h1", "usr/pkg/etc/app.conf.jailsync-new"),
        b"listen 80 # v2\n"
    );
    let c = &host_line(&o, &f, "h1")["config"];
    assert_eq!(
        (c["kept"].as_u64(), c["kept_new"].as_u64()),
        (Some(3), Some(0)),
        "{c}"
    );
    // `conf-diff` on the host sees the pending file.
    let d = on_host(&f, &["conf-diff".as_ref(), f.root("h1").as_os_str()]);
    expect_code(&d, 1);
    assert!(stdout(&d).contains("+listen 80 # v2"), "{}", stdout(&d));
    // --no-protect: etc/ is the jail's again (jailsync.conf's glob still protects app.ini;
    // other.cfg, protected by no rule now, is the jail's too).
    let o = f.push(&hosts, &["--json", "--no-protect"]);
    expect_code(&o, 0);
    assert_eq!(read("h1", "usr/pkg/etc/app.conf"), b"listen 80 # v2\n");
    assert_eq!(read("h1", "usr/pkg/share/app/app.ini"), b"mode=2 # ADMIN\n");
    assert_eq!(read("h1", "usr/pkg/share/app/other.cfg"), b"x=1 # v1\n");
}

fn same_as_jail_tree(f: &Fleet, host: &str, t: &str) {
    assert_same(&f.jail.path(t), &f.root(host).join(t));
}

/// A 2005-layout jail: the package database inside the tree it describes.
fn pkgsrc_2005(j: &Tree, v: u32) {
    let _ = std::fs::remove_dir_all(j.path("usr/pkg/pkgdb"));
    j.file("usr/pkg/bin/nginx", format!("nginx v{v}\n")).file(
        format!("usr/pkg/pkgdb/nginx-1.{v}/+CONTENTS"),
        format!("nginx-1.{v}\n"),
    );
}

#[test]
fn push_keeps_a_nested_databases_history_and_rollback_root_undoes_exactly_the_push() {
    let Some(f) = Fleet::start(1) else { return };
    f.tree("h1").dir("usr");
    let root = f.root("h1");
    let upgrade = || {
        let o = on_host(
            &f,
            &[
                "upgrade".as_ref(),
                f.jail.root.as_os_str(),
                "--root".as_ref(),
                root.as_os_str(),
                "-q".as_ref(),
            ],
        );
        expect_code(&o, 0);
    };
    // Two local upgrades on the host: the database has its own generations beside it.
    pkgsrc_2005(&f.jail, 1);
    upgrade();
    pkgsrc_2005(&f.jail, 2);
    upgrade();
    let db_history = || {
        let o = on_host(
            &f,
            &[
                "--json".as_ref(),
                "history".as_ref(),
                root.join("usr/pkg/pkgdb").as_os_str(),
            ],
        );
        expect_code(&o, 0);
        json_lines(&o).len()
    };
    let gens_before = db_history();
    assert!(
        gens_before >= 2,
        "the upgrades made no database generations"
    );
    // What runs (the engine's bookkeeping, the database's home, aside).
    let packages = || {
        let mut l = listing(&root.join("usr/pkg"));
        l.0.retain(|k, _| !k.starts_with(b".jailsync-"));
        l
    };
    let before = packages();

    pkgsrc_2005(&f.jail, 3);
    expect_code(&f.push(&f.hosts(), &[]), 0);
    assert_eq!(
        std::fs::read(root.join("usr/pkg/bin/nginx")).unwrap(),
        b"nginx v3\n"
    );
    assert!(root.join("usr/pkg/pkgdb/nginx-1.3/+CONTENTS").exists());
    assert!(!root.join("usr/pkg/pkgdb/nginx-1.2").exists());
    // The database's home and its generations survived the push, which switched the
    // database as its own tree after the packages (one generation more), as `upgrade` does.
    assert!(root.join("usr/pkg/.jailsync-pkgdb").is_dir());
    assert_eq!(
        db_history(),
        gens_before + 1,
        "the database's history was lost, or the push did not switch it as its own tree"
    );
    // The host's root-level history lists the push, last.
    let o = on_host(
        &f,
        &[
            "--json".as_ref(),
            "history".as_ref(),
            "--root".as_ref(),
            root.as_os_str(),
        ],
    );
    expect_code(&o, 0);
    let ups = json_lines(&o);
    assert_eq!(ups.len(), 3, "{}", stdout(&o));
    let jail = ups[0]["jail"].as_str().unwrap();
    assert!(
        jail.contains(':') && jail.ends_with(&*f.jail.root.to_string_lossy()),
        "{}",
        ups[0]
    );
    assert_eq!(ups[0]["status"], "done", "{}", ups[0]);
    // Rolling the root back undoes the push, and only it: the host runs upgrade 2's release.
    let o = on_host(
        &f,
        &["rollback".as_ref(), "--root".as_ref(), root.as_os_str()],
    );
    expect_code(&o, 0);
    let after = packages();
    assert!(
        after == before,
        "rollback --root did not restore what ran before the push:\n{}",
        before.diff(&after)
    );
    // push --rollback on a nested layout: the database first, then the tree holding it.
    expect_code(&f.push(&f.hosts(), &[]), 0);
    assert_eq!(
        std::fs::read(root.join("usr/pkg/bin/nginx")).unwrap(),
        b"nginx v3\n"
    );
    expect_code(&f.push(&f.hosts(), &["--rollback"]), 0);
    let after = packages();
    assert!(
        after == before,
        "push --rollback did not restore what ran before the push:\n{}",
        before.diff(&after)
    );
}

/// The next release of `release`: a program changed, a document added (`new`, incompressible),
/// a hard link dropped, and a library that is the old one's content under a new name.
fn next_release(j: &Tree, big: &[u8], new: &[u8]) {
    j.file("usr/pkg/bin/tool", b"#!/bin/sh\necho v3\n")
        .mtime("usr/pkg/bin/tool", 1_700_000_123, 456)
        .file("usr/pkg/share/doc/NEW", new)
        .remove("usr/pkg/share/doc/README.link")
        .file("usr/pkg/lib/libbig.so.3", big)
        .settle_dirs(1_700_000_000);
}

#[test]
fn a_dry_run_reports_what_each_host_would_do_and_writes_nothing_anywhere() {
    let Some(f) = Fleet::start(2) else { return };
    let big = random(256 << 10, 7);
    release(&f.jail, &big);
    let hosts = f.hosts();
    expect_code(&f.push(&hosts, &[]), 0);
    // The next release; h2's admin also left a file the push would remove.
    let new = random(300 << 10, 8);
    next_release(&f.jail, &big, &new);
    f.tree("h2").file("usr/pkg/bin/admin-tool", b"local\n");
    let seen = || {
        (
            listing(&f.root("h1")),
            listing(&f.root("h2")),
            listing(&f.remote_state()),
        )
    };
    let before = seen();

    let o = f.push(&hosts, &["--dry-run", "--json"]);
    expect_code(&o, 0);
    let after = seen();
    for (what, b, a) in [
        ("h1", &before.0, &after.0),
        ("h2", &before.1, &after.1),
        ("the hosts' state dir", &before.2, &after.2),
    ] {
        assert!(b == a, "a dry run changed {what}:\n{}", b.diff(a));
    }
    let s = summary(&o);
    assert_eq!(
        (s["planned"].as_u64(), s["switched"].as_u64()),
        (Some(2), Some(0)),
        "{s}"
    );
    let plan = |h: &str| host_line(&o, &f, h);
    let (p1, p2) = (plan("h1"), plan("h2"));
    assert_eq!(p1["result"], "dry run", "{p1}");
    assert_eq!(
        p2["removed"].as_u64(),
        Some(p1["removed"].as_u64().unwrap() + 1),
        "{p1}\n{p2}"
    );
    // The new document is lacked; the renamed library is found on the host.
    assert!(p1["blob_bytes"].as_u64().unwrap() >= 300 << 10, "{p1}");
    assert!(p1["found_on_host"].as_u64().unwrap() >= 1, "{p1}");
    // Nothing but the manifests went over the wire (the new document alone is 300 KiB of
    // incompressible bytes).
    for p in [&p1, &p2] {
        assert!(p["wire_bytes"].as_u64().unwrap() < 32 << 10, "{p}");
    }
    // The human report says the same.
    let o = f.push(&hosts, &["-n"]);
    expect_code(&o, 0);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: would add", f.host("h2"))) && err.contains("2 planned"),
        "{err}"
    );
    assert!(seen() == before, "a dry run changed a host");

    // The real push does exactly what the dry run said.
    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 0);
    for (h, p) in [("h1", &p1), ("h2", &p2)] {
        let d = host_line(&o, &f, h);
        let said: u64 = ["added", "changed", "metadata_only", "removed"]
            .iter()
            .map(|k| p[k].as_u64().unwrap())
            .sum();
        assert_eq!(d["changes"].as_u64(), Some(said), "{h}:\n{p}\n{d}");
        for k in ["blobs", "blob_bytes", "found_on_host", "files_needed"] {
            assert_eq!(d[k], p[k], "{h} {k}:\n{p}\n{d}");
        }
        same_as_jail(&f, h);
    }
}

#[test]
fn an_excluded_path_is_neither_sent_changed_nor_deleted_on_any_host() {
    let Some(f) = Fleet::start(2) else { return };
    release(&f.jail, &random(32 << 10, 9));
    f.jail
        .file("usr/pkg/share/index.cache", random(200 << 10, 10))
        .file("usr/pkg/var/run/jail.pid", b"1\n");
    // h1 has its own cache and run state; h2 has nothing.
    f.tree("h1")
        .file("usr/pkg/share/index.cache", b"h1's own\n")
        .file("usr/pkg/var/run/host.pid", b"42\n")
        .file("usr/pkg/var/db/state", b"host state\n");
    let jail_bytes: u64 = listing(&f.jail.root)
        .0
        .values()
        .filter(|r| r.kind == 'f')
        .filter_map(|r| r.size)
        .sum();
    let hosts = f.hosts();
    let o = f.push(
        &hosts,
        &["--json", "--exclude", "*.cache", "--exclude", "/var/"],
    );
    expect_code(&o, 0);
    let read = |h: &str, p: &str| std::fs::read(f.root(h).join(p)).ok();
    assert_eq!(
        read("h1", "usr/pkg/share/index.cache").unwrap(),
        b"h1's own\n"
    );
    assert_eq!(read("h1", "usr/pkg/var/run/host.pid").unwrap(), b"42\n");
    assert_eq!(read("h1", "usr/pkg/var/db/state").unwrap(), b"host state\n");
    assert!(read("h1", "usr/pkg/var/run/jail.pid").is_none());
    assert!(read("h2", "usr/pkg/share/index.cache").is_none());
    assert!(!f.root("h2/usr/pkg/var").exists());
    // Everything else is the jail's.
    for h in ["h1", "h2"] {
        assert_eq!(
            read(h, "usr/pkg/bin/tool"),
            std::fs::read(f.jail.path("usr/pkg/bin/tool")).ok()
        );
        assert_same(&f.jail.path("var/db/pkg"), &f.root(h).join("var/db/pkg"));
        // The cache's 200 KiB were never sent.
        let sent = host_line(&o, &f, h)["blob_bytes"].as_u64().unwrap();
        assert!(
            sent + (200 << 10) <= jail_bytes,
            "{h}: {sent} bytes sent of {jail_bytes}"
        );
    }
    // Pushed again without the excludes, the hosts become the jail.
    expect_code(&f.push(&hosts, &[]), 0);
    for h in ["h1", "h2"] {
        same_as_jail(&f, h);
    }
}

#[test]
fn a_host_that_stalls_fails_after_the_timeout_and_the_fleet_follows_the_rule() {
    let Some(f) = Fleet::start(2) else { return };
    release(&f.jail, &random(64 << 10, 11));
    for h in ["h1", "h2"] {
        old_release(&f.tree(h));
    }
    let before: Vec<_> = ["h1", "h2"].iter().map(|h| live(&f, h)).collect();
    // Host "slow" is 127.0.0.1 whose remote command sleeps before it starts serving.
    let wrap = f.script(
        "ssh-slow",
        &format!(
            "#!/bin/bash\nargs=(); slow=0\nfor a in \"$@\"; do\n  if [ \"$a\" = slow ]; then slow=1; args+=(127.0.0.1); else args+=(\"$a\"); fi\ndone\n\
             if [ $slow = 1 ]; then n=$((${{#args[@]}} - 1)); args[$n]=\"sleep 30; exec ${{args[$n]}}\"; fi\nexec {} \"${{args[@]}}\"\n",
            f.ssh()
        ),
    );
    let slow = format!("slow:{}", f.root("h2").display());
    let push = |extra: &[&str]| {
        let t0 = Instant::now();
        let o = f
            .push_to(&[f.host("h1"), slow.clone()])
            .ssh(&wrap)
            .args(&["--json", "--timeout", "2"])
            .args(extra)
            .run();
        // Given up after the timeout, not after the host's 30 s.
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        o
    };
    let o = push(&[]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("jailsync: {slow}: ")) && err.contains("no progress for 2 s"),
        "{err}"
    );
    let s = summary(&o);
    assert_eq!(
        (s["failed"].as_u64(), s["not_switched"].as_u64()),
        (Some(1), Some(1)),
        "{s}\n{err}"
    );
    assert!(live(&f, "h1") == before[0], "h1 switched without h2");
    assert!(live(&f, "h2") == before[1], "h2 changed");

    // One failure allowed: h1 switches; h2 is left as it was.
    let o = push(&["--max-failed", "1"]);
    expect_code(&o, 1);
    let s = summary(&o);
    assert_eq!(s["switched"], 1, "{s}");
    same_as_jail_tree(&f, "h1", "usr/pkg");
    assert!(live(&f, "h2") == before[1], "h2 changed");
}

#[test]
fn push_rollback_marks_the_hosts_record_so_rollback_root_goes_one_further_back() {
    let Some(f) = Fleet::start(1) else { return };
    let root = f.root("h1");
    f.tree("h1").file("usr/pkg/bin/tool", b"v0\n");
    let tool = || std::fs::read(root.join("usr/pkg/bin/tool")).unwrap();
    for n in [1, 2] {
        f.jail.file("usr/pkg/bin/tool", format!("v{n}\n"));
        expect_code(&f.push(&f.hosts(), &[]), 0);
        assert_eq!(tool(), format!("v{n}\n").as_bytes());
    }
    let history = || {
        let o = on_host(
            &f,
            &[
                "--json".as_ref(),
                "history".as_ref(),
                "--root".as_ref(),
                root.as_os_str(),
            ],
        );
        expect_code(&o, 0);
        json_lines(&o)
            .iter()
            .map(|u| u["status"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(history(), ["done", "done"]);

    // A dry run says what it would do and does nothing.
    let o = f.push(&f.hosts(), &["--rollback", "--dry-run"]);
    expect_code(&o, 0);
    assert!(stderr(&o).contains("would roll back"), "{}", stderr(&o));
    assert_eq!(tool(), b"v2\n");
    assert_eq!(history(), ["done", "done"]);

    expect_code(&f.push(&f.hosts(), &["--rollback"]), 0);
    assert_eq!(tool(), b"v1\n");
    // Newest first: the second push is rolled back, as `rollback --root` would have marked it.
    assert_eq!(history(), ["rolled back", "done"]);
    // So the host's own `rollback --root` undoes the first push, not the second again.
    let o = on_host(
        &f,
        &["rollback".as_ref(), "--root".as_ref(), root.as_os_str()],
    );
    expect_code(&o, 0);
    assert_eq!(tool(), b"v0\n");
    assert_eq!(history(), ["rolled back", "rolled back"]);
}

// ---- Keepalives mean progress (issue 19 item 21) ----
// A host's worker stuck in one system call (a read from a dead NFS server) leaves its
// keepalive thread running: `--timeout` must fail it on its work standing still, naming what
// it was doing, and never fail a host whose work moves, however slowly. The stuck and slow
// workers are real: `serve` runs under strace, which delays the `pread64`s of one live file.

/// An ssh that reaches host `traced` as 127.0.0.1 with its `serve` run under
/// `strace -e inject=pread64:delay_enter=DELAY` on the reads of `file` only (`-P`); strace's
/// pid goes to `traced.pid` in the temp dir.
fn ssh_traced(f: &Fleet, file: &Path, delay: &str) -> PathBuf {
    f.script(
        &format!("ssh-traced-{delay}"),
        &format!(
            "#!/bin/bash\nargs=(); traced=0\nfor a in \"$@\"; do\n  if [ \"$a\" = traced ]; then traced=1; args+=(127.0.0.1); else args+=(\"$a\"); fi\ndone\n\
             if [ $traced = 1 ]; then n=$((${{#args[@]}} - 1)); \
             args[$n]=\"echo \\$\\$ > {}; exec strace -f -qq -o /dev/null -P {} -e trace=pread64 -e inject=pread64:delay_enter={delay} ${{args[$n]}}\"; fi\n\
             exec {} \"${{args[@]}}\"\n",
            f.tmp.path().join("traced.pid").display(),
            file.display(),
            f.ssh()
        ),
    )
}

/// Ends the traced serve left delayed in its read (its tracer gone, it finds its connection
/// closed and exits).
fn kill_traced(f: &Fleet) {
    if let Ok(pid) = std::fs::read_to_string(f.tmp.path().join("traced.pid")) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
}

fn has_strace() -> bool {
    Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_host_whose_worker_is_stuck_in_one_read_fails_after_the_timeout_naming_its_phase() {
    let Some(f) = Fleet::start(2) else { return };
    require!(has_strace(), "needs strace");
    release(&f.jail, &random(64 << 10, 21));
    // h2 holds a library of the new one's size: looking for the content it lacks, it reads
    // it, and that read does not return for 30 s (a dead NFS server's would never).
    for h in ["h1", "h2"] {
        old_release(&f.tree(h));
    }
    f.tree("h2")
        .file("usr/pkg/lib/libbig.so.1", random(64 << 10, 22));
    let before: Vec<_> = ["h1", "h2"].iter().map(|h| live(&f, h)).collect();
    let wrap = ssh_traced(&f, &f.root("h2").join("usr/pkg/lib/libbig.so.1"), "30s");
    let stuck = format!("traced:{}", f.root("h2").display());
    let t0 = Instant::now();
    let o = f
        .push_to(&[f.host("h1"), stuck.clone()])
        .ssh(&wrap)
        .args(&["--json", "--timeout", "2"])
        .run();
    // Failed on its work standing still, not after the read's 30 s: its keepalive went on.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("jailsync: {stuck}: no progress for "))
            && err.contains("while looking among its live files")
            && err.contains("its work has not moved"),
        "{err}"
    );
    let s = summary(&o);
    assert_eq!(
        (s["failed"].as_u64(), s["not_switched"].as_u64()),
        (Some(1), Some(1)),
        "{s}\n{err}"
    );
    assert!(live(&f, "h1") == before[0], "h1 switched without h2");
    assert!(live(&f, "h2") == before[1], "h2 changed");
    kill_traced(&f);
}

#[test]
fn a_slow_host_whose_work_moves_is_never_failed_by_the_timeout() {
    let Some(f) = Fleet::start(1) else { return };
    require!(has_strace(), "needs strace");
    // Every read of a 3 MiB live file (12 reads of 256 KiB) waits 400 ms: hashing it takes
    // about 5 s, more than twice the timeout, and moves all along.
    release(&f.jail, &random(3 << 20, 23));
    old_release(&f.tree("h1"));
    f.tree("h1")
        .file("usr/pkg/lib/libbig.so.1", random(3 << 20, 24));
    let wrap = ssh_traced(&f, &f.root("h1").join("usr/pkg/lib/libbig.so.1"), "400ms");
    let t0 = Instant::now();
    let o = f
        .push_to(&[format!("traced:{}", f.root("h1").display())])
        .ssh(&wrap)
        .args(&["--timeout", "2"])
        .run();
    expect_code(&o, 0);
    assert!(t0.elapsed() > Duration::from_secs(4), "{:?}", t0.elapsed());
    same_as_jail(&f, "h1");
}

// ---- A forced command pins what serve may touch; DST's ancestors (issue 19 item 23) ----
// `serve --allow-root DIR...` in a key's forced command is what confines that key, as rsync's
// `rrsync`: any other tree, a rollback of one, or another state dir is refused before anything
// moves. And a destination is never reached through a symlink among its ancestors that
// someone other than root or the caller owns (sync, upgrade --root, push's roots alike).

/// Makes the fleet's key run only `command` (sshd ignores what push asks for).
fn force_command(f: &Fleet, command: &str) {
    let d = f.sshd.as_ref().expect("a fleet with an sshd").dir.path();
    let key = std::fs::read_to_string(d.join("client_key.pub")).unwrap();
    std::fs::write(
        d.join("authorized_keys"),
        format!("command=\"{command}\",restrict {key}"),
    )
    .unwrap();
}

#[test]
fn a_key_forced_to_serve_allowed_roots_writes_nowhere_else() {
    let Some(f) = Fleet::start(2) else { return };
    release(&f.jail, &random(32 << 10, 31));
    for h in ["h1", "h2"] {
        old_release(&f.tree(h));
    }
    let h1 = f.root("h1");
    let (pkg, db) = (h1.join("usr/pkg"), h1.join("var/db/pkg"));
    force_command(
        &f,
        &format!(
            "{BIN} --state-dir {} serve --allow-root {} --allow-root {}",
            f.remote_state().display(),
            pkg.display(),
            db.display()
        ),
    );
    let list = format!("--allow-root {}, {}", pkg.display(), db.display());
    // Its own trees: served as ever.
    expect_code(&f.push(&[f.host("h1")], &[]), 0);
    same_as_jail(&f, "h1");

    // Another root: refused naming it and the allow-list; nothing made there (not a home).
    let h2 = f.root("h2");
    let before = listing(&h2);
    f.jail.file("usr/pkg/bin/tool", b"v3\n");
    let o = f.push(&[f.host("h2")], &[]);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("root {}, tree usr/pkg", h2.display()))
            && err.contains(&list)
            && err.contains("refused before anything was read or written"),
        "{err}"
    );
    assert!(listing(&h2) == before, "h2 changed");
    // Nor rolled back.
    let o = f.push(&[f.host("h2")], &["--rollback"]);
    expect_code(&o, 1);
    assert!(stderr(&o).contains(&list), "{}", stderr(&o));

    // Its own root with a state dir of the pusher's choosing: refused, nothing written there.
    let other = f.tmp.path().join("state-other");
    let mut c = Command::new(BIN);
    c.env_remove("JAILSYNC_STATE_DIR")
        .arg("--state-dir")
        .arg(f.local_state())
        .args(["push".as_ref(), f.jail.root.as_os_str()])
        .arg(f.host("h1"))
        .args(["--ssh", &f.ssh(), "--remote-bin", BIN, "--remote-state-dir"])
        .arg(&other);
    let o = run_within(&mut c);
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&format!("state dir {}", other.display())) && err.contains(&list),
        "{err}"
    );
    assert!(!other.exists(), "the state dir asked for was made");
    assert_eq!(
        std::fs::read(pkg.join("bin/tool")).unwrap(),
        b"#!/bin/sh\necho new\n"
    );

    // A rollback of its own root: allowed.
    expect_code(&f.push(&[f.host("h1")], &["--rollback"]), 0);
    assert_eq!(std::fs::read(pkg.join("bin/tool")).unwrap(), b"old\n");
}

#[test]
fn a_destination_reached_through_another_users_symlink_is_refused_everywhere() {
    let Some(f) = Fleet::start(0) else { return };
    release(&f.jail, &random(16 << 10, 32));
    // `theirs` (uid 1234's) leads to the directory holding a real root: the root is named
    // `theirs/h`, its last name a directory, the link one of its ancestors.
    let real = f.tree("realp/h");
    old_release(&real);
    let before = listing(&real.root);
    let theirs = f.root("theirs");
    std::os::unix::fs::symlink("realp", &theirs).unwrap();
    std::os::unix::fs::lchown(&theirs, Some(1234), Some(1234)).unwrap();
    let says = format!("symlink {} owned by uid 1234", theirs.display());
    let jail = f.jail.root.clone();
    let root = theirs.join("h");

    let sync = on_host(
        &f,
        &[
            "sync".as_ref(),
            jail.join("usr/pkg").as_os_str(),
            root.join("usr/pkg").as_os_str(),
        ],
    );
    let upgrade = on_host(
        &f,
        &[
            "upgrade".as_ref(),
            jail.as_os_str(),
            "--root".as_ref(),
            root.as_os_str(),
        ],
    );
    let push = f.push(&[format!("127.0.0.1:{}", root.display())], &[]);
    for (what, o, code) in [
        ("sync", sync, 2),
        ("upgrade", upgrade, 2),
        ("push", push, 1),
    ] {
        expect_code(&o, code);
        assert!(stderr(&o).contains(&says), "{what}: {}", stderr(&o));
        assert!(
            listing(&real.root) == before,
            "{what} wrote through the link"
        );
    }

    // The same link, root's: followed, as the user's own way to the tree.
    std::os::unix::fs::lchown(&theirs, Some(0), Some(0)).unwrap();
    expect_code(&f.push(&[format!("127.0.0.1:{}", root.display())], &[]), 0);
    same_as_jail(&f, "realp/h");
}

mod delta;
mod many;
mod sigs;

/// A host whose admin switched a tree to a symlink (`sync --switch link` on the host) keeps
/// it: a push stages the next release in that tree's home and switches it by one rename of
/// the link; `push --rollback` renames it back.
#[test]
fn a_hosts_tree_switched_by_symlink_stays_so_through_push_and_its_rollback() {
    let Some(f) = Fleet::start(1) else { return };
    f.jail.file("usr/pkg/bin/tool", b"v1\n");
    f.jail.file("var/db/pkg/t-1/+CONTENTS", b"t-1\n");
    expect_code(&f.push(&f.hosts(), &["-q"]), 0);
    let pkg = f.root("h1").join("usr/pkg");
    // The host's admin converts the tree (same content: only the kind changes).
    let o = on_host(
        &f,
        &[
            "sync".as_ref(),
            "--switch".as_ref(),
            "link".as_ref(),
            f.jail.path("usr/pkg").as_os_str(),
            pkg.as_os_str(),
        ],
    );
    expect_code(&o, 0);
    let first = std::fs::read_link(&pkg).expect("usr/pkg is a link");
    f.jail.file("usr/pkg/bin/tool", b"v2\n");
    expect_code(&f.push(&f.hosts(), &["-q"]), 0);
    let second = std::fs::read_link(&pkg).expect("usr/pkg is still a link");
    assert_ne!(first, second, "the link was not switched");
    assert_eq!(std::fs::read(pkg.join("bin/tool")).unwrap(), b"v2\n");
    same_as_jail(&f, "h1");
    expect_code(&f.push(&f.hosts(), &["-q", "--rollback"]), 0);
    assert_eq!(std::fs::read_link(&pkg).unwrap(), first);
    assert_eq!(std::fs::read(pkg.join("bin/tool")).unwrap(), b"v1\n");
}

/// `push` takes rsync's filter rules as `sync` does (`--include`, `--filter`, `--exclude-from`,
/// the first matching rule deciding): what they exclude is neither sent nor changed on a host.
#[test]
fn push_takes_rsync_filter_rules() {
    let Some(f) = Fleet::start(1) else { return };
    f.jail
        .file("usr/pkg/bin/tool", b"v1\n")
        .file("usr/pkg/var/keep.log", b"from the jail\n")
        .file("usr/pkg/var/noise.log", b"jail noise\n")
        .file("var/db/pkg/t-1/+CONTENTS", b"t-1\n");
    f.tree("h1")
        .file("usr/pkg/var/noise.log", b"the host's own\n");
    let rules = f.script("rules", "- *.tmp\n");
    let o = f.push(
        &f.hosts(),
        &[
            "-q",
            "--include",
            "keep.log",
            "--filter",
            "- *.log",
            "--exclude-from",
            rules.to_str().unwrap(),
        ],
    );
    expect_code(&o, 0);
    let host = f.root("h1");
    assert_eq!(
        std::fs::read(host.join("usr/pkg/bin/tool")).unwrap(),
        b"v1\n"
    );
    assert_eq!(
        std::fs::read(host.join("usr/pkg/var/keep.log")).unwrap(),
        b"from the jail\n",
        "an included file was not sent"
    );
    assert_eq!(
        std::fs::read(host.join("usr/pkg/var/noise.log")).unwrap(),
        b"the host's own\n",
        "an excluded file was changed"
    );
}
