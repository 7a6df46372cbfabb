//! The master's side of a connection to an agent: where it goes (`Target`), the handshake,
//! the reader thread, request/reply and close (`Client`), and the requests that read the slave
//! (`requests`). It touches no index: what a connection means to a brick's replication is
//! `ship::Shipper`'s, and verify, `create`'s check and failback use a `Client` directly.

mod conn;
mod error;
pub(crate) mod inbound;
pub(crate) mod live;
mod requests;
mod target;

pub use conn::{check_welcome, Client, Mode, ANSWER_WAIT, DEFAULT_CHANNELS};
pub use error::Error;
pub use inbound::Event;
pub use requests::Changes;
pub use target::{Slave, Target};

/// Whether trying again can help with `e`, whatever layer it came from: not when anything in
/// its chain is permanent (`crate::error::Permanent`, a permanent `Error` or `ConnError`).
pub fn is_transient(e: &anyhow::Error) -> bool {
    for c in e.chain() {
        if c.downcast_ref::<crate::error::Permanent>().is_some() {
            return false;
        }
        if let Some(e) = c.downcast_ref::<Error>() {
            return e.is_transient();
        }
        if let Some(e) = c.downcast_ref::<crate::transport::conn::ConnError>() {
            return e.is_transient();
        }
    }
    true
}

#[cfg(test)]
mod agent_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn permanent_errors_are_found_anywhere_in_the_chain() {
        let fenced: anyhow::Error = crate::error::Permanent("fenced".into()).into();
        assert!(!is_transient(&fenced.context("connecting")));
        let refused = Error::Refused {
            message: "promoted".into(),
            permanent: true,
        };
        assert!(!refused.is_transient());
        assert!(!is_transient(&anyhow::Error::new(refused)));
        let busy = Error::Refused {
            message: "database is locked".into(),
            permanent: false,
        };
        assert!(is_transient(&anyhow::Error::new(busy)));
        let passive = Error::Passive {
            active: "n1:/b".into(),
        };
        assert!(passive.is_transient());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(is_transient(&anyhow::Error::from(reset).context("sending")));
        let garbage = crate::transport::conn::ConnError::NotGeorep("Welcome to".into());
        assert!(!is_transient(&anyhow::Error::new(garbage)));
        let plain: Result<(), anyhow::Error> = Err(anyhow::anyhow!("disk full"));
        assert!(is_transient(&plain.context("x").unwrap_err()));
    }
}
