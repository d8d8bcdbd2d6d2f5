//! `jailsync push JAIL [HOST:]ROOT...`: one jail onto many hosts, over OpenSSH, switched
//! fleet-wide in two phases (every host stages; only then are they told to switch).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use jailsync_engine::paths::{self, Follow};
use jailsync_engine::progress::Silent;
use jailsync_engine::remote::client::{Conn, Source, Staged, Status, PHASES};
use jailsync_engine::remote::fleet::{
    self, FleetProgress, Gate, Host, HostError, HostReport, Mode, Outcome, Report,
};
use jailsync_engine::remote::wire::{flag, Open, Throttle};
use jailsync_engine::sync::{self, Pools, SyncOpts};

use crate::args::{exit, Global};
use crate::output::human_bytes;

#[derive(Args, Debug)]
pub struct PushCmd {
    /// The jail holding the rebuilt packages.
    pub jail: PathBuf,
    /// Where to push: `HOST:ROOT` through ssh, or a bare ROOT on this machine (the same
    /// protocol over a pipe). Default: the configuration file's `hosts`.
    #[arg(value_name = "[HOST:]ROOT")]
    pub targets: Vec<String>,
    /// Also push to the targets listed in FILE: one `HOST:ROOT` (or ROOT) a line; blank lines
    /// and `#` comments are skipped.
    #[arg(long, value_name = "FILE")]
    pub hosts_from: Option<PathBuf>,
    /// A tree to push, relative to JAIL and ROOT (repeatable; default as for `upgrade`).
    #[arg(long, value_name = "REL")]
    pub tree: Vec<PathBuf>,
    /// The remote shell, split into words like rsync's `-e` (e.g. "ssh -p 2222 -i KEY").
    /// `-o BatchMode=yes` is added unless CMD says BatchMode itself: an unknown host key or a
    /// password prompt fails that host with ssh's message instead of waiting for a keyboard.
    #[arg(long, value_name = "CMD", default_value = "ssh")]
    pub ssh: String,
    /// The jailsync binary on the hosts (default: `jailsync` on their PATH; this program for a
    /// bare ROOT).
    #[arg(long, value_name = "PATH")]
    pub remote_bin: Option<String>,
    /// The state directory on the hosts (default: theirs, /var/db/jailsync).
    #[arg(long, value_name = "DIR")]
    pub remote_state_dir: Option<String>,
    /// Hosts transferring and staging at once (all stay connected until the switch).
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub jobs: usize,
    /// Switch when at least N hosts have staged (default: every host must have).
    #[arg(long, value_name = "N", conflicts_with = "max_failed")]
    pub min_hosts: Option<usize>,
    /// Switch when at most N hosts failed to stage (default 0).
    #[arg(long, value_name = "N")]
    pub max_failed: Option<usize>,
    /// Roll back every host's last push or upgrade instead, as `jailsync rollback --root ROOT`
    /// on each (which marks it rolled back in `history --root`).
    #[arg(long)]
    pub rollback: bool,
    /// Have every host scan and plan as a push would, and report what it would change and
    /// what it lacks; nothing is sent but the manifests, nothing staged or written on a host.
    /// With --rollback: what each host's rollback would do.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Leave paths matching GLOB alone on every host, in every tree: neither sent, changed
    /// nor deleted (repeatable; `upgrade --exclude`'s syntax).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    #[command(flatten)]
    pub rules: crate::args::RuleArgs,
    /// Fail a host whose work does not move for SECS (its keepalive carries a work counter:
    /// a worker stuck in one read, as on a dead NFS mount, fails; a slow one that moves does
    /// not), or whose connection moves nothing either way for SECS; as any failure before the
    /// switch, that host is left as it was.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// With --rollback: switch back even trees changed since (see `rollback --force`).
    #[arg(long, requires = "rollback")]
    pub force: bool,
    /// Send at most RATE to each host (bytes per second; a K, M or G suffix for KiB, MiB,
    /// GiB; a bare number is KiB/s, as rsync's --bwlimit).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Send at most RATE to the whole fleet together (as --bwlimit).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub fleet_bwlimit: Option<u64>,
    /// zstd level for what is sent.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub compress_level: i32,
    /// Keep up to MIB mebibytes of what was pushed (compressed, in the state dir's
    /// `push-store`), so that the next push sends each changed file as a delta against the
    /// version a host holds; 0: no store, every changed file is sent whole.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub delta_store: u64,
    /// Worker threads on each host and here (default: twice the cores, 4..16).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    /// On each host, fsync the staged trees before the switch (as `upgrade --fsync`).
    #[arg(long)]
    pub fsync: bool,
    /// Neither compare nor copy extended attributes (ACLs, capabilities included).
    #[arg(long)]
    pub no_xattrs: bool,
    /// On each host, remove the old trees right after the switch (no rollback generation).
    #[arg(long)]
    pub no_rollback: bool,
    /// Rollback generations each host keeps per tree.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub keep: usize,
    /// Also protect configuration files matching GLOB on every host, as `upgrade --protect`
    /// (with the `protect` lines of JAIL/jailsync.conf; every tree's `etc/` by default).
    #[arg(long, value_name = "GLOB")]
    pub protect: Vec<String>,
    /// Do not protect every tree's `etc/` (GLOBs given still are).
    #[arg(long)]
    pub no_protect: bool,
}

