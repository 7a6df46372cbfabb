//! The monitor's Prometheus exporter: the session's status rows (`status::metrics`) served over
//! HTTP at `metrics-listen` when it is set, rendered fresh for each scrape, and written every few
//! seconds to `$GEOREP_HOME/metrics/<session>.prom` for node_exporter's textfile collector
//! (`georep_session_up 0` once the monitor stops).
//!
//! The server is a loop on its own thread that answers one request at a time, each within
//! `REQUEST_DEADLINE` whatever the client does (a trickle of bytes included): a scraper that
//! hangs cannot hold the monitor or its shutdown, and nothing it sends is more than a request
//! line and headers (8 KiB at most).

use crate::config::Home;
use crate::session::SessionConfig;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the textfile is written.
const TEXTFILE_EVERY: Duration = Duration::from_secs(5);
/// Longest request head read.
const MAX_REQUEST: usize = 8 << 10;
/// Longest time one request may take, reading and answering.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Where the textfile of `session` goes.
pub fn textfile(home: &Home, session: &str) -> PathBuf {
    home.metrics.join(format!("{session}.prom"))
}

/// Worker restarts per brick path, kept by the monitor.
pub type Restarts = Arc<Mutex<HashMap<String, u64>>>;

pub struct Exporter {
    home: Home,
    cfg: SessionConfig,
    restarts: Restarts,
    written: Option<Instant>,
    stop: Arc<AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
}

fn render(home: &Home, cfg: &SessionConfig, up: bool, restarts: &Restarts) -> String {
    let rows = match crate::status::rows(home, Some(&cfg.master), Some(&cfg.slave)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("metrics: reading the status of {}: {e:#}", cfg.name);
            Vec::new()
        }
    };
    let r = restarts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    crate::status::metrics::render(&cfg.name, up, &rows, &|b| r.get(b).copied().unwrap_or(0))
}

impl Exporter {
    /// Starts serving at the session's `metrics-listen`, if set. A port that cannot be bound is
    /// logged with the fix; the textfile is written all the same.
    pub fn start(home: &Home, cfg: &SessionConfig, restarts: Restarts) -> Exporter {
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = None;
        if let Some(addr) = &cfg.options.metrics_listen {
            match addr
                .parse::<SocketAddr>()
                .map_err(anyhow::Error::from)
                .and_then(|a| TcpListener::bind(a).map_err(anyhow::Error::from))
            {
                Ok(l) => {
                    tracing::info!(%addr, "serving Prometheus metrics at http://{addr}/metrics");
                    let (home, cfg, restarts, stop) =
                        (home.clone(), cfg.clone(), restarts.clone(), stop.clone());
                    server = std::thread::Builder::new()
                        .name("metrics".into())
                        .spawn(move || serve(l, &home, &cfg, &restarts, &stop))
                        .ok();
                }
                Err(e) => tracing::error!(
                    "metrics-listen {addr}: cannot listen ({e:#}); no metrics are served. Free the port or choose another: `georep config {} {} metrics-listen HOST:PORT`",
                    cfg.master,
                    cfg.slave
                ),
            }
        }
        Exporter {
            home: home.clone(),
            cfg: cfg.clone(),
            restarts,
            written: None,
            stop,
            server,
        }
    }

    /// Writes the textfile when it is due.
    pub fn tick(&mut self) {
        if self.written.is_some_and(|t| t.elapsed() < TEXTFILE_EVERY) {
            return;
        }
        self.written = Some(Instant::now());
        self.write(true);
    }

    fn write(&self, up: bool) {
        let path = textfile(&self.home, &self.cfg.name);
        let text = render(&self.home, &self.cfg, up, &self.restarts);
        let r = std::fs::create_dir_all(&self.home.metrics)
            .and_then(|()| crate::fsutil::atomic_write(&path, text.as_bytes()));
        if let Err(e) = r {
            tracing::warn!("writing {}: {e:#}", path.display());
        }
    }
}

impl Drop for Exporter {
    /// The monitor stops: the textfile says so, and the server ends.
    fn drop(&mut self) {
        self.write(false);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn serve(l: TcpListener, home: &Home, cfg: &SessionConfig, restarts: &Restarts, stop: &AtomicBool) {
    if let Err(e) = l.set_nonblocking(true) {
        tracing::error!("metrics: {e}");
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        match l.accept() {
            Ok((s, peer)) => {
                if let Err(e) = answer(s, home, cfg, restarts) {
                    tracing::debug!(%peer, "metrics request: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("metrics: accepting: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn answer(
    mut s: TcpStream,
    home: &Home,
    cfg: &SessionConfig,
    restarts: &Restarts,
) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::TimedOut))
    };
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        s.set_read_timeout(Some(left()?))?;
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(home, cfg, true, restarts),
        ),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            format!("georep metrics of session {}: /metrics\n", cfg.name),
        ),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    let mut out = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    for part in out.chunks(64 << 10) {
        s.set_write_timeout(Some(left()?))?;
        s.write_all(part)?;
    }
    s.flush()
}
