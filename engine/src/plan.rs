//! The delta: what must happen to the destination so that it equals the source.
//!
//! Both entry lists are sorted by path bytes, so one merge-join pairs them. Each pair becomes at
//! most one [`Action`]:
//! - **Create**: only in the source.
//! - **Replace**: a new object (content, symlink target, device number or hard-link grouping
//!   differs, or a non-directory became another non-directory) staged beside the target and
//!   renamed over it — `rename` replaces a non-directory atomically.
//! - **Exchange**: a directory became a non-directory or the other way round; `rename` cannot do
//!   that, `renameat2(RENAME_EXCHANGE)` can, so the path never vanishes.
//! - **Meta**: same content, other mode/owner/mtime/xattrs: set in place, never rewritten.
//! - **Delete**: only in the destination.
//!
//! A new directory (created or exchanged in) is built whole under a temporary name and published
//! with one rename; everything below it is *inside* and has no commit step of its own.
//!
//! Content equality is by blake3, never by size and mtime: the caller hashes every same-size
//! pair first ([`hash_needs`]). Hard links, of every type but directories (symlinks, fifos,
//! sockets and devices are linked as rsync `-H` links them): a source group (entries sharing
//! dev+ino) is in place only if the destination has exactly the same paths sharing one inode;
//! otherwise the whole group is restaged as one new inode with one leader made and the rest
//! linked to it. A destination inode with more links than the destination holds is never given
//! metadata in place (that would change its other names): it is replaced.

use std::collections::HashMap;

use crate::entry::{Ent, Entries, Entry, Kind};

pub const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Create,
    Replace,
    Exchange,
    Meta,
    Delete,
}

/// What differs, for itemized output (rsync's `YXcstpoguax`).
pub mod change {
    pub const NEW: u16 = 1;
    pub const CONTENT: u16 = 2;
    pub const SIZE: u16 = 4;
    pub const TIME: u16 = 8;
    pub const PERMS: u16 = 16;
    pub const OWNER: u16 = 32;
    pub const GROUP: u16 = 64;
    pub const XATTR: u16 = 128;
    pub const TYPE: u16 = 256;
    pub const LINK: u16 = 512;
    pub const TARGET: u16 = 1024;
}

#[derive(Clone, Debug)]
pub struct Action {
    pub op: Op,
    /// Index into the source entries, or [`NONE`].
    pub src: u32,
    /// Index into the destination entries, or [`NONE`].
    pub dst: u32,
    /// [`change`] bits.
    pub changes: u16,
    /// Staged inside a new directory's temporary subtree: published with it.
    pub inside: bool,
    /// A delete below a directory that is exchanged out: removed with it.
    pub covered: bool,
    /// For a hard-link follower: the source index of its group's leader (copied once).
    pub link_to: u32,
}

/// What to compare and set.
#[derive(Clone, Copy, Debug)]
pub struct PlanOpts {
    pub owner: bool,
    pub xattrs: bool,
}

pub struct Plan {
    /// Sorted by path.
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn path<'a>(&self, a: &Action, src: &'a Entries, dst: &'a Entries) -> &'a [u8] {
        action_path(a, src, dst)
    }
}

/// The path an action is about: its source entry's, or for a delete its destination entry's.
fn action_path<'a>(a: &Action, src: &'a Entries, dst: &'a Entries) -> &'a [u8] {
    if a.src != NONE {
        src.path(a.src as usize)
    } else {
        dst.path(a.dst as usize)
    }
}

/// Removes the actions `drop` marks (one flag per action). A hard-link group whose leader is
/// removed gets its next member still planned as leader.
pub fn drop_actions(plan: &mut Plan, drop: &[bool]) {
    let gone: std::collections::HashSet<u32> = plan
        .actions
        .iter()
        .zip(drop)
        .filter(|(a, &d)| d && a.src != NONE)
        .map(|(a, _)| a.src)
        .collect();
    let mut flags = drop.iter();
    plan.actions
        .retain(|_| !flags.next().copied().unwrap_or(false));
    let mut leaders: HashMap<u32, u32> = HashMap::new();
    for a in plan.actions.iter_mut() {
        if a.link_to != NONE && gone.contains(&a.link_to) {
            match leaders.get(&a.link_to) {
                Some(&l) => a.link_to = l,
                None => {
                    leaders.insert(a.link_to, a.src);
                    a.link_to = NONE;
                }
            }
        }
    }
}

