//! The layering rule of docs/ARCHITECTURE.md ("Layers: what may import what"), read off the
//! sources: no import cycle between top-level modules, the foundation imports nothing above it,
//! and the agent (the slave side) imports no master-side module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Shared by both sides: they import only each other.
const FOUNDATION: &[&str] = &[
    "protocol",
    "error",
    "db",
    "delta",
    "sparse",
    "shellword",
    "logging",
    "entry",
    "fsutil",
    "xattr",
    "gluster",
    "walk",
    "config",
    "volume",
];
/// What the slave side may import besides the foundation.
const AGENT_MAY: &[&str] = &["transport", "journal"];
const TRANSPORT_MAY: &[&str] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            // A module's unit tests are not its dependencies.
            if p.file_name().is_some_and(|n| n != "tests") {
                rust_files(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs")
            && !p.to_string_lossy().ends_with("_tests.rs")
        {
            out.push(p);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules `text` names through `crate::` (`crate::a::b`, `crate::{a, b::c}`).
fn referenced(text: &str) -> BTreeSet<String> {
    // Comments name modules without importing them; the test module at a file's end is not the
    // module's dependency.
    let code: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap()
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of each item at the group's own depth.
            let (mut depth, mut starts) = (0, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => starts = true,
                    c if starts && is_ident(c) => {
                        starts = false;
                        out.insert(group[i..].chars().take_while(|&c| is_ident(c)).collect());
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            out.insert(name);
        }
    }
    out
}

fn graph() -> Graph {
    let root = src();
    let mut modules = BTreeMap::new();
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if name == "main" || name == "lib" {
            continue;
        }
        let mut files = Vec::new();
        if p.is_dir() {
            rust_files(&p, &mut files);
        } else {
            files.push(p);
        }
        modules.insert(name, files);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(m, files)| {
            let mut deps = BTreeSet::new();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                deps.extend(
                    referenced(&text)
                        .into_iter()
                        .filter(|d| *d != m && names.contains(d)),
                );
            }
            (m, deps)
        })
        .collect()
}

/// A cycle through `from`, if there is one: the modules in order.
fn cycle_through(g: &Graph, from: &str) -> Option<Vec<String>> {
    fn walk(
        g: &Graph,
        at: &str,
        goal: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in &g[at] {
            if next == goal {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if walk(g, next, goal, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(g, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

fn shown(g: &Graph) -> String {
    g.iter()
        .map(|(m, d)| {
            format!(
                "{m} -> {}",
                d.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_reader_finds_imports_and_no_more() {
    let text = "use crate::walk::list;\nuse crate::{fsutil, protocol::{Meta, RelPath}};\n// crate::ship in a comment\nfn f() { crate::xattr::read(); }\n#[cfg(test)]\nmod tests { use crate::crawl; }\n";
    let want: BTreeSet<String> = ["walk", "fsutil", "protocol", "xattr"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(referenced(text), want);
    let g: Graph = [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &[])]
        .iter()
        .map(|(m, d)| (m.to_string(), d.iter().map(|s| s.to_string()).collect()))
        .collect();
    assert_eq!(
        cycle_through(&g, "a"),
        Some(vec!["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(cycle_through(&g, "d"), None);
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let g = graph();
    assert!(g.len() > 20, "modules of src/ not found: {g:?}");
    for m in g.keys() {
        if let Some(c) = cycle_through(&g, m) {
            panic!(
                "import cycle {} -> {m}: move what both need down a layer (docs/ARCHITECTURE.md)\n{}",
                c.join(" -> "),
                shown(&g)
            );
        }
    }
}

#[test]
fn each_layer_imports_only_its_own_and_those_below() {
    let g = graph();
    let may = |m: &str, allowed: &[&str], d: &str| {
        assert!(
            FOUNDATION.contains(&d) || allowed.contains(&d),
            "{m} imports {d}, a module above its layer (docs/ARCHITECTURE.md, \"Layers\")\n{}",
            shown(&g)
        )
    };
    for f in FOUNDATION {
        assert!(g.contains_key(*f), "no module {f} in src/");
        for d in &g[*f] {
            may(f, &[], d);
        }
    }
    for d in &g["transport"] {
        may("transport", TRANSPORT_MAY, d);
    }
    // The slave side stands on its own floor: nothing of the master's crawl, shipping,
    // client, sessions or status.
    for d in &g["agent"] {
        may("agent", AGENT_MAY, d);
    }
}
