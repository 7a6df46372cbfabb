//! The agent's durable state in `<root>/.georep/agent.db`: volume id, epoch, role, and the last
//! batch made durable per master brick.
//!
//! Invariant: `last_batch` for a brick is written only after the batch's data was synced, so a
//! master that resumes from it never skips a change.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// Version of the agent.db layout; an unknown version is refused rather than guessed at.
const FORMAT_VERSION: &str = "1";

pub struct AgentState {
    db: Connection,
    path: PathBuf,
    pub volume_id: String,
    pub epoch: u64,
}

impl AgentState {
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("agent.db");
        let db = crate::db::open(&path, crate::db::Sync::Full, FORMAT_VERSION, "agent state")?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS bricks(
                brick TEXT PRIMARY KEY, session TEXT NOT NULL,
                last_batch INTEGER NOT NULL, updated_ns INTEGER NOT NULL);",
        )?;
        let get = |k: &str| -> Result<Option<String>> {
            Ok(db
                .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .optional()?)
        };
        if get("volume_id")?.is_none() {
            // Another agent may initialise the volume at the same time: first writer wins.
            db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('volume_id', ?1), ('epoch', '0'), ('role', 'slave')",
                params![new_volume_id()?],
            )?;
        }
        let volume_id = get("volume_id")?.context("agent.db has no volume_id")?;
        let epoch = get("epoch")?
            .context("agent.db has no epoch")?
            .parse()
            .context("agent.db epoch is not a number")?;
        Ok(AgentState {
            db,
            path,
            volume_id,
            epoch,
        })
    }

    pub fn last_batch(&self, brick: &str) -> Result<u64> {
        Ok(self
            .db
            .query_row(
                "SELECT last_batch FROM bricks WHERE brick = ?1",
                [brick],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64)
    }

    /// Records that `batch` from `brick` is durable. Call only after the data was synced.
    pub fn record_batch(&self, brick: &str, session: &str, batch: u64) -> Result<()> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.db
            .execute(
                "INSERT INTO bricks(brick, session, last_batch, updated_ns) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(brick) DO UPDATE SET session = ?2, last_batch = MAX(last_batch, ?3), updated_ns = ?4",
                params![brick, session, batch as i64, now],
            )
            .with_context(|| format!("recording batch {batch} in {}", self.path.display()))?;
        Ok(())
    }
}

fn new_volume_id() -> Result<String> {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for the volume id")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
