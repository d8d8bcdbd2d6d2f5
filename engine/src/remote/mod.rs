//! `push`: one jail, many hosts, over a byte stream (OpenSSH's stdin/stdout).
//!
//! The protocol is documented in `docs/protocol.md`. In short: both sides say HELLO (magic,
//! protocol number, jailsync version; any difference is refused); the local side OPENs the
//! remote root and trees, sends the jail's manifest of each tree (the engine's manifest text,
//! zstd-compressed in chunks); the remote scans its live trees with its own stat cache, plans
//! exactly as a local upgrade does, and answers with the blake3 hashes of the content it lacks
//! anywhere in its trees (WANT); the local side sends only those blobs, streamed in compressed
//! chunks (a pipe's back-pressure bounds what is in flight; neither side holds more than one
//! chunk); the remote stages every tree with the same engine code as `upgrade` (lock,
//! confinement, never-lacks, whole-or-old), says STAGED, and waits for SWITCH or ABORT.
//!
//! Trust: the remote never makes the local side write anything. The local side only reads the
//! jail (paths from its own scan) and writes to the connection; everything the remote sends is
//! checked (frame lengths before allocating, hashes against the jail's, texts made printable).

pub mod client;
pub mod delta;
pub mod fleet;
mod receive;
pub mod serve;
pub mod session;
mod shadow;
pub mod sig;
pub mod store;
mod sum;
pub mod wire;

use std::io;

/// This program's version: both ends of a connection must run the same.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Engine(#[from] crate::Error),
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The other side runs another version of jailsync (or of the protocol).
    #[error("{0}")]
    Version(String),
    /// The remote reported an error (already made printable).
    #[error("{0}")]
    Remote(String),
    /// The remote refused or could not do what was asked (checked on its side).
    #[error("{0}")]
    Refused(String),
    /// The host answers, but its work has not moved for the timeout: a worker stuck in one
    /// system call (a read from a dead NFS server) keeps the connection alive, not the work.
    #[error(
        "no progress for {} s while {doing} (the host answers, but its work has not moved: \
         a read or write there does not return, e.g. on a dead NFS mount; --timeout)",
        .idle.as_secs()
    )]
    Stuck {
        doing: String,
        idle: std::time::Duration,
    },
    /// The local side asked to abort before the switch (or went away).
    #[error("aborted before the switch: {0}")]
    Aborted(String),
}

pub type Result<T> = std::result::Result<T, RemoteError>;

/// Builds and checks HELLO payloads.
pub fn hello() -> Vec<u8> {
    wire::Enc::default()
        .raw(wire::MAGIC)
        .u32(wire::announced())
        .bytes(VERSION.as_bytes())
        .0
}

/// Checks the peer's HELLO; `peer` names it in the message ("remote" or "local"). The
/// protocol the session speaks: the older of the two when they are one apart (the newer side
/// then uses the older feature set); further apart is refused naming both versions, before
/// anything else is sent.
pub fn check_hello(p: &[u8], peer: &str) -> Result<u32> {
    let mut d = wire::Dec::new(p, "HELLO");
    if d.raw(wire::MAGIC.len()).ok() != Some(&wire::MAGIC[..]) {
        return Err(RemoteError::Protocol(format!(
            "the {peer} side is not a jailsync serve (bad greeting)"
        )));
    }
    let proto = d.u32()?;
    let version = wire::printable(d.bytes()?);
    let ours = wire::announced();
    wire::negotiate(ours, proto).ok_or_else(|| {
        RemoteError::Version(format!(
            "{peer} jailsync is version {version} (protocol {proto}), this one {VERSION} (protocol {ours}): \
             install the same version on both sides (protocols one apart work together)"
        ))
    })
}
