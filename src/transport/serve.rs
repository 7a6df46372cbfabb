//! `georep serve`: an embedded SSH server (russh) that only ever runs the agent, for DR hosts
//! without OpenSSH.
//!
//! Invariants: a client authenticates only with a key listed in the authorized-keys file (re-read
//! on every login, `command="..."` honoured like OpenSSH); the only command ever run is
//! `<georep> agent --volume V`; shells, ptys, subsystems and any forwarding are refused.

use crate::transport::ssh::fingerprint;
use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::{LineEnding, PublicKey};
use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct ServeOptions {
    pub listen: String,
    pub host_key: PathBuf,
    pub authorized_keys: PathBuf,
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

/// The forced command of the authorized_keys line holding `key`, if the key is listed:
/// `Some(None)` = listed without a forced command.
fn lookup(file: &Path, key: &PublicKey) -> Option<Option<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Options come first when the line does not start with the key type.
        let (opts, rest) = if line.starts_with("ssh-") || line.starts_with("ecdsa-") {
            ("", line)
        } else {
            split_options(line)
        };
        let Ok(k) = PublicKey::from_openssh(rest) else {
            continue;
        };
        if k.key_data() == key.key_data() {
            let forced = opts
                .split(',')
                .find_map(|o| o.strip_prefix("command=\""))
                .map(|c| c.trim_end_matches('"').to_string());
            return Some(forced);
        }
    }
    None
}

/// Splits `opts rest` where opts may contain quoted spaces.
fn split_options(line: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => return (&line[..i], line[i + 1..].trim_start()),
            _ => {}
        }
    }
    (line, "")
}

/// The volume of `<anything> agent --volume V`, the only command this server runs.
fn agent_volume(cmd: &str) -> Option<String> {
    let w: Vec<&str> = cmd.split_whitespace().collect();
    match w.as_slice() {
        [_, "agent", "--volume", v] => Some(v.to_string()),
        _ => None,
    }
}

#[derive(Clone)]
struct Server {
    keys: PathBuf,
    exe: PathBuf,
}

struct Conn {
    keys: PathBuf,
    exe: PathBuf,
    forced: Option<String>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl russh::server::Server for Server {
    type Handler = Conn;
    fn new_client(&mut self, _: Option<std::net::SocketAddr>) -> Conn {
        Conn {
            keys: self.keys.clone(),
            exe: self.exe.clone(),
            forced: None,
            channels: HashMap::new(),
        }
    }
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match lookup(&self.keys, key.public_key) {
            Some(forced) => {
                tracing::info!(user, key = %fingerprint(key.public_key), "login");
                self.forced = forced;
                Ok(Auth::Accept)
            }
            None => Ok(Auth::reject()),
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _: &mut Session,
    ) -> Result<(), Self::Error> {
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

/// `georep serve --listen ADDR:PORT --host-key FILE --authorized-keys FILE`, until killed.
pub fn serve(o: &ServeOptions) -> Result<()> {
    let key = host_key(&o.host_key)?;
    if !o.authorized_keys.exists() {
        bail!(
            "authorized keys file {} does not exist: put the session keys there (one per line, as in OpenSSH)",
            o.authorized_keys.display()
        );
    }
    println!(
        "georep serve: listening on {}, host key {}",
        o.listen,
        fingerprint(key.public_key())
    );
    let config = russh::server::Config {
        keys: vec![key],
        auth_rejection_time: std::time::Duration::from_millis(300),
        auth_rejection_time_initial: Some(std::time::Duration::from_millis(0)),
        // A large window lets one channel fill long links (OpenSSH's 2 MiB caps ~16 MiB/s at 113 ms).
        window_size: 16 << 20,
        inactivity_timeout: None,
        keepalive_interval: Some(std::time::Duration::from_secs(5)),
        ..Default::default()
    };
    let mut server = Server {
        keys: o.authorized_keys.clone(),
        exe: std::env::current_exe()?,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use russh::server::Server as _;
        server
            .run_on_address(Arc::new(config), o.listen.as_str())
            .await
    })
    .with_context(|| format!("serving on {}", o.listen))
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
    }

    #[test]
    fn options_with_quoted_spaces() {
        let (o, r) =
            split_options("command=\"georep agent --volume v\",restrict ssh-ed25519 AAAA c");
        assert_eq!(o, "command=\"georep agent --volume v\",restrict");
        assert_eq!(r, "ssh-ed25519 AAAA c");
    }
}
