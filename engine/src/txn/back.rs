//! Rollback's transaction: "make an older release of these trees live again", by switching
//! each checked generation ([`generation::check`]) back in, every tree back to back.
//!
//! The trees go through four types, each step a method that consumes the one before, so
//! nothing is switched back before every tree passed the guard:
//!
//! 1. [`Checked`]: the generations found and compared with the live trees; nothing changed.
//! 2. [`Checked::guard`] → [`Guarded`]: every tree's excluded entries carried into its
//!    generation, then looked at once more (a change since would be left in the tree
//!    switched away).
//! 3. [`Guarded::prepare`] → [`Ready`]: the last safe point. The stop flag, then the switch
//!    journals (each reading the mount table: a mount below a live tree is a bound its switch
//!    back goes around), a mount inside a generation refused, the rollback journals written
//!    (what follows the switch: a rollback killed after them is finished by the next
//!    command), the generations' setuid bits given back.
//! 4. [`Ready::switch`] → [`Switched`]: the exchanges, back to back ([`Exchanges`], as a
//!    sync's); if one fails, those made are switched forward again: never half. Then
//!    [`Switched::finish`]: the trees switched out defanged, the undone syncs' metadata set
//!    back and records dropped, DST's parents' mtimes put back.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;

use super::{Exchanges, Made};
use crate::error::{Error, Result};
use crate::generation::{self, RolledBack};
use crate::journal::StateDir;
use crate::switch::{self, Home};

/// The trees of one rollback: each home and its checked generation, in the order given.
pub type Items<'a, 'b> = &'a mut [(&'b Home, &'b mut RolledBack)];

/// What every step holds.
struct Batch<'a, 'b> {
    items: Items<'a, 'b>,
    state: Option<&'a StateDir>,
    /// Set (to the signal's number) by the caller's signal handler: checked at the last safe
    /// point, never between the switches.
    stop: Option<&'a AtomicUsize>,
}

/// The generations checked: nothing changed yet.
#[must_use = "nothing is switched back until every step is taken"]
pub struct Checked<'a, 'b>(Batch<'a, 'b>);
/// Every tree's excluded entries carried into its generation and guarded.
#[must_use = "nothing is switched back until every step is taken"]
pub struct Guarded<'a, 'b>(Batch<'a, 'b>);
/// Journals written, mounts read: only the exchanges are left.
#[must_use = "a ready rollback is switched, or its journals are finished by the next command"]
pub struct Ready<'a, 'b>(Batch<'a, 'b>, Exchanges);
/// The switches back made; per tree, whether DST's parent gets its mtime back.
#[must_use = "a switched rollback is finished, or by the next command"]
pub struct Switched<'a, 'b>(Batch<'a, 'b>, Made, Vec<bool>);

/// Switches the checked generations back in, every tree back to back (journals first), then
/// sets back the metadata each undone sync changed in place and drops their records. If one
/// tree cannot be switched, those switched are switched forward again: never half.
pub fn switch_back_all(items: Items<'_, '_>, state: Option<&StateDir>) -> Result<()> {
    Checked::new(items, state, None)
        .guard()?
        .prepare()?
        .switch()?
        .finish()
}

impl<'a, 'b> Checked<'a, 'b> {
    /// The rollback of `items`; `stop` is the flag a signal handler sets (see
    /// [`Guarded::prepare`]).
    pub fn new(
        items: Items<'a, 'b>,
        state: Option<&'a StateDir>,
        stop: Option<&'a AtomicUsize>,
    ) -> Self {
        Checked(Batch { items, state, stop })
    }

    /// Step 2: every tree's excluded entries carried into its generation, then (once all
    /// are) looked at once more: all before anything is switched, for every tree.
    pub fn guard(self) -> Result<Guarded<'a, 'b>> {
        let b = self.0;
        for (home, rb) in b.items.iter() {
            generation::carry_in(home, rb)?;
        }
        for (home, rb) in b.items.iter() {
            generation::guard_carried(home, rb)?;
        }
        Ok(Guarded(b))
    }
}

