//! The requests that read the slave between batches (List) or in reverse mode (Fetch, Changes,
//! Demote). Each sends one request and reads its reply to the end; what else arrives meanwhile
//! is kept for the caller (`Client::next_event`).

use super::Client;
use crate::protocol::{self, ListEntry, Message, RelPath};
use anyhow::{bail, Result};
use std::collections::{HashMap, HashSet};

/// What the DR-side journal recorded since failover (`Client::changes`).
pub struct Changes {
    pub paths: HashSet<RelPath>,
    /// The journal covers everything since failover (no gap).
    pub complete: bool,
    /// Its last sequence number covered.
    pub last: u64,
}

impl Client {
    /// Lists the slave (or `paths` on it), handing each chunk to `on` as it arrives (the whole
    /// tree comes in `walk::tree_order`), with content hashes when `checksum` and the extended
    /// attributes of namespaces `xattrs`; returns the number of entries. An error from `on`
    /// ends the listing (and leaves the connection unusable).
    pub fn list_each(
        &mut self,
        checksum: bool,
        paths: Option<Vec<RelPath>>,
        xattrs: u8,
        on: &mut dyn FnMut(Vec<ListEntry>) -> Result<()>,
    ) -> Result<u64> {
        self.request(&Message::List {
            checksum,
            paths,
            xattrs,
        })?;
        let mut seen = 0u64;
        loop {
            match self.reply()? {
                Message::Listing(v) => {
                    seen += v.len() as u64;
                    on(v)?;
                }
                Message::ListEnd { entries } => {
                    if entries != seen {
                        bail!(
                            "the agent on {} listed {seen} entries but announced {entries}",
                            self.peer(),
                        );
                    }
                    return Ok(seen);
                }
                m => bail!("unexpected {} from the agent during a listing", m.name()),
            }
        }
    }

    /// The slave's whole tree.
    pub fn list(&mut self, checksum: bool, xattrs: u8) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        self.list_each(checksum, None, xattrs, &mut |mut v| {
            out.append(&mut v);
            Ok(())
        })?;
        Ok(out)
    }

    /// The slave's entries at `paths` (those that exist), with content hashes when `checksum`
    /// and the attributes of namespaces `xattrs`; one request per `MAX_LIST_PATHS` paths.
    pub fn list_paths(
        &mut self,
        checksum: bool,
        paths: &[RelPath],
        xattrs: u8,
    ) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        for chunk in paths.chunks(protocol::MAX_LIST_PATHS) {
            self.list_each(checksum, Some(chunk.to_vec()), xattrs, &mut |mut v| {
                out.append(&mut v);
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// The content hashes of the slave's files at `paths`, those that exist.
    pub fn hashes(&mut self, paths: &[RelPath]) -> Result<HashMap<RelPath, [u8; 32]>> {
        Ok(self
            .list_paths(true, paths, 0)?
            .into_iter()
            .filter_map(|le| le.hash.map(|h| (le.path, h)))
            .collect())
    }

    /// How many entries the slave holds, and the first one listed; memory does not grow with
    /// the slave's tree (`create` asks before replicating onto a slave no session filled).
    pub fn census(&mut self) -> Result<(u64, Option<RelPath>)> {
        let mut first = None;
        let n = self.list_each(false, None, 0, &mut |v| {
            if first.is_none() {
                first = v.into_iter().next().map(|e| e.path);
            }
            Ok(())
        })?;
        Ok((n, first))
    }

    /// Reverse mode: asks the agent for `paths` (one request) and hands every FileBegin, Chunk,
    /// FileEnd and Failed it answers to `on`, until FetchEnd.
    pub fn fetch(
        &mut self,
        paths: Vec<RelPath>,
        mut on: impl FnMut(Message) -> Result<()>,
    ) -> Result<()> {
        // Only what was asked for, each once: a hostile DR side cannot make failback write
        // any other path on the master.
        let mut asked: HashSet<RelPath> = paths.iter().cloned().collect();
        self.request(&Message::Fetch { paths })?;
        loop {
            match self.reply()? {
                Message::FetchEnd => return Ok(()),
                Message::FileBegin(fb) if !asked.remove(&fb.path) => bail!(
                    "{} sent {} during a fetch, which was not asked for (or sent twice): refusing the whole reply",
                    self.peer(),
                    fb.path
                ),
                m @ (Message::FileBegin(_)
                | Message::Chunk(_)
                | Message::FileEnd(_)
                | Message::Failed(_)) => on(m)?,
                m => bail!("unexpected {} from the agent during a fetch", m.name()),
            }
        }
    }

    /// Reverse mode: the paths the DR-side journal recorded since failover (after `after`).
    pub fn changes(&mut self, after: u64) -> Result<Changes> {
        self.request(&Message::Changes { after })?;
        let mut paths = HashSet::new();
        loop {
            match self.reply()? {
                Message::ChangedPaths(v) => paths.extend(v),
                Message::ChangesEnd { complete, last } => {
                    return Ok(Changes {
                        paths,
                        complete,
                        last,
                    })
                }
                m => bail!("unexpected {} from the agent during Changes", m.name()),
            }
        }
    }

    /// Reverse mode, failback: demotes the slave volume; returns its new epoch.
    pub fn demote(&mut self) -> Result<u64> {
        self.request(&Message::Demote)?;
        match self.reply()? {
            Message::Demoted { epoch } => Ok(epoch),
            m => bail!("unexpected {} from the agent after Demote", m.name()),
        }
    }
}
