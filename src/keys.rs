//! SSH material of a session: the per-node session key, the pinned host key of the slave, and
//! the authorized_keys line that confines the session key to one volume's agent.
//!
//! Invariants: private keys are written 0600 before any byte of them; the pinned host key only
//! changes through `create ... push-pem force`; an authorized_keys line for a key is never
//! duplicated.

use crate::config::Home;
use anyhow::{anyhow, bail, Context, Result};
use russh::keys::ssh_key::{LineEnding, PublicKey};
use russh::keys::PrivateKey;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub fn ssh_dir(home: &Home, session: &str) -> PathBuf {
    home.state.join("sessions").join(session).join("ssh")
}

pub fn key_path(home: &Home, session: &str) -> PathBuf {
    ssh_dir(home, session).join("id_ed25519")
}

fn host_key_path(home: &Home, session: &str) -> PathBuf {
    ssh_dir(home, session).join("host_key.pub")
}

/// The session key, made on first use (ed25519, private file 0600).
pub fn session_key(home: &Home, session: &str) -> Result<PrivateKey> {
    let path = key_path(home, session);
    if path.exists() {
        return russh::keys::load_secret_key(&path, None)
            .with_context(|| format!("loading session key {}", path.display()));
    }
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::set_permissions(
        path.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )?;
    let mut seed = [0u8; 32];
    rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for the session key")?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let mut key = PrivateKey::from(pair);
    key.set_comment(format!("georep:{session}"));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| anyhow!("encoding the session key: {e}"))?;
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(pem.as_bytes())?;
    f.sync_all()?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| anyhow!("encoding the public key: {e}"))?;
    std::fs::write(path.with_extension("pub"), format!("{public}\n"))?;
    Ok(key)
}

pub fn pinned_host_key(home: &Home, session: &str) -> Result<Option<PublicKey>> {
    let path = host_key_path(home, session);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(PublicKey::from_openssh(s.trim()).map_err(|e| {
            anyhow!("reading pinned host key {}: {e}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn pin_host_key(home: &Home, session: &str, key: &PublicKey) -> Result<()> {
    let line = key
        .to_openssh()
        .map_err(|e| anyhow!("encoding the host key: {e}"))?;
    crate::fsutil::atomic_write(
        &host_key_path(home, session),
        format!("{line}\n").as_bytes(),
    )
    .context("pinning the host key")
}

/// The authorized_keys line for a session key: the key can run this volume's agent and nothing
/// else (no shell, no forwarding, no pty).
pub fn authorized_line(georep: &str, volume: &str, public: &str, comment: &str) -> Result<String> {
    use crate::shellword::{self, Word};
    shellword::check_volume(volume)?;
    shellword::check("key comment", comment)?;
    let command = shellword::command(
        georep,
        &[
            Word::Fixed("agent"),
            Word::Fixed("--volume"),
            Word::Arg("volume", volume),
        ],
    )?;
    let mut parts = public.split_whitespace();
    let (alg, blob) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if alg != "ssh-ed25519" || blob.is_empty() {
        bail!("expected an ssh-ed25519 public key, got {public:?}");
    }
    Ok(format!(
        "command=\"{command}\",restrict {alg} {blob} {comment}"
    ))
}

/// `georep authorize-key` on the slave: adds (or updates) the line for this key, once.
pub fn authorize(file: &Path, line: &str) -> Result<bool> {
    let blob = line
        .split_whitespace()
        .skip_while(|w| *w != "ssh-ed25519")
        .nth(1)
        .context("authorized line without a key")?
        .to_string();
    let existing = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let mut out = String::new();
    let mut changed = true;
    let mut found = false;
    for l in existing.lines() {
        if l.split_whitespace().any(|w| w == blob) {
            if found {
                continue; // a duplicate from an older georep: drop it
            }
            found = true;
            changed = l != line;
            out.push_str(line);
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    if !found {
        out.push_str(line);
        out.push('\n');
    }
    if !changed {
        return Ok(false);
    }
    if let Some(d) = file.parent() {
        if !d.exists() {
            std::fs::create_dir_all(d)?;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    crate::fsutil::atomic_write(file, out.as_bytes())
        .with_context(|| format!("writing {}", file.display()))?;
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    Ok(true)
}

/// Where `authorize-key` writes: `$GEOREP_AUTHORIZED_KEYS`, else `~/.ssh/authorized_keys`.
pub fn authorized_keys_file() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GEOREP_AUTHORIZED_KEYS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME").context("HOME is not set on the slave")?;
    Ok(Path::new(&home).join(".ssh").join("authorized_keys"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorize_is_idempotent_and_confines_the_key() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ak");
        std::fs::write(&f, "ssh-ed25519 AAAAother operator@host\n").unwrap();
        let line = authorized_line(
            "/usr/bin/georep",
            "gv1",
            "ssh-ed25519 AAAAkey",
            "georep:gv0@n1",
        )
        .unwrap();
        assert_eq!(
            line,
            "command=\"'/usr/bin/georep' agent --volume 'gv1'\",restrict ssh-ed25519 AAAAkey georep:gv0@n1"
        );
        assert!(authorize(&f, &line).unwrap());
        assert!(!authorize(&f, &line).unwrap());
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(authorized_line("georep", "gv1\" ,", "ssh-ed25519 AAAA", "c").is_err());
        // Review hole 5 (issue 13): none of these may reach the forced command.
        for (georep, volume) in [
            ("georep", "/dr/x;id"),
            ("georep", "/dr/$(id)"),
            ("georep", "-x"),
            ("georep;id", "/dr/x"),
            ("-georep", "/dr/x"),
            ("georep", "../../etc"),
        ] {
            assert!(
                authorized_line(georep, volume, "ssh-ed25519 AAAA", "c").is_err(),
                "{georep} {volume}"
            );
        }
    }
}
