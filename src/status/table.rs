//! The status table as `georep status [detail]` prints it, and the scrub's summary line.

use super::Row;

/// The default table's width budget: long paths are shortened in the middle to fit it.
pub const TABLE_WIDTH: usize = 120;
/// A shortened path keeps at least this many characters.
const MIN_PATH_WIDTH: usize = 16;

/// The Gluster-style table. By default one row per brick in about 120 columns: MASTER NODE,
/// MASTER VOL, MASTER BRICK, SLAVE (`ssh://user@host[:port]::volume`, which also names the
/// slave user and node), STATUS, CRAWL STATUS, LAST_SYNCED; long paths are shortened in the
/// middle. `detail` keeps every value whole and adds SLAVE USER, SLAVE NODE, the counters,
/// checkpoint columns, backlog, lag and the last error.
pub fn table(rows: &[Row], detail: bool) -> String {
    let mut header = vec!["MASTER NODE", "MASTER VOL", "MASTER BRICK"];
    if detail {
        header.extend(["SLAVE USER", "SLAVE", "SLAVE NODE"]);
    } else {
        header.push("SLAVE");
    }
    header.extend(["STATUS", "CRAWL STATUS", "LAST_SYNCED"]);
    if detail {
        header.extend([
            "ENTRY",
            "DATA",
            "META",
            "FAILURES",
            "CHECKPOINT TIME",
            "CHECKPOINT COMPLETED",
            "CHECKPOINT COMPLETION TIME",
            "BACKLOG",
            "BACKLOG BYTES",
            "LAG",
        ]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.master_node.clone(),
                r.master_vol.clone(),
                r.master_brick.clone(),
            ];
            if detail {
                c.extend([r.slave_user.clone(), r.slave.clone(), r.slave_node.clone()]);
            } else {
                c.push(r.slave.clone());
            }
            c.extend([
                r.status.to_string(),
                r.crawl_status.to_string(),
                r.last_synced.clone(),
            ]);
            if detail {
                c.extend([
                    r.entries.to_string(),
                    r.data.to_string(),
                    r.meta.to_string(),
                    r.failures.to_string(),
                    r.checkpoint_time.clone(),
                    r.checkpoint_completed.clone(),
                    r.checkpoint_completion_time.clone(),
                    r.backlog_records.to_string(),
                    crate::status::human_bytes(r.backlog_bytes),
                    r.lag_seconds
                        .map(|l| format!("{l} s"))
                        .unwrap_or_else(|| "N/A".into()),
                ]);
            }
            c
        })
        .collect();
    let width = |s: &str| s.chars().count();
    let mut w: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for c in &cells {
        for (i, v) in c.iter().enumerate() {
            w[i] = w[i].max(width(v));
        }
    }
    if !detail {
        // MASTER VOL, MASTER BRICK and SLAVE give way, widest first, down to a readable width.
        let shrinkable = [1, 2, 3];
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * (w.len() - 1);
        while total(&w) > TABLE_WIDTH {
            let Some(&i) = shrinkable
                .iter()
                .filter(|&&i| w[i] > MIN_PATH_WIDTH.max(width(header[i])))
                .max_by_key(|&&i| w[i])
            else {
                break;
            };
            w[i] -= 1;
        }
    }
    let line = |v: Vec<&str>| {
        v.iter()
            .enumerate()
            .map(|(i, s)| format!("{:<width$}", shorten_middle(s, w[i]), width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (w.len() - 1)));
    out.push('\n');
    for c in &cells {
        out.push_str(&line(c.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    if detail {
        for r in rows.iter().filter(|r| r.last_error.is_some()) {
            out.push_str(&format!(
                "\n{}:{} last error: {}\n",
                r.master_node,
                r.master_brick,
                r.last_error.as_deref().unwrap_or_default()
            ));
        }
        for r in rows.iter().filter(|r| r.warning.is_some()) {
            out.push_str(&format!(
                "\n{}:{} warning: {}\n",
                r.master_node,
                r.master_brick,
                r.warning.as_deref().unwrap_or_default()
            ));
        }
        for r in rows {
            if let Some(line) = scrub_line(r) {
                out.push_str(&format!("\n{}:{} {line}\n", r.master_node, r.master_brick));
            }
        }
        for r in rows.iter().filter(|r| r.last_disconnect.is_some()) {
            out.push_str(&format!(
                "\n{}:{} connection lost {} time(s), last at {}\n",
                r.master_node,
                r.master_brick,
                r.disconnects,
                r.last_disconnect.as_deref().unwrap_or_default()
            ));
        }
    }
    out
}

/// The last scrub pass in words, with the first differences (for `status detail`, `scrub`).
pub fn scrub_line(r: &Row) -> Option<String> {
    let Some(s) = r.scrub.as_ref() else {
        return match (&r.scrub_error, r.scrub_running) {
            (Some(e), _) => Some(format!(
                "no completed scrub pass yet; the last could not complete: {e}"
            )),
            (None, true) => Some("a first scrub pass is running".into()),
            (None, false) => None,
        };
    };
    let mut line = format!(
        "last scrub {} (pass {}): {} entries compared, {} hashed (contents {}), {} difference(s)",
        r.last_scrub,
        s.pass,
        s.entries,
        crate::status::human_bytes(s.bytes_hashed),
        s.checksum,
        s.differences
    );
    if s.differences > 0 {
        line.push_str(&match &s.repair_failed {
            Some(e) => format!(", repair failed: {e}"),
            None if s.repaired == s.differences => ", repaired".to_string(),
            None => ", not repaired (scrub-repair is off)".to_string(),
        });
        for p in &s.paths {
            line.push_str(&format!("\n    {p}"));
        }
        if s.differences as usize > s.paths.len() {
            line.push_str(&format!(
                "\n    ... and {} more (the worker's log lists every one)",
                s.differences as usize - s.paths.len()
            ));
        }
    }
    if let Some(h) = &r.scrub_hold_utc {
        line.push_str(&format!(
            "\n    LAST_SYNCED is held at {h} until a scrub finds the copy equal"
        ));
    }
    if r.scrub_running {
        line.push_str("\n    a scrub pass is running");
    }
    if let Some(e) = &r.scrub_error {
        line.push_str(&format!("\n    the last pass could not complete: {e}"));
    }
    Some(line)
}

/// `s` in at most `max` characters: its start and end with `…` between when it is longer.
pub fn shorten_middle(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max || max < 3 {
        return s.to_string();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(brick: &str, slave: &str) -> Row {
        Row {
            master_node: "gfs-node1".into(),
            master_vol: "gv0".into(),
            master_brick: brick.into(),
            slave_user: "root".into(),
            slave: slave.into(),
            slave_node: "dr1".into(),
            status: crate::status::WorkerStatus::Active,
            crawl_status: crate::status::CrawlStatus::Changelog,
            last_synced: "2026-12-04 06:04:02 UTC".into(),
            last_synced_utc: None,
            lag_seconds: Some(1),
            entries: 0,
            data: 0,
            bytes: 0,
            meta: 0,
            failures: 0,
            backlog_records: 0,
            backlog_bytes: 0,
            checkpoint_time: "N/A".into(),
            checkpoint_time_utc: None,
            checkpoint_completed: "N/A".into(),
            checkpoint_completion_time: "N/A".into(),
            checkpoint_completion_time_utc: None,
            hybrid_crawls: 0,
            takeovers: 0,
            last_error: None,
            warning: None,
            disconnects: 0,
            last_disconnect: None,
            last_scrub: "N/A".into(),
            last_scrub_utc: None,
            scrub: None,
            scrub_running: false,
            scrub_error: None,
            scrub_interval_seconds: None,
            scrub_hold_utc: None,
            worker_started_ns: None,
        }
    }

    fn widest(t: &str) -> usize {
        t.lines().map(|l| l.chars().count()).max().unwrap()
    }

    #[test]
    fn the_table_fits_120_columns_and_shortens_long_paths_in_the_middle() {
        let normal = table(
            &[row("/bricks/brick1", "ssh://root@dr1:2222::gv0-dr")],
            false,
        );
        assert!(widest(&normal) <= TABLE_WIDTH, "{normal}");
        assert!(
            normal.contains(" /bricks/brick1 ") && normal.contains("ssh://root@dr1:2222::gv0-dr"),
            "{normal}"
        );
        let long = format!("/data/{}brick-end", "very-long-directory-name/".repeat(6));
        let t = table(
            &[row(
                &long,
                "ssh://replication@dr-site-1.example.com::/dr/volumes/gv0",
            )],
            false,
        );
        assert!(widest(&t) <= TABLE_WIDTH, "{t}");
        assert!(
            t.contains(" /data/very") && t.contains("/brick-end ") && t.contains('…'),
            "{t}"
        );
        // detail keeps everything whole.
        let d = table(&[row(&long, "ssh://root@dr1::gv0")], true);
        assert!(
            d.contains(&long) && d.contains("SLAVE USER") && d.contains("SLAVE NODE"),
            "{d}"
        );
    }

    #[test]
    fn shortening_keeps_both_ends() {
        assert_eq!(shorten_middle("/abcdefghij", 7), "/ab…hij");
        assert_eq!(shorten_middle("/short", 16), "/short");
    }
}
