//! georep's integration tests: the real binary against real directories and processes.

mod util;

mod agent_hostile;
mod architecture;
mod continuous;
mod converge;
mod converge_regressions;
mod crash;
mod delta;
mod dr;
mod errors;
mod faults;
mod fuzz;
mod gluster;
mod lifecycle;
mod metrics;
mod multihost;
mod operator;
mod scrub;
mod ssh;
mod stripe;
mod sync;
mod verify;
mod volume;
mod xattrs;
