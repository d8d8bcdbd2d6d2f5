//! `jailsync push JAIL [HOST:]ROOT...`: one jail onto many hosts, over OpenSSH, switched
//! fleet-wide in two phases (every host stages; only then are they told to switch).

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use jailsync_engine::paths::{self, Follow};
use jailsync_engine::progress::Silent;
use jailsync_engine::remote::client::{phase, Conn, Done, Planned, Source, Staged, Status, PHASES};
use jailsync_engine::remote::serve::{flag, Open};
use jailsync_engine::sync::{self, Pools, SyncOpts};

use crate::output::human_bytes;
use crate::{exit, Global};

#[derive(Args, Debug)]
pub struct PushCmd {
    /// The jail holding the rebuilt packages.
    pub jail: PathBuf,
    /// Where to push: `HOST:ROOT` through ssh, or a bare ROOT on this machine (the same
    /// protocol over a pipe).
    #[arg(required = true, value_name = "[HOST:]ROOT")]
    pub targets: Vec<String>,
    /// A tree to push, relative to JAIL and ROOT (repeatable; default as for `upgrade`).
    #[arg(long, value_name = "REL")]
    pub tree: Vec<PathBuf>,
    /// The remote shell, split into words like rsync's `-e` (e.g. "ssh -p 2222 -i KEY").
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
    /// Fail a host whose work does not move for SECS (its keepalive carries a work counter:
    /// a worker stuck in one read, as on a dead NFS mount, fails; a slow one that moves does
    /// not), or whose connection moves nothing either way for SECS; as any failure before the
    /// switch, that host is left as it was.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// With --rollback: switch back even trees changed since (see `rollback --force`).
    #[arg(long, requires = "rollback")]
    pub force: bool,
    /// zstd level for what is sent.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub compress_level: i32,
    /// Worker threads on each host and here (default: twice the cores, 4..16).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub threads: usize,
    #[arg(long)]
    pub fsync: bool,
    #[arg(long)]
    pub no_xattrs: bool,
    #[arg(long)]
    pub no_rollback: bool,
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

/// What became of one host.
enum Outcome {
    Switched(Staged, Done, Instant),
    /// Staged, then told to abort (the fleet did not switch): untouched.
    Aborted(Staged),
    /// Failed before its switch (untouched) or during it.
    Failed(String, bool),
    RolledBack(u8, String),
    /// A dry run's report.
    Planned(Planned),
}

/// A counting semaphore for `--jobs`.
struct Slots(Mutex<usize>, Condvar);
impl Slots {
    fn take(&self) {
        let mut n = self.0.lock().expect("poisoned");
        while *n == 0 {
            n = self.1.wait(n).expect("poisoned");
        }
        *n -= 1;
    }
    fn give(&self) {
        *self.0.lock().expect("poisoned") += 1;
        self.1.notify_one();
    }
}

pub fn run_push(c: PushCmd, g: &Global) -> Result<u8> {
    use std::os::unix::ffi::OsStrExt;
    let t0 = Instant::now();
    let targets = c
        .targets
        .iter()
        .map(|s| parse_target(s))
        .collect::<Result<Vec<_>>>()?;
    let ssh = split_words(&c.ssh)?;
    // The trees `upgrade` would sync (its layout detection), in its order. Each host runs
    // them in `upgrade`'s phases: a package database nested in another tree is excluded from
    // it, with its home, and switched after it as its own tree.
    let (layout, conf_protect) = crate::upgrade_cmd::layout_of(&c.jail, &c.tree)?;
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
    let mut flags = flag::PROTECT;
    if !c.no_protect {
        flags |= flag::PROTECT_ETC;
    }
    if !c.no_xattrs {
        flags |= flag::XATTRS;
    }
    if !c.no_rollback {
        flags |= flag::ROLLBACK;
    }
    if c.fsync {
        flags |= flag::FSYNC;
    }
    if c.force {
        flags |= flag::FORCE;
    }
    if c.dry_run {
        flags |= flag::DRY_RUN;
    }
    jailsync_engine::scan::Excludes::new(&c.exclude).context("bad --exclude pattern")?;
    let timeout = c.timeout.map(Duration::from_secs);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let jail_shown = std::path::absolute(&c.jail).unwrap_or_else(|_| c.jail.clone());
    let open_for = |t: &Target, rel_source: &[u8]| Open {
        source: rel_source.to_vec(),
        root: t.root.as_bytes().to_vec(),
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
        excludes: excludes.clone(),
        exclude_all: c.exclude.iter().map(|g| g.as_bytes().to_vec()).collect(),
        // A keepalive well inside the timeout: a host at work is never taken for stalled.
        keepalive_ms: timeout.map_or(0, |t| {
            (t.as_millis() / 4).clamp(10, u32::MAX as u128) as u32
        }),
    };

    // The jail, scanned and hashed once (with its stat cache) for every host.
    let source = if c.rollback {
        None
    } else {
        let jail_c =
            std::fs::canonicalize(&c.jail).with_context(|| c.jail.display().to_string())?;
        let never = Follow::Never {
            hint: "a tree of the jail is never followed",
        };
        let mut srcs = Vec::new();
        for rel in &rels {
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
        Some(Source::new(trees, c.compress_level).context("preparing the manifests")?)
    };

    let n = targets.len();
    let statuses: Vec<Arc<Status>> = targets.iter().map(|_| Arc::default()).collect();
    let slots = Slots(Mutex::new(c.jobs.max(1)), Condvar::new());
    let (tx, rx) = mpsc::channel::<(usize, bool)>();
    let mut decide = Vec::new();
    let mut waits = Vec::new();
    for _ in 0..n {
        let (dtx, drx) = mpsc::channel::<bool>();
        decide.push(dtx);
        waits.push(Some(drx));
    }
    let tty = io::stderr().is_terminal() && !g.quiet && !g.json;
    let mut all_staged_at = None;
    let mut went = false;
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let argv = command(t, &ssh, c.remote_bin.as_deref());
            let status = statuses[i].clone();
            let open = open_for(t, format!("{host}:{}", jail_shown.display()).as_bytes());
            let (tx, drx) = (tx.clone(), waits[i].take().expect("once"));
            let (slots, source) = (&slots, source.as_ref());
            let (rollback, dry_run) = (c.rollback, c.dry_run);
            handles.push(s.spawn(move || {
                slots.take();
                let fail = |e: String, status: &Status| {
                    status.phase.store(phase::FAILED, Ordering::Relaxed);
                    Outcome::Failed(e, false)
                };
                let spawned = argv.and_then(|a| Ok(Conn::spawn(&a, status.clone(), timeout)?));
                let mut conn = match spawned {
                    Ok(c) => c,
                    Err(e) => {
                        slots.give();
                        let _ = tx.send((i, false));
                        return fail(format!("{e:#}"), &status);
                    }
                };
                if rollback {
                    let r = conn.open(&open).and_then(|()| conn.rollback());
                    slots.give();
                    let _ = tx.send((i, r.is_ok()));
                    return match r {
                        Ok((code, out)) => {
                            conn.close();
                            Outcome::RolledBack(code, out)
                        }
                        Err(e) => {
                            conn.kill();
                            fail(e.to_string(), &status)
                        }
                    };
                }
                if dry_run {
                    let r = conn
                        .open(&open)
                        .and_then(|()| conn.plan(source.expect("pushing")));
                    slots.give();
                    let _ = tx.send((i, r.is_ok()));
                    return match r {
                        Ok(p) => {
                            conn.close();
                            Outcome::Planned(p)
                        }
                        Err(e) => {
                            conn.kill();
                            fail(e.to_string(), &status)
                        }
                    };
                }
                let r = conn
                    .open(&open)
                    .and_then(|()| conn.push(source.expect("pushing")));
                slots.give();
                let staged = match r {
                    Ok(st) => st,
                    Err(e) => {
                        let _ = tx.send((i, false));
                        conn.kill();
                        return fail(e.to_string(), &status);
                    }
                };
                let _ = tx.send((i, true));
                if drx.recv().unwrap_or(false) {
                    match conn.switch() {
                        Ok(done) => {
                            let at = Instant::now();
                            conn.close();
                            Outcome::Switched(staged, done, at)
                        }
                        Err(e) => {
                            conn.kill();
                            status.phase.store(phase::FAILED, Ordering::Relaxed);
                            Outcome::Failed(e.to_string(), true)
                        }
                    }
                } else {
                    conn.abort();
                    conn.close();
                    Outcome::Aborted(staged)
                }
            }));
        }
        drop(tx);

        // The coordinator: wait for every host to stage or fail, then decide for all.
        let bars = tty.then(|| Progress::new(&targets));
        let mut ok = vec![false; n];
        let mut heard = 0;
        while heard < n {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((i, staged)) => {
                    ok[i] = staged;
                    heard += 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if let Some(b) = &bars {
                b.draw(&statuses);
            }
        }
        let staged = ok.iter().filter(|&&o| o).count();
        let failed = n - staged;
        went = !c.rollback
            && !c.dry_run
            && staged > 0
            && match (c.min_hosts, c.max_failed) {
                (Some(m), _) => staged >= m,
                (None, m) => failed <= m.unwrap_or(0),
            };
        all_staged_at = Some(Instant::now());
        for (i, d) in decide.iter().enumerate() {
            if ok[i] {
                let _ = d.send(went);
            }
        }
        let out: Vec<Outcome> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Outcome::Failed("panicked".into(), false))
            })
            .collect();
        if let Some(b) = &bars {
            b.draw(&statuses);
            b.finish();
        }
        out
    });
    let staged_at = all_staged_at.expect("decided");
    let switch_time = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Switched(_, _, at) => Some(at.saturating_duration_since(staged_at)),
            _ => None,
        })
        .max();

    // Report.
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let wire_total: u64 = statuses
        .iter()
        .map(|s| s.wire.load(Ordering::Relaxed))
        .sum();
    let mut failed = Vec::new();
    let (mut n_switched, mut n_aborted, mut n_planned) = (0, 0, 0);
    let mut results = Vec::new();
    for (k, (t, o)) in targets.iter().zip(&outcomes).enumerate() {
        let wire = statuses[k].wire.load(Ordering::Relaxed);
        let mut j = serde_json::json!({"type": "host", "host": t.shown, "wire_bytes": wire});
        let line = match o {
            Outcome::Switched(st, d, _) => {
                n_switched += 1;
                j["result"] = "switched".into();
                staged_json(&mut j, st);
                j["changes"] = d.changes.into();
                j["bytes_written"] = d.bytes_written.into();
                j["switch_window_us"] = (d.switch_window.as_micros() as u64).into();
                j["processes_using_old"] = d.procs.into();
                j["entry_errors"] = d.errors.into();
                j["config"] = serde_json::json!({
                    "kept": d.kept[0], "kept_new": d.kept[1], "kept_dropped": d.kept[2],
                });
                if d.errors > 0 {
                    failed.push(format!(
                        "{}: {} entries failed:\n{}",
                        t.shown,
                        d.errors,
                        d.error_text.trim_end()
                    ));
                    j["error"] = d.error_text.clone().into();
                } else if !d.error_text.is_empty() {
                    // Notes with no error (an admin's own NAME.jailsync-new set aside).
                    for l in d.error_text.lines() {
                        eprintln!("jailsync: {}: {l}", t.shown);
                    }
                }
                let tally = crate::conf::Tally {
                    kept: d.kept[0] as usize,
                    new: d.kept[1] as usize,
                    dropped: d.kept[2] as usize,
                };
                format!(
                    "{}: switched, {} changes; sent {} blobs ({} raw), {} files found on the host; {} on the wire; switch {:.2} ms{}",
                    t.shown,
                    d.changes,
                    st.blobs,
                    human_bytes(st.blob_bytes),
                    st.found_on_host,
                    human_bytes(wire),
                    d.switch_window.as_secs_f64() * 1e3,
                    tally.human(false)
                )
            }
            Outcome::Aborted(st) => {
                n_aborted += 1;
                j["result"] = "not switched".into();
                staged_json(&mut j, st);
                format!(
                    "{}: staged, not switched (the fleet did not switch); left as it was",
                    t.shown
                )
            }
            Outcome::Failed(e, after) => {
                j["result"] = "failed".into();
                j["error"] = e.clone().into();
                j["after_switch"] = (*after).into();
                let when = if *after {
                    "while switching"
                } else {
                    "before its switch, left as it was"
                };
                failed.push(format!("{}: {e} ({when})", t.shown));
                format!("{}: failed {when}", t.shown)
            }
            Outcome::Planned(p) => {
                n_planned += 1;
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
                    "{}: would add {}, change {} ({} in metadata only), remove {}; lacks {} blobs ({}), {} files found on the host; {} on the wire",
                    t.shown,
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
            Outcome::RolledBack(code, text) => {
                j["result"] = if *code == 0 {
                    "rolled back"
                } else {
                    "rollback failed"
                }
                .into();
                j["exit"] = (*code).into();
                j["output"] = text.clone().into();
                if *code != 0 {
                    failed.push(format!(
                        "{}: rollback exited {code}: {}",
                        t.shown,
                        text.trim_end()
                    ));
                }
                format!("{}: rollback exited {code}\n{}", t.shown, text.trim_end())
            }
        };
        if g.json {
            writeln!(out, "{j}")?;
        } else if !g.quiet {
            eprintln!("{line}");
        }
        results.push(serde_json::json!({
            "host": t.shown,
            "result": j["result"],
            "wire_bytes": wire,
            "error": j.get("error").cloned().unwrap_or(serde_json::Value::Null),
        }));
    }
    for f in &failed {
        eprintln!("jailsync: {f}");
    }
    if g.json {
        let mut sum = serde_json::json!({
            "type": "summary",
            "hosts": n,
            "switched": n_switched,
            "not_switched": n_aborted,
            "dry_run": c.dry_run,
            "planned": n_planned,
            "failed": failed.len(),
            "wire_bytes": wire_total,
            "elapsed_ms": t0.elapsed().as_millis() as u64,
            "results": results,
        });
        if let Some(d) = switch_time {
            sum["staged_to_switched_ms"] = (d.as_secs_f64() * 1e3).into();
        }
        writeln!(out, "{sum}")?;
    } else if !g.quiet {
        let done = if c.dry_run && !c.rollback {
            format!("{n_planned} planned (dry run: nothing staged)")
        } else {
            format!("{n_switched} switched, {n_aborted} not switched")
        };
        let mut s = format!(
            "{n} hosts: {done}, {} failed; {} on the wire; {:.2} s",
            failed.len(),
            human_bytes(wire_total),
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
    Ok(if failed.is_empty() && (went || c.rollback || c.dry_run) {
        exit::OK
    } else {
        exit::PARTIAL
    })
}

fn staged_json(j: &mut serde_json::Value, st: &Staged) {
    j["blobs"] = st.blobs.into();
    j["blob_bytes"] = st.blob_bytes.into();
    j["found_on_host"] = st.found_on_host.into();
    j["files_needed"] = st.files_needed.into();
    j["stage_ms"] = (st.stage_time.as_millis() as u64).into();
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
