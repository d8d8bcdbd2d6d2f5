//! The audit trail: one line per run that may change a live system (`sync`, `upgrade`,
//! `rollback`, `prune`, `push`; not a dry run) to the local syslog socket, as a plain unix
//! datagram in the form every syslog daemon and journald read (`<PRI>TAG[PID]: MESSAGE`).
//! No daemon listening, no line: the run never fails for its log. `JAILSYNC_SYSLOG_SOCKET`
//! names another socket (tests bind their own).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jailsync_engine::plan::Counts;

/// The socket syslog(3) writes to.
const DEV_LOG: &str = "/dev/log";
/// LOG_DAEMON, as syslog.h numbers facilities (times 8).
const FACILITY: u8 = 3 << 3;

/// What the run did, noted by the steps that know it.
#[derive(Default)]
struct Run {
    trees: Vec<String>,
    generations: Vec<String>,
    counts: Counts,
    bytes: u64,
    dry_run: bool,
}

static RUN: Mutex<Option<Run>> = Mutex::new(None);

fn with(f: impl FnOnce(&mut Run)) {
    if let Ok(mut r) = RUN.lock() {
        f(r.get_or_insert_with(Run::default));
    }
}

/// A tree the run changed (or tried to), and the generation its old state became.
pub fn tree(dst: &Path, generation: Option<u64>) {
    with(|r| {
        r.trees.push(dst.display().to_string());
        r.generations
            .push(generation.map_or_else(|| "-".to_string(), |g| g.to_string()));
    });
}

/// A run's (or a phase's) counts and bytes written.
pub fn counts(c: Counts, bytes: u64) {
    with(|r| {
        r.counts.created += c.created;
        r.counts.updated += c.updated;
        r.counts.type_changed += c.type_changed;
        r.counts.metadata += c.metadata;
        r.counts.deleted += c.deleted;
        r.bytes += bytes;
    });
}

/// The run changes nothing: no line.
pub fn dry_run() {
    with(|r| r.dry_run = true);
}

/// Where the line goes.
fn socket() -> PathBuf {
    std::env::var_os("JAILSYNC_SYSLOG_SOCKET").map_or_else(|| PathBuf::from(DEV_LOG), PathBuf::from)
}

/// The line for `command` ended with `code` (`error`: the fatal error, if any).
fn line(command: &str, code: u8, error: Option<&str>, r: &Run) -> String {
    let (severity, result) = match (code, error) {
        (0, _) => (6, "ok".to_string()),
        (1, _) => (4, "partial".to_string()),
        (_, Some(e)) => (3, format!("error: {e}")),
        (c, None) if c > 128 => (4, format!("stopped by signal {}", c - 128)),
        (c, None) => (3, format!("failed ({c})")),
    };
    let c = &r.counts;
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    format!(
        "<{}>jailsync[{}]: command={command} uid={} trees={} generations={} created={} \
         updated={} type_changed={} metadata={} deleted={} bytes={} exit={code} result={result}",
        FACILITY | severity,
        std::process::id(),
        // SAFETY: getuid has no preconditions and cannot fail.
        unsafe { libc::getuid() },
        list(&r.trees),
        list(&r.generations),
        c.created,
        c.updated,
        c.type_changed,
        c.metadata,
        c.deleted,
        r.bytes,
    )
}

/// Sends the run's line (at most once per process); every failure is silent.
pub fn log(command: &str, code: u8, error: Option<&str>) {
    let r = RUN
        .lock()
        .ok()
        .and_then(|mut r| r.take())
        .unwrap_or_default();
    if r.dry_run {
        return;
    }
    let text = line(command, code, error, &r);
    if let Ok(s) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = s.send_to(text.as_bytes(), socket());
    }
}
