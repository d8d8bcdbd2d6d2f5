//! Issue 19: what moves with a whole tree. An exchange moves everything that lives in the
//! tree it moves — mounts, old setuid binaries, files created meanwhile in excluded paths,
//! ACLs inherited from where the next tree was staged — and every removal must stop at a
//! mount. One module per class; each test names the defect it pins and fails on the code
//! before its fix.

/// POSIX ACLs inherited from a default ACL (item 5).
#[path = "moves/acl.rs"]
mod acl;
/// Entries that appear while a run stages (items 4 and 12).
#[path = "moves/appeared.rs"]
mod appeared;
#[path = "moves/conf.rs"]
mod conf;
/// Excluded entries carried across a rollback (item 3).
#[path = "moves/excluded.rs"]
mod excluded;
/// Old setuid/setgid binaries and capabilities left runnable in a generation (item 6).
#[path = "moves/fangs.rs"]
mod fangs;
/// The rsync habit, mass deletes, a swapped upgrade; DST's parent left as found (24, 25).
#[path = "moves/habits.rs"]
mod habits;
/// Homes are nobody's content; a user's entry of a home's name is content (items 11, 22).
#[path = "moves/homes.rs"]
mod homes;
/// A rollback killed or signalled halfway (item 7).
#[path = "moves/killed.rs"]
mod killed;
/// Mounts moved by an exchange or crossed by a removal (items 1 and 2).
#[path = "moves/mounts.rs"]
mod mounts;
/// A home's name for any DST name; a source inside DST's home (items 15, 16).
#[path = "moves/names.rs"]
mod names;
/// Rollback's checks: an older generation's configuration base, xattrs changed since (items 8, 19).
#[path = "moves/rollback_checks.rs"]
mod rollback_checks;
/// A sync onto `/` itself, around what is mounted in it (issue 20 item 2).
#[path = "moves/root.rs"]
mod root;
