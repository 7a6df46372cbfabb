//! Further channels of one connection (a stripe, `transport/stripe.rs`). sshd runs an agent per
//! channel; the agent of a further channel hands its input to the agent serving the
//! connection, then waits for that one to end. The hand-over is a descriptor passed over a
//! Unix socket in the abstract namespace, named at random by the serving agent
//! (`Welcome::join`): nothing is copied, and the serving agent reads every channel itself.
//!
//! Invariants:
//! - a join counts only from a process of this agent's own user (the socket's peer
//!   credentials) that repeats the offer's secret token (the socket's name is visible to every
//!   local user in /proc/net/unix; the token travels only in the SSH channels), for the same
//!   slave root, each channel index once; anything else is logged and dropped, never the end of
//!   the connection (a local user could otherwise stop replication);
//! - a joining agent connects only to a name of this shape and to a listener of its own user,
//!   waits for the serving agent to say it took the channel, and then holds its channel open
//!   until that agent ends, so sshd never closes a channel that is being read;
//! - the joins must all come within the silence limit (at most `JOIN_TIMEOUT`).

use crate::protocol::DID_NOT_JOIN;
use crate::protocol::{JoinOffer, MAX_CHANNELS};
use crate::transport::conn::BoxRead;
use crate::transport::silence::Silence;
use anyhow::{anyhow, bail, Context, Result};
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
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

/// The longest the serving agent waits for the further channels the master said it opened.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
const PREFIX: &str = "georep-join-";
const MAGIC: &[u8; 4] = b"GRJN";
/// Magic, token, index, the root's length, the leftover's length.
const HEADER: usize = 4 + 16 + 1 + 4 + 4;
/// Input a joining agent read past its `Join` (its frame reader's buffer) is passed along.
const MAX_LEFTOVER: usize = 16 << 20;
/// What the serving agent answers a join it took.
const TAKEN: u8 = 1;

/// Where the serving agent takes further channels.
pub struct Rendezvous {
    listener: UnixListener,
    offer: JoinOffer,
}

/// The joined agents' sockets: held while the connection is served; dropping them lets those
/// agents end.
pub struct Joined(#[allow(dead_code)] Vec<UnixStream>);

fn addr(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

fn random16() -> Result<[u8; 16]> {
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .context("random bytes for the join socket")?;
    Ok(b)
}

/// The uid of the process at the other end of a Unix socket (libc: rustix's `UCred` cannot
/// hold the pid 0 the kernel gives for a peer in another pid namespace).
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the call; the kernel writes at most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

impl Rendezvous {
    pub fn bind() -> Result<Self> {
        let name = format!(
            "{PREFIX}{}",
            random16()?
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        );
        let listener = UnixListener::bind_addr(&addr(&name)?)
            .with_context(|| format!("binding the join socket @{name}"))?;
        listener.set_nonblocking(true)?;
        Ok(Rendezvous {
            listener,
            offer: JoinOffer {
                name,
                token: random16()?,
            },
        })
    }

    pub fn offer(&self) -> &JoinOffer {
        &self.offer
    }

    /// Takes channels 1..n of the stripe (0 is the connection's own) and returns their inputs
    /// in order, each watched by `silence` as the first one is. Joins that do not count are
    /// logged and dropped; only their absence at the deadline ends the connection.
    pub fn accept(self, n: u8, root: &Path, silence: &Silence) -> Result<(Vec<BoxRead>, Joined)> {
        if n == 0 || n > MAX_CHANNELS {
            bail!("a stripe of {n} channels (1 to {MAX_CHANNELS})");
        }
        let wait = JOIN_TIMEOUT.min(silence.limit());
        let deadline = Instant::now() + wait;
        let mut inputs: Vec<Option<BoxRead>> = (1..n).map(|_| None).collect();
        let mut held = Vec::new();
        while inputs.iter().any(Option::is_none) {
            let mut stream = match self.listener.accept() {
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
                            "channels {} of the master's stripe {DID_NOT_JOIN} {} s (refused by sshd's MaxSessions or a process limit, or lost): the master retries with one channel",
                            missing.join(", "),
                            wait.as_secs()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => return Err(e).context("accepting on the join socket"),
            };
            match take(&stream, &self.offer.token, root, n) {
                Ok((index, input)) => {
                    let slot = &mut inputs[usize::from(index) - 1];
                    if slot.is_some() {
                        tracing::warn!("channel {index} joined the stripe twice: dropped");
                        continue;
                    }
                    if stream.write_all(&[TAKEN]).is_err() {
                        tracing::warn!("channel {index} left before it was taken");
                        continue;
                    }
                    *slot = Some(silence.watch_also(input));
                    held.push(stream);
                }
                Err(e) => tracing::warn!("a join was refused: {e:#}"),
            }
        }
        Ok((
            inputs.into_iter().map(Option::unwrap).collect(),
            Joined(held),
        ))
    }
}

/// One joining agent's hand-over: checked, its input rebuilt (leftover first, then the passed
/// descriptor).
fn take(stream: &UnixStream, token: &[u8; 16], root: &Path, n: u8) -> Result<(u8, BoxRead)> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let uid = peer_uid(stream)?;
    if uid != rustix::process::geteuid().as_raw() {
        bail!("a process of uid {uid} tried to join this connection");
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
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = m {
            fds.extend(passed);
        }
    }
    let mut s = stream;
    s.read_exact(&mut header[got..])?;
    if &header[..4] != MAGIC {
        bail!("no join header");
    }
    if header[4..20] != token[..] {
        bail!("a join without this connection's token");
    }
    let [fd] = <[OwnedFd; 1]>::try_from(fds)
        .map_err(|f| anyhow!("a join passed {} descriptors, not one", f.len()))?;
    let index = header[20];
    let root_len = u32::from_le_bytes(header[21..25].try_into().unwrap()) as usize;
    let leftover_len = u32::from_le_bytes(header[25..29].try_into().unwrap()) as usize;
    if index == 0 || index >= n {
        bail!("channel {index} joined a stripe of {n} channels");
    }
    if root_len > 4096 || leftover_len > MAX_LEFTOVER {
        bail!("channel {index} sent a bad header");
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
/// `leftover`) to the agent that made `offer`, then waits for that one to end.
pub fn join(
    offer: &JoinOffer,
    index: u8,
    root: &Path,
    input: OwnedFd,
    leftover: &[u8],
) -> Result<()> {
    let name = &offer.name;
    let well_formed = name.strip_prefix(PREFIX).is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !well_formed {
        bail!("refused to join {name:?}: not a georep join socket");
    }
    if leftover.len() > MAX_LEFTOVER {
        bail!("{} bytes read ahead of the join", leftover.len());
    }
    let mut s = UnixStream::connect_addr(&addr(name)?).with_context(|| {
        format!(
            "joining channel {index} to the connection @{name}: it is gone (the master retries)"
        )
    })?;
    let uid = peer_uid(&s)?;
    if uid != rustix::process::geteuid().as_raw() {
        bail!("refused to join @{name}: it is held by uid {uid}, not this agent's user");
    }
    let root = root.as_os_str().as_bytes();
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&offer.token);
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
    // Taken, or refused (closed without a word), within the time the serving agent waits.
    s.set_read_timeout(Some(JOIN_TIMEOUT + Duration::from_secs(10)))?;
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(1) if b[0] == TAKEN => {}
        _ => bail!("channel {index} was not taken by the connection @{name}"),
    }
    tracing::debug!(index, "joined the connection @{name}");
    // Until the serving agent ends.
    s.set_read_timeout(None)?;
    let _ = s.read(&mut b);
    Ok(())
}
