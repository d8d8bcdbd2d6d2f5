//! The names this program gives its own entries (`.jailsync-*`), in one place: what they are
//! and how to tell ours from a user's entry of the same name. Nothing here touches a tree.

// stat field widths differ between targets; the casts are no-ops only on some.
#![allow(clippy::unnecessary_cast)]

/// Prefix of every temporary name the engine creates in a destination tree.
pub const TMP_PREFIX: &[u8] = b".jailsync-tmp-";

/// The rollback store's name where it lives beside a destination, or at the top of one that
/// is a filesystem of its own. At the top of a tree it is never scanned, synced or deleted.
pub const STORE_NAME: &[u8] = b".jailsync-rollback";

/// The home's name inside DST when the switch is made per top-level entry.
pub const IN_TREE_HOME: &[u8] = b".jailsync-gens";

/// Is `name` one of the engine's temporary names (`.jailsync-tmp-<pid>-<n>`)? Only that exact
/// shape counts, so an ordinary file that merely starts with the prefix is synced like any other.
pub fn is_tmp_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(TMP_PREFIX) else {
        return false;
    };
    let mut parts = rest.split(|&b| b == b'-');
    let digits =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// The name of the home beside a live tree named `live_name`: `.jailsync-NAME`. A name too
/// long for that (over 245 bytes: the filesystem's limit is 255) is shortened to its first 200
/// bytes and a hash of the whole, so every tree rsync can sync has a home, and the same one
/// on every run.
pub fn home_name(live_name: &[u8]) -> Vec<u8> {
    let mut n = b".jailsync-".to_vec();
    if n.len() + live_name.len() <= 255 {
        n.extend_from_slice(live_name);
    } else {
        n.extend_from_slice(&live_name[..200]);
        n.push(b'-');
        for b in &blake3::hash(live_name).as_bytes()[..8] {
            n.extend_from_slice(format!("{b:02x}").as_bytes());
        }
    }
    n
}

/// Whether `name` is one of this program's own names (`.jailsync-*`: a home, the in-tree home,
/// an older version's per-file store, a temporary name), which no run takes for the tree's content.
pub fn is_reserved_top(name: &[u8]) -> bool {
    name.starts_with(b".jailsync-") || is_tmp_name(name)
}

/// Prefix of a release directory in a home whose destination is switched by symlink
/// (`DST -> .jailsync-NAME/rel-N`): a tree stays under one real path from the moment it goes
/// live until it is pruned, so a running program keeps resolving its own release's files.
pub const REL_PREFIX: &[u8] = b"rel-";

/// Whether `name` is a release directory's name: `rel-` then ASCII digits, letters and `-`.
pub fn is_rel_name(name: &[u8]) -> bool {
    name.strip_prefix(REL_PREFIX)
        .is_some_and(|r| !r.is_empty() && r.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-'))
}

/// The target of the switch symlink `live_name` for its release `rel`: relative, through the
/// home beside it (`.jailsync-NAME/rel-N`), so the pair can be moved or mounted elsewhere.
pub fn link_target(live_name: &[u8], rel: &[u8]) -> Vec<u8> {
    let mut t = home_name(live_name);
    t.push(b'/');
    t.extend_from_slice(rel);
    t
}

/// The release a symlink's target names, if it is this program's switch link for a tree named
/// `live_name` (exactly `.jailsync-NAME/rel-N`) or an alias in the home (`rel-N`, or the same
/// full form a switch back to a directory leaves in the home). Anything else is not ours.
pub fn rel_of_target<'t>(live_name: Option<&[u8]>, target: &'t [u8]) -> Option<&'t [u8]> {
    let rel = match live_name {
        Some(n) => target
            .strip_prefix(home_name(n).as_slice())?
            .strip_prefix(b"/")?,
        None => match target.iter().rposition(|&b| b == b'/') {
            Some(i) if target[..i].starts_with(b".jailsync-") && !target[..i].contains(&b'/') => {
                &target[i + 1..]
            }
            Some(_) => return None,
            None => target,
        },
    };
    is_rel_name(rel).then_some(rel)
}

/// Whether `name` (with its `lstat`) is a home or store this program made: a directory named
/// `.jailsync-*` that is private (no group or other read or write bits: a home whose releases
/// are switched by symlink is traversable, 0711) and ours — what `switch::private_dir`
/// makes and insists on. Such a directory is nobody's content at any depth (invariant 13): a
/// nested tree's home (`usr/pkg/.jailsync-pkgdb`) is never synced, deleted or copied by the
/// outer tree's run. An entry of that name we did not make is content like any other.
pub fn is_ours(name: &[u8], st: &rustix::fs::Stat) -> bool {
    name.starts_with(b".jailsync-")
        && !is_tmp_name(name)
        && st.st_mode as u32 & libc::S_IFMT as u32 == libc::S_IFDIR as u32
        && st.st_mode & 0o066 == 0
        && st.st_uid == rustix::process::geteuid().as_raw()
}
