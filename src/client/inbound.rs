//! What the agent sends back, read on a thread of its own and checked against what the master
//! asked for before it is queued, so that a broken or hostile DR side cannot make the master's
//! memory grow (review hole 8 of issue 13: the queue was unbounded).
//!
//! Invariants:
//! - Every message answers something the master sent: an `Ack` the oldest unacknowledged batch,
//!   a `Failed` an op of a batch in flight (at most one per op), a `Heartbeat` a heartbeat,
//!   and a reply (`Listing`, fetched content, `ChangedPaths`, …) a request whose end has not
//!   come. Anything else ends the connection, naming what came.
//! - Replies wait on the reader thread while more than [`REPLY_BUDGET`] bytes of them are
//!   queued. The shipping thread is then waiting for the end of that same reply, so it drains
//!   them: this cannot deadlock. Other messages never wait (the shipping thread may be blocked
//!   writing to an agent that is blocked writing them); they are bounded by what is in flight
//!   instead: the window's batches' ops, and free text cut to [`TEXT_LIMIT`].

use crate::protocol::Message;
use crate::transport::conn::FrameReader;
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of replies queued at most before the reader waits for the shipping thread.
pub const REPLY_BUDGET: usize = 64 << 20;
/// Free text (an error, a failure's message) kept per message; the rest is cut.
pub const TEXT_LIMIT: usize = 1024;
/// `Error` messages accepted on one connection (an agent sends one, then closes).
const MAX_ERRORS: u32 = 4;

/// What comes back from the agent.
pub enum Event {
    Msg(Message),
    Closed(Option<String>),
}

/// What the master has sent that the agent may answer; shared by the shipping thread (which
/// records what it sends) and the reader (which checks what comes back).
#[derive(Default)]
pub struct Expect {
    state: Mutex<State>,
    room: Condvar,
}

#[derive(Default)]
struct State {
    /// Batches sent and not yet acknowledged: id, ops declared, failures reported.
    batches: VecDeque<(u64, u32, u32)>,
    /// Requests whose last reply has not come, and how many of them are fetches.
    requests: u32,
    /// Signature asks whose last part has not come, by token, with the sums each may still
    /// bring (its `max_sums`): bounded by what was asked, so never charged to the reply budget.
    sig_asks: std::collections::HashMap<u64, u64>,
    fetches: u32,
    beats_sent: u64,
    beats_got: u64,
    errors: u32,
    /// Bytes of replies queued and not yet taken by the shipping thread.
    queued: usize,
    /// The shipping side is gone: nothing waits for room any more.
    closed: bool,
}

impl Expect {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch of `ops` wire ops is about to be sent.
    pub fn batch(&self, id: u64, ops: u32) {
        self.lock().batches.push_back((id, ops, 0));
    }

    /// A request (List, Fetch, Changes, Demote) is about to be sent.
    pub fn request(&self, m: &Message) {
        let mut s = self.lock();
        s.requests += 1;
        if matches!(m, Message::Fetch { .. }) {
            s.fetches += 1;
        }
    }

    /// Signature asks are about to be sent.
    pub fn sig_asks(&self, asks: &[crate::protocol::SigAsk]) {
        let mut s = self.lock();
        for a in asks {
            s.sig_asks.insert(a.token, a.max_sums as u64);
        }
    }

    /// A heartbeat is about to be sent.
    pub fn beat(&self) {
        self.lock().beats_sent += 1;
    }

