//! The crash suite: a live session replicates a changing tree while a chooser kills -9 the
//! worker, the agent, the monitor or the journal writer at random moments, and restarts what
//! the monitor does not. A watcher reads the slave all along:
//! - every file under `v/` is a whole version the master had (the master replaces them
//!   atomically, so a partial or torn file there is the slave's doing);
//! - LAST_SYNCED (the brick's stime) never moves backwards, and never runs ahead of the slave:
//!   a version replaced on the master before the stime is on the slave (or a later one is);
//!
//! and at the end the slave equals the master, hard-link groups included.
//!
//! `GEOREP_CRASH_SEED` picks the run (printed either way), `GEOREP_CRASH_KILLS` how many kills
//! (60 by default, for CI; thousands for a long run).

use crate::util::fsops::Gen;
use crate::util::*;
use rustix::process::Signal;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names of the self-checking files under `v/`.
const NAMES: usize = 8;

/// Version `ver` of file `name`: its version and length, then bytes derived from both.
fn version(name: &str, ver: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&ver.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = ver.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for b in name.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// The version a file holds, if it is whole.
fn check(name: &str, content: &[u8]) -> Result<u64, String> {
    if content.len() < 16 {
        return Err(format!("{} bytes, shorter than the header", content.len()));
    }
    let ver = u64::from_le_bytes(content[..8].try_into().unwrap());
    let len = u64::from_le_bytes(content[8..16].try_into().unwrap()) as usize;
    if content.len() != 16 + len || content != version(name, ver, len).as_slice() {
        return Err(format!(
            "{} bytes that are not version {ver} ({} bytes) or any whole version",
            content.len(),
            16 + len
        ));
    }
    Ok(ver)
}

/// What the workload did to `v/`: for each name, (time the rename returned, version).
type Done = Arc<Mutex<HashMap<String, Vec<(i64, u64)>>>>;

/// Reads the slave until `stop`: returns the violations seen and how many checks ran.
fn watch(slave: PathBuf, status: PathBuf, done: Done, stop: Arc<AtomicBool>) -> (Vec<String>, u64) {
    let mut bad = Vec::new();
    let mut checks = 0;
    let mut last_stime = 0i64;
    while !stop.load(Relaxed) && bad.len() < 20 {
        std::thread::sleep(Duration::from_millis(15));
        let Some(stime) = fs::read_to_string(&status)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["stime_ns"].as_i64())
        else {
            continue;
        };
        if stime < last_stime {
            bad.push(format!(
                "LAST_SYNCED went back from {last_stime} to {stime}"
            ));
        }
        last_stime = last_stime.max(stime);
        // What the slave must hold for this stime, taken before the slave is read.
        let required: Vec<(String, u64)> = done
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(n, vs)| {
                vs.iter()
                    .rev()
                    .find(|(t, _)| *t < stime)
                    .map(|(_, v)| (n.clone(), *v))
            })
            .collect();
        let mut held: HashMap<String, u64> = HashMap::new();
        for e in fs::read_dir(slave.join("v"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("tmp~") {
                continue; // the master's own temp files, replicated as they were
            }
            let Ok(content) = fs::read(e.path()) else {
                continue; // replaced or removed meanwhile
            };
            checks += 1;
            match check(&name, &content) {
                Ok(v) => {
                    held.insert(name, v);
                }
                Err(why) => bad.push(format!("slave v/{name}: {why}")),
            }
        }
        for (n, v) in required {
            match held.get(&n) {
                Some(h) if *h >= v => {}
                h => bad.push(format!(
                    "LAST_SYNCED {stime} is past version {v} of v/{n}, but the slave holds {h:?}"
                )),
            }
        }
    }
    (bad, checks)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Victim {
    Worker,
    Agent,
    Monitor,
    Writer,
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A pid read from a file of the brick's state that names a live process other than `old`.
fn new_pid(s: &Session<'_>, file: &str, old: i32) -> Option<i32> {
    let pid: i32 = fs::read_to_string(s.brick_dir().join(file))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid != old && alive(pid)).then_some(pid)
}

/// The agent serving this session (the local transport runs it as the worker's child).
fn agent_pid(slave: &Path) -> Option<i32> {
    pids_with_cmdline(&["agent", "--volume", slave.to_str().unwrap()])
        .into_iter()
        .find(|p| alive(*p))
}

#[test]
fn crash_suite_kill_9_anything_loses_nothing_and_never_lies() {
    if !is_root() {
        eprintln!("SKIPPED (not root): the crash suite (it mounts and kills as root)");
        return;
    }
    let seed = std::env::var("GEOREP_CRASH_SEED")
        .map(|v| v.parse::<u64>().expect("GEOREP_CRASH_SEED is not a number"))
        .unwrap_or_else(|_| now_ns() as u64 % 1_000_000);
    let target: u64 = std::env::var("GEOREP_CRASH_KILLS")
        .map(|v| v.parse().expect("GEOREP_CRASH_KILLS is not a number"))
        .unwrap_or(60);
    eprintln!("crash suite: seed {seed} (GEOREP_CRASH_SEED={seed}), {target} kills");
    let g = Georep::new();
    let (m, sl) = (g.master(), g.slave());
    fs::create_dir_all(m.join("g")).unwrap();
    fs::create_dir_all(m.join("v")).unwrap();
    // Random changes of every kind under `g/` (the convergence harness's generator).
    let mut gen = Gen::new(seed);
    gen.initial(&m.join("g"), 12);
    let mut s = Session::start(&g);
    s.converge("start");

    let done: Done = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (sl, st, d, stop) = (
            sl.clone(),
            s.brick_dir().join("status.json"),
            done.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || watch(sl, st, d, stop))
    };

    let mut rng = Rng(seed | 1);
    let mut versions = [0u64; NAMES];
    // Per victim: kills, and the total and longest time until it was back.
    let mut kills: HashMap<Victim, (u64, f64, f64)> = HashMap::new();
    let mut worker_kills_since_monitor = 0;
    let mut total = 0u64;
    let t0 = Instant::now();
    let mut steps = 0u64;
    while total < target {
        steps += 1;
        gen.step(&m.join("g"));
        // A new version of one self-checking file, replaced atomically.
        let i = rng.below(NAMES as u64) as usize;
        versions[i] += 1;
        let name = format!("f{i}");
        let content = version(&name, versions[i], rng.below(20_000) as usize);
        let tmp = m.join(format!("v/tmp~{name}"));
        fs::write(&tmp, &content).unwrap();
        fs::rename(&tmp, m.join("v").join(&name)).unwrap();
        done.lock()
            .unwrap()
            .entry(name)
            .or_default()
            .push((now_ns(), versions[i]));
        if rng.below(6) != 0 {
            std::thread::sleep(Duration::from_millis(rng.below(25)));
            continue;
        }
        let mut victim = match rng.below(4) {
            0 => Victim::Worker,
            1 => Victim::Agent,
            2 => Victim::Monitor,
            _ => Victim::Writer,
        };
        // The monitor backs off a worker that keeps dying (1, 2, 4 … 60 s): past a few
        // kills, end the monitor instead (a new one starts afresh).
        if victim == Victim::Worker && worker_kills_since_monitor >= 2 {
            victim = Victim::Monitor;
        }
        let killed_at = Instant::now();
        let back = match victim {
            Victim::Worker => {
                let pid = s.worker_pid();
                signal(pid, Signal::KILL);
                worker_kills_since_monitor += 1;
                wait_until(Duration::from_secs(20), || {
                    new_pid(&s, "worker.pid", pid).is_some()
                })
            }
            Victim::Writer => {
                let pid = s.writer_pid();
                signal(pid, Signal::KILL);
                wait_until(Duration::from_secs(20), || {
                    new_pid(&s, "writer.pid", pid).is_some()
                })
            }
            Victim::Agent => match agent_pid(&sl) {
                Some(pid) => {
                    signal(pid, Signal::KILL);
                    wait_until(Duration::from_secs(30), || {
                        agent_pid(&sl).is_some_and(|p| p != pid)
                    })
                }
                None => continue, // between connections: nothing to kill
            },
            Victim::Monitor => {
                s.kill9();
                worker_kills_since_monitor = 0;
                // Its worker ends with it (parent-death signal): wait for that, so the new
                // monitor does not find it holding the brick. The journal writer is meant to
                // outlive the monitor (it keeps recording while no monitor runs).
                let w = s.worker_pid();
                wait_until(Duration::from_secs(20), || !alive(w));
                s.run();
                wait_until(Duration::from_secs(20), || {
                    new_pid(&s, "worker.pid", w).is_some()
                })
            }
        };
        assert!(
            back,
            "after killing the {victim:?} (seed {seed}), it never came back:\n{}",
            tail(&s.log(), 40)
        );
        let took = killed_at.elapsed().as_secs_f64();
        let k = kills.entry(victim).or_default();
        *k = (k.0 + 1, k.1 + took, k.2.max(took));
        total += 1;
    }
    s.converge(&format!("{total} kills (seed {seed})"));
    // The stime of the converged session covers every version.
    let last = done
        .lock()
        .unwrap()
        .values()
        .flat_map(|v| v.iter().map(|x| x.0))
        .max()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || s.status()["stime_ns"]
            .as_i64()
            .unwrap_or(0)
            > last),
        "LAST_SYNCED never passed the last change: {}",
        s.status()
    );
    stop.store(true, Relaxed);
    let (bad, checks) = watcher.join().unwrap();
    let per: Vec<String> = kills
        .iter()
        .map(|(v, (n, sum, max))| {
            format!(
                "{v:?} {n} (back in {:.1} s avg, {max:.1} s max)",
                sum / *n as f64
            )
        })
        .collect();
    eprintln!(
        "crash suite: seed {seed}: {total} kills over {steps} steps in {:.1} s: {}; the watcher read {checks} files; {} violations",
        t0.elapsed().as_secs_f64(),
        per.join(", "),
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "seed {seed}: what the slave showed while it ran:\n{}\n{}",
        bad.join("\n"),
        tail(&s.log(), 40)
    );
}
