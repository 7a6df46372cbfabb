//! Filesystem primitives shared by the master and the agent: opening beneath a root without
//! following symlinks, removing trees without following symlinks, atomic durable writes.
//!
//! Invariant: nothing here resolves a path through a symlink; every walk starts at a directory
//! file descriptor that the caller owns.

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::io::{self, Write};
use std::path::Path;

/// Resolution rules for everything georep opens inside a brick or slave root.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// Opens `rel` (bytes, relative, may be empty for the root itself) beneath `root`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    open_resolved(root, rel, flags, BENEATH)
}

fn open_resolved(
    root: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
    resolve: ResolveFlags,
) -> io::Result<OwnedFd> {
    let rel: &[u8] = if rel.is_empty() { b"." } else { rel };
    Ok(rfs::openat2(
        root,
        rel,
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        resolve,
    )?)
}

/// Opens the regular file `rel` beneath `root` for reading with `flags` added to `O_RDONLY`;
/// `None` when `rel` is not a regular file. The name is first opened `O_PATH` and checked with
/// `fstat`, then that same inode is reopened through `/proc/self/fd/N`: a FIFO or a device
/// swapped in for the file is never opened (a FIFO would block the reader for good, and opening
/// some devices has side effects).
pub fn open_regular_beneath(
    root: BorrowedFd<'_>,
    rel: &[u8],
    flags: OFlags,
) -> io::Result<Option<OwnedFd>> {
    use rustix::fd::AsRawFd;
    let path = open_beneath(root, rel, OFlags::PATH)?;
    if rfs::fstat(&path)?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(None);
    }
    let proc_path = format!("/proc/self/fd/{}", path.as_raw_fd());
    let fd = rfs::openat(
        rfs::CWD,
        proc_path.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC | flags,
        Mode::empty(),
    )
    .map_err(proc_hint)?;
    Ok(Some(fd))
}

/// Opens the directory `rel` beneath `root` without crossing into another filesystem: the
/// agent's writes must all be on the one filesystem its `syncfs` makes durable before an ack,
/// so a mount inside the slave root is refused (`EXDEV`) rather than written unsynced.
pub fn open_dir_beneath_one_fs(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open_resolved(
        root,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY,
        BENEATH.union(ResolveFlags::NO_XDEV),
    )
}

/// Opens the directory `rel` beneath `root` for reading entries and `*at` calls.
pub fn open_dir_beneath(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open_beneath(root, rel, OFlags::RDONLY | OFlags::DIRECTORY)
}

/// Opens an absolute directory path (the brick or slave root itself).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `statx` of `name` in `dir` without following a final symlink; `None` when absent.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<rfs::Statx>> {
    match rfs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        rfs::StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn proc_hint_io(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(n) => proc_hint(Errno::from_raw_os_error(n)),
        None => e,
    }
}

pub(crate) fn proc_hint(e: Errno) -> io::Error {
    if e == Errno::NOENT {
        io::Error::other("/proc is not mounted; georep needs /proc/self/fd to set attributes without following symlinks (mount proc)")
    } else {
        e.into()
    }
}

pub fn is_dir_mode(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

/// Removes `name` in `dir` and everything beneath it, never following symlinks.
/// Absent is success.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    // Never into another filesystem mounted there: that would empty it.
    let sub = match rfs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        BENEATH.union(ResolveFlags::NO_XDEV),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    empty_dir(sub.as_fd())?;
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes everything inside the directory `dir` (the directory itself stays).
pub fn empty_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push((n.to_vec(), entry.file_type()));
        }
    }
    for (n, ft) in names {
        if ft == rfs::FileType::Directory {
            remove_tree(dir, &n)?;
        } else {
            match rfs::unlinkat(dir, &n[..], AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => remove_tree(dir, &n)?,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Writes `data` to `path` atomically and durably: temp file, fsync, rename, fsync directory.
pub fn atomic_write(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// An `io::Error` from an errno value, for messages that carry the errno.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens `path` for appending (a log), creating it and its directory.
pub fn append_file(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The last `n` lines of a log, joined with ` | ` (for one-line errors).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Opens (creating) a lock file for `flock`.
pub fn open_lock(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Whether process `pid` holds the exclusive `flock` on `path`: /proc/locks lists it for the
/// file's inode, and the process has `path` open. (Only the inode is compared in /proc/locks:
/// on btrfs its device number is not the one `stat` reports.) The holder of the lock, then,
/// not whatever process has a stale pid now.
pub fn holds_flock(pid: i32, path: &Path) -> bool {
    flock_listed(path).contains(&pid) && has_open(pid, path)
}

/// The pids /proc/locks lists with an exclusive `flock` on `path`'s inode.
fn flock_listed(path: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let ino = m.ino().to_string();
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF" (waiters: "1: -> FLOCK …")
            (w.get(1) == Some(&"FLOCK")
                && w.get(5).and_then(|d| d.rsplit(':').next()) == Some(ino.as_str()))
            .then(|| w.get(4)?.parse::<i32>().ok())
            .flatten()
        })
        .collect()
}

fn has_open(pid: i32, path: &Path) -> bool {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == canonical))
}

/// The process holding the exclusive `flock` on `path`, whatever its command line.
pub fn flock_holder(path: &Path) -> Option<i32> {
    flock_listed(path)
        .into_iter()
        .find(|&pid| has_open(pid, path))
}

/// True while some process holds an exclusive flock on `path`.
pub fn is_locked(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared).is_err()
}

/// Takes an exclusive flock on `path` (created if missing), retrying for `patience`: a
/// `status` probing the lock holds it for an instant. `None` when another process keeps it.
pub fn lock_exclusive(
    path: &Path,
    patience: std::time::Duration,
) -> anyhow::Result<Option<std::fs::File>> {
    let f = open_lock(path)?;
    let until = std::time::Instant::now() + patience;
    loop {
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok(Some(f));
        }
        if std::time::Instant::now() >= until {
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Lowers the calling thread's CPU priority (nice 10) and I/O priority (best effort, lowest),
/// for background reads (a scrub, verify) that must not slow the live stream. Best effort.
pub fn lower_priority() {
    // SAFETY: plain syscalls on the calling thread's own id; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
        // ioprio_set(IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_BE << 13 | 7)
        libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

/// blake3 of the regular file at `path` beneath `root` (never through a symlink).
pub fn hash_beneath(root: &OwnedFd, path: &crate::protocol::RelPath) -> io::Result<[u8; 32]> {
    let fd = open_regular_beneath(root.as_fd(), path.as_bytes(), OFlags::empty())?
        .ok_or_else(|| io::Error::other("not a regular file"))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::from(fd))?;
    Ok(*h.finalize().as_bytes())
}

/// A file-name-safe form of `s`: readable, plus a short hash when anything had to change.
pub fn slug(s: &str) -> String {
    let clean: String = s
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == s && !clean.is_empty() {
        clean
    } else {
        let h = blake3::hash(s.as_bytes()).to_hex();
        format!("{}-{}", clean.chars().take(48).collect::<String>(), &h[..8])
    }
}
