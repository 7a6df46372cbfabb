//! Links that fail the way real ones do, through a fault proxy in the SSH path (real OpenSSH
//! sshd): a connection blackholed mid-batch (half-open: the DR side never hears of it), a
//! connection cut on both sides, a path stalled past the keepalives, and a long link. Each
//! time replication resumes, nothing is lost, and the status says what happened. Also: the agent gives up a silent master by itself.

use crate::util::proxy::Proxy;
use crate::util::*;
use georep::protocol::frame;
use georep::protocol::*;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A session from `g.master()` to `g.slave()` over SSH through `proxy`.
fn session_through<'a>(g: &'a Georep, sshd: &Sshd, proxy: &Proxy) -> (Session<'a>, String) {
    let slave = format!("root@127.0.0.1:{}::{}", proxy.port, g.slave().display());
    let o = g
        .cmd()
        .args(["create", g.master().to_str().unwrap(), &slave, "push-pem"])
        .arg("--identity")
        .arg(&sshd.operator_key)
        .arg("--remote-georep")
        .arg(bin())
        .output()
        .unwrap();
    assert!(o.status.success(), "push-pem: {}", stderr(&o));
    // Striped (over loopback `auto` takes one channel): a cut, a stall or a blackhole must
    // lose nothing with several channels in flight either.
    g.ok(&[
        "config",
        g.master().to_str().unwrap(),
        &slave,
        "channels",
        "3",
    ]);
    let mut s = Session { g, child: None };
    s.run_with_slave(&slave);
    (s, slave)
}

/// The agents serving this session's connections (over SSH, each has further channels'
/// agents beside it: `channels`).
fn agents_for(g: &Georep) -> Vec<i32> {
    serving_agents(&g.slave())
}

/// Waits until the slave equals the master; how long that took. Panics with the log after
/// `limit`.
fn resumed(s: &Session<'_>, limit: Duration, what: &str) -> Duration {
    let t = Instant::now();
    if let Err(msg) = wait_trees_equal(&s.g.master(), &s.g.slave(), limit, &|| s.idle()) {
        let kept = s.keep_log();
        panic!(
            "{what}: not resumed within {limit:?}: {msg}\nstatus: {}\nlog: {}\n{}",
            s.status(),
            kept.display(),
            tail(&s.log(), 30)
        );
    }
    t.elapsed()
}

/// Review hole 7 (issue 13): a connection that goes silent mid-batch without either side
/// hearing of it. Before the fix the old agent kept the brick lock and every reconnection was
/// refused ("already applying") until TCP keepalive gave up, hours later. Now the master's SSH
/// keepalive notices within ~20 s, and its new connection ends the stale agent and takes over.
#[test]
fn a_link_blackholed_mid_batch_resumes_within_30_s_and_loses_nothing() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let mut proxy = Proxy::start(sshd.port);
    make_varied_tree(&g.master(), 1 << 20);
    let (s, _slave) = session_through(&g, &sshd, &proxy);
    s.converge("the first sync");
    assert_eq!(agents_for(&g).len(), 1);

    // Mid-batch: a large file is on its way when the link dies.
    write_random(&g.master().join("big/blob"), 256 << 20, 7);
    assert!(
        wait_until(Duration::from_secs(30), || !files_being_received(
            &g.slave()
        )
        .is_empty()),
        "the big file never started arriving"
    );
    let stale = agents_for(&g);
    assert_eq!(stale.len(), 1);
    let before = proxy.accepted();
    let cut = Instant::now();
    assert!(proxy.blackhole() >= 1);
    for i in 0..20 {
        write(
            &g.master().join(format!("after/{i}")),
            b"written after the cut",
        );
    }
    // The master gives up on the link and reconnects; its new connection ends the stale agent
    // at once (without that, the stale agent would last until its own 30 s silence limit).
    assert!(
        wait_until(Duration::from_secs(60), || proxy.accepted() > before),
        "the master never reconnected"
    );
    let reconnected = cut.elapsed();
    let alive =
        |pid: i32| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty());
    assert!(
        wait_until(Duration::from_secs(5), || !alive(stale[0])),
        "the stale agent outlived the master's reconnection ({reconnected:?} after the cut)"
    );
    let took = resumed(&s, Duration::from_secs(120), "after a half-open cut");
    let since_cut = cut.elapsed();
    eprintln!("half-open cut mid-batch: the master reconnected {reconnected:?} after the cut; replication resumed and converged {since_cut:?} after it ({took:?} of waiting)");
    // The new connection replaced the stale one: one agent, not two.
    assert_eq!(agents_for(&g).len(), 1, "the stale agent still runs");
    let st = s.status();
    assert_eq!(st["status"], "Active", "{st}");
    assert!(st["disconnects"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        st["last_disconnect"]
            .as_str()
            .is_some_and(|d| d.contains("127.0.0.1")),
        "the status should say which link was lost: {st}"
    );
    // The target: resumed within 30 s of the cut (the master's keepalive gives up after ~20 s).
    assert!(
        since_cut < Duration::from_secs(60),
        "resumed only after {since_cut:?}"
    );
}

