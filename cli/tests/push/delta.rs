//! Deltas (protocol 5): a changed file the host holds an older version of is sent as a zstd
//! delta against it; the host checks what it decodes before anything is staged; a host one
//! protocol older is served with the older feature set. Through a real sshd on 127.0.0.1.

use super::*;

/// The library of `release`, edited as a rebuild does: a few blocks changed, a tail added.
pub(super) fn rebuilt(big: &[u8], seed: u64) -> Vec<u8> {
    let mut v = big.to_vec();
    for (k, at) in [100_000usize, 400_000, 900_000].iter().enumerate() {
        v[*at..at + 4096].copy_from_slice(&random(4096, seed + k as u64));
    }
    v.extend_from_slice(&random(10_000, seed + 9));
    v
}

/// The jail's next release: the library rebuilt, the tool patched.
pub(super) fn patch_release(j: &Tree, big: &[u8]) {
    j.file("usr/pkg/lib/libbig.so.2", big)
        .file("usr/pkg/bin/tool", b"#!/bin/sh\necho newer\n")
        .mode("usr/pkg/bin/tool", 0o755)
        .mtime("usr/pkg/bin/tool", 1_700_000_321, 0)
        .settle_dirs(1_700_000_000);
}

#[test]
fn a_delta_push_makes_the_exact_jail_on_hosts_whose_old_files_differ() {
    let Some(f) = Fleet::start(2) else { return };
    let big = random(1 << 20, 21);
    release(&f.jail, &big);
    let hosts = f.hosts();
    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 0);
    // h2's library is not the one pushed (changed there since): the pusher has no copy of
    // it, so h2 gets that file whole; h1 gets a delta against the version pushed before.
    f.tree("h2")
        .file("usr/pkg/lib/libbig.so.2", rebuilt(&big, 500))
        .settle_dirs(1_700_000_000);
    let new = rebuilt(&big, 100);
    patch_release(&f.jail, &new);

    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 0);
    for h in ["h1", "h2"] {
        same_as_jail(&f, h);
    }
    let (h1, h2) = (host_line(&o, &f, "h1"), host_line(&o, &f, "h2"));
    assert_eq!(
        h1["protocol"],
        jailsync_engine::remote::wire::PROTOCOL,
        "{h1}"
    );
    // Both changed files went as deltas to h1: the library costs a few KiB, not a MiB.
    assert_eq!(h1["deltas"], 2, "{h1}");
    assert_eq!(h1["manifest_deltas"], 2, "{h1}");
    let wire1 = h1["wire_bytes"].as_u64().unwrap();
    assert!(
        wire1 < 64 << 10,
        "h1 moved {wire1} bytes for a 1 MiB library: {h1}"
    );
    // h2's library by its block signatures (protocol 6: see sigs.rs), its tool as a delta.
    assert_eq!(
        (h2["deltas"].as_u64(), h2["sig_deltas"].as_u64()),
        (Some(1), Some(1)),
        "{h2}"
    );
    let wire2 = h2["wire_bytes"].as_u64().unwrap();
    assert!(wire2 < 128 << 10, "{h2}");

    // A repeated push moves the manifests as deltas and nothing else.
    let o = f.push(&hosts, &["--json"]);
    expect_code(&o, 0);
    let h1 = host_line(&o, &f, "h1");
    assert_eq!(
        (h1["blobs"].as_u64(), h1["manifest_deltas"].as_u64()),
        (Some(0), Some(2))
    );
    assert!(h1["wire_bytes"].as_u64().unwrap() < 4096, "{h1}");
}

