//! Compressed segments: how the master → agent stream is compressed.
//!
//! Every buffer the frame writer hands to the transport (about 1 MiB, or less at a flush) becomes
//! one segment: `wire_len:u32le | raw_len:u32le | data[wire_len]`. `raw_len` 0 means `data` is
//! stored as is; otherwise `data` is one zstd frame that decompresses to exactly `raw_len` bytes.
//!
//! Segments make compression adaptive: a segment that does not shrink by at least 1/16 is sent
//! stored, and after such a segment the next 1, 2, 4 … 32 segments are stored without trying
//! (unless a new file starts in one and a 32 KiB sample of its end compresses: content changes at
//! file boundaries, and a tree of small incompressible files starts a file in every segment), so
//! incompressible content (media, archives, encrypted files) costs almost no compression time, while
//! compressible content is compressed as before (a zstd frame per segment; level 1's window is
//! smaller than a segment, so the ratio is that of one stream). Both ends bound a segment to
//! [`MAX_SEGMENT`] bytes before allocating anything.

use std::io::{self, Read};

pub const HEADER: usize = 8;
/// Largest segment accepted, raw or on the wire (a frame is at most 16 MiB).
pub const MAX_SEGMENT: usize = 32 << 20;
/// Segments smaller than this are always stored (a flush of a heartbeat or an ack-sized batch).
const MIN_TRY: usize = 256;
const MAX_BACKOFF: u32 = 32;
/// Bytes at the end of a segment compressed to decide whether the whole segment is worth trying.
const PROBE: usize = 32 << 10;

/// The compressing side: decides per segment and keeps its output buffer.
pub struct Compressor {
    cctx: zstd::bulk::Compressor<'static>,
    /// Output: a segment header followed by the compressed frame; kept at full length.
    out: Vec<u8>,
    /// Segments still to store without trying, and the current back-off.
    skip: u32,
    backoff: u32,
}

impl Compressor {
    pub fn new(level: i32) -> io::Result<Self> {
        let mut cctx = zstd::bulk::Compressor::new(level)?;
        cctx.include_checksum(false)?;
        cctx.include_contentsize(false)?;
        Ok(Compressor {
            cctx,
            out: Vec::new(),
            skip: 0,
            backoff: 0,
        })
    }

    /// Encodes `buf[HEADER..]` as a segment: the compressed segment to send, or `None` when
    /// `buf` itself is to be sent (stored; its header is filled in). `new_file`: a file's content
    /// starts in this segment, so an earlier file's incompressibility says nothing about it.
    pub fn encode(&mut self, buf: &mut [u8], new_file: bool) -> Option<&[u8]> {
        let raw_len = buf.len() - HEADER;
        if (MIN_TRY..=MAX_SEGMENT).contains(&raw_len) {
            if self.skip > 0 && !(new_file && self.probe(&buf[HEADER..])) {
                self.skip -= 1;
            } else {
                // Worth sending compressed only when it saves at least 1/16.
                let limit = raw_len - raw_len / 16;
                if self.out.len() < HEADER + limit {
                    self.out.resize(HEADER + limit, 0);
                }
                match self
                    .cctx
                    .compress_to_buffer(&buf[HEADER..], &mut self.out[HEADER..HEADER + limit])
                {
                    Ok(n) => {
                        self.backoff = 0;
                        put_header(&mut self.out, n, raw_len);
                        return Some(&self.out[..HEADER + n]);
                    }
                    Err(_) => {
                        // Did not fit in `limit`: incompressible, at least for now.
                        self.backoff = (self.backoff * 2).clamp(1, MAX_BACKOFF);
                        self.skip = self.backoff;
                    }
                }
            }
        }
        put_header(buf, raw_len, 0);
        None
    }
}

impl Compressor {
    /// Whether the last [`PROBE`] bytes of `raw` shrink by at least 1/16.
    fn probe(&mut self, raw: &[u8]) -> bool {
        let sample = &raw[raw.len().saturating_sub(PROBE)..];
        let limit = sample.len() - sample.len() / 16;
        if self.out.len() < limit {
            self.out.resize(limit, 0);
        }
        self.cctx
            .compress_to_buffer(sample, &mut self.out[..limit])
            .is_ok()
    }
}

