//! Session lifecycle with the background monitor: start/stop/pause/resume/delete, every STATUS
//! value in a real scenario, worker and monitor crashes, --check, config, checkpoints, replica
//! Active/Passive with takeover.

use crate::util::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A started session; Drop stops (force) and deletes it.
struct Started<'a> {
    n: Node<'a>,
    master: String,
    slave: String,
}

impl<'a> Started<'a> {
    fn new(n: Node<'a>, master: &str, slave: &str) -> Started<'a> {
        n.ok(&["create", master, slave]);
        let s = Started {
            n,
            master: master.into(),
            slave: slave.into(),
        };
        s.op("start");
        s
    }

    /// `create … name NAME`, then start.
    fn named(n: Node<'a>, master: &str, slave: &str, name: &str) -> Started<'a> {
        n.ok(&["create", master, slave, "name", name]);
        let s = Started {
            n,
            master: master.into(),
            slave: slave.into(),
        };
        s.op("start");
        s
    }

    fn simple(g: &'a Georep) -> Started<'a> {
        let (m, s) = (g.master(), g.slave());
        Started::new(Node::main(g), m.to_str().unwrap(), s.to_str().unwrap())
    }

    fn op(&self, verb: &str) -> String {
        self.n.ok(&[verb, &self.master, &self.slave])
    }

    fn rows(&self) -> Vec<serde_json::Value> {
        let out = self.n.ok(&["status", &self.master, &self.slave, "--json"]);
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json ({e}): {out}"));
        v.as_array().unwrap().clone()
    }

    fn row(&self) -> serde_json::Value {
        self.rows().remove(0)
    }

    fn wait_status(&self, what: &str, timeout: Duration, f: impl Fn(&serde_json::Value) -> bool) {
        if !wait_until(timeout, || f(&self.row())) {
            panic!(
                "{what}: status never matched; last: {:#}\nlogs:\n{}",
                self.row(),
                self.n.logs()
            );
        }
    }

    fn converge(&self, master: &Path, slave: &Path, what: &str) {
        let idle = || {
            let r = self.row();
            r["status"] == "Active"
                && r["crawl_status"] == "Changelog Crawl"
                && r["backlog_records"] == 0
        };
        if let Err(diff) = wait_trees_equal(master, slave, Duration::from_secs(30), &idle) {
            panic!(
                "{what}: no convergence in 30 s: {diff}\nstatus: {:#}\nlogs:\n{}",
                self.row(),
                self.n.logs()
            );
        }
    }

    fn check(&self, extra: &[&str]) -> (i32, String) {
        let mut args = vec!["status", &self.master, &self.slave, "--check"];
        args.extend_from_slice(extra);
        let o = self.n.run(&args);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
    }

    fn session_file(&self, name: &str) -> PathBuf {
        let base = self.n.home.join("state/sessions");
        fs::read_dir(&base)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join(name)
    }

    fn brick_file(&self, name: &str) -> PathBuf {
        let b = fs::read_dir(self.session_file("bricks"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        b.path().join(name)
    }

    /// How many times the running workers have taken new session options (their logs say
    /// "session options changed").
    fn options_taken(&self) -> usize {
        let mut n = 0;
        for d in fs::read_dir(self.n.home.join("log"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                n += fs::read_to_string(f.path())
                    .unwrap_or_default()
                    .matches("session options changed")
                    .count();
            }
        }
        n
    }

    /// `config MASTER SLAVE key value`, then waits until the running worker has taken it.
    fn config_live(&self, args: &[&str]) {
        let before = self.options_taken();
        let mut all = vec!["config", self.master.as_str(), self.slave.as_str()];
        all.extend_from_slice(args);
        self.n.ok(&all);
        assert!(
            wait_until(Duration::from_secs(10), || self.options_taken() > before),
            "the worker never took config {args:?}:\n{}",
            self.n.logs()
        );
    }

    fn pid_of(&self, file: &Path) -> i32 {
        let mut pid = None;
        wait_until(Duration::from_secs(10), || {
            pid = fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        });
        pid.unwrap_or_else(|| panic!("no pid in {}", file.display()))
    }
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        let _ = self.n.run(&["stop", &self.master, &self.slave, "force"]);
        let _ = self.n.run(&["delete", &self.master, &self.slave]);
    }
}

const COLUMNS: &str =
    "MASTER NODE  MASTER VOL  MASTER BRICK  SLAVE  STATUS  CRAWL STATUS  LAST_SYNCED";

fn header_words(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn start_pause_resume_stop_show_in_the_table() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 5);
    let n = Node::main(&g);
    n.ok(&["create", ms, ss]);
    let table = n.ok(&["status", ms, ss]);
    let want: Vec<String> = COLUMNS.split("  ").map(String::from).collect();
    assert_eq!(header_words(&table), want, "{table}");
    assert!(
        table.lines().nth(2).unwrap().contains(" Created "),
        "{table}"
    );

    let st = Started {
        n,
        master: ms.into(),
        slave: ss.into(),
    };
    let out = st.op("start");
    assert!(out.contains("has been successful"), "{out}");
    // Initializing..., Active in Hybrid Crawl (first start: the journal starts with a gap),
    // then Changelog Crawl. On a tree this small the crawl lasts milliseconds and polling
    // rarely sees it: that it ran is shown by the slave converging to files made before the
    // journal existed (only a crawl finds them), and counted in hybrid_crawls.
    let mut seen = std::collections::BTreeSet::new();
    wait_until(Duration::from_secs(30), || {
        let r = st.row();
        seen.insert(format!("{} / {}", r["status"], r["crawl_status"]));
        r["crawl_status"] == "Changelog Crawl"
    });
    assert!(
        seen.contains("\"Active\" / \"Changelog Crawl\""),
        "never reached Changelog Crawl: {seen:?}"
    );
    st.converge(&m, &s, "first start");
    assert_eq!(st.row()["hybrid_crawls"], 1);
    let table = st.n.ok(&["status", ms, ss]);
    assert!(
        table.contains(" Active ") && table.contains("Changelog Crawl"),
        "{table}"
    );
    // The monitor and the worker are separate processes, the worker's command line says so.
    let worker = st.pid_of(&st.brick_file("worker.pid"));
    let cmdline = fs::read(format!("/proc/{worker}/cmdline")).unwrap();
    assert!(String::from_utf8_lossy(&cmdline).contains("worker"));
    st.n.fails(&["start", ms, ss], 2, "already started");
    // `start force` on a running session changes nothing: one monitor, the same worker.
    let monitors = pids_with_cmdline(&["monitor", ms]);
    st.n.ok(&["start", ms, ss, "force"]);
    assert_eq!(pids_with_cmdline(&["monitor", ms]), monitors);
    assert_eq!(st.pid_of(&st.brick_file("worker.pid")), worker);
    assert!(Path::new(&format!("/proc/{worker}")).exists());

    // Paused: nothing ships, the journal keeps recording; resume catches up from it.
    st.op("pause");
    assert_eq!(st.row()["status"], "Paused");
    let table = st.n.ok(&["status", ms, ss]);
    assert!(table.contains(" Paused "), "{table}");
    write(&m.join("while-paused/a"), b"recorded, not shipped");
    fs::remove_file(m.join("many/f003")).unwrap();
    // The journal has the change, and two markers after it: a running worker would have
    // shipped it by then (it reads the journal at least every marker).
    assert!(
        wait_until(Duration::from_secs(10), || markers_after(
            &st.brick_file("journal.db"),
            "many/f003"
        ) >= 2),
        "the paused session's journal never recorded the change"
    );
    assert!(
        !exists(&s.join("while-paused/a")),
        "a paused session shipped"
    );
    assert_eq!(st.row()["status"], "Paused");
    st.op("resume");
    st.converge(&m, &s, "resume");
    assert_eq!(
        st.row()["hybrid_crawls"],
        1,
        "resume is a History Crawl, not a crawl"
    );

    st.op("stop");
    let r = st.row();
    assert_eq!(
        (r["status"].as_str(), r["crawl_status"].as_str()),
        (Some("Stopped"), Some("N/A"))
    );
    assert!(
        pids_with_cmdline(&["worker", ms]).is_empty(),
        "worker left running"
    );
    let (code, line) = st.check(&[]);
    assert_eq!(code, 2, "{line}");
    assert!(
        line.starts_with("CRITICAL") && line.contains("Stopped"),
        "{line}"
    );
    // Stopped sessions keep journaling: start resumes without a crawl.
    write(&m.join("while-stopped"), b"x");
    st.op("start");
    st.converge(&m, &s, "start after stop");
    assert_eq!(st.row()["hybrid_crawls"], 1);
}

#[test]
fn killed_worker_is_restarted_and_killed_monitor_resumes_without_a_crawl() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let st = Started::simple(&g);
    st.converge(&m, &s, "start");
    for i in 0..200 {
        write_random(&m.join(format!("burst/{i}")), 32 << 10, i);
    }
    let worker = st.pid_of(&st.brick_file("worker.pid"));
    signal(worker, rustix::process::Signal::KILL);
    assert!(
        wait_until(Duration::from_secs(30), || st
            .pid_of(&st.brick_file("worker.pid"))
            != worker),
        "the monitor did not restart the killed worker:\n{}",
        st.n.logs()
    );
    st.converge(&m, &s, "worker killed");
    assert_eq!(
        st.row()["hybrid_crawls"],
        1,
        "the journal survived the worker"
    );
    let log = st.n.logs();
    assert!(
        log.contains("restart 1"),
        "monitor log says nothing:\n{log}"
    );

    // The monitor dies hard: its worker follows (finishing its batch), start resumes.
    let monitor = st.pid_of(&st.session_file("monitor.pid"));
    let worker = st.pid_of(&st.brick_file("worker.pid"));
    signal(monitor, rustix::process::Signal::KILL);
    assert!(
        wait_until(Duration::from_secs(30), || !Path::new(&format!(
            "/proc/{worker}"
        ))
        .exists()
            || fs::read_to_string(format!("/proc/{worker}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "worker outlived its monitor"
    );
    write(&m.join("after-monitor-died"), b"journaled");
    assert_eq!(st.row()["status"], "Stopped");
    st.op("start");
    st.converge(&m, &s, "start after monitor kill -9");
    assert_eq!(
        st.row()["hybrid_crawls"],
        1,
        "no re-crawl after a monitor crash"
    );

    // Killed again, then `start` and `stop` at once (a script, a unit restart): the killed
    // monitor's pid was left behind, and stop signalled it instead of the new monitor, which
    // ran on (found by the convergence harness: a monitor outlived its test).
    let monitor = st.pid_of(&st.session_file("monitor.pid"));
    signal(monitor, rustix::process::Signal::KILL);
    assert!(wait_until(Duration::from_secs(10), || st.row()["status"] == "Stopped"));
    st.op("start");
    st.op("stop");
    let session = fs::read_dir(g.path("home/state/sessions"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let session = session.to_str().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || pids_with_cmdline(&[
            "monitor", session
        ])
        .is_empty()),
        "a monitor still runs after stop: {:?}",
        pids_with_cmdline(&["monitor", session])
    );

    // The pid file names another live process (a killed monitor's pid, taken since): stop
    // leaves that process alone and stops the monitor that holds the session's lock.
    st.op("start");
    let mut other = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    fs::write(st.session_file("monitor.pid"), other.id().to_string()).unwrap();
    let t = Instant::now();
    st.op("stop");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(pids_with_cmdline(&["monitor", session]).is_empty());
    assert!(
        other.try_wait().unwrap().is_none(),
        "stop signalled a process that is not the monitor"
    );
    let _ = other.kill();

    // A monitor in the foreground (systemd's unit runs `start --foreground`): its command line
    // names neither `monitor` nor the session, and stop finds it by the lock it holds.
    let mut fg =
        st.n.cmd()
            .args(["start", &st.master, &st.slave, "--foreground"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    assert!(wait_until(Duration::from_secs(20), || st.row()["status"] == "Active"));
    st.op("stop");
    assert!(
        wait_until(Duration::from_secs(20), || fg.try_wait().unwrap().is_some()),
        "the foreground monitor still runs after stop"
    );
}

#[test]
fn faulty_when_slave_goes_away_and_check_exit_codes() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let st = Started::simple(&g);
    st.converge(&m, &s, "start");
    let (code, line) = st.check(&[]);
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("OK"), "{line}");

    // --json carries what the table shows.
    let table =
        st.n.ok(&["status", m.to_str().unwrap(), s.to_str().unwrap(), "detail"]);
    let r = st.row();
    for k in [
        "status",
        "crawl_status",
        "last_synced",
        "master_brick",
        "checkpoint_completed",
    ] {
        assert!(
            table.contains(r[k].as_str().unwrap()),
            "{k} {} not in\n{table}",
            r[k]
        );
    }
    for col in [
        "ENTRY",
        "DATA",
        "META",
        "FAILURES",
        "CHECKPOINT TIME",
        "CHECKPOINT COMPLETED",
        "CHECKPOINT COMPLETION TIME",
        "BACKLOG",
        "LAG",
    ] {
        assert!(table.contains(col), "detail lacks {col}:\n{table}");
    }
    assert!(r["last_synced_utc"].as_str().unwrap().ends_with('Z'));

    // Lag: paused, LAST_SYNCED stops moving.
    st.op("pause");
    // LAST_SYNCED stops: the lag passes 2 s, and the check says so.
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = st.check(&["--max-lag", "2"]);
            last.0 == 2
        }),
        "{last:?}"
    );
    let (code, line) = last;
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("lags"), "{line}");
    let (code, line) = st.check(&["--max-lag", "7"]);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("WARNING") && line.contains("Paused"),
        "{line}"
    );
    st.op("resume");
    st.converge(&m, &s, "resume");

