//! Configuration protection in the CLI: deciding per tree, reporting, finishing, `conf-diff`,
//! and what `verify` makes of kept files. The rules are in `jailsync_engine::protect`.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use jailsync_engine::journal::StateDir;
use jailsync_engine::protect::{self, Decisions, Kept, Rules, Verdict, NEW_SUFFIX};
use jailsync_engine::sync::Tree;

use crate::args::{exit, Global};
use crate::output::{json_path, Tally};

fn full(prefix: &[u8], p: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        p.to_vec()
    } else {
        jailsync_engine::entry::join(prefix, p)
    }
}

/// `-i` lines (`*protected PATH (why)`) and `--json` `config` lines.
pub fn print_decisions(
    out: &mut impl Write,
    d: &Decisions,
    prefix: &[u8],
    itemize: bool,
    json: bool,
) -> io::Result<()> {
    for x in &d.list {
        let p = full(prefix, &x.path);
        let mut new = p.clone();
        new.extend_from_slice(NEW_SUFFIX.as_bytes());
        if json {
            let v = serde_json::json!({
                "type": "config",
                "verdict": x.verdict.name(),
                "path": json_path(&p),
                "new_file": (x.verdict == Verdict::KeptNew).then(|| json_path(&new)),
            });
            writeln!(out, "{v}")?;
        } else if itemize {
            let why = match x.verdict {
                Verdict::Kept => "kept: edited here, unchanged in the jail".to_string(),
                Verdict::KeptNew => format!(
                    "kept: edited here and changed in the jail; the jail's version goes to {}",
                    jailsync_engine::entry::display_path(&new)
                ),
                Verdict::KeptDropped => "kept: edited here, dropped by the jail".to_string(),
            };
            writeln!(
                out,
                "*protected {} ({why})",
                jailsync_engine::entry::display_path(&p)
            )?;
        }
    }
    Ok(())
}

/// After a run: configuration files kept, by their live paths, on stderr, as dpkg names the
/// conffiles it asks about: one with the jail's version set beside it always, even under
/// `-q` (a merge is due); one the jail dropped unless `-q`; one merely kept as edited (every
/// run keeps it again) only with `-v`. Not with `-i`, whose `*protected` lines name them all,
/// nor `--json`, which has `config` objects.
pub fn announce(decisions: &[Decisions], trees: &[Tree], a_itemize: bool, g: &Global) {
    if g.json {
        return;
    }
    for (d, t) in decisions.iter().zip(trees) {
        for x in &d.list {
            let live = t.dst_path.join(jailsync_engine::fsx::os(&x.path));
            match x.verdict {
                Verdict::KeptNew => eprintln!(
                    "jailsync: {}: kept as edited here; the jail's version is {}{NEW_SUFFIX}: \
                     merge it by hand, then remove that file (`jailsync conf-diff {}` shows \
                     the difference)",
                    live.display(),
                    live.display(),
                    t.dst_path.display()
                ),
                _ if g.quiet || a_itemize => {}
                Verdict::Kept if g.verbose == 0 => {}
                Verdict::Kept => eprintln!(
                    "jailsync: {}: kept as edited here (unchanged in the jail)",
                    live.display()
                ),
                Verdict::KeptDropped => eprintln!(
                    "jailsync: {}: kept as edited here (the jail no longer has it)",
                    live.display()
                ),
            }
        }
    }
}

