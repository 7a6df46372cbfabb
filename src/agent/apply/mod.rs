//! Confined, idempotent application of ops beneath the slave root.
//!
//! Invariant: every write happens through a directory fd obtained with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` from the root fd, and the final component is handled with `*at` calls
//! that do not follow symlinks, so no op can touch anything outside the root. New content is
//! written under `.georep/tmp/<brick>/` and renamed into place: readers never see a partial file.

mod content;
mod ops;
mod trash;

use super::direct::{ContentWriter, Stage};
use crate::fsutil::{self, errno_of};
use crate::protocol::{FileAppend, FileBegin, Meta, Op, RelPath, SpecialKind};
use content::OpenFile;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::io;
use trash::{into_trash, keep_replaced, keep_replaced_by_dir, link_fd};

/// An error applying one op: the path, what failed, and the errno.
#[derive(Debug)]
pub struct ApplyError {
    pub path: RelPath,
    pub errno: i32,
    pub message: String,
}

impl ApplyError {
    fn new(path: &RelPath, what: &str, e: io::Error) -> Self {
        let errno = errno_of(&e);
        let hint = match errno {
            libc::ENOSPC | libc::EDQUOT => ": free space on the DR volume, then georep retries",
            libc::ELOOP | libc::EXDEV => {
                ": a parent directory on the slave is a symlink or leaves the slave root; georep never writes through it (remove it on the slave)"
            }
            libc::EACCES | libc::EPERM => ": check permissions of the slave root and that the agent runs as the owner or root",
            libc::EROFS => ": the slave volume is read-only",
            _ => "",
        };
        ApplyError {
            path: path.clone(),
            errno,
            message: format!("{what} {path}: {e}{hint}"),
        }
    }
}

pub type ApplyResult<T = ()> = Result<T, ApplyError>;

/// What can go wrong with a file's content as it streams.
#[derive(Debug)]
pub enum ContentError {
    /// This file fails (reported to the master as `Failed`); the stream goes on.
    Failed(ApplyError),
    /// The stream breaks the protocol (more content than declared, content outside a file):
    /// the connection ends.
    Broken(String),
}

pub type ContentResult<T = ()> = Result<T, ContentError>;

/// The slave's copy of `path` is not the one an append or a delta builds on (`why`): that file
/// fails, and the master sends it whole next.
fn stale(path: &RelPath, why: String) -> ApplyError {
    ApplyError {
        path: path.clone(),
        errno: libc::ESTALE,
        message: format!(
            "the DR copy of {path} is not the version this change builds on ({why}): it is sent whole on the next pass"
        ),
    }
}

/// The slave root and a one-entry cache of the last parent directory opened beneath it.
struct Parents {
    root: OwnedFd,
    cache: Option<(Vec<u8>, OwnedFd)>,
}

impl Parents {
    /// Runs `f` with the parent directory of `path` and its final component.
    fn with_parent<T>(
        &mut self,
        path: &RelPath,
        what: &str,
        f: impl FnOnce(BorrowedFd<'_>, &[u8]) -> io::Result<T>,
    ) -> ApplyResult<T> {
        let (parent, name) = path.split().ok_or_else(|| ApplyError {
            path: path.clone(),
            errno: libc::EINVAL,
            message: format!("{what}: the slave root itself cannot be the target"),
        })?;
        if parent.is_empty() {
            return f(self.root.as_fd(), name).map_err(|e| ApplyError::new(path, what, e));
        }
        let hit = matches!(&self.cache, Some((p, _)) if p == parent);
        if !hit {
            let fd = fsutil::open_dir_beneath_one_fs(self.root.as_fd(), parent).map_err(|e| {
                let mut err = ApplyError::new(path, what, e);
                if matches!(err.errno, libc::ENOTDIR | libc::ELOOP | libc::EXDEV) {
                    err.message = format!(
                        "{what} {path}: a parent directory on the slave is a symlink, not a directory, or a mount of another filesystem (which the agent's sync before each ack would not cover); georep never writes through one (remove it, or unmount it, on the slave)"
                    );
                }
                err
            })?;
            self.cache = Some((parent.to_vec(), fd));
        }
        let fd = &self.cache.as_ref().unwrap().1;
        f(fd.as_fd(), name).map_err(|e| ApplyError::new(path, what, e))
    }

    /// Directory structure may have moved: a cached fd could point into the stash.
    fn invalidate(&mut self) {
        self.cache = None;
    }
}

pub struct Applier {
    parents: Parents,
    tmp: OwnedFd,
    as_root: bool,
    counter: u64,
    file: Option<OpenFile>,
    /// Staging for content written past the page cache (large files).
    stage: Stage,
    /// Today's `.georep/trash/<date>/` when the master asked for a trash (option
    /// `trash-retention`): deleted and overwritten entries are kept there.
    trash: Option<OwnedFd>,
    /// Received files are written to unnamed temp files (see `create_temp`).
    unnamed: bool,
    /// Extended attribute namespaces this session replicates here (`crate::xattr` bits,
    /// agreed in the handshake); 0 = attributes are left alone.
    xattr_scope: u8,
    /// On a FUSE slave: what the current batch changed, fsynced before its ack.
    fuse: Option<super::fusesync::Pending>,
    /// On a Gluster DR volume: one marker file per brick (`fusesync::gluster_markers`).
    markers: Option<Vec<OwnedFd>>,
}

fn omit() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: rfs::UTIME_OMIT,
    }
}

