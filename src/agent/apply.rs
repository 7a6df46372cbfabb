//! Confined, idempotent application of ops beneath the slave root.
//!
//! Invariant: every write happens through a directory fd obtained with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS` from the root fd, and the final component is handled with `*at` calls
//! that do not follow symlinks, so no op can touch anything outside the root. New content is
//! written under `.georep/tmp/<brick>/` and renamed into place: readers never see a partial file.

use super::direct::{ContentWriter, Stage};
use crate::fsutil::{self, errno_of};
use crate::protocol::{FileAppend, FileBegin, Meta, Op, RelPath, SpecialKind};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use std::io;

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

struct OpenFile {
    path: RelPath,
    meta: Meta,
    size: u64,
    written: u64,
    hasher: blake3::Hasher,
    /// `None` when creating the temp file failed: the content is read and dropped.
    fd: Option<ContentWriter>,
    /// The temp file's name in the temp directory; `None` while it has none (`O_TMPFILE`).
    tmpname: Option<String>,
    /// A `FileAppend` or a `FileDelta`: some of its bytes come from the slave's own copy, so
    /// a whole that does not check means that copy is not the one the master built on.
    append: bool,
    /// A `FileDelta`'s base: the slave's copy (`None` when it is not the declared one: the
    /// file has failed), and the declared block size and size.
    base: Option<(Option<std::fs::File>, u32, u64)>,
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

/// With a trash: keeps the entry at `name` that `tmpname` (in `tmp`) is about to replace. A
/// file, symlink or special file gets a hard link in the trash (the rename over it stays
/// atomic for readers); a directory (a type change) is moved there whole. Another link of the
/// same inode (a relink) is not a replacement. Returns whether a directory was moved. A failure
/// to keep it is logged and the replacement goes on, as a delete does.
fn keep_replaced(
    trash: BorrowedFd<'_>,
    tmp: BorrowedFd<'_>,
    tmpname: &str,
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &RelPath,
) -> bool {
    let Ok(Some(old)) = fsutil::lstat_at(parent, name) else {
        return false;
    };
    // No source (a replayed Unstash whose Stash found nothing): the rename will fail and
    // replace nothing, so nothing goes to the trash either.
    let Some(new) = fsutil::lstat_at(tmp, tmpname.as_bytes()).ok().flatten() else {
        return false;
    };
    if (new.stx_ino, new.stx_dev_major, new.stx_dev_minor)
        == (old.stx_ino, old.stx_dev_major, old.stx_dev_minor)
    {
        return false;
    }
    let is_dir = fsutil::is_dir_mode(old.stx_mode as u32);
    match into_trash(trash, parent, name, path, !is_dir) {
        Ok(()) => is_dir,
        Err(e) => {
            tracing::warn!("keeping the replaced {path} in the trash failed ({e}); replacing it");
            false
        }
    }
}

/// With a trash: a non-directory about to be replaced by a directory is moved there.
fn keep_replaced_by_dir(
    trash: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &RelPath,
) {
    if let Err(e) = into_trash(trash, parent, name, path, false) {
        tracing::warn!("keeping the replaced {path} in the trash failed ({e}); replacing it");
    }
}

/// Moves (`link == false`) or hard-links `name` in `parent` into `trash` under `path`, creating
/// the parent directories there; a name already in the trash gets a `.~N~` suffix (nothing
/// kept is ever replaced). Never follows a symlink.
fn into_trash(
    trash: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    name: &[u8],
    path: &RelPath,
    link: bool,
) -> io::Result<()> {
    let mut dir: Option<OwnedFd> = None;
    let dirs = path.split().map(|(d, _)| d).unwrap_or_default();
    for comp in dirs.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let here = dir.as_ref().map(|d| d.as_fd()).unwrap_or(trash);
        match rfs::mkdirat(here, comp, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        dir = Some(rfs::openat(
            here,
            comp,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    let target_dir = dir.as_ref().map(|d| d.as_fd()).unwrap_or(trash);
    for n in 0..1000u32 {
        let mut candidate = name.to_vec();
        if n > 0 {
            candidate.extend_from_slice(format!(".~{n}~").as_bytes());
        }
        let r = if link {
            rfs::linkat(
                parent,
                name,
                target_dir,
                candidate.as_slice(),
                AtFlags::empty(),
            )
        } else {
            rfs::renameat_with(
                parent,
                name,
                target_dir,
                candidate.as_slice(),
                rfs::RenameFlags::NOREPLACE,
            )
        };
        match r {
            Err(Errno::EXIST) => continue,
            r => return r.map_err(Into::into),
        }
    }
    Err(io::Error::other(
        "too many versions of this name in today's trash",
    ))
}

/// Links the open file `fd` (an `O_TMPFILE`) as `name` in `dir`; fails with `EEXIST` when the
/// name is taken.
fn link_fd(
    fd: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: impl rustix::path::Arg,
    as_root: bool,
) -> io::Result<()> {
    if as_root {
        // Needs CAP_DAC_READ_SEARCH, which root has.
        rfs::linkat(fd, "", dir, name, AtFlags::EMPTY_PATH)?;
    } else {
        use rustix::fd::AsRawFd;
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rfs::linkat(
            rfs::CWD,
            proc_path.as_str(),
            dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )?;
    }
    Ok(())
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

    fn apply_op(&mut self, op: &Op) -> ApplyResult {
        let meta = match op {
            Op::Mkdir { meta, .. }
            | Op::Symlink { meta, .. }
            | Op::Special { meta, .. }
            | Op::SetAttr { meta, .. } => Some(meta),
            _ => None,
        };
        let xattrs = match meta {
            Some(m) => self.xattrs(op.target(), m)?,
            None => None,
        };
        match op {
            Op::Mkdir { path, meta } => self.mkdir(path, meta, xattrs),
            Op::Symlink { path, target, meta } => {
                let t = self.tmpname("l");
                let tmp = self.tmp.as_fd();
                let as_root = self.as_root;
                (|| -> io::Result<()> {
                    rfs::symlinkat(&target[..], tmp, t.as_str())?;
                    if as_root {
                        rfs::chownat(
                            tmp,
                            t.as_str(),
                            Some(rfs::Uid::from_raw(meta.uid)),
                            Some(rfs::Gid::from_raw(meta.gid)),
                            AtFlags::SYMLINK_NOFOLLOW,
                        )?;
                    }
                    if let Some((list, scope)) = xattrs {
                        let p = crate::xattr::proc_at(tmp, t.as_bytes());
                        let at = crate::xattr::At::Proc {
                            path: &p,
                            follow: false,
                        };
                        crate::xattr::apply(at, list, scope)?;
                    }
                    rfs::utimensat(tmp, t.as_str(), &times(meta), AtFlags::SYMLINK_NOFOLLOW)?;
                    Ok(())
                })()
                .map_err(|e| {
                    let _ = rfs::unlinkat(tmp, t.as_str(), AtFlags::empty());
                    ApplyError::new(path, "creating symlink", e)
                })?;
                self.replace_into(path, &t, "creating symlink")
            }
            Op::Special {
                path,
                kind,
                rdev,
                meta,
            } => {
                let t = self.tmpname("n");
                let tmp = self.tmp.as_fd();
                let ft = match kind {
                    SpecialKind::Fifo => rfs::FileType::Fifo,
                    SpecialKind::Char => rfs::FileType::CharacterDevice,
                    SpecialKind::Block => rfs::FileType::BlockDevice,
                };
                let as_root = self.as_root;
                (|| -> io::Result<()> {
                    rfs::mknodat(tmp, t.as_str(), ft, mode(meta), *rdev)?;
                    let owner = as_root.then_some((meta.uid, meta.gid));
                    super::attrs::set_attrs_at(
                        tmp,
                        t.as_bytes(),
                        owner,
                        mode(meta),
                        &times(meta),
                        xattrs,
                    )?;
                    Ok(())
                })()
                .map_err(|e| {
                    let _ = rfs::unlinkat(tmp, t.as_str(), AtFlags::empty());
                    ApplyError::new(path, "creating special file", e)
                })?;
                self.replace_into(path, &t, "creating special file")
            }
            Op::Link { path, target } => {
                let t = self.tmpname("h");
                let tmp = self.tmp.as_fd();
                self.parents
                    .with_parent(target, "hard-linking to", |tparent, tname| {
                        rfs::linkat(tparent, tname, tmp, t.as_str(), AtFlags::empty())?;
                        Ok(())
                    })
                    .map_err(|mut e| {
                        e.path = path.clone();
                        e.message = format!("hard-linking {path} to {target}: {}", e.message);
                        e
                    })?;
                self.replace_into(path, &t, "hard-linking")
            }
            Op::Delete { path } => {
                self.parents.invalidate();
                let trash = self.trash.as_ref().map(|t| t.as_fd());
                let r = self.parents.with_parent(path, "deleting", |parent, name| {
                    if let Some(t) = trash {
                        match into_trash(t, parent, name, path, false) {
                            Ok(()) => return Ok(()),
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                            Err(e) => {
                                tracing::warn!(
                                    "keeping {path} in the trash failed ({e}); deleting it"
                                )
                            }
                        }
                    }
                    fsutil::remove_tree(parent, name)
                });
                match r {
                    // The parent is already gone: so is the entry.
                    Err(e) if e.errno == libc::ENOENT => Ok(()),
                    r => r,
                }
            }
            Op::Stash { from, slot } => {
                self.parents.invalidate();
                let tmp = self.tmp.as_fd();
                let s = format!("stash-{slot}");
                let r =
                    self.parents
                        .with_parent(from, "moving aside for rename", |parent, name| {
                            match rfs::renameat(parent, name, tmp, s.as_str()) {
                                Ok(()) => Ok(()),
                                Err(
                                    Errno::ISDIR | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR,
                                ) => {
                                    fsutil::remove_tree(tmp, s.as_bytes())?;
                                    Ok(rfs::renameat(parent, name, tmp, s.as_str())?)
                                }
                                Err(e) => Err(e.into()),
                            }
                        });
                match r {
                    // Nothing to move (a replay): the matching Unstash reports it if it matters.
                    Err(e) if e.errno == libc::ENOENT => Ok(()),
                    r => r,
                }
            }
            Op::Unstash { slot, to } => {
                self.parents.invalidate();
                let s = format!("stash-{slot}");
                self.replace_into(to, &s, "renaming into place").map_err(|mut e| {
                    if e.errno == libc::ENOENT {
                        e.message = format!(
                            "renaming into place {to}: the rename source is missing on the slave (georep re-sends it)"
                        );
                    }
                    e
                })
            }
            Op::SetAttr { path, meta } => self.setattr(path, meta, xattrs),
            Op::Rmdir { path } => {
                self.parents.invalidate();
                let r =
                    self.parents
                        .with_parent(path, "removing directory", |parent, name| {
                            match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
                                // Another brick's entries are still there, or another brick's file
                                // has the name now: theirs to remove.
                                Ok(())
                                | Err(
                                    Errno::NOENT | Errno::NOTEMPTY | Errno::EXIST | Errno::NOTDIR,
                                ) => Ok(()),
                                Err(e) => Err(e.into()),
                            }
                        });
                match r {
                    Err(e) if e.errno == libc::ENOENT => Ok(()),
                    r => r,
                }
            }
        }
    }

    fn mkdir(
        &mut self,
        path: &RelPath,
        meta: &Meta,
        xattrs: Option<(&[crate::protocol::Xattr], u8)>,
    ) -> ApplyResult {
        if path.is_root() {
            let root = self.parents.root.as_fd();
            return self
                .set_owner_mode_fd(root, meta, xattrs)
                .map_err(|e| ApplyError::new(path, "setting attributes of", e));
        }
        let as_root = self.as_root;
        let trash = self.trash.as_ref().map(|t| t.as_fd());
        let mut replaced = false;
        self.parents
            .with_parent(path, "creating directory", |parent, name| {
                match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) => {
                        let st = fsutil::lstat_at(parent, name)?;
                        if !st.is_some_and(|s| fsutil::is_dir_mode(s.stx_mode as u32)) {
                            replaced = true;
                            if let Some(t) = trash {
                                keep_replaced_by_dir(t, parent, name, path);
                            }
                            fsutil::remove_tree(parent, name)?;
                            rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                let fd = rfs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                if as_root {
                    rfs::fchown(
                        &fd,
                        Some(rfs::Uid::from_raw(meta.uid)),
                        Some(rfs::Gid::from_raw(meta.gid)),
                    )?;
                }
                rfs::fchmod(&fd, mode(meta))?;
                if let Some((list, scope)) = xattrs {
                    crate::xattr::apply(crate::xattr::At::Fd(fd.as_fd()), list, scope)?;
                }
                Ok(())
            })?;
        if replaced {
            self.parents.invalidate();
        }
        Ok(())
    }

    fn setattr(
        &mut self,
        path: &RelPath,
        meta: &Meta,
        xattrs: Option<(&[crate::protocol::Xattr], u8)>,
    ) -> ApplyResult {
        if path.is_root() {
            let root = self.parents.root.as_fd();
            return self
                .set_owner_mode_fd(root, meta, xattrs)
                .and_then(|()| rfs::futimens(root, &times(meta)).map_err(Into::into))
                .map_err(|e| ApplyError::new(path, "setting attributes of", e));
        }
        let owner = self.as_root.then_some((meta.uid, meta.gid));
        self.parents
            .with_parent(path, "setting attributes of", |parent, name| {
                super::attrs::set_attrs_at(parent, name, owner, mode(meta), &times(meta), xattrs)
                    .map(drop)
            })
    }

    /// On a shared tree (a distributed volume, where every brick replays a directory's
    /// rename): the second half of a rename whose stashed entry is a directory while `to` is
    /// a directory with entries already (another brick renamed it first, then the old name
    /// was made again, and what this brick stashed is that new directory). `to` is kept, and
    /// the stashed directory goes back to `from`; `Ok(false)` when that case does not apply.
    pub fn unstash_onto_moved(
        &mut self,
        slot: u64,
        to: &RelPath,
        from: Option<&RelPath>,
    ) -> ApplyResult<bool> {
        let s = format!("stash-{slot}");
        let stashed_dir = rfs::statat(self.tmp.as_fd(), s.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory);
        if !stashed_dir || !self.is_dir(to) {
            return Ok(false);
        }
        let populated = fsutil::open_dir_beneath(self.parents.root.as_fd(), to.as_bytes())
            .ok()
            .and_then(|fd| rfs::Dir::read_from(&fd).ok())
            .is_some_and(|mut d| {
                std::iter::from_fn(|| d.read())
                    .flatten()
                    .any(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
            });
        if !populated {
            return Ok(false);
        }
        let Some(from) = from else {
            return Ok(false);
        };
        self.parents.invalidate();
        let tmp = self.tmp.as_fd();
        self.parents
            .with_parent(from, "putting back a directory", |parent, name| {
                Ok(rfs::renameat_with(
                    tmp,
                    s.as_str(),
                    parent,
                    name,
                    rfs::RenameFlags::NOREPLACE,
                )?)
            })?;
        tracing::debug!(%from, %to, "{to} was renamed by another brick already: {from} put back");
        Ok(true)
    }

    /// Whether `path` is a directory on the slave now (not following a symlink).
    pub fn is_dir(&mut self, path: &RelPath) -> bool {
        if path.is_root() {
            return true;
        }
        self.parents
            .with_parent(path, "looking at", |parent, name| {
                Ok(rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?)
            })
            .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory)
    }

    /// The path of the file being received, if any.
    pub fn file_path(&self) -> Option<&RelPath> {
        self.file.as_ref().map(|f| &f.path)
    }

    pub fn file_open(&self) -> bool {
        self.file.is_some()
    }

    /// Starts receiving a file. An error is reported once; its content is still consumed.
    pub fn begin_file(&mut self, fb: &FileBegin) -> ApplyResult {
        let checked = self.xattrs(&fb.path, &fb.meta).map(drop);
        let created = checked.and_then(|()| {
            self.create_temp(fb.meta.mode & 0o777)
                .map_err(|e| ApplyError::new(&fb.path, "creating file", e))
        });
        let (fd, tmpname, err) = match created {
            Ok((fd, name)) => (
                Some(ContentWriter::new(std::fs::File::from(fd), fb.size)),
                name,
                None,
            ),
            Err(e) => (None, None, Some(e)),
        };
        self.file = Some(OpenFile {
            path: fb.path.clone(),
            meta: fb.meta.clone(),
            size: fb.size,
            written: 0,
            hasher: blake3::Hasher::new(),
            fd,
            tmpname,
            append: false,
            base: None,
        });
        match err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts a file made of the slave's current copy at the path (exactly `base` bytes)
    /// and the `size - base` bytes that follow in `Chunk`s, into a temp file as `begin_file`
    /// does: the copy at the path is untouched until the whole is checked and renamed in. An
    /// error is reported once; the tail is still consumed.
    pub fn begin_append(&mut self, fa: &FileAppend) -> ApplyResult {
        let r = self.begin_file(&FileBegin {
            path: fa.path.clone(),
            meta: fa.meta.clone(),
            size: fa.size,
        });
        let copied = r.and_then(|()| self.copy_base(&fa.path, fa.base));
        let f = self.file.as_mut().expect("begun above");
        f.append = true;
        if copied.is_err() {
            // The base counts as received: the tail that follows is consumed and dropped.
            f.written = fa.base;
            if let Some(w) = f.fd.take() {
                drop(w);
                let t = f.tmpname.take();
                self.discard(&t);
            }
        }
        copied
    }

    /// Starts a file rebuilt from blocks of the slave's copy at the path (which must be
    /// exactly `base` bytes) and literal chunks, into a temp file as `begin_file` does. An
    /// error is reported once; the content is still consumed.
    pub fn begin_delta(&mut self, fd: &crate::protocol::FileDelta) -> ApplyResult {
        let r = self.begin_file(&FileBegin {
            path: fd.path.clone(),
            meta: fd.meta.clone(),
            size: fd.size,
        });
        let base = r.and_then(|()| self.open_base(&fd.path, fd.base));
        let f = self.file.as_mut().expect("begun above");
        f.append = true;
        match base {
            Ok(file) => {
                f.base = Some((Some(file), fd.block, fd.base));
                Ok(())
            }
            Err(e) => {
                f.base = Some((None, fd.block, fd.base));
                if let Some(w) = f.fd.take() {
                    drop(w);
                    let t = f.tmpname.take();
                    self.discard(&t);
                }
                Err(e)
            }
        }
    }

    /// The slave's copy at `path`, which must be a regular file of `base` bytes.
    fn open_base(&self, path: &RelPath, base: u64) -> ApplyResult<std::fs::File> {
        let fd = fsutil::open_regular_beneath(
            self.parents.root.as_fd(),
            path.as_bytes(),
            OFlags::empty(),
        )
        .map_err(|e| ApplyError::new(path, "reading the copy to build on", e))?
        .ok_or_else(|| stale(path, "not a regular file".into()))?;
        let have = rfs::fstat(&fd)
            .map_err(|e| ApplyError::new(path, "reading the copy to build on", e.into()))?
            .st_size as u64;
        if have != base {
            return Err(stale(path, format!("{have} bytes, not {base}")));
        }
        Ok(std::fs::File::from(fd))
    }

    /// `count` blocks of the open `FileDelta`'s base from block `first` on, as content. Same
    /// error convention as `chunk`; a reference outside the base is a protocol violation.
    pub fn copy_blocks(
        &mut self,
        first: u32,
        count: u32,
    ) -> Result<(), Result<ApplyError, String>> {
        use std::os::unix::fs::FileExt;
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| Err("a block reference outside a file".to_string()))?;
        let Some((_, block, size)) = f.base.as_ref() else {
            return Err(Err(format!(
                "a block reference in {}, which is not a delta",
                f.path
            )));
        };
        let (block, size) = (*block as u64, *size);
        let start = first as u64 * block;
        let end = (first as u64 + count as u64) * block;
        if count == 0 || start >= size || end - block >= size {
            return Err(Err(format!(
                "blocks {first}..{} of {} are outside its {size}-byte base",
                first as u64 + count as u64,
                f.path
            )));
        }
        let end = end.min(size);
        let path = f.path.clone();
        let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
        let mut at = start;
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            let f = self.file.as_mut().expect("open");
            match f.base.as_ref().and_then(|b| b.0.as_ref()) {
                Some(base) => {
                    if let Err(e) = base.read_exact_at(&mut buf[..n], at) {
                        // The file fails; what is left of it is consumed, never written, so
                        // the stream stays in step.
                        if let Some(b) = f.base.as_mut() {
                            b.0 = None;
                        }
                        if let Some(w) = f.fd.take() {
                            drop(w);
                            let t = f.tmpname.take();
                            self.discard(&t);
                        }
                        self.take_content(end - at, None)?;
                        return Err(Ok(stale(&path, format!("reading it: {e}"))));
                    }
                    self.take_content(n as u64, Some(&buf[..n]))?;
                }
                // Failed at its start: consumed, never written.
                None => self.take_content(n as u64, None)?,
            }
            at += n as u64;
        }
        Ok(())
    }

    /// Feeds the slave's copy of `path`, which must be `base` bytes long, into the open file.
    fn copy_base(&mut self, path: &RelPath, base: u64) -> ApplyResult {
        use std::io::Read;
        let stale = |why: String| stale(path, why);
        let fd = fsutil::open_regular_beneath(
            self.parents.root.as_fd(),
            path.as_bytes(),
            OFlags::empty(),
        )
        .map_err(|e| ApplyError::new(path, "reading the copy to append to", e))?
        .ok_or_else(|| stale("not a regular file".into()))?;
        let have = rfs::fstat(&fd)
            .map_err(|e| ApplyError::new(path, "reading the copy to append to", e.into()))?
            .st_size as u64;
        if have != base {
            return Err(stale(format!("{have} bytes, not {base}")));
        }
        let mut src = std::fs::File::from(fd).take(base);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src
                .read(&mut buf)
                .map_err(|e| ApplyError::new(path, "reading the copy to append to", e))?;
            if n == 0 {
                break;
            }
            match self.chunk(&buf[..n]) {
                Ok(()) => {}
                Err(Ok(e)) => return Err(e),
                Err(Err(msg)) => return Err(stale(msg)),
            }
        }
        match self.file.as_ref() {
            Some(f) if f.written == base => Ok(()),
            _ => Err(stale("it shrank while read".into())),
        }
    }

    /// Removes a named temp file that will not be placed (an unnamed one goes with its fd).
    fn discard(&self, tmpname: &Option<String>) {
        if let Some(t) = tmpname {
            let _ = rfs::unlinkat(self.tmp.as_fd(), t.as_str(), AtFlags::empty());
        }
    }

    /// Appends `len` zero bytes as a hole, left unallocated. Same error convention as `chunk`.
    pub fn hole(&mut self, len: u64) -> Result<(), Result<ApplyError, String>> {
        self.take_content(len, None)
    }

    /// Appends content. `Err(Ok(e))` is a per-file failure (reported, stream continues);
    /// `Err(Err(msg))` a protocol violation.
    pub fn chunk(&mut self, data: &[u8]) -> Result<(), Result<ApplyError, String>> {
        self.take_content(data.len() as u64, Some(data))
    }

    /// `len` more bytes of the open file: `data`, or a hole when `None`.
    fn take_content(
        &mut self,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<(), Result<ApplyError, String>> {
        let f = self.file.as_mut().ok_or_else(|| {
            Err(match data {
                Some(_) => "file content outside a file".to_string(),
                None => "a hole outside a file".to_string(),
            })
        })?;
        f.written = f.written.saturating_add(len);
        if f.written > f.size {
            return Err(Err(format!(
                "file {} sends more than its declared {} bytes",
                f.path, f.size
            )));
        }
        match data {
            Some(d) => {
                f.hasher.update(d);
            }
            None => crate::sparse::hash_zeros(&mut f.hasher, len),
        }
        if let Some(fd) = f.fd.as_mut() {
            let r = match data {
                Some(d) => fd.write(&mut self.stage, d),
                None => fd.skip(&mut self.stage, len),
            };
            if let Err(e) = r {
                let err = ApplyError::new(&f.path, "writing file", e);
                f.fd = None;
                let t = f.tmpname.take();
                self.discard(&t);
                return Err(Ok(err));
            }
        }
        Ok(())
    }

    /// Finishes a file: verifies size and hash, sets metadata, renames into place.
    /// Same error convention as `chunk`; `Ok(false)` means the file was already reported failed.
    pub fn end_file(
        &mut self,
        hash: &[u8; 32],
        commit: bool,
    ) -> Result<bool, Result<ApplyError, String>> {
        let f = self
            .file
            .take()
            .ok_or_else(|| Err("FileEnd outside a file".to_string()))?;
        if f.written != f.size {
            return Err(Err(format!(
                "file {} ended after {} of its declared {} bytes",
                f.path, f.written, f.size
            )));
        }
        if f.append && f.fd.is_none() {
            // Reported failed at its start: the hash covers a base never read here.
            return Ok(false);
        }
        if f.hasher.finalize().as_bytes() != hash {
            if f.append {
                // The frames are checked: what differs is the base, the slave's own copy.
                self.discard(&f.tmpname);
                return Err(Ok(ApplyError {
                    errno: libc::ESTALE,
                    message: format!(
                        "the DR copy of {} is not the version this change builds on (its content differs): it is sent whole on the next pass",
                        f.path
                    ),
                    path: f.path,
                }));
            }
            return Err(Err(format!(
                "content hash of {} does not match what the master sent: the stream is corrupt",
                f.path
            )));
        }
        let Some(w) = f.fd else { return Ok(false) };
        if !commit {
            drop(w);
            self.discard(&f.tmpname);
            return Ok(false);
        }
        let fd = match w.finish(&mut self.stage) {
            Ok(fd) => fd,
            Err(e) => {
                self.discard(&f.tmpname);
                return Err(Ok(ApplyError::new(&f.path, "writing file", e)));
            }
        };
        let xattrs = f.meta.xattrs.as_deref().filter(|_| self.xattr_scope != 0);
        let r = self
            .fix_owner_mode_fd(fd.as_fd(), &f.meta)
            .and_then(|()| match xattrs {
                // After the mode (an access ACL's mask is the group bits), before the file
                // is visible: it appears with its attributes or not at all.
                Some(list) => {
                    crate::xattr::apply(crate::xattr::At::Fd(fd.as_fd()), list, self.xattr_scope)
                        .map(drop)
                }
                None => Ok(()),
            })
            .and_then(|()| rfs::futimens(&fd, &times(&f.meta)).map_err(Into::into));
        if let Err(e) = r {
            self.discard(&f.tmpname);
            return Err(Ok(ApplyError::new(&f.path, "setting attributes of", e)));
        }
        if let Some(fs) = self.fuse.as_mut() {
            // Before it gets its name, so a file is never visible (nor acked) before its
            // content reached the FUSE daemon's storage; no descriptor is held until the ack.
            if let Err(e) = rfs::fsync(&fd) {
                self.discard(&f.tmpname);
                return Err(Ok(ApplyError::new(&f.path, "syncing file", e.into())));
            }
            fs.entry(&f.path);
        }
        // The version being replaced goes to the trash in `replace_into` (a hard link).
        match &f.tmpname {
            Some(t) => {
                drop(fd);
                self.replace_into(&f.path, t, "renaming into place")
            }
            None => self.link_into(&f.path, fd.as_fd()),
        }
        .map_err(Ok)?;
        Ok(true)
    }

    /// Makes everything applied so far durable.
    pub fn sync(&self) -> io::Result<()> {
        rfs::syncfs(&self.parents.root)?;
        Ok(())
    }
}
