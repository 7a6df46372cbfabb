//! The command line as clap sees it: every subcommand, its words and options, with the help
//! text and examples `--help`, the man pages and the completions are made from.

use crate::config::SyncOptions;
use anyhow::{bail, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "georep",
    version,
    about = "Asynchronous geo-replication of directory trees for disaster recovery",
    long_about = None,
    after_help = "\
A MASTER is a volume name (`georep volume create`) or a path; a SLAVE is a path, a volume name
on this host, or [user@]host[:port]::VOLUME over SSH. Relative paths (./src) are resolved.

Examples:
  georep sync /srv/data /backup/data             one pass, until the copy equals the master
  georep create gv0 root@dr1::gv0-dr push-pem name gv0-dr1
  georep start gv0-dr1                           a session by its name, or by MASTER SLAVE
  georep status
Docs: runbook.md, config.md, status.md in /usr/local/share/doc/georep (or docs/ in the source)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Manage volumes (named sets of bricks)
    #[command(subcommand)]
    #[command(after_help = "\
Examples:
  georep volume create gv0 /bricks/brick1
  georep volume create gv0 replica 2 n1:/bricks/b1 n2:/bricks/b1
  georep volume info gv0")]
    Volume(VolumeCmd),
    /// Replicate a master volume or path to a slave until they are equal
    Sync(SyncArgs),
    /// Slave side: apply a master's stream from stdin, answer on stdout (run by sshd or georep)
    #[command(after_help = "\
Run by sshd through the forced command push-pem installs, or by `georep serve`; not by hand.
Example (authorized_keys): command=\"'georep' agent --volume 'gv0-dr'\",restrict ssh-ed25519 AAAA...")]
    Agent(AgentArgs),
    /// Register a session MASTER -> SLAVE and start journaling its bricks on this node
    #[command(after_help = "\
Words after MASTER SLAVE:
  push-pem      make a session key and install it on the slave host with your own SSH
                credentials, as a forced command that only runs the agent for this volume
  no-verify     skip the handshake with the slave (keys installed by hand, or slave offline)
  ssh-port N    the slave's SSH port when SLAVE does not name one
  name NAME     a short name for the session (systemd: georep@NAME); default: generated
  force         update an existing session, adopt a replaced brick, or replicate onto a
                slave that already holds files no session sent (files equal in size, mtime,
                owner and mode are kept; the rest is made equal to the master)

Examples:
  georep create gv0 root@dr1::gv0-dr push-pem name gv0-dr1
  georep create /srv/data /backup/data
  georep create gv0 root@dr1:2222::/dr/gv0 no-verify --host-key SHA256:...")]
    Create(CreateArgs),
    /// Start replicating: a monitor in the background runs one worker per local brick
    #[command(after_help = "\
Words: force   no error if the session already runs (it is left running)

Examples:
  georep start gv0 root@dr1::gv0-dr
  georep start gv0-dr1 --foreground              (systemd: georep@gv0-dr1.service)")]
    Start(StartArgs),
    /// Stop replicating (journaling goes on; start resumes from the journal)
    #[command(after_help = "\
Words: force   no error if the session is not running

Example: georep stop gv0 root@dr1::gv0-dr")]
    Stop(WordArgs),
    /// Stop shipping but keep the session running; the journal keeps recording
    #[command(
        after_help = "Example: georep pause gv0 root@dr1::gv0-dr      (or: georep pause gv0-dr1)"
    )]
    Pause(SessionArgs),
    /// Continue a paused session (it catches up with a History Crawl)
    #[command(
        after_help = "Example: georep resume gv0 root@dr1::gv0-dr     (or: georep resume gv0-dr1)"
    )]
    Resume(SessionArgs),
    /// Remove the session on this node (`reset-sync-time` also forgets what the slave has)
    #[command(after_help = "\
Words: reset-sync-time   also forget what the slave has (a new session then compares every
                         file again); without it, re-creating the session re-sends nothing

Example: georep delete gv0 root@dr1::gv0-dr")]
    Delete(WordArgs),
    /// List, get, set (`KEY VALUE`) or reset (`!KEY`) session options (docs/config.md)
    Config(ConfigArgs),
    /// Paths that could not be replicated, with the error and the number of attempts
    #[command(after_help = "\
Exit 0 when no path failed, 1 when some did.
Example: georep failures gv0 root@dr1::gv0-dr --json")]
    Failures(FailuresArgs),
    /// Compare master and slave without copying; exit 0 only when they are equal
    #[command(after_help = "\
