//! Parallel directory walk of a brick with `statx`, emitting one listing per directory.
//!
//! Invariant: the walk never leaves the brick: directories are opened beneath the brick root
//! without following symlinks, other filesystems are not entered, and `.georep` and excluded
//! names are never listed.

use crate::entry::Entry;
use crate::fsutil;
use crate::gluster::View;
use crate::protocol::RelPath;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{self as rfs, AtFlags};
use std::io;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};

/// Exclude globs: a pattern without `/` matches a name at any depth, one with `/` the whole
/// brick-relative path. They carry the brick's [`View`] too: what a Gluster brick holds that
/// its volume's clients never see is never walked.
#[derive(Clone, Default)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    any: bool,
    pub view: View,
}

impl Excludes {
    pub fn new(patterns: &[String]) -> anyhow::Result<Excludes> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for p in patterns {
            let g = GlobBuilder::new(p.trim_start_matches('/'))
                .literal_separator(true)
                .build()?;
            if p.contains('/') {
                paths.add(g);
            } else {
                names.add(g);
            }
        }
        Ok(Excludes {
            names: names.build()?,
            paths: paths.build()?,
            any: !patterns.is_empty(),
            view: View::default(),
        })
    }

    /// These excludes on the brick at `path`, read through its [`View`].
    pub fn on_brick(mut self, path: &std::path::Path) -> anyhow::Result<Excludes> {
        self.view = View::of_brick(path)?;
        Ok(self)
    }

    pub fn is_excluded(&self, path: &RelPath) -> bool {
        if !self.any {
            return false;
        }
        let name: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(path.name());
        self.names.is_match(name) || self.paths.is_match(path.as_path())
    }
}

/// One directory's entries (name, entry), or why it could not be read.
pub struct Listing {
    pub dir: RelPath,
    pub entries: Result<Vec<(Vec<u8>, Entry)>, io::Error>,
}

struct Queue {
    dirs: Vec<RelPath>,
    active: usize,
}

struct Shared {
    root: OwnedFd,
    dev: (u32, u32),
    excludes: Excludes,
    q: Mutex<Queue>,
    cv: Condvar,
}

