//! Minimal sequences the convergence harness (`converge.rs`) found, each named after its bug
//! and replayed in crawl mode (`sync --once`) and in a live journal session.

use crate::converge::{run_sequence, Crawl, Live, Replica, Replicator, Source};
use crate::util::fsops::{ops::*, FsOp};
use crate::util::{set_mtime, signal, wait_until, Georep, Session};
use rustix::process::Signal;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn crawl(ops: &[FsOp]) {
    let g = Georep::new();
    let (_, r) = run_sequence(&mut Crawl { g: &g }, Source::Replay(ops));
    if let Err(d) = r {
        panic!("crawl mode diverged: {d}");
    }
}

fn journal(ops: &[FsOp]) {
    let g = Georep::new();
    let mut l = Live {
        s: Session::start(&g),
        kill_writer: 0,
        kills: 0,
    };
    let (_, r) = run_sequence(&mut l, Source::Replay(ops));
    if let Err(d) = r {
        panic!("journal mode diverged: {d}");
    }
}

fn both(ops: &[FsOp]) {
    crawl(ops);
    journal(ops);
}

/// A file given a second name, then rewritten through the first with its mtime put back:
/// the crawl saw a ctime change on a name whose link count changed too.
#[test]
fn hard_link_added_then_rewritten_with_mtime_kept() {
    both(&[
        write(b"c", 1641, 6046674014260065969),
        sync(),
        link(b"c", b"new\nline"),
        rewrite(b"c", 15925961433306790276),
    ]);
}

/// A chmod, then a rewrite with the mtime put back: the mode change hid the content change.
#[test]
fn chmod_then_rewritten_with_mtime_kept() {
    both(&[
        write(b"c", 1641, 6046674014260065969),
        sync(),
        chmod(b"c", 0o755),
        rewrite(b"c", 15925961433306790276),
    ]);
}

/// A directory renamed out of a directory that is then removed: the stale child it carried
/// was skipped as "taken along" by the removed directory's delete, and stayed on the slave.
#[test]
fn child_of_a_directory_renamed_out_of_a_deleted_one_is_deleted() {
    both(&[
        mkdir_p(b".hidden/latin1-\xe9/new\nline/new\nline"),
        sync(),
        rm_r(b".hidden/latin1-\xe9/new\nline"),
        rename(b".hidden/latin1-\xe9", b"x y"),
        rm_r(b".hidden"),
    ]);
}

/// `rm -r D` then new directories elsewhere: ext4 hands D's inode to one of them at once,
/// which was taken for a rename of D, and D's children stayed under the new name.
#[test]
fn inode_reused_by_a_new_directory_is_not_a_rename() {
    both(&[
        mkdir_p(b".hidden/-dash"),
        mkdir_p(b".hidden/x y/d/.hidden"),
        sync(),
        rm_r(b".hidden"),
        write(b"sub", 1855, 17353328695183600206),
        mkdir_p(b"long/d/a"),
    ]);
}

/// A file renamed (through a hard link and an unlink) and rewritten with its mtime put back:
/// a rename's ctime change hid the rewrite's.
#[test]
fn renamed_then_rewritten_with_mtime_kept() {
    both(&[
        write(b"-dash", 1521, 4697359091137698056),
        sync(),
        link(b"-dash", b"\xc3\xa9t\xc3\xa9"),
        unlink(b"-dash"),
        rewrite(b"\xc3\xa9t\xc3\xa9", 17896105596410583708),
    ]);
}

/// Runs `behind` while the journal writer is stopped (SIGSTOP), so that it reads those events
/// after the tree has moved on, as a busy writer does; then `after` once it caught up. The
/// slave must converge.
fn writer_behind(prepare: impl Fn(&Path), behind: impl Fn(&Path), after: impl Fn(&Path)) {
    let g = Georep::new();
    let m = g.master();
    prepare(&m);
    let s = Session::start(&g);
    s.converge("start");
    let pid = s.writer_pid();
    signal(pid, Signal::STOP);
    behind(&m);
    signal(pid, Signal::CONT);
    // The writer has read the backlog once a marker written after it is journaled.
    let seq = s.status()["journal_seq"].as_u64().unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(10), || s.status()["journal_seq"]
            .as_u64()
            .unwrap_or(0)
            > seq + 1),
        "the writer never caught up: {}",
        s.status()
    );
    after(&m);
    s.converge("after the writer caught up");
}

