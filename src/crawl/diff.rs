//! The diff of a brick (or of the paths a journal window names) against the index: entries
//! classified as new, gone or changed, renames matched by identity, hard-link groups, and the
//! plan made from them (`Diff::plan`).

use super::index::{self, Index, Mutation};
use super::plan::{Builder, Plan, PlanOp, PlannedOp};
use crate::entry::{Change, Entry, Kind};
use crate::protocol::{Op, RelPath};
use anyhow::Result;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

#[derive(Default)]
pub(super) struct Diff {
    pub(super) scanned: u64,
    pub(super) new_root: Option<Entry>,
    /// On disk, not in the index at that path.
    pub(super) new: BTreeMap<RelPath, Entry>,
    /// In the index, not on disk at that path (subtrees included).
    pub(super) gone: BTreeMap<RelPath, Entry>,
    /// Same path, same kind, something changed: (path, index entry, disk entry, change).
    pub(super) updates: Vec<(RelPath, Entry, Entry, Change)>,
    /// Every multiply-linked file on disk, by inode.
    pub(super) links: HashMap<u64, Vec<RelPath>>,
    /// A path per multiply-linked inode whose content on the slave is current.
    pub(super) stable_link: HashMap<u64, RelPath>,
    /// A path per multiply-linked inode whose only sign of change is its ctime (a link count
    /// change moves it): its op hashes the file against the slave's copy and resends only
    /// when the content differs, so its slave copy is current once applied.
    pub(super) hash_checked: HashMap<u64, RelPath>,
    /// Multiply-linked files compared and found unchanged: (path, index entry, disk entry).
    pub(super) unchanged_links: Vec<(RelPath, Entry, Entry)>,
    /// The first stat seen of each multiply-linked file (size, mtime, ctime).
    pub(super) link_stats: HashMap<u64, (u64, i64, u32, i64, u32)>,
    /// Multiply-linked files whose names were seen with different stats: changed while this
    /// diff looked at them (see `plan`).
    pub(super) torn: HashSet<u64>,
    pub(super) errors: Vec<(RelPath, String)>,
    /// Every directory on disk (root included), for restoring parents' attributes.
    pub(super) dirs: HashMap<RelPath, Entry>,
    /// Directories whose index rows belong to a directory that is no longer at that path.
    pub(super) replaced: HashSet<RelPath>,
    /// Journal mode: only these paths were looked at. Index rows beneath a renamed directory
    /// that are not among them moved along with it intact (any change would be journaled).
    pub(super) targeted: Option<BTreeSet<RelPath>>,
    /// Journal mode: directories listed whole (every entry beneath them was looked at)…
    pub(super) listed: BTreeSet<RelPath>,
    /// …but for these beneath them, gone or replaced before they could be listed.
    pub(super) unlisted: BTreeSet<RelPath>,
    /// Journal mode: the only new names that may be renames (matched to a gone entry by inode).
    pub(super) rename_targets: Option<BTreeSet<RelPath>>,
    /// Journal mode: files a `DATA` record says were written. Their content changed whatever
    /// the stat says: a rewrite within one tick of the filesystem's clock, of the same size,
    /// leaves size, mtime and ctime as they were when the previous version was shipped.
    pub(super) written: BTreeSet<RelPath>,
    /// Journal mode: entries a `META` record says changed: their attributes are sent again
    /// whatever the stat says.
    pub(super) attributed: BTreeSet<RelPath>,
}

