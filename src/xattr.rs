//! Extended attributes and POSIX ACLs: which namespaces a session carries, reading them on the
//! master, checking and applying them on the slave (through descriptors, never following a
//! symlink).
//!
//! A `Meta` carries `xattrs: Some(list)` when the master read them: the slave's entry then has
//! exactly that list within the session's scope (names in scope it lacks are removed). `None`
//! leaves the slave's attributes alone. POSIX ACLs are the `system.posix_acl_access` and
//! `system.posix_acl_default` attributes, copied as they are (numeric ids, like the owner).

use crate::protocol::Xattr;
use rustix::fd::{AsFd, BorrowedFd};
use rustix::fs as rfs;
use rustix::io::Errno;
use std::ffi::CString;
use std::io;

/// `user.*`: always, when `sync-xattrs` is on.
pub const USER: u8 = 1;
/// `trusted.*`: only when both sides run as root.
pub const TRUSTED: u8 = 2;
/// `security.*` (SELinux labels, file capabilities): only when both sides run as root.
pub const SECURITY: u8 = 4;
/// `system.posix_acl_access` / `system.posix_acl_default`, when `sync-acls` is on.
pub const ACL: u8 = 8;

/// Linux's limits (`XATTR_NAME_MAX`, `XATTR_SIZE_MAX`), and the most attribute bytes one
/// entry may carry on the wire: the protocol checks them as it decodes.
pub use crate::protocol::{
    XATTR_ENTRY_MAX as ENTRY_MAX, XATTR_NAME_MAX as NAME_MAX, XATTR_VALUE_MAX as VALUE_MAX,
};
/// Linux's `XATTR_LIST_MAX`.
pub const LIST_MAX: usize = 65536;

const ACL_NAMES: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];

/// Names never copied whatever the scope: GlusterFS's own bookkeeping (a brick's gfid, DHT
/// link-to and layout, AFR/EC changelogs) describes the brick it is on, not the data.
fn internal(name: &[u8]) -> bool {
    // Labels of the DR host's own security modules (SELinux, Smack, AppArmor, IMA/EVM): its
    // policy sets them, and SELinux refuses their removal whatever the mode.
    name == b"security.selinux"
        || name.starts_with(b"security.SMACK64")
        || name == b"security.apparmor"
        || name == b"security.ima"
        || name == b"security.evm"
        || name == b"trusted.gfid"
        || name.starts_with(b"trusted.glusterfs.")
        || name.starts_with(b"trusted.afr.")
        || name.starts_with(b"trusted.ec.")
        || name.starts_with(b"trusted.gfid2path.")
        || name.starts_with(b"trusted.pgfid.")
        || name.starts_with(b"trusted.bit-rot.")
}

/// The scope bit a name belongs to; 0 for names no scope carries.
pub fn class(name: &[u8]) -> u8 {
    if internal(name) {
        0
    } else if name.starts_with(b"user.") {
        USER
    } else if name.starts_with(b"trusted.") {
        TRUSTED
    } else if name.starts_with(b"security.") {
        SECURITY
    } else if ACL_NAMES.contains(&name) {
        ACL
    } else {
        0
    }
}

/// Scope asked for by a session's options.
pub fn wanted(sync_xattrs: bool, sync_acls: bool) -> u8 {
    let mut s = 0;
    if sync_xattrs {
        s |= USER | TRUSTED | SECURITY;
    }
    if sync_acls {
        s |= ACL;
    }
    s
}

/// What this process may read or write of `scope`: `trusted.*` and `security.*` need root.
pub fn permitted(scope: u8) -> u8 {
    if rustix::process::geteuid().is_root() {
        scope
    } else {
        scope & !(TRUSTED | SECURITY)
    }
}