/// `writer_behind`'s `prepare` for a tree of directories only.
fn dirs<'a>(paths: &'a [&'a str]) -> impl Fn(&Path) + 'a {
    move |m| {
        for d in paths {
            fs::create_dir_all(m.join(d)).unwrap();
        }
    }
}

/// Seed 111 of the journal harness: a directory made and renamed before its MKDIR was read;
/// the watch added by its old name landed on the directory that took the name since, the
/// rename carried that watch along, and the moved directory went unwatched for good.
#[test]
fn writer_late_watch_lands_on_the_directory_that_took_the_name() {
    writer_behind(
        dirs(&[]),
        |m| {
            fs::create_dir(m.join(".hidden")).unwrap();
            fs::rename(m.join(".hidden"), m.join("sub")).unwrap();
            fs::create_dir(m.join(".hidden")).unwrap();
        },
        |m| fs::create_dir_all(m.join("sub/made-after/deeper")).unwrap(),
    );
}

/// Seed 1054 of the journal harness: a directory made inside a watched one that was renamed
/// before the MKDIR was read: its watch failed (name gone), the parent's rename carried the
/// parent's watch only, and nothing beneath the new directory was journaled again.
#[test]
fn writer_late_child_of_a_renamed_directory_is_watched_where_it_went() {
    writer_behind(
        dirs(&["e/b", "l"]),
        |m| {
            fs::create_dir(m.join("e/b/child")).unwrap();
            fs::rename(m.join("e/b"), m.join("l/dash")).unwrap();
        },
        |m| fs::create_dir_all(m.join("l/dash/child/made-after")).unwrap(),
    );
}

/// Seed 370072 of the journal harness: a directory made, then replaced by a watched directory
/// renamed over it, before the MKDIR was read. The watch added for the new name was the moved
/// directory's own (one watch per inode), and re-pointing it there early put a rename out of
/// the moved directory, still queued, under the new name: what had been removed inside the
/// moved-out child stayed on the slave.
#[test]
fn writer_late_watch_on_a_directory_renamed_over_the_new_one_keeps_its_old_name() {
    writer_behind(
        |m| {
            dirs(&["q/sub/inner", "q/stays", "p"])(m);
            fs::write(m.join("q/sub/gone"), b"x").unwrap();
            std::os::unix::fs::symlink("target", m.join("q/sub/inner/gone-too")).unwrap();
        },
        |m| {
            fs::remove_file(m.join("q/sub/gone")).unwrap();
            fs::remove_file(m.join("q/sub/inner/gone-too")).unwrap();
            fs::create_dir(m.join("p/d")).unwrap();
            fs::rename(m.join("q/sub"), m.join("sub")).unwrap();
            fs::rename(m.join("q"), m.join("p/d")).unwrap();
        },
        |m| {
            fs::write(m.join("sub/inner/after"), b"y").unwrap();
            fs::write(m.join("p/d/stays/after"), b"z").unwrap();
        },
    );
}

/// Found with the fix above (seed 370072 again): a watched directory moved into a directory
/// made before its MKDIR was read. The rename's MOVED_TO went to an unwatched directory, so
/// only its MOVED_FROM, a removal, is queued: the watch found beneath the new directory must
/// be named there (and what it holds recorded), or the removal takes it away.
#[test]
fn writer_late_watch_on_a_directory_moved_into_a_new_one_is_named_there() {
    writer_behind(
        dirs(&["sub/inner", "l"]),
        |m| {
            fs::create_dir(m.join("l/new")).unwrap();
            fs::rename(m.join("sub"), m.join("l/new/d")).unwrap();
        },
        |m| {
            fs::write(m.join("l/new/d/after"), b"y").unwrap();
            fs::write(m.join("l/new/d/inner/after"), b"z").unwrap();
        },
    );
}

/// Seed 370072 once more: the same, with the new directory renamed and the watched one moved
/// on before any of it was read. The watches beneath the moved directory kept their old
/// names and went with its MOVED_FROM: a directory moved out of it later came back as a new
/// one, and its former place on the slave was never emptied.
#[test]
fn writer_late_watch_moved_into_a_new_directory_takes_the_watches_beneath_it_along() {
    writer_behind(
        |m| {
            dirs(&["sub/sub", "l", "c"])(m);
            std::os::unix::fs::symlink("target", m.join("sub/sub/link")).unwrap();
            fs::write(m.join("sub/file"), b"x").unwrap();
        },
        |m| {
            fs::create_dir_all(m.join("l/d/.hidden")).unwrap();
            fs::rename(m.join("sub"), m.join("l/d/.hidden/d")).unwrap();
            fs::remove_file(m.join("l/d/.hidden/d/sub/link")).unwrap();
            fs::rename(m.join("l/d"), m.join("c/dash")).unwrap();
            fs::rename(m.join("c/dash/.hidden/d/sub"), m.join("sub")).unwrap();
            fs::rename(m.join("c/dash/.hidden/d"), m.join("p")).unwrap();
        },
        |m| {
            fs::write(m.join("sub/after"), b"y").unwrap();
            fs::write(m.join("p/after"), b"z").unwrap();
        },
    );
}

/// Seed 380059 of the journal harness: a hard link made, written through and removed before
/// the writer read its creation. Gone by then, it looked like any short-lived new file, and
/// the write through it to the other name was never shipped. Now such a name is UNSEEN, and a
/// change through it makes the worker crawl.
#[test]
fn a_hard_link_written_through_and_removed_before_the_writer_looked_updates_the_other_name() {
    writer_behind(
        |m| {
            fs::create_dir_all(m.join("d")).unwrap();
            fs::write(m.join("d/f"), vec![7u8; 4933]).unwrap();
        },
        |m| {
            fs::hard_link(m.join("d/f"), m.join("l")).unwrap();
            fs::OpenOptions::new()
                .write(true)
                .open(m.join("l"))
                .unwrap()
                .set_len(73)
                .unwrap();
            fs::remove_file(m.join("l")).unwrap();
        },
        |_| {},
    );
}

/// Journal seed 1200413 (journal and gaps modes): a hard link made, written through (in
/// place), unlinked and made a directory, all in one window. No record names the other name,
/// the index knows nothing of the link, and the name no longer leads to the inode: the window
/// now asks for a crawl, which finds the other name changed.
#[test]
fn a_hard_link_written_through_and_replaced_by_a_directory_updates_the_other_name() {
    writer_behind(
        |m| fs::write(m.join("latin1-\u{e9}"), vec![3u8; 4335]).unwrap(),
        |m| {
            fs::hard_link(m.join("latin1-\u{e9}"), m.join("new\nline")).unwrap();
            fs::write(m.join("new\nline"), vec![9u8; 2265]).unwrap();
            fs::remove_file(m.join("new\nline")).unwrap();
            fs::create_dir_all(m.join("new\nline/was-a-file")).unwrap();
        },
        |_| {},
    );
}

/// Takeover seed 1400105: a hard link made in a new directory before the writer watched it,
/// written through and removed again. No event names the other name, and the directory's
/// scan finds nothing; it is empty but changed since it was made, which now records a GAP
/// (a crawl finds the other name changed).
#[test]
fn a_hard_link_written_and_removed_in_a_directory_not_watched_yet_updates_the_other_name() {
    writer_behind(
        |m| fs::write(m.join("x y"), vec![5u8; 3000]).unwrap(),
        |m| {
            fs::create_dir(m.join("d")).unwrap();
            // A tick of the filesystem's clock later: within the one it was made in, the
            // directory's mtime would not tell that it changed (a limit of this check; the
            // scrub finds the rest).
            std::thread::sleep(Duration::from_millis(20));
            fs::hard_link(m.join("x y"), m.join("d/l")).unwrap();
            fs::OpenOptions::new()
                .append(true)
                .open(m.join("d/l"))
                .unwrap()
                .write_all(&[6u8; 1044])
                .unwrap();
            fs::remove_file(m.join("d/l")).unwrap();
        },
        |_| {},
    );
}

/// Harness, replica takeover, seed 1: a file rewritten on both replicas within one clock tick
/// has the same size and mtime (to the ns) on both; the takeover adopted the slave's older
/// version on size and mtime. A file changed since the previous Active's stime is checked by
/// its hash now.
#[test]
fn takeover_checks_a_recent_file_with_the_same_size_and_mtime() {
    let g = Georep::new();
    let mut r = Replica::new(&g, 0);
    for i in 0..2 {
        crate::util::write(&r.brick(i).join("f"), b"first version");
        crate::util::write(&r.brick(i).join("old"), b"unchanged");
        set_mtime(&r.brick(i).join("f"), 1_700_000_000, 5);
    }
    if let Err(d) = r.settle() {
        panic!("n1 did not converge: {d}");
    }
    // The second replica holds a newer version the first never shipped: same size and mtime.
    let f2 = r.brick(1).join("f");
    crate::util::write(&f2, b"other version");
    set_mtime(&f2, 1_700_000_000, 5);
    r.kill_active();
    if let Err(d) = r.settle() {
        panic!("after the takeover: {d}");
    }
}

/// Takeover seed 1500266: a recently changed file the slave holds in the same content (here
/// empty and one byte) lacks an attribute the Active never shipped. The seed marked its row
/// changed, then wrote it again once the slave's hash matched, and the mark was lost: the
/// attribute never went. Both rows now keep the mark.
#[test]
fn takeover_sends_an_attribute_the_previous_active_never_shipped() {
    let g = Georep::new();
    let mut r = Replica::new(&g, 0);
    for i in 0..2 {
        crate::util::write(&r.brick(i).join("e"), b"");
        crate::util::write(&r.brick(i).join("f"), b"x");
    }
    if let Err(d) = r.settle() {
        panic!("n1 did not converge: {d}");
    }
    for f in ["e", "f"] {
        let p = r.brick(1).join(f);
        if rustix::fs::setxattr(&p, "user.a", b"1", rustix::fs::XattrFlags::empty()).is_err() {
            eprintln!("no user xattrs here");
            return;
        }
    }
    // Journaled on n2 before the takeover, so its crawl covers the change (no window after it
    // names these files): only the seed's comparison of attributes leads to them.
    std::thread::sleep(Duration::from_secs(2));
    r.kill_active();
    if let Err(d) = r.settle() {
        panic!("after the takeover: {d}");
    }
}

/// Harness, journal seed 2004: a file made in a directory that was renamed before the worker
/// planned the window, the RENAME record coming in the next window: the window found the file
/// gone and nothing said where, and the next window moved the directory without it. Now the
/// window is planned again once the RENAME is journaled.
#[test]
fn journal_window_missing_its_rename_is_planned_again_with_it() {
    planned_before_its_rename(
        &["d"],
        |m| crate::util::write(&m.join("d/x"), b"made just before its directory moved"),
        ("CREATE", "d/x"),
        ("d", "e"),
    );
}

/// Journal seed 91173: an unlink planned after its directory's parent was renamed on disk
/// (that rename's record still behind the writer). The slave's directory got a new mtime from
/// the delete, the directory could not be read at its old name to set it back, and the index
/// row kept vouching for the old one: the directory moved along with the rename unchanged.
#[test]
fn a_directory_changed_by_a_delete_after_it_moved_is_set_again_where_it_went() {
    planned_before_its_rename(
        &["p/d/x"],
        |m| fs::remove_file(m.join("p/d/x")).unwrap(),
        ("UNLINK", "p/d/x"),
        ("p", "q"),
    );
}

/// With the worker stopped, `change` is made and journaled (`record`); then `rename` happens
/// on disk while the writer is stopped, so the worker plans the window of `change` without the
/// rename's record, which comes in a later window. The slave must converge. `prepare` makes
/// directories first, and a file for each path ending in `/x`.
fn planned_before_its_rename(
    prepare: &[&str],
    change: impl Fn(&Path),
    record: (&str, &str),
    rename: (&str, &str),
) {
    planned_before(
        |m| {
            for p in prepare {
                match p.strip_suffix("/x") {
                    Some(dir) => {
                        fs::create_dir_all(m.join(dir)).unwrap();
                        crate::util::write(&m.join(p), b"there before the session");
                    }
                    None => fs::create_dir_all(m.join(p)).unwrap(),
                }
            }
        },
        change,
        record,
        |m| fs::rename(m.join(rename.0), m.join(rename.1)).unwrap(),
        |_| {},
    );
}

/// The general form: after `prepare` and a first sync, `change` is made with the worker
/// stopped and journaled (`record`); `held` happens on disk while the writer is stopped too,
/// so the worker plans `change`'s window without `held`'s records; `later` happens after that
/// window, before the writer reads on. The slave must converge.
fn planned_before(
    prepare: impl Fn(&Path),
    change: impl Fn(&Path),
    record: (&str, &str),
    held: impl Fn(&Path),
    later: impl Fn(&Path),
) {
    let g = Georep::new();
    let m = g.master();
    prepare(&m);
    let s = Session::start(&g);
    s.converge("start");
    let (worker, writer) = (s.worker_pid(), s.writer_pid());
    signal(worker, Signal::STOP);
    change(&m);
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled(record.0, record.1)),
        "the writer never journaled {} {}",
        record.0,
        record.1
    );
    // `held` happens on disk, but its records wait behind the stopped writer.
    signal(writer, Signal::STOP);
    held(&m);
    let seq = s.status()["journal_seq"].as_u64().unwrap_or(0);
    signal(worker, Signal::CONT);
    // Give the worker the window without `held` (it moves journal_seq if it ships it as
    // complete; an incomplete window waits, so this wait ends by its bound).
    wait_until(Duration::from_millis(500), || {
        s.status()["journal_seq"].as_u64().unwrap_or(0) > seq
    });
    later(&m);
    signal(writer, Signal::CONT);
    s.converge("after the writer caught up");
}

