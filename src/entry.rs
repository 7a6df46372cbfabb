//! What the master knows about one entry of a brick: kind, identity, size, times, owner, mode.

use crate::protocol::{Meta, SpecialKind};
use rustix::fs::Statx;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    /// A poisoned index row: the slave's state at this path is unknown.
    Unknown = 0,
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Char = 5,
    Block = 6,
}

impl Kind {
    pub fn from_u8(v: u8) -> Kind {
        match v {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::Char,
            6 => Kind::Block,
            _ => Kind::Unknown,
        }
    }

    /// Kind from `st_mode`; `None` for sockets, which cannot be replicated.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            _ => return None,
        })
    }

    pub fn special(self) -> Option<SpecialKind> {
        match self {
            Kind::Fifo => Some(SpecialKind::Fifo),
            Kind::Char => Some(SpecialKind::Char),
            Kind::Block => Some(SpecialKind::Block),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub ino: u64,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u64,
    /// Birth time in ns since the epoch (statx `STATX_BTIME`); 0 where the filesystem does not
    /// report it. An inode number is reused at once after a delete: only the number *and* its
    /// birth time name one object.
    pub birth: i64,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// blake3 of the content as shipped (index rows of regular files only).
    pub hash: Option<[u8; 32]>,
}

/// What changed between the index's view of an entry and the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    None,
    /// Only bookkeeping (inode, ctime, link count) differs: update the index, ship nothing.
    IndexOnly,
    /// Owner, mode or mtime differ.
    Meta,
    /// Content (or symlink target, device number) differs.
    Data,
}

impl Entry {
    pub fn from_statx(st: &Statx, target: Option<Vec<u8>>) -> Option<Entry> {
        let kind = Kind::from_mode(st.stx_mode as u32)?;
        Some(Entry {
            kind,
            ino: st.stx_ino,
            size: st.stx_size,
            mtime_sec: st.stx_mtime.tv_sec,
            mtime_nsec: st.stx_mtime.tv_nsec,
            ctime_sec: st.stx_ctime.tv_sec,
            ctime_nsec: st.stx_ctime.tv_nsec,
            mode: st.stx_mode as u32 & 0o7777,
            uid: st.stx_uid,
            gid: st.stx_gid,
            nlink: st.stx_nlink,
            rdev: rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor),
            birth: if st.stx_mask & rustix::fs::StatxFlags::BTIME.bits() != 0 {
                (st.stx_btime.tv_sec * 1_000_000_000 + st.stx_btime.tv_nsec as i64).max(1)
            } else {
                0
            },
            target,
            hash: None,
        })
    }

    /// The statx fields the crawl asks for: the basic ones and the birth time.
    pub const STATX_MASK: rustix::fs::StatxFlags =
        rustix::fs::StatxFlags::BASIC_STATS.union(rustix::fs::StatxFlags::BTIME);

    /// Provably the same object as `o` (an entry seen earlier, perhaps under another name):
    /// the same inode number and the same known birth time. Without a birth time on either
    /// side nothing is proven, and a rename is planned as a delete plus a create.
    pub fn same_object(&self, o: &Entry) -> bool {
        self.ino == o.ino && self.birth != 0 && self.birth == o.birth
    }

    /// Certainly another object than `o` although it has the same inode number: the inode
    /// was freed and reused (both birth times known and different).
    pub fn reused_inode_of(&self, o: &Entry) -> bool {
        self.ino == o.ino && self.birth != 0 && o.birth != 0 && self.birth != o.birth
    }

    pub fn meta(&self) -> Meta {
        Meta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime_sec: self.mtime_sec,
            mtime_nsec: self.mtime_nsec,
            xattrs: None,
        }
    }

    fn meta_differs(&self, o: &Entry) -> bool {
        self.mode != o.mode
            || self.uid != o.uid
            || self.gid != o.gid
            || self.mtime_sec != o.mtime_sec
            || self.mtime_nsec != o.mtime_nsec
    }

    /// Compares `self` (index) with `new` (disk) of the same kind (the same object, perhaps
    /// renamed since).
    pub fn change_to(&self, new: &Entry) -> Change {
        debug_assert_eq!(self.kind, new.kind);
        let bookkeeping = self.ino != new.ino
            || self.birth != new.birth
            || self.ctime_sec != new.ctime_sec
            || self.ctime_nsec != new.ctime_nsec
            || self.nlink != new.nlink;
        match new.kind {
            Kind::File => {
                if self.size != new.size
                    || self.mtime_sec != new.mtime_sec
                    || self.mtime_nsec != new.mtime_nsec
                {
                    Change::Data
                } else if (self.ctime_sec, self.ctime_nsec) != (new.ctime_sec, new.ctime_nsec) {
                    // Content rewritten with the mtime put back (cp -p, touch -r): only ctime
                    // shows it, and rsync's quick check would miss it. A chmod, chown, rename
                    // or link count change moves ctime too and cannot tell whether the content
                    // changed with it: `Data` with the same size makes the shipper hash the
                    // file locally against the slave's known hash and send only attributes
                    // when the content is equal (a local read, never a resend).
                    Change::Data
                } else if self.mode != new.mode || self.uid != new.uid || self.gid != new.gid {
                    Change::Meta
                } else if bookkeeping {
                    Change::IndexOnly
                } else {
                    Change::None
                }
            }
            Kind::Symlink if self.target != new.target => Change::Data,
            Kind::Fifo | Kind::Char | Kind::Block if self.rdev != new.rdev => Change::Data,
            _ if self.meta_differs(new) => Change::Meta,
            // Only the change time moved: an extended attribute or ACL may have changed (or a
            // rename, a link count). Its attributes are sent again; a SetAttr is cheap.
            _ if (self.ctime_sec, self.ctime_nsec) != (new.ctime_sec, new.ctime_nsec) => {
                Change::Meta
            }
            _ if bookkeeping => Change::IndexOnly,
            _ => Change::None,
        }
    }
}
