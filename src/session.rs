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
        // The first `::` after any bracketed IPv6 address ends the host part.
        let from = s
            .find(']')
            .filter(|_| s.starts_with('[') || s.contains("@["))
            .unwrap_or(0);
        if let Some(at) = s[from..].find("::").map(|i| i + from) {
            let (remote, vol) = (&s[..at], &s[at + 2..]);
            if vol.is_empty() {
                bail!("slave {s:?} names no volume after '::'");
            }
            let (user, hostport) = match remote.split_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, remote),
            };
            let (host, port) = split_host_port(s, hostport)?;
            if host.is_empty() {
                bail!("slave {s:?} names no host before '::'");
            }
            if vol.contains("::") {
                bail!("slave {s:?}: put an IPv6 address in brackets: [fe80::1]::volume");
            }
            let bad_host = host.starts_with('-')
                || !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
            if bad_host {
                bail!("slave {s:?}: {host:?} is not a host name or address (IPv6 goes in brackets: [::1]::volume)");
            }
            if let Some(u) = &user {
                let ok = !u.is_empty()
                    && !u.starts_with('-')
                    && u.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
                if !ok {
                    bail!("slave {s:?}: {u:?} is not a user name");
                }
            }
            crate::shellword::check_volume(vol).map_err(|e| anyhow::anyhow!("slave {s:?}: {e}"))?;
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

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str, hostport: &str) -> Result<(String, Option<u16>)> {
    let port = |p: &str| {
        p.parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("slave {s:?}: port {p:?} is not a number"))
    };
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("slave {s:?}: '[' without ']'"))?;
        return match after {
            "" => Ok((host.to_string(), None)),
            a => match a.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), port(p)?)),
                None => bail!("slave {s:?}: unexpected {a:?} after ']'"),
            },
        };
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) => Ok((h.to_string(), port(p)?)),
        None => Ok((hostport.to_string(), None)),
    }
}

