//! The journal writer: recursive inotify on a brick, turned into ordered records in journal.db.
//!
//! Invariants:
//! - Coverage starts with a GAP: the record committed once every directory has a watch. Any loss
//!   of coverage afterwards (queue overflow, a watch that could not be added) is a GAP too.
//! - A MARKER with time T is appended only after the marker file written at T came back through
//!   the same inotify queue, so every change made before T is recorded before it.
//! - A directory that appears (created, or moved in from outside the brick) is watched first and
//!   scanned after, so entries made before its watch existed are recorded as well.

use super::record::{now_ns, RecOp, Record};
use super::store::JournalStore;
use crate::protocol::path::STATE_DIR;
use crate::protocol::RelPath;
use anyhow::{bail, Context, Result};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod gfid;
mod watches;
use watches::Scan;

const MASK: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DONT_FOLLOW)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::EXCL_UNLINK);

/// Commit pending records after this long, or at `COMMIT_RECORDS`, whichever comes first.
const COMMIT_AFTER: Duration = Duration::from_millis(2);
const COMMIT_RECORDS: usize = 4096;
/// While directories lack a watch, how often to try again (and record a new GAP if it fails).
const REWATCH_EVERY: Duration = Duration::from_secs(30);
/// How often a marker is written.
const MARKER_EVERY: Duration = Duration::from_secs(1);
const MARKER_NAME: &[u8] = b"marker";

pub struct Writer {
    root: PathBuf,
    /// A Gluster brick's internal names are never watched; its gfid links are no hard links.
    view: crate::gluster::View,
    /// A Gluster brick's gfid buckets, where its writes and attribute changes are seen.
    gfid: gfid::GfidWatches,
    inotify: rustix::fd::OwnedFd,
    /// Watch descriptor → directory (brick-relative).
    wds: HashMap<i32, RelPath>,
    /// Watch descriptor → the inode number it watches. A watch is added by name after the
    /// event that made the directory, when the name may already be another directory's:
    /// a rename checks that the watch it carries is on the directory it moved.
    wd_ino: HashMap<i32, u64>,
    /// Watches whose path a rename set without being able to check it (the directory now at
    /// the new name is another inode): the next `watch_tree` that meets them trusts the tree.
    /// Every other watch keeps its path when a directory is found watched under another name:
    /// it moved there by a rename still queued, and events queued before that rename name it
    /// by its old path.
    doubtful: std::collections::HashSet<i32>,
    /// Directories whose watch could not be added because their name was gone already (the
    /// events are read after the fact): if an ancestor was renamed, its RENAME is further on
    /// in the queue and says where they are now, and they are watched (and scanned) there.
    unwatched: std::collections::HashSet<RelPath>,
    state_wd: i32,
    store: JournalStore,
    pending: Vec<Record>,
    first_pending: Option<Instant>,
    /// A MOVED_FROM waiting for its MOVED_TO: (cookie, path, is_dir).
    moved_from: Option<(u32, RelPath, bool)>,
    marker_sent: Option<i64>,
    last_marker: Instant,
    watch_failures: u64,
    /// Set while some directory has no watch (limit reached): retried every `REWATCH_EVERY`.
    degraded_since: Option<Instant>,
    pub last_seq: u64,
    /// Tests: runs right after a directory's watch is added, before it is listed.
    #[cfg(test)]
    after_watch: Option<AfterWatch>,
}

#[cfg(test)]
type AfterWatch = Box<dyn FnMut(&Path)>;

