//! The per-brick shipper: crawl → plan → batches → agent, and `georep sync --once`.
//!
//! Invariant: every pass ships a plan computed against the index, and the index only learns
//! what the slave acknowledged; a pass that saw failures or files changing under it is followed
//! by another pass, so `--once` ends with the slave equal to the brick as crawled, or says
//! exactly which paths are not.

pub mod batch;
pub mod changes;
pub mod pipeline;
mod position;
pub mod scrub;
mod sigs;
mod throttle;
pub mod worker;

use crate::client::{self, Client, Mode, Target};
use crate::config::{Home, SyncOptions};
use crate::crawl::{self, index::Index};
use crate::session::{self, SlaveSpec};
use crate::transport::Transport;
use crate::volume::{Brick, Volume};
use crate::walk::Excludes;
use anyhow::{anyhow, bail, Context, Result};
use pipeline::{Failure, Shipper};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// What `sync --once` did, printed as one line or as JSON.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub master: String,
    pub slave: String,
    pub bricks: usize,
    pub passes: u32,
    pub scanned: u64,
    pub files_sent: u64,
    pub bytes_sent: u64,
    pub wire_bytes: u64,
    /// Bytes of block sums the agent sent back for deltas (the other direction's payload).
    pub sums_received: u64,
    pub entries_applied: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub failures: Vec<Failure>,
    pub elapsed_ms: u64,
    pub master_peak_rss_kb: Option<u64>,
    pub agent_peak_rss_kb: Option<u64>,
    /// The most channels a brick's stream was striped over.
    pub channels: u8,
}

impl SyncReport {
    pub fn summary(&self) -> String {
        format!(
            "{} -> {}: {} files ({}) sent, {} entries applied, {} deleted, {} renamed, {} failures, {} scanned in {:.2} s",
            self.master,
            self.slave,
            self.files_sent,
            crate::status::human_bytes(self.bytes_sent),
            self.entries_applied,
            self.deleted,
            self.renamed,
            self.failures.len(),
            self.scanned,
            self.elapsed_ms as f64 / 1000.0
        )
    }
}

