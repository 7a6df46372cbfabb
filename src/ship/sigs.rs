//! The master's side of delta transfer's signatures: which files of a plan to ask the agent
//! to sum, the sums as they come back (while other files flow), and the finished ones.
//!
//! The asks go out as one `Signatures` message ahead of the plan's ops, so the agent sums its
//! copies while the stream goes on: no file waits for a round trip of its own. By the time a
//! changed file's turn comes, its sums are usually here; if not, the shipper waits for them
//! alone (acks are handled meanwhile).

use crate::crawl::PlanOp;
use crate::crawl::PlannedOp;
use crate::delta::{self, BlockSum};
use crate::protocol::{RelPath, SigAsk, Signature, MAX_LIST_PATHS};
use anyhow::{bail, Result};
use std::collections::HashMap;

/// Bytes of sums asked for and not yet used, at most (the agent's answers are then bounded
/// too: the reader thread never waits for room with a batch in flight).
pub const OUTSTANDING_MAX: u64 = 32 << 20;
/// A file that grew is usually an append (sent as its tail, no sums): only up to this size is
/// it also summed, in case its beginning changed too. A growing log of gigabytes is not read
/// whole on the DR side each time it grows.
pub const GREW_MAX: u64 = 16 << 20;
/// Bytes a block sum costs here and on the wire.
const SUM_BYTES: u64 = delta::SUM_LEN as u64;
/// Sums accepted for one file at most: twice what a copy of the new file's size needs (the
/// agent's copy may be bigger: it then sums bigger blocks).
fn max_sums(size: u64) -> u32 {
    (2 * size.div_ceil(delta::block_size(size) as u64)).clamp(1024, 1 << 20) as u32
}

#[derive(Default)]
pub struct Sigs {
    next: u64,
    by_path: HashMap<RelPath, u64>,
    parts: HashMap<u64, Part>,
    /// Estimated sum bytes of the asks not yet used.
    outstanding: u64,
    /// Sum bytes received in all (the wire's other direction).
    pub received: u64,
}

struct Part {
    estimate: u64,
    max_sums: usize,
    block: u32,
    sums: Vec<BlockSum>,
    done: Option<Option<u64>>,
}

/// A finished signature: the copy's block size, size and sums.
pub struct Finished {
    pub block: u32,
    pub size: u64,
    pub sums: Vec<BlockSum>,
}

fn estimate(size: u64) -> u64 {
    max_sums(size) as u64 * SUM_BYTES + 64
}

impl Sigs {
    /// The files among `ops` worth a delta (the slave has a copy whose hash the index knows,
    /// at least `min` bytes, and its mtime moved: a change of attributes alone moves only the
    /// ctime, and is checked by a local hash, not by the agent reading its copy; one that grew
    /// only up to `GREW_MAX`), asked for in order until the outstanding bound; each ask once.
    pub fn ask(&mut self, ops: &[PlannedOp], min: u64) -> Vec<Vec<SigAsk>> {
        let mut asks = Vec::new();
        for p in ops {
            let PlanOp::File {
                path,
                known_hash: Some(_),
                grew_from,
                entry,
                slave_meta,
            } = &p.op
            else {
                continue;
            };
            let touched = slave_meta
                .as_ref()
                .is_none_or(|m| (m.mtime_sec, m.mtime_nsec) != (entry.mtime_sec, entry.mtime_nsec));
            if !touched
                || entry.size < min
                || (grew_from.is_some() && entry.size > GREW_MAX)
                || self.by_path.contains_key(path)
            {
                continue;
            }
            let est = estimate(entry.size);
            if self.outstanding + est > OUTSTANDING_MAX {
                break;
            }
            self.outstanding += est;
            self.next += 1;
            self.by_path.insert(path.clone(), self.next);
            self.parts.insert(
                self.next,
                Part {
                    estimate: est,
                    max_sums: max_sums(entry.size) as usize,
                    block: 0,
                    sums: Vec::new(),
                    done: None,
                },
            );
            asks.push(SigAsk {
                token: self.next,
                path: path.clone(),
                max_sums: max_sums(entry.size),
            });
        }
        asks.chunks(MAX_LIST_PATHS).map(<[_]>::to_vec).collect()
    }

    /// A part of an answer.
    pub fn got(&mut self, s: Signature) -> Result<()> {
        let Some(p) = self.parts.get_mut(&s.token) else {
            // Forgotten with its plan (the file was sent otherwise, or the plan ended).
            return Ok(());
        };
        if p.done.is_some() {
            bail!(
                "the agent sent block sums after the end of signature {}: a broken or hostile DR side",
                s.token
            );
        }
        let sums = delta::unpack(&s.sums).unwrap_or_default();
        if s.done == Some(None) {
            // No usable copy (even after parts came): the file goes whole.
            p.done = s.done;
            return Ok(());
        }
        if (p.block != 0 && p.block != s.block) || p.sums.len() + sums.len() > p.max_sums {
            bail!(
                "the agent sent an inconsistent signature ({} sums of {}-byte blocks): a broken or hostile DR side",
                p.sums.len() + sums.len(),
                s.block
            );
        }
        self.received += s.sums.len() as u64;
        p.block = s.block;
        p.sums.extend(sums);
        p.done = s.done;
        Ok(())
    }

    /// The ask for `path` whose answer has not ended, if any.
    pub fn waiting_for(&self, path: &RelPath) -> Option<u64> {
        self.by_path
            .get(path)
            .filter(|t| self.parts.get(t).is_some_and(|p| p.done.is_none()))
            .copied()
    }

    pub fn is_done(&self, token: u64) -> bool {
        self.parts.get(&token).is_none_or(|p| p.done.is_some())
    }

    /// The finished signature for `path` (used once); `None` when none was asked, the agent
    /// had no copy, or the sums do not describe a copy of the size it gave.
    pub fn take(&mut self, path: &RelPath) -> Option<Finished> {
        let token = self.by_path.remove(path)?;
        let p = self.parts.remove(&token)?;
        self.outstanding = self.outstanding.saturating_sub(p.estimate);
        let size = p.done??;
        let blocks = size.div_ceil(p.block.max(1) as u64);
        (p.block != 0 && p.sums.len() as u64 == blocks).then_some(Finished {
            block: p.block,
            size,
            sums: p.sums,
        })
    }

    /// A plan ended: what it did not use is dropped (late answers are ignored).
    pub fn clear(&mut self) {
        self.by_path.clear();
        self.parts.clear();
        self.outstanding = 0;
    }
}
