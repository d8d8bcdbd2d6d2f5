//! Many hosts: `--hosts-from`, every host planned before any content moves, the summary's
//! counts, Ctrl-C saying where each host was left. Through a real sshd on 127.0.0.1.

use super::*;

#[test]
fn hosts_from_a_file_are_pushed_and_a_rollback_counts_the_hosts_it_rolled_back() {
    let Some(f) = Fleet::start(2) else { return };
    release(&f.jail, &random(64 << 10, 51));
    for h in ["h1", "h2"] {
        old_release(&f.tree(h));
    }
    let list = f.tmp.path().join("hosts");
    std::fs::write(
        &list,
        format!(
            "# the fleet\n{}\n\n  {}   # the second\n",
            f.host("h1"),
            f.host("h2")
        ),
    )
    .unwrap();
    let listed = ["--hosts-from", list.to_str().unwrap(), "--json"];
    let none: [&str; 0] = [];
    let o = f.push(&none, &listed);
    expect_code(&o, 0);
    let s = summary(&o);
    assert_eq!(
        (s["hosts"].as_u64(), s["switched"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
    assert!(s["pusher_cpu_s"].as_f64().is_some_and(|c| c > 0.0), "{s}");
    for h in ["h1", "h2"] {
        same_as_jail(&f, h);
        // Each host's own CPU for its session, as its serve measured it.
        let l = host_line(&o, &f, h);
        assert!(l["host_cpu_s"].as_f64().is_some_and(|c| c > 0.0), "{l}");
    }
    let o = f.push(&none, &[&listed[..], &["--rollback"]].concat());
    expect_code(&o, 0);
    let s = summary(&o);
    assert_eq!(s["rolled_back"], 2, "{s}");
}

#[test]
fn a_host_failing_before_any_content_moved_stops_the_content_for_every_host() {
    let Some(f) = Fleet::start(2) else { return };
    release(&f.jail, &random(1 << 20, 61));
    for h in ["h1", "h2"] {
        old_release(&f.tree(h));
    }
    let before = live(&f, "h1");
    // The third host's root does not exist: it fails while planning, before anything is sent
    // to anyone, and the gate (no failure allowed) can no longer open.
    let o = f
        .push_to(&[f.host("h1"), f.host("h2"), f.host("nowhere/x")])
        .args(&["--json"])
        .run();
    expect_code(&o, 1);
    let h1 = host_line(&o, &f, "h1");
    assert_eq!(h1["result"], "not sent", "{h1}");
    // HELLO, OPEN, manifests and the WANT list: no content.
    assert!(h1["wire_bytes"].as_u64().unwrap() < 64 << 10, "{h1}");
    let err = stderr(&o);
    assert!(err.contains("nowhere/x") && err.contains("failed"), "{err}");
    assert!(live(&f, "h1") == before);
}

#[test]
fn ctrl_c_before_the_gate_says_where_each_host_was_left() {
    let Some(f) = Fleet::start(1) else { return };
    require!(
        Path::new("/usr/bin/python3").exists(),
        "needs /usr/bin/python3 for the stalling transport"
    );
    release(&f.jail, &random(64 << 10, 71));
    old_release(&f.tree("h1"));
    old_release(&f.tree("h2"));
    let before = (live(&f, "h1"), live(&f, "h2"));
    let push = f
        .push_to(&[f.host("h1"), format!("stall:{}", f.root("h2").display())])
        .ssh(stalling_ssh(&f))
        .command()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while !f.root("h1").join("usr/.jailsync-pkg/next").is_dir() {
        assert!(t0.elapsed() < Duration::from_secs(60), "h1 never staged");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(push.id() as i32, libc::SIGINT) };
    let o = push.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{}: staged: left as it was", f.host("h1")))
            && err.contains("stall:")
            && err.contains("before any host was told to switch"),
        "{err}"
    );
    let t0 = Instant::now();
    while f.root("h1/usr/.jailsync-pkg/next").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "h1 kept its staging"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!((live(&f, "h1"), live(&f, "h2")) == before, "a host changed");
}

#[test]
fn bwlimit_holds_what_is_sent_to_a_host_to_its_rate() {
    let Some(f) = Fleet::start(1) else { return };
    // 768 KiB of random content (it does not compress) at 256 KiB/s: about three seconds.
    release(&f.jail, &random(768 << 10, 81));
    let t0 = Instant::now();
    let o = f.push(&f.hosts(), &["--bwlimit", "256K", "--json"]);
    let took = t0.elapsed();
    expect_code(&o, 0);
    same_as_jail(&f, "h1");
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    // The fleet's limit holds too.
    f.jail
        .file("usr/pkg/lib/libbig.so.2", random(768 << 10, 82));
    let t0 = Instant::now();
    let o = f.push(
        &f.hosts(),
        &["--fleet-bwlimit", "256K", "--delta-store", "0"],
    );
    expect_code(&o, 0);
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
}
