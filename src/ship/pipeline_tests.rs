//! Tests of the shipping pipeline against fake agents.
use super::*;
use crate::crawl::index::Mutation;
use crate::fsutil;
use crate::protocol::{FileBegin, FileEnd};
use crate::transport::conn::{FrameReader, FrameWriter};
use crate::transport::LinkHandle;
use std::os::unix::net::UnixStream;
use std::time::Duration;

struct NoHandle;
impl LinkHandle for NoHandle {
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    fn abort(&mut self) {}
}

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

/// Review hole 8 (issue 13): failback wrote whatever path a `FileBegin` from the DR side
/// named. A reply for a path the master did not ask for (or one sent twice) is refused.
#[test]
fn a_fetch_reply_for_a_path_not_asked_for_is_refused() {
    for sent in [vec!["evil"], vec!["asked", "asked"]] {
        let (m, a) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut r = FrameReader::new(Box::new(a.try_clone().unwrap()));
            let mut w = FrameWriter::new(Box::new(a));
            while !matches!(
                r.read(),
                Ok(Some(Message::Fetch { .. })) | Err(_) | Ok(None)
            ) {}
            for path in sent {
                let _ = w.send(&Message::FileBegin(FileBegin {
                    path: p(path),
                    meta: protocol::Meta {
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                        mtime_sec: 0,
                        mtime_nsec: 0,
                        xattrs: None,
                    },
                    size: 1,
                }));
                let _ = w.send(&Message::Chunk(vec![b'x']));
                let _ = w.send(&Message::FileEnd(FileEnd {
                    hash: *blake3::hash(b"x").as_bytes(),
                    commit: true,
                }));
            }
            let _ = w.send(&Message::FetchEnd);
            let _ = w.flush();
        });
        let dir = tempfile::tempdir().unwrap();
        let mut sh = Shipper::new(
            Client::over(
                FrameWriter::new(Box::new(m.try_clone().unwrap())),
                FrameReader::new(Box::new(m)),
                Box::new(NoHandle),
                "a hostile DR side".into(),
            ),
            fsutil::open_root(dir.path()).unwrap(),
            1,
            4,
            1 << 20,
        );
        let mut got = Vec::new();
        let err = sh
            .client
            .fetch(vec![p("asked")], |m| {
                got.push(m.name());
                Ok(())
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("not asked for"), "{err:#}");
        drop(sh);
        let _ = agent.join();
    }
}

/// A shipper on one end of a socket pair, with a fake agent on the other running `agent`.
type Against = (
    Shipper,
    Index,
    tempfile::TempDir,
    std::thread::JoinHandle<()>,
);

/// The plan's op for the file `path` stat'ed as `planned`.
fn file_op(path: &str, planned: Entry) -> PlannedOp {
    PlannedOp {
        op: PlanOp::File {
            path: p(path),
            entry: planned.clone(),
            known_hash: None,
            slave_meta: None,
            grew_from: None,
        },
        ok: vec![Mutation::Upsert(p(path), planned)],
        fail: vec![Mutation::Poison(p(path))],
    }
}

