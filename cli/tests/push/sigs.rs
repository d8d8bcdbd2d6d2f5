//! Block signatures (protocol 6): a changed file whose old version on the host this pusher
//! does not hold (a host pushed from elsewhere, changed there, a fresh pusher) is sent as
//! instructions against the host's blocks; the host checks what it rebuilds before anything
//! is staged; a host or pusher one protocol older gets whole files. Through a real sshd on
//! 127.0.0.1.

use super::delta::{corrupting_ssh, patch_release, rebuilt, speaking};
use super::*;

/// The jail released and pushed to every host; then each host's library changed there (as
/// another pusher or its admin would: the same rebuild on all), the jail patched, and this
/// pusher's state forgotten (its push-store gone, as a fresh pusher's).
fn hosts_changed_elsewhere(f: &Fleet, seed: u64) {
    let big = random(1 << 20, seed);
    release(&f.jail, &big);
    expect_code(&f.push(&f.hosts(), &[]), 0);
    let theirs = rebuilt(&big, seed + 100);
    for i in 1..=f.hosts {
        f.tree(&format!("h{i}"))
            .file("usr/pkg/lib/libbig.so.2", &theirs)
            .settle_dirs(1_700_000_000);
    }
    patch_release(&f.jail, &rebuilt(&big, seed + 200));
    std::fs::remove_dir_all(f.local_state()).unwrap();
}

#[test]
fn a_host_this_pusher_never_pushed_to_gets_the_exact_jail_by_block_signatures() {
    let Some(f) = Fleet::start(2) else { return };
    hosts_changed_elsewhere(&f, 61);
    let proto = jailsync_engine::remote::wire::PROTOCOL;

    let o = f.push(&[f.host("h1")], &["--json"]);
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    let h1 = host_line(&o, &f, "h1");
    assert_eq!(h1["protocol"], proto, "{h1}");
    assert_eq!(
        (h1["sig_deltas"].as_u64(), h1["deltas"].as_u64()),
        (Some(1), Some(0)),
        "{h1}"
    );

    // The same change to h2 from a fresh pusher of the previous protocol: whole files.
    std::fs::remove_dir_all(f.local_state()).unwrap();
    let mut c = f.push_to(&[f.host("h2")]).args(&["--json"]).command();
    c.env("JAILSYNC_WIRE_PROTOCOL", (proto - 1).to_string());
    let o = run_within(&mut c);
    expect_code(&o, 0);
    same_as_jail(&f, "h2");
    let h2 = host_line(&o, &f, "h2");
    assert_eq!(
        (h2["protocol"].as_u64(), h2["sig_deltas"].as_u64()),
        (Some((proto - 1).into()), Some(0)),
        "{h2}"
    );
    // A 1 MiB library of random bytes, 12 KiB of it edited and 10 KB added: whole, it is its
    // size; by signatures, the edits, the tail and 12 bytes per KiB block.
    let (w1, w2) = (
        h1["wire_bytes"].as_u64().unwrap(),
        h2["wire_bytes"].as_u64().unwrap(),
    );
    assert!(w2 > 1 << 20, "{h2}");
    assert!(w1 * 8 < w2, "by signatures {w1} bytes, whole {w2}");
}

#[test]
fn a_corrupted_signature_delta_is_refused_and_the_host_left_untouched() {
    let Some(f) = Fleet::start(1) else { return };
    require!(
        Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3 for the corrupting transport"
    );
    hosts_changed_elsewhere(&f, 71);
    let before = live(&f, "h1");

    let o = f
        .push_to(&f.hosts())
        .ssh(corrupting_ssh(&f, 0x35))
        .args(&["--json"])
        .run();
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("sent as a signature delta against")
            && err.contains("libbig.so.2")
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(live(&f, "h1") == before, "the host changed");
    assert_eq!(summary(&o)["switched"], 0);

    // The same push over an honest transport goes through, by signatures.
    let o = f.push(&f.hosts(), &["--json"]);
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    assert_eq!(host_line(&o, &f, "h1")["sig_deltas"], 1);
}

#[test]
fn a_host_of_the_previous_protocol_gets_whole_files_from_a_fresh_pusher() {
    let Some(f) = Fleet::start(1) else { return };
    let proto = jailsync_engine::remote::wire::PROTOCOL;
    hosts_changed_elsewhere(&f, 81);
    let o = f
        .push_to(&f.hosts())
        .remote_bin(speaking(&f, proto - 1))
        .args(&["--json"])
        .run();
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    let h1 = host_line(&o, &f, "h1");
    assert_eq!(
        (
            h1["protocol"].as_u64(),
            h1["sig_deltas"].as_u64(),
            h1["deltas"].as_u64()
        ),
        (Some((proto - 1).into()), Some(0), Some(0)),
        "{h1}"
    );
    assert!(h1["wire_bytes"].as_u64().unwrap() > 1 << 20, "whole: {h1}");
}
