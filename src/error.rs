//! Errors that retrying cannot help, as every layer marks them.
//!
//! Each layer has its own error type where callers branch on it (`transport::conn::ConnError`,
//! `client::Error`); what only gets reported travels as `anyhow::Error`. An error that needs an
//! operator (a fenced master, another protocol version, a refused key) carries `Permanent`
//! somewhere in its chain, and `client::is_transient` finds it: the worker then retries slowly
//! and shows the fix, instead of backing off as from a broken link.

/// An error that stays until an operator acts; its message says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Permanent(pub String);
