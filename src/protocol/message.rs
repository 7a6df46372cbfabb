//! The protocol's messages: one type per message, one enum over them. No I/O here.

use super::path::RelPath;
use serde::{Deserialize, Serialize};

/// One extended attribute (a POSIX ACL is `system.posix_acl_access`/`_default`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// Metadata carried with every entry the slave creates or updates.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// The entry's extended attributes within the session's scope (`Hello::xattrs`), sorted by
    /// name: the slave's entry gets exactly these. `None`: not read, leave them as they are.
    pub xattrs: Option<Vec<Xattr>>,
}

/// Kinds of special files the slave can create with mknod.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialKind {
    Fifo,
    Char,
    Block,
}

/// Master → agent, first frame: who is connecting and how.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    pub protocol: u32,
    pub georep_version: String,
    pub session: String,
    pub master_node: String,
    pub brick: String,
    pub slave_volume: String,
    pub epoch: u64,
    /// zstd level of the master → agent stream after the handshake; 0 = uncompressed.
    pub compression: i32,
    /// Replica set of the brick (`<session>#<n>`) on replica volumes, empty otherwise: the agent
    /// lets one brick per set be Active at a time.
    pub replica_set: String,
    /// Days to keep deleted and overwritten files in `.georep/trash/`; 0 = off.
    pub trash_days: u32,
    /// `MODE_REPLICATE`, or `MODE_REVERSE`: read the slave (List, Fetch) and Demote it, write
    /// nothing; accepted from a fenced master (that is how it recovers).
    pub mode: u8,
    /// How long the agent may wait for a byte from this master before it gives the connection
    /// up, freeing its locks for another brick of the replica set (the master heartbeats at a
    /// quarter of it at most); 0 = `SILENCE_LIMIT`. Clamped to `SILENCE_MIN..=SILENCE_MAX`.
    pub silence_ms: u32,
    /// Extended attribute namespaces the master replicates (`crate::xattr` bits).
    pub xattrs: u8,
    /// Channels the master would stripe its stream over (1 = one; at most `MAX_CHANNELS`).
    pub channels: u8,
    /// The slave tree is shared with the bricks of other replica sets (a distributed volume):
    /// each has every directory, with its own mtime, and clients see the latest; the agent
    /// gives a directory the latest time any brick shipped for it.
    pub shared_tree: bool,
}

/// The most channels one connection's stream is striped over.
pub const MAX_CHANNELS: u8 = 16;

pub const MODE_REPLICATE: u8 = 0;
pub const MODE_REVERSE: u8 = 1;

/// Agent → master answer to `Hello`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Welcome {
    pub protocol: u32,
    pub georep_version: String,
    pub volume_id: String,
    pub epoch: u64,
    /// Highest batch id this agent has made durable for the connecting brick (0 = none).
    pub last_batch: u64,
    pub slave_host: String,
    /// Set when another brick of the same replica set is Active (its `node:brick`): this
    /// connection is Passive, the agent closes it and the master retries later.
    pub passive_to: Option<String>,
    /// The brick that was last Active for this replica set, when it was another one: the master
    /// must re-read the slave before trusting its own index (takeover).
    pub previous_active: Option<String>,
    /// That brick's last stime acknowledged here (0 = none): every change it made before then
    /// is on the slave; a file changed later may be there in another version with the same
    /// size and mtime, which the takeover must not adopt unchecked.
    pub previous_stime_ns: i64,
    /// Master bricks (`node:brick`) that have made batches durable on this volume, at most
    /// `MAX_REPLICATED_FROM`: `create` knows a slave it may replicate onto without `force`.
    pub replicated_from: Vec<String>,
    /// The part of `Hello::xattrs` this agent applies (its privileges and the DR filesystem
    /// allow), and why not the rest.
    pub xattrs: u8,
    pub xattr_warning: Option<String>,
    /// Where further channels of this connection join it (`Message::Join`), when the master
    /// asked for several and this agent takes them; the master then says how many came
    /// (`Message::Stripe`) before anything else.
    pub join: Option<JoinOffer>,
    /// The slave root held nothing but `.georep` when the connection began (Active replicate
    /// connections): a first sync need not list it.
    pub empty: bool,
}

/// Where a connection's further channels join it: a Unix socket in the abstract namespace
/// (`name`: visible to every local user) and a secret each join must repeat (`token`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JoinOffer {
    pub name: String,
    pub token: [u8; 16],
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BatchBegin {
    pub id: u64,
    /// Journal sequence range covered (0, 0 for crawl batches).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Newest change time covered, ns since the epoch (stime candidate).
    pub max_ts_ns: i64,
    /// Number of ops (`Op` messages and whole files) that follow before `BatchEnd`.
    pub ops: u32,
    /// Total file content bytes that follow.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BatchEnd {
    pub id: u64,
    pub ops: u32,
}

