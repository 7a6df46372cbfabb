//! Real GlusterFS for the tests: a private glusterd bound to 127.0.0.1 (`scripts/glusterd.sh`,
//! which `scripts/test.sh` starts and stops), volumes of scratch-directory bricks, FUSE mounts.
//!
//! Bricks are named `127.1:/…` and `127.0.1:/…`: two node names that are both this host's
//! loopback (gluster refuses `localhost` and `127.0.0.1` for bricks), so a replica set can
//! have a brick on each "node".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The two node names a test's bricks live on.
pub const NODES: [&str; 2] = ["127.1", "127.0.1"];

/// glusterd's socket: `GEOREP_TEST_GLUSTERD_DIR`'s (scripts/test.sh), else one started here in
/// `/tmp/georep-it-glusterd` and left running (`scripts/glusterd.sh stop` ends it). A machine
/// that cannot run it fails the test, saying why.
pub fn glusterd() -> &'static Path {
    static SOCK: OnceLock<PathBuf> = OnceLock::new();
    SOCK.get_or_init(|| {
        let dir = std::env::var_os("GEOREP_TEST_GLUSTERD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/georep-it-glusterd"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/glusterd.sh");
        let out = Command::new(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "a private glusterd could not start ({}): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// One gluster CLI call at a time from this process: glusterd runs one transaction at a time
/// and refuses the others.
static CLI: Mutex<()> = Mutex::new(());

/// Runs `gluster ARGS` against the private glusterd; retried while glusterd is busy.
pub fn gluster(args: &[&str]) -> Result<String, String> {
    let _one = CLI.lock().unwrap_or_else(|e| e.into_inner());
    let mut last = String::new();
    for _ in 0..30 {
        let out = Command::new("gluster")
            .arg(format!("--glusterd-sock={}", glusterd().display()))
            .arg("--mode=script")
            .args(args)
            .output()
            .map_err(|e| format!("running gluster: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            return Ok(text);
        }
        if !(text.contains("Another transaction") || text.contains("ocking failed")) {
            return Err(format!("gluster {}: {text}", args.join(" ")));
        }
        last = text;
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(format!("gluster {}: busy: {last}", args.join(" ")))
}

/// A started Gluster volume of scratch bricks; stopped and deleted on drop.
pub struct Volume {
    pub name: String,
    /// `node:/path` of each brick, in Gluster's order.
    pub bricks: Vec<String>,
}

impl Volume {
    /// `bricks` bricks under `dir`; with `replica` > 1, each replica set has its bricks on the
    /// two nodes in turn. Options make what clients see settle at once (no client caches).
    pub fn create(dir: &Path, prefix: &str, replica: u32, bricks: usize) -> Volume {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "{prefix}{}x{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let specs: Vec<String> = (0..bricks)
            .map(|i| {
                let p = dir.join(format!("{name}-b{i}"));
                std::fs::create_dir_all(&p).unwrap();
                let node = if replica > 1 { NODES[i % 2] } else { NODES[0] };
                format!("{node}:{}", p.display())
            })
            .collect();
        let mut args: Vec<&str> = vec!["volume", "create", &name];
        let r = replica.to_string();
        if replica > 1 {
            args.extend(["replica", &r]);
        }
        args.extend(specs.iter().map(|s| s.as_str()));
        args.push("force");
        gluster(&args).unwrap();
        let v = Volume {
            name: name.clone(),
            bricks: specs,
        };
        for (k, val) in [
            ("performance.stat-prefetch", "off"),
            ("performance.quick-read", "off"),
            ("performance.io-cache", "off"),
            ("performance.read-ahead", "off"),
            ("performance.write-behind", "off"),
            ("performance.open-behind", "off"),
            ("performance.readdir-ahead", "off"),
            ("performance.md-cache-timeout", "0"),
        ] {
            gluster(&["volume", "set", &name, k, val]).unwrap();
        }
        gluster(&["volume", "start", &name]).unwrap();
        v
    }

    /// The brick directories, in Gluster's order.
    pub fn brick_paths(&self) -> Vec<PathBuf> {
        self.bricks
            .iter()
            .map(|b| PathBuf::from(b.split_once(':').unwrap().1))
            .collect()
    }

    /// Mounts the volume at `at` over FUSE; unmounted on drop.
    pub fn mount(&self, at: &Path) -> Fuse {
        std::fs::create_dir_all(at).unwrap();
        let log = at.with_extension("log");
        let out = Command::new("mount")
            .args(["-t", "glusterfs", "-o"])
            .arg(format!(
                "log-file={},acl,attribute-timeout=0,entry-timeout=0,negative-timeout=0",
                log.display()
            ))
            .arg(format!("127.0.0.1:/{}", self.name))
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t glusterfs {} at {} failed (FUSE?): {}{}",
            self.name,
            at.display(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Fuse(at.to_path_buf())
    }

    /// `gluster volume info NAME --xml`.
    pub fn info_xml(&self) -> String {
        gluster(&["volume", "info", &self.name, "--xml"]).unwrap()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = gluster(&["volume", "stop", &self.name, "force"]);
        let _ = gluster(&["volume", "delete", &self.name]);
    }
}

/// A FUSE mount of a Gluster volume, unmounted on drop.
pub struct Fuse(pub PathBuf);

impl Drop for Fuse {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// What a DR tree must never carry from a brick: Gluster's directories at its root, DHT
/// link-to files, `trusted.*` attributes. The first such entry, if any.
pub fn gluster_leftovers(root: &Path) -> Option<String> {
    for e in std::fs::read_dir(root).unwrap() {
        let name = e.unwrap().file_name();
        let n = name.to_string_lossy();
        if n.starts_with(".glusterfs") || n == ".trashcan" {
            return Some(format!("{n} at the root"));
        }
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if d == root && p.file_name() == Some(std::ffi::OsStr::new(".georep")) {
                continue;
            }
            let md = std::fs::symlink_metadata(&p).unwrap();
            use std::os::unix::fs::PermissionsExt;
            if md.is_file() && md.permissions().mode() & 0o7777 == 0o1000 && md.len() == 0 {
                return Some(format!("a link-to file: {}", p.display()));
            }
            let mut buf = vec![0u8; 65536];
            if let Ok(n) = rustix::fs::llistxattr(&p, &mut buf[..]) {
                if let Some(t) = buf[..n]
                    .split(|&b| b == 0)
                    .find(|n| n.starts_with(b"trusted."))
                {
                    return Some(format!("{} on {}", String::from_utf8_lossy(t), p.display()));
                }
            }
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    None
}
