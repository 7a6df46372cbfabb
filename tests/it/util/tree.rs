//! Building trees and comparing them the way an operator would: names, kinds, content, mode,
//! owner, mtime (nanoseconds), symlink targets and hard-link structure.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (xorshift), fast enough for hundreds of MiB.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

pub fn write(p: &Path, data: &[u8]) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(p, data).unwrap();
}

/// Writes `size` pseudo-random bytes without holding them all in memory.
pub fn write_random(p: &Path, size: u64, seed: u64) {
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).unwrap();
    }
    let mut f = fs::File::create(p).unwrap();
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets mtime (and atime) to `sec.nsec` without following symlinks.
pub fn set_mtime(p: &Path, sec: i64, nsec: u32) {
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: ts,
            last_modification: ts,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Snap {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Directories' and files' mtime; symlinks too (georep sets it with utimensat).
    pub mtime: (i64, i64),
    pub content: Option<blake3::Hash>,
    pub target: Option<PathBuf>,
    /// For multiply-linked files: the first path (sorted) sharing the inode.
    pub link_leader: Option<PathBuf>,
    pub rdev: u64,
    /// What could not be read (content, link target, directory listing), with the full path:
    /// never equal to the other tree's, so an unreadable entry fails the comparison instead
    /// of hashing as empty on both sides.
    pub unreadable: Option<String>,
    /// Extended attributes (POSIX ACLs included), sorted, GlusterFS's internal ones left out.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Snap {
    fn unreadable(why: Option<String>) -> Snap {
        Snap {
            kind: "unreadable",
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            content: None,
            target: None,
            link_leader: None,
            rdev: 0,
            unreadable: why,
            xattrs: Vec::new(),
        }
    }
}

/// Every entry beneath `root` (the root itself as ""), skipping `.georep` at the root.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    snap(root, true)
}

/// `snapshot` without file contents: a cheap first comparison.
pub fn snapshot_meta(root: &Path) -> BTreeMap<PathBuf, Snap> {
    snap(root, false)
}

fn snap(root: &Path, hash: bool) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<u64, Vec<PathBuf>> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        // The tree may be changing (a running session): an entry that vanished is skipped,
        // and the caller compares again. One that cannot be looked at is a difference.
        let md = match fs::symlink_metadata(&full) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                let unreadable = Some(format!("stat {}: {e}", full.display()));
                out.insert(rel.clone(), Snap::unreadable(unreadable));
                continue;
            }
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else {
            "special"
        };
        let mut unreadable = None;
        // Vanished since the stat (a changing tree) is skipped, as above; any other error is
        // a difference.
        let mut failed = |what: &str, e: std::io::Error| {
            if e.kind() != std::io::ErrorKind::NotFound {
                unreadable = Some(format!("{what} {}: {e}", full.display()));
            }
        };
        let content = (hash && ft.is_file()).then(|| {
            let mut h = blake3::Hasher::new();
            match fs::File::open(&full) {
                Ok(f) => {
                    if let Err(e) = h.update_reader(f) {
                        failed("reading", e);
                    }
                }
                Err(e) => failed("opening", e),
            }
            h.finalize()
        });
        let target = if ft.is_symlink() {
            fs::read_link(&full)
                .map_err(|e| failed("reading the link", e))
                .ok()
        } else {
            None
        };
        let mut children = Vec::new();
        if ft.is_dir() {
            match fs::read_dir(&full) {
                Ok(rd) => {
                    for e in rd {
                        match e {
                            Ok(e) => children.push(e.file_name()),
                            Err(e) => failed("listing", e),
                        }
                    }
                }
                Err(e) => failed("listing", e),
            }
        }
        if ft.is_file() && md.nlink() > 1 {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        out.insert(
            rel.clone(),
            Snap {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                content,
                target,
                link_leader: None,
                rdev: md.rdev(),
                unreadable,
                xattrs: xattrs(&full),
            },
        );
        for name in children {
            if rel.as_os_str().is_empty() && name == ".georep" {
                continue;
            }
            stack.push(rel.join(name));
        }
    }
    for paths in inodes.values() {
        let leader = paths.iter().min().unwrap().clone();
        for p in paths {
            out.get_mut(p).unwrap().link_leader = Some(leader.clone());
        }
    }
    out
}

/// The extended attributes of `path` itself (a symlink's own), sorted; GlusterFS's internal
/// ones (which describe a brick, not the data) left out. None on a filesystem without them.
pub fn xattrs(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut buf = vec![0u8; 65536];
    let Ok(n) = rustix::fs::llistxattr(path, &mut buf[..]) else {
        return Vec::new();
    };
    let names: Vec<Vec<u8>> = buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .filter(|n| !n.starts_with(b"trusted.glusterfs.") && *n != b"trusted.gfid")
        .map(<[u8]>::to_vec)
        .collect();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .into_iter()
        .filter_map(|name| {
            let mut v = vec![0u8; 65536];
            let n = rustix::fs::lgetxattr(path, &name[..], &mut v[..]).ok()?;
            v.truncate(n);
            Some((name, v))
        })
        .collect();
    out.sort();
    out
}