/// `georep sync MASTER SLAVE --once`.
/// `rescan_slave`: the index is made again from the slave's listing first (`Some(checksum)`).
pub fn sync_once(
    home: &Home,
    master: &str,
    slave: &str,
    opts: &SyncOptions,
    rescan_slave: Option<bool>,
) -> Result<SyncReport> {
    let started = Instant::now();
    let vol = Volume::resolve(home, master)?;
    let spec = SlaveSpec::parse(slave)?;
    if spec.is_local() && spec.volume.starts_with('/') {
        for b in vol.local_active_bricks() {
            let s = std::path::Path::new(&spec.volume);
            if s.starts_with(&b.path) || b.path.starts_with(s) {
                bail!(
                    "slave {} and master brick {} overlap: replicating a tree into itself would loop",
                    s.display(),
                    b.path.display()
                );
            }
        }
    }
    let session = session::SessionConfig::name_for(home, master, slave)?;
    let target = Target::for_slave(home, &session, &spec)?;
    let transport = target.transport()?;
    let excludes = Excludes::new(&opts.excludes)?;
    let bricks = vol.local_bricks_for("sync")?;
    let mut report = SyncReport {
        master: vol.name.clone(),
        slave: slave.to_string(),
        bricks: bricks.len(),
        ..Default::default()
    };
    // A sync that fails leaves no state behind that it made (what it shipped is found again by
    // the next first sync, which lists the slave).
    let session_state = home.state.join("sessions").join(&session);
    std::fs::create_dir_all(home.state.join("sessions"))
        .with_context(|| format!("creating {}", home.state.join("sessions").display()))?;
    // Made by this run (and no other): only then is it removed on failure.
    let made = std::fs::create_dir(&session_state).is_ok();
    for brick in bricks {
        let r = sync_brick(
            home,
            &target,
            vol.is_one_set(),
            brick,
            transport.as_ref(),
            &excludes,
            opts,
            rescan_slave,
            &mut report,
        );
        if let Err(e) = r {
            if made {
                let _ = std::fs::remove_dir_all(&session_state);
            }
            return Err(e);
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report.master_peak_rss_kb = crate::transport::local::self_peak_rss_kb();
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn sync_brick(
    home: &Home,
    target: &Target,
    one_set: bool,
    brick: &Brick,
    transport: &dyn Transport,
    excludes: &Excludes,
    opts: &SyncOptions,
    rescan_slave: Option<bool>,
    report: &mut SyncReport,
) -> Result<()> {
    let excludes = &excludes.clone().on_brick(&brick.path)?;
    let mode = Mode::Replicate {
        replica_set: None,
        shared_tree: !one_set,
    };
    let session = &target.session;
    let state_dir = session::brick_state_dir(home, session, brick);
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| anyhow!("creating {}: {e}", state_dir.display()))?;
    // The brick's worker lock: one user of its index at a time, and one connection from it to
    // the slave (the agent ends an older connection of the same brick as stale).
    let Some(_worker) =
        crate::fsutil::lock_exclusive(&state_dir.join("worker.lock"), Duration::ZERO)?
    else {
        bail!(
            "session {session} is running on this node and its worker replicates brick {brick} (pid {}): it already syncs continuously; see `georep status`, or `georep stop` it first",
            std::fs::read_to_string(state_dir.join("worker.pid"))
                .unwrap_or_default()
                .trim()
        );
    };
    let index_path = state_dir.join("index.db");
    let index = Index::open(&index_path)?;
    crate::brickid::check(brick, &index)?;
    let mut slot = 0u64;
    // A first sync (nothing known of the slave) lists the slave once: what it already holds
    // equal in size, mtime, owner and mode is kept, extras are removed.
    // (Only on a volume of one replica set: with several, each brick's files are the others'
    // extras.)
    let first_sync = rescan_slave.is_none() && one_set && index.is_empty()?;
    let (mut shipper, first) = match rescan_slave {
        Some(checksum) => {
            let mut shipper = connect(transport, target, &index, brick, opts, &mode)?;
            shipper.seed_index_from_slave(&index, checksum, None)?;
            (shipper, None)
        }
        None => {
            let c = Connecting {
                transport,
                target,
                index: &index,
                brick,
                opts,
                mode: &mode,
            };
            // A first sync lists the slave once connected: the plan made meanwhile against the
            // empty index holds when the slave is empty (a new DR site); otherwise it is
            // dropped, and the crawl below compares with the listing.
            let mut proceed = |sh: &mut Shipper| -> Result<bool> {
                if !first_sync {
                    return Ok(true);
                }
                let t = Instant::now();
                let listed = list_for_first_sync(sh, &index, brick)?;
                tracing::debug!(brick = %brick, ms = t.elapsed().as_millis() as u64, "first sync: slave listed");
                Ok(listed == 0)
            };
            let (mut shipper, first) =
                c.while_crawling(&index_path, excludes, &mut slot, &mut proceed)?;
            if one_set && !first_sync && index.is_empty()? {
                // The handshake found a recreated slave (another volume id) and emptied the
                // index: list it, as a first sync does.
                list_for_first_sync(&mut shipper, &index, brick)?;
            }
            (shipper, first)
        }
    };
    let outcome = crawl_until_converged(
        &mut shipper,
        &index,
        brick,
        excludes,
        opts,
        &mut slot,
        first,
    )?;
    report.passes = report.passes.max(outcome.passes);
    report.scanned = report.scanned.max(outcome.scanned);
    report.channels = report.channels.max(shipper.channels());
    report.wire_bytes += shipper.wire_bytes();
    report.sums_received += shipper.sums_received();
    let stats = shipper.stats.clone();
    let agent_rss = shipper.close()?;
    report.files_sent += stats.files_sent;
    report.bytes_sent += stats.bytes_sent;
    report.entries_applied += stats.entries_applied;
    report.deleted += stats.deleted;
    report.renamed += stats.renamed;
    report.failures.extend(outcome.failures);
    report.agent_peak_rss_kb = report.agent_peak_rss_kb.max(agent_rss);
    Ok(())
}

/// A first sync's listing of the slave (the index is empty): what the slave holds becomes the
/// index, so the crawl keeps what is equal and removes extras. Refused when the brick is empty
/// and the slave is not: most likely an unmounted filesystem, whose crawl would empty the DR
/// copy. Returns the number of slave entries.
pub(crate) fn list_for_first_sync(
    shipper: &mut Shipper,
    index: &Index,
    brick: &Brick,
) -> Result<usize> {
    if shipper.slave_empty && index.is_empty()? {
        // Nothing to list (the agent said so at the handshake): a round trip saved.
        return Ok(0);
    }
    let n = shipper.seed_index_from_slave(index, false, None)?;
    if n > 0 && crate::brickid::is_empty(&brick.path) {
        index.clear()?;
        bail!(
            "master brick {brick} is empty but the slave holds {n} entries: is the brick's filesystem mounted? georep does not empty a slave from an empty brick on a first sync (retried until the brick has files); if the brick is meant to be empty, `georep sync <master> <slave> --rescan-slave` makes the slave equal to it"
        );
    }
    Ok(n)
}

/// Connects to the slave agent for `brick`, checks the handshake and the slave volume's
/// identity (a recreated slave empties the index), and returns a shipper ready for batches.
pub fn connect(
    transport: &dyn Transport,
    target: &Target,
    index: &Index,
    brick: &Brick,
    opts: &SyncOptions,
    mode: &Mode,
) -> Result<Shipper, client::Error> {
    let brick_fd = brick.open()?;
    let epoch = index.epoch()?;
    let (client, welcome) = Client::connect_over(transport, target, brick, epoch, opts, mode)?;
    let shipper = Shipper::start(client, &welcome, brick_fd, index, opts, mode, target)?;
    if let Some(w) = &shipper.xattr_warning {
        tracing::warn!("brick {brick}: extended attributes: {w}");
    }
    Ok(shipper)
}

/// What a series of crawl passes achieved.
pub struct CrawlOutcome {
    pub passes: u32,
    pub scanned: u64,
    /// Failures of the last pass (empty when the slave equals the brick as crawled).
    pub failures: Vec<Failure>,
}

/// What `connect` needs, kept together so the connection can be made on another thread.
struct Connecting<'a> {
    transport: &'a dyn Transport,
    target: &'a Target,
    index: &'a Index,
    brick: &'a Brick,
    opts: &'a SyncOptions,
    mode: &'a Mode,
}

impl Connecting<'_> {
    /// Connects and makes the first crawl's plan at the same time: logging in over SSH takes a
    /// few hundred milliseconds (most of it the remote shell starting), a crawl of 10,000 files
    /// tens of them. The plan is kept unless the handshake found a recreated slave and emptied
    /// the index it was made against, or `proceed` (run once connected, before anything of the
    /// plan is sent) says it does not hold; a failed connection stops the crawl.
    fn while_crawling(
        self,
        index_path: &std::path::Path,
        excludes: &Excludes,
        slot: &mut u64,
        proceed: &mut dyn FnMut(&mut Shipper) -> Result<bool>,
    ) -> Result<(Shipper, Option<crawl::Plan>), client::Error> {
        // Local state only (the agent empties its stash when a connection starts), and the
        // crawl must not see stash rows.
        self.index.clear_stash()?;
        let volume_before = self.index.slave_volume_id()?;
        let was_empty = self.index.is_empty()?;
        let failed = std::sync::atomic::AtomicBool::new(false);
        let brick = self.brick;
        let opts = self.opts;
        // Streamed chunks wait here until the connection is up (a couple of chunks at most:
        // the crawl waits for room).
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<crawl::PlannedOp>>(2);
        std::thread::scope(|s| {
            let crawler = s.spawn(|| -> Result<crawl::Plan> {
                // Owned here, so the receiver sees the end when the crawl is done.
                let tx = tx;
                let index = Index::open(index_path)?;
                let stop = || failed.load(std::sync::atomic::Ordering::Relaxed);
                crawl_pass(&index, brick, excludes, slot, &stop, &mut |ops| {
                    tx.send(ops).map_err(|_| crawl::Cancelled.into())
                })
            });
            let give_up = |rx: std::sync::mpsc::Receiver<_>| {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                drop(rx);
            };
            let mut shipper = match connect(
                self.transport,
                self.target,
                self.index,
                brick,
                opts,
                self.mode,
            ) {
                Ok(sh) => sh,
                Err(e) => {
                    give_up(rx);
                    let _ = crawler.join();
                    return Err(e);
                }
            };
            let volume_now = match self.index.slave_volume_id() {
                Ok(v) => v,
                Err(e) => {
                    give_up(rx);
                    let _ = crawler.join();
                    return Err(e.into());
                }
            };
            let kept = was_empty || (volume_before.is_some() && volume_before == volume_now);
            if !kept {
                // The handshake found a recreated slave and emptied the index the crawl
                // compares with: nothing it planned holds.
                give_up(rx);
                let _ = crawler.join();
                return Ok((shipper, None));
            }
            match proceed(&mut shipper) {
                Ok(true) => {}
                Ok(false) => {
                    give_up(rx);
                    let _ = crawler.join();
                    return Ok((shipper, None));
                }
                Err(e) => {
                    give_up(rx);
                    let _ = crawler.join();
                    return Err(e.into());
                }
            }
            shipper.begin_plan();
            for ops in rx.iter() {
                log_ops(brick, &ops);
                if let Err(e) = shipper.feed(ops, self.index, opts.batch_ops, opts.batch_bytes) {
                    give_up(rx);
                    let _ = crawler.join();
                    return Err(e.into());
                }
            }
            let plan = crawler
                .join()
                .map_err(|_| anyhow!("the crawl of {brick} panicked"))??;
            Ok((shipper, Some(plan)))
        })
    }
}

