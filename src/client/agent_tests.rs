//! `Client` against a real agent (`agent::serve`) on a thread of this process, over a socket
//! pair: the handshake in both modes, requests and close, and the typed errors an operator
//! meets (Passive, a refusal worth retrying, a refusal that needs them).

use super::{Client, Error, Mode, Target};
use crate::agent::state::{AgentState, Role};
use crate::config::SyncOptions;
use crate::protocol::{Message, RelPath};
use crate::transport::{Link, LinkHandle, Transport};
use crate::volume::Brick;
use anyhow::{anyhow, Result};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// An agent is a process of its own (it checks that the SQLite files its process has open are
/// the ones it opened): these tests run one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The agent of `root` on a thread, as the local transport runs it in a child.
struct InProcess {
    root: PathBuf,
}

/// The agent's thread, and the master's end of the socket (shut down to abort).
struct Joined(Option<JoinHandle<Result<()>>>, UnixStream);

impl LinkHandle for Joined {
    fn close(&mut self) -> Result<()> {
        match self.0.take() {
            Some(h) => h.join().map_err(|_| anyhow!("the agent thread panicked"))?,
            None => Ok(()),
        }
    }
    fn abort(&mut self) {
        let _ = self.1.shutdown(Shutdown::Both);
    }
}

impl Transport for InProcess {
    fn connect(&self) -> Result<Link> {
        let (master, agent) = UnixStream::pair()?;
        let root = self.root.clone();
        let (output, end) = (agent.try_clone()?, agent.try_clone()?);
        // As when an agent process exits: its end of the socket closes whatever threads of it
        // (the read-ahead) still hold a descriptor.
        let h = std::thread::spawn(move || {
            let r = crate::agent::serve(&root, Box::new(agent), Box::new(output));
            let _ = end.shutdown(Shutdown::Both);
            r
        });
        Ok(Link {
            reader: Box::new(master.try_clone()?),
            writer: Box::new(master.try_clone()?),
            handle: Box::new(Joined(Some(h), master)),
        })
    }
    fn describe(&self) -> String {
        format!("in-process agent for {}", self.root.display())
    }
}

fn brick(node: &str, path: &Path) -> Brick {
    Brick {
        node: node.into(),
        path: path.to_path_buf(),
    }
}

fn connect(root: &Path, b: &Brick, epoch: u64, mode: &Mode) -> Result<Client, Error> {
    let t = InProcess {
        root: root.to_path_buf(),
    };
    let target = Target::local("s", &root.display().to_string());
    Client::connect_over(&t, &target, b, epoch, &SyncOptions::default(), mode).map(|(c, _)| c)
}

fn replicate(set: &str) -> Mode {
    Mode::Replicate {
        replica_set: Some(set.into()),
        shared_tree: false,
    }
}

/// The error a connection that should fail ended with.
fn refused(r: Result<Client, Error>) -> Error {
    match r {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => e,
    }
}

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).unwrap()
}

#[test]
fn a_reverse_client_lists_fetches_and_closes() {
    let _alone = alone();
    let d = tempfile::tempdir().unwrap();
    let (root, b) = (d.path().join("dr"), d.path().join("brick"));
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::write(root.join("a"), b"alpha").unwrap();
    std::fs::write(root.join("dir/b"), b"beta").unwrap();
    let mut c = connect(&root, &brick("n1", &b), 0, &Mode::Reverse).unwrap();
    let mut names: Vec<String> = c
        .list(false, 0)
        .unwrap()
        .into_iter()
        .map(|e| e.path.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "dir", "dir/b"]);
    assert_eq!(c.census().unwrap().0, 3);
    let mut content = Vec::new();
    c.fetch(vec![p("dir/b")], |m| {
        if let Message::Chunk(data) = m {
            content.extend_from_slice(&data);
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(content, b"beta");
    c.close().unwrap();
    // Reading is all a reverse connection did: the volume holds what it held.
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"alpha");
}

#[test]
fn another_brick_of_the_replica_set_is_passive_until_the_active_one_leaves() {
    let _alone = alone();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("dr");
    std::fs::create_dir_all(&root).unwrap();
    let (b1, b2) = (
        brick("n1", &d.path().join("b1")),
        brick("n2", &d.path().join("b2")),
    );
    let active = connect(&root, &b1, 0, &replicate("s#0")).unwrap();
    match connect(&root, &b2, 0, &replicate("s#0")) {
        Err(e @ Error::Passive { .. }) => {
            assert!(e.is_transient(), "a Passive brick asks again");
            let Error::Passive { active } = e else {
                unreachable!()
            };
            assert!(active.contains("n1"), "{active}");
        }
        Err(e) => panic!("expected Passive, got {e:#}"),
        Ok(_) => panic!("two Active bricks for one replica set"),
    }
    active.close().unwrap();
    connect(&root, &b2, 0, &replicate("s#0"))
        .expect("the set's lock goes with the Active connection")
        .close()
        .unwrap();
}

#[test]
fn a_missing_slave_root_is_refused_and_worth_retrying() {
    let _alone = alone();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("not-yet");
    let err = refused(connect(&root, &brick("n1", d.path()), 0, &replicate("s#0")));
    assert!(err.is_transient(), "{err:#}");
    match &err {
        Error::Refused { message, permanent } => {
            assert!(!permanent);
            assert!(message.contains("mkdir -p"), "{message}");
        }
        e => panic!("expected the agent's refusal, got {e:#}"),
    }
}

#[test]
fn a_promoted_volume_refuses_its_old_master_for_good() {
    let _alone = alone();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("dr");
    std::fs::create_dir_all(&root).unwrap();
    let b = brick("n1", &d.path().join("b1"));
    // A first connection makes the volume's state; then the DR site promotes it.
    connect(&root, &b, 0, &replicate("s#0"))
        .unwrap()
        .close()
        .unwrap();
    let sd = crate::agent::state::state_dir_for_operator(&root, "dr1").unwrap();
    AgentState::open_in(&sd)
        .unwrap()
        .set_role(Role::Primary)
        .unwrap();
    let err = refused(connect(&root, &b, 0, &replicate("s#0")));
    assert!(!err.is_transient(), "{err:#}");
    match &err {
        Error::Refused { message, permanent } => {
            assert!(permanent);
            assert!(message.contains("resync --reverse"), "{message}");
        }
        e => panic!("expected the agent's refusal, got {e:#}"),
    }
    // Through anyhow, as the worker sees it.
    assert!(!super::is_transient(&anyhow::Error::new(err)));
    // A reverse connection (verify, failback) is still accepted.
    connect(&root, &b, 0, &Mode::Reverse)
        .unwrap()
        .close()
        .unwrap();
}