/// A transport that flips a byte in the middle of the first chunk of every delta of frame type
/// `kind` (DELTA, SIG_DELTA) it carries to the host (`--ssh`: it runs the real ssh with its
/// stdin relayed frame by frame).
pub(super) fn corrupting_ssh(f: &Fleet, kind: u8) -> PathBuf {
    let script = format!(
        r#"#!/usr/bin/python3
import struct, subprocess, sys
p = subprocess.Popen({ssh:?}.split() + sys.argv[1:], stdin=subprocess.PIPE)
inp, out = sys.stdin.buffer, p.stdin
after_delta = False
while True:
    h = inp.read(5)
    if len(h) < 5:
        break
    t, n = struct.unpack('<BI', h)
    body = bytearray(inp.read(n))
    if t == {kind}:
        after_delta = True
    elif t == 0x31 and after_delta and n > 0:
        body[n // 2] ^= 0xFF
        after_delta = False
    out.write(h + bytes(body)); out.flush()
out.close()
sys.exit(p.wait())
"#,
        ssh = f.ssh()
    );
    f.script(&format!("ssh-corrupting-{kind}"), &script)
}

#[test]
fn a_corrupted_delta_is_refused_and_the_host_left_untouched() {
    let Some(f) = Fleet::start(1) else { return };
    require!(
        Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3 for the corrupting transport"
    );
    let big = random(1 << 20, 31);
    release(&f.jail, &big);
    expect_code(&f.push(&f.hosts(), &[]), 0);
    patch_release(&f.jail, &rebuilt(&big, 200));
    let before = live(&f, "h1");

    let o = f
        .push_to(&f.hosts())
        .ssh(corrupting_ssh(&f, 0x34))
        .args(&["--json"])
        .run();
    expect_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("sent as a delta against") && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(live(&f, "h1") == before, "the host changed");
    assert_eq!(summary(&o)["switched"], 0);

    // The same push over an honest transport goes through.
    expect_code(&f.push(&f.hosts(), &[]), 0);
    same_as_jail(&f, "h1");
}

/// `jailsync` announcing protocol `p` (the previous release's feature set).
pub(super) fn speaking(f: &Fleet, p: u32) -> PathBuf {
    f.script(
        &format!("jailsync-protocol-{p}"),
        &format!("#!/bin/sh\nJAILSYNC_WIRE_PROTOCOL={p} exec {BIN} \"$@\"\n"),
    )
}

#[test]
fn a_host_one_protocol_apart_is_served_with_the_older_feature_set() {
    let Some(f) = Fleet::start(1) else { return };
    let proto = jailsync_engine::remote::wire::PROTOCOL;
    let big = random(1 << 20, 41);
    release(&f.jail, &big);
    let older = speaking(&f, proto - 1);
    let o = f
        .push_to(&f.hosts())
        .remote_bin(&older)
        .args(&["--json"])
        .run();
    expect_code(&o, 0);
    patch_release(&f.jail, &rebuilt(&big[..], 300));
    let o = f
        .push_to(&f.hosts())
        .remote_bin(&older)
        .args(&["--json"])
        .run();
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    let h1 = host_line(&o, &f, "h1");
    assert_eq!(h1["protocol"], proto - 1, "{h1}");
    // Version 5's deltas (against what this pusher pushed) are in the older feature set.
    assert_eq!(
        (h1["deltas"].as_u64(), h1["sig_deltas"].as_u64()),
        (Some(2), Some(0)),
        "{h1}"
    );

    // The other way round: an older pusher, a newer host.
    patch_release(&f.jail, &rebuilt(&big[..], 400));
    let mut c = f.push_to(&f.hosts()).args(&["--json"]).command();
    c.env("JAILSYNC_WIRE_PROTOCOL", (proto - 1).to_string());
    let o = run_within(&mut c);
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    assert_eq!(host_line(&o, &f, "h1")["protocol"], proto - 1);

    // Two apart: refused at the greeting, naming both versions, the host untouched.
    let before = live(&f, "h1");
    let o = f
        .push_to(&f.hosts())
        .remote_bin(speaking(&f, proto - 2))
        .run();
    expect_code(&o, 1);
    let err = stderr(&o);
    let v = env!("CARGO_PKG_VERSION");
    assert!(
        err.contains(&format!(
            "remote jailsync is version {v} (protocol {})",
            proto - 2
        )) && err.contains(&format!("this one {v} (protocol {proto})")),
        "{err}"
    );
    assert!(live(&f, "h1") == before);
}
