//! Session lifecycle on this node: `create` (register, verify, start journaling), the journal
//! writer processes, `start`/`stop`/`pause`/`resume` (the monitor in `monitor.rs` runs the
//! workers), `delete`.
//!
//! Invariant: at most one journal writer runs per session brick (an flock on `writer.lock`), and
//! it runs from `create` to `delete`, independent of shipping.

pub mod metrics;
pub mod monitor;

use crate::config::{Home, SyncOptions};
use crate::journal::writer::Writer;
use crate::journal::JournalStore;
use crate::session::{self, SessionConfig};
use crate::volume::Brick;
use anyhow::{anyhow, bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Options of `georep create`.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub verify: bool,
    pub push_pem: bool,
    pub force: bool,
    pub ssh_port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub host_key: Option<String>,
    pub remote_georep: Option<String>,
    pub create_root: bool,
    /// `name NAME`: the session's short name (default: generated from master and slave).
    pub name: Option<String>,
}

/// `georep create MASTER SLAVE [push-pem] [no-verify] [ssh-port N] [name NAME] [force]`.
pub fn create(home: &Home, master: &str, slave: &str, o: &CreateOptions) -> Result<SessionConfig> {
    let exists = SessionConfig::exists(home, master, slave)?;
    let name = if exists {
        let current = SessionConfig::name_for(home, master, slave)?;
        if let Some(n) = o.name.as_deref().filter(|n| *n != current) {
            bail!("session {master} -> {slave} already exists as {current}: `georep delete {current}` it first to name it {n}");
        }
        current
    } else {
        let cfg = SessionConfig::new(home, master, slave, o.name.as_deref())?;
        if let Some(other) = SessionConfig::named(home, &cfg.name) {
            bail!(
                "a session named {} already exists ({} -> {}): pick another name",
                cfg.name,
                other.master,
                other.slave
            );
        }
        cfg.name
    };
    // A failed create leaves nothing behind that it made: no session key, no pinned host key,
    // no state directory.
    let made: Vec<PathBuf> = [
        crate::keys::ssh_dir(home, &name),
        home.state.join("sessions").join(&name),
    ]
    .into_iter()
    .filter(|d| !d.exists())
    .collect();
    let r = create_inner(home, master, slave, o, exists);
    if r.is_err() {
        for d in made {
            let _ = std::fs::remove_dir_all(d);
        }
        if !exists {
            let _ = std::fs::remove_file(SessionConfig::file(home, &name));
        }
    }
    r
}

fn create_inner(
    home: &Home,
    master: &str,
    slave: &str,
    o: &CreateOptions,
    exists: bool,
) -> Result<SessionConfig> {
    if exists && !o.force {
        bail!("session {master} -> {slave} already exists: add `force` to update it, or `georep delete {master} {slave}` first");
    }
    let mut cfg = if exists {
        SessionConfig::load(home, master, slave)?
    } else {
        SessionConfig::new(home, master, slave, o.name.as_deref())?
    };
    if o.ssh_port.is_some() {
        cfg.ssh_port = o.ssh_port;
    }
    if o.force {
        // The operator accepts replicating onto whatever the slave holds.
        cfg.adopt_slave = true;
    }
    if let Some(g) = &o.remote_georep {
        crate::shellword::check("--remote-georep", g)?;
        cfg.remote_georep = Some(g.clone());
    }
    let vol = cfg.volume(home)?;
    let spec = cfg.slave_spec()?;
    let bricks: Vec<Brick> = vol
        .local_bricks_for("create")?
        .into_iter()
        .cloned()
        .collect();
    // The master first: a mistyped master path is named as such, never blamed on the slave.
    for b in &bricks {
        crate::brickid::usable(&b.path)?;
    }
    if !spec.is_local() {
        if o.push_pem {
            push_pem(home, &cfg, &vol.name, o)?;
        } else if !o.verify {
            // Keys managed by the operator: make the session key and say what to install.
            let key = crate::keys::session_key(home, &cfg.name)?;
            let public = key.public_key().to_openssh().map_err(|e| anyhow!("{e}"))?;
            let line = crate::keys::authorized_line(
                cfg.remote_georep(),
                &spec.volume,
                &public,
                &format!("georep:{}@{}", vol.name, crate::config::node_name()),
            )?;
            let fp = o.host_key.as_deref().ok_or_else(|| {
                anyhow!("no-verify on a remote slave needs --host-key SHA256:... (the slave's host key fingerprint, `ssh-keygen -lf` on its host key)")
            })?;
            crate::fsutil::atomic_write(
                &crate::keys::ssh_dir(home, &cfg.name).join("host_key.fp"),
                format!("{fp}\n").as_bytes(),
            )?;
            println!("install this line in the slave user's authorized_keys:\n{line}");
        } else {
            bail!(
                "a remote slave needs `push-pem` (sets up the session key on {}) or `no-verify --host-key SHA256:...` (you install the key yourself)",
                spec.host.as_deref().unwrap_or_default()
            );
        }
    }
    if o.verify {
        // A real handshake with the slave agent, so a wrong slave fails now, not at start.
        let target = crate::client::Target::of_session(home, &cfg)?;
        let probe = crate::client::Client::connect(
            &target,
            &bricks[0],
            0,
            &SyncOptions::default(),
            &crate::client::Mode::Replicate {
                replica_set: None,
                shared_tree: false,
            },
        )
        .map_err(anyhow::Error::new)
        .with_context(|| format!("verifying slave {slave} (use no-verify to skip)"));
        // A slave that holds files no brick of this master volume sent is somebody's data:
        // replicating onto it makes it equal to the master (extras removed), so it takes `force`.
        let census = match probe? {
            (mut c, w) if !o.force && !vol.replicated_by(&w.replicated_from) => {
                let n = c.census();
                c.close()?;
                n?
            }
            (c, _) => {
                c.close()?;
                (0, None)
            }
        };
        if let (n, Some(first)) = census {
            bail!(
                "slave {slave} already holds {n} {} (for example {first}) that no brick of {master} sent: add `force` to replicate onto it (files equal in size, mtime, owner and mode are kept, everything else is made equal to the master and extras are removed, or kept in the slave's trash when `trash-retention` is set), or pick an empty slave",
                if n == 1 { "entry" } else { "entries" }
            );
        }
    }
    for b in &bricks {
        let dir = session::brick_state_dir(home, &cfg.name, b);
        let index = crate::crawl::index::Index::open(&dir.join("index.db"))?;
        crate::brickid::adopt(b, &index)?;
    }
    cfg.save(home)?;
    for b in &bricks {
        ensure_writer(home, &cfg.name, b)?;
    }
    Ok(cfg)
}

