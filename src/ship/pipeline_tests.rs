//! Tests of the shipping pipeline against fake agents.
use super::*;
use std::os::unix::net::UnixStream;

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
        let index = Index::open(&dir.path().join("index.db")).unwrap();
        let mut sh = Shipper::new(
            FrameWriter::new(Box::new(m.try_clone().unwrap())),
            FrameReader::new(Box::new(m)),
            Box::new(NoHandle),
            fsutil::open_root(dir.path()).unwrap(),
            1,
            4,
            1 << 20,
            "a hostile DR side".into(),
        );
        let mut got = Vec::new();
        let err = sh
            .fetch(&index, vec![p("asked")], |m| {
                got.push(m.name());
                Ok(())
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("not asked for"), "{err:#}");
        drop(sh);
        let _ = agent.join();
    }
}
