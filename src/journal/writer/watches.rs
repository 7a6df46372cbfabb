//! The journal writer's watches: one per directory of the brick, added through an fd of the
//! directory (and the directory listed through that same fd) and named by the path the events
//! say; renamed, re-pointed and rebuilt as the tree moves.

use super::*;
use rustix::fd::OwnedFd;

/// What `watch_tree` does with the directories it watches.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// Watch only (the tree is journaled already, or a GAP covers it).
    Watch,
    /// Watch and record every entry found (a directory that appeared).
    Record,
}

impl Writer {
    /// Adds watches on `dir` and every directory beneath it; with `Scan::Record`, also records
    /// every entry found (a directory that appeared: its contents may predate the watch).
    pub(super) fn watch_tree(&mut self, dir: &RelPath, scan: Scan) -> Result<()> {
        let record = scan == Scan::Record;
        // Beneath a directory found watched under the name it had before a queued rename.
        let mut keep_names_below: Option<RelPath> = None;
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            let full = self.full(&d);
            let listing = match self.add_watch(&full) {
                Ok((wd, ino, fd)) => {
                    #[cfg(test)]
                    if let Some(hook) = self.after_watch.as_mut() {
                        hook(&full);
                    }
                    // One watch per inode: a directory watched already under another name
                    // moved here by a rename (the events are read after the fact).
                    let moved = self
                        .wds
                        .get(&wd)
                        .filter(|known| **known != d && !self.doubtful.contains(&wd))
                        .cloned();
                    let keeps_name =
                        d == *dir || keep_names_below.as_ref().is_some_and(|k| d.starts_with(k));
                    match moved {
                        Some(_) if keeps_name && record => {
                            // Its parent was watched when that happened (it reported `dir`),
                            // so the rename is queued in full: events queued before it name
                            // the directory by its old path, and the rename moves it, and
                            // what it holds (journaled already), here.
                            continue;
                        }
                        Some(_) if keeps_name => {
                            // The same, met while watching what has no watch yet (after the
                            // watch limit was raised): its watch and those beneath it keep
                            // their names for the queued rename, and the search goes on
                            // beneath it for directories still without a watch.
                            keep_names_below.get_or_insert_with(|| d.clone());
                        }
                        Some(known) => {
                            // Beneath `dir` the parent was not watched yet: that rename is
                            // only a MOVED_FROM, a removal. The directory is watched (and
                            // recorded) here as new, and the watches beneath it come along:
                            // left under the old name, the removal would take them away while
                            // their directories are still in the brick (and drop their
                            // events).
                            for p in self.wds.values_mut() {
                                if p.starts_with(&known) {
                                    *p = p.rebase(&known, &d);
                                }
                            }
                            self.wds.insert(wd, d.clone());
                        }
                        None => {
                            self.wds.insert(wd, d.clone());
                        }
                    }
                    self.wd_ino.insert(wd, ino);
                    self.doubtful.remove(&wd);
                    fd
                }
                // Gone, renamed or replaced already: a DELETE says so, or the MOVED_TO of its
                // new name (or of an ancestor's, see `unwatched`) adds the watch there.
                Err(Errno::NOENT | Errno::NOTDIR) => {
                    self.unwatched.insert(d);
                    continue;
                }
                Err(Errno::NOSPC) => {
                    self.watch_failures += 1;
                    self.degraded_since = Some(Instant::now());
                    tracing::warn!(
                        "inotify watch limit reached at {}: raise fs.inotify.max_user_watches; changes there are covered by crawls only",
                        full.display()
                    );
                    self.push(Record::gap(&format!(
                        "no inotify watch for {d} (fs.inotify.max_user_watches)"
                    )));
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("watching {}", full.display())),
            };
            // Listed through the fd the watch was added by, never by name again: renamed in
            // between, the directory is still the one watched (journal seed 900361: listed by
            // name, it was gone, nothing in it was recorded and its subdirectories were never
            // watched; the RENAME found its watch in place and scanned nothing).
            let entries = match list(&listing, self.view.link_floor()) {
                Ok(entries) => entries,
                Err(e) => {
                    // Watched but not read: what it holds is unknown to the journal.
                    self.push(Record::gap(&format!("listing {d} to watch it: {e}")));
                    continue;
                }
            };
            if record && entries.is_empty() && changed_since_birth(&listing) {
                // Empty, but changed after it was made: something was made in it and removed
                // or moved out before the watch. A hard link written through there changed a
                // file elsewhere with no event at all (takeover seed 1400105): only a crawl
                // finds it.
                self.push(Record::gap(&format!(
                    "directory {d} lost entries before it could be watched: a change made through a hard link in it reaches no other name's record"
                )));
            }
            for (name, kind, linked) in entries {
                let Ok(path) = d.join(&name) else {
                    continue; // .georep at the root, or a name the protocol cannot carry
                };
                if d.is_root() && self.view.hides_root_name(&name) {
                    continue; // a Gluster brick's own .glusterfs or .trashcan
                }
                if kind == rustix::fs::FileType::Directory {
                    stack.push(path.clone());
                }
                if record {
                    // A file with other names may have been written through this one before
                    // the watch existed: that changed its other names too, which only a LINK
                    // and a DATA record lead the shipper to.
                    let op = match kind {
                        rustix::fs::FileType::Directory => RecOp::Mkdir,
                        rustix::fs::FileType::Symlink => RecOp::Symlink,
                        _ if linked => RecOp::Link,
                        _ => RecOp::Create,
                    };
                    self.push(Record::new(op, path.clone()));
                    if linked {
                        self.push(Record::new(RecOp::Data, path));
                    }
                }
            }
        }
        Ok(())
    }

    /// Watches the directory at `full` (never through a symlink); returns the watch, the
    /// inode it is on, and the open directory to list. The directory is opened first and
    /// watched through its fd, so the inode is exactly the watched one even if the name changes
    /// meanwhile. (inotify needs read permission on it anyway.)
    pub(super) fn add_watch(&self, full: &Path) -> Result<(i32, u64, OwnedFd), Errno> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            full,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| if e == Errno::LOOP { Errno::NOTDIR } else { e })?;
        let ino = rustix::fs::fstat(&fd)?.st_ino;
        let via = format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&fd));
        // The magic link is followed on purpose (the fd was opened without following).
        let wd = match inotify::add_watch(
            &self.inotify,
            via.as_str(),
            MASK.difference(WatchFlags::DONT_FOLLOW),
        ) {
            // No /proc: by name, as close to the open as can be.
            Err(Errno::NOENT) if !Path::new("/proc/self/fd").exists() => {
                inotify::add_watch(&self.inotify, full, MASK)?
            }
            r => r?,
        };
        Ok((wd, ino, fd))
    }

    /// Tries again to watch every directory that has no watch. Changes made there meanwhile
    /// were not journaled: a failure records a GAP again (via `watch_tree`), so the worker
    /// keeps crawling until the limit is raised; success ends the degraded state.
    pub(super) fn rewatch(&mut self) -> Result<()> {
        self.degraded_since = None;
        let before = self.watch_failures;
        let watched: std::collections::HashSet<RelPath> = self.wds.values().cloned().collect();
        let mut stack = vec![RelPath::root()];
        let mut missing = Vec::new();
        while let Some(d) = stack.pop() {
            if !watched.contains(&d) {
                missing.push(d.clone());
                continue; // watch_tree covers everything beneath it
            }
            for e in std::fs::read_dir(self.full(&d))
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(p) = d.join(e.file_name().as_bytes()) {
                        stack.push(p);
                    }
                }
            }
        }
        for d in missing {
            self.watch_tree(&d, Scan::Watch)?;
        }
        if self.watch_failures == before {
            tracing::info!(brick = %self.root.display(), "every directory is watched again");
            self.push(Record::gap(
                "directories were unwatched until now (watch limit)",
            ));
        }
        Ok(())
    }

    /// After lost events (a queue overflow): the renames that kept each watch's path are gone,
    /// so every watch is named again from the tree as it is now, and watches on directories
    /// no longer in the brick (moved out, their MOVED_FROM lost) are removed. The GAP recorded
    /// after this makes the shipper crawl from here on.
    pub(super) fn rebind(&mut self) -> Result<()> {
        let old = std::mem::take(&mut self.wds);
        self.doubtful.clear();
        self.watch_tree(&RelPath::root(), Scan::Watch)?;
        if self.view.gluster {
            self.watch_gfid_buckets()?;
        }
        for wd in old.keys().filter(|wd| !self.wds.contains_key(wd)) {
            let _ = inotify::remove_watch(&self.inotify, *wd);
            self.wd_ino.remove(wd);
        }
        Ok(())
    }

    pub(super) fn unwatch_tree(&mut self, dir: &RelPath) {
        let gone: Vec<i32> = self
            .wds
            .iter()
            .filter(|(_, p)| p.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            let _ = inotify::remove_watch(&self.inotify, wd);
            self.wds.remove(&wd);
            self.wd_ino.remove(&wd);
            self.doubtful.remove(&wd);
        }
    }

    /// The watches at or beneath `dir` whose directory is at the watch's name right now (same
    /// inode); none when nothing is at `dir` (the usual case: it moved away).
    pub(super) fn watches_in_place(&self, dir: &RelPath) -> std::collections::HashSet<i32> {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(self.full(dir)).is_err() {
            return Default::default();
        }
        self.wds
            .iter()
            .filter(|(wd, p)| {
                p.starts_with(dir)
                    && std::fs::symlink_metadata(self.full(p))
                        .is_ok_and(|m| self.wd_ino.get(*wd) == Some(&m.ino()))
            })
            .map(|(wd, _)| *wd)
            .collect()
    }

    /// Removes `dir` and what lies beneath it from `unwatched`; returns them.
    pub(super) fn take_unwatched(&mut self, dir: &RelPath) -> Vec<RelPath> {
        // The set holds the few directories awaiting a rename: a scan is cheap.
        let gone: Vec<RelPath> = self
            .unwatched
            .iter()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for p in &gone {
            self.unwatched.remove(p);
        }
        gone
    }
}

