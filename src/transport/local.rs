//! The local transport: runs `georep agent` as a child process and talks to it over pipes.
//! Same protocol as SSH; used for same-host targets and tests.

use super::{Link, LinkHandle, Transport};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} agent", self.exe.display()))?;
        let reader = Box::new(child.stdout.take().unwrap());
        let writer = Box::new(child.stdin.take().unwrap());
        Ok(Link {
            reader,
            writer,
            handle: Box::new(ChildHandle {
                child,
                what: self.describe(),
                peak_rss_kb: None,
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
    peak_rss_kb: Option<u64>,
}

impl LinkHandle for ChildHandle {
    fn close(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.peak_rss_kb = children_peak_rss_kb();
                if !status.success() {
                    bail!("{} exited with {status}", self.what);
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
        self.peak_rss_kb
    }
}

impl Drop for ChildHandle {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.abort();
        }
    }
}

/// Largest peak RSS among this process's waited-for children, in KiB.
pub fn children_peak_rss_kb() -> Option<u64> {
    rusage_max_kb(libc::RUSAGE_CHILDREN)
}

/// Peak RSS of this process, in KiB.
pub fn self_peak_rss_kb() -> Option<u64> {
    rusage_max_kb(libc::RUSAGE_SELF)
}

fn rusage_max_kb(who: libc::c_int) -> Option<u64> {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    (rc == 0).then_some(ru.ru_maxrss as u64)
}
