//! Homes are nobody's content (invariant 13): a nested tree's home, with its generations, is
//! never synced, deleted or copied by another tree's run; and a user's entry that merely has a
//! home's name is content like any other, never dropped without a word.

use std::fs;
use std::path::Path;

use crate::common::*;

fn js(state: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--state-dir", state.to_str().unwrap()];
    all.extend_from_slice(args);
    run(all)
}

/// Issue 19 item 11: after an upgrade, `sync J/usr/pkg R/usr/pkg` deleted
/// `usr/pkg/.jailsync-pkgdb` (the database's rollback generations), and copying the live tree
/// back put root's private home into the jail.
#[test]
fn a_nested_home_is_neither_deleted_nor_copied_by_the_outer_trees_sync() {
    if !is_root() {
        eprintln!("skipped: homes are made by root");
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("jailsync-homes-")
        .tempdir()
        .unwrap();
    let t = tmp.path().canonicalize().unwrap();
    let (jail, root, state) = (t.join("J"), t.join("R"), t.join("state"));
    let j = Tree::new(&jail);
    j.file("usr/pkg/bin/tool", "v1\n")
        .file("usr/pkg/pkgdb/tool-1/+CONTENTS", "@name tool-1\n");
    fs::create_dir_all(&root).unwrap();
    let up = |s: &Path| {
        js(
            s,
            &[
                "upgrade",
                jail.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
            ],
        )
    };
    expect_code(&up(&state), 0);
    j.file("usr/pkg/bin/tool", "v2\n")
        .remove("usr/pkg/pkgdb/tool-1")
        .file("usr/pkg/pkgdb/tool-2/+CONTENTS", "@name tool-2\n");
    expect_code(&up(&state), 0);
    let home = root.join("usr/pkg/.jailsync-pkgdb");
    assert!(home.join("gen-1").is_dir(), "the database's generation");

    // The outer tree alone, as a user would: the database's home stays, with its generation.
    j.file("usr/pkg/bin/tool", "v3\n");
    let src = jail.join("usr/pkg");
    let dst = root.join("usr/pkg");
    let o = js(
        &state,
        &["sync", "-i", src.to_str().unwrap(), dst.to_str().unwrap()],
    );
    expect_code(&o, 0);
    assert!(!stdout(&o).contains(".jailsync-pkgdb"), "{}", stdout(&o));
    assert!(
        home.join("gen-1").is_dir(),
        "the database's rollback generations were deleted"
    );
    assert_eq!(fs::read_to_string(dst.join("bin/tool")).unwrap(), "v3\n");
    // ... and the database can still be rolled back from it.
    let db = root.join("usr/pkg/pkgdb");
    expect_code(&js(&state, &["rollback", db.to_str().unwrap()]), 0);
    assert!(db.join("tool-1/+CONTENTS").is_file());

    // Copying the live tree back: root's private home does not land in the copy.
    let copy = t.join("copy");
    let o = js(
        &state,
        &["sync", dst.to_str().unwrap(), copy.to_str().unwrap()],
    );
    expect_code(&o, 0);
    assert!(copy.join("bin/tool").is_file());
    assert!(
        !copy.join(".jailsync-pkgdb").exists(),
        "a home was copied as content"
    );
}

/// Issue 19 item 22: user entries named `.jailsync-gens` or `.jailsync-rollback` at the top
/// vanished in a switch and were skipped at the source, itemized nowhere. Entries we did not
/// make (not a private directory of ours) are the tree's content.
#[test]
fn user_entries_with_a_homes_name_are_synced_and_itemized() {
    let e = Env::new().with_dst();
    let s = Tree::new(e.src());
    s.file("bin/tool", "new\n")
        .file(".jailsync-gens/readme", "a user's directory\n")
        .mode(".jailsync-gens", 0o755);
    let d = Tree::new(e.dst());
    d.file("bin/tool", "old\n")
        .file(".jailsync-rollback", "a user's file\n");
    let out = e.sync(&["-i"]);
    assert!(out.contains(".jailsync-gens/readme"), "{out}");
    assert!(
        out.contains("*deleting") && out.contains(".jailsync-rollback"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(e.dst().join(".jailsync-gens/readme")).unwrap(),
        "a user's directory\n"
    );
    assert!(!e.dst().join(".jailsync-rollback").exists());
    e.assert_synced();
}
