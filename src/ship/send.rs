//! Sending one planned op: a file's content read at send time (whole, appended, as a delta or
//! sparse), with its attributes; hard links relinked when a planned leader changed.

use super::ack::{Sent, SentKind};
use super::read::FileOutcome;
use super::{Failure, Shipper};
use crate::crawl::index::Mutation;
use crate::crawl::{PlanOp, PlannedOp};
use crate::entry::Entry;
use crate::fsutil;
use crate::protocol::{self, Message, Op, RelPath};
use rustix::fd::AsFd;

impl Shipper {
    pub(super) fn send_op(&mut self, p: PlannedOp, wire: &mut u32) -> std::io::Result<Sent> {
        let PlannedOp { op, mut ok, fail } = p;
        Ok(match op {
            PlanOp::IndexOnly => Sent {
                ok,
                fail,
                wire: None,
                force_fail: false,
                kind: SentKind::Nothing,
            },
            PlanOp::Op(Op::Link { path, target }) if self.relink.contains_key(&target) => {
                match self.relink[&target].clone() {
                    (_, Some(leader)) => self.send_plain(
                        Op::Link {
                            path,
                            target: leader,
                        },
                        ok,
                        fail,
                        wire,
                    )?,
                    (ino, None) => {
                        // The planned leader names another file by now: this name carries the
                        // content itself and leads the links still to come.
                        let (sent, delivered) =
                            self.send_content(path.clone(), None, None, ino, true, fail, wire)?;
                        if delivered {
                            self.relink.insert(target, (ino, Some(path)));
                        }
                        sent
                    }
                }
            }
            PlanOp::Op(mut op) => {
                // The attributes of another name of a hard-linked file whose content went out
                // earlier in this plan: that content was read (and its stat taken) at send time,
                // so the planned attributes may be older than the content now on the slave.
                // The shared inode gets the attributes that go with its content.
                if let (Op::SetAttr { meta, .. }, [Mutation::Upsert(p, e)]) = (&mut op, &ok[..]) {
                    let shared = self.sent_inodes.get(&e.ino);
                    if let Some(s) = shared.filter(|_| e.kind == crate::entry::Kind::File) {
                        *meta = s.meta();
                        ok = vec![Mutation::Upsert(p.clone(), s.clone())];
                    }
                }
                self.add_xattrs(&mut op, &mut ok, &fail);
                self.send_plain(op, ok, fail, wire)?
            }
            PlanOp::File {
                path,
                known_hash,
                slave_meta,
                entry,
                grew_from,
            } => {
                // The slave's hash is of its whole copy, or of the beginning of a file that grew.
                let (same, grew) = match (known_hash, grew_from) {
                    (Some(h), Some(base)) => (None, Some((base, h))),
                    (h, _) => (h.map(|h| (h, slave_meta)), None),
                };
                let (sent, delivered) = self.send_content(
                    path.clone(),
                    same,
                    grew,
                    entry.ino,
                    entry.nlink > 1,
                    fail,
                    wire,
                )?;
                if !delivered && entry.kind == crate::entry::Kind::File && entry.nlink > 1 {
                    // The slave's copy at this path is not the planned inode: links planned to
                    // it go elsewhere (see above).
                    self.relink.insert(path, (entry.ino, None));
                }
                sent
            }
        })
    }

