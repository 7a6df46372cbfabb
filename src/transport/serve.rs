//! `georep serve`: an embedded SSH server (russh) that only ever runs the agent, for DR hosts
//! without OpenSSH.
//!
//! Invariants: a client authenticates only with a key listed in the authorized-keys file (re-read
//! on every login; `command="..."`, `from=` and `expiry-time=` honoured like OpenSSH, and a key
//! without a forced command refused unless `--allow-unforced`); the only command ever run is
//! `<georep> agent --volume V`; shells, ptys, subsystems and any forwarding are refused; a
//! client that has not authenticated within the login grace time is closed, and at most
//! `--max-startups` wait for authentication at once.

use crate::transport::authkeys::{lookup, Lookup};
use crate::transport::ssh::fingerprint;
use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg};
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct ServeOptions {
    pub listen: String,
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
    /// Accept keys listed without `command="..."` (they may then ask for any volume's agent).
    pub allow_unforced: bool,
    /// A connection not authenticated within this time is closed (OpenSSH's `LoginGraceTime`).
    pub login_grace: Duration,
    /// At most this many connections wait for authentication at once; more are dropped at
    /// accept (OpenSSH's `MaxStartups`, without the random early drop).
    pub max_startups: usize,
}

/// Loads the host key, or makes one (ed25519, 0600) on first start.
fn host_key(path: &Path) -> Result<PrivateKey> {
    if path.exists() {
        return russh::keys::load_secret_key(path, None)
            .with_context(|| format!("loading host key {}", path.display()));
    }
    let mut seed = [0u8; 32];
    rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty())?;
    let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
        &seed,
    ));
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| anyhow!("{e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating host key {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    Ok(key)
}

/// The volume of `<anything> agent --volume V`, the only command this server runs. The
/// command is split as a shell would split it, and anything a shell would read otherwise is
/// refused.
fn agent_volume(cmd: &str) -> Option<String> {
    let w = crate::shellword::split(cmd)?;
    match w.as_slice() {
        [_, a, v, vol] if a == "agent" && v == "--volume" => {
            crate::shellword::check_volume(vol).ok()?;
            Some(vol.clone())
        }
        _ => None,
    }
}

struct Conn {
    keys: PathBuf,
    exe: PathBuf,
    peer: Option<IpAddr>,
    allow_unforced: bool,
    forced: Option<String>,
    /// Set once the client authenticated: the grace timer and the startup count let it be.
    startup: Startup,
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Session channels opened on this connection so far (each runs an agent process).
    opened: usize,
}

/// Session channels one connection may open: a master's stripe at most (each one forks an
/// agent; a client has no use for more).
/// Set by `georep serve` in the environment of the agents it runs.
pub const SERVED_BY_SERVE: &str = "GEOREP_SERVED_BY_SERVE";
const MAX_SESSION_CHANNELS: usize = 1 + crate::protocol::MAX_CHANNELS as usize;

/// One connection counted against `max_startups` until it authenticates or ends.
struct Startup {
    waiting: Arc<AtomicUsize>,
    authenticated: Arc<AtomicBool>,
}

