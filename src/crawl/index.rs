//! The index: the master's record, per brick, of what the slave holds (SQLite on disk).
//!
//! Rows are keyed `(dir, name)` in a WITHOUT ROWID table, so a directory's children are one
//! range scan and a subtree is two. The root is the row `("", "")`.
//!
//! Invariant: a row changes only when the slave acknowledged the op that produced it; a failed
//! op *poisons* its rows (inode 0, size -1) so the next crawl resends or re-deletes them.

use super::entry::{Entry, Kind};
use crate::protocol::RelPath;
use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;

/// 2: entries carry the birth time (`birth`); a format 1 index gains the column (0: unknown).
const FORMAT_VERSION: &str = "2";

/// Where the index keeps the rows of an entry the slave has moved aside into stash `slot`
/// (between a `Stash` and its `Unstash`). Never a real path: `.georep` is not crawled.
pub fn stash_path(slot: u64) -> RelPath {
    RelPath::internal(format!(".georep/stash/{slot}")).expect("valid stash path")
}

/// An index change, applied when the op carrying it is acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    Upsert(RelPath, Entry),
    /// Removes the path and everything beneath it.
    Remove(RelPath),
    /// Moves the path and its subtree, replacing what was at the destination.
    Move(RelPath, RelPath),
    /// Marks the path and its subtree as unknown on the slave.
    Poison(RelPath),
    /// The slave's attributes of this directory (whose entries an op changed) no longer match
    /// its row: its next comparison sets them again. The rest is kept; other kinds are left.
    Stale(RelPath),
}

/// The nanoseconds of a stale row's mtime (see `Mutation::Stale`): out of range for a clock.
const STALE_NSEC: u32 = 1_000_000_000;

pub struct Index {
    db: Connection,
}

/// An unresolved failure kept in the index until the path goes through.
#[derive(Debug, Clone)]
pub struct FailureRow {
    pub path: RelPath,
    pub side: String,
    pub errno: i32,
    pub message: String,
    pub attempts: u32,
}

fn key(p: &RelPath) -> (&[u8], &[u8]) {
    p.split().unwrap_or((&[], &[]))
}

const COLS: &str = "kind, ino, size, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, mode, uid, gid, nlink, rdev, target, hash, birth";

fn entry_from(r: &Row<'_>, off: usize) -> rusqlite::Result<Entry> {
    Ok(Entry {
        kind: Kind::from_u8(r.get::<_, i64>(off)? as u8),
        ino: r.get::<_, i64>(off + 1)? as u64,
        size: r.get::<_, i64>(off + 2)? as u64,
        mtime_sec: r.get(off + 3)?,
        mtime_nsec: r.get(off + 4)?,
        ctime_sec: r.get(off + 5)?,
        ctime_nsec: r.get(off + 6)?,
        mode: r.get(off + 7)?,
        uid: r.get(off + 8)?,
        gid: r.get(off + 9)?,
        nlink: r.get(off + 10)?,
        rdev: r.get::<_, i64>(off + 11)? as u64,
        target: r.get(off + 12)?,
        hash: r
            .get::<_, Option<Vec<u8>>>(off + 13)?
            .and_then(|h| <[u8; 32]>::try_from(h).ok()),
        birth: r.get(off + 14)?,
    })
}

