//! Hybrid crawl: walk a brick, compare every entry with the index (what the slave holds) and
//! plan the ops that make the slave equal the brick, with renames detected by inode.
//!
//! Invariant: the plan's ops, applied in order, are valid whatever the renames: every rename is
//! a `Stash` (all sources moved aside first, deepest first) then an `Unstash` in destination
//! order, so swaps and cycles need no special case; creations run in path order (parents
//! first), hard links after all creations, deletes after that (at their post-rename location),
//! and directory attributes last, deepest first, so children's changes do not disturb them.

pub use crate::entry;
mod full;
pub mod index;
pub mod links;
pub use crate::walk;

use crate::fsutil;
#[cfg(test)]
use crate::gluster::View;
use crate::protocol::{Op, RelPath};
use anyhow::{Context, Result};
use entry::{Change, Entry, Kind};
use index::{Index, Mutation};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use walk::Excludes;

pub use full::{crawl, Emit};

/// Below this, a file that grew is sent whole: its base costs little, and the slave would read
/// it back to rebuild the file all the same.
pub const APPEND_MIN: u64 = 64 << 10;

/// What the shipper does for one planned step.
#[derive(Debug, Clone)]
pub enum PlanOp {
    Op(Op),
    /// Ship the file's content, read at ship time. With `known_hash` (same size, the slave's
    /// content hash known), the shipper first hashes the file locally and sends only its
    /// attributes when the content is the same (a `touch`, a `cp -p` of identical data), and
    /// nothing when those are `slave_meta` already (a racily clean row checked again).
    File {
        path: RelPath,
        entry: Entry,
        known_hash: Option<[u8; 32]>,
        slave_meta: Option<crate::protocol::Meta>,
        /// The file grew past the slave's copy, `grew_from` bytes whose hash is `known_hash`:
        /// when its first bytes still hash so, only the rest is sent (`FileAppend`).
        grew_from: Option<u64>,
    },
    /// Nothing goes to the slave; only the index changes once the batch is acknowledged.
    IndexOnly,
}

#[derive(Debug, Clone)]
pub struct PlannedOp {
    pub op: PlanOp,
    /// Index mutations applied when the slave acknowledges the op.
    pub ok: Vec<Mutation>,
    /// Index mutations applied instead when the slave reports the op failed.
    pub fail: Vec<Mutation>,
}

impl PlannedOp {
    fn new(op: Op, ok: Vec<Mutation>, fail: Vec<Mutation>) -> Self {
        PlannedOp {
            op: PlanOp::Op(op),
            ok,
            fail,
        }
    }

