//! Where georep keeps things (`$GEOREP_HOME`), who this node is, and the validated options of a
//! replication run.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// State, configuration and log directories.
#[derive(Debug, Clone)]
pub struct Home {
    pub state: PathBuf,
    pub etc: PathBuf,
    pub log: PathBuf,
    /// Prometheus textfiles, one per session (`<session>.prom`).
    pub metrics: PathBuf,
}

impl Home {
    /// `$GEOREP_HOME/{state,etc,log,metrics}` when set (tests, unprivileged use), else the FHS locations.
    pub fn from_env() -> Home {
        match std::env::var_os("GEOREP_HOME") {
            Some(h) if !h.is_empty() => {
                let h = PathBuf::from(h);
                Home {
                    state: h.join("state"),
                    etc: h.join("etc"),
                    log: h.join("log"),
                    metrics: h.join("metrics"),
                }
            }
            _ => Home {
                state: "/var/lib/georep".into(),
                etc: "/etc/georep".into(),
                log: "/var/log/georep".into(),
                metrics: "/var/lib/georep/metrics".into(),
            },
        }
    }
}

/// This node's name: `$GEOREP_NODE`, else the hostname.
pub fn node_name() -> String {
    match std::env::var("GEOREP_NODE") {
        Ok(n) if !n.is_empty() => n,
        _ => rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned(),
    }
}

/// Options of one replication run, validated.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// zstd level of the stream, 0 = off; `None` = the transport's default (off on the local
    /// transport, where it only costs CPU; on for network transports).
    pub compression: Option<i32>,
    /// Batches in flight without an ack.
    pub window: usize,
    /// A batch is sealed at this many ops…
    pub batch_ops: u32,
    /// …or this many content bytes.
    pub batch_bytes: u64,
    /// Exclude globs, matched against brick-relative paths.
    pub excludes: Vec<String>,
    /// Content bytes per Chunk frame.
    pub chunk_size: usize,
    /// Crawl passes before giving up on a tree that keeps changing or failing.
    pub max_passes: u32,
    /// Wire bytes per second, 0 = unlimited.
    pub bwlimit: u64,
    /// Deletions on the master are not replicated.
    pub ignore_deletes: bool,
    /// Days the slave keeps what it deletes or overwrites under `.georep/trash/`; 0 = off.
    pub trash_retention_days: u32,
    /// `takeover-timeout`: the agent gives up a connection silent for a bit less than this
    /// (`protocol::silence_for_takeover`), so another brick of the set can take over in time.
    pub takeover_timeout: std::time::Duration,
    /// Extended attribute namespaces to replicate (`crate::xattr` bits), from `sync-xattrs`
    /// and `sync-acls`.
    pub xattrs: u8,
    /// `delta-min-size`: changed files of at least this size go as deltas (`u64::MAX`: never);
    /// `None` = 1 MiB over a network, never to a local slave.
    pub delta_min: Option<u64>,
    /// `channels`: how many channels a connection's stream is striped over; `None` = 1 to a
    /// local slave, `client::DEFAULT_CHANNELS` over a network.
    pub channels: Option<u8>,
    /// Open the further channels with the first (ready when the handshake is done), or only
    /// once the agent offers a stripe (a round trip later, none started for nothing).
    pub channels_early: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            compression: None,
            window: 4,
            batch_ops: 8192,
            batch_bytes: 64 << 20,
            excludes: Vec::new(),
            chunk_size: 1 << 20,
            max_passes: 5,
            bwlimit: 0,
            ignore_deletes: false,
            trash_retention_days: 0,
            takeover_timeout: std::time::Duration::from_secs(30),
            xattrs: crate::xattr::wanted(true, true),
            delta_min: None,
            channels: None,
            channels_early: true,
        }
    }
}

impl SyncOptions {
    pub fn validate(self) -> Result<Self> {
        if let Some(c) = self.compression.filter(|c| !(0..=19).contains(c)) {
            bail!("compression level {c} is out of range: use 0 (off) to 19");
        }
        if self.window == 0 || self.window > 1024 {
            bail!("window {} is out of range: use 1 to 1024", self.window);
        }
        if self.batch_ops == 0 || self.batch_ops > crate::protocol::MAX_BATCH_OPS {
            bail!(
                "batch-ops {} is out of range: use 1 to {}",
                self.batch_ops,
                crate::protocol::MAX_BATCH_OPS
            );
        }
        if self.batch_bytes == 0 || self.batch_bytes > crate::protocol::MAX_BATCH_BYTES {
            bail!(
                "batch-bytes {} is out of range: use 1 to {}",
                self.batch_bytes,
                crate::protocol::MAX_BATCH_BYTES
            );
        }
        for g in &self.excludes {
            globset::Glob::new(g).map_err(|e| anyhow::anyhow!("exclude pattern {g:?}: {e}"))?;
        }
        Ok(self)
    }
}
