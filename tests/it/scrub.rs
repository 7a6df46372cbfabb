//! Issue 19: the scheduled scrub. A live session whose DR copy is changed behind its back:
//! the scrub finds every kind of difference, says so in `status`, holds LAST_SYNCED, and
//! repairs through the normal pipeline when allowed.

use crate::util::*;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

fn row(g: &Georep, ms: &str, ss: &str) -> serde_json::Value {
    let j: serde_json::Value = serde_json::from_str(&g.ok(&["status", ms, ss, "--json"])).unwrap();
    j[0].clone()
}

fn check(g: &Georep, ms: &str, ss: &str) -> (i32, String) {
    let o = g.run(&["status", ms, ss, "--check"]);
    (
        o.status.code().unwrap(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn a_scrub_finds_what_changed_on_the_dr_site_holds_last_synced_and_repairs_it() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 1);
    g.ok(&["create", ms, ss]);
    for (k, v) in [
        ("scrub-interval", "2s"),
        ("scrub-checksum", "all"),
        ("scrub-repair", "false"),
    ] {
        g.ok(&["config", ms, ss, k, v]);
    }
    let mut se = Session { g: &g, child: None };
    se.run();
    se.converge("start");
    // A first pass over an equal copy is clean.
    assert!(
        wait_until(Duration::from_secs(20), || row(&g, ms, ss)["scrub"]
            ["differences"]
            == 0),
        "no clean pass: {}",
        row(&g, ms, ss)
    );
    assert_eq!(check(&g, ms, ss).0, 0, "{}", check(&g, ms, ss).1);

    // Behind georep's back on the DR site.
    fs::remove_file(s.join("many/f001")).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(s.join("many/f002"))
        .unwrap();
    std::io::Write::write_all(&mut f, b" appended").unwrap();
    drop(f);
    // Same size, same mtime, other bytes: only a content hash sees it.
    let same = s.join("many/f003");
    let md = fs::metadata(&same).unwrap();
    let mut bytes = fs::read(&same).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&same, &bytes).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::new(md.mtime() as u64, md.mtime_nsec() as u32);
    fs::File::options()
        .write(true)
        .open(&same)
        .unwrap()
        .set_modified(t)
        .unwrap();
    write(&s.join("extra-on-dr"), b"written at the DR site");
    // A hard link split in two copies.
    let split = s.join("many/hard-2");
    let content = fs::read(&split).unwrap();
    let smd = fs::metadata(&split).unwrap();
    fs::remove_file(&split).unwrap();
    fs::write(&split, &content).unwrap();
    let f = fs::File::options().write(true).open(&split).unwrap();
    f.set_modified(
        std::time::UNIX_EPOCH + Duration::new(smd.mtime() as u64, smd.mtime_nsec() as u32),
    )
    .unwrap();
    f.set_permissions(smd.permissions()).unwrap();
    drop(f);
    rustix::fs::chown(
        &split,
        Some(rustix::fs::Uid::from_raw(smd.uid())),
        Some(rustix::fs::Gid::from_raw(smd.gid())),
    )
    .unwrap();
    let tampered = snapshot(&s);

    // The next pass names every one; WARNING; nothing is repaired (scrub-repair false).
    let named = |r: &serde_json::Value| {
        let paths = r["scrub"]["paths"].to_string();
        [
            "many/f001",
            "many/f002",
            "many/f003",
            "extra-on-dr",
            "hard-2",
        ]
        .iter()
        .all(|p| paths.contains(p))
    };
    assert!(
        wait_until(Duration::from_secs(20), || named(&row(&g, ms, ss))),
        "the scrub missed a difference: {:#}",
        row(&g, ms, ss)["scrub"]
    );
    let (code, line) = check(&g, ms, ss);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("scrub found") && line.contains("not repaired"),
        "{line}"
    );
    let r = row(&g, ms, ss);
    let hold = r["scrub_hold_utc"]
        .as_str()
        .expect("LAST_SYNCED held")
        .to_string();
    std::thread::sleep(Duration::from_secs(3));
    let r = row(&g, ms, ss);
    assert!(
        r["last_synced_utc"].as_str().unwrap() <= hold.as_str(),
        "LAST_SYNCED moved past the pass that found differences: {r:#}"
    );
    assert_eq!(
        snapshot(&s),
        tampered,
        "scrub-repair false changed the DR copy"
    );
    let detail = g.ok(&["status", ms, ss, "detail"]);
    assert!(
        detail.contains("last scrub") && detail.contains("extra-on-dr"),
        "{detail}"
    );
    let o = g.run(&["scrub", ms, ss]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("many/f003"));
    assert!(
        se.log().contains("scrub: same size, different content") || se.log().contains("many/f003")
    );

    // Repair on: the next pass repairs through the pipeline, the one after is clean.
    g.ok(&["config", ms, ss, "scrub-repair", "true"]);
    se.converge("repaired by the scrub");
    assert!(
        wait_until(Duration::from_secs(30), || {
            let r = row(&g, ms, ss);
            r["scrub"]["differences"] == 0 && r["scrub_hold_utc"].is_null()
        }),
        "no clean pass after the repair: {:#}",
        row(&g, ms, ss)
    );
    assert_eq!(check(&g, ms, ss).0, 0, "{}", check(&g, ms, ss).1);
    assert_trees_equal(&m, &s);
    se.stop();
}