Examples:
  georep verify gv0 root@dr1::gv0-dr
  georep verify gv0-dr1 --checksum --json        (reads every file on both sides)")]
    Verify(VerifyArgs),
    /// The last scrub of each brick (the DR copy compared with it), or start one (`--now`)
    #[command(after_help = "\
A running session compares its DR copy with the brick every scrub-interval (default 1h),
hashing the contents of a rotating share of the files (scrub-checksum, default 1/24), and
repairs what differs (scrub-repair). See docs/runbook.md, \"Reading a scrub\".

Examples:
  georep scrub gv0 root@dr1::gv0-dr
  georep scrub gv0-dr1 --now --checksum          (hash every file this pass)")]
    Scrub(ScrubArgs),
    /// DR host: promote the slave volume (fences the old master) and print the RPO
    #[command(after_help = "\
Run on the DR host. See docs/runbook.md.
Examples:
  georep failover gv0-dr                         (the master site is gone)
  georep failover gv0-dr --planned --timeout 300 (switchover: loses nothing)")]
    Failover(FailoverArgs),
    /// Recovered master: bring back what changed on the DR side (`--reverse`)
    #[command(after_help = "\
Examples:
  georep resync --reverse gv0 root@dr1::gv0-dr --dry-run
  georep resync --reverse gv0-dr1")]
    Resync(ResyncArgs),
    /// Recovered master: demote the DR volume, final reverse pass, resume replication
    #[command(after_help = "\
Example: georep failback gv0 root@dr1::gv0-dr    (after resync --reverse; see docs/runbook.md)")]
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
    /// A TCP relay that delays each way by a fixed time (a long link, for scripts/bench.sh)
    #[command(hide = true)]
    DelayProxy(DelayProxyArgs),
    /// Embedded SSH server that only runs the agent (DR hosts without OpenSSH)
    #[command(after_help = "\
Example:
  georep serve --listen 0.0.0.0:2222 --host-key /etc/georep/serve_host_key \\
      --authorized-keys /etc/georep/serve_authorized_keys")]
    Serve(ServeArgs),
    /// Sessions on this node: one row per brick, with LAST_SYNCED
    #[command(after_help = "\
Words: detail   add the counters, checkpoint, backlog, lag and the last error

Examples:
  georep status
  georep status gv0 root@dr1::gv0-dr detail
  georep status --check --max-lag 120            (cron, Nagios: exit 0 OK, 1 WARNING, 2 CRITICAL)")]
    Status(StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell)
    #[command(after_help = "\
Example: georep completions bash > /etc/bash_completion.d/georep")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (georep.1, georep-sync.1, ...) into DIR (used by scripts/install.sh)
    #[command(hide = true)]
    ManPages { dir: std::path::PathBuf },
}

/// The command line, with what only runs can know: the option names and defaults of `config`.
pub fn command() -> clap::Command {
    let options: String = crate::options::OPTIONS
        .iter()
        .map(|d| {
            let default = if d.default.is_empty() {
                "unset"
            } else {
                d.default
            };
            format!("  {:<16} {} (default: {default})\n", d.key, d.help)
        })
        .collect();
    Cli::command().mut_subcommand("config", |c| {
        c.after_help(format!(
            "Options:\n{options}\nExamples:\n  georep config gv0 root@dr1::gv0-dr\n  georep config gv0 root@dr1::gv0-dr bwlimit 20M\n  georep config gv0-dr1 checkpoint now\n  georep config gv0-dr1 '!bwlimit'"
        ))
    })
}

/// A session: `MASTER SLAVE`, or its name alone (`georep status` and `create ... name N`).
#[derive(Args, Debug)]
pub struct SessionArgs {
    /// Master volume name or path; alone, the session's name
    #[arg(value_name = "MASTER|SESSION")]
    pub master: String,
    #[arg(
        value_name = "SLAVE",
        help = "Slave: path, local volume name, or [user@]host[:port]::volume"
    )]
    pub slave: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Master volume name or path (a brick must exist: georep never creates one)
    pub master: String,
    #[arg(help = "Slave: path, local volume name, or [user@]host[:port]::volume")]
    pub slave: String,
    /// `push-pem`, `no-verify`, `ssh-port N`, `name NAME`, `force` (see below)
    #[arg(value_name = "WORD")]
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
    /// Master volume name or path; alone, the session's name
    #[arg(value_name = "MASTER|SESSION")]
    pub master: String,
    /// The slave, then keywords
    #[arg(value_name = "SLAVE] [WORD")]
    pub words: Vec<String>,
}

