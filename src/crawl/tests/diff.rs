//! The diff: renames, hard-link groups, attributes of entries that changed kind.

use super::*;

#[test]
fn a_journaled_write_is_checked_even_when_the_stat_did_not_change() {
    // Rewritten within one tick of the filesystem clock: same size, mtime and ctime as the
    // version shipped. The DATA record says the content changed: hash-check it.
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    let e = Entry {
        nlink: 1,
        ..linked(1)
    };
    let mut d = Diff {
        written: BTreeSet::from([p("a")]),
        ..Diff::default()
    };
    d.compare(&index, p("a"), e.clone(), e.clone()).unwrap();
    let ops = ops_of(d);
    assert!(
        matches!(&ops[..], [PlanOp::File { path, known_hash: Some(h), .. }] if *path == p("a") && *h == [1; 32]),
        "{ops:?}"
    );
    // Without the record, nothing changed.
    let mut d = Diff::default();
    d.compare(&index, p("a"), e.clone(), e).unwrap();
    assert!(d.plan(&mut 0, &|_| None).ops.is_empty());
}

#[test]
fn a_name_with_current_content_leads_the_others() {
    // "b" was rewritten to the same state as "a" (say its row was poisoned): link it.
    let ops = plan_for([linked(1), linked(0)], [linked(1), linked(1)]);
    assert!(
        matches!(&ops[..], [PlanOp::Op(Op::Link { path, target }), PlanOp::Op(Op::SetAttr { .. })]
            if *path == p("b") && *target == p("a")),
        "{ops:?}"
    );
}

#[test]
fn a_hard_link_moved_along_with_its_directory_joins_the_name_whose_content_is_sent() {
    // Harness seed 98025: "a" needs its content sent (its row is stale, say poisoned) and
    // is the group's leader; its other name moved along with a renamed directory (d → F),
    // unchanged. The slave's F/n must become a link to the new "a", not stay apart.
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    let dir_entry = Entry {
        kind: Kind::Dir,
        ino: 9,
        nlink: 2,
        hash: None,
        ..linked(1)
    };
    let mut d = Diff::default();
    for (name, e) in [("a", linked(1)), ("b/n", linked(1))] {
        d.links.entry(e.ino).or_default().push(p(name));
        d.saw(&e);
    }
    d.compare(&index, p("a"), linked(0), linked(1)).unwrap();
    d.gone.insert(p("_d"), dir_entry.clone());
    d.gone.insert(p("_d/n"), linked(1));
    d.new.insert(p("b"), dir_entry.clone());
    d.new.insert(p("b/n"), linked(1));
    d.dirs.insert(p("b"), dir_entry);
    let ops = ops_of(d);
    let (sent, linked_to) = sent_and_linked(ops.iter());
    assert_eq!(sent, vec![&p("a")], "{ops:?}");
    assert_eq!(linked_to, vec![(&p("b/n"), &p("a"))], "{ops:?}");
}

#[test]
fn a_file_moved_along_is_not_given_the_attributes_of_a_directory_that_took_its_name() {
    // Seed 900474: "n" renamed to "c"; the file "c/f" moved along with it; a stale row
    // "n/f/c" made a Delete beneath it, so "c/f" was a touched parent; by plan time a new
    // directory held "c/f" on the master, and its attributes landed on the slave's file.
    let dir = |ino| Entry {
        kind: Kind::Dir,
        ino,
        mode: 0o755,
        nlink: 2,
        hash: None,
        ..linked(5)
    };
    let file = Entry {
        ino: 20,
        nlink: 1,
        ..linked(5)
    };
    let mut d = Diff::default();
    d.gone.insert(p("n"), dir(10));
    d.gone.insert(p("n/f"), file.clone());
    d.gone.insert(p("n/f/c"), dir(30));
    d.new.insert(p("c"), dir(10));
    d.new.insert(p("c/f"), file);
    d.dirs.insert(p("c"), dir(10));
    d.rename_targets = Some(BTreeSet::from([p("c")]));
    d.targeted = Some(BTreeSet::from([p("n"), p("c"), p("c/f"), p("c/f/c")]));
    let plan = d.plan(&mut 0, &|q| (*q == p("c/f")).then(|| dir(99)));
    assert!(
        plan.ops
            .iter()
            .any(|o| matches!(&o.op, PlanOp::Op(Op::Unstash { to, .. }) if *to == p("c"))),
        "{:?}",
        plan.ops
    );
    assert!(
        !plan
            .ops
            .iter()
            .any(|o| matches!(&o.op, PlanOp::Op(Op::SetAttr { path, .. }) if *path == p("c/f"))),
        "{:?}",
        plan.ops
    );
    assert!(!plan
        .ops
        .iter()
        .flat_map(|o| &o.ok)
        .any(|m| matches!(m, Mutation::Upsert(q, e) if *q == p("c/f") && e.kind == Kind::Dir)));
}

