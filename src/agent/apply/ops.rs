//! The ops that change names and attributes: Mkdir, SetAttr, Symlink, Special, Link, Delete,
//! Rmdir, Stash and Unstash.

use super::*;

impl Applier {
    pub(super) fn apply_op(&mut self, op: &Op) -> ApplyResult {
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
                    crate::agent::attrs::set_attrs_at(
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

    pub(super) fn mkdir(
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

    pub(super) fn setattr(
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
                crate::agent::attrs::set_attrs_at(
                    parent,
                    name,
                    owner,
                    mode(meta),
                    &times(meta),
                    xattrs,
                )
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
}
