//! Disaster recovery: `failover` (DR host: promote the slave volume, fence the old master),
//! `resync --reverse` (recovered master: bring back what changed on the DR side, keeping both
//! versions of a path changed on both sides), `failback` (demote the DR volume again and resume
//! forward replication without a full resync).
//!
//! Invariants:
//! - Nothing written on either side is lost: a path changed on both sides since the last common
//!   point keeps the master's version beside the DR version as
//!   `<name>.georep-conflict-<node>-<UTC time>`.
//! - The last common point is the master's index (what the slave acknowledged); data that reached
//!   the DR side through replication equals its index row and is never sent back.
//! - Reverse connections only read the DR volume; the master is written with the agent's own
//!   confined, atomic apply.

use crate::agent::apply::Applier;
use crate::agent::state::AgentState;
use crate::config::{Home, SyncOptions};
use crate::crawl::entry::{Change, Entry, Kind};
use crate::crawl::index::{Index, Mutation};
use crate::crawl::walk::{self, Excludes};
use crate::protocol::{ListEntry, Message, Op, RelPath};
use crate::session::{self, SessionConfig};
use crate::volume::{Brick, Volume};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn local(ns: i64) -> String {
    crate::options::show_time(ns)
}

/// `georep failover <SLAVEVOL|PATH> [--planned]` on the DR host. Returns the lines it prints.
pub fn failover(home: &Home, vol: &str, planned: bool, timeout: Duration) -> Result<Vec<String>> {
    let root = Volume::slave_root_of(home, vol)?;
    let state_dir = root.join(".georep");
    if !state_dir.join("agent.db").exists() {
        bail!(
            "{} has never received replication (no .georep/agent.db): nothing to fail over to",
            root.display()
        );
    }
    let mut state = AgentState::open(&state_dir)?;
    if state.role()? == "primary" {
        bail!(
            "{} is already primary (failover at {})",
            root.display(),
            state.failover_ns()?.map(local).unwrap_or_default()
        );
    }
    let mut out = Vec::new();
    if planned {
        // Switchover: every master brick must confirm (its stime) that everything written
        // before now is here. The masters must be running; stop writes there first.
        let t = crate::journal::record::now_ns();
        let until = Instant::now() + timeout;
        loop {
            let stimes = state.stimes()?;
            let behind: Vec<_> = stimes.iter().filter(|(_, s)| *s < t).collect();
            if !stimes.is_empty() && behind.is_empty() {
                break;
            }
            if Instant::now() > until && stimes.is_empty() {
                bail!(
                    "planned failover: no master brick reported its sync time here within {} s: is the session running on the master? Otherwise fail over without --planned",
                    timeout.as_secs()
                );
            }
            if Instant::now() > until {
                bail!(
                    "planned failover: {} master brick(s) did not confirm everything up to {} within {} s ({}): is the session running on the master? Retry, or fail over without --planned and accept the RPO",
                    behind.len(),
                    local(t),
                    timeout.as_secs(),
                    behind
                        .iter()
                        .map(|(b, s)| format!("{b} at {}", local(*s)))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        out.push(format!(
            "switchover: every master brick confirmed all changes up to {}",
            local(t)
        ));
    }
    // Fence first: a batch in flight (up to a million ops) would otherwise go on writing into
    // the promoted volume, and be acknowledged. Held until the volume is promoted: no
    // replicating connection gets in meanwhile.
    let (_fence, ended) =
        crate::agent::locks::fence_replication(&state_dir, Duration::from_secs(30))?;
    if ended > 0 {
        out.push(format!(
            "ended {ended} replicating connection(s) still applying here; nothing they had not applied is applied"
        ));
    }
    // Journal the DR volume before it becomes writable: every change made there during the
    // disaster is recorded (failback uses it besides the tree compare).
    let dr_brick = Brick {
        node: crate::config::node_name(),
        path: root.clone(),
    };
    let dr_session = format!("failover_{}", session::slug(&root.display().to_string()));
    let journal_path = session::brick_state_dir(home, &dr_session, &dr_brick).join("journal.db");
    let before = if journal_path.exists() {
        crate::journal::JournalStore::open(&journal_path)?.last_seq()?
    } else {
        0
    };
    crate::brickid::ensure(&root)?;
    crate::daemon::ensure_writer(home, &dr_session, &dr_brick)
        .with_context(|| format!("starting a journal on {}", root.display()))?;
    let start = crate::journal::JournalStore::open(&journal_path)?
        .last_gap_after(before)?
        .map(|g| g.seq)
        .unwrap_or(before);
    state.set_dr_journal(Some((&journal_path, start)))?;
    let epoch = state.set_role("primary")?;
    let at = state.failover_ns()?.unwrap_or_default();
    out.push(format!(
        "{} is now PRIMARY and writable (epoch {epoch}, failover at {}); old masters are fenced",
        root.display(),
        local(at)
    ));
    let stimes = state.stimes()?;
    if stimes.is_empty() {
        out.push("RPO unknown: no master brick reported its LAST_SYNCED here before the failover (what was replicated is here; compare with `georep status` on the master if it is reachable)".into());
    } else {
        out.push("RPO — everything each master brick wrote before LAST_SYNCED is here:".into());
    }
    for (brick, stime) in stimes {
        out.push(format!(
            "  {brick}  LAST_SYNCED {}  ({} s before failover)",
            local(stime),
            ((at - stime).max(0)) / 1_000_000_000
        ));
    }
    out.push(format!(
        "changes made here are journaled in {} until failback",
        journal_path.display()
    ));
    out.push(
        "when the master site is back: `georep resync --reverse <mastervol> <slave>` there, then `georep failback <mastervol> <slave>`".into(),
    );
    Ok(out)
}

/// What one path needs on the master.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub path: String,
    /// pull, delete, conflict, meta
    pub action: &'static str,
    /// For conflicts: where the master's version is kept.
    pub kept_as: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct ReverseReport {
    pub master: String,
    pub slave: String,
    pub dry_run: bool,
    pub pulled_files: u64,
    pub pulled_bytes: u64,
    pub created: u64,
    pub deleted: u64,
    pub conflicts: Vec<Action>,
    pub actions: Vec<Action>,
    pub failures: Vec<String>,
    pub demoted_to_epoch: Option<u64>,
    pub elapsed_ms: u64,
}

/// DR entry `d` equals what the master last shipped (`b`): not changed on the DR side.
fn same_as_shipped(b: &Entry, d: &ListEntry) -> bool {
    let k = Kind::from_u8(d.kind);
    if b.kind != k {
        return false;
    }
    if k == Kind::Dir {
        // A directory's mtime moves with its children, which are compared one by one.
        return (b.mode, b.uid, b.gid) == (d.meta.mode, d.meta.uid, d.meta.gid);
    }
    b.meta() == d.meta
        && b.target == d.target
        && (k != Kind::File || b.size == d.size)
        && match (b.hash, d.hash) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// Local `l` equals DR `d` (nothing to pull).
fn local_equals(l: &Entry, d: &ListEntry) -> bool {
    let k = Kind::from_u8(d.kind);
    l.kind == k
        && (k == Kind::Dir
            || (l.meta() == d.meta
                && l.target == d.target
                && (k != Kind::File || l.size == d.size)))
}

/// The master changed `l` (at `p` under `root`) since it shipped `b`. A file whose only sign
/// of change is its ctime (a racily clean row, a link count change) is hashed against what was
/// shipped.
fn master_changed(b: &Entry, l: &Entry, root: &rustix::fd::OwnedFd, p: &RelPath) -> bool {
    if b.kind != l.kind {
        return true;
    }
    if l.kind == Kind::Dir || matches!(b.change_to(l), Change::None | Change::IndexOnly) {
        return false;
    }
    let same_attrs = l.kind == Kind::File && b.size == l.size && b.meta() == l.meta();
    match b.hash.filter(|_| same_attrs) {
        Some(h) => crate::crawl::hash_beneath(root, p).map_or(true, |now| now != h),
        None => true,
    }
}

fn conflict_name(path: &RelPath, node: &str, at: &str) -> Result<RelPath> {
    let (dir, name) = path.split().context("the root cannot conflict")?;
    let mut n = name.to_vec();
    n.extend_from_slice(format!(".georep-conflict-{node}-{at}").as_bytes());
    let full = if dir.is_empty() {
        n
    } else {
        [dir, b"/", &n].concat()
    };
    Ok(RelPath::new(full)?)
}

/// `georep resync --reverse` (and the pass of `failback`, which also demotes the DR volume).
pub fn resync_reverse(
    home: &Home,
    master: &str,
    slave: &str,
    dry_run: bool,
    checksum: bool,
    demote: bool,
) -> Result<ReverseReport> {
    let started = Instant::now();
    let cfg = SessionConfig::load(home, master, slave)?;
    if crate::daemon::monitor::is_running(home, &cfg.name) {
        bail!(
            "session {master} -> {slave} is running here: `georep stop {master} {slave}` first (its workers are fenced anyway)"
        );
    }
    let vol = cfg.volume(home)?;
    let spec = cfg.slave_spec()?;
    let transport = crate::ship::transport_for(home, &cfg.name, &spec)?;
    let excludes = Excludes::new(&cfg.excludes)?;
    let mut report = ReverseReport {
        master: master.into(),
        slave: slave.into(),
        dry_run,
        ..Default::default()
    };
    let opts = SyncOptions {
        reverse: true,
        ..SyncOptions::default()
    };
    for brick in vol.local_bricks_for("resync --reverse")? {
        let dir = session::brick_state_dir(home, &cfg.name, brick);
        let index = Index::open(&dir.join("index.db"))?;
        if index.get_meta("slave_volume_id")?.is_none() {
            bail!(
                "brick {brick} never replicated to {slave}: there is no common point to compare with (use `georep sync` from the DR side instead)"
            );
        }
        let mut shipper =
            crate::ship::connect(transport.as_ref(), &index, &spec, &cfg.name, brick, &opts)?;
        // The DR journal first: demoting stops it.
        let consumed = index
            .get_meta("dr_journal_seq")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (journaled, complete, last) = shipper.dr_changes(&index, consumed)?;
        if !complete {
            tracing::info!("no complete DR-side journal: comparing trees only");
        }
        if demote && !dry_run {
            // Demote first: a write on the DR site from now on is refused as replication
            // and still caught by the pass below.
            let epoch = shipper.demote(&index)?;
            index.set_meta("epoch", &epoch.to_string())?;
            report.demoted_to_epoch = Some(epoch);
        }
        let dr = shipper.list_slave(&index, checksum)?;
        let failures = report.failures.len();
        reverse_brick(
            brick,
            &index,
            &mut shipper,
            dr,
            &journaled,
            &excludes,
            dry_run,
            &mut report,
        )?;
        if !dry_run && report.failures.len() == failures {
            // The next pass only looks at what the DR journal records after this one.
            index.set_meta("dr_journal_seq", &last.to_string())?;
        }
        shipper.close()?;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn reverse_brick(
    brick: &Brick,
    index: &Index,
    shipper: &mut crate::ship::pipeline::Shipper,
    dr: Vec<ListEntry>,
    journaled: &std::collections::HashSet<RelPath>,
    excludes: &Excludes,
    dry_run: bool,
    report: &mut ReverseReport,
) -> Result<()> {
    let root = brick.open()?;
    let local: BTreeMap<RelPath, Entry> = walk::list_subtree(&root, &RelPath::root(), excludes)?
        .into_iter()
        .collect();
    let base: BTreeMap<RelPath, Entry> = index
        .subtree(&RelPath::root())?
        .into_iter()
        .filter(|(p, _)| !p.as_bytes().starts_with(b".georep"))
        .collect();
    let dr: BTreeMap<RelPath, ListEntry> = dr
        .into_iter()
        .filter(|e| !excludes.is_excluded(&e.path))
        .map(|e| (e.path.clone(), e))
        .collect();
    let paths: BTreeSet<&RelPath> = local.keys().chain(base.keys()).chain(dr.keys()).collect();
    let node = crate::config::node_name();
    let at = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut conflicts = Vec::new(); // (path, copy)
    let mut creates = Vec::new(); // dirs, symlinks (non-file pulls)
    let mut fetch = Vec::new();
    let mut deletes = Vec::new();
    let mut index_only = Vec::new();
    let mut dir_meta = Vec::new();
    for p in paths {
        let (b, l, d) = (base.get(p), local.get(p), dr.get(p));
        // Changed at the DR site: differs from what was shipped, or its journal says so (a
        // rewrite that kept size and mtime is only seen there).
        let dr_changed = match (b, d) {
            (None, None) => false,
            (Some(b), Some(d)) => {
                !same_as_shipped(b, d)
                    || (Kind::from_u8(d.kind) == Kind::File && journaled.contains(p))
            }
            _ => true,
        };
        if !dr_changed {
            continue;
        }
        if let (Some(l), Some(d)) = (l, d) {
            if local_equals(l, d) && !journaled.contains(p) {
                if Kind::from_u8(d.kind) == Kind::Dir {
                    dir_meta.push(p.clone());
                } else {
                    index_only.push(p.clone());
                }
                continue;
            }
        }
        let changed_here = match (b, l) {
            (None, None) => false,
            (Some(b), Some(l)) => master_changed(b, l, &root, p),
            _ => true,
        };
        let both_dirs = l.is_some_and(|l| l.kind == Kind::Dir)
            && d.is_some_and(|d| Kind::from_u8(d.kind) == Kind::Dir);
        if both_dirs {
            dir_meta.push(p.clone());
            continue;
        }
        let l_is_dir = l.is_some_and(|l| l.kind == Kind::Dir);
        if changed_here && l.is_some() && !(l_is_dir && d.is_none()) {
            let copy = conflict_name(p, &node, &at)?;
            conflicts.push((p.clone(), copy));
        } else if d.is_none() && l.is_some() {
            deletes.push(p.clone());
            continue;
        }
        match d {
            Some(d) if Kind::from_u8(d.kind) == Kind::File => fetch.push(p.clone()),
            Some(_) => creates.push(p.clone()),
            None => {}
        }
    }
    for (p, copy) in &conflicts {
        let a = Action {
            path: p.display(),
            action: "conflict",
            kept_as: Some(copy.display()),
        };
        report.conflicts.push(a.clone());
        report.actions.push(a);
    }
    let act = |report: &mut ReverseReport, v: &[RelPath], what: &'static str| {
        for p in v {
            report.actions.push(Action {
                path: p.display(),
                action: what,
                kept_as: None,
            });
        }
    };
    act(report, &creates, "create");
    act(report, &fetch, "pull");
    act(report, &deletes, "delete");
    act(report, &dir_meta, "meta");
    if dry_run {
        report.pulled_files += fetch.len() as u64;
        report.pulled_bytes += fetch.iter().map(|p| dr[p].size).sum::<u64>();
        report.created += creates.len() as u64;
        report.deleted += deletes.len() as u64;
        return Ok(());
    }

    // Apply on the master with the agent's confined, atomic apply.
    let tmp = brick.path.join(".georep/tmp/reverse");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let tmp_fd = crate::fsutil::open_root(&tmp)?;
    crate::fsutil::empty_dir(rustix::fd::AsFd::as_fd(&tmp_fd))?;
    let mut ap = Applier::new(brick.open()?, tmp_fd);
    let mut touched: Vec<RelPath> = Vec::new();
    let fail = |report: &mut ReverseReport, e: String| {
        tracing::warn!("{e}");
        report.failures.push(e);
    };
    for (slot, (p, copy)) in conflicts.iter().enumerate() {
        let r = ap
            .apply(&Op::Stash {
                from: p.clone(),
                slot: slot as u64,
            })
            .and_then(|()| {
                ap.apply(&Op::Unstash {
                    slot: slot as u64,
                    to: copy.clone(),
                })
            });
        if let Err(e) = r {
            fail(report, format!("keeping {p} as {copy}: {}", e.message));
        }
    }
    for p in &creates {
        let d = &dr[p];
        let op = match Kind::from_u8(d.kind) {
            Kind::Dir => {
                // Its mtime is set last: the pulls below change it.
                dir_meta.push(p.clone());
                Op::Mkdir {
                    path: p.clone(),
                    meta: d.meta,
                }
            }
            Kind::Symlink => Op::Symlink {
                path: p.clone(),
                target: d.target.clone().unwrap_or_default(),
                meta: d.meta,
            },
            k => {
                fail(
                    report,
                    format!("{p}: a {k:?} on the DR side is not brought back (copy it by hand)"),
                );
                continue;
            }
        };
        match ap.apply(&op) {
            Ok(()) => {
                report.created += 1;
                touched.push(p.clone());
            }
            Err(e) => fail(report, e.message),
        }
    }
    if !fetch.is_empty() {
        let mut current: Option<(RelPath, u64)> = None;
        let mut skip = false;
        let mut errors = Vec::new();
        shipper.fetch(index, fetch.clone(), |m| {
            match m {
                Message::FileBegin(fb) => {
                    skip = false;
                    current = Some((fb.path.clone(), fb.size));
                    if let Err(e) = ap.begin_file(&fb) {
                        skip = true;
                        errors.push(e.message);
                    }
                }
                Message::Chunk(data) if !skip => match ap.chunk(&data) {
                    Ok(()) => {}
                    Err(Ok(e)) => {
                        skip = true;
                        errors.push(e.message);
                    }
                    Err(Err(msg)) => return Err(anyhow!(msg)),
                },
                Message::FileEnd(fe) => {
                    let (p, size) = current.take().context("FileEnd without FileBegin")?;
                    if !skip {
                        match ap.end_file(&fe.hash, fe.commit) {
                            Ok(true) => {
                                report.pulled_files += 1;
                                report.pulled_bytes += size;
                                touched.push(p);
                            }
                            Ok(false) => errors.push(format!(
                                "{p} changed on the DR side while it was read: run resync --reverse again"
                            )),
                            Err(Ok(e)) => errors.push(e.message),
                            Err(Err(msg)) => return Err(anyhow!(msg)),
                        }
                    }
                }
                Message::Failed(f) => errors.push(f.message),
                _ => {}
            }
            Ok(())
        })?;
        for e in errors {
            fail(report, e);
        }
    }
    // Children first, so a directory deleted on the DR side is empty when its turn comes; one
    // that still holds master-only entries (unshipped writes, conflict copies) stays.
    for p in deletes.iter().rev() {
        let l = &local[p];
        if l.kind == Kind::Dir
            && std::fs::read_dir(brick.path.join(p.as_path()))
                .map(|mut rd| rd.next().is_some())
                .unwrap_or(false)
        {
            continue;
        }
        match ap.apply(&Op::Delete { path: p.clone() }) {
            Ok(()) => {
                report.deleted += 1;
                touched.push(p.clone());
            }
            Err(e) => fail(report, e.message),
        }
    }
    dir_meta.sort();
    for p in dir_meta.iter().rev() {
        let d = &dr[p];
        match ap.apply(&Op::SetAttr {
            path: p.clone(),
            meta: d.meta,
        }) {
            Ok(()) => touched.push(p.clone()),
            Err(e) => fail(report, e.message),
        }
    }
    ap.sync().context("syncing the master brick")?;
    // The index learns that these paths are now the same on both sides, so forward
    // replication does not send them back.
    touched.extend(index_only);
    let mut muts = Vec::new();
    for p in touched {
        match walk::lstat_beneath(&root, &p)? {
            Some(mut e) => {
                e.hash = dr.get(&p).and_then(|d| d.hash);
                muts.push(Mutation::Upsert(p, e));
            }
            None => muts.push(Mutation::Remove(p)),
        }
    }
    index.apply(&muts)?;
    Ok(())
}

/// `georep failback MASTER SLAVE`: demotes the DR volume, brings back its last changes, and
/// starts forward replication again (no full resync: the index is current).
pub fn failback(home: &Home, master: &str, slave: &str) -> Result<ReverseReport> {
    let r = resync_reverse(home, master, slave, false, false, true)?;
    if r.failures.is_empty() {
        crate::daemon::start(home, master, slave, true, false)?;
    }
    Ok(r)
}
