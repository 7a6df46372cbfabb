//! A Gluster brick's writes and attribute changes, seen where glusterfsd makes them.
//!
//! glusterfsd opens, writes and sets attributes of a file through its gfid hard link,
//! `.glusterfs/<g0g1>/<g2g3>/<gfid>`. inotify reports such a change to the directory of the
//! name it was made through: `.glusterfs/xx/yy`, never the file's directory in the volume. (Its
//! creates, renames and deletes go through the parent's gfid symlink, which resolves to the
//! real directory: those reach the ordinary watches.) So on a Gluster brick the writer watches
//! the gfid buckets too, for writes and attribute changes only, and records them under the
//! file's names, which Gluster keeps in `trusted.gfid2path.*` as `<parent gfid>/<name>`.
//!
//! A change whose names cannot be found (`storage.gfid2path` off) is a GAP: the crawl finds it.

use super::{Record, Writer};
use crate::journal::record::RecOp;
use crate::protocol::RelPath;
use anyhow::Result;
use rustix::fs::inotify::{self, ReadFlags, WatchFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

const ROOT_GFID: &[u8] = b"00000000-0000-0000-0000-000000000001";
const GFID2PATH: &[u8] = b"trusted.gfid2path.";

/// A gfid bucket level: `.glusterfs` itself, `.glusterfs/xx`, or `.glusterfs/xx/yy`.
#[derive(Clone, Debug)]
pub(super) enum Bucket {
    Top,
    One(PathBuf),
    Two(PathBuf),
}

#[derive(Default)]
pub(super) struct GfidWatches {
    wds: HashMap<i32, Bucket>,
}

impl GfidWatches {
    pub fn get(&self, wd: i32) -> Option<&Bucket> {
        self.wds.get(&wd)
    }

    pub fn len(&self) -> usize {
        self.wds.len()
    }

    pub fn remove(&mut self, wd: i32) {
        self.wds.remove(&wd);
    }
}

fn is_bucket_name(name: &[u8]) -> bool {
    name.len() == 2 && name.iter().all(u8::is_ascii_hexdigit)
}

impl Writer {
    fn gfid_dir(&self) -> PathBuf {
        self.root.join(".glusterfs")
    }

    /// Watches every gfid bucket (at start, and again after a queue overflow).
    pub(super) fn watch_gfid_buckets(&mut self) -> Result<()> {
        for wd in std::mem::take(&mut self.gfid.wds).into_keys() {
            let _ = inotify::remove_watch(&self.inotify, wd);
        }
        let top = self.gfid_dir();
        if !self.add_gfid_watch(&top, Bucket::Top) {
            return Ok(());
        }
        for one in buckets(&top) {
            if self.add_gfid_watch(&one, Bucket::One(one.clone())) {
                for two in buckets(&one) {
                    self.add_gfid_watch(&two, Bucket::Two(two.clone()));
                }
            }
        }
        tracing::debug!(brick = %self.root.display(), watches = self.gfid.len(), "gfid buckets watched");
        Ok(())
    }

    fn add_gfid_watch(&mut self, dir: &Path, b: Bucket) -> bool {
        let mask = match b {
            Bucket::Top | Bucket::One(_) => WatchFlags::CREATE | WatchFlags::ONLYDIR,
            Bucket::Two(_) => {
                WatchFlags::MODIFY
                    | WatchFlags::CLOSE_WRITE
                    | WatchFlags::ATTRIB
                    | WatchFlags::ONLYDIR
                    | WatchFlags::DONT_FOLLOW
            }
        };
        match inotify::add_watch(&self.inotify, dir, mask) {
            Ok(wd) => {
                self.gfid.wds.insert(wd, b);
                true
            }
            Err(e) => {
                if e != rustix::io::Errno::NOENT {
                    self.watch_failures += 1;
                    self.push(Record::gap(&format!(
                        "no inotify watch for the gfid bucket {}: {e}",
                        dir.display()
                    )));
                }
                false
            }
        }
    }

    /// An event of a gfid bucket watch.
    pub(super) fn gfid_event(&mut self, b: Bucket, mask: ReadFlags, name: Option<&[u8]>) {
        if mask.contains(ReadFlags::IGNORED) {
            return;
        }
        let Some(name) = name else { return };
        match b {
            Bucket::Top | Bucket::One(_) => {
                if !(mask.contains(ReadFlags::ISDIR) && is_bucket_name(name)) {
                    return;
                }
                let parent = match &b {
                    Bucket::One(p) => p.clone(),
                    _ => self.gfid_dir(),
                };
                let dir = parent.join(OsStr::from_bytes(name));
                let added = match b {
                    Bucket::Top => self.add_gfid_watch(&dir, Bucket::One(dir.clone())),
                    _ => self.add_gfid_watch(&dir, Bucket::Two(dir.clone())),
                };
                // Made before its watch: what was written in the meantime is recorded too.
                if added {
                    let inner = if matches!(b, Bucket::Top) {
                        buckets(&dir)
                            .into_iter()
                            .filter(|d| self.add_gfid_watch(d, Bucket::Two(d.clone())))
                            .collect()
                    } else {
                        vec![dir]
                    };
                    for d in inner {
                        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                            self.record_gfid(&d, e.file_name().as_bytes(), RecOp::Data);
                        }
                    }
                }
            }
            Bucket::Two(dir) => {
                let op = if mask.intersects(ReadFlags::MODIFY | ReadFlags::CLOSE_WRITE) {
                    RecOp::Data
                } else {
                    RecOp::Meta
                };
                self.record_gfid(&dir, name, op);
            }
        }
    }

    /// Records `op` for every name of the file whose gfid link is `dir/name`.
    fn record_gfid(&mut self, dir: &Path, name: &[u8], op: RecOp) {
        if name.len() != 36 {
            return; // not a gfid (a temporary name of Gluster's)
        }
        let handle = dir.join(OsStr::from_bytes(name));
        match names_of(&self.root, &handle) {
            Some(paths) => {
                for p in paths {
                    if self.view.hides(&p) {
                        continue;
                    }
                    let dup = self
                        .pending
                        .last()
                        .is_some_and(|r| r.op == op && r.path == p);
                    if !dup {
                        self.push(Record::new(op, p));
                    }
                }
            }
            // Removed meanwhile (its names' deletes are recorded), or a directory's symlink.
            None if std::fs::symlink_metadata(&handle).is_err() => {}
            None => {
                if std::fs::symlink_metadata(&handle).is_ok_and(|m| m.is_file()) {
                    self.push(Record::gap(&format!(
                        "a file was changed through its gfid link {} and its names are unknown (storage.gfid2path off?)",
                        handle.display()
                    )));
                }
            }
        }
    }
}

