//! Extended attributes and POSIX ACLs (issue 16): what reaches the slave, changes to
//! attributes alone in both modes, what is never copied, `verify`, a DR filesystem without
//! them, and an agent that refuses what it may not write.

use crate::agent_hostile::{enc, hello_fields};
use crate::util::fsops::acl;
use crate::util::*;
use georep::protocol::{
    frame, BatchBegin, BatchEnd, FileBegin, FileEnd, Hello, Message, Meta, RelPath, Xattr,
    PREAMBLE, PROTOCOL_VERSION,
};
use std::path::Path;
use std::time::Duration;

fn set(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty())
        .unwrap_or_else(|e| panic!("setting {name} on {}: {e}", p.display()));
}

fn get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// A tree with attributes of every kind on files, a directory and a symlink, and GlusterFS's
/// internal ones that must never be copied.
fn tree_with_attributes(m: &Path) {
    write(&m.join("doc.txt"), b"a document");
    write(&m.join("share/report.odt"), b"a report");
    std::os::unix::fs::symlink("doc.txt", m.join("link")).unwrap();
    set(&m.join("doc.txt"), "user.origin", b"scanner-3");
    set(&m.join("doc.txt"), "user.binary", &[0, 1, 255]);
    set(&m.join("doc.txt"), "system.posix_acl_access", &acl(1000, 6));
    set(&m.join("share"), "system.posix_acl_default", &acl(1001, 5));
    set(&m.join("share"), "user.project", b"dr");
    set(&m.join("share/report.odt"), "trusted.app", b"t");
    set(&m.join("link"), "trusted.on-link", b"l");
    // What a Gluster brick carries: never replicated.
    set(&m.join("doc.txt"), "trusted.gfid", &[7; 16]);
    set(&m.join("share"), "trusted.glusterfs.dht", b"layout");
}

#[test]
fn xattrs_and_acls_reach_the_slave_and_changes_to_them_alone_follow() {
    if !is_root() {
        eprintln!("needs root (trusted.* attributes)");
        return;
    }
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    tree_with_attributes(&m);
    g.sync_equal();
    assert_eq!(get(&s.join("doc.txt"), "user.binary").unwrap(), [0, 1, 255]);
    assert_eq!(
        get(&s.join("share"), "system.posix_acl_default").unwrap(),
        acl(1001, 5)
    );
    assert_eq!(get(&s.join("link"), "trusted.on-link").unwrap(), b"l");
    assert_eq!(get(&s.join("doc.txt"), "trusted.gfid"), None);
    assert_eq!(get(&s.join("share"), "trusted.glusterfs.dht"), None);
    let out = g.ok(&["verify", m.to_str().unwrap(), s.to_str().unwrap()]);
    assert!(out.contains("equal"), "{out}");

    // Attributes alone change: the content and mtime stay; only ctime moves.
    set(&m.join("doc.txt"), "user.origin", b"scanner-4");
    rustix::fs::lremovexattr(m.join("doc.txt"), "user.binary").unwrap();
    rustix::fs::lremovexattr(m.join("doc.txt"), "system.posix_acl_access").unwrap();
    set(&m.join("share"), "user.project", b"dr-2");
    set(
        &m.join("share/report.odt"),
        "system.posix_acl_access",
        &acl(1002, 7),
    );
    // A new file inherits the directory's default ACL on the master: so must its copy.
    write(&m.join("share/new.txt"), b"new");
    assert!(get(&m.join("share/new.txt"), "system.posix_acl_access").is_some());
    let r = g.sync_equal();
    assert_eq!(n(&r, "files_sent"), 1, "only the new file's content: {r}");
    assert_eq!(get(&s.join("doc.txt"), "user.binary"), None);

    // A difference on the slave alone is one `verify` finds.
    set(&s.join("share/report.odt"), "user.stray", b"x");
    let o = g.run(&["verify", m.to_str().unwrap(), s.to_str().unwrap()]);
    assert!(!o.status.success(), "verify should fail: {}", stdout(&o));
    assert!(
        stdout(&o).contains("user.stray only on the slave"),
        "{}",
        stdout(&o)
    );
}