/// A cut both sides see (a reset link): the master reconnects at once and converges.
#[test]
fn a_link_cut_mid_batch_resumes_and_loses_nothing() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let mut proxy = Proxy::start(sshd.port);
    make_varied_tree(&g.master(), 1 << 20);
    let (s, _slave) = session_through(&g, &sshd, &proxy);
    s.converge("the first sync");
    let before = proxy.accepted();
    write_random(&g.master().join("big/blob"), 128 << 20, 8);
    assert!(wait_until(Duration::from_secs(30), || {
        !files_being_received(&g.slave()).is_empty()
    }));
    assert!(proxy.cut() >= 1);
    write(&g.master().join("after"), b"x");
    resumed(&s, Duration::from_secs(60), "after a cut");
    assert!(proxy.accepted() > before, "the master never reconnected");
    assert!(
        wait_until(Duration::from_secs(10), || agents_for(&g).len() == 1),
        "{:?}",
        agents_for(&g)
    );
}

/// A path that stalls for longer than the keepalives (the master's SSH keepalive gives up
/// after ~20 s, the agent's silence limit is 30 s), mid-batch, then flows again: nothing is
/// lost and one agent is left.
#[test]
fn a_link_stalled_longer_than_the_keepalive_resumes_and_loses_nothing() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let proxy = Proxy::start(sshd.port);
    make_varied_tree(&g.master(), 1 << 20);
    let (s, _slave) = session_through(&g, &sshd, &proxy);
    s.converge("the first sync");
    write_random(&g.master().join("big/blob"), 128 << 20, 9);
    assert!(
        wait_until(Duration::from_secs(30), || !files_being_received(
            &g.slave()
        )
        .is_empty()),
        "the big file never started arriving"
    );
    proxy.stall(true);
    let stalled = Instant::now();
    for i in 0..20 {
        write(
            &g.master().join(format!("during/{i}")),
            b"written while the path stalled",
        );
    }
    std::thread::sleep(Duration::from_secs(35));
    proxy.stall(false);
    let took = resumed(&s, Duration::from_secs(120), "after a 35 s stall");
    eprintln!(
        "stall of 35 s mid-batch: converged {:?} after the path flowed again ({:?} after the stall began)",
        took,
        stalled.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(40), || agents_for(&g).len() == 1),
        "agents left: {:?}",
        agents_for(&g)
    );
    assert_eq!(s.status()["status"], "Active", "{}", s.status());
}

/// A long link (every chunk delayed 60 ms each way, so a round trip takes 120 ms or more):
/// a first sync and every kind of change arrive whole.
#[test]
fn a_long_link_converges_and_loses_nothing() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let proxy = Proxy::start(sshd.port);
    proxy.delay(60);
    make_varied_tree(&g.master(), 4 << 20);
    let (s, _slave) = session_through(&g, &sshd, &proxy);
    let t = Instant::now();
    s.converge("the first sync over a long link");
    let first = t.elapsed();
    let m = g.master();
    write_random(&m.join("new/big"), 8 << 20, 3);
    std::fs::rename(m.join("new"), m.join("renamed")).unwrap();
    write(&m.join("renamed/small"), b"small");
    std::fs::hard_link(m.join("renamed/small"), m.join("small-link")).unwrap();
    let t = Instant::now();
    s.converge("changes over a long link");
    eprintln!(
        "long link (60 ms each way per chunk): first sync {first:?}, changes {:?}",
        t.elapsed()
    );
}

fn enc(m: &Message) -> Vec<u8> {
    let mut v = Vec::new();
    frame::encode(m, &mut v);
    v
}

/// Starts `georep agent` on `g.slave()` after a replicate handshake; the caller keeps stdin.
fn handshaken_agent(g: &Georep, brick: &str) -> std::process::Child {
    handshaken_agent_with(g, brick, 0, Stdio::null())
}

