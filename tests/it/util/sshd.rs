//! A private OpenSSH sshd on a loopback port (or a testbed host's own address, inside its network
//! namespace) with its own host key, config and authorized_keys (never the system one), and an
//! operator key it accepts. Stopped on drop.

use super::*;
use std::process::Child;

pub struct Sshd {
    pub dir: PathBuf,
    /// The address it listens on, and the network namespace it runs in (None: this one).
    pub addr: String,
    pub netns: Option<String>,
    /// GEOREP_HOME and GEOREP_NODE of the sessions it starts (the DR host's).
    home: PathBuf,
    node: String,
    pub port: u16,
    pub operator_key: PathBuf,
    pub authorized_keys: PathBuf,
    child: Option<Child>,
    /// sshd_config lines added by `configure`.
    extra: String,
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
        Sshd::start_on(
            g.path("sshd"),
            "127.0.0.1",
            free_port(),
            g.path("slave-home"),
            "drnode",
            None,
        )
    }

    /// Starts sshd listening on `addr:port` (inside network namespace `netns` when given):
    /// sessions get GEOREP_HOME=`home` and GEOREP_NODE=`node`.
    pub fn start_on(
        dir: PathBuf,
        addr: &str,
        port: u16,
        home: PathBuf,
        node: &str,
        netns: Option<String>,
    ) -> Sshd {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        keygen(&dir.join("host_key"));
        let operator_key = dir.join("operator");
        keygen(&operator_key);
        let authorized_keys = dir.join("authorized_keys");
        let op_pub = std::fs::read_to_string(operator_key.with_extension("pub")).unwrap();
        std::fs::write(&authorized_keys, op_pub).unwrap();
        let mut s = Sshd {
            dir,
            addr: addr.to_string(),
            netns,
            home,
            node: node.to_string(),
            port,
            operator_key,
            authorized_keys,
            child: None,
            extra: String::new(),
        };
        s.write_config();
        s.run();
        s
    }

    fn write_config(&self) {
        let d = &self.dir;
        let cfg = format!(
            "Port {port}\nListenAddress {addr}\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {ak}\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin yes\n\
             SetEnv GEOREP_AUTHORIZED_KEYS={ak} GEOREP_HOME={home} GEOREP_NODE={node}\n\
             LogLevel ERROR\n{extra}",
            port = self.port,
            addr = self.addr,
            d = d.display(),
            ak = self.authorized_keys.display(),
            home = self.home.display(),
            node = self.node,
            extra = self.extra,
        );
        std::fs::write(d.join("sshd_config"), cfg).unwrap();
    }

    pub fn run(&mut self) {
        assert!(self.child.is_none());
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(sshd_bin());
                c
            }
            None => Command::new(sshd_bin()),
        };
        let child = cmd
            .arg("-D")
            .arg("-f")
            .arg(self.dir.join("sshd_config"))
            .arg("-E")
            .arg(self.dir.join("sshd.log"))
            .spawn()
            .expect("starting sshd");
        self.child = Some(child);
        let (addr, port) = (self.addr.clone(), self.port);
        let listening = || match &self.netns {
            None => std::net::TcpStream::connect((addr.as_str(), port)).is_ok(),
            // Only reachable from inside its namespace.
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", ns, "bash", "-c"])
                .arg(format!("exec 3<>/dev/tcp/{addr}/{port}"))
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        };
        assert!(
            wait_until(Duration::from_secs(10), listening),
            "sshd did not listen on {port}: {}",
            std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
        );
    }

    /// Stops sshd and every process under it (per-connection sshd processes call setsid(), so
    /// a process group does not reach them), as a DR host going down would.
    /// Restarts sshd with `lines` added to its configuration.
    pub fn configure(&mut self, lines: &str) {
        self.extra = lines.to_string();
        self.stop();
        self.write_config();
        self.run();
    }

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

    /// `root@ADDR:PORT::<volume>`
    pub fn slave(&self, volume: &str) -> String {
        format!("root@{}:{}::{}", self.addr, self.port, volume)
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
