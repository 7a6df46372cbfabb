//! Logging through `tracing` to stderr; `GEOREP_LOG` (e.g. `info`, `georep=debug`) sets the
//! level, and `set_level` changes it while running (config `log-level`). Colour only on a
//! terminal: the daemons' stderr is a log file under `$GEOREP_HOME/log`, kept plain text.

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing_subscriber::{filter::EnvFilter, prelude::*, reload, Registry};

static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init() {
    let filter = EnvFilter::try_from_env("GEOREP_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let (filter, handle) = reload::Layer::new(filter);
    let subscriber = tracing_subscriber::registry().with(filter).with(
        tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr),
    );
    if subscriber.try_init().is_ok() {
        let _ = RELOAD.set(handle);
    }
}

/// Sets the level of this process's log (`error` … `trace`, or any `GEOREP_LOG` directive).
pub fn set_level(directive: &str) {
    let Some(h) = RELOAD.get() else { return };
    match EnvFilter::try_new(directive) {
        Ok(f) => {
            if h.reload(f).is_ok() {
                tracing::info!("log level set to {directive}");
            }
        }
        Err(e) => tracing::warn!("log level {directive:?}: {e}"),
    }
}
