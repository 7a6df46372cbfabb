//! Command-line definitions (raw arguments) and dispatch; each subcommand is one call into a
//! domain module.

use crate::config::Home;
use crate::session::SessionConfig;
use crate::volume::Volume;
use anyhow::{bail, Context, Result};

mod admin;
mod args;
mod run;
mod show;

pub use args::*;
pub use run::run;

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