/// The same, asking for a silence limit of `silence_ms` (0: the default), with `stdout`.
fn handshaken_agent_with(
    g: &Georep,
    brick: &str,
    silence_ms: u32,
    stdout: Stdio,
) -> std::process::Child {
    let mut c = g
        .cmd()
        .args(["agent", "--volume", g.slave().to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = PREAMBLE.to_vec();
    input.extend(enc(&Message::Hello(Hello {
        protocol: PROTOCOL_VERSION,
        georep_version: "test".into(),
        session: "s".into(),
        master_node: "tester".into(),
        brick: brick.into(),
        slave_volume: "v".into(),
        epoch: 0,
        compression: 0,
        replica_set: String::new(),
        trash_days: 0,
        mode: MODE_REPLICATE,
        silence_ms,
        xattrs: 0,
        channels: 1,
        shared_tree: false,
    })));
    c.stdin.as_mut().unwrap().write_all(&input).unwrap();
    c
}

/// Review hole 7 (issue 13): the agent gives up a master it has not heard from for the
/// silence limit the master asked for (here 6 s; `SILENCE_LIMIT`, 30 s, by default), so a
/// half-open connection cannot hold the brick lock for good. The control, run alongside: a
/// master that only heartbeats keeps its agent.
#[test]
fn the_agent_gives_up_a_silent_master_but_not_a_heartbeating_one() {
    let g = Georep::new();
    let t = Instant::now();
    let limit = Duration::from_secs(6);
    let ms = limit.as_millis() as u32;
    let mut silent = handshaken_agent_with(&g, "/silent", ms, Stdio::null());
    let mut beating = handshaken_agent_with(&g, "/beating", ms, Stdio::null());
    let mut silent_done = None;
    while t.elapsed() < limit + Duration::from_secs(15) {
        if silent_done.is_none() {
            if let Some(st) = silent.try_wait().unwrap() {
                silent_done = Some((st, t.elapsed()));
            }
        }
        let wrote = beating
            .stdin
            .as_mut()
            .unwrap()
            .write_all(&enc(&Message::Heartbeat));
        if wrote.is_err() || beating.try_wait().unwrap().is_some() {
            let mut err = String::new();
            use std::io::Read;
            beating
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!(
                "the heartbeating master's agent gave up after {:?}: {err}",
                t.elapsed()
            );
        }
        if silent_done.is_some() && t.elapsed() > limit + Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let Some((st, after)) = silent_done else {
        let _ = silent.kill();
        let _ = silent.wait();
        panic!("the silent master's agent never gave up");
    };
    let mut err = String::new();
    use std::io::Read;
    silent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!st.success());
    assert!(
        after >= limit && after < limit + Duration::from_secs(10),
        "gave up after {after:?}: {err}"
    );
    assert!(err.contains("no word from the peer for 6 s"), "{err}");
    drop(beating.stdin.take());
    let st = beating.wait().unwrap();
    assert!(st.success(), "the heartbeating agent ended badly: {st}");
}

/// Issue 18: an agent blocked writing a reply the dead link will never carry (here a listing
/// into a pipe nobody reads) cannot notice the silence itself; its watchdog ends the process,
/// so its locks (the replica set's Active claim among them) go with it.
#[test]
fn an_agent_blocked_on_a_dead_link_is_ended_by_its_watchdog() {
    let g = Georep::new();
    // A listing far larger than a pipe holds.
    let long = "x".repeat(200);
    for i in 0..3000 {
        write(&g.slave().join(format!("{i:05}-{long}")), b"");
    }
    let t = Instant::now();
    let limit = Duration::from_secs(3);
    let (rd, wr) = std::io::pipe().unwrap();
    let mut a = handshaken_agent_with(&g, "/blocked", limit.as_millis() as u32, wr.into());
    a.stdin
        .as_mut()
        .unwrap()
        .write_all(&enc(&Message::List {
            checksum: false,
            paths: None,
            xattrs: 0,
        }))
        .unwrap();
    // The reply fills the pipe; the master never reads it, nor sends another byte.
    let ended = wait_until(Duration::from_secs(40), || a.try_wait().unwrap().is_some());
    let after = t.elapsed();
    let _ = a.kill();
    let st = a.wait().unwrap();
    drop(rd);
    let mut err = String::new();
    use std::io::Read;
    a.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(ended, "the blocked agent still runs after {after:?}: {err}");
    assert_eq!(st.code(), Some(75), "{err}");
    assert!(
        err.contains("did not end on its own"),
        "the watchdog says why: {err}"
    );
    assert!(after >= limit, "ended after {after:?}, before its limit");
}

/// Found by the test above: two agents opening a new volume's `agent.db` at the same moment
/// (two bricks of a distributed volume starting together) could fail with "database is
/// locked", since switching a new SQLite file to WAL does not wait for the busy handler.
#[test]
fn agents_of_several_bricks_starting_at_once_on_a_new_volume_all_get_in() {
    for round in 0..20 {
        let g = Georep::new();
        let agents: Vec<_> = (0..8)
            .map(|i| handshaken_agent(&g, &format!("/brick{i}")))
            .collect();
        for (i, mut a) in agents.into_iter().enumerate() {
            drop(a.stdin.take());
            let out = a.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, agent {i}: {}",
                stderr(&out)
            );
        }
    }
}

/// Kills the session and its journal writer, so nothing records what happens next.
fn kill_all(s: &mut Session<'_>) {
    let writer = s.writer_pid();
    signal(writer, rustix::process::Signal::KILL);
    s.kill9();
    assert!(wait_until(Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{writer}")).exists()
    }));
}

