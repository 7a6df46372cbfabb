//! Per-brick worker status, written by the worker to `status.json` in the brick's state
//! directory (atomically) and read by `georep status`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BrickStatus {
    /// Created, Initializing..., Active, Faulty, Stopped
    pub status: String,
    /// Hybrid Crawl, History Crawl, Changelog Crawl, N/A
    pub crawl: String,
    /// Every change recorded before this instant (ns since the epoch) is on the slave; 0 = none.
    pub stime_ns: i64,
    /// Last journal sequence number the slave has.
    pub journal_seq: u64,
    /// Journal records not yet on the slave.
    pub backlog: u64,
    pub hybrid_crawls: u64,
    pub entries: u64,
    pub data: u64,
    pub meta: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub updated_ns: i64,
    pub pid: u32,
    /// The checkpoint this brick measured itself against, and when its stime reached it.
    #[serde(default)]
    pub checkpoint_ns: Option<i64>,
    #[serde(default)]
    pub checkpoint_completed_ns: Option<i64>,
    /// Times this brick took over its replica set from another brick.
    #[serde(default)]
    pub takeovers: u64,
    /// Content bytes of the journal backlog's files (estimate: their current sizes).
    #[serde(default)]
    pub backlog_bytes: u64,
    /// Times an established connection to the slave was lost, and the last time and reason.
    #[serde(default)]
    pub disconnects: u64,
    #[serde(default)]
    pub last_disconnect: Option<String>,
    /// When this worker started (a scrub pass is due an interval after it, or after the last).
    #[serde(default)]
    pub started_ns: i64,
    /// The last completed scrub pass.
    #[serde(default)]
    pub scrub: Option<ScrubStatus>,
    #[serde(default)]
    pub scrub_running: bool,
    /// LAST_SYNCED is held at this time: a scrub found differences that are not repaired.
    #[serde(default)]
    pub scrub_hold_ns: Option<i64>,
}

/// The result of a scrub pass, as `status detail` and `--json` show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScrubStatus {
    pub pass: u64,
    pub started_ns: i64,
    pub finished_ns: i64,
    /// Entries compared on the master.
    pub entries: u64,
    /// Content bytes hashed, both sides.
    pub bytes_hashed: u64,
    /// `all`, `off` or `1/N`: the share of files whose contents were hashed.
    pub checksum: String,
    pub differences: u64,
    /// Differences repaired after the pass (0 with `scrub-repair false`).
    pub repaired: u64,
    /// Why the repair failed, when it did.
    pub repair_failed: Option<String>,
    /// The first differences, `path: what`.
    pub paths: Vec<String>,
}

impl BrickStatus {
    pub fn file(state_dir: &Path) -> PathBuf {
        state_dir.join("status.json")
    }

