//! A generation's record (`gen-<N>.d/`, see [`super`]): written before the switch, and the
//! fields rollback reads back from its `info`.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::meta_io;
use crate::entry::{Entries, Kind};
use crate::error::{Error, IoContext, Result};
use crate::fsx;
use crate::manifest;
use crate::switch::{self, Home};

/// What a new generation records, written before the switch.
pub struct Record<'a> {
    pub source: &'a Path,
    pub changes: u64,
    /// The live tree before the switch (its non-directories' inodes go to `inos`).
    pub old: &'a Entries,
    /// Indices in `old` (path order) of the entries whose metadata the sync changed in place.
    pub meta: Vec<u32>,
    /// The live tree as the switch will leave it: two path-sorted lists, merged, without the
    /// (sorted) paths in `missing`.
    pub after: (&'a Entries, &'a Entries),
    pub missing: &'a [Box<[u8]>],
    /// The sync's `--exclude` patterns: rollback compares only what the sync saw.
    pub excludes: &'a [String],
    /// Whether the entries' xattrs were read (and `meta`'s are to be restored).
    pub xattrs: bool,
    /// The file holding the destination's configuration base now, before this sync writes
    /// the next one (absent: there is none): saved with the generation.
    pub conf_base: &'a Path,
    /// Immutable or append-only entries the switch goes around (they stay live): a rollback
    /// goes around them too.
    pub pinned: &'a [Box<[u8]>],
    /// The protection rules and the tree's root-relative name: a rollback carries the
    /// admin's configuration by them.
    pub protect: Option<&'a (crate::protect::Rules, Vec<u8>)>,
}

pub fn write_record(home: &Home, n: u64, method: &str, r: &Record<'_>) -> Result<()> {
    let name = format!("gen-{n}.d");
    let shown = home.path.join(&name);
    let _ = fsx::remove_tree_at(home.fd.as_fd(), name.as_bytes());
    let dir = switch::private_dir(&home.fd, name.as_bytes(), &shown)?;
    let stamp = crate::cache::now();
    manifest::write_ents_stat(
        &meta_io(home, n).join("after"),
        stamp,
        crate::entry::merged(r.after.0, r.after.1)
            .filter(|e| r.missing.binary_search_by(|m| (**m).cmp(e.path)).is_err()),
        true,
    )?;
    crate::stage::save_meta(
        &dir,
        "meta",
        r.meta.iter().map(|&j| r.old.at(j as usize)),
        r.xattrs,
        &shown.join("meta"),
        home.durable,
    )?;
    let mut inos: Vec<u64> = r
        .old
        .iter()
        .filter(|e| e.kind != Kind::Dir)
        .map(|e| e.ino)
        .collect();
    inos.sort_unstable();
    let bytes: Vec<u8> = inos.iter().flat_map(|i| i.to_le_bytes()).collect();
    let inos = fsx::create_excl_at(dir.as_fd(), b"inos").at(shown.join("inos"))?;
    std::io::Write::write_all(&mut fs::File::from(inos), &bytes).at(shown.join("inos"))?;
    let saved = save_base(home, &dir, &shown, r.conf_base)?;
    let mut info = Vec::new();
    let _ = writeln!(info, "time={}", stamp.0);
    let _ = writeln!(info, "source={}", r.source.display());
    let _ = writeln!(info, "method={method}");
    let _ = writeln!(info, "changes={}", r.changes);
    let _ = writeln!(info, "conf_base={}", if saved { "saved" } else { "none" });
    if r.xattrs {
        let _ = writeln!(info, "xattrs=1");
    }
    for x in r.excludes {
        let _ = writeln!(info, "exclude={x}");
    }
    for p in r.pinned {
        let _ = writeln!(info, "pinned={}", switch::hex(p));
    }
    if let Some((rules, prefix)) = r.protect {
        let _ = writeln!(info, "protect_defaults={}", u8::from(rules.defaults));
        let _ = writeln!(info, "protect_prefix={}", switch::hex(prefix));
        for g in &rules.given {
            let _ = writeln!(info, "protect={g}");
        }
    }
    // `info` last: a record is complete when it is there.
    switch::write_file_at(&dir, "info", &info, &shown.join("info"), home.durable)
}

/// Copies the configuration base `from` (the state dir's, before the sync) into the record
/// `dir`; false when there is none. A rollback to this generation installs it: the base
/// belongs with the tree it describes, not with the newest sync.
fn save_base(home: &Home, dir: &OwnedFd, shown: &Path, from: &Path) -> Result<bool> {
    match fs::read(from) {
        Ok(data) => {
            let to = shown.join(crate::protect::GEN_BASE);
            switch::write_file_at(dir, crate::protect::GEN_BASE, &data, &to, home.durable)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(from, e)),
    }
}

/// The configuration base generation `n` saved: `Some(Some(file))`, `Some(None)` when there
/// was none before its sync, `None` when its record predates saving it (or is gone).
pub(super) fn saved_base(home: &Home, n: u64) -> Result<Option<Option<PathBuf>>> {
    let rec = meta_io(home, n);
    let info = match fs::read_to_string(rec.join("info")) {
        Ok(i) => i,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(home.path.join(format!("gen-{n}.d/info")), e)),
    };
    Ok(match info_field(&info, "conf_base") {
        Some("saved") => Some(Some(rec.join(crate::protect::GEN_BASE))),
        Some("none") => Some(None),
        _ => None,
    })
}

/// A `key=value` line of a record's `info`.
pub(super) fn info_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}
