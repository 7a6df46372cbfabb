//! Random file-system change sequences for the convergence harness: a seeded generator weighted
//! towards what breaks replicators (inode reuse, renames into and over renamed directories, hard
//! links across renames, type changes, odd names, empty and large files), a replayable op log,
//! and delta debugging that shrinks a failing log to a minimal one.

use super::tree::{set_mtime, Rng};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One change to a tree, with paths relative to its root (any bytes but `/` and NUL in names).
/// Applying an op that no longer fits the tree (a shrunk log) is a no-op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsOp {
    /// Creates or overwrites `path` with `size` pseudo-random bytes.
    Write {
        path: Vec<u8>,
        size: u32,
        seed: u64,
    },
    Append {
        path: Vec<u8>,
        size: u32,
    },
    Truncate {
        path: Vec<u8>,
        len: u32,
    },
    /// Same size, new content, mtime put back (only ctime shows it).
    Rewrite {
        path: Vec<u8>,
        seed: u64,
    },
    Rename {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Unlink {
        path: Vec<u8>,
    },
    RmR {
        path: Vec<u8>,
    },
    MkdirP {
        path: Vec<u8>,
    },
    Symlink {
        path: Vec<u8>,
        target: Vec<u8>,
    },
    Link {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    Chmod {
        path: Vec<u8>,
        mode: u32,
    },
    Touch {
        path: Vec<u8>,
        sec: i64,
        nsec: u32,
    },
    /// Sets (`Some`) or removes (`None`) an extended attribute; POSIX ACLs are the
    /// `system.posix_acl_*` ones (see `acl`).
    Xattr {
        path: Vec<u8>,
        name: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// A round ends: the replicator catches up and the trees are compared.
    Sync,
}

/// A POSIX ACL in its xattr form: owner rw-, user `uid` with `perm`, group r--, mask `perm`|r,
/// other ---.
pub fn acl(uid: u32, perm: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    let mut e = |tag: u16, perm: u16, id: u32| {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    };
    e(0x01, 6, u32::MAX);
    e(0x02, perm, uid);
    e(0x04, 4, u32::MAX);
    e(0x10, perm | 4, u32::MAX);
    e(0x20, 0, u32::MAX);
    v
}

fn show(p: &[u8]) -> String {
    let mut s = String::from("\"");
    for &b in p {
        s.extend(std::ascii::escape_default(b).map(char::from));
    }
    s.push('"');
    s
}

impl fmt::Display for FsOp {
    /// The op as a line of Rust that rebuilds it (`b"…"` paths), for a regression test.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use FsOp::*;
        let b = |p: &[u8]| format!("b{}", show(p));
        match self {
            Write { path, size, seed } => write!(f, "write({}, {size}, {seed})", b(path)),
            Append { path, size } => write!(f, "append({}, {size})", b(path)),
            Truncate { path, len } => write!(f, "truncate({}, {len})", b(path)),
            Rewrite { path, seed } => write!(f, "rewrite({}, {seed})", b(path)),
            Rename { from, to } => write!(f, "rename({}, {})", b(from), b(to)),
            Unlink { path } => write!(f, "unlink({})", b(path)),
            RmR { path } => write!(f, "rm_r({})", b(path)),
            MkdirP { path } => write!(f, "mkdir_p({})", b(path)),
            Symlink { path, target } => write!(f, "symlink({}, {})", b(path), b(target)),
            Link { from, to } => write!(f, "link({}, {})", b(from), b(to)),
            Chmod { path, mode } => write!(f, "chmod({}, 0o{mode:o})", b(path)),
            Touch { path, sec, nsec } => write!(f, "touch({}, {sec}, {nsec})", b(path)),
            Xattr { path, name, value } => match value {
                Some(v) => write!(f, "setxattr({}, {}, {})", b(path), b(name), b(v)),
                None => write!(f, "rmxattr({}, {})", b(path), b(name)),
            },
            Sync => write!(f, "sync()"),
        }
    }
}

/// Constructors with the names `Display` prints, so a shrunk log pastes into a test (not
/// every one has a regression test yet).
#[allow(dead_code)]
pub mod ops {
    use super::FsOp;
    pub fn write(p: &[u8], size: u32, seed: u64) -> FsOp {
        FsOp::Write {
            path: p.into(),
            size,
            seed,
        }
    }
    pub fn append(p: &[u8], size: u32) -> FsOp {
        FsOp::Append {
            path: p.into(),
            size,
        }
    }
    pub fn truncate(p: &[u8], len: u32) -> FsOp {
        FsOp::Truncate {
            path: p.into(),
            len,
        }
    }
    pub fn rewrite(p: &[u8], seed: u64) -> FsOp {
        FsOp::Rewrite {
            path: p.into(),
            seed,
        }
    }
    pub fn rename(from: &[u8], to: &[u8]) -> FsOp {
        FsOp::Rename {
            from: from.into(),
            to: to.into(),
        }
    }
    pub fn unlink(p: &[u8]) -> FsOp {
        FsOp::Unlink { path: p.into() }
    }
    pub fn rm_r(p: &[u8]) -> FsOp {
        FsOp::RmR { path: p.into() }
    }
    pub fn mkdir_p(p: &[u8]) -> FsOp {
        FsOp::MkdirP { path: p.into() }
    }
    pub fn symlink(p: &[u8], target: &[u8]) -> FsOp {
        FsOp::Symlink {
            path: p.into(),
            target: target.into(),
        }
    }
    pub fn link(from: &[u8], to: &[u8]) -> FsOp {
        FsOp::Link {
            from: from.into(),
            to: to.into(),
        }
    }
    pub fn chmod(p: &[u8], mode: u32) -> FsOp {
        FsOp::Chmod {
            path: p.into(),
            mode,
        }
    }
    pub fn touch(p: &[u8], sec: i64, nsec: u32) -> FsOp {
        FsOp::Touch {
            path: p.into(),
            sec,
            nsec,
        }
    }
    pub fn setxattr(p: &[u8], name: &[u8], value: &[u8]) -> FsOp {
        FsOp::Xattr {
            path: p.into(),
            name: name.into(),
            value: Some(value.into()),
        }
    }
    pub fn rmxattr(p: &[u8], name: &[u8]) -> FsOp {
        FsOp::Xattr {
            path: p.into(),
            name: name.into(),
            value: None,
        }
    }
    pub fn sync() -> FsOp {
        FsOp::Sync
    }
}

fn at(root: &Path, p: &[u8]) -> PathBuf {
    root.join(OsStr::from_bytes(p))
}

fn fill(size: u32, seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; size as usize];
    Rng(seed | 1).fill(&mut buf);
    buf
}

