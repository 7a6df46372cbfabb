//! Cutting a plan into batches: a batch is sealed at `max_ops` wire ops or `max_bytes` of
//! content, whichever comes first. A single file larger than `max_bytes` gets a batch of its own.

use crate::crawl::{PlanOp, PlannedOp};
use std::ops::Range;

/// Ranges of `ops` that form consecutive batches.
pub fn cut(ops: &[PlannedOp], max_ops: u32, max_bytes: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut n, mut bytes) = (0usize, 0u32, 0u64);
    for (i, op) in ops.iter().enumerate() {
        let b = op.bytes();
        let wire = !matches!(op.op, PlanOp::IndexOnly) as u32;
        if n > 0 && (n + wire > max_ops || bytes + b > max_bytes) {
            out.push(start..i);
            (start, n, bytes) = (i, 0, 0);
        }
        n += wire;
        bytes += b;
    }
    if start < ops.len() {
        out.push(start..ops.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Entry, Kind};
    use crate::protocol::RelPath;

    fn file(size: u64) -> PlannedOp {
        PlannedOp {
            op: PlanOp::File {
                path: RelPath::new(b"f".to_vec()).unwrap(),
                entry: Entry {
                    kind: Kind::File,
                    ino: 1,
                    size,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                    ctime_sec: 0,
                    ctime_nsec: 0,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    nlink: 1,
                    rdev: 0,
                    birth: 0,
                    target: None,
                    hash: None,
                },
                known_hash: None,
                slave_meta: None,
                grew_from: None,
            },
            ok: vec![],
            fail: vec![],
        }
    }

    #[test]
    fn seals_on_ops_and_bytes() {
        let ops: Vec<_> = (0..10).map(|_| file(10)).collect();
        assert_eq!(cut(&ops, 4, 1000), vec![0..4, 4..8, 8..10]);
        assert_eq!(cut(&ops, 100, 25), vec![0..2, 2..4, 4..6, 6..8, 8..10]);
        let big = vec![file(10), file(5000), file(10)];
        assert_eq!(cut(&big, 100, 100), vec![0..1, 1..2, 2..3]);
        assert!(cut(&[], 4, 4).is_empty());
    }
}
