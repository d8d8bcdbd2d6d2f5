//! The rule that keeps the house in one direction: the files of each crate (`engine/src`,
//! `cli/src`) import one another without a circle. A file's imports are the `crate::a::b`
//! paths it names outside its unit tests (and `super::x` for a sibling); a folder's file and
//! the files inside it are one room (a parent names its children, a child its parent), and
//! the crate root (`lib.rs`, `main.rs`) stands above everything.
//!
//! The order the files settle in (a file above all it imports) is the design's layering:
//! model and OS calls at the bottom (`entry`, `names`, `fsx`), then reading and deciding
//! (`scan`, `plan`, `protect`), the switch and its history (`switch`, `generation`), the
//! transaction (`txn`), the use cases (`sync`, `upgrade`, `history`, `remote`), the CLI on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`fsx::linux`) → the modules its file names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("source dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `engine/src/fsx/linux.rs` → `fsx::linux`; `remote/mod.rs` → `remote`; the root → "".
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(root)
        .expect("below root")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts
        .last()
        .is_some_and(|l| l == "mod" || l == "lib" || l == "main")
    {
        parts.pop();
    }
    parts.join("::")
}

/// The code outside the file's unit tests (by this house's convention, a trailing
/// `#[cfg(test)] mod ...` block), without comments.
fn code(text: &str) -> String {
    let end = text.find("\n#[cfg(test)]\nmod ").unwrap_or(text.len());
    text[..end]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files declared only for tests (`#[cfg(test)] mod both;`) are not rooms.
fn test_only(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = text.lines().peekable();
    while let Some(l) = it.next() {
        if l.trim() == "#[cfg(test)]" {
            if let Some(n) = it.peek().and_then(|n| n.trim().strip_prefix("mod ")) {
                if let Some(name) = n.strip_suffix(';') {
                    out.push(name.to_string());
                }
            }
        }
    }
    out
}

fn ident_at(s: &str) -> Option<&str> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| &s[..end])
}

/// The longest known module `a::b` or `a` a path starting at `s` (after `crate::`) names.
fn resolve(s: &str, known: &BTreeSet<String>) -> Option<String> {
    let mut best = None;
    let mut path = String::new();
    let mut rest = s;
    while let Some(id) = ident_at(rest) {
        if !path.is_empty() {
            path.push_str("::");
        }
        path.push_str(id);
        if known.contains(&path) {
            best = Some(path.clone());
        }
        rest = &rest[id.len()..];
        match rest.strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    best
}

/// The names inside `use crate::{a, b::c}` braces, each as a path.
fn braced(s: &str) -> Vec<&str> {
    let Some(inner) = s.strip_prefix('{') else {
        return vec![s];
    };
    let end = inner.find('}').unwrap_or(inner.len());
    inner[..end].split(',').map(str::trim).collect()
}

fn graph(root: &Path) -> Graph {
    let mut files = Vec::new();
    rs_files(root, &mut files);
    let mut skip = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let m = module_of(root, f);
        for t in test_only(&text) {
            skip.insert(if m.is_empty() { t } else { format!("{m}::{t}") });
        }
    }
    let known: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(root, f))
        .filter(|m| !m.is_empty() && !skip.contains(m))
        .collect();
    let mut g = Graph::new();
    for f in &files {
        let m = module_of(root, f);
        if m.is_empty() || skip.contains(&m) {
            continue;
        }
        let text = code(&std::fs::read_to_string(f).expect("read"));
        let parent = m.rsplit_once("::").map(|(p, _)| p.to_string());
        let mut uses = BTreeSet::new();
        for (needle, base) in [("crate::", None), ("super::", parent.as_deref())] {
            for (i, _) in text.match_indices(needle) {
                let after = &text[i + needle.len()..];
                for p in braced(after) {
                    let full = match base {
                        Some(b) => format!("{b}::{p}"),
                        None if needle == "super::" => continue,
                        None => p.to_string(),
                    };
                    if let Some(t) = resolve(&full, &known) {
                        uses.insert(t);
                    }
                }
            }
        }
        // A folder's file and the files inside it are one room.
        let related = |t: &str| {
            t == m || m.starts_with(&format!("{t}::")) || t.starts_with(&format!("{m}::"))
        };
        uses.retain(|t| !related(t));
        g.insert(m, uses);
    }
    g
}

/// A circle of `g`, if there is one (depth-first, the path that closes it).
fn circle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for t in g.get(n).into_iter().flatten() {
            match state.get(t.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == t).expect("on the stack");
                    let mut c = stack[at..].to_vec();
                    c.push(t.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(t, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_engines_files_import_one_another_without_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&root);
    assert!(g.len() > 20, "the engine's files were not read: {g:?}");
    if let Some(c) = circle(&g) {
        panic!("import circle in engine/src: {}", c.join(" -> "));
    }
}

#[test]
fn the_clis_files_import_one_another_without_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/src");
    let g = graph(&root);
    assert!(g.len() > 5, "the CLI's files were not read: {g:?}");
    if let Some(c) = circle(&g) {
        panic!("import circle in cli/src: {}", c.join(" -> "));
    }
}

#[test]
fn a_circle_is_found_and_a_folder_is_one_room() {
    let t = tempfile::tempdir().unwrap();
    let w = |p: &str, s: &str| {
        let p = t.path().join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    w("lib.rs", "pub mod a; pub mod b; pub mod c;");
    w(
        "a.rs",
        "use crate::b::X;\nmod d;\n#[cfg(test)]\nmod tests { use crate::c::Z; }",
    );
    w("a/d.rs", "use super::Y; use crate::{c, b};");
    w("b.rs", "pub struct X; // crate::a::Y\n");
    w("c.rs", "pub struct Z;");
    let g = graph(t.path());
    assert_eq!(g["a"], BTreeSet::from(["b".to_string()]), "{g:?}");
    assert_eq!(g["a::d"], BTreeSet::from(["b".into(), "c".into()]), "{g:?}");
    assert!(circle(&g).is_none(), "{g:?}");
    w("c.rs", "use crate::a::d;");
    let c = circle(&graph(t.path())).expect("a -> d? no: a::d -> c -> a::d");
    assert!(c.contains(&"c".to_string()), "{c:?}");
}
