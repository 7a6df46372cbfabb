//! Prometheus metrics of a real session (issue 18): scraped over HTTP at `metrics-listen` and
//! read from the textfile, they say what `status --json` says; the example alert rules are
//! valid where promtool exists; `status --watch` redraws the table.

use crate::util::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// GET `path` from 127.0.0.1:`port`: status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// The samples of a text exposition: `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

/// The one sample of `name` whose labels contain `with`.
fn sample(s: &HashMap<String, f64>, name: &str, with: &str) -> f64 {
    let found: Vec<_> = s
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(with))
        .collect();
    assert_eq!(found.len(), 1, "{name} with {with}: {found:?}");
    *found[0].1
}

#[test]
fn metrics_are_served_and_written_and_match_status_json() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    make_varied_tree(&m, 1 << 20);
    let port = free_port();
    g.ok(&["create", ms, ss]);
    g.ok(&[
        "config",
        ms,
        ss,
        "metrics-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    let mut se = Session { g: &g, child: None };
    se.run();
    se.converge("first sync");
    let row = se.status();
    let json: serde_json::Value =
        serde_json::from_str(&g.ok(&["status", ms, ss, "--json"])).unwrap();
    let json = &json[0];
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "nothing listens on {port}: {}",
        se.log()
    );
    let (code, body) = http_get(port, "/metrics");
    assert_eq!(code, 200, "{body}");
    let m = samples(&body);
    let brick = format!("brick=\"{}\"", json["master_brick"].as_str().unwrap());
    assert_eq!(sample(&m, "georep_worker_status", "status=\"Active\""), 1.0);
    assert_eq!(sample(&m, "georep_worker_status", "status=\"Faulty\""), 0.0);
    assert_eq!(
        sample(&m, "georep_crawl_status", "crawl=\"Changelog Crawl\""),
        1.0
    );
    let synced = chrono::DateTime::parse_from_rfc3339(json["last_synced_utc"].as_str().unwrap())
        .unwrap()
        .timestamp() as f64;
    // The session is idle: LAST_SYNCED moves with the writer's markers, a second at most.
    let scraped = sample(&m, "georep_last_synced_timestamp_seconds", &brick);
    assert!((scraped - synced).abs() <= 2.0, "{scraped} vs {synced}");
    for (metric, field) in [
        ("georep_files_synced_total", "data"),
        ("georep_entries_synced_total", "entries"),
        ("georep_bytes_synced_total", "bytes"),
        ("georep_backlog_records", "backlog_records"),
        ("georep_failures", "failures"),
    ] {
        assert_eq!(
            sample(&m, metric, &brick),
            json[field].as_u64().unwrap() as f64,
            "{metric} vs {field}: {json:#}"
        );
    }
    assert!(n(json, "data") > 0 && n(json, "bytes") > 0, "{json:#}");
    assert_eq!(sample(&m, "georep_worker_restarts_total", &brick), 0.0);
    assert_eq!(sample(&m, "georep_session_up", "session="), 1.0);
    assert!(row["status"] == "Active");
    assert_eq!(http_get(port, "/nothing").0, 404);

    // The textfile for node_exporter says the same, and says down once the session stops.
    let dir = g.path("home/metrics");
    let prom = || {
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".prom"))
            .map(|e| std::fs::read_to_string(e.path()).unwrap())
    };
    // Rewritten every 5 s.
    let data = json["data"].as_u64().unwrap() as f64;
    assert!(
        wait_until(Duration::from_secs(15), || prom().is_some_and(|t| {
            sample(&samples(&t), "georep_files_synced_total", &brick) == data
        })),
        "the textfile does not say {data} files synced: {:?}",
        prom()
    );
    se.stop();
    let t = samples(&prom().unwrap());
    assert_eq!(sample(&t, "georep_session_up", "session="), 0.0);
    assert_eq!(
        sample(&t, "georep_worker_status", "status=\"Stopped\""),
        1.0
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// A bad address is refused when set, naming the form expected.
#[test]
fn metrics_listen_must_be_an_address() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    g.ok(&["create", ms, ss]);
    g.fails(
        &["config", ms, ss, "metrics-listen", "localhost"],
        2,
        "127.0.0.1:9813",
    );
    g.ok(&["config", ms, ss, "metrics-listen", "127.0.0.1:9813"]);
    assert!(stdout(&g.run(&["config", ms, ss, "metrics-listen"])).contains("127.0.0.1:9813"));
    g.ok(&["config", ms, ss, "metrics-listen", "off"]);
}

/// The example alert rules and dashboard parse; promtool (Debian's prometheus package, which
/// scripts/test.sh installs) checks the rules.
#[test]
fn the_example_alert_rules_and_dashboard_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/prometheus");
    let rules = root.join("georep-alerts.yml");
    let text = std::fs::read_to_string(&rules).unwrap();
    for alert in [
        "GeorepFaulty",
        "GeorepLagHigh",
        "GeorepFailures",
        "GeorepSessionDown",
        "GeorepMetricsStale",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert} missing");
    }
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("georep-dashboard.json")).unwrap())
            .unwrap();
    assert!(!dash["panels"].as_array().unwrap().is_empty());
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(o) => assert!(o.status.success(), "promtool: {}{}", stdout(&o), stderr(&o)),
        Err(e) => panic!("promtool ({e}): scripts/test.sh installs Debian's prometheus package; this check must run"),
    }
}

/// `status --watch` redraws the table until interrupted.
#[test]
fn status_watch_redraws_the_table() {
    let g = Georep::new();
    let (m, s) = (g.master(), g.slave());
    let (ms, ss) = (m.to_str().unwrap(), s.to_str().unwrap());
    g.ok(&["create", ms, ss]);
    let mut c = g
        .cmd()
        .args(["status", ms, ss, "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let _ = c.kill();
    let out = c.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.matches("Every 1 s: georep status").count() >= 2,
        "{out}"
    );
    assert!(out.matches("MASTER NODE").count() >= 2, "{out}");
    g.fails(
        &["status", ms, ss, "--watch", "--json"],
        2,
        "cannot be used with",
    );
}