    // Faulty with the reason while the slave volume is missing, Active again after.
    let away = g.path("slave-away");
    fs::rename(&s, &away).unwrap();
    for pid in pids_with_cmdline(&["agent", s.to_str().unwrap()]) {
        signal(pid, rustix::process::Signal::KILL);
    }
    write(&m.join("during-outage"), b"queued");
    st.wait_status("Faulty", Duration::from_secs(30), |r| {
        r["status"] == "Faulty"
    });
    let r = st.row();
    let err = r["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        err.contains(s.to_str().unwrap()),
        "last error names no path: {err}"
    );
    let table =
        st.n.ok(&["status", m.to_str().unwrap(), s.to_str().unwrap(), "detail"]);
    assert!(
        table.contains("Faulty") && table.contains("last error"),
        "{table}"
    );
    let (code, line) = st.check(&[]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("Faulty"), "{line}");
    fs::rename(&away, &s).unwrap();
    st.converge(&m, &s, "slave back");
    assert_eq!(st.check(&[]).0, 0);
}

#[test]
fn checkpoint_completes_on_idle_and_busy_volumes() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let st = Started::simple(&g);
    st.converge(&m, &s, "start");
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());

    // Idle: no write at all, the journal's markers carry LAST_SYNCED past the checkpoint.
    st.n.ok(&["config", ms, ss, "checkpoint", "now"]);
    st.wait_status("idle checkpoint", Duration::from_secs(20), |r| {
        r["checkpoint_completed"] == "Yes"
    });
    let r = st.row();
    assert_ne!(r["checkpoint_completion_time"], "N/A");
    assert!(
        r["checkpoint_completion_time_utc"].as_str().unwrap()
            >= r["checkpoint_time_utc"].as_str().unwrap()
    );

    // Busy: a writer keeps going; every file written before the checkpoint must be on the
    // slave when it says Yes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stop2, m2) = (stop.clone(), m.clone());
    let writer = std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            write_random(&m2.join(format!("busy/{}/{i}", i % 10)), 16 << 10, i);
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        i
    });
    // The checkpoint is taken while the writer is going, with files already written.
    assert!(wait_until(Duration::from_secs(10), || walk_files(
        &m.join("busy")
    )
    .len()
        >= 50));
    let before: Vec<PathBuf> = walk_files(&m.join("busy"));
    let cp_out = st.n.ok(&["config", ms, ss, "checkpoint", "now"]);
    assert!(cp_out.contains("checkpoint"), "{cp_out}");
    st.wait_status("busy checkpoint", Duration::from_secs(30), |r| {
        r["checkpoint_completed"] == "Yes"
    });
    for p in &before {
        let rel = p.strip_prefix(&m).unwrap();
        assert_eq!(
            fs::read(s.join(rel)).ok(),
            fs::read(p).ok(),
            "{} written before the checkpoint is not on the slave at completion",
            rel.display()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(
        written > before.len() as u64,
        "the writer did not keep going"
    );
    st.converge(&m, &s, "after the busy phase");
    // A reset checkpoint is N/A again.
    st.n.ok(&["config", ms, ss, "!checkpoint"]);
    assert_eq!(st.row()["checkpoint_completed"], "N/A");
}

fn first_file(dir: &Path) -> PathBuf {
    let mut v = walk_files(dir);
    v.sort();
    v.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no file in {}", dir.display()))
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn config_validates_persists_and_reaches_running_workers() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    let st = Started::simple(&g);
    st.converge(&m, &s, "start");
    let list = st.n.ok(&["config", ms, ss]);
    for key in [
        "checkpoint",
        "log-level",
        "compression",
        "batch-ops",
        "batch-bytes",
        "window",
        "ignore-deletes",
        "exclude",
        "ssh-port",
        "remote-georep",
        "bwlimit",
        "trash-retention",
    ] {
        assert!(
            list.contains(&format!("{key}:")),
            "config lists no {key}:\n{list}"
        );
    }
    // Validation names the problem; nothing is stored.
    for (k, v) in [
        ("compression", "25"),
        ("window", "0"),
        ("batch-bytes", "9X"),
        ("log-level", "loud"),
        ("checkpoint", "yesterday"),
        ("no-such-key", "1"),
    ] {
        let o = st.n.run(&["config", ms, ss, k, v]);
        assert!(!o.status.success(), "{k}={v} accepted");
        let err = stderr(&o);
        assert!(
            err.contains(k) || err.contains(v),
            "error for {k}={v} says nothing useful: {err}"
        );
    }
    st.n.ok(&["config", ms, ss, "batch-bytes", "1M"]);
    assert_eq!(st.n.ok(&["config", ms, ss, "batch-bytes"]).trim(), "1M");
    st.n.ok(&["config", ms, ss, "!batch-bytes"]);
    assert_eq!(st.n.ok(&["config", ms, ss, "batch-bytes"]).trim(), "64M");

    // Applied to the running worker without a restart.
    let worker = st.pid_of(&st.brick_file("worker.pid"));
    st.n.ok(&["config", ms, ss, "exclude", "*.tmp,scratch/**"]);
    st.n.ok(&["config", ms, ss, "ignore-deletes", "true"]);
    st.config_live(&["log-level", "debug"]);
    write(&m.join("kept"), b"will be deleted on the master only");
    st.converge(&m, &s, "before the deletes");
    fs::remove_file(m.join("kept")).unwrap();
    write(&m.join("x.tmp"), b"excluded");
    write(&m.join("scratch/y"), b"excluded");
    write(&m.join("marker"), b"shipped after the rest");
    assert!(wait_until(Duration::from_secs(20), || exists(
        &s.join("marker")
    )));
    // Its window, with the delete and the excluded names before it, is done.
    st.wait_status("after the marker", Duration::from_secs(20), |r| {
        r["backlog_records"] == 0
    });
    assert!(
        exists(&s.join("kept")),
        "ignore-deletes: the slave lost a file deleted on the master"
    );
    assert!(
        !exists(&s.join("x.tmp")) && !exists(&s.join("scratch/y")),
        "exclude not applied"
    );
    assert_eq!(
        st.pid_of(&st.brick_file("worker.pid")),
        worker,
        "the worker was restarted"
    );
    let wlog = st.n.logs();
    assert!(
        wlog.contains("DEBUG"),
        "log-level debug not applied:\n{wlog}"
    );

    // bwlimit is enforced: 3 MiB of random data at 1 MiB/s takes at least 2 s. What has
    // reached the agent's temp file by any moment since the write is at most what the limit
    // allows by then (one second of credit, one 1 MiB chunk in flight, and 1 MiB/s with 25%
    // slack); and the whole takes well under the time a far lower limit would: the limit is
    // the one configured, whatever the machine's speed.
    st.config_live(&["bwlimit", "1M"]);
    let t = Instant::now();
    write_random(&m.join("limited"), 3 << 20, 7);
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    assert!(wait_until(Duration::from_secs(60), || {
        if let Some(n) = files_being_received(&s).into_iter().max() {
            samples.push((t.elapsed(), n));
        }
        fs::read(s.join("limited")).ok() == fs::read(m.join("limited")).ok()
    }));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "3 MiB arrived in {took:?} despite bwlimit 1M"
    );
    assert!(
        took <= Duration::from_secs(8),
        "3 MiB took {took:?} with bwlimit 1M"
    );
    assert!(samples.len() > 5, "the transfer was not seen: {samples:?}");
    for (at, n) in &samples {
        let allowed = (2.0 + 1.25 * at.as_secs_f64()) * (1 << 20) as f64;
        assert!(
            *n as f64 <= allowed,
            "{n} bytes had arrived {at:?} after the write with bwlimit 1M"
        );
    }
    st.n.ok(&["config", ms, ss, "!bwlimit"]);
}