fn buckets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| is_bucket_name(e.file_name().as_bytes()))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The brick-relative names of the file whose gfid link is `handle`, from its
/// `trusted.gfid2path.*` attributes; `None` when it has none.
fn names_of(root: &Path, handle: &Path) -> Option<Vec<RelPath>> {
    let mut buf = vec![0u8; 64 << 10];
    let n = rustix::fs::llistxattr(handle, &mut buf[..]).ok()?;
    let names: Vec<Vec<u8>> = buf[..n]
        .split(|&b| b == 0)
        .filter(|a| a.starts_with(GFID2PATH))
        .map(<[u8]>::to_vec)
        .collect();
    if names.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for a in names {
        let mut v = vec![0u8; 4096 + 64];
        let Ok(n) = rustix::fs::lgetxattr(handle, &a[..], &mut v[..]) else {
            continue;
        };
        let v = &v[..n];
        let v = v.strip_suffix(b"\0").unwrap_or(v);
        let Some(slash) = v.iter().position(|&b| b == b'/') else {
            continue;
        };
        let (parent, base) = (&v[..slash], &v[slash + 1..]);
        if let Some(p) = dir_path(root, parent, 0).and_then(|d| d.join(base).ok()) {
            out.push(p);
        }
    }
    Some(out)
}

/// The brick-relative path of the directory with gfid `gfid`, from the chain of gfid symlinks
/// (`.glusterfs/xx/yy/<gfid>` → `../../xx/yy/<parent gfid>/<name>`).
fn dir_path(root: &Path, gfid: &[u8], depth: usize) -> Option<RelPath> {
    if gfid == ROOT_GFID {
        return Some(RelPath::root());
    }
    if gfid.len() != 36 || depth > 4096 {
        return None;
    }
    let link = root
        .join(".glusterfs")
        .join(OsStr::from_bytes(&gfid[0..2]))
        .join(OsStr::from_bytes(&gfid[2..4]))
        .join(OsStr::from_bytes(gfid));
    let target = std::fs::read_link(link).ok()?;
    let t = target.as_os_str().as_bytes();
    // ../../xx/yy/<parent gfid>/<name>
    let rest = t.strip_prefix(b"../../")?;
    let mut parts = rest.splitn(4, |&b| b == b'/');
    let (_, _, parent, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    dir_path(root, parent, depth + 1)?.join(name).ok()
}
