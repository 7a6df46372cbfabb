//! Command-line definitions (raw arguments) and dispatch; each subcommand is one call into a
//! domain module.

use crate::config::{Home, SyncOptions};
use crate::session::SessionConfig;
use crate::volume::{self, Volume};
use anyhow::{bail, Context, Result};
use std::process::ExitCode;

mod args;
pub use args::*;

/// A master or slave as typed: a relative path (`./src`, `../dr`, `.`, anything with a `/`
/// that is not `host::volume`) becomes absolute; volume names and remote slaves are kept.
pub fn local_path(arg: &str) -> Result<String> {
    use std::path::Component;
    if arg.contains("::")
        || arg.starts_with('/')
        || !(arg == "." || arg == ".." || arg.contains('/'))
    {
        return Ok(arg.to_string());
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let mut out = std::path::PathBuf::new();
    for c in cwd.join(arg).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.to_str().map(String::from).with_context(|| {
        format!("{arg:?}: the absolute path is not UTF-8; give it as an absolute path")
    })
}

/// `MASTER SLAVE [WORD...]`, or a session's name then the words: the master and slave, and
/// the words left. A name counts as a session's when no slave follows it (nothing, or a word
/// `is_word` accepts).
fn session_and_words<'a>(
    home: &Home,
    command: &str,
    master: &str,
    rest: &'a [String],
    is_word: impl Fn(&str) -> bool,
) -> Result<(String, String, &'a [String])> {
    let named = SessionConfig::named(home, master);
    // After a session's name, a word that cannot be a slave is one of the command's words
    // (and an unknown one is named as such).
    let slave_like = |w: &str| {
        w.contains('/') || w.contains("::") || Volume::load(home, w).is_ok() || named.is_none()
    };
    match rest.split_first() {
        Some((slave, words)) if !is_word(slave) && slave_like(slave) => {
            Ok((local_path(master)?, local_path(slave)?, words))
        }
        _ => match named {
            Some(c) => Ok((c.master, c.slave, rest)),
            None => bail!(
                "no session named {master:?} on this node: give `georep {command} MASTER SLAVE`, or a session's name (`georep status` lists them)"
            ),
        },
    }
}

