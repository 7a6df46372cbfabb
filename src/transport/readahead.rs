//! The agent's read-ahead: the master's stream decoded on a thread of its own, up to a byte
//! budget ahead of the applier.
//!
//! Invariant: at most about the budget's bytes of decoded messages are queued (a group larger
//! than the whole budget goes alone), and the thread ends once the applier is gone.

use super::conn::{ConnError, FrameReader, Silence};
use crate::protocol::Message;
use std::io;
use std::sync::{mpsc, Arc, Condvar, Mutex};

/// Decodes frames on a thread of its own, up to a byte budget ahead.
///
/// The agent reads the master's stream this way: the process writing into its input (sshd, the
/// embedded server, a pipe) is drained and the frames are checked and decompressed while the
/// agent's own thread hashes and writes to disk. Messages travel in groups (everything already
/// buffered, up to `AHEAD_GROUP_BYTES`), so a stream of small ops costs one hand-over per group.
///
/// The bound is in bytes, not groups: when the input arrives in small pieces (many small files)
/// the groups are small too, and a bound of a few groups let the input pipe fill up. A full pipe
/// makes sshd queue the channel's data in a buffer that it grows, copies and zeroes over and over
/// (sshd used three times the CPU of the whole transfer that way, measured on 10,000 small files).
pub struct ReadAhead {
    rx: mpsc::Receiver<(Result<Vec<Message>, ConnError>, usize)>,
    group: std::vec::IntoIter<Message>,
    /// Budget bytes held by `group`, given back when the next group is taken.
    held: usize,
    budget: Arc<Budget>,
    done: bool,
}

/// Bytes of decoded messages queued between the read-ahead thread and the applier.
struct Budget {
    /// Bytes queued, and whether the applier is gone (nothing will be freed any more).
    used: Mutex<(usize, bool)>,
    freed: Condvar,
    max: usize,
}

impl Budget {
    /// Waits until `n` more bytes fit (a group larger than the whole budget goes alone); false
    /// when the applier is gone.
    fn take(&self, n: usize) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while !used.1 && used.0 > 0 && used.0 + n > self.max {
            used = self.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        used.0 += n;
        !used.1
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.used.lock().unwrap_or_else(|e| e.into_inner()).0 -= n;
            self.freed.notify_one();
        }
    }

    fn close(&self) {
        self.used.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.freed.notify_one();
    }
}

/// A group is handed over once it holds this many bytes of content.
const AHEAD_GROUP_BYTES: usize = 1 << 20;
const AHEAD_GROUP_MSGS: usize = 1024;

impl ReadAhead {
    /// Reads `r` on a new thread, holding at most about `max_bytes` of decoded messages.
    pub fn spawn(mut r: FrameReader, max_bytes: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let budget = Arc::new(Budget {
            used: Mutex::new((0, false)),
            freed: Condvar::new(),
            max: max_bytes,
        });
        let b = budget.clone();
        std::thread::Builder::new()
            .name("read-ahead".into())
            .spawn(move || loop {
                let mut group = Vec::new();
                let mut bytes = 0;
                let end = loop {
                    match r.read() {
                        Ok(Some(m)) => {
                            bytes += m.weight();
                            group.push(m);
                            if bytes >= AHEAD_GROUP_BYTES
                                || group.len() >= AHEAD_GROUP_MSGS
                                || !r.frame_buffered()
                            {
                                break None;
                            }
                        }
                        Ok(None) => break Some(Ok(())),
                        Err(e) => break Some(Err(e)),
                    }
                };
                if !group.is_empty() {
                    // The applier is gone: nothing will read or free any more.
                    if !b.take(bytes) || tx.send((Ok(group), bytes)).is_err() {
                        return;
                    }
                }
                match end {
                    None => {}
                    Some(Ok(())) => return,
                    Some(Err(e)) => {
                        let _ = tx.send((Err(e), 0));
                        return;
                    }
                }
            })?;
        Ok(ReadAhead {
            rx,
            group: Vec::new().into_iter(),
            held: 0,
            budget,
            done: false,
        })
    }

    /// Next message; `Ok(None)` on a clean close (as `FrameReader::read`).
    pub fn read(&mut self) -> Result<Option<Message>, ConnError> {
        self.read_within(None)
    }

    /// As `read`, but `ConnError::Silent` once the stream has been waited on for `limit`
    /// without a byte arriving (`silence` watches the stream under the `FrameReader`).
    pub fn read_within(
        &mut self,
        watch: Option<(&Silence, std::time::Duration)>,
    ) -> Result<Option<Message>, ConnError> {
        loop {
            if let Some(m) = self.group.next() {
                return Ok(Some(m));
            }
            if self.done {
                return Ok(None);
            }
            self.budget.give(std::mem::take(&mut self.held));
            let got = match watch {
                None => self.rx.recv().map_err(|_| ()),
                Some((silence, limit)) => loop {
                    let tick = (limit / 10).max(std::time::Duration::from_millis(10));
                    match self.rx.recv_timeout(tick) {
                        Ok(g) => break Ok(g),
                        Err(mpsc::RecvTimeoutError::Disconnected) => break Err(()),
                        Err(mpsc::RecvTimeoutError::Timeout) if silence.waited() >= limit => {
                            return Err(ConnError::Silent(limit))
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                    }
                },
            };
            match got {
                Ok((g, bytes)) => {
                    self.held = bytes;
                    self.group = g?.into_iter();
                }
                Err(()) => self.done = true,
            }
        }
    }
}

impl Drop for ReadAhead {
    /// The read-ahead thread may be waiting for budget that only this side frees.
    fn drop(&mut self) {
        self.budget.close();
    }
}
