//! Further channels of one connection (a stripe, `transport/stripe.rs`). sshd runs an agent per
//! channel; the agent of a further channel hands its input to the agent serving the
//! connection, then waits for that one to end. The hand-over is a descriptor passed over a
//! Unix socket in the abstract namespace, named at random by the serving agent
//! (`Welcome::join`): nothing is copied, and the serving agent reads every channel itself.
//!
//! Invariants:
//! - only a process of this agent's own user may join (the socket's peer credentials), for the
//!   same slave root, each channel index once, all within `JOIN_TIMEOUT`;
//! - a joined agent holds its channel open until the serving agent ends (its socket closes),
//!   so sshd never closes a channel that is being read.

use crate::protocol::MAX_CHANNELS;
use crate::transport::conn::BoxRead;
use crate::transport::silence::Silence;
use anyhow::{anyhow, bail, Context, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the serving agent waits for the further channels the master said it opened.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
const MAGIC: &[u8; 4] = b"GRJN";
/// Magic, index, the root's length, the leftover's length.
const HEADER: usize = 4 + 1 + 4 + 4;
/// Input a joining agent read past its `Join` (its frame reader's buffer) is passed along.
const MAX_LEFTOVER: usize = 16 << 20;

/// Where the serving agent takes further channels.
pub struct Rendezvous {
    listener: UnixListener,
    name: String,
}

/// The joined agents' sockets: held while the connection is served; dropping them lets those
/// agents end.
pub struct Joined(#[allow(dead_code)] Vec<UnixStream>);

fn addr(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

impl Rendezvous {
    pub fn bind() -> Result<Self> {
        let mut b = [0u8; 16];
        rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
            .context("random name for the join socket")?;
        let name = format!(
            "georep-join-{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        );
        let listener = UnixListener::bind_addr(&addr(&name)?)
            .with_context(|| format!("binding the join socket @{name}"))?;
        listener.set_nonblocking(true)?;
        Ok(Rendezvous { listener, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes channels 1..n of the stripe (0 is the connection's own) and returns their inputs
    /// in order, each watched by `silence` as the first one is.
    pub fn accept(self, n: u8, root: &Path, silence: &Silence) -> Result<(Vec<BoxRead>, Joined)> {
        if n == 0 || n > MAX_CHANNELS {
            bail!("a stripe of {n} channels (1 to {MAX_CHANNELS})");
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        let mut inputs: Vec<Option<BoxRead>> = (1..n).map(|_| None).collect();
        let mut held = Vec::new();
        while inputs.iter().any(Option::is_none) {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let missing: Vec<String> = inputs
                            .iter()
                            .enumerate()
                            .filter(|(_, i)| i.is_none())
                            .map(|(k, _)| (k + 1).to_string())
                            .collect();
                        bail!(
                            "channels {} of the master's stripe did not join within {} s (a channel refused by sshd's MaxSessions, or lost): the master retries",
                            missing.join(", "),
                            JOIN_TIMEOUT.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => return Err(e).context("accepting on the join socket"),
            };
            let (index, input) = take(&stream, root)?;
            if index >= n {
                bail!("channel {index} joined a stripe of {n} channels");
            }
            let slot = &mut inputs[usize::from(index) - 1];
            if slot.is_some() {
                bail!("channel {index} joined the stripe twice");
            }
            *slot = Some(silence.watch_also(input));
            held.push(stream);
        }
        Ok((
            inputs.into_iter().map(Option::unwrap).collect(),
            Joined(held),
        ))
    }
}

/// One joining agent's hand-over: checked, its input rebuilt (leftover first, then the passed
/// descriptor).
fn take(stream: &UnixStream, root: &Path) -> Result<(u8, BoxRead)> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let cred = rustix::net::sockopt::socket_peercred(stream.as_fd())?;
    if cred.uid != rustix::process::geteuid() {
        bail!(
            "a process of uid {} (pid {}) tried to join this connection: refused",
            cred.uid.as_raw(),
            cred.pid.as_raw_nonzero()
        );
    }
    let mut header = [0u8; HEADER];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut header)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?
    .bytes;
    let mut fd: Option<OwnedFd> = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                if fd.is_some() {
                    bail!("a joining channel passed more than one descriptor");
                }
                fd = Some(f);
            }
        }
    }
    let fd = fd.ok_or_else(|| anyhow!("a joining channel passed no descriptor"))?;
    let mut s = stream;
    s.read_exact(&mut header[got..])?;
    if &header[..4] != MAGIC {
        bail!("a joining channel sent no join header");
    }
    let index = header[4];
    let root_len = u32::from_le_bytes(header[5..9].try_into().unwrap()) as usize;
    let leftover_len = u32::from_le_bytes(header[9..13].try_into().unwrap()) as usize;
    if index == 0 || index >= MAX_CHANNELS || root_len > 4096 || leftover_len > MAX_LEFTOVER {
        bail!("a joining channel sent a bad header (channel {index})");
    }
    let mut theirs = vec![0u8; root_len];
    s.read_exact(&mut theirs)?;
    if theirs != root.as_os_str().as_bytes() {
        bail!(
            "channel {index} joined from the agent of another volume ({}), not {}",
            String::from_utf8_lossy(&theirs),
            root.display()
        );
    }
    let mut leftover = vec![0u8; leftover_len];
    s.read_exact(&mut leftover)?;
    let input = std::io::Cursor::new(leftover).chain(std::fs::File::from(fd));
    Ok((index, Box::new(input)))
}

/// The agent of a further channel: hands `input` (with what was already read of it,
/// `leftover`) to the agent that offered `name`, then waits for that one to end.
pub fn join(name: &str, index: u8, root: &Path, input: OwnedFd, leftover: &[u8]) -> Result<()> {
    if leftover.len() > MAX_LEFTOVER {
        bail!("{} bytes read ahead of the join", leftover.len());
    }
    let mut s = UnixStream::connect_addr(&addr(name)?).with_context(|| {
        format!(
            "joining channel {index} to the connection @{name}: it is gone (the master retries)"
        )
    })?;
    let root = root.as_os_str().as_bytes();
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.push(index);
    header.extend_from_slice(&(root.len() as u32).to_le_bytes());
    header.extend_from_slice(&(leftover.len() as u32).to_le_bytes());
    let fds = [input.as_fd()];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        bail!("no room for a descriptor in the join message");
    }
    let sent = rustix::net::sendmsg(
        s.as_fd(),
        &[IoSlice::new(&header)],
        &mut control,
        SendFlags::empty(),
    )?;
    s.write_all(&header[sent..])?;
    s.write_all(root)?;
    s.write_all(leftover)?;
    drop(input);
    tracing::debug!(index, "joined the connection @{name}");
    // Until the serving agent ends (or refused this channel).
    let mut b = [0u8; 1];
    let _ = s.read(&mut b);
    Ok(())
}
