//! The convergence harness: seeded random change sequences in every mode georep finds changes
//! in, with the whole tree as the oracle. A sequence is an initial tree and rounds of ops; after
//! each round the replicator catches up and the slave must equal the master (names, kinds,
//! content, mode, owner, mtime in ns, link targets, hard-link groups, nothing extra).
//!
//! Modes: (a) crawl: `sync --once` after each round; (b) journal: a live session shipping while
//! the ops run; (c) journal with gaps: the journal writer is killed -9 at random moments, so
//! hybrid crawls run while changes stream; (d) replica takeover: the Active node of a replica-2
//! volume is killed mid-stream and the Passive one takes over.
//!
//! A failing sequence prints its seed and op log, then is shrunk (delta debugging) to a minimal
//! log printed as Rust, ready to become a named regression test in `converge_regressions.rs`.
//!
//! Sizes: `GEOREP_CONVERGE_SEQS` sequences per mode (defaults below, sized for CI),
//! `GEOREP_CONVERGE_LONG=1` for thousands, `GEOREP_CONVERGE_SEED` for the first seed,
//! `GEOREP_CONVERGE_OPS` ops per round, `GEOREP_CONVERGE_SHRINK_SECS` the time shrinking may take,
//! `GEOREP_CONVERGE_ALL` to run every sequence and count the divergent ones,
//! `GEOREP_CONVERGE_JOBS` how many replicators run at once.

use crate::util::fsops::{as_code, shrink, FsOp, Gen};
use crate::util::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// How many sequences a mode runs: `ci` by default, 10× that (at least 1000) with --long.
fn sequences(ci: u64) -> u64 {
    env_num("GEOREP_CONVERGE_SEQS").unwrap_or_else(|| {
        if std::env::var_os("GEOREP_CONVERGE_LONG").is_some() {
            (ci * 10).max(1000)
        } else {
            ci
        }
    })
}

fn ops_per_round() -> usize {
    env_num("GEOREP_CONVERGE_OPS").unwrap_or(30) as usize
}

fn first_seed() -> u64 {
    env_num("GEOREP_CONVERGE_SEED").unwrap_or(1)
}

/// Where a sequence's ops come from.
pub enum Source<'a> {
    Generate(u64),
    Replay(&'a [FsOp]),
}

/// A replicator under test: the roots ops are applied to (several for replicas, changed
/// together as a replicated volume's bricks are), what happens between ops, and catching up.
pub trait Replicator {
    fn masters(&self) -> Vec<PathBuf>;
    /// Between two ops: pauses, kills.
    fn between_ops(&mut self, _rng: &mut Rng) {}
    /// Catches up; `Err` is a divergence (with the differences).
    fn settle(&mut self) -> Result<(), String>;
    /// Faults injected so far (writer kills, takeovers), for the summary.
    fn faults(&self) -> u64 {
        0
    }
    /// Empties the tree between two sequences run by one replicator.
    fn reset(&mut self) -> Result<(), String> {
        for m in self.masters() {
            clear(&m);
        }
        self.settle()
    }
}

/// Makes a fresh replicator on a scratch area.
type Make<'m> = &'m (dyn for<'x> Fn(&'x Georep) -> Box<dyn Replicator + 'x> + Sync);

