//! Hangar's database layer: TLS connections and pools, the schema and its embedded
//! migrations, the PostgreSQL job queue the drain consumes and the typed set of
//! jobs it carries.

mod connect;
mod error;
pub mod jobs;
pub mod listen;
pub mod migrate;
pub mod queue;
pub mod runs;
pub mod schema;

pub use connect::{Database, DbConfig, DbPool, Password, PooledConn, connection_within};
pub use diesel_async::AsyncPgConnection;
pub use error::DbError;