impl Startup {
    fn authenticated(&self) {
        if !self.authenticated.swap(true, Ordering::SeqCst) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Startup {
    fn drop(&mut self) {
        self.authenticated();
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let peer = self.peer;
        match lookup(&self.keys, key.public_key, peer) {
            Lookup::Allowed(None) if !self.allow_unforced => {
                tracing::warn!(
                    user,
                    ?peer,
                    key = %fingerprint(key.public_key),
                    "refused: the key has no command=\"...\" in {} (add the line `georep create ... no-verify` prints, or start serve with --allow-unforced)",
                    self.keys.display()
                );
                Ok(Auth::reject())
            }
            Lookup::Allowed(forced) => {
                tracing::info!(user, ?peer, key = %fingerprint(key.public_key), "login");
                self.forced = forced;
                self.startup.authenticated();
                Ok(Auth::Accept)
            }
            Lookup::Refused => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.opened >= MAX_SESSION_CHANNELS {
            tracing::warn!(
                "refused a session channel: {MAX_SESSION_CHANNELS} were opened on this connection already"
            );
            reply
                .reject(russh::ChannelOpenFailure::ResourceShortage)
                .await;
            return Ok(());
        }
        self.opened += 1;
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let asked = String::from_utf8_lossy(data).into_owned();
        let cmd = self.forced.clone().unwrap_or(asked);
        let (Some(volume), Some(channel)) = (agent_volume(&cmd), self.channels.remove(&id)) else {
            tracing::warn!("refused exec {cmd:?}: georep serve only runs the agent");
            return refuse(session, id);
        };
        session.channel_success(id)?;
        let handle = session.handle();
        let exe = self.exe.clone();
        tokio::spawn(async move {
            let code = run_agent(&exe, &volume, channel).await.unwrap_or_else(|e| {
                tracing::warn!("agent for {volume}: {e:#}");
                255
            });
            let _ = handle.exit_status_request(id, code).await;
            let _ = handle.eof(id).await;
            let _ = handle.close(id).await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(session, id)
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        _: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse(session, id)
    }

    async fn tcpip_forward(
        &mut self,
        _: &str,
        _: &mut u32,
        _: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _: Channel<Msg>,
        _: &str,
        _: u32,
        _: &str,
        _: u32,
        reply: russh::server::ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

/// Answers a channel request with failure and closes the channel.
fn refuse(session: &mut Session, id: ChannelId) -> Result<(), russh::Error> {
    session.channel_failure(id)?;
    session.close(id)?;
    Ok(())
}

/// Runs `georep agent --volume V` as a child and pumps the channel both ways, each direction
/// on its own task. Returns the agent's exit status.
async fn run_agent(exe: &Path, volume: &str, channel: Channel<Msg>) -> Result<u32> {
    let mut child = tokio::process::Command::new(exe)
        .args(["agent", "--volume", volume])
        .env(SERVED_BY_SERVE, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The agent reports errors to the master in-band; its stderr goes to serve's log.
    if let Some(err) = child.stderr.take() {
        let volume = volume.to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::info!(%volume, "agent: {l}");
            }
        });
    }
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut rd, wr) = channel.split();
    let input = tokio::spawn(async move {
        while let Some(msg) = rd.wait().await {
            match msg {
                ChannelMsg::Data { data } if stdin.write_all(&data).await.is_err() => break,
                ChannelMsg::Eof | ChannelMsg::Close => break,
                _ => {}
            }
        }
        // Dropping stdin tells the agent the master is done.
    });
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = stdout.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        // Owned: sent in packets as large as the client allows (`data` goes 8 KiB at a time).
        if wr.data_bytes(buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
    let status = child.wait().await?;
    input.abort();
    Ok(status.code().unwrap_or(255) as u32)
}

/// `georep serve --listen ADDR:PORT --host-key FILE --authorized-keys FILE`, until killed;
/// `listening` is told the address and the host key's fingerprint once it listens.
pub fn serve(o: &ServeOptions, listening: impl FnOnce(&str, &str)) -> Result<()> {
    let key = host_key(&o.host_key)?;
    if !o.authorized_keys.exists() {
        bail!(
            "authorized keys file {} does not exist: put the session keys there (one per line, as in OpenSSH)",
            o.authorized_keys.display()
        );
    }
    let config = Arc::new(russh::server::Config {
        keys: vec![key.clone()],
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::from_millis(0)),
        // A large window lets one channel fill long links (OpenSSH's 2 MiB caps ~16 MiB/s at 113 ms).
        window_size: 16 << 20,
        // A live client answers the keepalives, which counts as activity: only a silent
        // (dead or half-open) client reaches either limit.
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        inactivity_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let exe = std::env::current_exe()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.listen.as_str())
            .await
            .with_context(|| format!("listening on {}", o.listen))?;
        listening(&o.listen, &fingerprint(key.public_key()));
        let waiting = Arc::new(AtomicUsize::new(0));
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait rather than spin.
                    tracing::warn!("accepting on {}: {e}", o.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if waiting.load(Ordering::SeqCst) >= o.max_startups {
                tracing::warn!(
                    %peer,
                    "dropped: {} connections are already waiting to authenticate (--max-startups)",
                    o.max_startups
                );
                continue;
            }
            waiting.fetch_add(1, Ordering::SeqCst);
            let authenticated = Arc::new(AtomicBool::new(false));
            let conn = Conn {
                keys: o.authorized_keys.clone(),
                exe: exe.clone(),
                peer: Some(peer.ip()),
                allow_unforced: o.allow_unforced,
                forced: None,
                startup: Startup {
                    waiting: waiting.clone(),
                    authenticated: authenticated.clone(),
                },
                channels: HashMap::new(),
                opened: 0,
            };
            let _ = socket.set_nodelay(true);
            tokio::spawn(connection(
                config.clone(),
                socket,
                conn,
                authenticated,
                o.login_grace,
            ));
        }
    })
}

/// Runs one client connection; closes it if it has not authenticated within `grace`.
async fn connection(
    config: Arc<russh::server::Config>,
    socket: tokio::net::TcpStream,
    conn: Conn,
    authenticated: Arc<AtomicBool>,
    grace: Duration,
) {
    let peer = conn.peer;
    let deadline = tokio::time::Instant::now() + grace;
    let session =
        match tokio::time::timeout_at(deadline, russh::server::run_stream(config, socket, conn))
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(?peer, "connection ended before the handshake: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    ?peer,
                    "no SSH handshake within the login grace time: closed"
                );
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        r = &mut session => {
            if let Err(e) = r {
                tracing::debug!(?peer, "connection ended: {e}");
            }
            return;
        }
        () = tokio::time::sleep_until(deadline) => {}
    }
    if !authenticated.load(Ordering::SeqCst) {
        tracing::warn!(
            ?peer,
            "not authenticated within the login grace time: closed"
        );
        let _ = handle
            .disconnect(
                russh::Disconnect::ByApplication,
                "login grace time exceeded".into(),
                String::new(),
            )
            .await;
        // The session task ends on its own; `session` is dropped here, which only detaches it.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut session).await;
        return;
    }
    if let Err(e) = session.await {
        tracing::debug!(?peer, "connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agent_runs() {
        assert_eq!(
            agent_volume("/usr/bin/georep agent --volume gv1").as_deref(),
            Some("gv1")
        );
        assert_eq!(
            agent_volume("georep agent --volume /dr/x").as_deref(),
            Some("/dr/x")
        );
        assert!(agent_volume("id").is_none());
        assert!(agent_volume("georep agent --volume x; rm -rf /").is_none());
        assert!(agent_volume("sh -c georep agent --volume x").is_none());
        assert_eq!(
            agent_volume("'/usr/bin/georep' agent --volume '/dr/x'").as_deref(),
            Some("/dr/x")
        );
        // Review hole 6 (issue 13): never a shortened or widened volume.
        for bad in [
            "georep agent --volume /",
            "georep agent --volume /dr/a,b",
            "georep agent --volume '/dr/x;id'",
            "georep agent --volume $(id)",
            "georep agent --volume ../etc",
        ] {
            assert!(agent_volume(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_forced_command_with_a_comma_is_read_whole() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ak");
        let key = PrivateKey::from(russh::keys::ssh_key::private::Ed25519Keypair::from_seed(
            &[7; 32],
        ));
        let public = key.public_key().to_openssh().unwrap();
        let line = format!(
            "from=\"127.0.0.1,::1\",command=\"georep agent --volume '/dr/a,b'\",restrict {public}\n"
        );
        std::fs::write(&f, line).unwrap();
        let lo = Some("127.0.0.1".parse().unwrap());
        assert_eq!(
            lookup(&f, key.public_key(), lo),
            Lookup::Allowed(Some("georep agent --volume '/dr/a,b'".into()))
        );
        // ... which agent_volume then refuses whole, rather than running /dr/a.
        assert!(agent_volume("georep agent --volume '/dr/a,b'").is_none());
        let other = Some("10.1.2.3".parse().unwrap());
        assert_eq!(lookup(&f, key.public_key(), other), Lookup::Refused);
        std::fs::write(
            &f,
            format!("expiry-time=\"20000101\",command=\"georep agent --volume v\" {public}\n"),
        )
        .unwrap();
        assert_eq!(lookup(&f, key.public_key(), lo), Lookup::Refused);
        std::fs::write(
            &f,
            format!("bogus,command=\"georep agent --volume v\" {public}\n"),
        )
        .unwrap();
        assert_eq!(lookup(&f, key.public_key(), lo), Lookup::Refused);
        // As sshd: one site's line refusing this client does not hide another site's line.
        std::fs::write(
            &f,
            format!(
                "from=\"10.0.0.0/8\",command=\"georep agent --volume a\" {public}\nfrom=\"127.0.0.1\",command=\"georep agent --volume b\" {public}\n"
            ),
        )
        .unwrap();
        assert_eq!(
            lookup(&f, key.public_key(), lo),
            Lookup::Allowed(Some("georep agent --volume b".into()))
        );
    }
}
