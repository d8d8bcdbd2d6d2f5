//! A fatal error the admin can fix with an option gets a line saying how.

use std::io;
use std::path::Path;

/// For an error about the state dir that a permission or read-only filesystem caused: which
/// state dir, and the two ways to name another one.
pub fn state_dir(e: &anyhow::Error, state_dir: &Path) -> Option<String> {
    let canon = std::fs::canonicalize(state_dir).ok();
    let abs = std::path::absolute(state_dir).ok();
    let inside = |p: &Path| {
        [canon.as_deref(), abs.as_deref(), Some(state_dir)]
            .into_iter()
            .flatten()
            .any(|s| p.starts_with(s))
    };
    let denied = |c: &io::Error| {
        matches!(
            c.kind(),
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
        ) || c.raw_os_error() == Some(libc::EROFS)
    };
    let hit = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<jailsync_engine::Error>(),
            Some(jailsync_engine::Error::Io { path, cause }) if denied(cause) && inside(path)
        )
    });
    hit.then(|| {
        format!(
            "the state dir {} (caches, locks, rollback records) is not usable by uid {}: \
             pass --state-dir DIR or set JAILSYNC_STATE_DIR to a directory you may write",
            state_dir.display(),
            current_uid()
        )
    })
}

/// For a destination locked by another run: how to queue behind it instead.
pub fn locked(e: &anyhow::Error, waited: bool) -> Option<String> {
    let hit = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<jailsync_engine::Error>(),
            Some(jailsync_engine::Error::Locked { .. })
        )
    });
    (hit && !waited)
        .then(|| "pass --wait or --wait=SECS to start once that run has ended".to_string())
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
