//! A running session for tests: `create` + `start --foreground` as a child process, the
//! brick's status.json, waits on convergence. Drop stops everything it started.

use super::*;
use std::process::{Child, Stdio};

pub struct Session<'a> {
    pub g: &'a Georep,
    pub child: Option<Child>,
}

impl<'a> Session<'a> {
    /// `create` (verifying the slave) and `start --foreground`.
    pub fn start(g: &'a Georep) -> Session<'a> {
        Session::start_with(g, &[])
    }

    /// `start` with these `georep config` options set first.
    pub fn start_with(g: &'a Georep, config: &[(&str, &str)]) -> Session<'a> {
        let (m, s) = (g.master(), g.slave());
        let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
        g.ok(&["create", ms, ss]);
        for (k, v) in config {
            g.ok(&["config", ms, ss, k, v]);
        }
        let mut se = Session { g, child: None };
        se.run();
        se
    }

    pub fn run(&mut self) {
        let s = self.g.slave();
        self.run_with_slave(s.to_str().unwrap());
    }

    /// `start --foreground` towards `slave` (a path or `user@host:port::vol`).
    pub fn run_with_slave(&mut self, slave: &str) {
        assert!(self.child.is_none());
        let m = self.g.master();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.g.path("start.log"))
            .unwrap();
        let child = self
            .g
            .cmd()
            .env(
                "GEOREP_LOG",
                std::env::var("GEOREP_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["start", m.to_str().unwrap(), slave, "--foreground"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGINT, then wait for a clean exit.
    pub fn stop(&mut self) {
        let mut c = self.child.take().expect("running");
        signal(c.id() as i32, rustix::process::Signal::INT);
        let st = c.wait().unwrap();
        assert!(
            st.success(),
            "start exited with {st} after SIGINT:\n{}",
            self.log()
        );
    }

    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        let _ = c.kill();
        let _ = c.wait();
    }

    /// The monitor's output, then every worker and journal log of the session.
    pub fn log(&self) -> String {
        let mut out = std::fs::read_to_string(self.g.path("start.log")).unwrap_or_default();
        let logs = self.g.path("home/log");
        for d in std::fs::read_dir(logs).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push_str(&format!("==== {}\n", f.path().display()));
                out.push_str(&std::fs::read_to_string(f.path()).unwrap_or_default());
            }
        }
        out
    }

    pub fn brick_dir(&self) -> PathBuf {
        let base = self.g.path("home/state/sessions");
        let s = std::fs::read_dir(&base)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::read_dir(s.join("bricks"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
    }

    /// The brick's status.json, waiting up to 10 s for the worker to write it (after a start).
    pub fn status(&self) -> serde_json::Value {
        let p = self.brick_dir().join("status.json");
        let mut last = String::new();
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            match std::fs::read_to_string(&p) {
                Ok(t) => match serde_json::from_str(&t) {
                    Ok(v) => status = Some(v),
                    Err(e) => last = format!("unreadable ({e}): {t:?}"),
                },
                Err(e) => last = e.to_string(),
            }
            status.is_some()
        });
        status.unwrap_or_else(|| {
            panic!(
                "the worker wrote no status at {} within 10 s of asking ({last}); log tail:\n{}",
                p.display(),
                tail(&self.log(), 20)
            )
        })
    }

    pub fn writer_pid(&self) -> i32 {
        self.pid_in("writer.pid")
    }

    pub fn worker_pid(&self) -> i32 {
        self.pid_in("worker.pid")
    }

    fn pid_in(&self, file: &str) -> i32 {
        std::fs::read_to_string(self.brick_dir().join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether the journal holds a record of `op` for `path` (brick-relative).
    pub fn journaled(&self, op: &str, path: &str) -> bool {
        let j = georep::journal::JournalStore::open(&self.brick_dir().join("journal.db")).unwrap();
        j.read_after(0, 1 << 20)
            .unwrap()
            .iter()
            .any(|r| r.op.name() == op && r.path.as_bytes() == path.as_bytes())
    }

    /// The worker is idle in Changelog Crawl with nothing left in the journal.
    pub fn idle(&self) -> bool {
        let st = self.status();
        st["crawl"] == "Changelog Crawl" && st["backlog"] == 0
    }

    /// Copies the whole session log out of the scratch area (which goes away with the test).
    pub fn keep_log(&self) -> PathBuf {
        let kept = std::env::temp_dir().join(format!(
            "georep-failed-{}-{}.log",
            std::process::id(),
            self.g.dir.path().file_name().unwrap().to_string_lossy()
        ));
        let _ = std::fs::write(&kept, self.log());
        kept
    }

    /// Waits until the slave equals the master (and the worker is idle), or panics with the
    /// differences and the session log.
    pub fn converge(&self, what: &str) {
        let (m, s) = (self.g.master(), self.g.slave());
        if let Err(msg) = wait_trees_equal(&m, &s, Duration::from_secs(30), &|| self.idle()) {
            let kept = self.keep_log();
            panic!(
                "after {what}: slave did not converge within 30 s: {msg}\nstatus: {}\nfull log: {}\nlog tail:\n{}",
                self.status(),
                kept.display(),
                tail(&self.log(), 30)
            );
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (m, s) = (self.g.master(), self.g.slave());
        let _ = self
            .g
            .cmd()
            .args(["delete", m.to_str().unwrap(), s.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// How many markers the journal at `journal` holds after its first record for `path` (of a
/// paused session: a running worker trims what it has read).
pub fn markers_after(journal: &Path, path: &str) -> usize {
    let j = georep::journal::JournalStore::open(journal).unwrap();
    let recs = j.read_after(0, 1 << 20).unwrap();
    recs.iter()
        .skip_while(|r| r.path.as_bytes() != path.as_bytes())
        .filter(|r| r.op == georep::journal::RecOp::Marker)
        .count()
}

/// `start --foreground` as systemd runs it; stopped (SIGTERM) when dropped, even when the test
/// fails.
pub struct Foreground(pub Child);

impl Foreground {
    pub fn start(g: &Georep, args: &[&str]) -> Foreground {
        let log = std::fs::File::create(g.path("start.log")).unwrap();
        let child = g
            .cmd()
            .env("GEOREP_LOG", "info")
            .arg("start")
            .args(args)
            .arg("--foreground")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Foreground(child)
    }

    pub fn stop(mut self) {
        signal(self.0.id() as i32, rustix::process::Signal::TERM);
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(self.0.id() as i32, rustix::process::Signal::TERM);
            let _ = self.0.wait();
        }
    }
}