/// Takeover seeds 1500266 and seven more: a slave listing is taken as shipped only where the
/// attributes are equal too. Here a DR copy seeded by disk (`cp -a`) lacks one file's and one
/// directory's attributes; the first sync adopts the rest and sends those.
#[test]
fn a_slave_seeded_without_attributes_gets_them_on_the_first_sync() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    write(&m.join("f"), b"content");
    write(&m.join("same"), b"same");
    std::fs::create_dir(m.join("d")).unwrap();
    copy_tree(&m, &s);
    set(&m.join("f"), "user.tag", b"late");
    set(&m.join("d"), "user.tag", b"dir");
    g.sync_equal();
    assert_eq!(get(&s.join("f"), "user.tag").unwrap(), b"late");
    assert_eq!(get(&s.join("d"), "user.tag").unwrap(), b"dir");
}

#[test]
fn a_live_session_replicates_an_attribute_change_alone() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    write(&m.join("f"), b"content");
    std::fs::create_dir(m.join("d")).unwrap();
    let mut se = Session::start(&g);
    se.converge("first sync");
    set(&m.join("f"), "user.tag", b"one");
    set(&m.join("d"), "user.tag", b"dir");
    set(&m.join("d"), "system.posix_acl_default", &acl(1000, 7));
    se.converge("attributes set");
    assert_eq!(get(&s.join("d"), "user.tag").unwrap(), b"dir");
    rustix::fs::lremovexattr(m.join("f"), "user.tag").unwrap();
    se.converge("attribute removed");
    assert_eq!(get(&s.join("f"), "user.tag"), None);
    se.stop();
}

#[test]
fn with_sync_xattrs_and_sync_acls_off_attributes_are_left_alone() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    write(&m.join("f"), b"content");
    set(&m.join("f"), "user.tag", b"one");
    set(&m.join("f"), "system.posix_acl_access", &acl(1000, 6));
    g.ok(&["create", ms, ss]);
    g.ok(&["config", ms, ss, "sync-xattrs", "false"]);
    g.ok(&["config", ms, ss, "sync-acls", "false"]);
    let mut se = Session { g: &g, child: None };
    se.run();
    assert!(
        wait_until(Duration::from_secs(30), || exists(&s.join("f"))),
        "{}",
        se.log()
    );
    se.stop();
    assert_eq!(get(&s.join("f"), "user.tag"), None);
    assert_eq!(get(&s.join("f"), "system.posix_acl_access"), None);
}

#[test]
fn a_dr_filesystem_without_xattrs_is_a_warning_not_a_fault() {
    if !is_root() {
        eprintln!("needs root (mounts a ramfs)");
        return;
    }
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    // ramfs has no user.* attributes nor ACLs.
    let st = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&s)
        .status()
        .unwrap();
    assert!(st.success());
    let _umount = Unmount(s.clone());
    write(&m.join("f"), b"content");
    set(&m.join("f"), "user.tag", b"one");
    let mut se = Session::start(&g);
    let warned = wait_until(Duration::from_secs(30), || {
        let st = se.status();
        st["warning"]
            .as_str()
            .is_some_and(|w| w.contains("refuses user.*"))
            && exists(&s.join("f"))
    });
    assert!(warned, "{}\n{}", se.status(), se.log());
    assert_eq!(se.status()["status"], "Active");
    assert_eq!(std::fs::read(s.join("f")).unwrap(), b"content");
    let o = g.run(&["status", "--check"]);
    assert_eq!(o.status.code(), Some(1), "WARNING: {}", stdout(&o));
    assert!(stdout(&o).contains("refuses user.*"), "{}", stdout(&o));
    se.stop();
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn file_with(path: &str, data: &[u8], xattrs: Vec<Xattr>) -> Vec<u8> {
    let mut v = enc(&Message::FileBegin(FileBegin {
        path: RelPath::new(path.as_bytes().to_vec()).unwrap(),
        meta: Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            xattrs: Some(xattrs),
        },
        size: data.len() as u64,
    }));
    v.extend(enc(&Message::Chunk(data.to_vec())));
    v.extend(enc(&Message::FileEnd(FileEnd {
        hash: *blake3::hash(data).as_bytes(),
        commit: true,
    })));
    v
}

