//! A slave tree that several bricks ship into (a distributed volume, `Hello.shared_tree`).
//!
//! Every brick of a distributed Gluster volume has every directory, each with its own mtime
//! (the entries made in it on that brick); clients see the latest of them. And a file's name
//! can move from one brick to another (a rename over a name whose data sat on a third brick,
//! a name made again elsewhere) while the old brick's deletion is still on its way. So the
//! agent keeps, in agent.db:
//! - `dir_times`: each brick's time per directory (set by its Mkdir and SetAttr, moved by its
//!   renames, dropped by its deletes); the directory gets the latest of them;
//! - `owners`: which brick wrote each non-directory last (its file, link, symlink, special, or
//!   rename onto the name). A brick's Delete or rename of a name another brick wrote since is
//!   not its to do, and is skipped (that brick ships what happens to it).
//!
//! A Delete, a rename or a directory's time is checked and applied inside an IMMEDIATE
//! transaction on these tables, so two agents' checks and changes of one name never
//! interleave; a new file, link or symlink is recorded as the brick's before it is made. Rows are keyed by replica set where there is one
//! (the brick that takes over carries on), else by brick. Written with `synchronous=NORMAL`:
//! the agent's syncfs before each ack makes them durable with the batch.

use super::apply::{Applier, ApplyResult};
use super::state::{AgentState, StateDir};
use crate::protocol::{Meta, Op, RelPath};
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

pub struct SharedTree {
    db: Connection,
    me: String,
    /// Stash slot → the path stashed (the first half of this brick's rename).
    stashed: HashMap<u64, RelPath>,
}

fn ns(sec: i64, nsec: u32) -> i64 {
    sec.saturating_mul(1_000_000_000)
        .saturating_add(nsec as i64)
}

fn owner(db: &Connection, p: &RelPath) -> Result<Option<String>> {
    Ok(db
        .query_row(
            "SELECT owner FROM owners WHERE path = ?1",
            [p.as_bytes()],
            |r| r.get(0),
        )
        .optional()?)
}

fn own(db: &Connection, p: &RelPath, me: &str) -> Result<()> {
    db.execute(
        "INSERT INTO owners(path, owner) VALUES (?1, ?2)
         ON CONFLICT(path) DO UPDATE SET owner = excluded.owner",
        params![p.as_bytes(), me],
    )?;
    Ok(())
}

/// Drops the owners of `p` and of everything beneath it.
fn disown(db: &Connection, p: &RelPath) -> Result<()> {
    let (lo, hi) = p.beneath_range();
    db.execute(
        "DELETE FROM owners WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
        params![p.as_bytes(), lo, hi],
    )?;
    Ok(())
}

/// A stored path at or beneath `from`, moved to `to` (`RelPath::rebase`).
fn rebased(p: Vec<u8>, from: &RelPath, to: &RelPath) -> RelPath {
    // Stored from a RelPath: it is one.
    RelPath::new(p).map_or_else(|_| to.clone(), |p| p.rebase(from, to))
}

