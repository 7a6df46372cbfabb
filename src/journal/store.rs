//! journal.db: the append-only, ordered change log of one brick (SQLite, WAL).
//!
//! Invariant: `seq` is strictly increasing in append order; records are only ever removed from
//! the front (trim), never rewritten. The record at the position a reader has reached is kept
//! (trim stops short of it), and the file has a random identity made when it is created: a
//! reader that remembers both can tell a journal that went back (a lost WAL tail, an older copy)
//! or was replaced, instead of skipping what it renumbered.

use super::record::{RecOp, Record};
use crate::protocol::RelPath;
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

const FORMAT_VERSION: &str = "1";

pub struct JournalStore {
    db: Connection,
    id: String,
    /// The file's (device, inode) when opened: a journal.db replaced since is another file.
    file: Option<(u64, u64)>,
    path: std::path::PathBuf,
}

/// Whether an error opening a journal says the file is not a database or is corrupt.
fn is_broken(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<rusqlite::Error>())
        .any(|r| {
            matches!(
                r.sqlite_error_code(),
                Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
            )
        })
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl JournalStore {
    /// Opens `path` only if it exists: a reader must not create the journal a writer is about
    /// to create (two processes making one SQLite file at one path can share a WAL between two
    /// files). `None` when it is not there (yet).
    pub fn open_existing(path: &Path) -> Result<Option<JournalStore>> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open(path).map(Some)
    }

    /// The writer's open: a file that is not an SQLite database, or a corrupt one, is moved
    /// aside (`journal.db.broken-<time>`) and a new journal starts. It has a new identity, so
    /// the worker crawls the brick instead of trusting the records it lost.
    pub fn open_or_replace(path: &Path) -> Result<JournalStore> {
        match Self::open(path) {
            Err(e) if is_broken(&e) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let mut aside = path.as_os_str().to_owned();
                aside.push(format!(".broken-{now}"));
                std::fs::rename(path, &aside).with_context(|| {
                    format!("moving the broken journal {} aside", path.display())
                })?;
                for suffix in ["-wal", "-shm"] {
                    let mut p = path.as_os_str().to_owned();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
                tracing::warn!(
                    "journal {} is broken ({e:#}): moved aside to {}; a new journal starts, and the worker crawls the brick to find what the lost records said",
                    path.display(),
                    Path::new(&aside).display()
                );
                Self::open(path)
            }
            r => r,
        }
    }

    pub fn open(path: &Path) -> Result<JournalStore> {
        Self::open_inner(path).map_err(|e| crate::db::explain_locked(e, path, "journal"))
    }

    fn open_inner(path: &Path) -> Result<JournalStore> {
        // A lost tail implies the writer restarted, which records a gap: NORMAL is enough.
        let db = crate::db::open(
            path,
            crate::db::Sync::Normal,
            FORMAT_VERSION,
            "journal",
            &[],
        )?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS records(seq INTEGER PRIMARY KEY AUTOINCREMENT,
                ts_ns INTEGER NOT NULL, op INTEGER NOT NULL, path BLOB NOT NULL,
                path2 BLOB, note TEXT);",
        )?;
        let mut b = [0u8; 16];
        rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
            .context("reading random bytes for the journal's identity")?;
        let fresh: String = b.iter().map(|x| format!("{x:02x}")).collect();
        db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('journal_id', ?1)",
            [&fresh],
        )?;
        let id = db.query_row("SELECT value FROM meta WHERE key = 'journal_id'", [], |r| {
            r.get(0)
        })?;
        Ok(JournalStore {
            db,
            id,
            file: file_id(path),
            path: path.to_path_buf(),
        })
    }

    /// This journal's identity, made when the file was created.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the path now names another file than the one opened (deleted or replaced).
    pub fn replaced(&self) -> bool {
        file_id(&self.path) != self.file
    }

    /// The time of record `seq`, if the journal holds it.
    pub fn ts_at(&self, seq: u64) -> Result<Option<i64>> {
        Ok(self
            .db
            .query_row(
                "SELECT ts_ns FROM records WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Appends `recs` in one transaction; returns the last seq assigned.
    pub fn append(&self, recs: &[Record]) -> Result<u64> {
        self.append_inner(recs)
            .map_err(|e| crate::db::explain_locked(e, &self.path, "journal"))
    }

    fn append_inner(&self, recs: &[Record]) -> Result<u64> {
        let tx = self.db.unchecked_transaction()?;
        let mut last = 0;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO records(ts_ns, op, path, path2, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for r in recs {
                st.execute(params![
                    r.ts_ns,
                    r.op as u8 as i64,
                    r.path.as_bytes(),
                    r.path2.as_ref().map(|p| p.as_bytes()),
                    r.note
                ])?;
                last = tx.last_insert_rowid() as u64;
            }
        }
        tx.commit()?;
        Ok(last)
    }

    /// Up to `limit` records with `seq > after`, in order.
    pub fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Record>> {
        let mut st = self.db.prepare_cached(
            "SELECT seq, ts_ns, op, path, path2, note FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = st.query_map(params![after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, ts_ns, op, path, path2, note) = row?;
            let op = RecOp::from_u8(op as u8)
                .with_context(|| format!("journal record {seq} has unknown op {op}"))?;
            out.push(Record {
                seq: seq as u64,
                ts_ns,
                op,
                path: RelPath::new(path).context("journal holds an invalid path")?,
                path2: path2
                    .map(RelPath::new)
                    .transpose()
                    .context("journal holds an invalid path")?,
                note,
            });
        }
        Ok(out)
    }

    /// Highest seq appended so far (0 when empty).
    pub fn last_seq(&self) -> Result<u64> {
        Ok(self
            .db
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM records", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// The newest GAP with `seq > after`, if any.
    pub fn last_gap_after(&self, after: u64) -> Result<Option<Record>> {
        let seq: Option<i64> = self
            .db
            .query_row(
                "SELECT MAX(seq) FROM records WHERE seq > ?1 AND op = ?2",
                params![after as i64, RecOp::Gap as u8 as i64],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        match seq {
            None => Ok(None),
            Some(s) => Ok(self.read_after(s as u64 - 1, 1)?.pop()),
        }
    }

    /// Number of records after `seq` (the backlog).
    pub fn count_after(&self, after: u64) -> Result<u64> {
        Ok(self.db.query_row(
            "SELECT COUNT(*) FROM records WHERE seq > ?1",
            [after as i64],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Removes records before `seq` (they are on the slave); record `seq` itself stays, as the
    /// anchor a reader checks its position against (`ts_at`).
    pub fn trim(&self, upto: u64) -> Result<()> {
        self.db
            .execute("DELETE FROM records WHERE seq < ?1", [upto as i64])?;
        Ok(())
    }
}