/// Journal seed 92095: a hybrid crawl shipped a directory made inside a new directory that
/// was not watched yet; it was renamed away before the watch came. The writer never saw it
/// (the parent's scan found nothing, the rename arrived as a move in from outside) and no
/// record named it again: the slave kept it under its first name for good.
#[test]
fn a_name_a_crawl_shipped_from_an_unwatched_directory_and_moved_away_is_not_left_behind() {
    // Moved away before the writer (still stopped) could watch F.
    crawl_ships_from_an_unwatched_directory_then(|m| {
        fs::rename(m.join("F/x"), m.join(".hidden")).unwrap()
    });
}

/// A hybrid crawl ships "F/x", made in a directory "F" the writer has not watched yet (it is
/// stopped); then `moves` runs on the master, the writer catches up, and the slave must
/// converge.
fn crawl_ships_from_an_unwatched_directory_then(moves: impl Fn(&Path)) {
    let g = Georep::new();
    let m = g.master();
    fs::create_dir_all(m.join("d")).unwrap();
    let s = Session::start(&g);
    s.converge("start");
    let (worker, writer) = (s.worker_pid(), s.writer_pid());
    // A window the disk is ahead of (d/y moved with d, the rename's record held back) waits,
    // then takes a hybrid crawl: the crawl runs while the writer is stopped.
    signal(worker, Signal::STOP);
    crate::util::write(&m.join("d/y"), b"y");
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled("CREATE", "d/y")),
        "the writer never journaled d/y"
    );
    signal(writer, Signal::STOP);
    fs::rename(m.join("d"), m.join("e")).unwrap();
    fs::create_dir_all(m.join("F/x")).unwrap();
    let crawls = s.status()["hybrid_crawls"].as_u64().unwrap_or(0);
    signal(worker, Signal::CONT);
    assert!(
        wait_until(Duration::from_secs(20), || {
            s.status()["hybrid_crawls"].as_u64().unwrap_or(0) > crawls
                && g.slave().join("F/x").is_dir()
                && s.idle()
        }),
        "no hybrid crawl shipped F/x: {}",
        s.status()
    );
    moves(&m);
    signal(writer, Signal::CONT);
    s.converge("after the writer caught up");
}