/// A fake agent that acknowledges one batch, then hangs up.
fn acks_one_batch(mut r: FrameReader, mut w: FrameWriter) {
    loop {
        match r.read() {
            Ok(Some(Message::BatchEnd(e))) => {
                w.send(&Message::Ack(protocol::Ack { id: e.id })).unwrap();
                w.flush().unwrap();
                return;
            }
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

fn against(agent: impl FnOnce(FrameReader, FrameWriter) + Send + 'static) -> Against {
    against_with(Box::new(NoHandle), agent)
}

/// A link whose abort waits for the transport's thread, as SSH's does: here, for the fake
/// agent to have written everything (`finished`), at most 10 s; `hung` says it did not.
struct JoiningHandle {
    finished: std::sync::mpsc::Receiver<()>,
    hung: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LinkHandle for JoiningHandle {
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
    fn abort(&mut self) {
        if self.finished.recv_timeout(Duration::from_secs(10)).is_err() {
            self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

fn against_with(
    handle: Box<dyn LinkHandle>,
    agent: impl FnOnce(FrameReader, FrameWriter) + Send + 'static,
) -> Against {
    let (m, a) = UnixStream::pair().unwrap();
    let t = std::thread::spawn(move || {
        agent(
            FrameReader::new(Box::new(a.try_clone().unwrap())),
            FrameWriter::new(Box::new(a)),
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let index = Index::open(&dir.path().join("index.db")).unwrap();
    let sh = Shipper::new(
        Client::over(
            FrameWriter::new(Box::new(m.try_clone().unwrap())),
            FrameReader::new(Box::new(m)),
            handle,
            "a hostile DR side".into(),
        ),
        fsutil::open_root(dir.path()).unwrap(),
        1,
        4,
        1 << 20,
    );
    (sh, index, dir, t)
}

/// Review hole 8 (issue 13): the master queued whatever the agent sent, unbounded, so a DR
/// side that floods it (here: acks, failures and heartbeats nobody asked for, or listings
/// without a request) could exhaust the master's memory. Each ends the connection at the
/// first message that answers nothing, naming it.
#[test]
fn a_flood_of_unasked_messages_ends_the_connection() {
    let floods: Vec<(Message, &str)> = vec![
        (Message::Ack(protocol::Ack { id: 1 }), "an Ack of batch 1"),
        (Message::Heartbeat, "a heartbeat"),
        (Message::Listing(Vec::new()), "Listing"),
        (
            Message::Failed(protocol::Failed {
                batch: 1,
                op: 0,
                path: p("x"),
                errno: 5,
                message: "no".into(),
            }),
            "a failure in batch 1",
        ),
    ];
    for (flood, needle) in floods {
        let (mut sh, index, _dir, agent) = against(move |_r, mut w| {
            // Sent for as long as the master reads: a million, or until it hangs up.
            for _ in 0..1_000_000 {
                if w.send(&flood).is_err() {
                    return;
                }
            }
            let _ = w.flush();
        });
        let err = sh.wait_one(&index).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(needle) && msg.contains("did not ask for"),
            "{needle:?}: {msg}"
        );
        drop(sh);
        agent.join().unwrap();
    }
}

/// A `Listing` of `n` entries of about 230 bytes each once decoded.
fn listing_of(n: usize) -> Message {
    let entry = protocol::ListEntry {
        path: p(&"x".repeat(100)),
        kind: 1,
        size: 0,
        meta: protocol::Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            xattrs: None,
        },
        target: None,
        hash: None,
        ino: 1,
        nlink: 1,
    };
    Message::Listing(vec![entry; n])
}

/// The reply to a request is bounded too: a listing larger than the budget (about 200 MiB
/// decoded, 256 messages) is read no faster than the master takes it, so what waits in the
/// queue stays under the budget (plus the message being admitted).
#[test]
fn a_reply_waits_for_the_master_to_take_it() {
    const CHUNKS: u64 = 256;
    const PER: usize = 4096;
    let chunk = listing_of(PER);
    let weight = chunk.weight();
    assert!(weight as u64 * CHUNKS > 3 * crate::client::inbound::REPLY_BUDGET as u64);
    let (mut sh, index, _dir, agent) = against(move |mut r, mut w| {
        while !matches!(r.read(), Ok(Some(Message::List { .. })) | Err(_) | Ok(None)) {}
        for _ in 0..CHUNKS {
            w.send(&chunk).unwrap();
        }
        w.send(&Message::ListEnd {
            entries: CHUNKS * PER as u64,
        })
        .unwrap();
        w.flush().unwrap();
    });
    let expect = sh.client.shared_expect();
    let mut most = 0;
    let n = sh
        .list_each(&index, false, None, &mut |_| {
            std::thread::sleep(Duration::from_millis(5));
            most = most.max(expect.queued());
            Ok(())
        })
        .unwrap();
    assert_eq!(n, CHUNKS * PER as u64);
    let budget = crate::client::inbound::REPLY_BUDGET;
    assert!(most <= budget + weight, "{most} bytes queued");
    assert!(
        most > budget / 2,
        "the agent was never ahead ({most} bytes queued)"
    );
    drop(sh);
    agent.join().unwrap();
}

/// Found in review: a shipper dropped while its reader waited for room for a reply (more than
/// the budget queued, the master gone on an error) left the reader waiting for good: it read
/// no more, so the transport's thread blocked handing it bytes, and an abort that joins that
/// thread (SSH) never returned. Dropping now lets the reader read on to the end.
#[test]
fn a_shipper_dropped_in_the_middle_of_a_large_reply_lets_its_reader_go() {
    let chunk = listing_of(4096);
    let (done, finished) = std::sync::mpsc::channel();
    let hung = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = JoiningHandle {
        finished,
        hung: hung.clone(),
    };
    let (mut sh, index, _dir, agent) = against_with(Box::new(handle), move |mut r, mut w| {
        while !matches!(r.read(), Ok(Some(Message::List { .. })) | Err(_) | Ok(None)) {}
        // Well past the reply budget: the reader has to wait for room part way.
        for _ in 0..256 {
            if w.send(&chunk).is_err() {
                break;
            }
        }
        let _ = w.flush();
        drop(w);
        let _ = done.send(());
    });
    let err = sh
        .list_each(&index, false, None, &mut |_| {
            std::thread::sleep(Duration::from_millis(200));
            anyhow::bail!("the master gives up on this listing")
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("gives up"));
    drop(sh);
    assert!(
        !hung.load(std::sync::atomic::Ordering::SeqCst),
        "the abort waited in vain: the dropped shipper's reader stopped reading"
    );
    agent.join().unwrap();
}

/// Found in review: a batch went in flight only once its last op was written, so a failure of
/// one of its first ops, reported while the rest was still being sent, was taken for a failure
/// in an unknown batch and ended the connection (again at every reconnection).
#[test]
fn a_failure_reported_while_its_batch_is_still_being_sent_is_recorded() {
    // About 9 MB of ops: far more than the writer buffers, so the agent reads the first op
    // (and answers) while the master is still writing the batch.
    const OPS: u32 = 3000;
    let (mut sh, index, _dir, agent) = against(|mut r, mut w| {
        let mut id = 0;
        let mut told = false;
        loop {
            match r.read() {
                Ok(Some(Message::BatchBegin(b))) => id = b.id,
                Ok(Some(Message::Op(op))) if !told => {
                    told = true;
                    w.send(&Message::Failed(protocol::Failed {
                        batch: id,
                        op: 0,
                        path: op.target().clone(),
                        errno: libc::EACCES,
                        message: "permission denied".into(),
                    }))
                    .unwrap();
                    w.flush().unwrap();
                }
                Ok(Some(Message::BatchEnd(e))) => {
                    // One batch: acknowledged, and the agent hangs up.
                    w.send(&Message::Ack(protocol::Ack { id: e.id })).unwrap();
                    w.flush().unwrap();
                    return;
                }
                Ok(Some(_)) => {}
                _ => return,
            }
        }
    });
    let ops: Vec<PlannedOp> = (0..OPS)
        .map(|i| PlannedOp {
            op: PlanOp::Op(Op::Mkdir {
                path: p(&format!("{}/d{i:05}", vec!["z".repeat(250); 12].join("/"))),
                meta: protocol::Meta {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                    xattrs: None,
                },
            }),
            ok: Vec::new(),
            fail: Vec::new(),
        })
        .collect();
    sh.ship(ops, &index, OPS, u64::MAX).unwrap();
    assert_eq!(sh.failures.len(), 1, "{:?}", sh.failures.len());
    assert!(sh.failures[0].message.contains("permission denied"));
    drop(sh);
    agent.join().unwrap();
}

/// Issue 12, journal seed 700042 (a hard-link group split for good): a hybrid crawl streamed
/// a file planned alone; an `ln` gave it a second name before the shipper read it, and the
/// crawl listed that name later, new, and sent it as a file of its own. The row of the first
/// name took the send-time stat, vouching for the link, so the plan of the second name found
/// both names equal and joined nothing. The row now keeps the inode but not the ctime: the
/// next plan compares it as changed and links the two; and the crawl passes again.
#[test]
fn a_file_linked_after_the_plan_is_not_recorded_as_linked() {
    let (mut sh, index, dir, agent) = against(acks_one_batch);
    let root = dir.path();
    std::fs::write(root.join("d"), vec![3u8; 4284]).unwrap();
    let brick = fsutil::open_root(root).unwrap();
    let planned = crate::walk::lstat_beneath(&brick, &p("d"), Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(planned.nlink, 1);
    // After the plan, before the shipper reads it.
    std::fs::hard_link(root.join("d"), root.join(".hidden")).unwrap();
    sh.ship(vec![file_op("d", planned)], &index, 100, u64::MAX)
        .unwrap();
    let now = crate::walk::lstat_beneath(&brick, &p("d"), Default::default())
        .unwrap()
        .unwrap();
    let row = index.get(&p("d")).unwrap().expect("a row for d");
    assert_eq!(row.ino, now.ino, "found among the inode's names");
    assert_eq!(
        row.change_to(&now),
        crate::entry::Change::Data,
        "the row vouches for the link the slave does not have: {row:?}"
    );
    assert!(sh.stats.requeued > 0, "a crawl passes again");
    drop(sh);
    agent.join().unwrap();
}

/// Issue 12, journal seed 460080 (about 1 live-mode sequence in 150 split a hard-link group
/// for good): a file planned as its own inode was replaced, before the shipper read it, by a
/// name of a multiply-linked file. The slave got a copy of its own, and the index row took the
/// inode just read, vouching for a hard link the slave did not have; no later window or crawl
/// looked at it again. The row is unknown now, so the next plan links the name into its group.
#[test]
fn a_name_replaced_by_a_hard_link_after_the_plan_is_not_recorded_as_linked() {
    let (mut sh, index, dir, agent) = against(acks_one_batch);
    let root = dir.path();
    std::fs::write(root.join("x"), vec![1u8; 1568]).unwrap();
    std::fs::write(root.join("a"), vec![2u8; 4450]).unwrap();
    let brick = fsutil::open_root(root).unwrap();
    let planned = crate::walk::lstat_beneath(&brick, &p("x"), Default::default())
        .unwrap()
        .unwrap();
    // After the plan, before the shipper reads it: `x` becomes a name of `a`'s inode.
    std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
    std::fs::rename(root.join("b"), root.join("x")).unwrap();
    let linked = crate::walk::lstat_beneath(&brick, &p("x"), Default::default())
        .unwrap()
        .unwrap();
    assert_eq!(linked.nlink, 2);
    sh.ship(vec![file_op("x", planned)], &index, 100, u64::MAX)
        .unwrap();
    let row = index.get(&p("x")).unwrap().expect("a row for x");
    assert!(
        row.ino != linked.ino,
        "the index vouches for x as a name of a's inode, which the slave's copy is not: {row:?}"
    );
    drop(sh);
    agent.join().unwrap();
}

/// Issue 16, journal seed 1301723: a directory's attributes were read at send time through
/// its path, but its parent had been renamed since the plan (and another directory took the
/// name): they went as "leave alone", while the row, from the plan's stat, vouched for them.
/// A parent's rename does not move the child's ctime, so nothing looked at it again and its
/// ACL never reached the slave. Now the row is stale and the path a failure, looked at again.
#[test]
fn attributes_of_a_directory_moved_since_the_plan_are_not_vouched_for() {
    let (mut sh, index, dir, agent) = against(acks_one_batch);
    sh.xattrs = crate::xattr::USER;
    let root = dir.path();
    std::fs::create_dir_all(root.join("p/b")).unwrap();
    let set = |p: &std::path::Path, v: &[u8]| {
        rustix::fs::setxattr(p, "user.a", v, rustix::fs::XattrFlags::empty())
    };
    if set(&root.join("p/b"), b"1").is_err() {
        eprintln!("no user xattrs here");
        return;
    }
    let brick = fsutil::open_root(root).unwrap();
    let planned = crate::walk::lstat_beneath(&brick, &p("p/b"), Default::default())
        .unwrap()
        .unwrap();
    // After the plan, before the send: the parent moves, and a new "p/b" appears.
    std::fs::rename(root.join("p"), root.join("q")).unwrap();
    std::fs::create_dir_all(root.join("p/b")).unwrap();
    set(&root.join("p/b"), b"2").unwrap();
    let op = PlannedOp {
        op: PlanOp::Op(Op::SetAttr {
            path: p("p/b"),
            meta: planned.meta(),
        }),
        ok: vec![Mutation::Upsert(p("p/b"), planned.clone())],
        fail: vec![Mutation::Poison(p("p/b"))],
    };
    sh.ship(vec![op], &index, 100, u64::MAX).unwrap();
    assert!(
        sh.failures.iter().any(|f| f.rel == Some(p("p/b"))),
        "{:?}",
        sh.failures
    );
    // The next window's rename moves the row along.
    index.apply(&[Mutation::Move(p("p"), p("q"))]).unwrap();
    let row = index.get(&p("q/b")).unwrap().expect("a row for q/b");
    let now = crate::walk::lstat_beneath(&brick, &p("q/b"), Default::default())
        .unwrap()
        .unwrap();
    assert_ne!(
        row.change_to(&now),
        crate::entry::Change::None,
        "the row vouches for attributes the slave did not get: {row:?}"
    );
    drop(sh);
    agent.join().unwrap();
}