impl<'a, 'b> Guarded<'a, 'b> {
    /// Step 3, the last safe point: the stop flag, the switch journals around the mounts, a
    /// mount inside a generation refused (everything prepared forgotten), the rollback
    /// journals, the setuid bits given back.
    pub fn prepare(self) -> Result<Ready<'a, 'b>> {
        let b = self.0;
        if let Some((home, _)) = b.items.first() {
            crate::opts::check_stop(
                b.stop,
                &home.live,
                "before the switch back: nothing was switched back, every live tree is as it was (run the same command again to roll back)",
            )?;
        }
        let pending = prepare_all(&b)?;
        if let Err(e) = no_mount_in_generations(&b) {
            for (p, (h, _)) in pending.into_iter().zip(b.items.iter()) {
                if let Some(p) = p {
                    h.cancel(p);
                }
            }
            return Err(e);
        }
        for (home, rb) in b.items.iter() {
            generation::journal_back(home, rb, b.state)?;
        }
        for (home, rb) in b.items.iter_mut() {
            generation::give_fangs_back(home, rb)?;
        }
        Ok(Ready(b, Exchanges(pending)))
    }
}

/// Every tree's switch back journaled, reading the mount table as each is planned and once
/// more after (see [`switch::prepare_around_mounts`]).
fn prepare_all(b: &Batch<'_, '_>) -> Result<Vec<Option<switch::Pending>>> {
    let homes: Vec<Option<(&Home, usize)>> = b
        .items
        .iter()
        .enumerate()
        .map(|(i, (h, _))| Some((*h, i)))
        .collect();
    switch::prepare_around_mounts(&homes, |h, i| generation::prepare_back(h, b.items[i].1))
}

/// A mount inside a generation (a switch raced a `mount`) would come into the live tree.
fn no_mount_in_generations(b: &Batch<'_, '_>) -> Result<()> {
    let trees: Vec<PathBuf> = b
        .items
        .iter()
        .map(|(h, rb)| h.gen_path(rb.generation.id))
        .collect();
    let trees: Vec<&Path> = trees.iter().map(PathBuf::as_path).collect();
    match switch::first_mount_below(&trees) {
        Some((t, m)) => Err(Error::bad(
            m,
            format!(
                "is mounted below {}: nothing was switched back (the switch would move the mount); unmount it and run again",
                t.display()
            ),
        )),
        None => Ok(()),
    }
}

impl<'a, 'b> Ready<'a, 'b> {
    /// Step 4: the exchanges, back to back. If one fails, those made are switched forward
    /// again, and every generation is one still: defanged again, no rollback left to finish.
    pub fn switch(self) -> Result<Switched<'a, 'b>> {
        let Ready(b, exchanges) = self;
        // As a sync's switch does, a switch back leaves DST's parent's mtime as it was,
        // unless another program wrote there since the rollback looked (see
        // `Home::parent_as_found`).
        let put_back: Vec<bool> = b.items.iter().map(|(h, _)| h.parent_as_found()).collect();
        match exchanges.make(|k| b.items[k].0, |_, _| Ok(())) {
            Ok(made) => Ok(Switched(b, made, put_back)),
            Err(e) => {
                for (h, rb) in b.items.iter() {
                    generation::unjournal_back(h, rb);
                }
                Err(e)
            }
        }
    }
}