/// Runs one sequence; returns its log, and the divergence if there was one.
pub fn run_sequence(r: &mut dyn Replicator, src: Source<'_>) -> (Vec<FsOp>, Result<(), String>) {
    let mut log = Vec::new();
    let settle = |r: &mut dyn Replicator, log: &mut Vec<FsOp>| -> Result<(), String> {
        log.push(FsOp::Sync);
        r.settle()
    };
    match src {
        Source::Replay(ops) => {
            let mut rng = Rng(0x5eed);
            for op in ops {
                if *op == FsOp::Sync {
                    if let Err(e) = settle(r, &mut log) {
                        return (log, Err(e));
                    }
                    continue;
                }
                for m in r.masters() {
                    op.apply(&m);
                }
                log.push(op.clone());
                r.between_ops(&mut rng);
            }
            if log.last() != Some(&FsOp::Sync) {
                let res = settle(r, &mut log);
                return (log, res);
            }
            (log, Ok(()))
        }
        Source::Generate(seed) => {
            let mut gen = Gen::new(seed);
            let masters = r.masters();
            let first = gen.initial(&masters[0], 12);
            for op in &first {
                for m in &masters[1..] {
                    op.apply(m);
                }
            }
            log.extend(first);
            if let Err(e) = settle(r, &mut log) {
                return (log, Err(e));
            }
            for _ in 0..ROUNDS {
                for _ in 0..ops_per_round() {
                    let ops = gen.step(&masters[0]);
                    for op in &ops {
                        for m in &masters[1..] {
                            op.apply(m);
                        }
                    }
                    log.extend(ops);
                    let mut rng = Rng(gen.rng.next() | 1);
                    r.between_ops(&mut rng);
                }
                if let Err(e) = settle(r, &mut log) {
                    return (log, Err(e));
                }
            }
            (log, Ok(()))
        }
    }
}

