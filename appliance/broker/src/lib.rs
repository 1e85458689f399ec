//! Hangar's built-in MQTT broker (DESIGN §1, port 1984): workers connect over
//! TLS with their client certificate and their token, each confined to its own
//! tenant (`/tenants/w<id>/`); the server sends notifications (never secrets)
//! that the bridge derives from database changes, each straight to the
//! connections of the workers it concerns.
//!
//! Isolation has three layers: the admission check binds certificate, username,
//! client id, token and the worker's database record together; a worker may only
//! subscribe to its own two topics and never publish; and a notification is
//! written only to the connections of the worker it concerns, under topic
//! names made from that worker's id, whatever a client subscribed to.

mod auth;
mod bridge;
mod broker;
mod dispatch;
mod engine;
mod error;
mod registry;
mod session;
mod tls;
pub mod wire;

pub use auth::WORKER_TOKEN_KIND;
pub use bridge::WORKERS_CHANNEL;
pub use broker::{Broker, BrokerHandle, BrokerStatus};
pub(crate) use broker::Shared;
pub use error::BrokerError;
pub use wire::Notification;
