//! Random trees for property tests: a small shared namespace (names a, b, c; depth <= 3) so
//! that an old and a new tree collide, change types, and form, split and merge hard-link groups.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{can_trusted_xattr, esc, is_root, Tree};

const T: i64 = 1_700_000_000;

/// One entry to try to create; skipped when its parent is not a directory or it exists.
#[derive(Clone, Debug)]
pub enum Node {
    /// Content from a small set where several share a size (same size, same mtime, other
    /// bytes must still be copied), a mode and a time.
    File {
        content: u8,
        mode: u8,
        time: u8,
        attr: u8,
    },
    Dir {
        mode: u8,
        time: u8,
    },
    Symlink {
        target: u8,
        time: u8,
    },
    Fifo {
        time: u8,
    },
    /// A hard link to the n-th file created so far (modulo their count).
    Link {
        to: u8,
    },
}

const CONTENTS: [&[u8]; 6] = [b"", b"x", b"y", b"xy", b"yx", b"0123456789abcdef"];
const MODES: [u32; 4] = [0o644, 0o600, 0o755, 0o4755];
const DMODES: [u32; 3] = [0o755, 0o700, 0o1777];
const TARGETS: [&str; 4] = ["a", "../b", "/etc", "c/a/b"];

pub fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => (0..6u8, 0..4u8, 0..3u8, 0..6u8)
            .prop_map(|(content, mode, time, attr)| Node::File { content, mode, time, attr }),
        3 => (0..3u8, 0..3u8).prop_map(|(mode, time)| Node::Dir { mode, time }),
        2 => (0..4u8, 0..3u8).prop_map(|(target, time)| Node::Symlink { target, time }),
        2 => any::<u8>().prop_map(|to| Node::Link { to }),
        1 => (0..3u8).prop_map(|time| Node::Fifo { time }),
    ]
}

/// A path of 1..=3 components named a, b or c.
pub fn path() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..3u8, 1..=3).prop_map(|v| {
        let names: Vec<&str> = v.iter().map(|&i| ["a", "b", "c"][i as usize]).collect();
        names.join("/").into_bytes()
    })
}

pub fn tree() -> impl Strategy<Value = Vec<(Vec<u8>, Node)>> {
    prop::collection::vec((path(), node()), 0..24)
}

/// Builds a consistent tree from the recipe; returns what it made (for the failure message).
pub fn build(t: &Tree, recipe: &[(Vec<u8>, Node)]) -> Vec<String> {
    let mut made: BTreeMap<Vec<u8>, char> = BTreeMap::new();
    let mut files: Vec<Vec<u8>> = Vec::new();
    let mut log = Vec::new();
    for (p, n) in recipe {
        if made.contains_key(p) {
            continue;
        }
        // Every ancestor must be a directory (made now if missing).
        let comps: Vec<&[u8]> = p.split(|&b| b == b'/').collect();
        let mut ok = true;
        for k in 1..comps.len() {
            let anc = comps[..k].join(&b'/');
            match made.get(&anc) {
                Some('d') => {}
                Some(_) => {
                    ok = false;
                    break;
                }
                None => {
                    t.dir(&anc);
                    made.insert(anc, 'd');
                }
            }
        }
        if !ok {
            continue;
        }
        match *n {
            Node::File {
                content,
                mode,
                time,
                attr,
            } => {
                t.file(p, CONTENTS[content as usize]);
                // Owners and xattrs (root only): same bytes with other metadata.
                if is_root() && can_trusted_xattr() {
                    match attr {
                        1 => {
                            t.owner(p, 1000, 1000);
                        }
                        2 => {
                            t.owner(p, 0, 7);
                        }
                        3 => {
                            t.xattr(p, "user.a", b"1");
                        }
                        4 => {
                            t.xattr(p, "user.a", b"2").xattr(p, "trusted.b", b"x");
                        }
                        _ => {}
                    }
                }
                t.mode(p, MODES[mode as usize])
                    .mtime(p, T + i64::from(time), 0);
                files.push(p.clone());
                made.insert(p.clone(), 'f');
            }
            Node::Dir { mode, time } => {
                t.dir(p)
                    .mode(p, DMODES[mode as usize])
                    .mtime(p, T, i64::from(time));
                made.insert(p.clone(), 'd');
            }
            Node::Symlink { target, time } => {
                t.symlink(p, TARGETS[target as usize])
                    .mtime(p, T, i64::from(time) * 7);
                made.insert(p.clone(), 'l');
            }
            Node::Fifo { time } => {
                t.fifo(p).mtime(p, T, i64::from(time));
                made.insert(p.clone(), 'p');
            }
            Node::Link { to } => {
                if files.is_empty() {
                    continue;
                }
                let to = files[to as usize % files.len()].clone();
                t.hardlink(p, &to);
                made.insert(p.clone(), 'f');
                log.push(format!("{} => {}", esc(p), esc(&to)));
                continue;
            }
        }
        log.push(format!("{} {:?}", esc(p), n));
    }
    log
}
