//! rsync's filter rules (the subset that makes sense for a tree sync): `+`/`-` rules tried in
//! order, the first that matches deciding; `!` clears the rules before it. A pattern is
//! matched the way rsync's `wildmatch` does: `*` and `?` never cross a `/`, `**` does, `[...]`
//! classes, `\` escapes; a leading `/` anchors it at the tree's top, otherwise a pattern with
//! a `/` or a `**` matches the end of the path at a component boundary and one without
//! matches the name alone; a trailing `/` matches directories only; `dir/***` is `dir` and
//! everything below it; the `!` modifier (`-! PAT`) makes a rule apply where the pattern does
//! *not* match.
//!
//! Rules travel in the same list as the plain `--exclude` patterns (recorded with a rollback
//! generation, sent to a `serve`): a rule is the string [`PREFIX`] followed by its text.

/// What marks a pattern string as a filter rule rather than a plain `--exclude` glob.
pub const PREFIX: &str = "filter:";

/// One `+` or `-` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub include: bool,
    /// The `!` modifier: applies where the pattern does not match.
    pub negate: bool,
    /// A leading `/`: matched against the whole path only.
    anchored: bool,
    /// A trailing `/`: directories only.
    dir_only: bool,
    /// Matched against (the end of) the path, not the name alone.
    whole_path: bool,
    /// Without the leading and trailing `/`; a `/***` suffix is split into `also_below`.
    pat: Vec<u8>,
    /// `dir/***`: the pattern also matches everything below what it names.
    also_below: bool,
}

/// A parsed line of a filter: a rule, `!` (clear the rules so far), or a merge of a file (the
/// caller reads it: the engine never opens a user's rule file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Rule(Rule),
    Clear,
    Merge(String),
}

/// Parses one rule in rsync's syntax: `+ PAT`, `- PAT`, `include PAT`, `exclude PAT`, with the
/// `!` modifier (`-! PAT`, `exclude,! PAT`), `!`, `merge FILE` (`. FILE`). What rsync has and
/// a tree sync has no use for (per-directory merges, `hide`, `protect`, `risk`, other
/// modifiers) is refused by name.
pub fn parse(text: &str) -> Result<Line, String> {
    let t = text.trim_end_matches(['\r', '\n']);
    if t == "!" || t == "clear" {
        return Ok(Line::Clear);
    }
    let (word, rest) = match t.split_once([' ', '_']) {
        Some((w, r)) => (w, r),
        None => {
            return Err(format!(
                "{t:?}: expected `+ PATTERN`, `- PATTERN` or `merge FILE`"
            ))
        }
    };
    let (kind, mods) = match word.split_once(',') {
        Some((k, m)) => (k, m),
        None if word.starts_with(['+', '-', '.', ':']) => word.split_at(1),
        None => (word, ""),
    };
    let include = match kind {
        "+" | "include" => true,
        "-" | "exclude" => false,
        "." | "merge" if mods.is_empty() => return Ok(Line::Merge(rest.to_string())),
        ":" | "dir-merge" => {
            return Err(format!(
                "{t:?}: per-directory merge files are not supported"
            ))
        }
        _ => {
            return Err(format!(
                "{t:?}: unsupported rule {kind:?} (use `+`, `-`, `!` or `merge`)"
            ))
        }
    };
    let mut negate = false;
    for m in mods.chars() {
        match m {
            '!' => negate = true,
            _ => return Err(format!("{t:?}: unsupported modifier {m:?} (only `!` is)")),
        }
    }
    if rest.is_empty() {
        return Err(format!("{t:?}: the rule has no pattern"));
    }
    Ok(Line::Rule(Rule::new(include, negate, rest)))
}

impl Rule {
    pub fn new(include: bool, negate: bool, pattern: &str) -> Rule {
        let mut p = pattern.as_bytes();
        let dir_only = p.len() > 1 && p.ends_with(b"/");
        if dir_only {
            p = &p[..p.len() - 1];
        }
        let anchored = p.starts_with(b"/");
        if anchored {
            p = &p[1..];
        }
        let also_below = p.ends_with(b"/***");
        if also_below {
            p = &p[..p.len() - 4];
        }
        let whole_path = anchored || also_below || p.contains(&b'/') || contains(p, b"**");
        Rule {
            include,
            negate,
            anchored,
            dir_only,
            whole_path,
            pat: p.to_vec(),
            also_below,
        }
    }

