//! Setting an entry's owner, mode, times and extended attributes on the slave without ever
//! following a symlink.

use crate::fsutil::{proc_hint, proc_hint_io};
use crate::xattr;
use rustix::fd::BorrowedFd;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use std::io;

/// Sets the owner (when given), mode and modification time of `name` in `dir` without ever
/// following a symlink, whatever `name` is swapped for meanwhile.
///
/// Everything goes through one `O_PATH | O_NOFOLLOW` descriptor: its type comes from `fstat` of
/// that descriptor, not from an earlier `lstat` of the name, so an entry replaced by a symlink
/// between a check and the change gets the change on the link itself (owner and time) and never
/// on its target. `fchmodat` always follows a final symlink, so the mode is set through
/// `/proc/self/fd/N`, which names the descriptor's own inode; a symlink's mode is left alone
/// (Linux ignores it). Nothing is opened for reading, so a device or FIFO is never opened.
/// Extended attributes (`xattrs`: the list and the session's scope, see `crate::xattr`) are set
/// after the mode (an access ACL then matches it) through the same descriptor; a symlink's
/// through its name. Returns the entry's file type bits (`S_IFMT`).
pub fn set_attrs_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    owner: Option<(u32, u32)>,
    mode: Mode,
    times: &rfs::Timestamps,
    xattrs: Option<(&[crate::protocol::Xattr], u8)>,
) -> io::Result<u32> {
    use rustix::fd::AsRawFd;
    let fd = rfs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fmt = rfs::fstat(&fd)?.st_mode & libc::S_IFMT;
    if let Some((uid, gid)) = owner {
        rfs::chownat(
            &fd,
            "",
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if fmt == libc::S_IFLNK {
        // The descriptor is the link itself; its name is re-resolved without following, so
        // the worst a swap can do is set the time of another entry inside the same directory.
        if let Some((list, scope)) = xattrs {
            let p = xattr::proc_at(dir, name);
            xattr::apply(
                xattr::At::Proc {
                    path: &p,
                    follow: false,
                },
                list,
                scope,
            )
            .map_err(proc_hint_io)?;
        }
        rfs::utimensat(dir, name, times, AtFlags::SYMLINK_NOFOLLOW)?;
        return Ok(fmt);
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    // After chown, which clears setuid/setgid bits.
    rfs::chmodat(rfs::CWD, proc_path.as_str(), mode, AtFlags::empty()).map_err(proc_hint)?;
    if let Some((list, scope)) = xattrs {
        let at = xattr::At::Proc {
            path: proc_path.as_bytes(),
            follow: true,
        };
        xattr::apply(at, list, scope)?;
    }
    rfs::utimensat(rfs::CWD, proc_path.as_str(), times, AtFlags::empty()).map_err(proc_hint)?;
    Ok(fmt)
}
