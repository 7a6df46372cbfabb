//! Continuous replication: the journal writer and the worker (`create` + `start --foreground`).

use crate::util::*;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::Duration;

#[test]
fn each_op_kind_propagates_while_running() {
    let g = Georep::new();
    let m = g.master();
    write(&m.join("seed.txt"), b"before create");
    let s = Session::start(&g);
    s.converge("initial hybrid crawl");
    assert_eq!(s.status()["hybrid_crawls"], 1);

    type Step = (&'static str, Box<dyn Fn(&Path)>);
    let steps: Vec<Step> = vec![
        ("create", Box::new(|m| write(&m.join("new.txt"), b"new"))),
        (
            "write",
            Box::new(|m| write(&m.join("new.txt"), b"rewritten")),
        ),
        (
            "append",
            Box::new(|m| {
                use std::io::Write;
                fs::OpenOptions::new()
                    .append(true)
                    .open(m.join("new.txt"))
                    .unwrap()
                    .write_all(b"+")
                    .unwrap()
            }),
        ),
        (
            "truncate",
            Box::new(|m| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(m.join("new.txt"))
                    .unwrap()
                    .set_len(2)
                    .unwrap()
            }),
        ),
        (
            "mkdir -p",
            Box::new(|m| fs::create_dir_all(m.join("a/b/c")).unwrap()),
        ),
        (
            "file in new dir",
            Box::new(|m| write(&m.join("a/b/c/deep.txt"), b"deep")),
        ),
        (
            "symlink",
            Box::new(|m| symlink("../new.txt", m.join("a/link")).unwrap()),
        ),
        (
            "hard link",
            Box::new(|m| fs::hard_link(m.join("new.txt"), m.join("a/hard")).unwrap()),
        ),
        ("chmod", Box::new(|m| chmod(&m.join("new.txt"), 0o600))),
        (
            "touch",
            Box::new(|m| set_mtime(&m.join("a/b/c/deep.txt"), 1_500_000_000, 7)),
        ),
        (
            "rename file",
            Box::new(|m| fs::rename(m.join("seed.txt"), m.join("a/seed-moved.txt")).unwrap()),
        ),
        (
            "rename dir",
            Box::new(|m| fs::rename(m.join("a/b"), m.join("b-moved")).unwrap()),
        ),
        (
            "delete",
            Box::new(|m| fs::remove_file(m.join("a/link")).unwrap()),
        ),
        (
            "rmdir tree",
            Box::new(|m| fs::remove_dir_all(m.join("b-moved")).unwrap()),
        ),
        (
            "file -> dir",
            Box::new(|m| {
                fs::remove_file(m.join("new.txt")).unwrap();
                write(&m.join("new.txt/inside"), b"x");
            }),
        ),
        (
            "moved in from outside",
            Box::new(|m| {
                let outside = m.parent().unwrap().join("outside-tree");
                write(&outside.join("sub/f"), b"came from outside");
                fs::rename(&outside, m.join("imported")).unwrap();
            }),
        ),
        (
            "moved out",
            Box::new(|m| {
                fs::rename(m.join("imported"), m.parent().unwrap().join("gone-out")).unwrap()
            }),
        ),
    ];
    for (what, f) in steps {
        f(&m);
        s.converge(what);
    }
    let st = s.status();
    assert_eq!(st["hybrid_crawls"], 1, "no re-crawl while running: {st}");
    assert_eq!(st["status"], "Active", "{st}");
    assert_eq!(st["crawl"], "Changelog Crawl", "{st}");
}

#[test]
fn renamed_large_directory_is_one_rename_on_the_slave() {
    let g = Georep::new();
    let s = Session::start(&g);
    for i in 0..5000 {
        write(&g.master().join(format!("big/f{i:04}")), b"x");
    }
    s.converge("5000 files");
    let before = fs::metadata(g.slave().join("big/f0042")).unwrap().ino();
    let data_before = s.status()["data"].as_u64().unwrap();
    fs::rename(g.master().join("big"), g.master().join("renamed")).unwrap();
    s.converge("rename");
    assert_eq!(
        fs::metadata(g.slave().join("renamed/f0042")).unwrap().ino(),
        before,
        "the slave renamed the directory instead of re-creating its files"
    );
    assert_eq!(
        s.status()["data"].as_u64().unwrap(),
        data_before,
        "no content was sent"
    );
}