#[test]
fn delete_keeps_sync_time_unless_reset() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 9);
    let files = walk_files(&m).len() as u64;
    {
        let st = Started::simple(&g);
        st.converge(&m, &s, "start");
        assert!(
            !st.n.run(&["delete", ms, ss]).status.success(),
            "delete of a running session"
        );
        st.op("stop");
    } // Drop: delete (keeps the sync state)
    let st = Started::simple(&g);
    st.converge(&m, &s, "re-created");
    assert_eq!(
        st.row()["data"],
        0,
        "a re-created session re-sent files it had sent"
    );
    st.op("stop");
    st.n.ok(&["delete", ms, ss, "reset-sync-time"]);
    // Forgotten: the new session re-reads the slave. What is equal stays (nothing re-sent);
    // a file changed there behind georep's back and an extra file are repaired.
    let victim = walk_files(&s)
        .into_iter()
        .find(|p| !p.starts_with(s.join(".georep")) && fs::metadata(p).unwrap().len() > 1)
        .unwrap();
    fs::write(&victim, b"x").unwrap();
    write(&s.join("extra-on-the-slave"), b"not on the master");
    st.n.ok(&["create", ms, ss]);
    assert_eq!(st.row()["last_synced"], "N/A");
    st.op("start");
    st.converge(&m, &s, "after reset-sync-time");
    let r = st.row();
    assert!(
        n(&r, "data") >= 1 && n(&r, "data") < files / 2,
        "reset-sync-time re-reads the slave: only the changed file is sent again, not all {files}: {r:#}"
    );
}

