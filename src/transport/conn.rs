//! A framed connection over any byte stream: reads and writes protocol frames, switches the
//! master → agent direction to zstd after the handshake.
//!
//! Invariant: `read` returns `Ok(None)` only on a clean close at a frame boundary; a close in
//! the middle of a frame is an error.

pub use super::readahead::ReadAhead;
use super::segment::{self, Compressor, SegmentReader};
pub use super::silence::Silence;
use crate::protocol::frame::{self, Decoded, FrameError};
use crate::protocol::{Message, PREAMBLE};
use std::io::{self, Read, Write};

pub type BoxRead = Box<dyn Read + Send>;
pub type BoxWrite = Box<dyn Sink>;

/// Where a frame writer's bytes go: any byte stream, or a transport that takes whole buffers.
pub trait Sink: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
    /// Sends all of `buf` and hands back an empty buffer to fill next: the same one when the
    /// bytes were copied out, another where the transport keeps `buf` itself (no copy).
    fn send_vec(&mut self, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        self.write_all(&buf)?;
        Ok(buf)
    }
}

impl<W: Write + Send> Sink for W {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Write::flush(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    #[error("peer is not speaking the georep protocol (it sent {0:?}); check that the remote command is `georep agent` and that the login prints nothing")]
    NotGeorep(String),
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("no word from the peer for {} s (no data and no heartbeat): the connection is presumed dead (half-open: a NAT timeout, a cut cable or a partition)", .0.as_secs())]
    Silent(std::time::Duration),
}

impl ConnError {
    /// Whether reconnecting can help (a broken link) or not (a peer that sends garbage).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnError::Io(_) | ConnError::Truncated | ConnError::Silent(_)
        )
    }
}

pub struct FrameReader {
    inner: BoxRead,
    /// Bytes `pos..end` are received and not yet decoded; the rest is scratch space.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Total bytes taken from `inner` (after decompression when compressed).
    pub bytes_read: u64,
}

const READ_BUF: usize = 256 << 10;

impl FrameReader {
    pub fn new(inner: BoxRead) -> Self {
        FrameReader {
            inner,
            buf: vec![0; READ_BUF],
            pos: 0,
            end: 0,
            bytes_read: 0,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Reads and checks the peer's preamble.
    pub fn expect_preamble(&mut self) -> Result<(), ConnError> {
        while self.end - self.pos < PREAMBLE.len() {
            if self.fill(PREAMBLE.len())? == 0 {
                let got = String::from_utf8_lossy(self.pending()).into_owned();
                return Err(if got.is_empty() {
                    ConnError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection before the georep handshake",
                    ))
                } else {
                    ConnError::NotGeorep(got)
                });
            }
        }
        if &self.pending()[..PREAMBLE.len()] != PREAMBLE {
            let p = self.pending();
            return Err(ConnError::NotGeorep(
                String::from_utf8_lossy(&p[..p.len().min(120)]).into_owned(),
            ));
        }
        self.pos += PREAMBLE.len();
        Ok(())
    }

    /// Reads more bytes, making room for at least `need` pending bytes in total.
    fn fill(&mut self, need: usize) -> io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() || self.pos + need > self.buf.len() {
            // Move pending bytes to the front, then grow if a frame still does not fit.
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            if need > self.buf.len() || self.end == self.buf.len() {
                let want = need.max(self.buf.len() * 2);
                self.buf.resize(want, 0);
            }
        }
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.end += n;
        self.bytes_read += n as u64;
        Ok(n)
    }

    /// Whether a whole frame is already buffered (reading it would not block).
    pub fn frame_buffered(&self) -> bool {
        frame::is_whole(self.pending())
    }

    /// Next message; `Ok(None)` on a clean close.
    pub fn read(&mut self) -> Result<Option<Message>, ConnError> {
        loop {
            match frame::decode(self.pending())? {
                Decoded::Frame(msg, used) => {
                    self.pos += used;
                    return Ok(Some(msg));
                }
                Decoded::NeedMore(more) => {
                    let need = self.end - self.pos + more;
                    if self.fill(need)? == 0 {
                        return if self.pos == self.end {
                            Ok(None)
                        } else {
                            Err(ConnError::Truncated)
                        };
                    }
                }
            }
        }
    }

    /// Bytes received and not yet decoded (what a joining agent passes along with its input).
    pub fn buffered(&self) -> &[u8] {
        self.pending()
    }

    /// Switches to reading a stripe from here on: this reader's input (bytes already buffered
    /// first) is its channel 0, `others` the channels that joined, in order.
    pub fn into_striped(self, others: Vec<BoxRead>) -> FrameReader {
        let rest = self.pending().to_vec();
        let mut channels: Vec<BoxRead> = vec![Box::new(io::Cursor::new(rest).chain(self.inner))];
        channels.extend(others);
        let mut r = FrameReader::new(Box::new(super::stripe::StripedReader::new(channels)));
        r.bytes_read = self.bytes_read;
        r
    }

    /// Switches to reading compressed segments from here on (bytes already buffered included).
    pub fn into_decompressed(self) -> io::Result<FrameReader> {
        let rest = self.pending().to_vec();
        let chained: BoxRead = Box::new(io::Cursor::new(rest).chain(self.inner));
        let dec = SegmentReader::new(chained)?;
        let mut r = FrameReader::new(Box::new(dec));
        r.bytes_read = self.bytes_read;
        Ok(r)
    }
}

