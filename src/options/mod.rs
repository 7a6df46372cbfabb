//! Session options (`georep config MASTER SLAVE [[!]KEY [VALUE]]`): one table of keys with their
//! defaults and meaning, parsing and validation, and how they turn into the worker's options.
//! docs/config.md lists the same keys (a unit test keeps them in step).
//!
//! Invariant: a stored value was validated by `set`; an unset key means its default.

mod values;

use values::{parse_bool, parse_duration, parse_num, parse_share, show_duration, show_size};
pub use values::{parse_listen, parse_size, parse_time, show_share, show_time};

use crate::config::SyncOptions;
use crate::session::SessionConfig;
use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};

/// The settable options of a session; `None` = default.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionOptions {
    /// Checkpoint time, ns since the epoch.
    #[serde(default)]
    pub checkpoint_ns: Option<i64>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub compression: Option<i32>,
    #[serde(default)]
    pub batch_ops: Option<u32>,
    #[serde(default)]
    pub batch_bytes: Option<u64>,
    #[serde(default)]
    pub window: Option<usize>,
    #[serde(default)]
    pub ignore_deletes: Option<bool>,
    /// Wire bytes per second; 0 = unlimited.
    #[serde(default)]
    pub bwlimit: Option<u64>,
    /// Days the slave keeps deleted and overwritten files in `.georep/trash/`; 0 = off.
    #[serde(default)]
    pub trash_retention_days: Option<u32>,
    /// Seconds between scrub passes; 0 = off.
    #[serde(default)]
    pub scrub_interval_secs: Option<u64>,
    /// A scrub pass hashes the contents of 1 file in N (1: all, 0: none).
    #[serde(default)]
    pub scrub_checksum_every: Option<u32>,
    #[serde(default)]
    pub scrub_repair: Option<bool>,
    /// Seconds after which a replica set's Active brick that went silent (a partition, a dead
    /// node) is replaced by another brick of the set.
    #[serde(default)]
    pub takeover_timeout_secs: Option<u64>,
    /// Where the monitor serves Prometheus metrics (`host:port`); `None` = off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Replicate extended attributes (`user.*`; `trusted.*`, `security.*` as root).
    #[serde(default)]
    pub sync_xattrs: Option<bool>,
    /// Replicate POSIX ACLs (access and default).
    #[serde(default)]
    pub sync_acls: Option<bool>,
    /// Delta transfer threshold (`u64::MAX` = off); `None` = auto.
    #[serde(default)]
    pub delta_min_size: Option<u64>,
    /// Channels a connection's stream is striped over; `None` = auto.
    #[serde(default)]
    pub channels: Option<u8>,
}

/// Scrub defaults: a pass an hour; contents rotate through the tree in a day (1/24 a pass);
/// differences are repaired.
pub const SCRUB_INTERVAL_SECS: u64 = 3600;
pub const SCRUB_CHECKSUM_EVERY: u32 = 24;

/// The scrub settings of a session.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scrub {
    /// None: off.
    pub interval: Option<std::time::Duration>,
    pub checksum_every: u32,
    pub repair: bool,
}

pub fn scrub(cfg: &SessionConfig) -> Scrub {
    let o = &cfg.options;
    let secs = o.scrub_interval_secs.unwrap_or(SCRUB_INTERVAL_SECS);
    Scrub {
        interval: (secs > 0).then(|| std::time::Duration::from_secs(secs)),
        checksum_every: o.scrub_checksum_every.unwrap_or(SCRUB_CHECKSUM_EVERY),
        repair: o.scrub_repair.unwrap_or(true),
    }
}

