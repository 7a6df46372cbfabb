//! The slave agent (`georep agent --volume V`): speaks the protocol on a byte stream (stdin/stdout
//! under sshd or the local transport), applies batches beneath the slave root, and acks each
//! batch only after it is durable.
//!
//! Invariant: `Ack{id}` is sent only after every op of batch `id` was applied or reported
//! `Failed`, the filesystem was synced, and `agent.db` recorded the batch.

pub mod apply;
mod attrs;
mod batch;
mod direct;
mod durable;
mod fusesync;
mod handshake;
mod join;
mod listing;
pub mod locks;
mod reverse;
mod shared;
mod sigs;
pub mod state;

use crate::fsutil;
use crate::protocol::{self, Message, Welcome, PROTOCOL_VERSION};
use crate::transport::conn::{BoxRead, BoxWrite, FrameReader, FrameWriter, Silence};
use anyhow::{bail, Context, Result};
use durable::SharedWriter;
use rustix::fd::AsFd;
use state::AgentState;
use std::path::Path;

/// How far the agent decodes ahead of what it has applied (bytes of messages).
const READ_AHEAD_BYTES: usize = 32 << 20;

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

fn serve_inner(root: &Path, r: FrameReader, w: &SharedWriter, silence: &Silence) -> Result<()> {
    match handshake::accept(root, r, w, silence)? {
        handshake::Accepted::Done => Ok(()),
        handshake::Accepted::Replicate(c) => batch::serve(*c, root, w, silence),
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
        d.all(|e| e.is_ok_and(|e| e.file_name().as_encoded_bytes() == protocol::path::STATE_DIR))
    })
}

fn utc(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Today's trash directory (`.georep/trash/<YYYY-MM-DD>`). Days older than the longest retention any session asked for on
/// this volume are purged: one session's short retention never empties another's trash.
fn open_trash(state_dir: &Path, session: &str, keep_days: u32) -> Result<rustix::fd::OwnedFd> {
    let base = state_dir.join("trash");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mine = base.join(format!(".keep-{}", fsutil::slug(session)));
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
