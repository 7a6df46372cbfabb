//! The full crawl: every directory of the brick listed and compared with the index, with the
//! bulk of its ops streamed out while it runs so memory does not grow with the tree.
//!
//! Streaming invariant: an op goes out before the crawl ends only when no op of the final
//! plan (stashes, renames, links, deletes) can touch its path or need what is there:
//! - a new entry whose inode no index row has (so no rename or hard link can involve it)
//!   and whose name the index does not hold (so nothing there is moved or deleted first);
//! - a changed single-link non-directory kept at its path under the same identity;
//!
//! each of them in a directory the slave already holds under the same identity, or that a
//! streamed op creates first (the walker sends a directory's listing before its children's).
//! Their parents' attributes are set again after them, in the same chunk. Everything else,
//! renames in particular, waits for the whole tree: a rename's source may be listed last.

use super::diff::Diff;
use super::entry::{Change, Entry, Kind};
use super::index::Index;
use super::plan::Builder;
use super::walk::{self, Excludes};
use super::{Cancelled, Plan, PlanOp, PlannedOp};
use crate::fsutil;
use crate::protocol::{Op, RelPath};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

/// Number of walker threads: directory reads block on I/O, so more than the core count helps.
const WALK_THREADS: usize = 4;

/// Listings the walkers may get ahead of the comparison by: bounds the memory they hold.
const LISTINGS_AHEAD: usize = 32;

/// Ops per streamed chunk (a few MiB of plan at most; file content is read when shipped).
const CHUNK_OPS: usize = 8192;

/// Receives streamed chunks of a crawl's plan, in order; an error stops the crawl.
pub type Emit<'a> = &'a mut dyn FnMut(Vec<PlannedOp>) -> Result<()>;

