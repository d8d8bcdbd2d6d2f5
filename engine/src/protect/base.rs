//! The base store: the prints of the jail's protected entries at the last successful sync
//! of a destination, the list of the entries kept, and what a rollback does to both.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use super::{Meta, Print, Verdict};
use crate::entry::{Ent, Hash};
use crate::error::{Error, IoContext, Result};
use crate::hash::{from_hex, to_hex};
use crate::journal::StateDir;

/// The prints of the jail's protected entries at the last successful sync of a destination.
#[derive(Debug, Default)]
pub struct Base {
    map: HashMap<Box<[u8]>, Print>,
}

/// Version 1 recorded files only; version 2 every type (its records' codes are
/// [`Print::code`]). Both are read; only version 2 is written, under a new magic so that an
/// older jailsync reads it as no base at all (first-run rules) rather than take a symlink's
/// record for a file's.
const BASE_MAGIC_V1: &[u8] = b"#jailsync-conf-base 1\n";
pub(super) const BASE_MAGIC: &[u8] = b"#jailsync-conf-base 2\n";
const KEPT_MAGIC_V1: &[u8] = b"#jailsync-conf-kept 1\n";
pub(super) const KEPT_MAGIC: &[u8] = b"#jailsync-conf-kept 2\n";

/// Records: `<code><hex hash> <path>\0` (paths never hold a NUL); `extra` more code bytes
/// before the hash (the kept list's type code).
fn parse_records(data: &[u8], magic: &[u8], extra: usize) -> Vec<(Vec<u8>, Hash, Box<[u8]>)> {
    let Some(body) = data.strip_prefix(magic) else {
        return Vec::new();
    };
    body.split_inclusive(|&b| b == 0)
        .filter_map(|r| r.strip_suffix(&[0]))
        .filter_map(|r| {
            let (codes, rest) = r.split_at_checked(1 + extra)?;
            let hex = std::str::from_utf8(rest.get(..64)?).ok()?;
            let path = rest.get(65..)?;
            Some((codes.to_vec(), from_hex(hex)?, path.into()))
        })
        .collect()
}

pub(super) fn write_records<'a>(
    file: &Path,
    magic: &[u8],
    recs: impl Iterator<Item = (Vec<u8>, &'a Hash, Vec<u8>)>,
) -> Result<()> {
    let tmp = file.with_extension("new");
    let r = (|| -> io::Result<()> {
        let mut w = io::BufWriter::new(std::fs::File::create(&tmp)?);
        w.write_all(magic)?;
        for (codes, h, p) in recs {
            w.write_all(&codes)?;
            w.write_all(to_hex(h).as_bytes())?;
            w.write_all(b" ")?;
            w.write_all(&p)?;
            w.write_all(&[0])?;
        }
        w.into_inner().map_err(|e| e.into_error())?;
        std::fs::rename(&tmp, file)
    })();
    r.at(file)
}

impl Base {
    pub fn load(state: &StateDir, dst: &Path) -> Result<Base> {
        let p = state.tree_dir(dst)?.join("conf-base");
        let data = match std::fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(p, e)),
        };
        let v1 = parse_records(&data, BASE_MAGIC_V1, 0)
            .into_iter()
            .map(|(_, h, p)| (p, Print::file(h)));
        let v2 = parse_records(&data, BASE_MAGIC, 0)
            .into_iter()
            .filter_map(|(c, h, p)| {
                let kind = Print::kind_of_code(c[0])?;
                Some((p, Print { kind, digest: h }))
            });
        Ok(Base {
            map: v1.chain(v2).collect(),
        })
    }

    pub fn get(&self, path: &[u8]) -> Option<&Print> {
        self.map.get(path)
    }
}

/// One entry kept with the admin's edits at the last run (for `verify` and `conf-diff`).
#[derive(Clone, Debug)]
pub struct Kept {
    pub verdict: Verdict,
    pub path: Box<[u8]>,
    /// What the run kept (and its metadata; None in a list written before it was recorded).
    pub live: Print,
    pub meta: Option<Meta>,
}

impl Kept {
    /// Whether the live entry `e` at `path` under `root` is still what the run kept: same
    /// type and content, and same mode, owner and group where those were recorded.
    pub fn matches(&self, root: BorrowedFd<'_>, e: &Ent<'_>) -> io::Result<bool> {
        if e.kind != self.live.kind || self.meta.is_some_and(|m| m != Meta::of(e)) {
            return Ok(false);
        }
        Ok(Print::of(root, &self.path, e)? == self.live)
    }
}