/// Journal seed 390020: the same, with the new directory renamed afterwards (the crawl had
/// shipped it under its first name). The check for such leftovers looked for the index's rows
/// under the directory's new name, where the index has none: the old name, moved along by the
/// rename, stayed on the slave.
#[test]
fn a_name_a_crawl_shipped_from_an_unwatched_directory_then_renamed_is_not_left_behind() {
    // Renamed inside F before the writer (still stopped) could watch it, then F renamed.
    crawl_ships_from_an_unwatched_directory_then(|m| {
        fs::rename(m.join("F/x"), m.join("F/y")).unwrap();
        fs::rename(m.join("F"), m.join("G")).unwrap();
    });
}

/// Journal seed 93236: a hard link made in a new directory before the writer watched it, and
/// written through; the writer's scan of the directory found it and recorded a plain CREATE,
/// the name was removed next, and the other name's new content was never shipped.
#[test]
fn a_hard_link_written_in_a_directory_not_watched_yet_updates_its_other_name() {
    let g = Georep::new();
    let m = g.master();
    crate::util::write(&m.join("f"), b"the first version of f, long enough");
    let s = Session::start(&g);
    s.converge("start");
    let (worker, writer) = (s.worker_pid(), s.writer_pid());
    signal(worker, Signal::STOP);
    signal(writer, Signal::STOP);
    fs::create_dir(m.join("c")).unwrap();
    fs::hard_link(m.join("f"), m.join("c/a")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("c/a"))
        .unwrap()
        .set_len(13)
        .unwrap();
    signal(writer, Signal::CONT);
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled("MKDIR", "c")),
        "the writer never journaled c"
    );
    fs::remove_file(m.join("c/a")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled("UNLINK", "c/a")),
        "the writer never journaled the unlink"
    );
    signal(worker, Signal::CONT);
    s.converge("after the link went");
}