/// Crawls `root` against `index`. `slot` numbers stash slots (unique per connection).
///
/// Ops that cannot depend on the rest of the tree go to `emit` in chunks while the crawl runs
/// (see the module's invariant); they must be applied before the returned plan's ops, which
/// hold the rest. The returned stats count both.
///
/// `progress` is told the number of entries scanned so far after each directory; when it
/// answers `false` the crawl stops (the walker with it) and returns [`Cancelled`].
pub fn crawl(
    root: &Path,
    index: &Index,
    excludes: &Excludes,
    slot: &mut u64,
    progress: &dyn Fn(u64) -> bool,
    emit: Emit<'_>,
) -> Result<Plan> {
    let root_fd = fsutil::open_root(root)
        .with_context(|| format!("opening brick {} on the master", root.display()))?;
    let root_entry = walk::root_seen(&root_fd, excludes.view)?;
    let (tx, rx) = std::sync::mpsc::sync_channel(LISTINGS_AHEAD);
    let ex = excludes.clone();
    let walker = std::thread::spawn(move || walk::walk(root_fd, ex, WALK_THREADS, tx));

    let mut d = Diff::default();
    let mut st = Stream {
        b: Builder::default(),
        safe: HashMap::new(),
        index_was_empty: index.is_empty()?,
        emit,
        streamed: 0,
        deferred: Vec::new(),
    };
    let root_path = RelPath::root();
    d.dirs.insert(root_path.clone(), root_entry.clone());
    match index.get(&root_path)? {
        Some(old) if old.kind == Kind::Dir => match old.change_to(&root_entry) {
            Change::None => {}
            c => d
                .updates
                .push((root_path.clone(), old, root_entry.clone(), c)),
        },
        _ => d.new_root = Some(root_entry.clone()),
    }
    // The slave's root always exists.
    st.safe.insert(root_path, root_entry);
    while let Ok(listing) = rx.recv() {
        let dir = listing.dir;
        let parent = st.safe.remove(&dir);
        let entries = match listing.entries {
            Ok(e) => e,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => {
                d.errors.push((
                    dir.clone(),
                    format!(
                        "reading directory {dir} under {} on the master: {e}",
                        root.display()
                    ),
                ));
                continue;
            }
        };
        d.scanned += entries.len() as u64;
        if !progress(d.scanned) {
            stop(rx, walker);
            return Err(Cancelled.into());
        }
        // Beneath a replaced directory everything on disk is new: the index rows there
        // describe the old directory, which is gone (or moved) as a whole.
        let mut idx: HashMap<Vec<u8>, Entry> = if d.under_replaced(&dir) {
            HashMap::new()
        } else {
            index.children(&dir)?.into_iter().collect()
        };
        let first_streamed = st.b.creates.len();
        for (name, e) in entries {
            let path = dir.join(&name)?;
            if e.kind == Kind::File && e.nlink > 1 {
                d.links.entry(e.ino).or_default().push(path.clone());
                d.saw(&e);
            }
            if e.kind == Kind::Dir {
                d.dirs.insert(path.clone(), e.clone());
            }
            match idx.remove(&name) {
                None if parent.is_some() && st.may_create(index, &e)? => st.create(path, e),
                None => {
                    d.new.insert(path, e);
                }
                Some(old) if parent.is_some() && Stream::may_update(&old, &e) => {
                    st.update(&path, &old, &e)
                }
                Some(old) => {
                    let kept = old.kind == Kind::Dir
                        && e.kind == Kind::Dir
                        && old.ino == e.ino
                        && !e.reused_inode_of(&old);
                    if kept && parent.is_some() {
                        st.safe.insert(path.clone(), e.clone());
                    }
                    d.compare(index, path, old, e)?;
                }
            }
        }
        if let Some(p) = parent {
            st.touched(&dir, &p, first_streamed);
        }
        for (name, old) in idx {
            let path = dir.join(&name)?;
            if excludes.is_excluded(&path) {
                continue;
            }
            if old.kind == Kind::Dir {
                d.gone.extend(index.subtree(&path)?);
            }
            d.gone.insert(path, old);
        }
        if st.pending() >= CHUNK_OPS {
            if let Err(e) = st.flush() {
                stop(rx, walker);
                return Err(e);
            }
        }
    }
    walker
        .join()
        .map_err(|_| anyhow::anyhow!("directory walker panicked"))?
        .with_context(|| format!("walking brick {}", root.display()))?;
    st.flush()?;
    // A full crawl lists every directory: one missing from `dirs` no longer exists.
    let mut plan = d.plan(slot, &|_| None);
    let s = &st.b.stats;
    plan.stats.new += s.new;
    plan.stats.changed += s.changed;
    plan.stats.files += s.files;
    plan.stats.bytes += s.bytes;
    plan.streamed = st.streamed;
    let mut last = Builder::default();
    for (dir, e) in &st.deferred {
        last.set_attr(dir, e);
    }
    last.dir_attrs.sort_by(|x, y| y.0.cmp(&x.0));
    plan.ops.extend(last.dir_attrs.into_iter().map(|d| d.1));
    Ok(plan)
}

/// Stops the walker (at its next directory) and waits for it.
fn stop(rx: Receiver<walk::Listing>, walker: JoinHandle<std::io::Result<()>>) {
    drop(rx);
    let _ = walker.join();
}

/// The ops of a crawl that go out while it runs (see the module's invariant).
struct Stream<'a> {
    /// The chunk being filled (its stats count every chunk).
    b: Builder,
    /// Directories the slave holds under the same identity, or that a streamed op creates,
    /// whose listing has not arrived yet (each is taken out when it does). With their entry.
    safe: HashMap<RelPath, Entry>,
    /// No row in the index: no inode lookups needed.
    index_was_empty: bool,
    emit: Emit<'a>,
    streamed: u64,
    /// Read-only directories whose entries streamed ops changed: set at the end of the plan.
    deferred: Vec<(RelPath, Entry)>,
}

