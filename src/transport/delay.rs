//! `georep delay-proxy`: a TCP relay on loopback that delays every byte by a fixed time each
//! way, as a long link does, for `scripts/bench.sh wan` (this kernel has no netem). Data is
//! timestamped as it arrives and passed on when due, so throughput is not limited by the
//! delay: only by what the endpoints allow in flight (an SSH channel's window), as on a WAN.

use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

/// Chunks queued per direction at most (of up to 256 KiB: 1 GiB in flight at most).
const QUEUE: usize = 4096;

/// Relays every connection to `listen` on to `connect`, `delay` late each way, until killed;
/// `listening` is told the address once it is bound.
pub fn run(
    listen: &str,
    connect: &str,
    delay: Duration,
    listening: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    listening(l.local_addr()?);
    for down in l.incoming() {
        let down = down?;
        let up = TcpStream::connect(connect).with_context(|| format!("connecting to {connect}"))?;
        for s in [&down, &up] {
            s.set_nodelay(true)?;
        }
        pump(down.try_clone()?, up.try_clone()?, delay);
        pump(up, down, delay);
    }
    Ok(())
}

/// Bytes from `from` reach `to` `delay` after they arrived; the close too.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(QUEUE);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = from.read(&mut buf).unwrap_or(0);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
                || n == 0
            {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, data) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            if data.is_empty() || to.write_all(&data).is_err() {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
        }
    });
}
