//! The georep wire protocol (version: `PROTOCOL_VERSION`): pure types and codec, no I/O (spec: docs/protocol.md).
//!
//! Invariant: every byte sequence either decodes into a valid message (paths already validated)
//! or yields a typed error; nothing here panics on input.

pub mod frame;
pub mod limits;
pub mod message;
pub mod path;

pub use frame::{Decoded, FrameError};
pub use limits::{MAX_SYMLINK_TARGET, MAX_TEXT};
pub use message::*;
pub use path::RelPath;

/// Sent by both sides before their first frame; catches a peer that is not georep at all
/// (a shell banner, a `.bashrc` that prints) before any frame is parsed.
pub const PREAMBLE: &[u8; 8] = b"GEOREP\0\x01";
/// The protocol version this build speaks (5: the master heartbeats, the agent drops a
/// silent connection; 7: the master sets the silence limit, `Hello.silence_ms`; 8: `FileAppend`;
/// 9: `Hole`; 10: deltas, extended attributes; 11: striping over several channels; 12: shared
/// trees, `Rmdir`; 13: `ErrorMsg.permanent`).
pub const PROTOCOL_VERSION: u32 = 13;
/// Linux's limits on one extended attribute: `XATTR_NAME_MAX`, `XATTR_SIZE_MAX`.
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_VALUE_MAX: usize = 65536;
/// The most attribute bytes (names and values) one entry may carry on the wire.
pub const XATTR_ENTRY_MAX: usize = 1 << 20;
/// Part of the agent's error when a stripe's further channels did not all join: the master
/// then retries with one channel.
pub const DID_NOT_JOIN: &str = "did not join within";
/// Largest number of bricks `Welcome.replicated_from` names.
pub const MAX_REPLICATED_FROM: usize = 256;
/// The master sends `Heartbeat` after this long without writing anything else.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// An agent that has waited this long for a byte from the master gives the connection up
/// (half-open: the master is gone without a FIN reaching the DR side), unless the master's
/// `Hello.silence_ms` says otherwise.
pub const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The shortest and longest silence limit a `Hello` may ask for.
pub const SILENCE_MIN: std::time::Duration = std::time::Duration::from_secs(3);
pub const SILENCE_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long, at most, a Passive worker takes to ask again and reconnect once the agent has
/// let the Active connection go: what `silence_for_takeover` keeps in hand.
pub const TAKEOVER_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// The silence limit a master asks for so that another brick of its replica set takes over
/// within `takeover` of the DR site last hearing from it: the limit, then a Passive worker's
/// next try (every 2 s) and its handshake, within `TAKEOVER_SLACK`.
pub fn silence_for_takeover(takeover: std::time::Duration) -> std::time::Duration {
    takeover
        .saturating_sub(TAKEOVER_SLACK)
        .clamp(SILENCE_MIN, SILENCE_MAX)
}

/// The silence limit an agent applies for a `Hello.silence_ms`.
pub fn silence_limit(silence_ms: u32) -> std::time::Duration {
    if silence_ms == 0 {
        return SILENCE_LIMIT;
    }
    std::time::Duration::from_millis(silence_ms.into()).clamp(SILENCE_MIN, SILENCE_MAX)
}

/// How often a master heartbeats under silence limit `limit`: four times in it at least.
pub fn heartbeat_every(limit: std::time::Duration) -> std::time::Duration {
    (limit / 4).min(HEARTBEAT_EVERY)
}
/// Largest number of paths one `List` may name.
pub const MAX_LIST_PATHS: usize = 1024;
/// Largest number of ops one batch may declare.
pub const MAX_BATCH_OPS: u32 = 1 << 20;
/// Largest content a batch holding more than one op may declare.
pub const MAX_BATCH_BYTES: u64 = 4 << 30;
