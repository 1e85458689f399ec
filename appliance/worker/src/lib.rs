//! The worker host's side of Hangar: joining a pool, taking runs from the
//! appliance and executing them with Terraform/OpenTofu. Talks to the appliance
//! only over HTTPS and MQTT over TLS; links none of the appliance's database,
//! HTTP server or broker stacks.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod identity;
pub mod join;
pub mod status;
pub mod update;
