//! Where a pkgsrc installation keeps its trees, read from the jail.
//!
//! Today's pkgsrc keeps its package database inside the prefix (`PKG_DBDIR` =
//! `/usr/pkg/pkgdb`); older installs and NetBSD's base use `/var/db/pkg`; `mk.conf` may move
//! either (`LOCALBASE`, `PKG_DBDIR`). The jail is what is being installed, so the jail says:
//! its `LOCALBASE/etc/mk.conf` or `etc/mk.conf` when they set the variables, else whichever
//! of the usual places exists there.
//!
//! A database inside another tree of the run is *nested*: the outer tree is synced with the
//! database (and its home) excluded, so its switch carries the old database across unchanged,
//! and the database is switched on its own afterwards — the database never lists a package
//! whose files are not in place yet. See [`Layout::phases`].

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The trees of an upgrade, in switching order (databases last), and which are databases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub trees: Vec<PathBuf>,
    /// The package database(s) among `trees`.
    pub dbs: Vec<PathBuf>,
    /// How the trees were found, for `-v` ("PKG_DBDIR from usr/pkg/etc/mk.conf", ...).
    pub how: Vec<String>,
}

/// The variables of `mk.conf` that place the trees (relative to the root, no leading `/`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct MkConf {
    localbase: Option<(PathBuf, PathBuf)>,
    dbdir: Option<(PathBuf, PathBuf)>,
}

/// Reads `NAME= value` assignments (`=`, `?=`, `:=`; the last one wins, as make would for
/// plain assignments) of LOCALBASE and PKG_DBDIR. `${LOCALBASE}` / `${PREFIX}` in PKG_DBDIR
/// are expanded; any other variable is refused by name rather than guessed.
fn read_mk_conf(file: &Path, into: &mut MkConf) -> Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(file, e)),
    };
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim_end_matches(['?', ':', '!', '+']).trim();
        if name != "LOCALBASE" && name != "PKG_DBDIR" {
            continue;
        }
        let mut value = value.trim().to_string();
        if name == "PKG_DBDIR" {
            let base = into
                .localbase
                .as_ref()
                .map(|(p, _)| format!("/{}", p.display()))
                .unwrap_or_else(|| "/usr/pkg".into());
            for v in ["${LOCALBASE}", "${PREFIX}", "$(LOCALBASE)", "$(PREFIX)"] {
                value = value.replace(v, &base);
            }
        }
        let shown = format!("{}:{}", file.display(), n + 1);
        if value.contains('$') {
            return Err(Error::bad(
                file,
                format!(
                    "line {}: {name} uses a variable jailsync cannot expand: {value}",
                    n + 1
                ),
            ));
        }
        let rel = relative(&value).ok_or_else(|| {
            Error::bad(
                file,
                format!(
                    "line {}: {name} must be an absolute path without `..`: {value}",
                    n + 1
                ),
            )
        })?;
        let slot = if name == "LOCALBASE" {
            &mut into.localbase
        } else {
            &mut into.dbdir
        };
        *slot = Some((rel, PathBuf::from(shown)));
    }
    Ok(())
}

