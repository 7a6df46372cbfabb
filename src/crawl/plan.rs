//! The plan: its types, the builder that collects a diff's ops, and their order.

use super::index::{self, Mutation};
use super::APPEND_MIN;
use crate::entry::{Change, Entry, Kind};
use crate::protocol::{Op, RelPath};
use serde::Serialize;
use std::collections::HashSet;

/// What the shipper does for one planned step.
#[derive(Debug, Clone)]
pub enum PlanOp {
    Op(Op),
    /// Ship the file's content, read at ship time. With `known_hash` (same size, the slave's
    /// content hash known), the shipper first hashes the file locally and sends only its
    /// attributes when the content is the same (a `touch`, a `cp -p` of identical data), and
    /// nothing when those are `slave_meta` already (a racily clean row checked again).
    File {
        path: RelPath,
        entry: Entry,
        known_hash: Option<[u8; 32]>,
        slave_meta: Option<crate::protocol::Meta>,
        /// The file grew past the slave's copy, `grew_from` bytes whose hash is `known_hash`:
        /// when its first bytes still hash so, only the rest is sent (`FileAppend`).
        grew_from: Option<u64>,
    },
    /// Nothing goes to the slave; only the index changes once the batch is acknowledged.
    IndexOnly,
}

#[derive(Debug, Clone)]
pub struct PlannedOp {
    pub op: PlanOp,
    /// Index mutations applied when the slave acknowledges the op.
    pub ok: Vec<Mutation>,
    /// Index mutations applied instead when the slave reports the op failed.
    pub fail: Vec<Mutation>,
}

impl PlannedOp {
    pub(super) fn new(op: Op, ok: Vec<Mutation>, fail: Vec<Mutation>) -> Self {
        PlannedOp {
            op: PlanOp::Op(op),
            ok,
            fail,
        }
    }

