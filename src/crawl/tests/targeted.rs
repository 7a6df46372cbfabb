//! Journal mode: plans of the paths a window names.

use super::*;

#[test]
fn a_directory_renamed_back_while_a_window_is_planned_is_not_made_new() {
    // Journal seed 56: "N" renamed to "L" (journaled), then back to "N" while the window
    // was planned, between the looks at "L/a" and at "N". The plan made "L" new and
    // left "N" alone; the next window deleted "L", and what changed in the directory was
    // never compared again.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("N")).unwrap();
    std::fs::write(root.join("N/a"), b"old").unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "N", "N/a"]);
    std::fs::rename(root.join("N"), root.join("L")).unwrap();
    std::fs::write(root.join("L/a"), b"changed in the window").unwrap();
    let r = root.clone();
    AFTER_LOOK.with(|h| {
        *h.borrow_mut() = Some(Box::new(move |q: &RelPath| {
            if *q == p("L/a") {
                std::fs::rename(r.join("L"), r.join("N")).unwrap();
            }
        }))
    });
    let window = Window {
        dirty: BTreeSet::from([RelPath::root(), p("L"), p("L/a"), p("N")]),
        touched: BTreeSet::from([p("L"), p("L/a")]),
        rename_targets: BTreeSet::from([p("L")]),
        renamed_from: BTreeMap::from([(p("L"), p("N"))]),
        written: BTreeSet::from([p("L/a")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    AFTER_LOOK.with(|h| *h.borrow_mut() = None);
    assert!(plan.incomplete, "{:?}", plan.ops);
}

#[test]
fn a_change_through_a_link_made_and_replaced_in_the_window_is_crawled_for() {
    // Journal seed 1200413: "N" was made a link of "L", written through, unlinked and
    // made a directory, all in one window. No record names "L", the index knows nothing
    // at "N", and the name no longer leads to the inode: only a crawl finds "L" changed.
    use crate::journal::{RecOp, Record};
    let rec = |op, s: &str| Record::new(op, p(s));
    for again_as_dir in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("L"), b"old").unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "L"]);
        std::fs::hard_link(root.join("L"), root.join("N")).unwrap();
        std::fs::write(root.join("N"), b"new content").unwrap();
        std::fs::remove_file(root.join("N")).unwrap();
        let mut recs = vec![
            rec(RecOp::Link, "N"),
            rec(RecOp::Data, "N"),
            rec(RecOp::Unlink, "N"),
        ];
        if again_as_dir {
            std::fs::create_dir_all(root.join("N/w")).unwrap();
            recs.extend([rec(RecOp::Mkdir, "N"), rec(RecOp::Mkdir, "N/w")]);
        } else {
            std::fs::write(root.join("N"), b"another file").unwrap();
            recs.extend([rec(RecOp::Create, "N"), rec(RecOp::Data, "N")]);
        }
        let window = crate::ship::changes::changes(&recs);
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        assert!(plan.needs_crawl, "as dir {again_as_dir}: {:?}", plan.ops);
    }
}

#[test]
fn a_change_through_a_link_whose_row_was_poisoned_is_crawled_for() {
    // Journal seed 2001322: "N", a second name of "L", failed to ship (its attributes
    // could not be read: another entry had the name by then), so its row was poisoned and
    // no longer led to the inode. It was then renamed to "M", rewritten through "M" and
    // removed: the rewrite reached "L", which no record names and no row leads to.
    use crate::journal::{RecOp, Record};
    let rec = |op, s: &str| Record::new(op, p(s));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("L"), b"old").unwrap();
    std::fs::hard_link(root.join("L"), root.join("N")).unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "L"]);
    index.apply(&[Mutation::Poison(p("N"))]).unwrap();
    std::fs::rename(root.join("N"), root.join("M")).unwrap();
    std::fs::write(root.join("M"), b"new").unwrap();
    std::fs::remove_file(root.join("M")).unwrap();
    let recs = vec![
        Record {
            path2: Some(p("M")),
            ..rec(RecOp::Rename, "N")
        },
        rec(RecOp::Data, "M"),
        rec(RecOp::Meta, "M"),
        rec(RecOp::Unlink, "M"),
    ];
    let window = crate::ship::changes::changes(&recs);
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    assert!(plan.needs_crawl, "{:?}", plan.ops);
}

