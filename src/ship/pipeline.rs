//! The shipping pipeline of one connection: sends batches (reading file content at ship time),
//! keeps up to `window` batches unacknowledged, and on each ack commits the batch's index
//! mutations.
//!
//! Invariant: the index changes only on `Ack`, in batch order, and a failed op commits its
//! `fail` mutations (poison) instead of its `ok` ones, so nothing is ever recorded as on the
//! slave that the slave did not confirm.

use crate::client::{Client, Mode};
use crate::config::SyncOptions;
use crate::crawl::index::Index;
use crate::crawl::{PlanOp, PlannedOp};
use crate::entry::Entry;
use crate::protocol::{self, BatchBegin, BatchEnd, Message, Op, RelPath};
use anyhow::{bail, Result};
use rustix::fd::{AsFd, OwnedFd};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};

use ack::InFlight;

/// A failed path, for the summary and (later) `georep failures`.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub path: String,
    /// The path as the protocol carries it, for retries.
    #[serde(skip)]
    pub rel: Option<RelPath>,
    pub side: &'static str,
    pub errno: i32,
    pub message: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ShipStats {
    pub files_sent: u64,
    pub bytes_sent: u64,
    pub entries_applied: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub batches: u64,
    /// Files that changed while being read; the next pass sends them again.
    pub requeued: u64,
}

pub struct Shipper {
    /// The slave tree is shared with other replica sets' bricks (`Mode::Replicate`):
    /// a directory's deletion removes only this brick's entries of it (`owned_deletes`).
    pub shared_tree: bool,
    /// How the brick is read: a Gluster brick's link-to files and internal names are not its.
    pub view: crate::gluster::View,
    client: Client,
    brick: OwnedFd,
    inflight: VecDeque<InFlight>,
    next_batch: u64,
    window: usize,
    chunk_size: usize,
    pub stats: ShipStats,
    pub failures: Vec<Failure>,
    pub progress: Option<indicatif::ProgressBar>,
    /// Deletions of paths gone on the master are not sent (option `ignore-deletes`).
    pub ignore_deletes: bool,
    throttle: super::throttle::Throttle,
    /// Set by the handshake when another brick of the replica set was Active before us, with
    /// that brick's last stime on the slave.
    pub previous_active: Option<String>,
    /// Master bricks that have replicated onto this slave (the handshake's `replicated_from`).
    pub replicated_from: Vec<String>,
    pub previous_stime_ns: i64,
    /// The agent found its root empty at the handshake (`Welcome::empty`).
    pub slave_empty: bool,
    /// The brick's stime, carried by every batch so the slave knows its RPO (failover).
    pub stime_ns: i64,
    stime_sent: i64,
    /// Multiply-linked files whose content went out in the current `ship` call, by inode, with
    /// the stat taken when they were read (see `send_op`).
    sent_inodes: HashMap<u64, Entry>,
    /// Paths a failed op of the current plan poisoned: a later op's row for them must not
    /// vouch for them (a rename whose source was missing on the slave, followed by the
    /// renamed file's hash check that found nothing to send, left a row for a file the slave
    /// does not have).
    poisoned: HashSet<RelPath>,
    /// Link targets of the current `ship` call whose File op did not put the planned inode on
    /// the slave at that path (replaced on the master since the plan, changed while read,
    /// gone): the planned inode, and the name that leads its links instead once one carried
    /// its content.
    relink: HashMap<RelPath, (u64, Option<RelPath>)>,
    /// Extended attribute namespaces replicated (`crate::xattr` bits agreed in the
    /// handshake); 0 = off.
    pub xattrs: u8,
    /// Why some attributes are not replicated (the DR filesystem or privileges refuse them,
    /// the brick has none): shown in status, never a fault.
    pub xattr_warning: Option<String>,
    /// Changed files of at least this many bytes go as deltas against the slave's copy
    /// (`u64::MAX`: never).
    pub delta_min: u64,
    sigs: super::sigs::Sigs,
}

