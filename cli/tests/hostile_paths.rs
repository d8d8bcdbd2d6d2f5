//! Issue 10, hostile and careless path arguments: every spelling of a destination resolves the
//! same way, trees are compared by identity (bind mounts alias nothing), overlapping
//! destinations are locked or refused, and a damaged manifest is refused, not "verified".
//!
//! Tests are named after the items (`item1_…`) so the closing note can cite them.
//! Bind mounts are made in a private mount namespace of the test's own thread (the binary,
//! spawned from it, inherits it); without root or `unshare` those tests say why and skip.

mod common;

use std::ffi::OsStr;

use common::*;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

// ---------------------------------------------------------------------------------------------
// Item 12: a damaged manifest is refused, never read as differences.

#[test]
fn item12_truncated_or_malformed_manifest_is_refused() {
    let e = Env::new();
    e.src
        .file("a", "one")
        .file("b", "two")
        .dir("d")
        .file("d/c", "three")
        .symlink("l", "a");
    e.sync(&[]);
    let m = e.tmp.path().join("m");
    expect_code(
        &e.js([os("manifest"), e.src().as_os_str(), os("-o"), m.as_os_str()]),
        0,
    );
    let good = std::fs::read_to_string(&m).unwrap();
    let ms = m.to_str().unwrap().to_string();
    let verify = |text: &str| {
        std::fs::write(&m, text).unwrap();
        e.js([os("verify"), m.as_os_str(), e.dst().as_os_str()])
    };
    expect_code(&verify(&good), 0);

    let lines: Vec<&str> = good.lines().collect();
    let line_of = |prefix: &str| 1 + lines.iter().position(|l| l.starts_with(prefix)).unwrap();
    // Replace one field of the line starting with `prefix` (drop it when `to` is empty).
    let edit = |prefix: &str, field: &str, to: &str| -> (String, usize) {
        let n = line_of(prefix);
        let mut l: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
        l[n - 1] = l[n - 1]
            .split(' ')
            .filter_map(|t| {
                if t.starts_with(&format!("{field}=")) {
                    (!to.is_empty()).then(|| to.to_string())
                } else {
                    Some(t.to_string())
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        (l.join("\n") + "\n", n)
    };
    let mut cases: Vec<(String, usize, &str)> = Vec::new();
    for (prefix, field, to, why) in [
        ("a file", "size", "", "size"),
        ("a file", "blake3", "", "blake3"),
        ("a file", "blake3", "blake3=abc", "blake3"),
        ("a file", "uid", "", "uid"),
        ("a file", "gid", "", "gid"),
        ("a file", "mtime", "", "mtime"),
        ("a file", "mtime", "mtime=1.1234567891", "mtime"),
        ("a file", "size", "size=-1", "size"),
        ("a file", "mode", "mode=644 mode=600", "mode"),
        ("d dir", "mode", "mode=755 size=4", "size"),
        ("l link", "target", "", "target"),
        ("l link", "mode", "mode=777 blake3=00", "blake3"),
    ] {
        let (text, n) = edit(prefix, field, to);
        cases.push((text, n, why));
    }
    // Cut at a line boundary (the last entry lost, and what followed it), and inside a line
    // right after a field (every remaining field well-formed, the hash gone).
    let last_entry = lines.iter().rposition(|l| !l.starts_with('#')).unwrap();
    cases.push((
        lines[..last_entry].join("\n") + "\n",
        last_entry,
        "truncated",
    ));
    let at = good.find("\nd/c file").unwrap() + 1;
    let cut_field = good[..at + good[at..].find(" blake3=").unwrap()].to_string();
    cases.push((cut_field, line_of("d/c file"), "truncated"));
    // An entry whose parent is not in the manifest.
    let mut orphan = lines.clone();
    let n = line_of("b file");
    let extra = "x/y file mode=644 uid=0 gid=0 mtime=1.000000000 size=0 blake3=af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    orphan[n - 1] = extra;
    cases.push((orphan.join("\n") + "\n", n, "parent"));

    for (text, n, why) in &cases {
        let o = verify(text);
        expect_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{ms}:{n}:")) && err.contains(why),
            "should name {ms}:{n}: and say {why:?}:\n{err}\nmanifest:\n{text}"
        );
    }
}
