//! A private OpenSSH sshd on a loopback port with its own host key, config and authorized_keys
//! (never the system one), and an operator key it accepts. Stopped on drop.

use super::*;
use std::process::Child;

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    pub operator_key: PathBuf,
    pub authorized_keys: PathBuf,
    child: Option<Child>,
}

fn sshd_bin() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/bin/sshd"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("OpenSSH sshd is not installed: scripts/test.sh installs openssh-server; these tests must run");
}

pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed");
}

impl Sshd {
    /// Starts sshd for `g`: sessions get GEOREP_HOME=<g>/slave-home and write authorized_keys
    /// into this sshd's own file.
    pub fn start(g: &Georep) -> Sshd {
        let dir = g.path("sshd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        keygen(&dir.join("host_key"));
        let operator_key = dir.join("operator");
        keygen(&operator_key);
        let authorized_keys = dir.join("authorized_keys");
        let op_pub = std::fs::read_to_string(operator_key.with_extension("pub")).unwrap();
        std::fs::write(&authorized_keys, op_pub).unwrap();
        let port = free_port();
        let mut s = Sshd {
            dir,
            port,
            operator_key,
            authorized_keys,
            child: None,
        };
        s.write_config(g);
        s.run();
        s
    }

    fn write_config(&self, g: &Georep) {
        let d = &self.dir;
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {ak}\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin yes\n\
             SetEnv GEOREP_AUTHORIZED_KEYS={ak} GEOREP_HOME={home} GEOREP_NODE=drnode\n\
             LogLevel ERROR\n",
            port = self.port,
            d = d.display(),
            ak = self.authorized_keys.display(),
            home = g.path("slave-home").display(),
        );
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
    }

    pub fn run(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(sshd_bin())
            .arg("-D")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .arg("-E")
            .arg(self.dir.join("sshd.log"))
            .spawn()
            .expect("starting sshd");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "sshd did not listen on {port}: {}",
            std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
        );
    }

    /// Stops sshd and every process under it (per-connection sshd processes call setsid(), so
    /// a process group does not reach them), as a DR host going down would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            for pid in descendants(c.id() as i32) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Gives the server a new host key (as a reinstalled DR host would have).
    pub fn new_host_key(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.dir.join("host_key"));
        let _ = std::fs::remove_file(self.dir.join("host_key.pub"));
        keygen(&self.dir.join("host_key"));
        self.run();
    }

    /// `root@127.0.0.1:PORT::<volume>`
    pub fn slave(&self, volume: &str) -> String {
        format!("root@127.0.0.1:{}::{}", self.port, volume)
    }

    /// The OpenSSH client with this server's settings; `key` is the identity.
    pub fn ssh(&self, key: &Path) -> Command {
        ssh_client(self.port, key)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The OpenSSH client to root@127.0.0.1:`port` with `key`, no known_hosts, no prompts.
pub fn ssh_client(port: u16, key: &Path) -> Command {
    let mut c = Command::new("ssh");
    for o in [
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "LogLevel=ERROR",
    ] {
        c.arg("-o").arg(o);
    }
    c.arg("-p")
        .arg(port.to_string())
        .arg("-i")
        .arg(key)
        .arg("root@127.0.0.1");
    c
}

/// All processes below `root` (by parent pid), deepest last.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) {
            // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
            if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                if let Some(ppid) = rest
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.parse::<i32>().ok())
                {
                    parent.insert(pid, ppid);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (&c, &pp) in &parent {
            if pp == p {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}
