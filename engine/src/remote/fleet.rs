//! The fleet's barrier: every host stages, then all of them switch, or none does.
//!
//! Why a barrier: a fleet that serves one release must not run two for longer than it takes
//! to switch. Staging (scan, transfer, building the next tree) is the slow, failure-prone part
//! and changes nothing live; the switch is a rename per tree. So every host is taken to its
//! last safe point (STAGED, where its `serve` waits holding its lock), and only when every
//! host has answered does the coordinator decide, once, for all: SWITCH to every staged host,
//! or ABORT to every one, which leaves each as it was. A host that fails before the gate
//! (cannot connect, another version, refuses the plan, times out) is left untouched by
//! construction: it never received SWITCH.
//!
//! What the gate does not do: a host whose switch fails after the gate has undone its own
//! switch (its transaction's undo on error, on the host); the hosts that switched stay
//! switched and the failure is reported for that host ([`Outcome::Failed`] with
//! `while_switching`). Rolling them back is `push --rollback`, an admin's decision.
//!
//! The hosts' connections are reached through [`Link`] (the real one is
//! [`Conn`](super::client::Conn), over ssh or a pipe), so the ordering above is tested here
//! against a fake connection, without a network or a `serve`.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::client::{phase, Conn, Done, Planned, Source, Staged, Status, Want};
use super::wire::Open;
use super::{RemoteError, Result};

/// One host's connection as the fleet drives it, step by step. Every method but `close` and
/// `kill` is one request and its answer; a timeout is the link's to enforce (it fails the
/// request it was waiting on).
pub trait Link: Send {
    /// HELLO both ways (versions must match), then OPEN.
    fn open(&mut self, o: &Open) -> Result<()>;
    /// Sends the manifests; the host plans (checking its free space) and says what it
    /// lacks. No content has moved.
    fn want(&mut self, src: &Source) -> Result<Want>;
    /// Sends what the host lacks and waits until it has staged (its last safe point).
    fn send_content(&mut self, src: &Source, want: Want) -> Result<Staged>;
    /// A dry run: what the host would do.
    fn plan(&mut self, src: &Source) -> Result<Planned>;
    /// Tells a staged host to switch.
    fn switch(&mut self) -> Result<Done>;
    /// Tells a staged host to switch nothing (best effort).
    fn abort(&mut self);
    /// `jailsync rollback --root` on the host: its exit code and output.
    fn rollback(&mut self) -> Result<(u8, String)>;
    /// Ends a connection that did what it was asked.
    fn close(self);
    /// Ends a connection that failed.
    fn kill(self);
}

impl Link for Conn {
    fn open(&mut self, o: &Open) -> Result<()> {
        Conn::open(self, o)
    }
    fn want(&mut self, src: &Source) -> Result<Want> {
        Conn::want(self, src)
    }
    fn send_content(&mut self, src: &Source, want: Want) -> Result<Staged> {
        Conn::send_content(self, src, want)
    }
    fn plan(&mut self, src: &Source) -> Result<Planned> {
        Conn::plan(self, src)
    }
    fn switch(&mut self) -> Result<Done> {
        Conn::switch(self)
    }
    fn abort(&mut self) {
        Conn::abort(self)
    }
    fn rollback(&mut self) -> Result<(u8, String)> {
        Conn::rollback(self)
    }
    fn close(self) {
        Conn::close(self)
    }
    fn kill(self) {
        Conn::kill(self)
    }
}

/// One host: the name it is reported under, and what its OPEN asks.
pub struct Host {
    pub name: String,
    pub open: Open,
}

/// When the fleet switches, given how many hosts staged and how many failed to.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gate {
    /// At least this many hosts staged (`--min-hosts`).
    pub min_hosts: Option<usize>,
    /// At most this many failed (`--max-failed`; default 0). Ignored with `min_hosts`.
    pub max_failed: Option<usize>,
}

