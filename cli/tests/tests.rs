//! The integration suite, one test binary (`cargo test --test integration`): every file in
//! this directory is a module of it, sharing `common` and `faultkit`. Each former binary
//! linked the whole engine and cli; one link now serves them all. `Cargo.toml` sets
//! `autotests = false`, so a new `tests/NAME.rs` runs only once declared here (which
//! `every_suite_is_a_module` checks). Run one suite with `cargo test --test integration
//! NAME::`.
//!
//! The suites share one process and its environment: a test never changes the process's
//! environment, working directory or umask; what its children need it gives them (as the
//! `JAILSYNC_SWITCH=entries` of the tests of the switch by subtrees).

#[macro_use]
mod common;
mod faultkit;

mod admin;
mod admin_integration;
mod cli;
mod confined;
mod faults;
mod hostile_links;
mod hostile_paths;
mod hostile_rollback;
mod jail;
mod link_switch;
mod moves;
mod never_lacks;
mod pkgnames;
mod pkgsrc;
mod portable;
mod push;
mod rollback;
mod switch;
mod sync_exact;
mod sync_props;

/// Every `tests/*.rs` is declared above: with `autotests = false` an undeclared one would
/// silently never run.
#[test]
fn every_suite_is_a_module() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let this = std::fs::read_to_string(dir.join("tests.rs")).unwrap();
    let mut missing = Vec::new();
    for ent in std::fs::read_dir(&dir).unwrap() {
        let name = ent.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "tests" && !this.contains(&format!("\nmod {stem};\n")) {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not modules of tests/tests.rs: {missing:?}"
    );
}