/// Journal seed 95140: a window waiting for the record that explains a missing path (an event
/// lost, here a record for a name that never was) must take a crawl after a while. The writer's
/// markers (one a second), like the records of a busy tree, counted as the window growing and
/// kept it waiting for good.
#[test]
fn a_window_waiting_for_a_lost_record_crawls_although_markers_keep_coming() {
    let g = Georep::new();
    let m = g.master();
    crate::util::write(&m.join("kept"), b"kept");
    let s = Session::start(&g);
    s.converge("start");
    let crawls = s.status()["hybrid_crawls"].as_u64().unwrap_or(0);
    let journal = georep::journal::JournalStore::open(&s.brick_dir().join("journal.db")).unwrap();
    let ghost = georep::protocol::RelPath::new(b"ghost".to_vec()).unwrap();
    journal
        .append(&[georep::journal::Record::new(
            georep::journal::RecOp::Create,
            ghost,
        )])
        .unwrap();
    // A busy tree: a change record every 200 ms keeps the window growing.
    let mut n = 0u32;
    assert!(
        wait_until(Duration::from_secs(20), || {
            n += 1;
            crate::util::write(&m.join("busy"), format!("write {n}").as_bytes());
            std::thread::sleep(Duration::from_millis(200));
            s.status()["hybrid_crawls"].as_u64().unwrap_or(0) > crawls
        }),
        "the window kept waiting: {}",
        s.status()
    );
    s.converge("after the crawl");
}

