//! `Client`: one connection to an agent, from the handshake to `Bye`. It owns the link, the
//! reader thread (`inbound`), the heartbeat writer (`live`) and request/reply; it knows
//! nothing of indexes or batches (`ship::Shipper` builds those on top).
//!
//! Invariant: a reply is matched to the one request outstanding; anything else that arrives
//! meanwhile (an ack, block sums) is kept, in order, for the caller (`next_event`).

use super::error::Error;
use super::inbound::{Event, Expect, Inbound};
use super::live::LiveWriter;
use super::Target;
use crate::config::SyncOptions;
use crate::protocol::{self, Hello, Message, Welcome, PROTOCOL_VERSION};
use crate::transport::conn::{FrameReader, FrameWriter};
use crate::transport::{LinkHandle, Transport};
use crate::volume::Brick;
use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a request waits for its reply, and the shipper for an ack, before the link is
/// given up (a dead peer surfaces sooner, as `Closed`: this bounds a hung one).
pub const ANSWER_WAIT: Duration = Duration::from_secs(600);

/// Channels a connection's stream is striped over by default on a long link (the SSH transport
/// decides: `transport::ssh::LONG_LINK_AUTH`): one SSH channel carries at most its window per round
/// trip (OpenSSH's 2 MiB: 17 MiB/s at 113 ms). docs/benchmarks.md has the measurement this was
/// chosen from.
pub const DEFAULT_CHANNELS: u8 = 4;

/// What the connection is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Forward replication of one brick. `replica_set`: the key of its replica set's Active
    /// lock on replica volumes; `shared_tree`: the slave tree is shared with other replica
    /// sets' bricks (a distributed volume).
    Replicate {
        replica_set: Option<String>,
        shared_tree: bool,
    },
    /// Read the slave (List, Fetch, Changes) and Demote it: no lock on the agent, and it works
    /// on a fenced or promoted volume (verify, resync --reverse, failback).
    Reverse,
}

/// One connection to an agent.
pub struct Client {
    w: Option<LiveWriter>,
    /// What the agent sends, checked against `expect` (what this side sent) on its own thread.
    events: Inbound,
    expect: Arc<Expect>,
    handle: Box<dyn LinkHandle>,
    peer: String,
    /// Events that came while a request waited for its reply, oldest first.
    pending: VecDeque<Event>,
    /// Channels the stream is striped over (`transport/stripe.rs`).
    pub channels: u8,
}

impl Client {
    /// Connects to `target`'s agent for `brick` (`epoch`: the brick's, from its index) and
    /// makes the handshake. Another brick Active for the replica set is `Error::Passive`.
    pub fn connect(
        target: &Target,
        brick: &Brick,
        epoch: u64,
        opts: &SyncOptions,
        mode: &Mode,
    ) -> Result<(Client, Welcome), Error> {
        let transport = target.transport().map_err(Error::from_link)?;
        Client::connect_over(transport.as_ref(), target, brick, epoch, opts, mode)
    }