fn times(meta: &Meta) -> Timestamps {
    Timestamps {
        last_access: omit(),
        last_modification: Timespec {
            tv_sec: meta.mtime_sec,
            tv_nsec: meta.mtime_nsec as _,
        },
    }
}

fn mode(meta: &Meta) -> Mode {
    Mode::from_raw_mode(meta.mode & 0o7777)
}

impl Applier {
    /// `root` is the slave root, `tmp` this brick's private temp directory (emptied by the caller).
    pub fn new(root: OwnedFd, tmp: OwnedFd) -> Self {
        let fuse = super::fusesync::is_fuse(root.as_fd()).then(Default::default);
        Applier {
            fuse,
            markers: None,
            parents: Parents { root, cache: None },
            tmp,
            as_root: rustix::process::geteuid().is_root(),
            counter: 0,
            file: None,
            stage: Stage::default(),
            trash: None,
            unnamed: false,
            xattr_scope: 0,
        }
        .probe_unnamed()
    }

    /// Uses unnamed temp files when this filesystem has `O_TMPFILE` and one can be given a name
    /// here (as root with `AT_EMPTY_PATH`, otherwise through `/proc/self/fd`): tried once, so a
    /// file never ends up with content that cannot be linked into place.
    fn probe_unnamed(mut self) -> Self {
        self.unnamed = true;
        let ok = self.create_temp(0o600).is_ok_and(|(fd, name)| {
            name.is_none() && {
                let t = self.tmpname("probe");
                let linked =
                    link_fd(fd.as_fd(), self.tmp.as_fd(), t.as_str(), self.as_root).is_ok();
                let _ = rfs::unlinkat(self.tmp.as_fd(), t.as_str(), AtFlags::empty());
                linked
            }
        });
        self.unnamed = ok;
        self
    }

    /// A new, empty temp file for received content: unnamed (`O_TMPFILE`) where possible, else
    /// named in the temp directory. An unnamed file is linked into place at the end, so a new
    /// path costs no temp directory entry and no rename (a fifth of the agent's time per small
    /// file, docs/benchmarks.md), and nothing is left behind if the agent dies. `perm`: the
    /// unnamed file's permission bits (nobody can open it, so it may as well start with the
    /// final ones); a named one is private (0600) until its attributes are set.
    fn create_temp(&mut self, perm: u32) -> io::Result<(OwnedFd, Option<String>)> {
        if self.unnamed {
            match rfs::openat(
                self.tmp.as_fd(),
                ".",
                OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
                Mode::from_raw_mode(perm),
            ) {
                Ok(fd) => return Ok((fd, None)),
                Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => self.unnamed = false,
                Err(e) => return Err(e.into()),
            }
        }
        let t = self.tmpname("f");
        let fd = rfs::openat(
            self.tmp.as_fd(),
            t.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok((fd, Some(t)))
    }

    /// Gives the unnamed temp file `fd` the name `path`; an entry already there is replaced
    /// atomically (the file is named in the temp directory and renamed over it).
    fn link_into(&mut self, path: &RelPath, fd: BorrowedFd<'_>) -> ApplyResult {
        let as_root = self.as_root;
        let r = self
            .parents
            .with_parent(path, "creating file", |parent, name| {
                link_fd(fd, parent, name, as_root)
            });
        match r {
            Err(e) if e.errno == libc::EEXIST => {
                let t = self.tmpname("f");
                link_fd(fd, self.tmp.as_fd(), t.as_str(), as_root)
                    .map_err(|e| ApplyError::new(path, "creating file", e))?;
                self.replace_into(path, &t, "renaming into place")
            }
            r => r,
        }
    }

    /// Replicates extended attributes within `scope` (see `crate::xattr`) from now on.
    pub fn set_xattr_scope(&mut self, scope: u8) {
        self.xattr_scope = scope;
    }

    /// The attributes `meta` asks for, with the session's scope; `None` when they are left
    /// alone. Refused before anything changes when a name is outside the scope or over the
    /// limits.
    fn xattrs<'m>(
        &self,
        path: &RelPath,
        meta: &'m Meta,
    ) -> ApplyResult<Option<(&'m [crate::protocol::Xattr], u8)>> {
        let Some(list) = meta.xattrs.as_deref().filter(|_| self.xattr_scope != 0) else {
            return Ok(None);
        };
        crate::xattr::check(list, self.xattr_scope).map_err(|m| ApplyError {
            path: path.clone(),
            errno: libc::EINVAL,
            message: format!("{m} on {path}: refused, the DR copy is left as it was"),
        })?;
        Ok(Some((list, self.xattr_scope)))
    }

