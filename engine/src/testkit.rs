//! What the engine's unit tests share.

use std::fs;
use std::path::Path;

/// Writes `files` (relative path, content) below `root`, making their directories.
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (p, content) in files {
        let p = root.join(p);
        fs::create_dir_all(p.parent().expect("below root")).unwrap();
        fs::write(&p, content).unwrap();
    }
}
