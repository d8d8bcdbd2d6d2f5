//! Output: itemized change lines, JSON lines, the human summary, errors, and progress bars.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jailsync_engine::entry::{display_path, Ent, Entries, Kind};
use jailsync_engine::packages::PackageDiff;
use jailsync_engine::plan::{itemize, Action, Counts, Op, Plan};
use jailsync_engine::progress::{Phase, Progress, Silent};
use jailsync_engine::protect::{Decisions, Verdict, NEW_SUFFIX};
use jailsync_engine::usage::Usage;
use serde_json::{json, Value};

use crate::args::Global;

/// A path for JSON: a string when it is UTF-8, else `{"bytes": base64}`.
pub fn json_path(p: &[u8]) -> Value {
    match std::str::from_utf8(p) {
        Ok(s) => Value::String(if s.is_empty() { ".".into() } else { s.into() }),
        Err(_) => json!({ "bytes": base64::engine::general_purpose::STANDARD.encode(p) }),
    }
}

/// The entry an action is about (the new one unless it is a delete) and its path as shown:
/// prefixed with the tree's name inside an `upgrade`.
fn subject<'e>(
    a: &Action,
    src: &'e Entries,
    dst: &'e Entries,
    prefix: &[u8],
) -> (Ent<'e>, Vec<u8>) {
    let e = if a.src != u32::MAX {
        src.at(a.src as usize)
    } else {
        dst.at(a.dst as usize)
    };
    let mut full = prefix.to_vec();
    if !prefix.is_empty() && !e.path.is_empty() {
        full.push(b'/');
    }
    full.extend_from_slice(e.path);
    (e, full)
}

/// The path part of an itemized line: directories end in `/`, symlinks show their target.
pub fn item_name(a: &Action, src: &Entries, dst: &Entries, prefix: &[u8]) -> String {
    let (e, full) = subject(a, src, dst, prefix);
    let mut s = display_path(&full);
    if e.kind == Kind::Dir {
        s.push('/');
    }
    if e.kind == Kind::Symlink && a.op != Op::Delete {
        s.push_str(" -> ");
        s.push_str(&display_path(e.target().unwrap_or_default()));
    }
    s
}

/// Writes the itemized lines (or JSON change objects) of a plan. `prefix` is the tree's
/// relative name in an `upgrade` (empty for `sync`).
pub fn print_changes(
    out: &mut impl Write,
    plan: &Plan,
    src: &Entries,
    dst: &Entries,
    prefix: &[u8],
    json: bool,
) -> io::Result<()> {
    for a in &plan.actions {
        let mut code = itemize(a, src);
        // A hard link to a member of its group made earlier in the run: rsync's `h` and
        // `=> LEADER`.
        let leader = (a.link_to != jailsync_engine::plan::NONE && a.op != Op::Delete).then(|| {
            let p = src.path(a.link_to as usize);
            if prefix.is_empty() {
                p.to_vec()
            } else {
                jailsync_engine::entry::join(prefix, p)
            }
        });
        if leader.is_some() {
            code.replace_range(0..1, "h");
        }
        if json {
            let (e, full) = subject(a, src, dst, prefix);
            let v = json!({
                "type": "change",
                "item": code,
                "op": op_name(a.op),
                "kind": e.kind.name(),
                "path": json_path(&full),
            });
            writeln!(out, "{v}")?;
        } else {
            match &leader {
                Some(l) => writeln!(
                    out,
                    "{code} {} => {}",
                    item_name(a, src, dst, prefix),
                    display_path(l)
                )?,
                None => writeln!(out, "{code} {}", item_name(a, src, dst, prefix))?,
            }
        }
    }
    Ok(())
}

pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "create",
        Op::Replace => "replace",
        Op::Exchange => "exchange",
        Op::Meta => "metadata",
        Op::Delete => "delete",
    }
}

pub fn add_counts(a: &mut Counts, b: Counts) {
    a.created += b.created;
    a.updated += b.updated;
    a.type_changed += b.type_changed;
    a.metadata += b.metadata;
    a.deleted += b.deleted;
}

pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// How many protected files each outcome had.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub kept: usize,
    pub new: usize,
    pub dropped: usize,
}

impl Tally {
    pub fn of(d: &[Decisions]) -> Tally {
        let mut t = Tally::default();
        for x in d.iter().flat_map(|d| &d.list) {
            match x.verdict {
                Verdict::Kept => t.kept += 1,
                Verdict::KeptNew => t.new += 1,
                Verdict::KeptDropped => t.dropped += 1,
            }
        }
        t
    }

