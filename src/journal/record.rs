//! Journal records: what happened to which path, in order. Pure types.

use crate::protocol::RelPath;

/// What a record says. Values are stored in journal.db; never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecOp {
    Create = 1,
    Mkdir = 2,
    Symlink = 3,
    Link = 4,
    Unlink = 5,
    Rmdir = 6,
    /// `path` was renamed to `path2`.
    Rename = 7,
    Data = 8,
    Meta = 9,
    /// Coverage was lost before this record (writer start, queue overflow, watch limit):
    /// the shipper must crawl before trusting later records alone.
    Gap = 10,
    /// Every change made before `ts_ns` is recorded before this record.
    Marker = 11,
    /// The writer stopped cleanly.
    Stop = 12,
    /// A name made (not a directory) and gone before the writer could look at it: it may
    /// have been another name of an existing file (a hard link), so what was written through
    /// it may have changed a name no record mentions.
    Unseen = 13,
}

impl RecOp {
    pub fn from_u8(v: u8) -> Option<RecOp> {
        use RecOp::*;
        Some(match v {
            1 => Create,
            2 => Mkdir,
            3 => Symlink,
            4 => Link,
            5 => Unlink,
            6 => Rmdir,
            7 => Rename,
            8 => Data,
            9 => Meta,
            10 => Gap,
            11 => Marker,
            12 => Stop,
            13 => Unseen,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use RecOp::*;
        match self {
            Create => "CREATE",
            Mkdir => "MKDIR",
            Symlink => "SYMLINK",
            Link => "LINK",
            Unlink => "UNLINK",
            Rmdir => "RMDIR",
            Rename => "RENAME",
            Data => "DATA",
            Meta => "META",
            Gap => "GAP",
            Marker => "MARKER",
            Stop => "STOP",
            Unseen => "UNSEEN",
        }
    }

    /// Whether the record names a path of the brick (markers, gaps and stops do not).
    pub fn has_path(self) -> bool {
        !matches!(self, RecOp::Gap | RecOp::Marker | RecOp::Stop)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Assigned by the store; 0 until appended.
    pub seq: u64,
    /// When the writer read the event (ns since the Unix epoch): never earlier than the change.
    pub ts_ns: i64,
    pub op: RecOp,
    pub path: RelPath,
    pub path2: Option<RelPath>,
    /// For GAP: why coverage was lost.
    pub note: Option<String>,
}

impl Record {
    pub fn new(op: RecOp, path: RelPath) -> Record {
        Record {
            seq: 0,
            ts_ns: now_ns(),
            op,
            path,
            path2: None,
            note: None,
        }
    }

    pub fn gap(why: &str) -> Record {
        Record {
            note: Some(why.to_string()),
            ..Record::new(RecOp::Gap, RelPath::root())
        }
    }
}

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}