    /// Puts the extended attributes of the planned entry (the op's row in `ok`), read now,
    /// into an op that sets attributes. When they cannot be read (the entry or a parent moved
    /// since the plan, another entry took the name), the op leaves the slave's alone and its
    /// row must not vouch for them: a directory's row is marked stale, another kind's is
    /// poisoned, and the path is a failure looked at again (journal seed 1301723: a parent
    /// renamed between plan and send; its child's ACL never reached the slave).
    fn add_xattrs(&mut self, op: &mut Op, ok: &mut Vec<Mutation>, fail: &[Mutation]) {
        if self.xattrs == 0 {
            return;
        }
        if let Op::Mkdir { path, meta }
        | Op::Symlink { path, meta, .. }
        | Op::Special { path, meta, .. }
        | Op::SetAttr { path, meta } = op
        {
            let planned = ok.iter().find_map(|m| match m {
                Mutation::Upsert(p, e) if p == path => Some(e.clone()),
                _ => None,
            });
            // A reader per op: a parent kept from an earlier op may name another directory
            // by now.
            let mut r = crate::xattr::Reader::new(self.brick.as_fd());
            meta.xattrs = r.read_of(
                path,
                self.xattrs,
                planned.as_ref().map(|e| (e.ino, e.birth)),
            );
            if r.unsupported {
                self.brick_without_xattrs();
                return;
            }
            if meta.xattrs.is_some() {
                return;
            }
            match planned {
                Some(e) if e.kind == crate::entry::Kind::Dir => {
                    ok.push(Mutation::Stale(path.clone()))
                }
                Some(_) => *ok = fail.to_vec(),
                None => {}
            }
            let message = match r.error {
                Some(e) => format!(
                    "reading the extended attributes of {path} on the master: {e}; they are not replicated until that is fixed"
                ),
                None => format!(
                    "{path} moved while its extended attributes were read; they are sent again"
                ),
            };
            self.failures.push(Failure {
                path: path.display(),
                rel: Some(path.clone()),
                side: "master",
                errno: 0,
                message,
            });
        }
    }

    /// The attributes of an open file of the brick; an error (too many to replicate, an I/O
    /// error) fails the file, which is looked at again.
    pub(super) fn fd_xattrs(
        &mut self,
        fd: rustix::fd::BorrowedFd<'_>,
    ) -> std::io::Result<Option<Vec<protocol::Xattr>>> {
        if self.xattrs == 0 {
            return Ok(None);
        }
        match crate::xattr::read(crate::xattr::At::Fd(fd), self.xattrs)? {
            Some(v) => Ok(Some(v)),
            None => {
                self.brick_without_xattrs();
                Ok(None)
            }
        }
    }

    fn brick_without_xattrs(&mut self) {
        if self.xattr_warning.is_none() {
            let m = "the master brick's filesystem has no extended attributes: none are replicated";
            tracing::warn!("{m}");
            self.xattr_warning = Some(m.to_string());
        }
    }

    fn send_plain(
        &mut self,
        op: Op,
        ok: Vec<Mutation>,
        fail: Vec<Mutation>,
        wire: &mut u32,
    ) -> std::io::Result<Sent> {
        let kind = match &op {
            Op::Delete { .. } => SentKind::Delete,
            Op::Unstash { .. } => SentKind::Rename,
            _ => SentKind::Other,
        };
        self.client.writer().send(&Message::Op(op))?;
        *wire += 1;
        Ok(Sent {
            ok,
            fail,
            wire: Some(*wire - 1),
            force_fail: false,
            kind,
        })
    }

