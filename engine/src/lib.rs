//! jailsync-engine: everything that touches trees.
//!
//! The engine never prints; it reports progress through [`progress::Progress`].

pub mod apply;
pub mod cache;
pub mod defang;
pub mod deletes;
pub mod entry;
pub mod error;
pub mod excluded;
pub mod filter;
pub mod fsx;
pub mod generation;
pub mod guard;
pub mod hash;
pub mod history;
pub mod jail;
pub mod journal;
pub mod layout;
pub mod manifest;
pub mod names;
pub mod opts;
pub mod packages;
pub mod paths;
pub mod plan;
pub mod procs;
pub mod progress;
pub mod protect;
pub mod quick;
pub mod remote;
pub mod scan;
pub mod stage;
pub mod steps;
pub mod switch;
pub mod sync;
pub mod txn;
pub mod upgrade;
pub mod usage;

pub use error::{Error, Result};

/// The layer rule (no import circles), checked over this crate's and the CLI's files.
#[cfg(test)]
mod layers;
#[cfg(test)]
mod testkit;