impl FsOp {
    /// Applies the op beneath `root`; a failure (the path is gone, a rename over a non-empty
    /// directory) leaves the tree as it was, as it would for any program.
    pub fn apply(&self, root: &Path) {
        use FsOp::*;
        let _ = match self {
            Write { path, size, seed } => fs::write(at(root, path), fill(*size, *seed)),
            Append { path, size } => fs::OpenOptions::new()
                .append(true)
                .open(at(root, path))
                .and_then(|mut f| f.write_all(&fill(*size, *size as u64))),
            Truncate { path, len } => fs::OpenOptions::new()
                .write(true)
                .open(at(root, path))
                .and_then(|f| f.set_len(*len as u64)),
            Rewrite { path, seed } => rewrite_keeping_mtime(&at(root, path), *seed),
            Rename { from, to } => fs::rename(at(root, from), at(root, to)),
            Unlink { path } => fs::remove_file(at(root, path)),
            RmR { path } => fs::remove_dir_all(at(root, path)),
            MkdirP { path } => fs::create_dir_all(at(root, path)),
            Symlink { path, target } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(target), at(root, path))
            }
            Link { from, to } => fs::hard_link(at(root, from), at(root, to)),
            Chmod { path, mode } => {
                let p = at(root, path);
                match fs::symlink_metadata(&p) {
                    Ok(m) if !m.file_type().is_symlink() => {
                        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    }
                    _ => Ok(()),
                }
            }
            Touch { path, sec, nsec } => {
                let p = at(root, path);
                if fs::symlink_metadata(&p).is_ok() {
                    set_mtime(&p, *sec, *nsec);
                }
                Ok(())
            }
            Xattr { path, name, value } => {
                let p = at(root, path);
                let _ = match value {
                    Some(v) => {
                        rustix::fs::lsetxattr(&p, &name[..], v, rustix::fs::XattrFlags::empty())
                    }
                    None => rustix::fs::lremovexattr(&p, &name[..]),
                };
                Ok(())
            }
            Sync => Ok(()),
        };
    }
}

