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

#[path = "worker_scrub.rs"]
mod worker_scrub;
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

/// Wakes the idle worker when the journal writer commits: each commit writes the journal's WAL
/// file, whose inotify event ends the wait (no polling while idle).
struct JournalWaker {
    fd: rustix::fd::OwnedFd,
}

impl JournalWaker {
    fn new(dir: &std::path::Path) -> Result<JournalWaker> {
        use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .context("creating an inotify instance for the journal")?;
        inotify::add_watch(&fd, dir, WatchFlags::MODIFY | WatchFlags::CLOSE_WRITE)
            .with_context(|| format!("watching {}", dir.display()))?;
        Ok(JournalWaker { fd })
    }

    /// Waits until the journal changes or `max` passes; whether it changed.
    fn wait(&self, max: Duration) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let ts = Timespec {
            tv_sec: max.as_secs() as i64,
            tv_nsec: max.subsec_nanos() as i64,
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        let woke = matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0);
        // Drain; which file changed does not matter (a spurious wake costs one query).
        let mut buf = [0u8; 4096];
        while matches!(rustix::io::read(&self.fd, &mut buf), Ok(n) if n > 0) {}
        woke
    }
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
                .map_err(client::Error::Permanent)
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

    /// A hybrid crawl the first turn would run at once (the journal position lost, or a gap
    /// after it), for the crawl to be planned while the connection is made. Not on a first
    /// sync or a pending takeover: the slave is read before anything is planned there.
    fn crawl_due(&self, index: &Index, journal: &JournalStore) -> Result<Option<CrawlDue>> {
        if index.is_empty()? || index.takeover_from()?.is_some() {
            return Ok(None);
        }
        // As `serve`'s first turn would: a lost position resumes after the journal's last
        // record (every one older than the crawl, which starts after this), a gap after its own.
        let (gap_seq, why) = match position_lost(index, journal)? {
            Some(why) => (journal.last_seq()?, why),
            None => match journal.last_gap_after(journal_seq(index)?)? {
                Some(gap) => (gap.seq, gap.note.unwrap_or_else(|| "journal gap".into())),
                None => return Ok(None),
            },
        };
        Ok(Some(CrawlDue {
            gap_seq,
            why,
            started: now_ns(),
        }))
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
            let until = Instant::now() + PERMANENT_RETRY;
            while !self.stopping()
                && Instant::now() < until
                && config_mtime(&self.home, &self.session.name) == self.cfg_mtime
            {
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

    /// This brick became Active for its replica set after another one: what the slave has is
    /// not what our index says. Re-read the slave, then a hybrid crawl ships the difference
    /// (files the slave already has with the same size and mtime are not sent again).
    fn take_over(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        journal: &JournalStore,
        previous: &str,
    ) -> Result<()> {
        crate::brickid::check_running(&self.brick, index)?;
        tracing::info!(brick = %self.brick, "taking over from {previous}");
        self.status.crawl = CrawlStatus::Hybrid;
        self.save();
        // Until the crawl below completes, a reconnect must take over again (and the agent
        // will not name the previous brick again: keep its stime too).
        if shipper.previous_active.is_some() {
            index.set_meta("takeover_stime_ns", &shipper.previous_stime_ns.to_string())?;
        }
        index.set_takeover_from(Some(previous))?;
        let prev_stime: i64 = index
            .get_meta("takeover_stime_ns")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let seq = journal.last_seq()?;
        // Files changed since the previous brick's stime (less the clock skew two nodes may
        // have) may be on the slave in an older version of the same size and mtime.
        let listed = shipper.seed_index_from_slave(
            index,
            false,
            Some(prev_stime.saturating_sub(TAKEOVER_CLOCK_SKEW.as_nanos() as i64)),
        )?;
        tracing::info!(brick = %self.brick, entries = listed, "slave listing read");
        self.hybrid(
            shipper,
            index,
            journal,
            seq,
            Some(&format!("taking over from {previous}")),
        )?;
        index.set_takeover_from(None)?;
        self.status.takeovers += 1;
        Ok(())
    }

    /// Nothing is known of the slave (a new session, or a slave recreated): read its tree once,
    /// so the first hybrid crawl keeps what it already holds equal in size, mtime, owner and
    /// mode, and removes extras.
    ///
    /// A slave holding files no brick of the volume sent is somebody's data: without `create …
    /// force` the worker is Faulty, naming it, and touches nothing. On a volume of several
    /// replica sets (distributed) nothing is listed: each brick's files are the others' extras.
    fn first_sync(&mut self, shipper: &mut Shipper, index: &Index, had_slave: bool) -> Result<()> {
        if !self.one_set || !index.is_empty()? {
            return Ok(());
        }
        let vol = self.session.volume(&self.home)?;
        self.status.crawl = CrawlStatus::Hybrid;
        self.save();
        let listed = super::list_for_first_sync(shipper, index, &self.brick)?;
        if listed > 0
            && !had_slave
            && !self.session.adopt_slave
            && !vol.replicated_by(&shipper.replicated_from)
        {
            index.clear()?;
            anyhow::bail!(
                "slave {} holds {listed} entries that no brick of {} sent: georep does not replicate onto it (it would make it equal to the master and remove the rest) until `georep create {} {} force` says to",
                self.session.slave,
                vol.name,
                self.session.master,
                self.session.slave
            );
        }
        tracing::info!(brick = %self.brick, entries = listed, "first sync: slave listing read");
        Ok(())
    }

    fn serve(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        journal: &JournalStore,
    ) -> Result<Exit> {
        let mut last_status = Instant::now();
        let mut last_beacon = Instant::now() - Duration::from_secs(1);
        let waker = JournalWaker::new(&self.dir)?;
        // An incomplete window (see below): the last record it held, and since when it waits.
        let mut incomplete_upto = 0u64;
        // A crawl a plan asked for, owed until it runs: an incomplete window is planned again,
        // and its first plan's request (its rows poisoned already) must not be lost with it
        // (journal seed 490144).
        let mut crawl_owed = false;
        let mut incomplete_since = Instant::now();
        let mut incomplete_first = Instant::now();
        let mut check_position = true;
        let mut idle_wait = IDLE_WAIT;
        let mut brick_checked = Instant::now();
        loop {
            if self.stopping() {
                return Ok(Exit::Stop);
            }
            if self.reload_config() {
                return Ok(Exit::Reconnect);
            }
            if self.excludes.view.gluster && brick_checked.elapsed() >= BRICK_CHECK_EVERY {
                brick_checked = Instant::now();
                if let Err(e) =
                    crate::gluster::check_brick_process(&self.brick.path, &self.vol_name)
                {
                    tracing::warn!(brick = %self.brick, "{e:#}");
                    return Ok(Exit::Reconnect);
                }
            }
            shipper.ignore_deletes = self.opts.ignore_deletes;
            shipper.set_bwlimit(self.opts.bwlimit);
            self.scrub_turn(shipper, index, journal)?;
            if journal.replaced() {
                // `run` opens the new one; its other identity makes the next turn crawl.
                tracing::warn!(
                    brick = %self.brick,
                    "{} was deleted or replaced while the worker read it: reopening it, then a hybrid crawl",
                    self.dir.join("journal.db").display()
                );
                return Ok(Exit::Reconnect);
            }
            // Once a connection: the journal can only go back or be replaced while nothing
            // runs (a power loss, a restored copy), or under a running worker, which sees the
            // file replaced just above and reconnects.
            let check = std::mem::take(&mut check_position);
            if let Some(why) = check
                .then(|| position_lost(index, journal))
                .transpose()?
                .flatten()
            {
                tracing::warn!(brick = %self.brick, "{why}: hybrid crawl");
                let last = journal.last_seq()?;
                self.hybrid(shipper, index, journal, last, Some(&why))?;
                continue;
            }
            let seq = journal_seq(index)?;
            if let Some(gap) = journal.last_gap_after(seq)? {
                self.hybrid(shipper, index, journal, gap.seq, gap.note.as_deref())?;
                continue;
            }
            let records = journal.read_after(seq, WINDOW_RECORDS)?;
            if records.iter().any(|r| r.op == RecOp::Gap) {
                // A GAP appended since the check above (a writer that just restarted): the
                // window must not step over it; the next turn crawls for it.
                continue;
            }
            let now = now_ns();
            let retry = index.due_failures(now)?;
            if records.is_empty() && retry.is_empty() {
                if last_status.elapsed() > Duration::from_secs(1) {
                    self.status.backlog = 0;
                    self.status.crawl = CrawlStatus::Changelog;
                    self.save();
                    last_status = Instant::now();
                }
                // The writer's write to the WAL wakes this wait, but its commit becomes
                // visible only when the WAL index (shared memory, which inotify does not see)
                // is updated a moment later: a wake that found nothing looks again after 1 ms,
                // then 2, 4 … up to the idle wait, instead of sleeping the whole idle wait
                // past a commit (that was the 250 ms p99 of live latency).
                idle_wait = if waker.wait(idle_wait) {
                    Duration::from_millis(1)
                } else {
                    (idle_wait * 2).min(IDLE_WAIT)
                };
                continue;
            }
            idle_wait = IDLE_WAIT;
            let backlog = journal.count_after(seq)?;
            self.status.backlog = backlog;
            self.status.crawl = if backlog as usize > WINDOW_RECORDS {
                CrawlStatus::History
            } else {
                CrawlStatus::Changelog
            };
            let mut window = changes::changes(&records);
            for p in &retry {
                changes::add(&mut window.dirty, p);
            }
            let last = records.last().map(|r| r.seq).unwrap_or(seq);
            // Only a marker's time is a barrier (every change before it is recorded before
            // it); an ordinary record's read time is not: a change made just before it may
            // still be in the inotify queue. So stime moves in marker steps (one a second).
            let max_ts = records
                .iter()
                .filter(|r| r.op == RecOp::Marker)
                .map(|r| r.ts_ns)
                .max();
            // A failed path changed again is shipped again with this window: if it goes
            // through, its failure is over now, not at its next scheduled retry (which may be
            // minutes away and holds LAST_SYNCED back meanwhile).
            let mut settled = retry.clone();
            if self.status.failures > 0 {
                settled.extend(window.touched.iter().chain(&window.removed).cloned());
            }
            let plan = crawl::plan_paths(
                &self.brick.path,
                index,
                &self.excludes,
                window,
                &mut self.slot,
            )?;
            let (entries, data, meta) = (
                plan.stats.new + plan.stats.deleted + plan.stats.renamed,
                plan.stats.files,
                plan.stats.changed,
            );
            if tracing::enabled!(tracing::Level::DEBUG) {
                for r in &records {
                    tracing::debug!(brick = %self.brick, "record {} {} {} {:?}", r.seq, r.op.name(), r.path, r.path2);
                }
                let seqs = (records.first().map(|r| r.seq), last);
                for op in &plan.ops {
                    tracing::debug!(brick = %self.brick, ?seqs, "plan: {:?}", op.op);
                }
            }
            crawl_owed |= plan.needs_crawl;
            let incomplete = plan.incomplete;
            shipper.stime_ns = self.status.stime_ns;
            if !plan.is_empty() {
                self.status.backlog_bytes = plan.ops.iter().map(|p| p.bytes()).sum();
                self.save();
                shipper.failures.clear();
                shipper.ship(plan.ops, index, self.opts.batch_ops, self.opts.batch_bytes)?;
            }
            self.settle_failures(shipper, index, &settled)?;
            if incomplete {
                // Something this window wrote was moved away before it was read, by a change
                // whose record is not in the window yet. What was planned is shipped (planning
                // again costs nothing for it); `journal_seq` and stime stay, and the window is
                // planned again once it grows. A full window, or no new record for a while
                // (every rename is journaled, so that means a lost event), takes a crawl.
                // Markers come every second whatever happens: only a change record is growth
                // (counting markers, a lost event would keep the window waiting for good).
                let last_change = records
                    .iter()
                    .rev()
                    .find(|r| r.op != RecOp::Marker)
                    .map_or(0, |r| r.seq);
                let grew = last_change > incomplete_upto;
                if incomplete_upto == 0 {
                    incomplete_first = Instant::now();
                }
                if incomplete_upto == 0 || grew {
                    incomplete_since = Instant::now();
                }
                incomplete_upto = last_change;
                // A busy tree grows the window all the time: the wait is bounded as a whole too.
                if records.len() < WINDOW_RECORDS
                    && incomplete_since.elapsed() < INCOMPLETE_WAIT
                    && incomplete_first.elapsed() < INCOMPLETE_MAX
                {
                    if !grew {
                        waker.wait(Duration::from_millis(20));
                    }
                    continue;
                }
                incomplete_upto = 0;
                crawl_owed = false; // this crawl covers it
                self.hybrid(
                    shipper,
                    index,
                    journal,
                    last,
                    Some("a change was moved away before the journal said where"),
                )?;
                continue;
            }
            incomplete_upto = 0;
            set_position(index, journal, last)?;
            journal.trim(last)?;
            self.status.journal_seq = last;
            self.status.entries += entries;
            self.status.data += data;
            self.count_bytes(shipper);
            self.status.meta += meta.saturating_sub(data);
            self.advance_stime(index, max_ts)?;
            shipper.stime_ns = self.status.stime_ns;
            if last_beacon.elapsed() >= Duration::from_secs(1) {
                shipper.beacon(index)?;
                last_beacon = Instant::now();
            }
            self.status.backlog = journal.count_after(last)?;
            if self.status.backlog == 0 {
                self.status.backlog_bytes = 0;
            }
            self.save();
            last_status = Instant::now();
            if std::mem::take(&mut crawl_owed) {
                self.hybrid(
                    shipper,
                    index,
                    journal,
                    last,
                    Some(
                        "the journal cannot say where an entry went (another name of a changed hard-linked file, or a name made in a new directory before it was watched)",
                    ),
                )?;
            }
            if records.iter().any(|r| r.op == RecOp::Stop) {
                tracing::info!(brick = %self.brick, "journal writer stopped; waiting for it to come back");
            }
        }
    }

    /// Resolves a gap: crawl until the slave equals the brick, then trust records after it.
    fn hybrid(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        journal: &JournalStore,
        gap_seq: u64,
        why: Option<&str>,
    ) -> Result<()> {
        self.hybrid_from(shipper, index, journal, gap_seq, why, None)
    }

    /// A hybrid crawl, or the rest of one planned while connecting (`planned`: its first plan,
    /// already being shipped, and when that crawl began).
    fn hybrid_from(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        journal: &JournalStore,
        gap_seq: u64,
        why: Option<&str>,
        planned: Option<(crawl::Plan, i64)>,
    ) -> Result<()> {
        // The brick may have gone since the connection was made (unmounted mid-session): a
        // crawl of an empty mountpoint would delete the DR copy.
        crate::brickid::check_running(&self.brick, index)?;
        let when = if planned.is_some() {
            " (planned while connecting)"
        } else {
            ""
        };
        tracing::info!(brick = %self.brick, "hybrid crawl{when}: {}", why.unwrap_or("journal gap"));
        self.status.crawl = CrawlStatus::Hybrid;
        self.status.hybrid_crawls += 1;
        self.save();
        // Everything changed before the crawl starts is seen by it.
        // A plan made while connecting began shipping with the connection: its counts start
        // from the connection's.
        let (first, started, before) = match planned {
            Some((plan, started)) => (Some(plan), started, Default::default()),
            None => (None, now_ns(), shipper.stats.clone()),
        };
        let out = crawl_until_converged(
            shipper,
            index,
            &self.brick,
            &self.excludes,
            &self.opts,
            &mut self.slot,
            first,
        )
        .context("hybrid crawl")?;
        let after = &shipper.stats;
        self.status.data += after.files_sent - before.files_sent;
        self.count_bytes(shipper);
        self.status.entries += (after.deleted - before.deleted) + (after.renamed - before.renamed);
        shipper.failures = out.failures;
        self.settle_failures(shipper, index, &[])?;
        set_position(index, journal, gap_seq)?;
        index.set_meta(super::position::CRAWL_DUE, "")?;
        journal.trim(gap_seq)?;
        self.status.journal_seq = gap_seq;
        self.advance_stime(index, Some(started))?;
        shipper.stime_ns = self.status.stime_ns;
        shipper.beacon(index)?;
        self.save();
        Ok(())
    }

    /// Records this round's failures; clears retried paths that went through.
    fn settle_failures(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        retried: &[crate::protocol::RelPath],
    ) -> Result<()> {
        let now = now_ns();
        self.status.warning = self.connection_warning(shipper);
        let failed: Vec<_> = std::mem::take(&mut shipper.failures);
        let mut still = std::collections::HashSet::new();
        for f in &failed {
            if let Some(p) = &f.rel {
                index.record_failure(p, f.side, f.errno, &f.message, now)?;
                still.insert(p.clone());
            }
        }
        for p in retried {
            if !still.contains(p) {
                index.clear_failure(p)?;
            }
        }
        self.status.failures = index.failure_count()?;
        self.report_full_volume(index)
    }

    /// A DR volume that is full fails every path it is sent: the brick is Faulty, naming the
    /// volume, a path and the fix, while the failed paths are retried; Active again once none
    /// is left failing for lack of space.
    fn report_full_volume(&mut self, index: &Index) -> Result<()> {
        let full = if self.status.failures > 0 {
            index.slave_failure_with(&[libc::ENOSPC, libc::EDQUOT])?
        } else {
            None
        };
        match full {
            Some(ref f) => {
                let msg = format!(
                    "the DR volume {} is out of space (or quota): {} failed: {}; free space there and georep retries it ({} path(s) waiting, `georep status MASTER SLAVE detail` lists them)",
                    self.session.slave, f.path, f.message, self.status.failures
                );
                if self.status.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!(brick = %self.brick, "{msg}");
                    self.status.status = WorkerStatus::Faulty;
                    self.status.last_error = Some(msg);
                    self.save();
                }
            }
            None if self.full_volume => {
                tracing::info!(brick = %self.brick, "the DR volume {} has room again", self.session.slave);
                self.status.status = WorkerStatus::Active;
                self.status.last_error = None;
                self.save();
            }
            None => {}
        }
        self.full_volume = full.is_some();
        Ok(())
    }

    fn advance_stime(&mut self, index: &Index, ts: Option<i64>) -> Result<()> {
        if self.status.failures > 0 {
            return Ok(());
        }
        // A scrub found differences not repaired: LAST_SYNCED stays where that pass started.
        let ts = match (ts, self.status.scrub_hold_ns) {
            (Some(t), Some(h)) => Some(t.min(h)),
            (t, _) => t,
        };
        if let Some(ts) = ts {
            if ts > self.status.stime_ns {
                self.status.stime_ns = ts;
                index.set_meta("stime_ns", &ts.to_string())?;
            }
        }
        self.update_checkpoint();
        Ok(())
    }
}
