//! A testbed of hosts made of network namespaces: each host has its own network stack (a veth
//! into a bridge that lives in a namespace of its own, an address in 10.213.0.0/24), its own
//! `GEOREP_HOME`, node name (`GEOREP_NODE`) and brick directory, and, when asked, its own sshd.
//! Only addresses inside these namespaces are used. A host can be partitioned (its port taken
//! off the bridge: no FIN, no RST, nothing: a half-open link), healed, slowed down with netem
//! where `tc` exists, and have all its processes killed. Everything is torn down on drop, even
//! when the test fails. `scripts/testbed.sh` builds the same for a human.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: String,
    pub home: PathBuf,
    pub brick: PathBuf,
    /// The bridge port of this host, in the switch namespace.
    port: String,
    dev: String,
}

pub struct Testbed {
    pub hosts: Vec<Host>,
    switch: String,
    sshd: Vec<Sshd>,
}

/// Runs `ip args`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Whether this machine can make network namespaces (root, iproute2, a kernel that lets us).
/// Probed once per test process.
pub fn netns_supported() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let name = format!("grprobe{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        ok
    })
}

impl Testbed {
    /// Hosts `names` (e.g. n1, n2, dr1) with scratch directories under `g`.
    pub fn new(g: &Georep, names: &[&str]) -> Testbed {
        static N: AtomicU32 = AtomicU32::new(0);
        // Short and unique per test process and testbed: interface names hold 15 bytes.
        let id = format!(
            "{:x}{:x}",
            std::process::id() % 0xfffff,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("gr{id}-sw");
        let mut bed = Testbed {
            hosts: Vec::new(),
            switch: switch.clone(),
            sshd: Vec::new(),
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("gr{id}-{name}");
            ip(&["netns", "add", &ns]);
            let host = Host {
                name: name.to_string(),
                addr: format!("10.213.0.{}", i + 1),
                home: g.path(&format!("{name}/home")),
                brick: g.path(&format!("{name}/brick")),
                port: format!("p{id}{i}"),
                dev: format!("v{id}{i}"),
                ns,
            };
            std::fs::create_dir_all(&host.brick).unwrap();
            // Made in place in both namespaces: nothing appears in the test's own.
            ip(&[
                "link", "add", &host.dev, "netns", &host.ns, "type", "veth", "peer", "name",
                &host.port, "netns", &switch,
            ]);
            ip(&["-n", &switch, "link", "set", &host.port, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &host.port, "up"]);
            let cidr = format!("{}/24", host.addr);
            ip(&["-n", &host.ns, "addr", "add", &cidr, "dev", &host.dev]);
            ip(&["-n", &host.ns, "link", "set", &host.dev, "up"]);
            ip(&["-n", &host.ns, "link", "set", "lo", "up"]);
            bed.hosts.push(host);
        }
        bed
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the testbed"))
    }

    /// Starts an sshd on `name`'s address (port 22 of its own stack); its sessions run with the
    /// host's GEOREP_HOME and node name.
    pub fn start_sshd(&mut self, g: &Georep, name: &str) -> &Sshd {
        let h = self.host(name);
        let s = Sshd::start_on(
            g.path(&format!("{name}/sshd")),
            &h.addr,
            22,
            h.home.clone(),
            &h.name,
            Some(h.ns.clone()),
        );
        self.sshd.push(s);
        self.sshd.last().unwrap()
    }

    /// Cuts `name` off the network: its bridge port leaves the bridge. Its links stay up, so
    /// nothing tells either side; connections go half-open, as behind a real partition.
    pub fn partition(&self, name: &str) {
        let h = self.host(name);
        ip(&["-n", &self.switch, "link", "set", &h.port, "nomaster"]);
    }

    pub fn heal(&self, name: &str) {
        let h = self.host(name);
        ip(&["-n", &self.switch, "link", "set", &h.port, "master", "br0"]);
    }

    /// Adds `ms` of delay to everything `name` sends, where `tc` (netem) is there; false if not.
    pub fn delay(&self, name: &str, ms: u32) -> bool {
        let h = self.host(name);
        Command::new("ip")
            .args([
                "netns", "exec", &h.ns, "tc", "qdisc", "replace", "dev", &h.dev,
            ])
            .args(["root", "netem", "delay", &format!("{ms}ms")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Kills every process running in `name`'s namespace, as a host losing power would.
    pub fn kill_all(&self, name: &str) {
        kill_netns(&self.host(name).ns);
    }
}

fn kill_netns(ns: &str) {
    for _ in 0..3 {
        let o = Command::new("ip").args(["netns", "pids", ns]).output();
        let pids: Vec<i32> = o
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if pids.is_empty() {
            return;
        }
        for p in pids {
            if let Some(pid) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Host {
    /// `georep` as this host runs it: inside its namespace, with its home and node name.
    pub fn georep(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(bin())
            .env("GEOREP_HOME", &self.home)
            .env("GEOREP_NODE", &self.name)
            .env_remove("GEOREP_LOG")
            .stdin(Stdio::null());
        if let Ok(level) = std::env::var("GEOREP_TEST_LOG") {
            c.env("GEOREP_LOG", level);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.georep().args(args).output().unwrap()
    }

    /// Runs `georep args` here and returns its stdout; panics naming the host if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "georep {args:?} on {} failed: {}",
            self.name,
            stderr(&o)
        );
        stdout(&o)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Daemons first (monitors restart workers), then whatever is left, then the stacks.
        for s in &mut self.sshd {
            s.stop();
        }
        for h in &self.hosts {
            kill_netns(&h.ns);
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        kill_netns(&self.switch);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
    }
}
