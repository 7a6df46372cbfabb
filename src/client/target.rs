//! Where a connection goes: the slave of a session, parsed once, with what reaching it takes
//! (the host-key policy, the session key and the quoted remote command).

use crate::config::Home;
use crate::session::{SessionConfig, SlaveSpec};
use crate::shellword::Word;
use crate::transport::local::LocalTransport;
use crate::transport::ssh::{HostKeyPolicy, SshTarget, SshTransport};
use crate::transport::Transport;
use anyhow::{anyhow, bail, Context, Result};
use std::path::PathBuf;

/// The slave end of a session.
#[derive(Debug, Clone, PartialEq)]
pub enum Slave {
    /// A path or a volume name on this host: the agent runs as a child process.
    Local { volume: String },
    /// A volume on another host, reached over SSH (user root and port 22 unless given).
    Remote {
        user: String,
        host: String,
        port: u16,
        volume: String,
    },
}

impl Slave {
    /// `spec` with the session's SSH port (`ssh_port`) where the spec names none.
    pub fn from_spec(spec: &SlaveSpec, ssh_port: Option<u16>) -> Slave {
        match &spec.host {
            None => Slave::Local {
                volume: spec.volume.clone(),
            },
            Some(host) => Slave::Remote {
                user: spec.user.clone().unwrap_or_else(|| "root".into()),
                host: host.clone(),
                port: spec.port.or(ssh_port).unwrap_or(22),
                volume: spec.volume.clone(),
            },
        }
    }

    pub fn volume(&self) -> &str {
        match self {
            Slave::Local { volume } | Slave::Remote { volume, .. } => volume,
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Slave::Local { .. })
    }
}

/// A session's slave and how to reach it, built once from the session.
#[derive(Clone)]
pub struct Target {
    /// The session's name (the agent keys its state by it).
    pub session: String,
    pub slave: Slave,
    /// Remote only: the pinned host key, the session's key and the agent's command line.
    ssh: Option<(HostKeyPolicy, PathBuf, String)>,
}

impl Target {
    /// The slave of `cfg` (also a config not saved yet, as `create` checks it).
    pub fn of_session(home: &Home, cfg: &SessionConfig) -> Result<Target> {
        let spec = cfg.slave_spec()?;
        let slave = Slave::from_spec(&spec, cfg.ssh_port);
        let ssh = match &slave {
            Slave::Local { .. } => None,
            Slave::Remote { host, volume, .. } => {
                let session = &cfg.name;
                let fp_file = crate::keys::ssh_dir(home, session).join("host_key.fp");
                let policy = match crate::keys::pinned_host_key(home, session)? {
                    Some(k) => HostKeyPolicy::Pinned(k),
                    None => match std::fs::read_to_string(&fp_file) {
                        Ok(fp) => HostKeyPolicy::Fingerprint(fp.trim().to_string()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            bail!(crate::error::Permanent(format!(
                                "session {session} has no pinned host key for {host}: run `georep create ... push-pem` (or no-verify --host-key SHA256:...)"
                            )))
                        }
                        Err(e) => {
                            return Err(e).with_context(|| format!("reading {}", fp_file.display()))
                        }
                    },
                };
                let command = crate::shellword::command(
                    cfg.remote_georep(),
                    &[
                        Word::Fixed("agent"),
                        Word::Fixed("--volume"),
                        Word::Arg("slave volume", volume),
                    ],
                )?;
                Some((policy, crate::keys::key_path(home, session), command))
            }
        };
        Ok(Target {
            session: cfg.name.clone(),
            slave,
            ssh,
        })
    }

    /// The slave `spec` of session `session`: a remote one needs the session (its key and
    /// pinned host key), a local one does not.
    pub fn for_slave(home: &Home, session: &str, spec: &SlaveSpec) -> Result<Target> {
        if spec.is_local() {
            return Ok(Target::local(session, &spec.volume));
        }
        let host = spec.host.as_deref().unwrap_or_default();
        let cfg = SessionConfig::load_by_name(home, session).map_err(|_| {
            anyhow!(
                "no session for slave {host}::{}: create it first with `georep create <mastervol> {host}::{} push-pem` (it sets up the session key and pins the host key)",
                spec.volume,
                spec.volume
            )
        })?;
        Target::of_session(home, &cfg)
    }

    /// A slave on this host.
    pub fn local(session: &str, volume: &str) -> Target {
        Target {
            session: session.to_string(),
            slave: Slave::Local {
                volume: volume.to_string(),
            },
            ssh: None,
        }
    }

    pub fn is_local(&self) -> bool {
        self.slave.is_local()
    }

    /// The slave volume (a name or a path on the slave host).
    pub fn volume(&self) -> &str {
        self.slave.volume()
    }

    /// A transport to the slave's agent.
    pub fn transport(&self) -> Result<Box<dyn Transport>> {
        Ok(match (&self.slave, &self.ssh) {
            (Slave::Local { volume }, _) => Box::new(LocalTransport::new(volume)?),
            (
                Slave::Remote {
                    user, host, port, ..
                },
                Some((policy, key, command)),
            ) => Box::new(SshTransport {
                target: SshTarget {
                    user: user.clone(),
                    host: host.clone(),
                    port: *port,
                    host_key: policy.clone(),
                },
                key: key.clone(),
                command: command.clone(),
            }),
            (Slave::Remote { host, .. }, None) => {
                bail!("no SSH set-up for {host}: internal error (a remote target built without its session)")
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_slave_gets_the_session_port_and_root_unless_it_names_them() {
        let spec = SlaveSpec::parse("dr1::gv0").unwrap();
        assert_eq!(
            Slave::from_spec(&spec, Some(2222)),
            Slave::Remote {
                user: "root".into(),
                host: "dr1".into(),
                port: 2222,
                volume: "gv0".into()
            }
        );
        let spec = SlaveSpec::parse("geo@dr1:23::gv0").unwrap();
        assert_eq!(
            Slave::from_spec(&spec, Some(2222)),
            Slave::Remote {
                user: "geo".into(),
                host: "dr1".into(),
                port: 23,
                volume: "gv0".into()
            }
        );
        let spec = SlaveSpec::parse("/data/dr").unwrap();
        assert!(Slave::from_spec(&spec, None).is_local());
    }
}
