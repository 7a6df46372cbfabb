//! The SSH transport against a real OpenSSH sshd: push-pem, replication, the confined key,
//! pinned host keys and clear errors.

use crate::util::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Deletes the session (stopping its journal writer) when the test ends.
struct Cleanup<'a>(&'a Georep, String);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let m = self.0.master();
        let _ = self.0.run(&["delete", m.to_str().unwrap(), &self.1]);
    }
}

fn push_pem(g: &Georep, sshd: &Sshd, extra: &[&str]) -> std::process::Output {
    let m = g.master();
    let slave = sshd.slave(g.slave().to_str().unwrap());
    let bin = bin();
    let mut args = vec![
        "create".to_string(),
        m.to_str().unwrap().to_string(),
        slave,
        "push-pem".into(),
        "--identity".into(),
        sshd.operator_key.to_str().unwrap().to_string(),
        "--remote-georep".into(),
        bin.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    g.cmd().args(&args).output().unwrap()
}

fn georep_lines(sshd: &Sshd) -> Vec<String> {
    fs::read_to_string(&sshd.authorized_keys)
        .unwrap()
        .lines()
        .filter(|l| l.contains("georep:"))
        .map(String::from)
        .collect()
}

fn session_key(g: &Georep) -> std::path::PathBuf {
    let base = g.path("home/state/sessions");
    let s = fs::read_dir(base).unwrap().next().unwrap().unwrap().path();
    s.join("ssh/id_ed25519")
}

#[test]
fn push_pem_then_replicate_over_openssh() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let _c = Cleanup(&g, sshd.slave(g.slave().to_str().unwrap()));
    make_varied_tree(&g.master(), 20 << 20);
    write(
        &g.master().join("logs/app.log"),
        &b"2026-11-21 replicated over ssh\n".repeat(300_000),
    );
    let o = push_pem(&g, &sshd, &[]);
    assert!(o.status.success(), "push-pem failed: {}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("pinned: SHA256:"),
        "prints the fingerprint: {out}"
    );
    let lines = georep_lines(&sshd);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("command=\"") && lines[0].contains(",restrict ssh-ed25519 "),
        "{}",
        lines[0]
    );
    let key = fs::metadata(session_key(&g)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // A second push-pem does not duplicate the line.
    let o = push_pem(&g, &sshd, &["force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(georep_lines(&sshd).len(), 1);

    let slave = sshd.slave(g.slave().to_str().unwrap());
    let m = g.master();
    let r: serde_json::Value =
        serde_json::from_str(&g.ok(&["sync", m.to_str().unwrap(), &slave, "--once", "--json"]))
            .unwrap();
    assert_trees_equal(&g.master(), &g.slave());
    assert!(n(&r, "files_sent") > 60, "{r}");
    // Issue 16: `channels auto` stripes only a long link (loopback is not one).
    assert_eq!(n(&r, "channels"), 1, "{r}");
    assert!(
        n(&r, "wire_bytes") < n(&r, "bytes_sent"),
        "compressed over the network: {r}"
    );
    write(&g.master().join("second.txt"), b"again");
    let r: serde_json::Value =
        serde_json::from_str(&g.ok(&["sync", m.to_str().unwrap(), &slave, "--once", "--json"]))
            .unwrap();
    assert_eq!(n(&r, "files_sent"), 1, "{r}");
    assert_trees_equal(&g.master(), &g.slave());
}

#[test]
fn pushed_key_cannot_run_a_shell_or_forward_ports() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let _c = Cleanup(&g, sshd.slave(g.slave().to_str().unwrap()));
    let o = push_pem(&g, &sshd, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let key = session_key(&g);
    let o = sshd
        .ssh(&key)
        .arg("id")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains("uid="),
        "the session key ran a command: {out}"
    );
    assert!(
        out.starts_with("GEOREP"),
        "the forced command is the agent: {out:?}"
    );
    // Port forwarding: the local end listens, but the server refuses the channel, so nothing
    // comes through (a working forward to sshd's own port would show its SSH banner).
    // Positive control first: the operator's unrestricted key forwards, through the same
    // server and the same client, so the refusal below is the key's restriction at work (not
    // a forward that cannot work here, or a login that failed).
    let forwards = |key: &Path| -> bool {
        let free = free_port();
        let mut fwd = sshd
            .ssh(key)
            .args(["-N", "-L"])
            .arg(format!("{free}:127.0.0.1:{}", sshd.port))
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", free)).is_ok()
        }));
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", free)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        use std::io::Read;
        let got = conn.read(&mut buf).unwrap_or(0);
        let _ = fwd.kill();
        let _ = fwd.wait();
        String::from_utf8_lossy(&buf[..got]).starts_with("SSH-")
    };
    assert!(
        forwards(&sshd.operator_key),
        "the operator key cannot forward: the check below would prove nothing"
    );
    assert!(!forwards(&key), "port forwarding went through");
    // The session key logs in all the same (it runs the agent, above): a refused login would
    // also refuse the forward.
}

