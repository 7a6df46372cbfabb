//! The commands that report: status (and its watch), failures, scrub, verify, and the reverse
//! pass's report.

use super::args::*;
use super::{local_path, session};
use crate::config::Home;
use crate::session::SessionConfig;
use anyhow::{bail, Result};
use std::process::ExitCode;

pub(super) fn status_cmd(home: &Home, a: StatusArgs) -> Result<ExitCode> {
    let mut words: Vec<String> = a.words.clone();
    let detail = words.last().is_some_and(|w| w == "detail");
    if detail {
        words.pop();
    }
    let (master, slave) = match words.as_slice() {
        [] => (None, None),
        [m] => match SessionConfig::named(home, m) {
            Some(c) => (Some(c.master), Some(c.slave)),
            None => (Some(local_path(m)?), None),
        },
        [m, w] if SessionConfig::named(home, m).is_some_and(|c| c.slave != *w) => bail!(
            "unknown word {w:?} for `georep status {m}`: expected detail ({m} is a session's name)"
        ),
        [m, s] => (Some(local_path(m)?), Some(local_path(s)?)),
        [_, _, w, ..] => bail!(
            "unknown word {w:?} for `georep status`: expected detail (usage: georep status [MASTER [SLAVE]] [detail] [--json] [--check])"
        ),
    };
    if let Some(every) = a.watch {
        return watch(
            home,
            master.as_deref(),
            slave.as_deref(),
            detail,
            every.max(1),
        );
    }
    let rows = crate::status::rows(home, master.as_deref(), slave.as_deref())?;
    if a.check {
        let (code, line) = crate::status::check(&rows, a.max_lag);
        println!("{line}");
        return Ok(ExitCode::from(code));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("No active geo-replication sessions");
    } else {
        print!("{}", crate::status::table(&rows, detail));
    }
    Ok(ExitCode::SUCCESS)
}

/// `status --watch`: the table redrawn in place every `every` seconds on a terminal (one table
/// after another when the output is not one), until interrupted.
fn watch(
    home: &Home,
    master: Option<&str>,
    slave: Option<&str>,
    detail: bool,
    every: u64,
) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    loop {
        let rows = crate::status::rows(home, master, slave)?;
        let table = if rows.is_empty() {
            "No active geo-replication sessions\n".to_string()
        } else {
            crate::status::table(&rows, detail)
        };
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let mut out = std::io::stdout().lock();
        if tty {
            // Home, then clear to the end: no flicker, nothing scrolls.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        writeln!(out, "Every {every} s: georep status    {now}\n")?;
        write!(out, "{table}")?;
        if !tty {
            writeln!(out)?;
        }
        out.flush()?;
        drop(out);
        std::thread::sleep(std::time::Duration::from_secs(every));
    }
}

pub(super) fn print_reverse(r: &crate::failback::ReverseReport, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
    } else {
        for a in &r.actions {
            match &a.kept_as {
                Some(k) => println!("conflict  {}  (master's version kept as {k})", a.path),
                None => println!("{:<8}  {}", a.action, a.path),
            }
        }
        for f in &r.failures {
            eprintln!("failed: {f}");
        }
        println!(
            "{}{} <- {}: {} files ({}) pulled, {} created, {} deleted, {} conflicts, {} failures",
            if r.dry_run { "(dry run) " } else { "" },
            r.master,
            r.slave,
            r.pulled_files,
            crate::status::human_bytes(r.pulled_bytes),
            r.created,
            r.deleted,
            r.conflicts.len(),
            r.failures.len()
        );
    }
    Ok(if r.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `georep failures`: the paths that failed and why.
pub(super) fn failures(home: &Home, a: FailuresArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "failures", &a.session)?;
    let list = crate::status::failures(home, &SessionConfig::load(home, &m, &s)?)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.is_empty() {
        println!("No failures");
    } else {
        for f in &list {
            println!(
                "{}  {}  {} (errno {}, side {}, {} attempts)",
                f.brick, f.path, f.message, f.errno, f.side, f.attempts
            );
        }
    }
    Ok(if list.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `georep scrub`: the last pass of each brick, or one now.
pub(super) fn scrub(home: &Home, a: ScrubArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "scrub", &a.session)?;
    if a.now {
        let cfg = SessionConfig::load(home, &m, &s)?;
        for line in crate::daemon::request_scrub(home, &cfg, a.checksum)? {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows = crate::status::rows(home, Some(&m), Some(&s))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &rows
                    .iter()
                    .map(|r| serde_json::json!({
                        "master_node": r.master_node, "master_brick": r.master_brick,
                        "last_scrub": r.last_scrub, "last_scrub_utc": r.last_scrub_utc,
                        "scrub": r.scrub, "scrub_running": r.scrub_running,
                        "scrub_interval_seconds": r.scrub_interval_seconds,
                    }))
                    .collect::<Vec<_>>()
            )?
        );
    } else {
        for r in &rows {
            let line = crate::status::scrub_line(r).unwrap_or_else(|| {
                format!(
                    "no scrub pass yet{}",
                    if r.scrub_running {
                        " (one is running)"
                    } else {
                        ""
                    }
                )
            });
            println!("{}:{} {line}", r.master_node, r.master_brick);
        }
    }
    let differ = rows
        .iter()
        .any(|r| r.scrub.as_ref().is_some_and(|s| s.differences > 0));
    Ok(if differ {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `georep verify`.
pub(super) fn verify(home: &Home, a: VerifyArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "verify", &a.session)?;
    let r = crate::verify::verify(home, &m, &s, a.checksum)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for d in &r.differences {
            println!("{}  {}: {}", d.brick, d.path, d.what);
        }
        if r.differences_omitted > 0 {
            println!(
                "… and {} more differences, not listed (the report keeps the first of each brick)",
                r.differences_omitted
            );
        }
        println!(
            "{} -> {}: {} ({} entries on the master, {} on the slave{}, {:.2} s)",
            r.master,
            r.slave,
            match r.total_differences() {
                0 => "equal".to_string(),
                n => format!("{n} differences"),
            },
            r.master_entries,
            r.slave_entries,
            if r.checksum {
                ", contents compared"
            } else {
                ""
            },
            r.elapsed_ms as f64 / 1000.0
        );
    }
    Ok(if r.total_differences() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
