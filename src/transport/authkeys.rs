//! authorized_keys, read as OpenSSH's sshd reads it (`sshd(8)`, AUTHORIZED_KEYS FILE FORMAT),
//! for `georep serve`: the line for a key and a client (`lookup`), and its options.
//!
//! Invariant: a line whose options do not parse, or that uses an option `serve` cannot honour,
//! allows nothing — as in sshd, where a bad option line is skipped.

use chrono::{Local, NaiveDateTime, TimeZone, Utc};
use russh::keys::ssh_key::PublicKey;
use std::net::IpAddr;
use std::path::Path;

/// The options of one authorized_keys line that `serve` acts on.
#[derive(Debug, Default, PartialEq)]
pub struct KeyOptions {
    pub command: Option<String>,
    pub from: Option<String>,
    pub expiry: Option<String>,
}

/// Options `serve` accepts and needs nothing for: it never grants a pty, forwarding, an agent,
/// X11, a user rc or a tunnel, whatever the line says.
const IGNORED: &[&str] = &[
    "restrict",
    "no-pty",
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-user-rc",
    "no-touch-required",
    "pty",
    "port-forwarding",
    "agent-forwarding",
    "x11-forwarding",
    "user-rc",
    "permitopen",
    "permitlisten",
    "environment",
    "tunnel",
];

/// Parses `opt[,opt...]` where `opt` is `name` or `name="value"` (a `\"` inside the quotes is a
/// quote; commas inside quotes belong to the value). Names are case-insensitive.
pub fn parse_options(opts: &str) -> Result<KeyOptions, String> {
    let mut out = KeyOptions::default();
    let mut rest = opts;
    while !rest.is_empty() {
        let name_end = rest.find([',', '=']).unwrap_or(rest.len());
        let name = rest[..name_end].to_ascii_lowercase();
        rest = &rest[name_end..];
        let value = if let Some(r) = rest.strip_prefix('=') {
            let r = r
                .strip_prefix('"')
                .ok_or_else(|| format!("option {name}= needs a quoted value"))?;
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' if r[i + 1..].starts_with('"') => {
                        v.push('"');
                        chars.next();
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end.ok_or_else(|| format!("option {name}= has no closing quote"))?;
            rest = &r[end..];
            Some(v)
        } else {
            None
        };
        match rest.strip_prefix(',') {
            Some(r) if !r.is_empty() => rest = r,
            Some(_) => return Err("options end with a comma".into()),
            None if rest.is_empty() => {}
            None => return Err(format!("unexpected {rest:?} after option {name}")),
        }
        let slot = match name.as_str() {
            "command" => &mut out.command,
            "from" => &mut out.from,
            "expiry-time" => &mut out.expiry,
            n if IGNORED.contains(&n) => continue,
            "" => return Err("empty option".into()),
            n => return Err(format!("option {n:?} is not supported by georep serve")),
        };
        let v = value.ok_or_else(|| format!("option {name} needs a value"))?;
        if slot.replace(v).is_some() {
            return Err(format!("option {name} given twice"));
        }
    }
    Ok(out)
}

/// Whether `ip` is allowed by a `from=` pattern list: comma-separated patterns with `*` and `?`
/// wildcards or CIDR `addr/len`, each negated by a leading `!`. A matching negated pattern
/// refuses; otherwise some positive pattern must match. Host names are not looked up (as with
/// sshd's default `UseDNS no`), so only address patterns can match. A malformed CIDR pattern
/// refuses the whole list (sshd refuses the line): a broken `!` entry must not fail open.
pub fn from_matches(list: &str, ip: IpAddr) -> bool {
    let malformed = list
        .split(',')
        .map(|p| p.trim().trim_start_matches('!'))
        .any(|p| p.contains('/') && cidr_parts(p).is_none());
    if malformed {
        return false;
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    let text = ip.to_string();
    let mut allowed = false;
    for pat in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, pat) = match pat.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pat),
        };
        let hit = if pat.contains('/') {
            cidr_contains(pat, ip)
        } else {
            wildcard(pat.as_bytes(), text.as_bytes())
        };
        if hit && negated {
            return false;
        }
        allowed |= hit;
    }
    allowed
}

/// The network and prefix length of `addr/len`, when well formed.
fn cidr_parts(pat: &str) -> Option<(IpAddr, u32)> {
    let (addr, len) = pat.split_once('/')?;
    let (net, len) = (addr.parse::<IpAddr>().ok()?, len.parse::<u32>().ok()?);
    let max = if net.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((net, len))
}

fn cidr_contains(pat: &str, ip: IpAddr) -> bool {
    let Some((net, len)) = cidr_parts(pat) else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) if len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// `*` matches any run, `?` any one character.
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&p[1..], s) || (!s.is_empty() && wildcard(p, &s[1..])),
        (Some(b'?'), Some(_)) => wildcard(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => wildcard(&p[1..], &s[1..]),
        _ => false,
    }
}

/// Whether `expiry-time="YYYYMMDD[HHMM[SS]][Z]"` has passed: local time, or UTC with `Z`.
pub fn expired(v: &str) -> Result<bool, String> {
    let (digits, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (v, false),
    };
    let full = match digits.len() {
        8 => format!("{digits}000000"),
        12 => format!("{digits}00"),
        14 => digits.to_string(),
        _ => return Err(format!("expiry-time {v:?} is not YYYYMMDD[HHMM[SS]]")),
    };
    let t = NaiveDateTime::parse_from_str(&full, "%Y%m%d%H%M%S")
        .map_err(|e| format!("expiry-time {v:?}: {e}"))?;
    let at = if utc {
        Utc.from_utc_datetime(&t).timestamp()
    } else {
        Local
            .from_local_datetime(&t)
            .earliest()
            .ok_or_else(|| format!("expiry-time {v:?} does not exist in local time"))?
            .timestamp()
    };
    Ok(Utc::now().timestamp() >= at)
}

