//! A TCP relay on loopback that sits in the SSH path and misbehaves on demand, as links do:
//! it cuts connections (both sides see the close), or blackholes them (half-open: nothing
//! more is delivered either way and neither side ever hears of it, as with a NAT timeout, a
//! pulled cable or a partition). New connections after a fault pass normally. It can also
//! stall the whole path for a while (nothing moves, nothing is lost: the data waits in the
//! buffers, as behind a congested or flapping link) and delay what it relays (a long link).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Conn {
    down: TcpStream,
    up: TcpStream,
    frozen: Arc<AtomicBool>,
}

/// What every relayed connection obeys, old and new.
#[derive(Clone, Default)]
struct Path {
    /// Nothing is read or passed on while set.
    stalled: Arc<AtomicBool>,
    /// Each chunk waits this long before it is passed on.
    delay_ms: Arc<AtomicU64>,
}

pub struct Proxy {
    pub port: u16,
    path: Path,
    conns: Arc<Mutex<Vec<Conn>>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Blackholed connections are kept here, open, until the proxy goes.
    held: Vec<Conn>,
}

impl Proxy {
    /// Relays 127.0.0.1:<port> to 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let path = Path::default();
        let (c, a, s, pa) = (conns.clone(), accepted.clone(), stop.clone(), path.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let down = match listener.accept() {
                    Ok((d, _)) => d,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                down.set_nonblocking(false).unwrap();
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let frozen = Arc::new(AtomicBool::new(false));
                pump(
                    down.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    frozen.clone(),
                    pa.clone(),
                );
                pump(
                    up.try_clone().unwrap(),
                    down.try_clone().unwrap(),
                    frozen.clone(),
                    pa.clone(),
                );
                c.lock().unwrap().push(Conn { down, up, frozen });
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        Proxy {
            port,
            path,
            conns,
            accepted,
            stop,
            held: Vec::new(),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Every open connection goes silent in both directions, for good; neither end is told.
    pub fn blackhole(&mut self) -> usize {
        let conns: Vec<Conn> = self.conns.lock().unwrap().drain(..).collect();
        let n = conns.len();
        for c in &conns {
            c.frozen.store(true, Ordering::SeqCst);
        }
        self.held.extend(conns);
        n
    }

    /// Stalls the whole path (every connection, and new ones) or lets it go again: nothing is
    /// lost, it waits.
    pub fn stall(&self, on: bool) {
        self.path.stalled.store(on, Ordering::SeqCst);
    }

    /// Delays every chunk relayed from now on by `ms` (each way).
    pub fn delay(&self, ms: u64) {
        self.path.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Every open connection is closed on both sides, as a reset link would be.
    pub fn cut(&mut self) -> usize {
        let conns: Vec<Conn> = self.conns.lock().unwrap().drain(..).collect();
        for c in &conns {
            c.frozen.store(true, Ordering::SeqCst);
            let _ = c.down.shutdown(Shutdown::Both);
            let _ = c.up.shutdown(Shutdown::Both);
        }
        conns.len()
    }
}

/// Copies `from` to `to` until the end, or until `frozen`: then nothing more is delivered
/// and the end, if it comes, is not passed on either.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>, path: Path) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if frozen.load(Ordering::SeqCst) {
                // Stop reading too: the sender's window fills, as on a dead path.
                std::thread::sleep(Duration::from_secs(3600));
                return;
            }
            while path.stalled.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if !frozen.load(Ordering::SeqCst) {
                        let _ = to.shutdown(Shutdown::Write);
                    }
                    return;
                }
                Ok(n) => {
                    let delay = path.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        std::thread::sleep(Duration::from_millis(delay));
                    }
                    while path.stalled.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if frozen.load(Ordering::SeqCst) {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self
            .held
            .drain(..)
            .chain(self.conns.lock().unwrap().drain(..))
        {
            let _ = c.down.shutdown(Shutdown::Both);
            let _ = c.up.shutdown(Shutdown::Both);
        }
    }
}
