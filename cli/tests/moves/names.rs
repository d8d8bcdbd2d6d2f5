//! Where a destination's home is, and what may not be a source: the home is derived from
//! DST's name however long it is, and a source inside DST's home is refused.

use std::fs;

use crate::common::*;

/// Issue 19 item 16: a DST whose last name is 246–255 bytes could not be synced
/// (`.jailsync-NAME` is too long); rsync can. Its home now has a shortened, stable name.
#[test]
fn a_destination_with_a_255_byte_name_is_synced_and_rolled_back() {
    let e = Env::new();
    let parent = e.dst().parent().unwrap().join("long");
    fs::create_dir_all(&parent).unwrap();
    for len in [246usize, 255] {
        let dst = parent.join("d".repeat(len));
        Tree::new(e.src()).file("bin/tool", format!("v{len}\n"));
        let state = e.state();
        let args = |d: &std::path::Path| {
            vec![
                "--state-dir".to_string(),
                state.display().to_string(),
                "sync".into(),
                e.src().display().to_string(),
                d.display().to_string(),
            ]
        };
        expect_code(&run(args(&dst)), 0);
        assert_eq!(
            fs::read_to_string(dst.join("bin/tool")).unwrap(),
            format!("v{len}\n")
        );
        Tree::new(e.src()).file("bin/tool", "next\n");
        expect_code(&run(args(&dst)), 0);
        let o = run([
            "--state-dir",
            state.to_str().unwrap(),
            "rollback",
            dst.to_str().unwrap(),
        ]);
        expect_code(&o, 0);
        assert_eq!(
            fs::read_to_string(dst.join("bin/tool")).unwrap(),
            format!("v{len}\n")
        );
    }
}

/// Issue 19 item 15: `sync HOME/gen-N DST` (the path `history` prints) pruned its own source
/// before staging. A source inside DST's home is refused, pointing at `rollback --gen`.
#[test]
fn a_source_inside_the_destinations_home_is_refused() {
    let e = Env::new().with_dst();
    Tree::new(e.src()).file("bin/tool", "v1\n");
    e.sync(&[]);
    Tree::new(e.src()).file("bin/tool", "v2\n");
    e.sync(&[]);
    let home = e.dst().parent().unwrap().join(format!(
        ".jailsync-{}",
        e.dst().file_name().unwrap().to_string_lossy()
    ));
    let gen = home.join("gen-2");
    assert!(gen.join("bin/tool").is_file());
    let o = e.js(["sync".as_ref(), gen.as_os_str(), e.dst().as_os_str()]);
    expect_code(&o, 2);
    assert!(stderr(&o).contains("rollback --gen"), "{}", stderr(&o));
    assert!(gen.join("bin/tool").is_file(), "the generation is intact");
    assert_eq!(
        fs::read_to_string(e.dst().join("bin/tool")).unwrap(),
        "v2\n"
    );
}
