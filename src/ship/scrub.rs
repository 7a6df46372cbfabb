//! The scheduled scrub (issue 19): a `verify` pass a running worker makes by itself, so that
//! the status never looks healthy while the DR copy is wrong — whether from a bug or from a
//! write on the DR site behind georep's back.
//!
//! A pass runs on a thread of its own over a read-only (reverse-mode) connection, so shipping
//! goes on meanwhile. Changes in flight are not differences: only what LAST_SYNCED vouches for is
//! judged — an entry whose inode changed (ctime) after the stime the pass started from, or a
//! name gone from a directory changed since, is skipped (the next pass sees it settled). It compares names, kinds, sizes, modes, owners, mtimes, link targets and
//! hard-link groups of every entry, and the contents of a rotating share of the files (`1/N` of
//! them a pass, chosen by a hash of the path and the pass number, so every file is hashed once
//! every N passes). What it finds is repaired by the worker through the normal pipeline, as
//! `sync --rescan-slave` does: the index is rebuilt from the slave, the files found with other
//! contents are marked unknown, and a hybrid crawl ships the difference.

use crate::client::{Client, Mode, Target};
use crate::config::SyncOptions;
use crate::entry::{Entry, Kind};
use crate::protocol::RelPath;
use crate::volume::Brick;
use crate::walk::{self, Excludes};
use anyhow::{Context, Result};

/// Paths named in the status and the logs' summary: the first few.
pub const SHOWN_PATHS: usize = 10;

/// What a pass is asked to do.
#[derive(Clone, Debug)]
pub struct Pass {
    /// Pass number (the rotation of the content share).
    pub number: u64,
    /// Hash the contents of 1 file in `checksum_every` (1: all, 0: none).
    pub checksum_every: u32,
    /// The worker's stime when the pass started: every change made before it is on the slave.
    pub stime_ns: i64,
}

impl Pass {
    /// Whether this pass hashes `path`'s content.
    pub fn hashes(&self, path: &RelPath) -> bool {
        match self.checksum_every {
            0 => false,
            1 => true,
            n => {
                let h = blake3::hash(path.as_bytes());
                let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
                v % n as u64 == self.number % n as u64
            }
        }
    }
}

/// One difference a pass found.
#[derive(Clone, Debug)]
pub struct Found {
    pub path: RelPath,
    pub what: String,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Entries compared (master side).
    pub entries: u64,
    /// Content bytes hashed on both sides.
    pub bytes_hashed: u64,
    pub found: Vec<Found>,
    /// Differences found beyond those kept (`verify::merge::KEPT`), not confirmed or listed.
    pub omitted: u64,
    /// Files whose contents differ with equal attributes: the repair must resend them.
    pub content: Vec<RelPath>,
}

/// Where a pass runs: everything a thread needs, owned.
pub struct Job {
    pub target: Target,
    pub brick: Brick,
    pub excludes: Excludes,
    /// The extended attribute namespaces the session replicates, compared too.
    pub xattrs: u8,
}

