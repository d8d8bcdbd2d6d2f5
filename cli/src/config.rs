//! The configuration file (`/etc/jailsync.conf`, `--config FILE`, `JAILSYNC_CONFIG`): TOML
//! defaults for the options an admin would otherwise repeat on every run. A flag or its
//! environment variable overrides a key; the rule keys (`exclude`, `filter`, `protect`) add
//! to what is given on the command line, after it. `jailsync config` prints every setting in
//! force and where it came from.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;
use toml::Spanned;

use crate::args::{exit, Global, DEFAULT_STATE_DIR, OLD_STATE_DIR};

/// Read when `--config` and `JAILSYNC_CONFIG` are not given; its absence is no error.
pub const DEFAULT_FILE: &str = "/etc/jailsync.conf";

/// The file as written; each value keeps its place for `jailsync config`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct File {
    state_dir: Option<Spanned<PathBuf>>,
    keep: Option<Spanned<usize>>,
    max_delete: Option<Spanned<u64>>,
    exclude: Option<Spanned<Vec<String>>>,
    filter: Option<Spanned<Vec<String>>>,
    protect: Option<Spanned<Vec<String>>>,
    trees: Option<Spanned<Vec<PathBuf>>>,
    hosts: Option<Spanned<Vec<String>>>,
    ssh: Option<Spanned<String>>,
    switch: Option<Spanned<crate::args::SwitchArg>>,
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    Default,
    /// The old default state dir, found in use.
    OldDefault,
    File(PathBuf, usize),
    Env(&'static str),
    Flag(&'static str),
}

impl std::fmt::Display for From {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            From::Default => write!(f, "default"),
            From::OldDefault => write!(f, "default of earlier versions, found in use"),
            From::File(p, line) => write!(f, "{}:{line}", p.display()),
            From::Env(v) => write!(f, "environment {v}"),
            From::Flag(v) => write!(f, "--{v}"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone)]
pub struct Set<T> {
    pub value: T,
    pub from: From,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file read, and whether it was there.
    pub file: PathBuf,
    pub found: bool,
    pub state_dir: Set<PathBuf>,
    pub keep: Set<usize>,
    pub max_delete: Set<Option<u64>>,
    pub exclude: Set<Vec<String>>,
    pub filter: Set<Vec<String>>,
    pub protect: Set<Vec<String>>,
    pub trees: Set<Vec<PathBuf>>,
    pub hosts: Set<Vec<String>>,
    pub ssh: Set<String>,
    /// `--switch` unless given: how a destination is switched (none: as it is now).
    pub switch: Set<Option<crate::args::SwitchArg>>,
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Reads the file `g` names (or the default one, if it is there).
/// (`read` false: the defaults alone, for a command no setting changes, so that a broken
/// file cannot keep `man` or `completions` from working.)
pub fn load(g: &Global, read: bool) -> Result<Config> {
    let (file, must) = match &g.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_FILE), false),
    };
    let contents = if read {
        std::fs::read_to_string(&file)
    } else {
        Err(std::io::ErrorKind::NotFound.into())
    };
    let text = match contents {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && (!must || !read) => None,
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "{}: cannot read the configuration file (--config FILE or \
                     JAILSYNC_CONFIG=FILE names another)",
                    file.display()
                )
            })
        }
    };
    let parsed: File = match &text {
        Some(t) => toml::from_str(t).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(t, s.start));
            anyhow::anyhow!(
                "{}: line {line}: {} (every key is listed in jailsync(1), FILES)",
                file.display(),
                e.message().trim_end()
            )
        })?,
        None => File::default(),
    };
    let t = text.as_deref().unwrap_or("");
    let at = |s: std::ops::Range<usize>| From::File(file.clone(), line_of(t, s.start));
    fn take<T>(v: Option<Spanned<T>>, d: T, at: &dyn Fn(std::ops::Range<usize>) -> From) -> Set<T> {
        match v {
            Some(s) => Set {
                from: at(s.span()),
                value: s.into_inner(),
            },
            None => Set {
                value: d,
                from: From::Default,
            },
        }
    }
    let max_delete = match parsed.max_delete {
        Some(s) => Set {
            from: at(s.span()),
            value: Some(s.into_inner()),
        },
        None => Set {
            value: None,
            from: From::Default,
        },
    };
    let switch = match parsed.switch {
        Some(s) => Set {
            from: at(s.span()),
            value: Some(s.into_inner()),
        },
        None => Set {
            value: None,
            from: From::Default,
        },
    };
    let c = Config {
        found: text.is_some(),
        state_dir: take(parsed.state_dir, PathBuf::from(DEFAULT_STATE_DIR), &at),
        keep: take(parsed.keep, 3, &at),
        max_delete,
        exclude: take(parsed.exclude, Vec::new(), &at),
        filter: take(parsed.filter, Vec::new(), &at),
        protect: take(parsed.protect, Vec::new(), &at),
        trees: take(parsed.trees, Vec::new(), &at),
        hosts: take(parsed.hosts, Vec::new(), &at),
        ssh: take(parsed.ssh, "ssh".to_string(), &at),
        switch,
        file,
    };
    check(&c)?;
    Ok(c)
}

