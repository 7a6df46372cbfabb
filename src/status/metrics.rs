//! The Prometheus text exposition format (version 0.0.4) of a session's status rows: what the
//! monitor serves at `metrics-listen` and writes for node_exporter's textfile collector. The
//! values are the ones `georep status --json` shows, read the same way.

use super::Row;
use std::fmt::Write;

/// Every value `georep_worker_status` and `georep_crawl_status` take a series for (0 or 1), so
/// that an alert on `== 1` never meets a missing series.
pub const WORKER_STATES: [&str; 7] = {
    let mut out = [""; 7];
    let mut i = 0;
    while i < 7 {
        out[i] = super::WorkerStatus::ALL[i].as_str();
        i += 1;
    }
    out
};
pub const CRAWL_STATES: [&str; 4] = {
    let mut out = [""; 4];
    let mut i = 0;
    while i < 4 {
        out[i] = super::CrawlStatus::ALL[i].as_str();
        i += 1;
    }
    out
};

/// A label value, escaped as the format asks (backslash, double quote, newline).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Family<'a> {
    name: &'a str,
    kind: &'a str,
    help: &'a str,
}

/// The metrics of `session` on this node: `rows` (its bricks here) and, per brick path, how
/// often the monitor restarted its worker; `up` is whether the monitor runs.
pub fn render(session: &str, up: bool, rows: &[Row], restarts: &dyn Fn(&str) -> u64) -> String {
    let mut out = String::new();
    let head = |out: &mut String, f: &Family<'_>| {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
    };
    let s = label(session);
    head(
        &mut out,
        &Family {
            name: "georep_session_up",
            kind: "gauge",
            help: "1 while the session's monitor runs on this node.",
        },
    );
    let _ = writeln!(out, "georep_session_up{{session=\"{s}\"}} {}", u8::from(up));
    head(
        &mut out,
        &Family {
            name: "georep_metrics_timestamp_seconds",
            kind: "gauge",
            help: "When these values were read: a textfile whose time stops moving belongs to a monitor that died.",
        },
    );
    let _ = writeln!(
        out,
        "georep_metrics_timestamp_seconds{{session=\"{s}\"}} {}",
        chrono::Utc::now().timestamp()
    );
    let labels = |r: &Row| {
        format!(
            "session=\"{s}\",master_node=\"{}\",brick=\"{}\"",
            label(&r.master_node),
            label(&r.master_brick)
        )
    };
    let gauge = |out: &mut String, f: Family<'_>, value: &dyn Fn(&Row) -> Option<f64>| {
        head(out, &f);
        for r in rows {
            if let Some(v) = value(r) {
                let _ = writeln!(out, "{}{{{}}} {v}", f.name, labels(r));
            }
        }
    };
    let synced = |r: &Row| {
        r.last_synced_utc
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp() as f64)
    };
    gauge(
        &mut out,
        Family {
            name: "georep_last_synced_timestamp_seconds",
            kind: "gauge",
            help: "LAST_SYNCED: every change made on the brick before this time is durable on the DR site (absent before the first sync).",
        },
        &synced,
    );
    gauge(
        &mut out,
        Family {
            name: "georep_lag_seconds",
            kind: "gauge",
            help: "Seconds between LAST_SYNCED and now (absent before the first sync).",
        },
        &|r| r.lag_seconds.map(|v| v as f64),
    );
    let num = |v: u64| Some(v as f64);
    gauge(
        &mut out,
        Family {
            name: "georep_backlog_records",
            kind: "gauge",
            help: "Journal records not yet on the DR site.",
        },
        &|r| num(r.backlog_records),
    );
    gauge(
        &mut out,
        Family {
            name: "georep_backlog_bytes",
            kind: "gauge",
            help: "Content bytes of the backlog's files (their current sizes).",
        },
        &|r| num(r.backlog_bytes),
    );
    for (name, help, states, of) in [
        (
            "georep_worker_status",
            "The brick worker's STATUS: 1 for the current value, 0 for the others.",
            &WORKER_STATES[..],
            (|r: &Row| r.status.as_str().to_string()) as fn(&Row) -> String,
        ),
        (
            "georep_crawl_status",
            "The brick worker's CRAWL STATUS: 1 for the current value, 0 for the others.",
            &CRAWL_STATES[..],
            |r: &Row| r.crawl_status.as_str().to_string(),
        ),
    ] {
        head(
            &mut out,
            &Family {
                name,
                kind: "gauge",
                help,
            },
        );
        let key = if name == "georep_worker_status" {
            "status"
        } else {
            "crawl"
        };
        for r in rows {
            let current = of(r);
            let mut all: Vec<&str> = states.to_vec();
            if !all.contains(&current.as_str()) {
                all.push(current.as_str());
            }
            for v in all {
                let _ = writeln!(
                    out,
                    "{name}{{{},{key}=\"{}\"}} {}",
                    labels(r),
                    label(v),
                    u8::from(v == current)
                );
            }
        }
    }
    gauge(
        &mut out,
        Family {
            name: "georep_files_synced_total",
            kind: "counter",
            help: "Files whose content was shipped (DATA) since the session was created here.",
        },
        &|r| num(r.data),
    );
    gauge(
        &mut out,
        Family {
            name: "georep_bytes_synced_total",
            kind: "counter",
            help: "Content bytes shipped since the session was created here.",
        },
        &|r| num(r.bytes),
    );
    gauge(
        &mut out,
        Family {
            name: "georep_entries_synced_total",
            kind: "counter",
            help: "Entry operations shipped (creates, deletes, renames: ENTRY).",
        },
        &|r| num(r.entries),
    );
    gauge(
        &mut out,
        Family {
            name: "georep_failures",
            kind: "gauge",
            help: "Paths that failed to apply on the DR site and are retried (FAILURES).",
        },
        &|r| num(r.failures),
    );
    gauge(
        &mut out,
        Family {
            name: "georep_checkpoint_completed",
            kind: "gauge",
            help: "1 once every change made before the checkpoint is on the DR site, 0 before (absent with no checkpoint set).",
        },
        &|r| match r.checkpoint_completed.as_str() {
            "Yes" => Some(1.0),
            "No" => Some(0.0),
            _ => None,
        },
    );
    gauge(
        &mut out,
        Family {
            name: "georep_worker_restarts_total",
            kind: "counter",
            help: "Times the monitor restarted the brick's worker after it died.",
        },
        &|r| num(restarts(&r.master_brick)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(status: &str, brick: &str) -> Row {
        let mut r = super::super::table::tests::row(brick, "ssh://root@dr1::gv-dr");
        r.master_node = "n1".into();
        r.status = serde_json::from_value(serde_json::json!(status)).unwrap();
        r.last_synced_utc = Some("2026-12-05T06:00:00Z".into());
        r
    }

    /// Every sample line is `name{labels} value` with a family declared before it, label
    /// values are escaped, and the one-hot status has exactly one 1 per brick.
    #[test]
    fn the_exposition_is_well_formed_and_one_hot() {
        let text = render(
            "gv \"dr\"",
            true,
            &[row("Active", "/b\\1"), row("Passive", "/b2")],
            &|b| if b == "/b2" { 4 } else { 0 },
        );
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = line.split('{').next().unwrap();
            assert!(declared.contains(name), "{name} has no TYPE: {text}");
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("session=\"gv \\\"dr\\\"\""), "{text}");
        assert!(text.contains("brick=\"/b\\\\1\""), "{text}");
        let ones = |brick: &str| {
            text.lines()
                .filter(|l| l.starts_with("georep_worker_status{"))
                .filter(|l| l.contains(&format!("brick=\"{brick}\"")) && l.ends_with(" 1"))
                .count()
        };
        assert_eq!(ones("/b2"), 1);
        assert!(text.contains(
            "georep_worker_status{session=\"gv \\\"dr\\\"\",master_node=\"n1\",brick=\"/b2\",status=\"Passive\"} 1"
        ));
        assert!(text.contains("brick=\"/b2\"} 4"), "restarts: {text}");
        assert!(text.contains("georep_last_synced_timestamp_seconds{"));
        assert!(!text.contains("georep_checkpoint_completed{"), "none set");
    }
}