    pub fn bytes(&self) -> u64 {
        match &self.op {
            PlanOp::File { entry, .. } => entry.size,
            _ => 0,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PlanStats {
    pub scanned: u64,
    pub new: u64,
    pub changed: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<PlannedOp>,
    pub stats: PlanStats,
    /// Journal mode could not see everything this plan depends on (another name of a changed
    /// hard-linked file moved without a record naming it, or a name a crawl shipped from a
    /// directory not watched yet went without a record): run a crawl after it.
    pub needs_crawl: bool,
    /// Journal mode: a path the window created or changed is gone from the disk and no record
    /// of the window removed it: a rename not journaled yet took it (and its content) away.
    /// The window is planned again together with the records that follow.
    pub incomplete: bool,
    /// Ops of this plan already handed out while the crawl ran (`crawl`'s `emit`): they count
    /// in `stats` but are not in `ops`.
    pub streamed: u64,
    /// Directories that could not be read on the master (path, message).
    pub errors: Vec<(RelPath, String)>,
}

impl Plan {
    /// Nothing to do, streamed or not.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.streamed == 0
    }
}

/// A crawl stopped by its caller before it finished.
#[derive(Debug, thiserror::Error)]
#[error("crawl cancelled")]
pub struct Cancelled;

#[derive(Default)]
pub(super) struct Builder {
    pub(super) stashes: Vec<(RelPath, u64)>,
    /// (path, order within a path, op)
    pub(super) creates: Vec<(RelPath, u8, PlannedOp)>,
    pub(super) links: Vec<(RelPath, PlannedOp)>,
    pub(super) deletes: Vec<(RelPath, PlannedOp)>,
    pub(super) dir_attrs: Vec<(RelPath, PlannedOp)>,
    /// Paths that an op of this plan creates (a delete at the same path would undo it).
    pub(super) created: HashSet<RelPath>,
    /// Created paths whose op also removes whatever tree was there (a rename onto it, a
    /// non-directory): deletes beneath them are moot. `Mkdir` over a directory keeps its
    /// contents, so stale children there are deleted one by one.
    pub(super) replacing: HashSet<RelPath>,
    /// Multiply-linked files whose content this plan sends (a new inode on the slave): every
    /// other name of theirs must be linked to it, even one that is otherwise unchanged.
    pub(super) sent: HashSet<u64>,
    pub(super) stats: PlanStats,
}

impl Builder {
    pub(super) fn upsert(p: &RelPath, e: &Entry) -> Vec<Mutation> {
        vec![Mutation::Upsert(p.clone(), e.clone())]
    }

    pub(super) fn poison(p: &RelPath) -> Vec<Mutation> {
        vec![Mutation::Poison(p.clone())]
    }

    /// Marks a directory's row stale until an op later in the plan sets its attributes.
    pub(super) fn stale(p: &RelPath) -> PlannedOp {
        PlannedOp {
            op: PlanOp::IndexOnly,
            ok: vec![Mutation::Stale(p.clone())],
            fail: vec![],
        }
    }

    /// A new directory, with its attributes set again at the end.
    pub(super) fn mkdir(&mut self, path: &RelPath, e: &Entry) {
        let op = Op::Mkdir {
            path: path.clone(),
            meta: e.meta(),
        };
        self.creates.push((
            path.clone(),
            0,
            PlannedOp::new(op, vec![], Self::poison(path)),
        ));
        self.set_attr(path, e);
    }

    pub(super) fn set_attr(&mut self, path: &RelPath, e: &Entry) {
        let op = PlannedOp::new(
            Op::SetAttr {
                path: path.clone(),
                meta: e.meta(),
            },
            Self::upsert(path, e),
            Self::poison(path),
        );
        if e.kind == Kind::Dir {
            self.dir_attrs.push((path.clone(), op));
        } else {
            self.creates.push((path.clone(), 2, op));
        }
    }

    /// The op that (re)creates a non-directory entry with its content. `old` is what the slave
    /// holds at `path` when it is the same kind of entry.
    pub(super) fn content(
        &mut self,
        path: &RelPath,
        e: &Entry,
        old: Option<&Entry>,
        leader: Option<&RelPath>,
    ) {
        let ok = Self::upsert(path, e);
        let fail = Self::poison(path);
        let op = match e.kind {
            Kind::File => {
                if let Some(target) = leader.filter(|l| *l != path) {
                    let op = Op::Link {
                        path: path.clone(),
                        target: target.clone(),
                    };
                    self.links
                        .push((path.clone(), PlannedOp::new(op, vec![], fail.clone())));
                    // A link carries no attributes: set the shared inode's, which the index
                    // then records for this name.
                    let attrs = Op::SetAttr {
                        path: path.clone(),
                        meta: e.meta(),
                    };
                    self.links
                        .push((path.clone(), PlannedOp::new(attrs, ok, fail)));
                    return;
                }
                self.stats.files += 1;
                self.stats.bytes += e.size;
                if e.nlink > 1 {
                    self.sent.insert(e.ino);
                }
                let known = old.filter(|o| o.size == e.size && o.hash.is_some());
                let grew = old.filter(|o| {
                    o.kind == Kind::File
                        && o.size >= APPEND_MIN
                        && o.size < e.size
                        && o.hash.is_some()
                });
                PlannedOp {
                    op: PlanOp::File {
                        path: path.clone(),
                        entry: e.clone(),
                        known_hash: known.or(grew).and_then(|o| o.hash),
                        slave_meta: known.map(Entry::meta),
                        grew_from: grew.map(|o| o.size),
                    },
                    ok,
                    fail,
                }
            }
            Kind::Symlink => PlannedOp::new(
                Op::Symlink {
                    path: path.clone(),
                    target: e.target.clone().unwrap_or_default(),
                    meta: e.meta(),
                },
                ok,
                fail,
            ),
            Kind::Fifo | Kind::Char | Kind::Block => PlannedOp::new(
                Op::Special {
                    path: path.clone(),
                    kind: e.kind.special().unwrap(),
                    rdev: e.rdev,
                    meta: e.meta(),
                },
                ok,
                fail,
            ),
            Kind::Dir | Kind::Unknown => unreachable!("content() of a directory"),
        };
        self.creates.push((path.clone(), 1, op));
    }

    pub(super) fn index_only(&mut self, path: &RelPath, e: &Entry) {
        self.creates.push((
            path.clone(),
            3,
            PlannedOp {
                op: PlanOp::IndexOnly,
                ok: Self::upsert(path, e),
                fail: vec![],
            },
        ));
    }

    /// Ships what changed between `old` and `e` at `path` (which already holds `old`).
    pub(super) fn update(
        &mut self,
        path: &RelPath,
        old: &Entry,
        e: &Entry,
        c: Change,
        leader: Option<&RelPath>,
    ) {
        // Content is unchanged by a metadata change: the slave's content hash still holds.
        let kept = Entry {
            hash: old.hash,
            ..e.clone()
        };
        match c {
            Change::None => {}
            Change::IndexOnly => self.index_only(path, &kept),
            Change::Meta => {
                self.stats.changed += 1;
                self.set_attr(path, &kept)
            }
            Change::Data => {
                self.stats.changed += 1;
                self.content(path, e, Some(old), leader)
            }
        }
    }
}

impl Builder {
    /// The plan: every op in the order that is valid whatever the renames (see the module
    /// docs): stale marks of the directories whose attributes come last, stashes deepest
    /// first, creations and unstashes in path order, links, deletes, then directory attributes
    /// deepest first.
    pub(super) fn into_plan(mut self, scanned: u64, errors: Vec<(RelPath, String)>) -> Plan {
        // Directories whose attributes the ops change on the slave before the end of the plan
        // sets them again: their rows must not vouch for them meanwhile (a connection lost in
        // between). Rows that do not exist yet (renamed there by this plan) are left alone.
        let mut ops: Vec<PlannedOp> = self
            .dir_attrs
            .iter()
            .filter(|(_, op)| matches!(op.op, PlanOp::Op(Op::SetAttr { .. })))
            .map(|(p, _)| Builder::stale(p))
            .collect();
        self.stashes.sort_by(|x, y| y.0.cmp(&x.0));
        for (from, s) in self.stashes {
            let ok = vec![Mutation::Move(from.clone(), index::stash_path(s))];
            let fail = Builder::poison(&from);
            ops.push(PlannedOp::new(Op::Stash { from, slot: s }, ok, fail));
        }
        self.creates.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        ops.extend(self.creates.into_iter().map(|c| c.2));
        self.links.sort_by(|x, y| x.0.cmp(&y.0));
        ops.extend(self.links.into_iter().map(|c| c.1));
        self.deletes.sort_by(|x, y| x.0.cmp(&y.0));
        ops.extend(self.deletes.into_iter().map(|c| c.1));
        self.dir_attrs.sort_by(|x, y| y.0.cmp(&x.0));
        ops.extend(self.dir_attrs.into_iter().map(|c| c.1));
        self.stats.scanned = scanned;
        Plan {
            ops,
            stats: self.stats,
            needs_crawl: false,
            incomplete: false,
            streamed: 0,
            errors,
        }
    }
}
