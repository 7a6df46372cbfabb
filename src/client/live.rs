//! The master's half of connection liveness: a writer that sends `Heartbeat` (after flushing
//! what is buffered) whenever no byte has reached the transport for a while
//! (`protocol::heartbeat_every` of the silence limit the master asked for), from a thread of its
//! own, so that a master busy elsewhere (a long walk, hashing a large file, waiting for acks)
//! still shows the agent it is alive. The agent gives up a connection that stays silent for
//! the limit (a half-open link: NAT timeout, cable, partition), which frees the volume's brick
//! lock for the master's next connection, and the replica set's Active lock for another brick.
//!
//! Invariant: frames are only ever written whole under the mutex, so a heartbeat can only fall
//! between two frames; the agent accepts `Heartbeat` anywhere, inside a batch or a file too.

use crate::protocol::{self, Message};
use crate::transport::conn::FrameWriter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Inner {
    w: Mutex<FrameWriter>,
    stop: AtomicBool,
    /// The quiet after which a heartbeat goes out, in ms.
    every_ms: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, FrameWriter> {
        self.w.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct LiveWriter {
    inner: Arc<Inner>,
    beat: Option<JoinHandle<()>>,
}

impl LiveWriter {
    /// Takes over `w` and starts heartbeating every `every` of quiet.
    #[cfg(test)]
    pub fn new(w: FrameWriter, every: Duration) -> LiveWriter {
        LiveWriter::with_hook(w, every, Box::new(|| {}))
    }

    /// The same, calling `before_beat` before each heartbeat is written (the agent answers
    /// each: the reader of its replies counts them).
    pub fn with_hook(
        w: FrameWriter,
        every: Duration,
        before_beat: Box<dyn Fn() + Send>,
    ) -> LiveWriter {
        let inner = Arc::new(Inner {
            w: Mutex::new(w),
            stop: AtomicBool::new(false),
            every_ms: AtomicU64::new(every.as_millis() as u64),
        });
        let i = inner.clone();
        let beat = std::thread::Builder::new()
            .name("heartbeat".into())
            .spawn(move || {
                // What counts is bytes reaching the transport, not frames queued: a batch of
                // small ops can sit in the writer's buffer for a long time.
                let (mut wire, mut moved) = (0u64, Instant::now());
                loop {
                    let every = Duration::from_millis(i.every_ms.load(Ordering::Relaxed));
                    std::thread::park_timeout((every / 5).max(Duration::from_millis(10)));
                    if i.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // Held by the shipping thread: it is writing; look again next tick.
                    let Ok(mut w) = i.w.try_lock() else { continue };
                    if w.wire_bytes() != wire {
                        (wire, moved) = (w.wire_bytes(), Instant::now());
                        continue;
                    }
                    if moved.elapsed() < every {
                        continue;
                    }
                    // Pushes out whatever is buffered, with a heartbeat after it.
                    before_beat();
                    let sent = w.send(&Message::Heartbeat).and_then(|()| w.flush());
                    (wire, moved) = (w.wire_bytes(), Instant::now());
                    drop(w);
                    if let Err(e) = sent {
                        // The shipping thread meets the same error on its next write or read.
                        tracing::debug!("heartbeat not sent: {e}");
                        return;
                    }
                }
            })
            .ok();
        LiveWriter { inner, beat }
    }

    pub fn with_protocol_interval(w: FrameWriter, before_beat: Box<dyn Fn() + Send>) -> LiveWriter {
        LiveWriter::with_hook(w, protocol::HEARTBEAT_EVERY, before_beat)
    }

    /// Heartbeats after `every` of quiet from now on.
    pub fn set_every(&self, every: Duration) {
        let ms = every.as_millis().max(1) as u64;
        self.inner.every_ms.store(ms, Ordering::Relaxed);
    }

    /// The writer, for frames.
    pub fn lock(&self) -> MutexGuard<'_, FrameWriter> {
        self.inner.lock()
    }

    pub fn wire_bytes(&self) -> u64 {
        self.inner.lock().wire_bytes()
    }

    fn stop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.beat.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }

    /// Stops heartbeating and gives the writer back.
    pub fn into_inner(mut self) -> FrameWriter {
        self.stop();
        let inner = std::mem::replace(
            &mut self.inner,
            Arc::new(Inner {
                w: Mutex::new(FrameWriter::new(Box::new(std::io::sink()))),
                stop: AtomicBool::new(true),
                every_ms: AtomicU64::new(0),
            }),
        );
        match Arc::try_unwrap(inner) {
            Ok(i) => i.w.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => unreachable!("the heartbeat thread has ended"),
        }
    }
}

impl Drop for LiveWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{self, Decoded};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn heartbeats(out: &Shared) -> usize {
        let buf = out.0.lock().unwrap().clone();
        let mut b = &buf[..];
        let mut n = 0;
        while let Ok(Decoded::Frame(m, used)) = frame::decode(b) {
            n += usize::from(m == Message::Heartbeat);
            b = &b[used..];
        }
        n
    }

    #[test]
    fn beats_only_when_quiet() {
        let out = Shared::default();
        let w = LiveWriter::new(
            FrameWriter::new(Box::new(out.clone())),
            Duration::from_millis(100),
        );
        // Busy: a frame every 20 ms, no heartbeat needed.
        for _ in 0..15 {
            let mut g = w.lock();
            g.send(&Message::Bye).unwrap();
            g.flush().unwrap();
            drop(g);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(heartbeats(&out), 0);
        // Quiet: about one every 100 ms.
        std::thread::sleep(Duration::from_millis(550));
        let n = heartbeats(&out);
        assert!((3..=6).contains(&n), "{n} heartbeats in 550 ms");
        let fw = w.into_inner();
        drop(fw);
        let after = heartbeats(&out);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(heartbeats(&out), after, "still beating after into_inner");
    }

    /// Review finding: frames queued in the writer's buffer (small ops of a long batch) are not
    /// a sign of life; nothing reached the agent. The heartbeat flushes them out.
    #[test]
    fn frames_stuck_in_the_buffer_do_not_suppress_the_heartbeat() {
        let out = Shared::default();
        let w = LiveWriter::new(
            FrameWriter::new(Box::new(out.clone())),
            Duration::from_millis(100),
        );
        for _ in 0..20 {
            w.lock().send(&Message::Bye).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(heartbeats(&out) >= 2, "{} heartbeats", heartbeats(&out));
        drop(w);
    }
}