/// The kept list's records: `<verdict><type>`, the hash, then `<mode>:<uid>:<gid>/` in front
/// of the path (a path never starts with a digit-colon run ending in `/`, since it is
/// relative; the `/` ends the field).
pub(super) fn kept_meta_prefix(m: &Meta) -> Vec<u8> {
    format!("{:o}:{}:{}/", m.mode, m.uid, m.gid).into_bytes()
}

fn split_kept_meta(p: &[u8]) -> Option<(Meta, &[u8])> {
    let slash = p.iter().position(|&b| b == b'/')?;
    let s = std::str::from_utf8(&p[..slash]).ok()?;
    let mut it = s.split(':');
    let mode = u16::from_str_radix(it.next()?, 8).ok()?;
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    Some((Meta { mode, uid, gid }, &p[slash + 1..]))
}

/// The entries kept with the admin's edits at the last run.
pub fn load_kept(state: &StateDir, dst: &Path) -> Vec<Kept> {
    let Ok(p) = state.tree_dir(dst).map(|d| d.join("conf-kept")) else {
        return Vec::new();
    };
    let data = std::fs::read(p).unwrap_or_default();
    let v1 = parse_records(&data, KEPT_MAGIC_V1, 0)
        .into_iter()
        .filter_map(|(c, h, p)| {
            Some(Kept {
                verdict: Verdict::from_code(c[0])?,
                path: p,
                live: Print::file(h),
                meta: None,
            })
        });
    let v2 = parse_records(&data, KEPT_MAGIC, 1)
        .into_iter()
        .filter_map(|(c, h, p)| {
            let (meta, path) = split_kept_meta(&p)?;
            Some(Kept {
                verdict: Verdict::from_code(c[0])?,
                path: path.into(),
                live: Print {
                    kind: Print::kind_of_code(c[1])?,
                    digest: h,
                },
                meta: Some(meta),
            })
        });
    v1.chain(v2).collect()
}

/// Adds `kept` to `dst`'s kept list as kept with the jail's version beside
/// (`NAME.jailsync-new`): a rollback that carried the admin's file across writes them, so
/// `conf-diff` and `verify` know them as after a sync.
pub fn add_kept_new(state: &StateDir, dst: &Path, kept: &[(Box<[u8]>, Print, Meta)]) -> Result<()> {
    if kept.is_empty() {
        return Ok(());
    }
    let mut all = load_kept(state, dst);
    all.retain(|k| !kept.iter().any(|(p, _, _)| *p == k.path));
    all.extend(kept.iter().map(|(p, print, m)| Kept {
        verdict: Verdict::KeptNew,
        path: p.clone(),
        live: *print,
        meta: Some(*m),
    }));
    let dir = state.tree_dir(dst)?;
    let recs: Vec<(Vec<u8>, Hash, Vec<u8>)> = all
        .iter()
        .map(|k| {
            let meta = k.meta.unwrap_or(Meta {
                mode: 0,
                uid: 0,
                gid: 0,
            });
            let mut p = kept_meta_prefix(&meta);
            p.extend_from_slice(&k.path);
            (vec![k.verdict.code(), k.live.code()], k.live.digest, p)
        })
        .collect();
    write_records(
        &dir.join("conf-kept"),
        KEPT_MAGIC,
        recs.iter().map(|(c, h, p)| (c.clone(), h, p.clone())),
    )
}

/// The name of the copy of the base a generation's record saves (see [`install_base`]).
pub const GEN_BASE: &str = "conf-base";

/// The file holding `dst`'s base: what a generation saves as the base before its sync (see
/// [`install_base`]).
pub fn base_path(state: &StateDir, dst: &Path) -> Result<PathBuf> {
    Ok(state.tree_dir(dst)?.join("conf-base"))
}

