//! The reverse pass of `resync --reverse` and `failback`, for one brick: what the DR site
//! changed since the master last shipped is brought back onto the master, with the agent's
//! confined, atomic apply. What only the master has is never lost: a version both sides
//! changed is kept as a conflict copy, a directory the DR site removed or replaced that the
//! master wrote in is kept (or kept as a copy), and DR hard links come back as hard links.

use super::{Action, ReverseReport};
use crate::agent::apply::{Applier, ContentError};
use crate::crawl::index::{Index, Mutation};
use crate::entry::{Change, Entry, Kind};
use crate::protocol::{ListEntry, Message, Op, RelPath};
use crate::volume::Brick;
use crate::walk::{self, Excludes};
use anyhow::{anyhow, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// DR entry `d` equals what the master last shipped (`b`): not changed on the DR side.
fn same_as_shipped(b: &Entry, d: &ListEntry) -> bool {
    let k = Kind::from_u8(d.kind);
    if b.kind != k {
        return false;
    }
    if k == Kind::Dir {
        // A directory's mtime moves with its children, which are compared one by one.
        return (b.mode, b.uid, b.gid) == (d.meta.mode, d.meta.uid, d.meta.gid);
    }
    b.meta() == d.meta
        && b.target == d.target
        && (k != Kind::File || b.size == d.size)
        && match (b.hash, d.hash) {
            (Some(x), Some(y)) => x == y,
            _ => true,
        }
}

/// Local `l` equals DR `d` (nothing to pull).
fn local_equals(l: &Entry, d: &ListEntry) -> bool {
    let k = Kind::from_u8(d.kind);
    l.kind == k
        && (k == Kind::Dir
            || (l.meta() == d.meta
                && l.target == d.target
                && (k != Kind::File || l.size == d.size)))
}

/// The master changed `l` (at `p` under `root`) since it shipped `b`. A file whose only sign
/// of change is its ctime (a racily clean row, a link count change) is hashed against what was
/// shipped.
fn master_changed(b: &Entry, l: &Entry, root: &rustix::fd::OwnedFd, p: &RelPath) -> bool {
    if b.kind != l.kind {
        return true;
    }
    if l.kind == Kind::Dir || matches!(b.change_to(l), Change::None | Change::IndexOnly) {
        return false;
    }
    let same_attrs = l.kind == Kind::File && b.size == l.size && b.meta() == l.meta();
    match b.hash.filter(|_| same_attrs) {
        Some(h) => crate::fsutil::hash_beneath(root, p).map_or(true, |now| now != h),
        None => true,
    }
}

fn conflict_name(path: &RelPath, node: &str, at: &str) -> Result<RelPath> {
    let (dir, name) = path.split().context("the root cannot conflict")?;
    let mut n = name.to_vec();
    n.extend_from_slice(format!(".georep-conflict-{node}-{at}").as_bytes());
    let full = if dir.is_empty() {
        n
    } else {
        [dir, b"/", &n].concat()
    };
    Ok(RelPath::new(full)?)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn reverse_brick(
    brick: &Brick,
    index: &Index,
    client: &mut crate::client::Client,
    xattrs: u8,
    dr: Vec<ListEntry>,
    journaled: &std::collections::HashSet<RelPath>,
    excludes: &Excludes,
    dry_run: bool,
    report: &mut ReverseReport,
) -> Result<()> {
    let root = brick.open()?;
    let local: BTreeMap<RelPath, Entry> = walk::list_subtree(&root, &RelPath::root(), excludes)?
        .into_iter()
        .collect();
    let base: BTreeMap<RelPath, Entry> = index
        .subtree(&RelPath::root())?
        .into_iter()
        .filter(|(p, _)| !p.as_bytes().starts_with(b".georep"))
        .collect();
    let dr: BTreeMap<RelPath, ListEntry> = dr
        .into_iter()
        .filter(|e| !excludes.is_excluded(&e.path))
        .map(|e| (e.path.clone(), e))
        .collect();
    let paths: BTreeSet<&RelPath> = local.keys().chain(base.keys()).chain(dr.keys()).collect();
    let node = crate::config::node_name();
    let at = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut conflicts = Vec::new(); // (path, copy)
    let mut creates = Vec::new(); // dirs, symlinks (non-file pulls)
    let mut fetch = Vec::new();
    let mut deletes = Vec::new();
    let mut index_only = Vec::new();
    let mut dir_meta = Vec::new();
    let mut kept = Vec::new();
    // What the master made or changed since it last shipped and the DR site does not have:
    // a directory the DR site removed or replaced that holds any of it is not removed with
    // it. Kept as the directories holding such entries, for a lookup per directory.
    let mut masters_own: BTreeSet<&RelPath> = BTreeSet::new();
    let mut holding: BTreeSet<RelPath> = BTreeSet::new();
    for p in &paths {
        if let (b, Some(l), None) = (base.get(*p), local.get(*p), dr.get(*p)) {
            if b.is_none_or(|b| master_changed(b, l, &root, p)) {
                masters_own.insert(*p);
                holding.extend(p.self_and_ancestors().skip(1));
            }
        }
    }
    let holds_masters_own = |p: &RelPath| holding.contains(p);
    for p in paths {
        let (b, l, d) = (base.get(p), local.get(p), dr.get(p));
        // Changed at the DR site: differs from what was shipped, or its journal says so (a
        // rewrite that kept size and mtime is only seen there).
        let dr_changed = match (b, d) {
            (None, None) => false,
            (Some(b), Some(d)) => {
                !same_as_shipped(b, d)
                    || (Kind::from_u8(d.kind) == Kind::File && journaled.contains(p))
            }
            _ => true,
        };
        if !dr_changed {
            continue;
        }
        if let (Some(l), Some(d)) = (l, d) {
            if local_equals(l, d) && !journaled.contains(p) {
                if Kind::from_u8(d.kind) == Kind::Dir {
                    dir_meta.push(p.clone());
                } else {
                    index_only.push(p.clone());
                }
                continue;
            }
        }
        let changed_here = match (b, l) {
            (None, None) => false,
            // Hashed once: gone at the DR site, it was looked at above.
            (Some(_), Some(_)) if d.is_none() => masters_own.contains(p),
            (Some(b), Some(l)) => master_changed(b, l, &root, p),
            _ => true,
        };
        let both_dirs = l.is_some_and(|l| l.kind == Kind::Dir)
            && d.is_some_and(|d| Kind::from_u8(d.kind) == Kind::Dir);
        if both_dirs {
            dir_meta.push(p.clone());
            continue;
        }
        let l_is_dir = l.is_some_and(|l| l.kind == Kind::Dir);
        // A directory the DR site replaced with something else, holding what only the master
        // has: the master's directory is kept whole as a conflict copy.
        let replaced_dir = l_is_dir && d.is_some() && holds_masters_own(p);
        if changed_here && l.is_some() && !(l_is_dir && d.is_none()) || replaced_dir {
            let copy = conflict_name(p, &node, &at)?;
            conflicts.push((p.clone(), copy));
        } else if d.is_none() && l.is_some() {
            if l_is_dir && holds_masters_own(p) {
                // Removed at the DR site, written in on the master: kept, with what the
                // master wrote (what it shipped and the DR site removed goes, name by name).
                kept.push(p.clone());
            } else {
                deletes.push(p.clone());
            }
            continue;
        }
        match d {
            Some(d) if Kind::from_u8(d.kind) == Kind::File => fetch.push(p.clone()),
            Some(_) => creates.push(p.clone()),
            None => {}
        }
    }
    // Beneath a name replaced by a pull, a create or a conflict copy, a delete has nothing
    // left to remove (the old entry went whole).
    let replaced: BTreeSet<RelPath> = fetch
        .iter()
        .chain(&creates)
        .filter(|p| {
            dr.get(*p)
                .is_some_and(|d| Kind::from_u8(d.kind) != Kind::Dir)
        })
        .chain(conflicts.iter().map(|(p, _)| p))
        .cloned()
        .collect();
    deletes.retain(|p| {
        !p.self_and_ancestors()
            .skip(1)
            .any(|a| replaced.contains(&a))
    });
    // A conflict beneath another conflict's name goes with it (into its copy, whole).
    let copied: BTreeSet<RelPath> = conflicts.iter().map(|(p, _)| p.clone()).collect();
    conflicts.retain(|(p, _)| !p.self_and_ancestors().skip(1).any(|a| copied.contains(&a)));
    // Hard links made at the DR site come back as hard links: of the names of one DR inode,
    // the first that is fetched, or that the master already has equal (when none of the group
    // was written at the DR site: an in-place write that kept size and mtime is only in its
    // journal), leads; every other fetched name is linked to it instead of fetched again, and
    // so is every other name the master has equal (the group was made at the DR site).
    let mut groups: BTreeMap<u64, Vec<&RelPath>> = BTreeMap::new();
    for (p, d) in &dr {
        if let Some(k) = crate::crawl::links::slave_group_key(d) {
            groups.entry(k).or_default().push(p);
        }
    }
    let fetching: BTreeSet<RelPath> = fetch.iter().cloned().collect();
    let deleting: BTreeSet<&RelPath> = deletes.iter().collect();
    let equal_here = |q: &RelPath| {
        !replaced.contains(q)
            && !deleting.contains(q)
            && local.get(q).is_some_and(|l| local_equals(l, &dr[q]))
    };
    let mut links: Vec<(RelPath, RelPath)> = Vec::new();
    for group in groups.values() {
        if !group.iter().any(|q| fetching.contains(*q)) {
            continue; // nothing of it comes back
        }
        let written = group.iter().any(|q| journaled.contains(*q));
        let Some(leader) = group
            .iter()
            .find(|q| fetching.contains(**q) || !written && equal_here(q))
        else {
            continue;
        };
        for q in group.iter().filter(|q| *q != leader) {
            if fetching.contains(*q) || equal_here(q) {
                links.push(((*q).clone(), (*leader).clone()));
            }
        }
    }
    let linked: BTreeSet<&RelPath> = links.iter().map(|(p, _)| p).collect();
    fetch.retain(|p| !linked.contains(p));
    for (p, copy) in &conflicts {
        let a = Action {
            path: p.display(),
            action: "conflict",
            kept_as: Some(copy.display()),
        };
        report.conflicts.push(a.clone());
        report.actions.push(a);
    }
    let act = |report: &mut ReverseReport, v: &[RelPath], what: &'static str| {
        for p in v {
            report.actions.push(Action {
                path: p.display(),
                action: what,
                kept_as: None,
            });
        }
    };
    act(report, &creates, "create");
    act(report, &fetch, "pull");
    let linked: Vec<RelPath> = links.iter().map(|(p, _)| p.clone()).collect();
    act(report, &linked, "link");
    act(report, &deletes, "delete");
    act(report, &dir_meta, "meta");
    act(report, &kept, "keep");
    if dry_run {
        report.pulled_files += fetch.len() as u64;
        report.pulled_bytes += fetch.iter().map(|p| dr[p].size).sum::<u64>();
        report.created += creates.len() as u64;
        report.deleted += deletes.len() as u64;
        return Ok(());
    }

    // Apply on the master with the agent's confined, atomic apply.
    let tmp = brick.path.join(".georep/tmp/reverse");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let tmp_fd = crate::fsutil::open_root(&tmp)?;
    crate::fsutil::empty_dir(rustix::fd::AsFd::as_fd(&tmp_fd))?;
    let mut ap = Applier::new(brick.open()?, tmp_fd);
    // Files fetched back carry the DR copy's extended attributes (what both sides may read).
    ap.set_xattr_scope(xattrs);
    let mut touched: Vec<RelPath> = Vec::new();
    let fail = |report: &mut ReverseReport, e: String| {
        tracing::warn!("{e}");
        report.failures.push(e);
    };
    for (slot, (p, copy)) in conflicts.iter().enumerate() {
        let r = ap
            .apply(&Op::Stash {
                from: p.clone(),
                slot: slot as u64,
            })
            .and_then(|()| {
                ap.apply(&Op::Unstash {
                    slot: slot as u64,
                    to: copy.clone(),
                })
            });
        if let Err(e) = r {
            fail(report, format!("keeping {p} as {copy}: {}", e.message));
        }
    }
    for p in &creates {
        let d = &dr[p];
        let op = match Kind::from_u8(d.kind) {
            Kind::Dir => {
                // Its mtime is set last: the pulls below change it.
                dir_meta.push(p.clone());
                Op::Mkdir {
                    path: p.clone(),
                    meta: d.meta.clone(),
                }
            }
            Kind::Symlink => Op::Symlink {
                path: p.clone(),
                target: d.target.clone().unwrap_or_default(),
                meta: d.meta.clone(),
            },
            k => {
                fail(
                    report,
                    format!("{p}: a {k:?} on the DR side is not brought back (copy it by hand)"),
                );
                continue;
            }
        };
        match ap.apply(&op) {
            Ok(()) => {
                report.created += 1;
                touched.push(p.clone());
            }
            Err(e) => fail(report, e.message),
        }
    }
    if !fetch.is_empty() {
        let mut current: Option<(RelPath, u64)> = None;
        let mut skip = false;
        let mut errors = Vec::new();
        client.fetch(fetch.clone(), |m| {
            match m {
                Message::FileBegin(fb) => {
                    skip = false;
                    current = Some((fb.path.clone(), fb.size));
                    if let Err(e) = ap.begin_file(&fb) {
                        skip = true;
                        errors.push(e.message);
                    }
                }
                Message::Chunk(data) if !skip => match ap.chunk(&data) {
                    Ok(()) => {}
                    Err(ContentError::Failed(e)) => {
                        skip = true;
                        errors.push(e.message);
                    }
                    Err(ContentError::Broken(msg)) => return Err(anyhow!(msg)),
                },
                Message::FileEnd(fe) => {
                    let (p, size) = current.take().context("FileEnd without FileBegin")?;
                    if !skip {
                        match ap.end_file(&fe.hash, fe.commit) {
                            Ok(true) => {
                                report.pulled_files += 1;
                                report.pulled_bytes += size;
                                touched.push(p);
                            }
                            Ok(false) => errors.push(format!(
                                "{p} changed on the DR side while it was read: run resync --reverse again"
                            )),
                            Err(ContentError::Failed(e)) => errors.push(e.message),
                            Err(ContentError::Broken(msg)) => return Err(anyhow!(msg)),
                        }
                    }
                }
                Message::Failed(f) => errors.push(f.message),
                _ => {}
            }
            Ok(())
        })?;
        for e in errors {
            fail(report, e);
        }
    }
    for (p, target) in &links {
        match ap.apply(&Op::Link {
            path: p.clone(),
            target: target.clone(),
        }) {
            Ok(()) => touched.push(p.clone()),
            Err(e) => fail(report, e.message),
        }
    }
    // Children first, so a directory deleted on the DR side is empty when its turn comes; one
    // that still holds master-only entries (unshipped writes, conflict copies) stays.
    for p in deletes.iter().rev() {
        let l = &local[p];
        if l.kind == Kind::Dir
            && std::fs::read_dir(brick.path.join(p.as_path()))
                .map(|mut rd| rd.next().is_some())
                .unwrap_or(false)
        {
            continue;
        }
        match ap.apply(&Op::Delete { path: p.clone() }) {
            Ok(()) => {
                report.deleted += 1;
                touched.push(p.clone());
            }
            Err(e) => fail(report, e.message),
        }
    }
    dir_meta.sort();
    for p in dir_meta.iter().rev() {
        let d = &dr[p];
        match ap.apply(&Op::SetAttr {
            path: p.clone(),
            meta: d.meta.clone(),
        }) {
            Ok(()) => touched.push(p.clone()),
            Err(e) => fail(report, e.message),
        }
    }
    ap.sync().context("syncing the master brick")?;
    // The index learns that these paths are now the same on both sides, so forward
    // replication does not send them back.
    touched.extend(index_only);
    let mut muts = Vec::new();
    for p in touched {
        match walk::lstat_beneath(&root, &p, excludes.view)? {
            Some(mut e) => {
                e.hash = dr.get(&p).and_then(|d| d.hash);
                muts.push(Mutation::Upsert(p, e));
            }
            None => muts.push(Mutation::Remove(p)),
        }
    }
    index.apply(&muts)?;
    Ok(())
}
