//! One georep node of a multi-node test on this host: its own `GEOREP_HOME` and node name.

use super::*;
use std::fs;
use std::path::PathBuf;

/// One node's view: its own `GEOREP_HOME` and node name.
pub struct Node<'a> {
    pub g: &'a Georep,
    pub home: PathBuf,
    pub name: String,
}

impl<'a> Node<'a> {
    pub fn main(g: &'a Georep) -> Node<'a> {
        Node {
            g,
            home: g.path("home"),
            name: g.node.clone(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = self.g.cmd();
        c.env("GEOREP_HOME", &self.home)
            .env("GEOREP_NODE", &self.name);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "georep {args:?} on {} failed ({}):\nstdout: {}\nstderr: {}",
            self.name,
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn fails(&self, args: &[&str], code: i32, says: &str) -> String {
        assert_failed(&self.run(args), args, code, says)
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for d in fs::read_dir(self.home.join("log"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in fs::read_dir(d.path()).into_iter().flatten().flatten() {
                out.push_str(&format!("== {}\n", f.path().display()));
                out.push_str(&tail(&fs::read_to_string(f.path()).unwrap_or_default(), 25));
                out.push('\n');
            }
        }
        out
    }
}
