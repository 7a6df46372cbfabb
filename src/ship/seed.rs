//! Seeding the index from what the slave holds (takeover, `--rescan-slave`, a scrub's repair):
//! the slave's listing is taken as it arrives, into one index transaction.

use super::Shipper;
use crate::crawl::index::{Index, Mutation};
use crate::entry::Entry;
use crate::protocol::{self, RelPath};
use anyhow::{Context, Result};

impl Shipper {
    /// Replaces the index with what the slave really has: an entry equal to the brick's in
    /// kind, size, mtime, owner, mode and target is taken as shipped (nothing is sent again),
    /// any other as the slave's version (the next crawl sends the brick's). With `checksum`,
    /// contents are compared too and a file whose bytes differ is marked unknown (resent).
    /// A regular file whose ctime is at or after `changed_since_ns` is never adopted on size
    /// and mtime alone (a version written in the same clock tick has both): the slave hashes
    /// those (one request per 1024) and a file whose content differs is resent.
    /// Returns the number of slave entries.
    pub fn seed_index_from_slave(
        &mut self,
        index: &Index,
        checksum: bool,
        changed_since_ns: Option<i64>,
    ) -> Result<usize> {
        use crate::crawl::links::{differing_groups, master_group_key, slave_group_key};
        use crate::entry::Kind;
        let brick = self
            .brick
            .try_clone()
            .context("duplicating the brick's descriptor")?;
        let mut n = 0usize;
        // Taken as they arrive (memory does not grow with the tree), except two small sets:
        // the names of multiply-linked files on either side (their groups are compared at the
        // end) and the files changed recently (`suspect`: their slave content is asked for).
        let mut linked: Vec<LinkedName> = Vec::new();
        let mut suspect: Vec<(RelPath, Entry)> = Vec::new();
        // An ack handled inside the rebuild's transaction would write the index in it.
        self.drain(index)?;
        // The slave's extended attributes come with the listing: an entry equal in all else
        // but them is not taken as shipped (takeover seeds 1500266 and seven more: a change to
        // attributes alone that the previous Active never shipped stayed missing for good).
        let scope = self.xattrs;
        let mut attrs = crate::xattr::Reader::new(rustix::fd::AsFd::as_fd(&brick));
        let view = self.view;
        let shared_tree = self.shared_tree;
        let r = index.rebuild(|put| {
            self.client
                .list_each(checksum, None, scope, &mut |listed| {
                    let mut rows = Vec::with_capacity(listed.len());
                    for le in listed {
                        n += 1;
                        let local = crate::walk::lstat_beneath(&brick, &le.path, view)
                            .ok()
                            .flatten();
                        let kind = Kind::from_u8(le.kind);
                        // On a shared tree the slave holds every brick's files: one this brick
                        // lacks is another's, never a row of this index (which would delete it).
                        if shared_tree && local.is_none() && kind != Kind::Dir {
                            continue;
                        }
                        let theirs = le.meta.xattrs.clone();
                        let meta = protocol::Meta {
                            xattrs: None,
                            ..le.meta.clone()
                        };
                        // Equal in kind, size, mtime, owner, mode and target.
                        let same = local.as_ref().is_some_and(|l| {
                            l.kind == kind
                                && l.meta() == meta
                                && l.target == le.target
                                && (kind == Kind::Dir || l.size == le.size)
                        });
                        let attrs_differ = same
                            && theirs.is_some()
                            && attrs.read(&le.path, scope).as_deref() != theirs.as_deref();
                        let keys = (
                            local.as_ref().and_then(master_group_key),
                            slave_group_key(&le),
                        );
                        if keys.0.is_some() || keys.1.is_some() {
                            let taken = local.clone().filter(|_| same);
                            linked.push((le.path.clone(), keys.0, keys.1, taken));
                        }
                        let recent = |l: &Entry| {
                            changed_since_ns.is_some_and(|t| {
                                l.kind == Kind::File
                                    && l.ctime_sec.saturating_mul(1_000_000_000)
                                        + l.ctime_nsec as i64
                                        >= t
                            })
                        };
                        if let Some(l) = local
                            .as_ref()
                            .filter(|l| same && le.hash.is_none() && recent(l))
                        {
                            // Its row is written again below once its content is checked: the
                            // mark that its attributes differ goes with it (takeover seed 1500266).
                            let mut l = l.clone();
                            if attrs_differ {
                                (l.ctime_sec, l.ctime_nsec) = (0, 0);
                            }
                            suspect.push((le.path.clone(), l));
                        }
                        let differs = same
                            && le.hash.is_some()
                            && crate::fsutil::hash_beneath(&brick, &le.path).ok() != le.hash;
                        let path = le.path.clone();
                        let mut row = seed_row(le, local, same, differs);
                        if attrs_differ {
                            // Compared as changed: attributes sent again (a file's content too
                            // when its hash is not known).
                            (row.ctime_sec, row.ctime_nsec) = (0, 0);
                        }
                        rows.push(Mutation::Upsert(path, row));
                    }
                    put(&rows)
                })?;
            // A suspect file the slave no longer has, or with other content, is unknown.
            let paths: Vec<RelPath> = suspect.iter().map(|(p, _)| p.clone()).collect();
            let hashes = self.client.hashes(&paths)?;
            let mut fixed = Vec::new();
            for (path, l) in suspect.drain(..) {
                let theirs = hashes.get(&path).copied();
                let differs =
                    theirs.is_none() || crate::fsutil::hash_beneath(&brick, &path).ok() != theirs;
                let entry = if differs {
                    Entry {
                        kind: Kind::Unknown,
                        ..l
                    }
                } else {
                    Entry { hash: theirs, ..l }
                };
                fixed.push(Mutation::Upsert(path, entry));
            }
            // A name whose hard-link group on the slave is not the master's (split, merged)
            // is unknown: the crawl sends its content once and links the other names to it.
            let keys: Vec<_> = linked.iter().map(|(_, m, s, _)| (*m, *s)).collect();
            for split in differing_groups(&keys) {
                let (path, _, _, taken) = &linked[split.name];
                if let Some(l) = taken {
                    fixed.push(Mutation::Upsert(
                        path.clone(),
                        Entry {
                            kind: Kind::Unknown,
                            ..l.clone()
                        },
                    ));
                }
            }
            put(&fixed)
        });
        r?;
        Ok(n)
    }
}