    /// Sends the file at `path` as it is now, planned as inode `ino` (`linked`: with other names
    /// the plan may link to it). Also says whether the slave's copy at `path` is that inode's
    /// current content once this op is applied (false when the name was replaced, changed while
    /// read, vanished or is unreadable).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_content(
        &mut self,
        path: RelPath,
        known: Option<([u8; 32], Option<protocol::Meta>)>,
        append_base: Option<(u64, [u8; 32])>,
        ino: u64,
        linked: bool,
        fail: Vec<Mutation>,
        wire: &mut u32,
    ) -> std::io::Result<(Sent, bool)> {
        let (known_hash, slave_meta) = known.map_or((None, None), |(h, m)| (Some(h), m));
        Ok(match self.send_file(&path, known_hash, append_base)? {
            FileOutcome::SameContent(entry, xattrs) => {
                // Planned links count even when the other names are gone by now: their
                // SetAttr still reaches the shared inode on the slave.
                if linked || entry.nlink > 1 {
                    self.sent_inodes.insert(entry.ino, entry.clone());
                }
                let delivered = entry.ino == ino;
                let row = content_row(&path, &entry, ino, linked);
                if linked_since_planned(&entry, linked) {
                    // A crawl passes again: the new name may have been listed already.
                    self.stats.requeued += 1;
                }
                if slave_meta == Some(entry.meta()) && self.xattrs == 0 {
                    // Content and attributes are what the slave holds: nothing to send. (The
                    // index keeps no extended attributes: with them on, a changed ctime may
                    // be one, and they go.)
                    let sent = Sent {
                        ok: vec![row],
                        fail,
                        wire: None,
                        force_fail: false,
                        kind: SentKind::Nothing,
                    };
                    return Ok((sent, delivered));
                }
                let op = Op::SetAttr {
                    path: path.clone(),
                    meta: protocol::Meta {
                        xattrs,
                        ..entry.meta()
                    },
                };
                let sent = self.send_plain(op, vec![row], fail, wire)?;
                (sent, delivered)
            }
            FileOutcome::Sent {
                entry,
                committed,
                bytes,
            } => {
                if committed && (linked || entry.nlink > 1) {
                    self.sent_inodes.insert(entry.ino, entry.clone());
                }
                if !committed {
                    self.stats.requeued += 1;
                    self.failures.push(Failure {
                        path: path.display(),
                        rel: Some(path.clone()),
                        side: "master",
                        errno: 0,
                        message: format!(
                            "{path} changed while it was being read; it is sent again on the next pass"
                        ),
                    });
                }
                *wire += 1;
                let delivered = committed && entry.ino == ino;
                if linked_since_planned(&entry, linked) {
                    self.stats.requeued += 1;
                }
                let sent = Sent {
                    ok: vec![content_row(&path, &entry, ino, linked)],
                    fail,
                    wire: Some(*wire - 1),
                    force_fail: !committed,
                    kind: SentKind::File(bytes),
                };
                (sent, delivered)
            }
            FileOutcome::Vanished => {
                // Gone or no longer a file since the crawl: make sure the slave does not
                // keep an old version. A rename planned later may have taken it (its
                // directory's, say, not journaled yet): the failure moves with the renamed
                // rows and the path is looked at again where it went (a crawl passes again).
                self.failures.push(Failure {
                    path: path.display(),
                    rel: Some(path.clone()),
                    side: "master",
                    errno: libc::ENOENT,
                    message: format!(
                        "{path} was renamed or removed while it was being sent; it is looked at again"
                    ),
                });
                let op = Op::Delete { path: path.clone() };
                let sent = self.send_plain(op, vec![Mutation::Remove(path)], fail, wire)?;
                (
                    Sent {
                        kind: SentKind::Other,
                        ..sent
                    },
                    false,
                )
            }
            FileOutcome::Unreadable(e) => {
                self.failures.push(Failure {
                    path: path.display(),
                    rel: Some(path.clone()),
                    side: "master",
                    errno: fsutil::errno_of(&e),
                    message: format!("reading {path} on the master: {e}"),
                });
                let sent = Sent {
                    ok: vec![],
                    fail: vec![],
                    wire: None,
                    force_fail: false,
                    kind: SentKind::Nothing,
                };
                (sent, false)
            }
        })
    }
}

/// The index row for `path` once the slave holds `entry`'s content there, planned as inode
/// `planned` (`linked`: with other names). A name replaced since the plan by a name of a
/// multiply-linked file got a copy of its own on the slave: a row with that inode would vouch
/// for a hard link the slave does not have (and no later window or crawl would look at it
/// again: journal seed 460080). It is unknown instead, so the next plan links it into its
/// group.
///
/// A file planned alone that got another name before it was read (journal seed 700042: a
/// hybrid crawl streamed it, then a `ln` made the second name, listed later in the same walk
/// and sent as a file of its own) went out alone too. Its row keeps the inode, so the plan of
/// the new name finds it among the inode's names, but not the ctime: the row vouches for no
/// link, and that plan compares it as changed and joins the two names on the slave.
fn content_row(path: &RelPath, entry: &Entry, planned: u64, linked: bool) -> Mutation {
    if entry.ino != planned && entry.nlink > 1 {
        Mutation::Poison(path.clone())
    } else if entry.nlink > 1 && !linked {
        let mut doubtful = entry.clone();
        (doubtful.ctime_sec, doubtful.ctime_nsec) = (0, 0);
        Mutation::Upsert(path.clone(), doubtful)
    } else {
        Mutation::Upsert(path.clone(), entry.clone())
    }
}

/// Whether a file planned alone has other names by the time it was read (see `content_row`).
fn linked_since_planned(entry: &Entry, linked: bool) -> bool {
    entry.nlink > 1 && !linked
}
