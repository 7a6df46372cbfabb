//! Durability on a FUSE slave (a Gluster volume's mount, say).
//!
//! `syncfs` on a FUSE mount writes the kernel's dirty pages back to the FUSE daemon, but a
//! daemon need not make them durable (glusterfs implements no `SYNCFS`), so the agent's
//! `syncfs` before each ack would prove nothing there. On FUSE the agent therefore `fsync`s
//! every file it writes before giving it its name (`Applier::end_file`: a Gluster `FSYNC`
//! reaches the bricks' disks), and before it acknowledges a batch, every directory whose
//! entries or attributes the batch changed (`FSYNCDIR`).
//!
//! Gluster's posix layer answers `FSYNCDIR` without syncing. So on a Gluster DR volume the agent
//! also keeps one marker file on each of its bricks (`.georep/markers/m<k>`, placed by name
//! until `trusted.glusterfs.pathinfo` shows every brick of the root covered): after a batch that
//! changed entries it writes and fsyncs each marker. A file's fsync commits the brick
//! filesystem's journal up to it (ext4, XFS), and with it every directory change before it.

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

/// One marker file per brick of a Gluster DR volume (see the module's doc); empty when the
/// slave is not a Gluster mount or its bricks could not all be covered.
pub fn gluster_markers(root: BorrowedFd<'_>) -> Vec<OwnedFd> {
    let bricks = bricks_of(root, b".");
    if bricks.is_empty() {
        return Vec::new();
    }
    let dir = match fsutil::open_dir_beneath(root, b".georep").and_then(|state| {
        match rustix::fs::mkdirat(&state, "markers", rustix::fs::Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        fsutil::open_dir_beneath(state.as_fd(), b"markers")
    }) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("making the per-brick markers of the Gluster DR volume: {e}");
            return Vec::new();
        }
    };
    let mut covered = BTreeSet::new();
    let mut out = Vec::new();
    for k in 0..256 {
        let name = format!("m{k}");
        let Ok(fd) = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        ) else {
            break;
        };
        let on = bricks_of(dir.as_fd(), name.as_bytes());
        if on.iter().any(|b| !covered.contains(b)) {
            covered.extend(on);
            out.push(fd);
        }
        if bricks.iter().all(|b| covered.contains(b)) {
            tracing::debug!(
                bricks = bricks.len(),
                markers = out.len(),
                "Gluster DR markers"
            );
            return out;
        }
    }
    tracing::warn!(
        "the Gluster DR volume's bricks could not all get a marker: directory changes are durable as its bricks' filesystems make them"
    );
    Vec::new()
}

/// The bricks (`<brick path>):<host>`) Gluster's pathinfo names for `name` in `dir`.
fn bricks_of(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<String> {
    let path = crate::xattr::proc_at(dir, name);
    let mut buf = vec![0u8; 64 << 10];
    let at = crate::xattr::At::Proc {
        path: &path,
        follow: false,
    };
    let Ok(Some(n)) = crate::xattr::get_one(at, b"trusted.glusterfs.pathinfo", &mut buf) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
    text.split("<POSIX(")
        .skip(1)
        .filter_map(|s| {
            let (brick, rest) = s.split_once(')')?;
            let host = rest.strip_prefix(':')?.split(':').next()?;
            Some(format!("{brick}):{host}"))
        })
        .collect()
}

/// Writes and fsyncs each marker: every change made before on its brick is durable then.
pub fn sync_markers(markers: &[OwnedFd]) -> io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    for m in markers {
        rustix::io::pwrite(m, &now.to_le_bytes(), 0)?;
        rustix::fs::fsync(m)?;
    }
    Ok(())
}

/// `fsync`s each of `fds`: what a batch changed on a FUSE slave.
pub fn sync_all(fds: &[OwnedFd]) -> io::Result<()> {
    for fd in fds {
        rustix::fs::fsync(fd.as_fd())?;
    }
    Ok(())
}