/// Compares the brick with the slave once, over a read-only (reverse) connection of its own.
pub fn run(t: &Job, pass: &Pass) -> Result<Outcome> {
    let opts = SyncOptions {
        xattrs: t.xattrs,
        ..SyncOptions::default()
    };
    let (mut client, welcome) = Client::connect(&t.target, &t.brick, 0, &opts, &Mode::Reverse)?;
    // Attributes both sides may read of what the session replicates come with the listing.
    let xattrs = welcome.xattrs & crate::xattr::permitted(t.xattrs);
    let root = t.brick.open()?;
    // Only what the stime vouches for, less the coarse clock the kernel stamps ctime with.
    let vouched_before = pass.stime_ns - CLOCK_MARGIN.as_nanos() as i64;
    let settled = |e: &Entry| {
        e.ctime_sec
            .saturating_mul(1_000_000_000)
            .saturating_add(e.ctime_nsec as i64)
            < vouched_before
    };
    // Metadata of every entry, merged with the listing as it arrives (memory does not grow
    // with the tree); the files of this pass's share that are equal in size and attributes
    // on both sides get their contents compared next.
    let mut wanted: Vec<(RelPath, u64)> = Vec::new();
    let master_now = |p: &RelPath| walk::lstat_beneath(&root, p, t.excludes.view).map_err(|_| ());
    let mut merge = crate::verify::merge::Merge::new(&root, &t.excludes, |path, m, s| {
        if m.kind == Kind::File
            && Kind::from_u8(s.kind) == Kind::File
            && pass.hashes(path)
            && m.size == s.size
            && m.meta()
                == (crate::protocol::Meta {
                    xattrs: None,
                    ..s.meta.clone()
                })
        {
            wanted.push((path.clone(), m.size));
        }
        Ok(None)
    })
    .with_context(|| format!("walking brick {}", t.brick.path.display()))?
    .with_xattrs(xattrs)
    // Only what LAST_SYNCED vouches for is a difference (before the cap on what is kept).
    .keeping(|p| vouched(p, master_now, &settled));
    client.list_each(false, None, xattrs, &mut |listed| {
        listed.into_iter().try_for_each(|s| merge.slave(s))
    })?;
    let d = merge
        .finish()
        .with_context(|| format!("walking brick {}", t.brick.path.display()))?;
    let mut out = Outcome {
        entries: d.master_entries,
        omitted: d.omitted,
        ..Default::default()
    };
    let mut found = d.found;
    let paths: Vec<RelPath> = wanted.iter().map(|(p, _)| p.clone()).collect();
    let slave_hashes = client.hashes(&paths)?;
    drop(paths);
    let mut content = Vec::new();
    for (path, size) in wanted {
        let Some(theirs) = slave_hashes.get(&path) else {
            continue; // gone on the slave since it was listed: in flight
        };
        let ours = match crate::fsutil::hash_beneath(&root, &path) {
            Ok(h) => h,
            // Removed or replaced since the walk: in flight.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).with_context(|| format!("reading {path} on the master")),
        };
        out.bytes_hashed += 2 * size;
        // Changed while it was read (after the walk): in flight, not a difference.
        let now = walk::lstat_beneath(&root, &path, t.excludes.view)
            .ok()
            .flatten();
        if now.is_none_or(|e| !settled(&e)) {
            continue;
        }
        if ours != *theirs {
            found.push((path.clone(), "same size, different content".into()));
            content.push(path);
        }
    }
    // A second look, once what was in flight has landed: the slave shows an op being applied
    // (a directory's mtime before its attributes are set again) that no master ctime tells.
    let confirmed = if found.is_empty() {
        found
    } else {
        std::thread::sleep(SETTLE);
        confirm(
            &mut client,
            xattrs,
            &root,
            found,
            &content,
            &settled,
            t.excludes.view,
        )?
    };
    client.close()?;
    let still: std::collections::HashSet<&RelPath> = confirmed.iter().map(|(p, _)| p).collect();
    out.content = content.into_iter().filter(|p| still.contains(p)).collect();
    out.found = confirmed
        .into_iter()
        .map(|(path, what)| Found { path, what })
        .collect();
    Ok(out)
}

/// How far the kernel's ctime may lag the clock stime is read from (timestamps come from a
/// coarse clock).
const CLOCK_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a pass waits before its second look at what it found.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the master's entry at `path` — or, for a name the master does not have, its nearest
/// directory the master has — is unchanged since the stime (`settled`). `master` gives the
/// master's entry at a path (`Err`: cannot tell, so not vouched for).
fn vouched(
    path: &RelPath,
    master: impl Fn(&RelPath) -> Result<Option<Entry>, ()>,
    settled: &dyn Fn(&Entry) -> bool,
) -> bool {
    for p in path.self_and_ancestors() {
        match master(&p) {
            Ok(Some(e)) => return settled(&e),
            Ok(None) => {}
            Err(()) => return false,
        }
    }
    false
}

