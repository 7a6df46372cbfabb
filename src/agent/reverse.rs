//! Reverse connections (verify, a scrub, resync --reverse, failback): the slave is listed and
//! its files sent back, its DR-side journal read, and the volume demoted when asked. The tree is
//! never written.

use super::listing::send_listing;
use super::state::{AgentState, Role};
use super::welcome;
use crate::fsutil;
use crate::protocol::{self, Message, Welcome};
use crate::transport::conn::{FrameReader, FrameWriter};
use anyhow::{bail, Context, Result};
use rustix::fd::AsFd;
use std::path::Path;

/// A reverse connection (resync --reverse, failback): lists and sends the slave's files, and
/// demotes the volume when asked. Never writes the tree.
pub(super) fn serve_reverse(
    root: &Path,
    host: &str,
    state: &mut AgentState,
    hello: &protocol::Hello,
    mut r: FrameReader,
    w: &mut FrameWriter,
) -> Result<()> {
    // Reads for verify, a scrub or a resync: they yield the CPU and the disk to the agent
    // that applies the live stream.
    fsutil::lower_priority();
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
pub(super) fn send_changes(state: &AgentState, after: u64, w: &mut FrameWriter) -> Result<()> {
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
pub(super) fn stop_dr_journal(state: &AgentState) {
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
pub(super) fn send_file(
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
