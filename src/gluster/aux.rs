//! A Gluster DR volume named as `gluster:<vol>` (`dr1::gluster:gv0-dr`): the agent mounts it
//! itself, as gsyncd's aux mount does, and applies onto that mount.
//!
//! One mount per volume under `$GEOREP_HOME/run/gluster/<vol>`, shared by the agents that use it
//! (one per master brick, and the further channels of a stripe): each holds a shared lock on
//! `<vol>.lock` while it uses the mount; the last one to leave (it gets the lock exclusively)
//! unmounts it. A mount left by a killed agent is used again by the next one, or remade when
//! its client died (`ENOTCONN`).

use crate::config::Home;
use anyhow::{bail, Context, Result};
use rustix::fs::FlockOperation;
use std::path::{Path, PathBuf};

/// The prefix of a slave volume that names a Gluster volume to mount.
pub const PREFIX: &str = "gluster:";

/// A Gluster volume mounted for this process; left (and unmounted when no other agent uses
/// it) on drop.
pub struct AuxMount {
    pub path: PathBuf,
    lock: std::fs::File,
}

/// The glusterd to mount from: `GEOREP_GLUSTER_SERVER`, else this host's loopback.
fn server() -> String {
    std::env::var("GEOREP_GLUSTER_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "127.0.0.1".to_string())
}

/// The slave root an agent applies into for the slave volume `vol`, and the mount that holds
/// it when `vol` names a Gluster volume.
pub fn slave_root(home: &Home, vol: &str) -> Result<(PathBuf, Option<AuxMount>)> {
    match vol.strip_prefix(PREFIX) {
        Some(name) => {
            let m = AuxMount::open(home, name)?;
            Ok((m.path.clone(), Some(m)))
        }
        None => Ok((crate::volume::Volume::slave_root_of(home, vol)?, None)),
    }
}

fn mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // As the kernel writes it: canonical, with space, tab, newline and backslash in octal.
    let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut want = String::new();
    for c in canon.to_string_lossy().chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => want.push_str(&format!("\\{:03o}", c as u32)),
            c => want.push(c),
        }
    }
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
}

/// Takes `op` on `lock`, giving up after a minute: an agent that holds the mount while its
/// client is gone must not stall every later one for good.
fn flock_timed(lock: &std::fs::File, exclusive: bool, what: &Path) -> Result<()> {
    let op = if exclusive {
        FlockOperation::NonBlockingLockExclusive
    } else {
        FlockOperation::NonBlockingLockShared
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match rustix::fs::flock(lock, op) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(100))
            }
            Err(e) => bail!(
                "the aux mount {} stayed locked by other agents for a minute ({e}): is one of them stuck on a dead mount? (`georep` agents using it end when their master reconnects)",
                what.display()
            ),
        }
    }
}

impl AuxMount {
    pub fn open(home: &Home, name: &str) -> Result<AuxMount> {
        crate::volume::validate_name(name)
            .with_context(|| format!("slave volume {PREFIX}{name}: not a Gluster volume name"))?;
        if !rustix::process::geteuid().is_root() {
            bail!(
                "mounting Gluster volume {name} on {} needs root: run the agent as root, or mount the volume yourself and name the mount's path as the slave",
                crate::config::node_name()
            );
        }
        let dir = home.state.join("run").join("gluster");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{name}.lock")))
            .with_context(|| format!("opening {}.lock in {}", name, dir.display()))?;
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        // Shared while it is used; exclusive only to mount it (or unmount it, on the way out).
        // Mounted and answering once the shared lock is held: only then is it used (never the
        // bare directory beneath, which would take the DR copy onto the host's own disk).
        for _ in 0..3 {
            flock_timed(&lock, false, &path)?;
            if mounted(&path) && rustix::fs::statfs(&path).is_ok() {
                return Ok(AuxMount { path, lock });
            }
            flock_timed(&lock, true, &path)?;
            if mounted(&path) && rustix::fs::statfs(&path).is_ok() {
                continue;
            }
            if mounted(&path) {
                // Its client is gone (ENOTCONN): mount it again.
                tracing::warn!(
                    "the aux mount {} lost its client: mounting again",
                    path.display()
                );
                let _ = rustix::mount::unmount(&path, rustix::mount::UnmountFlags::DETACH);
            }
            mount(home, name, &path)?;
        }
        bail!(
            "Gluster volume {name} would not stay mounted at {} on {}: see {}",
            path.display(),
            crate::config::node_name(),
            log_of(home, name).display()
        )
    }
}

fn log_of(home: &Home, name: &str) -> PathBuf {
    home.state.join("log").join(format!("gluster-{name}.log"))
}

fn mount(home: &Home, name: &str, path: &Path) -> Result<()> {
    let log = log_of(home, name);
    if let Some(d) = log.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let source = format!("{}:/{name}", server());
    let out = std::process::Command::new("mount")
        .args(["-t", "glusterfs", "-o"])
        // POSIX ACLs are replicated: the mount must take them.
        .arg(format!("log-file={},acl", log.display()))
        .arg(&source)
        .arg(path)
        .output()
        .with_context(|| format!("running mount -t glusterfs {source}"))?;
    if !out.status.success() {
        bail!(
            "mounting Gluster volume {name} ({source}) at {} on {} failed: {}; is the volume started (`gluster volume start {name}`) and glusterfs-fuse installed? See {}",
            path.display(),
            crate::config::node_name(),
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display()
        );
    }
    tracing::info!(volume = name, mount = %path.display(), "Gluster DR volume mounted");
    Ok(())
}

impl Drop for AuxMount {
    fn drop(&mut self) {
        if rustix::fs::flock(&self.lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
            match rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => {
                    tracing::info!(mount = %self.path.display(), "Gluster DR volume unmounted")
                }
                Err(e) => tracing::warn!(
                    "unmounting {}: {e}; the next agent uses it as it is",
                    self.path.display()
                ),
            }
        }
    }
}
