//! Tests of the planner: the diff against the index, and journal mode's targeted plans.

pub(super) use super::diff::Diff;
pub(super) use super::index::{Index, Mutation};
pub(super) use super::targeted::AFTER_LOOK;
pub(super) use super::*;
pub(super) use crate::entry::{Entry, Kind};
pub(super) use crate::fsutil;
pub(super) use crate::gluster::View;
pub(super) use crate::protocol::{Op, RelPath};
pub(super) use crate::walk::Excludes;
pub(super) use std::collections::{BTreeMap, BTreeSet};

pub(super) fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

/// A regular file with two names, its content as of `mtime`.
pub(super) fn linked(mtime: i64) -> Entry {
    Entry {
        kind: Kind::File,
        ino: 7,
        size: 10,
        mtime_sec: mtime,
        mtime_nsec: 0,
        ctime_sec: mtime,
        ctime_nsec: 0,
        mode: 0o644,
        uid: 0,
        gid: 0,
        nlink: 2,
        rdev: 0,
        birth: 1,
        target: None,
        hash: Some([1; 32]),
    }
}

/// Index rows for "a" and "b", then the disk as the diff sees it; the plan's ops.
pub(super) fn plan_for(rows: [Entry; 2], disk: [Entry; 2]) -> Vec<PlanOp> {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    let mut d = Diff::default();
    for (name, (row, e)) in ["a", "b"].into_iter().zip(rows.into_iter().zip(disk)) {
        d.links.entry(e.ino).or_default().push(p(name));
        d.saw(&e);
        d.compare(&index, p(name), row, e).unwrap();
    }
    ops_of(d)
}

/// An index (in `tmp`) holding `paths` ("" is the root) as they are on disk beneath `root`.
pub(super) fn indexed_as_on_disk(
    tmp: &tempfile::TempDir,
    root: &std::path::Path,
    paths: &[&str],
) -> Index {
    let index = Index::open(&tmp.path().join("index.db")).unwrap();
    let fd = fsutil::open_root(root).unwrap();
    let rows: Vec<Mutation> = paths
        .iter()
        .map(|s| {
            let q = if s.is_empty() { RelPath::root() } else { p(s) };
            let e = walk::lstat_beneath(&fd, &q, View::default())
                .unwrap()
                .unwrap();
            Mutation::Upsert(q, e)
        })
        .collect();
    index.apply(&rows).unwrap();
    index
}

/// The paths a plan sends content to, and its links (path, target), in plan order.
pub(super) fn sent_and_linked<'a>(
    ops: impl Iterator<Item = &'a PlanOp>,
) -> (Vec<&'a RelPath>, Vec<(&'a RelPath, &'a RelPath)>) {
    let (mut sent, mut linked) = (Vec::new(), Vec::new());
    for o in ops {
        match o {
            PlanOp::File { path, .. } => sent.push(path),
            PlanOp::Op(Op::Link { path, target }) => linked.push((path, target)),
            _ => {}
        }
    }
    (sent, linked)
}

/// The plan's ops, less the index-only one that marks the root stale: these diffs did not
/// read it, so its attributes cannot be set again after the ops in it.
pub(super) fn ops_of(d: Diff) -> Vec<PlanOp> {
    d.plan(&mut 0, &|_| None)
        .ops
        .into_iter()
        .map(|o| o.op)
        .filter(|o| !matches!(o, PlanOp::IndexOnly))
        .collect()
}

mod diff;
mod targeted;
