//! The slave agent (`georep agent --volume V`): speaks the protocol on a byte stream (stdin/stdout
//! under sshd or the local transport), applies batches beneath the slave root, and acks each
//! batch only after it is durable.
//!
//! Invariant: `Ack{id}` is sent only after every op of batch `id` was applied or reported
//! `Failed`, the filesystem was synced, and `agent.db` recorded the batch.

pub mod apply;
mod attrs;
mod direct;
mod durable;
mod fusesync;
mod join;
pub mod locks;
mod shared;
mod sigs;
pub mod state;

use crate::error::Permanent;
use crate::fsutil;
use crate::protocol::{self, Message, Welcome, PROTOCOL_VERSION};
use crate::transport::conn::{
    BoxRead, BoxWrite, ConnError, FrameReader, FrameWriter, ReadAhead, Silence,
};
use anyhow::{anyhow, bail, Context, Result};
use apply::{Applier, ApplyError};
use durable::{Applied, Durability, SharedWriter};
use locks::{brick_tmp, claim_replica_set, Claim, Fence};
use rustix::fd::AsFd;
use state::{AgentState, Role};
use std::path::Path;

/// How far the agent decodes ahead of what it has applied (bytes of messages).
const READ_AHEAD_BYTES: usize = 32 << 20;

struct BatchState {
    id: u64,
    /// The master's stime as of this batch (recorded once the batch is durable).
    stime_ns: i64,
    /// Upper bound announced in `BatchBegin` (the master may skip a file it cannot read).
    declared: u32,
    seen: u32,
}

/// The agent's input: stdin, with the pipe enlarged when it is one (sshd writes bigger pieces).
pub fn input_from_stdin() -> Result<BoxRead> {
    let stdin = std::io::stdin();
    // Best effort: 1 MiB is the default unprivileged limit (/proc/sys/fs/pipe-max-size).
    let _ = rustix::pipe::fcntl_setpipe_size(stdin.as_fd(), 1 << 20);
    let raw =
        rustix::fd::BorrowedFd::try_clone_to_owned(&stdin.as_fd()).context("duplicating stdin")?;
    Ok(Box::new(std::fs::File::from(raw)))
}

pub use crate::transport::serve::SERVED_BY_SERVE;

/// How long past its silence limit an agent may take to end on its own before the watchdog
/// ends the process.
const SILENCE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves one master connection until it says `Bye` or closes.
pub fn serve(root: &Path, input: BoxRead, output: BoxWrite) -> Result<()> {
    let w = SharedWriter::new(FrameWriter::new(output));
    w.lock().send_preamble().context("writing to the master")?;
    let (input, silence) = Silence::watch(input);
    silence.watchdog(SILENCE_GRACE, "the master".into());
    let r = FrameReader::new(input);
    // Every thread that writes to `w` has ended when serve_inner returns.
    let r = serve_inner(root, r, &w, &silence);
    let mut w = w.lock();
    match r {
        Ok(()) => {
            let _ = w.flush();
            Ok(())
        }
        Err(e) => {
            // Tell the master why we stop; it prints this instead of "connection closed".
            let _ = w.send(&Message::Error(protocol::ErrorMsg {
                message: format!("{e:#}"),
                permanent: e
                    .chain()
                    .any(|c| c.downcast_ref::<crate::error::Permanent>().is_some()),
            }));
            let _ = w.flush();
            Err(e)
        }
    }
}

