//! The agent's side of the handshake: Hello checked, the volume's fences and locks taken, the
//! replica set's Active lock claimed, the temp area, trash and attributes set up, Welcome sent,
//! the stripe joined. What follows is the batch loop (`batch.rs`) or a reverse connection.

use super::apply::Applier;
use super::durable::SharedWriter;
use super::join;
use super::locks::{brick_tmp, claim_replica_set, Claim, Fence};
use super::shared::SharedTree;
use super::state::{self, AgentState, Role};
use super::{holds_nothing, open_trash, refuse_enclosing, refuse_nested, utc, welcome};
use super::{READ_AHEAD_BYTES, SERVED_BY_SERVE};
use crate::error::Permanent;
use crate::fsutil;
use crate::protocol::{self, Message, Welcome, PROTOCOL_VERSION};
use crate::transport::conn::{ConnError, FrameReader, ReadAhead, Silence};
use anyhow::{anyhow, bail, Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use std::path::Path;

/// What a connection turned out to be.
pub(super) enum Accepted {
    /// Served already (a reverse connection, a further channel of a stripe, a Passive brick
    /// told so) or closed without a word.
    Done,
    /// A replication connection, ready for batches.
    Replicate(Box<Connection>),
}

/// A replication connection past its handshake: what the batch loop needs, and the fences and
/// locks held while it lasts.
pub(super) struct Connection {
    /// The master's stream, read and checked ahead on a thread of its own.
    pub r: ReadAhead,
    pub session: String,
    pub host: String,
    /// `node:brick` of the master brick.
    pub brick_key: String,
    pub state: AgentState,
    pub state_fd: state::StateDir,
    pub applier: Applier,
    /// A tree shared with other replica sets' bricks (`Hello::shared_tree`).
    pub shared: Option<SharedTree>,
    /// Read-only, for block sums (`Signatures`).
    pub sig_root: OwnedFd,
    /// The replica set's Active lock (none on a volume of one brick per set).
    pub active: Option<std::fs::File>,
    /// A failover waits for this before it promotes the volume.
    _fence: Fence,
    /// The brick's own lock.
    _lock: std::fs::File,
    /// The joined channels' agents wait for this to go.
    _joined: Option<join::Joined>,
}

/// Reads the master's Hello and answers it (`r`: the connection's stream).
pub(super) fn accept(
    root: &Path,
    mut r: FrameReader,
    w: &SharedWriter,
    silence: &Silence,
) -> Result<Accepted> {
    match r.expect_preamble() {
        // Closed without a word: a further channel the master did not need after all.
        Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Ok(Accepted::Done)
        }
        r => r?,
    }
    let hello = match r.read()? {
        Some(Message::Hello(h)) => h,
        Some(Message::Join { offer, index }) => {
            // A further channel of a stripe: its input goes to the agent serving the
            // connection (this process's stdin: only the agent command joins).
            let stdin = rustix::io::dup(std::io::stdin().as_fd()).context("duplicating stdin")?;
            join::join(&offer, index, root, stdin, r.buffered())?;
            return Ok(Accepted::Done);
        }
        Some(m) => bail!("expected Hello, got {}", m.name()),
        None => return Ok(Accepted::Done),
    };
    let host = crate::config::node_name();
    if hello.protocol != PROTOCOL_VERSION {
        return Err(Permanent(format!(
            "master speaks protocol version {}, this agent on {host} speaks {PROTOCOL_VERSION}: install the same georep version on both sites",
            hello.protocol
        ))
        .into());
    }
    silence.set_limit(protocol::silence_limit(hello.silence_ms));
    let meta = std::fs::symlink_metadata(root).map_err(|e| {
        anyhow!(
            "slave root {} on {host} is not usable ({e}): create it there (mkdir -p {}) or name an existing volume",
            root.display(),
            root.display()
        )
    })?;
    if !meta.is_dir() {
        bail!("slave root {} on {host} is not a directory", root.display());
    }
    refuse_nested(root, &host)?;
    refuse_enclosing(root, &host)?;
    // Held until this connection ends: the state is reached through its descriptor.
    let state_fd = state::check_state_dir(root, &host)?;
    let state_dir = state_fd.path();
    let mut state = AgentState::open_in(&state_fd)
        .with_context(|| format!("opening {} on {host}", state_fd.shown().display()))?;
    let brick_key = format!("{}:{}", hello.master_node, hello.brick);
    if hello.mode == protocol::MODE_REVERSE {
        super::reverse::serve_reverse(root, &host, &mut state, &hello, r, &mut w.lock())?;
        return Ok(Accepted::Done);
    }
    if hello.mode != protocol::MODE_REPLICATE {
        bail!("unknown connection mode {} from the master", hello.mode);
    }
    // Held for the connection's life: a failover waits for it (ending this process) before it
    // promotes the volume, and once promoted the role check below refuses.
    let _fence = Fence::enter(&state_dir, root)?;
    let promoted = state.role()? == Role::Primary;
    if hello.epoch < state.epoch && !promoted {
        return Err(Permanent(format!(
            "slave volume {} on {host} is at epoch {} after a failover and failback, this master node is at {}: run `georep failback <mastervol> <slave>` on this node too (it brings back the DR changes and takes the new epoch)",
            root.display(),
            state.epoch,
            hello.epoch
        ))
        .into());
    }
    if promoted {
        let when = state
            .failover_ns()?
            .map(|t| format!(" at {} UTC", utc(t)))
            .unwrap_or_default();
        return Err(Permanent(format!(
            "slave volume {} on {host} was promoted by `georep failover`{when} (epoch {}, this master is at {}): this master is fenced and nothing it sends is applied. Bring back what changed there with `georep resync --reverse <mastervol> <slave>`, then `georep failback <mastervol> <slave>`",
            root.display(),
            state.epoch,
            hello.epoch
        ))
        .into());
    }
    // The brick's own lock first: a stale connection of this same brick (the master gave up
    // on it and came back) is ended here, which frees the replica set's lock it holds too.
    let (tmp, _lock) = brick_tmp(&state_dir, &brick_key)?;
    let (active, previous_active) =
        match claim_replica_set(&state_dir, &hello.replica_set, &brick_key)? {
            Claim::Active(lock, prev) => (lock, prev),
            Claim::Passive(holder) => {
                tracing::info!(brick = %brick_key, active = %holder, "passive connection");
                w.send_flush(&Message::Welcome(Box::new(Welcome {
                    passive_to: Some(holder),
                    ..welcome(&state, &host, state.last_batch(&brick_key)?)?
                })))?;
                return Ok(Accepted::Done);
            }
        };
    // Read-only, for block sums (`Signatures`).
    let sig_root = fsutil::open_root(root)
        .with_context(|| format!("opening slave root {} on {host}", root.display()))?;
    let root_fd = fsutil::open_root(root)
        .with_context(|| format!("opening slave root {} on {host}", root.display()))?;
    let tmp_fd = fsutil::open_root(&tmp)?;
    // What of the master's attribute namespaces this agent can write here: its privileges and
    // the DR filesystem decide (tried on a scratch file in the temp directory).
    let (xattrs, xattr_warning) = match hello.xattrs {
        0 => (0, None),
        want => crate::xattr::probe(tmp_fd.as_fd(), "xattr-probe", want),
    };
    if let Some(w) = &xattr_warning {
        tracing::warn!(brick = %brick_key, "extended attributes: {w}");
    }
    let mut applier = Applier::new(root_fd, tmp_fd);
    applier.set_xattr_scope(xattrs);
    // Keyed by replica set where there is one: the brick that takes over its set's role
    // carries on its times, never leaving the previous Active's behind.
    let shared = if hello.shared_tree {
        let key = if hello.replica_set.is_empty() {
            &brick_key
        } else {
            &hello.replica_set
        };
        Some(SharedTree::open(&state_fd, key)?)
    } else {
        None
    };
    if hello.trash_days > 0 {
        applier.set_trash(Some(open_trash(
            &state_dir,
            &hello.session,
            hello.trash_days,
        )?));
    }
    // Further channels of a stripe join through here (the master asked for several). Not
    // under `georep serve`: its channels are fed by one session loop that waits on each
    // channel's input, and it offers a window big enough for a long link on one channel.
    let rendezvous = match hello.channels {
        0 | 1 => None,
        _ if std::env::var_os(SERVED_BY_SERVE).is_some() => None,
        _ => match join::Rendezvous::bind() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("one channel only: {e:#}");
                None
            }
        },
    };
    let previous_stime_ns = match &previous_active {
        Some(prev) => state
            .stimes()?
            .into_iter()
            .find(|(b, _)| b == prev)
            .map(|(_, t)| t)
            .unwrap_or(0),
        None => 0,
    };
    w.send_flush(&Message::Welcome(Box::new(Welcome {
        previous_active,
        previous_stime_ns,
        xattrs,
        xattr_warning,
        join: rendezvous.as_ref().map(|r| r.offer().clone()),
        empty: holds_nothing(root),
        ..welcome(&state, &host, state.last_batch(&brick_key)?)?
    })))?;
    // Held while the connection is served: the joined channels' agents wait for it to end.
    let mut _joined = None;
    if let Some(rv) = rendezvous {
        match r.read()? {
            Some(Message::Stripe { channels: 1 }) => {}
            Some(Message::Stripe { channels }) => {
                let (inputs, joined) = rv.accept(channels, root, silence)?;
                r = r.into_striped(inputs);
                _joined = Some(joined);
                tracing::debug!(brick = %brick_key, channels, "stream striped");
            }
            Some(m) => bail!("expected Stripe after the Welcome, got {}", m.name()),
            None => return Ok(Accepted::Done),
        }
    }
    if hello.compression != 0 {
        r = r.into_decompressed()?;
    }
    // From here on the stream is read and checked on a thread of its own (up to 32 MiB ahead)
    // while this thread applies: sshd's pipe stays drained while many small files are created.
    let r = ReadAhead::spawn(r, READ_AHEAD_BYTES)?;
    tracing::info!(brick = %brick_key, root = %root.display(), "master connected");
    Ok(Accepted::Replicate(Box::new(Connection {
        r,
        session: hello.session.clone(),
        host,
        brick_key,
        state,
        state_fd,
        applier,
        shared,
        sig_root,
        active,
        _fence,
        _lock,
        _joined,
    })))
}