/// Indices of source and destination files that must be hashed before planning: every pair of
/// regular files of equal, non-zero size whose hash is not yet known.
pub fn hash_needs(src: &Entries, dst: &Entries) -> (Vec<u32>, Vec<u32>) {
    let (mut s, mut d) = (Vec::new(), Vec::new());
    merge(src, dst, |i, j| {
        if let (Some(i), Some(j)) = (i, j) {
            let (a, b) = (src.at(i), dst.at(j));
            if a.kind == Kind::File && b.kind == Kind::File && a.size == b.size && a.size > 0 {
                if a.hash.is_none() {
                    s.push(i as u32);
                }
                if b.hash.is_none() {
                    d.push(j as u32);
                }
            }
        }
    });
    (s, d)
}

/// Calls `f` for every path in either list, in order, with its index on each side.
fn merge(src: &Entries, dst: &Entries, mut f: impl FnMut(Option<usize>, Option<usize>)) {
    let (mut i, mut j) = (0, 0);
    while i < src.len() || j < dst.len() {
        let ord = if i < src.len() && j < dst.len() {
            src.path(i).cmp(dst.path(j))
        } else if i < src.len() {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        };
        match ord {
            std::cmp::Ordering::Less => {
                f(Some(i), None);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                f(None, Some(j));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                f(Some(i), Some(j));
                i += 1;
                j += 1;
            }
        }
    }
}

fn parent(p: &[u8]) -> Option<&[u8]> {
    if p.is_empty() {
        None
    } else {
        Some(crate::fsx::split_parent(p).0)
    }
}

/// Metadata differences between a source entry and a destination entry of the same kind.
pub fn meta_changes(s: &Entry, d: &Entry, o: PlanOpts) -> u16 {
    let mut c = 0;
    // Symlink permission bits mean nothing on Linux and cannot be set.
    if s.kind != Kind::Symlink && s.mode != d.mode {
        c |= change::PERMS;
    }
    if o.owner && s.uid() != d.uid() {
        c |= change::OWNER;
    }
    if o.owner && s.gid() != d.gid() {
        c |= change::GROUP;
    }
    if !s.same_mtime(d) {
        c |= change::TIME;
    }
    if o.xattrs && s.xattrs() != d.xattrs() {
        c |= change::XATTR;
    }
    c
}

/// Hard-link groups by inode: the indices of the entries (of any type but directories) that
/// share it within the list, in path order; inodes with one name here are left out.
fn groups(entries: &Entries) -> HashMap<(u64, u64), Vec<usize>> {
    let mut g: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.is_multi_linked() {
            g.entry((e.dev(), e.ino)).or_default().push(i);
        }
    }
    g.retain(|_, v| v.len() > 1);
    g
}

/// Computes the plan. `src` and `dst` are sorted by path and start with the root (`""`).
pub fn plan(src: &Entries, dst: &Entries, o: PlanOpts) -> Plan {
    let links = Links::new(src, dst);
    let mut delta = Delta {
        src,
        dst,
        o,
        links: &links,
        actions: Vec::new(),
        new_dirs: HashMap::new(),
        gone_dirs: HashMap::new(),
        group_content: HashMap::new(),
    };
    merge(src, dst, |i, j| delta.pair(i, j));
    let Delta {
        mut actions,
        group_content,
        ..
    } = delta;
    restage_groups(&mut actions, src, dst, &links, &group_content);
    link_followers(&mut actions, &links);
    Plan { actions }
}