fn serve_inner(root: &Path, mut r: FrameReader, w: &SharedWriter, silence: &Silence) -> Result<()> {
    match r.expect_preamble() {
        // Closed without a word: a further channel the master did not need after all.
        Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
        r => r?,
    }
    let hello = match r.read()? {
        Some(Message::Hello(h)) => h,
        Some(Message::Join { offer, index }) => {
            // A further channel of a stripe: its input goes to the agent serving the
            // connection (this process's stdin: only the agent command joins).
            let stdin = rustix::io::dup(std::io::stdin().as_fd()).context("duplicating stdin")?;
            return join::join(&offer, index, root, stdin, r.buffered());
        }
        Some(m) => bail!("expected Hello, got {}", m.name()),
        None => return Ok(()),
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
        return serve_reverse(root, &host, &mut state, &hello, r, &mut w.lock());
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
                return Ok(());
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
    let mut shared = if hello.shared_tree {
        let key = if hello.replica_set.is_empty() {
            &brick_key
        } else {
            &hello.replica_set
        };
        Some(shared::SharedTree::open(&state_fd, key)?)
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
            None => return Ok(()),
        }
    }
    if hello.compression != 0 {
        r = r.into_decompressed()?;
    }
    // From here on the stream is read and checked on a thread of its own (up to 32 MiB ahead)
    // while this thread applies: sshd's pipe stays drained while many small files are created.
    let mut r = ReadAhead::spawn(r, READ_AHEAD_BYTES)?;
    tracing::info!(brick = %brick_key, root = %root.display(), "master connected");

    let mut batch: Option<BatchState> = None;
    let mut skipping_file = false;
    let durability = Durability::spawn(
        durable::Target {
            root: fsutil::open_root(root)?,
            state: AgentState::open_in(&state_fd)?,
            brick: brick_key.clone(),
            session: hello.session.clone(),
            describe: format!("{} on {host}", root.display()),
        },
        w.clone(),
    )?;
    let failed = |w: &SharedWriter, b: &BatchState, op: u32, e: ApplyError| -> Result<()> {
        tracing::warn!(batch = b.id, path = %e.path, "{}", e.message);
        w.send(&Message::Failed(protocol::Failed {
            batch: b.id,
            op,
            path: e.path,
            errno: e.errno,
            message: e.message,
        }))?;
        Ok(())
    };
    loop {
        let msg = match r.read_within(Some((silence, silence.limit()))) {
            Ok(Some(m)) => m,
            Ok(None) => {
                if let Some(b) = batch {
                    bail!(
                        "master closed the connection in the middle of batch {}",
                        b.id
                    );
                }
                return durability.drain();
            }
            Err(e) => {
                if matches!(e, ConnError::Silent(_)) {
                    // The master is presumed gone: another brick of the set may take over
                    // now, not once the batches still syncing here are done.
                    drop(active);
                }
                return Err(e.into());
            }
        };
        let in_file = applier.file_open();
        match msg {
            Message::BatchBegin(b) => {
                if batch.is_some() {
                    bail!("BatchBegin {} inside another batch", b.id);
                }
                if b.ops > protocol::MAX_BATCH_OPS
                    || (b.ops > 1 && b.bytes > protocol::MAX_BATCH_BYTES)
                {
                    bail!(
                        "batch {} declares {} ops and {} bytes, over the limits of {} ops and {} bytes",
                        b.id,
                        b.ops,
                        b.bytes,
                        protocol::MAX_BATCH_OPS,
                        protocol::MAX_BATCH_BYTES
                    );
                }
                if state.role()? == Role::Primary {
                    bail!(
                        "slave volume {} on {host} was promoted by `georep failover` while this master was replicating: it is fenced now. Run `georep resync --reverse <mastervol> <slave>`, then `georep failback <mastervol> <slave>`",
                        root.display()
                    );
                }
                tracing::debug!(batch = b.id, ops = b.ops, "batch begins");
                batch = Some(BatchState {
                    id: b.id,
                    declared: b.ops,
                    seen: 0,
                    stime_ns: b.max_ts_ns,
                });
            }
            Message::Op(op) => {
                let b = batch
                    .as_mut()
                    .ok_or_else(|| anyhow!("op outside a batch"))?;
                if in_file {
                    bail!("op inside a file's content");
                }
                let idx = next_op(b)?;
                let r = match shared.as_mut() {
                    Some(st) => st.apply(&mut applier, &op)?,
                    None => applier.apply(&op),
                };
                if let Err(e) = r {
                    failed(w, b, idx, e)?;
                }
            }
            Message::Signatures(asks) => {
                if in_file {
                    bail!("Signatures inside a file's content");
                }
                let mut w = w.lock();
                for a in &asks {
                    sigs::send(&sig_root, a, &mut w)?;
                }
                w.flush()?;
            }
            Message::FileBegin(_) | Message::FileAppend(_) | Message::FileDelta(_) => {
                let kind = msg.name();
                let b = batch
                    .as_mut()
                    .ok_or_else(|| anyhow!("file outside a batch"))?;
                if in_file {
                    bail!("{kind} inside another file");
                }
                let path = match &msg {
                    Message::FileBegin(fb) => &fb.path,
                    Message::FileAppend(fa) => &fa.path,
                    Message::FileDelta(fd) => &fd.path,
                    _ => unreachable!("matched above"),
                };
                if path.is_root() {
                    bail!("{kind} for the slave root itself");
                }
                let idx = next_op(b)?;
                skipping_file = false;
                let begun = match &msg {
                    Message::FileAppend(fa) if fa.base > fa.size => bail!(
                        "FileAppend of {} declares a base of {} bytes beyond its size {}",
                        fa.path,
                        fa.base,
                        fa.size
                    ),
                    Message::FileAppend(fa) => applier.begin_append(fa),
                    Message::FileBegin(fb) => applier.begin_file(fb),
                    Message::FileDelta(fd) => applier.begin_delta(fd),
                    _ => unreachable!("matched above"),
                };
                if let Err(e) = begun {
                    skipping_file = true;
                    failed(w, b, idx, e)?;
                }
            }
            Message::Chunk(_) | Message::Hole(_) | Message::Copy { .. } => {
                let b = batch
                    .as_mut()
                    .ok_or_else(|| anyhow!("content outside a batch"))?;
                let r = match &msg {
                    Message::Chunk(data) => applier.chunk(data),
                    Message::Hole(len) => applier.hole(*len),
                    Message::Copy { first, count } => applier.copy_blocks(*first, *count),
                    _ => unreachable!("matched above"),
                };
                match r {
                    Ok(()) => {}
                    Err(Ok(e)) => {
                        if !skipping_file {
                            skipping_file = true;
                            failed(w, b, b.seen - 1, e)?;
                        }
                    }
                    Err(Err(msg)) => bail!(msg),
                }
            }
            Message::FileEnd(fe) => {
                let b = batch
                    .as_mut()
                    .ok_or_else(|| anyhow!("FileEnd outside a batch"))?;
                let ended = match shared.as_mut() {
                    Some(st) => {
                        let path = applier.file_path().cloned();
                        st.end_file(&mut applier, path, &fe.hash, fe.commit)?
                    }
                    None => applier.end_file(&fe.hash, fe.commit),
                };
                match ended {
                    Ok(_) => {}
                    Err(Ok(e)) => {
                        if !skipping_file {
                            failed(w, b, b.seen - 1, e)?;
                        }
                    }
                    Err(Err(msg)) => bail!(msg),
                }
                skipping_file = false;
            }
            Message::BatchEnd(end) => {
                let b = batch
                    .take()
                    .ok_or_else(|| anyhow!("BatchEnd outside a batch"))?;
                if in_file {
                    bail!("BatchEnd inside a file's content");
                }
                if end.id != b.id || end.ops != b.seen {
                    bail!(
                        "batch {} ended as batch {} claiming {} ops, but {} ops arrived",
                        b.id,
                        end.id,
                        end.ops,
                        b.seen
                    );
                }
                tracing::debug!(batch = b.id, ops = b.seen, "batch applied");
                // Synced and acknowledged by the durability thread while the next one applies.
                let (fsync, markers) = applier.take_fsyncs();
                durability.push(Applied {
                    id: b.id,
                    stime_ns: b.stime_ns,
                    wrote: b.seen > 0,
                    fsync,
                    markers,
                })?;
            }
            Message::Heartbeat => {
                w.send_flush(&Message::Heartbeat)?;
            }
            Message::List {
                checksum,
                paths,
                xattrs,
            } => {
                if batch.is_some() {
                    bail!("List inside a batch");
                }
                // The listing is a series of frames: no ack in between.
                durability.drain()?;
                send_listing(root, &mut w.lock(), checksum, paths, xattrs).with_context(|| {
                    format!("listing slave volume {} on {host}", root.display())
                })?;
            }
            Message::Bye => {
                if batch.is_some() {
                    bail!("Bye inside a batch");
                }
                return durability.drain();
            }
            m => bail!("unexpected {} from the master", m.name()),
        }
    }
}