impl Index {
    pub fn open(path: &Path) -> Result<Index> {
        // The index trails the slave: losing the last commits only makes the next crawl resend.
        let db = crate::db::open(
            path,
            crate::db::Sync::Normal,
            FORMAT_VERSION,
            "index",
            &[crate::db::Upgrade {
                from: "1",
                to: "2",
                // Rows of a format 1 index have no birth time (0: unknown), so they are never
                // taken for a rename source until a crawl refreshes them.
                sql: "ALTER TABLE entries ADD COLUMN birth INTEGER NOT NULL DEFAULT 0;",
            }],
        )?;
        db.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS entries(dir BLOB NOT NULL, name BLOB NOT NULL, {COLS},
                PRIMARY KEY(dir, name)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS entry_inodes ON entries(ino);
             CREATE TABLE IF NOT EXISTS failures(path BLOB PRIMARY KEY, side TEXT NOT NULL,
                errno INTEGER NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL,
                first_ns INTEGER NOT NULL, next_retry_ns INTEGER NOT NULL);"
        ))?;
        Ok(Index { db })
    }

    pub fn get_meta(&self, k: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
            .optional()?)
    }

    pub fn set_meta(&self, k: &str, v: &str) -> Result<()> {
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = ?2",
            params![k, v],
        )?;
        Ok(())
    }

    /// A numeric metadata value (`None`: never set); a value that is not a number names the
    /// key and the fix.
    fn meta_num<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>> {
        match self.get_meta(k)? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                anyhow::anyhow!(
                    "the index's {k} is {v:?}, not a number: the index is damaged; `georep sync <master> <slave> --rescan-slave` makes it again from the slave"
                )
            }),
        }
    }

    /// The brick's failover epoch (0 before any failback).
    pub fn epoch(&self) -> Result<u64> {
        Ok(self.meta_num("epoch")?.unwrap_or(0))
    }

    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        self.set_meta("epoch", &epoch.to_string())
    }

    /// The last batch the slave acknowledged (`None`: nothing was ever shipped).
    pub fn last_batch(&self) -> Result<Option<u64>> {
        self.meta_num("last_batch")
    }

    /// The identity of the slave volume this index describes (`None`: never connected).
    pub fn slave_volume_id(&self) -> Result<Option<String>> {
        self.get_meta("slave_volume_id")
    }

    /// The previous Active brick of a takeover not finished yet.
    pub fn takeover_from(&self) -> Result<Option<String>> {
        Ok(self.get_meta("takeover_from")?.filter(|p| !p.is_empty()))
    }

    /// Sets (or, with `None`, clears) the takeover in progress.
    pub fn set_takeover_from(&self, previous: Option<&str>) -> Result<()> {
        self.set_meta("takeover_from", previous.unwrap_or(""))
    }

    /// The last DR-side journal record a reverse pass consumed.
    pub fn dr_journal_seq(&self) -> Result<u64> {
        Ok(self.meta_num("dr_journal_seq")?.unwrap_or(0))
    }

    /// Drops rows left in the stash by a connection that ended between a `Stash` and its
    /// `Unstash`: the agent empties its stash when the next connection starts.
    pub fn clear_stash(&self) -> Result<()> {
        self.remove(&RelPath::internal(".georep/stash").expect("valid path"))
    }

    /// Whether the index holds no entry at all (nothing is known to be on the slave).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self
            .db
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM entries)", [], |r| {
                r.get(0)
            })?)
    }

    /// Forgets everything: the next crawl ships the whole brick.
    pub fn clear(&self) -> Result<()> {
        self.db.execute("DELETE FROM entries", [])?;
        Ok(())
    }

    pub fn get(&self, p: &RelPath) -> Result<Option<Entry>> {
        let (d, n) = key(p);
        let mut st = self.db.prepare_cached(&format!(
            "SELECT {COLS} FROM entries WHERE dir = ?1 AND name = ?2"
        ))?;
        Ok(st
            .query_row(params![d, n], |r| entry_from(r, 0))
            .optional()?)
    }

    /// Whether any indexed entry has inode `ino`.
    pub fn has_ino(&self, ino: u64) -> Result<bool> {
        let mut st = self
            .db
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM entries WHERE ino = ?1)")?;
        Ok(st.query_row([ino as i64], |r| r.get(0))?)
    }

    /// Paths of indexed directories with inode `ino`.
    pub fn dirs_with_ino(&self, ino: u64) -> Result<Vec<RelPath>> {
        self.with_ino(ino, Kind::Dir)
    }

    /// Paths of indexed regular files with inode `ino` (hard links).
    pub fn files_with_ino(&self, ino: u64) -> Result<Vec<RelPath>> {
        self.with_ino(ino, Kind::File)
    }

    fn with_ino(&self, ino: u64, kind: Kind) -> Result<Vec<RelPath>> {
        let mut st = self
            .db
            .prepare_cached("SELECT dir, name FROM entries WHERE ino = ?1 AND kind = ?2")?;
        let rows = st.query_map(params![ino as i64, kind as u8 as i64], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut d, n) = row?;
            if !d.is_empty() {
                d.push(b'/');
            }
            d.extend_from_slice(&n);
            out.push(RelPath::internal(d).context("index holds an invalid path")?);
        }
        Ok(out)
    }

    /// Direct children of `dir` as (name, entry).
    pub fn children(&self, dir: &RelPath) -> Result<Vec<(Vec<u8>, Entry)>> {
        let mut st = self.db.prepare_cached(&format!(
            "SELECT name, {COLS} FROM entries WHERE dir = ?1 AND name <> x''"
        ))?;
        let rows = st.query_map(params![dir.as_bytes()], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, entry_from(r, 1)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every row strictly beneath `p`.
    pub fn subtree(&self, p: &RelPath) -> Result<Vec<(RelPath, Entry)>> {
        let mut out = Vec::new();
        let (lo, hi) = p.beneath_range();
        let mut st = self.db.prepare_cached(&format!(
            "SELECT dir, name, {COLS} FROM entries
             WHERE name <> x'' AND (dir = ?1 OR (dir >= ?2 AND dir < ?3))"
        ))?;
        let all = p.is_root();
        let mut rows = if all {
            st.query(params![&b""[..], &b""[..], &[0xffu8; 1][..]])?
        } else {
            st.query(params![p.as_bytes(), lo, hi])?
        };
        while let Some(r) = rows.next()? {
            let d: Vec<u8> = r.get(0)?;
            let n: Vec<u8> = r.get(1)?;
            let mut full = d;
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&n);
            let path = RelPath::internal(full).context("index holds an invalid path")?;
            out.push((path, entry_from(r, 2)?));
        }
        Ok(out)
    }

    fn upsert(&self, p: &RelPath, e: &Entry) -> Result<()> {
        let (d, n) = key(p);
        let mut st = self.db.prepare_cached(&format!(
            "INSERT OR REPLACE INTO entries(dir, name, {COLS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))?;
        st.execute(params![
            d,
            n,
            e.kind as u8 as i64,
            e.ino as i64,
            e.size as i64,
            e.mtime_sec,
            e.mtime_nsec,
            e.ctime_sec,
            e.ctime_nsec,
            e.mode,
            e.uid,
            e.gid,
            e.nlink,
            e.rdev as i64,
            e.target,
            e.hash.as_ref().map(|h| &h[..]),
            e.birth
        ])?;
        Ok(())
    }

    fn remove(&self, p: &RelPath) -> Result<()> {
        if p.is_root() {
            return self.clear();
        }
        let (d, n) = key(p);
        self.db
            .prepare_cached("DELETE FROM entries WHERE dir = ?1 AND name = ?2")?
            .execute(params![d, n])?;
        let (lo, hi) = p.beneath_range();
        self.db
            .prepare_cached("DELETE FROM entries WHERE dir = ?1 OR (dir >= ?2 AND dir < ?3)")?
            .execute(params![p.as_bytes(), lo, hi])?;
        Ok(())
    }

    fn poison(&self, p: &RelPath) -> Result<()> {
        let mut rows = self.subtree(p)?;
        match self.get(p)? {
            Some(e) => rows.push((p.clone(), e)),
            None => rows.push((
                p.clone(),
                Entry {
                    kind: Kind::Unknown,
                    ino: 0,
                    size: 0,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                    ctime_sec: 0,
                    ctime_nsec: 0,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    nlink: 0,
                    rdev: 0,
                    birth: 0,
                    target: None,
                    hash: None,
                },
            )),
        }
        for (path, mut e) in rows {
            e.ino = 0;
            e.birth = 0;
            e.size = u64::MAX;
            e.mtime_sec = i64::MIN;
            self.upsert(&path, &e)?;
        }
        Ok(())
    }

    fn stale(&self, p: &RelPath) -> Result<()> {
        if let Some(mut e) = self.get(p)?.filter(|e| e.kind == Kind::Dir) {
            // No clock gives this: any stat differs from it.
            e.mtime_nsec = STALE_NSEC;
            self.upsert(p, &e)?;
        }
        Ok(())
    }

    fn mv(&self, from: &RelPath, to: &RelPath) -> Result<()> {
        let mut rows = self.subtree(from)?;
        if let Some(e) = self.get(from)? {
            rows.push((from.clone(), e));
        }
        self.remove(from)?;
        self.remove(to)?;
        for (p, e) in rows {
            self.upsert(&p.rebase(from, to), &e)?;
        }
        self.move_failures(from, to)
    }

    /// Unresolved failures at or beneath `from` move with their rows to beneath `to`: a path
    /// whose send failed (changed while read, say) and whose directory was renamed since is
    /// retried where it is now, not at a name that no longer holds it.
    fn move_failures(&self, from: &RelPath, to: &RelPath) -> Result<()> {
        let (lo, hi) = from.beneath_range();
        let mut st = self.db.prepare_cached(
            "SELECT path FROM failures WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
        )?;
        let paths: Vec<Vec<u8>> = st
            .query_map(params![from.as_bytes(), lo, hi], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for p in paths {
            let old = RelPath::internal(p).context("failures table holds an invalid path")?;
            let new = old.rebase(from, to);
            self.db.execute(
                "UPDATE OR REPLACE failures SET path = ?2 WHERE path = ?1",
                params![old.as_bytes(), new.as_bytes()],
            )?;
        }
        Ok(())
    }

    /// Applies mutations in order, in one transaction.
    pub fn apply(&self, muts: &[Mutation]) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        for m in muts {
            self.mutate(m)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn mutate(&self, m: &Mutation) -> Result<()> {
        match m {
            Mutation::Upsert(p, e) => self.upsert(p, e),
            Mutation::Remove(p) => self.remove(p),
            Mutation::Move(f, t) => self.mv(f, t),
            Mutation::Poison(p) => self.poison(p),
            Mutation::Stale(p) => self.stale(p),
        }
    }

    /// Replaces every entry with what `fill` puts, in pieces, in one transaction: a failure
    /// part way leaves the index as it was. (No other index write may happen meanwhile.)
    pub fn rebuild(
        &self,
        fill: impl FnOnce(&mut dyn FnMut(&[Mutation]) -> Result<()>) -> Result<()>,
    ) -> Result<()> {
        let tx = self.db.unchecked_transaction()?;
        self.db.execute("DELETE FROM entries", [])?;
        fill(&mut |muts| muts.iter().try_for_each(|m| self.mutate(m)))?;
        tx.commit()?;
        Ok(())
    }

    /// Records (or updates) an unresolved failure; retries back off exponentially to 5 minutes.
    pub fn record_failure(
        &self,
        path: &RelPath,
        side: &str,
        errno: i32,
        message: &str,
        now_ns: i64,
    ) -> Result<()> {
        let attempts: i64 = self
            .db
            .query_row(
                "SELECT attempts FROM failures WHERE path = ?1",
                [path.as_bytes()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let delay_ms = (500i64 << attempts.min(10)).min(300_000);
        self.db.execute(
            "INSERT INTO failures(path, side, errno, message, attempts, first_ns, next_retry_ns)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)
             ON CONFLICT(path) DO UPDATE SET side = ?2, errno = ?3, message = ?4,
                attempts = attempts + 1, next_retry_ns = ?6",
            params![
                path.as_bytes(),
                side,
                errno,
                message,
                now_ns,
                now_ns + delay_ms * 1_000_000
            ],
        )?;
        Ok(())
    }

    pub fn clear_failure(&self, path: &RelPath) -> Result<()> {
        self.db
            .execute("DELETE FROM failures WHERE path = ?1", [path.as_bytes()])?;
        Ok(())
    }

    /// Failed paths whose retry time has come.
    pub fn due_failures(&self, now_ns: i64) -> Result<Vec<RelPath>> {
        let mut st = self
            .db
            .prepare_cached("SELECT path FROM failures WHERE next_retry_ns <= ?1")?;
        let rows = st.query_map([now_ns], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(RelPath::new(r?).context("failures table holds an invalid path")?);
        }
        Ok(out)
    }

    /// All unresolved failures, by path.
    pub fn failures(&self) -> Result<Vec<FailureRow>> {
        let mut st = self.db.prepare_cached(
            "SELECT path, side, errno, message, attempts FROM failures ORDER BY path",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i32>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, u32>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (p, side, errno, message, attempts) = r?;
            out.push(FailureRow {
                path: RelPath::new(p).context("failures table holds an invalid path")?,
                side,
                errno,
                message,
                attempts,
            });
        }
        Ok(out)
    }

    /// An unresolved failure of the slave side with one of `errnos` (the first by path).
    pub fn slave_failure_with(&self, errnos: &[i32]) -> Result<Option<FailureRow>> {
        Ok(self
            .failures()?
            .into_iter()
            .find(|f| f.side == "slave" && errnos.contains(&f.errno)))
    }

    pub fn failure_count(&self) -> Result<u64> {
        Ok(self
            .db
            .query_row("SELECT COUNT(*) FROM failures", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_index_is_upgraded_and_its_rows_have_no_birth_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.db");
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO meta VALUES ('format', '1');
                 CREATE TABLE entries(dir BLOB NOT NULL, name BLOB NOT NULL, kind, ino, size,
                    mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, mode, uid, gid, nlink, rdev,
                    target, hash, PRIMARY KEY(dir, name)) WITHOUT ROWID;
                 INSERT INTO entries VALUES (x'', x'66', 1, 42, 3, 1, 0, 1, 0, 420, 0, 0, 1, 0,
                    NULL, NULL);",
            )
            .unwrap();
        }
        let index = Index::open(&path).unwrap();
        let e = index
            .get(&RelPath::new(b"f".to_vec()).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((e.ino, e.size, e.birth), (42, 3, 0));
        drop(index);
        // Opening it again finds format 2 and changes nothing.
        let index = Index::open(&path).unwrap();
        assert_eq!(index.get_meta("format").unwrap().as_deref(), Some("2"));
    }

    #[test]
    fn a_failure_moves_with_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let p = |s: &str| RelPath::new(s.as_bytes().to_vec()).unwrap();
        index
            .record_failure(&p("a/b"), "master", 0, "changed while read", 1)
            .unwrap();
        index
            .record_failure(&p("ab"), "master", 0, "not beneath a", 1)
            .unwrap();
        index.apply(&[Mutation::Move(p("a"), p("x/c"))]).unwrap();
        let paths: Vec<String> = index
            .failures()
            .unwrap()
            .iter()
            .map(|f| f.path.display())
            .collect();
        assert_eq!(paths, vec!["ab", "x/c/b"]);
    }
}
