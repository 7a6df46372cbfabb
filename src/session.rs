//! Sessions: one master volume replicated to one slave. Parses the slave syntax and names the
//! session and its per-brick state directories.

use crate::config::Home;
use crate::volume::{Brick, Volume};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Where replication goes: `PATH`, `VOLNAME` (on this host) or `[user@]host[:port]::VOLUME`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaveSpec {
    pub user: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// A volume name on the slave host, or an absolute path there.
    pub volume: String,
}

impl SlaveSpec {
    pub fn parse(s: &str) -> Result<SlaveSpec> {
        if let Some((remote, vol)) = s.split_once("::") {
            if vol.is_empty() {
                bail!("slave {s:?} names no volume after '::'");
            }
            let (user, hostport) = match remote.split_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, remote),
            };
            let (host, port) =
                match hostport.rsplit_once(':') {
                    Some((h, p)) if !h.contains(']') || h.ends_with(']') => (
                        h.trim_matches(|c| c == '[' || c == ']').to_string(),
                        Some(p.parse().map_err(|_| {
                            anyhow::anyhow!("slave {s:?}: port {p:?} is not a number")
                        })?),
                    ),
                    _ => (hostport.to_string(), None),
                };
            if host.is_empty() {
                bail!("slave {s:?} names no host before '::'");
            }
            return Ok(SlaveSpec {
                user,
                host: Some(host),
                port,
                volume: vol.to_string(),
            });
        }
        if s.is_empty() {
            bail!("empty slave: give a path, a volume name or [user@]host::volume");
        }
        Ok(SlaveSpec {
            user: None,
            host: None,
            port: None,
            volume: s.to_string(),
        })
    }

    pub fn is_local(&self) -> bool {
        self.host.is_none()
    }

    /// Host part of the session name.
    pub fn host_label(&self) -> String {
        self.host.clone().unwrap_or_else(|| "local".to_string())
    }
}

/// A file-name-safe form of `s`: readable, plus a short hash when anything had to change.
pub fn slug(s: &str) -> String {
    let clean: String = s
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean == s && !clean.is_empty() {
        clean
    } else {
        let h = blake3::hash(s.as_bytes()).to_hex();
        format!("{}-{}", clean.chars().take(48).collect::<String>(), &h[..8])
    }
}

/// `<mastervol>_<slavehost>_<slavevol>`, file-name safe.
pub fn session_name(master: &Volume, slave: &SlaveSpec) -> String {
    format!(
        "{}_{}_{}",
        slug(&master.name),
        slug(&slave.host_label()),
        slug(&slave.volume)
    )
}

/// The state directory of one brick of a session on this node.
pub fn brick_state_dir(home: &Home, session: &str, brick: &Brick) -> PathBuf {
    home.state
        .join("sessions")
        .join(session)
        .join("bricks")
        .join(slug(&brick.path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_slaves() {
        let s = SlaveSpec::parse("geo@dr1:2222::gv1").unwrap();
        assert_eq!(s.user.as_deref(), Some("geo"));
        assert_eq!(s.host.as_deref(), Some("dr1"));
        assert_eq!(s.port, Some(2222));
        assert_eq!(s.volume, "gv1");
        let s = SlaveSpec::parse("dr1::/data/dr").unwrap();
        assert_eq!((s.host.as_deref(), s.port), (Some("dr1"), None));
        assert!(SlaveSpec::parse("/data/dr").unwrap().is_local());
        assert!(SlaveSpec::parse("dr1::").is_err());
        assert!(SlaveSpec::parse("dr1:x::v").is_err());
    }

    #[test]
    fn slugs_are_distinct() {
        assert_ne!(slug("/a/b"), slug("/a_b"));
        assert_eq!(slug("gv0"), "gv0");
    }
}
