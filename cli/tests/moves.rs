//! Moves of whole trees (a switch and its rollback) as seen from the entries that are not the
//! sync's: one module per concern.

#[path = "common/mod.rs"]
mod common;

// A crate root finds its modules beside it, not in `moves/`.
#[path = "moves/excluded.rs"]
mod excluded;
