//! Hard-link groups compared across the two sides: the master's names of one inode must be
//! the slave's names of one inode (verify reports a split or merged group; takeover and
//! `--rescan-slave` treat its names as unknown so the crawl relinks them).

use super::entry::{Entry, Kind};
use crate::protocol::ListEntry;

/// The inode of a name that is a multiply-linked regular file on the master.
pub fn master_group_key(e: &Entry) -> Option<u64> {
    (e.kind == Kind::File && e.nlink > 1).then_some(e.ino)
}

/// The inode of a name that is a multiply-linked regular file on the slave.
pub fn slave_group_key(e: &ListEntry) -> Option<u64> {
    (Kind::from_u8(e.kind) == Kind::File && e.nlink > 1).then_some(e.ino)
}

/// A name whose hard-link group differs between the sides.
#[derive(Debug, PartialEq)]
pub struct Split {
    pub name: usize,
    /// The other names (indexes) sharing its inode on the master, and on the slave.
    pub master: Vec<usize>,
    pub slave: Vec<usize>,
}

/// `names`: for names present on both sides, each side's group key (`*_group_key`). A name's
/// group is the names of this list with its key; returns every name whose group differs.
/// Names on one side only are not counted in anyone's group: they are missing or extra, which
/// the caller handles on its own.
pub fn differing_groups(names: &[(Option<u64>, Option<u64>)]) -> Vec<Split> {
    use std::collections::HashMap;
    let mut master: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut slave: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, (m, s)) in names.iter().enumerate() {
        if let Some(k) = m {
            master.entry(*k).or_default().push(i);
        }
        if let Some(k) = s {
            slave.entry(*k).or_default().push(i);
        }
    }
    let others = |i: usize, key: &Option<u64>, groups: &HashMap<u64, Vec<usize>>| -> Vec<usize> {
        key.and_then(|k| groups.get(&k))
            .map(|g| g.iter().copied().filter(|&j| j != i).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (i, (m, s)) in names.iter().enumerate() {
        let (mo, so) = (others(i, m, &master), others(i, s, &slave));
        if mo != so {
            out.push(Split {
                name: i,
                master: mo,
                slave: so,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_merged_groups_are_found_and_equal_ones_are_not() {
        // 0,1 linked on both; 2,3 linked on the master only (split); 4,5 on the slave only
        // (merged); 6 alone on both.
        let names = [
            (Some(1), Some(10)),
            (Some(1), Some(10)),
            (Some(2), None),
            (Some(2), None),
            (None, Some(30)),
            (None, Some(30)),
            (None, None),
        ];
        let got: Vec<usize> = differing_groups(&names).iter().map(|s| s.name).collect();
        assert_eq!(got, vec![2, 3, 4, 5]);
        assert_eq!(
            differing_groups(&names)[0],
            Split {
                name: 2,
                master: vec![3],
                slave: vec![]
            }
        );
    }
}
