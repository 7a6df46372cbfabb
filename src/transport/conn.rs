//! A framed connection over any byte stream: reads and writes protocol frames, switches the
//! master → agent direction to zstd after the handshake.
//!
//! Invariant: `read` returns `Ok(None)` only on a clean close at a frame boundary; a close in
//! the middle of a frame is an error.

use crate::protocol::frame::{self, Decoded, FrameError};
use crate::protocol::{Message, PREAMBLE};
use std::io::{self, Read, Write};

pub type BoxRead = Box<dyn Read + Send>;
pub type BoxWrite = Box<dyn Write + Send>;

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
}

impl ConnError {
    /// Whether reconnecting can help (a broken link) or not (a peer that sends garbage).
    pub fn is_transient(&self) -> bool {
        matches!(self, ConnError::Io(_) | ConnError::Truncated)
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

    /// Switches to reading a zstd stream from here on (bytes already buffered included).
    pub fn into_decompressed(self) -> io::Result<FrameReader> {
        let rest = self.pending().to_vec();
        let chained: BoxRead = Box::new(io::Cursor::new(rest).chain(self.inner));
        let dec = zstd::stream::read::Decoder::new(chained)?;
        let mut r = FrameReader::new(Box::new(dec));
        r.bytes_read = self.bytes_read;
        Ok(r)
    }
}

enum Sink {
    Plain(BoxWrite),
    Zstd(zstd::stream::write::Encoder<'static, CountingWriter>),
}

/// Counts what actually goes on the wire (after compression).
pub struct CountingWriter {
    inner: BoxWrite,
    count: u64,
}

impl Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub struct FrameWriter {
    sink: Option<Sink>,
    buf: Vec<u8>,
    plain_count: u64,
}

/// Buffer frames up to this size before handing them to the sink.
const WRITE_BUF: usize = 1 << 20;

impl FrameWriter {
    pub fn new(inner: BoxWrite) -> Self {
        FrameWriter {
            sink: Some(Sink::Plain(inner)),
            buf: Vec::with_capacity(WRITE_BUF + (64 << 10)),
            plain_count: 0,
        }
    }

    pub fn send_preamble(&mut self) -> io::Result<()> {
        self.buf.extend_from_slice(PREAMBLE);
        self.flush()
    }

    pub fn send(&mut self, msg: &Message) -> io::Result<()> {
        frame::encode(msg, &mut self.buf);
        self.maybe_drain()
    }

    pub fn send_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        frame::encode_chunk(data, &mut self.buf);
        self.maybe_drain()
    }

    fn maybe_drain(&mut self) -> io::Result<()> {
        if self.buf.len() >= WRITE_BUF {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.sink.as_mut().expect("writer used after close") {
            Sink::Plain(w) => {
                w.write_all(&self.buf)?;
                self.plain_count += self.buf.len() as u64;
            }
            Sink::Zstd(z) => z.write_all(&self.buf)?,
        }
        self.buf.clear();
        Ok(())
    }

    /// Pushes everything written so far to the peer (a zstd flush block when compressed).
    pub fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        match self.sink.as_mut().expect("writer used after close") {
            Sink::Plain(w) => w.flush(),
            Sink::Zstd(z) => z.flush(),
        }
    }

    /// Everything written from now on goes through a zstd stream at `level` (0 = unchanged).
    pub fn compress(&mut self, level: i32) -> io::Result<()> {
        if level == 0 {
            return Ok(());
        }
        self.flush()?;
        let Some(Sink::Plain(w)) = self.sink.take() else {
            unreachable!("compress called twice")
        };
        let counting = CountingWriter {
            inner: w,
            count: self.plain_count,
        };
        let mut enc = zstd::stream::write::Encoder::new(counting, level)?;
        // Long frames on a single core: leave multithreading off so both sides stay responsive.
        enc.include_checksum(false)?;
        self.sink = Some(Sink::Zstd(enc));
        Ok(())
    }

    /// Bytes handed to the transport so far (compressed size when compressing).
    pub fn wire_bytes(&self) -> u64 {
        match &self.sink {
            Some(Sink::Zstd(z)) => z.get_ref().count,
            _ => self.plain_count,
        }
    }

    /// Ends the stream (finishing the zstd frame) and closes the underlying writer.
    pub fn close(mut self) -> io::Result<()> {
        self.drain()?;
        match self.sink.take() {
            Some(Sink::Plain(mut w)) => w.flush(),
            Some(Sink::Zstd(z)) => {
                let mut c = z.finish()?;
                c.flush()
            }
            None => Ok(()),
        }
    }
}
