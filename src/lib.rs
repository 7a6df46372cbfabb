//! georep: asynchronous master → slave geo-replication of directory trees, for disaster recovery.
//!
//! Code map:
//! - `cli`       — clap definitions and dispatch; each subcommand calls one domain function.
//! - `config`    — `$GEOREP_HOME` layout, node name, validated run options.
//! - `volume`    — named volumes of bricks (`georep volume …`), plain paths as implicit volumes.
//! - `session`   — slave syntax, session naming, per-brick state directories.
//! - `options`   — `georep config` keys: defaults, validation, the worker's run options.
//! - `crawl`     — hybrid crawl: statx walk, index compare, identity (inode + birth time),
//!   rename detection, hard-link groups, the plan.
//! - `ship`      — batches, the windowed send/ack pipeline, `sync --once`.
//! - `protocol`  — wire types and codec, no I/O (spec: docs/protocol.md).
//! - `transport` — framed connection, the transport seam, the local (child process) transport.
//! - `agent`     — slave side: confined idempotent apply, durability before ack, agent.db.
//! - `failback`  — failover (DR side), resync --reverse with conflict copies, failback.
//! - `verify`    — `georep verify`: master vs slave listing (and checksums), read-only.
//! - `shellword` — words that reach a command line on the slave host: checked and quoted.
//! - `sparse`    — the holes of sparse files (`SEEK_DATA`/`SEEK_HOLE`), sent as `Hole`s.
//! - `xattr`     — extended attributes and POSIX ACLs: scope, read, check, apply.
//! - `brickid`   — a master brick's identity file: an unmounted brick is never replicated.
//! - `gluster`   — Gluster bricks as masters (internal dirs, link-to files, gfid links,
//!   client-set times) and `volume import`.
//! - `fsutil`    — open beneath a root without symlinks, tree removal, atomic writes.
//! - `logging`   — tracing setup.
//!
//! Global invariants:
//! - The slave is written only beneath its root, never through a symlink.
//! - Slave durable → ack → master index: the index never claims what the slave has not synced.
//! - Nothing makes a network round trip per file: batches stream, acks come back in order.

pub mod agent;
pub mod brickid;
pub mod cli;
pub mod client;
pub mod config;
pub mod crawl;
pub mod daemon;
pub mod db;
pub mod delta;
pub mod entry;
pub mod error;
pub mod failback;
pub mod fsutil;
pub mod gluster;
pub mod journal;
pub mod keys;
pub mod logging;
pub mod options;
pub mod protocol;
pub mod session;
pub mod shellword;
pub mod ship;
pub mod sparse;
pub mod status;
pub mod transport;
pub mod verify;
pub mod volume;
pub mod walk;
pub mod xattr;