    pub fn bytes(&self) -> u64 {
        match &self.op {
            PlanOp::File { entry, .. } => entry.size,
            _ => 0,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PlanStats {
    pub scanned: u64,
    pub new: u64,
    pub changed: u64,
    pub deleted: u64,
    pub renamed: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<PlannedOp>,
    pub stats: PlanStats,
    /// Journal mode could not see everything this plan depends on (another name of a changed
    /// hard-linked file moved without a record naming it, or a name a crawl shipped from a
    /// directory not watched yet went without a record): run a crawl after it.
    pub needs_crawl: bool,
    /// Journal mode: a path the window created or changed is gone from the disk and no record
    /// of the window removed it: a rename not journaled yet took it (and its content) away.
    /// The window is planned again together with the records that follow.
    pub incomplete: bool,
    /// Ops of this plan already handed out while the crawl ran (`crawl`'s `emit`): they count
    /// in `stats` but are not in `ops`.
    pub streamed: u64,
    /// Directories that could not be read on the master (path, message).
    pub errors: Vec<(RelPath, String)>,
}

impl Plan {
    /// Nothing to do, streamed or not.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.streamed == 0
    }
}

/// A crawl stopped by its caller before it finished.
#[derive(Debug, thiserror::Error)]
#[error("crawl cancelled")]
pub struct Cancelled;

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
type AfterLook = Option<Box<dyn FnMut(&RelPath)>>;

#[cfg(test)]
thread_local! {
    /// Tests: runs after each path `plan_paths` looks at on the disk.
    static AFTER_LOOK: std::cell::RefCell<AfterLook> = const { std::cell::RefCell::new(None) };
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

#[derive(Default)]
struct Diff {
    scanned: u64,
    new_root: Option<Entry>,
    /// On disk, not in the index at that path.
    new: BTreeMap<RelPath, Entry>,
    /// In the index, not on disk at that path (subtrees included).
    gone: BTreeMap<RelPath, Entry>,
    /// Same path, same kind, something changed: (path, index entry, disk entry, change).
    updates: Vec<(RelPath, Entry, Entry, Change)>,
    /// Every multiply-linked file on disk, by inode.
    links: HashMap<u64, Vec<RelPath>>,
    /// A path per multiply-linked inode whose content on the slave is current.
    stable_link: HashMap<u64, RelPath>,
    /// A path per multiply-linked inode whose only sign of change is its ctime (a link count
    /// change moves it): its op hashes the file against the slave's copy and resends only
    /// when the content differs, so its slave copy is current once applied.
    hash_checked: HashMap<u64, RelPath>,
    /// Multiply-linked files compared and found unchanged: (path, index entry, disk entry).
    unchanged_links: Vec<(RelPath, Entry, Entry)>,
    /// The first stat seen of each multiply-linked file (size, mtime, ctime).
    link_stats: HashMap<u64, (u64, i64, u32, i64, u32)>,
    /// Multiply-linked files whose names were seen with different stats: changed while this
    /// diff looked at them (see `plan`).
    torn: HashSet<u64>,
    errors: Vec<(RelPath, String)>,
    /// Every directory on disk (root included), for restoring parents' attributes.
    dirs: HashMap<RelPath, Entry>,
    /// Directories whose index rows belong to a directory that is no longer at that path.
    replaced: HashSet<RelPath>,
    /// Journal mode: only these paths were looked at. Index rows beneath a renamed directory
    /// that are not among them moved along with it intact (any change would be journaled).
    targeted: Option<BTreeSet<RelPath>>,
    /// Journal mode: directories listed whole (every entry beneath them was looked at)…
    listed: BTreeSet<RelPath>,
    /// …but for these beneath them, gone or replaced before they could be listed.
    unlisted: BTreeSet<RelPath>,
    /// Journal mode: the only new names that may be renames (matched to a gone entry by inode).
    rename_targets: Option<BTreeSet<RelPath>>,
    /// Journal mode: files a `DATA` record says were written. Their content changed whatever
    /// the stat says: a rewrite within one tick of the filesystem's clock, of the same size,
    /// leaves size, mtime and ctime as they were when the previous version was shipped.
    written: BTreeSet<RelPath>,
    /// Journal mode: entries a `META` record says changed: their attributes are sent again
    /// whatever the stat says.
    attributed: BTreeSet<RelPath>,
}

#[derive(Default)]
struct Builder {
    stashes: Vec<(RelPath, u64)>,
    /// (path, order within a path, op)
    creates: Vec<(RelPath, u8, PlannedOp)>,
    links: Vec<(RelPath, PlannedOp)>,
    deletes: Vec<(RelPath, PlannedOp)>,
    dir_attrs: Vec<(RelPath, PlannedOp)>,
    /// Paths that an op of this plan creates (a delete at the same path would undo it).
    created: HashSet<RelPath>,
    /// Created paths whose op also removes whatever tree was there (a rename onto it, a
    /// non-directory): deletes beneath them are moot. `Mkdir` over a directory keeps its
    /// contents, so stale children there are deleted one by one.
    replacing: HashSet<RelPath>,
    /// Multiply-linked files whose content this plan sends (a new inode on the slave): every
    /// other name of theirs must be linked to it, even one that is otherwise unchanged.
    sent: HashSet<u64>,
    stats: PlanStats,
}

impl Builder {
    fn upsert(p: &RelPath, e: &Entry) -> Vec<Mutation> {
        vec![Mutation::Upsert(p.clone(), e.clone())]
    }

    fn poison(p: &RelPath) -> Vec<Mutation> {
        vec![Mutation::Poison(p.clone())]
    }

    /// Marks a directory's row stale until an op later in the plan sets its attributes.
    fn stale(p: &RelPath) -> PlannedOp {
        PlannedOp {
            op: PlanOp::IndexOnly,
            ok: vec![Mutation::Stale(p.clone())],
            fail: vec![],
        }
    }

    /// A new directory, with its attributes set again at the end.
    fn mkdir(&mut self, path: &RelPath, e: &Entry) {
        let op = Op::Mkdir {
            path: path.clone(),
            meta: e.meta(),
        };
        self.creates.push((
            path.clone(),
            0,
            PlannedOp::new(op, vec![], Self::poison(path)),
        ));
        self.set_attr(path, e);
    }

    fn set_attr(&mut self, path: &RelPath, e: &Entry) {
        let op = PlannedOp::new(
            Op::SetAttr {
                path: path.clone(),
                meta: e.meta(),
            },
            Self::upsert(path, e),
            Self::poison(path),
        );
        if e.kind == Kind::Dir {
            self.dir_attrs.push((path.clone(), op));
        } else {
            self.creates.push((path.clone(), 2, op));
        }
    }

    /// The op that (re)creates a non-directory entry with its content. `old` is what the slave
    /// holds at `path` when it is the same kind of entry.
    fn content(
        &mut self,
        path: &RelPath,
        e: &Entry,
        old: Option<&Entry>,
        leader: Option<&RelPath>,
    ) {
        let ok = Self::upsert(path, e);
        let fail = Self::poison(path);
        let op = match e.kind {
            Kind::File => {
                if let Some(target) = leader.filter(|l| *l != path) {
                    let op = Op::Link {
                        path: path.clone(),
                        target: target.clone(),
                    };
                    self.links
                        .push((path.clone(), PlannedOp::new(op, vec![], fail.clone())));
                    // A link carries no attributes: set the shared inode's, which the index
                    // then records for this name.
                    let attrs = Op::SetAttr {
                        path: path.clone(),
                        meta: e.meta(),
                    };
                    self.links
                        .push((path.clone(), PlannedOp::new(attrs, ok, fail)));
                    return;
                }
                self.stats.files += 1;
                self.stats.bytes += e.size;
                if e.nlink > 1 {
                    self.sent.insert(e.ino);
                }
                let known = old.filter(|o| o.size == e.size && o.hash.is_some());
                let grew = old.filter(|o| {
                    o.kind == Kind::File
                        && o.size >= APPEND_MIN
                        && o.size < e.size
                        && o.hash.is_some()
                });
                PlannedOp {
                    op: PlanOp::File {
                        path: path.clone(),
                        entry: e.clone(),
                        known_hash: known.or(grew).and_then(|o| o.hash),
                        slave_meta: known.map(Entry::meta),
                        grew_from: grew.map(|o| o.size),
                    },
                    ok,
                    fail,
                }
            }
            Kind::Symlink => PlannedOp::new(
                Op::Symlink {
                    path: path.clone(),
                    target: e.target.clone().unwrap_or_default(),
                    meta: e.meta(),
                },
                ok,
                fail,
            ),
            Kind::Fifo | Kind::Char | Kind::Block => PlannedOp::new(
                Op::Special {
                    path: path.clone(),
                    kind: e.kind.special().unwrap(),
                    rdev: e.rdev,
                    meta: e.meta(),
                },
                ok,
                fail,
            ),
            Kind::Dir | Kind::Unknown => unreachable!("content() of a directory"),
        };
        self.creates.push((path.clone(), 1, op));
    }

    fn index_only(&mut self, path: &RelPath, e: &Entry) {
        self.creates.push((
            path.clone(),
            3,
            PlannedOp {
                op: PlanOp::IndexOnly,
                ok: Self::upsert(path, e),
                fail: vec![],
            },
        ));
    }

    /// Ships what changed between `old` and `e` at `path` (which already holds `old`).
    fn update(
        &mut self,
        path: &RelPath,
        old: &Entry,
        e: &Entry,
        c: Change,
        leader: Option<&RelPath>,
    ) {
        // Content is unchanged by a metadata change: the slave's content hash still holds.
        let kept = Entry {
            hash: old.hash,
            ..e.clone()
        };
        match c {
            Change::None => {}
            Change::IndexOnly => self.index_only(path, &kept),
            Change::Meta => {
                self.stats.changed += 1;
                self.set_attr(path, &kept)
            }
            Change::Data => {
                self.stats.changed += 1;
                self.content(path, e, Some(old), leader)
            }
        }
    }
}

impl Diff {
    /// Classifies an entry that is both on disk (`e`) and in the index (`old`) at `path`.
    fn compare(&mut self, index: &Index, path: RelPath, old: Entry, e: Entry) -> Result<()> {
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
    fn join_names_stated_before_their_link(&mut self) {
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
    fn saw(&mut self, e: &Entry) {
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
    fn mend_torn(&mut self) {
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

    fn under_replaced(&self, dir: &RelPath) -> bool {
        !self.replaced.is_empty() && dir.self_and_ancestors().any(|x| self.replaced.contains(&x))
    }

    fn leader(&self, e: &Entry) -> Option<&RelPath> {
        if e.kind != Kind::File || e.nlink < 2 {
            return None;
        }
        self.stable_link
            .get(&e.ino)
            .or_else(|| self.hash_checked.get(&e.ino))
            .or_else(|| self.links.get(&e.ino).and_then(|v| v.iter().min()))
    }

    /// `stat_dir` reads a directory this diff did not look at (targeted diffs).
    fn plan(mut self, slot: &mut u64, stat_dir: &dyn Fn(&RelPath) -> Option<Entry>) -> Plan {
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
        let new = std::mem::take(&mut self.new);
        for (path, e) in &new {
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

        // Deletes, at the location the entry has once renames are done.
        let moved_to: HashMap<&RelPath, &RelPath> =
            dir_origin.iter().map(|(n, o)| (o, n)).collect();
        // Where Deletes were emitted (post-rename locations): what lies beneath goes with
        // them. An old path's ancestor is no guide: a directory moved out of a deleted one
        // by a rename of this plan survives it. (Parents come first in the map's order, and
        // translation keeps the order beneath a moved directory, so the check below sees
        // every ancestor's outcome.)
        let mut emitted: HashSet<RelPath> = HashSet::new();
        for p in self.gone.keys() {
            let (target, moved_root) = translate(&moved_to, p);
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

        // Replacing, creating, renaming or deleting an entry changes its parent's mtime on the
        // slave even where the master's parent is unchanged (a file rewritten in place is a
        // rename on the slave; a rename goes through the stash): set every touched directory's
        // attributes again, at the end, from the disk.
        let mut touched: HashSet<RelPath> = HashSet::new();
        for (from, _) in &b.stashes {
            touched.extend(translate(&moved_to, from).0.parent());
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

        // Directories whose attributes the ops change on the slave before the end of the plan
        // sets them again: their rows must not vouch for them meanwhile (a connection lost in
        // between). Rows that do not exist yet (renamed there by this plan) are left alone.
        let mut ops: Vec<PlannedOp> = b
            .dir_attrs
            .iter()
            .filter(|(_, op)| matches!(op.op, PlanOp::Op(Op::SetAttr { .. })))
            .map(|(p, _)| Builder::stale(p))
            .collect();
        b.stashes.sort_by(|x, y| y.0.cmp(&x.0));
        for (from, s) in b.stashes {
            let ok = vec![Mutation::Move(from.clone(), index::stash_path(s))];
            let fail = Builder::poison(&from);
            ops.push(PlannedOp::new(Op::Stash { from, slot: s }, ok, fail));
        }
        b.creates.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        ops.extend(b.creates.into_iter().map(|c| c.2));
        b.links.sort_by(|x, y| x.0.cmp(&y.0));
        ops.extend(b.links.into_iter().map(|c| c.1));
        b.deletes.sort_by(|x, y| x.0.cmp(&y.0));
        ops.extend(b.deletes.into_iter().map(|c| c.1));
        b.dir_attrs.sort_by(|x, y| y.0.cmp(&x.0));
        ops.extend(b.dir_attrs.into_iter().map(|c| c.1));
        b.stats.scanned = self.scanned;
        Plan {
            ops,
            stats: b.stats,
            needs_crawl: false,
            incomplete: false,
            streamed: 0,
            errors: self.errors,
        }
    }
}

/// Where the old path `p` is once the renames of the plan are done, and the new path of the
/// moved directory it went along with (if any).
fn translate(moved_to: &HashMap<&RelPath, &RelPath>, p: &RelPath) -> (RelPath, Option<RelPath>) {
    let mut a = p.parent();
    while let Some(anc) = a {
        if let Some(n) = moved_to.get(&anc) {
            return (p.rebase(&anc, n), Some((*n).clone()));
        }
        a = anc.parent();
    }
    (p.clone(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    /// A regular file with two names, its content as of `mtime`.
    fn linked(mtime: i64) -> Entry {
        Entry {
            kind: Kind::File,
            ino: 7,
            size: 10,
            mtime_sec: mtime,
            mtime_nsec: 0,
            ctime_sec: mtime,
            ctime_nsec: 0,
            mode: 0o644,
            uid: 0,
            gid: 0,
            nlink: 2,
            rdev: 0,
            birth: 1,
            target: None,
            hash: Some([1; 32]),
        }
    }

    /// Index rows for "a" and "b", then the disk as the diff sees it; the plan's ops.
    fn plan_for(rows: [Entry; 2], disk: [Entry; 2]) -> Vec<PlanOp> {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let mut d = Diff::default();
        for (name, (row, e)) in ["a", "b"].into_iter().zip(rows.into_iter().zip(disk)) {
            d.links.entry(e.ino).or_default().push(p(name));
            d.saw(&e);
            d.compare(&index, p(name), row, e).unwrap();
        }
        ops_of(d)
    }

    /// An index (in `tmp`) holding `paths` ("" is the root) as they are on disk beneath `root`.
    fn indexed_as_on_disk(
        tmp: &tempfile::TempDir,
        root: &std::path::Path,
        paths: &[&str],
    ) -> Index {
        let index = Index::open(&tmp.path().join("index.db")).unwrap();
        let fd = fsutil::open_root(root).unwrap();
        let rows: Vec<Mutation> = paths
            .iter()
            .map(|s| {
                let q = if s.is_empty() { RelPath::root() } else { p(s) };
                let e = walk::lstat_beneath(&fd, &q, View::default())
                    .unwrap()
                    .unwrap();
                Mutation::Upsert(q, e)
            })
            .collect();
        index.apply(&rows).unwrap();
        index
    }

    /// The paths a plan sends content to, and its links (path, target), in plan order.
    fn sent_and_linked<'a>(
        ops: impl Iterator<Item = &'a PlanOp>,
    ) -> (Vec<&'a RelPath>, Vec<(&'a RelPath, &'a RelPath)>) {
        let (mut sent, mut linked) = (Vec::new(), Vec::new());
        for o in ops {
            match o {
                PlanOp::File { path, .. } => sent.push(path),
                PlanOp::Op(Op::Link { path, target }) => linked.push((path, target)),
                _ => {}
            }
        }
        (sent, linked)
    }

    /// The plan's ops, less the index-only one that marks the root stale: these diffs did not
    /// read it, so its attributes cannot be set again after the ops in it.
    fn ops_of(d: Diff) -> Vec<PlanOp> {
        d.plan(&mut 0, &|_| None)
            .ops
            .into_iter()
            .map(|o| o.op)
            .filter(|o| !matches!(o, PlanOp::IndexOnly))
            .collect()
    }

    #[test]
    fn a_journaled_write_is_checked_even_when_the_stat_did_not_change() {
        // Rewritten within one tick of the filesystem clock: same size, mtime and ctime as the
        // version shipped. The DATA record says the content changed: hash-check it.
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let e = Entry {
            nlink: 1,
            ..linked(1)
        };
        let mut d = Diff {
            written: BTreeSet::from([p("a")]),
            ..Diff::default()
        };
        d.compare(&index, p("a"), e.clone(), e.clone()).unwrap();
        let ops = ops_of(d);
        assert!(
            matches!(&ops[..], [PlanOp::File { path, known_hash: Some(h), .. }] if *path == p("a") && *h == [1; 32]),
            "{ops:?}"
        );
        // Without the record, nothing changed.
        let mut d = Diff::default();
        d.compare(&index, p("a"), e.clone(), e).unwrap();
        assert!(d.plan(&mut 0, &|_| None).ops.is_empty());
    }

    #[test]
    fn a_name_with_current_content_leads_the_others() {
        // "b" was rewritten to the same state as "a" (say its row was poisoned): link it.
        let ops = plan_for([linked(1), linked(0)], [linked(1), linked(1)]);
        assert!(
            matches!(&ops[..], [PlanOp::Op(Op::Link { path, target }), PlanOp::Op(Op::SetAttr { .. })]
                if *path == p("b") && *target == p("a")),
            "{ops:?}"
        );
    }

    #[test]
    fn a_hard_link_moved_along_with_its_directory_joins_the_name_whose_content_is_sent() {
        // Harness seed 98025: "a" needs its content sent (its row is stale, say poisoned) and
        // is the group's leader; its other name moved along with a renamed directory (d → F),
        // unchanged. The slave's F/n must become a link to the new "a", not stay apart.
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let dir_entry = Entry {
            kind: Kind::Dir,
            ino: 9,
            nlink: 2,
            hash: None,
            ..linked(1)
        };
        let mut d = Diff::default();
        for (name, e) in [("a", linked(1)), ("b/n", linked(1))] {
            d.links.entry(e.ino).or_default().push(p(name));
            d.saw(&e);
        }
        d.compare(&index, p("a"), linked(0), linked(1)).unwrap();
        d.gone.insert(p("_d"), dir_entry.clone());
        d.gone.insert(p("_d/n"), linked(1));
        d.new.insert(p("b"), dir_entry.clone());
        d.new.insert(p("b/n"), linked(1));
        d.dirs.insert(p("b"), dir_entry);
        let ops = ops_of(d);
        let (sent, linked_to) = sent_and_linked(ops.iter());
        assert_eq!(sent, vec![&p("a")], "{ops:?}");
        assert_eq!(linked_to, vec![(&p("b/n"), &p("a"))], "{ops:?}");
    }

    #[test]
    fn a_directory_renamed_back_while_a_window_is_planned_is_not_made_new() {
        // Journal seed 56: "N" renamed to "L" (journaled), then back to "N" while the window
        // was planned, between the looks at "L/a" and at "N". The plan made "L" new and
        // left "N" alone; the next window deleted "L", and what changed in the directory was
        // never compared again.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("N")).unwrap();
        std::fs::write(root.join("N/a"), b"old").unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "N", "N/a"]);
        std::fs::rename(root.join("N"), root.join("L")).unwrap();
        std::fs::write(root.join("L/a"), b"changed in the window").unwrap();
        let r = root.clone();
        AFTER_LOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |q: &RelPath| {
                if *q == p("L/a") {
                    std::fs::rename(r.join("L"), r.join("N")).unwrap();
                }
            }))
        });
        let window = Window {
            dirty: BTreeSet::from([RelPath::root(), p("L"), p("L/a"), p("N")]),
            touched: BTreeSet::from([p("L"), p("L/a")]),
            rename_targets: BTreeSet::from([p("L")]),
            renamed_from: std::collections::BTreeMap::from([(p("L"), p("N"))]),
            written: BTreeSet::from([p("L/a")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        AFTER_LOOK.with(|h| *h.borrow_mut() = None);
        assert!(plan.incomplete, "{:?}", plan.ops);
    }

    #[test]
    fn a_change_through_a_link_made_and_replaced_in_the_window_is_crawled_for() {
        // Journal seed 1200413: "N" was made a link of "L", written through, unlinked and
        // made a directory, all in one window. No record names "L", the index knows nothing
        // at "N", and the name no longer leads to the inode: only a crawl finds "L" changed.
        use crate::journal::{RecOp, Record};
        let rec = |op, s: &str| Record::new(op, p(s));
        for again_as_dir in [true, false] {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path().join("brick");
            std::fs::create_dir_all(&root).unwrap();
            std::fs::write(root.join("L"), b"old").unwrap();
            let index = indexed_as_on_disk(&tmp, &root, &["", "L"]);
            std::fs::hard_link(root.join("L"), root.join("N")).unwrap();
            std::fs::write(root.join("N"), b"new content").unwrap();
            std::fs::remove_file(root.join("N")).unwrap();
            let mut recs = vec![
                rec(RecOp::Link, "N"),
                rec(RecOp::Data, "N"),
                rec(RecOp::Unlink, "N"),
            ];
            if again_as_dir {
                std::fs::create_dir_all(root.join("N/w")).unwrap();
                recs.extend([rec(RecOp::Mkdir, "N"), rec(RecOp::Mkdir, "N/w")]);
            } else {
                std::fs::write(root.join("N"), b"another file").unwrap();
                recs.extend([rec(RecOp::Create, "N"), rec(RecOp::Data, "N")]);
            }
            let window = crate::ship::changes::changes(&recs);
            let excludes = Excludes::new(&[]).unwrap();
            let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
            assert!(plan.needs_crawl, "as dir {again_as_dir}: {:?}", plan.ops);
        }
    }

    #[test]
    fn a_change_through_a_link_whose_row_was_poisoned_is_crawled_for() {
        // Journal seed 2001322: "N", a second name of "L", failed to ship (its attributes
        // could not be read: another entry had the name by then), so its row was poisoned and
        // no longer led to the inode. It was then renamed to "M", rewritten through "M" and
        // removed: the rewrite reached "L", which no record names and no row leads to.
        use crate::journal::{RecOp, Record};
        let rec = |op, s: &str| Record::new(op, p(s));
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("L"), b"old").unwrap();
        std::fs::hard_link(root.join("L"), root.join("N")).unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "L"]);
        index.apply(&[Mutation::Poison(p("N"))]).unwrap();
        std::fs::rename(root.join("N"), root.join("M")).unwrap();
        std::fs::write(root.join("M"), b"new").unwrap();
        std::fs::remove_file(root.join("M")).unwrap();
        let recs = vec![
            Record {
                path2: Some(p("M")),
                ..rec(RecOp::Rename, "N")
            },
            rec(RecOp::Data, "M"),
            rec(RecOp::Meta, "M"),
            rec(RecOp::Unlink, "M"),
        ];
        let window = crate::ship::changes::changes(&recs);
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        assert!(plan.needs_crawl, "{:?}", plan.ops);
    }

    #[test]
    fn a_link_changed_through_and_replaced_by_a_rename_is_crawled_for() {
        // Journal seed 2401207: "N" was made a link of "L", chmodded through, then another
        // file renamed over it, all in one window. No record names "L", the index knows
        // nothing at "N", and "N" now leads to another inode: only a crawl finds "L" changed.
        use crate::journal::{RecOp, Record};
        use std::os::unix::fs::PermissionsExt;
        let rec = |op, s: &str| Record::new(op, p(s));
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("L"), b"linked").unwrap();
        std::fs::write(root.join("O"), b"other").unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "L", "O"]);
        std::fs::hard_link(root.join("L"), root.join("N")).unwrap();
        std::fs::set_permissions(root.join("N"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(root.join("O"), root.join("N")).unwrap();
        let recs = vec![
            rec(RecOp::Link, "N"),
            rec(RecOp::Meta, "N"),
            Record {
                path2: Some(p("N")),
                ..rec(RecOp::Rename, "O")
            },
        ];
        let window = crate::ship::changes::changes(&recs);
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        assert!(plan.needs_crawl, "{:?}", plan.ops);
    }

    #[test]
    fn a_link_dropped_with_a_replaced_directory_leads_to_its_other_name() {
        // Journal seed 2101659: "a/l", a second name of "f", was truncated, then "a" was
        // removed and made again, all on the disk before the window that planned "a" (its
        // only record: a directory removed inside it). The plan dropped "a/l" with the old
        // "a"; the truncate's record came in the next window, when no row led to "f" any more.
        use crate::journal::{RecOp, Record};
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("a/d")).unwrap();
        std::fs::write(root.join("f"), vec![7u8; 1684]).unwrap();
        std::fs::hard_link(root.join("f"), root.join("a/l")).unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "a", "a/d", "a/l", "f"]);
        std::fs::remove_dir(root.join("a/d")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(root.join("a/l"))
            .unwrap()
            .set_len(49)
            .unwrap();
        std::fs::create_dir(root.join("n")).unwrap();
        std::fs::remove_file(root.join("a/l")).unwrap();
        std::fs::remove_dir(root.join("a")).unwrap();
        std::fs::rename(root.join("n"), root.join("a")).unwrap();
        let window = crate::ship::changes::changes(&[Record::new(RecOp::Rmdir, p("a/d"))]);
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        let sends_f = plan
            .ops
            .iter()
            .any(|o| matches!(&o.op, PlanOp::File { path, .. } if *path == p("f")));
        assert!(sends_f || plan.needs_crawl, "{:?}", plan.ops);
    }

    #[test]
    fn a_directory_gone_before_it_was_listed_deletes_nothing_beneath_it() {
        // Journal seed 1401242: "H" renamed to "E" (journaled); "E/w", which the index holds
        // at "H/w", was listed whole as a new name just after "E" moved on to "Z" (not
        // journaled yet). The listing found nothing, and the plan deleted "E/w/w" as gone.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("H/w/w")).unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "H", "H/w", "H/w/w"]);
        std::fs::rename(root.join("H"), root.join("E")).unwrap();
        let r = root.clone();
        AFTER_LOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |q: &RelPath| {
                if *q == p("E/w") {
                    std::fs::rename(r.join("E"), r.join("Z")).unwrap();
                }
            }))
        });
        let window = Window {
            dirty: BTreeSet::from([RelPath::root(), p("E"), p("E/w"), p("H")]),
            touched: BTreeSet::from([p("E/w")]),
            rename_targets: BTreeSet::from([p("E")]),
            renamed_from: std::collections::BTreeMap::from([(p("E"), p("H"))]),
            removed: BTreeSet::from([p("H")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        AFTER_LOOK.with(|h| *h.borrow_mut() = None);
        assert!(
            !plan.ops.iter().any(
                |o| matches!(&o.op, PlanOp::Op(Op::Delete { path }) if path.starts_with(&p("E/w")))
            ),
            "{:?}",
            plan.ops
        );
        assert!(plan.incomplete, "{:?}", plan.ops);
    }

    #[test]
    fn a_directory_that_took_a_parents_name_after_the_look_does_not_take_its_row() {
        // Gaps seed 1400877: "X" renamed away (not journaled yet) and "D/h" renamed to "X",
        // both after the window's look at "X" found it gone. An op of the plan inside the
        // slave's "X" made the plan set X's attributes from a stat taken then: the row of X
        // took the new directory's identity, and the old one stayed on the slave.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("X/c")).unwrap();
        std::fs::write(root.join("X/b"), b"b").unwrap();
        std::fs::create_dir_all(root.join("D/h")).unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "X", "X/b", "X/c", "D", "D/h"]);
        let old = index.get(&p("X")).unwrap().unwrap();
        std::fs::remove_dir(root.join("X/c")).unwrap();
        std::fs::rename(root.join("X"), root.join("C")).unwrap();
        let r = root.clone();
        AFTER_LOOK.with(|h| {
            *h.borrow_mut() = Some(Box::new(move |q: &RelPath| {
                if *q == p("X") && !r.join("X").exists() {
                    std::fs::rename(r.join("D/h"), r.join("X")).unwrap();
                }
            }))
        });
        let window = Window {
            dirty: BTreeSet::from([RelPath::root(), p("X"), p("X/c")]),
            touched: BTreeSet::from([p("X")]),
            removed: BTreeSet::from([p("X/c")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        AFTER_LOOK.with(|h| *h.borrow_mut() = None);
        for o in &plan.ops {
            index.apply(&o.ok).unwrap();
        }
        let row = index.get(&p("X")).unwrap().expect("X's row");
        assert_eq!(row.ino, old.ino, "{:?}", plan.ops);
    }

    #[test]
    fn a_meta_record_sends_the_attributes_again_whatever_the_stat_says() {
        // Review of issue 16: an extended attribute changed twice within one tick of the
        // ctime clock, read between the two, leaves a stat equal to the row's: the META
        // record alone says the attributes must go again.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("d")).unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "d"]);
        let window = Window {
            dirty: BTreeSet::from([RelPath::root(), p("d")]),
            touched: BTreeSet::from([p("d")]),
            attributed: BTreeSet::from([p("d")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        assert!(
            plan.ops
                .iter()
                .any(|o| matches!(&o.op, PlanOp::Op(Op::SetAttr { path, .. }) if *path == p("d"))),
            "{:?}",
            plan.ops
        );
    }

    #[test]
    fn a_hard_link_whose_row_is_behind_does_not_lead_a_new_name() {
        // Journal seed 300054: "p/x" was written through a name made and removed within the
        // window, so its row is behind the disk; the window found the new name "d/c/y" by
        // listing the new directory "d". Linking "d/c/y" to the slave's "p/x" would keep the
        // old content under both names (and the new row would vouch for the new content).
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("p")).unwrap();
        std::fs::write(root.join("p/x"), b"old").unwrap();
        let index = indexed_as_on_disk(&tmp, &root, &["", "p", "p/x"]);
        std::fs::create_dir_all(root.join("d/c")).unwrap();
        std::fs::hard_link(root.join("p/x"), root.join("d/c/y")).unwrap();
        std::fs::write(root.join("p/x"), b"new content").unwrap();
        let window = Window {
            dirty: BTreeSet::from([RelPath::root(), p("d")]),
            touched: BTreeSet::from([p("d")]),
            made_dirs: BTreeSet::from([p("d")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        let ops: Vec<&PlanOp> = plan.ops.iter().map(|o| &o.op).collect();
        let (sent, linked_to) = sent_and_linked(ops.iter().copied());
        assert_eq!(sent, vec![&p("d/c/y")], "{ops:?}");
        assert_eq!(linked_to, vec![(&p("p/x"), &p("d/c/y"))], "{ops:?}");
    }

    #[test]
    fn a_directory_that_arrived_without_a_journaled_rename_is_listed_whole() {
        // Journal seed 370072: "sub" moved into a directory made before the writer watched it
        // (a MOVED_FROM alone: "sub" removed), then on to "p" by a journaled rename from that
        // new place. Something was removed inside it on the way, with no record. "p" is
        // matched to the index's "sub" by inode, but it must be compared in full.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("sub/inner")).unwrap();
        std::fs::write(root.join("sub/inner/gone"), b"x").unwrap();
        std::fs::write(root.join("sub/kept"), b"y").unwrap();
        indexed_as_on_disk(
            &tmp,
            &root,
            &["", "sub", "sub/inner", "sub/inner/gone", "sub/kept"],
        );
        std::fs::remove_file(root.join("sub/inner/gone")).unwrap();
        std::fs::rename(root.join("sub"), root.join("p")).unwrap();
        let recs = |journaled_from: &str| Window {
            dirty: BTreeSet::from([RelPath::root(), p("sub"), p("p"), p("t")]),
            rename_targets: BTreeSet::from([p("p")]),
            renamed_from: BTreeMap::from([(p("p"), p(journaled_from))]),
            removed: BTreeSet::from([p("sub"), p("t")]),
            touched: BTreeSet::from([p("p")]),
            made_dirs: BTreeSet::from([p("p")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let deletes = |w: Window| -> Vec<RelPath> {
            let plan = plan_paths(
                &root,
                &Index::open(&tmp.path().join("index.db")).unwrap(),
                &excludes,
                w,
                &mut 0,
            )
            .unwrap();
            plan.ops
                .iter()
                .filter_map(|o| match &o.op {
                    PlanOp::Op(Op::Delete { path }) => Some(path.clone()),
                    _ => None,
                })
                .collect()
        };
        // Renamed from "sub" by a journaled rename: the records would say what went, and
        // rows beneath that none of them names moved along intact (not listed).
        assert_eq!(deletes(recs("sub")), Vec::<RelPath>::new());
        // Arrived from "t", a name "sub" never had in the records: listed, "gone" deleted.
        let got = deletes(recs("t"));
        assert_eq!(got, vec![p("p/inner/gone")]);
    }

    #[test]
    fn a_renamed_directory_not_proven_the_same_is_listed_whole() {
        // Seed 390034 of the gaps mode: the index holds "q" with the inode number the renamed
        // "p" has, but another birth time (another directory, or one the index knows less
        // of): the diff makes "p" a new directory, so everything in it must be sent.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("brick");
        std::fs::create_dir_all(root.join("q")).unwrap();
        std::fs::write(root.join("q/f"), b"content").unwrap();
        let index = Index::open(&tmp.path().join("index.db")).unwrap();
        let fd = fsutil::open_root(&root).unwrap();
        let mut q = walk::lstat_beneath(&fd, &p("q"), View::default())
            .unwrap()
            .unwrap();
        q.birth += 1;
        index
            .apply(&[
                Mutation::Upsert(
                    RelPath::root(),
                    walk::lstat_beneath(&fd, &RelPath::root(), View::default())
                        .unwrap()
                        .unwrap(),
                ),
                Mutation::Upsert(p("q"), q),
            ])
            .unwrap();
        std::fs::rename(root.join("q"), root.join("p")).unwrap();
        let window = Window {
            dirty: BTreeSet::from([RelPath::root(), p("q"), p("p")]),
            rename_targets: BTreeSet::from([p("p")]),
            renamed_from: BTreeMap::from([(p("p"), p("q"))]),
            removed: BTreeSet::from([p("q")]),
            ..Window::default()
        };
        let excludes = Excludes::new(&[]).unwrap();
        let plan = plan_paths(&root, &index, &excludes, window, &mut 0).unwrap();
        let ops: Vec<&PlanOp> = plan.ops.iter().map(|o| &o.op).collect();
        let (sent, _) = sent_and_linked(ops.iter().copied());
        assert_eq!(sent, vec![&p("p/f")], "{ops:?}");
    }

    #[test]
    fn a_file_moved_along_is_not_given_the_attributes_of_a_directory_that_took_its_name() {
        // Seed 900474: "n" renamed to "c"; the file "c/f" moved along with it; a stale row
        // "n/f/c" made a Delete beneath it, so "c/f" was a touched parent; by plan time a new
        // directory held "c/f" on the master, and its attributes landed on the slave's file.
        let dir = |ino| Entry {
            kind: Kind::Dir,
            ino,
            mode: 0o755,
            nlink: 2,
            hash: None,
            ..linked(5)
        };
        let file = Entry {
            ino: 20,
            nlink: 1,
            ..linked(5)
        };
        let mut d = Diff::default();
        d.gone.insert(p("n"), dir(10));
        d.gone.insert(p("n/f"), file.clone());
        d.gone.insert(p("n/f/c"), dir(30));
        d.new.insert(p("c"), dir(10));
        d.new.insert(p("c/f"), file);
        d.dirs.insert(p("c"), dir(10));
        d.rename_targets = Some(BTreeSet::from([p("c")]));
        d.targeted = Some(BTreeSet::from([p("n"), p("c"), p("c/f"), p("c/f/c")]));
        let plan = d.plan(&mut 0, &|q| (*q == p("c/f")).then(|| dir(99)));
        assert!(
            plan.ops
                .iter()
                .any(|o| matches!(&o.op, PlanOp::Op(Op::Unstash { to, .. }) if *to == p("c"))),
            "{:?}",
            plan.ops
        );
        assert!(
            !plan.ops.iter().any(
                |o| matches!(&o.op, PlanOp::Op(Op::SetAttr { path, .. }) if *path == p("c/f"))
            ),
            "{:?}",
            plan.ops
        );
        assert!(!plan
            .ops
            .iter()
            .flat_map(|o| &o.ok)
            .any(|m| matches!(m, Mutation::Upsert(q, e) if *q == p("c/f") && e.kind == Kind::Dir)));
    }

    #[test]
    fn a_file_replacing_an_indexed_directory_takes_its_rows_along() {
        // Seed 900474: a file replaced a directory; the deletes beneath it are left out (the
        // slave removes the tree), and their rows stayed in the index, beneath a file.
        let dir = Entry {
            kind: Kind::Dir,
            ino: 10,
            mode: 0o755,
            nlink: 2,
            hash: None,
            ..linked(5)
        };
        let mut d = Diff::default();
        d.gone.insert(p("x"), dir.clone());
        d.gone.insert(
            p("x/c"),
            Entry {
                ino: 11,
                ..dir.clone()
            },
        );
        d.new.insert(
            p("x"),
            Entry {
                ino: 12,
                nlink: 1,
                ..linked(6)
            },
        );
        let plan = d.plan(&mut 0, &|_| None);
        let muts: Vec<&Mutation> = plan.ops.iter().flat_map(|o| &o.ok).collect();
        let removed = muts
            .iter()
            .position(|m| matches!(m, Mutation::Remove(q) if *q == p("x")));
        let upserted = muts.iter().position(
            |m| matches!(m, Mutation::Upsert(q, e) if *q == p("x") && e.kind == Kind::File),
        );
        assert!(
            removed.is_some() && upserted.is_some() && removed < upserted,
            "{muts:?}"
        );
        // The rows go only with the slave's tree (takeover seed 1200153): a delete that
        // poisons them when it fails, not an index-only op that cannot fail.
        let forget = plan
            .ops
            .iter()
            .find(|o| {
                o.ok.iter()
                    .any(|m| matches!(m, Mutation::Remove(q) if *q == p("x")))
            })
            .unwrap();
        assert!(
            matches!(&forget.op, PlanOp::Op(Op::Delete { path }) if *path == p("x"))
                && !forget.fail.is_empty(),
            "{:?}",
            plan.ops
        );
        assert!(
            !plan
                .ops
                .iter()
                .any(|o| matches!(&o.op, PlanOp::Op(Op::Delete { path }) if *path == p("x/c"))),
            "{:?}",
            plan.ops
        );
    }

    #[test]
    fn a_renamed_symlink_is_not_given_the_attributes_of_a_directory_that_took_its_name() {
        // Seed 400097: "e" (a symlink) renamed to "h"; by the time the plan read the renamed
        // entries' directories from the disk, a new directory had taken the name "h" on the
        // master. Setting "h"'s attributes from it recorded that directory in the index for
        // the slave's symlink, and a later rename of the directory moved the symlink.
        let sym = Entry {
            kind: Kind::Symlink,
            size: 1,
            nlink: 1,
            mode: 0o777,
            target: Some(b"t".to_vec()),
            hash: None,
            ..linked(5)
        };
        let mut d = Diff::default();
        d.gone.insert(p("e"), sym.clone());
        d.new.insert(p("h"), sym);
        d.rename_targets = Some(BTreeSet::from([p("h")]));
        let dir = Entry {
            kind: Kind::Dir,
            ino: 99,
            mode: 0o755,
            target: None,
            hash: None,
            ..linked(6)
        };
        let ops: Vec<PlanOp> = d
            .plan(&mut 0, &|q| (*q == p("h")).then(|| dir.clone()))
            .ops
            .into_iter()
            .map(|o| o.op)
            .collect();
        assert!(
            ops.iter()
                .any(|o| matches!(o, PlanOp::Op(Op::Unstash { to, .. }) if *to == p("h"))),
            "{ops:?}"
        );
        assert!(
            !ops.iter()
                .any(|o| matches!(o, PlanOp::Op(Op::SetAttr { path, .. }) if *path == p("h"))),
            "{ops:?}"
        );
    }

    #[test]
    fn a_name_stated_before_its_link_was_made_is_linked_not_sent_apart() {
        // Seed 430148: "b" was stat'ed with one link, then "a" was made a link to it and
        // stat'ed with two; "a" leads, "b" was sent as a file of its own (one link, no leader),
        // and the slave kept two inodes for good.
        let mut d = Diff::default();
        let once = Entry {
            nlink: 1,
            ..linked(1)
        };
        let twice = Entry {
            ctime_nsec: 5,
            ..linked(1)
        };
        for (name, e) in [("b", once), ("a", twice)] {
            d.saw(&e);
            d.new.insert(p(name), e.clone());
            d.links.entry(e.ino).or_default().push(p(name));
        }
        d.join_names_stated_before_their_link();
        let ops = ops_of(d);
        let (sent, linked_to) = sent_and_linked(ops.iter());
        assert_eq!(sent, vec![&p("a")], "{ops:?}");
        assert_eq!(linked_to, vec![(&p("b"), &p("a"))], "{ops:?}");
    }

    #[test]
    fn a_hard_linked_file_that_changed_between_two_stats_is_sent_again() {
        // "a" was looked at before a write through either name, "b" after it: the slave's "a"
        // holds the old content, so linking "b" to it would keep that content on both names.
        let ops = plan_for([linked(1), linked(1)], [linked(1), linked(2)]);
        assert!(
            matches!(&ops[..], [PlanOp::File { path, .. }, PlanOp::Op(Op::Link { path: l, target }), PlanOp::Op(Op::SetAttr { .. })]
                if *path == p("a") && *l == p("b") && *target == p("a")),
            "{ops:?}"
        );
    }
}