impl Stream<'_> {
    /// Whether a new entry (its name not in the index) can be created ahead of the plan.
    fn may_create(&self, index: &Index, e: &Entry) -> Result<bool> {
        Ok(match e.kind {
            Kind::Unknown => false,
            // A hard link's names are planned together (one carries the content).
            Kind::File if e.nlink > 1 => false,
            // A rename (or a reused inode number) involves an indexed entry with its inode.
            _ => self.index_was_empty || !index.has_ino(e.ino)?,
        })
    }

    fn create(&mut self, path: RelPath, e: Entry) {
        self.b.stats.new += 1;
        if e.kind == Kind::Dir {
            self.b.mkdir(&path, &e);
            self.safe.insert(path, e);
        } else {
            self.b.content(&path, &e, None, None);
        }
    }

    /// Whether an entry found at the indexed path can be updated ahead of the plan: the same
    /// single-link non-directory (a hard-linked file's names are planned together).
    fn may_update(old: &Entry, e: &Entry) -> bool {
        old.kind == e.kind
            && !matches!(e.kind, Kind::Dir | Kind::Unknown)
            && old.ino == e.ino
            && !e.reused_inode_of(old)
            && old.nlink == 1
            && e.nlink == 1
    }

    fn update(&mut self, path: &RelPath, old: &Entry, e: &Entry) {
        match old.change_to(e) {
            Change::None => {}
            c => self.b.update(path, old, e, c, None),
        }
    }

    /// After a listing: an entry created or replaced in `dir` changed its mtime on the slave.
    /// A directory the owner cannot write keeps its attributes for the end of the plan: set
    /// now, they could stop the final plan's ops in it (renames, links, deletes) when the
    /// agent does not run as root.
    fn touched(&mut self, dir: &RelPath, e: &Entry, first: usize) {
        let replaced = self.b.creates[first..]
            .iter()
            .any(|(_, _, op)| !matches!(op.op, PlanOp::IndexOnly | PlanOp::Op(Op::SetAttr { .. })));
        if !replaced {
            return;
        }
        if e.mode & 0o200 == 0 {
            self.deferred.push((dir.clone(), e.clone()));
        } else {
            self.b.set_attr(dir, e);
        }
    }

    fn pending(&self) -> usize {
        self.b.creates.len() + self.b.dir_attrs.len()
    }

    /// Sends the chunk: creations parents first, then directory attributes deepest first.
    fn flush(&mut self) -> Result<()> {
        if self.pending() == 0 {
            return Ok(());
        }
        let mut creates = std::mem::take(&mut self.b.creates);
        let mut dirs = std::mem::take(&mut self.b.dir_attrs);
        debug_assert!(self.b.links.is_empty() && self.b.deletes.is_empty());
        creates.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        dirs.sort_by(|x, y| y.0.cmp(&x.0));
        // A new directory's attributes and those set again after its entries are the same.
        dirs.dedup_by(|x, y| x.0 == y.0);
        // The slave's attributes of these directories change before they are set again at the
        // end of the chunk: until then their rows must not vouch for them (a connection lost in
        // between would leave a row equal to the disk over a directory that is not).
        let ops: Vec<PlannedOp> = dirs
            .iter()
            .map(|(d, _)| Builder::stale(d))
            .collect::<Vec<_>>()
            .into_iter()
            .chain(creates.into_iter().map(|c| c.2))
            .chain(dirs.into_iter().map(|c| c.1))
            .collect();
        self.streamed += ops.len() as u64;
        (self.emit)(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crawl::index::Mutation;

    /// Crawls `root` against `index`; the streamed chunks and the plan.
    fn run(root: &Path, index: &Index) -> (Vec<Vec<PlannedOp>>, Plan) {
        let mut chunks = Vec::new();
        let plan = crawl(
            root,
            index,
            &Excludes::new(&[]).unwrap(),
            &mut 0,
            &|_| true,
            &mut |ops| {
                chunks.push(ops);
                Ok(())
            },
        )
        .unwrap();
        (chunks, plan)
    }

    fn paths(ops: &[PlannedOp]) -> Vec<String> {
        ops.iter()
            .map(|o| match &o.op {
                PlanOp::File { path, .. } => format!("file {path}"),
                PlanOp::Op(op) => format!("{op:?}"),
                PlanOp::IndexOnly => "index".into(),
            })
            .collect()
    }

    #[test]
    fn a_first_crawl_streams_in_bounded_chunks_parents_first() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("brick");
        for d in 0..5 {
            std::fs::create_dir_all(root.join(format!("d{d}/sub"))).unwrap();
            for f in 0..4000 {
                std::fs::write(root.join(format!("d{d}/f{f}")), b"x").unwrap();
            }
        }
        let index = Index::open(&t.path().join("index.db")).unwrap();
        let (chunks, plan) = run(&root, &index);
        assert!(chunks.len() >= 2, "{} chunks", chunks.len());
        for c in &chunks {
            // A chunk is cut after the listing that fills it.
            assert!(c.len() <= CHUNK_OPS + 4020, "a chunk of {} ops", c.len());
        }
        assert_eq!(plan.stats.new, 5 * 4002);
        assert_eq!(plan.stats.files, 5 * 4000);
        assert_eq!(
            plan.streamed,
            chunks.iter().map(|c| c.len() as u64).sum::<u64>()
        );
        // Only the root's attributes wait for the end (its row marked stale first).
        assert!(
            matches!(&plan.ops[..], [PlannedOp { op: PlanOp::IndexOnly, .. }, PlannedOp { op: PlanOp::Op(Op::SetAttr { path, .. }), .. }] if path.is_root()),
            "{:?}",
            paths(&plan.ops)
        );
        // Every directory is made before anything in it, in order across chunks.
        let mut made = std::collections::HashSet::from([RelPath::root()]);
        for op in chunks.iter().flatten() {
            let path = match &op.op {
                PlanOp::File { path, .. } => path.clone(),
                PlanOp::Op(Op::Mkdir { path, .. }) => {
                    made.insert(path.clone());
                    path.clone()
                }
                PlanOp::Op(Op::SetAttr { path, .. }) => {
                    assert!(
                        made.contains(path),
                        "attributes of {path} before it is made"
                    );
                    continue;
                }
                // A directory's row is marked stale until its attributes are set again.
                PlanOp::IndexOnly => {
                    assert!(matches!(&op.ok[..], [Mutation::Stale(_)]), "{:?}", op.ok);
                    continue;
                }
                other => panic!("streamed {other:?}"),
            };
            let parent = path.parent().unwrap();
            assert!(made.contains(&parent), "{path} before its directory");
        }
        assert_eq!(made.len(), 1 + 10);
    }

    #[test]
    fn a_renamed_entry_and_what_its_inode_could_be_wait_for_the_whole_tree() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("brick");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/a"), b"a").unwrap();
        std::fs::write(root.join("d/kept"), b"k").unwrap();
        let index = Index::open(&t.path().join("index.db")).unwrap();
        let (chunks, plan) = run(&root, &index);
        // As if shipped: the index learns what the slave holds.
        for op in chunks.into_iter().flatten().chain(plan.ops) {
            index.apply(&op.ok).unwrap();
        }
        std::fs::rename(root.join("d/a"), root.join("b")).unwrap();
        std::fs::write(root.join("d/kept"), b"changed").unwrap();
        std::fs::write(root.join("new"), b"n").unwrap();
        let (chunks, plan) = run(&root, &index);
        let streamed: Vec<String> = chunks.iter().flat_map(|c| paths(c)).collect();
        assert!(streamed.contains(&"file new".to_string()), "{streamed:?}");
        assert!(
            streamed.contains(&"file d/kept".to_string()),
            "{streamed:?}"
        );
        assert!(
            !streamed
                .iter()
                .any(|s| s.contains("\"b\"") || s.ends_with(" b")),
            "{streamed:?}"
        );
        let planned = paths(&plan.ops);
        assert!(
            planned.iter().any(|s| s.starts_with("Stash")),
            "{planned:?}"
        );
        assert!(
            planned.iter().any(|s| s.starts_with("Unstash")),
            "{planned:?}"
        );
        assert_eq!(plan.stats.renamed, 1);
    }
}
