//! Fuzzing batch apply (issue 13): hostile op sequences, generated and shrunk by proptest,
//! applied by the agent's `Applier` to a scratch slave root that holds symlinks leading out of
//! it. Whatever the ops, nothing outside the root changes and nothing panics. The decoders are
//! fuzzed in their own unit tests (`protocol::frame`, `transport::segment`).
//! `PROPTEST_CASES` sets the number of sequences (CI: 64).

use crate::util::*;
use georep::agent::apply::Applier;
use georep::protocol::*;
use proptest::prelude::*;
use std::path::Path;

fn rel(parts: &[&str]) -> RelPath {
    RelPath::new(parts.join("/").into_bytes()).unwrap()
}

/// Paths from a small alphabet, so that ops meet each other; `evil` and `abs` are symlinks
/// out of the root, planted before the ops run.
fn path() -> impl Strategy<Value = RelPath> {
    let comp = prop::sample::select(vec!["a", "b", "evil", "abs", "f", "l"]);
    prop::collection::vec(comp, 1..4).prop_map(|v| rel(&v))
}

fn meta() -> impl Strategy<Value = Meta> {
    (
        prop::sample::select(vec![0o644u32, 0o777, 0o4755, 0o000, 0o1777]),
        0u32..3,
    )
        .prop_map(|(mode, id)| Meta {
            mode,
            uid: id,
            gid: id,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            xattrs: None,
        })
}

#[derive(Debug, Clone)]
enum Step {
    Op(Op),
    File(RelPath, Meta, Vec<u8>, bool),
}

fn step(outside: String) -> impl Strategy<Value = Step> {
    let target = prop::sample::select(vec![
        b"../outside".to_vec(),
        b"/".to_vec(),
        outside.into_bytes(),
        b"a".to_vec(),
        b"a/b".to_vec(),
        b"../../..".to_vec(),
    ]);
    prop_oneof![
        (path(), meta()).prop_map(|(path, meta)| Step::Op(Op::Mkdir { path, meta })),
        (path(), target, meta()).prop_map(|(path, target, meta)| Step::Op(Op::Symlink {
            path,
            target,
            meta
        })),
        (path(), path()).prop_map(|(path, target)| Step::Op(Op::Link { path, target })),
        (path(), meta()).prop_map(|(path, meta)| Step::Op(Op::Special {
            path,
            kind: SpecialKind::Fifo,
            rdev: 0,
            meta
        })),
        path().prop_map(|path| Step::Op(Op::Delete { path })),
        (path(), 0u64..3).prop_map(|(from, slot)| Step::Op(Op::Stash { from, slot })),
        (0u64..3, path()).prop_map(|(slot, to)| Step::Op(Op::Unstash { slot, to })),
        (path(), meta()).prop_map(|(path, meta)| Step::Op(Op::SetAttr { path, meta })),
        Just(Step::Op(Op::SetAttr {
            path: RelPath::root(),
            meta: Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime_sec: 1,
                mtime_nsec: 0,
                xattrs: None
            }
        })),
        (
            path(),
            meta(),
            prop::collection::vec(any::<u8>(), 0..64),
            any::<bool>()
        )
            .prop_map(|(p, m, d, ok)| Step::File(p, m, d, ok)),
    ]
}

fn run(root: &Path, steps: &[Step]) {
    let tmp = root.join(".georep/tmp/fuzz");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut a = Applier::new(
        georep::fsutil::open_root(root).unwrap(),
        georep::fsutil::open_root(&tmp).unwrap(),
    );
    for s in steps {
        match s {
            Step::Op(op) => {
                let _ = a.apply(op);
            }
            Step::File(path, meta, data, honest) => {
                let fb = FileBegin {
                    path: path.clone(),
                    meta: meta.clone(),
                    size: data.len() as u64,
                };
                let _ = a.begin_file(&fb);
                let _ = a.chunk(data);
                let hash = if *honest {
                    *blake3::hash(data).as_bytes()
                } else {
                    [7; 32]
                };
                let _ = a.end_file(&hash, true);
            }
        }
    }
}

#[test]
fn fuzz_hostile_op_sequences_never_touch_anything_outside_the_root() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let g = Georep::new();
    let outside = g.path("outside");
    let outside_s = outside.to_str().unwrap().to_string();
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..Default::default()
    });
    let n = std::cell::Cell::new(0u32);
    let r = runner.run(
        &prop::collection::vec(step(outside_s.clone()), 1..40),
        |steps| {
            n.set(n.get() + 1);
            let root = g.path(&format!("root{}", n.get()));
            let out = g.path(&format!("outside{}", n.get()));
            std::fs::create_dir_all(&root).unwrap();
            write(&out.join("canary"), b"do not touch");
            chmod(&out.join("canary"), 0o640);
            write(&outside.join("canary"), b"do not touch");
            std::os::unix::fs::symlink(&out, root.join("evil")).unwrap();
            std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
            let before = (snapshot(&out), snapshot(&outside));
            run(&root, &steps);
            let after = (snapshot(&out), snapshot(&outside));
            prop_assert!(before == after, "something outside the slave root changed");
            // Nothing new next to the root either.
            let strays: Vec<_> = std::fs::read_dir(root.parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("root") && !n.starts_with("outside"))
                .filter(|n| !["home", "master", "slave"].contains(&n.as_str()))
                .collect();
            prop_assert!(
                strays.is_empty(),
                "new entries next to the root: {:?}",
                strays
            );
            let _ = std::fs::remove_dir_all(&root);
            let _ = std::fs::remove_dir_all(&out);
            Ok(())
        },
    );
    if let Err(e) = r {
        panic!("{e}");
    }
    let n = n.get();
    eprintln!("fuzzed batch apply: {n} hostile op sequences (with shrinking), nothing outside the root changed");
}