fn log_ops(brick: &Brick, ops: &[crawl::PlannedOp]) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        for op in ops {
            tracing::debug!(brick = %brick, "crawl plan: {:?}", op.op);
        }
    }
}

/// One crawl of `brick` against `index`, with a spinner on a terminal; `stop` is asked after
/// each directory whether to give up. Ops that can go before the crawl ends go to `emit`.
fn crawl_pass(
    index: &Index,
    brick: &Brick,
    excludes: &Excludes,
    slot: &mut u64,
    stop: &dyn Fn() -> bool,
    emit: crawl::Emit<'_>,
) -> Result<crawl::Plan> {
    let spinner = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_message(format!("crawling {}", brick.path.display()));
        pb.enable_steady_tick(Duration::from_millis(100));
        pb
    });
    let streamed = std::cell::Cell::new((0u64, 0u64));
    let plan = crawl::crawl(
        &brick.path,
        index,
        excludes,
        slot,
        &|n| {
            if let Some(pb) = &spinner {
                let (ops, bytes) = streamed.get();
                pb.set_message(format!(
                    "crawling {}: {n} entries; {ops} ops ({}) sent while crawling",
                    brick.path.display(),
                    crate::status::human_bytes(bytes)
                ));
            }
            !stop()
        },
        &mut |ops| {
            let (n, b) = streamed.get();
            let bytes: u64 = ops.iter().map(crawl::PlannedOp::bytes).sum();
            streamed.set((n + ops.len() as u64, b + bytes));
            emit(ops)
        },
    );
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    plan
}

