//! GlusterFS bricks as masters: what a brick holds that the volume's clients never see.
//!
//! A brick of a Gluster volume is not a plain directory (docs/glusterfs.md):
//! - `.glusterfs/` (a gfid hard link of every file, the changelogs) and `.trashcan/` sit at its
//!   root: never walked, watched or shipped;
//! - every non-directory has one link more than clients see (its gfid link in `.glusterfs/`);
//! - a DHT link-to file (sticky bit, `trusted.glusterfs.dht.linkto`) says that a name's data
//!   lives on another brick: this brick has nothing to ship for that name, and must not delete
//!   it on the slave either (the brick holding the data ships it);
//! - with `features.ctime` (on by default) the times clients see are the ones the client set,
//!   kept in `trusted.glusterfs.mdata`, not the brick inode's own;
//! - Gluster's own attributes (`trusted.gfid`, `trusted.glusterfs.*`, …) are never copied
//!   (`xattr::never_copied`).
//!
//! Invariant: a [`View`] of a plain directory changes nothing; everything here applies only to
//! a root carrying `trusted.glusterfs.volume-id`.

pub mod aux;
pub mod import;

use crate::entry::{Entry, Kind};
use crate::xattr::{self, At};
use rustix::fd::BorrowedFd;
use std::io;

/// Names at a brick's root that belong to Gluster itself.
pub const INTERNAL_DIRS: [&[u8]; 2] = [b".glusterfs", b".trashcan"];
/// Where a replicated volume keeps inodes whose last name is gone while they are still open
/// (`.glusterfs-anonymous-inode-<volume id>`, at the root of every AFR brick).
const ANONYMOUS_INODES: &[u8] = b".glusterfs-anonymous-inode-";

fn internal(name: &[u8]) -> bool {
    INTERNAL_DIRS.contains(&name) || name.starts_with(ANONYMOUS_INODES)
}
const VOLUME_ID: &[u8] = b"trusted.glusterfs.volume-id";
const LINKTO: &[u8] = b"trusted.glusterfs.dht.linkto";
const MDATA: &[u8] = b"trusted.glusterfs.mdata";
/// A sharded volume keeps the pieces of big files here, under names that are gfids.
const SHARD_DIR: &str = ".shard";

/// How to read a brick: as a plain tree, or as a Gluster brick.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct View {
    pub gluster: bool,
}

impl View {
    /// The view of the brick whose root is `root`: Gluster when the root carries the volume id
    /// Gluster sets on every brick.
    pub fn of_root(root: BorrowedFd<'_>) -> io::Result<View> {
        let mut buf = [0u8; 16];
        let gluster = xattr::get_one(At::Fd(root), VOLUME_ID, &mut buf)?.is_some();
        Ok(View { gluster })
    }

    /// `View::of_root` of a path, and a refusal of what georep cannot replicate from it.
    /// A brick that cannot be opened reads as plain: what opens it next says why.
    pub fn of_brick(path: &std::path::Path) -> anyhow::Result<View> {
        let Ok(root) = crate::fsutil::open_root(path) else {
            return Ok(View::default());
        };
        let view = View::of_root(rustix::fd::AsFd::as_fd(&root))?;
        if !view.gluster && has_gluster_dir(rustix::fd::AsFd::as_fd(&root)) {
            // A Gluster brick that cannot be read as one: as another user than root, trusted.*
            // (the volume id, link-to files, client-set times) is invisible; as root, its
            // volume id is gone. Shipped as a plain tree, its .glusterfs/ and link-to files
            // would reach the DR site.
            if !rustix::process::geteuid().is_root() {
                anyhow::bail!(
                    "brick {} holds .glusterfs/ (a Gluster brick) but georep runs as a user that cannot read its trusted.* attributes (link-to files, gfids, client-set times): run georep as root on Gluster bricks",
                    path.display()
                );
            }
            anyhow::bail!(
                "brick {} holds .glusterfs/ but no trusted.glusterfs.volume-id: if it is a Gluster brick, give it back its volume id (`setfattr -n trusted.glusterfs.volume-id -v 0x<id without dashes> {}`, the id from `gluster volume info`); if it is not, remove its .glusterfs/",
                path.display(),
                path.display()
            );
        }
        if view.gluster && path.join(SHARD_DIR).is_dir() {
            anyhow::bail!(
                "brick {} belongs to a sharded Gluster volume (features.shard is on: its big files are pieces in {SHARD_DIR}/): georep replicates whole files and cannot put them together from a brick; turn features.shard off for a volume georep replicates",
                path.display()
            );
        }
        Ok(view)
    }