/// Journal seed 98130 (all three live modes): a chmod through a name of a hard-linked file in a
/// directory renamed in the same window, then the directory removed. The record named the new
/// path, the index held the file under the old one, so the other name (which took the new mode)
/// was never compared.
#[test]
fn chmod_through_a_renamed_hard_link_then_removed_reaches_the_other_name() {
    both(&[
        write(b"-dash", 0, 2906342708782435087),
        mkdir_p(b"latin1-\xe9/.hidden/d"),
        rename(b"latin1-\xe9/.hidden", b"x y"),
        mkdir_p(b"latin1-\xe9/d/was-a-file"),
        link(b"-dash", b"x y/c"),
        mkdir_p(b"x y/latin1-\xe9"),
        sync(),
        rename(b"x y/latin1-\xe9", b"latin1-\xe9/d/was-a-file/new\nline"),
        rename(b"x y", b"latin1-\xe9/d/was-a-file/new\nline/sub"),
        chmod(b"latin1-\xe9/d/was-a-file/new\nline/sub/c", 0o755),
        rm_r(b"latin1-\xe9/d/was-a-file"),
    ]);
}

/// The same with content: a rewrite (mtime put back) through a hard link whose directory was
/// renamed, then the directory removed: the other name must get the new content.
#[test]
fn rewrite_through_a_renamed_hard_link_then_removed_reaches_the_other_name() {
    both(&[
        write(b"f", 1641, 6046674014260065969),
        mkdir_p(b"d"),
        link(b"f", b"d/c"),
        sync(),
        rename(b"d", b"e"),
        rewrite(b"e/c", 15925961433306790276),
        rm_r(b"e"),
    ]);
}

/// The same change through a renamed hard link that stays: both names end with the new mode
/// and content, still one inode on the slave.
#[test]
fn change_through_a_renamed_hard_link_that_stays_reaches_the_other_name() {
    both(&[
        write(b"f", 1641, 6046674014260065969),
        mkdir_p(b"d/sub"),
        link(b"f", b"d/sub/c"),
        sync(),
        rename(b"d/sub", b"d/sub2"),
        rename(b"d", b"e"),
        chmod(b"e/sub2/c", 0o700),
        rewrite(b"e/sub2/c", 15925961433306790276),
    ]);
}

/// Found in review of the fix above: a name made after its parent's old place was renamed away
/// maps back to that place, which now holds another name of the same file (moved along); the
/// moved name must still get the new content (its indexed name is poisoned and crawled).
#[test]
fn a_link_made_where_a_renamed_directory_was_and_written_through_updates_the_moved_name() {
    both(&[
        mkdir_p(b"a"),
        write(b"a/x", 1641, 6046674014260065969),
        link(b"a/x", b"p"),
        sync(),
        rename(b"a", b"b"),
        rename(b"b", b"c"),
        mkdir_p(b"b"),
        link(b"c/x", b"b/x"),
        append(b"b/x", 50),
    ]);
}