fn copy_journal(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("journal.db{suffix}");
        let _ = std::fs::remove_file(to.join(&name));
        if from.join(&name).exists() {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
}

/// Review hole 2 (issue 13): journal.db came back numbered below the index's position (an
/// older copy, or a power loss that kept index.db's WAL but not journal.db's), so the restart
/// GAP got a sequence number the worker had already passed: it was never seen, and what changed
/// while nothing ran never reached the slave. Likewise a journal.db deleted and made anew. Now
/// the index remembers the journal's identity and the record at its position; any mismatch is
/// a hybrid crawl.
#[test]
fn a_journal_that_went_back_or_was_replaced_is_crawled_not_trusted() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    write(&g.master().join("a"), b"1");
    s.converge("start");
    let dir = s.brick_dir();
    let old = g.path("journal-copy");

    // An early copy of the journal, taken while nothing writes it.
    kill_all(&mut s);
    copy_journal(&dir, &old);
    s.run();
    for i in 0..100 {
        write(
            &g.master().join(format!("later/{i}")),
            b"moves the journal on",
        );
    }
    s.converge("after the copy");
    let crawls = s.status()["hybrid_crawls"].as_u64().unwrap();

    // The journal goes back to the copy; meanwhile the master changes, unjournaled.
    kill_all(&mut s);
    copy_journal(&old, &dir);
    write(
        &g.master().join("made-while-down"),
        b"only a crawl sees this",
    );
    std::fs::remove_file(g.master().join("a")).unwrap();
    s.run();
    s.converge("a journal that went back");
    assert!(
        s.status()["hybrid_crawls"].as_u64().unwrap() > crawls,
        "{}",
        s.status()
    );
    assert!(
        s.log().contains("journal.db went back"),
        "{}",
        tail(&s.log(), 20)
    );
    // Issue 16: a crawl due when the worker starts is planned while it connects.
    assert!(
        s.log().contains("hybrid crawl (planned while connecting)"),
        "{}",
        tail(&s.log(), 20)
    );

    // journal.db deleted: a new one, with another identity.
    kill_all(&mut s);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("journal.db{suffix}")));
    }
    write(&g.master().join("made-while-deleted"), b"x");
    s.run();
    s.converge("a journal made anew");
    assert!(
        s.log().contains("is not the journal the index followed"),
        "{}",
        tail(&s.log(), 20)
    );
}

/// Every entry of `root` (not `.georep`), by path.
fn names(root: &std::path::Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    snapshot(root).into_keys().collect()
}

