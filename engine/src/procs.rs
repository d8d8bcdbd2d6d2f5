//! Processes that still run code or read data of an old tree after a switch.
//!
//! A switch never disturbs a running program: its open files and mappings keep their inodes,
//! and its working directory stays valid (the old tree is still there, as a generation). But
//! such a program goes on running the old release until restarted. Like needrestart and
//! `zypper ps`, we read `/proc/PID/maps`: the kernel prints each mapped file's current path,
//! so a library of the old tree now shows under the generation's path (and one the old
//! per-file pipeline replaced shows as `(deleted)` under the live path).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcUse {
    pub pid: u32,
    /// The command name (`/proc/PID/comm`).
    pub comm: String,
    /// One old file it maps (the first seen).
    pub file: PathBuf,
    /// The systemd unit it runs in (`/proc/PID/cgroup`), when it is a service's.
    pub unit: Option<String>,
}

/// Whether [`using`] can tell on this system: it reads Linux's `/proc/PID/maps`; elsewhere it
/// finds nothing (procfs there, where mounted, has no maps with paths).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

/// Processes mapping a file below any of `old_trees`, or a deleted file below `live` (always
/// none where not [`SUPPORTED`]).
pub fn using(old_trees: &[PathBuf], live: &[PathBuf]) -> Vec<ProcUse> {
    if !SUPPORTED {
        return Vec::new();
    }
    each_process(|proc| {
        crate::progress::work(1);
        // A process may exit or refuse us (another user's, without root): skip it.
        let maps = fs::read(proc.join("maps")).ok()?;
        first_old_mapping(&maps, old_trees, live)
    })
}

/// Every other process for which `uses` names a file, with its command and unit, by pid.
fn each_process(mut uses: impl FnMut(&Path) -> Option<PathBuf>) -> Vec<ProcUse> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    for ent in dir.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let proc = ent.path();
        let Some(file) = uses(&proc) else { continue };
        let comm = fs::read_to_string(proc.join("comm"))
            .map(|s| s.trim_end().to_string())
            .unwrap_or_default();
        let unit = fs::read_to_string(proc.join("cgroup"))
            .ok()
            .and_then(|c| unit_of(&c));
        out.push(ProcUse {
            pid,
            comm,
            file,
            unit,
        });
    }
    out.sort_by_key(|p| p.pid);
    out
}

/// Where the old releases of the live tree `live` are kept: its home beside it (every
/// generation a switch left) and the homes inside it (the per-file method's store, a root
/// tree's in-tree home).
pub fn old_places(live: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    if let (Some(parent), Some(name)) = (live.parent(), live.file_name()) {
        out.push(
            parent.join(std::ffi::OsStr::from_bytes(&crate::names::home_name(
                name.as_bytes(),
            ))),
        );
    }
    for inner in [crate::names::IN_TREE_HOME, crate::names::STORE_NAME] {
        out.push(live.join(std::ffi::OsStr::from_bytes(inner)));
    }
    out
}

/// The restart report of live trees: processes mapping a file of any kept generation of
/// them, or a deleted file below them (as needrestart and checkrestart look).
pub fn restart_report(live: &[PathBuf]) -> Vec<ProcUse> {
    let old: Vec<PathBuf> = live.iter().flat_map(|t| old_places(t)).collect();
    // A tree switched by symlink is live in its home: its release is not old.
    let mut now = live.to_vec();
    now.extend(live.iter().filter_map(|t| crate::paths::release_path(t)));
    using(&old, &now)
}

/// The link a release was reached through while it was live, and when (seconds since the
/// epoch, from its switch in to its switch out): a process started then with a path below the
/// link as an argument may be running from the release (Node resolves its main module's real
/// path once at start, and goes on loading from there).
#[derive(Debug, Clone)]
pub struct LiveVia {
    pub link: PathBuf,
    pub from: f64,
    pub to: f64,
}

/// Processes that run from `tree` (a release about to be pruned): one that maps a file of it,
/// executes, works in (cwd) or is chrooted in it, holds one of its files open, or was started
/// with one of its paths as an argument (an interpreter's script: Node, Python, a shell) —
/// or with a path below `via`'s link while the release was live.
pub fn running_from(tree: &Path, via: Option<&LiveVia>) -> Vec<ProcUse> {
    each_process(|proc| uses_tree(proc, tree, via))
}