/// Journal seed 320219: a file renamed out of a directory, the directory removed and a file
/// made in its place, all before the worker read the records. The window that only knew of a
/// change inside the directory found a file at its path and replaced the slave's directory,
/// dropping the file the rename moved out; the RENAME that came next found nothing to move, and
/// the renamed file's hash check (nothing to send) left a row for a file the slave never got.
#[test]
fn a_directory_replaced_before_its_records_came_keeps_what_was_renamed_out_of_it() {
    let g = Georep::new();
    let m = g.master();
    fs::create_dir_all(m.join("L")).unwrap();
    crate::util::write(&m.join("L/f"), b"renamed out of L before L was replaced");
    let s = Session::start(&g);
    s.converge("start");
    let (worker, writer) = (s.worker_pid(), s.writer_pid());
    signal(worker, Signal::STOP);
    crate::util::write(&m.join("L/g"), b"a change inside L");
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled("CREATE", "L/g")),
        "the writer never journaled L/g"
    );
    // What follows happens on disk while its records wait behind the stopped writer.
    signal(writer, Signal::STOP);
    fs::rename(m.join("L/f"), m.join("x")).unwrap();
    fs::remove_dir_all(m.join("L")).unwrap();
    crate::util::write(&m.join("L"), b"a file now");
    let seq = s.status()["journal_seq"].as_u64().unwrap_or(0);
    signal(worker, Signal::CONT);
    wait_until(Duration::from_millis(500), || {
        s.status()["journal_seq"].as_u64().unwrap_or(0) > seq
    });
    signal(writer, Signal::CONT);
    s.converge("after the records came");
}

/// Journal seed 460291 (issue 12): a hard link made in a directory that was created and
/// removed before the journal writer could watch it, and the file touched and written through
/// that link. inotify reports those only to the (unwatched) directory, so no record named the
/// file's other name, which kept its old mtime and content on the slave. A directory made and
/// removed unwatched is a gap now: the worker crawls.
#[test]
fn a_file_changed_through_a_link_in_a_directory_gone_before_it_was_watched_is_crawled() {
    writer_behind(
        |m| crate::util::write(&m.join("f"), b"the first version of f"),
        |m| {
            fs::create_dir(m.join("d")).unwrap();
            fs::hard_link(m.join("f"), m.join("d/l")).unwrap();
            fs::write(m.join("d/l"), b"written through the link").unwrap();
            set_mtime(&m.join("d/l"), 1_600_000_902, 239_797_704);
            fs::remove_dir_all(m.join("d")).unwrap();
        },
        |_| {},
    );
}

/// Journal seed 470285 (issue 12): a watched directory renamed to a name, moved on and
/// removed, while a new directory took that name, all before the writer read any of it. The
/// watch added for the directory now at the name moved with the old directory's queued rename
/// and went with its removal: nothing done in the new directory was journaled any more.
#[test]
fn a_watch_on_the_directory_now_at_a_name_stays_when_a_queued_rename_moves_the_old_one() {
    writer_behind(
        |m| {
            dirs(&["a/x"])(m);
            crate::util::write(&m.join("f"), b"the first version of f");
        },
        |m| {
            fs::rename(m.join("a/x"), m.join("n")).unwrap();
            fs::create_dir_all(m.join("a/h/w")).unwrap();
            fs::rename(m.join("n"), m.join("a/n")).unwrap();
            fs::rename(m.join("a/h"), m.join("n")).unwrap();
            fs::remove_dir(m.join("a/n")).unwrap();
        },
        |m| {
            fs::create_dir(m.join("n/made-after")).unwrap();
            fs::hard_link(m.join("f"), m.join("n/w/l")).unwrap();
            fs::write(m.join("n/w/l"), b"written through the link").unwrap();
        },
    );
}

/// Journal seed 490144 (issue 12): a write through one name of a hard-linked file whose other
/// name's directory was renamed in the same window. The plan poisoned that name and asked for
/// a crawl, but the window was incomplete and planned again, which dropped the crawl: the slave
/// kept the moved name as an old, unlinked copy.
#[test]
fn a_crawl_owed_by_a_window_planned_again_still_runs() {
    planned_before(
        |m| {
            crate::util::write(&m.join("f"), b"first version");
            fs::create_dir_all(m.join("d")).unwrap();
            fs::hard_link(m.join("f"), m.join("d/c")).unwrap();
            fs::create_dir_all(m.join("p")).unwrap();
        },
        // The indexed name d/c is gone (moved with d); f is written through its other name.
        |m| {
            fs::rename(m.join("d"), m.join("e")).unwrap();
            fs::write(m.join("f"), b"second version, longer").unwrap();
            crate::util::write(&m.join("p/x"), b"made before its directory moved");
        },
        ("DATA", "p/x"),
        // The rename of p is held back with the writer: the window is incomplete.
        |m| fs::rename(m.join("p"), m.join("q")).unwrap(),
        |_| {},
    );
}