/// Review hole 4 (issue 13): the role was checked at the handshake and at `BatchBegin`, so the
/// batch in flight (up to a million ops) went on writing into the promoted, writable volume and
/// was acknowledged. Now failover ends the replicating connection before it promotes: nothing
/// is applied after `failover` returns, with a batch in flight, not a paused session.
#[test]
fn failover_with_a_batch_in_flight_applies_nothing_after_the_promotion() {
    let g = Georep::new();
    let mut s = Session::start(&g);
    write(&g.master().join("first"), b"1");
    s.converge("start");
    // Many files at 1 MiB/s: a batch stays in flight for seconds.
    let (ms, ss) = (g.master(), g.slave());
    let (ms, ss) = (ms.to_str().unwrap(), ss.to_str().unwrap());
    g.ok(&["config", ms, ss, "bwlimit", "1M"]);
    g.ok(&["pause", ms, ss]);
    let burst = g.master().join("burst");
    std::fs::create_dir_all(&burst).unwrap();
    for i in 0..10_000 {
        std::fs::write(burst.join(i.to_string()), [b'x'; 1024]).unwrap();
    }
    g.ok(&["resume", ms, ss]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            std::fs::read_dir(g.slave().join("burst")).is_ok_and(|d| d.count() > 100)
        }),
        "the burst never started arriving"
    );
    // Read before failover: failover makes a session of its own in this test's one home.
    let status_file = s.brick_dir().join("status.json");
    let status = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap()
    };
    let o = g.run(&["failover", g.slave().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let at_promotion = names(&g.slave());
    let out = String::from_utf8_lossy(&o.stdout);
    let arrived = at_promotion.len();
    assert!(
        arrived < 10_000,
        "the whole burst arrived before the failover: the test proves nothing ({arrived})"
    );
    assert!(out.contains("ended 1 replicating connection"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    let later = names(&g.slave());
    let appeared: Vec<_> = later.difference(&at_promotion).take(5).collect();
    assert!(
        later == at_promotion,
        "{} entries appeared on the promoted volume after failover returned, e.g. {appeared:?}",
        later.difference(&at_promotion).count()
    );
    assert!(agents_for(&g).is_empty(), "{:?}", agents_for(&g));
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("failover"))
        }),
        "the master should say it is fenced: {}",
        status()
    );
    eprintln!(
        "failover with a batch in flight: {arrived} of 10000 entries had arrived; the master was told it is fenced {:?} after",
        t.elapsed()
    );
    s.kill9();
}

/// Issue 13, master-side faults: a brick whose filesystem is not mounted is an empty
/// mountpoint. Crawled as it is, it would delete the whole DR copy. The brick's identity
/// (`.georep/brick-id`) is missing there: the worker goes Faulty naming the brick, the slave
/// keeps everything, and replication resumes once the brick is back. The same for `sync --once`.
#[test]
fn an_unmounted_brick_never_empties_the_dr_copy() {
    let g = Georep::new();
    make_varied_tree(&g.master(), 1 << 20);
    let mut s = Session::start(&g);
    s.converge("start");
    let before = snapshot(&g.slave());
    assert!(before.len() > 50);

    // "Unmount": the brick's directory is replaced by an empty one while nothing runs.
    kill_all(&mut s);
    let away = g.path("brick-filesystem");
    std::fs::rename(g.master(), &away).unwrap();
    std::fs::create_dir(g.master()).unwrap();
    let o = g.run(&[
        "sync",
        g.master().to_str().unwrap(),
        g.slave().to_str().unwrap(),
        "--once",
    ]);
    assert!(
        !o.status.success(),
        "sync --once replicated an unmounted brick"
    );
    assert!(stderr(&o).contains("lost its identity"), "{}", stderr(&o));
    assert!(snapshot(&g.slave()) == before);
    s.run();
    assert!(
        wait_until(Duration::from_secs(30), || {
            s.status()["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("lost its identity") && e.contains("mounted"))
        }),
        "{}",
        s.status()
    );
    assert_eq!(s.status()["status"], "Faulty");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        snapshot(&g.slave()) == before,
        "the slave changed while the brick was unmounted"
    );

    // "Remount": the worker finds its brick again and carries on.
    std::fs::remove_dir(g.master()).unwrap();
    std::fs::rename(&away, g.master()).unwrap();
    write(&g.master().join("after-remount"), b"x");
    s.converge("the brick is back");
    s.kill9();
}

