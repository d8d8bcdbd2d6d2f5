//! `jailsync jail …` against real bind mounts.
//!
//! Every scenario runs the real binary inside `unshare --mount --propagation private`, a
//! fresh mount namespace whose mounts never reach the host and vanish with its last
//! process. One shell script per scenario runs several `jailsync` calls in that namespace
//! and prints `key=value` lines, which the test then checks. Needs root (CI runs as root);
//! elsewhere each test prints why it skipped.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const JS: &str = env!("CARGO_BIN_EXE_jailsync");

/// A host tree (`$H`) to mount from, and a jail path (`$J`), in a temp dir (`$T`).
struct Env {
    _tmp: tempfile::TempDir,
    t: PathBuf,
    h: PathBuf,
    j: PathBuf,
}

/// The outcome of one namespace script.
struct Run {
    out: String,
    err: String,
    code: i32,
    vars: HashMap<String, String>,
}

impl Run {
    fn get(&self, key: &str) -> &str {
        match self.vars.get(key) {
            Some(v) => v,
            None => panic!("no `{key}=` in the output\n{self}"),
        }
    }

    /// JSON objects printed between `begin` and `end` marker lines.
    fn json(&self, begin: &str) -> Vec<Value> {
        self.out
            .lines()
            .skip_while(|l| *l != begin)
            .skip(1)
            .take_while(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--- exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.out, self.err
        )
    }
}

fn skip(why: &str) -> Option<Env> {
    eprintln!("skipping: {why}");
    None
}

/// Builds the fixture, or says why this machine cannot run the test.
fn env() -> Option<Env> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("bind mounts need root");
    }
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        return skip("`unshare --mount` is unavailable here");
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().canonicalize().unwrap();
    let h = t.join("host");
    for d in ["usr/bin", "usr/lib", "data", "etc", "other"] {
        fs::create_dir_all(h.join(d)).unwrap();
    }
    fs::write(h.join("usr/bin/tool"), "hello\n").unwrap();
    fs::write(h.join("usr/lib/libx.so"), "lib\n").unwrap();
    fs::write(h.join("data/keep"), "data\n").unwrap();
    fs::write(h.join("etc/conf.txt"), "conf\n").unwrap();
    fs::write(h.join("other/imposter"), "other\n").unwrap();
    symlink("usr/bin", h.join("bin")).unwrap();
    fs::write(
        t.join("mountpoints"),
        "# test jail\nbin\nusr/bin\nusr/lib\n\ndata rw\netc/conf.txt\nmissing/dir\n",
    )
    .unwrap();
    let j = t.join("jail");
    Some(Env { _tmp: tmp, t, h, j })
}

impl Env {
    /// Runs `script` with `sh` in a private mount namespace. The script sees `$JS` (the
    /// binary), `$T`, `$H`, `$J`, and shell functions `count` (mounts under the jail) and
    /// `init` (a jail over `$H` with the fixture's mountpoints).
    fn ns(&self, script: &str) -> Run {
        let prelude = r#"
count() { grep -c " $J/" /proc/self/mountinfo; }
init() { "$JS" jail init "$J" --host-root "$H" --mountpoints "$T/mountpoints" "$@"; }
mnt() { "$JS" jail mount "$J" --host-root "$H" "$@"; }
"#;
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{prelude}\n{script}"))
            .env("JS", JS)
            .env("T", &self.t)
            .env("H", &self.h)
            .env("J", &self.j)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let vars = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Run {
            out: stdout,
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code().unwrap_or(-1),
            vars,
        }
    }
}

fn by_path<'a>(objs: &'a [Value], path: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["path"] == path)
        .unwrap_or_else(|| panic!("no {path} in {objs:?}"))
}

