//! jailsync-engine: everything that touches trees.
//!
//! The engine never prints; it reports progress through [`progress::Progress`].

pub mod jail;
