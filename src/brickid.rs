//! A master brick's identity: `.georep/brick-id-<node>` in the brick root, made when a
//! session is created (or at the first sync of a plain path) and recorded in the brick's index.
//! The node is in the name: a replica brick cloned from another (`cp -a`, rsync) keeps an
//! identity of its own.
//!
//! Invariant: nothing is crawled or shipped from a brick whose identity is missing or differs
//! from the one its index recorded. An unmounted brick is an empty mountpoint; replicated as it
//! is, it would delete the whole DR copy. Gluster's bricks carry a volume-id xattr for the same
//! reason.

use crate::crawl::index::Index;
use crate::volume::Brick;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// `.georep/brick-id-<this node>`, relative to a brick root.
fn file() -> String {
    format!(
        ".georep/brick-id-{}",
        crate::fsutil::slug(&crate::config::node_name())
    )
}

/// The identity written in `brick`, if any. A `.georep` that is a symlink counts as none.
pub fn read(brick: &Path) -> Result<Option<String>> {
    let state = brick.join(".georep");
    match std::fs::symlink_metadata(&state) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!(
            "{} is not a directory: georep keeps its state there (remove it)",
            state.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", state.display())),
    }
    match std::fs::read_to_string(brick.join(file())) {
        Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", brick.join(file()).display())),
    }
}

/// Whether the brick holds nothing but georep's own `.georep` (an empty mountpoint, most
/// likely, when the slave has files); unreadable counts as not empty.
pub fn is_empty(brick: &Path) -> bool {
    std::fs::read_dir(brick)
        .map(|mut d| d.all(|e| e.is_ok_and(|e| e.file_name() == ".georep")))
        .unwrap_or(false)
}

/// The master brick `brick` is a directory: the error names it (georep never creates one).
pub fn usable(brick: &Path) -> Result<()> {
    match std::fs::metadata(brick) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("master brick {} is not a directory", brick.display()),
        Err(e) => bail!(
            "master brick {} is not usable ({e}): create it, mount it, or check the path (georep never creates a master brick)",
            brick.display()
        ),
    }
}

/// Gives `brick` an identity if it has none; the brick must exist (georep never creates one).
pub fn ensure(brick: &Path) -> Result<String> {
    usable(brick)?;
    if let Some(id) = read(brick)? {
        return Ok(id);
    }
    let mut b = [0u8; 16];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty())
        .context("reading random bytes for a brick identity")?;
    let id: String = b.iter().map(|x| format!("{x:02x}")).collect();
    crate::fsutil::atomic_write(&brick.join(file()), format!("{id}\n").as_bytes())
        .with_context(|| format!("writing {}", brick.join(file()).display()))?;
    Ok(id)
}

/// Checks that `brick` is the directory `index` was built from, before anything is crawled or
/// shipped; records the identity the first time. The error names the brick and the likely
/// cause; a retry helps once the brick is back (remounted).
pub fn check(brick: &Brick, index: &Index) -> Result<()> {
    check_or_adopt(brick, index, true)
}

/// `check` for a running session: a brick with no identity at all is never adopted there (it
/// got one at `create`; without one it is most likely an empty mountpoint, or a session from
/// an older georep that `create … force` brings up to date).
pub fn check_running(brick: &Brick, index: &Index) -> Result<()> {
    check_or_adopt(brick, index, false)
}

fn check_or_adopt(brick: &Brick, index: &Index, may_adopt: bool) -> Result<()> {
    let recorded = index.get_meta("brick_id")?.filter(|s| !s.is_empty());
    let on_disk = read(&brick.path)?;
    match (recorded, on_disk) {
        (None, None) if !may_adopt => bail!(
            "brick {brick} has no identity ({} is missing): is its filesystem mounted? If it is, run `georep create <mastervol> <slave> force` on this node once (sessions made by an older georep need it); georep does not touch the slave until then, and retries",
            brick.path.join(file()).display()
        ),
        (Some(r), Some(d)) if r == d => Ok(()),
        (Some(r), Some(d)) => bail!(
            "brick {brick} is another directory than the one this session replicated (identity {d}, expected {r} in {}): georep does not touch the slave from it. If the brick was replaced on purpose, `georep create <mastervol> <slave> force` accepts it",
            brick.path.join(file()).display()
        ),
        (Some(_), None) => bail!(
            "brick {brick} has lost its identity ({} is missing): is its filesystem mounted? georep does not touch the slave until the brick is back, and retries (`georep create <mastervol> <slave> force` accepts the brick as it is)",
            brick.path.join(file()).display()
        ),
        (None, Some(d)) => index.set_meta("brick_id", &d),
        (None, None) => {
            // A brick replicated by an older georep, or a first sync of a plain path. An empty
            // brick whose index lists entries is most likely an empty mountpoint.
            if is_empty(&brick.path) && !index.is_empty()? {
                bail!(
                    "brick {brick} is empty and has no identity, but this session replicated entries from it: is its filesystem mounted? georep does not empty the slave from it. If it was emptied on purpose, `georep create <mastervol> <slave> force` accepts it as it is"
                );
            }
            let id = ensure(&brick.path)?;
            index.set_meta("brick_id", &id)
        }
    }
}

/// For `create`: gives `brick` an identity if it has none and records it in its index, so
/// the brick as it is now is the one replicated (how an operator accepts a replaced brick).
pub fn adopt(brick: &Brick, index: &Index) -> Result<()> {
    let id = ensure(&brick.path)?;
    index.set_meta("brick_id", &id)
}