    /// The shipping side is done: a reader waiting for room stops waiting.
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
    }

    /// Checks `m` against what was asked; the message to queue (free text cut) and the reply
    /// bytes it is charged, or why the connection must end. Waits for room for a reply.
    fn admit(&self, m: Message) -> Result<(Message, usize), String> {
        let mut s = self.lock();
        let unasked = |what: &str| {
            Err(format!(
                "the agent sent {what}, which the master did not ask for: a broken or hostile DR side"
            ))
        };
        let reply_end = match &m {
            Message::Ack(a) => {
                return match s.batches.front() {
                    Some(&(id, _, _)) if id == a.id => {
                        s.batches.pop_front();
                        Ok((m, 0))
                    }
                    _ => unasked(&format!("an Ack of batch {}", a.id)),
                };
            }
            Message::Failed(f) if s.fetches == 0 => {
                let Some(b) = s.batches.iter_mut().find(|b| b.0 == f.batch) else {
                    return unasked(&format!("a failure in batch {}", f.batch));
                };
                if f.op >= b.1 || b.2 >= b.1 {
                    return unasked(&format!(
                        "a failure of op {} in batch {} of {} ops, its {}th",
                        f.op,
                        f.batch,
                        b.1,
                        b.2 + 1
                    ));
                }
                b.2 += 1;
                let mut f = f.clone();
                cut(&mut f.message);
                return Ok((Message::Failed(f), 0));
            }
            Message::Signature(sig) => {
                let n = (sig.sums.len() / crate::delta::SUM_LEN) as u64;
                let Some(left) = s.sig_asks.get_mut(&sig.token) else {
                    return unasked(&format!("a signature for ask {}", sig.token));
                };
                if n > *left {
                    return unasked(&format!("more block sums than ask {} allows", sig.token));
                }
                *left -= n;
                if sig.done.is_some() {
                    s.sig_asks.remove(&sig.token);
                }
                return Ok((m, 0));
            }
            Message::Heartbeat => {
                if s.beats_got >= s.beats_sent {
                    return unasked("a heartbeat");
                }
                s.beats_got += 1;
                return Ok((m, 0));
            }
            Message::Error(e) => {
                s.errors += 1;
                if s.errors > MAX_ERRORS {
                    return unasked("error after error");
                }
                let mut e = e.clone();
                cut(&mut e.message);
                return Ok((Message::Error(e), 0));
            }
            Message::Listing(_)
            | Message::FileBegin(_)
            | Message::Chunk(_)
            | Message::FileEnd(_)
            | Message::Failed(_)
            | Message::ChangedPaths(_) => false,
            Message::ListEnd { .. }
            | Message::FetchEnd
            | Message::ChangesEnd { .. }
            | Message::Demoted { .. } => true,
            m => return unasked(m.name()),
        };
        if s.requests == 0 {
            return unasked(m.name());
        }
        let weight = m.weight();
        while s.queued > 0 && s.queued + weight > REPLY_BUDGET && !s.closed {
            s = self.room.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.queued += weight;
        if reply_end {
            s.requests -= 1;
            if matches!(m, Message::FetchEnd) {
                s.fetches = s.fetches.saturating_sub(1);
            }
        }
        Ok((m, weight))
    }

    /// Bytes of replies waiting to be taken.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().queued
    }

    fn taken(&self, weight: usize) {
        if weight > 0 {
            let mut s = self.lock();
            s.queued -= weight;
            drop(s);
            self.room.notify_all();
        }
    }
}

/// Cuts `text` to [`TEXT_LIMIT`] bytes, on a character boundary.
fn cut(text: &mut String) {
    if text.len() > TEXT_LIMIT {
        let mut at = TEXT_LIMIT;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
        text.push_str(" […]");
    }
}

/// The receiving end: events in the order the agent sent them.
pub struct Inbound {
    rx: Receiver<(Event, usize)>,
    expect: Arc<Expect>,
    reader: Option<JoinHandle<()>>,
}

impl Inbound {
    /// Reads `r` on a thread of its own, checking every message against `expect`.
    pub fn start(mut r: FrameReader, expect: Arc<Expect>) -> Inbound {
        let (tx, rx) = std::sync::mpsc::channel();
        let e = expect.clone();
        let reader = std::thread::spawn(move || {
            let send = |tx: &Sender<(Event, usize)>, ev, w| tx.send((ev, w)).is_ok();
            loop {
                let closed = match r.read() {
                    Ok(Some(m)) => match e.admit(m) {
                        Ok((m, w)) => {
                            if !send(&tx, Event::Msg(m), w) {
                                return;
                            }
                            continue;
                        }
                        Err(why) => Some(why),
                    },
                    Ok(None) => None,
                    Err(err) => Some(err.to_string()),
                };
                send(&tx, Event::Closed(closed), 0);
                return;
            }
        });
        Inbound {
            rx,
            expect,
            reader: Some(reader),
        }
    }

    fn took(&self, (ev, w): (Event, usize)) -> Event {
        self.expect.taken(w);
        ev
    }

    pub fn try_recv(&self) -> Result<Event, TryRecvError> {
        self.rx.try_recv().map(|x| self.took(x))
    }

    pub fn recv_timeout(&self, d: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(d).map(|x| self.took(x))
    }

    /// Waits for the reader to end (the agent closed the connection) and returns what it
    /// left queued.
    pub fn finish(&mut self) -> Vec<Event> {
        // Nothing takes replies any more: a reader waiting for room reads on to the end.
        self.expect.close();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.rx.try_iter().map(|(ev, _)| ev).collect()
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        self.expect.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Ack, ErrorMsg, Failed, RelPath};