#[test]
fn short_lived_file_ships_nothing() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    s.converge("start");
    s.stop();
    let data = s.status()["data"].as_u64().unwrap();
    // While shipping is stopped the journal records it all: one window, nothing to ship.
    let m = g.master();
    write(&m.join("tmp-file"), b"short-lived");
    write(&m.join("tmp-file"), b"short-lived, written again");
    fs::rename(m.join("tmp-file"), m.join("tmp-renamed")).unwrap();
    fs::remove_file(m.join("tmp-renamed")).unwrap();
    s.run();
    s.converge("create-write-rename-delete");
    assert!(wait_until(Duration::from_secs(10), || s.status()
        ["journal_seq"]
        .as_u64()
        > Some(1)));
    assert_eq!(
        s.status()["data"].as_u64().unwrap(),
        data,
        "nothing shipped"
    );
    assert!(!exists(&g.slave().join("tmp-renamed")));
}

#[test]
fn file_written_continuously_converges_once_quiet() {
    let g = Georep::new();
    let s = Session::start(&g);
    let p = g.master().join("growing.log");
    {
        use std::io::Write;
        let mut f = fs::File::create(&p).unwrap();
        let t = std::time::Instant::now();
        let mut i = 0u64;
        while t.elapsed() < Duration::from_millis(1500) {
            writeln!(f, "line {i}").unwrap();
            f.flush().unwrap();
            i += 1;
            if i % 100 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    s.converge("continuous writes");
}

#[test]
fn stop_and_start_resumes_from_the_journal_without_recrawl() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    write(&g.master().join("a"), b"1");
    s.converge("first");
    s.stop();
    assert_eq!(s.status()["status"], "Stopped");
    for i in 0..200 {
        write(&g.master().join(format!("while-stopped/{i}")), b"journaled");
    }
    fs::remove_file(g.master().join("a")).unwrap();
    s.run();
    s.converge("after restart");
    assert_eq!(
        s.status()["hybrid_crawls"],
        1,
        "History from the journal, not a crawl"
    );
}

/// The DR volume made again while the session was stopped (another volume id, empty): what
/// the old one had got is in no journal any more, and must reach the new one all the same (a
/// review found the worker emptied its index on the new id and then only followed the journal).
#[test]
fn a_slave_made_again_while_stopped_gets_everything() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    for i in 0..50 {
        write(
            &g.master().join(format!("old/{i}")),
            b"shipped to the old volume",
        );
    }
    s.converge("first");
    s.stop();
    fs::remove_dir_all(g.slave()).unwrap();
    fs::create_dir_all(g.slave()).unwrap();
    write(&g.master().join("while-stopped"), b"journaled");
    s.run();
    s.converge("onto the volume made again");
    assert!(s.log().contains("was recreated"), "{}", tail(&s.log(), 20));
}

/// A file's content and attributes are read when it is sent, not when it is planned. In between:
/// a hard-linked file's name replaced by another file must not take the file's other names with
/// it (they were planned as links to that name); a file whose other name is gone and whose mode
/// changed must not get the planned mode back through that name.
#[test]
fn hard_links_changed_between_plan_and_send() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    s.converge("start");
    s.stop();
    let (m, sl) = (g.master(), g.slave());
    // Sent first, slowly: the plan below is made long before "b" is read.
    g.ok(&[
        "config",
        m.to_str().unwrap(),
        sl.to_str().unwrap(),
        "bwlimit",
        "1M",
    ]);
    write_random(&m.join("a-slow"), 4 << 20, 3);
    write(&m.join("b"), b"inode A, the planned leader of its links");
    fs::hard_link(m.join("b"), m.join("c")).unwrap();
    write(&m.join("d"), b"linked twice, then once");
    fs::hard_link(m.join("d"), m.join("e")).unwrap();
    write(&m.join("z-other"), b"inode B");
    s.run();
    assert!(
        wait_until(Duration::from_secs(10), || {
            !files_being_received(&sl).is_empty()
        }),
        "a-slow never started arriving"
    );
    fs::rename(m.join("z-other"), m.join("b")).unwrap();
    fs::remove_file(m.join("e")).unwrap();
    chmod(&m.join("d"), 0o700);
    s.converge("links changed while a-slow was sent");
    assert_eq!(
        fs::read(sl.join("c")).unwrap(),
        b"inode A, the planned leader of its links"
    );
}