/// `/a/b` -> `a/b`; None for a relative path, `/` itself, or one with `..`.
fn relative(abs: &str) -> Option<PathBuf> {
    let p = Path::new(abs);
    if !p.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Is `rel` a package database by its name (`…/db/pkg`, `…/pkgdb`)?
pub fn looks_like_db(rel: &Path) -> bool {
    rel.ends_with("db/pkg") || rel.file_name().is_some_and(|n| n == "pkgdb")
}

impl Layout {
    /// Detects the layout of `jail`. Only trees the jail has are returned; none at all is an
    /// error naming what was looked for.
    pub fn detect(jail: &Path) -> Result<Layout> {
        let mut conf = MkConf::default();
        // etc/mk.conf first: it may set LOCALBASE, which says where the other one is.
        read_mk_conf(&jail.join("etc/mk.conf"), &mut conf)?;
        let base = conf
            .localbase
            .as_ref()
            .map_or_else(|| PathBuf::from("usr/pkg"), |(p, _)| p.clone());
        read_mk_conf(&jail.join(&base).join("etc/mk.conf"), &mut conf)?;
        let base = conf
            .localbase
            .as_ref()
            .map_or_else(|| PathBuf::from("usr/pkg"), |(p, _)| p.clone());
        let mut how = Vec::new();
        let is_dir = |rel: &Path| -> Result<bool> {
            match std::fs::symlink_metadata(jail.join(rel)) {
                Ok(m) => Ok(m.is_dir()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(jail.join(rel), e)),
            }
        };
        let mut trees = Vec::new();
        if is_dir(&base)? {
            trees.push(base.clone());
        }
        let mut dbs = Vec::new();
        match &conf.dbdir {
            Some((db, from)) => {
                how.push(format!(
                    "PKG_DBDIR /{} from {}",
                    db.display(),
                    from.display()
                ));
                if !is_dir(db)? {
                    return Err(Error::bad(
                        jail.join(db),
                        format!(
                            "PKG_DBDIR (set in {}) is not a directory in the jail",
                            from.display()
                        ),
                    ));
                }
                dbs.push(db.clone());
            }
            None => {
                for db in [base.join("pkgdb"), PathBuf::from("var/db/pkg")] {
                    if is_dir(&db)? {
                        dbs.push(db);
                    }
                }
                how.push(if dbs.is_empty() {
                    format!(
                        "no package database in the jail (looked for /{}/pkgdb and /var/db/pkg)",
                        base.display()
                    )
                } else {
                    format!(
                        "package database at {} (found in the jail)",
                        dbs.iter()
                            .map(|d| format!("/{}", d.display()))
                            .collect::<Vec<_>>()
                            .join(" and ")
                    )
                });
            }
        }
        if trees.is_empty() && dbs.is_empty() {
            return Err(Error::bad(
                jail,
                format!(
                    "no package trees in the jail (looked for /{} and its package database; \
                     name them with --tree or `tree` lines in jailsync.conf)",
                    base.display()
                ),
            ));
        }
        trees.retain(|t| !dbs.contains(t));
        trees.extend(dbs.iter().cloned());
        Ok(Layout { trees, dbs, how })
    }

    /// A layout from trees given by the user: those named like a database go last.
    pub fn given(trees: Vec<PathBuf>) -> Layout {
        let (dbs, mut rest): (Vec<PathBuf>, Vec<PathBuf>) =
            trees.into_iter().partition(|t| looks_like_db(t));
        rest.extend(dbs.iter().cloned());
        Layout {
            trees: rest,
            dbs,
            how: vec!["trees as given".into()],
        }
    }

    /// Makes each nested database part of the tree holding it (that tree is switched by
    /// symlink: one rename switches files and database at the same instant, so the database
    /// needs no phase of its own).
    pub fn merge_nested(&mut self) {
        for (db, outer) in self.nested() {
            self.trees.retain(|t| *t != db);
            self.dbs.retain(|t| *t != db);
            self.how.push(format!(
                "package database /{} switched with /{} in one rename (switch by symlink)",
                db.display(),
                outer.display()
            ));
        }
    }

    /// The database trees that lie inside another tree of the run, each with that tree.
    pub fn nested(&self) -> Vec<(PathBuf, PathBuf)> {
        let mut out = Vec::new();
        for db in &self.dbs {
            if let Some(outer) = self.trees.iter().find(|t| *t != db && db.starts_with(t)) {
                out.push((db.clone(), outer.clone()));
            }
        }
        out
    }

    /// The runs that make the upgrade, in order: first every tree but the nested databases
    /// (databases not nested still last among them, switched back to back with the rest), with
    /// the exclude patterns that make an outer tree carry its nested database across; then
    /// the nested databases. Each phase is staged whole before any of its trees is switched.
    pub fn phases(&self) -> Vec<(Vec<PathBuf>, Vec<String>)> {
        let nested = self.nested();
        let mut first = Vec::new();
        let mut excludes = Vec::new();
        for t in &self.trees {
            if nested.iter().any(|(db, _)| db == t) {
                continue;
            }
            first.push(t.clone());
        }
        for (db, outer) in &nested {
            let inner = db.strip_prefix(outer).expect("nested");
            // The database itself, and the home its own switch keeps beside it.
            excludes.push(format!("/{}/", inner.display()));
            let hname =
                crate::switch::home_name(inner.file_name().expect("named").as_encoded_bytes());
            let home = inner
                .parent()
                .unwrap_or(Path::new(""))
                .join(std::ffi::OsStr::from_bytes(&hname));
            excludes.push(format!("/{}/", home.display()));
        }
        let mut out = vec![(first, excludes)];
        if !nested.is_empty() {
            out.push((nested.into_iter().map(|(db, _)| db).collect(), Vec::new()));
        }
        out.retain(|(t, _)| !t.is_empty());
        out
    }
}

/// Reads `JAIL/jailsync.conf`: `tree REL` and `protect GLOB` lines (`#` comments).
pub fn read_conf(jail: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let (mut trees, mut protect) = (Vec::new(), Vec::new());
    for (key, value) in conf_lines(jail)? {
        match key {
            "tree" => trees.push(PathBuf::from(value)),
            "protect" => protect.push(value),
            _ => {}
        }
    }
    Ok((trees, protect))
}

/// The `exclude GLOB` lines of JAIL/jailsync.conf (`--exclude` syntax): paths the live system
/// keeps as they are.
pub fn read_conf_excludes(jail: &Path) -> Result<Vec<String>> {
    Ok(conf_lines(jail)?
        .into_iter()
        .filter(|(k, _)| *k == "exclude")
        .map(|(_, v)| v)
        .collect())
}

/// The `host [HOST:]ROOT` lines of JAIL/jailsync.conf: the hosts `push` of this jail goes to
/// when its command line names none.
pub fn read_conf_hosts(jail: &Path) -> Result<Vec<String>> {
    Ok(conf_lines(jail)?
        .into_iter()
        .filter(|(k, _)| *k == "host")
        .map(|(_, v)| v)
        .collect())
}

/// The `KEY VALUE` lines of JAIL/jailsync.conf (none when it is not there).
fn conf_lines(jail: &Path) -> Result<Vec<(&'static str, String)>> {
    let conf = jail.join("jailsync.conf");
    let text = match std::fs::read_to_string(&conf) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).at(&conf),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = ["tree", "protect", "exclude", "host"]
            .into_iter()
            .find(|k| {
                line.split_once(char::is_whitespace)
                    .is_some_and(|(w, _)| w == *k)
            });
        match (key, line.split_once(char::is_whitespace)) {
            (Some(k), Some((_, v))) => out.push((k, v.trim().to_string())),
            _ => {
                return Err(Error::bad(
                    &conf,
                    format!(
                        "line {}: expected `tree REL`, `protect GLOB`, `exclude GLOB` or \
                         `host [HOST:]ROOT`, found {line:?}",
                        n + 1
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jail(dirs: &[&str], files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for x in dirs {
            std::fs::create_dir_all(d.path().join(x)).unwrap();
        }
        for (f, text) in files {
            std::fs::create_dir_all(d.path().join(f).parent().unwrap()).unwrap();
            std::fs::write(d.path().join(f), text).unwrap();
        }
        d
    }

    fn p(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn modern_layout_nests_the_database() {
        let j = jail(&["usr/pkg/pkgdb", "usr/pkg/etc"], &[]);
        let l = Layout::detect(j.path()).unwrap();
        assert_eq!(l.trees, p(&["usr/pkg", "usr/pkg/pkgdb"]));
        let ph = l.phases();
        assert_eq!(ph.len(), 2);
        assert_eq!(ph[0].0, p(&["usr/pkg"]));
        assert_eq!(
            ph[0].1,
            vec!["/pkgdb/".to_string(), "/.jailsync-pkgdb/".into()]
        );
        assert_eq!(ph[1].0, p(&["usr/pkg/pkgdb"]));
    }

    #[test]
    fn a_nested_database_merged_into_a_linked_prefix_is_one_phase() {
        let mut l = Layout::given(p(&["usr/pkg", "usr/pkg/pkgdb", "var/db/pkg"]));
        l.merge_nested();
        // The nested one goes with its prefix; one not nested stays a tree of its own, last.
        assert_eq!(l.trees, p(&["usr/pkg", "var/db/pkg"]));
        assert_eq!(l.phases(), vec![(p(&["usr/pkg", "var/db/pkg"]), vec![])]);
        assert!(l
            .how
            .iter()
            .any(|h| h.contains("/usr/pkg/pkgdb switched with /usr/pkg")));
    }

    #[test]
    fn layout_of_2005_is_one_phase() {
        let j = jail(&["usr/pkg", "var/db/pkg"], &[]);
        let l = Layout::detect(j.path()).unwrap();
        assert_eq!(l.trees, p(&["usr/pkg", "var/db/pkg"]));
        assert_eq!(l.phases(), vec![(p(&["usr/pkg", "var/db/pkg"]), vec![])]);
    }

    #[test]
    fn mk_conf_moves_the_database() {
        let j = jail(
            &["opt/pkg/var/db", "usr/pkg/pkgdb"],
            &[
                ("etc/mk.conf", "LOCALBASE=\t/opt/pkg # here\n"),
                ("opt/pkg/etc/mk.conf", "PKG_DBDIR?= ${LOCALBASE}/var/db\n"),
            ],
        );
        let l = Layout::detect(j.path()).unwrap();
        assert_eq!(l.trees, p(&["opt/pkg", "opt/pkg/var/db"]));
        assert_eq!(
            l.phases()[0].1,
            vec!["/var/db/".to_string(), "/var/.jailsync-db/".into()]
        );
        let j = jail(
            &["usr/pkg"],
            &[("usr/pkg/etc/mk.conf", "PKG_DBDIR=/var/db/pkg\n")],
        );
        let e = Layout::detect(j.path()).unwrap_err().to_string();
        assert!(
            e.contains("PKG_DBDIR") && e.contains("not a directory"),
            "{e}"
        );
        let j = jail(
            &["usr/pkg"],
            &[("etc/mk.conf", "PKG_DBDIR=${VARBASE}/db/pkg\n")],
        );
        let e = Layout::detect(j.path()).unwrap_err().to_string();
        assert!(e.contains("VARBASE"), "{e}");
    }

    #[test]
    fn empty_jail_is_refused_by_name() {
        let j = jail(&["etc"], &[]);
        let e = Layout::detect(j.path()).unwrap_err().to_string();
        assert!(e.contains("no package trees"), "{e}");
    }
}
