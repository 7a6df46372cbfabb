//! Reading a file of the brick as it is sent: whole or from where the slave's copy ends (an
//! append), sparse runs as holes, or as a delta against the slave's block sums; its stat taken
//! before and after, so a file changed while read is never committed.

use super::Shipper;
use crate::entry::Entry;
use crate::fsutil;
use crate::protocol::{self, FileAppend, FileBegin, FileEnd, Message, RelPath};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, OFlags};

/// What became of a file sent.
pub(super) enum FileOutcome {
    Sent {
        entry: Entry,
        committed: bool,
        /// Content bytes that crossed the wire (the tail alone for an append).
        bytes: u64,
    },
    /// Same content as the slave already has (hash checked locally): attributes only.
    SameContent(Entry, Option<Vec<protocol::Xattr>>),
    Vanished,
    Unreadable(std::io::Error),
}

impl Shipper {
    pub(super) fn send_file(
        &mut self,
        path: &RelPath,
        known_hash: Option<[u8; 32]>,
        append_base: Option<(u64, [u8; 32])>,
    ) -> std::io::Result<FileOutcome> {
        // Used here or not at all.
        let sig = self.sigs.take(path);
        let open = |flags| fsutil::open_regular_beneath(self.brick.as_fd(), path.as_bytes(), flags);
        let fd = match open(OFlags::NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(OFlags::empty()),
            r => r,
        };
        let fd = match fd {
            Ok(Some(fd)) => fd,
            // Something else took the name since it was listed: the next pass sees what.
            Ok(None) => return Ok(FileOutcome::Vanished),
            Err(e) => {
                return Ok(match e.raw_os_error() {
                    Some(libc::ENOENT | libc::ELOOP | libc::ENOTDIR | libc::EXDEV) => {
                        FileOutcome::Vanished
                    }
                    _ => FileOutcome::Unreadable(e),
                })
            }
        };
        let view = self.view;
        // A Gluster link-to file now (a rename moved the name's data to another brick): no
        // content of this brick's, and never an empty file over the real one.
        let stat = |fd: &OwnedFd| {
            rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, Entry::STATX_MASK)
                .ok()
                .and_then(|st| Entry::from_statx(&st, None))
                .and_then(|e| {
                    view.adjust(e, crate::xattr::At::Fd(fd.as_fd()))
                        .ok()
                        .flatten()
                })
        };
        let Some(mut entry) = stat(&fd).filter(|e| e.kind == crate::entry::Kind::File) else {
            return Ok(FileOutcome::Vanished);
        };
        // Read with the stat, before the content: a change after this moves the ctime and
        // the file is looked at again.
        let xattrs = match self.fd_xattrs(fd.as_fd()) {
            Ok(x) => x,
            Err(e) => return Ok(FileOutcome::Unreadable(e)),
        };
        let same_stat = |a: &Option<Entry>, e: &Entry| {
            a.as_ref().is_some_and(|a| {
                a.size == e.size
                    && (a.mtime_sec, a.mtime_nsec) == (e.mtime_sec, e.mtime_nsec)
                    && (a.ctime_sec, a.ctime_nsec) == (e.ctime_sec, e.ctime_nsec)
            })
        };
        let mut file = std::fs::File::from(fd);
        // With the slave's sums at hand the content is read once, for the delta: its mtime
        // moved (see `Sigs::ask`), so it most likely changed, and an unchanged one costs a
        // delta of references alone.
        if let (Some(known), None) = (known_hash, &sig) {
            // A local read is far cheaper than a send: check whether the content changed.
            let mut h = blake3::Hasher::new();
            let local = h.update_reader(&mut file).map(|h| *h.finalize().as_bytes());
            let stable = same_stat(&stat(&OwnedFd::from(file.try_clone()?)), &entry);
            if stable && local.as_ref().ok() == Some(&known) {
                entry.hash = Some(known);
                return Ok(FileOutcome::SameContent(entry, xattrs));
            }
            use std::io::Seek;
            file.rewind()?;
        }
        let mut hasher = blake3::Hasher::new();
        let mut left = entry.size;
        // A file that grew: when what the slave has is still its beginning, only the rest
        // goes (a local read of the beginning, no round trip). The hash of the beginning goes
        // on into the hash of the whole, which the agent checks.
        let base = match append_base.filter(|&(b, _)| b < entry.size) {
            Some((base, h)) => {
                use std::io::{Read, Seek};
                let read = hasher.update_reader((&mut file).take(base)).map(|_| ());
                if read.is_ok() && hasher.count() == base && hasher.finalize().as_bytes() == &h {
                    Some(base)
                } else {
                    hasher = blake3::Hasher::new();
                    file.rewind()?;
                    None
                }
            }
            None => None,
        };
        if let (None, Some(sig)) = (base, sig) {
            let meta = protocol::Meta {
                xattrs,
                ..entry.meta()
            };
            let (intact, bytes, hash) = self.send_delta(path, &mut file, meta, entry.size, sig)?;
            let committed = intact && same_stat(&stat(&file.into()), &entry);
            self.client.writer().send(&Message::FileEnd(FileEnd {
                hash,
                commit: committed,
            }))?;
            entry.hash = Some(hash);
            return Ok(FileOutcome::Sent {
                entry,
                committed,
                bytes,
            });
        }
        match base {
            Some(base) => {
                left -= base;
                self.client.writer().send(&Message::FileAppend(FileAppend {
                    path: path.clone(),
                    meta: protocol::Meta {
                        xattrs,
                        ..entry.meta()
                    },
                    size: entry.size,
                    base,
                }))?;
            }
            None => self.client.writer().send(&Message::FileBegin(FileBegin {
                path: path.clone(),
                meta: protocol::Meta {
                    xattrs,
                    ..entry.meta()
                },
                size: entry.size,
            }))?,
        }
        // A sparse file's holes go as `Hole`s: nothing read, nothing sent, nothing allocated
        // on the DR side.
        let sparse = crate::sparse::is_sparse(&file, entry.size);
        let mut pos = entry.size - left;
        let mut bytes = 0;
        let mut intact = true;
        while left > 0 {
            let mut run = left;
            if sparse && intact {
                match crate::sparse::next(&file, pos, entry.size)? {
                    crate::sparse::Run::Hole(n) => {
                        let n = n.min(left);
                        self.client.writer().send(&Message::Hole(n))?;
                        crate::sparse::hash_zeros(&mut hasher, n);
                        if let Some(pb) = &self.progress {
                            pb.inc(n);
                        }
                        (left, pos) = (left - n, pos + n);
                        continue;
                    }
                    crate::sparse::Run::Data(n) => run = n.min(left),
                }
                use std::io::Seek;
                file.seek(std::io::SeekFrom::Start(pos))?;
            }
            while run > 0 {
                let want = (run as usize).min(self.chunk_size);
                let (n, failed) =
                    self.client
                        .writer()
                        .send_content(&mut file, want, &mut intact, &mut |d| {
                            hasher.update(d);
                        })?;
                if let Some(e) = failed {
                    tracing::warn!("reading {path}: {e}; sending it again later");
                }
                self.throttle();
                if let Some(pb) = &self.progress {
                    pb.inc(n as u64);
                }
                let n = n as u64;
                (run, left, pos, bytes) = (run - n, left - n, pos + n, bytes + n);
            }
        }
        let unchanged = same_stat(&stat(&file.into()), &entry);
        let committed = intact && unchanged;
        let hash = *hasher.finalize().as_bytes();
        self.client.writer().send(&Message::FileEnd(FileEnd {
            hash,
            commit: committed,
        }))?;
        entry.hash = Some(hash);
        Ok(FileOutcome::Sent {
            entry,
            committed,
            bytes,
        })
    }

    /// Sends `file` (`size` bytes) as a delta against the slave's copy that `sig` sums:
    /// references to its blocks and the literal bytes between. Returns whether the content
    /// was read whole, the literal bytes sent, and the hash of what was sent.
    pub(super) fn send_delta(
        &mut self,
        path: &RelPath,
        file: &mut std::fs::File,
        meta: protocol::Meta,
        size: u64,
        sig: crate::ship::sigs::Finished,
    ) -> std::io::Result<(bool, u64, [u8; 32])> {
        use crate::delta::{self, Piece};
        self.client
            .writer()
            .send(&Message::FileDelta(protocol::FileDelta {
                path: path.clone(),
                meta,
                size,
                base: sig.size,
                block: sig.block,
            }))?;
        let (block, base) = (sig.block as u64, sig.size);
        let idx = delta::Index::new(sig.block, sig.size, sig.sums);
        let mut hasher = blake3::Hasher::new();
        let (mut emitted, mut literal) = (0u64, 0u64);
        let mut send_failed = None;
        let read = delta::diff(
            file,
            size,
            &idx,
            |d| {
                hasher.update(d);
            },
            |piece| {
                let (msg, n) = match piece {
                    Piece::Copy { first, count } => {
                        let start = first as u64 * block;
                        let end = ((first as u64 + count as u64) * block).min(base);
                        (Message::Copy { first, count }, end - start)
                    }
                    Piece::Literal(d) => {
                        let n = d.len() as u64;
                        literal += n;
                        (Message::Chunk(d), n)
                    }
                };
                if let Err(e) = self.client.writer().send(&msg) {
                    send_failed = Some(e);
                    return Err(std::io::Error::other("the stream failed"));
                }
                emitted += n;
                self.throttle();
                if let Some(pb) = &self.progress {
                    pb.inc(n);
                }
                Ok(())
            },
        );
        if let Some(e) = send_failed {
            return Err(e);
        }
        let intact = match read {
            Ok((n, _)) => n == size && emitted == size,
            Err(e) => {
                tracing::warn!("reading {path}: {e}; sending it again later");
                false
            }
        };
        if emitted < size {
            // Shrank or failed while read: the declared size is made up with zeros and the
            // file is not committed.
            self.client.writer().send(&Message::Hole(size - emitted))?;
        }
        Ok((intact, literal, *hasher.finalize().as_bytes()))
    }
}
