//! Dispatch, and the commands that act on a session: sync, the lifecycle, failover and
//! failback. Each calls one domain function and formats what it returns.

use super::args::*;
use super::show::print_reverse;
use super::{admin, show};
use super::{local_path, session, session_and_words};
use crate::config::{Home, SyncOptions};
use crate::session::SessionConfig;
use anyhow::{bail, Context, Result};
use std::process::ExitCode;

/// Runs the command line: each command is one call below.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let home = &Home::from_env();
    match cli.cmd {
        Cmd::Volume(v) => admin::volume_cmd(home, v),
        Cmd::Config(a) => admin::config_cmd(home, a),
        Cmd::Status(a) => show::status_cmd(home, a),
        Cmd::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "georep", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ManPages { dir } => {
            admin::man_pages(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync(a) => sync(home, a),
        Cmd::Create(a) => create(home, a),
        Cmd::Start(a) => start(home, a),
        Cmd::Stop(a) => stop(home, a),
        Cmd::Pause(a) => pause(home, a),
        Cmd::Resume(a) => resume(home, a),
        Cmd::Delete(a) => delete(home, a),
        Cmd::Failures(a) => show::failures(home, a),
        Cmd::Scrub(a) => show::scrub(home, a),
        Cmd::Verify(a) => show::verify(home, a),
        Cmd::Failover(a) => failover(home, a),
        Cmd::Resync(a) => resync(home, a),
        Cmd::Failback(a) => failback(home, a),
        Cmd::Monitor(a) => admin::monitor(home, a),
        Cmd::Worker(a) => admin::worker(home, a),
        Cmd::Journal(a) => admin::journal(home, a),
        Cmd::Serve(a) => admin::serve(a),
        Cmd::DelayProxy(a) => admin::delay_proxy(a),
        Cmd::AuthorizeKey(a) => admin::authorize_key(a),
        Cmd::Agent(a) => admin::agent(home, a),
    }
}

/// `georep sync MASTER SLAVE --once`.
pub(super) fn sync(home: &Home, a: SyncArgs) -> Result<ExitCode> {
    let opts: SyncOptions = (&a).try_into()?;
    let (m, s) = (local_path(&a.master)?, local_path(&a.slave)?);
    let report = crate::ship::sync_once(home, &m, &s, &opts, a.rescan_slave())?;
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

/// `georep create MASTER SLAVE [push-pem|no-verify] [ssh-port N] [name NAME] [force]`.
pub(super) fn create(home: &Home, a: CreateArgs) -> Result<ExitCode> {
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
    let crate::daemon::Created { cfg, notes } = crate::daemon::create(home, &master, &slave, &o)?;
    for n in notes {
        println!("{n}");
    }
    println!(
            "Creating geo-replication session between {master} & {slave} has been successful (session name {}; systemd: georep@{}.service)",
            cfg.name, cfg.name
        );
    Ok(ExitCode::SUCCESS)
}

/// `georep start`.
pub(super) fn start(home: &Home, a: StartArgs) -> Result<ExitCode> {
    let (m, sl, words) = session_and_words(home, "start", &a.master, &a.words, |w| w == "force")?;
    let force = !check_words("start", words, &["force"])?.is_empty();
    let (m, sl) = (&m, &sl);
    if !a.foreground {
        crate::daemon::start(home, &SessionConfig::load(home, m, sl)?, force, false)?;
        println!("Starting geo-replication session between {m} & {sl} has been successful");
        return Ok(ExitCode::SUCCESS);
    }
    crate::daemon::start(home, &SessionConfig::load(home, m, sl)?, force, true)?;
    Ok(ExitCode::SUCCESS)
}

/// `georep stop`.
pub(super) fn stop(home: &Home, a: WordArgs) -> Result<ExitCode> {
    let (m, sl, words) = session_and_words(home, "stop", &a.master, &a.words, |w| w == "force")?;
    let force = !check_words("stop", words, &["force"])?.is_empty();
    let (m, sl) = (&m, &sl);
    crate::daemon::stop(home, &SessionConfig::load(home, m, sl)?, force)?;
    println!("Stopping geo-replication session between {m} & {sl} has been successful");
    Ok(ExitCode::SUCCESS)
}

/// `georep pause`.
pub(super) fn pause(home: &Home, a: SessionArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "pause", &a)?;
    crate::daemon::pause(home, &SessionConfig::load(home, &m, &s)?)?;
    println!("Pausing geo-replication session between {m} & {s} has been successful");
    Ok(ExitCode::SUCCESS)
}

/// `georep resume`.
pub(super) fn resume(home: &Home, a: SessionArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "resume", &a)?;
    crate::daemon::resume(home, &SessionConfig::load(home, &m, &s)?)?;
    println!("Resuming geo-replication session between {m} & {s} has been successful");
    Ok(ExitCode::SUCCESS)
}

/// `georep delete`.
pub(super) fn delete(home: &Home, a: WordArgs) -> Result<ExitCode> {
    let (m, sl, words) = session_and_words(home, "delete", &a.master, &a.words, |w| {
        w == "reset-sync-time"
    })?;
    let reset = !check_words("delete", words, &["reset-sync-time"])?.is_empty();
    let (m, sl) = (&m, &sl);
    crate::daemon::delete(home, &SessionConfig::load(home, m, sl)?, reset)?;
    println!("Deleting geo-replication session between {m} & {sl} has been successful");
    Ok(ExitCode::SUCCESS)
}

/// `georep failover SLAVEVOL`: promotes the DR volume.
pub(super) fn failover(home: &Home, a: FailoverArgs) -> Result<ExitCode> {
    for line in crate::failback::failover(
        home,
        &a.volume,
        a.planned,
        std::time::Duration::from_secs(a.timeout),
    )? {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `georep resync --reverse`.
pub(super) fn resync(home: &Home, a: ResyncArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "resync", &a.session)?;
    let r = crate::failback::resync_reverse(home, &m, &s, a.dry_run, a.checksum, false)?;
    print_reverse(&r, a.json)
}

/// `georep failback`.
pub(super) fn failback(home: &Home, a: SessionArgs) -> Result<ExitCode> {
    let (m, s) = session(home, "failback", &a)?;
    let r = crate::failback::failback(home, &m, &s)?;
    let code = print_reverse(&r, false)?;
    if r.failures.is_empty() {
        println!(
                "Failback of {m} & {s} has been successful: the DR volume is a slave again (epoch {}), replication restarted",
                r.demoted_to_epoch.unwrap_or_default()
            );
    }
    Ok(code)
}