#[test]
fn mount_is_idempotent_readonly_and_recreates_symlinks() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null; echo init=$?
mnt >/dev/null 2>"$T/mount.err"; echo mount1=$?
echo count1=$(count)
mnt >/dev/null 2>&1; echo mount2=$?
echo count2=$(count)
echo tool=$(cat "$J/usr/bin/tool")
mount --bind "$H/usr/bin" "$J/usr/bin"
echo stacked=$("$JS" --json jail status "$J" --host-root "$H" | grep '"path":"usr/bin"' | grep -o '"stacked":[0-9]*' | cut -d: -f2)
umount "$J/usr/bin"
echo link=$(readlink "$J/bin")
touch "$J/usr/bin/new" 2>"$T/ro.err"; echo ro_write=$?
echo ro_err=$(cat "$T/ro.err")
echo more >> "$J/etc/conf.txt" 2>/dev/null; echo ro_file_write=$?
echo rw > "$J/data/new"; echo rw_write=$?
touch "$J/var/ok"; echo jail_fs_write=$?
echo rw_on_host=$(cat "$H/data/new")
echo skipped=$(grep -c "missing/dir.*skipped" "$T/mount.err")
"#);
    assert_eq!(r.get("init"), "0", "{r}");
    assert_eq!(r.get("mount1"), "0", "{r}");
    // usr/bin, usr/lib, data, etc/conf.txt; bin is a symlink and missing/dir is skipped.
    assert_eq!(r.get("count1"), "4", "{r}");
    assert_eq!(r.get("mount2"), "0", "{r}");
    assert_eq!(
        r.get("count2"),
        "4",
        "mounting twice must not stack mounts\n{r}"
    );
    assert_eq!(
        r.get("stacked"),
        "1",
        "a second mount on top is reported\n{r}"
    );
    assert_eq!(r.get("tool"), "hello");
    assert_eq!(r.get("link"), "usr/bin");
    assert_ne!(r.get("ro_write"), "0", "{r}");
    assert!(r.get("ro_err").contains("Read-only file system"), "{r}");
    assert_ne!(
        r.get("ro_file_write"),
        "0",
        "a file mount is read-only too\n{r}"
    );
    assert_eq!(r.get("rw_write"), "0", "{r}");
    assert_eq!(r.get("rw_on_host"), "rw");
    assert_eq!(
        r.get("jail_fs_write"),
        "0",
        "only the mounts are read-only\n{r}"
    );
    assert_eq!(r.get("skipped"), "1", "missing host path is reported\n{r}");
}

#[test]
fn rw_line_remounts_an_existing_ro_mount() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null
mnt >/dev/null 2>&1
sed -i 's/^usr\/lib$/usr\/lib rw/' "$J/mountpoints"
mnt >/dev/null 2>&1; echo mount=$?
echo count=$(count)
touch "$J/usr/lib/made"; echo rw_write=$?
"#);
    assert_eq!(r.get("mount"), "0", "{r}");
    assert_eq!(r.get("count"), "4", "{r}");
    assert_eq!(r.get("rw_write"), "0", "{r}");
    assert!(e.h.join("usr/lib/made").exists());
}

#[test]
fn status_json_mounted_unlisted_and_stale() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null
echo before
"$JS" --json jail status "$J" --host-root "$H"; echo before_rc=$?
mount --bind "$H/usr/lib" "$J/usr/lib"
mnt >/dev/null 2>&1
mount -t tmpfs tmpfs "$J/tmp"
echo mounted
"$JS" --json jail status "$J" --host-root "$H"; echo mounted_rc=$?
rm -rf "$H/data"
echo stale
"$JS" --json jail status "$J" --host-root "$H"; echo stale_rc=$?
"#);
    let before = r.json("before");
    assert_eq!(by_path(&before, "usr/bin")["state"], "not-mounted", "{r}");
    assert_eq!(by_path(&before, "bin")["state"], "not-linked");
    assert_eq!(r.get("before_rc"), "1", "incomplete jail exits 1\n{r}");

    let m = r.json("mounted");
    let bin = by_path(&m, "usr/bin");
    assert_eq!(bin["state"], "mounted", "{r}");
    assert_eq!(bin["mode"], "ro");
    assert_eq!(bin["host"], e.h.join("usr/bin").to_str().unwrap());
    let data = by_path(&m, "data");
    assert_eq!(
        (&data["state"], &data["mode"]),
        (&"mounted".into(), &"rw".into())
    );
    assert_eq!(by_path(&m, "bin")["state"], "linked");
    assert_eq!(by_path(&m, "etc/conf.txt")["state"], "mounted");
    // Mounted once by hand (rw), then jailsync left it alone but made it read-only.
    let lib = by_path(&m, "usr/lib");
    assert_eq!(
        (&lib["state"], &lib["mode"]),
        (&"mounted".into(), &"ro".into()),
        "{r}"
    );
    assert_eq!(lib["stacked"], Value::Null, "{r}");
    assert_eq!(by_path(&m, "missing/dir")["state"], "host-missing");
    let unlisted: Vec<_> = m.iter().filter(|o| o["type"] == "unlisted").collect();
    assert_eq!(unlisted.len(), 1, "{r}");
    assert_eq!(unlisted[0]["target"], e.j.join("tmp").to_str().unwrap());
    let summary = m.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["complete"], true, "{r}");
    assert_eq!(r.get("mounted_rc"), "0", "{r}");

    let s = r.json("stale");
    assert_eq!(by_path(&s, "data")["state"], "stale", "{r}");
    assert_eq!(by_path(&s, "usr/bin")["state"], "mounted");
    assert_eq!(r.get("stale_rc"), "1", "{r}");
}

