//! The rollback journal (`rolling-back` in the home): what a rollback does after its switch,
//! written before it, so a killed rollback is finished by [`recover`] under the next lock.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::{fangs, restore_meta, saved_base, RolledBack};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::journal::StateDir;
use crate::switch::{self, Home};

/// The journal of a rollback's work after its switch, in the home: `gen G`, `undone N...`, and
/// how the configuration base is set back (`base gen`: the base generation G saved is
/// installed while its record is there — the record goes only after; for a record without
/// one, `base prev`: `conf-base.prev` replaces `conf-base` while it is there; `base none`:
/// `conf-base` goes). Each step is done only while still needed, so doing them again is
/// harmless.
pub(super) const ROLLING_BACK: &str = "rolling-back";

pub(super) fn write_rollback_journal(
    home: &Home,
    rb: &RolledBack,
    state: Option<&StateDir>,
) -> Result<()> {
    let mut j = Vec::new();
    let _ = writeln!(j, "gen {}", rb.generation.id);
    let undone: Vec<String> = rb.undone.iter().map(u64::to_string).collect();
    let _ = writeln!(j, "undone {}", undone.join(" "));
    if let Some(state) = state {
        let how = if saved_base(home, rb.generation.id)?.is_some() {
            "gen"
        } else if crate::protect::base_prev_exists(state, &home.live)? {
            "prev"
        } else {
            "none"
        };
        let _ = writeln!(j, "base {how}");
    }
    let shown = home.path.join(ROLLING_BACK);
    switch::write_file_at(&home.fd, ROLLING_BACK, &j, &shown, home.durable)
}

/// How a rollback sets the configuration base back (see [`ROLLING_BACK`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum BaseBack {
    /// The base the restored generation saved.
    Gen,
    /// `conf-base.prev` (true: it was there when the rollback began), for older records.
    Prev(bool),
}

/// What a rollback journal says: the generation, those undone, how the base goes back.
struct RollingBack {
    gen: u64,
    undone: Vec<u64>,
    base: Option<BaseBack>,
}

fn read_rollback_journal(home: &Home) -> Result<Option<RollingBack>> {
    let shown = home.path.join(ROLLING_BACK);
    let text = match fs::read_to_string(home.io_path(ROLLING_BACK)) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&shown, e)),
    };
    let bad = || {
        Error::bad(
            &shown,
            "unreadable rollback journal; move it away after checking the tree",
        )
    };
    let mut r = RollingBack {
        gen: 0,
        undone: Vec::new(),
        base: None,
    };
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        match k {
            "gen" => r.gen = v.parse().map_err(|_| bad())?,
            "undone" => {
                for n in v.split_whitespace() {
                    r.undone.push(n.parse().map_err(|_| bad())?);
                }
            }
            "base" => {
                r.base = Some(match v {
                    "gen" => BaseBack::Gen,
                    v => BaseBack::Prev(v == "prev"),
                })
            }
            _ => return Err(bad()),
        }
    }
    Ok(Some(r))
}

/// The work after a rollback's switch: the metadata each undone sync set in place set back
/// (newest first, so the oldest's wins), the live tree's stat cache dropped (it described the
/// tree switched away), the configuration base set back (to the one generation `g` saved,
/// read from its record: so before the records go), the records of the undone generations
/// removed (the restored one is live again, newer ones describe states now undone); then the
/// journal goes.
pub(super) fn after_switch_back(
    home: &Home,
    state: Option<&StateDir>,
    g: u64,
    undone: &[u64],
) -> Result<Vec<(PathBuf, io::Error)>> {
    let mut errors = Vec::new();
    for &n in undone.iter().rev() {
        if fsx::lstat_at(
            home.fd.as_fd(),
            &fsx::cstr(format!("gen-{n}.d").as_bytes()).at(&home.path)?,
        )
        .is_ok()
        {
            errors.extend(restore_meta(home, n, &home.live)?);
        }
    }
    if let Some(state) = state {
        if let Ok(p) = state.cache_path(&home.live) {
            let _ = fs::remove_file(p);
        }
        match read_rollback_journal(home)?.and_then(|j| j.base) {
            // With the record gone, this step was done before it went (a repeat): nothing.
            Some(BaseBack::Gen) => {
                if let Some(saved) = saved_base(home, g)? {
                    crate::protect::install_base(state, &home.live, saved.as_deref())?
                }
            }
            Some(BaseBack::Prev(prev)) => {
                crate::protect::undo_base_once(state, &home.live, Some(prev))?
            }
            None => crate::protect::undo_base_once(state, &home.live, None)?,
        }
    }
    for &n in undone {
        let rec = format!("gen-{n}.d");
        let _ = fsx::remove_tree_at(home.fd.as_fd(), rec.as_bytes());
        if n != g {
            let _ = home.remove_in(&Home::gen_name(n));
        }
    }
    let shown = home.path.join(ROLLING_BACK);
    match fsx::unlink_at(home.fd.as_fd(), ROLLING_BACK.as_bytes()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(shown, e)),
        _ => Ok(errors),
    }
}

/// Finishes, under the destination's lock and before anything else, what a killed run left in
/// `home`: its switch ([`Home::recover`]), then a rollback's work after its switch (see
/// [`crate::txn::back`]). A rollback killed before its switch leaves
/// its generation as it was: the setuid bits given back to it are taken again.
pub fn recover(home: &Home, state: Option<&StateDir>) -> Result<()> {
    home.recover()?;
    let Some(j) = read_rollback_journal(home)? else {
        return Ok(());
    };
    let gen_there = fsx::lstat_at(
        home.fd.as_fd(),
        &fsx::cstr(&Home::gen_name(j.gen)).at(&home.path)?,
    )
    .is_ok();
    if gen_there {
        let _ = fangs(home, j.gen, false);
        return fsx::unlink_at(home.fd.as_fd(), ROLLING_BACK.as_bytes())
            .at(home.path.join(ROLLING_BACK));
    }
    after_switch_back(home, state, j.gen, &j.undone).map(drop)
}