pub struct FrameWriter {
    inner: BoxWrite,
    /// Frames not yet handed to `inner`; begins with a reserved segment header when compressing.
    buf: Vec<u8>,
    compressor: Option<Compressor>,
    /// A file's content starts in `buf` (a hint for the compressor).
    new_file: bool,
    /// Bytes handed to `inner` (after compression).
    wire: u64,
}

/// Buffer frames up to this size before handing them to the transport (one segment).
const WRITE_BUF: usize = 1 << 20;

impl FrameWriter {
    pub fn new(inner: BoxWrite) -> Self {
        FrameWriter {
            inner,
            buf: Vec::with_capacity(WRITE_BUF + (64 << 10)),
            compressor: None,
            new_file: false,
            wire: 0,
        }
    }

    /// Where frames start in `buf`.
    fn base(&self) -> usize {
        if self.compressor.is_some() {
            segment::HEADER
        } else {
            0
        }
    }

    pub fn send_preamble(&mut self) -> io::Result<()> {
        self.buf.extend_from_slice(PREAMBLE);
        self.flush()
    }

    pub fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.new_file |= matches!(msg, Message::FileBegin(_));
        frame::encode(msg, &mut self.buf);
        self.maybe_drain()
    }

    /// Sends the next piece of a file's content: up to `max` bytes of `src`, read straight into
    /// the frame buffer, while `*intact`; once `src` ends early or fails (`*intact` turns false),
    /// `max` zero bytes instead, which keep the stream in step with the size announced in
    /// `FileBegin` (the sender then ends the file with `commit: false`). Everything sent is shown
    /// to `seen` (the content hash). Returns the bytes sent and the read error, if one just
    /// happened; the outer error is the peer's (sending failed).
    pub fn send_content(
        &mut self,
        src: &mut dyn Read,
        max: usize,
        intact: &mut bool,
        seen: &mut dyn FnMut(&[u8]),
    ) -> io::Result<(usize, Option<io::Error>)> {
        let mut failed = None;
        if *intact {
            let read = frame::encode_chunk_with(&mut self.buf, |out| {
                let start = out.len();
                out.reserve(max);
                src.take(max as u64).read_to_end(out)?;
                seen(&out[start..]);
                Ok(out.len() - start)
            });
            match read {
                Ok(0) => {}
                Ok(n) => {
                    self.maybe_drain()?;
                    return Ok((n, None));
                }
                Err(e) => failed = Some(e),
            }
            *intact = false;
        }
        let zeros = frame::encode_chunk_with::<()>(&mut self.buf, |out| {
            let start = out.len();
            out.resize(start + max, 0);
            seen(&out[start..]);
            Ok(max)
        });
        debug_assert_eq!(zeros, Ok(max));
        self.maybe_drain()?;
        Ok((max, failed))
    }

    fn maybe_drain(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_BUF {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        let base = self.base();
        if self.buf.len() == base {
            return Ok(());
        }
        let compressed = match self.compressor.as_mut() {
            Some(c) => c.encode(&mut self.buf, self.new_file),
            None => None,
        };
        match compressed {
            Some(out) => {
                self.inner.write_all(out)?;
                self.wire += out.len() as u64;
                self.buf.truncate(base);
            }
            None => {
                // The buffer itself goes (a transport that keeps it gives another back).
                self.wire += self.buf.len() as u64;
                let mut next = self.inner.send_vec(std::mem::take(&mut self.buf))?;
                next.clear();
                next.reserve(WRITE_BUF + (64 << 10));
                next.resize(base, 0);
                self.buf = next;
            }
        }
        self.new_file = false;
        Ok(())
    }

    /// Pushes everything written so far to the peer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
    }

    /// Everything written from now on is sent as compressed segments at zstd `level` (0 =
    /// unchanged); see `segment`.
    pub fn compress(&mut self, level: i32) -> io::Result<()> {
        if level == 0 {
            return Ok(());
        }
        assert!(self.compressor.is_none(), "compress called twice");
        self.flush()?;
        self.compressor = Some(Compressor::new(level)?);
        self.buf.extend_from_slice(&[0; segment::HEADER]);
        Ok(())
    }

    /// Everything written from now on is striped over `channel 0` (this writer's own) and
    /// `others` (`stripe.rs`); call before `compress`.
    pub fn stripe(&mut self, others: Vec<BoxWrite>) -> io::Result<()> {
        assert!(self.compressor.is_none(), "stripe below compression");
        self.flush()?;
        let own = std::mem::replace(&mut self.inner, Box::new(io::sink()));
        let mut channels = vec![own];
        channels.extend(others);
        self.inner = Box::new(super::stripe::StripedSink::new(channels));
        Ok(())
    }

    /// Bytes handed to the transport so far (compressed size when compressing).
    pub fn wire_bytes(&self) -> u64 {
        self.wire
    }

    /// Ends the stream and closes the underlying writer.
    pub fn close(mut self) -> io::Result<()> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Ack;
    use std::sync::{Arc, Mutex};

    /// A `Write` whose bytes can be looked at after the writer is gone.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A `Read` that hands out at most `step` bytes per call, as a pipe does.
    struct Trickle(Vec<u8>, usize, usize);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.1).min(self.0.len() - self.2);
            out[..n].copy_from_slice(&self.0[self.2..self.2 + n]);
            self.2 += n;
            Ok(n)
        }
    }

    fn content(n: usize, seed: u8) -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
    }

    /// Writes acks and chunks (small, read in place, large) and returns the stream.
    fn stream(chunks: &[Vec<u8>]) -> Vec<u8> {
        let out = Shared::default();
        let mut w = FrameWriter::new(Box::new(out.clone()));
        for (i, c) in chunks.iter().enumerate() {
            w.send(&Message::Ack(Ack { id: i as u64 })).unwrap();
            let mut src = &c[..];
            let mut intact = true;
            let (n, failed) = w
                .send_content(&mut src, c.len(), &mut intact, &mut |_| {})
                .unwrap();
            assert_eq!((n, failed.is_none(), intact), (c.len(), true, true));
        }
        w.close().unwrap();
        let bytes = out.0.lock().unwrap().clone();
        bytes
    }

    #[test]
    fn content_read_in_place_round_trips_whatever_the_read_sizes() {
        let chunks = vec![
            content(10, 1),
            content(64 << 10, 2),
            content(1 << 20, 3),
            content(3, 4),
        ];
        let bytes = stream(&chunks);
        for step in [7, 4096, 100_000, 1 << 22] {
            let mut r = FrameReader::new(Box::new(Trickle(bytes.clone(), step, 0)));
            for (i, c) in chunks.iter().enumerate() {
                assert_eq!(
                    r.read().unwrap(),
                    Some(Message::Ack(Ack { id: i as u64 })),
                    "step {step}"
                );
                assert!(
                    r.read().unwrap() == Some(Message::Chunk(c.clone())),
                    "step {step}"
                );
            }
            assert_eq!(r.read().unwrap(), None);
            assert_eq!(r.bytes_read, bytes.len() as u64);
        }
    }

    #[test]
    fn content_that_ends_early_or_fails_is_padded_with_zeros() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk error"))
            }
        }
        let out = Shared::default();
        let mut w = FrameWriter::new(Box::new(out.clone()));
        let mut seen = Vec::new();
        // Shorter than announced: what is there, then zeros for the rest.
        let mut short = &b"abc"[..];
        let mut intact = true;
        let mut see = |d: &[u8]| seen.extend_from_slice(d);
        assert_eq!(
            w.send_content(&mut short, 3, &mut intact, &mut see)
                .unwrap()
                .0,
            3
        );
        let (n, failed) = w
            .send_content(&mut short, 4, &mut intact, &mut see)
            .unwrap();
        assert_eq!((n, failed.is_none(), intact), (4, true, false));
        // Once not intact, the source is not read again.
        let (n, failed) = w
            .send_content(&mut Failing, 2, &mut intact, &mut see)
            .unwrap();
        assert_eq!((n, failed.is_none()), (2, true));
        // A read error: zeros, and the error is handed back.
        let mut intact = true;
        let (n, failed) = w
            .send_content(&mut Failing, 5, &mut intact, &mut see)
            .unwrap();
        assert_eq!(
            (n, failed.map(|e| e.to_string()), intact),
            (5, Some("disk error".into()), false)
        );
        w.close().unwrap();
        assert_eq!(seen, b"abc\0\0\0\0\0\0\0\0\0\0\0");
        let bytes = out.0.lock().unwrap().clone();
        let mut r = FrameReader::new(Box::new(io::Cursor::new(bytes)));
        let mut got = Vec::new();
        while let Some(Message::Chunk(c)) = r.read().unwrap() {
            got.extend_from_slice(&c);
        }
        assert_eq!(got, seen, "what was hashed is what was sent");
    }

    #[test]
    fn chunk_corrupt_or_cut_is_an_error() {
        let bytes = stream(&[content(1 << 20, 5)]);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut r = FrameReader::new(Box::new(Trickle(bad, 4096, 0)));
        r.read().unwrap();
        assert!(matches!(
            r.read(),
            Err(ConnError::Frame(FrameError::Checksum { .. }))
        ));
        let cut = bytes[..bytes.len() - 10].to_vec();
        let mut r = FrameReader::new(Box::new(Trickle(cut, 4096, 0)));
        r.read().unwrap();
        assert!(matches!(r.read(), Err(ConnError::Truncated)));
    }
}