#[test]
fn foreign_mount_is_reported_and_refused() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null
mkdir -p "$J/usr/lib"
mount --bind "$H/other" "$J/usr/lib"
echo status
"$JS" --json jail status "$J" --host-root "$H"
mnt >/dev/null 2>"$T/err"; echo mount=$?
echo err=$(cat "$T/err")
echo count=$(count)
test -e "$J/usr/bin" || echo untouched=yes
"#);
    let s = r.json("status");
    let lib = by_path(&s, "usr/lib");
    assert_eq!(lib["state"], "foreign", "{r}");
    assert_eq!(lib["source"], e.h.join("other").to_str().unwrap(), "{r}");
    assert_eq!(r.get("mount"), "2", "{r}");
    let err = r.get("err");
    assert!(err.contains(e.h.join("other").to_str().unwrap()), "{err}");
    assert!(err.contains(e.h.join("usr/lib").to_str().unwrap()), "{err}");
    assert!(err.contains("mountpoints:4:"), "names the line: {err}");
    // Refused before anything changed: only the foreign mount is there.
    assert_eq!(r.get("count"), "1", "{r}");
    assert_eq!(r.get("untouched"), "yes", "{r}");
}

#[test]
fn umount_removes_everything_twice_is_fine_and_keeps_files() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null
mnt >/dev/null 2>&1
mount -t tmpfs tmpfs "$J/tmp"
mkdir -p "$J/tmp/deeper" && mount -t tmpfs tmpfs "$J/tmp/deeper"
echo count_before=$(count)
"$JS" jail umount "$J" >/dev/null; echo umount1=$?
echo count_after=$(count)
"$JS" jail umount "$J"; echo umount2=$?
test -f "$H/usr/bin/tool" && test -f "$H/data/keep" && echo host_ok=yes
test -f "$J/.jail" && test -f "$J/mountpoints" && test -L "$J/bin" && echo jail_ok=yes
"#);
    assert_eq!(r.get("count_before"), "6", "{r}");
    assert_eq!(r.get("umount1"), "0", "{r}");
    assert_eq!(r.get("count_after"), "0", "{r}");
    assert_eq!(r.get("umount2"), "0", "{r}");
    assert_eq!(r.get("host_ok"), "yes", "{r}");
    assert_eq!(r.get("jail_ok"), "yes", "{r}");
}

#[test]
fn umount_busy_fails_then_force_detaches() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null
mnt >/dev/null 2>&1
(cd "$J/data" && exec sleep 30) &
holder=$!
# Wait until the holder really sits in the mount (a slow machine may take a while).
i=0
while [ "$(readlink /proc/$holder/cwd)" != "$J/data" ] && [ $i -lt 200 ]; do
    sleep 0.05; i=$((i+1))
done
"$JS" jail umount "$J" >/dev/null 2>"$T/err"; echo plain=$?
echo err=$(cat "$T/err")
echo left=$(count)
"$JS" jail umount --force "$J" >/dev/null; echo forced=$?
echo after=$(count)
kill $holder
"#);
    assert_eq!(r.get("plain"), "1", "{r}");
    assert!(r.get("err").contains("busy"), "{r}");
    assert_eq!(r.get("left"), "1", "only the busy mount stays\n{r}");
    assert_eq!(r.get("forced"), "0", "{r}");
    assert_eq!(r.get("after"), "0", "{r}");
}

