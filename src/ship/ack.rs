//! The master's half of acknowledgement: what each batch in flight carries for the index, and
//! what an `Ack` or a `Failed` from the agent does with it.
//!
//! Invariant: the index changes only on `Ack`, in batch order, and a failed op commits its
//! `fail` mutations (poison) instead of its `ok` ones.

use super::{Failure, Shipper};
use crate::client::{Event, ANSWER_WAIT};
use crate::crawl::index::{Index, Mutation};
use crate::protocol::Message;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashSet;

pub(super) enum SentKind {
    File(u64),
    Delete,
    Rename,
    Other,
    Nothing,
}

pub(super) struct Sent {
    pub(super) ok: Vec<Mutation>,
    pub(super) fail: Vec<Mutation>,
    pub(super) wire: Option<u32>,
    /// Failed on the master side (file changed while read): commit `fail`.
    pub(super) force_fail: bool,
    pub(super) kind: SentKind,
}

pub(super) struct InFlight {
    pub(super) id: u64,
    pub(super) sent: Vec<Sent>,
    pub(super) failed: HashSet<u32>,
}

impl Shipper {
    pub(super) fn handle(&mut self, ev: Event, index: &Index) -> Result<()> {
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
                    message: format!("{} (on {})", fm.message, self.client.peer()),
                });
            }
            Event::Msg(Message::Error(m)) => return Err(self.client.stopped(&m)),
            Event::Msg(Message::Heartbeat) => {}
            Event::Msg(Message::Signature(s)) => self.sigs.got(s)?,
            Event::Msg(m) => bail!("unexpected {} from the agent", m.name()),
            Event::Closed(why) => return Err(self.client.closed(why)),
        }
        Ok(())
    }

    /// Handles what the agent sent that is there already.
    pub(super) fn poll(&mut self, index: &Index) -> Result<()> {
        while let Some(ev) = self.client.try_event() {
            self.handle(ev, index)?;
        }
        Ok(())
    }

    /// Waits for the agent's next message and handles it.
    pub(super) fn wait_one(&mut self, index: &Index) -> Result<()> {
        let ev = self.client.next_event(ANSWER_WAIT)?;
        self.handle(ev, index)
    }
}
