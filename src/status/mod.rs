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