/// A slave root inside another slave volume would be replicated over by that volume's
/// sessions: its files and its `.georep` state deleted or overwritten as extras. Refused.
fn refuse_nested(root: &Path, host: &str) -> Result<()> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    for outer in root.ancestors().skip(1) {
        if outer.join(".georep/agent.db").exists() {
            bail!(
                "slave root {} on {host} is inside slave volume {}: that volume's sessions would overwrite or delete it. Use a slave root outside {}",
                root.display(),
                outer.display(),
                outer.display()
            );
        }
    }
    Ok(())
}

/// The converse of [`refuse_nested`]: a new slave volume (no `agent.db` yet) whose tree holds
/// another slave volume would replicate over that one, and make it nested. Walked once, when
/// the volume is new (a DR directory seeded beforehand costs one walk); memory is the depth.
fn refuse_enclosing(root: &Path, host: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if root.join(".georep/agent.db").exists() {
        return Ok(());
    }
    let dev = std::fs::metadata(root)?.dev();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if !t.is_dir() || (dir == root && e.file_name() == ".georep") {
                continue;
            }
            let path = e.path();
            if e.file_name() == ".georep" && path.join("agent.db").exists() {
                bail!(
                    "slave root {} on {host} holds slave volume {} (its .georep/agent.db): this \
                     volume's sessions would overwrite or delete it. Use a slave root beside it; \
                     if {} is no longer a slave volume, remove {} first",
                    root.display(),
                    dir.display(),
                    dir.display(),
                    path.display()
                );
            }
            if e.metadata().is_ok_and(|m| m.dev() == dev) {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// This agent's Welcome (Active, no takeover; callers set the rest).
fn welcome(state: &AgentState, host: &str, last_batch: u64) -> Result<Welcome> {
    Ok(Welcome {
        protocol: PROTOCOL_VERSION,
        georep_version: env!("CARGO_PKG_VERSION").to_string(),
        volume_id: state.volume_id.clone(),
        epoch: state.epoch,
        last_batch,
        slave_host: host.to_string(),
        passive_to: None,
        previous_active: None,
        previous_stime_ns: 0,
        replicated_from: state.replicated_from(protocol::MAX_REPLICATED_FROM)?,
        xattrs: 0,
        xattr_warning: None,
        join: None,
        empty: false,
    })
}

/// Whether the slave root holds nothing but `.georep` (false when it cannot be read).
fn holds_nothing(root: &Path) -> bool {
    std::fs::read_dir(root).is_ok_and(|mut d| {
        d.all(|e| {
            e.is_ok_and(|e| e.file_name().as_encoded_bytes() == crate::protocol::path::STATE_DIR)
        })
    })
}

fn utc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// A reverse connection (resync --reverse, failback): lists and sends the slave's files, and
/// demotes the volume when asked. Never writes the tree.
fn serve_reverse(
    root: &Path,
    host: &str,
    state: &mut AgentState,
    hello: &protocol::Hello,
    mut r: FrameReader,
    w: &mut FrameWriter,
) -> Result<()> {
    // Reads for verify, a scrub or a resync: they yield the CPU and the disk to the agent
    // that applies the live stream.
    crate::fsutil::lower_priority();
    // Read-only: what this agent may read of the master's namespaces (verify compares them).
    w.send(&Message::Welcome(Box::new(Welcome {
        xattrs: crate::xattr::permitted(hello.xattrs),
        ..welcome(state, host, 0)?
    })))?;
    w.flush()?;
    if hello.compression != 0 {
        r = r.into_decompressed()?;
    }
    tracing::info!(master = %hello.master_node, "reverse connection");
    let root_fd = fsutil::open_root(root)?;
    loop {
        match r.read()? {
            None | Some(Message::Bye) => return Ok(()),
            Some(Message::Heartbeat) => {
                w.send(&Message::Heartbeat)?;
                w.flush()?;
            }
            Some(Message::List {
                checksum,
                paths,
                xattrs,
            }) => send_listing(root, w, checksum, paths, xattrs)
                .with_context(|| format!("listing {} on {host}", root.display()))?,
            Some(Message::Fetch { paths }) => {
                for (i, p) in paths.iter().enumerate() {
                    let scope = crate::xattr::permitted(hello.xattrs);
                    if let Err(e) = send_file(&root_fd, p, w, scope) {
                        w.send(&Message::Failed(protocol::Failed {
                            batch: 0,
                            op: i as u32,
                            path: p.clone(),
                            errno: fsutil::errno_of(&e),
                            message: format!("reading {p} on {host}: {e}"),
                        }))?;
                    }
                }
                w.send(&Message::FetchEnd)?;
                w.flush()?;
            }
            Some(Message::Changes { after }) => send_changes(state, after, w)?,
            Some(Message::Demote) => {
                // Idempotent: the second master node failing back gets the same epoch.
                let epoch = if state.role()? == Role::Primary {
                    state.set_role(Role::Slave)?
                } else {
                    state.epoch
                };
                stop_dr_journal(state);
                tracing::info!(epoch, "volume demoted to slave by failback");
                w.send(&Message::Demoted { epoch })?;
                w.flush()?;
            }
            Some(m) => bail!(
                "{} on a reverse connection: a reverse connection only reads the volume",
                m.name()
            ),
        }
    }
}

/// The paths the DR-side journal recorded since failover (none, incomplete, when there is no
/// journal or it has a gap).
fn send_changes(state: &AgentState, after: u64, w: &mut FrameWriter) -> Result<()> {
    let mut complete = false;
    let mut last = after;
    if let Some((path, start)) = state.dr_journal()? {
        if path.exists() {
            let j = crate::journal::JournalStore::open(&path)?;
            complete = j.last_gap_after(start)?.is_none();
            let mut after = start.max(after);
            loop {
                let recs = j.read_after(after, 8192)?;
                let Some(r) = recs.last() else { break };
                after = r.seq;
                last = after;
                let mut paths = Vec::with_capacity(recs.len());
                for r in recs {
                    if matches!(
                        r.op,
                        crate::journal::RecOp::Marker
                            | crate::journal::RecOp::Gap
                            | crate::journal::RecOp::Stop
                    ) {
                        continue;
                    }
                    paths.push(r.path);
                    paths.extend(r.path2);
                }
                w.send(&Message::ChangedPaths(paths))?;
            }
        }
    }
    w.send(&Message::ChangesEnd { complete, last })?;
    w.flush()?;
    Ok(())
}

/// Stops the journal writer failover started (its pid file is next to its journal).
fn stop_dr_journal(state: &AgentState) {
    let Ok(Some((path, _))) = state.dr_journal() else {
        return;
    };
    let pid = path
        .parent()
        .map(|d| d.join("writer.pid"))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|p| p.trim().parse().ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if let Err(e) = state.set_dr_journal(None) {
        tracing::warn!("forgetting the DR journal: {e:#}");
    }
}

/// Sends one regular file as FileBegin, Chunks, FileEnd (commit = unchanged while read).
fn send_file(
    root: &rustix::fd::OwnedFd,
    path: &protocol::RelPath,
    w: &mut FrameWriter,
    xattrs: u8,
) -> std::io::Result<()> {
    let fd =
        fsutil::open_regular_beneath(root.as_fd(), path.as_bytes(), rustix::fs::OFlags::empty())?
            .ok_or_else(|| std::io::Error::other("not a regular file"))?;
    let st = rustix::fs::fstat(&fd)?;
    let meta = protocol::Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs: (xattrs != 0)
            .then(|| crate::xattr::read(crate::xattr::At::Fd(fd.as_fd()), xattrs))
            .transpose()?
            .flatten(),
    };
    let size = st.st_size as u64;
    w.send(&Message::FileBegin(protocol::FileBegin {
        path: path.clone(),
        meta,
        size,
    }))?;
    let mut f = std::fs::File::from(fd);
    let mut h = blake3::Hasher::new();
    let mut left = size;
    let mut intact = true;
    // A read error ends the file with zeros and `commit: false` (the stream stays in step), then
    // is reported for this path.
    let mut read_error = None;
    while left > 0 {
        let want = left.min(1 << 20) as usize;
        let (n, failed) = w.send_content(&mut f, want, &mut intact, &mut |d| {
            h.update(d);
        })?;
        read_error = read_error.or(failed);
        left -= n as u64;
    }
    let after = rustix::fs::fstat(&f)?;
    let unchanged = after.st_size == st.st_size
        && (after.st_mtime, after.st_mtime_nsec) == (st.st_mtime, st.st_mtime_nsec);
    w.send(&Message::FileEnd(protocol::FileEnd {
        hash: *h.finalize().as_bytes(),
        commit: intact && unchanged,
    }))?;
    read_error.map_or(Ok(()), Err)
}

/// Today's trash directory (`.georep/trash/<YYYY-MM-DD>`). Days older than the longest retention any session asked for on
/// this volume are purged: one session's short retention never empties another's trash.
fn open_trash(state_dir: &Path, session: &str, keep_days: u32) -> Result<rustix::fd::OwnedFd> {
    let base = state_dir.join("trash");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mine = base.join(format!(".keep-{}", crate::fsutil::slug(session)));
    fsutil::atomic_write(&mine, format!("{keep_days}\n").as_bytes())?;
    let longest = std::fs::read_dir(&base)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".keep-"))
        .filter_map(|e| {
            std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .max()
        .unwrap_or(u64::from(keep_days));
    let today = chrono::Local::now().date_naive();
    // A retention reaching before the calendar's start purges nothing.
    let oldest = today.checked_sub_days(chrono::Days::new(longest));
    if let (Some(oldest), Ok(rd)) = (oldest, std::fs::read_dir(&base)) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(day) = name
                .to_str()
                .and_then(|n| chrono::NaiveDate::parse_from_str(n, "%Y-%m-%d").ok())
            else {
                continue;
            };
            if day < oldest {
                tracing::info!(day = %day, "trash retention over: removing");
                let base_fd = fsutil::open_root(&base)?;
                fsutil::remove_tree(base_fd.as_fd(), name.as_encoded_bytes())
                    .with_context(|| format!("purging {}", e.path().display()))?;
            }
        }
    }
    let dir = base.join(today.format("%Y-%m-%d").to_string());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fsutil::open_root(&dir).with_context(|| format!("opening {}", dir.display()))
}