/// Entry operations. Each is idempotent on the slave.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Op {
    /// Make `path` a directory (replacing a non-directory there) with this owner and mode.
    Mkdir { path: RelPath, meta: Meta },
    /// Make `path` a symlink to `target` (never followed by the agent).
    Symlink {
        path: RelPath,
        target: Vec<u8>,
        meta: Meta,
    },
    /// Make `path` a hard link to the existing `target`.
    Link { path: RelPath, target: RelPath },
    /// Make `path` a FIFO or device node.
    Special {
        path: RelPath,
        kind: SpecialKind,
        rdev: u64,
        meta: Meta,
    },
    /// Remove `path` and everything beneath it; absent is fine.
    Delete { path: RelPath },
    /// Move `from` aside into the agent's stash as `slot` (first half of a rename).
    Stash { from: RelPath, slot: u64 },
    /// Move stash `slot` to `to`, replacing what is there (second half of a rename).
    Unstash { slot: u64, to: RelPath },
    /// Set owner, mode (not on symlinks) and mtime of an existing entry.
    SetAttr { path: RelPath, meta: Meta },
    /// Remove the directory `path` if it is empty; absent, not empty, or not a directory is
    /// fine. A brick of a distributed volume removes its own entries of a directory with
    /// `Delete`s, then the directory with this: what other bricks still have there stays.
    Rmdir { path: RelPath },
}

impl Op {
    /// The path this op leaves in a new state on the slave.
    pub fn target(&self) -> &RelPath {
        match self {
            Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Link { path, .. }
            | Op::Special { path, .. }
            | Op::Delete { path }
            | Op::Rmdir { path }
            | Op::SetAttr { path, .. } => path,
            Op::Stash { from, .. } => from,
            Op::Unstash { to, .. } => to,
        }
    }
}

/// Start of a regular file's content; `Chunk`s of exactly `size` bytes follow, then `FileEnd`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FileBegin {
    pub path: RelPath,
    pub meta: Meta,
    pub size: u64,
}

/// A file whose new content is the slave's current copy at `path`, exactly `base` bytes long,
/// followed by `size - base` bytes sent as `Chunk`s; then `FileEnd` with the hash of the whole.
/// What an append to a log or an append-only store costs: its tail.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FileAppend {
    pub path: RelPath,
    pub meta: Meta,
    pub size: u64,
    pub base: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FileEnd {
    /// blake3 of the content.
    pub hash: [u8; 32],
    /// False when the file changed while the master read it: the agent discards the copy.
    pub commit: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ack {
    pub id: u64,
}

/// One op of a batch could not be applied; the rest of the batch was.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Failed {
    pub batch: u64,
    /// Index of the op within its batch (0-based, files count as one op).
    pub op: u32,
    pub path: RelPath,
    pub errno: i32,
    pub message: String,
}

/// One entry of the slave's tree, as the agent lists it for the master (takeover, verify).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListEntry {
    pub path: RelPath,
    /// `crawl::entry::Kind` as a number (1 file, 2 dir, 3 symlink, 4 fifo, 5 char, 6 block).
    pub kind: u8,
    pub size: u64,
    pub meta: Meta,
    pub target: Option<Vec<u8>>,
    /// blake3 of a regular file's content, when the listing was asked with `checksum`.
    pub hash: Option<[u8; 32]>,
    /// The slave's inode number and link count: names of one inode form a hard-link group.
    pub ino: u64,
    pub nlink: u32,
}