/// Hybrid crawl passes until a pass has nothing to do or nothing failed, at most
/// `opts.max_passes`. `first`: the first pass's plan, when it was made already.
pub fn crawl_until_converged(
    shipper: &mut Shipper,
    index: &Index,
    brick: &Brick,
    excludes: &Excludes,
    opts: &SyncOptions,
    slot: &mut u64,
    mut first: Option<crawl::Plan>,
) -> Result<CrawlOutcome> {
    let tty = std::io::stderr().is_terminal();
    let mut out = CrawlOutcome {
        passes: 0,
        scanned: 0,
        failures: Vec::new(),
    };
    loop {
        out.passes += 1;
        let plan = match first.take() {
            // Its streamed ops went out as it ran (`while_crawling`).
            Some(p) => p,
            None => {
                shipper.failures.clear();
                shipper.stats.requeued = 0;
                shipper.begin_plan();
                crawl_pass(index, brick, excludes, slot, &|| false, &mut |ops| {
                    log_ops(brick, &ops);
                    shipper.feed(ops, index, opts.batch_ops, opts.batch_bytes)
                })?
            }
        };
        out.scanned = out.scanned.max(plan.stats.scanned);
        let master_errors: Vec<Failure> = plan
            .errors
            .iter()
            .map(|(p, m)| Failure {
                path: p.display(),
                rel: Some(p.clone()),
                side: "master",
                errno: 0,
                message: m.clone(),
            })
            .collect();
        tracing::info!(pass = out.passes, brick = %brick, stats = ?plan.stats, streamed = plan.streamed, "crawl done");
        log_ops(brick, &plan.ops);
        if plan.is_empty() {
            out.failures = master_errors;
            break;
        }
        let rest: u64 = plan.ops.iter().map(crawl::PlannedOp::bytes).sum();
        if tty && !plan.ops.is_empty() {
            let pb = indicatif::ProgressBar::new(rest);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            pb.set_message(format!("{}: {} ops", brick.path.display(), plan.ops.len()));
            shipper.progress = Some(pb);
        }
        shipper.feed(plan.ops, index, opts.batch_ops, opts.batch_bytes)?;
        shipper.finish(index)?;
        if let Some(pb) = shipper.progress.take() {
            pb.finish_and_clear();
        }
        shipper.failures.extend(master_errors);
        out.failures = std::mem::take(&mut shipper.failures);
        let again = shipper.stats.requeued > 0 || !out.failures.is_empty();
        if !again || out.passes >= opts.max_passes {
            break;
        }
        // Back off a little: a file being written or a transient slave error may settle.
        std::thread::sleep(Duration::from_millis(50 << out.passes.min(5)));
    }
    Ok(out)
}