#[test]
fn scrub_now_starts_a_pass_and_a_live_change_is_not_a_difference() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    for i in 0..300 {
        write(
            &m.join(format!("d{}/f{i}", i % 10)),
            format!("{i}").as_bytes(),
        );
    }
    g.ok(&["create", ms, ss]);
    g.ok(&["config", ms, ss, "scrub-interval", "0"]);
    let mut se = Session { g: &g, child: None };
    se.run();
    se.converge("start");
    // Changes keep coming while passes run: in flight, not differences.
    let stop = std::sync::atomic::AtomicBool::new(false);
    /// Ends the writer even when an assertion fails (the scope waits for it).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    std::thread::scope(|sc| {
        let _stop = Stop(&stop);
        sc.spawn(|| {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let f = m.join(format!("d{}/f{}", i % 10, i % 300));
                match i % 4 {
                    // Rewrites, renames, deletes and new directories.
                    0 | 1 => write(&f, format!("v{i}").as_bytes()),
                    2 => {
                        let to = m.join(format!("d{}/f{}", (i + 3) % 10, (i + 7) % 300));
                        let _ = fs::rename(&f, to);
                    }
                    _ => {
                        let _ = fs::remove_file(&f);
                        write(&m.join(format!("new{}/g{i}", i % 7)), b"new");
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        for pass in 1..=6u64 {
            g.ok(&["scrub", ms, ss, "--now", "--checksum"]);
            assert!(
                wait_until(Duration::from_secs(20), || row(&g, ms, ss)["scrub"]["pass"]
                    == pass),
                "pass {pass} did not run: {:#}\n{}",
                row(&g, ms, ss),
                se.log()
                    .lines()
                    .filter(|l| l.contains("scrub"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            let r = row(&g, ms, ss);
            assert_eq!(
                r["scrub"]["differences"], 0,
                "a live change was reported: {:#}",
                r["scrub"]
            );
            assert_eq!(r["scrub"]["checksum"], "all");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    se.converge("after the churn");
    se.stop();
}

/// Issue 16: the scrub compares extended attributes too, and its repair sends them again.
#[test]
fn a_scrub_finds_and_repairs_an_attribute_removed_on_the_dr_site() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    write(&m.join("f"), b"content");
    if rustix::fs::setxattr(
        m.join("f"),
        "user.tag",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .is_err()
    {
        eprintln!("no user xattrs here");
        return;
    }
    g.ok(&["create", ms, ss]);
    g.ok(&["config", ms, ss, "scrub-interval", "2s"]);
    let mut se = Session { g: &g, child: None };
    se.run();
    se.converge("start");
    rustix::fs::removexattr(s.join("f"), "user.tag").unwrap();
    let mut found = false;
    let repaired = wait_until(Duration::from_secs(40), || {
        found |= row(&g, ms, ss)["scrub"]["differences"]
            .as_u64()
            .is_some_and(|d| d > 0);
        let mut buf = [0u8; 16];
        found && rustix::fs::getxattr(s.join("f"), "user.tag", &mut buf[..]).is_ok()
    });
    assert!(repaired, "{}\n{}", row(&g, ms, ss), se.log());
    se.stop();
}
