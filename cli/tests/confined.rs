//! Invariant 3, "confined", under attack: while syncs run, a racer keeps swapping a directory
//! of the destination with a symlink to a directory outside it (`RENAME_EXCHANGE`, so one of
//! the two names is always the symlink). Whatever the syncs do or fail to do, nothing outside
//! the destination may change; once the racer stops, a sync converges.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;

/// Swaps `a` and `b` with `RENAME_EXCHANGE` in a loop until dropped.
struct Racer {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Racer {
    fn start(a: &std::path::Path, b: &std::path::Path) -> Racer {
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicUsize::new(0));
        let (st, sw) = (stop.clone(), swaps.clone());
        let a = CString::new(a.as_os_str().as_bytes()).unwrap();
        let b = CString::new(b.as_os_str().as_bytes()).unwrap();
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                // SAFETY: valid C strings; the call only renames.
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                if r == 0 {
                    sw.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Racer {
            stop,
            swaps,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.swaps.load(Ordering::Relaxed)
    }
}

impl Drop for Racer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An outside directory of files named like those in `sub/`, and SRC/DST each with `sub/`
/// and `sublink -> outside`.
fn setup(e: &Env) -> (Tree, Listing) {
    let outside = Tree::new(e.tmp.path().join("outside"));
    for i in 0..100 {
        outside.file(format!("f{i:03}"), b"outside, must not change");
    }
    outside.dir("d");
    let before = listing(&outside.root);
    let target = outside.root.as_os_str().as_bytes();
    for i in 0..100 {
        e.src.file(format!("sub/f{i:03}"), format!("new {i}"));
        e.dst.file(format!("sub/f{i:03}"), format!("old {i}"));
        e.src.file(format!("sub/d/g{i:03}"), b"new");
    }
    e.src.symlink("sublink", target);
    e.dst.symlink("sublink", target);
    (outside, before)
}

#[test]
fn swapping_a_directory_for_an_outside_symlink_never_redirects_a_sync() {
    let e = Env::new().with_dst();
    let (outside, before) = setup(&e);
    let racer = Racer::start(&e.dst.path("sub"), &e.dst.path("sublink"));
    for _ in 0..8 {
        // Errors are expected (the tree changes under the sync); escapes are not.
        let _ = e.js([
            std::ffi::OsStr::new("sync"),
            e.src().as_os_str(),
            e.dst().as_os_str(),
        ]);
        assert_eq!(listing(&outside.root), before, "a sync wrote outside DST");
    }
    assert!(racer.stop() > 100, "the racer barely ran");
    assert_eq!(listing(&outside.root), before, "a sync wrote outside DST");
    // Undisturbed, the next sync converges (twice: the first may clean up after the race).
    let _ = e.js([
        std::ffi::OsStr::new("sync"),
        e.src().as_os_str(),
        e.dst().as_os_str(),
    ]);
    e.sync(&[]);
    assert_same(e.src(), e.dst());
    assert_eq!(listing(&outside.root), before);
}

/// Proves the race above can catch an escape: a copy that writes by path goes through the
/// symlink the racer swaps in, and changes files outside DST.
#[test]
fn the_racer_catches_a_path_based_copy() {
    let e = Env::new().with_dst();
    let (outside, before) = setup(&e);
    let racer = Racer::start(&e.dst.path("sub"), &e.dst.path("sublink"));
    let mut escaped = false;
    for _ in 0..20 {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"for f in "$1"/sub/f*; do cat "$f" > "$2/sub/${f##*/}"; done 2>/dev/null"#)
            .arg("sh")
            .arg(e.src())
            .arg(e.dst())
            .status();
        if listing(&outside.root) != before {
            escaped = true;
            break;
        }
    }
    racer.stop();
    assert!(escaped, "the racer never redirected a path-based copy");
}