fn rewrite_keeping_mtime(p: &Path, seed: u64) -> std::io::Result<()> {
    let md = fs::symlink_metadata(p)?;
    if !md.is_file() {
        return Ok(());
    }
    use std::os::unix::fs::MetadataExt;
    let (sec, nsec) = (md.mtime(), md.mtime_nsec() as u32);
    let mut f = fs::OpenOptions::new().write(true).open(p)?;
    f.write_all(&fill(md.len() as u32, seed))?;
    drop(f);
    set_mtime(p, sec, nsec);
    Ok(())
}

/// Names chosen from a small pool so that renames land on existing names often; some are not
/// UTF-8, one holds a newline, one is 200 bytes long.
const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"c",
    b"d",
    b"sub",
    b"x y",
    b"\xc3\xa9t\xc3\xa9",
    b"latin1-\xe9",
    b"new\nline",
    b"-dash",
    b".hidden",
    b"F",
];

/// The seeded generator. It looks at the tree to choose existing paths, applies each op as it
/// makes it, and so produces a log that replays to the same tree.
pub struct Gen {
    pub rng: Rng,
    /// Directories renamed recently: targets for renames into renamed directories and hard
    /// links across them.
    recent_dirs: Vec<Vec<u8>>,
    long_name: Vec<u8>,
}

#[derive(Default)]
struct Listing {
    files: Vec<Vec<u8>>,
    dirs: Vec<Vec<u8>>,
    other: Vec<Vec<u8>>,
}

