//! The batch loop of a replication connection: ops and file content applied as they stream,
//! each batch handed to the durability thread, which acknowledges it once synced.

use super::apply::{ApplyError, ContentError};
use super::durable::{self, Applied, Durability, SharedWriter};
use super::handshake::Connection;
use super::listing::send_listing;
use super::sigs;
use super::state::{AgentState, Role};
use crate::fsutil;
use crate::protocol::{self, Message};
use crate::transport::conn::{ConnError, Silence};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// Applies batches until the master says `Bye` or the connection ends.
pub(super) fn serve(c: Connection, root: &Path, w: &SharedWriter, silence: &Silence) -> Result<()> {
    let Connection {
        mut r,
        session,
        host,
        brick_key,
        state,
        state_fd,
        mut applier,
        mut shared,
        sig_root,
        active,
        ..
    } = c;

    let mut batch: Option<BatchState> = None;
    let mut skipping_file = false;
    let durability = Durability::spawn(
        durable::Target {
            root: fsutil::open_root(root)?,
            state: AgentState::open_in(&state_fd)?,
            brick: brick_key.clone(),
            session,
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
                    bail!(crate::error::Permanent(format!(
                        "slave volume {} on {host} was promoted by `georep failover` while this master was replicating: it is fenced now. Run `georep resync --reverse <mastervol> <slave>`, then `georep failback <mastervol> <slave>`",
                        root.display()
                    )));
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
                    Err(ContentError::Failed(e)) => {
                        if !skipping_file {
                            skipping_file = true;
                            failed(w, b, b.seen - 1, e)?;
                        }
                    }
                    Err(ContentError::Broken(msg)) => bail!(msg),
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
                    Err(ContentError::Failed(e)) => {
                        if !skipping_file {
                            failed(w, b, b.seen - 1, e)?;
                        }
                    }
                    Err(ContentError::Broken(msg)) => bail!(msg),
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

struct BatchState {
    id: u64,
    /// The master's stime as of this batch (recorded once the batch is durable).
    stime_ns: i64,
    /// Upper bound announced in `BatchBegin` (the master may skip a file it cannot read).
    declared: u32,
    seen: u32,
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
