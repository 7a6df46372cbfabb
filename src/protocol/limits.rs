//! What a decoded message may hold, and what it weighs: the limits a decoder checks beyond
//! the types (so that no frame takes more memory than its size suggests), and the bytes a
//! queue of decoded messages is charged for each.

use super::message::{FileAppend, FileBegin, Message, Meta, Op};
use super::path::RelPath;

impl Meta {
    /// Linux's limits on extended attributes, and `xattr::ENTRY_MAX` for one entry: what
    /// decodes must not take more memory than its frame suggests.
    pub fn check_limits(&self) -> Result<(), String> {
        use super::{
            XATTR_ENTRY_MAX as ENTRY_MAX, XATTR_NAME_MAX as NAME_MAX, XATTR_VALUE_MAX as VALUE_MAX,
        };
        let Some(v) = &self.xattrs else {
            return Ok(());
        };
        let total: usize = v.iter().map(|x| x.name.len() + x.value.len()).sum();
        if v.len() > ENTRY_MAX / 8
            || total > ENTRY_MAX
            || v.iter()
                .any(|x| x.name.len() > NAME_MAX || x.value.len() > VALUE_MAX)
        {
            return Err(format!(
                "{} extended attributes of {total} bytes on one entry, over the limits (names of {NAME_MAX} bytes, values of {VALUE_MAX}, {ENTRY_MAX} in all)",
                v.len()
            ));
        }
        Ok(())
    }

    /// Bytes of its extended attributes (what a queue of messages holding it is charged).
    pub fn weight(&self) -> usize {
        self.xattrs.as_deref().map_or(0, |v| {
            v.iter().map(|x| 64 + x.name.len() + x.value.len()).sum()
        })
    }
}

/// Longest symlink target accepted (Linux: PATH_MAX less the NUL).
pub const MAX_SYMLINK_TARGET: usize = 4095;
/// Longest free text (names in `Hello`/`Welcome`, error messages) accepted.
pub const MAX_TEXT: usize = 64 << 10;

/// Bytes a decoded message holds beyond its variable parts (enum, struct, allocation overhead).
const FIXED_WEIGHT: usize = 128;

fn paths_weight<'a>(paths: impl IntoIterator<Item = &'a RelPath>) -> usize {
    paths
        .into_iter()
        .map(|p| p.as_bytes().len() + 32)
        .sum::<usize>()
}

impl Message {
    /// About how many bytes this message holds once decoded: what a reader that queues
    /// messages charges against its memory budget.
    pub fn weight(&self) -> usize {
        FIXED_WEIGHT
            + match self {
                Message::Chunk(d) => d.len(),
                Message::Op(op) => {
                    op.target().as_bytes().len()
                        + match op {
                            Op::Symlink { target, meta, .. } => target.len() + meta.weight(),
                            Op::Link { target, .. } => target.as_bytes().len(),
                            Op::Mkdir { meta, .. }
                            | Op::Special { meta, .. }
                            | Op::SetAttr { meta, .. } => meta.weight(),
                            _ => 0,
                        }
                }
                Message::FileBegin(f) => f.path.as_bytes().len() + f.meta.weight(),
                Message::FileAppend(f) => f.path.as_bytes().len() + f.meta.weight(),
                Message::FileDelta(f) => f.path.as_bytes().len() + f.meta.weight(),
                Message::Signatures(v) => v
                    .iter()
                    .map(|a| FIXED_WEIGHT + a.path.as_bytes().len())
                    .sum(),
                Message::Signature(s) => s.sums.len(),
                Message::List { paths, .. } => paths.as_deref().map_or(0, paths_weight),
                Message::Fetch { paths } | Message::ChangedPaths(paths) => paths_weight(paths),
                Message::Listing(entries) => entries
                    .iter()
                    .map(|e| {
                        FIXED_WEIGHT
                            + e.path.as_bytes().len()
                            + e.target.as_ref().map_or(0, Vec::len)
                            + e.meta.weight()
                    })
                    .sum(),
                Message::Failed(f) => f.path.as_bytes().len() + f.message.len(),
                Message::Error(e) => e.message.len(),
                Message::Hello(h) => {
                    h.georep_version.len()
                        + h.session.len()
                        + h.master_node.len()
                        + h.brick.len()
                        + h.slave_volume.len()
                        + h.replica_set.len()
                }
                Message::Welcome(w) => {
                    w.georep_version.len()
                        + w.volume_id.len()
                        + w.slave_host.len()
                        + w.passive_to.as_ref().map_or(0, String::len)
                        + w.previous_active.as_ref().map_or(0, String::len)
                }
                _ => 0,
            }
    }