#[test]
fn changed_host_key_is_refused_with_both_fingerprints() {
    let g = Georep::new();
    let mut sshd = Sshd::start(&g);
    let _c = Cleanup(&g, sshd.slave(g.slave().to_str().unwrap()));
    write(&g.master().join("f"), b"x");
    assert!(push_pem(&g, &sshd, &[]).status.success());
    sshd.new_host_key();
    let slave = sshd.slave(g.slave().to_str().unwrap());
    let o = g.run(&["sync", g.master().to_str().unwrap(), &slave, "--once"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("host key") && e.matches("SHA256:").count() >= 2 && e.contains("push-pem force"),
        "{e}"
    );
    assert!(
        !exists(&g.slave().join("f")),
        "nothing reached the impostor"
    );
    // Review hole 8 (issue 13): `push-pem force` used to drop the pinned key back to trust on
    // first use, so an impostor got pinned. Only `--host-key` re-pins.
    let o = push_pem(&g, &sshd, &["force"]);
    assert!(
        !o.status.success(),
        "push-pem force trusted a changed host key"
    );
    assert!(stderr(&o).matches("SHA256:").count() >= 2, "{}", stderr(&o));
    let shown = stderr(&o)
        .split("offered ")
        .nth(1)
        .and_then(|r| r.split(|c: char| c == ';' || c.is_whitespace()).next())
        .unwrap_or_else(|| panic!("no offered key in {}", stderr(&o)))
        .to_string();
    let o = push_pem(&g, &sshd, &["force", "--host-key", &shown]);
    assert!(
        o.status.success(),
        "re-pinning with --host-key: {}",
        stderr(&o)
    );
    g.ok(&["sync", g.master().to_str().unwrap(), &slave, "--once"]);
    assert!(exists(&g.slave().join("f")));
}

#[test]
fn clear_errors_for_wrong_key_unreachable_host_and_missing_georep() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let _c = Cleanup(&g, sshd.slave(g.slave().to_str().unwrap()));
    let m = g.master();
    let slave = sshd.slave(g.slave().to_str().unwrap());
    let create = |slave: &str, key: &Path, extra: &[&str]| {
        let mut args = vec![
            "create",
            m.to_str().unwrap(),
            slave,
            "push-pem",
            "--identity",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = g.run(&args);
        assert!(!o.status.success(), "create {slave} {extra:?} should fail");
        stderr(&o)
    };
    // A key the server does not know.
    let stranger = g.path("stranger");
    keygen(&stranger);
    let e = create(&slave, &stranger, &[]);
    assert!(
        e.contains("refused the key") && e.trim().lines().count() == 1,
        "{e}"
    );
    // Nothing listening.
    let free = free_port();
    let e = create(
        &format!("root@127.0.0.1:{free}::/x"),
        &sshd.operator_key,
        &[],
    );
    assert!(
        e.contains(&format!("127.0.0.1:{free}")) && e.trim().lines().count() == 1,
        "{e}"
    );
    // No georep on the slave.
    let e = create(
        &slave,
        &sshd.operator_key,
        &["--remote-georep", "/nonexistent/georep"],
    );
    assert!(
        e.contains("georep is not usable") && e.contains("/nonexistent/georep"),
        "{e}"
    );
}

/// `georep serve` as the DR host's SSH server (no OpenSSH there).
struct Serve {
    child: std::process::Child,
    port: u16,
    fingerprint: String,
    authorized_keys: std::path::PathBuf,
}

impl Serve {
    fn start(g: &Georep, extra: &[&str]) -> Serve {
        let dir = g.path("serve");
        fs::create_dir_all(&dir).unwrap();
        let authorized_keys = dir.join("authorized_keys");
        fs::write(&authorized_keys, "").unwrap();
        let port = free_port();
        let mut child = g
            .cmd()
            .env("GEOREP_NODE", "drnode")
            .env("GEOREP_HOME", g.path("slave-home"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--host-key",
            ])
            .arg(dir.join("host_key"))
            .arg("--authorized-keys")
            .arg(&authorized_keys)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut first)
            .unwrap();
        let fingerprint = first
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .unwrap_or_else(|| panic!("serve printed no fingerprint: {first}"))
            .to_string();
        assert!(wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }));
        Serve {
            child,
            port,
            fingerprint,
            authorized_keys,
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn replication_through_georep_serve_and_no_shell_there() {
    let g = Georep::new();
    let serve = Serve::start(&g, &[]);
    make_varied_tree(&g.master(), 5 << 20);
    let slave = format!("root@127.0.0.1:{}::{}", serve.port, g.slave().display());
    let _c = Cleanup(&g, slave.clone());
    let m = g.master();
    // Keys managed by the operator: no-verify prints the line to install on the DR host.
    let out = g.ok(&[
        "create",
        m.to_str().unwrap(),
        &slave,
        "no-verify",
        "--host-key",
        &serve.fingerprint,
        "--remote-georep",
        bin().to_str().unwrap(),
    ]);
    let line = out
        .lines()
        .find(|l| l.starts_with("command="))
        .unwrap_or_else(|| panic!("{out}"));
    fs::write(&serve.authorized_keys, format!("{line}\n")).unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&g.ok(&["sync", m.to_str().unwrap(), &slave, "--once", "--json"]))
            .unwrap();
    assert_trees_equal(&g.master(), &g.slave());
    assert!(n(&r, "files_sent") > 60, "{r}");
    // serve's one channel has a window for a long link, and its session loop feeds every
    // channel in turn (a stripe could stall it): its agents offer no stripe.
    assert_eq!(n(&r, "channels"), 1, "{r}");

    // The OpenSSH client gets no shell and no other command from serve. Positive control
    // first: the operator's key, listed with a forced command, logs in, and the forced
    // command (the agent, which prints its preamble) runs instead of `id`.
    let op = g.path("op");
    keygen(&op);
    let op_pub = fs::read_to_string(op.with_extension("pub")).unwrap();
    let session_line = line.to_string();
    let list = |opts: &str| {
        fs::write(
            &serve.authorized_keys,
            format!("{session_line}\n{opts}{}", op_pub.trim_end()) + "\n",
        )
        .unwrap();
    };
    let ssh = |args: &[&str]| {
        ssh_client(serve.port, &op)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let forced = format!(
        "command=\"'{}' agent --volume '{}'\",restrict ",
        bin().display(),
        g.slave().display()
    );
    list(&forced);
    let o = ssh(&["id"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("GEOREP"),
        "the forced agent did not run: {out:?} {}",
        stderr(&o)
    );
    assert!(!out.contains("uid="), "serve ran the client's command");
    let refused = |o: &std::process::Output, why: &str| {
        assert!(!o.status.success(), "{why}: the login went through");
        assert!(
            stderr(o).contains("Permission denied"),
            "{why}: refused for another reason: {}",
            stderr(o)
        );
    };
    // Review hole 6 (issue 13): the same key without a forced command is refused (it could
    // name any path, `/` included), as are a from= the client does not match and a past
    // expiry-time. The control above shows the key itself is good.
    list("");
    refused(&ssh(&["id"]), "a key without command=");
    refused(&ssh(&["-T"]), "a key without command=, shell");
    list(&format!("from=\"10.9.9.9\",{forced}"));
    refused(&ssh(&["id"]), "from= another address");
    list(&format!("expiry-time=\"20000101\",{forced}"));
    refused(&ssh(&["id"]), "an expired key");
    list(&format!("from=\"10.0.0.0/8,127.0.0.1\",{forced}"));
    let o = ssh(&["id"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("GEOREP"),
        "from= listing this client was refused: {}",
        stderr(&o)
    );
}

/// Review hole 6 (issue 13): `serve` closes a connection that does not authenticate within the
/// login grace time and drops connections beyond `--max-startups` waiting to authenticate, so
/// idle sockets cannot use up the DR host.
#[test]
fn serve_closes_idle_logins_and_limits_waiting_ones() {
    use std::io::Read;
    let g = Georep::new();
    let serve = Serve::start(&g, &["--login-grace-time", "2", "--max-startups", "3"]);
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    // Reads the server's banner, then waits for the server to close; how long that took.
    let until_closed = |mut s: std::net::TcpStream| {
        let t = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (got, Some(t.elapsed())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, None),
            }
        }
    };
    // Serve::start's own probe connection counts as waiting until serve sees it closed.
    std::thread::sleep(Duration::from_millis(500));
    let waiting: Vec<_> = (0..3).map(|_| connect()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The fourth is dropped at once, without even a banner.
    let (got, closed) = until_closed(connect());
    assert!(got.is_empty(), "the fourth waiting connection got {got:?}");
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(1)),
        "{closed:?}"
    );
    // The three waiting ones get the banner and are closed after the grace time.
    for s in waiting {
        let (got, closed) = until_closed(s);
        assert!(got.starts_with(b"SSH-2.0-"), "{got:?}");
        let d = closed.expect("an idle login was never closed");
        assert!(d < Duration::from_secs(4), "closed after {d:?}");
    }
    // With them gone, a new connection is served again.
    let mut s = connect();
    let mut banner = [0u8; 8];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
}