/// What the file says that cannot be right whatever the command.
fn check(c: &Config) -> Result<()> {
    let bad = |s: &From, what: &str| -> Result<()> { bail!("{s}: {what}") };
    if !c.state_dir.value.is_absolute() {
        bad(&c.state_dir.from, "state-dir must be an absolute path")?;
    }
    crate::args::check_rel(&c.trees.value)
        .map_err(|e| anyhow::anyhow!("{}: trees: {e}", c.trees.from))?;
    for r in &c.filter.value {
        crate::filters::check_rule(r)
            .map_err(|e| anyhow::anyhow!("{}: filter: {e}", c.filter.from))?;
    }
    Ok(())
}

/// The state dir in force: `--state-dir`, `JAILSYNC_STATE_DIR`, the file, else this OS's
/// default (or the old default where only that one exists).
pub fn settle_state_dir(g: &mut Global, m: &ArgMatches, c: &mut Config) {
    match m.value_source("state_dir") {
        Some(ValueSource::CommandLine) => {
            c.state_dir = Set {
                value: g.state_dir.clone(),
                from: From::Flag("state-dir"),
            }
        }
        Some(ValueSource::EnvVariable) => {
            c.state_dir = Set {
                value: g.state_dir.clone(),
                from: From::Env("JAILSYNC_STATE_DIR"),
            }
        }
        _ => {
            if c.state_dir.from == From::Default
                && !Path::new(DEFAULT_STATE_DIR).exists()
                && Path::new(OLD_STATE_DIR).is_dir()
            {
                c.state_dir = Set {
                    value: PathBuf::from(OLD_STATE_DIR),
                    from: From::OldDefault,
                };
            }
            g.state_dir = c.state_dir.value.clone();
        }
    }
}

/// Whether the option `id` was left at its default (not given, nor set from the environment).
pub fn defaulted(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), None | Some(ValueSource::DefaultValue))
}

/// `jailsync config`: every setting in force, as the file would say it, each with where it
/// came from (`--json`: one `setting` object each).
pub fn run_config(c: &Config, g: &Global) -> Result<u8> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let json_list = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let paths =
        |v: &[PathBuf]| -> Vec<String> { v.iter().map(|p| p.display().to_string()).collect() };
    let rows: Vec<(&str, serde_json::Value, &From)> = vec![
        (
            "state-dir",
            c.state_dir.value.display().to_string().into(),
            &c.state_dir.from,
        ),
        ("keep", c.keep.value.into(), &c.keep.from),
        ("max-delete", c.max_delete.value.into(), &c.max_delete.from),
        ("exclude", c.exclude.value.clone().into(), &c.exclude.from),
        ("filter", c.filter.value.clone().into(), &c.filter.from),
        ("protect", c.protect.value.clone().into(), &c.protect.from),
        ("trees", paths(&c.trees.value).into(), &c.trees.from),
        ("hosts", c.hosts.value.clone().into(), &c.hosts.from),
        ("ssh", c.ssh.value.clone().into(), &c.ssh.from),
        (
            "switch",
            c.switch
                .value
                .map(|s| format!("{s:?}").to_lowercase())
                .into(),
            &c.switch.from,
        ),
    ];
    if g.json {
        let v = serde_json::json!({"type": "config_file", "path": c.file.display().to_string(), "found": c.found});
        writeln!(out, "{v}")?;
        for (k, v, from) in rows {
            let o = serde_json::json!({"type": "setting", "key": k, "value": v, "from": from.to_string()});
            writeln!(out, "{o}")?;
        }
        out.flush()?;
        return Ok(exit::OK);
    }
    let how = if c.found {
        "read"
    } else {
        "not found: every setting is a default"
    };
    writeln!(out, "# {} ({how})", c.file.display())?;
    for (k, v, from) in rows {
        let shown = match &v {
            serde_json::Value::Null => {
                writeln!(
                    out,
                    "# {k} not set ({from}: more than half of a destination is refused)"
                )?;
                continue;
            }
            serde_json::Value::Array(a) => json_list(
                &a.iter()
                    .map(|x| x.as_str().unwrap_or_default().to_string())
                    .collect::<Vec<_>>(),
            ),
            other => other.to_string(),
        };
        writeln!(out, "{k} = {shown}  # {from}")?;
    }
    out.flush()?;
    Ok(exit::OK)
}
