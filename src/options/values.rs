//! How option values are written: durations, sizes, shares, times, booleans and numbers, each
//! parsed with a message naming the key and the forms it takes, and shown as it is written.

use anyhow::{anyhow, bail, Result};

/// `90`, `90s`, `30m`, `1h`, `1d` as seconds.
pub(super) fn parse_duration(key: &str, s: &str) -> Result<u64> {
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("{key}: {s:?} is not a duration: use e.g. 90s, 30m, 1h or 0 (off)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("{key}: {s:?}: the unit is s, m, h or d"),
    };
    n.checked_mul(mult)
        .filter(|v| *v <= 365 * 86400)
        .ok_or_else(|| anyhow!("{key}: {s:?} is more than a year"))
}

/// `metrics-listen`: a socket address (`127.0.0.1:9813`, `[::1]:9813`, `0.0.0.0:9813`).
pub fn parse_listen(v: &str) -> Result<std::net::SocketAddr> {
    v.parse().map_err(|_| {
        anyhow!("metrics-listen: {v:?} is not an address and port: use e.g. 127.0.0.1:9813, or off")
    })
}

pub(super) fn show_duration(secs: u64) -> String {
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// `all`, `off` (or 0) or `1/N`: the share of files whose contents one scrub pass hashes.
pub(super) fn parse_share(s: &str) -> Result<u32> {
    match s {
        "all" | "1" => Ok(1),
        "off" | "0" | "none" => Ok(0),
        _ => {
            let n = s
                .strip_prefix("1/")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=100_000).contains(n));
            n.ok_or_else(|| {
                anyhow!("scrub-checksum {s:?}: use all, off, or 1/N (N up to 100000): each pass hashes one file in N, in turn")
            })
        }
    }
}

/// `off`, `all` or `1/N`, as `scrub-checksum` is written.
pub fn show_share(n: u32) -> String {
    match n {
        0 => "off".into(),
        1 => "all".into(),
        n => format!("1/{n}"),
    }
}

/// `64M`, `1G`, `512K`, `1000`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => bail!("{s:?}: unknown size suffix {c:?}, use K, M or G"),
            };
            (&t[..i], mul)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("{s:?} is not a size (a number with an optional K, M or G)"))?;
    n.checked_mul(mul)
        .ok_or_else(|| anyhow!("{s:?} is too large"))
}

pub(super) fn show_size(n: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// `now`, `YYYY-MM-DD HH:MM:SS` (local time, or followed by `UTC` or an offset such as `+01:00`,
/// as `show_time` prints it) or RFC 3339, as ns since the epoch.
pub fn parse_time(s: &str) -> Result<i64> {
    if s == "now" {
        return Ok(crate::journal::record::now_ns());
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| anyhow!("{s:?} is out of range"));
    }
    let zoned = s
        .strip_suffix(" UTC")
        .map(|t| format!("{t} +00:00"))
        .unwrap_or_else(|| s.to_string());
    if let Ok(t) = chrono::DateTime::parse_from_str(&zoned, "%Y-%m-%d %H:%M:%S %:z") {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| anyhow!("{s:?} is out of range"));
    }
    let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").map_err(|_| {
        anyhow!("{s:?} is not a time: use `now`, `YYYY-MM-DD HH:MM:SS` (local) or RFC 3339")
    })?;
    let local = naive
        .and_local_timezone(chrono::Local)
        .earliest()
        .ok_or_else(|| anyhow!("{s:?} does not exist in the local time zone"))?;
    local
        .timestamp_nanos_opt()
        .ok_or_else(|| anyhow!("{s:?} is out of range"))
}

/// `YYYY-MM-DD HH:MM:SS` in local time with its zone: `UTC`, or the offset (`+01:00`).
pub fn show_time(ns: i64) -> String {
    let t = chrono::DateTime::from_timestamp_nanos(ns).with_timezone(&chrono::Local);
    if t.offset().local_minus_utc() == 0 {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S %:z").to_string()
    }
}

pub(super) fn parse_bool(s: &str) -> Result<bool> {
    match s {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => bail!("{s:?} is not a boolean: use true or false"),
    }
}

pub(super) fn parse_num<T>(key: &str, s: &str, lo: T, hi: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let v: T = s
        .parse()
        .map_err(|_| anyhow!("{key}: {s:?} is not a number"))?;
    if v < lo || v > hi {
        bail!("{key}: {v} is out of range, use {lo} to {hi}");
    }
    Ok(v)
}
