//! The journal writer processes: one per session brick, from `create` to `delete`, under an
//! flock on `writer.lock` (at most one per brick), in a process group of its own so that a
//! Ctrl-C meant for another command does not stop journaling.

use super::{log_dir, stop_on_signals};
use crate::config::Home;
use crate::journal::writer::Writer;
use crate::journal::JournalStore;
use crate::session;
use crate::volume::Brick;
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `georep journal --session S --brick PATH`: the journal writer of one brick, until a signal.
pub fn run_journal(home: &Home, session: &str, brick_path: &Path) -> Result<()> {
    let brick = Brick {
        node: crate::config::node_name(),
        path: brick_path.to_path_buf(),
    };
    let dir = session::brick_state_dir(home, session, &brick);
    let Some(_lock) = crate::fsutil::lock_exclusive(&dir.join("writer.lock"), Duration::ZERO)?
    else {
        bail!(
            "a journal writer for brick {} of session {session} is already running (pid {})",
            brick_path.display(),
            std::fs::read_to_string(dir.join("writer.pid"))
                .unwrap_or_default()
                .trim()
        );
    };
    crate::fsutil::atomic_write(
        &dir.join("writer.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    let stop = stop_on_signals()?;
    let mut w = Writer::start(brick_path, &dir.join("journal.db"))?;
    tracing::info!(brick = %brick_path.display(), dirs = w.watched_dirs(), "journal writer running");
    w.run(&stop)?;
    let _ = std::fs::remove_file(dir.join("writer.pid"));
    Ok(())
}

/// `georep <sub> --session <session> [--brick <brick>]` (this binary) for the background: no
/// stdin, output appended to `log_path`, logging at `level`.
pub(crate) fn georep_command(
    sub: &str,
    session: &str,
    brick: Option<&Path>,
    level: &str,
    log_path: &Path,
) -> Result<Command> {
    let log = crate::fsutil::append_file(log_path)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(sub).arg("--session").arg(session);
    if let Some(b) = brick {
        cmd.arg("--brick").arg(b);
    }
    cmd.env("GEOREP_LOG", level)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}

/// Starts the journal writer of `brick` unless one is running, and waits until it covers the
/// brick (its starting GAP is in the journal).
pub fn ensure_writer(home: &Home, session: &str, brick: &Brick) -> Result<()> {
    let dir = session::brick_state_dir(home, session, brick);
    if crate::fsutil::is_locked(&dir.join("writer.lock")) {
        return Ok(()); // running
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // No writer runs: a broken journal is moved aside here (the writer would do it too).
    let journal = JournalStore::open_or_replace(&dir.join("journal.db"))?;
    let before = journal.last_seq()?;
    let log_path = log_dir(home, session).join(format!(
        "journal-{}.log",
        session::slug(&brick.path.display().to_string())
    ));
    let mut cmd = georep_command(
        "journal",
        session,
        Some(&brick.path),
        &crate::options::env_log_level(),
        &log_path,
    )?;
    // Its own process group: a Ctrl-C meant for `start` does not stop journaling.
    let mut child = cmd
        .process_group(0)
        .spawn()
        .context("starting the journal writer")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if journal.last_gap_after(before)?.is_some() {
            break;
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "journal writer for {} exited ({st}): {}",
                brick.path.display(),
                crate::fsutil::log_tail(&log_path, 3)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "journal writer for {} did not start watching within 120 s (see {})",
                brick.path.display(),
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Reap it whenever it ends, so it never lingers as a zombie of ours.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// Stops the journal writer of `brick` (SIGTERM, then waits for its lock to be released).
pub fn stop_writer(home: &Home, session: &str, brick: &Brick) -> Result<()> {
    let dir = session::brick_state_dir(home, session, brick);
    let Ok(pid) = std::fs::read_to_string(dir.join("writer.pid")) else {
        return Ok(());
    };
    let lock = dir.join("writer.lock");
    if !crate::fsutil::is_locked(&lock) {
        return Ok(()); // not running
    }
    if let Some(pid) = pid
        .trim()
        .parse()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::fsutil::is_locked(&lock) {
        if Instant::now() > deadline {
            bail!(
                "journal writer of {} did not stop within 10 s",
                brick.path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
