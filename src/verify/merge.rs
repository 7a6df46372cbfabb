//! The comparison of a master brick with its slave, streamed: the master's walk and the
//! agent's listing come in the same order (`walk::tree_order`), so they are merged as the
//! listing arrives. Memory holds one directory listing per level of the walk, the names of
//! multiply-linked files (for the hard-link groups), and at most [`KEPT`] differences: it does
//! not grow with the tree, and a slave that lists without end cannot exhaust it.

use super::compare;
use crate::crawl::links::{differing_groups, master_group_key, slave_group_key};
use crate::entry::Entry;
use crate::protocol::{ListEntry, RelPath};
use crate::walk::{tree_order, Excludes, TreeWalk};
use anyhow::{bail, Context, Result};
use std::cmp::Ordering;
use std::iter::Peekable;

/// Differences kept for the report; the rest are counted.
pub const KEPT: usize = 100_000;

/// What a merge found.
#[derive(Debug, Default)]
pub struct Differences {
    pub master_entries: u64,
    pub slave_entries: u64,
    /// The first [`KEPT`] differences, in tree order (hard-link groups last).
    pub found: Vec<(RelPath, String)>,
    /// Differences found beyond those kept.
    pub omitted: u64,
}

impl Differences {
    fn push(&mut self, path: RelPath, what: String) {
        if self.found.len() < KEPT {
            self.found.push((path, what));
        } else {
            self.omitted += 1;
        }
    }
}

/// A merge in progress: feed it the slave's entries in order ([`Merge::slave`]), then
/// [`Merge::finish`].
pub struct Merge<'a, H> {
    master: Peekable<TreeWalk<'a>>,
    excludes: &'a Excludes,
    /// The master's content hash of a file, when the slave's is known and to be compared.
    hash: H,
    last: Option<RelPath>,
    /// Names that are multiply-linked files on either side: (name, master key, slave key).
    linked: Vec<(RelPath, Option<u64>, Option<u64>)>,
    /// Which differences count (the scrub's: only what LAST_SYNCED vouches for), asked
    /// before one is kept or counted.
    keep: Box<dyn FnMut(&RelPath) -> bool + 'a>,
    /// Extended attribute namespaces compared (those the listing carries), read on the
    /// master through this reader.
    xattrs: u8,
    attrs: crate::xattr::Reader<'a>,
    out: Differences,
}

