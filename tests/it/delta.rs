//! Delta transfer (issue 16): a changed file goes as references to the DR copy's blocks plus
//! the bytes between, the DR copy is rebuilt atomically and checked whole, and a DR copy that
//! is not the one the master built on fails that file alone (sent whole next), never a wrong
//! copy. Hostile deltas and signature asks write nothing and read nothing outside the root.

use crate::agent_hostile::{begin, enc, end, p, stream};
use crate::util::*;
use georep::protocol::frame::{self, Decoded};
use georep::protocol::*;
use std::path::Path;

pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sync_delta(g: &Georep) -> serde_json::Value {
    let r = g.sync_args(&["--delta-min-size", "64K"]);
    assert_trees_equal(&g.master(), &g.slave());
    r
}

#[test]
fn a_change_inside_a_big_file_sends_about_a_block() {
    let g = Georep::new();
    let f = g.master().join("db.img");
    let mut data = noise(8 << 20, 1);
    write(&f, &data);
    write(&g.master().join("small"), b"below the threshold");
    sync_delta(&g);

    // 4 KiB overwritten in the middle, 10 bytes inserted near the start.
    data[5_000_000..5_004_096].copy_from_slice(&noise(4096, 2));
    data.splice(1000..1000, *b"0123456789");
    write(&f, &data);
    let r = sync_delta(&g);
    assert_eq!(n(&r, "files_sent"), 1, "{r}");
    assert!(
        n(&r, "wire_bytes") < 160 << 10,
        "8 MiB file, two small changes: {r}"
    );
    // The slave's copy is a new inode, renamed in whole: never written in place.
    let out = g.ok(&[
        "verify",
        g.master().to_str().unwrap(),
        g.slave().to_str().unwrap(),
        "--checksum",
    ]);
    assert!(out.contains("equal"), "{out}");
}

#[test]
fn a_dr_copy_that_is_not_the_one_built_on_fails_that_file_and_it_goes_whole_next() {
    let g = Georep::new();
    let f = g.master().join("big");
    let mut data = noise(2 << 20, 3);
    write(&f, &data);
    sync_delta(&g);
    // Behind georep's back, the DR copy changes (same size): the sums describe it, but the
    // index's hash does not, so a delta is still what the master sends.
    let s = g.slave().join("big");
    let mut other = std::fs::read(&s).unwrap();
    other[100] ^= 0xff;
    std::fs::write(&s, &other).unwrap();
    data[1 << 20] ^= 1;
    write(&f, &data);
    // The delta rebuilds what the slave has, which is not the master's content: the whole
    // does not check and the file is sent again whole, in the same run.
    let r = sync_delta(&g);
    assert!(n(&r, "files_sent") >= 1, "{r}");
    assert_eq!(std::fs::read(&s).unwrap(), data);
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_sec: 1_700_000_000,
        mtime_nsec: 0,
        xattrs: None,
    }
}

/// Preamble, Hello, then batch `id` around `body`.
fn batch(id: u64, ops: u32, body: &[Vec<u8>]) -> Vec<u8> {
    let mut frames = vec![begin(id, ops)];
    frames.extend_from_slice(body);
    frames.push(end(id, ops));
    stream(&frames)
}

fn delta(path: &str, base: u64, block: u32, pieces: &[Message], whole: &[u8]) -> Vec<u8> {
    let mut v = enc(&Message::FileDelta(FileDelta {
        path: p(path),
        meta: meta(),
        size: whole.len() as u64,
        base,
        block,
    }));
    for m in pieces {
        v.extend(enc(m));
    }
    v.extend(enc(&Message::FileEnd(FileEnd {
        hash: *blake3::hash(whole).as_bytes(),
        commit: true,
    })));
    v
}

fn agent(root: &Path, input: &[u8]) -> (std::process::Output, Vec<Message>) {
    let mut cmd = std::process::Command::new(bin());
    cmd.env("GEOREP_HOME", root.parent().unwrap().join("home"));
    let out = feed(agent_command(cmd, root), input);
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    let mut buf = &out.stdout[PREAMBLE.len().min(out.stdout.len())..];
    let mut msgs = Vec::new();
    while let Ok(Decoded::Frame(m, used)) = frame::decode(buf) {
        msgs.push(m);
        buf = &buf[used..];
    }
    (out, msgs)
}

/// Bad input: a block reference outside the base is a protocol error; a wrong whole-file hash
/// (a base other than the one built on) fails the file alone; a signature ask for a symlink
/// to a file outside reads nothing there. The slave's previous content stays in every case.
#[test]
fn hostile_deltas_and_signature_asks_change_and_read_nothing_they_should_not() {
    let g = Georep::new();
    let root = g.slave();
    let base = noise(10_000, 9);
    write(&root.join("f"), &base);
    write(&g.path("outside/secret"), &noise(50_000, 11));
    std::os::unix::fs::symlink(g.path("outside/secret"), root.join("evil")).unwrap();

    // The good case and a wrong hash: blocks of 2048 bytes, the base has 5.
    let mut rebuilt = base[2048..4096].to_vec();
    rebuilt.extend_from_slice(b"new bytes");
    let good = delta(
        "f",
        10_000,
        2048,
        &[
            Message::Copy { first: 1, count: 1 },
            Message::Chunk(b"new bytes".to_vec()),
        ],
        &rebuilt,
    );
    let mut wrong = rebuilt.clone();
    wrong[0] ^= 1;
    let bad_hash = delta(
        "f",
        10_000,
        2048,
        &[
            Message::Copy { first: 1, count: 1 },
            Message::Chunk(b"new bytes".to_vec()),
        ],
        &wrong,
    );
    let asks = enc(&Message::Signatures(vec![
        SigAsk {
            token: 1,
            path: p("evil"),
            max_sums: 1024,
        },
        SigAsk {
            token: 2,
            path: p("f"),
            max_sums: 1024,
        },
    ]));
    // Inside the batch: the agent takes asks anywhere but inside a file.
    let input = batch(1, 1, &[asks, bad_hash]);
    let (out, msgs) = agent(&root, &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let sigs: Vec<&Signature> = msgs
        .iter()
        .filter_map(|m| match m {
            Message::Signature(s) => Some(s),
            _ => None,
        })
        .collect();
    assert!(
        sigs.iter()
            .any(|s| s.token == 1 && s.done == Some(None) && s.sums.is_empty()),
        "the symlink is not summed: {sigs:?}"
    );
    let f_sums: usize = sigs
        .iter()
        .filter(|s| s.token == 2)
        .map(|s| s.sums.len() / 12)
        .sum();
    assert_eq!(f_sums, 5, "{sigs:?}");
    assert!(
        msgs.iter()
            .any(|m| matches!(m, Message::Failed(f) if f.message.contains("builds on"))),
        "{msgs:?}"
    );
    assert_eq!(std::fs::read(root.join("f")).unwrap(), base);

    let input = batch(1, 1, &[good]);
    let (out, _) = agent(&root, &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(root.join("f")).unwrap(), rebuilt);

    // Outside the base (which is now 2057 bytes: blocks 0 and 1).
    let input = batch(
        1,
        1,
        &[delta(
            "f",
            2057,
            2048,
            &[Message::Copy { first: 2, count: 1 }],
            b"x",
        )],
    );
    let (out, _) = agent(&root, &input);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("outside its 2057-byte base"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(root.join("f")).unwrap(), rebuilt);
}