    /// `connect` over a transport already made (one per run, shared by the bricks).
    pub fn connect_over(
        transport: &dyn Transport,
        target: &Target,
        brick: &Brick,
        epoch: u64,
        opts: &SyncOptions,
        mode: &Mode,
    ) -> Result<(Client, Welcome), Error> {
        let peer = transport.describe();
        let wanted = match mode {
            Mode::Reverse => 1,
            Mode::Replicate { .. } => wanted_channels(opts, target),
        };
        let link = transport
            .connect_with(
                if opts.channels_early {
                    usize::from(wanted - 1)
                } else {
                    0
                },
                opts.channels.is_none(),
            )
            .map_err(Error::from_link)?;
        let mut w = FrameWriter::new(link.writer);
        let mut r = FrameReader::new(link.reader);
        let compression = opts
            .compression
            .unwrap_or(if target.is_local() { 0 } else { 1 });
        let (replica_set, shared_tree) = match mode {
            Mode::Replicate {
                replica_set,
                shared_tree,
            } => (replica_set.clone().unwrap_or_default(), *shared_tree),
            Mode::Reverse => (String::new(), false),
        };
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            georep_version: env!("CARGO_PKG_VERSION").to_string(),
            session: target.session.clone(),
            master_node: brick.node.clone(),
            brick: brick.path.display().to_string(),
            slave_volume: target.volume().to_string(),
            epoch,
            compression,
            replica_set,
            trash_days: opts.trash_retention_days,
            mode: match mode {
                Mode::Reverse => protocol::MODE_REVERSE,
                Mode::Replicate { .. } => protocol::MODE_REPLICATE,
            },
            silence_ms: protocol::silence_for_takeover(opts.takeover_timeout).as_millis() as u32,
            xattrs: crate::xattr::permitted(opts.xattrs),
            channels: if link.handle.stripes() { wanted } else { 1 },
            shared_tree,
        };
        let handshake = (|| -> Result<Welcome, Error> {
            let link = |e: std::io::Error| Error::Link(e.into());
            w.send_preamble().map_err(link)?;
            w.send(&Message::Hello(hello)).map_err(link)?;
            w.flush().map_err(link)?;
            r.expect_preamble().map_err(Error::from_conn)?;
            match r.read().map_err(Error::from_conn)? {
                Some(Message::Welcome(wl)) => Ok(*wl),
                Some(Message::Error(e)) => Err(Error::Refused {
                    message: e.message,
                    permanent: e.permanent,
                }),
                Some(m) => Err(Error::Permanent(anyhow!(
                    "expected Welcome, got {}",
                    m.name()
                ))),
                None => Err(Error::Link(anyhow!(
                    "the agent closed the connection during the handshake"
                ))),
            }
        })();
        let welcome = match handshake {
            Ok(wl) => wl,
            Err(e) => {
                // The agent usually said why; make sure it is gone before we report.
                let mut h = link.handle;
                h.abort();
                return Err(e.context(format!("connecting to {peer}")));
            }
        };
        if let Some(active) = welcome.passive_to.clone() {
            let _ = w.send(&Message::Bye);
            let _ = w.flush();
            return Err(Error::Passive { active });
        }
        check_welcome(&welcome, &peer)?;
        let mut handle = link.handle;
        let channels = match &welcome.join {
            Some(offer) => open_stripe(&mut w, &mut *handle, offer, wanted)
                .with_context(|| format!("striping the stream to {peer}"))
                .map_err(Error::Link)?,
            None => {
                // Channels opened along with the first are closed: their agents end quietly.
                handle.release_channels();
                1
            }
        };
        w.compress(compression).map_err(|e| Error::Link(e.into()))?;
        let mut client = Client::over(w, r, handle, format!("{peer} on {}", welcome.slave_host));
        client.channels = channels;
        client.set_heartbeat(protocol::heartbeat_every(protocol::silence_for_takeover(
            opts.takeover_timeout,
        )));
        Ok((client, welcome))
    }

    /// Takes over a handshaken connection: `r` is read on a thread of its own.
    pub fn over(
        w: FrameWriter,
        r: FrameReader,
        handle: Box<dyn LinkHandle>,
        peer: String,
    ) -> Client {
        let expect = Arc::new(Expect::default());
        let events = Inbound::start(r, expect.clone());
        Client {
            w: Some(LiveWriter::with_protocol_interval(w, {
                let e = expect.clone();
                Box::new(move || e.beat())
            })),
            events,
            expect,
            handle,
            peer,
            pending: VecDeque::new(),
            channels: 1,
        }
    }

    /// The agent and its host, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// What this side has sent that the agent may answer (batches and block-sum asks are
    /// recorded there by the shipper before they go).
    pub fn expect(&self) -> &Expect {
        &self.expect
    }

    /// `expect`, to watch from another thread (tests of the reply budget).
    #[cfg(test)]
    pub(crate) fn shared_expect(&self) -> Arc<Expect> {
        self.expect.clone()
    }

    /// The stream to the agent (frames are written whole under its lock).
    pub fn writer(&self) -> std::sync::MutexGuard<'_, FrameWriter> {
        self.w.as_ref().expect("client used after close").lock()
    }

    pub fn wire_bytes(&self) -> u64 {
        self.w.as_ref().map(|w| w.wire_bytes()).unwrap_or(0)
    }

    /// Heartbeats after `every` of quiet on the link (the agent's silence limit allows it).
    pub fn set_heartbeat(&self, every: Duration) {
        if let Some(w) = &self.w {
            w.set_every(every);
        }
    }

    /// Peak resident memory of the agent so far, when the transport knows it.
    pub fn peak_rss_kb(&self) -> Option<u64> {
        self.handle.peak_rss_kb()
    }

    /// A write to the agent failed: the agent has most likely said why before it went away.
    pub fn write_failed(&mut self, e: std::io::Error) -> anyhow::Error {
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.events.recv_timeout(left) {
                Ok(Event::Msg(Message::Error(m))) => return self.stopped(&m),
                Ok(Event::Closed(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        anyhow!(
            "sending to {} failed: {e}{}; the agent exited or the link broke, run again to resume",
            self.peer,
            self.said()
        )
    }

    /// The agent's `Error`: it stops (a permanent one needs an operator, see `error`).
    pub fn stopped(&self, m: &protocol::ErrorMsg) -> anyhow::Error {
        let said = format!("slave agent ({}) stopped: {}", self.peer, m.message);
        if m.permanent {
            crate::error::Permanent(said).into()
        } else {
            anyhow!(said)
        }
    }

    /// The link closed (`why`, when the reader knows).
    pub fn closed(&self, why: Option<String>) -> anyhow::Error {
        anyhow!(
            "connection to {} closed{}{}; run again to resume",
            self.peer,
            why.map(|w| format!(": {w}")).unwrap_or_default(),
            self.said()
        )
    }

    fn said(&self) -> String {
        self.handle
            .stderr_tail()
            .map(|t| format!(" (agent said: {t})"))
            .unwrap_or_default()
    }

    /// The next event: one kept while a request waited first, else one from the link, waiting
    /// up to `wait`.
    pub fn next_event(&mut self, wait: Duration) -> Result<Event> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(ev);
        }
        match self.events.recv_timeout(wait) {
            Ok(ev) => Ok(ev),
            Err(RecvTimeoutError::Timeout) => bail!(
                "no answer from {} for {} minutes",
                self.peer,
                wait.as_secs() / 60
            ),
            Err(RecvTimeoutError::Disconnected) => bail!("connection to {} lost", self.peer),
        }
    }

    /// An event that is there already, if any.
    pub fn try_event(&mut self) -> Option<Event> {
        self.pending
            .pop_front()
            .or_else(|| self.events.try_recv().ok())
    }

    /// Sends one request frame (between batches) and flushes it.
    pub fn request(&mut self, m: &Message) -> Result<()> {
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

    /// The agent's next answer to a request. Acks and block sums that come first are kept for
    /// `next_event`; heartbeats are dropped; an `Error` or a close ends the connection.
    pub fn reply(&mut self) -> Result<Message> {
        loop {
            match self.events.recv_timeout(ANSWER_WAIT) {
                Ok(Event::Msg(Message::Heartbeat)) => {}
                Ok(Event::Msg(Message::Error(m))) => return Err(self.stopped(&m)),
                Ok(ev @ Event::Msg(Message::Ack(_) | Message::Signature(_))) => {
                    self.pending.push_back(ev)
                }
                Ok(Event::Msg(m)) => return Ok(m),
                Ok(Event::Closed(why)) => return Err(self.closed(why)),
                Err(_) => bail!(
                    "no answer from {} within {} minutes",
                    self.peer,
                    ANSWER_WAIT.as_secs() / 60
                ),
            }
        }
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
                return Err(self.stopped(&m));
            }
        }
        self.handle.close()?;
        Ok(rss)
    }
}