    /// The rule's text in rsync's syntax (what [`parse`] reads back).
    pub fn text(&self) -> String {
        let mut s = String::from(if self.include { "+" } else { "-" });
        if self.negate {
            s.push('!');
        }
        s.push(' ');
        if self.anchored {
            s.push('/');
        }
        s.push_str(&String::from_utf8_lossy(&self.pat));
        if self.also_below {
            s.push_str("/***");
        }
        if self.dir_only {
            s.push('/');
        }
        s
    }

    /// Whether the rule applies to `path` (relative, no leading `/`; `name` its last part).
    fn applies(&self, path: &[u8], name: &[u8], is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return self.negate;
        }
        self.hit(path, name) != self.negate
    }

    fn hit(&self, path: &[u8], name: &[u8]) -> bool {
        if !self.whole_path {
            return wildmatch(&self.pat, name);
        }
        let whole =
            |s: &[u8]| wildmatch(&self.pat, s) || (self.also_below && prefix_match(&self.pat, s));
        if self.anchored {
            return whole(path);
        }
        // Unanchored: the end of the path from any component boundary.
        whole(path)
            || path
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && whole(&path[i + 1..]))
    }
}

/// `dir/***` below `dir`: some `/` of `s` ends a prefix the pattern matches.
fn prefix_match(pat: &[u8], s: &[u8]) -> bool {
    s.iter()
        .enumerate()
        .any(|(i, &b)| b == b'/' && wildmatch(pat, &s[..i]))
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

/// Rules in order; the first that applies decides.
#[derive(Clone, Debug, Default)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn push(&mut self, l: Line) {
        match l {
            Line::Rule(r) => self.0.push(r),
            Line::Clear => self.0.clear(),
            // Merges are expanded by whoever reads the file; none reaches here.
            Line::Merge(_) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Some(true)` excluded, `Some(false)` included, None when no rule applies.
    pub fn decide(&self, path: &[u8], name: &[u8], is_dir: bool) -> Option<bool> {
        self.0
            .iter()
            .find(|r| r.applies(path, name, is_dir))
            .map(|r| !r.include)
    }
}

/// rsync's wildmatch over bytes: the whole of `t` against `p`.
pub fn wildmatch(p: &[u8], t: &[u8]) -> bool {
    matches!(dowild(p, t), Match::Yes)
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Match {
    Yes,
    No,
    /// A `*` met a `/`: no shorter start of an enclosing `*` can help either.
    AbortToStarStar,
    AbortAll,
}

fn dowild(mut p: &[u8], mut t: &[u8]) -> Match {
    while let Some(&pc) = p.first() {
        let Some(&tc) = t.first() else {
            return if pc == b'*' && p.iter().all(|&c| c == b'*') {
                Match::Yes
            } else {
                Match::AbortAll
            };
        };
        match pc {
            b'\\' if p.len() > 1 => {
                if p[1] != tc {
                    return Match::No;
                }
                p = &p[2..];
            }
            b'?' => {
                if tc == b'/' {
                    return Match::No;
                }
                p = &p[1..];
            }
            b'*' => return star(p, t),
            b'[' => match class(&p[1..], tc) {
                Some((true, len)) if tc != b'/' => p = &p[1 + len..],
                Some(_) => return Match::No,
                // No closing `]`: a literal `[`.
                None if tc == b'[' => p = &p[1..],
                None => return Match::No,
            },
            c => {
                if c != tc {
                    return Match::No;
                }
                p = &p[1..];
            }
        }
        t = &t[1..];
    }
    if t.is_empty() {
        Match::Yes
    } else {
        Match::No
    }
}

fn star(p: &[u8], mut t: &[u8]) -> Match {
    let stars = p.iter().take_while(|&&c| c == b'*').count();
    let special = stars >= 2;
    let p = &p[stars..];
    if p.is_empty() {
        return if special || !t.contains(&b'/') {
            Match::Yes
        } else {
            Match::No
        };
    }
    loop {
        match dowild(p, t) {
            Match::No => {}
            Match::AbortToStarStar if special => {}
            m => return m,
        }
        let Some(&c) = t.first() else {
            return Match::AbortAll;
        };
        if !special && c == b'/' {
            return Match::AbortToStarStar;
        }
        t = &t[1..];
    }
}

/// A `[...]` class (after the `[`) against `c`: whether it matches and the class's length up
/// to and including its `]`; None when there is no `]`.
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 0;
    let negated = matches!(p.first(), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &pc = p.get(i)?;
        if pc == b']' && !first {
            return Some((hit != negated, i + 1));
        }
        first = false;
        let (lo, mut next) = if pc == b'\\' {
            (*p.get(i + 1)?, i + 2)
        } else {
            (pc, i + 1)
        };
        if p.get(next) == Some(&b'-') && p.get(next + 1).is_some_and(|&h| h != b']') {
            let hi = p[next + 1];
            hit |= lo <= c && c <= hi;
            next += 2;
        } else {
            hit |= lo == c;
        }
        i = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &[&str]) -> Rules {
        let mut r = Rules::default();
        for l in lines {
            r.push(parse(l).unwrap());
        }
        r
    }

    #[test]
    fn wildmatch_as_rsync() {
        assert!(wildmatch(b"*.o", b"a.o"));
        assert!(!wildmatch(b"*.o", b"d/a.o"));
        assert!(wildmatch(b"d/**", b"d/x/y.o"));
        assert!(wildmatch(b"**.o", b"d/x/y.o"));
        assert!(wildmatch(b"a?c", b"abc"));
        assert!(!wildmatch(b"a?c", b"a/c"));
        assert!(wildmatch(b"[a-c]x", b"bx"));
        assert!(!wildmatch(b"[!a-c]x", b"bx"));
        assert!(wildmatch(b"\\*", b"*"));
        assert!(!wildmatch(b"\\*", b"a"));
        assert!(wildmatch(b"a*b*c", b"aXbYc"));
        assert!(!wildmatch(b"a/**/b", b"a/b"));
    }

    #[test]
    fn first_match_wins_with_anchoring_and_dirs() {
        let r = rules(&["+ keep.conf", "- /etc/*", "- tmp/", "-! *.so"]);
        assert_eq!(r.decide(b"etc/keep.conf", b"keep.conf", false), Some(false));
        assert_eq!(r.decide(b"etc/x.conf", b"x.conf", false), Some(true));
        assert_eq!(r.decide(b"sub/etc/x.so", b"x.so", false), None);
        assert_eq!(r.decide(b"a/tmp", b"tmp", true), Some(true));
        // Dir-only: a file named tmp is not one; then `-! *.so` takes it (not a .so).
        assert_eq!(r.decide(b"a/tmp", b"tmp", false), Some(true));
        assert_eq!(r.decide(b"lib/x.so", b"x.so", false), None);
        let r = rules(&["- x/y", "- d/***"]);
        assert_eq!(r.decide(b"a/x/y", b"y", false), Some(true));
        assert_eq!(r.decide(b"ax/y", b"y", false), None);
        assert_eq!(r.decide(b"d", b"d", true), Some(true));
        assert_eq!(r.decide(b"d/e/f", b"f", false), Some(true));
        let r = rules(&["- *.o", "!", "+ *"]);
        assert_eq!(r.decide(b"a.o", b"a.o", false), Some(false));
    }

    #[test]
    fn parses_rsync_syntax_and_refuses_the_rest() {
        assert_eq!(
            parse("merge rules.txt"),
            Ok(Line::Merge("rules.txt".into()))
        );
        assert_eq!(parse(". r"), Ok(Line::Merge("r".into())));
        assert!(matches!(parse("exclude,! *.c"), Ok(Line::Rule(r)) if r.negate && !r.include));
        assert_eq!(
            parse("+ /a/b/").map(|l| match l {
                Line::Rule(r) => r.text(),
                _ => String::new(),
            }),
            Ok("+ /a/b/".into())
        );
        assert!(parse(": .rsync-filter")
            .unwrap_err()
            .contains("per-directory"));
        assert!(parse("P foo").unwrap_err().contains("unsupported rule"));
        assert!(parse("-p foo").unwrap_err().contains("modifier"));
    }
}