/// Streams the slave tree (without `.georep`, in `walk::tree_order`) to the master, or only
/// the named `paths` that exist: `Listing`s, then `ListEnd`.
/// Entries per `Listing` message.
const LISTING_CHUNK: usize = 1024;

fn send_listing(
    root: &Path,
    w: &mut FrameWriter,
    checksum: bool,
    paths: Option<Vec<protocol::RelPath>>,
    xattrs: u8,
) -> Result<()> {
    let fd = fsutil::open_root(root)?;
    let xattrs = crate::xattr::permitted(xattrs);
    let mut attrs = crate::xattr::Reader::new(fd.as_fd());
    // Sent as it is read, a chunk at a time: memory does not grow with the tree.
    let mut total = 0u64;
    let mut chunk = Vec::with_capacity(LISTING_CHUNK);
    // Entries with extended attributes weigh more: a Listing is cut by bytes too, far below
    // a frame's limit.
    let mut chunk_bytes = 0usize;
    let mut add = |path: protocol::RelPath, e: crate::entry::Entry| -> Result<()> {
        let hash = if checksum && e.kind == crate::entry::Kind::File {
            Some(
                crate::fsutil::hash_beneath(&fd, &path)
                    .with_context(|| format!("reading {path} on the slave for its checksum"))?,
            )
        } else {
            None
        };
        let mut meta = e.meta();
        if xattrs != 0 {
            meta.xattrs = attrs.read(&path, xattrs);
        }
        chunk.push(protocol::ListEntry {
            path,
            kind: e.kind as u8,
            size: e.size,
            meta,
            target: e.target.clone(),
            hash,
            ino: e.ino,
            nlink: e.nlink,
        });
        total += 1;
        chunk_bytes += chunk.last().map_or(0, |e| e.meta.weight());
        if chunk.len() == LISTING_CHUNK || chunk_bytes > 4 << 20 {
            chunk_bytes = 0;
            w.send(&Message::Listing(std::mem::take(&mut chunk)))?;
        }
        Ok(())
    };
    match paths {
        None => {
            // In tree order: the master merges it with its own walk as it arrives.
            let none = crate::walk::Excludes::default();
            for r in crate::walk::TreeWalk::new(&fd, &none)? {
                let (p, e) = r.with_context(|| format!("listing {}", root.display()))?;
                add(p, e)?;
            }
        }
        Some(paths) => {
            if paths.len() > protocol::MAX_LIST_PATHS {
                bail!(
                    "List names {} paths, more than {}",
                    paths.len(),
                    protocol::MAX_LIST_PATHS
                );
            }
            for p in paths {
                if let Some(e) = crate::walk::lstat_beneath(&fd, &p, Default::default())? {
                    add(p, e)?;
                }
            }
        }
    }
    if !chunk.is_empty() {
        w.send(&Message::Listing(chunk))?;
    }
    w.send(&Message::ListEnd { entries: total })?;
    w.flush()?;
    Ok(())
}

fn next_op(b: &mut BatchState) -> Result<u32> {
    if b.seen >= b.declared {
        bail!(
            "batch {} carries more than its declared {} ops",
            b.id,
            b.declared
        );
    }
    b.seen += 1;
    Ok(b.seen - 1)
}