/// After a run that switched (or applied): `.jailsync-new` files written, base recorded (not
/// advanced for what the run did not put in place: see `report`'s outcomes). Returns the
/// number of errors (reported).
#[allow(clippy::too_many_arguments)]
pub fn finish_all(
    rules: &Rules,
    trees: &[Tree],
    checked: &[(PathBuf, PathBuf, Vec<u8>)],
    decisions: &[Decisions],
    report: &jailsync_engine::sync::Report,
    state: &StateDir,
    tally: &mut Tally,
    out: &mut impl Write,
    g: &Global,
) -> Result<usize> {
    let mut errors = 0;
    let owner = jailsync_engine::fsx::geteuid_is_root();
    let none = Decisions::default();
    for (k, t) in trees.iter().enumerate() {
        let d = decisions.get(k).unwrap_or(&none);
        let unapplied = match report.outcomes.get(k) {
            Some(o) => protect::unapplied(&t.plan, &t.src, &t.dst, o),
            None => Vec::new(),
        };
        let done = protect::finish(
            state,
            rules,
            &checked[k].2,
            &t.src_path,
            &t.dst_path,
            &t.src,
            d,
            &unapplied,
            owner,
        )?;
        let shown = |p: &[u8]| t.dst_path.join(jailsync_engine::fsx::os(p));
        for (p, e) in done.failed {
            errors += 1;
            tally.new = tally.new.saturating_sub(1);
            if g.json {
                let v = serde_json::json!({"type": "error", "path": shown(&p).display().to_string(), "phase": "config", "error": e.to_string()});
                writeln!(out, "{v}")?;
            }
            eprintln!(
                "jailsync: {}: {e} (while writing the jail's version of a kept configuration \
                 file; it is offered again on the next run)",
                shown(&p).display()
            );
        }
        // Never hidden by -q: the admin's file has a new name.
        for (from, to) in done.set_aside {
            if g.json {
                let v = serde_json::json!({"type": "config_set_aside", "path": json_path(shown(&from).as_os_str().as_bytes()), "kept_as": json_path(shown(&to).as_os_str().as_bytes())});
                writeln!(out, "{v}")?;
            }
            eprintln!(
                "jailsync: {}: not one jailsync wrote: kept as {} (the jail's version is now in \
                 its place)",
                shown(&from).display(),
                shown(&to).display()
            );
        }
    }
    Ok(errors)
}