pub use crate::fsutil::slug;

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
        let s = SlaveSpec::parse("geo@[::1]:2222::/dr/x").unwrap();
        assert_eq!((s.host.as_deref(), s.port), (Some("::1"), Some(2222)));
        assert_eq!(s.volume, "/dr/x");
        let s = SlaveSpec::parse("[fe80::1]::gv1").unwrap();
        assert_eq!(
            (s.host.as_deref(), s.port, s.volume.as_str()),
            (Some("fe80::1"), None, "gv1")
        );
    }

    /// Review holes 5 and 8 (issue 13): names that would reach the slave's command line as
    /// something else, or escape to another directory there.
    #[test]
    fn hostile_slaves_are_refused() {
        for bad in [
            "h::../../etc",
            "h::-x",
            "h::/dr/x;id",
            "h::/dr/$(id)",
            "h::/",
            "h::/dr/../etc",
            "-oProxyCommand=id::gv1",
            "a;b::gv1",
            "-l@h::gv1",
            "u;id@h::gv1",
            "[::1::gv1",
            "fe80::1::gv1",
        ] {
            assert!(SlaveSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn slugs_are_distinct() {
        assert_ne!(slug("/a/b"), slug("/a_b"));
        assert_eq!(slug("gv0"), "gv0");
    }
}

/// A session's stored definition: `$GEOREP_HOME/etc/sessions/<name>.toml`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionConfig {
    pub format: u32,
    pub name: String,
    /// Master volume name or absolute path, as given to `create`.
    pub master: String,
    /// Slave as given to `create`.
    pub slave: String,
    #[serde(default)]
    pub excludes: Vec<String>,
    pub created: String,
    /// SSH port of the slave (`ssh-port N` at create); the slave spec's own port wins.
    #[serde(default)]
    pub ssh_port: Option<u16>,
    /// Path of georep on the slave host (config `remote-georep`).
    #[serde(default)]
    pub remote_georep: Option<String>,
    /// Options set with `georep config` (unset = default).
    #[serde(default)]
    pub options: crate::options::SessionOptions,
    /// `create … force`: the first crawl may make a slave that holds files no brick of the
    /// volume sent equal to the master (without it, such a slave makes the worker Faulty).
    #[serde(default)]
    pub adopt_slave: bool,
}

const SESSION_FORMAT: u32 = 1;

impl SessionConfig {
    pub fn file(home: &Home, name: &str) -> PathBuf {
        home.etc.join("sessions").join(format!("{name}.toml"))
    }

    /// The session's name: the one `create ... name N` gave it, else the generated
    /// `<mastervol>_<slavehost>_<slavevol>`.
    pub fn name_for(home: &Home, master: &str, slave: &str) -> Result<String> {
        let vol = Volume::resolve(home, master)?;
        let spec = SlaveSpec::parse(slave)?;
        let generated = session_name(&vol, &spec);
        Ok(Self::find(home, master, slave, &generated).unwrap_or(generated))
    }

    /// The session of `master` -> `slave` on this node, by its generated name first.
    fn find(home: &Home, master: &str, slave: &str, generated: &str) -> Option<String> {
        let is_it = |name: &str| {
            Self::load_by_name(home, name)
                .is_ok_and(|c| c.slave == slave && same_volume(home, master, &c.master))
        };
        if is_it(generated) {
            return Some(generated.to_string());
        }
        Self::names(home).into_iter().find(|n| is_it(n))
    }

    /// Every session defined on this node, by name.
    pub fn names(home: &Home) -> Vec<String> {
        let mut names: Vec<_> = match std::fs::read_dir(home.etc.join("sessions")) {
            Ok(rd) => rd
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".toml")
                        .map(String::from)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }

    pub fn exists(home: &Home, master: &str, slave: &str) -> Result<bool> {
        let vol = Volume::resolve(home, master)?;
        let generated = session_name(&vol, &SlaveSpec::parse(slave)?);
        Ok(Self::find(home, master, slave, &generated).is_some())
    }

    /// A new session; `name` is the operator's short name (checked like a volume name), else
    /// the generated one.
    pub fn new(
        home: &Home,
        master: &str,
        slave: &str,
        name: Option<&str>,
    ) -> Result<SessionConfig> {
        let name = match name {
            Some(n) => {
                crate::volume::validate_name(n)
                    .map_err(|e| anyhow::anyhow!("session name: {e}"))?;
                // Generated names join their parts with '_': a short name without one can
                // never be another pair's generated name.
                if n.contains('_') {
                    bail!("session name {n:?}: use letters, digits, '-' and '.' ('_' is kept for generated names)");
                }
                n.to_string()
            }
            None => Self::name_for(home, master, slave)?,
        };
        Ok(SessionConfig {
            format: SESSION_FORMAT,
            name,
            master: master.to_string(),
            slave: slave.to_string(),
            excludes: Vec::new(),
            created: chrono::Utc::now().to_rfc3339(),
            ssh_port: None,
            remote_georep: None,
            options: Default::default(),
            adopt_slave: false,
        })
    }

    pub fn save(&self, home: &Home) -> Result<()> {
        let path = Self::file(home, &self.name);
        crate::fsutil::atomic_write(&path, toml::to_string_pretty(self)?.as_bytes())
            .map_err(|e| anyhow::anyhow!("writing session {}: {e}", path.display()))
    }

    /// The session of `master` -> `slave` (never another pair's, whatever its name).
    pub fn load(home: &Home, master: &str, slave: &str) -> Result<SessionConfig> {
        let vol = Volume::resolve(home, master)?;
        let generated = session_name(&vol, &SlaveSpec::parse(slave)?);
        match Self::find(home, master, slave, &generated) {
            Some(name) => Self::load_named(home, &name, master, slave),
            None => bail!(
                "no session {master} -> {slave} on this node: create it with `georep create {master} {slave}`"
            ),
        }
    }

    pub fn load_by_name(home: &Home, name: &str) -> Result<SessionConfig> {
        Self::load_named(home, name, name, "")
    }

    /// The session named `name` on this node, if there is one.
    pub fn named(home: &Home, name: &str) -> Option<SessionConfig> {
        if crate::volume::validate_name(name).is_err() || !Self::file(home, name).exists() {
            return None;
        }
        Self::load_by_name(home, name).ok()
    }

    fn load_named(home: &Home, name: &str, master: &str, slave: &str) -> Result<SessionConfig> {
        let path = Self::file(home, name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "no session {master} -> {slave} on this node: create it with `georep create {master} {slave}`"
                )
            } else {
                anyhow::anyhow!("reading session {}: {e}", path.display())
            }
        })?;
        let c: SessionConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
        if c.format != SESSION_FORMAT {
            bail!(
                "{} has format {}, this georep understands {SESSION_FORMAT}: upgrade georep",
                path.display(),
                c.format
            );
        }
        Ok(c)
    }

    /// Removes the session. `keep_sync_state` keeps each brick's index (what the slave has,
    /// and the stime), so a new session to the same slave sends only the differences.
    pub fn remove(&self, home: &Home, keep_sync_state: bool) -> Result<()> {
        let path = Self::file(home, &self.name);
        std::fs::remove_file(&path)
            .map_err(|e| anyhow::anyhow!("removing session {}: {e}", path.display()))?;
        let state = home.state.join("sessions").join(&self.name);
        let remove = |p: &std::path::Path| -> Result<()> {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
            r.map_err(|e| anyhow::anyhow!("removing {}: {e}", p.display()))
        };
        if !state.exists() {
            return Ok(());
        }
        if !keep_sync_state {
            return remove(&state);
        }
        for top in std::fs::read_dir(&state)? {
            let top = top?.path();
            if top.file_name() != Some(std::ffi::OsStr::new("bricks")) {
                remove(&top)?;
                continue;
            }
            for brick in std::fs::read_dir(&top)? {
                for f in std::fs::read_dir(brick?.path())? {
                    let f = f?.path();
                    let name = f.file_name().unwrap_or_default().to_string_lossy();
                    if !name.starts_with("index.db") {
                        remove(&f)?;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn volume(&self, home: &Home) -> Result<Volume> {
        Volume::resolve(home, &self.master)
    }

    pub fn slave_spec(&self) -> Result<SlaveSpec> {
        SlaveSpec::parse(&self.slave)
    }

    pub fn remote_georep(&self) -> &str {
        self.remote_georep.as_deref().unwrap_or("georep")
    }

    /// The SSH target of a remote slave (user default root, as with Gluster).
    pub fn ssh_target(
        &self,
        host_key: crate::transport::ssh::HostKeyPolicy,
    ) -> Result<crate::transport::ssh::SshTarget> {
        let spec = self.slave_spec()?;
        Ok(crate::transport::ssh::SshTarget {
            user: spec.user.clone().unwrap_or_else(|| "root".into()),
            host: spec
                .host
                .clone()
                .ok_or_else(|| anyhow::anyhow!("slave {} is not remote", self.slave))?,
            port: spec.port.or(self.ssh_port).unwrap_or(22),
            host_key,
        })
    }
}

// The monitor's files: what `status` and the lifecycle commands read of a running session.

/// A session's state directory on this node.
pub fn session_dir(home: &Home, session: &str) -> PathBuf {
    home.state.join("sessions").join(session)
}

/// Present while the session is paused (`georep pause`).
pub fn paused_flag(home: &Home, session: &str) -> PathBuf {
    session_dir(home, session).join("paused")
}

pub fn is_paused(home: &Home, session: &str) -> bool {
    paused_flag(home, session).exists()
}

/// Held by the session's monitor while it runs on this node.
pub fn monitor_lock(home: &Home, session: &str) -> PathBuf {
    session_dir(home, session).join("monitor.lock")
}

pub fn is_running(home: &Home, session: &str) -> bool {
    crate::fsutil::is_locked(&monitor_lock(home, session))
}

/// The pid of the session's monitor on this node, as it wrote it.
pub fn monitor_pid(home: &Home, session: &str) -> Option<rustix::process::Pid> {
    std::fs::read_to_string(session_dir(home, session).join("monitor.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
}

/// `MASTER` as given on the command line names a session's master volume `stored` (by name or
/// path).
pub fn same_volume(home: &Home, given: &str, stored: &str) -> bool {
    given == stored
        || Volume::resolve(home, given)
            .ok()
            .zip(Volume::resolve(home, stored).ok())
            .is_some_and(|(a, b)| a.name == b.name)
}
