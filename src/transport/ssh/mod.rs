//! The SSH transport: a russh client that runs the remote agent in an exec channel.
//!
//! Invariants:
//! - The server's host key is compared with the key pinned for the session on every connection;
//!   a different key is refused with both fingerprints and the way to re-pin on purpose.
//! - The channel's read half and write half are driven by separate tasks, bridged to the
//!   synchronous `Read`/`Write` seam through bounded queues: a slow reader can never stall the
//!   connection (russh re-opens a window when data arrives, not when it is read: a task that
//!   reads and then waits to write stalls it), and memory stays bounded.

mod login;

use super::conn::{BoxRead, BoxWrite, Sink};
use super::{Link, LinkHandle, Transport};
use anyhow::{anyhow, bail, Result};
pub use login::{fingerprint, run_command, Credentials, HostKeyPolicy, SshTarget, LONG_LINK_AUTH};
use login::{login, runtime, Checker};
use russh::{client, ChannelMsg, Disconnect};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct SshTransport {
    pub target: SshTarget,
    pub key: PathBuf,
    /// The remote command (the agent); a forced command in authorized_keys overrides it.
    pub command: String,
}

#[derive(Default)]
struct Shared {
    exit_status: Option<u32>,
    stderr: String,
    error: Option<String>,
}

impl Shared {
    fn note_stderr(&mut self, data: &[u8]) {
        if self.stderr.len() < 4096 {
            self.stderr.push_str(&String::from_utf8_lossy(data));
        }
    }
}

/// How many further channels to open, and where the writers of those that opened go.
type OpenRequest = (usize, std::sync::mpsc::Sender<Result<Vec<ChanSender>>>);
type ChanSender = mpsc::Sender<Vec<u8>>;

/// Sends what the shipping thread hands over on one channel, then its end; a task of its own
/// (never the one that reads: see the module comment).
async fn write_pump(
    wr: russh::ChannelWriteHalf<client::Msg>,
    mut out_rx: mpsc::Receiver<Vec<u8>>,
    sh: Arc<Mutex<Shared>>,
) {
    // Owned buffers go out as packets of the largest size the server allows (`data` copies
    // through an 8 KiB buffer: four times the packets, each costing russh and sshd a message,
    // a MAC and a wakeup).
    while let Some(buf) = out_rx.recv().await {
        if let Err(e) = wr.data_bytes(buf).await {
            sh.lock().unwrap().error.get_or_insert(e.to_string());
            return;
        }
    }
    let _ = wr.eof().await;
}

/// Opens `n` further session channels (all at once: one round trip). Nothing runs on the
/// server yet (sshd starts a process only on `exec`).
async fn open_channels(
    h: &client::Handle<Checker>,
    n: usize,
) -> Vec<Result<russh::Channel<client::Msg>, russh::Error>> {
    // Polled together by the one runtime thread: the opens overlap.
    join_all((0..n).map(|_| h.channel_open_session()).collect()).await
}

/// Runs the agent command on the further channels that opened, for a stripe. Returns their
/// writers, at least one, in order.
async fn start_extra(
    opened: Vec<Result<russh::Channel<client::Msg>, russh::Error>>,
    command: &str,
    sh: Arc<Mutex<Shared>>,
) -> Result<Vec<ChanSender>> {
    let n = opened.len();
    let mut out = Vec::new();
    let mut first_err = None;
    for r in opened {
        let i = out.len();
        // A channel whose command fails closes: the agent serving the connection reports the
        // join missing and the master retries with one channel.
        let ch = match r {
            Ok(ch) => match ch.exec(true, command).await {
                Ok(()) => ch,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            },
            Err(e) => {
                first_err.get_or_insert(e);
                continue;
            }
        };
        let (mut rd, wr) = ch.split();
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        tokio::spawn(write_pump(wr, rx, sh.clone()));
        let sh = sh.clone();
        tokio::spawn(async move {
            // Its agent's stdout carries only its preamble; its stderr is kept, labelled, for
            // messages.
            let mut labelled = false;
            while let Some(m) = rd.wait().await {
                match m {
                    ChannelMsg::ExtendedData { data, .. } => {
                        let mut s = sh.lock().unwrap();
                        if !labelled {
                            s.note_stderr(format!("[channel {}] ", i + 1).as_bytes());
                            labelled = true;
                        }
                        s.note_stderr(&data)
                    }
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
        });
        out.push(tx);
    }
    match (out.is_empty(), first_err) {
        (true, Some(e)) => Err(anyhow!(e).context("opening further channels")),
        (_, Some(e)) => {
            tracing::warn!(
                "{} of {n} further channels did not open: {e}",
                n - out.len()
            );
            Ok(out)
        }
        _ => Ok(out),
    }
}

/// Awaits every future, polled together (the runtime has one thread; the futures are small).
async fn join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut fs: Vec<_> = fs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in fs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("polled to the end"))
        .collect()
}

