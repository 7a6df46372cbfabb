//! Per-brick worker status, written by the worker to `status.json` in the brick's state
//! directory (atomically) and read by `georep status`.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub mod metrics;
mod state;
pub use state::{CrawlStatus, WorkerStatus};
mod table;
pub use table::{scrub_line, shorten_middle, table, TABLE_WIDTH};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BrickStatus {
    pub status: WorkerStatus,
    pub crawl: CrawlStatus,
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
    /// Something replicated partly, not a fault (extended attributes the DR filesystem or the
    /// privileges refuse).
    #[serde(default)]
    pub warning: Option<String>,
    pub updated_ns: i64,
    /// Content bytes shipped (the files counted in `data`).
    #[serde(default)]
    pub bytes: u64,
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
    /// Why the last pass could not complete (cleared by the next that does).
    #[serde(default)]
    pub scrub_error: Option<String>,
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

/// Where the monitor says why a brick's journal writer cannot run (absent while it runs).
pub fn writer_error_file(brick_state_dir: &Path) -> PathBuf {
    brick_state_dir.join("writer.error")
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
    pub status: WorkerStatus,
    pub crawl_status: CrawlStatus,
    /// `YYYY-MM-DD HH:MM:SS` local time, or N/A.
    pub last_synced: String,
    /// The same instant in UTC (RFC 3339), absent before the first acknowledged batch.
    pub last_synced_utc: Option<String>,
    /// Seconds between LAST_SYNCED and now (absent before the first sync).
    pub lag_seconds: Option<u64>,
    pub entries: u64,
    pub data: u64,
    /// Content bytes shipped (the files counted in `data`).
    pub bytes: u64,
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
    /// What is replicated only partly, and why (not a fault).
    pub warning: Option<String>,
    /// Established connections lost since the worker started, and the last one's time and
    /// reason (kept after the worker reconnects).
    pub disconnects: u64,
    pub last_disconnect: Option<String>,
    /// When the last scrub pass completed (local, or N/A), and its UTC time.
    pub last_scrub: String,
    pub last_scrub_utc: Option<String>,
    /// The last completed scrub pass: entries compared, bytes hashed, differences found and
    /// repaired, the first paths (absent before the first pass).
    pub scrub: Option<ScrubStatus>,
    pub scrub_running: bool,
    /// Why the last pass could not complete, when it could not.
    pub scrub_error: Option<String>,
    /// `scrub-interval` in seconds (absent: off).
    pub scrub_interval_seconds: Option<u64>,
    /// LAST_SYNCED is held here: the last scrub found differences not repaired.
    pub scrub_hold_utc: Option<String>,
    /// When the brick's worker started (ns since the epoch; absent when not running).
    #[serde(skip)]
    pub worker_started_ns: Option<i64>,
}

fn local_time(ns: i64) -> String {
    crate::options::show_time(ns)
}

fn utc_time(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `b` bytes for a reader: `512 B`, `1.5 MiB`.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Rows for every session on this node (optionally one master volume, one slave).
pub fn rows(
    home: &crate::config::Home,
    master: Option<&str>,
    slave: Option<&str>,
) -> Result<Vec<Row>> {
    use crate::session::SessionConfig;
    let mut out = Vec::new();
    let mut matched = false;
    for name in SessionConfig::names(home) {
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
        let scrub_interval = crate::options::scrub(&cfg).interval.map(|d| d.as_secs());
        let running = crate::session::is_running(home, &name);
        let paused = crate::session::is_paused(home, &name);
        let now = crate::journal::record::now_ns();
        let checkpoint = cfg.options.checkpoint_ns;
        for b in vol.bricks.iter().filter(|b| b.is_local()) {
            let st = BrickStatus::load(&crate::session::brick_state_dir(home, &name, b));
            let (status, crawl) = match &st {
                _ if running && paused => (WorkerStatus::Paused, CrawlStatus::None),
                Some(s) if running => (
                    s.status,
                    if s.status == WorkerStatus::Active {
                        s.crawl
                    } else {
                        CrawlStatus::None
                    },
                ),
                None if running => (WorkerStatus::Initializing, CrawlStatus::None),
                Some(s) if s.status != WorkerStatus::Created => {
                    (WorkerStatus::Stopped, CrawlStatus::None)
                }
                _ => (WorkerStatus::Created, CrawlStatus::None),
            };
            let mut st = st.unwrap_or_default();
            let writer_down = running && !paused && status != WorkerStatus::Stopped;
            let (status, crawl) = match std::fs::read_to_string(writer_error_file(
                &crate::session::brick_state_dir(home, &name, b),
            )) {
                Ok(why) if writer_down => {
                    st.last_error = Some(why);
                    (WorkerStatus::Faulty, CrawlStatus::None)
                }
                _ => (status, crawl),
            };
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
                bytes: st.bytes,
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
                warning: st.warning.clone(),
                disconnects: st.disconnects,
                last_disconnect: st.last_disconnect,
                last_scrub: st
                    .scrub
                    .as_ref()
                    .map(|s| local_time(s.finished_ns))
                    .unwrap_or_else(|| "N/A".into()),
                last_scrub_utc: st.scrub.as_ref().map(|s| utc_time(s.finished_ns)),
                scrub: st.scrub.clone(),
                scrub_running: running && st.scrub_running,
                scrub_error: st.scrub_error.clone(),
                scrub_interval_seconds: scrub_interval,
                scrub_hold_utc: st.scrub_hold_ns.map(utc_time),
                worker_started_ns: (running && st.started_ns > 0).then_some(st.started_ns),
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
    let now_ns = crate::journal::record::now_ns();
    let mut crit = Vec::new();
    let mut warn = Vec::new();
    if rows.is_empty() {
        crit.push("no geo-replication session on this node".to_string());
    }
    for r in rows {
        let who = format!("{}:{}", r.master_node, r.master_brick);
        match r.status {
            WorkerStatus::Faulty => crit.push(format!(
                "{who} is Faulty: {}",
                r.last_error.as_deref().unwrap_or("no error recorded")
            )),
            WorkerStatus::Stopped | WorkerStatus::Created => {
                crit.push(format!("{who} is {} (not replicating)", r.status))
            }
            WorkerStatus::Paused => warn.push(format!("{who} is Paused")),
            WorkerStatus::Initializing => warn.push(format!("{who} is initializing")),
            WorkerStatus::Active | WorkerStatus::Passive => {}
        }
        if let Some(w) = &r.warning {
            warn.push(format!("{who}: {w}"));
        }
        if r.status == WorkerStatus::Passive {
            continue;
        }
        match r.lag_seconds {
            Some(l) if l > max_lag => crit.push(format!("{who} lags {l} s (max {max_lag} s)")),
            Some(l) if l > max_lag / 2 => {
                warn.push(format!("{who} lags {l} s (warning at {} s)", max_lag / 2))
            }
            None if r.status == WorkerStatus::Active => {
                warn.push(format!("{who} has not synced yet"))
            }
            _ => {}
        }
        if r.failures > 0 {
            warn.push(format!(
                "{who} has {} failed path(s): `georep failures` lists them",
                r.failures
            ));
        }
        scrub_check(r, &who, now_ns, &mut crit, &mut warn);
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

/// The scrub's part of `--check`: WARNING when the last pass found differences (until a pass
/// finds none), CRITICAL when their repair failed or no pass completed in 3 intervals.
fn scrub_check(r: &Row, who: &str, now_ns: i64, crit: &mut Vec<String>, warn: &mut Vec<String>) {
    if let Some(s) = &r.scrub {
        if let Some(e) = &s.repair_failed {
            crit.push(format!(
                "{who}: the scrub found {} difference(s) and their repair failed: {e}",
                s.differences
            ));
        } else if s.differences > 0 {
            warn.push(format!(
                "{who}: the last scrub found {} difference(s){} between the DR copy and the brick ({}{}): a bug or a write on the DR site; `georep status detail` lists them",
                s.differences,
                if s.repaired == s.differences { ", repaired" } else { ", not repaired (scrub-repair is off)" },
                s.paths.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
                if s.differences > 3 { "; ..." } else { "" }
            ));
        }
    }
    if r.status != WorkerStatus::Active {
        return;
    }
    if let (Some(iv), Some(started)) = (r.scrub_interval_seconds, r.worker_started_ns) {
        let since = r
            .scrub
            .as_ref()
            .map_or(started, |s| s.finished_ns.max(started));
        let late = (now_ns - since) / 1_000_000_000;
        if late > 3 * iv as i64 {
            crit.push(format!(
                "{who}: no scrub pass completed in {late} s (scrub-interval {iv} s): see the worker's log"
            ));
        }
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

pub fn failures(
    home: &crate::config::Home,
    cfg: &crate::session::SessionConfig,
) -> Result<Vec<FailedPath>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubbed(differences: u64, repaired: u64, repair_failed: Option<&str>) -> Row {
        let mut r = table::tests::row("/bricks/b1", "ssh://root@dr1::gv0");
        r.scrub = Some(ScrubStatus {
            pass: 3,
            finished_ns: crate::journal::record::now_ns(),
            differences,
            repaired,
            repair_failed: repair_failed.map(String::from),
            paths: vec!["a/b: missing on the slave".into()],
            ..Default::default()
        });
        r.scrub_interval_seconds = Some(3600);
        r.worker_started_ns = Some(crate::journal::record::now_ns());
        r
    }

    #[test]
    fn the_scrub_turns_the_check_warning_then_critical() {
        assert_eq!(check(&[scrubbed(0, 0, None)], 300).0, 0);
        let (code, line) = check(&[scrubbed(2, 2, None)], 300);
        assert_eq!(code, 1, "{line}");
        assert!(
            line.contains("2 difference(s), repaired") && line.contains("a/b"),
            "{line}"
        );
        let (code, line) = check(&[scrubbed(2, 0, None)], 300);
        assert!(code == 1 && line.contains("not repaired"), "{line}");
        let (code, line) = check(&[scrubbed(2, 0, Some("no space"))], 300);
        assert!(
            code == 2 && line.contains("repair failed: no space"),
            "{line}"
        );
        // No pass completed within 3 intervals of the worker's start.
        let mut late = scrubbed(0, 0, None);
        late.scrub = None;
        late.worker_started_ns = Some(crate::journal::record::now_ns() - 4 * 3600 * 1_000_000_000);
        let (code, line) = check(&[late], 300);
        assert!(
            code == 2 && line.contains("no scrub pass completed"),
            "{line}"
        );
    }
}