/// One target as given.
struct Target {
    shown: String,
    host: Option<String>,
    root: String,
}

fn parse_target(s: &str) -> Result<Target> {
    // As rsync: a colon before any slash separates the host; `[v6addr]:ROOT` too.
    let (host, root) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once("]:") {
            Some((h, r)) => (Some(h.to_string()), r.to_string()),
            None => bail!("{s}: expected [ADDRESS]:ROOT"),
        }
    } else {
        match s.find(':').filter(|&c| !s[..c].contains('/')) {
            Some(c) => (Some(s[..c].to_string()), s[c + 1..].to_string()),
            None => (None, s.to_string()),
        }
    };
    if host.as_deref() == Some("") {
        bail!("{s}: empty host name");
    }
    let root = match &host {
        Some(_) if !root.starts_with('/') => bail!("{s}: the remote root must be an absolute path"),
        Some(_) => root,
        None => std::path::absolute(&root)
            .with_context(|| root.clone())?
            .to_string_lossy()
            .into_owned(),
    };
    Ok(Target {
        shown: s.to_string(),
        host,
        root,
    })
}

/// Splits `--ssh` into words: blanks separate, quotes and backslashes as in a shell.
fn split_words(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.get_or_insert_with(String::new).push(n);
                }
            }
            (Some(_), c) => cur.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                cur.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    out.push(w);
                }
            }
            (None, c) => cur.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        bail!("--ssh {s:?}: unterminated quote");
    }
    out.extend(cur);
    if out.is_empty() {
        bail!("--ssh is empty");
    }
    Ok(out)
}

/// A word for the remote shell (ssh joins its arguments into one command line).
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn command(t: &Target, ssh: &[String], remote_bin: Option<&str>) -> Result<Vec<OsString>> {
    Ok(match &t.host {
        None => {
            let bin = match remote_bin {
                Some(b) => OsString::from(b),
                None => std::env::current_exe()
                    .context("cannot find this program")?
                    .into(),
            };
            vec![bin, "serve".into()]
        }
        Some(h) => {
            let mut v: Vec<OsString> = ssh.iter().map(OsString::from).collect();
            v.push(h.into());
            v.push(format!("{} serve", shell_quote(remote_bin.unwrap_or("jailsync"))).into());
            v
        }
    })
}