/// Runs `count` generated sequences with replicators from `make` (a fresh one per sequence,
/// or per `per` sequences for live sessions), `jobs` replicators at a time (live sequences
/// mostly wait; `GEOREP_CONVERGE_JOBS` overrides); on a divergence, shrinks it with fresh
/// replicators and panics with the seed, the log and the minimal log.
fn harness(mode: &str, count: u64, per: u64, jobs: u64, shrink_budget: Duration, make: Make<'_>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Mutex;
    let t0 = Instant::now();
    let seed0 = first_seed();
    // With GEOREP_CONVERGE_ALL set, every sequence runs and the divergent seeds are counted;
    // the first one is reported (and shrunk) at the end.
    let all = std::env::var_os("GEOREP_CONVERGE_ALL").is_some();
    let jobs = env_num("GEOREP_CONVERGE_JOBS").unwrap_or(jobs).max(1);
    // A replicator serves at most its lane's share, so every lane has work until the end.
    let per = per.min(count.div_ceil(jobs)).max(1);
    let diverged: Mutex<Vec<(u64, Vec<FsOp>, String)>> = Mutex::new(Vec::new());
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let faults = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let lane = || {
        // Each replicator runs up to `per` consecutive seeds.
        while !stop.load(Relaxed) {
            let first = next.fetch_add(per, Relaxed);
            if first >= count {
                break;
            }
            let last = (first + per).min(count);
            let mut i = first;
            while i < last && !stop.load(Relaxed) {
                let g = Georep::new();
                let mut r = make(&g);
                let fresh = i;
                while i < last && !stop.load(Relaxed) {
                    let seed = seed0 + i;
                    if i > fresh {
                        if let Err(e) = r.reset() {
                            panic!("{mode}: clearing the tree before seed {seed} did not converge: {e}");
                        }
                    }
                    i += 1;
                    let (log, res) = run_sequence(r.as_mut(), Source::Generate(seed));
                    done.fetch_add(1, Relaxed);
                    if let Err(diff) = res {
                        eprintln!(
                            "converge {mode}: seed {seed} diverged after {} faults injected",
                            faults.load(Relaxed) + r.faults()
                        );
                        diverged.lock().unwrap().push((seed, log, diff));
                        if !all {
                            stop.store(true, Relaxed);
                        }
                        // This replicator's trees differ: go on (with GEOREP_CONVERGE_ALL)
                        // from a fresh one.
                        break;
                    }
                }
                faults.fetch_add(r.faults(), Relaxed);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(lane);
        }
    });
    let mut diverged = diverged.into_inner().unwrap();
    diverged.sort_by_key(|d| d.0);
    eprintln!(
        "converge {mode}: {} sequences ({ROUNDS} rounds of {} ops, {jobs} at a time) from seed {seed0}, {} faults injected, {} diverged{}, {:.1} s",
        done.load(Relaxed),
        ops_per_round(),
        faults.load(Relaxed),
        diverged.len(),
        if diverged.is_empty() {
            String::new()
        } else {
            format!(
                " (seeds {})",
                diverged
                    .iter()
                    .map(|d| d.0.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        t0.elapsed().as_secs_f64()
    );
    // Every diverged seed's first lines (its session log path among them), then the first one
    // in full, shrunk: several causes show at once in a long run.
    for (seed, _, diff) in diverged.iter().skip(1) {
        let head: Vec<&str> = diff.lines().take(4).collect();
        eprintln!("converge {mode}: seed {seed}:\n  {}", head.join("\n  "));
        if let Some(l) = diff.lines().find(|l| l.contains("log: ")) {
            eprintln!("  {l}");
        }
    }
    if let Some((seed, log, diff)) = diverged.into_iter().next() {
        report(mode, seed, &log, &diff, shrink_budget, make);
    }
}

fn report(mode: &str, seed: u64, log: &[FsOp], diff: &str, budget: Duration, make: Make<'_>) -> ! {
    let full = as_code(log);
    let budget = env_num("GEOREP_CONVERGE_SHRINK_SECS")
        .map(Duration::from_secs)
        .unwrap_or(budget);
    let mut tries = 0;
    let small = shrink(log, budget, |ops| {
        tries += 1;
        let g = Georep::new();
        let mut r = make(&g);
        run_sequence(r.as_mut(), Source::Replay(ops)).1.is_err()
    });
    let reproduced = {
        let g = Georep::new();
        let mut r = make(&g);
        run_sequence(r.as_mut(), Source::Replay(&small)).1.err()
    };
    panic!(
        "converge {mode}: seed {seed} diverged (rerun: GEOREP_CONVERGE_SEED={seed} GEOREP_CONVERGE_SEQS=1)\n\
         {diff}\n\nop log ({} ops):\n{full}\n\nshrunk in {tries} replays to {} ops ({}):\n{}\n",
        log.len(),
        small.len(),
        match &reproduced {
            Some(d) => format!("still fails: {}", d.lines().next().unwrap_or("")),
            None => "did not fail again on replay: timing-dependent".into(),
        },
        as_code(&small)
    )
}

/// Removes everything beneath `root` except `.georep`.
fn clear(root: &Path) {
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        if e.file_name() == ".georep" {
            continue;
        }
        let p = e.path();
        if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

/// Every mode sends changed files of at least this size as deltas.
const DELTA_MIN: &str = "2K";

// ---- (a) crawl: `sync --once` between rounds ----

pub struct Crawl<'a> {
    pub g: &'a Georep,
}

impl Replicator for Crawl<'_> {
    fn masters(&self) -> Vec<PathBuf> {
        vec![self.g.master()]
    }
    fn settle(&mut self) -> Result<(), String> {
        let (m, s) = (self.g.master(), self.g.slave());
        let o = self.g.run(&[
            "sync",
            m.to_str().unwrap(),
            s.to_str().unwrap(),
            "--once",
            "--json",
            // Changed files go as deltas (off to a local slave by default): the harness
            // proves that path too.
            "--delta-min-size",
            DELTA_MIN,
        ]);
        if !o.status.success() {
            return Err(format!("sync --once failed: {}", stderr(&o)));
        }
        match tree_differences(&m, &s) {
            Some(d) => Err(d),
            None => Ok(()),
        }
    }
}

#[test]
fn converge_crawl_mode() {
    harness(
        "crawl",
        sequences(300),
        1,
        2,
        Duration::from_secs(90),
        &|g| Box::new(Crawl { g }),
    );
}

// ---- (b) and (c): a live session; with gaps, the journal writer is killed at random ----

pub struct Live<'a> {
    pub s: Session<'a>,
    /// Chance per op (in 1/1000) of killing the journal writer.
    pub kill_writer: u64,
    pub kills: u64,
}

impl Replicator for Live<'_> {
    fn masters(&self) -> Vec<PathBuf> {
        vec![self.s.g.master()]
    }
    fn faults(&self) -> u64 {
        self.kills
    }
    fn between_ops(&mut self, rng: &mut Rng) {
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(4)));
        }
        if self.kill_writer > 0 && rng.below(1000) < self.kill_writer {
            signal(self.s.writer_pid(), rustix::process::Signal::KILL);
            self.kills += 1;
        }
    }
    fn settle(&mut self) -> Result<(), String> {
        let (m, s) = (self.s.g.master(), self.s.g.slave());
        let r = wait_trees_equal(&m, &s, Duration::from_secs(30), &|| self.s.idle());
        r.map_err(|d| {
            let kept = self.s.keep_log();
            format!(
                "{d}\nstatus: {}\nsession log: {}",
                self.s.status(),
                kept.display()
            )
        })
    }
}

