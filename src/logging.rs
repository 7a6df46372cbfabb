//! Logging through `tracing` to stderr; `GEOREP_LOG` (e.g. `info`, `georep=debug`) sets the level.

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GEOREP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
