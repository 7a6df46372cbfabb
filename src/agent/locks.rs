//! The agent's locks on its volume, and how a connection ends another one.
//!
//! - `tmp/<h>.lock` (exclusive, per brick): one connection per master brick. A newer one from
//!   the same brick ends the older (see `brick_tmp`).
//! - `active/<set>.lock` (exclusive, per replica set): one Active brick per replica set.
//! - `fence.lock`: shared by every replicating connection for its whole life, taken exclusive
//!   by `failover` before it promotes the volume. So once the volume is primary no replicating
//!   connection from before is left, and none after it gets past the handshake.
//!
//! Every replicating agent writes its pid next to its brick lock (`tmp/<h>.pid`), which is how
//! a newer connection or a failover finds the process to end.

use crate::fsutil;
use anyhow::{anyhow, bail, Context, Result};
use rustix::fd::AsFd;
use rustix::process::{kill_process, Pid, Signal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(super) enum Claim {
    /// This brick is Active for its replica set (the lock is held for the connection's life);
    /// the brick that was Active before, when it was another one.
    Active(Option<std::fs::File>, Option<String>),
    /// Another brick of the set is Active.
    Passive(String),
}

/// One brick per replica set may ship at a time: the first to connect holds an flock in
/// `.georep/active/` until its connection ends; the others are told they are Passive.
pub(super) fn claim_replica_set(state_dir: &Path, set: &str, brick_key: &str) -> Result<Claim> {
    if set.is_empty() {
        return Ok(Claim::Active(None, None));
    }
    let dir = state_dir.join("active");
    let name = fsutil::slug(set);
    let holder = dir.join(format!("{name}.holder"));
    let Some(lock) = fsutil::lock_exclusive(&dir.join(format!("{name}.lock")), Duration::ZERO)?
    else {
        let who = std::fs::read_to_string(&holder).unwrap_or_default();
        return Ok(Claim::Passive(who.trim().to_string()));
    };
    let prev = std::fs::read_to_string(&holder).unwrap_or_default();
    let prev = prev.trim();
    let previous = (!prev.is_empty() && prev != brick_key).then(|| prev.to_string());
    fsutil::atomic_write(&holder, format!("{brick_key}\n").as_bytes())?;
    Ok(Claim::Active(Some(lock), previous))
}

/// This brick's private temp directory, emptied of what a previous connection left, and the
/// lock that keeps a second connection from the same brick out while we run.
///
/// A brick has one worker at a time on its master node (the worker's own lock there), so a new
/// connection from the same brick means the master gave up on the old one: a link that died
/// without the DR side hearing of it (half-open). The agent still serving it is told to go
/// (SIGTERM, then SIGKILL), and this connection takes over; what the old one had not acked is
/// sent again, and applying it twice leaves the same tree.
pub(super) fn brick_tmp(state_dir: &Path, brick_key: &str) -> Result<(PathBuf, std::fs::File)> {
    let h = blake3::hash(brick_key.as_bytes()).to_hex();
    let base = state_dir.join("tmp");
    std::fs::create_dir_all(&base)?;
    let lock_path = base.join(format!("{}.lock", &h[..16]));
    let pid_path = base.join(format!("{}.pid", &h[..16]));
    let lock = match fsutil::lock_exclusive(&lock_path, Duration::ZERO)? {
        Some(l) => l,
        None => replace_stale_holder(&lock_path, &pid_path, brick_key)?,
    };
    fsutil::atomic_write(&pid_path, format!("{}\n", std::process::id()).as_bytes())?;
    let dir = base.join(&h[..16]);
    std::fs::create_dir_all(&dir)?;
    let fd = fsutil::open_root(&dir)?;
    fsutil::empty_dir(fd.as_fd()).with_context(|| format!("cleaning {}", dir.display()))?;
    Ok((dir, lock))
}

/// Ends the agent holding `lock_path` (its pid is in `pid_path`) and takes the lock.
fn replace_stale_holder(
    lock_path: &Path,
    pid_path: &Path,
    brick_key: &str,
) -> Result<std::fs::File> {
    use rustix::process::{kill_process, Pid, Signal};
    let held = || {
        anyhow!(
            "another georep connection from brick {brick_key} is still applying to this volume and did not end when told to (lock {}); a retry may help",
            lock_path.display()
        )
    };
    let pid = std::fs::read_to_string(pid_path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|&p| p > 0 && p != std::process::id() as i32 && fsutil::holds_flock(p, lock_path))
        .and_then(Pid::from_raw);
    let Some(pid) = pid else {
        // Taken between our try and now, by a holder that has not written its pid yet: wait.
        return fsutil::lock_exclusive(lock_path, Duration::from_secs(2))?.ok_or_else(held);
    };
    tracing::warn!(
        brick = %brick_key,
        "a new connection from this brick replaces the one still held by agent pid {} (the master reconnected: the old link is presumed dead)",
        pid.as_raw_nonzero()
    );
    for (signal, patience) in [(Signal::TERM, 5), (Signal::KILL, 5)] {
        // Still the holder (not a new process with its pid)?
        if !fsutil::holds_flock(pid.as_raw_nonzero().get(), lock_path) {
            return fsutil::lock_exclusive(lock_path, Duration::from_secs(2))?.ok_or_else(held);
        }
        let _ = kill_process(pid, signal);
        if let Some(l) = fsutil::lock_exclusive(lock_path, Duration::from_secs(patience))? {
            return Ok(l);
        }
    }
    Err(held())
}

/// The shared side of `fence.lock`, held by a replicating connection for its life.
pub(super) struct Fence(#[allow(dead_code)] std::fs::File);

impl Fence {
    /// Enters the volume for replication; refused while a failover is fencing it.
    pub(super) fn enter(state_dir: &Path, volume: &Path) -> Result<Fence> {
        let path = state_dir.join("fence.lock");
        let f = fsutil::open_lock(&path)?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(Fence(f)),
            Err(_) => bail!(
                "a failover is promoting slave volume {} right now: this master is being fenced",
                volume.display()
            ),
        }
    }
}

/// For `failover`: ends every replicating connection on the volume whose state is in
/// `state_dir` (SIGTERM, SIGKILL after 5 s) and returns the exclusive fence, held until the
/// volume is promoted, with how many agents were ended. Nothing those connections had not
/// applied yet is applied, and nothing they had not acknowledged is acknowledged.
pub fn fence_replication(
    state_dir: &Path,
    volume: &Path,
    patience: Duration,
) -> Result<(std::fs::File, usize)> {
    let path = state_dir.join("fence.lock");
    let f = fsutil::open_lock(&path)?;
    let until = Instant::now() + patience;
    let mut told: Vec<(i32, Instant)> = Vec::new();
    loop {
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok((f, told.len()));
        }
        for pid in live_agents(state_dir) {
            let Some(p) = Pid::from_raw(pid) else {
                continue;
            };
            match told.iter().find(|(t, _)| *t == pid) {
                None => {
                    tracing::warn!(pid, "failover: ending the replicating agent");
                    let _ = kill_process(p, Signal::TERM);
                    told.push((pid, Instant::now()));
                }
                Some((_, at)) if at.elapsed() > Duration::from_secs(5) => {
                    let _ = kill_process(p, Signal::KILL);
                }
                Some(_) => {}
            }
        }
        if Instant::now() > until {
            bail!(
                "failover could not stop the replicating connection(s) on {} within {} s (agent pids {:?}); nothing was promoted: retry",
                volume.display(),
                patience.as_secs(),
                live_agents(state_dir)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids in `tmp/*.pid` of processes (other than this one) in the fence: running replicating
/// agents, not whatever has a stale pid now.
fn live_agents(state_dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(state_dir.join("tmp"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "pid") {
            if let Some(pid) = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|&p| {
                    p > 0
                        && p != std::process::id() as i32
                        && fsutil::holds_flock(p, &state_dir.join("fence.lock"))
                })
            {
                out.push(pid);
            }
        }
    }
    out
}