pub struct OptionDef {
    pub key: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every option `georep config` knows, in listing order.
pub const OPTIONS: &[OptionDef] = &[
    OptionDef {
        key: "checkpoint",
        default: "",
        help: "`now` or a local time `YYYY-MM-DD HH:MM:SS`: completed once every change made before it is on the slave",
    },
    OptionDef {
        key: "log-level",
        default: "info",
        help: "error, warn, info, debug or trace (workers pick it up without a restart)",
    },
    OptionDef {
        key: "compression",
        default: "auto",
        help: "zstd level 0 (off) to 19 of the stream; auto = 1 over SSH, off to a local slave",
    },
    OptionDef {
        key: "batch-ops",
        default: "8192",
        help: "ops per batch (one durable apply and ack each)",
    },
    OptionDef {
        key: "batch-bytes",
        default: "64M",
        help: "file content bytes per batch (K, M, G suffixes)",
    },
    OptionDef {
        key: "window",
        default: "4",
        help: "batches in flight before waiting for an ack",
    },
    OptionDef {
        key: "ignore-deletes",
        default: "false",
        help: "true: files deleted on the master are kept on the slave",
    },
    OptionDef {
        key: "exclude",
        default: "",
        help: "comma-separated globs of brick-relative paths never replicated",
    },
    OptionDef {
        key: "ssh-port",
        default: "22",
        help: "SSH port of the slave host (a port in the slave spec wins)",
    },
    OptionDef {
        key: "remote-georep",
        default: "georep",
        help: "path of georep on the slave host",
    },
    OptionDef {
        key: "bwlimit",
        default: "0",
        help: "bytes per second on the wire per brick (K, M, G suffixes); 0 = unlimited",
    },
    OptionDef {
        key: "takeover-timeout",
        default: "30s",
        help: "on replica volumes, how soon another brick of the set takes over from an Active brick the DR site stopped hearing from (a partition, a dead node); 15s to 1h",
    },
    OptionDef {
        key: "sync-xattrs",
        default: "true",
        help: "replicate extended attributes: user.* always, trusted.* and security.* when both sides run as root (never GlusterFS's internal ones)",
    },
    OptionDef {
        key: "sync-acls",
        default: "true",
        help: "replicate POSIX ACLs (system.posix_acl_access and _default, numeric ids as the owner)",
    },
    OptionDef {
        key: "delta-min-size",
        default: "auto",
        help: "changed files of at least this size (K, M, G) go as deltas against the DR copy (rsync's algorithm); off = always whole; auto = 1M over a network, off to a local slave",
    },
    OptionDef {
        key: "channels",
        default: "auto",
        help: "SSH channels each brick's stream is striped over (1 to 16): a long link carries one channel's window per round trip (OpenSSH's 2 MiB: 17 MiB/s at 113 ms); auto = 4 on a long link (an SSH round trip of 30 ms or more), else 1; applies at the next connection",
    },
    OptionDef {
        key: "metrics-listen",
        default: "off",
        help: "address where the monitor serves Prometheus metrics, e.g. 127.0.0.1:9813 (they are also written to $GEOREP_HOME/metrics/<session>.prom); off = not served; applies at the next start",
    },
    OptionDef {
        key: "trash-retention",
        default: "0",
        help: "days the slave keeps deleted and overwritten files under .georep/trash/; 0 = off",
    },
    OptionDef {
        key: "scrub-interval",
        default: "1h",
        help: "time between scrub passes that compare the DR copy with the brick (90s, 30m, 1h, 1d); 0 = off",
    },
    OptionDef {
        key: "scrub-checksum",
        default: "1/24",
        help: "contents a scrub pass hashes: 1/N of the files in turn (all of them over N passes), all, or off",
    },
    OptionDef {
        key: "scrub-repair",
        default: "true",
        help: "false: a scrub only reports differences (status WARNING, LAST_SYNCED held) and changes nothing",
    },
];

fn def(key: &str) -> Result<&'static OptionDef> {
    OPTIONS.iter().find(|d| d.key == key).ok_or_else(|| {
        anyhow!(
            "unknown option {key:?}: known options are {}",
            OPTIONS.iter().map(|d| d.key).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The effective value of `key` (its default when unset).
pub fn get(cfg: &SessionConfig, key: &str) -> Result<String> {
    let d = def(key)?;
    let o = &cfg.options;
    let v = match key {
        "checkpoint" => o.checkpoint_ns.map(show_time),
        "log-level" => o.log_level.clone(),
        "compression" => o.compression.map(|c| c.to_string()),
        "batch-ops" => o.batch_ops.map(|v| v.to_string()),
        "batch-bytes" => o.batch_bytes.map(show_size),
        "window" => o.window.map(|v| v.to_string()),
        "ignore-deletes" => o.ignore_deletes.map(|v| v.to_string()),
        "exclude" => (!cfg.excludes.is_empty()).then(|| cfg.excludes.join(",")),
        "ssh-port" => cfg.ssh_port.map(|v| v.to_string()),
        "remote-georep" => cfg.remote_georep.clone(),
        "bwlimit" => o.bwlimit.map(show_size),
        "trash-retention" => o.trash_retention_days.map(|v| v.to_string()),
        "takeover-timeout" => o.takeover_timeout_secs.map(show_duration),
        "metrics-listen" => o.metrics_listen.clone(),
        "sync-xattrs" => o.sync_xattrs.map(|v| v.to_string()),
        "sync-acls" => o.sync_acls.map(|v| v.to_string()),
        "delta-min-size" => o.delta_min_size.map(|v| match v {
            u64::MAX => "off".to_string(),
            v => show_size(v),
        }),
        "channels" => o.channels.map(|v| v.to_string()),
        "scrub-interval" => o.scrub_interval_secs.map(show_duration),
        "scrub-checksum" => o.scrub_checksum_every.map(show_share),
        "scrub-repair" => o.scrub_repair.map(|v| v.to_string()),
        _ => unreachable!("every OPTIONS key is handled"),
    };
    Ok(v.unwrap_or_else(|| d.default.to_string()))
}

/// Sets `key` to `value` after validating it.
pub fn set(cfg: &mut SessionConfig, key: &str, value: &str) -> Result<()> {
    def(key)?;
    let o = &mut cfg.options;
    match key {
        "checkpoint" => o.checkpoint_ns = Some(parse_time(value)?),
        "log-level" => {
            let v = value.to_ascii_lowercase();
            if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                bail!("log-level {value:?}: use error, warn, info, debug or trace");
            }
            o.log_level = Some(v);
        }
        "compression" => o.compression = Some(parse_num(key, value, 0, 19)?),
        "batch-ops" => {
            o.batch_ops = Some(parse_num(key, value, 1, crate::protocol::MAX_BATCH_OPS)?)
        }
        "batch-bytes" => {
            let v = parse_size(value)?;
            if v == 0 || v > crate::protocol::MAX_BATCH_BYTES {
                bail!(
                    "batch-bytes {value}: use 1 to {}",
                    show_size(crate::protocol::MAX_BATCH_BYTES)
                );
            }
            o.batch_bytes = Some(v);
        }
        "window" => o.window = Some(parse_num(key, value, 1, 1024)?),
        "ignore-deletes" => o.ignore_deletes = Some(parse_bool(value)?),
        "exclude" => {
            let globs: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect();
            for g in &globs {
                globset::Glob::new(g).map_err(|e| anyhow!("exclude pattern {g:?}: {e}"))?;
            }
            cfg.excludes = globs;
        }
        "ssh-port" => cfg.ssh_port = Some(parse_num(key, value, 1, 65535)?),
        "remote-georep" => {
            crate::shellword::check("remote-georep", value)?;
            cfg.remote_georep = Some(value.to_string());
        }
        "bwlimit" => o.bwlimit = Some(parse_size(value)?),
        "trash-retention" => o.trash_retention_days = Some(parse_num(key, value, 0, 3650)?),
        "takeover-timeout" => {
            let secs = parse_duration(key, value)?;
            if !(15..=3600).contains(&secs) {
                bail!("takeover-timeout: {value:?} is out of range: use 15s to 1h");
            }
            o.takeover_timeout_secs = Some(secs);
        }
        "metrics-listen" => {
            o.metrics_listen = match value {
                "off" | "" => None,
                v => Some(parse_listen(v)?.to_string()),
            }
        }
        "sync-xattrs" => o.sync_xattrs = Some(parse_bool(value)?),
        "sync-acls" => o.sync_acls = Some(parse_bool(value)?),
        "delta-min-size" => o.delta_min_size = parse_delta_min(value)?,
        "channels" => o.channels = parse_channels(value)?,
        "scrub-interval" => o.scrub_interval_secs = Some(parse_duration(key, value)?),
        "scrub-checksum" => o.scrub_checksum_every = Some(parse_share(value)?),
        "scrub-repair" => o.scrub_repair = Some(parse_bool(value)?),
        _ => unreachable!("every OPTIONS key is handled"),
    }
    Ok(())
}

/// Puts `key` back to its default.
pub fn reset(cfg: &mut SessionConfig, key: &str) -> Result<()> {
    def(key)?;
    let o = &mut cfg.options;
    match key {
        "checkpoint" => o.checkpoint_ns = None,
        "log-level" => o.log_level = None,
        "compression" => o.compression = None,
        "batch-ops" => o.batch_ops = None,
        "batch-bytes" => o.batch_bytes = None,
        "window" => o.window = None,
        "ignore-deletes" => o.ignore_deletes = None,
        "exclude" => cfg.excludes.clear(),
        "ssh-port" => cfg.ssh_port = None,
        "remote-georep" => cfg.remote_georep = None,
        "bwlimit" => o.bwlimit = None,
        "trash-retention" => o.trash_retention_days = None,
        "takeover-timeout" => o.takeover_timeout_secs = None,
        "metrics-listen" => o.metrics_listen = None,
        "sync-xattrs" => o.sync_xattrs = None,
        "sync-acls" => o.sync_acls = None,
        "delta-min-size" => o.delta_min_size = None,
        "channels" => o.channels = None,
        "scrub-interval" => o.scrub_interval_secs = None,
        "scrub-checksum" => o.scrub_checksum_every = None,
        "scrub-repair" => o.scrub_repair = None,
        _ => unreachable!("every OPTIONS key is handled"),
    }
    Ok(())
}

/// `delta-min-size`: `auto` (`None`), `off` (`u64::MAX`) or a size.
pub fn parse_delta_min(value: &str) -> Result<Option<u64>> {
    Ok(match value {
        "auto" => None,
        "off" => Some(u64::MAX),
        v => Some(parse_size(v)?),
    })
}

/// `channels`: `auto` (`None`) or 1 to `MAX_CHANNELS`.
pub fn parse_channels(value: &str) -> Result<Option<u8>> {
    let max = crate::protocol::MAX_CHANNELS;
    match value {
        "auto" => Ok(None),
        v => match v.parse::<u8>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => bail!("channels: {v:?}: use a number from 1 to {max}, or auto"),
        },
    }
}

/// The worker's run options from the session's settings.
pub fn sync_options(cfg: &SessionConfig) -> SyncOptions {
    let o = &cfg.options;
    let d = SyncOptions::default();
    SyncOptions {
        compression: o.compression,
        window: o.window.unwrap_or(d.window),
        batch_ops: o.batch_ops.unwrap_or(d.batch_ops),
        batch_bytes: o.batch_bytes.unwrap_or(d.batch_bytes),
        excludes: cfg.excludes.clone(),
        bwlimit: o.bwlimit.unwrap_or(0),
        ignore_deletes: o.ignore_deletes.unwrap_or(false),
        trash_retention_days: o.trash_retention_days.unwrap_or(0),
        takeover_timeout: o
            .takeover_timeout_secs
            .map_or(d.takeover_timeout, std::time::Duration::from_secs),
        delta_min: o.delta_min_size,
        channels: o.channels,
        xattrs: crate::xattr::wanted(o.sync_xattrs.unwrap_or(true), o.sync_acls.unwrap_or(true)),
        ..d
    }
}

pub fn log_level(cfg: &SessionConfig) -> String {
    cfg.options.log_level.clone().unwrap_or_else(env_log_level)
}

/// The level a background process gets when no session option sets one: this process's
/// `GEOREP_LOG`, else `info`.
pub fn env_log_level() -> String {
    std::env::var("GEOREP_LOG").unwrap_or_else(|_| "info".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_times() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("1X").is_err());
        assert_eq!(show_size(64 << 20), "64M");
        assert_eq!(show_size(1000), "1000");
        let t = parse_time("2026-11-21 08:26:23").unwrap();
        assert!(
            show_time(t).starts_with("2026-11-21 08:26:23 "),
            "{}",
            show_time(t)
        );
        // What status prints is read back as the same instant, zone included.
        assert_eq!(parse_time(&show_time(t)).unwrap(), t);
        let utc = parse_time("2026-11-21 08:26:23 UTC").unwrap();
        assert_eq!(parse_time("2026-11-21 09:26:23 +01:00").unwrap(), utc);
        assert_eq!(parse_time("2026-11-21T08:26:23Z").unwrap(), utc);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn scrub_settings_read_back_as_set() {
        assert_eq!(parse_duration("k", "90").unwrap(), 90);
        assert_eq!(parse_duration("k", "30m").unwrap(), 1800);
        assert_eq!(show_duration(parse_duration("k", "1h").unwrap()), "1h");
        assert_eq!(show_duration(90), "90s");
        assert!(parse_duration("k", "1w").is_err() && parse_duration("k", "h").is_err());
        assert_eq!(parse_share("1/24").unwrap(), 24);
        assert_eq!(show_share(parse_share("all").unwrap()), "all");
        assert_eq!(parse_share("off").unwrap(), 0);
        assert!(parse_share("1/0").is_err() && parse_share("half").is_err());
    }

    #[test]
    fn docs_list_every_option() {
        let doc = include_str!("../../docs/config.md");
        for d in OPTIONS {
            assert!(
                doc.contains(&format!("`{}`", d.key)),
                "docs/config.md does not describe {}",
                d.key
            );
        }
    }
}