impl Switched<'_, '_> {
    /// After the switches back: each journal finished, the tree switched out defanged and
    /// kept, the rollback's journaled work done; DST's parents' mtimes put back.
    pub fn finish(self) -> Result<()> {
        let Switched(b, made, put_back) = self;
        for one in made {
            let (home, rb) = &mut b.items[one.tree];
            let done = one.finish(home)?;
            generation::after_back(home, rb, b.state, done)?;
        }
        for ((home, _), _) in b.items.iter().zip(&put_back).filter(|(_, &p)| p) {
            let _ = home.put_parent_mtime_back();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use crate::sync::{self, Pools, SyncOpts};
    use std::fs;
    use std::sync::atomic::Ordering;

    /// A destination synced twice (`v1`, then `v2`), its generations kept; the temp dir, the
    /// destination, the state dir.
    fn synced_twice() -> (tempfile::TempDir, PathBuf, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let base = fs::canonicalize(t.path()).unwrap();
        let (src, dst) = (base.join("src"), base.join("dst"));
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::create_dir_all(dst.join("etc")).unwrap();
        let state = sync::open_state(&base.join("state"), &[&src, &dst]).unwrap();
        let opts = SyncOpts {
            keep: 10,
            ..SyncOpts::default()
        };
        let pools = Pools::new(2);
        for v in ["v1\n", "v2\n"] {
            fs::write(src.join("etc/app.conf"), v).unwrap();
            let mut t = sync::prepare(&src, &dst, Some(&state), &opts, &pools, &Silent).unwrap();
            super::super::switch_all(std::slice::from_mut(&mut t), &state, &opts, &pools, &Silent)
                .unwrap();
        }
        (t, dst, state)
    }

    fn conf(dst: &Path) -> String {
        fs::read_to_string(dst.join("etc/app.conf")).unwrap()
    }

    /// No switch nor rollback journal left in the home.
    fn no_journals(home: &Home) -> bool {
        !home.io_path("switching").exists() && !home.io_path("rolling-back").exists()
    }

    #[test]
    fn a_stop_asked_before_the_last_safe_point_switches_nothing_back() {
        let (_t, dst, state) = synced_twice();
        let home = Home::existing(&dst).unwrap().expect("a home");
        let pools = Pools::new(2);
        let mut r = generation::check(&home, None, &pools.walk).unwrap();
        let stop = AtomicUsize::new(15);
        let mut items = [(&home, &mut r)];
        let guarded = Checked::new(&mut items, Some(&state), Some(&stop))
            .guard()
            .unwrap();
        let e = guarded.prepare().err().expect("stopped");
        assert!(
            matches!(&e, Error::Stopped { signal: 15, path, .. } if *path == dst),
            "{e}"
        );
        assert_eq!(conf(&dst), "v2\n");
        assert!(no_journals(&home));
        // Asked again without the signal, the same rollback goes through.
        stop.store(0, Ordering::Relaxed);
        let mut r = generation::check(&home, None, &pools.walk).unwrap();
        switch_back_all(&mut [(&home, &mut r)], Some(&state)).unwrap();
        assert_eq!(conf(&dst), "v1\n");
        assert!(r.switched.is_some() && r.kept_as.is_some());
        assert!(no_journals(&home));
    }

    #[test]
    fn a_failed_switch_back_leaves_the_tree_and_its_generation_as_they_were() {
        let (_t, dst, state) = synced_twice();
        let home = Home::existing(&dst).unwrap().expect("a home");
        let pools = Pools::new(2);
        let mut r = generation::check(&home, None, &pools.walk).unwrap();
        let gen = home.gen_path(r.generation.id);
        let aside = home.path.join("aside");
        let mut items = [(&home, &mut r)];
        let ready = Checked::new(&mut items, Some(&state), None)
            .guard()
            .unwrap()
            .prepare()
            .unwrap();
        assert!(home.io_path("rolling-back").exists(), "journaled first");
        // The generation is gone by the exchange: it fails.
        fs::rename(&gen, &aside).unwrap();
        assert!(ready.switch().is_err());
        fs::rename(&aside, &gen).unwrap();
        assert_eq!(conf(&dst), "v2\n");
        assert!(no_journals(&home), "a rollback left to finish");
        assert_eq!(conf(&gen), "v1\n");
        // Nothing half done: the rollback can be made again.
        let mut r = generation::check(&home, None, &pools.walk).unwrap();
        switch_back_all(&mut [(&home, &mut r)], Some(&state)).unwrap();
        assert_eq!(conf(&dst), "v1\n");
    }
}