fn list(root: &Path) -> Listing {
    let mut l = Listing::default();
    let mut stack = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<Vec<u8>> = fs::read_dir(at(root, &rel))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().as_bytes().to_vec())
            .filter(|n| !(rel.is_empty() && n == b".georep"))
            .collect();
        names.sort();
        for n in names {
            let mut p = rel.clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(&n);
            match fs::symlink_metadata(at(root, &p)) {
                Ok(m) if m.is_dir() => {
                    l.dirs.push(p.clone());
                    stack.push(p);
                }
                Ok(m) if m.is_file() => l.files.push(p),
                Ok(_) => l.other.push(p),
                Err(_) => {}
            }
        }
    }
    l
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Gen {
    pub fn new(seed: u64) -> Gen {
        let mut long_name = b"long-".to_vec();
        long_name.resize(200, b'n');
        Gen {
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            recent_dirs: Vec::new(),
            long_name,
        }
    }

    fn pick<'a>(&mut self, v: &'a [Vec<u8>]) -> Option<&'a Vec<u8>> {
        (!v.is_empty()).then(|| &v[self.rng.below(v.len() as u64) as usize])
    }

    fn name(&mut self) -> Vec<u8> {
        if self.rng.below(40) == 0 {
            return self.long_name.clone();
        }
        NAMES[self.rng.below(NAMES.len() as u64) as usize].to_vec()
    }

    /// A directory: the root a third of the time, a recently renamed one a sixth.
    fn dir(&mut self, l: &Listing) -> Vec<u8> {
        match self.rng.below(6) {
            0 | 1 => Vec::new(),
            2 if !self.recent_dirs.is_empty() => {
                let d = self.pick(&self.recent_dirs.clone()).unwrap().clone();
                if l.dirs.contains(&d) {
                    d
                } else {
                    Vec::new()
                }
            }
            _ => self.pick(&l.dirs).cloned().unwrap_or_default(),
        }
    }

    fn size(&mut self) -> u32 {
        match self.rng.below(50) {
            0..=9 => 0,
            10 => 1 << 20 | self.rng.below(1 << 20) as u32,
            _ => self.rng.below(5000) as u32,
        }
    }

    /// The initial tree of a sequence: a few directories and files, some linked.
    pub fn initial(&mut self, root: &Path, n: usize) -> Vec<FsOp> {
        let mut out = Vec::new();
        for _ in 0..n {
            let l = list(root);
            let d = self.dir(&l);
            let p = join(&d, &self.name());
            let op = match self.rng.below(4) {
                0 => FsOp::MkdirP { path: p },
                _ => FsOp::Write {
                    path: p,
                    size: self.size(),
                    seed: self.rng.next(),
                },
            };
            op.apply(root);
            out.push(op);
        }
        out
    }

    /// Makes, applies and returns the next op (a burst of several for inode reuse).
    pub fn step(&mut self, root: &Path) -> Vec<FsOp> {
        let l = list(root);
        let mut out = Vec::new();
        let any: Vec<Vec<u8>> = l
            .files
            .iter()
            .chain(&l.other)
            .chain(&l.dirs)
            .cloned()
            .collect();
        let r = self.rng.below(100);
        let op = match r {
            0..=11 => FsOp::Write {
                path: join(&self.dir(&l), &self.name()),
                size: self.size(),
                seed: self.rng.next(),
            },
            12..=15 => match self.pick(&l.files).cloned() {
                Some(p) => FsOp::Append {
                    path: p,
                    size: 1 + self.rng.below(3000) as u32,
                },
                None => return out,
            },
            16..=18 => match self.pick(&l.files).cloned() {
                Some(p) => FsOp::Truncate {
                    path: p,
                    len: self.rng.below(100) as u32,
                },
                None => return out,
            },
            19..=21 => match self.pick(&l.files).cloned() {
                Some(p) => FsOp::Rewrite {
                    path: p,
                    seed: self.rng.next(),
                },
                None => return out,
            },
            22..=31 => match self.pick(&any).cloned() {
                // Any entry renamed, often onto an existing name.
                Some(p) => {
                    let to = join(&self.dir(&l), &self.name());
                    FsOp::Rename { from: p, to }
                }
                None => return out,
            },
            32..=39 => match self.pick(&l.dirs).cloned() {
                // Directory renames, remembered so that later ops go into them.
                Some(p) => {
                    let to = join(&self.dir(&l), &self.name());
                    self.recent_dirs.push(to.clone());
                    if self.recent_dirs.len() > 4 {
                        self.recent_dirs.remove(0);
                    }
                    FsOp::Rename { from: p, to }
                }
                None => return out,
            },
            40..=45 => {
                match self.pick(&l.files.iter().chain(&l.other).cloned().collect::<Vec<_>>()) {
                    Some(p) => FsOp::Unlink { path: p.clone() },
                    None => return out,
                }
            }
            46..=49 => match self.pick(&l.dirs).cloned() {
                Some(p) => FsOp::RmR { path: p },
                None => return out,
            },
            50..=55 => {
                let mut p = join(&self.dir(&l), &self.name());
                if self.rng.below(2) == 0 {
                    p = join(&p, &self.name());
                }
                FsOp::MkdirP { path: p }
            }
            56..=59 => FsOp::Symlink {
                path: join(&self.dir(&l), &self.name()),
                target: [b"target-".as_slice(), &self.name()].concat(),
            },
            60..=67 => match self.pick(&l.files).cloned() {
                // Hard links, often into a recently renamed directory.
                Some(p) => FsOp::Link {
                    from: p,
                    to: join(&self.dir(&l), &self.name()),
                },
                None => return out,
            },
            68..=70 => match self.pick(&any).cloned() {
                Some(p) => FsOp::Chmod {
                    path: p,
                    mode: [0o600, 0o644, 0o755, 0o640, 0o2755, 0o700][self.rng.below(6) as usize],
                },
                None => return out,
            },
            71 | 75 => match self.pick(&any).cloned() {
                // Extended attributes and ACLs: set, changed, removed.
                Some(p) => {
                    let (name, value): (&[u8], Option<Vec<u8>>) = match self.rng.below(6) {
                        0 | 1 => (b"user.a", Some(self.rng.next().to_string().into_bytes())),
                        2 => (b"user.b", Some(vec![0, 255, b'x'])),
                        3 => (b"user.a", None),
                        4 => (
                            b"system.posix_acl_access",
                            Some(acl(1000 + self.rng.below(3) as u32, 7)),
                        ),
                        _ => (b"system.posix_acl_default", Some(acl(1001, 5))),
                    };
                    FsOp::Xattr {
                        path: p,
                        name: name.to_vec(),
                        value,
                    }
                }
                None => return out,
            },
            72..=74 => match self.pick(&any).cloned() {
                Some(p) => FsOp::Touch {
                    path: p,
                    sec: 1_600_000_000 + self.rng.below(1000) as i64,
                    nsec: self.rng.below(1_000_000_000) as u32,
                },
                None => return out,
            },
            76..=83 => {
                // Inode reuse: remove something, then make new entries elsewhere at once, so
                // the freed inode numbers come back under other names.
                if let Some(p) = self.pick(&any).cloned() {
                    let rm = if l.dirs.contains(&p) {
                        FsOp::RmR { path: p }
                    } else {
                        FsOp::Unlink { path: p }
                    };
                    rm.apply(root);
                    out.push(rm);
                }
                let l = list(root);
                for _ in 0..1 + self.rng.below(3) {
                    let p = join(&self.dir(&l), &self.name());
                    let op = if self.rng.below(2) == 0 {
                        FsOp::MkdirP {
                            path: join(&p, &self.name()),
                        }
                    } else {
                        FsOp::Write {
                            path: p,
                            size: self.size(),
                            seed: self.rng.next(),
                        }
                    };
                    op.apply(root);
                    out.push(op);
                }
                return out;
            }
            84..=91 => {
                // Type changes both ways: a file becomes a directory tree, a directory a file.
                match self.pick(&any).cloned() {
                    Some(p) if l.dirs.contains(&p) => {
                        let rm = FsOp::RmR { path: p.clone() };
                        rm.apply(root);
                        out.push(rm);
                        FsOp::Write {
                            path: p,
                            size: self.size(),
                            seed: self.rng.next(),
                        }
                    }
                    Some(p) => {
                        let rm = FsOp::Unlink { path: p.clone() };
                        rm.apply(root);
                        out.push(rm);
                        FsOp::MkdirP {
                            path: join(&p, b"was-a-file"),
                        }
                    }
                    None => return out,
                }
            }
            _ => {
                // A link count going 1 -> 2 -> 1: link, then remove one of the names.
                match self.pick(&l.files).cloned() {
                    Some(p) => {
                        let to = join(&self.dir(&l), &self.name());
                        let ln = FsOp::Link {
                            from: p.clone(),
                            to: to.clone(),
                        };
                        ln.apply(root);
                        out.push(ln);
                        FsOp::Unlink {
                            path: if self.rng.below(2) == 0 { p } else { to },
                        }
                    }
                    None => return out,
                }
            }
        };
        op.apply(root);
        out.push(op);
        out
    }
}

