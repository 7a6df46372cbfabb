//! Issue 14: what a new operator meets. No silent traps (a mistyped master, a pre-seeded slave),
//! relative paths, words, readable status and logs, session names, and the install path.

use crate::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Every directory under `$GEOREP_HOME/state/sessions` (what a session or a sync left).
fn state_dirs(g: &Georep) -> Vec<String> {
    fs::read_dir(g.path("home/state/sessions"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every file beneath `dir`.
fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// The tree's snapshot without its root directory (whose mtime the agent's `.georep` changes).
fn beneath(root: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Snap> {
    let mut s = snapshot(root);
    s.remove(Path::new(""));
    s
}

fn inode(p: &Path) -> (u64, i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn a_missing_master_is_named_on_create_and_nothing_is_made() {
    let g = Georep::new();
    let typo = g.path("srv/typo");
    let (ts, ss) = (typo.to_str().unwrap(), g.slave());
    let ss = ss.to_str().unwrap();
    for extra in [&[][..], &["no-verify"][..]] {
        let mut args = vec!["create", ts, ss];
        args.extend_from_slice(extra);
        let o = g.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("master brick {ts}")) && err.contains("never creates"),
            "the error names the master, not the slave ({args:?}): {err}"
        );
        assert!(!err.contains("verifying slave"), "{err}");
        assert!(!exists(&typo), "create made the mistyped master {ts}");
        assert!(state_dirs(&g).is_empty(), "left: {:?}", state_dirs(&g));
        assert!(!g
            .path("home/etc/sessions")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some()));
    }
    // And a status with nothing set up says so, not OK.
    let o = g.run(&["status", "--check"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_first_sync_adopts_a_preseeded_slave_and_removes_its_extras() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    make_varied_tree(&m, 3);
    // The DR site seeded by disk: a full copy (owners, modes, times kept), plus extras.
    copy_tree(&m, &s);
    write(&s.join("extra-file"), b"only on the slave");
    write(&s.join("extra-dir/deep/f"), b"only on the slave");
    let seeded = s.join("many/f001");
    let before = inode(&seeded);
    let r = g.sync_equal();
    assert_eq!(
        n(&r, "files_sent"),
        0,
        "a pre-seeded slave was re-sent: {r:#}"
    );
    assert_eq!(n(&r, "bytes_sent"), 0, "{r:#}");
    assert_eq!(n(&r, "deleted"), 2, "the extras are removed: {r:#}");
    assert_eq!(
        inode(&seeded),
        before,
        "an adopted file was rewritten on the slave"
    );
    assert!(!exists(&s.join("extra-file")) && !exists(&s.join("extra-dir")));
}

#[test]
fn a_session_onto_a_slave_it_did_not_fill_needs_force_then_adopts_it() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 2);
    copy_tree(&m, &s);
    write(&s.join("somebody-else's"), b"data");
    let o = g.run(&["create", ms, ss]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("slave {ss} already holds")) && err.contains("`force`"),
        "{err}"
    );
    assert!(state_dirs(&g).is_empty(), "left: {:?}", state_dirs(&g));
    g.ok(&["create", ms, ss, "force"]);
    let seeded = s.join("many/f001");
    let before = inode(&seeded);
    let mut se = Session { g: &g, child: None };
    se.run();
    se.converge("adopted");
    let row = se.status();
    assert_eq!(row["data"], 0, "pre-seeded files were re-sent: {row:#}");
    assert_eq!(inode(&seeded), before);
    assert!(!exists(&s.join("somebody-else's")));
    se.stop();
    // The slave is now this volume's: re-creating the session needs no force.
    g.ok(&["delete", ms, ss, "reset-sync-time"]);
    g.ok(&["create", ms, ss]);
}

#[test]
fn relative_paths_and_sync_without_once() {
    let g = Georep::new();
    make_varied_tree(&g.master(), 1);
    let o = g
        .cmd()
        .current_dir(g.dir.path())
        .args(["sync", "./master", "slave/../slave", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(n(&r, "files_sent") > 0);
    assert_eq!(r["master"], g.master().to_str().unwrap(), "{r:#}");
    assert_trees_equal(&g.master(), &g.slave());
    // A bare name is a volume name; when a directory by that name is here, the error says
    // how to give it as a path.
    let o = g
        .cmd()
        .current_dir(g.dir.path())
        .args(["sync", "master", "slave"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("./master"), "{}", stderr(&o));
}

#[test]
fn an_unknown_word_is_named_with_the_valid_ones() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    g.ok(&["create", ms, ss, "name", "gv0-dr1"]);
    for (args, want) in [
        (
            vec!["status", ms, ss, "detial"],
            "unknown word \"detial\" for `georep status`: expected detail",
        ),
        (
            vec!["status", "gv0-dr1", "detial"],
            "unknown word \"detial\"",
        ),
        (
            vec!["stop", ms, ss, "forse"],
            "unknown word \"forse\" for `georep stop`: expected force",
        ),
        (
            vec!["delete", "gv0-dr1", "reset"],
            "expected reset-sync-time",
        ),
        (
            vec!["create", ms, ss, "push-perm"],
            "unknown word \"push-perm\" for `georep create`",
        ),
        (
            vec!["pause", "gv0-dr1", "now"],
            "unknown word \"now\" for `georep pause gv0-dr1`",
        ),
    ] {
        let o = g.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn a_session_goes_by_its_short_name() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 1);
    let out = g.ok(&["create", ms, ss, "name", "gv0-dr1"]);
    assert!(out.contains("georep@gv0-dr1.service"), "{out}");
    assert_eq!(state_dirs(&g), ["gv0-dr1"]);
    // Taken names and bad names are refused.
    let other = g.path("other");
    fs::create_dir_all(&other).unwrap();
    let o = g.run(&["create", other.to_str().unwrap(), ss, "name", "gv0-dr1"]);
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = g.run(&["create", other.to_str().unwrap(), ss, "name", "../x"]);
    assert_eq!(o.status.code(), Some(2));
    // As systemd's georep@gv0-dr1 runs it: `start <name> --foreground`.
    let fg = Foreground::start(&g, &["gv0-dr1"]);
    wait_trees_equal(&m, &s, Duration::from_secs(30), &|| true)
        .unwrap_or_else(|d| panic!("started by name: {d}"));
    let j: serde_json::Value =
        serde_json::from_str(&g.ok(&["status", "gv0-dr1", "--json"])).unwrap();
    assert_eq!(j[0]["status"], "Active", "{j:#}");
    // The same session by master and slave.
    let t = g.ok(&["status", ms, ss]);
    assert!(t.contains("Active"), "{t}");
    g.ok(&["config", "gv0-dr1", "bwlimit", "1M"]);
    assert_eq!(g.ok(&["config", ms, ss, "bwlimit"]).trim(), "1M");
    fg.stop();
    // delete keeps only the index (what the slave has); reset-sync-time removes that too.
    g.ok(&["delete", "gv0-dr1"]);
    assert!(g.ok(&["status"]).contains("No active"));
    let kept: Vec<_> = walk(&g.path("home/state/sessions"));
    assert!(
        !kept.is_empty() && kept.iter().all(|p| p.contains("index.db")),
        "{kept:?}"
    );
    g.ok(&["create", ms, ss, "name", "gv0-dr1"]);
    g.ok(&["delete", "gv0-dr1", "reset-sync-time"]);
    assert!(state_dirs(&g).is_empty(), "left: {:?}", state_dirs(&g));
}

#[test]
fn logs_are_plain_text_and_the_table_fits_120_columns() {
    let g = Georep::new();
    // Normal names, as an operator has them: a volume gv0 on /<short>/b1, a DR volume gv0-dr.
    let short = tempfile::Builder::new()
        .prefix("g")
        .tempdir_in("/tmp")
        .unwrap();
    let brick = short.path().join("b1");
    let dr = short.path().join("dr");
    make_varied_tree(&brick, 1);
    fs::create_dir_all(&dr).unwrap();
    g.ok(&["volume", "create", "gv0", brick.to_str().unwrap()]);
    g.ok(&["volume", "create", "gv0-dr", dr.to_str().unwrap()]);
    g.ok(&["create", "gv0", "gv0-dr"]);
    let fg = Foreground::start(&g, &["gv0", "gv0-dr"]);
    wait_trees_equal(&brick, &dr, Duration::from_secs(30), &|| true)
        .unwrap_or_else(|d| panic!("gv0: {d}"));
    wait_until(Duration::from_secs(10), || {
        g.ok(&["status"]).contains("Changelog Crawl")
    });
    let t = g.ok(&["status"]);
    for l in t.lines() {
        assert!(
            l.chars().count() <= 120,
            "{} columns: {t}",
            l.chars().count()
        );
    }
    // Whole paths when they fit.
    assert!(
        t.contains(&format!(" {} ", brick.display())) && t.contains(" gv0-dr "),
        "{t}"
    );
    fg.stop();
    let mut logs = vec![g.path("start.log")];
    for d in fs::read_dir(g.path("home/log")).unwrap().flatten() {
        for f in fs::read_dir(d.path()).unwrap().flatten() {
            logs.push(f.path());
        }
    }
    let mut lines = 0;
    for f in &logs {
        let text = fs::read(f).unwrap();
        assert!(
            !text.contains(&0x1b),
            "ANSI escape codes in {}",
            f.display()
        );
        lines += text
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
    }
    assert!(lines > 3, "the logs say something: {logs:?}");
}

#[test]
fn a_failed_one_shot_sync_leaves_no_state() {
    let g = Georep::new();
    write(&g.master().join("f"), b"x");
    let blocker = g.path("not-a-dir");
    write(&blocker, b"a file where the slave root should be");
    let slave = blocker.join("slave");
    let o = g.run(&[
        "sync",
        g.master().to_str().unwrap(),
        slave.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(state_dirs(&g).is_empty(), "left: {:?}", state_dirs(&g));
}

#[test]
fn install_puts_binary_man_pages_completions_and_units_under_a_prefix() {
    let g = Georep::new();
    let prefix = g.path("prefix");
    let o = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .arg(&prefix)
        .env("GEOREP_BIN", bin())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        stderr(&o)
    );
    let installed = prefix.join("bin/georep");
    let v = std::process::Command::new(&installed)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("georep "));
    assert!(
        fs::metadata(&installed).unwrap().len() < fs::metadata(bin()).unwrap().len(),
        "the installed binary is stripped"
    );
    let man = std::process::Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(prefix.join("share/man/man1/georep-create.1"))
        .env("MANWIDTH", "100")
        .output()
        .expect("man (man-db) is installed by scripts/test.sh");
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(man.status.success(), "{}", stderr(&man));
    assert!(
        page.contains("push-pem") && page.contains("no-verify"),
        "{page}"
    );
    assert!(prefix.join("share/man/man1/georep.1").exists());
    let comp = prefix.join("share/bash-completion/completions/georep");
    let st = std::process::Command::new("bash")
        .arg("-n")
        .arg(&comp)
        .status()
        .unwrap();
    assert!(st.success(), "bash -n {}", comp.display());
    assert!(fs::read_to_string(&comp).unwrap().contains("failover"));
    for f in [
        "share/zsh/site-functions/_georep",
        "share/fish/vendor_completions.d/georep.fish",
    ] {
        assert!(fs::metadata(prefix.join(f)).unwrap().len() > 100, "{f}");
    }
    let unit = fs::read_to_string(prefix.join("lib/systemd/system/georep@.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={} start %i --foreground",
            installed.display()
        )),
        "{unit}"
    );
    for d in ["runbook.md", "config.md", "status.md", "README.md"] {
        assert!(prefix.join("share/doc/georep").join(d).exists(), "{d}");
    }
}

#[test]
fn an_empty_brick_never_empties_a_slave_on_a_first_sync() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    // The brick's filesystem is not mounted: an empty directory. The DR copy has everything.
    make_varied_tree(&s, 1);
    let before = beneath(&s);
    let o = g.run(&["sync", m.to_str().unwrap(), s.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is empty but the slave holds") && stderr(&o).contains("mounted"),
        "{}",
        stderr(&o)
    );
    assert!(beneath(&s) == before, "the DR copy was touched");
    // Asked explicitly, the slave is made equal to the empty brick.
    g.ok(&[
        "sync",
        m.to_str().unwrap(),
        s.to_str().unwrap(),
        "--rescan-slave",
    ]);
    assert_trees_equal(&m, &s);
}

#[test]
fn a_session_created_without_a_check_leaves_a_foreign_slave_alone() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    write(&m.join("mine"), b"master data");
    write(&s.join("theirs"), b"somebody's data");
    let before = beneath(&s);
    // no-verify skips create's look at the slave: the worker's first crawl looks instead.
    g.ok(&["create", ms, ss, "no-verify"]);
    let fg = Foreground::start(&g, &[ms, ss]);
    let faulty = wait_until(Duration::from_secs(20), || {
        let j: serde_json::Value =
            serde_json::from_str(&g.ok(&["status", ms, ss, "--json"])).unwrap();
        j[0]["status"] == "Faulty"
            && j[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no brick of") && e.contains("force"))
    });
    assert!(faulty, "{}", g.ok(&["status", ms, ss, "detail"]));
    assert!(beneath(&s) == before, "a foreign slave was touched");
    // Retrying cannot help until the operator says so (the worker waits a minute between
    // tries, not a few seconds): `create force` on the running session is heard at once.
    g.ok(&["create", ms, ss, "force"]);
    wait_trees_equal(&m, &s, Duration::from_secs(30), &|| true)
        .unwrap_or_else(|d| panic!("after create force: {d}"));
    fg.stop();
}

#[test]
fn a_distributed_volume_keeps_every_bricks_files_on_a_first_sync() {
    let g = Georep::new();
    let (b1, b2, s) = (g.path("b1"), g.path("b2"), g.slave());
    write(&b1.join("dir/from-b1"), b"one");
    write(&b2.join("dir/from-b2"), b"two");
    g.ok(&[
        "volume",
        "create",
        "gv",
        b1.to_str().unwrap(),
        b2.to_str().unwrap(),
    ]);
    for round in 0..2 {
        g.ok(&["sync", "gv", s.to_str().unwrap()]);
        assert!(
            exists(&s.join("dir/from-b1")) && exists(&s.join("dir/from-b2")),
            "round {round}: a brick's files were taken for the other's extras"
        );
    }
}

#[test]
fn a_short_name_never_stands_for_another_pairs_session() {
    let g = Georep::new();
    let other = g.path("other-master");
    fs::create_dir_all(&other).unwrap();
    g.ok(&["volume", "create", "a", g.master().to_str().unwrap()]);
    g.ok(&["volume", "create", "b", other.to_str().unwrap()]);
    g.ok(&["volume", "create", "dr", g.slave().to_str().unwrap()]);
    // The generated name of b -> dr, given by hand to a -> dr.
    let out = g.ok(&["create", "b", "dr", "no-verify"]);
    let generated = out
        .split("session name ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap()
        .to_string();
    assert!(generated.contains('_'), "{generated}");
    // A short name can never be a generated one: it has no '_'.
    let o = g.run(&["create", "a", "dr", "no-verify", "name", &generated]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("'_' is kept for generated names"),
        "{}",
        stderr(&o)
    );
    g.ok(&["create", "a", "dr", "no-verify", "name", "a-dr"]);
    // Each pair finds its own session, by pair or by name.
    g.ok(&["delete", "b", "dr"]);
    let o = g.run(&["delete", "b", "dr"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&g.ok(&["status", "a-dr", "--json"])).unwrap();
    assert_eq!(j[0]["master_vol"], "a", "{j:#}");
}