impl Writer {
    /// Watches `root` recursively and records the starting GAP.
    pub fn start(root: &Path, journal: &Path) -> Result<Writer> {
        let store = JournalStore::open_or_replace(journal)?;
        let inotify = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .context("creating an inotify instance (fs.inotify.max_user_instances reached?)")?;
        // Only on an initialised brick: on an unmounted one (an empty mountpoint) the writer
        // would make `.georep` and journal the wrong directory.
        if crate::brickid::read(root)?.is_none() {
            anyhow::bail!(
                "brick {} has no identity (.georep/brick-id-<node>): is its filesystem mounted? The journal writer starts once it is (`georep create ... force` accepts the brick as it is)",
                root.display()
            );
        }
        let state = root.join(OsStr::from_bytes(STATE_DIR));
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        let state_wd = inotify::add_watch(&inotify, &state, WatchFlags::CLOSE_WRITE)
            .with_context(|| format!("watching {}", state.display()))?;
        let view = crate::gluster::View::of_brick(root)?;
        let mut w = Writer {
            root: root.to_path_buf(),
            view,
            gfid: Default::default(),
            inotify,
            wds: HashMap::new(),
            wd_ino: HashMap::new(),
            doubtful: Default::default(),
            unwatched: Default::default(),
            state_wd,
            store,
            pending: Vec::new(),
            first_pending: None,
            moved_from: None,
            marker_sent: None,
            last_marker: Instant::now(),
            watch_failures: 0,
            degraded_since: None,
            last_seq: 0,
            #[cfg(test)]
            after_watch: None,
        };
        let t0 = Instant::now();
        w.watch_tree(&RelPath::root(), Scan::Watch)?;
        if w.view.gluster {
            w.watch_gfid_buckets()?;
        }
        if w.watch_failures > 0 {
            bail!(
                "could not watch {} directories of {}: raise fs.inotify.max_user_watches (sysctl) and start again",
                w.watch_failures,
                root.display()
            );
        }
        tracing::info!(brick = %root.display(), dirs = w.wds.len(), ms = t0.elapsed().as_millis() as u64, "watching");
        w.push(Record::gap(
            "journal writer started: changes before now are not recorded",
        ));
        w.commit()?;
        Ok(w)
    }

    pub fn watched_dirs(&self) -> usize {
        self.wds.len()
    }

    fn full(&self, rel: &RelPath) -> PathBuf {
        if rel.is_root() {
            self.root.clone()
        } else {
            self.root.join(rel.as_path())
        }
    }