#[test]
fn a_link_changed_through_and_replaced_by_a_rename_is_crawled_for() {
    // Journal seed 2401207: "N" was made a link of "L", chmodded through, then another
    // file renamed over it, all in one window. No record names "L", the index knows
    // nothing at "N", and "N" now leads to another inode: only a crawl finds "L" changed.
    use crate::journal::{RecOp, Record};
    use std::os::unix::fs::PermissionsExt;
    let rec = |op, s: &str| Record::new(op, p(s));
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("L"), b"linked").unwrap();
    std::fs::write(root.join("O"), b"other").unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "L", "O"]);
    std::fs::hard_link(root.join("L"), root.join("N")).unwrap();
    std::fs::set_permissions(root.join("N"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(root.join("O"), root.join("N")).unwrap();
    let recs = vec![
        rec(RecOp::Link, "N"),
        rec(RecOp::Meta, "N"),
        Record {
            path2: Some(p("N")),
            ..rec(RecOp::Rename, "O")
        },
    ];
    let window = crate::ship::changes::changes(&recs);
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    assert!(plan.needs_crawl, "{:?}", plan.ops);
}

#[test]
fn a_link_dropped_with_a_replaced_directory_leads_to_its_other_name() {
    // Journal seed 2101659: "a/l", a second name of "f", was truncated, then "a" was
    // removed and made again, all on the disk before the window that planned "a" (its
    // only record: a directory removed inside it). The plan dropped "a/l" with the old
    // "a"; the truncate's record came in the next window, when no row led to "f" any more.
    use crate::journal::{RecOp, Record};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("a/d")).unwrap();
    std::fs::write(root.join("f"), vec![7u8; 1684]).unwrap();
    std::fs::hard_link(root.join("f"), root.join("a/l")).unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "a", "a/d", "a/l", "f"]);
    std::fs::remove_dir(root.join("a/d")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("a/l"))
        .unwrap()
        .set_len(49)
        .unwrap();
    std::fs::create_dir(root.join("n")).unwrap();
    std::fs::remove_file(root.join("a/l")).unwrap();
    std::fs::remove_dir(root.join("a")).unwrap();
    std::fs::rename(root.join("n"), root.join("a")).unwrap();
    let window = crate::ship::changes::changes(&[Record::new(RecOp::Rmdir, p("a/d"))]);
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    let sends_f = plan
        .ops
        .iter()
        .any(|o| matches!(&o.op, PlanOp::File { path, .. } if *path == p("f")));
    assert!(sends_f || plan.needs_crawl, "{:?}", plan.ops);
}

