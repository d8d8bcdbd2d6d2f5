//! What a staged entry may carry from where it is made: nothing but the jail's own metadata.
//! One module per kind of thing that could come along.

#[path = "common/mod.rs"]
mod common;

/// POSIX ACLs inherited from a default ACL (issue 19, item 5).
#[path = "moves/acl.rs"]
mod acl;