impl Drop for Client {
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
pub fn check_welcome(w: &Welcome, peer: &str) -> Result<(), Error> {
    if w.protocol != PROTOCOL_VERSION {
        return Err(Error::Permanent(anyhow!(
            "{peer} speaks georep protocol {} (georep {}), this master speaks {}: install the same georep version on both sites",
            w.protocol,
            w.georep_version,
            PROTOCOL_VERSION
        )));
    }
    Ok(())
}

/// `channels` as set, or the default: one to a local slave, where there is no window.
fn wanted_channels(opts: &SyncOptions, target: &Target) -> u8 {
    opts.channels
        .unwrap_or(if target.is_local() {
            1
        } else {
            DEFAULT_CHANNELS
        })
        .clamp(1, protocol::MAX_CHANNELS)
}

/// Opens up to `wanted - 1` further channels, joins each to the agent's connection (`offer`),
/// tells the agent how many came, and stripes the stream over them all. Channels the transport
/// cannot open are done without (a warning); returns the channels in use.
fn open_stripe(
    w: &mut FrameWriter,
    handle: &mut dyn LinkHandle,
    offer: &protocol::JoinOffer,
    wanted: u8,
) -> Result<u8> {
    let t = Instant::now();
    let extra = match wanted {
        0 | 1 => Vec::new(),
        n => handle
            .extra_channels(usize::from(n - 1))
            .unwrap_or_else(|e| {
                tracing::warn!("one channel only: {e:#}");
                Vec::new()
            }),
    };
    let mut joined = Vec::with_capacity(extra.len());
    for (i, mut ch) in extra.into_iter().enumerate() {
        let mut buf = protocol::PREAMBLE.to_vec();
        protocol::frame::encode(
            &Message::Join {
                offer: offer.clone(),
                index: i as u8 + 1,
            },
            &mut buf,
        );
        ch.send_vec(buf)?;
        joined.push(ch);
    }
    let channels = 1 + joined.len() as u8;
    w.send(&Message::Stripe { channels })?;
    w.flush()?;
    if channels > 1 {
        w.stripe(joined)?;
    }
    tracing::debug!(
        channels,
        ms = t.elapsed().as_millis() as u64,
        "stream striped"
    );
    Ok(channels)
}