impl Gate {
    /// Whether the staged hosts switch. Never with none staged: there is nothing to switch,
    /// and a run that switched nothing must not read as a success.
    pub fn opens(&self, staged: usize, failed: usize) -> bool {
        staged > 0
            && match (self.min_hosts, self.max_failed) {
                (Some(m), _) => staged >= m,
                (None, m) => failed <= m.unwrap_or(0),
            }
    }
}

/// What the fleet does on every host.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// Stage `source` everywhere, then switch as `gate` says.
    Push { source: &'a Source, gate: Gate },
    /// Plan only (OPEN carries the dry-run flag): nothing is staged, so there is no gate.
    DryRun(&'a Source),
    /// Roll every host back: each on its own, no gate (a rollback is one rename per host).
    Rollback,
}

/// Why one host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The command (ssh, or `serve` on this machine) could not be started.
    #[error("{0}")]
    Start(io::Error),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The host's thread panicked (a bug here, not on the host).
    #[error("panicked")]
    Panicked,
}

impl HostError {
    /// The host was given up for not moving (`--timeout`): its work stood still, or its
    /// connection did.
    pub fn is_timeout(&self) -> bool {
        match self {
            HostError::Remote(RemoteError::Stuck { .. }) => true,
            HostError::Remote(RemoteError::Io(e)) => e.kind() == io::ErrorKind::TimedOut,
            _ => false,
        }
    }
}

/// What became of one host.
#[derive(Debug)]
pub enum Outcome {
    /// Staged, then switched; `after_gate`: from the fleet's decision to this host's DONE.
    Switched {
        staged: Staged,
        done: Done,
        after_gate: Duration,
    },
    /// Staged, then told to abort (the fleet did not switch): untouched.
    NotSwitched(Staged),
    /// Planned, then told to abort before any content was sent (another host failed before
    /// any content moved, and the gate could no longer open): untouched.
    NotSent,
    /// Failed before its switch (untouched) or, `while_switching`, during it.
    Failed {
        cause: HostError,
        while_switching: bool,
    },
    /// `--rollback`: the host's exit code and output.
    RolledBack { code: u8, output: String },
    /// A dry run's report.
    Planned(Planned),
}

/// One host's line of the report.
#[derive(Debug)]
pub struct HostReport {
    pub name: String,
    pub outcome: Outcome,
    /// All bytes both ways over its connection.
    pub wire_bytes: u64,
}

/// What the fleet did, host by host, in the order given.
#[derive(Debug)]
pub struct Report {
    pub hosts: Vec<HostReport>,
    /// The gate opened: the staged hosts were told to switch.
    pub switched: bool,
    /// From the gate to the last host's DONE: how long the fleet ran two releases.
    pub staged_to_switched: Option<Duration>,
}

impl Report {
    pub fn wire_bytes(&self) -> u64 {
        self.hosts.iter().map(|h| h.wire_bytes).sum()
    }
}

/// Called by the coordinator while the hosts work; implementations draw, the engine never
/// prints. `hosts` are in the order given, each updated by its connection.
pub trait FleetProgress: Sync {
    /// Every 100 ms or so until every host has staged or failed (and once at each answer).
    fn draw(&self, _hosts: &[Arc<Status>]) {}
    /// Every host is done.
    fn finish(&self, _hosts: &[Arc<Status>]) {}
    /// Host `i` failed (said at once, not at the end: the admin may act while the others run).
    fn failed(&self, _i: usize, _why: &HostError, _while_switching: bool) {}
}

/// Draws nothing.
pub struct NoProgress;
impl FleetProgress for NoProgress {}