impl Shipper {
    /// Ships over `client` from the brick opened as `brick` (batch ids from `next_batch`).
    pub fn new(
        client: Client,
        brick: OwnedFd,
        next_batch: u64,
        window: usize,
        chunk_size: usize,
    ) -> Shipper {
        let view = crate::gluster::View::of_root(brick.as_fd()).unwrap_or_default();
        Shipper {
            shared_tree: false,
            view,
            client,
            brick,
            inflight: VecDeque::new(),
            next_batch,
            window,
            chunk_size,
            stats: ShipStats::default(),
            failures: Vec::new(),
            progress: None,
            ignore_deletes: false,
            throttle: super::throttle::Throttle::new(),
            previous_active: None,
            replicated_from: Vec::new(),
            previous_stime_ns: 0,
            slave_empty: false,
            stime_ns: 0,
            sent_inodes: HashMap::new(),
            poisoned: HashSet::new(),
            relink: HashMap::new(),
            stime_sent: 0,
            xattrs: 0,
            xattr_warning: None,
            delta_min: u64::MAX,
            sigs: super::sigs::Sigs::default(),
        }
    }

    /// A shipper for `brick` over a connection just made (`welcome`: the agent's side of the
    /// handshake). Checks the slave volume's identity against the index: a recreated slave
    /// empties it (and makes a crawl due); the first connection records it.
    pub fn start(
        client: Client,
        welcome: &protocol::Welcome,
        brick_fd: OwnedFd,
        index: &Index,
        opts: &SyncOptions,
        mode: &Mode,
        target: &crate::client::Target,
    ) -> Result<Shipper> {
        match index.slave_volume_id()? {
            Some(id) if id == welcome.volume_id => {}
            Some(id) => {
                tracing::warn!(
                    "slave volume id changed ({id} -> {}): the slave was recreated, sending everything again",
                    welcome.volume_id
                );
                index.clear()?;
                // The journal no longer holds what the old slave got: only a crawl finds it.
                index.set_meta(
                    super::position::CRAWL_DUE,
                    &format!("the slave volume on {} was recreated", welcome.slave_host),
                )?;
            }
            None => index.clear()?,
        }
        index.set_meta("slave_volume_id", &welcome.volume_id)?;
        index.clear_stash()?;
        let next_batch = index.last_batch()?.unwrap_or(0).max(welcome.last_batch) + 1;
        let local = target.is_local();
        let mut shipper = Shipper::new(client, brick_fd, next_batch, opts.window, opts.chunk_size);
        shipper.ignore_deletes = opts.ignore_deletes;
        shipper.delta_min = opts.delta_min.unwrap_or(if local {
            u64::MAX
        } else {
            crate::delta::MIN_SIZE
        });
        shipper.set_bwlimit(opts.bwlimit);
        // What both sides can do of what the session asks (trusted.* and security.* need root on
        // both); the rest is a warning in status, not a fault.
        shipper.xattrs = welcome.xattrs & crate::xattr::permitted(opts.xattrs);
        let unreadable = opts.xattrs & !crate::xattr::permitted(opts.xattrs);
        shipper.xattr_warning = match (welcome.xattr_warning.clone(), unreadable) {
            (w, 0) => w,
            (w, bits) => Some(
                w.into_iter()
                    .chain([format!(
                        "{} are not replicated: the master does not run as root",
                        crate::xattr::describe(bits)
                    )])
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        };
        shipper.previous_active = welcome.previous_active.clone();
        shipper.shared_tree = matches!(
            mode,
            Mode::Replicate {
                shared_tree: true,
                ..
            }
        );
        shipper.replicated_from = welcome.replicated_from.clone();
        shipper.previous_stime_ns = welcome.previous_stime_ns;
        shipper.slave_empty = welcome.empty;
        Ok(shipper)
    }

    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    pub fn wire_bytes(&self) -> u64 {
        self.client.wire_bytes()
    }

    /// Channels the stream is striped over.
    pub fn channels(&self) -> u8 {
        self.client.channels
    }

    /// Bytes of block sums received for deltas.
    pub fn sums_received(&self) -> u64 {
        self.sigs.received
    }

    /// Sets the wire rate limit (bytes/s, 0 = none), from now on.
    pub fn set_bwlimit(&mut self, bytes_per_sec: u64) {
        let wire = self.wire_bytes();
        self.throttle.set(bytes_per_sec, wire);
    }

    fn throttle(&mut self) {
        let wire = self.wire_bytes();
        self.throttle.pace(wire);
    }

    /// Waits until every batch in flight is acknowledged.
    fn drain(&mut self, index: &Index) -> Result<()> {
        while !self.inflight.is_empty() {
            self.wait_one(index)?;
        }
        Ok(())
    }

    /// Lists the slave between batches (see `Client::list_each`); what else the agent sent
    /// meanwhile is handled with the next event.
    pub fn list_each(
        &mut self,
        index: &Index,
        checksum: bool,
        paths: Option<Vec<RelPath>>,
        on: &mut dyn FnMut(Vec<protocol::ListEntry>) -> Result<()>,
    ) -> Result<u64> {
        self.drain(index)?;
        let n = self.client.list_each(checksum, paths, 0, on)?;
        Ok(n)
    }

    /// Says goodbye, waits for the agent to finish and returns its peak memory.
    pub fn close(self) -> Result<Option<u64>> {
        self.client.close()
    }

    /// Tells the slave the current stime with an empty batch, when it moved since the last
    /// batch (the slave prints it as the RPO at failover, and a planned failover waits on it).
    pub fn beacon(&mut self, index: &Index) -> Result<()> {
        if self.stime_ns <= self.stime_sent {
            return Ok(());
        }
        self.send_batch(Vec::new(), index)?;
        let r = self.client.writer().flush();
        if let Err(e) = r {
            return Err(self.client.write_failed(e));
        }
        while !self.inflight.is_empty() {
            self.wait_one(index)?;
        }
        Ok(())
    }

    /// Sends `ops` as batches and waits until all of them are acknowledged.
    pub fn ship(
        &mut self,
        ops: Vec<PlannedOp>,
        index: &Index,
        max_ops: u32,
        max_bytes: u64,
    ) -> Result<()> {
        self.begin_plan();
        self.feed(ops, index, max_ops, max_bytes)?;
        self.finish(index)
    }

    /// Starts a plan that arrives in pieces (`feed`, then `finish`): what the previous plan
    /// sent of hard-linked files no longer counts.
    pub fn begin_plan(&mut self) {
        self.sent_inodes.clear();
        self.poisoned.clear();
        self.relink.clear();
        self.sigs.clear();
    }

    /// Sends `ops` (the next piece of the plan begun with `begin_plan`) as batches, waiting
    /// for acknowledgements only as far as the window requires.
    pub fn feed(
        &mut self,
        ops: Vec<PlannedOp>,
        index: &Index,
        max_ops: u32,
        max_bytes: u64,
    ) -> Result<()> {
        let brick = self.brick.as_fd();
        let ops = if self.ignore_deletes {
            // Deletions of paths that are gone on the master; a delete that clears the way for
            // another kind still goes.
            let view = self.view;
            index_only_deletes(ops, |p| {
                matches!(crate::walk::lstat_beneath(&self.brick, p, view), Ok(None))
            })
        } else if self.view.gluster {
            // On a Gluster brick, deletions of names that are link-to files now: such a name
            // still exists in the volume, its data on another brick, which ships it (a rename
            // over it from there, say); deleting it here could land after that brick's rename
            // and lose the file. Looked at as the op goes, so the state is the latest.
            index_only_deletes(ops, |p| crate::gluster::linkto_at(brick, p))
        } else {
            ops
        };
        let ops = if self.shared_tree {
            owned_deletes(ops, index)?
        } else {
            ops
        };
        tracing::debug!(ops = ops.len(), "shipping");
        if self.delta_min != u64::MAX {
            // Ahead of the ops: the agent sums its copies while the stream goes on.
            for asks in self.sigs.ask(&ops, self.delta_min) {
                self.client.expect().sig_asks(&asks);
                let sent = {
                    let mut w = self.client.writer();
                    w.send(&Message::Signatures(asks)).and_then(|()| w.flush())
                };
                if let Err(e) = sent {
                    return Err(self.client.write_failed(e));
                }
            }
        }
        let ranges = super::batch::cut(&ops, max_ops, max_bytes);
        let mut ops = ops.into_iter();
        for range in ranges {
            while self.inflight.len() >= self.window {
                self.wait_one(index)?;
            }
            let batch: Vec<PlannedOp> = ops.by_ref().take(range.len()).collect();
            self.send_batch(batch, index)?;
        }
        Ok(())
    }

    /// Waits until everything sent is acknowledged.
    pub fn finish(&mut self, index: &Index) -> Result<()> {
        let r = self.client.writer().flush();
        if let Err(e) = r {
            return Err(self.client.write_failed(e));
        }
        while !self.inflight.is_empty() {
            self.wait_one(index)?;
        }
        Ok(())
    }

    fn send_batch(&mut self, batch: Vec<PlannedOp>, index: &Index) -> Result<()> {
        let id = self.next_batch;
        self.next_batch += 1;
        self.stime_sent = self.stime_ns;
        let declared = batch
            .iter()
            .filter(|p| !matches!(p.op, PlanOp::IndexOnly))
            .count() as u32;
        let bytes = batch.iter().map(PlannedOp::bytes).sum();
        let begin = Message::BatchBegin(BatchBegin {
            id,
            first_seq: 0,
            last_seq: 0,
            max_ts_ns: self.stime_ns,
            ops: declared,
            bytes,
        });
        self.client.expect().batch(id, declared);
        // In flight from its first op: the agent may report a failed op of this batch while
        // the rest is still being sent (`poll` below).
        self.inflight.push_back(InFlight {
            id,
            sent: Vec::new(),
            failed: HashSet::new(),
        });
        let r = self.client.writer().send(&begin);
        if let Err(e) = r {
            return Err(self.client.write_failed(e));
        }
        let mut sent = Vec::with_capacity(batch.len());
        let mut wire = 0u32;
        for p in batch {
            if let PlanOp::File { path, .. } = &p.op {
                if let Some(t) = self.sigs.waiting_for(path) {
                    // Its sums were asked for ahead of the plan: wait for them alone.
                    let flushed = self.client.writer().flush();
                    if let Err(e) = flushed {
                        return Err(self.client.write_failed(e));
                    }
                    while !self.sigs.is_done(t) {
                        self.wait_one(index)?;
                    }
                }
            }
            let s = match self.send_op(p, &mut wire) {
                Ok(s) => s,
                Err(e) => return Err(self.client.write_failed(e)),
            };
            sent.push(s);
            self.poll(index)?;
        }
        let end = Message::BatchEnd(BatchEnd { id, ops: wire });
        let ended = {
            let mut w = self.client.writer();
            w.send(&end).and_then(|()| w.flush())
        };
        if let Err(e) = ended {
            return Err(self.client.write_failed(e));
        }
        tracing::debug!(batch = id, ops = wire, bytes, "batch sent");
        match self.inflight.back_mut() {
            Some(f) if f.id == id => f.sent = sent,
            _ => bail!(
                "{} acknowledged batch {id} before it was sent whole: protocol violation",
                self.client.peer()
            ),
        }
        Ok(())
    }
}

/// Turns the deletions `spared` picks into index-only updates: the index forgets them as if
/// shipped.
fn index_only_deletes(ops: Vec<PlannedOp>, spared: impl Fn(&RelPath) -> bool) -> Vec<PlannedOp> {
    ops.into_iter()
        .map(|mut p| {
            if let PlanOp::Op(Op::Delete { path }) = &p.op {
                if spared(path) {
                    tracing::debug!(%path, "not deleted on the slave: index only");
                    p.op = PlanOp::IndexOnly;
                }
            }
            p
        })
        .collect()
}

/// On a shared tree (a distributed volume), the deletion of a directory this brick shipped
/// becomes the deletion of what this brick shipped beneath it, deepest first, each directory
/// removed only once empty (`Rmdir`): what other bricks have there now (the same name made
/// again, with their files in it) stays. The original op's index mutations go with the last.
fn owned_deletes(ops: Vec<PlannedOp>, index: &Index) -> Result<Vec<PlannedOp>> {
    let mut out = Vec::with_capacity(ops.len());
    for p in ops {
        let PlanOp::Op(Op::Delete { path }) = &p.op else {
            out.push(p);
            continue;
        };
        if !index
            .get(path)?
            .is_some_and(|e| e.kind == crate::entry::Kind::Dir)
        {
            out.push(p);
            continue;
        }
        let mut beneath = index.subtree(path)?;
        // Children before their parents: reverse path order puts `a/b` before `a`.
        beneath.sort_by(|a, b| b.0.cmp(&a.0));
        for (q, e) in beneath {
            let op = if e.kind == crate::entry::Kind::Dir {
                Op::Rmdir { path: q }
            } else {
                Op::Delete { path: q }
            };
            out.push(PlannedOp {
                op: PlanOp::Op(op),
                ok: Vec::new(),
                fail: Vec::new(),
            });
        }
        out.push(PlannedOp {
            op: PlanOp::Op(Op::Rmdir { path: path.clone() }),
            ok: p.ok,
            fail: p.fail,
        });
    }
    Ok(out)
}

#[path = "ack.rs"]
mod ack;
#[path = "read.rs"]
mod read;
#[path = "seed.rs"]
mod seed;
#[path = "send.rs"]
mod send;

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