/// Moves the owners at and beneath `from` to `to` (a directory's move takes every brick's
/// files along), replacing what `to` had.
fn move_owners(db: &Connection, from: &RelPath, to: &RelPath) -> Result<()> {
    let (lo, hi) = from.beneath_range();
    let rows: Vec<(Vec<u8>, String)> = db
        .prepare("SELECT path, owner FROM owners WHERE path = ?1 OR (path >= ?2 AND path < ?3)")?
        .query_map(params![from.as_bytes(), lo, hi], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    disown(db, from)?;
    disown(db, to)?;
    for (p, o) in rows {
        db.execute(
            "INSERT OR REPLACE INTO owners(path, owner) VALUES (?1, ?2)",
            params![rebased(p, from, to).as_bytes(), o],
        )?;
    }
    Ok(())
}

/// Moves `me`'s directory times at and beneath `from` to `to`, replacing `me`'s there.
fn move_times(db: &Connection, me: &str, from: &RelPath, to: &RelPath) -> Result<()> {
    let (lo, hi) = from.beneath_range();
    let rows: Vec<(Vec<u8>, i64)> = db
        .prepare(
            "SELECT path, mtime_ns FROM dir_times
             WHERE brick = ?1 AND (path = ?2 OR (path >= ?3 AND path < ?4))",
        )?
        .query_map(params![me, from.as_bytes(), lo, hi], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    forget_times(db, me, from)?;
    forget_times(db, me, to)?;
    for (p, t) in rows {
        db.execute(
            "INSERT OR REPLACE INTO dir_times(path, brick, mtime_ns) VALUES (?1, ?2, ?3)",
            params![rebased(p, from, to).as_bytes(), me, t],
        )?;
    }
    Ok(())
}

impl SharedTree {
    /// `me`: the replica set, or the brick where there is none.
    pub fn open(sd: &StateDir, me: &str) -> Result<SharedTree> {
        let db = AgentState::open_in(sd)?.into_connection();
        db.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(SharedTree {
            db,
            me: me.to_string(),
            stashed: HashMap::new(),
        })
    }

    /// Applies `op` from this brick (see the module's doc). An `Err` is the agent's state
    /// failing; the op's own outcome is the inner result.
    ///
    /// A new name is recorded as this brick's before it is made, in a short transaction of its
    /// own: another brick's Delete checking it then leaves it alone, and the agents of two
    /// bricks make their files at once rather than one after the other under the lock.
    pub fn apply(&mut self, applier: &mut Applier, op: &Op) -> Result<ApplyResult> {
        if let Op::Symlink { path, .. } | Op::Special { path, .. } | Op::Link { path, .. } = op {
            own(&self.db, path, &self.me)?;
            return Ok(applier.apply(op));
        }
        if let Op::SetAttr { path, .. } = op {
            if !applier.is_dir(path) {
                return Ok(applier.apply(op));
            }
        }
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let me = self.me.as_str();
        let others = |p: &RelPath| -> Result<bool> { Ok(owner(&tx, p)?.is_some_and(|o| o != me)) };
        let r = match op {
            Op::Mkdir { path, meta } => {
                let t = latest_time(&tx, me, path, meta)?;
                let r = applier.apply(&Op::Mkdir {
                    path: path.clone(),
                    meta: t,
                });
                if r.is_ok() {
                    disown(&tx, path)?;
                }
                r
            }
            Op::SetAttr { path, meta } => {
                let t = latest_time(&tx, me, path, meta)?;
                applier.apply(&Op::SetAttr {
                    path: path.clone(),
                    meta: t,
                })
            }
            Op::Delete { path } if others(path)? => {
                tracing::debug!(%path, "written by another brick since: not deleted");
                Ok(())
            }
            Op::Delete { path } | Op::Rmdir { path } => {
                let r = applier.apply(op);
                if r.is_ok() {
                    forget_times(&tx, me, path)?;
                    if matches!(op, Op::Delete { .. }) {
                        disown(&tx, path)?;
                    }
                }
                r
            }
            Op::Stash { from, .. } if others(from)? => {
                tracing::debug!(%from, "written by another brick since: not renamed from here");
                Ok(())
            }
            Op::Stash { from, slot } => {
                let r = applier.apply(op);
                if r.is_ok() {
                    self.stashed.insert(*slot, from.clone());
                }
                r
            }
            Op::Unstash { slot, to } => {
                let from = self.stashed.remove(slot);
                match applier.unstash_onto_moved(*slot, to, from.as_ref()) {
                    Ok(true) => Ok(()),
                    Err(e) => Err(e),
                    Ok(false) => {
                        let r = applier.apply(op);
                        if r.is_ok() {
                            if let Some(from) = &from {
                                move_owners(&tx, from, to)?;
                                move_times(&tx, me, from, to)?;
                            }
                            if !applier.is_dir(to) {
                                own(&tx, to, me)?;
                            }
                        }
                        r
                    }
                }
            }
            _ => applier.apply(op),
        };
        tx.commit()?;
        Ok(r)
    }

    /// Ends a file (`Applier::end_file`), recording this brick as its writer first (see
    /// `apply`).
    pub fn end_file(
        &mut self,
        applier: &mut Applier,
        path: Option<RelPath>,
        hash: &[u8; 32],
        commit: bool,
    ) -> Result<super::apply::ContentResult<bool>> {
        if let (true, Some(p)) = (commit, &path) {
            own(&self.db, p, &self.me)?;
        }
        Ok(applier.end_file(hash, commit))
    }
}

/// Records `me`'s time for the directory `path` and returns `meta` with the latest time any
/// brick has for it.
fn latest_time(db: &Connection, me: &str, path: &RelPath, meta: &Meta) -> Result<Meta> {
    db.execute(
        "INSERT INTO dir_times(path, brick, mtime_ns) VALUES (?1, ?2, ?3)
         ON CONFLICT(path, brick) DO UPDATE SET mtime_ns = excluded.mtime_ns",
        params![path.as_bytes(), me, ns(meta.mtime_sec, meta.mtime_nsec)],
    )?;
    let latest: i64 = db
        .query_row(
            "SELECT max(mtime_ns) FROM dir_times WHERE path = ?1",
            [path.as_bytes()],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(ns(meta.mtime_sec, meta.mtime_nsec));
    Ok(Meta {
        mtime_sec: latest.div_euclid(1_000_000_000),
        mtime_nsec: latest.rem_euclid(1_000_000_000) as u32,
        ..meta.clone()
    })
}

/// `me` no longer has `path` (nor anything beneath it).
fn forget_times(db: &Connection, me: &str, path: &RelPath) -> Result<()> {
    let (lo, hi) = path.beneath_range();
    db.execute(
        "DELETE FROM dir_times WHERE brick = ?1 AND (path = ?2 OR (path >= ?3 AND path < ?4))",
        params![me, path.as_bytes(), lo, hi],
    )?;
    Ok(())
}