    fn failed(batch: u64, op: u32) -> Message {
        Message::Failed(Failed {
            batch,
            op,
            path: RelPath::new(b"x").unwrap(),
            errno: 5,
            message: "m".repeat(100_000),
        })
    }

    #[test]
    fn signatures_are_admitted_only_for_open_asks_and_within_their_sums() {
        let e = Expect::default();
        let sig = |token, n: usize, done| {
            Message::Signature(crate::protocol::Signature {
                token,
                block: 2048,
                sums: vec![0; n * crate::delta::SUM_LEN],
                done,
            })
        };
        assert!(e.admit(sig(1, 1, None)).is_err(), "nothing asked");
        e.sig_asks(&[crate::protocol::SigAsk {
            token: 1,
            path: RelPath::new(b"f").unwrap(),
            max_sums: 3,
        }]);
        assert!(e.admit(sig(2, 1, None)).is_err(), "another token");
        assert!(e.admit(sig(1, 2, None)).is_ok());
        assert!(
            e.admit(sig(1, 2, None)).is_err(),
            "more sums than asked for"
        );
        assert!(e.admit(sig(1, 1, Some(Some(6000)))).is_ok());
        assert!(e.admit(sig(1, 0, None)).is_err(), "after its end");
    }

    #[test]
    fn only_what_was_asked_is_admitted() {
        let e = Expect::default();
        assert!(e.admit(Message::Ack(Ack { id: 1 })).is_err());
        e.batch(1, 2);
        e.batch(2, 1);
        assert!(
            e.admit(Message::Ack(Ack { id: 2 })).is_err(),
            "out of order"
        );
        assert!(e.admit(failed(1, 0)).is_ok());
        assert!(e.admit(failed(1, 1)).is_ok());
        assert!(e.admit(failed(1, 1)).is_err(), "more failures than ops");
        assert!(e.admit(failed(2, 1)).is_err(), "no such op");
        assert!(e.admit(failed(3, 0)).is_err(), "no such batch");
        assert!(e.admit(Message::Ack(Ack { id: 1 })).is_ok());
        assert!(e.admit(Message::Heartbeat).is_err());
        e.beat();
        assert!(e.admit(Message::Heartbeat).is_ok());
        assert!(e.admit(Message::Heartbeat).is_err());
        assert!(e.admit(Message::Listing(Vec::new())).is_err());
        assert!(e.admit(Message::Bye).is_err(), "never sent by an agent");
        e.request(&Message::Demote);
        assert!(e.admit(Message::Demoted { epoch: 1 }).is_ok());
        assert!(
            e.admit(Message::Demoted { epoch: 1 }).is_err(),
            "answered once"
        );
    }

    #[test]
    fn free_text_is_cut() {
        let e = Expect::default();
        e.batch(1, 1);
        let Ok((Message::Failed(f), _)) = e.admit(failed(1, 0)) else {
            panic!()
        };
        assert!(f.message.len() < TEXT_LIMIT + 8);
        let long = Message::Error(ErrorMsg {
            message: "é".repeat(5000),
            permanent: false,
        });
        let Ok((Message::Error(m), _)) = e.admit(long) else {
            panic!()
        };
        assert!(m.message.len() <= TEXT_LIMIT + 8);
    }

    /// A reply waits while the budget is used, and goes on once the shipping side takes some.
    #[test]
    fn replies_wait_for_room() {
        let e = Arc::new(Expect::default());
        e.request(&Message::Fetch { paths: Vec::new() });
        let chunk = || Message::Chunk(vec![0u8; 1 << 20]);
        let mut charged = Vec::new();
        while e.lock().queued + chunk().weight() <= REPLY_BUDGET {
            charged.push(e.admit(chunk()).unwrap().1);
        }
        let e2 = e.clone();
        let t = std::thread::spawn(move || e2.admit(chunk()).map(|x| x.1));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished(), "a reply over the budget waits");
        e.taken(charged.pop().unwrap());
        assert!(t.join().unwrap().is_ok());
        // Closing frees a waiter too.
        let e3 = e.clone();
        let t = std::thread::spawn(move || e3.admit(chunk()).map(|x| x.1));
        std::thread::sleep(Duration::from_millis(50));
        e.close();
        assert!(t.join().unwrap().is_ok());
    }
}