/// Delta debugging (ddmin) over a failing log: the smallest subsequence found, within
/// `budget`, for which `fails` still holds. `Sync` ops are kept where they fall; a final sync
/// is the caller's business.
pub fn shrink(
    log: &[FsOp],
    budget: std::time::Duration,
    mut fails: impl FnMut(&[FsOp]) -> bool,
) -> Vec<FsOp> {
    let deadline = std::time::Instant::now() + budget;
    let mut cur = log.to_vec();
    let mut n = 2usize;
    while cur.len() >= 2 && std::time::Instant::now() < deadline {
        let chunk = cur.len().div_ceil(n);
        let mut reduced = None;
        for i in 0..n {
            if std::time::Instant::now() >= deadline {
                break;
            }
            let (lo, hi) = (i * chunk, ((i + 1) * chunk).min(cur.len()));
            if lo >= hi {
                continue;
            }
            let complement: Vec<FsOp> = cur[..lo].iter().chain(&cur[hi..]).cloned().collect();
            if !complement.is_empty() && fails(&complement) {
                reduced = Some(complement);
                break;
            }
        }
        if let Some(smaller) = reduced {
            cur = smaller;
            n = (n - 1).max(2);
        } else {
            if n >= cur.len() {
                break;
            }
            n = (n * 2).min(cur.len());
        }
    }
    cur
}

/// The log as lines of Rust, ready for a regression test.
pub fn as_code(log: &[FsOp]) -> String {
    log.iter()
        .map(|o| format!("        {o},"))
        .collect::<Vec<_>>()
        .join("\n")
}
