//! How long the read of a byte stream has been waiting for data: what the agent's silence limit
//! is measured with (a master gone without a FIN reaching the DR side).

use super::conn::BoxRead;
use std::io::{self, Read};
use std::sync::Arc;

/// How long a read of the underlying stream has been waiting for data, shared between the
/// thread that reads and the one that decides the peer is gone.
#[derive(Clone)]
pub struct Silence(Arc<(std::time::Instant, AtomicU64)>, Arc<AtomicU64>);

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

impl Silence {
    /// Wraps `inner`: every read marks when it started waiting, and clears the mark when data
    /// (or the end) arrives. Time spent not reading (the applier is behind) never counts.
    pub fn watch(inner: BoxRead) -> (BoxRead, Silence) {
        let s = Silence(
            Arc::new((std::time::Instant::now(), AtomicU64::new(0))),
            Arc::new(AtomicU64::new(
                crate::protocol::SILENCE_LIMIT.as_millis() as u64
            )),
        );
        (
            Box::new(Watched {
                inner,
                s: s.clone(),
            }),
            s,
        )
    }

    /// Wraps another input of the same peer (a further channel of a stripe), read one at a
    /// time with the first: a wait on either is the peer's silence.
    pub fn watch_also(&self, inner: BoxRead) -> BoxRead {
        Box::new(Watched {
            inner,
            s: self.clone(),
        })
    }

    /// The silence after which the peer is presumed gone (`SILENCE_LIMIT` until the master's
    /// `Hello` sets its own).
    pub fn limit(&self) -> Duration {
        Duration::from_millis(self.1.load(Ordering::Relaxed))
    }

    pub fn set_limit(&self, limit: Duration) {
        self.1.store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// Ends the process once a read has waited `grace` beyond the limit: the thread that reads
    /// gives up at the limit, but one blocked elsewhere (a reply it cannot write because the
    /// link is gone) would keep the volume's locks, and the replica set's Active claim, for
    /// good. Ending the process is a crash the agent is built for: only durable batches were
    /// acknowledged, and every lock goes with it.
    pub fn watchdog(&self, grace: Duration, what: String) {
        let s = self.clone();
        let _ = std::thread::Builder::new()
            .name("silence-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(500));
                let (waited, limit) = (s.waited(), s.limit());
                if waited >= limit + grace {
                    tracing::error!(
                        "no word from {what} for {} s (limit {} s) and this agent did not end on its own: exiting so that its locks go (a retry from the master reconnects)",
                        waited.as_secs(),
                        limit.as_secs()
                    );
                    // Not `process::exit`: its cleanup flushes stdout, which may block on the
                    // dead link too.
                    // SAFETY: `_exit` takes no pointer and never returns.
                    unsafe { libc::_exit(75) };
                }
            });
    }

    /// How long the read in progress has been waiting; zero when none is.
    pub fn waited(&self) -> Duration {
        let since = self.0 .1.load(Ordering::SeqCst);
        if since == 0 {
            return Duration::ZERO;
        }
        let now = self.0 .0.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(since))
    }
}

struct Watched {
    inner: BoxRead,
    s: Silence,
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mark = &self.s.0 .1;
        // +1: zero means "not waiting".
        let started = self.s.0 .0.elapsed().as_millis() as u64 + 1;
        mark.store(started, Ordering::SeqCst);
        let r = self.inner.read(buf);
        mark.store(0, Ordering::SeqCst);
        r
    }
}