/// A multiply-linked name met while seeding: its group keys on the master and on the slave,
/// and the master's entry when its row was taken as shipped.
type LinkedName = (RelPath, Option<u64>, Option<u64>, Option<Entry>);

/// The index row a takeover seeds for the slave's entry `le`: the master's `local` entry when
/// it is the same (kind, size, mtime, owner, mode, target) and its content does not differ
/// (with the slave's content hash, when it was read); unknown when the content differs (sent
/// again); otherwise the slave's version (the next crawl sends the brick's).
fn seed_row(le: protocol::ListEntry, local: Option<Entry>, same: bool, differs: bool) -> Entry {
    use crate::entry::Kind;
    match local {
        Some(l) if same && !differs => Entry { hash: le.hash, ..l },
        Some(l) if differs => Entry {
            kind: Kind::Unknown,
            ..l
        },
        l => Entry {
            kind: Kind::from_u8(le.kind),
            ino: l.as_ref().map(|l| l.ino).unwrap_or(0),
            size: le.size,
            mtime_sec: le.meta.mtime_sec,
            mtime_nsec: le.meta.mtime_nsec,
            ctime_sec: 0,
            ctime_nsec: 0,
            mode: le.meta.mode,
            uid: le.meta.uid,
            gid: le.meta.gid,
            nlink: 1,
            rdev: 0,
            birth: l.as_ref().map(|l| l.birth).unwrap_or(0),
            target: le.target,
            hash: None,
        },
    }
}