/// After a rollback to a generation that saved the base before its sync (`saved`, or `None`
/// when there was none then): that base is `dst`'s again, however many syncs the rollback
/// undoes — else every protected file the restored tree holds that a later sync changed
/// would look edited to the next run, and the jail's versions would never be installed.
/// `conf-base.prev` goes too (it is the base before a sync now undone), and so does the kept
/// list, which described the tree switched away. Safe to repeat: the same bytes are written
/// again.
pub fn install_base(state: &StateDir, dst: &Path, saved: Option<&Path>) -> Result<()> {
    let dir = state.tree_dir(dst)?;
    let cur = dir.join("conf-base");
    match saved {
        Some(from) => {
            let data = std::fs::read(from).at(from)?;
            // Whole or old, as `write_records` writes it.
            let tmp = cur.with_extension("new");
            std::fs::write(&tmp, &data).at(&tmp)?;
            std::fs::rename(&tmp, &cur).at(&cur)?;
        }
        None => remove_if_there(&cur)?,
    }
    remove_if_there(&dir.join("conf-base.prev"))?;
    remove_if_there(&dir.join("conf-kept"))
}

fn remove_if_there(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(p, e)),
        _ => Ok(()),
    }
}

/// Whether the base before the last sync's is kept (`conf-base.prev`).
pub fn base_prev_exists(state: &StateDir, dst: &Path) -> Result<bool> {
    Ok(state.tree_dir(dst)?.join("conf-base.prev").exists())
}

/// [`undo_base`] made safe to repeat (a killed rollback's is done again by the next command):
/// `prev` says whether `conf-base.prev` was there when the rollback began; while it still is,
/// it replaces `conf-base`; once gone, that step is done. Without `prev` known, as
/// [`undo_base`].
pub fn undo_base_once(state: &StateDir, dst: &Path, prev: Option<bool>) -> Result<()> {
    let dir = state.tree_dir(dst)?;
    match prev {
        Some(true) if !dir.join("conf-base.prev").exists() => {
            let kept = dir.join("conf-kept");
            if kept.exists() {
                std::fs::remove_file(&kept).at(&kept)?;
            }
            Ok(())
        }
        _ => undo_base(state, dst),
    }
}

/// After a rollback of `dst`'s last sync whose generation saved no base (recorded by an
/// older jailsync): the base is again the one before it (else every protected file the
/// rollback restored would look edited to the next run), and the kept list, which described
/// the tree switched away, is dropped. Only the last sync's can be undone this way: a rollback
/// past several such generations leaves the base of the one before the last.
pub fn undo_base(state: &StateDir, dst: &Path) -> Result<()> {
    let dir = state.tree_dir(dst)?;
    let prev = dir.join("conf-base.prev");
    let cur = dir.join("conf-base");
    if prev.exists() {
        std::fs::rename(&prev, &cur).at(&cur)?;
    } else if cur.exists() {
        std::fs::remove_file(&cur).at(&cur)?;
    }
    let kept = dir.join("conf-kept");
    if kept.exists() {
        std::fs::remove_file(&kept).at(&kept)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, Kind};

    #[test]
    fn records_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r");
        let h = [7u8; 32];
        let recs = [
            (b"Nl".to_vec(), &h, b"644:0:0/etc/a b".to_vec()),
            (b"DB".to_vec(), &h, b"4755:1:2/etc/\n".to_vec()),
        ];
        write_records(&f, KEPT_MAGIC, recs.iter().cloned()).unwrap();
        let got = parse_records(&std::fs::read(&f).unwrap(), KEPT_MAGIC, 1);
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].0, b"Nl");
        let (m, p) = split_kept_meta(&got[1].2).unwrap();
        assert_eq!((m.mode, m.uid, m.gid, p), (0o4755, 1, 2, &b"etc/\n"[..]));
    }

    /// A base written before types were recorded is still read: its records are files.
    #[test]
    fn a_version_1_base_is_read_as_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("r");
        let h = [9u8; 32];
        let recs = [(b"B".to_vec(), &h, b"etc/a.conf".to_vec())];
        write_records(&f, BASE_MAGIC_V1, recs.iter().cloned()).unwrap();
        let data = std::fs::read(&f).unwrap();
        let got = parse_records(&data, BASE_MAGIC_V1, 0);
        assert_eq!(got.len(), 1);
        assert!(parse_records(&data, BASE_MAGIC, 0).is_empty());
        let mut l = Entry::new(Kind::Symlink);
        l.set_target(Some(b"/srv/conf/a.conf"[..].into()));
        let p = Print::special(&l);
        assert_ne!(
            p,
            Print::file(*blake3::hash(b"/srv/conf/a.conf").as_bytes())
        );
        assert_eq!(Print::kind_of_code(p.code()), Some(Kind::Symlink));
    }
}
