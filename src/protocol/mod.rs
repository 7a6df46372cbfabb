//! The georep wire protocol (version: `PROTOCOL_VERSION`): pure types and codec, no I/O (spec: docs/protocol.md).
//!
//! Invariant: every byte sequence either decodes into a valid message (paths already validated)
//! or yields a typed error; nothing here panics on input.

pub mod frame;
pub mod message;
pub mod path;

pub use frame::{Decoded, FrameError};
pub use message::*;
pub use path::RelPath;

/// Sent by both sides before their first frame; catches a peer that is not georep at all
/// (a shell banner, a `.bashrc` that prints) before any frame is parsed.
pub const PREAMBLE: &[u8; 8] = b"GEOREP\0\x01";
/// The protocol version this build speaks (5: the master heartbeats, the agent drops a
/// silent connection).
pub const PROTOCOL_VERSION: u32 = 6;
/// Largest number of bricks `Welcome.replicated_from` names.
pub const MAX_REPLICATED_FROM: usize = 256;
/// The master sends `Heartbeat` after this long without writing anything else.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// An agent that has waited this long for a byte from the master gives the connection up
/// (half-open: the master is gone without a FIN reaching the DR side).
pub const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Largest number of paths one `List` may name.
pub const MAX_LIST_PATHS: usize = 1024;
/// Largest number of ops one batch may declare.
pub const MAX_BATCH_OPS: u32 = 1 << 20;
/// Largest content a batch holding more than one op may declare.
pub const MAX_BATCH_BYTES: u64 = 4 << 30;
