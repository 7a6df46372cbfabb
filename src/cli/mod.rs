//! Command-line definitions (raw arguments) and dispatch; each subcommand is one call into a
//! domain module.

use crate::config::{Home, SyncOptions};
use crate::volume::{self, Volume};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "georep",
    version,
    about = "Asynchronous geo-replication of directory trees for disaster recovery",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Manage volumes (named sets of bricks)
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Replicate a master volume or path to a slave until they are equal
    Sync(SyncArgs),
    /// Slave side: apply a master's stream from stdin, answer on stdout (run by sshd or georep)
    Agent(AgentArgs),
    /// Register a session MASTER -> SLAVE and start journaling its bricks on this node
    Create(CreateArgs),
    /// Start replicating: a monitor in the background runs one worker per local brick
    Start(StartArgs),
    /// Stop replicating (journaling goes on; start resumes from the journal)
    Stop(WordArgs),
    /// Stop shipping but keep the session running; the journal keeps recording
    Pause(SessionArgs),
    /// Continue a paused session (it catches up with a History Crawl)
    Resume(SessionArgs),
    /// Remove the session on this node (`reset-sync-time` also forgets what the slave has)
    Delete(WordArgs),
    /// List, get, set (`KEY VALUE`) or reset (`!KEY`) session options (docs/config.md)
    Config(ConfigArgs),
    /// Paths that could not be replicated, with the error and the number of attempts
    Failures(FailuresArgs),
    /// Compare master and slave without copying; exit 0 only when they are equal
    Verify(VerifyArgs),
    /// DR host: promote the slave volume (fences the old master) and print the RPO
    Failover(FailoverArgs),
    /// Recovered master: bring back what changed on the DR side (`--reverse`)
    Resync(ResyncArgs),
    /// Recovered master: demote the DR volume, final reverse pass, resume replication
    Failback(SessionArgs),
    /// Session monitor (started by `start`)
    #[command(hide = true)]
    Monitor(MonitorArgs),
    /// One brick's worker (started by the monitor)
    #[command(hide = true)]
    Worker(JournalArgs),
    /// Journal writer of one brick (started by create/start)
    #[command(hide = true)]
    Journal(JournalArgs),
    /// Slave side of push-pem: install a session key confined to one volume's agent
    #[command(hide = true)]
    AuthorizeKey(AuthorizeKeyArgs),
    /// Embedded SSH server that only runs the agent (DR hosts without OpenSSH)
    Serve(ServeArgs),
    /// Sessions on this node: one row per brick, with LAST_SYNCED
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Master volume name or absolute path
    pub master: String,
    /// Slave: absolute path, local volume name, or [user@]host[:port]::volume
    pub slave: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// `push-pem`, `no-verify`, `ssh-port N`, `force`
    #[arg(value_name = "OPTION")]
    pub options: Vec<String>,
    /// Your own SSH key for push-pem (default: ~/.ssh/id_ed25519, id_ecdsa, then ssh-agent)
    #[arg(long, value_name = "FILE")]
    pub identity: Option<std::path::PathBuf>,
    /// Pin the slave's host key up front (SHA256:... as ssh-keygen -l prints it)
    #[arg(long, value_name = "FINGERPRINT")]
    pub host_key: Option<String>,
    /// Path of georep on the slave host (default: georep in its PATH)
    #[arg(long, value_name = "PATH")]
    pub remote_georep: Option<String>,
    /// Create the slave volume root if it does not exist (push-pem)
    #[arg(long)]
    pub create_root: bool,
}

/// A session and trailing keywords (`force`, `reset-sync-time`).
#[derive(Args, Debug)]
pub struct WordArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    #[arg(value_name = "OPTION")]
    pub words: Vec<String>,
}

impl WordArgs {
    /// The keywords, each checked against `allowed`.
    fn flags(&self, allowed: &[&str]) -> Result<Vec<&str>> {
        self.words
            .iter()
            .map(|w| {
                if allowed.contains(&w.as_str()) {
                    Ok(w.as_str())
                } else {
                    bail!("unknown option {w:?}: expected {}", allowed.join(" or "))
                }
            })
            .collect()
    }
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Option name; `!KEY` resets it to its default
    pub key: Option<String>,
    /// New value
    pub value: Option<String>,
}

