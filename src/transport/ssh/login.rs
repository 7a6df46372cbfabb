//! Reaching an SSH server: the host-key policy, the client's settings, the login (pinned host
//! key, public-key authentication timed for `channels auto`) and short commands (`push-pem`).
//!
//! Invariant: a host key other than the pinned one, and a key the server refuses, are errors
//! retrying cannot help (`error::Permanent`): each names the fix.

use crate::error::Permanent;
use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::{HashAlg, PublicKey};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{client, ChannelMsg, Disconnect};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the server's host key is checked.
#[derive(Clone, Debug)]
pub enum HostKeyPolicy {
    /// Must equal this key (the session's pinned key).
    Pinned(PublicKey),
    /// Must have this SHA256 fingerprint (`--host-key SHA256:…`).
    Fingerprint(String),
    /// Trust on first use: accept and report it (only `create push-pem` does this).
    FirstUse,
}

/// Who to log in as and how.
#[derive(Clone)]
pub enum Credentials {
    Key(Arc<PrivateKey>),
    /// The operator's ssh-agent ($SSH_AUTH_SOCK), for `create push-pem`.
    Agent,
}

#[derive(Clone)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub host_key: HostKeyPolicy,
}

impl SshTarget {
    pub fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// How long the public-key authentication (three round trips and the server's checks) takes
/// from which `channels auto` stripes the stream: a round trip of about 30 ms, below which one
/// channel's window (OpenSSH's 2 MiB) carries well over 60 MiB/s. (The open of a channel would
/// be one round trip, but sshd answers it up to 40 ms late on loopback: Nagle's algorithm.)
pub const LONG_LINK_AUTH: Duration = Duration::from_millis(100);

pub fn fingerprint(k: &PublicKey) -> String {
    k.fingerprint(HashAlg::Sha256).to_string()
}

pub(super) struct Checker {
    policy: HostKeyPolicy,
    /// The key the server showed (for TOFU and for messages).
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for Checker {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false); // certificates are not configured for georep sessions
        };
        *self.seen.lock().unwrap() = Some(key.clone());
        Ok(match &self.policy {
            HostKeyPolicy::Pinned(p) => p.key_data() == key.key_data(),
            HostKeyPolicy::Fingerprint(f) => fingerprint(key) == *f,
            HostKeyPolicy::FirstUse => true,
        })
    }
}

pub(super) fn config() -> Arc<client::Config> {
    let mut c = client::Config {
        // A dead link is noticed within about 15 s; an idle but healthy one is kept.
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        inactivity_timeout: None,
        ..Default::default()
    };
    // AES-GCM ran 2-3x faster than chacha20-poly1305 here (docs/benchmarks.md).
    c.preferred.cipher = std::borrow::Cow::Owned(vec![
        russh::cipher::AES_256_GCM,
        russh::cipher::CHACHA20_POLY1305,
        russh::cipher::AES_256_CTR,
    ]);
    Arc::new(c)
}

/// Connects and authenticates; the error names the host and what to do.
pub(super) async fn login(
    target: &SshTarget,
    creds: &Credentials,
    seen: Arc<Mutex<Option<PublicKey>>>,
    auth: &Mutex<Duration>,
) -> Result<client::Handle<Checker>> {
    let checker = Checker {
        policy: target.host_key.clone(),
        seen: seen.clone(),
    };
    let addr = (target.host.as_str(), target.port);
    let mut h = match tokio::time::timeout(Duration::from_secs(20), async {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        // Handshake and acks are small messages: do not let Nagle hold them for 40 ms.
        tcp.set_nodelay(true)?;
        client::connect_stream(config(), tcp, checker).await
    })
    .await
    {
        Err(_) => bail!(
            "connecting to {}: no answer within 20 s (is the host reachable and sshd running?)",
            target.describe()
        ),
        Ok(Err(russh::Error::UnknownKey)) => {
            let shown = seen.lock().unwrap().clone();
            let shown = shown
                .as_ref()
                .map(fingerprint)
                .unwrap_or_else(|| "?".into());
            let expected = match &target.host_key {
                HostKeyPolicy::Pinned(p) => fingerprint(p),
                HostKeyPolicy::Fingerprint(f) => f.clone(),
                HostKeyPolicy::FirstUse => "-".into(),
            };
            bail!(Permanent(format!(
                "host key of {} changed: pinned {expected}, offered {shown}; if the DR host was reinstalled on purpose, re-pin with `georep create <mastervol> <slave> push-pem force --host-key {shown}`",
                target.describe()
            )))
        }
        Ok(Err(e)) => {
            return Err(anyhow!(e)).with_context(|| {
                format!(
                    "connecting to {} (is sshd running and the port right?)",
                    target.describe()
                )
            })
        }
        Ok(Ok(h)) => h,
    };
    let ok = match creds {
        Credentials::Key(k) => {
            let alg = h.best_supported_rsa_hash().await?.flatten();
            let t = std::time::Instant::now();
            let ok = h
                .authenticate_publickey(&target.user, PrivateKeyWithHashAlg::new(k.clone(), alg))
                .await?
                .success();
            // Three round trips (the service request, the key offered, the signature) and the
            // server's checks: how long the link is, near enough (`LONG_LINK_AUTH`).
            *auth.lock().unwrap() = t.elapsed();
            ok
        }
        Credentials::Agent => {
            let mut agent = russh::keys::agent::client::AgentClient::connect_env()
                .await
                .context("no ssh-agent ($SSH_AUTH_SOCK); pass --identity FILE")?;
            let mut ok = false;
            for k in agent.request_identities().await? {
                if h.authenticate_publickey_with(
                    &target.user,
                    k.public_key().into_owned(),
                    None,
                    &mut agent,
                )
                .await
                .is_ok_and(|r| r.success())
                {
                    ok = true;
                    break;
                }
            }
            ok
        }
    };
    if !ok {
        bail!(Permanent(format!(
            "{} refused the key for user {}: check that it is in that user's authorized_keys (georep create ... push-pem puts it there)",
            target.describe(),
            target.user
        )));
    }
    Ok(h)
}

/// Runs `command` on the target and returns (exit status, stdout, stderr). For short commands
/// (push-pem's checks), not for the replication stream.
pub fn run_command(
    target: &SshTarget,
    creds: &Credentials,
    command: &str,
) -> Result<(u32, Vec<u8>, String, Option<PublicKey>)> {
    let rt = runtime()?;
    rt.block_on(async {
        let seen = Arc::new(Mutex::new(None));
        let h = login(target, creds, seen.clone(), &Mutex::new(Duration::ZERO)).await?;
        let mut ch = h.channel_open_session().await?;
        ch.exec(true, command).await?;
        let (mut out, mut err, mut code) = (Vec::new(), String::new(), None);
        while let Some(m) = ch.wait().await {
            match m {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => {
                    err.push_str(&String::from_utf8_lossy(&data))
                }
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                _ => {}
            }
        }
        let _ = h.disconnect(Disconnect::ByApplication, "", "en").await;
        let key = seen.lock().unwrap().clone();
        Ok((code.unwrap_or(255), out, err, key))
    })
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