#[test]
fn enter_runs_a_command_over_the_real_host() {
    let Some(e) = env() else { return };
    // The default seed list over the real `/`: the jail's /usr/bin is the host's.
    let r = e.ns(r#"
"$JS" jail init "$J" --marker TESTJAIL >/dev/null; echo init=$?
PS1='$ ' "$JS" jail enter "$J" -- /bin/sh -c '
    echo marker=$(cat /.jail)
    echo ps1="$PS1"
    echo jail="$JAIL"
    test -f /mountpoints && echo inside=yes
    echo x > /dev/null && echo devnull=yes
    exit 7'
echo enter=$?
echo count=$(count)
echo 'exit 3' | "$JS" jail enter "$J"; echo shell=$?
"$JS" jail enter "$J" -- /no/such/program 2>/dev/null; echo missing=$?
"#);
    assert_eq!(r.get("init"), "0", "{r}");
    assert_eq!(r.get("marker"), "TESTJAIL", "{r}");
    assert_eq!(r.get("ps1"), "TESTJAIL::$ ", "{r}");
    assert_eq!(r.get("jail"), e.j.to_str().unwrap());
    assert_eq!(r.get("inside"), "yes");
    assert_eq!(r.get("devnull"), "yes", "{r}");
    assert_eq!(r.get("enter"), "7", "exit status passed through\n{r}");
    assert_ne!(r.get("count"), "0", "enter mounted the jail\n{r}");
    assert_eq!(r.get("shell"), "3", "{r}");
    assert_eq!(r.get("missing"), "2", "{r}");
}

/// Each bad input: exit 2, a message naming the file line (or path), and nothing mounted.
#[test]
fn bad_input_is_refused_with_exit_2() {
    let Some(e) = env() else { return };
    let cases: &[(&str, &str, &str)] = &[
        // (mountpoints text, setup commands, expected message part)
        ("usr/bin\nusr/../../etc\n", "", "mountpoints:2: "),
        ("usr/bin\n/etc\n", "", "mountpoints:2: "),
        ("usr/bin rx\n", "", "mountpoints:1: "),
        ("usr/bin ro extra\n", "", "mountpoints:1: "),
        (
            "usr/bin\nusr/evil/x\n",
            "ln -s /etc \"$J/usr/evil\"",
            "mountpoints:2: usr/evil/x: symlink",
        ),
        (
            "usr/bin\nusr/up/etc\n",
            "ln -s ../.. \"$J/usr/up\"",
            "points out of the jail",
        ),
        (
            "usr/bin\nalias/tool\nusr/bin/tool\n",
            "ln -sfn usr/bin \"$H/alias\"; ln -s usr/bin \"$J/alias\"",
            "the same place as line 2",
        ),
        // Host root inside the jail: the host path is the jail's own directory.
        ("usr\n", "H=\"$J\"", "is inside the jail"),
    ];
    for (text, setup, needle) in cases {
        fs::write(e.t.join("bad"), text).unwrap();
        let r = e.ns(&format!(
            r#"
init >/dev/null || echo init_failed
cp "$T/bad" "$J/mountpoints"
{setup}
mnt >/dev/null 2>"$T/err"; echo rc=$?
echo err=$(cat "$T/err")
echo count=$(count)
test -e "$J/usr/bin" || echo untouched=yes
rm -rf "$J"
"#
        ));
        assert_eq!(r.get("rc"), "2", "{text:?}\n{r}");
        assert!(
            r.get("err").contains(needle),
            "{text:?}: want {needle:?}\n{r}"
        );
        assert_eq!(r.get("count"), "0", "{text:?}\n{r}");
        assert_eq!(r.get("untouched"), "yes", "{text:?}\n{r}");
    }
}

#[test]
fn jail_root_and_existing_files_are_refused() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
"$JS" jail mount / 2>"$T/e1"; echo mount_root=$?
echo e1=$(cat "$T/e1")
"$JS" jail init / 2>/dev/null; echo init_root=$?
"$JS" jail umount / 2>/dev/null; echo umount_root=$?
init >/dev/null; echo init1=$?
echo custom > "$J/.jail"
init 2>"$T/e2"; echo init2=$?
echo e2=$(cat "$T/e2")
echo kept=$(cat "$J/.jail")
init --force >/dev/null; echo forced=$?
echo now=$(cat "$J/.jail")
"$JS" jail init "$T/j2" --mountpoints "$T/bad-missing" 2>/dev/null; echo no_file=$?
test -e "$T/j2" || echo j2_untouched=yes
"#);
    assert_eq!(r.get("mount_root"), "2", "{r}");
    assert!(r.get("e1").contains("refusing to use / as a jail"), "{r}");
    assert_eq!(r.get("init_root"), "2", "{r}");
    assert_eq!(r.get("umount_root"), "2", "{r}");
    assert_eq!(r.get("init1"), "0", "{r}");
    assert_eq!(r.get("init2"), "2", "{r}");
    assert!(r.get("e2").contains(".jail: already exists"), "{r}");
    assert_eq!(r.get("kept"), "custom");
    assert_eq!(r.get("forced"), "0");
    assert_eq!(r.get("now"), "PKG-JAIL");
    assert_eq!(r.get("no_file"), "2");
    assert_eq!(r.get("j2_untouched"), "yes");
}

