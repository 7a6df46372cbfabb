//! From journal records to the set of paths to compare with the index.
//!
//! Invariant: every path is given under its final name: a record made before a rename of one of
//! its ancestors is moved to the new name, so the targeted diff looks where the entry is now.

use crate::crawl::Window;
use crate::journal::{RecOp, Record};
use crate::protocol::RelPath;
use std::collections::{BTreeMap, BTreeSet};

/// The dirty set of `records` (in order): each path changed, and its parent (whose entries and
/// mtime changed with it).
pub fn dirty_paths(records: &[Record]) -> BTreeSet<RelPath> {
    changes(records).dirty
}

/// What a window of records says changed, every path under its final name.
pub fn changes(records: &[Record]) -> Window {
    let mut c = Window::default();
    // The renames so far, in order: a name's place at the start of the window is found by
    // undoing them, last first.
    let mut renames: Vec<(&RelPath, &RelPath)> = Vec::new();
    // Names the writer found gone when it read their creation, and names a `LINK` of this
    // window made (see `Window::changed_unseen`).
    let mut unseen: BTreeSet<RelPath> = BTreeSet::new();
    for r in records {
        if !r.op.has_path() {
            continue;
        }
        match r.op {
            RecOp::Rename => {
                if let Some(to) = &r.path2 {
                    let start = start_name(&renames, &r.path);
                    // Renamed before within the window: `start` undoes that already.
                    c.renamed_from.remove(&r.path);
                    move_keys(&mut c.renamed_from, &r.path, to, |m, k, v| {
                        m.insert(k, v);
                    });
                    c.renamed_from.insert(to.clone(), start);
                    rebase(&mut c.dirty, &r.path, to);
                    rebase(&mut c.removed, &r.path, to);
                    rename_in(&mut c.rename_targets, &r.path, to, true);
                    rename_in(&mut c.touched, &r.path, to, true);
                    rename_in(&mut c.written, &r.path, to, false);
                    rename_in(&mut c.attributed, &r.path, to, false);
                    rename_in(&mut c.made_dirs, &r.path, to, false);
                    rename_in(&mut unseen, &r.path, to, false);
                    rename_in(&mut c.changed_unseen, &r.path, to, false);
                    rename_keys(&mut c.changed_through, &r.path, to);
                    renames.push((&r.path, to));
                    c.removed.insert(r.path.clone());
                    add(&mut c.dirty, to);
                }
            }
            RecOp::Unlink | RecOp::Rmdir => {
                c.removed.insert(r.path.clone());
                c.made_dirs.remove(&r.path);
                c.touched.remove(&r.path);
                // What is made at this name next is not the link.
                unseen.remove(&r.path);
                // `written` keeps the name: content written through a name of a hard-linked
                // file and then unlinked changed the other names, which the plan finds
                // through the name's index row.
            }
            op => {
                c.touched.insert(r.path.clone());
                if matches!(op, RecOp::Unseen | RecOp::Link) {
                    unseen.insert(r.path.clone());
                } else if matches!(op, RecOp::Data | RecOp::Meta) && unseen.contains(&r.path) {
                    c.changed_unseen.insert(r.path.clone());
                }
                if op == RecOp::Data {
                    c.written.insert(r.path.clone());
                }
                if op == RecOp::Meta {
                    c.attributed.insert(r.path.clone());
                }
                if matches!(op, RecOp::Data | RecOp::Meta) {
                    // Kept even before any rename: a later one moves the name.
                    let start = start_name(&renames, &r.path);
                    c.changed_through
                        .entry(r.path.clone())
                        .or_default()
                        .insert(start);
                }
                c.hard_links_made |= op == RecOp::Link;
                if op == RecOp::Mkdir {
                    c.made_dirs.insert(r.path.clone());
                }
            }
        }
        add(&mut c.dirty, &r.path);
    }
    // Only names that moved are of use: the others are looked up where they are.
    c.changed_through.retain(|k, starts| {
        starts.remove(k);
        !starts.is_empty()
    });
    c
}

