//! The filter options of `sync` and `upgrade` (`--exclude`, `--include`, `--filter`,
//! `--exclude-from`) and the configuration's rules, as the one ordered list the engine reads
//! (see `jailsync_engine::filter`). With `--exclude` alone nothing changes from before: the
//! patterns go as they are. Once a rule needs an order (an include, a filter, a rules file),
//! every option becomes a rule, in the order given on the command line, then the
//! configuration file's `filter` and `exclude` keys, then the jail's `exclude` lines.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::ArgMatches;
use jailsync_engine::filter::{self, Line, Rule, PREFIX};

use crate::args::RuleArgs;

/// How deep `merge` files may name further merge files (a loop ends here).
const MAX_DEPTH: usize = 8;

/// A rule as the engine receives it.
fn encode(line: &Line) -> Option<String> {
    match line {
        Line::Rule(r) => Some(format!("{PREFIX}{}", r.text())),
        Line::Clear => Some(format!("{PREFIX}!")),
        Line::Merge(_) => None,
    }
}

/// A plain `--exclude` pattern as the rule that means the same: jailsync anchors a pattern
/// holding a `/` at the tree's top, where rsync would match it at any depth.
pub fn plain_rule(p: &str) -> String {
    let body = p.strip_suffix('/').unwrap_or(p);
    let anchor = body.contains('/') && !body.starts_with('/');
    let text = if anchor {
        format!("/{p}")
    } else {
        p.to_string()
    };
    format!("{PREFIX}{}", Rule::new(false, false, &text).text())
}

/// Checks one rule of the configuration file (a merge file must be readable).
pub fn check_rule(text: &str) -> Result<()> {
    expand(text, Path::new("."), 0, &mut Vec::new())
}

/// One rule in rsync's syntax, its merge files read, onto `out`.
fn expand(text: &str, base: &Path, depth: usize, out: &mut Vec<String>) -> Result<()> {
    let line = filter::parse(text).map_err(anyhow::Error::msg)?;
    match &line {
        Line::Merge(f) => read_rules(&base.join(f), true, depth + 1, out),
        l => {
            out.extend(encode(l));
            Ok(())
        }
    }
}

/// The rules of a file: a merge file's lines are rules in full syntax; an `--exclude-from`
/// file's are patterns to exclude unless they start with `+ ` or `- ` (or are `!`). Blank
/// lines and lines starting with `#` or `;` are comments, as in rsync.
fn read_rules(file: &Path, merge: bool, depth: usize, out: &mut Vec<String>) -> Result<()> {
    if depth > MAX_DEPTH {
        bail!(
            "{}: merge files nested deeper than {MAX_DEPTH} (a loop?)",
            file.display()
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read the rules file", file.display()))?;
    // A relative merge file is found from the working directory, as rsync does.
    let base = Path::new(".");
    for (n, l) in text.lines().enumerate() {
        let l = l.trim_end_matches('\r');
        if l.is_empty() || l.starts_with(['#', ';']) {
            continue;
        }
        let at = || format!("{}: line {}", file.display(), n + 1);
        if merge {
            expand(l, base, depth, out).with_context(at)?;
            continue;
        }
        let line = match l {
            "!" => Line::Clear,
            _ => match (l.strip_prefix("+ "), l.strip_prefix("- ")) {
                (Some(p), _) => Line::Rule(Rule::new(true, false, p)),
                (_, Some(p)) => Line::Rule(Rule::new(false, false, p)),
                _ => Line::Rule(Rule::new(false, false, l)),
            },
        };
        out.extend(encode(&line));
    }
    Ok(())
}

/// The configuration file's rules, for [`settle`].
pub struct Conf<'a> {
    pub filter: &'a [String],
    /// Where `filter` is written (`FILE:LINE`).
    pub filter_at: String,
    pub exclude: &'a [String],
}

/// The option's values with their places on the command line.
fn placed<T: Clone + Send + Sync + 'static>(m: &ArgMatches, id: &str) -> Vec<(usize, T)> {
    match (m.get_many::<T>(id), m.indices_of(id)) {
        (Some(v), Some(i)) => i.zip(v.cloned()).collect(),
        _ => Vec::new(),
    }
}

/// Sets `exclude` (an `--exclude` list) to what the engine gets: the plain patterns as before when only
/// `--exclude` is used, else the ordered rules (see the module's comment).
/// `conf`: the configuration file's `filter` rules (and where they are, for errors) and
/// `exclude` patterns.
pub fn settle(exclude: &mut Vec<String>, r: &RuleArgs, m: &ArgMatches, conf: Conf) -> Result<()> {
    let ordered = !r.include.is_empty()
        || !r.filter.is_empty()
        || !r.exclude_from.is_empty()
        || !conf.filter.is_empty();
    if !ordered {
        exclude.extend(conf.exclude.iter().cloned());
        return Ok(());
    }
    enum Opt {
        Exclude(String),
        Include(String),
        Filter(String),
        From(PathBuf),
    }
    let mut given: Vec<(usize, Opt)> = Vec::new();
    given.extend(
        placed::<String>(m, "exclude")
            .into_iter()
            .map(|(i, v)| (i, Opt::Exclude(v))),
    );
    given.extend(
        placed::<String>(m, "include")
            .into_iter()
            .map(|(i, v)| (i, Opt::Include(v))),
    );
    given.extend(
        placed::<String>(m, "filter")
            .into_iter()
            .map(|(i, v)| (i, Opt::Filter(v))),
    );
    given.extend(
        placed::<PathBuf>(m, "exclude_from")
            .into_iter()
            .map(|(i, v)| (i, Opt::From(v))),
    );
    given.sort_by_key(|(i, _)| *i);
    let mut out = Vec::new();
    for (_, o) in given {
        match o {
            Opt::Exclude(p) => out.push(plain_rule(&p)),
            Opt::Include(p) => out.extend(encode(&Line::Rule(Rule::new(true, false, &p)))),
            Opt::Filter(r) => expand(&r, Path::new("."), 0, &mut out)
                .with_context(|| format!("--filter {r:?}"))?,
            Opt::From(f) => read_rules(&f, false, 0, &mut out)?,
        }
    }
    for r in conf.filter {
        expand(r, Path::new("."), 0, &mut out)
            .with_context(|| format!("{}: filter {r:?}", conf.filter_at))?;
    }
    out.extend(conf.exclude.iter().map(|p| plain_rule(p)));
    *exclude = out;
    Ok(())
}

/// Adds the jail's `exclude` lines after what `exclude` has, in the form it uses.
pub fn add_excludes(exclude: &mut Vec<String>, pats: &[String]) {
    let ruled = exclude.iter().any(|p| p.starts_with(PREFIX));
    for p in pats {
        exclude.push(if ruled { plain_rule(p) } else { p.clone() });
    }
}
