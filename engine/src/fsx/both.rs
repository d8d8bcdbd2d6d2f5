use std::os::fd::AsFd;
use std::os::unix::fs::symlink;

use super::*;

fn impls() -> Vec<&'static dyn Os> {
    let mut v: Vec<&'static dyn Os> = vec![&portable::Portable];
    #[cfg(target_os = "linux")]
    v.push(&linux::Linux);
    v
}

fn dirfd(p: &Path) -> OwnedFd {
    open_root(p).unwrap()
}

#[test]
fn open_beneath_refuses_symlinks_and_dotdot_anywhere() {
    for os in impls() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("root/a/b")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        symlink(t.path().join("outside"), t.path().join("root/a/link")).unwrap();
        let root = dirfd(&t.path().join("root"));
        let fl = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let ok = os.open_beneath(root.as_fd(), b"a/b", fl).unwrap();
        let want = std::fs::metadata(t.path().join("root/a/b")).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            rfs::fstat(&ok).unwrap().st_ino as u64,
            want.ino(),
            "{}",
            os.name()
        );
        // (`..` that stays beneath is allowed by openat2, refused by the walk: never escapes.)
        for bad in [
            &b"a/link"[..],
            b"a/link/x",
            b"../outside",
            b"a/../../outside",
        ] {
            assert!(
                os.open_beneath(root.as_fd(), bad, fl).is_err(),
                "{}: {} opened",
                os.name(),
                String::from_utf8_lossy(bad)
            );
        }
    }
}

#[test]
fn exchange_swaps_whole_objects_and_noreplace_refuses() {
    for os in impls() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("in-a"), b"a").unwrap();
        std::fs::write(&b, b"file b").unwrap();
        let d = dirfd(t.path());
        os.exchange(d.as_fd(), b"a", d.as_fd(), b"b").unwrap();
        assert!(a.is_file() && b.join("in-a").is_file(), "{}", os.name());
        assert_eq!(std::fs::read(&a).unwrap(), b"file b");
        // Nothing left behind by an emulated exchange.
        let names = list_dir(d.as_fd()).unwrap();
        assert_eq!(names.len(), 2, "{}: {names:?}", os.name());
        // Missing side: an error, and nothing moved.
        assert!(os.exchange(d.as_fd(), b"a", d.as_fd(), b"none").is_err());
        assert!(a.is_file() && b.is_dir(), "{}", os.name());
        let e = os
            .move_noreplace(d.as_fd(), b"a", d.as_fd(), b"b")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{}", os.name());
        os.move_noreplace(d.as_fd(), b"a", d.as_fd(), b"c").unwrap();
        assert!(t.path().join("c").is_file() && !a.exists(), "{}", os.name());
    }
}

#[test]
fn xattrs_of_files_dirs_and_the_root_round_trip() {
    for os in impls() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        let d = dirfd(t.path());
        let want: Xattrs =
            vec![(b"user.k".to_vec().into_boxed_slice(), b"v".to_vec().into())].into_boxed_slice();
        for name in [&b"f"[..], b"d"] {
            let fd = rfs::openat(
                d.as_fd(),
                cstr(name).unwrap().as_c_str(),
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            match os.write_xattrs_fd(fd.as_fd(), Some(&want)) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    eprintln!("skipped: no user xattrs on this filesystem");
                    return;
                }
                r => r.unwrap(),
            }
            assert_eq!(
                os.read_xattrs_at(d.as_fd(), name).unwrap().as_deref(),
                Some(&want[..]),
                "{}",
                os.name()
            );
            os.write_xattrs_fd(fd.as_fd(), None).unwrap();
            assert_eq!(os.read_xattrs_at(d.as_fd(), name).unwrap(), None);
        }
        // The root itself, by ".".
        assert_eq!(os.read_xattrs_at(d.as_fd(), b".").unwrap(), None);
    }
}

#[test]
fn node_metadata_is_set_without_following_a_symlink() {
    for os in impls() {
        let t = tempfile::tempdir().unwrap();
        let d = dirfd(t.path());
        let mut e = Entry::new(Kind::Fifo);
        e.mode = 0o640;
        e.set_mtime(1_500_000_000, 7);
        mknod_at(d.as_fd(), b"p", &e).unwrap();
        let o = MetaOpts {
            owner: false,
            xattrs: false,
        };
        os.set_node_meta(d.as_fd(), b"p", &e, o).unwrap();
        let st = lstat_at(d.as_fd(), c"p").unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o640, "{}", os.name());
        assert_eq!(
            (st.st_mtime as i64, st.st_mtime_nsec as u32),
            (1_500_000_000, 7)
        );
        // A symlink where a node is expected: refused, its target untouched.
        std::fs::write(t.path().join("target"), b"t").unwrap();
        symlink("target", t.path().join("l")).unwrap();
        assert!(
            os.set_node_meta(d.as_fd(), b"l", &e, o).is_err(),
            "{}",
            os.name()
        );
        let st = lstat_at(d.as_fd(), c"target").unwrap();
        assert_ne!(st.st_mode & 0o7777, 0o640, "{}", os.name());
    }
}

#[test]
fn xattrs_of_a_symlink_are_its_own() {
    for os in impls() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("target"), b"t").unwrap();
        symlink("target", t.path().join("l")).unwrap();
        let d = dirfd(t.path());
        // Only trusted.* (and security.*) xattrs exist on Linux symlinks: root only.
        let want: Xattrs = vec![(
            b"trusted.k".to_vec().into_boxed_slice(),
            b"v".to_vec().into(),
        )]
        .into_boxed_slice();
        match os.write_xattrs_at(d.as_fd(), b"l", Some(&want)) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                eprintln!("skipped: cannot set trusted.* xattrs here ({e})");
                return;
            }
            r => r.unwrap(),
        }
        assert_eq!(
            os.read_xattrs_at(d.as_fd(), b"l").unwrap().as_deref(),
            Some(&want[..]),
            "{}",
            os.name()
        );
        assert_eq!(
            os.read_xattrs_at(d.as_fd(), b"target").unwrap(),
            None,
            "{}",
            os.name()
        );
        os.write_xattrs_at(d.as_fd(), b"l", None).unwrap();
        assert_eq!(os.read_xattrs_at(d.as_fd(), b"l").unwrap(), None);
        // The working directory is back where it was.
        assert_ne!(std::env::current_dir().unwrap(), t.path());
    }
}