/// Where `p` was at the start of the window: `renames` undone, last first.
fn start_name(renames: &[(&RelPath, &RelPath)], p: &RelPath) -> RelPath {
    let mut p = p.clone();
    for (from, to) in renames.iter().rev() {
        if p.starts_with(to) {
            p = p.rebase(to, from);
        }
    }
    p
}

/// A rename among the keys of `map`: `from` and what lies beneath it move to `to`, merging
/// with what a key there already holds (a name replaced by the rename keeps its own starts).
fn rename_keys(map: &mut BTreeMap<RelPath, BTreeSet<RelPath>>, from: &RelPath, to: &RelPath) {
    move_keys(map, from, to, |m, k, v| m.entry(k).or_default().extend(v));
}

/// Moves the keys of `map` at and beneath `from` to beneath `to`, each put back with `put`.
fn move_keys<V>(
    map: &mut BTreeMap<RelPath, V>,
    from: &RelPath,
    to: &RelPath,
    put: impl Fn(&mut BTreeMap<RelPath, V>, RelPath, V),
) {
    use std::ops::Bound;
    let moved: Vec<RelPath> = map
        .range((Bound::Included(from.clone()), Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(|k| k.as_bytes() < upper(from).as_slice())
        .filter(|k| k.starts_with(from))
        .cloned()
        .collect();
    for k in moved {
        let v = map.remove(&k).unwrap();
        put(map, k.rebase(from, to), v);
    }
}

/// A rename in `set`: what lies beneath `from` moves beneath `to`, and `from` itself becomes
/// `to` (always, or only when it was in the set).
fn rename_in(set: &mut BTreeSet<RelPath>, from: &RelPath, to: &RelPath, always: bool) {
    rebase(set, from, to);
    if set.remove(from) || always {
        set.insert(to.clone());
    }
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
    fn a_change_after_renames_keeps_the_name_it_had_at_the_start() {
        let recs = vec![
            // Changed before any rename, then moved: kept too.
            rec(RecOp::Meta, "d/h", None),
            rec(RecOp::Rename, "a/x", Some("b")),
            rec(RecOp::Rename, "a", Some("c/a")),
            rec(RecOp::Meta, "b/f", None),
            rec(RecOp::Data, "c/a/g", None),
            // Never moved: looked up where it is.
            rec(RecOp::Data, "new", None),
            rec(RecOp::Rename, "b", Some("c/a/b")),
            rec(RecOp::Unlink, "c/a/b/f", None),
            rec(RecOp::Rename, "d", Some("e")),
            // Moved onto a name that holds a change already: both are kept.
            rec(RecOp::Rename, "s", Some("t")),
            rec(RecOp::Meta, "t/k", None),
            rec(RecOp::Rename, "t/k", Some("e/h")),
        ];
        let w = changes(&recs);
        let got: Vec<(String, String)> = w
            .changed_through
            .iter()
            .flat_map(|(k, v)| v.iter().map(|s| (k.display(), s.display())))
            .collect();
        let want: Vec<(String, String)> = [
            ("c/a/b/f", "a/x/f"),
            ("c/a/g", "a/g"),
            ("e/h", "d/h"),
            ("e/h", "s/k"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_rename_target_knows_the_name_its_source_had_at_the_start() {
        let recs = vec![
            rec(RecOp::Rename, "a", Some("b")),
            rec(RecOp::Rename, "b/x", Some("c")),
            rec(RecOp::Rename, "c", Some("d/e")),
            rec(RecOp::Rename, "d", Some("f")),
            // Made in the window: its start name is its own.
            rec(RecOp::Mkdir, "t", None),
            rec(RecOp::Rename, "t", Some("u")),
        ];
        let got: Vec<(String, String)> = changes(&recs)
            .renamed_from
            .iter()
            .map(|(k, v)| (k.display(), v.display()))
            .collect();
        let want: Vec<(String, String)> = [("b", "a"), ("f", "d"), ("f/e", "a/x"), ("u", "t")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want);
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