/// What the authorized_keys line of a key allows.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// Not listed, or listed but not for this client now (the reason is logged).
    Refused,
    /// Listed; the forced command, if the line has one.
    Allowed(Option<String>),
}

/// The line holding `key` in `file`, checked as OpenSSH's sshd checks it for a client at
/// `peer`: `from=` must match the address, `expiry-time=` must not have passed, and a line
/// whose options do not parse allows nothing.
pub fn lookup(file: &Path, key: &PublicKey, peer: Option<IpAddr>) -> Lookup {
    let Ok(text) = std::fs::read_to_string(file) else {
        tracing::warn!("cannot read {}: refusing every key", file.display());
        return Lookup::Refused;
    };
    for (n, line) in text.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Options come first when the line does not start with the key type.
        let (opts, rest) = if starts_with_key_type(line) {
            ("", line)
        } else {
            split_options(line)
        };
        let Ok(k) = PublicKey::from_openssh(rest) else {
            continue;
        };
        if k.key_data() != key.key_data() {
            continue;
        }
        let at = format!("{}:{}", file.display(), n + 1);
        let opts = match parse_options(opts) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!("{at}: {e}: this line allows nothing until it is fixed");
                continue;
            }
        };
        // As sshd: a line whose options refuse this client does not end the search; a later
        // line for the same key (another site's from=) may allow it.
        if let Some(from) = &opts.from {
            let ok = peer.is_some_and(|ip| from_matches(from, ip));
            if !ok {
                tracing::warn!(?peer, "{at}: client address not allowed by from=\"{from}\"");
                continue;
            }
        }
        if let Some(exp) = &opts.expiry {
            match expired(exp) {
                Ok(false) => {}
                Ok(true) => {
                    tracing::warn!("{at}: key expired (expiry-time=\"{exp}\")");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("{at}: {e}: the key is refused until the line is fixed");
                    continue;
                }
            }
        }
        return Lookup::Allowed(opts.command);
    }
    Lookup::Refused
}

fn starts_with_key_type(line: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|p| line.starts_with(p))
}

/// Splits `opts rest` where opts may contain quoted spaces (and `\"` inside quotes).
fn split_options(line: &str) -> (&str, &str) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return (&line[..i], line[i + 1..].trim_start()),
            _ => {}
        }
    }
    (line, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_sshd() {
        let o = parse_options(
            r#"command="'georep' agent --volume '/dr/a,b'",restrict,from="10.0.0.0/8,!10.0.0.7",expiry-time="20991231""#,
        )
        .unwrap();
        assert_eq!(
            o.command.as_deref(),
            Some("'georep' agent --volume '/dr/a,b'")
        );
        assert_eq!(o.from.as_deref(), Some("10.0.0.0/8,!10.0.0.7"));
        assert_eq!(o.expiry.as_deref(), Some("20991231"));
        let o = parse_options(r#"COMMAND="say \"hi\"""#).unwrap();
        assert_eq!(o.command.as_deref(), Some(r#"say "hi""#));
        assert_eq!(parse_options("").unwrap(), KeyOptions::default());
        for bad in [
            r#"command="x"#,
            "command=x",
            "command",
            r#"command="a",command="b""#,
            "restrict,",
            "bogus-option",
            "verify-required",
            r#"command="a"x"#,
        ] {
            assert!(parse_options(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn from_patterns() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(from_matches("127.0.0.1", ip("127.0.0.1")));
        assert!(from_matches("10.1.*,127.0.0.?", ip("127.0.0.5")));
        assert!(!from_matches("10.1.*", ip("127.0.0.1")));
        assert!(from_matches("10.0.0.0/8", ip("10.200.3.4")));
        assert!(!from_matches("10.0.0.0/8,!10.0.0.7", ip("10.0.0.7")));
        assert!(!from_matches("!10.0.0.7", ip("10.0.0.8")));
        assert!(from_matches("::1", ip("::1")));
        assert!(from_matches("fd00::/8", ip("fd12::1")));
        assert!(from_matches("127.0.0.1", ip("::ffff:127.0.0.1")));
        assert!(!from_matches("dr1.example.com", ip("127.0.0.1")));
        assert!(from_matches("0.0.0.0/0", ip("192.0.2.1")));
        // A broken entry refuses the list, negated ones included (no failing open).
        assert!(!from_matches("127.0.0.1,!10.0.0.0/33", ip("127.0.0.1")));
        assert!(!from_matches(
            "127.0.0.1,!10.1.0.0/255.255.0.0",
            ip("127.0.0.1")
        ));
    }

    #[test]
    fn expiry_times() {
        assert_eq!(expired("20000101"), Ok(true));
        assert_eq!(expired("209912312359Z"), Ok(false));
        assert_eq!(expired("20991231235959"), Ok(false));
        assert!(expired("2099").is_err());
        assert!(expired("20991399").is_err());
    }

    #[test]
    fn options_with_quoted_spaces() {
        let (o, r) =
            split_options("command=\"georep agent --volume v\",restrict ssh-ed25519 AAAA c");
        assert_eq!(o, "command=\"georep agent --volume v\",restrict");
        assert_eq!(r, "ssh-ed25519 AAAA c");
    }
}
