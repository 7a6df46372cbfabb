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

mod reverse;

use crate::agent::state::{AgentState, Role};
use crate::client::{Changes, Client, Mode, Target};
use crate::config::{Home, SyncOptions};
use crate::crawl::index::Index;
use crate::session::{self, SessionConfig};
use crate::volume::Brick;
use crate::walk::Excludes;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

fn local(ns: i64) -> String {
    crate::options::show_time(ns)
}

/// `georep failover <SLAVEVOL|PATH> [--planned]` on the DR host. Returns the lines it prints.
pub fn failover(home: &Home, vol: &str, planned: bool, timeout: Duration) -> Result<Vec<String>> {
    let (root, _aux) = crate::gluster::aux::slave_root(home, vol)?;
    if !root.join(".georep/agent.db").exists() {
        bail!(
            "{} has never received replication (no .georep/agent.db): nothing to fail over to",
            root.display()
        );
    }
    // Through its descriptor, as the agent does: a `.georep` swapped meanwhile is not used.
    let state_fd = crate::agent::state::state_dir_for_operator(&root, &crate::config::node_name())?;
    let state_dir = state_fd.path();
    let mut state = AgentState::open_in(&state_fd)?;
    if state.role()? == Role::Primary {
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
        crate::agent::locks::fence_replication(&state_dir, &root, Duration::from_secs(30))?;
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
    let epoch = state.set_role(Role::Primary)?;
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
    /// pull, create, link (a hard link to another name), delete, conflict, meta, or keep
    /// (deleted at the DR site, kept on the
    /// master because the master wrote in it since it last shipped)
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
    if session::is_running(home, &cfg.name) {
        bail!(
            "session {master} -> {slave} is running here: `georep stop {master} {slave}` first (its workers are fenced anyway)"
        );
    }
    let vol = cfg.volume(home)?;
    let target = Target::of_session(home, &cfg)?;
    let transport = target.transport()?;
    let excludes = Excludes::new(&cfg.excludes)?;
    let mut report = ReverseReport {
        master: master.into(),
        slave: slave.into(),
        dry_run,
        ..Default::default()
    };
    let opts = SyncOptions::default();
    for brick in vol.local_bricks_for("resync --reverse")? {
        let dir = session::brick_state_dir(home, &cfg.name, brick);
        let index = Index::open(&dir.join("index.db"))?;
        // A common point: the DR site acknowledged batches of this brick.
        let shipped = index.slave_volume_id()?.is_some() && index.last_batch()?.is_some();
        let replica = vol
            .replica_sets()
            .any(|set| set.len() > 1 && set.contains(brick));
        if !shipped && !replica {
            bail!(
                "brick {brick} never replicated to {slave}: there is no common point to compare with (use `georep sync` from the DR side instead)"
            );
        }
        // An unmounted brick (an empty mountpoint) is never written into.
        crate::brickid::check_running(brick, &index)?;
        // Nor is a Gluster brick: what comes back must go through the volume (its gfids,
        // its other bricks), never into one brick behind its back.
        if crate::gluster::View::of_brick(&brick.path)?.gluster {
            bail!(
                "brick {brick} is a Gluster brick: the reverse pass writes only through a Gluster volume's mount, never into a brick; bring the DR copy back with `georep sync SLAVE /mnt/<mount of {}>` (docs/glusterfs.md, failback)",
                vol.name
            );
        }
        let epoch = index.epoch()?;
        let (mut client, welcome) = Client::connect_over(
            transport.as_ref(),
            &target,
            brick,
            epoch,
            &opts,
            &Mode::Reverse,
        )?;
        // The index is the common point compared with: never changed by connecting, and only
        // good against the slave volume it was made with.
        if let Some(id) = index.slave_volume_id()? {
            if id != welcome.volume_id {
                bail!(
                    "the slave volume on {} is not the one brick {brick} replicated to (volume id {}, not {id}): it was made again since, so there is no common point to bring changes back from. Copy them back with `georep sync` run from the DR side",
                    welcome.slave_host,
                    welcome.volume_id
                );
            }
        }
        if !shipped {
            rejoin(
                brick,
                &mut client,
                &index,
                welcome.xattrs & crate::xattr::permitted(opts.xattrs),
                &excludes,
                demote && !dry_run,
                &mut report,
            )?;
            client.close()?;
            continue;
        }
        // The DR journal first: demoting stops it.
        let consumed = index.dr_journal_seq()?;
        let Changes {
            paths: journaled,
            complete,
            last,
        } = client.changes(consumed)?;
        if !complete {
            tracing::info!("no complete DR-side journal: comparing trees only");
        }
        if demote && !dry_run {
            // Demote first: a write on the DR site from now on is refused as replication
            // and still caught by the pass below.
            let epoch = client.demote()?;
            index.set_epoch(epoch)?;
            report.demoted_to_epoch = Some(epoch);
        }
        let dr = client.list(checksum, 0)?;
        let failures = report.failures.len();
        reverse::reverse_brick(
            brick,
            &index,
            &mut client,
            welcome.xattrs & crate::xattr::permitted(opts.xattrs),
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
        client.close()?;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// A replica brick that never shipped (it stayed Passive while another brick of its set did):
/// it has nothing of its own to bring back, and no common point to tell what the DR site
/// changed from what it wrote itself, so nothing is written into it. Its replica set's brick
/// that shipped fails back; this one rejoins once it equals the DR copy (the volume heals it
/// from that brick), at the volume's new epoch. Otherwise it is refused, naming what differs:
/// were it let in, a takeover from it later would make the DR copy equal to a stale brick.
fn rejoin(
    brick: &Brick,
    client: &mut Client,
    index: &Index,
    xattrs: u8,
    excludes: &Excludes,
    demote: bool,
    report: &mut ReverseReport,
) -> Result<()> {
    let mut v = crate::verify::VerifyReport::default();
    // Attributes too, as the brick that failed back compared them: a brick whose xattrs or
    // ACLs differ from the DR copy is not equal to it.
    crate::verify::compare_brick(brick, client, xattrs, excludes, false, &mut v)?;
    if v.total_differences() > 0 {
        let first: Vec<String> = v
            .differences
            .iter()
            .take(3)
            .map(|d| format!("{} ({})", d.path, d.what))
            .collect();
        bail!(
            "brick {brick} is a replica that never shipped (it was Passive): nothing of its own comes back, and it rejoins only once it equals the DR copy. It differs in {} path(s), first: {}. Fail back the brick of its replica set that shipped first, let the volume heal this one from it (`gluster volume heal` on a Gluster volume), then run this again",
            v.total_differences(),
            first.join(", ")
        );
    }
    report.actions.push(Action {
        path: brick.to_string(),
        action: "rejoin",
        kept_as: None,
    });
    if demote {
        // The volume is a slave again already (the brick that shipped failed back first):
        // demoting is idempotent and hands this brick the same epoch.
        let epoch = client.demote()?;
        index.set_epoch(epoch)?;
        report.demoted_to_epoch = Some(epoch);
    }
    Ok(())
}

/// `georep failback MASTER SLAVE`: demotes the DR volume, brings back its last changes, and
/// starts forward replication again (no full resync: the index is current).
pub fn failback(home: &Home, master: &str, slave: &str) -> Result<ReverseReport> {
    let r = resync_reverse(home, master, slave, false, false, true)?;
    if r.failures.is_empty() {
        crate::daemon::start(
            home,
            &SessionConfig::load(home, master, slave)?,
            true,
            false,
        )?;
    }
    Ok(r)
}
