//! The worker's side of the scrub (see `ship::scrub`): records a pass that ended, repairs what
//! it found through the worker's own pipeline, holds LAST_SYNCED while differences stand, and
//! starts the next pass when it is due.

use super::super::pipeline::Shipper;
use super::Worker;
use crate::client::Target;
use crate::crawl::index::Index;
use crate::journal::record::now_ns;
use crate::journal::JournalStore;
use anyhow::Result;

impl Worker {
    /// The scrub: records a pass that ended (and repairs what it found), starts one when due
    /// (`scrub-interval` after the last, or `georep scrub --now`).
    pub(super) fn scrub_turn(
        &mut self,
        shipper: &mut Shipper,
        index: &Index,
        journal: &JournalStore,
    ) -> Result<()> {
        use super::super::scrub;
        let settings = crate::options::scrub(&self.session);
        if !self.one_set {
            // Several replica sets ship into one slave: another brick's files would be extras.
            return Ok(());
        }
        if let Some((pass, started, r)) = self.scrub.finished() {
            self.status.scrub_running = false;
            let o = match r {
                Ok(o) => o,
                Err(e) => {
                    // Not a difference: the next pass tries again (a link cut meanwhile).
                    tracing::warn!(brick = %self.brick, "scrub pass {} failed: {e:#}", pass.number);
                    self.status.scrub_error = Some(format!("pass {}: {e:#}", pass.number));
                    self.save();
                    return Ok(());
                }
            };
            self.status.scrub_error = None;
            let mut summary = scrub::summary(&pass, started, now_ns(), &o);
            for f in o.found.iter().take(scrub::SHOWN_PATHS) {
                tracing::warn!(brick = %self.brick, path = %f.path, "scrub: {}", f.what);
            }
            tracing::info!(brick = %self.brick, pass = pass.number, entries = o.entries, bytes_hashed = o.bytes_hashed, differences = o.found.len() as u64 + o.omitted, "scrub pass done");
            if o.found.is_empty() && o.omitted == 0 {
                self.status.scrub_hold_ns = None;
                self.status.scrub = Some(summary);
                self.save();
                return Ok(());
            }
            // LAST_SYNCED vouches for nothing after this pass's start until it is repaired: it
            // goes back there (it moved on while the pass ran) and stays.
            let hold = self
                .status
                .scrub_hold_ns
                .unwrap_or(i64::MAX)
                .min(pass.stime_ns);
            self.status.scrub_hold_ns = Some(hold);
            self.status.stime_ns = self.status.stime_ns.min(hold);
            shipper.stime_ns = self.status.stime_ns;
            if !settings.repair {
                self.status.scrub = Some(summary);
                self.save();
                return Ok(());
            }
            // Repaired as `sync --rescan-slave` does: the index from the slave, the files with
            // other contents unknown, then a hybrid crawl ships the difference.
            let repair = (|| -> Result<()> {
                crate::brickid::check_running(&self.brick, index)?;
                shipper.seed_index_from_slave(index, false, None)?;
                let poison: Vec<_> = o
                    .content
                    .iter()
                    .map(|p| crate::crawl::index::Mutation::Poison(p.clone()))
                    .collect();
                index.apply(&poison)?;
                let last = journal.last_seq()?;
                self.hybrid(shipper, index, journal, last, Some("scrub repair"))
            })();
            match repair {
                Ok(()) if self.status.failures == 0 => {
                    summary.repaired = summary.differences;
                    self.status.scrub_hold_ns = None;
                }
                Ok(()) => {
                    summary.repair_failed = Some(format!(
                        "{} path(s) failed: `georep failures` lists them",
                        self.status.failures
                    ))
                }
                Err(e) => summary.repair_failed = Some(format!("{e:#}")),
            }
            let failed = summary.repair_failed.clone();
            self.status.scrub = Some(summary);
            self.save();
            if let Some(e) = failed {
                tracing::warn!(brick = %self.brick, "scrub repair failed: {e}");
            }
            return Ok(());
        }
        if self.scrub.is_running() {
            return Ok(());
        }
        let request = self.dir.join("scrub.request");
        let requested = std::fs::read_to_string(&request).ok();
        let last = self
            .status
            .scrub
            .as_ref()
            .map_or(self.status.started_ns, |s| {
                s.finished_ns.max(self.status.started_ns)
            });
        let due = settings
            .interval
            .is_some_and(|iv| now_ns() - last >= iv.as_nanos() as i64);
        if requested.is_none() && !due {
            return Ok(());
        }
        let _ = std::fs::remove_file(&request);
        let pass = scrub::Pass {
            number: self.status.scrub.as_ref().map_or(0, |s| s.pass) + 1,
            checksum_every: if requested.as_deref().is_some_and(|r| r.trim() == "checksum") {
                1
            } else {
                settings.checksum_every
            },
            stime_ns: self.status.stime_ns,
        };
        let target = match Target::of_session(&self.home, &self.session) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(brick = %self.brick, "scrub pass {} not started: {e:#}", pass.number);
                return Ok(());
            }
        };
        // The scratch index passes used before the client layer.
        let _ = std::fs::remove_file(self.dir.join("scrub.db"));
        let target = scrub::Job {
            target,
            brick: self.brick.clone(),
            excludes: self.excludes.clone(),
            xattrs: self.opts.xattrs,
        };
        tracing::info!(brick = %self.brick, pass = pass.number, "scrub pass starts");
        self.scrub.start(target, pass, now_ns())?;
        self.status.scrub_running = true;
        self.save();
        Ok(())
    }
}