#[test]
fn worker_killed_resumes_and_writer_killed_forces_a_hybrid_crawl() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    s.converge("start");
    for i in 0..300 {
        write_random(&g.master().join(format!("burst/{i}")), 64 << 10, i);
    }
    // Killed once the burst has begun to arrive.
    assert!(wait_until(Duration::from_secs(10), || g
        .slave()
        .join("burst")
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())));
    s.kill9();
    s.run();
    s.converge("worker killed mid-burst");
    assert_eq!(
        s.status()["hybrid_crawls"],
        1,
        "the journal survived the worker"
    );

    // The journal writer dies: whatever happens until a new one runs is not journaled.
    signal(s.writer_pid(), rustix::process::Signal::KILL);
    s.kill9();
    write(&g.master().join("unjournaled"), b"made while nothing ran");
    fs::remove_dir_all(g.master().join("burst")).unwrap();
    s.run();
    s.converge("writer killed");
    assert_eq!(s.status()["hybrid_crawls"], 2, "a gap means a hybrid crawl");
}

#[test]
fn slave_unreachable_for_a_while_then_everything_arrives() {
    let g = Georep::new();
    let s = Session::start(&g);
    s.converge("start");
    // The DR host goes away: its volume is unavailable and the link is cut.
    let away = g.path("slave-away");
    fs::rename(g.slave(), &away).unwrap();
    for pid in pids_with_cmdline(&["agent", g.slave().to_str().unwrap()]) {
        signal(pid, rustix::process::Signal::KILL);
    }
    for i in 0..50 {
        write(&g.master().join(format!("during-outage/{i}")), b"queued");
    }
    assert!(
        wait_until(Duration::from_secs(15), || s.status()["status"] == "Faulty"),
        "status should say Faulty while the slave is missing: {}",
        s.status()
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            s.status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("slave root") && e.contains("mkdir -p"))
        }),
        "while it cannot reconnect, status says why and what to do: {}",
        s.status()
    );
    fs::rename(&away, g.slave()).unwrap();
    s.converge("after the outage");
    assert!(wait_until(Duration::from_secs(15), || s.status()["status"] == "Active"));
    assert_eq!(
        s.status()["hybrid_crawls"],
        1,
        "the journal covered the outage"
    );
}

struct QueueLimit(String);
impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/fs/inotify/max_queued_events", &self.0);
    }
}

/// A running session, converged, whose journal writer has an inotify queue of 16 events.
/// Needs root, and `g` made by `Georep::alone` (the limit applies to every writer started
/// meanwhile).
fn session_with_a_small_queue(g: &Georep) -> Session<'_> {
    assert!(
        is_root(),
        "this test needs root to lower fs.inotify.max_queued_events"
    );
    let old = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap();
    let _limit = QueueLimit(old.trim().to_string());
    fs::write("/proc/sys/fs/inotify/max_queued_events", "16").unwrap();
    // The writer's queue size is fixed when it starts: the limit stays until it runs.
    let s = Session::start(g);
    s.converge("start");
    // The worker read the writer's starting GAP: the writer's inotify instance exists.
    assert!(
        wait_until(Duration::from_secs(15), || s.status()["journal_seq"]
            .as_u64()
            > Some(0)),
        "the journal writer never started: {}",
        s.status()
    );
    s
}

/// Events lost in a queue overflow: a directory made meanwhile had no watch, so nothing
/// written in it later was journaled at all, and the watch of a renamed directory kept its
/// old path, so what was written in it was journaled under a name another directory has now.
/// After an overflow every directory is watched, and every watch named, from the tree.
#[test]
fn after_a_queue_overflow_every_directory_is_watched_under_its_current_name() {
    let g = Georep::alone();
    let m = g.master();
    fs::create_dir_all(m.join("dir/sub")).unwrap();
    // Watched from the start, so that writing in it queues events.
    fs::create_dir(m.join("flood")).unwrap();
    let s = session_with_a_small_queue(&g);
    let crawls = s.status()["hybrid_crawls"].as_u64().unwrap();
    let pid = s.writer_pid();
    signal(pid, rustix::process::Signal::STOP);
    for i in 0..100 {
        write(&m.join(format!("flood/{i}")), b"f");
    }
    fs::rename(m.join("dir"), m.join("moved")).unwrap();
    fs::create_dir_all(m.join("dir/sub")).unwrap();
    signal(pid, rustix::process::Signal::CONT);
    assert!(
        wait_until(Duration::from_secs(15), || s.status()["hybrid_crawls"]
            .as_u64()
            > Some(crawls)),
        "the overflow should have forced a hybrid crawl: {}",
        s.status()
    );
    s.converge("overflow");
    write(&m.join("dir/sub/new"), b"c");
    s.converge("written in a directory made during the overflow");
    write(&m.join("moved/after"), b"a");
    write(&m.join("moved/sub/after"), b"b");
    s.converge("written in the renamed directory after the overflow");
}

