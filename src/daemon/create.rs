//! `georep create`: the session registered and checked against the slave (a real handshake,
//! a census of a non-empty slave), the session key set up (`push-pem` with the operator's own
//! credentials, or a line to install by hand), and the journal writers started.

use super::writer::ensure_writer;
use crate::config::{Home, SyncOptions};
use crate::session::{self, SessionConfig};
use crate::volume::Brick;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of `georep create`.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub verify: bool,
    pub push_pem: bool,
    pub force: bool,
    pub ssh_port: Option<u16>,
    pub identity: Option<PathBuf>,
    pub host_key: Option<String>,
    pub remote_georep: Option<String>,
    pub create_root: bool,
    /// `name NAME`: the session's short name (default: generated from master and slave).
    pub name: Option<String>,
}

/// What `create` made, and what it has to tell the operator on the way (a host key pinned, a
/// key to install by hand).
pub struct Created {
    pub cfg: SessionConfig,
    pub notes: Vec<String>,
}

/// `georep create MASTER SLAVE [push-pem] [no-verify] [ssh-port N] [name NAME] [force]`.
pub fn create(home: &Home, master: &str, slave: &str, o: &CreateOptions) -> Result<Created> {
    let exists = SessionConfig::exists(home, master, slave)?;
    let name = if exists {
        let current = SessionConfig::name_for(home, master, slave)?;
        if let Some(n) = o.name.as_deref().filter(|n| *n != current) {
            bail!("session {master} -> {slave} already exists as {current}: `georep delete {current}` it first to name it {n}");
        }
        current
    } else {
        let cfg = SessionConfig::new(home, master, slave, o.name.as_deref())?;
        if let Some(other) = SessionConfig::named(home, &cfg.name) {
            bail!(
                "a session named {} already exists ({} -> {}): pick another name",
                cfg.name,
                other.master,
                other.slave
            );
        }
        cfg.name
    };
    // A failed create leaves nothing behind that it made: no session key, no pinned host key,
    // no state directory.
    let made: Vec<PathBuf> = [
        crate::keys::ssh_dir(home, &name),
        home.state.join("sessions").join(&name),
    ]
    .into_iter()
    .filter(|d| !d.exists())
    .collect();
    let r = create_inner(home, master, slave, o, exists);
    if r.is_err() {
        for d in made {
            let _ = std::fs::remove_dir_all(d);
        }
        if !exists {
            let _ = std::fs::remove_file(SessionConfig::file(home, &name));
        }
    }
    r
}

fn create_inner(
    home: &Home,
    master: &str,
    slave: &str,
    o: &CreateOptions,
    exists: bool,
) -> Result<Created> {
    let mut notes = Vec::new();
    if exists && !o.force {
        bail!("session {master} -> {slave} already exists: add `force` to update it, or `georep delete {master} {slave}` first");
    }
    let mut cfg = if exists {
        SessionConfig::load(home, master, slave)?
    } else {
        SessionConfig::new(home, master, slave, o.name.as_deref())?
    };
    if o.ssh_port.is_some() {
        cfg.ssh_port = o.ssh_port;
    }
    if o.force {
        // The operator accepts replicating onto whatever the slave holds.
        cfg.adopt_slave = true;
    }
    if let Some(g) = &o.remote_georep {
        crate::shellword::check("--remote-georep", g)?;
        cfg.remote_georep = Some(g.clone());
    }
    let vol = cfg.volume(home)?;
    let spec = cfg.slave_spec()?;
    let bricks: Vec<Brick> = vol
        .local_bricks_for("create")?
        .into_iter()
        .cloned()
        .collect();
    // The master first: a mistyped master path is named as such, never blamed on the slave.
    for b in &bricks {
        crate::brickid::usable(&b.path)?;
    }
    if !spec.is_local() {
        if o.push_pem {
            notes.extend(push_pem(home, &cfg, &vol.name, o)?);
        } else if !o.verify {
            // Keys managed by the operator: make the session key and say what to install.
            let key = crate::keys::session_key(home, &cfg.name)?;
            let public = key.public_key().to_openssh().map_err(|e| anyhow!("{e}"))?;
            let line = crate::keys::authorized_line(
                cfg.remote_georep(),
                &spec.volume,
                &public,
                &format!("georep:{}@{}", vol.name, crate::config::node_name()),
            )?;
            let fp = o.host_key.as_deref().ok_or_else(|| {
                anyhow!("no-verify on a remote slave needs --host-key SHA256:... (the slave's host key fingerprint, `ssh-keygen -lf` on its host key)")
            })?;
            crate::fsutil::atomic_write(
                &crate::keys::ssh_dir(home, &cfg.name).join("host_key.fp"),
                format!("{fp}\n").as_bytes(),
            )?;
            notes.push(format!(
                "install this line in the slave user's authorized_keys:\n{line}"
            ));
        } else {
            bail!(
                "a remote slave needs `push-pem` (sets up the session key on {}) or `no-verify --host-key SHA256:...` (you install the key yourself)",
                spec.host.as_deref().unwrap_or_default()
            );
        }
    }
    if o.verify {
        // A real handshake with the slave agent, so a wrong slave fails now, not at start.
        let target = crate::client::Target::of_session(home, &cfg)?;
        let probe = crate::client::Client::connect(
            &target,
            &bricks[0],
            0,
            &SyncOptions::default(),
            &crate::client::Mode::Replicate {
                replica_set: None,
                shared_tree: false,
            },
        )
        .map_err(anyhow::Error::new)
        .with_context(|| format!("verifying slave {slave} (use no-verify to skip)"));
        // A slave that holds files no brick of this master volume sent is somebody's data:
        // replicating onto it makes it equal to the master (extras removed), so it takes `force`.
        let census = match probe? {
            (mut c, w) if !o.force && !vol.replicated_by(&w.replicated_from) => {
                let n = c.census();
                c.close()?;
                n?
            }
            (c, _) => {
                c.close()?;
                (0, None)
            }
        };
        if let (n, Some(first)) = census {
            bail!(
                "slave {slave} already holds {n} {} (for example {first}) that no brick of {master} sent: add `force` to replicate onto it (files equal in size, mtime, owner and mode are kept, everything else is made equal to the master and extras are removed, or kept in the slave's trash when `trash-retention` is set), or pick an empty slave",
                if n == 1 { "entry" } else { "entries" }
            );
        }
    }
    for b in &bricks {
        let dir = session::brick_state_dir(home, &cfg.name, b);
        let index = crate::crawl::index::Index::open(&dir.join("index.db"))?;
        crate::brickid::adopt(b, &index)?;
    }
    cfg.save(home)?;
    for b in &bricks {
        ensure_writer(home, &cfg.name, b)?;
    }
    Ok(Created { cfg, notes })
}

