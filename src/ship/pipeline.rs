//! The shipping pipeline of one connection: sends batches (reading file content at ship time),
//! keeps up to `window` batches unacknowledged, and on each ack commits the batch's index
//! mutations.
//!
//! Invariant: the index changes only on `Ack`, in batch order, and a failed op commits its
//! `fail` mutations (poison) instead of its `ok` ones, so nothing is ever recorded as on the
//! slave that the slave did not confirm.

use crate::crawl::entry::Entry;
use crate::crawl::index::{Index, Mutation};
use crate::crawl::{PlanOp, PlannedOp};
use crate::fsutil;
use crate::protocol::{
    self, BatchBegin, BatchEnd, FileAppend, FileBegin, FileEnd, Message, Op, RelPath,
};
use crate::transport::conn::{FrameReader, FrameWriter};
use crate::transport::LinkHandle;
use anyhow::{anyhow, bail, Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, OFlags};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::Duration;

use super::inbound::{Event, Expect, Inbound};

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

enum SentKind {
    File(u64),
    Delete,
    Rename,
    Other,
    Nothing,
}

struct Sent {
    ok: Vec<Mutation>,
    fail: Vec<Mutation>,
    wire: Option<u32>,
    /// Failed on the master side (file changed while read): commit `fail`.
    force_fail: bool,
    kind: SentKind,
}

struct InFlight {
    id: u64,
    sent: Vec<Sent>,
    failed: HashSet<u32>,
}

pub struct Shipper {
    /// The slave tree is shared with other replica sets' bricks (`SyncOptions::shared_tree`):
    /// a directory's deletion removes only this brick's entries of it (`owned_deletes`).
    pub shared_tree: bool,
    /// How the brick is read: a Gluster brick's link-to files and internal names are not its.
    pub view: crate::gluster::View,
    w: Option<super::live::LiveWriter>,
    /// What the agent sends, checked against `expect` (what this side sent) on its own thread.
    events: Inbound,
    expect: Arc<Expect>,
    handle: Box<dyn LinkHandle>,
    brick: OwnedFd,
    inflight: VecDeque<InFlight>,
    next_batch: u64,
    window: usize,
    chunk_size: usize,
    peer: String,
    pub stats: ShipStats,
    pub failures: Vec<Failure>,
    pub progress: Option<indicatif::ProgressBar>,
    /// Deletions of paths gone on the master are not sent (option `ignore-deletes`).
    pub ignore_deletes: bool,
    /// Wire bytes per second, 0 = unlimited (option `bwlimit`, see `set_bwlimit`).
    bwlimit: u64,
    /// The rate limit's clock: when the wire bytes counted so far are paid for (see `throttle`).
    bw_base: (std::time::Instant, u64),
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
    /// Namespaces a listing carries with each entry (verify).
    pub list_xattrs: u8,
    /// Changed files of at least this many bytes go as deltas against the slave's copy
    /// (`u64::MAX`: never).
    pub delta_min: u64,
    /// Channels the stream is striped over (`transport/stripe.rs`).
    pub channels: u8,
    sigs: super::sigs::Sigs,
}

enum FileOutcome {
    Sent {
        entry: Entry,
        committed: bool,
        /// Content bytes that crossed the wire (the tail alone for an append).
        bytes: u64,
    },
    /// Same content as the slave already has (hash checked locally): attributes only.
    SameContent(Entry, Option<Vec<protocol::Xattr>>),
    Vanished,
    Unreadable(std::io::Error),
}

