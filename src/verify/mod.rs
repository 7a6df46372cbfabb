//! `georep verify MASTER SLAVE [--checksum]`: compares a master volume with its slave without
//! copying anything — the slave agent lists its tree (optionally with content hashes) over the
//! session's own transport, and every difference is reported.
//!
//! Invariant: read-only on both sides; the session's index and the agent's per-brick state are
//! not touched (a reverse-mode connection, which cannot write, and a throwaway index).

use crate::client::{Client, Mode, Target};
use crate::config::{Home, SyncOptions};
use crate::entry::{Entry, Kind};
use crate::protocol::{ListEntry, RelPath, Xattr};
use crate::session::{SessionConfig, SlaveSpec};
use crate::volume::{Brick, Volume};
use crate::walk::Excludes;
use anyhow::{Context, Result};
use serde::Serialize;
use std::time::Instant;

pub mod merge;

#[derive(Debug, Serialize)]
pub struct Difference {
    pub brick: String,
    pub path: String,
    pub what: String,
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub master: String,
    pub slave: String,
    pub checksum: bool,
    pub master_entries: u64,
    pub slave_entries: u64,
    /// The first `merge::KEPT` differences of each brick.
    pub differences: Vec<Difference>,
    /// Differences found beyond those listed.
    pub differences_omitted: u64,
    pub elapsed_ms: u64,
}

impl VerifyReport {
    /// Every difference found, listed or not.
    pub fn total_differences(&self) -> u64 {
        self.differences.len() as u64 + self.differences_omitted
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::Fifo => "fifo",
        Kind::Char => "char device",
        Kind::Block => "block device",
        Kind::Unknown => "unknown",
    }
}

/// What differs between the master's `m` and the slave's `s` at one path (empty = equal).
pub(crate) fn compare(m: &Entry, s: &ListEntry, m_hash: Option<[u8; 32]>) -> Vec<String> {
    let sk = Kind::from_u8(s.kind);
    if m.kind != sk {
        return vec![format!(
            "a {} on the master, a {} on the slave",
            kind_name(m.kind),
            kind_name(sk)
        )];
    }
    let mut out = Vec::new();
    if m.kind == Kind::File && m.size != s.size {
        out.push(format!(
            "size {} on the master, {} on the slave",
            m.size, s.size
        ));
    } else if let (Some(a), Some(b)) = (m_hash, s.hash) {
        if a != b {
            out.push("same size, different content".into());
        }
    }
    if m.target != s.target {
        out.push(format!(
            "symlink target {:?} on the master, {:?} on the slave",
            String::from_utf8_lossy(m.target.as_deref().unwrap_or_default()),
            String::from_utf8_lossy(s.target.as_deref().unwrap_or_default())
        ));
    }
    let sm = &s.meta;
    if m.kind != Kind::Symlink && m.mode != sm.mode {
        out.push(format!(
            "mode {:o} on the master, {:o} on the slave",
            m.mode, sm.mode
        ));
    }
    if (m.uid, m.gid) != (sm.uid, sm.gid) {
        out.push(format!(
            "owner {}:{} on the master, {}:{} on the slave",
            m.uid, m.gid, sm.uid, sm.gid
        ));
    }
    if (m.mtime_sec, m.mtime_nsec) != (sm.mtime_sec, sm.mtime_nsec) {
        let t = |s: i64, n: u32| {
            chrono::DateTime::from_timestamp(s, n)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .unwrap_or_default()
        };
        out.push(format!(
            "mtime {} on the master, {} on the slave",
            t(m.mtime_sec, m.mtime_nsec),
            t(sm.mtime_sec, sm.mtime_nsec)
        ));
    }
    out
}