/// Needs root (to lower fs.inotify.max_queued_events); CI runs as root.
#[test]
fn queue_overflow_records_a_gap_and_a_crawl_repairs_it() {
    let g = Georep::alone();
    let s = session_with_a_small_queue(&g);
    for i in 0..3000 {
        write(&g.master().join(format!("flood/{}/{i}", i % 10)), b"f");
    }
    s.converge("flood");
    assert!(
        wait_until(Duration::from_secs(10), || s.status()["hybrid_crawls"]
            .as_u64()
            >= Some(2)),
        "an overflow should have forced a hybrid crawl: {}",
        s.status()
    );
    let logs = g.path("home/log");
    let mut found = false;
    for d in fs::read_dir(&logs).unwrap().flatten() {
        for f in fs::read_dir(d.path()).unwrap().flatten() {
            found |= fs::read_to_string(f.path())
                .unwrap_or_default()
                .contains("overflow");
        }
    }
    assert!(found, "the writer warns about the overflow in its log");
}

/// The seeds `GEOREP_MODEL_SEEDS` asks for (comma-separated), or 8 fixed ones when it is
/// unset. A value that names no seed, or has a part that is not a number, is an error: it
/// would run nothing and pass.
fn model_seeds(var: Option<&str>) -> Vec<u64> {
    let Some(v) = var else {
        return (1..=8).collect();
    };
    let seeds: Vec<u64> = v
        .split(',')
        .map(|x| {
            x.trim().parse().unwrap_or_else(|_| {
                panic!("GEOREP_MODEL_SEEDS={v:?}: {x:?} is not a seed (comma-separated numbers)")
            })
        })
        .collect();
    assert!(!seeds.is_empty(), "GEOREP_MODEL_SEEDS={v:?} names no seed");
    seeds
}

#[test]
fn model_seeds_that_are_not_numbers_are_an_error() {
    assert_eq!(model_seeds(None).len(), 8);
    assert_eq!(model_seeds(Some("3, 5")), vec![3, 5]);
    for bad in ["", "x", "3,", "3,x"] {
        let r = std::panic::catch_unwind(|| model_seeds(Some(bad)));
        assert!(r.is_err(), "GEOREP_MODEL_SEEDS={bad:?} was accepted");
    }
}

/// Random operations on the master while the worker runs; after quiescence the slave equals
/// the master. Seeds come from GEOREP_MODEL_SEEDS (default: 8 fixed seeds).
#[test]
fn randomized_model_converges() {
    let seeds = model_seeds(std::env::var("GEOREP_MODEL_SEEDS").ok().as_deref());
    for seed in seeds {
        let g = Georep::new();
        let s = Session::start(&g);
        s.converge("start");
        let m = g.master();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut log = Vec::new();
        for step in 0..150 {
            let op = random_op(&m, &mut rng);
            log.push(format!("{step}: {op}"));
            if rng.below(10) == 0 {
                std::thread::sleep(Duration::from_millis(rng.below(5)));
            }
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.converge("random ops")));
        if let Err(e) = r {
            panic!(
                "model test failed for seed {seed} (rerun: GEOREP_MODEL_SEEDS={seed}):\n{}\nops:\n{}",
                e.downcast_ref::<String>().cloned().unwrap_or_default(),
                log.join("\n")
            );
        }
    }
}

fn pick(rng: &mut Rng, m: &Path, dirs: bool) -> Option<std::path::PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![m.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            if d == m && e.file_name() == ".georep" {
                continue;
            }
            let md = fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
                if dirs {
                    all.push(e.path());
                }
            } else if !dirs {
                all.push(e.path());
            }
        }
    }
    all.sort();
    (!all.is_empty()).then(|| all[rng.below(all.len() as u64) as usize].clone())
}

fn random_dir(rng: &mut Rng, m: &Path) -> std::path::PathBuf {
    if rng.below(3) == 0 {
        m.to_path_buf()
    } else {
        pick(rng, m, true).unwrap_or_else(|| m.to_path_buf())
    }
}