/// The destination entry at source entry `m`'s path, if it is of the same type.
///
/// Only hard-link groups look destination entries up by path, and `dst` is sorted: a map of
/// every destination file cost a no-op run more time and memory than all groups together.
/// A member stays in its group only where the destination has an entry of its type.
fn dst_like(src: &Entries, dst: &Entries, m: usize) -> Option<usize> {
    let k = src[m].kind;
    dst.search(src.path(m)).ok().filter(|&j| dst[j].kind == k)
}

/// The hard-link groups of both lists, and which source groups the destination already
/// links exactly so.
struct Links {
    /// Source groups by inode (see [`groups`]).
    src: HashMap<(u64, u64), Vec<usize>>,
    /// Destination groups by inode.
    dst: HashMap<(u64, u64), Vec<usize>>,
    /// Per source entry in a group: its leader.
    group_of: HashMap<usize, usize>,
    /// Per leader: whether the destination links the group's paths exactly so.
    ok: HashMap<usize, bool>,
}

impl Links {
    fn new(src: &Entries, dst: &Entries) -> Links {
        let sgroups = groups(src);
        let dgroups = groups(dst);
        let mut group_of: HashMap<usize, usize> = HashMap::new();
        let mut group_ok: HashMap<usize, bool> = HashMap::new();
        for members in sgroups.values() {
            let leader = members[0];
            let mut ok = true;
            let mut key = None;
            for &m in members {
                group_of.insert(m, leader);
                match dst_like(src, dst, m) {
                    Some(j) => {
                        let k = (dst[j].dev(), dst[j].ino);
                        if key.is_some_and(|x| x != k) {
                            ok = false;
                        }
                        key = Some(k);
                    }
                    None => ok = false,
                }
            }
            if ok {
                let k = key.expect("group has members");
                ok = dgroups.get(&k).is_some_and(|v| v.len() == members.len());
            }
            group_ok.insert(leader, ok);
        }
        Links {
            src: sgroups,
            dst: dgroups,
            group_of,
            ok: group_ok,
        }
    }
}

fn action(op: Op, src: u32, dst: u32, changes: u16) -> Action {
    Action {
        op,
        src,
        dst,
        changes,
        inside: false,
        covered: false,
        link_to: NONE,
    }
}

/// Is `p`'s parent in `set`?
fn is_under(set: &HashMap<&[u8], ()>, p: &[u8]) -> bool {
    parent(p).is_some_and(|q| set.contains_key(q))
}

/// The merge-join's pass: one action per path that differs, in path order.
struct Delta<'e, 'l> {
    src: &'e Entries,
    dst: &'e Entries,
    o: PlanOpts,
    links: &'l Links,
    actions: Vec<Action>,
    /// Source dirs that are new (published whole) or inside such a subtree.
    new_dirs: HashMap<&'e [u8], ()>,
    /// Destination dirs exchanged out for a non-directory.
    gone_dirs: HashMap<&'e [u8], ()>,
    /// A group's content differs from what the destination holds: decided once per group.
    group_content: HashMap<usize, bool>,
}

