//! `georep volume …` and volumes used by name in `sync`.

use crate::util::*;

#[test]
fn create_list_info_delete() {
    let g = Georep::new();
    assert!(g.ok(&["volume", "list"]).contains("No volumes"));
    let b1 = g.path("b1");
    let out = g.ok(&[
        "volume",
        "create",
        "gv0",
        "replica",
        "2",
        &format!("node1:{}", b1.display()),
        "node2:/data/b1",
    ]);
    assert!(out.contains("success"), "{out}");
    assert!(b1.is_dir(), "local brick directory is created");
    assert_eq!(g.ok(&["volume", "list"]).trim(), "gv0");
    let info = g.ok(&["volume", "info", "gv0"]);
    assert!(
        info.contains("Replicate") && info.contains("1 x 2 = 2"),
        "{info}"
    );
    assert!(
        info.contains(&format!("Brick1: node1:{}", b1.display())),
        "{info}"
    );
    assert!(info.contains("Brick2: node2:/data/b1"), "{info}");
    g.fails(&["volume", "create", "gv0", "/x"], 2, "already exists");
    g.fails(
        &["volume", "create", "gv1", "replica", "2", "/a", "/b", "/c"],
        2,
        "replica sets",
    );
    g.fails(
        &["volume", "create", "../x", "/a"],
        2,
        "invalid volume name",
    );
    g.ok(&["volume", "delete", "gv0"]);
    assert!(g.ok(&["volume", "list"]).contains("No volumes"));
    g.fails(&["volume", "info", "gv0"], 2, "does not exist");
}

#[test]
fn sync_by_volume_names_uses_the_active_local_brick() {
    let g = Georep::new();
    let (b1, b2) = (g.path("n1-b1"), g.path("n2-b1"));
    g.ok(&[
        "volume",
        "create",
        "gv0",
        "replica",
        "2",
        &format!("node1:{}", b1.display()),
        &format!("node2:{}", b2.display()),
    ]);
    g.ok(&["volume", "create", "drvol", g.slave().to_str().unwrap()]);
    write(&b1.join("from-b1"), b"one");
    let r: serde_json::Value =
        serde_json::from_str(&g.ok(&["sync", "gv0", "drvol", "--once", "--json"])).unwrap();
    assert_eq!(n(&r, "bricks"), 1, "{r}");
    assert_trees_equal(&b1, &g.slave());

    // A node that holds no brick of the volume says so.
    let o = g
        .cmd()
        .env("GEOREP_NODE", "node9")
        .args(["sync", "gv0", "drvol", "--once"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no brick on this node"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn version_flag() {
    let g = Georep::new();
    assert!(g.ok(&["--version"]).starts_with("georep "));
}