/// The first path of `tree` the process at `proc` (`/proc/PID`) uses, if any.
fn uses_tree(proc: &Path, tree: &Path, via: Option<&LiveVia>) -> Option<PathBuf> {
    let below = |p: &Path| p.starts_with(tree).then(|| p.to_path_buf());
    let links = ["exe", "cwd", "root"]
        .iter()
        .filter_map(|n| fs::read_link(proc.join(n)).ok());
    let fds = fs::read_dir(proc.join("fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok());
    if let Some(p) = links.chain(fds).find_map(|p| below(&p)) {
        return Some(p);
    }
    if let Some(p) = fs::read(proc.join("maps"))
        .ok()
        .and_then(|m| first_old_mapping(&m, &[tree.to_path_buf()], &[]))
    {
        return Some(p);
    }
    let argv = fs::read(proc.join("cmdline")).ok()?;
    let args: Vec<&Path> = argv
        .split(|&b| b == 0)
        .filter(|a| a.starts_with(b"/"))
        .map(|a| Path::new(std::ffi::OsStr::from_bytes(a)))
        .collect();
    if let Some(p) = args.iter().find_map(|a| below(a)) {
        return Some(p);
    }
    let via = via?;
    let through = args.iter().find(|a| a.starts_with(&via.link))?;
    let t = started_at(proc)?;
    (via.from <= t && t <= via.to).then(|| through.to_path_buf())
}

/// When the process at `proc` started, in seconds since the epoch: its start in clock ticks
/// after boot (`/proc/PID/stat` field 22) placed on the wall clock by the offset between the
/// two clocks now (not `btime`: whole seconds, and off by whatever the clock was stepped or
/// slewed since boot).
fn started_at(proc: &Path) -> Option<f64> {
    let stat = fs::read_to_string(proc.join("stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last `)`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: u64 = rest.split(' ').nth(19)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let now = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write.
        let r = unsafe { libc::clock_gettime(clock, &mut ts) };
        (r == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
    };
    let (boot, wall) = (now(libc::CLOCK_BOOTTIME)?, now(libc::CLOCK_REALTIME)?);
    Some(wall - (boot - ticks as f64 / hz))
}

/// The systemd service a process runs in, from its `/proc/PID/cgroup`: the innermost
/// `*.service` of the unified (`0::`) or systemd (`name=systemd`) hierarchy; a user manager
/// (`user@UID.service`) holding no service of its own is none.
pub fn unit_of(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
            (ctl.is_empty() || ctl == "name=systemd").then_some(path)
        })
        .find_map(|path| {
            path.rsplit('/')
                .find(|c| c.ends_with(".service") && !c.starts_with("user@"))
                .map(str::to_string)
        })
}

/// The first mapped path in a maps listing that belongs to an old tree. Each line is
/// `start-end perms offset dev inode   path`; the path is the sixth field, may hold spaces,
/// and has ` (deleted)` appended when unlinked.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn first_old_mapping(maps: &[u8], old_trees: &[PathBuf], live: &[PathBuf]) -> Option<PathBuf> {
    for line in maps.split(|&b| b == b'\n') {
        let s = String::from_utf8_lossy(line);
        let mut rest = s.as_ref();
        for _ in 0..5 {
            rest = rest.trim_start();
            rest = &rest[rest.find(' ').unwrap_or(rest.len())..];
        }
        let path = rest.trim_start();
        if !path.starts_with('/') {
            continue;
        }
        let (p, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (path, false),
        };
        if deleted && anonymous(p) {
            continue;
        }
        let p = Path::new(p);
        let in_live = live.iter().any(|t| p.starts_with(t));
        if (old_trees.iter().any(|t| p.starts_with(t)) && !in_live) || (deleted && in_live) {
            return Some(p.to_path_buf());
        }
    }
    None
}

/// The names the kernel gives shared memory no file holds (memfd, SysV segments, shared
/// anonymous mappings), printed as deleted files of `/`: no tree's, though a tree at `/`
/// would seem to hold them.
fn anonymous(p: &str) -> bool {
    p.starts_with("/memfd:") || p.starts_with("/SYSV") || p == "/dev/zero"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_old_and_deleted_mappings_only() {
        let maps = b"55d0-55d1 r--p 00000000 fd:01 1234    /usr/bin/cat\n\
7f00-7f01 r-xp 00000000 fd:01 99    /usr/.jailsync-pkg/gen-3/lib/libz.so.1\n";
        let old = [PathBuf::from("/usr/.jailsync-pkg/gen-3")];
        let live = [PathBuf::from("/usr/pkg")];
        assert_eq!(
            first_old_mapping(maps, &old, &live),
            Some(PathBuf::from("/usr/.jailsync-pkg/gen-3/lib/libz.so.1"))
        );
        let maps = b"7f00-7f01 r-xp 00000000 fd:01 99    /usr/pkg/lib/lib z.so (deleted)\n\
7f00-7f01 r-xp 00000000 00:00 0    [heap]\n";
        assert_eq!(
            first_old_mapping(maps, &old, &live),
            Some(PathBuf::from("/usr/pkg/lib/lib z.so"))
        );
        let maps = b"7f00-7f01 r-xp 00000000 fd:01 99    /usr/pkg/lib/libz.so\n";
        assert_eq!(first_old_mapping(maps, &old, &live), None);
        // Shared memory is shown as deleted files of `/`: not the live root's.
        let maps = b"7f00-7f01 r-xp 00000000 00:01 7    /memfd:sealed-91 (deleted)\n\
7f00-7f01 rw-s 00000000 00:01 8    /SYSV00000000 (deleted)\n\
7f00-7f01 rw-s 00000000 00:01 9    /dev/zero (deleted)\n";
        assert_eq!(first_old_mapping(maps, &old, &[PathBuf::from("/")]), None);
    }

    #[test]
    fn unit_from_cgroup_v1_and_v2() {
        let v2 = "0::/system.slice/webd.service\n";
        assert_eq!(unit_of(v2).as_deref(), Some("webd.service"));
        let v1 = "4:memory:/x\n1:name=systemd:/system.slice/cron.service\n0::/\n";
        assert_eq!(unit_of(v1).as_deref(), Some("cron.service"));
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope\n";
        assert_eq!(unit_of(user), None);
        let user = "0::/user.slice/user-1000.slice/user@1000.service/app.slice/mail.service\n";
        assert_eq!(unit_of(user).as_deref(), Some("mail.service"));
        assert_eq!(unit_of("0::/\n"), None);
    }

    #[test]
    fn old_places_are_the_homes() {
        let p = old_places(Path::new("/usr/pkg"));
        assert_eq!(p[0], PathBuf::from("/usr/.jailsync-pkg"));
        assert!(p[1..].iter().all(|x| x.starts_with("/usr/pkg")));
    }
}