impl<'e> Delta<'e, '_> {
    fn pair(&mut self, i: Option<usize>, j: Option<usize>) {
        match (i, j) {
            (Some(i), None) => self.create(i),
            (None, Some(j)) => self.delete(j),
            (Some(i), Some(j)) => self.compare(i, j),
            (None, None) => unreachable!(),
        }
    }

    fn create(&mut self, i: usize) {
        let s = self.src.at(i);
        let inside = is_under(&self.new_dirs, s.path);
        if s.kind == Kind::Dir {
            self.new_dirs.insert(s.path, ());
        }
        let mut a = action(Op::Create, i as u32, NONE, change::NEW);
        a.inside = inside;
        self.actions.push(a);
    }

    fn delete(&mut self, j: usize) {
        let d = self.dst.at(j);
        let covered = is_under(&self.gone_dirs, d.path);
        if covered && d.kind == Kind::Dir {
            self.gone_dirs.insert(d.path, ());
        }
        let mut a = action(Op::Delete, NONE, j as u32, 0);
        a.covered = covered;
        self.actions.push(a);
    }

    /// A path on both sides: replaced (another type, content or linking), given metadata, or
    /// left alone.
    fn compare(&mut self, i: usize, j: usize) {
        let (s, d) = (self.src.at(i), self.dst.at(j));
        if s.kind != d.kind {
            let op = if s.kind == Kind::Dir || d.kind == Kind::Dir {
                Op::Exchange
            } else {
                Op::Replace
            };
            if s.kind == Kind::Dir {
                self.new_dirs.insert(s.path, ());
            }
            if d.kind == Kind::Dir {
                self.gone_dirs.insert(d.path, ());
            }
            let changes = change::NEW | change::TYPE;
            self.actions.push(action(op, i as u32, j as u32, changes));
            return;
        }
        let meta = meta_changes(&s, &d, self.o);
        let mut content = content_changes(&s, &d);
        if s.kind != Kind::Dir {
            content |= self.link_changes(i, &d, meta, content);
        }
        if content != 0 {
            let changes = content | meta;
            self.actions
                .push(action(Op::Replace, i as u32, j as u32, changes));
        } else if meta != 0 {
            self.actions
                .push(action(Op::Meta, i as u32, j as u32, meta));
        }
    }

    /// [`change::LINK`] if source entry `i` (not a directory) cannot keep destination entry
    /// `d`'s inode for its linking; notes whether its group's content differs.
    fn link_changes(&mut self, i: usize, d: &Ent<'_>, meta: u16, content: u16) -> u16 {
        // chmod, chown, utimensat and xattr calls act on the inode, so on every name it has:
        // one with more links than the destination holds (linked from elsewhere on the
        // system, or from the jail itself) must not have its metadata set in place
        // (invariants 3 and 4), whatever its type. It gets a new inode instead.
        let inside = self.links.dst.get(&(d.dev(), d.ino)).map_or(1, Vec::len);
        let outside = meta != 0 && d.nlink as usize > inside;
        let leader = self.links.group_of.get(&i).copied();
        let linked = match leader {
            Some(leader) => !self.links.ok[&leader],
            // A single source entry must not share its inode in the tree either.
            None => inside > 1 || outside,
        };
        if let Some(leader) = leader {
            // Every member of a group shares one inode: if any member's content differs,
            // all are restaged together.
            let differs = self.group_content.entry(leader).or_insert(false);
            *differs |= content & (change::CONTENT | change::TARGET) != 0 || outside;
        }
        if linked {
            change::LINK
        } else {
            0
        }
    }
}

/// Content differences between a source entry and a destination entry of the same kind.
fn content_changes(s: &Ent<'_>, d: &Ent<'_>) -> u16 {
    let mut content = 0;
    match s.kind {
        Kind::File => {
            if s.size != d.size {
                content |= change::CONTENT | change::SIZE;
            } else if s.size > 0 && (s.hash.is_none() || s.hash != d.hash) {
                content |= change::CONTENT;
            } else if s.is_sparse() && !d.is_sparse() {
                // Same bytes, but the destination lost its holes.
                content |= change::CONTENT;
            }
        }
        Kind::Symlink if s.target() != d.target() => content |= change::TARGET,
        Kind::Char | Kind::Block if s.rdev() != d.rdev() => content |= change::CONTENT,
        _ => {}
    }
    content
}

