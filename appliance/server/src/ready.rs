//! `/ready`: whether this server can do its job right now. Each component is
//! checked for real (a query, a signed S3 request, the hosted component's own
//! check), concurrently and with a deadline, and reported with its error text.

use std::time::Duration;

use diesel_async::RunQueryDsl;
use serde_json::{Map, Value, json};

use crate::App;
use crate::hosted::BROKER;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The outcome of one check.
enum Status {
    Ok(Map<String, Value>),
    Error(String),
    NotConfigured,
}

impl Status {
    fn json(&self) -> Value {
        match self {
            Status::Ok(facts) => {
                let mut entry = facts.clone();
                entry.insert("status".to_string(), json!("ok"));
                Value::Object(entry)
            }
            Status::Error(e) => json!({ "status": "error", "error": e }),
            Status::NotConfigured => json!({ "status": "not configured" }),
        }
    }
}

async fn bounded<F>(what: &str, check: F) -> Status
where
    F: std::future::Future<Output = Result<Map<String, Value>, String>>,
{
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(facts)) => Status::Ok(facts),
        Ok(Err(e)) => Status::Error(e),
        Err(_) => Status::Error(format!("{what} did not answer within {} s", CHECK_TIMEOUT.as_secs())),
    }
}

/// The database asked on a connection of the check's own, not one of the
/// requests' pool: under a storm of requests (a fleet joining, a burst of
/// claims) every pooled connection is taken and waited for, and a check
/// queued behind them would time out. A balancer reading that as unready
/// would take the server out and drop every worker connected to it, which
/// reconnect elsewhere and load the others the same way.
async fn postgres(app: &App) -> Result<Map<String, Value>, String> {
    let failed = |e: &dyn std::error::Error| format!("PostgreSQL at {}: {}", app.db_target, hangar_types::error_chain(e));
    let mut conn = app.ready_db.get().await.map_err(|e| failed(&e))?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await.map(|_| Map::new()).map_err(|e| failed(&e))
}

/// `(ready, body)`.
pub(crate) async fn report(app: &App) -> (bool, Value) {
    let pg = bounded("PostgreSQL", postgres(app));
    let objects = bounded("the object store", async {
        app.objects.health().await.map(|()| Map::new()).map_err(|e| hangar_types::error_chain(&e))
    });
    let hosted = futures::future::join_all(
        app.hosted.iter().map(|h| async move { (h.name(), bounded(h.name(), h.ready()).await) }),
    );
    let (pg, objects, hosted) = tokio::join!(pg, objects, hosted);

    let mut components = Map::new();
    let mut ready = true;
    for (name, status) in [("postgres", pg), ("objects", objects)].into_iter().chain(hosted) {
        ready &= !matches!(status, Status::Error(_));
        components.insert(name.to_string(), status.json());
    }
    if !components.contains_key(BROKER) {
        components.insert(BROKER.to_string(), Status::NotConfigured.json());
    }
    let body = json!({ "status": if ready { "ready" } else { "unready" }, "components": components });
    (ready, body)
}