pub fn run_push(c: PushCmd, g: &Global) -> Result<u8> {
    let t0 = Instant::now();
    let mut named = c.targets.clone();
    if let Some(f) = &c.hosts_from {
        named.extend(hosts_from(f)?);
    }
    if named.is_empty() {
        bail!(
            "no host to push to: name [HOST:]ROOT, --hosts-from FILE, or `hosts` in the configuration file"
        );
    }
    let targets = named
        .iter()
        .map(|s| parse_target(s))
        .collect::<Result<Vec<_>>>()?;
    let ssh = batch_mode(split_words(&c.ssh)?);
    // The trees `upgrade` would sync (its layout detection), in its order. Each host runs
    // them in `upgrade`'s phases: a package database nested in another tree is excluded from
    // it, with its home, and switched after it as its own tree.
    let (layout, conf_protect) = crate::args::layout_of(&c.jail, &c.tree)?;
    let rels: Vec<PathBuf> = layout.trees.clone();
    let excludes: Vec<Vec<u8>> = layout
        .phases()
        .first()
        .map(|(_, ex)| ex.iter().map(|p| p.as_bytes().to_vec()).collect())
        .unwrap_or_default();
    // Configuration protection, with the same rules as `upgrade` (checked here first).
    let mut globs = conf_protect;
    globs.extend(c.protect.iter().cloned());
    jailsync_engine::protect::Rules::new(!c.no_protect, &globs).context("bad --protect pattern")?;
    jailsync_engine::scan::Excludes::new(&c.exclude).context("bad --exclude pattern")?;
    let timeout = c.timeout.map(Duration::from_secs);
    let open = open_template(&c, &rels, &globs, &excludes, timeout);
    let hosts: Vec<Host> = targets
        .iter()
        .map(|t| Host {
            name: t.shown.clone(),
            open: Open {
                root: t.root.as_bytes().to_vec(),
                ..open.clone()
            },
        })
        .collect();

    // The jail, scanned and hashed once (with its stat cache) for every host.
    let source = if c.rollback {
        None
    } else {
        Some(read_jail(&c, g, &rels, &excludes)?)
    };
    let mode = match &source {
        None => Mode::Rollback,
        Some(s) if c.dry_run => Mode::DryRun(s),
        Some(source) => Mode::Push {
            source,
            gate: Gate {
                min_hosts: c.min_hosts,
                max_failed: c.max_failed,
            },
        },
    };
    // A command that cannot be built fails its host, as one that cannot be started.
    let argvs: Vec<Result<Vec<OsString>>> = targets
        .iter()
        .map(|t| command(t, &ssh, c.remote_bin.as_deref()))
        .collect();
    // One rate for each host's connection, and one shared by them all.
    let fleet_limit = c.fleet_bwlimit.map(Throttle::new);
    let dial = |i: usize, status| match &argvs[i] {
        Ok(argv) => {
            let mut limits: Vec<Throttle> = fleet_limit.iter().cloned().collect();
            limits.extend(c.bwlimit.map(Throttle::new));
            Conn::spawn(argv, status, timeout, limits)
        }
        Err(e) => Err(io::Error::other(format!("{e:#}"))),
    };
    let tty = io::stderr().is_terminal() && !g.quiet && !g.json;
    let progress = Watch {
        bars: tty.then(|| Progress::new(&targets)),
        names: targets.iter().map(|t| t.shown.clone()).collect(),
        // Ctrl-C (SIGINT), SIGTERM, SIGHUP: seen while the hosts work, before the gate.
        stop: match c.rollback {
            false => crate::args::stop_on_signals(),
            // A rollback is one rename per host, left to finish.
            true => Arc::default(),
        },
    };
    let report = fleet::push_all(&hosts, mode, c.jobs, dial, &progress);
    // What the hosts now hold is the next push's references.
    if let (Some(s), true) = (&source, report.switched) {
        if let Err(e) = s.remember() {
            eprintln!(
                "jailsync: the delta store in {}: {e} (the next push sends changed files whole)",
                g.state_dir.display()
            );
        }
    }
    print_report(&report, &c, g, t0)
}

