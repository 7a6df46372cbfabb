//! `georep volume import`: a georep volume with a Gluster volume's name, bricks and replica
//! sets, read from `gluster volume info <vol> --xml` (or a saved copy of that output).
//!
//! What georep cannot replicate from bricks is refused with the reason: a dispersed (erasure
//! coded) volume holds no whole file on any brick, a sharded one keeps big files in pieces.
//! Arbiter bricks hold names and no data: they are left out of their replica sets, so an
//! arbiter never ships.

use crate::volume::{Brick, Volume};
use anyhow::{bail, Context, Result};

/// A Gluster volume as its XML info describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct GlusterVolume {
    pub name: String,
    pub type_str: String,
    /// Data bricks per replica set (arbiters not counted).
    pub replica: u32,
    /// Bricks in Gluster's order, arbiters left out.
    pub bricks: Vec<String>,
    pub arbiters: Vec<String>,
    pub sharded: bool,
    pub disperse: u32,
}

/// Parses the output of `gluster volume info [<vol>] --xml`, picking the volume `name`.
pub fn parse(xml: &str, name: &str) -> Result<GlusterVolume> {
    let doc = roxmltree::Document::parse(xml)
        .context("reading the output of `gluster volume info --xml`: it is not XML")?;
    let root = doc.root_element();
    let text = |n: roxmltree::Node<'_, '_>, tag: &str| -> Option<String> {
        n.children()
            .find(|c| c.has_tag_name(tag))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_string())
    };
    if let Some(ret) = text(root, "opRet") {
        if ret != "0" {
            bail!(
                "gluster refused `volume info {name}`: {}",
                text(root, "opErrstr").unwrap_or_else(|| format!("opRet {ret}"))
            );
        }
    }
    let vols: Vec<_> = root
        .descendants()
        .filter(|n| {
            n.has_tag_name("volume") && n.parent().is_some_and(|p| p.has_tag_name("volumes"))
        })
        .collect();
    let Some(v) = vols
        .iter()
        .find(|v| text(**v, "name").as_deref() == Some(name))
    else {
        let found: Vec<String> = vols.iter().filter_map(|v| text(*v, "name")).collect();
        bail!(
            "the Gluster volume info lists no volume {name} (it lists: {}): check the name with `gluster volume list`",
            if found.is_empty() { "none".to_string() } else { found.join(", ") }
        );
    };
    let num = |tag: &str| -> u32 { text(*v, tag).and_then(|t| t.parse().ok()).unwrap_or(0) };
    let mut bricks = Vec::new();
    let mut arbiters = Vec::new();
    for b in v
        .descendants()
        .filter(|n| n.has_tag_name("brick") && n.parent().is_some_and(|p| p.has_tag_name("bricks")))
    {
        let spec = text(b, "name")
            .or_else(|| {
                b.children()
                    .find(|c| c.is_text())
                    .and_then(|c| c.text())
                    .map(|t| t.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .with_context(|| format!("a brick of Gluster volume {name} has no name in the XML"))?;
        if text(b, "isArbiter").as_deref() == Some("1") {
            arbiters.push(spec);
        } else {
            bricks.push(spec);
        }
    }
    let sharded = v
        .descendants()
        .filter(|n| n.has_tag_name("option"))
        .any(|o| {
            text(o, "name").as_deref() == Some("features.shard")
                && matches!(
                    text(o, "value").as_deref(),
                    Some("on" | "enable" | "true" | "yes" | "1")
                )
        });
    let replica = num("replicaCount").max(1) - num("arbiterCount");
    Ok(GlusterVolume {
        name: name.to_string(),
        type_str: text(*v, "typeStr").unwrap_or_default(),
        replica: replica.max(1),
        bricks,
        arbiters,
        sharded,
        disperse: num("disperseCount"),
    })
}

impl GlusterVolume {
    /// The georep volume of the same name, bricks and replica sets; or why there is none.
    pub fn to_volume(&self) -> Result<Volume> {
        if self.disperse > 0 {
            bail!(
                "Gluster volume {} is {} (erasure coded): no brick holds whole files, so georep cannot replicate it from its bricks; replicate a mount of it as a path instead (`georep create /mnt/{} ...`)",
                self.name,
                self.type_str,
                self.name
            );
        }
        if self.sharded {
            bail!(
                "Gluster volume {} has features.shard on: its big files are pieces on the bricks, which georep cannot put together; turn it off (`gluster volume set {} features.shard off` applies to new files only) or replicate a mount of the volume as a path",
                self.name,
                self.name
            );
        }
        let bricks = self
            .bricks
            .iter()
            .map(|b| {
                if !b.contains(":/") {
                    bail!("Gluster brick {b:?} of {} is not host:/path", self.name);
                }
                Brick::parse(b)
            })
            .collect::<Result<Vec<_>>>()?;
        Volume::new(&self.name, self.replica, bricks).with_context(|| {
            format!(
                "making a georep volume of Gluster volume {} ({})",
                self.name, self.type_str
            )
        })
    }
}

/// What re-importing changes in a volume already there, one line each; empty when nothing.
pub fn changes(old: &Volume, new: &Volume) -> Vec<String> {
    let mut out = Vec::new();
    if old.replica != new.replica {
        out.push(format!("replica {} → {}", old.replica, new.replica));
    }
    for b in &new.bricks {
        if !old.bricks.contains(b) {
            out.push(format!("brick added: {b}"));
        }
    }
    for b in &old.bricks {
        if !new.bricks.contains(b) {
            out.push(format!("brick removed: {b}"));
        }
    }
    let kept = |v: &Volume| -> Vec<String> {
        v.bricks
            .iter()
            .filter(|b| old.bricks.contains(b) && new.bricks.contains(b))
            .map(|b| b.to_string())
            .collect()
    };
    if out.is_empty() && kept(old) != kept(new) {
        out.push("bricks reordered: replica sets changed".to_string());
    }
    out
}

/// Makes (or updates) the georep volume `name` from the Gluster volume info `xml`; returns
/// what to tell the operator, a line each.
pub fn import(home: &crate::config::Home, name: &str, xml: &str) -> Result<Vec<String>> {
    let g = parse(xml, name)?;
    let v = g.to_volume()?;
    let mut out = Vec::new();
    match Volume::load(home, name) {
        Ok(old) => {
            let changes = changes(&old, &v);
            if changes.is_empty() {
                out.push(format!(
                    "volume import: {name}: up to date ({} bricks)",
                    v.bricks.len()
                ));
                return Ok(out);
            }
            v.save(home)?;
            out.push(format!("volume import: {name}: updated"));
            out.extend(changes.into_iter().map(|c| format!("  {c}")));
            out.push(format!(
                "  sessions of {name} pick the bricks up when restarted: `georep stop {name} SLAVE` then `georep start {name} SLAVE`"
            ));
        }
        Err(_) => {
            v.save(home)?;
            out.push(format!(
                "volume import: {name}: success ({}, {} bricks{})",
                g.type_str,
                v.bricks.len(),
                if v.replica > 1 {
                    format!(", replica {}", v.replica)
                } else {
                    String::new()
                }
            ));
        }
    }
    out.extend(
        g.arbiters
            .iter()
            .map(|a| format!("  arbiter {a} left out: it holds no file data")),
    );
    Ok(out)
}

/// Runs `gluster volume info <name> --xml`, with `--glusterd-sock` when given.
pub fn volume_info_xml(name: &str, glusterd_sock: Option<&std::path::Path>) -> Result<String> {
    let mut cmd = std::process::Command::new("gluster");
    if let Some(s) = glusterd_sock {
        cmd.arg(format!("--glusterd-sock={}", s.display()));
    }
    cmd.args(["--mode=script", "volume", "info", name, "--xml"]);
    let out = cmd.output().map_err(|e| {
        anyhow::anyhow!(
            "running `gluster volume info {name} --xml` on {}: {e}; on a host without the gluster CLI, save that output on a Gluster node and use `georep volume import {name} --from-xml FILE`",
            crate::config::node_name()
        )
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && !stdout.contains("<cliOutput>") {
        bail!(
            "`gluster volume info {name} --xml` failed on {} ({}): {}; is glusterd running here?",
            crate::config::node_name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(bricks: &str, extra: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><volInfo><volumes>
<volume><name>other</name><typeStr>Distribute</typeStr><replicaCount>1</replicaCount>
<bricks><brick uuid="u">h9:/b<name>h9:/b</name><isArbiter>0</isArbiter></brick></bricks></volume>
<volume><name>gv0</name>{extra}<bricks>{bricks}</bricks>
<options><option><name>nfs.disable</name><value>on</value></option></options></volume>
<count>2</count></volumes></volInfo></cliOutput>"#
        )
    }

    fn brick(s: &str, arbiter: bool) -> String {
        format!(
            r#"<brick uuid="x">{s}<name>{s}</name><hostUuid>x</hostUuid><isArbiter>{}</isArbiter></brick>"#,
            arbiter as u8
        )
    }

    #[test]
    fn a_replicated_volume_keeps_its_sets_and_leaves_its_arbiters_out() {
        let bricks = [
            brick("n1:/d/b1", false),
            brick("n2:/d/b1", false),
            brick("n3:/d/a1", true),
            brick("n1:/d/b2", false),
            brick("n2:/d/b2", false),
            brick("n3:/d/a2", true),
        ]
        .concat();
        let g = parse(
            &info(
                &bricks,
                "<typeStr>Distributed-Replicate</typeStr><replicaCount>3</replicaCount><arbiterCount>1</arbiterCount>",
            ),
            "gv0",
        )
        .unwrap();
        assert_eq!(g.replica, 2);
        assert_eq!(g.arbiters, ["n3:/d/a1", "n3:/d/a2"]);
        let v = g.to_volume().unwrap();
        let sets: Vec<Vec<String>> = v
            .replica_sets()
            .map(|s| s.iter().map(|b| b.to_string()).collect())
            .collect();
        assert_eq!(sets, [["n1:/d/b1", "n2:/d/b1"], ["n1:/d/b2", "n2:/d/b2"]]);
    }

    #[test]
    fn sharded_and_dispersed_volumes_are_refused_naming_why() {
        let b = brick("n1:/d/b1", false);
        let sharded = info(
            &b,
            "<typeStr>Distribute</typeStr><options><option><name>features.shard</name><value>on</value></option></options>",
        );
        let e = parse(&sharded, "gv0").unwrap().to_volume().unwrap_err();
        assert!(format!("{e:#}").contains("features.shard"), "{e:#}");
        let ec = info(
            &b,
            "<typeStr>Disperse</typeStr><disperseCount>3</disperseCount>",
        );
        let e = parse(&ec, "gv0").unwrap().to_volume().unwrap_err();
        assert!(format!("{e:#}").contains("erasure coded"), "{e:#}");
    }

    #[test]
    fn a_missing_volume_or_a_refusal_is_an_error_that_says_so() {
        let e = parse(&info("", ""), "nope").unwrap_err();
        assert!(format!("{e:#}").contains("gv0"), "{e:#}");
        let refused = r#"<cliOutput><opRet>-1</opRet><opErrno>30800</opErrno><opErrstr>Volume gv9 does not exist</opErrstr></cliOutput>"#;
        let e = parse(refused, "gv9").unwrap_err();
        assert!(format!("{e:#}").contains("does not exist"), "{e:#}");
        assert!(parse("not xml <", "gv0").is_err());
    }

    #[test]
    fn a_reimport_says_what_changed() {
        let v = |bricks: &[&str], replica| {
            Volume::new(
                "gv0",
                replica,
                bricks.iter().map(|b| Brick::parse(b).unwrap()).collect(),
            )
            .unwrap()
        };
        let old = v(&["n1:/b1", "n2:/b1"], 1);
        assert!(changes(&old, &old).is_empty());
        let new = v(&["n1:/b1", "n2:/b1", "n3:/b1"], 1);
        assert_eq!(changes(&old, &new), ["brick added: n3:/b1"]);
        let fewer = v(&["n1:/b1"], 1);
        assert_eq!(changes(&old, &fewer), ["brick removed: n2:/b1"]);
        let repl = v(&["n1:/b1", "n2:/b1"], 2);
        assert_eq!(changes(&old, &repl), ["replica 1 → 2"]);
    }
}