/// Every destination under `root` (or `root` itself) that jailsync has synced, from the state
/// dir's per-tree records.
fn known_trees(state: &StateDir, root: &Path) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(state.root.join("trees")) else {
        return out;
    };
    for d in rd.flatten() {
        let Ok(p) = std::fs::read(d.path().join("path")) else {
            continue;
        };
        let p = PathBuf::from(std::ffi::OsString::from_vec(p));
        if p.starts_with(root) && d.path().join("conf-kept").exists() {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// `jailsync conf-diff ROOT`: the pending `NAME.jailsync-new` files as unified diffs against
/// the kept file. Exit 1 when some are pending (like diff), 0 when none.
pub fn run_conf_diff(root: &Path, g: &Global) -> Result<u8> {
    let root_c =
        jailsync_engine::paths::canonical_tree(root).with_context(|| root.display().to_string())?;
    let state = jailsync_engine::sync::open_state(&g.state_dir, &[&root_c])?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut pending = 0;
    for tree in known_trees(&state, &root_c) {
        // Any kept file may have one pending: written this run, or an earlier one the admin
        // has not resolved yet.
        for k in protect::load_kept(&state, &tree) {
            let p = k.path;
            let live = tree.join(jailsync_engine::fsx::os(&p));
            let mut new = live.as_os_str().to_owned();
            new.push(NEW_SUFFIX);
            let new = PathBuf::from(new);
            // Never through a symlink: a kept one (or one in place of the new version) is
            // described, not followed.
            let (Ok(la), Ok(lb)) = (live.symlink_metadata(), new.symlink_metadata()) else {
                continue; // resolved by the admin (removed or merged)
            };
            pending += 1;
            if g.json {
                let v = serde_json::json!({
                    "type": "pending",
                    "path": json_path(live.as_os_str().as_bytes()),
                    "new_file": json_path(new.as_os_str().as_bytes()),
                });
                writeln!(out, "{v}")?;
                continue;
            }
            if !la.is_file() || !lb.is_file() {
                writeln!(
                    out,
                    "{} ({}) and {} ({}) differ",
                    live.display(),
                    describe(&live, &la),
                    new.display(),
                    describe(&new, &lb)
                )?;
                continue;
            }
            let (a, b) = (std::fs::read(&live)?, std::fs::read(&new)?);
            match (std::str::from_utf8(&a), std::str::from_utf8(&b)) {
                (Ok(a), Ok(b)) => {
                    let d = protect::unified_diff(
                        &live.display().to_string(),
                        &new.display().to_string(),
                        a,
                        b,
                        3,
                    );
                    write!(out, "{d}")?;
                }
                _ => writeln!(
                    out,
                    "Binary files {} and {} differ",
                    live.display(),
                    new.display()
                )?,
            }
        }
    }
    out.flush()?;
    if pending == 0 && !g.quiet && !g.json {
        eprintln!("{}: no pending {NEW_SUFFIX} files", root_c.display());
    }
    Ok(if pending > 0 { exit::PARTIAL } else { exit::OK })
}

/// What a pending entry is, for `conf-diff` (a symlink with its target).
fn describe(p: &Path, m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        let to = std::fs::read_link(p).unwrap_or_default();
        format!("a symlink to {}", to.display())
    } else if t.is_dir() {
        "a directory".into()
    } else if t.is_fifo() {
        "a fifo".into()
    } else if t.is_file() {
        "a file".into()
    } else {
        "a special file".into()
    }
}

/// For `verify`: the entries kept with the admin's edits at the last upgrade, sorted by
/// path, or None when the destination was never synced with protection.
pub fn kept_for_verify(state: &StateDir, dst: &Path) -> Option<Vec<Kept>> {
    let dir = state.tree_dir(dst).ok()?;
    if !dir.join("conf-base").exists() {
        return None;
    }
    let mut v = protect::load_kept(state, dst);
    v.sort_by(|a, b| a.path.cmp(&b.path));
    Some(v)
}

/// For `verify`: a kept entry is no difference from the jail while it is still what the run
/// kept (type, content, mode, owner); once changed since (rewritten, made setuid, replaced)
/// it is one, like any other. What a kept directory holds is the admin's and not compared,
/// nor are the jail's entries below a kept non-directory (they cannot be there).
/// Returns how many kept entries were left out, and how many changed since.
pub fn drop_kept(tree: &mut Tree, kept: &[Kept]) -> Result<(usize, usize)> {
    let root = jailsync_engine::fsx::open_root_nofollow(&tree.dst_path)
        .with_context(|| tree.dst_path.display().to_string())?;
    let mut drop = vec![false; tree.plan.actions.len()];
    let mut whole: Vec<&[u8]> = Vec::new();
    let (mut same, mut changed) = (0, 0);
    for (k, a) in tree.plan.actions.iter().enumerate() {
        let path = tree.plan.path(a, &tree.src, &tree.dst);
        if whole
            .iter()
            .any(|d| path.starts_with(d) && path.get(d.len()) == Some(&b'/'))
        {
            drop[k] = true;
            continue;
        }
        let Ok(i) = kept.binary_search_by(|x| (*x.path).cmp(path)) else {
            continue;
        };
        let still = a.dst != jailsync_engine::plan::NONE
            && kept[i]
                .matches(root.as_fd(), &tree.dst.at(a.dst as usize))
                .unwrap_or(false);
        if still {
            drop[k] = true;
            same += 1;
            // Below it: what a kept directory holds (the admin's), or the jail's entries
            // that cannot be made under a kept non-directory.
            whole.push(&kept[i].path);
        } else {
            changed += 1;
        }
    }
    jailsync_engine::plan::drop_actions(&mut tree.plan, &drop);
    Ok((same, changed))
}

/// For `verify`: exclude patterns for the homes of trees jailsync switched inside `dst` (a
/// nested package database keeps its generations beside it, inside the tree holding it).
pub fn nested_homes(state: &StateDir, dst: &Path) -> Vec<String> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(state.root.join("trees")) else {
        return out;
    };
    for d in rd.flatten() {
        let Ok(p) = std::fs::read(d.path().join("path")) else {
            continue;
        };
        let p = PathBuf::from(std::ffi::OsString::from_vec(p));
        let Ok(rel) = p.strip_prefix(dst) else {
            continue;
        };
        let Some(name) = rel.file_name() else {
            continue;
        };
        let mut home = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        home.push(std::ffi::OsStr::from_bytes(
            &jailsync_engine::switch::home_name(name.as_bytes()),
        ));
        out.push(format!("/{}/", home.display()));
    }
    out
}