    /// Whether `name`, directly beneath the brick root, is Gluster's own.
    pub fn hides_root_name(&self, name: &[u8]) -> bool {
        self.gluster && internal(name)
    }

    /// Whether the brick-relative `path` is Gluster's own or beneath it.
    pub fn hides(&self, path: &crate::protocol::RelPath) -> bool {
        self.gluster && {
            let first = path.as_bytes().split(|&b| b == b'/').next().unwrap_or(b"");
            internal(first)
        }
    }

    /// `e` as the volume's clients see it, read from this brick through `at` (the entry itself,
    /// not following a symlink); `None` when it is a DHT link-to file (its data is on another
    /// brick, which ships it).
    pub fn adjust(&self, mut e: Entry, at: At<'_>) -> io::Result<Option<Entry>> {
        if !self.gluster {
            return Ok(Some(e));
        }
        if is_linkto(&e, at)? {
            return Ok(None);
        }
        if e.kind != Kind::Dir {
            // The gfid link in .glusterfs/ is no name of the volume's.
            e.nlink = e.nlink.saturating_sub(1).max(1);
        }
        if let Some((sec, nsec)) = mdata_mtime(at)? {
            e.mtime_sec = sec;
            e.mtime_nsec = nsec;
        }
        Ok(Some(e))
    }

    /// The link count a file must exceed to have another name in the volume.
    pub fn link_floor(&self) -> u64 {
        if self.gluster {
            2
        } else {
            1
        }
    }
}

/// Whether the brick at `path` is served: a `glusterfsd … --brick-name <path>` runs on this
/// node. A brick whose process is down gets no more writes (its replicas do): its worker must
/// not stay Active, or the volume's changes would stop reaching the DR site.
///
/// A multiplexed glusterfsd (`cluster.brick-multiplex`) names only its first brick: the pid
/// file glusterd keeps per brick (`/var/run/gluster/vols/<vol>/<node>-<path>.pid`) is looked at
/// too, `vol` being the Gluster volume's name (the georep volume's, when imported).
pub fn check_brick_process(path: &std::path::Path, vol: &str) -> anyhow::Result<()> {
    let want = path.as_os_str().as_encoded_bytes();
    let pid_file = std::path::Path::new("/var/run/gluster/vols")
        .join(vol)
        .join(format!(
            "{}-{}.pid",
            crate::config::node_name(),
            path.to_string_lossy()
                .trim_start_matches('/')
                .replace('/', "-")
        ));
    let by_pid_file = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .is_some_and(|cmd| {
            cmd.split(|&b| b == 0)
                .next()
                .is_some_and(|a0| a0.ends_with(b"glusterfsd"))
        });
    let running = by_pid_file
        || std::fs::read_dir("/proc")
            .map(|rd| {
                rd.flatten().any(|e| {
                    let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                        return false;
                    };
                    let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
                    args.first().is_some_and(|a0| a0.ends_with(b"glusterfsd"))
                        && args
                            .windows(2)
                            .any(|w| w[0] == b"--brick-name" && w[1] == want)
                })
            })
            .unwrap_or(true);
    if !running {
        anyhow::bail!(
            "the Gluster brick process of {} is not running on {} (no glusterfsd --brick-name {}): its replicas get the volume's writes now, so this worker steps down and another replica's worker takes over; it resumes once the brick is back (`gluster volume start <vol> force`)",
            path.display(),
            crate::config::node_name(),
            path.display()
        );
    }
    Ok(())
}

