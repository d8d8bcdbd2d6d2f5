//! Issue 20 item 2: a sync onto `/` itself. A small root on a tmpfs, with what a live root has
//! mounted below it (proc, sysfs, a tmpfs at `run`, a tmpfs at `dev` holding another at
//! `dev/shm`, a host directory bound at `mnt/data`), the jail and the state dir mounted in it
//! too; the binary runs chrooted there: `chroot R /jailsync --state-dir /st sync /mnt/jail/ /`.
//! Mount points are bounds: never scanned, written, moved or deleted, so the jail and the state
//! dir may sit behind them.

use std::process::Command;

use crate::common::*;

const JS: &str = env!("CARGO_BIN_EXE_jailsync");

/// Builds the root `R` (a tmpfs) and the jail `J` (a modified copy, on a tmpfs of its own),
/// mounts what a live root has below it, then runs `$CHECKS` with `js` running the binary
/// chrooted in `R`. Every line `key=value` it prints is read back.
const SETUP: &str = r#"
set -u
R=$T/root; J=$T/jail; H=$T/host; ST=$T/st; B=$T/before
mkdir -p "$R" "$J" "$H" "$ST" "$B"
mount -t tmpfs -o mode=755 root "$R" && mount -t tmpfs -o mode=755 jail "$J" || exit 90
cd "$R" || exit 91
mkdir -p bin etc usr/bin usr/lib var/lib/app var/log mnt/data mnt/jail proc sys dev run st tmp opt
chmod 1777 tmp
echo old-tool > usr/bin/tool && chmod 755 usr/bin/tool
echo lib1 > usr/lib/libx.so.1
echo gone > usr/lib/libold.so
echo host1 > etc/hostname
echo "root:x:0:0::/root:/bin/sh" > etc/passwd
echo data > var/lib/app/db && ln var/lib/app/db var/lib/app/db.link
ln -s usr/bin sbin
echo log > var/log/old.log
touch -d '2020-01-02 03:04:05.123456789' usr/lib etc var/log .
# The binary and the libraries it loads, so it runs inside.
cp "$JS" jailsync || exit 92
for l in $(ldd "$JS" | grep -o '/[^ ]*'); do mkdir -p ".$(dirname "$l")" && cp -L "$l" ".$l" || exit 93; done
cp -a "$R/." "$J/" && cp -a "$R/." "$B/" || exit 94
# The release: a changed program, a new library, one gone, new and removed directories,
# a mode change, a spine (mnt) and a bound's parent with new metadata.
cd "$J" || exit 95
echo new-tool > usr/bin/tool
echo lib2 > usr/lib/libx.so.2
rm usr/lib/libold.so var/log/old.log
echo host2 > etc/hostname
chmod 600 etc/passwd
mkdir -p opt/new && echo n > opt/new/f
chmod 711 dev mnt
rmdir st
cd / || exit 96
echo "the host's own file" > "$H/keep"
mount -t tmpfs st "$ST"
mount -t proc proc "$R/proc" && mount -t sysfs sysfs "$R/sys" || exit 97
mount -t tmpfs -o mode=755 run "$R/run" && echo pid > "$R/run/pid"
mount -t tmpfs -o mode=755 dev "$R/dev" && mkdir "$R/dev/shm" && mount -t tmpfs shm "$R/dev/shm"
echo seg > "$R/dev/shm/seg"
touch -d @1609459200 "$R/dev"
mount --bind "$H" "$R/mnt/data" && mount --bind "$J" "$R/mnt/jail" && mount --bind "$ST" "$R/st" || exit 98
js() { chroot "$R" /jailsync --state-dir /st "$@"; }
# The tree outside the mount points (and the home) compared with `$1`: empty when the same.
same_as() {
    rsync -aHAXc --numeric-ids --delete -n -i --exclude=/.jailsync-gens \
        --exclude=/proc --exclude=/sys --exclude=/run --exclude=/dev --exclude=/st \
        --exclude=/mnt/data --exclude=/mnt/jail "$1/" "$R/" | tr '\n' ' '
}
mounts_intact() {
    n=0
    for m in proc sys run dev dev/shm mnt/data mnt/jail st; do mountpoint -q "$R/$m" && n=$((n+1)); done
    echo "$n/8 $(cat "$H/keep") $(cat "$R/mnt/data/keep") $(cat "$R/run/pid") $(cat "$R/dev/shm/seg") $(stat -c '%a %Y' "$R/dev") $(test -e "$R/proc/self/stat" && echo proc) $(test -e "$R/sys/kernel" && echo sys) $(cat "$J/usr/bin/tool") $(ls "$H" | tr '\n' ,)"
}
"#;

const INTACT: &str =
    "8/8 the host's own file the host's own file pid seg 755 1609459200 proc sys new-tool keep,";