/// `--bwlimit RATE` in bytes per second: a bare number is KiB/s (as rsync), or a number with
/// a B, K, M or G suffix (1024-based).
fn parse_rate(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => return Err(format!("{s}: a rate is a number with B, K, M or G")),
            };
            (&t[..i], mul)
        }
        _ => (t, 1 << 10),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s}: a rate is a number with B, K, M or G"))?;
    let r = (n * mul as f64) as u64;
    if n.is_nan() || n <= 0.0 || r == 0 {
        return Err(format!("{s}: a rate must be above zero"));
    }
    Ok(r)
}

/// The targets of `--hosts-from FILE`: one a line, blank lines and `#` comments skipped.
fn hosts_from(f: &std::path::Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(f).with_context(|| format!("--hosts-from {}", f.display()))?;
    Ok(text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `ssh -o BatchMode=yes ...` unless the admin's words say BatchMode already.
fn batch_mode(mut ssh: Vec<String>) -> Vec<String> {
    if !ssh
        .iter()
        .any(|w| w.to_ascii_lowercase().contains("batchmode"))
    {
        ssh.splice(1..1, ["-o".to_string(), "BatchMode=yes".to_string()]);
    }
    ssh
}

/// OPEN as every host gets it (the root is each host's own).
fn open_template(
    c: &PushCmd,
    rels: &[PathBuf],
    globs: &[String],
    excludes: &[Vec<u8>],
    timeout: Option<Duration>,
) -> Open {
    use std::os::unix::ffi::OsStrExt;
    let mut flags = flag::PROTECT;
    for (on, f) in [
        (!c.no_protect, flag::PROTECT_ETC),
        (!c.no_xattrs, flag::XATTRS),
        (!c.no_rollback, flag::ROLLBACK),
        (c.fsync, flag::FSYNC),
        (c.force, flag::FORCE),
        (c.dry_run, flag::DRY_RUN),
    ] {
        if on {
            flags |= f;
        }
    }
    // Where the push comes from, in the hosts' generation records.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let jail_shown = std::path::absolute(&c.jail).unwrap_or_else(|_| c.jail.clone());
    Open {
        source: format!("{host}:{}", jail_shown.display()).into_bytes(),
        root: Vec::new(),
        trees: rels
            .iter()
            .map(|r| r.as_os_str().as_bytes().to_vec())
            .collect(),
        state_dir: c
            .remote_state_dir
            .as_deref()
            .unwrap_or("")
            .as_bytes()
            .to_vec(),
        flags,
        keep: c.keep as u32,
        threads: c.threads as u32,
        protect: globs.iter().map(|g| g.as_bytes().to_vec()).collect(),
        excludes: excludes.to_vec(),
        exclude_all: c.exclude.iter().map(|g| g.as_bytes().to_vec()).collect(),
        // A keepalive well inside the timeout: a host at work is never taken for stalled.
        keepalive_ms: timeout.map_or(0, |t| {
            (t.as_millis() / 4).clamp(10, u32::MAX as u128) as u32
        }),
    }
}

/// The jail's trees, scanned and hashed (with its stat cache), ready to send to every host.
fn read_jail(c: &PushCmd, g: &Global, rels: &[PathBuf], excludes: &[Vec<u8>]) -> Result<Source> {
    use std::os::unix::ffi::OsStrExt;
    let jail_c = std::fs::canonicalize(&c.jail).with_context(|| c.jail.display().to_string())?;
    let never = Follow::Never {
        hint: "a tree of the jail is never followed",
    };
    let mut srcs = Vec::new();
    for rel in rels {
        let p = paths::resolve_beneath(&c.jail, &jail_c, rel, "tree", never)?;
        if !p.is_dir() {
            bail!("{}: not a directory", c.jail.join(rel).display());
        }
        srcs.push(p);
    }
    let state = sync::open_state(
        &g.state_dir,
        &srcs.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    )?;
    // --exclude'd paths are neither sent nor named in a manifest.
    let opts = SyncOpts {
        xattrs: !c.no_xattrs,
        threads: c.threads,
        excludes: jailsync_engine::scan::Excludes::new(&c.exclude)?,
        ..SyncOpts::default()
    };
    let pools = Pools::new(c.threads);
    let mut trees = Vec::new();
    // A tree holding a nested database is sent without it (the host excludes it).
    let mut outer_opts = opts.clone();
    let mut patterns: Vec<String> = excludes
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    patterns.extend(c.exclude.iter().cloned());
    outer_opts.excludes = jailsync_engine::scan::Excludes::new(&patterns)?;
    for (rel, p) in rels.iter().zip(srcs) {
        let holds = rels.iter().any(|o| o != rel && o.starts_with(rel));
        let o = if holds { &outer_opts } else { &opts };
        let (m, errors) = sync::scan_and_hash(&p, Some(&state), o, &pools, &Silent)?;
        if let Some((path, e)) = errors.first() {
            bail!(
                "{}: {e} (the jail must be readable whole to be pushed; {} entries could not be read)",
                path.display(),
                errors.len()
            );
        }
        trees.push((rel.as_os_str().as_bytes().to_vec(), p, m));
    }
    let store = match c.delta_store {
        0 => None,
        mib => {
            let dir = g.state_dir.join("push-store");
            let s = jailsync_engine::remote::store::Store::open(&dir, mib << 20)
                .with_context(|| dir.display().to_string())?;
            Some(s)
        }
    };
    Source::new(trees, c.compress_level, store).context("preparing the manifests")
}

/// What the hosts' lines and the summary tally.
#[derive(Default)]
struct Tally {
    /// One message per host that failed (or whose entries did), printed after the lines.
    failed: Vec<String>,
    switched: usize,
    not_switched: usize,
    planned: usize,
    rolled_back: usize,
}

/// User and system CPU seconds of this process (`getrusage(RUSAGE_SELF)`: its threads, not
/// its children).
pub(crate) fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage owned by this frame.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// Prints one line per host (JSON or human), the failures, and the summary; the exit code.
fn print_report(report: &Report, c: &PushCmd, g: &Global, t0: Instant) -> Result<u8> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut tally = Tally::default();
    let mut results = Vec::new();
    for h in &report.hosts {
        let (line, j) = host_line(h, &mut tally);
        if g.json {
            writeln!(out, "{j}")?;
        } else if !g.quiet {
            eprintln!("{line}");
        }
        results.push(serde_json::json!({
            "host": h.name,
            "result": j["result"],
            "wire_bytes": h.wire_bytes,
            "error": j.get("error").cloned().unwrap_or(serde_json::Value::Null),
        }));
    }
    for f in &tally.failed {
        eprintln!("jailsync: {f}");
    }
    let n = report.hosts.len();
    let switch_time = report.staged_to_switched;
    if g.json {
        let mut sum = serde_json::json!({
            "type": "summary",
            "hosts": n,
            "switched": tally.switched,
            "not_switched": tally.not_switched,
            "dry_run": c.dry_run,
            "planned": tally.planned,
            "failed": tally.failed.len(),
            "rolled_back": tally.rolled_back,
            "wire_bytes": report.wire_bytes(),
            "elapsed_ms": t0.elapsed().as_millis() as u64,
            // This process's own CPU (ssh and the hosts excluded): what the fleet costs here.
            "pusher_cpu_s": own_cpu_seconds(),
            "results": results,
        });
        if let Some(d) = switch_time {
            sum["staged_to_switched_ms"] = (d.as_secs_f64() * 1e3).into();
        }
        writeln!(out, "{sum}")?;
    } else if !g.quiet {
        let done = if c.dry_run && !c.rollback {
            format!("{} planned (dry run: nothing staged)", tally.planned)
        } else if c.rollback && c.dry_run {
            format!("{} would be rolled back (dry run)", tally.rolled_back)
        } else if c.rollback {
            format!("{} rolled back", tally.rolled_back)
        } else {
            format!(
                "{} switched, {} not switched",
                tally.switched, tally.not_switched
            )
        };
        let mut s = format!(
            "{n} hosts: {done}, {} failed; {} on the wire; {:.2} s",
            tally.failed.len(),
            human_bytes(report.wire_bytes()),
            t0.elapsed().as_secs_f64()
        );
        if let Some(d) = switch_time {
            s.push_str(&format!(
                "; all staged to all switched {:.1} ms",
                d.as_secs_f64() * 1e3
            ));
        }
        eprintln!("{s}");
    }
    out.flush()?;
    Ok(
        if tally.failed.is_empty() && (report.switched || c.rollback || c.dry_run) {
            exit::OK
        } else {
            exit::PARTIAL
        },
    )
}

/// One host's human line and JSON object; its failure, if any, added to `tally`.
fn host_line(h: &HostReport, tally: &mut Tally) -> (String, serde_json::Value) {
    let (shown, wire) = (&h.name, h.wire_bytes);
    let mut j = serde_json::json!({"type": "host", "host": shown, "wire_bytes": wire});
    let line = match &h.outcome {
        Outcome::Switched {
            staged: st,
            done: d,
            ..
        } => {
            tally.switched += 1;
            j["result"] = "switched".into();
            staged_json(&mut j, st);
            j["changes"] = d.changes.into();
            j["bytes_written"] = d.bytes_written.into();
            j["switch_window_us"] = (d.switch_window.as_micros() as u64).into();
            j["processes_using_old"] = d.procs.into();
            j["entry_errors"] = d.errors.into();
            if let Some(cpu) = d.cpu {
                j["host_cpu_s"] = cpu.as_secs_f64().into();
            }
            j["config"] = serde_json::json!({
                "kept": d.kept[0], "kept_new": d.kept[1], "kept_dropped": d.kept[2],
            });
            if d.errors > 0 {
                tally.failed.push(format!(
                    "{shown}: {} entries failed:\n{}",
                    d.errors,
                    d.error_text.trim_end()
                ));
                j["error"] = d.error_text.clone().into();
            } else if !d.error_text.is_empty() {
                // Notes with no error (an admin's own NAME.jailsync-new set aside).
                for l in d.error_text.lines() {
                    eprintln!("jailsync: {shown}: {l}");
                }
            }
            let kept = crate::output::Tally {
                kept: d.kept[0] as usize,
                new: d.kept[1] as usize,
                dropped: d.kept[2] as usize,
            };
            format!(
                "{shown}: switched, {} changes; sent {} blobs ({} raw), {} files found on the host; {} on the wire; switch {:.2} ms{}",
                d.changes,
                st.blobs,
                human_bytes(st.blob_bytes),
                st.found_on_host,
                human_bytes(wire),
                d.switch_window.as_secs_f64() * 1e3,
                kept.human(false)
            )
        }
        Outcome::NotSent => {
            tally.not_switched += 1;
            j["result"] = "not sent".into();
            format!(
                "{shown}: planned, nothing sent (another host failed before any content moved); left as it was"
            )
        }
        Outcome::NotSwitched(st) => {
            tally.not_switched += 1;
            j["result"] = "not switched".into();
            staged_json(&mut j, st);
            format!("{shown}: staged, not switched (the fleet did not switch); left as it was")
        }
        Outcome::Failed {
            cause,
            while_switching,
        } => {
            j["result"] = "failed".into();
            j["error"] = cause.to_string().into();
            j["after_switch"] = (*while_switching).into();
            let when = if *while_switching {
                "while switching"
            } else {
                "before its switch, left as it was"
            };
            tally.failed.push(format!("{shown}: {cause} ({when})"));
            format!("{shown}: failed {when}")
        }
        Outcome::Planned(p) => {
            tally.planned += 1;
            j["result"] = "dry run".into();
            j["added"] = p.created.into();
            j["changed"] = (p.updated + p.type_changed).into();
            j["metadata_only"] = p.metadata.into();
            j["removed"] = p.deleted.into();
            j["blobs"] = p.blobs.into();
            j["blob_bytes"] = p.blob_bytes.into();
            j["files_needed"] = p.files_needed.into();
            j["found_on_host"] = p.found_on_host.into();
            format!(
                "{shown}: would add {}, change {} ({} in metadata only), remove {}; lacks {} blobs ({}), {} files found on the host; {} on the wire",
                p.created,
                p.updated + p.type_changed + p.metadata,
                p.metadata,
                p.deleted,
                p.blobs,
                human_bytes(p.blob_bytes),
                p.found_on_host,
                human_bytes(wire),
            )
        }
        Outcome::RolledBack { code, output } => {
            j["result"] = if *code == 0 {
                "rolled back"
            } else {
                "rollback failed"
            }
            .into();
            j["exit"] = (*code).into();
            if *code == 0 {
                tally.rolled_back += 1;
            }
            j["output"] = output.clone().into();
            if *code != 0 {
                tally.failed.push(format!(
                    "{shown}: rollback exited {code}: {}",
                    output.trim_end()
                ));
            }
            format!("{shown}: rollback exited {code}\n{}", output.trim_end())
        }
    };
    (line, j)
}

fn staged_json(j: &mut serde_json::Value, st: &Staged) {
    j["blobs"] = st.blobs.into();
    j["blob_bytes"] = st.blob_bytes.into();
    j["found_on_host"] = st.found_on_host.into();
    j["files_needed"] = st.files_needed.into();
    j["stage_ms"] = (st.stage_time.as_millis() as u64).into();
    j["deltas"] = st.deltas.into();
    j["manifest_deltas"] = st.manifest_deltas.into();
    j["sig_deltas"] = st.sig_deltas.into();
    j["protocol"] = st.protocol.into();
}

/// The fleet as it runs: one line per host on a TTY, and a host's failure said at once.
struct Watch {
    bars: Option<Progress>,
    names: Vec<String>,
    stop: Arc<std::sync::atomic::AtomicUsize>,
}

impl FleetProgress for Watch {
    fn draw(&self, hosts: &[Arc<Status>]) {
        if let Some(b) = &self.bars {
            b.draw(hosts);
        }
        let sig = self.stop.load(Ordering::Relaxed);
        if sig != 0 {
            self.stopped(hosts, sig);
        }
    }
    fn finish(&self, hosts: &[Arc<Status>]) {
        if let Some(b) = &self.bars {
            b.draw(hosts);
            b.finish();
        }
    }
    fn failed(&self, i: usize, why: &HostError, while_switching: bool) {
        let when = if while_switching {
            "while switching"
        } else {
            "before its switch, left as it was; the others go on as the gate says"
        };
        let line = format!("jailsync: {}: failed ({when}): {why}", self.names[i]);
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl Watch {
    /// Stopped by a signal before the fleet's gate: says, per host, the state it is left in,
    /// and exits 128 + the signal. No host has been told to switch: the connections close with
    /// this process, and each host removes what it staged (end of stream is ABORT).
    fn stopped(&self, hosts: &[Arc<Status>], sig: usize) -> ! {
        use jailsync_engine::remote::client::phase;
        if let Some(b) = &self.bars {
            b.finish();
        }
        eprintln!("jailsync: push stopped by signal {sig} before any host was told to switch:");
        for (name, st) in self.names.iter().zip(hosts) {
            let p = st.phase.load(Ordering::Relaxed);
            let state = match p {
                phase::CONNECTING | phase::SCANNING => "left as it was (nothing was sent)",
                phase::SENDING | phase::STAGING => {
                    "left as it was (what it received is removed as its connection closes)"
                }
                phase::STAGED => "left as it was (staged, not switched: its staging is removed)",
                phase::FAILED => "failed before its switch (see above), left as it was",
                _ => "see `jailsync history --root` on it",
            };
            eprintln!(
                "jailsync: {name}: {}: {state}",
                PHASES[p.min(PHASES.len() - 1)]
            );
        }
        std::process::exit(128 + sig as i32)
    }
}

/// One line per host on a TTY.
struct Progress {
    multi: indicatif::MultiProgress,
    bars: Vec<indicatif::ProgressBar>,
    names: Vec<String>,
}

impl Progress {
    fn new(targets: &[Target]) -> Progress {
        let multi =
            indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr());
        let bars = targets
            .iter()
            .map(|_| multi.add(indicatif::ProgressBar::new_spinner()))
            .collect();
        Progress {
            multi,
            bars,
            names: targets.iter().map(|t| t.shown.clone()).collect(),
        }
    }

    fn draw(&self, st: &[Arc<Status>]) {
        for ((b, s), name) in self.bars.iter().zip(st).zip(&self.names) {
            let p = PHASES[s.phase.load(Ordering::Relaxed).min(PHASES.len() - 1)];
            b.set_message(format!(
                "{name}: {p}, {}/{} blobs, {}/{}, wire {}",
                s.blobs_sent.load(Ordering::Relaxed),
                s.blobs.load(Ordering::Relaxed),
                human_bytes(s.blob_bytes_sent.load(Ordering::Relaxed)),
                human_bytes(s.blob_bytes.load(Ordering::Relaxed)),
                human_bytes(s.wire.load(Ordering::Relaxed)),
            ));
            b.tick();
        }
    }

    fn finish(&self) {
        for b in &self.bars {
            b.finish();
        }
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_rsyncs_and_batch_mode_is_added_unless_said() {
        assert_eq!(parse_rate("100"), Ok(100 << 10));
        assert_eq!(parse_rate("1.5M"), Ok(3 << 19));
        assert_eq!(parse_rate("64k"), Ok(64 << 10));
        assert!(parse_rate("0").is_err() && parse_rate("fast").is_err());
        let w = |s: &str| split_words(s).unwrap();
        assert_eq!(batch_mode(w("ssh -p 22")), w("ssh -o BatchMode=yes -p 22"));
        assert_eq!(
            batch_mode(w("ssh -o batchmode=no")),
            w("ssh -o batchmode=no")
        );
    }

    #[test]
    fn targets_split_like_rsync() {
        let t = parse_target("root@web1:/").unwrap();
        assert_eq!(
            (t.host.as_deref(), t.root.as_str()),
            (Some("root@web1"), "/")
        );
        let t = parse_target("[::1]:/srv/h1").unwrap();
        assert_eq!(
            (t.host.as_deref(), t.root.as_str()),
            (Some("::1"), "/srv/h1")
        );
        let t = parse_target("/srv/a:b").unwrap();
        assert_eq!((t.host, t.root.as_str()), (None, "/srv/a:b"));
        assert!(parse_target("web1:relative").is_err());
        assert!(parse_target(":/x").is_err());
    }

    #[test]
    fn ssh_splits_into_words_and_the_remote_command_is_quoted() {
        assert_eq!(
            split_words(r#"ssh -p 22 -o "ProxyCommand=nc %h %p" -i 'my key'"#).unwrap(),
            [
                "ssh",
                "-p",
                "22",
                "-o",
                "ProxyCommand=nc %h %p",
                "-i",
                "my key"
            ]
        );
        assert!(split_words("ssh 'open").is_err());
        assert_eq!(
            shell_quote("/usr/pkg/bin/jailsync"),
            "/usr/pkg/bin/jailsync"
        );
        assert_eq!(shell_quote("/opt/my bin/it's"), r"'/opt/my bin/it'\''s'");
    }
}
