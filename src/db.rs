//! Opening georep's SQLite files (index, journal, agent state) the same way: WAL, a busy
//! timeout, and a `meta` table whose `format` row is checked.
//!
//! Invariant: a file written by a newer, incompatible georep is refused with a message, never
//! read as if it were ours.

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

/// How hard a commit waits for the disk.
#[derive(Clone, Copy)]
pub enum Sync {
    /// WAL without fsync per commit: for files whose lost tail is repaired by design.
    Normal,
    /// fsync per commit: for state that a peer relies on (the agent's acked batches).
    Full,
}

/// Brings a file from format `from` to the next one: SQL run in one transaction with the
/// format row's update.
pub struct Upgrade {
    pub from: &'static str,
    pub to: &'static str,
    pub sql: &'static str,
}

/// Opens (creating) `path` with WAL and the `meta` table, and checks its format version; an
/// older format with an `Upgrade` path to `format` is upgraded in place.
pub fn open(
    path: &Path,
    sync: Sync,
    format: &str,
    what: &str,
    upgrades: &[Upgrade],
) -> Result<Connection> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let db =
        Connection::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        },
    )?;
    db.busy_timeout(std::time::Duration::from_secs(10))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    db.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?1)",
        [format],
    )?;
    let mut found: Option<String> = db
        .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
            r.get(0)
        })
        .optional()?;
    while let Some(u) = upgrades
        .iter()
        .find(|u| found.as_deref() == Some(u.from) && found.as_deref() != Some(format))
    {
        db.execute_batch(&format!(
            "BEGIN; {} UPDATE meta SET value = '{}' WHERE key = 'format'; COMMIT;",
            u.sql, u.to
        ))
        .with_context(|| {
            format!(
                "upgrading {what} {} from format {} to {}",
                path.display(),
                u.from,
                u.to
            )
        })?;
        found = Some(u.to.to_string());
    }
    match found {
        Some(v) if v == format => Ok(db),
        v => bail!(
            "{what} {} has format {}, this georep understands {format}: upgrade georep on this host",
            path.display(),
            v.unwrap_or_default()
        ),
    }
}
