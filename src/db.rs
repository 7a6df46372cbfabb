//! Opening georep's SQLite files (index, journal, agent state) the same way: WAL, a busy
//! timeout, and a `meta` table whose `format` row is checked.
//!
//! Invariant: a file written by a newer, incompatible georep is refused with a message, never
//! read as if it were ours.

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
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
///
/// Several processes may open a new file at once (two bricks' agents on a fresh slave volume):
/// switching to WAL and the first writes can then fail with `SQLITE_BUSY` without the busy
/// handler being asked, so the set-up is retried for as long as the busy timeout.
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
    open_flags(path, OpenFlags::default(), sync, format, what, upgrades)
}

/// [`open`] for a file that must already exist, reached by no symlink at all: SQLite names
/// its files by path, and this makes it refuse one it would reach through a symlink rather
/// than create or use a file elsewhere.
pub fn open_existing_nofollow(
    path: &Path,
    sync: Sync,
    format: &str,
    what: &str,
    upgrades: &[Upgrade],
) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_NOFOLLOW
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    open_flags(path, flags, sync, format, what, upgrades)
}

fn open_flags(
    path: &Path,
    flags: OpenFlags,
    sync: Sync,
    format: &str,
    what: &str,
    upgrades: &[Upgrade],
) -> Result<Connection> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match set_up(path, flags, sync, format) {
            Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => {
                let e = anyhow::Error::new(e).context(format!("opening {what} {}", path.display()));
                return Err(explain_locked(e, path, what));
            }
            Ok(db) => return check_format(db, path, format, what, upgrades),
        }
    }
}

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// When `e` is SQLite's "database is locked", says which processes hold a lock on `path`
/// (its `-shm` too: WAL's write lock lives there), and what to do; otherwise `e` as it is.
/// A lock held by another process is retriable: the caller retries once it is free.
pub fn explain_locked(e: anyhow::Error, path: &Path, what: &str) -> anyhow::Error {
    let busy = e
        .chain()
        .any(|c| c.downcast_ref::<rusqlite::Error>().is_some_and(is_busy));
    if !busy || e.downcast_ref::<Locked>().is_some() {
        return e;
    }
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    let mut holders = lock_holders(path);
    holders.extend(lock_holders(Path::new(&shm)));
    holders.sort();
    holders.dedup();
    let who = if holders.is_empty() {
        "another process".to_string()
    } else {
        holders
            .iter()
            .map(|(pid, comm)| format!("pid {pid} ({comm})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    e.context(Locked(format!(
        "{what} {} is locked by {who}: end that process's transaction or the process \
         (an sqlite3 shell or a backup tool left open on it); georep retries by itself",
        path.display()
    )))
}

/// The context [`explain_locked`] adds (so that it is added once).
#[derive(Debug)]
struct Locked(String);

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Processes other than this one that hold a write lock (POSIX or flock) on `path`, from /proc/locks
/// (matched on the inode), with their command names.
fn lock_holders(path: &Path) -> Vec<(i32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let ino = m.ino().to_string();
    let me = std::process::id() as i32;
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            // "1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 128 128"
            let w: Vec<&str> = l.split_whitespace().collect();
            // "->" marks a process waiting for the lock, not holding it; readers of a WAL
            // database hold READ locks on its -shm: only a writer blocks.
            if w.get(1) == Some(&"->") || w.get(3) != Some(&"WRITE") {
                return None;
            }
            let pid: i32 = w.get(4)?.parse().ok()?;
            let on = w.get(5)?.rsplit(':').next()?;
            (on == ino && pid != me).then(|| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "?".into());
                (pid, comm)
            })
        })
        .collect()
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn set_up(path: &Path, flags: OpenFlags, sync: Sync, format: &str) -> rusqlite::Result<Connection> {
    let db = Connection::open_with_flags(path, flags)?;
    db.busy_timeout(BUSY_TIMEOUT)?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(
        None,
        "synchronous",
        match sync {
            Sync::Normal => "NORMAL",
            Sync::Full => "FULL",
        },
    )?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    )?;
    db.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?1)",
        [format],
    )?;
    Ok(db)
}

fn check_format(
    db: Connection,
    path: &Path,
    format: &str,
    what: &str,
    upgrades: &[Upgrade],
) -> Result<Connection> {
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
