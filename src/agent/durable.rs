//! Making applied batches durable and acknowledging them, on a thread of its own.
//!
//! The apply thread hands over each batch once every op of it was applied (or reported
//! `Failed`) and goes on with the next batch while this thread syncs the filesystem: on a
//! first sync of many small files the agent spent a third of its time waiting in `syncfs`
//! (docs/benchmarks.md). Batches that finish while a sync runs are made durable together by the
//! next one (group commit).
//!
//! Invariant: `Ack{id}` is sent only after a `syncfs` that started after batch `id` was fully
//! applied, and after `agent.db` recorded the batch; acks go out in batch order. Once a sync or
//! the state update fails, nothing more is acknowledged and the apply thread stops with that error.

use super::state::AgentState;
use crate::protocol::{self, Message};
use crate::transport::conn::FrameWriter;
use anyhow::{anyhow, Context, Result};
use rustix::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// The agent's output, shared by the apply thread (failures, replies) and the durability thread
/// (acks). Frames of one sender never interleave with another's.
#[derive(Clone)]
pub struct SharedWriter(Arc<Mutex<FrameWriter>>);

impl SharedWriter {
    pub fn new(w: FrameWriter) -> Self {
        SharedWriter(Arc::new(Mutex::new(w)))
    }

    pub fn lock(&self) -> MutexGuard<'_, FrameWriter> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn send(&self, m: &Message) -> std::io::Result<()> {
        self.lock().send(m)
    }

    /// Sends `m` and pushes everything written so far to the master.
    pub fn send_flush(&self, m: &Message) -> std::io::Result<()> {
        let mut w = self.lock();
        w.send(m)?;
        w.flush()
    }
}

/// Batches applied and waiting for their sync and ack, at most.
const MAX_PENDING: usize = 1024;

/// A batch whose ops were all applied, waiting to be made durable.
pub struct Applied {
    pub id: u64,
    /// The master's stime as of this batch (0: none).
    pub stime_ns: i64,
    /// Whether the batch changed anything (an empty stime beacon needs no sync).
    pub wrote: bool,
    /// On a FUSE slave: the files and directories the batch changed, fsynced before its ack
    /// (`syncfs` does not reach a FUSE daemon's storage); empty elsewhere.
    pub fsync: Vec<OwnedFd>,
    /// On a Gluster DR volume, after a batch that changed entries: a marker file per brick,
    /// written and fsynced after the rest (`fusesync::sync_markers`).
    pub markers: Vec<OwnedFd>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Applied>,
    /// The thread is syncing a group taken from `pending`.
    busy: bool,
    stop: bool,
    /// Why the thread stopped early.
    failed: Option<String>,
}

struct Shared {
    q: Mutex<Queue>,
    cv: Condvar,
}

/// Where batches are made durable and acknowledged: what the durability thread needs.
pub struct Target {
    /// The slave root (any fd on its filesystem would do for `syncfs`).
    pub root: OwnedFd,
    pub state: AgentState,
    pub brick: String,
    pub session: String,
    /// For messages: the slave root and this host.
    pub describe: String,
}

pub struct Durability {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Durability {
    pub fn spawn(t: Target, w: SharedWriter) -> Result<Self> {
        let shared = Arc::new(Shared {
            q: Mutex::new(Queue::default()),
            cv: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("durability".into())
            .spawn(move || run(&s, &t, &w))
            .context("starting the agent's durability thread")?;
        Ok(Durability {
            shared,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.shared.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over a fully applied batch; fails if an earlier sync failed. Waits while
    /// `MAX_PENDING` batches are queued: a master that stops reading acks stops being read.
    pub fn push(&self, b: Applied) -> Result<()> {
        let mut q = self.lock();
        while q.failed.is_none() && q.pending.len() >= MAX_PENDING {
            q = self.shared.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(e) = &q.failed {
            return Err(anyhow!("{e}"));
        }
        q.pending.push(b);
        self.shared.cv.notify_all();
        Ok(())
    }

    /// Waits until every batch handed over is durable and acknowledged (before answering a
    /// request whose reply must not interleave with acks, and at the end of the stream).
    pub fn drain(&self) -> Result<()> {
        let mut q = self.lock();
        while q.failed.is_none() && (q.busy || !q.pending.is_empty()) {
            q = self.shared.cv.wait(q).unwrap_or_else(|e| e.into_inner());
        }
        match &q.failed {
            Some(e) => Err(anyhow!("{e}")),
            None => Ok(()),
        }
    }
}

impl Drop for Durability {
    /// Batches already applied are still made durable and acknowledged, then the thread ends.
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(s: &Shared, t: &Target, w: &SharedWriter) {
    loop {
        let group = {
            let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
            while q.pending.is_empty() && !q.stop {
                q = s.cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
            if q.pending.is_empty() {
                return;
            }
            q.busy = true;
            // Room again for a pusher waiting on MAX_PENDING.
            s.cv.notify_all();
            std::mem::take(&mut q.pending)
        };
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| make_durable(t, w, &group)))
                .unwrap_or_else(|_| Err(anyhow!("the agent's durability thread panicked")));
        let failed = r.err().map(|e| format!("{e:#}"));
        if let Some(message) = &failed {
            tracing::error!("{message}");
            // The apply thread may be idle, waiting for the master, which waits for this ack:
            // tell the master now (the apply thread stops at its next batch with the same error).
            let _ = w.send_flush(&Message::Error(protocol::ErrorMsg {
                message: message.clone(),
                permanent: false,
            }));
        }
        let mut q = s.q.lock().unwrap_or_else(|e| e.into_inner());
        q.busy = false;
        s.cv.notify_all();
        if failed.is_some() {
            q.failed = failed;
            q.pending.clear();
            return;
        }
    }
}

fn make_durable(t: &Target, w: &SharedWriter, group: &[Applied]) -> Result<()> {
    let Some(last) = group.last() else {
        return Ok(());
    };
    for b in group {
        super::fusesync::sync_all(&b.fsync)
            .with_context(|| format!("syncing what batch {} wrote on {}", b.id, t.describe))?;
    }
    // Once per group, after everything it changed: the last batch's markers cover the rest.
    if let Some(b) = group.iter().rev().find(|b| !b.markers.is_empty()) {
        super::fusesync::sync_markers(&b.markers)
            .with_context(|| format!("syncing the bricks of {} (markers)", t.describe))?;
    }
    if group.iter().any(|b| b.wrote) {
        rustix::fs::syncfs(&t.root)
            .map_err(std::io::Error::from)
            .with_context(|| format!("syncing slave volume {}", t.describe))?;
    }
    let stime = group.iter().map(|b| b.stime_ns).max().unwrap_or(0);
    t.state
        .record_durable(&t.brick, &t.session, last.id, stime)?;
    tracing::debug!(first = group[0].id, last = last.id, "batches durable");
    let mut out = w.lock();
    for b in group {
        out.send(&Message::Ack(protocol::Ack { id: b.id }))?;
    }
    out.flush()?;
    Ok(())
}
