//! An Active worker's turn: the journal read after the slave's position, windows planned and
//! shipped, hybrid crawls for gaps, stime moved only when what it covers is on the slave.

use super::*;

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

impl Worker {
    pub(super) fn serve(
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
    pub(super) fn hybrid(
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
    pub(super) fn hybrid_from(
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
        index.set_meta(crate::ship::position::CRAWL_DUE, "")?;
        journal.trim(gap_seq)?;
        self.status.journal_seq = gap_seq;
        self.advance_stime(index, Some(started))?;
        shipper.stime_ns = self.status.stime_ns;
        shipper.beacon(index)?;
        self.save();
        Ok(())
    }

    /// Records this round's failures; clears retried paths that went through.
    pub(super) fn settle_failures(
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
    pub(super) fn report_full_volume(&mut self, index: &Index) -> Result<()> {
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

    pub(super) fn advance_stime(&mut self, index: &Index, ts: Option<i64>) -> Result<()> {
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
