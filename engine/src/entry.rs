//! One filesystem object as the engine sees it: full `lstat` metadata, symlink target, xattrs
//! and (for regular files, once known) the blake3 of its content.

/// One extended attribute: name and value.
pub type Xattr = (Box<[u8]>, Box<[u8]>);
/// Extended attributes, sorted by name.
pub type Xattrs = Box<[Xattr]>;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    #[default]
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

/// Kept small: a run holds one for every object of both trees, so its size is most of the
/// run's memory (see the size test below).
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Path relative to the tree root, `/`-separated, no `.` or `..`; empty for the root.
    pub path: Box<[u8]>,
    pub hash: Option<Hash>,
    pub size: u64,
    pub mtime: i64,
    pub ctime: i64,
    pub ino: u64,
    pub dev: u64,
    /// What few entries have (symlink target, xattrs, device number), behind one pointer.
    extra: Option<Box<Extra>>,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime_nsec: u32,
    pub ctime_nsec: u32,
    pub kind: Kind,
    /// A regular file with holes (fewer blocks allocated than its size needs).
    pub sparse: bool,
}

#[derive(Clone, Debug, Default)]
struct Extra {
    target: Option<Box<[u8]>>,
    xattrs: Option<Xattrs>,
    rdev: u64,
}

impl Entry {
    /// An entry with every other field zero (and no extras).
    pub fn new(path: Box<[u8]>, kind: Kind) -> Entry {
        Entry {
            path,
            kind,
            ..Entry::default()
        }
    }

    pub fn name(&self) -> &[u8] {
        crate::fsx::split_parent(&self.path).1
    }

    pub fn is_sparse(&self) -> bool {
        self.kind == Kind::File && self.sparse
    }

    /// A symlink's target.
    pub fn target(&self) -> Option<&[u8]> {
        self.extra.as_ref()?.target.as_deref()
    }

    /// Extended attributes, sorted by name (`None`: none read).
    pub fn xattrs(&self) -> Option<&Xattrs> {
        self.extra.as_ref()?.xattrs.as_ref()
    }

    /// A device's number (0 for everything else).
    pub fn rdev(&self) -> u64 {
        self.extra.as_ref().map_or(0, |x| x.rdev)
    }

    pub fn set_target(&mut self, t: Option<Box<[u8]>>) {
        if t.is_some() || self.extra.is_some() {
            self.extra_mut(|x| x.target = t);
        }
    }

    pub fn set_xattrs(&mut self, x: Option<Xattrs>) {
        // The scan sets `None` on nearly every entry: no allocation for that.
        if x.is_some() || self.extra.is_some() {
            self.extra_mut(|e| e.xattrs = x);
        }
    }

    pub fn set_rdev(&mut self, r: u64) {
        if r != 0 || self.extra.is_some() {
            self.extra_mut(|x| x.rdev = r);
        }
    }

    fn extra_mut(&mut self, f: impl FnOnce(&mut Extra)) {
        let mut x = self.extra.take().unwrap_or_default();
        f(&mut x);
        if x.target.is_some() || x.xattrs.is_some() || x.rdev != 0 {
            self.extra = Some(x);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_stays_small() {
        // One per object of both trees: 200k-file trees hold 400k of them.
        assert!(
            std::mem::size_of::<Entry>() <= 128,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn extras_round_trip() {
        let mut e = Entry::default();
        assert_eq!((e.target(), e.xattrs(), e.rdev()), (None, None, 0));
        e.set_target(Some(b"t".as_slice().into()));
        e.set_rdev(7);
        assert_eq!((e.target(), e.rdev()), (Some(b"t".as_slice()), 7));
        e.set_target(None);
        e.set_rdev(0);
        assert!(e.extra.is_none());
    }
}