impl Diff {
    /// Classifies an entry that is both on disk (`e`) and in the index (`old`) at `path`.
    pub(super) fn compare(
        &mut self,
        index: &Index,
        path: RelPath,
        old: Entry,
        e: Entry,
    ) -> Result<()> {
        match old {
            old if old.kind == Kind::Dir
                && e.kind == Kind::Dir
                && old.ino == e.ino
                && !e.reused_inode_of(&old) =>
            {
                match old.change_to(&e) {
                    Change::None | Change::IndexOnly if self.attributed.contains(&path) => {
                        self.updates.push((path, old, e, Change::Meta))
                    }
                    Change::None => {}
                    c => self.updates.push((path, old, e, c)),
                }
            }
            old if old.kind == Kind::Dir && e.kind == Kind::Dir => {
                // A different directory under the same name (a swap, `rm -r x; mv y x`,
                // `mv x y; mkdir x`): the old one is gone from here (or renamed, which the
                // inode match finds), the new one is new or a rename candidate.
                self.gone.extend(index.subtree(&path)?);
                self.gone.insert(path.clone(), old);
                self.replaced.insert(path.clone());
                self.new.insert(path, e);
            }
            old if old.kind != e.kind || old.ino != e.ino || e.reused_inode_of(&old) => {
                if old.kind == Kind::Dir {
                    self.gone.extend(index.subtree(&path)?);
                }
                self.gone.insert(path.clone(), old);
                self.new.insert(path, e);
            }
            old => {
                // A written file is hash-checked against the slave's copy when its size is the
                // same (`written`).
                let c = if e.kind == Kind::File && self.written.contains(&path) {
                    Change::Data
                } else {
                    match old.change_to(&e) {
                        Change::None | Change::IndexOnly if self.attributed.contains(&path) => {
                            Change::Meta
                        }
                        c => c,
                    }
                };
                // Content on the slave is current (only attributes may differ): a good target
                // for the inode's other names.
                if c != Change::Data && e.kind == Kind::File && e.nlink > 1 {
                    self.stable_link
                        .entry(e.ino)
                        .and_modify(|p| {
                            if path < *p {
                                *p = path.clone()
                            }
                        })
                        .or_insert(path.clone());
                }
                if c == Change::Data
                    && e.kind == Kind::File
                    && e.nlink > 1
                    && old.hash.is_some()
                    && (old.size, old.mtime_sec, old.mtime_nsec)
                        == (e.size, e.mtime_sec, e.mtime_nsec)
                {
                    self.hash_checked
                        .entry(e.ino)
                        .and_modify(|p| {
                            if path < *p {
                                *p = path.clone()
                            }
                        })
                        .or_insert(path.clone());
                }
                if c != Change::None {
                    self.updates.push((path, old, e, c));
                } else if e.kind == Kind::File && e.nlink > 1 {
                    self.unchanged_links.push((path, old, e));
                }
            }
        }
        Ok(())
    }

    /// A name stat'ed with one link while another name of the same file (same inode, same
    /// birth) shows more: a link was made between the two stats (seed 430148). Sent on its own,
    /// it would stay a separate file on the slave, its row vouching for it: it is a name of the
    /// link group, and the group is torn (its content goes once, the other names are linked).
    pub(super) fn join_names_stated_before_their_link(&mut self) {
        let mut multi: HashMap<u64, (u32, i64)> = HashMap::new();
        for e in self.new.values().chain(self.updates.iter().map(|u| &u.2)) {
            if e.kind == Kind::File && e.nlink > 1 && e.birth != 0 {
                let m = multi.entry(e.ino).or_insert((e.nlink, e.birth));
                m.0 = m.0.max(e.nlink);
            }
        }
        if multi.is_empty() {
            return;
        }
        for e in self
            .new
            .values_mut()
            .chain(self.updates.iter_mut().map(|u| &mut u.2))
        {
            if let Some(&(nlink, birth)) = multi.get(&e.ino) {
                if e.kind == Kind::File && e.nlink < 2 && e.birth == birth {
                    e.nlink = nlink;
                    self.torn.insert(e.ino);
                }
            }
        }
    }

    /// Notes the stat of a name of a multiply-linked file.
    pub(super) fn saw(&mut self, e: &Entry) {
        if e.kind != Kind::File || e.nlink < 2 {
            return;
        }
        let st = (e.size, e.mtime_sec, e.mtime_nsec, e.ctime_sec, e.ctime_nsec);
        if *self.link_stats.entry(e.ino).or_insert(st) != st {
            self.torn.insert(e.ino);
        }
    }

    /// A multiply-linked file that changed while it was looked at (its names were stat'ed at
    /// different moments): which version each name's slave copy holds is unknown, so no name
    /// counts as current. Its content goes once, through one name, and every other name looked
    /// at is linked to that one.
    pub(super) fn mend_torn(&mut self) {
        if self.torn.is_empty() {
            return;
        }
        let torn = std::mem::take(&mut self.torn);
        for (path, old, e) in std::mem::take(&mut self.unchanged_links) {
            if torn.contains(&e.ino) {
                self.updates.push((path, old, e, Change::Data));
            }
        }
        let mut names: HashMap<u64, Vec<RelPath>> = HashMap::new();
        for (path, _, e, c) in &mut self.updates {
            if e.kind == Kind::File && torn.contains(&e.ino) {
                *c = Change::Data;
                names.entry(e.ino).or_default().push(path.clone());
            }
        }
        for (path, e) in &self.new {
            if e.kind == Kind::File && torn.contains(&e.ino) {
                names.entry(e.ino).or_default().push(path.clone());
            }
        }
        for ino in &torn {
            self.stable_link.remove(ino);
            self.hash_checked.remove(ino);
            self.links
                .insert(*ino, names.remove(ino).unwrap_or_default());
        }
        self.torn = torn;
    }

