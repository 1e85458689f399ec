//! The appliance's background processes. The drain consumes the job queue with a
//! handler per job kind; the scheduler turns cron entries into jobs, with one
//! leader among any number of schedulers. Neither accepts connections: both only
//! talk to PostgreSQL.

pub mod drain;
pub mod handlers;
mod heartbeat;
pub mod scheduler;

pub use drain::run_drain;
pub use heartbeat::{ProcessKind, process_id};
pub use scheduler::{SchedulerError, run_scheduler};
