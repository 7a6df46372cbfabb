//! Shared helpers: a `Georep` runner with its own `GEOREP_HOME`, tree builders and the tree
//! comparison every replication test ends with.

pub mod fsops;
pub mod gluster;
pub mod net;
pub mod node;
pub mod proxy;
pub mod session;
pub mod sshd;
pub mod tree;

pub use node::*;
pub use session::*;
pub use sshd::*;
pub use tree::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The georep binary under test: this build's, or `GEOREP_TEST_BIN` (a copy, so that a long
/// harness run goes on while the tree is rebuilt).
pub fn bin() -> PathBuf {
    std::env::var_os("GEOREP_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_georep")))
}

/// A scratch area: master, slave and `GEOREP_HOME` under one temp dir, removed on drop.
pub struct Georep {
    pub dir: tempfile::TempDir,
    pub node: String,
    /// Shared by every test, taken alone by one that changes the machine for the others.
    _machine: Machine,
}

/// Tests share the machine's settings: one that changes a system-wide one (the inotify queue
/// size every new journal writer gets) runs alone, with no other test's processes starting.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

thread_local! {
    /// How many `Georep`s this thread holds: only the first takes the lock (a second read
    /// would wait behind a waiting writer while holding the first).
    static HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

#[allow(dead_code)]
enum Machine {
    Shared(Option<std::sync::RwLockReadGuard<'static, ()>>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Machine::Shared(_) = self {
            HELD.with(|h| h.set(h.get() - 1));
        }
    }
}

impl Georep {
    pub fn new() -> Georep {
        let first = HELD.with(|h| {
            h.set(h.get() + 1);
            h.get() == 1
        });
        // A test that panicked while holding it poisons nothing this lock guards.
        let guard = first.then(|| MACHINE.read().unwrap_or_else(|e| e.into_inner()));
        Georep::with(Machine::Shared(guard))
    }

    /// A test environment for a test that changes system-wide settings: it waits until no
    /// other test holds one, and no other test starts until it is dropped.
    pub fn alone() -> Georep {
        let guard = MACHINE.write().unwrap_or_else(|e| e.into_inner());
        Georep::with(Machine::Alone(guard))
    }