/// Runs `mode` on every host, at most `jobs` connecting or staging at once (a staged host
/// keeps its connection but gives up its slot: it only waits).
///
/// `dial(i, status)` connects to `hosts[i]`, its connection updating `status` (which the
/// progress reads). Every host is reported; the run itself cannot fail.
pub fn push_all<L, D>(
    hosts: &[Host],
    mode: Mode<'_>,
    jobs: usize,
    dial: D,
    progress: &dyn FleetProgress,
) -> Report
where
    L: Link,
    D: Fn(usize, Arc<Status>) -> io::Result<L> + Sync,
{
    let n = hosts.len();
    let statuses: Vec<Arc<Status>> = hosts.iter().map(|_| Arc::default()).collect();
    let slots = Slots(Mutex::new(jobs.max(1)), Condvar::new());
    let gate_at = OnceLock::new();
    let (heard_tx, heard) = mpsc::channel::<(usize, bool)>();
    let (outcomes, switched) = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(n);
        let mut decide = Vec::with_capacity(n);
        for (i, h) in hosts.iter().enumerate() {
            let (tx, word) = mpsc::channel::<bool>();
            decide.push(tx);
            let one = One {
                i,
                open: &h.open,
                status: statuses[i].clone(),
                slots: &slots,
                heard: heard_tx.clone(),
                word,
                gate_at: &gate_at,
                progress,
            };
            let dial = &dial;
            handles.push(s.spawn(move || one.run(mode, dial)));
        }
        drop(heard_tx);

        // A push's first barrier: every host reached, its version and free space checked and
        // its plan made (or failed) before any content moves; content moves only while the
        // gate could still open.
        let mut ok = wait_for_all(&heard, n, n, &statuses, progress);
        if let Mode::Push { gate, .. } = mode {
            let planned = ok.iter().filter(|&&o| o).count();
            let go = gate.opens(planned, n - planned);
            for (d, _) in decide.iter().zip(&ok).filter(|(_, &ok)| ok) {
                let _ = d.send(go);
            }
            ok = match go {
                true => wait_for_all(&heard, planned, n, &statuses, progress),
                false => vec![false; n],
            };
        }
        // The gate: every host staged or failed, then one decision for all.
        let staged = ok.iter().filter(|&&o| o).count();
        let switched = match mode {
            Mode::Push { gate, .. } => gate.opens(staged, n - staged),
            Mode::DryRun(_) | Mode::Rollback => false,
        };
        let _ = gate_at.set(Instant::now());
        for (d, _) in decide.iter().zip(&ok).filter(|(_, &ok)| ok) {
            let _ = d.send(switched);
        }
        let out: Vec<Outcome> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or(Outcome::Failed {
                    cause: HostError::Panicked,
                    while_switching: false,
                })
            })
            .collect();
        progress.finish(&statuses);
        (out, switched)
    });
    let staged_to_switched = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Switched { after_gate, .. } => Some(*after_gate),
            _ => None,
        })
        .max();
    let hosts = hosts
        .iter()
        .zip(outcomes)
        .zip(&statuses)
        .map(|((h, outcome), st)| HostReport {
            name: h.name.clone(),
            outcome,
            wire_bytes: st.wire.load(Ordering::Relaxed),
        })
        .collect();
    Report {
        hosts,
        switched,
        staged_to_switched,
    }
}