fn random_op(m: &Path, rng: &mut Rng) -> String {
    let name = format!("n{}", rng.below(40));
    match rng.below(14) {
        0 | 1 => {
            let p = random_dir(rng, m).join(&name);
            if fs::symlink_metadata(&p).is_err() {
                let mut buf = vec![0u8; rng.below(20_000) as usize];
                rng.fill(&mut buf);
                write(&p, &buf);
            }
            format!("create {}", p.display())
        }
        2 => match pick(rng, m, false).filter(|p| fs::symlink_metadata(p).unwrap().is_file()) {
            Some(p) => {
                write(&p, format!("rewrite {}", rng.next()).as_bytes());
                format!("write {}", p.display())
            }
            None => "noop".into(),
        },
        3 => match pick(rng, m, false).filter(|p| fs::symlink_metadata(p).unwrap().is_file()) {
            Some(p) => {
                use std::io::Write;
                let _ = fs::OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .and_then(|mut f| f.write_all(b"appended"));
                format!("append {}", p.display())
            }
            None => "noop".into(),
        },
        4 => match pick(rng, m, false).filter(|p| fs::symlink_metadata(p).unwrap().is_file()) {
            Some(p) => {
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| f.set_len(rng.below(100)));
                format!("truncate {}", p.display())
            }
            None => "noop".into(),
        },
        5 => match pick(rng, m, false) {
            Some(p) => {
                let to = random_dir(rng, m).join(&name);
                let r = fs::rename(&p, &to);
                format!("rename {} -> {} ({r:?})", p.display(), to.display())
            }
            None => "noop".into(),
        },
        6 => match pick(rng, m, true) {
            Some(p) => {
                let to = random_dir(rng, m).join(&name);
                let r = fs::rename(&p, &to);
                format!(
                    "rename dir {} -> {} ({})",
                    p.display(),
                    to.display(),
                    r.is_ok()
                )
            }
            None => "noop".into(),
        },
        7 => match pick(rng, m, false) {
            Some(p) => {
                let _ = fs::remove_file(&p);
                format!("delete {}", p.display())
            }
            None => "noop".into(),
        },
        8 => {
            let p = random_dir(rng, m).join(&name);
            let _ = fs::create_dir(&p);
            format!("mkdir {}", p.display())
        }
        9 => match pick(rng, m, true) {
            Some(p) => {
                let _ = fs::remove_dir_all(&p);
                format!("rm -r {}", p.display())
            }
            None => "noop".into(),
        },
        10 => {
            let p = random_dir(rng, m).join(&name);
            let _ = symlink(format!("target-{}", rng.below(5)), &p);
            format!("symlink {}", p.display())
        }
        11 => match pick(rng, m, false).filter(|p| fs::symlink_metadata(p).unwrap().is_file()) {
            Some(p) => {
                let to = random_dir(rng, m).join(&name);
                let _ = fs::hard_link(&p, &to);
                format!("link {} -> {}", to.display(), p.display())
            }
            None => "noop".into(),
        },
        12 => match pick(rng, m, false).filter(|p| fs::symlink_metadata(p).unwrap().is_file()) {
            Some(p) => {
                chmod(&p, [0o600, 0o644, 0o755, 0o640][rng.below(4) as usize]);
                format!("chmod {}", p.display())
            }
            None => "noop".into(),
        },
        _ => match pick(rng, m, false) {
            Some(p) => {
                set_mtime(
                    &p,
                    1_600_000_000 + rng.below(1000) as i64,
                    rng.below(1_000_000_000) as u32,
                );
                format!("touch {}", p.display())
            }
            None => "noop".into(),
        },
    }
}