fn has_gluster_dir(root: BorrowedFd<'_>) -> bool {
    rustix::fs::statat(root, ".glusterfs", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
    })
}

/// Whether `path` beneath the brick `root` is a DHT link-to file now.
pub fn linkto_at(root: BorrowedFd<'_>, path: &crate::protocol::RelPath) -> bool {
    let Some((parent, name)) = path.split() else {
        return false;
    };
    let Ok(dir) = crate::fsutil::open_dir_beneath(root, parent) else {
        return false;
    };
    let Some(e) = rustix::fs::statx(
        &dir,
        name,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        Entry::STATX_MASK,
    )
    .ok()
    .and_then(|st| Entry::from_statx(&st, None)) else {
        return false;
    };
    let p = xattr::proc_at(rustix::fd::AsFd::as_fd(&dir), name);
    let at = At::Proc {
        path: &p,
        follow: false,
    };
    is_linkto(&e, at).unwrap_or(false)
}

/// Whether `e`, read through `at`, is a DHT link-to file: sticky, and carrying the link-to
/// attribute. One is made `---------T` and empty before its attribute is set: one seen in
/// between is one too, never an empty file to ship over the real one.
pub fn is_linkto(e: &Entry, at: At<'_>) -> io::Result<bool> {
    if e.kind != Kind::File || e.mode & libc::S_ISVTX == 0 {
        return Ok(false);
    }
    if e.mode & 0o7777 == libc::S_ISVTX && e.size == 0 {
        return Ok(true);
    }
    let mut buf = [0u8; 1];
    Ok(xattr::get_one(at, LINKTO, &mut buf)?.is_some())
}

/// The modification time kept by Gluster's ctime feature, when it is there and readable.
///
/// On disk (`posix_mdata_disk_t`, big-endian): version (1 byte, 1), flags (8), then ctime,
/// mtime and atime, each 8 bytes of seconds and 8 of nanoseconds.
fn mdata_mtime(at: At<'_>) -> io::Result<Option<(i64, u32)>> {
    let mut buf = [0u8; 64];
    let Some(n) = xattr::get_one(at, MDATA, &mut buf)? else {
        return Ok(None);
    };
    Ok(parse_mdata_mtime(&buf[..n]))
}

fn parse_mdata_mtime(v: &[u8]) -> Option<(i64, u32)> {
    if v.len() < 57 || v[0] != 1 {
        return None;
    }
    let word = |at: usize| u64::from_be_bytes(v[at..at + 8].try_into().unwrap());
    let (sec, nsec) = (word(25), word(33));
    (nsec < 1_000_000_000 && sec <= i64::MAX as u64).then_some((sec as i64, nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read off a brick of Gluster 10.3 (`getfattr -n trusted.glusterfs.mdata -e hex`), whose
    /// mount showed the mtime 2026-12-05 14:52:14.689282909.
    #[test]
    fn the_mtime_clients_see_is_read_from_the_mdata_attribute() {
        let hex = "010000000000000000000000006b14251e0000000029f66683000000006b14251e0000000029159f5d000000006b14251e00000000290d0a6a";
        let v: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(parse_mdata_mtime(&v), Some((0x6b14251e, 689_282_909)));
        assert_eq!(parse_mdata_mtime(&v[..40]), None);
        let mut other = v.clone();
        other[0] = 2;
        assert_eq!(parse_mdata_mtime(&other), None);
    }

    #[test]
    fn only_the_internal_names_at_the_root_are_hidden() {
        let g = View { gluster: true };
        let p = |s: &str| crate::protocol::RelPath::new(s.as_bytes()).unwrap();
        assert!(g.hides(&p(".glusterfs")) && g.hides(&p(".glusterfs/ab/cd")));
        assert!(g.hides(&p(".trashcan/x")));
        assert!(!g.hides(&p("d/.glusterfs")) && !g.hides(&p(".glusterfsx")));
        assert!(g.hides(&p(
            ".glusterfs-anonymous-inode-a77840f7-4e7d-4bad-8bb8-32af5bfd7d3b"
        )));
        assert!(!View::default().hides(&p(".glusterfs")));
    }
}
