//! Durability on a FUSE slave (a Gluster volume's mount, say).
//!
//! `syncfs` on a FUSE mount writes the kernel's dirty pages back to the FUSE daemon, but a
//! daemon need not make them durable (glusterfs implements no `SYNCFS`), so the agent's
//! `syncfs` before each ack would prove nothing there. On FUSE the agent therefore `fsync`s
//! every file it writes before giving it its name (`Applier::end_file`: a Gluster `FSYNC`
//! reaches the bricks' disks), and before it acknowledges a batch, every directory whose
//! entries or attributes the batch changed (`FSYNCDIR`; Gluster's posix layer answers it
//! without syncing, so there directory operations are as durable as the DR bricks'
//! filesystems make them on their own, docs/glusterfs.md).

use crate::fsutil;
use crate::protocol::RelPath;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::OFlags;
use std::collections::BTreeSet;
use std::io;

/// `f_type` of a FUSE filesystem (`FUSE_SUPER_MAGIC`).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Whether `root` is on a FUSE filesystem.
pub fn is_fuse(root: BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(root).is_ok_and(|s| s.f_type == FUSE_SUPER_MAGIC)
}

/// What one batch changed, to be fsynced before its ack.
#[derive(Default)]
pub struct Pending {
    /// Directories (root-relative) whose entries changed, and entries whose attributes did.
    paths: BTreeSet<Vec<u8>>,
}

impl Pending {
    /// `path`'s name was made, removed or replaced: its directory changed.
    pub fn entry(&mut self, path: &RelPath) {
        if let Some(p) = path.parent() {
            self.paths.insert(p.as_bytes().to_vec());
        }
    }

    /// `path`'s own attributes changed.
    pub fn attributes(&mut self, path: &RelPath) {
        self.paths.insert(path.as_bytes().to_vec());
    }

    /// Opens what is still there of the paths (gone since: nothing to make durable) and hands
    /// everything over, leaving this empty.
    pub fn take(&mut self, root: BorrowedFd<'_>) -> Vec<OwnedFd> {
        let mut out = Vec::new();
        for p in std::mem::take(&mut self.paths) {
            // A directory, or a regular file: never a FIFO or a device (opening one blocks or
            // has effects), whose attributes reach the bricks with their parent's entry.
            let fd = match fsutil::open_dir_beneath(root, &p) {
                Ok(fd) => Some(fd),
                Err(_) => fsutil::open_regular_beneath(root, &p, OFlags::empty())
                    .ok()
                    .flatten(),
            };
            out.extend(fd);
        }
        out
    }
}

/// `fsync`s each of `fds`: what a batch changed on a FUSE slave.
pub fn sync_all(fds: &[OwnedFd]) -> io::Result<()> {
    for fd in fds {
        rustix::fs::fsync(fd.as_fd())?;
    }
    Ok(())
}
