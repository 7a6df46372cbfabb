//! What can go wrong making a connection, and whether trying again can help.

use crate::transport::conn::ConnError;

/// A failed `Client::connect`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another brick of this brick's replica set is Active: this one waits as Passive.
    #[error("passive: {active} is active for this replica set")]
    Passive {
        /// `node:brick` of the Active one.
        active: String,
    },
    /// The agent refused the connection and said why; `permanent`: it stays refused until an
    /// operator acts (fenced after a failover, another protocol version).
    #[error("{message}")]
    Refused { message: String, permanent: bool },
    /// The link failed or broke (refused, reset, timed out, closed early): trying again can help.
    #[error("{0:#}")]
    Link(anyhow::Error),
    /// Trying again cannot help until something changes (a peer that is not georep, another
    /// protocol version, a refused key or host key, no session set-up).
    #[error("{0:#}")]
    Permanent(anyhow::Error),
    /// Anything else on the way (the index, the brick): classified by its chain
    /// (`client::is_transient`).
    #[error("{0:#}")]
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        Error::Other(e)
    }
}

impl Error {
    /// Whether reconnecting can help without an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Passive { .. } | Error::Link(_) => true,
            Error::Refused { permanent, .. } => !permanent,
            Error::Permanent(_) => false,
            Error::Other(e) => super::is_transient(e),
        }
    }

    /// A transport's failure to connect: permanent where the transport says so (a refused
    /// key or host key), otherwise the link's.
    pub fn from_link(e: anyhow::Error) -> Error {
        if super::is_transient(&e) {
            Error::Link(e)
        } else {
            Error::Permanent(e)
        }
    }

    /// A framing failure during the handshake.
    pub fn from_conn(e: ConnError) -> Error {
        if e.is_transient() {
            Error::Link(e.into())
        } else {
            Error::Permanent(e.into())
        }
    }

    /// The same error, with `what` in front of its message.
    pub fn context(self, what: String) -> Error {
        match self {
            Error::Link(e) => Error::Link(e.context(what)),
            Error::Permanent(e) => Error::Permanent(e.context(what)),
            Error::Other(e) => Error::Other(e.context(what)),
            Error::Refused { message, permanent } => Error::Refused {
                message: format!("{what}: {message}"),
                permanent,
            },
            p @ Error::Passive { .. } => p,
        }
    }
}
