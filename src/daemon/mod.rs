//! Session lifecycle on this node: `create` (`create.rs`: register, verify, start journaling),
//! the journal writer processes (`writer.rs`), `start`/`stop`/`pause`/`resume` (the monitor in
//! `monitor.rs` runs the workers), `delete`.
//!
//! Invariant: at most one journal writer runs per session brick (an flock on `writer.lock`), and
//! it runs from `create` to `delete`, independent of shipping.

pub mod metrics;
pub mod monitor;

mod create;
mod writer;

pub use create::{create, CreateOptions, Created};
pub(crate) use writer::georep_command;
pub use writer::{ensure_writer, run_journal, stop_writer};

use crate::config::Home;
use crate::session::{self, SessionConfig};
use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn log_dir(home: &Home, session: &str) -> PathBuf {
    home.log.join(session)
}

/// Termination signals set `stop` (SIGINT, SIGTERM, SIGHUP).
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// `georep scrub --now`: asks each local active brick's worker for a pass (read by the worker
/// within a second; `checksum`: hash every file this pass).
pub fn request_scrub(home: &Home, cfg: &SessionConfig, checksum: bool) -> Result<Vec<String>> {
    if !session::is_running(home, &cfg.name) {
        bail!("session {} is not running on this node: `georep start {}` first (a scrub runs in the session's workers)", cfg.name, cfg.name);
    }
    let vol = cfg.volume(home)?;
    if !vol.is_one_set() {
        bail!("volume {} has several replica sets shipping into one slave: a scrub compares the slave with one brick, so it runs on volumes of one replica set only (`georep verify` compares the whole volume)", vol.name);
    }
    let mut out = Vec::new();
    for b in vol.local_bricks_for("scrub")? {
        let dir = session::brick_state_dir(home, &cfg.name, b);
        crate::fsutil::atomic_write(
            &dir.join("scrub.request"),
            if checksum { b"checksum\n" } else { b"\n" },
        )?;
        out.push(format!(
            "scrub requested on {b}{}: `georep scrub {}` shows the result",
            if checksum { " (every file hashed)" } else { "" },
            cfg.name
        ));
    }
    Ok(out)
}