fn session(home: &Home, command: &str, a: &SessionArgs) -> Result<(String, String)> {
    let rest: Vec<String> = a.slave.iter().cloned().collect();
    let (m, s, words) = session_and_words(home, command, &a.master, &rest, |_| false)?;
    if let Some(w) = words.first() {
        bail!("unknown word {w:?} for `georep {command} {}`: give MASTER SLAVE, or the session's name alone", a.master);
    }
    Ok((m, s))
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::from_env();
    match cli.cmd {
        Cmd::Volume(v) => volume_cmd(&home, v),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "georep", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ManPages { dir } => {
            man_pages(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync(a) => {
            let opts: SyncOptions = (&a).try_into()?;
            let (m, s) = (local_path(&a.master)?, local_path(&a.slave)?);
            let report = crate::ship::sync_once(&home, &m, &s, &opts, a.rescan_slave())?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.summary());
                for f in &report.failures {
                    eprintln!("failed ({}): {}", f.side, f.message);
                }
            }
            Ok(if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Create(a) => {
            let (master, slave) = (local_path(&a.master)?, local_path(&a.slave)?);
            let mut o = crate::daemon::CreateOptions {
                verify: true,
                identity: a.identity.clone(),
                host_key: a.host_key.clone(),
                remote_georep: a.remote_georep.clone(),
                create_root: a.create_root,
                ..Default::default()
            };
            let mut words = a.options.iter();
            while let Some(w) = words.next() {
                match w.as_str() {
                    "no-verify" => o.verify = false,
                    "push-pem" => o.push_pem = true,
                    "force" => o.force = true,
                    "ssh-port" => {
                        let p = words.next().context("ssh-port needs a number")?;
                        o.ssh_port = Some(p.parse().with_context(|| format!("ssh-port {p:?} is not a port number"))?);
                    }
                    "name" => o.name = Some(words.next().context("name needs a session name, e.g. `name gv0-dr1`")?.clone()),
                    other => bail!("unknown word {other:?} for `georep create`: expected push-pem, no-verify, ssh-port N, name NAME or force"),
                }
            }
            let cfg = crate::daemon::create(&home, &master, &slave, &o)?;
            println!(
                "Creating geo-replication session between {master} & {slave} has been successful (session name {}; systemd: georep@{}.service)",
                cfg.name, cfg.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Start(a) => {
            let (m, sl, words) =
                session_and_words(&home, "start", &a.master, &a.words, |w| w == "force")?;
            let force = !check_words("start", words, &["force"])?.is_empty();
            let (m, sl) = (&m, &sl);
            if !a.foreground {
                crate::daemon::start(&home, m, sl, force, false)?;
                println!("Starting geo-replication session between {m} & {sl} has been successful");
                return Ok(ExitCode::SUCCESS);
            }
            crate::daemon::start(&home, m, sl, force, true)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stop(a) => {
            let (m, sl, words) =
                session_and_words(&home, "stop", &a.master, &a.words, |w| w == "force")?;
            let force = !check_words("stop", words, &["force"])?.is_empty();
            let (m, sl) = (&m, &sl);
            crate::daemon::stop(&home, m, sl, force)?;
            println!("Stopping geo-replication session between {m} & {sl} has been successful");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pause(a) => {
            let (m, s) = session(&home, "pause", &a)?;
            crate::daemon::pause(&home, &m, &s)?;
            println!("Pausing geo-replication session between {m} & {s} has been successful");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resume(a) => {
            let (m, s) = session(&home, "resume", &a)?;
            crate::daemon::resume(&home, &m, &s)?;
            println!("Resuming geo-replication session between {m} & {s} has been successful");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Delete(a) => {
            let (m, sl, words) = session_and_words(&home, "delete", &a.master, &a.words, |w| {
                w == "reset-sync-time"
            })?;
            let reset = !check_words("delete", words, &["reset-sync-time"])?.is_empty();
            let (m, sl) = (&m, &sl);
            crate::daemon::delete(&home, m, sl, reset)?;
            println!("Deleting geo-replication session between {m} & {sl} has been successful");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Config(a) => config_cmd(&home, a),
        Cmd::Failures(a) => {
            let (m, s) = session(&home, "failures", &a.session)?;
            let list = crate::status::failures(&home, &m, &s)?;
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
        Cmd::Scrub(a) => {
            let (m, s) = session(&home, "scrub", &a.session)?;
            if a.now {
                for line in crate::daemon::request_scrub(&home, &m, &s, a.checksum)? {
                    println!("{line}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let rows = crate::status::rows(&home, Some(&m), Some(&s))?;
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
        Cmd::Verify(a) => {
            let (m, s) = session(&home, "verify", &a.session)?;
            let r = crate::verify::verify(&home, &m, &s, a.checksum)?;
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
        Cmd::Failover(a) => {
            for line in crate::failback::failover(
                &home,
                &a.volume,
                a.planned,
                std::time::Duration::from_secs(a.timeout),
            )? {
                println!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Resync(a) => {
            let (m, s) = session(&home, "resync", &a.session)?;
            let r = crate::failback::resync_reverse(&home, &m, &s, a.dry_run, a.checksum, false)?;
            print_reverse(&r, a.json)
        }
        Cmd::Failback(a) => {
            let (m, s) = session(&home, "failback", &a)?;
            let r = crate::failback::failback(&home, &m, &s)?;
            let code = print_reverse(&r, false)?;
            if r.failures.is_empty() {
                println!(
                    "Failback of {m} & {s} has been successful: the DR volume is a slave again (epoch {}), replication restarted",
                    r.demoted_to_epoch.unwrap_or_default()
                );
            }
            Ok(code)
        }
        Cmd::Monitor(a) => {
            crate::daemon::monitor::run(&home, &a.session)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Worker(a) => {
            crate::daemon::monitor::run_worker(&home, &a.session, &a.brick)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Journal(a) => {
            crate::daemon::run_journal(&home, &a.session, &a.brick)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status(a) => status_cmd(&home, a),
        Cmd::Serve(a) => {
            crate::transport::serve::serve(&crate::transport::serve::ServeOptions {
                listen: a.listen,
                host_key: a.host_key,
                authorized_keys: a.authorized_keys,
                allow_unforced: a.allow_unforced,
                login_grace: std::time::Duration::from_secs(a.login_grace_time),
                max_startups: a.max_startups as usize,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::DelayProxy(a) => {
            crate::transport::delay::run(
                &a.listen,
                &a.connect,
                std::time::Duration::from_millis(a.delay_ms),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::AuthorizeKey(a) => {
            if a.create_root && a.volume.starts_with('/') {
                std::fs::create_dir_all(&a.volume)
                    .with_context(|| format!("creating slave root {}", a.volume))?;
            }
            let line = crate::keys::authorized_line(&a.georep, &a.volume, &a.key, &a.comment)?;
            let file = crate::keys::authorized_keys_file()?;
            let changed = crate::keys::authorize(&file, &line)?;
            println!(
                "{} {} on {}",
                if changed {
                    "installed session key in"
                } else {
                    "session key already in"
                },
                file.display(),
                crate::config::node_name()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Agent(a) => {
            if a.probe {
                println!(
                    "georep-agent protocol={} version={}",
                    crate::protocol::PROTOCOL_VERSION,
                    env!("CARGO_PKG_VERSION")
                );
                return Ok(ExitCode::SUCCESS);
            }
            let volume = a.volume.unwrap_or_default();
            // Held until the agent is done: a `gluster:<vol>` slave is mounted for it.
            let (root, _aux) = crate::gluster::aux::slave_root(&home, &volume)?;
            crate::agent::serve(
                &root,
                crate::agent::input_from_stdin()?,
                Box::new(std::io::stdout()),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status_cmd(home: &Home, a: StatusArgs) -> Result<ExitCode> {
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

fn print_reverse(r: &crate::failback::ReverseReport, json: bool) -> Result<ExitCode> {
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

fn config_cmd(home: &Home, a: ConfigArgs) -> Result<ExitCode> {
    use crate::options;
    let is_key = |w: &str| {
        let k = w.strip_prefix('!').unwrap_or(w);
        options::OPTIONS.iter().any(|d| d.key == k)
    };
    let (m, s, rest) = session_and_words(home, "config", &a.master, &a.words, is_key)?;
    let (key, value) = match rest {
        [] => (None, None),
        [k] => (Some(k.as_str()), None),
        [k, v] => (Some(k.as_str()), Some(v.as_str())),
        [_, _, w, ..] => bail!("unknown word {w:?} for `georep config`: it takes one KEY and one VALUE (quote a value with spaces)"),
    };
    let mut cfg = crate::session::SessionConfig::load(home, &m, &s)?;
    match (key, value) {
        (None, _) => {
            for d in options::OPTIONS {
                println!("{}: {}", d.key, options::get(&cfg, d.key)?);
            }
        }
        (Some(k), None) if k.starts_with('!') => {
            options::reset(&mut cfg, &k[1..])?;
            cfg.save(home)?;
            println!("geo-replication config reset: {}", &k[1..]);
        }
        (Some(k), None) => println!("{}", options::get(&cfg, k)?),
        (Some(k), Some(_)) if k.starts_with('!') => {
            bail!("`!{}` resets an option and takes no value", &k[1..])
        }
        (Some(k), Some(v)) => {
            options::set(&mut cfg, k, v)?;
            cfg.save(home)?;
            println!(
                "geo-replication config updated: {k} = {}",
                options::get(&cfg, k)?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn volume_cmd(home: &Home, cmd: VolumeCmd) -> Result<ExitCode> {
    match cmd {
        VolumeCmd::Create { name, args } => {
            let (replica, bricks) = volume::parse_create_args(&args)?;
            if Volume::load(home, &name).is_ok() {
                bail!("volume {name} already exists: delete it first or pick another name");
            }
            let v = Volume::new(&name, replica, bricks)?;
            for b in v.bricks.iter().filter(|b| b.is_local()) {
                std::fs::create_dir_all(&b.path).map_err(|e| {
                    anyhow::anyhow!("creating brick directory {}: {e}", b.path.display())
                })?;
            }
            v.save(home)?;
            println!("volume create: {name}: success");
        }
        VolumeCmd::List => {
            let vols = Volume::list(home)?;
            if vols.is_empty() {
                println!("No volumes present");
            }
            for v in vols {
                println!("{}", v.name);
            }
        }
        VolumeCmd::Info { name } => {
            let v = Volume::load(home, &name)?;
            println!("Volume Name: {}", v.name);
            println!(
                "Type: {}",
                if v.replica > 1 {
                    "Replicate"
                } else {
                    "Distribute"
                }
            );
            println!(
                "Number of Bricks: {}",
                if v.replica > 1 {
                    format!(
                        "{} x {} = {}",
                        v.bricks.len() / v.replica as usize,
                        v.replica,
                        v.bricks.len()
                    )
                } else {
                    v.bricks.len().to_string()
                }
            );
            println!("Bricks:");
            for (i, b) in v.bricks.iter().enumerate() {
                println!("Brick{}: {}", i + 1, b);
            }
        }
        VolumeCmd::Delete { name } => {
            Volume::delete(home, &name)?;
            println!("volume delete: {name}: success");
        }
        VolumeCmd::Import {
            name,
            from_xml,
            glusterd_sock,
        } => {
            volume::validate_name(&name)?;
            let xml = match &from_xml {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading Gluster volume info from {}", f.display()))?,
                None => crate::gluster::import::volume_info_xml(&name, glusterd_sock.as_deref())?,
            };
            for line in crate::gluster::import::import(home, &name, &xml)? {
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `georep.1` and one page per visible subcommand (`georep-sync.1`, ...), from the clap
/// definitions.
fn man_pages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = command();
    let write = |name: &str, c: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.to_uppercase())
            .render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    write("georep", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("georep-{}", sub.get_name());
        write(
            &name,
            sub.clone()
                .name(name.clone())
                .version(env!("CARGO_PKG_VERSION")),
        )?;
    }
    Ok(())
}