/// The entries of the open directory `fd`: name, type, and for a regular file whether it has
/// other names. Types the directory does not give are read with `fstatat` (never following).
/// Whether the directory's contents changed after it was made (its mtime is not its birth
/// time); `false` where the filesystem does not report a birth time.
fn changed_since_birth(fd: &OwnedFd) -> bool {
    use rustix::fs::{AtFlags, StatxFlags};
    rustix::fs::statx(
        fd,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::MTIME | StatxFlags::BTIME,
    )
    .is_ok_and(|st| {
        st.stx_mask & StatxFlags::BTIME.bits() != 0
            && (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec)
                != (st.stx_btime.tv_sec, st.stx_btime.tv_nsec)
    })
}

/// `fd`'s entries: name, kind, and whether a regular file has more than `link_floor` links
/// (another name in the volume; a Gluster brick counts its gfid link in the floor).
fn list(
    fd: &OwnedFd,
    link_floor: u64,
) -> rustix::io::Result<Vec<(Vec<u8>, rustix::fs::FileType, bool)>> {
    use rustix::fs::{AtFlags, FileType};
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    let mut out = Vec::new();
    while let Some(e) = dir.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let stat = || rustix::fs::statat(fd, e.file_name(), AtFlags::SYMLINK_NOFOLLOW);
        let (kind, linked) = match e.file_type() {
            FileType::RegularFile => (
                FileType::RegularFile,
                stat().is_ok_and(|st| st.st_nlink > link_floor),
            ),
            FileType::Unknown => match stat() {
                Ok(st) => {
                    let kind = FileType::from_raw_mode(st.st_mode);
                    (
                        kind,
                        kind == FileType::RegularFile && st.st_nlink > link_floor,
                    )
                }
                Err(_) => continue, // gone since
            },
            k => (k, false),
        };
        out.push((name.to_vec(), kind, linked));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_lost_an_entry_has_changed_since_its_birth() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let open = || {
            rustix::fs::open(
                &d,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )
            .unwrap()
        };
        assert!(!changed_since_birth(&open()));
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(d.join("l"), b"x").unwrap();
        std::fs::remove_file(d.join("l")).unwrap();
        assert!(changed_since_birth(&open()));
    }
    use std::mem::MaybeUninit;

    /// Journal seed 900361: a new directory renamed between the moment its watch is added and
    /// the moment it is listed. Listed by name, it was gone: nothing in it was recorded and
    /// its subdirectory was never watched, so a symlink made there later was never journaled.
    /// Listed through the watched fd, its contents are recorded under the name the events
    /// still use, its subdirectory is watched where the rename took it, and what is made there
    /// afterwards is journaled.
    #[test]
    fn a_directory_renamed_between_its_watch_and_its_listing_is_listed_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("brick");
        std::fs::create_dir_all(&root).unwrap();
        crate::brickid::ensure(&root).unwrap();
        let mut w = Writer::start(&root, &dir.path().join("journal.db")).unwrap();
        let before = w.store.last_seq().unwrap();
        let r = root.clone();
        let mut once = true;
        w.after_watch = Some(Box::new(move |full: &Path| {
            if once && full.ends_with("n") {
                once = false;
                std::fs::rename(r.join("n"), r.join("m")).unwrap();
                std::fs::create_dir(r.join("m/xy")).unwrap();
            }
        }));
        std::fs::create_dir_all(root.join("n/was-a-file")).unwrap();
        std::fs::write(root.join("n/was-a-file/b"), b"b").unwrap();
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 << 10];
        for _ in 0..3 {
            w.drain(&mut buf).unwrap();
        }
        std::os::unix::fs::symlink("t", root.join("m/was-a-file/s")).unwrap();
        for _ in 0..3 {
            w.drain(&mut buf).unwrap();
        }
        w.commit().unwrap();
        let recs: Vec<String> = w
            .store
            .read_after(before, 1000)
            .unwrap()
            .iter()
            .map(|r| format!("{:?} {}", r.op, r.path))
            .collect();
        let has = |op: &str, path: &str| recs.iter().any(|r| *r == format!("{op} {path}"));
        assert!(
            has("Mkdir", "n/was-a-file") || has("Mkdir", "m/was-a-file"),
            "{recs:?}"
        );
        assert!(
            has("Create", "n/was-a-file/b") || has("Create", "m/was-a-file/b"),
            "{recs:?}"
        );
        assert!(has("Symlink", "m/was-a-file/s"), "{recs:?}");
    }
}
