//! The local transport: runs `georep agent` as a child process and talks to it over pipes.
//! Same protocol as SSH; used for same-host targets and tests.

use super::{Link, LinkHandle, Transport};
use anyhow::{bail, Context, Result};
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LocalTransport {
    pub volume: String,
    pub exe: PathBuf,
}

impl LocalTransport {
    pub fn new(volume: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the georep executable")?;
        Ok(LocalTransport {
            volume: volume.to_string(),
            exe,
        })
    }
}

impl Transport for LocalTransport {
    fn connect(&self) -> Result<Link> {
        let mut child = Command::new(&self.exe)
            .arg("agent")
            .arg("--volume")
            .arg(&self.volume)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} agent", self.exe.display()))?;
        let reader = Box::new(child.stdout.take().unwrap());
        let writer = Box::new(child.stdin.take().unwrap());
        // The agent reports errors in-band; its stderr is kept for when it dies silently.
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let err = child.stderr.take().unwrap();
        let t = tail.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                tracing::debug!(target: "georep::agent", "{line}");
                let mut t = t.lock().unwrap();
                if t.len() == 20 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Link {
            reader,
            writer,
            handle: Box::new(ChildHandle {
                child,
                what: self.describe(),
                tail,
            }),
        })
    }

    fn describe(&self) -> String {
        format!("local agent for {}", self.volume)
    }
}

struct ChildHandle {
    child: Child,
    what: String,
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl LinkHandle for ChildHandle {
    fn close(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    let said = self
                        .stderr_tail()
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default();
                    bail!("{} exited with {status}{said}", self.what);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                self.abort();
                bail!(
                    "{} did not exit within 30 s after the session ended",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn abort(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn peak_rss_kb(&self) -> Option<u64> {
        peak_rss_kb(&format!("/proc/{}/status", self.child.id()))
    }

    fn stderr_tail(&self) -> Option<String> {
        let t = self.tail.lock().unwrap();
        (!t.is_empty()).then(|| t.iter().cloned().collect::<Vec<_>>().join("; "))
    }
}

impl Drop for ChildHandle {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.abort();
        }
    }
}

/// Peak resident memory (`VmHWM`) of this process, in KiB. Unlike `getrusage`, it is not
/// inherited across `execve`, so it measures georep and not whoever started it.
pub fn self_peak_rss_kb() -> Option<u64> {
    peak_rss_kb("/proc/self/status")
}

fn peak_rss_kb(status_file: &str) -> Option<u64> {
    let s = std::fs::read_to_string(status_file).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
