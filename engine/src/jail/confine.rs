//! Resolving a mount point inside the jail without ever leaving it.
//!
//! mount(2) follows symlinks in its target path, and it runs on the host, not in the chroot:
//! a jail symlink `usr/x -> /etc` would turn `usr/x/y` into a mount on the host's `/etc/y`.
//! So we walk the path ourselves, one component at a time with `lstat`, follow only
//! relative links that stay below the jail root, and hand mount(2) a path free of symlinks.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Linux's own limit on links followed in one lookup.
const MAX_LINKS: usize = 40;

/// Resolves `rel` (already lexically clean) below `root` (canonical). Links in the last
/// component are not followed: the caller decides what a link there means.
/// On refusal, returns why, naming the offending link.
pub fn resolve(root: &Path, rel: &Path) -> Result<PathBuf, String> {
    let mut todo: VecDeque<OsString> = rel.iter().map(|c| c.to_os_string()).collect();
    let mut cur = root.to_path_buf();
    let mut links = 0;
    // The link whose expansion is being walked, to name it if it climbs out.
    let mut last_link: Option<(PathBuf, PathBuf)> = None;
    let out = |link: &Option<(PathBuf, PathBuf)>| match link {
        Some((l, t)) => format!(
            "symlink {} -> {} points out of the jail",
            l.display(),
            t.display()
        ),
        None => "`..` would leave the jail".to_string(),
    };
    while let Some(name) = todo.pop_front() {
        match Path::new(&name).components().next() {
            Some(Component::CurDir) => continue,
            // `cur` never holds a symlink, so dropping its last component is exact.
            Some(Component::ParentDir) => {
                if cur == root {
                    return Err(out(&last_link));
                }
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&name);
        let is_link = std::fs::symlink_metadata(&next).is_ok_and(|m| m.is_symlink());
        if !is_link || todo.is_empty() {
            cur = next;
            continue;
        }
        links += 1;
        if links > MAX_LINKS {
            return Err(format!("{}: too many levels of symlinks", next.display()));
        }
        let target = std::fs::read_link(&next).map_err(|e| format!("{}: {e}", next.display()))?;
        last_link = Some((next, target.clone()));
        if target.has_root() {
            return Err(out(&last_link));
        }
        for c in target.iter().rev() {
            todo.push_front(c.to_os_string());
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_inner_links_refuses_outer() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("../usr", root.join("usr/up")).unwrap();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../..", root.join("usr/esc")).unwrap();
        symlink("loop", root.join("loop")).unwrap();

        let ok = |rel: &str| resolve(&root, Path::new(rel));
        assert_eq!(ok("lib/x").unwrap(), root.join("usr/lib/x"));
        assert_eq!(ok("usr/up/lib/y").unwrap(), root.join("usr/lib/y"));
        // The last component is returned as is, link or not.
        assert_eq!(ok("lib").unwrap(), root.join("lib"));
        assert_eq!(ok("abs").unwrap(), root.join("abs"));
        for bad in ["abs/x", "usr/esc/x"] {
            let e = ok(bad).unwrap_err();
            assert!(e.contains("points out of the jail"), "{bad}: {e}");
        }
        assert!(ok("loop/x").unwrap_err().contains("too many"));
    }
}