    /// Limits the codec enforces beyond what the types express: symlink targets within
    /// `MAX_SYMLINK_TARGET`, free text within `MAX_TEXT`.
    pub fn check_limits(&self) -> Result<(), String> {
        let target = |t: &[u8]| {
            if t.len() > MAX_SYMLINK_TARGET {
                Err(format!(
                    "symlink target of {} bytes, over the {MAX_SYMLINK_TARGET}-byte limit",
                    t.len()
                ))
            } else {
                Ok(())
            }
        };
        let text = |what: &str, s: &str| {
            if s.len() > MAX_TEXT {
                Err(format!(
                    "{what} of {} bytes, over the {MAX_TEXT}-byte limit",
                    s.len()
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Message::Op(Op::Symlink {
                target: t, meta, ..
            }) => target(t).and_then(|()| meta.check_limits()),
            Message::Listing(entries) => entries.iter().try_for_each(|e| {
                e.target.as_deref().map_or(Ok(()), target)?;
                e.meta.check_limits()
            }),
            Message::Op(
                Op::Mkdir { meta, .. } | Op::Special { meta, .. } | Op::SetAttr { meta, .. },
            ) => meta.check_limits(),
            Message::FileBegin(FileBegin { meta, .. })
            | Message::FileAppend(FileAppend { meta, .. }) => meta.check_limits(),
            Message::Failed(f) => text("failure message", &f.message),
            Message::Error(e) => text("error message", &e.message),
            Message::Signatures(v) if v.len() > super::MAX_LIST_PATHS => Err(format!(
                "{} signature requests in one message, over the limit of {}",
                v.len(),
                super::MAX_LIST_PATHS
            )),
            Message::Signature(sig)
                if sig.sums.len() > crate::delta::SUMS_PER_MESSAGE * crate::delta::SUM_LEN
                    || sig.sums.len() % crate::delta::SUM_LEN != 0
                    || !(crate::delta::MIN_BLOCK..=crate::delta::MAX_BLOCK)
                        .contains(&sig.block) =>
            {
                Err(format!(
                    "a signature of {} bytes of sums of {}-byte blocks, outside the limits",
                    sig.sums.len(),
                    sig.block
                ))
            }
            Message::FileDelta(f) => {
                if !(crate::delta::MIN_BLOCK..=crate::delta::MAX_BLOCK).contains(&f.block) {
                    return Err(format!(
                        "a delta of {}-byte blocks, outside the limits",
                        f.block
                    ));
                }
                f.meta.check_limits()
            }
            Message::Hello(h) => [
                &h.georep_version,
                &h.session,
                &h.master_node,
                &h.brick,
                &h.slave_volume,
                &h.replica_set,
            ]
            .into_iter()
            .try_for_each(|s| text("a Hello field", s)),
            Message::Welcome(w) => [&w.georep_version, &w.volume_id, &w.slave_host]
                .into_iter()
                .chain(w.passive_to.as_ref())
                .chain(w.previous_active.as_ref())
                .chain(&w.replicated_from)
                .try_for_each(|s| text("a Welcome field", s))
                .and_then(|()| {
                    if w.replicated_from.len() > crate::protocol::MAX_REPLICATED_FROM {
                        Err(format!(
                            "a Welcome naming {} bricks, over the {} limit",
                            w.replicated_from.len(),
                            crate::protocol::MAX_REPLICATED_FROM
                        ))
                    } else {
                        Ok(())
                    }
                }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorMsg;

    fn p(s: &str) -> RelPath {
        RelPath::new(s.as_bytes().to_vec()).unwrap()
    }

    /// The read-ahead's budget counts what a message holds, not a flat 128 bytes.
    #[test]
    fn weight_counts_the_variable_parts() {
        let meta = Meta {
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            xattrs: None,
        };
        let link = Message::Op(Op::Symlink {
            path: p("l"),
            target: vec![b'x'; 4000],
            meta,
        });
        assert!(link.weight() >= 4000);
        let list = Message::Fetch {
            paths: (0..100).map(|i| p(&format!("{i:0>200}"))).collect(),
        };
        assert!(list.weight() >= 100 * 200);
        assert!(Message::Chunk(vec![0; 1 << 20]).weight() >= 1 << 20);
        assert!(Message::Heartbeat.weight() > 0);
    }

    #[test]
    fn limits_beyond_the_types() {
        let meta = Meta {
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            xattrs: None,
        };
        let link = |n| {
            Message::Op(Op::Symlink {
                path: p("l"),
                target: vec![b'x'; n],
                meta: meta.clone(),
            })
        };
        assert!(link(MAX_SYMLINK_TARGET).check_limits().is_ok());
        assert!(link(MAX_SYMLINK_TARGET + 1).check_limits().is_err());
        let err = Message::Error(ErrorMsg {
            message: "e".repeat(MAX_TEXT + 1),
            permanent: false,
        });
        assert!(err.check_limits().is_err());
    }
}