/// Needs root (to mount a small tmpfs as the slave); CI runs as root.
#[test]
fn failure_is_retried_and_stime_never_passes_it() {
    assert!(is_root(), "this test needs root to mount a small tmpfs");
    let g = Georep::new();
    let _m = Mount::tmpfs(&g.slave(), "1m");
    let s = Session::start(&g);
    s.converge("start");
    write_random(&g.master().join("too-big.bin"), 3 << 20, 1);
    assert!(
        wait_until(Duration::from_secs(15), || s.status()["failures"].as_u64()
            >= Some(1)),
        "the failed file is listed: {}",
        s.status()
    );
    let frozen = s.status()["stime_ns"].as_i64().unwrap();
    write(
        &g.master().join("later.txt"),
        b"arrives, but stime must not pass the failure",
    );
    assert!(wait_until(Duration::from_secs(10), || exists(
        &g.slave().join("later.txt")
    )));
    // The worker has read two more records (markers come every second): free to move stime,
    // it would have moved it by now.
    let seq = s.status()["journal_seq"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(10), || s.status()
        ["journal_seq"]
        .as_u64()
        .unwrap()
        >= seq + 2));
    assert_eq!(
        s.status()["stime_ns"].as_i64().unwrap(),
        frozen,
        "stime moved past a failure"
    );
    // The operator fixes the cause (here: the file shrinks); the retry goes through.
    write(&g.master().join("too-big.bin"), b"small now");
    s.converge("after the fix");
    assert!(
        wait_until(Duration::from_secs(15), || s.status()["failures"] == 0
            && s.status()["stime_ns"].as_i64().unwrap() > frozen),
        "failure cleared and stime moving again: {}",
        s.status()
    );
}

/// Issue 13: a full DR volume. The brick goes Faulty, naming the volume, the path and the fix
/// (in `status` and `status … detail`); nothing half-written is visible; once the volume has
/// room (here: the tmpfs grows), the failed path goes through, the brick is Active again and
/// nothing is left in the agent's temporary directory. Needs root (tmpfs).
#[test]
fn a_full_dr_volume_is_faulty_naming_it_and_converges_once_it_has_room() {
    assert!(is_root(), "this test needs root to mount a small tmpfs");
    let g = Georep::new();
    let _m = Mount::tmpfs(&g.slave(), "1m");
    let s = Session::start(&g);
    write(&g.master().join("fits"), b"fits");
    s.converge("start");
    // Made whole before it appears on the master, so no smaller version of it ever exists.
    write_random(&g.path("too-big.bin"), 3 << 20, 2);
    fs::rename(g.path("too-big.bin"), g.master().join("too-big.bin")).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || s.status()["status"] == "Faulty"),
        "the brick never went Faulty: {}",
        s.status()
    );
    let st = s.status();
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains("out of space")
            && err.contains("too-big.bin")
            && err.contains(g.slave().to_str().unwrap())
            && err.contains("free space"),
        "{st}"
    );
    let (ms, ss) = (
        g.master().to_str().unwrap().to_string(),
        g.slave().to_str().unwrap().to_string(),
    );
    let table = g.ok(&["status", &ms, &ss, "detail"]);
    assert!(
        table.contains("Faulty") && table.contains("out of space"),
        "{table}"
    );
    assert!(
        !exists(&g.slave().join("too-big.bin")),
        "a partial file is visible on the slave"
    );
    // Room again: the failed path is retried and goes through.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=16m"])
        .arg(g.slave())
        .status()
        .unwrap();
    assert!(grown.success());
    s.converge("once the DR volume has room");
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = s.status();
            st["status"] == "Active" && st["failures"] == 0 && st["last_error"].is_null()
        }),
        "still not Active: {}",
        s.status()
    );
    let tmp: Vec<_> = fs::read_dir(g.slave().join(".georep/tmp"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    assert!(
        tmp.is_empty(),
        "left in the agent's temp directory: {tmp:?}"
    );
}

#[test]
fn status_table_follows_the_session() {
    let g = Georep::new();
    let (m, sl) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), sl.to_str().unwrap());
    g.ok(&["create", ms, ss]);
    let t = g.ok(&["status"]);
    let header = "MASTER NODE  MASTER VOL";
    assert!(t.starts_with(header) && t.contains("LAST_SYNCED"), "{t}");
    assert!(t.contains("Created") && t.contains("N/A"), "{t}");
    let mut s = Session { g: &g, child: None };
    s.run();
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let written = secs();
    write(&m.join("f"), b"x");
    s.converge("start");
    assert!(wait_until(Duration::from_secs(5), || g
        .ok(&["status"])
        .contains("Changelog Crawl")));
    let t = g.ok(&["status", ms, ss]);
    let row = t.lines().nth(2).unwrap();
    assert!(row.starts_with("node1 ") && row.contains("Active"), "{t}");
    // LAST_SYNCED: a local date and time with its zone (UTC, or an offset), the same instant
    // as the JSON's UTC time.
    let synced: Vec<&str> = row.split_whitespace().rev().take(3).collect();
    let (date, time, zone) = (synced[2], synced[1], synced[0]);
    assert!(
        date.len() == 10 && date.starts_with("20") && time.len() == 8,
        "LAST_SYNCED is a date and time: {row}"
    );
    let zone_ok = zone == "UTC"
        || (zone.len() == 6
            && (zone.starts_with('+') || zone.starts_with('-'))
            && &zone[3..4] == ":");
    assert!(zone_ok, "LAST_SYNCED shows its zone: {row}");
    // The row against the facts: this node, this master and slave, a worker process running
    // for it, and a LAST_SYNCED between the write the slave has (f, on the slave) and now.
    let cells: Vec<&str> = row.split_whitespace().collect();
    let names = |cell: &str, full: &Path| {
        let full = full.to_string_lossy();
        match cell.split_once('…') {
            Some((head, tail)) => full.starts_with(head) && full.ends_with(tail),
            None => cell == full,
        }
    };
    assert_eq!(cells[0], g.node, "{row}");
    assert!(names(cells[2], &m) && names(cells[3], &sl), "{row}");
    assert!(exists(&sl.join("f")));
    assert!(
        !pids_with_cmdline(&["worker", ms]).is_empty(),
        "Active with no worker running: {t}"
    );
    let zoned = if zone == "UTC" { "+00:00" } else { zone };
    let shown = chrono::DateTime::parse_from_str(
        &format!("{date} {time} {zoned}"),
        "%Y-%m-%d %H:%M:%S %:z",
    )
    .unwrap()
    .timestamp();
    assert!(
        (written..=secs()).contains(&shown),
        "LAST_SYNCED {shown} is not between the write the slave has ({written}) and now: {row}"
    );
    assert!(t.lines().all(|l| l.chars().count() <= 150), "{t}");
    let j: serde_json::Value = serde_json::from_str(&g.ok(&["status", "--json"])).unwrap();
    let shown = g.ok(&[
        "config",
        ms,
        ss,
        "checkpoint",
        &format!("{date} {time} {zone}"),
    ]);
    assert!(shown.contains(&format!("{date} {time} {zone}")), "{shown}");
    let cp: serde_json::Value = serde_json::from_str(&g.ok(&["status", "--json"])).unwrap();
    if zone == "UTC" {
        assert_eq!(
            cp[0]["checkpoint_time_utc"],
            format!("{date}T{time}Z"),
            "the time shown is read back as the same instant: {row}"
        );
    }
    assert_eq!(j[0]["status"], "Active");
    assert_eq!(j[0]["crawl_status"], "Changelog Crawl");
    assert!(
        j[0]["last_synced_utc"].as_str().unwrap().ends_with('Z'),
        "{j}"
    );
    s.stop();
    let t = g.ok(&["status"]);
    assert!(t.contains("Stopped"), "{t}");
    assert!(
        pids_with_cmdline(&["worker", ms]).is_empty(),
        "Stopped with a worker running: {t}"
    );
}