/// Entry at `path` beneath the brick root, not following symlinks, as `view` shows it; `None`
/// when it (or a parent) does not exist, is no longer a directory, is a socket, or is not the
/// brick's to ship (a Gluster link-to file).
pub fn lstat_beneath(root: &OwnedFd, path: &RelPath, view: View) -> io::Result<Option<Entry>> {
    let Some((parent, name)) = path.split() else {
        return root_seen(root, view).map(Some);
    };
    let dir = match fsutil::open_dir_beneath(root.as_fd(), parent) {
        Ok(fd) => fd,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let st = match rfs::statx(&dir, name, AtFlags::SYMLINK_NOFOLLOW, Entry::STATX_MASK) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let target = if st.stx_mode as u32 & libc::S_IFMT == libc::S_IFLNK {
        match rfs::readlinkat(&dir, name, Vec::new()) {
            Ok(t) => Some(t.into_bytes()),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    match Entry::from_statx(&st, target) {
        Some(e) => seen_through(view, e, dir.as_fd(), name),
        None => Ok(None),
    }
}

/// `e`, read as `name` in `dir`, as `view` shows it (see [`View::adjust`]).
fn seen_through(
    view: View,
    e: Entry,
    dir: rustix::fd::BorrowedFd<'_>,
    name: &[u8],
) -> io::Result<Option<Entry>> {
    if !view.gluster {
        return Ok(Some(e));
    }
    let path = crate::xattr::proc_at(dir, name);
    match view.adjust(
        e,
        crate::xattr::At::Proc {
            path: &path,
            follow: false,
        },
    ) {
        // Gone between the stat and its attributes (link-to files come and go): absent.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
        r => r,
    }
}

/// The brick root's entry as `view` shows it.
pub fn root_seen(root: &OwnedFd, view: View) -> io::Result<Entry> {
    let (e, _) = root_entry(root)?;
    Ok(view
        .adjust(e.clone(), crate::xattr::At::Fd(root.as_fd()))?
        .unwrap_or(e))
}

/// Statx of the brick root itself.
pub fn root_entry(root: &OwnedFd) -> io::Result<(Entry, (u32, u32))> {
    let st = rfs::statx(root, "", AtFlags::EMPTY_PATH, Entry::STATX_MASK)?;
    let e = Entry::from_statx(&st, None).expect("the root is a directory");
    Ok((e, (st.stx_dev_major, st.stx_dev_minor)))
}

/// Walks the tree beneath `root` with `threads` workers, sending each directory's listing.
/// Returns when every directory was listed (or the receiver went away).
pub fn walk(
    root: OwnedFd,
    excludes: Excludes,
    threads: usize,
    tx: SyncSender<Listing>,
) -> io::Result<()> {
    let (_, dev) = root_entry(&root)?;
    let shared = Arc::new(Shared {
        root,
        dev,
        excludes,
        q: Mutex::new(Queue {
            dirs: vec![RelPath::root()],
            active: 0,
        }),
        cv: Condvar::new(),
    });
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let s = shared.clone();
            let tx = tx.clone();
            std::thread::spawn(move || worker(&s, &tx))
        })
        .collect();
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

fn worker(s: &Shared, tx: &SyncSender<Listing>) {
    loop {
        let dir = {
            let mut q = s.q.lock().unwrap();
            loop {
                if let Some(d) = q.dirs.pop() {
                    q.active += 1;
                    break d;
                }
                if q.active == 0 {
                    s.cv.notify_all();
                    return;
                }
                q = s.cv.wait(q).unwrap();
            }
        };
        let (listing, subdirs) = list_dir(s, &dir);
        let stop = tx.send(listing).is_err();
        let mut q = s.q.lock().unwrap();
        q.dirs.extend(subdirs);
        q.active -= 1;
        if stop {
            q.dirs.clear();
        }
        s.cv.notify_all();
        if stop {
            return;
        }
    }
}

fn list_dir(s: &Shared, dir: &RelPath) -> (Listing, Vec<RelPath>) {
    list_dir_in(&s.root, s.dev, &s.excludes, dir)
}

/// Every entry strictly beneath `dir` (on this filesystem, not excluded), in path order.
pub fn list_subtree(
    root: &OwnedFd,
    dir: &RelPath,
    excludes: &Excludes,
) -> io::Result<Vec<(RelPath, Entry)>> {
    let mut out = Vec::new();
    for_each_beneath(root, dir, excludes, &mut |p, e| {
        out.push((p, e));
        Ok(())
    })?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Entries by path, and the directories that could not be listed.
pub type Checked = (Vec<(RelPath, Entry)>, Vec<RelPath>);

/// `list_subtree`, and the directories (`dir` included) that could not be listed because they
/// were gone or replaced by then: what lies beneath them was not looked at.
pub fn list_subtree_checked(
    root: &OwnedFd,
    dir: &RelPath,
    excludes: &Excludes,
) -> io::Result<Checked> {
    let mut out = Vec::new();
    let mut unlisted = Vec::new();
    walk_beneath(root, dir, excludes, Some(&mut unlisted), &mut |p, e| {
        out.push((p, e));
        Ok(())
    })?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, unlisted))
}

/// Hands every entry strictly beneath `dir` (on this filesystem, not excluded) to `f`, a
/// directory's before its own entries, holding one directory's listing at a time.
pub fn for_each_beneath(
    root: &OwnedFd,
    dir: &RelPath,
    excludes: &Excludes,
    f: &mut dyn FnMut(RelPath, Entry) -> io::Result<()>,
) -> io::Result<()> {
    walk_beneath(root, dir, excludes, None, f)
}

fn walk_beneath(
    root: &OwnedFd,
    dir: &RelPath,
    excludes: &Excludes,
    mut unlisted: Option<&mut Vec<RelPath>>,
    f: &mut dyn FnMut(RelPath, Entry) -> io::Result<()>,
) -> io::Result<()> {
    let (_, dev) = root_entry(root)?;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        let (listing, subdirs) = list_dir_in(root, dev, excludes, &d);
        match listing.entries {
            Ok(entries) => {
                for (name, e) in entries {
                    f(d.join(&name).map_err(io::Error::other)?, e)?;
                }
            }
            // Gone or changed meanwhile: the journal reports what happened to it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                if let Some(u) = unlisted.as_deref_mut() {
                    u.push(d.clone());
                }
            }
            Err(e) => return Err(e),
        }
        stack.extend(subdirs);
    }
    Ok(())
}

/// Tree order: a directory's entries come right after it, and siblings by name in byte order.
/// It is byte order with `/` below every other byte (a name holds neither `/` nor NUL). The
/// order of [`TreeWalk`], and of the agent's listing: two such streams can be merged.
pub fn tree_order(a: &RelPath, b: &RelPath) -> std::cmp::Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.as_bytes()
        .iter()
        .map(key)
        .cmp(b.as_bytes().iter().map(key))
}

/// Every entry beneath the root (on its filesystem, not excluded) in [`tree_order`], pulled one
/// at a time. It holds the listings of the directories on the way down, one per level.
pub struct TreeWalk<'a> {
    root: &'a OwnedFd,
    dev: (u32, u32),
    excludes: &'a Excludes,
    /// Per level: what is left of a directory's listing, in reverse order (popped from the
    /// end); `true` marks a directory to descend into.
    stack: Vec<Vec<(RelPath, Entry, bool)>>,
}

