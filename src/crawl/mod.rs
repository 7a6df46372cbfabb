//! Hybrid crawl: walk a brick, compare every entry with the index (what the slave holds) and
//! plan the ops that make the slave equal the brick, with renames detected by inode.
//!
//! Invariant: the plan's ops, applied in order, are valid whatever the renames: every rename is
//! a `Stash` (all sources moved aside first, deepest first) then an `Unstash` in destination
//! order, so swaps and cycles need no special case; creations run in path order (parents
//! first), hard links after all creations, deletes after that (at their post-rename location),
//! and directory attributes last, deepest first, so children's changes do not disturb them.

pub use crate::entry;
mod full;
pub mod index;
pub mod links;
pub use crate::walk;

mod diff;
mod plan;
mod targeted;
pub use full::{crawl, Emit};
pub use plan::{Cancelled, Plan, PlanOp, PlanStats, PlannedOp};
pub use targeted::{plan_paths, Window};

/// Below this, a file that grew is sent whole: its base costs little, and the slave would read
/// it back to rebuild the file all the same.
pub const APPEND_MIN: u64 = 64 << 10;

#[cfg(test)]
mod tests;