/// The first differences between two trees, or `None` when they are equal.
pub fn tree_differences(master: &Path, slave: &Path) -> Option<String> {
    let a = snapshot(master);
    let b = snapshot(slave);
    if a == b {
        return None;
    }
    let mut diffs = Vec::new();
    for (p, sa) in &a {
        match b.get(p) {
            None => diffs.push(format!("missing on slave: {p:?} ({})", sa.kind)),
            Some(sb) if sa != sb => {
                diffs.push(format!("differs: {p:?}\n  master {sa:?}\n  slave  {sb:?}"))
            }
            _ => {}
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            diffs.push(format!("extra on slave: {p:?}"));
        }
    }
    let total = diffs.len();
    diffs.truncate(15);
    Some(format!(
        "slave {} differs from master {} in {total} entries:\n{}",
        slave.display(),
        master.display(),
        diffs.join("\n")
    ))
}

/// Panics with the first differences when the trees differ.
pub fn assert_trees_equal(master: &Path, slave: &Path) {
    if let Some(d) = tree_differences(master, slave) {
        panic!("{d}");
    }
}

/// A varied tree: odd names, sizes, links, modes, times, deep paths.
pub fn make_varied_tree(root: &Path, big_file: u64) {
    write(&root.join("plain.txt"), b"hello\n");
    write(&root.join("empty"), b"");
    write(&root.join("with space/and more spaces.txt"), b"spaces");
    write(
        &root.join("unicodé/日本語/ファイル.txt"),
        "unicode ✓".as_bytes(),
    );
    write(&root.join("new\nline"), b"newline in name");
    let raw = std::ffi::OsStr::from_bytes(b"latin1-\xe9t\xe9");
    write(&root.join(raw), b"not utf-8 name");
    write(&root.join("-dash"), b"leading dash");
    let mut deep = root.to_path_buf();
    for i in 0..40 {
        deep.push(format!("level{i:02}"));
    }
    write(&deep.join("bottom.txt"), b"deep");
    write_random(&root.join("big/blob.bin"), big_file, 7);
    for i in 0..50 {
        write(
            &root.join(format!("many/f{i:03}")),
            format!("file {i}").as_bytes(),
        );
    }
    std::os::unix::fs::symlink("plain.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("../plain.txt", root.join("many/up-link")).unwrap();
    fs::hard_link(root.join("plain.txt"), root.join("hard-1")).unwrap();
    fs::hard_link(root.join("plain.txt"), root.join("many/hard-2")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("nested/empty/dirs")).unwrap();
    write(&root.join("modes/exec.sh"), b"#!/bin/sh\n");
    chmod(&root.join("modes/exec.sh"), 0o755);
    write(&root.join("modes/private"), b"secret");
    chmod(&root.join("modes/private"), 0o600);
    write(&root.join("modes/setgid"), b"sg");
    chmod(&root.join("modes/setgid"), 0o2755);
    fs::create_dir_all(root.join("modes/sticky")).unwrap();
    chmod(&root.join("modes/sticky"), 0o1777);
    fs::create_dir_all(root.join("modes/locked")).unwrap();
    write(&root.join("modes/locked/inside"), b"in a 0500 dir");
    chmod(&root.join("modes/locked"), 0o500);
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::Mode::from_raw_mode(0o640),
    )
    .unwrap();
    if super::is_root() {
        write(&root.join("owned"), b"owned by 1234:5678");
        std::os::unix::fs::lchown(root.join("owned"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("rel-link"), Some(4321), Some(8765)).unwrap();
        // Another owner and setuid: the agent must set the mode after the owner (chown clears
        // setuid), even though it creates files with their permission bits already.
        write(&root.join("modes/owned-setuid"), b"#!/bin/sh\n");
        std::os::unix::fs::lchown(root.join("modes/owned-setuid"), Some(1234), Some(5678)).unwrap();
        chmod(&root.join("modes/owned-setuid"), 0o4750);
        // Device nodes: a character device (like /dev/null) and a block device, never opened.
        for (name, kind, major, minor) in [
            ("dev/null-like", rustix::fs::FileType::CharacterDevice, 1, 3),
            ("dev/block-like", rustix::fs::FileType::BlockDevice, 7, 200),
        ] {
            fs::create_dir_all(root.join("dev")).unwrap();
            rustix::fs::mknodat(
                rustix::fs::CWD,
                root.join(name),
                kind,
                rustix::fs::Mode::from_raw_mode(0o640),
                rustix::fs::makedev(major, minor),
            )
            .unwrap();
        }
        std::os::unix::fs::lchown(root.join("dev/block-like"), Some(0), Some(6)).unwrap();
    } else {
        eprintln!("SKIPPED (not root): other owners, setuid and device nodes in the varied tree");
    }
    set_mtime(&root.join("plain.txt"), 981_173_106, 123_456_789);
    set_mtime(&root.join("rel-link"), 1_000_000_000, 5);
    set_mtime(&root.join("many"), 1_500_000_000, 999_999_999);
    set_mtime(&root.join("empty-dir"), 1_234_567_890, 1);
}

/// `cp -a from/. to`: a copy with owners, modes, times and hard links kept (a DR site seeded
/// by disk, a replica brick).
pub fn copy_tree(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .args(["-a", "--"])
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}
