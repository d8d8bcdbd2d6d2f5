//! Issue 19: what moves with a whole tree. An exchange moves everything that lives in the
//! tree it moves — mounts, old setuid binaries, files created meanwhile in excluded paths,
//! ACLs inherited from where the next tree was staged — and every removal must stop at a
//! mount. One module per class; each test names the defect it pins and fails on the code
//! before its fix.

#[path = "common/mod.rs"]
mod common;

#[path = "moves/mounts.rs"]
mod mounts;
#[path = "moves/appeared.rs"]
mod appeared;