#[test]
fn ssh_outage_shows_faulty_then_the_session_catches_up() {
    let g = Georep::new();
    let mut sshd = Sshd::start(&g);
    let slave = sshd.slave(g.slave().to_str().unwrap());
    let _c = Cleanup(&g, slave.clone());
    write(&g.master().join("before"), b"1");
    assert!(push_pem(&g, &sshd, &[]).status.success());
    let mut s = Session { g: &g, child: None };
    s.run_with_slave(&slave);
    s.converge("start over ssh");
    // The DR host goes down: sshd and its connections die.
    sshd.stop();
    for i in 0..30 {
        write(
            &g.master().join(format!("during/{i}")),
            b"queued in the journal",
        );
    }
    assert!(
        wait_until(Duration::from_secs(20), || s.status()["status"] == "Faulty"
            && s.status()["last_error"].as_str().is_some_and(
                |e| e.contains(&format!("127.0.0.1:{}", sshd.port))
            )),
        "status says Faulty and names the host: {}",
        s.status()
    );
    let m = g.master();
    let ms = m.to_str().unwrap();
    let table = g.ok(&["status", ms, &slave, "detail"]);
    let host = format!("127.0.0.1:{}", sshd.port);
    assert!(
        table.contains(" Faulty ") && table.contains("last error") && table.contains(&host),
        "the table shows Faulty with the reason:\n{table}"
    );
    // The SLAVE column keeps the non-default port (detail: every value whole).
    assert!(
        table.contains(&format!("ssh://{slave}")),
        "SLAVE shows {slave}:\n{table}"
    );
    let o = g.run(&["status", ms, &slave, "--check"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    sshd.run();
    s.converge("after sshd is back");
    assert!(wait_until(Duration::from_secs(20), || s.status()["status"] == "Active"));
    let table = g.ok(&["status", ms, &slave]);
    assert!(table.contains(" Active "), "{table}");
    assert_eq!(
        s.status()["hybrid_crawls"],
        1,
        "the journal covered the outage"
    );
}

/// Issue 16: over a network, a changed file goes as a delta against the DR copy by default.
#[test]
fn a_changed_file_goes_as_a_delta_over_ssh_by_default() {
    let g = Georep::new();
    let sshd = Sshd::start(&g);
    let slave = sshd.slave(g.slave().to_str().unwrap());
    let _c = Cleanup(&g, slave.clone());
    let o = push_pem(&g, &sshd, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = g.master().join("log.db");
    let mut data = crate::delta::noise(4 << 20, 5);
    write(&f, &data);
    let m = g.master();
    let sync = || -> serde_json::Value {
        serde_json::from_str(&g.ok(&["sync", m.to_str().unwrap(), &slave, "--once", "--json"]))
            .unwrap()
    };
    sync();
    data[3_000_000..3_000_100].copy_from_slice(&[7; 100]);
    write(&f, &data);
    let r = sync();
    assert_trees_equal(&g.master(), &g.slave());
    assert_eq!(n(&r, "files_sent"), 1, "{r}");
    assert!(
        n(&r, "wire_bytes") < 100 << 10,
        "4 MiB file, 100 bytes changed: {r}"
    );
}
