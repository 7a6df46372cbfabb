//! One connection's stream striped over several channels: a long link's throughput is bounded
//! by each SSH channel's window (OpenSSH offers 2 MiB: about 17 MiB/s at 113 ms), so the master
//! sends its frame stream in pieces, round-robin over N channels, and the agent reads them back
//! in the same order. The stream above is unchanged: op order, acks, heartbeats and the agent's
//! silence limit work exactly as over one channel.
//!
//! Wire format, below compression: each piece is a 4-byte little-endian length and that many
//! bytes; piece k travels on channel k mod N. Pieces are what the frame writer hands over (up
//! to a segment, 1 MiB), so every channel has whole pieces in flight at once.
//!
//! Invariant: the reader takes piece k only from channel k mod N, so a channel that lags holds
//! the stream back but can never reorder it; a channel that ends or fails ends the stream with
//! an error naming it (the master says `Bye` before it closes: a striped stream never ends
//! on its own; over one channel, an end at a piece boundary is the stream's end).

use super::conn::{BoxRead, BoxWrite, Sink};
use std::io::{self, Read};

/// The master's side: hands each buffer to the next channel in turn, with its length first.
pub struct StripedSink {
    channels: Vec<BoxWrite>,
    next: usize,
}

/// A piece at least this big goes out as it is, after a separate header; a smaller one is
/// copied behind its header into one buffer (one packet for a heartbeat or a single op).
const COPY_BELOW: usize = 64 << 10;

impl StripedSink {
    /// `channels[0]` is the connection's own; the rest joined it.
    pub fn new(channels: Vec<BoxWrite>) -> Self {
        assert!(!channels.is_empty(), "a stripe needs a channel");
        StripedSink { channels, next: 0 }
    }

    fn turn(&mut self) -> &mut BoxWrite {
        let i = self.next;
        self.next = (self.next + 1) % self.channels.len();
        &mut self.channels[i]
    }
}

fn header(len: usize) -> io::Result<[u8; 4]> {
    u32::try_from(len)
        .map(u32::to_le_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "stripe piece over 4 GiB"))
}

impl Sink for StripedSink {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut piece = Vec::with_capacity(4 + buf.len());
        piece.extend_from_slice(&header(buf.len())?);
        piece.extend_from_slice(buf);
        self.turn().send_vec(piece).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        for c in &mut self.channels {
            c.flush()?;
        }
        Ok(())
    }

    fn send_vec(&mut self, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        if buf.len() < COPY_BELOW {
            self.write_all(&buf)?;
            return Ok(buf);
        }
        let hdr = header(buf.len())?;
        let ch = self.turn();
        ch.write_all(&hdr)?;
        ch.send_vec(buf)
    }
}

/// The agent's side: reads the pieces back from the channels in turn.
pub struct StripedReader {
    channels: Vec<BoxRead>,
    /// Whose turn it is.
    cur: usize,
    /// Bytes of the current piece not yet read.
    left: u32,
}

impl StripedReader {
    pub fn new(channels: Vec<BoxRead>) -> Self {
        assert!(!channels.is_empty(), "a stripe needs a channel");
        StripedReader {
            channels,
            cur: 0,
            left: 0,
        }
    }

    /// Reads the next piece's header; `false` on a clean end (the channel whose turn it is
    /// closed at a piece boundary).
    fn next_piece(&mut self) -> io::Result<bool> {
        let mut hdr = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.channels[self.cur].read(&mut hdr[got..]) {
                Ok(0) if got == 0 && self.channels.len() == 1 => return Ok(false),
                Ok(0) if got == 0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "channel {} of the stripe of {} closed",
                            self.cur,
                            self.channels.len()
                        ),
                    ))
                }
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("channel {} of the stripe closed inside a piece", self.cur),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.left = u32::from_le_bytes(hdr);
        if self.left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an empty piece on channel {} of the stripe", self.cur),
            ));
        }
        Ok(true)
    }
}