#[test]
fn replica_bricks_one_active_one_passive_and_takeover() {
    let g = Georep::new();
    let s = g.slave();
    let ss = s.to_str().unwrap();
    let (b1, b2) = (g.path("b1"), g.path("b2"));
    // Two nodes, each with its own home, sharing one replica-2 volume definition.
    let n1 = Node {
        g: &g,
        home: g.path("home-n1"),
        name: "n1".into(),
    };
    let n2 = Node {
        g: &g,
        home: g.path("home-n2"),
        name: "n2".into(),
    };
    let spec = [
        format!("n1:{}", b1.display()),
        format!("n2:{}", b2.display()),
    ];
    make_varied_tree(&b1, 3);
    // Replicas of one volume: same names, content, owners and times.
    let mirror = || copy_tree(&b1, &b2);
    fs::create_dir_all(&b2).unwrap();
    mirror();
    for n in [&n1, &n2] {
        n.ok(&["volume", "create", "gv", "replica", "2", &spec[0], &spec[1]]);
    }
    assert_trees_equal(&b1, &b2);
    // Each node names its session differently: the replica set is still one (its lock key is
    // the generated name, the same on both nodes).
    let st1 = Started::named(n1, "gv", ss, "gv-dr-from-n1");
    st1.converge(&b1, &s, "n1 start");
    let st2 = Started::named(n2, "gv", ss, "gv-dr-from-n2");
    st2.wait_status("n2 passive", Duration::from_secs(20), |r| {
        r["status"] == "Passive"
    });
    let table = st2.n.ok(&["status", "gv", ss]);
    assert!(table.contains(" Passive "), "{table}");
    assert_eq!(st1.row()["status"], "Active");

    // The replicas change together (as a replicated volume does).
    write(&b1.join("both/new"), b"written through the volume");
    let victim = first_file(&b1.join("many"));
    let victim = victim.strip_prefix(&b1).unwrap().to_path_buf();
    fs::remove_file(b1.join(&victim)).unwrap();
    fs::remove_file(b2.join(&victim)).unwrap();
    mirror();
    st1.converge(&b1, &s, "change while n1 active");

    // n1 dies hard (monitor and worker at once); n2 takes over from the slave's state.
    // The background monitor leads its process group; its worker and agent are in it.
    let pgid = st1.pid_of(&st1.session_file("monitor.pid"));
    rustix::process::kill_process_group(
        rustix::process::Pid::from_raw(pgid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    write(&b2.join("after-takeover"), b"only n2 is alive");
    let gone = first_file(&b2.join("many"));
    fs::remove_file(&gone).unwrap();
    let rewritten = first_file(&b2.join("many"));
    write(&rewritten, b"rewritten while n1 was down");
    st2.converge(&b2, &s, "takeover");
    let r = st2.row();
    assert_eq!(r["takeovers"], 1, "{r:#}");
    assert!(
        n(&r, "data") <= 3,
        "takeover re-sent what the slave had: {r:#}"
    );
    // n1 comes back: it is Passive now.
    st1.op("start");
    st1.wait_status("n1 passive after return", Duration::from_secs(20), |r| {
        r["status"] == "Passive"
    });
}

#[test]
fn trash_retention_keeps_deleted_and_overwritten_files_on_the_slave() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    write(&m.join("docs/report.txt"), b"version 1");
    write(&m.join("docs/old/notes.txt"), b"notes");
    // A day past any retention, left by an earlier run.
    write(&s.join(".georep/trash/2000-01-01/ancient"), b"expired");
    let n = Node::main(&g);
    n.ok(&["create", ms, ss]);
    n.ok(&["config", ms, ss, "trash-retention", "7"]);
    let st = Started {
        n,
        master: ms.into(),
        slave: ss.into(),
    };
    st.op("start");
    st.converge(&m, &s, "start");
    assert!(
        !exists(&s.join(".georep/trash/2000-01-01")),
        "expired trash day not purged"
    );
    write(&m.join("docs/report.txt"), b"version 2");
    fs::remove_dir_all(m.join("docs/old")).unwrap();
    st.converge(&m, &s, "overwrite and delete");
    let day = chrono_free_today(&s.join(".georep/trash"));
    assert_eq!(
        fs::read(day.join("docs/report.txt")).unwrap(),
        b"version 1",
        "the overwritten version is not in the trash"
    );
    assert_eq!(fs::read(day.join("docs/old/notes.txt")).unwrap(), b"notes");
    // Off again: deletes are deletes.
    st.config_live(&["!trash-retention"]);
    fs::remove_file(m.join("docs/report.txt")).unwrap();
    st.converge(&m, &s, "delete without trash");
    assert!(!exists(&day.join("docs/report.txt.~1~")));
}

/// Review hole 8 (issue 13): with a trash, a rename over a file, a symlink replaced by a file
/// and type changes (file → directory, directory → file) used to destroy the old entry on the
/// slave. Each old version is in the trash now.
#[test]
fn trash_keeps_what_renames_and_type_changes_replace() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    write(&m.join("target.txt"), b"the old target");
    write(&m.join("source.txt"), b"renamed over it");
    std::os::unix::fs::symlink("nowhere", m.join("was-link")).unwrap();
    write(&m.join("was-file"), b"a file that becomes a directory");
    write(
        &m.join("was-dir/inner.txt"),
        b"a directory that becomes a file",
    );
    let n = Node::main(&g);
    n.ok(&["create", ms, ss]);
    n.ok(&["config", ms, ss, "trash-retention", "7"]);
    let st = Started {
        n,
        master: ms.into(),
        slave: ss.into(),
    };
    st.op("start");
    st.converge(&m, &s, "start");
    fs::rename(m.join("source.txt"), m.join("target.txt")).unwrap();
    fs::remove_file(m.join("was-link")).unwrap();
    write(&m.join("was-link"), b"now a file");
    fs::remove_file(m.join("was-file")).unwrap();
    write(&m.join("was-file/child"), b"now a directory");
    fs::remove_dir_all(m.join("was-dir")).unwrap();
    write(&m.join("was-dir"), b"now a file");
    st.converge(&m, &s, "replacements");
    let day = chrono_free_today(&s.join(".georep/trash"));
    assert_eq!(fs::read(day.join("target.txt")).unwrap(), b"the old target");
    assert_eq!(
        fs::read_link(day.join("was-link")).unwrap().to_str(),
        Some("nowhere")
    );
    assert_eq!(
        fs::read(day.join("was-file")).unwrap(),
        b"a file that becomes a directory"
    );
    assert_eq!(
        fs::read(day.join("was-dir/inner.txt")).unwrap(),
        b"a directory that becomes a file"
    );
}

/// The only day directory in a trash.
fn chrono_free_today(trash: &Path) -> PathBuf {
    let days: Vec<PathBuf> = fs::read_dir(trash)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(days.len(), 1, "{days:?}");
    days[0].clone()
}
