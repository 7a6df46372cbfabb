//! The slave's listing (`List`): its whole tree in tree order, or the paths asked for, in
//! chunks, with content hashes and attributes when asked.

use crate::fsutil;
use crate::protocol::{self, Message};
use crate::transport::conn::FrameWriter;
use anyhow::{bail, Context, Result};
use rustix::fd::AsFd;
use std::path::Path;

/// Streams the slave tree (without `.georep`, in `walk::tree_order`) to the master, or only
/// the named `paths` that exist: `Listing`s, then `ListEnd`.
/// Entries per `Listing` message.
pub(super) const LISTING_CHUNK: usize = 1024;

pub(super) fn send_listing(
    root: &Path,
    w: &mut FrameWriter,
    checksum: bool,
    paths: Option<Vec<protocol::RelPath>>,
    xattrs: u8,
) -> Result<()> {
    let fd = fsutil::open_root(root)?;
    let xattrs = crate::xattr::permitted(xattrs);
    let mut attrs = crate::xattr::Reader::new(fd.as_fd());
    // Sent as it is read, a chunk at a time: memory does not grow with the tree.
    let mut total = 0u64;
    let mut chunk = Vec::with_capacity(LISTING_CHUNK);
    // Entries with extended attributes weigh more: a Listing is cut by bytes too, far below
    // a frame's limit.
    let mut chunk_bytes = 0usize;
    let mut add = |path: protocol::RelPath, e: crate::entry::Entry| -> Result<()> {
        let hash = if checksum && e.kind == crate::entry::Kind::File {
            Some(
                fsutil::hash_beneath(&fd, &path)
                    .with_context(|| format!("reading {path} on the slave for its checksum"))?,
            )
        } else {
            None
        };
        let mut meta = e.meta();
        if xattrs != 0 {
            meta.xattrs = attrs.read(&path, xattrs);
        }
        chunk.push(protocol::ListEntry {
            path,
            kind: e.kind as u8,
            size: e.size,
            meta,
            target: e.target.clone(),
            hash,
            ino: e.ino,
            nlink: e.nlink,
        });
        total += 1;
        chunk_bytes += chunk.last().map_or(0, |e| e.meta.weight());
        if chunk.len() == LISTING_CHUNK || chunk_bytes > 4 << 20 {
            chunk_bytes = 0;
            w.send(&Message::Listing(std::mem::take(&mut chunk)))?;
        }
        Ok(())
    };
    match paths {
        None => {
            // In tree order: the master merges it with its own walk as it arrives.
            let none = crate::walk::Excludes::default();
            for r in crate::walk::TreeWalk::new(&fd, &none)? {
                let (p, e) = r.with_context(|| format!("listing {}", root.display()))?;
                add(p, e)?;
            }
        }
        Some(paths) => {
            if paths.len() > protocol::MAX_LIST_PATHS {
                bail!(
                    "List names {} paths, more than {}",
                    paths.len(),
                    protocol::MAX_LIST_PATHS
                );
            }
            for p in paths {
                if let Some(e) = crate::walk::lstat_beneath(&fd, &p, Default::default())? {
                    add(p, e)?;
                }
            }
        }
    }
    if !chunk.is_empty() {
        w.send(&Message::Listing(chunk))?;
    }
    w.send(&Message::ListEnd { entries: total })?;
    w.flush()?;
    Ok(())
}