#[derive(Args, Debug)]
pub struct FailuresArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The slave volume name on this host, or its path
    pub volume: String,
    /// Switchover: first wait until every master brick confirmed all its changes are here
    #[arg(long)]
    pub planned: bool,
    /// With --planned: how long to wait, in seconds
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct ResyncArgs {
    /// From the slave back to the master (the only direction resync has)
    #[arg(long, required = true)]
    pub reverse: bool,
    #[command(flatten)]
    pub session: SessionArgs,
    /// List what would move and the conflicts; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Also compare contents (blake3 on the DR side against what was shipped)
    #[arg(long)]
    pub checksum: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Also compare file contents (blake3 on both sides; reads everything)
    #[arg(long)]
    pub checksum: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    #[arg(long)]
    pub session: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Master volume name or path, optionally the slave, optionally `detail`
    #[arg(value_name = "MASTER [SLAVE] [detail]")]
    pub words: Vec<String>,
    /// Print JSON (every detail column, UTC timestamps)
    #[arg(long)]
    pub json: bool,
    /// Exit 0 OK, 1 WARNING, 2 CRITICAL with a one-line reason (for cron and Nagios)
    #[arg(long)]
    pub check: bool,
    /// With --check: lag (seconds since LAST_SYNCED) above which the check is CRITICAL
    /// (WARNING above half of it)
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub max_lag: u64,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address and port to listen on, e.g. 0.0.0.0:2222
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: String,
    /// Host key (OpenSSH format; made on first start if missing)
    #[arg(long, value_name = "FILE")]
    pub host_key: std::path::PathBuf,
    /// Keys allowed to run the agent, one per line as in OpenSSH (command="...", from="..."
    /// and expiry-time="..." honoured)
    #[arg(long, value_name = "FILE")]
    pub authorized_keys: std::path::PathBuf,
    /// Also accept keys listed without command="..." (they may then run the agent for any
    /// volume they name)
    #[arg(long)]
    pub allow_unforced: bool,
    /// Close a connection that has not authenticated within this many seconds (as OpenSSH's
    /// LoginGraceTime)
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub login_grace_time: u64,
    /// At most this many connections may wait for authentication at once; more are dropped
    /// (as OpenSSH's MaxStartups)
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub max_startups: u64,
}

#[derive(Args, Debug)]
pub struct AuthorizeKeyArgs {
    #[arg(long)]
    pub volume: String,
    #[arg(long)]
    pub key: String,
    #[arg(long)]
    pub comment: String,
    #[arg(long, default_value = "georep")]
    pub georep: String,
    #[arg(long)]
    pub create_root: bool,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// `force`: no error when already running
    #[arg(value_name = "OPTION")]
    pub words: Vec<String>,
    /// Run the monitor in the foreground (systemd) until SIGINT/SIGTERM
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Args, Debug)]
pub struct JournalArgs {
    #[arg(long)]
    pub session: String,
    #[arg(long)]
    pub brick: std::path::PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume: `georep volume create NAME [replica N] [node:]/path...`
    Create {
        name: String,
        #[arg(required = true, num_args = 1.., value_name = "[replica N] BRICK")]
        args: Vec<String>,
    },
    /// List volumes
    List,
    /// Show a volume's bricks
    Info { name: String },
    /// Delete a volume definition (brick data is not touched)
    Delete { name: String },
}

#[derive(Args, Debug)]
pub struct SyncArgs {
    /// Master volume name or absolute path
    pub master: String,
    /// Slave: absolute path, local volume name, or [user@]host[:port]::volume
    pub slave: String,
    /// Crawl, ship and apply until the slave equals the master, then exit
    /// (continuous replication is a session: `georep create` + `georep start`)
    #[arg(long, required = true)]
    pub once: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
    /// Exclude entries matching this glob (name, or brick-relative path if it has a '/')
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// zstd level of the stream, 0 = off (default: off to a local slave, 1 over a network)
    #[arg(long, value_name = "LEVEL")]
    pub compression: Option<i32>,
    /// Batches in flight without an acknowledgement
    #[arg(long)]
    pub window: Option<usize>,
    /// Seal a batch at this many ops
    #[arg(long)]
    pub batch_ops: Option<u32>,
    /// Seal a batch at this many content bytes
    #[arg(long)]
    pub batch_bytes: Option<u64>,
    /// First re-read the slave's tree instead of trusting what was sent before (repairs a slave
    /// changed behind georep's back, as `georep verify` reports it)
    #[arg(long)]
    pub rescan_slave: bool,
    /// With --rescan-slave: also compare contents (blake3 on both sides)
    #[arg(long, requires = "rescan_slave")]
    pub checksum: bool,
}