/// Keeps the differences that are still there: the master's entry (now) still vouched for and
/// still different from the slave's (now). Hard-link group differences are kept when both
/// names are still there and vouched for.
fn confirm(
    client: &mut Client,
    xattrs: u8,
    root: &rustix::fd::OwnedFd,
    found: Vec<(RelPath, String)>,
    content: &[RelPath],
    settled: &dyn Fn(&Entry) -> bool,
    view: crate::gluster::View,
) -> Result<Vec<(RelPath, String)>> {
    let mut paths: Vec<RelPath> = found.iter().map(|(p, _)| p.clone()).collect();
    paths.sort();
    paths.dedup();
    let slave: std::collections::HashMap<RelPath, crate::protocol::ListEntry> = client
        .list_paths(!content.is_empty(), &paths, xattrs)?
        .into_iter()
        .map(|e| (e.path.clone(), e))
        .collect();
    let mut out = Vec::new();
    for (path, what) in found {
        if !vouched(
            &path,
            |p| walk::lstat_beneath(root, p, view).map_err(|_| ()),
            settled,
        ) {
            continue;
        }
        let master = walk::lstat_beneath(root, &path, view).ok().flatten();
        let still = match (&master, slave.get(&path)) {
            (None, None) => false,
            (Some(_), None) | (None, Some(_)) => true,
            (Some(m), Some(s)) if what.starts_with("hard links differ") => {
                m.kind == Kind::from_u8(s.kind)
            }
            (Some(m), Some(s)) => {
                let h = if content.contains(&path) && m.kind == Kind::File && s.hash.is_some() {
                    crate::fsutil::hash_beneath(root, &path).ok()
                } else {
                    None
                };
                let attrs_differ = s.meta.xattrs.is_some() && {
                    let mut r = crate::xattr::Reader::new(rustix::fd::AsFd::as_fd(root));
                    r.read(&path, xattrs).as_deref() != s.meta.xattrs.as_deref()
                };
                attrs_differ || !crate::verify::compare(m, s, h).is_empty()
            }
        };
        if still {
            out.push((path, what));
        }
    }
    Ok(out)
}

/// The pass running on its thread, if any.
#[derive(Default)]
pub struct Scheduler {
    running: Option<(std::thread::JoinHandle<Result<Outcome>>, Pass, i64)>,
}

impl Scheduler {
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Starts `pass` on a thread of its own.
    pub fn start(&mut self, target: Job, pass: Pass, now_ns: i64) -> Result<()> {
        let p = pass.clone();
        let h = std::thread::Builder::new()
            .name("scrub".into())
            .spawn(move || {
                // Shipping goes first: the pass takes what CPU and disk are left.
                crate::fsutil::lower_priority();
                run(&target, &p)
            })
            .context("starting the scrub thread")?;
        self.running = Some((h, pass, now_ns));
        Ok(())
    }

    /// The pass that ended since the last call: (the pass, when it started, what it found).
    pub fn finished(&mut self) -> Option<(Pass, i64, Result<Outcome>)> {
        if !self.running.as_ref()?.0.is_finished() {
            return None;
        }
        let (h, pass, started) = self.running.take()?;
        let r = h
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the scrub thread panicked")));
        Some((pass, started, r))
    }
}

/// What `status` shows of a pass that completed.
pub fn summary(
    pass: &Pass,
    started_ns: i64,
    finished_ns: i64,
    o: &Outcome,
) -> crate::status::ScrubStatus {
    crate::status::ScrubStatus {
        pass: pass.number,
        started_ns,
        finished_ns,
        entries: o.entries,
        bytes_hashed: o.bytes_hashed,
        checksum: crate::options::show_share(pass.checksum_every),
        differences: o.found.len() as u64 + o.omitted,
        repaired: 0,
        repair_failed: None,
        paths: o
            .found
            .iter()
            .take(SHOWN_PATHS)
            .map(|f| format!("{}: {}", f.path, f.what))
            .collect(),
    }
}
