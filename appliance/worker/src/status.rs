//! `hangar-worker status`: the worker's identity, and whether the appliance's
//! server and broker can be reached with it right now.

use std::fmt::Write;
use std::time::Duration;

use crate::agent;
use crate::api::Api;
use crate::config::WorkerConfig;
use hangar_types::error_chain;
use crate::identity::Identity;

/// The report, and whether both ends were reachable.
pub async fn status(cfg: &WorkerConfig, identity: &Identity) -> (String, bool) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "worker   {} ({}) in pool {} ({})",
        cfg.worker_id, cfg.name, cfg.pool_id, cfg.pool_name
    );
    match hangar_certs::inspect_pem(&identity.certificate_pem) {
        Ok(info) => {
            let cn = info.common_name.unwrap_or_default();
            let o = info.organization.unwrap_or_default();
            let _ = writeln!(
                out,
                "cert     CN={cn} O={o} serial {} valid until {}",
                info.serial_hex, info.not_after
            );
        }
        Err(e) => {
            let _ = writeln!(out, "cert     unreadable: {}", error_chain(&e));
        }
    }
    let server_ok = match Api::new(&cfg.server_url, identity) {
        Ok(api) => match api.health().await {
            Ok(()) => {
                let _ = writeln!(out, "server   {} reachable", cfg.server_url);
                true
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "server   {} unreachable: {}",
                    cfg.server_url,
                    error_chain(&e)
                );
                false
            }
        },
        Err(e) => {
            let _ = writeln!(
                out,
                "server   {} unusable: {}",
                cfg.server_url,
                error_chain(&e)
            );
            false
        }
    };
    let broker = cfg.broker_url.as_deref().unwrap_or("(none)");
    if cfg.transport == hangar_types::worker::Transport::Http {
        let _ = writeln!(out, "broker   not used (transport = \"http\")");
        return (out, server_ok);
    }
    let broker_ok = match agent::mqtt_options(cfg, identity) {
        Ok(opts) => match agent::probe_broker(opts, Duration::from_secs(5)).await {
            Ok(()) => {
                let _ = writeln!(out, "broker   {broker} reachable");
                true
            }
            Err(e) => {
                let _ = writeln!(out, "broker   {broker} unreachable: {e}");
                false
            }
        },
        Err(e) => {
            let _ = writeln!(out, "broker   {broker} unusable: {e}");
            false
        }
    };
    (out, server_ok && broker_ok)
}