    pub fn add(&mut self, o: &Tally) {
        self.kept += o.kept;
        self.new += o.new;
        self.dropped += o.dropped;
    }

    /// The summary line's tail; empty when no protected file was kept.
    pub fn human(&self, dry_run: bool) -> String {
        let mut parts = Vec::new();
        if self.kept > 0 {
            parts.push(format!("{} kept as edited", self.kept));
        }
        if self.new > 0 {
            parts.push(format!(
                "{} kept as edited with the jail's version {} as NAME{NEW_SUFFIX} (jailsync conf-diff ROOT)",
                self.new,
                if dry_run { "to be written" } else { "written" }
            ));
        }
        if self.dropped > 0 {
            parts.push(format!(
                "{} dropped by the jail but edited, kept",
                self.dropped
            ));
        }
        if parts.is_empty() {
            return String::new();
        }
        format!("; configuration: {}", parts.join(", "))
    }
}

/// `size 12.0 MiB not in live (8.0 MiB its own)`, for `history`.
pub fn size_text(u: Option<Usage>) -> String {
    match u {
        Some(u) => format!(
            "{:>9} not live, {:>9} own",
            human_bytes(u.not_live),
            human_bytes(u.own)
        ),
        None => format!("{:>9}", "size ?"),
    }
}

pub fn size_json(u: Option<Usage>) -> serde_json::Value {
    match u {
        Some(u) => serde_json::json!({"not_live_bytes": u.not_live, "own_bytes": u.own}),
        None => serde_json::Value::Null,
    }
}

pub struct Summary {
    pub counts: Counts,
    pub bytes_written: u64,
    pub elapsed: Duration,
    pub switch_window: Duration,
    pub errors: usize,
    pub dry_run: bool,
    pub hashed_bytes: u64,
    pub cache_hits: usize,
    /// Configuration protection (upgrade): what was kept.
    pub conf: Option<Tally>,
    /// The source trees' entries by kind (regular, directory, symlink, other) and the size
    /// of their regular files, for `--stats`.
    pub files: [u64; 4],
    pub total_size: u64,
}

impl Summary {
    /// Adds a later phase of the same upgrade (the elapsed time is the caller's).
    pub fn add(&mut self, o: &Summary) {
        add_counts(&mut self.counts, o.counts);
        self.bytes_written += o.bytes_written;
        self.switch_window += o.switch_window;
        self.errors += o.errors;
        self.hashed_bytes += o.hashed_bytes;
        self.cache_hits += o.cache_hits;
        for (a, b) in self.files.iter_mut().zip(o.files) {
            *a += b;
        }
        self.total_size += o.total_size;
        if let Some(c) = &o.conf {
            self.conf.get_or_insert_with(Default::default).add(c);
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "type": "summary",
            "dry_run": self.dry_run,
            "created": self.counts.created,
            "updated": self.counts.updated,
            "type_changed": self.counts.type_changed,
            "metadata": self.counts.metadata,
            "deleted": self.counts.deleted,
            "changes": self.counts.total(),
            "bytes_written": self.bytes_written,
            "bytes_hashed": self.hashed_bytes,
            "cache_hits": self.cache_hits,
            "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
            "switch_window_ms": self.switch_window.as_secs_f64() * 1000.0,
            "errors": self.errors,
            "config_kept": self.conf.as_ref().map(|c| c.kept + c.dropped),
            "config_new": self.conf.as_ref().map(|c| c.new),
            "files": self.files.iter().sum::<u64>(),
            "total_size": self.total_size,
            "speedup": self.total_size as f64 / self.bytes_written.max(1) as f64,
        })
    }

    /// rsync's `--stats` block, in its words where they mean the same here: jailsync sends
    /// nothing over a wire, so its "sent" is what it wrote, and the speed-up is the size of the
    /// source's files over the bytes written.
    pub fn stats(&self) -> String {
        let [reg, dir, link, other] = self.files;
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64().max(1e-6);
        let speedup = self.total_size as f64 / self.bytes_written.max(1) as f64;
        format!(
            "Number of files: {} (reg: {reg}, dir: {dir}, link: {link}, special: {other})\n\
             Number of created files: {}\n\
             Number of deleted files: {}\n\
             Number of regular files transferred: {}\n\
             Total file size: {} bytes\n\
             Total transferred file size: {} bytes\n\
             Total bytes hashed: {} bytes\n\
             \n\
             wrote {} bytes  {:.2} bytes/sec\n\
             total size is {}  speedup is {:.2}{}",
            reg + dir + link + other,
            c.created,
            c.deleted,
            c.created + c.updated + c.type_changed,
            self.total_size,
            self.bytes_written,
            self.hashed_bytes,
            self.bytes_written,
            self.bytes_written as f64 / secs,
            self.total_size,
            speedup,
            if self.dry_run { " (DRY RUN)" } else { "" }
        )
    }

    pub fn human(&self) -> String {
        let c = &self.counts;
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        format!(
            "{verb}: {} created, {} updated, {} type changes, {} metadata only, {} deleted; \
             {} written in {:.2} s (switch window {:.1} ms){}",
            c.created,
            c.updated,
            c.type_changed,
            c.metadata,
            c.deleted,
            human_bytes(self.bytes_written),
            self.elapsed.as_secs_f64(),
            self.switch_window.as_secs_f64() * 1000.0,
            if self.errors > 0 {
                format!("; {} errors", self.errors)
            } else {
                String::new()
            }
        ) + &self
            .conf
            .as_ref()
            .map_or(String::new(), |c| c.human(self.dry_run))
    }
}

