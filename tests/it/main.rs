//! georep's integration tests: the real binary against real directories and processes.

mod util;

mod agent_hostile;
mod continuous;
mod errors;
mod sync;
mod volume;