/// `georep start MASTER SLAVE [force]`: starts the session's monitor in the background (or, with
/// `foreground`, runs it here until SIGINT/SIGTERM, for systemd).
pub fn start(home: &Home, cfg: &SessionConfig, force: bool, foreground: bool) -> Result<()> {
    let (master, slave) = (&cfg.master, &cfg.slave);
    if session::is_running(home, &cfg.name) {
        if force {
            return Ok(());
        }
        bail!(
            "session {master} -> {slave} is already started on this node: `georep status {master} {slave}` shows it (add `force` to ignore)"
        );
    }
    // A start clears a pause left from before a stop, and the pid of a monitor that was
    // killed (`stop` must never find that one instead of the new one; a monitor that holds the
    // lock by now, another start's, keeps its own).
    let _ = std::fs::remove_file(session::session_dir(home, &cfg.name).join("paused"));
    let lock = session::monitor_lock(home, &cfg.name);
    if session::monitor_pid(home, &cfg.name)
        .is_none_or(|p| !crate::fsutil::holds_flock(p.as_raw_pid(), &lock))
    {
        let _ = std::fs::remove_file(session::session_dir(home, &cfg.name).join("monitor.pid"));
    }
    if foreground {
        return monitor::run(home, &cfg.name);
    }
    let log_path = log_dir(home, &cfg.name).join("monitor.log");
    let mut cmd = georep_command(
        "monitor",
        &cfg.name,
        None,
        &crate::options::log_level(cfg),
        &log_path,
    )?;
    // Its own process group: the monitor outlives the terminal that started it.
    let mut child = cmd
        .process_group(0)
        .spawn()
        .context("starting the session monitor")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Started once it holds the lock and wrote its pid (a `stop` right after finds it).
        if session::is_running(home, &cfg.name)
            && session::monitor_pid(home, &cfg.name)
                .is_some_and(|p| p.as_raw_pid() as u32 == child.id())
        {
            break;
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "the session monitor exited ({st}): {}",
                crate::fsutil::log_tail(&log_path, 3)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the session monitor did not start within 30 s (see {})",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The monitor runs on its own; reap it if it ends while we still run.
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// `georep stop MASTER SLAVE [force]`: stops the monitor and its workers (each finishes its
/// batch in flight). Journaling goes on, so a later start resumes with a History Crawl.
pub fn stop(home: &Home, cfg: &SessionConfig, force: bool) -> Result<()> {
    let (master, slave) = (&cfg.master, &cfg.slave);
    if !session::is_running(home, &cfg.name) {
        if force {
            return Ok(());
        }
        bail!("session {master} -> {slave} is not running on this node (add `force` to ignore)");
    }
    let deadline = Instant::now() + Duration::from_secs(if force { 10 } else { 90 });
    // The monitor is the process holding the session's lock (started in the background or
    // in the foreground under systemd): the pid it wrote once it is that one (one just started
    // may not have written it yet, one that was killed left its own behind, which another
    // process may have now), else the lock's holder as /proc/locks shows it.
    let lock = session::monitor_lock(home, &cfg.name);
    let holds = |p: &rustix::process::Pid| crate::fsutil::holds_flock(p.as_raw_pid(), &lock);
    let live = || {
        session::monitor_pid(home, &cfg.name)
            .filter(holds)
            .or_else(|| crate::fsutil::flock_holder(&lock).and_then(rustix::process::Pid::from_raw))
    };
    let mut signalled = None;
    while session::is_running(home, &cfg.name) {
        if let Some(pid) = live().filter(|p| Some(*p) != signalled) {
            match rustix::process::kill_process(pid, rustix::process::Signal::TERM) {
                Ok(()) => signalled = Some(pid),
                // Gone meanwhile: the next turn looks again.
                Err(rustix::io::Errno::SRCH) => {}
                Err(e) => bail!(
                    "signalling the monitor (pid {}): {e}: run stop as the user that started the session",
                    pid.as_raw_nonzero()
                ),
            }
        }
        if Instant::now() > deadline {
            let shown = signalled
                .map(|p| p.as_raw_nonzero().to_string())
                .unwrap_or_else(|| "unknown".into());
            if force {
                if let Some(pid) = signalled.filter(holds).or_else(live) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                std::thread::sleep(Duration::from_millis(200));
                if !session::is_running(home, &cfg.name) {
                    return Ok(());
                }
                bail!(
                    "the monitor (pid {shown}) still runs after SIGKILL: see {}",
                    log_dir(home, &cfg.name).display()
                );
            }
            bail!(
                "the monitor (pid {shown}) did not stop within 90 s: see {}, or `georep stop {master} {slave} force`",
                log_dir(home, &cfg.name).display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `georep pause`: workers stop shipping (finishing their batch in flight); the journal keeps
/// recording. Waits until every local brick reports Paused.
pub fn pause(home: &Home, cfg: &SessionConfig) -> Result<()> {
    let (master, slave) = (&cfg.master, &cfg.slave);
    if !session::is_running(home, &cfg.name) {
        bail!("session {master} -> {slave} is not running on this node: start it first");
    }
    let flag = session::session_dir(home, &cfg.name).join("paused");
    crate::fsutil::atomic_write(&flag, crate::options::show_time(now()).as_bytes())?;
    let vol = cfg.volume(home)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    for b in vol.bricks.iter().filter(|b| b.is_local()) {
        let dir = session::brick_state_dir(home, &cfg.name, b);
        while crate::status::BrickStatus::load(&dir)
            .is_none_or(|s| s.status != crate::status::WorkerStatus::Paused)
        {
            if Instant::now() > deadline {
                bail!(
                    "brick {b} did not pause within 90 s (see {})",
                    log_dir(home, &cfg.name).display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// `georep resume`: workers start again and catch up from the journal (History Crawl).
pub fn resume(home: &Home, cfg: &SessionConfig) -> Result<()> {
    let (master, slave) = (&cfg.master, &cfg.slave);
    let flag = session::session_dir(home, &cfg.name).join("paused");
    if !flag.exists() {
        bail!("session {master} -> {slave} is not paused");
    }
    if !session::is_running(home, &cfg.name) {
        bail!("session {master} -> {slave} is not running on this node: `georep start {master} {slave}` (it starts unpaused)");
    }
    std::fs::remove_file(&flag).with_context(|| format!("removing {}", flag.display()))?;
    Ok(())
}

fn now() -> i64 {
    crate::journal::record::now_ns()
}

/// `georep delete MASTER SLAVE [reset-sync-time]`: stops journaling and removes the session.
/// What the slave has (index and stime) is kept, so creating the session again sends only the
/// differences; `reset-sync-time` forgets it too.
pub fn delete(home: &Home, cfg: &SessionConfig, reset_sync_time: bool) -> Result<()> {
    let (master, slave) = (&cfg.master, &cfg.slave);
    if session::is_running(home, &cfg.name) {
        bail!("session {master} -> {slave} is running: `georep stop {master} {slave}` first");
    }
    let vol = cfg.volume(home)?;
    for b in vol.bricks.iter().filter(|b| b.is_local()) {
        stop_writer(home, &cfg.name, b)?;
        let index = session::brick_state_dir(home, &cfg.name, b).join("index.db");
        if !reset_sync_time && index.exists() {
            // The journal goes; a new one starts numbering again, after a gap (hybrid crawl).
            crate::crawl::index::Index::open(&index)?.set_meta("journal_seq", "0")?;
        }
    }
    cfg.remove(home, !reset_sync_time)
}
