//! georep: asynchronous master → slave geo-replication of directory trees, for disaster recovery.
//!
//! Code map, bottom up (docs/ARCHITECTURE.md has the layering rule and a line per file; a module
//! imports only modules of its own layer or below, and no two import each other):
//! - foundation, both sides:
//!   - `protocol`  — wire types and codec, no I/O (spec: docs/protocol.md).
//!   - `error`     — `Permanent`: errors retrying cannot help.
//!   - `db`        — SQLite files opened the same way (WAL, format checks, upgrades).
//!   - `delta`     — rsync's rolling-checksum delta, streamed.
//!   - `sparse`    — the holes of sparse files (`SEEK_DATA`/`SEEK_HOLE`), sent as `Hole`s.
//!   - `shellword` — words that reach a command line on the slave host: checked and quoted.
//!   - `logging`   — tracing setup.
//!   - `entry`     — a statx'd entry, its identity (inode + birth time) and change kinds.
//!   - `fsutil`    — open beneath a root without symlinks, tree removal, atomic writes.
//!   - `xattr`     — extended attributes and POSIX ACLs: scope, read, check, apply.
//!   - `gluster`   — Gluster bricks as masters (internal dirs, link-to files, gfid links,
//!     client-set times), Gluster slaves mounted by the agent, `volume import`.
//!   - `walk`      — the parallel statx walk and the tree order listings share.
//!   - `config`    — `$GEOREP_HOME` layout, node name, validated run options.
//!   - `volume`    — named volumes of bricks (`georep volume …`), plain paths as implicit volumes.
//! - `transport` — framed connection, the transport seam, local, SSH and `serve` transports.
//! - `agent`     — slave side: confined idempotent apply, durability before ack, agent.db.
//! - master side:
//!   - `journal`  — inotify journal writer and `journal.db`.
//!   - `brickid`  — a master brick's identity file: an unmounted brick is never replicated.
//!   - `crawl`    — the index, the diff (identity, renames, hard-link groups), the plan; the
//!     full crawl and journal windows' targeted plans.
//!   - `session`  — slave syntax, session naming, per-brick state directories, monitor paths.
//!   - `options`  — `georep config` keys: defaults, validation, the worker's run options.
//!   - `keys`     — session key, pinned host key, confined authorized_keys lines.
//!   - `status`   — per-brick status, typed worker and crawl states, table, JSON, metrics.
//!   - `client`   — a connection to an agent: target, handshake, requests; typed errors.
//!   - `verify`   — `georep verify`: master vs slave listing (and checksums), read-only.
//!   - `ship`     — the Shipper (a client plus the index), the worker, `sync --once`.
//!   - `daemon`   — session lifecycle: create, journal writers, monitor, start/stop.
//!   - `failback` — failover (DR side), resync --reverse with conflict copies, failback.
//!   - `cli`      — clap definitions and dispatch; each subcommand calls one domain function.
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