/// The second pass for hard links: a group is restaged whole when any member needs it.
fn restage_groups(
    actions: &mut Vec<Action>,
    src: &Entries,
    dst: &Entries,
    links: &Links,
    group_content: &HashMap<usize, bool>,
) {
    let restage: HashMap<usize, bool> = links
        .ok
        .iter()
        .map(|(&l, &ok)| (l, !ok || group_content.get(&l).copied().unwrap_or(false)))
        .collect();
    // Action index of each member of a restaged group (only those: a map of every action
    // was most of the plan's memory).
    let wanted: std::collections::HashSet<u32> = restage
        .iter()
        .filter(|(_, &r)| r)
        .flat_map(|(&l, _)| &links.src[&(src[l].dev(), src[l].ino)])
        .map(|&m| m as u32)
        .collect();
    let mut acted: HashMap<u32, usize> = HashMap::new();
    if !wanted.is_empty() {
        for (k, a) in actions.iter().enumerate() {
            if wanted.contains(&a.src) {
                acted.insert(a.src, k);
            }
        }
    }
    let mut extra = Vec::new();
    for (&leader, &members_restage) in &restage {
        if !members_restage {
            continue;
        }
        let members = &links.src[&(src[leader].dev(), src[leader].ino)];
        for &m in members {
            match acted.get(&(m as u32)) {
                Some(&k) => {
                    let a = &mut actions[k];
                    if a.op == Op::Meta {
                        a.op = Op::Replace;
                        a.changes |= change::LINK;
                    }
                }
                None => {
                    // Unchanged member of a group being restaged: it joins the new inode.
                    let Some(j) = dst_like(src, dst, m) else {
                        continue; // not there: it has an action of its own
                    };
                    extra.push(action(Op::Replace, m as u32, j as u32, change::LINK));
                }
            }
        }
    }
    if !extra.is_empty() {
        actions.extend(extra);
        actions.sort_by(|a, b| action_path(a, src, dst).cmp(action_path(b, src, dst)));
    }
}

/// Followers link to the first member (in path order) that is itself staged — including a
/// member that replaces a directory (Exchange), else it would be staged as a lone copy.
fn link_followers(actions: &mut [Action], links: &Links) {
    let mut first_staged: HashMap<usize, u32> = HashMap::new();
    for a in actions.iter_mut() {
        if a.src == NONE || !matches!(a.op, Op::Create | Op::Replace | Op::Exchange) {
            continue;
        }
        if let Some(&leader) = links.group_of.get(&(a.src as usize)) {
            match first_staged.get(&leader) {
                Some(&f) => a.link_to = f,
                None => {
                    first_staged.insert(leader, a.src);
                }
            }
        }
    }
}

/// The 11-character rsync-style change code of an action (`*deleting  ` for deletes).
pub fn itemize(a: &Action, src: &Entries) -> String {
    if a.op == Op::Delete {
        return "*deleting  ".into();
    }
    let s = &src[a.src as usize];
    let k = s.kind.itemize_char();
    let y = match (a.op, s.kind) {
        (Op::Meta, _) => '.',
        (_, Kind::File) => '>',
        _ => 'c',
    };
    if a.changes & change::NEW != 0 {
        return format!("{y}{k}+++++++++");
    }
    let c = a.changes;
    let bit = |m: u16, ch: char| if c & m != 0 { ch } else { '.' };
    format!(
        "{y}{k}{}{}{}{}{}{}.{}{}",
        if c & (change::CONTENT | change::TARGET) != 0 {
            'c'
        } else {
            '.'
        },
        bit(change::SIZE, 's'),
        bit(change::TIME, 't'),
        bit(change::PERMS, 'p'),
        bit(change::OWNER, 'o'),
        bit(change::GROUP, 'g'),
        '.',
        bit(change::XATTR, 'x'),
    )
}

/// Counts per kind of change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub created: u64,
    pub updated: u64,
    pub type_changed: u64,
    pub metadata: u64,
    pub deleted: u64,
}

impl Counts {
    pub fn of(plan: &Plan) -> Counts {
        Counts::of_done(plan, &[])
    }