impl Transport for SshTransport {
    fn connect(&self) -> Result<Link> {
        self.connect_with(0, false)
    }

    /// Logs in and opens the agent's channel and `extra` further ones at once (for a stripe):
    /// the further ones are ready by the time the handshake on the first is done. `auto`: only
    /// on a long link (a round trip of at least `LONG_LINK`), where one channel's window
    /// bounds the throughput; on a short one they would only cost processes on the DR host.
    fn connect_with(&self, extra: usize, auto: bool) -> Result<Link> {
        let key = russh::keys::load_secret_key(&self.key, None).map_err(|e| {
            crate::error::Permanent(format!(
                "loading the session key {}: {e} (recreate it with push-pem)",
                self.key.display()
            ))
        })?;
        let creds = Credentials::Key(Arc::new(key));
        let target = self.target.clone();
        let command = self.command.clone();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let (in_tx, in_rx) = mpsc::channel::<bytes_t::Chunk>(64);
        let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(8);
        let (stop_tx, mut stop_rx) = mpsc::channel::<()>(1);
        let (open_tx, mut open_rx) = mpsc::unbounded_channel::<OpenRequest>();
        let (prep_tx, prep_rx) = std::sync::mpsc::channel();
        let (long_tx, long_rx) = std::sync::mpsc::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ssh {}", target.describe()))
            .spawn(move || {
                let rt = match runtime() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    let seen = Arc::new(Mutex::new(None));
                    let opened = async {
                        let auth = Mutex::new(Duration::ZERO);
                        let h = login(&target, &creds, seen, &auth).await?;
                        let auth = *auth.lock().unwrap();
                        let long = auth >= LONG_LINK_AUTH;
                        let _ = long_tx.send(long);
                        tracing::debug!(auth_ms = auth.as_millis() as u64, long, "logged in");
                        let extra = if auto && !long { 0 } else { extra };
                        // The further channels open with the first: ready by the time the
                        // handshake on it is done.
                        let first = async {
                            let ch = h.channel_open_session().await?;
                            // russh sends the request and returns: the handshake that follows
                            // reports a refused exec (the channel's close, the stderr).
                            ch.exec(true, command.as_str()).await?;
                            Ok::<_, anyhow::Error>(ch)
                        };
                        let further = async {
                            match extra {
                                0 => None,
                                n => Some(
                                    start_extra(open_channels(&h, n).await, &command, sh.clone())
                                        .await,
                                ),
                            }
                        };
                        let (ch, further) = tokio::join!(first, further);
                        if let Some(f) = further {
                            let _ = prep_tx.send(f);
                        }
                        Ok::<_, anyhow::Error>((h, ch?))
                    }
                    .await;
                    let (h, ch) = match opened {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let h = Arc::new(h);
                    let (mut rd, wr) = ch.split();
                    let writer = tokio::spawn(write_pump(wr, out_rx, sh.clone()));
                    let mut extra = Vec::new();
                    loop {
                        let msg = tokio::select! {
                            m = rd.wait() => m,
                            _ = stop_rx.recv() => None,
                            Some((n, reply)) = open_rx.recv() => {
                                let (h, command, sh) = (h.clone(), command.clone(), sh.clone());
                                extra.push(tokio::spawn(async move {
                                    let opened = open_channels(&h, n).await;
                                    let _ = reply.send(start_extra(opened, &command, sh).await);
                                }));
                                continue;
                            }
                        };
                        match msg {
                            Some(ChannelMsg::Data { data }) => {
                                if in_tx.send(data.to_vec()).await.is_err() {
                                    break;
                                }
                            }
                            Some(ChannelMsg::ExtendedData { data, .. }) => {
                                sh.lock().unwrap().note_stderr(&data);
                            }
                            Some(ChannelMsg::ExitStatus { exit_status }) => {
                                sh.lock().unwrap().exit_status = Some(exit_status)
                            }
                            Some(ChannelMsg::Close) | None => break,
                            Some(_) => {}
                        }
                    }
                    for t in extra {
                        t.abort();
                    }
                    drop(in_tx);
                    writer.abort();
                    let _ = h.disconnect(Disconnect::ByApplication, "", "en").await;
                });
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => bail!("ssh connection thread for {} died", self.target.describe()),
        }
        Ok(Link {
            reader: Box::new(ChanReader {
                rx: in_rx,
                buf: Vec::new(),
                pos: 0,
            }) as BoxRead,
            writer: Box::new(ChanWriter { tx: Some(out_tx) }) as BoxWrite,
            handle: Box::new(SshHandle {
                thread: Some(thread),
                shared,
                stop: stop_tx,
                open: open_tx,
                prepared: (extra > 0).then_some((extra, prep_rx)),
                stripes: !auto || long_rx.try_recv().unwrap_or(false),
                what: self.describe(),
            }),
        })
    }