/// Waits until `expect` of the `n` hosts have said whether they reached the barrier; which did.
fn wait_for_all(
    heard: &mpsc::Receiver<(usize, bool)>,
    expect: usize,
    n: usize,
    statuses: &[Arc<Status>],
    progress: &dyn FleetProgress,
) -> Vec<bool> {
    let mut ok = vec![false; n];
    let mut answered = 0;
    while answered < expect {
        match heard.recv_timeout(Duration::from_millis(100)) {
            Ok((i, staged)) => {
                ok[i] = staged;
                answered += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every host's thread has ended (one panicked before answering): none waits.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        progress.draw(statuses);
    }
    ok
}

/// A counting semaphore for `jobs`.
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

/// One host's thread: what it needs to reach the gate and to hear the fleet's word.
struct One<'a> {
    i: usize,
    open: &'a Open,
    status: Arc<Status>,
    slots: &'a Slots,
    /// To the coordinator: (this host, staged).
    heard: mpsc::Sender<(usize, bool)>,
    /// From the coordinator: switch (true) or abort.
    word: mpsc::Receiver<bool>,
    gate_at: &'a OnceLock<Instant>,
    progress: &'a dyn FleetProgress,
}

impl One<'_> {
    fn run<L: Link>(
        self,
        mode: Mode<'_>,
        dial: &(impl Fn(usize, Arc<Status>) -> io::Result<L> + Sync),
    ) -> Outcome {
        self.slots.take();
        let mut link = match dial(self.i, self.status.clone()) {
            Ok(l) => l,
            Err(e) => {
                self.slots.give();
                self.answer(false);
                return self.failed(HostError::Start(e), false);
            }
        };
        let source = match mode {
            Mode::Push { source, .. } => source,
            // No gate: each host is done when it answers.
            Mode::Rollback => {
                let r = link.open(self.open).and_then(|()| link.rollback());
                return self.finish(link, r, |(code, output)| Outcome::RolledBack {
                    code,
                    output,
                });
            }
            Mode::DryRun(source) => {
                let r = link.open(self.open).and_then(|()| link.plan(source));
                return self.finish(link, r, Outcome::Planned);
            }
        };
        let r = link.open(self.open).and_then(|()| link.want(source));
        // Planned (or failed): this host only waits now, another may connect.
        self.slots.give();
        let want = match r {
            Ok(w) => w,
            Err(e) => {
                self.answer(false);
                link.kill();
                return self.failed(e.into(), false);
            }
        };
        self.answer(true);
        if !self.word.recv().unwrap_or(false) {
            link.abort();
            link.close();
            return Outcome::NotSent;
        }
        self.slots.take();
        let r = link.send_content(source, want);
        // Staged (or failed): this host only waits now, another may send.
        self.slots.give();
        let staged = match r {
            Ok(st) => st,
            Err(e) => {
                self.answer(false);
                link.kill();
                return self.failed(e.into(), false);
            }
        };
        self.answer(true);
        // A coordinator gone without a word (it cannot, short of a panic) means no switch.
        if !self.word.recv().unwrap_or(false) {
            link.abort();
            link.close();
            return Outcome::NotSwitched(staged);
        }
        match link.switch() {
            Ok(done) => {
                let at = Instant::now();
                link.close();
                let gate = *self.gate_at.get().expect("set before any word");
                Outcome::Switched {
                    staged,
                    done,
                    after_gate: at.saturating_duration_since(gate),
                }
            }
            Err(e) => {
                link.kill();
                self.failed(e.into(), true)
            }
        }
    }

    /// A host with no gate (dry run, rollback) answered: its slot and its answer given back,
    /// its connection ended.
    fn finish<L: Link, T>(self, link: L, r: Result<T>, ok: impl FnOnce(T) -> Outcome) -> Outcome {
        self.slots.give();
        self.answer(r.is_ok());
        match r {
            Ok(v) => {
                link.close();
                ok(v)
            }
            Err(e) => {
                link.kill();
                self.failed(e.into(), false)
            }
        }
    }

    fn answer(&self, staged: bool) {
        let _ = self.heard.send((self.i, staged));
    }

    fn failed(&self, cause: HostError, while_switching: bool) -> Outcome {
        self.status.phase.store(phase::FAILED, Ordering::Relaxed);
        self.progress.failed(self.i, &cause, while_switching);
        Outcome::Failed {
            cause,
            while_switching,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// How a fake host fails, if it does.
    #[derive(Clone, Copy, Default, PartialEq)]
    enum Fail {
        #[default]
        Never,
        /// The command cannot be started.
        Connect,
        /// Refuses while staging (e.g. a protected path changed).
        Stage,
        /// Its work stops moving while staging: the link gives it up (`--timeout`).
        StageStuck,
        /// Its switch fails.
        Switch,
    }

    #[derive(Clone, Copy, Default)]
    struct Script {
        fail: Fail,
        /// How long staging takes.
        stage: Duration,
    }

    /// What the fake hosts were told, in the order it happened.
    #[derive(Default)]
    struct World {
        log: Mutex<Vec<(String, &'static str)>>,
        staging: AtomicUsize,
        most_staging: AtomicUsize,
    }

    impl World {
        fn note(&self, host: &str, what: &'static str) {
            self.log.lock().unwrap().push((host.to_string(), what));
        }
        fn log(&self) -> Vec<(String, &'static str)> {
            self.log.lock().unwrap().clone()
        }
        /// Where `what` first (or last) happened to any host.
        fn at(&self, what: &str, last: bool) -> Option<usize> {
            let log = self.log();
            let mut it = log.iter().enumerate().filter(|(_, (_, w))| *w == what);
            if last { it.next_back() } else { it.next() }.map(|(k, _)| k)
        }
        fn did(&self, host: &str) -> Vec<&'static str> {
            self.log()
                .into_iter()
                .filter(|(h, _)| h == host)
                .map(|(_, w)| w)
                .collect()
        }
    }

    struct Fake<'w> {
        name: String,
        script: Script,
        world: &'w World,
    }

    impl Link for Fake<'_> {
        fn open(&mut self, _o: &Open) -> Result<()> {
            self.world.note(&self.name, "open");
            Ok(())
        }
        fn want(&mut self, _src: &Source) -> Result<Want> {
            self.world.note(&self.name, "planned");
            Ok(Want::default())
        }
        fn send_content(&mut self, _src: &Source, _want: Want) -> Result<Staged> {
            let now = self.world.staging.fetch_add(1, Ordering::SeqCst) + 1;
            self.world.most_staging.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(self.script.stage);
            self.world.staging.fetch_sub(1, Ordering::SeqCst);
            match self.script.fail {
                Fail::Stage => Err(RemoteError::Refused("etc/passwd changed".into())),
                Fail::StageStuck => Err(RemoteError::Stuck {
                    doing: "staging usr/pkg".into(),
                    idle: Duration::from_secs(2),
                }),
                _ => {
                    self.world.note(&self.name, "staged");
                    Ok(Staged::default())
                }
            }
        }
        fn plan(&mut self, _src: &Source) -> Result<Planned> {
            self.world.note(&self.name, "plan");
            Ok(Planned::default())
        }
        fn switch(&mut self) -> Result<Done> {
            self.world.note(&self.name, "switch");
            match self.script.fail {
                Fail::Switch => Err(RemoteError::Remote("exchange failed: EIO".into())),
                _ => Ok(Done::default()),
            }
        }
        fn abort(&mut self) {
            self.world.note(&self.name, "abort");
        }
        fn rollback(&mut self) -> Result<(u8, String)> {
            self.world.note(&self.name, "rollback");
            Ok((0, "rolled back".into()))
        }
        fn close(self) {
            self.world.note(&self.name, "close");
        }
        fn kill(self) {
            self.world.note(&self.name, "kill");
        }
    }

    /// Runs `mode` on hosts h1, h2, ... scripted as given.
    fn fleet(scripts: &[Script], mode: Mode<'_>, jobs: usize, world: &World) -> Report {
        let hosts: Vec<Host> = (1..=scripts.len())
            .map(|k| Host {
                name: format!("h{k}"),
                open: Open::default(),
            })
            .collect();
        let dial = |i: usize, _st: Arc<Status>| {
            let script = scripts[i];
            if script.fail == Fail::Connect {
                return Err(io::Error::other(
                    "ssh: connect to host h: Connection refused",
                ));
            }
            Ok(Fake {
                name: hosts[i].name.clone(),
                script,
                world,
            })
        };
        push_all(&hosts, mode, jobs, dial, &NoProgress)
    }

    fn source() -> Source {
        Source::new(Vec::new(), 1, None).unwrap()
    }

    fn push(src: &Source) -> Mode<'_> {
        Mode::Push {
            source: src,
            gate: Gate::default(),
        }
    }

    fn ms(n: u64) -> Script {
        Script {
            stage: Duration::from_millis(n),
            ..Script::default()
        }
    }

    fn failing(fail: Fail) -> Script {
        Script {
            fail,
            ..Script::default()
        }
    }

    #[test]
    fn every_host_stages_before_any_host_switches() {
        let (src, world) = (source(), World::default());
        // The slowest host last to stage, and one that waits for a slot (jobs 2).
        let r = fleet(&[ms(60), ms(0), ms(20), ms(5)], push(&src), 2, &world);
        assert!(r.switched);
        let last_staged = world.at("staged", true).unwrap();
        let first_switch = world.at("switch", false).unwrap();
        assert!(last_staged < first_switch, "{:?}", world.log());
        // And every host planned before any content moved to any.
        let last_planned = world.at("planned", true).unwrap();
        let first_staged = world.at("staged", false).unwrap();
        assert!(last_planned < first_staged, "{:?}", world.log());
        for h in &r.hosts {
            assert!(matches!(h.outcome, Outcome::Switched { .. }), "{h:?}");
            assert_eq!(
                world.did(&h.name),
                ["open", "planned", "staged", "switch", "close"]
            );
        }
        assert!(r.staged_to_switched.is_some());
    }

    #[test]
    fn one_host_failing_to_stage_switches_none() {
        let (src, world) = (source(), World::default());
        let r = fleet(
            &[ms(30), failing(Fail::Stage), ms(0)],
            push(&src),
            4,
            &world,
        );
        assert!(!r.switched);
        assert_eq!(world.at("switch", false), None, "{:?}", world.log());
        for h in [&r.hosts[0], &r.hosts[2]] {
            assert!(matches!(h.outcome, Outcome::NotSwitched(_)), "{h:?}");
            assert_eq!(
                world.did(&h.name),
                ["open", "planned", "staged", "abort", "close"]
            );
        }
        let Outcome::Failed {
            cause,
            while_switching: false,
        } = &r.hosts[1].outcome
        else {
            panic!("{:?}", r.hosts[1]);
        };
        assert_eq!(cause.to_string(), "etc/passwd changed");
        assert_eq!(world.did("h2"), ["open", "planned", "kill"]);
        assert_eq!(r.staged_to_switched, None);
    }

    #[test]
    fn a_host_that_cannot_be_reached_is_named_and_the_others_abort() {
        let (src, world) = (source(), World::default());
        let r = fleet(&[ms(0), failing(Fail::Connect)], push(&src), 4, &world);
        assert!(!r.switched);
        assert_eq!(r.hosts[1].name, "h2");
        let Outcome::Failed { cause, .. } = &r.hosts[1].outcome else {
            panic!("{:?}", r.hosts[1]);
        };
        // As the command said it, with no prefix of ours.
        assert_eq!(
            cause.to_string(),
            "ssh: connect to host h: Connection refused"
        );
        assert!(world.did("h2").is_empty());
        // Known before any content moved: h1 is told to abort after its plan, sent nothing.
        assert_eq!(world.did("h1"), ["open", "planned", "abort", "close"]);
        assert!(
            matches!(r.hosts[0].outcome, Outcome::NotSent),
            "{:?}",
            r.hosts[0]
        );
    }

    #[test]
    fn a_host_that_times_out_is_named_and_the_fleet_follows_the_gate() {
        let (src, world) = (source(), World::default());
        let scripts = [ms(0), failing(Fail::StageStuck), ms(0)];
        let r = fleet(&scripts, push(&src), 4, &world);
        assert!(!r.switched);
        let timed_out: Vec<&str> = r
            .hosts
            .iter()
            .filter(|h| matches!(&h.outcome, Outcome::Failed { cause, .. } if cause.is_timeout()))
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(timed_out, ["h2"]);
        let Outcome::Failed { cause, .. } = &r.hosts[1].outcome else {
            unreachable!()
        };
        assert!(
            cause
                .to_string()
                .starts_with("no progress for 2 s while staging usr/pkg"),
            "{cause}"
        );

        // One failure allowed: the others switch, the host that timed out is still named.
        let world = World::default();
        let gate = Gate {
            max_failed: Some(1),
            ..Gate::default()
        };
        let r = fleet(&scripts, Mode::Push { source: &src, gate }, 4, &world);
        assert!(r.switched);
        assert!(matches!(r.hosts[0].outcome, Outcome::Switched { .. }));
        assert!(matches!(r.hosts[2].outcome, Outcome::Switched { .. }));
        assert!(matches!(&r.hosts[1].outcome, Outcome::Failed { cause, .. } if cause.is_timeout()));
        assert_eq!(world.did("h2"), ["open", "planned", "kill"]);
    }

    /// Pins today's rule (see the module doc): the gate holds until every host staged; a host
    /// whose own switch fails undid it on the host, and the hosts that switched stay switched
    /// (`push --rollback` is the admin's call). The failure is named with its cause.
    #[test]
    fn a_host_failing_to_switch_is_named_and_the_switched_are_not_rolled_back() {
        let (src, world) = (source(), World::default());
        let r = fleet(
            &[ms(0), failing(Fail::Switch), ms(10)],
            push(&src),
            4,
            &world,
        );
        assert!(r.switched);
        let Outcome::Failed {
            cause,
            while_switching: true,
        } = &r.hosts[1].outcome
        else {
            panic!("{:?}", r.hosts[1]);
        };
        assert_eq!(cause.to_string(), "exchange failed: EIO");
        assert_eq!(
            world.did("h2"),
            ["open", "planned", "staged", "switch", "kill"]
        );
        for h in ["h1", "h3"] {
            assert_eq!(
                world.did(h),
                ["open", "planned", "staged", "switch", "close"]
            );
        }
        assert_eq!(world.at("rollback", false), None);
    }

    #[test]
    fn jobs_bounds_the_hosts_staging_at_once() {
        let (src, world) = (source(), World::default());
        let r = fleet(&[ms(20); 5], push(&src), 2, &world);
        assert!(r.switched);
        assert_eq!(world.most_staging.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_dry_run_and_a_rollback_never_switch_and_need_no_gate() {
        let (src, world) = (source(), World::default());
        let r = fleet(&[ms(0), ms(0)], Mode::DryRun(&src), 4, &world);
        assert!(!r.switched);
        for h in &r.hosts {
            assert!(matches!(h.outcome, Outcome::Planned(_)), "{h:?}");
            assert_eq!(world.did(&h.name), ["open", "plan", "close"]);
        }
        let world = World::default();
        let r = fleet(&[ms(0), failing(Fail::Connect)], Mode::Rollback, 4, &world);
        assert!(!r.switched);
        assert!(matches!(
            &r.hosts[0].outcome,
            Outcome::RolledBack { code: 0, .. }
        ));
        assert!(matches!(r.hosts[1].outcome, Outcome::Failed { .. }));
        assert_eq!(world.did("h1"), ["open", "rollback", "close"]);
    }

    #[test]
    fn the_gate_counts_staged_and_failed_hosts() {
        let all = Gate::default();
        assert!(all.opens(3, 0) && !all.opens(2, 1) && !all.opens(0, 0));
        let one_may_fail = Gate {
            max_failed: Some(1),
            ..Gate::default()
        };
        assert!(one_may_fail.opens(2, 1) && !one_may_fail.opens(1, 2));
        let two = Gate {
            min_hosts: Some(2),
            max_failed: None,
        };
        assert!(two.opens(2, 5) && !two.opens(1, 0));
        // Nothing staged never switches, whatever the rule.
        assert!(!Gate {
            min_hosts: Some(0),
            max_failed: None
        }
        .opens(0, 3));
    }
}
