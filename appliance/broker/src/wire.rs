//! What travels over MQTT, as a worker sees it: each worker's topics and the
//! notification payloads (JSON, ids only, never a secret).

/// A worker's tenant name: the Subject O of its client certificate, its MQTT
/// username and its client id. rumqttd allows only alphanumeric tenant names.
pub fn tenant(worker: i64) -> String {
    hangar_types::worker::worker_tenant(worker)
}

/// The topic prefix a worker is confined to.
pub fn tenant_prefix(worker: i64) -> String {
    format!("/tenants/w{worker}/")
}

/// Notifications for the worker's whole pool (the server fans them out to each
/// member's own topic: tenants cannot share one).
pub fn pool_topic(worker: i64) -> String {
    format!("/tenants/w{worker}/pool")
}

/// Notifications for this worker only.
pub fn worker_topic(worker: i64) -> String {
    format!("/tenants/w{worker}/worker")
}

/// The worker id of a tenant name: `w` and a positive decimal number without
/// leading zeros, so every worker has exactly one spelling.
pub fn parse_tenant(name: &str) -> Option<i64> {
    let digits = name.strip_prefix('w')?;
    let well_formed = !digits.is_empty()
        && digits.len() <= 19
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !well_formed {
        return None;
    }
    digits.parse::<i64>().ok().filter(|id| *id > 0)
}

/// The notification type is the worker protocol's own, so both ends agree.
pub use hangar_types::worker::Notification;

/// The JSON payload of a notification.
pub fn to_json(n: &Notification) -> String {
    // Tags and integers only: serializing cannot fail.
    serde_json::to_string(n).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_the_documented_json() {
        assert_eq!(to_json(&Notification::WorkAvailable { pool: 3 }), r#"{"type":"work_available","pool":3}"#);
        assert_eq!(to_json(&Notification::RunConfirmed { run: 9 }), r#"{"type":"run_confirmed","run":9}"#);
        assert_eq!(to_json(&Notification::RunCanceled { run: 9 }), r#"{"type":"run_canceled","run":9}"#);
    }

    #[test]
    fn tenant_names_have_one_spelling() {
        assert_eq!(parse_tenant("w1"), Some(1));
        assert_eq!(parse_tenant(&tenant(9_007_199_254_740_993)), Some(9_007_199_254_740_993));
        for bad in ["", "w", "w0", "w01", "W1", "w-1", "w+1", "w1 ", "x1", "w1a", "w99999999999999999999", "w١"] {
            assert_eq!(parse_tenant(bad), None, "{bad:?}");
        }
        assert_eq!(pool_topic(7), "/tenants/w7/pool");
        assert_eq!(worker_topic(7), "/tenants/w7/worker");
        assert!(pool_topic(7).starts_with(&tenant_prefix(7)));
        assert!(!tenant_prefix(71).starts_with(&tenant_prefix(7)), "w7 is not a prefix of w71");
    }
}