#[test]
fn a_directory_gone_before_it_was_listed_deletes_nothing_beneath_it() {
    // Journal seed 1401242: "H" renamed to "E" (journaled); "E/w", which the index holds
    // at "H/w", was listed whole as a new name just after "E" moved on to "Z" (not
    // journaled yet). The listing found nothing, and the plan deleted "E/w/w" as gone.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("H/w/w")).unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "H", "H/w", "H/w/w"]);
    std::fs::rename(root.join("H"), root.join("E")).unwrap();
    let r = root.clone();
    AFTER_LOOK.with(|h| {
        *h.borrow_mut() = Some(Box::new(move |q: &RelPath| {
            if *q == p("E/w") {
                std::fs::rename(r.join("E"), r.join("Z")).unwrap();
            }
        }))
    });
    let window = Window {
        dirty: BTreeSet::from([RelPath::root(), p("E"), p("E/w"), p("H")]),
        touched: BTreeSet::from([p("E/w")]),
        rename_targets: BTreeSet::from([p("E")]),
        renamed_from: BTreeMap::from([(p("E"), p("H"))]),
        removed: BTreeSet::from([p("H")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    AFTER_LOOK.with(|h| *h.borrow_mut() = None);
    assert!(
        !plan.ops.iter().any(
            |o| matches!(&o.op, PlanOp::Op(Op::Delete { path }) if path.starts_with(&p("E/w")))
        ),
        "{:?}",
        plan.ops
    );
    assert!(plan.incomplete, "{:?}", plan.ops);
}

#[test]
fn a_directory_that_took_a_parents_name_after_the_look_does_not_take_its_row() {
    // Gaps seed 1400877: "X" renamed away (not journaled yet) and "D/h" renamed to "X",
    // both after the window's look at "X" found it gone. An op of the plan inside the
    // slave's "X" made the plan set X's attributes from a stat taken then: the row of X
    // took the new directory's identity, and the old one stayed on the slave.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("X/c")).unwrap();
    std::fs::write(root.join("X/b"), b"b").unwrap();
    std::fs::create_dir_all(root.join("D/h")).unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "X", "X/b", "X/c", "D", "D/h"]);
    let old = index.get(&p("X")).unwrap().unwrap();
    std::fs::remove_dir(root.join("X/c")).unwrap();
    std::fs::rename(root.join("X"), root.join("C")).unwrap();
    let r = root.clone();
    AFTER_LOOK.with(|h| {
        *h.borrow_mut() = Some(Box::new(move |q: &RelPath| {
            if *q == p("X") && !r.join("X").exists() {
                std::fs::rename(r.join("D/h"), r.join("X")).unwrap();
            }
        }))
    });
    let window = Window {
        dirty: BTreeSet::from([RelPath::root(), p("X"), p("X/c")]),
        touched: BTreeSet::from([p("X")]),
        removed: BTreeSet::from([p("X/c")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    AFTER_LOOK.with(|h| *h.borrow_mut() = None);
    for o in &plan.ops {
        index.apply(&o.ok).unwrap();
    }
    let row = index.get(&p("X")).unwrap().expect("X's row");
    assert_eq!(row.ino, old.ino, "{:?}", plan.ops);
}

#[test]
fn a_meta_record_sends_the_attributes_again_whatever_the_stat_says() {
    // Review of issue 16: an extended attribute changed twice within one tick of the
    // ctime clock, read between the two, leaves a stat equal to the row's: the META
    // record alone says the attributes must go again.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("d")).unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "d"]);
    let window = Window {
        dirty: BTreeSet::from([RelPath::root(), p("d")]),
        touched: BTreeSet::from([p("d")]),
        attributed: BTreeSet::from([p("d")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    assert!(
        plan.ops
            .iter()
            .any(|o| matches!(&o.op, PlanOp::Op(Op::SetAttr { path, .. }) if *path == p("d"))),
        "{:?}",
        plan.ops
    );
}

#[test]
fn a_hard_link_whose_row_is_behind_does_not_lead_a_new_name() {
    // Journal seed 300054: "p/x" was written through a name made and removed within the
    // window, so its row is behind the disk; the window found the new name "d/c/y" by
    // listing the new directory "d". Linking "d/c/y" to the slave's "p/x" would keep the
    // old content under both names (and the new row would vouch for the new content).
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("p")).unwrap();
    std::fs::write(root.join("p/x"), b"old").unwrap();
    let index = indexed_as_on_disk(&tmp, &root, &["", "p", "p/x"]);
    std::fs::create_dir_all(root.join("d/c")).unwrap();
    std::fs::hard_link(root.join("p/x"), root.join("d/c/y")).unwrap();
    std::fs::write(root.join("p/x"), b"new content").unwrap();
    let window = Window {
        dirty: BTreeSet::from([RelPath::root(), p("d")]),
        touched: BTreeSet::from([p("d")]),
        made_dirs: BTreeSet::from([p("d")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    let ops: Vec<&PlanOp> = plan.ops.iter().map(|o| &o.op).collect();
    let (sent, linked_to) = sent_and_linked(ops.iter().copied());
    assert_eq!(sent, vec![&p("d/c/y")], "{ops:?}");
    assert_eq!(linked_to, vec![(&p("p/x"), &p("d/c/y"))], "{ops:?}");
}

#[test]
fn a_directory_that_arrived_without_a_journaled_rename_is_listed_whole() {
    // Journal seed 370072: "sub" moved into a directory made before the writer watched it
    // (a MOVED_FROM alone: "sub" removed), then on to "p" by a journaled rename from that
    // new place. Something was removed inside it on the way, with no record. "p" is
    // matched to the index's "sub" by inode, but it must be compared in full.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("sub/inner")).unwrap();
    std::fs::write(root.join("sub/inner/gone"), b"x").unwrap();
    std::fs::write(root.join("sub/kept"), b"y").unwrap();
    indexed_as_on_disk(
        &tmp,
        &root,
        &["", "sub", "sub/inner", "sub/inner/gone", "sub/kept"],
    );
    std::fs::remove_file(root.join("sub/inner/gone")).unwrap();
    std::fs::rename(root.join("sub"), root.join("p")).unwrap();
    let recs = |journaled_from: &str| Window {
        dirty: BTreeSet::from([RelPath::root(), p("sub"), p("p"), p("t")]),
        rename_targets: BTreeSet::from([p("p")]),
        renamed_from: BTreeMap::from([(p("p"), p(journaled_from))]),
        removed: BTreeSet::from([p("sub"), p("t")]),
        touched: BTreeSet::from([p("p")]),
        made_dirs: BTreeSet::from([p("p")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let deletes = |w: Window| -> Vec<RelPath> {
        let plan = plan_paths(
            &root,
            &Index::open(&tmp.path().join("index.db")).unwrap(),
            &excludes,
            w,
            &mut 0,
        )
        .unwrap();
        plan.ops
            .iter()
            .filter_map(|o| match &o.op {
                PlanOp::Op(Op::Delete { path }) => Some(path.clone()),
                _ => None,
            })
            .collect()
    };
    // Renamed from "sub" by a journaled rename: the records would say what went, and
    // rows beneath that none of them names moved along intact (not listed).
    assert_eq!(deletes(recs("sub")), Vec::<RelPath>::new());
    // Arrived from "t", a name "sub" never had in the records: listed, "gone" deleted.
    let got = deletes(recs("t"));
    assert_eq!(got, vec![p("p/inner/gone")]);
}

#[test]
fn a_renamed_directory_not_proven_the_same_is_listed_whole() {
    // Seed 390034 of the gaps mode: the index holds "q" with the inode number the renamed
    // "p" has, but another birth time (another directory, or one the index knows less
    // of): the diff makes "p" a new directory, so everything in it must be sent.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("brick");
    std::fs::create_dir_all(root.join("q")).unwrap();
    std::fs::write(root.join("q/f"), b"content").unwrap();
    let index = Index::open(&tmp.path().join("index.db")).unwrap();
    let fd = fsutil::open_root(&root).unwrap();
    let mut q = walk::lstat_beneath(&fd, &p("q"), View::default())
        .unwrap()
        .unwrap();
    q.birth += 1;
    index
        .apply(&[
            Mutation::Upsert(
                RelPath::root(),
                walk::lstat_beneath(&fd, &RelPath::root(), View::default())
                    .unwrap()
                    .unwrap(),
            ),
            Mutation::Upsert(p("q"), q),
        ])
        .unwrap();
    std::fs::rename(root.join("q"), root.join("p")).unwrap();
    let window = Window {
        dirty: BTreeSet::from([RelPath::root(), p("q"), p("p")]),
        rename_targets: BTreeSet::from([p("p")]),
        renamed_from: BTreeMap::from([(p("p"), p("q"))]),
        removed: BTreeSet::from([p("q")]),
        ..Window::default()
    };
    let excludes = Excludes::new(&[]).unwrap();
    let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
    let ops: Vec<&PlanOp> = plan.ops.iter().map(|o| &o.op).collect();
    let (sent, _) = sent_and_linked(ops.iter().copied());
    assert_eq!(sent, vec![&p("p/f")], "{ops:?}");
}