/// Fatal error: the sender closes the connection after it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorMsg {
    pub message: String,
    /// Retrying cannot help until an operator acts (the message says what to do): the master
    /// retries slowly instead of backing off as from a broken link.
    pub permanent: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Box<Welcome>),
    BatchBegin(BatchBegin),
    Op(Op),
    FileBegin(FileBegin),
    /// File content; encoded as a raw frame, not through serde.
    Chunk(Vec<u8>),
    FileEnd(FileEnd),
    BatchEnd(BatchEnd),
    Ack(Ack),
    Failed(Failed),
    Error(ErrorMsg),
    Heartbeat,
    Bye,
    /// Master → agent, between batches: list the slave tree, or only `paths` (those that
    /// exist; at most `MAX_LIST_PATHS`), answered by `Listing`s and `ListEnd`.
    List {
        checksum: bool,
        paths: Option<Vec<RelPath>>,
        /// Extended attribute namespaces to list with each entry (`crate::xattr` bits; 0 =
        /// none, `ListEntry::meta.xattrs` is then `None`).
        xattrs: u8,
    },
    Listing(Vec<ListEntry>),
    ListEnd {
        entries: u64,
    },
    /// Reverse mode: send these files (`FileBegin`, `Chunk`s, `FileEnd` each, or `Failed` for a
    /// path that is not a readable regular file), then `FetchEnd`.
    Fetch {
        paths: Vec<RelPath>,
    },
    FetchEnd,
    /// Reverse mode, at failback: make the volume a read-only slave again (epoch bump).
    Demote,
    Demoted {
        epoch: u64,
    },
    /// Reverse mode: the paths the DR-side journal recorded since failover, as
    /// `ChangedPaths` frames, then `ChangesEnd` (`complete` = the journal has no gap).
    Changes {
        /// Journal sequence already brought back by an earlier pass.
        after: u64,
    },
    ChangedPaths(Vec<RelPath>),
    ChangesEnd {
        complete: bool,
        /// Last journal sequence covered.
        last: u64,
    },
    /// Master → agent, in a batch, in place of `FileBegin`: see `FileAppend`.
    FileAppend(FileAppend),
    /// Master → agent, inside a file's content: this many zero bytes, a hole in a sparse file.
    /// The agent leaves them unallocated; they count in the file's size and hash as zeros.
    Hole(u64),
    /// Master → agent, anywhere: sum the blocks of these files (`SigAsk`), answered by
    /// `Signature`s, so that changed files can go as deltas. At most `MAX_LIST_PATHS`.
    Signatures(Vec<SigAsk>),
    /// Agent → master: the next block sums of the copy a `SigAsk` named.
    Signature(Signature),
    /// Master → agent, in place of `FileBegin`: the new content is made of blocks of the
    /// slave's copy at `path` (`Copy`) and literal `Chunk`s, then `FileEnd`.
    FileDelta(FileDelta),
    /// Master → agent, inside a `FileDelta`'s content: `count` blocks of the base from block
    /// `first` on.
    Copy {
        first: u32,
        count: u32,
    },
    /// Master → agent, the first message of a further channel of a connection: hand this
    /// channel's input to the agent serving the connection that made `offer`
    /// (`Welcome::join`), as its channel `index` (1-based; 0 is that connection's own).
    Join {
        offer: JoinOffer,
        index: u8,
    },
    /// Master → agent, right after a `Welcome` that offered `join`: from the next byte on, the
    /// stream is striped over this many channels (the connection's own first), every channel
    /// after the first having sent its `Join`; 1 = not striped.
    Stripe {
        channels: u8,
    },
}

/// One file to sum (`Message::Signatures`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct SigAsk {
    pub token: u64,
    pub path: RelPath,
    /// The most sums the master takes for it: the agent chooses blocks big enough (or says
    /// it has no copy to sum).
    pub max_sums: u32,
}

/// Block sums of a slave copy, in order, in parts of at most `delta::SUMS_PER_MESSAGE`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Signature {
    pub token: u64,
    /// The block size the agent chose (`delta::block_size` of its copy's size).
    pub block: u32,
    /// Packed (`delta::pack`): `delta::SUM_LEN` bytes a block.
    pub sums: Vec<u8>,
    /// The last part: `Some(size)` of the copy summed, or `None` when there is no regular
    /// file to sum at the path (the master sends the file whole).
    pub done: Option<Option<u64>>,
}

/// A file rebuilt from the slave's copy at `path` (exactly `base` bytes, in blocks of `block`)
/// and what follows: `Copy` references and `Chunk`s totalling `size` bytes.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FileDelta {
    pub path: RelPath,
    pub meta: Meta,
    pub size: u64,
    pub base: u64,
    pub block: u32,
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Welcome(_) => "Welcome",
            Message::BatchBegin(_) => "BatchBegin",
            Message::Op(_) => "Op",
            Message::FileBegin(_) => "FileBegin",
            Message::Chunk(_) => "Chunk",
            Message::FileEnd(_) => "FileEnd",
            Message::BatchEnd(_) => "BatchEnd",
            Message::Ack(_) => "Ack",
            Message::Failed(_) => "Failed",
            Message::Error(_) => "Error",
            Message::Heartbeat => "Heartbeat",
            Message::List { .. } => "List",
            Message::Listing(_) => "Listing",
            Message::ListEnd { .. } => "ListEnd",
            Message::Fetch { .. } => "Fetch",
            Message::FetchEnd => "FetchEnd",
            Message::Demote => "Demote",
            Message::Demoted { .. } => "Demoted",
            Message::Changes { .. } => "Changes",
            Message::ChangedPaths(_) => "ChangedPaths",
            Message::ChangesEnd { .. } => "ChangesEnd",
            Message::FileAppend(_) => "FileAppend",
            Message::Hole(_) => "Hole",
            Message::Signatures(_) => "Signatures",
            Message::Signature(_) => "Signature",
            Message::FileDelta(_) => "FileDelta",
            Message::Copy { .. } => "Copy",
            Message::Join { .. } => "Join",
            Message::Stripe { .. } => "Stripe",
            Message::Bye => "Bye",
        }
    }
}