    /// Keeps deleted and overwritten entries in `dir` (today's trash directory) from now on.
    pub fn set_trash(&mut self, dir: Option<OwnedFd>) {
        self.trash = dir;
    }

    fn tmpname(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    fn set_owner_mode_fd(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
        xattrs: Option<(&[crate::protocol::Xattr], u8)>,
    ) -> io::Result<()> {
        if self.as_root {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(meta.uid)),
                Some(rfs::Gid::from_raw(meta.gid)),
            )?;
        }
        // After chown, which clears setuid/setgid bits.
        rfs::fchmod(fd, mode(meta))?;
        // After the mode: an access ACL's mask is the group bits.
        if let Some((list, scope)) = xattrs {
            crate::xattr::apply(crate::xattr::At::Fd(fd), list, scope)?;
        }
        Ok(())
    }

    /// `set_owner_mode_fd` for a file this agent just created: changes only what differs (as
    /// rsync does), since a new file usually has the right owner and mode already and each
    /// change dirties the inode once more.
    fn fix_owner_mode_fd(&self, fd: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
        let st = rfs::fstat(fd)?;
        if self.as_root && (st.st_uid, st.st_gid) != (meta.uid, meta.gid) {
            rfs::fchown(
                fd,
                Some(rfs::Uid::from_raw(meta.uid)),
                Some(rfs::Gid::from_raw(meta.gid)),
            )?;
        }
        // After the chown, which clears setuid/setgid bits. Temp files are created without
        // those bits (`create_temp`), so a mode that has them always differs here.
        if st.st_mode & 0o7777 != meta.mode & 0o7777 {
            rfs::fchmod(fd, mode(meta))?;
        }
        Ok(())
    }

    /// Moves `tmp/<tmpname>` to `name` in `parent`, replacing whatever is there (a directory
    /// of another kind included: the master said this path is now this entry).
    fn replace_into(&mut self, path: &RelPath, tmpname: &str, what: &str) -> ApplyResult {
        let tmp = self.tmp.as_fd();
        let trash = self.trash.as_ref().map(|t| t.as_fd());
        let mut replaced_dir = false;
        let r = self.parents.with_parent(path, what, |parent, name| {
            if let Some(t) = trash {
                replaced_dir |= keep_replaced(t, tmp, tmpname, parent, name, path);
            }
            match rfs::renameat(tmp, tmpname, parent, name) {
                Ok(()) => Ok(()),
                Err(Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR) => {
                    replaced_dir = true;
                    fsutil::remove_tree(parent, name)?;
                    rfs::renameat(tmp, tmpname, parent, name)?;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            }
        });
        if replaced_dir {
            self.parents.invalidate();
        }
        match &r {
            // rename() onto another link of the same inode succeeds without doing anything
            // (POSIX): the temp name would stay as an extra link. Remove it if it is still there.
            Ok(()) => {
                let _ = rfs::unlinkat(self.tmp.as_fd(), tmpname, AtFlags::empty());
            }
            Err(_) => {
                let _ = fsutil::remove_tree(self.tmp.as_fd(), tmpname.as_bytes());
            }
        }
        r
    }

    pub fn apply(&mut self, op: &Op) -> ApplyResult {
        let r = self.apply_op(op);
        if let (Ok(()), Some(f)) = (&r, self.fuse.as_mut()) {
            match op {
                Op::SetAttr { path, .. } => f.attributes(path),
                Op::Mkdir { path, .. } => {
                    f.entry(path);
                    f.attributes(path);
                }
                Op::Stash { from, .. } => f.entry(from),
                op => f.entry(op.target()),
            }
        }
        r
    }

    /// On a FUSE slave: what the batch applied so far changed, to fsync before its ack (see
    /// `fusesync`); empty elsewhere.
    pub fn take_fsyncs(&mut self) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
        let root = self.parents.root.as_fd();
        let Some(f) = self.fuse.as_mut() else {
            return Default::default();
        };
        let dirs = f.take(root);
        if dirs.is_empty() {
            return (dirs, Vec::new());
        }
        // Entries changed: on a Gluster DR volume, every brick's marker too (its own
        // FSYNCDIR syncs nothing). Made once, on the first batch that needs them.
        let markers = self
            .markers
            .get_or_insert_with(|| super::fusesync::gluster_markers(root))
            .iter()
            .filter_map(|m| m.try_clone().ok())
            .collect();
        (dirs, markers)
    }
}