/// Checks keywords against the ones a command takes: an unknown one is named, with the valid
/// ones (`unknown word "detial": expected detail`).
pub fn check_words<'a>(
    command: &str,
    words: &'a [String],
    allowed: &[&str],
) -> Result<Vec<&'a str>> {
    words
        .iter()
        .map(|w| {
            if allowed.contains(&w.as_str()) {
                Ok(w.as_str())
            } else {
                bail!(
                    "unknown word {w:?} for `georep {command}`: expected {}",
                    allowed.join(" or ")
                )
            }
        })
        .collect()
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Master volume name or path; alone, the session's name
    #[arg(value_name = "MASTER|SESSION")]
    pub master: String,
    /// The slave (unless a session name came first), then the option name (`!KEY` resets it to
    /// its default) and a new value
    #[arg(value_name = "SLAVE] [KEY] [VALUE", num_args = 0..=3)]
    pub words: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// Start a pass now on every local brick of the running session
    #[arg(long)]
    pub now: bool,
    /// With --now: hash the contents of every file in this pass
    #[arg(long, requires = "now")]
    pub checksum: bool,
    #[arg(long)]
    pub json: bool,
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
    /// Redraw the table every SECONDS (default 2) in place until Ctrl-C
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2",
          conflicts_with_all = ["json", "check"])]
    pub watch: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DelayProxyArgs {
    /// Address to listen on (loopback)
    #[arg(long)]
    pub listen: String,
    /// Address to relay to
    #[arg(long)]
    pub connect: String,
    /// Delay each way, in milliseconds
    #[arg(long, default_value_t = 57)]
    pub delay_ms: u64,
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
    /// Master volume name or path; alone, the session's name
    #[arg(value_name = "MASTER|SESSION")]
    pub master: String,
    /// The slave, then `force`: no error when already running
    #[arg(value_name = "SLAVE] [WORD")]
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
    /// Make (or update) a volume from a Gluster volume: same name, bricks and replica sets
    #[command(after_help = "\
Reads `gluster volume info NAME --xml` (or a saved copy of it, --from-xml). Arbiter bricks are
left out (they hold no data); dispersed and sharded volumes are refused. Run it again after
`gluster volume add-brick` or `remove-brick`: it updates the volume and says what changed.

Examples:
  georep volume import gv0
  georep volume import gv0 --from-xml gv0-info.xml")]
    Import {
        /// The Gluster volume's name (the georep volume gets the same)
        name: String,
        /// Read the volume info from FILE (the output of `gluster volume info NAME --xml`)
        #[arg(long, value_name = "FILE")]
        from_xml: Option<std::path::PathBuf>,
        /// glusterd's socket, for a glusterd that does not use the default one
        #[arg(long, value_name = "PATH")]
        glusterd_sock: Option<std::path::PathBuf>,
    },
}

#[derive(Args, Debug)]
#[command(after_help = "\
A first sync onto a slave that already holds files lists it once: files equal in size, mtime,
owner and mode are kept (a DR site seeded by disk costs nothing), the rest is made equal to the
master and extras are removed.

Examples:
  georep sync /srv/data /backup/data
  georep sync ./src root@dr1::/dr/src --exclude '*.tmp' --json
  georep sync gv0 root@dr1::gv0-dr --rescan-slave --checksum")]
pub struct SyncArgs {
    /// Master volume name or absolute path
    pub master: String,
    #[arg(help = "Slave: absolute path, local volume name, or [user@]host[:port]::volume")]
    pub slave: String,
    /// Accepted for compatibility: sync always makes one pass, until the slave equals the
    /// master, then exits (continuous replication is a session: `georep create` + `start`)
    #[arg(long)]
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
    /// Changed files of at least this size go as deltas (`K`, `M`, `G`), or `off` (default:
    /// 1M over a network, off to a local slave)
    #[arg(long, value_name = "SIZE")]
    pub delta_min_size: Option<String>,
    /// SSH channels the stream is striped over, 1 to 16, or `auto` (4 on a long link, an SSH
    /// round trip of 30 ms or more; else 1): each carries at most its window per round trip
    #[arg(long, value_name = "N")]
    pub channels: Option<String>,
}

impl SyncArgs {
    /// `--rescan-slave [--checksum]`: the slave is re-read first (`Some(checksum)`).
    pub fn rescan_slave(&self) -> Option<bool> {
        self.rescan_slave.then_some(self.checksum)
    }
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
            delta_min: a
                .delta_min_size
                .as_deref()
                .map(crate::options::parse_delta_min)
                .transpose()?
                .flatten(),
            channels: a
                .channels
                .as_deref()
                .map(crate::options::parse_channels)
                .transpose()?
                .flatten(),
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