/// Removes an SQLite database and its WAL and shared-memory files.
fn remove_db(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Issue 13, master- and slave-side state lost while the session was down: the master's
/// index.db deleted (a full compare; nothing lost), its journal.db truncated to garbage (a
/// clear warning, then a hybrid crawl), and the slave's agent.db lost (the DR side is a new
/// volume to the master: it compares everything again, and deletes nothing it should keep).
/// Each time changes made meanwhile arrive and the trees end equal.
#[test]
fn lost_or_broken_state_files_are_rebuilt_and_nothing_is_lost() {
    let g = Georep::new();
    let m = g.master();
    make_varied_tree(&m, 1 << 20);
    let mut s = Session::start(&g);
    s.converge("the first sync");
    let dir = s.brick_dir();

    // index.db deleted.
    kill_all(&mut s);
    remove_db(&dir.join("index.db"));
    write(&m.join("after-index-loss"), b"made while index.db was gone");
    std::fs::remove_file(m.join("after-index-loss")).ok();
    write(&m.join("kept-after-index-loss"), b"kept");
    s.run();
    s.converge("after index.db was deleted");

    // journal.db truncated to garbage.
    kill_all(&mut s);
    remove_db(&dir.join("journal.db"));
    std::fs::write(dir.join("journal.db"), b"not an SQLite database at all").unwrap();
    write(
        &m.join("after-journal-loss"),
        b"made while journal.db was garbage",
    );
    s.run();
    s.converge("after journal.db was truncated");
    assert!(
        s.log().contains("is broken") && s.log().contains("moved aside"),
        "nothing in the log says what happened to journal.db:\n{}",
        tail(&s.log(), 30)
    );
    let kept = std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("journal.db.broken-")
    });
    assert!(kept, "the broken journal was not kept for a post-mortem");

    // agent.db lost on the DR side.
    kill_all(&mut s);
    remove_db(&g.slave().join(".georep/agent.db"));
    write(
        &m.join("after-agent-db-loss"),
        b"made while agent.db was gone",
    );
    s.run();
    s.converge("after agent.db was lost");
}

/// Issue 13, master-side faults: `journal.db` write-locked by another process (an `sqlite3`
/// shell left inside a transaction, a backup tool) while changes go on. The brick is Faulty,
/// naming the file, the process that holds it and the fix, `status --check` is CRITICAL, and
/// LAST_SYNCED does not move past the lock. Once it is released, the writer runs again and a
/// hybrid crawl brings in what it could not record. Before: Active, no error, `--check` OK.
#[test]
fn a_journal_locked_by_another_process_is_named_and_then_crawled() {
    let g = Georep::new();
    let s = Session::start(&g);
    write(&g.master().join("a"), b"1");
    s.converge("start");
    let journal = s.brick_dir().join("journal.db");
    let crawls = s.status()["hybrid_crawls"].as_u64().unwrap();
    let (ms, ss) = (g.master(), g.slave());
    let (ms, ss) = (ms.to_str().unwrap(), ss.to_str().unwrap());
    let row = || -> serde_json::Value {
        let j: serde_json::Value =
            serde_json::from_str(&g.ok(&["status", ms, ss, "--json"])).unwrap();
        j[0].clone()
    };

    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(&journal).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
        c.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();
    let locked_at = now_ns();
    for i in 0..50 {
        write(&g.master().join(format!("while-locked/{i}")), b"x");
    }
    std::fs::remove_file(g.master().join("a")).unwrap();
    let mut last = serde_json::Value::Null;
    let named = wait_until(Duration::from_secs(60), || {
        last = row();
        last["status"] == "Faulty"
    });
    assert!(named, "the brick never went Faulty: {last}");
    let why = last["last_error"].as_str().unwrap_or_default().to_string();
    eprintln!(
        "Faulty {:.1} s after the lock: {why}",
        (now_ns() - locked_at) as f64 / 1e9
    );
    for needle in [
        "journal.db".to_string(),
        format!("locked by pid {}", std::process::id()),
        "end that process".to_string(),
        "hybrid crawl".to_string(),
    ] {
        assert!(why.contains(&needle), "{needle:?} not in: {why}");
    }
    let check = g
        .cmd()
        .args(["status", ms, ss, "--check"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2), "{}", stdout(&check));
    assert!(stdout(&check).contains("CRITICAL"), "{}", stdout(&check));
    assert!(
        s.status()["stime_ns"].as_i64().unwrap() < locked_at,
        "LAST_SYNCED moved past a lock that kept changes out of the journal"
    );
    assert!(
        g.slave().join("a").exists(),
        "nothing could have said that a went"
    );

    release.send(()).unwrap();
    holder.join().unwrap();
    s.converge("after the lock was released");
    assert!(
        wait_until(Duration::from_secs(10), || row()["status"] == "Active"),
        "{}",
        row()
    );
    assert!(s.status()["hybrid_crawls"].as_u64().unwrap() > crawls);
    assert!(s.log().contains("the journal writer runs again"));
}