/// Wraps a progress reporter and records how long each phase took (shown with `-v`).
pub struct Timed<P: Progress> {
    inner: P,
    t0: std::time::Instant,
    marks: Mutex<Vec<(Phase, Duration, Option<Duration>)>>,
}

impl<P: Progress> Timed<P> {
    pub fn new(inner: P) -> Self {
        Timed {
            inner,
            t0: std::time::Instant::now(),
            marks: Mutex::new(Vec::new()),
        }
    }

    /// `scan 0.12 s, hash 0.03 s, ...` (a phase run once per tree is summed).
    pub fn report(&self) -> String {
        let marks = self.marks.lock().expect("poisoned");
        let mut sums: Vec<(Phase, Duration)> = Vec::new();
        for (p, start, end) in marks.iter() {
            let d = end.unwrap_or(*start) - *start;
            match sums.iter_mut().find(|(q, _)| q == p) {
                Some((_, t)) => *t += d,
                None => sums.push((*p, d)),
            }
        }
        sums.iter()
            .map(|(p, d)| format!("{} {:.3} s", p.name(), d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl<P: Progress> Progress for Timed<P> {
    fn start(&self, phase: Phase, total: u64) {
        let now = self.t0.elapsed();
        self.marks
            .lock()
            .expect("poisoned")
            .push((phase, now, None));
        self.inner.start(phase, total);
    }
    fn advance(&self, n: u64, bytes: u64) {
        self.inner.advance(n, bytes);
    }
    fn total_bytes(&self, bytes: u64) {
        self.inner.total_bytes(bytes);
    }
    fn tree(&self, dst: &std::path::Path) {
        self.inner.tree(dst);
    }
    fn finish(&self, phase: Phase) {
        let now = self.t0.elapsed();
        if let Some(m) = self
            .marks
            .lock()
            .expect("poisoned")
            .iter_mut()
            .rev()
            .find(|m| m.0 == phase && m.2.is_none())
        {
            m.2 = Some(now);
        }
        self.inner.finish(phase);
    }
}

/// Progress on stderr, one bar per phase; only when stderr is a terminal. Shows the tree
/// (in an `upgrade`), entries done of all, bytes done of all (when the phase knows its total),
/// the byte rate and the time left.
pub struct Bars {
    bar: Mutex<Option<ProgressBar>>,
    counts: std::sync::Arc<BarCounts>,
    /// (destination, name to show): the trees of an `upgrade` by their relative names.
    names: Vec<(std::path::PathBuf, String)>,
}

/// What the bar shows, updated from the workers without taking a lock.
#[derive(Default)]
pub struct BarCounts {
    pub label: Mutex<String>,
    pub phase: Mutex<&'static str>,
    pub entries: AtomicU64,
    pub entries_total: AtomicU64,
    pub bytes: AtomicU64,
    pub bytes_total: AtomicU64,
}

impl Bars {
    pub fn new(names: Vec<(std::path::PathBuf, String)>) -> Bars {
        Bars {
            bar: Mutex::new(None),
            counts: Default::default(),
            names,
        }
    }

    /// Whether bars should be drawn at all.
    pub fn wanted(quiet: bool, json: bool) -> bool {
        use std::io::IsTerminal;
        !quiet && !json && io::stderr().is_terminal()
    }

    fn redraw_position(&self) {
        let c = &self.counts;
        let (done, total) = match c.bytes_total.load(Relaxed) {
            0 => (c.entries.load(Relaxed), c.entries_total.load(Relaxed)),
            t => (c.bytes.load(Relaxed), t),
        };
        if let Some(pb) = &*self.bar.lock().expect("poisoned") {
            pb.set_position(if total == 0 {
                0
            } else {
                done * 1000 / total.max(1)
            });
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Bars::new(Vec::new())
    }
}

/// The text after the bar: `usr/pkg hash 1340/2748 files, 412.0 MiB of 1.2 GiB, 98.3 MiB/s,
/// 8 s left`. Time left comes from bytes when their total is known, else from entries.
pub fn progress_line(
    label: &str,
    phase: &str,
    (entries, entries_total): (u64, u64),
    (bytes, bytes_total): (u64, u64),
    elapsed: Duration,
) -> String {
    let mut s = String::new();
    if !label.is_empty() {
        s.push_str(label);
        s.push(' ');
    }
    s.push_str(phase);
    if entries_total > 0 {
        s.push_str(&format!(" {entries}/{entries_total} entries"));
    } else {
        s.push_str(&format!(" {entries} entries"));
    }
    if bytes_total > 0 {
        s.push_str(&format!(
            ", {} of {}",
            human_bytes(bytes),
            human_bytes(bytes_total)
        ));
    } else if bytes > 0 {
        s.push_str(&format!(", {}", human_bytes(bytes)));
    }
    let secs = elapsed.as_secs_f64();
    if bytes > 0 && secs > 0.0 {
        s.push_str(&format!(
            ", {}/s",
            human_bytes((bytes as f64 / secs) as u64)
        ));
    }
    let left = if bytes_total > 0 && bytes > 0 {
        Some(secs * (bytes_total.saturating_sub(bytes)) as f64 / bytes as f64)
    } else if entries_total > 0 && entries > 0 {
        Some(secs * (entries_total.saturating_sub(entries)) as f64 / entries as f64)
    } else {
        None
    };
    if let Some(left) = left {
        s.push_str(&format!(", {} left", human_duration(left)));
    }
    s
}

fn human_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}

impl Progress for Bars {
    fn start(&self, phase: Phase, total: u64) {
        let c = &self.counts;
        *c.phase.lock().expect("poisoned") = phase.name();
        c.entries.store(0, Relaxed);
        c.entries_total.store(total, Relaxed);
        c.bytes.store(0, Relaxed);
        c.bytes_total.store(0, Relaxed);
        let pb = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::stderr());
        let counts = self.counts.clone();
        let t0 = std::time::Instant::now();
        let style = ProgressStyle::with_template("{spinner} [{bar:20}] {line}").map(|s| {
            s.with_key(
                "line",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let c = &counts;
                    let label = c.label.lock().map(|l| l.clone()).unwrap_or_default();
                    let phase = *c.phase.lock().expect("poisoned");
                    let _ = w.write_str(&progress_line(
                        &label,
                        phase,
                        (c.entries.load(Relaxed), c.entries_total.load(Relaxed)),
                        (c.bytes.load(Relaxed), c.bytes_total.load(Relaxed)),
                        t0.elapsed(),
                    ));
                },
            )
        });
        if let Ok(s) = style {
            pb.set_style(s.progress_chars("=> "));
        }
        pb.enable_steady_tick(Duration::from_millis(120));
        if let Some(old) = self.bar.lock().expect("poisoned").replace(pb) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, n: u64, bytes: u64) {
        self.counts.entries.fetch_add(n, Relaxed);
        self.counts.bytes.fetch_add(bytes, Relaxed);
        self.redraw_position();
    }

    fn total_bytes(&self, bytes: u64) {
        self.counts.bytes_total.store(bytes, Relaxed);
    }

    fn tree(&self, dst: &std::path::Path) {
        let name = self
            .names
            .iter()
            .find(|(p, _)| p == dst)
            .map(|(_, n)| n.clone())
            .unwrap_or_default();
        *self.counts.label.lock().expect("poisoned") = name;
    }

    fn finish(&self, _phase: Phase) {
        if let Some(pb) = self.bar.lock().expect("poisoned").take() {
            pb.finish_and_clear();
        }
    }
}

/// How each tree was switched (`-v`, `--json`), and which processes still run the old trees.
pub fn print_switches(
    out: &mut impl Write,
    g: &Global,
    trees: &[jailsync_engine::sync::Tree],
    r: &jailsync_engine::sync::Report,
) -> io::Result<()> {
    for (t, s) in trees.iter().zip(&r.switches) {
        let Some(s) = s else { continue };
        let gen = s.generation_path.as_ref().map(|p| p.display().to_string());
        if g.json {
            let v = json!({
                "type": "switch",
                "path": t.dst_path.display().to_string(),
                "method": s.method.name(),
                "atomic": jailsync_engine::fsx::exchange_is_atomic(),
                "window_ms": s.window.as_secs_f64() * 1000.0,
                "calls": s.calls,
                "generation": s.generation,
                "generation_path": gen,
                "linked": s.linked,
            });
            writeln!(out, "{v}")?;
        } else if g.verbose > 0 && !g.quiet {
            eprintln!(
                "jailsync: {}: switched by {} in {:.3} ms ({} call{}); {}",
                t.dst_path.display(),
                s.method.describe(),
                s.window.as_secs_f64() * 1000.0,
                s.calls,
                if s.calls == 1 { "" } else { "s" },
                match (&gen, s.generation) {
                    (Some(p), Some(n)) => format!("the old tree is generation {n} at {p}"),
                    _ => "the old tree was not kept (--keep 0 or --no-rollback)".into(),
                }
            );
        }
    }
    if g.verbose > 0 && !g.quiet && !g.json && r.switches.iter().any(|s| s.is_some()) {
        eprintln!(
            "jailsync: staging {:.2} s, switches {:.3} ms, cleanup {:.2} s",
            r.stage_time.as_secs_f64(),
            r.switch_window.as_secs_f64() * 1000.0,
            r.cleanup_time.as_secs_f64()
        );
    }
    if !jailsync_engine::procs::SUPPORTED
        && g.verbose > 0
        && !g.quiet
        && !g.json
        && r.switches.iter().any(|s| s.is_some())
    {
        eprintln!("jailsync: processes still running the old release are not looked for on this system (Linux only)");
    }
    // Who still runs any kept generation (the engine looked once, after the switch).
    print_procs(out, g, &r.procs)
}

/// The restart report: a `process` JSON line each, or a line on stderr each, even under
/// `-q` (it asks for action).
pub fn print_procs(
    out: &mut impl Write,
    g: &Global,
    procs: &[jailsync_engine::procs::ProcUse],
) -> io::Result<()> {
    for p in procs {
        if g.json {
            let v = json!({
                "type": "process",
                "pid": p.pid,
                "comm": p.comm,
                "unit": p.unit,
                "file": p.file.display().to_string(),
            });
            writeln!(out, "{v}")?;
        } else {
            let how = match &p.unit {
                Some(u) => format!("systemctl restart {u}"),
                None => "restart it".to_string(),
            };
            eprintln!(
                "jailsync: pid {} ({}{}) still uses {} of an old release: {how}",
                p.pid,
                p.comm,
                p.unit
                    .as_deref()
                    .map(|u| format!(", {u}"))
                    .unwrap_or_default(),
                p.file.display()
            );
        }
    }
    Ok(())
}

/// Progress bars on stderr unless `-q` or `--json` (or not a terminal), timing each phase.
pub fn progress(g: &Global) -> Box<Timed<Box<dyn Progress>>> {
    progress_named(g, Vec::new())
}

/// Progress whose bars name each tree (`names`: destination, name shown).
pub fn progress_named(g: &Global, names: Vec<(PathBuf, String)>) -> Box<Timed<Box<dyn Progress>>> {
    let inner: Box<dyn Progress> = if Bars::wanted(g.quiet, g.json) {
        Box::new(Bars::new(names))
    } else {
        Box::new(Silent)
    };
    Box::new(Timed::new(inner))
}

/// An entry that failed: a JSON line with `--json`, always a line on stderr.
pub fn report_error(
    out: &mut impl Write,
    g: &Global,
    path: &str,
    phase: &str,
    e: &io::Error,
) -> io::Result<()> {
    if g.json {
        let v = serde_json::json!({"type": "error", "path": path, "phase": phase, "error": e.to_string()});
        writeln!(out, "{v}")?;
    }
    eprintln!("jailsync: {path}: {e} (while {phase})");
    Ok(())
}

/// What a switched rollback does with excluded entries (the live system's, kept as they are
/// now): each carried into the restored tree, and each the generation held but the live tree
/// no longer has. Named one by one for `-n` and `--json`, counted otherwise.
pub fn report_carry(
    out: &mut impl Write,
    g: &Global,
    live: &Path,
    carry: &jailsync_engine::generation::Carry,
    dry_run: bool,
) -> anyhow::Result<()> {
    let lines = carry
        .carried
        .iter()
        .map(|p| (p, "excluded: carried across as it is now"))
        .chain(carry.dropped.iter().map(|p| {
            (
                p,
                "excluded, gone from the live tree since the sync: stays gone",
            )
        }));
    for (p, what) in lines {
        if g.json {
            let kind = if what.starts_with("excluded:") {
                "carried"
            } else {
                "dropped"
            };
            let v = serde_json::json!({"type": kind, "path": json_path(p), "what": what});
            writeln!(out, "{v}")?;
        } else if dry_run && !g.quiet {
            let p = live.join(jailsync_engine::fsx::os(p));
            eprintln!("jailsync: {}: {what}", p.display());
        }
    }
    let n = carry.carried.len();
    if n > 0 && !dry_run && !g.quiet && !g.json {
        eprintln!(
            "{}: {n} excluded entr{} carried across (the live system's, kept as they are)",
            live.display(),
            if n == 1 { "y" } else { "ies" }
        );
    }
    Ok(())
}

/// A package diff as JSON: the database (path, format), the one-line summary, and each
/// package's name with its version before and after (null: added, removed).
pub fn packages_json(d: &PackageDiff, tree: &Path) -> Value {
    let changes: Vec<Value> = d
        .changes
        .iter()
        .map(|c| json!({"name": c.name, "old": c.old, "new": c.new}))
        .collect();
    json!({
        "database": tree.join(jailsync_engine::fsx::os(&d.db.rel)).display().to_string(),
        "format": d.db.format.name(),
        "summary": d.summary(),
        "changes": changes,
    })
}

/// A package diff as one line: `packages: webd-2.2 → webd-2.3, +jq-1.7, −less-590`.
pub fn packages_line(d: &PackageDiff) -> String {
    if d.changes.is_empty() {
        "packages: none changed".into()
    } else {
        format!("packages: {}", d.summary())
    }
}

/// One tree's preview; `prefixed`: its paths (and packages line) name the tree.
pub fn print_tree_preview(
    out: &mut impl Write,
    g: &Global,
    live: &Path,
    (files, packages): &(jailsync_engine::history::FileDiff, Option<PackageDiff>),
    prefixed: bool,
) -> anyhow::Result<()> {
    let prefix = if prefixed {
        live.as_os_str().as_encoded_bytes()
    } else {
        b""
    };
    print_changes(
        out,
        &files.plan,
        &files.after,
        &files.before,
        prefix,
        g.json,
    )?;
    for (p, e) in &files.errors {
        report_error(out, g, &p.display().to_string(), "rollback preview", e)?;
    }
    let Some(p) = packages else { return Ok(()) };
    if g.json {
        let mut v = packages_json(p, live);
        v["type"] = serde_json::json!("packages");
        v["path"] = serde_json::json!(live.display().to_string());
        writeln!(out, "{v}")?;
    } else if prefixed {
        writeln!(out, "{}: {}", live.display(), packages_line(p))?;
    } else {
        writeln!(out, "{}", packages_line(p))?;
    }
    Ok(())
}

/// A run's summary: a JSON line on stdout, or a line on stderr (with the time of each phase
/// after it when `-v` asked for them).
pub fn print_summary(summary: &Summary, verbose_phases: Option<&str>, g: &Global, stats: bool) {
    if g.json {
        println!("{}", summary.json());
        return;
    }
    if stats {
        println!("\n{}\n", summary.stats());
    }
    if !g.quiet {
        eprintln!("{}", summary.human());
        if let Some(p) = verbose_phases {
            eprintln!("phases: {p}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_entries_bytes_rate_and_time_left() {
        let l = progress_line(
            "usr/pkg",
            "hash",
            (1340, 2748),
            (400 << 20, 1200 << 20),
            Duration::from_secs(4),
        );
        assert_eq!(
            l,
            "usr/pkg hash 1340/2748 entries, 400.0 MiB of 1.2 GiB, 100.0 MiB/s, 8 s left"
        );
        // No byte total (scan): entries decide the time left; no bytes, no rate.
        let l = progress_line("", "stage", (10, 40), (0, 0), Duration::from_secs(2));
        assert_eq!(l, "stage 10/40 entries, 6 s left");
        let l = progress_line("", "scan", (500, 0), (0, 0), Duration::from_secs(1));
        assert_eq!(l, "scan 500 entries");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7300.0), "2h01m");
    }
}