/// Sets up the session key on the slave with the operator's own credentials.
/// Pins the slave's host key and installs the session key there; returns what to tell the
/// operator.
fn push_pem(
    home: &Home,
    cfg: &SessionConfig,
    mastervol: &str,
    o: &CreateOptions,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    use crate::shellword::{self, Word};
    use crate::transport::ssh::{self, HostKeyPolicy};
    let spec = cfg.slave_spec()?;
    let pinned = crate::keys::pinned_host_key(home, &cfg.name)?;
    // A pinned key stays pinned, `force` or not: only `--host-key` replaces it (a changed key
    // is what a man in the middle offers too).
    let policy = match (&o.host_key, pinned) {
        (Some(fp), _) => HostKeyPolicy::Fingerprint(fp.clone()),
        (None, Some(k)) => HostKeyPolicy::Pinned(k),
        (None, None) => HostKeyPolicy::FirstUse,
    };
    let target = cfg.ssh_target(policy)?;
    let creds = operator_credentials(o.identity.as_deref())?;
    let georep = cfg.remote_georep();
    let (code, out, err, shown) = ssh::run_command(
        &target,
        &creds,
        &shellword::command(georep, &[Word::Fixed("agent"), Word::Fixed("--probe")])?,
    )?;
    let out = String::from_utf8_lossy(&out);
    if code != 0 || !out.starts_with("georep-agent ") {
        bail!(
            "georep is not usable on {} as `{georep}` (exit {code}: {}): install it there or set its path with --remote-georep",
            target.describe(),
            err.trim().lines().last().unwrap_or(out.trim())
        );
    }
    if !out.contains(&format!("protocol={}", crate::protocol::PROTOCOL_VERSION)) {
        bail!(
            "georep on {} speaks another protocol ({}): install the same version on both sites",
            target.describe(),
            out.trim()
        );
    }
    let shown = shown.context("the server showed no host key")?;
    crate::keys::pin_host_key(home, &cfg.name, &shown)?;
    notes.push(format!(
        "slave host key {} pinned: {}",
        target.describe(),
        ssh::fingerprint(&shown)
    ));
    let key = crate::keys::session_key(home, &cfg.name)?;
    let public = key.public_key().to_openssh().map_err(|e| anyhow!("{e}"))?;
    let comment = format!(
        "georep:{}@{}",
        crate::fsutil::slug(mastervol),
        crate::config::node_name()
    );
    let key = shellword::quote_any("session key", &public)?;
    let mut words = vec![
        Word::Fixed("authorize-key"),
        Word::Fixed("--volume"),
        Word::Arg("slave volume", &spec.volume),
        Word::Fixed("--georep"),
        Word::Arg("remote-georep", georep),
        Word::Fixed("--key"),
        Word::Quoted(&key),
        Word::Fixed("--comment"),
        Word::Arg("key comment", &comment),
    ];
    if o.create_root {
        words.push(Word::Fixed("--create-root"));
    }
    let cmd = shellword::command(georep, &words)?;
    let target = cfg.ssh_target(HostKeyPolicy::Pinned(shown))?;
    let (code, out, err, _) = ssh::run_command(&target, &creds, &cmd)?;
    if code != 0 {
        bail!(
            "installing the session key on {} failed (exit {code}): {}",
            target.describe(),
            err.trim()
        );
    }
    notes.extend(String::from_utf8_lossy(&out).lines().map(String::from));
    Ok(notes)
}

/// `--identity FILE`, else ~/.ssh/id_ed25519 or id_ecdsa, else the ssh-agent.
fn operator_credentials(identity: Option<&Path>) -> Result<crate::transport::ssh::Credentials> {
    use crate::transport::ssh::Credentials;
    let load = |p: &Path| {
        russh::keys::load_secret_key(p, None)
            .map(|k| Credentials::Key(Arc::new(k)))
            .map_err(|e| {
                anyhow!(
                    "loading {}: {e} (only unencrypted ed25519/ecdsa keys, or an ssh-agent)",
                    p.display()
                )
            })
    };
    if let Some(p) = identity {
        return load(p);
    }
    if let Some(home) = std::env::var_os("HOME") {
        for name in ["id_ed25519", "id_ecdsa"] {
            let p = Path::new(&home).join(".ssh").join(name);
            if p.exists() {
                return load(&p);
            }
        }
    }
    Ok(Credentials::Agent)
}
