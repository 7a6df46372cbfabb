//! Directory times on a slave tree that several bricks ship into (a distributed volume).
//!
//! Every brick of a distributed Gluster volume has every directory, each with its own mtime
//! (the entries made in it on that brick); clients see the latest of them. Each brick ships its
//! own, so the slave's directory must get the latest any brick has, not the last one applied.
//! Rows mirror each brick's view: a brick's Mkdir or SetAttr sets its time for the directory,
//! its Delete forgets it (and beneath), its rename moves it. The directory gets the latest of
//! the bricks' times, set while holding SQLite's write lock, so two agents never set them in
//! the wrong order.
//!
//! The rows live in agent.db, written without an fsync per statement (`synchronous=NORMAL`):
//! the agent's syncfs before each ack makes them durable with the batch.

use super::apply::{Applier, ApplyResult};
use super::state::{AgentState, StateDir};
use crate::protocol::{Meta, Op, RelPath};
use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

pub struct DirTimes {
    db: Connection,
    brick: String,
    /// Stash slot → the path stashed (the first half of this brick's rename).
    stashed: HashMap<u64, RelPath>,
}

fn ns(sec: i64, nsec: u32) -> i64 {
    sec.saturating_mul(1_000_000_000)
        .saturating_add(nsec as i64)
}

/// Bounds of the paths strictly beneath `p` in byte order: `p/` up to (not including) `p0`.
fn beneath(p: &RelPath) -> (Vec<u8>, Vec<u8>) {
    let mut lo = p.as_bytes().to_vec();
    lo.push(b'/');
    let mut hi = p.as_bytes().to_vec();
    hi.push(b'/' + 1);
    (lo, hi)
}

impl DirTimes {
    pub fn open(sd: &StateDir, brick: &str) -> Result<DirTimes> {
        let db = AgentState::open_in(sd)?.into_connection();
        db.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(DirTimes {
            db,
            brick: brick.to_string(),
            stashed: HashMap::new(),
        })
    }

    /// Records this brick's time for the directory `path`, then runs `apply` with the latest
    /// time any brick has for it, holding the write lock until it is done.
    pub fn set_latest<T>(
        &mut self,
        path: &RelPath,
        sec: i64,
        nsec: u32,
        apply: impl FnOnce(i64, u32) -> T,
    ) -> Result<T> {
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO dir_times(path, brick, mtime_ns) VALUES (?1, ?2, ?3)
             ON CONFLICT(path, brick) DO UPDATE SET mtime_ns = excluded.mtime_ns",
            params![path.as_bytes(), self.brick, ns(sec, nsec)],
        )?;
        let latest: i64 = tx
            .query_row(
                "SELECT max(mtime_ns) FROM dir_times WHERE path = ?1",
                [path.as_bytes()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(ns(sec, nsec));
        let out = apply(
            latest.div_euclid(1_000_000_000),
            latest.rem_euclid(1_000_000_000) as u32,
        );
        tx.commit()?;
        Ok(out)
    }

    /// This brick no longer has `path` (nor anything beneath it).
    pub fn forget(&mut self, path: &RelPath) -> Result<()> {
        let (lo, hi) = beneath(path);
        self.db.execute(
            "DELETE FROM dir_times WHERE brick = ?1 AND (path = ?2 OR (path >= ?3 AND path < ?4))",
            params![self.brick, path.as_bytes(), lo, hi],
        )?;
        Ok(())
    }

    /// The first half of this brick's rename of `from`.
    pub fn stash(&mut self, slot: u64, from: &RelPath) {
        self.stashed.insert(slot, from.clone());
    }

    /// The second half: this brick's times of the stashed path (and beneath) move to `to`;
    /// what `to` had of this brick's is replaced.
    pub fn unstash(&mut self, slot: u64, to: &RelPath) -> Result<()> {
        let Some(from) = self.stashed.remove(&slot) else {
            return Ok(());
        };
        let (lo, hi) = beneath(&from);
        // Writing from the start: a read that turns into a write after another connection
        // (the durability thread's) wrote would fail at once (SQLITE_BUSY_SNAPSHOT).
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(Vec<u8>, i64)> = {
            let mut st = tx.prepare(
                "SELECT path, mtime_ns FROM dir_times
                 WHERE brick = ?1 AND (path = ?2 OR (path >= ?3 AND path < ?4))",
            )?;
            let r = st
                .query_map(params![self.brick, from.as_bytes(), lo, hi], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            r
        };
        let (tlo, thi) = beneath(to);
        tx.execute(
            "DELETE FROM dir_times WHERE brick = ?1 AND (path = ?2 OR (path >= ?3 AND path < ?4) OR path = ?5 OR (path >= ?6 AND path < ?7))",
            params![self.brick, from.as_bytes(), lo, hi, to.as_bytes(), tlo, thi],
        )?;
        for (p, t) in rows {
            let mut moved = to.as_bytes().to_vec();
            moved.extend_from_slice(&p[from.as_bytes().len()..]);
            tx.execute(
                "INSERT OR REPLACE INTO dir_times(path, brick, mtime_ns) VALUES (?1, ?2, ?3)",
                params![moved, self.brick, t],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Applies `op` from a brick of a shared tree: a directory's time is the latest any brick has
/// for it, and this brick's deletes and renames carry its times along. An `Err` is the agent's
/// state failing; the op's own outcome is the inner result.
pub fn apply(dt: &mut DirTimes, applier: &mut Applier, op: &Op) -> Result<ApplyResult> {
    let with_time = |meta: &Meta, sec, nsec| Meta {
        mtime_sec: sec,
        mtime_nsec: nsec,
        ..meta.clone()
    };
    Ok(match op {
        Op::Mkdir { path, meta } => {
            dt.set_latest(path, meta.mtime_sec, meta.mtime_nsec, |s, n| {
                applier.apply(&Op::Mkdir {
                    path: path.clone(),
                    meta: with_time(meta, s, n),
                })
            })?
        }
        Op::SetAttr { path, meta } if applier.is_dir(path) => {
            dt.set_latest(path, meta.mtime_sec, meta.mtime_nsec, |s, n| {
                applier.apply(&Op::SetAttr {
                    path: path.clone(),
                    meta: with_time(meta, s, n),
                })
            })?
        }
        Op::Delete { path } | Op::Rmdir { path } => {
            let r = applier.apply(op);
            if r.is_ok() {
                dt.forget(path)?;
            }
            r
        }
        Op::Stash { from, slot } => {
            let r = applier.apply(op);
            if r.is_ok() {
                dt.stash(*slot, from);
            }
            r
        }
        Op::Unstash { slot, to } => {
            let from = dt.stashed.get(slot).cloned();
            match applier.unstash_onto_moved(*slot, to, from.as_ref()) {
                Ok(true) => {
                    dt.stashed.remove(slot);
                    return Ok(Ok(()));
                }
                Ok(false) => {}
                Err(e) => return Ok(Err(e)),
            }
            let r = applier.apply(op);
            if r.is_ok() {
                dt.unstash(*slot, to)?;
            }
            r
        }
        _ => applier.apply(op),
    })
}
