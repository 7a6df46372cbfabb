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

/// One row of `georep status`.
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
    pub entries: u64,
    pub data: u64,
    pub meta: u64,
    pub failures: u64,
    pub backlog_records: u64,
    pub last_error: Option<String>,
}

fn alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a.ends_with(b"georep")))
}

/// Rows for every session on this node (optionally one master volume, one slave).
pub fn rows(
    home: &crate::config::Home,
    master: Option<&str>,
    slave: Option<&str>,
) -> Result<Vec<Row>> {
    use crate::session::SessionConfig;
    let dir = home.etc.join("sessions");
    let mut out = Vec::new();
    let mut names: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".toml")
                    .map(String::from)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for name in names {
        let cfg = SessionConfig::load_by_name(home, &name)?;
        if master.is_some_and(|m| m != cfg.master) || slave.is_some_and(|s| s != cfg.slave) {
            continue;
        }
        let vol = cfg.volume(home)?;
        let spec = cfg.slave_spec()?;
        let (slave_col, user, node) = match &spec.host {
            Some(h) => (
                format!(
                    "ssh://{}{h}::{}",
                    spec.user
                        .as_ref()
                        .map(|u| format!("{u}@"))
                        .unwrap_or_default(),
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
        for b in vol.bricks.iter().filter(|b| b.is_local()) {
            let st = BrickStatus::load(&crate::session::brick_state_dir(home, &name, b));
            let (status, crawl) = match &st {
                None => ("Created".to_string(), "N/A".to_string()),
                Some(s) if !alive(s.pid) => ("Stopped".into(), "N/A".into()),
                Some(s) => (
                    s.status.clone(),
                    if s.status == "Active" {
                        s.crawl.clone()
                    } else {
                        "N/A".into()
                    },
                ),
            };
            let st = st.unwrap_or_default();
            let synced =
                (st.stime_ns > 0).then(|| chrono::DateTime::from_timestamp_nanos(st.stime_ns));
            out.push(Row {
                master_node: b.node.clone(),
                master_vol: vol.name.clone(),
                master_brick: b.path.display().to_string(),
                slave_user: user.clone(),
                slave: slave_col.clone(),
                slave_node: node.clone(),
                status,
                crawl_status: crawl,
                last_synced: synced
                    .map(|t| {
                        t.with_timezone(&chrono::Local)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    })
                    .unwrap_or_else(|| "N/A".into()),
                last_synced_utc: synced.map(|t| t.to_rfc3339()),
                entries: st.entries,
                data: st.data,
                meta: st.meta,
                failures: st.failures,
                backlog_records: st.backlog,
                last_error: st.last_error,
            });
        }
    }
    Ok(out)
}

/// The Gluster-style table.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "MASTER NODE",
        "MASTER VOL",
        "MASTER BRICK",
        "SLAVE USER",
        "SLAVE",
        "SLAVE NODE",
        "STATUS",
        "CRAWL STATUS",
        "LAST_SYNCED",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.master_node.clone(),
                r.master_vol.clone(),
                r.master_brick.clone(),
                r.slave_user.clone(),
                r.slave.clone(),
                r.slave_node.clone(),
                r.status.clone(),
                r.crawl_status.clone(),
                r.last_synced.clone(),
            ]
        })
        .collect();
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (i, v) in c.iter().enumerate() {
            w[i] = w[i].max(v.len());
        }
    }
    let line = |v: Vec<&str>| {
        v.iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<width$}", width = w[i]))
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
    out
}