impl<'a, H> Merge<'a, H>
where
    H: FnMut(&RelPath, &Entry, &ListEntry) -> Result<Option<[u8; 32]>>,
{
    /// Starts walking the master brick at `root` (its root itself is not compared).
    pub fn new(root: &'a rustix::fd::OwnedFd, excludes: &'a Excludes, hash: H) -> Result<Self> {
        Ok(Merge {
            master: TreeWalk::new(root, excludes)
                .context("walking the master brick")?
                .peekable(),
            excludes,
            hash,
            last: None,
            linked: Vec::new(),
            keep: Box::new(|_| true),
            xattrs: 0,
            attrs: crate::xattr::Reader::new(rustix::fd::AsFd::as_fd(root)),
            out: Differences::default(),
        })
    }

    /// Counts only the differences at paths `keep` accepts.
    pub fn keeping(mut self, keep: impl FnMut(&RelPath) -> bool + 'a) -> Self {
        self.keep = Box::new(keep);
        self
    }

    /// Compares the extended attributes within `scope` too, where the listing carries them.
    pub fn with_xattrs(mut self, scope: u8) -> Self {
        self.xattrs = scope;
        self
    }

    fn note(&mut self, path: RelPath, what: String) {
        if (self.keep)(&path) {
            self.out.push(path, what);
        }
    }

    fn next_master(&mut self) -> Result<Option<(RelPath, Entry)>> {
        match self.master.next() {
            None => Ok(None),
            Some(r) => {
                self.out.master_entries += 1;
                Ok(Some(r.context("walking the master brick")?))
            }
        }
    }

    /// The slave's next entry. Out of order is an error: a merge would report wrong
    /// differences.
    pub fn slave(&mut self, s: ListEntry) -> Result<()> {
        if let Some(prev) = &self.last {
            if tree_order(prev, &s.path) != Ordering::Less {
                bail!(
                    "the agent listed {} after {}, which is not the order georep lists in: a broken DR side",
                    s.path,
                    prev
                );
            }
        }
        self.last = Some(s.path.clone());
        if self.excludes.is_excluded(&s.path) {
            return Ok(());
        }
        self.out.slave_entries += 1;
        loop {
            let order = match self.master.peek() {
                Some(Ok((p, _))) => tree_order(p, &s.path),
                Some(Err(_)) => Ordering::Less,
                None => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    let (p, _) = self.next_master()?.expect("peeked");
                    self.note(p, "missing on the slave".into());
                }
                Ordering::Equal => {
                    let (p, m) = self.next_master()?.expect("peeked");
                    let h = (self.hash)(&p, &m, &s)?;
                    for what in compare(&m, &s, h) {
                        self.note(p.clone(), what);
                    }
                    if let (Some(theirs), true) = (&s.meta.xattrs, self.xattrs != 0) {
                        let ours = self.attrs.read(&p, self.xattrs).unwrap_or_default();
                        if let Some(what) = super::compare_xattrs(&ours, theirs) {
                            self.note(p.clone(), what);
                        }
                    }
                    let keys = (master_group_key(&m), slave_group_key(&s));
                    if keys.0.is_some() || keys.1.is_some() {
                        self.linked.push((p, keys.0, keys.1));
                    }
                    return Ok(());
                }
                Ordering::Greater => {
                    self.note(s.path, "only on the slave".into());
                    return Ok(());
                }
            }
        }
    }

    /// The listing ended: what is left of the master is missing on the slave; then the
    /// hard-link groups are compared.
    pub fn finish(mut self) -> Result<Differences> {
        while let Some((p, _)) = self.next_master()? {
            self.note(p, "missing on the slave".into());
        }
        let keys: Vec<_> = self.linked.iter().map(|(_, m, s)| (*m, *s)).collect();
        let names = |g: &[usize]| {
            if g.is_empty() {
                return "no other name".to_string();
            }
            let shown: Vec<String> = g
                .iter()
                .take(4)
                .map(|&j| self.linked[j].0.display())
                .collect();
            shown.join(", ")
        };
        let mut groups = Vec::new();
        for split in differing_groups(&keys) {
            groups.push((
                self.linked[split.name].0.clone(),
                format!(
                    "hard links differ: linked with {} on the master, with {} on the slave \
                     (`georep sync --once --rescan-slave` repairs it)",
                    names(&split.master),
                    names(&split.slave)
                ),
            ));
        }
        for (p, what) in groups {
            self.note(p, what);
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil;
    use std::path::Path;

    /// The slave's listing of `dir`, as the agent sends it.
    fn listing(dir: &Path) -> Vec<ListEntry> {
        let root = fsutil::open_root(dir).unwrap();
        let none = Excludes::default();
        TreeWalk::new(&root, &none)
            .unwrap()
            .map(|r| {
                let (path, e) = r.unwrap();
                ListEntry {
                    path,
                    kind: e.kind as u8,
                    size: e.size,
                    meta: e.meta(),
                    target: e.target.clone(),
                    hash: None,
                    ino: e.ino,
                    nlink: e.nlink,
                }
            })
            .collect()
    }

    fn merged(master: &Path, slave: Vec<ListEntry>) -> Result<Vec<String>> {
        let root = fsutil::open_root(master).unwrap();
        let none = Excludes::default();
        let mut m = Merge::new(&root, &none, |_: &RelPath, _: &Entry, _: &ListEntry| {
            Ok(None)
        })?;
        for s in slave {
            m.slave(s)?;
        }
        let d = m.finish()?;
        Ok(d.found
            .into_iter()
            .map(|(p, w)| format!("{p}: {w}"))
            .collect())
    }

    fn tree(dir: &Path, files: &[&str]) {
        for f in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, f.as_bytes()).unwrap();
        }
    }

    /// Copies `from` to `to` with the same attributes (mtimes included), as replication would.
    fn copy(from: &Path, to: &Path) {
        let o = std::process::Command::new("cp")
            .args(["-a", "--", &format!("{}/.", from.display())])
            .arg(to)
            .output()
            .unwrap();
        assert!(o.status.success());
    }

    /// Names that sort differently in byte order and in tree order (`a-b` and `a/…`), extras
    /// and missing entries at every depth, and a kind change.
    #[test]
    fn the_merge_finds_every_difference_wherever_names_sort() {
        let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(m.path(), &["a/x", "a/y/z", "a-b", "a.c", "b", "c/d/e"]);
        copy(m.path(), s.path());
        assert!(merged(m.path(), listing(s.path())).unwrap().is_empty());

        tree(s.path(), &["a/extra", "a-a", "c/d/deeper/f"]);
        std::fs::remove_dir_all(s.path().join("a/y")).unwrap();
        std::fs::remove_file(s.path().join("b")).unwrap();
        std::fs::create_dir(s.path().join("b")).unwrap();
        let got = merged(m.path(), listing(s.path())).unwrap();
        let mut want = vec![
            "a/extra: only on the slave",
            "a/y: missing on the slave",
            "a/y/z: missing on the slave",
            "a-a: only on the slave",
            "b: a file on the master, a directory on the slave",
            "c/d/deeper: only on the slave",
            "c/d/deeper/f: only on the slave",
        ];
        // The directories whose contents changed differ in mtime too.
        let mut got_sorted: Vec<&str> = got
            .iter()
            .map(String::as_str)
            .filter(|l| !l.contains(": mtime "))
            .collect();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "{got:#?}");
    }

    #[test]
    fn a_split_hard_link_group_is_a_difference() {
        let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(m.path(), &["d/one"]);
        std::fs::hard_link(m.path().join("d/one"), m.path().join("two")).unwrap();
        copy(m.path(), s.path());
        assert!(merged(m.path(), listing(s.path())).unwrap().is_empty());
        std::fs::remove_file(s.path().join("two")).unwrap();
        std::fs::copy(s.path().join("d/one"), s.path().join("two")).unwrap();
        let got = merged(m.path(), listing(s.path())).unwrap();
        assert!(
            got.iter().any(|l| l.contains("hard links differ")),
            "{got:#?}"
        );
    }

    /// A listing out of tree order would make the merge report wrong differences: refused.
    #[test]
    fn a_listing_out_of_order_is_refused() {
        let (m, s) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        tree(m.path(), &["a/x", "b"]);
        copy(m.path(), s.path());
        let mut l = listing(s.path());
        l.swap(0, 2);
        let e = merged(m.path(), l).unwrap_err();
        assert!(format!("{e:#}").contains("not the order"), "{e:#}");
        let mut l = listing(s.path());
        l.push(l[0].clone());
        assert!(merged(m.path(), l).is_err(), "a name listed twice");
    }

    fn fuzz_config() -> proptest::test_runner::Config {
        proptest::test_runner::Config {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64),
            failure_persistence: None,
            ..Default::default()
        }
    }

    /// Paths over a tiny alphabet that sorts differently in byte and tree order (`-`, `.`,
    /// `0` around `/`), up to 3 levels: files at the leaves, their parents directories.
    fn arb_tree() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
        use proptest::prelude::*;
        let name = proptest::sample::select(vec!["a", "a-", "a.", "a0", "b", "-"]);
        proptest::collection::vec(proptest::collection::vec(name, 1..4), 0..12)
            .prop_map(|ps| ps.into_iter().map(|p| p.join("/")).collect())
    }

    /// Makes the files `paths` (and their parents) under `dir`; a path that would go through
    /// a file already made is skipped. Returns every entry made, as "path:kind".
    fn make(dir: &Path, paths: &[String]) -> std::collections::BTreeSet<String> {
        for p in paths {
            let full = dir.join(p);
            if std::fs::create_dir_all(full.parent().unwrap()).is_ok() && !full.exists() {
                std::fs::write(&full, b"").unwrap();
            }
        }
        let root = fsutil::open_root(dir).unwrap();
        crate::walk::list_subtree(&root, &RelPath::root(), &Excludes::default())
            .unwrap()
            .into_iter()
            .map(|(p, e)| format!("{p}:{}", e.kind as u8))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(fuzz_config())]

        /// The streamed merge finds exactly what a comparison of the two whole trees finds:
        /// names on one side only, and kinds that differ (names whose bytes sort differently
        /// from their tree order included).
        #[test]
        fn fuzz_the_merge_agrees_with_a_whole_tree_comparison(m in arb_tree(), s in arb_tree()) {
            let (md, sd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let (mset, sset) = (make(md.path(), &m), make(sd.path(), &s));
            let kinds = |set: &std::collections::BTreeSet<String>| -> std::collections::BTreeMap<String, String> {
                set.iter()
                    .map(|e| {
                        let (p, k) = e.rsplit_once(':').unwrap();
                        (p.to_string(), k.to_string())
                    })
                    .collect()
            };
            let (mk, sk) = (kinds(&mset), kinds(&sset));
            let mut want = std::collections::BTreeSet::new();
            for (p, k) in &mk {
                match sk.get(p) {
                    None => { want.insert(format!("{p}: missing on the slave")); }
                    Some(o) if o != k => { want.insert(format!("{p}: kind")); }
                    _ => {}
                }
            }
            for p in sk.keys().filter(|p| !mk.contains_key(*p)) {
                want.insert(format!("{p}: only on the slave"));
            }
            let got: std::collections::BTreeSet<String> = merged(md.path(), listing(sd.path()))
                .unwrap()
                .into_iter()
                .filter(|l| l.ends_with("missing on the slave") || l.ends_with("only on the slave") || l.contains(" on the master, a "))
                .map(|l| if l.contains(" on the master, a ") { format!("{}: kind", l.split(": ").next().unwrap()) } else { l })
                .collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
