//! The per-brick worker of a session: reads the journal after the last sequence number the
//! slave has, ships what it names, and falls back to a hybrid crawl whenever the journal has a
//! gap. Crawl states: Hybrid (resolving a gap) → History (a backlog larger than one window) →
//! Changelog (live).
//!
//! Invariants:
//! - `journal_seq` (in the index) moves past a record only after the ops for it were
//!   acknowledged; the journal is trimmed only up to `journal_seq`.
//! - stime only moves forward, and never while a failure is unresolved: LAST_SYNCED is a
//!   guarantee, not a hope. The one step back: a scrub pass that finds differences sets it
//!   back to the stime the pass started from, and holds it there until they are repaired.

use super::changes;

mod scrub;
mod serve;
mod start;
use super::pipeline::Shipper;
use super::position::{journal_seq, position_lost, set_position};
use super::{connect, crawl_until_converged};
use crate::client::{self, Mode, Target};
use crate::config::{Home, SyncOptions};
use crate::crawl::{self, index::Index};
use crate::journal::record::now_ns;
use crate::journal::{JournalStore, RecOp};
use crate::session::{self, SessionConfig};
use crate::status::{BrickStatus, CrawlStatus, WorkerStatus};
use crate::volume::Brick;
use crate::walk::Excludes;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records read per round; a backlog larger than this is a History Crawl.
const WINDOW_RECORDS: usize = 8192;
/// Longest idle wait: retries, status and stop requests are looked at this often.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// How far apart the clocks of two master nodes may be: a takeover resends every file whose
/// ctime is within this of the previous Active brick's stime, or later.
const TAKEOVER_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// How long an incomplete journal window waits for the record that completes it before a
/// crawl settles it.
const INCOMPLETE_WAIT: Duration = Duration::from_secs(1);
/// How long it waits at most, however fast new records come (a busy tree).
const INCOMPLETE_MAX: Duration = Duration::from_secs(3);
/// How often a Passive worker asks whether its replica set needs it.
const PASSIVE_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between attempts after transient errors (a broken link, a busy DR side).
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often a worker tries again after an error retrying cannot help (fenced after a
/// failover, another protocol version, a refused key): an operator acts, and it resumes
/// within this without a restart.
const PERMANENT_RETRY: Duration = Duration::from_secs(60);

fn config_mtime(home: &Home, session: &str) -> Option<std::time::SystemTime> {
    std::fs::metadata(SessionConfig::file(home, session))
        .and_then(|m| m.modified())
        .ok()
}

pub struct Worker {
    home: Home,
    session: SessionConfig,
    brick: Brick,
    opts: SyncOptions,
    /// The brick's replica set and whether the slave tree is shared (`Mode::Replicate`).
    mode: Mode,
    excludes: Excludes,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    status: BrickStatus,
    slot: u64,
    /// Modification time of the session file when `session` was read.
    cfg_mtime: Option<std::time::SystemTime>,
    cfg_checked: Instant,
    /// The brick is Faulty because the DR volume is full (see `report_full_volume`).
    full_volume: bool,
    scrub: super::scrub::Scheduler,
    /// The volume is one replica set (the scrub compares the whole slave with this brick).
    one_set: bool,
    /// The master volume's name (a Gluster brick's process is looked for under it).
    vol_name: String,
    /// The connection's acknowledged content bytes already counted in `status.bytes`.
    bytes_mark: u64,
    /// A stripe's further channels did not join (the DR host refuses more sessions or
    /// processes): one channel until then, with a warning in status.
    one_channel_until: Option<Instant>,
}

/// A hybrid crawl due when the worker connects (`Worker::crawl_due`).
struct CrawlDue {
    /// Where the journal position goes once the crawl is done: its last record then (a lost
    /// position), or the gap's (what follows a gap is replayed, as `serve` does).
    gap_seq: u64,
    why: String,
    /// Before the crawl began (what it saw changed since is shipped again, never missed).
    started: i64,
}

/// How long a worker whose stripe did not join uses one channel before it tries again.
const ONE_CHANNEL_FOR: Duration = Duration::from_secs(600);

/// Why `serve` returned without an error.
/// How often an Active worker of a Gluster brick looks for the brick's process.
const BRICK_CHECK_EVERY: Duration = Duration::from_secs(2);

enum Exit {
    Stop,
    /// Options that shape the connection changed: reconnect with them.
    Reconnect,
}

impl Worker {
    /// `replica_set`: index of the brick's replica set on replica volumes (Active/Passive).
    pub fn new(
        home: &Home,
        session: &SessionConfig,
        brick: &Brick,
        replica_set: Option<usize>,
        stop: Arc<AtomicBool>,
    ) -> Result<Worker> {
        let dir = session::brick_state_dir(home, &session.name, brick);
        let mut status = BrickStatus::load(&dir).unwrap_or_default();
        status.last_error = None;
        status.started_ns = now_ns();
        status.scrub_running = false;
        let opts = crate::options::sync_options(session);
        // The lock key is the same on every node whatever short name each gave the session.
        let vol = session.volume(home)?;
        let generated = session::session_name(&vol, &session.slave_spec()?);
        let mode = Mode::Replicate {
            replica_set: replica_set.map(|n| format!("{generated}#{n}")),
            shared_tree: !vol.is_one_set(),
        };
        Ok(Worker {
            mode,
            home: home.clone(),
            session: session.clone(),
            brick: brick.clone(),
            excludes: Excludes::new(&opts.excludes)?.on_brick(&brick.path)?,
            opts,
            dir,
            stop,
            status,
            slot: 0,
            cfg_mtime: config_mtime(home, &session.name),
            cfg_checked: Instant::now(),
            full_volume: false,
            scrub: Default::default(),
            one_set: vol.is_one_set(),
            vol_name: vol.name.clone(),
            bytes_mark: 0,
            one_channel_until: None,
        })
    }

    /// Re-reads the session file when it changed (at most once a second). Returns true when
    /// the connection must be re-made for the new options to apply.
    fn reload_config(&mut self) -> bool {
        if self.cfg_checked.elapsed() < Duration::from_secs(1) {
            return false;
        }
        self.cfg_checked = Instant::now();
        let mtime = config_mtime(&self.home, &self.session.name);
        if mtime == self.cfg_mtime {
            return false;
        }
        self.cfg_mtime = mtime;
        let cfg = match SessionConfig::load_by_name(&self.home, &self.session.name) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("re-reading the session options: {e:#}");
                return false;
            }
        };
        let opts = crate::options::sync_options(&cfg);
        crate::logging::set_level(&crate::options::log_level(&cfg));
        match Excludes::new(&opts.excludes).and_then(|e| e.on_brick(&self.brick.path)) {
            Ok(ex) => self.excludes = ex,
            Err(e) => tracing::warn!("exclude: {e:#}"),
        }
        let reconnect = (
            opts.compression,
            opts.window,
            opts.bwlimit,
            opts.trash_retention_days,
            opts.takeover_timeout,
        ) != (
            self.opts.compression,
            self.opts.window,
            self.opts.bwlimit,
            self.opts.trash_retention_days,
            self.opts.takeover_timeout,
        ) || (cfg.ssh_port, &cfg.remote_georep)
            != (self.session.ssh_port, &self.session.remote_georep);
        tracing::info!(brick = %self.brick, reconnect, "session options changed");
        self.opts = opts;
        self.session = cfg;
        self.update_checkpoint();
        reconnect
    }

    /// CHECKPOINT COMPLETED: stime reached the checkpoint (recorded once, with the time).
    fn update_checkpoint(&mut self) {
        let cp = self.session.options.checkpoint_ns;
        if self.status.checkpoint_ns != cp {
            self.status.checkpoint_ns = cp;
            self.status.checkpoint_completed_ns = None;
        }
        if let Some(cp) = cp {
            if self.status.stime_ns >= cp && self.status.checkpoint_completed_ns.is_none() {
                self.status.checkpoint_completed_ns = Some(now_ns());
                tracing::info!(brick = %self.brick, "checkpoint {} completed", crate::options::show_time(cp));
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Adds the content bytes acknowledged since the last count to `status.bytes`.
    fn count_bytes(&mut self, shipper: &Shipper) {
        let acked = shipper.stats.bytes_sent;
        self.status.bytes += acked.saturating_sub(self.bytes_mark);
        self.bytes_mark = acked;
    }

    fn save(&mut self) {
        if let Err(e) = self.status.save(&self.dir) {
            tracing::warn!("writing status in {}: {e:#}", self.dir.display());
        }
    }

    /// Sleeps up to `d`, waking early when asked to stop.
    fn nap(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(d));
        }
    }

    /// Runs until asked to stop: connects, ships, reconnects with back-off after errors; on
    /// replica volumes waits as Passive while another brick of its set is Active.
    pub fn run(mut self) -> Result<()> {
        let index = Index::open(&self.dir.join("index.db"))?;
        let mut journal = JournalStore::open(&self.dir.join("journal.db"))?;
        if self.status.stime_ns == 0 {
            // A session deleted without reset-sync-time keeps its index and stime.
            self.status.stime_ns = index
                .get_meta("stime_ns")?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
        self.update_checkpoint();
        let mut backoff = Duration::from_millis(200);
        while !self.stopping() {
            self.reload_config();
            if journal.replaced() {
                // Made again by the journal writer (never here): its identity differs from
                // what the index recorded, so `serve` crawls for it.
                match JournalStore::open_existing(&self.dir.join("journal.db"))? {
                    Some(j) => journal = j,
                    None => {
                        self.nap(Duration::from_millis(200));
                        continue;
                    }
                }
            }
            // A Faulty or Passive worker stays so while it retries: no flapping.
            if !matches!(
                self.status.status,
                WorkerStatus::Passive | WorkerStatus::Faulty
            ) {
                self.status.status = WorkerStatus::Initializing;
                self.save();
            }
            if let Err(e) = crate::brickid::check_running(&self.brick, &index).and_then(|()| {
                // Looked at again once the brick is there: a brick mounted after the worker
                // started is read as what it is.
                self.excludes.view = crate::gluster::View::of_brick(&self.brick.path)?;
                if self.excludes.view.gluster {
                    crate::gluster::check_brick_process(&self.brick.path, &self.vol_name)?;
                }
                Ok(())
            }) {
                self.faulty(&e);
                self.nap(Duration::from_secs(2));
                continue;
            }
            // This session replicated to a slave here before (a slave found recreated, or with
            // its agent.db lost, is still the session's own to make equal).
            let had_slave = index.slave_volume_id()?.is_some();
            let opts = self.connection_options();
            // A crawl due at once (the journal position is lost or a gap waits: a first start,
            // a writer restarted) is planned while the connection is made, as `sync` does.
            // Not while Passive or Faulty: each retry would walk the brick again for nothing.
            let pre = if matches!(
                self.status.status,
                WorkerStatus::Passive | WorkerStatus::Faulty
            ) {
                None
            } else {
                self.crawl_due(&index, &journal).unwrap_or_else(|e| {
                    tracing::warn!(brick = %self.brick, "{e:#}: the crawl waits for the connection");
                    None
                })
            };
            let index_path = self.dir.join("index.db");
            let connected = Target::of_session(&self.home, &self.session)
                .and_then(|t| Ok((t.transport()?, t)))
                .map_err(client::Error::from_link)
                .and_then(|(transport, target)| {
                    if pre.is_none() {
                        return connect(
                            transport.as_ref(),
                            &target,
                            &index,
                            &self.brick,
                            &opts,
                            &self.mode,
                        )
                        .map(|s| (s, None));
                    }
                    let c = super::Connecting {
                        transport: transport.as_ref(),
                        target: &target,
                        index: &index,
                        brick: &self.brick,
                        opts: &opts,
                        mode: &self.mode,
                    };
                    // A takeover re-reads the slave first: nothing planned before holds then.
                    let mut proceed = |sh: &mut Shipper| Ok(sh.previous_active.is_none());
                    c.while_crawling(&index_path, &self.excludes, &mut self.slot, &mut proceed)
                });
            let (mut shipper, first) = match connected {
                Ok(x) => x,
                Err(client::Error::Passive { active }) => {
                    if self.status.status != WorkerStatus::Passive {
                        tracing::info!(brick = %self.brick, "passive: {active} is active for this replica set");
                    }
                    self.status.status = WorkerStatus::Passive;
                    self.status.crawl = CrawlStatus::None;
                    self.status.last_error = None;
                    self.save();
                    self.nap(PASSIVE_RETRY);
                    continue;
                }
                Err(e) => {
                    let transient = e.is_transient();
                    let e = anyhow::Error::new(e);
                    self.stripe_failed(&e);
                    self.faulty(&e);
                    backoff = self.retry_after(transient, backoff);
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            self.bytes_mark = 0;
            self.status.status = WorkerStatus::Active;
            self.status.last_error = None;
            self.status.warning = self.connection_warning(&shipper);
            self.save();
            let pending = index.takeover_from()?;
            let result = match shipper.previous_active.clone().or(pending) {
                Some(prev) => self.take_over(&mut shipper, &index, &journal, &prev),
                None => self
                    .first_sync(&mut shipper, &index, had_slave)
                    .and_then(|()| {
                        match (pre, first) {
                            (Some(due), Some(plan)) => self.hybrid_from(
                                &mut shipper,
                                &index,
                                &journal,
                                due.gap_seq,
                                Some(&due.why),
                                Some((plan, due.started)),
                            ),
                            // Not planned (a recreated slave, a takeover): the first turn of
                            // `serve` finds the crawl due again.
                            _ => Ok(()),
                        }
                    }),
            }
            .and_then(|()| self.serve(&mut shipper, &index, &journal));
            match result {
                Ok(Exit::Stop) => {
                    // Asked to stop: everything sent was acknowledged.
                    let r = shipper.close();
                    self.status.status = WorkerStatus::Stopped;
                    self.status.crawl = CrawlStatus::None;
                    self.save();
                    index.set_meta("clean_stop_ns", &now_ns().to_string())?;
                    return r.map(|_| ());
                }
                Ok(Exit::Reconnect) => {
                    shipper.close()?;
                }
                Err(e) => {
                    drop(shipper);
                    self.stripe_failed(&e);
                    self.status.disconnects += 1;
                    self.status.last_disconnect =
                        Some(format!("{}: {e:#}", crate::options::show_time(now_ns())));
                    self.faulty(&e);
                    backoff = self.retry_after(client::is_transient(&e), backoff);
                }
            }
        }
        self.status.status = WorkerStatus::Stopped;
        self.status.crawl = CrawlStatus::None;
        self.save();
        Ok(())
    }

    /// The options of the next connection: one channel while a stripe is known not to join;
    /// further channels opened only once the agent offers them while Passive (a Passive brick
    /// retries every few seconds, and would start agents for nothing each time).
    fn connection_options(&mut self) -> SyncOptions {
        let mut opts = self.opts.clone();
        if self.one_channel_until.is_some_and(|t| Instant::now() >= t) {
            self.one_channel_until = None;
        }
        if self.one_channel_until.is_some() {
            opts.channels = Some(1);
        }
        opts.channels_early = self.status.status != WorkerStatus::Passive;
        opts
    }

    /// What status warns of while this connection lasts (never a fault): attributes that are
    /// not replicated, a stripe that fell back to one channel.
    fn connection_warning(&self, shipper: &Shipper) -> Option<String> {
        let one = self.one_channel_until.map(|_| {
            "one channel: the stripe's further channels did not join last time (sshd's MaxSessions or the DR user's process limit?); striping is tried again within 10 minutes".to_string()
        });
        match (shipper.xattr_warning.clone(), one) {
            (Some(x), Some(o)) => Some(format!("{x}; {o}")),
            (x, o) => x.or(o),
        }
    }

    /// After a failed connection: a stripe whose channels did not join means one channel for
    /// a while (retrying with the same number would fail the same way).
    fn stripe_failed(&mut self, e: &anyhow::Error) {
        if format!("{e:#}").contains(crate::protocol::DID_NOT_JOIN) {
            tracing::warn!(brick = %self.brick, "the stripe's channels did not join: one channel for {} s", ONE_CHANNEL_FOR.as_secs());
            self.one_channel_until = Some(Instant::now() + ONE_CHANNEL_FOR);
        }
    }

    /// Waits before the next attempt: `backoff` after a transient error (returns the next,
    /// doubled up to `MAX_BACKOFF`), `PERMANENT_RETRY` after one that needs an operator (the
    /// error, with its fix, stays in status meanwhile).
    fn retry_after(&mut self, transient: bool, backoff: Duration) -> Duration {
        if transient {
            self.nap(backoff);
            (backoff * 2).min(MAX_BACKOFF)
        } else {
            tracing::warn!(brick = %self.brick, "retrying cannot help until this is fixed: trying again in {} s, or once the session's options change", PERMANENT_RETRY.as_secs());
            // The options are re-read as everywhere else (`reload_config`): the next attempt
            // runs with what the operator changed, never with the session it failed with.
            let (until, seen) = (Instant::now() + PERMANENT_RETRY, self.cfg_mtime);
            while !self.stopping() && Instant::now() < until {
                self.reload_config();
                if self.cfg_mtime != seen {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            backoff
        }
    }

    fn faulty(&mut self, e: &anyhow::Error) {
        tracing::warn!(brick = %self.brick, "worker error: {e:#}");
        self.status.status = WorkerStatus::Faulty;
        self.status.last_error = Some(format!("{e:#}"));
        self.save();
    }
}
