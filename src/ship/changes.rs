//! From journal records to the set of paths to compare with the index.
//!
//! Invariant: every path is given under its final name: a record made before a rename of one of
//! its ancestors is moved to the new name, so the targeted diff looks where the entry is now.

use crate::journal::{RecOp, Record};
use crate::protocol::RelPath;
use std::collections::BTreeSet;

/// The dirty set of `records` (in order): each path changed, and its parent (whose entries and
/// mtime changed with it).
pub fn dirty_paths(records: &[Record]) -> BTreeSet<RelPath> {
    changes(records).dirty
}

/// What a window of records says changed, every path under its final name.
#[derive(Debug, Default)]
pub struct Changes {
    /// Each path changed, and its parent.
    pub dirty: BTreeSet<RelPath>,
    /// The final names that are the target of a rename: only those may be matched to a gone
    /// entry by inode (a new entry can reuse a deleted one's inode number).
    pub rename_targets: BTreeSet<RelPath>,
    /// Names the records removed (unlinked, or renamed away): an entry missing from the disk
    /// is known to be gone only at or beneath one of these. Missing anywhere else, the disk is
    /// ahead of the records (a rename not journaled yet took it away) and a delete planned
    /// from it would drop what the rename carries.
    pub removed: BTreeSet<RelPath>,
    /// Names a record created or changed (not merely parents of a change).
    pub touched: BTreeSet<RelPath>,
    /// Names whose content a `DATA` record says was written.
    pub written: BTreeSet<RelPath>,
}

pub fn changes(records: &[Record]) -> Changes {
    let mut c = Changes::default();
    for r in records {
        if !r.op.has_path() {
            continue;
        }
        match r.op {
            RecOp::Rename => {
                if let Some(to) = &r.path2 {
                    rebase(&mut c.dirty, &r.path, to);
                    rebase(&mut c.rename_targets, &r.path, to);
                    rebase(&mut c.removed, &r.path, to);
                    rebase(&mut c.touched, &r.path, to);
                    c.touched.remove(&r.path);
                    c.touched.insert(to.clone());
                    rebase(&mut c.written, &r.path, to);
                    if c.written.remove(&r.path) {
                        c.written.insert(to.clone());
                    }
                    c.rename_targets.remove(&r.path);
                    c.rename_targets.insert(to.clone());
                    c.removed.insert(r.path.clone());
                    add(&mut c.dirty, to);
                }
            }
            RecOp::Unlink | RecOp::Rmdir => {
                c.removed.insert(r.path.clone());
                c.touched.remove(&r.path);
                c.written.remove(&r.path);
            }
            op => {
                c.touched.insert(r.path.clone());
                if op == RecOp::Data {
                    c.written.insert(r.path.clone());
                }
            }
        }
        add(&mut c.dirty, &r.path);
    }
    c
}

pub fn add(d: &mut BTreeSet<RelPath>, p: &RelPath) {
    d.insert(p.clone());
    if let Some(parent) = p.parent() {
        d.insert(parent);
    }
}

/// Moves the dirty paths strictly beneath `from` to beneath `to`.
fn rebase(d: &mut BTreeSet<RelPath>, from: &RelPath, to: &RelPath) {
    use std::ops::Bound;
    // `from` itself may or may not be in the set: exclude it by bound, never by position.
    let moved: Vec<RelPath> = d
        .range((Bound::Excluded(from.clone()), Bound::Unbounded))
        .take_while(|p| p.as_bytes() < upper(from).as_slice())
        .filter(|p| p.starts_with(from))
        .cloned()
        .collect();
    for p in moved {
        d.remove(&p);
        d.insert(p.rebase(from, to));
    }
}

/// The first byte string after every path beneath `p` (`p` followed by '0', which is '/' + 1).
fn upper(p: &RelPath) -> Vec<u8> {
    let mut v = p.as_bytes().to_vec();
    v.push(b'/' + 1);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    fn rec(op: RecOp, a: &str, b: Option<&str>) -> Record {
        let mut r = Record::new(op, p(a));
        r.path2 = b.map(p);
        r
    }

    #[test]
    fn records_before_a_rename_follow_it() {
        let recs = vec![
            rec(RecOp::Create, "a/x/f", None),
            rec(RecOp::Data, "a-sibling", None),
            rec(RecOp::Rename, "a", Some("b/a2")),
            rec(RecOp::Data, "b/a2/g", None),
        ];
        let d: Vec<String> = dirty_paths(&recs).iter().map(|p| p.display()).collect();
        assert_eq!(
            d,
            vec![
                ".",
                "a",
                "a-sibling",
                "b",
                "b/a2",
                "b/a2/g",
                "b/a2/x",
                "b/a2/x/f"
            ]
        );
    }

    #[test]
    fn regression_first_descendant_is_rebased_when_the_directory_itself_is_not_dirty() {
        let recs = vec![
            rec(RecOp::Unlink, "n35/n26/n36", None),
            rec(RecOp::Rename, "n35", Some("n19")),
        ];
        let d: Vec<String> = dirty_paths(&recs).iter().map(|p| p.display()).collect();
        assert_eq!(d, vec![".", "n19", "n19/n26", "n19/n26/n36", "n35"]);
    }
}
