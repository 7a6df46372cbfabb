//! A worker's state and its crawl, typed; written as Gluster's words in status files,
//! `status --json` and metrics, so their formats stay as they were.

use serde::{Deserialize, Serialize};

/// What a brick's worker is doing (Gluster's STATUS column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WorkerStatus {
    /// The session exists and never started.
    #[default]
    Created,
    #[serde(rename = "Initializing...")]
    Initializing,
    /// Replicating.
    Active,
    /// Another brick of its replica set replicates; this one waits to take over.
    Passive,
    /// Not replicating because of an error (`last_error` says which, and the fix).
    Faulty,
    Paused,
    Stopped,
}

impl WorkerStatus {
    /// Every state, for metrics that keep one series per state.
    pub const ALL: [WorkerStatus; 7] = [
        WorkerStatus::Created,
        WorkerStatus::Initializing,
        WorkerStatus::Active,
        WorkerStatus::Passive,
        WorkerStatus::Faulty,
        WorkerStatus::Paused,
        WorkerStatus::Stopped,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Created => "Created",
            WorkerStatus::Initializing => "Initializing...",
            WorkerStatus::Active => "Active",
            WorkerStatus::Passive => "Passive",
            WorkerStatus::Faulty => "Faulty",
            WorkerStatus::Paused => "Paused",
            WorkerStatus::Stopped => "Stopped",
        }
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// How an Active worker finds what to ship (Gluster's CRAWL STATUS column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CrawlStatus {
    /// Walking the brick against the index (a first sync, a journal gap, a takeover).
    #[serde(rename = "Hybrid Crawl")]
    Hybrid,
    /// Catching up on a journal backlog larger than one window.
    #[serde(rename = "History Crawl")]
    History,
    /// Live: shipping journal records as they come.
    #[serde(rename = "Changelog Crawl")]
    Changelog,
    /// Not Active.
    #[default]
    #[serde(rename = "N/A")]
    None,
}

impl CrawlStatus {
    pub const ALL: [CrawlStatus; 4] = [
        CrawlStatus::Hybrid,
        CrawlStatus::Changelog,
        CrawlStatus::History,
        CrawlStatus::None,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CrawlStatus::Hybrid => "Hybrid Crawl",
            CrawlStatus::History => "History Crawl",
            CrawlStatus::Changelog => "Changelog Crawl",
            CrawlStatus::None => "N/A",
        }
    }
}

impl std::fmt::Display for CrawlStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_written_as_gluster_words() {
        for s in WorkerStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<WorkerStatus>(&json).unwrap(), s);
        }
        for c in CrawlStatus::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<CrawlStatus>(&json).unwrap(), c);
        }
        assert_eq!(format!("{:<8}|", WorkerStatus::Active), "Active  |");
    }
}
