//! Framing: `len:u32le | crc32:u32le | kind:u8 | body`, where `len` counts kind and body and the
//! CRC covers them. Kind 0 is a postcard-encoded `Message`, kind 1 raw file content (`Chunk`).
//!
//! Decoding is pure: `decode` says `NeedMore` until a whole frame is buffered and never allocates
//! more than the frame limit, so malformed or hostile input is an error, never a panic.

use super::message::Message;

/// Largest frame body accepted (kind byte included).
pub const MAX_FRAME: usize = 16 << 20;
/// Size of the frame header.
pub const HEADER: usize = 8;
const KIND_MSG: u8 = 0;
const KIND_CHUNK: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("frame checksum mismatch (expected {expected:08x}, got {actual:08x}): the stream is corrupt")]
    Checksum { expected: u32, actual: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("refused path: {0}")]
    Path(#[from] super::path::PathError),
}

#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A whole frame: the message and how many bytes it took.
    Frame(Message, usize),
    /// At least this many more bytes are needed.
    NeedMore(usize),
}

/// The body length a buffer's frame header announces, once the header is there.
fn body_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= HEADER).then(|| u32::from_le_bytes(buf[0..4].try_into().unwrap()) as usize)
}

/// Whether `buf` starts with a whole frame (without checking it).
pub fn is_whole(buf: &[u8]) -> bool {
    body_len(buf).is_some_and(|len| buf.len() >= HEADER + len)
}

pub fn decode(buf: &[u8]) -> Result<Decoded, FrameError> {
    let Some(len) = body_len(buf) else {
        return Ok(Decoded::NeedMore(HEADER - buf.len()));
    };
    let crc = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < HEADER + len {
        return Ok(Decoded::NeedMore(HEADER + len - buf.len()));
    }
    let body = &buf[HEADER..HEADER + len];
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(FrameError::Checksum {
            expected: crc,
            actual,
        });
    }
    let msg = match body[0] {
        KIND_MSG => {
            super::path::take_decode_error();
            let m: Message = match postcard::from_bytes(&body[1..]) {
                Ok(m) => m,
                Err(e) => match super::path::take_decode_error() {
                    Some(pe) => return Err(FrameError::Path(pe)),
                    None => legacy_error(&body[1..])
                        .ok_or_else(|| FrameError::Malformed(e.to_string()))?,
                },
            };
            m.check_limits().map_err(FrameError::Malformed)?;
            m
        }
        KIND_CHUNK => Message::Chunk(body[1..].to_vec()),
        k => return Err(FrameError::UnknownKind(k)),
    };
    Ok(Decoded::Frame(msg, HEADER + len))
}

/// An `Error` as agents before protocol 13 sent it: its message alone, without `permanent`.
/// Such an agent answers a newer master's `Hello` with the version mismatch, which reaches the
/// operator whole this way (not as a malformed message); it needs an operator (the same georep
/// on both sites), so it is permanent.
fn legacy_error(body: &[u8]) -> Option<Message> {
    let probe = Message::Error(super::ErrorMsg {
        message: String::new(),
        permanent: false,
    });
    let error_tag = postcard::take_from_bytes::<u32>(&postcard::to_allocvec(&probe).ok()?)
        .ok()?
        .0;
    let (tag, rest) = postcard::take_from_bytes::<u32>(body).ok()?;
    if tag != error_tag {
        return None;
    }
    let (message, rest) = postcard::take_from_bytes::<String>(rest).ok()?;
    rest.is_empty().then_some(Message::Error(super::ErrorMsg {
        message,
        permanent: true,
    }))
}

/// Appends one encoded frame to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    if let Message::Chunk(data) = msg {
        return encode_chunk(data, out);
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    out.push(KIND_MSG);
    // Serializing into a Vec cannot fail for these types.
    let body = postcard::to_extend(msg, Vec::new()).expect("postcard encoding");
    out.extend_from_slice(&body);
    finish(out, start);
}

/// Appends a `Chunk` frame without copying `data` through serde.
pub fn encode_chunk(data: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    out.push(KIND_CHUNK);
    out.extend_from_slice(data);
    finish(out, start);
}

/// Appends a `Chunk` frame whose content `fill` appends to `out` itself (so file content can be
/// read straight into the frame buffer) and returns the number of bytes it appended. Nothing is
/// left in `out` when `fill` fails or appends nothing.
pub fn encode_chunk_with<E>(
    out: &mut Vec<u8>,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<usize, E>,
) -> Result<usize, E> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    out.push(KIND_CHUNK);
    match fill(out) {
        Ok(n) if n > 0 => {
            finish(out, start);
            Ok(n)
        }
        r => {
            out.truncate(start);
            r
        }
    }
}