fn x(name: &str, value: &[u8]) -> Xattr {
    Xattr {
        name: name.as_bytes().to_vec(),
        value: value.to_vec(),
    }
}

/// Bad input: a name outside the agreed namespaces (here `trusted.*`, not asked for) or a
/// Gluster-internal one fails its file alone with a clear message; a value or a name over
/// Linux's limits is refused as it is decoded (the stream is broken). Either way the slave's
/// previous copy stays as it was.
#[test]
fn the_agent_refuses_attributes_it_may_not_write_and_keeps_the_previous_copy() {
    let g = Georep::new();
    let root = g.slave();
    for f in ["a", "b", "c", "d"] {
        write(&root.join(f), b"previous");
    }
    let hello = hello_for_limits();
    let mut input = PREAMBLE.to_vec();
    input.extend(enc(&Message::Hello(hello)));
    input.extend(enc(&Message::BatchBegin(BatchBegin {
        id: 1,
        first_seq: 0,
        last_seq: 0,
        max_ts_ns: 0,
        ops: 3,
        bytes: 0,
    })));
    input.extend(file_with("a", b"new", vec![x("trusted.secret", b"1")]));
    input.extend(file_with("b", b"new", vec![x("trusted.gfid", &[1; 16])]));
    input.extend(file_with("e", b"new", vec![x("user.ok", b"fine")]));
    input.extend(enc(&Message::BatchEnd(BatchEnd { id: 1, ops: 3 })));
    let out = run_agent(&g, &root, &input);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut buf = &out.stdout[PREAMBLE.len()..];
    let mut failed = Vec::new();
    let mut acked = false;
    while let Ok(frame::Decoded::Frame(m, used)) = frame::decode(buf) {
        match m {
            Message::Failed(f) => failed.push((f.op, f.message)),
            Message::Ack(a) => acked |= a.id == 1,
            _ => {}
        }
        buf = &buf[used..];
    }
    assert!(acked, "{}", stderr(&out));
    assert_eq!(
        failed.iter().map(|f| f.0).collect::<Vec<_>>(),
        [0, 1],
        "{failed:?}"
    );
    assert!(
        failed
            .iter()
            .all(|f| f.1.contains("outside what this session may write")
                && f.1.contains("left as it was")),
        "{failed:?}"
    );
    // Over Linux's limits: refused at decode, nothing applied.
    let long = format!("user.{}", "n".repeat(260));
    for (name, value) in [("user.big", vec![0; 65537]), (long.as_str(), b"1".to_vec())] {
        let mut bad = PREAMBLE.to_vec();
        bad.extend(enc(&Message::Hello(hello_for_limits())));
        bad.extend(enc(&Message::BatchBegin(BatchBegin {
            id: 2,
            first_seq: 0,
            last_seq: 0,
            max_ts_ns: 0,
            ops: 1,
            bytes: 0,
        })));
        bad.extend(file_with("c", b"new", vec![x(name, &value)]));
        bad.extend(enc(&Message::BatchEnd(BatchEnd { id: 2, ops: 1 })));
        let out = run_agent(&g, &root, &bad);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr(&out).contains("over the limits"), "{}", stderr(&out));
    }
    for f in ["a", "b", "c", "d"] {
        assert_eq!(std::fs::read(root.join(f)).unwrap(), b"previous", "{f}");
    }
    assert_eq!(std::fs::read(root.join("e")).unwrap(), b"new");
    if get(&root.join("e"), "user.ok").is_some() {
        assert_eq!(get(&root.join("e"), "user.ok").unwrap(), b"fine");
    }
}

/// `georep agent` on `root`, fed `input`.
fn run_agent(g: &Georep, root: &Path, input: &[u8]) -> std::process::Output {
    feed(agent_command(g.cmd(), root), input)
}

fn hello_for_limits() -> Hello {
    Hello {
        xattrs: georep::xattr::USER | georep::xattr::ACL,
        ..hello_fields(PROTOCOL_VERSION)
    }
}
