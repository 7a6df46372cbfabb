//! A connection's stream striped over several channels (issue 16, `channels`): the agent puts
//! the pieces back in order whatever channel carries them, only its own channels may join, and
//! a channel lost mid-stream ends the connection, after which the retry converges.

use crate::agent_hostile::{begin, enc, end, file, hello_fields};
use crate::util::*;
use georep::protocol::*;
use georep::transport::conn::{BoxRead, BoxWrite, FrameReader};
use georep::transport::stripe::StripedSink;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn agent(g: &Georep, root: &Path) -> Command {
    agent_command(g.cmd(), root)
}

/// An agent after a handshake asking for `channels`, and the join its Welcome offers.
fn serving(g: &Georep, channels: u8) -> (Child, FrameReader, Option<JoinOffer>) {
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

/// A further channel: an agent started by `cmd` that is told to join `offer` as `index`.
fn joining(mut cmd: Command, offer: &JoinOffer, index: u8) -> Child {
    let mut c = cmd.spawn().unwrap();
    let mut head = PREAMBLE.to_vec();
    head.extend(enc(&Message::Join {
        offer: offer.clone(),
        index,
    }));
    c.stdin.as_mut().unwrap().write_all(&head).unwrap();
    c
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
    let offer = join.expect("a replicate connection that asks for channels is offered a join");
    let joined: Vec<Child> = (1..3)
        .map(|i| joining(agent(&g, &g.slave()), &offer, i))
        .collect();
    let big = crate::delta::noise(5 << 20, 9);
    let mut body = begin(1, 41);
    for i in 0..40 {
        body.extend(file(&format!("small-{i}"), format!("file {i}").as_bytes()));
    }
    body.extend(file("big", &big));
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

/// A join made by hand, as a hostile local process would: connects to the offer's socket and
/// passes its own stdin with a header of our choosing (`token` in hex, channel `index`, the
/// slave root `root`); prints "taken" or "refused", and once taken waits for the agent to end.
fn forged(offer: &JoinOffer, token: &[u8; 16], index: u8, root: &Path, as_nobody: bool) -> Child {
    const SCRIPT: &str = r#"
import socket, sys
name, tok, idx, root = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), sys.argv[4].encode()
s = socket.socket(socket.AF_UNIX)
s.connect("\0" + name)
hdr = b"GRJN" + tok + bytes([idx]) + len(root).to_bytes(4, "little") + (0).to_bytes(4, "little")
try:
    socket.send_fds(s, [hdr + root], [0])
    r = s.recv(1)
except OSError:  # closed on us: reset, broken pipe
    r = b""
print("taken" if r == b"\x01" else "refused", flush=True)
if r == b"\x01":
    s.recv(1)
"#;
    // Debian's interpreter (scripts/test.sh installs it): one another user may run.
    const PYTHON: &str = "/usr/bin/python3";
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON]);
        c
    } else {
        Command::new(PYTHON)
    };
    let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    c.args(["-c", SCRIPT, &offer.name, &hex, &index.to_string()])
        .arg(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// What a forged join was told.
fn told(c: &mut Child) -> String {
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// Joins that are not the connection's own channels are refused, each on its own, without
/// ending the connection (a local user could otherwise stop replication): a wrong token, a
/// process of another user, the agent of another volume, an index beyond the stripe, an index
/// twice. The channels that are its own then join, and only what they carry is applied.
#[test]
fn only_the_connections_own_channels_may_join() {
    let g = Georep::new();
    let (mut primary, mut replies, join) = serving(&g, 3);
    let offer = join.unwrap();
    let root = g.slave();
    let mut own = primary.stdin.take().unwrap();
    own.write_all(&enc(&Message::Stripe { channels: 3 }))
        .unwrap();
    let refused = |mut c: Child, what: &str| {
        assert_eq!(told(&mut c), "refused", "{what}");
        let _ = c.wait();
    };
    refused(forged(&offer, &[7; 16], 1, &root, false), "a wrong token");
    if is_root() {
        refused(forged(&offer, &offer.token, 1, &root, true), "another user");
    }
    let other = g.path("other-volume");
    std::fs::create_dir_all(&other).unwrap();
    let mut c = joining(agent(&g, &other), &offer, 1);
    // What it read past its Join would come with its channel: it must never be applied.
    let mut evil = begin(1, 1);
    evil.extend(file("evil", b"must not be applied"));
    evil.extend(end(1, 1));
    let _ = c.stdin.as_mut().unwrap().write_all(&evil);
    let out = c.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not taken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(
        forged(&offer, &offer.token, 5, &root, false),
        "index 5 of 3",
    );
    let mut first = forged(&offer, &offer.token, 1, &root, false);
    assert_eq!(told(&mut first), "taken");
    refused(
        forged(&offer, &offer.token, 1, &root, false),
        "index 1 twice",
    );
    let mut second = forged(&offer, &offer.token, 2, &root, false);
    assert_eq!(told(&mut second), "taken");

    let mut body = begin(1, 1);
    body.extend(file("good", b"over three channels"));
    body.extend(end(1, 1));
    body.extend(enc(&Message::Bye));
    let channels: Vec<BoxWrite> = vec![
        Box::new(own),
        Box::new(first.stdin.take().unwrap()),
        Box::new(second.stdin.take().unwrap()),
    ];
    let mut sink = StripedSink::new(channels);
    for piece in body.chunks(100) {
        georep::transport::conn::Sink::write_all(&mut sink, piece).unwrap();
    }
    drop(sink);
    let mut acked = false;
    while let Ok(Some(m)) = replies.read() {
        acked |= matches!(m, Message::Ack(a) if a.id == 1);
    }
    assert!(acked);
    let err = stderr_of(primary);
    for says in [
        "without this connection's token",
        "agent of another volume",
        "channel 5 joined a stripe of 3 channels",
        "joined the stripe twice",
    ] {
        assert!(err.contains(says), "the agent says {says:?}: {err}");
    }
    if is_root() {
        assert!(err.contains("uid 65534"), "{err}");
    }
    assert_eq!(
        std::fs::read(root.join("good")).unwrap(),
        b"over three channels"
    );
    assert!(!root.join("evil").exists());
    let _ = (first.wait(), second.wait());
}

/// A stripe over more channels than the protocol allows ends the connection.
#[test]
fn a_stripe_over_too_many_channels_is_refused() {
    let g = Georep::new();
    let (mut primary, _r, join) = serving(&g, 3);
    assert!(join.is_some());
    let mut own = primary.stdin.take().unwrap();
    own.write_all(&enc(&Message::Stripe {
        channels: MAX_CHANNELS + 1,
    }))
    .unwrap();
    let err = stderr_of(primary);
    assert!(err.contains("a stripe of 17 channels"), "{err}");
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
    push_pem(&g, &sshd, &slave);
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
    // SAFETY: a plain syscall with no pointer.
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

fn push_pem(g: &Georep, sshd: &Sshd, slave: &str) {
    let o = g
        .cmd()
        .args([
            "create",
            g.master().to_str().unwrap(),
            slave,
            "push-pem",
            "--identity",
        ])
        .arg(&sshd.operator_key)
        .arg("--remote-georep")
        .arg(bin())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A DR sshd that allows one session per connection (`MaxSessions 1`): the further channels
/// are refused, and the stream goes over the one that opened.
#[test]
fn a_dr_host_that_refuses_further_channels_replicates_over_one() {
    let g = Georep::new();
    let mut sshd = Sshd::start(&g);
    sshd.configure("MaxSessions 1\n");
    let slave = sshd.slave(g.slave().to_str().unwrap());
    push_pem(&g, &sshd, &slave);
    make_varied_tree(&g.master(), 4 << 20);
    let m = g.master();
    let r: serde_json::Value = serde_json::from_str(&g.ok(&[
        "sync",
        m.to_str().unwrap(),
        &slave,
        "--once",
        "--json",
        "--channels",
        "4",
    ]))
    .unwrap();
    assert_trees_equal(&g.master(), &g.slave());
    assert_eq!(n(&r, "channels"), 1, "{r}");
    let _ = g.run(&["delete", m.to_str().unwrap(), &slave]);
}

/// A DR host where further channels open but their agents cannot start (here a forced command
/// that runs one agent at a time, as a process limit would): the joins never come, and the
/// worker goes on over one channel, saying so in status, instead of retrying the same stripe.
#[test]
fn a_stripe_that_never_joins_falls_back_to_one_channel() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let slave = sshd.slave(g.slave().to_str().unwrap());
    push_pem(&g, &sshd, &slave);
    let keys = std::fs::read_to_string(&sshd.authorized_keys).unwrap();
    let lock = g.path("one-agent.lock");
    let wrapped = keys.replace(
        "command=\"",
        &format!("command=\"flock -n {} ", lock.display()),
    );
    assert_ne!(keys, wrapped);
    std::fs::write(&sshd.authorized_keys, wrapped).unwrap();
    let m = g.master();
    let ms = m.to_str().unwrap().to_string();
    g.ok(&["config", &ms, &slave, "channels", "3"]);
    // The agent waits for the joins as long as its silence limit (10 s here).
    g.ok(&["config", &ms, &slave, "takeover-timeout", "15s"]);
    make_varied_tree(&m, 1 << 20);
    let mut s = Session { g: &g, child: None };
    s.run_with_slave(&slave);
    s.converge("over one channel after the stripe did not join");
    let st = s.status();
    assert!(
        st["warning"]
            .as_str()
            .is_some_and(|w| w.contains("one channel")),
        "{st}"
    );
    assert!(st["disconnects"].as_u64().unwrap() >= 1, "{st}");
    let _ = g.run(&["delete", &ms, &slave]);
}
