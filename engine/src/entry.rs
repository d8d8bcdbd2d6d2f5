//! One filesystem object as the engine sees it: full `lstat` metadata, symlink target, xattrs
//! and (for regular files, once known) the blake3 of its content.

/// One extended attribute: name and value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);
/// Extended attributes, sorted by name.
pub type Xattrs = Box<[Xattr]>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "dir",
            Kind::Symlink => "link",
            Kind::Fifo => "fifo",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Socket => "socket",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "file" => Kind::File,
            "dir" => Kind::Dir,
            "link" => Kind::Symlink,
            "fifo" => Kind::Fifo,
            "char" => Kind::Char,
            "block" => Kind::Block,
            "socket" => Kind::Socket,
            _ => return None,
        })
    }

    /// rsync's one-letter file type in itemized output.
    pub fn itemize_char(self) -> char {
        match self {
            Kind::File => 'f',
            Kind::Dir => 'd',
            Kind::Symlink => 'L',
            Kind::Char | Kind::Block => 'D',
            Kind::Fifo | Kind::Socket => 'S',
        }
    }
}

/// Content hash (blake3).
pub type Hash = [u8; 32];

#[derive(Clone, Debug)]
pub struct Entry {
    /// Path relative to the tree root, `/`-separated, no `.` or `..`; empty for the root.
    pub path: Box<[u8]>,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub ctime: i64,
    pub ctime_nsec: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u32,
    pub rdev: u64,
    /// Allocated 512-byte blocks: less than the size means the file has holes.
    pub blocks: u64,
    pub target: Option<Box<[u8]>>,
    pub hash: Option<Hash>,
    pub xattrs: Option<Xattrs>,
}

impl Entry {
    pub fn name(&self) -> &[u8] {
        crate::fsx::split_parent(&self.path).1
    }

    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.blocks.saturating_mul(512) < self.size
    }

    pub fn is_executable(&self) -> bool {
        self.kind == Kind::File && self.mode & 0o111 != 0
    }

    pub fn same_mtime(&self, o: &Entry) -> bool {
        self.mtime == o.mtime && self.mtime_nsec == o.mtime_nsec
    }

    /// Hard-linked (more than one name for the inode somewhere).
    pub fn is_multi_linked(&self) -> bool {
        self.kind == Kind::File && self.nlink > 1
    }
}

/// Shows a relative path for humans: UTF-8 as is, other bytes as `\xNN`; the root as `.`.
pub fn display_path(p: &[u8]) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let mut s = String::with_capacity(p.len());
    for chunk in p.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\n' {
                s.push_str("\\n");
            } else if c == '\\' {
                s.push_str("\\\\");
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// Joins a relative path and a name.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    if !parent.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}
