//! `jail init`: the working directories, the `.jail` marker and the `mountpoints` file.
//! Checks everything first, so a refusal leaves the disk untouched.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::{Error, IoAt, Result};
use super::mountpoints::{self, Mountpoints};
use super::{MARKER_FILE, MOUNTPOINTS_FILE};

/// The seed's working directories; the temp ones are world-writable and sticky like `/tmp`.
const DIRS: &[(&str, u32)] = &[
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("var", 0o755),
    ("usr/obj", 0o755),
    ("usr/pkg", 0o755),
    ("usr/tmp", 0o1777),
];

pub const DEFAULT_MARKER: &str = "PKG-JAIL";

/// What the jail will hold, which decides the directories and mount points `init` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitLayout {
    /// The seed's: pkgsrc's working directories and package database, the host's system
    /// directories mounted read-only, `usr/pkgsrc` read-write.
    #[default]
    Pkgsrc,
    /// A jail with a system of its own (debootstrap): only `proc`, `dev` and `tmp` mounted,
    /// no pkgsrc directories.
    Debian,
    /// Nothing but the marker and an empty `mountpoints` file.
    Bare,
}

/// The mount points of a [`InitLayout::Debian`] jail.
const OWN_SYSTEM: &[&str] = &["proc proc", "dev rbind", "tmp tmpfs"];

#[derive(Debug, Clone)]
pub struct InitOptions<'a> {
    pub marker: &'a str,
    /// Copy this `mountpoints` file instead of writing the seed's list.
    pub mountpoints: Option<&'a Path>,
    /// Overwrite existing `.jail` and `mountpoints`.
    pub force: bool,
    /// Where the host's paths are looked up when filtering the seed list.
    pub host_root: &'a Path,
    /// The package database directory to create (relative to the jail; `PKG_DBDIR` of the
    /// layout the jail will hold: `usr/pkg/pkgdb` today, `var/db/pkg` for the 2005 one).
    pub pkg_dbdir: &'a Path,
    pub layout: InitLayout,
}

#[derive(Debug, Clone)]
pub struct Initialized {
    pub root: PathBuf,
    pub created: Vec<PathBuf>,
    pub written: Vec<PathBuf>,
    /// Seed entries left out because the host lacks them.
    pub left_out: Vec<String>,
}

pub fn init(path: &Path, opts: &InitOptions) -> Result<Initialized> {
    if path.exists() && path.canonicalize().at(path)? == Path::new("/") {
        return Err(Error::refused(path, "refusing to use / as a jail"));
    }
    if opts.marker.is_empty() || opts.marker.contains(['\n', '\0']) {
        return Err(Error::refused(
            path.join(MARKER_FILE),
            "the marker must be one non-empty line",
        ));
    }
    if opts.pkg_dbdir.is_absolute()
        || opts
            .pkg_dbdir
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(Error::refused(
            opts.pkg_dbdir,
            "the package database must be a relative path without `..`",
        ));
    }
    let mut left_out = Vec::new();
    let mp_text = match opts.mountpoints {
        None if opts.layout == InitLayout::Debian => mountpoints::render(OWN_SYSTEM).into_bytes(),
        None if opts.layout == InitLayout::Bare => mountpoints::render(&[]).into_bytes(),
        Some(f) => {
            let text = fs::read(f).at(f)?;
            Mountpoints::parse(f, &text)?;
            text
        }
        None => {
            let keep: Vec<&str> = mountpoints::SEED
                .iter()
                .copied()
                .filter(|l| {
                    let p = l.split_whitespace().next().unwrap_or(l);
                    let there = fs::symlink_metadata(opts.host_root.join(p)).is_ok();
                    if !there {
                        left_out.push(p.to_string());
                    }
                    there
                })
                .collect();
            mountpoints::render(&keep).into_bytes()
        }
    };
    let files = [
        (
            path.join(MARKER_FILE),
            format!("{}\n", opts.marker).into_bytes(),
        ),
        (path.join(MOUNTPOINTS_FILE), mp_text),
    ];
    if !opts.force {
        for (f, _) in &files {
            if fs::symlink_metadata(f).is_ok() {
                return Err(Error::refused(
                    f,
                    "already exists (use --force to overwrite)",
                ));
            }
        }
    }

    let mut created = Vec::new();
    if !path.exists() {
        fs::create_dir_all(path).at(path)?;
        created.push(path.to_path_buf());
    }
    let root = path.canonicalize().at(path)?;
    let dirs: &[(&str, u32)] = match opts.layout {
        InitLayout::Pkgsrc => DIRS,
        InitLayout::Debian => &[("tmp", 0o1777)],
        InitLayout::Bare => &[],
    };
    for (d, mode) in dirs {
        let dir = root.join(d);
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(*mode)).at(&dir)?;
                created.push(dir);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    let db = root.join(opts.pkg_dbdir);
    if opts.layout == InitLayout::Pkgsrc && !db.is_dir() {
        fs::create_dir_all(&db).at(&db)?;
        created.push(db);
    }
    let mut written = Vec::new();
    for (f, text) in files {
        let f = root.join(f.file_name().expect("fixed file name"));
        write_replace(&f, &text)?;
        written.push(f);
    }
    Ok(Initialized {
        root,
        created,
        written,
        left_out,
    })
}

/// Writes beside the file and renames over it, so a reader never sees half a file.
fn write_replace(f: &Path, text: &[u8]) -> Result<()> {
    let mut tmp = f.as_os_str().to_owned();
    tmp.push(".jailsync-tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text).at(&tmp)?;
    fs::rename(&tmp, f).at(f)
}