fn run(checks: &str) -> Option<std::collections::BTreeMap<String, String>> {
    if !is_root() {
        eprintln!("skipped: chroot and mounts need root");
        return None;
    }
    for prog in ["unshare", "chroot", "ldd", "rsync", "mountpoint"] {
        if !have(prog) {
            eprintln!("skipped: {prog} is not installed");
            return None;
        }
    }
    let ok = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: `unshare --mount` is unavailable here");
        return None;
    }
    let tmp = tempfile::Builder::new()
        .prefix("jailsync-root-")
        .tempdir()
        .unwrap();
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(format!("{SETUP}\n{checks}"))
        .env("JS", JS)
        .env("T", tmp.path())
        .env_remove("JAILSYNC_SWITCH")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let mut vars: std::collections::BTreeMap<String, String> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert(
        "_all".into(),
        format!(
            "--- exit {:?}\n--- stdout\n{out}--- stderr\n{err}",
            o.status.code()
        ),
    );
    assert_eq!(o.status.code(), Some(0), "{}", vars["_all"]);
    Some(vars)
}

/// Syncs onto `/` and rolls back: the live root becomes the jail outside its mount points,
/// by subtrees around them (each mount still mounted, its files untouched, `dev`'s own
/// metadata untouched though `dev/shm` is mounted inside it); `history` lists the generation;
/// `rollback /` makes the old root again, exactly. Before the fix the source and the state dir
/// behind mount points of `/` were refused as inside the destination.
#[test]
fn a_sync_onto_the_root_goes_around_its_mounts_and_rolls_back_exactly() {
    let Some(v) = run(r#"
js sync --json /mnt/jail/ / >"$T/out" 2>"$T/err"; echo sync=$?
echo method=$(grep -o '"type":"switch"' "$T/out" >/dev/null && grep -o '"method":"[a-z-]*"' "$T/out")
echo calls=$(grep -o '"calls":[0-9]*' "$T/out" | cut -d: -f2)
echo err=$(tr '\n' ' ' <"$T/err")
echo diff_jail=$(same_as "$J")
echo tool=$(cat "$R/usr/bin/tool")
echo mounts_after_sync=$(mounts_intact)
js history / >"$T/hist" 2>&1; echo history=$?
grep -q 'gen-1' "$T/hist" && echo listed=yes
echo hist=$(tr '\n' ' ' <"$T/hist")
js rollback / >"$T/rb" 2>&1; echo rollback=$?
echo rb=$(tr '\n' ' ' <"$T/rb")
echo diff_before=$(same_as "$B")
echo tool_back=$(cat "$R/usr/bin/tool")
echo mounts_after_rollback=$(mounts_intact)
"#)
    else {
        return;
    };
    let all = &v["_all"];
    assert_eq!(v["sync"], "0", "{all}");
    assert_eq!(v["method"], r#""method":"entries""#, "{all}");
    // One call per top-level entry that is neither a bound nor a spine (bin, etc, jailsync,
    // lib, lib64, opt, sbin, tmp, usr, var), none for the bounds.
    let calls: usize = v["calls"].parse().unwrap_or(0);
    assert!(calls > 5, "one call per largest subtree: {all}");
    assert_eq!(v["diff_jail"], "", "the root is not the jail's tree\n{all}");
    assert_eq!(v["tool"], "new-tool", "{all}");
    assert_eq!(
        v["mounts_after_sync"], INTACT,
        "a mount moved or was written\n{all}"
    );
    assert_eq!(v["history"], "0", "{all}");
    assert_eq!(
        v.get("listed").map(String::as_str),
        Some("yes"),
        "history lists no generation\n{all}"
    );
    assert_eq!(v["rollback"], "0", "{all}");
    assert_eq!(v["diff_before"], "", "the rollback is not exact\n{all}");
    assert_eq!(v["tool_back"], "old-tool", "{all}");
    assert_eq!(
        v["mounts_after_rollback"], INTACT,
        "a mount moved or was written\n{all}"
    );
}

/// What a mount below `/` shows is left alone only when it is not part of `/` itself: a bind
/// mount of the root's own `var` at `mnt/data` is still the root, so a source or a state dir
/// reached through it is refused as before (exit 2, nothing changed).
#[test]
fn a_source_or_state_dir_behind_a_mount_of_the_root_itself_is_refused() {
    let Some(v) = run(r#"
umount "$R/mnt/data" && mount --bind "$R/var" "$R/mnt/data" || exit 99
js sync /mnt/data/lib/ / >/dev/null 2>"$T/err"; echo src=$?
echo src_err=$(tr '\n' ' ' <"$T/err")
chroot "$R" /jailsync --state-dir /mnt/data/st sync /mnt/jail/ / >/dev/null 2>"$T/err"; echo state=$?
echo state_err=$(tr '\n' ' ' <"$T/err")
echo diff_before=$(same_as "$B")
"#)
    else {
        return;
    };
    let all = &v["_all"];
    assert_eq!(v["src"], "2", "{all}");
    assert!(
        v["src_err"].contains("source is inside the destination"),
        "{all}"
    );
    assert_eq!(v["state"], "2", "{all}");
    assert!(v["state_err"].contains("state dir"), "{all}");
    assert_eq!(v["diff_before"], "", "the root changed\n{all}");
}
