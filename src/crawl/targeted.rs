//! Journal mode: planning only the paths a window of journal records names.

use super::diff::Diff;
use super::index::{Index, Mutation};
use super::plan::Plan;
use crate::entry::{Change, Entry, Kind};
use crate::fsutil;
use crate::protocol::RelPath;
use crate::walk::{self, Excludes};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

/// What a window of journal records says changed (`ship::changes`), under final names.
#[derive(Debug, Default)]
pub struct Window {
    /// Each path changed, and its parent (whose entries and mtime changed with it).
    pub dirty: BTreeSet<RelPath>,
    /// The final names that are the target of a rename: only those may be matched to a gone
    /// entry by inode (a new entry can reuse a deleted one's inode number).
    pub rename_targets: BTreeSet<RelPath>,
    /// Each rename target (final name) → the name its source had at the start of the window.
    /// A directory the index holds elsewhere arrived by a journaled rename only when this says
    /// so; otherwise it left its place unseen (a MOVED_FROM into a directory not watched yet,
    /// journaled as a removal) and nothing beneath it was journaled on the way.
    pub renamed_from: BTreeMap<RelPath, RelPath>,
    /// Names the records removed (unlinked, or renamed away): an entry missing from the disk
    /// is known to be gone only at or beneath one of these. Missing anywhere else, the disk is
    /// ahead of the records (a rename not journaled yet took it away) and a delete planned
    /// from it would drop what the rename carries.
    pub removed: BTreeSet<RelPath>,
    /// Names a record created or changed (not merely parents of a change).
    pub touched: BTreeSet<RelPath>,
    /// Names whose content a record says was written.
    pub written: BTreeSet<RelPath>,
    /// Names whose attributes a `META` record says changed (an extended attribute changed
    /// twice within one tick of the ctime clock, read between the two, shows in no stat).
    pub attributed: BTreeSet<RelPath>,
    /// The records include a `LINK` (a new name of an existing file).
    pub hard_links_made: bool,
    /// Directories a record made (created, or moved in from a place the writer did not
    /// watch), under final names.
    pub made_dirs: BTreeSet<RelPath>,
    /// Names whose content or attributes a record changed and that a rename of the window
    /// moved (or an ancestor), kept when they are removed: final name → the names they had at
    /// the start of the window, where the index holds the entries. A change through a name of
    /// a hard-linked file changed its other names too, which only the indexed row leads to.
    /// (A name made after its parent was renamed away maps to that parent's old place: extra
    /// rows compared, never fewer.)
    pub changed_through: BTreeMap<RelPath, BTreeSet<RelPath>>,
    /// Names the writer found gone when it read their creation (`UNSEEN`: each may have been a
    /// hard link to a file with other names), or that a `LINK` of this window made, that a
    /// record wrote or changed the attributes of: if it was a link, another name changed with
    /// no record of its own. When the name no longer holds that inode by the plan (removed,
    /// perhaps made again as something else), only a crawl finds the other name.
    pub changed_unseen: BTreeSet<RelPath>,
}

/// The name `p` (a final name of a window) had at the start of the window, where the index
/// holds it: undoes the journaled rename that brought it, or one of its ancestors, there.
fn start_name(p: &RelPath, renamed_from: &BTreeMap<RelPath, RelPath>) -> RelPath {
    p.self_and_ancestors()
        .find_map(|x| renamed_from.get(&x).map(|s| p.rebase(&x, s)))
        .unwrap_or_else(|| p.clone())
}

#[cfg(test)]
pub(super) type AfterLook = Option<Box<dyn FnMut(&RelPath)>>;

#[cfg(test)]
thread_local! {
    /// Tests: runs after each path `plan_paths` looks at on the disk.
    pub(super) static AFTER_LOOK: std::cell::RefCell<AfterLook> = const { std::cell::RefCell::new(None) };
}

