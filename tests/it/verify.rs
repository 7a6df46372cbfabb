//! `georep verify`: finds every difference between master and slave without copying, and
//! exits 0 only when they are equal.

use crate::util::*;
use std::fs;

#[test]
fn verify_reports_each_difference_and_checksum_finds_silent_corruption() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 1 << 20);
    g.sync_equal();
    let out = g.ok(&["verify", ms, ss, "--checksum"]);
    assert!(out.contains("equal"), "{out}");

    // Silent corruption: same size, same mtime, other bytes. Only --checksum sees it.
    let victim = s.join("many/f007");
    let meta = fs::metadata(&victim).unwrap();
    let mut bytes = fs::read(&victim).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    set_mtime(
        &victim,
        std::os::unix::fs::MetadataExt::mtime(&meta),
        std::os::unix::fs::MetadataExt::mtime_nsec(&meta) as u32,
    );
    let o = g.run(&["verify", ms, ss]);
    assert!(
        o.status.success(),
        "quick check should not see it: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = g.run(&["verify", ms, ss, "--checksum"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("many/f007: same size, different content"),
        "{out}"
    );

    // Missing, extra, mode, type: each one named.
    fs::remove_file(s.join("with space/and more spaces.txt")).unwrap();
    write(&s.join("stray"), b"only here");
    chmod(&s.join("modes/exec.sh"), 0o644);
    fs::remove_file(s.join("rel-link")).unwrap();
    write(&s.join("rel-link"), b"now a file");
    let o = g.run(&["verify", ms, ss, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let diffs: Vec<String> = r["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{}: {}",
                d["path"].as_str().unwrap(),
                d["what"].as_str().unwrap()
            )
        })
        .collect();
    let has = |p: &str, w: &str| {
        diffs
            .iter()
            .any(|d| d.starts_with(&format!("{p}: ")) && d.contains(w))
    };
    assert!(
        has("with space/and more spaces.txt", "missing on the slave"),
        "{diffs:#?}"
    );
    assert!(has("stray", "only on the slave"), "{diffs:#?}");
    assert!(
        has("modes/exec.sh", "mode 755 on the master, 644 on the slave"),
        "{diffs:#?}"
    );
    assert!(
        has("rel-link", "a symlink on the master, a file on the slave"),
        "{diffs:#?}"
    );
    // verify copied nothing.
    assert!(!exists(&s.join("with space/and more spaces.txt")));
    // A plain sync trusts what it sent before; --rescan-slave re-reads the slave and repairs
    // it all (--checksum: the silent corruption too), and verify agrees.
    let r = g.sync_args(&["--rescan-slave", "--checksum"]);
    assert!(
        n(&r, "files_sent") <= 3,
        "the repair re-sent more than the damage: {r}"
    );
    let out = g.ok(&["verify", ms, ss, "--checksum"]);
    assert!(out.contains("equal"), "{out}");
}

/// A hard-link group split on the slave (its names became separate copies with the same
/// content and attributes) or merged (two separate files linked together): verify names it
/// and exits 1; `sync --once --rescan-slave` restores the master's groups.
#[test]
fn verify_compares_hard_link_groups_and_rescan_repairs_them() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    write(&m.join("a"), b"shared");
    fs::hard_link(m.join("a"), m.join("dir-b")).unwrap();
    write(&m.join("d/c"), b"twin");
    write(&m.join("d/e"), b"twin");
    set_mtime(&m.join("d/c"), 1_600_000_000, 0);
    set_mtime(&m.join("d/e"), 1_600_000_000, 0);
    g.sync_equal();
    assert!(g.ok(&["verify", ms, ss]).contains("equal"));

    // Split: dir-b becomes a copy of a (same bytes, mode, mtime).
    let md = fs::symlink_metadata(s.join("a")).unwrap();
    fs::remove_file(s.join("dir-b")).unwrap();
    fs::copy(s.join("a"), s.join("dir-b")).unwrap();
    set_mtime(
        &s.join("dir-b"),
        std::os::unix::fs::MetadataExt::mtime(&md),
        std::os::unix::fs::MetadataExt::mtime_nsec(&md) as u32,
    );
    // Merged: d/e becomes another name of d/c.
    fs::remove_file(s.join("d/e")).unwrap();
    fs::hard_link(s.join("d/c"), s.join("d/e")).unwrap();
    let o = g.run(&["verify", ms, ss]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for p in ["a:", "dir-b:", "d/c:", "d/e:"] {
        assert!(
            out.lines()
                .any(|l| l.contains(p) && l.contains("hard links differ")),
            "{p} not named: {out}"
        );
    }
    // The trees' other facts are equal: only the groups differ.
    assert!(
        !out.contains("content") && !out.contains("missing"),
        "{out}"
    );

    g.sync_args(&["--rescan-slave"]);
    assert_trees_equal(&m, &s);
    let out = g.ok(&["verify", ms, ss]);
    assert!(out.contains("equal"), "{out}");
}

/// The tests' own oracle: an entry it cannot read fails the comparison (before, an unopenable
/// file hashed as empty and an unreadable directory had no children, on both sides alike).
#[test]
fn the_tree_comparison_fails_on_what_it_cannot_read() {
    let g = Georep::new();
    let (a, b) = (g.path("a"), g.path("b"));
    write(&a.join("d/secret"), b"same");
    chmod(&a.join("d/secret"), 0o600);
    chmod(&a.join("d"), 0o700);
    fs::create_dir(&b).unwrap();
    copy_tree(&a, &b);
    assert_eq!(tree_differences(&a, &b), None, "equal trees, read as root");
    if !is_root() {
        eprintln!("SKIPPED (not root): reading the trees as another user");
        return;
    }
    // setfsuid is per thread: only this thread reads as nobody.
    let diff = std::thread::spawn(move || {
        // SAFETY: a plain syscall with no pointer, on this thread only.
        unsafe { libc::setfsuid(65534) };
        tree_differences(&a, &b)
    })
    .join()
    .unwrap();
    let diff = diff.expect("unreadable trees compared equal");
    assert!(diff.contains("Permission denied"), "{diff}");
}