    fn with(machine: Machine) -> Georep {
        let dir = tempfile::Builder::new()
            .prefix("georep-it-")
            .tempdir_in(std::env::var_os("GEOREP_TEST_TMP").unwrap_or_else(|| "/tmp".into()))
            .unwrap();
        std::fs::create_dir_all(dir.path().join("master")).unwrap();
        std::fs::create_dir_all(dir.path().join("slave")).unwrap();
        Georep {
            dir,
            node: "node1".into(),
            _machine: machine,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn master(&self) -> PathBuf {
        self.path("master")
    }

    pub fn slave(&self) -> PathBuf {
        self.path("slave")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("GEOREP_HOME", self.path("home"))
            .env("GEOREP_NODE", &self.node)
            .env_remove("GEOREP_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts it failed with exit status `code` (2: an error, nothing done; 1: some
    /// operations failed) and an error that contains `says`; returns stderr.
    pub fn fails(&self, args: &[&str], code: i32, says: &str) -> String {
        assert_failed(&self.run(args), args, code, says)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "georep {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `sync --once --json` master → slave, asserting success; returns the report.
    pub fn sync(&self) -> serde_json::Value {
        self.sync_args(&[])
    }

    pub fn sync_args(&self, extra: &[&str]) -> serde_json::Value {
        let m = self.master();
        let s = self.slave();
        let mut args = vec![
            "sync",
            m.to_str().unwrap(),
            s.to_str().unwrap(),
            "--once",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
    }

    /// Syncs and asserts the slave now equals the master.
    pub fn sync_equal(&self) -> serde_json::Value {
        let r = self.sync();
        assert_trees_equal(&self.master(), &self.slave());
        r
    }
}

/// Polls `f` until it returns true or `timeout` passes.
/// Polls `f` until it holds or `timeout` passes, with back-off (1 ms doubling to 50 ms), so
/// that polling does not steal the CPU of the processes under test on a small machine.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
    f()
}

/// Waits until `idle()` holds and the trees are equal, polling with back-off (5 ms doubling
/// to 100 ms: a tight loop hashing both trees would steal the CPU of the processes under
/// test); the differences when `timeout` passes first.
pub fn wait_trees_equal(
    master: &Path,
    slave: &Path,
    timeout: Duration,
    idle: &dyn Fn() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        // Metadata first: hashing both trees only once everything else agrees.
        if idle()
            && snapshot_meta(master) == snapshot_meta(slave)
            && snapshot(master) == snapshot(slave)
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(tree_differences(master, slave)
                .unwrap_or_else(|| "the trees are equal but the worker never went idle".into()));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Asserts that `georep args` exited with `code` and an error that contains `says`; returns
/// its stderr.
pub fn assert_failed(o: &Output, args: &[&str], code: i32, says: &str) -> String {
    let err = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "georep {args:?} should exit {code}:\nstderr: {err}"
    );
    assert!(
        err.contains(says),
        "georep {args:?} should say {says:?}: {err}"
    );
    err
}

/// Wall-clock time, ns since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `georep agent --volume ROOT` on `cmd` (the binary with its environment), all three
/// streams piped.
pub fn agent_command(mut cmd: Command, root: &Path) -> Command {
    cmd.args(["agent", "--volume", root.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` fed `input` (its stdin then closed) to the end.
pub fn feed(mut cmd: Command, input: &[u8]) -> Output {
    let mut c = cmd.spawn().unwrap();
    let _ = std::io::Write::write_all(&mut c.stdin.take().unwrap(), input);
    c.wait_with_output().unwrap()
}

/// Pids of running processes whose command line contains every one of `words`.
pub fn pids_with_cmdline(words: &[&str]) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if words.iter().all(|w| args.iter().any(|a| a == w)) {
            out.push(pid);
        }
    }
    out
}

/// Agents serving connections onto the slave root `slave`: not those that only joined one as
/// a further channel of a stripe (they never open the volume's `.georep`, which the serving
/// agent holds from its handshake on).
pub fn serving_agents(slave: &Path) -> Vec<i32> {
    let state = slave.join(".georep");
    pids_with_cmdline(&["agent", "--volume", slave.to_str().unwrap()])
        .into_iter()
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t.starts_with(&state)))
            })
        })
        .collect()
}

/// Further-channel agents of stripes onto `slave` (see `serving_agents`).
pub fn joined_agents(slave: &Path) -> Vec<i32> {
    let serving = serving_agents(slave);
    pids_with_cmdline(&["agent", "--volume", slave.to_str().unwrap()])
        .into_iter()
        .filter(|p| !serving.contains(p))
        .collect()
}

/// Sizes of the files an agent is receiving into `slave` right now: its temp files, which have
/// no name while they are written (`O_TMPFILE`, found through the agent's open fds) or a name
/// under `.georep/tmp/` (filesystems without it).
pub fn files_being_received(slave: &Path) -> Vec<u64> {
    let tmp = slave.join(".georep/tmp");
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        for fd in std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            // In a brick's temp directory, not the lock files next to those.
            let open_under_tmp = std::fs::read_link(fd.path()).is_ok_and(|t| {
                t.strip_prefix(&tmp)
                    .is_ok_and(|r| r.components().count() > 1)
            });
            if let Some(md) = open_under_tmp
                .then(|| std::fs::metadata(fd.path()).ok())
                .flatten()
                .filter(|m| m.is_file())
            {
                out.push(md.len());
            }
        }
    }
    for d in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if let Some(md) = f.metadata().ok().filter(|m| m.is_file()) {
                out.push(md.len());
            }
        }
    }
    out
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn n(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("report has no number {k}: {v}"))
}

pub fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A tmpfs mounted for a test (needs root), unmounted on drop.
pub struct Mount(PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mounting a tmpfs at {} failed", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A loopback TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