/// Owner churn in a live session: owners and groups change again and again (with modes,
/// setuid cleared by chown and set again), on files, directories and symlinks; the slave ends
/// with every owner, group and mode the master has. Needs root (to chown).
#[test]
fn owner_churn_reaches_the_slave() {
    if !is_root() {
        eprintln!("SKIPPED (not root): owner churn needs chown");
        return;
    }
    let g = Georep::new();
    let m = g.master();
    for i in 0..20 {
        write(
            &m.join(format!("d{}/f{i}", i % 4)),
            format!("{i}").as_bytes(),
        );
    }
    symlink("d0/f0", m.join("link")).unwrap();
    let s = Session::start(&g);
    s.converge("start");
    let mut rng = Rng(7);
    for round in 0..5 {
        for _ in 0..40 {
            let i = rng.below(20);
            let p = m.join(format!("d{}/f{i}", i % 4));
            let (uid, gid) = (1000 + rng.below(5) as u32, 2000 + rng.below(5) as u32);
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).unwrap();
            if rng.below(3) == 0 {
                // chown cleared setuid; set it again (the agent must chown before chmod).
                chmod(&p, 0o4755);
            }
            let d = m.join(format!("d{}", rng.below(4)));
            std::os::unix::fs::lchown(&d, Some(1000 + rng.below(5) as u32), None).unwrap();
            std::os::unix::fs::lchown(m.join("link"), Some(3000 + rng.below(5) as u32), None)
                .unwrap();
        }
        s.converge(&format!("owner churn, round {round}"));
    }
}