impl Shipper {
    /// Takes over a handshaken connection: `r` is read on a thread of its own.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        w: FrameWriter,
        r: FrameReader,
        handle: Box<dyn LinkHandle>,
        brick: OwnedFd,
        next_batch: u64,
        window: usize,
        chunk_size: usize,
        peer: String,
    ) -> Shipper {
        let expect = Arc::new(Expect::default());
        let events = Inbound::start(r, expect.clone());
        let view = crate::gluster::View::of_root(brick.as_fd()).unwrap_or_default();
        Shipper {
            shared_tree: false,
            view,
            w: Some(super::live::LiveWriter::with_protocol_interval(w, {
                let e = expect.clone();
                Box::new(move || e.beat())
            })),
            events,
            expect,
            handle,
            brick,
            inflight: VecDeque::new(),
            next_batch,
            window,
            chunk_size,
            peer,
            stats: ShipStats::default(),
            failures: Vec::new(),
            progress: None,
            ignore_deletes: false,
            bwlimit: 0,
            bw_base: (std::time::Instant::now(), 0),
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
            list_xattrs: 0,
            delta_min: u64::MAX,
            channels: 1,
            sigs: super::sigs::Sigs::default(),
        }
    }

    pub fn next_batch(&self) -> u64 {
        self.next_batch
    }

    pub fn wire_bytes(&self) -> u64 {
        self.w.as_ref().map(|w| w.wire_bytes()).unwrap_or(0)
    }

    /// Bytes of block sums received for deltas.
    pub fn sums_received(&self) -> u64 {
        self.sigs.received
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, FrameWriter> {
        self.w.as_ref().expect("shipper used after close").lock()
    }

    /// A write to the agent failed: the agent has most likely said why before it went away.
    fn write_failed(&mut self, e: std::io::Error) -> anyhow::Error {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(Event::Msg(Message::Error(m))) => {
                    return anyhow!("slave agent ({}) stopped: {}", self.peer, m.message)
                }
                Ok(Event::Closed(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let said = self
            .handle
            .stderr_tail()
            .map(|t| format!(" (agent said: {t})"))
            .unwrap_or_default();
        anyhow!(
            "sending to {} failed: {e}{said}; the agent exited or the link broke, run again to resume",
            self.peer
        )
    }

    fn handle(&mut self, ev: Event, index: &Index) -> Result<()> {
        match ev {
            Event::Msg(Message::Ack(a)) => {
                let f = self.inflight.pop_front().ok_or_else(|| {
                    anyhow!("agent acknowledged batch {} that was never sent", a.id)
                })?;
                if f.id != a.id {
                    bail!(
                        "agent acknowledged batch {} but batch {} was next: protocol violation",
                        a.id,
                        f.id
                    );
                }
                let mut muts = Vec::new();
                for s in f.sent {
                    let failed = s.force_fail || s.wire.is_some_and(|w| f.failed.contains(&w));
                    if failed {
                        for m in &s.fail {
                            if let Mutation::Poison(p) = m {
                                self.poisoned.insert(p.clone());
                            }
                        }
                        muts.extend(s.fail);
                        continue;
                    }
                    if s.wire.is_some() {
                        self.stats.entries_applied += 1;
                    }
                    match s.kind {
                        SentKind::File(b) => {
                            self.stats.files_sent += 1;
                            self.stats.bytes_sent += b;
                        }
                        SentKind::Delete => self.stats.deleted += 1,
                        SentKind::Rename => self.stats.renamed += 1,
                        SentKind::Other | SentKind::Nothing => {}
                    }
                    let poisoned = &self.poisoned;
                    muts.extend(
                        s.ok.into_iter().filter(
                            |m| !matches!(m, Mutation::Upsert(p, _) if poisoned.contains(p)),
                        ),
                    );
                }
                let t = std::time::Instant::now();
                index
                    .apply(&muts)
                    .context("recording acknowledged changes in the index")?;
                index.set_meta("last_batch", &a.id.to_string())?;
                self.stats.batches += 1;
                tracing::debug!(
                    batch = a.id,
                    index_rows = muts.len(),
                    index_ms = t.elapsed().as_millis() as u64,
                    "batch acknowledged"
                );
            }
            Event::Msg(Message::Failed(fm)) => {
                let f = self
                    .inflight
                    .iter_mut()
                    .find(|f| f.id == fm.batch)
                    .ok_or_else(|| {
                        anyhow!("agent reported a failure in unknown batch {}", fm.batch)
                    })?;
                f.failed.insert(fm.op);
                self.failures.push(Failure {
                    path: fm.path.display(),
                    rel: Some(fm.path.clone()),
                    side: "slave",
                    errno: fm.errno,
                    message: format!("{} (on {})", fm.message, self.peer),
                });
            }
            Event::Msg(Message::Error(m)) => {
                bail!("slave agent ({}) stopped: {}", self.peer, m.message)
            }
            Event::Msg(Message::Heartbeat) => {}
            Event::Msg(Message::Signature(s)) => self.sigs.got(s)?,
            Event::Msg(m) => bail!("unexpected {} from the agent", m.name()),
            Event::Closed(why) => bail!(
                "connection to {} closed{}{}; run again to resume",
                self.peer,
                why.map(|w| format!(": {w}")).unwrap_or_default(),
                self.handle
                    .stderr_tail()
                    .map(|t| format!(" (agent said: {t})"))
                    .unwrap_or_default()
            ),
        }
        Ok(())
    }

    fn poll(&mut self, index: &Index) -> Result<()> {
        while let Ok(ev) = self.events.try_recv() {
            self.handle(ev, index)?;
        }
        Ok(())
    }

    fn wait_one(&mut self, index: &Index) -> Result<()> {
        // A dead peer surfaces as `Closed` (the reader sees EOF); this bounds a hung one.
        match self.events.recv_timeout(Duration::from_secs(600)) {
            Ok(ev) => self.handle(ev, index),
            Err(RecvTimeoutError::Timeout) => bail!("no answer from {} for 10 minutes", self.peer),
            Err(RecvTimeoutError::Disconnected) => bail!("connection to {} lost", self.peer),
        }
    }

    /// Sends one request frame (between batches) and flushes it.
    fn request(&mut self, m: &Message) -> Result<()> {
        self.expect.request(m);
        let sent = {
            let mut w = self.writer();
            w.send(m).and_then(|()| w.flush())
        };
        if let Err(e) = sent {
            return Err(self.write_failed(e));
        }
        Ok(())
    }

    /// The agent's next answer to a request; acks, heartbeats and errors are handled on the way.
    fn reply(&mut self, index: &Index) -> Result<Message> {
        loop {
            match self.events.recv_timeout(Duration::from_secs(600)) {
                Ok(Event::Msg(m))
                    if !matches!(
                        m,
                        Message::Ack(_)
                            | Message::Heartbeat
                            | Message::Error(_)
                            | Message::Signature(_)
                    ) =>
                {
                    return Ok(m)
                }
                Ok(ev) => self.handle(ev, index)?,
                Err(_) => bail!("no answer from {} within 10 minutes", self.peer),
            }
        }
    }

    /// Asks the agent for its whole tree (between batches) and returns it.
    pub fn list_slave(
        &mut self,
        index: &Index,
        checksum: bool,
    ) -> Result<Vec<protocol::ListEntry>> {
        self.list(index, checksum, None)
    }

    /// The slave's entries (with content hashes) at `paths`, those that exist; one request
    /// per `MAX_LIST_PATHS` paths.
    pub fn slave_hashes(
        &mut self,
        index: &Index,
        paths: &[RelPath],
    ) -> Result<HashMap<RelPath, [u8; 32]>> {
        let mut out = HashMap::new();
        for chunk in paths.chunks(protocol::MAX_LIST_PATHS) {
            for le in self.list(index, true, Some(chunk.to_vec()))? {
                if let Some(h) = le.hash {
                    out.insert(le.path, h);
                }
            }
        }
        Ok(out)
    }

    fn list(
        &mut self,
        index: &Index,
        checksum: bool,
        paths: Option<Vec<RelPath>>,
    ) -> Result<Vec<protocol::ListEntry>> {
        let mut out = Vec::new();
        self.list_each(index, checksum, paths, &mut |mut v| {
            out.append(&mut v);
            Ok(())
        })?;
        Ok(out)
    }

    /// The slave's entries at `paths` (those that exist), with content hashes when `checksum`;
    /// one request per `MAX_LIST_PATHS` paths.
    pub fn list_paths(
        &mut self,
        index: &Index,
        checksum: bool,
        paths: &[RelPath],
    ) -> Result<Vec<protocol::ListEntry>> {
        let mut out = Vec::new();
        for chunk in paths.chunks(protocol::MAX_LIST_PATHS) {
            out.extend(self.list(index, checksum, Some(chunk.to_vec()))?);
        }
        Ok(out)
    }

    /// How many entries the slave holds, and the first one listed; memory does not grow with
    /// the slave's tree (`create` asks before replicating onto a slave no session filled).
    pub fn slave_census(&mut self, index: &Index) -> Result<(u64, Option<RelPath>)> {
        let mut first = None;
        let n = self.list_each(index, false, None, &mut |v| {
            if first.is_none() {
                first = v.into_iter().next().map(|e| e.path);
            }
            Ok(())
        })?;
        Ok((n, first))
    }

    /// Lists the slave (or `paths` on it), handing each chunk to `on` as it arrives (the whole
    /// tree comes in `walk::tree_order`); returns the number of entries. An error from `on`
    /// ends the listing (and leaves the connection unusable).
    pub fn list_each(
        &mut self,
        index: &Index,
        checksum: bool,
        paths: Option<Vec<RelPath>>,
        on: &mut dyn FnMut(Vec<protocol::ListEntry>) -> Result<()>,
    ) -> Result<u64> {
        while !self.inflight.is_empty() {
            self.wait_one(index)?;
        }
        self.request(&Message::List {
            checksum,
            paths,
            xattrs: self.list_xattrs,
        })?;
        let mut seen = 0u64;
        loop {
            match self.reply(index)? {
                Message::Listing(v) => {
                    seen += v.len() as u64;
                    on(v)?;
                }
                Message::ListEnd { entries } => {
                    if entries != seen {
                        bail!(
                            "the agent on {} listed {seen} entries but announced {entries}",
                            self.peer,
                        );
                    }
                    return Ok(seen);
                }
                m => bail!("unexpected {} from the agent during a listing", m.name()),
            }
        }
    }

    /// Reverse mode: asks the agent for `paths` (one request) and hands every FileBegin, Chunk,
    /// FileEnd and Failed it answers to `on`, until FetchEnd.
    pub fn fetch(
        &mut self,
        index: &Index,
        paths: Vec<RelPath>,
        mut on: impl FnMut(Message) -> Result<()>,
    ) -> Result<()> {
        // Only what was asked for, each once: a hostile DR side cannot make failback write
        // any other path on the master.
        let mut asked: HashSet<RelPath> = paths.iter().cloned().collect();
        self.request(&Message::Fetch { paths })?;
        loop {
            match self.reply(index)? {
                Message::FetchEnd => return Ok(()),
                Message::FileBegin(fb) if !asked.remove(&fb.path) => bail!(
                    "{} sent {} during a fetch, which was not asked for (or sent twice): refusing the whole reply",
                    self.peer,
                    fb.path
                ),
                m @ (Message::FileBegin(_)
                | Message::Chunk(_)
                | Message::FileEnd(_)
                | Message::Failed(_)) => on(m)?,
                m => bail!("unexpected {} from the agent during a fetch", m.name()),
            }
        }
    }

    /// Reverse mode: the paths the DR-side journal recorded since failover (after `after`).
    /// Returns the paths, whether the journal is complete, and its last sequence covered.
    pub fn dr_changes(
        &mut self,
        index: &Index,
        after: u64,
    ) -> Result<(HashSet<RelPath>, bool, u64)> {
        self.request(&Message::Changes { after })?;
        let mut out = HashSet::new();
        loop {
            match self.reply(index)? {
                Message::ChangedPaths(v) => out.extend(v),
                Message::ChangesEnd { complete, last } => return Ok((out, complete, last)),
                m => bail!("unexpected {} from the agent during Changes", m.name()),
            }
        }
    }

    /// Reverse mode, failback: demotes the slave volume; returns its new epoch.
    pub fn demote(&mut self, index: &Index) -> Result<u64> {
        self.request(&Message::Demote)?;
        match self.reply(index)? {
            Message::Demoted { epoch } => Ok(epoch),
            m => bail!("unexpected {} from the agent after Demote", m.name()),
        }
    }

    /// Tells the slave the current stime with an empty batch, when it moved since the last
    /// batch (the slave prints it as the RPO at failover, and a planned failover waits on it).
    pub fn beacon(&mut self, index: &Index) -> Result<()> {
        if self.stime_ns <= self.stime_sent {
            return Ok(());
        }
        self.send_batch(Vec::new(), index)?;
        let r = self.writer().flush();
        if let Err(e) = r {
            return Err(self.write_failed(e));
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
                matches!(
                    crate::crawl::walk::lstat_beneath(&self.brick, p, view),
                    Ok(None)
                )
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
                self.expect.sig_asks(&asks);
                let sent = {
                    let mut w = self.writer();
                    w.send(&Message::Signatures(asks)).and_then(|()| w.flush())
                };
                if let Err(e) = sent {
                    return Err(self.write_failed(e));
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
        let r = self.writer().flush();
        if let Err(e) = r {
            return Err(self.write_failed(e));
        }
        while !self.inflight.is_empty() {
            self.wait_one(index)?;
        }
        Ok(())
    }

    /// Heartbeats after `every` of quiet on the link (the agent's silence limit allows it).
    pub fn set_heartbeat(&self, every: std::time::Duration) {
        if let Some(w) = &self.w {
            w.set_every(every);
        }
    }

    /// Sets the wire rate limit (bytes/s, 0 = none), from now on.
    pub fn set_bwlimit(&mut self, bytes_per_sec: u64) {
        if bytes_per_sec != self.bwlimit {
            self.bwlimit = bytes_per_sec;
            // Whatever went before is paid for; the credit of an idle link applies from here.
            let now = std::time::Instant::now();
            self.bw_base = (
                now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
                self.wire_bytes(),
            );
        }
    }

    /// Sleeps while the wire is ahead of `bwlimit`; at most one second of unused rate is
    /// saved up, so an idle link does not earn a burst.
    ///
    /// A virtual clock: `bw_base.0` is when everything counted so far (`bw_base.1` wire bytes)
    /// has been paid for at the limit. Bytes sent after an idle spell are paid from at most one
    /// second before now, counting the piece just sent.
    fn throttle(&mut self) {
        if self.bwlimit == 0 {
            return;
        }
        let wire = self.wire_bytes();
        let (clock, counted) = self.bw_base;
        let now = std::time::Instant::now();
        let new = wire.saturating_sub(counted);
        let start = clock.max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now));
        let paid = start + Duration::from_secs_f64(new as f64 / self.bwlimit as f64);
        self.bw_base = (paid, wire);
        if paid > now {
            std::thread::sleep(paid - now);
        }
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
        self.expect.batch(id, declared);
        // In flight from its first op: the agent may report a failed op of this batch while
        // the rest is still being sent (`poll` below).
        self.inflight.push_back(InFlight {
            id,
            sent: Vec::new(),
            failed: HashSet::new(),
        });
        let r = self.writer().send(&begin);
        if let Err(e) = r {
            return Err(self.write_failed(e));
        }
        let mut sent = Vec::with_capacity(batch.len());
        let mut wire = 0u32;
        for p in batch {
            if let PlanOp::File { path, .. } = &p.op {
                if let Some(t) = self.sigs.waiting_for(path) {
                    // Its sums were asked for ahead of the plan: wait for them alone.
                    let flushed = self.writer().flush();
                    if let Err(e) = flushed {
                        return Err(self.write_failed(e));
                    }
                    while !self.sigs.is_done(t) {
                        self.wait_one(index)?;
                    }
                }
            }
            let s = match self.send_op(p, &mut wire) {
                Ok(s) => s,
                Err(e) => return Err(self.write_failed(e)),
            };
            sent.push(s);
            self.poll(index)?;
        }
        let end = Message::BatchEnd(BatchEnd { id, ops: wire });
        let ended = {
            let mut w = self.writer();
            w.send(&end).and_then(|()| w.flush())
        };
        if let Err(e) = ended {
            return Err(self.write_failed(e));
        }
        tracing::debug!(batch = id, ops = wire, bytes, "batch sent");
        match self.inflight.back_mut() {
            Some(f) if f.id == id => f.sent = sent,
            _ => bail!(
                "{} acknowledged batch {id} before it was sent whole: protocol violation",
                self.peer
            ),
        }
        Ok(())
    }

    fn send_op(&mut self, p: PlannedOp, wire: &mut u32) -> std::io::Result<Sent> {
        let PlannedOp { op, mut ok, fail } = p;
        Ok(match op {
            PlanOp::IndexOnly => Sent {
                ok,
                fail,
                wire: None,
                force_fail: false,
                kind: SentKind::Nothing,
            },
            PlanOp::Op(Op::Link { path, target }) if self.relink.contains_key(&target) => {
                match self.relink[&target].clone() {
                    (_, Some(leader)) => self.send_plain(
                        Op::Link {
                            path,
                            target: leader,
                        },
                        ok,
                        fail,
                        wire,
                    )?,
                    (ino, None) => {
                        // The planned leader names another file by now: this name carries the
                        // content itself and leads the links still to come.
                        let (sent, delivered) =
                            self.send_content(path.clone(), None, None, ino, true, fail, wire)?;
                        if delivered {
                            self.relink.insert(target, (ino, Some(path)));
                        }
                        sent
                    }
                }
            }
            PlanOp::Op(mut op) => {
                // The attributes of another name of a hard-linked file whose content went out
                // earlier in this plan: that content was read (and its stat taken) at send time,
                // so the planned attributes may be older than the content now on the slave.
                // The shared inode gets the attributes that go with its content.
                if let (Op::SetAttr { meta, .. }, [Mutation::Upsert(p, e)]) = (&mut op, &ok[..]) {
                    let shared = self.sent_inodes.get(&e.ino);
                    if let Some(s) = shared.filter(|_| e.kind == crate::crawl::entry::Kind::File) {
                        *meta = s.meta();
                        ok = vec![Mutation::Upsert(p.clone(), s.clone())];
                    }
                }
                self.add_xattrs(&mut op, &mut ok, &fail);
                self.send_plain(op, ok, fail, wire)?
            }
            PlanOp::File {
                path,
                known_hash,
                slave_meta,
                entry,
                grew_from,
            } => {
                // The slave's hash is of its whole copy, or of the beginning of a file that grew.
                let (same, grew) = match (known_hash, grew_from) {
                    (Some(h), Some(base)) => (None, Some((base, h))),
                    (h, _) => (h.map(|h| (h, slave_meta)), None),
                };
                let (sent, delivered) = self.send_content(
                    path.clone(),
                    same,
                    grew,
                    entry.ino,
                    entry.nlink > 1,
                    fail,
                    wire,
                )?;
                if !delivered && entry.kind == crate::crawl::entry::Kind::File && entry.nlink > 1 {
                    // The slave's copy at this path is not the planned inode: links planned to
                    // it go elsewhere (see above).
                    self.relink.insert(path, (entry.ino, None));
                }
                sent
            }
        })
    }

    /// Puts the extended attributes of the planned entry (the op's row in `ok`), read now,
    /// into an op that sets attributes. When they cannot be read (the entry or a parent moved
    /// since the plan, another entry took the name), the op leaves the slave's alone and its
    /// row must not vouch for them: a directory's row is marked stale, another kind's is
    /// poisoned, and the path is a failure looked at again (journal seed 1301723: a parent
    /// renamed between plan and send; its child's ACL never reached the slave).
    fn add_xattrs(&mut self, op: &mut Op, ok: &mut Vec<Mutation>, fail: &[Mutation]) {
        if self.xattrs == 0 {
            return;
        }
        if let Op::Mkdir { path, meta }
        | Op::Symlink { path, meta, .. }
        | Op::Special { path, meta, .. }
        | Op::SetAttr { path, meta } = op
        {
            let planned = ok.iter().find_map(|m| match m {
                Mutation::Upsert(p, e) if p == path => Some(e.clone()),
                _ => None,
            });
            // A reader per op: a parent kept from an earlier op may name another directory
            // by now.
            let mut r = crate::xattr::Reader::new(self.brick.as_fd());
            meta.xattrs = r.read_of(
                path,
                self.xattrs,
                planned.as_ref().map(|e| (e.ino, e.birth)),
            );
            if r.unsupported {
                self.brick_without_xattrs();
                return;
            }
            if meta.xattrs.is_some() {
                return;
            }
            match planned {
                Some(e) if e.kind == crate::crawl::entry::Kind::Dir => {
                    ok.push(Mutation::Stale(path.clone()))
                }
                Some(_) => *ok = fail.to_vec(),
                None => {}
            }
            let message = match r.error {
                Some(e) => format!(
                    "reading the extended attributes of {path} on the master: {e}; they are not replicated until that is fixed"
                ),
                None => format!(
                    "{path} moved while its extended attributes were read; they are sent again"
                ),
            };
            self.failures.push(Failure {
                path: path.display(),
                rel: Some(path.clone()),
                side: "master",
                errno: 0,
                message,
            });
        }
    }

    /// The attributes of an open file of the brick; an error (too many to replicate, an I/O
    /// error) fails the file, which is looked at again.
    fn fd_xattrs(
        &mut self,
        fd: rustix::fd::BorrowedFd<'_>,
    ) -> std::io::Result<Option<Vec<protocol::Xattr>>> {
        if self.xattrs == 0 {
            return Ok(None);
        }
        match crate::xattr::read(crate::xattr::At::Fd(fd), self.xattrs)? {
            Some(v) => Ok(Some(v)),
            None => {
                self.brick_without_xattrs();
                Ok(None)
            }
        }
    }

    fn brick_without_xattrs(&mut self) {
        if self.xattr_warning.is_none() {
            let m = "the master brick's filesystem has no extended attributes: none are replicated";
            tracing::warn!("{m}");
            self.xattr_warning = Some(m.to_string());
        }
    }

    fn send_plain(
        &mut self,
        op: Op,
        ok: Vec<Mutation>,
        fail: Vec<Mutation>,
        wire: &mut u32,
    ) -> std::io::Result<Sent> {
        let kind = match &op {
            Op::Delete { .. } => SentKind::Delete,
            Op::Unstash { .. } => SentKind::Rename,
            _ => SentKind::Other,
        };
        self.writer().send(&Message::Op(op))?;
        *wire += 1;
        Ok(Sent {
            ok,
            fail,
            wire: Some(*wire - 1),
            force_fail: false,
            kind,
        })
    }

    /// Sends the file at `path` as it is now, planned as inode `ino` (`linked`: with other names
    /// the plan may link to it). Also says whether the slave's copy at `path` is that inode's
    /// current content once this op is applied (false when the name was replaced, changed while
    /// read, vanished or is unreadable).
    #[allow(clippy::too_many_arguments)]
    fn send_content(
        &mut self,
        path: RelPath,
        known: Option<([u8; 32], Option<crate::protocol::Meta>)>,
        append_base: Option<(u64, [u8; 32])>,
        ino: u64,
        linked: bool,
        fail: Vec<Mutation>,
        wire: &mut u32,
    ) -> std::io::Result<(Sent, bool)> {
        let (known_hash, slave_meta) = known.map_or((None, None), |(h, m)| (Some(h), m));
        Ok(match self.send_file(&path, known_hash, append_base)? {
            FileOutcome::SameContent(entry, xattrs) => {
                // Planned links count even when the other names are gone by now: their
                // SetAttr still reaches the shared inode on the slave.
                if linked || entry.nlink > 1 {
                    self.sent_inodes.insert(entry.ino, entry.clone());
                }
                let delivered = entry.ino == ino;
                let row = content_row(&path, &entry, ino, linked);
                if linked_since_planned(&entry, linked) {
                    // A crawl passes again: the new name may have been listed already.
                    self.stats.requeued += 1;
                }
                if slave_meta == Some(entry.meta()) && self.xattrs == 0 {
                    // Content and attributes are what the slave holds: nothing to send. (The
                    // index keeps no extended attributes: with them on, a changed ctime may
                    // be one, and they go.)
                    let sent = Sent {
                        ok: vec![row],
                        fail,
                        wire: None,
                        force_fail: false,
                        kind: SentKind::Nothing,
                    };
                    return Ok((sent, delivered));
                }
                let op = Op::SetAttr {
                    path: path.clone(),
                    meta: protocol::Meta {
                        xattrs,
                        ..entry.meta()
                    },
                };
                let sent = self.send_plain(op, vec![row], fail, wire)?;
                (sent, delivered)
            }
            FileOutcome::Sent {
                entry,
                committed,
                bytes,
            } => {
                if committed && (linked || entry.nlink > 1) {
                    self.sent_inodes.insert(entry.ino, entry.clone());
                }
                if !committed {
                    self.stats.requeued += 1;
                    self.failures.push(Failure {
                        path: path.display(),
                        rel: Some(path.clone()),
                        side: "master",
                        errno: 0,
                        message: format!(
                            "{path} changed while it was being read; it is sent again on the next pass"
                        ),
                    });
                }
                *wire += 1;
                let delivered = committed && entry.ino == ino;
                if linked_since_planned(&entry, linked) {
                    self.stats.requeued += 1;
                }
                let sent = Sent {
                    ok: vec![content_row(&path, &entry, ino, linked)],
                    fail,
                    wire: Some(*wire - 1),
                    force_fail: !committed,
                    kind: SentKind::File(bytes),
                };
                (sent, delivered)
            }
            FileOutcome::Vanished => {
                // Gone or no longer a file since the crawl: make sure the slave does not
                // keep an old version. A rename planned later may have taken it (its
                // directory's, say, not journaled yet): the failure moves with the renamed
                // rows and the path is looked at again where it went (a crawl passes again).
                self.failures.push(Failure {
                    path: path.display(),
                    rel: Some(path.clone()),
                    side: "master",
                    errno: libc::ENOENT,
                    message: format!(
                        "{path} was renamed or removed while it was being sent; it is looked at again"
                    ),
                });
                let op = Op::Delete { path: path.clone() };
                let sent = self.send_plain(op, vec![Mutation::Remove(path)], fail, wire)?;
                (
                    Sent {
                        kind: SentKind::Other,
                        ..sent
                    },
                    false,
                )
            }
            FileOutcome::Unreadable(e) => {
                self.failures.push(Failure {
                    path: path.display(),
                    rel: Some(path.clone()),
                    side: "master",
                    errno: fsutil::errno_of(&e),
                    message: format!("reading {path} on the master: {e}"),
                });
                let sent = Sent {
                    ok: vec![],
                    fail: vec![],
                    wire: None,
                    force_fail: false,
                    kind: SentKind::Nothing,
                };
                (sent, false)
            }
        })
    }

    /// Sends `file` (`size` bytes) as a delta against the slave's copy that `sig` sums:
    /// references to its blocks and the literal bytes between. Returns whether the content
    /// was read whole, the literal bytes sent, and the hash of what was sent.
    fn send_delta(
        &mut self,
        path: &RelPath,
        file: &mut std::fs::File,
        meta: protocol::Meta,
        size: u64,
        sig: super::sigs::Finished,
    ) -> std::io::Result<(bool, u64, [u8; 32])> {
        use crate::delta::{self, Piece};
        self.writer()
            .send(&Message::FileDelta(protocol::FileDelta {
                path: path.clone(),
                meta,
                size,
                base: sig.size,
                block: sig.block,
            }))?;
        let (block, base) = (sig.block as u64, sig.size);
        let idx = delta::Index::new(sig.block, sig.size, sig.sums);
        let mut hasher = blake3::Hasher::new();
        let (mut emitted, mut literal) = (0u64, 0u64);
        let mut send_failed = None;
        let read = delta::diff(
            file,
            size,
            &idx,
            |d| {
                hasher.update(d);
            },
            |piece| {
                let (msg, n) = match piece {
                    Piece::Copy { first, count } => {
                        let start = first as u64 * block;
                        let end = ((first as u64 + count as u64) * block).min(base);
                        (Message::Copy { first, count }, end - start)
                    }
                    Piece::Literal(d) => {
                        let n = d.len() as u64;
                        literal += n;
                        (Message::Chunk(d), n)
                    }
                };
                if let Err(e) = self.writer().send(&msg) {
                    send_failed = Some(e);
                    return Err(std::io::Error::other("the stream failed"));
                }
                emitted += n;
                self.throttle();
                if let Some(pb) = &self.progress {
                    pb.inc(n);
                }
                Ok(())
            },
        );
        if let Some(e) = send_failed {
            return Err(e);
        }
        let intact = match read {
            Ok((n, _)) => n == size && emitted == size,
            Err(e) => {
                tracing::warn!("reading {path}: {e}; sending it again later");
                false
            }
        };
        if emitted < size {
            // Shrank or failed while read: the declared size is made up with zeros and the
            // file is not committed.
            self.writer().send(&Message::Hole(size - emitted))?;
        }
        Ok((intact, literal, *hasher.finalize().as_bytes()))
    }

    fn send_file(
        &mut self,
        path: &RelPath,
        known_hash: Option<[u8; 32]>,
        append_base: Option<(u64, [u8; 32])>,
    ) -> std::io::Result<FileOutcome> {
        // Used here or not at all.
        let sig = self.sigs.take(path);
        let open = |flags| fsutil::open_regular_beneath(self.brick.as_fd(), path.as_bytes(), flags);
        let fd = match open(OFlags::NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(OFlags::empty()),
            r => r,
        };
        let fd = match fd {
            Ok(Some(fd)) => fd,
            // Something else took the name since it was listed: the next pass sees what.
            Ok(None) => return Ok(FileOutcome::Vanished),
            Err(e) => {
                return Ok(match e.raw_os_error() {
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV) => {
                        FileOutcome::Vanished
                    }
                    _ => FileOutcome::Unreadable(e),
                })
            }
        };
        let view = self.view;
        // A Gluster link-to file now (a rename moved the name's data to another brick): no
        // content of this brick's, and never an empty file over the real one.
        let stat = |fd: &OwnedFd| {
            rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, Entry::STATX_MASK)
                .ok()
                .and_then(|st| Entry::from_statx(&st, None))
                .and_then(|e| {
                    view.adjust(e, crate::xattr::At::Fd(fd.as_fd()))
                        .ok()
                        .flatten()
                })
        };
        let Some(mut entry) = stat(&fd).filter(|e| e.kind == crate::crawl::entry::Kind::File)
        else {
            return Ok(FileOutcome::Vanished);
        };
        // Read with the stat, before the content: a change after this moves the ctime and
        // the file is looked at again.
        let xattrs = match self.fd_xattrs(fd.as_fd()) {
            Ok(x) => x,
            Err(e) => return Ok(FileOutcome::Unreadable(e)),
        };
        let same_stat = |a: &Option<Entry>, e: &Entry| {
            a.as_ref().is_some_and(|a| {
                a.size == e.size
                    && (a.mtime_sec, a.mtime_nsec) == (e.mtime_sec, e.mtime_nsec)
                    && (a.ctime_sec, a.ctime_nsec) == (e.ctime_sec, e.ctime_nsec)
            })
        };
        let mut file = std::fs::File::from(fd);
        // With the slave's sums at hand the content is read once, for the delta: its mtime
        // moved (see `Sigs::ask`), so it most likely changed, and an unchanged one costs a
        // delta of references alone.
        if let (Some(known), None) = (known_hash, &sig) {
            // A local read is far cheaper than a send: check whether the content changed.
            let mut h = blake3::Hasher::new();
            let local = h.update_reader(&mut file).map(|h| *h.finalize().as_bytes());
            let stable = same_stat(&stat(&OwnedFd::from(file.try_clone()?)), &entry);
            if stable && local.as_ref().ok() == Some(&known) {
                entry.hash = Some(known);
                return Ok(FileOutcome::SameContent(entry, xattrs));
            }
            use std::io::Seek;
            file.rewind()?;
        }
        let mut hasher = blake3::Hasher::new();
        let mut left = entry.size;
        // A file that grew: when what the slave has is still its beginning, only the rest
        // goes (a local read of the beginning, no round trip). The hash of the beginning goes
        // on into the hash of the whole, which the agent checks.
        let base = match append_base.filter(|&(b, _)| b < entry.size) {
            Some((base, h)) => {
                use std::io::{Read, Seek};
                let read = hasher.update_reader((&mut file).take(base)).map(|_| ());
                if read.is_ok() && hasher.count() == base && hasher.finalize().as_bytes() == &h {
                    Some(base)
                } else {
                    hasher = blake3::Hasher::new();
                    file.rewind()?;
                    None
                }
            }
            None => None,
        };
        if let (None, Some(sig)) = (base, sig) {
            let meta = protocol::Meta {
                xattrs,
                ..entry.meta()
            };
            let (intact, bytes, hash) = self.send_delta(path, &mut file, meta, entry.size, sig)?;
            let committed = intact && same_stat(&stat(&file.into()), &entry);
            self.writer().send(&Message::FileEnd(FileEnd {
                hash,
                commit: committed,
            }))?;
            entry.hash = Some(hash);
            return Ok(FileOutcome::Sent {
                entry,
                committed,
                bytes,
            });
        }
        match base {
            Some(base) => {
                left -= base;
                self.writer().send(&Message::FileAppend(FileAppend {
                    path: path.clone(),
                    meta: protocol::Meta {
                        xattrs,
                        ..entry.meta()
                    },
                    size: entry.size,
                    base,
                }))?;
            }
            None => self.writer().send(&Message::FileBegin(FileBegin {
                path: path.clone(),
                meta: protocol::Meta {
                    xattrs,
                    ..entry.meta()
                },
                size: entry.size,
            }))?,
        }
        // A sparse file's holes go as `Hole`s: nothing read, nothing sent, nothing allocated
        // on the DR side.
        let sparse = crate::sparse::is_sparse(&file, entry.size);
        let mut pos = entry.size - left;
        let mut bytes = 0;
        let mut intact = true;
        while left > 0 {
            let mut run = left;
            if sparse && intact {
                match crate::sparse::next(&file, pos, entry.size)? {
                    crate::sparse::Run::Hole(n) => {
                        let n = n.min(left);
                        self.writer().send(&Message::Hole(n))?;
                        crate::sparse::hash_zeros(&mut hasher, n);
                        if let Some(pb) = &self.progress {
                            pb.inc(n);
                        }
                        (left, pos) = (left - n, pos + n);
                        continue;
                    }
                    crate::sparse::Run::Data(n) => run = n.min(left),
                }
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(pos))?;
            }
            while run > 0 {
                let want = (run as usize).min(self.chunk_size);
                let (n, failed) =
                    self.writer()
                        .send_content(&mut file, want, &mut intact, &mut |d| {
                            hasher.update(d);
                        })?;
                if let Some(e) = failed {
                    tracing::warn!("reading {path}: {e}; sending it again later");
                }
                self.throttle();
                if let Some(pb) = &self.progress {
                    pb.inc(n as u64);
                }
                let n = n as u64;
                (run, left, pos, bytes) = (run - n, left - n, pos + n, bytes + n);
            }
        }
        let unchanged = same_stat(&stat(&file.into()), &entry);
        let committed = intact && unchanged;
        let hash = *hasher.finalize().as_bytes();
        self.writer().send(&Message::FileEnd(FileEnd {
            hash,
            commit: committed,
        }))?;
        entry.hash = Some(hash);
        Ok(FileOutcome::Sent {
            entry,
            committed,
            bytes,
        })
    }

    /// Says goodbye, waits for the agent to finish and returns its peak memory.
    pub fn close(mut self) -> Result<Option<u64>> {
        // The agent is idle now: its peak so far is its peak.
        let rss = self.handle.peak_rss_kb();
        if let Some(w) = self.w.take() {
            let mut w = w.into_inner();
            w.send(&Message::Bye)?;
            w.close().context("closing the stream to the agent")?;
        }
        for ev in self.events.finish() {
            if let Event::Msg(Message::Error(m)) = ev {
                bail!("slave agent ({}) stopped: {}", self.peer, m.message);
            }
        }
        self.handle.close()?;
        Ok(rss)
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
            .is_some_and(|e| e.kind == crate::crawl::entry::Kind::Dir)
        {
            out.push(p);
            continue;
        }
        let mut beneath = index.subtree(path)?;
        // Children before their parents: reverse path order puts `a/b` before `a`.
        beneath.sort_by(|a, b| b.0.cmp(&a.0));
        for (q, e) in beneath {
            let op = if e.kind == crate::crawl::entry::Kind::Dir {
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

impl Drop for Shipper {
    fn drop(&mut self) {
        // First: a reader waiting for room for a reply must read on, or the transport's
        // thread (blocked handing it bytes) never sees the abort.
        self.expect.close();
        if self.w.is_some() {
            self.handle.abort();
        }
    }
}

/// Protocol sanity for the master side of the handshake.
pub fn check_welcome(w: &protocol::Welcome, peer: &str) -> Result<()> {
    if w.protocol != protocol::PROTOCOL_VERSION {
        bail!(
            "{peer} speaks georep protocol {} (georep {}), this master speaks {}: install the same georep version on both sites",
            w.protocol,
            w.georep_version,
            protocol::PROTOCOL_VERSION
        );
    }
    Ok(())
}

/// The index row for `path` once the slave holds `entry`'s content there, planned as inode
/// `planned` (`linked`: with other names). A name replaced since the plan by a name of a
/// multiply-linked file got a copy of its own on the slave: a row with that inode would vouch
/// for a hard link the slave does not have (and no later window or crawl would look at it
/// again: journal seed 460080). It is unknown instead, so the next plan links it into its
/// group.
///
/// A file planned alone that got another name before it was read (journal seed 700042: a
/// hybrid crawl streamed it, then a `ln` made the second name, listed later in the same walk
/// and sent as a file of its own) went out alone too. Its row keeps the inode, so the plan of
/// the new name finds it among the inode's names, but not the ctime: the row vouches for no
/// link, and that plan compares it as changed and joins the two names on the slave.
fn content_row(path: &RelPath, entry: &Entry, planned: u64, linked: bool) -> Mutation {
    if entry.ino != planned && entry.nlink > 1 {
        Mutation::Poison(path.clone())
    } else if entry.nlink > 1 && !linked {
        let mut doubtful = entry.clone();
        (doubtful.ctime_sec, doubtful.ctime_nsec) = (0, 0);
        Mutation::Upsert(path.clone(), doubtful)
    } else {
        Mutation::Upsert(path.clone(), entry.clone())
    }
}

/// Whether a file planned alone has other names by the time it was read (see `content_row`).
fn linked_since_planned(entry: &Entry, linked: bool) -> bool {
    entry.nlink > 1 && !linked
}

#[path = "seed.rs"]
mod seed;

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
