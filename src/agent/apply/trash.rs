//! What an op replaces or deletes goes to the trash (`trash-retention`) instead of away: kept
//! under `.georep/trash/<day>/` with its path, as a hard link (a file) or the tree itself (a
//! directory).

use super::*;

/// With a trash: keeps the entry at `name` that `tmpname` (in `tmp`) is about to replace. A
/// file, symlink or special file gets a hard link in the trash (the rename over it stays
/// atomic for readers); a directory (a type change) is moved there whole. Another link of the
/// same inode (a relink) is not a replacement. Returns whether a directory was moved. A failure
/// to keep it is logged and the replacement goes on, as a delete does.
pub(super) fn keep_replaced(
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
pub(super) fn keep_replaced_by_dir(
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
pub(super) fn into_trash(
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
pub(super) fn link_fd(
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