#[test]
fn converge_journal_mode() {
    harness(
        "journal",
        sequences(300),
        50,
        8,
        Duration::from_secs(120),
        &|g| {
            Box::new(Live {
                s: Session::start_with(g, &[("delta-min-size", DELTA_MIN)]),
                kill_writer: 0,
                kills: 0,
            })
        },
    );
}

#[test]
fn converge_journal_with_gaps() {
    harness(
        "journal with gaps",
        sequences(300),
        50,
        8,
        Duration::from_secs(120),
        &|g| {
            Box::new(Live {
                s: Session::start_with(g, &[("delta-min-size", DELTA_MIN)]),
                kill_writer: 15,
                kills: 0,
            })
        },
    );
}

// ---- (d) replica takeover: the Active node is killed mid-stream ----

/// Two master nodes with one brick each of a replica-2 volume, each with its own home and a
/// background monitor; ops go to both bricks.
pub struct Replica<'a> {
    g: &'a Georep,
    active: usize,
    /// Chance per op (in 1/1000) of killing the Active node.
    kill: u64,
    killed: Option<usize>,
    pub takeovers: u64,
}

impl<'a> Replica<'a> {
    pub fn brick(&self, i: usize) -> PathBuf {
        self.g.path(&format!("b{}", i + 1))
    }

    fn node(&self, i: usize) -> std::process::Command {
        let mut c = self.g.cmd();
        c.env("GEOREP_HOME", self.g.path(&format!("home-n{}", i + 1)))
            .env("GEOREP_NODE", format!("n{}", i + 1));
        if let Ok(level) = std::env::var("GEOREP_TEST_LOG") {
            c.env("GEOREP_LOG", level);
        }
        c
    }