/// The extended attributes that differ between the master's `m` and the slave's `s` (both
/// sorted by name), in words; `None` when equal.
pub(crate) fn compare_xattrs(m: &[Xattr], s: &[Xattr]) -> Option<String> {
    let name = |x: &Xattr| String::from_utf8_lossy(&x.name).into_owned();
    let mut out = Vec::new();
    for x in m {
        match s.iter().find(|y| y.name == x.name) {
            None => out.push(format!("{} only on the master", name(x))),
            Some(y) if y.value != x.value => out.push(format!("{} differs", name(x))),
            Some(_) => {}
        }
    }
    for y in s.iter().filter(|y| !m.iter().any(|x| x.name == y.name)) {
        out.push(format!("{} only on the slave", name(y)));
    }
    (!out.is_empty()).then(|| format!("extended attributes: {}", out.join(", ")))
}

/// Compares every local active brick of `master` with `slave`.
pub fn verify(home: &Home, master: &str, slave: &str, checksum: bool) -> Result<VerifyReport> {
    let started = Instant::now();
    let vol = Volume::resolve(home, master)?;
    let spec = SlaveSpec::parse(slave)?;
    let name = SessionConfig::name_for(home, master, slave)?;
    let (excludes, xattrs) = match SessionConfig::load_by_name(home, &name) {
        Ok(cfg) => (
            cfg.excludes.clone(),
            crate::options::sync_options(&cfg).xattrs,
        ),
        Err(_) => (Vec::new(), SyncOptions::default().xattrs),
    };
    let excludes = Excludes::new(&excludes)?;
    let target = Target::for_slave(home, &name, &spec)?;
    let transport = target.transport()?;
    let bricks = vol.local_bricks_for("verify")?;
    let mut report = VerifyReport {
        master: vol.name.clone(),
        slave: slave.to_string(),
        checksum,
        ..Default::default()
    };
    let opts = SyncOptions {
        xattrs,
        ..SyncOptions::default()
    };
    for brick in bricks {
        // A reverse (read-only) connection: no lock on the agent, and it works on a fenced
        // or promoted volume too.
        let (mut client, welcome) =
            Client::connect_over(transport.as_ref(), &target, brick, 0, &opts, &Mode::Reverse)?;
        // The namespaces both sides may read of what the session replicates.
        let xattrs = welcome.xattrs & crate::xattr::permitted(xattrs);
        compare_brick(brick, &mut client, xattrs, &excludes, checksum, &mut report)?;
        client.close()?;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Compares `brick` with the slave's listing as it arrives (see `merge`).
/// `xattrs`: the attribute namespaces compared.
pub(crate) fn compare_brick(
    brick: &Brick,
    client: &mut Client,
    xattrs: u8,
    excludes: &Excludes,
    checksum: bool,
    report: &mut VerifyReport,
) -> Result<()> {
    let root = brick.open()?;
    let excludes = &excludes.clone().on_brick(&brick.path)?;
    let hash = |path: &RelPath, m: &Entry, s: &ListEntry| -> Result<Option<[u8; 32]>> {
        if checksum && m.kind == Kind::File && s.hash.is_some() {
            Ok(Some(
                crate::fsutil::hash_beneath(&root, path)
                    .with_context(|| format!("reading {path} on the master"))?,
            ))
        } else {
            Ok(None)
        }
    };
    let mut merge = merge::Merge::new(&root, excludes, hash)
        .with_context(|| format!("walking brick {}", brick.path.display()))?
        .with_xattrs(xattrs);
    client.list_each(checksum, None, xattrs, &mut |listed| {
        listed.into_iter().try_for_each(|s| merge.slave(s))
    })?;
    let d = merge
        .finish()
        .with_context(|| format!("walking brick {}", brick.path.display()))?;
    report.master_entries += d.master_entries;
    report.slave_entries += d.slave_entries;
    report.differences_omitted += d.omitted;
    report
        .differences
        .extend(d.found.into_iter().map(|(path, what)| Difference {
            brick: brick.to_string(),
            path: path.display(),
            what,
        }));
    Ok(())
}
