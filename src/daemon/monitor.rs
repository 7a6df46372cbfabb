//! The session monitor: one per session per node (`georep start`, or `start --foreground` under
//! systemd). It keeps a journal writer per local brick, runs one worker *process* per local brick
//! (`georep worker …`, so one brick's crash cannot take another down), restarts a worker that died
//! with back-off, and stops workers while the session is paused.
//!
//! Invariants:
//! - At most one monitor per session per node (flock on `monitor.lock`), and at most one worker per
//!   brick (the worker's own flock on `worker.lock`).
//! - A worker dies with its monitor (PR_SET_PDEATHSIG), finishing its batch in flight first.

use super::{ensure_writer, stop_on_signals};
use crate::config::Home;
use crate::fsutil::lock_exclusive;
use crate::session::{self, is_paused, monitor_lock, monitor_pid, session_dir, SessionConfig};
use crate::status::{BrickStatus, CrawlStatus, WorkerStatus};
use crate::volume::Brick;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Longest pause between restarts of a worker that keeps dying.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A worker that lived this long before dying restarts at the shortest back-off again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// How often the monitor makes sure each brick's journal writer runs (a try-lock of its lock
/// file): a writer that died is back within this, and what changed meanwhile is crawled.
const WRITER_CHECK: Duration = Duration::from_millis(500);
/// Longest pause between attempts to start a journal writer that keeps failing.
const WRITER_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stopping worker may take to finish its batch in flight before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// One local brick's worker as the monitor sees it.
struct Slot {
    brick: Brick,
    dir: PathBuf,
    child: Option<Child>,
    started: Instant,
    next_start: Instant,
    backoff: Duration,
    /// SIGTERM sent (pause or shutdown) at this instant.
    stopping: Option<Instant>,
    restarts: u64,
    /// A journal writer that failed to start is tried again at `writer_next`, backing off.
    writer_next: Instant,
    writer_backoff: Duration,
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Runs the monitor of `session` until SIGINT/SIGTERM/SIGHUP.
pub fn run(home: &Home, session_name: &str) -> Result<()> {
    let cfg = SessionConfig::load_by_name(home, session_name)?;
    let dir = session_dir(home, &cfg.name);
    let Some(_lock) = lock_exclusive(&monitor_lock(home, &cfg.name), Duration::from_secs(2))?
    else {
        bail!(
            "session {} -> {} is already running on this node (monitor pid {}): `georep stop {} {}` first",
            cfg.master,
            cfg.slave,
            monitor_pid(home, &cfg.name)
                .map(|p| p.as_raw_nonzero().to_string())
                .unwrap_or_else(|| "?".into()),
            cfg.master,
            cfg.slave
        );
    };
    crate::fsutil::atomic_write(
        &dir.join("monitor.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    let stop = stop_on_signals()?;
    let vol = cfg.volume(home)?;
    let now = Instant::now();
    let mut slots: Vec<Slot> = vol
        .bricks
        .iter()
        .filter(|b| b.is_local())
        .map(|b| Slot {
            brick: b.clone(),
            dir: session::brick_state_dir(home, &cfg.name, b),
            child: None,
            started: now,
            next_start: now,
            backoff: Duration::from_secs(1),
            stopping: None,
            restarts: 0,
            writer_next: now,
            writer_backoff: Duration::ZERO,
        })
        .collect();
    if slots.is_empty() {
        bail!(
            "volume {} has no brick on this node ({})",
            vol.name,
            crate::config::node_name()
        );
    }
    tracing::info!(session = %cfg.name, bricks = slots.len(), "monitor running");
    let restarts = super::metrics::Restarts::default();
    let mut exporter = super::metrics::Exporter::start(home, &cfg, restarts.clone());
    let mut last_writer_check = Instant::now() - Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) {
        let paused = is_paused(home, &cfg.name);
        if last_writer_check.elapsed() >= WRITER_CHECK {
            last_writer_check = Instant::now();
            for s in slots.iter_mut().filter(|s| s.writer_next <= Instant::now()) {
                let r = ensure_writer(home, &cfg.name, &s.brick);
                // One that cannot start is tried again after 1 s, doubling to 5 s.
                s.writer_backoff = match r {
                    Ok(()) => Duration::ZERO,
                    Err(_) => {
                        (s.writer_backoff * 2).clamp(Duration::from_secs(1), WRITER_BACKOFF_MAX)
                    }
                };
                s.writer_next = Instant::now() + s.writer_backoff;
                writer_health(&s.dir, &s.brick, r);
            }
        }
        for s in &mut slots {
            tend(home, &cfg, s, paused)?;
        }
        {
            let mut r = restarts.lock().unwrap_or_else(|e| e.into_inner());
            for s in &slots {
                r.insert(s.brick.path.display().to_string(), s.restarts);
            }
        }
        exporter.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!(session = %cfg.name, "monitor stopping its workers");
    for s in &mut slots {
        if let Some(c) = &s.child {
            signal(c, rustix::process::Signal::TERM);
            s.stopping = Some(Instant::now());
        }
    }
    for s in &mut slots {
        if let Some(mut c) = s.child.take() {
            wait_or_kill(&mut c, STOP_GRACE);
        }
        let mut st = BrickStatus::load(&s.dir).unwrap_or_default();
        if st.status != WorkerStatus::Stopped {
            st.status = WorkerStatus::Stopped;
            st.crawl = CrawlStatus::None;
            let _ = st.save(&s.dir);
        }
    }
    // The textfile says the session is down (the bricks say Stopped); the server ends (its
    // request in progress within a few seconds). monitor.pid goes last: until then `stop
    // force` can still find this process.
    drop(exporter);
    let _ = std::fs::remove_file(dir.join("monitor.pid"));
    Ok(())
}

fn wait_or_kill(c: &mut Child, grace: Duration) {
    let until = Instant::now() + grace;
    loop {
        match c.try_wait() {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= until => {
                tracing::warn!(pid = c.id(), "worker did not stop in time; killing it");
                let _ = c.kill();
                let _ = c.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Records whether the brick's journal writer runs, for `georep status`: while it cannot, the
/// brick is Faulty with the reason (`writer.error`; the worker's own status would say Active,
/// and its LAST_SYNCED stops at the writer's last marker). Logged when the reason changes.
fn writer_health(dir: &Path, brick: &impl std::fmt::Display, r: Result<()>) {
    let file = crate::status::writer_error_file(dir);
    match r {
        Err(e) => {
            let msg = format!(
                "the journal writer of brick {brick} cannot run: {e:#}; changes made meanwhile \
                 are found by a hybrid crawl once it runs again"
            );
            if std::fs::read_to_string(&file).ok().as_deref() != Some(msg.as_str()) {
                tracing::error!("{msg}");
                if let Err(e) = crate::fsutil::atomic_write(&file, msg.as_bytes()) {
                    tracing::warn!("writing {}: {e:#}", file.display());
                }
            }
        }
        Ok(()) => {
            if std::fs::remove_file(&file).is_ok() {
                tracing::info!(%brick, "the journal writer runs again");
            }
        }
    }
}

/// Sets a brick's status as the monitor knows it (the worker is not running).
fn mark(dir: &Path, status: WorkerStatus, error: Option<String>) {
    let mut st = BrickStatus::load(dir).unwrap_or_default();
    st.status = status;
    st.crawl = CrawlStatus::None;
    if error.is_some() {
        st.last_error = error;
    }
    if let Err(e) = st.save(dir) {
        tracing::warn!("writing status in {}: {e:#}", dir.display());
    }
}

/// One tick for one brick: reap, restart, or stop its worker.
fn tend(home: &Home, cfg: &SessionConfig, s: &mut Slot, paused: bool) -> Result<()> {
    if let Some(c) = &mut s.child {
        match c.try_wait() {
            Ok(None) => {
                if paused && s.stopping.is_none() {
                    tracing::info!(brick = %s.brick, "pausing: stopping the worker");
                    signal(c, rustix::process::Signal::TERM);
                    s.stopping = Some(Instant::now());
                } else if s.stopping.is_some_and(|t| t.elapsed() > STOP_GRACE) {
                    let _ = c.kill();
                }
                return Ok(());
            }
            Ok(Some(st)) => {
                s.child = None;
                if s.stopping.take().is_some() {
                    mark(
                        &s.dir,
                        if paused {
                            WorkerStatus::Paused
                        } else {
                            WorkerStatus::Stopped
                        },
                        None,
                    );
                    s.next_start = Instant::now();
                    return Ok(());
                }
                if s.started.elapsed() >= HEALTHY_RUN {
                    s.backoff = Duration::from_secs(1);
                }
                s.restarts += 1;
                let prev = BrickStatus::load(&s.dir)
                    .and_then(|b| b.last_error)
                    .map(|e| format!(" (its last error: {e})"))
                    .unwrap_or_default();
                let msg = format!(
                    "worker for {} exited ({st}){prev}; restart {} in {} s (log: {})",
                    s.brick,
                    s.restarts,
                    s.backoff.as_secs(),
                    worker_log(home, &cfg.name, &s.brick).display()
                );
                tracing::warn!("{msg}");
                mark(&s.dir, WorkerStatus::Faulty, Some(msg));
                s.next_start = Instant::now() + s.backoff;
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                return Ok(());
            }
            Err(e) => bail!("waiting for the worker of {}: {e}", s.brick),
        }
    }
    if paused {
        let st = BrickStatus::load(&s.dir).unwrap_or_default();
        if st.status != WorkerStatus::Paused {
            mark(&s.dir, WorkerStatus::Paused, None);
        }
        return Ok(());
    }
    if Instant::now() >= s.next_start {
        match spawn_worker(home, cfg, &s.brick) {
            Ok(c) => {
                s.child = Some(c);
                s.started = Instant::now();
            }
            Err(e) => {
                mark(&s.dir, WorkerStatus::Faulty, Some(format!("{e:#}")));
                s.next_start = Instant::now() + s.backoff;
                s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    Ok(())
}

pub fn worker_log(home: &Home, session: &str, brick: &Brick) -> PathBuf {
    home.log.join(session).join(format!(
        "worker-{}.log",
        session::slug(&brick.path.display().to_string())
    ))
}

fn spawn_worker(home: &Home, cfg: &SessionConfig, brick: &Brick) -> Result<Child> {
    // The current options, so a log-level set while the worker was down applies at once.
    let cfg = SessionConfig::load_by_name(home, &cfg.name).unwrap_or_else(|_| cfg.clone());
    // The session's log-level when set, else the monitor's own GEOREP_LOG, else info.
    super::georep_command(
        "worker",
        &cfg.name,
        Some(&brick.path),
        &crate::options::log_level(&cfg),
        &worker_log(home, &cfg.name, brick),
    )?
    .spawn()
    .with_context(|| format!("starting the worker for {brick}"))
}

/// `georep worker --session S --brick P`: one brick's worker, until SIGTERM or its monitor dies.
pub fn run_worker(home: &Home, session_name: &str, brick_path: &Path) -> Result<()> {
    // Die with the monitor: SIGTERM lets the batch in flight finish.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
    let stop = stop_on_signals()?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        stop.store(true, Ordering::Relaxed);
    }
    let cfg = SessionConfig::load_by_name(home, session_name)?;
    let vol = cfg.volume(home)?;
    let brick = vol
        .bricks
        .iter()
        .find(|b| b.is_local() && b.path == brick_path)
        .cloned()
        .with_context(|| {
            format!(
                "{} is not a brick of {} on this node",
                brick_path.display(),
                vol.name
            )
        })?;
    let dir = session::brick_state_dir(home, &cfg.name, &brick);
    let Some(_lock) = lock_exclusive(&dir.join("worker.lock"), Duration::from_secs(30))? else {
        bail!(
            "another worker still runs for brick {brick} (pid {}); it did not stop within 30 s",
            std::fs::read_to_string(dir.join("worker.pid"))
                .unwrap_or_default()
                .trim()
        );
    };
    crate::fsutil::atomic_write(
        &dir.join("worker.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    let replica_set = vol
        .replica_sets()
        .position(|set| set.contains(&brick))
        .filter(|_| vol.replica > 1);
    let worker = crate::ship::worker::Worker::new(home, &cfg, &brick, replica_set, stop)?;
    let r = worker.run();
    let _ = std::fs::remove_file(dir.join("worker.pid"));
    r
}
