//! The journal: a durable, ordered change log per brick (format: docs/journal-format.md).
//!
//! `record` holds the pure types, `store` the SQLite file, `writer` the inotify side. The
//! shipper reads records after the last sequence number the slave acknowledged.

pub mod record;
pub mod store;
pub mod writer;

pub use record::{RecOp, Record};
pub use store::JournalStore;
