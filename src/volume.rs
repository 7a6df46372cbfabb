//! Volumes: named sets of bricks, stored one TOML file each under `$GEOREP_HOME/etc/volumes/`.
//! A plain absolute path is accepted wherever a volume name is: a one-brick volume on this node.
//!
//! Invariant: a stored volume has a valid name, at least one brick, absolute brick paths, and a
//! brick count that is a multiple of its replica count.

use crate::config::{node_name, Home};
use crate::fsutil::atomic_write;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Brick {
    pub node: String,
    pub path: PathBuf,
}

impl Brick {
    /// Opens the brick's directory (to read beneath it with the `*at` calls).
    pub fn open(&self) -> Result<rustix::fd::OwnedFd> {
        crate::fsutil::open_root(&self.path).with_context(|| {
            format!(
                "opening brick {} on the master: does it exist and is it readable?",
                self.path.display()
            )
        })
    }

    /// `node:/path` or `/path` (this node).
    pub fn parse(spec: &str) -> Result<Brick> {
        let (node, path) = match spec.split_once(":/") {
            Some((n, p)) if !n.is_empty() => (n.to_string(), format!("/{p}")),
            _ => (node_name(), spec.to_string()),
        };
        let path = PathBuf::from(&path);
        if !path.is_absolute() {
            bail!("brick {spec:?} is not an absolute path: write it as node:/path or /path");
        }
        Ok(Brick {
            node,
            path: normalize(&path),
        })
    }

    pub fn is_local(&self) -> bool {
        self.node == node_name()
    }
}

impl std::fmt::Display for Brick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.node, self.path.display())
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Volume {
    pub format: u32,
    pub name: String,
    pub replica: u32,
    pub bricks: Vec<Brick>,
    /// True for a plain path used as a volume (never stored).
    #[serde(skip)]
    pub implicit: bool,
}

impl Volume {
    pub fn new(name: &str, replica: u32, bricks: Vec<Brick>) -> Result<Volume> {
        validate_name(name)?;
        if bricks.is_empty() {
            bail!("volume {name} needs at least one brick");
        }
        if replica == 0 || bricks.len() % replica as usize != 0 {
            bail!(
                "volume {name}: {} bricks cannot form replica sets of {replica}",
                bricks.len()
            );
        }
        for (i, b) in bricks.iter().enumerate() {
            if bricks[..i].contains(b) {
                bail!("volume {name}: brick {b} is listed twice");
            }
        }
        Ok(Volume {
            format: FORMAT_VERSION,
            name: name.to_string(),
            replica,
            bricks,
            implicit: false,
        })
    }

    /// An absolute path used as a volume: one brick on this node.
    pub fn implicit(path: &Path) -> Volume {
        let path = normalize(path);
        Volume {
            format: FORMAT_VERSION,
            name: path.display().to_string(),
            replica: 1,
            bricks: vec![Brick {
                node: node_name(),
                path,
            }],
            implicit: true,
        }
    }

    /// Replica sets in order; each is `replica` consecutive bricks.
    pub fn replica_sets(&self) -> impl Iterator<Item = &[Brick]> {
        self.bricks.chunks(self.replica as usize)
    }

    /// Whether the whole volume is one replica set: then the slave holds only what its one
    /// Active brick sends, and a slave entry the brick lacks is an extra. With several sets
    /// (distributed), each brick's files are the others' "extras".
    pub fn is_one_set(&self) -> bool {
        self.replica_sets().count() == 1
    }

    /// Whether a brick of this volume (on any node) has replicated onto a slave whose agent
    /// names these bricks (`Welcome.replicated_from`).
    pub fn replicated_by(&self, replicated_from: &[String]) -> bool {
        self.bricks
            .iter()
            .any(|b| replicated_from.contains(&b.to_string()))
    }

    /// The bricks this node ships: the first local brick of each replica set.
    pub fn local_active_bricks(&self) -> Vec<&Brick> {
        self.replica_sets()
            .filter_map(|set| set.iter().find(|b| b.is_local()))
            .collect()
    }