#[test]
fn a_file_replacing_an_indexed_directory_takes_its_rows_along() {
    // Seed 900474: a file replaced a directory; the deletes beneath it are left out (the
    // slave removes the tree), and their rows stayed in the index, beneath a file.
    let dir = Entry {
        kind: Kind::Dir,
        ino: 10,
        mode: 0o755,
        nlink: 2,
        hash: None,
        ..linked(5)
    };
    let mut d = Diff::default();
    d.gone.insert(p("x"), dir.clone());
    d.gone.insert(
        p("x/c"),
        Entry {
            ino: 11,
            ..dir.clone()
        },
    );
    d.new.insert(
        p("x"),
        Entry {
            ino: 12,
            nlink: 1,
            ..linked(6)
        },
    );
    let plan = d.plan(&mut 0, &|_| None);
    let muts: Vec<&Mutation> = plan.ops.iter().flat_map(|o| &o.ok).collect();
    let removed = muts
        .iter()
        .position(|m| matches!(m, Mutation::Remove(q) if *q == p("x")));
    let upserted = muts
        .iter()
        .position(|m| matches!(m, Mutation::Upsert(q, e) if *q == p("x") && e.kind == Kind::File));
    assert!(
        removed.is_some() && upserted.is_some() && removed < upserted,
        "{muts:?}"
    );
    // The rows go only with the slave's tree (takeover seed 1200153): a delete that
    // poisons them when it fails, not an index-only op that cannot fail.
    let forget = plan
        .ops
        .iter()
        .find(|o| {
            o.ok.iter()
                .any(|m| matches!(m, Mutation::Remove(q) if *q == p("x")))
        })
        .unwrap();
    assert!(
        matches!(&forget.op, PlanOp::Op(Op::Delete { path }) if *path == p("x"))
            && !forget.fail.is_empty(),
        "{:?}",
        plan.ops
    );
    assert!(
        !plan
            .ops
            .iter()
            .any(|o| matches!(&o.op, PlanOp::Op(Op::Delete { path }) if *path == p("x/c"))),
        "{:?}",
        plan.ops
    );
}

#[test]
fn a_renamed_symlink_is_not_given_the_attributes_of_a_directory_that_took_its_name() {
    // Seed 400097: "e" (a symlink) renamed to "h"; by the time the plan read the renamed
    // entries' directories from the disk, a new directory had taken the name "h" on the
    // master. Setting "h"'s attributes from it recorded that directory in the index for
    // the slave's symlink, and a later rename of the directory moved the symlink.
    let sym = Entry {
        kind: Kind::Symlink,
        size: 1,
        nlink: 1,
        mode: 0o777,
        target: Some(b"t".to_vec()),
        hash: None,
        ..linked(5)
    };
    let mut d = Diff::default();
    d.gone.insert(p("e"), sym.clone());
    d.new.insert(p("h"), sym);
    d.rename_targets = Some(BTreeSet::from([p("h")]));
    let dir = Entry {
        kind: Kind::Dir,
        ino: 99,
        mode: 0o755,
        target: None,
        hash: None,
        ..linked(6)
    };
    let ops: Vec<PlanOp> = d
        .plan(&mut 0, &|q| (*q == p("h")).then(|| dir.clone()))
        .ops
        .into_iter()
        .map(|o| o.op)
        .collect();
    assert!(
        ops.iter()
            .any(|o| matches!(o, PlanOp::Op(Op::Unstash { to, .. }) if *to == p("h"))),
        "{ops:?}"
    );
    assert!(
        !ops.iter()
            .any(|o| matches!(o, PlanOp::Op(Op::SetAttr { path, .. }) if *path == p("h"))),
        "{ops:?}"
    );
}

#[test]
fn a_name_stated_before_its_link_was_made_is_linked_not_sent_apart() {
    // Seed 430148: "b" was stat'ed with one link, then "a" was made a link to it and
    // stat'ed with two; "a" leads, "b" was sent as a file of its own (one link, no leader),
    // and the slave kept two inodes for good.
    let mut d = Diff::default();
    let once = Entry {
        nlink: 1,
        ..linked(1)
    };
    let twice = Entry {
        ctime_nsec: 5,
        ..linked(1)
    };
    for (name, e) in [("b", once), ("a", twice)] {
        d.saw(&e);
        d.new.insert(p(name), e.clone());
        d.links.entry(e.ino).or_default().push(p(name));
    }
    d.join_names_stated_before_their_link();
    let ops = ops_of(d);
    let (sent, linked_to) = sent_and_linked(ops.iter());
    assert_eq!(sent, vec![&p("a")], "{ops:?}");
    assert_eq!(linked_to, vec![(&p("b"), &p("a"))], "{ops:?}");
}

#[test]
fn a_hard_linked_file_that_changed_between_two_stats_is_sent_again() {
    // "a" was looked at before a write through either name, "b" after it: the slave's "a"
    // holds the old content, so linking "b" to it would keep that content on both names.
    let ops = plan_for([linked(1), linked(1)], [linked(1), linked(2)]);
    assert!(
        matches!(&ops[..], [PlanOp::File { path, .. }, PlanOp::Op(Op::Link { path: l, target }), PlanOp::Op(Op::SetAttr { .. })]
            if *path == p("a") && *l == p("b") && *target == p("a")),
        "{ops:?}"
    );
}