    /// Counts the actions carried out (`done[k]`; all of them where `done` is empty).
    pub fn of_done(plan: &Plan, done: &[bool]) -> Counts {
        let mut c = Counts::default();
        for (k, a) in plan.actions.iter().enumerate() {
            if done.get(k) == Some(&false) {
                continue;
            }
            match a.op {
                Op::Create => c.created += 1,
                Op::Replace if a.changes & change::TYPE != 0 => c.type_changed += 1,
                Op::Exchange => c.type_changed += 1,
                Op::Replace => c.updated += 1,
                Op::Meta => c.metadata += 1,
                Op::Delete => c.deleted += 1,
            }
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.created + self.updated + self.type_changed + self.metadata + self.deleted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NON_DIRS: [Kind; 6] = [
        Kind::File,
        Kind::Symlink,
        Kind::Fifo,
        Kind::Char,
        Kind::Block,
        Kind::Socket,
    ];

    /// A tree of `(path, kind, ino, nlink, mtime)` under a root directory (empty files, one
    /// symlink target, no device number: only links and metadata differ). The mtime stands
    /// for any metadata: it is what every type has.
    fn tree(es: &[(&str, Kind, u64, u32, i64)]) -> Entries {
        let mut out = Entries::new();
        out.push(b"", Entry::new(Kind::Dir));
        for &(p, kind, ino, nlink, mtime) in es {
            let mut e = Entry::new(kind);
            (e.ino, e.nlink) = (ino, nlink);
            e.set_dev(1);
            e.set_mtime(mtime, 0);
            if kind == Kind::Symlink {
                e.set_target(Some(b"t".as_slice().into()));
            }
            out.push(p.as_bytes(), e);
        }
        out
    }

    fn ops(p: &Plan, src: &Entries, dst: &Entries) -> Vec<(String, Op, bool, u32)> {
        p.actions
            .iter()
            .map(|a| {
                let path = String::from_utf8_lossy(p.path(a, src, dst)).into_owned();
                (path, a.op, a.changes & change::LINK != 0, a.link_to)
            })
            .collect()
    }

    const O: PlanOpts = PlanOpts {
        owner: true,
        xattrs: true,
    };

    #[test]
    fn an_inode_with_names_outside_the_destination_is_replaced_whatever_its_type() {
        for k in NON_DIRS {
            let src = tree(&[("x", k, 10, 1, 2)]);
            // Two links, one of them here: the other is outside.
            let dst = tree(&[("x", k, 20, 2, 1)]);
            let got = ops(&plan(&src, &dst, O), &src, &dst);
            assert_eq!(got, [("x".into(), Op::Replace, true, NONE)], "{k:?}");
            // Nothing to set: left alone, however linked.
            let same = tree(&[("x", k, 20, 2, 2)]);
            assert!(plan(&src, &same, O).is_empty(), "{k:?}");
            // Its only name: set in place.
            let alone = tree(&[("x", k, 20, 1, 1)]);
            let got = ops(&plan(&src, &alone, O), &src, &alone);
            assert_eq!(got, [("x".into(), Op::Meta, false, NONE)], "{k:?}");
        }
    }

    #[test]
    fn hard_link_groups_of_every_type_are_kept_split_and_merged() {
        for k in NON_DIRS {
            let grouped = tree(&[("a", k, 10, 2, 1), ("b", k, 10, 2, 1)]);
            let split = tree(&[("a", k, 20, 1, 1), ("b", k, 21, 1, 1)]);
            assert!(plan(&grouped, &grouped, O).is_empty(), "{k:?}");
            // Split in the destination: restaged as one inode, `b` linked to `a`.
            let got = ops(&plan(&grouped, &split, O), &grouped, &split);
            assert_eq!(
                got,
                [
                    ("a".into(), Op::Replace, true, NONE),
                    ("b".into(), Op::Replace, true, 1),
                ],
                "{k:?}"
            );
            // Merged in the destination: each made its own inode again.
            let got = ops(&plan(&split, &grouped, O), &split, &grouped);
            assert_eq!(
                got,
                [
                    ("a".into(), Op::Replace, true, NONE),
                    ("b".into(), Op::Replace, true, NONE),
                ],
                "{k:?}"
            );
        }
    }
}