    pub(super) fn under_replaced(&self, dir: &RelPath) -> bool {
        !self.replaced.is_empty() && dir.self_and_ancestors().any(|x| self.replaced.contains(&x))
    }

    pub(super) fn leader(&self, e: &Entry) -> Option<&RelPath> {
        if e.kind != Kind::File || e.nlink < 2 {
            return None;
        }
        self.stable_link
            .get(&e.ino)
            .or_else(|| self.hash_checked.get(&e.ino))
            .or_else(|| self.links.get(&e.ino).and_then(|v| v.iter().min()))
    }

    /// `stat_dir` reads a directory this diff did not look at (targeted diffs).
    pub(super) fn plan(
        mut self,
        slot: &mut u64,
        stat_dir: &dyn Fn(&RelPath) -> Option<Entry>,
    ) -> Plan {
        self.mend_torn();
        let mut b = Builder::default();
        if let Some(e) = self.new_root.take() {
            b.set_attr(&RelPath::root(), &e);
        }
        let updates = std::mem::take(&mut self.updates);
        for (path, old, e, c) in &updates {
            let leader = self.leader(e).cloned();
            b.update(path, old, e, *c, leader.as_ref());
        }
        let new = std::mem::take(&mut self.new);
        let dir_origin = self.place_new(&mut b, &new, slot);
        // Where each directory a rename of this plan moves goes: old path -> new path.
        let moved_to: HashMap<&RelPath, &RelPath> =
            dir_origin.iter().map(|(n, o)| (o, n)).collect();
        self.plan_deletes(&mut b, &moved_to);
        self.plan_dir_attrs(&mut b, &moved_to, &new, &updates, stat_dir);
        b.into_plan(self.scanned, self.errors)
    }