    /// `local_active_bricks`, or an error saying where to run `what` instead.
    pub fn local_bricks_for(&self, what: &str) -> Result<Vec<&Brick>> {
        let bricks = self.local_active_bricks();
        if bricks.is_empty() {
            bail!(
                "volume {} has no brick on this node ({}): run {what} on a node that holds one",
                self.name,
                node_name()
            );
        }
        Ok(bricks)
    }

    /// The slave root named by `vol`: an absolute path, or a volume registered on this host.
    pub fn slave_root_of(home: &Home, vol: &str) -> Result<PathBuf> {
        if vol.starts_with('/') {
            Ok(PathBuf::from(vol))
        } else {
            Volume::load(home, vol)?.slave_root()
        }
    }

    /// The directory a slave agent applies into, when this volume is used as a slave.
    pub fn slave_root(&self) -> Result<PathBuf> {
        let local: Vec<_> = self.bricks.iter().filter(|b| b.is_local()).collect();
        match local.as_slice() {
            [b] => Ok(b.path.clone()),
            [] => bail!(
                "volume {} has no brick on this node ({}): run the agent on a node that holds it",
                self.name,
                node_name()
            ),
            _ => bail!(
                "volume {} has {} bricks on this node: a slave volume needs exactly one local brick",
                self.name,
                local.len()
            ),
        }
    }

    fn file(home: &Home, name: &str) -> PathBuf {
        home.etc.join("volumes").join(format!("{name}.toml"))
    }

    pub fn save(&self, home: &Home) -> Result<()> {
        let path = Self::file(home, &self.name);
        let text = toml::to_string_pretty(self)?;
        atomic_write(&path, text.as_bytes())
            .with_context(|| format!("writing volume {}", path.display()))
    }

    pub fn load(home: &Home, name: &str) -> Result<Volume> {
        validate_name(name)?;
        let path = Self::file(home, name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let here = if Path::new(name).is_dir() {
                    format!(" (to use the directory {name} here, give it as a path: ./{name})")
                } else {
                    String::new()
                };
                anyhow::anyhow!(
                    "volume {name} does not exist on {} (looked in {}): create it with `georep volume create {name} <brick>...` or pass a path{here}",
                    node_name(),
                    path.display()
                )
            } else {
                anyhow::anyhow!("reading volume {}: {e}", path.display())
            }
        })?;
        let v: Volume =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if v.format != FORMAT_VERSION {
            bail!(
                "{} has format {}, this georep understands {FORMAT_VERSION}: upgrade georep",
                path.display(),
                v.format
            );
        }
        Ok(v)
    }

    /// A volume name or an absolute path.
    pub fn resolve(home: &Home, spec: &str) -> Result<Volume> {
        if spec.starts_with('/') {
            Ok(Volume::implicit(Path::new(spec)))
        } else {
            Volume::load(home, spec)
        }
    }

    pub fn list(home: &Home) -> Result<Vec<Volume>> {
        let dir = home.etc.join("volumes");
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_suffix(".toml") {
                out.push(Volume::load(home, n)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn delete(home: &Home, name: &str) -> Result<()> {
        Volume::load(home, name)?;
        let path = Self::file(home, name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}

pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.')
        && !name.starts_with('-');
    if !ok {
        bail!(
            "invalid volume name {name:?}: use up to 64 letters, digits, '_', '-', '.', not starting with '.' or '-'"
        );
    }
    Ok(())
}

/// Parses Gluster-style `[replica N] BRICK...`.
pub fn parse_create_args(args: &[String]) -> Result<(u32, Vec<Brick>)> {
    let mut replica = 1;
    let mut rest = args;
    if rest.first().map(String::as_str) == Some("replica") {
        let n = rest
            .get(1)
            .context("`replica` needs a count, e.g. `replica 2`")?;
        replica = n
            .parse()
            .ok()
            .filter(|&n: &u32| n >= 1)
            .with_context(|| format!("replica count {n:?} is not a positive number"))?;
        rest = &rest[2..];
    }
    let bricks = rest
        .iter()
        .map(|s| Brick::parse(s))
        .collect::<Result<Vec<_>>>()?;
    Ok((replica, bricks))
}