/// Journal seed 490241 (issue 12): a file replaced by a directory while the writer was behind.
/// A window planned from the disk listed the new directory whole and shipped a child made and
/// removed before the writer watched it; the next window's UNLINK d + MKDIR d never named the
/// child, and the removal of d itself excused it from the leftover check.
#[test]
fn a_child_shipped_early_in_a_file_replaced_by_a_directory_is_not_left_behind() {
    planned_before(
        |m| crate::util::write(&m.join("d"), b"a file first"),
        |m| fs::write(m.join("d"), b"written, so d is in the next window").unwrap(),
        ("DATA", "d"),
        |m| {
            fs::remove_file(m.join("d")).unwrap();
            fs::create_dir_all(m.join("d/was-a-file")).unwrap();
        },
        // Made and removed before the writer watched d.
        |m| fs::remove_dir(m.join("d/was-a-file")).unwrap(),
    );
}

/// Journal seed 1000028: a directory renamed over another (`mv F/F d`, `d` emptied first) with
/// a file moved into it on the way, both in one window. The file beneath the new `d` was
/// compared with the old `d`'s row for it, found equal, and kept in the index, while the slave
/// removed it with the old tree: missing on the slave for good. Beneath a replaced directory
/// every entry is new now, as in the full crawl.
#[test]
fn writer_late_file_beneath_a_directory_renamed_over_another_reaches_the_slave() {
    writer_behind(
        |m| {
            dirs(&["d", "F/F"])(m);
            fs::write(m.join("d/f"), b"moved on the way").unwrap();
        },
        |m| {
            fs::rename(m.join("d/f"), m.join("F/F/f")).unwrap();
            fs::rename(m.join("F/F"), m.join("d")).unwrap();
        },
        |_| {},
    );
}

/// Journal-with-gaps seed 3000xxx (the run of 800 that found it; the shrunk log was lost with
/// its output): a name the slave has is removed, then made again as a hard link to another
/// file, written through and removed, all before the writer read the link's creation
/// (`UNSEEN`, then `DATA` and `UNLINK`). The window deleted the indexed name and never looked
/// for the other name the write had changed: no record names it.
#[test]
fn writer_late_write_through_a_link_made_at_an_indexed_name_reaches_the_other_name() {
    writer_behind(two_names, link_written_through_and_removed, |_| {});
}

/// "x y", and "ete", the name the link is made at.
fn two_names(m: &Path) {
    fs::write(m.join("x y"), b"the other name, as first shipped").unwrap();
    fs::write(m.join("ete"), b"the name the slave has").unwrap();
}

/// `ete` removed, made again as a hard link to "x y", written through and removed.
fn link_written_through_and_removed(m: &Path) {
    fs::remove_file(m.join("ete")).unwrap();
    fs::hard_link(m.join("x y"), m.join("ete")).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("ete"))
        .unwrap();
    f.write_all(b"THE OTHER NAME, WRITTEN THROUGH").unwrap();
    drop(f);
    fs::remove_file(m.join("ete")).unwrap();
}

/// The same, with the name made once more after the writer read the rest but before the
/// worker planned it: one window holds the link's `UNSEEN`, `DATA` and `UNLINK` and the new
/// file's `CREATE`. Compared with the old row, the new file was shipped and the other name
/// the write had changed was never looked at.
#[test]
fn write_through_a_link_at_an_indexed_name_made_again_in_one_window_reaches_the_other_name() {
    let g = Georep::new();
    let m = g.master();
    two_names(&m);
    let s = Session::start(&g);
    s.converge("start");
    let (worker, writer) = (s.worker_pid(), s.writer_pid());
    signal(worker, Signal::STOP);
    signal(writer, Signal::STOP);
    link_written_through_and_removed(&m);
    signal(writer, Signal::CONT);
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled("UNSEEN", "ete")),
        "the writer never found the link gone"
    );
    fs::write(m.join("ete"), b"a new file at the name").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s.journaled("CREATE", "ete")),
        "the writer never journaled the new file"
    );
    signal(worker, Signal::CONT);
    s.converge("after the worker planned the window");
}
