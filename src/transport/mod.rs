//! Transports: how the master reaches an agent. Every transport yields the same pair of byte
//! streams; nothing above this layer knows which one is in use.
//!
//! Invariant: a `Link`'s reader and writer are used from different threads, so a peer that is
//! slow to read can never stall the acks coming back (russh re-opens a window when data arrives,
//! not when it is read).

pub mod authkeys;
pub mod conn;
pub mod delay;
pub mod local;
pub mod readahead;
pub mod segment;
pub mod serve;
pub mod silence;
pub mod ssh;
pub mod stripe;

use anyhow::Result;
use conn::{BoxRead, BoxWrite};

/// An open connection to an agent.
pub struct Link {
    pub reader: BoxRead,
    pub writer: BoxWrite,
    pub handle: Box<dyn LinkHandle>,
}

/// Lifecycle of the thing behind a link (a child process, an SSH channel).
pub trait LinkHandle: Send {
    /// Waits for the peer to finish after the writer was closed; errors if it failed.
    fn close(&mut self) -> Result<()>;
    /// Ends the peer at once.
    fn abort(&mut self);
    /// Peak resident memory of the peer so far in KiB, when known (call before `close`).
    fn peak_rss_kb(&self) -> Option<u64> {
        None
    }
    /// The last lines the peer wrote to stderr, for errors where it said nothing in-band.
    fn stderr_tail(&self) -> Option<String> {
        None
    }
    /// Opens up to `n` further channels to the same peer running the same agent, for a
    /// stripe (`stripe.rs`); returns the writers of those that opened (none where the transport
    /// has only one channel: the local child).
    fn extra_channels(&mut self, _n: usize) -> Result<Vec<BoxWrite>> {
        Ok(Vec::new())
    }
    /// Whether this link may be striped (`extra_channels` can give any): not a local child,
    /// not a short SSH link under `channels auto`.
    fn stripes(&self) -> bool {
        false
    }
    /// Closes the channels opened along with the first (`Transport::connect_with`) that will
    /// not be used (the agent offered no stripe).
    fn release_channels(&mut self) {}
}

pub trait Transport: Send + Sync {
    fn connect(&self) -> Result<Link>;
    /// Connects, opening `extra` further channels along (for `LinkHandle::extra_channels` to
    /// take): on a long link they are ready when the handshake on the first is done. `auto`:
    /// the number was not set, and the transport stripes only where it pays (a long link). The
    /// default opens none.
    fn connect_with(&self, _extra: usize, _auto: bool) -> Result<Link> {
        self.connect()
    }
    /// Where this transport leads, for messages (`local agent for /data/dr`, `dr1:22`).
    fn describe(&self) -> String;
}