impl Read for StripedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.left == 0 && !self.next_piece()? {
            return Ok(0);
        }
        let want = out.len().min(self.left as usize);
        let n = loop {
            match self.channels[self.cur].read(&mut out[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "channel {} of the stripe closed with {} bytes of a piece to come",
                    self.cur, self.left
                ),
            ));
        }
        self.left -= n as u32;
        if self.left == 0 {
            self.cur = (self.cur + 1) % self.channels.len();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Reads a few bytes at a time, like a pipe that is slow to fill.
    struct Trickle(io::Cursor<Vec<u8>>, usize);
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.1);
            self.0.read(&mut out[..n])
        }
    }

    fn stripe(n: usize, pieces: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let outs: Vec<Shared> = (0..n).map(|_| Shared::default()).collect();
        let mut s = StripedSink::new(
            outs.iter()
                .map(|o| Box::new(o.clone()) as BoxWrite)
                .collect(),
        );
        for p in pieces {
            // Big pieces take the no-copy path, small ones the copy.
            if p.len() % 2 == 0 {
                let back = s.send_vec(p.clone()).unwrap();
                assert!(back.is_empty() || back == *p);
            } else {
                s.write_all(p).unwrap();
            }
        }
        s.flush().unwrap();
        outs.iter().map(|o| o.0.lock().unwrap().clone()).collect()
    }

    fn read_back(wires: Vec<Vec<u8>>, trickle: usize) -> io::Result<Vec<u8>> {
        let chans = wires
            .into_iter()
            .map(|w| Box::new(Trickle(io::Cursor::new(w), trickle)) as BoxRead)
            .collect();
        let mut out = Vec::new();
        match StripedReader::new(chans).read_to_end(&mut out) {
            Ok(_) => Ok(out),
            // Every channel closed at a piece boundary: what a master's close after its `Bye`
            // looks like (an error when it is not expected).
            Err(e) if e.to_string().ends_with("closed") => Ok(out),
            Err(e) => Err(e),
        }
    }

    #[test]
    fn the_stream_comes_back_in_order_over_any_number_of_channels() {
        let pieces: Vec<Vec<u8>> = (0..37u32)
            .map(|i| {
                let len = match i % 4 {
                    0 => 1,
                    1 => 100 << 10,
                    2 => 3,
                    _ => 70_001,
                };
                (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
            })
            .collect();
        let whole: Vec<u8> = pieces.concat();
        for n in [1, 2, 3, 4, 16] {
            let wires = stripe(n, &pieces);
            // Every channel carries a share.
            assert!(wires.iter().all(|w| !w.is_empty()), "{n} channels");
            for trickle in [1, 7, 1 << 20] {
                assert_eq!(read_back(wires.clone(), trickle).unwrap(), whole);
            }
        }
    }

    #[test]
    fn a_channel_that_closes_inside_a_piece_is_an_error_not_an_end() {
        let pieces = vec![vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]];
        let mut wires = stripe(2, &pieces);
        // Channel 1's only piece loses its last bytes.
        let len = wires[1].len();
        wires[1].truncate(len - 3);
        let e = read_back(wires.clone(), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // ... or its header's last bytes.
        wires[1].truncate(2);
        assert!(read_back(wires, 1 << 20).is_err());
    }

    #[test]
    fn a_channel_that_closes_at_a_piece_boundary_is_an_error_not_an_end() {
        let pieces = vec![vec![1u8; 10], vec![2u8; 10], vec![3u8; 10]];
        let mut wires = stripe(2, &pieces);
        // Channel 0 loses its second piece (the third of the stream): what came before is
        // read, then the loss is an error, never a skip to a later piece nor a clean end.
        wires[0].truncate(14);
        let chans = wires
            .into_iter()
            .map(|w| Box::new(io::Cursor::new(w)) as BoxRead)
            .collect();
        let mut r = StripedReader::new(chans);
        let mut out = vec![0u8; 20];
        r.read_exact(&mut out).unwrap();
        assert_eq!(out, [vec![1u8; 10], vec![2u8; 10]].concat());
        let e = r.read(&mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(e.to_string().contains("channel 0"), "{e}");
        // Over one channel, an end at a piece boundary is the end of the stream.
        let mut one = stripe(1, &pieces);
        one[0].truncate(28);
        assert_eq!(
            read_back(one, 1 << 20).unwrap(),
            [vec![1u8; 10], vec![2u8; 10]].concat()
        );
    }

    #[test]
    fn an_empty_piece_is_refused() {
        let wires = vec![vec![0, 0, 0, 0], vec![]];
        assert_eq!(
            read_back(wires, 1 << 20).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