/// Plans the ops for a set of paths the journal reported as changed (final names, after the
/// renames among the records were applied), comparing each with the index.
pub fn plan_paths(
    root: &Path,
    index: &Index,
    excludes: &Excludes,
    window: Window,
    slot: &mut u64,
) -> Result<Plan> {
    let Window {
        dirty,
        rename_targets,
        renamed_from,
        removed,
        touched,
        written,
        attributed,
        hard_links_made,
        made_dirs,
        changed_through,
        changed_unseen,
    } = window;
    let root_fd = fsutil::open_root(root)
        .with_context(|| format!("opening brick {} on the master", root.display()))?;
    // Writing through one name of a hard-linked file changes every name, but only that name
    // was journaled: compare all the names the index knows for a dirty multiply-linked inode.
    // Disk entry and index row of every path looked at, each read once.
    let mut seen: HashMap<RelPath, (Option<Entry>, Option<Entry>)> = HashMap::new();
    let look = |p: &RelPath,
                seen: &mut HashMap<RelPath, (Option<Entry>, Option<Entry>)>|
     -> Result<(Option<Entry>, Option<Entry>)> {
        if let Some(v) = seen.get(p) {
            return Ok(v.clone());
        }
        let disk = walk::lstat_beneath(&root_fd, p, excludes.view)
            .with_context(|| format!("reading {p} under {} on the master", root.display()))?;
        #[cfg(test)]
        AFTER_LOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(p)
            }
        });
        let v = (disk, index.get(p)?);
        seen.insert(p.clone(), v.clone());
        Ok(v)
    };
    let mut dirty = dirty;
    let mut written = written;
    let mut linked = Vec::new();
    // Content written through one name was written through all the names of its inode.
    let mut written_through = Vec::new();
    let mut needs_crawl = false;
    let mut incomplete = false;
    let unexplained =
        |p: &RelPath| touched.contains(p) && !p.self_and_ancestors().any(|x| removed.contains(&x));
    // Directories whose entries a record of the window changed: their attributes are set
    // again after this window's ops, so they must be readable where the records say.
    let changed_in: HashSet<RelPath> = touched
        .iter()
        .chain(&removed)
        .filter_map(RelPath::parent)
        .collect();
    for p in &dirty {
        // The inode the name has now, and the one the slave has for it (they differ when the
        // name was deleted or replaced: its former partners may have changed through it).
        let (now, was) = look(p, &mut seen)?;
        // Changed through a name that a rename of this window gave it: the index knows the
        // entry under the name it had before.
        let mut before = Vec::new();
        for s in changed_through.get(p).into_iter().flatten() {
            before.extend(index.get(s)?);
        }
        // A row poisoned by a failure no longer leads to the inode: if the name was a hard
        // link, a change made through it reached names that no record names and no row
        // leads to (journal seed 2001322: the rewrite of a link that failed to ship).
        if (written.contains(p) || attributed.contains(p))
            && was
                .iter()
                .chain(before.iter())
                .any(|e| e.kind != Kind::Dir && e.ino == 0)
        {
            tracing::debug!("{p} changed through a name whose row is unknown: crawling");
            needs_crawl = true;
        }
        for e in now.iter().chain(was.iter()).chain(before.iter()) {
            if e.kind == Kind::File && e.nlink > 1 {
                for q in index.files_with_ino(e.ino)? {
                    // A partner gone from its indexed name without a record of its own was
                    // moved with a directory: its new name is unknown here.
                    if !dirty.contains(&q) && look(&q, &mut seen)?.0.is_none_or(|x| x.ino != e.ino)
                    {
                        // Its slave copy may stop sharing the inode (content sent through this
                        // name is a new inode there) while its row still matches the disk: mark
                        // the row unknown so the crawl below re-links or re-sends it wherever
                        // it is now (the row moves with its directory).
                        index.apply(&[Mutation::Poison(q.clone())])?;
                        needs_crawl = true;
                    }
                    if written.contains(p) {
                        written_through.push(q.clone());
                    }
                    linked.push(q);
                }
            }
        }
    }
    // A directory is watched only after it appears, so what happened in it before (a name
    // made there and renamed or removed at once) is never journaled. Only a crawl running
    // meanwhile can have shipped such a name: one the index holds beneath a directory made in
    // this window, gone from the disk, that no record removed, is such a leftover. Only a
    // crawl can tell whether it was removed or moved (and where).
    // The index holds the directory under the name it had at the start of the window (a
    // rename of this window may have moved it since: seed 390020).
    for d in &made_dirs {
        if needs_crawl || !look(d, &mut seen)?.0.is_some_and(|e| e.kind == Kind::Dir) {
            continue;
        }
        let start = start_name(d, &renamed_from);
        for (q, _) in index.subtree(&start)? {
            let now = q.rebase(&start, d);
            // A removal at or above `d` explains nothing: `d` is on disk (a file replaced by
            // this directory was removed, and that deletes nothing beneath it on the slave:
            // journal seed 490241). Only removals strictly beneath `d` do.
            if !dirty.contains(&now)
                && !now
                    .self_and_ancestors()
                    .take_while(|x| x != d)
                    .any(|x| removed.contains(&x))
                && walk::lstat_beneath(&root_fd, &now, excludes.view)?.is_none()
            {
                tracing::debug!("{now} is indexed but gone, and no record says why: crawling");
                needs_crawl = true;
                break;
            }
        }
    }
    dirty.extend(linked);
    written.extend(written_through);
    let mut d = Diff {
        written,
        attributed,
        ..Diff::default()
    };
    for p in &dirty {
        if !p.is_root() && excludes.is_excluded(p) {
            continue;
        }
        let (disk, old) = look(p, &mut seen)?;
        d.scanned += 1;
        if let Some(e) = &disk {
            d.saw(e);
        }
        if let Some(e) = disk.as_ref().filter(|e| e.kind == Kind::Dir) {
            d.dirs.insert(p.clone(), e.clone());
        }
        // An indexed name removed, made again as a link that was changed through, and made
        // once more: the change reached another name no record names, as when the name stays
        // gone (below). (Not for a name a rename of the window took over: an atomic save read
        // late, `x.tmp` made, written and renamed over `x`, is that too, and a link renamed
        // there is still a link the plan follows.)
        needs_crawl |=
            disk.is_some() && old.is_some() && changed_unseen.contains(p) && removed.contains(p);
        match (disk, old) {
            // Made and removed since the last pass: nothing to ship, unless it was a hard link
            // (this pass made one, or the writer could not tell: seed 380059): content written
            // through it changed another name, which only a crawl can find now.
            (None, None) => {
                needs_crawl |= hard_links_made || changed_unseen.contains(p);
                incomplete |= unexplained(p);
            }
            (Some(e), None) if p.is_root() => d.new_root = Some(e),
            (Some(e), None) => {
                // A link of this window, changed through and removed, and the name made
                // again: the change reached another name no record names (journal seed
                // 1200413: the name came back as a directory), or replaced by a rename
                // (2401207: the rename carried another inode there).
                needs_crawl |= changed_unseen.contains(p)
                    && (removed.contains(p) || rename_targets.contains(p));
                d.new.insert(p.clone(), e);
            }
            // Missing from the disk, and no record of this window removed it or an ancestor:
            // the disk is ahead of the records (a rename or delete not journaled yet took it
            // away). Deleting it here would lose what a rename carries: the slave keeps it
            // and the later record moves or deletes it. When this window also changed it,
            // that change went with it: the window is planned again with the later records.
            // The same holds when this window changed its entries: the ops change its
            // attributes on the slave, which can only be set again from the disk once the
            // records say where it went.
            (None, Some(_)) if !p.self_and_ancestors().any(|x| removed.contains(&x)) => {
                incomplete |= touched.contains(p) || changed_in.contains(p)
            }
            (None, Some(o)) => {
                // The indexed name was removed, and a link made at it since was changed
                // through and removed too: the change reached another name no record names
                // (gaps seed 3000xxx).
                needs_crawl |= changed_unseen.contains(p);
                if o.kind == Kind::Dir {
                    d.gone.extend(index.subtree(p)?);
                }
                d.gone.insert(p.clone(), o);
            }
            (Some(e), Some(o)) if p.is_root() => match o.change_to(&e) {
                Change::None => {}
                c => d.updates.push((p.clone(), o, e, c)),
            },
            // Beneath a directory another one replaced (its old rows are gone with it), an
            // entry is new, as in the full crawl: compared with the old directory's row, a
            // file found equal was kept in the index while the slave removed it with the old
            // tree (journal seed 1000028: `mv F/F d` over `d`).
            (Some(e), Some(_)) if p.parent().is_some_and(|x| d.under_replaced(&x)) => {
                d.new.insert(p.clone(), e);
            }
            (Some(e), Some(o)) => d.compare(index, p.clone(), o, e)?,
        }
    }
    // The disk can be ahead of the records planned (a directory created and renamed between
    // two windows): a new directory that is not a rename within this plan is listed whole, as
    // its entries may never be journaled under its current name. So is one that the index
    // holds elsewhere but that no journaled rename brought from there: what changed beneath
    // it on the way was not journaled (seed 370072).
    let mut expand = Vec::new();
    for (p, e) in &d.new {
        if e.kind != Kind::Dir {
            continue;
        }
        let mut renamed_here = false;
        for q in index.dirs_with_ino(e.ino)? {
            // The diff below pairs the two as a rename only when the index row is provably
            // the same directory (`same_object`): otherwise it is a new directory, listed
            // whole (seed 390034 of the gaps mode: not listed, it was made empty on the slave
            // and its entries were never sent).
            let proven = index.get(&q)?.is_some_and(|row| row.same_object(e));
            if proven && q != *p && dirty.contains(&q) && renamed_from.get(p) == Some(&q) {
                renamed_here |= walk::lstat_beneath(&root_fd, &q, excludes.view)?
                    .is_none_or(|x| x.ino != e.ino);
            }
        }
        if !renamed_here {
            expand.push(p.clone());
        }
    }
    for p in expand {
        // A directory that moved away before it could be listed (a rename not journaled yet:
        // journal seed 1401242) says nothing of what is beneath it: its indexed entries are
        // not gone, and the window is planned again once the records say where it went.
        let (entries, unlisted) = walk::list_subtree_checked(&root_fd, &p, excludes)?;
        incomplete |= !unlisted.is_empty();
        if !unlisted.contains(&p) {
            d.listed.insert(p.clone());
        }
        d.unlisted.extend(unlisted);
        for (q, e) in entries {
            if e.kind == Kind::Dir {
                d.dirs.insert(q.clone(), e.clone());
            }
            d.saw(&e);
            d.scanned += 1;
            let replaced = q.parent().is_some_and(|x| d.under_replaced(&x));
            match index.get(&q)?.filter(|_| !replaced) {
                None => {
                    d.new.insert(q, e);
                }
                Some(o) => d.compare(index, q, o, e)?,
            }
        }
    }
    // One directory, or one file of a single name, at two paths of this plan: the disk moved
    // while it was read (a rename and its reverse between two looks: journal seed 56). Planned
    // from that view, it would be made new at one name and left as it was at the other, and
    // the next window would delete the new one: what changed in it would never be compared
    // again. The window is planned again once the records catch up.
    let mut at: HashMap<(u64, u64), &RelPath> = HashMap::new();
    for (p, (disk, _)) in &seen {
        let Some(e) = disk
            .as_ref()
            .filter(|e| e.kind == Kind::Dir || e.nlink == 1)
        else {
            continue;
        };
        if let Some(q) = at.insert((e.ino, e.birth as u64), p) {
            tracing::debug!(
                "{q} and {p} are one entry: the disk moved while this window was planned"
            );
            incomplete = true;
        }
    }
    // Hard links: other names of a changed multiply-linked file that the slave already has.
    d.join_names_stated_before_their_link();
    let mut inos: Vec<u64> = Vec::new();
    for e in d.new.values().chain(d.updates.iter().map(|u| &u.2)) {
        if e.kind == Kind::File && e.nlink > 1 {
            inos.push(e.ino);
        }
    }
    let changed: HashMap<RelPath, u64> = d
        .new
        .iter()
        .map(|(p, e)| (p.clone(), e.ino))
        .chain(d.updates.iter().map(|u| (u.0.clone(), u.2.ino)))
        .collect();
    for (p, ino) in &changed {
        if inos.contains(ino) {
            d.links.entry(*ino).or_default().push(p.clone());
        }
    }
    // Rows dropped with a directory that another one replaced on the disk before its records
    // came (`Diff::compare`): a hard-linked file among them may have been written through that
    // name before the directory went, and the record comes in a later window, when no row
    // leads to the inode any more (journal seed 2101659). Its other names are compared now.
    for (q, g) in &d.gone {
        if g.kind == Kind::File
            && g.nlink > 1
            && g.ino != 0
            && !dirty.contains(q)
            && !q.self_and_ancestors().any(|x| removed.contains(&x))
        {
            inos.push(g.ino);
        }
    }
    inos.sort_unstable();
    inos.dedup();
    for ino in inos {
        if d.stable_link.contains_key(&ino) {
            continue;
        }
        for q in index.files_with_ino(ino)? {
            if dirty.contains(&q) {
                continue;
            }
            let Some(e) =
                walk::lstat_beneath(&root_fd, &q, excludes.view)?.filter(|e| e.ino == ino)
            else {
                // Gone from its indexed name without a record (moved with a directory): if
                // this plan sends the content, its slave copy stops sharing the inode. Only a
                // crawl finds where it went.
                index.apply(&[Mutation::Poison(q.clone())])?;
                needs_crawl = true;
                continue;
            };
            let Some(row) = index
                .get(&q)?
                .filter(|o| o.ino == ino && !e.reused_inode_of(o))
            else {
                continue;
            };
            d.saw(&e);
            if row.change_to(&e) != Change::Data {
                d.stable_link.insert(ino, q);
                break;
            }
            // Its row is behind the disk: the content changed through a name this window
            // cannot see (written, then removed), so the slave's copy is not current and must
            // not lead. It is sent again, or linked to a name that is.
            d.links.entry(ino).or_default().push(q.clone());
            d.compare(index, q, row, e)?;
        }
    }
    d.targeted = Some(dirty);
    d.rename_targets = Some(rename_targets);
    // A targeted diff only looked at the dirty paths: a parent directory touched on the slave
    // by an op of this plan is read from the disk here.
    // Only the directory the index holds there: another that took the name since the diff
    // looked (gaps seed 1400877: the row of the slave's directory took the identity of a new
    // one, and the old one, with what it held, stayed on the slave for good) is left to the
    // next plan; the row is marked stale meanwhile.
    let stat_dir = |p: &RelPath| {
        let e = walk::lstat_beneath(&root_fd, p, excludes.view)
            .ok()
            .flatten()
            .filter(|e| e.kind == Kind::Dir)?;
        match index.get(p).ok().flatten() {
            Some(row) if row.kind == Kind::Dir && (row.ino != e.ino || e.reused_inode_of(&row)) => {
                None
            }
            _ => Some(e),
        }
    };
    let mut plan = d.plan(slot, &stat_dir);
    plan.needs_crawl = needs_crawl;
    plan.incomplete = incomplete;
    Ok(plan)
}