impl<'a> TreeWalk<'a> {
    pub fn new(root: &'a OwnedFd, excludes: &'a Excludes) -> io::Result<TreeWalk<'a>> {
        let (_, dev) = root_entry(root)?;
        let mut w = TreeWalk {
            root,
            dev,
            excludes,
            stack: Vec::new(),
        };
        w.descend(&RelPath::root())?;
        Ok(w)
    }

    fn descend(&mut self, dir: &RelPath) -> io::Result<()> {
        let (listing, subdirs) = list_dir_in(self.root, self.dev, self.excludes, dir);
        let entries = match listing.entries {
            Ok(e) => e,
            // Gone or changed meanwhile: compared as it is now, not as it was.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => Vec::new(),
            Err(e) => return Err(e),
        };
        let subdirs: std::collections::HashSet<RelPath> = subdirs.into_iter().collect();
        let mut level = Vec::with_capacity(entries.len());
        for (name, e) in entries {
            let path = dir.join(&name).map_err(io::Error::other)?;
            let into = subdirs.contains(&path);
            level.push((path, e, into));
        }
        level.sort_by(|a, b| b.0.name().cmp(a.0.name()));
        self.stack.push(level);
        Ok(())
    }
}

impl Iterator for TreeWalk<'_> {
    type Item = io::Result<(RelPath, Entry)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let level = self.stack.last_mut()?;
            let Some((path, e, into)) = level.pop() else {
                self.stack.pop();
                continue;
            };
            if into {
                if let Err(err) = self.descend(&path) {
                    self.stack.clear();
                    return Some(Err(err));
                }
            }
            return Some(Ok((path, e)));
        }
    }
}

fn list_dir_in(
    root: &OwnedFd,
    dev: (u32, u32),
    excludes: &Excludes,
    dir: &RelPath,
) -> (Listing, Vec<RelPath>) {
    let mut subdirs = Vec::new();
    let r = (|| -> io::Result<Vec<(Vec<u8>, Entry)>> {
        let fd = fsutil::open_dir_beneath(root.as_fd(), dir.as_bytes())?;
        let mut out = Vec::new();
        for de in rfs::Dir::read_from(&fd)? {
            let de = de?;
            let name = de.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let path = match dir.join(name) {
                Ok(p) => p,
                // `.georep` at the root, or a name the protocol cannot carry.
                Err(e) => {
                    if !(dir.is_root() && name == crate::protocol::path::STATE_DIR) {
                        tracing::warn!("skipping {}: {e}", String::from_utf8_lossy(name));
                    }
                    continue;
                }
            };
            if excludes.is_excluded(&path) || (dir.is_root() && excludes.view.hides_root_name(name))
            {
                continue;
            }
            let st = match rfs::statx(&fd, name, AtFlags::SYMLINK_NOFOLLOW, Entry::STATX_MASK) {
                Ok(st) => st,
                // Deleted since readdir: the next crawl or the journal sees the delete.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let target = if st.stx_mode as u32 & libc::S_IFMT == libc::S_IFLNK {
                match rfs::readlinkat(&fd, name, Vec::new()) {
                    Ok(t) => Some(t.into_bytes()),
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                None
            };
            let Some(entry) = Entry::from_statx(&st, target) else {
                tracing::warn!("skipping socket {path}: sockets cannot be replicated");
                continue;
            };
            let entry = match seen_through(excludes.view, entry, fd.as_fd(), name) {
                Ok(Some(e)) => e,
                // A link-to file: the name's data and its shipping are another brick's.
                Ok(None) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            if entry.kind == crate::entry::Kind::Dir {
                if (st.stx_dev_major, st.stx_dev_minor) == dev {
                    subdirs.push(path);
                } else {
                    tracing::warn!(
                        "not descending into {path}: another filesystem is mounted there"
                    );
                }
            }
            out.push((name.to_vec(), entry));
        }
        Ok(out)
    })();
    if r.is_err() {
        subdirs.clear();
    }
    (
        Listing {
            dir: dir.clone(),
            entries: r,
        },
        subdirs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk yields every entry once, in tree order, whatever the names' bytes.
    #[test]
    fn the_tree_walk_is_in_tree_order() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "a/b", "a-c/d", "a/b0/x", "b", "a.b", "a/\u{e9}", "z/y/x/w", "A",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if f.ends_with('x') || f.ends_with('w') {
                std::fs::write(&p, b"").unwrap();
            } else {
                std::fs::create_dir_all(&p).unwrap();
            }
        }
        std::os::unix::fs::symlink("a", d.path().join("a0")).unwrap();
        let root = fsutil::open_root(d.path()).unwrap();
        let ex = Excludes::default();
        let walked: Vec<RelPath> = TreeWalk::new(&root, &ex)
            .unwrap()
            .map(|r| r.unwrap().0)
            .collect();
        let mut want: Vec<RelPath> = list_subtree(&root, &RelPath::root(), &ex)
            .unwrap()
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        want.sort_by(tree_order);
        assert_eq!(walked, want);
        let shown: Vec<String> = walked.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown[..5],
            ["A", "a", "a/b", "a/b0", "a/b0/x"].map(String::from),
            "{shown:?}"
        );
    }
}
