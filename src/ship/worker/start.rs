//! What a connection starts with: a crawl due at once, a takeover from another brick of the
//! replica set, or a first sync that reads the slave.

use super::*;

impl Worker {
    /// A hybrid crawl the first turn would run at once (the journal position lost, or a gap
    /// after it), for the crawl to be planned while the connection is made. Not on a first
    /// sync or a pending takeover: the slave is read before anything is planned there.
    pub(super) fn crawl_due(
        &self,
        index: &Index,
        journal: &JournalStore,
    ) -> Result<Option<CrawlDue>> {
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

    /// This brick became Active for its replica set after another one: what the slave has is
    /// not what our index says. Re-read the slave, then a hybrid crawl ships the difference
    /// (files the slave already has with the same size and mtime are not sent again).
    pub(super) fn take_over(
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
    pub(super) fn first_sync(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        had_slave: bool,
    ) -> Result<()> {
        if !self.one_set || !index.is_empty()? {
            return Ok(());
        }
        let vol = self.session.volume(&self.home)?;
        self.status.crawl = CrawlStatus::Hybrid;
        self.save();
        let listed = crate::ship::list_for_first_sync(shipper, index, &self.brick)?;
        if listed > 0
            && !had_slave
            && !self.session.adopt_slave
            && !vol.replicated_by(&shipper.replicated_from)
        {
            index.clear()?;
            // Until an operator says so: `create … force` rewrites the session's options,
            // which ends the worker's wait at once.
            anyhow::bail!(crate::error::Permanent(format!(
                "slave {} holds {listed} entries that no brick of {} sent: georep does not replicate onto it (it would make it equal to the master and remove the rest) until `georep create {} {} force` says to",
                self.session.slave,
                vol.name,
                self.session.master,
                self.session.slave
            )));
        }
        tracing::info!(brick = %self.brick, entries = listed, "first sync: slave listing read");
        Ok(())
    }
}