/// `georep scrub --now`: asks each local active brick's worker for a pass (read by the worker
/// within a second; `checksum`: hash every file this pass).
pub fn request_scrub(
    home: &Home,
    master: &str,
    slave: &str,
    checksum: bool,
) -> Result<Vec<String>> {
    let cfg = SessionConfig::load(home, master, slave)?;
    if !crate::session::is_running(home, &cfg.name) {
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

/// Sets up the session key on the slave with the operator's own credentials.
fn push_pem(home: &Home, cfg: &SessionConfig, mastervol: &str, o: &CreateOptions) -> Result<()> {
    use crate::shellword::{self, Word};
    use crate::transport::ssh::{self, HostKeyPolicy};
    let spec = cfg.slave_spec()?;
    let pinned = crate::keys::pinned_host_key(home, &cfg.name)?;
    // A pinned key stays pinned, `force` or not: only `--host-key` replaces it (a changed key
    // is what a man in the middle offers too).
    let policy = match (&o.host_key, pinned) {
        (Some(fp), _) => HostKeyPolicy::Fingerprint(fp.clone()),
        (None, Some(k)) => HostKeyPolicy::Pinned(k),
        (None, None) => HostKeyPolicy::FirstUse,
    };
    let target = cfg.ssh_target(policy)?;
    let creds = operator_credentials(o.identity.as_deref())?;
    let georep = cfg.remote_georep();
    let (code, out, err, shown) = ssh::run_command(
        &target,
        &creds,
        &shellword::command(georep, &[Word::Fixed("agent"), Word::Fixed("--probe")])?,
    )?;
    let out = String::from_utf8_lossy(&out);
    if code != 0 || !out.starts_with("georep-agent ") {
        bail!(
            "georep is not usable on {} as `{georep}` (exit {code}: {}): install it there or set its path with --remote-georep",
            target.describe(),
            err.trim().lines().last().unwrap_or(out.trim())
        );
    }
    if !out.contains(&format!("protocol={}", crate::protocol::PROTOCOL_VERSION)) {
        bail!(
            "georep on {} speaks another protocol ({}): install the same version on both sites",
            target.describe(),
            out.trim()
        );
    }
    let shown = shown.context("the server showed no host key")?;
    crate::keys::pin_host_key(home, &cfg.name, &shown)?;
    println!(
        "slave host key {} pinned: {}",
        target.describe(),
        ssh::fingerprint(&shown)
    );
    let key = crate::keys::session_key(home, &cfg.name)?;
    let public = key.public_key().to_openssh().map_err(|e| anyhow!("{e}"))?;
    let comment = format!(
        "georep:{}@{}",
        crate::fsutil::slug(mastervol),
        crate::config::node_name()
    );
    let key = shellword::quote_any("session key", &public)?;
    let mut words = vec![
        Word::Fixed("authorize-key"),
        Word::Fixed("--volume"),
        Word::Arg("slave volume", &spec.volume),
        Word::Fixed("--georep"),
        Word::Arg("remote-georep", georep),
        Word::Fixed("--key"),
        Word::Quoted(&key),
        Word::Fixed("--comment"),
        Word::Arg("key comment", &comment),
    ];
    if o.create_root {
        words.push(Word::Fixed("--create-root"));
    }
    let cmd = shellword::command(georep, &words)?;
    let target = cfg.ssh_target(HostKeyPolicy::Pinned(shown))?;
    let (code, out, err, _) = ssh::run_command(&target, &creds, &cmd)?;
    if code != 0 {
        bail!(
            "installing the session key on {} failed (exit {code}): {}",
            target.describe(),
            err.trim()
        );
    }
    print!("{}", String::from_utf8_lossy(&out));
    Ok(())
}

/// `--identity FILE`, else ~/.ssh/id_ed25519 or id_ecdsa, else the ssh-agent.
fn operator_credentials(identity: Option<&Path>) -> Result<crate::transport::ssh::Credentials> {
    use crate::transport::ssh::Credentials;
    let load = |p: &Path| {
        russh::keys::load_secret_key(p, None)
            .map(|k| Credentials::Key(Arc::new(k)))
            .map_err(|e| {
                anyhow!(
                    "loading {}: {e} (only unencrypted ed25519/ecdsa keys, or an ssh-agent)",
                    p.display()
                )
            })
    };
    if let Some(p) = identity {
        return load(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        for name in ["id_ed25519", "id_ecdsa"] {
            let p = Path::new(&home).join(".ssh").join(name);
            if p.exists() {
                return load(&p);
            }
        }
    }
    Ok(Credentials::Agent)
}

/// `georep start MASTER SLAVE [force]`: starts the session's monitor in the background (or, with
/// `foreground`, runs it here until SIGINT/SIGTERM, for systemd).
pub fn start(home: &Home, master: &str, slave: &str, force: bool, foreground: bool) -> Result<()> {
    let cfg = SessionConfig::load(home, master, slave)?;
    if crate::session::is_running(home, &cfg.name) {
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
    let _ = std::fs::remove_file(crate::session::session_dir(home, &cfg.name).join("paused"));
    let lock = crate::session::monitor_lock(home, &cfg.name);
    if crate::session::monitor_pid(home, &cfg.name)
        .is_none_or(|p| !crate::fsutil::holds_flock(p.as_raw_pid(), &lock))
    {
        let _ =
            std::fs::remove_file(crate::session::session_dir(home, &cfg.name).join("monitor.pid"));
    }
    if foreground {
        return monitor::run(home, &cfg.name);
    }
    let log_path = log_dir(home, &cfg.name).join("monitor.log");
    let mut cmd = georep_command(
        "monitor",
        &cfg.name,
        None,
        &crate::options::log_level(&cfg),
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
        if crate::session::is_running(home, &cfg.name)
            && crate::session::monitor_pid(home, &cfg.name)
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
pub fn stop(home: &Home, master: &str, slave: &str, force: bool) -> Result<()> {
    let cfg = SessionConfig::load(home, master, slave)?;
    if !crate::session::is_running(home, &cfg.name) {
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
    let lock = crate::session::monitor_lock(home, &cfg.name);
    let holds = |p: &rustix::process::Pid| crate::fsutil::holds_flock(p.as_raw_pid(), &lock);
    let live = || {
        crate::session::monitor_pid(home, &cfg.name)
            .filter(holds)
            .or_else(|| crate::fsutil::flock_holder(&lock).and_then(rustix::process::Pid::from_raw))
    };
    let mut signalled = None;
    while crate::session::is_running(home, &cfg.name) {
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
                if !crate::session::is_running(home, &cfg.name) {
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
pub fn pause(home: &Home, master: &str, slave: &str) -> Result<()> {
    let cfg = SessionConfig::load(home, master, slave)?;
    if !crate::session::is_running(home, &cfg.name) {
        bail!("session {master} -> {slave} is not running on this node: start it first");
    }
    let flag = crate::session::session_dir(home, &cfg.name).join("paused");
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
pub fn resume(home: &Home, master: &str, slave: &str) -> Result<()> {
    let cfg = SessionConfig::load(home, master, slave)?;
    let flag = crate::session::session_dir(home, &cfg.name).join("paused");
    if !flag.exists() {
        bail!("session {master} -> {slave} is not paused");
    }
    if !crate::session::is_running(home, &cfg.name) {
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
pub fn delete(home: &Home, master: &str, slave: &str, reset_sync_time: bool) -> Result<()> {
    let cfg = SessionConfig::load(home, master, slave)?;
    if crate::session::is_running(home, &cfg.name) {
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