    fn describe(&self) -> String {
        self.target.describe()
    }
}

mod bytes_t {
    pub type Chunk = Vec<u8>;
}

struct ChanReader {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct ChanWriter {
    tx: Option<mpsc::Sender<Vec<u8>>>,
}

impl Sink for ChanWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.send_vec(buf.to_vec()).map(drop)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// The frame writer's buffer goes to russh as it is (no copy); a new one comes back.
    fn send_vec(&mut self, buf: Vec<u8>) -> io::Result<Vec<u8>> {
        let tx = self.tx.as_ref().ok_or(io::ErrorKind::BrokenPipe)?;
        let cap = buf.capacity();
        tx.blocking_send(buf)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "ssh channel closed"))?;
        Ok(Vec::with_capacity(cap))
    }
}

struct SshHandle {
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Mutex<Shared>>,
    stop: mpsc::Sender<()>,
    open: mpsc::UnboundedSender<OpenRequest>,
    /// Whether further channels are opened at all (not on a short link when `auto`).
    stripes: bool,
    /// Channels opened with the first (`connect_with`): how many, and where they come.
    prepared: Option<(usize, std::sync::mpsc::Receiver<Result<Vec<ChanSender>>>)>,
    what: String,
}

impl LinkHandle for SshHandle {
    fn stripes(&self) -> bool {
        self.stripes
    }

    fn release_channels(&mut self) {
        // Their writers go with the answer (now, or when it comes): each channel gets its end.
        self.prepared = None;
    }

    fn extra_channels(&mut self, n: usize) -> Result<Vec<BoxWrite>> {
        if !self.stripes {
            return Ok(Vec::new());
        }
        let rx = match self.prepared.take() {
            Some((m, rx)) if m == n => rx,
            _ => {
                let (tx, rx) = std::sync::mpsc::channel();
                self.open
                    .send((n, tx))
                    .map_err(|_| anyhow!("the ssh connection to {} is gone", self.what))?;
                rx
            }
        };
        let senders = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("{}: further channels did not open within 30 s", self.what))??;
        Ok(senders
            .into_iter()
            .map(|tx| Box::new(ChanWriter { tx: Some(tx) }) as BoxWrite)
            .collect())
    }

    fn close(&mut self) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            if std::time::Instant::now() > deadline {
                self.abort();
                bail!("{}: the remote agent did not finish within 30 s", self.what);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let s = self.shared.lock().unwrap();
        match s.exit_status {
            Some(0) => Ok(()),
            Some(c) => bail!(
                "remote agent on {} exited with {c}: {}",
                self.what,
                s.stderr.trim()
            ),
            None => match &s.error {
                Some(e) => bail!("ssh channel to {} failed: {e}", self.what),
                None => Ok(()),
            },
        }
    }

    fn abort(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stderr_tail(&self) -> Option<String> {
        let s = self.shared.lock().unwrap();
        (!s.stderr.trim().is_empty()).then(|| s.stderr.trim().to_string())
    }
}

impl Drop for SshHandle {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.abort();
        }
    }
}