fn put_header(buf: &mut [u8], wire_len: usize, raw_len: usize) {
    buf[0..4].copy_from_slice(&(wire_len as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&(raw_len as u32).to_le_bytes());
}

/// The decompressing side: a `Read` of the raw bytes of consecutive segments.
pub struct SegmentReader<R> {
    inner: R,
    dctx: zstd::bulk::Decompressor<'static>,
    /// Bytes of a stored segment not yet read (they are read straight from `inner`).
    stored_left: usize,
    /// A decompressed segment and the read position in it.
    cur: Vec<u8>,
    pos: usize,
    wire: Vec<u8>,
}

impl<R: Read> SegmentReader<R> {
    pub fn new(inner: R) -> io::Result<Self> {
        Ok(SegmentReader {
            inner,
            dctx: zstd::bulk::Decompressor::new()?,
            stored_left: 0,
            cur: Vec::new(),
            pos: 0,
            wire: Vec::new(),
        })
    }

    /// Reads the next segment header; `false` on a clean end of stream.
    fn next_segment(&mut self) -> io::Result<bool> {
        let mut h = [0u8; HEADER];
        let mut got = 0;
        while got < HEADER {
            match self.inner.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(invalid("stream ends inside a segment header")),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let wire_len = u32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
        let raw_len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
        if wire_len > MAX_SEGMENT || raw_len > MAX_SEGMENT {
            return Err(invalid(&format!(
                "segment of {wire_len}/{raw_len} bytes exceeds the {MAX_SEGMENT}-byte limit"
            )));
        }
        if raw_len == 0 {
            self.stored_left = wire_len;
            return Ok(true);
        }
        self.wire.resize(wire_len, 0);
        self.inner.read_exact(&mut self.wire).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("stream ends inside a compressed segment")
            } else {
                e
            }
        })?;
        self.cur.resize(raw_len, 0);
        let n = self
            .dctx
            .decompress_to_buffer(&self.wire[..], &mut self.cur[..])
            .map_err(|e| invalid(&format!("corrupt compressed segment: {e}")))?;
        if n != raw_len {
            return Err(invalid(&format!(
                "compressed segment gave {n} bytes, its header says {raw_len}"
            )));
        }
        self.pos = 0;
        Ok(true)
    }
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl<R: Read> Read for SegmentReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.stored_left > 0 {
                let want = out.len().min(self.stored_left);
                let n = self.inner.read(&mut out[..want])?;
                if n == 0 {
                    return Err(invalid("stream ends inside a segment"));
                }
                self.stored_left -= n;
                return Ok(n);
            }
            if self.pos < self.cur.len() {
                let n = out.len().min(self.cur.len() - self.pos);
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if !self.next_segment()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(c: &mut Compressor, raw: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; HEADER];
        buf.extend_from_slice(raw);
        match c.encode(&mut buf, false) {
            Some(s) => s.to_vec(),
            None => buf,
        }
    }

    #[test]
    fn compressible_and_random_segments_round_trip_and_random_is_stored() {
        let mut c = Compressor::new(1).unwrap();
        let text: Vec<u8> = b"georep batch 42 applied\n".repeat(40_000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let random: Vec<u8> = (0..1u32 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let mut wire = Vec::new();
        let s = segment(&mut c, &text);
        assert!(s.len() < text.len() / 10, "text must compress");
        wire.extend_from_slice(&s);
        let s = segment(&mut c, &random);
        assert_eq!(s.len(), HEADER + random.len(), "random is stored");
        assert_eq!(&s[4..8], &[0; 4]);
        wire.extend_from_slice(&s);
        // Backed off: the next text segment is stored without trying, the one after compressed.
        let s = segment(&mut c, &text);
        assert_eq!(s.len(), HEADER + text.len());
        wire.extend_from_slice(&s);
        let s = segment(&mut c, &text);
        assert!(s.len() < text.len() / 10);
        wire.extend_from_slice(&s);
        // A new file is tried at once, back-off or not, when a sample of it compresses.
        let _ = segment(&mut c, &random);
        let mut buf = vec![0u8; HEADER];
        buf.extend_from_slice(&random);
        assert!(!c.probe(&buf[HEADER..]), "random content fails the probe");
        let s = c.encode(&mut buf, true).map(<[u8]>::to_vec).unwrap_or(buf);
        assert_eq!(s.len(), HEADER + random.len(), "random new file is stored");
        wire.extend_from_slice(&s);
        let mut buf = vec![0u8; HEADER];
        buf.extend_from_slice(&text);
        let s = c.encode(&mut buf, true).map(<[u8]>::to_vec).unwrap_or(buf);
        assert!(s.len() < text.len() / 10);
        wire.extend_from_slice(&s);
        wire.extend_from_slice(&segment(&mut c, b"tiny"));

        let mut back = Vec::new();
        SegmentReader::new(&wire[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        let mut want = text.clone();
        want.extend_from_slice(&random);
        want.extend_from_slice(&text);
        want.extend_from_slice(&text);
        want.extend_from_slice(&random);
        want.extend_from_slice(&text);
        want.extend_from_slice(b"tiny");
        assert!(back == want);
    }

    /// The error reading a segment stream `(wire_len, raw_len, data)` gives.
    fn read_error(wire_len: u32, raw_len: u32, data: &[u8]) -> io::Error {
        let mut wire = Vec::new();
        wire.extend_from_slice(&wire_len.to_le_bytes());
        wire.extend_from_slice(&raw_len.to_le_bytes());
        wire.extend_from_slice(data);
        SegmentReader::new(&wire[..])
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err()
    }

    #[test]
    fn hostile_segments_are_errors_not_allocations() {
        let e = read_error(u32::MAX, 0, b"");
        assert!(e.to_string().contains("limit"), "{e}");
        let e = read_error(4, u32::MAX, b"junk");
        assert!(e.to_string().contains("limit"), "{e}");
        // A compressed segment whose content is garbage.
        let e = read_error(4, 100, b"junk");
        assert!(e.to_string().contains("corrupt"), "{e}");
        // Truncated in the middle of a stored segment, of a compressed one, of a header.
        let e = read_error(10, 0, b"abc");
        assert!(e.to_string().contains("inside a segment"), "{e}");
        let e = read_error(10, 100, b"abc");
        assert!(e.to_string().contains("inside a compressed segment"), "{e}");
        let e = SegmentReader::new(&[1u8, 2, 3][..])
            .unwrap()
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("header"), "{e}");
    }

    /// Fuzzing (issue 13): any bytes as a compressed stream read to the end or fail; never a
    /// panic, never more than a segment's limit held.
    #[test]
    fn fuzz_segment_reader_never_panics() {
        use proptest::prelude::*;
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&proptest::collection::vec(any::<u8>(), 0..4096), |bytes| {
                let mut out = Vec::new();
                if let Ok(mut r) = SegmentReader::new(&bytes[..]) {
                    let _ = Read::read_to_end(&mut r, &mut out);
                }
                Ok(())
            })
            .unwrap();
    }
}