    fn ok(&self, i: usize, args: &[&str]) -> String {
        let o = self.node(i).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "georep {args:?} on n{} failed: {}",
            i + 1,
            stderr(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn new(g: &'a Georep, kill: u64) -> Replica<'a> {
        let r = Replica {
            g,
            active: 0,
            kill,
            killed: None,
            takeovers: 0,
        };
        let spec: Vec<String> = (0..2)
            .map(|i| {
                fs::create_dir_all(r.brick(i)).unwrap();
                format!("n{}:{}", i + 1, r.brick(i).display())
            })
            .collect();
        let s = g.slave();
        for i in 0..2 {
            r.ok(
                i,
                &["volume", "create", "gv", "replica", "2", &spec[0], &spec[1]],
            );
            r.ok(i, &["create", "gv", s.to_str().unwrap()]);
            r.ok(
                i,
                &[
                    "config",
                    "gv",
                    s.to_str().unwrap(),
                    "delta-min-size",
                    DELTA_MIN,
                ],
            );
        }
        r.ok(0, &["start", "gv", s.to_str().unwrap()]);
        // n1 is Active before n2 starts.
        let ok = wait_until(Duration::from_secs(20), || r.row(0)["status"] == "Active");
        assert!(ok, "n1 never went Active: {}", r.row(0));
        r.ok(1, &["start", "gv", s.to_str().unwrap()]);
        r
    }

    /// Kills the Active node (its monitor, worker and agent) with SIGKILL; the other one is
    /// expected to take over, and the killed one comes back (Passive) at the next settle.
    pub fn kill_active(&mut self) {
        // The background monitor leads its process group: worker and agent die with it.
        if let Some(pid) = self.monitor_pid(self.active) {
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
            self.killed = Some(self.active);
            self.active = 1 - self.active;
            self.takeovers += 1;
        }
    }

    /// Every log of both nodes, copied out of the scratch area (which goes with the test).
    fn keep_logs(&self) -> PathBuf {
        let kept = std::env::temp_dir().join(format!(
            "georep-failed-{}-{}.log",
            std::process::id(),
            self.g.dir.path().file_name().unwrap().to_string_lossy()
        ));
        let mut out = String::new();
        for i in 0..2 {
            let logs = self.g.path(&format!("home-n{}/log", i + 1));
            for d in fs::read_dir(logs).into_iter().flatten().flatten() {
                for f in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                    out.push_str(&format!("==== n{} {}\n", i + 1, f.path().display()));
                    out.push_str(&fs::read_to_string(f.path()).unwrap_or_default());
                }
            }
        }
        let _ = fs::write(&kept, out);
        kept
    }

    fn row(&self, i: usize) -> serde_json::Value {
        let s = self.g.slave();
        let out = self.ok(i, &["status", "gv", s.to_str().unwrap(), "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
    }

    fn monitor_pid(&self, i: usize) -> Option<i32> {
        let base = self.g.path(&format!("home-n{}/state/sessions", i + 1));
        let s = fs::read_dir(base).ok()?.next()?.ok()?.path();
        fs::read_to_string(s.join("monitor.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Replicator for Replica<'_> {
    fn masters(&self) -> Vec<PathBuf> {
        vec![self.brick(0), self.brick(1)]
    }
    fn faults(&self) -> u64 {
        self.takeovers
    }
    fn between_ops(&mut self, rng: &mut Rng) {
        if rng.below(8) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(4)));
        }
        if self.killed.is_none() && rng.below(1000) < self.kill {
            self.kill_active();
        }
    }
    fn settle(&mut self) -> Result<(), String> {
        let (m, s) = (self.brick(self.active), self.g.slave());
        let a = self.active;
        let r = wait_trees_equal(&m, &s, Duration::from_secs(40), &|| {
            let r = self.row(a);
            r["status"] == "Active"
                && r["crawl_status"] == "Changelog Crawl"
                && r["backlog_records"] == 0
        });
        let r = r.map_err(|d| {
            format!(
                "{d}\nactive n{}: {}\nnode logs: {}",
                a + 1,
                self.row(a),
                self.keep_logs().display()
            )
        });
        // The killed node comes back, as Passive.
        if let Some(k) = self.killed.take() {
            let s = self.g.slave();
            self.ok(k, &["start", "gv", s.to_str().unwrap(), "force"]);
        }
        r
    }
}

impl Drop for Replica<'_> {
    fn drop(&mut self) {
        let s = self.g.slave();
        for i in 0..2 {
            let _ = self
                .node(i)
                .args(["stop", "gv", s.to_str().unwrap(), "force"])
                .output();
            let _ = self
                .node(i)
                .args(["delete", "gv", s.to_str().unwrap()])
                .output();
        }
    }
}

#[test]
fn converge_replica_takeover() {
    harness(
        "replica takeover",
        sequences(300),
        50,
        8,
        Duration::from_secs(120),
        &|g| Box::new(Replica::new(g, 8)),
    );
}