impl TryFrom<&SyncArgs> for SyncOptions {
    type Error = anyhow::Error;
    fn try_from(a: &SyncArgs) -> Result<SyncOptions> {
        let d = SyncOptions::default();
        SyncOptions {
            compression: a.compression.or(d.compression),
            window: a.window.unwrap_or(d.window),
            batch_ops: a.batch_ops.unwrap_or(d.batch_ops),
            batch_bytes: a.batch_bytes.unwrap_or(d.batch_bytes),
            excludes: a.exclude.clone(),
            rescan_slave: match (a.rescan_slave, a.checksum) {
                (false, _) => None,
                (true, c) => Some(c),
            },
            ..d
        }
        .validate()
    }
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Slave volume name registered on this host, or an absolute path
    #[arg(long, required_unless_present = "probe")]
    pub volume: Option<String>,
    /// Print this agent's version and protocol and exit (used by push-pem)
    #[arg(long)]
    pub probe: bool,
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::from_env();
    match cli.cmd {
        Cmd::Volume(v) => volume_cmd(&home, v),
        Cmd::Sync(a) => {
            let opts: SyncOptions = (&a).try_into()?;
            let report = crate::ship::sync_once(&home, &a.master, &a.slave, &opts)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.summary());
                for f in &report.failures {
                    eprintln!("failed ({}): {}", f.side, f.message);
                }
            }
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Create(a) => {
            let mut o = crate::daemon::CreateOptions {
                verify: true,
                identity: a.identity.clone(),
                host_key: a.host_key.clone(),
                remote_georep: a.remote_georep.clone(),
                create_root: a.create_root,
                ..Default::default()
            };
            let mut words = a.options.iter();
            while let Some(w) = words.next() {
                match w.as_str() {
                    "no-verify" => o.verify = false,
                    "push-pem" => o.push_pem = true,
                    "force" => o.force = true,
                    "ssh-port" => {
                        let p = words.next().context("ssh-port needs a number")?;
                        o.ssh_port = Some(p.parse().with_context(|| format!("ssh-port {p:?} is not a port number"))?);
                    }
                    other => bail!("unknown create option {other:?}: expected push-pem, no-verify, ssh-port N or force"),
                }
            }
            let cfg = crate::daemon::create(&home, &a.session.master, &a.session.slave, &o)?;
            println!(
                "Creating geo-replication session between {} & {} has been successful ({})",
                a.session.master, a.session.slave, cfg.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Start(a) => {
            let force = match a.words.as_slice() {
                [] => false,
                [w] if w == "force" => true,
                w => bail!("unknown start options {w:?}: expected force"),
            };
            let (m, sl) = (&a.session.master, &a.session.slave);
            if !a.foreground {
                crate::daemon::start(&home, m, sl, force, false)?;
                println!("Starting geo-replication session between {m} & {sl} has been successful");
                return Ok(ExitCode::SUCCESS);
            }
            crate::daemon::start(&home, m, sl, force, true)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop(a) => {
            let force = a.flags(&["force"])?.contains(&"force");
            let (m, sl) = (&a.session.master, &a.session.slave);
            crate::daemon::stop(&home, m, sl, force)?;
            println!("Stopping geo-replication session between {m} & {sl} has been successful");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pause(a) => {
            crate::daemon::pause(&home, &a.master, &a.slave)?;
            println!(
                "Pausing geo-replication session between {} & {} has been successful",
                a.master, a.slave
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resume(a) => {
            crate::daemon::resume(&home, &a.master, &a.slave)?;
            println!(
                "Resuming geo-replication session between {} & {} has been successful",
                a.master, a.slave
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Delete(a) => {
            let reset = a.flags(&["reset-sync-time"])?.contains(&"reset-sync-time");
            let (m, sl) = (&a.session.master, &a.session.slave);
            crate::daemon::delete(&home, m, sl, reset)?;
            println!("Deleting geo-replication session between {m} & {sl} has been successful");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config(a) => config_cmd(&home, a),
        Cmd::Failures(a) => {
            let list = crate::status::failures(&home, &a.session.master, &a.session.slave)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No failures");
            } else {
                for f in &list {
                    println!(
                        "{}  {}  {} (errno {}, side {}, {} attempts)",
                        f.brick, f.path, f.message, f.errno, f.side, f.attempts
                    );
                }
            }
            Ok(if list.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Verify(a) => {
            let r = crate::verify::verify(&home, &a.session.master, &a.session.slave, a.checksum)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for d in &r.differences {
                    println!("{}  {}: {}", d.brick, d.path, d.what);
                }
                println!(
                    "{} -> {}: {} ({} entries on the master, {} on the slave{}, {:.2} s)",
                    r.master,
                    r.slave,
                    if r.differences.is_empty() {
                        "equal".to_string()
                    } else {
                        format!("{} differences", r.differences.len())
                    },
                    r.master_entries,
                    r.slave_entries,
                    if r.checksum {
                        ", contents compared"
                    } else {
                        ""
                    },
                    r.elapsed_ms as f64 / 1000.0
                );
            }
            Ok(if r.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Failover(a) => {
            for line in crate::failback::failover(
                &home,
                &a.volume,
                a.planned,
                std::time::Duration::from_secs(a.timeout),
            )? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resync(a) => {
            let (m, s) = (&a.session.master, &a.session.slave);
            let r = crate::failback::resync_reverse(&home, m, s, a.dry_run, a.checksum, false)?;
            print_reverse(&r, a.json)
        }
        Cmd::Failback(a) => {
            let r = crate::failback::failback(&home, &a.master, &a.slave)?;
            let code = print_reverse(&r, false)?;
            if r.failures.is_empty() {
                println!(
                    "Failback of {} & {} has been successful: the DR volume is a slave again (epoch {}), replication restarted",
                    a.master,
                    a.slave,
                    r.demoted_to_epoch.unwrap_or_default()
                );
            }
            Ok(code)
        }
        Cmd::Monitor(a) => {
            crate::daemon::monitor::run(&home, &a.session)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Worker(a) => {
            crate::daemon::monitor::run_worker(&home, &a.session, &a.brick)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Journal(a) => {
            crate::daemon::run_journal(&home, &a.session, &a.brick)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status(a) => status_cmd(&home, a),
        Cmd::Serve(a) => {
            crate::transport::serve::serve(&crate::transport::serve::ServeOptions {
                listen: a.listen,
                host_key: a.host_key,
                authorized_keys: a.authorized_keys,
                allow_unforced: a.allow_unforced,
                login_grace: std::time::Duration::from_secs(a.login_grace_time),
                max_startups: a.max_startups as usize,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AuthorizeKey(a) => {
            if a.create_root && a.volume.starts_with('/') {
                std::fs::create_dir_all(&a.volume)
                    .with_context(|| format!("creating slave root {}", a.volume))?;
            }
            let line = crate::keys::authorized_line(&a.georep, &a.volume, &a.key, &a.comment)?;
            let file = crate::keys::authorized_keys_file()?;
            let changed = crate::keys::authorize(&file, &line)?;
            println!(
                "{} {} on {}",
                if changed {
                    "installed session key in"
                } else {
                    "session key already in"
                },
                file.display(),
                crate::config::node_name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agent(a) => {
            if a.probe {
                println!(
                    "georep-agent protocol={} version={}",
                    crate::protocol::PROTOCOL_VERSION,
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(ExitCode::SUCCESS);
            }
            let volume = a.volume.unwrap_or_default();
            let root = Volume::slave_root_of(&home, &volume)?;
            crate::agent::serve(
                &root,
                crate::agent::input_from_stdin()?,
                Box::new(std::io::stdout()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status_cmd(home: &Home, a: StatusArgs) -> Result<ExitCode> {
    let mut words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let detail = words.last() == Some(&"detail");
    if detail {
        words.pop();
    }
    let (master, slave) = match words.as_slice() {
        [] => (None, None),
        [m] => (Some(*m), None),
        [m, s] => (Some(*m), Some(*s)),
        _ => bail!("usage: georep status [MASTER [SLAVE]] [detail] [--json] [--check]"),
    };
    let rows = crate::status::rows(home, master, slave)?;
    if a.check {
        let (code, line) = crate::status::check(&rows, a.max_lag);
        println!("{line}");
        return Ok(ExitCode::from(code));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("No active geo-replication sessions");
    } else {
        print!("{}", crate::status::table(&rows, detail));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_reverse(r: &crate::failback::ReverseReport, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        for a in &r.actions {
            match &a.kept_as {
                Some(k) => println!("conflict  {}  (master's version kept as {k})", a.path),
                None => println!("{:<8}  {}", a.action, a.path),
            }
        }
        for f in &r.failures {
            eprintln!("failed: {f}");
        }
        println!(
            "{}{} <- {}: {} files ({}) pulled, {} created, {} deleted, {} conflicts, {} failures",
            if r.dry_run { "(dry run) " } else { "" },
            r.master,
            r.slave,
            r.pulled_files,
            crate::ship::human_bytes(r.pulled_bytes),
            r.created,
            r.deleted,
            r.conflicts.len(),
            r.failures.len()
        );
    }
    Ok(if r.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn config_cmd(home: &Home, a: ConfigArgs) -> Result<ExitCode> {
    use crate::options;
    let (m, s) = (&a.session.master, &a.session.slave);
    let mut cfg = crate::session::SessionConfig::load(home, m, s)?;
    match (a.key.as_deref(), a.value.as_deref()) {
        (None, _) => {
            for d in options::OPTIONS {
                println!("{}: {}", d.key, options::get(&cfg, d.key)?);
            }
        }
        (Some(k), None) if k.starts_with('!') => {
            options::reset(&mut cfg, &k[1..])?;
            cfg.save(home)?;
            println!("geo-replication config reset: {}", &k[1..]);
        }
        (Some(k), None) => println!("{}", options::get(&cfg, k)?),
        (Some(k), Some(_)) if k.starts_with('!') => {
            bail!("`!{}` resets an option and takes no value", &k[1..])
        }
        (Some(k), Some(v)) => {
            options::set(&mut cfg, k, v)?;
            cfg.save(home)?;
            println!(
                "geo-replication config updated: {k} = {}",
                options::get(&cfg, k)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn volume_cmd(home: &Home, cmd: VolumeCmd) -> Result<ExitCode> {
    match cmd {
        VolumeCmd::Create { name, args } => {
            let (replica, bricks) = volume::parse_create_args(&args)?;
            if Volume::load(home, &name).is_ok() {
                bail!("volume {name} already exists: delete it first or pick another name");
            }
            let v = Volume::new(&name, replica, bricks)?;
            for b in v.bricks.iter().filter(|b| b.is_local()) {
                std::fs::create_dir_all(&b.path).map_err(|e| {
                    anyhow::anyhow!("creating brick directory {}: {e}", b.path.display())
                })?;
            }
            v.save(home)?;
            println!("volume create: {name}: success");
        }
        VolumeCmd::List => {
            let vols = Volume::list(home)?;
            if vols.is_empty() {
                println!("No volumes present");
            }
            for v in vols {
                println!("{}", v.name);
            }
        }
        VolumeCmd::Info { name } => {
            let v = Volume::load(home, &name)?;
            println!("Volume Name: {}", v.name);
            println!(
                "Type: {}",
                if v.replica > 1 {
                    "Replicate"
                } else {
                    "Distribute"
                }
            );
            println!(
                "Number of Bricks: {}",
                if v.replica > 1 {
                    format!(
                        "{} x {} = {}",
                        v.bricks.len() / v.replica as usize,
                        v.replica,
                        v.bricks.len()
                    )
                } else {
                    v.bricks.len().to_string()
                }
            );
            println!("Bricks:");
            for (i, b) in v.bricks.iter().enumerate() {
                println!("Brick{}: {}", i + 1, b);
            }
        }
        VolumeCmd::Delete { name } => {
            Volume::delete(home, &name)?;
            println!("volume delete: {name}: success");
        }
    }
    Ok(ExitCode::SUCCESS)
}