#[test]
fn init_default_mountpoints_keep_host_paths_only() {
    let Some(e) = env() else { return };
    // No mounts here, but run in the namespace anyway for one code path.
    let r = e.ns(r#"
"$JS" jail init "$J" --host-root "$H" >/dev/null; echo init=$?
for d in tmp usr var usr/obj usr/pkg usr/tmp; do test -d "$J/$d" || echo nodir=$d; done
echo tmpmode=$(stat -c %a "$J/tmp")
"#);
    assert_eq!(r.get("init"), "0", "{r}");
    assert!(!r.vars.contains_key("nodir"), "{r}");
    assert_eq!(r.get("tmpmode"), "1777");
    let mp = fs::read_to_string(e.j.join("mountpoints")).unwrap();
    let lines: Vec<&str> = mp.lines().filter(|l| !l.starts_with('#')).collect();
    // The fixture host has bin, etc, usr/bin, usr/lib of the seed list.
    assert_eq!(lines, ["bin", "etc", "usr/bin", "usr/lib"], "{mp}");
    assert_eq!(fs::read_to_string(e.j.join(".jail")).unwrap(), "PKG-JAIL\n");
}

#[test]
fn seed_names_mount_and_unmount() {
    let Some(e) = env() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/seed-links");
    let r = e.ns(&format!(
        r#"
mkdir "$T/bin"
JAILSYNC="$JS" sh "{}" "$T/bin" >/dev/null; echo links=$?
init >/dev/null
cd "$H"
JAIL="$J" "$T/bin/mkjail" --host-root "$H" >/dev/null 2>&1; echo mk=$?
echo count=$(count)
JAIL="$J" "$T/bin/umkjail" >/dev/null; echo umk=$?
echo after=$(count)
"#,
        script.display()
    ));
    assert_eq!(r.get("links"), "0", "{r}");
    assert_eq!(r.get("mk"), "0", "{r}");
    assert_eq!(r.get("count"), "4", "{r}");
    assert_eq!(r.get("umk"), "0", "{r}");
    assert_eq!(r.get("after"), "0", "{r}");
}

#[test]
fn mount_point_is_never_created_inside_another_mount() {
    let Some(e) = env() else { return };
    fs::create_dir_all(e.h.join("opt/thing")).unwrap();
    let r = e.ns(r#"
init >/dev/null
echo "opt/thing" >> "$J/mountpoints"
mkdir "$J/opt" && mount --bind "$H/other" "$J/opt"
"$JS" --json jail mount "$J" --host-root "$H" >"$T/out" 2>"$T/err"; echo mount=$?
echo failed=$(grep -c '"action":"failed"' "$T/out")
echo why=$(grep -o 'would be created inside the mount at [^,"]*' "$T/out")
test -e "$H/other/thing" || echo host_untouched=yes
echo count=$(count)
"#);
    assert_eq!(
        r.get("mount"),
        "1",
        "the other lines are mounted, this one fails\n{r}"
    );
    assert_eq!(r.get("failed"), "1", "{r}");
    assert!(r.get("why").ends_with("/jail/opt"), "{r}");
    assert_eq!(r.get("host_untouched"), "yes", "{r}");
    assert_eq!(r.get("count"), "5", "4 lines + the bind at opt\n{r}");
}

#[test]
fn remove_is_refused_while_mounted_and_never_touches_the_host() {
    let Some(e) = env() else { return };
    let r = e.ns(r#"
init >/dev/null && mnt >/dev/null
"$JS" jail remove "$J"; echo busy_code=$?
test -f "$H/usr/bin/tool" && echo host_intact=yes
test -d "$J" && echo jail_kept=yes
"$JS" jail umount "$J" >/dev/null
"$JS" jail remove "$J"; echo code=$?
test -e "$J" || echo jail_gone=yes
test -f "$H/usr/bin/tool" && test -f "$H/data/keep" && echo host_after=yes
mkdir "$T/plain"; "$JS" jail remove "$T/plain"; echo plain_code=$?
"#);
    assert_eq!(r.get("busy_code"), "2", "{r}");
    assert!(r.err.contains("live mounts"), "{r}");
    assert_eq!(r.get("host_intact"), "yes", "{r}");
    assert_eq!(r.get("jail_kept"), "yes", "{r}");
    assert_eq!(r.get("code"), "0", "{r}");
    assert_eq!(r.get("jail_gone"), "yes", "{r}");
    assert_eq!(r.get("host_after"), "yes", "{r}");
    assert_eq!(r.get("plain_code"), "2", "not a jail: refused\n{r}");
}