    pub fn load(state_dir: &Path) -> Option<BrickStatus> {
        let text = std::fs::read_to_string(Self::file(state_dir)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn save(&mut self, state_dir: &Path) -> Result<()> {
        self.updated_ns = crate::journal::record::now_ns();
        self.pid = std::process::id();
        let path = Self::file(state_dir);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// One row of `georep status`; the JSON of `status --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub master_node: String,
    pub master_vol: String,
    pub master_brick: String,
    pub slave_user: String,
    pub slave: String,
    pub slave_node: String,
    pub status: String,
    pub crawl_status: String,
    /// `YYYY-MM-DD HH:MM:SS` local time, or N/A.
    pub last_synced: String,
    /// The same instant in UTC (RFC 3339), absent before the first acknowledged batch.
    pub last_synced_utc: Option<String>,
    /// Seconds between LAST_SYNCED and now (absent before the first sync).
    pub lag_seconds: Option<u64>,
    pub entries: u64,
    pub data: u64,
    pub meta: u64,
    pub failures: u64,
    pub backlog_records: u64,
    pub backlog_bytes: u64,
    /// Checkpoint time (local, or N/A), whether it completed, and when.
    pub checkpoint_time: String,
    pub checkpoint_time_utc: Option<String>,
    pub checkpoint_completed: String,
    pub checkpoint_completion_time: String,
    pub checkpoint_completion_time_utc: Option<String>,
    pub hybrid_crawls: u64,
    pub takeovers: u64,
    /// For a Faulty or failing worker: what went wrong, with the path and the fix.
    pub last_error: Option<String>,
    /// Established connections lost since the worker started, and the last one's time and
    /// reason (kept after the worker reconnects).
    pub disconnects: u64,
    pub last_disconnect: Option<String>,
}

fn local_time(ns: i64) -> String {
    crate::options::show_time(ns)
}

fn utc_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Rows for every session on this node (optionally one master volume, one slave).
pub fn rows(
    home: &crate::config::Home,
    master: Option<&str>,
    slave: Option<&str>,
) -> Result<Vec<Row>> {
    use crate::daemon::monitor;
    use crate::session::SessionConfig;
    let mut out = Vec::new();
    let mut matched = false;
    for name in crate::session::SessionConfig::names(home) {
        let cfg = SessionConfig::load_by_name(home, &name)?;
        if master.is_some_and(|m| !crate::session::same_volume(home, m, &cfg.master))
            || slave.is_some_and(|s| s != cfg.slave)
        {
            continue;
        }
        matched = true;
        let vol = cfg.volume(home)?;
        let spec = cfg.slave_spec()?;
        let (slave_col, user, node) = match &spec.host {
            Some(h) => (
                format!(
                    "ssh://{}{}::{}",
                    spec.user
                        .as_ref()
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default(),
                    host_port(h, spec.port.or(cfg.ssh_port)),
                    spec.volume
                ),
                spec.user.clone().unwrap_or_else(|| "root".into()),
                h.clone(),
            ),
            None => (
                spec.volume.clone(),
                std::env::var("USER").unwrap_or_else(|_| "root".into()),
                "localhost".into(),
            ),
        };
        let running = monitor::is_running(home, &name);
        let paused = monitor::is_paused(home, &name);
        let now = crate::journal::record::now_ns();
        let checkpoint = cfg.options.checkpoint_ns;
        for b in vol.bricks.iter().filter(|b| b.is_local()) {
            let st = BrickStatus::load(&crate::session::brick_state_dir(home, &name, b));
            let (status, crawl) = match &st {
                _ if running && paused => ("Paused".to_string(), "N/A".to_string()),
                Some(s) if running => (
                    s.status.clone(),
                    if s.status == "Active" {
                        s.crawl.clone()
                    } else {
                        "N/A".into()
                    },
                ),
                None if running => ("Initializing...".into(), "N/A".into()),
                Some(s) if s.status != "Created" => ("Stopped".into(), "N/A".into()),
                _ => ("Created".into(), "N/A".into()),
            };
            let st = st.unwrap_or_default();
            let synced = (st.stime_ns > 0).then_some(st.stime_ns);
            let completed = checkpoint.and_then(|cp| {
                (st.stime_ns >= cp).then(|| {
                    st.checkpoint_completed_ns
                        .filter(|_| st.checkpoint_ns == Some(cp))
                        .unwrap_or(st.updated_ns)
                })
            });
            out.push(Row {
                master_node: b.node.clone(),
                master_vol: vol.name.clone(),
                master_brick: b.path.display().to_string(),
                slave_user: user.clone(),
                slave: slave_col.clone(),
                slave_node: node.clone(),
                status,
                crawl_status: crawl,
                last_synced: synced.map(local_time).unwrap_or_else(|| "N/A".into()),
                last_synced_utc: synced.map(utc_time),
                lag_seconds: synced.map(|t| ((now - t).max(0) / 1_000_000_000) as u64),
                entries: st.entries,
                data: st.data,
                meta: st.meta,
                failures: st.failures,
                backlog_records: st.backlog,
                backlog_bytes: st.backlog_bytes,
                checkpoint_time: checkpoint.map(local_time).unwrap_or_else(|| "N/A".into()),
                checkpoint_time_utc: checkpoint.map(utc_time),
                checkpoint_completed: match (checkpoint, completed) {
                    (None, _) => "N/A".into(),
                    (Some(_), Some(_)) => "Yes".into(),
                    (Some(_), None) => "No".into(),
                },
                checkpoint_completion_time: completed
                    .map(local_time)
                    .unwrap_or_else(|| "N/A".into()),
                checkpoint_completion_time_utc: completed.map(utc_time),
                hybrid_crawls: st.hybrid_crawls,
                takeovers: st.takeovers,
                last_error: st.last_error,
                disconnects: st.disconnects,
                last_disconnect: st.last_disconnect,
            });
        }
    }
    if !matched {
        if let (Some(m), Some(s)) = (master, slave) {
            anyhow::bail!("no session {m} -> {s} on this node: `georep create {m} {s}` makes one");
        }
    }
    Ok(out)
}

/// `host`, or `host:port` for a port other than 22 (IPv6 addresses in brackets).
fn host_port(host: &str, port: Option<u16>) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match port.filter(|p| *p != 22) {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

/// `status --check`: (exit code, one line). CRITICAL: a Faulty or Stopped brick, lag over
/// `max_lag`, no session; WARNING: failures, Paused, lag over half of `max_lag`, still
/// initializing; else OK.
pub fn check(rows: &[Row], max_lag: u64) -> (u8, String) {
    let mut crit = Vec::new();
    let mut warn = Vec::new();
    if rows.is_empty() {
        crit.push("no geo-replication session on this node".to_string());
    }
    for r in rows {
        let who = format!("{}:{}", r.master_node, r.master_brick);
        match r.status.as_str() {
            "Faulty" => crit.push(format!(
                "{who} is Faulty: {}",
                r.last_error.as_deref().unwrap_or("no error recorded")
            )),
            "Stopped" | "Created" => crit.push(format!("{who} is {} (not replicating)", r.status)),
            "Paused" => warn.push(format!("{who} is Paused")),
            "Initializing..." => warn.push(format!("{who} is initializing")),
            _ => {}
        }
        if r.status == "Passive" {
            continue;
        }
        match r.lag_seconds {
            Some(l) if l > max_lag => crit.push(format!("{who} lags {l} s (max {max_lag} s)")),
            Some(l) if l > max_lag / 2 => {
                warn.push(format!("{who} lags {l} s (warning at {} s)", max_lag / 2))
            }
            None if r.status == "Active" => warn.push(format!("{who} has not synced yet")),
            _ => {}
        }
        if r.failures > 0 {
            warn.push(format!(
                "{who} has {} failed path(s): `georep failures` lists them",
                r.failures
            ));
        }
    }
    let max_seen = rows.iter().filter_map(|r| r.lag_seconds).max();
    if !crit.is_empty() {
        (2, format!("CRITICAL: {}", crit.join("; ")))
    } else if !warn.is_empty() {
        (1, format!("WARNING: {}", warn.join("; ")))
    } else {
        (
            0,
            format!(
                "OK: {} brick(s) replicating, lag {} s",
                rows.len(),
                max_seen.unwrap_or(0)
            ),
        )
    }
}

/// One failed path of `georep failures`.
#[derive(Debug, Serialize)]
pub struct FailedPath {
    pub brick: String,
    pub path: String,
    pub side: String,
    pub errno: i32,
    pub message: String,
    pub attempts: u32,
}

pub fn failures(home: &crate::config::Home, master: &str, slave: &str) -> Result<Vec<FailedPath>> {
    let cfg = crate::session::SessionConfig::load(home, master, slave)?;
    let vol = cfg.volume(home)?;
    let mut out = Vec::new();
    for b in vol.bricks.iter().filter(|b| b.is_local()) {
        let db = crate::session::brick_state_dir(home, &cfg.name, b).join("index.db");
        if !db.exists() {
            continue;
        }
        let index = crate::crawl::index::Index::open(&db)?;
        for f in index.failures()? {
            out.push(FailedPath {
                brick: b.to_string(),
                path: f.path.display(),
                side: f.side,
                errno: f.errno,
                message: f.message,
                attempts: f.attempts,
            });
        }
    }
    Ok(out)
}

/// The default table's width budget: long paths are shortened in the middle to fit it.
pub const TABLE_WIDTH: usize = 120;
/// A shortened path keeps at least this many characters.
const MIN_PATH_WIDTH: usize = 16;

/// The Gluster-style table. By default one row per brick in about 120 columns: MASTER NODE,
/// MASTER VOL, MASTER BRICK, SLAVE (`ssh://user@host[:port]::volume`, which also names the
/// slave user and node), STATUS, CRAWL STATUS, LAST_SYNCED; long paths are shortened in the
/// middle. `detail` keeps every value whole and adds SLAVE USER, SLAVE NODE, the counters,
/// checkpoint columns, backlog, lag and the last error.
pub fn table(rows: &[Row], detail: bool) -> String {
    let mut header = vec!["MASTER NODE", "MASTER VOL", "MASTER BRICK"];
    if detail {
        header.extend(["SLAVE USER", "SLAVE", "SLAVE NODE"]);
    } else {
        header.push("SLAVE");
    }
    header.extend(["STATUS", "CRAWL STATUS", "LAST_SYNCED"]);
    if detail {
        header.extend([
            "ENTRY",
            "DATA",
            "META",
            "FAILURES",
            "CHECKPOINT TIME",
            "CHECKPOINT COMPLETED",
            "CHECKPOINT COMPLETION TIME",
            "BACKLOG",
            "BACKLOG BYTES",
            "LAG",
        ]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.master_node.clone(),
                r.master_vol.clone(),
                r.master_brick.clone(),
            ];
            if detail {
                c.extend([r.slave_user.clone(), r.slave.clone(), r.slave_node.clone()]);
            } else {
                c.push(r.slave.clone());
            }
            c.extend([
                r.status.clone(),
                r.crawl_status.clone(),
                r.last_synced.clone(),
            ]);
            if detail {
                c.extend([
                    r.entries.to_string(),
                    r.data.to_string(),
                    r.meta.to_string(),
                    r.failures.to_string(),
                    r.checkpoint_time.clone(),
                    r.checkpoint_completed.clone(),
                    r.checkpoint_completion_time.clone(),
                    r.backlog_records.to_string(),
                    crate::ship::human_bytes(r.backlog_bytes),
                    r.lag_seconds
                        .map(|l| format!("{l} s"))
                        .unwrap_or_else(|| "N/A".into()),
                ]);
            }
            c
        })
        .collect();
    let width = |s: &str| s.chars().count();
    let mut w: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for c in &cells {
        for (i, v) in c.iter().enumerate() {
            w[i] = w[i].max(width(v));
        }
    }
    if !detail {
        // MASTER VOL, MASTER BRICK and SLAVE give way, widest first, down to a readable width.
        let shrinkable = [1, 2, 3];
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * (w.len() - 1);
        while total(&w) > TABLE_WIDTH {
            let Some(&i) = shrinkable
                .iter()
                .filter(|&&i| w[i] > MIN_PATH_WIDTH.max(width(header[i])))
                .max_by_key(|&&i| w[i])
            else {
                break;
            };
            w[i] -= 1;
        }
    }
    let line = |v: Vec<&str>| {
        v.iter()
            .enumerate()
            .map(|(i, s)| format!("{:<width$}", shorten_middle(s, w[i]), width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1)));
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    if detail {
        for r in rows.iter().filter(|r| r.last_error.is_some()) {
            out.push_str(&format!(
                "\n{}:{} last error: {}\n",
                r.master_node,
                r.master_brick,
                r.last_error.as_deref().unwrap_or_default()
            ));
        }
        for r in rows.iter().filter(|r| r.last_disconnect.is_some()) {
            out.push_str(&format!(
                "\n{}:{} connection lost {} time(s), last at {}\n",
                r.master_node,
                r.master_brick,
                r.disconnects,
                r.last_disconnect.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

/// `s` in at most `max` characters: its start and end with `…` between when it is longer.
pub fn shorten_middle(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 3 {
        return s.to_string();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(brick: &str, slave: &str) -> Row {
        Row {
            master_node: "gfs-node1".into(),
            master_vol: "gv0".into(),
            master_brick: brick.into(),
            slave_user: "root".into(),
            slave: slave.into(),
            slave_node: "dr1".into(),
            status: "Active".into(),
            crawl_status: "Changelog Crawl".into(),
            last_synced: "2026-12-04 06:04:02 UTC".into(),
            last_synced_utc: None,
            lag_seconds: Some(1),
            entries: 0,
            data: 0,
            meta: 0,
            failures: 0,
            backlog_records: 0,
            backlog_bytes: 0,
            checkpoint_time: "N/A".into(),
            checkpoint_time_utc: None,
            checkpoint_completed: "N/A".into(),
            checkpoint_completion_time: "N/A".into(),
            checkpoint_completion_time_utc: None,
            hybrid_crawls: 0,
            takeovers: 0,
            last_error: None,
            disconnects: 0,
            last_disconnect: None,
        }
    }

    fn widest(t: &str) -> usize {
        t.lines().map(|l| l.chars().count()).max().unwrap()
    }

    #[test]
    fn the_table_fits_120_columns_and_shortens_long_paths_in_the_middle() {
        let normal = table(
            &[row("/bricks/brick1", "ssh://root@dr1:2222::gv0-dr")],
            false,
        );
        assert!(widest(&normal) <= TABLE_WIDTH, "{normal}");
        assert!(
            normal.contains(" /bricks/brick1 ") && normal.contains("ssh://root@dr1:2222::gv0-dr"),
            "{normal}"
        );
        let long = format!("/data/{}brick-end", "very-long-directory-name/".repeat(6));
        let t = table(
            &[row(
                &long,
                "ssh://replication@dr-site-1.example.com::/dr/volumes/gv0",
            )],
            false,
        );
        assert!(widest(&t) <= TABLE_WIDTH, "{t}");
        assert!(
            t.contains(" /data/very") && t.contains("/brick-end ") && t.contains('…'),
            "{t}"
        );
        // detail keeps everything whole.
        let d = table(&[row(&long, "ssh://root@dr1::gv0")], true);
        assert!(
            d.contains(&long) && d.contains("SLAVE USER") && d.contains("SLAVE NODE"),
            "{d}"
        );
    }

    #[test]
    fn shortening_keeps_both_ends() {
        assert_eq!(shorten_middle("/abcdefghij", 7), "/ab…hij");
        assert_eq!(shorten_middle("/short", 16), "/short");
    }
}
