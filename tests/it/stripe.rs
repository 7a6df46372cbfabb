//! A connection's stream striped over several channels (issue 16, `channels`): the agent puts
//! the pieces back in order whatever channel carries them, only its own channels may join, and
//! a channel lost mid-stream ends the connection, after which the retry converges.

use crate::agent_hostile::{begin, enc, end, hello_fields};
use crate::util::*;
use georep::protocol::*;
use georep::transport::conn::{BoxRead, BoxWrite, FrameReader};
use georep::transport::stripe::StripedSink;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn agent(g: &Georep, root: &Path) -> Command {
    let mut c = g.cmd();
    c.args(["agent", "--volume", root.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// An agent after a handshake asking for `channels`, and the join name its Welcome offers.
fn serving(g: &Georep, channels: u8) -> (Child, FrameReader, Option<String>) {
    let mut c = agent(g, &g.slave()).spawn().unwrap();
    let mut head = PREAMBLE.to_vec();
    head.extend(enc(&Message::Hello(Hello {
        channels,
        ..hello_fields(PROTOCOL_VERSION)
    })));
    c.stdin.as_mut().unwrap().write_all(&head).unwrap();
    let mut r = FrameReader::new(Box::new(c.stdout.take().unwrap()) as BoxRead);
    r.expect_preamble().unwrap();
    let join = match r.read().unwrap() {
        Some(Message::Welcome(w)) => w.join,
        other => panic!("expected Welcome, got {other:?}"),
    };
    (c, r, join)
}

/// A further channel: an agent started by `cmd` that is told to join `name` as `index`.
fn joining(mut cmd: Command, name: &str, index: u8) -> Child {
    let mut c = cmd.spawn().unwrap();
    let mut head = PREAMBLE.to_vec();
    head.extend(enc(&Message::Join {
        name: name.into(),
        index,
    }));
    c.stdin.as_mut().unwrap().write_all(&head).unwrap();
    c
}

fn file_frames(path: &str, data: &[u8]) -> Vec<u8> {
    let mut v = enc(&Message::FileBegin(FileBegin {
        path: crate::agent_hostile::p(path),
        meta: Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            xattrs: None,
        },
        size: data.len() as u64,
    }));
    for c in data.chunks(1 << 20) {
        v.extend(enc(&Message::Chunk(c.to_vec())));
    }
    v.extend(enc(&Message::FileEnd(FileEnd {
        hash: *blake3::hash(data).as_bytes(),
        commit: true,
    })));
    v
}

fn stderr_of(c: Child) -> String {
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The agent reads a batch striped over three channels (pieces of every size, the big file's
/// content spread over all of them) and acknowledges it; the files are what was sent.
#[test]
fn an_agent_puts_a_striped_stream_back_in_order() {
    let g = Georep::new();
    let (mut primary, mut replies, join) = serving(&g, 3);
    let name = join.expect("a replicate connection that asks for channels is offered a join");
    let joined: Vec<Child> = (1..3)
        .map(|i| joining(agent(&g, &g.slave()), &name, i))
        .collect();
    let big = crate::delta::noise(5 << 20, 9);
    let mut body = begin(1, 41);
    for i in 0..40 {
        body.extend(file_frames(
            &format!("small-{i}"),
            format!("file {i}").as_bytes(),
        ));
    }
    body.extend(file_frames("big", &big));
    body.extend(end(1, 41));
    body.extend(enc(&Message::Bye));

    let mut own = primary.stdin.take().unwrap();
    own.write_all(&enc(&Message::Stripe { channels: 3 }))
        .unwrap();
    let mut channels: Vec<BoxWrite> = vec![Box::new(own)];
    let mut joined_children = Vec::new();
    for mut c in joined {
        channels.push(Box::new(c.stdin.take().unwrap()));
        joined_children.push(c);
    }
    let mut sink = StripedSink::new(channels);
    // Pieces of uneven sizes, as the frame writer's flushes make them.
    let mut at = 0;
    for (k, size) in [7usize, 70_000, 1 << 20, 3, 300_000]
        .iter()
        .cycle()
        .enumerate()
    {
        if at >= body.len() {
            break;
        }
        let piece = body[at..(at + size).min(body.len())].to_vec();
        at += piece.len();
        use georep::transport::conn::Sink;
        if k % 2 == 0 {
            Sink::write_all(&mut sink, &piece).unwrap();
        } else {
            sink.send_vec(piece).unwrap();
        }
    }
    georep::transport::conn::Sink::flush(&mut sink).unwrap();
    drop(sink);
    let mut acked = false;
    while let Some(m) = replies.read().unwrap() {
        match m {
            Message::Ack(a) => {
                assert_eq!(a.id, 1);
                acked = true;
            }
            Message::Failed(f) => panic!("{f:?}"),
            Message::Error(e) => panic!("agent: {}", e.message),
            _ => {}
        }
    }
    assert!(acked, "batch 1 acknowledged");
    assert!(primary.wait().unwrap().success());
    for c in joined_children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for i in 0..40 {
        assert_eq!(
            std::fs::read(g.slave().join(format!("small-{i}"))).unwrap(),
            format!("file {i}").as_bytes()
        );
    }
    assert!(std::fs::read(g.slave().join("big")).unwrap() == big);
}

/// Joins that are not the connection's own channels are refused and nothing is applied: a
/// process of another user, the agent of another volume, a channel index given twice or out
/// of range, a stripe of more channels than the protocol allows.
#[test]
fn only_the_connections_own_channels_may_join() {
    let g = Georep::new();
    let refused = |joins: &dyn Fn(&str) -> Vec<Child>, channels: u8, says: &str| {
        let (mut primary, _r, join) = serving(&g, 3);
        let name = join.unwrap();
        let children = joins(&name);
        let mut own = primary.stdin.take().unwrap();
        let mut input = enc(&Message::Stripe { channels });
        // A batch that must not be applied (it would come striped; a refusal comes first).
        input.extend(begin(1, 1));
        input.extend(file_frames("applied", b"must not be"));
        input.extend(end(1, 1));
        let _ = own.write_all(&input);
        let err = stderr_of(primary);
        drop(own);
        assert!(err.contains(says), "refusal says {says:?}: {err}");
        for c in children {
            let _ = c.wait_with_output();
        }
        assert!(!g.slave().join("applied").exists());
    };
    // Another user (nobody) running the agent command.
    if is_root() {
        refused(
            &|name| {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(bin())
                    .args(["agent", "--volume", g.slave().to_str().unwrap()])
                    .env("GEOREP_HOME", "/nonexistent")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                vec![joining(c, name, 1)]
            },
            2,
            "uid 65534",
        );
    }
    // The agent of another slave volume.
    let other = g.path("other-volume");
    std::fs::create_dir_all(&other).unwrap();
    refused(
        &|name| vec![joining(agent(&g, &other), name, 1)],
        2,
        "agent of another volume",
    );
    // Channel 1 twice.
    refused(
        &|name| {
            vec![
                joining(agent(&g, &g.slave()), name, 1),
                joining(agent(&g, &g.slave()), name, 1),
            ]
        },
        3,
        "joined the stripe twice",
    );
    // Channel 5 of a stripe of 2.
    refused(
        &|name| vec![joining(agent(&g, &g.slave()), name, 5)],
        2,
        "channel 5 joined a stripe of 2 channels",
    );
    // A stripe over more channels than there may be.
    refused(&|_| Vec::new(), MAX_CHANNELS + 1, "a stripe of 17 channels");
}

/// Over OpenSSH with four channels: a further channel's agent killed mid-stream ends the
/// connection; the worker reconnects and the DR copy converges with nothing lost.
#[test]
fn a_channel_lost_mid_stream_ends_the_connection_and_the_retry_converges() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let slave = sshd.slave(g.slave().to_str().unwrap());
    let m = g.master();
    let ms = m.to_str().unwrap().to_string();
    let o = g
        .cmd()
        .args(["create", &ms, &slave, "push-pem", "--identity"])
        .arg(&sshd.operator_key)
        .arg("--remote-georep")
        .arg(bin())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    g.ok(&["config", &ms, &slave, "channels", "4"]);
    // Slow enough to be caught mid-stream.
    g.ok(&["config", &ms, &slave, "bwlimit", "4M"]);
    for i in 0..24 {
        write_random(&m.join(format!("data/f{i:02}")), 1 << 20, i);
    }
    let mut s = Session { g: &g, child: None };
    s.run_with_slave(&slave);
    let joined_agents = || joined_agents(&g.slave());
    assert!(
        wait_until(Duration::from_secs(30), || joined_agents().len() == 3
            && files_in(&g.slave().join("data")) >= 2),
        "three joined channels while data flows"
    );
    let victim = joined_agents()[1];
    unsafe { libc::kill(victim, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(30), || s.status()["disconnects"]
            .as_u64()
            .is_some_and(|d| d >= 1)),
        "the worker saw the connection end: {}",
        s.status()
    );
    g.ok(&["config", &ms, &slave, "bwlimit", "0"]);
    s.converge("after a lost channel");
    let _ = g.run(&["delete", &ms, &slave]);
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}
