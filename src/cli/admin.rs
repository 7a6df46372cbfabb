//! Configuration, volumes, and the commands other processes run: the monitor, workers, journal
//! writers, the agent, `serve`, `authorize-key`, man pages.

use super::args::*;
use super::session_and_words;
use crate::config::Home;
use crate::volume::{self, Volume};
use anyhow::{bail, Context, Result};
use std::process::ExitCode;

pub(super) fn config_cmd(home: &Home, a: ConfigArgs) -> Result<ExitCode> {
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

pub(super) fn volume_cmd(home: &Home, cmd: VolumeCmd) -> Result<ExitCode> {
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
pub(super) fn man_pages(dir: &std::path::Path) -> Result<()> {
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

/// `georep monitor` (internal): a session's monitor.
pub(super) fn monitor(home: &Home, a: MonitorArgs) -> Result<ExitCode> {
    crate::daemon::monitor::run(home, &a.session)?;
    Ok(ExitCode::SUCCESS)
}

/// `georep worker` (internal): a brick's worker.
pub(super) fn worker(home: &Home, a: JournalArgs) -> Result<ExitCode> {
    crate::daemon::monitor::run_worker(home, &a.session, &a.brick)?;
    Ok(ExitCode::SUCCESS)
}

/// `georep journal` (internal): a brick's journal writer.
pub(super) fn journal(home: &Home, a: JournalArgs) -> Result<ExitCode> {
    crate::daemon::run_journal(home, &a.session, &a.brick)?;
    Ok(ExitCode::SUCCESS)
}

/// `georep serve`: the DR side's own SSH server.
pub(super) fn serve(a: ServeArgs) -> Result<ExitCode> {
    crate::transport::serve::serve(
        &crate::transport::serve::ServeOptions {
            listen: a.listen,
            host_key: a.host_key,
            authorized_keys: a.authorized_keys,
            allow_unforced: a.allow_unforced,
            login_grace: std::time::Duration::from_secs(a.login_grace_time),
            max_startups: a.max_startups as usize,
        },
        |listen, host_key| println!("georep serve: listening on {listen}, host key {host_key}"),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `georep delay-proxy` (tests, benchmarks): a TCP relay with a delay.
pub(super) fn delay_proxy(a: DelayProxyArgs) -> Result<ExitCode> {
    crate::transport::delay::run(
        &a.listen,
        &a.connect,
        std::time::Duration::from_millis(a.delay_ms),
        |at| {
            eprintln!(
                "delay-proxy: {at} -> {}, {} ms each way",
                a.connect, a.delay_ms
            )
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `georep authorize-key` (run over SSH by push-pem).
pub(super) fn authorize_key(a: AuthorizeKeyArgs) -> Result<ExitCode> {
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

/// `georep agent` (the forced command): serves one master connection.
pub(super) fn agent(home: &Home, a: AgentArgs) -> Result<ExitCode> {
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
    let (root, _aux) = crate::gluster::aux::slave_root(home, &volume)?;
    crate::agent::serve(
        &root,
        crate::agent::input_from_stdin()?,
        Box::new(std::io::stdout()),
    )?;
    Ok(ExitCode::SUCCESS)
}