    fn push(&mut self, r: Record) {
        if self.pending.is_empty() {
            self.first_pending = Some(Instant::now());
        }
        self.pending.push(r);
    }

    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.store.replaced() {
            // Records written on would go to a file nobody reads any more.
            anyhow::bail!(
                "journal.db was deleted or replaced under the journal writer: it stops, and the next writer records a gap (hybrid crawl)"
            );
        }
        self.last_seq = self.store.append(&self.pending)?;
        self.pending.clear();
        self.first_pending = None;
        Ok(())
    }

    /// A MOVED_FROM without its MOVED_TO: the entry left the brick.
    fn flush_moved_from(&mut self) {
        if let Some((_, path, is_dir)) = self.moved_from.take() {
            if is_dir {
                self.unwatch_tree(&path);
                self.take_unwatched(&path);
            }
            let op = if is_dir { RecOp::Rmdir } else { RecOp::Unlink };
            self.push(Record::new(op, path));
        }
    }

    fn write_marker(&mut self) {
        let t = now_ns();
        let path = self
            .root
            .join(OsStr::from_bytes(STATE_DIR))
            .join(OsStr::from_bytes(MARKER_NAME));
        if std::fs::write(&path, t.to_string()).is_ok() {
            self.marker_sent = Some(t);
        }
        self.last_marker = Instant::now();
    }

    fn event(&mut self, wd: i32, mask: ReadFlags, cookie: u32, name: Option<&[u8]>) -> Result<()> {
        if mask.contains(ReadFlags::QUEUE_OVERFLOW) {
            tracing::warn!(
                brick = %self.root.display(),
                "inotify queue overflowed: events were lost, the shipper will crawl; raise fs.inotify.max_queued_events"
            );
            self.flush_moved_from();
            self.unwatched.clear();
            self.rebind()?;
            self.push(Record::gap("inotify queue overflow"));
            return Ok(());
        }
        if let Some(b) = self.gfid.get(wd).cloned() {
            if mask.contains(ReadFlags::IGNORED) {
                self.gfid.remove(wd);
            }
            self.gfid_event(b, mask, name);
            return Ok(());
        }
        if wd == self.state_wd {
            if name == Some(MARKER_NAME) {
                if let Some(t) = self.marker_sent.take() {
                    let mut r = Record::new(RecOp::Marker, RelPath::root());
                    r.ts_ns = t;
                    self.push(r);
                }
            }
            return Ok(());
        }
        if mask.contains(ReadFlags::IGNORED) {
            self.wd_ino.remove(&wd);
            self.doubtful.remove(&wd);
            if self.wds.remove(&wd).is_some_and(|p| p.is_root()) {
                // The brick itself was removed or unmounted: nothing left to journal.
                bail!(
                    "brick {} disappeared (deleted or unmounted); the journal writer stops",
                    self.root.display()
                );
            }
            return Ok(());
        }
        let Some(dir) = self.wds.get(&wd).cloned() else {
            return Ok(());
        };
        let Some(name) = name else {
            // An event on the watched directory itself; its parent reports what matters.
            return Ok(());
        };
        let Ok(path) = dir.join(name) else {
            return Ok(()); // our own .georep
        };
        if self.view.hides(&path) {
            return Ok(()); // a Gluster brick's own .glusterfs or .trashcan
        }
        let is_dir = mask.contains(ReadFlags::ISDIR);
        if let Some((c, _, _)) = &self.moved_from {
            if !(mask.contains(ReadFlags::MOVED_TO) && *c == cookie) {
                self.flush_moved_from();
            }
        }
        if mask.contains(ReadFlags::MOVED_FROM) {
            self.moved_from = Some((cookie, path, is_dir));
        } else if mask.contains(ReadFlags::MOVED_TO) {
            match self.moved_from.take() {
                Some((c, from, _)) if c == cookie => {
                    let mut watched = false;
                    if is_dir {
                        // The inode now at the new name: a watch that moves there but is on
                        // another inode was added by name after this directory had already
                        // moved away, to whatever took the name (see `wd_ino`).
                        let now = std::fs::symlink_metadata(self.full(&path))
                            .ok()
                            .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
                        // A watch on the directory that is at its name in the tree right now
                        // was named from a scan made after this event was queued: it stays.
                        // (Here the old name was taken since by another directory, watched
                        // already; moving its watch along with this rename took it away
                        // with this directory's removal later: journal seed 470285.)
                        let stays = self.watches_in_place(&from);
                        for (wd, p) in self.wds.iter_mut() {
                            if p.starts_with(&from) && !stays.contains(wd) {
                                *p = p.rebase(&from, &path);
                                if *p == path {
                                    let checked =
                                        now.is_none_or(|i| self.wd_ino.get(wd) == Some(&i));
                                    watched |= checked;
                                    if checked {
                                        self.doubtful.remove(wd);
                                    } else {
                                        self.doubtful.insert(*wd);
                                    }
                                }
                            }
                        }
                    }
                    let lost = if is_dir {
                        self.take_unwatched(&from)
                    } else {
                        Vec::new()
                    };
                    let mut r = Record::new(RecOp::Rename, from.clone());
                    r.path2 = Some(path.clone());
                    self.push(r);
                    if is_dir && !watched {
                        // Created and renamed before its watch could be added (add_watch of
                        // the old name found nothing, or found the directory that took the
                        // name since): watch it now, and record what it holds.
                        if lost.contains(&from) {
                            // It sat unwatched for a while: a hard link made, written through
                            // and removed there changed a file elsewhere with no event at all
                            // (takeover seed 1400105).
                            self.push(Record::gap(&format!(
                                "directory {from} was renamed to {path} before it could be watched: a change made through a hard link in it reaches no other name's record"
                            )));
                        }
                        self.watch_tree(&path, Scan::Record)?;
                    }
                    // Directories beneath it that appeared and moved with it before their
                    // own watch was added: watch them where they are now.
                    for d in lost {
                        let now = d.rebase(&from, &path);
                        if now != path {
                            self.watch_tree(&now, Scan::Record)?;
                        }
                    }
                }
                other => {
                    self.moved_from = other;
                    // Moved in from outside the brick: a new subtree.
                    if is_dir {
                        self.push(Record::new(RecOp::Mkdir, path.clone()));
                        self.watch_tree(&path, Scan::Record)?;
                    } else {
                        self.push(Record::new(RecOp::Create, path));
                    }
                }
            }
        } else if mask.contains(ReadFlags::CREATE) {
            if is_dir {
                self.push(Record::new(RecOp::Mkdir, path.clone()));
                self.watch_tree(&path, Scan::Record)?;
            } else {
                let op = match std::fs::symlink_metadata(self.full(&path)) {
                    Ok(m) if m.file_type().is_symlink() => RecOp::Symlink,
                    // A directory now: what was created here (not a directory, the event
                    // says) is gone already, as below (journal seed 1200413).
                    Ok(m) if m.is_dir() => RecOp::Unseen,
                    Ok(m) if std::os::unix::fs::MetadataExt::nlink(&m) > self.view.link_floor() => {
                        RecOp::Link
                    }
                    Ok(_) => RecOp::Create,
                    // Gone already (the events are read after the fact): a link or not.
                    Err(_) => RecOp::Unseen,
                };
                self.push(Record::new(op, path));
            }
        } else if mask.contains(ReadFlags::DELETE) {
            if is_dir {
                self.unwatch_tree(&path);
                if self.take_unwatched(&path).contains(&path) {
                    // Made and removed before it could be watched: what was done in it went
                    // unseen, and a hard link made there and written or touched through
                    // changed a file elsewhere with no event at all (journal seed 460291).
                    self.push(Record::gap(&format!(
                        "directory {path} was made and removed before it could be watched: a change made through a hard link in it reaches no other name's record"
                    )));
                }
            }
            self.push(Record::new(
                if is_dir { RecOp::Rmdir } else { RecOp::Unlink },
                path,
            ));
        } else if mask.intersects(ReadFlags::CLOSE_WRITE | ReadFlags::MODIFY) {
            // A file written in many small writes would flood the journal: one DATA per
            // path per commit window says the same.
            let dup = self
                .pending
                .last()
                .is_some_and(|r| r.op == RecOp::Data && r.path == path);
            if !dup {
                self.push(Record::new(RecOp::Data, path));
            }
        } else if mask.contains(ReadFlags::ATTRIB) {
            self.push(Record::new(RecOp::Meta, path));
        }
        Ok(())
    }

    /// Reads and records events until `stop` is set; records STOP on the way out.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 256 << 10];
        while !stop.load(Ordering::Relaxed) {
            let wait = match self.first_pending {
                Some(t) => COMMIT_AFTER.saturating_sub(t.elapsed()),
                None => Duration::from_millis(200),
            }
            .min(MARKER_EVERY.saturating_sub(self.last_marker.elapsed()));
            let ts = Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: wait.subsec_nanos() as i64,
            };
            let mut fds = [PollFd::new(&self.inotify, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            self.drain(&mut buf)?;
            if self.moved_from.is_some() {
                // Its MOVED_TO is queued with it if it exists; give the kernel a moment.
                std::thread::sleep(Duration::from_micros(200));
                self.drain(&mut buf)?;
                self.flush_moved_from();
            }
            let due = self
                .first_pending
                .is_some_and(|t| t.elapsed() >= COMMIT_AFTER);
            if due || self.pending.len() >= COMMIT_RECORDS {
                self.commit()?;
            }
            if self.last_marker.elapsed() >= MARKER_EVERY {
                self.write_marker();
            }
            if self
                .degraded_since
                .is_some_and(|t| t.elapsed() >= REWATCH_EVERY)
            {
                self.rewatch()?;
            }
        }
        self.drain(&mut buf)?;
        self.flush_moved_from();
        self.push(Record::new(RecOp::Stop, RelPath::root()));
        self.commit()
    }

    fn drain(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<()> {
        // Everything queued now (bounded by fs.inotify.max_queued_events), then in order.
        let mut events = Vec::new();
        {
            let mut reader = inotify::Reader::new(&self.inotify, buf);
            loop {
                match reader.next() {
                    Ok(ev) => events.push((
                        ev.wd(),
                        ev.events(),
                        ev.cookie(),
                        ev.file_name().map(|n| n.to_bytes().to_vec()),
                    )),
                    Err(Errno::AGAIN) | Err(Errno::INTR) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for (wd, mask, cookie, name) in events {
            self.event(wd, mask, cookie, name.as_deref())?;
            if self.pending.len() >= COMMIT_RECORDS {
                self.commit()?;
            }
        }
        Ok(())
    }
}