    /// The new entries: each is a rename of a gone one (provably the same object: inode and
    /// birth time or generation, and for a non-directory the same size and mtime), moved along
    /// with a renamed parent, or made new. Returns the directories that moved: new path -> old
    /// path.
    pub(super) fn place_new(
        &mut self,
        b: &mut Builder,
        new: &BTreeMap<RelPath, Entry>,
        slot: &mut u64,
    ) -> HashMap<RelPath, RelPath> {
        // Rename candidates: gone entries by inode. A multiply-linked file is not a rename
        // candidate (its other names keep the inode); it is re-linked instead.
        let mut by_ino: HashMap<u64, RelPath> = HashMap::new();
        for (p, g) in &self.gone {
            if g.kind != Kind::Unknown && g.ino != 0 && !(g.kind == Kind::File && g.nlink > 1) {
                by_ino.insert(g.ino, p.clone());
            }
        }
        // new path -> old path, for directories that moved (explicitly or with a parent).
        let mut dir_origin: HashMap<RelPath, RelPath> = HashMap::new();
        for (path, e) in new {
            // Moved along with a renamed parent directory?
            let along = path
                .parent()
                .and_then(|p| dir_origin.get(&p))
                .and_then(|op| op.join(path.name()).ok());
            if let Some(origin) = along {
                if let Some(old) = self
                    .gone
                    .get(&origin)
                    .filter(|o| o.kind == e.kind && o.ino == e.ino && !e.reused_inode_of(o))
                    .cloned()
                {
                    self.gone.remove(&origin);
                    if e.kind == Kind::Dir {
                        dir_origin.insert(path.clone(), origin);
                    }
                    let leader = self.leader(e).cloned();
                    let c = match old.change_to(e) {
                        _ if e.kind == Kind::File && self.torn.contains(&e.ino) => Change::Data,
                        // Unchanged on the slave, but another name of its inode gets its
                        // content sent (a new inode there): link this one to it.
                        _ if e.kind == Kind::File
                            && b.sent.contains(&e.ino)
                            && leader.as_ref().is_some_and(|l| l != path) =>
                        {
                            Change::Data
                        }
                        c => c,
                    };
                    b.update(path, &old, e, c, leader.as_ref());
                    continue;
                }
            }
            let may_be_renamed = !(e.kind == Kind::File && e.nlink > 1)
                && self
                    .rename_targets
                    .as_ref()
                    .is_none_or(|t| t.contains(path));
            let renamed_from = may_be_renamed
                .then(|| by_ino.get(&e.ino))
                .flatten()
                .filter(|o| {
                    self.gone.get(*o).is_some_and(|g| {
                        g.kind == e.kind
                            && g.same_object(e)
                            && (e.kind == Kind::Dir
                                || (g.size == e.size
                                    && g.mtime_sec == e.mtime_sec
                                    && g.mtime_nsec == e.mtime_nsec))
                    })
                })
                .cloned();
            if let Some(from) = renamed_from {
                let old = self.gone.remove(&from).unwrap();
                *slot += 1;
                b.stashes.push((from.clone(), *slot));
                let change = old.change_to(e);
                // The index mirrors the slave: rows go into the stash with `Stash` and come
                // out at the destination with `Unstash`, so swaps and cycles stay consistent.
                let mut ok = vec![Mutation::Move(index::stash_path(*slot), path.clone())];
                if matches!(change, Change::None | Change::IndexOnly) {
                    let kept = Entry {
                        hash: old.hash,
                        ..e.clone()
                    };
                    ok.push(Mutation::Upsert(path.clone(), kept));
                }
                b.creates.push((
                    path.clone(),
                    0,
                    PlannedOp::new(
                        Op::Unstash {
                            slot: *slot,
                            to: path.clone(),
                        },
                        ok,
                        vec![
                            Mutation::Remove(index::stash_path(*slot)),
                            Mutation::Poison(from.clone()),
                            Mutation::Poison(path.clone()),
                        ],
                    ),
                ));
                b.created.insert(path.clone());
                b.replacing.insert(path.clone());
                b.stats.renamed += 1;
                if e.kind == Kind::Dir {
                    dir_origin.insert(path.clone(), from);
                }
                if !matches!(change, Change::None | Change::IndexOnly) {
                    let leader = self.leader(e).cloned();
                    b.update(path, &old, e, change, leader.as_ref());
                }
                continue;
            }
            // A new entry.
            b.stats.new += 1;
            b.created.insert(path.clone());
            if e.kind != Kind::Dir {
                b.replacing.insert(path.clone());
                if self.gone.get(path).is_some_and(|g| g.kind == Kind::Dir) {
                    // It replaces an indexed directory, whose entries' deletes are left out:
                    // the tree is deleted first, and its rows go with it (or a later plan
                    // would find entries beneath a file: seed 900474). Only once the slave
                    // did it: the content that follows may not take effect (changed while
                    // read), and rows forgotten without the delete left the old tree on the
                    // slave for good (takeover seed 1200153).
                    b.creates.push((
                        path.clone(),
                        0,
                        PlannedOp::new(
                            Op::Delete { path: path.clone() },
                            vec![Mutation::Remove(path.clone())],
                            Builder::poison(path),
                        ),
                    ));
                }
            }
            if e.kind == Kind::Dir {
                b.mkdir(path, e);
            } else {
                let leader = self.leader(e).cloned();
                b.content(path, e, None, leader.as_ref());
            }
        }
        dir_origin
    }

    /// The deletes, at the location each entry has once the renames are done; none beneath a
    /// deleted directory or a path an op of this plan replaces.
    pub(super) fn plan_deletes(&self, b: &mut Builder, moved_to: &HashMap<&RelPath, &RelPath>) {
        // Deletes, at the location the entry has once renames are done.
        // Where Deletes were emitted (post-rename locations): what lies beneath goes with
        // them. An old path's ancestor is no guide: a directory moved out of a deleted one
        // by a rename of this plan survives it. (Parents come first in the map's order, and
        // translation keeps the order beneath a moved directory, so the check below sees
        // every ancestor's outcome.)
        let mut emitted: HashSet<RelPath> = HashSet::new();
        for p in self.gone.keys() {
            let (target, moved_root) = translate(moved_to, p);
            // (The root is never deleted, so it is never in `emitted`.)
            if target
                .parent()
                .is_some_and(|par| par.self_and_ancestors().any(|x| emitted.contains(&x)))
            {
                continue; // a deleted ancestor takes it along
            }
            if let (Some(dirty), Some(_)) = (&self.targeted, &moved_root) {
                let looked_at = dirty.contains(&target)
                    || target
                        .self_and_ancestors()
                        .take_while(|x| !self.unlisted.contains(x))
                        .any(|x| self.listed.contains(&x));
                if !looked_at {
                    continue; // moved along with its directory, unchanged
                }
            }
            // Replaced by an op of this plan: created at this very path, or beneath a path
            // whose op removes the old tree (a rename onto it, a non-directory).
            let mut replaced = b.created.contains(&target);
            let mut c = target.parent();
            while let Some(x) = c {
                if replaced || Some(&x) == moved_root.as_ref() {
                    break;
                }
                replaced = b.replacing.contains(&x);
                c = x.parent();
            }
            if replaced {
                continue;
            }
            b.stats.deleted += 1;
            emitted.insert(target.clone());
            b.deletes.push((
                target.clone(),
                PlannedOp::new(
                    Op::Delete {
                        path: target.clone(),
                    },
                    vec![Mutation::Remove(target.clone())],
                    Builder::poison(&target),
                ),
            ));
        }
    }