fn finish(out: &mut [u8], start: usize) {
    let len = out.len() - start - HEADER;
    assert!(len <= MAX_FRAME, "frame of {len} bytes over limit");
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::message::*;
    use crate::protocol::path::RelPath;

    fn roundtrip(m: Message) {
        let mut buf = Vec::new();
        encode(&m, &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Ok(Decoded::NeedMore(_))));
        }
        assert_eq!(decode(&buf).unwrap(), Decoded::Frame(m, buf.len()));
    }

    #[test]
    fn roundtrips() {
        roundtrip(Message::Chunk(vec![1, 2, 3]));
        roundtrip(Message::Ack(Ack { id: 7 }));
        roundtrip(Message::Op(Op::Delete {
            path: RelPath::new(b"a/b".to_vec()).unwrap(),
        }));
        roundtrip(Message::Bye);
    }

    #[test]
    fn chunk_filled_in_place_equals_chunk_encoded() {
        let mut a = Vec::new();
        encode_chunk(b"content", &mut a);
        let mut b = Vec::new();
        let n = encode_chunk_with::<()>(&mut b, |out| {
            out.extend_from_slice(b"content");
            Ok(7)
        });
        assert_eq!((n, &a), (Ok(7), &b));
        // Nothing appended, or an error: no frame at all.
        assert_eq!(encode_chunk_with::<()>(&mut b, |_| Ok(0)), Ok(0));
        assert_eq!(
            encode_chunk_with(&mut b, |out| {
                out.push(1);
                Err("read failed")
            }),
            Err("read failed")
        );
        assert_eq!(b, a);
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let mut buf = Vec::new();
        encode(&Message::Ack(Ack { id: 7 }), &mut buf);
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(matches!(decode(&bad), Err(FrameError::Checksum { .. })));
        let mut huge = buf.clone();
        huge[0..4].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(matches!(decode(&huge), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn hostile_path_is_malformed() {
        // Hand-encode an Op::Delete whose path is "../x": the decoder must refuse it.
        let mut body = postcard::to_extend(
            &Message::Op(Op::Delete {
                path: RelPath::new(b"aa/x".to_vec()).unwrap(),
            }),
            Vec::new(),
        )
        .unwrap();
        let pos = body.windows(4).position(|w| w == b"aa/x").unwrap();
        body[pos..pos + 2].copy_from_slice(b"..");
        let mut buf = vec![0u8; HEADER];
        buf.push(0);
        buf.extend_from_slice(&body);
        finish(&mut buf, 0);
        let err = decode(&buf).unwrap_err();
        assert!(err.to_string().contains("'..'"), "{err}");
    }

    /// An agent of protocol 12 answers with an `Error` that has no `permanent`: its message
    /// (the version mismatch) reaches the operator, marked permanent; a message that only
    /// starts like one is still malformed.
    #[test]
    fn an_older_agents_error_is_read() {
        let said = "master speaks protocol version 13, this agent on dr1 speaks 12: install the same georep version on both sites";
        let full = postcard::to_allocvec(&Message::Error(ErrorMsg {
            message: said.into(),
            permanent: false,
        }))
        .unwrap();
        // The same bytes less the trailing flag: what protocol 12 encoded.
        let legacy = &full[..full.len() - 1];
        let frame = |body: &[u8]| {
            let mut buf = vec![0u8; HEADER];
            buf.push(0);
            buf.extend_from_slice(body);
            finish(&mut buf, 0);
            buf
        };
        match decode(&frame(legacy)).unwrap() {
            Decoded::Frame(Message::Error(e), _) => {
                assert_eq!(e.message, said);
                assert!(e.permanent);
            }
            other => panic!("{other:?}"),
        }
        let cut = &legacy[..legacy.len() - 3];
        assert!(matches!(decode(&frame(cut)), Err(FrameError::Malformed(_))));
        let mut hello_tag = legacy.to_vec();
        hello_tag[0] = 0;
        assert!(decode(&frame(&hello_tag)).is_err());
    }

    /// Fuzzing (issue 13): cases per run from `PROPTEST_CASES` (CI: the default below).
    fn fuzz_config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(512),
            failure_persistence: None,
            ..Default::default()
        }
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(fuzz_config())]

        /// Any bytes: a frame, a request for more, or an error; never a panic.
        #[test]
        fn fuzz_decode_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        /// Any body behind a valid header and checksum, so the message decoder itself is
        /// fed hostile bytes: a message (with valid paths and limits) or an error.
        #[test]
        fn fuzz_decode_hostile_bodies(kind in 0u8..3, body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut buf = vec![0u8; HEADER];
            buf.push(kind);
            buf.extend_from_slice(&body);
            finish(&mut buf, 0);
            if let Ok(Decoded::Frame(m, used)) = decode(&buf) {
                prop_assert_eq!(used, buf.len());
                prop_assert!(m.check_limits().is_ok());
                // What decodes re-encodes to something that decodes the same.
                let mut again = Vec::new();
                encode(&m, &mut again);
                prop_assert_eq!(decode(&again).unwrap(), Decoded::Frame(m, again.len()));
            }
        }
    }
}