/// Human names of the bits of `scope`, for messages.
pub fn describe(scope: u8) -> String {
    let names = [
        (USER, "user.*"),
        (TRUSTED, "trusted.*"),
        (SECURITY, "security.*"),
        (ACL, "POSIX ACLs"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| scope & b != 0)
        .map(|&(_, n)| n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// An entry to read or change attributes of.
#[derive(Clone, Copy)]
pub enum At<'a> {
    /// An open descriptor (not `O_PATH`).
    Fd(BorrowedFd<'a>),
    /// A path naming an inode without following a final symlink: `/proc/self/fd/N` of an
    /// `O_PATH` descriptor (followed: that is the inode itself), or `/proc/self/fd/D/name` (a
    /// symlink's own attributes; not followed).
    Proc { path: &'a [u8], follow: bool },
}

/// A descriptor's `/proc` path: the inode it names, for calls that take no descriptor.
pub fn proc_fd(fd: BorrowedFd<'_>) -> Vec<u8> {
    use rustix::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes()
}

/// `/proc/self/fd/D/name`: `name` in the directory `dir`, for a symlink's own attributes (the
/// name is resolved again, never followed: at worst another entry of the same directory).
pub fn proc_at(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    let mut p = proc_fd(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn list(at: At<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    match at {
        At::Fd(fd) => rfs::flistxattr(fd, buf),
        At::Proc { path, follow: true } => rfs::listxattr(path, buf),
        At::Proc { path, .. } => rfs::llistxattr(path, buf),
    }
}

fn get(at: At<'_>, name: &CString, buf: &mut [u8]) -> Result<usize, Errno> {
    match at {
        At::Fd(fd) => rfs::fgetxattr(fd, name.as_c_str(), buf),
        At::Proc { path, follow: true } => rfs::getxattr(path, name.as_c_str(), buf),
        At::Proc { path, .. } => rfs::lgetxattr(path, name.as_c_str(), buf),
    }
}

fn set(at: At<'_>, name: &CString, value: &[u8]) -> Result<(), Errno> {
    let f = rfs::XattrFlags::empty();
    match at {
        At::Fd(fd) => rfs::fsetxattr(fd, name.as_c_str(), value, f),
        At::Proc { path, follow: true } => rfs::setxattr(path, name.as_c_str(), value, f),
        At::Proc { path, .. } => rfs::lsetxattr(path, name.as_c_str(), value, f),
    }
}

fn remove(at: At<'_>, name: &CString) -> Result<(), Errno> {
    match at {
        At::Fd(fd) => rfs::fremovexattr(fd, name.as_c_str()),
        At::Proc { path, follow: true } => rfs::removexattr(path, name.as_c_str()),
        At::Proc { path, .. } => rfs::lremovexattr(path, name.as_c_str()),
    }
}

/// The names of `at`'s attributes within `scope`, or `Ok(None)` when its filesystem has no
/// extended attributes at all.
fn names(at: At<'_>, scope: u8) -> io::Result<Option<Vec<Vec<u8>>>> {
    // Read for every file shipped: most have no attribute or a few, so a small buffer on the
    // stack first, the largest list Linux gives only when that is too small.
    let mut small = [0u8; 512];
    let mut big = Vec::new();
    let (buf, n) = match list(at, &mut small) {
        Ok(n) => (&small[..], n),
        Err(Errno::RANGE) => {
            big.resize(LIST_MAX, 0);
            match list(at, &mut big) {
                Ok(n) => (&big[..], n),
                Err(Errno::OPNOTSUPP) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        Err(Errno::OPNOTSUPP) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(Some(
        buf[..n]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty() && class(n) & scope != 0)
            .map(<[u8]>::to_vec)
            .collect(),
    ))
}

/// The value of one attribute of `at`, read into `buf` (at most its length); `Ok(None)` when
/// the entry does not have it or its filesystem has no attributes.
pub fn get_one(at: At<'_>, name: &[u8], buf: &mut [u8]) -> io::Result<Option<usize>> {
    match get(at, &cname(name)?, buf) {
        Ok(n) => Ok(Some(n)),
        Err(Errno::NODATA | Errno::OPNOTSUPP) => Ok(None),
        // Longer than `buf`: present, its value not wanted whole.
        Err(Errno::RANGE) => Ok(Some(buf.len())),
        Err(e) => Err(e.into()),
    }
}

fn cname(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Reads the attributes of `at` within `scope`, sorted by name. `Ok(None)`: the filesystem
/// has none (`EOPNOTSUPP`); the caller warns once and sends none.
pub fn read(at: At<'_>, scope: u8) -> io::Result<Option<Vec<Xattr>>> {
    if scope == 0 {
        return Ok(Some(Vec::new()));
    }
    let Some(mut names) = names(at, scope)? else {
        return Ok(None);
    };
    names.sort();
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(names.len());
    let mut total = 0;
    for name in names {
        let c = cname(&name)?;
        // Most values are short: the largest buffer only when one is not.
        buf.resize(buf.len().max(256), 0);
        let got = match get(at, &c, &mut buf) {
            Err(Errno::RANGE) => {
                buf.resize(VALUE_MAX, 0);
                get(at, &c, &mut buf)
            }
            r => r,
        };
        match got {
            Ok(n) => {
                total += name.len() + n;
                if total > ENTRY_MAX {
                    return Err(io::Error::other(format!(
                        "more than {ENTRY_MAX} bytes of extended attributes, over what georep replicates for one entry"
                    )));
                }
                out.push(Xattr {
                    name,
                    value: buf[..n].to_vec(),
                })
            }
            // Removed since it was listed.
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(out))
}

/// Reads the attributes of entries beneath a root by path, each through its parent directory
/// opened beneath the root (the last one kept: walks come in tree order) and its name, never
/// followed. Errors that mean the entry went away read as `Ok(None)`.
pub struct Reader<'r> {
    root: BorrowedFd<'r>,
    parent: Option<(Vec<u8>, rustix::fd::OwnedFd)>,
    /// The filesystem has none (`EOPNOTSUPP`), once seen.
    pub unsupported: bool,
    /// Why the last read gave nothing, when it was an error (not a vanished entry).
    pub error: Option<String>,
}

impl<'r> Reader<'r> {
    pub fn new(root: BorrowedFd<'r>) -> Self {
        Reader {
            root,
            parent: None,
            unsupported: false,
            error: None,
        }
    }

    /// The attributes of `rel` within `scope`; `None` when it vanished, its parent is no
    /// longer a directory beneath the root, or the filesystem has none.
    pub fn read(&mut self, rel: &crate::protocol::RelPath, scope: u8) -> Option<Vec<Xattr>> {
        self.read_of(rel, scope, None)
    }

    /// `read`, of the entry `(ino, birth)` only (`birth` 0: unknown): `None` when another
    /// entry has the name by now.
    pub fn read_of(
        &mut self,
        rel: &crate::protocol::RelPath,
        scope: u8,
        identity: Option<(u64, i64)>,
    ) -> Option<Vec<Xattr>> {
        if scope == 0 {
            return Some(Vec::new());
        }
        let r = match rel.split() {
            None => read(
                At::Proc {
                    path: &proc_fd(self.root),
                    follow: true,
                },
                scope,
            ),
            Some((parent, name)) => {
                if self.parent.as_ref().is_none_or(|(p, _)| p != parent) {
                    let fd = match crate::fsutil::open_dir_beneath(self.root, parent) {
                        Ok(fd) => fd,
                        Err(e) => {
                            tracing::debug!("reading extended attributes of {rel}: {e}");
                            return None;
                        }
                    };
                    self.parent = Some((parent.to_vec(), fd));
                }
                let (_, dir) = self.parent.as_ref()?;
                if let Some((ino, birth)) = identity {
                    let st = rfs::statx(
                        dir.as_fd(),
                        name,
                        rfs::AtFlags::SYMLINK_NOFOLLOW,
                        crate::entry::Entry::STATX_MASK,
                    )
                    .ok()?;
                    let st_birth =
                        crate::entry::Entry::from_statx(&st, None).map_or(0, |e| e.birth);
                    if st.stx_ino != ino || (birth != 0 && st_birth != 0 && st_birth != birth) {
                        tracing::debug!(
                            "reading extended attributes of {rel}: another entry has the name now"
                        );
                        return None;
                    }
                }
                let p = proc_at(dir.as_fd(), name);
                read(
                    At::Proc {
                        path: &p,
                        follow: false,
                    },
                    scope,
                )
            }
        };
        match r {
            Ok(Some(v)) => Some(v),
            Ok(None) => {
                self.unsupported = true;
                None
            }
            Err(e) => {
                tracing::debug!("reading extended attributes of {rel}: {e}");
                if !matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) {
                    self.error = Some(e.to_string());
                }
                None
            }
        }
    }
}

/// Why the agent refuses a list: a name outside the session's scope (or Gluster-internal), or
/// a name, value or whole list over the limits. Checked before anything is changed.
pub fn check(list: &[Xattr], scope: u8) -> Result<(), String> {
    let mut total = 0;
    for x in list {
        let shown = String::from_utf8_lossy(&x.name);
        if x.name.is_empty() || x.name.len() > NAME_MAX || x.name.contains(&0) {
            return Err(format!(
                "extended attribute name {shown:?} is empty, longer than {NAME_MAX} bytes or holds a NUL"
            ));
        }
        if x.value.len() > VALUE_MAX {
            return Err(format!(
                "extended attribute {shown} holds {} bytes, over the limit of {VALUE_MAX}",
                x.value.len()
            ));
        }
        if class(&x.name) & scope == 0 {
            return Err(format!(
                "extended attribute {shown} is outside what this session may write here ({})",
                describe(scope)
            ));
        }
        total += x.name.len() + x.value.len();
    }
    if total > ENTRY_MAX {
        return Err(format!(
            "{total} bytes of extended attributes on one entry, over the limit of {ENTRY_MAX}"
        ));
    }
    Ok(())
}

/// Makes the attributes of `at` within `scope` exactly `want` (already `check`ed): sets what
/// differs, removes what `want` lacks. `Ok(false)`: the filesystem has no extended attributes.
pub fn apply(at: At<'_>, want: &[Xattr], scope: u8) -> io::Result<bool> {
    let Some(have) = read(at, scope)? else {
        return if want.is_empty() {
            Ok(false)
        } else {
            Err(Errno::OPNOTSUPP.into())
        };
    };
    for x in want {
        if !have.iter().any(|h| h == x) {
            set(at, &cname(&x.name)?, &x.value)?;
        }
    }
    for h in have {
        if !want.iter().any(|x| x.name == h.name) {
            match remove(at, &cname(&h.name)?) {
                Ok(()) | Err(Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(true)
}

/// What a filesystem supports of `scope`, tried on the directory `dir` with a scratch file
/// `name` (removed again): the scope bits that worked, and why the others did not.
pub fn probe(dir: BorrowedFd<'_>, name: &str, scope: u8) -> (u8, Option<String>) {
    let fd = match rfs::openat(
        dir,
        name,
        rfs::OFlags::RDWR | rfs::OFlags::CREATE | rfs::OFlags::TRUNC | rfs::OFlags::CLOEXEC,
        rfs::Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => fd,
        Err(e) => return (0, Some(format!("cannot create a probe file: {e}"))),
    };
    let mut ok = permitted(scope);
    let mut why = Vec::new();
    if ok != scope {
        why.push(format!(
            "{} need root on both sides",
            describe(scope & !permitted(scope))
        ));
    }
    let tries: [(u8, &[u8], &[u8]); 2] = [
        (USER, b"user.georep.probe", b"1"),
        // A minimal access ACL (owner rw-, group ---, other ---), the form of `chmod 600`.
        (
            ACL,
            b"system.posix_acl_access",
            &[
                2, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
                0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
            ],
        ),
    ];
    for (bit, n, v) in tries {
        if ok & bit == 0 {
            continue;
        }
        if let Err(e) = rfs::fsetxattr(fd.as_fd(), n, v, rfs::XattrFlags::empty()) {
            ok &= !bit;
            why.push(format!(
                "the DR filesystem refuses {}: {}",
                describe(bit),
                io::Error::from(e)
            ));
        }
    }
    drop(fd);
    let _ = rfs::unlinkat(dir, name, rfs::AtFlags::empty());
    (ok, (!why.is_empty()).then(|| why.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(n: &str, v: &[u8]) -> Xattr {
        Xattr {
            name: n.as_bytes().to_vec(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn gluster_internal_names_are_never_in_scope() {
        for n in [
            "trusted.gfid",
            "trusted.glusterfs.dht",
            "trusted.afr.gv-client-0",
        ] {
            assert_eq!(class(n.as_bytes()), 0, "{n}");
        }
        // The DR host's security modules label by their own policy (and SELinux refuses the
        // removal of its label): never copied, never removed.
        for n in [
            "security.selinux",
            "security.SMACK64",
            "security.apparmor",
            "security.ima",
        ] {
            assert_eq!(class(n.as_bytes()), 0, "{n}");
        }
        assert_eq!(class(b"security.capability"), SECURITY);
        assert_eq!(class(b"trusted.mine"), TRUSTED);
        assert_eq!(class(b"user.a"), USER);
        assert_eq!(class(b"system.posix_acl_default"), ACL);
        assert_eq!(class(b"system.nfs4_acl"), 0);
    }

    #[test]
    fn check_refuses_out_of_scope_and_oversized_attributes() {
        assert!(check(&[x("user.a", b"1")], USER).is_ok());
        assert!(check(&[x("trusted.a", b"1")], USER).is_err());
        assert!(check(&[x("trusted.gfid", b"1")], 0xff).is_err());
        assert!(check(&[x("user.a", &vec![0; VALUE_MAX + 1])], USER).is_err());
        let long = format!("user.{}", "n".repeat(NAME_MAX));
        assert!(check(&[x(&long, b"")], USER).is_err());
        let many: Vec<Xattr> = (0..20)
            .map(|i| x(&format!("user.{i}"), &vec![0; VALUE_MAX]))
            .collect();
        assert!(check(&many, USER).is_err());
    }

    #[test]
    fn apply_sets_and_removes_within_scope_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join("f")).unwrap();
        let at = At::Fd(f.as_fd());
        if !apply(at, &[x("user.keep", b"old"), x("user.gone", b"1")], USER).unwrap() {
            eprintln!("no user xattrs on this filesystem");
            return;
        }
        apply(at, &[x("user.keep", b"new")], USER).unwrap();
        assert_eq!(
            read(at, USER).unwrap().unwrap(),
            vec![x("user.keep", b"new")]
        );
        // More names than the small list buffer holds, a value longer than the small one.
        let many: Vec<Xattr> = (0..40)
            .map(|i| {
                x(
                    &format!("user.name-number-{i:03}"),
                    if i == 7 { &[9; 1000] } else { b"v" },
                )
            })
            .collect();
        let mut sorted = many.clone();
        sorted.sort();
        apply(at, &many, USER).unwrap();
        assert_eq!(read(at, USER).unwrap().unwrap(), sorted);
        apply(at, &[x("user.keep", b"new")], USER).unwrap();
        // Out of scope: an empty list within ACL leaves user.* alone.
        apply(at, &[], ACL).unwrap();
        assert_eq!(read(at, USER).unwrap().unwrap().len(), 1);
    }
}