    /// The attributes of every directory the plan's ops touch on the slave, set again at the
    /// end, from the disk.
    pub(super) fn plan_dir_attrs(
        &self,
        b: &mut Builder,
        moved_to: &HashMap<&RelPath, &RelPath>,
        new: &BTreeMap<RelPath, Entry>,
        updates: &[(RelPath, Entry, Entry, Change)],
        stat_dir: &dyn Fn(&RelPath) -> Option<Entry>,
    ) {
        // Replacing, creating, renaming or deleting an entry changes its parent's mtime on the
        // slave even where the master's parent is unchanged (a file rewritten in place is a
        // rename on the slave; a rename goes through the stash): set every touched directory's
        // attributes again, at the end, from the disk.
        let mut touched: HashSet<RelPath> = HashSet::new();
        for (from, _) in &b.stashes {
            touched.extend(translate(moved_to, from).0.parent());
        }
        for (path, _, op) in &b.creates {
            match &op.op {
                PlanOp::IndexOnly | PlanOp::Op(Op::SetAttr { .. }) => {}
                PlanOp::Op(Op::Unstash { .. }) => {
                    touched.extend(path.parent());
                    // A directory moved to another parent has its attributes changed too. Only
                    // one the diff saw as a directory: read from the disk now, the name may hold
                    // another entry (seed 400097: a symlink was unstashed there, a new directory
                    // had taken the name on the master since, and the index recorded that
                    // directory for the slave's symlink).
                    if self.dirs.contains_key(path) {
                        touched.insert(path.clone());
                    }
                }
                _ => touched.extend(path.parent()),
            }
        }
        for (path, _) in b.links.iter().chain(&b.deletes) {
            touched.extend(path.parent());
        }
        let already: HashSet<RelPath> = b.dir_attrs.iter().map(|(p, _)| p.clone()).collect();
        // Names this diff saw as something other than a directory (moved along with a renamed
        // parent, say): the slave holds that there, and a directory that took the name on the
        // master since (read from the disk below) is not its attributes (seed 900474: a file
        // got a directory's mode and mtime, and the index recorded the directory for it).
        let non_dirs: HashSet<&RelPath> = new
            .iter()
            .chain(updates.iter().map(|(p, _, e, _)| (p, e)))
            .filter(|(_, e)| e.kind != Kind::Dir)
            .map(|(p, _)| p)
            .collect();
        for t in touched {
            if already.contains(&t) || non_dirs.contains(&t) {
                continue;
            }
            if let Some(e) = &self.dirs.get(&t).cloned().or_else(|| stat_dir(&t)) {
                let op = PlannedOp::new(
                    Op::SetAttr {
                        path: t.clone(),
                        meta: e.meta(),
                    },
                    Builder::upsert(&t, e),
                    Builder::poison(&t),
                );
                b.dir_attrs.push((t, op));
            } else {
                // Moved away (a rename not journaled yet) or gone since: its attributes cannot
                // be read here, but the ops above changed them on the slave. The index must
                // not vouch for them: the next comparison of it (where the rename takes it)
                // sets them again.
                b.dir_attrs.push((t.clone(), Builder::stale(&t)));
            }
        }
    }
}

/// Where the old path `p` is once the renames of the plan are done, and the new path of the
/// moved directory it went along with (if any).
pub(super) fn translate(
    moved_to: &HashMap<&RelPath, &RelPath>,
    p: &RelPath,
) -> (RelPath, Option<RelPath>) {
    let mut a = p.parent();
    while let Some(anc) = a {
        if let Some(n) = moved_to.get(&anc) {
            return (p.rebase(&anc, n), Some((*n).clone()));
        }
        a = anc.parent();
    }
    (p.clone(), None)
}
